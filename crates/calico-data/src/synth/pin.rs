//! PartImageNet output (MixedParts' version): per split a part file
//! `part_image_net/annotations/{split}/{split}.json` (categories `{id, name:
//! "head", supercategory: "quadruped"}`) and an object file
//! `part_image_net/annotations/{split}_whole/{split}.json`, one object per
//! image, linked to the parts only through `image_id`. Masks are polygon
//! lists that rasterise exactly to the visible pixels. Images are
//! `part_image_net/images/{split}/{synset}_{n}.JPEG`, where the synset id is
//! synthetic (`n99…`, see [`super::classes`]).

use super::classes::{class_table, classes_in, PART_IMAGE_NET_SUPERCATEGORIES};
use super::coco::{header, CocoAnn, CocoImage, FormatWriter, OpenSplit, Split, SplitCounts};
use super::extract::{extract, keys_row_major};
use super::io::{encode_jpeg, write_atomic};
use super::masks::polygons_by_key;
use super::scene::render_image;
use super::{SynthConfig, JPEG_QUALITY};
use crate::error::{DataError, Result};
use crate::taxonomy::SourceFormat;
use calico_masks::Rle;
use serde_json::json;
use std::path::{Path, PathBuf};

const FORMAT: SourceFormat = SourceFormat::PartImageNet;

type Polygons = Vec<Vec<f64>>;

pub(crate) struct Pin {
    root: PathBuf,
    classes: Vec<usize>,
    /// Per class index: `_whole` category id.
    object_id: Vec<u32>,
    /// Per class index: per format part: part category id.
    part_id: Vec<Vec<u32>>,
    parts: Option<OpenSplit>,
    whole: Option<OpenSplit>,
    next_part: u64,
    next_object: u64,
}

pub(crate) struct PinObject {
    class: usize,
    mask: Rle,
    polygons: Polygons,
    parts: Vec<(usize, Rle, Polygons)>,
}

pub(crate) struct PinImage {
    image: CocoImage,
    objects: Vec<PinObject>,
}

/// Part category id of `(supercategory, part)`: its position in the flat
/// list of the eleven super-categories' parts.
fn part_category(supercategory: &str, part: &str) -> Option<u32> {
    PART_IMAGE_NET_SUPERCATEGORIES
        .iter()
        .flat_map(|(s, parts)| parts.iter().map(move |p| (*s, *p)))
        .position(|(s, p)| s == supercategory && p == part)
        .map(|i| i as u32)
}

impl Pin {
    pub fn new(out: &Path) -> Result<Pin> {
        let table = class_table();
        let classes = classes_in(FORMAT);
        let mut object_id = vec![0; table.len()];
        let mut part_id = vec![Vec::new(); table.len()];
        for (k, &c) in classes.iter().enumerate() {
            object_id[c] = k as u32 + 1;
            let sup = table[c].names(FORMAT).map_or("", |n| n.supercategory);
            for part in table[c].format_parts(FORMAT) {
                let id = part_category(sup, part).ok_or_else(|| {
                    DataError::Config(format!(
                        "class table: {part} is not a PartImageNet {sup} part"
                    ))
                })?;
                part_id[c].push(id);
            }
        }
        Ok(Pin {
            root: out.join("part_image_net"),
            classes,
            object_id,
            part_id,
            parts: None,
            whole: None,
            next_part: 1,
            next_object: 1,
        })
    }
}

fn open_mut(o: &mut Option<OpenSplit>) -> Result<&mut OpenSplit> {
    o.as_mut()
        .ok_or_else(|| DataError::Config("no open split".into()))
}

impl FormatWriter for Pin {
    type Image = PinImage;

    fn begin_split(&mut self, split: &Split) -> Result<()> {
        let dir = self.root.join("images").join(split.dir);
        std::fs::create_dir_all(&dir).map_err(|e| DataError::io(&dir, e))?;
        let ann = self.root.join("annotations");
        let file = format!("{}.json", split.name);
        self.parts = Some(OpenSplit::open(
            &ann.join(split.name).join(&file),
            split,
            &header("SynthParts: synthetic images in the PartImageNet format (parts)"),
        )?);
        self.whole = Some(OpenSplit::open(
            &ann.join(format!("{}_whole", split.name)).join(&file),
            split,
            &header("SynthParts: synthetic images in the PartImageNet format (objects)"),
        )?);
        Ok(())
    }

    fn image(&self, cfg: &SynthConfig, split: &Split, index: usize) -> Result<PinImage> {
        let r = render_image(cfg, &self.classes, FORMAT, index);
        let synset = r
            .classes
            .first()
            .and_then(|&c| class_table()[c].names(FORMAT))
            .map_or("n99000000", |n| n.synset);
        let file_name = format!("{synset}_{}.JPEG", index + 1);
        if let Some(rgb) = &r.rgb {
            let path = self.root.join("images").join(split.dir).join(&file_name);
            write_atomic(
                &path,
                &encode_jpeg(&path, rgb, r.width, r.height, JPEG_QUALITY)?,
            )?;
        }
        let ext = extract(&r, FORMAT);
        let (w, h) = (r.width, r.height);
        let mut object_polys = polygons_by_key(
            &keys_row_major(&r.labels, &ext.object_key_of),
            w,
            h,
            ext.objects.len(),
        );
        let mut part_polys = polygons_by_key(
            &keys_row_major(&r.labels, &ext.part_key_of),
            w,
            h,
            ext.part_keys.len(),
        );
        // Part keys are ordered by (object, part), like each object's parts.
        let mut part_polys = part_polys.drain(..);
        let objects = ext
            .objects
            .into_iter()
            .zip(object_polys.drain(..))
            .map(|(o, polygons)| PinObject {
                class: o.class,
                mask: o.mask,
                polygons,
                parts: o
                    .parts
                    .into_iter()
                    .map(|(fp, rle)| (fp, rle, part_polys.next().unwrap_or_default()))
                    .collect(),
            })
            .collect();
        Ok(PinImage {
            image: CocoImage {
                id: index as u64 + 1,
                file_name,
                width: w,
                height: h,
            },
            objects,
        })
    }

    fn append(&mut self, img: PinImage) -> Result<()> {
        let image_id = img.image.id;
        for obj in img.objects {
            let whole = open_mut(&mut self.whole)?;
            whole.annotation(&CocoAnn {
                id: self.next_object,
                image_id,
                category_id: self.object_id[obj.class],
                bbox: obj.mask.to_bbox(),
                area: obj.mask.area(),
                segmentation: &obj.polygons,
                iscrowd: 0,
                obj_ann_id: None,
                part_category_id: None,
            })?;
            whole.counts.objects += 1;
            self.next_object += 1;
            let parts = open_mut(&mut self.parts)?;
            for (fp, rle, polygons) in &obj.parts {
                parts.annotation(&CocoAnn {
                    id: self.next_part,
                    image_id,
                    category_id: self.part_id[obj.class][*fp],
                    bbox: rle.to_bbox(),
                    area: rle.area(),
                    segmentation: polygons,
                    iscrowd: 0,
                    obj_ann_id: None,
                    part_category_id: None,
                })?;
                parts.counts.parts += 1;
                self.next_part += 1;
            }
        }
        let whole = open_mut(&mut self.whole)?;
        whole.images.push(img.image.clone());
        whole.counts.images += 1;
        let parts = open_mut(&mut self.parts)?;
        parts.images.push(img.image);
        parts.counts.images += 1;
        Ok(())
    }

    fn end_split(&mut self) -> Result<SplitCounts> {
        let part_categories: Vec<serde_json::Value> = PART_IMAGE_NET_SUPERCATEGORIES
            .iter()
            .flat_map(|(s, parts)| parts.iter().map(move |p| (*s, *p)))
            .enumerate()
            .map(|(i, (s, p))| json!({"id": i, "name": p, "supercategory": s}))
            .collect();
        let table = class_table();
        let object_categories: Vec<serde_json::Value> = self
            .classes
            .iter()
            .filter_map(|&c| {
                let n = table[c].names(FORMAT)?;
                Some(json!({"id": self.object_id[c], "name": n.object,
                            "supercategory": n.supercategory, "synset": n.synset}))
            })
            .collect();
        let parts = self
            .parts
            .take()
            .ok_or_else(|| DataError::Config("no open split".into()))?;
        let whole = self
            .whole
            .take()
            .ok_or_else(|| DataError::Config("no open split".into()))?;
        let p = parts.close(&[("categories", &serde_json::Value::Array(part_categories))])?;
        let w = whole.close(&[("categories", &serde_json::Value::Array(object_categories))])?;
        Ok(SplitCounts {
            split: w.split,
            images: w.images,
            objects: w.objects,
            parts: p.parts,
        })
    }
}
