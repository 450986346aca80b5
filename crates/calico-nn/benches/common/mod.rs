//! Timing helpers shared by calico-nn's benches.

use std::time::Instant;

use candle_core::Result;

/// The best of `repeats` timed runs of `f` in milliseconds, after one
/// untimed warm-up run.
pub fn best(repeats: usize, mut f: impl FnMut() -> Result<()>) -> Result<f64> {
    f()?;
    let mut best = f64::INFINITY;
    for _ in 0..repeats {
        let t = Instant::now();
        f()?;
        best = best.min(t.elapsed().as_secs_f64() * 1e3);
    }
    Ok(best)
}

/// `--repeats R` from the command line (default 5, at least 1).
pub fn repeats() -> usize {
    let mut repeats = 5usize;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        if a == "--repeats" {
            repeats = args.next().and_then(|v| v.parse().ok()).unwrap_or(5).max(1);
        }
    }
    repeats
}
