//! Property: composing an answer and parsing it back (strictly) recovers
//! every mask's label and image, in order, with no warnings.

use calico_text::compose::{self, Answer};
use calico_text::english::strip_article;
use calico_text::parse::{parse_answer, parse_answer_lenient};
use calico_text::Task;
use proptest::prelude::*;
use proptest::sample::select;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

/// A label word: letters (some non-ASCII), digits, apostrophes, hyphens.
fn word() -> impl Strategy<Value = String> {
    "[a-zA-Z0-9éø][a-zA-Z0-9éø'-]{0,7}"
}

/// A label of 1-3 words, sometimes with messy whitespace that composition
/// must normalise.
fn label() -> impl Strategy<Value = String> {
    (
        prop::collection::vec(word(), 1..4),
        select(vec![" ", "  ", "\t", " \n "]),
        any::<bool>(),
    )
        .prop_map(|(words, sep, pad)| {
            let joined = words.join(sep);
            if pad {
                format!("  {joined} ")
            } else {
                joined
            }
        })
}

#[derive(Debug, Clone)]
struct Case {
    task: Task,
    n_images: usize,
    objects: Vec<String>,
    common: Vec<String>,
    unique: Vec<(String, Vec<usize>)>,
    seed: u64,
}

fn unique_part(n: usize) -> impl Strategy<Value = (String, Vec<usize>)> {
    (
        label(),
        prop::collection::vec(any::<bool>(), n),
        any::<bool>(),
        0..n,
    )
        .prop_map(move |(l, mask, reverse, fallback)| {
            let mut images: Vec<usize> = (0..n).filter(|&i| mask[i]).collect();
            if images.is_empty() {
                images.push(fallback);
            }
            if reverse {
                images.reverse();
            }
            (l, images)
        })
}

fn case() -> impl Strategy<Value = Case> {
    (1usize..=6, select(Task::ALL.to_vec())).prop_flat_map(|(n, task)| {
        (
            prop::collection::vec(label(), n),
            prop::collection::vec(label(), 0..5),
            prop::collection::vec(unique_part(n), 0..5),
            any::<u64>(),
        )
            .prop_map(move |(objects, common, unique, seed)| Case {
                task,
                n_images: n,
                objects,
                common,
                unique,
                seed,
            })
    })
}

fn compose_case(c: &Case) -> Answer {
    let mut rng = ChaCha8Rng::seed_from_u64(c.seed);
    match c.task {
        Task::CommonObject => compose::common_object(&c.common, c.n_images, &mut rng),
        Task::IdentifyObjects => compose::identify_objects(&c.objects, &mut rng),
        Task::CommonParts => compose::common_parts(&c.objects, &c.common, &mut rng),
        Task::UniqueParts => compose::unique_parts(&c.objects, &c.unique, &mut rng),
    }
    .expect("valid input composes")
}

fn normalise(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The (label, image) pairs the composer should emit, in order.
fn expected_masks(c: &Case) -> Vec<(String, usize)> {
    let n = c.n_images;
    let all = move |l: &String| {
        let l = normalise(l);
        (0..n).map(move |i| (l.clone(), i))
    };
    let mut id = Vec::new();
    if c.task != Task::CommonObject {
        // Objects grouped by label, in order of first appearance.
        let labels: Vec<String> = c.objects.iter().map(|l| normalise(l)).collect();
        let mut seen: Vec<&String> = Vec::new();
        for l in &labels {
            if !seen.contains(&l) {
                seen.push(l);
                for (i, m) in labels.iter().enumerate() {
                    if m == l {
                        id.push((l.clone(), i));
                    }
                }
            }
        }
    }
    let rest: Vec<(String, usize)> = match c.task {
        Task::CommonObject | Task::CommonParts => c.common.iter().flat_map(all).collect(),
        Task::IdentifyObjects => Vec::new(),
        Task::UniqueParts => c
            .unique
            .iter()
            .flat_map(|(l, imgs)| imgs.iter().map(move |&i| (normalise(l), i)))
            .collect(),
    };
    id.into_iter().chain(rest).collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn compose_then_parse_round_trips(c in case()) {
        let answer = compose_case(&c);
        let masks: Vec<(String, usize)> =
            answer.masks.iter().map(|m| (m.label.clone(), m.image)).collect();
        prop_assert_eq!(&masks, &expected_masks(&c));

        let parsed = parse_answer(&answer.text, c.n_images)
            .map_err(|e| TestCaseError::fail(format!("{e} in {:?}", answer.text)))?;
        prop_assert!(parsed.warnings.is_empty());
        prop_assert_eq!(parsed.requests.len(), answer.masks.len());
        prop_assert_eq!(parsed.seg_count, answer.masks.len());
        for (i, (req, mask)) in parsed.requests.iter().zip(&answer.masks).enumerate() {
            prop_assert_eq!(strip_article(&req.phrase), mask.label.as_str());
            prop_assert_eq!(req.image, mask.image);
            prop_assert_eq!(req.seg_index, i);
        }
        prop_assert!(!parsed.caption.contains("(IMAGE"));
        prop_assert!(parsed.caption.ends_with('.'));
        prop_assert_eq!(parse_answer_lenient(&answer.text, c.n_images), parsed);
    }

    #[test]
    fn composition_is_deterministic(c in case()) {
        prop_assert_eq!(compose_case(&c), compose_case(&c));
    }
}
