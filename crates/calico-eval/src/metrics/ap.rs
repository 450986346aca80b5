//! AP50: pycocotools' `COCOeval` (`iouType="segm"`, one category), the
//! precision at IoU 0.5 averaged over 101 recall points (`stats[1]`).
//!
//! The steps follow `COCOeval.evaluateImg` and `COCOeval.accumulate` for the
//! "all" area range, 100 detections per image and the 0.5 threshold only.
//! The other thresholds, area ranges and detection limits do not change
//! `stats[1]`.

use super::image::PredGtIou;
use super::{IOU_THRESHOLD, MAX_DETS};
use crate::ImageEval;
use rayon::prelude::*;
use std::cmp::Ordering;

/// COCO's "all" area range, `[0 ** 2, 1e5 ** 2]`.
const AREA_ALL: (f64, f64) = (0.0, 1e10);
/// Number of recall thresholds, `np.linspace(0, 1, 101)`.
const RECALL_POINTS: usize = 101;

/// One kept prediction after per-image matching.
#[derive(Clone, Copy, Debug)]
struct Det {
    score: f64,
    /// Matched to a ground truth at IoU ≥ 0.5 (`dtMatches > 0`).
    matched: bool,
    /// Neither true nor false positive (`dtIgnore`): matched to an ignored
    /// ground truth, or unmatched with an area outside the range.
    ignored: bool,
}

/// What one image contributes to the accumulation (`evaluateImg`'s result).
#[derive(Clone, Debug)]
pub(crate) struct ImageDets {
    /// Kept predictions, highest score first.
    dets: Vec<Det>,
    /// Ground truth that is not ignored.
    n_gt: usize,
}

/// The sort key of numpy's `argsort(-score)`: ascending, −0 equal to +0,
/// NaN last.
fn descending_key(score: f64) -> f64 {
    if score.is_nan() {
        f64::NAN
    } else if score == 0.0 {
        0.0
    } else {
        -score
    }
}

/// Stable order of `scores` from highest to lowest (`np.argsort(-s,
/// kind="mergesort")`).
fn order_by_score(scores: impl Iterator<Item = f64>) -> Vec<usize> {
    let keys: Vec<f64> = scores.map(descending_key).collect();
    let mut order: Vec<usize> = (0..keys.len()).collect();
    order.sort_by(|&a, &b| keys[a].total_cmp(&keys[b]));
    order
}

/// Per-image matching at IoU 0.5 (`evaluateImg` for one threshold).
/// `None` for an image with neither ground truth nor predictions.
pub(crate) fn image_dets(img: &ImageEval, ious: &PredGtIou) -> Option<ImageDets> {
    if img.gt.is_empty() && img.pred.is_empty() {
        return None;
    }
    let outside = |area: u64| {
        let a = area as f64;
        a < AREA_ALL.0 || a > AREA_ALL.1
    };
    // Our ground truth has no crowd masks; a crowd mask would be ignored too.
    let crowd = vec![false; img.gt.len()];
    let ignore: Vec<bool> = img
        .gt
        .iter()
        .zip(&crowd)
        .map(|(g, &c)| c || outside(g.rle.area()))
        .collect();
    // Ignored ground truth last (a stable sort).
    let mut gt_order: Vec<usize> = (0..img.gt.len()).collect();
    gt_order.sort_by_key(|&g| ignore[g]);
    let mut dt_order = order_by_score(img.pred.iter().map(|p| p.score));
    dt_order.truncate(MAX_DETS);

    let threshold = IOU_THRESHOLD.min(1.0 - 1e-10);
    let mut gt_taken = vec![false; gt_order.len()];
    let dets = dt_order
        .iter()
        .map(|&d| {
            let mut best = threshold;
            let mut m: Option<usize> = None;
            for (k, &g) in gt_order.iter().enumerate() {
                if gt_taken[k] && !crowd[g] {
                    continue;
                }
                // Matched to a regular ground truth; the rest are ignored ones.
                if let Some(mk) = m {
                    if !ignore[gt_order[mk]] && ignore[g] {
                        break;
                    }
                }
                let v = ious.at(d, g);
                if v < best {
                    continue;
                }
                best = v;
                m = Some(k);
            }
            match m {
                Some(k) => {
                    gt_taken[k] = true;
                    Det {
                        score: img.pred[d].score,
                        matched: true,
                        ignored: ignore[gt_order[k]],
                    }
                }
                None => Det {
                    score: img.pred[d].score,
                    matched: false,
                    ignored: outside(img.pred[d].rle.area()),
                },
            }
        })
        .collect();
    Some(ImageDets {
        dets,
        n_gt: ignore.iter().filter(|&&i| !i).count(),
    })
}

/// numpy's pairwise summation (`add.reduce` on a contiguous float64 array).
fn numpy_sum(a: &[f64]) -> f64 {
    const BLOCK: usize = 128;
    let n = a.len();
    if n < 8 {
        a.iter().fold(0.0, |s, &v| s + v)
    } else if n <= BLOCK {
        let mut r = [0.0f64; 8];
        r.copy_from_slice(&a[..8]);
        let full = n - n % 8;
        for chunk in a[8..full].chunks_exact(8) {
            for (acc, &v) in r.iter_mut().zip(chunk) {
                *acc += v;
            }
        }
        let mut res = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]));
        for &v in &a[full..] {
            res += v;
        }
        res
    } else {
        let mut half = n / 2;
        half -= half % 8;
        numpy_sum(&a[..half]) + numpy_sum(&a[half..])
    }
}

/// `COCOeval.accumulate` and `summarize` for IoU 0.5: the mean interpolated
/// precision over 101 recall points, or `None` (COCOeval's −1) when there is
/// no image or no ground truth that is not ignored.
pub(crate) fn accumulate<'a>(images: impl Iterator<Item = &'a ImageDets>) -> Option<f64> {
    let mut any = false;
    let mut n_gt = 0usize;
    let mut dets: Vec<Det> = Vec::new();
    for img in images {
        any = true;
        n_gt += img.n_gt;
        dets.extend_from_slice(&img.dets);
    }
    if !any || n_gt == 0 {
        return None;
    }
    let order = order_by_score(dets.iter().map(|d| d.score));
    let npig = n_gt as f64;
    let (mut tp, mut fp) = (0.0f64, 0.0f64);
    let mut recall = Vec::with_capacity(order.len());
    let mut precision = Vec::with_capacity(order.len());
    for &k in &order {
        let d = dets[k];
        if !d.ignored {
            if d.matched {
                tp += 1.0;
            } else {
                fp += 1.0;
            }
        }
        recall.push(tp / npig);
        precision.push(tp / (fp + tp + f64::EPSILON));
    }
    for i in (1..precision.len()).rev() {
        if precision[i] > precision[i - 1] {
            precision[i - 1] = precision[i];
        }
    }
    let q: Vec<f64> = (0..RECALL_POINTS)
        .map(|r| {
            // The values of np.linspace(0, 1, 101): r * 0.01, and exactly 1 last.
            let t = if r + 1 == RECALL_POINTS {
                1.0
            } else {
                r as f64 * 0.01
            };
            let i = recall.partition_point(|&x| x.partial_cmp(&t) == Some(Ordering::Less));
            precision.get(i).copied().unwrap_or(0.0)
        })
        .collect();
    Some(numpy_sum(&q) / RECALL_POINTS as f64)
}

/// COCO mask AP at IoU 0.5 over `images` (pycocotools' `stats[1]`); `None`
/// when they have no ground truth. See the [module docs](super).
pub fn ap50(images: &[ImageEval]) -> Option<f64> {
    let per: Vec<Option<ImageDets>> = images
        .par_iter()
        .map(|img| image_dets(img, &PredGtIou::new(img)))
        .collect();
    accumulate(per.iter().flatten())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairwise_sum_matches_numpy_order() {
        // Eight accumulators, then the tail. numpy gives 1.0000000000000084e16
        // here (`a = np.ones(101); a[0] = 1e16; np.sum(a)`); a left-to-right
        // sum loses every 1.0 and gives 1e16.
        let mut a = vec![1.0; 101];
        a[0] = 1e16;
        assert_eq!(numpy_sum(&a), 1.0000000000000084e16);
        assert_eq!(a.iter().fold(0.0, |s, &v| s + v), 1e16);
        assert_eq!(numpy_sum(&[1.0, 2.0, 3.0]), 6.0);
        assert_eq!(numpy_sum(&[0.5; 300]), 150.0);
    }

    #[test]
    fn score_order_is_stable_and_descending() {
        let order = order_by_score([0.5, 1.0, 0.5, f64::NAN, -0.0, 0.0, 1.0].into_iter());
        assert_eq!(order, vec![1, 6, 0, 2, 4, 5, 3]);
    }
}
