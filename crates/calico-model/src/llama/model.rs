//! The LLaMA causal language model (HF `LlamaForCausalLM`) with optional
//! LoRA, a KV cache for incremental decoding and a hook in the layer loop
//! (CAM, §3.4, adds into the image-token spans after chosen layers).
//!
//! Tensor names are HF's: `model.embed_tokens.weight`,
//! `model.layers.N.{input_layernorm, self_attn.{q,k,v,o}_proj,
//! post_attention_layernorm, mlp.{gate,up,down}_proj}`, `model.norm.weight`
//! and `lm_head.weight` (absent with `tie_word_embeddings`).
//!
//! Positions: without an attention mask, token `i` of a forward pass sits at
//! `past + i` (HF's forward without `position_ids`). With a mask (`(B, T)`,
//! 1 = keep; left or right padding) the positions follow the mask like HF's
//! `generate`: `cumsum(mask) − 1`, and 1 at padded slots. For right padding
//! and no padding the two rules agree; for left padding this makes each
//! row's result independent of its padding (the parity cases pass the same
//! `position_ids` to HF).

use std::collections::HashMap;

use candle_core::{DType, Device, Result, Tensor, Var, D};
use candle_nn::{VarBuilder, VarMap};
use rand::RngCore;

use calico_nn::{Linear, QuantizedTable, RmsNorm};

use super::attention::{build_mask, AttnContext};
use super::block::DecoderLayer;
use super::rope::{Positions, Rotary};
use super::{LlamaConfig, LoraSpec, QuantizedWeights};

/// Called after every decoder layer with that layer's output hidden states
/// `(B, T, hidden)`; returning `Some(t)` replaces them (same shape).
pub trait LayerHook {
    fn after_layer(&mut self, layer: usize, hidden_states: &Tensor) -> Result<Option<Tensor>>;
}

/// Options of [`Llama::forward_embeds`]. `Default` is an evaluation pass
/// with no mask, no cache, no hook and no logits.
#[derive(Default)]
pub struct ForwardOptions<'a> {
    /// `(B, T)` keep-mask (1 = token, 0 = padding), left or right padding.
    /// With a cache it may also be `(B, past + T)` covering the cached
    /// tokens (HF's convention); a `(B, T)` mask is appended to the cached one.
    pub attention_mask: Option<&'a Tensor>,
    /// Incremental decoding: the new keys/values are appended.
    pub cache: Option<&'a mut KvCache>,
    pub hook: Option<&'a mut dyn LayerHook>,
    /// Also compute `logits` (B, T, vocab).
    pub logits: bool,
    /// Training: LoRA dropout masks are drawn from it. `None` = evaluation.
    pub rng: Option<&'a mut dyn RngCore>,
}

/// What [`Llama::forward_embeds`] returns.
#[derive(Debug, Clone)]
pub struct LlamaOutput {
    /// Hidden states after the final norm, `(B, T, hidden)`.
    pub last_hidden_state: Tensor,
    /// `(B, T, vocab)` when requested.
    pub logits: Option<Tensor>,
}

/// Keys and values of every layer seen so far (after RoPE, before the GQA
/// grouping), plus the keep-mask of the cached tokens.
#[derive(Debug, Clone)]
pub struct KvCache {
    layers: Vec<Option<(Tensor, Tensor)>>,
    keep: Option<Vec<Vec<bool>>>,
    len: usize,
}

impl KvCache {
    pub fn new(cfg: &LlamaConfig) -> Self {
        Self {
            layers: vec![None; cfg.num_hidden_layers],
            keep: None,
            len: 0,
        }
    }

    /// Number of cached positions.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Cuts the cached keys and values loose from the computation that
    /// made them. A tensor computed from a variable (LoRA, a trained
    /// module) keeps every input of every op that led to it alive, so a
    /// cache grown token by token would otherwise hold each step's
    /// activations, and each earlier cache, until generation ends.
    /// Generation is never differentiated; [`super::generate::generate`]
    /// detaches after every pass.
    pub fn detach(&mut self) {
        for (k, v) in self.layers.iter_mut().flatten() {
            *k = k.detach();
            *v = v.detach();
        }
    }

    pub fn reset(&mut self) {
        self.layers.iter_mut().for_each(|l| *l = None);
        self.keep = None;
        self.len = 0;
    }

    fn batch(&self) -> Option<usize> {
        self.layers
            .iter()
            .flatten()
            .next()
            .and_then(|(k, _)| k.dim(0).ok())
    }
}

/// A vocabulary table `(vocab, hidden)`: a float tensor, or block-quantised
/// blocks read row by row and chunk by chunk (`--quantized-llm`).
#[derive(Debug, Clone)]
enum Table {
    Dense(Tensor),
    Quantized(QuantizedTable),
}

impl Table {
    fn rows(&self) -> Result<usize> {
        match self {
            Table::Dense(t) => t.dim(0),
            Table::Quantized(q) => Ok(q.rows()),
        }
    }

    fn device(&self) -> Device {
        match self {
            Table::Dense(t) => t.device().clone(),
            Table::Quantized(q) => q.device(),
        }
    }

    fn dtype(&self) -> DType {
        match self {
            Table::Dense(t) => t.dtype(),
            Table::Quantized(_) => DType::F32,
        }
    }

    /// Rows `ids` → `(ids.len(), hidden)`.
    fn rows_at(&self, ids: Vec<u32>) -> Result<Tensor> {
        match self {
            Table::Dense(t) => {
                let n = ids.len();
                t.index_select(&Tensor::from_vec(ids, n, t.device())?, 0)
            }
            Table::Quantized(q) => q.lookup(&ids),
        }
    }

    /// `(…, hidden)` → `(…, rows)`.
    fn project(&self, h: &Tensor) -> Result<Tensor> {
        match self {
            Table::Dense(t) => Linear::from_tensors(t.clone(), None).forward(h),
            Table::Quantized(q) => q.forward(h),
        }
    }

    /// The mean row `(1, hidden)`, in float32.
    fn mean_row(&self) -> Result<Tensor> {
        match self {
            Table::Dense(t) => t.to_dtype(DType::F32)?.mean_keepdim(0),
            Table::Quantized(q) => q.mean_row(),
        }
    }
}

/// Token embeddings and the output projection, with rows appended by
/// [`Llama::resize_token_embeddings`] kept apart while they are trainable
/// (so an optimiser step on them is seen without re-concatenating the whole
/// table) or while the table is quantised.
#[derive(Debug, Clone)]
struct Vocab {
    embed: Table,
    /// `None` with tied embeddings: the output projection is `embed`.
    lm_head: Option<Table>,
    added_embed: Option<Tensor>,
    added_head: Option<Tensor>,
    /// Whether `added_*` are an optimiser's variables.
    added_trainable: bool,
}

impl Vocab {
    fn size(&self) -> Result<usize> {
        Ok(self.embed.rows()? + self.added_embed.as_ref().map_or(Ok(0), |t| t.dim(0))?)
    }

    fn lookup(&self, ids: &Tensor) -> Result<Tensor> {
        let (b, t) = ids.dims2().map_err(|_| {
            candle_core::Error::Msg(format!(
                "LLaMA input_ids must be (batch, seq), got {:?}",
                ids.dims()
            ))
        })?;
        let flat: Vec<u32> = ids.flatten_all()?.to_dtype(DType::U32)?.to_vec1()?;
        let vocab = self.size()?;
        if let Some(bad) = flat.iter().find(|&&i| i as usize >= vocab) {
            candle_core::bail!("token id {bad} is outside the vocabulary of {vocab}");
        }
        let dev = self.embed.device();
        let rows = match &self.added_embed {
            None => self.embed.rows_at(flat)?,
            Some(added) => {
                let hidden = added.dim(1)?;
                let base_n = self.embed.rows()? as u32;
                let is_new: Vec<u8> = flat.iter().map(|&i| (i >= base_n) as u8).collect();
                let base_idx: Vec<u32> = flat
                    .iter()
                    .map(|&i| if i < base_n { i } else { 0 })
                    .collect();
                let new_idx: Vec<u32> = flat.iter().map(|&i| i.saturating_sub(base_n)).collect();
                let base = self.embed.rows_at(base_idx)?;
                let new = added.index_select(&Tensor::from_vec(new_idx, b * t, &dev)?, 0)?;
                Tensor::from_vec(is_new, (b * t, 1), &dev)?
                    .broadcast_as((b * t, hidden))?
                    .where_cond(&new, &base)?
            }
        };
        let hidden = rows.dim(1)?;
        rows.reshape((b, t, hidden))
    }

    fn project(&self, h: &Tensor) -> Result<Tensor> {
        let head = self.lm_head.as_ref().unwrap_or(&self.embed);
        let logits = head.project(h)?;
        let added = if self.lm_head.is_some() {
            self.added_head.as_ref()
        } else {
            self.added_embed.as_ref()
        };
        match added {
            None => Ok(logits),
            Some(a) => {
                let extra = Linear::from_tensors(a.clone(), None).forward(h)?;
                Tensor::cat(&[&logits, &extra], D::Minus1)
            }
        }
    }
}

/// HF `LlamaForCausalLM`.
#[derive(Debug, Clone)]
pub struct Llama {
    cfg: LlamaConfig,
    vocab: Vocab,
    layers: Vec<DecoderLayer>,
    norm: RmsNorm,
    rotary: Rotary,
    /// Where the weights live (the embedding table's device).
    device: Device,
}

impl Llama {
    /// Loads a model; `vb` points at the checkpoint root.
    pub fn new(cfg: &LlamaConfig, vb: VarBuilder) -> Result<Self> {
        Self::build(cfg, vb, None, None)
    }

    /// Loads a model whose projection weights found in `quantized` stay in
    /// their stored block-quantised types, frozen (adapters beside them
    /// train, and gradients pass through them: `calico_nn::input_grad`);
    /// everything else comes from `vb`.
    pub fn new_quantized(
        cfg: &LlamaConfig,
        vb: VarBuilder,
        quantized: &QuantizedWeights,
    ) -> Result<Self> {
        Self::build(cfg, vb, Some(quantized), None)
    }

    /// Loads a model with LoRA adapters on `lora.target_modules`. `base`
    /// holds the HF tensors; `adapters` is read (or, for a `VarMap` builder,
    /// created) at `model.layers.N.self_attn.q_proj.lora_A.weight` etc. See
    /// `llama::lora` for PEFT's two layouts.
    pub fn with_lora(
        cfg: &LlamaConfig,
        lora: &LoraSpec,
        base: VarBuilder,
        adapters: VarBuilder,
    ) -> Result<Self> {
        Self::with_lora_quantized(cfg, lora, base, None, adapters)
    }

    /// [`Llama::with_lora`] with the projection weights found in
    /// `quantized` kept quantised (see [`Llama::new_quantized`]).
    pub fn with_lora_quantized(
        cfg: &LlamaConfig,
        lora: &LoraSpec,
        base: VarBuilder,
        quantized: Option<&QuantizedWeights>,
        adapters: VarBuilder,
    ) -> Result<Self> {
        lora.validate()?;
        Self::build(cfg, base, quantized, Some((lora, &adapters)))
    }

    fn build(
        cfg: &LlamaConfig,
        vb: VarBuilder,
        quantized: Option<&QuantizedWeights>,
        lora: Option<(&LoraSpec, &VarBuilder)>,
    ) -> Result<Self> {
        let rotary = Rotary::new(cfg)?;
        if cfg.num_attention_heads == 0 || cfg.num_hidden_layers == 0 {
            candle_core::bail!("LLaMA config needs at least one layer and one head");
        }
        let h = cfg.hidden_size;
        let table = |prefix: &str| -> Result<Table> {
            let name = format!("{prefix}.weight");
            match quantized.and_then(|q| q.get(&name)) {
                Some(w) => {
                    if w.shape().dims() != [cfg.vocab_size, h] {
                        candle_core::bail!(
                            "quantized tensor `{name}` has shape {:?}, expected [{}, {h}]",
                            w.shape().dims(),
                            cfg.vocab_size
                        );
                    }
                    Ok(Table::Quantized(QuantizedTable::new(w.clone())?))
                }
                None => Ok(Table::Dense(
                    vb.pp(prefix).get((cfg.vocab_size, h), "weight")?,
                )),
            }
        };
        let embed = table("model.embed_tokens")?;
        let device = embed.device();
        let lm_head = if cfg.tie_word_embeddings {
            None
        } else {
            Some(table("lm_head")?)
        };
        let layers = (0..cfg.num_hidden_layers)
            .map(|i| {
                let name = format!("model.layers.{i}");
                let ad = lora.map(|(s, a)| (s, a.pp(&name)));
                DecoderLayer::new(
                    cfg,
                    vb.pp(&name),
                    quantized,
                    ad.as_ref().map(|(s, a)| (*s, a)),
                )
            })
            .collect::<Result<Vec<_>>>()?;
        let norm = RmsNorm::new(h, cfg.rms_norm_eps, vb.pp("model.norm"))?;
        Ok(Self {
            cfg: cfg.clone(),
            vocab: Vocab {
                embed,
                lm_head,
                added_embed: None,
                added_head: None,
                added_trainable: false,
            },
            layers,
            norm,
            rotary,
            device,
        })
    }

    pub fn config(&self) -> &LlamaConfig {
        &self.cfg
    }

    pub fn layers(&self) -> &[DecoderLayer] {
        &self.layers
    }

    /// The input embedding table `(vocab, hidden)` (without rows added by a
    /// trainable resize); `None` when it is kept quantised.
    pub fn embed_weight(&self) -> Option<&Tensor> {
        match &self.vocab.embed {
            Table::Dense(t) => Some(t),
            Table::Quantized(_) => None,
        }
    }

    /// `(B, T)` token ids → `(B, T, hidden)`.
    pub fn embed(&self, input_ids: &Tensor) -> Result<Tensor> {
        self.vocab.lookup(input_ids)
    }

    /// `(…, hidden)` final-norm hidden states → `(…, vocab)` logits.
    pub fn logits(&self, hidden: &Tensor) -> Result<Tensor> {
        self.vocab.project(hidden)
    }

    /// Logits `(B, T, vocab)` of a full pass (no cache).
    pub fn forward(&self, input_ids: &Tensor, attention_mask: Option<&Tensor>) -> Result<Tensor> {
        let embeds = self.embed(input_ids)?;
        let out = self.forward_embeds(
            &embeds,
            ForwardOptions {
                attention_mask,
                logits: true,
                ..Default::default()
            },
        )?;
        out.logits
            .ok_or_else(|| candle_core::Error::Msg("logits were not computed".into()))
    }

    /// Runs the decoder on `(B, T, hidden)` input embeddings.
    pub fn forward_embeds(
        &self,
        inputs_embeds: &Tensor,
        mut opts: ForwardOptions,
    ) -> Result<LlamaOutput> {
        let (b, t, hidden) = inputs_embeds.dims3().map_err(|_| {
            candle_core::Error::Msg(format!(
                "LLaMA inputs_embeds must be (batch, seq, hidden), got {:?}",
                inputs_embeds.dims()
            ))
        })?;
        if hidden != self.cfg.hidden_size {
            candle_core::bail!(
                "LLaMA inputs_embeds have width {hidden}, the model's hidden_size is {}",
                self.cfg.hidden_size
            );
        }
        if t == 0 || b == 0 {
            candle_core::bail!("LLaMA forward needs at least one token and one batch row");
        }
        let past = opts.cache.as_ref().map_or(0, |c| c.len);
        if let Some(cb) = opts.cache.as_ref().and_then(|c| c.batch()) {
            if cb != b {
                candle_core::bail!("KV cache holds batch {cb}, the input has batch {b}");
            }
        }
        let cached_keep = opts.cache.as_ref().and_then(|c| c.keep.clone());
        let keep = full_keep_mask(opts.attention_mask, cached_keep, b, t, past)?;
        let positions = match &keep {
            Some(k) => positions_from_mask(k, t),
            None => Positions::Shared((past..past + t).collect()),
        };
        let dtype = inputs_embeds.dtype();
        let dev = inputs_embeds.device();
        let (cos, sin) = self.rotary.cos_sin(&positions, dtype, dev)?;
        let padded = keep.as_ref().filter(|k| k.iter().flatten().any(|&x| !x));
        let n_rep = self.cfg.num_attention_heads / self.cfg.kv_heads();
        let mask = build_mask(padded.map(|k| k.as_slice()), t, past, n_rep, dtype, dev)?;
        let ctx = AttnContext { cos, sin, mask };

        let mut x = inputs_embeds.clone();
        for (i, layer) in self.layers.iter().enumerate() {
            let slot = opts.cache.as_deref_mut().map(|c| &mut c.layers[i]);
            x = layer.forward(&x, &ctx, slot, &mut opts.rng)?;
            if let Some(hook) = opts.hook.as_deref_mut() {
                if let Some(replaced) = hook.after_layer(i, &x)? {
                    if replaced.dims() != x.dims() {
                        candle_core::bail!(
                            "layer hook after layer {i} returned shape {:?}, expected {:?}",
                            replaced.dims(),
                            x.dims()
                        );
                    }
                    x = replaced;
                }
            }
        }
        if let Some(cache) = opts.cache.as_deref_mut() {
            cache.len = past + t;
            cache.keep = keep;
        }
        let last_hidden_state = self.norm.forward(&x)?;
        let logits = if opts.logits {
            Some(self.logits(&last_hidden_state)?)
        } else {
            None
        };
        Ok(LlamaOutput {
            last_hidden_state,
            logits,
        })
    }

    fn lora_linears(&mut self) -> impl Iterator<Item = &mut Linear> {
        self.layers
            .iter_mut()
            .flat_map(|l| l.linears_mut())
            .filter(|l| l.has_lora())
    }

    /// Folds every LoRA adapter into its base weight (PEFT
    /// `merge_and_unload` without the unload): faster inference, same
    /// function.
    pub fn merge_lora(&mut self) -> Result<()> {
        self.lora_linears().try_for_each(|l| l.merge())
    }

    /// Undoes [`Llama::merge_lora`].
    pub fn unmerge_lora(&mut self) -> Result<()> {
        self.lora_linears().try_for_each(|l| l.unmerge())
    }

    /// Grows the vocabulary to `new_vocab_size` for added special tokens.
    /// The new embedding rows (and, when untied, new `lm_head` rows) start
    /// at the mean of the existing rows. (HF's default `mean_resizing`
    /// samples from N(mean, 1e-9·covariance), i.e. the mean up to ~1e-5 of
    /// the rows' spread.)
    ///
    /// With `trainable`, the new rows are variables in that `VarMap` named
    /// `model.embed_tokens.added_weight` and `lm_head.added_weight`; when the
    /// map already holds them (a loaded training checkpoint) their values are
    /// kept. Without it the rows are appended as frozen tensors. Growing a
    /// second time is not supported while trainable rows exist.
    /// Holds the rows [`Self::resize_token_embeddings`] added as an
    /// optimiser's variables as plain tensors sharing their storage (a
    /// model loaded for answers: its results then keep no computation
    /// graph; see `calico::weights::load_dir_for_answers`).
    pub fn detach_added_rows(&mut self) {
        for rows in [&mut self.vocab.added_embed, &mut self.vocab.added_head]
            .into_iter()
            .flatten()
        {
            *rows = rows.detach();
        }
    }

    pub fn resize_token_embeddings(
        &mut self,
        new_vocab_size: usize,
        trainable: Option<&VarMap>,
    ) -> Result<()> {
        let current = self.vocab.size()?;
        if new_vocab_size < current {
            candle_core::bail!(
                "resize_token_embeddings: cannot shrink the vocabulary from {current} to {new_vocab_size}"
            );
        }
        if new_vocab_size == current {
            return Ok(());
        }
        if self.vocab.added_trainable {
            candle_core::bail!(
                "resize_token_embeddings: the vocabulary was already grown with trainable rows"
            );
        }
        let added = new_vocab_size - current;
        let dtype = self.vocab.embed.dtype();
        let mean_rows = |table: &Table| -> Result<Tensor> {
            let mean = table.mean_row()?;
            mean.broadcast_as((added, mean.dim(1)?))?
                .contiguous()?
                .to_dtype(dtype)
        };
        let embed_rows = mean_rows(&self.vocab.embed)?;
        let head_rows = match &self.vocab.lm_head {
            Some(h) => Some(mean_rows(h)?),
            None => None,
        };
        match trainable {
            Some(_) if self.vocab.added_embed.is_some() => {
                candle_core::bail!(
                    "resize_token_embeddings: cannot add trainable rows after frozen ones \
                     were appended to a quantized vocabulary"
                );
            }
            Some(map) => {
                let mut data = map
                    .data()
                    .lock()
                    .map_err(|_| candle_core::Error::Msg("VarMap lock poisoned".into()))?;
                self.vocab.added_embed = Some(var_in(
                    &mut data,
                    "model.embed_tokens.added_weight",
                    &embed_rows,
                )?);
                if let Some(rows) = head_rows {
                    self.vocab.added_head = Some(var_in(&mut data, "lm_head.added_weight", &rows)?);
                }
                self.vocab.added_trainable = true;
            }
            None => {
                // A float table grows in place; quantised blocks cannot, so
                // their new rows stay apart as frozen tensors.
                let append = |table: &mut Table, extra: &mut Option<Tensor>, rows: Tensor| {
                    match table {
                        Table::Dense(t) => *t = Tensor::cat(&[&*t, &rows], 0)?,
                        Table::Quantized(_) => {
                            *extra = Some(match extra.take() {
                                Some(e) => Tensor::cat(&[&e, &rows], 0)?,
                                None => rows,
                            })
                        }
                    }
                    Ok::<(), candle_core::Error>(())
                };
                append(
                    &mut self.vocab.embed,
                    &mut self.vocab.added_embed,
                    embed_rows,
                )?;
                if let (Some(h), Some(rows)) = (self.vocab.lm_head.as_mut(), head_rows) {
                    append(h, &mut self.vocab.added_head, rows)?;
                }
            }
        }
        self.cfg.vocab_size = new_vocab_size;
        Ok(())
    }
}

/// The variable `name` in a VarMap, created from `init` when absent.
fn var_in(data: &mut HashMap<String, Var>, name: &str, init: &Tensor) -> Result<Tensor> {
    if let Some(v) = data.get(name) {
        if v.dims() != init.dims() {
            candle_core::bail!(
                "VarMap variable `{name}` has shape {:?}, expected {:?}",
                v.dims(),
                init.dims()
            );
        }
        return Ok(v.as_tensor().clone());
    }
    let v = Var::from_tensor(init)?;
    data.insert(name.to_string(), v.clone());
    Ok(v.as_tensor().clone())
}

/// The keep-mask over all `past + t` keys, or `None` when there is none.
fn full_keep_mask(
    mask: Option<&Tensor>,
    cached: Option<Vec<Vec<bool>>>,
    b: usize,
    t: usize,
    past: usize,
) -> Result<Option<Vec<Vec<bool>>>> {
    let new: Option<Vec<Vec<bool>>> = match mask {
        None => None,
        Some(m) => {
            let (mb, w) = m.dims2().map_err(|_| {
                candle_core::Error::Msg(format!(
                    "attention_mask must be (batch, seq), got {:?}",
                    m.dims()
                ))
            })?;
            if mb != b || (w != t && w != past + t) {
                candle_core::bail!(
                    "attention_mask has shape {:?}, expected ({b}, {t}) or ({b}, {})",
                    m.dims(),
                    past + t
                );
            }
            let rows: Vec<Vec<f32>> = m.to_dtype(DType::F32)?.to_vec2()?;
            Some(
                rows.into_iter()
                    .map(|r| r.into_iter().map(|v| v != 0.0).collect())
                    .collect(),
            )
        }
    };
    Ok(match (new, cached) {
        (None, None) => None,
        (Some(n), _) if n[0].len() == past + t => Some(n),
        (Some(n), cached) => {
            let mut old = cached.unwrap_or_else(|| vec![vec![true; past]; b]);
            for (o, r) in old.iter_mut().zip(n) {
                o.extend(r);
            }
            Some(old)
        }
        (None, Some(mut old)) => {
            old.iter_mut()
                .for_each(|o| o.extend(std::iter::repeat_n(true, t)));
            Some(old)
        }
    })
}

/// HF `generate`'s positions: `cumsum(mask) − 1`, 1 at padded slots; the
/// last `t` columns.
fn positions_from_mask(keep: &[Vec<bool>], t: usize) -> Positions {
    let rows = keep
        .iter()
        .map(|row| {
            let mut seen = 0usize;
            let all: Vec<usize> = row
                .iter()
                .map(|&k| {
                    seen += k as usize;
                    if k {
                        seen - 1
                    } else {
                        1
                    }
                })
                .collect();
            all[all.len() - t..].to_vec()
        })
        .collect();
    Positions::PerRow(rows).normalised()
}

impl Llama {
    /// The device the model's weights live on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    pub fn dtype(&self) -> DType {
        self.vocab.embed.dtype()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_detached_cache_keeps_its_values_and_no_graph() {
        let cfg = LlamaConfig {
            vocab_size: 17,
            hidden_size: 16,
            intermediate_size: 24,
            num_hidden_layers: 2,
            num_attention_heads: 2,
            num_key_value_heads: Some(1),
            ..LlamaConfig::smollm2_135m()
        };
        let dev = Device::Cpu;
        // Every weight a variable, as in a model being trained.
        let map = VarMap::new();
        let llm = Llama::new(&cfg, VarBuilder::from_varmap(&map, DType::F32, &dev)).unwrap();
        let x = Tensor::arange(0f32, 48.0, &dev)
            .unwrap()
            .reshape((1, 3, 16))
            .unwrap();
        let mut cache = KvCache::new(&cfg);
        let opts = ForwardOptions {
            cache: Some(&mut cache),
            ..Default::default()
        };
        llm.forward_embeds(&x, opts).unwrap();
        let before: Vec<(Tensor, Tensor)> = cache.layers.iter().flatten().cloned().collect();
        assert_eq!(before.len(), 2);
        assert!(before.iter().all(|(k, v)| k.track_op() && v.track_op()));
        cache.detach();
        let after: Vec<&(Tensor, Tensor)> = cache.layers.iter().flatten().collect();
        assert_eq!(after.len(), 2);
        for ((k0, v0), (k, v)) in before.iter().zip(after) {
            assert!(!k.track_op() && !v.track_op());
            for (a, b) in [(k0, k), (v0, v)] {
                let d = (a - b).unwrap().abs().unwrap().sum_all().unwrap();
                assert_eq!(d.to_scalar::<f32>().unwrap(), 0.0);
            }
        }
        assert_eq!(cache.len(), 3);
    }
}
