//! One LLaMA decoder layer (HF `LlamaDecoderLayer`): pre-norm attention and
//! a gated MLP, each added back to the residual stream.

use candle_core::{Result, Tensor};
use candle_nn::VarBuilder;
use rand::RngCore;

use calico_nn::{Activation, Linear, RmsNorm};

use super::attention::{project, projection, AttnContext, LlamaAttention};
use super::{LlamaConfig, LoraSpec, QuantizedWeights};

/// The gated MLP `down(act(gate(x)) · up(x))` (`model.layers.N.mlp`).
#[derive(Debug, Clone)]
pub struct LlamaMlp {
    pub gate_proj: Linear,
    pub up_proj: Linear,
    pub down_proj: Linear,
    act: Activation,
}

impl LlamaMlp {
    pub fn new(
        cfg: &LlamaConfig,
        base: VarBuilder,
        quantized: Option<&QuantizedWeights>,
        lora: Option<(&LoraSpec, &VarBuilder)>,
    ) -> Result<Self> {
        let (h, i, b) = (cfg.hidden_size, cfg.intermediate_size, cfg.mlp_bias);
        Ok(Self {
            gate_proj: projection(h, i, b, "gate_proj", &base, quantized, lora)?,
            up_proj: projection(h, i, b, "up_proj", &base, quantized, lora)?,
            down_proj: projection(i, h, b, "down_proj", &base, quantized, lora)?,
            act: cfg.hidden_act,
        })
    }

    pub(crate) fn forward(&self, x: &Tensor, rng: &mut Option<&mut dyn RngCore>) -> Result<Tensor> {
        let gate = self.act.apply(&project(&self.gate_proj, x, rng)?)?;
        let up = project(&self.up_proj, x, rng)?;
        project(&self.down_proj, &(gate * up)?, rng)
    }
}

/// `model.layers.N`.
#[derive(Debug, Clone)]
pub struct DecoderLayer {
    pub input_layernorm: RmsNorm,
    pub self_attn: LlamaAttention,
    pub post_attention_layernorm: RmsNorm,
    pub mlp: LlamaMlp,
}

impl DecoderLayer {
    /// `base` and `adapters` point at `model.layers.N`.
    pub fn new(
        cfg: &LlamaConfig,
        base: VarBuilder,
        quantized: Option<&QuantizedWeights>,
        lora: Option<(&LoraSpec, &VarBuilder)>,
    ) -> Result<Self> {
        let eps = cfg.rms_norm_eps;
        let attn_lora = lora.map(|(s, a)| (s, a.pp("self_attn")));
        let mlp_lora = lora.map(|(s, a)| (s, a.pp("mlp")));
        Ok(Self {
            input_layernorm: RmsNorm::new(cfg.hidden_size, eps, base.pp("input_layernorm"))?,
            self_attn: LlamaAttention::new(
                cfg,
                base.pp("self_attn"),
                quantized,
                attn_lora.as_ref().map(|(s, a)| (*s, a)),
            )?,
            post_attention_layernorm: RmsNorm::new(
                cfg.hidden_size,
                eps,
                base.pp("post_attention_layernorm"),
            )?,
            mlp: LlamaMlp::new(
                cfg,
                base.pp("mlp"),
                quantized,
                mlp_lora.as_ref().map(|(s, a)| (*s, a)),
            )?,
        })
    }

    pub(crate) fn linears_mut(&mut self) -> impl Iterator<Item = &mut Linear> {
        let mlp = [
            &mut self.mlp.gate_proj,
            &mut self.mlp.up_proj,
            &mut self.mlp.down_proj,
        ];
        self.self_attn.linears_mut().into_iter().chain(mlp)
    }

    pub(crate) fn forward(
        &self,
        x: &Tensor,
        ctx: &AttnContext,
        cache: Option<&mut Option<(Tensor, Tensor)>>,
        rng: &mut Option<&mut dyn RngCore>,
    ) -> Result<Tensor> {
        let a = self
            .self_attn
            .forward(&self.input_layernorm.forward(x)?, ctx, cache, rng)?;
        let h = (x + a)?;
        let m = self
            .mlp
            .forward(&self.post_attention_layernorm.forward(&h)?, rng)?;
        h + m
    }
}
