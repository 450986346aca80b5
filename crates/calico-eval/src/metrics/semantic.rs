//! Semantic Similarity and Semantic IoU (VIC's `SentenceScore` and
//! `SentenceIOU`): each ground-truth label against the best predicted label
//! of its image. See the [module docs](super).

use super::image::gt_pred_similarity;
use super::predicted_label;
use crate::{ImageEval, Similarity};
use rayon::prelude::*;
use std::collections::BTreeSet;

/// VIC's word set: the alphanumeric characters and spaces of `label`,
/// lower-cased, split on whitespace.
///
/// Rust's `char::is_alphanumeric` and `to_lowercase` stand in for Python's
/// `str.isalnum` and `str.lower`. They agree on ASCII and on ordinary
/// letters; a few rare Unicode characters may be classified differently.
fn word_set(label: &str) -> BTreeSet<String> {
    let kept: String = label
        .chars()
        .filter(|c| c.is_alphanumeric() || *c == ' ')
        .collect();
    kept.to_lowercase()
        .split_whitespace()
        .map(str::to_string)
        .collect()
}

fn set_iou(a: &BTreeSet<String>, b: &BTreeSet<String>) -> f64 {
    let inter = a.intersection(b).count();
    let union = a.len() + b.len() - inter;
    if union == 0 {
        0.0
    } else {
        inter as f64 / union as f64
    }
}

/// IoU of the word sets of `a` and `b` (VIC's `SentenceIOU` for one pair).
/// Two labels without any word score 0.
///
/// ```
/// use calico_eval::metrics::word_set_iou;
/// assert_eq!(word_set_iou("chair leg", "leg"), 0.5);
/// assert_eq!(word_set_iou("Leg!", "leg"), 1.0);
/// assert_eq!(word_set_iou("", "?"), 0.0);
/// ```
pub fn word_set_iou(a: &str, b: &str) -> f64 {
    set_iou(&word_set(a), &word_set(b))
}

/// For each ground-truth row of a `n_gt × n_pred` score matrix, the largest
/// entry (0 when there are no predictions).
pub(crate) fn image_best(scores: &[f64], n_gt: usize, n_pred: usize) -> Vec<f64> {
    if n_pred == 0 {
        return vec![0.0; n_gt];
    }
    scores
        .chunks_exact(n_pred)
        .map(|row| row.iter().copied().fold(f64::NEG_INFINITY, f64::max))
        .collect()
}

/// Best word-set IoU of each ground-truth label over the image's predicted
/// labels (article removed).
pub(crate) fn image_s_iou(img: &ImageEval) -> Vec<f64> {
    let preds: Vec<BTreeSet<String>> = img
        .pred
        .iter()
        .map(|p| word_set(predicted_label(&p.label)))
        .collect();
    let scores: Vec<f64> = img
        .gt
        .iter()
        .flat_map(|g| {
            let g = word_set(&g.label);
            preds.iter().map(move |p| set_iou(&g, p))
        })
        .collect();
    image_best(&scores, img.gt.len(), preds.len())
}

/// Mean over ground-truth labels in order, 0 for none.
pub(crate) fn mean(values: impl Iterator<Item = f64>) -> f64 {
    super::miou::mean(values)
}

/// SS over `images`: the mean over all ground-truth labels of the best
/// `sim` to a predicted label of the same image.
pub fn semantic_similarity(images: &[ImageEval], sim: &dyn Similarity) -> f64 {
    let per: Vec<Vec<f64>> = images
        .par_iter()
        .map(|img| image_best(&gt_pred_similarity(img, sim), img.gt.len(), img.pred.len()))
        .collect();
    mean(per.iter().flatten().copied())
}

/// S-IoU over `images`: the mean over all ground-truth labels of the best
/// [`word_set_iou`] with a predicted label of the same image.
pub fn semantic_iou(images: &[ImageEval]) -> f64 {
    let per: Vec<Vec<f64>> = images.par_iter().map(image_s_iou).collect();
    mean(per.iter().flatten().copied())
}
