//! `calico model …`: model configuration tools.

use crate::exit::bad_input;
use anyhow::Result;
use calico_model::config::{CalicoConfig, ConfigError, VisionKind};
use calico_model::count::{
    forward_flops, param_counts, FlopCounts, ParamCounts, PAPER_TABLE4, PAPER_TRAINABLE_PERCENT,
    TASKS,
};
use clap::{Args, Subcommand};
use serde::Serialize;
use std::path::PathBuf;

#[derive(Subcommand)]
pub enum ModelCommand {
    /// Parameters per component, trainable share, image tokens and analytic
    /// TFLOPs per image pair, next to the paper's Table 4.
    Info(InfoArgs),
    /// Start a weights directory: calico.json from a preset or config file,
    /// and sources.json naming the LLM's GGUF (docs/weights.md).
    Init(InitArgs),
    /// Build the model from a weights directory and report what was loaded,
    /// what is missing and what no module read; exits 1 when something is
    /// missing or mis-shaped.
    Check(CheckArgs),
    /// Replay parity cases (reference inputs and outputs of a block,
    /// docs/parity.md) on a device and print each case's relative error;
    /// exits 1 when one exceeds its tolerance.
    Parity(ParityArgs),
    /// Write a weights directory's LLM as a llama.cpp GGUF file with block-quantized
    /// projections and vocabulary tables (Q4_K, Q8_0, …) into a new directory, to run with
    /// --quantized-llm
    /// (docs/quantized.md).
    Quantize(QuantizeArgs),
}

#[derive(Args)]
pub struct QuantizeArgs {
    /// The weights directory to read (docs/weights.md).
    #[arg(long)]
    weights: PathBuf,
    /// Type of the LLM's projection weights: q4_0, q4_1, q5_0, q5_1, q8_0, q2_k, q3_k, q4_k,
    /// q5_k or q6_k (the k-types need rows of a multiple of 256 values).
    #[arg(long = "type", value_name = "TYPE", default_value = "q8_0")]
    dtype: String,
    /// Type of the token embedding and output head: any of --type's, or f32 to keep them
    /// float. They are the largest single tensors (a 7B's two take 1 GB as float32);
    /// q8_0 keeps every logit close to the float model's.
    #[arg(
        long = "vocab-type",
        value_name = "TYPE",
        default_value = calico_model::calico::quantize::DEFAULT_VOCAB_TYPE
    )]
    vocab_dtype: String,
    /// The directory to write (must not exist, or be empty; written under a temporary name
    /// and renamed at the end).
    #[arg(long)]
    out: PathBuf,
}

#[derive(Args)]
pub struct ParityArgs {
    /// Case files (`*.safetensors`) or directories of them, e.g.
    /// crates/calico-model/tests/fixtures/parity.
    #[arg(required = true, value_name = "CASES")]
    cases: Vec<PathBuf>,
    #[command(flatten)]
    device: super::DeviceArgs,
}

#[derive(Args)]
pub struct InitArgs {
    /// A named configuration: tiny, tiny-staged, small or paper.
    #[arg(long, default_value = "small", conflicts_with = "config")]
    preset: String,
    /// A model config JSON file instead of a preset.
    #[arg(long)]
    config: Option<PathBuf>,
    /// The LLM as a llama.cpp GGUF file (its tokenizer is used too).
    #[arg(long)]
    gguf: Option<PathBuf>,
    /// The directory to create (must not hold a calico.json yet).
    #[arg(long)]
    out: PathBuf,
}

#[derive(Args)]
pub struct CheckArgs {
    /// The weights directory.
    dir: PathBuf,
    /// What to do with frozen tensors no file has: `zeros` lists them all
    /// (a dry run), `error` stops at the first, `random` fills them with
    /// seeded values (as `calico train` does for presets without released
    /// vision weights).
    #[arg(long, default_value = "zeros", value_parser = ["zeros", "error", "random"])]
    missing: String,
    /// Seed for `--missing random` and for fresh trainable tensors.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    #[command(flatten)]
    llm: super::LlmArgs,
}

#[derive(Args)]
pub struct InfoArgs {
    /// A named configuration: tiny, tiny-staged, small or paper.
    #[arg(long, default_value = "paper", conflicts_with = "config")]
    preset: String,
    /// A model config JSON file (fields left out take the paper's values).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Print JSON instead of tables.
    #[arg(long)]
    json: bool,
}

pub fn run(cmd: ModelCommand) -> Result<()> {
    match cmd {
        ModelCommand::Info(a) => info(a),
        ModelCommand::Init(a) => init(a),
        ModelCommand::Check(a) => check(a),
        ModelCommand::Parity(a) => parity(a),
        ModelCommand::Quantize(a) => quantize(a),
    }
}

fn load(a: &InfoArgs) -> Result<CalicoConfig> {
    config_of(&a.preset, a.config.as_deref())
}

fn config_of(preset: &str, config: Option<&std::path::Path>) -> Result<CalicoConfig> {
    let cfg = match config {
        Some(path) => CalicoConfig::from_json_file(path),
        None => CalicoConfig::preset(preset),
    };
    cfg.map_err(|e: ConfigError| bad_input(e.to_string()))
}

fn init(a: InitArgs) -> Result<()> {
    use calico_model::calico::weights::{write_atomic, Source, Sources, CONFIG_FILE, SOURCES_FILE};
    let cfg = config_of(&a.preset, a.config.as_deref())?;
    if let Some(g) = &a.gguf {
        if !g.is_file() {
            return Err(bad_input(format!("--gguf {}: no such file", g.display())));
        }
        // Header and metadata only: a wrong file fails here, not at the
        // first load.
        calico_model::calico::weights::check_gguf_llm(&cfg, g)
            .map_err(|e| bad_input(format!("--gguf: {e}")))?;
    }
    crate::exit::out_dir(&a.out)?;
    let cfg_path = a.out.join(CONFIG_FILE);
    if cfg_path.exists() {
        return Err(bad_input(format!(
            "{} already exists; not overwriting it",
            cfg_path.display()
        )));
    }
    std::fs::create_dir_all(&a.out).map_err(|e| bad_input(format!("{}: {e}", a.out.display())))?;
    if let Some(g) = &a.gguf {
        let path = std::fs::canonicalize(g)?;
        let sources = Sources {
            sources: vec![Source {
                path,
                rename: Vec::new(),
                except: Vec::new(),
            }],
        };
        let p = a.out.join(SOURCES_FILE);
        write_atomic(&p, serde_json::to_string_pretty(&sources)?.as_bytes())?;
    }
    write_atomic(&cfg_path, serde_json::to_string_pretty(&cfg)?.as_bytes())?;
    println!(
        "wrote {}{}; check it with `calico model check {}`",
        cfg_path.display(),
        if a.gguf.is_some() {
            " and sources.json"
        } else {
            ""
        },
        a.out.display()
    );
    Ok(())
}

fn check(a: CheckArgs) -> Result<()> {
    use calico_model::calico::weights::{load_dir_for_answers, MissingFrozen};
    let missing = match a.missing.as_str() {
        "error" => MissingFrozen::Error,
        "random" => MissingFrozen::Random { seed: a.seed },
        _ => MissingFrozen::Zeros,
    };
    let device = candle_core::Device::Cpu;
    let loaded = load_dir_for_answers(&a.dir, missing, &device, a.llm.quantized_llm)
        .map_err(|e| bad_input(e.to_string()))?;
    println!("{}", loaded.report);
    if !loaded.report.is_complete() {
        anyhow::bail!(
            "{}: {} tensors missing and {} mis-shaped (listed above)",
            a.dir.display(),
            loaded.report.checkpoint.missing.len(),
            loaded.report.checkpoint.misshaped.len()
        );
    }
    Ok(())
}

fn quantize(a: QuantizeArgs) -> Result<()> {
    use calico_model::calico::quantize::{parse_quant_type, parse_vocab_type, quantize_dir};
    let dtype = parse_quant_type(&a.dtype).map_err(|e| bad_input(format!("--type: {e}")))?;
    let vocab =
        parse_vocab_type(&a.vocab_dtype).map_err(|e| bad_input(format!("--vocab-type: {e}")))?;
    if !a.weights.is_dir() {
        return Err(bad_input(format!(
            "{}: no such weights directory",
            a.weights.display()
        )));
    }
    crate::exit::out_dir(&a.out)?;
    let bars = crate::progress::StageBars::new();
    let report = quantize_dir(&a.weights, &a.out, dtype, vocab, &|done, total| {
        bars.update("tensors", done as u64, total as u64)
    });
    bars.finish();
    let report = report.map_err(|e| bad_input(e.to_string()))?;
    println!("{report}");
    println!(
        "run it with --quantized-llm, e.g. `calico segment A.png B.png --weights {} \
         --quantized-llm --out seg`",
        a.out.display()
    );
    Ok(())
}

fn parity(a: ParityArgs) -> Result<()> {
    use calico_model::parity::{case_files, check, Case};
    let mut files = Vec::new();
    for p in &a.cases {
        if p.is_dir() {
            let found = case_files(p).map_err(|e| bad_input(format!("{}: {e}", p.display())))?;
            if found.is_empty() {
                return Err(bad_input(format!(
                    "{}: no parity cases (*.safetensors) in this directory",
                    p.display()
                )));
            }
            files.extend(found);
        } else if p.is_file() {
            files.push(p.clone());
        } else {
            return Err(bad_input(format!(
                "{}: no such file or directory",
                p.display()
            )));
        }
    }
    // Every case is read before any runs: a file that is no case is bad
    // input; a case that runs and misses its reference is a failure.
    let mut cases = Vec::with_capacity(files.len());
    for file in &files {
        cases.push(Case::read(file).map_err(|e| bad_input(e.to_string()))?);
    }
    let device = a.device.open()?;
    let mut failures = Vec::new();
    for (file, case) in files.iter().zip(&cases) {
        match check(case, &device) {
            Ok(r) => {
                println!("{}", r.line());
                failures.extend(r.failure());
            }
            Err(e) => failures.push(format!("{}: {e}", file.display())),
        }
    }
    println!(
        "{} of {} parity cases within tolerance on {}",
        files.len() - failures.len(),
        files.len(),
        a.device.device
    );
    if !failures.is_empty() {
        anyhow::bail!("{}", failures.join("\n"));
    }
    Ok(())
}

#[derive(Serialize)]
struct MethodInfo {
    method: &'static str,
    vision: VisionKind,
    image_tokens: usize,
    paper_image_tokens: usize,
    paper_tflops: f64,
    /// Table 4: seconds per sample for common objects, common parts, unique
    /// parts, and the average.
    paper_seconds: [f64; 4],
    paper_recall: f64,
    parameters: ParamCounts,
    flops: Vec<TaskFlops>,
}

#[derive(Serialize)]
struct TaskFlops {
    task: &'static str,
    prompt_tokens: usize,
    answer_tokens: usize,
    masks: usize,
    tflops: f64,
    components: Vec<(String, f64)>,
}

#[derive(Serialize)]
struct Report {
    config: String,
    vision: VisionKind,
    parameters: ParamCounts,
    total_parameters: u64,
    trainable_parameters: u64,
    trainable_percent: f64,
    paper_trainable_percent: f64,
    methods: Vec<MethodInfo>,
    notes: Vec<&'static str>,
}

const NOTES: [&str; 4] = [
    "parameters: element counts of the tensors each block reads (docs/weights.md); trainable = LoRA, CEM, CAM, f_image/projector, text_hidden_fcs, SAM mask decoder",
    "TFLOPs: analytic, 2 per multiply-add of every matrix product, one image pair, prefill + cached decoding of a typical answer (calico_model::count::TASKS); not DeepSpeed's profiler",
    "baselines: the same LLM and SAM with a CLIP ViT-L/14 tower (LISA 224 px + linear projector, GLaMM 336 px + MLP projector)",
    "paper figures: Table 4 (TFLOPS, image tokens, seconds per sample CO/CP/UP/All, Recall); trainable share: abstract",
];

fn task_flops(f: &FlopCounts) -> TaskFlops {
    TaskFlops {
        task: f.task.task,
        prompt_tokens: f.prompt_tokens,
        answer_tokens: f.task.answer_tokens,
        masks: f.task.masks,
        tflops: f.tflops(),
        components: f
            .components
            .iter()
            .map(|c| (c.name.to_string(), c.flops / 1e12))
            .collect(),
    }
}

fn report(cfg: &CalicoConfig) -> Report {
    let params = param_counts(cfg);
    let methods = VisionKind::ALL
        .iter()
        .map(|&kind| {
            let c = cfg.with_vision(kind);
            let paper = PAPER_TABLE4
                .iter()
                .find(|p| p.vision == kind)
                .expect("Table 4 has every method");
            MethodInfo {
                method: kind.label(),
                vision: kind,
                image_tokens: c.image_tokens(),
                paper_image_tokens: paper.image_tokens,
                paper_tflops: paper.tflops,
                paper_seconds: paper.seconds,
                paper_recall: paper.recall,
                parameters: param_counts(&c),
                flops: TASKS
                    .iter()
                    .map(|t| task_flops(&forward_flops(&c, t)))
                    .collect(),
            }
        })
        .collect();
    Report {
        config: cfg.name.clone(),
        vision: cfg.vision,
        total_parameters: params.total(),
        trainable_parameters: params.trainable(),
        trainable_percent: params.trainable_percent(),
        paper_trainable_percent: PAPER_TRAINABLE_PERCENT,
        parameters: params,
        methods,
        notes: NOTES.to_vec(),
    }
}

fn thousands(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, ch) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(ch);
    }
    out
}

fn text(r: &Report) -> String {
    let mut s = String::new();
    let name = if r.config.is_empty() {
        "(unnamed)"
    } else {
        &r.config
    };
    s.push_str(&format!(
        "Model `{name}`, vision path: {}\n\n",
        r.vision_label()
    ));
    s.push_str(&format!("{:<22} {:>16}\n", "component", "parameters"));
    for c in &r.parameters.components {
        let t = if c.trainable { "trainable" } else { "frozen" };
        s.push_str(&format!(
            "{:<22} {:>16}  {t}\n",
            c.name,
            thousands(c.params)
        ));
    }
    s.push_str(&format!(
        "{:<22} {:>16}\n",
        "total",
        thousands(r.total_parameters)
    ));
    s.push_str(&format!(
        "{:<22} {:>16}  {:.3} %   (paper, abstract: {} %)\n",
        "trainable",
        thousands(r.trainable_parameters),
        r.trainable_percent,
        r.paper_trainable_percent
    ));
    let without: u64 = r
        .parameters
        .components
        .iter()
        .filter(|c| c.trainable && c.name != "f_image" && c.name != "text_hidden_fcs")
        .map(|c| c.params)
        .sum();
    s.push_str(&format!(
        "{:<22} {:>16}  {:.3} %   (if f_image and text_hidden_fcs stay frozen)\n\n",
        "  of which the rest",
        thousands(without),
        100.0 * without as f64 / r.total_parameters.max(1) as f64
    ));

    s.push_str("Image tokens per image and analytic TFLOPs per image pair\n");
    s.push_str(&format!(
        "{:<18} {:>7} {:>7}   {:>8} {:>8} {:>8}   {:>7}   {}\n",
        "method", "tokens", "(paper)", "CO", "CP", "UP", "(paper)", "paper s/sample CO CP UP All"
    ));
    for m in &r.methods {
        let t: Vec<String> = m
            .flops
            .iter()
            .map(|f| format!("{:8.2}", f.tflops))
            .collect();
        let secs: Vec<String> = m.paper_seconds.iter().map(|x| format!("{x}")).collect();
        s.push_str(&format!(
            "{:<18} {:>7} {:>7}   {}   {:>7.1}   {}\n",
            m.method,
            m.image_tokens,
            m.paper_image_tokens,
            t.join(" "),
            m.paper_tflops,
            secs.join(" ")
        ));
    }
    if let Some(m) = r.methods.iter().find(|m| m.vision == r.vision) {
        s.push_str(&format!("\nTFLOPs by component ({}):\n", m.method));
        s.push_str(&format!(
            "{:<22} {:>9} {:>9} {:>9}\n",
            "component", "CO", "CP", "UP"
        ));
        for (i, (name, _)) in m.flops[0].components.iter().enumerate() {
            let v: Vec<String> = m
                .flops
                .iter()
                .map(|f| format!("{:9.3}", f.components[i].1))
                .collect();
            s.push_str(&format!("{name:<22} {}\n", v.join(" ")));
        }
        let lens: Vec<String> = m
            .flops
            .iter()
            .map(|f| {
                format!(
                    "{}: prompt {} tokens, answer {}, masks {}",
                    f.task, f.prompt_tokens, f.answer_tokens, f.masks
                )
            })
            .collect();
        s.push_str(&format!("({})\n", lens.join("; ")));
    }
    s.push('\n');
    for n in &r.notes {
        s.push_str(&format!("note: {n}\n"));
    }
    s
}

impl Report {
    fn vision_label(&self) -> &'static str {
        self.vision.label()
    }
}

fn info(a: InfoArgs) -> Result<()> {
    let cfg = load(&a)?;
    let r = report(&cfg);
    if a.json {
        println!("{}", serde_json::to_string_pretty(&r)?);
    } else {
        print!("{}", text(&r));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thousands_groups_digits() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1000), "1,000");
        assert_eq!(thousands(6_738_415_616), "6,738,415,616");
    }
}
