//! The LLaMA-family language model (§3.2): HF tensor names, LoRA on q/v,
//! a hook in the layer loop for CAM (§3.4).

pub mod config;

pub use config::LlamaConfig;
