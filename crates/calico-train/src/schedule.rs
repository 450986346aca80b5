//! Learning-rate schedule of the paper's recipe (appendix C.1): linear
//! warm-up followed by linear decay to zero.
//!
//! This is DeepSpeed's `WarmupDecayLR` as LISA/GLaMM configure it
//! (`warmup_min_lr = 0`, `warmup_type = "linear"`, `warmup_max_lr = lr`).

use serde::{Deserialize, Serialize};

/// Linear warm-up from 0 to `base_lr` over `warmup_steps`, then linear decay
/// to 0 at `total_steps`.
///
/// For a step index `s` (`W = warmup_steps`, `T = total_steps`):
///
/// ```text
/// lr(s) = base_lr * s / W                           if s < W
/// lr(s) = base_lr * max(0, (T - s) / max(1, T - W))  otherwise
/// ```
///
/// so `lr(0) = 0`, `lr(W) = base_lr` and `lr(s) = 0` for every `s >= T`.
/// This is DeepSpeed's `WarmupDecayLR` gamma evaluated at
/// `last_batch_iteration = s`, with one deliberate difference: DeepSpeed
/// raises a warm-up of 0 or 1 steps to 2, here `W = 0` means no warm-up.
///
/// The trainer is expected to use `lr_at(k)` for the k-th optimizer update
/// (0-based). With warm-up on, update 0 then runs at lr 0 (it only fills the
/// Adam moments); DeepSpeed instead runs its first update at the optimizer's
/// configured lr because its scheduler is stepped after each update.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LrSchedule {
    /// Peak learning rate reached at the end of warm-up.
    pub base_lr: f64,
    /// Number of warm-up steps (`W`).
    pub warmup_steps: u64,
    /// Step at which the learning rate reaches 0 (`T`).
    pub total_steps: u64,
}

impl LrSchedule {
    /// Learning rate at step `step` (see the type-level formula).
    pub fn lr_at(&self, step: u64) -> f64 {
        let w = self.warmup_steps;
        let t = self.total_steps;
        if step < w {
            return self.base_lr * step as f64 / w as f64;
        }
        let remaining = t.saturating_sub(step) as f64;
        let span = t.saturating_sub(w).max(1) as f64;
        self.base_lr * (remaining / span).max(0.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) {
        assert!((a - b).abs() <= 1e-15 * b.abs(), "{a} vs {b}");
    }

    fn sched() -> LrSchedule {
        LrSchedule {
            base_lr: 4e-4,
            warmup_steps: 100,
            total_steps: 5000,
        }
    }

    #[test]
    fn warmup_boundaries() {
        let s = sched();
        assert_eq!(s.lr_at(0), 0.0);
        close(s.lr_at(1), 4e-6);
        close(s.lr_at(50), 2e-4);
        close(s.lr_at(99), 3.96e-4);
        assert_eq!(s.lr_at(100), 4e-4);
    }

    #[test]
    fn decay_boundaries() {
        let s = sched();
        close(s.lr_at(101), 4e-4 * 4899.0 / 4900.0);
        close(s.lr_at(2550), 2e-4);
        close(s.lr_at(4999), 4e-4 / 4900.0);
        assert_eq!(s.lr_at(5000), 0.0);
        assert_eq!(s.lr_at(5001), 0.0);
        assert_eq!(s.lr_at(u64::MAX), 0.0);
    }

    #[test]
    fn monotone_up_then_down() {
        let s = sched();
        for k in 0..100 {
            assert!(s.lr_at(k + 1) > s.lr_at(k));
        }
        for k in 100..5000 {
            assert!(s.lr_at(k + 1) < s.lr_at(k));
        }
    }

    #[test]
    fn degenerate_configs() {
        let no_warmup = LrSchedule {
            base_lr: 1.0,
            warmup_steps: 0,
            total_steps: 10,
        };
        assert_eq!(no_warmup.lr_at(0), 1.0);
        assert_eq!(no_warmup.lr_at(5), 0.5);
        assert_eq!(no_warmup.lr_at(10), 0.0);
        // Warm-up as long as training: peak at W, then 0 (span clamped to 1).
        let all_warmup = LrSchedule {
            base_lr: 1.0,
            warmup_steps: 10,
            total_steps: 10,
        };
        assert_eq!(all_warmup.lr_at(5), 0.5);
        assert_eq!(all_warmup.lr_at(10), 0.0);
        let empty = LrSchedule {
            base_lr: 1.0,
            warmup_steps: 0,
            total_steps: 0,
        };
        assert_eq!(empty.lr_at(0), 0.0);
    }

    #[test]
    fn serde_round_trip() {
        let s = sched();
        let j = serde_json::to_string(&s).unwrap();
        assert_eq!(serde_json::from_str::<LrSchedule>(&j).unwrap(), s);
    }
}
