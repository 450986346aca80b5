//! `calico eval` end to end: perfect predictions score 100, missing ones are
//! reported, bad predictions are errors naming the sample (or skipped with
//! --lenient).

mod common;

use common::{build, calico, tmp};
use std::path::{Path, PathBuf};
use std::process::Output;

/// SynthParts → build; returns the train split.
fn ground_truth(d: &Path) -> PathBuf {
    let synth = common::synth(d, 40);
    let out = d.join("build");
    assert!(build(&synth, &out, &[]).status.success());
    out.join("train.jsonl")
}

/// Predictions equal to the ground truth (phrases with an article).
fn oracle(
    gt: &Path,
    out: &Path,
    keep: impl Fn(usize) -> bool,
    edit: impl Fn(&mut serde_json::Value),
) {
    let mut lines = String::new();
    for (k, line) in std::fs::read_to_string(gt).unwrap().lines().enumerate() {
        if !keep(k) {
            continue;
        }
        let s: serde_json::Value = serde_json::from_str(line).unwrap();
        let masks: Vec<serde_json::Value> = s["masks"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| {
                serde_json::json!({"image": m["image"], "label": format!("the {}", m["label"].as_str().unwrap()),
                                   "rle": m["rle"], "score": 1.0})
            })
            .collect();
        let mut p = serde_json::json!({"id": s["id"], "answer": s["answer"], "masks": masks});
        if k == 0 {
            edit(&mut p);
        }
        lines.push_str(&p.to_string());
        lines.push('\n');
    }
    std::fs::write(out, lines).unwrap();
}

fn eval(gt: &Path, pred: &Path, extra: &[&str]) -> Output {
    let mut args = vec![
        "eval",
        "--ground-truth",
        gt.to_str().unwrap(),
        "--predictions",
        pred.to_str().unwrap(),
        "--similarity",
        "exact",
    ];
    args.extend_from_slice(extra);
    calico(&args)
}

#[test]
fn perfect_predictions_score_100_and_reports_are_written() {
    let d = tmp("perfect");
    let gt = ground_truth(&d);
    let pred = d.join("pred.jsonl");
    oracle(&gt, &pred, |_| true, |_| {});
    let (json, html) = (d.join("r.json"), d.join("r.html"));
    let o = eval(
        &gt,
        &pred,
        &[
            "--out",
            json.to_str().unwrap(),
            "--html",
            html.to_str().unwrap(),
        ],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let r: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    for task in ["common_object", "common_parts", "unique_parts"] {
        let s = &r["overall"]["tasks"][task];
        for m in ["miou", "recall", "ss", "s_iou", "miou_strict"] {
            assert!(
                (s[m].as_f64().unwrap() - 100.0).abs() < 1e-9,
                "{task} {m}: {s}"
            );
        }
        assert!(
            (s["ap50"].as_f64().unwrap() - 100.0).abs() < 1e-6,
            "{task}: {s}"
        );
    }
    assert!(std::fs::read_to_string(&html).unwrap().contains("<table>"));
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(
        text.contains("Common Parts") && text.contains("Average"),
        "{text}"
    );
}

#[test]
fn missing_predictions_count_as_empty() {
    let d = tmp("missing");
    let gt = ground_truth(&d);
    let pred = d.join("pred.jsonl");
    oracle(&gt, &pred, |k| k % 2 == 0, |_| {});
    let json = d.join("r.json");
    let o = eval(&gt, &pred, &["--out", json.to_str().unwrap()]);
    assert!(o.status.success());
    let r: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert!(!r["missing_predictions"].as_array().unwrap().is_empty());
    let recall = r["overall"]["average"]["recall"].as_f64().unwrap();
    assert!(recall < 90.0 && recall > 10.0, "{recall}");
}

/// A change made to the first prediction.
type Edit = fn(&mut serde_json::Value);

#[test]
fn bad_predictions_name_the_sample_or_are_skipped_with_lenient() {
    let d = tmp("bad");
    let gt = ground_truth(&d);
    let cases: [(&str, Edit); 4] = [
        ("no ground-truth sample", |p| p["id"] = "nope/1".into()),
        ("is 3×3", |p| {
            p["masks"][0]["rle"] = serde_json::json!({"size": [3, 3], "counts": "9"})
        }),
        ("invalid RLE", |p| {
            p["masks"][0]["rle"]["counts"] = "1P".into()
        }),
        ("image 5 does not exist", |p| {
            p["masks"][0]["image"] = 5.into()
        }),
    ];
    for (k, (expect, edit)) in cases.into_iter().enumerate() {
        let pred = d.join(format!("pred{k}.jsonl"));
        oracle(&gt, &pred, |_| true, edit);
        let o = eval(&gt, &pred, &[]);
        let err = String::from_utf8_lossy(&o.stderr).into_owned();
        assert_eq!(o.status.code(), Some(2), "{expect}: {err}");
        assert!(
            err.contains(expect) && err.contains("pred"),
            "{expect}: {err}"
        );
        let o = eval(&gt, &pred, &["--lenient"]);
        assert!(
            o.status.success(),
            "{expect}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        assert!(
            String::from_utf8_lossy(&o.stdout).contains("1 skipped"),
            "{expect}"
        );
    }
    // A NaN score is not valid JSON: the line is named.
    let pred = d.join("nan.jsonl");
    oracle(&gt, &pred, |_| true, |_| {});
    let text =
        std::fs::read_to_string(&pred)
            .unwrap()
            .replacen("\"score\":1.0", "\"score\":NaN", 1);
    std::fs::write(&pred, text).unwrap();
    let o = eval(&gt, &pred, &[]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("line 1"));
}
