//! One module per `calico` subcommand group.

pub mod answer;
pub mod masks;
