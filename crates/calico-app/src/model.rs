//! The model to answer with: a weights directory (`--weights DIR`) or a
//! preset with seeded random weights (`--preset tiny`), which is
//! **untrained** — its answers and masks are noise, useful only to check
//! the pipeline end to end.

use std::path::{Path, PathBuf};

use calico_model::calico::weights::{load_dir_for_answers, MissingFrozen};
use calico_model::calico::Calico;
use calico_model::config::CalicoConfig;
use calico_model::llama::QuantizedMatmul;
use calico_model::prompt::PromptFormat;
use calico_model::tokenizer::CalicoTokenizer;
use calico_text::templates::{answers, multi_image_prefix, questions, Task};
use calico_train::model::{build_random, TrainableSet};
use candle_core::Device;

use crate::error::{AppError, Result};

/// Where the model comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelSource {
    /// A weights directory (docs/weights.md); with `quantized_llm`, the
    /// projections of its GGUF LLM stay in the file's quantised blocks,
    /// multiplied that way (docs/quantized.md).
    Weights {
        dir: PathBuf,
        quantized_llm: Option<QuantizedMatmul>,
    },
    /// A preset with seeded random weights (untrained).
    Random { preset: String, seed: u64 },
}

/// A model ready to answer.
pub struct AppModel {
    pub model: Calico,
    pub tokenizer: CalicoTokenizer,
    /// Human-readable origin, e.g. `weights runs/a/model` or
    /// `preset tiny, seed 0 (untrained random weights)`.
    pub description: String,
    /// True for random weights.
    pub untrained: bool,
}

/// Most images the vocabulary of a random model covers in its prompt
/// prefix (more still work; their tags become unknown tokens).
const CORPUS_IMAGES: usize = 8;

/// Splits `text` at Calico's special tokens (they are added tokens; the
/// prompt builder encodes the text between them piece by piece).
fn pieces(text: &str) -> Vec<String> {
    let mut out = vec![text.to_string()];
    for s in calico_text::tokens::ALL_SPECIAL {
        out = out
            .iter()
            .flat_map(|p| p.split(s).map(str::to_string).collect::<Vec<_>>())
            .collect();
    }
    out.retain(|p| !p.is_empty());
    out
}

/// The texts a word-level vocabulary for the task templates covers: the
/// system prompt, every question of every task after the prefix for 2 to 8
/// images, and the answer templates.
pub fn template_corpus(format: &PromptFormat) -> Vec<String> {
    let mut out = pieces(&format!("{} USER: ASSISTANT:", format.system));
    for n in 2..=CORPUS_IMAGES {
        out.extend(pieces(&format!(
            "{} USER: {} ASSISTANT:",
            format.system,
            multi_image_prefix(n)
        )));
    }
    for task in Task::ALL {
        for q in questions(task) {
            out.extend(pieces(&format!("USER: {q} ASSISTANT:")));
        }
    }
    for (_, list) in answers::ALL {
        for t in *list {
            let filled = t
                .replace("{a_objects}", "a")
                .replace("{the_objects}", "the")
                .replace("{the_parts}", "the")
                .replace("{both}", "Both");
            out.extend(pieces(&format!(" {filled}")));
        }
    }
    out
}

/// Loads the model of `source`. For random weights the word-level
/// vocabulary covers [`template_corpus`] plus `extra_corpus` (e.g. the
/// questions and answers of a samples file). The model's tensors live on
/// `device` ([`crate::device`]).
pub fn load(source: &ModelSource, extra_corpus: &[String], device: &Device) -> Result<AppModel> {
    match source {
        ModelSource::Weights { dir, quantized_llm } => load_weights(dir, *quantized_llm, device),
        ModelSource::Random { preset, seed } => {
            let cfg = CalicoConfig::preset(preset).map_err(|e| AppError::Input(e.to_string()))?;
            random(&cfg, *seed, extra_corpus, device)
        }
    }
}

fn load_weights(
    dir: &Path,
    quantized_llm: Option<QuantizedMatmul>,
    device: &Device,
) -> Result<AppModel> {
    if !dir.is_dir() {
        return Err(AppError::Input(format!(
            "{}: no such weights directory",
            dir.display()
        )));
    }
    let l = load_dir_for_answers(dir, MissingFrozen::Error, device, quantized_llm)
        .map_err(|e| AppError::Input(format!("loading weights from {}: {e}", dir.display())))?;
    let mut description = format!("weights {}", dir.display());
    if let Some(m) = quantized_llm {
        description.push_str(&l.report.quantized_note(m));
    }
    Ok(AppModel {
        model: l.model,
        tokenizer: l.tokenizer,
        description,
        untrained: false,
    })
}

/// A model of `cfg` with seeded random weights and a word-level tokenizer.
pub fn random(
    cfg: &CalicoConfig,
    seed: u64,
    extra_corpus: &[String],
    device: &Device,
) -> Result<AppModel> {
    let format = PromptFormat::vicuna_v1(cfg.image_tokens());
    let mut corpus = template_corpus(&format);
    corpus.extend(extra_corpus.iter().cloned());
    let mut tok = CalicoTokenizer::word_level(&corpus)?;
    let special = tok.add_calico_tokens(None)?;
    if tok.vocab_size() > cfg.llm.vocab_size {
        return Err(AppError::Input(format!(
            "the word-level vocabulary has {} tokens but preset `{}` has {}; \
             use a trained weights directory (--weights)",
            tok.vocab_size(),
            cfg.name,
            cfg.llm.vocab_size
        )));
    }
    let b = build_random(cfg, special, TrainableSet::Paper, seed, device)?;
    Ok(AppModel {
        model: b.model,
        tokenizer: tok,
        description: format!(
            "preset {}, seed {seed} (UNTRAINED random weights: answers and masks are noise)",
            cfg.name
        ),
        untrained: true,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn template_vocabulary_fits_tiny() {
        let m = load(
            &ModelSource::Random {
                preset: "tiny".into(),
                seed: 1,
            },
            &[],
            &Device::Cpu,
        )
        .unwrap();
        assert!(m.untrained);
        assert!(m.description.contains("UNTRAINED"));
        assert!(m.tokenizer.vocab_size() <= m.model.config().llm.vocab_size);
        let bad = load(
            &ModelSource::Random {
                preset: "huge".into(),
                seed: 1,
            },
            &[],
            &Device::Cpu,
        );
        assert!(matches!(bad, Err(AppError::Input(_))));
        let missing = load(
            &ModelSource::Weights {
                dir: "/no/such/dir".into(),
                quantized_llm: None,
            },
            &[],
            &Device::Cpu,
        );
        assert!(matches!(missing, Err(AppError::Input(m)) if m.contains("/no/such/dir")));
    }
}
