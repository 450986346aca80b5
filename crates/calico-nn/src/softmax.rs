//! Softmax over the last dimension as one op with a one-pass backward.
//!
//! candle's fused `softmax_last_dim` has no backward pass, so training
//! built softmax from differentiable ops (`x − max`, `exp`, a row sum, a
//! broadcast division): five tensor ops forward and about ten backward,
//! each a pass over the attention scores and an allocation, which made
//! attention's softmax a twentieth of a stage-2 step (`perf`).
//! [`softmax_last_dim`] computes the same rows in one pass, keeps the
//! exponentials and row sums beside the graph, and forms the gradient in
//! one pass too.
//!
//! Both passes repeat the composed ops' float operations in their order:
//! the same `expf`, row sums through candle's own `vec_reduce_sum` (its
//! SIMD order), and the division's backward as candle forms it
//! (`g / s`, and `0 − (g · e) / (s · s)` summed over the row), so values and
//! gradients are those of the composed ops bit for bit. Without a gradient,
//! on other devices and dtypes it is the composed ops (and, without a
//! gradient, candle's fused kernel, as before: see `ops::softmax_last_dim`).

use std::sync::Mutex;

use candle_core::cpu::kernels::VecOps;
use candle_core::{CpuStorage, CustomOp1, DType, Device, Layout, Result, Shape, Tensor, D};

use crate::storage::f32_slice;

/// Softmax over the last dimension of a tracked `f32` CPU tensor, equal
/// bit for bit (values and gradients) to [`composed`].
pub fn softmax_last_dim(x: &Tensor) -> Result<Tensor> {
    if !x.track_op() || !x.device().is_cpu() || x.dtype() != DType::F32 || x.elem_count() == 0 {
        return composed(x);
    }
    x.contiguous()?.apply_op1(Softmax {
        saved: Mutex::new(None),
    })
}

/// The differentiable ops softmax is built from: `exp(x − max)` divided by
/// its row sum, the max held out of the gradient.
pub fn composed(x: &Tensor) -> Result<Tensor> {
    let max = x.max_keepdim(D::Minus1)?.detach();
    let e = x.broadcast_sub(&max)?.exp()?;
    e.broadcast_div(&e.sum_keepdim(D::Minus1)?)
}

/// The op of one call: the exponentials `exp(x − max)` and each row's sum,
/// set by the forward pass and read by the backward pass.
struct Softmax {
    saved: Mutex<Option<(Vec<f32>, Vec<f32>)>>,
}

/// The sum of `row` in candle's order (`sum_keepdim` over a contiguous
/// last dimension).
fn row_sum(row: &[f32]) -> f32 {
    let mut s = 0f32;
    // SAFETY: `row` holds `row.len()` elements and `s` is a valid f32.
    unsafe { <f32 as VecOps>::vec_reduce_sum(row.as_ptr(), &mut s, row.len()) };
    s
}

fn row_len(shape: &Shape) -> usize {
    shape.dims().last().copied().unwrap_or(1)
}

impl CustomOp1 for Softmax {
    fn name(&self) -> &'static str {
        "calico-softmax-last-dim"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let xs = f32_slice(storage, layout, "softmax_last_dim")?;
        let n = row_len(layout.shape());
        let mut e = Vec::with_capacity(xs.len());
        let mut sums = Vec::with_capacity(xs.len() / n.max(1));
        let mut y = Vec::with_capacity(xs.len());
        for row in xs.chunks_exact(n) {
            let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let from = e.len();
            e.extend(row.iter().map(|&v| (v - max).exp()));
            let s = row_sum(&e[from..]);
            y.extend(e[from..].iter().map(|&v| v / s));
            sums.push(s);
        }
        *self.saved.lock().unwrap_or_else(|p| p.into_inner()) = Some((e, sums));
        Ok((CpuStorage::F32(y), layout.shape().clone()))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        if !arg.track_op() {
            return Ok(None);
        }
        let saved = self.saved.lock().unwrap_or_else(|p| p.into_inner());
        let Some((e, sums)) = saved.as_ref() else {
            candle_core::bail!("softmax_last_dim: backward pass before the forward pass");
        };
        let g = grad_res
            .contiguous()?
            .flatten_all()?
            .to_dtype(DType::F32)?
            .to_vec1::<f32>()?;
        let n = row_len(arg.shape());
        let mut out = Vec::with_capacity(g.len());
        let mut s_grad_terms = vec![0f32; n];
        for ((gr, er), &s) in g.chunks_exact(n).zip(e.chunks_exact(n)).zip(sums) {
            // The division's gradient into the row sum: `0 − (g · e) / (s · s)`
            // per element (its `sub` from zero), summed over the row, then
            // added to zero (the broadcast's and the sum's `add`).
            for ((t, &gv), &ev) in s_grad_terms.iter_mut().zip(gr).zip(er) {
                *t = 0. - (gv * ev) / (s * s);
            }
            let gs = 0. + row_sum(&s_grad_terms);
            // Into each exponential: `g / s` and the row sum's gradient,
            // then through `exp` (times `e`).
            out.extend(gr.iter().zip(er).map(|(&gv, &ev)| (gv / s + gs) * ev));
        }
        Ok(Some(Tensor::from_vec(out, arg.shape(), &Device::Cpu)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{seeded_uniform, value_and_gradient_bits};
    use candle_core::Var;

    #[test]
    fn matches_the_composed_ops_bit_for_bit() {
        // Rows shorter and longer than candle's SIMD step (32), and one not
        // a multiple of it; scores wide enough to underflow some exps.
        for (dims, scale) in [
            (&[2usize, 3, 5, 7][..], 4.),
            (&[3, 4, 50, 50][..], 8.),
            (&[6, 64][..], 40.),
            (&[4, 1][..], 1.),
        ] {
            let x = (seeded_uniform(dims, 1) * scale)
                .unwrap()
                .to_dtype(DType::F32)
                .unwrap();
            let v = Var::from_tensor(&x).unwrap();
            assert_eq!(
                value_and_gradient_bits(&v, softmax_last_dim),
                value_and_gradient_bits(&v, composed),
                "{dims:?}"
            );
        }
    }

    #[test]
    fn strided_inputs_are_made_contiguous() {
        let x =
            Var::from_tensor(&seeded_uniform(&[5, 9], 2).to_dtype(DType::F32).unwrap()).unwrap();
        let t = |x: &Tensor| softmax_last_dim(&x.t()?);
        let c = |x: &Tensor| composed(&x.t()?);
        assert_eq!(
            value_and_gradient_bits(&x, t),
            value_and_gradient_bits(&x, c)
        );
    }

    #[test]
    fn untracked_inputs_take_the_composed_ops() {
        let x = seeded_uniform(&[3, 5], 3).to_dtype(DType::F32).unwrap();
        let y = softmax_last_dim(&x).unwrap();
        assert!(!y.track_op());
        let rows = y.sum_keepdim(1).unwrap().flatten_all().unwrap();
        for s in rows.to_vec1::<f32>().unwrap() {
            assert!((s - 1.).abs() < 1e-6, "{s}");
        }
    }
}
