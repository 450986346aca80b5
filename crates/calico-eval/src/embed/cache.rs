//! Label embeddings computed once, in batches, and looked up by text.

use super::error::Result;
use super::{cosine, SentenceEmbedder};
use crate::Similarity;
use std::collections::{HashMap, HashSet};

/// Texts sent to the embedder per call by [`EmbeddingCache::embed_all`]; the
/// embedder sorts them by length and runs them in batches of its own
/// [`SentenceEmbedder::batch_size`] (64 by default).
pub const CACHE_CHUNK: usize = 1024;

/// Embeddings keyed by exact text (no trimming or case folding: `"Leg"` and
/// `"leg"` are two entries).
///
/// As a [`Similarity`], it answers the cosine of the two cached embeddings.
/// It never computes an embedding itself: call [`EmbeddingCache::embed_all`]
/// with every label first. A label missing from the cache is a bug in the
/// caller; debug builds panic, release builds answer 0.0.
#[derive(Clone, Debug, Default)]
pub struct EmbeddingCache {
    map: HashMap<String, Vec<f32>>,
}

impl EmbeddingCache {
    /// An empty cache.
    pub fn new() -> Self {
        Self::default()
    }

    /// Embeds the texts not yet in the cache (each distinct text once) and
    /// returns how many were embedded. They go to the embedder in chunks of
    /// [`CACHE_CHUNK`] texts, which it runs in padded batches of
    /// [`SentenceEmbedder::batch_size`].
    pub fn embed_all(&mut self, embedder: &SentenceEmbedder, texts: &[&str]) -> Result<usize> {
        let mut seen = HashSet::new();
        let missing: Vec<&str> = texts
            .iter()
            .copied()
            .filter(|t| !self.map.contains_key(*t) && seen.insert(*t))
            .collect();
        for chunk in missing.chunks(CACHE_CHUNK) {
            let vectors = embedder.embed(chunk)?;
            for (text, v) in chunk.iter().zip(vectors) {
                self.map.insert((*text).to_string(), v);
            }
        }
        Ok(missing.len())
    }

    /// The cached embedding of `text`.
    pub fn get(&self, text: &str) -> Option<&[f32]> {
        self.map.get(text).map(Vec::as_slice)
    }

    /// Whether `text` has been embedded.
    pub fn contains(&self, text: &str) -> bool {
        self.map.contains_key(text)
    }

    /// Stores an embedding computed elsewhere.
    pub fn insert(&mut self, text: impl Into<String>, embedding: Vec<f32>) {
        self.map.insert(text.into(), embedding);
    }

    /// Number of cached texts.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Cosine of the cached embeddings of `a` and `b`, or `None` when either
    /// is not cached.
    pub fn try_similarity(&self, a: &str, b: &str) -> Option<f64> {
        Some(cosine(self.get(a)?, self.get(b)?))
    }
}

impl Similarity for EmbeddingCache {
    /// Cosine of the cached embeddings. Both labels must have been passed to
    /// [`EmbeddingCache::embed_all`]; otherwise debug builds panic and
    /// release builds return 0.0.
    fn similarity(&self, a: &str, b: &str) -> f64 {
        match self.try_similarity(a, b) {
            Some(s) => s,
            None => {
                debug_assert!(
                    false,
                    "EmbeddingCache::similarity({a:?}, {b:?}): label not embedded; \
                     call embed_all with every label first"
                );
                0.0
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cached_cosine() {
        let mut c = EmbeddingCache::new();
        c.insert("a", vec![1.0, 0.0]);
        c.insert("b", vec![1.0, 1.0]);
        c.insert("c", vec![-2.0, 0.0]);
        assert!((c.similarity("a", "b") - std::f64::consts::FRAC_1_SQRT_2).abs() < 1e-12);
        assert_eq!(c.similarity("a", "c"), -1.0);
        assert_eq!(c.similarity("a", "a"), 1.0);
        assert_eq!(c.try_similarity("a", "zzz"), None);
        assert_eq!(c.len(), 3);
    }

    #[test]
    #[cfg(debug_assertions)]
    #[should_panic(expected = "label not embedded")]
    fn missing_label_panics_in_debug() {
        let c = EmbeddingCache::new();
        c.similarity("x", "y");
    }
}
