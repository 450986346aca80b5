//! The teacher-forced forward pass (training and the post-generation mask
//! pass): interleaved embeddings, the LLM with the CAM hook, and the
//! `[SEG]` → mask path.
//!
//! Choices:
//! * **CAM placement.** A CAM for layer `l` updates the *input* of layer `l`
//!   (VPG-C applies its update in the layer loop when `idx == update_layer`,
//!   before that layer runs). With the LLM's after-layer hook this is the
//!   output of layer `l − 1`; a CAM at layer 0 is applied to the input
//!   embeddings. t^l is the hidden state at `last_instruction` (the `:` of
//!   `ASSISTANT:`) of that same tensor.
//! * **CAM per sample.** Each batch row runs its own CAM update with its own
//!   images (samples may have different image counts); rows without images
//!   are left unchanged.
//! * **`[SEG]` hidden state.** LISA/GLaMM select
//!   `hidden[:, :-1][input_ids[:, 1:] == seg]` (anchors §2.3): the last
//!   layer's (final-norm) hidden state at position `p − 1` for a `[SEG]` at
//!   position `p`, i.e. the state that predicts `[SEG]`. We do the same.
//! * **Padding.** Rows are right-padded with zero embeddings and an
//!   attention mask (positions follow the mask, so each row's result does
//!   not depend on the padding); logits at padded positions are garbage and
//!   must be ignored (their labels are `IGNORE_INDEX` in a loss).
//! * **Mask decoding.** All `[SEG]`s of one image go through the SAM decoder
//!   together (text prompt = one sparse token each, dense = `no_mask_embed`,
//!   single-mask output as LISA); the results are returned in `[SEG]` order.

use candle_core::{DType, Result, Tensor};
use rand::RngCore;

use super::vision::{EncodedImage, ImageInput};
use super::Calico;
use crate::cam::Span;
use crate::llama::{ForwardOptions, LayerHook};
use crate::prompt::{route_seg_tokens, PromptLayout, SegRoute, TextEncoder};

/// A batch of conversations with their images.
#[derive(Debug, Clone)]
pub struct TrainBatch {
    pub layouts: Vec<PromptLayout>,
    /// Per sample, its images in order (as many as the layout's spans).
    pub images: Vec<Vec<ImageInput>>,
}

/// What [`Calico::forward`] returns.
#[derive(Debug, Clone)]
pub struct ForwardOutput {
    /// `(B, T_max, vocab)`, right-padded.
    pub logits: Tensor,
    /// `(B, T_max)` keep-mask (1 = token, 0 = padding), f32.
    pub attention_mask: Tensor,
    /// Per sample, per routed `[SEG]` in order: low-resolution mask logits
    /// `(1, h, w)` (h = w = 4 × the SAM grid).
    pub mask_logits: Vec<Vec<Tensor>>,
    /// Per sample, the routes (position, image) in the same order.
    pub seg_routes: Vec<Vec<SegRoute>>,
}

/// Per batch row: what a CAM needs.
pub(crate) struct CamRow {
    pub last_instruction: usize,
    pub spans: Vec<Span>,
    pub x_global: Vec<Tensor>,
}

/// The LLM layer hook that applies the CAMs (see the module docs).
pub(crate) struct CamHook<'a> {
    pub model: &'a Calico,
    pub rows: Vec<CamRow>,
}

impl CamHook<'_> {
    /// Applies the CAM feeding `layer` (if any) to `hidden` `(B, T, D)`.
    pub fn apply_before(&self, layer: usize, hidden: &Tensor) -> Result<Option<Tensor>> {
        let (cams, (qformer, queries)) = match (&self.model.cams, &self.model.qformer) {
            (Some(c), Some(q)) => (c, q),
            _ => return Ok(None),
        };
        let cam = match cams.get(layer) {
            Some(c) => c,
            None => return Ok(None),
        };
        let b = hidden.dim(0)?;
        if b != self.rows.len() {
            candle_core::bail!(
                "CAM hook: hidden states have batch {b}, the hook was built for {}",
                self.rows.len()
            );
        }
        let mut out = Vec::with_capacity(b);
        for (i, row) in self.rows.iter().enumerate() {
            let h = hidden.narrow(0, i, 1)?;
            if row.spans.is_empty() {
                out.push(h);
                continue;
            }
            out.push(cam.apply(
                &h,
                &[row.last_instruction],
                std::slice::from_ref(&row.spans),
                &row.x_global,
                qformer,
                queries,
            )?);
        }
        Ok(Some(Tensor::cat(&out, 0)?))
    }
}

impl LayerHook for CamHook<'_> {
    fn after_layer(&mut self, layer: usize, hidden_states: &Tensor) -> Result<Option<Tensor>> {
        self.apply_before(layer + 1, hidden_states)
    }
}

impl Calico {
    /// `(T, D)` embeddings of one sequence with each image span replaced by
    /// that image's visual tokens (built with `cat`, so differentiable).
    pub(crate) fn interleave(
        &self,
        input_ids: &[u32],
        spans: &[std::ops::Range<usize>],
        images: &[&EncodedImage],
    ) -> Result<Tensor> {
        if spans.len() != images.len() {
            candle_core::bail!(
                "the prompt has {} image spans but {} images were given",
                spans.len(),
                images.len()
            );
        }
        let dev = self.llm.device();
        let ids = Tensor::new(input_ids, dev)?.unsqueeze(0)?;
        let emb = self.llm.embed(&ids)?.squeeze(0)?;
        let t = input_ids.len();
        let mut pieces = Vec::new();
        let mut at = 0;
        for (span, img) in spans.iter().zip(images) {
            let n = img.visual_tokens.dim(0)?;
            if span.start < at || span.end > t || span.len() != n {
                candle_core::bail!(
                    "image span {span:?} does not fit a sequence of {t} tokens with {n} visual tokens per image (spans must be ordered)"
                );
            }
            if span.start > at {
                pieces.push(emb.narrow(0, at, span.start - at)?);
            }
            pieces.push(img.visual_tokens.to_dtype(emb.dtype())?);
            at = span.end;
        }
        if at < t {
            pieces.push(emb.narrow(0, at, t - at)?);
        }
        Tensor::cat(&pieces, 0)
    }

    pub(crate) fn cam_row(layout: &PromptLayout, images: &[&EncodedImage]) -> CamRow {
        CamRow {
            last_instruction: layout.last_instruction,
            spans: layout
                .image_spans
                .iter()
                .map(|s| (s.start, s.end))
                .collect(),
            x_global: images.iter().map(|i| i.x_global_prime.clone()).collect(),
        }
    }

    /// Runs the LLM over `(B, T, D)` embeddings with the CAM hook; returns
    /// its final-norm hidden states. No logits: the post-generation mask
    /// pass reads none (for SmolLM2 they cost `T × 49,152` products).
    pub(crate) fn run_llm(
        &self,
        embeds: &Tensor,
        mask: Option<&Tensor>,
        hook: &mut CamHook,
        rng: Option<&mut dyn RngCore>,
    ) -> Result<Tensor> {
        let embeds = match hook.apply_before(0, embeds)? {
            Some(e) => e,
            None => embeds.clone(),
        };
        let out = self.llm.forward_embeds(
            &embeds,
            ForwardOptions {
                attention_mask: mask,
                hook: Some(hook as &mut dyn LayerHook),
                rng: rng.map(|r| r as &mut dyn RngCore),
                ..Default::default()
            },
        )?;
        Ok(out.last_hidden_state)
    }

    /// Masks for one sequence: `hidden` `(T, D)` final hidden states,
    /// `routes` its routed `[SEG]`s, `images` its encoded images. Returns
    /// `(1, h, w)` low-resolution logits per route, in route order.
    pub(crate) fn decode_seg_masks(
        &self,
        hidden: &Tensor,
        routes: &[SegRoute],
        images: &[&EncodedImage],
    ) -> Result<Vec<Tensor>> {
        let mut out: Vec<Option<Tensor>> = vec![None; routes.len()];
        for (i, img) in images.iter().enumerate() {
            let mine: Vec<usize> = (0..routes.len())
                .filter(|&r| routes[r].image == i)
                .collect();
            if mine.is_empty() {
                continue;
            }
            let mut rows = Vec::with_capacity(mine.len());
            for &r in &mine {
                let p = routes[r].position;
                if p == 0 {
                    candle_core::bail!("[SEG] at position 0 has no preceding hidden state");
                }
                rows.push(hidden.get(p - 1)?);
            }
            let h = Tensor::stack(&rows, 0)?;
            let prompts = self.text_hidden_fcs(&h)?.unsqueeze(1)?; // (n, 1, C)
            let masks = self.decode_prompted_masks(&img.sam_embeddings, &prompts)?;
            for (k, &r) in mine.iter().enumerate() {
                out[r] = Some(masks.get(k)?);
            }
        }
        for (r, m) in out.iter().enumerate() {
            if m.is_none() {
                candle_core::bail!(
                    "[SEG] at position {} is routed to image {} of {}",
                    routes[r].position,
                    routes[r].image + 1,
                    images.len()
                );
            }
        }
        Ok(out.into_iter().flatten().collect())
    }

    /// SAM's masks for prompts already in its prompt space: `embeddings`
    /// `(1, C, h, w)` one image's SAM image embeddings, `prompts` `(n, 1, C)`
    /// one sparse prompt each (what f_segmentation makes of a `[SEG]`).
    /// Returns `(n, 1, lh, lw)` low-resolution logits.
    pub fn decode_prompted_masks(&self, embeddings: &Tensor, prompts: &Tensor) -> Result<Tensor> {
        let (sparse, dense) = self.prompt_encoder.forward_text(prompts)?;
        let pe = self.prompt_encoder.get_dense_pe()?;
        let (masks, _iou) = self.mask_decoder.forward(
            embeddings,
            &pe,
            &sparse.to_dtype(embeddings.dtype())?,
            &dense.to_dtype(embeddings.dtype())?,
            false,
        )?;
        Ok(masks)
    }

    /// The teacher-forced forward pass of a batch (see the module docs).
    /// `tok` decodes the text after each `[SEG]` to read its `(IMAGEk)` tag
    /// (strict: an untagged `[SEG]` in an answer is an error). `rng` enables
    /// LoRA dropout (training); `None` is evaluation.
    pub fn forward(
        &self,
        batch: &TrainBatch,
        tok: &dyn TextEncoder,
        rng: Option<&mut dyn RngCore>,
    ) -> Result<ForwardOutput> {
        let b = batch.layouts.len();
        if b == 0 || batch.images.len() != b {
            candle_core::bail!(
                "a batch needs at least one sample and one image list per sample ({} layouts, {} image lists)",
                b,
                batch.images.len()
            );
        }
        let limit = self.cfg.llm.max_position_embeddings;
        for (i, l) in batch.layouts.iter().enumerate() {
            if l.input_ids.is_empty() || l.input_ids.len() > limit {
                candle_core::bail!(
                    "sample {i} has {} tokens; the model's context holds 1 to {limit}",
                    l.input_ids.len()
                );
            }
        }
        let all: Vec<&ImageInput> = batch.images.iter().flatten().collect();
        let encoded = self.encode_images(&all)?;
        let mut per_sample: Vec<Vec<&EncodedImage>> = Vec::with_capacity(b);
        let mut at = 0;
        for imgs in &batch.images {
            per_sample.push(encoded[at..at + imgs.len()].iter().collect());
            at += imgs.len();
        }
        let t_max = batch
            .layouts
            .iter()
            .map(|l| l.input_ids.len())
            .max()
            .unwrap_or(0);
        let d = self.cfg.d_llm();
        let mut rows = Vec::with_capacity(b);
        let mut keep = Vec::with_capacity(b * t_max);
        for (l, imgs) in batch.layouts.iter().zip(&per_sample) {
            let e = self.interleave(&l.input_ids, &l.image_spans, imgs)?;
            let t = l.input_ids.len();
            let e = if t < t_max {
                let pad = Tensor::zeros((t_max - t, d), e.dtype(), e.device())?;
                Tensor::cat(&[&e, &pad], 0)?
            } else {
                e
            };
            rows.push(e);
            keep.extend((0..t_max).map(|i| if i < t { 1f32 } else { 0f32 }));
        }
        let embeds = Tensor::stack(&rows, 0)?;
        let attention_mask = Tensor::from_vec(keep, (b, t_max), embeds.device())?;
        let padded = batch.layouts.iter().any(|l| l.input_ids.len() < t_max);
        let mut hook = CamHook {
            model: self,
            rows: batch
                .layouts
                .iter()
                .zip(&per_sample)
                .map(|(l, imgs)| Self::cam_row(l, imgs))
                .collect(),
        };
        let hidden = self.run_llm(
            &embeds,
            if padded { Some(&attention_mask) } else { None },
            &mut hook,
            rng,
        )?;
        let logits = self.llm.logits(&hidden)?;
        let mut mask_logits = Vec::with_capacity(b);
        let mut seg_routes = Vec::with_capacity(b);
        for (i, (l, imgs)) in batch.layouts.iter().zip(&per_sample).enumerate() {
            let routes =
                route_seg_tokens(&l.input_ids, l.answer_start, &self.special, tok, imgs.len())
                    .map_err(|e| candle_core::Error::Msg(format!("sample {i}: {e}")))?;
            let h = hidden.get(i)?;
            mask_logits.push(self.decode_seg_masks(&h, &routes, imgs)?);
            seg_routes.push(routes);
        }
        Ok(ForwardOutput {
            logits,
            attention_mask: attention_mask.to_dtype(DType::F32)?,
            mask_logits,
            seg_routes,
        })
    }
}
