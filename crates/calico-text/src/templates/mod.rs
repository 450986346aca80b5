//! Tasks, question phrasings, the multi-image prompt prefix and answer
//! templates.
//!
//! Phrasings are chosen with a caller-supplied random number generator, so a
//! seeded generator (e.g. `rand_chacha::ChaCha8Rng`) gives reproducible
//! prompts.

pub mod answers;
pub mod questions;

use std::fmt;
use std::str::FromStr;

use rand::Rng;
use serde::{Deserialize, Serialize};

use crate::tokens::{image_tag, IMAGE};

/// The four Calico question kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Task {
    /// Segment the object category that all images share.
    CommonObject,
    /// Segment the parts that all objects share.
    CommonParts,
    /// Segment the parts that only some of the objects have.
    UniqueParts,
    /// Name and segment the object in every image.
    IdentifyObjects,
}

impl Task {
    /// All tasks, in declaration order.
    pub const ALL: [Task; 4] = [
        Task::CommonObject,
        Task::CommonParts,
        Task::UniqueParts,
        Task::IdentifyObjects,
    ];

    /// The snake_case name used by serde, [`Display`](fmt::Display) and
    /// [`FromStr`], e.g. `"common_parts"`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Task::CommonObject => "common_object",
            Task::CommonParts => "common_parts",
            Task::UniqueParts => "unique_parts",
            Task::IdentifyObjects => "identify_objects",
        }
    }
}

impl fmt::Display for Task {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Error returned when a string names no [`Task`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown task {0:?}; expected one of common_object, common_parts, unique_parts, identify_objects")]
pub struct UnknownTask(pub String);

impl FromStr for Task {
    type Err = UnknownTask;

    /// Parses the snake_case task name (ASCII case-insensitive; `-` is
    /// accepted in place of `_`).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let wanted = s.trim().to_ascii_lowercase().replace('-', "_");
        Task::ALL
            .into_iter()
            .find(|t| t.as_str() == wanted)
            .ok_or_else(|| UnknownTask(s.to_string()))
    }
}

/// Picks one entry of a non-empty static list uniformly at random.
///
/// Returns `""` for an empty list (never the case for this crate's lists).
pub fn choose<R: Rng + ?Sized>(rng: &mut R, list: &'static [&'static str]) -> &'static str {
    if list.is_empty() {
        return "";
    }
    list[rng.random_range(0..list.len())]
}

/// All question phrasings of a task; the first one is canonical.
pub fn questions(task: Task) -> &'static [&'static str] {
    match task {
        Task::CommonObject => questions::COMMON_OBJECT,
        Task::CommonParts => questions::COMMON_PARTS,
        Task::UniqueParts => questions::UNIQUE_PARTS,
        Task::IdentifyObjects => questions::IDENTIFY_OBJECTS,
    }
}

/// A randomly chosen question phrasing for `task`.
pub fn question<R: Rng + ?Sized>(task: Task, rng: &mut R) -> &'static str {
    choose(rng, questions(task))
}

/// The sentence introducing the images, placed before the question.
///
/// ```
/// use calico_text::templates::multi_image_prefix;
/// assert_eq!(
///     multi_image_prefix(2),
///     "The <image> (IMAGE1) and <image> (IMAGE2) provide an overview of the pictures.\n"
/// );
/// assert_eq!(
///     multi_image_prefix(1),
///     "The <image> (IMAGE1) provides an overview of the picture.\n"
/// );
/// ```
///
/// Three or more images are listed with a serial comma. `n_images == 0`
/// gives an empty string.
pub fn multi_image_prefix(n_images: usize) -> String {
    let items: Vec<String> = (1..=n_images)
        .map(|k| format!("{IMAGE} {}", image_tag(k)))
        .collect();
    match n_images {
        0 => String::new(),
        1 => format!(
            "The {} provides an overview of the picture.\n",
            crate::english::write_list(&items)
        ),
        _ => format!(
            "The {} provide an overview of the pictures.\n",
            crate::english::write_list(&items)
        ),
    }
}

/// A full user prompt: [`multi_image_prefix`] followed by a random
/// [`question`] for `task`.
pub fn prompt<R: Rng + ?Sized>(task: Task, n_images: usize, rng: &mut R) -> String {
    let mut out = multi_image_prefix(n_images);
    out.push_str(question(task, rng));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    #[test]
    fn task_names_round_trip() {
        for t in Task::ALL {
            assert_eq!(t.to_string().parse::<Task>().unwrap(), t);
            let json = serde_json::to_string(&t).unwrap();
            assert_eq!(json, format!("\"{}\"", t.as_str()));
            assert_eq!(serde_json::from_str::<Task>(&json).unwrap(), t);
        }
        assert_eq!("Common-Parts".parse::<Task>().unwrap(), Task::CommonParts);
        let err = "parts".parse::<Task>().unwrap_err();
        assert!(err.to_string().contains("\"parts\""));
    }

    #[test]
    fn serde_names_are_snake_case() {
        assert_eq!(
            serde_json::to_string(&Task::CommonObject).unwrap(),
            "\"common_object\""
        );
        assert_eq!(
            serde_json::to_string(&Task::CommonParts).unwrap(),
            "\"common_parts\""
        );
        assert_eq!(
            serde_json::to_string(&Task::UniqueParts).unwrap(),
            "\"unique_parts\""
        );
        assert_eq!(
            serde_json::to_string(&Task::IdentifyObjects).unwrap(),
            "\"identify_objects\""
        );
    }

    #[test]
    fn there_are_enough_distinct_questions() {
        let minimum = [
            (Task::CommonObject, 12),
            (Task::CommonParts, 16),
            (Task::UniqueParts, 16),
            (Task::IdentifyObjects, 8),
        ];
        for (task, n) in minimum {
            let qs = questions(task);
            assert!(qs.len() >= n, "{task}: {} < {n}", qs.len());
            let mut sorted = qs.to_vec();
            sorted.sort();
            sorted.dedup();
            assert_eq!(sorted.len(), qs.len(), "{task} has duplicate questions");
            for q in qs {
                assert!(!q.contains('<') && !q.contains('{'), "{q}");
                assert!(q.ends_with(['.', '?']), "{q}");
            }
        }
    }

    #[test]
    fn canonical_questions_are_present() {
        let has = |t, q| questions(t).contains(&q);
        assert!(has(
            Task::CommonObject,
            "Can you segment the common object in these images?"
        ));
        assert!(has(
            Task::CommonObject,
            "Please segment the common object in these photos."
        ));
        assert!(has(
            Task::CommonObject,
            "What is the common object in these photos? Please respond with segmentation masks."
        ));
        assert!(has(
            Task::CommonParts,
            "Can you segment the common parts of the objects in these images?"
        ));
        assert!(has(
            Task::CommonParts,
            "Please segment the objects' common parts in these photos."
        ));
        assert!(has(
            Task::UniqueParts,
            "Can you segment the unique parts of the objects in these images?"
        ));
        assert!(has(
            Task::IdentifyObjects,
            "Can you identify and segment the objects in these images?"
        ));
    }

    #[test]
    fn questions_are_seeded_and_varied() {
        for task in Task::ALL {
            let a: Vec<_> = {
                let mut rng = ChaCha8Rng::seed_from_u64(7);
                (0..20).map(|_| question(task, &mut rng)).collect()
            };
            let b: Vec<_> = {
                let mut rng = ChaCha8Rng::seed_from_u64(7);
                (0..20).map(|_| question(task, &mut rng)).collect()
            };
            assert_eq!(a, b);
            let mut distinct = a.clone();
            distinct.sort();
            distinct.dedup();
            assert!(distinct.len() > 1);
            assert!(a.iter().all(|q| questions(task).contains(q)));
        }
    }

    #[test]
    fn prefix_generalises_to_n_images() {
        assert_eq!(multi_image_prefix(0), "");
        assert_eq!(
            multi_image_prefix(3),
            "The <image> (IMAGE1), <image> (IMAGE2), and <image> (IMAGE3) provide an overview of the pictures.\n"
        );
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let p = prompt(Task::UniqueParts, 2, &mut rng);
        let (prefix, q) = p.split_once('\n').unwrap();
        assert_eq!(format!("{prefix}\n"), multi_image_prefix(2));
        assert!(questions(Task::UniqueParts).contains(&q));
    }

    #[test]
    fn answer_templates_are_well_formed() {
        const LIST_KEYS: [&str; 3] = ["{a_objects}", "{the_objects}", "{the_parts}"];
        for (name, list) in answers::ALL {
            assert!(!list.is_empty(), "{name}");
            for t in *list {
                let n_list: usize = LIST_KEYS.iter().map(|k| t.matches(k).count()).sum();
                let expected = usize::from(!name.ends_with("_none"));
                assert_eq!(n_list, expected, "{name}: {t}");
                let stripped = LIST_KEYS
                    .iter()
                    .chain(&["{both}"])
                    .fold(t.to_string(), |s, k| s.replace(k, ""));
                assert!(!stripped.contains(['{', '}', '<', '>']), "{name}: {t}");
                assert!(t.ends_with('.'), "{name}: {t}");
                if name.contains("parts") {
                    assert!(!t.contains("objects}"), "{name}: {t}");
                } else {
                    assert!(!t.contains("{the_parts}"), "{name}: {t}");
                }
            }
        }
    }

    #[test]
    fn canonical_answer_templates_are_present() {
        assert!(answers::COMMON_OBJECT_SINGULAR.contains(&"The common object is {the_objects}."));
        assert!(answers::COMMON_OBJECT_SINGULAR.contains(&"The images show {a_objects}."));
        assert!(answers::IDENTIFY_SAME.contains(&"{both} images show {a_objects}."));
        assert!(answers::IDENTIFY_DIFFERENT.contains(&"The images show {a_objects}."));
        assert!(answers::COMMON_PARTS_PLURAL
            .contains(&"The common parts between the objects are {the_parts}."));
        assert!(answers::COMMON_PARTS_PLURAL.contains(&"{both} objects have {the_parts}."));
        assert!(answers::UNIQUE_PARTS_PLURAL
            .contains(&"The unique parts between the objects are {the_parts}."));
        assert!(answers::UNIQUE_PARTS_PLURAL.contains(&"The distinct parts are {the_parts}."));
    }
}
