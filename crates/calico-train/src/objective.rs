//! The training objective (eq. 10–11): λ_text · CE(answer tokens) +
//! λ_focal · focal(masks) + λ_Dice · Dice(masks).
//!
//! * Text: next-token cross-entropy over every answer token of the batch
//!   (logits at position t predict the token at t + 1), mean over tokens.
//! * Masks: every routed `[SEG]` of the batch against its target at the
//!   decoder's resolution; per-mask means summed and divided by the number
//!   of masks (LISA/GLaMM's reduction). A batch without masks adds 0.

use calico_model::calico::{Calico, TrainBatch};
use calico_model::prompt::TextEncoder;
use calico_nn::loss::{cross_entropy, dice_loss, focal_loss, FocalConfig, IGNORE_INDEX};
use candle_core::Tensor;
use rand::RngCore;
use serde::{Deserialize, Serialize};

use crate::data::Example;

/// Loss weights and the mask loss's focal settings (appendix C.1).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LossConfig {
    pub text: f64,
    pub focal: f64,
    pub dice: f64,
    /// γ = 2, α = 0.25 (torchvision's focal loss); γ = 0 without α is
    /// GLaMM's plain sigmoid cross-entropy.
    pub focal_gamma: f64,
    pub focal_alpha: Option<f64>,
}

impl Default for LossConfig {
    fn default() -> Self {
        Self {
            text: 1.0,
            focal: 2.0,
            dice: 0.5,
            focal_gamma: 2.0,
            focal_alpha: Some(0.25),
        }
    }
}

/// The loss of one batch and its parts (the parts unweighted).
#[derive(Debug, Clone)]
pub struct Loss {
    pub total: Tensor,
    pub text: f64,
    pub focal: f64,
    pub dice: f64,
    pub masks: usize,
    pub tokens: usize,
}

fn scalar(t: &Tensor) -> candle_core::Result<f64> {
    t.to_dtype(candle_core::DType::F64)?.to_scalar::<f64>()
}

/// Runs the model on `examples` and returns the weighted loss.
pub fn batch_loss(
    model: &Calico,
    examples: &[Example],
    tok: &dyn TextEncoder,
    cfg: &LossConfig,
    rng: Option<&mut dyn RngCore>,
) -> candle_core::Result<Loss> {
    let batch = TrainBatch {
        layouts: examples.iter().map(|e| e.layout.clone()).collect(),
        images: examples.iter().map(|e| e.images.clone()).collect(),
    };
    let out = model.forward(&batch, tok, rng)?;
    // Text: shift by one inside each row.
    let mut rows = Vec::new();
    let mut targets = Vec::new();
    for (b, e) in examples.iter().enumerate() {
        let t = e.layout.labels.len();
        if t < 2 {
            continue;
        }
        rows.push(out.logits.get(b)?.narrow(0, 0, t - 1)?);
        targets.extend_from_slice(&e.layout.labels[1..]);
    }
    let tokens = targets.iter().filter(|&&t| t != IGNORE_INDEX).count();
    let logits = Tensor::cat(&rows, 0)?;
    let text = cross_entropy(&logits.to_dtype(candle_core::DType::F32)?, &targets)?;
    // Masks.
    let mut preds = Vec::new();
    let mut gts = Vec::new();
    for (b, e) in examples.iter().enumerate() {
        let routed = &out.mask_logits[b];
        if routed.len() != e.targets.len() {
            candle_core::bail!(
                "sample {}: {} routed [SEG] but {} mask targets",
                e.id,
                routed.len(),
                e.targets.len()
            );
        }
        for (p, g) in routed.iter().zip(&e.targets) {
            if p.dims()[1..] != *g.dims() {
                candle_core::bail!(
                    "sample {}: mask logits {:?} but target {:?}",
                    e.id,
                    p.dims(),
                    g.dims()
                );
            }
            preds.push(p.squeeze(0)?);
            gts.push(g.clone());
        }
    }
    let mut total = (text.clone() * cfg.text)?;
    let (mut focal_v, mut dice_v) = (0.0, 0.0);
    if !preds.is_empty() {
        let p = Tensor::stack(&preds, 0)?;
        let g = Tensor::stack(&gts, 0)?.to_device(p.device())?;
        let focal = focal_loss(
            &p,
            &g,
            FocalConfig {
                gamma: cfg.focal_gamma,
                alpha: cfg.focal_alpha,
            },
        )?;
        let dice = dice_loss(&p, &g)?;
        focal_v = scalar(&focal)?;
        dice_v = scalar(&dice)?;
        total = ((total + (focal * cfg.focal)?)? + (dice * cfg.dice)?)?;
    }
    Ok(Loss {
        text: scalar(&text)?,
        focal: focal_v,
        dice: dice_v,
        masks: preds.len(),
        tokens,
        total,
    })
}
