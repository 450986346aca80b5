//! Turning a planned pair into a sample: question, grounded answer (from
//! calico-text) and the masks in `[SEG]` order.

use super::index::{IndexedImage, Names};
use super::plan::{intersect, Plan, TaskKind};
use crate::error::{DataError, Result};
use crate::samples::{MaskRole, Sample, SampleImage, SampleMask};
use calico_masks::{CocoCounts, CocoRle};
use calico_text::{compose, templates};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

/// What the builder knows about one image of a split.
pub struct SplitImage<'a> {
    /// Index entry.
    pub indexed: &'a IndexedImage,
    /// Path written to samples.
    pub file: &'a str,
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
}

fn rle(img: &SplitImage, counts: &str) -> CocoRle {
    CocoRle {
        size: [img.height, img.width],
        counts: CocoCounts::Compressed(counts.to_string()),
    }
}

/// Composes the sample for `plan`; `id` and `source` go into the sample.
pub fn compose_sample(
    plan: &Plan,
    images: &[SplitImage],
    names: &Names,
    id: String,
    source: &str,
    split: &str,
) -> Result<Sample> {
    let mut rng = ChaCha8Rng::seed_from_u64(plan.seed);
    let pair = [&images[plan.a.0 as usize], &images[plan.b.0 as usize]];
    let cats = [plan.a.1, plan.b.1];
    let entry = |k: usize| {
        pair[k].indexed.category(cats[k]).ok_or_else(|| {
            DataError::Config(format!(
                "internal: category missing on image {}",
                pair[k].file
            ))
        })
    };
    let question = templates::question(plan.task.text_task(), &mut rng).to_string();
    let objects = [names.name(cats[0]), names.name(cats[1])];
    // (label, image) → mask, looked up in [SEG] order below.
    let (answer, roles) = match plan.task {
        TaskKind::CommonObject => {
            let ids_b: Vec<u32> = pair[1]
                .indexed
                .categories
                .iter()
                .map(|c| c.category)
                .collect();
            let shared = intersect(
                pair[0].indexed.categories.iter().map(|c| c.category),
                &ids_b,
            );
            let labels: Vec<&str> = shared.iter().map(|&c| names.name(c)).collect();
            let answer = compose::common_object(&labels, 2, &mut rng)
                .map_err(|e| DataError::Config(format!("composing {id}: {e}")))?;
            let n = answer.masks.len();
            (answer, vec![MaskRole::Object; n])
        }
        TaskKind::CommonParts | TaskKind::UniqueParts => {
            let (ea, eb) = (entry(0)?, entry(1)?);
            let pb: Vec<u32> = eb.part_ids().collect();
            let pa: Vec<u32> = ea.part_ids().collect();
            let answer = if plan.task == TaskKind::CommonParts {
                let common: Vec<&str> = intersect(ea.part_ids(), &pb)
                    .into_iter()
                    .map(|p| names.name(p))
                    .collect();
                compose::common_parts(&objects, &common, &mut rng)
            } else {
                let mut unique: Vec<(&str, Vec<usize>)> = Vec::new();
                for p in ea.part_ids().filter(|p| pb.binary_search(p).is_err()) {
                    unique.push((names.name(p), vec![0]));
                }
                for p in eb.part_ids().filter(|p| pa.binary_search(p).is_err()) {
                    unique.push((names.name(p), vec![1]));
                }
                compose::unique_parts(&objects, &unique, &mut rng)
            }
            .map_err(|e| DataError::Config(format!("composing {id}: {e}")))?;
            // The identification sentence names one object per image first.
            let n = answer.masks.len();
            let roles = (0..n)
                .map(|k| {
                    if k < 2 {
                        MaskRole::Object
                    } else {
                        plan.task.part_role()
                    }
                })
                .collect();
            (answer, roles)
        }
    };
    let mut masks = Vec::with_capacity(answer.masks.len());
    for (m, role) in answer.masks.iter().zip(roles) {
        let img = pair[m.image];
        let counts = match role {
            MaskRole::Object => names
                .get(&m.label)
                .and_then(|c| img.indexed.category(c))
                .map(|e| e.object_rle.as_str()),
            _ => names
                .get(&m.label)
                .and_then(|p| entry(m.image).ok()?.part(p)),
        };
        let counts = counts.ok_or_else(|| {
            DataError::Config(format!(
                "internal: no {} mask {:?} on image {} of {id}",
                role.as_str(),
                m.label,
                img.file
            ))
        })?;
        masks.push(SampleMask {
            image: m.image,
            label: m.label.clone(),
            role: Some(role),
            rle: rle(img, counts),
        });
    }
    Ok(Sample {
        id,
        task: plan.task.as_str().to_string(),
        source: source.to_string(),
        split: Some(split.to_string()),
        images: pair
            .iter()
            .map(|img| SampleImage {
                file: img.file.to_string(),
                width: img.width,
                height: img.height,
            })
            .collect(),
        question,
        answer: answer.text,
        masks,
    })
}
