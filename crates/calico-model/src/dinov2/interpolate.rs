//! Bicubic resampling of a 2-D grid, computing what
//! `torch.nn.functional.interpolate(mode="bicubic", align_corners=False)`
//! computes on the CPU, with or without `antialias`, for an output size or a
//! scale factor.
//!
//! Bicubic resampling is separable: each axis is one `(out, in)` weight
//! matrix and the 2-D result is `Wh · grid · Wwᵀ`. The weights follow
//! torch's rules:
//!
//! * **plain** (`antialias=False`): the source coordinate of output pixel `i`
//!   is `s·(i + ½) − ½` in single precision, with `s = in / out` for a size
//!   or `s = 1 / scale_factor` for a scale factor. Four taps around
//!   `floor(src)` with the Keys kernel at `A = −0.75`; taps outside the grid
//!   read the border value (index clamping).
//! * **antialias**: the Keys kernel at `A = −0.5`, stretched by `s` when
//!   downsampling (`s > 1`). The taps are the input pixels within the
//!   kernel's support around the centre `s·(i + ½)`; taps outside the grid
//!   are dropped and the weights renormalised to sum to one. An axis whose
//!   output size equals its input size is left untouched (torch skips it,
//!   even when a scale factor would shift the samples).
//!
//! The weights are data independent, so the resampling is two matmuls and
//! gradients flow to the grid.

use candle_core::{DType, Device, Result, Tensor};

/// How one axis maps output pixels to input coordinates.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum AxisScale {
    /// `F.interpolate(size=...)`: the scale is `in / out`.
    Size,
    /// `F.interpolate(scale_factor=f)`: the scale is `1 / f` (the output
    /// size is still the one given).
    Factor(f64),
}

fn keys_near(x: f64, a: f64) -> f64 {
    ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0
}

fn keys_far(x: f64, a: f64) -> f64 {
    ((a * x - 5.0 * a) * x + 8.0 * a) * x - 4.0 * a
}

/// `|x| < 1`, `|x| < 2`, else 0: the Keys cubic with parameter `a`.
fn keys(x: f64, a: f64) -> f64 {
    let x = x.abs();
    if x < 1.0 {
        keys_near(x, a)
    } else if x < 2.0 {
        keys_far(x, a)
    } else {
        0.0
    }
}

/// The `(out, in)` weight matrix, row-major, of one axis.
pub fn bicubic_weights(
    in_size: usize,
    out_size: usize,
    scale: AxisScale,
    antialias: bool,
) -> Vec<f32> {
    let mut w = vec![0f32; out_size * in_size];
    if in_size == 0 || out_size == 0 {
        return w;
    }
    if antialias {
        if in_size == out_size {
            for i in 0..out_size {
                w[i * in_size + i] = 1.0;
            }
            return w;
        }
        let s = match scale {
            AxisScale::Factor(f) if f > 0.0 => 1.0 / f,
            _ => in_size as f64 / out_size as f64,
        };
        let (support, inv) = if s >= 1.0 {
            (2.0 * s, 1.0 / s)
        } else {
            (2.0, 1.0)
        };
        for i in 0..out_size {
            let centre = s * (i as f64 + 0.5);
            // Truncation toward zero, as the C++ cast does.
            let lo = ((centre - support + 0.5) as i64).max(0) as usize;
            let hi = ((centre + support + 0.5) as i64).min(in_size as i64).max(0) as usize;
            let taps: Vec<f64> = (lo..hi)
                .map(|j| keys((j as f64 - centre + 0.5) * inv, -0.5))
                .collect();
            let total: f64 = taps.iter().sum();
            for (j, t) in (lo..hi).zip(taps) {
                let v = if total != 0.0 { t / total } else { t };
                w[i * in_size + j] = v as f32;
            }
        }
    } else {
        // Single precision like torch's CPU kernel for float inputs.
        let s: f32 = match scale {
            AxisScale::Factor(f) if f > 0.0 => (1.0 / f) as f32,
            _ => in_size as f32 / out_size as f32,
        };
        let a = -0.75;
        let last = in_size as i64 - 1;
        for i in 0..out_size {
            let src = s * (i as f32 + 0.5) - 0.5;
            let idx = (src.floor() as i64).min(last);
            let t = ((src - idx as f32) as f64).clamp(0.0, 1.0);
            let taps = [
                keys_far(t + 1.0, a),
                keys_near(t, a),
                keys_near(1.0 - t, a),
                keys_far(2.0 - t, a),
            ];
            for (k, tap) in taps.iter().enumerate() {
                let j = (idx - 1 + k as i64).clamp(0, last) as usize;
                w[i * in_size + j] += *tap as f32;
            }
        }
    }
    w
}

/// Resamples `grid` of shape `(in_h, in_w, channels)` to
/// `(out_h, out_w, channels)`, computing in f32 and returning `grid`'s dtype.
pub fn resample_bicubic(
    grid: &Tensor,
    out_hw: (usize, usize),
    scales: (AxisScale, AxisScale),
    antialias: bool,
) -> Result<Tensor> {
    let (in_h, in_w, c) = grid.dims3()?;
    let (out_h, out_w) = out_hw;
    let dtype = grid.dtype();
    let device: &Device = grid.device();
    let wh = Tensor::from_vec(
        bicubic_weights(in_h, out_h, scales.0, antialias),
        (out_h, in_h),
        device,
    )?;
    let ww = Tensor::from_vec(
        bicubic_weights(in_w, out_w, scales.1, antialias),
        (out_w, in_w),
        device,
    )?;
    let g = grid.to_dtype(DType::F32)?.reshape((in_h, in_w * c))?;
    let rows = wh.matmul(&g)?.reshape((out_h, in_w, c))?;
    let out = ww.broadcast_matmul(&rows)?;
    out.to_dtype(dtype)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_size_with_output_size_is_the_identity() {
        for aa in [false, true] {
            let w = bicubic_weights(5, 5, AxisScale::Size, aa);
            for i in 0..5 {
                for j in 0..5 {
                    let expect = if i == j { 1.0 } else { 0.0 };
                    assert!((w[i * 5 + j] - expect).abs() < 1e-6, "aa {aa} ({i},{j})");
                }
            }
        }
    }

    #[test]
    fn rows_sum_to_one() {
        for (n_in, n_out) in [(4, 7), (7, 4), (16, 3), (3, 16), (37, 52)] {
            for aa in [false, true] {
                for scale in [
                    AxisScale::Size,
                    AxisScale::Factor((n_out as f64 + 0.1) / n_in as f64),
                ] {
                    let w = bicubic_weights(n_in, n_out, scale, aa);
                    for i in 0..n_out {
                        let s: f32 = w[i * n_in..(i + 1) * n_in].iter().sum();
                        assert!((s - 1.0).abs() < 1e-5, "{n_in}->{n_out} aa {aa}: {s}");
                    }
                }
            }
        }
    }

    #[test]
    fn a_scale_factor_shifts_the_samples() {
        let size = bicubic_weights(4, 8, AxisScale::Size, false);
        let factor = bicubic_weights(4, 8, AxisScale::Factor(8.1 / 4.0), false);
        assert!(size.iter().zip(&factor).any(|(a, b)| (a - b).abs() > 1e-3));
    }
}
