//! Training Calico (§3.5, appendix C.1): the samples → batch pipeline, the
//! text + focal + Dice objective, AdamW with warm-up/decay and gradient
//! clipping, atomic resumable checkpoints, metrics and the training loop.

pub mod best;
pub mod checkpoint;
pub mod config;
pub mod data;
pub mod dense;
mod guard;
pub mod machine;
pub mod mask_pretrain;
pub mod metrics;
pub mod model;
pub mod objective;
pub mod optim;
pub mod plot;
pub mod predict;
pub mod pretrain;
pub mod samples_record;
pub mod schedule;
pub mod stage_checkpoint;
pub mod stem;
pub mod trainer;
pub mod workers;

/// A training error; the message names the file, sample, step or tensor.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error("{0}")]
    Data(String),
    #[error(transparent)]
    Model(#[from] candle_core::Error),
    #[error("{path}: {error}")]
    Io {
        path: std::path::PathBuf,
        error: std::io::Error,
    },
    #[error("{0}")]
    Config(String),
    /// A loss, the gradient norm or an updated tensor is NaN or infinite;
    /// `kept` says which checkpoint the run can resume from.
    #[error("training stopped at step {step}: the {what} is {value}; {kept}")]
    NonFinite {
        step: u64,
        what: String,
        value: f64,
        kept: String,
    },
    #[error(transparent)]
    Checkpoint(#[from] checkpoint::CheckpointError),
    /// The observer asked the run to stop ([`trainer::Observer::stop_requested`]);
    /// the message says after which step and what `--resume` continues from.
    #[error("interrupted: {0}")]
    Interrupted(String),
}
