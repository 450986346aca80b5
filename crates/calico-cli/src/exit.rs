//! Mapping errors to messages and exit codes.

use std::fmt;
use std::path::Path;

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

/// The error and its causes joined by `: `, leaving out a cause whose text
/// the message already holds (many errors print their source themselves).
pub fn message(err: &anyhow::Error) -> String {
    let mut out = String::new();
    for e in err.chain() {
        let text = e.to_string();
        if out.is_empty() {
            out = text;
        } else if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
    }
    out
}

/// Checks that `dir` can be a directory the command creates or writes
/// into: neither it nor any of its ancestors may be a file. Saying so up
/// front replaces the operating system's "File exists" or "Not a
/// directory", which name neither the path nor the cause.
pub fn out_dir(dir: &Path) -> anyhow::Result<()> {
    if dir.exists() && !dir.is_dir() {
        return Err(bad_input(format!(
            "{}: exists and is not a directory",
            dir.display()
        )));
    }
    below_no_file(dir, "created")
}

/// Checks that `file` can be written, before any slow work: it is not a
/// directory, and none of its ancestors is a file.
pub fn out_file(file: &Path) -> anyhow::Result<()> {
    if file.is_dir() {
        return Err(bad_input(format!("{}: is a directory", file.display())));
    }
    below_no_file(file, "written")
}

/// An error naming the first ancestor of `path` that is a file, if any.
fn below_no_file(path: &Path, verb: &str) -> anyhow::Result<()> {
    match path
        .ancestors()
        .skip(1)
        .find(|a| !a.as_os_str().is_empty() && a.exists() && !a.is_dir())
    {
        Some(file) => Err(bad_input(format!(
            "{}: cannot be {verb}: {} is a file, not a directory",
            path.display(),
            file.display()
        ))),
        None => Ok(()),
    }
}

/// Prints the error chain and returns the exit code.
pub fn report(err: &anyhow::Error) -> i32 {
    // A run stopped on request is no error: its message says where it
    // stopped and how to continue.
    let interrupted = err.chain().any(|e| {
        matches!(
            e.downcast_ref::<calico_train::TrainError>(),
            Some(calico_train::TrainError::Interrupted(_))
        )
    });
    if interrupted {
        eprintln!("{}", message(err));
        return crate::interrupt::EXIT_CODE;
    }
    eprintln!("error: {}", message(err));
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

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Shows(std::io::Error);

    impl fmt::Display for Shows {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            write!(f, "runs/a/checkpoints: {}", self.0)
        }
    }

    impl std::error::Error for Shows {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.0)
        }
    }

    #[test]
    fn causes_are_said_once() {
        let disk_full = || std::io::Error::from_raw_os_error(28);
        let e = anyhow::Error::new(Shows(disk_full()));
        assert_eq!(
            message(&e),
            format!("runs/a/checkpoints: {}", disk_full()),
            "a source the message already shows is not repeated"
        );
        assert_eq!(report(&e), 2);
        let e = anyhow::Error::new(disk_full()).context("saving step 4");
        assert_eq!(message(&e), format!("saving step 4: {}", disk_full()));
    }

    #[test]
    fn out_dirs_under_a_file_are_refused_naming_the_file() {
        let root = std::env::temp_dir().join(format!("calico-out-dir-{}", std::process::id()));
        std::fs::create_dir_all(&root).unwrap();
        let file = root.join("afile");
        std::fs::write(&file, "x").unwrap();
        let said = |p: &Path| {
            let e = out_dir(p).unwrap_err();
            assert_eq!(report(&e), 2);
            message(&e)
        };
        assert_eq!(
            said(&file),
            format!("{}: exists and is not a directory", file.display())
        );
        let below = file.join("run/a");
        assert_eq!(
            said(&below),
            format!(
                "{}: cannot be created: {} is a file, not a directory",
                below.display(),
                file.display()
            )
        );
        out_dir(&root).unwrap();
        out_dir(&root.join("new/dir")).unwrap();
        out_dir(Path::new("relative/new")).unwrap();
        let beside = file.join("p.jsonl");
        let e = out_file(&beside).unwrap_err();
        assert_eq!(
            message(&e),
            format!(
                "{}: cannot be written: {} is a file, not a directory",
                beside.display(),
                file.display()
            )
        );
        assert!(message(&out_file(&root).unwrap_err()).ends_with(": is a directory"));
        out_file(&root.join("new/p.jsonl")).unwrap();
        out_file(Path::new("p.jsonl")).unwrap();
        std::fs::remove_dir_all(&root).unwrap();
    }
}
