//! Forward time of one block, replayed from a parity-format case file.
//!
//! `cargo bench -p calico-model --bench vision -- CASE.safetensors [--repeats R]`
//!
//! Reads the case (docs/parity.md), builds its component from the case's
//! weights and runs it on the case's inputs: one warm-up run, then R timed
//! runs (default 3). Each timed run builds the block from the in-memory
//! weights (shared tensor handles, no copies) and runs the forward pass, so
//! the time is an upper bound on the forward alone. Prints one JSON line:
//! `{"component", "best_s", "mean_s", "max_rel_error", "threads"}`, the
//! error measured against the case's reference outputs.
//! `tools/bench/vision_bench.py` writes ViT-B-class cases and runs this
//! beside PyTorch.

use std::path::PathBuf;
use std::time::Instant;

use calico_model::parity::{self, Case};
use candle_core::Device;

fn main() {
    let mut case_path = None;
    let mut repeats = 3usize;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--bench" => {}
            "--repeats" => {
                repeats = args
                    .next()
                    .and_then(|v| v.parse().ok())
                    .filter(|&r| r > 0)
                    .unwrap_or_else(|| fail("--repeats needs a positive integer"))
            }
            other if other.starts_with("--") => fail(&format!("unknown option {other}")),
            other => case_path = Some(PathBuf::from(other)),
        }
    }
    let path = case_path.unwrap_or_else(|| fail("usage: vision CASE.safetensors [--repeats R]"));
    let case = Case::read(&path).unwrap_or_else(|e| fail(&e.to_string()));
    let device = Device::Cpu;

    // Warm-up (allocator, thread pool) and the error against the reference.
    let (outputs, _) = parity::run(&case, &device).unwrap_or_else(|e| fail(&e.to_string()));
    let mut max_err = 0f64;
    for (name, reference) in &case.outputs {
        let ours = outputs
            .get(name)
            .unwrap_or_else(|| fail(&format!("no output {name}")));
        max_err = max_err.max(parity::relative_error(ours, reference).unwrap_or(f64::INFINITY));
    }

    let mut times = Vec::with_capacity(repeats);
    for _ in 0..repeats {
        let t = Instant::now();
        let out = parity::run(&case, &device).unwrap_or_else(|e| fail(&e.to_string()));
        // Make sure lazy work (if any) is finished before stopping the clock.
        for t in out.0.values() {
            let _ = t.flatten_all().and_then(|f| f.get(0));
        }
        times.push(t.elapsed().as_secs_f64());
    }
    let best = times.iter().cloned().fold(f64::INFINITY, f64::min);
    let mean = times.iter().sum::<f64>() / times.len() as f64;
    println!(
        "{{\"component\":\"{}\",\"best_s\":{best:.6},\"mean_s\":{mean:.6},\"max_rel_error\":{max_err:.3e},\"threads\":{}}}",
        case.component,
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
    );
}

fn fail(msg: &str) -> ! {
    eprintln!("vision bench: {msg}");
    std::process::exit(2)
}
