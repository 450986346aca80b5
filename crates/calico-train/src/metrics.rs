//! The run's `metrics.jsonl`: one JSON object per line, either a training
//! step (`{"kind":"train", …}`) or a validation pass (`{"kind":"val", …}`).
//!
//! The log is append-only while training. On `--resume` it is first cut back
//! to the checkpoint's step (rewritten atomically), so a resumed run's file
//! equals an uninterrupted run's. Reading tolerates a truncated last line (the
//! process was killed mid-write) but reports a corrupt line anywhere else.
//!
//! Non-finite numbers (a NaN loss that stops training) are written as `null`
//! by serde_json and read back as NaN.

use serde::{Deserialize, Deserializer, Serialize};
use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

/// The file name inside a run directory.
pub const METRICS_FILE: &str = "metrics.jsonl";

/// Errors of the metrics log and the curve writer.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    /// Reading or writing a file failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A line that is not the last one is not a valid record.
    #[error("{}:{line}: corrupt metrics record: {source}", path.display())]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// The parse error.
        source: serde_json::Error,
    },
    /// A record could not be serialised.
    #[error("serialising a metrics record: {0}")]
    Serialize(#[from] serde_json::Error),
}

impl MetricsError {
    pub(crate) fn io(path: &Path, source: std::io::Error) -> Self {
        MetricsError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

/// Result of this module.
pub type Result<T> = std::result::Result<T, MetricsError>;

/// Reads a number that may have been written as `null` (non-finite) as NaN.
fn f64_or_nan<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<f64, D::Error> {
    Ok(Option::<f64>::deserialize(d)?.unwrap_or(f64::NAN))
}

/// One optimiser step: the total loss and its components (logged unweighted;
/// only `loss` is the λ-weighted total), the schedule and the speed.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct TrainRecord {
    /// Optimiser steps done (1-based: the first step logs 1).
    pub step: u64,
    /// Epoch of this step (0-based).
    pub epoch: u64,
    /// Total loss (λ-weighted sum of the components).
    #[serde(deserialize_with = "f64_or_nan")]
    pub loss: f64,
    /// Text cross-entropy.
    #[serde(deserialize_with = "f64_or_nan")]
    pub text: f64,
    /// Focal mask loss.
    #[serde(deserialize_with = "f64_or_nan")]
    pub focal: f64,
    /// Dice mask loss.
    #[serde(deserialize_with = "f64_or_nan")]
    pub dice: f64,
    /// Learning rate used for this step.
    #[serde(deserialize_with = "f64_or_nan")]
    pub lr: f64,
    /// Gradient norm before clipping.
    #[serde(deserialize_with = "f64_or_nan")]
    pub grad_norm: f64,
    /// Recent throughput.
    #[serde(deserialize_with = "f64_or_nan")]
    pub steps_per_s: f64,
    /// Seconds of training so far (summed over resumed sessions).
    #[serde(deserialize_with = "f64_or_nan")]
    pub elapsed_s: f64,
}

/// Scores of one task (or their average), in percent as `calico eval` prints.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
pub struct TaskScores {
    /// COCO mask AP at IoU 0.5 (absent without ground truth).
    pub ap50: Option<f64>,
    /// Mean IoU of matched masks.
    #[serde(deserialize_with = "f64_or_nan")]
    pub miou: f64,
    /// Recall (IoU ≥ 0.5 and text similarity ≥ 0.5).
    #[serde(deserialize_with = "f64_or_nan")]
    pub recall: f64,
    /// Semantic similarity.
    #[serde(deserialize_with = "f64_or_nan")]
    pub ss: f64,
    /// Semantic IoU.
    #[serde(deserialize_with = "f64_or_nan")]
    pub s_iou: f64,
}

impl From<&calico_eval::evaluate::Scores> for TaskScores {
    fn from(s: &calico_eval::evaluate::Scores) -> Self {
        TaskScores {
            ap50: s.ap50,
            miou: s.miou,
            recall: s.recall,
            ss: s.ss,
            s_iou: s.s_iou,
        }
    }
}

/// One validation pass.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct ValRecord {
    /// The step after which validation ran.
    pub step: u64,
    /// Seconds of training so far.
    #[serde(deserialize_with = "f64_or_nan")]
    pub elapsed_s: f64,
    /// Task → scores.
    pub tasks: BTreeMap<String, TaskScores>,
    /// Mean over the tasks.
    pub average: TaskScores,
}

impl ValRecord {
    /// A record from the evaluator's Table-5 table.
    pub fn from_table(step: u64, elapsed_s: f64, table: &calico_eval::evaluate::TaskTable) -> Self {
        ValRecord {
            step,
            elapsed_s,
            tasks: table
                .tasks
                .iter()
                .map(|(k, v)| (k.clone(), TaskScores::from(v)))
                .collect(),
            average: TaskScores::from(&table.average),
        }
    }
}

/// One line of `metrics.jsonl`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Record {
    /// A training step.
    Train(TrainRecord),
    /// A validation pass.
    Val(ValRecord),
}

impl Record {
    /// The step the record belongs to.
    pub fn step(&self) -> u64 {
        match self {
            Record::Train(r) => r.step,
            Record::Val(r) => r.step,
        }
    }
}

impl From<TrainRecord> for Record {
    fn from(r: TrainRecord) -> Self {
        Record::Train(r)
    }
}

impl From<ValRecord> for Record {
    fn from(r: ValRecord) -> Self {
        Record::Val(r)
    }
}

/// Reads all records of a metrics file. An unparsable last line is dropped
/// (a crash mid-write); an unparsable line before it is an error naming the
/// file and line. Blank lines are skipped.
pub fn read_all(path: &Path) -> Result<Vec<Record>> {
    let bytes = std::fs::read(path).map_err(|e| MetricsError::io(path, e))?;
    let text = String::from_utf8_lossy(&bytes);
    let lines: Vec<(usize, &str)> = text
        .split('\n')
        .enumerate()
        .map(|(k, l)| {
            (
                k + 1,
                l.trim_matches(|c: char| c.is_whitespace() || c == '\0'),
            )
        })
        .filter(|(_, l)| !l.is_empty())
        .collect();
    let mut out = Vec::with_capacity(lines.len());
    for (k, &(line, l)) in lines.iter().enumerate() {
        match serde_json::from_str::<Record>(l) {
            Ok(r) => out.push(r),
            Err(_) if k + 1 == lines.len() => {}
            Err(source) => {
                return Err(MetricsError::Corrupt {
                    path: path.to_path_buf(),
                    line,
                    source,
                })
            }
        }
    }
    Ok(out)
}

/// [`calico_model::calico::weights::write_atomic`] with this module's error:
/// a reader (or a crash) sees either the old or the new file, never a mix.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    calico_model::calico::weights::write_atomic(path, bytes).map_err(|e| MetricsError::io(path, e))
}

/// The open, append-only metrics log of a run. It also keeps the records in
/// memory so the training curve can be redrawn without re-reading the file.
#[derive(Debug)]
pub struct MetricsLog {
    path: PathBuf,
    file: File,
    records: Vec<Record>,
}

impl MetricsLog {
    /// Opens `run_dir/metrics.jsonl` (creating `run_dir` if needed).
    ///
    /// - `resume_step: None` (a fresh run): starts an empty file, replacing
    ///   any previous one.
    /// - `Some(step)` (resuming from the checkpoint at `step`): keeps only the
    ///   records with `step ≤ resume_step`, rewriting the file atomically, so
    ///   records the interrupted run wrote after its checkpoint are not
    ///   duplicated. A missing file starts empty.
    pub fn open(run_dir: &Path, resume_step: Option<u64>) -> Result<MetricsLog> {
        std::fs::create_dir_all(run_dir).map_err(|e| MetricsError::io(run_dir, e))?;
        let path = run_dir.join(METRICS_FILE);
        let records = match resume_step {
            Some(step) if path.exists() => {
                let mut kept = read_all(&path)?;
                kept.retain(|r| r.step() <= step);
                let mut text = String::new();
                for r in &kept {
                    text.push_str(&serde_json::to_string(r)?);
                    text.push('\n');
                }
                write_atomic(&path, text.as_bytes())?;
                kept
            }
            _ => {
                write_atomic(&path, b"")?;
                Vec::new()
            }
        };
        let file = OpenOptions::new()
            .append(true)
            .open(&path)
            .map_err(|e| MetricsError::io(&path, e))?;
        Ok(MetricsLog {
            path,
            file,
            records,
        })
    }

    /// Appends one record as one line (a single write) and flushes it.
    pub fn append(&mut self, record: &Record) -> Result<()> {
        let mut line = serde_json::to_string(record)?;
        line.push('\n');
        self.file
            .write_all(line.as_bytes())
            .and_then(|()| self.file.flush())
            .map_err(|e| MetricsError::io(&self.path, e))?;
        self.records.push(record.clone());
        Ok(())
    }

    /// Forces the appended lines to disk (e.g. next to a checkpoint save).
    pub fn sync(&self) -> Result<()> {
        self.file
            .sync_data()
            .map_err(|e| MetricsError::io(&self.path, e))
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// All records of the run so far (kept ones after a resume, then the
    /// appended ones).
    pub fn records(&self) -> &[Record] {
        &self.records
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn train(step: u64, loss: f64) -> Record {
        Record::Train(TrainRecord {
            step,
            epoch: step / 10,
            loss,
            text: loss * 0.5,
            focal: loss * 0.3,
            dice: loss * 0.2,
            lr: 4e-4 * (step as f64 / 100.0).min(1.0),
            grad_norm: 1.5,
            steps_per_s: 0.5,
            elapsed_s: step as f64 * 2.0,
        })
    }

    pub(crate) fn val(step: u64, miou: f64) -> Record {
        let s = TaskScores {
            ap50: Some(miou / 2.0),
            miou,
            recall: miou * 0.7,
            ss: 80.0,
            s_iou: 60.0,
        };
        let tasks = ["common_object", "common_parts", "unique_parts"]
            .iter()
            .map(|t| (t.to_string(), s.clone()))
            .collect();
        Record::Val(ValRecord {
            step,
            elapsed_s: step as f64,
            tasks,
            average: s,
        })
    }

    fn tmp_dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!(
            "calico-train-metrics-{name}-{}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn lines_are_tagged_and_round_trip() {
        let t = serde_json::to_string(&train(3, 1.25)).unwrap();
        assert!(t.starts_with(r#"{"kind":"train","step":3,"#), "{t}");
        let v = serde_json::to_string(&val(5, 40.0)).unwrap();
        assert!(v.starts_with(r#"{"kind":"val","step":5,"#), "{v}");
        assert_eq!(serde_json::from_str::<Record>(&t).unwrap(), train(3, 1.25));
        assert_eq!(serde_json::from_str::<Record>(&v).unwrap(), val(5, 40.0));
        let mut none = val(5, 40.0);
        if let Record::Val(r) = &mut none {
            r.average.ap50 = None;
        }
        let s = serde_json::to_string(&none).unwrap();
        assert_eq!(serde_json::from_str::<Record>(&s).unwrap(), none);
    }

    #[test]
    fn nan_loss_is_written_as_null_and_read_as_nan() {
        let dir = tmp_dir("nan");
        let mut log = MetricsLog::open(&dir, None).unwrap();
        log.append(&train(1, f64::NAN)).unwrap();
        log.append(&train(2, 1.0)).unwrap();
        let back = read_all(log.path()).unwrap();
        assert_eq!(back.len(), 2);
        let Record::Train(r) = &back[0] else {
            panic!("expected a train record")
        };
        assert!(r.loss.is_nan() && r.text.is_nan());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn resume_truncates_to_the_checkpoint_step() {
        let dir = tmp_dir("resume");
        // The uninterrupted run.
        let all: Vec<Record> = (1..=10)
            .map(|s| train(s, 1.0 / s as f64))
            .chain([val(5, 30.0), val(10, 50.0)])
            .collect();
        let mut order = all.clone();
        order.sort_by_key(Record::step);
        let mut log = MetricsLog::open(&dir, None).unwrap();
        for r in &order {
            log.append(r).unwrap();
        }
        let full = std::fs::read_to_string(log.path()).unwrap();
        drop(log);

        // The interrupted run: checkpoint at 5, wrote up to step 7, killed
        // mid-line.
        let crashed = tmp_dir("resume-crashed");
        let mut log = MetricsLog::open(&crashed, None).unwrap();
        for r in order.iter().filter(|r| r.step() <= 7) {
            log.append(r).unwrap();
        }
        drop(log);
        let path = crashed.join(METRICS_FILE);
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(br#"{"kind":"train","step":8,"ep"#).unwrap();
        drop(f);

        let mut log = MetricsLog::open(&crashed, Some(5)).unwrap();
        assert!(log.records().iter().all(|r| r.step() <= 5));
        assert_eq!(log.records().len(), 6); // 5 train + 1 val
        for r in order.iter().filter(|r| r.step() > 5) {
            log.append(r).unwrap();
        }
        assert_eq!(std::fs::read_to_string(&path).unwrap(), full);
        assert_eq!(log.records(), &order[..]);
        assert_eq!(read_all(&path).unwrap(), order);

        // Resuming without a file starts empty; a fresh run replaces the file.
        let empty = tmp_dir("resume-empty");
        assert!(MetricsLog::open(&empty, Some(3))
            .unwrap()
            .records()
            .is_empty());
        let log = MetricsLog::open(&crashed, None).unwrap();
        assert!(log.records().is_empty());
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "");
        for d in [dir, crashed, empty] {
            std::fs::remove_dir_all(d).unwrap();
        }
    }

    #[test]
    fn truncated_last_line_is_tolerated() {
        let dir = tmp_dir("trunc");
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(METRICS_FILE);
        let a = serde_json::to_string(&train(1, 2.0)).unwrap();
        let b = serde_json::to_string(&val(1, 20.0)).unwrap();
        let cut = &a[..a.len() / 2];
        std::fs::write(&path, format!("{a}\n\n{b}\n{cut}")).unwrap();
        assert_eq!(read_all(&path).unwrap(), vec![train(1, 2.0), val(1, 20.0)]);
        // A complete last line without its newline is kept.
        std::fs::write(&path, format!("{a}\n{b}")).unwrap();
        assert_eq!(read_all(&path).unwrap().len(), 2);
        // Zero padding left by a crash is ignored too.
        std::fs::write(&path, format!("{a}\n\0\0\0\0")).unwrap();
        assert_eq!(read_all(&path).unwrap().len(), 1);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn corrupt_middle_line_is_an_error_naming_the_line() {
        let dir = tmp_dir("corrupt");
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(METRICS_FILE);
        let a = serde_json::to_string(&train(1, 2.0)).unwrap();
        let b = serde_json::to_string(&train(2, 1.0)).unwrap();
        std::fs::write(&path, format!("{a}\n{{\"kind\":\"train\",\"st\n{b}\n")).unwrap();
        let err = read_all(&path).unwrap_err();
        assert!(
            matches!(err, MetricsError::Corrupt { line: 2, .. }),
            "{err}"
        );
        let msg = err.to_string();
        assert!(
            msg.contains("metrics.jsonl:2:") && msg.contains(&dir.display().to_string()),
            "{msg}"
        );
        // Resuming from a corrupt file refuses rather than losing records.
        assert!(MetricsLog::open(&dir, Some(1)).is_err());
        // An unknown kind is corrupt too.
        std::fs::write(&path, format!("{{\"kind\":\"bogus\",\"step\":1}}\n{b}\n")).unwrap();
        assert!(matches!(
            read_all(&path).unwrap_err(),
            MetricsError::Corrupt { line: 1, .. }
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn from_eval_table() {
        let mut table = calico_eval::evaluate::TaskTable::default();
        table.tasks.insert(
            "common_parts".into(),
            calico_eval::evaluate::Scores {
                miou: 61.0,
                recall: 42.0,
                ss: 81.0,
                ..Default::default()
            },
        );
        table.average.miou = 61.0;
        let r = ValRecord::from_table(7, 3.5, &table);
        assert_eq!(r.tasks["common_parts"].recall, 42.0);
        assert_eq!(r.average.miou, 61.0);
        assert_eq!(r.average.ap50, None);
    }
}
