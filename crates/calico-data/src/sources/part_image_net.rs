//! PartImageNet reader (the MixedParts release's version and the original).
//!
//! # Layout
//!
//! ```text
//! {root}/annotations/{split}/{split}_mixed_parts.json         part annotations
//!   or   annotations/{split}/{split}.json                     (the first that exists)
//! {root}/annotations/{split}_whole/{split}_mixed_parts.json   whole-object annotations
//!   or   annotations/{split}_whole/{split}.json
//! {root}/images/{split}/{file_name}                           images
//! ```
//!
//! for `split` in `train`, `val`, `test` (whichever have a part file; at
//! least one is required). [`crate::ImageRecord::file`] is
//! `images/{split}/{file_name}`.
//!
//! # Schema
//!
//! Both files are COCO instance files. Part categories are either
//! `{name: "head", supercategory: "quadruped"}` (MixedParts) or the original
//! `{name: "Quadruped Head", supercategory: "Quadruped"}`; the
//! super-category prefix is removed and `Tier` is read as `tire`
//! ([`names::part_image_net_part`]). Whole-object categories are
//! `{name: "antelope" | "n02486261" | "killer whale", supercategory}`; names
//! go through a [`ClassMap`] to the everyday names of the Calico paper
//! (Table 6: the killer whale synset is a `whale`).
//!
//! Parts are linked to objects implicitly, by `image_id` (one object per
//! image). If an image has several whole-object annotations, a part goes to
//! the object its mask overlaps most (ties: the first). An image id missing
//! from the whole file is looked up by `file_name`.
//!
//! If a split has no `_whole` file (the original PartImageNet release), each
//! image gets one object: the union of its parts, named from the synset its
//! file name starts with (`n02071294_123.JPEG` → `whale`), else from the
//! parts' super-category; its `ann_id` is 0.
//!
//! # Skips
//!
//! Unknown images / categories and empty masks as in every reader; a part
//! whose image has no whole-object annotation → `dangling_parts`.

use super::coco::{self, Converted, Header};
use super::names;
use crate::error::{DataError, Result};
use crate::taxonomy::{normalise_name, ImageRecord, ObjectInstance, PartInstance, SkipCounts};
use calico_masks::{IouRle, Rle};
use serde::Deserialize;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// The splits PartImageNet ships.
pub const SPLITS: [&str; 3] = ["train", "val", "test"];

/// The built-in class map, `data/part_image_net_classes.json`.
pub const BUILTIN_CLASS_MAP: &str = include_str!("../../data/part_image_net_classes.json");

#[derive(Deserialize)]
struct MapFile {
    synsets: HashMap<String, SynsetEntry>,
    #[serde(default)]
    synset_ranges: Vec<RangeEntry>,
    #[serde(default)]
    aliases: HashMap<String, String>,
}

#[derive(Deserialize)]
struct SynsetEntry {
    imagenet: String,
    name: String,
}

#[derive(Deserialize)]
struct RangeEntry {
    first: String,
    last: String,
    name: String,
}

/// Maps PartImageNet object names (synset ids, ImageNet class names, or
/// already-everyday names) to the everyday names samples use.
///
/// Lookup order for a name: the user overrides (the raw name, lower-cased,
/// then normalised), the built-in synset table (for `n########` ids), the
/// built-in synset ranges (the ImageNet dog breeds), the built-in ImageNet
/// class names and aliases (normalised); otherwise the normalised name
/// itself. Results are normalised.
#[derive(Clone, Debug, Default)]
pub struct ClassMap {
    overrides: HashMap<String, String>,
    synsets: HashMap<String, String>,
    ranges: Vec<(u32, u32, String)>,
    names: HashMap<String, String>,
}

fn synset_number(s: &str) -> Option<u32> {
    names::is_synset_id(s)
        .then(|| s[1..].parse().ok())
        .flatten()
}

impl ClassMap {
    /// The built-in map (`data/part_image_net_classes.json`).
    pub fn builtin() -> Self {
        // The file is part of the crate and tested; an unreadable copy would
        // only lose the mapping, never fail reading.
        serde_json::from_str::<MapFile>(BUILTIN_CLASS_MAP)
            .map(Self::from_map_file)
            .unwrap_or_default()
    }

    fn from_map_file(f: MapFile) -> Self {
        let mut map = ClassMap::default();
        for (id, e) in f.synsets {
            let name = normalise_name(&e.name);
            map.names
                .entry(normalise_name(&e.imagenet))
                .or_insert_with(|| name.clone());
            map.synsets.insert(id.to_ascii_lowercase(), name);
        }
        for r in f.synset_ranges {
            if let (Some(a), Some(b)) = (synset_number(&r.first), synset_number(&r.last)) {
                map.ranges.push((a, b, normalise_name(&r.name)));
            }
        }
        for (alias, name) in f.aliases {
            map.names
                .insert(normalise_name(&alias), normalise_name(&name));
        }
        map
    }

    /// Adds user overrides (`{"n02071294": "whale", "killer whale": "whale"}`);
    /// they take precedence over the built-in table.
    pub fn with_overrides(mut self, overrides: HashMap<String, String>) -> Self {
        for (k, v) in overrides {
            let value = normalise_name(&v);
            self.overrides.insert(k.trim().to_string(), value.clone());
            self.overrides
                .insert(k.trim().to_lowercase(), value.clone());
            self.overrides.insert(normalise_name(&k), value);
        }
        self
    }

    /// Reads a JSON object of overrides from `path` (see [`Self::with_overrides`]).
    pub fn load_overrides(self, path: &Path) -> Result<Self> {
        let map: HashMap<String, String> = coco::read_json(path)?;
        Ok(self.with_overrides(map))
    }

    /// The everyday name of a synset id, if the map knows it.
    pub fn synset_name(&self, synset: &str) -> Option<String> {
        let key = synset.trim().to_ascii_lowercase();
        if let Some(v) = self.overrides.get(&key) {
            return Some(v.clone());
        }
        if let Some(v) = self.synsets.get(&key) {
            return Some(v.clone());
        }
        let n = synset_number(&key)?;
        self.ranges
            .iter()
            .find(|(a, b, _)| (*a..=*b).contains(&n))
            .map(|(_, _, name)| name.clone())
    }

    /// The everyday name of an object category name. `supercategory` is
    /// the fallback for synset ids the map does not know.
    pub fn object_name(&self, raw: &str, supercategory: Option<&str>) -> String {
        let raw = raw.trim();
        let norm = normalise_name(raw);
        for key in [raw.to_string(), raw.to_lowercase(), norm.clone()] {
            if let Some(v) = self.overrides.get(&key) {
                return v.clone();
            }
        }
        if names::is_synset_id(raw) {
            if let Some(v) = self.synset_name(raw) {
                return v;
            }
            if let Some(sup) = supercategory.map(normalise_name).filter(|s| !s.is_empty()) {
                return self.names.get(&sup).cloned().unwrap_or(sup);
            }
            return norm;
        }
        self.names.get(&norm).cloned().unwrap_or(norm)
    }
}

/// The part and whole-object files of a split, if present.
pub fn split_files(root: &Path, split: &str) -> (Option<PathBuf>, Option<PathBuf>) {
    let first = |dir: PathBuf| {
        [
            dir.join(format!("{split}_mixed_parts.json")),
            dir.join(format!("{split}.json")),
        ]
        .into_iter()
        .find(|p| p.is_file())
    };
    let ann = root.join("annotations");
    (
        first(ann.join(split)),
        first(ann.join(format!("{split}_whole"))),
    )
}

struct WholeObject {
    ann_id: u64,
    category: String,
    iscrowd: bool,
    mask: Rle,
}

/// Reads one split: the part file and, if given, the whole-object file.
/// `split` is written to [`ImageRecord::split`] and used for the image path
/// (`images/{split}/{file_name}`).
pub fn read_files(
    parts_path: &Path,
    whole_path: Option<&Path>,
    split: &str,
    classes: &ClassMap,
    skipped: &mut SkipCounts,
) -> Result<Vec<ImageRecord>> {
    // Parts, in file order, with their image and category.
    let mut part_names: Option<Vec<String>> = None;
    let mut parts: Vec<(usize, usize, PartInstance)> = Vec::new();
    let mut on_part = |h: &Header, c: Converted| -> Result<()> {
        let cats = part_names.get_or_insert_with(|| {
            h.categories
                .iter()
                .map(|c| names::part_image_net_part(&c.name, c.supercategory.as_deref()))
                .collect()
        });
        parts.push((
            c.image,
            c.category,
            PartInstance {
                ann_id: c.ann_id,
                category: cats[c.category].clone(),
                mask: c.mask,
            },
        ));
        Ok(())
    };
    let part_header = coco::read_converted(parts_path, skipped, &mut on_part)?;

    let Some(whole_path) = whole_path else {
        return Ok(without_whole(part_header, parts, split, classes));
    };

    let mut object_names: Option<Vec<String>> = None;
    let mut objects: HashMap<usize, Vec<WholeObject>> = HashMap::new();
    let mut on_object = |h: &Header, c: Converted| -> Result<()> {
        let cats = object_names.get_or_insert_with(|| {
            h.categories
                .iter()
                .map(|c| classes.object_name(&c.name, c.supercategory.as_deref()))
                .collect()
        });
        objects.entry(c.image).or_default().push(WholeObject {
            ann_id: c.ann_id,
            category: cats[c.category].clone(),
            iscrowd: c.iscrowd,
            mask: c.mask,
        });
        Ok(())
    };
    let whole_header = coco::read_converted(whole_path, skipped, &mut on_object)?;
    let by_file: HashMap<&str, usize> = whole_header
        .images
        .iter()
        .enumerate()
        .rev()
        .map(|(i, im)| (im.file_name.as_str(), i))
        .collect();

    // Attach each part to an object of the same image.
    let mut attached: HashMap<usize, Vec<Vec<PartInstance>>> = HashMap::new();
    for (part_image, _, part) in parts {
        let pim = &part_header.images[part_image];
        let whole_image = whole_header
            .image_index
            .get(&pim.id)
            .copied()
            .filter(|&w| whole_header.images[w].file_name == pim.file_name)
            .or_else(|| by_file.get(pim.file_name.as_str()).copied())
            .or_else(|| whole_header.image_index.get(&pim.id).copied());
        let Some(w) = whole_image else {
            skipped.dangling_parts += 1;
            continue;
        };
        let Some(objs) = objects.get(&w).filter(|o| !o.is_empty()) else {
            skipped.dangling_parts += 1;
            continue;
        };
        let wim = &whole_header.images[w];
        if (wim.width, wim.height) != (pim.width, pim.height) {
            return Err(DataError::invalid(
                parts_path,
                format!("images (id {})", pim.id.0),
                format!(
                    "image {} is {}x{} here but {}x{} in {}",
                    pim.file_name,
                    pim.width,
                    pim.height,
                    wim.width,
                    wim.height,
                    whole_path.display()
                ),
            ));
        }
        let k = best_object(&part.mask, objs.iter().map(|o| &o.mask));
        let slots = attached
            .entry(w)
            .or_insert_with(|| vec![Vec::new(); objs.len()]);
        slots[k].push(part);
    }

    let mut records = Vec::new();
    for (i, im) in whole_header.images.into_iter().enumerate() {
        let Some(objs) = objects.remove(&i) else {
            continue;
        };
        let mut slots = attached.remove(&i).unwrap_or_default();
        slots.resize_with(objs.len(), Vec::new);
        let objects = objs
            .into_iter()
            .zip(slots)
            .map(|(o, parts)| ObjectInstance {
                ann_id: o.ann_id,
                category: o.category,
                mask: o.mask,
                iscrowd: o.iscrowd,
                parts,
            })
            .collect();
        records.push(ImageRecord {
            id: im.id.0,
            file: format!("images/{split}/{}", im.file_name),
            width: im.width,
            height: im.height,
            split: Some(split.to_string()),
            objects,
        });
    }
    Ok(records)
}

/// Index of the mask in `objects` that overlaps `part` most (first on ties).
fn best_object<'a>(part: &Rle, objects: impl Iterator<Item = &'a Rle>) -> usize {
    let objects: Vec<&Rle> = objects.collect();
    if objects.len() <= 1 {
        return 0;
    }
    let p = IouRle::new(part);
    let mut best = (0usize, 0u64);
    for (k, o) in objects.iter().enumerate() {
        let inter = p.intersection(&IouRle::new(o));
        if inter > best.1 {
            best = (k, inter);
        }
    }
    best.0
}

/// One object per image, the union of its parts (original PartImageNet,
/// which has no whole-object file).
fn without_whole(
    header: Header,
    parts: Vec<(usize, usize, PartInstance)>,
    split: &str,
    classes: &ClassMap,
) -> Vec<ImageRecord> {
    let mut by_image: HashMap<usize, (Option<&str>, Vec<PartInstance>)> = HashMap::new();
    for (image, category, part) in parts {
        let entry = by_image.entry(image).or_default();
        if entry.0.is_none() {
            entry.0 = header.categories[category].supercategory.as_deref();
        }
        entry.1.push(part);
    }
    let mut records = Vec::new();
    for (i, im) in header.images.iter().enumerate() {
        let Some((sup, parts)) = by_image.remove(&i) else {
            continue;
        };
        let masks: Vec<Rle> = parts.iter().map(|p| p.mask.clone()).collect();
        let mask = Rle::merge(&masks, false);
        let category = names::synset_prefix(&im.file_name)
            .and_then(|s| classes.synset_name(s))
            .or_else(|| sup.map(|s| classes.object_name(s, None)))
            .unwrap_or_else(|| "object".to_string());
        records.push(ImageRecord {
            id: im.id.0.clone(),
            file: format!("images/{split}/{}", im.file_name),
            width: im.width,
            height: im.height,
            split: Some(split.to_string()),
            objects: vec![ObjectInstance {
                ann_id: 0,
                category,
                mask,
                iscrowd: false,
                parts,
            }],
        });
    }
    records
}

/// Reads every split with a part file under `root` (or exactly `splits`,
/// each of which must have one).
pub fn read_root(
    root: &Path,
    splits: Option<&[String]>,
    classes: &ClassMap,
    skipped: &mut SkipCounts,
) -> Result<Vec<ImageRecord>> {
    let wanted = super::wanted_splits("PartImageNet", &SPLITS, splits)?;
    let mut records = Vec::new();
    let mut found = 0;
    for split in &wanted {
        let (parts, whole) = split_files(root, split);
        let Some(parts) = parts else {
            if splits.is_some() {
                return Err(super::not_found(
                    &root
                        .join("annotations")
                        .join(split)
                        .join(format!("{split}.json")),
                    &format!("PartImageNet {split} part annotations not found"),
                ));
            }
            continue;
        };
        found += 1;
        records.extend(read_files(
            &parts,
            whole.as_deref(),
            split,
            classes,
            skipped,
        )?);
    }
    if found == 0 {
        let looked: Vec<String> = wanted
            .iter()
            .map(|s| {
                root.join("annotations")
                    .join(s)
                    .join(format!("{s}{{_mixed_parts,}}.json"))
                    .display()
                    .to_string()
            })
            .collect();
        return Err(super::not_found(
            root,
            &format!(
                "no PartImageNet part annotation file found; looked for {}",
                looked.join(", ")
            ),
        ));
    }
    Ok(records)
}
