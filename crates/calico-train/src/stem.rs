//! Batch-normalised convolutional stems while training: which mode they
//! run in, and the "precise BN" statistics they keep for inference.
//!
//! A stem ([`calico_model::conv_stem`]) normalises each batch with its own
//! statistics while its tower trains. Every other forward pass (a frozen
//! tower, validation, the exported model) uses the running mean and
//! variance, which are checkpoint tensors set here, never by gradients: the
//! average batch statistics of the first [`CALIBRATION_IMAGES`] training
//! images, in batches of [`CALIBRATION_BATCH`].
//!
//! EVA's stem (`eva_vit.conv_stem`) trains in stage 1 and is calibrated at
//! its end. SAM's (`sam_encoder.conv_stem`) trains in stage 2 (and in stage
//! 1 with `"sam": true`, and in stage 1b, `mask_pretrain`, calibrated at the
//! end of each); it is calibrated before every validation and before the
//! model is exported, and goes back to batch statistics after a
//! validation, so validating never changes the training run's losses.

use calico_model::calico::{Calico, ImageInput};
use calico_model::conv_stem::ConvStem;
use candle_core::{Tensor, Var};

use crate::data::Dataset;
use crate::trainer::Observer;
use crate::TrainError;

type Result<T> = std::result::Result<T, TrainError>;

/// Images measured for a stem's running statistics.
pub const CALIBRATION_IMAGES: usize = 1024;

/// Images per measured batch: stage 1's slice, the batch its stems train on.
pub const CALIBRATION_BATCH: usize = crate::pretrain::SLICE;

/// The two towers that can have a stem.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tower {
    /// EVA (`eva_vit.conv_stem`).
    Eva,
    /// SAM's image encoder (`sam_encoder.conv_stem`).
    Sam,
}

impl Tower {
    /// Name prefix of the stem's variables.
    pub fn prefix(self) -> &'static str {
        match self {
            Tower::Eva => "model.vision_tower.embeddings.stem.",
            Tower::Sam => "model.grounding_encoder.image_encoder.patch_embed.stem.",
        }
    }

    /// The tower's name in messages.
    pub fn name(self) -> &'static str {
        match self {
            Tower::Eva => "EVA",
            Tower::Sam => "SAM",
        }
    }

    /// The model's stem for this tower, if its config has one.
    pub fn stem(self, model: &Calico) -> Option<&ConvStem> {
        match self {
            Tower::Eva => model.eva_stem(),
            Tower::Sam => model.sam_stem(),
        }
    }

    /// The view of an image this tower reads.
    fn view(self, im: &ImageInput) -> &Tensor {
        match self {
            Tower::Eva => &im.clip,
            Tower::Sam => &im.sam,
        }
    }
}

/// Puts a stem back on its running statistics when dropped (whatever ends
/// the scope: the end of a stage, or an error).
pub struct InferenceOnDrop<'a>(pub Option<&'a ConvStem>);

impl Drop for InferenceOnDrop<'_> {
    fn drop(&mut self) {
        if let Some(s) = self.0 {
            s.set_batch_statistics(false);
        }
    }
}

/// Sets the tower's stem's running statistics to the average batch
/// statistics of the first [`CALIBRATION_IMAGES`] of `files`, and switches
/// the stem to them. Nothing happens when the tower has no stem.
pub fn calibrate(
    tower: Tower,
    model: &Calico,
    named: &[(String, Var)],
    train: &Dataset,
    files: &[String],
    obs: &mut dyn Observer,
) -> Result<()> {
    let Some(stem) = tower.stem(model) else {
        return Ok(());
    };
    let mut sums: Vec<(Tensor, Tensor)> = Vec::new();
    let mut batches = 0usize;
    let take = files.len().min(CALIBRATION_IMAGES);
    for chunk in files[..take].chunks(CALIBRATION_BATCH) {
        let views: Vec<Tensor> = chunk
            .iter()
            .map(|f| Ok(tower.view(&*train.image_input(f)?).clone()))
            .collect::<Result<_>>()?;
        let stats = stem.batch_statistics(&Tensor::stack(&views, 0)?)?;
        sums = match sums.is_empty() {
            true => stats,
            false => sums
                .iter()
                .zip(&stats)
                .map(|((m, v), (bm, bv))| Ok(((m + bm)?, (v + bv)?)))
                .collect::<Result<_>>()?,
        };
        batches += 1;
    }
    let running = stem.running_statistics();
    let values = sums.iter().flat_map(|(m, v)| [m, v]);
    for ((name, current), value) in running.iter().zip(values) {
        let full = format!("{}{name}", tower.prefix());
        let var = named
            .iter()
            .find(|(n, _)| *n == full)
            .map(|(_, v)| v)
            .ok_or_else(|| {
                TrainError::Config(format!(
                    "{}'s conv stem has no variable `{full}` to store its running statistics in",
                    tower.name()
                ))
            })?;
        let avg = (value / batches.max(1) as f64)?.to_dtype(current.dtype())?;
        var.set(&avg)?;
    }
    stem.set_batch_statistics(false);
    obs.message(&format!(
        "{}'s conv stem normalises with statistics measured on {take} training images",
        tower.name()
    ));
    Ok(())
}

/// The distinct image files of a dataset's samples, in order of first use.
pub fn image_files(ds: &Dataset) -> Vec<String> {
    let mut seen = std::collections::HashSet::new();
    ds.samples
        .iter()
        .flat_map(|s| s.images.iter())
        .filter(|im| seen.insert(im.file.as_str()))
        .map(|im| im.file.clone())
        .collect()
}
