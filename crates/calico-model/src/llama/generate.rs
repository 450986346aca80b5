//! Text generation with the KV cache: one prefill pass over the prompt, then
//! one token per step. Greedy decoding or temperature / top-k / top-p
//! sampling from a caller-seeded generator (reproducible).

use candle_core::{DType, Result, Tensor};
use rand::{Rng, RngCore};

use super::model::{ForwardOptions, KvCache, LayerHook, Llama};

/// How the next token is chosen.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Sampling {
    /// The most likely token (the first one on ties, like `torch.argmax`).
    Greedy,
    /// HF's sampling order: logits / temperature, keep the `top_k` largest
    /// (when set), keep the smallest set of most likely tokens whose
    /// probability reaches `top_p`, then draw.
    Sample {
        temperature: f64,
        top_p: f64,
        top_k: Option<usize>,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub struct GenerateOptions {
    pub max_new_tokens: usize,
    /// Generation stops after producing any of these.
    pub eos: Vec<u32>,
    pub sampling: Sampling,
}

fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &v) in logits.iter().enumerate() {
        if v > logits[best] {
            best = i;
        }
    }
    best as u32
}

/// Draws a token id from `logits` (see [`Sampling::Sample`]). A temperature
/// of 0 or less is greedy.
pub fn sample_token(
    logits: &[f32],
    temperature: f64,
    top_p: f64,
    top_k: Option<usize>,
    rng: &mut dyn RngCore,
) -> u32 {
    if temperature <= 0.0 || logits.is_empty() {
        return argmax(logits);
    }
    let mut order: Vec<u32> = (0..logits.len() as u32).collect();
    order.sort_by(|&a, &b| logits[b as usize].total_cmp(&logits[a as usize]));
    if let Some(k) = top_k.filter(|&k| k > 0 && k < order.len()) {
        // Ties with the k-th value stay, as in HF's TopKLogitsWarper.
        let kth = logits[order[k - 1] as usize];
        order.retain(|&i| logits[i as usize] >= kth);
    }
    let max = logits[order[0] as usize] as f64;
    let weights: Vec<f64> = order
        .iter()
        .map(|&i| ((logits[i as usize] as f64 - max) / temperature).exp())
        .collect();
    let total: f64 = weights.iter().sum();
    // Keep a token while the mass of the tokens ranked above it is < top_p.
    let mut kept = 0;
    let mut above = 0.0;
    for w in &weights {
        if kept > 0 && above >= top_p * total {
            break;
        }
        above += w;
        kept += 1;
    }
    let mass: f64 = weights[..kept].iter().sum();
    let mut u = rng.random::<f64>() * mass;
    for (i, w) in weights[..kept].iter().enumerate() {
        if u < *w {
            return order[i];
        }
        u -= w;
    }
    order[kept - 1]
}

fn last_logits(t: &Tensor) -> Result<Vec<f32>> {
    t.flatten_all()?.to_dtype(DType::F32)?.to_vec1()
}

/// Generates up to `opts.max_new_tokens` tokens after `prompt_embeds`
/// `(1, T, hidden)`. The hook (CAM) runs on the prefill pass only. Returns
/// the new tokens, ending with the end-of-sequence token when one was
/// produced. Sampling needs `rng`.
pub fn generate(
    model: &Llama,
    prompt_embeds: &Tensor,
    opts: &GenerateOptions,
    hook: Option<&mut dyn LayerHook>,
    mut rng: Option<&mut dyn RngCore>,
) -> Result<Vec<u32>> {
    let (b, t, _) = prompt_embeds.dims3()?;
    if b != 1 || t == 0 {
        candle_core::bail!(
            "generate takes one non-empty prompt (1, T, hidden), got {:?}",
            prompt_embeds.dims()
        );
    }
    if matches!(opts.sampling, Sampling::Sample { .. }) && rng.is_none() {
        candle_core::bail!("sampling needs a random generator");
    }
    let mut cache = KvCache::new(model.config());
    let out = model.forward_embeds(
        prompt_embeds,
        ForwardOptions {
            cache: Some(&mut cache),
            hook: hook.map(|h| h as &mut dyn LayerHook),
            ..Default::default()
        },
    )?;
    cache.detach();
    let last = out.last_hidden_state.narrow(1, t - 1, 1)?;
    let mut logits = last_logits(&model.logits(&last)?)?;
    let mut tokens = Vec::new();
    while tokens.len() < opts.max_new_tokens {
        let next = match opts.sampling {
            Sampling::Greedy => argmax(&logits),
            Sampling::Sample {
                temperature,
                top_p,
                top_k,
            } => match rng.as_deref_mut() {
                Some(r) => sample_token(&logits, temperature, top_p, top_k, r),
                None => argmax(&logits),
            },
        };
        tokens.push(next);
        if opts.eos.contains(&next) || tokens.len() == opts.max_new_tokens {
            break;
        }
        let ids = Tensor::new(&[[next]], model.device())?;
        let out = model.forward_embeds(
            &model.embed(&ids)?,
            ForwardOptions {
                cache: Some(&mut cache),
                logits: true,
                ..Default::default()
            },
        )?;
        cache.detach();
        let step = out
            .logits
            .ok_or_else(|| candle_core::Error::Msg("logits were not computed".into()))?;
        logits = last_logits(&step)?;
    }
    Ok(tokens)
}

fn prompt_embeds(model: &Llama, prompt_ids: &[u32]) -> Result<Tensor> {
    if prompt_ids.is_empty() {
        candle_core::bail!("generate needs a non-empty prompt");
    }
    let ids = Tensor::new(prompt_ids, model.device())?.unsqueeze(0)?;
    model.embed(&ids)
}

/// Greedy decoding with the KV cache; returns the new tokens (ending with
/// `eos` when it was produced).
pub fn generate_greedy(
    model: &Llama,
    prompt_ids: &[u32],
    max_new_tokens: usize,
    eos: Option<u32>,
) -> Result<Vec<u32>> {
    let opts = GenerateOptions {
        max_new_tokens,
        eos: eos.into_iter().collect(),
        sampling: Sampling::Greedy,
    };
    generate(model, &prompt_embeds(model, prompt_ids)?, &opts, None, None)
}

/// Temperature / top-p sampling with the KV cache, reproducible for a
/// seeded `rng`.
pub fn generate_sampled(
    model: &Llama,
    prompt_ids: &[u32],
    max_new_tokens: usize,
    eos: Option<u32>,
    temperature: f64,
    top_p: f64,
    rng: &mut dyn RngCore,
) -> Result<Vec<u32>> {
    let opts = GenerateOptions {
        max_new_tokens,
        eos: eos.into_iter().collect(),
        sampling: Sampling::Sample {
            temperature,
            top_p,
            top_k: None,
        },
    };
    generate(
        model,
        &prompt_embeds(model, prompt_ids)?,
        &opts,
        None,
        Some(rng),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn sampling_respects_top_p_top_k_and_the_seed() {
        let logits = [0.0f32, 3.0, 2.9, -5.0, 1.0];
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
        // top_p tiny: only the best token survives.
        for _ in 0..20 {
            assert_eq!(sample_token(&logits, 1.0, 1e-6, None, &mut rng), 1);
        }
        // top_k 2: only tokens 1 and 2.
        let draws: Vec<u32> = (0..200)
            .map(|_| sample_token(&logits, 1.0, 1.0, Some(2), &mut rng))
            .collect();
        assert!(draws.iter().all(|&d| d == 1 || d == 2));
        assert!(draws.contains(&1) && draws.contains(&2));
        // Same seed, same draws.
        let mut a = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        let mut b = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        let da: Vec<u32> = (0..50)
            .map(|_| sample_token(&logits, 0.8, 0.9, None, &mut a))
            .collect();
        let db: Vec<u32> = (0..50)
            .map(|_| sample_token(&logits, 0.8, 0.9, None, &mut b))
            .collect();
        assert_eq!(da, db);
        // Temperature 0 is greedy; argmax takes the first maximum.
        assert_eq!(sample_token(&logits, 0.0, 0.9, None, &mut a), 1);
        assert_eq!(argmax(&[1.0, 2.0, 2.0]), 1);
    }
}
