//! `calico eval`: the paper's five metrics per task for any predictions file.

use crate::exit::bad_input;
use anyhow::{Context, Result};
use calico_data::samples::read_samples;
use calico_eval::embed::{EmbeddingCache, SentenceEmbedder};
use calico_eval::evaluate::{prepare, score, EvalOptions, Report};
use calico_eval::predictions::read_predictions;
use calico_eval::ExactMatch;
use clap::{Args, ValueEnum};
use std::path::{Path, PathBuf};

#[derive(Clone, Copy, ValueEnum)]
pub enum SimilarityArg {
    /// Cosine of all-MiniLM-L6-v2 sentence embeddings (the paper's SentenceBERT).
    Minilm,
    /// 1 when the labels are equal after lower-casing and dropping an article, else 0
    /// (for machines without the model; not the paper's metric).
    Exact,
}

#[derive(Args)]
pub struct EvalArgs {
    /// Ground-truth samples (JSONL, e.g. a built test.jsonl).
    #[arg(long)]
    ground_truth: PathBuf,
    /// Predictions (JSONL: {"id","answer","masks":[{"image","label","rle","score"}]}).
    #[arg(long)]
    predictions: PathBuf,
    /// Write the report as JSON here.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Write the report as an HTML page here.
    #[arg(long)]
    html: Option<PathBuf>,
    /// Text similarity for Recall and SS.
    #[arg(long, value_enum, default_value = "minilm")]
    similarity: SimilarityArg,
    /// A sentence-transformers model directory (default: $CALICO_MINILM_DIR or
    /// models/all-MiniLM-L6-v2, fetched by tools/reference/fetch_models.sh).
    #[arg(long)]
    model: Option<PathBuf>,
    /// Skip and list predictions that do not fit the ground truth instead of failing.
    #[arg(long)]
    lenient: bool,
}

pub fn run(a: EvalArgs) -> Result<()> {
    for p in a.out.iter().chain(&a.html) {
        crate::exit::out_file(p)?;
    }
    let t = std::time::Instant::now();
    let similarity = match a.similarity {
        SimilarityArg::Exact => Similarity::Exact,
        SimilarityArg::Minilm => Similarity::Minilm(
            a.model
                .clone()
                .unwrap_or_else(calico_eval::embed::default_dir),
        ),
    };
    let report = evaluate(&a.ground_truth, &a.predictions, a.lenient, &similarity)?;
    print!("{}", report.to_text());
    if let Some(p) = &a.out {
        write(p, &(serde_json::to_string_pretty(&report)? + "\n"))?;
    }
    if let Some(p) = &a.html {
        write(p, &report.to_html())?;
    }
    eprintln!("evaluated in {:.2} s", t.elapsed().as_secs_f64());
    Ok(())
}

/// The text similarity of Recall and SS.
pub(crate) enum Similarity {
    /// all-MiniLM-L6-v2 from this sentence-transformers directory.
    Minilm(PathBuf),
    /// Exact match (not the paper's metric).
    Exact,
}

/// Reads a ground-truth samples file and a predictions file, joins and
/// scores them: the Table 5 report (what `calico eval` prints and writes).
pub(crate) fn evaluate(
    ground_truth: &Path,
    predictions_file: &Path,
    lenient: bool,
    similarity: &Similarity,
) -> Result<Report> {
    let samples = read_samples(ground_truth)?;
    if samples.is_empty() {
        return Err(bad_input(format!(
            "{}: no ground-truth samples",
            ground_truth.display()
        )));
    }
    let predictions = read_predictions(predictions_file)?;
    let opts = EvalOptions { lenient };
    let prepared = prepare(
        ground_truth,
        &samples,
        predictions_file,
        &predictions,
        &opts,
    )?;
    let (overall, by_source, embedder) = match similarity {
        Similarity::Exact => {
            let (o, s) = score(&prepared, &ExactMatch);
            (
                o,
                s,
                "exact match (not the paper's SentenceBERT)".to_string(),
            )
        }
        Similarity::Minilm(dir) => {
            let model = SentenceEmbedder::load(dir, &candle_core::Device::Cpu).with_context(|| {
                format!(
                    "loading the sentence embedder from {} (run `bash tools/reference/fetch_models.sh`, pass --model DIR, or use --similarity exact)",
                    dir.display()
                )
            })?;
            let mut cache = EmbeddingCache::new();
            let labels: Vec<&str> = prepared.labels.iter().map(String::as_str).collect();
            let te = std::time::Instant::now();
            cache.embed_all(&model, &labels)?;
            eprintln!(
                "embedded {} labels in {:.2} s",
                labels.len(),
                te.elapsed().as_secs_f64()
            );
            let (o, s) = score(&prepared, &cache);
            (o, s, format!("all-MiniLM-L6-v2 cosine ({})", dir.display()))
        }
    };
    Ok(Report {
        ground_truth: ground_truth.to_path_buf(),
        predictions_file: predictions_file.to_path_buf(),
        embedder,
        overall,
        by_source,
        samples: prepared.samples,
        predictions: prepared.predictions,
        missing_predictions: prepared.missing.clone(),
        skipped: prepared.skipped.clone(),
    })
}

pub(crate) fn write(path: &Path, text: &str) -> Result<()> {
    calico_masks::png_io::write_atomic(path, |w| std::io::Write::write_all(w, text.as_bytes()))?;
    Ok(())
}
