//! Annotation masks of a rendered scene, in one format's part vocabulary:
//! each kept object's visible pixels, and per format part the visible pixels
//! of the shape parts that carry that name.

use super::classes::class_table;
use super::masks::{rles_by_key, transpose, NONE};
use super::scene::Rendered;
use crate::taxonomy::SourceFormat;
use calico_masks::Rle;

/// A part with fewer visible pixels is not annotated (nor drawn in label maps).
pub(crate) const MIN_PART_PIXELS: u64 = 8;

/// One annotated object.
#[derive(Clone, Debug)]
pub(crate) struct ExtObject {
    /// Class index.
    pub class: usize,
    /// Visible pixels (union of all its visible shape parts).
    pub mask: Rle,
    /// `(index into the class's format_parts, visible pixels)`, by index.
    pub parts: Vec<(usize, Rle)>,
}

/// The annotations of one image in one format.
#[derive(Clone, Debug)]
pub(crate) struct Extracted {
    pub objects: Vec<ExtObject>,
    /// Label value → annotated object index (or `NONE`).
    pub object_key_of: Vec<u32>,
    /// Label value → part key (or `NONE`).
    pub part_key_of: Vec<u32>,
    /// Part key → `(object index, format part index)`.
    pub part_keys: Vec<(usize, usize)>,
}

pub(crate) fn extract(r: &Rendered, format: SourceFormat) -> Extracted {
    let n_labels = r.label_object.len();
    let mut object_key_of = vec![NONE; n_labels];
    let mut kept_index = vec![usize::MAX; r.classes.len()];
    let mut kept = Vec::new();
    for (o, &k) in r.keep.iter().enumerate() {
        if k {
            kept_index[o] = kept.len();
            kept.push(o);
        }
    }
    // Candidate part keys: (kept object, format part), with their areas.
    let format_keys: Vec<Vec<Option<usize>>> = r
        .classes
        .iter()
        .map(|&c| class_table()[c].part_keys(format))
        .collect();
    let mut candidate = vec![None; n_labels];
    let mut areas: std::collections::BTreeMap<(usize, usize), u64> = Default::default();
    for l in 1..n_labels {
        let o = r.label_object[l] as usize;
        if kept_index[o] == usize::MAX {
            continue;
        }
        object_key_of[l] = kept_index[o] as u32;
        if let Some(fp) = format_keys[o][r.label_part[l] as usize] {
            let key = (kept_index[o], fp);
            *areas.entry(key).or_default() += r.label_area[l];
            candidate[l] = Some(key);
        }
    }
    let part_keys: Vec<(usize, usize)> = areas
        .iter()
        .filter(|(_, &a)| a >= MIN_PART_PIXELS)
        .map(|(&k, _)| k)
        .collect();
    let part_key_of: Vec<u32> = candidate
        .iter()
        .map(|c| {
            c.and_then(|k| part_keys.binary_search(&k).ok())
                .map_or(NONE, |i| i as u32)
        })
        .collect();
    let (w, h) = (r.width, r.height);
    let col = transpose(&r.labels, w, h);
    let obj_rles = rles_by_key(&col, |l| object_key_of[l as usize], w, h, kept.len());
    let part_rles = rles_by_key(&col, |l| part_key_of[l as usize], w, h, part_keys.len());
    let mut objects: Vec<ExtObject> = kept
        .iter()
        .zip(obj_rles)
        .map(|(&o, mask)| ExtObject {
            class: r.classes[o],
            mask,
            parts: Vec::new(),
        })
        .collect();
    for (&(o, fp), rle) in part_keys.iter().zip(part_rles) {
        objects[o].parts.push((fp, rle));
    }
    Extracted {
        objects,
        object_key_of,
        part_key_of,
        part_keys,
    }
}

/// Maps a row-major label buffer through `key_of`.
pub(crate) fn keys_row_major(labels: &[u16], key_of: &[u32]) -> Vec<u32> {
    labels.iter().map(|&l| key_of[l as usize]).collect()
}
