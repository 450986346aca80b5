//! Invariants of the whole Calico model on the `tiny` preset with seeded
//! random weights (no checkpoints, no tokenizer file: a byte-level
//! `TextEncoder` stands in for the tokenizer).

mod common;

use common::{layout, max_diff, model, question, randn};

use calico_model::calico::{seeded_fill, FillMode, ImageInput, TrainBatch};
use calico_model::config::CalicoConfig;
use calico_model::count::param_counts;
use calico_model::llama::{GenerateOptions, Sampling};
use calico_model::prompt::{ByteText, TextEncoder};
use candle_core::{DType, Device, Tensor};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

fn tiny() -> CalicoConfig {
    CalicoConfig::preset("tiny").unwrap()
}

fn image(seed: u64) -> ImageInput {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    ImageInput {
        clip: randn(&[3, 56, 56], &mut rng),
        dino: randn(&[3, 56, 56], &mut rng),
        sam: randn(&[3, 128, 128], &mut rng),
        sam_resized: (128, 96),
        original: (100, 75),
    }
}

fn batch(cfg: &CalicoConfig, answer: &str, images: Vec<ImageInput>) -> TrainBatch {
    TrainBatch {
        layouts: vec![layout(cfg, answer)],
        images: vec![images],
    }
}

const TWO_SEGS: &str =
    "The chair: <p> a seat </p> [SEG] (IMAGE1) and <p> a seat </p> [SEG] (IMAGE2).";

#[test]
fn zero_initialised_cam_equals_no_cam() {
    let cfg = tiny();
    let mut no_cam = tiny();
    no_cam.ablation.use_cam = false;
    let (with, _, _) = model(&cfg, 7);
    let (without, _, _) = model(&no_cam, 7);
    let b = batch(&cfg, TWO_SEGS, vec![image(1), image(2)]);
    let a = with.forward(&b, &ByteText, None).unwrap();
    let c = without.forward(&b, &ByteText, None).unwrap();
    assert_eq!(max_diff(&a.logits, &c.logits), 0.0);
    assert_eq!(a.mask_logits[0].len(), 2);
    for (x, y) in a.mask_logits[0].iter().zip(&c.mask_logits[0]) {
        assert_eq!(max_diff(x, y), 0.0);
    }
}

#[test]
fn swapping_images_permutes_the_per_image_masks() {
    let cfg = tiny();
    let (m, map, _) = model(&cfg, 3);
    // Make f_segmentation ignore its input, so every [SEG] gets the same
    // prompt and a mask depends only on the image it is routed to.
    {
        let data = map.data().lock().unwrap();
        let w = &data["model.text_hidden_fcs.0.0.weight"];
        w.set(&w.as_tensor().zeros_like().unwrap()).unwrap();
    }
    let (a, b) = (image(1), image(2));
    let run = |imgs: Vec<ImageInput>, answer: &str| {
        m.forward(&batch(&cfg, answer, imgs), &ByteText, None)
            .unwrap()
            .mask_logits
            .remove(0)
    };
    let swapped_tags = TWO_SEGS
        .replace("(IMAGE1)", "(IMAGEx)")
        .replace("(IMAGE2)", "(IMAGE1)")
        .replace("(IMAGEx)", "(IMAGE2)");
    let ab = run(vec![a.clone(), b.clone()], TWO_SEGS); // [A, B]
    let ba = run(vec![b.clone(), a.clone()], TWO_SEGS); // [B, A]
    let ba_tags = run(vec![b, a], &swapped_tags); // [A, B]
    assert!(
        max_diff(&ab[0], &ab[1]) > 1e-3,
        "the two images' masks differ"
    );
    assert!(max_diff(&ab[0], &ba[1]) < 1e-5 && max_diff(&ab[1], &ba[0]) < 1e-5);
    assert!(max_diff(&ab[0], &ba_tags[0]) < 1e-5 && max_diff(&ab[1], &ba_tags[1]) < 1e-5);
}

#[test]
fn a_seg_tagged_image2_reads_image2s_sam_features() {
    let cfg = tiny();
    let (m, _, _) = model(&cfg, 5);
    let (a, b) = (image(1), image(2));
    let mut b2 = b.clone();
    b2.sam = image(9).sam; // same LLM input, other SAM features
    let mut a2 = a.clone();
    a2.sam = image(8).sam;
    let one = "Here: <p> it </p> [SEG] (IMAGE2).";
    let run = |imgs: Vec<ImageInput>, answer: &str| {
        m.forward(&batch(&cfg, answer, imgs), &ByteText, None)
            .unwrap()
    };
    let base = run(vec![a.clone(), b.clone()], one);
    assert_eq!(base.seg_routes[0].len(), 1);
    assert_eq!(base.seg_routes[0][0].image, 1);
    let other2 = run(vec![a.clone(), b2.clone()], one);
    let other1 = run(vec![a2, b.clone()], one);
    assert_eq!(max_diff(&base.logits, &other2.logits), 0.0);
    assert!(max_diff(&base.mask_logits[0][0], &other2.mask_logits[0][0]) > 1e-4);
    assert_eq!(
        max_diff(&base.mask_logits[0][0], &other1.mask_logits[0][0]),
        0.0
    );
    // With two [SEG]s, changing image 2's SAM view changes only the second.
    let two = run(vec![a.clone(), b], TWO_SEGS);
    let two2 = run(vec![a, b2], TWO_SEGS);
    assert_eq!(
        max_diff(&two.mask_logits[0][0], &two2.mask_logits[0][0]),
        0.0
    );
    assert!(max_diff(&two.mask_logits[0][1], &two2.mask_logits[0][1]) > 1e-4);
}

#[test]
fn one_mask_per_routed_seg_and_padding_is_invisible() {
    let cfg = tiny();
    let (m, _, _) = model(&cfg, 11);
    let long = "<p> legs </p> [SEG] (IMAGE1), <p> a seat </p> [SEG] (IMAGE2) and <p> a back </p> [SEG] (IMAGE1).";
    let short = "<p> it </p> [SEG] (IMAGE2).";
    let imgs = || vec![image(1), image(2)];
    let both = TrainBatch {
        layouts: vec![layout(&cfg, long), layout(&cfg, short)],
        images: vec![imgs(), imgs()],
    };
    let out = m.forward(&both, &ByteText, None).unwrap();
    let t0 = both.layouts[0].input_ids.len();
    let t1 = both.layouts[1].input_ids.len();
    assert!(t0 > t1);
    assert_eq!(out.logits.dims(), &[2, t0, cfg.llm.vocab_size]);
    assert_eq!(out.mask_logits[0].len(), 3);
    assert_eq!(out.mask_logits[1].len(), 1);
    let images: Vec<usize> = out.seg_routes[0].iter().map(|r| r.image).collect();
    assert_eq!(images, vec![0, 1, 0]);
    let g = 4 * cfg.sam_encoder.grid_size();
    for m in out.mask_logits.iter().flatten() {
        assert_eq!(m.dims(), &[1, g, g]);
    }
    // The padded row equals the row run alone.
    let alone = m
        .forward(&batch(&cfg, short, imgs()), &ByteText, None)
        .unwrap();
    let padded_row = out.logits.get(1).unwrap().narrow(0, 0, t1).unwrap();
    assert!(max_diff(&padded_row, &alone.logits.get(0).unwrap()) < 1e-4);
    assert!(max_diff(&out.mask_logits[1][0], &alone.mask_logits[0][0]) < 1e-4);
}

#[test]
fn gradients_reach_exactly_the_trainable_tensors() {
    let cfg = tiny();
    let (m, map, frozen) = model(&cfg, 13);
    // Zero-initialised modules (CAM, CEM output, LoRA B) pass no gradient
    // to the tensors before them; give them values.
    seeded_fill(&map, 21, FillMode::All).unwrap();
    let out = m
        .forward(
            &batch(&cfg, TWO_SEGS, vec![image(1), image(2)]),
            &ByteText,
            None,
        )
        .unwrap();
    let mut loss = out.logits.sqr().unwrap().mean_all().unwrap();
    for mask in out.mask_logits.iter().flatten() {
        loss = (loss + mask.sqr().unwrap().mean_all().unwrap()).unwrap();
    }
    let grads = loss.backward().unwrap();
    let data = map.data().lock().unwrap();
    let mut trainable = 0usize;
    for (name, var) in data.iter() {
        assert!(
            calico_model::calico::is_trainable_name(name),
            "{name} is a variable"
        );
        trainable += var.elem_count();
        // Unused by the single-mask text path (as in LISA/GLaMM): the other
        // mask tokens' hypernetworks and the IoU head.
        let unused = name.contains("iou_prediction_head")
            || ["1", "2", "3"]
                .iter()
                .any(|k| name.contains(&format!("output_hypernetworks_mlps.{k}.")));
        let g = grads.get(var.as_tensor());
        let norm = g
            .map(|g| {
                g.abs()
                    .unwrap()
                    .sum_all()
                    .unwrap()
                    .to_scalar::<f32>()
                    .unwrap()
            })
            .unwrap_or(0.0);
        if unused {
            assert_eq!(norm, 0.0, "{name} should get no gradient");
        } else {
            assert!(norm > 0.0, "{name} gets no gradient");
        }
    }
    assert_eq!(trainable as u64, param_counts(&cfg).trainable());
    assert!(!frozen.is_empty());
    for (name, t) in &frozen {
        assert!(!calico_model::calico::is_trainable_name(name), "{name}");
        // Candle also computes gradients for plain operands of tracked ops
        // (e.g. `query_tokens` in q + f_adaptation(t)); what keeps a tensor
        // frozen is that it is no variable, so no optimiser can update it.
        assert!(!t.is_variable(), "{name} is a variable");
        assert!(!data.contains_key(name), "{name} is in the VarMap");
    }
}

#[test]
fn generate_runs_end_to_end() {
    let cfg = tiny();
    let (m, _, _) = model(&cfg, 17);
    let imgs = vec![image(1), image(2)];
    let q = question();
    let opts = GenerateOptions {
        max_new_tokens: 6,
        eos: vec![],
        sampling: Sampling::Greedy,
    };
    let ans = m.generate(&q, &imgs, &ByteText, &opts, None).unwrap();
    assert!(!ans.token_ids.is_empty() && ans.token_ids.len() <= 6);
    let segs = ans
        .token_ids
        .iter()
        .filter(|&&t| t == ByteText::SPECIAL_IDS.seg)
        .count();
    assert_eq!(ans.masks.len() + ans.unrouted.len(), segs);
    let sampled = GenerateOptions {
        sampling: Sampling::Sample {
            temperature: 0.8,
            top_p: 0.9,
            top_k: None,
        },
        ..opts
    };
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let s = m
        .generate(&q, &imgs, &ByteText, &sampled, Some(&mut rng))
        .unwrap();
    assert!(!s.token_ids.is_empty());

    // The mask half with a forced answer containing a routed [SEG].
    let layout = m.prompt(&q, 2, &ByteText).unwrap();
    let mut ids = vec![ByteText::SPECIAL_IDS.p_open];
    ids.extend(ByteText.encode_plain(" a cat "));
    ids.extend([ByteText::SPECIAL_IDS.p_close, ByteText::SPECIAL_IDS.seg]);
    ids.extend(ByteText.encode_plain(" (IMAGE2) and "));
    ids.push(ByteText::SPECIAL_IDS.seg);
    ids.push(ByteText::SPECIAL_IDS.eos);
    let refs: Vec<&ImageInput> = imgs.iter().collect();
    let enc = m.encode_images(&refs).unwrap();
    let ans = m
        .answer_from_ids(&layout, &ids, &imgs, &enc, &ByteText)
        .unwrap();
    assert_eq!(ans.masks.len(), 1);
    assert_eq!(ans.unrouted.len(), 1);
    let mk = &ans.masks[0];
    assert_eq!(mk.image, 1);
    assert_eq!(mk.phrase.as_deref(), Some("a cat"));
    assert_eq!(mk.mask.dims(), &[100, 75]);
    assert_eq!(mk.mask.dtype(), DType::U8);
    assert_eq!(ans.text, "<p> a cat </p>[SEG] (IMAGE2) and [SEG]");
}

#[test]
fn answers_keep_no_graph_of_a_model_holding_variables() {
    // A model holding its trainable tensors as variables (as training
    // does) makes tracked results: each keeps the inputs of every op that
    // made it alive. What an answer hands back, and the features it keeps
    // while decoding, are cut loose from that graph; the values stay.
    let cfg = tiny();
    let (m, _, _) = model(&cfg, 23);
    let imgs = [image(1), image(2)];
    let refs: Vec<&ImageInput> = imgs.iter().collect();
    let enc = m.encode_images(&refs).unwrap();
    // f_image is trainable; SAM's encoder is frozen here.
    assert!(enc[0].visual_tokens.track_op());
    let cut = enc[0].detach();
    for (a, b) in [
        (&enc[0].visual_tokens, &cut.visual_tokens),
        (&enc[0].x_global_prime, &cut.x_global_prime),
        (&enc[0].sam_embeddings, &cut.sam_embeddings),
    ] {
        assert!(!b.track_op());
        assert_eq!(max_diff(a, b), 0.0);
    }
    let layout = m.prompt(&question(), 2, &ByteText).unwrap();
    let mut ids = vec![ByteText::SPECIAL_IDS.p_open];
    ids.extend(ByteText.encode_plain(" a cat "));
    ids.extend([ByteText::SPECIAL_IDS.p_close, ByteText::SPECIAL_IDS.seg]);
    ids.extend(ByteText.encode_plain(" (IMAGE1)"));
    let ans = m
        .answer_from_ids(&layout, &ids, &imgs, &enc, &ByteText)
        .unwrap();
    assert_eq!(ans.masks.len(), 1);
    assert!(!ans.masks[0].logits.track_op());
}

#[test]
fn prompts_longer_than_the_context_are_refused() {
    let cfg = tiny();
    let (m, _, _) = model(&cfg, 19);
    let q = question() + &" very".repeat(200);
    let opts = GenerateOptions {
        max_new_tokens: 4,
        eos: vec![],
        sampling: Sampling::Greedy,
    };
    let e = m
        .generate(&q, &[image(1), image(2)], &ByteText, &opts, None)
        .unwrap_err()
        .to_string();
    assert!(e.contains("context holds 512"), "{e}");
}

#[test]
fn non_zero_cams_change_what_follows_the_images() {
    // CAMs before layers 0 and 2 with non-zero weights change the logits.
    let mut cfg = tiny();
    cfg.cam.layers = vec![0, 2];
    let (m, map, _) = model(&cfg, 23);
    let b = batch(&cfg, TWO_SEGS, vec![image(1), image(2)]);
    let before = m.forward(&b, &ByteText, None).unwrap();
    seeded_fill(&map, 5, FillMode::All).unwrap();
    let after = m.forward(&b, &ByteText, None).unwrap();
    // Tokens before the first image are unaffected (causal attention).
    let first = b.layouts[0].image_spans[0].start;
    let head = |o: &calico_model::calico::ForwardOutput| o.logits.narrow(1, 0, first).unwrap();
    assert!(max_diff(&head(&before), &head(&after)) > 0.0); // LoRA moved too
                                                            // Only the CAMs non-zero: the text before the first image is unchanged,
                                                            // the rest changes.
    let (m2, map2, _) = model(&cfg, 23);
    {
        let data = map2.data().lock().unwrap();
        for (name, var) in data.iter() {
            if name.starts_with("model.cam.") {
                let t = var.as_tensor();
                let v = Tensor::full(0.01f32, t.dims(), &Device::Cpu).unwrap();
                var.set(&v).unwrap();
            }
        }
    }
    let with_cam = m2.forward(&b, &ByteText, None).unwrap();
    assert_eq!(max_diff(&head(&before), &head(&with_cam)), 0.0);
    assert!(max_diff(&before.logits, &with_cam.logits) > 1e-4);
}

#[test]
fn ablations_build_and_run() {
    for edit in [
        |c: &mut CalicoConfig| {
            c.ablation.use_qformer = false;
            c.ablation.use_cam = false;
        },
        |c: &mut CalicoConfig| {
            c.ablation.use_dino = false;
            c.ablation.use_cem = false;
        },
        |c: &mut CalicoConfig| c.ablation.use_cem = false,
    ] {
        let mut cfg = tiny();
        edit(&mut cfg);
        let (m, map, _) = model(&cfg, 29);
        let out = m
            .forward(
                &batch(&cfg, TWO_SEGS, vec![image(1), image(2)]),
                &ByteText,
                None,
            )
            .unwrap();
        assert_eq!(out.mask_logits[0].len(), 2);
        let n: usize = map.all_vars().iter().map(|v| v.elem_count()).sum();
        assert_eq!(
            n as u64,
            param_counts(&cfg).trainable(),
            "{:?}",
            cfg.ablation
        );
    }
}

#[test]
fn cached_frozen_features_give_the_same_outputs() {
    use calico_model::calico::cache::FeatureCache;
    use std::sync::Arc;
    let cfg = tiny();
    let (plain, _, _) = model(&cfg, 7);
    let mut cached = plain.clone();
    let dir = std::env::temp_dir().join(format!("calico-feature-cache-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let cache = Arc::new(FeatureCache::on_disk(&dir).unwrap());
    cached.set_feature_cache(Some(cache.clone())).unwrap();
    let b = batch(&cfg, TWO_SEGS, vec![image(1), image(2)]);
    let want = plain.forward(&b, &ByteText, None).unwrap();
    for round in 0..2 {
        let got = cached.forward(&b, &ByteText, None).unwrap();
        assert!(max_diff(&want.logits, &got.logits) < 1e-6, "round {round}");
        for (x, y) in want.mask_logits[0].iter().zip(&got.mask_logits[0]) {
            assert!(max_diff(x, y) < 1e-6);
        }
    }
    assert_eq!(cache.stats(), (2, 2), "two misses, then two hits");
    // A fresh cache over the same directory reads the files.
    let again = Arc::new(FeatureCache::on_disk(&dir).unwrap());
    cached.set_feature_cache(Some(again.clone())).unwrap();
    let got = cached.forward(&b, &ByteText, None).unwrap();
    assert!(max_diff(&want.logits, &got.logits) < 1e-6);
    assert_eq!(again.stats(), (2, 0));
    // Another image is another key.
    let other = batch(&cfg, TWO_SEGS, vec![image(3), image(2)]);
    cached.forward(&other, &ByteText, None).unwrap();
    assert_eq!(again.stats(), (3, 1));
    // Other weights of the same config share the directory without
    // reading the first model's features.
    let (mut other_weights, _, _) = model(&cfg, 8);
    let want = other_weights.forward(&b, &ByteText, None).unwrap();
    let third = Arc::new(FeatureCache::on_disk(&dir).unwrap());
    other_weights
        .set_feature_cache(Some(third.clone()))
        .unwrap();
    let got = other_weights.forward(&b, &ByteText, None).unwrap();
    assert!(max_diff(&want.logits, &got.logits) < 1e-6);
    assert_eq!(
        third.stats(),
        (0, 2),
        "the first weights' entries are not hits"
    );
}
