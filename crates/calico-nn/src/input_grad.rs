//! Gradients through frozen weights: to the input only.
//!
//! candle's matmul backward computes both operands' gradients, so a frozen
//! float weight `W` in `y = x · Wᵀ` gets a weight-sized gradient computed
//! (and held until the backward pass ends) that nothing reads: a third of
//! the layer's backward work and, for a frozen LLM under LoRA, a gradient
//! the size of the whole LLM. candle's quantised matmul, for its part, has
//! no backward pass at all, and the dequantised product would keep every
//! layer's float32 weight alive in the graph until the backward pass, the
//! memory quantisation was meant to save.
//!
//! [`with_input_grad`] and [`with_input_grad_dense`] record a product
//! computed without a graph together with the frozen weight; the backward
//! pass gives the input `∂L/∂x = ∂L/∂y · W` and the weight nothing. A
//! block-quantised weight is dequantised again for it, one chunk of rows at
//! a time (QLoRA's backward). LoRA adapters beside the weight train as usual.

use std::sync::Arc;

use candle_core::backend::BackendStorage;
use candle_core::quantized::QTensor;
use candle_core::{CpuStorage, CustomOp2, Layout, Result, Shape, Tensor, D};

/// `y0` (`(…, out)`, the product `x · Wᵀ` already computed from `x` without
/// a graph) as a tensor whose backward pass gives `x` the gradient of that
/// product. `rows` are `W` (`out × in`) as consecutive chunks of rows, each
/// dequantised only while the backward pass needs it.
///
/// When `x` is not tracked by autograd, `y0` is returned as it is.
pub fn with_input_grad(x: &Tensor, y0: Tensor, rows: &[Arc<QTensor>]) -> Result<Tensor> {
    let mut shapes = Vec::with_capacity(rows.len());
    for r in rows {
        shapes.push(r.shape().dims2()?);
    }
    attach(x, y0, &shapes, Frozen::Quantized(rows.to_vec()))
}

/// [`with_input_grad`] for a frozen float weight `w` (`out × in`, not
/// tracked by autograd): `x` gets its gradient, `w` none.
pub fn with_input_grad_dense(x: &Tensor, y0: Tensor, w: &Tensor) -> Result<Tensor> {
    if w.track_op() {
        candle_core::bail!(
            "with_input_grad_dense: the weight is trained, so it needs its gradient"
        );
    }
    let shape = w.dims2()?;
    attach(x, y0, &[shape], Frozen::Dense(w.clone()))
}

fn attach(x: &Tensor, y0: Tensor, shapes: &[(usize, usize)], weight: Frozen) -> Result<Tensor> {
    if !x.track_op() {
        return Ok(y0);
    }
    let in_dim = x.dim(D::Minus1)?;
    let mut out_dim = 0;
    for &(n, k) in shapes {
        if k != in_dim {
            candle_core::bail!(
                "a frozen weight of shape [{n}, {k}] cannot take inputs of width {in_dim}"
            );
        }
        out_dim += n;
    }
    let (lead_x, lead_y) = (&x.dims()[..x.rank() - 1], &y0.dims()[..y0.rank() - 1]);
    if lead_x != lead_y || y0.dim(D::Minus1)? != out_dim {
        candle_core::bail!(
            "the product {:?} does not fit inputs {:?} and a weight of {out_dim} rows",
            y0.dims(),
            x.dims()
        );
    }
    // The forward pass hands on y0's storage, which must start at its
    // first element and be laid out row-major.
    let y0 = if y0.is_contiguous() && y0.layout().start_offset() == 0 {
        y0.detach()
    } else {
        y0.detach().force_contiguous()?
    };
    x.apply_op2(&y0, InputGrad { weight })
}

/// The frozen weight the backward pass multiplies by.
#[derive(Debug, Clone)]
enum Frozen {
    /// Consecutive chunks of rows, in their blocks.
    Quantized(Vec<Arc<QTensor>>),
    Dense(Tensor),
}

/// The recorded op: forward hands `y0` on, backward multiplies by `W`.
#[derive(Debug, Clone)]
struct InputGrad {
    weight: Frozen,
}

impl InputGrad {
    /// `grad_y (…, out)` → `grad_y · W (…, in)`, chunk by chunk.
    fn input_grad(&self, x: &Tensor, grad_y: &Tensor) -> Result<Tensor> {
        let device = x.device();
        let out_dim = grad_y.dim(D::Minus1)?;
        let g = grad_y.contiguous()?.reshape(((), out_dim))?;
        let sum = match &self.weight {
            Frozen::Dense(w) => g.matmul(w)?,
            Frozen::Quantized(rows) => {
                let mut sum: Option<Tensor> = None;
                let mut start = 0;
                for r in rows {
                    let n = r.shape().dims2()?.0;
                    let w = r.dequantize(device)?;
                    let part = g.narrow(1, start, n)?.contiguous()?.matmul(&w)?;
                    start += n;
                    sum = Some(match sum {
                        Some(s) => (s + part)?,
                        None => part,
                    });
                }
                match sum {
                    Some(s) => s,
                    None => Tensor::zeros((g.dim(0)?, x.dim(D::Minus1)?), g.dtype(), device)?,
                }
            }
        };
        sum.to_dtype(x.dtype())?.reshape(x.shape())
    }
}

fn pass_on<S: BackendStorage>(s2: &S, l2: &Layout) -> Result<(S, Shape)> {
    if !l2.is_contiguous() || l2.start_offset() != 0 {
        candle_core::bail!("calico-frozen-input-grad: the product must be contiguous");
    }
    Ok((s2.try_clone(l2)?, l2.shape().clone()))
}

impl CustomOp2 for InputGrad {
    fn name(&self) -> &'static str {
        "calico-frozen-input-grad"
    }

    fn cpu_fwd(
        &self,
        _s1: &CpuStorage,
        _l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        pass_on(s2, l2)
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        _s1: &candle_core::CudaStorage,
        _l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        pass_on(s2, l2)
    }

    fn bwd(
        &self,
        x: &Tensor,
        _y0: &Tensor,
        _res: &Tensor,
        grad_res: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        Ok((Some(self.input_grad(x, grad_res)?), None))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::quantized::GgmlDType;
    use candle_core::{DType, Device, Var};

    fn weight(rows: usize, cols: usize) -> Arc<QTensor> {
        let w = Tensor::randn(0f32, 1.0, (rows, cols), &Device::Cpu).unwrap();
        Arc::new(QTensor::quantize(&w, GgmlDType::Q8_0).unwrap())
    }

    #[test]
    fn untracked_inputs_get_the_product_back_and_misfits_are_refused() {
        let dev = Device::Cpu;
        let w = weight(4, 32);
        let x = Tensor::randn(0f32, 1.0, (3, 32), &dev).unwrap();
        let y0 = Tensor::randn(0f32, 1.0, (3, 4), &dev).unwrap();
        let y = with_input_grad(&x, y0.clone(), std::slice::from_ref(&w)).unwrap();
        assert!(!y.track_op());
        assert_eq!(y.to_vec2::<f32>().unwrap(), y0.to_vec2::<f32>().unwrap());
        let tracked = Var::from_tensor(&x).unwrap();
        let e = with_input_grad(tracked.as_tensor(), y0.clone(), &[weight(4, 64)]).unwrap_err();
        assert!(
            e.to_string().contains("cannot take inputs of width 32"),
            "{e}"
        );
        let wide = Tensor::zeros((3, 5), DType::F32, &dev).unwrap();
        let e = with_input_grad(tracked.as_tensor(), wide, &[w]).unwrap_err();
        assert!(e.to_string().contains("does not fit inputs [3, 32]"), "{e}");
    }

    /// The forward pass hands the product on unchanged, even a view.
    #[test]
    fn the_product_is_passed_on_exactly() {
        let dev = Device::Cpu;
        let w = weight(4, 32);
        let x = Var::from_tensor(&Tensor::randn(0f32, 1.0, (3, 32), &dev).unwrap()).unwrap();
        let big = Tensor::randn(0f32, 1.0, (4, 3), &dev).unwrap();
        let y0 = big.t().unwrap(); // (3, 4), not contiguous
        let y = with_input_grad(x.as_tensor(), y0.clone(), &[w]).unwrap();
        assert_eq!(y.to_vec2::<f32>().unwrap(), y0.to_vec2::<f32>().unwrap());
    }

    /// A frozen float weight: the input's gradient is the plain matmul's,
    /// and the weight gets none; a trained weight is refused.
    #[test]
    fn a_frozen_dense_weight_passes_the_input_its_gradient_only() {
        let dev = Device::Cpu;
        let w = Tensor::randn(0f32, 1.0, (5, 8), &dev).unwrap();
        let x0 = Tensor::randn(0f32, 1.0, (2, 3, 8), &dev).unwrap();
        let c = Tensor::randn(0f32, 1.0, (2, 3, 5), &dev).unwrap();
        let plain = |x: &Tensor| x.broadcast_matmul(&w.t().unwrap()).unwrap();
        let x = Var::from_tensor(&x0).unwrap();
        let want = (plain(x.as_tensor()) * &c)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        let y0 = plain(&x0);
        let y = with_input_grad_dense(x.as_tensor(), y0.clone(), &w).unwrap();
        assert_eq!(y.to_vec3::<f32>().unwrap(), y0.to_vec3::<f32>().unwrap());
        let got = (y * &c).unwrap().sum_all().unwrap().backward().unwrap();
        let diff = crate::testing::max_abs_diff(
            got.get(x.as_tensor()).unwrap(),
            want.get(x.as_tensor()).unwrap(),
        );
        assert!(diff < 1e-5, "{diff}");
        // candle's matmul computes (and holds) the weight's gradient, here
        // under its broadcast transpose; this op computes none.
        let weight_grads = |g: &candle_core::backprop::GradStore| {
            g.get_ids()
                .filter(|id| g.get_id(**id).is_some_and(|t| t.dims().ends_with(&[8, 5])))
                .count()
        };
        assert_eq!(weight_grads(&want), 1);
        assert_eq!(weight_grads(&got), 0);
        let trained = Var::from_tensor(&w).unwrap();
        let e = with_input_grad_dense(x.as_tensor(), y0, trained.as_tensor()).unwrap_err();
        assert!(e.to_string().contains("the weight is trained"), "{e}");
    }
}
