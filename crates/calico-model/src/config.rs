//! The whole model's configuration: every block's config, where CEM and CAM
//! go, LoRA, the image views, the ablation switches of Table 2 and the
//! vision shape of the baselines (Table 4).
//!
//! Presets live as JSON in `crates/calico-model/presets/` (embedded at
//! build time): `tiny` (CI-sized), `small` (SmolLM2-135M-shaped LLM, small
//! vision), `paper` (the paper's sizes). A config file has the same shape;
//! fields it leaves out take the paper's values.

use std::path::Path;

use calico_nn::LoraConfig;
use serde::{Deserialize, Serialize};

use crate::cam::CamConfig;
use crate::cem::CemConfig;
use crate::dinov2::Dinov2Config;
use crate::eva_vit::EvaVitConfig;
use crate::llama::LlamaConfig;
use crate::preprocess::{ClipView, DinoView, SamView, View, CLIP_MEAN, CLIP_STD};
use crate::qformer::QFormerConfig;
use crate::sam::image_encoder::SamEncoderConfig;
use crate::sam::mask_decoder::MaskDecoderConfig;
use crate::sam::prompt_encoder::PromptEncoderConfig;

/// A configuration error, naming the field and the values that disagree.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("unknown preset `{0}`; available: tiny, tiny-staged, small, paper")]
    UnknownPreset(String),
    #[error("cannot read model config {path}: {message}")]
    Read { path: String, message: String },
    #[error("model config {origin}: {message}")]
    Invalid { origin: String, message: String },
}

/// Which vision path feeds the LLM: Calico's, or one of the baselines'
/// (Table 4; used for shapes, parameter counts and FLOPs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum VisionKind {
    /// EVA-CLIP-g → (CEM) → Q-Former with `num_query_tokens` queries →
    /// f_image (linear).
    #[default]
    Calico,
    /// LISA-style LLaVA: CLIP ViT-L/14 at 224 px, 256 patch tokens, linear
    /// projector.
    MultiImageLisa,
    /// GLaMM-style LLaVA-1.5: CLIP ViT-L/14 at 336 px, 576 patch tokens,
    /// two-layer MLP projector (Linear, GELU, Linear).
    MultiImageGlamm,
}

impl VisionKind {
    pub const ALL: [VisionKind; 3] = [
        VisionKind::Calico,
        VisionKind::MultiImageLisa,
        VisionKind::MultiImageGlamm,
    ];

    /// The name the paper's tables use.
    pub fn label(&self) -> &'static str {
        match self {
            VisionKind::Calico => "Calico",
            VisionKind::MultiImageLisa => "Multi-Image LISA",
            VisionKind::MultiImageGlamm => "Multi-Image GLaMM",
        }
    }

    /// Input side of the CLIP tower for the baselines.
    pub fn clip_image_size(&self) -> Option<usize> {
        match self {
            VisionKind::Calico => None,
            VisionKind::MultiImageLisa => Some(224),
            VisionKind::MultiImageGlamm => Some(336),
        }
    }
}

/// A CLIP vision tower's shape (HF `CLIPVisionConfig` field names), for the
/// baselines. Defaults: OpenAI CLIP ViT-L/14. The built tower
/// ([`CalicoConfig::clip_tower`]) adds the fixed rest of OpenAI CLIP /
/// LLaVA: QuickGELU, LayerNorm eps 1e-5, features = hidden state −2 with
/// the class token dropped.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ClipVisionConfig {
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub patch_size: usize,
    /// Input side in pixels; `None` (the default): the baseline's own
    /// (224 for LISA, 336 for GLaMM, [`VisionKind::clip_image_size`]).
    /// Set it for small test towers.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image_size: Option<usize>,
}

impl Default for ClipVisionConfig {
    fn default() -> Self {
        Self {
            hidden_size: 1024,
            intermediate_size: 4096,
            num_hidden_layers: 24,
            num_attention_heads: 16,
            patch_size: 14,
            image_size: None,
        }
    }
}

/// LoRA on the LLM: PEFT hyper-parameters plus the projections it wraps.
/// Defaults are the paper's (r 8, α 16, dropout 0.05, `q_proj`, `v_proj`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LoraSettings {
    /// Rank `r`.
    pub r: usize,
    /// `lora_alpha` (the update is scaled by `alpha / r`).
    pub alpha: f64,
    /// Dropout on the adapter input while training.
    pub dropout: f32,
    /// LLaMA projection names (`q_proj`, `k_proj`, `v_proj`, `o_proj`,
    /// `gate_proj`, `up_proj`, `down_proj`).
    pub target_modules: Vec<String>,
}

impl Default for LoraSettings {
    fn default() -> Self {
        let c = LoraConfig::default();
        Self {
            r: c.r,
            alpha: c.alpha,
            dropout: c.dropout,
            target_modules: vec!["q_proj".into(), "v_proj".into()],
        }
    }
}

impl LoraSettings {
    /// The PEFT hyper-parameters as calico-nn takes them.
    pub fn config(&self) -> LoraConfig {
        LoraConfig {
            r: self.r,
            alpha: self.alpha,
            dropout: self.dropout,
        }
    }
}

/// The LLaMA projections LoRA may wrap.
pub const LORA_TARGETS: [&str; 7] = [
    "q_proj",
    "k_proj",
    "v_proj",
    "o_proj",
    "gate_proj",
    "up_proj",
    "down_proj",
];

/// How each encoder sees an input image.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Views {
    /// The CLIP-like tower feeding the LLM: EVA-CLIP for Calico (BLIP-2
    /// eval processor: 224, CLIP mean/std), the CLIP ViT for the baselines
    /// (at [`CalicoConfig::clip_image_size`]). Its size must be that
    /// tower's input size.
    pub clip: View,
    /// DINOv2.
    pub dino: View,
    /// SAM (longest side 1024, padded).
    pub sam: View,
}

impl Default for Views {
    fn default() -> Self {
        Self {
            clip: View::Clip(ClipView::new(224, CLIP_MEAN, CLIP_STD)),
            dino: View::Dino(DinoView::new(256, 224)),
            sam: View::Sam(SamView::new(1024)),
        }
    }
}

/// The output size `(h, w)` of a view.
pub fn view_size(view: &View) -> (usize, usize) {
    match view {
        View::Sam(v) => (v.target, v.target),
        View::Clip(v) => (v.size[0], v.size[1]),
        View::Dino(v) => (v.crop[0], v.crop[1]),
    }
}

/// Table 2's component switches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Ablation {
    /// false: "w/o Q-Former", a linear projection of the EVA tokens
    /// (D_g → D) replaces Q-Former + f_image.
    pub use_qformer: bool,
    /// false: "w/o DINO" (no DINOv2, hence no CEM cross-attention).
    pub use_dino: bool,
    /// false: "w/o CEM" (CAM reads the raw `ln_vision` tokens).
    pub use_cem: bool,
    /// false: no CAM modules.
    pub use_cam: bool,
}

impl Default for Ablation {
    fn default() -> Self {
        Self {
            use_qformer: true,
            use_dino: true,
            use_cem: true,
            use_cam: true,
        }
    }
}

fn d_text_out() -> usize {
    256
}
fn d_dino_layer() -> usize {
    24
}
fn d_true() -> bool {
    true
}

/// Calico's full configuration. Missing fields take the paper's values.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CalicoConfig {
    /// Free-form name (the preset's).
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub vision: VisionKind,
    /// EVA-CLIP 𝒞 (default: ViT-g/14 with LAVIS's `ln_vision` eps, as the
    /// InstructBLIP checkpoint is in LAVIS layout).
    #[serde(default = "EvaVitConfig::paper_lavis")]
    pub eva_vit: EvaVitConfig,
    /// Q-Former 𝒬 and the number of queries S_I.
    #[serde(default)]
    pub qformer: QFormerConfig,
    /// The baselines' CLIP tower (unused by Calico itself). The baselines
    /// ignore `qformer`, `dinov2`, `cem`, `cam` and the `ablation`
    /// switches other than the checks between them (no Q-Former, DINOv2,
    /// CEM or CAM is built or counted for them).
    #[serde(default)]
    pub clip: ClipVisionConfig,
    /// DINOv2 ℰ.
    #[serde(default = "paper_dinov2")]
    pub dinov2: Dinov2Config,
    /// X_semantic is the DINOv2 hidden state after this layer (HF
    /// `hidden_states` index: 0 embeddings, k after layer k), patch tokens
    /// only.
    #[serde(default = "d_dino_layer")]
    pub dinov2_layer: usize,
    /// Apply DINOv2's final LayerNorm to that hidden state.
    #[serde(default = "d_true")]
    pub dinov2_final_norm: bool,
    #[serde(default)]
    pub cem: CemConfig,
    #[serde(default)]
    pub cam: CamConfig,
    /// The LLM ℳ.
    #[serde(default)]
    pub llm: LlamaConfig,
    #[serde(default)]
    pub lora: LoraSettings,
    /// SAM grounding encoder 𝒢.
    #[serde(default)]
    pub sam_encoder: SamEncoderConfig,
    #[serde(default)]
    pub sam_prompt_encoder: PromptEncoderConfig,
    /// SAM pixel decoder 𝒟.
    #[serde(default)]
    pub sam_mask_decoder: MaskDecoderConfig,
    /// Output width of `text_hidden_fcs` (f_segmentation: D → D → this),
    /// SAM's prompt width.
    #[serde(default = "d_text_out")]
    pub text_hidden_fcs_out: usize,
    #[serde(default)]
    pub views: Views,
    #[serde(default)]
    pub ablation: Ablation,
}

fn paper_dinov2() -> Dinov2Config {
    Dinov2Config::vit_l14()
}

const TINY: &str = include_str!("../presets/tiny.json");
const SMALL: &str = include_str!("../presets/small.json");
const PAPER: &str = include_str!("../presets/paper.json");
/// `tiny` as its encoders-first recipe trains it (docs/training.md): EVA on a
/// convolutional stem, twice tiny's widths on 112-px views. The file the
/// docs and tools/train/ablations.sh name, so there is one copy.
const TINY_STAGED: &str = include_str!("../../../tools/train/tiny-staged.model.json");

impl CalicoConfig {
    /// The preset names.
    pub const PRESETS: [&'static str; 4] = ["tiny", "tiny-staged", "small", "paper"];

    /// A named preset (`tiny`, `tiny-staged`, `small`, `paper`), validated.
    /// `tiny-staged` is named `tiny` inside: the same family, with the
    /// encoders the staged recipe trains (and so the same training defaults
    /// when it is given as a `--model-config` file).
    pub fn preset(name: &str) -> Result<Self, ConfigError> {
        let text = match name {
            "tiny" => TINY,
            "tiny-staged" => TINY_STAGED,
            "small" => SMALL,
            "paper" => PAPER,
            other => return Err(ConfigError::UnknownPreset(other.to_string())),
        };
        Self::from_json_str(text, &format!("preset `{name}`"))
    }

    /// Parses and validates a JSON config; `origin` names it in errors.
    pub fn from_json_str(text: &str, origin: &str) -> Result<Self, ConfigError> {
        let cfg: CalicoConfig = serde_json::from_str(text).map_err(|e| ConfigError::Invalid {
            origin: origin.to_string(),
            message: e.to_string(),
        })?;
        cfg.validate().map_err(|message| ConfigError::Invalid {
            origin: origin.to_string(),
            message,
        })?;
        Ok(cfg)
    }

    /// Reads, parses and validates a JSON config file.
    pub fn from_json_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Read {
            path: path.display().to_string(),
            message: e.to_string(),
        })?;
        Self::from_json_str(&text, &path.display().to_string())
    }

    /// The same model with another vision path (for the baselines). A CLIP
    /// view (`views.clip`) is resized to the new tower's input size (mean,
    /// std and filter kept), so the result stays valid.
    pub fn with_vision(&self, vision: VisionKind) -> Self {
        let mut c = Self {
            vision,
            ..self.clone()
        };
        let size = c.clip_view_size();
        if let View::Clip(v) = &mut c.views.clip {
            v.size = [size, size];
        }
        c
    }

    /// Input side of the baselines' CLIP tower (`clip.image_size`, else the
    /// baseline's 224 / 336); `None` for Calico.
    pub fn clip_image_size(&self) -> Option<usize> {
        self.vision
            .clip_image_size()
            .map(|s| self.clip.image_size.unwrap_or(s))
    }

    /// The side `views.clip` must give: the CLIP tower's input for the
    /// baselines, `eva_vit.image_size` for Calico.
    pub fn clip_view_size(&self) -> usize {
        self.clip_image_size().unwrap_or(self.eva_vit.image_size)
    }

    /// The baselines' CLIP tower as [`crate::clip_vision::ClipVision`]
    /// builds it (OpenAI CLIP: QuickGELU, eps 1e-5; LLaVA selection: layer
    /// −2, patch tokens); `None` for Calico.
    pub fn clip_tower(&self) -> Option<crate::clip_vision::ClipVisionConfig> {
        let size = self.clip_image_size()?;
        let c = &self.clip;
        Some(crate::clip_vision::ClipVisionConfig {
            hidden_size: c.hidden_size,
            intermediate_size: c.intermediate_size,
            num_hidden_layers: c.num_hidden_layers,
            num_attention_heads: c.num_attention_heads,
            image_size: size,
            patch_size: c.patch_size,
            ..crate::clip_vision::ClipVisionConfig::vit_l14_224()
        })
    }

    /// LLM width D.
    pub fn d_llm(&self) -> usize {
        self.llm.hidden_size
    }

    /// Image tokens per image in the LLM input (S_I).
    pub fn image_tokens(&self) -> usize {
        match self.vision {
            VisionKind::Calico if self.ablation.use_qformer => self.qformer.num_query_tokens,
            VisionKind::Calico => self.eva_vit.num_positions(),
            _ => {
                let g = self.clip_view_size() / self.clip.patch_size.max(1);
                g * g
            }
        }
    }

    /// Whether DINOv2 runs at all (only Calico with CEM uses it).
    pub fn runs_dino(&self) -> bool {
        self.vision == VisionKind::Calico && self.ablation.use_dino && self.ablation.use_cem
    }

    /// Whether the CEM exists.
    pub fn has_cem(&self) -> bool {
        self.runs_dino()
    }

    /// Whether CAMs exist.
    pub fn has_cam(&self) -> bool {
        self.vision == VisionKind::Calico && self.ablation.use_cam && !self.cam.layers.is_empty()
    }

    /// Checks that the blocks fit together; the message names the fields.
    pub fn validate(&self) -> Result<(), String> {
        let eva = &self.eva_vit;
        let q = &self.qformer;
        let llm = &self.llm;
        let check = |ok: bool, msg: String| if ok { Ok(()) } else { Err(msg) };
        // Widths of 0 pass every divisibility check below but build nothing.
        for (what, v) in [
            ("eva_vit.hidden_size", eva.hidden_size),
            ("eva_vit.intermediate_size", eva.intermediate_size),
            ("qformer.hidden_size", q.hidden_size),
            ("dinov2.hidden_size", self.dinov2.hidden_size),
            ("llm.hidden_size", llm.hidden_size),
            ("llm.intermediate_size", llm.intermediate_size),
            ("llm.vocab_size", llm.vocab_size),
            ("llm.num_hidden_layers", llm.num_hidden_layers),
            ("sam_encoder.embed_dim", self.sam_encoder.embed_dim),
            (
                "sam_mask_decoder.transformer_dim",
                self.sam_mask_decoder.transformer_dim,
            ),
        ] {
            check(v > 0, format!("{what} must be positive, got 0"))?;
        }
        check(
            eva.num_attention_heads > 0 && eva.hidden_size.is_multiple_of(eva.num_attention_heads),
            format!(
                "eva_vit.hidden_size {} is not a multiple of eva_vit.num_attention_heads {}",
                eva.hidden_size, eva.num_attention_heads
            ),
        )?;
        check(
            eva.patch_size > 0 && eva.image_size.is_multiple_of(eva.patch_size),
            format!(
                "eva_vit.image_size {} is not a multiple of eva_vit.patch_size {}",
                eva.image_size, eva.patch_size
            ),
        )?;
        check(
            q.encoder_hidden_size == eva.hidden_size,
            format!(
                "qformer.encoder_hidden_size {} differs from eva_vit.hidden_size {} (the Q-Former reads EVA tokens)",
                q.encoder_hidden_size, eva.hidden_size
            ),
        )?;
        check(
            q.num_attention_heads > 0 && q.hidden_size.is_multiple_of(q.num_attention_heads),
            format!(
                "qformer.hidden_size {} is not a multiple of qformer.num_attention_heads {}",
                q.hidden_size, q.num_attention_heads
            ),
        )?;
        check(
            q.num_query_tokens > 0 && q.cross_attention_frequency > 0,
            "qformer.num_query_tokens and qformer.cross_attention_frequency must be positive"
                .to_string(),
        )?;
        let dino = &self.dinov2;
        check(
            dino.num_attention_heads > 0
                && dino.hidden_size.is_multiple_of(dino.num_attention_heads),
            format!(
                "dinov2.hidden_size {} is not a multiple of dinov2.num_attention_heads {}",
                dino.hidden_size, dino.num_attention_heads
            ),
        )?;
        check(
            self.dinov2_layer <= dino.num_hidden_layers,
            format!(
                "dinov2_layer {} is past the last of dinov2.num_hidden_layers {}",
                self.dinov2_layer, dino.num_hidden_layers
            ),
        )?;
        self.cem
            .validate(eva.hidden_size)
            .map_err(|e| format!("cem: {e}"))?;
        check(
            llm.num_attention_heads > 0
                && llm.kv_heads() > 0
                && llm.num_attention_heads.is_multiple_of(llm.kv_heads()),
            format!(
                "llm.num_attention_heads {} is not a multiple of llm.num_key_value_heads {}",
                llm.num_attention_heads,
                llm.kv_heads()
            ),
        )?;
        check(
            llm.head_dim.is_some() || llm.hidden_size.is_multiple_of(llm.num_attention_heads),
            format!(
                "llm.hidden_size {} is not a multiple of llm.num_attention_heads {}",
                llm.hidden_size, llm.num_attention_heads
            ),
        )?;
        let mut seen = std::collections::BTreeSet::new();
        for &l in &self.cam.layers {
            check(
                l < llm.num_hidden_layers,
                format!(
                    "cam.layers contains {l}, but the LLM has {} layers (0..{})",
                    llm.num_hidden_layers, llm.num_hidden_layers
                ),
            )?;
            check(seen.insert(l), format!("cam.layers lists {l} twice"))?;
        }
        check(self.lora.r > 0, "lora.r must be positive".to_string())?;
        for t in &self.lora.target_modules {
            check(
                LORA_TARGETS.contains(&t.as_str()),
                format!(
                    "lora.target_modules: `{t}` is not a LLaMA projection ({})",
                    LORA_TARGETS.join(", ")
                ),
            )?;
        }
        let enc = &self.sam_encoder;
        let pe = &self.sam_prompt_encoder;
        let md = &self.sam_mask_decoder;
        check(
            enc.patch_size > 0 && enc.img_size.is_multiple_of(enc.patch_size),
            format!(
                "sam_encoder.img_size {} is not a multiple of sam_encoder.patch_size {}",
                enc.img_size, enc.patch_size
            ),
        )?;
        check(
            enc.num_heads > 0 && enc.embed_dim.is_multiple_of(enc.num_heads),
            format!(
                "sam_encoder.embed_dim {} is not a multiple of sam_encoder.num_heads {}",
                enc.embed_dim, enc.num_heads
            ),
        )?;
        if let Some(i) = enc.global_attn_indexes.iter().find(|&&i| i >= enc.depth) {
            return Err(format!(
                "sam_encoder.global_attn_indexes contains {i}, not below sam_encoder.depth {}",
                enc.depth
            ));
        }
        if let Some(ch) = &enc.conv_stem {
            crate::conv_stem::ConvStem::check_patch(ch, enc.patch_size, "sam_encoder")
                .map_err(|e| e.to_string())?;
        }
        let c = md.transformer_dim;
        for (what, v) in [
            ("sam_encoder.out_chans", enc.out_chans),
            ("sam_prompt_encoder.embed_dim", pe.embed_dim),
            ("text_hidden_fcs_out", self.text_hidden_fcs_out),
        ] {
            check(
                v == c,
                format!("{what} {v} differs from sam_mask_decoder.transformer_dim {c}"),
            )?;
        }
        let g = enc.grid_size();
        check(
            pe.image_embedding_size == [g, g],
            format!(
                "sam_prompt_encoder.image_embedding_size {:?} differs from the encoder's grid [{g}, {g}]",
                pe.image_embedding_size
            ),
        )?;
        check(
            pe.input_image_size == [enc.img_size, enc.img_size],
            format!(
                "sam_prompt_encoder.input_image_size {:?} differs from sam_encoder.img_size {}",
                pe.input_image_size, enc.img_size
            ),
        )?;
        let (ch, cw) = view_size(&self.views.clip);
        match self.clip_image_size() {
            None => check(
                ch == eva.image_size && cw == eva.image_size,
                format!(
                    "views.clip gives {ch}x{cw} images, eva_vit.image_size is {}",
                    eva.image_size
                ),
            )?,
            Some(s) => {
                let c = &self.clip;
                check(
                    c.num_attention_heads > 0
                        && c.hidden_size.is_multiple_of(c.num_attention_heads),
                    format!(
                        "clip.hidden_size {} is not a multiple of clip.num_attention_heads {}",
                        c.hidden_size, c.num_attention_heads
                    ),
                )?;
                check(
                    c.patch_size > 0 && s % c.patch_size == 0,
                    format!(
                        "the CLIP input side {s} is not a multiple of clip.patch_size {}",
                        c.patch_size
                    ),
                )?;
                check(
                    c.num_hidden_layers > 0,
                    "clip.num_hidden_layers must be positive (features are read after layer -2)"
                        .to_string(),
                )?;
                check(
                    ch == s && cw == s,
                    format!(
                        "views.clip gives {ch}x{cw} images, the {} CLIP tower takes {s}x{s}",
                        self.vision.label()
                    ),
                )?;
            }
        }
        let (sh, sw) = view_size(&self.views.sam);
        check(
            sh == enc.img_size && sw == enc.img_size,
            format!(
                "views.sam gives {sh}x{sw} images, sam_encoder.img_size is {}",
                enc.img_size
            ),
        )?;
        let (dh, dw) = view_size(&self.views.dino);
        check(
            dino.patch_size > 0 && dh % dino.patch_size == 0 && dw % dino.patch_size == 0,
            format!(
                "views.dino gives {dh}x{dw} images, not a multiple of dinov2.patch_size {}",
                dino.patch_size
            ),
        )?;
        let a = &self.ablation;
        check(
            a.use_dino || !a.use_cem,
            "ablation.use_cem needs ablation.use_dino (the CEM attends to DINOv2 tokens)"
                .to_string(),
        )?;
        check(
            a.use_qformer || !a.use_cam,
            "ablation.use_cam needs ablation.use_qformer (a CAM runs the Q-Former)".to_string(),
        )?;
        Ok(())
    }

    /// DINOv2 tokens per image fed to the CEM (patch tokens of the DINO view).
    pub fn semantic_tokens(&self) -> usize {
        let (h, w) = view_size(&self.views.dino);
        let p = self.dinov2.patch_size.max(1);
        (h / p) * (w / p)
    }
}

impl Default for CalicoConfig {
    /// The `paper` preset.
    fn default() -> Self {
        CalicoConfig::preset("paper").expect("the paper preset is valid")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_parse_validate_and_round_trip() {
        for name in CalicoConfig::PRESETS {
            let cfg = CalicoConfig::preset(name).unwrap();
            let family = if name == "tiny-staged" { "tiny" } else { name };
            assert_eq!(cfg.name, family);
            let text = serde_json::to_string(&cfg).unwrap();
            let back = CalicoConfig::from_json_str(&text, "round trip").unwrap();
            assert_eq!(back, cfg, "{name}");
        }
    }

    #[test]
    fn paper_preset_has_the_papers_sizes() {
        let c = CalicoConfig::preset("paper").unwrap();
        assert_eq!(c.eva_vit, EvaVitConfig::paper_lavis());
        assert_eq!(c.qformer, QFormerConfig::paper());
        assert_eq!(c.llm, LlamaConfig::vicuna_7b());
        assert_eq!(c.sam_encoder, SamEncoderConfig::vit_h());
        assert_eq!(c.sam_mask_decoder, MaskDecoderConfig::default());
        assert_eq!(c.sam_prompt_encoder, PromptEncoderConfig::default());
        assert_eq!(c.dinov2, Dinov2Config::vit_l14());
        assert_eq!(c.cam.layers, vec![11, 22]);
        assert_eq!(c.lora.config(), LoraConfig::default());
        assert_eq!(c.lora.target_modules, ["q_proj", "v_proj"]);
        assert_eq!(c.text_hidden_fcs_out, 256);
        assert_eq!(c.image_tokens(), 32);
        assert_eq!(
            c.with_vision(VisionKind::MultiImageLisa).image_tokens(),
            256
        );
        assert_eq!(
            c.with_vision(VisionKind::MultiImageGlamm).image_tokens(),
            576
        );
        assert_eq!(c.semantic_tokens(), 256);
        assert_eq!(c.views, Views::default());
        // Missing fields take the paper's values.
        let empty = CalicoConfig::from_json_str(r#"{"name": "paper"}"#, "x").unwrap();
        assert_eq!(empty, c);
    }

    #[test]
    fn small_preset_uses_the_smollm2_shape() {
        let c = CalicoConfig::preset("small").unwrap();
        assert_eq!(c.llm, LlamaConfig::smollm2_135m());
        assert!(c.cam.layers.iter().all(|&l| l < 30));
    }

    fn invalid(edit: impl Fn(&mut CalicoConfig)) -> String {
        let mut c = CalicoConfig::preset("tiny").unwrap();
        edit(&mut c);
        let text = serde_json::to_string(&c).unwrap();
        CalicoConfig::from_json_str(&text, "edited")
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn validation_names_the_fields_that_disagree() {
        let e = invalid(|c| c.cam.layers = vec![1, 99]);
        assert!(
            e.contains("cam.layers contains 99") && e.contains("edited"),
            "{e}"
        );
        let e = invalid(|c| c.qformer.encoder_hidden_size += 8);
        assert!(e.contains("qformer.encoder_hidden_size"), "{e}");
        let e = invalid(|c| c.cam.layers = vec![1, 1]);
        assert!(e.contains("twice"), "{e}");
        let e = invalid(|c| c.text_hidden_fcs_out = 7);
        assert!(e.contains("text_hidden_fcs_out 7"), "{e}");
        let e = invalid(|c| c.lora.target_modules = vec!["qproj".into()]);
        assert!(e.contains("`qproj`"), "{e}");
        let e = invalid(|c| c.dinov2_layer = 100);
        assert!(e.contains("dinov2_layer 100"), "{e}");
        let e = invalid(|c| c.llm.hidden_size = 0);
        assert!(e.contains("llm.hidden_size must be positive"), "{e}");
        let e = invalid(|c| c.cem.num_attention_heads = 7);
        assert!(e.contains("cem:"), "{e}");
        let e = invalid(|c| c.ablation.use_dino = false);
        assert!(e.contains("use_cem needs"), "{e}");
        let e = invalid(|c| c.views.sam = View::Sam(SamView::new(512)));
        assert!(e.contains("views.sam"), "{e}");
        let e = CalicoConfig::from_json_str(r#"{"lora_rank": 8}"#, "typo")
            .unwrap_err()
            .to_string();
        assert!(e.contains("lora_rank"), "{e}");
        assert!(matches!(
            CalicoConfig::preset("huge"),
            Err(ConfigError::UnknownPreset(_))
        ));
    }
}
