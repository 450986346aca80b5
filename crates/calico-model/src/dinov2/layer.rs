//! One DINOv2 transformer layer: pre-norm self-attention and feed-forward,
//! each residual branch scaled per channel by a LayerScale vector.
//!
//! ```text
//! x = x + ls1 ⊙ attn(norm1(x))
//! x = x + ls2 ⊙ ffn(norm2(x))
//! ```
//!
//! The feed-forward is a GELU MLP or, for ViT-g, a SwiGLU.

use calico_nn::attention::{merge_heads, scaled_dot_product_attention, split_heads};
use calico_nn::{Activation, LayerNorm, Linear};
use candle_core::{Result, Tensor, D};
use candle_nn::{Init, VarBuilder};

use super::{Dinov2Config, NameScheme};

/// Multi-head self-attention with one fused q/k/v projection.
///
/// HF checkpoints store `attention.attention.{query,key,value}` and
/// `attention.output.dense` (transformers 5 modules: `attention.{q,k,v,o}_proj`);
/// hub checkpoints store the fused `attn.qkv` (rows q, k, v) and `attn.proj`.
/// Separate projections are concatenated at load time, so gradients still
/// reach each stored tensor.
#[derive(Debug, Clone)]
pub struct Attention {
    qkv: Linear,
    proj: Linear,
    heads: usize,
    hidden: usize,
}

fn concat_linear(
    vb: &VarBuilder,
    names: &[&str],
    d_in: usize,
    d_out: usize,
    bias: bool,
) -> Result<Linear> {
    let parts = names
        .iter()
        .map(|n| Linear::new(d_in, d_out, bias, vb.pp(*n)))
        .collect::<Result<Vec<_>>>()?;
    // Built by `Linear::new` above: the weights are float tensors.
    let w: Vec<&Tensor> = parts.iter().filter_map(|l| l.weight()).collect();
    let b = if bias {
        let bs: Vec<&Tensor> = parts.iter().filter_map(|l| l.bias()).collect();
        Some(Tensor::cat(&bs, 0)?)
    } else {
        None
    };
    Ok(Linear::from_tensors(Tensor::cat(&w, 0)?, b))
}

impl Attention {
    /// `vb` points at the layer (`encoder.layer.N` / `blocks.N`).
    pub fn new(cfg: &Dinov2Config, vb: &VarBuilder) -> Result<Self> {
        let d = cfg.hidden_size;
        if cfg.num_attention_heads == 0 || !d.is_multiple_of(cfg.num_attention_heads) {
            candle_core::bail!(
                "dinov2: hidden_size {d} is not divisible by num_attention_heads {}",
                cfg.num_attention_heads
            );
        }
        let (qkv, proj) = match cfg.names {
            NameScheme::Hub => (
                Linear::new(d, 3 * d, cfg.qkv_bias, vb.pp("attn.qkv"))?,
                Linear::new(d, d, true, vb.pp("attn.proj"))?,
            ),
            NameScheme::Hf if vb.contains_tensor("attention.q_proj.weight") => (
                concat_linear(
                    &vb.pp("attention"),
                    &["q_proj", "k_proj", "v_proj"],
                    d,
                    d,
                    cfg.qkv_bias,
                )?,
                Linear::new(d, d, true, vb.pp("attention.o_proj"))?,
            ),
            NameScheme::Hf => (
                concat_linear(
                    &vb.pp("attention.attention"),
                    &["query", "key", "value"],
                    d,
                    d,
                    cfg.qkv_bias,
                )?,
                Linear::new(d, d, true, vb.pp("attention.output.dense"))?,
            ),
        };
        Ok(Self {
            qkv,
            proj,
            heads: cfg.num_attention_heads,
            hidden: d,
        })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let qkv = self.qkv.forward(x)?;
        let d = self.hidden;
        let q = split_heads(&qkv.narrow(D::Minus1, 0, d)?, self.heads)?;
        let k = split_heads(&qkv.narrow(D::Minus1, d, d)?, self.heads)?;
        let v = split_heads(&qkv.narrow(D::Minus1, 2 * d, d)?, self.heads)?;
        let scale = ((d / self.heads) as f64).powf(-0.5);
        let o = scaled_dot_product_attention(&q, &k, &v, None, scale)?;
        self.proj.forward(&merge_heads(&o)?)
    }
}

/// Per-channel scaling of a residual branch (`layer_scale1.lambda1` /
/// `ls1.gamma`).
#[derive(Debug, Clone)]
pub struct LayerScale {
    pub gamma: Tensor,
}

impl LayerScale {
    pub fn new(dim: usize, init: f64, name: &str, vb: &VarBuilder) -> Result<Self> {
        Ok(Self {
            gamma: vb.get_with_hints(dim, name, Init::Const(init))?,
        })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        calico_nn::broadcast::mul(x, &self.gamma)
    }
}

/// The feed-forward block.
#[derive(Debug, Clone)]
pub enum FeedForward {
    /// `fc2(act(fc1(x)))`, hidden width `int(hidden · mlp_ratio)`.
    Mlp {
        fc1: Linear,
        fc2: Linear,
        act: Activation,
    },
    /// `w3(silu(x W₁) ⊙ x W₂)` with the two input projections fused
    /// (`mlp.weights_in` HF / `mlp.w12` hub; gate rows first) and hidden
    /// width `8·⌈⌊⅔·int(hidden · mlp_ratio)⌋ / 8⌉`.
    SwiGlu {
        w12: Linear,
        w3: Linear,
        hidden: usize,
    },
}

/// The SwiGLU hidden width of the reference implementations.
pub fn swiglu_hidden(hidden_size: usize, mlp_ratio: f64) -> usize {
    let h = (hidden_size as f64 * mlp_ratio) as usize;
    ((h as f64 * 2.0 / 3.0) as usize).div_ceil(8) * 8
}

impl FeedForward {
    /// `vb` points at the layer's `mlp`.
    pub fn new(cfg: &Dinov2Config, vb: &VarBuilder) -> Result<Self> {
        let d = cfg.hidden_size;
        if !cfg.use_swiglu_ffn {
            let h = (d as f64 * cfg.mlp_ratio) as usize;
            return Ok(FeedForward::Mlp {
                fc1: Linear::new(d, h, true, vb.pp("fc1"))?,
                fc2: Linear::new(h, d, true, vb.pp("fc2"))?,
                act: cfg.hidden_act,
            });
        }
        let h = swiglu_hidden(d, cfg.mlp_ratio);
        let (w12, w3) = match cfg.names {
            NameScheme::Hub => (
                Linear::new(d, 2 * h, true, vb.pp("w12"))?,
                Linear::new(h, d, true, vb.pp("w3"))?,
            ),
            NameScheme::Hf if vb.contains_tensor("gate_proj.weight") => (
                concat_linear(vb, &["gate_proj", "up_proj"], d, h, true)?,
                Linear::new(h, d, true, vb.pp("down_proj"))?,
            ),
            NameScheme::Hf => (
                Linear::new(d, 2 * h, true, vb.pp("weights_in"))?,
                Linear::new(h, d, true, vb.pp("weights_out"))?,
            ),
        };
        Ok(FeedForward::SwiGlu { w12, w3, hidden: h })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match self {
            FeedForward::Mlp { fc1, fc2, act } => fc2.forward(&act.apply(&fc1.forward(x)?)?),
            FeedForward::SwiGlu { w12, w3, hidden } => {
                let x12 = w12.forward(x)?;
                let gate = Activation::Silu.apply(&x12.narrow(D::Minus1, 0, *hidden)?)?;
                let up = x12.narrow(D::Minus1, *hidden, *hidden)?;
                w3.forward(&(gate * up)?)
            }
        }
    }
}

/// One transformer layer (HF `Dinov2Layer`, hub `Block`).
#[derive(Debug, Clone)]
pub struct Layer {
    pub norm1: LayerNorm,
    pub attention: Attention,
    pub layer_scale1: LayerScale,
    pub norm2: LayerNorm,
    pub mlp: FeedForward,
    pub layer_scale2: LayerScale,
}

impl Layer {
    /// `vb` points at the layer (`encoder.layer.N` / `blocks.N`).
    pub fn new(cfg: &Dinov2Config, vb: VarBuilder) -> Result<Self> {
        let d = cfg.hidden_size;
        let eps = cfg.layer_norm_eps;
        let (ls1, ls2) = match cfg.names {
            NameScheme::Hf => ("layer_scale1.lambda1", "layer_scale2.lambda1"),
            NameScheme::Hub => ("ls1.gamma", "ls2.gamma"),
        };
        Ok(Self {
            norm1: LayerNorm::new(d, eps, vb.pp("norm1"))?,
            attention: Attention::new(cfg, &vb)?,
            layer_scale1: LayerScale::new(d, cfg.layerscale_value, ls1, &vb)?,
            norm2: LayerNorm::new(d, eps, vb.pp("norm2"))?,
            mlp: FeedForward::new(cfg, &vb.pp("mlp"))?,
            layer_scale2: LayerScale::new(d, cfg.layerscale_value, ls2, &vb)?,
        })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let a = self.attention.forward(&self.norm1.forward(x)?)?;
        let x = (x + self.layer_scale1.forward(&a)?)?;
        let m = self.mlp.forward(&self.norm2.forward(&x)?)?;
        x + self.layer_scale2.forward(&m)?
    }
}
