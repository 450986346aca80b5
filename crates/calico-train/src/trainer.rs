//! The training loop: deterministic data order, gradient accumulation,
//! clipping, AdamW with warm-up/decay, validation with the evaluator,
//! atomic checkpoints and bit-for-bit resumption.
//!
//! # Determinism
//! Everything random is a function of the seed and a position, never of
//! how the run got there:
//! * sample `k` of the stream is entry `k mod n` of epoch `⌊k/n⌋`'s
//!   permutation (ChaCha8 seeded by `(seed, epoch)`), and whether its
//!   images are swapped is drawn from `(seed, k)`;
//! * LoRA dropout in micro-batch `m` of step `s` draws from `(seed, s, m)`.
//!
//! So a checkpoint needs only the variables, the optimizer moments and the
//! step, and `--resume` continues with the losses an uninterrupted run
//! would have had.
//!
//! # Run directory
//! ```text
//! RUN/train_config.json  RUN/calico.json  RUN/tokenizer.json   the run's settings (read back by --resume)
//! RUN/data.json                            the training samples file's SHA-256 (--resume checks it)
//! RUN/validation.json                      the validation samples' SHA-256 and the similarity
//! RUN/machine.json                         the CPU and the caches its products block by (--resume notes a change)
//! RUN/train.lock                           locked by the process writing the run
//! RUN/frozen.safetensors                   frozen tensors made at random (presets without weights)
//! RUN/start.json                           the `--weights` directory it started from, if any
//! RUN/metrics.jsonl  RUN/curve.svg         per-step losses, validation scores, the plot
//! RUN/checkpoints/step-00000100/…          trainable tensors, optimizer moments, state.json
//! RUN/checkpoints/stage1{,b}/step-…/       inside stages 1 and 1b (crate::stage_checkpoint)
//! RUN/val_predictions.jsonl                the last validation's predictions
//! RUN/feature_cache/<hash>.safetensors     frozen encoders' outputs per image (paper trainable set)
//! RUN/model/                               the final weights directory (`--weights RUN/model`)
//! ```
//!
//! # Failure
//! Every input is checked before the directory is written; a non-finite
//! loss, gradient norm or updated tensor stops the run at its step without
//! saving it (`crate::guard`); checkpoints and `model/` replace their
//! predecessors by renames, so a kill never leaves a partial one.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use calico_eval::evaluate::{prepare, score, EvalOptions, TaskTable};
use calico_eval::Similarity;
use calico_model::calico::cache::FeatureCache;
use calico_model::calico::weights::{load_dir_ablated, save_dir, write_atomic, MissingFrozen};
use calico_model::calico::Calico;
use calico_model::config::CalicoConfig;
use calico_model::llama::QuantizedMatmul;
use calico_model::prompt::PromptFormat;
use calico_model::tokenizer::CalicoTokenizer;
use candle_core::{Device, Tensor, Var};
use candle_nn::VarMap;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::best::{Best, Choice, BEST_DIR, BEST_FILE};
use crate::checkpoint::{
    checkpoint_step, create_dir_durably, incomplete_checkpoints_in, latest_checkpoint,
    latest_checkpoint_in, load_checkpoint, save_checkpoint, CheckpointError, LoadedCheckpoint,
    TrainState, CHECKPOINTS_DIR,
};
use crate::config::TrainConfig;
use crate::data::{self, Dataset, Example};
use crate::guard::{finite_or_stop, updated_weights_finite, with_kept};
use crate::machine::{MachineRecord, MACHINE_FILE};
use crate::metrics::{MetricsLog, Record, TrainRecord, ValRecord, METRICS_FILE};
use crate::model::{build_over, build_random, into_vars, TrainableSet};
use crate::objective::batch_loss;
use crate::optim::{clip_grad_norm, var_grads, AdamW, GradAccumulator};
use crate::plot::CURVE_FILE;
use crate::predict::{greedy, predict_sample};
use crate::samples_record::{
    read_json, read_record, SamplesRecord, ValidationRecord, DATA_FILE, VALIDATION_FILE,
};
use crate::schedule::LrSchedule;
use crate::stage_checkpoint::{self, restore_vars, var_tensors, Stage, StageCheckpoints, StageRun};
use crate::stem::{InferenceOnDrop, Tower};
use crate::{plot, TrainError};

type Result<T> = std::result::Result<T, TrainError>;

pub const TRAIN_CONFIG_FILE: &str = "train_config.json";
pub const MODEL_CONFIG_FILE: &str = "calico.json";
pub const TOKENIZER_FILE: &str = "tokenizer.json";
pub const FROZEN_FILE: &str = "frozen.safetensors";
/// The weights directory a run started from (`--weights`), for `--resume`.
pub const START_FILE: &str = "start.json";
pub const VAL_PREDICTIONS_FILE: &str = "val_predictions.jsonl";
pub const MODEL_DIR: &str = "model";
pub const PRETRAIN_FILE: &str = "pretrain.json";
/// Stage 1b's summary in the run directory.
pub const MASK_PRETRAIN_FILE: &str = "mask_pretrain.json";

/// What to train on and where to write.
#[derive(Debug, Clone)]
pub struct RunSpec {
    pub run_dir: PathBuf,
    pub train: PathBuf,
    pub val: Option<PathBuf>,
    /// The model config (preset, with ablations applied; with `weights`,
    /// that directory's).
    pub model: CalicoConfig,
    /// A weights directory to start from (`calico model init`'s, or a
    /// run's `model/`), with its tokenizer: `TrainableSet::Paper` trains
    /// the paper's set over it, `TrainableSet::All` every tensor from its
    /// values. `None` starts from seeded random weights with a word-level
    /// tokenizer built from the training answers.
    pub weights: Option<PathBuf>,
    pub config: TrainConfig,
    /// The text similarity `validate` scores with, as `calico train
    /// --similarity` names it (`minilm` or `exact`); recorded in the run.
    pub similarity: String,
    /// Continue the run in `run_dir` from its latest checkpoint.
    pub resume: bool,
    /// Stop (with a checkpoint) after this many optimizer steps of this
    /// invocation, e.g. to test resumption.
    pub stop_after: Option<u64>,
    /// Where the frozen encoders' features are cached (paper trainable set
    /// only; default `RUN/feature_cache`).
    pub feature_cache: Option<PathBuf>,
    /// Threads computing a step's micro-batches at once (at most
    /// `grad_accumulation` are used). An execution setting only: the
    /// gradients are added in micro-batch order, so any value gives the
    /// same run.
    pub workers: usize,
    /// Keep the `weights` directory's GGUF LLM in its quantised blocks,
    /// frozen, and train the paper's set beside it (QLoRA). Recorded in
    /// `RUN/start.json`: a resumed run keeps it.
    pub quantized_llm: Option<QuantizedMatmul>,
}

/// One optimizer step's numbers.
#[derive(Debug, Clone)]
pub struct Progress {
    pub step: u64,
    pub total: u64,
    pub record: TrainRecord,
    pub eta_s: f64,
}

/// One step of a pretraining stage (stage 1 or 1b).
#[derive(Debug, Clone)]
pub struct StageProgress {
    /// `stage 1` or `stage 1b`.
    pub stage: &'static str,
    /// Steps done, of `total`.
    pub step: u64,
    pub total: u64,
    /// The stage's recent numbers, e.g. `loss 6.2274, top-1 accuracy 48.6 %`.
    pub text: String,
    /// Seconds left at this invocation's pace.
    pub eta_s: f64,
}

impl StageProgress {
    /// Step `step` of `total`, this invocation having done `done` steps in
    /// `elapsed_s` seconds.
    pub fn new(
        stage: &'static str,
        (step, total): (u64, u64),
        (done, elapsed_s): (u64, f64),
        text: String,
    ) -> Self {
        let rate = done as f64 / elapsed_s.max(1e-9);
        Self {
            stage,
            step,
            total,
            text,
            eta_s: total.saturating_sub(step) as f64 / rate.max(1e-9),
        }
    }
}

/// Receives the run's events (the CLI draws a progress bar).
pub trait Observer {
    fn step(&mut self, _p: &Progress) {}
    /// A step of stage 1 or 1b (their messages say the same every 50 steps).
    fn stage_step(&mut self, _p: &StageProgress) {}
    fn validation(&mut self, _step: u64, _table: &TaskTable) {}
    fn message(&mut self, _text: &str) {}
    /// Whether the run should stop at the next step boundary (e.g. on
    /// Ctrl-C): it saves a checkpoint there and ends with
    /// [`TrainError::Interrupted`], so that `--resume` loses no step.
    fn stop_requested(&mut self) -> bool {
        false
    }
    /// The checks are done and the run is about to write its directory:
    /// from here on an interrupt should stop the run at a step boundary
    /// ([`Observer::stop_requested`]); before, nothing is written yet and
    /// the process may simply end.
    fn run_starts(&mut self) {}
}

/// An observer that ignores everything.
pub struct Quiet;
impl Observer for Quiet {}

/// How a run ended.
#[derive(Debug, Clone)]
pub struct Summary {
    pub steps: u64,
    pub elapsed_s: f64,
    pub last: Option<TrainRecord>,
    pub validation: Option<TaskTable>,
    pub model_dir: Option<PathBuf>,
    /// With `keep_best`: the validation whose weights `RUN/best/` holds.
    pub best: Option<Best>,
    /// `early_stop_patience` ended the run before its last step (at `steps`).
    pub stopped_early: bool,
    /// How the run held its LLM (`RunSpec::quantized_llm`, or on resume
    /// what the run started with).
    pub quantized_llm: Option<QuantizedMatmul>,
}

fn io(path: &Path, error: std::io::Error) -> TrainError {
    TrainError::Io {
        path: path.to_path_buf(),
        error,
    }
}

fn write_json(path: &Path, value: &impl serde::Serialize) -> Result<()> {
    let text = serde_json::to_string_pretty(value)
        .map_err(|e| TrainError::Config(format!("{}: {e}", path.display())))?;
    write_atomic(path, text.as_bytes()).map_err(|e| io(path, e))
}

pub(crate) fn mix(parts: &[u64]) -> u64 {
    // SplitMix64 over the parts.
    let mut h: u64 = 0x9e37_79b9_7f4a_7c15;
    for &p in parts {
        h ^= p.wrapping_add(0x9e37_79b9_7f4a_7c15);
        h = (h ^ (h >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        h = (h ^ (h >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        h ^= h >> 31;
    }
    h
}

/// The deterministic sample stream (see the module docs): position `k` is
/// entry `k mod n` of epoch `⌊k/n⌋`'s permutation, drawn from
/// `(seed, perm_tag, epoch)`, with a coin (image swap, flip) drawn from
/// `(seed, coin_tag, k)`. The training samples use tags (1, 2), stage 1's
/// images (6, 7).
pub(crate) struct Order {
    seed: u64,
    n: usize,
    tags: (u64, u64),
    perms: HashMap<u64, Vec<usize>>,
}

impl Order {
    pub(crate) fn new(seed: u64, n: usize) -> Self {
        Self::tagged(seed, n, (1, 2))
    }

    pub(crate) fn tagged(seed: u64, n: usize, tags: (u64, u64)) -> Self {
        Self {
            seed,
            n,
            tags,
            perms: HashMap::new(),
        }
    }

    /// `(index, coin)` of stream position `k`.
    pub(crate) fn at(&mut self, k: u64) -> (usize, bool) {
        let epoch = k / self.n as u64;
        let (seed, n, (perm_tag, coin_tag)) = (self.seed, self.n, self.tags);
        let perm = self.perms.entry(epoch).or_insert_with(|| {
            let mut p: Vec<usize> = (0..n).collect();
            p.shuffle(&mut ChaCha8Rng::seed_from_u64(mix(&[
                seed, perm_tag, epoch,
            ])));
            p
        });
        let index = perm[(k % n as u64) as usize];
        let swap = ChaCha8Rng::seed_from_u64(mix(&[seed, coin_tag, k])).random::<bool>();
        if self.perms.len() > 2 {
            self.perms.retain(|&e, _| e + 1 >= epoch);
        }
        (index, swap)
    }
}

/// The model, its variables and tokenizer for a run.
struct Setup {
    model: Calico,
    vars: VarMap,
    frozen: HashMap<String, Tensor>,
    tok: CalicoTokenizer,
    /// What the run says about its LLM kept in quantised blocks.
    llm_note: Option<String>,
}

fn setup(spec: &RunSpec, cfg: &CalicoConfig, train: &Dataset, device: &Device) -> Result<Setup> {
    let tc = &spec.config;
    let format = PromptFormat::vicuna_v1(cfg.image_tokens());
    if let Some(w) = &spec.weights {
        // The run's model is the directory's with the run's ablation (the
        // paper set's model is the loaded one, so it must leave out what
        // the ablation switches off).
        let l = load_dir_ablated(
            w,
            cfg.ablation,
            MissingFrozen::Random { seed: tc.seed },
            device,
            spec.quantized_llm,
        )
        .map_err(|e| TrainError::Config(e.to_string()))?;
        if l.model.config() != cfg {
            return Err(TrainError::Config(format!(
                "the run's model config differs from {}'s {MODEL_CONFIG_FILE} in more \
                 than its ablation",
                w.display()
            )));
        }
        // The paper set's export names the directory's files as its
        // sources; the frozen tensors they lack (an earlier run's trained
        // ones, seeded ones) go into the run's own files.
        let own: HashMap<String, Tensor> = match tc.trainable {
            TrainableSet::Paper => l
                .frozen
                .iter()
                .filter(|(n, _)| l.frozen_own.contains(*n))
                .map(|(n, t)| (n.clone(), t.clone()))
                .collect(),
            TrainableSet::All => HashMap::new(),
        };
        let model = match tc.trainable {
            TrainableSet::Paper => l.model,
            // Every tensor the directory gave the model becomes a variable
            // and the model is rebuilt over them, as `build_random` does
            // for seeded weights.
            TrainableSet::All => {
                into_vars(&l.trainable, &l.frozen)?;
                let special = *l.model.special_ids();
                let mut model = build_over(cfg, special, &l.trainable, device)?;
                let vocab = l.tokenizer.vocab_size();
                if vocab > cfg.llm.vocab_size {
                    // The added rows are variables `load_dir` already made.
                    model.resize_token_embeddings(vocab, Some(&l.trainable))?;
                }
                model
            }
        };
        let llm_note = l.report.quantized_kinds().map(|kinds| {
            format!(
                "note: the LLM stays frozen in its quantized blocks (QLoRA): {kinds}, {:.1} MB",
                l.report.quantized_bytes as f64 / 1e6
            )
        });
        return Ok(Setup {
            model,
            vars: l.trainable,
            frozen: own,
            tok: l.tokenizer,
            llm_note,
        });
    }
    let mut tok = CalicoTokenizer::word_level(&data::corpus(&train.samples, &format))?;
    let special = tok.add_calico_tokens(None)?;
    if tok.vocab_size() > cfg.llm.vocab_size {
        return Err(TrainError::Config(format!(
            "the word-level vocabulary of {} has {} tokens but the model's LLM has {}; \
             raise llm.vocab_size in the model config or start from --weights with a tokenizer",
            train.path().display(),
            tok.vocab_size(),
            cfg.llm.vocab_size
        )));
    }
    let b = build_random(cfg, special, tc.trainable, tc.seed, device)?;
    Ok(Setup {
        model: b.model,
        vars: b.vars,
        frozen: b.frozen,
        tok,
        llm_note: None,
    })
}

fn named_vars(map: &VarMap) -> Vec<(String, Var)> {
    let data = map.data().lock().map(|d| d.clone()).unwrap_or_default();
    let mut v: Vec<(String, Var)> = data.into_iter().collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

/// Evenly spaced validation indices (all tasks appear when the file mixes them).
/// Checks, before the run starts, what validation will score (samples
/// `idx` of `val`): tasks the evaluator scores, distinct ids, and images
/// that decode (the header check of [`Dataset::check`] passes a file whose
/// pixel data is damaged). Validation failing after the training would
/// lose the run's last steps.
fn check_validation_samples(val: &Dataset, idx: &[usize]) -> Result<()> {
    let mut ids = std::collections::HashSet::new();
    for &i in idx {
        let s = &val.samples[i];
        let at = |what: String| {
            TrainError::Data(format!("{}: sample {}: {what}", val.path().display(), s.id))
        };
        if !calico_eval::evaluate::TASKS.contains(&s.task.as_str()) {
            return Err(at(format!(
                "task {:?} cannot be scored; validation expects one of {:?}",
                s.task,
                calico_eval::evaluate::TASKS
            )));
        }
        if !ids.insert(s.id.as_str()) {
            return Err(at("the id occurs twice among the validation samples".into()));
        }
        val.images_of(i)?;
    }
    Ok(())
}

fn val_indices(n: usize, k: usize) -> Vec<usize> {
    let k = k.min(n);
    (0..k).map(|i| i * n / k.max(1)).collect()
}

/// Scores the validation samples; `None` when `stop()` turned true
/// between two of them (an interrupt cuts a validation short).
fn validate(
    model: &Calico,
    tok: &CalicoTokenizer,
    val: &Dataset,
    cfg: &TrainConfig,
    sim: &dyn Similarity,
    (run, workers): (&Path, usize),
    stop: &mut dyn FnMut() -> bool,
) -> Result<Option<TaskTable>> {
    let idx = val_indices(val.len(), cfg.val_samples);
    let opts = greedy(cfg.max_new_tokens);
    let mut preds = Vec::with_capacity(idx.len());
    // The samples are answered on the workers (with several, each runs its
    // kernels single-threaded); an interrupt is seen between two samples.
    let done = crate::workers::stream_ordered(
        0..idx.len(),
        workers,
        stop,
        |k| Ok(predict_sample(model, tok, val, idx[k], &opts)?.0),
        |_, p| {
            preds.push(p);
            Ok::<_, TrainError>(())
        },
        |k| format!("validation sample {}", val.samples[idx[k]].id),
    )?;
    if done < idx.len() {
        return Ok(None);
    }
    let gt: Vec<_> = idx.iter().map(|&i| val.samples[i].clone()).collect();
    let path = run.join(VAL_PREDICTIONS_FILE);
    let mut text = String::new();
    for p in &preds {
        text.push_str(&serde_json::to_string(p).map_err(|e| TrainError::Data(e.to_string()))?);
        text.push('\n');
    }
    write_atomic(&path, text.as_bytes()).map_err(|e| io(&path, e))?;
    let prepared = prepare(
        val.path(),
        &gt,
        &path,
        &preds,
        &EvalOptions { lenient: true },
    )
    .map_err(|e| TrainError::Data(e.to_string()))?;
    Ok(Some(score(&prepared, sim).0))
}

/// Stages 1 and 1b, as the config asks, each continued from its own
/// checkpoint when the run resumes inside it and skipped when its
/// checkpoint marks it done.
fn pretrain_stages(
    run: &Path,
    tc: &TrainConfig,
    model: &Calico,
    named: &[(String, Var)],
    data: (&Dataset, Option<&Dataset>),
    workers: usize,
    obs: &mut dyn Observer,
) -> Result<()> {
    // Stage 1b's checkpoints hold stage 1's results: with one, stage 1 is over.
    let masks = stage_checkpoint::latest(run, Stage::Masks)?;
    let stage_run = |resume| StageRun {
        seed: tc.seed,
        workers,
        checkpoints: Some(StageCheckpoints {
            run,
            every: tc.checkpoint_every,
            keep_last: tc.keep_last,
            named,
            resume,
        }),
    };
    if let (Some(vp), None) = (&tc.vision_pretrain, &masks) {
        let latest = stage_checkpoint::latest(run, Stage::Vision)?;
        if let StageStart::Run(resume) = stage_start(run, Stage::Vision, latest, named, obs)? {
            let summary =
                crate::pretrain::pretrain_vision(model, named, data, vp, stage_run(resume), obs)?;
            stage_checkpoint::save_done(run, Stage::Vision, named, (vp.steps, tc.seed), &summary)?;
            write_json(&run.join(Stage::Vision.summary_file()), &summary)?;
            if tc.mask_pretrain.is_some() && obs.stop_requested() {
                return Err(TrainError::Interrupted(format!(
                    "stopped after {}; {} is saved and --resume continues after it",
                    Stage::Vision.title(),
                    Stage::Vision.dir(run).display()
                )));
            }
        }
    }
    if let Some(mp) = &tc.mask_pretrain {
        if let StageStart::Run(resume) = stage_start(run, Stage::Masks, masks, named, obs)? {
            let summary = crate::mask_pretrain::pretrain_masks(
                model,
                named,
                data,
                (mp, &tc.loss),
                stage_run(resume),
                obs,
            )?;
            stage_checkpoint::save_done(run, Stage::Masks, named, (mp.steps, tc.seed), &summary)?;
            write_json(&run.join(Stage::Masks.summary_file()), &summary)?;
        }
    }
    Ok(())
}

/// What a run does with a pretraining stage.
enum StageStart {
    /// Run it, from this checkpoint if any.
    Run(Option<LoadedCheckpoint>),
    /// It finished before the resume: the model holds its results.
    Done,
}

/// Reads the stage's newest checkpoint `latest`: a finished stage's results
/// go into the model (and its summary file is written again), an
/// unfinished one is continued.
fn stage_start(
    run: &Path,
    stage: Stage,
    latest: Option<LoadedCheckpoint>,
    named: &[(String, Var)],
    obs: &mut dyn Observer,
) -> Result<StageStart> {
    let Some(ck) = latest else {
        return Ok(StageStart::Run(None));
    };
    match stage_checkpoint::done_summary(&ck) {
        Some(summary) => {
            let what = format!("{}'s final checkpoint", stage.title());
            stage_checkpoint::restore_vars(named, &ck.trainable, &what)?;
            write_json(&run.join(stage.summary_file()), &summary)?;
            obs.message(&format!("{} was done before the resume", stage.title()));
            Ok(StageStart::Done)
        }
        None => {
            obs.message(&format!(
                "resuming {} of {} after its step {}",
                stage.title(),
                run.display(),
                ck.state.step
            ));
            Ok(StageStart::Run(Some(ck)))
        }
    }
}

/// What a run started from, beside its settings (`RUN/start.json`; only
/// for runs started from `--weights`).
#[derive(Debug, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Start {
    /// The weights directory, absolute.
    weights: PathBuf,
    /// `--quantized-llm`'s matmul (`dequantize` or `q8`), when the LLM was
    /// kept quantised.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    quantized_llm: Option<String>,
}

/// A resumed run's `RUN/start.json` (`None` for a new run, or one that
/// started from random weights).
fn recorded_start(spec: &RunSpec) -> Result<Option<Start>> {
    if spec.resume {
        read_record(&spec.run_dir, START_FILE)
    } else {
        Ok(None)
    }
}

/// Whether the run keeps its LLM quantised: `spec.quantized_llm` for a new
/// run; for a resumed one, what it started with, which the flag may repeat
/// but not change. Refused without a weights directory or with
/// `trainable: "all"` (the quantised weights cannot be variables).
fn start_llm(
    spec: &RunSpec,
    weights: Option<&Path>,
    trainable: TrainableSet,
) -> Result<Option<QuantizedMatmul>> {
    let llm = if let Some(start) = recorded_start(spec)? {
        let recorded = match start.quantized_llm {
            Some(m) => Some(m.parse::<QuantizedMatmul>().map_err(|e| {
                TrainError::Config(format!(
                    "{}: quantized_llm: {e}",
                    spec.run_dir.join(START_FILE).display()
                ))
            })?),
            None => None,
        };
        match (recorded, spec.quantized_llm) {
            (None, Some(_)) => {
                return Err(TrainError::Config(format!(
                    "{}: this run trains over the LLM's float weights; resume it without \
                     --quantized-llm",
                    spec.run_dir.display()
                )))
            }
            (Some(r), Some(g)) if r != g => {
                return Err(TrainError::Config(format!(
                    "{}: this run keeps its LLM quantized with `--quantized-llm {}`; resume \
                     it with that value or without the flag",
                    spec.run_dir.display(),
                    r.name()
                )))
            }
            (r, _) => r,
        }
    } else {
        spec.quantized_llm
    };
    if llm.is_some() {
        if weights.is_none() {
            return Err(TrainError::Config(
                "--quantized-llm needs --weights DIR whose LLM is a GGUF file (random \
                 weights are float tensors)"
                    .into(),
            ));
        }
        if trainable == TrainableSet::All {
            return Err(TrainError::Config(
                "--quantized-llm keeps the LLM's weights frozen in their quantized blocks, but \
                 `trainable: \"all\"` (the tiny presets' default) trains every tensor; set \
                 `\"trainable\": \"paper\"` in --config, or train without --quantized-llm"
                    .into(),
            ));
        }
    }
    Ok(llm)
}

/// The weights directory the run starts from: `spec.weights` (made
/// absolute) for a new run; for a resumed one, the directory it started
/// from, which `spec.weights` may repeat but not change.
fn start_weights(spec: &RunSpec) -> Result<Option<PathBuf>> {
    let given = match &spec.weights {
        Some(w) => Some(
            std::fs::canonicalize(w)
                .map_err(|e| TrainError::Config(format!("--weights {}: {e}", w.display())))?,
        ),
        None => None,
    };
    if !spec.resume {
        return Ok(given);
    }
    let recorded = recorded_start(spec)?.map(|s| s.weights);
    match (recorded, given) {
        (None, Some(w)) => Err(TrainError::Config(format!(
            "{}: this run started from seeded random weights, not from {}; resume it \
             without --weights",
            spec.run_dir.display(),
            w.display()
        ))),
        (Some(r), Some(w)) if r != w => Err(TrainError::Config(format!(
            "{}: this run started from {}, not from {}; resume it without --weights \
             (or with the same directory)",
            spec.run_dir.display(),
            r.display(),
            w.display()
        ))),
        (recorded, _) => Ok(recorded),
    }
}

/// Trains (or resumes) a run; see the module docs.
pub fn train(spec: &RunSpec, sim: &dyn Similarity, obs: &mut dyn Observer) -> Result<Summary> {
    train_run(spec, sim, obs).map_err(|e| with_kept(e, &spec.run_dir))
}

/// The file a training process holds locked while it writes its run.
pub const LOCK_FILE: &str = "train.lock";

/// Locks `run` for this process (released when the file is dropped): two
/// processes writing one run would interleave their metrics and remove
/// each other's temporary files.
fn lock_run(run: &Path) -> Result<std::fs::File> {
    let path = run.join(LOCK_FILE);
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| io(&path, e))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(TrainError::Config(format!(
            "{} is in use: another `calico train` holds {}; wait for it to end or choose \
             another --out",
            run.display(),
            path.display()
        ))),
        Err(std::fs::TryLockError::Error(e)) => Err(io(&path, e)),
    }
}

/// Notes `freeze` prefixes that name no variable (a prefix may name a
/// module an ablation removed, DINOv2 without the CEM: said, not an error,
/// so one config serves every ablation) and a `freeze` that holds every
/// variable for the whole run (stage 2 then only exports the model).
fn note_freeze(tc: &TrainConfig, named: &[(String, Var)], obs: &mut dyn Observer) {
    for (i, f) in tc.freeze.iter().enumerate() {
        for p in &f.prefixes {
            if !named.iter().any(|(n, _)| n.starts_with(p.as_str())) {
                obs.message(&format!(
                    "note: freeze[{i}] prefix `{p}` names no trained variable of this model"
                ));
            }
        }
    }
    let held_throughout = |n: &str| {
        tc.freeze.iter().any(|f| {
            f.until_step.is_none_or(|u| u >= tc.total_steps())
                && f.prefixes.iter().any(|p| n.starts_with(p.as_str()))
        })
    };
    if !tc.freeze.is_empty() && named.iter().all(|(n, _)| held_throughout(n)) {
        obs.message(&format!(
            "note: freeze holds all {} trained variables for the whole run, so stage 2 changes \
             no weight (stages 1 and 1b still train); narrow its prefixes or give an until_step \
             below the run's {} steps to train them",
            named.len(),
            tc.total_steps()
        ));
    }
}

/// What a run directory may hold when a run starts afresh in it: the
/// files of a run that never reached its first checkpoint (started again
/// from scratch), nothing else. A directory holding anything more (a
/// weights directory, other work) is not overwritten.
fn check_fresh_out(run: &Path) -> Result<()> {
    let Ok(entries) = std::fs::read_dir(run) else {
        return Ok(());
    };
    const RUN_ENTRIES: [&str; 18] = [
        TRAIN_CONFIG_FILE,
        MODEL_CONFIG_FILE,
        TOKENIZER_FILE,
        "tokenizer_config.json",
        FROZEN_FILE,
        START_FILE,
        DATA_FILE,
        VALIDATION_FILE,
        MACHINE_FILE,
        LOCK_FILE,
        "feature_cache",
        CHECKPOINTS_DIR,
        METRICS_FILE,
        CURVE_FILE,
        VAL_PREDICTIONS_FILE,
        PRETRAIN_FILE,
        MASK_PRETRAIN_FILE,
        BEST_DIR,
    ];
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        // Dot files: temporary files of a killed run, or the system's.
        if !name.starts_with('.') && !RUN_ENTRIES.contains(&name.as_str()) {
            return Err(TrainError::Config(format!(
                "--out {}: the directory holds `{name}`, which is not part of a training run; \
                 choose a new or empty --out (or pass --resume to continue a run)",
                run.display()
            )));
        }
    }
    Ok(())
}

/// Removes what a killed export left in `run` (see [`export`]).
fn remove_export_leftovers(run: &Path) {
    let Ok(entries) = std::fs::read_dir(run) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let leftover = [MODEL_DIR, BEST_DIR].iter().any(|d| {
            name.starts_with(&format!(".{d}.tmp-")) || name.starts_with(&format!(".{d}.old-"))
        });
        if leftover {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

fn train_run(spec: &RunSpec, sim: &dyn Similarity, obs: &mut dyn Observer) -> Result<Summary> {
    let device = Device::Cpu;
    let run = &spec.run_dir;
    let (tc, cfg) = if spec.resume {
        if !run.join(TRAIN_CONFIG_FILE).is_file() {
            return Err(TrainError::Config(format!(
                "{}: no run to resume (no {TRAIN_CONFIG_FILE}); start without --resume",
                run.display()
            )));
        }
        let tc: TrainConfig = read_json(&run.join(TRAIN_CONFIG_FILE))?;
        let cfg = CalicoConfig::from_json_file(&run.join(MODEL_CONFIG_FILE))
            .map_err(|e| TrainError::Config(e.to_string()))?;
        (tc, cfg)
    } else {
        (spec.config.clone(), spec.model.clone())
    };
    tc.validate()
        .map_err(|e| TrainError::Config(format!("training config: {e}")))?;
    // A run killed inside stage 1 or 1b has only the stage's checkpoints.
    let latest = latest_checkpoint(run)?;
    let mut in_stage = false;
    for s in [Stage::Vision, Stage::Masks] {
        in_stage |= latest_checkpoint_in(&s.dir(run))?.is_some();
    }
    let damaged = incomplete_checkpoints_in(&run.join(CHECKPOINTS_DIR));
    let resume_from = if spec.resume {
        if latest.is_none() && !in_stage {
            let names: Vec<String> = damaged.iter().map(|d| d.display().to_string()).collect();
            return Err(TrainError::Config(if names.is_empty() {
                format!(
                    "{}: no checkpoint to resume from (start without --resume)",
                    run.display()
                )
            } else {
                format!(
                    "{}: no complete checkpoint to resume from: {} {} damaged (a checkpoint \
                     needs trainable.safetensors and optimizer.safetensors whole and a readable \
                     state.json); restore {} from a backup, or start a new run in another --out",
                    run.display(),
                    names.join(", "),
                    if names.len() == 1 { "is" } else { "are" },
                    if names.len() == 1 { "it" } else { "them" }
                )
            }));
        }
        if let Some(at) = latest.as_deref().and_then(checkpoint_step) {
            for d in damaged.iter().filter(|d| checkpoint_step(d) > Some(at)) {
                obs.message(&format!(
                    "note: {} is damaged and skipped; resuming from step {at}",
                    d.display()
                ));
            }
        }
        latest
    } else {
        if in_stage || latest.is_some() {
            return Err(TrainError::Config(format!(
                "{} already holds a run; pass --resume to continue it or choose another --out",
                run.display()
            )));
        }
        None
    };
    let train_ds = data::open(&spec.train, &cfg)?;
    let samples = SamplesRecord::of(&spec.train, train_ds.len())?;
    let recorded_samples = run.join(DATA_FILE);
    // Runs from before the record have none to compare with.
    if spec.resume && recorded_samples.is_file() {
        let recorded: SamplesRecord = read_json(&recorded_samples)?;
        samples.check_resume(&recorded, &spec.train)?;
    }
    let val_ds = match &spec.val {
        Some(v) => Some(data::open(v, &cfg)?),
        None => None,
    };
    if let (Some(m), None) = (tc.keep_best, &val_ds) {
        return Err(TrainError::Config(format!(
            "keep_best \"{}\" keeps the weights of the best validation, and the run has no \
             --val samples to validate on",
            m.name()
        )));
    }
    let validation = ValidationRecord {
        samples: match (&spec.val, &val_ds) {
            (Some(p), Some(v)) => Some(SamplesRecord::of(p, v.len())?),
            _ => None,
        },
        similarity: spec.similarity.clone(),
    };
    if spec.resume {
        if let Some(recorded) = ValidationRecord::read(run)? {
            validation.check_resume(&recorded, spec.val.as_deref())?;
        }
    }
    let machine = MachineRecord::here();
    if spec.resume {
        // Only informative: an unreadable record does not stop the run.
        match MachineRecord::read(run) {
            Ok(Some(started)) => {
                if let Some(note) = machine.resume_note(&started) {
                    obs.message(&note);
                }
            }
            Ok(None) => {}
            Err(e) => obs.message(&format!(
                "note: {e}; the record of the machine this run started on is unreadable, so \
                 whether this one rounds like it is not known"
            )),
        }
    }
    let weights = start_weights(spec)?;
    let quantized_llm = start_llm(spec, weights.as_deref(), tc.trainable)?;
    let spec_eff = RunSpec {
        config: tc.clone(),
        weights,
        quantized_llm,
        ..spec.clone()
    };
    let Setup {
        mut model,
        vars,
        frozen,
        tok,
        llm_note,
    } = if spec.resume && spec_eff.weights.is_none() {
        // The tokenizer of the run, not one rebuilt from the data.
        let mut tok = CalicoTokenizer::from_file(run.join(TOKENIZER_FILE)).map_err(|e| {
            TrainError::Data(format!(
                "--resume: {e} (the run's tokenizer, written when it started; its checkpoints \
                 hold token ids of that tokenizer only)"
            ))
        })?;
        let special = tok.add_calico_tokens(None)?;
        let b = build_random(&cfg, special, tc.trainable, tc.seed, &device)?;
        Setup {
            model: b.model,
            vars: b.vars,
            frozen: b.frozen,
            tok,
            llm_note: None,
        }
    } else {
        setup(&spec_eff, &cfg, &train_ds, &device)?
    };
    if let Some(note) = &llm_note {
        obs.message(note);
    }
    let named = named_vars(&vars);
    for note in tc.notes(spec.val.is_some()) {
        obs.message(&note);
    }
    note_freeze(&tc, &named, obs);
    // Stages that cannot run are refused before anything is written.
    if resume_from.is_none() {
        if let Some(v) = &tc.vision_pretrain {
            crate::pretrain::check_can_run(v, &named, &train_ds)?;
        }
        if tc.mask_pretrain.is_some() {
            crate::mask_pretrain::check_can_run(&named, &train_ds)?;
        }
    }
    // Every sample is checked before the run directory is touched: a bad
    // line stops the run now, not when an epoch reaches it.
    // Only training answers are targets: a validation answer may hold words
    // the model cannot say.
    let sets = std::iter::once((&train_ds, true)).chain(val_ds.as_ref().map(|v| (v, false)));
    for (ds, targets) in sets {
        let (images, masks) =
            ds.check(&tok, model.special_ids(), model.prompt_format(), targets)?;
        obs.message(&format!(
            "{}: {} samples checked ({images} images, {masks} masks)",
            ds.path().display(),
            ds.len()
        ));
    }
    if let (Some(v), true) = (&val_ds, tc.val_samples > 0) {
        check_validation_samples(v, &val_indices(v.len(), tc.val_samples))?;
    }
    if !spec.resume {
        check_fresh_out(run)?;
    }
    if let (Some(dir), TrainableSet::Paper) = (&spec.feature_cache, tc.trainable) {
        std::fs::create_dir_all(dir)
            .map_err(|e| TrainError::Config(format!("--feature-cache {}: {e}", dir.display())))?;
    }
    obs.run_starts();
    // Durably: stage checkpoints sync only the run directory and below.
    create_dir_durably(run).map_err(|e| {
        let e = match e {
            CheckpointError::Io { path, source } if path == *run => source.to_string(),
            e => e.to_string(),
        };
        TrainError::Config(format!(
            "--out {}: cannot create the run directory: {e}",
            run.display()
        ))
    })?;
    let _lock = lock_run(run)?;
    remove_export_leftovers(run);
    let mut feature_cache = None;
    if tc.trainable == TrainableSet::Paper {
        let dir = spec
            .feature_cache
            .clone()
            .unwrap_or_else(|| run.join("feature_cache"));
        let cache = FeatureCache::on_disk(&dir)
            .map_err(|e| TrainError::Config(format!("the feature cache {}: {e}", dir.display())))?;
        let cache = std::sync::Arc::new(cache);
        model.set_feature_cache(Some(cache.clone())).map_err(|e| {
            TrainError::Model(e.context("fingerprinting the frozen encoders' weights"))
        })?;
        feature_cache = Some((cache, dir));
    } else if let Some(dir) = &spec.feature_cache {
        obs.message(&format!(
            "note: --feature-cache {} is not used: with \"trainable\": \"all\" the encoders \
             train, so their features change every step",
            dir.display()
        ));
    }
    let mut cache_warned = false;
    let format = model.prompt_format().clone();
    let special = *model.special_ids();
    if !spec.resume {
        write_json(&run.join(TRAIN_CONFIG_FILE), &tc)?;
        write_json(&run.join(MODEL_CONFIG_FILE), &cfg)?;
        let p = run.join(TOKENIZER_FILE);
        let json = tok
            .inner()
            .to_string(true)
            .map_err(|e| TrainError::Data(format!("serialising the tokenizer: {e}")))?;
        write_atomic(&p, json.as_bytes()).map_err(|e| io(&p, e))?;
        let p = run.join("tokenizer_config.json");
        write_json(&p, &tok.config_json())?;
        if let Some(w) = &spec_eff.weights {
            let start = Start {
                weights: w.clone(),
                quantized_llm: spec_eff.quantized_llm.map(|m| m.name().to_string()),
            };
            write_json(&run.join(START_FILE), &start)?;
        }
        write_json(&recorded_samples, &samples)?;
        write_json(&run.join(VALIDATION_FILE), &validation)?;
        write_json(&run.join(MACHINE_FILE), &machine)?;
        if !frozen.is_empty() {
            let p = run.join(FROZEN_FILE);
            let bytes = calico_model::calico::weights::safetensors_bytes(&frozen)
                .map_err(|e| TrainError::Data(e.to_string()))?;
            write_atomic(&p, &bytes).map_err(|e| io(&p, e))?;
        }
    }
    let mut opt = AdamW::new(named.clone(), tc.optimizer)?;
    let mut start = 0u64;
    if let Some(dir) = &resume_from {
        let ck = load_checkpoint(dir)?;
        restore_vars(&named, &ck.trainable, &dir.display().to_string())?;
        opt.load_state(&ck.optimizer, ck.state.optimizer_steps)?;
        start = ck.state.step;
        if start >= tc.total_steps() {
            obs.message(&format!(
                "{} finished its {start} steps: nothing left to train; writing its model/ again",
                run.display()
            ));
        } else {
            obs.message(&format!("resuming {} at step {start}", run.display()));
        }
        // A kill between the step-0 checkpoint and the stages' clean-up
        // leaves their checkpoints behind; the step checkpoint supersedes them.
        stage_checkpoint::remove_all(run);
    }
    if resume_from.is_none() {
        pretrain_stages(
            run,
            &tc,
            &model,
            &named,
            (&train_ds, val_ds.as_ref()),
            spec.workers.max(1),
            obs,
        )?;
        if tc.vision_pretrain.is_some() || tc.mask_pretrain.is_some() {
            // A checkpoint at step 0, so that --resume never repeats them.
            save_checkpoint(
                run,
                &var_tensors(&named),
                &opt.state_tensors(),
                &TrainState {
                    step: 0,
                    epoch: 0,
                    samples_seen: 0,
                    seed: tc.seed,
                    optimizer_steps: opt.steps(),
                    config: serde_json::to_value(&tc).unwrap_or_default(),
                    extra: serde_json::json!({"stage": "after pretraining"}),
                },
                tc.keep_last,
            )?;
            stage_checkpoint::remove_all(run);
            if obs.stop_requested() {
                return Err(TrainError::Interrupted(
                    "stopped after the pretraining stages, before step 1; the step-0 \
                     checkpoint is saved and --resume continues from it"
                        .into(),
                ));
            }
        }
    }
    let total = tc.total_steps();
    let schedule = LrSchedule {
        base_lr: tc.optimizer.lr,
        warmup_steps: tc.warmup_steps,
        total_steps: total,
    };
    let mut log = MetricsLog::open(run, resume_from.as_ref().map(|_| start))
        .map_err(|e| TrainError::Data(e.to_string()))?;
    let mut order = Order::new(tc.seed, train_ds.len());
    let per_step = (tc.batch_size * tc.grad_accumulation) as u64;
    let t0 = Instant::now();
    let elapsed_before = log
        .records()
        .iter()
        .rev()
        .find_map(|r| match r {
            Record::Train(t) => Some(t.elapsed_s),
            _ => None,
        })
        .unwrap_or(0.0);
    let mut last = None;
    let mut validation = None;
    let exporter = Export {
        cfg: &cfg,
        frozen: &frozen,
        vars: &vars,
        tok: &tok,
        // With every tensor trained, the run's own files hold them all:
        // none of `--weights`' files is named as a source.
        weights: match tc.trainable {
            TrainableSet::Paper => spec_eff.weights.as_deref(),
            TrainableSet::All => None,
        },
    };
    // A run started afresh drops the best weights of the attempt it
    // replaces; a resumed one replays its validations.
    let mut choice = match (tc.keep_best, &resume_from) {
        (Some(m), Some(_)) => Choice::replayed(m, log.records()),
        _ => Choice::default(),
    };
    if resume_from.is_none() {
        let dir = run.join(BEST_DIR);
        if dir.exists() {
            std::fs::remove_dir_all(&dir).map_err(|e| io(&dir, e))?;
        }
    }
    let patience_spent = |c: &Choice| tc.early_stop_patience.is_some_and(|p| c.since_best >= p);
    // Resumed after it stopped early, the run has nothing left to train.
    let mut stopped_early = start < total && patience_spent(&choice);
    if stopped_early {
        obs.message(&format!(
            "the run stopped early at step {start} (early_stop_patience); nothing is left to \
             train"
        ));
    }
    let stop_at = spec
        .stop_after
        .map(|n| start.saturating_add(n).min(total))
        .unwrap_or(total);
    let mut step = start;
    let mut train_files: Option<Vec<String>> = None;
    // Whatever ends the loop, the stem is left on its running statistics.
    let _sam_inference_after = InferenceOnDrop(model.sam_stem());
    while step < stop_at && !stopped_early {
        let mut acc = GradAccumulator::new();
        let (mut text, mut focal, mut dice, mut loss) = (0.0, 0.0, 0.0, 0.0);
        // (sample, images swapped) of each micro-batch; the worker that
        // computes a micro-batch reads its examples, so the other cores do
        // not wait for one to read them all.
        let picks: Vec<Vec<(usize, bool)>> = (0..tc.grad_accumulation as u64)
            .map(|micro| {
                let first = (step * tc.grad_accumulation as u64 + micro) * tc.batch_size as u64;
                (first..first + tc.batch_size as u64)
                    .map(|k| {
                        let (i, swap) = order.at(k);
                        (i, tc.image_swap && swap)
                    })
                    .collect()
            })
            .collect();
        let examples_of = |micro: usize| -> Result<Vec<Example>> {
            picks[micro]
                .iter()
                .map(|&(i, swap)| train_ds.example(i, swap, &tok, &special, &format))
                .collect()
        };
        // While `freeze` holds every variable of the global encoders, or of
        // SAM's image encoder (as the paper's recipe holds it), their
        // outputs are detached: no backward pass through them.
        model.set_global_encoders_frozen(freeze_holds_all(
            &named,
            &tc,
            step + 1,
            &crate::pretrain::GLOBAL_ENCODERS,
        ));
        model.set_sam_encoder_frozen(freeze_holds_all(
            &named,
            &tc,
            step + 1,
            &[crate::pretrain::SAM_ENCODER],
        ));
        // SAM's conv stem normalises with batch statistics while it trains.
        let sam_stem_trains = sam_stem_trains_at(&model, &named, &tc, step + 1);
        if let Some(s) = model.sam_stem() {
            s.set_batch_statistics(sam_stem_trains);
        }
        let outcomes = micro_batch_gradients(
            &model,
            &named,
            &examples_of,
            &tok,
            &tc,
            step,
            spec.workers.max(1),
        )?;
        for (micro, o) in outcomes.into_iter().enumerate() {
            let MicroOutcome {
                text: t,
                focal: f,
                dice: d,
                total: total_v,
                grads,
            } = o;
            for (what, v) in [("text", t), ("focal", f), ("dice", d), ("total", total_v)] {
                finite_or_stop(step + 1, &format!("{what} loss (micro-batch {micro})"), v)?;
            }
            acc.add(&named, &grads)?;
            let m = tc.grad_accumulation as f64;
            text += t / m;
            focal += f / m;
            dice += d / m;
            loss += total_v / m;
        }
        let mut grads = acc.mean()?;
        if !tc.freeze.is_empty() {
            grads.retain(|name, _| !tc.frozen_at(step + 1, name));
        }
        let norm = clip_grad_norm(&mut grads, tc.max_grad_norm)?;
        finite_or_stop(step + 1, "gradient norm", norm)?;
        // Update k (0-based) uses the schedule's value after k + 1 steps, so
        // the first update already has a non-zero learning rate.
        let lr = schedule.lr_at(step + 1);
        opt.step(&grads, lr)?;
        updated_weights_finite(step + 1, &named, "")?;
        step += 1;
        let done = step - start;
        let secs = t0.elapsed().as_secs_f64();
        let rate = done as f64 / secs.max(1e-9);
        let record = TrainRecord {
            step,
            epoch: (step - 1) / tc.steps_per_epoch,
            loss,
            text,
            focal,
            dice,
            lr,
            grad_norm: norm,
            steps_per_s: rate,
            elapsed_s: elapsed_before + secs,
        };
        log.append(&Record::Train(record.clone()))
            .map_err(|e| TrainError::Data(e.to_string()))?;
        obs.step(&Progress {
            step,
            total,
            record: record.clone(),
            eta_s: (stop_at - step) as f64 / rate.max(1e-9),
        });
        last = Some(record);
        let val_due = tc.val_samples > 0
            && (tc.validate_every > 0 && step.is_multiple_of(tc.validate_every) || step == total);
        // Validation and the exported model read SAM's stem with running
        // statistics measured now; the next step switches back.
        if sam_stem_trains && (step == total || val_due && val_ds.is_some()) {
            let files = train_files.get_or_insert_with(|| crate::stem::image_files(&train_ds));
            crate::stem::calibrate(Tower::Sam, &model, &named, &train_ds, files, obs)?;
        }
        if let (true, Some(v)) = (val_due, &val_ds) {
            obs.message(&format!("validating on {} samples", cfg_val(&tc, v)));
            // An interrupt cuts a validation short (not the run's last one):
            // the step's checkpoint follows at once, without its scores.
            let last_one = step == stop_at;
            let mut stop = || !last_one && obs.stop_requested();
            match validate(&model, &tok, v, &tc, sim, (run, spec.workers), &mut stop)? {
                Some(table) => {
                    obs.validation(step, &table);
                    let record = ValRecord::from_table(
                        step,
                        elapsed_before + t0.elapsed().as_secs_f64(),
                        &table,
                    );
                    log.append(&Record::Val(record.clone()))
                        .map_err(|e| TrainError::Data(e.to_string()))?;
                    validation = Some(table);
                    let new_best = tc.keep_best.and_then(|m| choice.validated(m, &record));
                    if let Some(b) = new_best {
                        let json = serde_json::to_vec_pretty(&b)
                            .map_err(|e| TrainError::Data(e.to_string()))?;
                        exporter.write(run, BEST_DIR, &[(BEST_FILE, json)])?;
                        obs.message(&format!(
                            "best validation so far ({} {:.1}): {}",
                            b.metric.name(),
                            b.score,
                            run.join(BEST_DIR).display()
                        ));
                    }
                    if step < total && patience_spent(&choice) {
                        stopped_early = true;
                        obs.message(&format!(
                            "stopping early: {} validations without a better {} \
                             (early_stop_patience)",
                            choice.since_best,
                            tc.keep_best.map_or("score", |m| m.name())
                        ));
                    }
                }
                None => obs.message(&format!(
                    "the validation at step {step} was cut short by the interrupt; its scores \
                     are not recorded"
                )),
            }
        }
        if let Some((cache, dir)) = feature_cache.as_ref().filter(|_| !cache_warned) {
            if let Some(e) = cache.first_write_error() {
                obs.message(&format!(
                    "warning: the feature cache {} cannot be written ({e}); features are kept \
                     in memory instead, for this run only",
                    dir.display()
                ));
                cache_warned = true;
            }
        }
        // Asked to stop (Ctrl-C), the run checkpoints this step and ends.
        let interrupted = step < stop_at && obs.stop_requested();
        if step.is_multiple_of(tc.checkpoint_every)
            || step == stop_at
            || interrupted
            || stopped_early
        {
            log.sync().map_err(|e| TrainError::Data(e.to_string()))?;
            let state = TrainState {
                step,
                epoch: (step - 1) / tc.steps_per_epoch,
                samples_seen: step * per_step,
                seed: tc.seed,
                optimizer_steps: opt.steps(),
                config: serde_json::to_value(&tc).unwrap_or_default(),
                extra: serde_json::json!({
                    "rng": "ChaCha8 streams derived from (seed, step, micro-batch); nothing to save",
                    "trainable": tc.trainable,
                }),
            };
            let saved = save_checkpoint(
                run,
                &var_tensors(&named),
                &opt.state_tensors(),
                &state,
                tc.keep_last,
            )?;
            plot::write_curve(run, log.records(), choice.best.as_ref())
                .map_err(|e| TrainError::Data(e.to_string()))?;
            if interrupted {
                return Err(TrainError::Interrupted(format!(
                    "stopped after step {step} of {total}; {} is saved and --resume continues \
                     from it",
                    saved.display()
                )));
            }
        }
    }
    let mut model_dir = None;
    if step == total || stopped_early {
        exporter.write(run, MODEL_DIR, &[])?;
        model_dir = Some(run.join(MODEL_DIR));
    }
    Ok(Summary {
        steps: step,
        elapsed_s: elapsed_before + t0.elapsed().as_secs_f64(),
        last,
        validation,
        model_dir,
        best: choice.best,
        stopped_early,
        quantized_llm: spec_eff.quantized_llm,
    })
}

/// One micro-batch's loss components and gradients.
struct MicroOutcome {
    text: f64,
    focal: f64,
    dice: f64,
    total: f64,
    grads: candle_core::backprop::GradStore,
}

fn micro_outcome(
    model: &Calico,
    named: &[(String, Var)],
    examples: &[Example],
    tok: &CalicoTokenizer,
    tc: &TrainConfig,
    step: u64,
    micro: usize,
) -> Result<MicroOutcome> {
    let mut rng = ChaCha8Rng::seed_from_u64(mix(&[tc.seed, 3, step, micro as u64]));
    let l = batch_loss(model, examples, tok, &tc.loss, Some(&mut rng))?;
    let total = l
        .total
        .to_dtype(candle_core::DType::F64)?
        .to_scalar::<f64>()?;
    // A non-finite loss is reported by the caller; its gradients are not used.
    let grads = if total.is_finite() {
        var_grads(l.total.backward()?, named)
    } else {
        candle_core::backprop::GradStore::default()
    };
    Ok(MicroOutcome {
        text: l.text,
        focal: l.focal,
        dice: l.dice,
        total,
        grads,
    })
}

/// Losses and gradients of a step's `grad_accumulation` micro-batches
/// (micro-batch `m`'s examples from `examples_of(m)`), in micro-batch order.
/// With `workers > 1` the micro-batches run on that many threads at once
/// (micro-batch `m` on worker `m mod workers`, which also reads its
/// examples); each one's examples, computation and random stream depend
/// only on `(seed, step, m)`, and the caller adds the gradients in
/// micro-batch order, so the result does not depend on `workers`.
fn micro_batch_gradients(
    model: &Calico,
    named: &[(String, Var)],
    examples_of: &(dyn Fn(usize) -> Result<Vec<Example>> + Sync),
    tok: &CalicoTokenizer,
    tc: &TrainConfig,
    step: u64,
    workers: usize,
) -> Result<Vec<MicroOutcome>> {
    crate::workers::map_ordered(
        tc.grad_accumulation,
        workers,
        |m| micro_outcome(model, named, &examples_of(m)?, tok, tc, step, m),
        |m| format!("micro-batch {m} of step {}", step + 1),
    )
}

/// Whether `freeze` holds, at `step` (1-based), every variable whose name
/// starts with one of `prefixes` (false when the run freezes nothing).
fn freeze_holds_all(
    named: &[(String, Var)],
    tc: &TrainConfig,
    step: u64,
    prefixes: &[&str],
) -> bool {
    !tc.freeze.is_empty()
        && named
            .iter()
            .filter(|(n, _)| prefixes.iter().any(|p| n.starts_with(p)))
            .all(|(n, _)| tc.frozen_at(step, n))
}

/// Whether SAM's conv stem trains at `step` (1-based): the model has one
/// and its weights are trainable and not held by `freeze`.
fn sam_stem_trains_at(
    model: &Calico,
    named: &[(String, Var)],
    tc: &TrainConfig,
    step: u64,
) -> bool {
    model.sam_stem().is_some()
        && named.iter().any(|(n, _)| {
            n.starts_with(Tower::Sam.prefix()) && !n.contains(".running_") && !tc.frozen_at(step, n)
        })
}

fn cfg_val(tc: &TrainConfig, v: &Dataset) -> usize {
    tc.val_samples.min(v.len())
}

/// What a weights directory of the run is written from: the model config,
/// the frozen tensors made at random (if any), every trained tensor and the
/// tokenizer; a run that started from `--weights` lists that directory's
/// files in `sources.json` instead of copying them.
struct Export<'a> {
    cfg: &'a CalicoConfig,
    frozen: &'a HashMap<String, Tensor>,
    vars: &'a VarMap,
    tok: &'a CalicoTokenizer,
    weights: Option<&'a Path>,
}

impl Export<'_> {
    /// Writes `RUN/<name>/` (`model`, the final weights, or `best`), with
    /// `extra` files beside the weights. The files are written to a
    /// temporary directory that replaces the old one by renames, so a kill
    /// leaves either the previous directory or none, never a partial one
    /// (the next start removes the leftovers).
    fn write(&self, run: &Path, name: &str, extra: &[(&str, Vec<u8>)]) -> Result<()> {
        let pid = std::process::id();
        let tmp = run.join(format!(".{name}.tmp-{pid}"));
        if tmp.exists() {
            std::fs::remove_dir_all(&tmp).map_err(|e| io(&tmp, e))?;
        }
        self.write_files(&tmp)?;
        for (file, bytes) in extra {
            let path = tmp.join(file);
            write_atomic(&path, bytes).map_err(|e| io(&path, e))?;
        }
        let dir = run.join(name);
        let old = run.join(format!(".{name}.old-{pid}"));
        if dir.exists() {
            std::fs::rename(&dir, &old).map_err(|e| io(&dir, e))?;
        }
        std::fs::rename(&tmp, &dir).map_err(|e| io(&dir, e))?;
        if let Ok(d) = std::fs::File::open(run) {
            d.sync_all().map_err(|e| io(run, e))?;
        }
        if old.exists() {
            std::fs::remove_dir_all(&old).map_err(|e| io(&old, e))?;
        }
        Ok(())
    }

    /// The weights directory's own files, written into `dir`.
    fn write_files(&self, dir: &Path) -> Result<()> {
        save_dir(dir, self.cfg, self.frozen, self.vars, Some(self.tok))
            .map_err(|e| TrainError::Data(e.to_string()))?;
        if let Some(w) = self.weights {
            use calico_model::calico::weights::{sources_for_export, SOURCES_FILE};
            let mut own: std::collections::BTreeSet<String> = self.frozen.keys().cloned().collect();
            if let Ok(data) = self.vars.data().lock() {
                own.extend(data.keys().cloned());
            }
            let sources =
                sources_for_export(w, &own).map_err(|e| TrainError::Config(e.to_string()))?;
            write_json(&dir.join(SOURCES_FILE), &sources)?;
        }
        Ok(())
    }
}

/// Rebuilds a run's model from its directory and a checkpoint (for tests
/// and tools): the run's config and tokenizer, the seeded frozen tensors,
/// the checkpoint's trained ones.
pub fn load_run_checkpoint(run: &Path, checkpoint: &Path) -> Result<(Calico, CalicoTokenizer)> {
    let cfg = CalicoConfig::from_json_file(&run.join(MODEL_CONFIG_FILE))
        .map_err(|e| TrainError::Config(e.to_string()))?;
    let mut tok = CalicoTokenizer::from_file(run.join(TOKENIZER_FILE))?;
    let special = tok.add_calico_tokens(None)?;
    let ck = load_checkpoint(checkpoint)?;
    let map = VarMap::new();
    let mut all: HashMap<String, Tensor> = ck.trainable;
    let frozen = run.join(FROZEN_FILE);
    if frozen.is_file() {
        let t = candle_core::safetensors::load(&frozen, &Device::Cpu)?;
        all.extend(t);
    }
    into_vars(&map, &all)?;
    let model = build_over(&cfg, special, &map, &Device::Cpu)?;
    Ok((model, tok))
}

/// Mean of the last `n` training records' total losses (for summaries).
pub fn recent_loss(records: &[Record], n: usize) -> Option<f64> {
    let v: Vec<f64> = records
        .iter()
        .rev()
        .filter_map(|r| match r {
            Record::Train(t) => Some(t.loss),
            _ => None,
        })
        .take(n)
        .collect();
    (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64)
}
