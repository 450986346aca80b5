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
use std::time::Instant;

use candle_core::{Tensor, Var};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::checkpoint::{
    latest_checkpoint_in, load_checkpoint, save_checkpoint_in, LoadedCheckpoint, TrainState,
    CHECKPOINTS_DIR,
};
use crate::pretrain::StageOptimizer;
use crate::trainer::{Observer, StageProgress};
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

/// What a stage checkpoint holds besides tensors (`state.json`'s `extra`):
/// an unfinished stage's recent losses and elapsed time, or a finished
/// stage's summary.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
enum Saved<R> {
    Running {
        /// The losses of the last steps, for the stage's messages and summary.
        recent: R,
        /// Seconds the stage has run so far, over all invocations.
        elapsed_s: f64,
    },
    Done {
        summary: serde_json::Value,
    },
}

/// Saves `tensors`, the optimizer's state and `saved` as the stage's
/// checkpoint at `step`, keeping the newest `keep_last`.
fn save<R: Serialize>(
    (run, stage): (&Path, Stage),
    (step, seed): (u64, u64),
    tensors: &HashMap<String, Tensor>,
    (optimizer, optimizer_steps): (&HashMap<String, Tensor>, u64),
    saved: &Saved<R>,
    keep_last: usize,
) -> Result<PathBuf> {
    let extra = serde_json::to_value(saved)
        .map_err(|e| TrainError::Data(format!("{}: checkpoint state: {e}", stage.title())))?;
    let state = TrainState {
        step,
        epoch: 0,
        samples_seen: 0,
        seed,
        optimizer_steps,
        config: serde_json::Value::Null,
        extra,
    };
    Ok(save_checkpoint_in(
        &stage.dir(run),
        tensors,
        optimizer,
        &state,
        keep_last,
    )?)
}

/// A stage's step loop: where it starts (0, or where its checkpoint left
/// it), its clock, and what follows each step (a line every 50 steps, the
/// progress bar, a checkpoint when one is due).
pub(crate) struct StageLoop<'a> {
    stage: Stage,
    total: u64,
    seed: u64,
    first: u64,
    elapsed_before: f64,
    t0: Instant,
    checkpoints: Option<StageCheckpoints<'a>>,
}

impl<'a> StageLoop<'a> {
    /// The loop of `stage`'s `total` steps, timed from `t0`, with the
    /// stage's recent losses. Resuming, it sets the model's variables and
    /// `opt`'s (the stage's heads among them) and its moments from the
    /// checkpoint.
    pub(crate) fn start<R: DeserializeOwned + Default>(
        (stage, total): (Stage, u64),
        (seed, t0): (u64, Instant),
        checkpoints: Option<StageCheckpoints<'a>>,
        opt: &mut StageOptimizer,
    ) -> Result<(Self, R)> {
        let resumed = match checkpoints
            .as_ref()
            .and_then(|c| Some((c, c.resume.as_ref()?)))
        {
            Some((c, ck)) => Some(resume_from(stage, c.named, ck, opt)?),
            None => None,
        };
        let (first, elapsed_before, recent) = resumed.unwrap_or((0, 0.0, R::default()));
        let lp = Self {
            stage,
            total,
            seed,
            first,
            elapsed_before,
            t0,
            checkpoints,
        };
        Ok((lp, recent))
    }

    /// The steps left to run (0-based).
    pub(crate) fn steps(&self) -> std::ops::Range<u64> {
        self.first..self.total
    }

    /// Seconds the stage has run, over all invocations.
    pub(crate) fn elapsed(&self) -> f64 {
        self.elapsed_before + self.t0.elapsed().as_secs_f64()
    }

    /// After `done` steps, whose recent numbers read `text`: a line every 50
    /// steps and at the end, the progress bar, and every `every` steps
    /// (not after the last: the trainer saves the finished stage with its
    /// summary) a checkpoint. When the observer asks the run to stop (and
    /// steps are left), a checkpoint now and [`TrainError::Interrupted`].
    pub(crate) fn after_step<R: Serialize>(
        &self,
        (done, text): (u64, String),
        opt: &StageOptimizer,
        recent: &R,
        obs: &mut dyn Observer,
    ) -> Result<()> {
        let title = self.stage.title();
        if done % 50 == 0 || done == self.total {
            let at = format!("{title} step {done}/{}", self.total);
            obs.message(&format!("{at}: {text} ({:.0} s)", self.elapsed()));
        }
        obs.stage_step(&StageProgress::new(
            title,
            (done, self.total),
            (done - self.first, self.t0.elapsed().as_secs_f64()),
            text,
        ));
        let interrupted = done < self.total && obs.stop_requested();
        let Some(c) = &self.checkpoints else {
            return match interrupted {
                true => Err(TrainError::Interrupted(format!(
                    "{title} stopped after its step {done} of {}; nothing was saved",
                    self.total
                ))),
                false => Ok(()),
            };
        };
        if !interrupted && (done % c.every.max(1) != 0 || done >= self.total) {
            return Ok(());
        }
        let mut tensors = var_tensors(c.named);
        tensors.extend(var_tensors(opt.vars()));
        let running = Saved::Running {
            recent,
            elapsed_s: self.elapsed(),
        };
        let dir = save(
            (c.run, self.stage),
            (done, self.seed),
            &tensors,
            (&opt.state_tensors(), opt.steps()),
            &running,
            c.keep_last,
        )?;
        if interrupted {
            return Err(TrainError::Interrupted(format!(
                "{title} stopped after its step {done} of {}; {} is saved and --resume \
                 continues from it",
                self.total,
                dir.display()
            )));
        }
        Ok(())
    }
}

/// Sets the model's variables and `opt`'s (the stage's heads among them)
/// and its moments from the stage checkpoint `ck`; the steps done, the
/// seconds spent on them and their recent losses.
fn resume_from<R: DeserializeOwned>(
    stage: Stage,
    named: &[(String, Var)],
    ck: &LoadedCheckpoint,
    opt: &mut StageOptimizer,
) -> Result<(u64, f64, R)> {
    let what = format!("{} checkpoint at step {}", stage.title(), ck.state.step);
    restore_vars(named, &ck.trainable, &what)?;
    restore_vars(opt.vars(), &ck.trainable, &what)?;
    opt.load_state(&ck.optimizer, ck.state.optimizer_steps)?;
    let saved: Saved<R> = serde_json::from_value(ck.state.extra.clone())
        .map_err(|e| TrainError::Data(format!("{what}: state.json's `extra`: {e}")))?;
    match saved {
        Saved::Running { recent, elapsed_s } => Ok((ck.state.step, elapsed_s, recent)),
        Saved::Done { .. } => Err(TrainError::Data(format!(
            "{what}: the stage is done; there is nothing to continue"
        ))),
    }
}

/// Saves a finished stage: every model variable as the stage left them and
/// its summary, so that a resumed run skips it. Only this state is needed
/// from here on, so it is the one stage checkpoint kept.
pub(crate) fn save_done(
    run: &Path,
    stage: Stage,
    named: &[(String, Var)],
    (steps, seed): (u64, u64),
    summary: &impl Serialize,
) -> Result<()> {
    let summary = serde_json::to_value(summary)
        .map_err(|e| TrainError::Data(format!("{}: summary: {e}", stage.title())))?;
    save::<()>(
        (run, stage),
        (steps, seed),
        &var_tensors(named),
        (&HashMap::new(), 0),
        &Saved::Done { summary },
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
    match serde_json::from_value::<Saved<serde_json::Value>>(ck.state.extra.clone()) {
        Ok(Saved::Done { summary }) => Some(summary),
        _ => None,
    }
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
