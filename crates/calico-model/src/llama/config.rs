//! LLaMA configuration with HF `LlamaConfig` field names, so a model's
//! `config.json` deserialises directly (fields we do not use are ignored).

use serde::{Deserialize, Serialize};

use calico_nn::Activation;

fn d_vocab() -> usize {
    32000
}
fn d_hidden() -> usize {
    4096
}
fn d_inter() -> usize {
    11008
}
fn d_layers() -> usize {
    32
}
fn d_heads() -> usize {
    32
}
fn d_eps() -> f64 {
    1e-6
}
fn d_theta() -> f64 {
    10000.0
}
fn d_max_pos() -> usize {
    2048
}
fn d_act() -> Activation {
    Activation::Silu
}
fn d_bos() -> Option<u32> {
    Some(1)
}
fn d_eos() -> Option<u32> {
    Some(2)
}

/// A LLaMA-family decoder (LLaMA, Vicuna, SmolLM2).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LlamaConfig {
    #[serde(default = "d_vocab")]
    pub vocab_size: usize,
    #[serde(default = "d_hidden")]
    pub hidden_size: usize,
    #[serde(default = "d_inter")]
    pub intermediate_size: usize,
    #[serde(default = "d_layers")]
    pub num_hidden_layers: usize,
    #[serde(default = "d_heads")]
    pub num_attention_heads: usize,
    /// Grouped-query attention: key/value heads (defaults to the query heads).
    #[serde(default)]
    pub num_key_value_heads: Option<usize>,
    /// Per-head width when it is not `hidden_size / num_attention_heads`.
    #[serde(default)]
    pub head_dim: Option<usize>,
    #[serde(default = "d_eps")]
    pub rms_norm_eps: f64,
    #[serde(default = "d_theta")]
    pub rope_theta: f64,
    #[serde(default = "d_max_pos")]
    pub max_position_embeddings: usize,
    #[serde(default)]
    pub tie_word_embeddings: bool,
    #[serde(default = "d_act")]
    pub hidden_act: Activation,
    #[serde(default)]
    pub attention_bias: bool,
    #[serde(default)]
    pub mlp_bias: bool,
    #[serde(default = "d_bos")]
    pub bos_token_id: Option<u32>,
    #[serde(default = "d_eos")]
    pub eos_token_id: Option<u32>,
    /// transformers ≥ 5 writes `rope_parameters: {rope_type, rope_theta}`
    /// instead of `rope_theta`; when present it wins (see [`LlamaConfig::rope`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rope_parameters: Option<serde_json::Value>,
    /// transformers < 5 `rope_scaling`; only `null` / type `default` is supported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rope_scaling: Option<serde_json::Value>,
}

impl Default for LlamaConfig {
    /// LLaMA-7B / Vicuna-7B.
    fn default() -> Self {
        Self::vicuna_7b()
    }
}

impl LlamaConfig {
    /// Vicuna-7B (LLaMA-7B shape): 32 layers × 4096, 32 heads, MLP 11008.
    pub fn vicuna_7b() -> Self {
        Self {
            vocab_size: d_vocab(),
            hidden_size: d_hidden(),
            intermediate_size: d_inter(),
            num_hidden_layers: d_layers(),
            num_attention_heads: d_heads(),
            num_key_value_heads: None,
            head_dim: None,
            rms_norm_eps: d_eps(),
            rope_theta: d_theta(),
            max_position_embeddings: d_max_pos(),
            tie_word_embeddings: false,
            hidden_act: Activation::Silu,
            attention_bias: false,
            mlp_bias: false,
            bos_token_id: d_bos(),
            eos_token_id: d_eos(),
            rope_parameters: None,
            rope_scaling: None,
        }
    }

    /// SmolLM2-135M-Instruct: 30 layers × 576, 9 query / 3 key-value heads,
    /// MLP 1536, vocabulary 49152, tied embeddings, RoPE θ 100000.
    pub fn smollm2_135m() -> Self {
        Self {
            vocab_size: 49152,
            hidden_size: 576,
            intermediate_size: 1536,
            num_hidden_layers: 30,
            num_attention_heads: 9,
            num_key_value_heads: Some(3),
            head_dim: None,
            rms_norm_eps: 1e-5,
            rope_theta: 100000.0,
            max_position_embeddings: 8192,
            tie_word_embeddings: true,
            hidden_act: Activation::Silu,
            attention_bias: false,
            mlp_bias: false,
            bos_token_id: Some(1),
            eos_token_id: Some(2),
            rope_parameters: None,
            rope_scaling: None,
        }
    }

    pub fn kv_heads(&self) -> usize {
        self.num_key_value_heads.unwrap_or(self.num_attention_heads)
    }

    pub fn head_dim(&self) -> usize {
        self.head_dim
            .unwrap_or(self.hidden_size / self.num_attention_heads)
    }

    /// The RoPE base θ, after checking that the config asks for plain RoPE.
    /// Scaled variants (`linear`, `dynamic`, `yarn`, `llama3`, …) are not
    /// implemented and give an error naming the type.
    pub fn rope(&self) -> candle_core::Result<f64> {
        fn kind(v: &serde_json::Value) -> Option<&str> {
            v.get("rope_type")
                .or_else(|| v.get("type"))
                .and_then(|t| t.as_str())
        }
        let mut theta = self.rope_theta;
        for (field, v) in [
            ("rope_scaling", &self.rope_scaling),
            ("rope_parameters", &self.rope_parameters),
        ] {
            let Some(v) = v.as_ref().filter(|v| !v.is_null()) else {
                continue;
            };
            if let Some(k) = kind(v).filter(|k| *k != "default") {
                candle_core::bail!(
                    "LLaMA config: {field} asks for RoPE type `{k}`; only plain RoPE (`default`) is implemented"
                );
            }
            if let Some(t) = v.get("rope_theta").and_then(|t| t.as_f64()) {
                theta = t;
            }
        }
        Ok(theta)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rope_theta_from_either_field_and_scaled_rope_is_refused() {
        let c: LlamaConfig = serde_json::from_str(r#"{"rope_theta": 500.0}"#).unwrap();
        assert_eq!(c.rope().unwrap(), 500.0);
        let c: LlamaConfig = serde_json::from_str(
            r#"{"rope_parameters": {"rope_type": "default", "rope_theta": 100000.0}, "rope_scaling": null}"#,
        )
        .unwrap();
        assert_eq!(c.rope().unwrap(), 100000.0);
        let c: LlamaConfig =
            serde_json::from_str(r#"{"rope_scaling": {"type": "linear", "factor": 2.0}}"#).unwrap();
        let e = c.rope().unwrap_err().to_string();
        assert!(e.contains("linear"), "{e}");
        let c: LlamaConfig = serde_json::from_str(
            r#"{"rope_parameters": {"rope_type": "llama3", "rope_theta": 500000.0}}"#,
        )
        .unwrap();
        assert!(c.rope().unwrap_err().to_string().contains("llama3"));
        assert!(crate::llama::Llama::new(
            &c,
            candle_nn::VarBuilder::zeros(candle_core::DType::F32, &candle_core::Device::Cpu)
        )
        .is_err());
    }
}
