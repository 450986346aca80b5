//! One module per `calico` subcommand group.

pub mod answer;
pub mod data;
pub mod demo;
pub mod eval;
pub mod masks;
pub mod model;
pub mod predict;
pub mod report;
pub mod segment;
pub mod serve;
pub mod train;
