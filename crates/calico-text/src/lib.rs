//! Text side of Calico: prompts, grounded answers and their parsing.
//!
//! Calico answers a multi-image question with *grounded phrases*: a phrase
//! wrapped in `<p> … </p>`, followed by one `[SEG]` token per mask, each
//! tagged with the image it segments, `(IMAGEk)` (1-based):
//!
//! ```text
//! The common object is <p> the chair </p> [SEG] (IMAGE1) [SEG] (IMAGE2).
//! ```
//!
//! * [`tokens`]: the special tokens and the image tag format;
//! * [`english`]: articles, lists, capitalisation and template filling;
//! * [`templates`]: the four [`Task`]s, question phrasings and the
//!   multi-image prompt prefix;
//! * [`compose`]: building answers (text plus the mask each `[SEG]` stands
//!   for) from labels;
//! * [`parse`]: reading model output back into a caption, phrases and mask
//!   requests, strictly or leniently.
//!
//! # Example
//!
//! ```
//! use calico_text::{compose, parse, templates, Task};
//! use rand::SeedableRng;
//! use rand_chacha::ChaCha8Rng;
//!
//! let mut rng = ChaCha8Rng::seed_from_u64(0);
//! let prompt = templates::prompt(Task::CommonParts, 2, &mut rng);
//! assert!(prompt.starts_with("The <image> (IMAGE1) and <image> (IMAGE2)"));
//!
//! let answer = compose::common_parts(&["chair", "ottoman"], &["leg", "seat"], &mut rng)?;
//! // One mask per [SEG]: chair on image 0, ottoman on image 1, then each
//! // part on both images.
//! assert_eq!(answer.masks.len(), 2 + 2 * 2);
//!
//! let parsed = parse::parse_answer(&answer.text, 2)?;
//! assert_eq!(parsed.requests.len(), answer.masks.len());
//! for (req, mask) in parsed.requests.iter().zip(&answer.masks) {
//!     assert_eq!(calico_text::english::strip_article(&req.phrase), mask.label);
//!     assert_eq!(req.image, mask.image);
//! }
//! assert!(!parsed.caption.contains("[SEG]"));
//!
//! let golden = parse::parse_answer(
//!     "The common object is <p> the chair </p> [SEG] (IMAGE1) [SEG] (IMAGE2).",
//!     2,
//! )?;
//! assert_eq!(golden.caption, "The common object is the chair.");
//! assert_eq!(golden.phrases, ["the chair"]);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

#![warn(missing_docs)]

pub mod compose;
pub mod english;
pub mod parse;
pub mod templates;
pub mod tokens;

pub use compose::{Answer, ComposeError, MaskRef, ObjectMention};
pub use parse::{MaskRequest, ParseError, ParseIssue, ParsedAnswer};
pub use templates::Task;
