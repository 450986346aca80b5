//! Inference over samples: the question of each sample and its images →
//! generated answer and one mask per routed `[SEG]`, in the predictions
//! format `calico eval` reads (docs/metrics.md).

use calico_eval::predictions::{PredictedMask, Prediction};
use calico_masks::{CocoRle, Mask, Rle};
use calico_model::calico::{Answer, Calico};
use calico_model::llama::{GenerateOptions, Sampling};
use calico_model::prompt::TextEncoder;
use candle_core::Tensor;

use crate::data::Dataset;
use crate::TrainError;

/// Greedy decoding up to `max_new_tokens` (answers of SynthParts and
/// MixedParts stay under 250 tokens with the word-level tokenizer).
pub fn greedy(max_new_tokens: usize) -> GenerateOptions {
    GenerateOptions {
        max_new_tokens,
        eos: Vec::new(),
        sampling: Sampling::Greedy,
    }
}

/// A `(H, W)` u8 mask tensor as COCO RLE.
pub fn mask_rle(mask: &Tensor) -> Result<CocoRle, TrainError> {
    let (h, w) = mask.dims2()?;
    let data: Vec<u8> = mask.flatten_all()?.to_vec1()?;
    let m = Mask::from_row_major(h as u32, w as u32, &data)
        .map_err(|e| TrainError::Data(format!("mask of {h}x{w}: {e}")))?;
    Ok(CocoRle::from_rle(&Rle::encode(&m)))
}

/// The prediction record of a generated answer.
pub fn prediction(id: &str, answer: &Answer) -> Result<Prediction, TrainError> {
    let mut masks = Vec::with_capacity(answer.masks.len());
    for m in &answer.masks {
        masks.push(PredictedMask {
            image: m.image,
            label: m.phrase.clone().unwrap_or_default(),
            rle: mask_rle(&m.mask)?,
            score: 1.0,
        });
    }
    Ok(Prediction {
        id: id.to_string(),
        answer: answer.text.clone(),
        masks,
    })
}

/// Answers sample `index` of `ds` (its images in order, no augmentation).
pub fn predict_sample(
    model: &Calico,
    tok: &dyn TextEncoder,
    ds: &Dataset,
    index: usize,
    opts: &GenerateOptions,
) -> Result<(Prediction, Answer), TrainError> {
    let s = &ds.samples[index];
    let images = ds.images_of(index)?;
    let question = calico_text::templates::multi_image_prefix(images.len()) + &s.question;
    let answer = model.generate(&question, &images, tok, opts, None)?;
    Ok((prediction(&s.id, &answer)?, answer))
}
