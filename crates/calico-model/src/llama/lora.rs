//! LoRA on the LLaMA projections (§3.2: r 8, α 16 on `q_proj`, `v_proj`) and
//! the two PEFT tensor-name layouts.
//!
//! * A saved adapter (`adapter_model.safetensors` from `save_pretrained`)
//!   stores `base_model.model.model.layers.N.self_attn.q_proj.lora_A.weight`;
//!   the base model stays in its own HF checkpoint. Use
//!   [`peft_adapter_file_map`] for the adapter builder.
//! * A full PEFT state dict (`get_peft_model(..).state_dict()`) stores
//!   everything under `base_model.model.`, the wrapped layers' base weights
//!   as `…q_proj.base_layer.weight` and the adapter as
//!   `…q_proj.lora_A.default.weight`. Use [`peft_state_dict_base_map`] and
//!   [`peft_state_dict_adapter_map`].

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::load::NameMap;

fn d_r() -> usize {
    8
}
fn d_alpha() -> f64 {
    16.0
}
fn d_dropout() -> f32 {
    0.05
}
fn d_targets() -> Vec<String> {
    vec!["q_proj".into(), "v_proj".into()]
}

/// The projections LoRA may wrap.
pub const LORA_TARGETS: &[&str] = &[
    "q_proj",
    "k_proj",
    "v_proj",
    "o_proj",
    "gate_proj",
    "up_proj",
    "down_proj",
];

/// LoRA settings with PEFT `LoraConfig` field names, so an
/// `adapter_config.json` deserialises directly (other fields are ignored).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoraSpec {
    #[serde(default = "d_r")]
    pub r: usize,
    #[serde(default = "d_alpha")]
    pub lora_alpha: f64,
    #[serde(default = "d_dropout")]
    pub lora_dropout: f32,
    /// Projection names (`q_proj`, `v_proj`, …; see [`LORA_TARGETS`]).
    #[serde(default = "d_targets")]
    pub target_modules: Vec<String>,
}

impl Default for LoraSpec {
    /// The paper's setting: r 8, α 16, dropout 0.05 on `q_proj`, `v_proj`.
    fn default() -> Self {
        Self {
            r: d_r(),
            lora_alpha: d_alpha(),
            lora_dropout: d_dropout(),
            target_modules: d_targets(),
        }
    }
}

impl LoraSpec {
    /// The per-layer settings for `calico_nn::Linear::with_lora`.
    pub fn layer_config(&self) -> calico_nn::LoraConfig {
        calico_nn::LoraConfig {
            r: self.r,
            alpha: self.lora_alpha,
            dropout: self.lora_dropout,
        }
    }

    /// True when `module` (e.g. `q_proj`) carries an adapter.
    pub fn targets(&self, module: &str) -> bool {
        self.target_modules.iter().any(|t| t == module)
    }

    /// Checks the rank and that every target is a LLaMA projection.
    pub fn validate(&self) -> candle_core::Result<()> {
        if self.r == 0 {
            candle_core::bail!("LoRA rank r must be at least 1");
        }
        for t in &self.target_modules {
            if !LORA_TARGETS.contains(&t.as_str()) {
                candle_core::bail!(
                    "LoRA target module `{t}` is not a LLaMA projection (expected one of {})",
                    LORA_TARGETS.join(", ")
                );
            }
        }
        Ok(())
    }
}

const PEFT_PREFIX: &str = "base_model.model.";

/// The module name (`q_proj`) of a tensor path `…self_attn.q_proj.weight`.
fn module_of(name: &str) -> Option<&str> {
    let mut parts = name.rsplit('.');
    parts.next()?;
    parts.next()
}

/// Base weights inside a full PEFT state dict: `X` → `base_model.model.X`,
/// with `.base_layer` inserted before `weight`/`bias` of wrapped modules.
pub fn peft_state_dict_base_map(spec: &LoraSpec) -> NameMap {
    let spec = spec.clone();
    Arc::new(move |name: &str| {
        let wrapped =
            name.starts_with("model.layers.") && module_of(name).is_some_and(|m| spec.targets(m));
        if wrapped {
            let (head, leaf) = name.rsplit_once('.')?;
            Some(format!("{PEFT_PREFIX}{head}.base_layer.{leaf}"))
        } else {
            Some(format!("{PEFT_PREFIX}{name}"))
        }
    })
}

/// Adapters inside a full PEFT state dict:
/// `…q_proj.lora_A.weight` → `base_model.model.…q_proj.lora_A.default.weight`.
pub fn peft_state_dict_adapter_map() -> NameMap {
    Arc::new(|name: &str| {
        let (head, leaf) = name.rsplit_once('.')?;
        Some(format!("{PEFT_PREFIX}{head}.default.{leaf}"))
    })
}

/// Adapters in a saved PEFT adapter file: `X` → `base_model.model.X`.
pub fn peft_adapter_file_map() -> NameMap {
    Arc::new(|name: &str| Some(format!("{PEFT_PREFIX}{name}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peft_names() {
        let spec = LoraSpec::default();
        let base = peft_state_dict_base_map(&spec);
        assert_eq!(
            base("model.layers.3.self_attn.q_proj.weight").unwrap(),
            "base_model.model.model.layers.3.self_attn.q_proj.base_layer.weight"
        );
        assert_eq!(
            base("model.layers.3.self_attn.k_proj.weight").unwrap(),
            "base_model.model.model.layers.3.self_attn.k_proj.weight"
        );
        assert_eq!(
            base("lm_head.weight").unwrap(),
            "base_model.model.lm_head.weight"
        );
        let ad = peft_state_dict_adapter_map();
        assert_eq!(
            ad("model.layers.0.self_attn.v_proj.lora_B.weight").unwrap(),
            "base_model.model.model.layers.0.self_attn.v_proj.lora_B.default.weight"
        );
        let file = peft_adapter_file_map();
        assert_eq!(
            file("model.layers.0.self_attn.v_proj.lora_B.weight").unwrap(),
            "base_model.model.model.layers.0.self_attn.v_proj.lora_B.weight"
        );
    }

    #[test]
    fn adapter_config_json_deserialises() {
        let s: LoraSpec = serde_json::from_str(
            r#"{"r": 4, "lora_alpha": 8, "lora_dropout": 0.1, "target_modules": ["v_proj", "q_proj"], "peft_type": "LORA"}"#,
        )
        .unwrap();
        assert_eq!(s.r, 4);
        assert!(s.targets("q_proj") && !s.targets("k_proj"));
        assert!(s.validate().is_ok());
        let bad = LoraSpec {
            target_modules: vec!["qkv".into()],
            ..LoraSpec::default()
        };
        assert!(bad.validate().unwrap_err().to_string().contains("qkv"));
    }
}
