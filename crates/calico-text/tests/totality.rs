//! Property: the parsers never panic, and the lenient parser is consistent
//! with the strict one (see `calico_text::parse::fuzz_parse`).

use calico_text::compose;
use calico_text::parse::{fuzz_parse, parse_answer, parse_answer_bytes, parse_answer_lenient};
use proptest::prelude::*;
use proptest::sample::select;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

const TOKENS: &[&str] = &[
    "<p>",
    "</p>",
    "<p> ",
    " </p>",
    "[SEG]",
    "[SEG] ",
    "(IMAGE",
    "(IMAGE1)",
    "(IMAGE2)",
    "1",
    "2",
    "0",
    "7",
    "99999999999999999999999",
    ")",
    "the",
    "leg",
    "chair's",
    " ",
    "  ",
    "\n",
    ".",
    ",",
    "<im_start>",
    "<im_end>",
    "<image>",
    "</s>",
    "<",
    ">",
    "[",
    "é",
    "\u{3000}",
    "[SEG",
];

fn token_soup() -> impl Strategy<Value = String> {
    prop::collection::vec(select(TOKENS), 0..60).prop_map(|t| t.concat())
}

/// Runs everything on `text` with `n` images.
fn check(text: &str, n: usize) {
    let mut data = vec![u8::try_from(n % 8).unwrap()];
    data.extend_from_slice(text.as_bytes());
    fuzz_parse(&data);
    let strict = parse_answer(text, n);
    let lenient = parse_answer_lenient(text, n);
    assert_eq!(parse_answer_bytes(text.as_bytes(), n), strict);
    if let Ok(s) = &strict {
        // Lenient requests are exactly the strict ones when strict succeeds.
        assert_eq!(s.requests, lenient.requests);
        assert_eq!(s, &lenient);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1024))]

    #[test]
    fn arbitrary_strings_never_panic(s in any::<String>(), n in 0usize..8) {
        check(&s, n);
    }

    #[test]
    fn token_soup_never_panics(s in token_soup(), n in 0usize..8) {
        check(&s, n);
    }

    #[test]
    fn arbitrary_bytes_never_panic(data in prop::collection::vec(any::<u8>(), 0..300)) {
        fuzz_parse(&data);
        let n = 2;
        let _ = parse_answer_bytes(&data, n);
    }

    #[test]
    fn mutated_answers_never_panic(
        seed in any::<u64>(),
        cut in any::<prop::sample::Index>(),
        len in 0usize..12,
        insert in select(TOKENS),
        n in 0usize..4,
    ) {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let a = compose::common_parts(&["chair", "ottoman"], &["leg", "seat"], &mut rng).unwrap();
        let bytes = a.text.as_bytes();
        let at = cut.index(bytes.len());
        let end = (at + len).min(bytes.len());
        let mut mutated = bytes[..at].to_vec();
        mutated.extend_from_slice(insert.as_bytes());
        mutated.extend_from_slice(&bytes[end..]);
        let mut data = vec![u8::try_from(n).unwrap()];
        data.extend_from_slice(&mutated);
        fuzz_parse(&data);
    }
}
