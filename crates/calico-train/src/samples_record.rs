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
        if self.sha256 == recorded.sha256 {
            return Ok(());
        }
        Err(TrainError::Config(format!(
            "{}: not the training samples this run started with ({}, {} samples; this file \
             has {}): --resume continues the run bit for bit only on the same samples, so pass \
             that file as --data, or start a new run in another --out",
            given.display(),
            recorded.path.display(),
            recorded.samples,
            self.samples
        )))
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
