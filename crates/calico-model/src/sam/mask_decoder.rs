//! SAM's mask decoder (Kirillov et al. 2023, §3 "Mask decoder"): the pixel
//! decoder LISA and GLaMM train to turn `[SEG]` embeddings into masks.
//!
//! Learned output tokens (one IoU token, `1 + num_multimask_outputs` mask
//! tokens) are prepended to the sparse prompt tokens; the two-way transformer
//! lets them and the image embedding (plus the dense prompt) attend to each
//! other. The image side is upscaled ×4 by two transposed convolutions; each
//! mask token, through its own 3-layer MLP ("hypernetwork"), gives the
//! weights of a dot product with every upscaled pixel — a mask's logits. The
//! IoU token predicts each mask's quality.
//!
//! Tensor names (under `mask_decoder.`): `transformer.*`
//! ([`super::transformer`]), `iou_token.weight`, `mask_tokens.weight`,
//! `output_upscaling.{0,1,3}`, `output_hypernetworks_mlps.N.layers.M`,
//! `iou_prediction_head.layers.M`.
//!
//! Everything is built from differentiable ops (the transposed convolutions
//! are kernel-2 stride-2, i.e. a matmul and a reshape), so the decoder trains
//! as LISA/GLaMM train it.

use std::collections::BTreeMap;

use calico_nn::norm::LayerNorm2d;
use calico_nn::Linear;
use candle_core::{DType, Device, Result, Tensor};
use candle_nn::{Init, VarBuilder};
use serde::{Deserialize, Serialize};

use super::prompt_encoder::{PromptEncoder, PromptEncoderConfig, Prompts};
use super::transformer::{TwoWayTransformer, TwoWayTransformerConfig};
use crate::load::Checkpoint;
use crate::parity::Case;

/// SAM's `LayerNorm2d` epsilon.
const LAYER_NORM_2D_EPS: f64 = 1e-6;

/// Mask-decoder sizes (SAM and LISA/GLaMM: width 256, a depth-2 two-way
/// transformer with 8 heads and MLP 2048, 3 multimask outputs, IoU head of
/// depth 3 and width 256).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct MaskDecoderConfig {
    #[serde(alias = "hidden_size")]
    pub transformer_dim: usize,
    /// Two-way transformer depth.
    #[serde(alias = "num_hidden_layers")]
    pub depth: usize,
    #[serde(alias = "num_attention_heads")]
    pub num_heads: usize,
    pub mlp_dim: usize,
    pub attention_downsample_rate: usize,
    pub num_multimask_outputs: usize,
    pub iou_head_depth: usize,
    pub iou_head_hidden_dim: usize,
}

impl Default for MaskDecoderConfig {
    fn default() -> Self {
        Self {
            transformer_dim: 256,
            depth: 2,
            num_heads: 8,
            mlp_dim: 2048,
            attention_downsample_rate: 2,
            num_multimask_outputs: 3,
            iou_head_depth: 3,
            iou_head_hidden_dim: 256,
        }
    }
}

impl MaskDecoderConfig {
    pub fn transformer(&self) -> TwoWayTransformerConfig {
        TwoWayTransformerConfig {
            depth: self.depth,
            embedding_dim: self.transformer_dim,
            num_heads: self.num_heads,
            mlp_dim: self.mlp_dim,
            attention_downsample_rate: self.attention_downsample_rate,
        }
    }
}

/// A stack of linear layers (`layers.M`) with ReLU between them.
#[derive(Debug, Clone)]
pub struct Mlp {
    layers: Vec<Linear>,
}

impl Mlp {
    pub fn new(
        input_dim: usize,
        hidden_dim: usize,
        output_dim: usize,
        num_layers: usize,
        vb: VarBuilder,
    ) -> Result<Self> {
        if num_layers == 0 {
            candle_core::bail!("SAM MLP: needs at least one layer");
        }
        let layers = (0..num_layers)
            .map(|i| {
                let fan_in = if i == 0 { input_dim } else { hidden_dim };
                let fan_out = if i + 1 == num_layers {
                    output_dim
                } else {
                    hidden_dim
                };
                Linear::new(fan_in, fan_out, true, vb.pp("layers").pp(i))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self { layers })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mut x = x.clone();
        for (i, layer) in self.layers.iter().enumerate() {
            x = layer.forward(&x)?;
            if i + 1 < self.layers.len() {
                x = x.relu()?;
            }
        }
        Ok(x)
    }
}

/// `nn.ConvTranspose2d(in, out, kernel_size=2, stride=2)`: every input pixel
/// writes a 2×2 output patch, `out[b, o, 2i+u, 2j+v] = Σ_c x[b, c, i, j]
/// W[c, o, u, v] + bias[o]`. Computed as one matmul and a reshape, so it is
/// differentiable and fast on every backend.
#[derive(Debug, Clone)]
pub struct ConvTranspose2x2 {
    /// `(in, out, 2, 2)`, PyTorch's layout.
    weight: Tensor,
    bias: Tensor,
}

impl ConvTranspose2x2 {
    pub fn new(in_channels: usize, out_channels: usize, vb: VarBuilder) -> Result<Self> {
        let bound = 1.0 / ((out_channels * 4) as f64).sqrt();
        let init = Init::Uniform {
            lo: -bound,
            up: bound,
        };
        Ok(Self {
            weight: vb.get_with_hints((in_channels, out_channels, 2, 2), "weight", init)?,
            bias: vb.get_with_hints(out_channels, "bias", init)?,
        })
    }

    /// `(B, in, H, W)` → `(B, out, 2H, 2W)`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (cin, cout, _, _) = self.weight.dims4()?;
        let (b, c, h, w) = x.dims4()?;
        if c != cin {
            candle_core::bail!("SAM transposed conv: input has {c} channels, expected {cin}");
        }
        // (B·H·W, in) @ (in, out·4) → (B, H, W, out, 2, 2)
        let pixels = x.permute((0, 2, 3, 1))?.reshape((b * h * w, cin))?;
        let patches = pixels
            .matmul(&self.weight.reshape((cin, cout * 4))?)?
            .reshape((b, h, w, cout, 2, 2))?;
        // → (B, out, H, 2, W, 2) → (B, out, 2H, 2W)
        let up = patches
            .permute((0, 3, 1, 4, 2, 5))?
            .reshape((b, cout, 2 * h, 2 * w))?;
        calico_nn::broadcast::add(&up, &self.bias.reshape((1, cout, 1, 1))?)
    }
}

/// SAM's mask decoder.
#[derive(Debug, Clone)]
pub struct MaskDecoder {
    transformer: TwoWayTransformer,
    /// `(1, C)`.
    iou_token: Tensor,
    /// `(1 + num_multimask_outputs, C)`.
    mask_tokens: Tensor,
    upscale0: ConvTranspose2x2,
    upscale_norm1: LayerNorm2d,
    upscale3: ConvTranspose2x2,
    output_hypernetworks_mlps: Vec<Mlp>,
    iou_prediction_head: Mlp,
    cfg: MaskDecoderConfig,
}

impl MaskDecoder {
    pub fn new(cfg: &MaskDecoderConfig, vb: VarBuilder) -> Result<Self> {
        let c = cfg.transformer_dim;
        if c == 0 || !c.is_multiple_of(8) {
            candle_core::bail!("SAM mask decoder: transformer_dim {c} must be a multiple of 8");
        }
        let num_mask_tokens = cfg.num_multimask_outputs + 1;
        let token_init = Init::Randn {
            mean: 0.0,
            stdev: 1.0,
        };
        let up = vb.pp("output_upscaling");
        Ok(Self {
            transformer: TwoWayTransformer::new(&cfg.transformer(), vb.pp("transformer"))?,
            iou_token: vb
                .pp("iou_token")
                .get_with_hints((1, c), "weight", token_init)?,
            mask_tokens: vb.pp("mask_tokens").get_with_hints(
                (num_mask_tokens, c),
                "weight",
                token_init,
            )?,
            upscale0: ConvTranspose2x2::new(c, c / 4, up.pp("0"))?,
            upscale_norm1: LayerNorm2d::new(c / 4, LAYER_NORM_2D_EPS, up.pp("1"))?,
            upscale3: ConvTranspose2x2::new(c / 4, c / 8, up.pp("3"))?,
            output_hypernetworks_mlps: (0..num_mask_tokens)
                .map(|i| Mlp::new(c, c, c / 8, 3, vb.pp("output_hypernetworks_mlps").pp(i)))
                .collect::<Result<Vec<_>>>()?,
            iou_prediction_head: Mlp::new(
                c,
                cfg.iou_head_hidden_dim,
                num_mask_tokens,
                cfg.iou_head_depth,
                vb.pp("iou_prediction_head"),
            )?,
            cfg: *cfg,
        })
    }

    pub fn config(&self) -> &MaskDecoderConfig {
        &self.cfg
    }

    /// Predicts one mask set per prompt row.
    ///
    /// * `image_embeddings`: `(1, C, H, W)`, shared by every prompt (it is
    ///   repeated per prompt, as the reference's `repeat_interleave` does for
    ///   one image), or `(n, C, H, W)`, one image per prompt;
    /// * `image_pe`: `(1, C, H, W)` ([`PromptEncoder::get_dense_pe`]);
    /// * `sparse`: `(n, k, C)`; `dense`: `(n, C, H, W)`.
    ///
    /// Returns mask logits `(n, m, 4H, 4W)` and IoU predictions `(n, m)`,
    /// where `m` is `num_multimask_outputs` with `multimask_output` and 1
    /// (the first mask token's) without.
    pub fn forward(
        &self,
        image_embeddings: &Tensor,
        image_pe: &Tensor,
        sparse: &Tensor,
        dense: &Tensor,
        multimask_output: bool,
    ) -> Result<(Tensor, Tensor)> {
        let c = self.cfg.transformer_dim;
        let (n, _, sc) = sparse.dims3()?;
        if sc != c || n == 0 {
            candle_core::bail!(
                "SAM mask decoder: sparse prompts must be (n ≥ 1, k, {c}), got {:?}",
                sparse.dims()
            );
        }
        let (ib, ic, h, w) = image_embeddings.dims4()?;
        if ic != c || (ib != 1 && ib != n) {
            candle_core::bail!(
                "SAM mask decoder: image embeddings must be (1 or {n}, {c}, H, W), got {:?}",
                image_embeddings.dims()
            );
        }
        if image_pe.dims() != [1, c, h, w] {
            candle_core::bail!(
                "SAM mask decoder: image_pe must be (1, {c}, {h}, {w}), got {:?}",
                image_pe.dims()
            );
        }
        if dense.dims() != [n, c, h, w] {
            candle_core::bail!(
                "SAM mask decoder: dense prompts must be ({n}, {c}, {h}, {w}), got {:?}",
                dense.dims()
            );
        }
        let (masks, iou) = self.predict_masks(image_embeddings, image_pe, sparse, dense)?;
        let m = masks.dim(1)?;
        let (start, len) = if multimask_output { (1, m - 1) } else { (0, 1) };
        Ok((masks.narrow(1, start, len)?, iou.narrow(1, start, len)?))
    }

    /// All `1 + num_multimask_outputs` masks and IoU predictions.
    fn predict_masks(
        &self,
        image_embeddings: &Tensor,
        image_pe: &Tensor,
        sparse: &Tensor,
        dense: &Tensor,
    ) -> Result<(Tensor, Tensor)> {
        let (n, _, c) = sparse.dims3()?;
        let (_, _, h, w) = image_embeddings.dims4()?;
        let output_tokens = Tensor::cat(&[&self.iou_token, &self.mask_tokens], 0)?;
        let t = output_tokens.dim(0)?;
        let output_tokens =
            calico_nn::broadcast::expand(&output_tokens.unsqueeze(0)?, (n, t, c))?.contiguous()?;
        let tokens = Tensor::cat(
            &[&output_tokens, &sparse.to_dtype(output_tokens.dtype())?],
            1,
        )?;

        let src = calico_nn::broadcast::add(
            &calico_nn::broadcast::expand(image_embeddings, (n, c, h, w))?,
            dense,
        )?;
        let pos_src = calico_nn::broadcast::expand(image_pe, (n, c, h, w))?.contiguous()?;
        let (hs, src) = self.transformer.forward(&src, &pos_src, &tokens)?;
        let iou_token_out = hs.narrow(1, 0, 1)?.squeeze(1)?.contiguous()?;
        let num_mask_tokens = self.output_hypernetworks_mlps.len();

        // (n, HW, C) → (n, C, H, W) → ×4 upscaled (n, C/8, 4H, 4W)
        let src = src.transpose(1, 2)?.reshape((n, c, h, w))?;
        let up = self.upscale0.forward(&src)?;
        let up = self.upscale_norm1.forward(&up)?.gelu_erf()?;
        let up = self.upscale3.forward(&up)?.gelu_erf()?;
        let (_, cu, hu, wu) = up.dims4()?;

        let hyper_in = self
            .output_hypernetworks_mlps
            .iter()
            .enumerate()
            .map(|(i, mlp)| mlp.forward(&hs.narrow(1, 1 + i, 1)?.squeeze(1)?.contiguous()?))
            .collect::<Result<Vec<_>>>()?;
        let hyper_in = Tensor::stack(&hyper_in, 1)?; // (n, M, C/8)
        let masks = hyper_in.matmul(&up.reshape((n, cu, hu * wu))?)?.reshape((
            n,
            num_mask_tokens,
            hu,
            wu,
        ))?;
        let iou = self.iou_prediction_head.forward(&iou_token_out)?;
        Ok((masks, iou))
    }
}

/// The configuration of a `sam_prompt_mask_decoder` parity case.
#[derive(Debug, Clone, Deserialize)]
struct ParityConfig {
    prompt_encoder: PromptEncoderConfig,
    mask_decoder: MaskDecoderConfig,
    multimask_output: bool,
}

/// Replays a `sam_prompt_mask_decoder` case: the prompt encoder turns the
/// case's prompts (text embeddings, and optionally points, boxes, a mask)
/// into sparse/dense embeddings as LISA does, then the decoder predicts.
/// Outputs `low_res_masks`, `iou_predictions`, `dense_pe`.
pub fn parity_forward(
    case: &Case,
    ckpt: &Checkpoint,
    device: &Device,
) -> Result<BTreeMap<String, Tensor>> {
    let cfg: ParityConfig = case.config()?;
    let vb = ckpt.var_builder(DType::F32, device);
    let prompt_encoder = PromptEncoder::new(&cfg.prompt_encoder, vb.pp("prompt_encoder"))?;
    let decoder = MaskDecoder::new(&cfg.mask_decoder, vb.pp("mask_decoder"))?;

    let optional = |name: &str| -> Result<Option<Tensor>> {
        if case.inputs.contains_key(name) {
            Ok(Some(case.input(name)?.to_device(device)?))
        } else {
            Ok(None)
        }
    };
    let image_embeddings = case.input("image_embeddings")?.to_device(device)?;
    let text = optional("text_embeds")?;
    let coords = optional("point_coords")?;
    let labels = optional("point_labels")?;
    let boxes = optional("boxes")?;
    let masks = optional("mask_inputs")?;
    let points = match (&coords, &labels) {
        (Some(c), Some(l)) => Some((c, l)),
        (None, None) => None,
        _ => candle_core::bail!("point_coords and point_labels come together"),
    };
    let (sparse, dense) = prompt_encoder.forward(&Prompts {
        points,
        boxes: boxes.as_ref(),
        masks: masks.as_ref(),
        text_embeds: text.as_ref(),
    })?;
    let dense_pe = prompt_encoder.get_dense_pe()?;
    let (low_res_masks, iou_predictions) = decoder.forward(
        &image_embeddings,
        &dense_pe,
        &sparse,
        &dense,
        cfg.multimask_output,
    )?;
    Ok(BTreeMap::from([
        ("low_res_masks".to_string(), low_res_masks),
        ("iou_predictions".to_string(), iou_predictions),
        ("dense_pe".to_string(), dense_pe),
    ]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use calico_nn::testing::max_abs_diff;
    use candle_nn::VarMap;

    fn tiny() -> (PromptEncoderConfig, MaskDecoderConfig) {
        (
            PromptEncoderConfig {
                embed_dim: 16,
                image_embedding_size: [4, 6],
                input_image_size: [16, 24],
                // 8, not 4: a LayerNorm2d over a single channel is constant.
                mask_in_chans: 8,
            },
            MaskDecoderConfig {
                transformer_dim: 16,
                depth: 2,
                num_heads: 2,
                mlp_dim: 32,
                attention_downsample_rate: 2,
                num_multimask_outputs: 3,
                iou_head_depth: 3,
                iou_head_hidden_dim: 16,
            },
        )
    }

    #[test]
    fn transposed_conv_matches_candle() {
        let dev = Device::Cpu;
        let x = Tensor::randn(0f32, 1., (2, 3, 4, 5), &dev).unwrap();
        let weight = Tensor::randn(0f32, 1., (3, 6, 2, 2), &dev).unwrap();
        let bias = Tensor::randn(0f32, 1., 6, &dev).unwrap();
        let ours = ConvTranspose2x2 {
            weight: weight.clone(),
            bias: bias.clone(),
        }
        .forward(&x)
        .unwrap();
        let theirs = x
            .conv_transpose2d(&weight, 0, 0, 2, 1)
            .unwrap()
            .broadcast_add(&bias.reshape((1, 6, 1, 1)).unwrap())
            .unwrap();
        let diff = max_abs_diff(&ours, &theirs);
        assert!(diff < 1e-5, "{diff}");
    }

    #[test]
    fn gradients_reach_every_parameter_and_shapes_follow_the_prompts() {
        let dev = Device::Cpu;
        let (pc, mc) = tiny();
        let varmap = VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, &dev);
        let pe = PromptEncoder::new(&pc, vb.pp("prompt_encoder")).unwrap();
        let dec = MaskDecoder::new(&mc, vb.pp("mask_decoder")).unwrap();
        let image = Tensor::randn(0f32, 1., (1, 16, 4, 6), &dev).unwrap();
        let text = Tensor::randn(0f32, 1., (2, 1, 16), &dev).unwrap();
        let coords = Tensor::new(&[[[3f32, 4.]], [[10., 2.]]], &dev).unwrap();
        let labels = Tensor::new(&[[1f32], [0.]], &dev).unwrap();
        let boxes = Tensor::new(&[[1f32, 1., 8., 9.], [0., 2., 20., 15.]], &dev).unwrap();
        let mask = Tensor::randn(0f32, 1., (2, 1, 16, 24), &dev).unwrap();

        let (sparse, dense) = pe
            .forward(&Prompts {
                points: Some((&coords, &labels)),
                boxes: None,
                masks: None,
                text_embeds: Some(&text),
            })
            .unwrap();
        // one point + the padding point + one text token
        assert_eq!(sparse.dims(), [2, 3, 16]);
        let (masks, iou) = dec
            .forward(&image, &pe.get_dense_pe().unwrap(), &sparse, &dense, true)
            .unwrap();
        assert_eq!(masks.dims(), [2, 3, 16, 24]);
        assert_eq!(iou.dims(), [2, 3]);
        let loss1 = (masks.sqr().unwrap().mean_all().unwrap() + iou.mean_all().unwrap()).unwrap();

        // Boxes and a mask prompt reach the box-corner and downscaling weights.
        let (sparse, dense) = pe
            .forward(&Prompts {
                points: Some((&coords, &labels)),
                boxes: Some(&boxes),
                masks: Some(&mask),
                text_embeds: Some(&text),
            })
            .unwrap();
        assert_eq!(sparse.dims(), [2, 4, 16]);
        let (masks, _) = dec
            .forward(&image, &pe.get_dense_pe().unwrap(), &sparse, &dense, false)
            .unwrap();
        assert_eq!(masks.dims(), [2, 1, 16, 24]);
        let pad = Tensor::new(&[[-1f32], [-1.]], &dev).unwrap();
        let (sparse, dense) = pe
            .forward(&Prompts {
                points: Some((&coords, &pad)),
                ..Default::default()
            })
            .unwrap();
        let (masks2, _) = dec
            .forward(&image, &pe.get_dense_pe().unwrap(), &sparse, &dense, false)
            .unwrap();
        let loss = (loss1
            + masks.sqr().unwrap().mean_all().unwrap()
            + masks2.sqr().unwrap().mean_all().unwrap())
        .unwrap();
        let grads = loss.backward().unwrap();
        let data = varmap.data().lock().unwrap();
        let mut missing: Vec<&String> = data
            .iter()
            .filter(|(_, v)| {
                grads.get(v.as_tensor()).is_none_or(|g| {
                    g.abs()
                        .unwrap()
                        .sum_all()
                        .unwrap()
                        .to_scalar::<f32>()
                        .unwrap()
                        == 0.0
                })
            })
            .map(|(k, _)| k)
            .collect();
        missing.sort();
        assert!(missing.is_empty(), "no gradient for {missing:?}");
    }

    /// Standard normal samples from a seeded ChaCha generator (Box–Muller), f64 on CPU.
    fn seeded_randn<S: Into<candle_core::Shape>>(shape: S, seed: u64) -> Tensor {
        use rand::{Rng, SeedableRng};
        let shape = shape.into();
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let v: Vec<f64> = (0..shape.elem_count())
            .map(|_| {
                let u1: f64 = rng.random::<f64>().max(1e-12);
                let u2: f64 = rng.random();
                (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
            })
            .collect();
        Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
    }

    #[test]
    fn gradients_match_finite_differences() {
        let dev = Device::Cpu;
        let (pc, mc) = tiny();
        let varmap = VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F64, &dev);
        let pe = PromptEncoder::new(&pc, vb.pp("prompt_encoder")).unwrap();
        let dec = MaskDecoder::new(&mc, vb.pp("mask_decoder")).unwrap();
        // candle's CPU generator cannot be seeded: give every parameter a
        // seeded value so the test is deterministic. The scale must not
        // come from the unseeded initial values either (it once did, and a
        // run whose draw put a ReLU input within the finite-difference step
        // of its kink failed): constants keep their magnitude (at least
        // 0.1), everything else gets 1/sqrt(fan-in).
        {
            let data = varmap.data().lock().unwrap();
            let mut names: Vec<&String> = data.keys().collect();
            names.sort();
            for (i, name) in names.into_iter().enumerate() {
                let var = &data[name];
                let t = var.as_tensor();
                let values: Vec<f64> = t.flatten_all().unwrap().to_vec1().unwrap();
                let scale = if values.iter().all(|v| *v == values[0]) {
                    values[0].abs().max(0.1)
                } else {
                    let fan_in = t.elem_count() / t.dims()[0];
                    (1.0 / fan_in as f64).sqrt()
                };
                let fresh = (seeded_randn(t.shape().clone(), 100 + i as u64) * scale).unwrap();
                var.set(&fresh).unwrap();
            }
        }
        let image = seeded_randn((1, 16, 4, 6), 1);
        let text = seeded_randn((2, 1, 16), 2);
        let coords = Tensor::new(&[[[3f64, 4.]], [[10., 2.]]], &dev).unwrap();
        let labels = Tensor::new(&[[1f64], [0.]], &dev).unwrap();
        let mask = seeded_randn((2, 1, 16, 24), 3);
        let r_mask = seeded_randn((2, 3, 16, 24), 4);
        let r_iou = seeded_randn((2, 3), 5);
        let loss = || {
            let (sparse, dense) = pe
                .forward(&Prompts {
                    points: Some((&coords, &labels)),
                    boxes: None,
                    masks: Some(&mask),
                    text_embeds: Some(&text),
                })
                .unwrap();
            let (m, iou) = dec
                .forward(&image, &pe.get_dense_pe().unwrap(), &sparse, &dense, true)
                .unwrap();
            ((m * &r_mask).unwrap().sum_all().unwrap() + (iou * &r_iou).unwrap().sum_all().unwrap())
                .unwrap()
        };
        let grads = loss().backward().unwrap();
        let data = varmap.data().lock().unwrap();
        let mut names: Vec<&String> = data.keys().collect();
        names.sort();
        let mut worst = (0.0f64, String::new());
        for name in names {
            let var = &data[name];
            // Box-corner embeddings are unused here: their gradient is 0.
            let zero = var.as_tensor().zeros_like().unwrap();
            let g: Vec<f64> = grads
                .get(var.as_tensor())
                .unwrap_or(&zero)
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap();
            let base = var.as_tensor().copy().unwrap();
            let flat: Vec<f64> = base.flatten_all().unwrap().to_vec1().unwrap();
            for idx in [0, flat.len() / 2, flat.len() - 1] {
                let eval = |delta: f64| {
                    let mut v = flat.clone();
                    v[idx] += delta;
                    var.set(&Tensor::from_vec(v, base.shape(), &dev).unwrap())
                        .unwrap();
                    loss().to_scalar::<f64>().unwrap()
                };
                // Every value is seeded, so both evaluations are exact
                // repeats but for the step: 1e-6 keeps the curvature term
                // (which reached 5e-3 at 1e-4 on the mask-prompt bias) small.
                let numeric = (eval(1e-6) - eval(-1e-6)) / 2e-6;
                var.set(&base).unwrap();
                let err = (numeric - g[idx]).abs() / (1.0 + numeric.abs());
                if err > worst.0 {
                    worst = (
                        err,
                        format!("{name}[{idx}]: analytic {} numeric {numeric}", g[idx]),
                    );
                }
            }
        }
        // A wrong or missing backward gives O(1) errors; this setup's worst
        // is 2e-6.
        assert!(worst.0 < 1e-4, "{}", worst.1);
    }

    #[test]
    fn bad_shapes_are_errors() {
        let dev = Device::Cpu;
        let (pc, mc) = tiny();
        let varmap = VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, &dev);
        let pe = PromptEncoder::new(&pc, vb.pp("prompt_encoder")).unwrap();
        let dec = MaskDecoder::new(&mc, vb.pp("mask_decoder")).unwrap();
        let wrong_width = Tensor::zeros((2, 1, 8), DType::F32, &dev).unwrap();
        assert!(pe.forward_text(&wrong_width).is_err());
        let text = Tensor::zeros((2, 1, 16), DType::F32, &dev).unwrap();
        let (sparse, dense) = pe.forward_text(&text).unwrap();
        assert_eq!(dense.dims(), [2, 16, 4, 6]);
        let dense_pe = pe.get_dense_pe().unwrap();
        let three_images = Tensor::zeros((3, 16, 4, 6), DType::F32, &dev).unwrap();
        let e = dec
            .forward(&three_images, &dense_pe, &sparse, &dense, false)
            .unwrap_err()
            .to_string();
        assert!(e.contains("image embeddings must be (1 or 2"), "{e}");
        let coords = Tensor::zeros((2, 1, 2), DType::F32, &dev).unwrap();
        let labels = Tensor::new(&[[2f32], [1.]], &dev).unwrap();
        let e = pe
            .forward(&Prompts {
                points: Some((&coords, &labels)),
                ..Default::default()
            })
            .unwrap_err()
            .to_string();
        assert!(e.contains("point label 2"), "{e}");
        let one_text = Tensor::zeros((1, 1, 16), DType::F32, &dev).unwrap();
        assert!(pe
            .forward(&Prompts {
                points: Some((&coords, &Tensor::ones((2, 1), DType::F32, &dev).unwrap())),
                text_embeds: Some(&one_text),
                ..Default::default()
            })
            .is_err());
    }
}
