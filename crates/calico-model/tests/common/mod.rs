//! What the Calico tests on seeded random weights share: the prompt format,
//! a model over `ByteText`, prompts over it, uniform random tensors and
//! the largest difference between two tensors.

#![allow(dead_code)]

use std::collections::HashMap;

use calico_model::calico::Calico;
use calico_model::config::CalicoConfig;
use calico_model::prompt::{build, ByteText, PromptFormat, PromptLayout};
use candle_core::{Device, Tensor};
use candle_nn::VarMap;
use rand::Rng;
use rand_chacha::ChaCha8Rng;

/// The prompt format of `cfg` with a short system prompt.
pub fn format(cfg: &CalicoConfig) -> PromptFormat {
    PromptFormat {
        system: "SYS".into(),
        tokens_per_image: cfg.image_tokens(),
        im_start_end: true,
    }
}

/// A model of `cfg` with weights seeded by `seed`, its variables and its
/// frozen tensors; text is [`ByteText`].
pub fn model(cfg: &CalicoConfig, seed: u64) -> (Calico, VarMap, HashMap<String, Tensor>) {
    let map = VarMap::new();
    let (mut m, frozen) =
        Calico::random(cfg, ByteText::SPECIAL_IDS, &map, seed, &Device::Cpu).unwrap();
    m.set_prompt_format(format(cfg)).unwrap();
    (m, map, frozen)
}

/// Values uniform in [−1, 1).
pub fn randn(shape: &[usize], rng: &mut ChaCha8Rng) -> Tensor {
    let n: usize = shape.iter().product();
    let v: Vec<f32> = (0..n).map(|_| rng.random::<f32>() * 2.0 - 1.0).collect();
    Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
}

/// The two-image question the tests ask.
pub fn question() -> String {
    calico_text::templates::multi_image_prefix(2) + "Segment the common object."
}

/// [`question`] with `answer`, laid out for `cfg` over [`ByteText`].
pub fn layout(cfg: &CalicoConfig, answer: &str) -> PromptLayout {
    build(
        &question(),
        Some(answer),
        2,
        &ByteText,
        &ByteText::SPECIAL_IDS,
        &format(cfg),
        cfg.llm.max_position_embeddings,
    )
    .unwrap()
}

/// The largest absolute difference between `a` and `b`.
pub use calico_nn::testing::max_abs_diff as max_diff;
