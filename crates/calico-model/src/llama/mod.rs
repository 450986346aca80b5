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

pub use config::LlamaConfig;
pub use generate::{generate, generate_greedy, generate_sampled, GenerateOptions, Sampling};
pub use lora::{LoraSpec, LORA_TARGETS};
pub use model::{ForwardOptions, KvCache, LayerHook, Llama, LlamaOutput};
pub use parity::{parity_forward, parity_forward_lora};
