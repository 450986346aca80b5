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
        let mut base = serde_json::to_value(self).map_err(|e| e.to_string())?;
        merge_json(&mut base, over);
        serde_json::from_value(base).map_err(|e| e.to_string())
    }

    /// Optimizer steps of the whole run.
    pub fn total_steps(&self) -> u64 {
        self.epochs * self.steps_per_epoch
    }

    /// Checks the values make a run.
    pub fn validate(&self) -> Result<(), String> {
        let mut bad = Vec::new();
        if self.total_steps() == 0 {
            bad.push("epochs × steps_per_epoch must be at least 1".to_string());
        }
        if self.batch_size == 0 || self.grad_accumulation == 0 {
            bad.push("batch_size and grad_accumulation must be at least 1".into());
        }
        if !(self.optimizer.lr > 0.0 && self.optimizer.lr.is_finite()) {
            bad.push(format!(
                "optimizer.lr must be positive, got {}",
                self.optimizer.lr
            ));
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
}
