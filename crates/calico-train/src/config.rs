//! The training configuration (`calico train --config FILE`): every field
//! has a default, the paper's recipe (appendix C.1) unless a preset needs
//! otherwise ([`TrainConfig::for_preset`]).

use serde::{Deserialize, Serialize};

use crate::mask_pretrain::MaskPretrain;
use crate::model::TrainableSet;
use crate::objective::LossConfig;
use crate::optim::AdamWConfig;
use crate::pretrain::VisionPretrain;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrainConfig {
    /// Which tensors are trained.
    pub trainable: TrainableSet,
    /// λ_text, λ_focal, λ_Dice and the focal settings.
    pub loss: LossConfig,
    /// AdamW: lr 4e-4, betas (0.9, 0.95), weight decay 0.
    pub optimizer: AdamWConfig,
    /// Linear warm-up steps, then linear decay to 0 at the last step.
    pub warmup_steps: u64,
    /// Epochs × steps per epoch = optimizer steps (the paper: 10 × 500).
    pub epochs: u64,
    pub steps_per_epoch: u64,
    /// Samples per micro-batch, and micro-batches per optimizer step.
    pub batch_size: usize,
    pub grad_accumulation: usize,
    /// Global gradient-norm clip.
    pub max_grad_norm: f64,
    /// Seed of the initial weights (when not loaded), the data order, the
    /// image swaps and LoRA dropout.
    pub seed: u64,
    /// Reverse a sample's images with probability ½ (the reference's
    /// augmentation).
    pub image_swap: bool,
    /// Save a checkpoint every this many optimizer steps (and at the end).
    pub checkpoint_every: u64,
    /// Checkpoints kept.
    pub keep_last: usize,
    /// Validate every this many steps (0: only at the end); needs `--val`.
    pub validate_every: u64,
    /// Validation samples (spread evenly over the validation file).
    pub val_samples: usize,
    /// Longest generated answer during validation.
    pub max_new_tokens: usize,
    /// Keep the weights of the best validation so far in `RUN/best/`,
    /// judged by this score averaged over the tasks (`None`: only the last
    /// weights, `RUN/model/`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub keep_best: Option<BestMetric>,
    /// End the run early after this many validations in a row without a
    /// new best `keep_best` score (`None`: run every step).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub early_stop_patience: Option<u64>,
    /// Training in stages: each entry keeps the variables whose names start
    /// with one of its prefixes unchanged before its step (empty: one stage).
    pub freeze: Vec<FreezeStage>,
    /// Stage 1 of a from-scratch run: the global encoders learn the
    /// training images' object classes before step 1 (`None`: no stage 1).
    pub vision_pretrain: Option<VisionPretrain>,
    /// Stage 1b: SAM learns the training images' label-prompted masks
    /// after stage 1, before step 1 (`None`: no stage 1b).
    pub mask_pretrain: Option<MaskPretrain>,
}

/// The validation score that chooses `RUN/best/` (`keep_best`): one of
/// Table 5's columns, averaged over the tasks; higher is better.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BestMetric {
    Ap50,
    Miou,
    Recall,
    Ss,
    SIou,
}

impl BestMetric {
    /// The name in configs, `best.json` and messages.
    pub fn name(self) -> &'static str {
        match self {
            BestMetric::Ap50 => "ap50",
            BestMetric::Miou => "miou",
            BestMetric::Recall => "recall",
            BestMetric::Ss => "ss",
            BestMetric::SIou => "s_iou",
        }
    }
}

/// Variables held still: the optimizer does not update a variable whose
/// name starts with one of `prefixes` while the step being taken is at most
/// `until_step`, or during the whole run when `until_step` is left out
/// (their AdamW moments and step counts start when they do).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FreezeStage {
    pub prefixes: Vec<String>,
    #[serde(default)]
    pub until_step: Option<u64>,
}

/// Most optimizer steps a run may have.
pub const MAX_STEPS: u64 = 1_000_000_000;

/// Largest batch size, gradient accumulation or image count per step.
pub const MAX_BATCH: usize = 65_536;

/// `Err` naming `field` when `v` exceeds `max`.
pub(crate) fn check_at_most(field: &str, v: usize, max: usize) -> Result<(), String> {
    if v > max {
        Err(format!("{field} must be at most {max}, got {v}"))
    } else {
        Ok(())
    }
}

fn json_kind(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}

/// AdamW's settings that would make its update meaningless or non-finite.
fn check_adamw(o: &AdamWConfig) -> Vec<String> {
    let mut bad = Vec::new();
    for (field, b) in [("optimizer.beta1", o.beta1), ("optimizer.beta2", o.beta2)] {
        if !(0.0..1.0).contains(&b) {
            bad.push(format!("{field} must be in [0, 1), got {b}"));
        }
    }
    if !(o.eps > 0.0 && (o.eps as f32) > 0.0 && o.eps.is_finite()) {
        bad.push(format!(
            "optimizer.eps must be positive (and not round to 0 in f32), got {}",
            o.eps
        ));
    }
    if !(o.weight_decay >= 0.0 && o.weight_decay * o.lr < 1.0) {
        bad.push(format!(
            "optimizer.weight_decay must be at least 0 with lr × weight_decay below 1, got {}",
            o.weight_decay
        ));
    }
    bad
}

/// Loss weights and focal settings that are not a loss to minimise.
fn check_loss(l: &LossConfig) -> Vec<String> {
    let mut bad = Vec::new();
    for (field, w) in [
        ("loss.text", l.text),
        ("loss.focal", l.focal),
        ("loss.dice", l.dice),
        ("loss.focal_gamma", l.focal_gamma),
    ] {
        if !(w >= 0.0 && w.is_finite()) {
            bad.push(format!("{field} must be a number ≥ 0, got {w}"));
        }
    }
    if l.text + l.focal + l.dice <= 0.0 {
        bad.push("loss.text, loss.focal and loss.dice are all 0: there is nothing to learn".into());
    }
    if let Some(a) = l.focal_alpha.filter(|a| !(0.0..=1.0).contains(a)) {
        bad.push(format!(
            "loss.focal_alpha must be in [0, 1] (or null), got {a}"
        ));
    }
    bad
}

/// `Err` naming `field` unless `lr` is a learning rate the f32 weights can
/// use: positive, and neither rounding to 0 nor overflowing in f32.
pub(crate) fn check_lr(field: &str, lr: f64) -> Result<(), String> {
    let as_f32 = lr as f32;
    if lr > 0.0 && as_f32.is_finite() && as_f32 > 0.0 {
        Ok(())
    } else {
        Err(format!(
            "{field} must be a positive number within f32's range (about 1e-38 to 3e38), got {lr}"
        ))
    }
}

impl TrainConfig {
    /// Whether the variable `name` is held still during optimizer step
    /// `step` (1-based).
    pub fn frozen_at(&self, step: u64, name: &str) -> bool {
        self.freeze.iter().any(|f| {
            f.until_step.is_none_or(|u| step <= u)
                && f.prefixes.iter().any(|p| name.starts_with(p.as_str()))
        })
    }
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            trainable: TrainableSet::Paper,
            loss: LossConfig::default(),
            optimizer: AdamWConfig::default(),
            warmup_steps: 100,
            epochs: 10,
            steps_per_epoch: 500,
            batch_size: 4,
            grad_accumulation: 4,
            max_grad_norm: 1.0,
            seed: 0,
            image_swap: true,
            checkpoint_every: 500,
            keep_last: 3,
            validate_every: 500,
            val_samples: 100,
            max_new_tokens: 320,
            keep_best: None,
            early_stop_patience: None,
            freeze: Vec::new(),
            vision_pretrain: None,
            mask_pretrain: None,
        }
    }
}

impl TrainConfig {
    /// The defaults for a preset. `paper` and `small` use the paper's recipe.
    /// `tiny` has no pretrained encoders or LLM, so it trains everything
    /// from scratch, with a larger learning rate, a short warm-up, plain
    /// sigmoid cross-entropy weighted down and Dice weighted up for the
    /// masks (with 3–6 % foreground pixels, λ_focal 2 / λ_Dice 0.5 settles
    /// on all-background masks), and a schedule that fits about 20 minutes
    /// on two CPU cores (docs/training.md).
    pub fn for_preset(preset: &str) -> Self {
        match preset {
            "tiny" => Self {
                trainable: TrainableSet::All,
                loss: LossConfig {
                    text: 1.0,
                    focal: 0.5,
                    dice: 2.0,
                    focal_gamma: 0.0,
                    focal_alpha: None,
                },
                optimizer: AdamWConfig {
                    lr: 3e-3,
                    ..AdamWConfig::default()
                },
                warmup_steps: 30,
                epochs: 3,
                steps_per_epoch: 200,
                // 8 samples per step as two micro-batches: on two cores
                // they run on two threads at once (`--workers`).
                batch_size: 4,
                grad_accumulation: 2,
                checkpoint_every: 100,
                validate_every: 0,
                val_samples: 30,
                ..Self::default()
            },
            "tiny-staged" => Self::for_preset("tiny")
                .with_overrides(TINY_STAGED)
                .unwrap_or_else(|e| unreachable!("tools/train/tiny-staged.json: {e}")),
            _ => Self::default(),
        }
    }

    /// These settings with the fields of a JSON object replaced (`calico
    /// train --config`): nested objects merge field by field, anything
    /// else (numbers, strings, lists such as `freeze`) replaces the value.
    /// Unknown fields and wrong types are errors.
    pub fn with_overrides(&self, json: &str) -> Result<Self, String> {
        let over: serde_json::Value = serde_json::from_str(json).map_err(|e| e.to_string())?;
        if !over.is_object() {
            return Err(format!(
                "expected a JSON object of settings, e.g. {{\"epochs\": 2}}, got {}",
                json_kind(&over)
            ));
        }
        let mut base = serde_json::to_value(self).map_err(|e| e.to_string())?;
        merge_json(&mut base, over);
        // Errors name the field: `optimizer.lr: invalid type: …`.
        serde_path_to_error::deserialize(base).map_err(|e| {
            let path = e.path().to_string();
            format!("{path}: {}", e.into_inner())
        })
    }

    /// Optimizer steps of the whole run (saturating: [`Self::validate`]
    /// refuses a product that does not fit).
    pub fn total_steps(&self) -> u64 {
        self.epochs.saturating_mul(self.steps_per_epoch)
    }

    /// Settings that make a run, but probably not the one meant: said
    /// before the run starts (`has_val`: whether validation samples are
    /// given).
    pub fn notes(&self, has_val: bool) -> Vec<String> {
        let mut notes = Vec::new();
        let warmup = |field: &str, warmup: u64, steps: u64| {
            (warmup > steps).then(|| {
                format!(
                    "note: {field} ({warmup}) exceeds the {steps} steps it warms up, so the \
                     learning rate peaks at {:.1} % of its setting",
                    100.0 * steps as f64 / warmup as f64
                )
            })
        };
        notes.extend(warmup(
            "warmup_steps",
            self.warmup_steps,
            self.total_steps(),
        ));
        if let Some(v) = &self.vision_pretrain {
            notes.extend(warmup(
                "vision_pretrain.warmup_steps",
                v.warmup_steps,
                v.steps,
            ));
        }
        if let Some(m) = &self.mask_pretrain {
            notes.extend(warmup(
                "mask_pretrain.warmup_steps",
                m.warmup_steps,
                m.steps,
            ));
            if m.val_images > 0 && !has_val {
                notes.push(
                    "note: mask_pretrain.val_images is set but no --val is given: stage 1b \
                     scores no validation images"
                        .into(),
                );
            }
        }
        if self.val_samples > 0 && self.validate_every > 0 && !has_val {
            notes.push(
                "note: validate_every is set but no --val is given: the run does not validate"
                    .into(),
            );
        }
        notes
    }

    /// Checks the values make a run.
    pub fn validate(&self) -> Result<(), String> {
        let mut bad = Vec::new();
        match self.epochs.checked_mul(self.steps_per_epoch) {
            Some(0) => bad.push("epochs × steps_per_epoch must be at least 1".to_string()),
            Some(n) if n > MAX_STEPS => bad.push(format!(
                "epochs × steps_per_epoch must be at most {MAX_STEPS}, got {n}"
            )),
            None => bad.push(format!(
                "epochs × steps_per_epoch must be at most {MAX_STEPS}, got {} × {}",
                self.epochs, self.steps_per_epoch
            )),
            Some(_) => {}
        }
        if self.batch_size == 0 || self.grad_accumulation == 0 {
            bad.push("batch_size and grad_accumulation must be at least 1".into());
        }
        for (field, v) in [
            ("batch_size", self.batch_size),
            ("grad_accumulation", self.grad_accumulation),
        ] {
            if let Err(e) = check_at_most(field, v, MAX_BATCH) {
                bad.push(e);
            }
        }
        if let Err(e) = check_lr("optimizer.lr", self.optimizer.lr) {
            bad.push(e);
        }
        bad.extend(check_adamw(&self.optimizer));
        bad.extend(check_loss(&self.loss));
        if let (Some(m), 0) = (self.keep_best, self.val_samples) {
            bad.push(format!(
                "keep_best \"{}\" chooses by validation, which val_samples 0 turns off",
                m.name()
            ));
        }
        match (self.early_stop_patience, self.keep_best) {
            (Some(0), _) => bad.push("early_stop_patience must be at least 1".into()),
            (Some(_), None) => bad.push(
                "early_stop_patience counts validations without a new best score: set keep_best \
                 to say which score (\"miou\", \"recall\", \"ss\", \"s_iou\" or \"ap50\")"
                    .into(),
            ),
            _ => {}
        }
        if self.val_samples > 0 && self.max_new_tokens == 0 {
            bad.push("max_new_tokens must be at least 1 when val_samples is set".into());
        }
        if self.max_grad_norm.is_nan() || self.max_grad_norm <= 0.0 {
            bad.push(format!(
                "max_grad_norm must be positive, got {}",
                self.max_grad_norm
            ));
        }
        if self.checkpoint_every == 0 {
            bad.push("checkpoint_every must be at least 1".into());
        }
        if self.keep_last == 0 {
            bad.push("keep_last must be at least 1".into());
        }
        if let Some(v) = &self.vision_pretrain {
            if let Err(e) = v.validate() {
                bad.push(e);
            }
        }
        if let Some(m) = &self.mask_pretrain {
            if let Err(e) = m.validate() {
                bad.push(e);
            }
        }
        for (i, f) in self.freeze.iter().enumerate() {
            if f.prefixes.is_empty() || f.prefixes.iter().any(|p| p.is_empty()) {
                bad.push(format!(
                    "freeze[{i}].prefixes must list at least one non-empty name prefix"
                ));
            }
            if f.until_step == Some(0) {
                bad.push(format!(
                    "freeze[{i}].until_step 0 holds nothing (steps count from 1); leave it out \
                     to hold the whole run"
                ));
            }
        }
        if bad.is_empty() {
            Ok(())
        } else {
            Err(bad.join("; "))
        }
    }
}

/// The `tiny-staged` preset's training settings over `tiny`'s: stage 1 (the
/// encoders learn the classes), stage 1b (SAM learns label-prompted masks),
/// then the recipe with the encoders frozen. The file docs/training.md and
/// tools/train/ablations.sh name, so there is one copy.
const TINY_STAGED: &str = include_str!("../../../tools/train/tiny-staged.json");

fn merge_json(base: &mut serde_json::Value, over: serde_json::Value) {
    match (base, over) {
        (serde_json::Value::Object(b), serde_json::Value::Object(o)) => {
            for (k, v) in o {
                match b.get_mut(&k) {
                    Some(slot) => merge_json(slot, v),
                    None => {
                        b.insert(k, v);
                    }
                }
            }
        }
        (slot, v) => *slot = v,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_the_papers_recipe() {
        let c = TrainConfig::default();
        assert_eq!((c.loss.text, c.loss.focal, c.loss.dice), (1.0, 2.0, 0.5));
        assert_eq!(c.optimizer.lr, 4e-4);
        assert_eq!((c.optimizer.beta1, c.optimizer.beta2), (0.9, 0.95));
        assert_eq!(
            (c.warmup_steps, c.epochs, c.steps_per_epoch),
            (100, 10, 500)
        );
        assert_eq!((c.batch_size, c.grad_accumulation), (4, 4));
        assert_eq!(c.max_grad_norm, 1.0);
        assert!(c.validate().is_ok());
        assert!(TrainConfig::for_preset("tiny").validate().is_ok());
    }

    #[test]
    fn tiny_staged_is_tiny_with_the_staged_recipe_over_it() {
        let tiny = TrainConfig::for_preset("tiny");
        let staged = TrainConfig::for_preset("tiny-staged");
        assert!(staged.validate().is_ok());
        // What tools/train/tiny-staged.json sets...
        let vp = staged.vision_pretrain.as_ref().expect("stage 1");
        assert_eq!((vp.steps, vp.batch_size), (3000, 32));
        let mp = staged.mask_pretrain.as_ref().expect("stage 1b");
        assert_eq!((mp.steps, mp.images), (400, 16));
        assert_eq!(
            (staged.epochs, staged.steps_per_epoch, staged.warmup_steps),
            (3, 500, 60)
        );
        assert!(staged.frozen_at(1, "model.vision_tower.embeddings.stem.0.conv.weight"));
        assert!(!staged.frozen_at(1, "model.text_hidden_fcs.0.0.weight"));
        // ...and tiny's own defaults where it is silent.
        assert_eq!(staged.loss, tiny.loss);
        assert_eq!(staged.optimizer, tiny.optimizer);
        assert_eq!(staged.trainable, tiny.trainable);
        assert!(tiny.vision_pretrain.is_none() && tiny.mask_pretrain.is_none());
    }

    #[test]
    fn overrides_merge_objects_and_reject_unknown_fields() {
        let base = TrainConfig::for_preset("tiny");
        let c = base
            .with_overrides(r#"{"optimizer": {"lr": 0.01}, "epochs": 7}"#)
            .unwrap();
        assert_eq!(c.optimizer.lr, 0.01);
        assert_eq!(c.optimizer.beta2, base.optimizer.beta2);
        assert_eq!(c.epochs, 7);
        let e = base.with_overrides(r#"{"epoch": 7}"#).unwrap_err();
        assert!(e.contains("epoch"), "{e}");
        assert!(base.with_overrides("{").is_err());
    }

    #[test]
    fn freeze_stages_hold_their_prefixes_until_their_step() {
        let c: TrainConfig = serde_json::from_str(
            r#"{"freeze": [{"prefixes": ["model.qformer.", "model.query_tokens"], "until_step": 3},
                           {"prefixes": ["model.vision_tower."]}]}"#,
        )
        .unwrap();
        assert!(c.validate().is_ok());
        for step in 1..=3 {
            assert!(c.frozen_at(step, "model.qformer.layernorm.weight"));
            assert!(c.frozen_at(step, "model.query_tokens"));
        }
        assert!(!c.frozen_at(4, "model.qformer.layernorm.weight"));
        // No until_step: the whole run.
        assert!(c.frozen_at(
            1_000_000,
            "model.vision_tower.embeddings.patch_embedding.weight"
        ));
        assert!(!c.frozen_at(1, "model.layers.0.self_attn.q_proj.weight"));
        let bad: TrainConfig =
            serde_json::from_str(r#"{"freeze": [{"prefixes": []}, {"prefixes": [""]}]}"#).unwrap();
        let e = bad.validate().unwrap_err();
        assert!(e.contains("freeze[0]") && e.contains("freeze[1]"), "{e}");
        let bad: TrainConfig =
            serde_json::from_str(r#"{"vision_pretrain": {"steps": 0}}"#).unwrap();
        assert!(bad.validate().unwrap_err().contains("vision_pretrain"));
    }

    #[test]
    fn unknown_fields_and_bad_values_are_rejected() {
        assert!(serde_json::from_str::<TrainConfig>(r#"{"epoch": 3}"#).is_err());
        let c: TrainConfig = serde_json::from_str(r#"{"epochs": 0, "keep_last": 0}"#).unwrap();
        let e = c.validate().unwrap_err();
        assert!(e.contains("epochs") && e.contains("keep_last"), "{e}");
    }

    #[test]
    fn settings_that_are_no_optimisation_are_refused_naming_the_field() {
        let tiny = TrainConfig::for_preset("tiny");
        let refused = |json: &str, field: &str| {
            let e = match tiny.with_overrides(json) {
                Ok(c) => c.validate().unwrap_err(),
                Err(e) => e,
            };
            assert!(e.contains(field), "{json}: {e}");
        };
        for (json, field) in [
            (r#"{"optimizer": {"beta1": 1.5}}"#, "optimizer.beta1"),
            (r#"{"optimizer": {"beta2": 1.0}}"#, "optimizer.beta2"),
            (r#"{"optimizer": {"eps": 0}}"#, "optimizer.eps"),
            (r#"{"optimizer": {"eps": 1e-50}}"#, "optimizer.eps"),
            (
                r#"{"optimizer": {"weight_decay": -1}}"#,
                "optimizer.weight_decay",
            ),
            (r#"{"optimizer": {"lr": 1e39}}"#, "optimizer.lr"),
            (
                r#"{"optimizer": {"learning_rate": 0.1}}"#,
                "optimizer.learning_rate",
            ),
            (r#"{"loss": {"text": -1}}"#, "loss.text"),
            (r#"{"loss": {"text": 0, "focal": 0, "dice": 0}}"#, "all 0"),
            (r#"{"loss": {"focal_alpha": 5}}"#, "loss.focal_alpha"),
            (r#"{"loss": {"focal_gamma": -3}}"#, "loss.focal_gamma"),
            (
                r#"{"epochs": 4294967296, "steps_per_epoch": 4294967296}"#,
                "at most",
            ),
            (
                r#"{"epochs": 9223372036854775809, "steps_per_epoch": 2}"#,
                "at most",
            ),
            (
                r#"{"batch_size": 4294967296}"#,
                "batch_size must be at most",
            ),
            (
                r#"{"vision_pretrain": {"batch_size": 1000000}}"#,
                "vision_pretrain.batch_size",
            ),
            (
                r#"{"mask_pretrain": {"images": 1000000}}"#,
                "mask_pretrain.images",
            ),
            (
                r#"{"freeze": [{"prefixes": ["model."], "until_step": 0}]}"#,
                "until_step 0",
            ),
            (
                r#"{"max_new_tokens": 0, "val_samples": 5}"#,
                "max_new_tokens",
            ),
            (r#"{"keep_best": "ss", "val_samples": 0}"#, "val_samples 0"),
            (r#"{"keep_best": "f1"}"#, "keep_best: unknown variant"),
            (r#"{"early_stop_patience": 2}"#, "set keep_best"),
            (
                r#"{"early_stop_patience": 0, "keep_best": "miou"}"#,
                "early_stop_patience must be at least 1",
            ),
            (r#"{"epochs": "1"}"#, "epochs: invalid type"),
            (
                r#"{"loss": {"focal_alpha": "x"}}"#,
                "loss.focal_alpha: invalid type",
            ),
            ("[]", "expected a JSON object"),
        ] {
            refused(json, field);
        }
        // Unusual but meaningful settings are said, not refused.
        let c = tiny
            .with_overrides(r#"{"warmup_steps": 1000, "epochs": 1, "steps_per_epoch": 2}"#)
            .unwrap();
        c.validate().unwrap();
        let notes = c.notes(true);
        assert!(
            notes.iter().any(|n| n.contains("warmup_steps (1000)")),
            "{notes:?}"
        );
        let c = tiny
            .with_overrides(r#"{"validate_every": 5, "val_samples": 4}"#)
            .unwrap();
        assert!(c.notes(false).iter().any(|n| n.contains("no --val")));
        assert!(c.notes(true).is_empty());
    }
}
