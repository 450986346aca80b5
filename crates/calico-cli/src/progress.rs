//! Progress bars on standard error (hidden when it is not a terminal).

use indicatif::{ProgressBar, ProgressStyle};
use std::sync::Mutex;

/// A set of per-stage bars driven by `(stage, done, total)` callbacks.
pub struct StageBars {
    current: Mutex<Option<(String, ProgressBar)>>,
}

impl StageBars {
    pub fn new() -> Self {
        StageBars {
            current: Mutex::new(None),
        }
    }

    /// Updates (or starts) the bar of `stage`.
    pub fn update(&self, stage: &str, done: u64, total: u64) {
        let Ok(mut cur) = self.current.lock() else {
            return;
        };
        let same = cur.as_ref().is_some_and(|(s, _)| s == stage);
        if !same {
            if let Some((_, bar)) = cur.take() {
                bar.finish();
            }
            let bar = ProgressBar::new(total);
            bar.set_style(
                ProgressStyle::with_template(
                    "{prefix:>10} [{bar:30}] {pos}/{len} {per_sec} eta {eta}",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
            );
            bar.set_prefix(stage.to_string());
            *cur = Some((stage.to_string(), bar));
        }
        if let Some((_, bar)) = cur.as_ref() {
            bar.set_length(total);
            bar.set_position(done);
        }
    }

    /// Finishes the last bar.
    pub fn finish(&self) {
        if let Ok(mut cur) = self.current.lock() {
            if let Some((_, bar)) = cur.take() {
                bar.finish();
            }
        }
    }
}
