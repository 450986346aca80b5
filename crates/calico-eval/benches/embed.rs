//! Label-embedding throughput of all-MiniLM-L6-v2 (CPU, F32).
//!
//! `cargo bench -p calico-eval --bench embed [-- N] [--batch B] [--labels FILE]`
//!
//! Embeds N distinct synthetic part labels (default 2,000; or the first N
//! lines of FILE, one label a line) through an `EmbeddingCache`, in batches
//! of B (default 64), after a one-batch warm-up, and prints one JSON line:
//! `{"labels":…,"batch_size":…,"seconds":…,"labels_per_s":…,"load_s":…}`.
//! `tools/bench/embed_bench.py` runs it beside sentence-transformers.
//! Needs the model (`bash tools/reference/fetch_models.sh` or
//! `CALICO_MINILM_DIR`).

use calico_eval::embed::{EmbeddingCache, SentenceEmbedder};
use std::time::Instant;

const ADJECTIVES: [&str; 12] = [
    "left", "right", "front", "rear", "upper", "lower", "wooden", "metal", "small", "large",
    "inner", "outer",
];
const OBJECTS: [&str; 14] = [
    "chair", "table", "lamp", "car", "bicycle", "mug", "bottle", "laptop", "bird", "dog",
    "airplane", "guitar", "sofa", "kettle",
];
const PARTS: [&str; 16] = [
    "leg", "seat", "back", "arm", "wheel", "handle", "lid", "screen", "wing", "tail", "door",
    "shade", "spout", "keyboard", "cushion", "frame",
];

/// The `i`-th synthetic label; distinct for i < 12·14·16·4.
fn synthetic_label(i: usize) -> String {
    let a = ADJECTIVES[i % ADJECTIVES.len()];
    let o = OBJECTS[(i / ADJECTIVES.len()) % OBJECTS.len()];
    let p = PARTS[(i / (ADJECTIVES.len() * OBJECTS.len())) % PARTS.len()];
    match (i / (ADJECTIVES.len() * OBJECTS.len() * PARTS.len())) % 4 {
        0 => format!("{a} {p} of the {o}"),
        1 => format!("{o}'s {a} {p}"),
        2 => format!("the {a} {o} {p}"),
        _ => format!("{p} ({a} side) of a {o}"),
    }
}

fn main() {
    let mut n = 2000usize;
    let mut batch = 64usize;
    let mut file = None;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--bench" => {}
            "--batch" => batch = args.next().and_then(|v| v.parse().ok()).expect("--batch B"),
            "--labels" => file = Some(args.next().expect("--labels FILE")),
            other => match other.parse() {
                Ok(v) => n = v,
                Err(_) => panic!("unexpected argument {other:?}"),
            },
        }
    }
    let labels: Vec<String> = match file {
        Some(path) => std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("{path}: {e}"))
            .lines()
            .take(n)
            .map(str::to_string)
            .collect(),
        None => (0..n).map(synthetic_label).collect(),
    };
    let labels: Vec<&str> = labels.iter().map(String::as_str).collect();

    let t = Instant::now();
    let mut embedder = SentenceEmbedder::load_default().unwrap_or_else(|e| panic!("{e}"));
    let load_s = t.elapsed().as_secs_f64();
    embedder.set_batch_size(batch);

    // Warm-up on other texts, so that the timed run embeds every label.
    let warm: Vec<String> = labels
        .iter()
        .take(batch)
        .map(|l| format!("warm {l}"))
        .collect();
    let warm: Vec<&str> = warm.iter().map(String::as_str).collect();
    embedder.embed(&warm).unwrap();

    let mut cache = EmbeddingCache::new();
    let t = Instant::now();
    let embedded = cache.embed_all(&embedder, &labels).unwrap();
    let seconds = t.elapsed().as_secs_f64();
    println!(
        "{{\"labels\":{embedded},\"batch_size\":{batch},\"seconds\":{seconds:.4},\
         \"labels_per_s\":{:.1},\"load_s\":{load_s:.3}}}",
        embedded as f64 / seconds
    );
}
