//! `nn.Linear` with an optional LoRA adapter using PEFT's tensor names.
//!
//! PEFT wraps a linear layer `…q_proj` as `…q_proj.base_layer.weight` plus
//! `…q_proj.lora_A.weight` (`r × in`) and `…q_proj.lora_B.weight`
//! (`out × r`); adapter files saved with `save_pretrained` drop the
//! `base_layer` level. The adapter adds `B(A(dropout(x))) · α / r`.

use candle_core::{Device, Result, Tensor};
use candle_nn::{Init, Module, VarBuilder};
use rand::Rng;
use serde::{Deserialize, Serialize};

/// LoRA hyper-parameters (PEFT `LoraConfig`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LoraConfig {
    /// Rank `r`.
    pub r: usize,
    /// `lora_alpha`; the update is scaled by `alpha / r`.
    pub alpha: f64,
    /// Dropout on the adapter's input while training.
    pub dropout: f32,
}

impl Default for LoraConfig {
    /// The paper's setting: r 8, α 16, dropout 0.05.
    fn default() -> Self {
        Self {
            r: 8,
            alpha: 16.0,
            dropout: 0.05,
        }
    }
}

impl LoraConfig {
    pub fn scaling(&self) -> f64 {
        self.alpha / self.r as f64
    }
}

#[derive(Debug, Clone)]
struct Lora {
    a: Tensor,
    b: Tensor,
    config: LoraConfig,
}

/// A linear layer `y = x Wᵀ + b`, optionally with a LoRA adapter.
#[derive(Debug, Clone)]
pub struct Linear {
    weight: Tensor,
    bias: Option<Tensor>,
    lora: Option<Lora>,
    merged: bool,
}

impl Linear {
    /// Loads `weight` (`out × in`) and, when `bias`, `bias` (`out`).
    pub fn new(in_dim: usize, out_dim: usize, bias: bool, vb: VarBuilder) -> Result<Self> {
        let bound = 1.0 / (in_dim as f64).sqrt();
        let weight = vb.get_with_hints(
            (out_dim, in_dim),
            "weight",
            Init::Uniform {
                lo: -bound,
                up: bound,
            },
        )?;
        let bias = if bias {
            Some(vb.get_with_hints(
                out_dim,
                "bias",
                Init::Uniform {
                    lo: -bound,
                    up: bound,
                },
            )?)
        } else {
            None
        };
        Ok(Self {
            weight,
            bias,
            lora: None,
            merged: false,
        })
    }

    /// Wraps existing tensors.
    pub fn from_tensors(weight: Tensor, bias: Option<Tensor>) -> Self {
        Self {
            weight,
            bias,
            lora: None,
            merged: false,
        }
    }

    /// Like [`Linear::new`] but with every tensor initialised to zero when
    /// the builder creates it (VPG-C's `zero_module`): the layer starts as the
    /// constant 0.
    pub fn zeros(in_dim: usize, out_dim: usize, bias: bool, vb: VarBuilder) -> Result<Self> {
        let weight = vb.get_with_hints((out_dim, in_dim), "weight", Init::Const(0.0))?;
        let bias = if bias {
            Some(vb.get_with_hints(out_dim, "bias", Init::Const(0.0))?)
        } else {
            None
        };
        Ok(Self::from_tensors(weight, bias))
    }

    /// Attaches a LoRA adapter read from (or created in) `vb`, which should
    /// point at the layer itself: tensors `lora_A.weight` and `lora_B.weight`.
    /// Fresh adapters follow PEFT: `A` Kaiming-uniform (a = √5), `B` zero.
    pub fn with_lora(mut self, config: LoraConfig, vb: VarBuilder) -> Result<Self> {
        let (out_dim, in_dim) = self.weight.dims2()?;
        let bound = 1.0 / (in_dim as f64).sqrt();
        let a = vb.pp("lora_A").get_with_hints(
            (config.r, in_dim),
            "weight",
            Init::Uniform {
                lo: -bound,
                up: bound,
            },
        )?;
        let b = vb
            .pp("lora_B")
            .get_with_hints((out_dim, config.r), "weight", Init::Const(0.0))?;
        self.lora = Some(Lora { a, b, config });
        Ok(self)
    }

    pub fn weight(&self) -> &Tensor {
        &self.weight
    }

    pub fn bias(&self) -> Option<&Tensor> {
        self.bias.as_ref()
    }

    pub fn has_lora(&self) -> bool {
        self.lora.is_some()
    }

    pub fn is_merged(&self) -> bool {
        self.merged
    }

    /// The LoRA update `B A · α / r` as an `out × in` matrix.
    fn delta(&self) -> Result<Option<Tensor>> {
        match &self.lora {
            Some(l) => Ok(Some((l.b.matmul(&l.a)? * l.config.scaling())?)),
            None => Ok(None),
        }
    }

    /// Folds the adapter into the base weight (PEFT `merge`); forward then
    /// skips the adapter. No-op without an adapter or when already merged.
    pub fn merge(&mut self) -> Result<()> {
        if self.merged {
            return Ok(());
        }
        if let Some(d) = self.delta()? {
            self.weight = (&self.weight.detach() + d.detach())?;
            self.merged = true;
        }
        Ok(())
    }

    /// Removes a merged adapter from the base weight (PEFT `unmerge`).
    pub fn unmerge(&mut self) -> Result<()> {
        if !self.merged {
            return Ok(());
        }
        if let Some(d) = self.delta()? {
            self.weight = (&self.weight - d.detach())?;
        }
        self.merged = false;
        Ok(())
    }

    fn base(&self, x: &Tensor) -> Result<Tensor> {
        candle_nn::Linear::new(self.weight.clone(), self.bias.clone()).forward(x)
    }

    fn adapter(&self, l: &Lora, x: &Tensor) -> Result<Tensor> {
        let h = candle_nn::Linear::new(l.a.clone(), None).forward(x)?;
        candle_nn::Linear::new(l.b.clone(), None).forward(&h)? * l.config.scaling()
    }

    /// Inference forward: no dropout.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let y = self.base(x)?;
        match (&self.lora, self.merged) {
            (Some(l), false) => y + self.adapter(l, x)?,
            _ => Ok(y),
        }
    }

    /// Training forward: the adapter's input goes through inverted dropout
    /// with a mask drawn from `rng`, so a seeded run is reproducible.
    pub fn forward_train(&self, x: &Tensor, rng: &mut impl Rng) -> Result<Tensor> {
        let y = self.base(x)?;
        match (&self.lora, self.merged) {
            (Some(l), false) => {
                let xd = dropout(x, l.config.dropout, rng)?;
                y + self.adapter(l, &xd)?
            }
            _ => Ok(y),
        }
    }
}

impl Module for Linear {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Linear::forward(self, x)
    }
}

/// Inverted dropout with probability `p`, the keep-mask drawn on the host
/// from `rng` (deterministic for a seeded generator on any device).
pub fn dropout(x: &Tensor, p: f32, rng: &mut impl Rng) -> Result<Tensor> {
    if p <= 0.0 {
        return Ok(x.clone());
    }
    if p >= 1.0 {
        return x.zeros_like();
    }
    let keep = 1.0 / (1.0 - p);
    let mask: Vec<f32> = (0..x.elem_count())
        .map(|_| if rng.random::<f32>() < p { 0.0 } else { keep })
        .collect();
    let mask = Tensor::from_vec(mask, x.shape(), &Device::Cpu)?
        .to_dtype(x.dtype())?
        .to_device(x.device())?;
    x * mask
}
