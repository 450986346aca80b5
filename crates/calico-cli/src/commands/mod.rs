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

/// `--quantized-llm`: how a weights directory's GGUF LLM is held.
#[derive(clap::Args, Clone, Copy, Debug)]
pub struct LlmArgs {
    /// With --weights whose LLM is a GGUF file: keep its projections, token embedding and
    /// output head in the file's quantized blocks (Q4_K, Q8_0, …), for a fraction of the
    /// memory. `dequantize` (the default value) multiplies the blocks' float32 values: the same
    /// answers as without the flag. `q8` uses llama.cpp's integer kernels for the projections in
    /// one-token steps, and answers can drift a little (docs/quantized.md). `calico train` keeps
    /// the blocks frozen and trains the paper's set beside them (QLoRA), with the losses of
    /// training over their float32 values; its run records the flag for --resume.
    #[arg(
        long,
        value_name = "MATMUL",
        num_args = 0..=1,
        default_missing_value = "dequantize",
        value_parser = clap::value_parser!(calico_model::llama::QuantizedMatmul)
    )]
    pub quantized_llm: Option<calico_model::llama::QuantizedMatmul>,
}

impl LlmArgs {
    /// The model source for `--weights DIR` or `--preset NAME` (seed
    /// `seed`); `--quantized-llm` with a preset is bad input.
    pub fn source(
        &self,
        weights: Option<&std::path::Path>,
        preset: Option<&str>,
        seed: u64,
    ) -> anyhow::Result<calico_app::model::ModelSource> {
        use calico_app::model::ModelSource;
        match (weights, preset) {
            (Some(dir), _) => Ok(ModelSource::Weights {
                dir: dir.to_path_buf(),
                quantized_llm: self.quantized_llm,
            }),
            (None, Some(_)) if self.quantized_llm.is_some() => Err(crate::exit::bad_input(
                "--quantized-llm needs --weights DIR whose LLM is a GGUF file \
                 (a --preset model's weights are float tensors)",
            )),
            (None, Some(p)) => Ok(ModelSource::Random {
                preset: p.to_string(),
                seed,
            }),
            (None, None) => Err(crate::exit::bad_input(
                "pass --weights DIR or --preset tiny",
            )),
        }
    }
}

/// The CPU cores this process may use.
pub(crate) fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Whether `cfg`'s model runs faster on single-threaded workers, one per
/// core, than on candle's own threads, in `calico train`, `predict` and
/// `serve`. `tiny` does, and so does `small` (576 wide) on 2 cores: it
/// trains at 0.205 against 0.132 steps/s, and answers 4 samples in 8 s
/// against 11.4 s (one thread alone: 11.0 s), in more memory
/// (docs/performance.md). A paper-sized LLM (4,096 wide) keeps one worker:
/// each worker holds its own activations, many GB at that size.
pub(crate) fn prefers_workers(cfg: &calico_model::config::CalicoConfig) -> bool {
    cfg.llm.hidden_size < 2048
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
