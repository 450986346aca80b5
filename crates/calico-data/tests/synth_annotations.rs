//! SynthParts annotations, decoded and checked against each other and the
//! files on disk: masks inside their images and non-empty, stated area and
//! box equal to the decoded mask's, parts inside their object, objects of an
//! image disjoint, PACO `obj_ann_id` links, PartImageNet's one object per
//! image, and ADE part maps that agree with `part_category_id`.

use calico_data::synth::{ade_part_classes, generate, SynthConfig, ADE_NO_PART};
use calico_masks::png_io::read_label_png;
use calico_masks::{Rle, Segmentation};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// One generated dataset shared by the tests of this file.
fn out() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let d = std::env::temp_dir().join(format!("calico-synth-ann-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        let cfg = SynthConfig {
            seed: 11,
            images_per_source: 40,
            width: 112,
            height: 96,
            max_objects: 3,
            ..SynthConfig::default()
        };
        let s = generate(&cfg, &d, &|_, _| {}).unwrap();
        assert_eq!(s.images(), 120);
        d
    })
}

fn json(path: &Path) -> Value {
    serde_json::from_slice(
        &std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())),
    )
    .unwrap()
}

struct Img {
    file: String,
    h: u32,
    w: u32,
}

fn images(doc: &Value) -> HashMap<u64, Img> {
    doc["images"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            (
                i["id"].as_u64().unwrap(),
                Img {
                    file: i["file_name"].as_str().unwrap().to_string(),
                    h: i["height"].as_u64().unwrap() as u32,
                    w: i["width"].as_u64().unwrap() as u32,
                },
            )
        })
        .collect()
}

fn categories(doc: &Value) -> HashMap<u64, Value> {
    doc["categories"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| (c["id"].as_u64().unwrap(), c.clone()))
        .collect()
}

/// Decodes an annotation's mask and checks it against its image, `area` and `bbox`.
fn mask_of(ann: &Value, img: &Img) -> Rle {
    let seg: Segmentation = serde_json::from_value(ann["segmentation"].clone()).unwrap();
    if let Segmentation::Polygons(polys) = &seg {
        for p in polys {
            assert!(p.len() >= 8 && p.len() % 2 == 0, "polygon {p:?}");
            for xy in p.chunks(2) {
                assert!(
                    (0.0..=img.w as f64).contains(&xy[0]) && (0.0..=img.h as f64).contains(&xy[1])
                );
            }
        }
    }
    let rle = seg
        .to_rle_sized(img.h, img.w)
        .expect("mask has its image's size");
    let mask = rle.decode().expect("counts cover the image exactly");
    assert!(mask.area() > 0, "empty mask in annotation {}", ann["id"]);
    assert_eq!(
        ann["area"].as_u64(),
        Some(mask.area()),
        "area of annotation {}",
        ann["id"]
    );
    let bbox: Vec<f64> = ann["bbox"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
    assert_eq!(
        bbox,
        rle.to_bbox().to_vec(),
        "bbox of annotation {}",
        ann["id"]
    );
    assert_eq!(ann["iscrowd"], 0);
    rle
}

fn inside(part: &Rle, object: &Rle) -> bool {
    Rle::merge(&[part.clone(), object.clone()], true).area() == part.area()
}

fn disjoint(a: &Rle, b: &Rle) -> bool {
    Rle::merge(&[a.clone(), b.clone()], true).area() == 0
}

#[test]
fn paco_parts_point_to_objects_of_their_image_and_lie_inside_them() {
    let root = out().join("paco_lvis");
    let mut total_parts = 0;
    for split in ["train", "val", "test"] {
        let doc = json(&root.join(format!("annotations/paco_lvis_v1_{split}.json")));
        let imgs = images(&doc);
        let cats = categories(&doc);
        let part_names: BTreeSet<&str> = doc["part_categories"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["name"].as_str().unwrap())
            .collect();
        for img in imgs.values() {
            let dir = if split == "train" {
                "train2017/"
            } else {
                "val2017/"
            };
            assert!(
                img.file.starts_with(dir) && img.file.ends_with(".jpg"),
                "{}",
                img.file
            );
            let bytes = std::fs::read(root.join(&img.file)).unwrap();
            assert_eq!(&bytes[..2], &[0xFF, 0xD8], "{} is a JPEG", img.file);
        }
        let anns = doc["annotations"].as_array().unwrap();
        let mut ids = BTreeSet::new();
        let mut objects: HashMap<u64, (u64, String, Rle)> = HashMap::new();
        for a in anns {
            assert!(
                ids.insert(a["id"].as_u64().unwrap()),
                "duplicate id {}",
                a["id"]
            );
            let name = cats[&a["category_id"].as_u64().unwrap()]["name"]
                .as_str()
                .unwrap()
                .to_string();
            if !name.contains(':') {
                assert!(a.get("obj_ann_id").is_none());
                let image = a["image_id"].as_u64().unwrap();
                let rle = mask_of(a, &imgs[&image]);
                objects.insert(a["id"].as_u64().unwrap(), (image, name, rle));
            }
        }
        // Objects of one image do not overlap (each pixel shows one object).
        let mut by_image: BTreeMap<u64, Vec<&Rle>> = BTreeMap::new();
        for (image, _, rle) in objects.values() {
            by_image.entry(*image).or_default().push(rle);
        }
        for rles in by_image.values() {
            for i in 0..rles.len() {
                for j in i + 1..rles.len() {
                    assert!(disjoint(rles[i], rles[j]));
                }
            }
        }
        let mut seen_parts: BTreeSet<(u64, String)> = BTreeSet::new();
        for a in anns {
            let name = cats[&a["category_id"].as_u64().unwrap()]["name"]
                .as_str()
                .unwrap();
            let Some((obj_name, part)) = name.split_once(':') else {
                continue;
            };
            total_parts += 1;
            assert!(part_names.contains(part), "{part} not in part_categories");
            let owner = a["obj_ann_id"].as_u64().expect("parts carry obj_ann_id");
            let (image, owner_name, owner_mask) = &objects[&owner];
            assert_eq!(
                a["image_id"].as_u64(),
                Some(*image),
                "part {} in another image",
                a["id"]
            );
            assert_eq!(owner_name, obj_name, "part {} of a {owner_name}", a["id"]);
            let rle = mask_of(a, &imgs[image]);
            assert!(
                inside(&rle, owner_mask),
                "part {} ({name}) outside its object",
                a["id"]
            );
            assert!(
                seen_parts.insert((owner, part.to_string())),
                "two {part} annotations on {owner}"
            );
        }
        for c in cats.values() {
            assert_eq!(c["supercategory"], "OBJECT");
        }
    }
    assert!(total_parts > 100, "{total_parts} parts");
}

#[test]
fn part_image_net_has_one_object_per_image_and_exact_polygons() {
    let root = out().join("part_image_net");
    for split in ["train", "val", "test"] {
        let parts_doc = json(&root.join(format!("annotations/{split}/{split}.json")));
        let whole_doc = json(&root.join(format!("annotations/{split}_whole/{split}.json")));
        let imgs = images(&whole_doc);
        assert_eq!(
            images(&parts_doc).keys().collect::<BTreeSet<_>>(),
            imgs.keys().collect::<BTreeSet<_>>(),
            "both files list the same images"
        );
        let part_cats = categories(&parts_doc);
        assert_eq!(part_cats.len(), 40, "the 40 PartImageNet part classes");
        let obj_cats = categories(&whole_doc);
        let mut objects: HashMap<u64, (Rle, String)> = HashMap::new();
        for a in whole_doc["annotations"].as_array().unwrap() {
            let image = a["image_id"].as_u64().unwrap();
            let img = &imgs[&image];
            let cat = &obj_cats[&a["category_id"].as_u64().unwrap()];
            let synset = cat["synset"].as_str().unwrap();
            assert!(img.file.starts_with(&format!("{synset}_")) && img.file.ends_with(".JPEG"));
            assert!(root.join("images").join(split).join(&img.file).is_file());
            assert!(matches!(a["segmentation"], Value::Array(_)), "polygons");
            let rle = mask_of(a, img);
            let sup = cat["supercategory"].as_str().unwrap().to_string();
            assert!(
                objects.insert(image, (rle, sup)).is_none(),
                "two objects in image {image}"
            );
        }
        let mut parts_per_image: BTreeMap<u64, BTreeSet<u64>> = BTreeMap::new();
        for a in parts_doc["annotations"].as_array().unwrap() {
            let image = a["image_id"].as_u64().unwrap();
            let (object, sup) = &objects[&image];
            let cat = &part_cats[&a["category_id"].as_u64().unwrap()];
            assert_eq!(cat["supercategory"].as_str(), Some(sup.as_str()));
            let rle = mask_of(a, &imgs[&image]);
            assert!(inside(&rle, object), "part {} outside the object", a["id"]);
            assert!(
                parts_per_image
                    .entry(image)
                    .or_default()
                    .insert(a["category_id"].as_u64().unwrap()),
                "one annotation per part class and image"
            );
        }
    }
}

#[test]
fn ade_part_maps_agree_with_part_category_id() {
    let root = out().join("ade20k_part234");
    let names = ade_part_classes();
    let copy: Vec<String> =
        serde_json::from_value(json(&root.join("ade20k_part234_classes.json"))).unwrap();
    assert_eq!(copy, names);
    let mut with_parts = 0;
    for (split, dir) in [("train", "training"), ("val", "validation")] {
        let doc = json(&root.join(format!("ade20k_instance_{split}.json")));
        let imgs = images(&doc);
        let cats = categories(&doc);
        assert_eq!(cats.len(), 44);
        let mut by_image: BTreeMap<u64, Vec<&Value>> = BTreeMap::new();
        for a in doc["annotations"].as_array().unwrap() {
            by_image
                .entry(a["image_id"].as_u64().unwrap())
                .or_default()
                .push(a);
        }
        for (id, img) in &imgs {
            assert!(img.file.starts_with("ADE_synth_") && img.file.ends_with(".jpg"));
            assert!(root.join("images").join(dir).join(&img.file).is_file());
            let png = root
                .join("annotations_detectron2_part")
                .join(dir)
                .join(img.file.replace(".jpg", ".png"));
            let map = read_label_png(&png).unwrap();
            assert_eq!((map.bit_depth, map.height, map.width), (16, img.h, img.w));
            for &v in &map.labels() {
                assert!(
                    v == ADE_NO_PART || (v as usize) < names.len(),
                    "{}: value {v}",
                    png.display()
                );
            }
            let mut claimed = vec![false; map.data.len()];
            for a in by_image.get(id).into_iter().flatten() {
                let rle = mask_of(a, img);
                let mask = rle.decode().unwrap();
                let object = cats[&a["category_id"].as_u64().unwrap()]["name"]
                    .as_str()
                    .unwrap();
                let mut visible = BTreeSet::new();
                for y in 0..img.h {
                    for x in 0..img.w {
                        if mask.get(y, x) {
                            let i = (y * img.w + x) as usize;
                            assert!(!claimed[i], "objects overlap");
                            claimed[i] = true;
                            let v = map.get(y, x);
                            if v != ADE_NO_PART {
                                visible.insert(v);
                            }
                        }
                    }
                }
                let listed: BTreeSet<u16> = a
                    .get("part_category_id")
                    .map(|v| serde_json::from_value::<Vec<u16>>(v.clone()).unwrap())
                    .unwrap_or_default()
                    .into_iter()
                    .collect();
                assert_eq!(
                    listed,
                    visible,
                    "{}: object {} ({object})",
                    png.display(),
                    a["id"]
                );
                for p in &listed {
                    let (owner, _) = names[*p as usize].split_once("'s ").unwrap();
                    assert_eq!(owner, object, "part {} on a {object}", names[*p as usize]);
                }
                with_parts += !listed.is_empty() as usize;
            }
            // Part pixels only on annotated objects.
            for (i, &v) in map.data.iter().enumerate() {
                assert!(
                    v == ADE_NO_PART || claimed[i],
                    "{}: part pixel {i} outside objects",
                    png.display()
                );
            }
        }
    }
    assert!(with_parts > 20, "{with_parts} objects with parts");
}

#[test]
fn manifest_records_config_and_counts() {
    let m = json(&out().join("synth.json"));
    assert_eq!(m["generator"], "SynthParts");
    assert_eq!(m["config"]["seed"], 11);
    assert_eq!(m["config"]["width"], 112);
    let total: u64 = m["summary"]["sources"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|s| s["splits"].as_array().unwrap())
        .map(|s| s["images"].as_u64().unwrap())
        .sum();
    assert_eq!(total, 120);
    assert!(m["classes"].as_array().unwrap().len() >= 16);
}
