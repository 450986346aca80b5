//! Stopping on NaN and infinity: every loss component, the gradient norm
//! and the updated weights are checked at each step of every stage, so that
//! a run that diverges stops at the step where it happened, naming what
//! went non-finite, before any checkpoint can keep it.

use std::path::Path;

use candle_core::Var;

use crate::checkpoint::{checkpoint_step, latest_checkpoint, latest_checkpoint_in};
use crate::stage_checkpoint::Stage;
use crate::TrainError;

type Result<T> = std::result::Result<T, TrainError>;

/// `Ok` when `value` is finite; otherwise stops the run at `step`
/// (1-based), naming `what`.
pub(crate) fn finite_or_stop(step: u64, what: &str, value: f64) -> Result<()> {
    if value.is_finite() {
        Ok(())
    } else {
        Err(TrainError::NonFinite {
            step,
            what: what.to_string(),
            value,
            kept: String::new(),
        })
    }
}

/// Stops the run at `step` when its update left a variable non-finite
/// (finite gradients times a learning rate too high overflow); `during`
/// names the stage, e.g. " of stage 1 (encoder pretraining)", or is empty.
pub(crate) fn updated_weights_finite(
    step: u64,
    vars: &[(String, Var)],
    during: &str,
) -> Result<()> {
    match crate::optim::first_non_finite(vars)? {
        None => Ok(()),
        Some((name, x)) => finite_or_stop(
            step,
            &format!("tensor `{name}` after the update{during} (is the learning rate too high?)"),
            x as f64,
        ),
    }
}

/// `err` with its `kept` said from what `run` holds on disk: the step
/// checkpoint `--resume` would continue from, or a stage's, or none.
pub(crate) fn with_kept(err: TrainError, run: &Path) -> TrainError {
    let TrainError::NonFinite {
        step, what, value, ..
    } = err
    else {
        return err;
    };
    let at = |dir: Option<std::path::PathBuf>| dir.as_deref().and_then(checkpoint_step);
    let kept = if let Some(s) = at(latest_checkpoint(run).ok().flatten()) {
        format!("the checkpoint of step {s} is kept (--resume continues from it)")
    } else if let Some((stage, s)) = [Stage::Masks, Stage::Vision]
        .into_iter()
        .find_map(|st| at(latest_checkpoint_in(&st.dir(run)).ok().flatten()).map(|s| (st, s)))
    {
        format!(
            "{}'s checkpoint of its step {s} is kept (--resume continues from it)",
            stage.title()
        )
    } else {
        "no checkpoint had been written yet".to_string()
    };
    TrainError::NonFinite {
        step,
        what,
        value,
        kept,
    }
}
