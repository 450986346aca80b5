//! LLaMA-family weights from llama.cpp GGUF files.
//!
//! A GGUF file holds the model's hyper-parameters as metadata (`llama.*`
//! keys), its tokenizer (`tokenizer.*`, see [`crate::tokenizer`]) and its
//! tensors under llama.cpp's names, most of them block-quantised.
//! [`load_llama_gguf`] turns one into what the rest of the crate expects:
//! a [`LlamaConfig`] and a [`Checkpoint`] of float32 tensors under HF
//! transformers' names, so `Llama::new(&cfg, ckpt.var_builder(..))` builds the
//! model exactly as from a `model.safetensors`.
//!
//! [`load_llama_gguf`] dequantises every tensor once, at load (candle's
//! dequantisation is bit-for-bit the same as gguf-py's for every type in
//! [`SUPPORTED_TYPES`]; the tests check each one).
//! [`load_llama_gguf_quantized`] instead keeps the seven projections of each
//! layer in their block-quantised types, for inference in a fraction of the
//! memory (a 7B LLM's projections take 3.6 GB in Q4_K instead of 25.9 GB in
//! float32); the token embeddings, the output head and the norms are still
//! dequantised.
//!
//! llama.cpp's converter reorders the rows of the query and key projections
//! so that its rotary embedding can rotate neighbouring pairs; the loader
//! puts them back in HF order (the half-split rotation), per head, with the
//! key-value head count for the key weights. Quantised blocks run along a
//! row, so a quantised weight's rows are moved whole, as bytes.

use std::collections::HashMap;
use std::fs::File;
use std::io::BufReader;
use std::path::Path;

use calico_nn::qrows::{is_float, RowLayout};
use candle_core::quantized::gguf_file::{Content, Value};
use candle_core::quantized::{ggml_file, GgmlDType, QTensor};
use candle_core::{Device, Tensor};

use crate::llama::{LlamaConfig, QuantizedWeights};
use crate::Checkpoint;

/// Storage types the loader dequantises (each checked against gguf-py).
pub const SUPPORTED_TYPES: &[GgmlDType] = &[
    GgmlDType::F32,
    GgmlDType::F16,
    GgmlDType::BF16,
    GgmlDType::Q4_0,
    GgmlDType::Q4_1,
    GgmlDType::Q5_0,
    GgmlDType::Q5_1,
    GgmlDType::Q8_0,
    GgmlDType::Q2K,
    GgmlDType::Q3K,
    GgmlDType::Q4K,
    GgmlDType::Q5K,
    GgmlDType::Q6K,
];

fn err(path: &Path, msg: impl std::fmt::Display) -> candle_core::Error {
    candle_core::Error::Msg(format!("{}: {msg}", path.display()))
}

/// An opened GGUF file: its metadata and tensor directory (tensor data is
/// read on demand).
pub struct GgufFile {
    path: std::path::PathBuf,
    content: Content,
    reader: BufReader<File>,
}

impl GgufFile {
    /// Reads the header, metadata and tensor directory of `path`.
    pub fn open(path: impl AsRef<Path>) -> candle_core::Result<Self> {
        let path = path.as_ref();
        let file = File::open(path).map_err(|e| err(path, format!("cannot open: {e}")))?;
        let mut reader = BufReader::new(file);
        let content = Content::read(&mut reader)
            .map_err(|e| err(path, format!("not a readable GGUF file: {e}")))?;
        Ok(Self {
            path: path.to_path_buf(),
            content,
            reader,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// All metadata (`general.*`, `llama.*`, `tokenizer.*`, ...).
    pub fn metadata(&self) -> &HashMap<String, Value> {
        &self.content.metadata
    }

    /// A metadata value, or an error naming the file and the key.
    pub fn get(&self, key: &str) -> candle_core::Result<&Value> {
        self.content
            .metadata
            .get(key)
            .ok_or_else(|| err(&self.path, format!("missing metadata key `{key}`")))
    }

    /// A metadata string.
    pub fn get_str(&self, key: &str) -> candle_core::Result<&str> {
        self.get(key)?
            .to_string()
            .map(String::as_str)
            .map_err(|e| err(&self.path, format!("metadata `{key}`: {e}")))
    }

    /// A non-negative integer of any GGUF integer width.
    pub fn get_usize(&self, key: &str) -> candle_core::Result<usize> {
        let v = self.get(key)?;
        let n = match v {
            Value::U8(x) => Some(*x as i128),
            Value::I8(x) => Some(*x as i128),
            Value::U16(x) => Some(*x as i128),
            Value::I16(x) => Some(*x as i128),
            Value::U32(x) => Some(*x as i128),
            Value::I32(x) => Some(*x as i128),
            Value::U64(x) => Some(*x as i128),
            Value::I64(x) => Some(*x as i128),
            _ => None,
        };
        match n {
            Some(n) if n >= 0 => Ok(n as usize),
            _ => Err(err(
                &self.path,
                format!("metadata `{key}` should be a non-negative integer, found {v:?}"),
            )),
        }
    }

    /// A float. A float32 value is read as the shortest decimal that rounds
    /// to it (`1e-5`, not `9.999999747378752e-6`), the number the converter
    /// was given.
    pub fn get_f64(&self, key: &str) -> candle_core::Result<f64> {
        match self.get(key)? {
            Value::F32(x) => Ok(x.to_string().parse::<f64>().unwrap_or(*x as f64)),
            Value::F64(x) => Ok(*x),
            v => Err(err(
                &self.path,
                format!("metadata `{key}` should be a float, found {v:?}"),
            )),
        }
    }

    /// A metadata array of strings.
    pub fn get_str_array(&self, key: &str) -> candle_core::Result<Vec<&str>> {
        let arr = self
            .get(key)?
            .to_vec()
            .map_err(|e| err(&self.path, format!("metadata `{key}`: {e}")))?;
        arr.iter()
            .map(|v| {
                v.to_string().map(String::as_str).map_err(|_| {
                    err(
                        &self.path,
                        format!("metadata `{key}` should hold strings, found {v:?}"),
                    )
                })
            })
            .collect()
    }

    /// A metadata array of integers (e.g. `tokenizer.ggml.token_type`).
    pub fn get_i64_array(&self, key: &str) -> candle_core::Result<Vec<i64>> {
        let arr = self
            .get(key)?
            .to_vec()
            .map_err(|e| err(&self.path, format!("metadata `{key}`: {e}")))?;
        arr.iter()
            .map(|v| match v {
                Value::U8(x) => Ok(*x as i64),
                Value::I8(x) => Ok(*x as i64),
                Value::U16(x) => Ok(*x as i64),
                Value::I16(x) => Ok(*x as i64),
                Value::U32(x) => Ok(*x as i64),
                Value::I32(x) => Ok(*x as i64),
                Value::U64(x) => Ok(*x as i64),
                Value::I64(x) => Ok(*x),
                v => Err(err(
                    &self.path,
                    format!("metadata `{key}` should hold integers, found {v:?}"),
                )),
            })
            .collect()
    }

    /// Tensor names in the file (sorted).
    pub fn tensor_names(&self) -> Vec<String> {
        let mut n: Vec<String> = self.content.tensor_infos.keys().cloned().collect();
        n.sort();
        n
    }

    pub fn has_tensor(&self, name: &str) -> bool {
        self.content.tensor_infos.contains_key(name)
    }

    /// Storage type and shape (row-major, outermost first) of a tensor.
    pub fn tensor_info(&self, name: &str) -> candle_core::Result<(GgmlDType, Vec<usize>)> {
        let info = self
            .content
            .tensor_infos
            .get(name)
            .ok_or_else(|| err(&self.path, format!("missing tensor `{name}`")))?;
        Ok((info.ggml_dtype, info.shape.dims().to_vec()))
    }

    /// A tensor dequantised to float32 (on the CPU), in llama.cpp's layout.
    pub fn dequantize(&mut self, name: &str) -> candle_core::Result<Tensor> {
        self.read(name, &Device::Cpu)?.dequantize(&Device::Cpu)
    }

    /// A tensor in its stored type, on `device`, in llama.cpp's layout.
    pub fn read(&mut self, name: &str, device: &Device) -> candle_core::Result<QTensor> {
        let (dtype, _) = self.tensor_info(name)?;
        if !SUPPORTED_TYPES.contains(&dtype) {
            return Err(err(
                &self.path,
                format!(
                    "tensor `{name}` is stored as {dtype:?}, which this loader does not support \
                     (supported: {})",
                    supported_list()
                ),
            ));
        }
        self.content
            .tensor(&mut self.reader, name, device)
            .map_err(|e| err(&self.path, format!("reading tensor `{name}`: {e}")))
    }
}

fn supported_list() -> String {
    SUPPORTED_TYPES
        .iter()
        .map(|t| format!("{t:?}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Whole-model tensors: (llama.cpp name, HF name).
const MODEL_NAMES: [(&str, &str); 3] = [
    ("token_embd.weight", "model.embed_tokens.weight"),
    ("output_norm.weight", "model.norm.weight"),
    ("output.weight", "lm_head.weight"),
];

/// A layer's modules: (llama.cpp name in `blk.N.`, HF name in
/// `model.layers.N.`); the seven projections first, then the two norms.
const LAYER_NAMES: [(&str, &str); 9] = [
    ("attn_q", "self_attn.q_proj"),
    ("attn_k", "self_attn.k_proj"),
    ("attn_v", "self_attn.v_proj"),
    ("attn_output", "self_attn.o_proj"),
    ("ffn_gate", "mlp.gate_proj"),
    ("ffn_up", "mlp.up_proj"),
    ("ffn_down", "mlp.down_proj"),
    ("attn_norm", "input_layernorm"),
    ("ffn_norm", "post_attention_layernorm"),
];

/// The HF transformers name of a llama.cpp LLaMA tensor, or `None` for a
/// name outside the LLaMA scheme.
pub fn hf_name(gguf_name: &str) -> Option<String> {
    if let Some((_, hf)) = MODEL_NAMES.iter().find(|(g, _)| *g == gguf_name) {
        return Some(hf.to_string());
    }
    let rest = gguf_name.strip_prefix("blk.")?;
    let (layer, rest) = rest.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    let (part, kind) = rest.rsplit_once('.')?;
    let (_, hf) = LAYER_NAMES.iter().find(|(g, _)| *g == part)?;
    Some(format!("model.layers.{layer}.{hf}.{kind}"))
}

/// The llama.cpp name of an HF LLaMA tensor ([`hf_name`]'s inverse), or
/// `None` for a name outside the scheme (LoRA adapters, other modules).
pub fn gguf_name(hf: &str) -> Option<String> {
    if let Some((g, _)) = MODEL_NAMES.iter().find(|(_, h)| *h == hf) {
        return Some(g.to_string());
    }
    let rest = hf.strip_prefix("model.layers.")?;
    let (layer, rest) = rest.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    let (part, kind) = rest.rsplit_once('.')?;
    if kind != "weight" && kind != "bias" {
        return None;
    }
    let (gg, _) = LAYER_NAMES.iter().find(|(_, h)| *h == part)?;
    Some(format!("blk.{layer}.{gg}.{kind}"))
}

/// The row order that turns a query/key projection of shape `dims` (rows =
/// `heads` × head width) from llama.cpp's order into HF's (`to_hf`) or back:
/// row `r` of the result is row `order[r]` of the input. Within each head,
/// llama.cpp stores rows as interleaved pairs (0, d/2, 1, d/2+1, …); HF stores
/// the two halves one after the other.
fn qk_row_order(dims: &[usize], heads: usize, to_hf: bool) -> candle_core::Result<Vec<usize>> {
    let rows = dims.first().copied().unwrap_or(0);
    if heads == 0 || !rows.is_multiple_of(2 * heads) {
        let verb = if to_hf { "unpermute" } else { "permute" };
        candle_core::bail!(
            "cannot {verb} {rows} rows into {heads} heads of an even width (shape {dims:?})"
        );
    }
    let half = rows / heads / 2;
    Ok((0..rows)
        .map(|r| {
            let (head, within) = (r / (2 * half), r % (2 * half));
            let base = head * 2 * half;
            if to_hf {
                // HF row (half `pair`, index `k`) ← llama.cpp row 2k + pair.
                let (pair, k) = (within / half, within % half);
                base + 2 * k + pair
            } else {
                // llama.cpp row 2k + pair ← HF row pair·half + k.
                let (k, pair) = (within / 2, within % 2);
                base + pair * half + k
            }
        })
        .collect())
}

/// `w`'s rows (dimension 0) in `order`.
fn reorder_rows(w: &Tensor, order: Vec<usize>) -> candle_core::Result<Tensor> {
    let n = order.len();
    let ids: Vec<u32> = order.into_iter().map(|i| i as u32).collect();
    w.index_select(&Tensor::from_vec(ids, n, w.device())?, 0)
}

/// llama.cpp's row order for an HF query/key projection ([`unpermute_qk`]'s
/// inverse), as its converter writes it.
pub fn permute_qk(w: &Tensor, heads: usize) -> candle_core::Result<Tensor> {
    reorder_rows(w, qk_row_order(w.dims(), heads, false)?)
}

/// Undoes llama.cpp's row permutation of a query/key projection (weight
/// `(heads·head_dim, in)` or bias `(heads·head_dim,)`): within each head,
/// llama.cpp stores rows as interleaved pairs (0, d/2, 1, d/2+1, …); HF stores
/// the two halves one after the other.
pub fn unpermute_qk(w: &Tensor, heads: usize) -> candle_core::Result<Tensor> {
    reorder_rows(w, qk_row_order(w.dims(), heads, true)?)
}

/// [`unpermute_qk`] on a block-quantised weight: its rows are moved whole
/// (as bytes), so the blocks are neither dequantised nor re-quantised.
pub fn unpermute_qk_quantized(
    w: &QTensor,
    heads: usize,
    device: &Device,
) -> candle_core::Result<QTensor> {
    let layout = RowLayout::of(w)?;
    let data = layout.data(w)?;
    let dims = [layout.rows, layout.cols];
    let mut out = Vec::with_capacity(data.len());
    for src in qk_row_order(&dims, heads, true)? {
        out.extend_from_slice(layout.rows_of(&data, src, 1));
    }
    ggml_file::qtensor_from_ggml(layout.dtype, &out, dims.to_vec(), device)
}

/// The LLaMA hyper-parameters in a GGUF file's metadata. `vocab_size` is the
/// length of the token list (else `llama.vocab_size`, else the embedding's
/// rows); embeddings are tied when the file has no `output.weight`.
pub fn llama_config(file: &GgufFile) -> candle_core::Result<LlamaConfig> {
    let arch = file.get_str("general.architecture")?;
    if arch != "llama" {
        return Err(err(
            file.path(),
            format!("general.architecture is `{arch}`, expected `llama`"),
        ));
    }
    let hidden_size = file.get_usize("llama.embedding_length")?;
    let num_attention_heads = file.get_usize("llama.attention.head_count")?;
    let num_key_value_heads = if file
        .metadata()
        .contains_key("llama.attention.head_count_kv")
    {
        Some(file.get_usize("llama.attention.head_count_kv")?)
    } else {
        None
    };
    if num_attention_heads == 0 || hidden_size % num_attention_heads != 0 {
        return Err(err(
            file.path(),
            format!("embedding_length {hidden_size} is not a multiple of head_count {num_attention_heads}"),
        ));
    }
    // An explicit per-head width only when it differs from hidden/heads.
    let head_dim = match file.metadata().contains_key("llama.attention.key_length") {
        true => Some(file.get_usize("llama.attention.key_length")?)
            .filter(|&d| d != hidden_size / num_attention_heads),
        false => None,
    };
    let vocab_size = if file.metadata().contains_key("tokenizer.ggml.tokens") {
        file.get("tokenizer.ggml.tokens")?
            .to_vec()
            .map_err(|e| err(file.path(), e))?
            .len()
    } else if file.metadata().contains_key("llama.vocab_size") {
        file.get_usize("llama.vocab_size")?
    } else {
        file.tensor_info("token_embd.weight")?.1[0]
    };
    let opt_id = |key: &str| -> candle_core::Result<Option<u32>> {
        match file.metadata().contains_key(key) {
            true => Ok(Some(file.get_usize(key)? as u32)),
            false => Ok(None),
        }
    };
    // Plain RoPE over the whole head is all the model implements.
    if file.metadata().contains_key("llama.rope.scaling.type") {
        let kind = file.get_str("llama.rope.scaling.type")?;
        if kind != "none" {
            return Err(err(
                file.path(),
                format!("llama.rope.scaling.type is `{kind}`; only unscaled RoPE is supported"),
            ));
        }
    }
    let head_width = head_dim.unwrap_or(hidden_size / num_attention_heads);
    if file.metadata().contains_key("llama.rope.dimension_count") {
        let rot = file.get_usize("llama.rope.dimension_count")?;
        if rot != head_width {
            return Err(err(
                file.path(),
                format!("llama.rope.dimension_count is {rot}, the head width {head_width}; partial RoPE is not supported"),
            ));
        }
    }
    // Start from a preset so fields this format says nothing about keep
    // their defaults (SiLU, plain RoPE), then fill in everything it states.
    let mut cfg = LlamaConfig::vicuna_7b();
    cfg.vocab_size = vocab_size;
    cfg.hidden_size = hidden_size;
    cfg.intermediate_size = file.get_usize("llama.feed_forward_length")?;
    cfg.num_hidden_layers = file.get_usize("llama.block_count")?;
    cfg.num_attention_heads = num_attention_heads;
    cfg.num_key_value_heads = num_key_value_heads;
    cfg.head_dim = head_dim;
    cfg.rms_norm_eps = file.get_f64("llama.attention.layer_norm_rms_epsilon")?;
    if file.metadata().contains_key("llama.rope.freq_base") {
        cfg.rope_theta = file.get_f64("llama.rope.freq_base")?;
    }
    cfg.max_position_embeddings = file.get_usize("llama.context_length")?;
    cfg.tie_word_embeddings = !file.has_tensor("output.weight");
    cfg.attention_bias = file.has_tensor("blk.0.attn_q.bias");
    cfg.mlp_bias = file.has_tensor("blk.0.ffn_up.bias");
    cfg.bos_token_id = opt_id("tokenizer.ggml.bos_token_id")?;
    cfg.eos_token_id = opt_id("tokenizer.ggml.eos_token_id")?;
    Ok(cfg)
}

/// Loads a LLaMA-family GGUF file: its config and every tensor dequantised
/// to float32 under its HF name (q/k rows in HF order), on `device`.
///
/// Errors name the file and the missing metadata key or tensor; a tensor in
/// an unsupported storage type names the type and lists the supported ones.
/// A tied model (no `output.weight`) has no `lm_head.weight` in the
/// checkpoint; the model reads `model.embed_tokens.weight` for it.
pub fn load_llama_gguf(
    path: impl AsRef<Path>,
    device: &Device,
) -> candle_core::Result<(LlamaConfig, Checkpoint)> {
    let (cfg, ckpt, _) = load(path.as_ref(), device, None)?;
    Ok((cfg, ckpt))
}

/// Like [`load_llama_gguf`], but each layer's seven projection weights
/// (`q/k/v/o_proj`, `gate/up/down_proj`) and the vocabulary tables
/// (`model.embed_tokens.weight`, `lm_head.weight`) stored in a
/// block-quantised type are returned as [`QuantizedWeights`] in that type
/// (q/k rows in HF order) instead of being dequantised into the checkpoint;
/// the model reads them through `Llama::new_quantized`. Tensors stored as
/// F32, F16 or BF16 are dequantised as before.
pub fn load_llama_gguf_quantized(
    path: impl AsRef<Path>,
    device: &Device,
    matmul: calico_nn::QuantizedMatmul,
) -> candle_core::Result<(LlamaConfig, Checkpoint, QuantizedWeights)> {
    load(path.as_ref(), device, Some(matmul))
}

/// Whether a llama.cpp tensor name is a weight of one of a layer's seven
/// projections (`attn_q`, `attn_k`, `attn_v`, `attn_output`, `ffn_gate`,
/// `ffn_up`, `ffn_down`), which
/// [`load_llama_gguf_quantized`] keeps quantised.
pub fn is_projection(gguf_name: &str) -> bool {
    LAYER_NAMES[..7]
        .iter()
        .any(|(p, _)| gguf_name.ends_with(&format!(".{p}.weight")))
}

/// Whether a llama.cpp tensor name is one of the vocabulary tables
/// (`token_embd.weight`, `output.weight`), which
/// [`load_llama_gguf_quantized`] also keeps quantised: the embedding is read
/// row by row and the output head chunk by chunk (`calico_nn::QuantizedTable`).
pub fn is_vocab_table(gguf_name: &str) -> bool {
    gguf_name == MODEL_NAMES[0].0 || gguf_name == MODEL_NAMES[2].0
}

fn load(
    path: &Path,
    device: &Device,
    keep_quantized: Option<calico_nn::QuantizedMatmul>,
) -> candle_core::Result<(LlamaConfig, Checkpoint, QuantizedWeights)> {
    let mut file = GgufFile::open(path)?;
    let cfg = llama_config(&file)?;
    let names = file.tensor_names();
    // The per-layer tensors the model needs must all be there.
    let mut required = vec!["token_embd.weight".to_string(), "output_norm.weight".into()];
    for i in 0..cfg.num_hidden_layers {
        for (part, _) in LAYER_NAMES {
            required.push(format!("blk.{i}.{part}.weight"));
        }
    }
    if let Some(missing) = required.iter().find(|n| !file.has_tensor(n)) {
        return Err(err(file.path(), format!("missing tensor `{missing}`")));
    }
    let mut tensors = HashMap::with_capacity(names.len());
    let mut quantized = QuantizedWeights {
        matmul: keep_quantized.unwrap_or_default(),
        ..Default::default()
    };
    for name in &names {
        let Some(hf) = hf_name(name) else {
            // rope_freqs and the like are computed by the model; anything
            // else is kept under its own name so the load report shows it.
            if name == "rope_freqs.weight" {
                continue;
            }
            let t = file.dequantize(name)?;
            tensors.insert(name.clone(), t.to_device(device)?);
            continue;
        };
        let heads = if name.contains(".attn_q.") {
            Some(cfg.num_attention_heads)
        } else if name.contains(".attn_k.") {
            Some(cfg.kv_heads())
        } else {
            None
        };
        let file_path = file.path().to_path_buf();
        let in_context = |e: candle_core::Error| err(&file_path, format!("tensor `{name}`: {e}"));
        let (dtype, _) = file.tensor_info(name)?;
        let keep = is_projection(name) || is_vocab_table(name);
        if keep_quantized.is_some() && keep && !is_float(dtype) {
            let mut q = file.read(name, device)?;
            if let Some(h) = heads {
                q = unpermute_qk_quantized(&q, h, device).map_err(in_context)?;
            }
            quantized.tensors.insert(hf, std::sync::Arc::new(q));
            continue;
        }
        let mut t = file.dequantize(name)?;
        if let Some(h) = heads {
            t = unpermute_qk(&t, h).map_err(in_context)?;
        }
        tensors.insert(hf, t.to_device(device)?);
    }
    let origin = file.path().display().to_string();
    Ok((cfg, Checkpoint::from_tensors(tensors, origin), quantized))
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::quantized::{gguf_file, QTensor};

    /// A minimal one-layer LLaMA GGUF in `name` under the temp dir, with
    /// `drop_key` left out of the metadata, `drop_tensor` left out of the
    /// tensors and every projection stored as `proj`.
    fn tiny_file(
        name: &str,
        drop_key: &str,
        drop_tensor: &str,
        proj: GgmlDType,
    ) -> std::path::PathBuf {
        let dir =
            std::env::temp_dir().join(format!("calico-gguf-test-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(name);
        let md: Vec<(&str, Value)> = vec![
            ("general.architecture", Value::String("llama".into())),
            ("llama.block_count", Value::U32(1)),
            ("llama.context_length", Value::U32(64)),
            ("llama.embedding_length", Value::U32(32)),
            ("llama.feed_forward_length", Value::U32(64)),
            ("llama.attention.head_count", Value::U32(2)),
            ("llama.attention.head_count_kv", Value::U32(1)),
            ("llama.attention.layer_norm_rms_epsilon", Value::F32(1e-5)),
            ("llama.vocab_size", Value::U32(32)),
        ];
        let dev = Device::Cpu;
        // Distinct values per row, so that a row moved wrongly shows.
        let q = |r: usize, c: usize, t: GgmlDType| {
            let v: Vec<f32> = (0..r * c)
                .map(|i| ((i * 7919 + r) % 101) as f32 / 50.0 - 1.0)
                .collect();
            QTensor::quantize(&Tensor::from_vec(v, (r, c), &dev).unwrap(), t).unwrap()
        };
        let norm = || {
            QTensor::quantize(&Tensor::ones(32, DType::F32, &dev).unwrap(), GgmlDType::F32).unwrap()
        };
        let mut ts: Vec<(String, QTensor)> = vec![
            ("token_embd.weight".into(), q(32, 32, GgmlDType::Q8_0)),
            ("output_norm.weight".into(), norm()),
        ];
        for (part, r, c) in [
            ("attn_q", 32, 32),
            ("attn_k", 16, 32),
            ("attn_v", 16, 32),
            ("attn_output", 32, 32),
            ("ffn_gate", 64, 32),
            ("ffn_up", 64, 32),
            ("ffn_down", 32, 64),
        ] {
            ts.push((format!("blk.0.{part}.weight"), q(r, c, proj)));
        }
        for part in ["attn_norm", "ffn_norm"] {
            ts.push((format!("blk.0.{part}.weight"), norm()));
        }
        let md: Vec<(&str, &Value)> = md
            .iter()
            .filter(|(k, _)| *k != drop_key)
            .map(|(k, v)| (*k, v))
            .collect();
        let ts: Vec<(&str, &QTensor)> = ts
            .iter()
            .filter(|(k, _)| k != drop_tensor)
            .map(|(k, v)| (k.as_str(), v))
            .collect();
        let mut f = std::fs::File::create(&path).unwrap();
        gguf_file::write(&mut f, &md, &ts).unwrap();
        path
    }

    use calico_nn::QuantizedMatmul;
    use candle_core::DType;

    #[test]
    fn quantized_projections_keep_their_blocks_in_hf_row_order() {
        use crate::llama::Llama;
        let dev = Device::Cpu;
        // (Rows of 32 values: one block; candle checks Q4_1 rows of two or more.)
        for proj in [GgmlDType::Q8_0, GgmlDType::Q4_0, GgmlDType::F16] {
            let path = tiny_file(&format!("q-{proj:?}.gguf"), "", "", proj);
            let (cfg, dense) = load_llama_gguf(&path, &dev).unwrap();
            let (qcfg, rest, mut quantized) =
                load_llama_gguf_quantized(&path, &dev, QuantizedMatmul::Q8).unwrap();
            assert_eq!(qcfg, cfg);
            if proj == GgmlDType::F16 {
                // Float projections are dequantised as before; the Q8_0
                // embedding alone stays quantised.
                let kept: Vec<&String> = quantized.tensors.keys().collect();
                assert_eq!(kept, ["model.embed_tokens.weight"]);
                assert_eq!(rest.names().len() + 1, dense.names().len());
                cleanup(&path);
                continue;
            }
            // The seven projections and the (tied) Q8_0 token embedding.
            assert_eq!(quantized.len(), 8, "{proj:?}");
            assert_eq!(rest.names().len() + 8, dense.names().len());
            for (name, q) in &quantized.tensors {
                let stored = match name.as_str() {
                    "model.embed_tokens.weight" => GgmlDType::Q8_0,
                    _ => proj,
                };
                assert_eq!(q.dtype(), stored, "{name}");
                // Same blocks, same rows: dequantising gives the float
                // loader's tensor exactly (q/k rows included).
                let want = dense.get(name, &dev).unwrap();
                let got = q.dequantize(&dev).unwrap();
                assert_eq!(
                    calico_nn::testing::max_abs_diff(&got, &want),
                    0.0,
                    "{proj:?} {name}"
                );
            }
            let ids = Tensor::new(&[[1u32, 5, 9, 30]], &dev).unwrap();
            let m = Llama::new(&cfg, dense.var_builder(DType::F32, &dev)).unwrap();
            let want = m.forward(&ids, None).unwrap();
            for matmul in QuantizedMatmul::ALL {
                quantized.matmul = matmul;
                let vb = rest.var_builder(DType::F32, &dev);
                let mq = Llama::new_quantized(&cfg, vb, &quantized).unwrap();
                let got = mq.forward(&ids, None).unwrap();
                let diff = calico_nn::testing::max_rel_diff(&got, &want);
                let bound = match matmul {
                    QuantizedMatmul::Dequantize => 1e-5,
                    QuantizedMatmul::Q8 => 0.05,
                };
                assert!(
                    diff < bound,
                    "{proj:?} {matmul:?}: logits differ by {diff} (rel)"
                );
            }
            cleanup(&path);
        }
    }

    #[test]
    fn quantized_rows_move_as_unpermute_qk_moves_float_rows() {
        let dev = Device::Cpu;
        let w: Vec<f32> = (0..16 * 32).map(|i| (i % 37) as f32 - 18.0).collect();
        let w = Tensor::from_vec(w, (16, 32), &dev).unwrap();
        let q = QTensor::quantize(&w, GgmlDType::Q8_0).unwrap();
        let want = unpermute_qk(&q.dequantize(&dev).unwrap(), 2).unwrap();
        let moved = unpermute_qk_quantized(&q, 2, &dev).unwrap();
        let got = moved.dequantize(&dev).unwrap();
        assert_eq!(calico_nn::testing::max_abs_diff(&got, &want), 0.0);
        let e = unpermute_qk_quantized(&q, 3, &dev).unwrap_err().to_string();
        assert!(e.contains("cannot unpermute 16 rows into 3 heads"), "{e}");
    }

    fn cleanup(path: &Path) {
        std::fs::remove_file(path).ok();
        std::fs::remove_dir(path.parent().unwrap()).ok();
    }

    fn load_err(path: impl AsRef<Path>) -> String {
        match load_llama_gguf(path, &Device::Cpu) {
            Ok(_) => panic!("expected a load error"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn loads_a_minimal_file() {
        let path = tiny_file("ok.gguf", "", "", GgmlDType::Q4_1);
        let (cfg, ckpt) = load_llama_gguf(&path, &Device::Cpu).unwrap();
        assert_eq!(
            (cfg.hidden_size, cfg.kv_heads(), cfg.vocab_size),
            (32, 1, 32)
        );
        assert_eq!(cfg.rms_norm_eps, 1e-5);
        assert!(cfg.tie_word_embeddings);
        assert_eq!(ckpt.names().len(), 11);
        cleanup(&path);
    }

    #[test]
    fn init_checks_the_llm_against_the_config_from_the_header() {
        use crate::calico::weights::check_gguf_llm;
        let path = tiny_file("llm.bin", "", "", GgmlDType::Q8_0);
        let mut cfg = crate::config::CalicoConfig::preset("tiny").unwrap();
        let e = check_gguf_llm(&cfg, &path).unwrap_err().to_string();
        assert!(
            e.contains("llm.bin") && e.contains("hidden_size: calico.json 64, GGUF 32"),
            "{e}"
        );
        cfg.llm.vocab_size = 32;
        cfg.llm.hidden_size = 32;
        cfg.llm.intermediate_size = 64;
        cfg.llm.num_hidden_layers = 1;
        cfg.llm.num_attention_heads = 2;
        cfg.llm.num_key_value_heads = Some(1);
        // Known by its magic bytes, not its name.
        check_gguf_llm(&cfg, &path).unwrap();
        let not_gguf = path.with_file_name("image.gguf");
        std::fs::write(&not_gguf, b"\xff\xd8 a jpeg").unwrap();
        let e = check_gguf_llm(&cfg, &not_gguf).unwrap_err().to_string();
        assert!(
            e.contains("image.gguf") && e.contains("not a GGUF file"),
            "{e}"
        );
        std::fs::remove_file(&not_gguf).ok();
        cleanup(&path);
    }

    #[test]
    fn errors_name_the_file_and_what_is_missing() {
        let path = tiny_file("nokey.gguf", "llama.block_count", "", GgmlDType::Q8_0);
        let e = load_err(&path);
        cleanup(&path);
        assert!(
            e.contains("nokey.gguf") && e.contains("missing metadata key `llama.block_count`"),
            "{e}"
        );
        let path = tiny_file("notensor.gguf", "", "blk.0.ffn_up.weight", GgmlDType::Q8_0);
        let e = load_err(&path);
        cleanup(&path);
        assert!(
            e.contains("notensor.gguf") && e.contains("missing tensor `blk.0.ffn_up.weight`"),
            "{e}"
        );
        let path = tiny_file("q81.gguf", "", "", GgmlDType::Q8_1);
        let e = load_err(&path);
        assert!(
            e.contains("q81.gguf") && e.contains("Q8_1") && e.contains("supported: F32, F16"),
            "{e}"
        );
        let e = load_err("/no/such/file.gguf");
        assert!(
            e.contains("/no/such/file.gguf") && e.contains("cannot open"),
            "{e}"
        );
        let not_gguf = path.with_file_name("not.gguf");
        std::fs::write(&not_gguf, b"not a gguf file at all").unwrap();
        let e = load_err(&not_gguf);
        assert!(
            e.contains("not.gguf") && e.contains("not a readable GGUF"),
            "{e}"
        );
        let e = crate::tokenizer::CalicoTokenizer::from_gguf(&path)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("q81.gguf") && e.contains("tokenizer.ggml.model"),
            "{e}"
        );
        std::fs::remove_file(&not_gguf).ok();
        cleanup(&path);
    }

    #[test]
    fn maps_llama_cpp_names() {
        assert_eq!(
            hf_name("blk.12.attn_q.weight").unwrap(),
            "model.layers.12.self_attn.q_proj.weight"
        );
        assert_eq!(
            hf_name("blk.0.ffn_norm.weight").unwrap(),
            "model.layers.0.post_attention_layernorm.weight"
        );
        assert_eq!(
            hf_name("token_embd.weight").unwrap(),
            "model.embed_tokens.weight"
        );
        assert_eq!(hf_name("output.weight").unwrap(), "lm_head.weight");
        assert!(hf_name("blk.x.attn_q.weight").is_none());
        assert!(hf_name("rope_freqs.weight").is_none());
        for hf in [
            "model.layers.3.self_attn.q_proj.weight",
            "model.layers.0.mlp.down_proj.weight",
            "model.layers.1.post_attention_layernorm.weight",
            "model.embed_tokens.weight",
            "lm_head.weight",
        ] {
            assert_eq!(hf_name(&gguf_name(hf).unwrap()).unwrap(), hf);
        }
        assert!(gguf_name("model.layers.0.self_attn.q_proj.lora_A.weight").is_none());
        assert!(gguf_name("model.vision_tower.blocks.0.attn.qkv.weight").is_none());
    }

    #[test]
    fn unpermute_inverts_the_interleaving() -> candle_core::Result<()> {
        // Two heads of width 4: HF rows h0:[0 1 2 3] are stored as [0 2 1 3].
        let stored = Tensor::new(&[0f32, 2., 1., 3., 4., 6., 5., 7.], &Device::Cpu)?;
        let hf = unpermute_qk(&stored.reshape((8, 1))?, 2)?;
        assert_eq!(
            hf.flatten_all()?.to_vec1::<f32>()?,
            vec![0., 1., 2., 3., 4., 5., 6., 7.]
        );
        assert!(unpermute_qk(&stored.reshape((8, 1))?, 3).is_err());
        let w = Tensor::arange(0f32, 48., &Device::Cpu)?.reshape((12, 4))?;
        let back = unpermute_qk(&permute_qk(&w, 2)?, 2)?;
        assert!(calico_nn::testing::max_abs_diff(&permute_qk(&w, 2)?, &w) > 0.0);
        assert_eq!(calico_nn::testing::max_abs_diff(&back, &w), 0.0);
        assert_eq!(
            permute_qk(&stored.reshape((8, 1))?, 2)?
                .flatten_all()?
                .to_vec1::<f32>()?,
            vec![0., 1., 2., 3., 4., 5., 6., 7.]
        );
        Ok(())
    }
}
