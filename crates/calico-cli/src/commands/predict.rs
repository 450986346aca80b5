//! `calico predict`: answer every sample of a samples file (its question,
//! its images in order) and write predictions.jsonl, the input of
//! `calico eval`.

use std::path::PathBuf;

use anyhow::{Context, Result};
use calico_app::model::{load, random, AppModel, ModelSource};
use calico_model::calico::weights::CONFIG_FILE as WEIGHTS_CONFIG_FILE;
use calico_model::config::CalicoConfig;
use calico_model::prompt::PromptFormat;
use calico_train::data;
use calico_train::predict::{greedy, predict_sample};
use calico_train::samples_record::SamplesRecord;
use calico_train::TrainError;
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};

use super::predict_partial::{paths, Partial, Settings};
use super::segment::ModelArgs;
use crate::exit::{app, bad_input};

#[derive(Args)]
pub struct PredictArgs {
    /// Samples file (calico data build's JSONL; images relative to it).
    #[arg(long)]
    data: PathBuf,
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    llm: super::LlmArgs,
    #[command(flatten)]
    device: super::DeviceArgs,
    /// Seed of --preset's random weights.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Predictions file to write (JSONL). Answers go to OUT.partial as they are made, which
    /// becomes OUT at the end; a run that stops early continues with --resume.
    #[arg(long)]
    out: PathBuf,
    /// Continue a run that stopped early: keep the answers in OUT.partial (made from the same
    /// samples file, model and --max-new-tokens) and answer the remaining samples.
    #[arg(long)]
    resume: bool,
    /// Answer only the first N samples (a built split lists its sources and tasks in runs, so
    /// for a sample of all of them make a file with `calico data subset`).
    #[arg(long)]
    limit: Option<usize>,
    /// Most tokens to generate per answer.
    #[arg(long, default_value_t = 256, value_parser = super::at_least_one)]
    max_new_tokens: usize,
    /// Threads answering samples at once (default: the number of CPU cores for models with an
    /// LLM narrower than 2048 such as `tiny` and `small`, whose tensors gain little from
    /// threaded kernels; 1 for `paper`, and 1 on a GPU). With more than one on the CPU, each
    /// runs its tensor kernels single-threaded.
    /// Any value gives the same predictions.
    #[arg(long, value_parser = super::at_least_one)]
    workers: Option<usize>,
}

pub(crate) fn train_err(e: TrainError) -> anyhow::Error {
    match e {
        TrainError::Data(_) | TrainError::Config(_) => bad_input(e.to_string()),
        other => anyhow::Error::new(other),
    }
}

/// What `calico predict` says at the first interrupt.
const STOPPING: &str = "interrupt: stopping once the samples being answered are done (interrupt \
     again to quit at once; --resume answers the rest either way)";

pub fn run(a: PredictArgs) -> Result<()> {
    crate::interrupt::install(STOPPING)?;
    if !a.data.is_file() {
        return Err(bad_input(format!(
            "{}: no such samples file",
            a.data.display()
        )));
    }
    crate::exit::out_file(&a.out)?;
    let source = a.model.source(a.seed, &a.llm)?;
    let device = a.device.open()?;
    let workers = a
        .workers
        .unwrap_or_else(|| default_workers(&source, &device));
    super::single_threaded_kernels_for(workers);
    let (m, ds): (AppModel, data::Dataset) = match source {
        ModelSource::Random { preset, seed } => {
            let cfg = CalicoConfig::preset(&preset).map_err(|e| bad_input(e.to_string()))?;
            let ds = data::open(&a.data, &cfg).map_err(train_err)?;
            let format = PromptFormat::vicuna_v1(cfg.image_tokens());
            let corpus = data::corpus(&ds.samples, &format);
            let m = random(&cfg, seed, &corpus, &device).map_err(app)?;
            (m, ds)
        }
        weights => {
            let m = load(&weights, &[], &device).map_err(app)?;
            let ds = data::open(&a.data, m.model.config()).map_err(train_err)?;
            (m, ds)
        }
    };
    if m.untrained {
        eprintln!("warning: {}", m.description);
    }
    let n = a.limit.unwrap_or(ds.len()).min(ds.len());
    let settings = Settings {
        data: SamplesRecord::of(&a.data, ds.len()).map_err(train_err)?,
        model: m.description.clone(),
        max_new_tokens: a.max_new_tokens,
    };
    // Every image is read before anything is written.
    for i in 0..n {
        ds.images_of(i).map_err(train_err)?;
    }
    if let Some(parent) = a.out.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("creating {}", parent.display()))?;
    }
    // From here on an interrupt stops between samples, keeping the answers.
    crate::interrupt::arm();
    let mut partial = if a.resume {
        let ids: Vec<&str> = ds.samples[..n].iter().map(|s| s.id.as_str()).collect();
        Partial::resume(&a.out, &settings, &ids)?
    } else {
        Partial::start(&a.out, &settings)?
    };
    let first = partial.done;
    if first > 0 {
        eprintln!(
            "resuming: {first} of {n} samples already answered in {}",
            paths(&a.out).0.display()
        );
    }
    let bar = ProgressBar::new(n as u64);
    bar.set_style(
        ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} {per_sec} eta {eta} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar.set_prefix("predict");
    bar.set_position(first as u64);
    bar.reset_eta();
    let t = std::time::Instant::now();
    predict_each(
        &m,
        &ds,
        first..n,
        a.max_new_tokens,
        workers,
        &crate::interrupt::requested,
        &|done, _, id| {
            bar.set_position(done as u64);
            bar.set_message(id.to_string());
        },
        &mut |line, masks| partial.append(line, masks),
    )?;
    bar.finish_and_clear();
    if partial.done < n {
        // Stopped by an interrupt: the answers so far stay for --resume.
        partial.sync()?;
        return Err(anyhow::Error::new(TrainError::Interrupted(format!(
            "stopped after {} of {n} samples; {} keeps their answers and the same \
             command with --resume answers the rest",
            partial.done,
            paths(&a.out).0.display()
        ))));
    }
    let masks = partial.masks;
    partial.finish(&a.out)?;
    println!(
        "{n} predictions ({masks} masks{}) in {:.1} s -> {} (model: {})",
        if first > 0 {
            format!("; {first} of them from the run resumed")
        } else {
            String::new()
        },
        t.elapsed().as_secs_f64(),
        a.out.display(),
        m.description
    );
    Ok(())
}

/// One worker per core for a model that prefers them
/// ([`super::prefers_workers`]) on the CPU, else 1, as `calico train
/// --workers` chooses. A GPU gets 1 (one stream does the work), and so does
/// a weights directory whose config cannot be read (loading it will say
/// why).
pub(crate) fn default_workers(source: &ModelSource, device: &candle_core::Device) -> usize {
    if !device.is_cpu() {
        return 1;
    }
    let cfg = match source {
        ModelSource::Random { preset, .. } => CalicoConfig::preset(preset).ok(),
        ModelSource::Weights { dir, .. } => {
            CalicoConfig::from_json_file(&dir.join(WEIGHTS_CONFIG_FILE)).ok()
        }
    };
    match cfg {
        Some(c) if super::prefers_workers(&c) => super::cores(),
        _ => 1,
    }
}

/// Answers samples `0..n` of `ds` (greedy, at most `max_new_tokens`
/// each): the predictions JSONL text and the number of masks. Every
/// sample's images are read before the (slow) answering starts.
/// `workers` and `progress` as for [`predict_each`].
pub(crate) fn predict_jsonl(
    m: &AppModel,
    ds: &data::Dataset,
    n: usize,
    max_new_tokens: usize,
    workers: usize,
    progress: &dyn Fn(usize, usize, &str),
) -> Result<(String, usize)> {
    for i in 0..n.min(ds.len()) {
        ds.images_of(i).map_err(train_err)?;
    }
    let mut text = String::new();
    let mut masks = 0usize;
    predict_each(
        m,
        ds,
        0..n,
        max_new_tokens,
        workers,
        &|| false,
        progress,
        &mut |line, k| {
            text.push_str(line);
            text.push('\n');
            masks += k;
            Ok(())
        },
    )?;
    Ok((text, masks))
}

/// Answers samples `range` of `ds`, handing each prediction's JSON line
/// (without its newline) and mask count to `emit` in sample order (the
/// caller reads every sample's images first, so that a bad one is said
/// before anything is answered or written). With
/// `workers > 1` that many threads answer samples at once (each answer is
/// the same as one thread's). Once `stop()` holds no further sample is
/// started; the ones started are finished and emitted, so what was emitted
/// is always the first samples of `range`. `progress(done, end, id)` is
/// called once before the first sample and after each one is emitted, with
/// its id.
#[allow(clippy::too_many_arguments)]
fn predict_each(
    m: &AppModel,
    ds: &data::Dataset,
    range: std::ops::Range<usize>,
    max_new_tokens: usize,
    workers: usize,
    stop: &(dyn Fn() -> bool + Sync),
    progress: &dyn Fn(usize, usize, &str),
    emit: &mut dyn FnMut(&str, usize) -> Result<()>,
) -> Result<()> {
    let end = range.end.min(ds.len());
    let range = range.start.min(end)..end;
    let opts = greedy(max_new_tokens);
    let answer = |i: usize| -> Result<(String, usize)> {
        let (p, _) = predict_sample(&m.model, &m.tokenizer, ds, i, &opts).map_err(train_err)?;
        Ok((serde_json::to_string(&p)?, p.masks.len()))
    };
    progress(range.start, end, "");
    calico_train::workers::stream_ordered(
        range,
        workers,
        &mut || stop(),
        answer,
        |i, (line, masks)| {
            emit(&line, masks)?;
            progress(i + 1, end, &ds.samples[i].id);
            Ok(())
        },
        |i| format!("sample {}", ds.samples[i].id),
    )?;
    Ok(())
}
