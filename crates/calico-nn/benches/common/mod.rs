//! Timing helpers shared by calico-nn's benches.

use std::time::Instant;

use candle_core::{Device, Result, Tensor};

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

/// A cheap deterministic fill over (−1, 1) of dims `dims`; the values only
/// need to differ.
#[allow(dead_code)] // Each bench compiles this module; not all use it.
pub fn uniform(dims: &[usize], seed: u64) -> Result<Tensor> {
    let n: usize = dims.iter().product();
    let v: Vec<f32> = (0..n)
        .map(|i| (((i as u64 * 2_654_435_761 + seed * 97) % 1000) as f32) / 500.0 - 1.0)
        .collect();
    Tensor::from_vec(v, dims, &Device::Cpu)
}

/// The heading of a forward + backward table: candle's column and ours.
#[allow(dead_code)] // Each bench compiles this module; not all use it.
pub fn print_header(repeats: usize, candle: &str, ours: &str) {
    println!("forward + backward, best of {repeats}, milliseconds");
    println!();
    println!("| case | {candle} | {ours} | speed-up | bit-identical |");
    println!("|---|---:|---:|---:|:---:|");
}

/// One row of that table.
#[allow(dead_code)] // Each bench compiles this module; not all use it.
pub fn print_row(what: &str, candle_ms: f64, ours_ms: f64, same: bool) {
    println!(
        "| {what} | {candle_ms:.2} | {ours_ms:.2} | {:.1}× | {} |",
        candle_ms / ours_ms,
        if same { "yes" } else { "**no**" }
    );
}
