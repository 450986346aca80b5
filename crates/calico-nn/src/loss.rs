//! Training losses (§3.5, eq. 10–11): next-token cross-entropy on the answer
//! tokens, and focal + Dice losses on the predicted mask logits.
//!
//! Mask losses follow LISA/GLaMM's reduction: a per-mask value (mean over
//! pixels for focal/BCE, one ratio for Dice) summed over masks and divided by
//! the number of masks.

use candle_core::{Result, Tensor, D};
use serde::{Deserialize, Serialize};

/// Targets with this value are ignored by [`cross_entropy`] (PyTorch's
/// `ignore_index` default).
pub const IGNORE_INDEX: i64 = -100;

/// Mean cross-entropy of `logits` (`N × V`) against `targets` (`N`), skipping
/// positions whose target is [`IGNORE_INDEX`]. Returns 0 when every position
/// is ignored (there is nothing to learn from, not a NaN).
pub fn cross_entropy(logits: &Tensor, targets: &[i64]) -> Result<Tensor> {
    let (n, v) = logits.dims2()?;
    if targets.len() != n {
        candle_core::bail!(
            "cross_entropy: {} targets for {n} rows of logits",
            targets.len()
        );
    }
    let keep: Vec<u32> = (0..n as u32)
        .filter(|&i| targets[i as usize] != IGNORE_INDEX)
        .collect();
    if keep.is_empty() {
        return Tensor::zeros((), logits.dtype(), logits.device());
    }
    let mut labels = Vec::with_capacity(keep.len());
    for &i in &keep {
        let t = targets[i as usize];
        if t < 0 || t as usize >= v {
            candle_core::bail!("cross_entropy: target {t} at position {i} outside 0..{v}");
        }
        labels.push(t as u32);
    }
    let device = logits.device();
    let rows = logits.index_select(&Tensor::new(keep.as_slice(), device)?, 0)?;
    let log_probs = candle_nn::ops::log_softmax(&rows, D::Minus1)?;
    let labels = Tensor::new(labels.as_slice(), device)?.unsqueeze(1)?;
    log_probs.gather(&labels, 1)?.neg()?.mean_all()
}

/// Element-wise binary cross-entropy with logits, computed stably as
/// `max(x, 0) - x t + log(1 + exp(-|x|))`.
pub fn bce_with_logits(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
    let pos = logits.relu()?;
    let soft = (logits.abs()?.neg()?.exp()? + 1.0)?.log()?;
    (pos - (logits * targets)?)? + soft
}

/// Focal-loss settings (Lin et al. 2017). `gamma = 0` with `alpha = None` is
/// plain binary cross-entropy, LISA's `sigmoid_ce_loss`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct FocalConfig {
    pub gamma: f64,
    pub alpha: Option<f64>,
}

impl Default for FocalConfig {
    /// torchvision `sigmoid_focal_loss` defaults: γ 2, α 0.25.
    fn default() -> Self {
        Self {
            gamma: 2.0,
            alpha: Some(0.25),
        }
    }
}

fn masks_2d(x: &Tensor) -> Result<Tensor> {
    let n = x.dim(0)?;
    x.reshape((n, ()))
}

/// Sigmoid focal loss of mask logits `(N, H, W)` against 0/1 targets of the
/// same shape: mean over pixels per mask, summed over masks, divided by N.
pub fn focal_loss(logits: &Tensor, targets: &Tensor, cfg: FocalConfig) -> Result<Tensor> {
    let n = logits.dim(0)?;
    let x = masks_2d(logits)?;
    let t = masks_2d(&targets.to_dtype(logits.dtype())?)?;
    let mut loss = bce_with_logits(&x, &t)?;
    if cfg.gamma != 0.0 {
        let p = crate::ops::sigmoid(&x)?;
        // 1 - p_t = p (1 - t) + (1 - p) t
        let one_minus_pt = ((&p * (1.0 - &t)?)? + ((1.0 - &p)? * &t)?)?;
        loss = (loss * one_minus_pt.powf(cfg.gamma)?)?;
    }
    if let Some(a) = cfg.alpha {
        let alpha_t = ((&t * a)? + ((1.0 - &t)? * (1.0 - a))?)?;
        loss = (loss * alpha_t)?;
    }
    loss.mean(1)?.sum_all()? / (n as f64 + 1e-8)
}

/// LISA's Dice loss on mask logits `(N, H, W)`: `1 - (2 Σ p t + ε) /
/// (Σ p + Σ t + ε)` per mask with the sums divided by `scale` (1000) and
/// ε = 1e-6, summed over masks and divided by N.
pub fn dice_loss(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
    const SCALE: f64 = 1000.0;
    const EPS: f64 = 1e-6;
    let n = logits.dim(0)?;
    let p = (crate::ops::sigmoid(&masks_2d(logits)?)? / SCALE)?;
    let t = masks_2d(&targets.to_dtype(logits.dtype())?)?;
    let numerator = ((&p * &t)?.sum(1)? * 2.0)?;
    let denominator = (p.sum(1)? + (t / SCALE)?.sum(1)?)?;
    let ratio = ((numerator + EPS)? / (denominator + EPS)?)?;
    (1.0 - ratio)?.sum_all()? / (n as f64 + 1e-8)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device, Var};

    fn scalar(t: &Tensor) -> f64 {
        t.to_dtype(DType::F64).unwrap().to_scalar::<f64>().unwrap()
    }

    #[test]
    fn cross_entropy_matches_hand_computation() {
        let logits = Tensor::new(
            &[[1.0f32, 2.0, 3.0], [0.5, 0.5, 0.5], [3.0, 0.0, 0.0]],
            &Device::Cpu,
        )
        .unwrap();
        let ce = scalar(&cross_entropy(&logits, &[2, IGNORE_INDEX, 0]).unwrap());
        let lse0 = (1f64.exp() + 2f64.exp() + 3f64.exp()).ln();
        let lse2 = (3f64.exp() + 2.0).ln();
        let expected = ((lse0 - 3.0) + (lse2 - 3.0)) / 2.0;
        assert!((ce - expected).abs() < 1e-6, "{ce} vs {expected}");
        let all_ignored = cross_entropy(&logits, &[IGNORE_INDEX; 3]).unwrap();
        assert_eq!(scalar(&all_ignored), 0.0);
        assert!(cross_entropy(&logits, &[3, 0, 0]).is_err());
        assert!(cross_entropy(&logits, &[0, 0]).is_err());
    }

    #[test]
    fn focal_without_modulation_is_bce_and_modulation_down_weights_easy_pixels() {
        let logits = Tensor::new(&[[[4.0f32, -4.0], [0.0, 1.0]]], &Device::Cpu).unwrap();
        let targets = Tensor::new(&[[[1.0f32, 0.0], [1.0, 0.0]]], &Device::Cpu).unwrap();
        let bce = scalar(
            &focal_loss(
                &logits,
                &targets,
                FocalConfig {
                    gamma: 0.0,
                    alpha: None,
                },
            )
            .unwrap(),
        );
        let by_hand: f64 = [(4.0f64, 1.0f64), (-4.0, 0.0), (0.0, 1.0), (1.0, 0.0)]
            .iter()
            .map(|&(x, t)| {
                let p = 1.0 / (1.0 + (-x).exp());
                -(t * p.ln() + (1.0 - t) * (1.0 - p).ln())
            })
            .sum::<f64>()
            / 4.0;
        assert!((bce - by_hand).abs() < 1e-6, "{bce} vs {by_hand}");
        let focal = scalar(&focal_loss(&logits, &targets, FocalConfig::default()).unwrap());
        assert!(focal < bce && focal > 0.0, "{focal} vs {bce}");
    }

    #[test]
    fn dice_is_zero_for_a_confident_exact_mask_and_near_one_for_the_complement() {
        let t = Tensor::new(&[[[1.0f32, 0.0], [0.0, 1.0]]], &Device::Cpu).unwrap();
        let good = ((&t * 40.0).unwrap() - 20.0).unwrap();
        let bad = good.neg().unwrap();
        assert!(scalar(&dice_loss(&good, &t).unwrap()) < 1e-3);
        assert!(scalar(&dice_loss(&bad, &t).unwrap()) > 0.99);
    }

    #[test]
    fn mask_losses_are_differentiable() {
        let t = Tensor::new(&[[[1.0f32, 0.0], [0.0, 1.0]]], &Device::Cpu).unwrap();
        let x = Var::new(&[[[0.3f32, 0.1], [-0.2, 0.0]]], &Device::Cpu).unwrap();
        let loss = (focal_loss(x.as_tensor(), &t, FocalConfig::default()).unwrap()
            + dice_loss(x.as_tensor(), &t).unwrap())
        .unwrap();
        let g = loss.backward().unwrap();
        let g: Vec<f32> = g
            .get(x.as_tensor())
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        // Raising a positive pixel's logit lowers the loss; a negative one's raises it.
        assert!(
            g[0] < 0.0 && g[3] < 0.0 && g[1] > 0.0 && g[2] > 0.0,
            "{g:?}"
        );
    }
}
