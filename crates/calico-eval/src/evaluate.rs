//! Joining ground truth and predictions into evaluation images, per task and
//! per source, and scoring them.

use crate::error::{EvalError, Result};
use crate::metrics::{evaluate_images, MetricSet};
use crate::predictions::Prediction;
use crate::{ImageEval, LabelledMask, Similarity};
use calico_data::Sample;
use calico_masks::{CocoRle, Rle};
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};

/// The tasks, in the paper's column order.
pub const TASKS: [&str; 3] = ["common_object", "common_parts", "unique_parts"];

/// Options for joining.
#[derive(Clone, Debug, Default)]
pub struct EvalOptions {
    /// Skip (and report) predictions that do not fit the ground truth instead
    /// of failing: unknown ids, masks on missing images or of the wrong size,
    /// undecodable RLE, non-finite scores, duplicate ids (the first is kept).
    pub lenient: bool,
}

/// The evaluation images of one task, sources in name order, each source's
/// images contiguous so a source is scored on a sub-slice without copying.
#[derive(Debug, Default)]
pub struct TaskImages {
    /// All images of the task.
    pub images: Vec<ImageEval>,
    /// Source → its range in `images`.
    pub sources: BTreeMap<String, std::ops::Range<usize>>,
}

/// Ground truth and predictions joined, ready for scoring.
#[derive(Debug, Default)]
pub struct Prepared {
    /// Task → its evaluation images, grouped by source.
    pub tasks: BTreeMap<String, TaskImages>,
    /// Every label the text metrics will compare (GT labels and predicted phrases).
    pub labels: BTreeSet<String>,
    /// Ground-truth samples.
    pub samples: usize,
    /// Predictions used.
    pub predictions: usize,
    /// Ids of samples without a prediction (scored as empty predictions).
    pub missing: Vec<String>,
    /// What `lenient` skipped, one line each.
    pub skipped: Vec<String>,
}

fn gt_rle(path: &Path, s: &Sample, k: usize, rle: &CocoRle) -> Result<Rle> {
    let bad = |message: String| EvalError::Input {
        path: path.to_path_buf(),
        context: format!("sample {} mask {k}", s.id),
        message,
    };
    let r = rle.to_rle().map_err(|e| bad(e.to_string()))?;
    Ok(r)
}

fn check_mask(
    s: &Sample,
    image: usize,
    rle: &CocoRle,
    score: Option<f64>,
) -> std::result::Result<Rle, String> {
    let Some(img) = s.images.get(image) else {
        return Err(format!(
            "image {image} does not exist (the sample has {})",
            s.images.len()
        ));
    };
    if let Some(score) = score {
        if !score.is_finite() {
            return Err(format!("score {score} is not a finite number"));
        }
    }
    let r = rle.to_rle().map_err(|e| format!("invalid RLE: {e}"))?;
    if [r.height, r.width] != [img.height, img.width] {
        return Err(format!(
            "mask is {}×{} but image {image} is {}×{}",
            r.height, r.width, img.height, img.width
        ));
    }
    if r.total() != r.height as u64 * r.width as u64 {
        return Err(format!(
            "RLE counts cover {} pixels, the mask has {}",
            r.total(),
            r.height as u64 * r.width as u64
        ));
    }
    Ok(r)
}

/// Joins ground-truth samples (from `gt_path`) and predictions (from `pred_path`).
pub fn prepare(
    gt_path: &Path,
    samples: &[Sample],
    pred_path: &Path,
    predictions: &[Prediction],
    opts: &EvalOptions,
) -> Result<Prepared> {
    let mut out = Prepared {
        samples: samples.len(),
        ..Prepared::default()
    };
    let mut by_id: HashMap<&str, &Sample> = HashMap::with_capacity(samples.len());
    for s in samples {
        if !TASKS.contains(&s.task.as_str()) {
            return Err(EvalError::Input {
                path: gt_path.to_path_buf(),
                context: format!("sample {}", s.id),
                message: format!("unknown task {:?}; expected one of {TASKS:?}", s.task),
            });
        }
        if by_id.insert(s.id.as_str(), s).is_some() {
            return Err(EvalError::Input {
                path: gt_path.to_path_buf(),
                context: format!("sample {}", s.id),
                message: "the id occurs twice".into(),
            });
        }
    }
    let pred_err = |id: &str, message: String| EvalError::Input {
        path: pred_path.to_path_buf(),
        context: format!("prediction {id}"),
        message,
    };
    let mut pred_of: HashMap<&str, Vec<(usize, LabelledMask)>> = HashMap::new();
    for p in predictions {
        let Some(s) = by_id.get(p.id.as_str()) else {
            let msg = "no ground-truth sample has this id".to_string();
            if opts.lenient {
                out.skipped.push(format!("prediction {}: {msg}", p.id));
                continue;
            }
            return Err(pred_err(&p.id, msg));
        };
        if pred_of.contains_key(p.id.as_str()) {
            let msg = "a second prediction for the same id".to_string();
            if opts.lenient {
                out.skipped.push(format!("prediction {}: {msg}", p.id));
                continue;
            }
            return Err(pred_err(&p.id, msg));
        }
        let mut masks = Vec::with_capacity(p.masks.len());
        for (k, m) in p.masks.iter().enumerate() {
            match check_mask(s, m.image, &m.rle, Some(m.score)) {
                Ok(rle) => masks.push((
                    m.image,
                    LabelledMask {
                        label: m.label.clone(),
                        rle,
                        score: m.score,
                    },
                )),
                Err(msg) if opts.lenient => {
                    out.skipped
                        .push(format!("prediction {} mask {k}: {msg}", p.id));
                }
                Err(msg) => return Err(pred_err(&p.id, format!("mask {k}: {msg}"))),
            }
        }
        pred_of.insert(p.id.as_str(), masks);
        out.predictions += 1;
    }
    let mut groups: BTreeMap<(String, String), Vec<ImageEval>> = BTreeMap::new();
    for s in samples {
        let mut images: Vec<ImageEval> = vec![ImageEval::default(); s.images.len()];
        for (k, m) in s.masks.iter().enumerate() {
            let rle = gt_rle(gt_path, s, k, &m.rle)?;
            check_mask(s, m.image, &m.rle, None).map_err(|msg| EvalError::Input {
                path: gt_path.to_path_buf(),
                context: format!("sample {} mask {k}", s.id),
                message: msg,
            })?;
            out.labels.insert(m.label.clone());
            images[m.image].gt.push(LabelledMask {
                label: m.label.clone(),
                rle,
                score: 1.0,
            });
        }
        match pred_of.remove(s.id.as_str()) {
            Some(masks) => {
                for (image, m) in masks {
                    out.labels.insert(m.label.clone());
                    out.labels
                        .insert(calico_text::english::strip_article(&m.label).to_string());
                    images[image].pred.push(m);
                }
            }
            None => out.missing.push(s.id.clone()),
        }
        groups
            .entry((s.task.clone(), s.source.clone()))
            .or_default()
            .extend(images);
    }
    // (task, source) order: each task's sources end up contiguous.
    for ((task, source), images) in groups {
        let t = out.tasks.entry(task).or_default();
        let start = t.images.len();
        t.images.extend(images);
        t.sources.insert(source, start..t.images.len());
    }
    Ok(out)
}

/// Scores of one set of images, in percent.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Scores {
    /// COCO mask AP at IoU 0.5 (absent when the set has no ground truth).
    pub ap50: Option<f64>,
    /// Mean IoU of greedily matched masks (GLaMM).
    pub miou: f64,
    /// mIoU where unmatched ground truth counts 0.
    pub miou_strict: f64,
    /// Recall at IoU ≥ 0.5 and text similarity ≥ 0.5 (GLaMM).
    pub recall: f64,
    /// Semantic similarity (SentenceBERT cosine).
    pub ss: f64,
    /// Semantic IoU (word sets).
    pub s_iou: f64,
    /// Evaluation images.
    pub images: usize,
    /// Ground-truth masks.
    pub gt_masks: usize,
    /// Predicted masks.
    pub pred_masks: usize,
}

impl From<MetricSet> for Scores {
    fn from(m: MetricSet) -> Self {
        let pct = |v: f64| v * 100.0;
        Scores {
            ap50: m.ap50.map(pct),
            miou: pct(m.miou),
            miou_strict: pct(m.miou_strict),
            recall: pct(m.recall),
            ss: pct(m.ss),
            s_iou: pct(m.s_iou),
            images: m.images,
            gt_masks: m.gt_masks,
            pred_masks: m.pred_masks,
        }
    }
}

/// One table in the layout of the paper's Table 5: a row per task plus the average.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct TaskTable {
    /// Task → scores.
    pub tasks: BTreeMap<String, Scores>,
    /// Mean over the tasks present.
    pub average: Scores,
}

/// The evaluation report.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Report {
    /// Ground-truth file.
    pub ground_truth: PathBuf,
    /// Predictions file.
    pub predictions_file: PathBuf,
    /// Text-similarity model.
    pub embedder: String,
    /// All sources together.
    pub overall: TaskTable,
    /// Per source.
    pub by_source: BTreeMap<String, TaskTable>,
    /// Ground-truth samples.
    pub samples: usize,
    /// Predictions used.
    pub predictions: usize,
    /// Samples without a prediction (scored as empty).
    pub missing_predictions: Vec<String>,
    /// What `--lenient` skipped.
    pub skipped: Vec<String>,
}

fn average(tasks: &BTreeMap<String, Scores>) -> Scores {
    let n = tasks.len().max(1) as f64;
    let mean = |f: &dyn Fn(&Scores) -> f64| tasks.values().map(f).sum::<f64>() / n;
    let aps: Vec<f64> = tasks.values().filter_map(|s| s.ap50).collect();
    Scores {
        ap50: (!aps.is_empty()).then(|| aps.iter().sum::<f64>() / aps.len() as f64),
        miou: mean(&|s| s.miou),
        miou_strict: mean(&|s| s.miou_strict),
        recall: mean(&|s| s.recall),
        ss: mean(&|s| s.ss),
        s_iou: mean(&|s| s.s_iou),
        images: tasks.values().map(|s| s.images).sum(),
        gt_masks: tasks.values().map(|s| s.gt_masks).sum(),
        pred_masks: tasks.values().map(|s| s.pred_masks).sum(),
    }
}

fn table<'a>(
    tasks: impl Iterator<Item = (&'a String, &'a [ImageEval])>,
    sim: &dyn Similarity,
) -> TaskTable {
    let tasks: BTreeMap<String, Scores> = tasks
        .map(|(t, images)| (t.clone(), evaluate_images(images, sim).into()))
        .collect();
    TaskTable {
        average: average(&tasks),
        tasks,
    }
}

/// Scores prepared data: overall and per source, per task.
pub fn score(
    prepared: &Prepared,
    sim: &dyn Similarity,
) -> (TaskTable, BTreeMap<String, TaskTable>) {
    let overall = table(
        prepared
            .tasks
            .iter()
            .map(|(t, ti)| (t, ti.images.as_slice())),
        sim,
    );
    let sources: BTreeSet<&String> = prepared
        .tasks
        .values()
        .flat_map(|t| t.sources.keys())
        .collect();
    let by_source = sources
        .into_iter()
        .map(|src| {
            let per_task = prepared
                .tasks
                .iter()
                .filter_map(|(t, ti)| ti.sources.get(src).map(|r| (t, &ti.images[r.clone()])));
            (src.clone(), table(per_task, sim))
        })
        .collect();
    (overall, by_source)
}
