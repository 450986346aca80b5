//! Errors of the data crate: every one names the file, and the record or
//! field when there is one.

use std::path::PathBuf;

/// Everything that can go wrong reading sources, building or writing samples.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// A file could not be opened, read or written.
    #[error("{path}: {error}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        error: std::io::Error,
    },
    /// A file is not valid JSON, or a JSON value has the wrong shape.
    #[error("{path}: {context}: {message}")]
    Json {
        /// The file.
        path: PathBuf,
        /// Where in the file: a record (`annotations[12] (id 7)`) or a line (`line 3`).
        context: String,
        /// The parser's message.
        message: String,
    },
    /// A record is well-formed JSON but its content is unusable.
    #[error("{path}: {context}: {message}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// The record or field.
        context: String,
        /// What is wrong and what was expected.
        message: String,
    },
    /// A mask could not be built or read.
    #[error("{path}: {context}: {error}")]
    Mask {
        /// The file.
        path: PathBuf,
        /// The record or field.
        context: String,
        /// The mask error.
        error: calico_masks::MaskError,
    },
    /// A bad option or argument.
    #[error("{0}")]
    Config(String),
}

impl DataError {
    /// An I/O error on `path`.
    pub fn io(path: impl Into<PathBuf>, error: std::io::Error) -> Self {
        DataError::Io {
            path: path.into(),
            error,
        }
    }

    /// Invalid content in `path` at `context`.
    pub fn invalid(
        path: impl Into<PathBuf>,
        context: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        DataError::Invalid {
            path: path.into(),
            context: context.into(),
            message: message.into(),
        }
    }

    /// A JSON error in `path` at `context`.
    pub fn json(
        path: impl Into<PathBuf>,
        context: impl Into<String>,
        message: impl std::fmt::Display,
    ) -> Self {
        DataError::Json {
            path: path.into(),
            context: context.into(),
            message: message.to_string(),
        }
    }

    /// A mask error in `path` at `context`.
    pub fn mask(
        path: impl Into<PathBuf>,
        context: impl Into<String>,
        error: calico_masks::MaskError,
    ) -> Self {
        DataError::Mask {
            path: path.into(),
            context: context.into(),
            error,
        }
    }
}

/// Result alias for this crate.
pub type Result<T> = std::result::Result<T, DataError>;
