//! SynthParts output is a pure function of the config: same seed, same
//! bytes (whatever the thread count); another seed, other bytes; an
//! annotation-only run writes the same annotations without the JPEGs.

use calico_data::synth::{generate, SynthConfig};
use calico_data::SourceFormat;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("calico-synth-det-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

/// Every file under `dir`, by relative path.
fn files(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let p = entry.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                let rel = p.strip_prefix(dir).unwrap().to_string_lossy().into_owned();
                out.insert(rel, std::fs::read(&p).unwrap());
            }
        }
    }
    out
}

fn config(seed: u64) -> SynthConfig {
    SynthConfig {
        seed,
        images_per_source: 24,
        width: 96,
        height: 80,
        ..SynthConfig::default()
    }
}

/// Generates into `dir`, reads every file back and removes the directory.
fn run(cfg: &SynthConfig, dir: &Path) -> BTreeMap<String, Vec<u8>> {
    generate(cfg, dir, &|_, _| {}).unwrap();
    let out = files(dir);
    let _ = std::fs::remove_dir_all(dir);
    out
}

#[test]
fn same_seed_gives_identical_bytes_on_any_thread_count() {
    let cfg = config(7);
    let a = run(&cfg, &tmp("a"));
    let one = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .unwrap();
    let b = one.install(|| run(&cfg, &tmp("b")));
    assert_eq!(a.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>());
    for (name, bytes) in &a {
        assert!(
            bytes == &b[name],
            "{name} differs between two runs of seed 7"
        );
    }
    // The expected files are all there, and no temporary file is left.
    assert!(a.keys().all(|k| !k.contains(".tmp")), "{:?}", a.keys());
    for must in [
        "synth.json",
        "paco_lvis/annotations/paco_lvis_v1_train.json",
        "paco_lvis/annotations/paco_lvis_v1_val.json",
        "paco_lvis/annotations/paco_lvis_v1_test.json",
        "part_image_net/annotations/train/train.json",
        "part_image_net/annotations/train_whole/train.json",
        "part_image_net/annotations/test_whole/test.json",
        "ade20k_part234/ade20k_instance_train.json",
        "ade20k_part234/ade20k_instance_val.json",
        "ade20k_part234/ade20k_part234_classes.json",
        "paco_lvis/train2017/000000000001.jpg",
        "ade20k_part234/images/training/ADE_synth_00000001.jpg",
        "ade20k_part234/annotations_detectron2_part/training/ADE_synth_00000001.png",
    ] {
        assert!(a.contains_key(must), "missing {must}");
    }
    let jpegs = a
        .keys()
        .filter(|k| k.ends_with(".jpg") || k.ends_with(".JPEG"))
        .count();
    assert_eq!(jpegs, 3 * 24);
}

#[test]
fn another_seed_gives_other_images_and_annotations() {
    let a = run(&config(1), &tmp("s1"));
    let b = run(&config(2), &tmp("s2"));
    let differ = |k: &str| a.get(k) != b.get(k);
    assert!(differ("paco_lvis/annotations/paco_lvis_v1_train.json"));
    assert!(differ("ade20k_part234/ade20k_instance_train.json"));
    assert!(differ("paco_lvis/train2017/000000000001.jpg"));
    let same_jpegs = a
        .iter()
        .filter(|(k, v)| k.ends_with(".jpg") && b.get(*k) == Some(v))
        .count();
    assert_eq!(same_jpegs, 0, "no image repeats across seeds");
    // The class list copy is data, not randomness.
    assert!(!differ("ade20k_part234/ade20k_part234_classes.json"));
}

#[test]
fn annotation_only_writes_the_same_annotations_and_no_jpegs() {
    let full = run(&config(3), &tmp("full"));
    let cfg = SynthConfig {
        annotation_only: true,
        ..config(3)
    };
    let ann = run(&cfg, &tmp("ann"));
    assert!(ann
        .keys()
        .all(|k| !k.ends_with(".jpg") && !k.ends_with(".JPEG")));
    for (name, bytes) in &ann {
        if name == "synth.json" {
            continue; // records the config, which differs
        }
        assert!(
            full.get(name) == Some(bytes),
            "{name} differs with annotation_only"
        );
    }
    let pngs = ann.keys().filter(|k| k.ends_with(".png")).count();
    assert_eq!(pngs, 24, "ADE part maps are annotations and are kept");
}

#[test]
fn formats_and_splits_follow_the_config() {
    let dir = tmp("one");
    let cfg = SynthConfig {
        formats: vec![SourceFormat::Ade20kPart234],
        splits: [1.0, 0.0, 0.0],
        images_per_source: 5,
        width: 64,
        height: 64,
        ..SynthConfig::default()
    };
    let seen = std::sync::Mutex::new(Vec::new());
    let summary = generate(&cfg, &dir, &|done, total| {
        seen.lock().unwrap().push((done, total))
    })
    .unwrap();
    assert_eq!(summary.sources.len(), 1);
    assert_eq!(summary.images(), 5);
    assert_eq!(seen.into_inner().unwrap().last(), Some(&(5, 5)));
    let f = files(&dir);
    assert!(f.contains_key("ade20k_part234/ade20k_instance_train.json"));
    assert!(!f.contains_key("ade20k_part234/ade20k_instance_val.json"));
    assert!(!f
        .keys()
        .any(|k| k.starts_with("paco_lvis") || k.starts_with("part_image_net")));
    let manifest: serde_json::Value = serde_json::from_slice(&f["synth.json"]).unwrap();
    assert_eq!(manifest["seed"], 0);
    assert_eq!(manifest["summary"]["sources"][0]["splits"][0]["images"], 5);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn bad_configs_are_refused_before_writing() {
    let dir = tmp("bad");
    for cfg in [
        SynthConfig {
            width: 0,
            ..SynthConfig::default()
        },
        SynthConfig {
            splits: [0.0, 0.0, 0.0],
            ..SynthConfig::default()
        },
        SynthConfig {
            splits: [f32::NAN, 0.5, 0.5],
            ..SynthConfig::default()
        },
        SynthConfig {
            max_objects: 0,
            ..SynthConfig::default()
        },
        SynthConfig {
            formats: vec![SourceFormat::PacoLvis, SourceFormat::PacoLvis],
            ..SynthConfig::default()
        },
    ] {
        let err = generate(&cfg, &dir, &|_, _| {}).unwrap_err();
        assert!(matches!(err, calico_data::DataError::Config(_)), "{err}");
    }
    assert!(!dir.exists());
}
