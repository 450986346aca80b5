//! Broadcasting binary ops whose backward pass sums quickly.
//!
//! candle differentiates `broadcast_as` by summing the gradient over the
//! broadcast dimensions. When those are the trailing dimensions it runs a
//! vectorised sum; otherwise (a bias over the rows of a `(N, C)` matrix, a
//! per-channel weight of an NCHW map, one image embedding shared by many
//! masks) it maps every element's index to its destination with a division
//! per dimension, which made up a fifth of a stage-1b step (`perf`, SAM's
//! decoder and encoder biases, layer norms and shared embeddings).
//!
//! [`add`], [`sub`], [`mul`] and [`div`] compute what `Tensor::broadcast_*`
//! computes. When an operand that must be broadcast over non-trailing
//! dimensions takes part in autograd (CPU, `f32`), it is expanded by
//! `Expand`, whose backward pass sums the gradient back with nested loops
//! over contiguous rows. The sum visits the gradient in memory order and
//! adds each element to its destination, the order of candle's own sum, so
//! the gradients are bit for bit those of `Tensor::broadcast_*`. Every other
//! case (no gradient, trailing dimensions, other devices and dtypes) is
//! candle's own broadcast.

use candle_core::{CpuStorage, CustomOp1, DType, Layout, Result, Shape, Tensor};

use crate::storage::f32_slice;

/// `a + b` with broadcasting, as [`Tensor::broadcast_add`].
pub fn add(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    binary(a, b, |x, y| x + y, Tensor::broadcast_add)
}

/// `a - b` with broadcasting, as [`Tensor::broadcast_sub`].
pub fn sub(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    binary(a, b, |x, y| x - y, Tensor::broadcast_sub)
}

/// `a * b` with broadcasting, as [`Tensor::broadcast_mul`].
pub fn mul(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    binary(a, b, |x, y| x * y, Tensor::broadcast_mul)
}

/// `a / b` with broadcasting, as [`Tensor::broadcast_div`].
pub fn div(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    binary(a, b, |x, y| x / y, Tensor::broadcast_div)
}

/// `x` broadcast to `shape`, as [`Tensor::broadcast_as`] (a view when no
/// gradient flows through it or candle's sum is already fast, an expanded
/// copy with a fast backward pass otherwise).
pub fn expand<S: Into<Shape>>(x: &Tensor, shape: S) -> Result<Tensor> {
    let shape: Shape = shape.into();
    match expansion(x, &shape)? {
        Some(from) => expand_from(x, from, &shape),
        None => x.broadcast_as(shape),
    }
}

/// `x`, reshaped to `from` (its dims padded to `to`'s rank), through [`Expand`].
fn expand_from(x: &Tensor, from: Vec<usize>, to: &Shape) -> Result<Tensor> {
    x.contiguous()?.reshape(from.as_slice())?.apply_op1(Expand {
        from,
        to: to.dims().to_vec(),
    })
}

fn binary(
    a: &Tensor,
    b: &Tensor,
    same: impl Fn(&Tensor, &Tensor) -> Result<Tensor>,
    candle: impl Fn(&Tensor, &Tensor) -> Result<Tensor>,
) -> Result<Tensor> {
    let shape = a
        .shape()
        .broadcast_shape_binary_op(b.shape(), "broadcast op")?;
    let (ea, eb) = (expansion(a, &shape)?, expansion(b, &shape)?);
    if ea.is_none() && eb.is_none() {
        return candle(a, b);
    }
    // The operand that needs no expansion keeps candle's (lazy) broadcast.
    let side = |x: &Tensor, e: Option<Vec<usize>>| match e {
        Some(from) => expand_from(x, from, &shape),
        None => x.broadcast_as(shape.clone()),
    };
    same(&side(a, ea)?, &side(b, eb)?)
}

/// Whether broadcasting `x` to `shape` should go through [`Expand`] — a
/// tracked CPU `f32` tensor broadcast over at least one dimension that is
/// not part of the trailing run of broadcast dimensions — and if so, `x`'s
/// dims padded with leading 1s to `shape`'s rank.
fn expansion(x: &Tensor, shape: &Shape) -> Result<Option<Vec<usize>>> {
    if !x.track_op() || !x.device().is_cpu() || x.dtype() != DType::F32 {
        return Ok(None);
    }
    let to = shape.dims();
    if x.rank() > to.len() {
        candle_core::bail!("cannot broadcast {:?} to {:?}", x.dims(), to);
    }
    let mut from = vec![1; to.len() - x.rank()];
    from.extend_from_slice(x.dims());
    let summed: Vec<bool> = from.iter().zip(to).map(|(f, t)| f != t).collect();
    // candle's fast case: the summed dimensions are exactly the last k.
    let k = summed.iter().filter(|s| **s).count();
    let trailing = summed.iter().rev().take(k).all(|s| *s);
    Ok((k > 0 && !trailing).then_some(from))
}

/// Broadcast of a contiguous tensor of dims `from` (same rank, at least 1)
/// to `to`, materialised; its gradient is [`SumTo`].
#[derive(Debug, Clone)]
struct Expand {
    from: Vec<usize>,
    to: Vec<usize>,
}

fn strides(dims: &[usize]) -> Vec<usize> {
    Layout::contiguous(dims).stride().to_vec()
}

/// Writes `src` (dims `from`, strides `fs`) broadcast to `to` into `out`
/// in memory order, from dimension `d` on.
fn fill(src: &[f32], from: &[usize], fs: &[usize], to: &[usize], d: usize, out: &mut Vec<f32>) {
    let last = d + 1 == to.len();
    let n = to[d];
    let bcast = from[d] != n;
    match (last, bcast) {
        (true, true) => out.extend(std::iter::repeat_n(src[0], n)),
        (true, false) => out.extend_from_slice(&src[..n]),
        (false, _) => {
            for i in 0..n {
                let off = if bcast { 0 } else { i * fs[d] };
                fill(&src[off..], from, fs, to, d + 1, out);
            }
        }
    }
}

/// Adds `grad` (dims `to`, strides `ts`, contiguous) into `dst` (dims
/// `from`, strides `fs`), from dimension `d` on, visiting `grad` in memory
/// order.
#[allow(clippy::too_many_arguments)]
fn accumulate(
    grad: &[f32],
    ts: &[usize],
    dst: &mut [f32],
    from: &[usize],
    fs: &[usize],
    to: &[usize],
    d: usize,
) {
    let n = to[d];
    let bcast = from[d] != n;
    if d + 1 == to.len() {
        match bcast {
            true => {
                for &g in &grad[..n] {
                    dst[0] += g;
                }
            }
            false => {
                for (o, &g) in dst[..n].iter_mut().zip(&grad[..n]) {
                    *o += g;
                }
            }
        }
        return;
    }
    for i in 0..n {
        let off = if bcast { 0 } else { i * fs[d] };
        accumulate(&grad[i * ts[d]..], ts, &mut dst[off..], from, fs, to, d + 1);
    }
}

impl CustomOp1 for Expand {
    fn name(&self) -> &'static str {
        "calico-expand"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let src = f32_slice(storage, layout, "expand")?;
        let mut out = Vec::with_capacity(self.to.iter().product());
        fill(src, &self.from, &strides(&self.from), &self.to, 0, &mut out);
        Ok((CpuStorage::F32(out), Shape::from(self.to.as_slice())))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        if !arg.track_op() {
            return Ok(None);
        }
        let summed = grad_res.contiguous()?.apply_op1_no_bwd(&SumTo {
            from: self.from.clone(),
            to: self.to.clone(),
        })?;
        Ok(Some(summed.reshape(arg.shape())?))
    }
}

/// The adjoint of [`Expand`]: a gradient of dims `to` summed to `from`.
#[derive(Debug, Clone)]
struct SumTo {
    from: Vec<usize>,
    to: Vec<usize>,
}

impl CustomOp1 for SumTo {
    fn name(&self) -> &'static str {
        "calico-sum-to"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let grad = f32_slice(storage, layout, "sum_to")?;
        let mut dst = vec![0f32; self.from.iter().product()];
        accumulate(
            grad,
            &strides(&self.to),
            &mut dst,
            &self.from,
            &strides(&self.from),
            &self.to,
            0,
        );
        Ok((CpuStorage::F32(dst), Shape::from(self.from.as_slice())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::seeded_uniform;
    use candle_core::Var;

    type Op = fn(&Tensor, &Tensor) -> Result<Tensor>;

    fn uniform(dims: &[usize], seed: u64) -> Tensor {
        seeded_uniform(dims, seed).to_dtype(DType::F32).unwrap()
    }

    /// Values and gradients (through a weighted sum, so every element's
    /// gradient differs) of `ours` and candle's op, which must be equal bit
    /// for bit.
    fn check(a_dims: &[usize], b_dims: &[usize], ours: Op, candle: Op) {
        let a = Var::from_tensor(&uniform(a_dims, 1)).unwrap();
        let b = Var::from_tensor(&(uniform(b_dims, 2) + 2.0).unwrap()).unwrap();
        let run = |op: Op| {
            let y = op(a.as_tensor(), b.as_tensor()).unwrap();
            let w = uniform(y.dims(), 3);
            let g = (&y * &w).unwrap().sum_all().unwrap().backward().unwrap();
            let vec = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            (
                vec(&y),
                vec(g.get(a.as_tensor()).unwrap()),
                vec(g.get(b.as_tensor()).unwrap()),
            )
        };
        let (o, c) = (run(ours), run(candle));
        assert_eq!(o.0, c.0, "values, {a_dims:?} with {b_dims:?}");
        assert_eq!(o.1, c.1, "gradient of a, {a_dims:?} with {b_dims:?}");
        assert_eq!(o.2, c.2, "gradient of b, {a_dims:?} with {b_dims:?}");
    }

    const SHAPES: &[(&[usize], &[usize])] = &[
        (&[37, 19], &[19]),                   // a linear layer's bias
        (&[3, 5, 7], &[7]),                   // a bias over a batch of sequences
        (&[4, 6, 5, 3], &[1, 6, 1, 1]),       // a per-channel NCHW weight
        (&[5, 3, 4, 2], &[1, 3, 4, 2]),       // one embedding shared by a batch
        (&[2, 3, 4, 5, 4], &[2, 3, 4, 1, 4]), // SAM's decomposed rel-pos term
        (&[2, 3, 4, 5, 4], &[2, 3, 4, 5, 1]), // trailing: candle's own path
        (&[6, 4], &[6, 4]),                   // no broadcast
        (&[6, 1], &[1, 4]),                   // both sides broadcast
    ];

    #[test]
    fn matches_candle_bit_for_bit() {
        for (a, b) in SHAPES {
            check(a, b, add, Tensor::broadcast_add);
            check(a, b, sub, Tensor::broadcast_sub);
            check(a, b, mul, Tensor::broadcast_mul);
            check(a, b, div, Tensor::broadcast_div);
            check(b, a, add, Tensor::broadcast_add);
            check(b, a, mul, Tensor::broadcast_mul);
        }
    }

    #[test]
    fn takes_the_fast_path_only_where_candle_is_slow() {
        let v = Var::from_tensor(&uniform(&[1, 3, 1, 1], 1)).unwrap();
        let to = Shape::from((2, 3, 4, 4));
        assert!(expansion(v.as_tensor(), &to).unwrap().is_some());
        assert!(expansion(&v.as_tensor().detach(), &to).unwrap().is_none());
        let bias = Var::from_tensor(&uniform(&[4], 1)).unwrap();
        assert_eq!(
            expansion(bias.as_tensor(), &Shape::from((5, 4))).unwrap(),
            Some(vec![1, 4])
        );
        let col = Var::from_tensor(&uniform(&[5, 1], 1)).unwrap();
        assert!(expansion(col.as_tensor(), &Shape::from((5, 4)))
            .unwrap()
            .is_none());
        assert!(expand(bias.as_tensor(), (3, 5)).is_err());
    }

    #[test]
    fn expand_without_gradient_is_a_view() {
        let x = uniform(&[1, 3], 1);
        let y = expand(&x, (4, 3)).unwrap();
        assert_eq!(y.stride(), &[0, 1]);
        let rows = y.to_vec2::<f32>().unwrap();
        assert!(rows.iter().all(|r| *r == rows[0]));
    }
}
