//! Composition of grounded answers.
//!
//! Every function returns an [`Answer`]: the answer text and one [`MaskRef`]
//! per `[SEG]` token, in the order the tokens appear. Each `[SEG]` is
//! directly followed by the tag of the image it segments, e.g.
//! `<p> the chair </p> [SEG] (IMAGE1) [SEG] (IMAGE2)`.
//!
//! Labels are normalised before use: surrounding whitespace is removed and
//! inner whitespace runs become one space. [`MaskRef::label`] holds the
//! normalised label, which is exactly what [`crate::parse`] recovers after
//! [`strip_article`](crate::english::strip_article).
//!
//! # Empty lists
//!
//! Nothing to list is not an error; a dedicated template without any
//! `[SEG]` token is used instead:
//!
//! * [`common_object`] with no labels: e.g. "The images do not share a
//!   common object."
//! * [`common_parts`] with no parts: the identification sentence, then e.g.
//!   "The objects have no parts in common."
//! * [`unique_parts`] with no parts: the identification sentence, then e.g.
//!   "The objects have no unique parts."
//!
//! These still parse cleanly (with masks only for the identification
//! sentence, where there is one).

mod error;
mod render;
mod validate;

#[cfg(test)]
mod tests;

use rand::Rng;
use serde::{Deserialize, Serialize};

pub use error::ComposeError;
use render::{by_count, render, Group, Pick};

use crate::templates::{answers, choose};

/// One mask requested by an answer: which label, on which image.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct MaskRef {
    /// The (normalised) label, without article.
    pub label: String,
    /// The image the mask belongs to, 0-based.
    pub image: usize,
}

/// A composed answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Answer {
    /// The answer text, with `<p>` phrases and `[SEG] (IMAGEk)` tags.
    pub text: String,
    /// One entry per `[SEG]` token, in text order.
    pub masks: Vec<MaskRef>,
}

impl Answer {
    /// Appends `other` as a new sentence (separated by one space).
    fn then(mut self, other: Answer) -> Answer {
        self.text.push(' ');
        self.text.push_str(&other.text);
        self.masks.extend(other.masks);
        self
    }
}

/// The object detected in one image, for the identification sentence.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ObjectMention {
    /// The object's category label.
    pub label: String,
    /// The image showing it, 0-based.
    pub image: usize,
}

impl ObjectMention {
    /// One mention per image from a list of per-image labels
    /// (`labels[i]` is the object in image `i`).
    pub fn from_labels<S: AsRef<str>>(labels: &[S]) -> Vec<ObjectMention> {
        labels
            .iter()
            .enumerate()
            .map(|(image, l)| ObjectMention {
                label: l.as_ref().to_string(),
                image,
            })
            .collect()
    }
}

/// Answer for [`Task::CommonObject`](crate::templates::Task::CommonObject).
///
/// Each label becomes one phrase segmented in every one of the `n_images`
/// images: `<p> the chair </p> [SEG] (IMAGE1) [SEG] (IMAGE2)`. One label uses
/// the singular templates, several the plural ones, none the
/// "no common object" templates.
///
/// # Errors
///
/// [`ComposeError::NoImages`] if `n_images == 0`; label errors as described
/// in the module docs.
pub fn common_object<S: AsRef<str>, R: Rng + ?Sized>(
    labels: &[S],
    n_images: usize,
    rng: &mut R,
) -> Result<Answer, ComposeError> {
    common_object_with(labels, n_images, &mut |list| choose(rng, list))
}

fn common_object_with<S: AsRef<str>>(
    labels: &[S],
    n_images: usize,
    pick: Pick<'_>,
) -> Result<Answer, ComposeError> {
    validate::n_images(n_images)?;
    let groups = on_every_image(labels, n_images)?;
    let list = by_count(
        groups.len(),
        answers::COMMON_OBJECT_NONE,
        answers::COMMON_OBJECT_SINGULAR,
        answers::COMMON_OBJECT_PLURAL,
    );
    Ok(render(pick(list), &groups, n_images))
}

/// The identification sentence for a set of object mentions, one per image
/// (in any order; they are sorted by image).
///
/// If every image shows the same label the answer is e.g. "Both images show
/// <p> a dog </p> [SEG] (IMAGE1) [SEG] (IMAGE2)." ("All images show" for
/// more than two images, "The image shows" for one). Otherwise images with
/// equal labels are grouped, in order of first appearance: "The images show
/// <p> a chair </p> [SEG] (IMAGE1) and <p> an ottoman </p> [SEG] (IMAGE2)."
///
/// # Errors
///
/// [`ComposeError::NoImages`] for `n_images == 0`; an index `>= n_images`,
/// an image mentioned twice or not at all, or an invalid label.
pub fn identification<R: Rng + ?Sized>(
    mentions: &[ObjectMention],
    n_images: usize,
    rng: &mut R,
) -> Result<Answer, ComposeError> {
    identification_with(mentions, n_images, &mut |list| choose(rng, list))
}

fn identification_with(
    mentions: &[ObjectMention],
    n_images: usize,
    pick: Pick<'_>,
) -> Result<Answer, ComposeError> {
    validate::n_images(n_images)?;
    let mut by_image: Vec<Option<String>> = vec![None; n_images];
    for (index, m) in mentions.iter().enumerate() {
        let label = validate::label(&m.label, index)?;
        let slot = by_image
            .get_mut(m.image)
            .ok_or_else(|| ComposeError::ImageOutOfRange {
                label: label.clone(),
                image: m.image,
                n_images,
            })?;
        if slot.is_some() {
            return Err(ComposeError::DuplicateImage {
                label,
                image: m.image,
            });
        }
        *slot = Some(label);
    }
    let mut groups: Vec<Group> = Vec::new();
    for (image, label) in by_image.into_iter().enumerate() {
        let label = label.ok_or(ComposeError::MissingMention { image })?;
        match groups.iter_mut().find(|g| g.label == label) {
            Some(g) => g.images.push(image),
            None => groups.push(Group {
                label,
                images: vec![image],
            }),
        }
    }
    let list = match (n_images, groups.len()) {
        (1, _) => answers::IDENTIFY_SINGLE,
        (_, 1) => answers::IDENTIFY_SAME,
        _ => answers::IDENTIFY_DIFFERENT,
    };
    Ok(render(pick(list), &groups, n_images))
}

/// Answer for
/// [`Task::IdentifyObjects`](crate::templates::Task::IdentifyObjects):
/// the [`identification`] sentence, where `objects[i]` is the object of
/// image `i` (so the query has `objects.len()` images).
///
/// # Errors
///
/// [`ComposeError::NoImages`] for an empty list, or a label error.
pub fn identify_objects<S: AsRef<str>, R: Rng + ?Sized>(
    objects: &[S],
    rng: &mut R,
) -> Result<Answer, ComposeError> {
    identify_objects_with(objects, &mut |list| choose(rng, list))
}

fn identify_objects_with<S: AsRef<str>>(
    objects: &[S],
    pick: Pick<'_>,
) -> Result<Answer, ComposeError> {
    identification_with(&ObjectMention::from_labels(objects), objects.len(), pick)
}

/// Answer for [`Task::CommonParts`](crate::templates::Task::CommonParts):
/// the identification sentence for `objects` (one per image), a space, then
/// a sentence listing `parts`, each segmented in every image:
/// `<p> the leg </p> [SEG] (IMAGE1) [SEG] (IMAGE2)`.
///
/// # Errors
///
/// [`ComposeError::NoImages`] for an empty object list, or a label error.
pub fn common_parts<S: AsRef<str>, T: AsRef<str>, R: Rng + ?Sized>(
    objects: &[S],
    parts: &[T],
    rng: &mut R,
) -> Result<Answer, ComposeError> {
    common_parts_with(objects, parts, &mut |list| choose(rng, list))
}

fn common_parts_with<S: AsRef<str>, T: AsRef<str>>(
    objects: &[S],
    parts: &[T],
    pick: Pick<'_>,
) -> Result<Answer, ComposeError> {
    let n_images = objects.len();
    let id = identify_objects_with(objects, pick)?;
    let groups = on_every_image(parts, n_images)?;
    let list = by_count(
        groups.len(),
        answers::COMMON_PARTS_NONE,
        answers::COMMON_PARTS_SINGULAR,
        answers::COMMON_PARTS_PLURAL,
    );
    Ok(id.then(render(pick(list), &groups, n_images)))
}

/// Answer for [`Task::UniqueParts`](crate::templates::Task::UniqueParts):
/// the identification sentence for `objects` (one per image), a space, then
/// a sentence listing `parts`. Each part is `(label, images that have it)`
/// with 0-based indices, and is segmented only in those images, in the
/// given order: `<p> the headboard </p> [SEG] (IMAGE2)`.
///
/// # Errors
///
/// [`ComposeError::NoImages`] for an empty object list; a label error; a
/// part with no images, an index `>= objects.len()`, or a repeated index.
pub fn unique_parts<S: AsRef<str>, T: AsRef<str>, R: Rng + ?Sized>(
    objects: &[S],
    parts: &[(T, Vec<usize>)],
    rng: &mut R,
) -> Result<Answer, ComposeError> {
    unique_parts_with(objects, parts, &mut |list| choose(rng, list))
}

fn unique_parts_with<S: AsRef<str>, T: AsRef<str>>(
    objects: &[S],
    parts: &[(T, Vec<usize>)],
    pick: Pick<'_>,
) -> Result<Answer, ComposeError> {
    let n_images = objects.len();
    let id = identify_objects_with(objects, pick)?;
    let mut groups = Vec::with_capacity(parts.len());
    for (index, (label, images)) in parts.iter().enumerate() {
        let label = validate::label(label.as_ref(), index)?;
        validate::images(&label, images, n_images)?;
        groups.push(Group {
            label,
            images: images.clone(),
        });
    }
    let list = by_count(
        groups.len(),
        answers::UNIQUE_PARTS_NONE,
        answers::UNIQUE_PARTS_SINGULAR,
        answers::UNIQUE_PARTS_PLURAL,
    );
    Ok(id.then(render(pick(list), &groups, n_images)))
}

/// Validated labels, each tagged for every one of `n_images` images.
fn on_every_image<S: AsRef<str>>(
    labels: &[S],
    n_images: usize,
) -> Result<Vec<Group>, ComposeError> {
    Ok(validate::labels(labels)?
        .into_iter()
        .map(|label| Group {
            label,
            images: (0..n_images).collect(),
        })
        .collect())
}
