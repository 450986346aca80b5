//! LLaMA decoding, hooks and LoRA training on random tiny models:
//! incremental KV-cache decoding equals a full pass, greedy generation is
//! deterministic and stops at eos, the layer hook sees every layer, and with
//! only LoRA trainable the gradients reach every adapter and no base weight.

use std::collections::HashMap;

use calico_model::llama::{
    generate, generate_greedy, generate_sampled, ForwardOptions, GenerateOptions, KvCache,
    LayerHook, Llama, LlamaConfig, LoraSpec, Sampling,
};
use candle_core::{DType, Device, Result, Tensor, D};
use candle_nn::{VarBuilder, VarMap};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn tiny_config(tied: bool) -> LlamaConfig {
    LlamaConfig {
        vocab_size: 61,
        hidden_size: 32,
        intermediate_size: 48,
        num_hidden_layers: 3,
        num_attention_heads: 4,
        num_key_value_heads: Some(2),
        rope_theta: 10000.0,
        tie_word_embeddings: tied,
        rms_norm_eps: 1e-5,
        ..LlamaConfig::smollm2_135m()
    }
}

fn rand_tensor(shape: &[usize], scale: f32, offset: f32, rng: &mut ChaCha8Rng) -> Tensor {
    let n: usize = shape.iter().product();
    let v: Vec<f32> = (0..n)
        .map(|_| offset + scale * (rng.random::<f32>() * 2.0 - 1.0))
        .collect();
    Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
}

/// Every tensor of a checkpoint for `cfg`, under HF names, random.
fn random_weights(cfg: &LlamaConfig, seed: u64) -> HashMap<String, Tensor> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let (h, i, v) = (cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size);
    let (qd, kvd) = (
        cfg.num_attention_heads * cfg.head_dim(),
        cfg.kv_heads() * cfg.head_dim(),
    );
    let mut w = HashMap::new();
    let mut lin = |name: String, out: usize, inp: usize, rng: &mut ChaCha8Rng| {
        let s = 1.5 / (inp as f32).sqrt();
        w.insert(name, rand_tensor(&[out, inp], s, 0.0, rng));
    };
    lin("model.embed_tokens.weight".into(), v, h, &mut rng);
    if !cfg.tie_word_embeddings {
        lin("lm_head.weight".into(), v, h, &mut rng);
    }
    for l in 0..cfg.num_hidden_layers {
        let p = format!("model.layers.{l}");
        lin(format!("{p}.self_attn.q_proj.weight"), qd, h, &mut rng);
        lin(format!("{p}.self_attn.k_proj.weight"), kvd, h, &mut rng);
        lin(format!("{p}.self_attn.v_proj.weight"), kvd, h, &mut rng);
        lin(format!("{p}.self_attn.o_proj.weight"), h, qd, &mut rng);
        lin(format!("{p}.mlp.gate_proj.weight"), i, h, &mut rng);
        lin(format!("{p}.mlp.up_proj.weight"), i, h, &mut rng);
        lin(format!("{p}.mlp.down_proj.weight"), h, i, &mut rng);
    }
    for l in 0..cfg.num_hidden_layers {
        for n in ["input_layernorm", "post_attention_layernorm"] {
            w.insert(
                format!("model.layers.{l}.{n}.weight"),
                rand_tensor(&[h], 0.2, 1.0, &mut rng),
            );
        }
    }
    w.insert(
        "model.norm.weight".into(),
        rand_tensor(&[h], 0.2, 1.0, &mut rng),
    );
    w
}

fn model(cfg: &LlamaConfig, seed: u64) -> Llama {
    let vb = VarBuilder::from_tensors(random_weights(cfg, seed), DType::F32, &Device::Cpu);
    Llama::new(cfg, vb).unwrap()
}

fn ids(rows: &[Vec<u32>]) -> Tensor {
    Tensor::new(rows.to_vec(), &Device::Cpu).unwrap()
}

fn random_ids(cfg: &LlamaConfig, b: usize, t: usize, seed: u64) -> Vec<Vec<u32>> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    (0..b)
        .map(|_| {
            (0..t)
                .map(|_| rng.random_range(0..cfg.vocab_size as u32))
                .collect()
        })
        .collect()
}

/// `max|a − b| / max|b|`.
fn rel(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims());
    let d = (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    let s = b
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    d / s.max(1e-6)
}

fn step(
    m: &Llama,
    tokens: &[Vec<u32>],
    mask: Option<&Tensor>,
    cache: &mut KvCache,
) -> Result<Tensor> {
    let out = m.forward_embeds(
        &m.embed(&ids(tokens))?,
        ForwardOptions {
            attention_mask: mask,
            cache: Some(cache),
            logits: true,
            ..Default::default()
        },
    )?;
    Ok(out.logits.unwrap())
}

#[test]
fn incremental_decoding_matches_a_full_forward() {
    for tied in [false, true] {
        let cfg = tiny_config(tied);
        let m = model(&cfg, 1);
        let seq = random_ids(&cfg, 1, 10, 2);
        let full = m.forward(&ids(&seq), None).unwrap();
        // Prefill 4, then 1, 3 and 1 at a time.
        let mut cache = KvCache::new(&cfg);
        let mut at = 0;
        for chunk in [4, 1, 3, 1, 1] {
            let part: Vec<Vec<u32>> = vec![seq[0][at..at + chunk].to_vec()];
            let got = step(&m, &part, None, &mut cache).unwrap();
            let want = full.narrow(1, at, chunk).unwrap();
            let e = rel(&got, &want);
            assert!(e < 1e-5, "tied {tied}: tokens {at}..{}: {e}", at + chunk);
            at += chunk;
        }
        assert_eq!(cache.len(), 10);
        cache.reset();
        assert_eq!(cache.len(), 0);
    }
}

#[test]
fn left_padding_with_the_cache_matches_unpadded_rows() {
    let cfg = tiny_config(false);
    let m = model(&cfg, 3);
    let seq = random_ids(&cfg, 2, 9, 4);
    // Row 0 is left-padded by 3 (its real tokens are seq[0][3..]).
    let mask_rows = [[0f32, 0., 0., 1., 1., 1., 1., 1., 1.], [1.; 9]];
    let mask = Tensor::new(&mask_rows, &Device::Cpu).unwrap();
    let full = m.forward(&ids(&seq), Some(&mask)).unwrap();
    let alone0 = m.forward(&ids(&[seq[0][3..].to_vec()]), None).unwrap();
    let alone1 = m.forward(&ids(&[seq[1].clone()]), None).unwrap();
    assert!(
        rel(
            &full.narrow(1, 3, 6).unwrap().get(0).unwrap(),
            &alone0.get(0).unwrap()
        ) < 1e-5
    );
    assert!(rel(&full.get(1).unwrap(), &alone1.get(0).unwrap()) < 1e-5);

    // Prefill 5 with its (2, 5) mask, then single tokens with no mask: the
    // cache remembers the padding.
    let mut cache = KvCache::new(&cfg);
    let head: Vec<Vec<u32>> = seq.iter().map(|r| r[..5].to_vec()).collect();
    let got = step(&m, &head, Some(&mask.narrow(1, 0, 5).unwrap()), &mut cache).unwrap();
    assert!(
        rel(
            &got.get(1).unwrap(),
            &full.get(1).unwrap().narrow(0, 0, 5).unwrap()
        ) < 1e-5
    );
    assert!(
        rel(
            &got.get(0).unwrap().narrow(0, 3, 2).unwrap(),
            &alone0.get(0).unwrap().narrow(0, 0, 2).unwrap()
        ) < 1e-5
    );
    for at in 5..9 {
        let tok: Vec<Vec<u32>> = seq.iter().map(|r| vec![r[at]]).collect();
        // Alternate between no mask and HF's full (B, past + 1) mask.
        let m_full = mask.narrow(1, 0, at + 1).unwrap();
        let mask_arg = if at % 2 == 0 { None } else { Some(&m_full) };
        let got = step(&m, &tok, mask_arg, &mut cache).unwrap();
        let want = full.narrow(1, at, 1).unwrap();
        assert!(rel(&got, &want) < 1e-5, "position {at}");
    }
}

#[test]
fn greedy_generation_is_deterministic_and_stops_at_eos() {
    let cfg = tiny_config(true);
    let m = model(&cfg, 5);
    let prompt = random_ids(&cfg, 1, 5, 6).remove(0);
    let a = generate_greedy(&m, &prompt, 12, None).unwrap();
    let b = generate_greedy(&m, &prompt, 12, None).unwrap();
    assert_eq!(a, b);
    assert_eq!(a.len(), 12);
    // Each token is the argmax of a full forward over what came before.
    let mut all = prompt.clone();
    all.extend(&a[..11]);
    let logits = m.forward(&ids(&[all]), None).unwrap();
    let argmax: Vec<u32> = logits
        .get(0)
        .unwrap()
        .narrow(0, prompt.len() - 1, 12)
        .unwrap()
        .argmax(D::Minus1)
        .unwrap()
        .to_vec1()
        .unwrap();
    assert_eq!(argmax, a);
    // Stop at the first occurrence of a chosen eos, which is included.
    let k = 4.min(a.len() - 1);
    let eos = a[k];
    let first = a.iter().position(|&t| t == eos).unwrap();
    let c = generate_greedy(&m, &prompt, 12, Some(eos)).unwrap();
    assert_eq!(c, a[..=first].to_vec());

    // Seeded sampling is reproducible.
    let mut r1 = ChaCha8Rng::seed_from_u64(9);
    let mut r2 = ChaCha8Rng::seed_from_u64(9);
    let s1 = generate_sampled(&m, &prompt, 10, None, 1.0, 0.9, &mut r1).unwrap();
    let s2 = generate_sampled(&m, &prompt, 10, None, 1.0, 0.9, &mut r2).unwrap();
    assert_eq!(s1, s2);
    assert!(s1.iter().all(|&t| (t as usize) < cfg.vocab_size));
}

struct Recorder {
    seen: Vec<usize>,
    add: Option<(usize, Tensor)>,
}

impl LayerHook for Recorder {
    fn after_layer(&mut self, layer: usize, h: &Tensor) -> Result<Option<Tensor>> {
        self.seen.push(layer);
        match &self.add {
            Some((l, t)) if *l == layer => Ok(Some(h.broadcast_add(t)?)),
            _ => Ok(None),
        }
    }
}

#[test]
fn the_layer_hook_sees_every_layer_once_and_can_change_the_output() {
    let cfg = tiny_config(false);
    let m = model(&cfg, 7);
    let x = m.embed(&ids(&random_ids(&cfg, 2, 6, 8))).unwrap();
    let run = |hook: Option<&mut dyn LayerHook>| {
        m.forward_embeds(
            &x,
            ForwardOptions {
                hook,
                logits: true,
                ..Default::default()
            },
        )
        .unwrap()
    };
    let plain = run(None);
    let mut rec = Recorder {
        seen: vec![],
        add: None,
    };
    let same = run(Some(&mut rec));
    assert_eq!(rec.seen, (0..cfg.num_hidden_layers).collect::<Vec<_>>());
    assert_eq!(
        rel(
            same.logits.as_ref().unwrap(),
            plain.logits.as_ref().unwrap()
        ),
        0.0
    );
    assert_eq!(rel(&same.last_hidden_state, &plain.last_hidden_state), 0.0);

    let delta = Tensor::full(0.5f32, cfg.hidden_size, &Device::Cpu).unwrap();
    let mut rec = Recorder {
        seen: vec![],
        add: Some((1, delta)),
    };
    let changed = run(Some(&mut rec));
    assert_eq!(rec.seen.len(), cfg.num_hidden_layers);
    assert!(
        rel(
            changed.logits.as_ref().unwrap(),
            plain.logits.as_ref().unwrap()
        ) > 1e-3
    );

    // In generation the hook runs on the prefill pass only.
    let mut rec = Recorder {
        seen: vec![],
        add: None,
    };
    let opts = GenerateOptions {
        max_new_tokens: 4,
        eos: vec![],
        sampling: Sampling::Greedy,
    };
    let toks = generate(&m, &x.narrow(0, 0, 1).unwrap(), &opts, Some(&mut rec), None).unwrap();
    assert_eq!(toks.len(), 4);
    assert_eq!(rec.seen, (0..cfg.num_hidden_layers).collect::<Vec<_>>());
}

/// Gives every adapter variable a random non-zero value (a fresh `lora_B`
/// is zero, which would also zero `lora_A`'s gradient).
/// A training pass over input embeddings `x` (LoRA dropout drawn from
/// `seed`) and the gradients of `mean(logits²)`: the logits and the store.
fn training_pass(
    m: &Llama,
    x: &Tensor,
    mask: &Tensor,
    seed: u64,
) -> (Tensor, candle_core::backprop::GradStore) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let out = m
        .forward_embeds(
            x,
            ForwardOptions {
                attention_mask: Some(mask),
                logits: true,
                rng: Some(&mut rng),
                ..Default::default()
            },
        )
        .unwrap();
    let logits = out.logits.unwrap();
    let grads = logits
        .sqr()
        .unwrap()
        .mean_all()
        .unwrap()
        .backward()
        .unwrap();
    (logits, grads)
}

fn randomise_vars(map: &VarMap, seed: u64) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let data = map.data().lock().unwrap();
    let mut names: Vec<&String> = data.keys().collect();
    names.sort();
    for n in names {
        let v = &data[n];
        v.set(&rand_tensor(v.dims(), 0.2, 0.0, &mut rng)).unwrap();
    }
}

#[test]
fn with_only_lora_trainable_gradients_reach_every_adapter_and_no_base_weight() {
    let cfg = tiny_config(true);
    let base = random_weights(&cfg, 11);
    let spec = LoraSpec::default();
    let varmap = VarMap::new();
    let m = Llama::with_lora(
        &cfg,
        &spec,
        VarBuilder::from_tensors(base.clone(), DType::F32, &Device::Cpu),
        VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu),
    )
    .unwrap();
    {
        let names = varmap.data().lock().unwrap();
        assert_eq!(names.len(), cfg.num_hidden_layers * 2 * 2);
        assert!(names.contains_key("model.layers.0.self_attn.q_proj.lora_A.weight"));
        assert!(names.contains_key("model.layers.2.self_attn.v_proj.lora_B.weight"));
    }
    randomise_vars(&varmap, 12);

    // Padding exercises the per-row RoPE of the differentiable path.
    let tokens = random_ids(&cfg, 2, 7, 13);
    let mask = Tensor::new(&[[0f32, 0., 1., 1., 1., 1., 1.], [1.; 7]], &Device::Cpu).unwrap();
    let x = m.embed(&ids(&tokens)).unwrap();

    // The same adapters as plain tensors (fused kernels) give the same logits.
    let mut frozen = base.clone();
    for (n, v) in varmap.data().lock().unwrap().iter() {
        frozen.insert(n.clone(), v.as_tensor().detach());
    }
    let vb = VarBuilder::from_tensors(frozen, DType::F32, &Device::Cpu);
    let fused = Llama::with_lora(&cfg, &spec, vb.clone(), vb).unwrap();
    let want = fused.forward(&ids(&tokens), Some(&mask)).unwrap();
    let got = m.forward(&ids(&tokens), Some(&mask)).unwrap();
    assert!(rel(&got, &want) < 1e-5, "{}", rel(&got, &want));

    let (_, grads) = training_pass(&m, &x, &mask, 14);
    calico_nn::testing::assert_gradients_reach(
        &grads,
        varmap.data().lock().unwrap().iter(),
        "LoRA",
    );
    let mut base_tensors: Vec<&Tensor> = vec![m.embed_weight().unwrap()];
    for l in m.layers() {
        base_tensors.extend([
            l.self_attn.q_proj.weight().unwrap(),
            l.self_attn.k_proj.weight().unwrap(),
            l.self_attn.v_proj.weight().unwrap(),
            l.self_attn.o_proj.weight().unwrap(),
            l.mlp.gate_proj.weight().unwrap(),
            l.mlp.up_proj.weight().unwrap(),
            l.mlp.down_proj.weight().unwrap(),
            &l.input_layernorm.weight,
            &l.post_attention_layernorm.weight,
        ]);
    }
    for t in base_tensors {
        assert!(grads.get(t).is_none(), "a base weight received a gradient");
    }
}

#[test]
fn merge_and_unmerge_keep_the_function() {
    let cfg = tiny_config(false);
    let varmap = VarMap::new();
    let spec = LoraSpec::default();
    let mut m = Llama::with_lora(
        &cfg,
        &spec,
        VarBuilder::from_tensors(random_weights(&cfg, 21), DType::F32, &Device::Cpu),
        VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu),
    )
    .unwrap();
    randomise_vars(&varmap, 22);
    let t = ids(&random_ids(&cfg, 1, 6, 23));
    let a = m.forward(&t, None).unwrap();
    m.merge_lora().unwrap();
    let b = m.forward(&t, None).unwrap();
    m.unmerge_lora().unwrap();
    let c = m.forward(&t, None).unwrap();
    assert!(rel(&b, &a) < 1e-5 && rel(&c, &a) < 1e-5);
    let plain = model(&cfg, 21).forward(&t, None).unwrap();
    assert!(rel(&a, &plain) > 1e-3, "the adapters must matter");
}

#[test]
fn resized_vocabularies_start_at_the_mean_and_train_the_new_rows() {
    for tied in [true, false] {
        let cfg = tiny_config(tied);
        let weights = random_weights(&cfg, 31);
        let vb = VarBuilder::from_tensors(weights.clone(), DType::F32, &Device::Cpu);
        let mut frozen = Llama::new(&cfg, vb.clone()).unwrap();
        let mut trained = Llama::new(&cfg, vb).unwrap();
        frozen
            .resize_token_embeddings(cfg.vocab_size + 3, None)
            .unwrap();
        let varmap = VarMap::new();
        trained
            .resize_token_embeddings(cfg.vocab_size + 3, Some(&varmap))
            .unwrap();
        assert_eq!(trained.config().vocab_size, cfg.vocab_size + 3);
        let new_id = cfg.vocab_size as u32 + 1;
        let e = trained
            .embed(&ids(&[vec![new_id]]))
            .unwrap()
            .flatten_all()
            .unwrap();
        let mean = weights["model.embed_tokens.weight"].mean(0).unwrap();
        assert!(rel(&e, &mean) < 1e-6);
        let t = ids(&[vec![3, new_id, 7, cfg.vocab_size as u32 + 2]]);
        let a = frozen.forward(&t, None).unwrap();
        let b = trained.forward(&t, None).unwrap();
        assert_eq!(a.dims(), &[1, 4, cfg.vocab_size + 3]);
        assert!(rel(&b, &a) < 1e-5);
        let names: Vec<String> = varmap.data().lock().unwrap().keys().cloned().collect();
        assert_eq!(names.len(), if tied { 1 } else { 2 });
        let grads = b.sqr().unwrap().mean_all().unwrap().backward().unwrap();
        for (n, v) in varmap.data().lock().unwrap().iter() {
            assert!(grads.get(v.as_tensor()).is_some(), "no gradient for {n}");
        }
        assert!(trained
            .embed(&ids(&[vec![cfg.vocab_size as u32 + 3]]))
            .is_err());
    }
}

/// Vocabulary tables kept in Q8_0 blocks (`--quantized-llm`): the model
/// reads the same numbers as one built over their dequantised values, and
/// grows its vocabulary with float rows beside the blocks, frozen (twice,
/// too) or trainable.
#[test]
fn quantized_vocabulary_tables_read_like_their_dequantized_values() {
    use calico_model::llama::QuantizedWeights;
    use candle_core::quantized::{GgmlDType, QTensor};
    for tied in [true, false] {
        let cfg = tiny_config(tied);
        let mut weights = random_weights(&cfg, 41);
        let mut quantized = QuantizedWeights::default();
        let tables: &[&str] = if tied {
            &["model.embed_tokens.weight"]
        } else {
            &["model.embed_tokens.weight", "lm_head.weight"]
        };
        for name in tables {
            let q = QTensor::quantize(&weights[*name], GgmlDType::Q8_0).unwrap();
            // The float model reads the blocks' values; the quantised one
            // never sees a float copy.
            weights.insert(name.to_string(), q.dequantize(&Device::Cpu).unwrap());
            quantized
                .tensors
                .insert(name.to_string(), std::sync::Arc::new(q));
        }
        let float_vb = VarBuilder::from_tensors(weights.clone(), DType::F32, &Device::Cpu);
        let rest: HashMap<String, Tensor> = weights
            .iter()
            .filter(|(n, _)| !tables.contains(&n.as_str()))
            .map(|(n, t)| (n.clone(), t.clone()))
            .collect();
        let rest_vb = VarBuilder::from_tensors(rest, DType::F32, &Device::Cpu);
        let mut float = Llama::new(&cfg, float_vb).unwrap();
        let mut q = Llama::new_quantized(&cfg, rest_vb.clone(), &quantized).unwrap();
        assert!(q.embed_weight().is_none() && float.embed_weight().is_some());
        let t = ids(&[vec![3, 60, 7, 0, 12]]);
        let err = rel(
            &q.forward(&t, None).unwrap(),
            &float.forward(&t, None).unwrap(),
        );
        assert!(err < 1e-5, "tied {tied}: {err}");

        // Frozen rows, added twice: the quantised table cannot grow, so they
        // sit beside it.
        for grow in [2, 3] {
            let n = float.config().vocab_size + grow;
            float.resize_token_embeddings(n, None).unwrap();
            q.resize_token_embeddings(n, None).unwrap();
        }
        let n = cfg.vocab_size + 5;
        let t = ids(&[vec![3, 61, 7, n as u32 - 1, 12]]);
        let (a, b) = (
            float.forward(&t, None).unwrap(),
            q.forward(&t, None).unwrap(),
        );
        assert_eq!(b.dims(), &[1, 5, n]);
        assert!(rel(&b, &a) < 1e-5, "tied {tied}: {}", rel(&b, &a));
        // Trainable rows cannot follow frozen ones.
        let e = q
            .resize_token_embeddings(n + 1, Some(&VarMap::new()))
            .unwrap_err()
            .to_string();
        assert!(e.contains("after frozen ones"), "{e}");

        // Trainable rows on a fresh quantised model: gradients reach them.
        let mut q = Llama::new_quantized(&cfg, rest_vb, &quantized).unwrap();
        let varmap = VarMap::new();
        q.resize_token_embeddings(cfg.vocab_size + 3, Some(&varmap))
            .unwrap();
        let out = q.forward(&ids(&[vec![1, 62, 5]]), None).unwrap();
        let grads = out.sqr().unwrap().mean_all().unwrap().backward().unwrap();
        for (name, v) in varmap.data().lock().unwrap().iter() {
            assert!(grads.get(v.as_tensor()).is_some(), "no gradient for {name}");
        }
    }
}

/// QLoRA: with every projection and vocabulary table kept block-quantised,
/// LoRA trains as it does over the dequantised float weights: the same
/// logits and, for every adapter and the input embeddings, the same
/// gradients (the quantised weights themselves are frozen).
#[test]
fn lora_trains_through_quantized_weights_as_through_their_dequantized_values() {
    use calico_model::llama::QuantizedWeights;
    use candle_core::quantized::{GgmlDType, QTensor};
    use candle_core::Var;
    for (tied, dtype) in [(true, GgmlDType::Q4_0), (false, GgmlDType::Q8_0)] {
        let cfg = LlamaConfig {
            intermediate_size: 64,
            ..tiny_config(tied)
        };
        let mut weights = random_weights(&cfg, 51);
        let mut quantized = QuantizedWeights::default();
        let mut rest = HashMap::new();
        for (name, t) in weights.iter_mut() {
            if t.rank() == 2 {
                let q = QTensor::quantize(t, dtype).unwrap();
                *t = q.dequantize(&Device::Cpu).unwrap();
                quantized
                    .tensors
                    .insert(name.clone(), std::sync::Arc::new(q));
            } else {
                rest.insert(name.clone(), t.clone());
            }
        }
        assert_eq!(
            quantized.len(),
            7 * cfg.num_hidden_layers + if tied { 1 } else { 2 }
        );
        let spec = LoraSpec::default();
        let (fmap, qmap) = (VarMap::new(), VarMap::new());
        let float = Llama::with_lora(
            &cfg,
            &spec,
            VarBuilder::from_tensors(weights, DType::F32, &Device::Cpu),
            VarBuilder::from_varmap(&fmap, DType::F32, &Device::Cpu),
        )
        .unwrap();
        let q = Llama::with_lora_quantized(
            &cfg,
            &spec,
            VarBuilder::from_tensors(rest, DType::F32, &Device::Cpu),
            Some(&quantized),
            VarBuilder::from_varmap(&qmap, DType::F32, &Device::Cpu),
        )
        .unwrap();
        randomise_vars(&fmap, 52);
        randomise_vars(&qmap, 52);
        let tokens = random_ids(&cfg, 2, 6, 53);
        let mask = Tensor::new(&[[0f32, 1., 1., 1., 1., 1.], [1.; 6]], &Device::Cpu).unwrap();
        let run = |m: &Llama, map: &VarMap| {
            let x = Var::from_tensor(&m.embed(&ids(&tokens)).unwrap()).unwrap();
            let (logits, grads) = training_pass(m, x.as_tensor(), &mask, 54);
            let data = map.data().lock().unwrap();
            let input = "inputs_embeds".to_string();
            calico_nn::testing::assert_gradients_reach(
                &grads,
                data.iter().chain(std::iter::once((&input, &x))),
                &format!("{dtype:?}"),
            );
            let mut g: Vec<(String, Tensor)> = data
                .iter()
                .map(|(n, v)| (n.clone(), grads.get(v.as_tensor()).unwrap().clone()))
                .collect();
            g.sort_by(|a, b| a.0.cmp(&b.0));
            g.push((
                "inputs_embeds".into(),
                grads.get(x.as_tensor()).unwrap().clone(),
            ));
            (logits, g)
        };
        let (fl, fg) = run(&float, &fmap);
        let (ql, qg) = run(&q, &qmap);
        assert!(rel(&ql, &fl) < 1e-5, "{dtype:?} logits: {}", rel(&ql, &fl));
        assert_eq!(qg.len(), fg.len());
        for ((name, a), (_, b)) in qg.iter().zip(&fg) {
            assert!(rel(a, b) < 1e-5, "{dtype:?} {name}: {}", rel(a, b));
        }
    }
}
