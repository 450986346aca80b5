//! Whole-model timings: Calico presets with random weights, and the real
//! SmolLM2 from its GGUF.
//!
//! ```text
//! cargo bench -p calico-model --bench calico -- [--preset tiny|small] [--repeats R]
//!     [--new-tokens N]
//! cargo bench -p calico-model --bench calico -- --gguf PATH [--prompt TEXT]
//!     [--new-tokens N] [--repeats R] [--quantized dequantize|q8]
//! ```
//!
//! **Preset mode** (default `tiny`) builds `Calico::random` for the preset
//! (seed 0) and times, for one pair of random images:
//! * `encode_images` — EVA → CEM → Q-Former → f_image and the SAM encoder
//!   for both images;
//! * `forward` — the teacher-forced pass of one sample whose answer holds
//!   two routed `[SEG]`s (image encoding, LLM with CAMs, mask decoding);
//! * `generate` — greedy generation of N new tokens (default 32) with the
//!   KV cache, image encoding included. The model's end-of-sequence id is
//!   set outside the vocabulary so that random weights cannot stop early
//!   (the `forward` sample is built with the usual id); the line reports
//!   the tokens actually generated.
//!
//! Each is run once as a warm-up, then R times (default 3); one JSON line
//! per operation with `best_s` and `mean_s`.
//!
//! **GGUF mode** loads a LLaMA-family GGUF (SmolLM2-135M-Instruct) with its
//! tokenizer, writes `--prompt` as a one-turn chat and greedily generates N
//! tokens with the KV cache, never stopping early: one prefill pass (last
//! position's logits only), then N − 1 one-token steps. One warm-up, then R
//! timed runs; prints one JSON line with the prompt ids, the best/mean
//! prefill time, the best/mean decode time of the N − 1 steps, decode
//! tokens/s (from the best) and the generated ids. The LLM is dequantised to
//! float32 at load, or with `--quantized M` its projections and vocabulary
//! tables stay in the file's blocks and are multiplied per
//! `calico_nn::QuantizedMatmul` `M` (the output head always dequantised);
//! the line then also holds the bytes of the LLM's weights as held
//! (`weights_mb`) and the process's peak resident memory (`peak_rss_mb`,
//! `VmHWM` from `/proc/self/status`).
//! `tools/bench/llm_bench.py` runs this beside transformers.

use std::path::PathBuf;
use std::time::Instant;

use calico_model::calico::{Calico, ImageInput, TrainBatch};
use calico_model::config::{view_size, CalicoConfig};
use calico_model::gguf::{load_llama_gguf, load_llama_gguf_quantized};
use calico_model::llama::{
    ForwardOptions, GenerateOptions, KvCache, Llama, QuantizedWeights, Sampling,
};
use calico_model::prompt::{build, ByteText, PromptFormat, SpecialIds};
use calico_model::tokenizer::CalicoTokenizer;
use calico_nn::QuantizedMatmul;
use candle_core::{DType, Device, Result, Tensor};
use candle_nn::VarMap;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

const USAGE: &str = "usage: calico [--preset tiny|small] [--repeats R] [--new-tokens N]\n       calico --gguf PATH [--prompt TEXT] [--new-tokens N] [--repeats R] [--quantized dequantize|q8]";
const DEFAULT_PROMPT: &str = "What is the capital of France?";

struct Args {
    preset: Option<String>,
    repeats: usize,
    new_tokens: usize,
    gguf: Option<PathBuf>,
    prompt: Option<String>,
    quantized: Option<QuantizedMatmul>,
}

fn parse_args() -> Args {
    let mut a = Args {
        preset: None,
        repeats: 3,
        new_tokens: 32,
        gguf: None,
        prompt: None,
        quantized: None,
    };
    let mut args = std::env::args().skip(1);
    let positive = |v: Option<String>, what: &str| -> usize {
        v.and_then(|v| v.parse().ok())
            .filter(|&r: &usize| r > 0)
            .unwrap_or_else(|| fail(&format!("{what} needs a positive integer\n{USAGE}")))
    };
    while let Some(arg) = args.next() {
        match arg.as_str() {
            // cargo bench passes --bench to the harness.
            "--bench" => {}
            "--preset" => {
                let p = args
                    .next()
                    .unwrap_or_else(|| fail(&format!("--preset needs a name\n{USAGE}")));
                if p != "tiny" && p != "small" {
                    fail(&format!(
                        "unknown preset `{p}` (this bench runs tiny or small)\n{USAGE}"
                    ));
                }
                a.preset = Some(p);
            }
            "--repeats" => a.repeats = positive(args.next(), "--repeats"),
            "--new-tokens" => a.new_tokens = positive(args.next(), "--new-tokens"),
            "--gguf" => {
                a.gguf =
                    Some(PathBuf::from(args.next().unwrap_or_else(|| {
                        fail(&format!("--gguf needs a path\n{USAGE}"))
                    })))
            }
            "--prompt" => {
                a.prompt = Some(
                    args.next()
                        .unwrap_or_else(|| fail(&format!("--prompt needs a text\n{USAGE}"))),
                )
            }
            "--quantized" => {
                let m = args.next().unwrap_or_default();
                a.quantized = Some(
                    m.parse()
                        .unwrap_or_else(|e: String| fail(&format!("--quantized: {e}\n{USAGE}"))),
                )
            }
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0)
            }
            other => fail(&format!("unknown argument `{other}`\n{USAGE}")),
        }
    }
    if a.gguf.is_some() && a.preset.is_some() {
        fail(&format!("--gguf cannot be combined with --preset\n{USAGE}"));
    }
    if a.gguf.is_none() && (a.prompt.is_some() || a.quantized.is_some()) {
        fail(&format!("--prompt and --quantized need --gguf\n{USAGE}"));
    }
    a
}

fn main() {
    let args = parse_args();
    let result = match &args.gguf {
        Some(path) if !path.is_file() => fail(&format!(
            "{} is not a file (run `bash tools/reference/fetch_llm.sh` for SmolLM2)",
            path.display()
        )),
        Some(path) => bench_gguf(&args, path),
        None => bench_preset(&args, args.preset.as_deref().unwrap_or("tiny")),
    };
    if let Err(e) = result {
        fail(&e.to_string());
    }
}

fn fail(msg: &str) -> ! {
    eprintln!("calico bench: {msg}");
    std::process::exit(2)
}

/// The process's peak resident memory (`VmHWM`), in MB; NaN where
/// `/proc/self/status` cannot tell.
fn peak_rss_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        })
        .map_or(f64::NAN, |kb| kb * 1024.0 / 1e6)
}

fn threads() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

/// Best and mean of a list of seconds.
fn stats(times: &[f64]) -> (f64, f64) {
    let best = times.iter().cloned().fold(f64::INFINITY, f64::min);
    (best, times.iter().sum::<f64>() / times.len() as f64)
}

/// Runs `f` once as a warm-up, then `repeats` times; returns the seconds of
/// the timed runs and the last result.
fn timed<T>(repeats: usize, mut f: impl FnMut() -> Result<T>) -> Result<(Vec<f64>, T)> {
    let mut last = f()?;
    let mut times = Vec::with_capacity(repeats);
    for _ in 0..repeats {
        let t = Instant::now();
        last = f()?;
        times.push(t.elapsed().as_secs_f64());
    }
    Ok((times, last))
}

// ------------------------------------------------------------ preset mode

const ANSWER: &str =
    "The chair: <p> a seat </p> [SEG] (IMAGE1) and <p> a seat </p> [SEG] (IMAGE2).";

fn randn(shape: &[usize], rng: &mut ChaCha8Rng) -> Result<Tensor> {
    let n: usize = shape.iter().product();
    let v: Vec<f32> = (0..n).map(|_| rng.random::<f32>() * 2.0 - 1.0).collect();
    Tensor::from_vec(v, shape, &Device::Cpu)
}

fn image(cfg: &CalicoConfig, seed: u64) -> Result<ImageInput> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let c = cfg.clip_view_size();
    let (dh, dw) = view_size(&cfg.views.dino);
    let s = cfg.sam_encoder.img_size;
    Ok(ImageInput {
        clip: randn(&[3, c, c], &mut rng)?,
        dino: randn(&[3, dh, dw], &mut rng)?,
        sam: randn(&[3, s, s], &mut rng)?,
        sam_resized: (s, s * 3 / 4),
        original: (480, 360),
    })
}

fn line(preset: &str, op: &str, times: &[f64], extra: &str) {
    let (best, mean) = stats(times);
    println!(
        "{{\"preset\":\"{preset}\",\"op\":\"{op}\",\"best_s\":{best:.6},\"mean_s\":{mean:.6},\"repeats\":{},\"threads\":{}{extra}}}",
        times.len(),
        threads()
    );
}

fn bench_preset(args: &Args, preset: &str) -> Result<()> {
    let cfg = CalicoConfig::preset(preset).map_err(|e| candle_core::Error::Msg(e.to_string()))?;
    let sam = &cfg.sam_encoder;
    let sam_label = format!(
        "{} blocks, {} wide, {} px",
        sam.depth, sam.embed_dim, sam.img_size
    );

    // The model's eos is outside the vocabulary, so generation runs to N.
    let model_ids = SpecialIds {
        eos: u32::MAX,
        ..ByteText::SPECIAL_IDS
    };
    let t = Instant::now();
    let map = VarMap::new();
    let (mut model, frozen) = Calico::random(&cfg, model_ids, &map, 0, &Device::Cpu)?;
    let format = PromptFormat::vicuna_v1(cfg.image_tokens());
    model.set_prompt_format(format.clone())?;
    let build_s = t.elapsed().as_secs_f64();
    let params: usize = frozen.values().map(|t| t.elem_count()).sum::<usize>()
        + map
            .all_vars()
            .iter()
            .map(|v| v.as_tensor().elem_count())
            .sum::<usize>();
    println!(
        "{{\"preset\":\"{preset}\",\"op\":\"build\",\"seconds\":{build_s:.3},\"params\":{params},\"sam_encoder\":\"{sam_label}\",\"threads\":{}}}",
        threads()
    );
    drop(frozen);

    let images = vec![image(&cfg, 1)?, image(&cfg, 2)?];
    let refs: Vec<&ImageInput> = images.iter().collect();
    let question = calico_text::templates::multi_image_prefix(2) + "Segment the common object.";
    let sam_note = format!(",\"sam_encoder\":\"{sam_label}\"");

    // Image encoding of the pair.
    let (times, _) = timed(args.repeats, || model.encode_images(&refs))?;
    let encode_best = stats(&times).0;
    line(
        preset,
        "encode_images",
        &times,
        &format!(",\"images\":2{sam_note}"),
    );

    // Teacher-forced forward of one sample with two [SEG]s.
    let layout = build(
        &question,
        Some(ANSWER),
        2,
        &ByteText,
        &ByteText::SPECIAL_IDS,
        &format,
        cfg.llm.max_position_embeddings,
    )
    .map_err(|e| candle_core::Error::Msg(e.to_string()))?;
    let seq = layout.input_ids.len();
    let batch = TrainBatch {
        layouts: vec![layout],
        images: vec![images.clone()],
    };
    let (times, out) = timed(args.repeats, || model.forward(&batch, &ByteText, None))?;
    let masks: usize = out.mask_logits.iter().map(|m| m.len()).sum();
    line(
        preset,
        "forward",
        &times,
        &format!(",\"batch\":1,\"seq_len\":{seq},\"masks\":{masks}{sam_note}"),
    );

    // Greedy generation of N tokens.
    let opts = GenerateOptions {
        max_new_tokens: args.new_tokens,
        eos: Vec::new(),
        sampling: Sampling::Greedy,
    };
    let prompt_len = model.prompt(&question, 2, &ByteText)?.input_ids.len();
    let (times, answer) = timed(args.repeats, || {
        model.generate(&question, &images, &ByteText, &opts, None)
    })?;
    let n = answer.token_ids.len();
    let best = stats(&times).0;
    let after_encode = if best > encode_best {
        n as f64 / (best - encode_best)
    } else {
        f64::NAN
    };
    line(
        preset,
        "generate",
        &times,
        &format!(
            ",\"prompt_len\":{prompt_len},\"new_tokens\":{},\"generated\":{n},\"tokens_per_s\":{:.3},\"tokens_per_s_without_encode\":{:.3}{sam_note}",
            args.new_tokens,
            n as f64 / best,
            after_encode
        ),
    );

    Ok(())
}

// -------------------------------------------------------------- GGUF mode

/// One prefill + N − 1 decode steps, greedy, never stopping early.
/// Returns (prefill seconds, decode seconds, generated ids).
fn greedy_run(model: &Llama, prompt_ids: &[u32], n: usize) -> Result<(f64, f64, Vec<u32>)> {
    let dev = model.device();
    let t = Instant::now();
    let mut cache = KvCache::new(model.config());
    let ids = Tensor::new(prompt_ids, dev)?.unsqueeze(0)?;
    let out = model.forward_embeds(
        &model.embed(&ids)?,
        ForwardOptions {
            cache: Some(&mut cache),
            ..Default::default()
        },
    )?;
    let last = out.last_hidden_state.narrow(1, prompt_ids.len() - 1, 1)?;
    let logits = model.logits(&last)?;
    let mut tokens = vec![argmax(&logits)?];
    let prefill = t.elapsed().as_secs_f64();
    let t = Instant::now();
    while tokens.len() < n {
        let ids = Tensor::new(&[[*tokens.last().unwrap_or(&0)]], dev)?;
        let out = model.forward_embeds(
            &model.embed(&ids)?,
            ForwardOptions {
                cache: Some(&mut cache),
                logits: true,
                ..Default::default()
            },
        )?;
        let logits = out
            .logits
            .ok_or_else(|| candle_core::Error::Msg("logits were not computed".into()))?;
        tokens.push(argmax(&logits)?);
    }
    Ok((prefill, t.elapsed().as_secs_f64(), tokens))
}

/// Index of the largest logit (the first on ties, like `torch.argmax`).
fn argmax(logits: &Tensor) -> Result<u32> {
    let v: Vec<f32> = logits.flatten_all()?.to_dtype(DType::F32)?.to_vec1()?;
    let mut best = 0;
    for (i, &x) in v.iter().enumerate() {
        if x > v[best] {
            best = i;
        }
    }
    Ok(best as u32)
}

fn bench_gguf(args: &Args, path: &PathBuf) -> Result<()> {
    let device = Device::Cpu;
    let t = Instant::now();
    let (cfg, ckpt, quantized) = match args.quantized {
        Some(m) => load_llama_gguf_quantized(path, &device, m)?,
        None => {
            let (cfg, ckpt) = load_llama_gguf(path, &device)?;
            (cfg, ckpt, QuantizedWeights::default())
        }
    };
    let model = Llama::new_quantized(&cfg, ckpt.var_builder(DType::F32, &device), &quantized)?;
    let tok = CalicoTokenizer::from_gguf(path)?;
    let load_s = t.elapsed().as_secs_f64();
    let float_bytes: usize = ckpt
        .names()
        .iter()
        .map(|n| {
            ckpt.get(n, &device)
                .map(|t| t.elem_count() * t.dtype().size_in_bytes())
        })
        .sum::<Result<usize>>()?;
    let weights_mb = (float_bytes + quantized.size_in_bytes()) as f64 / 1e6;
    let llm_weights = match args.quantized {
        Some(m) => {
            let types: Vec<String> = quantized
                .type_counts()
                .into_iter()
                .map(|(t, n)| format!("{n} {t}"))
                .collect();
            format!("{}, {}", types.join(" + "), m.name())
        }
        None => "float32".to_string(),
    };
    let text = tok.chat_prompt(args.prompt.as_deref().unwrap_or(DEFAULT_PROMPT))?;
    let prompt_ids = tok.encode(&text, true)?;
    if prompt_ids.is_empty() {
        candle_core::bail!("the prompt encodes to no tokens");
    }
    if prompt_ids.len() + args.new_tokens > cfg.max_position_embeddings {
        candle_core::bail!(
            "prompt ({} tokens) + {} new tokens exceed the context of {}",
            prompt_ids.len(),
            args.new_tokens,
            cfg.max_position_embeddings
        );
    }
    let n = args.new_tokens;
    let (_, _, ids) = greedy_run(&model, &prompt_ids, n)?;
    let mut prefill = Vec::with_capacity(args.repeats);
    let mut decode = Vec::with_capacity(args.repeats);
    for _ in 0..args.repeats {
        let (p, d, again) = greedy_run(&model, &prompt_ids, n)?;
        if again != ids {
            candle_core::bail!("greedy generation is not deterministic across runs");
        }
        prefill.push(p);
        decode.push(d);
    }
    let (pb, pm) = stats(&prefill);
    let (db, dm) = stats(&decode);
    let steps = n - 1;
    let tps = if db > 0.0 {
        steps as f64 / db
    } else {
        f64::NAN
    };
    let list = |v: &[u32]| {
        v.iter()
            .map(|i| i.to_string())
            .collect::<Vec<_>>()
            .join(",")
    };
    let answer = serde_json::to_string(&tok.decode(&ids, true)?).unwrap_or_default();
    println!(
        "{{\"op\":\"llm\",\"gguf\":{},\"llm_weights\":{},\"weights_mb\":{weights_mb:.1},\"peak_rss_mb\":{:.1},\"load_s\":{load_s:.3},\"prompt_len\":{},\"prompt_ids\":[{}],\"new_tokens\":{n},\"prefill_best_s\":{pb:.6},\"prefill_mean_s\":{pm:.6},\"decode_steps\":{steps},\"decode_best_s\":{db:.6},\"decode_mean_s\":{dm:.6},\"decode_tokens_per_s\":{tps:.3},\"repeats\":{},\"threads\":{},\"ids\":[{}],\"text\":{}}}",
        serde_json::to_string(&path.display().to_string()).unwrap_or_default(),
        serde_json::to_string(&llm_weights).unwrap_or_default(),
        peak_rss_mb(),
        prompt_ids.len(),
        list(&prompt_ids),
        args.repeats,
        threads(),
        list(&ids),
        answer
    );
    Ok(())
}
