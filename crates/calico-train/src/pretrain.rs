//! Stage 1 of a from-scratch run ("encoders first"): the global branch's
//! encoders learn to tell the objects apart before the paper's recipe
//! trains the rest on top of them.
//!
//! The paper starts from pretrained encoders (EVA-CLIP, the BLIP-2
//! Q-Former, DINOv2) and keeps them frozen. `tiny` has no such weights, and
//! training its encoders end to end through a randomly initialised LLM
//! does not work: within ~20 steps the Q-Former's outputs become the same
//! for every image (the relative difference between two images' visual
//! tokens falls from ~90 % to ~2 %), because to a random LLM image tokens
//! are noise, and the answers never name an object correctly
//! (docs/tiny-recipe.md, "Why `tiny` trains its encoders first"). So stage 1
//! trains EVA + Q-Former (and DINOv2) on the training samples' own labels:
//! every image is labelled with the object classes annotated on it
//! (the masks whose role is `object`), and linear heads on the mean of
//! the Q-Former's query outputs, on the mean EVA token and on the mean
//! DINOv2 patch token are trained with cross-entropy (or multi-label binary
//! cross-entropy). The heads are thrown away; stage 2 then holds these encoders still (`freeze`), as the
//! paper's recipe holds its pretrained ones.
//!
//! Deterministic: image `k` of the stream is entry `k mod n` of epoch
//! `⌊k/n⌋`'s permutation drawn from `(seed, epoch)`, its horizontal flip
//! from `(seed, k)`; the heads' initial values from the seed.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use calico_data::samples::MaskRole;
use calico_model::calico::{Calico, GlobalFeatures, ImageInput};
use candle_core::{DType, Device, Tensor, Var, D};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::data::Dataset;
use crate::dense::Encoder;
use crate::guard::{finite_or_stop, updated_weights_finite};
use crate::optim::{clip_grad_norm, AdamW, AdamWConfig, GradAccumulator};
use crate::schedule::LrSchedule;
use crate::stage_checkpoint::{Stage, StageLoop, StageRun};
use crate::stem::{InferenceOnDrop, Tower};
use crate::trainer::{mix, Observer, Order};
use crate::TrainError;

type Result<T> = std::result::Result<T, TrainError>;

/// The variables of the encoders stage 1 trains (name prefixes).
pub const GLOBAL_ENCODERS: [&str; 4] = [
    "model.vision_tower.",
    "model.qformer.",
    "model.query_tokens",
    "model.dinov2.",
];

/// SAM's image encoder (name prefix), trained in stage 1 with `sam`.
pub const SAM_ENCODER: &str = "model.grounding_encoder.image_encoder.";

/// Images per autograd graph in stage 1; a step's slices run on the workers.
pub(crate) const SLICE: usize = 16;

/// Stage-1 settings (`vision_pretrain` in the training config).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct VisionPretrain {
    /// Optimizer steps.
    pub steps: u64,
    /// Images per step.
    pub batch_size: usize,
    /// AdamW peak learning rate (betas (0.9, 0.95), no weight decay).
    pub lr: f64,
    /// Linear warm-up steps, then linear decay to 0.
    pub warmup_steps: u64,
    /// Mirror an image left–right with probability ½.
    pub flip: bool,
    /// `softmax`: cross-entropy against the image's classes, uniformly
    /// weighted; `bce`: multi-label binary cross-entropy.
    pub loss: PretrainLoss,
    /// A third head on the mean EVA token (X_global), so EVA also learns
    /// from a short path; the Q-Former head is the one reported.
    pub eva_head: bool,
    /// Also classify every EVA and DINOv2 patch token: which object class
    /// and which part it shows (targets from the samples' masks, see
    /// [`crate::dense`]).
    pub dense: bool,
    /// Also train SAM's image encoder in stage 1, with the same dense
    /// targets on its image embeddings (it is trained again in stage 2).
    pub sam: bool,
}

/// Stage 1's classification loss.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PretrainLoss {
    Softmax,
    Bce,
}

impl Default for VisionPretrain {
    fn default() -> Self {
        Self {
            steps: 600,
            batch_size: 32,
            lr: 2e-3,
            warmup_steps: 30,
            flip: true,
            loss: PretrainLoss::Softmax,
            eva_head: true,
            dense: false,
            sam: false,
        }
    }
}

impl VisionPretrain {
    pub fn validate(&self) -> std::result::Result<(), String> {
        if self.steps == 0 || self.batch_size == 0 {
            return Err(
                "vision_pretrain.steps and vision_pretrain.batch_size must be at least 1".into(),
            );
        }
        crate::config::check_lr("vision_pretrain.lr", self.lr)?;
        crate::config::check_at_most(
            "vision_pretrain.batch_size",
            self.batch_size,
            crate::config::MAX_BATCH,
        )?;
        Ok(())
    }
}

/// Every image of a samples file with the object classes annotated on it.
#[derive(Debug, Clone)]
pub struct ImageLabels {
    /// Image files as the samples name them, in first-use order.
    pub files: Vec<String>,
    /// The class names, sorted.
    pub classes: Vec<String>,
    /// Per file, the indices of its classes (at least one).
    pub labels: Vec<Vec<usize>>,
}

/// Collects the object labels of every image of `ds` (masks whose role is
/// `object`; images without one are left out).
pub fn image_labels(ds: &Dataset) -> ImageLabels {
    let mut per_file: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    let mut order: Vec<&str> = Vec::new();
    for s in &ds.samples {
        for m in &s.masks {
            if m.role != Some(MaskRole::Object) {
                continue;
            }
            let Some(img) = s.images.get(m.image) else {
                continue;
            };
            let file = img.file.as_str();
            if !per_file.contains_key(file) {
                order.push(file);
            }
            per_file.entry(file).or_default().insert(m.label.as_str());
        }
    }
    let classes: Vec<String> = per_file
        .values()
        .flatten()
        .map(|c| c.to_string())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let labels = order
        .iter()
        .map(|f| {
            per_file[f]
                .iter()
                .filter_map(|c| classes.iter().position(|k| k == c))
                .collect()
        })
        .collect();
    ImageLabels {
        files: order.iter().map(|f| f.to_string()).collect(),
        classes,
        labels,
    }
}

/// A linear classification head.
struct Head {
    w: Var,
    b: Var,
}

impl Head {
    fn new(classes: usize, dim: usize, rng: &mut ChaCha8Rng, dev: &Device) -> Result<Self> {
        let bound = 1.0 / (dim as f32).sqrt();
        let w: Vec<f32> = (0..classes * dim)
            .map(|_| rng.random_range(-bound..bound))
            .collect();
        Ok(Self {
            w: Var::from_tensor(&Tensor::from_vec(w, (classes, dim), dev)?)?,
            b: Var::zeros(classes, DType::F32, dev)?,
        })
    }

    /// `(n, dim)` → `(n, classes)`.
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(calico_nn::broadcast::add(
            &x.matmul(&self.w.as_tensor().t()?)?,
            self.b.as_tensor(),
        )?)
    }

    /// `(n, t, dim)` → `(n, t, classes)`.
    fn forward_tokens(&self, x: &Tensor) -> Result<Tensor> {
        let (n, t, d) = x.dims3()?;
        let y = self.forward(&x.reshape((n * t, d))?)?;
        Ok(y.reshape((n, t, ()))?)
    }
}

/// The patch-token heads of a dense stage 1: per encoder, the object class
/// and the part under each of its tokens.
struct DenseHeads {
    per_encoder: Vec<(Encoder, Head, Head)>,
}

/// What stage 1 reports.
#[derive(Debug, Clone, Serialize)]
pub struct PretrainSummary {
    pub steps: u64,
    pub images: usize,
    pub classes: usize,
    /// Mean loss of the last 20 steps.
    pub loss: f64,
    /// Top-1 accuracy (the highest-scoring class is one of the image's) of
    /// the global head over the last 20 steps' training images.
    pub train_accuracy: f64,
    /// The same on the validation images, when there are any.
    pub val_accuracy: Option<f64>,
    /// Every image-level head's top-1 accuracy on the validation images:
    /// `global` (the Q-Former's, as `val_accuracy`), `eva`, `semantic`.
    pub val_heads: Vec<HeadAccuracy>,
    pub val_images: usize,
    /// Per dense head on the validation images: the share of patches
    /// mostly covered by an object (or a part) whose top class is that one.
    pub val_dense: Vec<DenseAccuracy>,
    pub elapsed_s: f64,
}

/// An image-level head's accuracies.
#[derive(Debug, Clone, Serialize)]
pub struct HeadAccuracy {
    pub head: String,
    /// Top-1: the highest-scoring class is one of the image's.
    pub accuracy: f64,
    /// Every object: an image with `k` classes has exactly them as its `k`
    /// highest-scoring classes (what naming the objects of a crowded scene
    /// needs; the same as top-1 on one-class images).
    pub all_objects: f64,
}

/// A dense head's patch accuracy.
#[derive(Debug, Clone, Serialize)]
pub struct DenseAccuracy {
    pub head: String,
    pub accuracy: f64,
    pub patches: usize,
}

struct Batch<'a> {
    /// (training image, mirrored) per row; each slice's worker reads its
    /// rows' views itself, with `read`.
    picks: Vec<(usize, bool)>,
    read: &'a ReadView<'a>,
    targets: Tensor,
    labels: Vec<Vec<usize>>,
    /// Dense targets `(n, tokens, k)`, in [`dense_logits`]' order.
    dense: Vec<Tensor>,
}

/// Reads training image `i`'s views, mirrored when the flag says so.
type ReadView<'a> = dyn Fn(usize, bool) -> Result<Arc<ImageInput>> + Sync + 'a;

/// Mirrors an image's views left–right: EVA's and DINOv2's whole, SAM's
/// inside its padding (the image stays top-left, as SAM expects).
pub(crate) fn flipped(im: &ImageInput) -> Result<ImageInput> {
    Ok(ImageInput {
        clip: mirror_rows(&im.clip, usize::MAX)?,
        dino: mirror_rows(&im.dino, usize::MAX)?,
        sam: mirror_rows(&im.sam, im.sam_resized.1)?,
        ..im.clone()
    })
}

/// `t` with the first `span` entries of every row (along the last
/// dimension) in reverse order. A float32 view on the CPU is mirrored in
/// place in a copy of its values (exactly what `index_select` gives, at a
/// fraction of its cost: stage 1 mirrors half its images every step);
/// anything else goes through `index_select`.
fn mirror_rows(t: &Tensor, span: usize) -> Result<Tensor> {
    let w = t.dim(D::Minus1)?;
    let span = span.min(w);
    if t.device().is_cpu() && t.dtype() == DType::F32 && w > 0 {
        let mut v: Vec<f32> = t.flatten_all()?.to_vec1()?;
        for row in v.chunks_exact_mut(w) {
            row[..span].reverse();
        }
        return Ok(Tensor::from_vec(v, t.shape(), t.device())?);
    }
    let idx: Vec<u32> = (0..span as u32)
        .rev()
        .chain(span as u32..w as u32)
        .collect();
    let idx = Tensor::new(idx.as_slice(), t.device())?;
    Ok(t.index_select(&idx, t.rank() - 1)?)
}

/// The classification heads: on the mean Q-Former output (the mean EVA
/// token without the Q-Former), on the mean EVA token, on the mean DINOv2
/// patch token.
struct Heads {
    global: Head,
    eva: Option<Head>,
    semantic: Option<Head>,
    dense: Option<DenseHeads>,
}

impl Heads {
    /// The image-level heads by name, in [`all_logits`]' order.
    fn image_level(&self) -> Vec<(&'static str, &Head)> {
        [
            ("global", Some(&self.global)),
            ("eva", self.eva.as_ref()),
            ("semantic", self.semantic.as_ref()),
        ]
        .into_iter()
        .filter_map(|(n, h)| h.map(|h| (n, h)))
        .collect()
    }
}

/// The patch tokens `(n, tokens, dim)` of an encoder, row-major over its
/// grid: EVA's without the class token, DINOv2's, SAM's image embeddings.
fn patch_tokens(
    model: &Calico,
    inputs: &[&ImageInput],
    f: &GlobalFeatures,
    encoder: Encoder,
) -> Result<Tensor> {
    Ok(match encoder {
        Encoder::Eva => {
            let n = f.x_global.dim(1)?;
            f.x_global.narrow(1, 1, n - 1)?
        }
        Encoder::Dino => f.x_semantic.clone().ok_or_else(|| {
            TrainError::Config("stage 1: dense DINOv2 targets but the model runs no DINOv2".into())
        })?,
        Encoder::Sam => model
            .sam_features(inputs)?
            .flatten_from(2)?
            .transpose(1, 2)?
            .contiguous()?,
    })
}

/// The dense heads' `(n, tokens, k)` logits: per encoder, objects then parts.
fn dense_logits(
    model: &Calico,
    inputs: &[&ImageInput],
    heads: &DenseHeads,
    f: &GlobalFeatures,
) -> Result<Vec<Tensor>> {
    let mut out = Vec::new();
    for (e, o, p) in &heads.per_encoder {
        let x = patch_tokens(model, inputs, f, *e)?;
        out.push(o.forward_tokens(&x)?);
        out.push(p.forward_tokens(&x)?);
    }
    Ok(out)
}

/// The image-level logits (global head first) and the dense ones.
fn all_logits(
    model: &Calico,
    heads: &Heads,
    inputs: &[&ImageInput],
) -> Result<(Vec<Tensor>, Vec<Tensor>)> {
    let f = model.global_features(inputs)?;
    let dense = match &heads.dense {
        Some(d) => dense_logits(model, inputs, d, &f)?,
        None => Vec::new(),
    };
    let x_mean = f.x_global.mean(1)?;
    let global_in = match &f.qformer {
        Some(q) => q.mean(1)?,
        None => x_mean.clone(),
    };
    let mut out = vec![heads.global.forward(&global_in)?];
    if let Some(h) = &heads.eva {
        out.push(h.forward(&x_mean)?);
    }
    if let (Some(h), Some(x)) = (&heads.semantic, &f.x_semantic) {
        out.push(h.forward(&x.mean(1)?)?);
    }
    Ok((out, dense))
}

/// Summed (not averaged) loss of `(n, classes)` logits against 0/1 targets.
fn head_loss(kind: PretrainLoss, logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
    Ok(match kind {
        PretrainLoss::Bce => calico_nn::loss::bce_with_logits(logits, targets)?.sum_all()?,
        PretrainLoss::Softmax => {
            let weights = targets.broadcast_div(&targets.sum_keepdim(1)?.clamp(1.0, f64::MAX)?)?;
            let logp = candle_nn::ops::log_softmax(logits, D::Minus1)?;
            (logp * weights)?.sum_all()?.neg()?
        }
    })
}

/// Images whose `k` highest scores are exactly their `k` classes.
fn all_object_hits(scores: &Tensor, labels: &[Vec<usize>]) -> Result<usize> {
    let rows: Vec<Vec<f32>> = scores.to_dtype(candle_core::DType::F32)?.to_vec2()?;
    Ok(rows
        .iter()
        .zip(labels)
        .filter(|(row, l)| {
            let mut order: Vec<usize> = (0..row.len()).collect();
            order.sort_by(|&a, &b| row[b].total_cmp(&row[a]));
            !l.is_empty()
                && order[..l.len().min(row.len())]
                    .iter()
                    .all(|c| l.contains(c))
        })
        .count())
}

/// Top-1 hits of `(n, classes)` scores against each row's label set.
fn hits(scores: &Tensor, labels: &[Vec<usize>]) -> Result<usize> {
    let best: Vec<u32> = scores.argmax(D::Minus1)?.to_vec1()?;
    Ok(best
        .iter()
        .zip(labels)
        .filter(|(b, l)| l.contains(&(**b as usize)))
        .count())
}

/// One chunk's summed loss (over its images, divided by the whole batch
/// size), its gradients and its top-1 hits.
fn chunk_gradients(
    model: &Calico,
    heads: &Heads,
    kind: PretrainLoss,
    batch: &Batch,
    range: std::ops::Range<usize>,
    batch_size: usize,
) -> Result<(f64, candle_core::backprop::GradStore, usize)> {
    let owned = batch.picks[range.clone()]
        .iter()
        .map(|&(i, flip)| (batch.read)(i, flip))
        .collect::<Result<Vec<_>>>()?;
    let inputs: Vec<&ImageInput> = owned.iter().map(|a| &**a).collect();
    let targets = batch.targets.narrow(0, range.start, range.len())?;
    let (all, dense) = all_logits(model, heads, &inputs)?;
    let per_row = match kind {
        PretrainLoss::Bce => targets.dim(1)? as f64,
        PretrainLoss::Softmax => 1.0,
    };
    let scale = 1.0 / (batch_size as f64 * per_row);
    let mut terms = Vec::with_capacity(all.len() + dense.len());
    for l in &all {
        terms.push((head_loss(kind, l, &targets)? * scale)?);
    }
    for (l, t) in dense.iter().zip(&batch.dense) {
        // Cross-entropy against each token's distribution (the softmax
        // loss, one row per token), averaged over the tokens, summed over
        // the images.
        let t = t.narrow(0, range.start, range.len())?;
        if l.dims() != t.dims() {
            return Err(TrainError::Data(format!(
                "stage 1: dense logits {:?} but targets {:?} (patch grid of the view?)",
                l.dims(),
                t.dims()
            )));
        }
        let tokens = l.dim(1)? as f64;
        let ce = head_loss(PretrainLoss::Softmax, &l.flatten_to(1)?, &t.flatten_to(1)?)?;
        terms.push((ce * (1.0 / (batch_size as f64 * tokens)))?);
    }
    let mut terms = terms.into_iter();
    let first = terms
        .next()
        .ok_or_else(|| TrainError::Data("stage 1: no classification head".into()))?;
    let loss = terms.try_fold(first, |s, t| s + t)?;
    let value = loss.to_dtype(DType::F64)?.to_scalar::<f64>()?;
    let grads = loss.backward()?;
    Ok((value, grads, hits(&all[0], &batch.labels[range])?))
}

/// The optimizer of a pretraining stage: AdamW (no weight decay) with
/// linear warm-up and decay, gradients summed over a step's slices in
/// order and clipped to norm 1.
pub(crate) struct StageOptimizer {
    vars: Vec<(String, Var)>,
    opt: AdamW,
    schedule: LrSchedule,
}

impl StageOptimizer {
    pub(crate) fn new(vars: Vec<(String, Var)>, lr: f64, warmup: u64, steps: u64) -> Result<Self> {
        let opt = AdamW::new(
            vars.clone(),
            AdamWConfig {
                lr,
                ..AdamWConfig::default()
            },
        )?;
        Ok(Self {
            vars,
            opt,
            schedule: LrSchedule {
                base_lr: lr,
                warmup_steps: warmup,
                total_steps: steps,
            },
        })
    }

    /// The variables it trains, the stage's heads among them.
    pub(crate) fn vars(&self) -> &[(String, Var)] {
        &self.vars
    }

    /// AdamW's moments by name (for a checkpoint).
    pub(crate) fn state_tensors(&self) -> HashMap<String, Tensor> {
        self.opt.state_tensors()
    }

    /// Updates applied so far.
    pub(crate) fn steps(&self) -> u64 {
        self.opt.steps()
    }

    /// Restores AdamW's moments and update count from a checkpoint.
    pub(crate) fn load_state(
        &mut self,
        tensors: &HashMap<String, Tensor>,
        steps: u64,
    ) -> Result<()> {
        Ok(self.opt.load_state(tensors, steps)?)
    }

    /// Step `step` (0-based) with the slices' gradients. A non-finite value
    /// among `losses` (each named, e.g. `("focal loss", f)`), a non-finite
    /// gradient norm or an update that leaves a weight non-finite stops the
    /// run instead; `stage` names the stage in that message.
    pub(crate) fn step(
        &mut self,
        step: u64,
        losses: &[(&str, f64)],
        slices: &[candle_core::backprop::GradStore],
        stage: &str,
    ) -> Result<()> {
        for (what, v) in losses {
            finite_or_stop(step + 1, &format!("{what} of {stage}"), *v)?;
        }
        let mut acc = GradAccumulator::new();
        for g in slices {
            acc.add(&self.vars, g)?;
        }
        let mut grads = acc.sum();
        let norm = clip_grad_norm(&mut grads, 1.0)?;
        finite_or_stop(step + 1, &format!("gradient norm of {stage}"), norm)?;
        self.opt.step(&grads, self.schedule.lr_at(step + 1))?;
        updated_weights_finite(step + 1, &self.vars, &format!(" of {stage}"))?;
        Ok(())
    }
}

/// Refuses a stage 1 that cannot run on `train` with the variables `named`
/// (checked before the run directory is written): no object masks to label
/// the images, or none of the encoders it trains among the variables.
pub(crate) fn check_can_run(
    cfg: &VisionPretrain,
    named: &[(String, Var)],
    train: &Dataset,
) -> Result<()> {
    let has_object = |s: &calico_data::samples::Sample| {
        s.masks
            .iter()
            .any(|m| m.role == Some(MaskRole::Object) && m.image < s.images.len())
    };
    if !train.samples.iter().any(has_object) {
        return Err(TrainError::Data(format!(
            "{}: vision_pretrain needs object masks (role \"object\") to label images; found none",
            train.path().display()
        )));
    }
    if !named.iter().any(|(n, _)| stage_one_trains(cfg, n)) {
        return Err(TrainError::Config(
            "vision_pretrain: the run trains none of the global encoders (EVA, Q-Former, DINOv2)"
                .into(),
        ));
    }
    Ok(())
}

/// Whether stage 1 trains variable `name`.
fn stage_one_trains(cfg: &VisionPretrain, name: &str) -> bool {
    GLOBAL_ENCODERS.iter().any(|p| name.starts_with(p))
        || (cfg.sam && name.starts_with(SAM_ENCODER))
}

/// Runs stage 1 on `train`'s images, updating the encoder variables among
/// `named` in place; `val` (if any) is only scored. With checkpoints in
/// `run`, it saves its progress and continues a resumed stage.
pub fn pretrain_vision(
    model: &Calico,
    named: &[(String, Var)],
    (train, val): (&Dataset, Option<&Dataset>),
    cfg: &VisionPretrain,
    run: StageRun,
    obs: &mut dyn Observer,
) -> Result<PretrainSummary> {
    let StageRun {
        seed,
        workers,
        checkpoints,
    } = run;
    cfg.validate().map_err(TrainError::Config)?;
    check_can_run(cfg, named, train)?;
    let t0 = std::time::Instant::now();
    let labels = image_labels(train);
    let dev = Device::Cpu;
    let n_classes = labels.classes.len();
    let mut rng = ChaCha8Rng::seed_from_u64(mix(&[seed, 5]));
    let mut encoders = Vec::new();
    if cfg.dense {
        encoders.push(Encoder::Eva);
        if model.config().has_cem() {
            encoders.push(Encoder::Dino);
        }
    }
    if cfg.sam {
        encoders.push(Encoder::Sam);
    }
    let dense = match encoders.is_empty() {
        false => {
            let d = crate::dense::dense_labels(
                train,
                &labels.files,
                (&labels.classes, &crate::dense::part_names(train)),
                model.config(),
                &encoders,
            )?;
            obs.message(&format!(
                "stage 1: dense targets ({} object classes, {} parts) on the patches of {:?}",
                d.objects.len(),
                d.parts.len(),
                encoders
            ));
            Some(d)
        }
        true => None,
    };
    let heads = {
        let probe = train.image_input(&labels.files[0])?;
        let f = model.global_features(&[&*probe])?;
        let eva_dim = f.x_global.dim(2)?;
        let global_dim = match &f.qformer {
            Some(q) => q.dim(2)?,
            None => eva_dim,
        };
        Heads {
            global: Head::new(n_classes, global_dim, &mut rng, &dev)?,
            eva: match cfg.eva_head && f.qformer.is_some() {
                true => Some(Head::new(n_classes, eva_dim, &mut rng, &dev)?),
                false => None,
            },
            semantic: f
                .x_semantic
                .as_ref()
                .map(|s| Head::new(n_classes, s.dim(2)?, &mut rng, &dev))
                .transpose()?,
            dense: match &dense {
                Some(d) => {
                    let mut per_encoder = Vec::new();
                    for (e, _) in &d.grids {
                        let dim = patch_tokens(model, &[&*probe], &f, *e)?.dim(2)?;
                        per_encoder.push((
                            *e,
                            Head::new(d.objects.len() + 1, dim, &mut rng, &dev)?,
                            Head::new(d.parts.len() + 1, dim, &mut rng, &dev)?,
                        ));
                    }
                    Some(DenseHeads { per_encoder })
                }
                None => None,
            },
        }
    };
    let mut vars: Vec<(String, Var)> = named
        .iter()
        .filter(|(n, _)| stage_one_trains(cfg, n))
        .cloned()
        .collect();
    let mut all_heads: Vec<(String, &Head)> = heads
        .image_level()
        .into_iter()
        .map(|(n, h)| (n.to_string(), h))
        .collect();
    for (e, o, p) in heads.dense.iter().flat_map(|d| &d.per_encoder) {
        all_heads.push((format!("{e:?}_objects").to_lowercase(), o));
        all_heads.push((format!("{e:?}_parts").to_lowercase(), p));
    }
    for (name, h) in all_heads {
        vars.push((format!("pretrain_head.{name}.weight"), h.w.clone()));
        vars.push((format!("pretrain_head.{name}.bias"), h.b.clone()));
    }
    let mut opt = StageOptimizer::new(vars, cfg.lr, cfg.warmup_steps, cfg.steps)?;
    obs.message(&format!(
        "stage 1: training the encoders to recognise {n_classes} object classes on {} images ({} steps of {})",
        labels.files.len(),
        cfg.steps,
        cfg.batch_size
    ));
    let n = labels.files.len();
    // A convolutional stem normalises with batch statistics while it
    // trains; whatever happens, the model leaves stage 1 in inference mode.
    let stem = model.eva_stem();
    let _eva_inference_after = InferenceOnDrop(stem);
    if let Some(s) = stem {
        s.set_batch_statistics(true);
    }
    // SAM's stem trains here only with `sam`.
    let sam_stem = model.sam_stem().filter(|_| cfg.sam);
    let _sam_inference_after = InferenceOnDrop(sam_stem);
    if let Some(s) = sam_stem {
        s.set_batch_statistics(true);
    }
    // Training image `i`'s views, mirrored when asked (cached unmirrored).
    let read = |i: usize, flip: bool| -> Result<Arc<ImageInput>> {
        let im = train.image_input(&labels.files[i])?;
        Ok(if flip { Arc::new(flipped(&im)?) } else { im })
    };
    let mut order = Order::tagged(seed, n, (6, 7));
    let (stage, mut recent) = StageLoop::start::<Vec<(f64, usize)>>(
        (Stage::Vision, cfg.steps),
        (seed, t0),
        checkpoints,
        &mut opt,
    )?;
    for step in stage.steps() {
        let mut rows: Vec<Vec<usize>> = Vec::with_capacity(cfg.batch_size);
        let mut picks = Vec::with_capacity(cfg.batch_size);
        for k in step * cfg.batch_size as u64..(step + 1) * cfg.batch_size as u64 {
            let (i, coin) = order.at(k);
            let flip = cfg.flip && coin;
            rows.push(labels.labels[i].clone());
            picks.push((i, flip));
        }
        let mut t = vec![0f32; cfg.batch_size * n_classes];
        for (r, l) in rows.iter().enumerate() {
            for &c in l {
                t[r * n_classes + c] = 1.0;
            }
        }
        let dense_targets = match &dense {
            Some(d) => dense_targets(d, &picks, &dev)?,
            None => Vec::new(),
        };
        let batch = Batch {
            picks,
            read: &read,
            targets: Tensor::from_vec(t, (cfg.batch_size, n_classes), &dev)?,
            labels: rows,
            dense: dense_targets,
        };
        // Fixed slices, so the sums do not depend on `workers`.
        let per = SLICE;
        let ranges: Vec<std::ops::Range<usize>> = (0..cfg.batch_size)
            .step_by(per)
            .map(|a| a..(a + per).min(cfg.batch_size))
            .collect();
        let outcomes = crate::workers::map_ordered(
            ranges.len(),
            workers,
            |c| {
                chunk_gradients(
                    model,
                    &heads,
                    cfg.loss,
                    &batch,
                    ranges[c].clone(),
                    cfg.batch_size,
                )
            },
            |c| format!("slice {c} of stage-1 step {}", step + 1),
        )?;
        let (mut loss, mut hit) = (0.0, 0);
        let mut grads = Vec::with_capacity(outcomes.len());
        for (l, g, h) in outcomes {
            loss += l;
            hit += h;
            grads.push(g);
        }
        // The slices' losses are already divided by the batch size.
        opt.step(
            step,
            &[("loss", loss)],
            &grads,
            "stage 1 (encoder pretraining)",
        )?;
        recent.push((loss, hit));
        if recent.len() > 20 {
            recent.remove(0);
        }
        let (l, a) = window(&recent, cfg.batch_size);
        let text = format!("loss {l:.4}, top-1 accuracy {:.1} %", 100.0 * a);
        stage.after_step((step + 1, text), &opt, &recent, obs)?;
    }
    let (loss, train_accuracy) = window(&recent, cfg.batch_size);
    crate::stem::calibrate(Tower::Eva, model, named, train, &labels.files, obs)?;
    if sam_stem.is_some() {
        crate::stem::calibrate(Tower::Sam, model, named, train, &labels.files, obs)?;
    }
    let (val_heads, val_images, val_dense) = match val {
        Some(v) => accuracy(model, &heads, v, &labels.classes, dense.as_ref())?,
        None => (Vec::new(), 0, Vec::new()),
    };
    let val_accuracy = val_heads.first().map(|h| h.accuracy);
    for d in &val_dense {
        obs.message(&format!(
            "stage 1: {} head, patch accuracy {:.1} % of {} validation patches",
            d.head,
            100.0 * d.accuracy,
            d.patches
        ));
    }
    if !val_heads.is_empty() {
        let per_head: Vec<String> = val_heads
            .iter()
            .map(|h| {
                format!(
                    "{} {:.1} % (every object {:.1} %)",
                    h.head,
                    100.0 * h.accuracy,
                    100.0 * h.all_objects
                )
            })
            .collect();
        obs.message(&format!(
            "stage 1: top-1 accuracy on {val_images} validation images: {}",
            per_head.join(", ")
        ));
    }
    Ok(PretrainSummary {
        steps: cfg.steps,
        images: n,
        classes: n_classes,
        loss,
        train_accuracy,
        val_accuracy,
        val_heads,
        val_images,
        val_dense,
        elapsed_s: stage.elapsed(),
    })
}

/// The batch's dense targets, in [`dense_logits`]' order.
fn dense_targets(
    d: &crate::dense::DenseLabels,
    picks: &[(usize, bool)],
    dev: &Device,
) -> Result<Vec<Tensor>> {
    let mut out = Vec::new();
    for (_, grids) in &d.grids {
        for parts in [false, true] {
            let mut v = Vec::new();
            let mut tokens = 0;
            for &(i, flip) in picks {
                let g = &grids[i][usize::from(flip)];
                tokens = g.h * g.w;
                v.extend_from_slice(if parts { &g.parts } else { &g.objects });
            }
            out.push(Tensor::from_vec(v, (picks.len(), tokens, ()), dev)?);
        }
    }
    Ok(out)
}

fn window(recent: &[(f64, usize)], batch: usize) -> (f64, f64) {
    let k = recent.len().max(1) as f64;
    let l = recent.iter().map(|r| r.0).sum::<f64>() / k;
    let a = recent.iter().map(|r| r.1).sum::<usize>() as f64 / (k * batch as f64);
    (l, a)
}

/// Top-1 accuracy of each image-level head (global first) on `ds`'s
/// labelled images (classes the training images never had are left out),
/// and the dense heads' patch accuracies when there are dense heads.
fn accuracy(
    model: &Calico,
    heads: &Heads,
    ds: &Dataset,
    classes: &[String],
    dense: Option<&crate::dense::DenseLabels>,
) -> Result<(Vec<HeadAccuracy>, usize, Vec<DenseAccuracy>)> {
    let l = image_labels(ds);
    let mut items: Vec<(String, Vec<usize>)> = Vec::new();
    for (f, ls) in l.files.iter().zip(&l.labels) {
        let mapped: Vec<usize> = ls
            .iter()
            .filter_map(|&c| classes.iter().position(|k| *k == l.classes[c]))
            .collect();
        if !mapped.is_empty() {
            items.push((f.clone(), mapped));
        }
    }
    let files: Vec<String> = items.iter().map(|(f, _)| f.clone()).collect();
    let val_dense = match dense {
        Some(d) => {
            let encoders: Vec<Encoder> = d.grids.iter().map(|(e, _)| *e).collect();
            Some(crate::dense::dense_labels(
                ds,
                &files,
                (&d.objects, &d.parts),
                model.config(),
                &encoders,
            )?)
        }
        None => None,
    };
    // Per dense head: (hits, patches).
    let mut tally: Vec<(usize, usize)> = Vec::new();
    // Per image-level head: (top-1 hits, every-object hits).
    let mut hit: Vec<(usize, usize)> = Vec::new();
    for (c, chunk) in items.chunks(32).enumerate() {
        let inputs: Vec<Arc<ImageInput>> = chunk
            .iter()
            .map(|(f, _)| ds.image_input(f))
            .collect::<Result<_>>()?;
        let refs: Vec<&ImageInput> = inputs.iter().map(|a| &**a).collect();
        let (image_level, dense_out) = all_logits(model, heads, &refs)?;
        let labels: Vec<Vec<usize>> = chunk.iter().map(|(_, l)| l.clone()).collect();
        hit.resize(image_level.len(), (0, 0));
        for (h, logits) in hit.iter_mut().zip(&image_level) {
            let logits = logits.detach();
            h.0 += hits(&logits, &labels)?;
            h.1 += all_object_hits(&logits, &labels)?;
        }
        if let Some(vd) = &val_dense {
            let picks: Vec<(usize, bool)> = (0..chunk.len()).map(|i| (c * 32 + i, false)).collect();
            let targets = dense_targets(vd, &picks, &Device::Cpu)?;
            tally.resize(targets.len(), (0, 0));
            for (k, (lg, t)) in dense_out.iter().zip(&targets).enumerate() {
                let (h, n) = patch_hits(&lg.detach(), t)?;
                tally[k].0 += h;
                tally[k].1 += n;
            }
        }
    }
    let mut out = Vec::new();
    if let Some(vd) = &val_dense {
        let names = vd
            .grids
            .iter()
            .flat_map(|(e, _)| [format!("{e:?} objects"), format!("{e:?} parts")]);
        for (name, (h, n)) in names.zip(tally) {
            out.push(DenseAccuracy {
                head: name,
                accuracy: h as f64 / n.max(1) as f64,
                patches: n,
            });
        }
    }
    let per_head = heads
        .image_level()
        .into_iter()
        .zip(&hit)
        .map(|((name, _), (top1, all))| HeadAccuracy {
            head: name.to_string(),
            accuracy: *top1 as f64 / items.len().max(1) as f64,
            all_objects: *all as f64 / items.len().max(1) as f64,
        })
        .collect();
    Ok((per_head, items.len(), out))
}

/// Patches whose target is mostly a class (not "none", the last) and whose
/// top logit is that class: `(hits, such patches)`.
fn patch_hits(logits: &Tensor, targets: &Tensor) -> Result<(usize, usize)> {
    let k = targets.dim(D::Minus1)?;
    let t: Vec<Vec<f32>> = targets.flatten_to(1)?.to_vec2()?;
    let best: Vec<u32> = logits.flatten_to(1)?.argmax(D::Minus1)?.to_vec1()?;
    let (mut h, mut n) = (0, 0);
    for (row, b) in t.iter().zip(best) {
        let (arg, max) =
            row.iter()
                .enumerate()
                .fold((0, f32::MIN), |a, (i, &v)| if v > a.1 { (i, v) } else { a });
        if arg + 1 == k || max < 0.5 {
            continue;
        }
        n += 1;
        h += usize::from(b as usize == arg);
    }
    Ok((h, n))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mirrored_rows_equal_index_select_for_every_span() {
        use candle_core::IndexOp;
        let dev = Device::Cpu;
        let t = Tensor::arange(0f32, 2.0 * 3.0 * 5.0, &dev)
            .unwrap()
            .reshape((2, 3, 5))
            .unwrap();
        for span in [0, 1, 3, 5, usize::MAX] {
            let s = span.min(5) as u32;
            let idx: Vec<u32> = (0..s).rev().chain(s..5).collect();
            let want = t
                .index_select(&Tensor::new(idx.as_slice(), &dev).unwrap(), 2)
                .unwrap();
            let got = mirror_rows(&t, span).unwrap();
            assert_eq!(got.dims(), [2, 3, 5]);
            assert_eq!(
                got.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
                want.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
                "span {span}"
            );
        }
        // The fallback (not float32) gives the same mirror.
        let t64 = t.to_dtype(DType::F64).unwrap();
        let got = mirror_rows(&t64, 3).unwrap().to_dtype(DType::F32).unwrap();
        assert_eq!(
            got.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            mirror_rows(&t, 3)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap()
        );
        // A view that is not contiguous is read in its logical order.
        let tt = t.transpose(1, 2).unwrap();
        let got = mirror_rows(&tt, 2).unwrap();
        let want = mirror_rows(&tt.contiguous().unwrap(), 2).unwrap();
        assert_eq!(
            got.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            want.flatten_all().unwrap().to_vec1::<f32>().unwrap()
        );
        assert_eq!(
            got.i((0, 0)).unwrap().to_vec1::<f32>().unwrap(),
            vec![5.0, 0.0, 10.0]
        );
    }

    #[test]
    fn every_object_needs_all_of_an_images_classes_on_top() {
        let scores = Tensor::new(
            &[
                [0.9f32, 0.8, 0.1, 0.0], // classes {0, 1}: both on top
                [0.9, 0.1, 0.8, 0.0],    // classes {0, 1}: 2 beats 1
                [0.1, 0.2, 0.3, 0.9],    // class {3}
                [0.1, 0.2, 0.9, 0.3],    // class {3}: top-1 wrong too
            ],
            &Device::Cpu,
        )
        .unwrap();
        let labels = vec![vec![0, 1], vec![1, 0], vec![3], vec![3]];
        assert_eq!(all_object_hits(&scores, &labels).unwrap(), 2);
        // Top-1 counts the second image (its best class is one of its two).
        assert_eq!(hits(&scores, &labels).unwrap(), 3);
    }
}
