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
        scores = scores.broadcast_add(m)?;
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
