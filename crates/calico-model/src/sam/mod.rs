//! Segment Anything (Kirillov et al. 2023) as LISA and GLaMM use it: the ViT
//! image encoder, the prompt encoder with the text-embedding sparse path,
//! the mask decoder, and post-processing. Tensor names are the original
//! SAM checkpoint's (`image_encoder.*`, `prompt_encoder.*`, `mask_decoder.*`),
//! so LISA's `model.visual_model.*` and GLaMM's `model.grounding_encoder.*`
//! subtrees load with a prefix.

pub mod image_encoder;
pub mod mask_decoder;
pub mod postprocess;
pub mod prompt_encoder;
pub mod transformer;

use std::collections::BTreeMap;

use candle_core::{Device, Tensor};

use crate::load::Checkpoint;
use crate::parity::Case;

pub fn parity_image_encoder(
    case: &Case,
    ckpt: &Checkpoint,
    device: &Device,
) -> candle_core::Result<BTreeMap<String, Tensor>> {
    image_encoder::parity_forward(case, ckpt, device)
}

pub fn parity_prompt_mask_decoder(
    case: &Case,
    ckpt: &Checkpoint,
    device: &Device,
) -> candle_core::Result<BTreeMap<String, Tensor>> {
    mask_decoder::parity_forward(case, ckpt, device)
}

pub fn parity_postprocess(
    case: &Case,
    ckpt: &Checkpoint,
    device: &Device,
) -> candle_core::Result<BTreeMap<String, Tensor>> {
    postprocess::parity_forward(case, ckpt, device)
}
