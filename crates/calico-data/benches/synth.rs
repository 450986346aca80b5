//! SynthParts throughput: renders and writes images in each source format
//! (JPEG encoding, masks, polygons, part PNGs, JSON) and prints images per
//! second, one JSON line per run.
//!
//! ```text
//! RAYON_NUM_THREADS=1 cargo bench -p calico-data --bench synth -- [--images N] [--size S] [--repeats R] [--only RUN] [--out DIR]
//! ```
//!
//! Each timed run writes to a new directory `run{k}` under `--out` (default:
//! a temporary directory, removed at the end).
//! Each run is repeated R times (default 3) and the fastest is reported.
//! `cpu_images_per_s` divides by the process's CPU time (user + system, from
//! `/proc/self/stat` on Linux), which stays meaningful on a shared machine.

#![cfg_attr(test, allow(dead_code))]

use calico_data::synth::{generate, SynthConfig};
use calico_data::SourceFormat;
use std::path::PathBuf;
use std::time::Instant;

fn arg(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

/// User + system CPU seconds of this process so far (Linux; 0 elsewhere).
fn cpu_seconds() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return 0.0;
    };
    // Fields after the parenthesised command name; utime and stime are the
    // 14th and 15th fields overall, in clock ticks (100 per second).
    let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
        return 0.0;
    };
    let f: Vec<f64> = rest
        .split_whitespace()
        .skip(11)
        .take(2)
        .filter_map(|v| v.parse().ok())
        .collect();
    f.iter().sum::<f64>() / 100.0
}

fn main() {
    let images: usize = arg("--images").and_then(|v| v.parse().ok()).unwrap_or(300);
    let size: u32 = arg("--size").and_then(|v| v.parse().ok()).unwrap_or(256);
    let repeats: usize = arg("--repeats")
        .and_then(|v| v.parse().ok())
        .unwrap_or(3)
        .max(1);
    let keep = arg("--out").map(PathBuf::from);
    let dir = keep.clone().unwrap_or_else(|| {
        std::env::temp_dir().join(format!("calico-synth-bench-{}", std::process::id()))
    });
    let threads = rayon::current_num_threads();
    let mut runs: Vec<(String, Vec<SourceFormat>, bool)> = SourceFormat::ALL
        .iter()
        .map(|&f| (f.as_str().to_string(), vec![f], false))
        .collect();
    runs.push(("all".into(), SourceFormat::ALL.to_vec(), false));
    runs.push((
        "all, annotation_only".into(),
        SourceFormat::ALL.to_vec(),
        true,
    ));
    if let Some(only) = arg("--only") {
        runs.retain(|r| r.0 == only);
    }
    let mut attempt = 0;
    for (name, formats, annotation_only) in runs {
        let cfg = SynthConfig {
            seed: 1,
            images_per_source: images,
            width: size,
            height: size,
            formats,
            annotation_only,
            ..SynthConfig::default()
        };
        let mut best: Option<(f64, f64, calico_data::synth::SynthSummary)> = None;
        for _ in 0..repeats {
            // A new directory each time, as a real run writes (deleting the
            // previous one first would time the filesystem's inode reuse).
            attempt += 1;
            let run_dir = dir.join(format!("run{attempt}"));
            let t = Instant::now();
            let cpu = cpu_seconds();
            let summary = match generate(&cfg, &run_dir, &|_, _| {}) {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("synth bench: {e}");
                    std::process::exit(1);
                }
            };
            let secs = t.elapsed().as_secs_f64();
            let cpu = cpu_seconds() - cpu;
            if best.as_ref().is_none_or(|b| secs < b.0) {
                best = Some((secs, cpu, summary));
            }
        }
        let Some((secs, cpu, summary)) = best else {
            return;
        };
        let n = summary.images() as f64;
        println!(
            "{{\"run\":\"{name}\",\"threads\":{threads},\"size\":{size},\"images\":{},\"objects\":{},\"parts\":{},\"seconds\":{secs:.3},\"images_per_s\":{:.1},\"cpu_seconds\":{cpu:.2},\"cpu_images_per_s\":{:.1}}}",
            summary.images(),
            summary.objects(),
            summary.parts(),
            n / secs,
            if cpu > 0.0 { n / cpu } else { 0.0 }
        );
    }
    if keep.is_none() {
        let _ = std::fs::remove_dir_all(&dir);
    }
}
