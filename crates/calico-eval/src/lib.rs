//! Evaluation of part-focused semantic co-segmentation (paper appendix C.2,
//! Tables 1 and 5): AP50, mIoU, Recall, Semantic Similarity and Semantic IoU
//! per task, from a ground-truth samples file and a predictions file.
//!
//! Every image of every sample is one evaluation image; its ground truth is
//! the sample's masks on that image, its predictions the predicted masks on
//! that image.

pub mod embed;
pub mod error;
pub mod evaluate;
pub mod metrics;
pub mod predictions;
pub mod report;

pub use error::{EvalError, Result};

use calico_masks::Rle;

/// One labelled mask.
#[derive(Clone, Debug, PartialEq)]
pub struct LabelledMask {
    /// Label without article (`leg`), or the phrase as predicted.
    pub label: String,
    /// The mask.
    pub rle: Rle,
    /// Confidence (ground truth: 1.0).
    pub score: f64,
}

/// Ground truth and predictions of one image of one sample.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ImageEval {
    /// Ground-truth masks.
    pub gt: Vec<LabelledMask>,
    /// Predicted masks.
    pub pred: Vec<LabelledMask>,
}

/// Similarity of two labels in [-1, 1] (cosine of sentence embeddings for
/// the paper's metrics).
pub trait Similarity: Sync {
    /// The similarity of `a` and `b`.
    fn similarity(&self, a: &str, b: &str) -> f64;
}

/// Exact-match similarity: 1 for equal labels after lower-casing and
/// dropping a leading article, else 0 (the documented fallback for machines
/// without the sentence model; not the paper's metric).
pub struct ExactMatch;

impl Similarity for ExactMatch {
    fn similarity(&self, a: &str, b: &str) -> f64 {
        let norm = |s: &str| calico_text::english::strip_article(s.trim()).to_lowercase();
        (norm(a) == norm(b)) as u8 as f64
    }
}
