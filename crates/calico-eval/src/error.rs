//! Errors of the evaluator: each names the file and the sample.

use std::path::PathBuf;

/// What can go wrong while evaluating.
#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    /// A file could not be read or written.
    #[error("{path}: {error}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        error: std::io::Error,
    },
    /// Bad content in an input file.
    #[error("{path}: {context}: {message}")]
    Input {
        /// The file.
        path: PathBuf,
        /// The sample id or line.
        context: String,
        /// What is wrong.
        message: String,
    },
    /// Ground-truth file problems (from calico-data).
    #[error(transparent)]
    Data(#[from] calico_data::DataError),
    /// The sentence embedder failed.
    #[error("sentence embedder: {0}")]
    Embed(String),
}

impl EvalError {
    /// An I/O error on `path`.
    pub fn io(path: impl Into<PathBuf>, error: std::io::Error) -> Self {
        EvalError::Io {
            path: path.into(),
            error,
        }
    }
}

/// Result alias.
pub type Result<T> = std::result::Result<T, EvalError>;
