//! The two-layer transformer feed-forward block `fc2(act(fc1(x)))`, with the
//! tensor names HF ViTs use (`fc1.{weight,bias}`, `fc2.{weight,bias}`).

use candle_core::{Result, Tensor};
use candle_nn::VarBuilder;

use crate::{Activation, Linear};

#[derive(Debug, Clone)]
pub struct Mlp {
    fc1: Linear,
    fc2: Linear,
    act: Activation,
}

impl Mlp {
    /// `dim → hidden → dim` with biases.
    pub fn new(dim: usize, hidden: usize, act: Activation, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            fc1: Linear::new(dim, hidden, true, vb.pp("fc1"))?,
            fc2: Linear::new(hidden, dim, true, vb.pp("fc2"))?,
            act,
        })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.fc2.forward(&self.act.apply(&self.fc1.forward(x)?)?)
    }
}
