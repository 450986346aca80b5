//! Scaled dot-product attention.

use candle_core::{Result, Tensor};

use crate::ops;

/// `softmax(q kᵀ · scale + mask) v` for `(batch, heads, seq, head_dim)`
/// tensors. `mask` is additive (0 where attention is allowed, a large negative
/// value where it is not) and broadcast against `(batch, heads, q_len, k_len)`.
pub fn scaled_dot_product_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: Option<&Tensor>,
    scale: f64,
) -> Result<Tensor> {
    let q = (q * scale)?;
    let mut scores = q.contiguous()?.matmul(&k.t()?.contiguous()?)?;
    if let Some(m) = mask {
        scores = crate::broadcast::add(&scores, m)?;
    }
    let probs = ops::softmax_last_dim(&scores)?;
    probs.matmul(&v.contiguous()?)
}

/// Splits `(batch, seq, heads * head_dim)` into `(batch, heads, seq, head_dim)`.
pub fn split_heads(x: &Tensor, heads: usize) -> Result<Tensor> {
    let (b, n, d) = x.dims3()?;
    x.reshape((b, n, heads, d / heads))?.transpose(1, 2)
}

/// Inverse of [`split_heads`].
pub fn merge_heads(x: &Tensor) -> Result<Tensor> {
    let (b, h, n, d) = x.dims4()?;
    x.transpose(1, 2)?.reshape((b, n, h * d))
}

/// An additive mask of shape `(batch, 1, 1, k_len)` from a `(batch, k_len)`
/// 0/1 keep-mask (1 = attend).
pub fn padding_mask(keep: &Tensor) -> Result<Tensor> {
    let (b, n) = keep.dims2()?;
    let neg = ((keep.ones_like()? - keep)? * f32::MIN as f64)?;
    neg.reshape((b, 1, 1, n))?.contiguous()
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device, Var};

    #[test]
    fn attention_matches_a_hand_computation_and_respects_the_mask() {
        let dev = Device::Cpu;
        // One head, two keys: q·k = [1, 0] → weights softmax([1, 0] * scale).
        let q = Tensor::new(&[[[[1.0f32, 0.0]]]], &dev).unwrap();
        let k = Tensor::new(&[[[[1.0f32, 0.0], [0.0, 1.0]]]], &dev).unwrap();
        let v = Tensor::new(&[[[[10.0f32], [20.0]]]], &dev).unwrap();
        let out: f32 = scaled_dot_product_attention(&q, &k, &v, None, 2.0)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap()[0];
        let w0 = 2f32.exp() / (2f32.exp() + 1.0);
        assert!((out - (10.0 * w0 + 20.0 * (1.0 - w0))).abs() < 1e-4);
        let keep = Tensor::new(&[[0.0f32, 1.0]], &dev).unwrap();
        let mask = padding_mask(&keep).unwrap();
        let out: f32 = scaled_dot_product_attention(&q, &k, &v, Some(&mask), 2.0)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap()[0];
        assert!((out - 20.0).abs() < 1e-4, "{out}");
    }

    #[test]
    fn heads_round_trip_and_gradients_flow_through_attention() {
        let dev = Device::Cpu;
        let x = Var::randn(0f32, 1.0, (2, 5, 12), &dev).unwrap();
        let h = split_heads(x.as_tensor(), 3).unwrap();
        assert_eq!(h.dims(), &[2, 3, 5, 4]);
        let back = merge_heads(&h).unwrap();
        let diff = (&back - x.as_tensor())
            .unwrap()
            .abs()
            .unwrap()
            .sum_all()
            .unwrap();
        assert_eq!(
            diff.to_dtype(DType::F32)
                .unwrap()
                .to_scalar::<f32>()
                .unwrap(),
            0.0
        );
        let y = scaled_dot_product_attention(&h, &h, &h, None, 0.5).unwrap();
        let g = y.sqr().unwrap().sum_all().unwrap().backward().unwrap();
        let gx = g.get(x.as_tensor()).expect("gradient reaches the input");
        assert!(
            gx.abs()
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap()
                > 0.0
        );
    }
}
