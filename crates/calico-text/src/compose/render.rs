//! Turning labelled image groups into grounded phrases and filling answer
//! templates with them.

use super::{Answer, MaskRef};
use crate::english::{add_article, fill, write_list};
use crate::tokens::{image_tag, P_CLOSE, P_OPEN, SEG};

/// A label together with the images (0-based) it is segmented in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Group {
    pub label: String,
    pub images: Vec<usize>,
}

/// Chooses one template from a list; a seeded RNG in production, a fixed
/// choice in tests.
pub(super) type Pick<'a> = &'a mut dyn FnMut(&'static [&'static str]) -> &'static str;

/// `<p> {article} {label} </p> [SEG] (IMAGEa) [SEG] (IMAGEb) ...`, pushing
/// one mask per `[SEG]`.
fn phrase(group: &Group, definite: bool, masks: &mut Vec<MaskRef>) -> String {
    let mut out = format!("{P_OPEN} {} {P_CLOSE}", add_article(&group.label, definite));
    for &image in &group.images {
        out.push(' ');
        out.push_str(SEG);
        out.push(' ');
        out.push_str(&image_tag(image + 1));
        masks.push(MaskRef {
            label: group.label.clone(),
            image,
        });
    }
    out
}

/// `"both"` for two images, `"all"` otherwise.
fn both(n_images: usize) -> &'static str {
    if n_images == 2 {
        "both"
    } else {
        "all"
    }
}

/// Fills `template` with the grounded list of `groups`. Masks are recorded
/// as placeholders are substituted, i.e. in text order, so they always
/// match the `[SEG]` tokens of the result.
pub(super) fn render(template: &str, groups: &[Group], n_images: usize) -> Answer {
    let mut masks = Vec::new();
    let text = fill(template, |key| {
        let definite = match key {
            "both" => return Some(both(n_images).to_string()),
            "a_objects" => false,
            "the_objects" | "the_parts" => true,
            _ => return None,
        };
        let phrases: Vec<String> = groups
            .iter()
            .map(|g| phrase(g, definite, &mut masks))
            .collect();
        Some(write_list(&phrases))
    });
    Answer { text, masks }
}

/// Picks the singular, plural or empty-list template set by list length.
pub(super) fn by_count(
    len: usize,
    none: &'static [&'static str],
    singular: &'static [&'static str],
    plural: &'static [&'static str],
) -> &'static [&'static str] {
    match len {
        0 => none,
        1 => singular,
        _ => plural,
    }
}
