//! Errors of the masks crate.

use std::path::PathBuf;

/// Everything that can go wrong when building, decoding or reading masks.
#[derive(Debug, thiserror::Error)]
pub enum MaskError {
    /// A compressed RLE string could not be decoded.
    #[error("invalid compressed RLE string at byte {offset}: {reason}")]
    BadRleString { offset: usize, reason: String },
    /// RLE counts do not add up to `height × width`.
    #[error("RLE counts sum to {sum} but the mask size {height}×{width} has {expected} pixels")]
    CountsMismatch {
        sum: u64,
        height: u32,
        width: u32,
        expected: u64,
    },
    /// Pixel buffer length does not match the stated size.
    #[error("pixel buffer has {got} values but {height}×{width} needs {expected}")]
    BufferSize {
        got: usize,
        height: u32,
        width: u32,
        expected: u64,
    },
    /// Two masks that must have the same size do not.
    #[error("mask sizes differ: {a_height}×{a_width} vs {b_height}×{b_width}")]
    SizeMismatch {
        a_height: u32,
        a_width: u32,
        b_height: u32,
        b_width: u32,
    },
    /// A COCO `segmentation` value has a shape this crate does not accept.
    #[error("unsupported segmentation: {0}")]
    BadSegmentation(String),
    /// A PNG file could not be read or has an unexpected format.
    #[error("{path}: {reason}")]
    Png { path: PathBuf, reason: String },
    /// Plain I/O failure on a named file.
    #[error("{path}: {error}")]
    Io {
        path: PathBuf,
        error: std::io::Error,
    },
}

/// Result alias for this crate.
pub type Result<T> = std::result::Result<T, MaskError>;
