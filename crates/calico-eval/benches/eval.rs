//! Evaluation speed: 1,000 pairs with ~10 masks per image (both ground
//! truth and predictions), 256×256, scored per task and per source.
//! Embedding is excluded (a precomputed similarity table is used), as in the
//! issue's target (< 1 s).
//!
//! `cargo bench -p calico-eval --bench eval [-- PAIRS]`

use calico_data::{Sample, SampleImage, SampleMask};
use calico_eval::evaluate::{prepare, score, EvalOptions};
use calico_eval::predictions::{PredictedMask, Prediction};
use calico_eval::Similarity;
use calico_masks::{CocoRle, Mask, Rle};
use std::path::Path;
use std::time::Instant;

struct Table;

impl Similarity for Table {
    fn similarity(&self, a: &str, b: &str) -> f64 {
        (calico_text::english::strip_article(a) == calico_text::english::strip_article(b)) as u8
            as f64
    }
}

/// A deterministic pseudo-random rectangle mask.
fn rect(seed: u64, h: u32, w: u32) -> Rle {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut next = |m: u32| {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        (x % m as u64) as u32
    };
    let (y0, x0) = (next(h - 40), next(w - 40));
    let (y1, x1) = (y0 + 10 + next(30), x0 + 10 + next(30));
    Rle::encode(&Mask::from_fn(h, w, |y, x| {
        y >= y0 && y < y1 && x >= x0 && x < x1
    }))
}

fn main() {
    let pairs: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(1000);
    let (h, w) = (256, 256);
    let labels = [
        "leg", "seat", "back", "arm", "wheel", "door", "window", "body", "head", "tail",
    ];
    let tasks = ["common_object", "common_parts", "unique_parts"];
    let sources = ["paco_lvis", "part_image_net", "ade20k_part234"];
    let mut samples = Vec::new();
    let mut preds = Vec::new();
    for k in 0..pairs {
        let id = format!("s/{k}");
        let mut masks = Vec::new();
        let mut pm = Vec::new();
        for image in 0..2 {
            for (j, label) in labels.iter().enumerate() {
                let seed = (k * 100 + image * 10 + j) as u64;
                let gt = rect(seed, h, w);
                masks.push(SampleMask {
                    image,
                    label: label.to_string(),
                    role: None,
                    rle: CocoRle::from_rle(&gt),
                });
                // Half the predictions hit their ground truth, half are elsewhere.
                let p = if j % 2 == 0 {
                    gt
                } else {
                    rect(seed + 7_777_777, h, w)
                };
                pm.push(PredictedMask {
                    image,
                    label: format!("the {label}"),
                    rle: CocoRle::from_rle(&p),
                    score: 1.0 - j as f64 / 20.0,
                });
            }
        }
        let img = SampleImage {
            file: format!("{k}.jpg"),
            width: w,
            height: h,
        };
        samples.push(Sample {
            id: id.clone(),
            task: tasks[k % 3].to_string(),
            source: sources[(k / 3) % 3].to_string(),
            split: Some("test".into()),
            images: vec![img.clone(), img],
            question: String::new(),
            answer: String::new(),
            masks,
        });
        preds.push(Prediction {
            id,
            answer: String::new(),
            masks: pm,
        });
    }
    let t = Instant::now();
    let prepared = prepare(
        Path::new("gt"),
        &samples,
        Path::new("pred"),
        &preds,
        &EvalOptions::default(),
    )
    .expect("prepare");
    let t_prepare = t.elapsed().as_secs_f64();
    let t2 = Instant::now();
    let (overall, by_source) = score(&prepared, &Table);
    let t_score = t2.elapsed().as_secs_f64();
    println!(
        "{}",
        serde_json::json!({
            "pairs": pairs, "images": pairs * 2, "masks_per_image": labels.len(),
            "prepare_s": t_prepare, "score_s": t_score, "total_s": t_prepare + t_score,
            "average_miou": overall.average.miou, "sources": by_source.len(),
        })
    );
}
