//! Parsing 1 MB inputs, including adversarial ones: every parser finishes
//! and returns a bounded result. (A quadratic rescan would make this test
//! run for hours; the speed itself is not asserted here.)

use calico_text::parse::{parse_answer, parse_answer_lenient};

const MB: usize = 1 << 20;

/// Repeats `unit` to about 1 MB, wrapped by `head` and `tail`.
fn build(head: &str, unit: &str, tail: &str) -> String {
    let mut s = String::with_capacity(MB + head.len() + tail.len());
    s.push_str(head);
    while s.len() < MB {
        s.push_str(unit);
    }
    s.push_str(tail);
    s
}

fn inputs() -> Vec<(&'static str, String)> {
    vec![
        (
            "valid masks",
            build("<p> the leg </p>", " [SEG] (IMAGE1)", "."),
        ),
        ("untagged segs", build("", "[SEG]", "")),
        ("seg then spaces", build("<p> x </p> [SEG]", " ", "")),
        (
            "seg then newlines",
            build("<p> x </p> [SEG]", "\n", "(IMAGE"),
        ),
        ("unterminated digits", build("[SEG] (IMAGE", "1", "")),
        ("repeated tag prefix", build("", "(IMAGE", "")),
        ("repeated tag prefix 1", build("", "(IMAGE1", "")),
        ("open angles", build("", "<", "")),
        ("unclosed tag names", build("", "<im_start", "")),
        ("long tag name", build("<", "a", ">")),
        ("nested opens", build("", "<p>", "")),
        ("stray closes", build("", "</p>", "")),
        (
            "giant phrase",
            build("<p>", " word", " </p>") + &" [SEG] (IMAGE1)".repeat(40_000),
        ),
        ("non-ascii", build("<p>", "é\u{3000}", "</p> [SEG](IMAGE2)")),
        (
            "huge image number",
            build("<p> x </p> [SEG] (IMAGE", "9", ")"),
        ),
    ]
}

#[test]
fn one_megabyte_inputs_parse() {
    for (name, text) in inputs() {
        let strict = parse_answer(&text, 2);
        let lenient = parse_answer_lenient(&text, 2);
        assert!(lenient.caption.len() <= text.len(), "{name}");
        if let Ok(parsed) = strict {
            assert_eq!(parsed, lenient, "{name}");
        }
    }
}

#[test]
fn many_requests_share_one_phrase() {
    let text = build("<p>", " word", " </p>") + &" [SEG] (IMAGE1)".repeat(40_000);
    let p = parse_answer(&text, 1).unwrap();
    assert_eq!(p.requests.len(), 40_000);
    assert_eq!(p.phrases.len(), 1);
    // The long phrase is shared, not copied per request.
    let first = &p.requests[0].phrase;
    assert!(p
        .requests
        .iter()
        .all(|r| std::sync::Arc::ptr_eq(&r.phrase, first)));
}
