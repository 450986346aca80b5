//! `calico`: part-focused semantic co-segmentation tools.
//!
//! Exit codes: 0 success, 2 bad input (the message names the file, field or
//! value), 1 internal failure, 130 a `calico train` or `calico predict` run
//! stopped by an interrupt (Ctrl-C, SIGTERM; its checkpoint or answers
//! saved for `--resume`).

// The arguments' doc comments are `--help` text, written for a terminal:
// `pairs/<task>-<k>/` and `FORMAT=DIR[:NAME]` are meant literally there.
#![allow(rustdoc::invalid_html_tags, rustdoc::broken_intra_doc_links)]

mod commands;
mod exit;
mod interrupt;
mod progress;

use clap::{Parser, Subcommand};

/// mimalloc instead of glibc's malloc. Stage 1 of a staged `tiny` run frees
/// and re-allocates megabyte-sized activations every step; glibc hands much
/// of that memory back to the kernel and takes page faults to get it again
/// (system time 32 s against 19 s over 150 steps). Measured back to back,
/// 200 stage-1 steps take 20–25 % less time, stages 1b and 2 the same, for
/// 12–30 % more peak memory (docs/performance.md, "Allocator").
///
/// mimalloc itself hands freed memory back to the kernel after a delay
/// (`purge_delay`, 1 s), and a training step's activations come back as
/// fresh pages the kernel must zero. [`keep_freed_memory`] turns purging
/// off: freed memory stays mapped for the next step. Peak RSS is the same;
/// a 200-step run of all three stages took 187–192 s instead of 219–247 s
/// (stage 2 74–75 s instead of 98–109 s).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// `mi_option_purge_delay`: its place in mimalloc v3's `mi_option_e`
/// (`include/mimalloc.h`), which libmimalloc-sys 0.1 does not name.
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Never purge freed memory, unless `MIMALLOC_PURGE_DELAY` says otherwise
/// (mimalloc reads it at start-up; it is left to win).
fn keep_freed_memory() {
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        // SAFETY: sets a process-wide option; mimalloc reads it on every
        // purge, so setting it at any time is allowed.
        unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1) };
    }
}

/// Calico: part-focused semantic co-segmentation across images.
#[derive(Parser)]
#[command(name = "calico", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// The embedded demo, no downloads: SynthParts → samples → the shipped tiny model →
    /// Table 5 metrics and labelled overlays of held-out pairs → report.html.
    Demo(commands::demo::DemoArgs),
    /// Compose, parse and prompt in Calico's grounded answer protocol.
    #[command(subcommand)]
    Answer(commands::answer::AnswerCommand),
    /// COCO masks: encode PNGs to RLE, decode RLE to PNG, area/box, IoU.
    #[command(subcommand)]
    Masks(commands::masks::MasksCommand),
    /// MixedParts data: SynthParts generator, sample builder, statistics.
    #[command(subcommand)]
    Data(commands::data::DataCommand),
    /// Score predictions against ground truth: AP50, mIoU, Recall, SS, S-IoU per task.
    Eval(commands::eval::EvalArgs),
    /// Model configurations: parameters, image tokens and FLOPs per preset.
    #[command(subcommand)]
    Model(commands::model::ModelCommand),
    /// Train Calico on a samples file (the paper's recipe; `tiny` from scratch), resumable.
    Train(commands::train::TrainArgs),
    /// Co-segment 2+ images: answer, per-mask PNGs, COCO-RLE JSON and overlays with a legend.
    Segment(commands::segment::SegmentArgs),
    /// Answer every sample of a samples file: predictions.jsonl for `calico eval`.
    Predict(commands::predict::PredictArgs),
    /// A self-contained HTML report: training curve, Table 5 metrics, overlay gallery.
    Report(commands::report::ReportArgs),
    /// HTTP JSON API and web UI for co-segmentation (upload images, see labelled overlays).
    Serve(commands::serve::ServeArgs),
}

fn main() {
    keep_freed_memory();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Demo(a) => commands::demo::run(a),
        Command::Answer(c) => commands::answer::run(c),
        Command::Masks(c) => commands::masks::run(c),
        Command::Data(c) => commands::data::run(c),
        Command::Eval(a) => commands::eval::run(a),
        Command::Model(c) => commands::model::run(c),
        Command::Train(a) => commands::train::run(a),
        Command::Segment(a) => commands::segment::run(a),
        Command::Predict(a) => commands::predict::run(a),
        Command::Report(a) => commands::report::run(a),
        Command::Serve(a) => commands::serve::run(a),
    };
    if let Err(err) = result {
        std::process::exit(exit::report(&err));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Index 15 is `purge_delay` (mimalloc v3's default 1000 ms, unlike any
    /// other option), and `keep_freed_memory` turns purging off.
    #[test]
    fn purge_delay_is_the_option_set() {
        if std::env::var_os("MIMALLOC_PURGE_DELAY").is_some() {
            return;
        }
        // SAFETY: reads a process-wide option.
        let get = || unsafe { libmimalloc_sys::mi_option_get(MI_OPTION_PURGE_DELAY) };
        assert_eq!(get(), 1000);
        keep_freed_memory();
        assert_eq!(get(), -1);
    }
}
