//! `calico serve`: the HTTP JSON API and web UI (docs/serve.md).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Result;
use calico_app::model::ModelSource;
use calico_serve::{Engine, ServeConfig, Server};
use clap::Args;

use crate::exit::bad_input;

#[derive(Args)]
#[command(group = clap::ArgGroup::new("model").required(true).args(["weights", "preset"]))]
pub struct ServeArgs {
    /// Weights directory (calico train's model/ or calico model init's output).
    #[arg(long)]
    weights: Option<PathBuf>,
    /// A preset with seeded random weights (untrained; for trying the UI): tiny, tiny-staged, small or paper.
    #[arg(long)]
    preset: Option<String>,
    /// Seed of the random weights of --preset.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Address to listen on (port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:8080")]
    addr: String,
    /// Largest request body, in MiB (413 above).
    #[arg(long, default_value_t = 16)]
    max_body_mb: usize,
    /// Model runs at a time (default: the number of CPU cores for models with an LLM narrower
    /// than 512 such as `tiny`, each run's kernels then single-threaded, which answers faster;
    /// 1 otherwise, on candle's own threads, and 1 on a GPU).
    #[arg(long)]
    workers: Option<usize>,
    /// Requests waiting for a model run (503 when full).
    #[arg(long, default_value_t = 8)]
    queue: usize,
    /// Per-request time limit in seconds (504 beyond).
    #[arg(long, default_value_t = 120.0)]
    timeout_s: f64,
    /// Directory of demo images offered by the web UI.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Longest generated answer, in tokens.
    #[arg(long, default_value_t = 128, value_parser = super::at_least_one)]
    max_new_tokens: usize,
    #[command(flatten)]
    llm: super::LlmArgs,
    #[command(flatten)]
    device: super::DeviceArgs,
}

pub fn run(a: ServeArgs) -> Result<()> {
    if a.workers == Some(0) || a.max_body_mb == 0 {
        return Err(bad_input("--workers and --max-body-mb must be at least 1"));
    }
    let source = a
        .llm
        .source(a.weights.as_deref(), a.preset.as_deref(), a.seed)?;
    let device = a.device.open()?;
    let workers = a
        .workers
        .unwrap_or_else(|| super::predict::default_workers(&source, &device));
    super::single_threaded_kernels_for(workers);
    if !(a.timeout_s > 0.0 && a.timeout_s.is_finite()) {
        return Err(bad_input("--timeout-s must be a positive number"));
    }
    let engine = match &source {
        ModelSource::Weights { dir, quantized_llm } => {
            Engine::from_weights(dir, a.max_new_tokens, &device, *quantized_llm)
        }
        ModelSource::Random { preset, seed } => {
            Engine::random_preset(preset, *seed, a.max_new_tokens, &device)
        }
    }
    .map_err(bad_input)?;
    let cfg = ServeConfig {
        addr: a.addr,
        max_body_bytes: a.max_body_mb * 1024 * 1024,
        workers,
        queue: a.queue,
        timeout: Duration::from_secs_f64(a.timeout_s),
        data_dir: a.data_dir,
        ..ServeConfig::default()
    };
    let server =
        Server::start(cfg, engine.clone()).map_err(|e| bad_input(format!("cannot serve: {e}")))?;
    println!(
        "calico serve: {} ({}) on http://{}/",
        engine.description,
        engine.device(),
        server.addr()
    );
    server.wait();
    Ok(())
}
