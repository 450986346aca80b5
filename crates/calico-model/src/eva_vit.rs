//! EVA-CLIP ViT-g/14, the frozen image encoder 𝒞 of BLIP-2 and Calico
//! (Fig. 3, eq. 2), as HF transformers' `Blip2VisionModel`.
//!
//! A plain pre-norm ViT: a class token and a patch convolution, learned
//! absolute position embeddings, `num_hidden_layers` blocks of
//! `x + attn(ln1(x))`, `x + mlp(ln2(x))`, and a final LayerNorm
//! (`post_layernorm`, LAVIS's `ln_vision`). The attention's fused `qkv`
//! projection has a bias on the query and value thirds only.
//!
//! Tensor names follow HF (relative to `vision_model.` in a
//! `Blip2ForConditionalGeneration` checkpoint):
//!
//! | HF                                            | LAVIS (`lavis_name_map`)                 |
//! |-----------------------------------------------|------------------------------------------|
//! | `embeddings.class_embedding`                  | `visual_encoder.cls_token`               |
//! | `embeddings.position_embedding`               | `visual_encoder.pos_embed`               |
//! | `embeddings.patch_embedding.{weight,bias}`    | `visual_encoder.patch_embed.proj.*`      |
//! | `encoder.layers.N.layer_norm1.*`              | `visual_encoder.blocks.N.norm1.*`        |
//! | `encoder.layers.N.self_attn.qkv.weight`       | `visual_encoder.blocks.N.attn.qkv.weight`|
//! | `encoder.layers.N.self_attn.qkv.bias` (3·D)   | — (split, see below)                     |
//! | `encoder.layers.N.self_attn.{q_bias,v_bias}`  | `visual_encoder.blocks.N.attn.{q_bias,v_bias}` |
//! | `encoder.layers.N.self_attn.projection.*`     | `visual_encoder.blocks.N.attn.proj.*`    |
//! | `encoder.layers.N.layer_norm2.*`              | `visual_encoder.blocks.N.norm2.*`        |
//! | `encoder.layers.N.mlp.{fc1,fc2}.*`            | `visual_encoder.blocks.N.mlp.{fc1,fc2}.*`|
//! | `post_layernorm.*`                            | `ln_vision.*` (top level)                |
//!
//! HF checkpoints store the attention bias fused (`qkv.bias`, query | key |
//! value, the key third zero in converted weights); LAVIS stores `q_bias`
//! and `v_bias` and uses a zero key bias. The attention reads `qkv.bias`
//! when the checkpoint has it and otherwise `q_bias` + `v_bias`, so one
//! module loads both layouts.
//!
//! One numerical difference between the two: LAVIS's `ln_vision` is a
//! default `nn.LayerNorm` (eps 1e-5) while HF's `post_layernorm` uses the
//! config's `layer_norm_eps` (1e-6); [`EvaVitConfig::post_layernorm_eps`]
//! selects it.

use std::collections::BTreeMap;
use std::sync::Arc;

use calico_nn::attention::{merge_heads, scaled_dot_product_attention};
use calico_nn::{Activation, LayerNorm, Linear};
use candle_core::{DType, Device, Result, Tensor};
use candle_nn::{Init, VarBuilder};
use serde::{Deserialize, Serialize};

use crate::load::{Checkpoint, NameMap};
use crate::parity::Case;

/// Vision-tower hyper-parameters, with the field names of HF
/// `Blip2VisionConfig` (a `vision_config` JSON object deserialises
/// directly; unknown fields are ignored). Defaults are EVA-CLIP ViT-g/14.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct EvaVitConfig {
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    /// Input side in pixels (square); inputs of another size are refused.
    pub image_size: usize,
    pub patch_size: usize,
    pub layer_norm_eps: f64,
    pub hidden_act: Activation,
    /// Whether the attention has query/value biases.
    pub qkv_bias: bool,
    /// eps of the final LayerNorm; `None` means `layer_norm_eps` (HF).
    /// LAVIS's `ln_vision` uses 1e-5. Not a HF field.
    pub post_layernorm_eps: Option<f64>,
    /// Channels of a convolutional stem replacing the patch projection
    /// (one stride-2 stage each, so `patch_size` must be `2^stages`), for
    /// towers trained from scratch; see [`crate::conv_stem`]. Not a HF
    /// field; `None` (the paper) is the patch convolution.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub conv_stem: Option<Vec<usize>>,
}

impl Default for EvaVitConfig {
    fn default() -> Self {
        Self::paper()
    }
}

impl EvaVitConfig {
    /// EVA-CLIP ViT-g/14 as in BLIP-2 / HF `Blip2VisionConfig()`: 224 px,
    /// patch 14, width 1408, 39 blocks, 16 heads, MLP 6144, eps 1e-6.
    pub fn paper() -> Self {
        Self {
            hidden_size: 1408,
            intermediate_size: 6144,
            num_hidden_layers: 39,
            num_attention_heads: 16,
            image_size: 224,
            patch_size: 14,
            layer_norm_eps: 1e-6,
            hidden_act: Activation::Gelu,
            qkv_bias: true,
            post_layernorm_eps: None,
            conv_stem: None,
        }
    }

    /// [`EvaVitConfig::paper`] with LAVIS's `ln_vision` eps (1e-5), for
    /// checkpoints in LAVIS layout.
    pub fn paper_lavis() -> Self {
        Self {
            post_layernorm_eps: Some(1e-5),
            ..Self::paper()
        }
    }

    /// Patches per side.
    pub fn grid(&self) -> usize {
        self.image_size / self.patch_size
    }

    /// Tokens per image: the class token plus one per patch.
    pub fn num_positions(&self) -> usize {
        self.grid() * self.grid() + 1
    }

    fn validate(&self) -> Result<()> {
        if self.num_attention_heads == 0
            || !self.hidden_size.is_multiple_of(self.num_attention_heads)
        {
            candle_core::bail!(
                "EvaVitConfig: hidden_size {} is not a multiple of num_attention_heads {}",
                self.hidden_size,
                self.num_attention_heads
            );
        }
        if let Some(ch) = &self.conv_stem {
            crate::conv_stem::ConvStem::check_patch(ch, self.patch_size, "EvaVitConfig")?;
        }
        if self.patch_size == 0 || !self.image_size.is_multiple_of(self.patch_size) {
            candle_core::bail!(
                "EvaVitConfig: image_size {} is not a multiple of patch_size {}",
                self.image_size,
                self.patch_size
            );
        }
        Ok(())
    }
}

/// Class token + patch convolution + absolute position embeddings.
#[derive(Debug, Clone)]
pub struct EvaVitEmbeddings {
    class_embedding: Tensor,
    patches: PatchEmbedding,
    position_embedding: Tensor,
    image_size: usize,
}

/// Pixels → patch features `(B, D, grid, grid)`.
#[derive(Debug, Clone)]
enum PatchEmbedding {
    /// The paper's `patch_size` × `patch_size` convolution.
    Linear {
        weight: Tensor,
        bias: Tensor,
        patch_size: usize,
    },
    Stem(crate::conv_stem::ConvStem),
}

impl EvaVitEmbeddings {
    pub fn new(cfg: &EvaVitConfig, vb: VarBuilder) -> Result<Self> {
        let d = cfg.hidden_size;
        let p = cfg.patch_size;
        let init = Init::Randn {
            mean: 0.0,
            stdev: 0.02,
        };
        let class_embedding = vb.get_with_hints((1, 1, d), "class_embedding", init)?;
        let position_embedding =
            vb.get_with_hints((1, cfg.num_positions(), d), "position_embedding", init)?;
        let patches = match &cfg.conv_stem {
            Some(ch) => {
                PatchEmbedding::Stem(crate::conv_stem::ConvStem::new(ch, d, vb.pp("stem"))?)
            }
            None => {
                let pe = vb.pp("patch_embedding");
                let bound = 1.0 / ((3 * p * p) as f64).sqrt();
                let uniform = Init::Uniform {
                    lo: -bound,
                    up: bound,
                };
                PatchEmbedding::Linear {
                    weight: pe.get_with_hints((d, 3, p, p), "weight", uniform)?,
                    bias: pe.get_with_hints(d, "bias", uniform)?,
                    patch_size: p,
                }
            }
        };
        Ok(Self {
            class_embedding,
            patches,
            position_embedding,
            image_size: cfg.image_size,
        })
    }

    /// The convolutional stem, when the config has one.
    pub fn stem(&self) -> Option<&crate::conv_stem::ConvStem> {
        match &self.patches {
            PatchEmbedding::Stem(s) => Some(s),
            PatchEmbedding::Linear { .. } => None,
        }
    }

    /// `(B, 3, H, W)` pixels → `(B, 1 + N, D)` tokens.
    pub fn forward(&self, pixel_values: &Tensor) -> Result<Tensor> {
        let dims = pixel_values.dims();
        if dims.len() != 4
            || dims[1] != 3
            || dims[2] != self.image_size
            || dims[3] != self.image_size
        {
            candle_core::bail!(
                "EVA ViT: expected pixel_values of shape (batch, 3, {s}, {s}), got {dims:?}",
                s = self.image_size
            );
        }
        let b = dims[0];
        let d = self.class_embedding.dim(2)?;
        let patches = match &self.patches {
            PatchEmbedding::Linear {
                weight,
                bias,
                patch_size,
            } => calico_nn::conv::conv2d(
                &pixel_values.to_dtype(weight.dtype())?,
                weight,
                0,
                *patch_size,
            )
            .and_then(|p| calico_nn::broadcast::add(&p, &bias.reshape((1, d, 1, 1))?))?,
            PatchEmbedding::Stem(stem) => stem.forward(pixel_values)?,
        };
        let patches = patches.flatten_from(2)?.transpose(1, 2)?;
        let cls = calico_nn::broadcast::expand(&self.class_embedding, (b, 1, d))?;
        calico_nn::broadcast::add(
            &Tensor::cat(&[&cls, &patches], 1)?,
            &self.position_embedding,
        )
    }
}

/// Multi-head self-attention with a fused `qkv` projection.
#[derive(Debug, Clone)]
pub struct EvaVitAttention {
    qkv: Linear,
    projection: Linear,
    num_heads: usize,
    scale: f64,
}

impl EvaVitAttention {
    pub fn new(cfg: &EvaVitConfig, vb: VarBuilder) -> Result<Self> {
        let d = cfg.hidden_size;
        let qkv_vb = vb.pp("qkv");
        let bound = 1.0 / (d as f64).sqrt();
        let weight = qkv_vb.get_with_hints(
            (3 * d, d),
            "weight",
            Init::Uniform {
                lo: -bound,
                up: bound,
            },
        )?;
        let bias = if !cfg.qkv_bias {
            None
        } else if qkv_vb.contains_tensor("bias") {
            // HF layout: one fused bias.
            Some(qkv_vb.get(3 * d, "bias")?)
        } else {
            // LAVIS layout (and fresh weights): query and value biases, the
            // key bias fixed at zero.
            let q = vb.get_with_hints(d, "q_bias", Init::Const(0.0))?;
            let v = vb.get_with_hints(d, "v_bias", Init::Const(0.0))?;
            let k = q.zeros_like()?;
            Some(Tensor::cat(&[&q, &k, &v], 0)?)
        };
        Ok(Self {
            qkv: Linear::from_tensors(weight, bias),
            projection: Linear::new(d, d, true, vb.pp("projection"))?,
            num_heads: cfg.num_attention_heads,
            scale: ((d / cfg.num_attention_heads) as f64).powf(-0.5),
        })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (b, n, d) = x.dims3()?;
        let h = self.num_heads;
        let qkv = self
            .qkv
            .forward(x)?
            .reshape((b, n, 3, h, d / h))?
            .permute((2, 0, 3, 1, 4))?;
        let (q, k, v) = (qkv.get(0)?, qkv.get(1)?, qkv.get(2)?);
        let out = scaled_dot_product_attention(&q, &k, &v, None, self.scale)?;
        self.projection.forward(&merge_heads(&out)?)
    }
}

/// One pre-norm transformer block.
pub type EvaVitLayer = crate::vit_block::PreNormBlock<EvaVitAttention>;

impl candle_nn::Module for EvaVitAttention {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        EvaVitAttention::forward(self, x)
    }
}

fn block_dims(cfg: &EvaVitConfig) -> crate::vit_block::BlockDims {
    crate::vit_block::BlockDims {
        hidden_size: cfg.hidden_size,
        intermediate_size: cfg.intermediate_size,
        layer_norm_eps: cfg.layer_norm_eps,
        hidden_act: cfg.hidden_act,
    }
}

/// What [`EvaVit::forward`] returns.
#[derive(Debug, Clone)]
pub struct EvaVitOutput {
    /// The last block's output before the final LayerNorm, `(B, 1 + N, D)`
    /// (LAVIS `visual_encoder(x)`).
    pub encoder_last_hidden_state: Tensor,
    /// `post_layernorm` of the above, `(B, 1 + N, D)`: HF's
    /// `last_hidden_state` and LAVIS's `ln_vision(visual_encoder(x))`, the
    /// tokens BLIP-2 feeds the Q-Former.
    pub last_hidden_state: Tensor,
    /// HF's `pooler_output`, `(B, D)`: `post_layernorm` applied once more to
    /// the class token of `last_hidden_state`.
    pub pooler_output: Tensor,
}

/// The EVA-CLIP vision transformer.
#[derive(Debug, Clone)]
pub struct EvaVit {
    embeddings: EvaVitEmbeddings,
    layers: Vec<EvaVitLayer>,
    post_layernorm: LayerNorm,
    config: EvaVitConfig,
}

impl EvaVit {
    /// Builds the encoder from `vb` positioned at the vision model (HF names
    /// `embeddings.…`, `encoder.layers.N.…`, `post_layernorm.…`).
    pub fn new(cfg: &EvaVitConfig, vb: VarBuilder) -> Result<Self> {
        cfg.validate()?;
        let embeddings = EvaVitEmbeddings::new(cfg, vb.pp("embeddings"))?;
        let lv = vb.pp("encoder").pp("layers");
        let layers = (0..cfg.num_hidden_layers)
            .map(|i| {
                let vb = lv.pp(i);
                EvaVitLayer::new(
                    &block_dims(cfg),
                    EvaVitAttention::new(cfg, vb.pp("self_attn"))?,
                    vb,
                )
            })
            .collect::<Result<Vec<_>>>()?;
        let eps = cfg.post_layernorm_eps.unwrap_or(cfg.layer_norm_eps);
        let post_layernorm = LayerNorm::new(cfg.hidden_size, eps, vb.pp("post_layernorm"))?;
        Ok(Self {
            embeddings,
            layers,
            post_layernorm,
            config: cfg.clone(),
        })
    }

    pub fn config(&self) -> &EvaVitConfig {
        &self.config
    }

    /// The convolutional stem, when the config has one.
    pub fn stem(&self) -> Option<&crate::conv_stem::ConvStem> {
        self.embeddings.stem()
    }

    /// Embeddings and blocks, without the final LayerNorm: `(B, 3, H, W)` →
    /// `(B, 1 + N, D)`.
    pub fn forward_features(&self, pixel_values: &Tensor) -> Result<Tensor> {
        let mut x = self.embeddings.forward(pixel_values)?;
        for layer in &self.layers {
            x = layer.forward(&x)?;
        }
        Ok(x)
    }

    /// The final LayerNorm (`ln_vision`) alone.
    pub fn post_layernorm(&self, x: &Tensor) -> Result<Tensor> {
        self.post_layernorm.forward(x)
    }

    /// The whole encoder; see [`EvaVitOutput`].
    pub fn forward(&self, pixel_values: &Tensor) -> Result<EvaVitOutput> {
        let encoder_last_hidden_state = self.forward_features(pixel_values)?;
        let last_hidden_state = self.post_layernorm.forward(&encoder_last_hidden_state)?;
        let cls = last_hidden_state.narrow(1, 0, 1)?.squeeze(1)?;
        let pooler_output = self.post_layernorm.forward(&cls)?;
        Ok(EvaVitOutput {
            encoder_last_hidden_state,
            last_hidden_state,
            pooler_output,
        })
    }
}

/// Translates a HF tensor name relative to the vision model (what
/// [`EvaVit::new`] asks for when built from an unprefixed builder) into the
/// full key of a LAVIS BLIP-2 / InstructBLIP checkpoint, where the ViT lives
/// under `visual_encoder.` and `ln_vision` at the top level. The fused
/// `self_attn.qkv.bias` has no LAVIS counterpart (`None`), which makes the
/// attention read `q_bias`/`v_bias` instead.
pub fn lavis_name(hf: &str) -> Option<String> {
    const V: &str = "visual_encoder.";
    if let Some(rest) = hf.strip_prefix("post_layernorm.") {
        return Some(format!("ln_vision.{rest}"));
    }
    if let Some(rest) = hf.strip_prefix("embeddings.") {
        let mapped = match rest {
            "class_embedding" => "cls_token".to_string(),
            "position_embedding" => "pos_embed".to_string(),
            _ => format!(
                "patch_embed.proj.{}",
                rest.strip_prefix("patch_embedding.")?
            ),
        };
        return Some(format!("{V}{mapped}"));
    }
    let rest = hf.strip_prefix("encoder.layers.")?;
    let (idx, name) = rest.split_once('.')?;
    idx.parse::<usize>().ok()?;
    let mapped = if let Some(t) = name.strip_prefix("layer_norm1.") {
        format!("norm1.{t}")
    } else if let Some(t) = name.strip_prefix("layer_norm2.") {
        format!("norm2.{t}")
    } else if let Some(t) = name.strip_prefix("self_attn.projection.") {
        format!("attn.proj.{t}")
    } else if let Some(t) = name.strip_prefix("self_attn.") {
        match t {
            "qkv.weight" | "q_bias" | "v_bias" => format!("attn.{t}"),
            _ => return None,
        }
    } else if name.starts_with("mlp.fc1.") || name.starts_with("mlp.fc2.") {
        name.to_string()
    } else {
        return None;
    };
    Some(format!("{V}blocks.{idx}.{mapped}"))
}

/// [`lavis_name`] as a [`NameMap`] for [`Checkpoint::var_builder_mapped`];
/// build [`EvaVit`] from the resulting builder without a prefix.
pub fn lavis_name_map() -> NameMap {
    Arc::new(lavis_name)
}

/// Parity replay: config field `names` selects the weight naming (`"hf"`,
/// the default, or `"lavis"`); input `pixel_values`; outputs
/// `last_hidden_state`, `encoder_last_hidden_state`, `pooler_output`.
pub fn parity_forward(
    case: &Case,
    ckpt: &Checkpoint,
    device: &Device,
) -> Result<BTreeMap<String, Tensor>> {
    let cfg: EvaVitConfig = case.config()?;
    let map = match case.name_scheme("hf", &["hf", "lavis"])?.as_str() {
        "lavis" => Some(lavis_name_map()),
        _ => None,
    };
    let vb = ckpt.var_builder_mapped(map, DType::F32, device);
    let model = EvaVit::new(&cfg, vb)?;
    let out = model.forward(&case.input("pixel_values")?.to_device(device)?)?;
    Ok(BTreeMap::from([
        ("last_hidden_state".to_string(), out.last_hidden_state),
        (
            "encoder_last_hidden_state".to_string(),
            out.encoder_last_hidden_state,
        ),
        ("pooler_output".to_string(), out.pooler_output),
    ]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_nn::VarMap;

    fn tiny() -> EvaVitConfig {
        EvaVitConfig {
            hidden_size: 16,
            intermediate_size: 24,
            num_hidden_layers: 2,
            num_attention_heads: 2,
            image_size: 14,
            patch_size: 7,
            ..EvaVitConfig::paper()
        }
    }

    #[test]
    fn paper_config_matches_eva_vit_g() {
        let c = EvaVitConfig::paper();
        assert_eq!(
            (c.hidden_size, c.num_hidden_layers, c.num_attention_heads),
            (1408, 39, 16)
        );
        assert_eq!(c.intermediate_size, 6144);
        assert_eq!(c.num_positions(), 257);
        let parsed: EvaVitConfig =
            serde_json::from_str(r#"{"hidden_size": 1408, "model_type": "blip_2_vision_model"}"#)
                .unwrap();
        assert_eq!(parsed, c);
    }

    #[test]
    fn lavis_names() {
        let cases = [
            ("embeddings.class_embedding", "visual_encoder.cls_token"),
            ("embeddings.position_embedding", "visual_encoder.pos_embed"),
            (
                "embeddings.patch_embedding.weight",
                "visual_encoder.patch_embed.proj.weight",
            ),
            (
                "encoder.layers.12.layer_norm1.bias",
                "visual_encoder.blocks.12.norm1.bias",
            ),
            (
                "encoder.layers.0.self_attn.qkv.weight",
                "visual_encoder.blocks.0.attn.qkv.weight",
            ),
            (
                "encoder.layers.0.self_attn.q_bias",
                "visual_encoder.blocks.0.attn.q_bias",
            ),
            (
                "encoder.layers.3.self_attn.projection.weight",
                "visual_encoder.blocks.3.attn.proj.weight",
            ),
            (
                "encoder.layers.38.mlp.fc2.bias",
                "visual_encoder.blocks.38.mlp.fc2.bias",
            ),
            ("post_layernorm.weight", "ln_vision.weight"),
        ];
        for (hf, lavis) in cases {
            assert_eq!(lavis_name(hf).as_deref(), Some(lavis), "{hf}");
        }
        assert_eq!(lavis_name("encoder.layers.0.self_attn.qkv.bias"), None);
        assert_eq!(lavis_name("encoder.layers.x.mlp.fc1.weight"), None);
    }

    #[test]
    fn wrong_input_size_is_an_error() {
        let vm = VarMap::new();
        let vb = VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu);
        let m = EvaVit::new(&tiny(), vb).unwrap();
        let x = Tensor::zeros((1, 3, 21, 21), DType::F32, &Device::Cpu).unwrap();
        let e = m.forward(&x).unwrap_err().to_string();
        assert!(e.contains("(batch, 3, 14, 14)") && e.contains("21"), "{e}");
        let x = Tensor::zeros((1, 1, 14, 14), DType::F32, &Device::Cpu).unwrap();
        assert!(m.forward(&x).is_err());
    }

    #[test]
    fn every_parameter_gets_a_gradient() {
        let vm = VarMap::new();
        let vb = VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu);
        let m = EvaVit::new(&tiny(), vb).unwrap();
        let x = Tensor::randn(0f32, 1.0, (2, 3, 14, 14), &Device::Cpu).unwrap();
        let out = m.forward(&x).unwrap();
        let w = Tensor::randn(0f32, 1.0, out.last_hidden_state.shape(), &Device::Cpu).unwrap();
        let loss = (out.last_hidden_state * w).unwrap().sum_all().unwrap();
        let grads = loss.backward().unwrap();
        let data = vm.data().lock().unwrap();
        assert!(data.contains_key("encoder.layers.1.self_attn.q_bias"));
        calico_nn::testing::assert_gradients_reach(&grads, data.iter(), "EVA ViT");
    }
}
