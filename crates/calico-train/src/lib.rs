//! Training Calico (§3.5, appendix C.1): the samples → batch pipeline, the
//! text + focal + Dice objective, AdamW with warm-up/decay and gradient
//! clipping, atomic resumable checkpoints, metrics and the training loop.

pub mod metrics;
pub mod plot;
