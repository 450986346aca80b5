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
