//! The paper's metrics: AP50, mIoU, Recall, Semantic Similarity (SS) and
//! Semantic IoU (S-IoU).
//!
//! Appendix C.2 of the paper describes the metrics in words only. It says
//! AP50, mIoU and Recall follow GLaMM, and SS and S-IoU follow VIC. The
//! definitions below are those of the reference evaluators, applied to our
//! data. Every function takes a set of evaluation images (the caller passes
//! one task, or one task of one source). Every image of every sample is one
//! evaluation image. Values are fractions in [0, 1] (SS can be negative when
//! the similarity is). The report multiplies them by 100.
//!
//! # Masks and labels
//!
//! * IoU is pycocotools' `maskUtils.iou` (non-crowd), computed on RLE by
//!   [`calico_masks::IouRle`]. For two non-empty masks it equals
//!   |A∩B| / |A∪B|. When either mask is empty it is 0. GLaMM's numpy
//!   `compute_iou` would give NaN for two empty masks; we give 0, so an empty
//!   prediction never matches anything.
//! * Ground-truth labels are plain (`leg`). Predicted labels are the model's
//!   `<p>` phrases (`the leg`). Every text comparison (Recall's text
//!   threshold, SS, S-IoU) first removes one leading article from the
//!   predicted phrase with [`calico_text::english::strip_article`]. The
//!   ground-truth label is used as it is. Without this step, S-IoU would
//!   charge every `the …` phrase for the article, which VIC's single-word
//!   predictions never had. See [`predicted_label`].
//!
//! # AP50 ([`ap50`])
//!
//! This is COCO mask AP at IoU 0.5, with a single category. It is exactly
//! what pycocotools' `COCOeval(gt, dt, "segm")` reports as `stats[1]` (the
//! `IoU=0.50 | area=all | maxDets=100` line) when `useCats = 1` and
//! `catIds = [1]`, as in GLaMM. Each prediction's score is its confidence;
//! GLaMM gives every prediction score 1.0. The steps are:
//!
//! 1. **Per image.** Sort the predictions by decreasing score with a stable
//!    sort (numpy `argsort(-score, kind="mergesort")`) and keep the first 100.
//!    Take each prediction in that order. Over the ground-truth masks not yet
//!    matched, find the one with the largest IoU that is ≥ `min(0.5, 1−1e-10)`.
//!    A later ground truth with an *equal* IoU replaces an earlier one, as in
//!    COCOeval's `<` test. The prediction is a true positive if it finds one,
//!    otherwise a false positive. COCOeval's ignore flags are kept: a ground
//!    truth is ignored when it is a crowd or its area is outside "all"
//!    `[0, 1e10]`, so none of ours is. An image with neither ground truth nor
//!    predictions contributes nothing. An image with ground truth but no
//!    predictions adds to the ground-truth count. Every prediction on an image
//!    without ground truth is a false positive.
//! 2. **Accumulate.** Concatenate the images' predictions in image order.
//!    Stable-sort all of them by decreasing score. Take the cumulative sums of
//!    TP and FP. Recall is `tp / n_gt` and precision is
//!    `tp / (fp + tp + ε)`, with ε = 2⁻⁵² (`np.spacing(1)`). Make precision
//!    monotone from the right.
//! 3. **Interpolate.** For each recall threshold r ∈ {0, 0.01, …, 1} (the
//!    values of `np.linspace(0, 1, 101)`), find the first index with
//!    recall ≥ r (`searchsorted(side="left")`). Take the precision there, or
//!    0 past the end. AP is the mean of these 101 values, summed in numpy's
//!    pairwise order.
//! 4. **No ground truth at all.** COCOeval skips the category and reports −1;
//!    we return `None`. With ground truth but no predictions, AP is 0.
//!
//! # mIoU ([`miou`], [`miou_strict`])
//!
//! This follows GLaMM's `compute_miou`. For each image, build the IoU matrix
//! with predictions as rows and ground truth as columns. Repeatedly take its
//! largest entry while that entry is > 0; on a tie take the first in row-major
//! order (`np.argmax`). Record the value and delete the entry's row and
//! column. This is a greedy one-to-one matching. The image's value is the
//! mean of the recorded IoUs, or 0 if none. The metric is the mean of the
//! image values.
//!
//! * **Strict variant.** The image's value is the sum of the matched IoUs
//!   divided by the number of ground-truth masks. Missing or wrong masks count
//!   0. GLaMM's version does not penalise them, and it does not penalise extra
//!   predictions either.
//! * **Images without ground truth.** GLaMM's images all have ground truth;
//!   ours may not. An image with no ground truth *and* no predictions is
//!   correct and has nothing to measure, so both variants **exclude** it from
//!   the mean. An image with predictions but no ground truth keeps GLaMM's
//!   formula: nothing is matched, so it counts 0 in both variants. If no image
//!   is left, both values are 0 (GLaMM's `if mious else 0.0`).
//!
//! # Recall ([`recall`])
//!
//! This follows GLaMM's `evaluate_recall_with_mapping`, with an IoU threshold
//! of 0.5 and a text-similarity threshold of 0.5. For each image, build the
//! IoU matrix and the text-similarity matrix, with ground truth as rows and
//! predictions as columns. Take the pair with the largest IoU; on a tie take
//! the first in row-major order. **Stop** at the first pair whose IoU is
//! < 0.5 or whose text similarity is < 0.5. The loop does not go on to the
//! next-best pair, so a large-IoU pair with the wrong label ends the image's
//! matching. Otherwise count a true positive and set the pair's row and column
//! to 0 in both matrices. Recall is ΣTP / Σ#GT over all images of the set, or
//! 0 when there is no ground truth. In GLaMM the text similarity is the cosine
//! of BERT mean-pooled embeddings; here it is whatever
//! [`Similarity`] the caller passes.
//!
//! # SS and S-IoU ([`semantic_similarity`], [`semantic_iou`])
//!
//! The paper defines S-IoU as (1/N) Σᵢ |V(yᵢ) ∩ V(ŷᵢ)| / |V(yᵢ) ∪ V(ŷᵢ)| over
//! N pairs of a true and a predicted label. It does not say how the pairs are
//! formed. We pair each ground-truth label with the predicted label of the
//! same image that scores best for it. This fits the paper's remark that
//! PartGLEE's many predictions raise its chance of matching the ground-truth
//! labels. So, for each ground-truth mask of each image, take its label's best
//! score over the image's predicted labels, or 0 when the image has no
//! predictions. The metric is the mean over all ground-truth masks of the set,
//! or 0 when there are none. Mask overlap plays no part.
//!
//! * **SS** scores a pair with the [`Similarity`]. VIC uses
//!   the cosine of mean-pooled sentence embeddings.
//! * **S-IoU** scores a pair with [`word_set_iou`], as VIC's `SentenceIOU`
//!   does. Keep the characters that are alphanumeric or a space, lower-case
//!   them, and split on whitespace into a set of words. The score is the IoU
//!   of the two sets. Two empty sets score 0.

mod ap;
mod image;
mod matching;
mod miou;
mod recall;
mod semantic;

pub use ap::ap50;
pub use miou::{miou, miou_strict};
pub use recall::recall;
pub use semantic::{semantic_iou, semantic_similarity, word_set_iou};

use crate::{ImageEval, Similarity};
use rayon::prelude::*;

/// IoU a match needs in AP50 and Recall.
pub const IOU_THRESHOLD: f64 = 0.5;
/// Text similarity a match needs in Recall.
pub const TEXT_SIM_THRESHOLD: f64 = 0.5;
/// Predictions per image that AP50 considers (COCO's `maxDets` 100).
pub const MAX_DETS: usize = 100;

/// The label a predicted phrase is compared as: the phrase without one
/// leading article (`the leg` → `leg`).
pub fn predicted_label(phrase: &str) -> &str {
    calico_text::english::strip_article(phrase)
}

/// All metrics of one set of evaluation images, as fractions.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct MetricSet {
    /// COCO mask AP at IoU 0.5; `None` when the set has no ground truth
    /// (COCOeval's −1).
    pub ap50: Option<f64>,
    /// GLaMM's greedy mIoU (unmatched masks not penalised).
    pub miou: f64,
    /// The same matching, each image's IoU sum divided by its ground-truth count.
    pub miou_strict: f64,
    /// Recall at IoU ≥ 0.5 and text similarity ≥ 0.5.
    pub recall: f64,
    /// Semantic similarity.
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

/// Everything one image contributes.
struct ImageScores {
    ap: Option<ap::ImageDets>,
    miou: Option<(f64, f64)>,
    tp: usize,
    ss: Vec<f64>,
    s_iou: Vec<f64>,
}

/// Computes every metric over `images`, with `sim` as the text similarity.
/// Each image's IoU and similarity matrices are computed once (in parallel
/// over images) and shared by the metrics.
pub fn evaluate_images(images: &[ImageEval], sim: &dyn Similarity) -> MetricSet {
    let per: Vec<ImageScores> = images
        .par_iter()
        .map(|img| {
            let ious = image::PredGtIou::new(img);
            let sims = image::gt_pred_similarity(img, sim);
            ImageScores {
                ap: ap::image_dets(img, &ious),
                miou: miou::image_miou(&ious),
                tp: recall::image_true_positives(&ious, &sims),
                ss: semantic::image_best(&sims, img.gt.len(), img.pred.len()),
                s_iou: semantic::image_s_iou(img),
            }
        })
        .collect();
    MetricSet {
        ap50: ap::accumulate(per.iter().filter_map(|p| p.ap.as_ref())),
        miou: miou::mean(per.iter().filter_map(|p| p.miou.map(|m| m.0))),
        miou_strict: miou::mean(per.iter().filter_map(|p| p.miou.map(|m| m.1))),
        recall: recall::ratio(per.iter().map(|p| p.tp), images),
        ss: semantic::mean(per.iter().flat_map(|p| p.ss.iter().copied())),
        s_iou: semantic::mean(per.iter().flat_map(|p| p.s_iou.iter().copied())),
        images: images.len(),
        gt_masks: images.iter().map(|i| i.gt.len()).sum(),
        pred_masks: images.iter().map(|i| i.pred.len()).sum(),
    }
}
