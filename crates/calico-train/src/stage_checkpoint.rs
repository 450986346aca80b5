//! Checkpoints inside the pretraining stages, so that `--resume` after a
//! kill in stage 1 (`vision_pretrain`) or stage 1b (`mask_pretrain`)
//! continues the stage where it stopped instead of starting the run over.
//!
//! ```text
//! RUN/checkpoints/stage1/step-00000300/…    stage 1 every checkpoint_every of its steps
//! RUN/checkpoints/stage1b/step-00000300/…   stage 1b likewise
//! ```
//!
//! Each is an ordinary checkpoint ([`crate::checkpoint`]: written to a
//! temporary directory, fsynced, renamed, then `latest`): every model
//! variable of the run, the stage's own variables (stage 1's heads, stage
//! 1b's label prompts), the stage's AdamW moments and, in `state.json`, the
//! stage's step, its recent losses and its elapsed time. A stage draws
//! nothing at random after its set-up (its images and flips are functions
//! of the seed and the image's index in the stream), so a resumed stage
//! gives the weights of an uninterrupted one bit for bit.
//!
//! When a stage ends, the trainer saves it once more, marked done and
//! holding the stage's summary (`RUN/pretrain.json` or
//! `RUN/mask_pretrain.json`), with the variables as the stage left them
//! (stems calibrated). Once the run's step-0 checkpoint is in place the
//! stage checkpoints are no longer needed and are removed.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{Tensor, Var};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::checkpoint::{
    latest_checkpoint_in, load_checkpoint, save_checkpoint_in, LoadedCheckpoint, TrainState,
    CHECKPOINTS_DIR,
};
use crate::pretrain::StageOptimizer;
use crate::TrainError;

type Result<T> = std::result::Result<T, TrainError>;

/// A pretraining stage that checkpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Stage 1, `vision_pretrain` ([`crate::pretrain`]).
    Vision,
    /// Stage 1b, `mask_pretrain` ([`crate::mask_pretrain`]).
    Masks,
}

impl Stage {
    /// The stage's folder under `RUN/checkpoints/`.
    pub fn dir_name(self) -> &'static str {
        match self {
            Stage::Vision => "stage1",
            Stage::Masks => "stage1b",
        }
    }

    /// The stage as messages name it.
    pub fn title(self) -> &'static str {
        match self {
            Stage::Vision => "stage 1",
            Stage::Masks => "stage 1b",
        }
    }

    /// The stage's summary in the run directory.
    pub fn summary_file(self) -> &'static str {
        match self {
            Stage::Vision => crate::trainer::PRETRAIN_FILE,
            Stage::Masks => crate::trainer::MASK_PRETRAIN_FILE,
        }
    }

    /// `RUN/checkpoints/<stage>`.
    pub fn dir(self, run: &Path) -> PathBuf {
        run.join(CHECKPOINTS_DIR).join(self.dir_name())
    }
}

/// How a pretraining stage runs: its seed, its threads and, in a run
/// directory, its checkpoints.
pub struct StageRun<'a> {
    /// The run's seed.
    pub seed: u64,
    /// Threads computing a step's slices (any number gives the same run).
    pub workers: usize,
    /// Where the stage saves its progress and what it resumes from;
    /// `None` saves nothing.
    pub checkpoints: Option<StageCheckpoints<'a>>,
}

impl StageRun<'_> {
    /// A stage that saves no checkpoints.
    pub fn new(seed: u64, workers: usize) -> Self {
        Self {
            seed,
            workers,
            checkpoints: None,
        }
    }
}

/// A stage's checkpoints in one run directory.
pub struct StageCheckpoints<'a> {
    /// The run directory.
    pub run: &'a Path,
    /// Which stage.
    pub stage: Stage,
    /// Save after every this many of the stage's steps.
    pub every: u64,
    /// Keep this many of the stage's checkpoints.
    pub keep_last: usize,
    /// Every model variable of the run (saved whole, so that a later stage
    /// resumes with the earlier stages' results).
    pub named: &'a [(String, Var)],
    /// The stage's checkpoint to continue from, if the run resumes in it.
    pub resume: Option<LoadedCheckpoint>,
}

/// What an unfinished stage saves besides tensors (`state.json`'s `extra`).
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
struct Progress<R> {
    stage: String,
    done: bool,
    /// The losses of the last steps, for the stage's messages and summary.
    recent: R,
    /// Seconds the stage has run so far, over all invocations.
    elapsed_s: f64,
}

/// Where a stage starts: at step 0, or where its checkpoint left it.
pub(crate) struct Resumed<R> {
    /// Steps already done.
    pub step: u64,
    /// Their recent losses.
    pub recent: R,
    /// Seconds spent on them.
    pub elapsed_s: f64,
}

/// Where the stage starts. Resuming, it sets the model's variables and
/// `opt`'s (the stage's heads among them) and its moments from the
/// checkpoint.
pub(crate) fn start<R: DeserializeOwned + Default>(
    checkpoints: Option<&StageCheckpoints>,
    opt: &mut StageOptimizer,
) -> Result<Resumed<R>> {
    let Some((c, ck)) = checkpoints.and_then(|c| Some((c, c.resume.as_ref()?))) else {
        return Ok(Resumed {
            step: 0,
            recent: R::default(),
            elapsed_s: 0.0,
        });
    };
    let what = format!("{} checkpoint at step {}", c.stage.title(), ck.state.step);
    restore_vars(c.named, &ck.trainable, &what)?;
    restore_vars(opt.vars(), &ck.trainable, &what)?;
    opt.load_state(&ck.optimizer, ck.state.optimizer_steps)?;
    let p: Progress<R> = serde_json::from_value(ck.state.extra.clone())
        .map_err(|e| TrainError::Data(format!("{what}: state.json's `extra`: {e}")))?;
    Ok(Resumed {
        step: ck.state.step,
        recent: p.recent,
        elapsed_s: p.elapsed_s,
    })
}

impl StageCheckpoints<'_> {
    /// Saves the stage after `done` of its `total` steps when a checkpoint
    /// is due (every `every` steps, not after the last: the trainer saves
    /// the finished stage with its summary).
    pub(crate) fn after_step<R: Serialize>(
        &self,
        (done, total): (u64, u64),
        seed: u64,
        opt: &StageOptimizer,
        recent: &R,
        elapsed_s: f64,
    ) -> Result<()> {
        if done % self.every.max(1) != 0 || done >= total {
            return Ok(());
        }
        let mut tensors = var_tensors(self.named);
        tensors.extend(var_tensors(opt.vars()));
        let progress = Progress {
            stage: self.stage.title().into(),
            done: false,
            recent,
            elapsed_s,
        };
        let state = TrainState {
            step: done,
            epoch: 0,
            samples_seen: 0,
            seed,
            optimizer_steps: opt.steps(),
            config: serde_json::Value::Null,
            extra: serde_json::to_value(&progress)
                .map_err(|e| TrainError::Data(format!("{}: progress: {e}", self.stage.title())))?,
        };
        save_checkpoint_in(
            &self.stage.dir(self.run),
            &tensors,
            &opt.state_tensors(),
            &state,
            self.keep_last,
        )?;
        Ok(())
    }
}

/// The finished stage's summary, as [`save_done`] stored it.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
struct Done {
    stage: String,
    done: bool,
    summary: serde_json::Value,
}

/// Saves a finished stage: every model variable as the stage left them and
/// its summary, so that a resumed run skips it.
pub(crate) fn save_done(
    run: &Path,
    stage: Stage,
    named: &[(String, Var)],
    steps: u64,
    seed: u64,
    summary: &impl Serialize,
) -> Result<()> {
    let summary = serde_json::to_value(summary)
        .map_err(|e| TrainError::Data(format!("{}: summary: {e}", stage.title())))?;
    let done = Done {
        stage: stage.title().into(),
        done: true,
        summary,
    };
    let state = TrainState {
        step: steps,
        epoch: 0,
        samples_seen: 0,
        seed,
        optimizer_steps: 0,
        config: serde_json::Value::Null,
        extra: serde_json::to_value(&done)
            .map_err(|e| TrainError::Data(format!("{}: summary: {e}", stage.title())))?,
    };
    // Only the finished state is needed from here on.
    save_checkpoint_in(
        &stage.dir(run),
        &var_tensors(named),
        &HashMap::new(),
        &state,
        1,
    )?;
    Ok(())
}

/// The stage's newest complete checkpoint in `run`, if any.
pub(crate) fn latest(run: &Path, stage: Stage) -> Result<Option<LoadedCheckpoint>> {
    match latest_checkpoint_in(&stage.dir(run))? {
        Some(dir) => Ok(Some(load_checkpoint(&dir)?)),
        None => Ok(None),
    }
}

/// The summary of a stage's checkpoint if it marks the stage done.
pub(crate) fn done_summary(ck: &LoadedCheckpoint) -> Option<serde_json::Value> {
    serde_json::from_value::<Done>(ck.state.extra.clone())
        .ok()
        .filter(|d| d.done)
        .map(|d| d.summary)
}

/// Removes the stages' checkpoints (best-effort: they are never read once
/// the run has a checkpoint of its own).
pub(crate) fn remove_all(run: &Path) {
    for stage in [Stage::Vision, Stage::Masks] {
        let _ = std::fs::remove_dir_all(stage.dir(run));
    }
}

/// Sets every variable of `vars` from `tensors`; `what` names the source in
/// errors (a missing tensor or another shape).
pub(crate) fn restore_vars(
    vars: &[(String, Var)],
    tensors: &HashMap<String, Tensor>,
    what: &str,
) -> Result<()> {
    for (name, var) in vars {
        let t = tensors
            .get(name)
            .ok_or_else(|| TrainError::Data(format!("{what}: no tensor `{name}`")))?;
        if t.dims() != var.dims() {
            return Err(TrainError::Data(format!(
                "{what}: `{name}` is {:?}, the model has {:?}",
                t.dims(),
                var.dims()
            )));
        }
        var.set(t)?;
    }
    Ok(())
}

/// The variables' current values by name.
pub(crate) fn var_tensors(vars: &[(String, Var)]) -> HashMap<String, Tensor> {
    vars.iter()
        .map(|(n, v)| (n.clone(), v.as_tensor().clone()))
        .collect()
}
