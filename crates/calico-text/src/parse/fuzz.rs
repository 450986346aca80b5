//! A fuzzing entry point that checks the parsers' invariants.

use super::{parse_answer, parse_answer_bytes, parse_answer_lenient, ParseError, ParsedAnswer};
use crate::tokens::{P_CLOSE, P_OPEN, SEG};

/// Runs every parser on fuzzer input and panics if an invariant is broken.
///
/// The first byte selects `n_images` (`data[0] % 8`, so 0 is covered); the
/// rest is the answer. Checked invariants:
///
/// * the strict, lenient and byte parsers agree (strict success equals the
///   lenient result; strict failure is the first lenient warning; invalid
///   UTF-8 is reported at [`std::str::Utf8Error::valid_up_to`]);
/// * requests have increasing `seg_index` below `seg_count`, in-range
///   images, and point at their phrase;
/// * `seg_count` equals the number of `[SEG]` substrings;
/// * captions and phrases are trimmed, have no double spaces, and the
///   caption contains no `[SEG]`, `<p>` or `</p>`.
///
/// Meant for a `cargo fuzz` target: `fuzz_target!(|d: &[u8]| fuzz_parse(d));`.
pub fn fuzz_parse(data: &[u8]) {
    let (n_images, body) = match data.split_first() {
        Some((first, rest)) => (usize::from(*first % 8), rest),
        None => (2, data),
    };
    let strict = parse_answer_bytes(body, n_images);
    let text = match std::str::from_utf8(body) {
        Ok(text) => text,
        Err(e) => {
            assert_eq!(
                strict,
                Err(ParseError::InvalidUtf8 {
                    offset: e.valid_up_to()
                })
            );
            let lossy = String::from_utf8_lossy(body);
            check_lenient(&lossy, n_images, &parse_answer_lenient(&lossy, n_images));
            return;
        }
    };
    assert_eq!(strict, parse_answer(text, n_images));
    let lenient = parse_answer_lenient(text, n_images);
    check_lenient(text, n_images, &lenient);
    match strict {
        Ok(parsed) => {
            assert!(parsed.warnings.is_empty());
            assert_eq!(parsed, lenient);
            assert_eq!(parsed.requests.len(), parsed.seg_count);
        }
        Err(ParseError::Issue(issue)) => assert_eq!(lenient.warnings.first(), Some(&issue)),
        Err(e @ ParseError::InvalidUtf8 { .. }) => panic!("valid UTF-8 reported as {e}"),
    }
}

/// Structural invariants of a lenient parse of `text`.
fn check_lenient(text: &str, n_images: usize, p: &ParsedAnswer) {
    assert_eq!(p.seg_count, text.matches(SEG).count());
    let mut previous = None;
    for r in &p.requests {
        assert!(previous < Some(r.seg_index), "seg_index not increasing");
        previous = Some(r.seg_index);
        assert!(r.seg_index < p.seg_count);
        assert!(r.image < n_images);
        assert_eq!(
            p.phrases.get(r.phrase_index).map(String::as_str),
            Some(&*r.phrase)
        );
    }
    for phrase in &p.phrases {
        assert!(!phrase.is_empty());
        assert_normalised(phrase);
    }
    assert_normalised(&p.caption);
    for token in [SEG, P_OPEN, P_CLOSE] {
        assert!(!p.caption.contains(token), "caption keeps {token}");
    }
    for w in &p.warnings {
        assert!(w.offset().is_none_or(|o| o < text.len()));
    }
    assert_eq!(p.warnings.is_empty(), parse_answer(text, n_images).is_ok());
}

fn assert_normalised(s: &str) {
    assert_eq!(s, s.trim(), "untrimmed: {s:?}");
    assert!(!s.contains("  "), "double space: {s:?}");
    assert!(
        !s.chars().any(|c| c.is_whitespace() && c != ' '),
        "raw whitespace: {s:?}"
    );
}
