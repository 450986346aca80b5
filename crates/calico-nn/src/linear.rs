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

    // candle-nn 0.11.1's Linear takes a broadcast-matmul route for
    // non-contiguous batched inputs (e.g. after a transpose) that gives wrong
    // results, so inputs are made contiguous first (a no-op when they are).
    // The bias goes through `broadcast::add`, whose backward pass sums the
    // rows quickly (candle's `broadcast_add` in its `Linear` does not).
    fn base(&self, x: &Tensor) -> Result<Tensor> {
        let y = candle_nn::Linear::new(self.weight.clone(), None).forward(&x.contiguous()?)?;
        match &self.bias {
            Some(b) => crate::broadcast::add(&y, b),
            None => Ok(y),
        }
    }

    fn adapter(&self, l: &Lora, x: &Tensor) -> Result<Tensor> {
        let h = candle_nn::Linear::new(l.a.clone(), None).forward(&x.contiguous()?)?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::max_abs_diff;
    use candle_core::{DType, Device};
    use candle_nn::VarMap;
    use rand::SeedableRng;

    /// A LoRA layer whose B is non-zero (a fresh adapter is a no-op).
    fn trained_layer(varmap: &VarMap) -> Linear {
        let vb = VarBuilder::from_varmap(varmap, DType::F32, &Device::Cpu);
        let layer = Linear::new(6, 4, true, vb.pp("q_proj"))
            .unwrap()
            .with_lora(LoraConfig::default(), vb.pp("q_proj"))
            .unwrap();
        let data = varmap.data().lock().unwrap();
        let b = data.get("q_proj.lora_B.weight").unwrap();
        let v: Vec<f32> = (0..4 * 8)
            .map(|i| ((i * 7) % 11) as f32 / 11.0 - 0.5)
            .collect();
        b.set(&Tensor::from_vec(v, (4, 8), &Device::Cpu).unwrap())
            .unwrap();
        layer
    }

    #[test]
    fn lora_uses_peft_names_and_starts_as_a_no_op() {
        let varmap = VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
        let layer = Linear::new(6, 4, false, vb.pp("v_proj"))
            .unwrap()
            .with_lora(LoraConfig::default(), vb.pp("v_proj"))
            .unwrap();
        let mut names: Vec<String> = varmap.data().lock().unwrap().keys().cloned().collect();
        names.sort();
        assert_eq!(
            names,
            [
                "v_proj.lora_A.weight",
                "v_proj.lora_B.weight",
                "v_proj.weight"
            ]
        );
        let x = Tensor::randn(0f32, 1.0, (2, 3, 6), &Device::Cpu).unwrap();
        let base = Linear::from_tensors(layer.weight().clone(), None);
        assert_eq!(
            max_abs_diff(&layer.forward(&x).unwrap(), &base.forward(&x).unwrap()),
            0.0
        );
    }

    #[test]
    fn merge_and_unmerge_preserve_the_function() {
        let varmap = VarMap::new();
        let mut layer = trained_layer(&varmap);
        let x = Tensor::randn(0f32, 1.0, (2, 3, 6), &Device::Cpu).unwrap();
        let unmerged = layer.forward(&x).unwrap();
        let w0 = layer.weight().clone();
        let base = Linear::from_tensors(w0.clone(), layer.bias().cloned())
            .forward(&x)
            .unwrap();
        assert!(
            max_abs_diff(&unmerged, &base) > 1e-3,
            "adapter must change the output"
        );
        layer.merge().unwrap();
        assert!(layer.is_merged());
        assert!(max_abs_diff(&layer.forward(&x).unwrap(), &unmerged) < 1e-5);
        layer.unmerge().unwrap();
        assert!(max_abs_diff(layer.weight(), &w0) < 1e-6);
        assert!(max_abs_diff(&layer.forward(&x).unwrap(), &unmerged) < 1e-5);
    }

    #[test]
    fn gradients_reach_the_adapter_and_seeded_dropout_is_reproducible() {
        let varmap = VarMap::new();
        let layer = trained_layer(&varmap);
        let x = Tensor::randn(0f32, 1.0, (5, 6), &Device::Cpu).unwrap();
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        let y1 = layer.forward_train(&x, &mut rng).unwrap();
        let grads = y1.sqr().unwrap().sum_all().unwrap().backward().unwrap();
        crate::testing::assert_gradients_reach(
            &grads,
            varmap.data().lock().unwrap().iter(),
            "LoRA",
        );
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        let y2 = layer.forward_train(&x, &mut rng).unwrap();
        assert_eq!(max_abs_diff(&y1, &y2), 0.0);
    }

    #[test]
    fn non_contiguous_batched_inputs_give_the_same_result() {
        let w = Tensor::randn(0f32, 1.0, (5, 4), &Device::Cpu).unwrap();
        let layer = Linear::from_tensors(w, None);
        let x = Tensor::randn(0f32, 1.0, (3, 4, 6), &Device::Cpu).unwrap();
        let xt = x.transpose(1, 2).unwrap();
        let expected = layer.forward(&xt.contiguous().unwrap()).unwrap();
        assert!(max_abs_diff(&layer.forward(&xt).unwrap(), &expected) < 1e-5);
    }

    #[test]
    fn dropout_keeps_the_expected_fraction_and_rescales() {
        let x = Tensor::ones((100, 100), DType::F32, &Device::Cpu).unwrap();
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(9);
        let y: Vec<f32> = dropout(&x, 0.25, &mut rng)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let kept = y.iter().filter(|&&v| v > 0.0).count();
        assert!((7300..7700).contains(&kept), "{kept}");
        assert!(y.iter().all(|&v| v == 0.0 || (v - 4.0 / 3.0).abs() < 1e-6));
    }
}
