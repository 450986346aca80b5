//! ADE20K-Part-234 output: `ade20k_part234/ade20k_instance_{train,val}.json`
//! (COCO object instances with compressed RLE masks; an object with visible
//! parts carries `part_category_id`, the sorted ids of those parts), JPEGs at
//! `ade20k_part234/images/{training,validation}/ADE_synth_00000001.jpg`,
//! 16-bit part label PNGs (part id 0..233, 65535 = no part) at
//! `ade20k_part234/annotations_detectron2_part/{training,validation}/ADE_synth_00000001.png`,
//! and a copy of the 234 part names, `ade20k_part234_classes.json`.

use super::classes::{class_table, classes_in};
use super::coco::{header, CocoAnn, CocoImage, FormatWriter, OpenSplit, Split, SplitCounts};
use super::extract::{extract, ExtObject};
use super::io::{encode_jpeg, encode_png16, write_atomic};
use super::masks::NONE;
use super::scene::render_image;
use super::{SynthConfig, JPEG_QUALITY};
use crate::error::{DataError, Result};
use crate::taxonomy::SourceFormat;
use calico_masks::CocoRle;
use serde_json::json;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

const FORMAT: SourceFormat = SourceFormat::Ade20kPart234;

/// The 234 part class names of ADE20K-Part-234, `"object's part"`, id = index.
pub const ADE_PART_CLASSES_JSON: &str = include_str!("../../data/ade20k_part234_classes.json");

/// "No part" in the 16-bit part maps.
pub const ADE_NO_PART: u16 = 65535;

/// The 234 part names (id = index).
pub fn ade_part_classes() -> &'static [String] {
    static NAMES: OnceLock<Vec<String>> = OnceLock::new();
    NAMES.get_or_init(|| serde_json::from_str(ADE_PART_CLASSES_JSON).unwrap_or_default())
}

/// The 44 object classes of ADE20K-Part-234 (the owners in the part names),
/// sorted; the instance files give them ids 1..=44 in this order.
pub fn ade_object_classes() -> Vec<String> {
    let mut out: Vec<String> = ade_part_classes()
        .iter()
        .filter_map(|n| n.split_once("'s ").map(|(o, _)| o.to_string()))
        .collect();
    out.sort();
    out.dedup();
    out
}

/// The id of `"{object}'s {part}"` (its first occurrence; "chair's seat"
/// and "armchair's seat" occur twice).
pub fn ade_part_id(object: &str, part: &str) -> Option<u16> {
    let name = format!("{object}'s {part}");
    ade_part_classes()
        .iter()
        .position(|n| *n == name)
        .map(|i| i as u16)
}

pub(crate) struct Ade {
    root: PathBuf,
    classes: Vec<usize>,
    /// Per class index: object category id.
    object_id: Vec<u32>,
    /// Per class index: per format part: ADE part id.
    part_id: Vec<Vec<u16>>,
    object_names: Vec<String>,
    open: Option<OpenSplit>,
    next_ann: u64,
}

pub(crate) struct AdeImage {
    image: CocoImage,
    objects: Vec<ExtObject>,
}

impl Ade {
    pub fn new(out: &Path) -> Result<Ade> {
        let table = class_table();
        let classes = classes_in(FORMAT);
        let object_names = ade_object_classes();
        if ade_part_classes().len() != 234 {
            return Err(DataError::Config(
                "the bundled ADE20K-Part-234 class list does not have 234 names".into(),
            ));
        }
        let mut object_id = vec![0; table.len()];
        let mut part_id = vec![Vec::new(); table.len()];
        for &c in &classes {
            let object = table[c].names(FORMAT).map_or("", |n| n.object);
            let k = object_names
                .iter()
                .position(|n| n == object)
                .ok_or_else(|| {
                    DataError::Config(format!(
                        "class table: {object} is not an ADE20K-Part-234 object"
                    ))
                })?;
            object_id[c] = k as u32 + 1;
            for part in table[c].format_parts(FORMAT) {
                let id = ade_part_id(object, part).ok_or_else(|| {
                    DataError::Config(format!(
                        "class table: \"{object}'s {part}\" is not an ADE20K-Part-234 part"
                    ))
                })?;
                part_id[c].push(id);
            }
        }
        Ok(Ade {
            root: out.join("ade20k_part234"),
            classes,
            object_id,
            part_id,
            object_names,
            open: None,
            next_ann: 1,
        })
    }

    /// Writes the copy of the part name list.
    pub fn write_class_list(&self) -> Result<()> {
        std::fs::create_dir_all(&self.root).map_err(|e| DataError::io(&self.root, e))?;
        write_atomic(
            &self.root.join("ade20k_part234_classes.json"),
            ADE_PART_CLASSES_JSON.as_bytes(),
        )
    }
}

impl FormatWriter for Ade {
    type Image = AdeImage;

    fn begin_split(&mut self, split: &Split) -> Result<()> {
        for dir in [
            self.root.join("images").join(split.dir),
            self.root
                .join("annotations_detectron2_part")
                .join(split.dir),
        ] {
            std::fs::create_dir_all(&dir).map_err(|e| DataError::io(&dir, e))?;
        }
        let path = self
            .root
            .join(format!("ade20k_instance_{}.json", split.name));
        self.open = Some(OpenSplit::open(
            &path,
            split,
            &header("SynthParts: synthetic images in the ADE20K-Part-234 format"),
        )?);
        Ok(())
    }

    fn image(&self, cfg: &SynthConfig, split: &Split, index: usize) -> Result<AdeImage> {
        let r = render_image(cfg, &self.classes, FORMAT, index);
        let stem = format!("ADE_synth_{:08}", index + 1);
        if let Some(rgb) = &r.rgb {
            let path = self
                .root
                .join("images")
                .join(split.dir)
                .join(format!("{stem}.jpg"));
            write_atomic(
                &path,
                &encode_jpeg(&path, rgb, r.width, r.height, JPEG_QUALITY)?,
            )?;
        }
        let ext = extract(&r, FORMAT);
        // Part map: label value → ADE part id.
        let ade_of_key: Vec<u16> = ext
            .part_keys
            .iter()
            .map(|&(o, fp)| self.part_id[ext.objects[o].class][fp])
            .collect();
        let ade_of_label: Vec<u16> = ext
            .part_key_of
            .iter()
            .map(|&k| {
                if k == NONE {
                    ADE_NO_PART
                } else {
                    ade_of_key[k as usize]
                }
            })
            .collect();
        let map: Vec<u16> = r.labels.iter().map(|&l| ade_of_label[l as usize]).collect();
        let png = self
            .root
            .join("annotations_detectron2_part")
            .join(split.dir)
            .join(format!("{stem}.png"));
        write_atomic(&png, &encode_png16(&png, &map, r.width, r.height)?)?;
        Ok(AdeImage {
            image: CocoImage {
                id: index as u64 + 1,
                file_name: format!("{stem}.jpg"),
                width: r.width,
                height: r.height,
            },
            objects: ext.objects,
        })
    }

    fn append(&mut self, img: AdeImage) -> Result<()> {
        let open = self
            .open
            .as_mut()
            .ok_or_else(|| DataError::Config("no open split".into()))?;
        for obj in &img.objects {
            let mut ids: Vec<u16> = obj
                .parts
                .iter()
                .map(|(fp, _)| self.part_id[obj.class][*fp])
                .collect();
            ids.sort_unstable();
            ids.dedup();
            open.annotation(&CocoAnn {
                id: self.next_ann,
                image_id: img.image.id,
                category_id: self.object_id[obj.class],
                bbox: obj.mask.to_bbox(),
                area: obj.mask.area(),
                segmentation: CocoRle::from_rle(&obj.mask),
                iscrowd: 0,
                obj_ann_id: None,
                // The field is optional: an object with no visible part has none.
                part_category_id: (!ids.is_empty()).then_some(ids),
            })?;
            self.next_ann += 1;
            open.counts.objects += 1;
            open.counts.parts += obj.parts.len();
        }
        open.images.push(img.image);
        open.counts.images += 1;
        Ok(())
    }

    fn end_split(&mut self) -> Result<SplitCounts> {
        let categories: Vec<serde_json::Value> = self
            .object_names
            .iter()
            .enumerate()
            .map(|(i, n)| json!({"id": i + 1, "name": n}))
            .collect();
        let open = self
            .open
            .take()
            .ok_or_else(|| DataError::Config("no open split".into()))?;
        open.close(&[("categories", &serde_json::Value::Array(categories))])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bundled_list_has_234_names_and_44_objects() {
        assert_eq!(ade_part_classes().len(), 234);
        assert_eq!(ade_object_classes().len(), 44);
        assert_eq!(ade_part_id("chair", "seat"), Some(49));
        assert_eq!(ade_part_id("stool", "leg"), Some(100));
        assert_eq!(ade_part_id("stool", "back"), None);
    }

    #[test]
    fn every_ade_class_maps_to_real_names() {
        assert!(Ade::new(Path::new("/nonexistent")).is_ok());
    }
}
