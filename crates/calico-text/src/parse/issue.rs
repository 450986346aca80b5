//! Problems found while parsing an answer.

use serde::{Deserialize, Serialize};

/// One problem in a model answer. All offsets are byte offsets into the
/// parsed text.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize, thiserror::Error)]
pub enum ParseIssue {
    /// The query was declared with zero images, so no image tag can be valid.
    #[error("n_images is 0: an answer must refer to at least one image")]
    NoImages,
    /// A `[SEG]` token not followed by an `(IMAGEk)` tag.
    #[error("[SEG] at byte {offset} is not followed by an (IMAGEk) tag")]
    UntaggedSeg {
        /// Offset of the `[SEG]` token.
        offset: usize,
    },
    /// An `(IMAGEk)` tag whose `k` is 0 or larger than the number of images.
    #[error(
        "(IMAGE…) tag at byte {offset} names image {}, but the query has {n_images} image(s), numbered from 1",
        number.map_or_else(|| "a number too large to represent".to_string(), |n| n.to_string())
    )]
    ImageOutOfRange {
        /// Offset of the tag's `(`.
        offset: usize,
        /// The 1-based number written in the tag, `None` if it overflows.
        number: Option<usize>,
        /// Number of images in the query.
        n_images: usize,
    },
    /// A `[SEG]` token with no closed `<p>` phrase before it.
    #[error("[SEG] at byte {offset} has no preceding <p> phrase")]
    SegWithoutPhrase {
        /// Offset of the `[SEG]` token.
        offset: usize,
    },
    /// A `[SEG]` token inside an open `<p>` phrase.
    #[error("[SEG] at byte {offset} is inside an open <p> phrase")]
    SegInsidePhrase {
        /// Offset of the `[SEG]` token.
        offset: usize,
    },
    /// A `<p>` that is never closed.
    #[error("<p> at byte {offset} is never closed")]
    UnclosedPhrase {
        /// Offset of the `<p>` tag.
        offset: usize,
    },
    /// A `</p>` without an open phrase.
    #[error("</p> at byte {offset} closes no open <p>")]
    StrayClose {
        /// Offset of the `</p>` tag.
        offset: usize,
    },
    /// A `<p>` while another phrase is still open.
    #[error("<p> at byte {offset} opens a phrase inside the phrase opened at byte {outer}")]
    NestedPhrase {
        /// Offset of the inner `<p>`.
        offset: usize,
        /// Offset of the still-open outer `<p>`.
        outer: usize,
    },
    /// A `<p> … </p>` phrase with no words in it.
    #[error("the <p> phrase at byte {offset} is empty")]
    EmptyPhrase {
        /// Offset of the phrase's `<p>` tag.
        offset: usize,
    },
}

impl ParseIssue {
    /// Byte offset the issue points at (`None` for [`ParseIssue::NoImages`]).
    pub fn offset(&self) -> Option<usize> {
        match *self {
            ParseIssue::NoImages => None,
            ParseIssue::UntaggedSeg { offset }
            | ParseIssue::ImageOutOfRange { offset, .. }
            | ParseIssue::SegWithoutPhrase { offset }
            | ParseIssue::SegInsidePhrase { offset }
            | ParseIssue::UnclosedPhrase { offset }
            | ParseIssue::StrayClose { offset }
            | ParseIssue::NestedPhrase { offset, .. }
            | ParseIssue::EmptyPhrase { offset } => Some(offset),
        }
    }
}

/// Error of the strict parsers.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// The first problem found in the answer.
    #[error(transparent)]
    Issue(#[from] ParseIssue),
    /// The input bytes are not UTF-8.
    #[error("answer is not valid UTF-8: invalid byte sequence at byte {offset}")]
    InvalidUtf8 {
        /// Offset of the first invalid byte.
        offset: usize,
    },
}
