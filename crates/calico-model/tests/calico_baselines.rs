//! The baselines' shapes (Table 4: Multi-Image LISA and Multi-Image GLaMM)
//! on a tiny config with seeded random weights: a frozen CLIP tower
//! (32 wide, 2 blocks, 28 px, patch 14 → 4 tokens per image) and a frozen
//! `mm_projector`, with the LLM, LoRA and SAM path of `tiny`.

mod common;

use common::{layout, max_diff, model, question, randn};

use calico_model::calico::{is_trainable_name, ImageInput, TrainBatch};
use calico_model::config::{CalicoConfig, VisionKind};
use calico_model::count::param_counts;
use calico_model::llama::{GenerateOptions, Sampling};
use calico_model::preprocess::{ClipView, View, CLIP_MEAN, CLIP_STD};
use calico_model::prompt::{ByteText, TextEncoder};
use candle_core::{DType, Device, Tensor};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

const BASELINES: [VisionKind; 2] = [VisionKind::MultiImageLisa, VisionKind::MultiImageGlamm];
const CLIP_SIDE: usize = 28;

/// `tiny` with the baseline's vision path and a 28 px CLIP tower.
fn tiny(kind: VisionKind) -> CalicoConfig {
    let mut c = CalicoConfig::preset("tiny").unwrap();
    c.clip.image_size = Some(CLIP_SIDE);
    let c = c.with_vision(kind);
    // Round trip through JSON: the edited config is a valid config file.
    let text = serde_json::to_string(&c).unwrap();
    CalicoConfig::from_json_str(&text, "tiny baseline").unwrap()
}

/// A baseline image: the CLIP view at the tower's side; the DINOv2 view is
/// not read (an empty tensor).
fn image(seed: u64) -> ImageInput {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    ImageInput {
        clip: randn(&[3, CLIP_SIDE, CLIP_SIDE], &mut rng),
        dino: Tensor::zeros(0, DType::F32, &Device::Cpu).unwrap(),
        sam: randn(&[3, 128, 128], &mut rng),
        sam_resized: (128, 96),
        original: (100, 75),
    }
}

const TWO_SEGS: &str =
    "The chair: <p> a seat </p> [SEG] (IMAGE1) and <p> a seat </p> [SEG] (IMAGE2).";

#[test]
fn baseline_configs_have_the_papers_token_counts() {
    let paper = CalicoConfig::preset("paper").unwrap();
    for (kind, side, tokens) in [
        (VisionKind::MultiImageLisa, 224, 256),
        (VisionKind::MultiImageGlamm, 336, 576),
    ] {
        let c = paper.with_vision(kind);
        c.validate().unwrap();
        assert_eq!(c.image_tokens(), tokens);
        let tower = c.clip_tower().unwrap();
        assert_eq!((tower.image_size, tower.num_patches()), (side, tokens));
        assert_eq!((tower.select_layer, tower.hidden_size), (-2, 1024));
        assert_eq!(
            c.views.clip,
            View::Clip(ClipView::new(side, CLIP_MEAN, CLIP_STD))
        );
        // Back to Calico: the EVA view again.
        assert_eq!(c.with_vision(VisionKind::Calico), paper);
    }
    assert!(paper.clip_tower().is_none());
    for kind in BASELINES {
        assert_eq!(tiny(kind).image_tokens(), 4);
    }
}

#[test]
fn a_clip_view_of_the_wrong_size_is_refused() {
    let mut c = tiny(VisionKind::MultiImageLisa);
    c.views.clip = View::Clip(ClipView::new(56, CLIP_MEAN, CLIP_STD));
    let e = c.validate().unwrap_err();
    assert!(
        e.contains("views.clip gives 56x56") && e.contains("28x28"),
        "{e}"
    );
    let mut c = tiny(VisionKind::MultiImageGlamm);
    c.clip.num_attention_heads = 5;
    let e = c.validate().unwrap_err();
    assert!(e.contains("clip.hidden_size 32"), "{e}");
    // At run time: an image in the EVA view's size.
    let cfg = tiny(VisionKind::MultiImageLisa);
    let (m, _, _) = model(&cfg, 1);
    let mut img = image(1);
    img.clip = Tensor::zeros((3, 56, 56), DType::F32, &Device::Cpu).unwrap();
    let e = m.encode_images(&[&img]).unwrap_err().to_string();
    assert!(e.contains("CLIP view must be (3, 28, 28)"), "{e}");
}

#[test]
fn baselines_build_with_llava_names_and_frozen_projectors() {
    for kind in BASELINES {
        let cfg = tiny(kind);
        let (_, map, frozen) = model(&cfg, 3);
        let tower = "model.vision_tower.vision_tower.vision_model.";
        for name in [
            "embeddings.class_embedding",
            "embeddings.patch_embedding.weight",
            "embeddings.position_embedding.weight",
            "pre_layrnorm.weight",
            "encoder.layers.1.mlp.fc2.bias",
            "post_layernorm.bias",
        ] {
            assert!(frozen.contains_key(&format!("{tower}{name}")), "{name}");
        }
        let proj: &[&str] = match kind {
            VisionKind::MultiImageLisa => &["model.mm_projector.weight", "model.mm_projector.bias"],
            _ => &[
                "model.mm_projector.0.weight",
                "model.mm_projector.0.bias",
                "model.mm_projector.2.weight",
                "model.mm_projector.2.bias",
            ],
        };
        for p in proj {
            assert!(frozen.contains_key(*p), "{p}");
        }
        assert_eq!(
            frozen
                .keys()
                .filter(|k| k.starts_with("model.mm_projector."))
                .count(),
            proj.len()
        );
        let pos = &frozen[&format!("{tower}embeddings.position_embedding.weight")];
        assert_eq!(pos.dims(), &[5, 32]);
        // Nothing of Calico's own vision path.
        let data = map.data().lock().unwrap();
        for name in frozen.keys().chain(data.keys()) {
            for absent in [
                "model.qformer.",
                "model.query_tokens",
                "model.dinov2.",
                "model.cem.",
                "model.cam.",
                "model.f_image.",
                "model.vision_tower.embeddings.",
            ] {
                assert!(!name.starts_with(absent), "{kind:?} built {name}");
            }
        }
        for name in data.keys() {
            assert!(is_trainable_name(name), "{name}");
        }
        for name in frozen.keys() {
            assert!(!is_trainable_name(name), "{name}");
        }
    }
}

#[test]
fn trainable_and_total_counts_equal_count_rs() {
    for kind in BASELINES {
        let cfg = tiny(kind);
        let (_, map, frozen) = model(&cfg, 4);
        let trainable: u64 = map.all_vars().iter().map(|v| v.elem_count() as u64).sum();
        let counts = param_counts(&cfg);
        assert_eq!(trainable, counts.trainable(), "{kind:?}");
        let frozen_n: u64 = frozen.values().map(|t| t.elem_count() as u64).sum();
        assert_eq!(trainable + frozen_n, counts.total(), "{kind:?}");
        let clip: u64 = frozen
            .iter()
            .filter(|(k, _)| k.starts_with("model.vision_tower.vision_tower."))
            .map(|(_, t)| t.elem_count() as u64)
            .sum();
        assert_eq!(clip, counts.get("clip_vit").unwrap());
        let proj: u64 = frozen
            .iter()
            .filter(|(k, _)| k.starts_with("model.mm_projector."))
            .map(|(_, t)| t.elem_count() as u64)
            .sum();
        assert_eq!(proj, counts.get("mm_projector").unwrap());
    }
}

#[test]
fn forward_routes_masks_per_image() {
    for kind in BASELINES {
        let cfg = tiny(kind);
        let (m, _, _) = model(&cfg, 5);
        let l = layout(&cfg, TWO_SEGS);
        assert_eq!(l.image_spans.len(), 2);
        for s in &l.image_spans {
            assert_eq!(s.len(), 4, "{kind:?}");
        }
        let enc = m.encode_images(&[&image(1), &image(2)]).unwrap();
        for e in &enc {
            assert_eq!(e.visual_tokens.dims(), &[4, 64]);
            assert_eq!(e.x_global_prime.dims(), &[1, 4, 32]);
        }
        let b = TrainBatch {
            layouts: vec![l.clone()],
            images: vec![vec![image(1), image(2)]],
        };
        let out = m.forward(&b, &ByteText, None).unwrap();
        assert_eq!(out.logits.dims(), &[1, l.input_ids.len(), 512]);
        let routes: Vec<usize> = out.seg_routes[0].iter().map(|r| r.image).collect();
        assert_eq!(routes, [0, 1]);
        assert_eq!(out.mask_logits[0].len(), 2);
        for mk in &out.mask_logits[0] {
            assert_eq!(mk.dims(), &[1, 64, 64]);
        }
        // Swapping the images swaps the masks (each [SEG] reads its image).
        let swapped = TrainBatch {
            layouts: vec![l],
            images: vec![vec![image(2), image(1)]],
        };
        let s = m.forward(&swapped, &ByteText, None).unwrap();
        // Same phrase for both [SEG]s, but different positions; each mask
        // depends on its own image's SAM embedding, so it changes.
        assert!(max_diff(&out.mask_logits[0][0], &s.mask_logits[0][0]) > 0.0);
        // The image tokens reach the LLM: logits after the first image move.
        let first = b.layouts[0].image_spans[0].start;
        let t = out.logits.dim(1).unwrap();
        let tail =
            |o: &calico_model::calico::ForwardOutput| o.logits.narrow(1, first, t - first).unwrap();
        assert!(max_diff(&tail(&out), &tail(&s)) > 0.0);
        let head = |o: &calico_model::calico::ForwardOutput| o.logits.narrow(1, 0, first).unwrap();
        assert_eq!(max_diff(&head(&out), &head(&s)), 0.0);
    }
}

#[test]
fn glamm_and_lisa_projectors_differ() {
    // Same seed, same tower names: only the projector differs, so the
    // visual tokens do.
    let (lisa, _, _) = model(&tiny(VisionKind::MultiImageLisa), 9);
    let (glamm, _, _) = model(&tiny(VisionKind::MultiImageGlamm), 9);
    let a = lisa.encode_images(&[&image(3)]).unwrap();
    let b = glamm.encode_images(&[&image(3)]).unwrap();
    assert_eq!(max_diff(&a[0].x_global_prime, &b[0].x_global_prime), 0.0);
    assert!(max_diff(&a[0].visual_tokens, &b[0].visual_tokens) > 0.0);
}

#[test]
fn generate_runs_end_to_end() {
    for kind in BASELINES {
        let cfg = tiny(kind);
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

        // The mask half with a forced answer: one [SEG] routed to image 2.
        let layout = m.prompt(&q, 2, &ByteText).unwrap();
        for s in &layout.image_spans {
            assert_eq!(s.len(), 4);
        }
        let mut ids = vec![ByteText::SPECIAL_IDS.p_open];
        ids.extend(ByteText.encode_plain(" a cat "));
        ids.extend([ByteText::SPECIAL_IDS.p_close, ByteText::SPECIAL_IDS.seg]);
        ids.extend(ByteText.encode_plain(" (IMAGE2)."));
        ids.push(ByteText::SPECIAL_IDS.eos);
        let refs: Vec<&ImageInput> = imgs.iter().collect();
        let enc = m.encode_images(&refs).unwrap();
        let ans = m
            .answer_from_ids(&layout, &ids, &imgs, &enc, &ByteText)
            .unwrap();
        assert_eq!(ans.masks.len(), 1);
        assert_eq!(ans.masks[0].image, 1);
        assert_eq!(ans.masks[0].phrase.as_deref(), Some("a cat"));
        assert_eq!(ans.masks[0].mask.dims(), &[100, 75]);
    }
}
