//! Stage 1b of a from-scratch run: SAM learns to segment before it has to
//! follow the LLM.
//!
//! Calico starts from a pretrained SAM: a `[SEG]` only has to find the
//! prompt that makes SAM cut out the right region. `tiny`'s SAM starts from
//! random weights, and measured apart from the LLM (`tools/train/
//! mask_probe.py`, docs/tiny-recipe.md) its mask path learns slowly: with the
//! right label given it reaches 34 % IoU on objects after 1,000 steps and
//! is still improving after 3,000. In stage 2 it learns from prompts that
//! are themselves still being learned.
//!
//! So this stage trains SAM's image encoder, prompt encoder and mask
//! decoder on the training images' own masks, each prompted by its label:
//! a learned table holds one sparse prompt per label (object class or part
//! name), which goes where f_segmentation's output goes in stage 2
//! ([`Calico::decode_prompted_masks`]). The loss is stage 2's mask loss
//! (focal + Dice with the run's weights). The table is thrown away at the
//! end, as stage 1's heads are; stage 2 starts with a SAM that already
//! segments, and f_segmentation learns to address it.
//!
//! Every distinct (image, label, mask) of the samples is a target, mirrored
//! left–right with its image with probability ½. Deterministic: image `k`
//! of the stream is entry `k mod n` of epoch `⌊k/n⌋`'s permutation drawn
//! from the seed, the table's initial values from the seed; a step's
//! images are cut into fixed slices, so any number of workers gives the
//! same run.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;

use calico_data::samples::MaskRole;
use calico_masks::{CocoRle, Mask};
use calico_model::calico::{Calico, ImageInput};
use calico_nn::loss::{dice_loss, focal_loss, FocalConfig};
use candle_core::{DType, Device, Tensor, Var};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::data::{low_res_target, Dataset};
use crate::objective::LossConfig;
use crate::pretrain::StageOptimizer;
use crate::stage_checkpoint::{Stage, StageLoop, StageRun};
use crate::stem::{InferenceOnDrop, Tower};
use crate::trainer::{mix, Observer, Order};
use crate::TrainError;

type Result<T> = std::result::Result<T, TrainError>;

/// The variables this stage trains (name prefix): SAM's image encoder,
/// prompt encoder and mask decoder.
pub const SAM: &str = "model.grounding_encoder.";

/// Images per autograd graph; a step's slices run on the workers.
const SLICE: usize = 8;

/// Stage-1b settings (`mask_pretrain` in the training config).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MaskPretrain {
    /// Optimizer steps.
    pub steps: u64,
    /// Images per step (all their masks are targets).
    pub images: usize,
    /// AdamW peak learning rate (betas (0.9, 0.95), no weight decay).
    pub lr: f64,
    /// Linear warm-up steps, then linear decay to 0.
    pub warmup_steps: u64,
    /// Mirror an image and its masks left–right with probability ½.
    pub flip: bool,
    /// Validation images whose masks are scored at the end (0: none).
    pub val_images: usize,
}

impl Default for MaskPretrain {
    fn default() -> Self {
        Self {
            steps: 600,
            images: 16,
            lr: 3e-3,
            warmup_steps: 30,
            flip: true,
            val_images: 200,
        }
    }
}

impl MaskPretrain {
    pub fn validate(&self) -> std::result::Result<(), String> {
        if self.steps == 0 || self.images == 0 {
            return Err("mask_pretrain.steps and mask_pretrain.images must be at least 1".into());
        }
        crate::config::check_lr("mask_pretrain.lr", self.lr)?;
        crate::config::check_at_most(
            "mask_pretrain.images",
            self.images,
            crate::config::MAX_BATCH,
        )?;
        Ok(())
    }
}

/// One target: a label (index into [`Prompted::labels`]), the role it was
/// first seen with, and the mask.
#[derive(Debug, Clone)]
struct Target {
    label: usize,
    role: MaskRole,
    rle: CocoRle,
}

/// The images of a samples file with their distinct labelled masks.
#[derive(Debug, Clone)]
pub struct Prompted {
    /// Image files as the samples name them, in first-use order (only
    /// images with at least one mask of a known label).
    pub files: Vec<String>,
    /// The labels, sorted.
    pub labels: Vec<String>,
    targets: Vec<Vec<Target>>,
}

impl Prompted {
    /// Every object and part mask of `ds`, by image. `labels`: the label
    /// set to use (masks with other labels are left out); `None` takes the
    /// dataset's own.
    pub fn collect(ds: &Dataset, labels: Option<&[String]>) -> Self {
        let labels: Vec<String> = match labels {
            Some(l) => l.to_vec(),
            None => ds
                .samples
                .iter()
                .flat_map(|s| &s.masks)
                .filter(|m| m.role.is_some())
                .map(|m| m.label.clone())
                .collect::<BTreeSet<_>>()
                .into_iter()
                .collect(),
        };
        let index: HashMap<&str, usize> = labels
            .iter()
            .enumerate()
            .map(|(i, l)| (l.as_str(), i))
            .collect();
        let mut files: Vec<String> = Vec::new();
        let mut file_index: HashMap<String, usize> = HashMap::new();
        let mut targets: Vec<Vec<Target>> = Vec::new();
        let mut seen: HashSet<(usize, usize, &CocoRle)> = HashSet::new();
        for s in &ds.samples {
            for m in &s.masks {
                let (Some(role), Some(&label), Some(img)) =
                    (m.role, index.get(m.label.as_str()), s.images.get(m.image))
                else {
                    continue;
                };
                let fi = *file_index.entry(img.file.clone()).or_insert_with(|| {
                    files.push(img.file.clone());
                    targets.push(Vec::new());
                    files.len() - 1
                });
                if seen.insert((fi, label, &m.rle)) {
                    targets[fi].push(Target {
                        label,
                        role,
                        rle: m.rle.clone(),
                    });
                }
            }
        }
        Self {
            files,
            labels,
            targets,
        }
    }

    /// Masks over all images.
    pub fn masks(&self) -> usize {
        self.targets.iter().map(Vec::len).sum()
    }
}

/// What stage 1b reports.
#[derive(Debug, Clone, Serialize)]
pub struct MaskPretrainSummary {
    pub steps: u64,
    pub images: usize,
    pub labels: usize,
    pub masks: usize,
    /// Means over the last 20 steps: the weighted loss and its parts.
    pub loss: f64,
    pub focal: f64,
    pub dice: f64,
    /// IoU of the thresholded low-resolution masks on the validation
    /// images, per role.
    pub val: Vec<RoleIou>,
    pub elapsed_s: f64,
}

/// Mean IoU of one role's validation masks.
#[derive(Debug, Clone, Serialize)]
pub struct RoleIou {
    pub role: String,
    pub iou: f64,
    pub masks: usize,
}

/// One image of a step: its input and its targets' labels and masks at
/// the decoder's resolution.
struct Item {
    input: Arc<ImageInput>,
    labels: Vec<u32>,
    masks: Tensor,
}

/// Image `i` of `p`, mirrored when `flip`.
fn item(ds: &Dataset, p: &Prompted, i: usize, flip: bool) -> Result<Item> {
    let mut input = ds.image_input(&p.files[i])?;
    if flip {
        input = Arc::new(crate::pretrain::flipped(&input)?);
    }
    let ((lh, lw), view) = ds.mask_geometry()?;
    let mut masks = Vec::with_capacity(p.targets[i].len());
    for t in &p.targets[i] {
        let decoded = t.rle.to_rle().and_then(|r| r.decode()).map_err(|e| {
            TrainError::Data(format!(
                "{}: image {}: mask of `{}`: {e}",
                ds.path().display(),
                p.files[i],
                p.labels[t.label]
            ))
        })?;
        let m = match flip {
            true => {
                let w = decoded.width();
                Mask::from_fn(decoded.height(), w, |y, x| decoded.get(y, w - 1 - x))
            }
            false => decoded,
        };
        masks.push(low_res_target(&m, input.sam_resized, view, (lh, lw))?);
    }
    Ok(Item {
        input,
        labels: p.targets[i].iter().map(|t| t.label as u32).collect(),
        masks: Tensor::stack(&masks, 0)?,
    })
}

/// `(n, lh, lw)` mask logits of a slice's items, in item order.
fn slice_logits(model: &Calico, table: &Tensor, items: &[Item]) -> Result<Tensor> {
    let inputs: Vec<&ImageInput> = items.iter().map(|it| &*it.input).collect();
    let embeddings = model.sam_features(&inputs)?;
    let mut out = Vec::with_capacity(items.len());
    for (k, it) in items.iter().enumerate() {
        let ids = Tensor::new(it.labels.as_slice(), table.device())?;
        let prompts = table.index_select(&ids, 0)?.unsqueeze(1)?;
        let masks = model.decode_prompted_masks(&embeddings.narrow(0, k, 1)?, &prompts)?;
        out.push(masks.squeeze(1)?);
    }
    Ok(Tensor::cat(&out, 0)?)
}

/// One slice's loss (its share of the step's mean over masks), the loss's
/// parts (the same share) and its gradients.
fn slice_gradients(
    model: &Calico,
    table: &Tensor,
    items: &[Item],
    loss_cfg: &LossConfig,
    step_masks: usize,
) -> Result<([f64; 3], candle_core::backprop::GradStore)> {
    let logits = slice_logits(model, table, items)?;
    let targets = Tensor::cat(
        &items.iter().map(|i| i.masks.clone()).collect::<Vec<_>>(),
        0,
    )?;
    let share = logits.dim(0)? as f64 / step_masks as f64;
    let focal = (focal_loss(
        &logits,
        &targets,
        FocalConfig {
            gamma: loss_cfg.focal_gamma,
            alpha: loss_cfg.focal_alpha,
        },
    )? * share)?;
    let dice = (dice_loss(&logits, &targets)? * share)?;
    let loss = ((&focal * loss_cfg.focal)? + (&dice * loss_cfg.dice)?)?;
    let value = |t: &Tensor| -> Result<f64> { Ok(t.to_dtype(DType::F64)?.to_scalar::<f64>()?) };
    let parts = [value(&loss)?, value(&focal)?, value(&dice)?];
    Ok((parts, loss.backward()?))
}

/// Runs stage 1b on `train`'s images, updating SAM's variables among
/// `named` in place; `val` (if any) is only scored. With checkpoints in
/// Refuses a stage 1b that cannot run on `train` with the variables
/// `named` (checked before the run directory is written): no masks with a
/// role, or none of SAM's variables trained.
pub(crate) fn check_can_run(named: &[(String, Var)], train: &Dataset) -> Result<()> {
    let has_role = |s: &calico_data::samples::Sample| {
        s.masks
            .iter()
            .any(|m| m.role.is_some() && m.image < s.images.len())
    };
    if !train.samples.iter().any(has_role) {
        return Err(TrainError::Data(format!(
            "{}: mask_pretrain needs masks with a role (object, common_part, unique_part); found none",
            train.path().display()
        )));
    }
    if !named.iter().any(|(n, _)| n.starts_with(SAM)) {
        return Err(TrainError::Config(
            "mask_pretrain: the run trains none of SAM's variables (model.grounding_encoder.*)"
                .into(),
        ));
    }
    Ok(())
}

/// `run`, it saves its progress and continues a resumed stage.
pub fn pretrain_masks(
    model: &Calico,
    named: &[(String, Var)],
    (train, val): (&Dataset, Option<&Dataset>),
    (cfg, loss_cfg): (&MaskPretrain, &LossConfig),
    run: StageRun,
    obs: &mut dyn Observer,
) -> Result<MaskPretrainSummary> {
    let StageRun {
        seed,
        workers,
        checkpoints,
    } = run;
    cfg.validate().map_err(TrainError::Config)?;
    check_can_run(named, train)?;
    let t0 = std::time::Instant::now();
    let p = Prompted::collect(train, None);
    let dim = model.config().sam_prompt_encoder.embed_dim;
    let dev = Device::Cpu;
    // Unit-variance initial prompts, as an embedding table's.
    let mut rng = ChaCha8Rng::seed_from_u64(mix(&[seed, 10]));
    let bound = 3f32.sqrt();
    let init: Vec<f32> = (0..p.labels.len() * dim)
        .map(|_| rng.random_range(-bound..bound))
        .collect();
    let table = Var::from_tensor(&Tensor::from_vec(init, (p.labels.len(), dim), &dev)?)?;
    let mut vars: Vec<(String, Var)> = named
        .iter()
        .filter(|(n, _)| n.starts_with(SAM))
        .cloned()
        .collect();
    vars.push(("mask_pretrain.labels".into(), table.clone()));
    let mut opt = StageOptimizer::new(vars, cfg.lr, cfg.warmup_steps, cfg.steps)?;
    obs.message(&format!(
        "stage 1b: training SAM on {} label-prompted masks ({} labels) of {} images ({} steps of {} images)",
        p.masks(),
        p.labels.len(),
        p.files.len(),
        cfg.steps,
        cfg.images
    ));
    let stem = model.sam_stem();
    let _inference_after = InferenceOnDrop(stem);
    if let Some(s) = stem {
        s.set_batch_statistics(true);
    }
    let mut order = Order::tagged(seed, p.files.len(), (11, 12));
    let (stage, mut recent) = StageLoop::start::<Vec<[f64; 3]>>(
        (Stage::Masks, cfg.steps),
        (seed, t0),
        checkpoints,
        &mut opt,
    )?;
    for step in stage.steps() {
        // (image, mirrored) of the step; each worker reads its slice's
        // images and masks itself, so neither core waits for the other to
        // decode them.
        let picks: Vec<(usize, bool)> = (step * cfg.images as u64..(step + 1) * cfg.images as u64)
            .map(|k| {
                let (i, coin) = order.at(k);
                (i, cfg.flip && coin)
            })
            .collect();
        let step_masks: usize = picks.iter().map(|&(i, _)| p.targets[i].len()).sum();
        let ranges: Vec<std::ops::Range<usize>> = (0..picks.len())
            .step_by(SLICE)
            .map(|a| a..(a + SLICE).min(picks.len()))
            .collect();
        let outcomes = crate::workers::map_ordered(
            ranges.len(),
            workers,
            |c| {
                let items = picks[ranges[c].clone()]
                    .iter()
                    .map(|&(i, flip)| item(train, &p, i, flip))
                    .collect::<Result<Vec<_>>>()?;
                slice_gradients(model, table.as_tensor(), &items, loss_cfg, step_masks)
            },
            |c| format!("slice {c} of stage-1b step {}", step + 1),
        )?;
        let mut sums = [0.0; 3];
        let mut grads = Vec::with_capacity(outcomes.len());
        for (parts, g) in outcomes {
            for (s, v) in sums.iter_mut().zip(parts) {
                *s += v;
            }
            grads.push(g);
        }
        opt.step(
            step,
            &[
                ("focal loss", sums[1]),
                ("Dice loss", sums[2]),
                ("loss", sums[0]),
            ],
            &grads,
            "stage 1b (mask pretraining)",
        )?;
        recent.push(sums);
        if recent.len() > 20 {
            recent.remove(0);
        }
        let m = mean(&recent);
        let text = format!("loss {:.4} (focal {:.4}, dice {:.4})", m[0], m[1], m[2]);
        stage.after_step((step + 1, text), &opt, &recent, obs)?;
    }
    crate::stem::calibrate(Tower::Sam, model, named, train, &p.files, obs)?;
    let val = match (val, cfg.val_images) {
        (Some(v), n) if n > 0 => {
            let scored = score(model, table.as_tensor(), v, &p.labels, n)?;
            let parts: Vec<String> = scored
                .iter()
                .map(|r| format!("{} {:.1} % ({} masks)", r.role, 100.0 * r.iou, r.masks))
                .collect();
            obs.message(&format!(
                "stage 1b: mask IoU on validation images: {}",
                parts.join(", ")
            ));
            scored
        }
        _ => Vec::new(),
    };
    let m = mean(&recent);
    Ok(MaskPretrainSummary {
        steps: cfg.steps,
        images: p.files.len(),
        labels: p.labels.len(),
        masks: p.masks(),
        loss: m[0],
        focal: m[1],
        dice: m[2],
        val,
        elapsed_s: stage.elapsed(),
    })
}

fn mean(recent: &[[f64; 3]]) -> [f64; 3] {
    let k = recent.len().max(1) as f64;
    let mut m = [0.0; 3];
    for r in recent {
        for (a, v) in m.iter_mut().zip(r) {
            *a += v / k;
        }
    }
    m
}

/// Mean IoU per role of the first `n` images of `ds` with masks of known
/// labels, each mask prompted by its label, at the decoder's resolution
/// (logit > 0 against the target).
pub fn score(
    model: &Calico,
    table: &Tensor,
    ds: &Dataset,
    labels: &[String],
    n: usize,
) -> Result<Vec<RoleIou>> {
    let p = Prompted::collect(ds, Some(labels));
    let roles = [
        (MaskRole::Object, "objects"),
        (MaskRole::CommonPart, "common parts"),
        (MaskRole::UniquePart, "unique parts"),
    ];
    let mut sums = [(0.0f64, 0usize); 3];
    let take = n.min(p.files.len());
    for chunk in (0..take).collect::<Vec<_>>().chunks(SLICE) {
        let items: Vec<Item> = chunk
            .iter()
            .map(|&i| item(ds, &p, i, false))
            .collect::<Result<_>>()?;
        let logits = slice_logits(model, table, &items)?.detach();
        let predicted: Vec<Vec<Vec<f32>>> = logits.to_vec3()?;
        let mut k = 0;
        for (it, &i) in items.iter().zip(chunk) {
            let targets: Vec<Vec<Vec<f32>>> = it.masks.to_vec3()?;
            for (t, target) in p.targets[i].iter().zip(&targets) {
                let (mut inter, mut union) = (0usize, 0usize);
                for (prow, trow) in predicted[k].iter().zip(target) {
                    for (&pv, &tv) in prow.iter().zip(trow) {
                        let (a, b) = (pv > 0.0, tv > 0.5);
                        inter += usize::from(a && b);
                        union += usize::from(a || b);
                    }
                }
                let iou = if union == 0 {
                    1.0
                } else {
                    inter as f64 / union as f64
                };
                let r = roles
                    .iter()
                    .position(|(role, _)| *role == t.role)
                    .unwrap_or(0);
                sums[r].0 += iou;
                sums[r].1 += 1;
                k += 1;
            }
        }
    }
    Ok(roles
        .iter()
        .zip(sums)
        .filter(|(_, (_, m))| *m > 0)
        .map(|((_, name), (s, m))| RoleIou {
            role: name.to_string(),
            iou: s / m as f64,
            masks: m,
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_are_checked() {
        assert!(MaskPretrain::default().validate().is_ok());
        let zero = MaskPretrain {
            images: 0,
            ..MaskPretrain::default()
        };
        assert!(zero
            .validate()
            .unwrap_err()
            .contains("mask_pretrain.images"));
        let lr = MaskPretrain {
            lr: f64::NAN,
            ..MaskPretrain::default()
        };
        assert!(lr.validate().unwrap_err().contains("mask_pretrain.lr"));
    }

    #[test]
    fn the_mean_covers_every_part() {
        assert_eq!(mean(&[[1.0, 2.0, 3.0], [3.0, 4.0, 5.0]]), [2.0, 3.0, 4.0]);
        assert_eq!(mean(&[]), [0.0; 3]);
    }
}
