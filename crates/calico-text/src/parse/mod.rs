//! Parsing of model answers into a caption, phrases and mask requests.
//!
//! # Grammar
//!
//! The parser reads the answer in one left-to-right pass and recognises
//! (case-sensitively):
//!
//! * `<p>` … `</p>`: a grounded phrase. Its text is the inner words with
//!   whitespace collapsed to single spaces and trimmed. Phrases may not
//!   nest and may not be empty.
//! * `[SEG]`: a mask request. It must be followed (after optional
//!   whitespace, including none and newlines) by an image tag, and it
//!   belongs to the most recently *closed* phrase; any number of
//!   `[SEG] (IMAGEk)` pairs may follow one phrase, and ordinary words may
//!   sit between the phrase and its `[SEG]`s.
//! * `(IMAGEk)`: an image tag, `k` counting from 1. Directly after `[SEG]`
//!   it says which image the mask is for; anywhere else it is a reference
//!   and produces no request. In both cases `k` must lie in
//!   `1..=n_images`.
//! * Other tags `<name>` / `</name>` (`name`: 1–32 ASCII letters, digits
//!   or `_`, e.g. `<im_start>`, `<image>`, `</s>`): removed.
//!
//! # Caption
//!
//! The caption is the answer with every recognised token removed: tokens
//! count as word breaks, whitespace runs collapse to one space, the result
//! is trimmed, and a space before `. , ; : ! ?` is dropped. So
//! `The common object is <p> the chair </p> [SEG] (IMAGE1) [SEG] (IMAGE2).`
//! has the caption `The common object is the chair.`
//!
//! # Strict and lenient parsing
//!
//! [`parse_answer`] rejects the answer at the first [`ParseIssue`].
//! [`parse_answer_lenient`] never fails: it records every issue in
//! [`ParsedAnswer::warnings`] and keeps what is valid (a `[SEG]` with a
//! problem yields no request, an unclosed, nested-over or empty phrase is
//! left out of [`ParsedAnswer::phrases`]). When the strict parser succeeds,
//! both give identical results; when it fails, its error is the lenient
//! parser's first warning.
//!
//! Parsing is total (no input panics) and linear in the input length.

mod fuzz;
mod issue;
mod scanner;
mod text;

#[cfg(test)]
mod tests;

use std::sync::Arc;

use serde::{Deserialize, Serialize};

pub use fuzz::fuzz_parse;
pub use issue::{ParseError, ParseIssue};

/// One mask the model asked for: a `[SEG] (IMAGEk)` pair after a phrase.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct MaskRequest {
    /// Text of the phrase the `[SEG]` belongs to (shared, not copied, when
    /// several `[SEG]`s follow one phrase).
    pub phrase: Arc<str>,
    /// Index of that phrase in [`ParsedAnswer::phrases`].
    pub phrase_index: usize,
    /// The image the mask is for, 0-based (`k - 1` for `(IMAGEk)`).
    pub image: usize,
    /// Ordinal of this `[SEG]` among all `[SEG]` tokens of the text,
    /// including ones that yielded no request; it selects the matching
    /// `[SEG]` hidden state / predicted mask.
    pub seg_index: usize,
}

/// The result of parsing an answer.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ParsedAnswer {
    /// The answer without tokens and tags (see the module docs).
    pub caption: String,
    /// Every valid `<p>` phrase, in order.
    pub phrases: Vec<String>,
    /// Every valid mask request, in `[SEG]` order.
    pub requests: Vec<MaskRequest>,
    /// Problems found (always empty for the strict parser's result).
    pub warnings: Vec<ParseIssue>,
    /// Number of `[SEG]` tokens in the text, valid or not.
    pub seg_count: usize,
}

/// Parses an answer for a query with `n_images` images, failing on the
/// first problem.
///
/// ```
/// let p = calico_text::parse::parse_answer(
///     "Both images show <p> a dog </p> [SEG] (IMAGE1) [SEG](IMAGE2).",
///     2,
/// )?;
/// assert_eq!(p.caption, "Both images show a dog.");
/// assert_eq!(p.requests.iter().map(|r| r.image).collect::<Vec<_>>(), [0, 1]);
/// # Ok::<(), calico_text::ParseError>(())
/// ```
///
/// # Errors
///
/// [`ParseError::Issue`] with the first [`ParseIssue`] found.
pub fn parse_answer(text: &str, n_images: usize) -> Result<ParsedAnswer, ParseError> {
    let mut parsed = scanner::Scanner::run(text, n_images, true);
    if parsed.warnings.is_empty() {
        Ok(parsed)
    } else {
        Err(ParseError::Issue(parsed.warnings.swap_remove(0)))
    }
}

/// Parses an answer, keeping whatever is valid and recording every problem
/// in [`ParsedAnswer::warnings`].
///
/// ```
/// let p = calico_text::parse::parse_answer_lenient(
///     "<p> the leg </p> [SEG] (IMAGE1) [SEG] (IMAGE9)",
///     2,
/// );
/// assert_eq!(p.requests.len(), 1);
/// assert_eq!(p.warnings.len(), 1);
/// ```
pub fn parse_answer_lenient(text: &str, n_images: usize) -> ParsedAnswer {
    scanner::Scanner::run(text, n_images, false)
}

/// Like [`parse_answer`], for raw bytes (e.g. straight from a tokenizer or
/// a fuzzer).
///
/// # Errors
///
/// [`ParseError::InvalidUtf8`] with the offset of the first invalid byte,
/// or any error of [`parse_answer`].
pub fn parse_answer_bytes(bytes: &[u8], n_images: usize) -> Result<ParsedAnswer, ParseError> {
    let text = std::str::from_utf8(bytes).map_err(|e| ParseError::InvalidUtf8 {
        offset: e.valid_up_to(),
    })?;
    parse_answer(text, n_images)
}
