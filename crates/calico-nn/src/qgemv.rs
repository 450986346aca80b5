//! The product of a few input rows (a decoding step's token) with a
//! block-quantised weight, dequantising one weight row at a time into a
//! small buffer and taking its float32 dot products with the inputs.
//!
//! [`QuantizedMatmul::Dequantize`](crate::QuantizedMatmul::Dequantize) used to
//! expand the whole weight to float32 for every product: for one input row
//! that writes and reads back four bytes per weight to multiply each weight
//! once, and SmolLM2 decoded at half its float32 speed. Here each weight
//! row's values are the ones that expansion gives (the same `to_float` of
//! the same blocks) and the inputs stay float32, so the result differs from
//! the expanded product only in the order of the float additions (about
//! 1e-7 relative), unlike llama.cpp's kernels, which also quantise the
//! input to 8 bits. Rows are split among candle's threads; each output is
//! summed by one thread in one fixed order, so the result does not depend on
//! the thread count.

use candle_core::quantized::k_quants::{
    BlockQ2K, BlockQ3K, BlockQ4K, BlockQ4_0, BlockQ4_1, BlockQ5K, BlockQ5_0, BlockQ5_1, BlockQ6K,
    BlockQ8K, BlockQ8_0, BlockQ8_1, GgmlType,
};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{DType, Result, Tensor};

use crate::qdot;
use crate::qrows::RowLayout;
use rayon::prelude::*;

/// Inputs of at most this many rows take the row-at-a-time product; longer
/// ones (a prompt's prefill) are faster as one expanded matrix product.
pub const GEMV_MAX_ROWS: usize = 8;

/// Weight rows per task handed to a thread.
const ROWS_PER_TASK: usize = 64;

/// Calls `row(scratch, r, outs)` for every weight row `r` of `out_t`
/// `(n, m)`, `outs` being its `m` outputs. Rayon's tasks take
/// [`ROWS_PER_TASK`] rows each and make their `scratch` once with `init`.
pub(crate) fn for_each_row<S>(
    out_t: &mut [f32],
    m: usize,
    init: impl Fn() -> S + Sync,
    row: impl Fn(&mut S, usize, &mut [f32]) + Sync,
) {
    out_t
        .par_chunks_mut(ROWS_PER_TASK * m)
        .enumerate()
        .for_each(|(task, out)| {
            let mut scratch = init();
            let first = task * ROWS_PER_TASK;
            for (j, outs) in out.chunks_exact_mut(m).enumerate() {
                row(&mut scratch, first + j, outs);
            }
        });
}

/// `x · wᵀ` for a CPU weight `w` `(n, k)` and a float32 `x` `(…, k)` of at
/// most [`GEMV_MAX_ROWS`] rows; `None` when the product is not one this
/// function takes (another device or dtype, more rows, or an input autograd
/// tracks: the result here is a new tensor with no backward), for the
/// caller to expand the weight instead.
pub fn dequantized_product(w: &QTensor, x: &Tensor) -> Result<Option<Tensor>> {
    product(w, x, true)
}

/// [`dequantized_product`] with every block type taking the general path:
/// each weight row written out as float32 by candle's `to_float`, then
/// multiplied. The same results bit for bit; kept for the `qgemv` bench,
/// which measures the fused path against it.
pub fn row_buffer_product(w: &QTensor, x: &Tensor) -> Result<Option<Tensor>> {
    product(w, x, false)
}

fn product(w: &QTensor, x: &Tensor, fuse: bool) -> Result<Option<Tensor>> {
    let device = w.device();
    if !device.is_cpu() || !x.device().is_cpu() || x.dtype() != DType::F32 || x.track_op() {
        return Ok(None);
    }
    let layout = RowLayout::of(w)?;
    let (n, k) = (layout.rows, layout.cols);
    let x_dims = x.dims().to_vec();
    if x_dims.last() != Some(&k) {
        candle_core::bail!("input of shape {x_dims:?} does not fit a ({n}, {k}) quantized weight");
    }
    let m = x.elem_count() / k.max(1);
    if m == 0 || m > GEMV_MAX_ROWS {
        return Ok(None);
    }
    let xs: Vec<f32> = x.flatten_all()?.to_vec1()?;
    let data = layout.data(w)?;
    let mut out_t = vec![0f32; n * m];
    macro_rules! run {
        ($($dtype:ident => $block:ty),*) => {
            match w.dtype() {
                $(GgmlDType::$dtype => rows_dot::<$block>(&data, &layout, &xs, m, &mut out_t)?,)*
                _ => return Ok(None),
            }
        };
    }
    macro_rules! fused {
        ($block:ty) => {
            qdot::rows_dot::<$block>(&data, (n, k), &xs, m, &mut out_t)?
        };
    }
    match w.dtype() {
        // The common types are read block by block on the stack (`qdot`):
        // the same results, without writing each row out first.
        GgmlDType::Q4_0 if fuse => fused!(qdot::Q4_0),
        GgmlDType::Q4_1 if fuse => fused!(qdot::Q4_1),
        GgmlDType::Q8_0 if fuse => fused!(qdot::Q8_0),
        GgmlDType::Q4K if fuse => fused!(qdot::Q4K),
        GgmlDType::Q5K if fuse => fused!(qdot::Q5K),
        GgmlDType::Q6K if fuse => fused!(qdot::Q6K),
        _ => run!(
            Q4_0 => BlockQ4_0, Q4_1 => BlockQ4_1, Q5_0 => BlockQ5_0, Q5_1 => BlockQ5_1,
            Q8_0 => BlockQ8_0, Q8_1 => BlockQ8_1, Q2K => BlockQ2K, Q3K => BlockQ3K,
            Q4K => BlockQ4K, Q5K => BlockQ5K, Q6K => BlockQ6K, Q8K => BlockQ8K
        ),
    }
    // `out_t` is (n, m): one weight row's outputs side by side.
    let mut out = vec![0f32; m * n];
    for (r, row) in out_t.chunks_exact(m).enumerate() {
        for (i, v) in row.iter().enumerate() {
            out[i * n + r] = *v;
        }
    }
    let mut dims = x_dims;
    *dims.last_mut().expect("x has a last dim") = n;
    Ok(Some(Tensor::from_vec(out, dims, &device)?))
}

/// Fills `out_t` `(n, m)` with the dot products of each weight row (the
/// blocks of `bytes`, checked against `layout`) with each of the `m` rows
/// of `xs`.
fn rows_dot<T: GgmlType>(
    bytes: &[u8],
    layout: &RowLayout,
    xs: &[f32],
    m: usize,
    out_t: &mut [f32],
) -> Result<()> {
    let (n, k) = (layout.rows, layout.cols);
    let per_row = k / T::BLCK_SIZE;
    let fits = layout.dtype == T::DTYPE && bytes.len() == n * per_row * std::mem::size_of::<T>();
    if !fits || !(bytes.as_ptr() as usize).is_multiple_of(std::mem::align_of::<T>()) {
        candle_core::bail!(
            "{:?} weight ({n}, {k}): its bytes are not aligned {:?} blocks",
            layout.dtype,
            T::DTYPE
        );
    }
    // SAFETY: the blocks are plain-old-data structs of integers and f16
    // (candle stores them as `Vec<T>`); their count, type and alignment are
    // checked above, and the slice borrows `bytes`.
    let blocks: &[T] =
        unsafe { std::slice::from_raw_parts(bytes.as_ptr().cast::<T>(), n * per_row) };
    for_each_row(
        out_t,
        m,
        || vec![0f32; k],
        |buf, r, outs| {
            T::to_float(&blocks[r * per_row..(r + 1) * per_row], buf);
            for (i, o) in outs.iter_mut().enumerate() {
                *o = dot(buf, &xs[i * k..(i + 1) * k]);
            }
        },
    );
    Ok(())
}

/// A float32 dot product over eight interleaved partial sums (which the
/// compiler turns into vector adds), in a fixed order.
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (ac, bc) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ar, br) = (ac.remainder(), bc.remainder());
    for (x, y) in ac.zip(bc) {
        for l in 0..8 {
            acc[l] += x[l] * y[l];
        }
    }
    let mut tail = 0f32;
    for (x, y) in ar.iter().zip(br) {
        tail += x * y;
    }
    finish_lanes(&acc, tail)
}

/// The sum of eight lane sums and a tail, in [`dot`]'s fixed order.
#[inline(always)]
pub(crate) fn finish_lanes(acc: &[f32; 8], tail: f32) -> f32 {
    let pairs = [
        acc[0] + acc[4],
        acc[1] + acc[5],
        acc[2] + acc[6],
        acc[3] + acc[7],
    ];
    (pairs[0] + pairs[2]) + (pairs[1] + pairs[3]) + tail
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::max_rel_diff;
    use candle_core::Device;

    #[test]
    fn matches_the_expanded_product_for_every_block_type() {
        let dev = Device::Cpu;
        let (n, k) = (70, 512);
        let vals: Vec<f32> = (0..n * k)
            .map(|i| ((i * 7919 % 1013) as f32 / 1013.0 - 0.5) * 2.0)
            .collect();
        let w = Tensor::from_vec(vals, (n, k), &dev).unwrap();
        for dtype in [
            GgmlDType::Q4_0,
            GgmlDType::Q4_1,
            GgmlDType::Q5_0,
            GgmlDType::Q5_1,
            GgmlDType::Q8_0,
            GgmlDType::Q2K,
            GgmlDType::Q3K,
            GgmlDType::Q4K,
            GgmlDType::Q5K,
            GgmlDType::Q6K,
        ] {
            let q = QTensor::quantize(&w, dtype).unwrap();
            let float = q.dequantize(&dev).unwrap();
            for rows in [1usize, 3, 8] {
                let x = Tensor::randn(0f32, 1.0, (1, rows, k), &dev).unwrap();
                let want = x.broadcast_matmul(&float.t().unwrap()).unwrap();
                let got = dequantized_product(&q, &x).unwrap().expect("taken");
                assert_eq!(got.dims(), &[1, rows, n]);
                let err = max_rel_diff(&got, &want);
                assert!(err < 1e-5, "{dtype:?}, {rows} rows: {err}");
            }
            let x = Tensor::randn(0f32, 1.0, (9, k), &dev).unwrap();
            assert!(dequantized_product(&q, &x).unwrap().is_none());
            // An input autograd tracks keeps the caller's differentiable path.
            let v = candle_core::Var::randn(0f32, 1.0, (1, k), &dev).unwrap();
            assert!(dequantized_product(&q, v.as_tensor()).unwrap().is_none());
        }
    }

    /// Every output of `qdot`'s fused product of `F` blocks against this
    /// module's row path over `B` (the same type as candle's block).
    fn fused_as_rows<F: qdot::Fused, B: GgmlType>(n: usize, k: usize) {
        let dev = Device::Cpu;
        let vals: Vec<f32> = (0..n * k)
            .map(|i| ((i * 7919 % 1013) as f32 / 1013.0 - 0.5) * 3.0)
            .collect();
        let w = Tensor::from_vec(vals, (n, k), &dev).unwrap();
        let q = QTensor::quantize(&w, F::DTYPE).unwrap();
        let layout = RowLayout::of(&q).unwrap();
        let data = layout.data(&q).unwrap();
        for m in [1usize, 2, 5, 8] {
            let x = Tensor::randn(0f32, 1.0, (m, k), &dev).unwrap();
            let xs: Vec<f32> = x.flatten_all().unwrap().to_vec1().unwrap();
            let (mut want, mut got) = (vec![0f32; n * m], vec![0f32; n * m]);
            rows_dot::<B>(&data, &layout, &xs, m, &mut want).unwrap();
            qdot::rows_dot::<F>(&data, (n, k), &xs, m, &mut got).unwrap();
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&got), bits(&want), "{:?}, {m} rows", F::DTYPE);
        }
    }

    #[test]
    fn fused_blocks_give_the_row_path_products_bit_for_bit() {
        fused_as_rows::<qdot::Q4_0, BlockQ4_0>(130, 576);
        fused_as_rows::<qdot::Q4_1, BlockQ4_1>(130, 576);
        fused_as_rows::<qdot::Q8_0, BlockQ8_0>(130, 576);
        fused_as_rows::<qdot::Q4K, BlockQ4K>(70, 768);
        fused_as_rows::<qdot::Q5K, BlockQ5K>(70, 768);
        fused_as_rows::<qdot::Q6K, BlockQ6K>(70, 768);
        // Misfits are errors, not panics.
        let dev = Device::Cpu;
        let (n, k) = (130, 576);
        let w = Tensor::ones((n, k), DType::F32, &dev).unwrap();
        let q = QTensor::quantize(&w, GgmlDType::Q8_0).unwrap();
        let data = RowLayout::of(&q).unwrap().data(&q).unwrap();
        let mut out = vec![0f32; n];
        let short = qdot::rows_dot::<qdot::Q4_1>(&data, (n, k), &vec![0.0; k], 1, &mut out);
        assert!(short.unwrap_err().to_string().contains("not whole rows"));
        let e = qdot::rows_dot::<qdot::Q8_0>(&data, (n, k), &vec![0.0; k], 9, &mut out);
        assert!(e.unwrap_err().to_string().contains("do not fit"));
    }

    #[test]
    fn a_misfit_input_is_an_error_and_float_weights_are_left_to_the_caller() {
        let dev = Device::Cpu;
        let w = Tensor::ones((4, 32), DType::F32, &dev).unwrap();
        let q = QTensor::quantize(&w, GgmlDType::Q8_0).unwrap();
        let x = Tensor::ones((1, 16), DType::F32, &dev).unwrap();
        let e = dequantized_product(&q, &x).unwrap_err().to_string();
        assert!(e.contains("does not fit a (4, 32) quantized weight"), "{e}");
        let f = QTensor::quantize(&w, GgmlDType::F32).unwrap();
        let x = Tensor::ones((1, 32), DType::F32, &dev).unwrap();
        assert!(dequantized_product(&f, &x).unwrap().is_none());
        // Every weight dequantises to the same value v: each output is 32 v.
        let v = q.dequantize(&dev).unwrap().to_vec2::<f32>().unwrap()[0][0];
        let y = dequantized_product(&q, &x).unwrap().unwrap();
        assert_eq!(y.to_vec2::<f32>().unwrap(), vec![vec![32.0 * v; 4]]);
    }
}
