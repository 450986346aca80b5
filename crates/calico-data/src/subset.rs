//! A smaller samples file drawn from a larger one (`calico data subset`):
//! `count` samples evenly spaced over the file, so that every source and
//! task keeps about its share of a built split, or drawn at random from a
//! seed, optionally of some tasks or sources only. Quick evaluations and
//! held-out scores then name one file that anyone can make again.
//!
//! Chosen lines keep their order. Written next to the input (the same
//! directory) they are copied byte for byte; written elsewhere, their
//! relative `images[].file` paths are rewritten to stay relative to the new
//! file's directory, and every other field is kept (as JSON with its keys
//! in sorted order).

use crate::jsonl::{JsonLines, LineError};
use crate::samples::{Sample, TASKS};
use crate::{DataError, Result};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Component, Path, PathBuf};

/// How the samples are chosen among those that match.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pick {
    /// Sample `⌊i·n/count⌋` of the `n` matching ones, for `i` in `0..count`.
    Spread,
    /// `count` distinct samples drawn uniformly with this seed.
    Random {
        /// The draw's seed: the same seed chooses the same samples.
        seed: u64,
    },
}

/// What to take.
#[derive(Clone, Debug)]
pub struct SubsetOptions {
    /// How many samples (all matching ones when fewer match).
    pub count: usize,
    /// Evenly spaced or random.
    pub pick: Pick,
    /// Only samples of these tasks (all when empty).
    pub tasks: Vec<String>,
    /// Only samples of these sources (all when empty).
    pub sources: Vec<String>,
}

/// What a subset wrote.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SubsetReport {
    /// Samples in the input file.
    pub total: usize,
    /// Samples of the requested tasks and sources.
    pub matching: usize,
    /// Samples written.
    pub written: usize,
    /// Whether image paths were rewritten for another directory.
    pub paths_rewritten: bool,
}

/// The chosen positions among `n` matching samples, ascending and distinct.
pub fn chosen_indices(n: usize, count: usize, pick: Pick) -> Vec<usize> {
    if count >= n {
        return (0..n).collect();
    }
    match pick {
        // i·n/count grows by at least 1 per step since n > count.
        Pick::Spread => (0..count)
            .map(|i| (i as u128 * n as u128 / count as u128) as usize)
            .collect(),
        Pick::Random { seed } => {
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            let mut chosen = rand::seq::index::sample(&mut rng, n, count).into_vec();
            chosen.sort_unstable();
            chosen
        }
    }
}

/// Writes the subset of `data` that `opts` asks for to `out` (atomically:
/// a failure leaves no file or the previous one). `each` sees every sample
/// written, in order.
pub fn write_subset(
    data: &Path,
    out: &Path,
    opts: &SubsetOptions,
    mut each: impl FnMut(&Sample),
) -> Result<SubsetReport> {
    let tasks = check_options(opts)?;
    let data_dir = existing_dir_of(data)?;
    let out_dir = existing_dir_of(out)?;
    if data_dir == out_dir && out.file_name() == data.file_name() {
        return Err(DataError::Config(format!(
            "--out {} is the --data file itself; write the subset to another file",
            out.display()
        )));
    }

    // Pass 1: every line is a sample; which match.
    let mut total = 0;
    let mut matching = Vec::new();
    let mut sources_seen = BTreeSet::<String>::new();
    for line in open_lines(data)? {
        let (n, text) = line_or_error(data, line)?;
        let sample: Sample = serde_json::from_str(&text)
            .map_err(|e| DataError::json(data, format!("line {n}"), e))?;
        sources_seen.insert(sample.source.clone());
        let wanted = (tasks.is_empty() || tasks.contains(&sample.task))
            && (opts.sources.is_empty() || opts.sources.contains(&sample.source));
        if wanted {
            matching.push(total);
        }
        total += 1;
    }
    for s in &opts.sources {
        if !sources_seen.contains(s) {
            let seen: Vec<&str> = sources_seen.iter().map(String::as_str).collect();
            return Err(DataError::Config(format!(
                "--source {s}: no sample of {} is of this source (its sources: {})",
                data.display(),
                if seen.is_empty() {
                    "none".to_string()
                } else {
                    seen.join(", ")
                }
            )));
        }
    }
    if matching.is_empty() {
        return Err(DataError::Config(format!(
            "no sample of {} ({total} in all) is of the requested tasks and sources",
            data.display()
        )));
    }
    let chosen: BTreeSet<usize> = chosen_indices(matching.len(), opts.count, opts.pick)
        .into_iter()
        .map(|i| matching[i])
        .collect();

    // Pass 2: copy (or rewrite) the chosen lines.
    let rewrite = data_dir != out_dir;
    let mut written = 0;
    calico_masks::png_io::write_atomic(out, |w| {
        for (ordinal, line) in open_lines(data).map_err(std::io::Error::other)?.enumerate() {
            let (n, text) = line_or_error(data, line).map_err(std::io::Error::other)?;
            if chosen.contains(&ordinal) {
                let sample: Sample = serde_json::from_str(&text).map_err(|e| {
                    std::io::Error::other(DataError::json(data, format!("line {n}"), e))
                })?;
                let line = if rewrite {
                    rewrite_image_paths(&text, &sample, &data_dir, &out_dir).map_err(|e| {
                        std::io::Error::other(DataError::json(data, format!("line {n}"), e))
                    })?
                } else {
                    text
                };
                w.write_all(line.as_bytes())?;
                w.write_all(b"\n")?;
                each(&sample);
                written += 1;
            }
        }
        if written != chosen.len() {
            return Err(std::io::Error::other(DataError::invalid(
                data,
                "reading it again",
                "the file changed while the subset was written",
            )));
        }
        Ok(())
    })
    .map_err(|e| match e {
        calico_masks::MaskError::Io { path, error } => match error.downcast::<DataError>() {
            Ok(data_error) => data_error,
            Err(error) => DataError::io(path, error),
        },
        other => DataError::Mask {
            path: out.to_path_buf(),
            context: "writing".into(),
            error: other,
        },
    })?;
    Ok(SubsetReport {
        total,
        matching: matching.len(),
        written,
        paths_rewritten: rewrite,
    })
}

/// Checks the options and returns the task names as samples write them
/// (`common-parts`, as `calico answer` spells it, is `common_parts`).
fn check_options(opts: &SubsetOptions) -> Result<Vec<String>> {
    if opts.count == 0 {
        return Err(DataError::Config("--count must be at least 1".into()));
    }
    let mut tasks = Vec::new();
    for t in &opts.tasks {
        let task = t.replace('-', "_");
        if !TASKS.contains(&task.as_str()) {
            return Err(DataError::Config(format!(
                "--task {t}: not a task; expected one of {}",
                TASKS.join(", ")
            )));
        }
        tasks.push(task);
    }
    Ok(tasks)
}

fn open_lines(path: &Path) -> Result<JsonLines<std::io::BufReader<std::fs::File>>> {
    JsonLines::open(path).map_err(|e| DataError::io(path, e))
}

fn line_or_error(
    path: &Path,
    line: std::result::Result<(usize, String), LineError>,
) -> Result<(usize, String)> {
    line.map_err(|e| match e {
        LineError::Io(e) => DataError::io(path, e),
        e => DataError::invalid(path, e.context(), e.problem()),
    })
}

/// The directory holding `file`, resolved (symbolic links included); it
/// must exist.
fn existing_dir_of(file: &Path) -> Result<PathBuf> {
    let parent = match file.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    parent.canonicalize().map_err(|e| {
        DataError::io(
            file,
            std::io::Error::new(e.kind(), format!("its directory {}: {e}", parent.display())),
        )
    })
}

/// `line` (which parses as `sample`) with each relative `images[].file`
/// made relative to `to` instead of `from` (both resolved directories). A
/// line that holds only the fields of a sample keeps their order; one with
/// fields of its own keeps those too, its keys then sorted.
fn rewrite_image_paths(
    line: &str,
    sample: &Sample,
    from: &Path,
    to: &Path,
) -> std::result::Result<String, serde_json::Error> {
    let moved = |file: &str| {
        Path::new(file)
            .is_relative()
            .then(|| crate::builder::relative_path(&normalise(&from.join(file)), to))
    };
    let mut value: serde_json::Value = serde_json::from_str(line)?;
    if serde_json::to_value(sample)? == value {
        let mut sample = sample.clone();
        for image in &mut sample.images {
            if let Some(file) = moved(&image.file) {
                image.file = file;
            }
        }
        return serde_json::to_string(&sample);
    }
    if let Some(images) = value.get_mut("images").and_then(|v| v.as_array_mut()) {
        for image in images {
            if let Some(file) = image.get_mut("file") {
                if let Some(new) = file.as_str().and_then(moved) {
                    *file = serde_json::Value::String(new);
                }
            }
        }
    }
    serde_json::to_string(&value)
}

/// `path` with `.` dropped and each `dir/..` pair removed, lexically.
fn normalise(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                if matches!(out.components().next_back(), Some(Component::Normal(_))) {
                    out.pop();
                } else if !matches!(out.components().next_back(), Some(Component::RootDir)) {
                    out.push("..");
                }
            }
            other => out.push(other),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spread_takes_every_kth_and_random_is_seeded_sorted_and_distinct() {
        assert_eq!(chosen_indices(10, 4, Pick::Spread), vec![0, 2, 5, 7]);
        assert_eq!(chosen_indices(10506, 300, Pick::Spread)[..3], [0, 35, 70]);
        assert_eq!(chosen_indices(3, 5, Pick::Spread), vec![0, 1, 2]);
        assert_eq!(
            chosen_indices(3, 3, Pick::Random { seed: 1 }),
            vec![0, 1, 2]
        );
        let a = chosen_indices(1000, 50, Pick::Random { seed: 7 });
        assert_eq!(a, chosen_indices(1000, 50, Pick::Random { seed: 7 }));
        assert_ne!(a, chosen_indices(1000, 50, Pick::Random { seed: 8 }));
        assert_eq!(a.len(), 50);
        assert!(a.windows(2).all(|w| w[0] < w[1]) && a[49] < 1000, "{a:?}");
        // Spread is evenly spaced: gaps differ by at most one.
        let s = chosen_indices(1001, 7, Pick::Spread);
        let gaps: Vec<usize> = s.windows(2).map(|w| w[1] - w[0]).collect();
        assert!(
            gaps.iter().max().unwrap() - gaps.iter().min().unwrap() <= 1,
            "{gaps:?}"
        );
    }

    #[test]
    fn normalise_removes_dot_and_dir_dotdot_pairs() {
        assert_eq!(
            normalise(Path::new("/a/b/../c/./d.jpg")),
            PathBuf::from("/a/c/d.jpg")
        );
        assert_eq!(normalise(Path::new("/../a")), PathBuf::from("/a"));
        assert_eq!(normalise(Path::new("../x/../y")), PathBuf::from("../y"));
    }

    #[test]
    fn a_plain_sample_keeps_its_field_order() {
        let line = r#"{"id":"a/1","task":"common_object","source":"a","images":[{"file":"i/x.jpg","width":4,"height":4}],"question":"q","answer":"a","masks":[]}"#;
        let sample: Sample = serde_json::from_str(line).unwrap();
        let got = rewrite_image_paths(line, &sample, Path::new("/w/mp"), Path::new("/w")).unwrap();
        assert_eq!(got, line.replace("i/x.jpg", "mp/i/x.jpg"));
    }

    #[test]
    fn rewritten_paths_point_at_the_same_files_and_keep_other_fields() {
        let line = r#"{"id":"a/1","task":"common_object","source":"a","images":[{"file":"../synth/x.jpg","width":4,"height":4},{"file":"/abs/y.png","width":4,"height":4}],"question":"q","answer":"a","masks":[],"extra":[1,2]}"#;
        let sample: Sample = serde_json::from_str(line).unwrap();
        let got = rewrite_image_paths(line, &sample, Path::new("/w/data/mp"), Path::new("/w/eval"))
            .unwrap();
        let v: serde_json::Value = serde_json::from_str(&got).unwrap();
        assert_eq!(v["images"][0]["file"], "../data/synth/x.jpg");
        assert_eq!(v["images"][1]["file"], "/abs/y.png");
        assert_eq!(v["extra"], serde_json::json!([1, 2]));
        assert_eq!(v["images"][0]["width"], 4);
    }
}
