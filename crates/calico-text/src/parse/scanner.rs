//! Single-pass scanner over an answer.
//!
//! The scanner walks the text once, left to right. Every position is looked
//! at a bounded number of times (a failed look-ahead for an `(IMAGEk)` tag
//! after `[SEG]` can cause the skipped whitespace or digits to be read once
//! more), so the running time is linear in the input length, and there is
//! no recursion.

use std::sync::Arc;

use super::text::TextBuilder;
use super::{MaskRequest, ParseIssue, ParsedAnswer};
use crate::tokens::{IMAGE_TAG_PREFIX, P_CLOSE, P_OPEN, SEG};

/// Longest tag name stripped as an "other" tag, e.g. `im_start`.
const MAX_TAG_NAME: usize = 32;

/// A phrase whose `<p>` has been seen but not its `</p>`.
struct OpenPhrase {
    offset: usize,
    text: TextBuilder,
}

/// What the next `[SEG]` attaches to.
enum LastPhrase {
    /// No phrase has been closed yet.
    None,
    /// The most recent phrase was closed and is valid.
    Valid { index: usize, text: Arc<str> },
    /// The most recent phrase was rejected (already reported); `[SEG]`s
    /// after it are dropped without a further issue.
    Rejected,
}

/// A recognised `(IMAGEk)` tag.
struct ImageTag {
    /// `k`, or `None` if it does not fit in `usize`.
    number: Option<usize>,
    /// Length of the tag in bytes.
    len: usize,
}

/// Parses `(IMAGE<digits>)` at the start of `s`.
fn image_tag_at(s: &str) -> Option<ImageTag> {
    let after = s.strip_prefix(IMAGE_TAG_PREFIX)?;
    let bytes = after.as_bytes();
    let digits = bytes.iter().take_while(|b| b.is_ascii_digit()).count();
    if digits == 0 || bytes.get(digits) != Some(&b')') {
        return None;
    }
    let number = bytes[..digits].iter().try_fold(0usize, |acc, d| {
        acc.checked_mul(10)?.checked_add(usize::from(d - b'0'))
    });
    Some(ImageTag {
        number,
        len: IMAGE_TAG_PREFIX.len() + digits + 1,
    })
}

/// Length of a tag like `<im_start>` or `</s>` at the start of `s`: `<`, an
/// optional `/`, 1 to [`MAX_TAG_NAME`] ASCII letters, digits or `_`, `>`.
fn other_tag_len(s: &str) -> Option<usize> {
    let b = s.as_bytes();
    if b.first() != Some(&b'<') {
        return None;
    }
    let start = if b.get(1) == Some(&b'/') { 2 } else { 1 };
    let name = b
        .iter()
        .skip(start)
        .take(MAX_TAG_NAME + 1)
        .take_while(|c| c.is_ascii_alphanumeric() || **c == b'_')
        .count();
    let end = start + name;
    ((1..=MAX_TAG_NAME).contains(&name) && b.get(end) == Some(&b'>')).then_some(end + 1)
}

/// Scanner state.
pub(super) struct Scanner<'a> {
    text: &'a str,
    n_images: usize,
    stop_at_first: bool,
    caption: TextBuilder,
    open: Option<OpenPhrase>,
    last: LastPhrase,
    phrases: Vec<String>,
    requests: Vec<MaskRequest>,
    issues: Vec<ParseIssue>,
    seg_count: usize,
}

impl<'a> Scanner<'a> {
    /// Scans `text`; with `stop_at_first` the scan ends at the first issue.
    pub fn run(text: &'a str, n_images: usize, stop_at_first: bool) -> ParsedAnswer {
        let mut s = Scanner {
            text,
            n_images,
            stop_at_first,
            caption: TextBuilder::caption(),
            open: None,
            last: LastPhrase::None,
            phrases: Vec::new(),
            requests: Vec::new(),
            issues: Vec::new(),
            seg_count: 0,
        };
        if n_images == 0 {
            s.issue(ParseIssue::NoImages);
        }
        let mut pos = 0;
        while pos < text.len() && !s.stopped() {
            pos = s.step(pos);
        }
        if !s.stopped() {
            if let Some(open) = s.open.take() {
                s.issue(ParseIssue::UnclosedPhrase {
                    offset: open.offset,
                });
            }
        }
        ParsedAnswer {
            caption: s.caption.finish(),
            phrases: s.phrases,
            requests: s.requests,
            warnings: s.issues,
            seg_count: s.seg_count,
        }
    }

    fn stopped(&self) -> bool {
        self.stop_at_first && !self.issues.is_empty()
    }

    fn issue(&mut self, issue: ParseIssue) {
        self.issues.push(issue);
    }

    /// Handles the token or character at `pos` and returns the next position.
    fn step(&mut self, pos: usize) -> usize {
        let Some(rest) = self.text.get(pos..) else {
            // Not a character boundary: cannot happen, but never panic.
            return self.text.len();
        };
        match rest.as_bytes().first() {
            Some(b'<') if rest.starts_with(P_OPEN) => {
                self.open_phrase(pos);
                return pos + P_OPEN.len();
            }
            Some(b'<') if rest.starts_with(P_CLOSE) => {
                self.close_phrase(pos);
                return pos + P_CLOSE.len();
            }
            Some(b'<') => {
                if let Some(len) = other_tag_len(rest) {
                    self.space();
                    return pos + len;
                }
            }
            Some(b'[') if rest.starts_with(SEG) => return self.seg(pos),
            Some(b'(') => {
                if let Some(tag) = image_tag_at(rest) {
                    // A bare reference: removed from the text, no mask.
                    self.space();
                    self.image_index(pos, tag.number);
                    return pos + tag.len;
                }
            }
            _ => {}
        }
        match rest.chars().next() {
            Some(c) if c.is_whitespace() => {
                self.space();
                pos + c.len_utf8()
            }
            Some(c) => {
                self.caption.push(c);
                if let Some(open) = &mut self.open {
                    open.text.push(c);
                }
                pos + c.len_utf8()
            }
            None => self.text.len(),
        }
    }

    /// A word break in the caption and in the open phrase.
    fn space(&mut self) {
        self.caption.space();
        if let Some(open) = &mut self.open {
            open.text.space();
        }
    }

    fn open_phrase(&mut self, pos: usize) {
        self.caption.space();
        if let Some(outer) = self.open.take() {
            self.issue(ParseIssue::NestedPhrase {
                offset: pos,
                outer: outer.offset,
            });
        }
        self.open = Some(OpenPhrase {
            offset: pos,
            text: TextBuilder::phrase(),
        });
    }

    fn close_phrase(&mut self, pos: usize) {
        self.caption.space();
        let Some(open) = self.open.take() else {
            self.issue(ParseIssue::StrayClose { offset: pos });
            return;
        };
        let text = open.text.finish();
        if text.is_empty() {
            self.issue(ParseIssue::EmptyPhrase {
                offset: open.offset,
            });
            self.last = LastPhrase::Rejected;
        } else {
            self.last = LastPhrase::Valid {
                index: self.phrases.len(),
                text: Arc::from(text.as_str()),
            };
            self.phrases.push(text);
        }
    }

    /// Converts a 1-based tag number to a 0-based index, reporting it if
    /// out of range.
    fn image_index(&mut self, offset: usize, number: Option<usize>) -> Option<usize> {
        match number {
            Some(k) if (1..=self.n_images).contains(&k) => Some(k - 1),
            _ => {
                self.issue(ParseIssue::ImageOutOfRange {
                    offset,
                    number,
                    n_images: self.n_images,
                });
                None
            }
        }
    }

    /// Handles `[SEG]` at `pos` and the `(IMAGEk)` tag that should follow.
    fn seg(&mut self, pos: usize) -> usize {
        let seg_index = self.seg_count;
        self.seg_count += 1;
        self.space();
        let after = pos + SEG.len();

        let phrase = match (&self.open, &self.last) {
            (Some(_), _) => {
                self.issue(ParseIssue::SegInsidePhrase { offset: pos });
                None
            }
            (None, LastPhrase::None) => {
                self.issue(ParseIssue::SegWithoutPhrase { offset: pos });
                None
            }
            (None, LastPhrase::Rejected) => None,
            (None, LastPhrase::Valid { index, text }) => Some((*index, Arc::clone(text))),
        };

        let rest = self.text.get(after..).unwrap_or("");
        let trimmed = rest.trim_start();
        let tag_offset = after + (rest.len() - trimmed.len());
        let Some(tag) = image_tag_at(trimmed) else {
            self.issue(ParseIssue::UntaggedSeg { offset: pos });
            return after;
        };
        let image = self.image_index(tag_offset, tag.number);
        if let (Some((phrase_index, phrase)), Some(image)) = (phrase, image) {
            self.requests.push(MaskRequest {
                phrase,
                phrase_index,
                image,
                seg_index,
            });
        }
        tag_offset + tag.len
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_tags() {
        let t = image_tag_at("(IMAGE12) x").unwrap();
        assert_eq!((t.number, t.len), (Some(12), 9));
        let t = image_tag_at("(IMAGE007)").unwrap();
        assert_eq!(t.number, Some(7));
        let huge = format!("(IMAGE{})", "9".repeat(100));
        let t = image_tag_at(&huge).unwrap();
        assert_eq!((t.number, t.len), (None, huge.len()));
        assert!(image_tag_at("(IMAGE)").is_none());
        assert!(image_tag_at("(IMAGE1").is_none());
        assert!(image_tag_at("(IMAGE1 )").is_none());
        assert!(image_tag_at("(image1)").is_none());
        assert!(image_tag_at("(IMAGE-1)").is_none());
    }

    #[test]
    fn other_tags() {
        assert_eq!(other_tag_len("<im_start> x"), Some(10));
        assert_eq!(other_tag_len("</s>"), Some(4));
        assert_eq!(other_tag_len("<image>"), Some(7));
        assert_eq!(other_tag_len("<>"), None);
        assert_eq!(other_tag_len("</>"), None);
        assert_eq!(other_tag_len("< p>"), None);
        assert_eq!(other_tag_len("<a b>"), None);
        assert_eq!(other_tag_len("<é>"), None);
        let long = format!("<{}>", "a".repeat(MAX_TAG_NAME));
        assert_eq!(other_tag_len(&long), Some(long.len()));
        let too_long = format!("<{}>", "a".repeat(MAX_TAG_NAME + 1));
        assert_eq!(other_tag_len(&too_long), None);
    }
}
