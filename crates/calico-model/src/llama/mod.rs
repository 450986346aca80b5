//! The LLaMA-family language model (§3.2): HF tensor names, LoRA on q/v,
//! a hook in the layer loop for CAM (§3.4), KV-cache generation.

pub mod attention;
pub mod block;
pub mod config;
pub mod generate;
pub mod lora;
pub mod model;
mod parity;
pub mod rope;

use candle_core::quantized::QTensor;

pub use calico_nn::QuantizedMatmul;
pub use config::LlamaConfig;
pub use generate::{generate, generate_greedy, generate_sampled, GenerateOptions, Sampling};
pub use lora::{LoraSpec, LORA_TARGETS};
pub use model::{ForwardOptions, KvCache, LayerHook, Llama, LlamaOutput};
pub use parity::{parity_forward, parity_forward_lora};

/// Block-quantised LLM weights kept in their stored types (llama.cpp's
/// Q4_K, Q8_0, …) for inference, by full HF name
/// (`model.layers.0.self_attn.q_proj.weight`, `model.embed_tokens.weight`),
/// and how they are multiplied;
/// the model reads these instead of the float tensors of its builder. See
/// [`crate::gguf::load_llama_gguf_quantized`].
#[derive(Debug, Clone, Default)]
pub struct QuantizedWeights {
    pub tensors: std::collections::HashMap<String, std::sync::Arc<QTensor>>,
    pub matmul: calico_nn::QuantizedMatmul,
}

impl QuantizedWeights {
    pub fn get(&self, name: &str) -> Option<&std::sync::Arc<QTensor>> {
        self.tensors.get(name)
    }

    pub fn len(&self) -> usize {
        self.tensors.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tensors.is_empty()
    }

    /// Bytes the quantised blocks take.
    pub fn size_in_bytes(&self) -> usize {
        self.tensors
            .values()
            .map(|q| q.storage_size_in_bytes())
            .sum()
    }

    /// How many weights of each storage type (`Q4_K` → 168), sorted.
    pub fn type_counts(&self) -> std::collections::BTreeMap<String, usize> {
        let mut m = std::collections::BTreeMap::new();
        for q in self.tensors.values() {
            *m.entry(format!("{:?}", q.dtype())).or_insert(0) += 1;
        }
        m
    }
}
