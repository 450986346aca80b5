//! One training step through the real pipeline (samples file → examples →
//! objective → backward): every trainable tensor gets a non-zero gradient,
//! frozen tensors get none, and one AdamW step lowers the loss.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use calico_masks::{CocoRle, Mask, Rle};
use calico_model::calico::{seeded_fill, FillMode};
use calico_model::config::CalicoConfig;
use calico_model::prompt::{PromptFormat, SpecialIds};
use calico_model::tokenizer::CalicoTokenizer;
use calico_train::data;
use calico_train::model::{build_random, Built, TrainableSet};
use calico_train::objective::{batch_loss, LossConfig};
use calico_train::optim::{AdamW, AdamWConfig};
use candle_core::Device;

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("calico-train-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Two 64×64 images with a square "box" (its top half a "lid") and a
/// samples file of both tasks over them.
fn samples(dir: &Path) -> PathBuf {
    let mut lines = Vec::new();
    for (k, (x0, color)) in [(8u32, [200u8, 40, 40]), (24, [40, 160, 60])]
        .iter()
        .enumerate()
    {
        let img = image::RgbImage::from_fn(64, 64, |x, y| {
            if (*x0..x0 + 32).contains(&x) && (16..48).contains(&y) {
                image::Rgb(*color)
            } else {
                image::Rgb([(x * 3) as u8, (y * 3) as u8, 90])
            }
        });
        img.save(dir.join(format!("img{k}.png"))).unwrap();
    }
    let rle = |x0: u32, y1: u32| {
        let m = Mask::from_fn(64, 64, |y, x| {
            (x0..x0 + 32).contains(&x) && (16..y1).contains(&y)
        });
        serde_json::to_value(CocoRle::from_rle(&Rle::encode(&m))).unwrap()
    };
    let images = serde_json::json!([
        {"file": "img0.png", "width": 64, "height": 64},
        {"file": "img1.png", "width": 64, "height": 64}
    ]);
    lines.push(serde_json::json!({
        "id": "s/0", "task": "common_object", "source": "s", "images": images,
        "question": "Can you segment the common object in these images?",
        "answer": "The common object is <p> the box </p> [SEG] (IMAGE1) [SEG] (IMAGE2).",
        "masks": [{"image": 0, "label": "box", "rle": rle(8, 48)}, {"image": 1, "label": "box", "rle": rle(24, 48)}]
    }));
    lines.push(serde_json::json!({
        "id": "s/1", "task": "common_parts", "source": "s", "images": images,
        "question": "Can you segment the common parts of the objects in these images?",
        "answer": "The common part is <p> the lid </p> [SEG] (IMAGE1) [SEG] (IMAGE2).",
        "masks": [{"image": 0, "label": "lid", "rle": rle(8, 32)}, {"image": 1, "label": "lid", "rle": rle(24, 32)}]
    }));
    let path = dir.join("train.jsonl");
    let text: Vec<String> = lines.iter().map(|l| l.to_string()).collect();
    std::fs::write(&path, text.join("\n") + "\n").unwrap();
    path
}

/// The samples in a fresh directory, their tokenizer and prompt format, and
/// a seeded random `tiny` whose every variable has a value (zero-initialised
/// blocks — LoRA B, CAM/CEM outputs — would block the gradient of what
/// feeds them).
fn tiny_on_samples(
    name: &str,
    set: TrainableSet,
    seed: u64,
) -> (
    data::Dataset,
    CalicoTokenizer,
    SpecialIds,
    PromptFormat,
    Built,
) {
    let d = tmp(name);
    let cfg = CalicoConfig::preset("tiny").unwrap();
    let ds = data::open(&samples(&d), &cfg).unwrap();
    let format = PromptFormat::vicuna_v1(cfg.image_tokens());
    let mut tok = CalicoTokenizer::word_level(&data::corpus(&ds.samples, &format)).unwrap();
    let special = tok.add_calico_tokens(None).unwrap();
    let b = build_random(&cfg, special, set, seed, &Device::Cpu).unwrap();
    seeded_fill(&b.vars, seed, FillMode::All).unwrap();
    (ds, tok, special, format, b)
}

#[test]
fn one_step_reaches_exactly_the_trainable_set() {
    let (ds, tok, special, format, b) = tiny_on_samples("one-step", TrainableSet::Paper, 3);
    let examples: Vec<_> = (0..2)
        .map(|i| ds.example(i, i == 1, &tok, &special, &format).unwrap())
        .collect();
    assert_eq!(examples[0].targets.len(), 2);
    let loss_cfg = LossConfig::default();
    let l = batch_loss(&b.model, &examples, &tok, &loss_cfg, None).unwrap();
    assert_eq!(l.masks, 4);
    assert!(l.text > 0.0 && l.focal > 0.0 && l.dice > 0.0);
    let grads = l.total.backward().unwrap();
    let vars = b.vars.data().lock().unwrap().clone();
    let mut zero = Vec::new();
    for (name, var) in &vars {
        match grads.get(var.as_tensor()) {
            Some(g) => {
                let s: f32 = g.abs().unwrap().sum_all().unwrap().to_scalar().unwrap();
                if s == 0.0 {
                    zero.push(name.clone());
                }
            }
            None => zero.push(name.clone()),
        }
    }
    // Single-mask output (LISA's multimask_output=False) reads mask token 0
    // only: the other mask tokens' hypernetworks and the IoU head take no
    // part in the loss, in the reference too.
    let unused = |n: &str| {
        n.contains("iou_prediction_head")
            || (1..4).any(|k| n.contains(&format!("output_hypernetworks_mlps.{k}.")))
    };
    zero.retain(|n| !unused(n));
    assert!(
        zero.is_empty(),
        "trainable tensors without gradient: {zero:?}"
    );
    assert!(vars.keys().any(|n| n.starts_with("model.cem.")));
    assert!(vars.keys().any(|n| n.contains("lora_A")));
    // Frozen tensors are constants: not variables, so no gradient is
    // accumulated for them and the optimizer never sees them (candle may
    // still hold an intermediate gradient for a constant on the path).
    for (name, t) in &b.frozen {
        assert!(!t.is_variable(), "frozen `{name}` is a variable");
        assert!(
            !vars.contains_key(name),
            "frozen `{name}` is in the trainable map"
        );
    }
    assert!(b
        .frozen
        .keys()
        .any(|n| n.starts_with("model.vision_tower.")));

    // One AdamW step on these gradients lowers the loss on the same batch.
    let named: Vec<_> = vars.into_iter().collect();
    let mut opt = AdamW::new(
        named.clone(),
        AdamWConfig {
            lr: 1e-3,
            ..Default::default()
        },
    )
    .unwrap();
    let g: BTreeMap<_, _> = named
        .iter()
        .filter_map(|(n, v)| grads.get(v.as_tensor()).map(|g| (n.clone(), g.clone())))
        .collect();
    opt.step(&g, 1e-3).unwrap();
    let after = batch_loss(&b.model, &examples, &tok, &loss_cfg, None).unwrap();
    let (x, y) = (
        l.total.to_scalar::<f32>().unwrap(),
        after.total.to_scalar::<f32>().unwrap(),
    );
    assert!(y < x, "loss {x} → {y}");
}

#[test]
fn frozen_encoders_are_cut_from_the_backward_pass_and_nothing_else() {
    let (ds, tok, special, format, b) = tiny_on_samples("frozen-global", TrainableSet::All, 5);
    let examples: Vec<_> = (0..2)
        .map(|i| ds.example(i, false, &tok, &special, &format).unwrap())
        .collect();
    let vars = b.vars.data().lock().unwrap().clone();
    let gradients = |global: bool, sam: bool| {
        b.model.set_global_encoders_frozen(global);
        b.model.set_sam_encoder_frozen(sam);
        let l = batch_loss(&b.model, &examples, &tok, &LossConfig::default(), None).unwrap();
        let g = l.total.backward().unwrap();
        let out: BTreeMap<String, Vec<f32>> = vars
            .iter()
            .filter_map(|(n, v)| {
                g.get(v.as_tensor())
                    .map(|t| (n.clone(), t.flatten_all().unwrap().to_vec1().unwrap()))
            })
            .collect();
        out
    };
    let full = gradients(false, false);
    let is_global = |n: &str| {
        calico_train::pretrain::GLOBAL_ENCODERS
            .iter()
            .any(|p| n.starts_with(p))
    };
    let is_sam = |n: &str| n.starts_with(calico_train::pretrain::SAM_ENCODER);
    assert!(full.keys().any(|n| n.starts_with("model.vision_tower.")));
    assert!(full.keys().any(|n| is_sam(n)));
    // The CAMs run the Q-Former (and its query tokens) again on trainable
    // inputs; those passes keep their gradients.
    let cam_path = |n: &str| n.starts_with("model.qformer.") || n.starts_with("model.query_tokens");
    for (global, sam) in [(true, false), (false, true), (true, true)] {
        let cut = gradients(global, sam);
        for (n, g) in &full {
            let held = (global && is_global(n) && !cam_path(n)) || (sam && is_sam(n));
            let touched = (global && is_global(n)) || (sam && is_sam(n));
            if held {
                assert!(!cut.contains_key(n), "frozen `{n}` still got a gradient");
            } else if !touched {
                assert_eq!(cut.get(n), Some(g), "`{n}`'s gradient changed");
            }
        }
    }
    b.model.set_global_encoders_frozen(false);
    b.model.set_sam_encoder_frozen(false);
}
