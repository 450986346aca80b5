//! Errors of the app layer: the user's input or an internal failure.

/// What went wrong. [`AppError::Input`] is the user's fault (a missing or
/// undecodable image, too few images, a question that does not fit the
/// context, a bad weights directory); the others are internal.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// Bad input; the message names the file, value or limit.
    #[error("{0}")]
    Input(String),
    /// The model failed while answering.
    #[error("{0}")]
    Model(String),
    /// Writing or encoding an output.
    #[error("{0}")]
    Output(String),
}

impl AppError {
    /// Whether the user's input caused the error.
    pub fn is_input(&self) -> bool {
        matches!(self, AppError::Input(_))
    }
}

impl From<candle_core::Error> for AppError {
    fn from(e: candle_core::Error) -> Self {
        AppError::Model(e.to_string())
    }
}

pub type Result<T> = std::result::Result<T, AppError>;
