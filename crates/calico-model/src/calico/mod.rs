//! The whole Calico model (§3.2–3.4): vision module, CEM, LLM with LoRA and
//! CAMs, and the SAM grounding path that turns `[SEG]` hidden states into
//! masks.
//!
//! ```text
//! image ─► EVA ViT 𝒞 ─► ln_vision ─► X_global ─┬─► Q-Former 𝒬(q, X_global) ─► f_image ─► I⁰ (image slots)
//!       └► DINOv2 ℰ (layer k, patch tokens) ──► CEM 𝒜 ─► X′_global ─► CAM at layers L (eq. 7–9)
//!       └► SAM image encoder 𝒢 ─► X_ground ─► SAM mask decoder 𝒟 ◄─ text_hidden_fcs(h_[SEG])
//! ```
//!
//! # Tensor names (one builder layout, GLaMM/LISA-like)
//!
//! Frozen builder (checkpoint; a loader maps the released checkpoints onto
//! these names):
//! * `model.vision_tower.*` — EVA ViT with HF `Blip2VisionModel` names
//!   (`embeddings.*`, `encoder.layers.N.*`, `post_layernorm.*` = LAVIS
//!   `ln_vision`);
//! * `model.qformer.*` (HF `Blip2QFormerModel` names) and
//!   `model.query_tokens`;
//! * `model.dinov2.*` (HF `Dinov2Model` names);
//! * the LLM at the root with HF LLaMA names (`model.embed_tokens`,
//!   `model.layers.N.*`, `model.norm`, `lm_head`);
//! * `model.grounding_encoder.image_encoder.*`,
//!   `model.grounding_encoder.prompt_encoder.*` (GLaMM's prefix, original
//!   SAM names below it).
//!
//! Trainable builder (a `VarMap` while training, or a checkpoint):
//! * LoRA: `model.layers.N.self_attn.{q,v}_proj.lora_{A,B}.weight` (the
//!   targets of `cfg.lora`);
//! * `model.cem.*` (CEM), `model.cam.{l}.{f_adaptation,f_reintegration}.*`;
//! * `model.f_image.{weight,bias}` — f_image, Linear(D_q → D) (our name; the
//!   paper gives none; InstructBLIP calls it `language_projection`, Cheetah
//!   `llama_proj`);
//! * `model.text_hidden_fcs.0.{0,2}.{weight,bias}` — f_segmentation,
//!   Linear(D, D), ReLU, Linear(D, 256) (LISA/GLaMM names);
//! * `model.grounding_encoder.mask_decoder.*` — the SAM mask decoder;
//! * rows added to the vocabulary by [`Calico::resize_token_embeddings`].
//!
//! # Choices where the paper is silent
//! * The first Q-Former pass reads the raw `ln_vision` tokens X_global
//!   (§3.2's X_embed = 𝒬(q, X_global)); the CEM output X′_global is read by
//!   the CAMs only (eq. 8). The class token is kept (BLIP-2 feeds all
//!   1 + N tokens).
//! * The CAMs reuse the frozen Q-Former and the frozen `query_tokens` of the
//!   first pass (VPG-C trains a copy of the query tokens; the paper's
//!   trainable set does not mention them).
//! * "w/o Q-Former" (`ablation.use_qformer = false`): f_image is a
//!   Linear(D_g → D) applied to **all** 1 + N EVA tokens (the class token
//!   included), as `CalicoConfig::image_tokens` and the parameter counts
//!   assume. Those tokens are X′_global when the CEM exists (otherwise the
//!   CEM would have no path to the LLM without CAMs), X_global otherwise.
//! * `use_dino = false` or `use_cem = false`: X′_global = X_global (no DINOv2
//!   is run, no CEM is built).
//! * DINOv2 features: hidden state after `cfg.dinov2_layer` layers, with the
//!   final LayerNorm when `cfg.dinov2_final_norm`, patch tokens only.
//!
//! # The baselines (`vision = multi_image_lisa | multi_image_glamm`)
//! The same model with the vision module swapped for LLaVA's (see
//! `baseline.rs`): a frozen CLIP ViT (HF `CLIPVisionModel` names under
//! `model.vision_tower.vision_tower.vision_model.*`, as in LLaVA/GLaMM
//! checkpoints; LISA's merged checkpoints drop the tower, so a loader maps
//! `openai/clip-vit-large-patch14` onto these names), LLaVA's features
//! (hidden state −2, patch tokens: 256 at 224 px, 576 at 336 px) and a
//! frozen `model.mm_projector` (LISA: one Linear, `.{weight,bias}`; GLaMM:
//! Linear, GELU, Linear, `.{0,2}.*`). The image goes in
//! [`ImageInput::clip`] as the CLIP view at the tower's input size
//! (`cfg.clip_view_size()`); [`ImageInput::dino`] is not read. That view
//! (`preprocess::ClipView`) resizes the whole image to a square; LLaVA's
//! `CLIPImageProcessor` resizes the shortest edge and centre-crops (a
//! preprocessing difference, not a shape one).
//! * No EVA, Q-Former, DINOv2, CEM or CAM is built; the config's
//!   `qformer`/`dinov2`/`cem`/`cam` sections and `ablation` switches are
//!   ignored (the rule `CalicoConfig::image_tokens`, `has_cem`, `has_cam`
//!   and the counts already follow).
//! * Trainable, as for Calico: LoRA, `text_hidden_fcs`, the SAM mask
//!   decoder and the added vocabulary rows (LISA's set). GLaMM also trains
//!   the whole `embed_tokens`/`lm_head` and a `region_encoder` (for `<bbox>`
//!   inputs, unused here); neither is reproduced. The projector stays
//!   frozen in both (anchors §2.1/§2.2), so `x_global_prime` of an
//!   [`EncodedImage`] holds the CLIP features (read by nothing).

mod baseline;
pub mod cache;
mod forward;
mod generate;
mod init;
pub mod quantize;
mod vision;
pub mod weights;

use calico_nn::Linear;
use candle_core::{Device, Result, Tensor};
use candle_nn::{VarBuilder, VarMap};

use self::baseline::BaselineVision;
use crate::cam::Cams;
use crate::cem::Cem;
use crate::config::{CalicoConfig, VisionKind};
use crate::dinov2::Dinov2Model;
use crate::eva_vit::EvaVit;
use crate::llama::{Llama, LoraSpec, QuantizedWeights};
use crate::prompt::{PromptFormat, SpecialIds};
use crate::qformer::{load_query_tokens, QFormer};
use crate::sam::image_encoder::ImageEncoderViT;
use crate::sam::mask_decoder::MaskDecoder;
use crate::sam::prompt_encoder::PromptEncoder;

pub use forward::{ForwardOutput, TrainBatch};
pub use generate::{Answer, SegMask};
pub use init::{seeded_fill, seeded_fill_where, FillMode, SeededBackend};
pub use vision::{EncodedImage, GlobalFeatures, ImageInput};

/// Whether a tensor name belongs to the trainable set (see the module docs):
/// LoRA adapters, CEM, CAM, f_image, `text_hidden_fcs`, the SAM mask decoder
/// and rows added to the vocabulary.
pub fn is_trainable_name(name: &str) -> bool {
    const PREFIXES: [&str; 5] = [
        "model.cem.",
        "model.cam.",
        "model.f_image.",
        "model.text_hidden_fcs.",
        "model.grounding_encoder.mask_decoder.",
    ];
    PREFIXES.iter().any(|p| name.starts_with(p))
        || name.contains(".lora_A.")
        || name.contains(".lora_B.")
        || name.ends_with(".added_weight")
}

/// Creates SAM's relative-position tables in `backend` up front (the
/// encoder reads them without a shape).
pub(crate) fn insert_sam_rel_pos(
    backend: &SeededBackend,
    cfg: &CalicoConfig,
    device: &Device,
) -> Result<()> {
    let enc = &cfg.sam_encoder;
    if !enc.use_rel_pos {
        return Ok(());
    }
    let head_dim = enc.embed_dim / enc.num_heads.max(1);
    for i in 0..enc.depth {
        let side = if enc.global_attn_indexes.contains(&i) {
            enc.grid_size()
        } else {
            enc.window_size
        };
        for axis in ["h", "w"] {
            backend.insert(
                &format!("model.grounding_encoder.image_encoder.blocks.{i}.attn.rel_pos_{axis}"),
                &[2 * side - 1, head_dim],
                device,
            )?;
        }
    }
    Ok(())
}

/// The Calico model.
#[derive(Debug, Clone)]
pub struct Calico {
    cfg: CalicoConfig,
    special: SpecialIds,
    format: PromptFormat,
    vision: VisionPath,
    /// `(Q-Former, query_tokens)`; `None` without the Q-Former (and for
    /// the baselines).
    qformer: Option<(QFormer, Tensor)>,
    /// `(DINOv2, CEM)`; `None` without DINO/CEM (and for the baselines).
    cem: Option<(Dinov2Model, Cem)>,
    llm: Llama,
    cams: Option<Cams>,
    text_fc1: Linear,
    text_fc2: Linear,
    sam_encoder: ImageEncoderViT,
    prompt_encoder: PromptEncoder,
    mask_decoder: MaskDecoder,
    /// Frozen encoder outputs by content (see `cache.rs`); `None` computes
    /// them every time.
    feature_cache: Option<std::sync::Arc<cache::FeatureCache>>,
    /// The config as JSON, part of every cache key.
    fingerprint: String,
    /// Whether EVA, DINOv2 and the Q-Former's first pass are held still
    /// (see [`Calico::set_global_encoders_frozen`]).
    global_frozen: std::sync::Arc<std::sync::atomic::AtomicBool>,
    /// Whether SAM's image encoder is held still (see
    /// [`Calico::set_sam_encoder_frozen`]).
    sam_frozen: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

/// The encoder + projector that make the LLM's image tokens.
#[derive(Debug, Clone)]
enum VisionPath {
    /// EVA ViT and f_image (Q-Former and CEM are [`Calico`] fields: the
    /// CAMs use them too).
    Calico { eva: EvaVit, f_image: Linear },
    /// Frozen CLIP ViT and `mm_projector`.
    Clip(BaselineVision),
}

impl Calico {
    /// Builds the model: frozen blocks from `frozen`, trainable ones (LoRA,
    /// CEM, CAM, f_image, `text_hidden_fcs`, SAM mask decoder) from
    /// `trainable` (see the module docs for the names; for the baselines'
    /// vision kinds the CLIP tower and `mm_projector` come from `frozen`). `special` holds the
    /// ids of the added tokens (from `CalicoTokenizer::add_special_tokens`).
    pub fn new(
        cfg: &CalicoConfig,
        frozen: VarBuilder,
        trainable: VarBuilder,
        special: SpecialIds,
    ) -> Result<Self> {
        Self::new_quantized(cfg, frozen, trainable, special, None)
    }

    /// [`Calico::new`] with the LLM's projection weights found in
    /// `quantized_llm` kept in their block-quantised types, for inference
    /// (see `Llama::new_quantized`).
    pub fn new_quantized(
        cfg: &CalicoConfig,
        frozen: VarBuilder,
        trainable: VarBuilder,
        special: SpecialIds,
        quantized_llm: Option<&QuantizedWeights>,
    ) -> Result<Self> {
        cfg.validate()
            .map_err(|e| candle_core::Error::Msg(format!("invalid Calico config: {e}")))?;
        let fm = frozen.pp("model");
        let tm = trainable.pp("model");
        let d = cfg.d_llm();
        let calico = cfg.vision == VisionKind::Calico;
        let qformer = if calico && cfg.ablation.use_qformer {
            let q = QFormer::new(&cfg.qformer, fm.pp("qformer"))?;
            let tokens = load_query_tokens(&cfg.qformer, &fm)?;
            Some((q, tokens))
        } else {
            None
        };
        let cem = if cfg.has_cem() {
            let dino = Dinov2Model::new(&cfg.dinov2, fm.pp("dinov2"))?;
            let cem = Cem::new(
                &cfg.cem,
                cfg.eva_vit.hidden_size,
                cfg.dinov2.hidden_size,
                tm.pp("cem"),
            )?;
            Some((dino, cem))
        } else {
            None
        };
        let vision = match cfg.clip_tower() {
            None => {
                let eva = EvaVit::new(&cfg.eva_vit, fm.pp("vision_tower"))?;
                let d_in = if cfg.ablation.use_qformer {
                    cfg.qformer.hidden_size
                } else {
                    cfg.eva_vit.hidden_size
                };
                let f_image = Linear::new(d_in, d, true, tm.pp("f_image"))?;
                VisionPath::Calico { eva, f_image }
            }
            Some(tower) => {
                VisionPath::Clip(BaselineVision::new(cfg.vision, &tower, d, fm.clone())?)
            }
        };
        let lora = LoraSpec {
            r: cfg.lora.r,
            lora_alpha: cfg.lora.alpha,
            lora_dropout: cfg.lora.dropout,
            target_modules: cfg.lora.target_modules.clone(),
        };
        let llm = Llama::with_lora_quantized(
            &cfg.llm,
            &lora,
            frozen.clone(),
            quantized_llm,
            trainable.clone(),
        )?;
        let cams = if cfg.has_cam() {
            Some(Cams::new(&cfg.cam, d, cfg.qformer.hidden_size, tm.clone())?)
        } else {
            None
        };
        let fcs = tm.pp("text_hidden_fcs").pp("0");
        let text_fc1 = Linear::new(d, d, true, fcs.pp("0"))?;
        let text_fc2 = Linear::new(d, cfg.text_hidden_fcs_out, true, fcs.pp("2"))?;
        let ge = fm.pp("grounding_encoder");
        let sam_encoder = ImageEncoderViT::new(&cfg.sam_encoder, ge.pp("image_encoder"))?;
        let prompt_encoder = PromptEncoder::new(&cfg.sam_prompt_encoder, ge.pp("prompt_encoder"))?;
        let mask_decoder = MaskDecoder::new(
            &cfg.sam_mask_decoder,
            tm.pp("grounding_encoder").pp("mask_decoder"),
        )?;
        Ok(Self {
            cfg: cfg.clone(),
            special,
            format: PromptFormat::vicuna_v1(cfg.image_tokens()),
            vision,
            qformer,
            cem,
            llm,
            cams,
            text_fc1,
            text_fc2,
            sam_encoder,
            prompt_encoder,
            mask_decoder,
            feature_cache: None,
            fingerprint: serde_json::to_string(cfg).unwrap_or_default(),
            global_frozen: std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false)),
            sam_frozen: std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false)),
        })
    }

    /// Declares the global branch's encoders (EVA, DINOv2, the Q-Former's
    /// pass over EVA's tokens) frozen, or not: while frozen their outputs
    /// are detached, so backward passes stop there instead of computing
    /// gradients nobody applies. The trainer sets it for the steps where
    /// `freeze` holds all their variables (stage 2 of `tiny`'s staged
    /// recipe). The CAMs' own Q-Former passes are not affected. Clones
    /// of the model share the setting.
    pub fn set_global_encoders_frozen(&self, frozen: bool) {
        self.global_frozen
            .store(frozen, std::sync::atomic::Ordering::SeqCst);
    }

    /// Declares SAM's image encoder frozen, or not: while frozen its image
    /// embeddings are detached, as the paper's recipe holds it (only the
    /// prompt encoder and mask decoder train). The trainer sets it for the
    /// steps where `freeze` holds all its variables. Clones of the model
    /// share the setting.
    pub fn set_sam_encoder_frozen(&self, frozen: bool) {
        self.sam_frozen
            .store(frozen, std::sync::atomic::Ordering::SeqCst);
    }

    /// Uses `cache` for the frozen encoders' outputs (only while EVA,
    /// DINOv2, the Q-Former and the SAM image encoder are frozen).
    ///
    /// The cache keys then cover the encoders' weights too, not only the
    /// config: the encoders run once on a fixed probe image and their
    /// outputs join the fingerprint, so a cache directory shared between
    /// runs never serves features made by other weights of the same config.
    pub fn set_feature_cache(
        &mut self,
        cache: Option<std::sync::Arc<cache::FeatureCache>>,
    ) -> Result<()> {
        let config = serde_json::to_string(&self.cfg).unwrap_or_default();
        // Only the Calico path reads the cache (the baselines' CLIP path
        // has no cached features).
        let calico_path = matches!(self.vision, VisionPath::Calico { .. });
        self.fingerprint = match &cache {
            Some(c) if calico_path => {
                let probe = vision::ImageInput::from_image(&self.cfg, &cache::probe_image()?)?;
                let features = self.frozen_features(&[&probe])?;
                // Entries read back must have the probe's layout.
                c.expect_layout(&features);
                let weights = cache::FeatureCache::digest(&features)?;
                format!("{config}|weights {weights}")
            }
            _ => config,
        };
        self.feature_cache = cache;
        Ok(())
    }

    /// A randomly initialised model for tests and smoke runs (any preset;
    /// meant for `tiny`). Trainable tensors are created in `trainable`,
    /// frozen ones are plain tensors (not variables; returned by name).
    ///
    /// Candle's CPU generator cannot be seeded, so frozen tensors come from a
    /// [`SeededBackend`] and the trainable variables are overwritten after
    /// the build ([`seeded_fill`] with [`FillMode::KeepConstants`]); both
    /// draw from a ChaCha generator seeded by `seed` and the tensor's name:
    /// tensors
    /// created constant (LayerNorm weights 1, biases 0, the zero-initialised
    /// CAM/CEM output projections and LoRA `B`) keep their value; the others
    /// get N(0, 1/fan_in). The same seed gives the same weights for every
    /// tensor name, whatever else the config builds.
    pub fn random(
        cfg: &CalicoConfig,
        special: SpecialIds,
        trainable: &VarMap,
        seed: u64,
        device: &Device,
    ) -> Result<(Self, std::collections::HashMap<String, Tensor>)> {
        let dtype = candle_core::DType::F32;
        let backend = SeededBackend::new(seed);
        insert_sam_rel_pos(&backend, cfg, device)?;
        let model = Self::new(
            cfg,
            VarBuilder::from_backend(Box::new(backend.clone()), dtype, device.clone()),
            VarBuilder::from_varmap(trainable, dtype, device),
            special,
        )?;
        seeded_fill(trainable, seed, FillMode::KeepConstants)?;
        let frozen = backend.tensors()?;
        Ok((model, frozen))
    }

    pub fn config(&self) -> &CalicoConfig {
        &self.cfg
    }

    pub fn special_ids(&self) -> &SpecialIds {
        &self.special
    }

    /// The prompt layout used by [`Calico::generate`] (default: Vicuna v1
    /// with `<im_start>`/`<im_end>` and `cfg.image_tokens()` slots).
    pub fn prompt_format(&self) -> &PromptFormat {
        &self.format
    }

    /// Replaces the prompt layout (the slot count must stay
    /// `cfg.image_tokens()`).
    pub fn set_prompt_format(&mut self, format: PromptFormat) -> Result<()> {
        if format.tokens_per_image != self.cfg.image_tokens() {
            candle_core::bail!(
                "prompt format has {} slots per image, the model makes {} visual tokens",
                format.tokens_per_image,
                self.cfg.image_tokens()
            );
        }
        self.format = format;
        Ok(())
    }

    pub fn llm(&self) -> &Llama {
        &self.llm
    }

    /// Grows the LLM vocabulary for the added special tokens; with
    /// `trainable` the new rows are variables in that map
    /// (`model.embed_tokens.added_weight`, `lm_head.added_weight`).
    pub fn resize_token_embeddings(
        &mut self,
        new_vocab_size: usize,
        trainable: Option<&VarMap>,
    ) -> Result<()> {
        self.llm.resize_token_embeddings(new_vocab_size, trainable)
    }

    /// See [`Llama::detach_added_rows`].
    pub(crate) fn detach_added_rows(&mut self) {
        self.llm.detach_added_rows()
    }

    /// f_segmentation: `(n, D)` `[SEG]` hidden states → `(n, 256)` prompts.
    pub fn text_hidden_fcs(&self, h: &Tensor) -> Result<Tensor> {
        self.text_fc2.forward(&self.text_fc1.forward(h)?.relu()?)
    }
}
