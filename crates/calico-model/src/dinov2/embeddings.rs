//! DINOv2 input embeddings: non-overlapping patch projection, CLS token,
//! learned position embeddings resampled to the input's patch grid, and
//! optional register tokens.
//!
//! Token order is `[CLS, registers…, patches…]`. Position embeddings are
//! added to CLS and the patches only; the registers are inserted afterwards
//! and carry no position.

use candle_core::{DType, Result, Tensor};
use candle_nn::{Init, VarBuilder};

use super::interpolate::{resample_bicubic, AxisScale};
use super::{Dinov2Config, NameScheme};

/// How the position-embedding grid is resampled when the input's patch grid
/// differs from the checkpoint's (resolved from [`Dinov2Config`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PosInterpolation {
    /// `> 0`: resample with scale factors `(grid + offset) / native` (the
    /// original repository's workaround); `0`: resample to the output size.
    pub offset: f64,
    /// Antialiased bicubic (the register models) or plain bicubic.
    pub antialias: bool,
}

/// The patch embedding: a `patch × patch` convolution with stride `patch`,
/// computed as a matmul over unfolded patches.
#[derive(Debug, Clone)]
pub struct PatchEmbeddings {
    proj: calico_nn::Linear,
    patch: usize,
    channels: usize,
}

impl PatchEmbeddings {
    /// Loads `weight` `(hidden, channels, patch, patch)` and `bias`.
    pub fn new(hidden: usize, channels: usize, patch: usize, vb: VarBuilder) -> Result<Self> {
        let fan_in = channels * patch * patch;
        let bound = 1.0 / (fan_in as f64).sqrt();
        let init = Init::Uniform {
            lo: -bound,
            up: bound,
        };
        let weight = vb.get_with_hints((hidden, channels, patch, patch), "weight", init)?;
        let bias = vb.get_with_hints(hidden, "bias", init)?;
        let weight = weight.reshape((hidden, fan_in))?;
        Ok(Self {
            proj: calico_nn::Linear::from_tensors(weight, Some(bias)),
            patch,
            channels,
        })
    }

    /// The patch grid of an `h × w` image (pixels past the last full patch
    /// are dropped, as a strided convolution does).
    pub fn grid(&self, h: usize, w: usize) -> (usize, usize) {
        (h / self.patch, w / self.patch)
    }

    /// `(B, C, H, W)` → `(B, gh·gw, hidden)` in row-major grid order.
    pub fn forward(&self, pixel_values: &Tensor) -> Result<Tensor> {
        let (b, c, h, w) = pixel_values.dims4().map_err(|_| {
            candle_core::Error::Msg(format!(
                "dinov2: pixel_values must be (batch, {}, height, width), got {:?}",
                self.channels,
                pixel_values.dims()
            ))
        })?;
        if c != self.channels {
            candle_core::bail!(
                "dinov2: pixel_values has {c} channels, the model expects {}",
                self.channels
            );
        }
        let (gh, gw) = self.grid(h, w);
        if gh == 0 || gw == 0 {
            candle_core::bail!(
                "dinov2: a {h}×{w} image is smaller than one {p}×{p} patch",
                p = self.patch
            );
        }
        let p = self.patch;
        let x = pixel_values
            .narrow(2, 0, gh * p)?
            .narrow(3, 0, gw * p)?
            .to_dtype(self.proj.weight().map_or(DType::F32, |w| w.dtype()))?
            .contiguous()?
            .reshape((b, c, gh, p, gw, p))?
            .permute((0, 2, 4, 1, 3, 5))?
            .contiguous()?
            .reshape((b, gh * gw, c * p * p))?;
        self.proj.forward(&x)
    }
}

/// CLS token, mask token (loaded, unused), register tokens, position
/// embeddings and the patch embedding.
#[derive(Debug, Clone)]
pub struct Embeddings {
    pub patch_embeddings: PatchEmbeddings,
    cls_token: Tensor,
    /// Present in every released checkpoint; only pre-training uses it.
    mask_token: Option<Tensor>,
    register_tokens: Option<Tensor>,
    /// `(1, 1 + M², hidden)` for the native `M × M` grid.
    position_embeddings: Tensor,
    native_grid: usize,
    interpolation: PosInterpolation,
}

impl Embeddings {
    /// `vb` points at `embeddings` (HF) or the model root (hub).
    pub fn new(cfg: &Dinov2Config, vb: VarBuilder) -> Result<Self> {
        let d = cfg.hidden_size;
        let native_grid = cfg.image_size / cfg.patch_size;
        if native_grid == 0 {
            candle_core::bail!(
                "dinov2: image_size {} is smaller than patch_size {}",
                cfg.image_size,
                cfg.patch_size
            );
        }
        let n = native_grid * native_grid;
        let tok = Init::Randn {
            mean: 0.0,
            stdev: 0.02,
        };
        let (cls, mask, reg, pos, patch) = match cfg.names {
            NameScheme::Hf => (
                "cls_token",
                "mask_token",
                "register_tokens",
                "position_embeddings",
                "patch_embeddings.projection",
            ),
            NameScheme::Hub => (
                "cls_token",
                "mask_token",
                "register_tokens",
                "pos_embed",
                "patch_embed.proj",
            ),
        };
        let cls_token = vb.get_with_hints((1, 1, d), cls, tok)?;
        let mask_token = if vb.contains_tensor(mask) {
            Some(vb.get((1, d), mask)?)
        } else {
            None
        };
        let register_tokens = if cfg.num_register_tokens > 0 {
            Some(vb.get_with_hints((1, cfg.num_register_tokens, d), reg, tok)?)
        } else {
            None
        };
        let position_embeddings = vb.get_with_hints((1, 1 + n, d), pos, tok)?;
        let patch_embeddings =
            PatchEmbeddings::new(d, cfg.num_channels, cfg.patch_size, vb.pp(patch))?;
        Ok(Self {
            patch_embeddings,
            cls_token,
            mask_token,
            register_tokens,
            position_embeddings,
            native_grid,
            interpolation: cfg.pos_interpolation(),
        })
    }

    /// Number of tokens before the patches (CLS + registers).
    pub fn num_prefix_tokens(&self) -> usize {
        1 + self
            .register_tokens
            .as_ref()
            .map_or(0, |r| r.dim(1).unwrap_or(0))
    }

    /// The mask token, when the checkpoint has one.
    pub fn mask_token(&self) -> Option<&Tensor> {
        self.mask_token.as_ref()
    }

    /// Position embeddings `(1, 1 + gh·gw, hidden)` for an `h × w` image
    /// whose patch grid is `gh × gw`. The native table is returned as is
    /// when the grid has as many patches as the table and the image is
    /// square; otherwise the patch part is resampled (bicubic, in f32).
    pub fn position_embeddings(&self, h: usize, w: usize) -> Result<Tensor> {
        let (gh, gw) = self.patch_embeddings.grid(h, w);
        let m = self.native_grid;
        if gh * gw == m * m && h == w {
            return Ok(self.position_embeddings.clone());
        }
        let d = self.position_embeddings.dim(2)?;
        let cls = self.position_embeddings.narrow(1, 0, 1)?;
        let grid = self
            .position_embeddings
            .narrow(1, 1, m * m)?
            .reshape((m, m, d))?;
        let off = self.interpolation.offset;
        let scales = if off != 0.0 {
            let fh = (gh as f64 + off) / m as f64;
            let fw = (gw as f64 + off) / m as f64;
            // torch derives the output size as floor(in · factor).
            for (g, f) in [(gh, fh), (gw, fw)] {
                if (m as f64 * f).floor() as usize != g {
                    candle_core::bail!(
                        "dinov2: interpolate_offset {off} gives a {}-patch axis instead of {g}",
                        (m as f64 * f).floor()
                    );
                }
            }
            (AxisScale::Factor(fh), AxisScale::Factor(fw))
        } else {
            (AxisScale::Size, AxisScale::Size)
        };
        let grid = resample_bicubic(&grid, (gh, gw), scales, self.interpolation.antialias)?
            .reshape((1, gh * gw, d))?;
        Tensor::cat(&[&cls, &grid], 1)
    }

    /// `(B, C, H, W)` → `(B, 1 + R + gh·gw, hidden)`. Masked pre-training
    /// input (`bool_masked_pos`) is not supported and is an error.
    pub fn forward(
        &self,
        pixel_values: &Tensor,
        bool_masked_pos: Option<&Tensor>,
    ) -> Result<Tensor> {
        if bool_masked_pos.is_some() {
            candle_core::bail!("dinov2: masked patches (bool_masked_pos) are not supported");
        }
        let (_, _, h, w) = pixel_values.dims4().map_err(|_| {
            candle_core::Error::Msg(format!(
                "dinov2: pixel_values must be (batch, channels, height, width), got {:?}",
                pixel_values.dims()
            ))
        })?;
        let patches = self.patch_embeddings.forward(pixel_values)?;
        let (b, _, d) = patches.dims3()?;
        let cls = self
            .cls_token
            .expand((b, 1, d))?
            .to_dtype(patches.dtype())?;
        let x = Tensor::cat(&[&cls, &patches], 1)?;
        let pos = self.position_embeddings(h, w)?.to_dtype(x.dtype())?;
        let x = calico_nn::broadcast::add(&x, &pos)?;
        match &self.register_tokens {
            None => Ok(x),
            Some(r) => {
                let r = r.expand((b, r.dim(1)?, d))?.to_dtype(x.dtype())?;
                let n = x.dim(1)?;
                Tensor::cat(&[&x.narrow(1, 0, 1)?, &r, &x.narrow(1, 1, n - 1)?], 1)
            }
        }
    }
}
