//! SynthParts → the three real readers → the builder: every sample satisfies
//! the invariants, and the same seed gives byte-identical files end to end.

mod common;

use calico_data::builder::{build, BuildConfig};
use calico_data::sources::{read_source, ReadOptions};
use calico_data::synth::{generate, SynthConfig};
use calico_data::SourceFormat;
use std::path::{Path, PathBuf};

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("calico-e2e-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

fn synth_and_build(dir: &Path, seed: u64) -> calico_data::builder::BuildSummary {
    let cfg = SynthConfig {
        seed,
        images_per_source: 48,
        width: 96,
        height: 96,
        ..SynthConfig::default()
    };
    generate(&cfg, &dir.join("synth"), &|_, _| {}).unwrap();
    let datasets: Vec<_> = SourceFormat::ALL
        .iter()
        .map(|&f| {
            let opts = ReadOptions {
                check_images: true,
                ..ReadOptions::default()
            };
            let d = read_source(f, &dir.join("synth").join(f.as_str()), &opts).unwrap();
            assert!(d.images.len() >= 40, "{f}: {} images", d.images.len());
            assert_eq!(d.skipped.missing_images, 0, "{f}");
            d
        })
        .collect();
    let cfg = BuildConfig {
        seed,
        ..BuildConfig::default()
    };
    build(&datasets, &cfg, &dir.join("build"), &|_, _, _| {}).unwrap()
}

fn all_bytes(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push((
                    p.strip_prefix(dir).unwrap().to_path_buf(),
                    std::fs::read(&p).unwrap(),
                ));
            }
        }
    }
    out.sort();
    out
}

#[test]
fn synth_build_invariants_and_determinism() {
    let a = tmp("a");
    let summary = synth_and_build(&a, 3);
    let per_task = common::check_build(&a.join("build"));
    for task in ["common_object", "common_parts", "unique_parts"] {
        assert!(
            per_task.get(task).copied().unwrap_or(0) >= 20,
            "{task}: {per_task:?}"
        );
    }
    for source in ["paco_lvis", "part_image_net", "ade20k_part234"] {
        assert!(
            summary.stats.by_source.get(source).copied().unwrap_or(0) > 0,
            "{source}: {:?}",
            summary.stats.by_source
        );
    }
    // Same seed → byte-identical synth files and samples.
    let b = tmp("b");
    synth_and_build(&b, 3);
    let (fa, fb) = (all_bytes(&a), all_bytes(&b));
    assert_eq!(fa.len(), fb.len());
    for ((pa, ba), (pb, bb)) in fa.iter().zip(&fb) {
        assert_eq!(pa, pb);
        assert!(
            ba == bb,
            "{} differs between two runs with the same seed",
            pa.display()
        );
    }
    let _ = std::fs::remove_dir_all(&a);
    let _ = std::fs::remove_dir_all(&b);
}
