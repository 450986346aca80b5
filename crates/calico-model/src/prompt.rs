//! The interleaved multi-image prompt (§3.2) as token ids, with every image's
//! token span recorded where it is built — no magic offsets.
//!
//! A conversation uses the Vicuna v1 template of LLaVA/GLaMM:
//!
//! ```text
//! {system} USER: The <image> (IMAGE1) and <image> (IMAGE2) provide an overview of the pictures.
//! Can you segment the common parts …? ASSISTANT: {answer}</s>
//! ```
//!
//! Each `<image>` becomes `<im_start>`, `tokens_per_image` placeholder slots
//! (whose embeddings the model replaces by the image's visual tokens) and
//! `<im_end>`. Special tokens (`[SEG]`, `<p>`, `</p>`, `<image>`,
//! `<im_start>`, `<im_end>`) are inserted by id; only the text between them
//! goes through the tokenizer, exactly as a tokenizer with added special
//! tokens splits its input.

use std::ops::Range;

use calico_text::tokens::{IMAGE, IMAGE_TAG_PREFIX, IM_END, IM_START, P_CLOSE, P_OPEN, SEG};

/// Targets of prompt positions (no loss), as in `calico_nn::loss`.
pub const IGNORE_INDEX: i64 = calico_nn::loss::IGNORE_INDEX;

/// Vicuna v1's system message (LLaVA `conv_vicuna_v1`).
pub const VICUNA_V1_SYSTEM: &str = "A chat between a curious user and an artificial intelligence \
assistant. The assistant gives helpful, detailed, and polite answers to the user's questions.";

/// Ids of the added tokens, looked up once from the tokenizer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpecialIds {
    pub seg: u32,
    pub p_open: u32,
    pub p_close: u32,
    pub image: u32,
    pub im_start: u32,
    pub im_end: u32,
    /// End of sequence (`</s>`), which ends every answer.
    pub eos: u32,
    /// Beginning of sequence, prepended when the model expects it.
    pub bos: Option<u32>,
}

impl SpecialIds {
    fn of(&self, token: &str) -> Option<u32> {
        match token {
            SEG => Some(self.seg),
            P_OPEN => Some(self.p_open),
            P_CLOSE => Some(self.p_close),
            IMAGE => Some(self.image),
            IM_START => Some(self.im_start),
            IM_END => Some(self.im_end),
            _ => None,
        }
    }

    fn is_special(&self, id: u32) -> bool {
        [
            self.seg,
            self.p_open,
            self.p_close,
            self.image,
            self.im_start,
            self.im_end,
            self.eos,
        ]
        .contains(&id)
            || self.bos == Some(id)
    }
}

/// Encodes plain text (no special tokens added, none recognised).
pub trait TextEncoder {
    fn encode_plain(&self, text: &str) -> Vec<u32>;
    fn decode_plain(&self, ids: &[u32]) -> String;
    /// The id text outside the vocabulary becomes, if there is one.
    fn unknown_token(&self) -> Option<u32> {
        None
    }
}

/// Text without a tokenizer file: one id per byte, [`ByteText::OFFSET`]
/// plus the byte, decoded back to the bytes (ids outside that range are
/// dropped). With the added tokens at [`ByteText::SPECIAL_IDS`], below the
/// offset, it serves models with seeded random weights in tests and
/// benchmarks. A model's vocabulary must hold `OFFSET + 256` ids.
#[derive(Debug, Clone, Copy, Default)]
pub struct ByteText;

impl ByteText {
    /// The id of byte 0.
    pub const OFFSET: u32 = 100;
    /// Added tokens below the byte ids: `<s>` 1, `</s>` 2, `[SEG]` 10, `<p>`
    /// 11, `</p>` 12, `<image>` 13, `<im_start>` 14, `<im_end>` 15.
    pub const SPECIAL_IDS: SpecialIds = SpecialIds {
        seg: 10,
        p_open: 11,
        p_close: 12,
        image: 13,
        im_start: 14,
        im_end: 15,
        eos: 2,
        bos: Some(1),
    };
}

impl TextEncoder for ByteText {
    fn encode_plain(&self, text: &str) -> Vec<u32> {
        text.bytes().map(|b| Self::OFFSET + b as u32).collect()
    }
    fn decode_plain(&self, ids: &[u32]) -> String {
        let bytes: Vec<u8> = ids
            .iter()
            .filter(|&&i| (Self::OFFSET..Self::OFFSET + 256).contains(&i))
            .map(|&i| (i - Self::OFFSET) as u8)
            .collect();
        String::from_utf8_lossy(&bytes).into_owned()
    }
}

/// How prompts are laid out.
#[derive(Debug, Clone, PartialEq)]
pub struct PromptFormat {
    pub system: String,
    /// Visual tokens per image (32 for Calico's Q-Former, 256 LISA, 576 GLaMM).
    pub tokens_per_image: usize,
    /// Wrap each image in `<im_start>` … `<im_end>` (GLaMM's `mm_use_im_start_end`).
    pub im_start_end: bool,
}

impl PromptFormat {
    pub fn vicuna_v1(tokens_per_image: usize) -> Self {
        Self {
            system: VICUNA_V1_SYSTEM.to_string(),
            tokens_per_image,
            im_start_end: true,
        }
    }
}

/// A tokenised conversation.
#[derive(Debug, Clone, PartialEq)]
pub struct PromptLayout {
    /// Token ids; image slots hold the `<image>` id as a placeholder.
    pub input_ids: Vec<u32>,
    /// Training targets aligned with `input_ids` (the model shifts them):
    /// the answer's ids, [`IGNORE_INDEX`] everywhere else.
    pub labels: Vec<i64>,
    /// Positions of each image's visual tokens, in image order.
    pub image_spans: Vec<Range<usize>>,
    /// Index of the last instruction token (the `:` of `ASSISTANT:`) — the
    /// hidden state CAM reads (VPG-C's `input_part_targets_len`).
    pub last_instruction: usize,
    /// First answer position (== `input_ids.len()` for a generation prompt).
    pub answer_start: usize,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PromptError {
    #[error("the question has {found} `<image>` placeholders but {expected} images were given")]
    ImageCount { found: usize, expected: usize },
    #[error(
        "the prompt needs {needed} tokens but the model's context holds {limit}; use fewer images or a shorter question"
    )]
    TooLong { needed: usize, limit: usize },
    #[error("[SEG] at token {position} is not followed by an image tag `(IMAGEk)` with 1 ≤ k ≤ {n_images}")]
    UnroutedSeg { position: usize, n_images: usize },
}

/// Splits `text` on the special-token strings and encodes the pieces.
fn encode_with_specials(
    text: &str,
    tok: &dyn TextEncoder,
    ids: &SpecialIds,
    fmt: &PromptFormat,
    out: &mut Vec<u32>,
    spans: &mut Vec<Range<usize>>,
) {
    let specials = [SEG, P_OPEN, P_CLOSE, IMAGE, IM_START, IM_END];
    let mut rest = text;
    while !rest.is_empty() {
        let next = specials
            .iter()
            .filter_map(|s| rest.find(s).map(|i| (i, *s)))
            .min_by_key(|&(i, s)| (i, std::cmp::Reverse(s.len())));
        let (at, special) = match next {
            Some(n) => n,
            None => {
                out.extend(tok.encode_plain(rest));
                break;
            }
        };
        if at > 0 {
            out.extend(tok.encode_plain(&rest[..at]));
        }
        if special == IMAGE {
            if fmt.im_start_end {
                out.push(ids.im_start);
            }
            let start = out.len();
            out.extend(std::iter::repeat_n(ids.image, fmt.tokens_per_image));
            spans.push(start..out.len());
            if fmt.im_start_end {
                out.push(ids.im_end);
            }
        } else if let Some(id) = ids.of(special) {
            out.push(id);
        }
        rest = &rest[at + special.len()..];
    }
}

/// Builds the token layout of one conversation turn. `question` contains
/// one `<image>` per image (see `calico_text::templates::prompt`); `answer`
/// is `None` for generation (the prompt then ends with `ASSISTANT:`).
/// `context_limit` is the model's maximum sequence length.
pub fn build(
    question: &str,
    answer: Option<&str>,
    n_images: usize,
    tok: &dyn TextEncoder,
    ids: &SpecialIds,
    fmt: &PromptFormat,
    context_limit: usize,
) -> Result<PromptLayout, PromptError> {
    let found = question.matches(IMAGE).count();
    if found != n_images {
        return Err(PromptError::ImageCount {
            found,
            expected: n_images,
        });
    }
    let mut input_ids = Vec::new();
    let mut spans = Vec::new();
    if let Some(b) = ids.bos {
        input_ids.push(b);
    }
    let instruction = format!("{} USER: {question} ASSISTANT:", fmt.system);
    encode_with_specials(&instruction, tok, ids, fmt, &mut input_ids, &mut spans);
    let last_instruction = input_ids.len() - 1;
    let answer_start = input_ids.len();
    if let Some(a) = answer {
        let mut ignored = Vec::new();
        encode_with_specials(
            &format!(" {a}"),
            tok,
            ids,
            fmt,
            &mut input_ids,
            &mut ignored,
        );
        input_ids.push(ids.eos);
    }
    if input_ids.len() > context_limit {
        return Err(PromptError::TooLong {
            needed: input_ids.len(),
            limit: context_limit,
        });
    }
    let labels = input_ids
        .iter()
        .enumerate()
        .map(|(i, &t)| {
            if i >= answer_start {
                t as i64
            } else {
                IGNORE_INDEX
            }
        })
        .collect();
    Ok(PromptLayout {
        input_ids,
        labels,
        image_spans: spans,
        last_instruction,
        answer_start,
    })
}

/// One `[SEG]` token and the image its mask belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegRoute {
    /// Position of the `[SEG]` token in the sequence.
    pub position: usize,
    /// 0-based image index from the `(IMAGEk)` tag that follows it.
    pub image: usize,
}

/// Finds every `[SEG]` in `ids` from `from` on and reads the image tag that
/// follows it (the text up to the next special token must start with
/// `(IMAGEk)`, spaces allowed). Strict: an untagged `[SEG]` is an error.
/// The lenient variant skips it and reports its position.
pub fn route_seg_tokens(
    ids: &[u32],
    from: usize,
    special: &SpecialIds,
    tok: &dyn TextEncoder,
    n_images: usize,
) -> Result<Vec<SegRoute>, PromptError> {
    let (routes, unrouted) = route_seg_tokens_lenient(ids, from, special, tok, n_images);
    match unrouted.first() {
        Some(&position) => Err(PromptError::UnroutedSeg { position, n_images }),
        None => Ok(routes),
    }
}

/// Like [`route_seg_tokens`], returning the routed tokens and the positions
/// of those without a valid tag.
pub fn route_seg_tokens_lenient(
    ids: &[u32],
    from: usize,
    special: &SpecialIds,
    tok: &dyn TextEncoder,
    n_images: usize,
) -> (Vec<SegRoute>, Vec<usize>) {
    let mut routes = Vec::new();
    let mut unrouted = Vec::new();
    for p in from..ids.len() {
        if ids[p] != special.seg {
            continue;
        }
        let end = (p + 1..ids.len())
            .find(|&i| special.is_special(ids[i]))
            .unwrap_or(ids.len());
        let text = tok.decode_plain(&ids[p + 1..end]);
        match image_tag_at_start(&text) {
            Some(k) if (1..=n_images).contains(&k) => routes.push(SegRoute {
                position: p,
                image: k - 1,
            }),
            _ => unrouted.push(p),
        }
    }
    (routes, unrouted)
}

/// `k` when `text` starts (after whitespace) with `(IMAGEk)`.
fn image_tag_at_start(text: &str) -> Option<usize> {
    let rest = text.trim_start().strip_prefix(IMAGE_TAG_PREFIX)?;
    let close = rest.find(')')?;
    rest[..close].parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One id per byte (offset 1000), decoding back to the bytes.
    struct Bytes;

    impl TextEncoder for Bytes {
        fn encode_plain(&self, text: &str) -> Vec<u32> {
            text.bytes().map(|b| 1000 + b as u32).collect()
        }
        fn decode_plain(&self, ids: &[u32]) -> String {
            String::from_utf8_lossy(
                &ids.iter()
                    .filter(|&&i| i >= 1000)
                    .map(|&i| (i - 1000) as u8)
                    .collect::<Vec<_>>(),
            )
            .into_owned()
        }
    }

    const IDS: SpecialIds = SpecialIds {
        seg: 1,
        p_open: 2,
        p_close: 3,
        image: 4,
        im_start: 5,
        im_end: 6,
        eos: 7,
        bos: Some(8),
    };

    fn fmt(n: usize) -> PromptFormat {
        PromptFormat {
            system: "SYS".into(),
            tokens_per_image: n,
            im_start_end: true,
        }
    }

    #[test]
    fn byte_text_round_trips_and_drops_what_is_not_a_byte() {
        let ids = ByteText.encode_plain("a leg, é");
        assert_eq!(ids[0], ByteText::OFFSET + b'a' as u32);
        assert_eq!(ByteText.decode_plain(&ids), "a leg, é");
        let mut with_special = vec![ByteText::SPECIAL_IDS.seg];
        with_special.extend(&ids);
        with_special.push(ByteText::OFFSET + 256);
        assert_eq!(ByteText.decode_plain(&with_special), "a leg, é");
    }

    #[test]
    fn image_spans_are_recorded_where_the_slots_are() {
        let q = calico_text::templates::multi_image_prefix(2) + "Common parts?";
        let layout = build(&q, None, 2, &Bytes, &IDS, &fmt(3), 10_000).unwrap();
        assert_eq!(layout.image_spans.len(), 2);
        for span in &layout.image_spans {
            assert_eq!(span.len(), 3);
            assert!(layout.input_ids[span.clone()]
                .iter()
                .all(|&t| t == IDS.image));
            assert_eq!(layout.input_ids[span.start - 1], IDS.im_start);
            assert_eq!(layout.input_ids[span.end], IDS.im_end);
        }
        assert_eq!(layout.input_ids[0], 8);
        let text = Bytes.decode_plain(&layout.input_ids);
        assert!(
            text.starts_with("SYS USER: The  (IMAGE1) and  (IMAGE2)"),
            "{text}"
        );
        assert!(text.ends_with("Common parts? ASSISTANT:"));
        assert_eq!(layout.last_instruction, layout.input_ids.len() - 1);
        assert_eq!(layout.answer_start, layout.input_ids.len());
        assert!(layout.labels.iter().all(|&l| l == IGNORE_INDEX));
    }

    #[test]
    fn answers_are_labelled_and_special_tokens_inserted_by_id() {
        let a = "The common object is <p> the chair </p> [SEG] (IMAGE1) [SEG] (IMAGE2).";
        let q = calico_text::templates::multi_image_prefix(2) + "What is common?";
        let layout = build(&q, Some(a), 2, &Bytes, &IDS, &fmt(2), 10_000).unwrap();
        let answer = &layout.input_ids[layout.answer_start..];
        assert_eq!(*answer.last().unwrap(), IDS.eos);
        assert_eq!(answer.iter().filter(|&&t| t == IDS.seg).count(), 2);
        assert_eq!(answer.iter().filter(|&&t| t == IDS.p_open).count(), 1);
        for (i, &l) in layout.labels.iter().enumerate() {
            if i < layout.answer_start {
                assert_eq!(l, IGNORE_INDEX);
            } else {
                assert_eq!(l, layout.input_ids[i] as i64);
            }
        }
        let routes =
            route_seg_tokens(&layout.input_ids, layout.answer_start, &IDS, &Bytes, 2).unwrap();
        assert_eq!(
            routes.iter().map(|r| r.image).collect::<Vec<_>>(),
            vec![0, 1]
        );
        for r in &routes {
            assert_eq!(layout.input_ids[r.position], IDS.seg);
        }
    }

    #[test]
    fn bad_prompts_and_untagged_segs_are_errors() {
        let q = calico_text::templates::multi_image_prefix(2);
        assert_eq!(
            build(&q, None, 3, &Bytes, &IDS, &fmt(2), 10_000).unwrap_err(),
            PromptError::ImageCount {
                found: 2,
                expected: 3
            }
        );
        let e = build(&q, None, 2, &Bytes, &IDS, &fmt(2), 20).unwrap_err();
        assert!(matches!(e, PromptError::TooLong { limit: 20, .. }), "{e}");
        let mut ids = Bytes.encode_plain("x ");
        ids.push(IDS.seg);
        ids.extend(Bytes.encode_plain(" (IMAGE3) and "));
        ids.push(IDS.seg);
        ids.extend(Bytes.encode_plain(" (IMAGE2)"));
        let (routes, unrouted) = route_seg_tokens_lenient(&ids, 0, &IDS, &Bytes, 2);
        assert_eq!(routes.len(), 1);
        assert_eq!(routes[0].image, 1);
        assert_eq!(unrouted, vec![2]);
        assert!(route_seg_tokens(&ids, 0, &IDS, &Bytes, 2).is_err());
    }
}
