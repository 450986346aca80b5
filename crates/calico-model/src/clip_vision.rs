//! The CLIP ViT vision tower of the LISA and GLaMM baselines, as HF
//! transformers' `CLIPVisionModel`, plus LLaVA's feature selection.
//!
//! LISA uses OpenAI CLIP ViT-L/14 at 224 px (16 × 16 = 256 patch tokens),
//! GLaMM ViT-L/14-336 (24 × 24 = 576). The network is a pre-norm ViT:
//! a class token and a bias-free patch convolution, learned absolute
//! position embeddings, a LayerNorm right after the embeddings
//! (`pre_layrnorm`, spelled so in the checkpoints), `num_hidden_layers`
//! blocks of `x + attn(ln1(x))`, `x + mlp(ln2(x))` with separate biased
//! q/k/v projections and QuickGELU, and a `post_layernorm` that HF applies
//! only to the pooled class token.
//!
//! LLaVA-style models do not use the tower's last output: they take the
//! hidden state after block `select_layer` (−2: the second-to-last block;
//! index 0 is the `pre_layrnorm` output) and drop the class token
//! (`select_feature = "patch"`) — see [`ClipVision::features`].
//!
//! Tensor names, relative to the builder given to [`ClipVision::new`]:
//!
//! | name                                              | shape          |
//! |---------------------------------------------------|----------------|
//! | `embeddings.class_embedding`                      | `(D)`          |
//! | `embeddings.patch_embedding.weight`               | `(D, 3, P, P)` |
//! | `embeddings.position_embedding.weight`            | `(1 + N, D)`   |
//! | `pre_layrnorm.{weight,bias}`                      | `(D)`          |
//! | `encoder.layers.N.layer_norm{1,2}.{weight,bias}`  | `(D)`          |
//! | `encoder.layers.N.self_attn.{q,k,v,out}_proj.*`   | `(D, D)`, `(D)`|
//! | `encoder.layers.N.mlp.fc1.*`, `mlp.fc2.*`         | `(F, D)`, `(D, F)` … |
//! | `post_layernorm.{weight,bias}`                    | `(D)`          |
//!
//! In a `CLIPVisionModel` checkpoint these sit under `vision_model.`; in
//! LLaVA / LISA / GLaMM checkpoints under
//! `model.vision_tower.vision_tower.vision_model.` — position the builder
//! with `vb.pp(...)` accordingly.

use std::collections::BTreeMap;

use calico_nn::attention::{merge_heads, scaled_dot_product_attention, split_heads};
use calico_nn::{Activation, LayerNorm, Linear};
use candle_core::{DType, Device, Result, Tensor};
use candle_nn::{Init, VarBuilder};
use serde::{Deserialize, Serialize};

use crate::load::Checkpoint;
use crate::parity::Case;

/// Which tokens of the selected hidden state LLaVA passes on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum SelectFeature {
    /// The patch tokens only (the class token dropped): `(B, N, D)`.
    #[default]
    #[serde(rename = "patch")]
    Patch,
    /// The class token followed by the patch tokens: `(B, 1 + N, D)`.
    #[serde(rename = "cls_patch")]
    ClsPatch,
}

/// Vision-tower hyper-parameters with the field names of HF
/// `CLIPVisionConfig` (a `vision_config` JSON object deserialises directly;
/// unknown fields are ignored), plus LLaVA's feature selection. Defaults
/// are OpenAI CLIP ViT-L/14 at 224 px (LISA's tower).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ClipVisionConfig {
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    /// Input side in pixels (square); inputs of another size are refused.
    pub image_size: usize,
    pub patch_size: usize,
    pub layer_norm_eps: f64,
    pub hidden_act: Activation,
    /// LLaVA's `mm_vision_select_layer`: index into the hidden states
    /// (`0` = after `pre_layrnorm`, `i` = after block `i`; negative counts
    /// from the end, −1 = after the last block).
    #[serde(alias = "mm_vision_select_layer")]
    pub select_layer: i64,
    /// LLaVA's `mm_vision_select_feature`.
    #[serde(alias = "mm_vision_select_feature")]
    pub select_feature: SelectFeature,
}

impl Default for ClipVisionConfig {
    fn default() -> Self {
        Self::vit_l14_224()
    }
}

impl ClipVisionConfig {
    /// OpenAI CLIP ViT-L/14 (`openai/clip-vit-large-patch14`, LISA): 224 px,
    /// patch 14, width 1024, 24 blocks, 16 heads, MLP 4096, QuickGELU,
    /// eps 1e-5; LLaVA selection (layer −2, patch tokens) → 256 × 1024.
    pub fn vit_l14_224() -> Self {
        Self {
            hidden_size: 1024,
            intermediate_size: 4096,
            num_hidden_layers: 24,
            num_attention_heads: 16,
            image_size: 224,
            patch_size: 14,
            layer_norm_eps: 1e-5,
            hidden_act: Activation::QuickGelu,
            select_layer: -2,
            select_feature: SelectFeature::Patch,
        }
    }

    /// OpenAI CLIP ViT-L/14-336 (`openai/clip-vit-large-patch14-336`,
    /// GLaMM / LLaVA-1.5): as [`Self::vit_l14_224`] at 336 px → 576 tokens.
    pub fn vit_l14_336() -> Self {
        Self {
            image_size: 336,
            ..Self::vit_l14_224()
        }
    }

    /// Patches per side.
    pub fn grid(&self) -> usize {
        self.image_size / self.patch_size
    }

    /// Patch tokens per image.
    pub fn num_patches(&self) -> usize {
        self.grid() * self.grid()
    }

    /// Tokens per image: the class token plus one per patch.
    pub fn num_positions(&self) -> usize {
        self.num_patches() + 1
    }

    /// Resolves a (possibly negative) `select_layer` to an index into the
    /// `num_hidden_layers + 1` hidden states.
    pub fn hidden_state_index(&self, select_layer: i64) -> Result<usize> {
        let n = self.num_hidden_layers as i64 + 1;
        let idx = if select_layer < 0 {
            n + select_layer
        } else {
            select_layer
        };
        if !(0..n).contains(&idx) {
            candle_core::bail!(
                "CLIP vision: select_layer {select_layer} is out of range for {} blocks \
                 (expected -{n}..={})",
                self.num_hidden_layers,
                n - 1
            );
        }
        Ok(idx as usize)
    }

    fn validate(&self) -> Result<()> {
        if self.num_attention_heads == 0
            || !self.hidden_size.is_multiple_of(self.num_attention_heads)
        {
            candle_core::bail!(
                "ClipVisionConfig: hidden_size {} is not a multiple of num_attention_heads {}",
                self.hidden_size,
                self.num_attention_heads
            );
        }
        if self.patch_size == 0 || !self.image_size.is_multiple_of(self.patch_size) {
            candle_core::bail!(
                "ClipVisionConfig: image_size {} is not a multiple of patch_size {}",
                self.image_size,
                self.patch_size
            );
        }
        Ok(())
    }
}

/// Class token + bias-free patch convolution + absolute position
/// embeddings.
#[derive(Debug, Clone)]
pub struct ClipVisionEmbeddings {
    class_embedding: Tensor,
    patch_weight: Tensor,
    position_embedding: Tensor,
    image_size: usize,
    patch_size: usize,
}

impl ClipVisionEmbeddings {
    pub fn new(cfg: &ClipVisionConfig, vb: VarBuilder) -> Result<Self> {
        let d = cfg.hidden_size;
        let p = cfg.patch_size;
        let init = Init::Randn {
            mean: 0.0,
            stdev: 0.02,
        };
        let class_embedding = vb.get_with_hints(d, "class_embedding", init)?;
        let patch_weight = vb
            .pp("patch_embedding")
            .get_with_hints((d, 3, p, p), "weight", init)?;
        let position_embedding =
            vb.pp("position_embedding")
                .get_with_hints((cfg.num_positions(), d), "weight", init)?;
        Ok(Self {
            class_embedding,
            patch_weight,
            position_embedding,
            image_size: cfg.image_size,
            patch_size: p,
        })
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
                "CLIP vision: expected pixel_values of shape (batch, 3, {s}, {s}), got {dims:?}",
                s = self.image_size
            );
        }
        let b = dims[0];
        let d = self.class_embedding.dim(0)?;
        let patches = calico_nn::conv::conv2d(
            &pixel_values.to_dtype(self.patch_weight.dtype())?,
            &self.patch_weight,
            0,
            self.patch_size,
        )?
        .flatten_from(2)?
        .transpose(1, 2)?;
        let cls =
            calico_nn::broadcast::expand(&self.class_embedding.reshape((1, 1, d))?, (b, 1, d))?;
        calico_nn::broadcast::add(
            &Tensor::cat(&[&cls, &patches], 1)?,
            &self.position_embedding.unsqueeze(0)?,
        )
    }
}

/// Multi-head self-attention with separate, biased q/k/v projections.
#[derive(Debug, Clone)]
pub struct ClipAttention {
    q_proj: Linear,
    k_proj: Linear,
    v_proj: Linear,
    out_proj: Linear,
    num_heads: usize,
    scale: f64,
}

impl ClipAttention {
    pub fn new(cfg: &ClipVisionConfig, vb: VarBuilder) -> Result<Self> {
        let d = cfg.hidden_size;
        Ok(Self {
            q_proj: Linear::new(d, d, true, vb.pp("q_proj"))?,
            k_proj: Linear::new(d, d, true, vb.pp("k_proj"))?,
            v_proj: Linear::new(d, d, true, vb.pp("v_proj"))?,
            out_proj: Linear::new(d, d, true, vb.pp("out_proj"))?,
            num_heads: cfg.num_attention_heads,
            scale: ((d / cfg.num_attention_heads) as f64).powf(-0.5),
        })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let h = self.num_heads;
        let q = split_heads(&self.q_proj.forward(x)?, h)?;
        let k = split_heads(&self.k_proj.forward(x)?, h)?;
        let v = split_heads(&self.v_proj.forward(x)?, h)?;
        let out = scaled_dot_product_attention(&q, &k, &v, None, self.scale)?;
        self.out_proj.forward(&merge_heads(&out)?)
    }
}

/// One pre-norm transformer block.
pub type ClipEncoderLayer = crate::vit_block::PreNormBlock<ClipAttention>;

impl candle_nn::Module for ClipAttention {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        ClipAttention::forward(self, x)
    }
}

fn block_dims(cfg: &ClipVisionConfig) -> crate::vit_block::BlockDims {
    crate::vit_block::BlockDims {
        hidden_size: cfg.hidden_size,
        intermediate_size: cfg.intermediate_size,
        layer_norm_eps: cfg.layer_norm_eps,
        hidden_act: cfg.hidden_act,
    }
}

/// What [`ClipVision::forward`] returns (HF `BaseModelOutputWithPooling`).
#[derive(Debug, Clone)]
pub struct ClipVisionOutput {
    /// The last block's output, `(B, 1 + N, D)` — HF does not apply
    /// `post_layernorm` to it.
    pub last_hidden_state: Tensor,
    /// `post_layernorm` of the class token of `last_hidden_state`, `(B, D)`.
    pub pooler_output: Tensor,
    /// Only from [`ClipVision::forward_with_hidden_states`]: the
    /// `num_hidden_layers + 1` states, `[0]` after `pre_layrnorm`, `[i]`
    /// after block `i` (the last equals `last_hidden_state`). Empty otherwise.
    pub hidden_states: Vec<Tensor>,
}

/// The CLIP vision transformer.
#[derive(Debug, Clone)]
pub struct ClipVision {
    embeddings: ClipVisionEmbeddings,
    pre_layrnorm: LayerNorm,
    layers: Vec<ClipEncoderLayer>,
    post_layernorm: LayerNorm,
    config: ClipVisionConfig,
}

impl ClipVision {
    /// Builds the tower from `vb` positioned at the vision model (names
    /// `embeddings.…`, `pre_layrnorm.…`, `encoder.layers.N.…`,
    /// `post_layernorm.…`; e.g. `vb.pp("vision_model")` for a
    /// `CLIPVisionModel` checkpoint).
    pub fn new(cfg: &ClipVisionConfig, vb: VarBuilder) -> Result<Self> {
        cfg.validate()?;
        let d = cfg.hidden_size;
        let eps = cfg.layer_norm_eps;
        let embeddings = ClipVisionEmbeddings::new(cfg, vb.pp("embeddings"))?;
        let pre_layrnorm = LayerNorm::new(d, eps, vb.pp("pre_layrnorm"))?;
        let lv = vb.pp("encoder").pp("layers");
        let layers = (0..cfg.num_hidden_layers)
            .map(|i| {
                let vb = lv.pp(i);
                ClipEncoderLayer::new(
                    &block_dims(cfg),
                    ClipAttention::new(cfg, vb.pp("self_attn"))?,
                    vb,
                )
            })
            .collect::<Result<Vec<_>>>()?;
        let post_layernorm = LayerNorm::new(d, eps, vb.pp("post_layernorm"))?;
        Ok(Self {
            embeddings,
            pre_layrnorm,
            layers,
            post_layernorm,
            config: cfg.clone(),
        })
    }

    pub fn config(&self) -> &ClipVisionConfig {
        &self.config
    }

    /// Runs embeddings, `pre_layrnorm` and the first `blocks` blocks,
    /// calling `keep` on every state (index 0 first).
    fn run(
        &self,
        pixel_values: &Tensor,
        blocks: usize,
        mut keep: impl FnMut(&Tensor),
    ) -> Result<Tensor> {
        let mut x = self
            .pre_layrnorm
            .forward(&self.embeddings.forward(pixel_values)?)?;
        keep(&x);
        for layer in &self.layers[..blocks] {
            x = layer.forward(&x)?;
            keep(&x);
        }
        Ok(x)
    }

    fn output(&self, last: Tensor, hidden_states: Vec<Tensor>) -> Result<ClipVisionOutput> {
        let pooler_output = self
            .post_layernorm
            .forward(&last.narrow(1, 0, 1)?.squeeze(1)?)?;
        Ok(ClipVisionOutput {
            last_hidden_state: last,
            pooler_output,
            hidden_states,
        })
    }

    /// `(B, 3, S, S)` pixels (CLIP-normalised) → last hidden state and
    /// pooled output; `hidden_states` is left empty.
    pub fn forward(&self, pixel_values: &Tensor) -> Result<ClipVisionOutput> {
        let last = self.run(pixel_values, self.layers.len(), |_| {})?;
        self.output(last, Vec::new())
    }

    /// [`Self::forward`] that also returns every hidden state
    /// (HF `output_hidden_states=True`).
    pub fn forward_with_hidden_states(&self, pixel_values: &Tensor) -> Result<ClipVisionOutput> {
        let mut states = Vec::with_capacity(self.layers.len() + 1);
        let last = self.run(pixel_values, self.layers.len(), |x| states.push(x.clone()))?;
        self.output(last, states)
    }

    /// LLaVA's image features: `hidden_states[select_layer]`, with the class
    /// token dropped for [`SelectFeature::Patch`] → `(B, N, D)`, or kept for
    /// [`SelectFeature::ClsPatch`] → `(B, 1 + N, D)`. Only the blocks up to
    /// the selected one are run (so later blocks and `post_layernorm` get no
    /// gradient).
    pub fn features(
        &self,
        pixel_values: &Tensor,
        select_layer: i64,
        select_feature: SelectFeature,
    ) -> Result<Tensor> {
        let idx = self.config.hidden_state_index(select_layer)?;
        let x = self.run(pixel_values, idx, |_| {})?;
        match select_feature {
            SelectFeature::Patch => {
                let n = x.dim(1)?;
                x.narrow(1, 1, n - 1)
            }
            SelectFeature::ClsPatch => Ok(x),
        }
    }

    /// [`Self::features`] with the config's `select_layer` and
    /// `select_feature`.
    pub fn select_features(&self, pixel_values: &Tensor) -> Result<Tensor> {
        self.features(
            pixel_values,
            self.config.select_layer,
            self.config.select_feature,
        )
    }
}

/// Parity replay: weights under `vision_model.` (a `CLIPVisionModel`
/// checkpoint), input `pixel_values`; outputs `last_hidden_state`,
/// `pooler_output`, `features_m2_patch` (`hidden_states[-2][:, 1:]`) and
/// `features_m1_cls_patch` (`hidden_states[-1]`).
pub fn parity_forward(
    case: &Case,
    ckpt: &Checkpoint,
    device: &Device,
) -> Result<BTreeMap<String, Tensor>> {
    let cfg: ClipVisionConfig = case.config()?;
    let vb = ckpt.var_builder(DType::F32, device).pp("vision_model");
    let model = ClipVision::new(&cfg, vb)?;
    let px = case.input("pixel_values")?.to_device(device)?;
    let out = model.forward(&px)?;
    let feats = model.features(&px, -2, SelectFeature::Patch)?;
    let feats_all = model.features(&px, -1, SelectFeature::ClsPatch)?;
    Ok(BTreeMap::from([
        ("last_hidden_state".to_string(), out.last_hidden_state),
        ("pooler_output".to_string(), out.pooler_output),
        ("features_m2_patch".to_string(), feats),
        ("features_m1_cls_patch".to_string(), feats_all),
    ]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_nn::VarMap;

    fn tiny() -> ClipVisionConfig {
        ClipVisionConfig {
            hidden_size: 16,
            intermediate_size: 24,
            num_hidden_layers: 3,
            num_attention_heads: 2,
            image_size: 14,
            patch_size: 7,
            ..ClipVisionConfig::vit_l14_224()
        }
    }

    #[test]
    fn presets_match_openai_vit_l14() {
        let c = ClipVisionConfig::vit_l14_224();
        assert_eq!(
            (c.hidden_size, c.num_hidden_layers, c.num_attention_heads),
            (1024, 24, 16)
        );
        assert_eq!((c.intermediate_size, c.patch_size), (4096, 14));
        assert_eq!(c.num_patches(), 256);
        assert_eq!(c.hidden_act, Activation::QuickGelu);
        assert_eq!(ClipVisionConfig::vit_l14_336().num_patches(), 576);
        let parsed: ClipVisionConfig = serde_json::from_str(
            r#"{"hidden_size": 1024, "image_size": 336, "model_type": "clip_vision_model",
                "hidden_act": "quick_gelu", "projection_dim": 768}"#,
        )
        .unwrap();
        assert_eq!(parsed, ClipVisionConfig::vit_l14_336());
        let llava: ClipVisionConfig = serde_json::from_str(
            r#"{"mm_vision_select_layer": -1, "mm_vision_select_feature": "cls_patch"}"#,
        )
        .unwrap();
        assert_eq!(
            (llava.select_layer, llava.select_feature),
            (-1, SelectFeature::ClsPatch)
        );
    }

    #[test]
    fn select_layer_range() {
        let c = tiny();
        assert_eq!(c.hidden_state_index(-2).unwrap(), 2);
        assert_eq!(c.hidden_state_index(-1).unwrap(), 3);
        assert_eq!(c.hidden_state_index(-4).unwrap(), 0);
        assert_eq!(c.hidden_state_index(3).unwrap(), 3);
        assert!(c.hidden_state_index(-5).is_err());
        assert!(c.hidden_state_index(4).is_err());
    }

    #[test]
    fn shapes_and_bad_inputs() {
        let vm = VarMap::new();
        let vb = VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu);
        let m = ClipVision::new(&tiny(), vb).unwrap();
        let x = Tensor::randn(0f32, 1.0, (2, 3, 14, 14), &Device::Cpu).unwrap();
        let out = m.forward(&x).unwrap();
        assert_eq!(out.last_hidden_state.dims(), &[2, 5, 16]);
        assert_eq!(out.pooler_output.dims(), &[2, 16]);
        assert!(out.hidden_states.is_empty());
        let full = m.forward_with_hidden_states(&x).unwrap();
        assert_eq!(full.hidden_states.len(), 4);
        let f = m.select_features(&x).unwrap();
        assert_eq!(f.dims(), &[2, 4, 16]);
        let diff =
            calico_nn::testing::max_abs_diff(&f, &full.hidden_states[2].narrow(1, 1, 4).unwrap());
        assert_eq!(diff, 0.0);
        assert_eq!(
            m.features(&x, -1, SelectFeature::ClsPatch).unwrap().dims(),
            &[2, 5, 16]
        );
        let bad = Tensor::zeros((1, 3, 21, 21), DType::F32, &Device::Cpu).unwrap();
        let e = m.forward(&bad).unwrap_err().to_string();
        assert!(e.contains("(batch, 3, 14, 14)") && e.contains("21"), "{e}");
        assert!(m.features(&x, 7, SelectFeature::Patch).is_err());
    }

    #[test]
    fn gradients_reach_exactly_the_blocks_up_to_select_layer() {
        let vm = VarMap::new();
        let vb = VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu);
        let cfg = tiny();
        let m = ClipVision::new(&cfg, vb).unwrap();
        let x = Tensor::randn(0f32, 1.0, (2, 3, 14, 14), &Device::Cpu).unwrap();
        let f = m.features(&x, -2, SelectFeature::Patch).unwrap();
        let w = Tensor::randn(0f32, 1.0, f.shape(), &Device::Cpu).unwrap();
        let loss = (f * w).unwrap().sum_all().unwrap();
        let grads = loss.backward().unwrap();
        let data = vm.data().lock().unwrap();
        // 3 embedding tensors, pre_layrnorm 2, 16 per block, post_layernorm 2.
        assert_eq!(data.len(), 3 + 2 + 3 * 16 + 2);
        // hidden_states[-2] is the output of block 1: block 2 and
        // post_layernorm are not used.
        let unused =
            |n: &str| n.starts_with("encoder.layers.2.") || n.starts_with("post_layernorm.");
        let (used, skipped): (Vec<_>, Vec<_>) = data.iter().partition(|(n, _)| !unused(n));
        assert_eq!(skipped.len(), 16 + 2);
        calico_nn::testing::assert_gradients_reach(&grads, used, "CLIP vision features");
        for (name, var) in skipped {
            assert!(
                grads.get(var.as_tensor()).is_none(),
                "{name} got a gradient from the layer -2 features"
            );
        }
    }

    #[test]
    fn every_parameter_gets_a_gradient_from_forward() {
        let vm = VarMap::new();
        let vb = VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu);
        let m = ClipVision::new(&tiny(), vb).unwrap();
        let x = Tensor::randn(0f32, 1.0, (2, 3, 14, 14), &Device::Cpu).unwrap();
        let out = m.forward(&x).unwrap();
        let w1 = Tensor::randn(0f32, 1.0, out.last_hidden_state.shape(), &Device::Cpu).unwrap();
        let w2 = Tensor::randn(0f32, 1.0, out.pooler_output.shape(), &Device::Cpu).unwrap();
        let loss = ((out.last_hidden_state * w1).unwrap().sum_all().unwrap()
            + (out.pooler_output * w2).unwrap().sum_all().unwrap())
        .unwrap();
        let grads = loss.backward().unwrap();
        let data = vm.data().lock().unwrap();
        calico_nn::testing::assert_gradients_reach(&grads, data.iter(), "CLIP vision");
    }
}
