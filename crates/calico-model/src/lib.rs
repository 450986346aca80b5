//! Calico's networks, built through `VarBuilder` paths equal to the tensor
//! names of the checkpoints users already have (HF transformers, original
//! SAM, LAVIS and torch-hub through name maps).
//!
//! Every block is checked against its reference implementation by the parity
//! framework ([`parity`], docs/parity.md).

pub mod calico;
pub mod cam;
pub mod cem;
pub mod clip_vision;
pub mod config;
pub mod conv_stem;
pub mod count;
pub mod dinov2;
pub mod eva_vit;
pub mod gguf;
pub mod llama;
pub mod load;
pub mod parity;
pub mod preprocess;
pub mod prompt;
pub mod qformer;
pub mod sam;
pub mod tokenizer;
pub mod vit_block;

pub use load::{Checkpoint, GroupSummary, LoadError, LoadReport, NameMap, PartReport};
