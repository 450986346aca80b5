//! The vision module: EVA → (CEM) → Q-Former → f_image (or, for the
//! baselines, CLIP ViT → `mm_projector`), and the SAM image encoder, for a
//! set of images encoded together.

use candle_core::{Result, Tensor};

use super::cache::{FeatureCache, FrozenFeatures};
use super::{Calico, VisionPath};
use crate::preprocess::Preprocessed;

/// One input image in the three views the encoders take.
#[derive(Debug, Clone)]
pub struct ImageInput {
    /// EVA-CLIP view, `(3, S, S)` with S = `eva_vit.image_size`; for the
    /// baselines the CLIP view at the CLIP tower's side
    /// (`cfg.clip_view_size()`).
    pub clip: Tensor,
    /// DINOv2 view, `(3, h, w)` (multiples of the DINOv2 patch); read only
    /// when the CEM exists (any tensor otherwise).
    pub dino: Tensor,
    /// SAM view, `(3, S, S)` with S = `sam_encoder.img_size` (padded).
    pub sam: Tensor,
    /// Size `(h, w)` of the image inside the SAM view before padding.
    pub sam_resized: (usize, usize),
    /// Size `(h, w)` of the original image (masks are returned at it).
    pub original: (usize, usize),
}

impl ImageInput {
    /// An 8-bit RGB image in the three views `cfg.views` describes.
    pub fn from_image(
        cfg: &crate::config::CalicoConfig,
        img: &crate::preprocess::RgbImage,
    ) -> Result<Self> {
        Ok(Self::from_views(
            &cfg.views.clip.apply(img)?,
            &cfg.views.dino.apply(img)?,
            &cfg.views.sam.apply(img)?,
        ))
    }

    /// From the three preprocessed views of one image.
    pub fn from_views(clip: &Preprocessed, dino: &Preprocessed, sam: &Preprocessed) -> Self {
        Self {
            clip: clip.pixels.clone(),
            dino: dino.pixels.clone(),
            sam: sam.pixels.clone(),
            sam_resized: sam.resized,
            original: sam.original,
        }
    }
}

/// One encoded image.
#[derive(Debug, Clone)]
pub struct EncodedImage {
    /// The image's LLM input tokens I⁰_i (after f_image), `(S_I, D)`.
    pub visual_tokens: Tensor,
    /// X′_global,i, the (CEM-fused) EVA tokens the CAMs read, `(1, 1 + N, D_g)`;
    /// for the baselines the selected CLIP features `(1, N, D_clip)`.
    pub x_global_prime: Tensor,
    /// X_ground,i, SAM image embeddings `(1, C, g, g)`.
    pub sam_embeddings: Tensor,
}

impl EncodedImage {
    /// The same features without the computation that made them: a
    /// result of variables (trained modules) keeps every intermediate
    /// activation of the encoders alive while it lives. Answering is never
    /// differentiated, so [`Calico::generate`] (and a server answering
    /// with [`Calico::answer_from_ids`]) keeps the detached features.
    pub fn detach(&self) -> Self {
        Self {
            visual_tokens: self.visual_tokens.detach(),
            x_global_prime: self.x_global_prime.detach(),
            sam_embeddings: self.sam_embeddings.detach(),
        }
    }
}

/// What [`Calico::global_features`] returns.
#[derive(Debug, Clone)]
pub struct GlobalFeatures {
    /// X_global = ln_vision(EVA(x)), `(n, 1 + N, D_g)`.
    pub x_global: Tensor,
    /// The first Q-Former pass, `(n, Q, D_q)`, when the Q-Former runs.
    pub qformer: Option<Tensor>,
    /// DINOv2 patch tokens, `(n, N_s, D_s)`, when the CEM runs.
    pub x_semantic: Option<Tensor>,
}

fn stack_view(images: &[&ImageInput], pick: fn(&ImageInput) -> &Tensor) -> Result<Tensor> {
    let views: Vec<Tensor> = images.iter().map(|i| pick(i).clone()).collect();
    Tensor::stack(&views, 0)
}

impl Calico {
    /// Encodes images (all in one batch per encoder).
    pub fn encode_images(&self, images: &[&ImageInput]) -> Result<Vec<EncodedImage>> {
        if images.is_empty() {
            return Ok(Vec::new());
        }
        let dev = self.llm.device();
        let se = self.cfg.clip_view_size();
        let tower = match self.vision {
            VisionPath::Calico { .. } => "EVA",
            VisionPath::Clip(_) => "CLIP",
        };
        let ss = self.cfg.sam_encoder.img_size;
        for (i, im) in images.iter().enumerate() {
            if im.clip.dims() != [3, se, se] {
                candle_core::bail!(
                    "image {i}: the {tower} view must be (3, {se}, {se}), got {:?}",
                    im.clip.dims()
                );
            }
            if im.sam.dims() != [3, ss, ss] {
                candle_core::bail!(
                    "image {i}: the SAM view must be (3, {ss}, {ss}), got {:?}",
                    im.sam.dims()
                );
            }
            if self.cem.is_some() && (im.dino.rank() != 3 || im.dino.dim(0)? != 3) {
                candle_core::bail!(
                    "image {i}: the DINOv2 view must be (3, h, w), got {:?}",
                    im.dino.dims()
                );
            }
        }
        let dtype = self.llm.dtype();
        let stacked = |pick: fn(&ImageInput) -> &Tensor, of: &[&ImageInput]| -> Result<Tensor> {
            stack_view(of, pick)?.to_device(dev)?.to_dtype(dtype)
        };
        let (visual, x_prime, ground) = match &self.vision {
            VisionPath::Calico { eva, f_image } => {
                let frozen = match &self.feature_cache {
                    None => self.frozen_batch(images, eva)?,
                    Some(cache) => {
                        let keys: Vec<String> = images
                            .iter()
                            .map(|im| FeatureCache::key(&self.fingerprint, im))
                            .collect::<Result<_>>()?;
                        let mut found: Vec<Option<FrozenFeatures>> =
                            keys.iter().map(|k| cache.get(k, dev)).collect();
                        let missing: Vec<usize> =
                            (0..images.len()).filter(|&i| found[i].is_none()).collect();
                        if !missing.is_empty() {
                            let sub: Vec<&ImageInput> =
                                missing.iter().map(|&i| images[i]).collect();
                            let f = self.frozen_batch(&sub, eva)?;
                            for (j, &i) in missing.iter().enumerate() {
                                let one = f.row(j)?;
                                cache.put(&keys[i], &one);
                                found[i] = Some(one);
                            }
                        }
                        let rows: Vec<FrozenFeatures> = found.into_iter().flatten().collect();
                        FrozenFeatures::stack(&rows)?
                    }
                };
                let (visual, x_prime) = self.encode_calico(&frozen, f_image)?;
                (visual, x_prime, frozen.sam)
            }
            VisionPath::Clip(b) => {
                let (feats, tokens) = b.forward(&stacked(|i| &i.clip, images)?)?;
                let ground = self.sam_embed(&stacked(|i| &i.sam, images)?)?;
                (tokens, feats, ground)
            }
        };
        (0..images.len())
            .map(|i| {
                Ok(EncodedImage {
                    visual_tokens: visual.get(i)?,
                    x_global_prime: x_prime.narrow(0, i, 1)?,
                    sam_embeddings: ground.narrow(0, i, 1)?,
                })
            })
            .collect()
    }

    /// The frozen encoders on a batch of images (EVA + `ln_vision`,
    /// DINOv2 when the CEM runs, the first Q-Former pass, the SAM image
    /// encoder); batch dimension first.
    pub fn frozen_features(&self, images: &[&ImageInput]) -> Result<FrozenFeatures> {
        match &self.vision {
            VisionPath::Calico { eva, .. } => self.frozen_batch(images, eva),
            VisionPath::Clip(_) => {
                candle_core::bail!("the baselines' CLIP path has no cached features")
            }
        }
    }

    fn frozen_batch(
        &self,
        images: &[&ImageInput],
        eva: &crate::eva_vit::EvaVit,
    ) -> Result<FrozenFeatures> {
        let (x_global, x_semantic, qformer) = self.global_batch(images, eva)?;
        let sam = self.sam_embed(&self.stack_on_device(images, |i| &i.sam)?)?;
        Ok(FrozenFeatures {
            x_global,
            x_semantic,
            qformer,
            sam,
        })
    }

    /// SAM's image encoder on a batch of SAM views, detached while it is
    /// frozen ([`Calico::set_sam_encoder_frozen`]).
    fn sam_embed(&self, pixels: &Tensor) -> Result<Tensor> {
        let embeddings = self.sam_encoder.forward(pixels)?;
        if self.sam_frozen.load(std::sync::atomic::Ordering::SeqCst) {
            return Ok(embeddings.detach());
        }
        Ok(embeddings)
    }

    fn stack_on_device(
        &self,
        images: &[&ImageInput],
        pick: fn(&ImageInput) -> &Tensor,
    ) -> Result<Tensor> {
        stack_view(images, pick)?
            .to_device(self.llm.device())?
            .to_dtype(self.llm.dtype())
    }

    /// EVA + `ln_vision` (X_global), the DINOv2 patch tokens when the CEM
    /// runs, and the first Q-Former pass, batch dimension first.
    fn global_batch(
        &self,
        images: &[&ImageInput],
        eva: &crate::eva_vit::EvaVit,
    ) -> Result<(Tensor, Option<Tensor>, Option<Tensor>)> {
        // X_global = ln_vision(𝒞(X)), (n, 1 + N, D_g).
        let x_global = eva
            .forward(&self.stack_on_device(images, |i| &i.clip)?)?
            .last_hidden_state;
        let x_semantic = match &self.cem {
            Some((dino, _)) => {
                let pixels = self.stack_on_device(images, |i| &i.dino)?;
                let mut h = dino.forward_to_layer(&pixels, self.cfg.dinov2_layer)?;
                if self.cfg.dinov2_final_norm {
                    h = dino.final_norm(&h)?;
                }
                Some(dino.patch_tokens(&h)?)
            }
            None => None,
        };
        let qformer = match &self.qformer {
            Some((q, tokens)) => Some(q.forward(tokens, &x_global, None)?),
            None => None,
        };
        if self.global_frozen.load(std::sync::atomic::Ordering::SeqCst) {
            return Ok((
                x_global.detach(),
                x_semantic.map(|x| x.detach()),
                qformer.map(|q| q.detach()),
            ));
        }
        Ok((x_global, x_semantic, qformer))
    }

    /// The encoders of the global branch alone (no SAM), for pretraining
    /// them, batch dimension first. Errors for the baselines' CLIP path.
    pub fn global_features(&self, images: &[&ImageInput]) -> Result<GlobalFeatures> {
        match &self.vision {
            VisionPath::Calico { eva, .. } => {
                let (x_global, x_semantic, qformer) = self.global_batch(images, eva)?;
                Ok(GlobalFeatures {
                    x_global,
                    qformer,
                    x_semantic,
                })
            }
            VisionPath::Clip(_) => {
                candle_core::bail!("the baselines' CLIP path has no global branch to pretrain")
            }
        }
    }

    /// EVA's convolutional stem, when the config has one
    /// (`eva_vit.conv_stem`).
    pub fn eva_stem(&self) -> Option<&crate::conv_stem::ConvStem> {
        match &self.vision {
            VisionPath::Calico { eva, .. } => eva.stem(),
            VisionPath::Clip(_) => None,
        }
    }

    /// SAM's convolutional stem, when the config has one
    /// (`sam_encoder.conv_stem`).
    pub fn sam_stem(&self) -> Option<&crate::conv_stem::ConvStem> {
        self.sam_encoder.stem()
    }

    /// SAM's image encoder alone on a batch: `(n, C, h, w)` embeddings.
    pub fn sam_features(&self, images: &[&ImageInput]) -> Result<Tensor> {
        self.sam_encoder
            .forward(&self.stack_on_device(images, |i| &i.sam)?)
    }

    /// Calico's trainable path on frozen features: `(visual tokens, X′_global)`.
    fn encode_calico(
        &self,
        frozen: &FrozenFeatures,
        f_image: &calico_nn::Linear,
    ) -> Result<(Tensor, Tensor)> {
        let x_global = &frozen.x_global;
        // X′_global = X_global + 𝒜(X_global, X_semantic).
        let x_prime = match (&self.cem, &frozen.x_semantic) {
            (Some((_, cem)), Some(x_semantic)) => cem.forward(x_global, x_semantic)?,
            _ => x_global.clone(),
        };
        let embeds = match &frozen.qformer {
            Some(q) => q.clone(),
            None => x_prime.clone(),
        };
        let visual = f_image.forward(&embeds)?;
        Ok((visual, x_prime))
    }
}
