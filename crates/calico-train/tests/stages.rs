//! Staged training: stage 1 (`vision_pretrain`) updates the global
//! encoders and nothing else, stage 1b (`mask_pretrain`) SAM and nothing
//! else, `freeze` holds variables still through the paper's recipe, and
//! micro-batches computed on several threads give the same run as on one.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use calico_eval::ExactMatch;
use calico_masks::{CocoRle, Mask, Rle};
use calico_model::config::CalicoConfig;
use calico_model::prompt::PromptFormat;
use calico_model::tokenizer::CalicoTokenizer;
use calico_train::checkpoint::load_checkpoint;
use calico_train::config::{FreezeStage, TrainConfig};
use calico_train::data;
use calico_train::mask_pretrain::{pretrain_masks, MaskPretrain, SAM};
use calico_train::model::{build_random, TrainableSet};
use calico_train::pretrain::{
    image_labels, pretrain_vision, VisionPretrain, GLOBAL_ENCODERS, SAM_ENCODER,
};
use calico_train::stage_checkpoint::{Stage, StageCheckpoints, StageRun};
use calico_train::trainer::{train, Quiet, RunSpec};
use candle_core::{Device, Tensor};

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("calico-stages-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Four 64×64 images — two with a red "box", two with a green "ball" — and
/// common-object samples pairing them, with object-role masks.
fn samples(dir: &Path) -> PathBuf {
    let shapes = [
        ("box", [200u8, 40, 40], 8u32),
        ("box", [190, 50, 30], 20),
        ("ball", [40, 160, 60], 12),
        ("ball", [30, 170, 80], 24),
    ];
    for (k, (_, color, x0)) in shapes.iter().enumerate() {
        let img = image::RgbImage::from_fn(64, 64, |x, y| {
            if (*x0..x0 + 28).contains(&x) && (16..44).contains(&y) {
                image::Rgb(*color)
            } else {
                image::Rgb([(x * 3) as u8, (y * 3) as u8, 90])
            }
        });
        img.save(dir.join(format!("img{k}.png"))).unwrap();
    }
    let rle = |x0: u32| {
        let m = Mask::from_fn(64, 64, |y, x| {
            (x0..x0 + 28).contains(&x) && (16..44).contains(&y)
        });
        serde_json::to_value(CocoRle::from_rle(&Rle::encode(&m))).unwrap()
    };
    let mut lines = Vec::new();
    for (id, (a, b)) in [(0usize, 1usize), (2, 3), (1, 0), (3, 2)]
        .iter()
        .enumerate()
    {
        let label = shapes[*a].0;
        lines.push(
            serde_json::json!({
                "id": format!("s/{id}"), "task": "common_object", "source": "s",
                "images": [
                    {"file": format!("img{a}.png"), "width": 64, "height": 64},
                    {"file": format!("img{b}.png"), "width": 64, "height": 64}
                ],
                "question": "Can you segment the common object in these images?",
                "answer": format!("The common object is <p> the {label} </p> [SEG] (IMAGE1) [SEG] (IMAGE2)."),
                "masks": [
                    {"image": 0, "label": label, "role": "object", "rle": rle(shapes[*a].2)},
                    {"image": 1, "label": label, "role": "object", "rle": rle(shapes[*b].2)}
                ]
            })
            .to_string(),
        );
    }
    let path = dir.join("train.jsonl");
    std::fs::write(&path, lines.join("\n") + "\n").unwrap();
    path
}

fn values(vars: &[(String, candle_core::Var)]) -> HashMap<String, Vec<f32>> {
    vars.iter()
        .map(|(n, v)| {
            (
                n.clone(),
                v.as_tensor().flatten_all().unwrap().to_vec1().unwrap(),
            )
        })
        .collect()
}

#[test]
fn images_are_labelled_with_their_object_classes() {
    let d = tmp("labels");
    let cfg = CalicoConfig::preset("tiny").unwrap();
    let ds = data::open(&samples(&d), &cfg).unwrap();
    let l = image_labels(&ds);
    assert_eq!(l.classes, vec!["ball".to_string(), "box".to_string()]);
    assert_eq!(l.files.len(), 4);
    for (f, labels) in l.files.iter().zip(&l.labels) {
        let want = if f == "img0.png" || f == "img1.png" {
            1
        } else {
            0
        };
        assert_eq!(labels, &vec![want], "{f}");
    }
}

/// The samples in `dir`, a seeded random model with every tensor trainable
/// and its variables by name.
fn everything_trainable(
    dir: &Path,
    cfg: &CalicoConfig,
) -> (
    data::Dataset,
    calico_train::model::Built,
    Vec<(String, candle_core::Var)>,
) {
    let ds = data::open(&samples(dir), cfg).unwrap();
    let format = PromptFormat::vicuna_v1(cfg.image_tokens());
    let mut tok = CalicoTokenizer::word_level(&data::corpus(&ds.samples, &format)).unwrap();
    let special = tok.add_calico_tokens(None).unwrap();
    let b = build_random(cfg, special, TrainableSet::All, 4, &Device::Cpu).unwrap();
    let mut named: Vec<_> = b.vars.data().lock().unwrap().clone().into_iter().collect();
    named.sort_by(|a, b| a.0.cmp(&b.0));
    (ds, b, named)
}

#[test]
fn stage_one_updates_the_global_encoders_and_nothing_else() {
    let d = tmp("stage1");
    let cfg = CalicoConfig::preset("tiny").unwrap();
    let (ds, b, named) = everything_trainable(&d, &cfg);
    let before = values(&named);
    let vp = VisionPretrain {
        steps: 3,
        batch_size: 4,
        lr: 1e-2,
        warmup_steps: 0,
        flip: true,
        ..VisionPretrain::default()
    };
    let s = pretrain_vision(
        &b.model,
        &named,
        (&ds, Some(&ds)),
        &vp,
        StageRun::new(4, 2),
        &mut Quiet,
    )
    .unwrap();
    assert_eq!((s.steps, s.images, s.classes, s.val_images), (3, 4, 2, 4));
    assert!(s.loss.is_finite() && s.loss > 0.0);
    // Every image-level head is scored, the Q-Former's first (it is the
    // reported `val_accuracy`); 4 images make quarters.
    let names: Vec<&str> = s.val_heads.iter().map(|h| h.head.as_str()).collect();
    assert_eq!(names, ["global", "eva", "semantic"]);
    assert_eq!(s.val_accuracy, Some(s.val_heads[0].accuracy));
    for h in &s.val_heads {
        for a in [h.accuracy, h.all_objects] {
            assert!(
                (a * 4.0).fract() == 0.0 && (0.0..=1.0).contains(&a),
                "{}: {a}",
                h.head
            );
        }
        // Getting every object right implies the best class is right.
        assert!(h.all_objects <= h.accuracy, "{}: {h:?}", h.head);
    }
    let after = values(&named);
    let encoder = |n: &str| GLOBAL_ENCODERS.iter().any(|p| n.starts_with(p));
    let mut moved_encoders = 0;
    for (n, v) in &before {
        if encoder(n) {
            if after[n] != *v {
                moved_encoders += 1;
            }
        } else {
            assert_eq!(
                after[n], *v,
                "stage 1 changed `{n}`, which is not a global encoder"
            );
        }
    }
    // Every encoder group learns (some tensors, e.g. DINOv2's unused
    // final layers beyond dinov2_layer, may legitimately stay).
    for p in GLOBAL_ENCODERS {
        assert!(
            named
                .iter()
                .any(|(n, _)| n.starts_with(p) && after[n] != before[n]),
            "no variable under `{p}` changed"
        );
    }
    assert!(
        moved_encoders > 20,
        "only {moved_encoders} encoder tensors moved"
    );
}

#[test]
fn dense_stage_one_also_trains_sam_and_scores_patches() {
    let d = tmp("dense");
    // EVA with a convolutional stem: 3 stride-2 stages, 8-px patches
    // (the preset's 56-px view, 7 x 7 tokens).
    let mut cfg = CalicoConfig::preset("tiny").unwrap();
    cfg.eva_vit.patch_size = 8;
    cfg.eva_vit.conv_stem = Some(vec![4, 8, 8]);
    let (ds, b, named) = everything_trainable(&d, &cfg);
    let before = values(&named);
    let vp = VisionPretrain {
        steps: 2,
        batch_size: 4,
        lr: 1e-2,
        warmup_steps: 0,
        flip: true,
        dense: true,
        sam: true,
        ..VisionPretrain::default()
    };
    let s = pretrain_vision(
        &b.model,
        &named,
        (&ds, Some(&ds)),
        &vp,
        StageRun::new(4, 1),
        &mut Quiet,
    )
    .unwrap();
    assert!(s.loss.is_finite() && s.loss > 0.0);
    let after = values(&named);
    let trained =
        |n: &str| GLOBAL_ENCODERS.iter().any(|p| n.starts_with(p)) || n.starts_with(SAM_ENCODER);
    for (n, v) in &before {
        if !trained(n) {
            assert_eq!(after[n], *v, "dense stage 1 changed `{n}`");
        }
    }
    assert!(
        named
            .iter()
            .any(|(n, _)| n.starts_with(SAM_ENCODER) && after[n] != before[n]),
        "SAM's image encoder did not learn"
    );
    // The stem trained with batch statistics and now normalises with the
    // ones measured on the training images.
    let stem = b.model.eva_stem().expect("the config has a conv stem");
    assert!(!stem.uses_batch_statistics());
    for stat in ["running_mean", "running_var"] {
        let name = format!("model.vision_tower.embeddings.stem.0.bn.{stat}");
        assert_ne!(after[&name], before[&name], "`{name}` was not measured");
    }
    let var = &after["model.vision_tower.embeddings.stem.0.bn.running_var"];
    assert!(var.iter().all(|v| *v > 0.0), "{var:?}");
    // EVA, DINOv2 and SAM heads, objects and parts; the boxes and balls
    // cover patches of every view, and the samples have no parts.
    let heads: Vec<&str> = s.val_dense.iter().map(|h| h.head.as_str()).collect();
    assert_eq!(
        heads,
        [
            "Eva objects",
            "Eva parts",
            "Dino objects",
            "Dino parts",
            "Sam objects",
            "Sam parts"
        ]
    );
    for h in &s.val_dense {
        let parts = h.head.ends_with("parts");
        assert_eq!(h.patches == 0, parts, "{h:?}");
        assert!((0.0..=1.0).contains(&h.accuracy), "{h:?}");
    }
}

/// `tiny`'s training settings for a run of `steps` steps of 2 micro-batches
/// of `batch` samples, without warm-up.
fn short_run(steps: u64, batch: usize, checkpoint_every: u64) -> TrainConfig {
    let mut tc = TrainConfig::for_preset("tiny");
    tc.epochs = 1;
    tc.steps_per_epoch = steps;
    tc.batch_size = batch;
    tc.grad_accumulation = 2;
    tc.warmup_steps = 0;
    tc.checkpoint_every = checkpoint_every;
    tc
}

fn run(dir: &Path, train_file: &Path, tc: TrainConfig, workers: usize) -> PathBuf {
    run_model(
        dir,
        train_file,
        CalicoConfig::preset("tiny").unwrap(),
        tc,
        workers,
    )
}

fn run_model(
    dir: &Path,
    train_file: &Path,
    model: CalicoConfig,
    tc: TrainConfig,
    workers: usize,
) -> PathBuf {
    let out = dir.join(format!("run-w{workers}"));
    let spec = RunSpec {
        run_dir: out.clone(),
        train: train_file.to_path_buf(),
        val: None,
        model,
        weights: None,
        config: tc,
        similarity: "exact".into(),
        resume: false,
        stop_after: None,
        feature_cache: None,
        workers,
        quantized_llm: None,
    };
    train(&spec, &ExactMatch, &mut Quiet).unwrap();
    out
}

fn tensors(path: &Path) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(path, &Device::Cpu)
        .unwrap()
        .into_iter()
        .collect()
}

#[test]
fn staged_run_freezes_encoders_and_workers_do_not_change_it() {
    let d = tmp("staged");
    let data_file = samples(&d);
    let mut tc = short_run(2, 1, 2);
    tc.vision_pretrain = Some(VisionPretrain {
        steps: 2,
        batch_size: 2,
        lr: 1e-2,
        warmup_steps: 0,
        flip: false,
        ..VisionPretrain::default()
    });
    tc.freeze = vec![FreezeStage {
        prefixes: GLOBAL_ENCODERS.iter().map(|p| p.to_string()).collect(),
        until_step: None,
    }];
    let one = run(&d, &data_file, tc.clone(), 1);
    let two = run(&d, &data_file, tc, 2);
    assert!(one.join("pretrain.json").is_file());
    // Stage 1's result is the step-0 checkpoint; stage 2 holds the
    // encoders at it and trains the rest.
    let stage1 = tensors(&one.join("checkpoints/step-00000000/trainable.safetensors"));
    let last = tensors(&one.join("model/trainable.safetensors"));
    let mut others_moved = 0;
    for (n, t) in &last {
        let same = (t - &stage1[n])
            .unwrap()
            .abs()
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
            == 0.0;
        if GLOBAL_ENCODERS.iter().any(|p| n.starts_with(p)) {
            assert!(same, "frozen `{n}` changed in stage 2");
        } else if !same {
            others_moved += 1;
        }
    }
    assert!(
        others_moved > 20,
        "stage 2 moved only {others_moved} tensors"
    );
    // Two workers: the same weights, bit for bit.
    let other = tensors(&two.join("model/trainable.safetensors"));
    for (n, t) in &last {
        let a: Vec<f32> = t.flatten_all().unwrap().to_vec1().unwrap();
        let b: Vec<f32> = other[n].flatten_all().unwrap().to_vec1().unwrap();
        assert_eq!(a, b, "`{n}` differs between 1 and 2 workers");
    }
}

#[test]
fn sam_stem_trains_in_stage_two_and_exports_measured_statistics() {
    let d = tmp("sam-stem");
    let data_file = samples(&d);
    // SAM with a convolutional stem: 3 stride-2 stages for its 8-px patches.
    let mut cfg = CalicoConfig::preset("tiny").unwrap();
    cfg.sam_encoder.conv_stem = Some(vec![4, 8, 8]);
    // The learning rate reaches 0 at the last step, so three steps make
    // two updates after step 1's checkpoint.
    let tc = short_run(3, 2, 1);
    let one = run_model(&d, &data_file, cfg.clone(), tc.clone(), 1);
    let two = run_model(&d, &data_file, cfg, tc, 2);
    let prefix = "model.grounding_encoder.image_encoder.patch_embed.stem.";
    let first = tensors(&one.join("checkpoints/step-00000001/trainable.safetensors"));
    let last = tensors(&one.join("model/trainable.safetensors"));
    let values = |t: &Tensor| -> Vec<f32> { t.flatten_all().unwrap().to_vec1().unwrap() };
    // The stem's weights learn. Its running statistics are not trained but
    // measured before the export: step 1's checkpoint (no validation ran,
    // so nothing was measured then) still has the initial ones.
    let conv = format!("{prefix}0.conv.weight");
    assert_ne!(
        values(&first[&conv]),
        values(&last[&conv]),
        "`{conv}` did not learn"
    );
    for stat in ["running_mean", "running_var"] {
        let name = format!("{prefix}0.bn.{stat}");
        assert_ne!(
            values(&first[&name]),
            values(&last[&name]),
            "`{name}` was not measured"
        );
    }
    let var = values(&last[&format!("{prefix}0.bn.running_var")]);
    assert!(var.iter().all(|v| *v > 0.0), "{var:?}");
    // Batch statistics are per micro-batch, so workers do not change the run.
    let other = tensors(&two.join("model/trainable.safetensors"));
    for (n, t) in &last {
        assert_eq!(
            values(t),
            values(&other[n]),
            "`{n}` differs between 1 and 2 workers"
        );
    }
}

/// Variables' values by name.
type Values = HashMap<String, Vec<f32>>;

/// Stage 1b on the four box/ball images: `steps` steps of 16 images (two
/// slices) on a fresh seeded model; the summary and the variables before
/// and after.
fn mask_stage(
    d: &Path,
    steps: u64,
    workers: usize,
) -> (
    calico_train::mask_pretrain::MaskPretrainSummary,
    Values,
    Values,
) {
    let cfg = CalicoConfig::preset("tiny").unwrap();
    let (ds, b, named) = everything_trainable(d, &cfg);
    let before = values(&named);
    let mp = MaskPretrain {
        steps,
        images: 16,
        lr: 1e-2,
        warmup_steps: 0,
        flip: true,
        val_images: 4,
    };
    let loss = TrainConfig::for_preset("tiny").loss;
    let s = pretrain_masks(
        &b.model,
        &named,
        (&ds, Some(&ds)),
        (&mp, &loss),
        StageRun::new(4, workers),
        &mut Quiet,
    )
    .unwrap();
    (s, before, values(&named))
}

#[test]
fn mask_stage_trains_sam_alone_and_learns_the_masks() {
    let d = tmp("masks");
    let (first, _, _) = mask_stage(&d, 1, 1);
    let (s, before, after) = mask_stage(&d, 30, 1);
    assert_eq!((s.images, s.labels, s.masks), (4, 2, 4));
    // Only SAM moved: its image encoder, prompt encoder and mask decoder.
    for part in ["image_encoder.", "prompt_encoder.", "mask_decoder."] {
        assert!(
            before
                .keys()
                .any(|n| n.starts_with(&format!("{SAM}{part}")) && after[n] != before[n]),
            "SAM's {part} did not learn"
        );
    }
    for (n, v) in &before {
        if !n.starts_with(SAM) {
            assert_eq!(after[n], *v, "stage 1b changed `{n}`");
        }
    }
    // The loss of the last 20 of 30 steps is below step 1's.
    assert!(
        s.loss < 0.9 * first.loss,
        "stage 1b did not learn: loss {} after 30 steps, {} at step 1",
        s.loss,
        first.loss
    );
    assert_eq!(s.val.len(), 1, "{:?}", s.val);
    assert_eq!((s.val[0].role.as_str(), s.val[0].masks), ("objects", 4));
    assert!((0.0..=1.0).contains(&s.val[0].iou), "{:?}", s.val);
    // Two slices per step on two threads: the same variables, bit for bit.
    let (_, _, two) = mask_stage(&d, 30, 2);
    for (n, v) in &after {
        assert_eq!(two[n], *v, "`{n}` differs between 1 and 2 workers");
    }
}

#[test]
fn a_run_with_a_mask_stage_saves_it_as_step_zero_without_its_prompts() {
    let d = tmp("mask-run");
    let data_file = samples(&d);
    let mut tc = short_run(1, 1, 1);
    tc.mask_pretrain = Some(MaskPretrain {
        steps: 2,
        images: 4,
        val_images: 0,
        ..MaskPretrain::default()
    });
    let out = run(&d, &data_file, tc, 1);
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("mask_pretrain.json")).unwrap())
            .unwrap();
    assert_eq!(summary["steps"], 2);
    let step0 = tensors(&out.join("checkpoints/step-00000000/trainable.safetensors"));
    let last = tensors(&out.join("model/trainable.safetensors"));
    // The label prompts are stage 1b's own, like stage 1's heads.
    assert!(step0.keys().all(|n| !n.starts_with("mask_pretrain")));
    assert_eq!(
        step0.keys().collect::<std::collections::BTreeSet<_>>(),
        last.keys().collect()
    );
}

/// Runs stage 1 or 1b for 4 steps on a fresh seeded model, saving a
/// checkpoint every 2 steps into `run` and starting from `resume`; the
/// stage's loss and the variables after it.
fn checkpointed_stage(
    d: &Path,
    stage: Stage,
    run: &Path,
    resume: Option<calico_train::checkpoint::LoadedCheckpoint>,
) -> (f64, Values) {
    let cfg = CalicoConfig::preset("tiny").unwrap();
    let (ds, b, named) = everything_trainable(d, &cfg);
    let stage_run = StageRun {
        seed: 4,
        workers: 1,
        checkpoints: Some(StageCheckpoints {
            run,
            every: 2,
            keep_last: 5,
            named: &named,
            resume,
        }),
    };
    let loss = match stage {
        Stage::Vision => {
            let vp = VisionPretrain {
                steps: 4,
                batch_size: 4,
                lr: 1e-2,
                warmup_steps: 1,
                flip: true,
                ..VisionPretrain::default()
            };
            pretrain_vision(&b.model, &named, (&ds, None), &vp, stage_run, &mut Quiet)
                .unwrap()
                .loss
        }
        Stage::Masks => {
            let mp = MaskPretrain {
                steps: 4,
                images: 4,
                lr: 1e-2,
                warmup_steps: 1,
                flip: true,
                val_images: 0,
            };
            let loss = TrainConfig::for_preset("tiny").loss;
            pretrain_masks(
                &b.model,
                &named,
                (&ds, None),
                (&mp, &loss),
                stage_run,
                &mut Quiet,
            )
            .unwrap()
            .loss
        }
    };
    (loss, values(&named))
}

#[test]
fn a_stage_resumed_from_its_checkpoint_ends_as_an_uninterrupted_one() {
    for stage in [Stage::Vision, Stage::Masks] {
        let d = tmp(&format!("resume-{}", stage.dir_name()));
        let (a, b) = (d.join("a"), d.join("b"));
        let (loss, whole) = checkpointed_stage(&d, stage, &a, None);
        // Steps 2 saved (4 is the stage's end: the trainer saves that).
        let dir = stage.dir(&a);
        let saved: Vec<_> = calico_train::checkpoint::list_checkpoints_in(&dir)
            .unwrap()
            .into_iter()
            .map(|(s, _)| s)
            .collect();
        assert_eq!(saved, vec![2], "{}", stage.title());
        let ck = load_checkpoint(&dir.join("step-00000002")).unwrap();
        assert_eq!(ck.state.step, 2);
        let (resumed_loss, resumed) = checkpointed_stage(&d, stage, &b, Some(ck));
        assert_eq!(resumed_loss, loss, "{}", stage.title());
        for (n, v) in &whole {
            assert_eq!(
                resumed[n],
                *v,
                "{}: `{n}` differs after resuming",
                stage.title()
            );
        }
    }
}
