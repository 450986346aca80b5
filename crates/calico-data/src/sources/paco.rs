//! PACO-LVIS reader.
//!
//! # Layout
//!
//! ```text
//! {root}/annotations/paco_lvis_v1_train.json   ┐ whichever exist
//! {root}/annotations/paco_lvis_v1_val.json     │ (at least one)
//! {root}/annotations/paco_lvis_v1_test.json    ┘
//! {root}/{file_name}                           images, e.g. train2017/000000000139.jpg
//! ```
//!
//! [`crate::ImageRecord::file`] is the `file_name` as written in the JSON.
//!
//! # Schema
//!
//! LVIS-style JSON: `images[{id, file_name, width, height, …}]`,
//! `categories[{id, name, …}]` and one `annotations` list holding objects and
//! parts. A category whose name contains `:` (`car_(automobile):headlight`)
//! is a part category; its annotations name their object annotation with
//! `obj_ann_id`. `segmentation` may be polygons, uncompressed or compressed
//! RLE; `iscrowd` is honoured when present.
//!
//! # Skips
//!
//! * unknown `category_id` → [`SkipCounts::unknown_categories`];
//! * unknown `image_id` → [`SkipCounts::unknown_images`];
//! * a mask with zero area → [`SkipCounts::empty_masks`];
//! * a part without `obj_ann_id`, or whose `obj_ann_id` names no (kept)
//!   object annotation of the same image → [`SkipCounts::dangling_parts`].
//!
//! Masks that cannot be decoded, or whose RLE size differs from the image,
//! are errors naming the record (`annotations[12] (id 7)`).
//!
//! The file is streamed: annotations are converted to RLE in parallel
//! batches as they are read, so the multi-hundred-megabyte train file is
//! never held as text.

use super::coco::{self, Converted, Header};
use crate::error::Result;
use crate::taxonomy::{normalise_name, ImageRecord, ObjectInstance, PartInstance, SkipCounts};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// The splits PACO-LVIS ships, in reading order.
pub const SPLITS: [&str; 3] = ["train", "val", "test"];

/// `{root}/annotations/paco_lvis_v1_{split}.json`.
pub fn annotation_path(root: &Path, split: &str) -> PathBuf {
    root.join("annotations")
        .join(format!("paco_lvis_v1_{split}.json"))
}

/// What an annotation's category is.
enum Kind {
    Object(String),
    Part(String),
}

fn category_kind(name: &str) -> Kind {
    match name.split_once(':') {
        Some((_, part)) => Kind::Part(normalise_name(part)),
        None => Kind::Object(normalise_name(name)),
    }
}

#[derive(Default)]
struct ImageAcc {
    objects: Vec<ObjectInstance>,
    parts: Vec<(u64, PartInstance)>,
}

/// Reads one PACO-LVIS annotation file; `split` is written to every
/// [`ImageRecord::split`]. Skipped records are added to `skipped`.
///
/// Images are returned in the order of the file's `images` list, only those
/// with at least one object.
pub fn read_file(path: &Path, split: &str, skipped: &mut SkipCounts) -> Result<Vec<ImageRecord>> {
    let mut kinds: Option<Vec<Kind>> = None;
    let mut acc: HashMap<usize, ImageAcc> = HashMap::new();
    let mut dangling = 0u64;
    let mut on_mask = |h: &Header, c: Converted| -> Result<()> {
        let kinds = kinds.get_or_insert_with(|| {
            h.categories
                .iter()
                .map(|c| category_kind(&c.name))
                .collect()
        });
        match &kinds[c.category] {
            Kind::Object(name) => acc
                .entry(c.image)
                .or_default()
                .objects
                .push(ObjectInstance {
                    ann_id: c.ann_id,
                    category: name.clone(),
                    mask: c.mask,
                    iscrowd: c.iscrowd,
                    parts: Vec::new(),
                }),
            Kind::Part(name) => {
                let part = PartInstance {
                    ann_id: c.ann_id,
                    category: name.clone(),
                    mask: c.mask,
                };
                match c.obj_ann_id.and_then(|v| u64::try_from(v).ok()) {
                    Some(object) => acc.entry(c.image).or_default().parts.push((object, part)),
                    None => dangling += 1,
                }
            }
        }
        Ok(())
    };
    let header = coco::read_converted(path, skipped, &mut on_mask)?;
    skipped.dangling_parts += dangling;
    let mut records = Vec::new();
    for (i, im) in header.images.into_iter().enumerate() {
        let Some(mut a) = acc.remove(&i) else {
            continue;
        };
        // The first object with an id wins if ids repeat.
        let by_id: HashMap<u64, usize> = a
            .objects
            .iter()
            .enumerate()
            .map(|(k, o)| (o.ann_id, k))
            .rev()
            .collect();
        for (object, part) in a.parts {
            match by_id.get(&object) {
                Some(&k) => a.objects[k].parts.push(part),
                None => skipped.dangling_parts += 1,
            }
        }
        if a.objects.is_empty() {
            continue;
        }
        records.push(ImageRecord {
            id: im.id.0,
            file: im.file_name,
            width: im.width,
            height: im.height,
            split: Some(split.to_string()),
            objects: a.objects,
        });
    }
    Ok(records)
}

/// Reads every split file present under `root` (or exactly `splits`, each of
/// which must exist).
pub fn read_root(
    root: &Path,
    splits: Option<&[String]>,
    skipped: &mut SkipCounts,
) -> Result<Vec<ImageRecord>> {
    let wanted = super::wanted_splits("PACO-LVIS", &SPLITS, splits)?;
    let mut records = Vec::new();
    let mut found = 0usize;
    for split in &wanted {
        let path = annotation_path(root, split);
        if !path.is_file() {
            if splits.is_some() {
                return Err(super::not_found(
                    &path,
                    &format!("PACO-LVIS {split} annotations not found"),
                ));
            }
            continue;
        }
        found += 1;
        records.extend(read_file(&path, split, skipped)?);
    }
    if found == 0 {
        let looked: Vec<String> = wanted
            .iter()
            .map(|s| annotation_path(root, s).display().to_string())
            .collect();
        return Err(super::not_found(
            root,
            &format!(
                "no PACO-LVIS annotation file found; looked for {}",
                looked.join(", ")
            ),
        ));
    }
    Ok(records)
}
