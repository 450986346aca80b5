//! mIoU: GLaMM's `compute_miou` (greedy one-to-one matching, mean of the
//! matched IoUs per image, mean over images) and the strict variant that
//! divides by the number of ground-truth masks. See the [module docs](super).

use super::image::PredGtIou;
use super::matching::greedy_positive;
use crate::ImageEval;
use rayon::prelude::*;

/// `(mIoU, strict mIoU)` of one image, or `None` for an image with neither
/// ground truth nor predictions (left out of both means).
pub(crate) fn image_miou(ious: &PredGtIou) -> Option<(f64, f64)> {
    if ious.n_gt == 0 && ious.n_pred == 0 {
        return None;
    }
    let pairs = greedy_positive(ious.n_pred, ious.n_gt, |p, g| ious.at(p, g));
    let sum = pairs.iter().fold(0.0, |s, &(_, _, v)| s + v);
    let glamm = if pairs.is_empty() {
        0.0
    } else {
        sum / pairs.len() as f64
    };
    let strict = if ious.n_gt == 0 {
        0.0
    } else {
        sum / ious.n_gt as f64
    };
    Some((glamm, strict))
}

/// Mean of per-image values in order, 0 for none.
pub(crate) fn mean(values: impl Iterator<Item = f64>) -> f64 {
    let (sum, n) = values.fold((0.0, 0usize), |(s, n), v| (s + v, n + 1));
    if n == 0 {
        0.0
    } else {
        sum / n as f64
    }
}

fn per_image(images: &[ImageEval]) -> Vec<Option<(f64, f64)>> {
    images
        .par_iter()
        .map(|img| image_miou(&PredGtIou::new(img)))
        .collect()
}

/// GLaMM's mIoU over `images`: unmatched masks are not penalised.
pub fn miou(images: &[ImageEval]) -> f64 {
    mean(per_image(images).into_iter().flatten().map(|m| m.0))
}

/// mIoU with the same matching, where each image's matched IoUs are summed
/// and divided by its number of ground-truth masks (a missed mask counts 0).
pub fn miou_strict(images: &[ImageEval]) -> f64 {
    mean(per_image(images).into_iter().flatten().map(|m| m.1))
}
