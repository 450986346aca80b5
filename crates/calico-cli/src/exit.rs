//! Mapping errors to messages and exit codes.

use std::fmt;

/// An error caused by the user's input (exit code 2).
#[derive(Debug)]
pub struct BadInput(pub String);

impl fmt::Display for BadInput {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for BadInput {}

/// Shorthand for a bad-input error.
pub fn bad_input(msg: impl Into<String>) -> anyhow::Error {
    anyhow::Error::new(BadInput(msg.into()))
}

/// An app-layer error as an `anyhow` error (input errors exit 2).
pub fn app(e: calico_app::AppError) -> anyhow::Error {
    if e.is_input() {
        bad_input(e.to_string())
    } else {
        anyhow::Error::new(e)
    }
}

/// Prints the error chain and returns the exit code.
pub fn report(err: &anyhow::Error) -> i32 {
    eprintln!("error: {err:#}");
    let input_error = err.chain().any(|e| {
        e.is::<BadInput>()
            || e.is::<calico_masks::MaskError>()
            || e.is::<calico_text::ComposeError>()
            || e.is::<calico_text::ParseError>()
            || is_input_data_error(e)
            || e.is::<calico_eval::EvalError>()
            || e.is::<calico_eval::embed::EmbedError>()
            || e.is::<serde_json::Error>()
            || e.is::<std::io::Error>()
    });
    if input_error {
        2
    } else {
        1
    }
}

/// Data errors caused by the input (everything but internal failures).
fn is_input_data_error(e: &(dyn std::error::Error + 'static)) -> bool {
    use calico_data::DataError;
    match e.downcast_ref::<DataError>() {
        Some(DataError::Config(msg)) => !msg.starts_with("internal"),
        Some(_) => true,
        None => false,
    }
}
