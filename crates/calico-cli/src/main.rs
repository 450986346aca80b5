//! `calico`: part-focused semantic co-segmentation tools.
//!
//! Exit codes: 0 success, 2 bad input (the message names the file, field or
//! value), 1 internal failure.

mod commands;
mod exit;

use clap::{Parser, Subcommand};

/// Calico: part-focused semantic co-segmentation across images.
#[derive(Parser)]
#[command(name = "calico", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Compose, parse and prompt in Calico's grounded answer protocol.
    #[command(subcommand)]
    Answer(commands::answer::AnswerCommand),
    /// COCO masks: encode PNGs to RLE, decode RLE to PNG, area/box, IoU.
    #[command(subcommand)]
    Masks(commands::masks::MasksCommand),
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Answer(c) => commands::answer::run(c),
        Command::Masks(c) => commands::masks::run(c),
    };
    if let Err(err) = result {
        std::process::exit(exit::report(&err));
    }
}
