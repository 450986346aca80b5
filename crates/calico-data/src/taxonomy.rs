//! The in-memory form every source reader produces and the builder consumes:
//! images, their object instances, and each object's part instances, with
//! masks as COCO RLE.
//!
//! Names are normalised to everyday English at read time (`car_(automobile)`
//! → `car`, `side_mirror` → `side mirror`), so the builder and the answer
//! text never see dataset-specific spellings.

use calico_masks::Rle;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// Which reader understands a source directory.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SourceFormat {
    /// PACO-LVIS: LVIS-style JSON, objects and `object:part` annotations in one list.
    PacoLvis,
    /// PartImageNet: a part-level COCO file plus a `*_whole` object file.
    PartImageNet,
    /// ADE20K-Part-234: COCO object instances + 16-bit part label PNGs.
    Ade20kPart234,
}

impl SourceFormat {
    /// Every format.
    pub const ALL: [SourceFormat; 3] = [
        SourceFormat::PacoLvis,
        SourceFormat::PartImageNet,
        SourceFormat::Ade20kPart234,
    ];

    /// The snake_case name used in samples (`source`) and on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            SourceFormat::PacoLvis => "paco_lvis",
            SourceFormat::PartImageNet => "part_image_net",
            SourceFormat::Ade20kPart234 => "ade20k_part234",
        }
    }
}

impl std::fmt::Display for SourceFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for SourceFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let key = s.trim().to_ascii_lowercase().replace('-', "_");
        match key.as_str() {
            "paco_lvis" | "paco" => Ok(SourceFormat::PacoLvis),
            "part_image_net" | "partimagenet" | "part_imagenet" => Ok(SourceFormat::PartImageNet),
            "ade20k_part234" | "ade20k_part_234" | "ade" | "ade20k" => {
                Ok(SourceFormat::Ade20kPart234)
            }
            _ => Err(format!(
                "unknown source format {s:?}; expected paco_lvis, part_image_net or ade20k_part234"
            )),
        }
    }
}

/// One part instance of an object: e.g. one leg of one chair.
#[derive(Clone, Debug, PartialEq)]
pub struct PartInstance {
    /// Annotation id in the source file (ADE: the part class id), for error messages.
    pub ann_id: u64,
    /// Normalised part name, e.g. `leg`, `seat cushion`.
    pub category: String,
    /// The part's pixels.
    pub mask: Rle,
}

/// One object instance in an image, with its parts.
#[derive(Clone, Debug, PartialEq)]
pub struct ObjectInstance {
    /// Annotation id in the source file.
    pub ann_id: u64,
    /// Normalised object name, e.g. `chair`, `car`.
    pub category: String,
    /// The object's pixels.
    pub mask: Rle,
    /// COCO `iscrowd` (crowd regions are kept for statistics but never paired).
    pub iscrowd: bool,
    /// Part instances that belong to this object (may be empty).
    pub parts: Vec<PartInstance>,
}

/// One image and everything annotated on it.
#[derive(Clone, Debug, PartialEq)]
pub struct ImageRecord {
    /// The source's image id as a string (ints for PACO, strings for ADE).
    pub id: String,
    /// Path relative to the source's image root, as written in samples.
    pub file: String,
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// The source's own split (`train`, `val`, `test`, ADE's `training`/`validation` → `train`/`val`), if any.
    pub split: Option<String>,
    /// Annotated objects.
    pub objects: Vec<ObjectInstance>,
}

/// Counts of records a reader skipped, by reason (printed after reading).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SkipCounts {
    /// Part annotations whose `obj_ann_id` names no object in the same image.
    pub dangling_parts: u64,
    /// Annotations whose category id is not in `categories`.
    pub unknown_categories: u64,
    /// Annotations whose image id is not in `images`.
    pub unknown_images: u64,
    /// Masks with zero area after decoding.
    pub empty_masks: u64,
    /// Images listed in the annotations but missing on disk (when checked).
    pub missing_images: u64,
    /// Image files that exist but do not open as a PNG or JPEG (when checked).
    #[serde(default)]
    pub unreadable_images: u64,
    /// Image files whose size is not the one the annotations give (when
    /// checked): their masks would not fit the pixels.
    #[serde(default)]
    pub wrong_size_images: u64,
}

impl SkipCounts {
    /// Total number of skipped records.
    pub fn total(&self) -> u64 {
        self.dangling_parts
            + self.unknown_categories
            + self.unknown_images
            + self.empty_masks
            + self.missing_images
            + self.unreadable_images
            + self.wrong_size_images
    }

    /// Adds another set of counts.
    pub fn add(&mut self, other: &SkipCounts) {
        self.dangling_parts += other.dangling_parts;
        self.unknown_categories += other.unknown_categories;
        self.unknown_images += other.unknown_images;
        self.empty_masks += other.empty_masks;
        self.missing_images += other.missing_images;
        self.unreadable_images += other.unreadable_images;
        self.wrong_size_images += other.wrong_size_images;
    }
}

/// A whole source read into memory.
#[derive(Clone, Debug)]
pub struct Dataset {
    /// Name written to samples' `source` field (defaults to the format's name).
    pub name: String,
    /// The reader used.
    pub format: SourceFormat,
    /// Directory the image `file` paths are relative to.
    pub image_root: PathBuf,
    /// Images with at least one annotated object.
    pub images: Vec<ImageRecord>,
    /// What was skipped while reading, and why.
    pub skipped: SkipCounts,
}

/// Normalises a category name the way the reference loaders do: strip a
/// parenthesised qualifier (`car_(automobile)` → `car`), turn `_` into
/// spaces, collapse whitespace and lower-case.
pub fn normalise_name(raw: &str) -> String {
    let mut s = String::with_capacity(raw.len());
    let mut depth = 0usize;
    for c in raw.chars() {
        match c {
            '(' => depth += 1,
            ')' => depth = depth.saturating_sub(1),
            _ if depth > 0 => {}
            '_' => s.push(' '),
            c => s.extend(c.to_lowercase()),
        }
    }
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_normalised_like_the_reference_loaders() {
        assert_eq!(normalise_name("car_(automobile)"), "car");
        assert_eq!(normalise_name("mouse_(computer_equipment)"), "mouse");
        assert_eq!(normalise_name("Side_Mirror"), "side mirror");
        assert_eq!(normalise_name("  seat  cushion "), "seat cushion");
        assert_eq!(normalise_name("television_set"), "television set");
    }

    #[test]
    fn formats_parse_from_their_names() {
        for f in SourceFormat::ALL {
            assert_eq!(f.as_str().parse::<SourceFormat>().unwrap(), f);
        }
        assert!("coco".parse::<SourceFormat>().is_err());
    }
}
