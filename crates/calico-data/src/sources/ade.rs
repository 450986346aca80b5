//! ADE20K-Part-234 reader (OV-PARTS layout, and the MixedParts release's
//! `_mixed_parts` instance files).
//!
//! # Layout
//!
//! ```text
//! {root}/ade20k_instance_train_mixed_parts.json   object instances
//!   or   ade20k_instance_train.json               (the first that exists)
//! {root}/ade20k_instance_val_mixed_parts.json
//!   or   ade20k_instance_val.json
//! {root}/images/training/ADE_train_00000001.jpg   images
//! {root}/images/validation/…
//! {root}/annotations_detectron2_part/training/ADE_train_00000001.png
//!                                                 16-bit part label maps
//! {root}/ade20k_part234_classes.json              optional class list
//! ```
//!
//! `file_name` in the JSON may be a bare name (`ADE_train_00000001.jpg`),
//! start at the split directory (`training/…`), or contain the `images`
//! directory (`images/training/…`, possibly after other directories); in
//! every case [`crate::ImageRecord::file`] is the path relative to `root`,
//! `images/{training|validation}/…`. The part label PNG is that path with
//! the `images` component replaced by `annotations_detectron2_part` and the
//! extension by `.png`.
//!
//! # Schema
//!
//! The instance file is a COCO instance JSON of objects (44 classes). An
//! object may list the part classes present on it in `part_category_id`.
//! Part label pixels hold part class ids: `0..234` index the class list
//! (`"chair's seat"`: the part name is the text after `'s `), 65535 means
//! "no part". The class list is `{root}/ade20k_part234_classes.json` when it
//! exists, else the built-in copy (`data/ade20k_part234_classes.json`).
//!
//! Each object's part instances are, for every part class present in the
//! label map, `(label == id) ∩ object mask`; empty intersections are
//! dropped. Candidate ids are the object's `part_category_id` when given;
//! otherwise the ids whose class belongs to the object's class (`chair's …`
//! for a chair), or every id present when the class list has no class for
//! that object at all.
//!
//! Splits: `training` → `train`, `validation` → `val` (there is no test split).
//!
//! # Skips and errors
//!
//! Unknown images / categories and empty object masks as in every reader.
//! Ids in `234..65535` (or beyond a custom list) are counted in
//! `unknown_categories`, once per image and id. A missing part PNG is an
//! `Io` error naming it; an 8-bit PNG, or one whose size differs from the
//! image's `width`/`height`, is an `Invalid` error naming the PNG.

use super::coco::{self, Converted, Header};
use super::names;
use crate::error::{DataError, Result};
use crate::taxonomy::{normalise_name, ImageRecord, ObjectInstance, PartInstance, SkipCounts};
use calico_masks::png_io::read_label_png;
use calico_masks::{Mask, MaskError, Rle};
use rayon::prelude::*;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// The built-in part class list (`data/ade20k_part234_classes.json`).
pub const BUILTIN_CLASSES: &str = include_str!("../../data/ade20k_part234_classes.json");

/// Label of "no part" pixels.
pub const NO_PART: u16 = 65535;

/// The splits, as written in [`ImageRecord::split`], with their directory names.
pub const SPLITS: [(&str, &str); 2] = [("train", "training"), ("val", "validation")];

/// The part class list: id → (object, part), both normalised.
#[derive(Clone, Debug, Default)]
pub struct PartClasses {
    classes: Vec<(String, String)>,
}

impl PartClasses {
    /// The built-in 234 classes.
    pub fn builtin() -> Self {
        // Part of the crate and tested; never fails in practice.
        serde_json::from_str::<Vec<String>>(BUILTIN_CLASSES)
            .map(|v| Self::from_names(&v))
            .unwrap_or_default()
    }

    /// Classes from `"obj's part"` strings, id = index.
    pub fn from_names<S: AsRef<str>>(names: &[S]) -> Self {
        PartClasses {
            classes: names.iter().map(|n| names::ade_class(n.as_ref())).collect(),
        }
    }

    /// Reads a JSON list of `"obj's part"` strings.
    pub fn from_file(path: &Path) -> Result<Self> {
        let v: Vec<String> = coco::read_json(path)?;
        Ok(Self::from_names(&v))
    }

    /// `{root}/ade20k_part234_classes.json` if it exists, else the built-in list.
    pub fn for_root(root: &Path) -> Result<Self> {
        let p = root.join("ade20k_part234_classes.json");
        if p.is_file() {
            Self::from_file(&p)
        } else {
            Ok(Self::builtin())
        }
    }

    /// Number of classes.
    pub fn len(&self) -> usize {
        self.classes.len()
    }

    /// Whether the list is empty.
    pub fn is_empty(&self) -> bool {
        self.classes.is_empty()
    }

    /// The part name of class `id`.
    pub fn part(&self, id: u16) -> Option<&str> {
        self.classes.get(id as usize).map(|(_, p)| p.as_str())
    }

    /// The object name of class `id` (empty when the class has none).
    pub fn object(&self, id: u16) -> Option<&str> {
        self.classes.get(id as usize).map(|(o, _)| o.as_str())
    }

    fn has_object(&self, object: &str) -> bool {
        self.classes.iter().any(|(o, _)| o == object)
    }
}

/// The instance file of a split (`train` or `val`), if present.
pub fn split_file(root: &Path, split: &str) -> Option<PathBuf> {
    [
        root.join(format!("ade20k_instance_{split}_mixed_parts.json")),
        root.join(format!("ade20k_instance_{split}.json")),
    ]
    .into_iter()
    .find(|p| p.is_file())
}

/// The image path relative to the root for a JSON `file_name`
/// (see the module docs), with `/` separators.
pub fn image_rel_path(file_name: &str, split_dir: &str) -> String {
    let parts: Vec<&str> = file_name
        .split(['/', '\\'])
        .filter(|p| !p.is_empty() && *p != ".")
        .collect();
    if let Some(k) = parts.iter().position(|p| *p == "images") {
        return parts[k..].join("/");
    }
    match parts.first() {
        Some(&"training") | Some(&"validation") => format!("images/{}", parts.join("/")),
        _ => format!("images/{split_dir}/{}", parts.join("/")),
    }
}

/// The part label PNG path for an image path from [`image_rel_path`].
pub fn part_png_rel_path(image_rel: &str) -> String {
    let mut parts: Vec<String> = image_rel.split('/').map(str::to_string).collect();
    if let Some(k) = parts.iter().position(|p| p == "images") {
        parts[k] = "annotations_detectron2_part".to_string();
    }
    if let Some(last) = parts.last_mut() {
        let stem = match last.rfind('.') {
            Some(i) if i > 0 => last[..i].to_string(),
            _ => last.clone(),
        };
        *last = format!("{stem}.png");
    }
    parts.join("/")
}

struct Obj {
    index: usize,
    ann_id: u64,
    category: String,
    iscrowd: bool,
    part_ids: Option<Vec<u64>>,
    mask: Rle,
}

/// Reads one instance file; `split` is `train`/`val` (or
/// `training`/`validation`), `root` is where `images/` and
/// `annotations_detectron2_part/` live.
pub fn read_file(
    path: &Path,
    root: &Path,
    split: &str,
    classes: &PartClasses,
    skipped: &mut SkipCounts,
) -> Result<Vec<ImageRecord>> {
    let split = names::normalise_split(split);
    let split_dir = SPLITS
        .iter()
        .find(|(s, _)| *s == split)
        .map_or(split.as_str(), |(_, d)| *d);
    let mut object_names: Option<Vec<String>> = None;
    let mut objects: HashMap<usize, Vec<Obj>> = HashMap::new();
    let mut on_object = |h: &Header, c: Converted| -> Result<()> {
        let cats = object_names.get_or_insert_with(|| {
            h.categories
                .iter()
                .map(|c| names::fix_spelling(&normalise_name(&c.name)))
                .collect()
        });
        objects.entry(c.image).or_default().push(Obj {
            index: c.index,
            ann_id: c.ann_id,
            category: cats[c.category].clone(),
            iscrowd: c.iscrowd,
            part_ids: c.part_category_id,
            mask: c.mask,
        });
        Ok(())
    };
    let header = coco::read_converted(path, skipped, &mut on_object)?;

    let work: Vec<(usize, Vec<Obj>)> = header
        .images
        .iter()
        .enumerate()
        .filter_map(|(i, _)| objects.remove(&i).map(|o| (i, o)))
        .collect();
    let results: Vec<Result<(ImageRecord, u64)>> = work
        .into_par_iter()
        .map(|(i, objs)| {
            let im = &header.images[i];
            let file = image_rel_path(&im.file_name, split_dir);
            let png = root.join(part_png_rel_path(&file));
            let (objects, unknown) = read_parts(path, &png, (im.width, im.height), objs, classes)?;
            Ok((
                ImageRecord {
                    id: im.id.0.clone(),
                    file,
                    width: im.width,
                    height: im.height,
                    split: Some(split.clone()),
                    objects,
                },
                unknown,
            ))
        })
        .collect();
    let mut records = Vec::with_capacity(results.len());
    for r in results {
        let (record, unknown) = r?;
        skipped.unknown_categories += unknown;
        records.push(record);
    }
    Ok(records)
}

/// Reads one part label PNG and builds the part instances of `objs`.
/// Returns the objects and the number of unknown part ids.
fn read_parts(
    json: &Path,
    png: &Path,
    (width, height): (u32, u32),
    objs: Vec<Obj>,
    classes: &PartClasses,
) -> Result<(Vec<ObjectInstance>, u64)> {
    let map = read_label_png(png).map_err(|e| match e {
        MaskError::Io { path, error } => DataError::io(path, error),
        other => DataError::invalid(png, "part label PNG", other.to_string()),
    })?;
    if map.bit_depth != 16 {
        return Err(DataError::invalid(
            png,
            "part label PNG",
            format!(
                "expected a 16-bit PNG of part ids (65535 = no part), found a {}-bit PNG",
                map.bit_depth
            ),
        ));
    }
    if (map.width, map.height) != (width, height) {
        return Err(DataError::invalid(
            png,
            "part label PNG",
            format!(
                "the PNG is {}x{} but its image is {width}x{height} (width x height)",
                map.width, map.height
            ),
        ));
    }
    let mut known = Vec::new();
    let mut unknown = 0u64;
    for id in map.labels() {
        if id == NO_PART {
            continue;
        }
        if (id as usize) < classes.len() {
            known.push(id);
        } else {
            unknown += 1;
        }
    }
    let mut label_masks: HashMap<u16, Mask> = HashMap::new();
    let mut out = Vec::with_capacity(objs.len());
    for o in objs {
        let ctx = || coco::ann_context(o.index, Some(o.ann_id));
        let candidates: Vec<u16> = match &o.part_ids {
            Some(list) => known
                .iter()
                .copied()
                .filter(|id| list.contains(&(*id as u64)))
                .collect(),
            None if classes.has_object(&o.category) => known
                .iter()
                .copied()
                .filter(|&id| classes.object(id) == Some(o.category.as_str()))
                .collect(),
            None => known.clone(),
        };
        let mut parts = Vec::new();
        if !candidates.is_empty() {
            let obj_mask = o
                .mask
                .decode()
                .map_err(|e| DataError::mask(json, ctx(), e))?;
            for id in candidates {
                let lm = label_masks.entry(id).or_insert_with(|| map.mask_of(id));
                let inter = lm
                    .intersection(&obj_mask)
                    .map_err(|e| DataError::mask(png, ctx(), e))?;
                if inter.area() == 0 {
                    continue;
                }
                parts.push(PartInstance {
                    ann_id: id as u64,
                    category: classes.part(id).unwrap_or_default().to_string(),
                    mask: Rle::encode(&inter),
                });
            }
        }
        out.push(ObjectInstance {
            ann_id: o.ann_id,
            category: o.category,
            mask: o.mask,
            iscrowd: o.iscrowd,
            parts,
        });
    }
    Ok((out, unknown))
}

/// Reads every split with an instance file under `root` (or exactly
/// `splits`, each of which must have one).
pub fn read_root(
    root: &Path,
    splits: Option<&[String]>,
    skipped: &mut SkipCounts,
) -> Result<Vec<ImageRecord>> {
    let all: Vec<&str> = SPLITS.iter().map(|(s, _)| *s).collect();
    let wanted = super::wanted_splits("ADE20K-Part-234", &all, splits)?;
    let classes = PartClasses::for_root(root)?;
    let mut records = Vec::new();
    let mut found = 0;
    for split in &wanted {
        let Some(path) = split_file(root, split) else {
            if splits.is_some() {
                return Err(super::not_found(
                    &root.join(format!("ade20k_instance_{split}.json")),
                    &format!("ADE20K-Part-234 {split} instances not found"),
                ));
            }
            continue;
        };
        found += 1;
        records.extend(read_file(&path, root, split, &classes, skipped)?);
    }
    if found == 0 {
        let looked: Vec<String> = wanted
            .iter()
            .map(|s| {
                root.join(format!("ade20k_instance_{s}{{_mixed_parts,}}.json"))
                    .display()
                    .to_string()
            })
            .collect();
        return Err(super::not_found(
            root,
            &format!(
                "no ADE20K-Part-234 instance file found; looked for {}",
                looked.join(", ")
            ),
        ));
    }
    Ok(records)
}
