//! Calico weights directories: everything needed to build a [`Calico`] in
//! one place, loaded with a report of what was read, missing and ignored.
//!
//! ```text
//! DIR/
//!   calico.json            the CalicoConfig (required)
//!   model.safetensors      tensors under Calico's names (docs/weights.md); or
//!                          model.safetensors.index.json + shards, or pytorch_model.bin
//!   trainable.safetensors  trainable tensors (what `calico train` saves)
//!   *.gguf                 at most one: the LLM (llama.cpp file, HF names after loading)
//!   tokenizer.json         the tokenizer (else the GGUF's)
//!   sources.json           other files, each renamed by prefix rules (below)
//! ```
//!
//! Every file is optional but `calico.json`; a name two files provide is an
//! error naming both. `sources.json` lists released files where they are:
//!
//! ```json
//! {"sources": [
//!   {"path": "/models/sam_vit_h_4b8939.pth",
//!    "rename": [["", "model.grounding_encoder."]]},
//!   {"path": "/models/instructblip-vicuna-7b",
//!    "rename": [["vision_model.", "model.vision_tower."], ["qformer.", "model.qformer."],
//!               ["query_tokens", "model.query_tokens"], ["language_projection.", "model.f_image."]]}
//! ]}
//! ```
//!
//! A `path` is a file (`.safetensors`, `.pth`/`.pt`/`.bin`, `.gguf`) or a
//! HF model directory, relative to DIR unless absolute. `rename` rules
//! `[from, to]` replace a name's prefix (first match wins, names no rule
//! matches are kept); tensors nobody reads show up as unused in the report.
//! `"except": [names]` leaves tensors of a source out (named as renamed),
//! because DIR's own files hold newer values: `calico train` writes it when
//! it fine-tunes tensors that the directory it started from already held.
//!
//! Tensors the model needs but no file has:
//! * trainable ones (LoRA, CEM, CAM, f_image, `text_hidden_fcs`, the SAM
//!   mask decoder, added vocabulary rows) are initialised as for training
//!   and listed as *fresh*;
//! * frozen ones are an error ([`MissingFrozen::Error`]), zeros for a dry
//!   run that lists them all ([`MissingFrozen::Zeros`], outputs
//!   meaningless), or seeded random values ([`MissingFrozen::Random`], the
//!   same values [`Calico::random`] makes for that seed: for presets like
//!   `small` whose vision side has no released weights).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::{Init, VarBuilder, VarMap};
use serde::{Deserialize, Serialize};

use super::{
    insert_sam_rel_pos, is_trainable_name, seeded_fill_where, Calico, FillMode, SeededBackend,
};
use crate::config::{Ablation, CalicoConfig};
use crate::gguf::{load_llama_gguf, load_llama_gguf_quantized};
use crate::llama::QuantizedWeights;
use crate::load::{rename_prefixes, Checkpoint, LoadReport};
use crate::tokenizer::CalicoTokenizer;
use calico_nn::QuantizedMatmul;

pub const CONFIG_FILE: &str = "calico.json";
pub const SOURCES_FILE: &str = "sources.json";
pub const FROZEN_FILE: &str = "model.safetensors";
pub const TRAINABLE_FILE: &str = "trainable.safetensors";
pub const TOKENIZER_FILE: &str = "tokenizer.json";

/// One entry of `sources.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Source {
    /// A file or HF model directory (relative paths start at the weights
    /// directory).
    pub path: PathBuf,
    /// Prefix rewrites `[from, to]`, first match wins.
    #[serde(default)]
    pub rename: Vec<[String; 2]>,
    /// Tensors (under their new names) this source does not provide because
    /// the directory's own files do: what a fine-tuning run trained over a
    /// file that already held them (`calico train`'s export).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub except: Vec<String>,
}

impl Source {
    /// `rename` as the `(from, to)` pairs [`rename_prefixes`] takes.
    fn rules(&self) -> Vec<(String, String)> {
        self.rename
            .iter()
            .map(|[a, b]| (a.clone(), b.clone()))
            .collect()
    }
}

/// `sources.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Sources {
    pub sources: Vec<Source>,
}

/// What to do with frozen tensors that no file provides.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MissingFrozen {
    /// Fail, naming the first one.
    Error,
    /// Zeros, each recorded (a dry run: outputs are meaningless).
    Zeros,
    /// Seeded random values, each recorded.
    Random { seed: u64 },
}

/// A weights directory's error.
#[derive(Debug)]
pub struct WeightsError(pub String);

impl fmt::Display for WeightsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for WeightsError {}

impl From<candle_core::Error> for WeightsError {
    fn from(e: candle_core::Error) -> Self {
        Self(e.to_string())
    }
}

impl From<crate::load::LoadError> for WeightsError {
    fn from(e: crate::load::LoadError) -> Self {
        Self(e.to_string())
    }
}

type Result<T> = std::result::Result<T, WeightsError>;

fn fail<T>(msg: impl Into<String>) -> Result<T> {
    Err(WeightsError(msg.into()))
}

/// What loading a weights directory did.
#[derive(Debug, Clone)]
pub struct WeightsReport {
    pub dir: PathBuf,
    /// The checkpoint's record: loaded, unused, missing (dry run) and
    /// mis-shaped tensors, per file.
    pub checkpoint: LoadReport,
    /// Frozen tensors no file had, filled per [`MissingFrozen`].
    pub filled: Vec<String>,
    /// Trainable tensors no file had, initialised as for training.
    pub fresh: Vec<String>,
    /// Where the tokenizer came from.
    pub tokenizer: String,
    /// Vocabulary before and after Calico's tokens were added.
    pub vocab: (usize, usize),
    /// LLM weights kept in their GGUF block-quantised types
    /// ([`load_dir_quantized_llm`]): how many of each type.
    pub quantized: BTreeMap<String, usize>,
    /// Bytes the built model's weights take: its float tensors (frozen and
    /// trainable), and the quantised blocks.
    pub float_bytes: usize,
    pub quantized_bytes: usize,
}

impl WeightsReport {
    /// The LLM weights kept in quantised blocks, by type (`210 Q4_1, 1
    /// Q8_0`); `None` when none are.
    pub fn quantized_kinds(&self) -> Option<String> {
        if self.quantized.is_empty() {
            return None;
        }
        let kinds: Vec<String> = self
            .quantized
            .iter()
            .map(|(t, n)| format!("{n} {t}"))
            .collect();
        Some(kinds.join(", "))
    }

    /// How a model loaded with [`load_dir_quantized_llm`] holds its LLM, for
    /// a model's description: ` (LLM kept in Q4_K+Q6_K, q8 matmul)`; empty
    /// when nothing was kept quantised.
    pub fn quantized_note(&self, matmul: QuantizedMatmul) -> String {
        if self.quantized.is_empty() {
            return String::new();
        }
        let types: Vec<&str> = self.quantized.keys().map(String::as_str).collect();
        format!(
            " (LLM kept in {}, {} matmul)",
            types.join("+"),
            matmul.name()
        )
    }

    /// No missing or mis-shaped tensor (filled or fresh ones are allowed).
    pub fn is_complete(&self) -> bool {
        self.checkpoint.missing.is_empty() && self.checkpoint.misshaped.is_empty()
    }
}

fn list(names: &[String], max: usize) -> String {
    let mut s = names
        .iter()
        .take(max)
        .cloned()
        .collect::<Vec<_>>()
        .join(", ");
    if names.len() > max {
        s.push_str(&format!(" and {} more", names.len() - max));
    }
    s
}

impl fmt::Display for WeightsReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = &self.checkpoint;
        writeln!(f, "weights: {}", self.dir.display())?;
        writeln!(f, "  files: {}", c.origin)?;
        for p in &c.parts {
            writeln!(
                f,
                "    {}: {} loaded, {} unused",
                p.origin,
                p.loaded.len(),
                p.unexpected.len()
            )?;
        }
        writeln!(f, "  loaded: {} tensors", c.loaded.len())?;
        for g in c.groups() {
            writeln!(
                f,
                "    {:<40} {:>6} loaded {:>6} unused {:>6} missing",
                g.group, g.loaded, g.unexpected, g.missing
            )?;
        }
        let lines = [
            ("unused (in a file, read by nothing)", &c.unexpected),
            ("MISSING", &c.missing),
            ("MIS-SHAPED", &c.misshaped),
            ("frozen, filled (no file had them)", &self.filled),
            ("trainable, initialised fresh", &self.fresh),
        ];
        for (label, names) in lines {
            if !names.is_empty() {
                writeln!(f, "  {label}: {}: {}", names.len(), list(names, 8))?;
            }
        }
        if let Some(kinds) = self.quantized_kinds() {
            writeln!(f, "  LLM weights kept quantized: {kinds}")?;
        }
        let mb = |b: usize| b as f64 / 1e6;
        if self.quantized_bytes > 0 {
            writeln!(
                f,
                "  weights held: {:.1} MB (float tensors {:.1} MB, quantized blocks {:.1} MB)",
                mb(self.float_bytes + self.quantized_bytes),
                mb(self.float_bytes),
                mb(self.quantized_bytes)
            )?;
        } else {
            writeln!(
                f,
                "  weights held: {:.1} MB of float tensors",
                mb(self.float_bytes)
            )?;
        }
        write!(
            f,
            "  tokenizer: {} (vocabulary {} + {} Calico tokens)",
            self.tokenizer,
            self.vocab.0,
            self.vocab.1 - self.vocab.0
        )
    }
}

/// A model built from a weights directory.
pub struct LoadedCalico {
    pub model: Calico,
    pub tokenizer: CalicoTokenizer,
    /// The trainable variables (read from the files or fresh), ready for
    /// an optimizer.
    pub trainable: VarMap,
    /// Every frozen tensor the model read, by name (the same tensors the
    /// model holds), so that a caller can make them variables too.
    pub frozen: HashMap<String, Tensor>,
    /// The names among `frozen` that neither the directory's
    /// `model.safetensors` nor its sources hold: read from its own
    /// `trainable.safetensors` (a tensor an earlier run trained) or seeded
    /// (`MissingFrozen::Random`). A directory that names this one's files
    /// as its sources must hold these itself.
    pub frozen_own: BTreeSet<String>,
    pub report: WeightsReport,
}

/// The files of a weights directory, opened.
struct Opened {
    cfg: CalicoConfig,
    ckpt: Checkpoint,
    gguf: Option<PathBuf>,
    /// The GGUF LLM's projections kept quantised (empty unless asked for).
    quantized: QuantizedWeights,
}

fn resolve(dir: &Path, p: &Path) -> PathBuf {
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        dir.join(p)
    }
}

fn has_hf_weights(dir: &Path) -> bool {
    [
        "model.safetensors",
        "model.safetensors.index.json",
        "pytorch_model.bin",
        "pytorch_model.bin.index.json",
    ]
    .iter()
    .any(|f| dir.join(f).is_file())
}

/// The `sources.json` of a model trained from `start` (a weights
/// directory) whose own files hold the tensors `own`: `start`'s sources
/// (made absolute), its GGUF LLM and its float weights file(s), each
/// leaving out (`except`) the tensors of `own` it holds. A GGUF source is
/// not opened: it holds only the LLM's frozen weights, which no export
/// holds itself.
pub fn sources_for_export(start: &Path, own: &BTreeSet<String>) -> Result<Sources> {
    let start = std::fs::canonicalize(start)
        .map_err(|e| WeightsError(format!("{}: {e}", start.display())))?;
    let mut sources: Vec<Source> = read_sources(&start)?
        .into_iter()
        .map(|mut s| {
            s.path = resolve(&start, &s.path);
            s
        })
        .collect();
    sources.extend(gguf_files(&start)?.into_iter().map(|path| Source {
        path,
        rename: Vec::new(),
        except: Vec::new(),
    }));
    if has_hf_weights(&start) {
        let single = start.join(FROZEN_FILE);
        sources.push(Source {
            // The file itself, or the directory for shards and pickles.
            path: if single.is_file() {
                single
            } else {
                start.clone()
            },
            rename: Vec::new(),
            except: Vec::new(),
        });
    }
    for s in &mut sources {
        if is_gguf_source(&s.path) {
            continue;
        }
        let (ckpt, _, _) = open_source(&s.path, &Device::Cpu, None)?;
        let rules = s.rules();
        let mut except: BTreeSet<String> = s.except.iter().cloned().collect();
        except.extend(
            ckpt.names()
                .iter()
                .map(|n| rename_prefixes(&rules, n))
                .filter(|n| own.contains(n)),
        );
        s.except = except.into_iter().collect();
    }
    Ok(Sources { sources })
}

/// The `.gguf` files directly in `dir`, sorted.
fn gguf_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut ggufs: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| WeightsError(format!("{}: {e}", dir.display())))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().and_then(|e| e.to_str()) == Some("gguf"))
        .collect();
    ggufs.sort();
    Ok(ggufs)
}

/// Reads `sources.json` (absent → no sources).
pub fn read_sources(dir: &Path) -> Result<Vec<Source>> {
    let path = dir.join(SOURCES_FILE);
    if !path.is_file() {
        return Ok(Vec::new());
    }
    let text = std::fs::read_to_string(&path)
        .map_err(|e| WeightsError(format!("{}: {e}", path.display())))?;
    let s: Sources = serde_json::from_str(&text).map_err(|e| {
        WeightsError(format!(
            "{}: {e} (expected {{\"sources\": [{{\"path\": \"…\", \"rename\": [[\"from\", \"to\"]]}}]}})",
            path.display()
        ))
    })?;
    Ok(s.sources)
}

/// The LLM config in a GGUF must be the one `calico.json` describes.
fn check_llm(cfg: &CalicoConfig, gguf: &crate::llama::LlamaConfig, path: &Path) -> Result<()> {
    let a = &cfg.llm;
    let kv = |c: &crate::llama::LlamaConfig| c.num_key_value_heads.unwrap_or(c.num_attention_heads);
    let fields = [
        ("vocab_size", a.vocab_size, gguf.vocab_size),
        ("hidden_size", a.hidden_size, gguf.hidden_size),
        (
            "intermediate_size",
            a.intermediate_size,
            gguf.intermediate_size,
        ),
        (
            "num_hidden_layers",
            a.num_hidden_layers,
            gguf.num_hidden_layers,
        ),
        (
            "num_attention_heads",
            a.num_attention_heads,
            gguf.num_attention_heads,
        ),
        ("num_key_value_heads", kv(a), kv(gguf)),
    ];
    let bad: Vec<String> = fields
        .iter()
        .filter(|(_, ours, theirs)| ours != theirs)
        .map(|(n, ours, theirs)| format!("{n}: calico.json {ours}, GGUF {theirs}"))
        .collect();
    if !bad.is_empty() {
        return fail(format!(
            "{}: the LLM does not match the `llm` section of {CONFIG_FILE}: {}",
            path.display(),
            bad.join("; ")
        ));
    }
    Ok(())
}

/// Checks, from its header and metadata only, that `path` is a GGUF file
/// holding the LLM that `cfg.llm` describes: what `calico model init
/// --gguf` verifies before it writes a weights directory naming the file.
pub fn check_gguf_llm(cfg: &CalicoConfig, path: &Path) -> Result<()> {
    if !is_gguf(path) {
        return fail(format!(
            "{}: not a GGUF file (it does not start with the bytes `GGUF`)",
            path.display()
        ));
    }
    let file = crate::gguf::GgufFile::open(path)?;
    let llm = crate::gguf::llama_config(&file)?;
    check_llm(cfg, &llm, path)
}

/// Whether a source is a GGUF LLM: by its name, or by its first bytes.
fn is_gguf_source(path: &Path) -> bool {
    path.extension().and_then(|e| e.to_str()) == Some("gguf") || is_gguf(path)
}

/// Whether `path` starts with GGUF's magic bytes (whatever its name).
fn is_gguf(path: &Path) -> bool {
    use std::io::Read;
    let mut magic = [0u8; 4];
    std::fs::File::open(path)
        .and_then(|mut f| f.read_exact(&mut magic))
        .is_ok()
        && &magic == b"GGUF"
}

type GgufLlm = (PathBuf, crate::llama::LlamaConfig);

/// Opens one source: a checkpoint, and for a GGUF LLM its path, config and
/// (with `keep_quantized`) its quantised projections.
fn open_source(
    path: &Path,
    device: &Device,
    keep_quantized: Option<QuantizedMatmul>,
) -> Result<(Checkpoint, Option<GgufLlm>, QuantizedWeights)> {
    if path.is_dir() {
        return Ok((
            Checkpoint::from_dir(path)?,
            None,
            QuantizedWeights::default(),
        ));
    }
    if !path.exists() {
        return fail(format!("{}: no such file or directory", path.display()));
    }
    if is_gguf_source(path) {
        let (cfg, ckpt, quantized) = if let Some(matmul) = keep_quantized {
            load_llama_gguf_quantized(path, device, matmul)?
        } else {
            let (cfg, ckpt) = load_llama_gguf(path, device)?;
            (cfg, ckpt, QuantizedWeights::default())
        };
        return Ok((ckpt, Some((path.to_path_buf(), cfg)), quantized));
    }
    Ok((Checkpoint::open(path)?, None, QuantizedWeights::default()))
}

/// A weights directory's config, its tensors as one float checkpoint (a
/// GGUF LLM dequantised, under HF names) and its GGUF file, if any.
pub(crate) fn open_float(
    dir: &Path,
    device: &Device,
) -> Result<(CalicoConfig, Checkpoint, Option<PathBuf>)> {
    let o = open(dir, device, None)?;
    Ok((o.cfg, o.ckpt, o.gguf))
}

fn open(dir: &Path, device: &Device, keep_quantized: Option<QuantizedMatmul>) -> Result<Opened> {
    if !dir.is_dir() {
        return fail(format!("{}: not a directory", dir.display()));
    }
    let cfg_path = dir.join(CONFIG_FILE);
    if !cfg_path.is_file() {
        return fail(format!(
            "{}: no {CONFIG_FILE} (a Calico config; `calico model info --preset NAME --json` \
             prints one to start from)",
            dir.display()
        ));
    }
    let cfg = CalicoConfig::from_json_file(&cfg_path)
        .map_err(|e| WeightsError(format!("{}: {e}", cfg_path.display())))?;
    let mut parts: Vec<(String, Checkpoint)> = Vec::new();
    let mut gguf: Option<PathBuf> = None;
    let mut quantized = QuantizedWeights {
        matmul: keep_quantized.unwrap_or_default(),
        ..Default::default()
    };
    if has_hf_weights(dir) {
        parts.push((String::new(), Checkpoint::from_dir(dir)?));
    }
    let trainable = dir.join(TRAINABLE_FILE);
    if trainable.is_file() {
        parts.push((String::new(), Checkpoint::open(&trainable)?));
    }
    let ggufs = gguf_files(dir)?;
    if ggufs.len() > 1 {
        return fail(format!(
            "{}: {} GGUF files; a weights directory holds at most one (the LLM)",
            dir.display(),
            ggufs.len()
        ));
    }
    // Named relative to `dir`, as sources.json names them (`resolve` joins
    // them to `dir` again).
    let mut sources: Vec<Source> = ggufs
        .into_iter()
        .map(|path| Source {
            path: path.file_name().map(PathBuf::from).unwrap_or(path),
            rename: Vec::new(),
            except: Vec::new(),
        })
        .collect();
    sources.extend(read_sources(dir)?);
    for src in sources {
        let path = resolve(dir, &src.path);
        let (ckpt, g, q) = open_source(&path, device, keep_quantized)?;
        if let Some((g, llm)) = g {
            if let Some(first) = &gguf {
                return fail(format!(
                    "two GGUF files ({} and {}); only one LLM can be loaded",
                    first.display(),
                    g.display()
                ));
            }
            check_llm(&cfg, &llm, &g)?;
            gguf = Some(g);
        }
        let rules = src.rules();
        quantized.tensors.extend(
            q.tensors
                .into_iter()
                .map(|(n, t)| (rename_prefixes(&rules, &n), t)),
        );
        let ckpt = if rules.is_empty() {
            ckpt
        } else {
            ckpt.renamed(|n| rename_prefixes(&rules, n))?
        };
        let ckpt = if src.except.is_empty() {
            ckpt
        } else {
            ckpt.without(&src.except).map_err(|e| {
                WeightsError(format!(
                    "{}: `except` of {}: {e}",
                    SOURCES_FILE,
                    path.display()
                ))
            })?
        };
        parts.push((String::new(), ckpt));
    }
    let ckpt = Checkpoint::merged(parts)?;
    Ok(Opened {
        cfg,
        ckpt,
        gguf,
        quantized,
    })
}

fn tokenizer(dir: &Path, gguf: Option<&Path>) -> Result<(CalicoTokenizer, String)> {
    let file = dir.join(TOKENIZER_FILE);
    if file.is_file() {
        return Ok((
            CalicoTokenizer::from_file(&file)?,
            file.display().to_string(),
        ));
    }
    if let Some(g) = gguf {
        return Ok((
            CalicoTokenizer::from_gguf(g)?,
            format!("{} (GGUF)", g.display()),
        ));
    }
    fail(format!(
        "{}: no tokenizer: put a {TOKENIZER_FILE} there, or the LLM as a .gguf file \
         (its tokenizer is used)",
        dir.display()
    ))
}

/// Frozen tensors: the checkpoint first; then, for a dry run, zeros
/// recorded as missing by the checkpoint's lenient builder, or seeded values
/// recorded as filled. Tensors read without a shape (SAM's relative-position
/// tables) come from `fallback` in both cases.
struct FrozenBackend {
    ckpt: VarBuilder<'static>,
    dry_run: bool,
    fallback: SeededBackend,
    filled: Arc<Mutex<BTreeSet<String>>>,
}

impl FrozenBackend {
    fn record(&self, name: &str) {
        if let Ok(mut f) = self.filled.lock() {
            f.insert(name.to_string());
        }
    }
}

impl SimpleBackend for FrozenBackend {
    fn get(
        &self,
        s: Shape,
        name: &str,
        h: Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        if self.ckpt.contains_tensor(name) || self.dry_run {
            return self.ckpt.get_with_hints_dtype(s, name, h, dtype);
        }
        self.record(name);
        self.fallback.get(s, name, h, dtype, dev)
    }

    fn get_unchecked(&self, name: &str, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        if self.ckpt.contains_tensor(name) {
            return self.ckpt.get_unchecked_dtype(name, dtype);
        }
        if self.dry_run {
            // Records the name as missing; the value comes from the fallback.
            let _ = self.ckpt.get_unchecked_dtype(name, dtype);
        } else {
            self.record(name);
        }
        self.fallback.get_unchecked(name, dtype, dev)
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.ckpt.contains_tensor(name) || self.fallback.contains_tensor(name)
    }
}

/// A builder's backend that keeps every tensor it hands out, by name.
/// With `detach` it hands out each tensor detached: a variable's storage
/// without its being a variable ([`load_dir_for_answers`]).
struct Recording {
    inner: VarBuilder<'static>,
    seen: Arc<Mutex<HashMap<String, Tensor>>>,
    detach: bool,
}

impl Recording {
    fn keep(&self, name: &str, t: candle_core::Result<Tensor>) -> candle_core::Result<Tensor> {
        let t = t?;
        if let Ok(mut seen) = self.seen.lock() {
            seen.insert(name.to_string(), t.clone());
        }
        Ok(if self.detach { t.detach() } else { t })
    }
}

impl SimpleBackend for Recording {
    fn get(
        &self,
        s: Shape,
        name: &str,
        h: Init,
        dtype: DType,
        _: &Device,
    ) -> candle_core::Result<Tensor> {
        self.keep(name, self.inner.get_with_hints_dtype(s, name, h, dtype))
    }

    fn get_unchecked(&self, name: &str, dtype: DType, _: &Device) -> candle_core::Result<Tensor> {
        self.keep(name, self.inner.get_unchecked_dtype(name, dtype))
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.inner.contains_tensor(name)
    }
}

/// The trainable variables found in `ckpt` (all names the trainable set
/// covers), recorded as used.
fn trainable_from(ckpt: &Checkpoint, device: &Device) -> Result<VarMap> {
    let map = VarMap::new();
    {
        let mut data = map
            .data()
            .lock()
            .map_err(|_| WeightsError("VarMap lock poisoned".into()))?;
        for name in ckpt.names().into_iter().filter(|n| is_trainable_name(n)) {
            let t = ckpt.get(&name, device)?.to_dtype(DType::F32)?;
            data.insert(name, candle_core::Var::from_tensor(&t)?);
        }
    }
    Ok(map)
}

fn var_names(map: &VarMap) -> BTreeSet<String> {
    map.data()
        .lock()
        .map(|d| d.keys().cloned().collect())
        .unwrap_or_default()
}

/// Builds a Calico from a weights directory (see the module docs).
pub fn load_dir(dir: &Path, missing: MissingFrozen, device: &Device) -> Result<LoadedCalico> {
    load_dir_inner(dir, None, missing, device, None, Use::Training)
}

/// [`load_dir`] for inference in less memory: the LLM's projection weights
/// stay in the block-quantised types of the directory's GGUF file (Q4_K,
/// Q8_0, …) and are multiplied in that form; the rest of the LLM and every
/// other module load as usual. The directory must hold its LLM as a GGUF
/// file. Trained, the quantised weights stay frozen and LoRA adapters
/// learn beside them (QLoRA: `calico_nn::input_grad`); answers may differ
/// slightly from the float path's with [`QuantizedMatmul::Q8`] (see there).
pub fn load_dir_quantized_llm(
    dir: &Path,
    missing: MissingFrozen,
    device: &Device,
    matmul: QuantizedMatmul,
) -> Result<LoadedCalico> {
    load_dir_inner(dir, None, missing, device, Some(matmul), Use::Training)
}

/// A model to answer with, not to train: [`load_dir`] (with `None`) or
/// [`load_dir_quantized_llm`] (with a matmul) whose modules hold the
/// trainable tensors as plain tensors. `trainable` still holds them as
/// variables, sharing their storage, but no gradient reaches the model.
///
/// What it saves: candle keeps the inputs of every op whose result
/// depends on a variable, so that a backward pass can run. A model holding
/// variables (LoRA, the trained modules) thus keeps every activation of a
/// forward pass until its output is dropped: the 30 layers of a prefill,
/// the encoders' layers while their features live. `calico predict` with
/// `small` peaked at 2.5 GB answering on one worker and 4.1 GB on two;
/// loaded this way, 1.0 GB either way (docs/performance.md, "Answering
/// keeps no graph"). Without a graph to keep, the norms, softmax and
/// sigmoid take candle's fused kernels: the values agree with a training
/// load's to float rounding.
pub fn load_dir_for_answers(
    dir: &Path,
    missing: MissingFrozen,
    device: &Device,
    quantized_llm: Option<QuantizedMatmul>,
) -> Result<LoadedCalico> {
    load_dir_inner(dir, None, missing, device, quantized_llm, Use::Answers)
}

/// What [`load_dir_inner`] builds a model for.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Use {
    /// The model holds the trainable variables themselves.
    Training,
    /// The model holds them detached ([`load_dir_for_answers`]).
    Answers,
}

/// [`load_dir`] with Table 2's module switches set to `ablation` instead
/// of the directory config's own: the modules it switches off are never
/// built (their tensors stay unread), and one it switches on that the
/// directory lacks is made by `missing`, like any other absent tensor.
/// `quantized_llm` as in [`load_dir_for_answers`].
pub fn load_dir_ablated(
    dir: &Path,
    ablation: Ablation,
    missing: MissingFrozen,
    device: &Device,
    quantized_llm: Option<QuantizedMatmul>,
) -> Result<LoadedCalico> {
    load_dir_inner(
        dir,
        Some(ablation),
        missing,
        device,
        quantized_llm,
        Use::Training,
    )
}

fn load_dir_inner(
    dir: &Path,
    ablation: Option<Ablation>,
    missing: MissingFrozen,
    device: &Device,
    quantized_llm: Option<QuantizedMatmul>,
    using: Use,
) -> Result<LoadedCalico> {
    let Opened {
        mut cfg,
        ckpt,
        gguf,
        quantized,
    } = open(dir, device, quantized_llm)?;
    if quantized_llm.is_some() && gguf.is_none() {
        return fail(format!(
            "{}: no GGUF LLM to keep quantized: the LLM's weights here are float tensors \
             (put the LLM in the directory as a .gguf file, or load without quantization)",
            dir.display()
        ));
    }
    // Trainable tensors of the modules an ablation switches off are left
    // out of the variables (an optimizer would hold them unread).
    let prune = ablation.is_some_and(|a| a != cfg.ablation);
    if let Some(a) = ablation {
        cfg.ablation = a;
    }
    let (mut tok, tok_origin) = tokenizer(dir, gguf.as_deref())?;
    let before = tok.vocab_size();
    let special = tok.add_calico_tokens(cfg.llm.eos_token_id)?;
    let after = tok.vocab_size();

    let trainable = trainable_from(&ckpt, device)?;
    let found = var_names(&trainable);
    let dtype = DType::F32;
    let filled = Arc::new(Mutex::new(BTreeSet::new()));
    let frozen = match missing {
        MissingFrozen::Error => ckpt.var_builder(dtype, device),
        MissingFrozen::Zeros | MissingFrozen::Random { .. } => {
            let (seed, dry_run) = match missing {
                MissingFrozen::Random { seed } => (seed, false),
                _ => (0, true),
            };
            let fallback = SeededBackend::new(seed);
            insert_sam_rel_pos(&fallback, &cfg, device)?;
            let ckpt_vb = if dry_run {
                ckpt.var_builder_lenient(None, dtype, device)
            } else {
                ckpt.var_builder(dtype, device)
            };
            let backend = FrozenBackend {
                ckpt: ckpt_vb,
                dry_run,
                fallback,
                filled: filled.clone(),
            };
            VarBuilder::from_backend(Box::new(backend), dtype, device.clone())
        }
    };
    let seen = Arc::new(Mutex::new(HashMap::new()));
    let frozen = VarBuilder::from_backend(
        Box::new(Recording {
            inner: frozen,
            seen: seen.clone(),
            detach: false,
        }),
        dtype,
        device.clone(),
    );
    let read = Arc::new(Mutex::new(HashMap::new()));
    let tvb = VarBuilder::from_backend(
        Box::new(Recording {
            inner: VarBuilder::from_varmap(&trainable, dtype, device),
            seen: read.clone(),
            detach: using == Use::Answers,
        }),
        dtype,
        device.clone(),
    );
    let quantized_llm = (!quantized.is_empty()).then_some(&quantized);
    let mut model =
        Calico::new_quantized(&cfg, frozen, tvb, special, quantized_llm).map_err(|e| {
            WeightsError(format!(
                "{}: building the model: {e} (run `calico model check {}` for the full list)",
                dir.display(),
                dir.display()
            ))
        })?;
    if prune {
        if let (Ok(read), Ok(mut vars)) = (read.lock(), trainable.data().lock()) {
            vars.retain(|n, _| read.contains_key(n));
        }
    }
    if after > cfg.llm.vocab_size {
        model.resize_token_embeddings(after, Some(&trainable))?;
        if using == Use::Answers {
            model.detach_added_rows();
        }
    }
    let fresh: Vec<String> = var_names(&trainable)
        .into_iter()
        .filter(|n| !found.contains(n))
        .collect();
    if !fresh.is_empty() {
        // candle's initialisers cannot be seeded; redraw the fresh ones.
        let seed = match missing {
            MissingFrozen::Random { seed } => seed,
            _ => 0,
        };
        let set: BTreeSet<&str> = fresh.iter().map(String::as_str).collect();
        seeded_fill_where(&trainable, seed, FillMode::KeepConstants, |n| {
            set.contains(n)
        })?;
    }
    let filled: Vec<String> = filled
        .lock()
        .map(|f| f.iter().cloned().collect())
        .unwrap_or_default();
    let frozen = seen.lock().map(|m| m.clone()).unwrap_or_default();
    let bytes = |t: &Tensor| t.elem_count() * t.dtype().size_in_bytes();
    let float_bytes = frozen.values().map(bytes).sum::<usize>()
        + varmap_tensors(&trainable)
            .values()
            .map(bytes)
            .sum::<usize>();
    let report = WeightsReport {
        dir: dir.to_path_buf(),
        checkpoint: ckpt.report(),
        filled,
        fresh,
        tokenizer: tok_origin,
        vocab: (before, after),
        quantized: quantized.type_counts(),
        float_bytes,
        quantized_bytes: quantized.size_in_bytes(),
    };
    let own_file = dir.join(TRAINABLE_FILE);
    let mut frozen_own: BTreeSet<String> = report.filled.iter().cloned().collect();
    if own_file.is_file() {
        let own: BTreeSet<String> = Checkpoint::open(&own_file)?.names().into_iter().collect();
        frozen_own.extend(frozen.keys().filter(|n| own.contains(*n)).cloned());
    }
    Ok(LoadedCalico {
        model,
        tokenizer: tok,
        trainable,
        frozen,
        frozen_own,
        report,
    })
}

/// Writes `bytes` to `path` through a temporary sibling, fsync and rename:
/// `path` is its old content or the new one, never a partial file.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    // Unique per process and call, so threads writing the same path at once
    // never share a temporary file.
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = path.with_file_name(format!(".{name}.tmp{}-{n}", std::process::id()));
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        drop(f);
        std::fs::rename(&tmp, path)?;
        if let Some(parent) = path.parent() {
            // The rename itself is durable once the directory is synced.
            if let Ok(d) = std::fs::File::open(parent) {
                let _ = d.sync_all();
            }
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Serialises named tensors as safetensors bytes (sorted by name).
pub fn safetensors_bytes(tensors: &HashMap<String, Tensor>) -> Result<Vec<u8>> {
    let mut names: Vec<&String> = tensors.keys().collect();
    names.sort();
    let mut contiguous = Vec::with_capacity(names.len());
    for n in names {
        contiguous.push((n.clone(), tensors[n].contiguous()?));
    }
    safetensors::serialize(contiguous.iter().map(|(n, t)| (n.as_str(), t)), None)
        .map_err(|e| WeightsError(format!("serialising tensors: {e}")))
}

/// The variables of a VarMap by name.
pub fn varmap_tensors(map: &VarMap) -> HashMap<String, Tensor> {
    map.data()
        .lock()
        .map(|d| {
            d.iter()
                .map(|(k, v)| (k.clone(), v.as_tensor().clone()))
                .collect()
        })
        .unwrap_or_default()
}

/// Writes a weights directory: `calico.json`, `model.safetensors` (the
/// frozen tensors, when any), `trainable.safetensors` and `tokenizer.json`
/// (when given). Each file is written atomically.
pub fn save_dir(
    dir: &Path,
    cfg: &CalicoConfig,
    frozen: &HashMap<String, Tensor>,
    trainable: &VarMap,
    tokenizer: Option<&CalicoTokenizer>,
) -> Result<()> {
    let io = |p: &Path, e: std::io::Error| WeightsError(format!("{}: {e}", p.display()));
    std::fs::create_dir_all(dir).map_err(|e| io(dir, e))?;
    let cfg_json = serde_json::to_string_pretty(cfg)
        .map_err(|e| WeightsError(format!("serialising the config: {e}")))?;
    let p = dir.join(CONFIG_FILE);
    write_atomic(&p, cfg_json.as_bytes()).map_err(|e| io(&p, e))?;
    if !frozen.is_empty() {
        let p = dir.join(FROZEN_FILE);
        write_atomic(&p, &safetensors_bytes(frozen)?).map_err(|e| io(&p, e))?;
    }
    let p = dir.join(TRAINABLE_FILE);
    write_atomic(&p, &safetensors_bytes(&varmap_tensors(trainable))?).map_err(|e| io(&p, e))?;
    if let Some(tok) = tokenizer {
        let p = dir.join(TOKENIZER_FILE);
        let json = tok
            .inner()
            .to_string(true)
            .map_err(|e| WeightsError(format!("serialising the tokenizer: {e}")))?;
        write_atomic(&p, json.as_bytes()).map_err(|e| io(&p, e))?;
        let p = dir.join("tokenizer_config.json");
        let json = serde_json::to_string_pretty(&tok.config_json())
            .map_err(|e| WeightsError(format!("serialising the tokenizer config: {e}")))?;
        write_atomic(&p, json.as_bytes()).map_err(|e| io(&p, e))?;
    }
    Ok(())
}
