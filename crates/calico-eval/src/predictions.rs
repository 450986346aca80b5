//! `predictions.jsonl`: one line per sample, the model's answer and masks.
//!
//! ```json
//! {"id": "paco_lvis/00000012", "answer": "… <p> the leg </p> [SEG] (IMAGE1) [SEG] (IMAGE2) …",
//!  "masks": [{"image": 0, "label": "the leg", "rle": {"size": [256, 256], "counts": "…"}, "score": 0.93}, …]}
//! ```
//!
//! `id` matches a ground-truth sample; `image` is 0-based; `label` is the
//! predicted phrase (an article is allowed); `score` defaults to 1.0.

use crate::error::{EvalError, Result};
use calico_masks::CocoRle;
use serde::{Deserialize, Serialize};
use std::path::Path;

fn one() -> f64 {
    1.0
}

/// One predicted mask.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PredictedMask {
    /// 0-based image index.
    pub image: usize,
    /// Predicted phrase or label.
    pub label: String,
    /// The mask (COCO RLE, compressed or not).
    pub rle: CocoRle,
    /// Confidence, used to rank detections for AP.
    #[serde(default = "one")]
    pub score: f64,
}

/// The prediction for one sample.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Prediction {
    /// Id of the ground-truth sample.
    pub id: String,
    /// The generated answer text (informational).
    #[serde(default)]
    pub answer: String,
    /// Predicted masks.
    #[serde(default)]
    pub masks: Vec<PredictedMask>,
}

/// Reads a predictions file; errors name the file and line.
pub fn read_predictions(path: &Path) -> Result<Vec<Prediction>> {
    let lines = calico_data::jsonl::JsonLines::open(path).map_err(|e| EvalError::io(path, e))?;
    let mut out = Vec::new();
    for line in lines {
        let (n, line) = line.map_err(|e| match e {
            calico_data::jsonl::LineError::Io(e) => EvalError::io(path, e),
            e => EvalError::Input {
                path: path.to_path_buf(),
                context: e.context(),
                message: e.problem(),
            },
        })?;
        let p: Prediction = serde_json::from_str(&line).map_err(|e| EvalError::Input {
            path: path.to_path_buf(),
            context: format!("line {n}"),
            message: e.to_string(),
        })?;
        out.push(p);
    }
    Ok(out)
}
