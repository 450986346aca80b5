//! Hand-computed metric values on tiny images.
//!
//! All images are 10×10. Masks are rectangles `rect(y0, y1, x0, x1)` (rows
//! `y0..y1`, columns `x0..x1`). The masks used most are:
//!
//! * `A = rect(0, 4, 0, 4)`: 16 pixels;
//! * `B = rect(5, 10, 5, 10)`: 25 pixels, disjoint from A;
//! * `A2 = rect(2, 6, 2, 6)`: 16 pixels, overlapping A in 2×2 = 4 pixels, so
//!   IoU(A, A2) = 4 / (16 + 16 − 4) = 1/7.
//!
//! COCOeval's precision is `tp / (fp + tp + ε)` with ε = 2⁻⁵². For one
//! detection that is 1 / (1 + ε) = 1 − 2⁻⁵² (written `ONE` below), because
//! 1 + ε is representable. For tp = 2 or 4 the ε is rounded away.

use calico_eval::metrics::{
    ap50, evaluate_images, miou, miou_strict, predicted_label, recall, semantic_iou,
    semantic_similarity, word_set_iou, MetricSet,
};
use calico_eval::{ImageEval, LabelledMask, Similarity};
use calico_masks::{Mask, Rle};
use std::collections::HashMap;

/// COCOeval's precision with a single true positive: 1 / (1 + 2⁻⁵²).
const ONE: f64 = 1.0 / (1.0 + f64::EPSILON);

fn rect(y0: u32, y1: u32, x0: u32, x1: u32) -> Rle {
    Rle::encode(&Mask::from_fn(10, 10, |y, x| {
        y >= y0 && y < y1 && x >= x0 && x < x1
    }))
}
fn a() -> Rle {
    rect(0, 4, 0, 4)
}
fn b() -> Rle {
    rect(5, 10, 5, 10)
}
fn a2() -> Rle {
    rect(2, 6, 2, 6)
}

fn gt(label: &str, rle: Rle) -> LabelledMask {
    LabelledMask {
        label: label.into(),
        rle,
        score: 1.0,
    }
}
fn pred(label: &str, rle: Rle, score: f64) -> LabelledMask {
    LabelledMask {
        label: label.into(),
        rle,
        score,
    }
}
fn image(gt: Vec<LabelledMask>, pred: Vec<LabelledMask>) -> ImageEval {
    ImageEval { gt, pred }
}

/// Exact equality of the ground-truth label and the predicted label.
struct Exact;
impl Similarity for Exact {
    fn similarity(&self, a: &str, b: &str) -> f64 {
        (a == b) as u8 as f64
    }
}

/// A similarity table (symmetric); exact matches score 1, others 0.
struct Table(HashMap<(String, String), f64>);
impl Table {
    fn new(pairs: &[(&str, &str, f64)]) -> Self {
        let mut m = HashMap::new();
        for &(x, y, s) in pairs {
            m.insert((x.to_string(), y.to_string()), s);
            m.insert((y.to_string(), x.to_string()), s);
        }
        Table(m)
    }
}
impl Similarity for Table {
    fn similarity(&self, a: &str, b: &str) -> f64 {
        if a == b {
            return 1.0;
        }
        *self.0.get(&(a.to_string(), b.to_string())).unwrap_or(&0.0)
    }
}

fn close(got: f64, want: f64, what: &str) {
    assert!(
        (got - want).abs() <= 1e-12,
        "{what}: got {got}, want {want}"
    );
}

fn check(m: &MetricSet, ap: Option<f64>, miou: f64, strict: f64, recall: f64, ss: f64, s_iou: f64) {
    match (m.ap50, ap) {
        (Some(g), Some(w)) => close(g, w, "ap50"),
        (g, w) => assert_eq!(g, w, "ap50"),
    }
    close(m.miou, miou, "miou");
    close(m.miou_strict, strict, "miou_strict");
    close(m.recall, recall, "recall");
    close(m.ss, ss, "ss");
    close(m.s_iou, s_iou, "s_iou");
}

#[test]
fn iou_of_the_example_masks() {
    close(calico_masks::iou(&a(), &a2()), 1.0 / 7.0, "IoU(A, A2)");
    close(calico_masks::iou(&a(), &b()), 0.0, "IoU(A, B)");
}

/// Perfect predictions on a pair: every metric is 1.
///
/// AP50: two true positives over two GT. Sorted by score: tp, tp →
/// recall [0.5, 1], precision [1/(1+ε), 2/(2+ε)] = [ONE, 1]; monotone →
/// [1, 1]; all 101 points read 1 → AP 1.
#[test]
fn perfect_prediction_scores_one_everywhere() {
    let images = vec![
        image(vec![gt("leg", a())], vec![pred("the leg", a(), 0.9)]),
        image(vec![gt("seat", b())], vec![pred("a seat", b(), 0.8)]),
    ];
    let m = evaluate_images(&images, &Exact);
    check(&m, Some(1.0), 1.0, 1.0, 1.0, 1.0, 1.0);
    assert_eq!((m.images, m.gt_masks, m.pred_masks), (2, 2, 2));
}

/// One GT and one perfect prediction: every point reads 1/(1+ε), and the
/// mean of 101 such values is 0.9999999999999999, not 1; pycocotools 2.0.11
/// prints `stats[1] = 0.9999999999999999` for this input.
#[test]
fn single_detection_ap_carries_cocos_epsilon() {
    let images = vec![image(vec![gt("leg", a())], vec![pred("leg", a(), 1.0)])];
    assert_eq!(ap50(&images), Some(0.9999999999999999));
    const { assert!(ONE < 1.0) };
}

/// Common object on both images; the prediction for image 1 is placed on
/// image 2 and vice versa. GT: image 1 chair at A, image 2 chair at A2;
/// predictions: image 1 gets A2, image 2 gets A.
///
/// * IoU 1/7 on each image: below 0.5, so AP50 0 (two false positives) and
///   Recall 0.
/// * mIoU: each image matches its pair at 1/7 (> 0) → 1/7; strict: 1/7 / 1.
/// * The labels are right: SS 1, S-IoU 1.
#[test]
fn swapped_images_keep_text_scores_but_lose_iou_scores() {
    let images = vec![
        image(vec![gt("chair", a())], vec![pred("the chair", a2(), 1.0)]),
        image(vec![gt("chair", a2())], vec![pred("the chair", a(), 1.0)]),
    ];
    let m = evaluate_images(&images, &Exact);
    check(&m, Some(0.0), 1.0 / 7.0, 1.0 / 7.0, 0.0, 1.0, 1.0);
}

/// GT only on image 1 (A, "leg"); image 2 has none; image 3 has nothing at
/// all.
#[test]
fn prediction_on_the_wrong_image() {
    // Only the wrong-image prediction: a false positive (AP 0); image 1 has
    // no pair (0), image 2 has a prediction and no GT (0), image 3 is left
    // out → mIoU 0; Recall 0/1; the GT label has no prediction on its image
    // → SS 0, S-IoU 0.
    let wrong_only = vec![
        image(vec![gt("leg", a())], vec![]),
        image(vec![], vec![pred("the leg", a(), 0.9)]),
        image(vec![], vec![]),
    ];
    let m = evaluate_images(&wrong_only, &Exact);
    check(&m, Some(0.0), 0.0, 0.0, 0.0, 0.0, 0.0);

    // The right prediction (score 0.6) plus the wrong one ranked above it
    // (0.9). Sorted: fp, tp → recall [0, 1], precision [0, 1/(2+ε) = 0.5];
    // monotone → [0.5, 0.5]; every point reads 0.5 → AP 0.5.
    // mIoU: image 1 → 1, image 2 → 0, image 3 excluded → 0.5 (strict too).
    // Recall 1/1; SS and S-IoU 1 (image 1 has "the leg").
    let both = vec![
        image(vec![gt("leg", a())], vec![pred("the leg", a(), 0.6)]),
        image(vec![], vec![pred("the leg", a(), 0.9)]),
        image(vec![], vec![]),
    ];
    let m = evaluate_images(&both, &Exact);
    check(&m, Some(0.5), 0.5, 0.5, 1.0, 1.0, 1.0);

    // Ranked below the right one instead: tp, fp → recall [1, 1],
    // precision [ONE, 0.5] → monotone [ONE, 0.5]; every point reads index 0
    // → AP = ONE.
    let mut later = both.clone();
    later[0].pred[0].score = 0.95;
    close(ap50(&later).unwrap(), ONE, "ap50");
}

/// "chair leg" for a "leg": word sets {chair, leg} and {leg} → S-IoU 1/2.
/// SS comes from the similarity: 0.8 with the stub table. Recall needs
/// similarity ≥ 0.5: it counts with 0.8 and not with 0.4.
#[test]
fn label_synonyms() {
    assert_eq!(word_set_iou("chair leg", "leg"), 0.5);
    assert_eq!(predicted_label("the chair leg"), "chair leg");
    let images = vec![image(
        vec![gt("leg", a())],
        vec![pred("the chair leg", a(), 1.0)],
    )];
    let near = Table::new(&[("leg", "chair leg", 0.8)]);
    let m = evaluate_images(&images, &near);
    check(&m, Some(ONE), 1.0, 1.0, 1.0, 0.8, 0.5);
    let far = Table::new(&[("leg", "chair leg", 0.4)]);
    let m = evaluate_images(&images, &far);
    check(&m, Some(ONE), 1.0, 1.0, 0.0, 0.4, 0.5);
    assert_eq!(semantic_similarity(&images, &far), 0.4);
    assert_eq!(recall(&images, &far), 0.0);
}

/// Articles and punctuation: one leading article is removed before text
/// metrics; VIC's word filter drops punctuation and case.
#[test]
fn article_and_punctuation_handling() {
    assert_eq!(predicted_label("the leg"), "leg");
    assert_eq!(predicted_label("The leg"), "leg");
    assert_eq!(predicted_label("an arm"), "arm");
    assert_eq!(predicted_label("the the leg"), "the leg");
    assert_eq!(predicted_label("the"), "the");
    assert_eq!(word_set_iou("Leg!", "leg"), 1.0);
    assert_eq!(word_set_iou("chair-leg", "chair leg"), 0.0); // "chairleg"
    assert_eq!(word_set_iou("", ""), 0.0);
    assert_eq!(word_set_iou("the leg", "leg"), 0.5);
}

/// A focused model against a PartGLEE-like model that predicts many labelled
/// masks. GT on one image: "leg" at A and "seat" at B. C, D, E are disjoint
/// from A and B.
#[test]
fn many_predictions_raise_ss_while_ap_drops() {
    let c = rect(0, 2, 6, 10);
    let d = rect(6, 10, 0, 2);
    let e = rect(8, 10, 3, 4);
    let gts = vec![gt("leg", a()), gt("seat", b())];

    // Focused: A "the leg" only. AP: recall [0.5], precision [ONE] → the 51
    // points 0, 0.01, …, 0.50 read ONE, the other 50 read 0 → 51·ONE/101.
    // mIoU 1 (one pair, IoU 1); strict 1/2; Recall 1/2;
    // SS: leg 1, seat 0 → 1/2; S-IoU 1/2.
    let focused = vec![image(gts.clone(), vec![pred("the leg", a(), 1.0)])];
    let f = evaluate_images(&focused, &Exact);
    check(&f, Some(51.0 * ONE / 101.0), 1.0, 0.5, 0.5, 0.5, 0.5);

    // Many: C "a seat", D "a leg", E "an arm", A "the wheel", all score 1
    // (ties keep input order). AP: fp, fp, fp, tp → recall [0, 0, 0, .5],
    // precision [0, 0, 0, 1/4] → monotone [.25; 4]; points 0…0.50 read
    // 0.25 → 51·0.25/101.
    // mIoU: only A–A overlaps → 1; strict 1/2.
    // Recall: the largest IoU is (leg, A "wheel") with similarity 0 → stop → 0.
    // SS: leg ← "leg" (D) 1, seat ← "seat" (C) 1 → 1; S-IoU 1.
    let many = vec![image(
        gts,
        vec![
            pred("a seat", c, 1.0),
            pred("a leg", d, 1.0),
            pred("an arm", e, 1.0),
            pred("the wheel", a(), 1.0),
        ],
    )];
    let p = evaluate_images(&many, &Exact);
    check(&p, Some(51.0 * 0.25 / 101.0), 1.0, 0.5, 0.0, 1.0, 1.0);
    assert!(p.ss > f.ss && p.s_iou > f.s_iou);
    assert!(p.ap50 < f.ap50 && p.recall < f.recall);
}

/// Two GT on one image; scores 0.9 (matches GT 1), 0.8 (miss), 0.7 (matches
/// GT 2). Recall [.5, .5, 1], precision [ONE, 1/(2+ε) = .5, 2/(3+ε) = 2/3]
/// → monotone [ONE, 2/3, 2/3]. Points 0…0.50 read index 0 (ONE); points
/// 0.51…1 read index 2 (2/3) → AP = (51·ONE + 50·2/3)/101.
#[test]
fn ap_interpolates_precision() {
    let images = vec![image(
        vec![gt("leg", a()), gt("seat", b())],
        vec![
            pred("leg", a(), 0.9),
            pred("arm", rect(0, 2, 6, 10), 0.8),
            pred("seat", b(), 0.7),
        ],
    )];
    let want = (51.0 * ONE + 50.0 * (2.0 / 3.0)) / 101.0;
    close(ap50(&images).unwrap(), want, "ap50");
    // mIoU: pairs (A, A) 1 and (B, B) 1 → 1; strict 2/2.
    assert_eq!(miou(&images), 1.0);
    assert_eq!(miou_strict(&images), 1.0);
}

/// IoU exactly 0.5 is a match for AP50 and Recall: GT A (16 px), prediction
/// rows 0..4 × columns 0..2 (8 px inside A) → IoU 8/16.
#[test]
fn iou_of_exactly_one_half_matches() {
    let half = rect(0, 4, 0, 2);
    close(calico_masks::iou(&half, &a()), 0.5, "IoU");
    let images = vec![image(vec![gt("leg", a())], vec![pred("leg", half, 1.0)])];
    let m = evaluate_images(&images, &Exact);
    check(&m, Some(ONE), 0.5, 0.5, 1.0, 1.0, 1.0);
}

/// Duplicates: the second copy of a matched prediction is a false positive
/// for AP50, and is ignored by the one-to-one mIoU and Recall matchings.
/// Same score: tp, fp → recall [1, 1], precision [ONE, .5] → AP ONE.
#[test]
fn duplicate_predictions() {
    let images = vec![image(
        vec![gt("leg", a())],
        vec![pred("leg", a(), 1.0), pred("leg", a(), 1.0)],
    )];
    let m = evaluate_images(&images, &Exact);
    check(&m, Some(ONE), 1.0, 1.0, 1.0, 1.0, 1.0);
}

/// No predictions at all: AP 0 (GT exists), everything else 0.
/// No ground truth either: AP undefined (`None`), everything 0.
#[test]
fn empty_predictions_and_empty_sets() {
    let images = vec![
        image(vec![gt("leg", a())], vec![]),
        image(vec![gt("seat", b()), gt("arm", a2())], vec![]),
    ];
    let m = evaluate_images(&images, &Exact);
    check(&m, Some(0.0), 0.0, 0.0, 0.0, 0.0, 0.0);
    assert_eq!((m.images, m.gt_masks, m.pred_masks), (2, 3, 0));

    let nothing = vec![image(vec![], vec![]), image(vec![], vec![])];
    let m = evaluate_images(&nothing, &Exact);
    check(&m, None, 0.0, 0.0, 0.0, 0.0, 0.0);
    assert_eq!(m.images, 2);

    // Predictions but no ground truth anywhere: AP undefined; mIoU counts the
    // image as 0.
    let only_pred = vec![image(vec![], vec![pred("leg", a(), 1.0)])];
    let m = evaluate_images(&only_pred, &Exact);
    check(&m, None, 0.0, 0.0, 0.0, 0.0, 0.0);

    let m = evaluate_images(&[], &Exact);
    assert_eq!(m, MetricSet::default());
    assert_eq!(semantic_iou(&[]), 0.0);
}

/// An empty predicted mask never matches (IoU 0, also with an empty GT).
#[test]
fn empty_masks_never_match() {
    let empty = Rle::empty(10, 10);
    let images = vec![image(
        vec![gt("leg", empty.clone())],
        vec![pred("leg", empty, 1.0)],
    )];
    let m = evaluate_images(&images, &Exact);
    check(&m, Some(0.0), 0.0, 0.0, 0.0, 1.0, 1.0);
}
