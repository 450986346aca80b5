//! One module per `calico` subcommand group.

pub mod answer;
pub mod data;
pub mod masks;
