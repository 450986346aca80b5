//! `calico report`: one self-contained HTML file (no external resources)
//! with a run's training curve, an evaluation's Table 5 metrics and a
//! gallery of `calico segment` output directories.

use std::path::PathBuf;

use anyhow::Result;
use calico_app::output::read_segment_dir;
use calico_app::report::{read_run, render_html, ReportInput};
use clap::Args;

use crate::exit::{app, bad_input};

#[derive(Args)]
pub struct ReportArgs {
    /// A training run directory (curve.svg, metrics.jsonl).
    #[arg(long)]
    run: Option<PathBuf>,
    /// An evaluation report written by `calico eval --out`.
    #[arg(long)]
    eval: Option<PathBuf>,
    /// `calico segment --out` directories (or any directory of overlay_*.png).
    #[arg(long, num_args = 1..)]
    overlays: Vec<PathBuf>,
    /// The HTML file to write.
    #[arg(long)]
    out: PathBuf,
    /// Page title.
    #[arg(long, default_value = "Calico report")]
    title: String,
}

pub fn run(a: ReportArgs) -> Result<()> {
    if a.run.is_none() && a.eval.is_none() && a.overlays.is_empty() {
        return Err(bad_input(
            "nothing to report: pass --run, --eval and/or --overlays",
        ));
    }
    crate::exit::out_file(&a.out)?;
    let mut input = ReportInput {
        title: a.title.clone(),
        ..Default::default()
    };
    if let Some(run) = &a.run {
        let (curve, last) = read_run(run).map_err(app)?;
        if curve.is_none() {
            eprintln!("note: {} has no curve.svg", run.display());
        }
        input.curve_svg = curve;
        input.last_metrics = last;
        input.notes.push(format!("Run: {}", run.display()));
    }
    if let Some(p) = &a.eval {
        let text =
            std::fs::read_to_string(p).map_err(|e| bad_input(format!("{}: {e}", p.display())))?;
        let v: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| bad_input(format!("{}: {e}", p.display())))?;
        if v.get("overall").is_none() {
            return Err(bad_input(format!(
                "{}: not an evaluation report (no \"overall\"; write one with calico eval --out)",
                p.display()
            )));
        }
        input.notes.push(format!("Evaluation: {}", p.display()));
        input.eval = Some(v);
    }
    for d in &a.overlays {
        input.gallery.push(read_segment_dir(d).map_err(app)?);
    }
    let html = render_html(&input);
    if let Some(parent) = a.out.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)?;
    }
    calico_masks::png_io::write_atomic(&a.out, |w| std::io::Write::write_all(w, html.as_bytes()))?;
    println!(
        "wrote {} ({} KiB, {} gallery entries)",
        a.out.display(),
        html.len() / 1024,
        input.gallery.len()
    );
    Ok(())
}
