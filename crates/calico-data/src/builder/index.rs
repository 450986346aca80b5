//! Per-image index for pairing: which object categories an image shows, with
//! the instance masks merged per category and per part (as the reference
//! loaders OR-merge every annotation of one category into one mask).

use crate::error::{DataError, Result};
use crate::taxonomy::{Dataset, ImageRecord};
use calico_masks::Rle;
use std::collections::{BTreeMap, HashMap};

/// Interned category names (object and part names share one table).
#[derive(Default, Debug)]
pub struct Names {
    names: Vec<String>,
    ids: HashMap<String, u32>,
}

impl Names {
    /// The id of `name`, adding it when new.
    pub fn intern(&mut self, name: &str) -> u32 {
        if let Some(&id) = self.ids.get(name) {
            return id;
        }
        let id = self.names.len() as u32;
        self.names.push(name.to_string());
        self.ids.insert(name.to_string(), id);
        id
    }

    /// The name of `id`.
    pub fn name(&self, id: u32) -> &str {
        &self.names[id as usize]
    }

    /// The id of `name`, if known.
    pub fn get(&self, name: &str) -> Option<u32> {
        self.ids.get(name).copied()
    }
}

/// One object category on one image: merged object mask and merged part masks.
#[derive(Debug)]
pub struct CategoryEntry {
    /// Object category id.
    pub category: u32,
    /// Compressed RLE of the union of the category's instances.
    pub object_rle: String,
    /// `(part id, compressed RLE of the union of that part over the instances)`, sorted by id.
    pub parts: Vec<(u32, String)>,
}

impl CategoryEntry {
    /// Part ids, sorted.
    pub fn part_ids(&self) -> impl Iterator<Item = u32> + '_ {
        self.parts.iter().map(|p| p.0)
    }

    /// The merged mask of part `id`.
    pub fn part(&self, id: u32) -> Option<&str> {
        self.parts
            .binary_search_by_key(&id, |p| p.0)
            .ok()
            .map(|k| self.parts[k].1.as_str())
    }
}

/// One image ready for pairing.
#[derive(Debug)]
pub struct IndexedImage {
    /// Index into the dataset's `images`.
    pub image: usize,
    /// Categories sorted by id (crowd-only categories excluded).
    pub categories: Vec<CategoryEntry>,
}

impl IndexedImage {
    /// The entry of `category`.
    pub fn category(&self, category: u32) -> Option<&CategoryEntry> {
        self.categories
            .binary_search_by_key(&category, |c| c.category)
            .ok()
            .map(|k| &self.categories[k])
    }
}

/// Instance masks of one category on one image: objects, and parts by part id.
type InstanceMasks = (Vec<Rle>, BTreeMap<u32, Vec<Rle>>);

fn merge(rles: Vec<Rle>) -> Rle {
    if rles.len() == 1 {
        return rles.into_iter().next().unwrap_or_else(|| Rle::empty(0, 0));
    }
    Rle::merge(&rles, false)
}

/// Interns every object and part name of a dataset.
pub fn intern_all(dataset: &Dataset, names: &mut Names) {
    for record in &dataset.images {
        for obj in &record.objects {
            names.intern(&obj.category);
            for part in &obj.parts {
                names.intern(&part.category);
            }
        }
    }
}

/// Indexes one image (names must be interned already); errors name the image
/// when a mask does not have the image's size.
pub fn index_image(
    dataset: &Dataset,
    k: usize,
    record: &ImageRecord,
    names: &Names,
) -> Result<IndexedImage> {
    let mut by_cat: BTreeMap<u32, InstanceMasks> = BTreeMap::new();
    let check = |rle: &Rle, what: &str| -> Result<()> {
        if rle.height != record.height || rle.width != record.width {
            return Err(DataError::invalid(
                &dataset.image_root,
                format!("image {} ({}), {what}", record.id, record.file),
                format!(
                    "mask is {}×{} but the image is {}×{}",
                    rle.height, rle.width, record.height, record.width
                ),
            ));
        }
        Ok(())
    };
    for obj in &record.objects {
        if obj.iscrowd {
            continue;
        }
        check(&obj.mask, &format!("object annotation {}", obj.ann_id))?;
        let Some(cat) = names.get(&obj.category) else {
            continue;
        };
        let entry = by_cat.entry(cat).or_default();
        entry.0.push(obj.mask.clone());
        for part in &obj.parts {
            check(&part.mask, &format!("part annotation {}", part.ann_id))?;
            if part.mask.area() == 0 {
                continue;
            }
            let Some(pid) = names.get(&part.category) else {
                continue;
            };
            entry.1.entry(pid).or_default().push(part.mask.clone());
        }
    }
    let categories = by_cat
        .into_iter()
        .map(|(category, (objects, parts))| CategoryEntry {
            category,
            object_rle: merge(objects).to_compressed(),
            parts: parts
                .into_iter()
                .map(|(pid, rles)| (pid, merge(rles).to_compressed()))
                .collect(),
        })
        .collect();
    Ok(IndexedImage {
        image: k,
        categories,
    })
}
