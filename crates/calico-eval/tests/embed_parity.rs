//! all-MiniLM-L6-v2 embeddings against sentence-transformers.
//!
//! Reference: `tests/fixtures/minilm/reference.json`, written by
//! `tools/reference/minilm_reference.py` from the model directory that
//! `bash tools/reference/fetch_models.sh` fetches. Without that directory
//! these tests fail, unless `CALICO_SKIP_MODEL_TESTS=1` (then they pass with
//! a notice).

mod common;

use common::model_dir;

use calico_eval::embed::{cosine, Device, EmbeddingCache, SentenceEmbedder};
use calico_eval::Similarity;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use std::path::Path;
use std::sync::OnceLock;

const MIN_COSINE: f64 = 0.99999;
const MAX_ABS_DIFF: f32 = 1e-4;

#[derive(Deserialize)]
struct Reference {
    model_sha256: String,
    sentence_transformers: String,
    torch: String,
    max_seq_length: usize,
    normalized: bool,
    labels: Vec<String>,
    token_ids: Vec<Vec<u32>>,
    embeddings: Vec<Vec<f32>>,
}

/// One embedder shared by the tests of this file.
fn embedder() -> Option<&'static SentenceEmbedder> {
    static EMBEDDER: OnceLock<SentenceEmbedder> = OnceLock::new();
    let dir = model_dir()?;
    Some(EMBEDDER.get_or_init(|| {
        SentenceEmbedder::load(&dir, &Device::Cpu)
            .unwrap_or_else(|e| panic!("loading {}: {e}", dir.display()))
    }))
}

fn reference() -> Reference {
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/minilm/reference.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn sha256_hex(path: &Path) -> String {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    Sha256::digest(&bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

#[test]
fn matches_sentence_transformers() {
    let Some(embedder) = embedder() else { return };
    let r = reference();
    assert!(
        !r.normalized,
        "reference must hold raw (unnormalised) embeddings"
    );
    assert!(
        r.labels.len() >= 50,
        "reference has only {} labels",
        r.labels.len()
    );
    assert_eq!(r.labels.len(), r.embeddings.len());
    assert_eq!(r.labels.len(), r.token_ids.len());
    let weights = embedder.dir().join("model.safetensors");
    assert_eq!(
        sha256_hex(&weights),
        r.model_sha256,
        "{} is not the model the reference was made from \
         (run `bash tools/reference/fetch_models.sh`, or unset CALICO_MINILM_DIR)",
        weights.display()
    );
    assert_eq!(embedder.max_seq_length(), r.max_seq_length);

    for (label, ids) in r.labels.iter().zip(&r.token_ids) {
        assert_eq!(
            &embedder.token_ids(label).unwrap(),
            ids,
            "token ids of {label:?}"
        );
    }

    let texts: Vec<&str> = r.labels.iter().map(String::as_str).collect();
    let got = embedder.embed(&texts).unwrap();
    assert_eq!(got.len(), texts.len());
    let (mut min_cos, mut max_diff) = (f64::INFINITY, 0.0f32);
    let mut failures = Vec::new();
    for ((label, want), have) in r.labels.iter().zip(&r.embeddings).zip(&got) {
        assert_eq!(have.len(), embedder.dim());
        let c = cosine(want, have);
        let d = max_abs_diff(want, have);
        min_cos = min_cos.min(c);
        max_diff = max_diff.max(d);
        if c < MIN_COSINE || d > MAX_ABS_DIFF {
            failures.push(format!("{label:?}: cosine {c:.8}, max abs diff {d:.2e}"));
        }
    }
    eprintln!(
        "parity with sentence-transformers {} (torch {}): {} labels, min cosine {min_cos:.9}, \
         max abs diff {max_diff:.3e}",
        r.sentence_transformers,
        r.torch,
        r.labels.len()
    );
    assert!(
        failures.is_empty(),
        "labels off the reference:\n{}",
        failures.join("\n")
    );
}

#[test]
fn batch_does_not_change_embeddings() {
    let Some(embedder) = embedder() else { return };
    let long = "the left front leg of the old oak dining chair ".repeat(40);
    let texts = [
        "leg",
        "seat cushion",
        "the handle of the coffee mug on the kitchen table",
        long.as_str(),
        "",
        "café",
    ];
    assert!(embedder.token_ids(&long).unwrap().len() == embedder.max_seq_length());
    let together = embedder.embed(&texts).unwrap();
    let reversed: Vec<&str> = texts.iter().rev().copied().collect();
    let backwards = embedder.embed(&reversed).unwrap();
    for (i, text) in texts.iter().enumerate() {
        let alone = embedder.embed(&[text]).unwrap().remove(0);
        let d = max_abs_diff(&alone, &together[i]);
        assert!(d <= 1e-5, "{text:?}: alone vs batch differ by {d:e}");
        let d = max_abs_diff(&alone, &backwards[texts.len() - 1 - i]);
        assert!(
            d <= 1e-5,
            "{text:?}: alone vs reversed batch differ by {d:e}"
        );
    }
    assert!(embedder.embed(&[]).unwrap().is_empty());
}

#[test]
fn cache_embeds_each_label_once() {
    let Some(embedder) = embedder() else { return };
    let labels = [
        "seat cushion",
        "chair's seat",
        "steering wheel",
        "leg",
        "seat cushion",
    ];
    let mut cache = EmbeddingCache::new();
    assert_eq!(cache.embed_all(embedder, &labels).unwrap(), 4);
    assert_eq!(cache.len(), 4);
    assert_eq!(
        cache.embed_all(embedder, &labels).unwrap(),
        0,
        "second call embedded again"
    );
    assert_eq!(cache.embed_all(embedder, &["leg", "wheel"]).unwrap(), 1);
    assert_eq!(cache.len(), 5);

    let direct = embedder.embed(&["chair's seat"]).unwrap().remove(0);
    assert!(max_abs_diff(cache.get("chair's seat").unwrap(), &direct) <= 1e-5);

    let close = cache.similarity("seat cushion", "chair's seat");
    let far = cache.similarity("seat cushion", "steering wheel");
    assert!(
        close > far,
        "seat cushion ~ chair's seat {close} <= ~ steering wheel {far}"
    );
    assert!((cache.similarity("leg", "leg") - 1.0).abs() < 1e-12);
    assert_eq!(cache.try_similarity("leg", "arm"), None);
}

#[test]
fn embeddings_are_reproducible_from_the_default_loader() {
    if model_dir().is_none() {
        return;
    }
    let a = SentenceEmbedder::load_default().unwrap();
    let b = embedder().unwrap();
    assert_eq!(a.dim(), 384);
    assert_eq!(a.max_seq_length(), 256);
    let x = a.embed(&["bird's wing"]).unwrap();
    let y = b.embed(&["bird's wing"]).unwrap();
    assert_eq!(x, y);
}
