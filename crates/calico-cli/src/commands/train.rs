//! `calico train`: fine-tune (or, for `tiny`, train from scratch) on a
//! samples file, with checkpoints, validation and `--resume`.

use std::path::PathBuf;

use anyhow::Result;
use calico_eval::embed::{EmbeddingCache, SentenceEmbedder};
use calico_eval::evaluate::TaskTable;
use calico_eval::{ExactMatch, Similarity};
use calico_model::calico::weights::CONFIG_FILE as WEIGHTS_CONFIG_FILE;
use calico_model::config::{Ablation, CalicoConfig};
use calico_train::config::TrainConfig;
use calico_train::samples_record::ValidationRecord;
use calico_train::trainer::{
    train, Observer, Progress, RunSpec, StageProgress, MODEL_CONFIG_FILE, TRAIN_CONFIG_FILE,
};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};

use crate::exit::bad_input;

#[derive(Args)]
pub struct TrainArgs {
    /// Model preset: tiny, tiny-staged (tiny as the encoders-first recipe trains it, with that
    /// recipe's settings: docs/training.md), small or paper (ignored with --resume: the run's own
    /// config is used; with --weights the model is the directory's and the preset picks only the
    /// training defaults).
    #[arg(long, default_value = "tiny")]
    preset: String,
    /// A model config JSON file instead of a preset.
    #[arg(long, conflicts_with = "preset")]
    model_config: Option<PathBuf>,
    /// Training samples (calico data build's train.jsonl).
    #[arg(long)]
    data: PathBuf,
    /// Validation samples, scored with the evaluator during training.
    #[arg(long)]
    val: Option<PathBuf>,
    /// Run directory (checkpoints, metrics.jsonl, curve.svg, model/).
    #[arg(long)]
    out: PathBuf,
    /// Training settings JSON (fields left out take the preset's defaults).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Start from a weights directory instead of random weights: `calico model init`'s, or a
    /// run's `model/` to fine-tune it. Its calico.json is the model; `trainable` "paper" trains
    /// the paper's set over it, "all" (the `tiny` presets) every tensor from its values.
    #[arg(long)]
    weights: Option<PathBuf>,
    /// Continue the run in --out from its latest checkpoint (a run started from --weights
    /// starts from that directory again; --weights may be left out). Ctrl-C (or SIGTERM)
    /// during a run saves a checkpoint after the current step and exits 130; a second one
    /// quits at once.
    #[arg(long)]
    resume: bool,
    /// Turn modules off (Table 2): no-cem, no-cam, no-cem-no-cam, no-qformer (and so
    /// no CAM), no-dino (and so no CEM).
    #[arg(long, value_parser = ["no-cem", "no-cam", "no-cem-no-cam", "no-qformer", "no-dino"])]
    ablation: Option<String>,
    /// Override the seed of the training config.
    #[arg(long)]
    seed: Option<u64>,
    /// Stop after this many stage-2 steps of this invocation (a checkpoint is written; --resume continues). Stages 1 and 1b, when configured, run to their end first.
    #[arg(long)]
    stop_after: Option<u64>,
    /// Cache of the frozen encoders' features (paper trainable set); default OUT/feature_cache.
    #[arg(long)]
    feature_cache: Option<PathBuf>,
    /// Text similarity for validation: minilm (the paper's metric; needs
    /// the model from tools/reference/fetch_models.sh) or exact. Default: minilm, or with
    /// --resume the run's own.
    #[arg(long, value_parser = ["minilm", "exact"])]
    similarity: Option<String>,
    /// Threads computing a step's micro-batches at once (default: the number of
    /// CPU cores, at most grad_accumulation, for models with an LLM narrower than
    /// 2048 such as `tiny` and `small`; 1 for `paper`). With more than one, each
    /// thread runs its tensor kernels single-threaded. Any value gives the same run.
    #[arg(long)]
    workers: Option<usize>,
    #[command(flatten)]
    llm: super::LlmArgs,
}

fn apply_ablation(a: &mut Ablation, name: &str) {
    match name {
        "no-cem" => a.use_cem = false,
        "no-cam" => a.use_cam = false,
        "no-cem-no-cam" => {
            a.use_cem = false;
            a.use_cam = false;
        }
        // The CAMs run the Q-Former ("removing Q-Former – and thus
        // disabling most of CAM and CEM", §5.2); the CEM stays, its output
        // reaching the LLM through the linear projection.
        "no-qformer" => {
            a.use_qformer = false;
            a.use_cam = false;
        }
        // Without DINOv2 there is nothing for the CEM to attend to ("no
        // cross-attention is applied"); the CAMs read the raw tokens.
        "no-dino" => {
            a.use_dino = false;
            a.use_cem = false;
        }
        _ => {}
    }
}

/// The settings a run recorded (`--resume` continues with these).
struct Recorded {
    model: CalicoConfig,
    config: TrainConfig,
}

impl Recorded {
    /// The run's `calico.json` and `train_config.json`; `None` when `out`
    /// holds no run (the trainer says so).
    fn read(out: &std::path::Path) -> Result<Option<Self>> {
        let (m, t) = (out.join(MODEL_CONFIG_FILE), out.join(TRAIN_CONFIG_FILE));
        if !m.is_file() || !t.is_file() {
            return Ok(None);
        }
        let model = CalicoConfig::from_json_file(&m).map_err(|e| bad_input(e.to_string()))?;
        let text =
            std::fs::read_to_string(&t).map_err(|e| bad_input(format!("{}: {e}", t.display())))?;
        let config: TrainConfig =
            serde_json::from_str(&text).map_err(|e| bad_input(format!("{}: {e}", t.display())))?;
        Ok(Some(Self { model, config }))
    }

    /// Refuses flags given with `--resume` that ask for other settings
    /// than the recorded ones (rather than ignoring them): each flag is
    /// applied to the recorded settings, and must leave them as they are.
    fn check_flags(&self, a: &TrainArgs) -> Result<()> {
        let mut model = match &a.model_config {
            Some(p) => {
                let mut c =
                    CalicoConfig::from_json_file(p).map_err(|e| bad_input(e.to_string()))?;
                if a.ablation.is_none() {
                    c.ablation = self.model.ablation;
                }
                c
            }
            None => self.model.clone(),
        };
        // An --ablation agrees when the run already has its switches off.
        if let Some(ab) = &a.ablation {
            apply_ablation(&mut model.ablation, ab);
        }
        let mut config = match &a.config {
            Some(p) => read_overrides(&self.config, p)?,
            None => self.config.clone(),
        };
        if let Some(s) = a.seed {
            config.seed = s;
        }
        let flags = |v: [Option<String>; 2]| v.into_iter().flatten().collect::<Vec<_>>();
        let checks = [
            (
                flags([
                    a.ablation.as_ref().map(|ab| format!("--ablation {ab}")),
                    a.model_config
                        .as_ref()
                        .map(|p| format!("--model-config {}", p.display())),
                ]),
                MODEL_CONFIG_FILE,
                model != self.model,
            ),
            (
                flags([
                    a.config
                        .as_ref()
                        .map(|p| format!("--config {}", p.display())),
                    a.seed.map(|s| format!("--seed {s}")),
                ]),
                TRAIN_CONFIG_FILE,
                config != self.config,
            ),
        ];
        for (flags, file, differs) in checks {
            if differs {
                return Err(bad_input(format!(
                    "{}: --resume continues the run with the settings it recorded in {file}, \
                     and {} {} for others; leave {} out to resume, or start a new run in another \
                     --out",
                    a.out.display(),
                    flags.join(" and "),
                    if flags.len() == 1 { "asks" } else { "ask" },
                    if flags.len() == 1 { "it" } else { "them" }
                )));
            }
        }
        Ok(())
    }
}

/// `base` with the settings of JSON file `p` written over it.
fn read_overrides(base: &TrainConfig, p: &std::path::Path) -> Result<TrainConfig> {
    let text =
        std::fs::read_to_string(p).map_err(|e| bad_input(format!("{}: {e}", p.display())))?;
    base.with_overrides(&text)
        .map_err(|e| bad_input(format!("{}: {e}", p.display())))
}

/// Similarity by embedding on demand (labels are short; the cache fills
/// as validation meets new phrases).
struct MiniLm {
    model: SentenceEmbedder,
    cache: std::sync::Mutex<EmbeddingCache>,
}

impl Similarity for MiniLm {
    fn similarity(&self, a: &str, b: &str) -> f64 {
        let Ok(mut c) = self.cache.lock() else {
            return 0.0;
        };
        let missing: Vec<&str> = [a, b].into_iter().filter(|t| !c.contains(t)).collect();
        if !missing.is_empty() && c.embed_all(&self.model, &missing).is_err() {
            return 0.0;
        }
        c.try_similarity(a, b).unwrap_or(0.0)
    }
}

struct Bar {
    bar: ProgressBar,
}

impl Bar {
    /// A line above the bar; on standard error when the bar is hidden (not
    /// a terminal), where `println` would drop it.
    fn line(&self, text: &str) {
        if self.bar.is_hidden() {
            eprintln!("{text}");
        } else {
            self.bar.println(text);
        }
    }
}

impl Observer for Bar {
    fn step(&mut self, p: &Progress) {
        let r = &p.record;
        self.bar.set_length(p.total);
        self.bar.set_position(p.step);
        let msg = format!(
            "loss {:.3} (text {:.3} focal {:.4} dice {:.3}) lr {:.1e} {:.2} steps/s eta {:.0}s",
            r.loss, r.text, r.focal, r.dice, r.lr, r.steps_per_s, p.eta_s
        );
        // Without a terminal the bar is not drawn: a line every 50 steps.
        if self.bar.is_hidden() && (p.step.is_multiple_of(50) || p.step == p.total) {
            eprintln!("step {}/{}: {msg}", p.step, p.total);
        }
        self.bar.set_message(msg);
    }

    fn stage_step(&mut self, p: &StageProgress) {
        // Without a terminal the stage's own lines (every 50 steps) suffice.
        self.bar.set_length(p.total);
        self.bar.set_position(p.step);
        self.bar
            .set_message(format!("{}: {} eta {:.0}s", p.stage, p.text, p.eta_s));
    }

    fn validation(&mut self, step: u64, t: &TaskTable) {
        let a = &t.average;
        self.line(&format!(
            "step {step}: validation average mIoU {:.1} Recall {:.1} SS {:.1} S-IoU {:.1} AP50 {}",
            a.miou,
            a.recall,
            a.ss,
            a.s_iou,
            a.ap50
                .map(|v| format!("{v:.1}"))
                .unwrap_or_else(|| "-".into())
        ));
    }

    fn message(&mut self, text: &str) {
        self.line(text);
    }

    fn stop_requested(&mut self) -> bool {
        crate::interrupt::requested()
    }

    fn run_starts(&mut self) {
        crate::interrupt::arm();
    }
}

pub fn run(a: TrainArgs) -> Result<()> {
    crate::interrupt::install(crate::interrupt::TRAIN_STOPPING)?;
    crate::exit::out_dir(&a.out)?;
    // With --weights the model is the directory's; the preset still picks
    // the training defaults, and a --model-config must say the same.
    let from_weights = match &a.weights {
        Some(w) => {
            let p = w.join(WEIGHTS_CONFIG_FILE);
            let c = CalicoConfig::from_json_file(&p).map_err(|e| bad_input(e.to_string()))?;
            Some((p, c))
        }
        None => None,
    };
    let recorded = if a.resume {
        Recorded::read(&a.out)?
    } else {
        None
    };
    let mut model = match (&a.model_config, from_weights) {
        (Some(p), theirs) => {
            let ours = CalicoConfig::from_json_file(p).map_err(|e| bad_input(e.to_string()))?;
            if let Some((path, _)) = theirs.filter(|(_, c)| *c != ours) {
                return Err(bad_input(format!(
                    "{} differs from {}: leave out --model-config to train the weights \
                     directory's model",
                    p.display(),
                    path.display()
                )));
            }
            ours
        }
        (None, Some((_, theirs))) => theirs,
        (None, None) => CalicoConfig::preset(&a.preset).map_err(|e| bad_input(e.to_string()))?,
    };
    if let Some(ab) = &a.ablation {
        apply_ablation(&mut model.ablation, ab);
    }
    model.validate().map_err(|e| {
        bad_input(match &a.ablation {
            Some(ab) => format!("the model config with --ablation {ab}: {e}"),
            None => format!("the model config: {e}"),
        })
    })?;
    // The training defaults: the preset's own (`tiny-staged` has the staged
    // recipe), or those of the family a model config file names.
    let defaults = TrainConfig::for_preset(match &a.model_config {
        Some(_) => &model.name,
        None => &a.preset,
    });
    // Fields a --config leaves out take the defaults.
    let mut config = match &a.config {
        Some(p) => read_overrides(&defaults, p)?,
        None => defaults,
    };
    if let Some(s) = a.seed {
        config.seed = s;
    }
    // A resumed run continues with its own settings; the flags must agree.
    let validation = match &recorded {
        Some(r) => {
            r.check_flags(&a)?;
            model = r.model.clone();
            config = r.config.clone();
            ValidationRecord::read(&a.out).map_err(|e| bad_input(e.to_string()))?
        }
        None => None,
    };
    config
        .validate()
        .map_err(|e| bad_input(format!("training config: {e}")))?;
    if a.stop_after == Some(0) {
        return Err(bad_input(
            "--stop-after must be at least 1 (it counts the stage-2 steps to run)",
        ));
    }
    // Left out on resume, --val and --similarity are the run's own.
    let val = a.val.clone().or_else(|| {
        validation
            .as_ref()
            .and_then(|v| v.samples.as_ref().map(|s| s.path.clone()))
    });
    // Said before a similarity model is loaded for nothing (the trainer
    // checks the validation samples themselves).
    if let (Some(v), Some(given)) = (&validation, &a.similarity) {
        v.check_similarity(given)
            .map_err(|e| bad_input(format!("{}: {e}", a.out.display())))?;
    }
    let similarity = a
        .similarity
        .clone()
        .or_else(|| validation.as_ref().map(|v| v.similarity.clone()))
        .unwrap_or_else(|| "minilm".to_string());
    for p in std::iter::once(&a.data).chain(val.iter()) {
        if p.is_dir() {
            return Err(bad_input(format!(
                "{}: a directory, not a samples file (calico data build writes train.jsonl, \
                 val.jsonl and test.jsonl into it)",
                p.display()
            )));
        }
        if !p.is_file() {
            return Err(bad_input(format!("{}: no such samples file", p.display())));
        }
    }
    let sim: Box<dyn Similarity> = match similarity.as_str() {
        "exact" => Box::new(ExactMatch),
        // No validation runs, so no similarity is ever computed.
        _ if val.is_none() || config.val_samples == 0 => Box::new(ExactMatch),
        _ => {
            let dir = calico_eval::embed::default_dir();
            let m = SentenceEmbedder::load(&dir, &candle_core::Device::Cpu).map_err(|e| {
                bad_input(format!(
                    "loading the sentence embedder from {} for validation: {e} \
                     (or pass --similarity exact)",
                    dir.display()
                ))
            })?;
            Box::new(MiniLm {
                model: m,
                cache: std::sync::Mutex::new(EmbeddingCache::new()),
            })
        }
    };
    let workers = match a.workers {
        Some(0) => return Err(bad_input("--workers must be at least 1")),
        Some(w) => w,
        None if super::prefers_workers(&model) => super::cores().min(config.grad_accumulation),
        None => 1,
    };
    super::single_threaded_kernels_for(workers);
    let spec = RunSpec {
        run_dir: a.out.clone(),
        train: a.data.clone(),
        val,
        similarity,
        model,
        weights: a.weights.clone(),
        config,
        resume: a.resume,
        stop_after: a.stop_after,
        feature_cache: a.feature_cache.clone(),
        workers,
        quantized_llm: a.llm.quantized_llm,
    };
    let bar = ProgressBar::new(spec.config.total_steps());
    bar.set_style(
        ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar.set_prefix("train");
    let mut obs = Bar { bar };
    let summary = train(&spec, sim.as_ref(), &mut obs).map_err(|e| match e {
        calico_train::TrainError::Data(_) | calico_train::TrainError::Config(_) => {
            bad_input(e.to_string())
        }
        other => anyhow::Error::new(other),
    })?;
    obs.bar.finish();
    if let Some(r) = &summary.last {
        println!(
            "trained to step {} in {:.0} s; last loss {:.4} (text {:.4}, focal {:.4}, dice {:.4})",
            summary.steps, summary.elapsed_s, r.loss, r.text, r.focal, r.dice
        );
    }
    if summary.stopped_early {
        println!(
            "stopped early at step {}: early_stop_patience validations in a row without a new best",
            summary.steps
        );
    }
    if let Some(b) = &summary.best {
        println!(
            "best validation: {} {:.1} at step {}: {} (use with --weights)",
            b.metric.name(),
            b.score,
            b.step,
            a.out.join(calico_train::best::BEST_DIR).display()
        );
    }
    if let Some(dir) = &summary.model_dir {
        println!(
            "weights: {} (use with --weights); metrics: {}; curve: {}",
            dir.display(),
            a.out.join("metrics.jsonl").display(),
            a.out.join("curve.svg").display()
        );
        // The held-out split beside the training samples, if the run's
        // data came from `calico data build`.
        let test = a.data.with_file_name("test.jsonl");
        let test = if test.is_file() {
            test.display().to_string()
        } else {
            "test.jsonl".to_string()
        };
        let llm = match summary.quantized_llm {
            Some(m) => format!(" --quantized-llm {}", m.name()),
            None => String::new(),
        };
        println!(
            "score it: calico predict --weights {}{llm} --data {test} --out predictions.jsonl; \
             calico eval --ground-truth {test} --predictions predictions.jsonl \
             (calico data subset makes a smaller test set)",
            dir.display()
        );
    }
    Ok(())
}
