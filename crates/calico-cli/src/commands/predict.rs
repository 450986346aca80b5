//! `calico predict`: answer every sample of a samples file (its question,
//! its images in order) and write predictions.jsonl, the input of
//! `calico eval`.

use std::path::PathBuf;

use anyhow::Result;
use calico_app::model::{load, random, AppModel};
use calico_model::config::CalicoConfig;
use calico_model::prompt::PromptFormat;
use calico_train::data;
use calico_train::predict::{greedy, predict_sample};
use calico_train::TrainError;
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};

use super::segment::ModelArgs;
use crate::exit::{app, bad_input};

#[derive(Args)]
pub struct PredictArgs {
    /// Samples file (calico data build's JSONL; images relative to it).
    #[arg(long)]
    data: PathBuf,
    #[command(flatten)]
    model: ModelArgs,
    /// Seed of --preset's random weights.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Predictions file to write (JSONL, written atomically at the end).
    #[arg(long)]
    out: PathBuf,
    /// Answer only the first N samples (a built split lists its sources and tasks in runs, so
    /// for a sample of all of them make a file with `calico data subset`).
    #[arg(long)]
    limit: Option<usize>,
    /// Most tokens to generate per answer.
    #[arg(long, default_value_t = 256, value_parser = super::at_least_one)]
    max_new_tokens: usize,
}

pub(crate) fn train_err(e: TrainError) -> anyhow::Error {
    match e {
        TrainError::Data(_) | TrainError::Config(_) => bad_input(e.to_string()),
        other => anyhow::Error::new(other),
    }
}

pub fn run(a: PredictArgs) -> Result<()> {
    if !a.data.is_file() {
        return Err(bad_input(format!(
            "{}: no such samples file",
            a.data.display()
        )));
    }
    crate::exit::out_file(&a.out)?;
    let source = a.model.source(a.seed)?;
    let (m, ds): (AppModel, data::Dataset) = match source {
        calico_app::model::ModelSource::Random { preset, seed } => {
            let cfg = CalicoConfig::preset(&preset).map_err(|e| bad_input(e.to_string()))?;
            let ds = data::open(&a.data, &cfg).map_err(train_err)?;
            let format = PromptFormat::vicuna_v1(cfg.image_tokens());
            let corpus = data::corpus(&ds.samples, &format);
            let m = random(&cfg, seed, &corpus, &candle_core::Device::Cpu).map_err(app)?;
            (m, ds)
        }
        weights => {
            let m = load(&weights, &[]).map_err(app)?;
            let ds = data::open(&a.data, m.model.config()).map_err(train_err)?;
            (m, ds)
        }
    };
    if m.untrained {
        eprintln!("warning: {}", m.description);
    }
    let n = a.limit.unwrap_or(ds.len()).min(ds.len());
    let bar = ProgressBar::new(n as u64);
    bar.set_style(
        ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} {per_sec} eta {eta} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar.set_prefix("predict");
    let t = std::time::Instant::now();
    let (text, masks) = predict_jsonl(&m, &ds, n, a.max_new_tokens, &|done, _, id| {
        bar.set_position(done as u64);
        bar.set_message(id.to_string());
    })?;
    bar.finish_and_clear();
    if let Some(parent) = a.out.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)?;
    }
    calico_masks::png_io::write_atomic(&a.out, |w| std::io::Write::write_all(w, text.as_bytes()))?;
    println!(
        "{n} predictions ({masks} masks) in {:.1} s -> {} (model: {})",
        t.elapsed().as_secs_f64(),
        a.out.display(),
        m.description
    );
    Ok(())
}

/// Answers samples `0..n` of `ds` (greedy, at most `max_new_tokens`
/// each): the predictions JSONL text and the number of masks. Every
/// sample's images are read before the (slow) answering starts.
/// `progress(done, n, id)` is called before each sample with its id, and
/// once at the end with an empty id.
pub(crate) fn predict_jsonl(
    m: &AppModel,
    ds: &data::Dataset,
    n: usize,
    max_new_tokens: usize,
    progress: &dyn Fn(usize, usize, &str),
) -> Result<(String, usize)> {
    let n = n.min(ds.len());
    for i in 0..n {
        ds.images_of(i).map_err(train_err)?;
    }
    let opts = greedy(max_new_tokens);
    let mut text = String::new();
    let mut masks = 0usize;
    for i in 0..n {
        progress(i, n, &ds.samples[i].id);
        let (p, _) = predict_sample(&m.model, &m.tokenizer, ds, i, &opts).map_err(train_err)?;
        masks += p.masks.len();
        text.push_str(&serde_json::to_string(&p)?);
        text.push('\n');
    }
    progress(n, n, "");
    Ok((text, masks))
}
