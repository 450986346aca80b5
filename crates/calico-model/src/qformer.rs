//! The BLIP-2 Q-Former 𝒬 (Fig. 3, eq. 2), query-only path, as HF
//! transformers' `Blip2QFormerModel`.
//!
//! A BERT encoder run on learned query embeddings only (no text tokens):
//! the queries are LayerNorm-ed (no position embeddings), then each layer
//! applies self-attention among the queries, cross-attention from the queries
//! to the image tokens on every `cross_attention_frequency`-th layer
//! (layers 0, f, 2f, …), and the query feed-forward network
//! (`intermediate_query` / `output_query`); each sub-block is post-norm
//! (`LayerNorm(x + sublayer(x))`).
//!
//! The queries are an explicit input so that Calico's CAM can run the
//! Q-Former with modified queries q′ = `query_tokens` + f_adaptation(h) over
//! CEM-fused EVA tokens; [`load_query_tokens`] reads BLIP-2's learned
//! `query_tokens` (1, 32, 768).
//!
//! Tensor names follow HF (relative to `qformer.` in a
//! `Blip2ForConditionalGeneration` checkpoint); [`lavis_name_map`] maps them
//! to LAVIS keys (`Qformer.bert.…`, see [`lavis_name`]).

use std::collections::BTreeMap;
use std::sync::Arc;

use calico_nn::attention::{merge_heads, padding_mask, scaled_dot_product_attention, split_heads};
use calico_nn::{Activation, LayerNorm, Linear};
use candle_core::{DType, Device, Result, Tensor};
use candle_nn::{Init, VarBuilder};
use serde::{Deserialize, Serialize};

use crate::load::{Checkpoint, NameMap};
use crate::parity::Case;

/// Q-Former hyper-parameters with the field names of HF `Blip2QFormerConfig`
/// (a `qformer_config` JSON object deserialises directly; unknown fields are
/// ignored), plus `num_query_tokens` from `Blip2Config`. Defaults are
/// BLIP-2's: BERT-base, cross-attention every 2nd layer over 1408-wide
/// EVA tokens, 32 queries.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct QFormerConfig {
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub intermediate_size: usize,
    pub hidden_act: Activation,
    pub layer_norm_eps: f64,
    /// Layer `i` has cross-attention when `i % cross_attention_frequency == 0`.
    pub cross_attention_frequency: usize,
    /// Width of the image tokens the queries attend to.
    pub encoder_hidden_size: usize,
    /// Number of learned queries (`Blip2Config.num_query_tokens`).
    pub num_query_tokens: usize,
}

impl Default for QFormerConfig {
    fn default() -> Self {
        Self::paper()
    }
}

impl QFormerConfig {
    /// BLIP-2's Q-Former: 768 wide, 12 layers, 12 heads, MLP 3072, eps
    /// 1e-12, cross-attention every 2nd layer from 1408-wide tokens, 32
    /// queries.
    pub fn paper() -> Self {
        Self {
            hidden_size: 768,
            num_hidden_layers: 12,
            num_attention_heads: 12,
            intermediate_size: 3072,
            hidden_act: Activation::Gelu,
            layer_norm_eps: 1e-12,
            cross_attention_frequency: 2,
            encoder_hidden_size: 1408,
            num_query_tokens: 32,
        }
    }

    /// Whether layer `i` has cross-attention.
    pub fn has_cross_attention(&self, i: usize) -> bool {
        i.is_multiple_of(self.cross_attention_frequency)
    }

    fn validate(&self) -> Result<()> {
        if self.num_attention_heads == 0
            || !self.hidden_size.is_multiple_of(self.num_attention_heads)
        {
            candle_core::bail!(
                "QFormerConfig: hidden_size {} is not a multiple of num_attention_heads {}",
                self.hidden_size,
                self.num_attention_heads
            );
        }
        if self.cross_attention_frequency == 0 {
            candle_core::bail!("QFormerConfig: cross_attention_frequency must be at least 1");
        }
        Ok(())
    }
}

/// Multi-head attention with separate `query`, `key`, `value` projections;
/// keys and values come from `kv_width`-wide states (the queries themselves,
/// or the image tokens for cross-attention).
#[derive(Debug, Clone)]
struct MultiHeadAttention {
    query: Linear,
    key: Linear,
    value: Linear,
    num_heads: usize,
    scale: f64,
}

impl MultiHeadAttention {
    fn new(cfg: &QFormerConfig, kv_width: usize, vb: VarBuilder) -> Result<Self> {
        let d = cfg.hidden_size;
        Ok(Self {
            query: Linear::new(d, d, true, vb.pp("query"))?,
            key: Linear::new(kv_width, d, true, vb.pp("key"))?,
            value: Linear::new(kv_width, d, true, vb.pp("value"))?,
            num_heads: cfg.num_attention_heads,
            scale: ((d / cfg.num_attention_heads) as f64).powf(-0.5),
        })
    }

    /// `x` (B, Q, D) attends to `kv` (B, N, kv_width); `mask` is additive,
    /// broadcast to (B, heads, Q, N).
    fn forward(&self, x: &Tensor, kv: &Tensor, mask: Option<&Tensor>) -> Result<Tensor> {
        let h = self.num_heads;
        let q = split_heads(&self.query.forward(x)?, h)?;
        let k = split_heads(&self.key.forward(kv)?, h)?;
        let v = split_heads(&self.value.forward(kv)?, h)?;
        merge_heads(&scaled_dot_product_attention(&q, &k, &v, mask, self.scale)?)
    }
}

/// `LayerNorm(dropout(dense(h)) + residual)` (BERT's `…Output` blocks).
#[derive(Debug, Clone)]
struct AddNorm {
    dense: Linear,
    layer_norm: LayerNorm,
}

impl AddNorm {
    fn new(cfg: &QFormerConfig, in_dim: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            dense: Linear::new(in_dim, cfg.hidden_size, true, vb.pp("dense"))?,
            layer_norm: LayerNorm::new(cfg.hidden_size, cfg.layer_norm_eps, vb.pp("LayerNorm"))?,
        })
    }

    fn forward(&self, h: &Tensor, residual: &Tensor) -> Result<Tensor> {
        self.layer_norm
            .forward(&(self.dense.forward(h)? + residual)?)
    }
}

/// Attention plus its add-and-norm output (`attention` / `crossattention`:
/// tensors `attention.{query,key,value}`, `output.{dense,LayerNorm}`).
#[derive(Debug, Clone)]
struct AttentionBlock {
    attention: MultiHeadAttention,
    output: AddNorm,
}

impl AttentionBlock {
    fn new(cfg: &QFormerConfig, kv_width: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            attention: MultiHeadAttention::new(cfg, kv_width, vb.pp("attention"))?,
            output: AddNorm::new(cfg, cfg.hidden_size, vb.pp("output"))?,
        })
    }

    fn forward(&self, x: &Tensor, kv: &Tensor, mask: Option<&Tensor>) -> Result<Tensor> {
        self.output
            .forward(&self.attention.forward(x, kv, mask)?, x)
    }
}

/// One Q-Former layer (query tokens only).
#[derive(Debug, Clone)]
pub struct QFormerLayer {
    attention: AttentionBlock,
    crossattention: Option<AttentionBlock>,
    intermediate_query: Linear,
    output_query: AddNorm,
    act: Activation,
}

impl QFormerLayer {
    pub fn new(cfg: &QFormerConfig, layer_idx: usize, vb: VarBuilder) -> Result<Self> {
        let crossattention = if cfg.has_cross_attention(layer_idx) {
            Some(AttentionBlock::new(
                cfg,
                cfg.encoder_hidden_size,
                vb.pp("crossattention"),
            )?)
        } else {
            None
        };
        Ok(Self {
            attention: AttentionBlock::new(cfg, cfg.hidden_size, vb.pp("attention"))?,
            crossattention,
            intermediate_query: Linear::new(
                cfg.hidden_size,
                cfg.intermediate_size,
                true,
                vb.pp("intermediate_query").pp("dense"),
            )?,
            output_query: AddNorm::new(cfg, cfg.intermediate_size, vb.pp("output_query"))?,
            act: cfg.hidden_act,
        })
    }

    /// `x` (B, Q, D); `encoder` (B, N, D_enc); `encoder_mask` additive
    /// (B, 1, 1, N).
    pub fn forward(
        &self,
        x: &Tensor,
        encoder: &Tensor,
        encoder_mask: Option<&Tensor>,
    ) -> Result<Tensor> {
        let mut h = self.attention.forward(x, x, None)?;
        if let Some(cross) = &self.crossattention {
            h = cross.forward(&h, encoder, encoder_mask)?;
        }
        let inter = self.act.apply(&self.intermediate_query.forward(&h)?)?;
        self.output_query.forward(&inter, &h)
    }
}

/// The Q-Former.
#[derive(Debug, Clone)]
pub struct QFormer {
    layernorm: LayerNorm,
    layers: Vec<QFormerLayer>,
    config: QFormerConfig,
}

impl QFormer {
    /// Builds the Q-Former from `vb` positioned at HF's `qformer` module
    /// (names `layernorm.…`, `encoder.layer.N.…`).
    pub fn new(cfg: &QFormerConfig, vb: VarBuilder) -> Result<Self> {
        cfg.validate()?;
        let layernorm = LayerNorm::new(cfg.hidden_size, cfg.layer_norm_eps, vb.pp("layernorm"))?;
        let lv = vb.pp("encoder").pp("layer");
        let layers = (0..cfg.num_hidden_layers)
            .map(|i| QFormerLayer::new(cfg, i, lv.pp(i)))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            layernorm,
            layers,
            config: cfg.clone(),
        })
    }

    pub fn config(&self) -> &QFormerConfig {
        &self.config
    }

    /// Runs the queries over the image tokens.
    ///
    /// * `query_embeds`: (B, Q, hidden_size), or (1, Q, hidden_size) to use
    ///   the same queries for every image;
    /// * `encoder_hidden_states`: (B, N, encoder_hidden_size);
    /// * `encoder_mask`: optional (B, N) keep-mask, 1 where a query may
    ///   attend to the token and 0 where not.
    ///
    /// Returns `last_hidden_state`, (B, Q, hidden_size).
    pub fn forward(
        &self,
        query_embeds: &Tensor,
        encoder_hidden_states: &Tensor,
        encoder_mask: Option<&Tensor>,
    ) -> Result<Tensor> {
        let cfg = &self.config;
        let (qb, nq, qd) = query_embeds.dims3().map_err(|_| {
            candle_core::Error::Msg(format!(
                "Q-Former: expected query_embeds of shape (batch, queries, {}), got {:?}",
                cfg.hidden_size,
                query_embeds.dims()
            ))
        })?;
        let enc_dims = encoder_hidden_states.dims();
        if enc_dims.len() != 3 || enc_dims[2] != cfg.encoder_hidden_size {
            candle_core::bail!(
                "Q-Former: expected encoder_hidden_states of shape (batch, tokens, {}), got {enc_dims:?}",
                cfg.encoder_hidden_size
            );
        }
        let (b, n) = (enc_dims[0], enc_dims[1]);
        if qd != cfg.hidden_size || (qb != b && qb != 1) {
            candle_core::bail!(
                "Q-Former: expected query_embeds of shape ({b} or 1, queries, {}), got {:?}",
                cfg.hidden_size,
                query_embeds.dims()
            );
        }
        let queries = if qb == b {
            query_embeds.clone()
        } else {
            calico_nn::broadcast::expand(query_embeds, (b, nq, qd))?.contiguous()?
        };
        let mask = match encoder_mask {
            None => None,
            Some(m) => {
                if m.dims() != [b, n] {
                    candle_core::bail!(
                        "Q-Former: expected encoder_mask of shape ({b}, {n}), got {:?}",
                        m.dims()
                    );
                }
                Some(padding_mask(&m.to_dtype(queries.dtype())?)?)
            }
        };
        let mut x = self.layernorm.forward(&queries)?;
        for layer in &self.layers {
            x = layer.forward(&x, encoder_hidden_states, mask.as_ref())?;
        }
        Ok(x)
    }
}

/// Reads BLIP-2's learned queries `query_tokens` (1, num_query_tokens,
/// hidden_size) from `vb` positioned at the checkpoint root (the same name in
/// HF and LAVIS checkpoints). A fresh builder initialises them like LAVIS
/// (normal, std 0.02).
pub fn load_query_tokens(cfg: &QFormerConfig, vb: &VarBuilder) -> Result<Tensor> {
    vb.get_with_hints(
        (1, cfg.num_query_tokens, cfg.hidden_size),
        "query_tokens",
        Init::Randn {
            mean: 0.0,
            stdev: 0.02,
        },
    )
}

/// Translates a HF Q-Former tensor name (relative to the Q-Former, as
/// [`QFormer::new`] asks for it from an unprefixed builder) or
/// `query_tokens` into the key of a LAVIS BLIP-2 / InstructBLIP checkpoint
/// whose `Qformer` and `query_tokens` live under `root` (`""` for LAVIS
/// BLIP-2 files; e.g. `"llama_model.model."` for Cheetah's VPG-C copy):
///
/// * `layernorm.*` → `{root}Qformer.bert.embeddings.LayerNorm.*`
/// * `encoder.layer.N.{attention,crossattention}.attention.*` →
///   `{root}Qformer.bert.encoder.layer.N.{attention,crossattention}.self.*`
/// * every other `encoder.layer.N.*` (`….output.{dense,LayerNorm}`,
///   `intermediate_query.dense`, `output_query.{dense,LayerNorm}`) keeps its
///   name under `{root}Qformer.bert.`
/// * `query_tokens` → `{root}query_tokens`
pub fn lavis_name(root: &str, hf: &str) -> Option<String> {
    let bert = format!("{root}Qformer.bert.");
    if hf == "query_tokens" {
        return Some(format!("{root}query_tokens"));
    }
    if let Some(rest) = hf.strip_prefix("layernorm.") {
        return Some(format!("{bert}embeddings.LayerNorm.{rest}"));
    }
    let rest = hf.strip_prefix("encoder.layer.")?;
    let (idx, name) = rest.split_once('.')?;
    idx.parse::<usize>().ok()?;
    let name = if let Some(t) = name.strip_prefix("attention.attention.") {
        format!("attention.self.{t}")
    } else if let Some(t) = name.strip_prefix("crossattention.attention.") {
        format!("crossattention.self.{t}")
    } else {
        name.to_string()
    };
    Some(format!("{bert}encoder.layer.{idx}.{name}"))
}

/// [`lavis_name`] with `root = ""` (a LAVIS BLIP-2 / InstructBLIP
/// checkpoint) as a [`NameMap`]; build [`QFormer`] and
/// [`load_query_tokens`] from the resulting builder without a prefix.
pub fn lavis_name_map() -> NameMap {
    lavis_name_map_under("")
}

/// [`lavis_name`] under another `root` as a [`NameMap`].
pub fn lavis_name_map_under(root: &str) -> NameMap {
    let root = root.to_string();
    Arc::new(move |n: &str| lavis_name(&root, n))
}

/// Parity replay. Config: a [`QFormerConfig`] plus `names` (`"hf"`, the
/// default, or `"lavis"`). Inputs: `encoder_hidden_states`, optional
/// `encoder_attention_mask` (B, N), and either `query_embeds` or, when the
/// case has none, the checkpoint's `query_tokens` plus an optional
/// `query_offset` (B, 1, D) added to them (CAM's q′). Output:
/// `last_hidden_state`.
pub fn parity_forward(
    case: &Case,
    ckpt: &Checkpoint,
    device: &Device,
) -> Result<BTreeMap<String, Tensor>> {
    let cfg: QFormerConfig = case.config()?;
    let map = match case.name_scheme("hf", &["hf", "lavis"])?.as_str() {
        "lavis" => Some(lavis_name_map()),
        _ => None,
    };
    let vb = ckpt.var_builder_mapped(map, DType::F32, device);
    let model = QFormer::new(&cfg, vb.clone())?;
    let encoder = case.input("encoder_hidden_states")?.to_device(device)?;
    let queries = if case.inputs.contains_key("query_embeds") {
        case.input("query_embeds")?.to_device(device)?
    } else {
        let tokens = load_query_tokens(&cfg, &vb)?;
        if case.inputs.contains_key("query_offset") {
            tokens.broadcast_add(&case.input("query_offset")?.to_device(device)?)?
        } else {
            tokens
        }
    };
    let mask = if case.inputs.contains_key("encoder_attention_mask") {
        Some(case.input("encoder_attention_mask")?.to_device(device)?)
    } else {
        None
    };
    let out = model.forward(&queries, &encoder, mask.as_ref())?;
    Ok(BTreeMap::from([("last_hidden_state".to_string(), out)]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_nn::VarMap;

    fn tiny() -> QFormerConfig {
        QFormerConfig {
            hidden_size: 16,
            num_hidden_layers: 3,
            num_attention_heads: 2,
            intermediate_size: 24,
            encoder_hidden_size: 12,
            num_query_tokens: 4,
            ..QFormerConfig::paper()
        }
    }

    #[test]
    fn paper_config_is_blip2() {
        let c = QFormerConfig::paper();
        assert_eq!(
            (c.hidden_size, c.num_hidden_layers, c.num_attention_heads),
            (768, 12, 12)
        );
        assert_eq!((c.intermediate_size, c.encoder_hidden_size), (3072, 1408));
        assert_eq!((c.cross_attention_frequency, c.num_query_tokens), (2, 32));
        assert!(c.has_cross_attention(0) && !c.has_cross_attention(1) && c.has_cross_attention(10));
        let parsed: QFormerConfig =
            serde_json::from_str(r#"{"vocab_size": 30522, "model_type": "blip_2_qformer"}"#)
                .unwrap();
        assert_eq!(parsed, c);
    }

    #[test]
    fn lavis_names() {
        let cases = [
            (
                "layernorm.weight",
                "Qformer.bert.embeddings.LayerNorm.weight",
            ),
            (
                "encoder.layer.0.attention.attention.query.weight",
                "Qformer.bert.encoder.layer.0.attention.self.query.weight",
            ),
            (
                "encoder.layer.10.crossattention.attention.key.bias",
                "Qformer.bert.encoder.layer.10.crossattention.self.key.bias",
            ),
            (
                "encoder.layer.2.crossattention.output.LayerNorm.weight",
                "Qformer.bert.encoder.layer.2.crossattention.output.LayerNorm.weight",
            ),
            (
                "encoder.layer.1.attention.output.dense.bias",
                "Qformer.bert.encoder.layer.1.attention.output.dense.bias",
            ),
            (
                "encoder.layer.11.intermediate_query.dense.weight",
                "Qformer.bert.encoder.layer.11.intermediate_query.dense.weight",
            ),
            (
                "encoder.layer.11.output_query.LayerNorm.bias",
                "Qformer.bert.encoder.layer.11.output_query.LayerNorm.bias",
            ),
            ("query_tokens", "query_tokens"),
        ];
        for (hf, lavis) in cases {
            assert_eq!(lavis_name("", hf).as_deref(), Some(lavis), "{hf}");
        }
        assert_eq!(
            lavis_name("llama_model.model.", "query_tokens").as_deref(),
            Some("llama_model.model.query_tokens")
        );
        assert_eq!(lavis_name("", "pooler.dense.weight"), None);
    }

    #[test]
    fn bad_shapes_are_errors() {
        let vm = VarMap::new();
        let vb = VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu);
        let m = QFormer::new(&tiny(), vb).unwrap();
        let dev = Device::Cpu;
        let q = Tensor::zeros((2, 4, 16), DType::F32, &dev).unwrap();
        let enc = Tensor::zeros((2, 5, 12), DType::F32, &dev).unwrap();
        assert!(m.forward(&q, &enc, None).is_ok());
        let q1 = Tensor::zeros((1, 4, 16), DType::F32, &dev).unwrap();
        assert_eq!(m.forward(&q1, &enc, None).unwrap().dims(), &[2, 4, 16]);
        let bad_enc = Tensor::zeros((2, 5, 16), DType::F32, &dev).unwrap();
        let e = m.forward(&q, &bad_enc, None).unwrap_err().to_string();
        assert!(
            e.contains("encoder_hidden_states") && e.contains("12"),
            "{e}"
        );
        let bad_q = Tensor::zeros((3, 4, 16), DType::F32, &dev).unwrap();
        assert!(m.forward(&bad_q, &enc, None).is_err());
        let bad_mask = Tensor::ones((2, 4), DType::F32, &dev).unwrap();
        let e = m
            .forward(&q, &enc, Some(&bad_mask))
            .unwrap_err()
            .to_string();
        assert!(e.contains("encoder_mask"), "{e}");
    }

    #[test]
    fn masked_tokens_are_ignored() {
        let vm = VarMap::new();
        let vb = VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu);
        let m = QFormer::new(&tiny(), vb).unwrap();
        let dev = Device::Cpu;
        let q = Tensor::randn(0f32, 1.0, (1, 4, 16), &dev).unwrap();
        let enc = Tensor::randn(0f32, 1.0, (1, 5, 12), &dev).unwrap();
        let mask = Tensor::new(&[[1f32, 1.0, 1.0, 0.0, 0.0]], &dev).unwrap();
        let masked = m.forward(&q, &enc, Some(&mask)).unwrap();
        let kept = m.forward(&q, &enc.narrow(1, 0, 3).unwrap(), None).unwrap();
        let diff = (masked - kept)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(diff < 1e-5, "{diff}");
    }

    /// Trainable Q-Former: a loss on the output reaches every parameter.
    /// Key biases are the exception in value: adding a constant to every
    /// key's score leaves the softmax unchanged, so their gradient is zero
    /// in exact arithmetic; they must still be on the gradient tape.
    #[test]
    fn every_parameter_gets_a_gradient() {
        let dev = Device::Cpu;
        let cfg = tiny();
        let vm = VarMap::new();
        let vb = VarBuilder::from_varmap(&vm, DType::F32, &dev);
        let m = QFormer::new(&cfg, vb.clone()).unwrap();
        let tokens = load_query_tokens(&cfg, &vb).unwrap();
        let enc = Tensor::randn(0f32, 1.0, (2, 5, 12), &dev).unwrap();
        let mask = Tensor::new(
            &[[1f32, 1.0, 1.0, 1.0, 1.0], [1.0, 1.0, 0.0, 1.0, 0.0]],
            &dev,
        )
        .unwrap();
        let out = m.forward(&tokens, &enc, Some(&mask)).unwrap();
        assert_eq!(out.dims(), &[2, 4, 16]);
        let w = Tensor::randn(0f32, 1.0, out.shape(), &dev).unwrap();
        let loss = (out * w).unwrap().sum_all().unwrap();
        let grads = loss.backward().unwrap();
        let data = vm.data().lock().unwrap();
        // 3 layers: cross-attention on layers 0 and 2 only.
        assert!(data.contains_key("encoder.layer.2.crossattention.attention.key.weight"));
        assert!(!data.contains_key("encoder.layer.1.crossattention.attention.key.weight"));
        assert!(data.contains_key("query_tokens"));
        for (name, var) in data.iter() {
            let g = grads
                .get(var.as_tensor())
                .unwrap_or_else(|| panic!("no gradient for {name}"));
            let m = g
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            if name.ends_with(".key.bias") {
                assert!(m < 1e-4, "{name}: {m}");
            } else {
                assert!(m > 0.0, "zero gradient for {name}");
            }
        }
    }
}
