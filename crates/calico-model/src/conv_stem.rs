//! A convolutional stem in place of a ViT's patch projection, for towers
//! trained from scratch (`eva_vit.conv_stem`; not part of the paper, whose
//! EVA-CLIP is pretrained).
//!
//! A ViT whose patches are linear projections learns object classes from a
//! few thousand images very slowly: on SynthParts, a 4-layer, 64-wide ViT
//! plateaus at ~25 % top-1, where a small CNN reaches 70 % in the same time
//! (docs/tiny-recipe.md, "Why EVA gets a convolutional stem"). Early
//! convolutions give the tower a CNN's locality (Xiao et al. 2021, "Early
//! Convolutions Help Transformers See Better").
//!
//! Each stage is a 3×3 convolution with stride 2 (no bias), batch
//! normalisation and ReLU; a 1×1 convolution (with bias) then maps the last
//! stage to the tower's width. `k` stages make patches of `2^k` pixels.
//!
//! Batch normalisation has two modes. With batch statistics on (stage-1
//! training, see [`ConvStem::set_batch_statistics`]) every batch is
//! normalised with its own mean and variance, all differentiable ops. Off
//! (the default: inference, frozen towers) it uses `running_mean` and
//! `running_var`, which are tensors of the checkpoint. They are not
//! trained by gradients: after training, [`ConvStem::batch_statistics`]
//! measures them on training images and the trainer stores the averages
//! ("precise BN", Wu & Johnson 2021).
//!
//! Tensor names under the embeddings: `stem.{i}.conv.weight`,
//! `stem.{i}.bn.{weight,bias,running_mean,running_var}`,
//! `stem.proj.{weight,bias}`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use candle_core::{Result, Tensor};
use candle_nn::{Init, VarBuilder};

/// Batch-norm epsilon (PyTorch's default).
const BN_EPS: f64 = 1e-5;

#[derive(Debug, Clone)]
struct Stage {
    conv: Tensor,
    bn_weight: Tensor,
    bn_bias: Tensor,
    running_mean: Tensor,
    running_var: Tensor,
}

/// Stride-2 convolution stages + a 1×1 projection.
#[derive(Debug, Clone)]
pub struct ConvStem {
    stages: Vec<Stage>,
    proj_weight: Tensor,
    proj_bias: Tensor,
    batch_stats: Arc<AtomicBool>,
}

impl ConvStem {
    /// `channels` per stage (at least one), projected to `hidden`.
    pub fn new(channels: &[usize], hidden: usize, vb: VarBuilder) -> Result<Self> {
        if channels.is_empty() || channels.contains(&0) {
            candle_core::bail!(
                "conv_stem: needs at least one stage of at least one channel, got {channels:?}"
            );
        }
        let mut stages = Vec::with_capacity(channels.len());
        let mut c_in = 3;
        for (i, &c) in channels.iter().enumerate() {
            let vb = vb.pp(i);
            // Kaiming-normal for ReLU: std = sqrt(2 / fan_in).
            let std = (2.0 / (c_in * 9) as f64).sqrt();
            let conv = vb.pp("conv").get_with_hints(
                (c, c_in, 3, 3),
                "weight",
                Init::Randn {
                    mean: 0.0,
                    stdev: std,
                },
            )?;
            let bn = vb.pp("bn");
            stages.push(Stage {
                conv,
                bn_weight: bn.get_with_hints(c, "weight", Init::Const(1.0))?,
                bn_bias: bn.get_with_hints(c, "bias", Init::Const(0.0))?,
                running_mean: bn.get_with_hints(c, "running_mean", Init::Const(0.0))?,
                running_var: bn.get_with_hints(c, "running_var", Init::Const(1.0))?,
            });
            c_in = c;
        }
        let bound = 1.0 / (c_in as f64).sqrt();
        let uniform = Init::Uniform {
            lo: -bound,
            up: bound,
        };
        let proj = vb.pp("proj");
        Ok(Self {
            stages,
            proj_weight: proj.get_with_hints((hidden, c_in, 1, 1), "weight", uniform)?,
            proj_bias: proj.get_with_hints(hidden, "bias", uniform)?,
            batch_stats: Arc::new(AtomicBool::new(false)),
        })
    }

    /// Checks that `channels` stages make patches of `patch` pixels
    /// (`what` names the config in the message).
    pub fn check_patch(channels: &[usize], patch: usize, what: &str) -> Result<()> {
        let k = channels.len();
        if k == 0 || k >= usize::BITS as usize || patch != 1 << k {
            candle_core::bail!(
                "{what}: a conv_stem of {k} stages makes patches of 2^{k} pixels, but patch_size is {patch}"
            );
        }
        Ok(())
    }

    /// Pixels per output cell: `2^stages`.
    pub fn stride(&self) -> usize {
        1 << self.stages.len()
    }

    /// Normalise with each batch's own statistics (training) or with the
    /// running ones (the default). Shared by every clone of the stem.
    pub fn set_batch_statistics(&self, on: bool) {
        self.batch_stats.store(on, Ordering::SeqCst);
    }

    pub fn uses_batch_statistics(&self) -> bool {
        self.batch_stats.load(Ordering::SeqCst)
    }

    /// `(B, 3, H, W)` → `(B, hidden, H / stride, W / stride)`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.run(x, None)
    }

    /// Every stage's batch mean and (biased) variance on `x`, normalising
    /// with them as training does, `(channels,)` each.
    pub fn batch_statistics(&self, x: &Tensor) -> Result<Vec<(Tensor, Tensor)>> {
        let mut stats = Vec::with_capacity(self.stages.len());
        self.run(x, Some(&mut stats))?;
        Ok(stats)
    }

    /// The names (under the stem) and current values of the running
    /// statistics, stage by stage.
    pub fn running_statistics(&self) -> Vec<(String, Tensor)> {
        self.stages
            .iter()
            .enumerate()
            .flat_map(|(i, s)| {
                [
                    (format!("{i}.bn.running_mean"), s.running_mean.clone()),
                    (format!("{i}.bn.running_var"), s.running_var.clone()),
                ]
            })
            .collect()
    }

    fn run(&self, x: &Tensor, mut record: Option<&mut Vec<(Tensor, Tensor)>>) -> Result<Tensor> {
        let batch = record.is_some() || self.uses_batch_statistics();
        // Channels last throughout: each convolution is a matrix product
        // over patch rows and batch norm works on (pixels, channels) rows.
        let mut h = x
            .to_dtype(self.proj_weight.dtype())?
            .permute((0, 2, 3, 1))?;
        for s in &self.stages {
            h = calico_nn::conv::conv2d_nhwc(&h, &s.conv, 1, 2)?;
            let (b, hh, ww, c) = h.dims4()?;
            let rows = h.reshape((b * hh * ww, c))?;
            if let Some(r) = record.as_deref_mut() {
                r.push(calico_nn::batch_norm::column_statistics(&rows)?);
            }
            let rows = if batch {
                calico_nn::batch_norm::batch_norm_rows(
                    &rows,
                    &s.bn_weight,
                    &s.bn_bias,
                    BN_EPS,
                    true,
                )?
            } else {
                let scale = s
                    .bn_weight
                    .broadcast_div(&(&s.running_var + BN_EPS)?.sqrt()?)?
                    .reshape((1, c))?;
                rows.broadcast_sub(&s.running_mean.reshape((1, c))?)?
                    .broadcast_mul(&scale)?
                    .broadcast_add(&s.bn_bias.reshape((1, c))?)?
                    .relu()?
            };
            h = rows.reshape((b, hh, ww, c))?;
        }
        let d = self.proj_bias.dim(0)?;
        let h = calico_nn::conv::conv2d_nhwc(&h, &self.proj_weight, 0, 1)?;
        calico_nn::broadcast::add(&h, &self.proj_bias.reshape((1, 1, 1, d))?)?.permute((0, 3, 1, 2))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use calico_nn::testing::max_abs_diff as max_diff;
    use candle_core::{DType, Device, Var};
    use candle_nn::VarMap;

    fn stem() -> (VarMap, ConvStem) {
        let vm = VarMap::new();
        let vb = VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu);
        let s = ConvStem::new(&[4, 6], 8, vb).unwrap();
        (vm, s)
    }

    #[test]
    fn two_stages_make_patches_of_four() {
        let (_, s) = stem();
        assert_eq!(s.stride(), 4);
        let x = Tensor::randn(0f32, 1.0, (2, 3, 16, 12), &Device::Cpu).unwrap();
        assert_eq!(s.forward(&x).unwrap().dims(), [2, 8, 4, 3]);
        assert!(ConvStem::new(&[], 8, VarBuilder::zeros(DType::F32, &Device::Cpu)).is_err());
    }

    #[test]
    fn batch_statistics_normalise_each_batch() {
        let (vm, s) = stem();
        // Pixels far from zero mean: with running statistics (0, 1) the
        // first stage passes the offset on; with batch statistics its
        // output is centred, whatever the offset.
        let x = (Tensor::randn(0f32, 1.0, (4, 3, 8, 8), &Device::Cpu).unwrap() + 50.0).unwrap();
        let stats = s.batch_statistics(&x).unwrap();
        assert_eq!(stats.len(), 2);
        assert_eq!(stats[0].0.dims(), [4]);
        let m: Vec<f32> = stats[0].0.to_vec1().unwrap();
        assert!(m.iter().any(|v| v.abs() > 1.0), "{m:?}");
        // Stage 2 sees stage 1 normalised: its inputs are ReLU outputs of
        // unit scale, so its mean is modest.
        let eval = s.forward(&x).unwrap();
        s.set_batch_statistics(true);
        let train = s.forward(&x).unwrap();
        let diff = max_diff(&eval, &train);
        assert!(diff > 1e-3, "the two modes agree ({diff})");
        // Storing the measured statistics as the running ones makes the
        // default mode reproduce the batch mode on that batch.
        let data = vm.data().lock().unwrap();
        for (k, (mean, var)) in stats.iter().enumerate() {
            data[&format!("{k}.bn.running_mean")].set(mean).unwrap();
            data[&format!("{k}.bn.running_var")].set(var).unwrap();
        }
        s.set_batch_statistics(false);
        let eval = s.forward(&x).unwrap();
        let diff = max_diff(&eval, &train);
        assert!(
            diff < 1e-3,
            "running statistics differ from the batch's ({diff})"
        );
    }

    #[test]
    fn training_reaches_every_parameter_but_the_running_statistics() {
        let (vm, s) = stem();
        s.set_batch_statistics(true);
        let x = Tensor::randn(0f32, 1.0, (2, 3, 8, 8), &Device::Cpu).unwrap();
        let y = s.forward(&x).unwrap();
        let w = Tensor::randn(0f32, 1.0, y.shape(), &Device::Cpu).unwrap();
        let grads = (y * w).unwrap().sum_all().unwrap().backward().unwrap();
        let data = vm.data().lock().unwrap();
        let (running, trained): (Vec<(&String, &Var)>, Vec<_>) =
            data.iter().partition(|(n, _)| n.contains("running"));
        assert_eq!(running.len(), 4);
        for (n, v) in running {
            assert!(grads.get(v.as_tensor()).is_none(), "`{n}` got a gradient");
        }
        calico_nn::testing::assert_gradients_reach(&grads, trained, "conv stem");
    }
}
