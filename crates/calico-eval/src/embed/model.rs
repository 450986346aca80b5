//! The BERT sentence encoder: tokenizer, candle's `BertModel`, mean pooling.

use super::error::{EmbedError, Result};
use super::weights;
use candle_core::{DType, Device, Tensor, D};
use candle_nn::VarBuilder;
use candle_transformers::models::bert::{BertModel, Config};
use serde::Deserialize;
use std::path::{Path, PathBuf};
use tokenizers::{Tokenizer, TruncationDirection, TruncationParams, TruncationStrategy};

/// Texts run through the encoder together by [`SentenceEmbedder::embed`].
pub const DEFAULT_BATCH_SIZE: usize = 64;

/// Sequence length used when the model directory does not state one
/// (sentence-transformers' `max_seq_length` of all-MiniLM-L6-v2).
pub const DEFAULT_MAX_SEQ_LENGTH: usize = 256;

/// A sentence-transformers BERT model (all-MiniLM-L6-v2 by default): WordPiece
/// tokenizer, BERT encoder, attention-mask-weighted mean pooling.
///
/// The embeddings are the pooled vectors before any `Normalize` module of the
/// sentence-transformers pipeline, so they are not unit length; cosine
/// similarity ([`super::cosine`]) does not depend on the scale.
pub struct SentenceEmbedder {
    model: BertModel,
    tokenizer: Tokenizer,
    device: Device,
    dir: PathBuf,
    hidden_size: usize,
    max_seq_length: usize,
    do_lower_case: bool,
    batch_size: usize,
}

/// The part of `sentence_bert_config.json` that matters here.
#[derive(Deserialize)]
struct SentenceBertConfig {
    max_seq_length: Option<usize>,
    #[serde(default)]
    do_lower_case: bool,
}

/// The part of `1_Pooling/config.json` that matters here.
#[derive(Deserialize)]
struct PoolingConfig {
    #[serde(default)]
    pooling_mode_cls_token: bool,
    #[serde(default)]
    pooling_mode_max_tokens: bool,
    #[serde(default)]
    pooling_mode_mean_sqrt_len_tokens: bool,
    #[serde(default)]
    pooling_mode_weightedmean_tokens: bool,
    #[serde(default)]
    pooling_mode_lasttoken: bool,
    #[serde(default)]
    pooling_mode: Option<String>,
}

fn read_text(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).map_err(|source| EmbedError::Io {
        path: path.to_path_buf(),
        source,
    })
}

fn parse_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<T> {
    serde_json::from_str(&read_text(path)?).map_err(|e| EmbedError::Config {
        path: path.to_path_buf(),
        message: e.to_string(),
    })
}

fn require(dir: &Path, file: &'static str) -> Result<PathBuf> {
    let path = dir.join(file);
    if path.is_file() {
        Ok(path)
    } else {
        Err(EmbedError::MissingFile {
            dir: dir.to_path_buf(),
            file,
        })
    }
}

/// Reads `config.json` and checks that it describes a BERT encoder.
fn load_config(path: &Path) -> Result<Config> {
    let text = read_text(path)?;
    let bad = |message: String| EmbedError::Config {
        path: path.to_path_buf(),
        message,
    };
    let raw: serde_json::Value = serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
    if let Some(kind) = raw.get("model_type").and_then(|v| v.as_str()) {
        if kind != "bert" {
            return Err(bad(format!(
                "model_type is {kind:?}; only BERT encoders (\"bert\") are supported"
            )));
        }
    }
    let config: Config = serde_json::from_value(raw).map_err(|e| bad(e.to_string()))?;
    if config.num_attention_heads == 0
        || !config
            .hidden_size
            .is_multiple_of(config.num_attention_heads)
    {
        return Err(bad(format!(
            "hidden_size {} is not a multiple of num_attention_heads {}",
            config.hidden_size, config.num_attention_heads
        )));
    }
    Ok(config)
}

/// Checks that the pooling module (if described) is plain mean pooling.
fn check_pooling(path: &Path) -> Result<()> {
    let pooling: PoolingConfig = parse_json(path)?;
    let mean_only = match pooling.pooling_mode.as_deref() {
        Some(mode) => mode == "mean",
        None => {
            !(pooling.pooling_mode_cls_token
                || pooling.pooling_mode_max_tokens
                || pooling.pooling_mode_mean_sqrt_len_tokens
                || pooling.pooling_mode_weightedmean_tokens
                || pooling.pooling_mode_lasttoken)
        }
    };
    if mean_only {
        Ok(())
    } else {
        Err(EmbedError::Config {
            path: path.to_path_buf(),
            message: "only mean pooling is supported".into(),
        })
    }
}

/// Python's `str.strip()` whitespace (sentence-transformers strips inputs).
fn py_whitespace(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

impl SentenceEmbedder {
    /// Loads a sentence-transformers BERT model directory: `config.json`,
    /// `model.safetensors` (tensor names with or without a `bert.` prefix),
    /// `tokenizer.json`, and, when present, `sentence_bert_config.json`
    /// (`max_seq_length`, `do_lower_case`) and `1_Pooling/config.json`
    /// (must be mean pooling). Weights are converted to F32.
    pub fn load(dir: &Path, device: &Device) -> Result<Self> {
        if !dir.is_dir() {
            return Err(EmbedError::MissingDir {
                dir: dir.to_path_buf(),
            });
        }
        let config_path = require(dir, "config.json")?;
        let weights_path = require(dir, "model.safetensors")?;
        let tokenizer_path = require(dir, "tokenizer.json")?;
        let config = load_config(&config_path)?;

        let st_config_path = dir.join("sentence_bert_config.json");
        let st_config = if st_config_path.is_file() {
            Some(parse_json::<SentenceBertConfig>(&st_config_path)?)
        } else {
            None
        };
        let pooling_path = dir.join("1_Pooling").join("config.json");
        if pooling_path.is_file() {
            check_pooling(&pooling_path)?;
        }
        let max_seq_length = st_config
            .as_ref()
            .and_then(|c| c.max_seq_length)
            .unwrap_or(DEFAULT_MAX_SEQ_LENGTH)
            .min(config.max_position_embeddings);
        if max_seq_length < 2 {
            return Err(EmbedError::Config {
                path: st_config_path,
                message: format!("max_seq_length {max_seq_length} leaves no room for text"),
            });
        }
        let do_lower_case = st_config.as_ref().is_some_and(|c| c.do_lower_case);

        let tensors = weights::load_bert_tensors(&weights_path, &config)?;
        let vb = VarBuilder::from_tensors(tensors, DType::F32, device);
        let model = BertModel::load(vb, &config).map_err(|e| EmbedError::Weights {
            path: weights_path.clone(),
            message: e.to_string(),
        })?;

        let tokenizer_error = |message: String| EmbedError::Tokenizer {
            path: tokenizer_path.clone(),
            message,
        };
        let mut tokenizer =
            Tokenizer::from_file(&tokenizer_path).map_err(|e| tokenizer_error(e.to_string()))?;
        // tokenizer.json may carry its own truncation and fixed padding
        // (all-MiniLM-L6-v2's says 128); sentence-transformers overrides both.
        tokenizer
            .with_truncation(Some(TruncationParams {
                direction: TruncationDirection::Right,
                max_length: max_seq_length,
                strategy: TruncationStrategy::LongestFirst,
                stride: 0,
            }))
            .map_err(|e| tokenizer_error(e.to_string()))?;
        tokenizer.with_padding(None);

        Ok(Self {
            model,
            tokenizer,
            device: device.clone(),
            dir: dir.to_path_buf(),
            hidden_size: config.hidden_size,
            max_seq_length,
            do_lower_case,
            batch_size: DEFAULT_BATCH_SIZE,
        })
    }

    /// Loads the model from [`super::default_dir`] on the CPU.
    pub fn load_default() -> Result<Self> {
        Self::load(&super::default_dir(), &Device::Cpu)
    }

    /// Length of an embedding (the encoder's hidden size; 384 for MiniLM).
    pub fn dim(&self) -> usize {
        self.hidden_size
    }

    /// Tokens (special tokens included) beyond which texts are truncated.
    pub fn max_seq_length(&self) -> usize {
        self.max_seq_length
    }

    /// The model directory this embedder was loaded from.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Texts run through the encoder together.
    pub fn batch_size(&self) -> usize {
        self.batch_size
    }

    /// Sets the number of texts run through the encoder together (at least 1).
    pub fn set_batch_size(&mut self, batch_size: usize) {
        self.batch_size = batch_size.max(1);
    }

    /// Token ids of `text` as the encoder sees them (special tokens
    /// included, truncated to [`Self::max_seq_length`]).
    pub fn token_ids(&self, text: &str) -> Result<Vec<u32>> {
        let prepared = self.prepare(text);
        let encoding = self
            .tokenizer
            .encode(prepared.as_str(), true)
            .map_err(|e| EmbedError::Tokenize(e.to_string()))?;
        Ok(encoding.get_ids().to_vec())
    }

    fn prepare(&self, text: &str) -> String {
        let text = text.trim_matches(py_whitespace);
        if self.do_lower_case {
            text.to_lowercase()
        } else {
            text.to_string()
        }
    }

    /// Embeds `texts`: one vector of [`Self::dim`] floats per text, in
    /// order. Texts are sorted by token count and run in batches of
    /// [`Self::batch_size`], each padded to its longest member; padding is
    /// masked out of attention and pooling, so a text's embedding does not
    /// depend on the batch it is in (up to float rounding).
    pub fn embed(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>> {
        if texts.is_empty() {
            return Ok(Vec::new());
        }
        let prepared: Vec<String> = texts.iter().map(|t| self.prepare(t)).collect();
        let encodings = self
            .tokenizer
            .encode_batch(
                prepared.iter().map(String::as_str).collect::<Vec<_>>(),
                true,
            )
            .map_err(|e| EmbedError::Tokenize(e.to_string()))?;
        let mut order: Vec<usize> = (0..texts.len()).collect();
        order.sort_by_key(|&i| std::cmp::Reverse(encodings[i].get_ids().len()));

        let mut out = vec![Vec::new(); texts.len()];
        for chunk in split_batches(&order, |i| encodings[i].get_ids().len(), self.batch_size) {
            let batch: Vec<&tokenizers::Encoding> = chunk.iter().map(|&i| &encodings[i]).collect();
            let pooled = self.forward(&batch)?;
            for (&i, v) in chunk.iter().zip(pooled) {
                out[i] = v;
            }
        }
        Ok(out)
    }

    /// Runs one padded batch through the encoder and mean-pools it.
    fn forward(&self, batch: &[&tokenizers::Encoding]) -> Result<Vec<Vec<f32>>> {
        let n = batch.len();
        let len = batch.iter().map(|e| e.get_ids().len()).max().unwrap_or(0);
        let mut ids = vec![0u32; n * len];
        let mut types = vec![0u32; n * len];
        let mut mask = vec![0u32; n * len];
        for (row, enc) in batch.iter().enumerate() {
            let base = row * len;
            let k = enc.get_ids().len();
            ids[base..base + k].copy_from_slice(enc.get_ids());
            types[base..base + k].copy_from_slice(enc.get_type_ids());
            mask[base..base + k].copy_from_slice(enc.get_attention_mask());
        }
        let ids = Tensor::from_vec(ids, (n, len), &self.device)?;
        let types = Tensor::from_vec(types, (n, len), &self.device)?;
        let mask = Tensor::from_vec(mask, (n, len), &self.device)?;

        let hidden = self.model.forward(&ids, &types, Some(&mask))?; // (n, len, dim)
        let weights = mask.to_dtype(DType::F32)?.unsqueeze(D::Minus1)?; // (n, len, 1)
        let summed = hidden.broadcast_mul(&weights)?.sum(1)?; // (n, dim)
        let counts = weights.sum(1)?.clamp(1e-9f32, f32::MAX)?; // (n, 1)
        let pooled = summed.broadcast_div(&counts)?;
        Ok(pooled.to_vec2::<f32>()?)
    }
}

/// Sequences at most this long share a batch whatever their lengths (the
/// padding costs little next to the per-batch overhead).
const SHORT_SEQUENCE: usize = 32;

/// Cuts `order` (sorted by decreasing length) into batches of at most
/// `batch_size`, also starting a new batch where a text is less than half as
/// long as the batch's first (longest) one, unless that one is short: one
/// long text then does not pad a whole batch of short labels to its length.
fn split_batches(
    order: &[usize],
    len: impl Fn(usize) -> usize,
    batch_size: usize,
) -> Vec<&[usize]> {
    let mut batches = Vec::new();
    let mut start = 0;
    for k in 1..=order.len() {
        let done = k == order.len() || k - start == batch_size || {
            let longest = len(order[start]);
            longest > SHORT_SEQUENCE && 2 * len(order[k]) < longest
        };
        if done {
            batches.push(&order[start..k]);
            start = k;
        }
    }
    batches
}

impl std::fmt::Debug for SentenceEmbedder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SentenceEmbedder")
            .field("dir", &self.dir)
            .field("dim", &self.hidden_size)
            .field("max_seq_length", &self.max_seq_length)
            .field("do_lower_case", &self.do_lower_case)
            .field("batch_size", &self.batch_size)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::split_batches;

    #[test]
    fn batches_split_on_size_and_length_drop() {
        let lens = [256, 200, 120, 40, 8, 8, 7, 5, 3];
        let order: Vec<usize> = (0..lens.len()).collect();
        let got: Vec<Vec<usize>> = split_batches(&order, |i| lens[i], 64)
            .into_iter()
            .map(<[usize]>::to_vec)
            .collect();
        assert_eq!(got, vec![vec![0, 1], vec![2], vec![3], vec![4, 5, 6, 7, 8]]);
        let got = split_batches(&order[4..], |i| lens[i], 2);
        assert_eq!(got, vec![&[4, 5][..], &[6, 7][..], &[8][..]]);
        assert!(split_batches(&[], |i| lens[i], 2).is_empty());
    }
}
