//! Checkpoint loading that knows what it loaded.
//!
//! A [`Checkpoint`] wraps a set of named tensors and hands out a
//! [`VarBuilder`] whose lookups are recorded. Sources:
//!
//! - a single file: [`Checkpoint::open`] (`.safetensors`, or a PyTorch pickle
//!   `.pth`/`.pt`/`.bin`), [`Checkpoint::from_safetensors`] (shards),
//!   [`Checkpoint::from_pth`];
//! - a Hugging Face model directory: [`Checkpoint::from_dir`] reads
//!   `model.safetensors`, sharded `model-0000i-of-0000N.safetensors` with
//!   `model.safetensors.index.json`, or `pytorch_model.bin` (optionally
//!   sharded with `pytorch_model.bin.index.json`), preferring safetensors.
//!   Every shard an index lists must exist and hold the tensors the index
//!   assigns to it. A PEFT adapter in the same directory
//!   (`adapter_model.safetensors` / `.bin`) is loaded separately by
//!   [`Checkpoint::adapter_from_dir`]. GGUF files have their own loader,
//!   [`crate::gguf::load_llama_gguf`];
//! - tensors in memory: [`Checkpoint::from_tensors`];
//! - several of the above under one namespace: [`Checkpoint::merged`] puts
//!   each part under its own prefix (e.g. an EVA-CLIP `.pth`, a Q-Former
//!   `.pth`, a SAM `.pth` and an LLM directory) and rejects a name that two
//!   parts would both provide.
//!
//! A model is built from the builder; afterwards [`Checkpoint::report`]
//! returns a [`LoadReport`]: the tensors the model used, the checkpoint
//! tensors nothing asked for (shown as a warning), the names the model asked
//! for that were absent, counts grouped by top-level prefix, and for a merged
//! checkpoint the same per part. With [`Checkpoint::var_builder`] a missing
//! tensor or one with the wrong shape is an error naming the tensor and both
//! shapes, so a build stops at the first problem;
//! [`Checkpoint::var_builder_lenient`] is a dry run that substitutes zeros
//! and records every problem, so one build lists them all.
//!
//! A [`NameMap`] translates the names a module asks for (HF transformers
//! names) into the checkpoint's own scheme (LAVIS, torch-hub), so one module
//! definition loads every layout.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use candle_core::pickle::PthTensors;
use candle_core::{safetensors::MmapedSafetensors, DType, Device, Shape, Tensor};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::{Init, VarBuilder};

/// Translates a module's tensor name into the checkpoint's name; `None`
/// means "this checkpoint scheme has no such tensor".
pub type NameMap = Arc<dyn Fn(&str) -> Option<String> + Send + Sync>;

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot read checkpoint {path}: {message}")]
    Read { path: PathBuf, message: String },
    #[error("tensor `{name}` is provided by both {first} and {second}")]
    Duplicate {
        name: String,
        first: String,
        second: String,
    },
    #[error(transparent)]
    Model(#[from] candle_core::Error),
}

fn read_err(path: &Path, message: impl Into<String>) -> LoadError {
    LoadError::Read {
        path: path.to_path_buf(),
        message: message.into(),
    }
}

/// One part of a merged checkpoint.
struct Part {
    prefix: String,
    ckpt: Checkpoint,
}

enum Store {
    Memory(HashMap<String, Tensor>),
    Safetensors(MmapedSafetensors),
    Pth(PthTensors),
    /// Sharded PyTorch pickles; `route` maps a tensor name to its shard.
    PthShards {
        shards: Vec<PthTensors>,
        route: HashMap<String, usize>,
    },
    /// Several checkpoints under prefixes; `route` maps a full name to its
    /// part and the name inside that part.
    Merged {
        parts: Vec<Part>,
        route: HashMap<String, (usize, String)>,
    },
    /// Another checkpoint seen under new names; `to_stored` maps each new
    /// name to the stored one.
    Renamed {
        ckpt: Checkpoint,
        to_stored: HashMap<String, String>,
    },
}

impl Store {
    fn names(&self) -> Vec<String> {
        match self {
            Store::Memory(m) => m.keys().cloned().collect(),
            Store::Safetensors(s) => s.tensors().into_iter().map(|(n, _)| n).collect(),
            Store::Pth(p) => p.tensor_infos().keys().cloned().collect(),
            Store::PthShards { route, .. } => route.keys().cloned().collect(),
            Store::Merged { route, .. } => route.keys().cloned().collect(),
            Store::Renamed { to_stored, .. } => to_stored.keys().cloned().collect(),
        }
    }

    fn contains(&self, name: &str) -> bool {
        match self {
            Store::Memory(m) => m.contains_key(name),
            Store::Safetensors(s) => s.get(name).is_ok(),
            Store::Pth(p) => p.tensor_infos().contains_key(name),
            Store::PthShards { route, .. } => route.contains_key(name),
            Store::Merged { route, .. } => route.contains_key(name),
            Store::Renamed { to_stored, .. } => to_stored.contains_key(name),
        }
    }

    fn load(&self, name: &str, dev: &Device) -> candle_core::Result<Tensor> {
        let absent = || candle_core::Error::Msg(format!("no tensor {name}"));
        match self {
            Store::Memory(m) => m.get(name).cloned().ok_or_else(absent),
            Store::Safetensors(s) => s.load(name, dev),
            Store::Pth(p) => p.get(name)?.ok_or_else(absent)?.to_device(dev),
            Store::PthShards { shards, route } => {
                let i = *route.get(name).ok_or_else(absent)?;
                shards[i].get(name)?.ok_or_else(absent)?.to_device(dev)
            }
            Store::Merged { parts, route } => {
                let (i, inner) = route.get(name).ok_or_else(absent)?;
                parts[*i].ckpt.inner.load_and_mark(inner, dev)
            }
            Store::Renamed { ckpt, to_stored } => {
                let stored = to_stored.get(name).ok_or_else(absent)?;
                ckpt.inner.load_and_mark(stored, dev)
            }
        }
    }
}

struct Inner {
    store: Store,
    origin: String,
    used: Mutex<BTreeSet<String>>,
    missing: Mutex<BTreeSet<String>>,
    misshaped: Mutex<BTreeMap<String, String>>,
}

impl Inner {
    /// Loads a tensor and records it as used (in nested parts too).
    fn load_and_mark(&self, name: &str, dev: &Device) -> candle_core::Result<Tensor> {
        let t = self.store.load(name, dev)?;
        if let Ok(mut u) = self.used.lock() {
            u.insert(name.to_string());
        }
        Ok(t)
    }
}

/// Named tensors plus a record of which were used.
#[derive(Clone)]
pub struct Checkpoint {
    inner: Arc<Inner>,
}

/// How one part of a merged checkpoint was used (names are full names,
/// prefix included).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartReport {
    /// The prefix the part's tensors were placed under (`""` for none).
    pub prefix: String,
    /// Where the part's tensors came from.
    pub origin: String,
    /// Tensors of this part the model read.
    pub loaded: Vec<String>,
    /// Tensors of this part nothing asked for.
    pub unexpected: Vec<String>,
}

/// Counts for one top-level name prefix (see [`LoadReport::groups`]).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct GroupSummary {
    pub group: String,
    pub loaded: usize,
    pub unexpected: usize,
    pub missing: usize,
}

/// What building a model from a [`Checkpoint`] consumed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadReport {
    /// Where the tensors came from.
    pub origin: String,
    /// Checkpoint tensors the model read.
    pub loaded: Vec<String>,
    /// Checkpoint tensors nothing asked for (sorted).
    pub unexpected: Vec<String>,
    /// Names the model asked for that the checkpoint lacks (sorted; the
    /// model's names, before any [`NameMap`]). A strict builder fails on the
    /// first of these; a lenient one collects them all.
    pub missing: Vec<String>,
    /// Tensors present with the wrong shape, as `name: checkpoint [..], model
    /// [..]` (only a lenient builder gets past the first one).
    pub misshaped: Vec<String>,
    /// Per-part attribution for a merged checkpoint (empty otherwise).
    pub parts: Vec<PartReport>,
}

/// A rename for [`Checkpoint::renamed`]: the first rule `(from, to)` whose
/// `from` starts the name replaces that prefix by `to`; names no rule
/// matches are kept.
pub fn rename_prefixes(rules: &[(String, String)], name: &str) -> String {
    for (from, to) in rules {
        if let Some(rest) = name.strip_prefix(from.as_str()) {
            return format!("{to}{rest}");
        }
    }
    name.to_string()
}

/// The group a tensor name is counted under: its first two dot-separated
/// components, stopping before a layer index and never including the leaf
/// (`model.layers.3.mlp.up_proj.weight` → `model.layers`,
/// `lm_head.weight` → `lm_head`, `blocks.0.attn.qkv.weight` → `blocks`).
pub fn group_of(name: &str) -> String {
    let parts: Vec<&str> = name.split('.').collect();
    if parts.len() == 1 {
        return name.to_string();
    }
    let mut out: Vec<&str> = Vec::new();
    for p in &parts[..parts.len() - 1] {
        if out.len() == 2 || p.chars().all(|c| c.is_ascii_digit()) {
            break;
        }
        out.push(p);
    }
    if out.is_empty() {
        parts[0].to_string()
    } else {
        out.join(".")
    }
}

impl LoadReport {
    /// Loaded / unused / missing counts per [`group_of`] prefix, sorted by
    /// group name.
    pub fn groups(&self) -> Vec<GroupSummary> {
        fn bump<'a>(g: &'a mut BTreeMap<String, GroupSummary>, n: &str) -> &'a mut GroupSummary {
            let k = group_of(n);
            g.entry(k.clone()).or_insert_with(|| GroupSummary {
                group: k,
                ..Default::default()
            })
        }
        let mut g = BTreeMap::new();
        for n in &self.loaded {
            bump(&mut g, n).loaded += 1;
        }
        for n in &self.unexpected {
            bump(&mut g, n).unexpected += 1;
        }
        for n in &self.missing {
            bump(&mut g, n).missing += 1;
        }
        g.into_values().collect()
    }

    /// True when nothing was missing, misshaped or unused.
    pub fn is_clean(&self) -> bool {
        self.missing.is_empty() && self.misshaped.is_empty() && self.unexpected.is_empty()
    }
}

const MAX_GROUP_LINES: usize = 40;

impl fmt::Display for LoadReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: loaded {} tensors", self.origin, self.loaded.len())?;
        if !self.missing.is_empty() {
            write!(f, ", {} missing", self.missing.len())?;
        }
        if !self.misshaped.is_empty() {
            write!(f, ", {} with the wrong shape", self.misshaped.len())?;
        }
        if !self.unexpected.is_empty() {
            write!(f, ", {} unused", self.unexpected.len())?;
        }
        let groups = self.groups();
        if groups.len() > 1 || !self.is_clean() {
            for g in groups.iter().take(MAX_GROUP_LINES) {
                write!(f, "\n  {}: {} loaded", g.group, g.loaded)?;
                if g.missing > 0 {
                    write!(f, ", {} missing", g.missing)?;
                }
                if g.unexpected > 0 {
                    write!(f, ", {} unused", g.unexpected)?;
                }
            }
            if groups.len() > MAX_GROUP_LINES {
                write!(
                    f,
                    "\n  … and {} more groups",
                    groups.len() - MAX_GROUP_LINES
                )?;
            }
        }
        for p in &self.parts {
            let prefix = if p.prefix.is_empty() {
                "(no prefix)".to_string()
            } else {
                format!("`{}`", p.prefix)
            };
            write!(
                f,
                "\n  part {prefix} from {}: {} loaded, {} unused",
                p.origin,
                p.loaded.len(),
                p.unexpected.len()
            )?;
        }
        if !self.missing.is_empty() {
            write!(
                f,
                "\nerror: {} tensors the model asked for are not in the checkpoint: {}",
                self.missing.len(),
                abbreviate(&self.missing, 12)
            )?;
        }
        if !self.misshaped.is_empty() {
            write!(
                f,
                "\nerror: {} tensors have the wrong shape: {}",
                self.misshaped.len(),
                abbreviate(&self.misshaped, 12)
            )?;
        }
        if !self.unexpected.is_empty() {
            write!(
                f,
                "\nwarning: {} tensors in the checkpoint were not used: {}",
                self.unexpected.len(),
                abbreviate(&self.unexpected, 12)
            )?;
        }
        Ok(())
    }
}

fn abbreviate(names: &[String], max: usize) -> String {
    let mut s = names
        .iter()
        .take(max)
        .map(String::as_str)
        .collect::<Vec<_>>()
        .join(", ");
    if names.len() > max {
        s.push_str(&format!(" … and {} more", names.len() - max));
    }
    s
}

/// `prefix` + `name`, with a `.` between unless `prefix` is empty or already
/// ends in one.
fn join_prefix(prefix: &str, name: &str) -> String {
    if prefix.is_empty() || prefix.ends_with('.') {
        format!("{prefix}{name}")
    } else {
        format!("{prefix}.{name}")
    }
}

/// The files (and sub-directories, with a trailing `/`) in `dir`, sorted.
fn dir_listing(dir: &Path) -> Result<Vec<String>, LoadError> {
    let rd = std::fs::read_dir(dir).map_err(|e| read_err(dir, e.to_string()))?;
    let mut out = Vec::new();
    for e in rd {
        let e = e.map_err(|e| read_err(dir, e.to_string()))?;
        let mut n = e.file_name().to_string_lossy().into_owned();
        if e.path().is_dir() {
            n.push('/');
        }
        out.push(n);
    }
    out.sort();
    Ok(out)
}

/// Reads a HF `*.index.json`: tensor name → shard file name.
fn read_index(index: &Path) -> Result<BTreeMap<String, String>, LoadError> {
    let text = std::fs::read_to_string(index).map_err(|e| read_err(index, e.to_string()))?;
    let v: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| read_err(index, format!("invalid JSON: {e}")))?;
    let map = v
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or_else(|| read_err(index, "no `weight_map` object"))?;
    let mut out = BTreeMap::new();
    for (name, shard) in map {
        let shard = shard.as_str().ok_or_else(|| {
            read_err(
                index,
                format!("`weight_map` entry for `{name}` is not a file name"),
            )
        })?;
        out.insert(name.clone(), shard.to_string());
    }
    if out.is_empty() {
        return Err(read_err(index, "`weight_map` is empty"));
    }
    Ok(out)
}

/// Shards of an index in a stable order, after checking each exists; an
/// error names the index, the shard and a tensor the index puts there.
fn index_shards(
    dir: &Path,
    index: &Path,
    map: &BTreeMap<String, String>,
) -> Result<Vec<String>, LoadError> {
    let mut shards: Vec<String> = map.values().cloned().collect();
    shards.sort();
    shards.dedup();
    for s in &shards {
        if !dir.join(s).is_file() {
            let tensor = map
                .iter()
                .find(|(_, v)| *v == s)
                .map(|(k, _)| k.as_str())
                .unwrap_or_default();
            return Err(read_err(
                index,
                format!(
                    "shard {s} (listed for tensor `{tensor}`) does not exist in {}",
                    dir.display()
                ),
            ));
        }
    }
    Ok(shards)
}

fn missing_in_shard(
    index: &Path,
    map: &BTreeMap<String, String>,
    has: impl Fn(&str, &str) -> bool,
) -> Result<(), LoadError> {
    for (tensor, shard) in map {
        if !has(shard, tensor) {
            return Err(read_err(
                index,
                format!("tensor `{tensor}` is listed in shard {shard}, which does not contain it"),
            ));
        }
    }
    Ok(())
}

impl Checkpoint {
    fn from_store(store: Store, origin: String) -> Self {
        Self {
            inner: Arc::new(Inner {
                store,
                origin,
                used: Mutex::new(BTreeSet::new()),
                missing: Mutex::new(BTreeSet::new()),
                misshaped: Mutex::new(BTreeMap::new()),
            }),
        }
    }

    /// Tensors already in memory.
    pub fn from_tensors(tensors: HashMap<String, Tensor>, origin: impl Into<String>) -> Self {
        Self::from_store(Store::Memory(tensors), origin.into())
    }

    /// One or more `.safetensors` files (shards), memory-mapped.
    pub fn from_safetensors<P: AsRef<Path>>(paths: &[P]) -> Result<Self, LoadError> {
        let origin = paths
            .iter()
            .map(|p| p.as_ref().display().to_string())
            .collect::<Vec<_>>()
            .join(", ");
        for p in paths {
            if !p.as_ref().is_file() {
                return Err(read_err(p.as_ref(), "no such file"));
            }
        }
        // SAFETY: the files are opened read-only; like every mmap-based
        // loader we rely on them not being truncated while mapped.
        let st = unsafe { MmapedSafetensors::multi(paths) }
            .map_err(|e| read_err(Path::new(&origin), e.to_string()))?;
        Ok(Self::from_store(Store::Safetensors(st), origin))
    }

    /// A PyTorch pickle checkpoint (`torch.save`), optionally the state dict
    /// under `key` (LAVIS files keep it under `"model"`).
    pub fn from_pth(path: &Path, key: Option<&str>) -> Result<Self, LoadError> {
        let p = PthTensors::new(path, key).map_err(|e| read_err(path, e.to_string()))?;
        Ok(Self::from_store(Store::Pth(p), path.display().to_string()))
    }

    /// Opens a file by extension: `.safetensors` or `.pth`/`.pt`/`.bin`.
    pub fn open(path: &Path) -> Result<Self, LoadError> {
        match path.extension().and_then(|e| e.to_str()) {
            Some("safetensors") => Self::from_safetensors(&[path]),
            Some("pth") | Some("pt") | Some("bin") => {
                // LAVIS stores {"model": state_dict}; plain files are the dict.
                match Self::from_pth(path, Some("model")) {
                    Ok(c) if !c.names().is_empty() => Ok(c),
                    _ => Self::from_pth(path, None),
                }
            }
            Some("gguf") => Err(read_err(
                path,
                "GGUF files are loaded by calico_model::gguf::load_llama_gguf",
            )),
            _ => Err(read_err(
                path,
                "expected a .safetensors, .pth, .pt or .bin file",
            )),
        }
    }

    /// A Hugging Face model directory. Looks, in this order, for
    /// `model.safetensors.index.json` (+ its shards), `model.safetensors`,
    /// `pytorch_model.bin.index.json` (+ its shards), `pytorch_model.bin`.
    /// An index must name shards that exist and hold the tensors it assigns
    /// them; errors name the index file, the shard and the tensor. A
    /// directory with none of these is an error listing what it contains
    /// (and pointing to the GGUF loader or [`Self::adapter_from_dir`] when
    /// that is what it holds).
    pub fn from_dir(dir: impl AsRef<Path>) -> Result<Self, LoadError> {
        let dir = dir.as_ref();
        if !dir.is_dir() {
            return Err(read_err(dir, "not a directory"));
        }
        let st_index = dir.join("model.safetensors.index.json");
        if st_index.is_file() {
            return Self::from_safetensors_index(dir, &st_index);
        }
        let st = dir.join("model.safetensors");
        if st.is_file() {
            return Self::from_safetensors(&[st]);
        }
        let bin_index = dir.join("pytorch_model.bin.index.json");
        if bin_index.is_file() {
            return Self::from_bin_index(dir, &bin_index);
        }
        let bin = dir.join("pytorch_model.bin");
        if bin.is_file() {
            return Self::from_pth(&bin, None);
        }
        let listing = dir_listing(dir)?;
        let contents = if listing.is_empty() {
            "it is empty".to_string()
        } else {
            format!("it contains: {}", abbreviate(&listing, 30))
        };
        let hint = if listing.iter().any(|n| n.ends_with(".gguf")) {
            "; GGUF files are loaded by calico_model::gguf::load_llama_gguf"
        } else if listing
            .iter()
            .any(|n| n == "adapter_model.safetensors" || n == "adapter_model.bin")
        {
            "; this is a PEFT adapter: read it with Checkpoint::adapter_from_dir \
             and load the base model from its own directory"
        } else {
            ""
        };
        Err(read_err(
            dir,
            format!(
                "no model.safetensors, model.safetensors.index.json, pytorch_model.bin \
                 or pytorch_model.bin.index.json; {contents}{hint}"
            ),
        ))
    }

    fn from_safetensors_index(dir: &Path, index: &Path) -> Result<Self, LoadError> {
        let map = read_index(index)?;
        let shards = index_shards(dir, index, &map)?;
        let mut names: HashMap<String, BTreeSet<String>> = HashMap::new();
        for s in &shards {
            let path = dir.join(s);
            // SAFETY: read-only mapping, as in `from_safetensors`.
            let one = unsafe { MmapedSafetensors::new(&path) }
                .map_err(|e| read_err(&path, e.to_string()))?;
            names.insert(
                s.clone(),
                one.tensors().into_iter().map(|(n, _)| n).collect(),
            );
        }
        missing_in_shard(index, &map, |s, t| names[s].contains(t))?;
        let paths: Vec<PathBuf> = shards.iter().map(|s| dir.join(s)).collect();
        let mut c = Self::from_safetensors(&paths)?;
        Arc::get_mut(&mut c.inner).expect("fresh checkpoint").origin =
            format!("{} ({} shards)", dir.display(), shards.len());
        Ok(c)
    }

    fn from_bin_index(dir: &Path, index: &Path) -> Result<Self, LoadError> {
        let map = read_index(index)?;
        let shards = index_shards(dir, index, &map)?;
        let mut pths = Vec::new();
        for s in &shards {
            let path = dir.join(s);
            pths.push(PthTensors::new(&path, None).map_err(|e| read_err(&path, e.to_string()))?);
        }
        let pos: HashMap<&str, usize> = shards
            .iter()
            .enumerate()
            .map(|(i, s)| (s.as_str(), i))
            .collect();
        missing_in_shard(index, &map, |s, t| {
            pths[pos[s]].tensor_infos().contains_key(t)
        })?;
        // Route every tensor of every shard (the index's assignment wins).
        let mut route = HashMap::new();
        for (i, p) in pths.iter().enumerate() {
            for n in p.tensor_infos().keys() {
                route.entry(n.clone()).or_insert(i);
            }
        }
        for (t, s) in &map {
            route.insert(t.clone(), pos[s.as_str()]);
        }
        Ok(Self::from_store(
            Store::PthShards {
                shards: pths,
                route,
            },
            format!("{} ({} shards)", dir.display(), shards.len()),
        ))
    }

    /// The PEFT adapter in a model directory (`adapter_model.safetensors`,
    /// else `adapter_model.bin`), or `None` when there is none. Its tensor
    /// names are PEFT's (`base_model.model.….lora_A.weight`).
    pub fn adapter_from_dir(dir: impl AsRef<Path>) -> Result<Option<Self>, LoadError> {
        let dir = dir.as_ref();
        let st = dir.join("adapter_model.safetensors");
        if st.is_file() {
            return Self::from_safetensors(&[st]).map(Some);
        }
        let bin = dir.join("adapter_model.bin");
        if bin.is_file() {
            return Self::from_pth(&bin, None).map(Some);
        }
        Ok(None)
    }

    /// Several checkpoints in one namespace: each part's tensors are named
    /// `prefix.name` (no dot is added when the prefix is empty or already
    /// ends in `.`). A name two parts would both provide is an error naming
    /// both origins. Tensors read through the merged checkpoint are also
    /// marked used in their part, and [`Self::report`] attributes used and
    /// unused tensors per part.
    pub fn merged<S: Into<String>>(parts: Vec<(S, Checkpoint)>) -> Result<Self, LoadError> {
        let mut route: HashMap<String, (usize, String)> = HashMap::new();
        let mut ps = Vec::new();
        let mut origins = Vec::new();
        for (i, (prefix, ckpt)) in parts.into_iter().enumerate() {
            let prefix: String = prefix.into();
            for n in ckpt.names() {
                let full = join_prefix(&prefix, &n);
                if let Some((j, _)) = route.get(&full) {
                    let part: &Part = &ps[*j];
                    return Err(LoadError::Duplicate {
                        name: full,
                        first: part.ckpt.inner.origin.clone(),
                        second: ckpt.inner.origin.clone(),
                    });
                }
                route.insert(full, (i, n));
            }
            origins.push(if prefix.is_empty() {
                ckpt.inner.origin.clone()
            } else {
                format!("{prefix}={}", ckpt.inner.origin)
            });
            ps.push(Part { prefix, ckpt });
        }
        Ok(Self::from_store(
            Store::Merged { parts: ps, route },
            format!("merged [{}]", origins.join(" + ")),
        ))
    }

    /// The same tensors under new names: `rename(stored)` gives a tensor's
    /// new name (return it unchanged to keep it). Two stored names renamed
    /// to one name is an error naming both. Nothing is copied; tensors read
    /// through the result are marked used in `self` too.
    ///
    /// For released files whose names differ from ours by prefix, e.g.
    /// HF InstructBLIP's `vision_model.*` → `model.vision_tower.*`
    /// ([`rename_prefixes`]).
    pub fn renamed(self, rename: impl Fn(&str) -> String) -> Result<Self, LoadError> {
        let mut to_stored: HashMap<String, String> = HashMap::new();
        for stored in self.names() {
            let new = rename(&stored);
            if let Some(first) = to_stored.get(&new) {
                return Err(LoadError::Duplicate {
                    name: new.clone(),
                    first: format!("{} (as `{first}`)", self.inner.origin),
                    second: format!("{} (as `{stored}`)", self.inner.origin),
                });
            }
            to_stored.insert(new, stored);
        }
        Ok(self.seen_as(to_stored))
    }

    /// This checkpoint seen through `to_stored` (a name → its stored name).
    fn seen_as(self, to_stored: HashMap<String, String>) -> Self {
        let origin = self.inner.origin.clone();
        Self::from_store(
            Store::Renamed {
                ckpt: self,
                to_stored,
            },
            origin,
        )
    }

    /// The same tensors but `names`, which must all be there: each one
    /// absent is an error naming it. Nothing is copied.
    ///
    /// For a weights directory's source whose tensors the directory's own
    /// files replace (`sources.json`'s `except`).
    pub fn without(self, names: &[String]) -> Result<Self, LoadError> {
        if let Some(absent) = names.iter().find(|n| !self.inner.store.contains(n)) {
            return Err(read_err(
                Path::new(&self.inner.origin),
                format!("no tensor `{absent}` to leave out"),
            ));
        }
        let dropped: std::collections::HashSet<&String> = names.iter().collect();
        let to_stored = self
            .names()
            .into_iter()
            .filter(|n| !dropped.contains(n))
            .map(|n| (n.clone(), n))
            .collect();
        Ok(self.seen_as(to_stored))
    }

    /// One tensor by its stored name, recorded as used.
    pub fn get(&self, name: &str, device: &Device) -> candle_core::Result<Tensor> {
        self.inner.load_and_mark(name, device)
    }

    /// Where the tensors come from (file, directory or merged parts).
    pub fn origin(&self) -> &str {
        &self.inner.origin
    }

    /// Every tensor name in the checkpoint.
    pub fn names(&self) -> Vec<String> {
        let mut n = self.inner.store.names();
        n.sort();
        n
    }

    /// A builder reading tensors under their own names.
    pub fn var_builder(&self, dtype: DType, device: &Device) -> VarBuilder<'static> {
        self.var_builder_mapped(None, dtype, device)
    }

    /// A builder translating each requested name through `map` first.
    pub fn var_builder_mapped(
        &self,
        map: Option<NameMap>,
        dtype: DType,
        device: &Device,
    ) -> VarBuilder<'static> {
        self.builder(map, false, dtype, device)
    }

    /// A dry-run builder: a missing tensor, or one with the wrong shape, is
    /// recorded in the report and replaced by zeros of the requested shape
    /// instead of failing, so one build lists every problem
    /// ([`LoadReport::missing`], [`LoadReport::misshaped`]). The model it
    /// builds is only good for that report: its outputs are meaningless.
    pub fn var_builder_lenient(
        &self,
        map: Option<NameMap>,
        dtype: DType,
        device: &Device,
    ) -> VarBuilder<'static> {
        self.builder(map, true, dtype, device)
    }

    fn builder(
        &self,
        map: Option<NameMap>,
        lenient: bool,
        dtype: DType,
        device: &Device,
    ) -> VarBuilder<'static> {
        let backend = Tracking {
            inner: self.inner.clone(),
            map,
            lenient,
        };
        VarBuilder::from_backend(Box::new(backend), dtype, device.clone())
    }

    fn used(&self) -> BTreeSet<String> {
        self.inner
            .used
            .lock()
            .map(|u| u.clone())
            .unwrap_or_default()
    }

    /// Tensors used so far, those nothing asked for, and names asked for
    /// that were missing.
    pub fn report(&self) -> LoadReport {
        let used = self.used();
        let unexpected = self
            .names()
            .into_iter()
            .filter(|n| !used.contains(n))
            .collect();
        let missing = self
            .inner
            .missing
            .lock()
            .map(|m| m.iter().cloned().collect())
            .unwrap_or_default();
        let misshaped = self
            .inner
            .misshaped
            .lock()
            .map(|m| m.iter().map(|(k, v)| format!("{k}: {v}")).collect())
            .unwrap_or_default();
        let parts = match &self.inner.store {
            Store::Merged { parts, route } => {
                let mut reps: Vec<PartReport> = parts
                    .iter()
                    .map(|p| PartReport {
                        prefix: p.prefix.clone(),
                        origin: p.ckpt.inner.origin.clone(),
                        loaded: Vec::new(),
                        unexpected: Vec::new(),
                    })
                    .collect();
                let mut names: Vec<&String> = route.keys().collect();
                names.sort();
                for n in names {
                    let r = &mut reps[route[n].0];
                    if used.contains(n) {
                        r.loaded.push(n.clone());
                    } else {
                        r.unexpected.push(n.clone());
                    }
                }
                reps
            }
            _ => Vec::new(),
        };
        LoadReport {
            origin: self.inner.origin.clone(),
            loaded: used.into_iter().collect(),
            unexpected,
            missing,
            misshaped,
            parts,
        }
    }

    /// Forgets which tensors were used or missing (to build a second model
    /// from the same checkpoint and report on it separately).
    pub fn reset_report(&self) {
        if let Ok(mut u) = self.inner.used.lock() {
            u.clear();
        }
        if let Ok(mut m) = self.inner.missing.lock() {
            m.clear();
        }
        if let Ok(mut m) = self.inner.misshaped.lock() {
            m.clear();
        }
        match &self.inner.store {
            Store::Merged { parts, .. } => {
                for p in parts {
                    p.ckpt.reset_report();
                }
            }
            Store::Renamed { ckpt, .. } => ckpt.reset_report(),
            _ => {}
        }
    }
}

struct Tracking {
    inner: Arc<Inner>,
    map: Option<NameMap>,
    lenient: bool,
}

impl Tracking {
    fn resolve(&self, name: &str) -> candle_core::Result<String> {
        let stored = match &self.map {
            None => Some(name.to_string()),
            Some(m) => m(name),
        };
        match stored {
            Some(s) if self.inner.store.contains(&s) => Ok(s),
            Some(s) => {
                let via = if s == name {
                    String::new()
                } else {
                    format!(" (looked up as `{s}`)")
                };
                Err(candle_core::Error::Msg(format!(
                    "checkpoint {} has no tensor `{name}`{via}",
                    self.inner.origin
                )))
            }
            None => Err(candle_core::Error::Msg(format!(
                "checkpoint {}: tensor `{name}` has no counterpart in this checkpoint's naming scheme",
                self.inner.origin
            ))),
        }
    }

    /// Resolves `name`, recording it as missing when that fails.
    fn resolve_recorded(&self, name: &str) -> candle_core::Result<String> {
        self.resolve(name).inspect_err(|_| {
            if let Ok(mut m) = self.inner.missing.lock() {
                m.insert(name.to_string());
            }
        })
    }

    fn fetch(
        &self,
        name: &str,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<(Tensor, String)> {
        let stored = self.resolve_recorded(name)?;
        let t = self.inner.load_and_mark(&stored, dev)?.to_dtype(dtype)?;
        Ok((t, stored))
    }
}

impl SimpleBackend for Tracking {
    fn get(
        &self,
        s: Shape,
        name: &str,
        _h: Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        let stored = match self.resolve_recorded(name) {
            Ok(x) => x,
            Err(_) if self.lenient => return Tensor::zeros(s, dtype, dev),
            Err(e) => return Err(e),
        };
        let t = self.inner.load_and_mark(&stored, dev)?.to_dtype(dtype)?;
        if t.shape() != &s {
            if self.lenient {
                if let Ok(mut m) = self.inner.misshaped.lock() {
                    m.insert(
                        name.to_string(),
                        format!("checkpoint {:?}, model {:?}", t.dims(), s.dims()),
                    );
                }
                return Tensor::zeros(s, dtype, dev);
            }
            let via = if stored == name {
                String::new()
            } else {
                format!(" (stored as `{stored}`)")
            };
            return Err(candle_core::Error::Msg(format!(
                "checkpoint {}: tensor `{name}`{via} has shape {:?}, the model expects {:?}",
                self.inner.origin,
                t.dims(),
                s.dims()
            )));
        }
        Ok(t)
    }

    fn get_unchecked(&self, name: &str, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        Ok(self.fetch(name, dtype, dev)?.0)
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.resolve(name).is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ckpt() -> Checkpoint {
        let dev = Device::Cpu;
        let mut m = HashMap::new();
        m.insert(
            "a.weight".to_string(),
            Tensor::zeros((2, 3), DType::F32, &dev).unwrap(),
        );
        m.insert(
            "a.bias".to_string(),
            Tensor::zeros(2, DType::F32, &dev).unwrap(),
        );
        m.insert(
            "extra".to_string(),
            Tensor::zeros(1, DType::F32, &dev).unwrap(),
        );
        Checkpoint::from_tensors(m, "test.safetensors")
    }

    #[test]
    fn reports_used_and_unexpected_tensors() {
        let c = ckpt();
        let vb = c.var_builder(DType::F32, &Device::Cpu);
        calico_nn::Linear::new(3, 2, true, vb.pp("a")).unwrap();
        let r = c.report();
        assert_eq!(r.loaded, vec!["a.bias", "a.weight"]);
        assert_eq!(r.unexpected, vec!["extra"]);
        assert!(r
            .to_string()
            .contains("1 tensors in the checkpoint were not used: extra"));
    }

    #[test]
    fn missing_and_misshaped_tensors_name_the_tensor_and_shapes() {
        let c = ckpt();
        let vb = c.var_builder(DType::F32, &Device::Cpu);
        let e = calico_nn::Linear::new(4, 2, true, vb.pp("a"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("`a.weight`") && e.contains("[2, 3]") && e.contains("[2, 4]"),
            "{e}"
        );
        let e = calico_nn::Linear::new(3, 2, true, vb.pp("b"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("no tensor `b.weight`"), "{e}");
    }

    #[test]
    fn name_maps_translate_lookups() {
        let c = ckpt();
        let map: NameMap = Arc::new(|n: &str| Some(n.replacen("proj.", "a.", 1)));
        let vb = c.var_builder_mapped(Some(map), DType::F32, &Device::Cpu);
        calico_nn::Linear::new(3, 2, true, vb.pp("proj")).unwrap();
        assert_eq!(c.report().unexpected, vec!["extra"]);
        let e = calico_nn::Linear::new(3, 2, true, vb.pp("other"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("other.weight"), "{e}");
    }
}
