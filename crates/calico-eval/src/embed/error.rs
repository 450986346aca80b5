//! Errors of the sentence embedder.

use std::path::PathBuf;

/// What went wrong loading or running the sentence embedder. Each variant
/// names the file (and, for weights, the tensor) it concerns.
#[derive(Debug, thiserror::Error)]
pub enum EmbedError {
    /// The model directory itself is missing.
    #[error(
        "model directory {dir} does not exist; run `bash tools/reference/fetch_models.sh` \
         or set CALICO_MINILM_DIR to a sentence-transformers model directory"
    )]
    MissingDir {
        /// The directory looked for.
        dir: PathBuf,
    },
    /// A file the model needs is missing from the model directory.
    #[error(
        "model directory {dir} has no {file}; run `bash tools/reference/fetch_models.sh` \
         or point at a complete sentence-transformers model directory"
    )]
    MissingFile {
        /// The model directory.
        dir: PathBuf,
        /// The missing file, relative to `dir`.
        file: &'static str,
    },
    /// A file could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A JSON configuration file is malformed or describes an unsupported
    /// model.
    #[error("{path}: {message}")]
    Config {
        /// The configuration file.
        path: PathBuf,
        /// What is wrong with it.
        message: String,
    },
    /// The weights file cannot be parsed.
    #[error("cannot load weights from {path}: {message}")]
    Weights {
        /// The safetensors file.
        path: PathBuf,
        /// The cause.
        message: String,
    },
    /// Tensors the BERT encoder needs are absent from the weights file.
    #[error(
        "{path} lacks tensor(s) {} (looked for them with and without a `bert.` prefix)",
        names.join(", ")
    )]
    MissingTensors {
        /// The safetensors file.
        path: PathBuf,
        /// The missing tensors (without prefix; at most a few listed).
        names: Vec<String>,
    },
    /// A tensor has a shape that does not fit `config.json`.
    #[error("{path}: tensor `{name}` has shape {got:?}, config.json implies {expected:?}")]
    TensorShape {
        /// The safetensors file.
        path: PathBuf,
        /// The tensor (without prefix).
        name: String,
        /// The shape implied by the configuration.
        expected: Vec<usize>,
        /// The shape in the file.
        got: Vec<usize>,
    },
    /// The tokenizer file cannot be loaded or configured.
    #[error("tokenizer {path}: {message}")]
    Tokenizer {
        /// The tokenizer.json file.
        path: PathBuf,
        /// The cause.
        message: String,
    },
    /// Tokenizing the input failed.
    #[error("tokenizing: {0}")]
    Tokenize(String),
    /// The tensor computation failed.
    #[error("model computation: {0}")]
    Candle(#[from] candle_core::Error),
}

/// Result of the embedder's operations.
pub type Result<T> = std::result::Result<T, EmbedError>;
