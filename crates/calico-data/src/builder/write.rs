//! Writing the build output atomically: everything goes to a temporary
//! directory inside the output directory and is renamed into place at the
//! end, so an interrupted build leaves the previous output untouched.

use super::{BuildSummary, SPLITS};
use crate::error::{DataError, Result};
use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

struct Shard {
    path: PathBuf,
    writer: BufWriter<File>,
    lines: usize,
}

/// Per-split JSONL writer with sharding.
pub struct SplitWriter {
    out: PathBuf,
    tmp: PathBuf,
    shard_lines: usize,
    shards: BTreeMap<String, Vec<Shard>>,
    done: bool,
}

impl SplitWriter {
    /// Starts writing into `out` (through a temporary directory).
    pub fn new(out: &Path, shard_lines: usize) -> Result<Self> {
        let tmp = out.join(format!(".build-tmp-{}", std::process::id()));
        if tmp.exists() {
            std::fs::remove_dir_all(&tmp).map_err(|e| DataError::io(&tmp, e))?;
        }
        std::fs::create_dir_all(&tmp).map_err(|e| DataError::io(&tmp, e))?;
        Ok(SplitWriter {
            out: out.to_path_buf(),
            tmp,
            shard_lines,
            shards: BTreeMap::new(),
            done: false,
        })
    }

    fn open(&self, split: &str, k: usize) -> Result<Shard> {
        let path = self.tmp.join(format!("{split}.{k:05}.part"));
        let file = File::create(&path).map_err(|e| DataError::io(&path, e))?;
        Ok(Shard {
            writer: BufWriter::with_capacity(1 << 20, file),
            path,
            lines: 0,
        })
    }

    /// Appends one JSON line to `split`.
    pub fn write_line(&mut self, split: &str, line: &str) -> Result<()> {
        let need_new = match self.shards.get(split) {
            None => true,
            Some(v) => v.last().is_none_or(|s| s.lines >= self.shard_lines),
        };
        if need_new {
            let k = self.shards.get(split).map_or(0, Vec::len);
            let shard = self.open(split, k)?;
            self.shards
                .entry(split.to_string())
                .or_default()
                .push(shard);
        }
        let Some(shard) = self.shards.get_mut(split).and_then(|v| v.last_mut()) else {
            return Err(DataError::Config("internal: no open shard".into()));
        };
        shard
            .writer
            .write_all(line.as_bytes())
            .and_then(|_| shard.writer.write_all(b"\n"))
            .map_err(|e| DataError::io(&shard.path, e))?;
        shard.lines += 1;
        Ok(())
    }

    /// Flushes everything, writes the statistics and summary, and moves the
    /// files into place. Returns split → file names.
    pub fn finish(mut self, summary: &BuildSummary) -> Result<BTreeMap<String, Vec<String>>> {
        for split in SPLITS {
            if !self.shards.contains_key(split) {
                let shard = self.open(split, 0)?;
                self.shards.insert(split.to_string(), vec![shard]);
            }
        }
        let mut moves: Vec<(PathBuf, String)> = Vec::new();
        let mut files: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (split, shards) in std::mem::take(&mut self.shards) {
            let n = shards.len();
            for (k, mut shard) in shards.into_iter().enumerate() {
                shard
                    .writer
                    .flush()
                    .and_then(|_| shard.writer.get_ref().sync_all())
                    .map_err(|e| DataError::io(&shard.path, e))?;
                let name = if n == 1 {
                    format!("{split}.jsonl")
                } else {
                    format!("{split}-{:05}-of-{n:05}.jsonl", k + 1)
                };
                files.entry(split.clone()).or_default().push(name.clone());
                moves.push((shard.path, name));
            }
        }
        let mut summary = summary.clone();
        summary.files = files.clone();
        let extra = [
            ("stats.json", to_json(&summary.stats)?),
            ("stats.txt", summary.stats.to_table()),
            ("stats.svg", summary.stats.to_svg()),
            ("build.json", to_json(&summary)?),
        ];
        for (name, text) in extra {
            let path = self.tmp.join(name);
            std::fs::write(&path, text).map_err(|e| DataError::io(&path, e))?;
            moves.push((path, name.to_string()));
        }
        remove_old_outputs(&self.out)?;
        for (from, name) in moves {
            let to = self.out.join(&name);
            std::fs::rename(&from, &to).map_err(|e| DataError::io(&to, e))?;
        }
        self.done = true;
        let _ = std::fs::remove_dir_all(&self.tmp);
        Ok(files)
    }
}

impl Drop for SplitWriter {
    fn drop(&mut self) {
        if !self.done {
            let _ = std::fs::remove_dir_all(&self.tmp);
        }
    }
}

fn to_json<T: serde::Serialize>(value: &T) -> Result<String> {
    serde_json::to_string_pretty(value)
        .map(|s| s + "\n")
        .map_err(|e| DataError::Config(format!("serialising output: {e}")))
}

/// Removes split files of an earlier build (its shard count may differ).
fn remove_old_outputs(out: &Path) -> Result<()> {
    let entries = std::fs::read_dir(out).map_err(|e| DataError::io(out, e))?;
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let old = SPLITS.iter().any(|s| {
            name == format!("{s}.jsonl")
                || (name.starts_with(&format!("{s}-")) && name.ends_with(".jsonl"))
        });
        if old {
            std::fs::remove_file(entry.path()).map_err(|e| DataError::io(entry.path(), e))?;
        }
    }
    Ok(())
}
