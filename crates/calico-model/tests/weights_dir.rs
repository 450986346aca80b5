//! Weights directories (`calico::weights`): a saved `tiny` Calico loads back
//! to the same function, files split by prefix load through `sources.json`,
//! and everything missing is reported (or filled, as asked).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use calico_model::calico::weights::{
    load_dir, load_dir_for_answers, safetensors_bytes, save_dir, sources_for_export, MissingFrozen,
    CONFIG_FILE, FROZEN_FILE, SOURCES_FILE, TRAINABLE_FILE,
};
use calico_model::calico::{Calico, ForwardOutput, ImageInput, TrainBatch};
use calico_model::config::CalicoConfig;
use calico_model::prompt::{build, TextEncoder};
use calico_model::tokenizer::CalicoTokenizer;
use candle_core::{Device, Tensor};
use candle_nn::VarMap;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

const SEED: u64 = 11;
const ANSWER: &str = "The chair: <p> a seat </p> [SEG] (IMAGE1) and <p> a leg </p> [SEG] (IMAGE2).";

fn question() -> String {
    calico_text::templates::multi_image_prefix(2) + "Segment the common object."
}

fn tokenizer() -> CalicoTokenizer {
    CalicoTokenizer::word_level(&[question(), ANSWER.replace("[SEG]", "")]).unwrap()
}

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("calico-weights-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A seeded random tiny model saved to `dir`; returns its frozen tensors.
fn saved(dir: &Path) -> HashMap<String, Tensor> {
    let cfg = CalicoConfig::preset("tiny").unwrap();
    let mut tok = tokenizer();
    let special = tok.add_calico_tokens(None).unwrap();
    let map = VarMap::new();
    let (_, frozen) = Calico::random(&cfg, special, &map, SEED, &Device::Cpu).unwrap();
    save_dir(dir, &cfg, &frozen, &map, Some(&tok)).unwrap();
    frozen
}

fn randn(shape: &[usize], rng: &mut ChaCha8Rng) -> Tensor {
    let n: usize = shape.iter().product();
    let v: Vec<f32> = (0..n).map(|_| rng.random::<f32>() * 2.0 - 1.0).collect();
    Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
}

fn image(seed: u64) -> ImageInput {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    ImageInput {
        clip: randn(&[3, 56, 56], &mut rng),
        dino: randn(&[3, 56, 56], &mut rng),
        sam: randn(&[3, 128, 128], &mut rng),
        sam_resized: (128, 128),
        original: (64, 64),
    }
}

/// One teacher-forced pass of [`ANSWER`] over two random images.
fn pass(model: &Calico, tok: &dyn TextEncoder) -> ForwardOutput {
    let layout = build(
        &question(),
        Some(ANSWER),
        2,
        tok,
        model.special_ids(),
        model.prompt_format(),
        512,
    )
    .unwrap();
    let batch = TrainBatch {
        layouts: vec![layout],
        images: vec![vec![image(1), image(2)]],
    };
    model.forward(&batch, tok, None).unwrap()
}

/// Logits and mask logits of one teacher-forced pass, flattened.
fn outputs(model: &Calico, tok: &dyn TextEncoder) -> Vec<f32> {
    let out = pass(model, tok);
    let mut v: Vec<f32> = out.logits.flatten_all().unwrap().to_vec1().unwrap();
    assert_eq!(out.mask_logits[0].len(), 2);
    for m in &out.mask_logits[0] {
        v.extend(m.flatten_all().unwrap().to_vec1::<f32>().unwrap());
    }
    v
}

fn reference() -> &'static Vec<f32> {
    static R: std::sync::OnceLock<Vec<f32>> = std::sync::OnceLock::new();
    R.get_or_init(|| {
        let d = tmp("reference");
        saved(&d);
        let l = load_dir(&d, MissingFrozen::Error, &Device::Cpu).unwrap();
        outputs(&l.model, &l.tokenizer)
    })
}

fn same(a: &[f32], b: &[f32]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x == y)
}

#[test]
fn a_saved_model_loads_back_to_the_same_function() {
    let d = tmp("roundtrip");
    saved(&d);
    let cfg = CalicoConfig::preset("tiny").unwrap();
    let mut tok = tokenizer();
    let special = tok.add_calico_tokens(None).unwrap();
    let map = VarMap::new();
    let (mut original, _) = Calico::random(&cfg, special, &map, SEED, &Device::Cpu).unwrap();
    original
        .set_prompt_format(calico_model::prompt::PromptFormat::vicuna_v1(
            cfg.image_tokens(),
        ))
        .unwrap();
    let l = load_dir(&d, MissingFrozen::Error, &Device::Cpu).unwrap();
    let r = &l.report;
    assert!(r.is_complete(), "{r}");
    assert!(r.checkpoint.unexpected.is_empty(), "{r}");
    assert!(r.fresh.is_empty() && r.filled.is_empty(), "{r}");
    assert_eq!(l.model.special_ids(), original.special_ids());
    let a = outputs(&original, &tok);
    let b = outputs(&l.model, &l.tokenizer);
    assert!(same(&a, &b), "the loaded model computes another function");
    assert!(same(&b, reference()));
    let text = r.to_string();
    assert!(
        text.contains("model.layers") && text.contains("tokenizer"),
        "{text}"
    );
}

#[test]
fn a_model_loaded_for_answers_keeps_no_graph_and_computes_the_same_function() {
    let d = tmp("answers");
    saved(&d);
    let trained = load_dir(&d, MissingFrozen::Error, &Device::Cpu).unwrap();
    assert!(pass(&trained.model, &trained.tokenizer).logits.track_op());
    let l = load_dir_for_answers(&d, MissingFrozen::Error, &Device::Cpu, None).unwrap();
    assert!(!pass(&l.model, &l.tokenizer).logits.track_op());
    // The same function to float rounding: without a graph to keep, the
    // norms, softmax and sigmoid take candle's fused kernels.
    let worst = |got: &[f32]| {
        got.iter()
            .zip(reference())
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max)
    };
    let scale = reference().iter().fold(1f32, |m, x| m.max(x.abs()));
    assert!(worst(&outputs(&l.model, &l.tokenizer)) <= 1e-5 * scale);
    // The variables share the model's storage: what an optimizer writes
    // to them is what the model computes with.
    for var in l.trainable.all_vars() {
        var.set(&var.zeros_like().unwrap()).unwrap();
    }
    assert!(worst(&outputs(&l.model, &l.tokenizer)) > 1e-2 * scale);
}

#[test]
fn files_split_by_prefix_load_through_sources_json() {
    let d = tmp("sources");
    let frozen = saved(&d);
    // SAM's frozen tensors go to their own file under SAM's own names.
    let prefix = "model.grounding_encoder.";
    let (sam, rest): (HashMap<_, _>, HashMap<_, _>) =
        frozen.into_iter().partition(|(n, _)| n.starts_with(prefix));
    let sam: HashMap<String, Tensor> = sam
        .into_iter()
        .map(|(n, t)| (n[prefix.len()..].to_string(), t))
        .collect();
    assert!(!sam.is_empty());
    let other = tmp("sources-sam");
    std::fs::write(
        other.join("sam.safetensors"),
        safetensors_bytes(&sam).unwrap(),
    )
    .unwrap();
    std::fs::write(d.join(FROZEN_FILE), safetensors_bytes(&rest).unwrap()).unwrap();
    let sources = serde_json::json!({"sources": [
        {"path": other.join("sam.safetensors"), "rename": [["", prefix]]}
    ]});
    std::fs::write(d.join(SOURCES_FILE), sources.to_string()).unwrap();
    let l = load_dir(&d, MissingFrozen::Error, &Device::Cpu).unwrap();
    assert!(l.report.is_complete() && l.report.checkpoint.unexpected.is_empty());
    assert_eq!(l.report.checkpoint.parts.len(), 3, "{}", l.report);
    assert!(same(&outputs(&l.model, &l.tokenizer), reference()));
}

/// A fine-tuned export over a file that already holds the tensors it
/// trained: its sources leave those out (`except`), and its own values are
/// the ones loaded.
#[test]
fn an_export_replaces_the_tensors_it_trained_in_its_start_directory() {
    let d = tmp("export-own");
    let frozen = saved(&d);
    let trained = candle_core::safetensors::load(d.join(TRAINABLE_FILE), &Device::Cpu).unwrap();
    // The start directory: every tensor in one model.safetensors, the
    // trainable ones with other values (as released weights would be).
    let start = tmp("export-start");
    let mut all = frozen.clone();
    for (n, t) in &trained {
        all.insert(n.clone(), (t + 1.0).unwrap());
    }
    std::fs::write(start.join(FROZEN_FILE), safetensors_bytes(&all).unwrap()).unwrap();
    std::fs::copy(d.join(CONFIG_FILE), start.join(CONFIG_FILE)).unwrap();
    // The export: the config, tokenizer and trained tensors, and sources.
    let own: std::collections::BTreeSet<String> = trained.keys().cloned().collect();
    std::fs::remove_file(d.join(FROZEN_FILE)).unwrap();
    let sources = sources_for_export(&start, &own).unwrap();
    assert_eq!(sources.sources.len(), 1);
    let src = &sources.sources[0];
    assert!(src.path.is_absolute() && src.path.ends_with(FROZEN_FILE));
    assert_eq!(src.except, own.iter().cloned().collect::<Vec<_>>());
    std::fs::write(
        d.join(SOURCES_FILE),
        serde_json::to_string(&sources).unwrap(),
    )
    .unwrap();
    let l = load_dir(&d, MissingFrozen::Error, &Device::Cpu).unwrap();
    assert!(l.report.is_complete() && l.report.checkpoint.unexpected.is_empty());
    assert!(same(&outputs(&l.model, &l.tokenizer), reference()));

    // Without `except` the two files provide the same tensors.
    let bare = serde_json::json!({"sources": [{"path": src.path}]});
    std::fs::write(d.join(SOURCES_FILE), bare.to_string()).unwrap();
    let e = load_dir(&d, MissingFrozen::Error, &Device::Cpu)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("is provided by both"), "{e}");
    // An `except` naming a tensor the source lacks is an error naming it.
    let typo = serde_json::json!({"sources": [{"path": src.path, "except": ["model.no_such"]}]});
    std::fs::write(d.join(SOURCES_FILE), typo.to_string()).unwrap();
    let e = load_dir(&d, MissingFrozen::Error, &Device::Cpu)
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("`except`") && e.contains("no tensor `model.no_such` to leave out"),
        "{e}"
    );
}

#[test]
fn missing_frozen_tensors_fail_are_listed_or_filled() {
    let d = tmp("missing");
    let mut frozen = saved(&d);
    let gone = [
        "model.vision_tower.encoder.layers.1.mlp.fc2.weight",
        "model.layers.2.mlp.down_proj.weight",
    ];
    for g in gone {
        assert!(frozen.remove(g).is_some(), "{g}");
    }
    std::fs::write(d.join(FROZEN_FILE), safetensors_bytes(&frozen).unwrap()).unwrap();

    let err = load_dir(&d, MissingFrozen::Error, &Device::Cpu)
        .err()
        .expect("a missing frozen tensor is an error")
        .to_string();
    assert!(gone.iter().any(|g| err.contains(g)), "{err}");
    assert!(err.contains("calico model check"), "{err}");

    let dry = load_dir(&d, MissingFrozen::Zeros, &Device::Cpu).unwrap();
    assert!(!dry.report.is_complete());
    let mut missing = dry.report.checkpoint.missing.clone();
    missing.sort();
    let mut want: Vec<String> = gone.iter().map(|s| s.to_string()).collect();
    want.sort();
    assert_eq!(missing, want);
    assert!(dry.report.to_string().contains("MISSING: 2"));

    // Seeded fill with the model's seed recreates exactly those tensors.
    let filled = load_dir(&d, MissingFrozen::Random { seed: SEED }, &Device::Cpu).unwrap();
    assert_eq!(filled.report.filled, want);
    assert!(same(
        &outputs(&filled.model, &filled.tokenizer),
        reference()
    ));
}

#[test]
fn trainable_tensors_no_file_has_are_initialised_fresh() {
    let d = tmp("fresh");
    saved(&d);
    std::fs::remove_file(d.join(TRAINABLE_FILE)).unwrap();
    let l = load_dir(&d, MissingFrozen::Random { seed: SEED }, &Device::Cpu).unwrap();
    let fresh = &l.report.fresh;
    assert!(
        fresh.iter().any(|n| n.starts_with("model.cem.")),
        "{fresh:?}"
    );
    assert!(fresh.iter().any(|n| n.contains("lora_A")));
    assert!(fresh
        .iter()
        .any(|n| n.starts_with("model.grounding_encoder.mask_decoder.")));
    assert!(l.report.filled.is_empty());
    // Fresh values are seeded like `Calico::random`'s.
    assert!(same(&outputs(&l.model, &l.tokenizer), reference()));
}

#[test]
fn bad_directories_get_clear_errors() {
    let err = |d: &Path| {
        load_dir(d, MissingFrozen::Error, &Device::Cpu)
            .err()
            .expect("an error")
            .to_string()
    };
    let d = tmp("bad");
    assert!(err(&d.join("nope")).contains("not a directory"));
    assert!(err(&d).contains(CONFIG_FILE));

    saved(&d);
    std::fs::write(d.join(SOURCES_FILE), "{\"sources\": [{\"file\": 1}]}").unwrap();
    let e = err(&d);
    assert!(
        e.contains(SOURCES_FILE) && e.contains("unknown field"),
        "{e}"
    );

    std::fs::write(
        d.join(SOURCES_FILE),
        "{\"sources\": [{\"path\": \"no/such.safetensors\"}]}",
    )
    .unwrap();
    let e = err(&d);
    assert!(
        e.contains("no/such.safetensors") && e.contains("no such file"),
        "{e}"
    );

    std::fs::remove_file(d.join(SOURCES_FILE)).unwrap();
    std::fs::remove_file(d.join("tokenizer.json")).unwrap();
    let e = err(&d);
    assert!(e.contains("no tokenizer"), "{e}");

    std::fs::write(d.join(CONFIG_FILE), "{\"name\": 3}").unwrap();
    assert!(err(&d).contains(CONFIG_FILE));
}

#[test]
fn the_word_level_tokenizer_round_trips_and_marks_unknown_words() {
    let mut tok = tokenizer();
    let special = tok.add_calico_tokens(None).unwrap();
    let text = "The chair: <p> a seat </p> [SEG] (IMAGE1).";
    let ids = tok.encode(text, false).unwrap();
    assert!(ids.contains(&special.seg) && ids.contains(&special.p_open));
    assert_eq!(tok.decode(&ids, false).unwrap(), text);
    let unk = tok.encode("The zebra", false).unwrap();
    assert_eq!(unk[1], 0, "an unseen word is <unk>");
    assert_eq!(special.eos, 2);
}
