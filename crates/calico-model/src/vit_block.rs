//! The pre-norm transformer block shared by the HF-named ViTs (EVA-CLIP,
//! CLIP): `x + attn(layer_norm1(x))`, then `x + mlp(layer_norm2(x))`, with
//! tensors `layer_norm1`, `self_attn`, `layer_norm2`, `mlp.fc{1,2}`.

use calico_nn::{Activation, LayerNorm, Mlp};
use candle_core::{Result, Tensor};
use candle_nn::{Module, VarBuilder};

/// One block; `A` is the model's self-attention.
#[derive(Debug, Clone)]
pub struct PreNormBlock<A> {
    layer_norm1: LayerNorm,
    self_attn: A,
    layer_norm2: LayerNorm,
    mlp: Mlp,
}

/// The sizes a block needs from its model's config.
pub struct BlockDims {
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub layer_norm_eps: f64,
    pub hidden_act: Activation,
}

impl<A: Module> PreNormBlock<A> {
    /// `vb` points at the block; `self_attn` is built by the caller from
    /// `vb.pp("self_attn")`.
    pub fn new(dims: &BlockDims, self_attn: A, vb: VarBuilder) -> Result<Self> {
        let (d, eps) = (dims.hidden_size, dims.layer_norm_eps);
        Ok(Self {
            layer_norm1: LayerNorm::new(d, eps, vb.pp("layer_norm1"))?,
            self_attn,
            layer_norm2: LayerNorm::new(d, eps, vb.pp("layer_norm2"))?,
            mlp: Mlp::new(d, dims.intermediate_size, dims.hidden_act, vb.pp("mlp"))?,
        })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let x = (x + self.self_attn.forward(&self.layer_norm1.forward(x)?)?)?;
        &x + self.mlp.forward(&self.layer_norm2.forward(&x)?)?
    }
}
