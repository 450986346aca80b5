//! DINOv2 ViT, Calico's semantic encoder (X_semantic for the CEM).
//!
//! Computes what transformers' `Dinov2Model` / `Dinov2WithRegistersModel`
//! and the facebookresearch/dinov2 `DinoVisionTransformer` compute:
//! patch embedding, CLS token, position embeddings (bicubically resampled
//! to the input's patch grid), optional register tokens, pre-norm layers
//! with LayerScale, a final LayerNorm.
//!
//! Two tensor-name layouts are read ([`NameScheme`]): HF checkpoint files
//! (`embeddings.*`, `encoder.layer.N.*`, `layernorm`) and torch-hub files
//! (`cls_token`, `pos_embed`, `blocks.N.attn.qkv` fused, `ls1.gamma`,
//! `norm`). The layouts also differ in how the position embeddings are
//! resampled; [`Dinov2Config::pos_interpolation`] documents the rules.
//!
//! Layer indices follow HF's `hidden_states`: index `k` is the output of
//! layer `k` (1-based), index 0 the embeddings. The hub's
//! `get_intermediate_layers(n=[i])` is index `i + 1`.

mod embeddings;
mod interpolate;
mod layer;

use std::collections::BTreeMap;

use calico_nn::{Activation, LayerNorm};
use candle_core::{DType, Device, Result, Tensor};
use candle_nn::VarBuilder;
use serde::{Deserialize, Serialize};

use crate::load::Checkpoint;
use crate::parity::Case;

pub use embeddings::{Embeddings, PatchEmbeddings, PosInterpolation};
pub use interpolate::{bicubic_weights, resample_bicubic, AxisScale};
pub use layer::{swiglu_hidden, Attention, FeedForward, Layer, LayerScale};

/// Which checkpoint layout the tensors use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum NameScheme {
    /// HF transformers files (`facebook/dinov2-*`). transformers 5's
    /// in-memory names (`attention.q_proj`, `mlp.gate_proj`) are accepted
    /// too.
    #[default]
    Hf,
    /// torch-hub / facebookresearch/dinov2 `.pth` files (unchunked blocks).
    Hub,
}

/// Which reference's position-embedding resampling to reproduce.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Interpolation {
    /// transformers: resample to the output size; antialiased only in
    /// `Dinov2WithRegistersModel`.
    #[default]
    Hf,
    /// facebookresearch/dinov2: scale factor `(grid + 0.1) / native`,
    /// plain bicubic for the original models; output size and antialias for
    /// the `_reg` models.
    Hub,
}

fn d_hidden() -> usize {
    768
}
fn d_layers() -> usize {
    12
}
fn d_heads() -> usize {
    12
}
fn d_mlp_ratio() -> f64 {
    4.0
}
fn d_image() -> usize {
    518
}
fn d_patch() -> usize {
    14
}
fn d_channels() -> usize {
    3
}
fn d_eps() -> f64 {
    1e-6
}
fn d_one() -> f64 {
    1.0
}
fn d_true() -> bool {
    true
}

/// DINOv2 configuration under transformers' `Dinov2Config` field names (a
/// `config.json` deserialises directly; unknown fields are ignored), plus
/// the checkpoint layout and resampling rule. Defaults are
/// `facebook/dinov2-base` (ViT-B/14 at 518 px).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Dinov2Config {
    #[serde(default = "d_hidden")]
    pub hidden_size: usize,
    #[serde(default = "d_layers")]
    pub num_hidden_layers: usize,
    #[serde(default = "d_heads")]
    pub num_attention_heads: usize,
    #[serde(default = "d_mlp_ratio")]
    pub mlp_ratio: f64,
    /// Side of the square training image; `image_size / patch_size` is the
    /// native grid of the position-embedding table.
    #[serde(default = "d_image")]
    pub image_size: usize,
    #[serde(default = "d_patch")]
    pub patch_size: usize,
    #[serde(default = "d_channels")]
    pub num_channels: usize,
    #[serde(default = "d_eps")]
    pub layer_norm_eps: f64,
    /// Initial LayerScale value (only used when the builder creates weights).
    #[serde(default = "d_one")]
    pub layerscale_value: f64,
    /// 0 for the original models, 4 for the `with-registers` / `_reg` ones.
    #[serde(default)]
    pub num_register_tokens: usize,
    #[serde(default)]
    pub hidden_act: Activation,
    #[serde(default = "d_true")]
    pub qkv_bias: bool,
    /// SwiGLU feed-forward (ViT-g/14).
    #[serde(default)]
    pub use_swiglu_ffn: bool,
    #[serde(default)]
    pub names: NameScheme,
    #[serde(default)]
    pub interpolation: Interpolation,
    /// Overrides the resampling offset [`Self::pos_interpolation`] derives.
    #[serde(default)]
    pub interpolate_offset: Option<f64>,
    /// Overrides the antialias flag [`Self::pos_interpolation`] derives.
    #[serde(default)]
    pub interpolate_antialias: Option<bool>,
}

impl Default for Dinov2Config {
    fn default() -> Self {
        Self::vit_b14()
    }
}

impl Dinov2Config {
    /// ViT-B/14 (`facebook/dinov2-base`, hub `dinov2_vitb14`).
    pub fn vit_b14() -> Self {
        Self {
            hidden_size: 768,
            num_hidden_layers: 12,
            num_attention_heads: 12,
            mlp_ratio: 4.0,
            image_size: 518,
            patch_size: 14,
            num_channels: 3,
            layer_norm_eps: 1e-6,
            layerscale_value: 1.0,
            num_register_tokens: 0,
            hidden_act: Activation::Gelu,
            qkv_bias: true,
            use_swiglu_ffn: false,
            names: NameScheme::Hf,
            interpolation: Interpolation::Hf,
            interpolate_offset: None,
            interpolate_antialias: None,
        }
    }

    /// ViT-S/14 (384 wide, 12 layers, 6 heads).
    pub fn vit_s14() -> Self {
        Self {
            hidden_size: 384,
            num_attention_heads: 6,
            ..Self::vit_b14()
        }
    }

    /// ViT-L/14 (1024 wide, 24 layers, 16 heads).
    pub fn vit_l14() -> Self {
        Self {
            hidden_size: 1024,
            num_hidden_layers: 24,
            num_attention_heads: 16,
            ..Self::vit_b14()
        }
    }

    /// ViT-g/14 (1536 wide, 40 layers, 24 heads, SwiGLU).
    pub fn vit_g14() -> Self {
        Self {
            hidden_size: 1536,
            num_hidden_layers: 40,
            num_attention_heads: 24,
            use_swiglu_ffn: true,
            ..Self::vit_b14()
        }
    }

    /// The same model with `n` register tokens (the released ones have 4).
    pub fn with_registers(mut self, n: usize) -> Self {
        self.num_register_tokens = n;
        self
    }

    /// The torch-hub layout and resampling rule.
    pub fn hub(mut self) -> Self {
        self.names = NameScheme::Hub;
        self.interpolation = Interpolation::Hub;
        self
    }

    /// The position-embedding resampling in effect:
    ///
    /// | reference | offset | antialias |
    /// |---|---|---|
    /// | transformers `Dinov2Model` (`hf`, no registers) | 0 (output size) | no |
    /// | transformers `Dinov2WithRegistersModel` (`hf`, registers) | 0 | yes |
    /// | hub `dinov2_vit*14` (`hub`, no registers) | 0.1 (scale factor) | no |
    /// | hub `dinov2_vit*14_reg` (`hub`, registers) | 0 | yes |
    ///
    /// `interpolate_offset` / `interpolate_antialias` override the table.
    pub fn pos_interpolation(&self) -> PosInterpolation {
        let registers = self.num_register_tokens > 0;
        let offset = match self.interpolation {
            Interpolation::Hub if !registers => 0.1,
            _ => 0.0,
        };
        PosInterpolation {
            offset: self.interpolate_offset.unwrap_or(offset),
            antialias: self.interpolate_antialias.unwrap_or(registers),
        }
    }
}

/// What [`Dinov2Model::forward_with_layers`] returns.
#[derive(Debug, Clone)]
pub struct Dinov2Output {
    /// `(B, 1 + R + N, hidden)` after the final LayerNorm.
    pub last_hidden_state: Tensor,
    /// `(B, hidden)`: the normalised CLS token.
    pub pooler_output: Tensor,
    /// `(k, hidden state after layer k)` for each requested `k`, without the
    /// final norm (apply [`Dinov2Model::final_norm`] for the normed version).
    pub hidden_states: Vec<(usize, Tensor)>,
}

/// The DINOv2 backbone (HF `Dinov2Model`, hub `DinoVisionTransformer`).
#[derive(Debug, Clone)]
pub struct Dinov2Model {
    pub embeddings: Embeddings,
    pub layers: Vec<Layer>,
    pub layernorm: LayerNorm,
    config: Dinov2Config,
}

impl Dinov2Model {
    /// `vb` points at the model root (where `embeddings` / `cls_token` live).
    pub fn new(cfg: &Dinov2Config, vb: VarBuilder) -> Result<Self> {
        let (emb, layers, norm) = match cfg.names {
            NameScheme::Hf => (
                vb.pp("embeddings"),
                vb.pp("encoder").pp("layer"),
                vb.pp("layernorm"),
            ),
            NameScheme::Hub => (vb.clone(), vb.pp("blocks"), vb.pp("norm")),
        };
        let embeddings = Embeddings::new(cfg, emb)?;
        let layers = (0..cfg.num_hidden_layers)
            .map(|i| Layer::new(cfg, layers.pp(i)))
            .collect::<Result<Vec<_>>>()?;
        let layernorm = LayerNorm::new(cfg.hidden_size, cfg.layer_norm_eps, norm)?;
        Ok(Self {
            embeddings,
            layers,
            layernorm,
            config: cfg.clone(),
        })
    }

    pub fn config(&self) -> &Dinov2Config {
        &self.config
    }

    /// CLS plus register tokens ahead of the patch tokens.
    pub fn num_prefix_tokens(&self) -> usize {
        self.embeddings.num_prefix_tokens()
    }

    /// The patch grid `(gh, gw)` of an `h × w` input.
    pub fn patch_grid(&self, h: usize, w: usize) -> (usize, usize) {
        self.embeddings.patch_embeddings.grid(h, w)
    }

    /// The final LayerNorm.
    pub fn final_norm(&self, x: &Tensor) -> Result<Tensor> {
        self.layernorm.forward(x)
    }

    /// Drops CLS and registers: `(B, 1 + R + N, D)` → `(B, N, D)`.
    pub fn patch_tokens(&self, hidden: &Tensor) -> Result<Tensor> {
        let p = self.num_prefix_tokens();
        let n = hidden.dim(1)?;
        if n < p {
            candle_core::bail!("dinov2: a sequence of {n} tokens has no patch tokens");
        }
        hidden.narrow(1, p, n - p)
    }

    /// The full forward pass.
    pub fn forward(&self, pixel_values: &Tensor) -> Result<Dinov2Output> {
        self.forward_with_layers(pixel_values, &[])
    }

    /// The full forward pass, also returning the hidden states after each
    /// layer in `layers` (0 = embeddings, `k` = after layer `k`).
    pub fn forward_with_layers(
        &self,
        pixel_values: &Tensor,
        layers: &[usize],
    ) -> Result<Dinov2Output> {
        self.check_layers(layers)?;
        let mut x = self.embeddings.forward(pixel_values, None)?;
        let mut hidden_states = Vec::new();
        if layers.contains(&0) {
            hidden_states.push((0, x.clone()));
        }
        for (i, layer) in self.layers.iter().enumerate() {
            x = layer.forward(&x)?;
            if layers.contains(&(i + 1)) {
                hidden_states.push((i + 1, x.clone()));
            }
        }
        let last_hidden_state = self.final_norm(&x)?;
        let pooler_output = last_hidden_state.narrow(1, 0, 1)?.squeeze(1)?;
        Ok(Dinov2Output {
            last_hidden_state,
            pooler_output,
            hidden_states,
        })
    }

    /// Runs only the first `k` layers and returns their output without the
    /// final norm (an intermediate-layer feature without computing the rest).
    pub fn forward_to_layer(&self, pixel_values: &Tensor, k: usize) -> Result<Tensor> {
        self.check_layers(&[k])?;
        let mut x = self.embeddings.forward(pixel_values, None)?;
        for layer in &self.layers[..k] {
            x = layer.forward(&x)?;
        }
        Ok(x)
    }

    fn check_layers(&self, layers: &[usize]) -> Result<()> {
        let n = self.layers.len();
        if let Some(bad) = layers.iter().find(|&&k| k > n) {
            candle_core::bail!("dinov2: layer {bad} requested, the model has {n} layers (0..={n})");
        }
        Ok(())
    }
}

/// Parity replay: builds the model from the case's weights and returns
/// `last_hidden_state`, `pooler_output` and, for every `hidden_states.K` /
/// `hidden_states_norm.K` the case records, the layer-`K` output without /
/// with the final norm.
pub fn parity_forward(
    case: &Case,
    ckpt: &Checkpoint,
    device: &Device,
) -> Result<BTreeMap<String, Tensor>> {
    let cfg: Dinov2Config = case.config()?;
    let model = Dinov2Model::new(&cfg, ckpt.var_builder(DType::F32, device))?;
    let x = case.input("pixel_values")?.to_device(device)?;
    let mut layers = Vec::new();
    for name in case.outputs.keys() {
        let k = name
            .strip_prefix("hidden_states.")
            .or_else(|| name.strip_prefix("hidden_states_norm."));
        if let Some(k) = k {
            let k: usize = k.parse().map_err(|_| {
                candle_core::Error::Msg(format!("dinov2 parity: bad output name `{name}`"))
            })?;
            layers.push(k);
        }
    }
    let out = model.forward_with_layers(&x, &layers)?;
    let mut map = BTreeMap::new();
    for (k, h) in &out.hidden_states {
        map.insert(format!("hidden_states_norm.{k}"), model.final_norm(h)?);
        map.insert(format!("hidden_states.{k}"), h.clone());
    }
    map.insert("last_hidden_state".into(), out.last_hidden_state);
    map.insert("pooler_output".into(), out.pooler_output);
    Ok(map)
}

#[cfg(test)]
mod tests;
