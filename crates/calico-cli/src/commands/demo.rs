//! `calico demo`: the embedded default, no downloads and no arguments.
//!
//! SynthParts (a seed the shipped model never saw) → MixedParts samples →
//! the small trained `tiny` checkpoint embedded in the binary
//! (`assets/demo-model/`) → predictions on the test split → Table 5
//! metrics → labelled overlays of held-out pairs for the three tasks →
//! one self-contained `report.html`. Every stage has a progress bar; every
//! file is written atomically.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use calico_app::model::{load, ModelSource};
use calico_app::output::{read_segment_dir, summary, write_segment_dir, SUMMARY_JSON};
use calico_app::report::{read_run, render_html, GalleryItem, ReportInput};
use calico_app::segment::{load_image, segment, task_name, task_question, SegmentOptions};
use calico_data::Sample;
use calico_text::templates::Task;
use calico_train::data;
use clap::Args;

use super::eval::{evaluate, write, Similarity};
use super::predict::{predict_jsonl, train_err};
use crate::exit::{app, bad_input};
use crate::progress::StageBars;

/// The shipped model's files, written to `OUT/model/` and loaded from there.
const MODEL_FILES: [(&str, &[u8]); 7] = [
    (
        "calico.json",
        include_bytes!("../../../../assets/demo-model/calico.json"),
    ),
    (
        "trainable.safetensors",
        include_bytes!("../../../../assets/demo-model/trainable.safetensors"),
    ),
    (
        "tokenizer.json",
        include_bytes!("../../../../assets/demo-model/tokenizer.json"),
    ),
    (
        "tokenizer_config.json",
        include_bytes!("../../../../assets/demo-model/tokenizer_config.json"),
    ),
    (
        "curve.svg",
        include_bytes!("../../../../assets/demo-model/curve.svg"),
    ),
    (
        "metrics.jsonl",
        include_bytes!("../../../../assets/demo-model/metrics.jsonl"),
    ),
    (
        "README.md",
        include_bytes!("../../../../assets/demo-model/README.md"),
    ),
];

/// The seed of the SynthParts the shipped model was trained on
/// (`calico data synth --seed 1`); the demo refuses it so its pairs stay
/// held out.
const TRAINING_SEED: u64 = 1;

/// The tasks the demo segments, in the paper's order.
const TASKS: [Task; 3] = [Task::CommonObject, Task::CommonParts, Task::UniqueParts];

/// Build caps apply per (split, source, task): 3 sources × 3 tasks.
const GROUPS: usize = 9;

#[derive(Args)]
pub struct DemoArgs {
    /// Output directory: synth/, mixedparts/, model/, predictions.jsonl,
    /// eval.json, pairs/<task>-<k>/ and report.html.
    #[arg(long, default_value = "out/demo")]
    out: PathBuf,
    /// Held-out image pairs to segment per task (common-object,
    /// common-parts, unique-parts).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..=20))]
    pairs: u64,
    /// Seed of the SynthParts images (the shipped model was trained on seed
    /// 1, so that seed is refused: the demo's images must be new).
    #[arg(long, default_value_t = 7)]
    seed: u64,
    /// SynthParts images per source format (100 give about 60 test samples).
    #[arg(long, default_value_t = 100, hide = true)]
    images: usize,
    /// Most test samples to predict and evaluate (spread over sources and tasks).
    #[arg(long, default_value_t = 60, hide = true)]
    eval_samples: usize,
    /// Most tokens to generate per answer.
    #[arg(long, default_value_t = 256, hide = true, value_parser = super::at_least_one)]
    max_new_tokens: usize,
    #[command(flatten)]
    device: super::DeviceArgs,
}

pub fn run(a: DemoArgs) -> Result<()> {
    let t0 = std::time::Instant::now();
    // The shipped model is `tiny`: its samples are answered on one thread
    // per core, each with single-threaded kernels (docs/performance.md,
    // "`calico predict` on several threads"). Set before any thread pool
    // starts. A GPU answers on one.
    let device = a.device.open()?;
    let workers = if device.is_cpu() { super::cores() } else { 1 };
    super::single_threaded_kernels_for(workers);
    if a.seed == TRAINING_SEED {
        return Err(bad_input(format!(
            "--seed {TRAINING_SEED} is the seed the shipped model was trained on; \
             pick another so the demo's images are held out"
        )));
    }
    crate::exit::out_dir(&a.out)?;
    if a.images == 0 || a.eval_samples == 0 {
        return Err(bad_input("--images and --eval-samples must be at least 1"));
    }
    std::fs::create_dir_all(&a.out).with_context(|| format!("creating {}", a.out.display()))?;

    // 1–2. SynthParts → readers → builder (their own progress bars); the
    // test split is capped so prediction stays within the time budget.
    let cap = a.eval_samples.div_ceil(GROUPS);
    let mixedparts =
        super::data::synth_and_build(&a.out, a.images, a.seed, vec![format!("test={cap}")])?;
    let test = mixedparts.join("test.jsonl");

    // 3. The shipped model.
    let bars = StageBars::new();
    let model_dir = a.out.join("model");
    write_model(&model_dir, &bars)?;
    let source = ModelSource::Weights {
        dir: model_dir.clone(),
        quantized_llm: None,
    };
    let mut m = load(&source, &[], &device).map_err(app)?;
    m.description = format!(
        "the shipped tiny demo model (assets/demo-model, written to {})",
        model_dir.display()
    );

    // 4. Predictions on the (capped) test split.
    let ds = data::open(&test, m.model.config()).map_err(train_err)?;
    let n = ds.len().min(a.eval_samples);
    let tp = std::time::Instant::now();
    let (text, masks) = predict_jsonl(&m, &ds, n, a.max_new_tokens, workers, &|done, total, _| {
        bars.update("predict", done as u64, total as u64)
    })?;
    let predictions = a.out.join("predictions.jsonl");
    write(&predictions, &text)?;
    let predict_s = tp.elapsed().as_secs_f64();

    // 5. Table 5 metrics: MiniLM when the model is there, else exact match.
    bars.update("evaluate", 0, 1);
    let report = evaluate_with_best_similarity(&test, &predictions)?;
    bars.update("evaluate", 1, 1);
    write(
        &a.out.join("eval.json"),
        &(serde_json::to_string_pretty(&report)? + "\n"),
    )?;

    // 6. Held-out pairs of every task, segmented with the task's question.
    let pairs_dir = a.out.join("pairs");
    clear_old_pairs(&pairs_dir)?;
    let chosen = choose_pairs(&ds.samples, a.pairs as usize);
    let total = chosen.len() as u64;
    let mut gallery = Vec::new();
    let mut answers = Vec::new();
    let opts = SegmentOptions {
        generate: calico_train::predict::greedy(a.max_new_tokens),
        ..Default::default()
    };
    for (k, (task, k_in_task, sample)) in chosen.iter().enumerate() {
        bars.update("segment", k as u64, total);
        let name = format!("{}-{}", task_name(*task), k_in_task + 1);
        let item = segment_pair(
            &m,
            &mixedparts,
            sample,
            *task,
            &pairs_dir.join(&name),
            &opts,
        )?;
        answers.push((name, item.answer.clone()));
        gallery.push(item);
    }
    bars.update("segment", total, total);

    // 7. The report.
    bars.update("report", 0, 1);
    let (curve_svg, last_metrics) = read_run(&model_dir).map_err(app)?;
    let missing: Vec<&str> = TASKS
        .iter()
        .filter(|t| !chosen.iter().any(|(c, _, _)| c == *t))
        .map(|t| task_name(*t))
        .collect();
    let mut notes = vec![
        format!("Model: {}.", m.description),
        format!(
            "Data: SynthParts seed {} ({} images per source format), new images of the classes \
             the model was trained on (seed {TRAINING_SEED}); MixedParts samples built from them.",
            a.seed, a.images
        ),
        format!(
            "Metrics: {} test samples ({masks} predicted masks); text similarity: {}.",
            report.samples, report.embedder
        ),
        format!(
            "Segmentations: {} held-out test pair(s) per task, each asked the task's question; \
             the reference answer is the ground truth.",
            a.pairs
        ),
    ];
    if !missing.is_empty() {
        notes.push(format!(
            "No test pair for: {} (too few images; raise --images).",
            missing.join(", ")
        ));
    }
    let input = ReportInput {
        title: "Calico demo".into(),
        notes,
        curve_svg,
        last_metrics,
        eval: Some(serde_json::to_value(&report)?),
        gallery,
    };
    let html_path = a.out.join("report.html");
    write(&html_path, &render_html(&input))?;
    bars.update("report", 1, 1);
    bars.finish();

    for name in &missing {
        eprintln!("warning: no test pair for {name} (raise --images)");
    }
    for (name, answer) in &answers {
        println!("{name}: {answer}");
    }
    println!();
    print!("{}", report.to_text());
    println!();
    println!(
        "predicted {n} samples in {predict_s:.1} s; demo took {:.1} s",
        t0.elapsed().as_secs_f64()
    );
    println!("report: {}", html_path.display());
    Ok(())
}

/// Writes the embedded model files into `dir` (atomically).
fn write_model(dir: &Path, bars: &StageBars) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let total = MODEL_FILES.len() as u64;
    for (k, (name, bytes)) in MODEL_FILES.iter().enumerate() {
        bars.update("model", k as u64, total);
        calico_masks::png_io::write_atomic(&dir.join(name), |w| {
            std::io::Write::write_all(w, bytes)
        })?;
    }
    bars.update("model", total, total);
    Ok(())
}

/// Scores with all-MiniLM-L6-v2 when its directory exists (the paper's
/// metric), else with exact match; the report's `embedder` says which.
fn evaluate_with_best_similarity(
    test: &Path,
    predictions: &Path,
) -> Result<calico_eval::evaluate::Report> {
    let dir = calico_eval::embed::default_dir();
    if dir.is_dir() {
        match evaluate(test, predictions, false, &Similarity::Minilm(dir.clone())) {
            Ok(r) => return Ok(r),
            Err(e) => eprintln!("warning: {e:#}; scoring Recall and SS with exact match instead"),
        }
    } else {
        eprintln!(
            "note: no sentence embedder at {} (bash tools/reference/fetch_models.sh); \
             Recall and SS use exact match",
            dir.display()
        );
    }
    evaluate(test, predictions, false, &Similarity::Exact)
}

/// Removes the segmentation directories (those with a `segment.json`) a
/// previous run left in `dir`, so no stale pair reaches the report.
fn clear_old_pairs(dir: &Path) -> Result<()> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Ok(());
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() && p.join(SUMMARY_JSON).is_file() {
            std::fs::remove_dir_all(&p).with_context(|| format!("removing {}", p.display()))?;
        }
    }
    Ok(())
}

/// Up to `per_task` samples of each task with distinct image sets,
/// alternating between sources: `(task, index within task, sample)`.
fn choose_pairs(samples: &[Sample], per_task: usize) -> Vec<(Task, usize, &Sample)> {
    let mut out = Vec::new();
    for task in TASKS {
        let key = task_name(task).replace('-', "_");
        let mut by_source: Vec<(&str, Vec<&Sample>)> = Vec::new();
        for s in samples
            .iter()
            .filter(|s| s.task == key && s.images.len() >= 2)
        {
            match by_source.iter_mut().find(|(src, _)| *src == s.source) {
                Some((_, list)) => list.push(s),
                None => by_source.push((&s.source, vec![s])),
            }
        }
        let mut seen = std::collections::HashSet::new();
        let mut taken = 0;
        let mut round = 0;
        while taken < per_task && by_source.iter().any(|(_, l)| round < l.len()) {
            for (_, list) in &by_source {
                let Some(s) = list.get(round) else { continue };
                let mut files: Vec<&str> = s.images.iter().map(|i| i.file.as_str()).collect();
                files.sort_unstable();
                if taken < per_task && seen.insert(files) {
                    out.push((task, taken, *s));
                    taken += 1;
                }
            }
            round += 1;
        }
    }
    out
}

/// Segments one held-out sample's images with `task`'s question into
/// `dir` (calico_app's segment files) and returns its gallery entry.
fn segment_pair(
    m: &calico_app::model::AppModel,
    base: &Path,
    sample: &Sample,
    task: Task,
    dir: &Path,
    opts: &SegmentOptions,
) -> Result<GalleryItem> {
    let mut images = Vec::with_capacity(sample.images.len());
    for img in &sample.images {
        let mut im = load_image(&base.join(&img.file)).map_err(app)?;
        im.name = Path::new(&img.file)
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| img.file.clone());
        images.push(im);
    }
    let r = segment(&m.model, &m.tokenizer, &images, task_question(task), opts).map_err(app)?;
    let s = summary(&r, task_name(task), &m.description, m.untrained);
    write_segment_dir(dir, &r, &sample.id, &s).map_err(app)?;
    let mut item = read_segment_dir(dir).map_err(app)?;
    item.note = Some(format!(
        "Held-out test sample {} ({}). Reference answer: {}",
        sample.id, sample.source, sample.answer
    ));
    Ok(item)
}
