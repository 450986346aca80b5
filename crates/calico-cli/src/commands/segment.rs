//! `calico segment IMG1 IMG2 [IMG3 …]`: co-segment a set of images with a
//! task or a question; print the answer and write per-mask PNGs, the
//! COCO-RLE predictions record and overlays (calico_app::output).

use std::path::PathBuf;

use anyhow::Result;
use calico_app::model::{load, ModelSource};
use calico_app::output::{summary, write_segment_dir};
use calico_app::segment::{
    check_count, load_image, parse_task, segment, task_name, task_question, SegmentOptions,
};
use clap::Args;

use crate::exit::{app, bad_input};

/// Which model answers: `--weights DIR` or `--preset NAME [--seed N]`.
#[derive(Args, Clone)]
#[group(required = true, multiple = false)]
pub struct ModelArgs {
    /// A weights directory (calico train's RUN/model, or calico model init).
    #[arg(long)]
    pub weights: Option<PathBuf>,
    /// A preset with seeded random weights: UNTRAINED, answers and masks
    /// are noise (for checking the pipeline; e.g. tiny).
    #[arg(long)]
    pub preset: Option<String>,
}

impl ModelArgs {
    pub fn source(&self, seed: u64, llm: &super::LlmArgs) -> Result<ModelSource> {
        llm.source(self.weights.as_deref(), self.preset.as_deref(), seed)
    }
}

#[derive(Args)]
pub struct SegmentArgs {
    /// The images (at least two; PNG or JPEG).
    #[arg(required = true, value_name = "IMAGE")]
    images: Vec<PathBuf>,
    /// What to segment: common-object, common-parts, unique-parts or identify
    /// (the task's canonical question from the templates).
    #[arg(long, default_value = "common-parts")]
    task: String,
    /// Ask this question instead of the task's.
    #[arg(long)]
    question: Option<String>,
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    llm: super::LlmArgs,
    #[command(flatten)]
    device: super::DeviceArgs,
    /// Seed of --preset's random weights.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Output directory (created; files are written atomically).
    #[arg(long)]
    out: PathBuf,
    /// Print segment.json (machine-readable) on stdout instead of text.
    #[arg(long)]
    json: bool,
    /// Most tokens to generate.
    #[arg(long, default_value_t = 256, value_parser = super::at_least_one)]
    max_new_tokens: usize,
}

pub fn run(a: SegmentArgs) -> Result<()> {
    // Everything is validated before anything is written.
    let task = parse_task(&a.task).map_err(app)?;
    if a.images.len() < 2 {
        let names: Vec<String> = a.images.iter().map(|p| p.display().to_string()).collect();
        return Err(bad_input(format!(
            "co-segmentation needs at least 2 images, got {} ({})",
            a.images.len(),
            names.join(", ")
        )));
    }
    let mut images = Vec::with_capacity(a.images.len());
    for p in &a.images {
        images.push(load_image(p).map_err(app)?);
    }
    check_count(images.len()).map_err(app)?;
    crate::exit::out_dir(&a.out)?;
    let source = a.model.source(a.seed, &a.llm)?;
    let device = a.device.open()?;
    let (question, task_label) = match &a.question {
        Some(q) if q.trim().is_empty() => return Err(bad_input("--question is empty")),
        Some(q) => (q.clone(), "custom".to_string()),
        None => (task_question(task).to_string(), task_name(task).to_string()),
    };
    let m = load(&source, &[], &device).map_err(app)?;
    if m.untrained {
        eprintln!("warning: {}", m.description);
    }
    let opts = SegmentOptions {
        generate: calico_train::predict::greedy(a.max_new_tokens),
        ..Default::default()
    };
    let r = segment(&m.model, &m.tokenizer, &images, &question, &opts).map_err(app)?;
    let s = summary(&r, &task_label, &m.description, m.untrained);
    let id = format!("segment/{task_label}");
    let written = write_segment_dir(&a.out, &r, &id, &s).map_err(app)?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&s)?);
        return Ok(());
    }
    println!("model: {}", m.description);
    println!("question: {}", r.question);
    println!("answer: {}", r.answer);
    if r.masks.is_empty() {
        println!("masks: none (the answer has no routed [SEG])");
    }
    for (k, (mask, sm)) in r.masks.iter().zip(&s.masks).enumerate() {
        println!(
            "mask {k}: image {} ({}) \"{}\" {} {} px -> {}",
            mask.image,
            r.images.get(mask.image).map(String::as_str).unwrap_or("?"),
            mask.label,
            mask.colour,
            mask.area,
            sm.file
        );
    }
    if r.unrouted > 0 {
        println!(
            "{} [SEG] without a valid (IMAGEk) tag (no mask)",
            r.unrouted
        );
    }
    println!("wrote {} files to {}", written.len(), a.out.display());
    Ok(())
}
