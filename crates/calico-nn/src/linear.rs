//! `nn.Linear` with an optional LoRA adapter using PEFT's tensor names.
//!
//! PEFT wraps a linear layer `…q_proj` as `…q_proj.base_layer.weight` plus
//! `…q_proj.lora_A.weight` (`r × in`) and `…q_proj.lora_B.weight`
//! (`out × r`); adapter files saved with `save_pretrained` drop the
//! `base_layer` level. The adapter adds `B(A(dropout(x))) · α / r`.
//!
//! The base weight is either a float tensor or a block-quantised one
//! ([`Linear::from_qtensor`], llama.cpp's types such as Q4_K or Q8_0), kept
//! in its stored form and multiplied as [`QuantizedMatmul`] says. A
//! quantised layer is for inference: its adapter stays unmerged, and
//! [`Linear::forward_train`] refuses it.

use std::sync::Arc;

use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
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

/// How a block-quantised weight is multiplied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum QuantizedMatmul {
    /// The weight's float32 values times float32 inputs: the numbers of the
    /// float path (up to the order of additions), with only the quantised
    /// blocks held between products. On the CPU, inputs of at most
    /// [`GEMV_MAX_ROWS`](crate::qgemv::GEMV_MAX_ROWS) rows take
    /// [`crate::qgemv`] (each weight row dequantised into a small buffer);
    /// longer inputs, and other devices, expand the weight to float32 for
    /// the product and drop it afterwards.
    #[default]
    Dequantize,
    /// llama.cpp's integer kernels (candle's `QMatMul`) for inputs of at
    /// most [`Q8_MAX_ROWS`] rows (one-token decoding steps): the input is
    /// quantised to 8 bits per block too, and the weight is never expanded.
    /// On the CPU no faster than `Dequantize` since [`crate::qgemv`] (SmolLM2
    /// decodes 19.7 tokens/s against 20.2 on two cores), and every product
    /// moves by about 0.5 % of its largest value,
    /// which adds up over the layers. Longer inputs (a
    /// prompt's prefill) take the `Dequantize` product, which candle runs
    /// much faster there.
    Q8,
}

impl QuantizedMatmul {
    pub const ALL: [QuantizedMatmul; 2] = [QuantizedMatmul::Dequantize, QuantizedMatmul::Q8];

    /// `dequantize` or `q8`.
    pub fn name(self) -> &'static str {
        match self {
            QuantizedMatmul::Dequantize => "dequantize",
            QuantizedMatmul::Q8 => "q8",
        }
    }
}

impl std::str::FromStr for QuantizedMatmul {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        Self::ALL
            .into_iter()
            .find(|m| m.name() == s)
            .ok_or_else(|| format!("`{s}` is not a quantized matmul: expected dequantize or q8"))
    }
}

/// Inputs with more rows than this take the dequantised product even with
/// [`QuantizedMatmul::Q8`].
pub const Q8_MAX_ROWS: usize = 8;

/// `x · Wᵀ` for a block-quantised `W`, as [`QuantizedMatmul`] says, with no
/// gradient recorded.
pub(crate) fn quantized_product(
    q: &Arc<QTensor>,
    matmul: QuantizedMatmul,
    x: &Tensor,
) -> Result<Tensor> {
    let rows = x.elem_count() / x.dim(candle_core::D::Minus1)?.max(1);
    if matmul == QuantizedMatmul::Q8 && rows <= Q8_MAX_ROWS {
        QMatMul::QTensor(q.clone()).forward(x)
    } else if let Some(y) = crate::qgemv::dequantized_product(q, x)? {
        Ok(y)
    } else {
        let w = q.dequantize(&q.device())?;
        candle_nn::Linear::new(w, None).forward(x)
    }
}

/// The base weight `W` (`out × in`).
#[derive(Debug, Clone)]
enum Weight {
    Dense(Tensor),
    Quantized(Arc<QTensor>, QuantizedMatmul),
}

/// A linear layer `y = x Wᵀ + b`, optionally with a LoRA adapter.
#[derive(Debug, Clone)]
pub struct Linear {
    weight: Weight,
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
        Ok(Self::from_tensors(weight, bias))
    }

    /// Wraps existing tensors.
    pub fn from_tensors(weight: Tensor, bias: Option<Tensor>) -> Self {
        Self {
            weight: Weight::Dense(weight),
            bias,
            lora: None,
            merged: false,
        }
    }

    /// Wraps a stored weight (`out × in`). Block-quantised types stay
    /// quantised; float ones (F32, F16, BF16) are converted to a float32
    /// tensor, as [`Linear::from_tensors`] would hold them.
    pub fn from_qtensor(
        weight: Arc<QTensor>,
        bias: Option<Tensor>,
        matmul: QuantizedMatmul,
    ) -> Result<Self> {
        let (out_dim, in_dim) = weight.shape().dims2()?;
        if let Some(b) = &bias {
            if b.dims() != [out_dim] {
                candle_core::bail!(
                    "bias of shape {:?} does not fit a ({out_dim}, {in_dim}) weight",
                    b.dims()
                );
            }
        }
        let weight = if crate::qrows::is_float(weight.dtype()) {
            Weight::Dense(weight.dequantize(&weight.device())?)
        } else {
            Weight::Quantized(weight, matmul)
        };
        Ok(Self {
            weight,
            bias,
            lora: None,
            merged: false,
        })
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
        let (out_dim, in_dim) = self.dims()?;
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

    /// `(out, in)`.
    pub fn dims(&self) -> Result<(usize, usize)> {
        match &self.weight {
            Weight::Dense(w) => w.dims2(),
            Weight::Quantized(q, _) => q.shape().dims2(),
        }
    }

    /// The float base weight; `None` when it is kept quantised.
    pub fn weight(&self) -> Option<&Tensor> {
        match &self.weight {
            Weight::Dense(w) => Some(w),
            Weight::Quantized(..) => None,
        }
    }

    /// The storage type of a quantised base weight (`None` for a float one).
    pub fn quantized_dtype(&self) -> Option<GgmlDType> {
        match &self.weight {
            Weight::Dense(_) => None,
            Weight::Quantized(q, _) => Some(q.dtype()),
        }
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
    /// skips the adapter. No-op without an adapter or when already merged,
    /// and for a quantised base weight, whose adapter keeps running beside
    /// it (folding it in would need a re-quantisation that loses it).
    pub fn merge(&mut self) -> Result<()> {
        if self.merged {
            return Ok(());
        }
        let Weight::Dense(w) = &self.weight else {
            return Ok(());
        };
        if let Some(d) = self.delta()? {
            self.weight = Weight::Dense((&w.detach() + d.detach())?);
            self.merged = true;
        }
        Ok(())
    }

    /// Removes a merged adapter from the base weight (PEFT `unmerge`).
    pub fn unmerge(&mut self) -> Result<()> {
        if !self.merged {
            return Ok(());
        }
        if let (Some(d), Weight::Dense(w)) = (self.delta()?, &self.weight) {
            self.weight = Weight::Dense((w - d.detach())?);
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
        let x = x.contiguous()?;
        let y = match &self.weight {
            // A frozen weight under a tracked input (a frozen LLM under
            // LoRA): candle's matmul backward would compute the weight's
            // gradient too, which nothing reads.
            Weight::Dense(w) if x.track_op() && !w.track_op() => {
                let y0 = candle_nn::Linear::new(w.clone(), None).forward(&x.detach())?;
                crate::input_grad::with_input_grad_dense(&x, y0, w)?
            }
            Weight::Dense(w) => candle_nn::Linear::new(w.clone(), None).forward(&x)?,
            Weight::Quantized(q, matmul) => {
                // The product runs without a graph; a tracked input gets
                // its gradient from `input_grad`, which dequantises the weight
                // again in the backward pass instead of keeping it.
                let y0 = quantized_product(q, *matmul, &x.detach())?;
                crate::input_grad::with_input_grad(&x, y0, std::slice::from_ref(q))?
            }
        };
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
    /// A block-quantised base weight stays frozen and quantised; the input
    /// still gets its gradient ([`crate::input_grad`]), so adapters of earlier
    /// layers train through it (QLoRA).
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
    use crate::testing::{max_abs_diff, max_rel_diff};
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
        let base = Linear::from_tensors(layer.weight().unwrap().clone(), None);
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
        let w0 = layer.weight().unwrap().clone();
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
        assert!(max_abs_diff(layer.weight().unwrap(), &w0) < 1e-6);
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

    /// A `(out, in)` weight quantised to `dtype`, and the same weight
    /// dequantised (what the quantised layer multiplies by).
    fn quantized(dtype: GgmlDType, out_dim: usize, in_dim: usize) -> (Arc<QTensor>, Tensor) {
        let w = Tensor::randn(0f32, 0.5, (out_dim, in_dim), &Device::Cpu).unwrap();
        let q = QTensor::quantize(&w, dtype).unwrap();
        let dq = q.dequantize(&Device::Cpu).unwrap();
        (Arc::new(q), dq)
    }

    #[test]
    fn a_quantized_weight_stays_quantized_and_matches_its_dequantized_matmul() {
        let bias = Tensor::randn(0f32, 1.0, 8, &Device::Cpu).unwrap();
        let x = Tensor::randn(0f32, 1.0, (2, 3, 64), &Device::Cpu).unwrap();
        for dtype in [GgmlDType::Q8_0, GgmlDType::Q4_1, GgmlDType::Q4K] {
            let in_dim = if dtype == GgmlDType::Q4K { 256 } else { 64 };
            let x = if in_dim == 64 {
                x.clone()
            } else {
                Tensor::randn(0f32, 1.0, (2, 3, in_dim), &Device::Cpu).unwrap()
            };
            let (q, dq) = quantized(dtype, 8, in_dim);
            let dense = Linear::from_tensors(dq, Some(bias.clone()));
            let want = dense.forward(&x).unwrap();
            for matmul in QuantizedMatmul::ALL {
                let layer = Linear::from_qtensor(q.clone(), Some(bias.clone()), matmul).unwrap();
                assert_eq!(layer.quantized_dtype(), Some(dtype));
                assert!(layer.weight().is_none());
                assert_eq!(layer.dims().unwrap(), (8, in_dim));
                let y = layer.forward(&x).unwrap();
                assert_eq!(y.dims(), [2, 3, 8]);
                let diff = max_rel_diff(&y, &want);
                match matmul {
                    // The float product of the same weight.
                    QuantizedMatmul::Dequantize => assert!(diff < 1e-6, "{dtype:?}: {diff}"),
                    // The input is quantised to 8 bits per block for the
                    // integer dot products: a small error.
                    QuantizedMatmul::Q8 => {
                        assert!(diff < 0.02, "{dtype:?}: {diff}");
                        assert!(diff > 0.0, "{dtype:?} must run the integer kernels");
                    }
                }
            }
        }
        // Past Q8_MAX_ROWS rows, q8 takes the dequantised product.
        let (q, dq) = quantized(GgmlDType::Q8_0, 8, 64);
        let long = Tensor::randn(0f32, 1.0, (1, Q8_MAX_ROWS + 1, 64), &Device::Cpu).unwrap();
        let want = Linear::from_tensors(dq, None).forward(&long).unwrap();
        let q8 = Linear::from_qtensor(q, None, QuantizedMatmul::Q8).unwrap();
        assert!(max_abs_diff(&q8.forward(&long).unwrap(), &want) < 1e-5);
        // A float storage type becomes a float32 weight.
        let w = Tensor::randn(0f32, 1.0, (4, 32), &Device::Cpu).unwrap();
        let f16 = QTensor::quantize(&w, GgmlDType::F16).unwrap();
        let layer = Linear::from_qtensor(Arc::new(f16), None, QuantizedMatmul::Q8).unwrap();
        assert!(layer.quantized_dtype().is_none());
        assert!(max_abs_diff(layer.weight().unwrap(), &w) < 1e-3);
        let wrong = Tensor::zeros(5, DType::F32, &Device::Cpu).unwrap();
        let (q, _) = quantized(GgmlDType::Q8_0, 8, 64);
        let e = Linear::from_qtensor(q, Some(wrong), QuantizedMatmul::Q8).unwrap_err();
        assert!(
            e.to_string().contains("does not fit a (8, 64) weight"),
            "{e}"
        );
    }

    #[test]
    fn a_lora_adapter_runs_beside_a_quantized_weight() {
        let varmap = VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
        let (q, dq) = quantized(GgmlDType::Q8_0, 4, 32);
        let mut layer = Linear::from_qtensor(q.clone(), None, QuantizedMatmul::Q8)
            .unwrap()
            .with_lora(LoraConfig::default(), vb.pp("q_proj"))
            .unwrap();
        let b = Tensor::randn(0f32, 1.0, (4, 8), &Device::Cpu).unwrap();
        varmap
            .data()
            .lock()
            .unwrap()
            .get("q_proj.lora_B.weight")
            .unwrap()
            .set(&b)
            .unwrap();
        let x = Tensor::randn(0f32, 1.0, (3, 32), &Device::Cpu).unwrap();
        let base = Linear::from_qtensor(q, None, QuantizedMatmul::Q8)
            .unwrap()
            .forward(&x)
            .unwrap();
        let y = layer.forward(&x).unwrap();
        let lora_only = (&y - &base).unwrap();
        let mut dense = Linear::from_tensors(dq.clone(), None)
            .with_lora(LoraConfig::default(), vb.pp("q_proj"))
            .unwrap();
        let want =
            (dense.forward(&x).unwrap() - Linear::from_tensors(dq, None).forward(&x)).unwrap();
        assert!(max_abs_diff(&lora_only, &want) < 1e-4);
        // Merging leaves a quantised layer as it was: same function.
        layer.merge().unwrap();
        assert!(!layer.is_merged());
        assert_eq!(max_abs_diff(&layer.forward(&x).unwrap(), &y), 0.0);
        dense.merge().unwrap();
        assert!(dense.is_merged());
        assert_eq!("q8".parse::<QuantizedMatmul>(), Ok(QuantizedMatmul::Q8));
        assert!("q4"
            .parse::<QuantizedMatmul>()
            .unwrap_err()
            .contains("expected dequantize or q8"));
    }

    /// QLoRA: a quantised layer trains its adapter and passes its input the
    /// gradient a float layer over the dequantised weight would.
    #[test]
    fn training_through_a_quantized_weight_gives_the_dequantized_gradients() {
        let dev = Device::Cpu;
        for dtype in [GgmlDType::Q4_0, GgmlDType::Q4K, GgmlDType::Q8_0] {
            let in_dim = if dtype == GgmlDType::Q4K { 256 } else { 64 };
            let (q, dq) = quantized(dtype, 6, in_dim);
            let (qmap, dmap) = (VarMap::new(), VarMap::new());
            let qvb = VarBuilder::from_varmap(&qmap, DType::F32, &dev);
            let dvb = VarBuilder::from_varmap(&dmap, DType::F32, &dev);
            let bias = Tensor::randn(0f32, 1.0, 6, &dev).unwrap();
            let qlayer = Linear::from_qtensor(q, Some(bias.clone()), QuantizedMatmul::Q8)
                .unwrap()
                .with_lora(LoraConfig::default(), qvb.pp("p"))
                .unwrap();
            let dlayer = Linear::from_tensors(dq, Some(bias))
                .with_lora(LoraConfig::default(), dvb.pp("p"))
                .unwrap();
            // The same adapter values in both, B non-zero.
            for name in ["p.lora_A.weight", "p.lora_B.weight"] {
                let qv = qmap.data().lock().unwrap().get(name).unwrap().clone();
                let shape = qv.as_tensor().shape().clone();
                let v = Tensor::randn(0f32, 0.5, shape, &dev).unwrap();
                qv.set(&v).unwrap();
                dmap.data()
                    .lock()
                    .unwrap()
                    .get(name)
                    .unwrap()
                    .set(&v)
                    .unwrap();
            }
            let x0 = Tensor::randn(0f32, 1.0, (2, 5, in_dim), &dev).unwrap();
            let weights = Tensor::randn(0f32, 1.0, (2, 5, 6), &dev).unwrap();
            let grads = |layer: &Linear, map: &VarMap| {
                let x = candle_core::Var::from_tensor(&x0).unwrap();
                let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
                let y = layer.forward_train(x.as_tensor(), &mut rng).unwrap();
                let loss = (y.clone() * &weights).unwrap().sum_all().unwrap();
                let g = loss.backward().unwrap();
                let data = map.data().lock().unwrap();
                let input = "x".to_string();
                crate::testing::assert_gradients_reach(
                    &g,
                    data.iter().chain(std::iter::once((&input, &x))),
                    &format!("{dtype:?}"),
                );
                let a = g.get(data.get("p.lora_A.weight").unwrap()).unwrap().clone();
                let b = g.get(data.get("p.lora_B.weight").unwrap()).unwrap().clone();
                (y, g.get(x.as_tensor()).unwrap().clone(), a, b)
            };
            let (qy, qx, qa, qb) = grads(&qlayer, &qmap);
            let (dy, dx, da, db) = grads(&dlayer, &dmap);
            assert!(max_rel_diff(&qy, &dy) < 1e-5, "{dtype:?} output");
            assert!(max_rel_diff(&qx, &dx) < 1e-5, "{dtype:?} input gradient");
            assert!(max_rel_diff(&qa, &da) < 1e-5, "{dtype:?} lora_A gradient");
            assert!(max_rel_diff(&qb, &db) < 1e-5, "{dtype:?} lora_B gradient");
        }
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
