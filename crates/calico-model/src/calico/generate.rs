//! Answering a question: generation with the KV cache (CAM on the prefill
//! pass), then masks for the generated `[SEG]`s.
//!
//! After generation, one teacher-forced pass over prompt + generated ids
//! (with the CAM hook, as in training) gives the hidden states at the `[SEG]`
//! positions. This equals the states the cached generation computed: the
//! CAMs only change the image spans, which lie in the prompt, and attention
//! is causal — so the extra pass is the simplest correct way to read them
//! (the cached loop only keeps logits).
//!
//! Generation stops at `eos`, at `max_new_tokens`, or when the context
//! (`max_position_embeddings`) is full. `[SEG]`s without a valid `(IMAGEk)`
//! tag get no mask; their positions are reported in [`Answer::unrouted`].

use candle_core::{Result, Tensor};
use rand::RngCore;

use super::vision::{EncodedImage, ImageInput};
use super::Calico;
use crate::llama::{generate as llm_generate, GenerateOptions};
use crate::prompt::{build, route_seg_tokens_lenient, PromptLayout, SegRoute, TextEncoder};
use crate::sam::postprocess::{binarize, postprocess_masks};

/// One predicted mask.
#[derive(Debug, Clone)]
pub struct SegMask {
    /// Position of the `[SEG]` in the full sequence (prompt + answer).
    pub position: usize,
    /// 0-based image index from its `(IMAGEk)` tag.
    pub image: usize,
    /// The `<p> … </p>` phrase just before the `[SEG]` (after the previous
    /// `[SEG]`), trimmed.
    pub phrase: Option<String>,
    /// Mask logits at the image's original size, `(H, W)`.
    pub logits: Tensor,
    /// Binary mask (logit > 0), `(H, W)` u8.
    pub mask: Tensor,
}

/// What [`Calico::generate`] returns.
#[derive(Debug, Clone)]
pub struct Answer {
    /// The answer with special tokens spelled out (`[SEG]`, `<p>`, `</p>`),
    /// without the end-of-sequence token.
    pub text: String,
    /// The generated ids (including `eos` when produced).
    pub token_ids: Vec<u32>,
    /// One per routed `[SEG]`, in order.
    pub masks: Vec<SegMask>,
    /// Positions of `[SEG]`s without a valid image tag.
    pub unrouted: Vec<usize>,
}

impl Calico {
    /// Builds the generation prompt for `question` (with one `<image>` per
    /// image); errors clearly when it exceeds the context.
    pub fn prompt(
        &self,
        question: &str,
        n_images: usize,
        tok: &dyn TextEncoder,
    ) -> Result<PromptLayout> {
        build(
            question,
            None,
            n_images,
            tok,
            &self.special,
            &self.format,
            self.cfg.llm.max_position_embeddings,
        )
        .map_err(|e| candle_core::Error::Msg(e.to_string()))
    }

    /// Answers `question` about `images` (greedy or sampled per `opts`;
    /// `eos` is added to `opts.eos`); see the module docs.
    pub fn generate(
        &self,
        question: &str,
        images: &[ImageInput],
        tok: &dyn TextEncoder,
        opts: &GenerateOptions,
        rng: Option<&mut dyn RngCore>,
    ) -> Result<Answer> {
        let layout = self.prompt(question, images.len(), tok)?;
        let refs: Vec<&ImageInput> = images.iter().collect();
        let encoded: Vec<EncodedImage> = self
            .encode_images(&refs)?
            .iter()
            .map(EncodedImage::detach)
            .collect();
        let enc: Vec<&EncodedImage> = encoded.iter().collect();
        let embeds = self
            .interleave(&layout.input_ids, &layout.image_spans, &enc)?
            .unsqueeze(0)?;
        let limit = self.cfg.llm.max_position_embeddings;
        let mut opts = opts.clone();
        opts.max_new_tokens = opts
            .max_new_tokens
            .min(limit.saturating_sub(layout.input_ids.len()));
        if !opts.eos.contains(&self.special.eos) {
            opts.eos.push(self.special.eos);
        }
        let new_ids = if opts.max_new_tokens == 0 {
            Vec::new()
        } else {
            let mut hook = super::forward::CamHook {
                model: self,
                rows: vec![Self::cam_row(&layout, &enc)],
            };
            let embeds = match hook.apply_before(0, &embeds)? {
                Some(e) => e,
                None => embeds,
            };
            llm_generate(&self.llm, &embeds, &opts, Some(&mut hook), rng)?
        };
        self.answer_from_ids(&layout, &new_ids, images, &encoded, tok)
    }

    /// The post-generation half of [`Calico::generate`]: given the prompt
    /// layout, the generated ids and the encoded images, runs the
    /// teacher-forced pass, routes the `[SEG]`s and decodes their masks at
    /// the images' original sizes.
    pub fn answer_from_ids(
        &self,
        layout: &PromptLayout,
        new_ids: &[u32],
        images: &[ImageInput],
        encoded: &[EncodedImage],
        tok: &dyn TextEncoder,
    ) -> Result<Answer> {
        let mut ids = layout.input_ids.clone();
        ids.extend_from_slice(new_ids);
        let limit = self.cfg.llm.max_position_embeddings;
        if ids.len() > limit {
            candle_core::bail!(
                "prompt and answer need {} tokens but the model's context holds {limit}",
                ids.len()
            );
        }
        let enc: Vec<&EncodedImage> = encoded.iter().collect();
        let (routes, unrouted) =
            route_seg_tokens_lenient(&ids, layout.answer_start, &self.special, tok, images.len());
        let mut masks = Vec::with_capacity(routes.len());
        if !routes.is_empty() {
            let embeds = self
                .interleave(&ids, &layout.image_spans, &enc)?
                .unsqueeze(0)?;
            let mut hook = super::forward::CamHook {
                model: self,
                rows: vec![Self::cam_row(layout, &enc)],
            };
            // Detached: the masks need the hidden states, not the
            // LLM's activations that made them.
            let hidden = self.run_llm(&embeds, None, &mut hook, None)?.detach();
            let low = self.decode_seg_masks(&hidden.get(0)?, &routes, &enc)?;
            for (r, m) in routes.iter().zip(low) {
                let img = &images[r.image];
                let full = postprocess_masks(
                    &m.unsqueeze(0)?,
                    self.cfg.sam_encoder.img_size,
                    img.sam_resized,
                    img.original,
                )?
                .squeeze(0)?
                .squeeze(0)?
                .detach();
                masks.push(SegMask {
                    position: r.position,
                    image: r.image,
                    phrase: self.phrase_before(&ids, r, layout.answer_start, tok),
                    mask: binarize(&full)?,
                    logits: full,
                });
            }
        }
        Ok(Answer {
            text: self.render(new_ids, tok),
            token_ids: new_ids.to_vec(),
            masks,
            unrouted,
        })
    }

    /// The `<p> … </p>` text a `[SEG]` grounds: the phrase before it, or
    /// before the chain of `[SEG] (IMAGEk)` it ends (`<p> the leg </p> [SEG]
    /// (IMAGE1) [SEG] (IMAGE2)` gives both masks "the leg"); any other text
    /// between the phrase and the `[SEG]` means it has none.
    fn phrase_before(
        &self,
        ids: &[u32],
        route: &SegRoute,
        from: usize,
        tok: &dyn TextEncoder,
    ) -> Option<String> {
        let s = &self.special;
        let mut close = None;
        let mut chain_end = route.position;
        for p in (from..route.position).rev() {
            if ids[p] == s.seg {
                // Only an image tag may separate chained [SEG]s.
                let tag = tok.decode_plain(&ids[p + 1..chain_end]);
                let tag = tag.trim();
                let is_tag = tag
                    .strip_prefix(calico_text::tokens::IMAGE_TAG_PREFIX)
                    .and_then(|r| r.strip_suffix(')'))
                    .is_some_and(|k| !k.is_empty() && k.bytes().all(|b| b.is_ascii_digit()));
                if close.is_some() || !is_tag {
                    return None;
                }
                chain_end = p;
                continue;
            }
            if ids[p] == s.p_close && close.is_none() {
                close = Some(p);
            }
            if ids[p] == s.p_open {
                let c = close?;
                return Some(tok.decode_plain(&ids[p + 1..c]).trim().to_string());
            }
        }
        None
    }

    /// Decodes ids with the added tokens spelled out and `eos` dropped.
    fn render(&self, ids: &[u32], tok: &dyn TextEncoder) -> String {
        use calico_text::tokens::{IMAGE, IM_END, IM_START, P_CLOSE, P_OPEN, SEG};
        let s = &self.special;
        let mut text = String::new();
        let mut run: Vec<u32> = Vec::new();
        for &id in ids {
            let special = if id == s.seg {
                Some(SEG)
            } else if id == s.p_open {
                Some(P_OPEN)
            } else if id == s.p_close {
                Some(P_CLOSE)
            } else if id == s.image {
                Some(IMAGE)
            } else if id == s.im_start {
                Some(IM_START)
            } else if id == s.im_end {
                Some(IM_END)
            } else if id == s.eos || s.bos == Some(id) {
                Some("")
            } else {
                None
            };
            match special {
                Some(sp) => {
                    text.push_str(&tok.decode_plain(&run));
                    run.clear();
                    text.push_str(sp);
                }
                None => run.push(id),
            }
        }
        text.push_str(&tok.decode_plain(&run));
        text.trim().to_string()
    }
}
