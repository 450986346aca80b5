//! Building blocks shared by every Calico network.
//!
//! candle's fused kernels (`layer_norm`, `rms_norm`, `softmax_last_dim`,
//! `rope`) are fast but have no backward pass. Every op here dispatches on
//! [`ops::needs_grad`]: when none of its inputs is tracked by autograd (frozen
//! weights, inference) it runs the fused kernel; otherwise it runs a
//! formulation built from differentiable primitives. The two paths compute the
//! same function (tested to 1e-5), so a module behaves identically whether it
//! is frozen or trained.
//!
//! Where candle's own differentiation of such a formulation is slow, a
//! custom op repeats it bit for bit in fewer passes: [`broadcast`]'s sums,
//! [`gelu`]'s derivative formed in the forward pass, [`softmax`] in one pass
//! each way. Their values and gradients equal the composed ops' exactly, so
//! a run trains the same weights with or without them.

pub mod attention;
pub mod batch_norm;
pub mod broadcast;
pub mod conv;
pub mod gelu;
pub mod input_grad;
pub mod linear;
pub mod loss;
pub mod mlp;
pub mod norm;
pub mod ops;
mod qdot;
pub mod qgemv;
pub mod qrows;
pub mod qtable;
pub mod softmax;
mod storage;
pub mod testing;

pub use attention::scaled_dot_product_attention;
pub use linear::{Linear, LoraConfig, QuantizedMatmul};
pub use mlp::Mlp;
pub use norm::{LayerNorm, RmsNorm};
pub use ops::Activation;
pub use qtable::QuantizedTable;
