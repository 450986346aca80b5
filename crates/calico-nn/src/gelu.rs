//! Exact GELU whose derivative is formed in the forward pass.
//!
//! candle's backward pass of `gelu_erf` takes eleven tensor ops over the input
//! (`0.5 + 0.398942 e^(−x²/2) x + 0.5 erf(x/√2)`, each a pass and an
//! allocation, `erf` evaluated a second time); `erff` alone was 8–10 % of a
//! stage-1 step (`perf`: the encoders' MLPs).
//! [`gelu_erf`] evaluates `erf` once per element in the forward pass and
//! keeps the derivative beside the graph; its backward pass is one product.
//!
//! Both passes repeat candle's float operations in candle's order (the same
//! `erff`, `expf`, products and sums, the affine ops' `v · mul + add` with
//! their `f64` constants rounded to `f32`), so values and gradients are
//! those of `Tensor::gelu_erf` bit for bit and a run trains the same weights
//! either way. The derivative costs one tensor of the input's size, held
//! until the graph is dropped. Without a gradient, on other devices and
//! dtypes it is candle's own op.

use std::sync::Mutex;

use candle_core::{CpuStorage, CustomOp1, DType, Device, Layout, Result, Shape, Tensor};

use crate::storage::f32_slice;

/// `0.5 x (1 + erf(x / √2))`, as [`Tensor::gelu_erf`].
pub fn gelu_erf(x: &Tensor) -> Result<Tensor> {
    if !x.track_op() || !x.device().is_cpu() || x.dtype() != DType::F32 || x.elem_count() == 0 {
        return x.gelu_erf();
    }
    x.contiguous()?.apply_op1(GeluErf {
        slope: Mutex::new(None),
    })
}

/// The op of one [`gelu_erf`] call: the derivative at each input element,
/// set by the forward pass and read by the backward pass.
struct GeluErf {
    slope: Mutex<Option<Tensor>>,
}

/// candle's GELU forward for one element (`op.rs`, `GeluErf::f32`).
fn value(v: f32, erf: f32) -> f32 {
    (erf + 1.) * 0.5 * v
}

/// candle's GELU derivative for one element, op by op as its backward pass
/// forms it (`backprop.rs`, `UnaryOp::GeluErf`), given `erf(x/√2)`.
fn slope(x: f32, erf: f32) -> f32 {
    // `(arg.sqr()?.neg()? / 2.)`: an affine op, `v · 0.5 + 0`.
    let neg_half_square = -(x * x) * 0.5 + 0.;
    // `0.398942 * exp(..)` (affine), then `* arg`.
    let scaled_exp_arg = (neg_half_square.exp() * 0.398942f64 as f32 + 0.) * x;
    // `0.5 * erf(arg / √2)`, both affine ops.
    let erf_scaled_sqrt = erf * 0.5 + 0.;
    // `0.5 + scaled_exp_arg` (affine `v · 1 + 0.5`), `+ erf_scaled_sqrt`.
    (scaled_exp_arg * 1. + 0.5) + erf_scaled_sqrt
}

/// `erf(x/√2)` as both of candle's passes evaluate it: the forward pass
/// scales by `f32`'s `FRAC_1_SQRT_2`, the backward pass by the affine
/// `1/√2` (`f64`, rounded to `f32`) plus 0; the two constants are the same
/// `f32` (tested), and adding 0 changes only the sign of a zero, which
/// `erf` keeps and the sums above drop.
fn erf_scaled(x: f32) -> f32 {
    libm::erff(x * std::f32::consts::FRAC_1_SQRT_2)
}

impl CustomOp1 for GeluErf {
    fn name(&self) -> &'static str {
        "calico-gelu-erf"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let xs = f32_slice(storage, layout, "gelu_erf")?;
        let (mut ys, mut ds) = (Vec::with_capacity(xs.len()), Vec::with_capacity(xs.len()));
        for &x in xs {
            let e = erf_scaled(x);
            ys.push(value(x, e));
            ds.push(slope(x, e));
        }
        let slope = Tensor::from_vec(ds, layout.shape(), &Device::Cpu)?;
        *self.slope.lock().unwrap_or_else(|p| p.into_inner()) = Some(slope);
        Ok((CpuStorage::F32(ys), layout.shape().clone()))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        if !arg.track_op() {
            return Ok(None);
        }
        let slope = self.slope.lock().unwrap_or_else(|p| p.into_inner()).clone();
        match slope {
            Some(slope) => Ok(Some(grad_res.mul(&slope)?)),
            None => candle_core::bail!("gelu_erf: backward pass before the forward pass"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{seeded_uniform, value_and_gradient_bits};
    use candle_core::Var;

    #[test]
    fn the_two_scalings_of_candle_are_one_f32() {
        let affine = (1. / 2f64.sqrt()) as f32;
        assert_eq!(affine.to_bits(), std::f32::consts::FRAC_1_SQRT_2.to_bits());
    }

    #[test]
    fn matches_candle_bit_for_bit() {
        // Wide inputs reach both tails of erf and exp's underflow.
        let x = (seeded_uniform(&[37, 53], 1) * 12.)
            .unwrap()
            .to_dtype(DType::F32)
            .unwrap();
        let special = Tensor::new(
            &[0f32, -0., 1e-30, -1e-30, 40., -40., 5.5, -5.5],
            &Device::Cpu,
        )
        .unwrap()
        .reshape((1, 8))
        .unwrap();
        for input in [x.clone(), special, x.t().unwrap()] {
            let v = Var::from_tensor(&input).unwrap();
            let ours = value_and_gradient_bits(&v, gelu_erf);
            let candle = value_and_gradient_bits(&v, Tensor::gelu_erf);
            assert_eq!(ours.0, candle.0, "values, {:?}", input.dims());
            assert_eq!(ours.1, candle.1, "gradients, {:?}", input.dims());
        }
    }

    #[test]
    fn strided_inputs_are_made_contiguous() {
        let x =
            Var::from_tensor(&seeded_uniform(&[4, 6], 2).to_dtype(DType::F32).unwrap()).unwrap();
        let t = x.as_tensor().t().unwrap();
        assert!(!t.is_contiguous());
        let ours = gelu_erf(&t).unwrap().to_vec2::<f32>().unwrap();
        let candle = t.gelu_erf().unwrap().to_vec2::<f32>().unwrap();
        assert_eq!(ours, candle);
    }

    #[test]
    fn untracked_inputs_take_candles_op() {
        let x = seeded_uniform(&[3, 5], 3).to_dtype(DType::F32).unwrap();
        let y = gelu_erf(&x).unwrap();
        assert!(!y.track_op());
        assert_eq!(
            y.to_vec2::<f32>().unwrap(),
            x.gelu_erf().unwrap().to_vec2::<f32>().unwrap()
        );
    }
}
