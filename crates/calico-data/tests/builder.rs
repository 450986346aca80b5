//! The builder on hand-made datasets: every invariant of a sample, split
//! separation, determinism, comparability and bad options.

mod common;

use calico_data::builder::{build, BuildConfig, ComparablePairs};
use calico_data::{Dataset, ImageRecord, ObjectInstance, PartInstance, SourceFormat};
use calico_masks::{Mask, Rle};
use std::path::{Path, PathBuf};

fn rect(h: u32, w: u32, y0: u32, x0: u32, y1: u32, x1: u32) -> Rle {
    Rle::encode(&Mask::from_fn(h, w, |y, x| {
        y >= y0 && y < y1 && x >= x0 && x < x1
    }))
}

/// An object filling rows 4..28 with parts in horizontal bands.
fn object(category: &str, parts: &[&str], id: u64) -> ObjectInstance {
    let (h, w) = (32, 32);
    let parts = parts
        .iter()
        .enumerate()
        .map(|(k, p)| PartInstance {
            ann_id: id * 10 + k as u64,
            category: p.to_string(),
            mask: rect(h, w, 4 + 4 * k as u32, 4, 8 + 4 * k as u32, 28),
        })
        .collect();
    ObjectInstance {
        ann_id: id,
        category: category.to_string(),
        mask: rect(h, w, 4, 4, 28, 28),
        iscrowd: false,
        parts,
    }
}

fn dataset(name: &str) -> Dataset {
    let kinds: [(&str, &[&str]); 4] = [
        ("chair", &["seat", "leg", "back", "arm"]),
        ("ottoman", &["seat", "leg"]),
        ("stool", &["seat", "leg"]),
        ("bus", &["wheel", "window", "door"]),
    ];
    let images = (0..60)
        .map(|k| {
            let (cat, parts) = kinds[k % kinds.len()];
            ImageRecord {
                id: format!("{k}"),
                file: format!("images/{k:04}.jpg"),
                width: 32,
                height: 32,
                split: None,
                objects: vec![object(cat, &parts[..parts.len() - (k / 4) % 2], k as u64)],
            }
        })
        .collect();
    Dataset {
        name: name.into(),
        format: SourceFormat::PacoLvis,
        image_root: PathBuf::from("/data/src"),
        images,
        skipped: Default::default(),
    }
}

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("calico-builder-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

fn quiet(_: &str, _: u64, _: u64) {}

fn read_all(dir: &Path) -> Vec<u8> {
    ["train.jsonl", "val.jsonl", "test.jsonl", "stats.json"]
        .iter()
        .flat_map(|f| std::fs::read(dir.join(f)).unwrap())
        .collect()
}

#[test]
fn samples_satisfy_every_invariant_and_splits_are_disjoint() {
    let out = tmp("invariants");
    let summary = build(
        &[dataset("paco_lvis")],
        &BuildConfig::default(),
        &out,
        &quiet,
    )
    .unwrap();
    let per_task = common::check_build(&out);
    assert!(
        summary.images["val"] > 0 && summary.images["test"] > 0,
        "{:?}",
        summary.images
    );
    for task in ["common_object", "common_parts", "unique_parts"] {
        assert!(
            per_task.get(task).copied().unwrap_or(0) > 10,
            "{task}: {per_task:?}"
        );
    }
    assert_eq!(
        summary.stats.samples as usize,
        per_task.values().sum::<usize>()
    );
    assert!(out.join("stats.svg").exists() && out.join("build.json").exists());
    // Image paths are relative to the output directory.
    let text = std::fs::read_to_string(out.join("train.jsonl")).unwrap();
    let first: calico_data::Sample = serde_json::from_str(text.lines().next().unwrap()).unwrap();
    assert!(first.images[0].file.starts_with("../") || first.images[0].file.starts_with('/'));
    // A bus is never compared with seating furniture.
    for line in text.lines() {
        let s: calico_data::Sample = serde_json::from_str(line).unwrap();
        let objs: Vec<&str> = s.masks.iter().take(2).map(|m| m.label.as_str()).collect();
        if objs.contains(&"bus") {
            assert!(objs.iter().all(|o| *o == "bus"), "{}: {objs:?}", s.id);
        }
    }
}

#[test]
fn same_seed_gives_identical_bytes_and_other_seeds_differ() {
    let (a, b, c) = (tmp("seed-a"), tmp("seed-b"), tmp("seed-c"));
    let cfg = BuildConfig::default();
    build(&[dataset("s")], &cfg, &a, &quiet).unwrap();
    build(&[dataset("s")], &cfg, &b, &quiet).unwrap();
    assert_eq!(read_all(&a), read_all(&b));
    let other = BuildConfig {
        seed: 9,
        ..BuildConfig::default()
    };
    build(&[dataset("s")], &other, &c, &quiet).unwrap();
    assert_ne!(read_all(&a), read_all(&c));
}

#[test]
fn per_group_maximum_and_sharding() {
    let out = tmp("max");
    let cfg = BuildConfig {
        max_per_group: [("train".to_string(), 5)].into_iter().collect(),
        shard_lines: 4,
        ..BuildConfig::default()
    };
    let summary = build(&[dataset("s")], &cfg, &out, &quiet).unwrap();
    // 3 tasks × 1 source, at most 5 each → at most 15 train samples in 4 shards.
    let train = &summary.files["train"];
    assert_eq!(train.len(), 4, "{train:?}");
    assert!(train[0].ends_with("-of-00004.jsonl"));
    let lines: usize = train
        .iter()
        .map(|f| {
            std::fs::read_to_string(out.join(f))
                .unwrap()
                .lines()
                .count()
        })
        .sum();
    assert_eq!(lines, 15);
    assert!(!out.join("train.jsonl").exists());
}

#[test]
fn user_pairs_replace_the_default_list() {
    let out = tmp("pairs");
    let file = out.with_extension("pairs.json");
    std::fs::write(&file, r#"{"groups": {"only": ["chair", "stool"]}}"#).unwrap();
    let cfg = BuildConfig {
        pairs: ComparablePairs::from_file(&file).unwrap(),
        ..BuildConfig::default()
    };
    build(&[dataset("s")], &cfg, &out, &quiet).unwrap();
    for split in ["train", "val", "test"] {
        for s in calico_data::samples::read_samples(&out.join(format!("{split}.jsonl"))).unwrap() {
            if s.task != "common_object" {
                let objs: Vec<&str> = s.masks.iter().take(2).map(|m| m.label.as_str()).collect();
                assert!(
                    !objs.contains(&"ottoman") || objs == ["ottoman", "ottoman"],
                    "{objs:?}"
                );
            }
        }
    }
}

#[test]
fn bad_options_are_errors_and_write_nothing() {
    let out = tmp("bad");
    let cfg = BuildConfig {
        split_fractions: [0.5, 0.5, 0.5],
        ..BuildConfig::default()
    };
    let err = build(&[dataset("s")], &cfg, &out, &quiet).unwrap_err();
    assert!(err.to_string().contains("split fractions"), "{err}");
    let err = build(
        &[dataset("s"), dataset("s")],
        &BuildConfig::default(),
        &out,
        &quiet,
    )
    .unwrap_err();
    assert!(err.to_string().contains("named"), "{err}");
    assert!(!out.join("train.jsonl").exists());
}
