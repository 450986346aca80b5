//! `keep_best`: the weights of the best validation so far, kept in
//! `RUN/best/` beside the last ones (`RUN/model/`).
//!
//! After each validation the run compares the chosen score, averaged over
//! the tasks, with the best one so far; a strictly higher score replaces
//! `RUN/best/` (written like `RUN/model/`: into a temporary directory that
//! replaces it by renames). `RUN/best/best.json` says which validation chose
//! it. A resumed run reads it back, so a kill never loses the best weights
//! nor makes the run forget how good they were; a run started afresh in
//! the directory of one that never reached a checkpoint removes it.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::config::BestMetric;
use crate::metrics::{TaskScores, ValRecord};
use crate::TrainError;

type Result<T> = std::result::Result<T, TrainError>;

/// The directory of the best weights inside a run.
pub const BEST_DIR: &str = "best";
/// Inside [`BEST_DIR`]: the validation that chose it.
pub const BEST_FILE: &str = "best.json";

/// What `RUN/best/best.json` holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Best {
    /// The score that chose the weights (`keep_best`).
    pub metric: BestMetric,
    /// Its value, in percent, averaged over the tasks.
    pub score: f64,
    /// The step after which the chosen validation ran (the weights are
    /// those of that step).
    pub step: u64,
    /// That validation's scores, as in `metrics.jsonl`.
    pub validation: ValRecord,
}

/// `metric` of `scores`, when it is a number to compare (AP50 is absent
/// without ground truth; NaN never wins).
pub fn score_of(metric: BestMetric, scores: &TaskScores) -> Option<f64> {
    let v = match metric {
        BestMetric::Ap50 => scores.ap50?,
        BestMetric::Miou => scores.miou,
        BestMetric::Recall => scores.recall,
        BestMetric::Ss => scores.ss,
        BestMetric::SIou => scores.s_iou,
    };
    v.is_finite().then_some(v)
}

/// The new best, if `record` beats `current` on `metric`: the first
/// validation with a score always does, a later one only with a strictly
/// higher score (so ties keep the earlier weights).
pub fn improved(current: Option<&Best>, metric: BestMetric, record: &ValRecord) -> Option<Best> {
    let score = score_of(metric, &record.average)?;
    let better = match current {
        Some(b) if b.metric == metric => score > b.score,
        _ => true,
    };
    better.then(|| Best {
        metric,
        score,
        step: record.step,
        validation: record.clone(),
    })
}

/// `RUN/best/best.json`, if the run has kept best weights.
pub fn read(run: &Path) -> Result<Option<Best>> {
    let path = run.join(BEST_DIR).join(BEST_FILE);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(TrainError::Io { path, error: e }),
    };
    serde_json::from_str(&text).map(Some).map_err(|e| {
        TrainError::Data(format!(
            "{}: {e}; it records which validation chose the run's best weights (move the \
             best/ directory away to resume without them)",
            path.display()
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn record(step: u64, miou: f64, ap50: Option<f64>) -> ValRecord {
        ValRecord {
            step,
            elapsed_s: 1.0,
            tasks: BTreeMap::new(),
            average: TaskScores {
                ap50,
                miou,
                recall: 0.0,
                ss: 0.0,
                s_iou: 0.0,
            },
        }
    }

    #[test]
    fn only_a_strictly_higher_score_replaces_the_best() {
        let m = BestMetric::Miou;
        let first = improved(None, m, &record(2, 10.0, None)).expect("the first one wins");
        assert_eq!((first.step, first.score), (2, 10.0));
        assert!(improved(Some(&first), m, &record(4, 10.0, None)).is_none());
        assert!(improved(Some(&first), m, &record(4, 9.0, None)).is_none());
        let second = improved(Some(&first), m, &record(6, 10.5, None)).unwrap();
        assert_eq!((second.step, second.score), (6, 10.5));
        assert!(improved(Some(&second), m, &record(8, f64::NAN, None)).is_none());
        assert!(improved(None, m, &record(8, f64::NAN, None)).is_none());
    }

    #[test]
    fn an_absent_ap50_chooses_nothing() {
        let m = BestMetric::Ap50;
        assert!(improved(None, m, &record(2, 50.0, None)).is_none());
        let b = improved(None, m, &record(2, 50.0, Some(3.0))).unwrap();
        assert_eq!(b.score, 3.0);
        assert!(improved(Some(&b), m, &record(4, 60.0, None)).is_none());
    }

    #[test]
    fn a_damaged_record_is_refused_naming_it() {
        let dir = std::env::temp_dir().join(format!("calico-best-{}", std::process::id()));
        std::fs::create_dir_all(dir.join(BEST_DIR)).unwrap();
        assert!(read(&dir.join("nowhere")).unwrap().is_none());
        std::fs::write(dir.join(BEST_DIR).join(BEST_FILE), "{\"metric\": \"miou\"").unwrap();
        let e = read(&dir).unwrap_err().to_string();
        assert!(e.contains("best.json") && e.contains("best/"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
