//! Helpers for the tests of modules built on calico-nn. They panic on
//! failure (with a message naming what failed) instead of returning errors.

use candle_core::{Tensor, Var};

/// `max |a − b|` over all elements, as f32.
pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b)
        .and_then(|d| d.abs())
        .and_then(|d| d.flatten_all())
        .and_then(|d| d.max(0))
        .and_then(|d| d.to_dtype(candle_core::DType::F32))
        .and_then(|d| d.to_scalar::<f32>())
        .unwrap_or_else(|e| panic!("max_abs_diff of {:?} and {:?}: {e}", a.dims(), b.dims()))
}

/// `max |a − b| / max |b|`: the largest difference relative to `b`'s
/// largest magnitude.
pub fn max_rel_diff(a: &Tensor, b: &Tensor) -> f32 {
    let zeros = b
        .zeros_like()
        .unwrap_or_else(|e| panic!("max_rel_diff of {:?}: {e}", b.dims()));
    max_abs_diff(a, b) / max_abs_diff(b, &zeros)
}

/// Asserts that every named variable received a non-zero gradient.
pub fn assert_gradients_reach<'a>(
    grads: &candle_core::backprop::GradStore,
    vars: impl IntoIterator<Item = (&'a String, &'a Var)>,
    context: &str,
) {
    for (name, var) in vars {
        let g = grads
            .get(var.as_tensor())
            .unwrap_or_else(|| panic!("{context}: no gradient for {name}"));
        let norm = g
            .sqr()
            .and_then(|s| s.sum_all())
            .and_then(|s| s.to_dtype(candle_core::DType::F64))
            .and_then(|s| s.to_scalar::<f64>())
            .unwrap_or_else(|e| panic!("{context}: gradient of {name}: {e}"));
        assert!(norm > 0.0, "{context}: zero gradient for {name}");
    }
}

/// An f64 tensor of `shape` with values uniform in [-1, 1), the same for
/// the same `seed` on every run (candle's own generator cannot be seeded).
pub fn seeded_uniform(shape: &[usize], seed: u64) -> Tensor {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let n = shape.iter().product();
    let v: Vec<f64> = (0..n).map(|_| rng.random::<f64>() * 2.0 - 1.0).collect();
    Tensor::from_vec(v, shape, &candle_core::Device::Cpu)
        .unwrap_or_else(|e| panic!("seeded_uniform {shape:?}: {e}"))
}

/// The largest difference between the gradients that `sum(a · r)` and
/// `sum(b · r)` give each of `vars` (two computations of one function).
pub fn max_gradient_diff(a: &Tensor, b: &Tensor, r: &Tensor, vars: &[&Var]) -> f32 {
    let grads = |y: &Tensor| {
        (y * r)
            .and_then(|p| p.sum_all())
            .and_then(|s| s.backward())
            .unwrap_or_else(|e| panic!("backward of sum(y · r): {e}"))
    };
    let (ga, gb) = (grads(a), grads(b));
    vars.iter()
        .enumerate()
        .map(
            |(i, v)| match (ga.get(v.as_tensor()), gb.get(v.as_tensor())) {
                (Some(x), Some(y)) => max_abs_diff(x, y),
                _ => panic!("variable {i} ({:?}) got no gradient", v.dims()),
            },
        )
        .fold(0.0, f32::max)
}

/// The bits of `op(x)` and of the gradient that `sum(op(x) · w)` gives `x`,
/// `w` seeded so that every element's gradient differs: two computations
/// of an op give equal pairs only where they agree to the bit, the signs of
/// zeros included.
pub fn value_and_gradient_bits(
    x: &Var,
    op: impl Fn(&Tensor) -> candle_core::Result<Tensor>,
) -> (Vec<u32>, Vec<u32>) {
    let y = op(x.as_tensor()).unwrap_or_else(|e| panic!("op at {:?}: {e}", x.dims()));
    let w = seeded_uniform(y.dims(), 7)
        .to_dtype(y.dtype())
        .unwrap_or_else(|e| panic!("weights: {e}"));
    let g = (&y * &w)
        .and_then(|p| p.sum_all())
        .and_then(|s| s.backward())
        .unwrap_or_else(|e| panic!("backward of sum(op(x) · w): {e}"));
    let bits = |t: &Tensor| -> Vec<u32> {
        t.flatten_all()
            .and_then(|t| t.to_dtype(candle_core::DType::F32))
            .and_then(|t| t.to_vec1::<f32>())
            .unwrap_or_else(|e| panic!("reading back: {e}"))
            .iter()
            .map(|v| v.to_bits())
            .collect()
    };
    let grad = g
        .get(x.as_tensor())
        .unwrap_or_else(|| panic!("x {:?} got no gradient", x.dims()));
    (bits(&y), bits(grad))
}
