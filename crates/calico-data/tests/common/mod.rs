//! Invariants every built sample must satisfy (shared by the builder tests
//! and the SynthParts end-to-end test).

#![allow(dead_code)]

use calico_data::samples::{read_samples, MaskRole, Sample};
use calico_masks::Rle;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

fn rle(m: &calico_data::SampleMask) -> Rle {
    m.rle.to_rle().expect("valid RLE")
}

/// Checks one sample; panics with the sample id on any violation.
pub fn check_sample(s: &Sample) {
    let id = &s.id;
    assert_eq!(s.images.len(), 2, "{id}: two images");
    // [SEG] count = mask count, and parsing gives back labels and images.
    let parsed = calico_text::parse::parse_answer(&s.answer, s.images.len())
        .unwrap_or_else(|e| panic!("{id}: answer does not parse: {e}\n{}", s.answer));
    assert_eq!(parsed.seg_count, s.masks.len(), "{id}: [SEG] count");
    assert_eq!(parsed.requests.len(), s.masks.len(), "{id}: requests");
    for (r, m) in parsed.requests.iter().zip(&s.masks) {
        assert_eq!(
            calico_text::english::strip_article(&r.phrase).to_lowercase(),
            m.label.to_lowercase(),
            "{id}"
        );
        assert_eq!(r.image, m.image, "{id}: image of {}", m.label);
    }
    for m in &s.masks {
        let img = &s.images[m.image];
        assert_eq!(
            m.rle.size,
            [img.height, img.width],
            "{id}: mask size of {}",
            m.label
        );
        assert!(rle(m).area() > 0, "{id}: empty mask {}", m.label);
    }
    let role = |m: &calico_data::SampleMask| m.role.expect("builder writes roles");
    let objects: BTreeMap<usize, Rle> = s
        .masks
        .iter()
        .filter(|m| role(m) == MaskRole::Object)
        .map(|m| (m.image, rle(m)))
        .collect();
    let parts_on = |r: MaskRole, k: usize| -> BTreeSet<String> {
        s.masks
            .iter()
            .filter(|m| role(m) == r && m.image == k)
            .map(|m| m.label.clone())
            .collect()
    };
    match s.task.as_str() {
        "common_object" => {
            assert!(s.masks.iter().all(|m| role(m) == MaskRole::Object), "{id}");
            let labels: Vec<BTreeSet<String>> = (0..2)
                .map(|k| {
                    s.masks
                        .iter()
                        .filter(|m| m.image == k)
                        .map(|m| m.label.clone())
                        .collect()
                })
                .collect();
            assert!(!labels[0].is_empty(), "{id}: no common object");
            assert_eq!(labels[0], labels[1], "{id}: common objects on both images");
        }
        "common_parts" | "unique_parts" => {
            assert!(
                objects.contains_key(&0) && objects.contains_key(&1),
                "{id}: objects named"
            );
            for m in s.masks.iter().filter(|m| role(m) != MaskRole::Object) {
                let part = rle(m);
                let inside = Rle::merge(&[part.clone(), objects[&m.image].clone()], true);
                assert_eq!(
                    inside.area(),
                    part.area(),
                    "{id}: part {} outside its object",
                    m.label
                );
            }
            if s.task == "common_parts" {
                let (a, b) = (
                    parts_on(MaskRole::CommonPart, 0),
                    parts_on(MaskRole::CommonPart, 1),
                );
                assert!(!a.is_empty(), "{id}: no common part");
                assert_eq!(a, b, "{id}: each common part on both images");
            } else {
                let (a, b) = (
                    parts_on(MaskRole::UniquePart, 0),
                    parts_on(MaskRole::UniquePart, 1),
                );
                assert!(!(a.is_empty() && b.is_empty()), "{id}: no unique part");
                assert!(
                    a.is_disjoint(&b),
                    "{id}: a unique part on both images: {a:?} {b:?}"
                );
            }
        }
        other => panic!("{id}: unknown task {other}"),
    }
}

/// Checks every sample of a build directory and that splits share no image.
/// Returns the number of samples per task.
pub fn check_build(out: &Path) -> BTreeMap<String, usize> {
    let mut per_task = BTreeMap::new();
    let mut images_of: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for split in ["train", "val", "test"] {
        let samples = read_samples(&out.join(format!("{split}.jsonl"))).expect("split file");
        for s in &samples {
            check_sample(s);
            assert_eq!(s.split.as_deref(), Some(split));
            *per_task.entry(s.task.clone()).or_insert(0) += 1;
            for img in &s.images {
                images_of
                    .entry(split.to_string())
                    .or_default()
                    .insert(img.file.clone());
            }
        }
    }
    let splits: Vec<_> = images_of.values().collect();
    for i in 0..splits.len() {
        for j in i + 1..splits.len() {
            assert!(
                splits[i].is_disjoint(splits[j]),
                "an image is in two splits"
            );
        }
    }
    per_task
}
