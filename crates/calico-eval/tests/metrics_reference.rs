//! The metrics against `tools/reference/eval_reference.py`: pycocotools'
//! COCOeval for AP50, and independent Python versions of GLaMM's mIoU and
//! Recall and of SS and S-IoU, on random sets of images.
//!
//! The checked-in fixture is `tests/fixtures/eval/reference_cases.json`. A
//! freshly generated file can be checked as well by pointing
//! `CALICO_EVAL_CASES` at it:
//!
//! ```text
//! python3 tools/reference/eval_reference.py --seed 11 --sets 300 --out /tmp/cases.json
//! CALICO_EVAL_CASES=/tmp/cases.json cargo test -p calico-eval --test metrics_reference
//! ```

use calico_eval::metrics::{
    ap50, evaluate_images, miou, miou_strict, recall, semantic_iou, semantic_similarity,
};
use calico_eval::{ImageEval, LabelledMask, Similarity};
use calico_masks::Rle;
use serde_json::Value;
use std::path::{Path, PathBuf};

/// The fixture's text similarity: exact equality (the metrics pass the
/// predicted phrase with its article already removed).
struct Exact;

impl Similarity for Exact {
    fn similarity(&self, a: &str, b: &str) -> f64 {
        if a == b {
            1.0
        } else {
            0.0
        }
    }
}

const AP_TOL: f64 = 1e-9;
const TOL: f64 = 1e-12;

fn str_of(v: &Value) -> &str {
    v.as_str().expect("a string")
}

fn mask(label: &Value, counts: &Value, score: f64, h: u32, w: u32) -> LabelledMask {
    LabelledMask {
        label: str_of(label).to_string(),
        rle: Rle::from_compressed(str_of(counts), h, w).expect("valid RLE"),
        score,
    }
}

fn images_of(case: &Value) -> Vec<ImageEval> {
    case["images"]
        .as_array()
        .expect("images")
        .iter()
        .map(|img| {
            let h = img["h"].as_u64().expect("h") as u32;
            let w = img["w"].as_u64().expect("w") as u32;
            let list = |k: &str| img[k].as_array().expect("mask list").clone();
            ImageEval {
                gt: list("gt")
                    .iter()
                    .map(|m| mask(&m[0], &m[1], 1.0, h, w))
                    .collect(),
                pred: list("pred")
                    .iter()
                    .map(|m| mask(&m[0], &m[1], m[2].as_f64().expect("score"), h, w))
                    .collect(),
            }
        })
        .collect()
}

struct Summary {
    sets: usize,
    ap_sets: usize,
    max_diff: [f64; 6],
}

fn check_file(path: &Path) -> Summary {
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    let doc: Value = serde_json::from_str(&text).expect("valid JSON");
    let cases = doc["cases"].as_array().expect("cases");
    assert!(!cases.is_empty(), "{} has no cases", path.display());
    let names = ["ap50", "miou", "miou_strict", "recall", "ss", "s_iou"];
    let mut max_diff = [0.0f64; 6];
    let mut failures = Vec::new();
    let mut ap_sets = 0;
    for (k, case) in cases.iter().enumerate() {
        let images = images_of(case);
        let exp = &case["expected"];
        let got = evaluate_images(&images, &Exact);

        match (exp["ap50"].as_f64(), got.ap50) {
            (None, None) => {}
            (Some(e), Some(g)) => {
                ap_sets += 1;
                let d = (e - g).abs();
                max_diff[0] = max_diff[0].max(d);
                if d > AP_TOL {
                    failures.push(format!("case {k}: ap50 {g} != {e}"));
                }
            }
            (e, g) => failures.push(format!("case {k}: ap50 {g:?} != {e:?}")),
        }
        let values = [got.miou, got.miou_strict, got.recall, got.ss, got.s_iou];
        for (i, (name, g)) in names[1..].iter().zip(values).enumerate() {
            let e = exp[*name].as_f64().expect("expected value");
            let d = (e - g).abs();
            max_diff[i + 1] = max_diff[i + 1].max(d);
            if d > TOL {
                failures.push(format!("case {k}: {name} {g} != {e}"));
            }
        }

        // The single-metric functions agree with evaluate_images.
        assert_eq!(ap50(&images), got.ap50, "case {k}");
        assert_eq!(miou(&images), got.miou, "case {k}");
        assert_eq!(miou_strict(&images), got.miou_strict, "case {k}");
        assert_eq!(recall(&images, &Exact), got.recall, "case {k}");
        assert_eq!(semantic_similarity(&images, &Exact), got.ss, "case {k}");
        assert_eq!(semantic_iou(&images), got.s_iou, "case {k}");
        assert_eq!(got.images, images.len());
        assert_eq!(
            got.gt_masks,
            images.iter().map(|i| i.gt.len()).sum::<usize>()
        );
        assert_eq!(
            got.pred_masks,
            images.iter().map(|i| i.pred.len()).sum::<usize>()
        );
    }
    eprintln!(
        "{}: {} sets ({} with AP50); largest differences: {}",
        path.display(),
        cases.len(),
        ap_sets,
        names
            .iter()
            .zip(max_diff)
            .map(|(n, d)| format!("{n} {d:.1e}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    assert!(
        failures.is_empty(),
        "{}: {} mismatches:\n{}",
        path.display(),
        failures.len(),
        failures.join("\n")
    );
    Summary {
        sets: cases.len(),
        ap_sets,
        max_diff,
    }
}

#[test]
fn checked_in_fixture_matches_the_reference() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/eval/reference_cases.json");
    let s = check_file(&path);
    assert!(s.sets >= 200, "the fixture should hold at least 200 sets");
    assert!(s.ap_sets > s.sets / 2);
    assert!(s.max_diff.iter().all(|d| d.is_finite()));
}

#[test]
fn fresh_cases_from_env_match_the_reference() {
    let Some(path) = std::env::var_os("CALICO_EVAL_CASES") else {
        eprintln!("CALICO_EVAL_CASES not set; nothing to check");
        return;
    };
    check_file(Path::new(&path));
}
