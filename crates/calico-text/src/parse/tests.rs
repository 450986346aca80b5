//! Golden parses and one test per issue kind.

use super::*;

fn images(p: &ParsedAnswer) -> Vec<(&str, usize, usize)> {
    p.requests
        .iter()
        .map(|r| (&*r.phrase, r.image, r.seg_index))
        .collect()
}

fn strict_issue(text: &str, n: usize) -> ParseIssue {
    match parse_answer(text, n) {
        Err(ParseError::Issue(i)) => i,
        other => panic!("expected an issue for {text:?}, got {other:?}"),
    }
}

#[test]
fn golden_common_object() {
    let p = parse_answer(
        "The common object is <p> the chair </p> [SEG] (IMAGE1) [SEG] (IMAGE2).",
        2,
    )
    .unwrap();
    assert_eq!(p.caption, "The common object is the chair.");
    assert_eq!(p.phrases, ["the chair"]);
    assert_eq!(images(&p), [("the chair", 0, 0), ("the chair", 1, 1)]);
    assert_eq!(p.seg_count, 2);
    assert!(p.warnings.is_empty());
}

#[test]
fn golden_identification_same() {
    let p = parse_answer(
        "Both images show <p> a dog </p> [SEG] (IMAGE1) [SEG] (IMAGE2).",
        2,
    )
    .unwrap();
    assert_eq!(p.caption, "Both images show a dog.");
    assert_eq!(images(&p), [("a dog", 0, 0), ("a dog", 1, 1)]);
}

#[test]
fn golden_identification_different() {
    let p = parse_answer(
        "The images show <p> a chair </p> [SEG] (IMAGE1) and <p> an ottoman </p> [SEG] (IMAGE2).",
        2,
    )
    .unwrap();
    assert_eq!(p.caption, "The images show a chair and an ottoman.");
    assert_eq!(p.phrases, ["a chair", "an ottoman"]);
    assert_eq!(images(&p), [("a chair", 0, 0), ("an ottoman", 1, 1)]);
    assert_eq!(p.requests[1].phrase_index, 1);
}

#[test]
fn golden_parts() {
    let p = parse_answer(
        "Both objects have <p> the leg </p> [SEG] (IMAGE1) [SEG] (IMAGE2).",
        2,
    )
    .unwrap();
    assert_eq!(p.caption, "Both objects have the leg.");
    assert_eq!(images(&p), [("the leg", 0, 0), ("the leg", 1, 1)]);

    let p = parse_answer(
        "The unique parts between the objects are <p> the headboard </p> [SEG] (IMAGE2).",
        2,
    )
    .unwrap();
    assert_eq!(
        p.caption,
        "The unique parts between the objects are the headboard."
    );
    assert_eq!(images(&p), [("the headboard", 1, 0)]);
}

#[test]
fn golden_prefix_and_special_tags() {
    let p = parse_answer(
        "The <image> (IMAGE1) and <image> (IMAGE2) provide an overview of the pictures.\n\
         <im_start>Can you segment the common object?<im_end></s>",
        2,
    )
    .unwrap();
    assert_eq!(
        p.caption,
        "The and provide an overview of the pictures. Can you segment the common object?"
    );
    assert!(p.requests.is_empty());
    assert!(p.phrases.is_empty());
}

#[test]
fn whitespace_between_tokens_is_flexible() {
    let p = parse_answer(
        "<p>the\n\tleg</p>[SEG](IMAGE1)   [SEG]\n\n(IMAGE2) , and <p>  the  seat </p>[SEG]  (IMAGE2)",
        2,
    )
    .unwrap();
    assert_eq!(p.phrases, ["the leg", "the seat"]);
    assert_eq!(
        images(&p),
        [("the leg", 0, 0), ("the leg", 1, 1), ("the seat", 1, 2)]
    );
    assert_eq!(p.caption, "the leg, and the seat");
}

#[test]
fn seg_attaches_to_most_recent_closed_phrase_across_words() {
    let p = parse_answer("<p> the leg </p> of the chair [SEG] (IMAGE1)", 1).unwrap();
    assert_eq!(images(&p), [("the leg", 0, 0)]);
    assert_eq!(p.caption, "the leg of the chair");
}

#[test]
fn bare_image_reference_is_not_a_request() {
    let p = parse_answer(
        "In (IMAGE2) there is <p> a cat </p> [SEG] (IMAGE2) (IMAGE1).",
        2,
    )
    .unwrap();
    assert_eq!(images(&p), [("a cat", 1, 0)]);
    assert_eq!(p.caption, "In there is a cat.");
}

#[test]
fn malformed_image_tags_are_plain_text() {
    let p = parse_answer("<p> x </p> [SEG] (IMAGE2) (IMAGE) (image1) (IMAGE3", 2).unwrap();
    assert_eq!(p.caption, "x (IMAGE) (image1) (IMAGE3");
    let p = parse_answer("(IMAGE(IMAGE1)", 1).unwrap();
    assert_eq!(p.caption, "(IMAGE");
}

#[test]
fn empty_input_and_plain_text() {
    let p = parse_answer("", 1).unwrap();
    assert_eq!(p, ParsedAnswer::default());
    let p = parse_answer("  just   words .\n", 3).unwrap();
    assert_eq!(p.caption, "just words.");
}

#[test]
fn tokens_are_word_breaks() {
    let p = parse_answer("is<p>the chair</p>[SEG](IMAGE1).", 1).unwrap();
    assert_eq!(p.caption, "is the chair.");
    assert_eq!(p.phrases, ["the chair"]);
}

#[test]
fn issue_no_images() {
    assert_eq!(strict_issue("", 0), ParseIssue::NoImages);
    assert_eq!(
        strict_issue("<p> x </p> [SEG] (IMAGE1)", 0),
        ParseIssue::NoImages
    );
    let e = parse_answer("text", 0).unwrap_err();
    assert!(e.to_string().contains("n_images is 0"), "{e}");
    let p = parse_answer_lenient("<p> x </p> [SEG] (IMAGE1)", 0);
    assert_eq!(p.warnings[0], ParseIssue::NoImages);
    assert!(p.requests.is_empty());
    assert_eq!(p.phrases, ["x"]);
}

#[test]
fn issue_untagged_seg() {
    let text = "<p> the leg </p> [SEG] and more";
    assert_eq!(
        strict_issue(text, 2),
        ParseIssue::UntaggedSeg { offset: 17 }
    );
    assert!(parse_answer(text, 2)
        .unwrap_err()
        .to_string()
        .contains("[SEG] at byte 17"));
    assert_eq!(
        strict_issue("<p> x </p> [SEG]", 2),
        ParseIssue::UntaggedSeg { offset: 11 }
    );
    // Only one tag per [SEG]: the second [SEG] has none.
    let p = parse_answer_lenient("<p> x </p> [SEG] [SEG] (IMAGE1)", 2);
    assert_eq!(p.warnings, [ParseIssue::UntaggedSeg { offset: 11 }]);
    assert_eq!(images(&p), [("x", 0, 1)]);
    assert_eq!(p.seg_count, 2);
}

#[test]
fn issue_image_out_of_range() {
    let text = "<p> x </p> [SEG] (IMAGE9)";
    assert_eq!(
        strict_issue(text, 2),
        ParseIssue::ImageOutOfRange {
            offset: 17,
            number: Some(9),
            n_images: 2
        }
    );
    let msg = parse_answer(text, 2).unwrap_err().to_string();
    assert!(
        msg.contains("byte 17") && msg.contains("image 9") && msg.contains("2 image(s)"),
        "{msg}"
    );
    assert_eq!(
        strict_issue("<p> x </p> [SEG] (IMAGE0)", 2),
        ParseIssue::ImageOutOfRange {
            offset: 17,
            number: Some(0),
            n_images: 2
        }
    );
    let huge = format!("<p> x </p> [SEG] (IMAGE{})", "9".repeat(40));
    assert_eq!(
        strict_issue(&huge, 2),
        ParseIssue::ImageOutOfRange {
            offset: 17,
            number: None,
            n_images: 2
        }
    );
    assert!(parse_answer(&huge, 2)
        .unwrap_err()
        .to_string()
        .contains("too large"));
    let max = format!("<p> x </p> [SEG] (IMAGE{})", usize::MAX);
    assert!(matches!(
        strict_issue(&max, 2),
        ParseIssue::ImageOutOfRange {
            number: Some(usize::MAX),
            ..
        }
    ));
    // Bare references are checked too.
    assert_eq!(
        strict_issue("see (IMAGE3)", 2),
        ParseIssue::ImageOutOfRange {
            offset: 4,
            number: Some(3),
            n_images: 2
        }
    );
    let p = parse_answer_lenient("<p> x </p> [SEG] (IMAGE9) [SEG] (IMAGE2)", 2);
    assert_eq!(images(&p), [("x", 1, 1)]);
    assert_eq!(p.warnings.len(), 1);
}

#[test]
fn issue_seg_without_phrase() {
    assert_eq!(
        strict_issue("The answer [SEG] (IMAGE1).", 1),
        ParseIssue::SegWithoutPhrase { offset: 11 }
    );
    let msg = parse_answer("[SEG] (IMAGE1)", 1).unwrap_err().to_string();
    assert!(msg.contains("no preceding <p> phrase"), "{msg}");
    let p = parse_answer_lenient("[SEG] (IMAGE1) <p> y </p> [SEG] (IMAGE1)", 1);
    assert_eq!(p.warnings, [ParseIssue::SegWithoutPhrase { offset: 0 }]);
    assert_eq!(images(&p), [("y", 0, 1)]);
}

#[test]
fn issue_seg_inside_phrase() {
    assert_eq!(
        strict_issue("<p> the [SEG] (IMAGE1) leg </p>", 1),
        ParseIssue::SegInsidePhrase { offset: 8 }
    );
    let p = parse_answer_lenient("<p> a </p> <p> the [SEG] (IMAGE1) leg </p>", 1);
    assert_eq!(p.warnings, [ParseIssue::SegInsidePhrase { offset: 19 }]);
    assert!(p.requests.is_empty());
    assert_eq!(p.phrases, ["a", "the leg"]);
}

#[test]
fn issue_unclosed_phrase() {
    assert_eq!(
        strict_issue("The object is <p> the chair", 1),
        ParseIssue::UnclosedPhrase { offset: 14 }
    );
    let msg = parse_answer("<p> x", 1).unwrap_err().to_string();
    assert_eq!(msg, "<p> at byte 0 is never closed");
    let p = parse_answer_lenient("<p> a </p> [SEG] (IMAGE1) <p> b", 1);
    assert_eq!(p.warnings, [ParseIssue::UnclosedPhrase { offset: 26 }]);
    assert_eq!(p.phrases, ["a"]);
    assert_eq!(p.caption, "a b");
    assert_eq!(p.requests.len(), 1);
}

#[test]
fn issue_stray_close() {
    assert_eq!(
        strict_issue("the chair </p> [SEG] (IMAGE1)", 1),
        ParseIssue::StrayClose { offset: 10 }
    );
    let p = parse_answer_lenient("<p> a </p> </p> [SEG] (IMAGE1)", 1);
    assert_eq!(p.warnings, [ParseIssue::StrayClose { offset: 11 }]);
    assert_eq!(images(&p), [("a", 0, 0)]);
}

#[test]
fn issue_nested_phrase() {
    assert_eq!(
        strict_issue("<p> the <p> leg </p> [SEG] (IMAGE1)", 1),
        ParseIssue::NestedPhrase {
            offset: 8,
            outer: 0
        }
    );
    let msg = parse_answer("<p> a <p> b </p>", 1).unwrap_err().to_string();
    assert!(msg.contains("byte 6") && msg.contains("byte 0"), "{msg}");
    // Lenient: the inner phrase wins, the outer one is dropped.
    let p = parse_answer_lenient("<p> the <p> leg </p> [SEG] (IMAGE1)", 1);
    assert_eq!(
        p.warnings,
        [ParseIssue::NestedPhrase {
            offset: 8,
            outer: 0
        }]
    );
    assert_eq!(images(&p), [("leg", 0, 0)]);
}

#[test]
fn issue_empty_phrase() {
    assert_eq!(
        strict_issue("x <p> \n </p> [SEG] (IMAGE1)", 1),
        ParseIssue::EmptyPhrase { offset: 2 }
    );
    assert_eq!(
        strict_issue("<p></p>", 1),
        ParseIssue::EmptyPhrase { offset: 0 }
    );
    assert_eq!(
        strict_issue("<p> <im_start> (IMAGE1) </p>", 1),
        ParseIssue::EmptyPhrase { offset: 0 }
    );
    // Lenient: [SEG]s after an empty phrase are dropped without a second
    // issue, and do not attach to an earlier phrase.
    let p = parse_answer_lenient("<p> a </p> <p> </p> [SEG] (IMAGE1)", 1);
    assert_eq!(p.warnings, [ParseIssue::EmptyPhrase { offset: 11 }]);
    assert!(p.requests.is_empty());
    assert_eq!(p.seg_count, 1);
    assert_eq!(p.phrases, ["a"]);
}

#[test]
fn invalid_utf8_names_the_offset() {
    let mut bytes = b"<p> caf".to_vec();
    bytes.extend([0xC3, 0x28]);
    bytes.extend(b" </p>");
    let e = parse_answer_bytes(&bytes, 1).unwrap_err();
    assert_eq!(e, ParseError::InvalidUtf8 { offset: 7 });
    assert!(e.to_string().contains("byte 7"), "{e}");
    let ok = parse_answer_bytes("<p> café </p> [SEG] (IMAGE1)".as_bytes(), 1).unwrap();
    assert_eq!(ok.phrases, ["café"]);
}

#[test]
fn lenient_collects_every_issue_in_order() {
    let p = parse_answer_lenient(
        "</p> [SEG] <p> a <p> </p> [SEG] (IMAGE5) <p> b </p> [SEG] (IMAGE1) <p> c",
        2,
    );
    assert_eq!(
        p.warnings,
        [
            ParseIssue::StrayClose { offset: 0 },
            ParseIssue::SegWithoutPhrase { offset: 5 },
            ParseIssue::UntaggedSeg { offset: 5 },
            ParseIssue::NestedPhrase {
                offset: 17,
                outer: 11
            },
            ParseIssue::EmptyPhrase { offset: 17 },
            ParseIssue::ImageOutOfRange {
                offset: 32,
                number: Some(5),
                n_images: 2
            },
            ParseIssue::UnclosedPhrase { offset: 67 },
        ]
    );
    assert_eq!(images(&p), [("b", 0, 2)]);
    assert_eq!(p.seg_count, 3);
    let strict = parse_answer(
        "</p> [SEG] <p> a <p> </p> [SEG] (IMAGE5) <p> b </p> [SEG] (IMAGE1) <p> c",
        2,
    );
    assert_eq!(strict, Err(ParseError::Issue(p.warnings[0].clone())));
}

#[test]
fn issue_offsets_are_reported() {
    assert_eq!(ParseIssue::NoImages.offset(), None);
    assert_eq!(ParseIssue::StrayClose { offset: 3 }.offset(), Some(3));
}

#[test]
fn parsed_answers_serialise() {
    let p = parse_answer_lenient("<p> a </p> [SEG] (IMAGE1) [SEG]", 1);
    let json = serde_json::to_string(&p).unwrap();
    let back: ParsedAnswer = serde_json::from_str(&json).unwrap();
    assert_eq!(back, p);
}

#[test]
fn fuzz_entry_accepts_samples() {
    for sample in [
        &b""[..],
        b"\x02<p> a </p> [SEG] (IMAGE1)",
        b"\x00[SEG]",
        b"\x03\xff\xfe<p>",
        b"\x07(IMAGE99999999999999999999999999)",
    ] {
        fuzz_parse(sample);
    }
}
