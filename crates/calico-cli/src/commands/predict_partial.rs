//! `calico predict`'s output while it is being made. Each answer is
//! appended to `OUT.partial` as soon as it is generated, and
//! `OUT.partial.json` records what the answers are made from (the samples
//! file's content, the model, the generation length). At the end the
//! partial file becomes `OUT` by a rename. A run that stops early (Ctrl-C,
//! a kill, a crash) leaves both files; `--resume` keeps the complete lines,
//! checks that they answer the first samples of the same file with the same
//! settings, and answers the rest.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use calico_train::samples_record::SamplesRecord;
use serde::{Deserialize, Serialize};

use crate::exit::bad_input;

/// What the predictions in a partial file were made with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Settings {
    /// The samples file, identified by its content.
    pub data: SamplesRecord,
    /// The model as `calico predict` describes it (a weights directory, or a
    /// preset with its seed).
    pub model: String,
    pub max_new_tokens: usize,
}

/// An open partial predictions file.
pub struct Partial {
    path: PathBuf,
    settings_path: PathBuf,
    file: File,
    /// Predictions in the file.
    pub done: usize,
    /// Masks in those predictions.
    pub masks: usize,
}

/// `OUT.partial` and `OUT.partial.json`.
pub fn paths(out: &Path) -> (PathBuf, PathBuf) {
    let mut name = out.file_name().unwrap_or_default().to_os_string();
    name.push(".partial");
    let partial = out.with_file_name(&name);
    name.push(".json");
    (partial, out.with_file_name(name))
}

impl Partial {
    /// Starts an empty partial file for `out`. Refuses when one with
    /// answers is there: they are a run's that did not finish.
    pub fn start(out: &Path, settings: &Settings) -> Result<Self> {
        let (path, settings_path) = paths(out);
        let done = std::fs::read(&path)
            .map(|b| b.iter().filter(|&&c| c == b'\n').count())
            .unwrap_or(0);
        if done > 0 {
            return Err(bad_input(format!(
                "{}: holds {done} predictions of a `calico predict` that did not finish; \
                 pass --resume to keep them and answer the rest, or remove it to start over",
                path.display()
            )));
        }
        let text = serde_json::to_string_pretty(settings)? + "\n";
        calico_masks::png_io::write_atomic(&settings_path, |w| w.write_all(text.as_bytes()))?;
        let file = OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .open(&path)
            .with_context(|| format!("creating {}", path.display()))?;
        Ok(Self {
            path,
            settings_path,
            file,
            done: 0,
            masks: 0,
        })
    }

    /// Continues the partial file of `out`, made with `settings`, whose
    /// lines must answer the samples `ids` in order (`ids` are the samples
    /// this run answers, so a file longer than them is refused too). A
    /// line cut short by the stop is dropped; without a partial file the
    /// run starts afresh.
    pub fn resume(out: &Path, settings: &Settings, ids: &[&str]) -> Result<Self> {
        let (path, settings_path) = paths(out);
        if !path.exists() {
            eprintln!(
                "--resume: no {} to continue; answering every sample",
                path.display()
            );
            return Self::start(out, settings);
        }
        let recorded: Settings = std::fs::read_to_string(&settings_path)
            .map_err(anyhow::Error::from)
            .and_then(|t| Ok(serde_json::from_str(&t)?))
            .map_err(|e| {
                bad_input(format!(
                    "{}: cannot read what the predictions in {} were made with ({e}); \
                     remove both files to start over",
                    settings_path.display(),
                    path.display()
                ))
            })?;
        check_same(&recorded, settings, &path)?;
        let bytes = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
        let whole = bytes.iter().rposition(|&c| c == b'\n').map_or(0, |i| i + 1);
        let (mut done, mut masks) = (0, 0);
        for (k, line) in bytes[..whole].split(|&c| c == b'\n').enumerate() {
            if line.is_empty() {
                continue;
            }
            let (id, n_masks) = id_and_masks(line).map_err(|e| {
                bad_input(format!(
                    "{}: line {}: {e}; remove it (and {}) to start over",
                    path.display(),
                    k + 1,
                    settings_path.display()
                ))
            })?;
            match ids.get(done) {
                Some(want) if *want == id => {}
                Some(want) => {
                    return Err(bad_input(format!(
                        "{}: line {} answers sample {id:?}, but sample {} of this run is \
                         {want:?}: the file was made from other samples or another --limit",
                        path.display(),
                        k + 1,
                        done + 1
                    )))
                }
                None => {
                    return Err(bad_input(format!(
                        "{}: holds more predictions than the {} samples this run answers \
                         (a smaller --limit than the run it continues)",
                        path.display(),
                        ids.len()
                    )))
                }
            }
            done += 1;
            masks += n_masks;
        }
        let file = OpenOptions::new()
            .append(true)
            .open(&path)
            .with_context(|| format!("opening {}", path.display()))?;
        if whole < bytes.len() {
            // The last answer was cut short by the stop: answer it again.
            file.set_len(whole as u64)
                .with_context(|| format!("truncating {}", path.display()))?;
        }
        Ok(Self {
            path,
            settings_path,
            file,
            done,
            masks,
        })
    }

    /// Appends one prediction line (without its newline) with `masks` masks.
    pub fn append(&mut self, line: &str, masks: usize) -> Result<()> {
        let mut buf = Vec::with_capacity(line.len() + 1);
        buf.extend_from_slice(line.as_bytes());
        buf.push(b'\n');
        self.file
            .write_all(&buf)
            .with_context(|| format!("writing {}", self.path.display()))?;
        self.done += 1;
        self.masks += masks;
        Ok(())
    }

    /// Syncs the answers so far to disk (a run stopped early keeps them).
    pub fn sync(&self) -> Result<()> {
        self.file
            .sync_all()
            .with_context(|| format!("syncing {}", self.path.display()))
    }

    /// Makes the finished file `out` (synced, then renamed into place) and
    /// removes the settings record.
    pub fn finish(self, out: &Path) -> Result<()> {
        self.sync()?;
        drop(self.file);
        std::fs::rename(&self.path, out)
            .with_context(|| format!("renaming {} to {}", self.path.display(), out.display()))?;
        let _ = std::fs::remove_file(&self.settings_path);
        Ok(())
    }
}

/// Refuses to continue predictions made with other settings.
fn check_same(recorded: &Settings, given: &Settings, path: &Path) -> Result<()> {
    let differs = if recorded.data.sha256 != given.data.sha256 {
        format!(
            "samples file {} ({} samples), not {}",
            recorded.data.path.display(),
            recorded.data.samples,
            given.data.path.display()
        )
    } else if recorded.model != given.model {
        format!("model {}, not {}", recorded.model, given.model)
    } else if recorded.max_new_tokens != given.max_new_tokens {
        format!(
            "--max-new-tokens {}, not {}",
            recorded.max_new_tokens, given.max_new_tokens
        )
    } else {
        return Ok(());
    };
    Err(bad_input(format!(
        "{}: its predictions were made with {differs}; --resume continues only the same \
         predictions (remove it to start over)",
        path.display()
    )))
}

/// The `id` of a prediction line and its number of masks.
fn id_and_masks(line: &[u8]) -> std::result::Result<(String, usize), String> {
    #[derive(Deserialize)]
    struct Line {
        id: String,
        #[serde(default)]
        masks: Vec<serde::de::IgnoredAny>,
    }
    let l: Line = serde_json::from_slice(line).map_err(|e| format!("not a prediction: {e}"))?;
    Ok((l.id, l.masks.len()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("calico-partial-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn settings(d: &Path, samples: &str) -> Settings {
        let data = d.join("samples.jsonl");
        std::fs::write(&data, samples).unwrap();
        Settings {
            data: SamplesRecord::of(&data, 3).unwrap(),
            model: "weights m".into(),
            max_new_tokens: 8,
        }
    }

    fn line(id: &str, masks: usize) -> String {
        let m = vec![r#"{"image": 0}"#; masks].join(", ");
        format!(r#"{{"id": "{id}", "answer": "a", "masks": [{m}]}}"#)
    }

    #[test]
    fn a_stopped_run_resumes_where_it_stopped_dropping_a_cut_line() {
        let d = dir("resume");
        let out = d.join("p.jsonl");
        let s = settings(&d, "abc");
        let mut p = Partial::start(&out, &s).unwrap();
        p.append(&line("a", 2), 2).unwrap();
        p.append(&line("b", 1), 1).unwrap();
        drop(p);
        // A kill in the middle of the third line.
        let (partial, record) = paths(&out);
        let mut f = OpenOptions::new().append(true).open(&partial).unwrap();
        f.write_all(br#"{"id": "c", "ans"#).unwrap();
        drop(f);

        let fresh = Partial::start(&out, &s).err().unwrap().to_string();
        assert!(fresh.contains("holds 2 predictions") && fresh.contains("--resume"));

        let ids = ["a", "b", "c"];
        let mut p = Partial::resume(&out, &s, &ids).unwrap();
        assert_eq!((p.done, p.masks), (2, 3));
        p.append(&line("c", 0), 0).unwrap();
        p.finish(&out).unwrap();
        let text = std::fs::read_to_string(&out).unwrap();
        assert_eq!(
            text,
            [line("a", 2), line("b", 1), line("c", 0)].join("\n") + "\n"
        );
        assert!(!partial.exists() && !record.exists());
    }

    #[test]
    fn other_samples_settings_or_lines_are_refused() {
        let d = dir("refuse");
        let out = d.join("p.jsonl");
        let s = settings(&d, "abc");
        let mut p = Partial::start(&out, &s).unwrap();
        p.append(&line("a", 0), 0).unwrap();
        p.append(&line("b", 0), 0).unwrap();
        drop(p);
        let err =
            |s: &Settings, ids: &[&str]| Partial::resume(&out, s, ids).err().unwrap().to_string();
        let other = d.join("other");
        std::fs::create_dir_all(&other).unwrap();
        let other_data = settings(&other, "xyz");
        assert!(err(&other_data, &["a", "b"]).contains("made with samples file"));
        let other_model = Settings {
            model: "weights n".into(),
            ..s.clone()
        };
        assert!(err(&other_model, &["a", "b"]).contains("model weights m, not weights n"));
        let longer = Settings {
            max_new_tokens: 9,
            ..s.clone()
        };
        assert!(err(&longer, &["a", "b"]).contains("--max-new-tokens 8, not 9"));
        assert!(err(&s, &["a", "x"]).contains("line 2 answers sample \"b\""));
        assert!(err(&s, &["a"]).contains("more predictions than the 1 samples"));
        let (partial, _) = paths(&out);
        std::fs::write(&partial, "not json\n").unwrap();
        assert!(err(&s, &["a"]).contains("line 1: not a prediction"));
        // Without a partial file, --resume starts afresh.
        std::fs::remove_file(&partial).unwrap();
        let p = Partial::resume(&out, &s, &["a"]).unwrap();
        assert_eq!(p.done, 0);
    }
}
