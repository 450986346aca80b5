//! One module per `calico` subcommand group.

pub mod answer;
pub mod data;
pub mod demo;
pub mod eval;
pub mod masks;
pub mod model;
pub mod predict;
mod predict_partial;
pub mod report;
pub mod segment;
pub mod serve;
pub mod train;

/// Parses a count that must be at least 1 (`--max-new-tokens`: a model
/// allowed no token would answer nothing, silently; `data synth --images`).
pub(crate) fn at_least_one(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(0) => Err("must be at least 1".into()),
        Ok(n) => Ok(n),
        Err(e) => Err(e.to_string()),
    }
}
