//! The MixedParts builder: source datasets → co-segmentation samples.
//!
//! 1. index every image: object categories with their instance masks merged
//!    per category, and part masks merged per part ([`index`]);
//! 2. assign every image to one split (train/val/test), so no image is
//!    shared between splits;
//! 3. plan image pairs per source, split and task ([`plan`]);
//! 4. compose question, answer and masks with calico-text ([`compose`]);
//! 5. write `{split}.jsonl` (sharded above `shard_lines`), `stats.json`,
//!    `stats.svg` and `build.json`, each atomically.
//!
//! Everything random flows from `seed`; the output is byte-identical for the
//! same inputs and seed.

pub mod compose;
pub mod index;
pub mod pairs;
pub mod plan;
mod write;

use crate::error::{DataError, Result};
use crate::stats::{DatasetStats, StatsAccumulator};
use crate::taxonomy::Dataset;
use compose::{compose_sample, SplitImage};
use index::{index_image, intern_all, IndexedImage, Names};
pub use pairs::ComparablePairs;
use plan::{plan_task, Plan, TaskKind};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The three splits, in output order.
pub const SPLITS: [&str; 3] = ["train", "val", "test"];

/// Options of the builder.
#[derive(Clone, Debug)]
pub struct BuildConfig {
    /// Seed for splits, pairing and templates.
    pub seed: u64,
    /// Partners drawn per (image, object category) and task.
    pub per_object: usize,
    /// Fractions of images in train, val and test (ignored with `source_splits`).
    pub split_fractions: [f64; 3],
    /// Keep each source's own split (`train`/`val`/`test`) instead of drawing one.
    pub source_splits: bool,
    /// Maximum samples per (split, source, task), e.g. `{"test": 111}`.
    pub max_per_group: BTreeMap<String, usize>,
    /// Comparable category pairs.
    pub pairs: ComparablePairs,
    /// Lines per output shard; one file per split when it has fewer.
    pub shard_lines: usize,
}

impl Default for BuildConfig {
    fn default() -> Self {
        BuildConfig {
            seed: 0,
            per_object: 4,
            split_fractions: [0.8, 0.1, 0.1],
            source_splits: false,
            max_per_group: BTreeMap::new(),
            pairs: ComparablePairs::default_list(),
            shard_lines: 500_000,
        }
    }
}

/// What a build produced (also written as `build.json`).
#[derive(Clone, Debug, Serialize)]
pub struct BuildSummary {
    /// Seed used.
    pub seed: u64,
    /// Source name → image root (relative to the output directory when possible).
    pub sources: BTreeMap<String, String>,
    /// Split → files written (relative to the output directory).
    pub files: BTreeMap<String, Vec<String>>,
    /// Images per split.
    pub images: BTreeMap<String, usize>,
    /// Statistics of all samples.
    pub stats: DatasetStats,
}

/// Progress callback: `(stage, done, total)`.
pub type Progress<'a> = &'a (dyn Fn(&str, u64, u64) + Sync);

/// A stable 64-bit hash (FNV-1a) for seeding and split assignment.
fn stable_hash(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for p in parts {
        for &b in *p {
            h ^= b as u64;
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        h ^= 0xff;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    // FNV's high bits mix poorly on short keys; finish with splitmix64.
    h = (h ^ (h >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h = (h ^ (h >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

fn split_of(cfg: &BuildConfig, source: &str, image_id: &str, own: Option<&str>) -> Result<usize> {
    if cfg.source_splits {
        let own = own.unwrap_or("train");
        return SPLITS.iter().position(|s| *s == own).ok_or_else(|| {
            DataError::Config(format!(
                "image {image_id} of {source} has split {own:?}; expected train, val or test"
            ))
        });
    }
    let h = stable_hash(&[
        &cfg.seed.to_le_bytes(),
        source.as_bytes(),
        image_id.as_bytes(),
    ]);
    let u = (h >> 11) as f64 / (1u64 << 53) as f64;
    let [tr, va, _] = cfg.split_fractions;
    Ok(if u < tr {
        0
    } else if u < tr + va {
        1
    } else {
        2
    })
}

/// Path of `target` relative to directory `base` (both absolute), or
/// `target` itself when they share no prefix.
pub fn relative_path(target: &Path, base: &Path) -> String {
    let t: Vec<_> = target.components().collect();
    let b: Vec<_> = base.components().collect();
    let common = t.iter().zip(&b).take_while(|(x, y)| x == y).count();
    if common == 0 {
        return target.to_string_lossy().into_owned();
    }
    let mut out = PathBuf::new();
    for _ in common..b.len() {
        out.push("..");
    }
    for c in &t[common..] {
        out.push(c);
    }
    out.to_string_lossy().replace('\\', "/")
}

fn absolute(p: &Path) -> Result<PathBuf> {
    std::path::absolute(p).map_err(|e| DataError::io(p, e))
}

fn check_config(cfg: &BuildConfig, datasets: &[Dataset]) -> Result<()> {
    let f = cfg.split_fractions;
    if f.iter().any(|v| !(0.0..=1.0).contains(v)) || (f.iter().sum::<f64>() - 1.0).abs() > 1e-6 {
        return Err(DataError::Config(format!(
            "split fractions {f:?} must be in [0, 1] and sum to 1"
        )));
    }
    if cfg.per_object == 0 {
        return Err(DataError::Config(
            "per-object pair count must be ≥ 1".into(),
        ));
    }
    if cfg.shard_lines == 0 {
        return Err(DataError::Config("shard size must be ≥ 1 line".into()));
    }
    for k in cfg.max_per_group.keys() {
        if !SPLITS.contains(&k.as_str()) {
            return Err(DataError::Config(format!(
                "unknown split {k:?} in the per-group maximum; expected train, val or test"
            )));
        }
    }
    let mut names: Vec<&str> = datasets.iter().map(|d| d.name.as_str()).collect();
    names.sort_unstable();
    if let Some(w) = names.windows(2).find(|w| w[0] == w[1]) {
        return Err(DataError::Config(format!(
            "two sources are named {:?}; give them different names",
            w[0]
        )));
    }
    Ok(())
}

/// One source's index: images per split, ready for planning and composing.
struct SourceIndex<'a> {
    dataset: &'a Dataset,
    indexed: Vec<IndexedImage>,
    /// Per split: positions into `indexed`.
    splits: [Vec<usize>; 3],
    files: Vec<String>,
}

/// Builds samples from `datasets` into `out` (created if needed).
pub fn build(
    datasets: &[Dataset],
    cfg: &BuildConfig,
    out: &Path,
    progress: Progress,
) -> Result<BuildSummary> {
    check_config(cfg, datasets)?;
    std::fs::create_dir_all(out).map_err(|e| DataError::io(out, e))?;
    let out_abs = absolute(out)?;
    let mut names = Names::default();
    for d in datasets {
        intern_all(d, &mut names);
    }
    // Index images (merging masks is the expensive part: parallel).
    let total_images: usize = datasets.iter().map(|d| d.images.len()).sum();
    let done = std::sync::atomic::AtomicU64::new(0);
    let mut sources = Vec::new();
    for d in datasets {
        let root = absolute(&d.image_root)?;
        let indexed: Vec<IndexedImage> = d
            .images
            .par_iter()
            .enumerate()
            .map(|(k, rec)| {
                let r = index_image(d, k, rec, &names);
                let n = done.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
                if n.is_multiple_of(1024) || n as usize == total_images {
                    progress("index", n, total_images as u64);
                }
                r
            })
            .collect::<Result<_>>()?;
        let mut splits: [Vec<usize>; 3] = Default::default();
        for (k, rec) in d.images.iter().enumerate() {
            if indexed[k].categories.is_empty() {
                continue;
            }
            let s = split_of(cfg, &d.name, &rec.id, rec.split.as_deref())?;
            splits[s].push(k);
        }
        let files = d
            .images
            .iter()
            .map(|r| relative_path(&root.join(&r.file), &out_abs))
            .collect();
        sources.push(SourceIndex {
            dataset: d,
            indexed,
            splits,
            files,
        });
    }
    // Comparable categories, by id.
    let mut comparable: BTreeMap<u32, Vec<u32>> = BTreeMap::new();
    let present: Vec<u32> = {
        let mut v: Vec<u32> = sources
            .iter()
            .flat_map(|s| {
                s.indexed
                    .iter()
                    .flat_map(|i| i.categories.iter().map(|c| c.category))
            })
            .collect();
        v.sort_unstable();
        v.dedup();
        v
    };
    for &a in &present {
        let list = present
            .iter()
            .copied()
            .filter(|&b| cfg.pairs.contains(names.name(a), names.name(b)))
            .collect();
        comparable.insert(a, list);
    }
    // Plan every (split, source, task) group in parallel.
    let mut groups: Vec<(usize, usize, TaskKind)> = Vec::new();
    for s in 0..SPLITS.len() {
        for src in 0..sources.len() {
            for task in TaskKind::ALL {
                groups.push((s, src, task));
            }
        }
    }
    let planned: Vec<Vec<Plan>> = groups
        .par_iter()
        .map(|&(s, src, task)| {
            let si = &sources[src];
            let imgs: Vec<&IndexedImage> = si.splits[s].iter().map(|&k| &si.indexed[k]).collect();
            let seed = stable_hash(&[
                &cfg.seed.to_le_bytes(),
                SPLITS[s].as_bytes(),
                si.dataset.name.as_bytes(),
                task.as_str().as_bytes(),
            ]);
            let mut plans = plan_task(task, &imgs, &comparable, cfg.per_object, seed);
            if let Some(&max) = cfg.max_per_group.get(SPLITS[s]) {
                if plans.len() > max {
                    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x5eed);
                    let mut order: Vec<usize> = (0..plans.len()).collect();
                    order.shuffle(&mut rng);
                    order.truncate(max);
                    order.sort_unstable();
                    plans = order.into_iter().map(|k| plans[k]).collect();
                }
            }
            plans
        })
        .collect();
    // Compose and write, split by split.
    let total_samples: u64 = planned.iter().map(|p| p.len() as u64).sum();
    let mut writer = write::SplitWriter::new(out, cfg.shard_lines)?;
    let mut stats = StatsAccumulator::default();
    let mut written = 0u64;
    let mut counters: BTreeMap<String, u64> = BTreeMap::new();
    for (g, &(s, src, _task)) in groups.iter().enumerate() {
        let si = &sources[src];
        let split_images: Vec<SplitImage> = si.splits[s]
            .iter()
            .map(|&k| {
                let rec = &si.dataset.images[k];
                SplitImage {
                    indexed: &si.indexed[k],
                    file: &si.files[k],
                    width: rec.width,
                    height: rec.height,
                }
            })
            .collect();
        let first_id = counters.entry(si.dataset.name.clone()).or_default();
        let base = *first_id;
        *first_id += planned[g].len() as u64;
        for (c, chunk) in planned[g].chunks(4096).enumerate() {
            let lines: Vec<(String, crate::Sample)> = chunk
                .par_iter()
                .enumerate()
                .map(|(k, plan)| {
                    let n = base + (c * 4096 + k) as u64;
                    let id = format!("{}/{:08}", si.dataset.name, n);
                    let sample = compose_sample(
                        plan,
                        &split_images,
                        &names,
                        id,
                        &si.dataset.name,
                        SPLITS[s],
                    )?;
                    let line = serde_json::to_string(&sample)
                        .map_err(|e| DataError::Config(format!("serialising a sample: {e}")))?;
                    Ok((line, sample))
                })
                .collect::<Result<_>>()?;
            for (line, sample) in &lines {
                stats.add(sample);
                writer.write_line(SPLITS[s], line)?;
            }
            written += lines.len() as u64;
            progress("compose", written, total_samples);
        }
    }
    let stats = stats.finish();
    let mut summary = BuildSummary {
        seed: cfg.seed,
        sources: datasets
            .iter()
            .map(|d| {
                let root = absolute(&d.image_root)?;
                Ok((d.name.clone(), relative_path(&root, &out_abs)))
            })
            .collect::<Result<_>>()?,
        files: BTreeMap::new(),
        images: SPLITS
            .iter()
            .enumerate()
            .map(|(s, name)| {
                (
                    name.to_string(),
                    sources.iter().map(|x| x.splits[s].len()).sum(),
                )
            })
            .collect(),
        stats,
    };
    summary.files = writer.finish(&summary)?;
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_paths() {
        assert_eq!(
            relative_path(Path::new("/d/src/images/a.jpg"), Path::new("/d/out")),
            "../src/images/a.jpg"
        );
        assert_eq!(
            relative_path(Path::new("/d/out/x.jpg"), Path::new("/d/out")),
            "x.jpg"
        );
    }

    #[test]
    fn split_assignment_is_deterministic_and_roughly_proportional() {
        let cfg = BuildConfig::default();
        let counts = (0..10_000).fold([0usize; 3], |mut c, k| {
            c[split_of(&cfg, "s", &k.to_string(), None).unwrap()] += 1;
            c
        });
        assert!((7_700..8_300).contains(&counts[0]), "{counts:?}");
        assert!((800..1_200).contains(&counts[1]) && (800..1_200).contains(&counts[2]));
        assert_eq!(
            split_of(&cfg, "s", "42", None).unwrap(),
            split_of(&cfg, "s", "42", None).unwrap()
        );
        // Short consecutive ids spread over the splits too.
        let first: Vec<usize> = (0..60)
            .map(|k| split_of(&cfg, "paco_lvis", &k.to_string(), None).unwrap())
            .collect();
        assert!(first.contains(&1) && first.contains(&2), "{first:?}");
    }
}
