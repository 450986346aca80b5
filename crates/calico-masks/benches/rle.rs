//! RLE encode / decode / IoU timings on masks written by
//! `tools/bench/masks_bench.py`, which runs this with the data directory as
//! its argument and prints the comparison with pycocotools.
//!
//! Input directory: `masks.bin` (n row-major u8 masks), `meta.json`
//! (`{"n","height","width","pairs":[[i,j],…],"repeats"}`). Output: one JSON
//! object of best-of-`repeats` seconds per operation on stdout.

use calico_masks::{iou, iou_matrix, CocoRle, Mask, Rle};
use rayon::prelude::*;
use std::time::Instant;

fn best_of<T>(repeats: usize, mut f: impl FnMut() -> T) -> f64 {
    let mut best = f64::INFINITY;
    for _ in 0..repeats {
        let t = Instant::now();
        std::hint::black_box(f());
        best = best.min(t.elapsed().as_secs_f64());
    }
    best
}

fn main() {
    let Some(dir) = std::env::args().skip(1).find(|a| !a.starts_with("--")) else {
        eprintln!("usage: cargo bench -p calico-masks --bench rle -- DATA_DIR (run tools/bench/masks_bench.py)");
        return;
    };
    let dir = std::path::PathBuf::from(dir);
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("meta.json")).expect("meta.json"))
            .expect("meta.json is JSON");
    let n = meta["n"].as_u64().expect("n") as usize;
    let h = meta["height"].as_u64().expect("height") as u32;
    let w = meta["width"].as_u64().expect("width") as u32;
    let repeats = meta["repeats"].as_u64().unwrap_or(5) as usize;
    let pairs: Vec<(usize, usize)> = meta["pairs"]
        .as_array()
        .expect("pairs")
        .iter()
        .map(|p| {
            (
                p[0].as_u64().unwrap() as usize,
                p[1].as_u64().unwrap() as usize,
            )
        })
        .collect();
    let raw = std::fs::read(dir.join("masks.bin")).expect("masks.bin");
    let size = h as usize * w as usize;
    let masks: Vec<Mask> = (0..n)
        .map(|i| Mask::from_row_major(h, w, &raw[i * size..(i + 1) * size]).unwrap())
        .collect();
    // The inputs pycocotools gets: compressed strings in JSON objects.
    let objs: Vec<CocoRle> = masks
        .iter()
        .map(|m| CocoRle::from_rle(&Rle::encode(m)))
        .collect();
    let parse = |o: &CocoRle| o.to_rle().unwrap();

    // Both calls take the whole batch, as pycocotools' encode/decode do.
    let encode = best_of(repeats, || {
        Rle::encode_all(&masks)
            .par_iter()
            .map(CocoRle::from_rle)
            .collect::<Vec<_>>()
    });
    let decode = best_of(repeats, || {
        let rles: Vec<Rle> = objs.par_iter().map(parse).collect();
        Rle::decode_all(&rles).unwrap()
    });
    let iou_mat = best_of(repeats, || {
        let rles: Vec<Rle> = objs.iter().map(parse).collect();
        iou_matrix(&rles, &rles, &vec![false; n])
    });
    let iou_pairs = best_of(repeats, || {
        pairs
            .iter()
            .map(|&(i, j)| iou(&parse(&objs[i]), &parse(&objs[j])))
            .sum::<f64>()
    });
    println!(
        "{}",
        serde_json::json!({
            "threads": rayon::current_num_threads(),
            "encode": encode, "decode": decode,
            "iou_matrix": iou_mat, "iou_pairs": iou_pairs,
        })
    );
}
