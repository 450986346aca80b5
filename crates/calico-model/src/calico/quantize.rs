//! `calico model quantize`: a weights directory whose LLM is stored as a
//! llama.cpp GGUF file with block-quantised projections, so that
//! `load_dir_quantized_llm` (`--quantized-llm`) can hold it in a fraction of
//! the memory.
//!
//! The output directory is self-contained:
//!
//! ```text
//! calico.json           the source's config, unchanged
//! llm.gguf              the LLM under llama.cpp's names: each layer's seven
//!                       projections in the chosen type, the token embedding
//!                       and output head in the vocabulary type (Q8_0 unless
//!                       asked otherwise, F32 on request), norms in F32; q/k
//!                       rows in llama.cpp's order
//! model.safetensors     every other tensor (vision, SAM, CEM, CAM, LoRA, …)
//! tokenizer.json        copied when the source has one; otherwise the
//!                       source GGUF's tokenizer is copied into llm.gguf
//! ```
//!
//! LoRA adapters are not folded in: they stay float tensors beside the
//! quantised base, as `Linear` runs them. The directory is written under a
//! temporary name and renamed at the end, so an interrupted run leaves
//! nothing half-written.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use candle_core::quantized::gguf_file::Value;
use candle_core::quantized::{gguf_file, GgmlDType, QTensor};
use candle_core::{DType, Device, Tensor};

use super::weights::{
    open_float, safetensors_bytes, write_atomic, WeightsError, CONFIG_FILE, FROZEN_FILE,
    TOKENIZER_FILE,
};
use crate::gguf::{gguf_name, is_projection, is_vocab_table, permute_qk, GgufFile};
use crate::llama::LlamaConfig;

type Result<T> = std::result::Result<T, WeightsError>;

/// The GGUF file a quantised directory holds its LLM in.
pub const LLM_GGUF_FILE: &str = "llm.gguf";

/// Block-quantised types `quantize_dir` writes, by their lower-case names.
pub const QUANT_TYPES: &[(&str, GgmlDType)] = &[
    ("q4_0", GgmlDType::Q4_0),
    ("q4_1", GgmlDType::Q4_1),
    ("q5_0", GgmlDType::Q5_0),
    ("q5_1", GgmlDType::Q5_1),
    ("q8_0", GgmlDType::Q8_0),
    ("q2_k", GgmlDType::Q2K),
    ("q3_k", GgmlDType::Q3K),
    ("q4_k", GgmlDType::Q4K),
    ("q5_k", GgmlDType::Q5K),
    ("q6_k", GgmlDType::Q6K),
];

/// The vocabulary tables' type when none is asked for (`calico model
/// quantize --vocab-type`): llama.cpp too keeps the output head at 6–8 bits
/// whatever the projections get, since every logit passes through it.
pub const DEFAULT_VOCAB_TYPE: &str = "q8_0";

/// Parses `f32` as `None` (the tables stay float32) and any name of
/// [`QUANT_TYPES`] as that type.
pub fn parse_vocab_type(s: &str) -> std::result::Result<Option<GgmlDType>, String> {
    if s.eq_ignore_ascii_case("f32") {
        return Ok(None);
    }
    parse_quant_type(s)
        .map(Some)
        .map_err(|e| format!("{e}, or f32"))
}

/// Parses a type name of [`QUANT_TYPES`] (any case).
pub fn parse_quant_type(s: &str) -> std::result::Result<GgmlDType, String> {
    let lower = s.to_ascii_lowercase();
    QUANT_TYPES
        .iter()
        .find(|(n, _)| *n == lower)
        .map(|(_, t)| *t)
        .ok_or_else(|| {
            let names: Vec<&str> = QUANT_TYPES.iter().map(|(n, _)| *n).collect();
            format!(
                "`{s}` is not a quantization type: expected one of {}",
                names.join(", ")
            )
        })
}

/// Tensors [`quantize_dir`] wrote in one block type: how many, and their
/// bytes as float32 and as written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QuantizedTensors {
    pub count: usize,
    pub float_bytes: usize,
    pub quantized_bytes: usize,
}

impl QuantizedTensors {
    fn add(&mut self, float: &Tensor, q: &QTensor) {
        self.count += 1;
        self.float_bytes += float.elem_count() * 4;
        self.quantized_bytes += q.storage_size_in_bytes();
    }

    /// `21 LLM projections → Q8_0: 0.1 MB (from 0.4 MB as float32)`.
    fn line(&self, what: &str, dtype: GgmlDType) -> String {
        format!(
            "{} {what} → {dtype:?}: {:.1} MB (from {:.1} MB as float32)",
            self.count,
            self.quantized_bytes as f64 / 1e6,
            self.float_bytes as f64 / 1e6
        )
    }
}

/// What [`quantize_dir`] wrote.
#[derive(Debug, Clone)]
pub struct QuantizeReport {
    pub out: PathBuf,
    pub dtype: GgmlDType,
    /// The projection weights, in `dtype`.
    pub projections: QuantizedTensors,
    /// The vocabulary tables' type (`None`: F32).
    pub vocab_dtype: Option<GgmlDType>,
    /// The vocabulary tables quantised (the embedding, and the output head
    /// unless it is tied).
    pub vocab: QuantizedTensors,
    /// Other LLM tensors written to the GGUF in F32 (norms, and the
    /// vocabulary tables when they stay float).
    pub llm_float: usize,
    /// Tensors written to `model.safetensors`.
    pub others: usize,
    /// Sizes of the files written, by name.
    pub files: BTreeMap<String, u64>,
}

impl std::fmt::Display for QuantizeReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "{}",
            self.projections.line("LLM projections", self.dtype)
        )?;
        if let Some(t) = self.vocab_dtype.filter(|_| self.vocab.count > 0) {
            let what = match self.vocab.count {
                1 => "vocabulary table",
                _ => "vocabulary tables",
            };
            writeln!(f, "{}", self.vocab.line(what, t))?;
        }
        writeln!(
            f,
            "{} other LLM tensors in F32; {} tensors of the other modules in {FROZEN_FILE}",
            self.llm_float, self.others
        )?;
        write!(f, "wrote {}:", self.out.display())?;
        for (name, size) in &self.files {
            write!(f, "\n  {name:<24} {:>10.1} MB", *size as f64 / 1e6)?;
        }
        Ok(())
    }
}

/// The llama.cpp metadata of `cfg`.
fn llama_metadata(cfg: &LlamaConfig) -> Vec<(String, Value)> {
    let u = |n: usize| Value::U32(n as u32);
    let mut md = vec![
        ("general.architecture".into(), Value::String("llama".into())),
        ("general.name".into(), Value::String("Calico LLM".into())),
        ("llama.block_count".into(), u(cfg.num_hidden_layers)),
        (
            "llama.context_length".into(),
            u(cfg.max_position_embeddings),
        ),
        ("llama.embedding_length".into(), u(cfg.hidden_size)),
        ("llama.feed_forward_length".into(), u(cfg.intermediate_size)),
        (
            "llama.attention.head_count".into(),
            u(cfg.num_attention_heads),
        ),
        (
            "llama.attention.layer_norm_rms_epsilon".into(),
            Value::F32(cfg.rms_norm_eps as f32),
        ),
        (
            "llama.rope.freq_base".into(),
            Value::F32(cfg.rope_theta as f32),
        ),
        ("llama.vocab_size".into(), u(cfg.vocab_size)),
    ];
    if let Some(kv) = cfg.num_key_value_heads {
        md.push(("llama.attention.head_count_kv".into(), u(kv)));
    }
    if let Some(d) = cfg.head_dim {
        md.push(("llama.attention.key_length".into(), u(d)));
        md.push(("llama.attention.value_length".into(), u(d)));
    }
    for (key, id) in [
        ("tokenizer.ggml.bos_token_id", cfg.bos_token_id),
        ("tokenizer.ggml.eos_token_id", cfg.eos_token_id),
    ] {
        if let Some(id) = id {
            md.push((key.into(), Value::U32(id)));
        }
    }
    md
}

/// Writes `src` (any weights directory, docs/weights.md) to `out` with its
/// LLM's projections quantised to `dtype` and its vocabulary tables to
/// `vocab` (`None`: kept in F32; see the module docs). `out` must not
/// exist, or be an empty directory. `progress(done, total)` is called per
/// tensor.
pub fn quantize_dir(
    src: &Path,
    out: &Path,
    dtype: GgmlDType,
    vocab: Option<GgmlDType>,
    progress: &dyn Fn(usize, usize),
) -> Result<QuantizeReport> {
    for t in std::iter::once(dtype).chain(vocab) {
        if !QUANT_TYPES.iter().any(|(_, q)| *q == t) {
            return Err(WeightsError(format!(
                "{t:?} is not a block-quantized type this command writes"
            )));
        }
    }
    if out.exists() && !is_empty_dir(out) {
        return Err(WeightsError(format!(
            "{}: already exists and is not an empty directory",
            out.display()
        )));
    }
    if let Some(parent) = out.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)
            .map_err(|e| WeightsError(format!("{}: {e}", parent.display())))?;
    }
    let dev = Device::Cpu;
    let (cfg, ckpt, gguf) = open_float(src, &dev)?;
    let llm = &cfg.llm;
    let names = ckpt.names();
    let mut gguf_tensors: Vec<(String, QTensor)> = Vec::new();
    let mut others: HashMap<String, Tensor> = HashMap::new();
    let mut report = QuantizeReport {
        out: out.to_path_buf(),
        dtype,
        projections: QuantizedTensors::default(),
        vocab_dtype: vocab,
        vocab: QuantizedTensors::default(),
        llm_float: 0,
        others: 0,
        files: BTreeMap::new(),
    };
    for (i, name) in names.iter().enumerate() {
        progress(i, names.len());
        let t = ckpt.get(name, &dev)?;
        let Some(gg) = gguf_name(name) else {
            others.insert(name.clone(), t);
            continue;
        };
        let in_context = |e: candle_core::Error| WeightsError(format!("tensor `{name}`: {e}"));
        let mut t = t.to_dtype(DType::F32).map_err(in_context)?;
        if gg.contains(".attn_q.") {
            t = permute_qk(&t, llm.num_attention_heads).map_err(in_context)?;
        } else if gg.contains(".attn_k.") {
            t = permute_qk(&t, llm.kv_heads()).map_err(in_context)?;
        }
        let target = if is_projection(&gg) {
            Some((dtype, &mut report.projections))
        } else if is_vocab_table(&gg) {
            vocab.map(|t| (t, &mut report.vocab))
        } else {
            None
        };
        if let Some((target, written)) = target {
            let cols = t.dim(1).map_err(in_context)?;
            if !cols.is_multiple_of(target.block_size()) {
                return Err(WeightsError(format!(
                    "tensor `{name}`: rows of {cols} values do not split into {target:?} blocks \
                     of {}; pick a type with blocks of 32 (q8_0, q4_0, …)",
                    target.block_size()
                )));
            }
            let q = QTensor::quantize(&t, target).map_err(in_context)?;
            written.add(&t, &q);
            gguf_tensors.push((gg, q));
        } else {
            report.llm_float += 1;
            gguf_tensors.push((
                gg,
                QTensor::quantize(&t, GgmlDType::F32).map_err(in_context)?,
            ));
        }
    }
    progress(names.len(), names.len());
    if report.projections.count == 0 {
        return Err(WeightsError(format!(
            "{}: no LLM projection weights (model.layers.N.self_attn.q_proj.weight, …) to quantize",
            src.display()
        )));
    }
    report.others = others.len();

    let mut metadata = llama_metadata(llm);
    let tokenizer_json = src.join(TOKENIZER_FILE);
    if !tokenizer_json.is_file() {
        let Some(g) = &gguf else {
            return Err(WeightsError(format!(
                "{}: no tokenizer ({TOKENIZER_FILE} or a GGUF LLM) to carry over",
                src.display()
            )));
        };
        let file = GgufFile::open(g)?;
        let mut keys: Vec<&String> = file
            .metadata()
            .keys()
            .filter(|k| k.starts_with("tokenizer."))
            .collect();
        keys.sort();
        metadata.retain(|(k, _)| !k.starts_with("tokenizer."));
        for k in keys {
            metadata.push((k.clone(), file.metadata()[k].clone()));
        }
    }

    // Everything goes to a temporary sibling directory, renamed at the end.
    let tmp = temp_sibling(out);
    let _ = std::fs::remove_dir_all(&tmp);
    let written = write_all(&tmp, &cfg, &metadata, &gguf_tensors, &others, src);
    let files = match written {
        Ok(files) => files,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&tmp);
            return Err(e);
        }
    };
    if out.exists() {
        std::fs::remove_dir(out).map_err(|e| WeightsError(format!("{}: {e}", out.display())))?;
    }
    std::fs::rename(&tmp, out).map_err(|e| {
        let _ = std::fs::remove_dir_all(&tmp);
        WeightsError(format!("{}: {e}", out.display()))
    })?;
    report.files = files;
    Ok(report)
}

fn is_empty_dir(p: &Path) -> bool {
    std::fs::read_dir(p).is_ok_and(|mut d| d.next().is_none())
}

fn temp_sibling(out: &Path) -> PathBuf {
    let name = out
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "quantized".into());
    out.with_file_name(format!(".{name}.partial-{}", std::process::id()))
}

/// Writes the directory's files into `dir`; their sizes by name.
fn write_all(
    dir: &Path,
    cfg: &crate::config::CalicoConfig,
    metadata: &[(String, Value)],
    gguf_tensors: &[(String, QTensor)],
    others: &HashMap<String, Tensor>,
    src: &Path,
) -> Result<BTreeMap<String, u64>> {
    let io = |p: &Path, e: std::io::Error| WeightsError(format!("{}: {e}", p.display()));
    std::fs::create_dir_all(dir).map_err(|e| io(dir, e))?;
    let cfg_json = serde_json::to_string_pretty(cfg)
        .map_err(|e| WeightsError(format!("serialising the config: {e}")))?;
    let mut files: Vec<(PathBuf, Vec<u8>)> = vec![(dir.join(CONFIG_FILE), cfg_json.into_bytes())];
    let md: Vec<(&str, &Value)> = metadata.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let ts: Vec<(&str, &QTensor)> = gguf_tensors.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let mut gguf_bytes = std::io::Cursor::new(Vec::new());
    gguf_file::write(&mut gguf_bytes, &md, &ts)
        .map_err(|e| WeightsError(format!("writing {LLM_GGUF_FILE}: {e}")))?;
    files.push((dir.join(LLM_GGUF_FILE), gguf_bytes.into_inner()));
    if !others.is_empty() {
        files.push((dir.join(FROZEN_FILE), safetensors_bytes(others)?));
    }
    for name in [TOKENIZER_FILE, "tokenizer_config.json"] {
        let p = src.join(name);
        if p.is_file() {
            files.push((dir.join(name), std::fs::read(&p).map_err(|e| io(&p, e))?));
        }
    }
    let mut sizes = BTreeMap::new();
    for (path, bytes) in files {
        write_atomic(&path, &bytes).map_err(|e| io(&path, e))?;
        let name = path.file_name().unwrap_or_default().to_string_lossy();
        sizes.insert(name.into_owned(), bytes.len() as u64);
    }
    Ok(sizes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn type_names_parse_in_any_case() {
        assert_eq!(parse_quant_type("Q4_K"), Ok(GgmlDType::Q4K));
        assert_eq!(parse_quant_type("q8_0"), Ok(GgmlDType::Q8_0));
        let e = parse_quant_type("q3").unwrap_err();
        assert!(e.contains("expected one of q4_0, q4_1"), "{e}");
        assert_eq!(
            parse_vocab_type(DEFAULT_VOCAB_TYPE),
            Ok(Some(GgmlDType::Q8_0))
        );
        assert_eq!(parse_vocab_type("F32"), Ok(None));
    }

    #[test]
    fn metadata_reads_back_as_the_same_config() {
        let mut cfg = LlamaConfig::vicuna_7b();
        cfg.num_hidden_layers = 1;
        cfg.vocab_size = 64;
        let md = llama_metadata(&cfg);
        let dir = std::env::temp_dir().join(format!("calico-quant-md-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("m.gguf");
        let norm = QTensor::quantize(
            &Tensor::ones(cfg.hidden_size, DType::F32, &Device::Cpu).unwrap(),
            GgmlDType::F32,
        )
        .unwrap();
        let mdr: Vec<(&str, &Value)> = md.iter().map(|(k, v)| (k.as_str(), v)).collect();
        let mut f = std::fs::File::create(&path).unwrap();
        gguf_file::write(&mut f, &mdr, &[("output_norm.weight", &norm)]).unwrap();
        drop(f);
        let back = crate::gguf::llama_config(&GgufFile::open(&path).unwrap()).unwrap();
        // The file has no output.weight: the reader calls that tied.
        cfg.tie_word_embeddings = true;
        assert_eq!(back, cfg);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
