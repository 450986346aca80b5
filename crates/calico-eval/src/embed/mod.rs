//! Sentence embeddings (all-MiniLM-L6-v2) for text similarity.
//!
//! [`SentenceEmbedder`] loads a sentence-transformers BERT model directory
//! (by default all-MiniLM-L6-v2, fetched by
//! `bash tools/reference/fetch_models.sh` into `models/`) and computes the
//! same vectors as sentence-transformers: WordPiece tokens truncated to the
//! model's `max_seq_length` (256), candle's BERT encoder in F32, and mean
//! pooling weighted by the attention mask. [`EmbeddingCache`] embeds a set of
//! labels once, in batches, and implements [`crate::Similarity`] as the
//! cosine of their embeddings.
//!
//! ```no_run
//! use calico_eval::embed::{EmbeddingCache, SentenceEmbedder};
//! use calico_eval::Similarity;
//!
//! let embedder = SentenceEmbedder::load_default()?;
//! let mut cache = EmbeddingCache::new();
//! cache.embed_all(&embedder, &["seat cushion", "chair's seat"])?;
//! let s = cache.similarity("seat cushion", "chair's seat");
//! # Ok::<(), calico_eval::embed::EmbedError>(())
//! ```

mod cache;
mod error;
mod model;
mod weights;

pub use cache::{EmbeddingCache, CACHE_CHUNK};
pub use candle_core::Device;
pub use error::{EmbedError, Result};
pub use model::{SentenceEmbedder, DEFAULT_BATCH_SIZE, DEFAULT_MAX_SEQ_LENGTH};

use std::path::{Path, PathBuf};

/// Environment variable naming the model directory (overrides the default).
pub const MODEL_DIR_ENV: &str = "CALICO_MINILM_DIR";

/// The default model directory, relative to the workspace root.
pub const DEFAULT_MODEL_SUBDIR: &str = "models/all-MiniLM-L6-v2";

/// The model directory: `$CALICO_MINILM_DIR` when set and non-empty, else
/// `models/all-MiniLM-L6-v2` under the workspace root (the nearest directory,
/// from the current one upward, whose `Cargo.toml` has a `[workspace]`
/// table), else that path relative to the current directory.
pub fn default_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os(MODEL_DIR_ENV).filter(|v| !v.is_empty()) {
        return PathBuf::from(dir);
    }
    let cwd = std::env::current_dir().unwrap_or_default();
    match workspace_root(&cwd) {
        Some(root) => root.join(DEFAULT_MODEL_SUBDIR),
        None => PathBuf::from(DEFAULT_MODEL_SUBDIR),
    }
}

/// The nearest ancestor of `start` (itself included) holding a workspace
/// `Cargo.toml`.
fn workspace_root(start: &Path) -> Option<PathBuf> {
    start
        .ancestors()
        .find(|dir| {
            std::fs::read_to_string(dir.join("Cargo.toml"))
                .map(|s| s.lines().any(|l| l.trim() == "[workspace]"))
                .unwrap_or(false)
        })
        .map(Path::to_path_buf)
}

/// Cosine similarity of two vectors, accumulated in f64; 0.0 when either is
/// all zeros. The vectors must have the same length.
pub fn cosine(a: &[f32], b: &[f32]) -> f64 {
    debug_assert_eq!(a.len(), b.len(), "cosine of vectors of different lengths");
    let (mut dot, mut na, mut nb) = (0.0f64, 0.0f64, 0.0f64);
    for (&x, &y) in a.iter().zip(b) {
        let (x, y) = (x as f64, y as f64);
        dot += x * y;
        na += x * x;
        nb += y * y;
    }
    if na == 0.0 || nb == 0.0 {
        return 0.0;
    }
    (dot / (na.sqrt() * nb.sqrt())).clamp(-1.0, 1.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cosine_basics() {
        assert_eq!(cosine(&[1.0, 2.0, 3.0], &[2.0, 4.0, 6.0]), 1.0);
        assert_eq!(cosine(&[1.0, 0.0], &[0.0, 5.0]), 0.0);
        assert_eq!(cosine(&[1.0, 0.0], &[-3.0, 0.0]), -1.0);
        assert_eq!(cosine(&[0.0, 0.0], &[1.0, 1.0]), 0.0);
        assert!((cosine(&[1.0, 1.0], &[1.0, 0.0]) - 0.5f64.sqrt()).abs() < 1e-12);
    }

    #[test]
    fn workspace_root_is_found_upward() {
        let here = Path::new(env!("CARGO_MANIFEST_DIR"));
        let root = workspace_root(here).expect("workspace root");
        assert!(root.join("crates").is_dir());
        assert_eq!(workspace_root(&root.join("crates")), Some(root));
    }
}
