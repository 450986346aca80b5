//! One module per `calico` subcommand group.

pub mod answer;
pub mod data;
pub mod demo;
pub mod eval;
pub mod masks;
pub mod model;
pub mod predict;
mod predict_partial;
pub mod report;
pub mod segment;
pub mod serve;
pub mod train;

/// `--device`: where a command's model runs.
#[derive(clap::Args, Clone, Copy, Debug)]
pub struct DeviceArgs {
    /// Where the model runs: cpu, or cuda / cuda:N in a calico built with `--features cuda`
    /// (docs/gpu.md).
    #[arg(long, default_value = "cpu", value_name = "DEVICE")]
    pub device: calico_app::device::DeviceSpec,
}

impl DeviceArgs {
    /// Opens the device; a CUDA device this build or machine lacks is bad
    /// input (exit 2) saying what to do.
    pub fn open(&self) -> anyhow::Result<candle_core::Device> {
        self.device.open().map_err(crate::exit::app)
    }
}

/// The CPU cores this process may use.
pub(crate) fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Whether `cfg`'s model runs faster on single-threaded workers, one per
/// core, than on candle's own threads: small tensors (`tiny`'s, an LLM
/// narrower than 512) do; large ones (`small`'s 576-wide LLM) do not
/// (docs/performance.md).
pub(crate) fn prefers_workers(cfg: &calico_model::config::CalicoConfig) -> bool {
    cfg.llm.hidden_size < 512
}

/// With more than one worker, makes candle's kernels single-threaded
/// (`RAYON_NUM_THREADS=1`, unless the environment sets it): the workers are
/// the parallelism. Call it before any tensor kernel or thread pool runs;
/// candle reads the variable when it starts its pools.
pub(crate) fn single_threaded_kernels_for(workers: usize) {
    if workers > 1 && std::env::var_os("RAYON_NUM_THREADS").is_none() {
        std::env::set_var("RAYON_NUM_THREADS", "1");
    }
}

/// Parses a count that must be at least 1 (`--max-new-tokens`: a model
/// allowed no token would answer nothing, silently; `data synth --images`).
pub(crate) fn at_least_one(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(0) => Err("must be at least 1".into()),
        Ok(n) => Ok(n),
        Err(e) => Err(e.to_string()),
    }
}
