//! Reading BERT weights from a safetensors file under either naming
//! (`embeddings.…` or `bert.embeddings.…`), with the required tensors and
//! their shapes checked against `config.json` up front.

use super::error::{EmbedError, Result};
use candle_core::{Device, Tensor};
use candle_transformers::models::bert::Config;
use std::collections::HashMap;
use std::path::Path;

/// The prefix some checkpoints (e.g. exported from `BertFor…` heads) put
/// before the encoder's tensor names.
const PREFIX: &str = "bert.";

/// Names and shapes of every tensor the BERT encoder reads.
fn required(config: &Config) -> Vec<(String, Vec<usize>)> {
    let h = config.hidden_size;
    let i = config.intermediate_size;
    let mut v = vec![
        (
            "embeddings.word_embeddings.weight".to_string(),
            vec![config.vocab_size, h],
        ),
        (
            "embeddings.position_embeddings.weight".to_string(),
            vec![config.max_position_embeddings, h],
        ),
        (
            "embeddings.token_type_embeddings.weight".to_string(),
            vec![config.type_vocab_size, h],
        ),
        ("embeddings.LayerNorm.weight".to_string(), vec![h]),
        ("embeddings.LayerNorm.bias".to_string(), vec![h]),
    ];
    for layer in 0..config.num_hidden_layers {
        let p = format!("encoder.layer.{layer}");
        let mut add = |name: &str, shape: Vec<usize>| v.push((format!("{p}.{name}"), shape));
        for proj in ["query", "key", "value"] {
            add(&format!("attention.self.{proj}.weight"), vec![h, h]);
            add(&format!("attention.self.{proj}.bias"), vec![h]);
        }
        add("attention.output.dense.weight", vec![h, h]);
        add("attention.output.dense.bias", vec![h]);
        add("attention.output.LayerNorm.weight", vec![h]);
        add("attention.output.LayerNorm.bias", vec![h]);
        add("intermediate.dense.weight", vec![i, h]);
        add("intermediate.dense.bias", vec![i]);
        add("output.dense.weight", vec![h, i]);
        add("output.dense.bias", vec![h]);
        add("output.LayerNorm.weight", vec![h]);
        add("output.LayerNorm.bias", vec![h]);
    }
    v
}

/// Maps a stored name to the one candle's `BertModel` reads: the `bert.`
/// prefix removed (when the file uses it) and old-style LayerNorm
/// `gamma`/`beta` renamed to `weight`/`bias`.
fn canonical(name: &str, prefixed: bool) -> Option<String> {
    let name = if prefixed {
        name.strip_prefix(PREFIX)?
    } else {
        name
    };
    let name = if name.contains("LayerNorm.") {
        if let Some(stem) = name.strip_suffix(".gamma") {
            format!("{stem}.weight")
        } else if let Some(stem) = name.strip_suffix(".beta") {
            format!("{stem}.bias")
        } else {
            name.to_string()
        }
    } else {
        name.to_string()
    };
    Some(name)
}

/// Loads the encoder's tensors from `path` (on the CPU), renamed for
/// `BertModel` (no prefix) and checked for presence and shape.
pub(crate) fn load_bert_tensors(path: &Path, config: &Config) -> Result<HashMap<String, Tensor>> {
    let raw =
        candle_core::safetensors::load(path, &Device::Cpu).map_err(|e| EmbedError::Weights {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
    // Prefer the plain naming; use the prefixed one when only it has the
    // word embeddings.
    let probe = "embeddings.word_embeddings.weight";
    let prefixed = !raw.contains_key(probe) && raw.contains_key(&format!("{PREFIX}{probe}"));
    let tensors: HashMap<String, Tensor> = raw
        .into_iter()
        .filter_map(|(name, t)| canonical(&name, prefixed).map(|n| (n, t)))
        .collect();

    let mut missing = Vec::new();
    for (name, shape) in required(config) {
        match tensors.get(&name) {
            None => missing.push(name),
            Some(t) if t.dims() != shape.as_slice() => {
                return Err(EmbedError::TensorShape {
                    path: path.to_path_buf(),
                    name,
                    expected: shape,
                    got: t.dims().to_vec(),
                })
            }
            Some(_) => {}
        }
    }
    if !missing.is_empty() {
        let total = missing.len();
        missing.truncate(5);
        if total > missing.len() {
            missing.push(format!("… ({total} in all)"));
        }
        return Err(EmbedError::MissingTensors {
            path: path.to_path_buf(),
            names: missing,
        });
    }
    Ok(tensors)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_names() {
        assert_eq!(
            canonical("bert.embeddings.LayerNorm.gamma", true).as_deref(),
            Some("embeddings.LayerNorm.weight")
        );
        assert_eq!(canonical("cls.predictions.bias", true), None);
        assert_eq!(
            canonical("encoder.layer.0.output.LayerNorm.beta", false).as_deref(),
            Some("encoder.layer.0.output.LayerNorm.bias")
        );
        assert_eq!(
            canonical("pooler.dense.weight", false).as_deref(),
            Some("pooler.dense.weight")
        );
    }

    #[test]
    fn required_count() {
        let config = Config::default();
        // 5 embedding tensors + 16 per layer.
        assert_eq!(required(&config).len(), 5 + 16 * config.num_hidden_layers);
    }
}
