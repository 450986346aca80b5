//! Element-wise and normalisation ops with a fused fast path and a
//! differentiable slow path.

use candle_core::{DType, Result, Tensor, D};
use serde::{Deserialize, Serialize};

/// True when any of `xs` takes part in autograd (a `Var` or a tensor computed
/// from one). Frozen weights loaded from a checkpoint are plain tensors.
pub fn needs_grad(xs: &[&Tensor]) -> bool {
    xs.iter().any(|x| x.track_op())
}

fn opt_needs_grad(x: &Tensor, extra: &[Option<&Tensor>]) -> bool {
    x.track_op() || extra.iter().flatten().any(|t| t.track_op())
}

/// Layer normalisation over the last dimension:
/// `(x - mean) / sqrt(var + eps) * weight + bias` with the biased variance,
/// like `torch.nn.functional.layer_norm`.
pub fn layer_norm(
    x: &Tensor,
    weight: Option<&Tensor>,
    bias: Option<&Tensor>,
    eps: f64,
) -> Result<Tensor> {
    if !opt_needs_grad(x, &[weight, bias]) && x.dtype() == DType::F32 {
        if let (Some(w), Some(b)) = (weight, bias) {
            return candle_nn::ops::layer_norm(&x.contiguous()?, w, b, eps as f32);
        }
    }
    let mean = x.mean_keepdim(D::Minus1)?;
    let centred = x.broadcast_sub(&mean)?;
    let var = centred.sqr()?.mean_keepdim(D::Minus1)?;
    let mut y = centred.broadcast_div(&(var + eps)?.sqrt()?)?;
    if let Some(w) = weight {
        y = crate::broadcast::mul(&y, w)?;
    }
    if let Some(b) = bias {
        y = crate::broadcast::add(&y, b)?;
    }
    Ok(y)
}

/// Root-mean-square normalisation over the last dimension (LLaMA):
/// `x / sqrt(mean(x²) + eps) * weight`.
pub fn rms_norm(x: &Tensor, weight: &Tensor, eps: f64) -> Result<Tensor> {
    if !needs_grad(&[x, weight]) && x.dtype() == DType::F32 {
        return candle_nn::ops::rms_norm(&x.contiguous()?, weight, eps as f32);
    }
    let ms = x.sqr()?.mean_keepdim(D::Minus1)?;
    crate::broadcast::mul(&x.broadcast_div(&(ms + eps)?.sqrt()?)?, weight)
}

/// Softmax over the last dimension, numerically stabilised.
pub fn softmax_last_dim(x: &Tensor) -> Result<Tensor> {
    if !x.track_op() {
        return candle_nn::ops::softmax_last_dim(&x.contiguous()?);
    }
    crate::softmax::softmax_last_dim(x)
}

/// Rotary position embedding in the "rotate half" layout used by HF LLaMA:
/// `x * cos + rotate_half(x) * sin`. `x` is `(batch, heads, seq, head_dim)`;
/// `cos` and `sin` are `(seq, head_dim / 2)` or, per batch row,
/// `(batch, seq, head_dim / 2)`.
pub fn rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    if !needs_grad(&[x, cos, sin]) && x.dtype() == DType::F32 {
        return candle_nn::rotary_emb::rope(&x.contiguous()?, cos, sin);
    }
    let half = x.dim(D::Minus1)? / 2;
    let x1 = x.narrow(D::Minus1, 0, half)?;
    let x2 = x.narrow(D::Minus1, half, half)?;
    let mut cos = Tensor::cat(&[cos, cos], D::Minus1)?;
    let mut sin = Tensor::cat(&[sin, sin], D::Minus1)?;
    if cos.rank() == 3 {
        // Per-batch tables (B, T, D): broadcast over the head dimension.
        cos = cos.unsqueeze(1)?;
        sin = sin.unsqueeze(1)?;
    }
    let rotated = Tensor::cat(&[&x2.neg()?, &x1], D::Minus1)?;
    x.broadcast_mul(&cos)? + rotated.broadcast_mul(&sin)?
}

/// Activation functions by the names their reference configs use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum Activation {
    /// Exact GELU, `0.5 x (1 + erf(x / √2))` (`nn.GELU()`, HF `"gelu"`).
    #[default]
    #[serde(rename = "gelu")]
    Gelu,
    /// tanh approximation (HF `"gelu_new"`, `"gelu_pytorch_tanh"`).
    #[serde(rename = "gelu_tanh", alias = "gelu_new", alias = "gelu_pytorch_tanh")]
    GeluTanh,
    /// `x * sigmoid(1.702 x)` (OpenAI CLIP).
    #[serde(rename = "quick_gelu")]
    QuickGelu,
    #[serde(rename = "relu")]
    Relu,
    /// `x * sigmoid(x)` (LLaMA MLP).
    #[serde(rename = "silu")]
    Silu,
}

impl Activation {
    pub fn apply(self, x: &Tensor) -> Result<Tensor> {
        match self {
            Activation::Gelu => crate::gelu::gelu_erf(x),
            Activation::GeluTanh => x.gelu(),
            Activation::QuickGelu => x.broadcast_mul(&sigmoid(&(x * 1.702)?)?),
            Activation::Relu => x.relu(),
            Activation::Silu => x.broadcast_mul(&sigmoid(x)?),
        }
    }
}

/// Logistic sigmoid, differentiable (`1 / (1 + exp(-x))`).
pub fn sigmoid(x: &Tensor) -> Result<Tensor> {
    if !x.track_op() {
        return candle_nn::ops::sigmoid(x);
    }
    (x.neg()?.exp()? + 1.0)?.recip()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::max_abs_diff;
    use candle_core::{Device, Var};

    fn sample(shape: &[usize], seed: u64) -> Tensor {
        let n: usize = shape.iter().product();
        // A small deterministic generator keeps the test free of rand.
        let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        let v: Vec<f32> = (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                ((s >> 40) as f32 / (1u64 << 24) as f32) * 4.0 - 2.0
            })
            .collect();
        Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
    }

    #[test]
    fn fused_and_differentiable_paths_agree() {
        let x = sample(&[3, 5, 16], 1);
        let w = sample(&[16], 2);
        let b = sample(&[16], 3);
        let xv = Var::from_tensor(&x).unwrap();
        let xt = xv.as_tensor();
        assert!(needs_grad(&[xt]) && !needs_grad(&[&x]));

        let fast = layer_norm(&x, Some(&w), Some(&b), 1e-5).unwrap();
        let slow = layer_norm(xt, Some(&w), Some(&b), 1e-5).unwrap();
        assert!(max_abs_diff(&fast, &slow) < 1e-5);

        let fast = rms_norm(&x, &w, 1e-6).unwrap();
        let slow = rms_norm(xt, &w, 1e-6).unwrap();
        assert!(max_abs_diff(&fast, &slow) < 1e-5);

        let fast = softmax_last_dim(&x).unwrap();
        let slow = softmax_last_dim(xt).unwrap();
        assert!(max_abs_diff(&fast, &slow) < 1e-6);

        let fast = sigmoid(&x).unwrap();
        let slow = sigmoid(xt).unwrap();
        assert!(max_abs_diff(&fast, &slow) < 1e-6);

        let q = sample(&[2, 3, 5, 8], 4);
        let qv = Var::from_tensor(&q).unwrap();
        let cos = sample(&[5, 4], 5);
        let sin = sample(&[5, 4], 6);
        let fast = rope(&q, &cos, &sin).unwrap();
        let slow = rope(qv.as_tensor(), &cos, &sin).unwrap();
        assert!(max_abs_diff(&fast, &slow) < 1e-5);
        // Per-batch tables.
        let cos_b = sample(&[2, 5, 4], 10);
        let sin_b = sample(&[2, 5, 4], 11);
        let fast = rope(&q, &cos_b, &sin_b).unwrap();
        let slow = rope(qv.as_tensor(), &cos_b, &sin_b).unwrap();
        assert!(max_abs_diff(&fast, &slow) < 1e-5);
    }

    #[test]
    fn differentiable_paths_match_finite_differences() {
        // d/dx of sum(f(x) * r) for a fixed random r, checked per element.
        let x = sample(&[2, 6], 7).to_dtype(DType::F64).unwrap();
        let r = sample(&[2, 6], 8).to_dtype(DType::F64).unwrap();
        let w = sample(&[6], 9).to_dtype(DType::F64).unwrap();
        type Op<'a> = Box<dyn Fn(&Tensor) -> Tensor + 'a>;
        let fs: Vec<(&str, Op)> = vec![
            (
                "layer_norm",
                Box::new(|t: &Tensor| layer_norm(t, Some(&w), None, 1e-5).unwrap()),
            ),
            (
                "rms_norm",
                Box::new(|t: &Tensor| rms_norm(t, &w, 1e-6).unwrap()),
            ),
            (
                "softmax",
                Box::new(|t: &Tensor| softmax_last_dim(t).unwrap()),
            ),
            ("sigmoid", Box::new(|t: &Tensor| sigmoid(t).unwrap())),
        ];
        for (name, f) in fs {
            let xv = Var::from_tensor(&x).unwrap();
            let loss = (f(xv.as_tensor()) * &r).unwrap().sum_all().unwrap();
            let grads = loss.backward().unwrap();
            let g: Vec<f64> = grads
                .get(xv.as_tensor())
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap();
            let base: Vec<f64> = x.flatten_all().unwrap().to_vec1().unwrap();
            for i in 0..base.len() {
                let eval = |delta: f64| {
                    let mut v = base.clone();
                    v[i] += delta;
                    let t = Tensor::from_vec(v, x.shape(), x.device()).unwrap();
                    (f(&t) * &r)
                        .unwrap()
                        .sum_all()
                        .unwrap()
                        .to_scalar::<f64>()
                        .unwrap()
                };
                let numeric = (eval(1e-6) - eval(-1e-6)) / 2e-6;
                assert!(
                    (numeric - g[i]).abs() < 1e-5 * (1.0 + numeric.abs()),
                    "{name}: element {i}: analytic {} vs numeric {numeric}",
                    g[i]
                );
            }
        }
    }
}
