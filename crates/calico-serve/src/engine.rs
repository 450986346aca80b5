//! The model side of the server: loading (a weights directory or a seeded
//! random preset) and one segmentation request → answer + RLE masks.

use std::path::Path;
use std::time::Instant;

use calico_masks::{Mask, Rle};
use calico_model::calico::weights::{load_dir_for_answers, MissingFrozen};
use calico_model::calico::{Answer, Calico, ImageInput};
use calico_model::config::CalicoConfig;
use calico_model::llama::QuantizedMatmul;
use calico_model::preprocess::RgbImage;
use calico_model::prompt::{build, PromptFormat};
use calico_model::tokenizer::CalicoTokenizer;
use calico_text::templates::{self, Task};
use calico_text::tokens::{image_tag, ALL_SPECIAL, P_CLOSE, P_OPEN, SEG};
use candle_core::{Device, Tensor};
use rand::SeedableRng;
use serde::Serialize;

/// Seed of the generator that picks a task's question phrasing: the same
/// task always gets the same question.
const QUESTION_SEED: u64 = 0xCA11C0;

/// A loaded model ready to answer; cheap to clone (tensors are shared).
#[derive(Clone)]
pub struct Engine {
    model: Calico,
    tok: CalicoTokenizer,
    /// Seeded random weights: when free generation routes no `[SEG]`, a
    /// scripted template answer is scored instead, so the masks still come
    /// from the model's mask decoder.
    untrained: bool,
    max_new_tokens: usize,
    /// What was loaded, for `/api/health`.
    pub description: String,
}

/// What the server asks: a task (its fixed question) or a free question.
#[derive(Debug, Clone)]
pub enum Query {
    Task(Task),
    Question(String),
}

/// One mask of a response.
#[derive(Debug, Clone, Serialize)]
pub struct MaskOut {
    /// 0-based image index.
    pub image: usize,
    /// The `<p>` phrase grounding it (or `mask N` when it has none).
    pub label: String,
    /// `#rrggbb`, the same for a label on every image.
    pub colour: String,
    /// Uncompressed COCO RLE (column-major runs, background first).
    pub rle: RleOut,
}

/// `{size: [h, w], counts: [..]}` with plain integer counts.
#[derive(Debug, Clone, Serialize)]
pub struct RleOut {
    pub size: [u32; 2],
    pub counts: Vec<u32>,
}

/// Width and height of an input image.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct ImageSize {
    pub width: usize,
    pub height: usize,
}

/// The body of a successful `/api/segment`.
#[derive(Debug, Clone, Serialize)]
pub struct SegmentResponse {
    pub answer: String,
    pub question: String,
    pub masks: Vec<MaskOut>,
    pub images: Vec<ImageSize>,
    /// True when the answer text is the scripted template of an untrained
    /// model (its masks are still the model's).
    pub scripted_answer: bool,
    pub elapsed_s: f64,
}

/// Distinct colours for labels, in order of first appearance.
pub const PALETTE: [&str; 12] = [
    "#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#42d4f4", "#f032e6", "#bfef45",
    "#fabed4", "#469990", "#dcbeff", "#9a6324",
];

impl Engine {
    /// Loads a weights directory (every tensor must be present) onto
    /// `device`; with `quantized_llm`, its GGUF LLM's projections and vocabulary tables stay
    /// quantised (`load_dir_quantized_llm`).
    pub fn from_weights(
        dir: &Path,
        max_new_tokens: usize,
        device: &Device,
        quantized_llm: Option<QuantizedMatmul>,
    ) -> Result<Self, String> {
        let l = load_dir_for_answers(dir, MissingFrozen::Error, device, quantized_llm)
            .map_err(|e| format!("{}: {e}", dir.display()))?;
        let note = quantized_llm.map_or(String::new(), |m| l.report.quantized_note(m));
        Ok(Self {
            model: l.model,
            tok: l.tokenizer,
            untrained: false,
            max_new_tokens,
            description: format!("weights {}{note}", dir.display()),
        })
    }

    /// A seeded random model of `preset` with a word-level tokenizer over
    /// the protocol's question and answer templates, on `device`.
    pub fn random_preset(
        preset: &str,
        seed: u64,
        max_new_tokens: usize,
        device: &Device,
    ) -> Result<Self, String> {
        let cfg = CalicoConfig::preset(preset).map_err(|e| e.to_string())?;
        let format = PromptFormat::vicuna_v1(cfg.image_tokens());
        let mut tok =
            CalicoTokenizer::word_level(&corpus(&format.system)).map_err(|e| e.to_string())?;
        let special = tok.add_calico_tokens(None).map_err(|e| e.to_string())?;
        if tok.vocab_size() > cfg.llm.vocab_size {
            return Err(format!(
                "the template vocabulary has {} tokens but preset {preset} holds {}",
                tok.vocab_size(),
                cfg.llm.vocab_size
            ));
        }
        let b = calico_train::model::build_random(
            &cfg,
            special,
            calico_train::model::TrainableSet::Paper,
            seed,
            device,
        )
        .map_err(|e| e.to_string())?;
        Ok(Self {
            model: b.model,
            tok,
            untrained: true,
            max_new_tokens,
            description: format!("preset {preset}, random weights (seed {seed}), untrained"),
        })
    }

    pub fn config(&self) -> &CalicoConfig {
        self.model.config()
    }

    /// Where the model runs: `cpu` or `cuda:N` (`--device`), for
    /// `/api/health` and the startup line.
    pub fn device(&self) -> String {
        match self.model.llm().device().location() {
            candle_core::DeviceLocation::Cpu => "cpu".into(),
            candle_core::DeviceLocation::Cuda { gpu_id } => format!("cuda:{gpu_id}"),
            candle_core::DeviceLocation::Metal { gpu_id } => format!("metal:{gpu_id}"),
        }
    }

    /// The full question (image prefix + task phrasing or free text).
    pub fn question(query: &Query, n_images: usize) -> String {
        let q = match query {
            Query::Task(t) => {
                let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(QUESTION_SEED);
                templates::question(*t, &mut rng).to_string()
            }
            Query::Question(q) => q.clone(),
        };
        templates::multi_image_prefix(n_images) + &q
    }

    /// Answers `query` about `images` (at least two).
    pub fn segment(&self, query: &Query, images: &[RgbImage]) -> Result<SegmentResponse, String> {
        let start = Instant::now();
        let question = Self::question(query, images.len());
        let inputs = images
            .iter()
            .map(|im| ImageInput::from_image(self.config(), im))
            .collect::<candle_core::Result<Vec<_>>>()
            .map_err(|e| format!("preprocessing: {e}"))?;
        let opts = calico_train::predict::greedy(self.max_new_tokens);
        let mut answer = self
            .model
            .generate(&question, &inputs, &self.tok, &opts, None)
            .map_err(|e| format!("generation: {e}"))?;
        let mut scripted = false;
        if self.untrained && answer.masks.is_empty() {
            let task = match query {
                Query::Task(t) => *t,
                Query::Question(_) => Task::CommonObject,
            };
            answer = self
                .score_answer(&question, &scripted_answer(task, images.len()), &inputs)
                .map_err(|e| format!("scoring the scripted answer: {e}"))?;
            scripted = true;
        }
        let masks = masks_out(&answer).map_err(|e| format!("masks: {e}"))?;
        Ok(SegmentResponse {
            answer: answer.text,
            question,
            masks,
            images: images
                .iter()
                .map(|im| ImageSize {
                    width: im.width(),
                    height: im.height(),
                })
                .collect(),
            scripted_answer: scripted,
            elapsed_s: start.elapsed().as_secs_f64(),
        })
    }

    /// Runs a given answer through the model (teacher-forced) and decodes
    /// the masks of its `[SEG]`s.
    fn score_answer(
        &self,
        question: &str,
        answer: &str,
        inputs: &[ImageInput],
    ) -> candle_core::Result<Answer> {
        let m = &self.model;
        let limit = m.config().llm.max_position_embeddings;
        let err = |e: calico_model::prompt::PromptError| candle_core::Error::Msg(e.to_string());
        let prompt = build(
            question,
            None,
            inputs.len(),
            &self.tok,
            m.special_ids(),
            m.prompt_format(),
            limit,
        )
        .map_err(err)?;
        let full = build(
            question,
            Some(answer),
            inputs.len(),
            &self.tok,
            m.special_ids(),
            m.prompt_format(),
            limit,
        )
        .map_err(err)?;
        let new_ids = &full.input_ids[prompt.answer_start..];
        let refs: Vec<&ImageInput> = inputs.iter().collect();
        let encoded: Vec<_> = m.encode_images(&refs)?.iter().map(|e| e.detach()).collect();
        m.answer_from_ids(&prompt, new_ids, inputs, &encoded, &self.tok)
    }
}

/// The masks of an answer, coloured by label (first appearance order).
/// A `[SEG]` right after another one (`<p> lid </p> [SEG] (IMAGE1) [SEG]
/// (IMAGE2)`) has no phrase of its own: it takes the group's.
fn masks_out(answer: &Answer) -> Result<Vec<MaskOut>, String> {
    let mut labels: Vec<String> = Vec::new();
    let mut out = Vec::with_capacity(answer.masks.len());
    let mut group: Option<String> = None;
    for (i, m) in answer.masks.iter().enumerate() {
        if let Some(p) = m.phrase.as_ref().filter(|p| !p.is_empty()) {
            group = Some(p.clone());
        }
        let label = group.clone().unwrap_or_else(|| format!("mask {}", i + 1));
        let k = match labels.iter().position(|l| *l == label) {
            Some(k) => k,
            None => {
                labels.push(label.clone());
                labels.len() - 1
            }
        };
        out.push(MaskOut {
            image: m.image,
            label,
            colour: PALETTE[k % PALETTE.len()].to_string(),
            rle: rle_of(&m.mask)?,
        });
    }
    Ok(out)
}

/// A `(H, W)` u8 mask tensor as uncompressed COCO RLE.
fn rle_of(mask: &Tensor) -> Result<RleOut, String> {
    let (h, w) = mask.dims2().map_err(|e| e.to_string())?;
    let data: Vec<u8> = mask
        .flatten_all()
        .and_then(|t| t.to_vec1())
        .map_err(|e| e.to_string())?;
    let m = Mask::from_row_major(h as u32, w as u32, &data).map_err(|e| e.to_string())?;
    let r = Rle::encode(&m);
    Ok(RleOut {
        size: [r.height, r.width],
        counts: r.counts,
    })
}

/// The template answer an untrained model is scored on, with grounded
/// phrases on every image.
pub fn scripted_answer(task: Task, n_images: usize) -> String {
    let segs = |phrase: &str| {
        let tags: Vec<String> = (1..=n_images)
            .map(|k| format!("{SEG} {}", image_tag(k)))
            .collect();
        format!("{P_OPEN} {phrase} {P_CLOSE} {}", tags.join(" "))
    };
    match task {
        Task::CommonObject | Task::IdentifyObjects => {
            format!("The common object is {}.", segs("the object"))
        }
        Task::CommonParts => format!(
            "The common parts are {} and {}.",
            segs("the top"),
            segs("the bottom")
        ),
        Task::UniqueParts => format!(
            "The unique parts are {} and {}.",
            segs("the left side"),
            segs("the right side")
        ),
    }
}

/// The texts the untrained preset's word-level tokenizer covers: the
/// system prompt, every question phrasing with its prefix, every answer
/// template and the scripted answers, cut at the special tokens.
fn corpus(system: &str) -> Vec<String> {
    let mut texts = vec![format!("{system} USER: ASSISTANT:")];
    for n in 1..=4 {
        texts.push(templates::multi_image_prefix(n));
    }
    for t in Task::ALL {
        texts.extend(templates::questions(t).iter().map(|q| q.to_string()));
        for n in 2..=4 {
            texts.push(scripted_answer(t, n));
        }
    }
    for (_, list) in templates::answers::ALL {
        for a in *list {
            let plain = a
                .replace("{a_objects}", "an object")
                .replace("{the_objects}", "the object")
                .replace("{the_parts}", "the part")
                .replace("{both}", "both all");
            texts.push(plain);
        }
    }
    let mut out = Vec::new();
    for t in texts {
        let mut pieces = vec![t];
        for s in ALL_SPECIAL {
            pieces = pieces
                .iter()
                .flat_map(|p| p.split(s).map(str::to_string).collect::<Vec<_>>())
                .collect();
        }
        out.extend(pieces.into_iter().filter(|p| !p.is_empty()));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use calico_model::calico::SegMask;

    fn seg(image: usize, phrase: Option<&str>) -> SegMask {
        let mask = Tensor::from_vec(vec![0u8, 1, 1, 0, 0, 1], (2, 3), &Device::Cpu).unwrap();
        SegMask {
            position: 0,
            image,
            phrase: phrase.map(str::to_string),
            logits: mask.to_dtype(candle_core::DType::F32).unwrap(),
            mask,
        }
    }

    #[test]
    fn grouped_segs_share_label_and_colour() {
        let answer = Answer {
            text: String::new(),
            token_ids: Vec::new(),
            masks: vec![
                seg(0, Some("the lid")),
                seg(1, None),
                seg(0, Some("the handle")),
                seg(1, None),
            ],
            unrouted: Vec::new(),
        };
        let out = masks_out(&answer).unwrap();
        let labels: Vec<&str> = out.iter().map(|m| m.label.as_str()).collect();
        assert_eq!(labels, ["the lid", "the lid", "the handle", "the handle"]);
        assert_eq!(out[0].colour, out[1].colour);
        assert_ne!(out[0].colour, out[2].colour);
        // Column-major runs: column 0 = [0, 0], column 1 = [1, 0], column 2 = [1, 1].
        assert_eq!(out[0].rle.size, [2, 3]);
        assert_eq!(out[0].rle.counts, vec![2, 1, 1, 2]);
    }

    #[test]
    fn scripted_answers_fit_the_tiny_vocabulary() {
        let e = Engine::random_preset("tiny", 1, 4, &Device::Cpu).unwrap();
        assert!(e.untrained);
        let q = Engine::question(&Query::Task(Task::CommonParts), 2);
        assert_eq!(q, Engine::question(&Query::Task(Task::CommonParts), 2));
        assert!(q.starts_with(&templates::multi_image_prefix(2)));
    }
}
