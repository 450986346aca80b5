//! Recall: GLaMM's `evaluate_recall_with_mapping` with IoU ≥ 0.5 and text
//! similarity ≥ 0.5. See the [module docs](super).

use super::image::{gt_pred_similarity, PredGtIou};
use super::matching::greedy_thresholded;
use super::{IOU_THRESHOLD, TEXT_SIM_THRESHOLD};
use crate::{ImageEval, Similarity};
use rayon::prelude::*;

/// Matches of one image. `sims` is the ground-truth × prediction similarity
/// matrix, row-major.
pub(crate) fn image_true_positives(ious: &PredGtIou, sims: &[f64]) -> usize {
    let n_pred = ious.n_pred;
    greedy_thresholded(
        ious.n_gt,
        n_pred,
        |g, p| ious.at(p, g),
        |g, p| sims[g * n_pred + p],
        IOU_THRESHOLD,
        TEXT_SIM_THRESHOLD,
    )
    .len()
}

/// ΣTP / Σ#GT, 0 without ground truth.
pub(crate) fn ratio(tp: impl Iterator<Item = usize>, images: &[ImageEval]) -> f64 {
    let n_gt: usize = images.iter().map(|i| i.gt.len()).sum();
    if n_gt == 0 {
        0.0
    } else {
        tp.sum::<usize>() as f64 / n_gt as f64
    }
}

/// Recall over `images` with `sim` as the text similarity.
pub fn recall(images: &[ImageEval], sim: &dyn Similarity) -> f64 {
    let tp: Vec<usize> = images
        .par_iter()
        .map(|img| image_true_positives(&PredGtIou::new(img), &gt_pred_similarity(img, sim)))
        .collect();
    ratio(tp.into_iter(), images)
}
