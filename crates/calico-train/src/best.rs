//! `keep_best`: the weights of the best validation so far, kept in
//! `RUN/best/` beside the last ones (`RUN/model/`).
//!
//! After each validation the run compares the chosen score, averaged over
//! the tasks, with the best one so far; a strictly higher score replaces
//! `RUN/best/` (written like `RUN/model/`: into a temporary directory that
//! replaces it by renames). `RUN/best/best.json` says which validation chose
//! it. A resumed run replays the validations of its `metrics.jsonl`, so it
//! chooses as the uninterrupted run would; a run started afresh in the
//! directory of one that never reached a checkpoint removes `RUN/best/`.
//! `early_stop_patience` ends a run after that many validations in a row
//! without a new best.

use serde::{Deserialize, Serialize};

use crate::config::BestMetric;
use crate::metrics::{Record, TaskScores, ValRecord};

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
    current.is_none_or(|b| score > b.score).then(|| Best {
        metric,
        score,
        step: record.step,
        validation: record.clone(),
    })
}

/// The run's choice so far: the best validation and, for
/// `early_stop_patience`, how many validations with a score came after it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Choice {
    pub best: Option<Best>,
    pub since_best: u64,
}

impl Choice {
    /// Counts the validation `record`; returns the new best if it is one.
    pub fn validated(&mut self, metric: BestMetric, record: &ValRecord) -> Option<Best> {
        let new = improved(self.best.as_ref(), metric, record);
        if let Some(b) = &new {
            self.best = Some(b.clone());
            self.since_best = 0;
        } else if score_of(metric, &record.average).is_some() {
            self.since_best += 1;
        }
        new
    }

    /// The choice of a run resumed with `log`, its records up to the step it
    /// resumes from: its validations replayed in order, so that the resumed
    /// run chooses as the uninterrupted one (a best that the killed run
    /// wrote after that step is chosen again when its step is redone).
    pub fn replayed(metric: BestMetric, log: &[Record]) -> Self {
        let mut c = Choice::default();
        for r in log {
            if let Record::Val(v) = r {
                c.validated(metric, v);
            }
        }
        c
    }
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
    fn the_choice_counts_scored_validations_and_replays_the_same() {
        let m = BestMetric::Miou;
        let seq = [
            (1, 5.0),
            (2, 7.0),
            (3, 6.0),
            (4, f64::NAN),
            (5, 7.0),
            (6, 8.0),
        ];
        let mut live = Choice::default();
        let mut states = Vec::new();
        let mut log = Vec::new();
        for (step, miou) in seq {
            let r = record(step, miou, None);
            live.validated(m, &r);
            states.push((live.best.as_ref().map(|b| b.step), live.since_best));
            log.push(Record::Val(r));
        }
        // The NaN counts nothing, the tie at step 5 counts, step 6 is new.
        let want = [
            (Some(1), 0),
            (Some(2), 0),
            (Some(2), 1),
            (Some(2), 1),
            (Some(2), 2),
            (Some(6), 0),
        ];
        assert_eq!(states, want);
        // Resumed after any step: the same state.
        for k in 0..seq.len() {
            let c = Choice::replayed(m, &log[..=k]);
            assert_eq!((c.best.as_ref().map(|b| b.step), c.since_best), want[k]);
        }
    }
}
