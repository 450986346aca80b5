//! Choosing image pairs for the three tasks (appendix A.1 of the paper):
//!
//! * **common object** — two images that both show a category; the answer
//!   names every category the two images share;
//! * **common parts** — an object on each image whose classes are comparable
//!   (the same class, or a listed comparable pair) and share ≥ 1 visible part;
//! * **unique parts** — comparable objects where ≥ 1 visible part is present
//!   on one object only.
//!
//! Every image of the split is an anchor: for each object category on it we
//! draw up to `per_object` partners from the same source and split, so
//! categories appear in proportion to the source's distribution.

use super::index::IndexedImage;
use crate::samples::MaskRole;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::collections::{BTreeMap, HashSet};

/// The three co-segmentation tasks of MixedParts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum TaskKind {
    /// Segment the common object.
    CommonObject,
    /// Segment the common parts.
    CommonParts,
    /// Segment the unique parts.
    UniqueParts,
}

impl TaskKind {
    /// All tasks, in output order.
    pub const ALL: [TaskKind; 3] = [
        TaskKind::CommonObject,
        TaskKind::CommonParts,
        TaskKind::UniqueParts,
    ];

    /// The name written to samples.
    pub fn as_str(self) -> &'static str {
        match self {
            TaskKind::CommonObject => "common_object",
            TaskKind::CommonParts => "common_parts",
            TaskKind::UniqueParts => "unique_parts",
        }
    }

    /// The matching question kind of the text crate.
    pub fn text_task(self) -> calico_text::Task {
        match self {
            TaskKind::CommonObject => calico_text::Task::CommonObject,
            TaskKind::CommonParts => calico_text::Task::CommonParts,
            TaskKind::UniqueParts => calico_text::Task::UniqueParts,
        }
    }

    /// Role of the part masks of this task.
    pub fn part_role(self) -> MaskRole {
        match self {
            TaskKind::UniqueParts => MaskRole::UniquePart,
            _ => MaskRole::CommonPart,
        }
    }
}

/// One chosen pair, before composition: indices into the split's images.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Plan {
    /// Task.
    pub task: TaskKind,
    /// First image (position in the split's image list) and its object category.
    pub a: (u32, u32),
    /// Second image and its object category.
    pub b: (u32, u32),
    /// Seed for this sample's template choices.
    pub seed: u64,
}

/// Sorted intersection of two sorted id lists.
pub fn intersect(a: impl Iterator<Item = u32>, b: &[u32]) -> Vec<u32> {
    a.filter(|x| b.binary_search(x).is_ok()).collect()
}

/// Plans the samples of one task over the images of one source split.
///
/// `comparable[c]` lists the categories comparable with `c` (including `c`).
pub fn plan_task(
    task: TaskKind,
    images: &[&IndexedImage],
    comparable: &BTreeMap<u32, Vec<u32>>,
    per_object: usize,
    seed: u64,
) -> Vec<Plan> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    // Images showing each category.
    let mut by_cat: BTreeMap<u32, Vec<u32>> = BTreeMap::new();
    for (k, img) in images.iter().enumerate() {
        for c in &img.categories {
            by_cat.entry(c.category).or_default().push(k as u32);
        }
    }
    let mut seen: HashSet<(u32, u32, u32, u32)> = HashSet::new();
    let mut plans = Vec::new();
    for (i, img) in images.iter().enumerate() {
        let i = i as u32;
        for entry in &img.categories {
            let cat_a = entry.category;
            let partner_cats: Vec<u32> = match task {
                TaskKind::CommonObject => vec![cat_a],
                _ => comparable
                    .get(&cat_a)
                    .map(|v| {
                        v.iter()
                            .copied()
                            .filter(|c| by_cat.contains_key(c))
                            .collect()
                    })
                    .unwrap_or_else(|| vec![cat_a]),
            };
            if partner_cats.is_empty() {
                continue;
            }
            let mut made = 0;
            // A bounded number of draws: rare categories simply get fewer samples.
            for _ in 0..per_object * 4 {
                if made == per_object {
                    break;
                }
                let cat_b = partner_cats[rng.random_range(0..partner_cats.len())];
                let pool = &by_cat[&cat_b];
                let j = pool[rng.random_range(0..pool.len())];
                if j == i {
                    continue;
                }
                let Some(other) = images[j as usize].category(cat_b) else {
                    continue;
                };
                let parts_b: Vec<u32> = other.part_ids().collect();
                let ok = match task {
                    TaskKind::CommonObject => true,
                    TaskKind::CommonParts => !intersect(entry.part_ids(), &parts_b).is_empty(),
                    TaskKind::UniqueParts => {
                        let shared = intersect(entry.part_ids(), &parts_b).len();
                        shared < entry.parts.len() || shared < parts_b.len()
                    }
                };
                if !ok {
                    continue;
                }
                // One sample per unordered pair (per category pair for part tasks).
                let key = match task {
                    TaskKind::CommonObject => (i.min(j), i.max(j), 0, 0),
                    _ if (i, cat_a) <= (j, cat_b) => (i, cat_a, j, cat_b),
                    _ => (j, cat_b, i, cat_a),
                };
                if !seen.insert(key) {
                    continue;
                }
                made += 1;
                let (a, b) = if rng.random_bool(0.5) {
                    ((j, cat_b), (i, cat_a))
                } else {
                    ((i, cat_a), (j, cat_b))
                };
                plans.push(Plan {
                    task,
                    a,
                    b,
                    seed: rng.random(),
                });
            }
        }
    }
    plans
}
