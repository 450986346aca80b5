//! The baselines' vision path (Table 4): a frozen CLIP ViT (LLaVA feature
//! selection: hidden state −2, patch tokens) and LLaVA's `mm_projector`.
//!
//! * Multi-Image LISA: CLIP ViT-L/14 at 224 px (256 tokens), projector a
//!   single Linear(D_clip → D): `model.mm_projector.{weight,bias}`.
//! * Multi-Image GLaMM: CLIP ViT-L/14-336 (576 tokens), projector
//!   Linear(D_clip → D), GELU (exact), Linear(D → D):
//!   `model.mm_projector.{0,2}.{weight,bias}`.
//!
//! Both are frozen, as in LISA and GLaMM training (anchors §2.1/§2.2: LoRA
//! excludes `vision_tower` and `mm_projector`, and neither is in the
//! trainable module list).

use calico_nn::ops::Activation;
use calico_nn::Linear;
use candle_core::{Result, Tensor};
use candle_nn::VarBuilder;

use crate::clip_vision::{ClipVision, ClipVisionConfig};
use crate::config::VisionKind;

/// LLaVA's `mm_projector`.
#[derive(Debug, Clone)]
pub(crate) enum MmProjector {
    /// LISA (LLaVA v1): `Linear`.
    Linear(Linear),
    /// GLaMM (LLaVA-1.5 `mlp2x_gelu`): `Linear`, GELU, `Linear`.
    Mlp2xGelu(Linear, Linear),
}

impl MmProjector {
    pub fn new(kind: VisionKind, d_clip: usize, d: usize, vb: VarBuilder) -> Result<Self> {
        match kind {
            VisionKind::MultiImageLisa => Ok(Self::Linear(Linear::new(d_clip, d, true, vb)?)),
            VisionKind::MultiImageGlamm => Ok(Self::Mlp2xGelu(
                Linear::new(d_clip, d, true, vb.pp("0"))?,
                Linear::new(d, d, true, vb.pp("2"))?,
            )),
            VisionKind::Calico => {
                candle_core::bail!("Calico has no mm_projector (it uses f_image)")
            }
        }
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match self {
            Self::Linear(l) => l.forward(x),
            Self::Mlp2xGelu(a, b) => b.forward(&Activation::Gelu.apply(&a.forward(x)?)?),
        }
    }
}

/// Frozen CLIP tower + projector.
#[derive(Debug, Clone)]
pub(crate) struct BaselineVision {
    pub tower: ClipVision,
    pub projector: MmProjector,
}

impl BaselineVision {
    /// `vb` is the frozen builder at `model`: the tower under
    /// `vision_tower.vision_tower.vision_model`, the projector under
    /// `mm_projector`.
    pub fn new(
        kind: VisionKind,
        tower: &ClipVisionConfig,
        d: usize,
        vb: VarBuilder,
    ) -> Result<Self> {
        let t = ClipVision::new(
            tower,
            vb.pp("vision_tower").pp("vision_tower").pp("vision_model"),
        )?;
        let projector = MmProjector::new(kind, tower.hidden_size, d, vb.pp("mm_projector"))?;
        Ok(Self {
            tower: t,
            projector,
        })
    }

    /// `(n, 3, S, S)` CLIP-normalised pixels → `(features (n, N, D_clip),
    /// visual tokens (n, N, D))`.
    pub fn forward(&self, pixels: &Tensor) -> Result<(Tensor, Tensor)> {
        let feats = self.tower.select_features(pixels)?;
        let tokens = self.projector.forward(&feats)?;
        Ok((feats, tokens))
    }
}
