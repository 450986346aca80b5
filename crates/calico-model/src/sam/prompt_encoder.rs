//! SAM's prompt encoder (Kirillov et al. 2023, §3 "Prompt encoder"), with the
//! text-embedding path LISA and GLaMM add (anchors.md §2.1, §2.3).
//!
//! Prompts become two tensors for the mask decoder:
//! * **sparse** `(B, N, C)`: one token per point, two per box (its corners),
//!   then the caller's text embeddings (LISA's projected `[SEG]` states), in
//!   that order;
//! * **dense** `(B, C, H, W)`: a downscaled mask prompt, or the learned
//!   `no_mask_embed` broadcast over the image-embedding grid.
//!
//! Points and boxes are encoded with random Fourier features of their
//! normalised position (`pe_layer`) plus a learned embedding for their kind.
//!
//! Tensor names (under `prompt_encoder.`): `pe_layer.positional_encoding_gaussian_matrix`,
//! `point_embeddings.{0..3}.weight` (negative point, positive point, box
//! top-left, box bottom-right), `not_a_point_embed.weight`,
//! `no_mask_embed.weight`, `mask_downscaling.{0,1,3,4,6}`.

use std::f64::consts::PI;

use calico_nn::norm::LayerNorm2d;
use candle_core::{DType, Result, Tensor, D};
use candle_nn::{Conv2d, Conv2dConfig, Init, Module, VarBuilder};
use serde::{Deserialize, Serialize};

/// SAM's `LayerNorm2d` epsilon.
const LAYER_NORM_2D_EPS: f64 = 1e-6;

/// Prompt-encoder sizes (SAM: 256 channels, a 64×64 embedding of a
/// 1024×1024 input, 16 hidden mask channels).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct PromptEncoderConfig {
    /// Prompt embedding width `C` (the mask decoder's `transformer_dim`).
    #[serde(alias = "hidden_size")]
    pub embed_dim: usize,
    /// `(H, W)` of the image embedding.
    pub image_embedding_size: [usize; 2],
    /// `(H, W)` of the padded image the encoder saw; point and box
    /// coordinates are pixels of this image.
    pub input_image_size: [usize; 2],
    /// Hidden channels of the mask-prompt downscaler (a multiple of 4).
    #[serde(alias = "mask_input_channels")]
    pub mask_in_chans: usize,
}

impl Default for PromptEncoderConfig {
    fn default() -> Self {
        Self {
            embed_dim: 256,
            image_embedding_size: [64, 64],
            input_image_size: [1024, 1024],
            mask_in_chans: 16,
        }
    }
}

/// Random Fourier position features: a fixed Gaussian matrix `G` (2 × C/2)
/// maps a position `p ∈ [0, 1]²` to `[sin(2π (2p − 1) G), cos(…)]`.
#[derive(Debug, Clone)]
pub struct PositionEmbeddingRandom {
    gaussian: Tensor,
}

impl PositionEmbeddingRandom {
    pub fn new(num_pos_feats: usize, vb: VarBuilder) -> Result<Self> {
        let gaussian = vb.get_with_hints(
            (2, num_pos_feats),
            "positional_encoding_gaussian_matrix",
            Init::Randn {
                mean: 0.0,
                stdev: 1.0,
            },
        )?;
        Ok(Self { gaussian })
    }

    /// Encodes positions `(…, 2)` (x, y) already normalised to `[0, 1]`.
    fn encode(&self, coords: &Tensor) -> Result<Tensor> {
        let Some((&2, lead)) = coords.dims().split_last() else {
            candle_core::bail!(
                "SAM position encoding: coordinates must be (…, 2), got {:?}",
                coords.dims()
            );
        };
        let mut out_dims = lead.to_vec();
        out_dims.push(self.gaussian.dim(1)?);
        // As a 2-d matmul: (rows, 2) @ (2, C/2).
        let rows = lead.iter().product::<usize>();
        let c = ((coords.reshape((rows, 2))? * 2.0)? - 1.0)?;
        let c = (c.matmul(&self.gaussian)? * (2.0 * PI))?.reshape(out_dims)?;
        Tensor::cat(&[c.sin()?, c.cos()?], D::Minus1)
    }

    /// The encoding of every cell centre of an `h × w` grid, `(C, h, w)`.
    pub fn grid(&self, h: usize, w: usize) -> Result<Tensor> {
        let mut xy = Vec::with_capacity(h * w * 2);
        for i in 0..h {
            for j in 0..w {
                xy.push((j as f32 + 0.5) / w as f32);
                xy.push((i as f32 + 0.5) / h as f32);
            }
        }
        let xy = Tensor::from_vec(xy, (h, w, 2), self.gaussian.device())?
            .to_dtype(self.gaussian.dtype())?;
        self.encode(&xy)?.permute((2, 0, 1))
    }

    /// Encodes pixel coordinates `(B, N, 2)` (x, y) of an image of size
    /// `(H, W)`.
    pub fn forward_with_coords(&self, coords: &Tensor, image_size: [usize; 2]) -> Result<Tensor> {
        let scale = Tensor::new(
            &[1.0 / image_size[1] as f32, 1.0 / image_size[0] as f32],
            coords.device(),
        )?
        .to_dtype(coords.dtype())?;
        self.encode(&coords.broadcast_mul(&scale)?)
    }
}

/// The prompts for one call; any subset may be given, all with the same
/// batch size `B` (one mask is predicted per batch row).
#[derive(Debug, Clone, Copy, Default)]
pub struct Prompts<'a> {
    /// Point coordinates `(B, N, 2)` as (x, y) pixels of the input image, and
    /// labels `(B, N)`: 1 foreground, 0 background, −1 ignored (padding).
    pub points: Option<(&'a Tensor, &'a Tensor)>,
    /// Boxes `(B, 4)` or `(B, 1, 4)` as (x0, y0, x1, y1) pixels.
    pub boxes: Option<&'a Tensor>,
    /// Low-resolution mask logits `(B, 1, 4H, 4W)`.
    pub masks: Option<&'a Tensor>,
    /// Text (LISA `[SEG]`) embeddings `(B, T, C)`, appended after points and
    /// boxes.
    pub text_embeds: Option<&'a Tensor>,
}

/// SAM's prompt encoder.
#[derive(Debug, Clone)]
pub struct PromptEncoder {
    pe_layer: PositionEmbeddingRandom,
    /// 0 negative point, 1 positive point, 2 box top-left, 3 box bottom-right;
    /// each `(1, C)`.
    point_embeddings: Vec<Tensor>,
    not_a_point_embed: Tensor,
    no_mask_embed: Tensor,
    mask_downscaling: MaskDownscaling,
    cfg: PromptEncoderConfig,
}

/// Mask prompt → dense embedding: two 2×2 stride-2 convolutions each
/// followed by `LayerNorm2d` and GELU, then a 1×1 convolution to `C`.
#[derive(Debug, Clone)]
struct MaskDownscaling {
    conv0: Conv2d,
    norm1: LayerNorm2d,
    conv3: Conv2d,
    norm4: LayerNorm2d,
    conv6: Conv2d,
}

impl MaskDownscaling {
    fn new(mask_in_chans: usize, embed_dim: usize, vb: VarBuilder) -> Result<Self> {
        let quarter = mask_in_chans / 4;
        let down = Conv2dConfig {
            stride: 2,
            ..Default::default()
        };
        Ok(Self {
            conv0: candle_nn::conv2d(1, quarter, 2, down, vb.pp("0"))?,
            norm1: LayerNorm2d::new(quarter, LAYER_NORM_2D_EPS, vb.pp("1"))?,
            conv3: candle_nn::conv2d(quarter, mask_in_chans, 2, down, vb.pp("3"))?,
            norm4: LayerNorm2d::new(mask_in_chans, LAYER_NORM_2D_EPS, vb.pp("4"))?,
            conv6: candle_nn::conv2d(mask_in_chans, embed_dim, 1, Default::default(), vb.pp("6"))?,
        })
    }

    fn forward(&self, masks: &Tensor) -> Result<Tensor> {
        let x = self.conv0.forward(masks)?;
        let x = self.norm1.forward(&x)?.gelu_erf()?;
        let x = self.conv3.forward(&x)?;
        let x = self.norm4.forward(&x)?.gelu_erf()?;
        self.conv6.forward(&x)
    }
}

fn embedding(dim: usize, name: &str, vb: &VarBuilder) -> Result<Tensor> {
    vb.pp(name).get_with_hints(
        (1, dim),
        "weight",
        Init::Randn {
            mean: 0.0,
            stdev: 1.0,
        },
    )
}

impl PromptEncoder {
    pub fn new(cfg: &PromptEncoderConfig, vb: VarBuilder) -> Result<Self> {
        let c = cfg.embed_dim;
        if c == 0 || !c.is_multiple_of(2) {
            candle_core::bail!("SAM prompt encoder: embed_dim {c} must be even and positive");
        }
        if cfg.mask_in_chans == 0 || !cfg.mask_in_chans.is_multiple_of(4) {
            candle_core::bail!(
                "SAM prompt encoder: mask_in_chans {} must be a positive multiple of 4",
                cfg.mask_in_chans
            );
        }
        if cfg.image_embedding_size.contains(&0) || cfg.input_image_size.contains(&0) {
            candle_core::bail!("SAM prompt encoder: image sizes must be positive: {cfg:?}");
        }
        let point_embeddings = (0..4)
            .map(|i| embedding(c, &format!("point_embeddings.{i}"), &vb))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            pe_layer: PositionEmbeddingRandom::new(c / 2, vb.pp("pe_layer"))?,
            point_embeddings,
            not_a_point_embed: embedding(c, "not_a_point_embed", &vb)?,
            no_mask_embed: embedding(c, "no_mask_embed", &vb)?,
            mask_downscaling: MaskDownscaling::new(
                cfg.mask_in_chans,
                c,
                vb.pp("mask_downscaling"),
            )?,
            cfg: *cfg,
        })
    }

    pub fn config(&self) -> &PromptEncoderConfig {
        &self.cfg
    }

    /// The positional encoding of the image-embedding grid, `(1, C, H, W)`
    /// (the decoder's `image_pe`).
    pub fn get_dense_pe(&self) -> Result<Tensor> {
        let [h, w] = self.cfg.image_embedding_size;
        self.pe_layer.grid(h, w)?.unsqueeze(0)
    }

    /// `no_mask_embed` broadcast to `(b, C, H, W)`.
    pub fn no_mask_dense(&self, b: usize) -> Result<Tensor> {
        let [h, w] = self.cfg.image_embedding_size;
        let c = self.cfg.embed_dim;
        calico_nn::broadcast::expand(&self.no_mask_embed.reshape((1, c, 1, 1))?, (b, c, h, w))
    }

    /// LISA/GLaMM's path: text embeddings `(n, T, C)` (T = 1 for one `[SEG]`
    /// per mask) are the sparse prompt; the dense prompt is `no_mask_embed`.
    pub fn forward_text(&self, text_embeds: &Tensor) -> Result<(Tensor, Tensor)> {
        self.forward(&Prompts {
            text_embeds: Some(text_embeds),
            ..Default::default()
        })
    }

    fn batch_size(&self, p: &Prompts) -> Result<usize> {
        let mut sizes = Vec::new();
        if let Some((coords, labels)) = p.points {
            let (b, n, two) = coords.dims3()?;
            if two != 2 || labels.dims() != [b, n] {
                candle_core::bail!(
                    "SAM prompt encoder: points must be (B, N, 2) with labels (B, N), got {:?} and {:?}",
                    coords.dims(),
                    labels.dims()
                );
            }
            sizes.push(("points", b));
        }
        if let Some(boxes) = p.boxes {
            let ok = matches!(boxes.dims(), [_, 4] | [_, 1, 4]);
            if !ok {
                candle_core::bail!(
                    "SAM prompt encoder: boxes must be (B, 4) or (B, 1, 4), got {:?}",
                    boxes.dims()
                );
            }
            sizes.push(("boxes", boxes.dim(0)?));
        }
        if let Some(masks) = p.masks {
            let [h, w] = self.cfg.image_embedding_size;
            let b = masks.dim(0)?;
            if masks.dims() != [b, 1, 4 * h, 4 * w] {
                candle_core::bail!(
                    "SAM prompt encoder: mask prompts must be (B, 1, {}, {}), got {:?}",
                    4 * h,
                    4 * w,
                    masks.dims()
                );
            }
            sizes.push(("masks", b));
        }
        if let Some(text) = p.text_embeds {
            let (b, _, c) = text.dims3()?;
            if c != self.cfg.embed_dim {
                candle_core::bail!(
                    "SAM prompt encoder: text embeddings must be (B, T, {}), got {:?}",
                    self.cfg.embed_dim,
                    text.dims()
                );
            }
            sizes.push(("text_embeds", b));
        }
        let Some(&(_, b)) = sizes.first() else {
            // The reference encodes "no prompt" as one empty prompt.
            return Ok(1);
        };
        if let Some((name, other)) = sizes.iter().find(|(_, s)| *s != b) {
            candle_core::bail!(
                "SAM prompt encoder: {} has batch size {other}, {} has {b}",
                name,
                sizes[0].0
            );
        }
        Ok(b)
    }

    /// Point tokens `(B, N(+1), C)`; `pad` appends one ignored point (the
    /// reference does so when no box follows).
    fn embed_points(&self, coords: &Tensor, labels: &Tensor, pad: bool) -> Result<Tensor> {
        let (b, n, _) = coords.dims3()?;
        let dtype = self.not_a_point_embed.dtype();
        let device = self.not_a_point_embed.device();
        let mut coords = (coords.to_dtype(dtype)? + 0.5)?;
        let mut labels: Vec<f32> = labels
            .to_dtype(DType::F32)?
            .flatten_all()?
            .to_device(&candle_core::Device::Cpu)?
            .to_vec1()?;
        if let Some(bad) = labels.iter().find(|&&l| l != -1.0 && l != 0.0 && l != 1.0) {
            candle_core::bail!("SAM prompt encoder: point label {bad} is none of -1, 0, 1");
        }
        let mut n_total = n;
        if pad {
            coords = Tensor::cat(&[&coords, &Tensor::zeros((b, 1, 2), dtype, device)?], 1)?;
            labels = labels
                .chunks(n.max(1))
                .take(b)
                .flat_map(|row| row.iter().copied().chain(std::iter::once(-1.0)))
                .collect();
            if n == 0 {
                labels = vec![-1.0; b];
            }
            n_total += 1;
        }
        let indicator = |value: f32| -> Result<Tensor> {
            let v: Vec<f32> = labels
                .iter()
                .map(|&l| if l == value { 1.0 } else { 0.0 })
                .collect();
            Tensor::from_vec(v, (b, n_total, 1), device)?.to_dtype(dtype)
        };
        let is_pad = indicator(-1.0)?;
        let keep = (1.0 - &is_pad)?;
        let pe = self
            .pe_layer
            .forward_with_coords(&coords, self.cfg.input_image_size)?;
        pe.broadcast_mul(&keep)?
            + is_pad.broadcast_mul(&self.not_a_point_embed)?
            + indicator(0.0)?.broadcast_mul(&self.point_embeddings[0])?
            + indicator(1.0)?.broadcast_mul(&self.point_embeddings[1])?
    }

    /// Box corner tokens `(B, 2, C)`.
    fn embed_boxes(&self, boxes: &Tensor) -> Result<Tensor> {
        let b = boxes.dim(0)?;
        let dtype = self.not_a_point_embed.dtype();
        let corners = (boxes.to_dtype(dtype)? + 0.5)?.reshape((b, 2, 2))?;
        let pe = self
            .pe_layer
            .forward_with_coords(&corners, self.cfg.input_image_size)?;
        let kinds = Tensor::cat(&[&self.point_embeddings[2], &self.point_embeddings[3]], 0)?;
        pe.broadcast_add(&kinds)
    }

    /// Encodes `prompts` into `(sparse (B, N, C), dense (B, C, H, W))`.
    pub fn forward(&self, prompts: &Prompts) -> Result<(Tensor, Tensor)> {
        let b = self.batch_size(prompts)?;
        let c = self.cfg.embed_dim;
        let dtype = self.no_mask_embed.dtype();
        let device = self.no_mask_embed.device();
        let mut sparse = vec![Tensor::zeros((b, 0, c), dtype, device)?];
        if let Some((coords, labels)) = prompts.points {
            sparse.push(self.embed_points(coords, labels, prompts.boxes.is_none())?);
        }
        if let Some(boxes) = prompts.boxes {
            sparse.push(self.embed_boxes(boxes)?);
        }
        if let Some(text) = prompts.text_embeds {
            sparse.push(text.to_dtype(dtype)?);
        }
        let sparse = Tensor::cat(&sparse, 1)?;
        let dense = match prompts.masks {
            Some(m) => self.mask_downscaling.forward(&m.to_dtype(dtype)?)?,
            None => self.no_mask_dense(b)?,
        };
        Ok((sparse, dense))
    }
}
