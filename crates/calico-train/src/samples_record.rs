//! The training samples a run started with (`RUN/data.json`): `--resume`
//! continues bit for bit only on the same samples, so it checks them.
//!
//! The file is identified by its content (SHA-256 and sample count), not
//! its path: a moved or copied samples file resumes, an edited or
//! regenerated one is refused.

use std::io::Read;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::TrainError;

type Result<T> = std::result::Result<T, TrainError>;

/// The record's file name in the run directory.
pub const DATA_FILE: &str = "data.json";

/// What identifies a training samples file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SamplesRecord {
    /// Where it was when the run started (absolute when it could be made so).
    pub path: PathBuf,
    pub samples: usize,
    /// SHA-256 of the file's bytes, hex.
    pub sha256: String,
}

impl SamplesRecord {
    /// Hashes `path`, a samples file of `samples` samples.
    pub fn of(path: &Path, samples: usize) -> Result<Self> {
        let io = |e: std::io::Error| TrainError::Io {
            path: path.to_path_buf(),
            error: e,
        };
        let mut file = std::fs::File::open(path).map_err(io)?;
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = file.read(&mut buf).map_err(io)?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
        }
        let sha256 = hasher
            .finalize()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        Ok(Self {
            path: std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf()),
            samples,
            sha256,
        })
    }

    /// Refuses to resume on other samples than `recorded`'s.
    pub fn check_resume(&self, recorded: &SamplesRecord, given: &Path) -> Result<()> {
        self.check_same(
            recorded,
            given,
            "training samples",
            "--resume continues the run bit for bit only on the same samples, so pass that \
             file as --data",
        )
    }

    fn check_same(
        &self,
        recorded: &SamplesRecord,
        given: &Path,
        what: &str,
        why: &str,
    ) -> Result<()> {
        if self.sha256 == recorded.sha256 {
            return Ok(());
        }
        Err(TrainError::Config(format!(
            "{}: not the {what} this run started with ({}, {} samples; this file has {}): \
             {why}, or start a new run in another --out",
            given.display(),
            recorded.path.display(),
            recorded.samples,
            self.samples
        )))
    }
}

/// The validation a run started with (`RUN/validation.json`): its samples
/// file and text similarity. A resumed run validates the same way, so the
/// scores in `metrics.jsonl` and the curve stay comparable; left out on
/// resume, `calico train`'s `--val` and `--similarity` are these.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ValidationRecord {
    /// `--val`, if given.
    pub samples: Option<SamplesRecord>,
    /// `minilm` or `exact`.
    pub similarity: String,
}

/// The validation record's file name in the run directory.
pub const VALIDATION_FILE: &str = "validation.json";

/// A JSON file of the run, parsed; errors name the file.
pub(crate) fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T> {
    let text = std::fs::read_to_string(path).map_err(|e| TrainError::Io {
        path: path.to_path_buf(),
        error: e,
    })?;
    serde_json::from_str(&text).map_err(|e| TrainError::Config(format!("{}: {e}", path.display())))
}

/// The JSON record `file` of run directory `run`; `None` where the run has
/// none (runs from before it). A record that does not parse is an error
/// naming it.
pub(crate) fn read_record<T: serde::de::DeserializeOwned>(
    run: &Path,
    file: &str,
) -> Result<Option<T>> {
    let path = run.join(file);
    if !path.is_file() {
        return Ok(None);
    }
    read_json(&path).map(Some)
}

impl ValidationRecord {
    /// The record of run directory `run`; `None` for runs from before it.
    pub fn read(run: &Path) -> Result<Option<Self>> {
        read_record(run, VALIDATION_FILE)
    }

    /// Refuses to resume a run recorded as `recorded` with this validation.
    pub fn check_resume(&self, recorded: &ValidationRecord, given: Option<&Path>) -> Result<()> {
        let why = "--resume validates the way the run started, so its scores stay comparable";
        match (&recorded.samples, &self.samples, given) {
            (Some(r), Some(ours), Some(given)) => ours.check_same(
                r,
                given,
                "validation samples",
                &format!("{why}; pass that file as --val"),
            )?,
            (None, Some(_), Some(given)) => {
                return Err(TrainError::Config(format!(
                    "{}: this run started without --val; {why}, so leave --val out, or start a \
                     new run in another --out",
                    given.display()
                )))
            }
            (Some(r), None, _) => {
                return Err(TrainError::Config(format!(
                    "this run validates on {} ({} samples); {why}, so pass that file as --val, \
                     or start a new run in another --out",
                    r.path.display(),
                    r.samples
                )))
            }
            _ => {}
        }
        recorded.check_similarity(&self.similarity)
    }

    /// Refuses to resume this recorded run with `similarity` when it
    /// validates with another one (a run without validation takes any).
    pub fn check_similarity(&self, similarity: &str) -> Result<()> {
        if self.samples.is_some() && similarity != self.similarity {
            return Err(TrainError::Config(format!(
                "--similarity {similarity}: this run validates with --similarity {}; --resume \
                 validates the way the run started, so its scores stay comparable; leave \
                 --similarity out, or start a new run in another --out",
                self.similarity
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    #[test]
    fn the_same_content_anywhere_resumes_and_other_content_is_refused() {
        let dir =
            std::env::temp_dir().join(format!("calico-samples-record-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let a = write(&dir, "a.jsonl", "{\"id\": 1}\n{\"id\": 2}\n");
        let moved = write(&dir, "b.jsonl", "{\"id\": 1}\n{\"id\": 2}\n");
        let edited = write(&dir, "c.jsonl", "{\"id\": 1}\n{\"id\": 3}\n");
        let ra = SamplesRecord::of(&a, 2).unwrap();
        assert_eq!(ra.sha256.len(), 64);
        let rm = SamplesRecord::of(&moved, 2).unwrap();
        assert!(rm.check_resume(&ra, &moved).is_ok());
        let re = SamplesRecord::of(&edited, 2).unwrap();
        let err = re.check_resume(&ra, &edited).unwrap_err().to_string();
        assert!(err.contains("c.jsonl") && err.contains("a.jsonl"), "{err}");
        let missing = SamplesRecord::of(&dir.join("none.jsonl"), 0).unwrap_err();
        assert!(missing.to_string().contains("none.jsonl"), "{missing}");
        std::fs::remove_dir_all(&dir).ok();
    }
}
