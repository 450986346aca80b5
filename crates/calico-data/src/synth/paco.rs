//! PACO-LVIS output: `paco_lvis/annotations/paco_lvis_v1_{split}.json`
//! (objects and `object:part` annotations in one list, parts pointing at
//! their object through `obj_ann_id`, compressed RLE masks) and JPEGs at
//! `paco_lvis/{train2017,val2017}/000000000001.jpg`.

use super::classes::{class_table, classes_in};
use super::coco::{header, CocoAnn, CocoImage, FormatWriter, OpenSplit, Split, SplitCounts};
use super::extract::{extract, ExtObject};
use super::io::{encode_jpeg, write_atomic};
use super::scene::render_image;
use super::{SynthConfig, JPEG_QUALITY};
use crate::error::{DataError, Result};
use crate::taxonomy::SourceFormat;
use calico_masks::CocoRle;
use serde_json::json;
use std::path::{Path, PathBuf};

const FORMAT: SourceFormat = SourceFormat::PacoLvis;

pub(crate) struct Paco {
    root: PathBuf,
    classes: Vec<usize>,
    /// Per class index: object category id (0 when not in PACO).
    object_id: Vec<u32>,
    /// Per class index: per format part: `object:part` category id.
    part_id: Vec<Vec<u32>>,
    /// `(id, name)` of every category, objects first.
    categories: Vec<(u32, String)>,
    part_names: Vec<String>,
    open: Option<OpenSplit>,
    next_ann: u64,
    /// Per category id: (images, instances) in the open split.
    usage: Vec<(usize, usize)>,
    last_image: Vec<u64>,
}

pub(crate) struct PacoImage {
    image: CocoImage,
    objects: Vec<ExtObject>,
}

impl Paco {
    pub fn new(out: &Path) -> Paco {
        let table = class_table();
        let classes = classes_in(FORMAT);
        let mut object_id = vec![0; table.len()];
        let mut part_id = vec![Vec::new(); table.len()];
        let mut categories = Vec::new();
        for &c in &classes {
            let id = categories.len() as u32 + 1;
            object_id[c] = id;
            let name = table[c].names(FORMAT).map_or("", |n| n.object);
            categories.push((id, name.to_string()));
        }
        let mut part_names: Vec<String> = Vec::new();
        for &c in &classes {
            let object = table[c].names(FORMAT).map_or("", |n| n.object);
            for part in table[c].format_parts(FORMAT) {
                let id = categories.len() as u32 + 1;
                part_id[c].push(id);
                categories.push((id, format!("{object}:{part}")));
                if !part_names.iter().any(|p| p == part) {
                    part_names.push(part.to_string());
                }
            }
        }
        part_names.sort();
        let n = categories.len() + 1;
        Paco {
            root: out.join("paco_lvis"),
            classes,
            object_id,
            part_id,
            categories,
            part_names,
            open: None,
            next_ann: 1,
            usage: vec![(0, 0); n],
            last_image: vec![0; n],
        }
    }

    fn count(&mut self, category: u32, image: u64) {
        let c = category as usize;
        if self.last_image[c] != image {
            self.last_image[c] = image;
            self.usage[c].0 += 1;
        }
        self.usage[c].1 += 1;
    }
}

impl FormatWriter for Paco {
    type Image = PacoImage;

    fn begin_split(&mut self, split: &Split) -> Result<()> {
        let dir = self.root.join(split.dir);
        std::fs::create_dir_all(&dir).map_err(|e| DataError::io(&dir, e))?;
        let path = self
            .root
            .join("annotations")
            .join(format!("paco_lvis_v1_{}.json", split.name));
        let head = header("SynthParts: synthetic images in the PACO-LVIS v1 format")
            + "\"licenses\":[{\"id\":1,\"name\":\"CC0-1.0\",\"url\":\"\"}],";
        self.open = Some(OpenSplit::open(&path, split, &head)?);
        self.usage.iter_mut().for_each(|u| *u = (0, 0));
        self.last_image.iter_mut().for_each(|u| *u = 0);
        Ok(())
    }

    fn image(&self, cfg: &SynthConfig, split: &Split, index: usize) -> Result<PacoImage> {
        let r = render_image(cfg, &self.classes, FORMAT, index);
        let file_name = format!("{}/{:012}.jpg", split.dir, index + 1);
        if let Some(rgb) = &r.rgb {
            let path = self.root.join(&file_name);
            write_atomic(
                &path,
                &encode_jpeg(&path, rgb, r.width, r.height, JPEG_QUALITY)?,
            )?;
        }
        Ok(PacoImage {
            image: CocoImage {
                id: index as u64 + 1,
                file_name,
                width: r.width,
                height: r.height,
            },
            objects: extract(&r, FORMAT).objects,
        })
    }

    fn append(&mut self, img: PacoImage) -> Result<()> {
        let image_id = img.image.id;
        for obj in &img.objects {
            let obj_id = self.next_ann;
            self.next_ann += 1;
            let category_id = self.object_id[obj.class];
            self.count(category_id, image_id);
            let mut anns = vec![CocoAnn {
                id: obj_id,
                image_id,
                category_id,
                bbox: obj.mask.to_bbox(),
                area: obj.mask.area(),
                segmentation: CocoRle::from_rle(&obj.mask),
                iscrowd: 0,
                obj_ann_id: None,
                part_category_id: None,
            }];
            for (fp, rle) in &obj.parts {
                let category_id = self.part_id[obj.class][*fp];
                self.count(category_id, image_id);
                anns.push(CocoAnn {
                    id: self.next_ann,
                    image_id,
                    category_id,
                    bbox: rle.to_bbox(),
                    area: rle.area(),
                    segmentation: CocoRle::from_rle(rle),
                    iscrowd: 0,
                    obj_ann_id: Some(obj_id),
                    part_category_id: None,
                });
                self.next_ann += 1;
            }
            let open = self
                .open
                .as_mut()
                .ok_or_else(|| DataError::Config("no open split".into()))?;
            for a in &anns {
                open.annotation(a)?;
            }
            open.counts.objects += 1;
            open.counts.parts += anns.len() - 1;
        }
        let open = self
            .open
            .as_mut()
            .ok_or_else(|| DataError::Config("no open split".into()))?;
        open.images.push(img.image);
        open.counts.images += 1;
        Ok(())
    }

    fn end_split(&mut self) -> Result<SplitCounts> {
        let open = self
            .open
            .take()
            .ok_or_else(|| DataError::Config("no open split".into()))?;
        let categories: Vec<serde_json::Value> = self
            .categories
            .iter()
            .map(|(id, name)| {
                let (images, instances) = self.usage[*id as usize];
                json!({"id": id, "name": name, "supercategory": "OBJECT", "frequency": "f",
                       "image_count": images, "instance_count": instances})
            })
            .collect();
        let parts: Vec<serde_json::Value> = self
            .part_names
            .iter()
            .enumerate()
            .map(|(i, name)| json!({"id": i + 1, "name": name, "supercategory": "PART"}))
            .collect();
        open.close(&[
            ("categories", &serde_json::Value::Array(categories)),
            ("part_categories", &serde_json::Value::Array(parts)),
        ])
    }
}
