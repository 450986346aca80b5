//! Identity with pycocotools 2.0.x (and Pillow's NEAREST resize) on random cases.
//!
//! Cases come from `tools/reference/pycocotools_cases.py`: the committed
//! `tests/fixtures/pycocotools_cases.json`, and — when the environment variable
//! `CALICO_COCO_CASES` names a file — a freshly generated set too (CI generates
//! ≥ 2,000 masks with a new seed on every run).

use base64::Engine;
use calico_masks::png_io::LabelMap;
use calico_masks::{bbox_to_rle, iou_matrix, polygons_to_rle, Mask, Rle};
use serde::Deserialize;
use std::path::PathBuf;

#[derive(Deserialize)]
struct Cases {
    seed: u64,
    pycocotools: String,
    masks: Vec<MaskCase>,
    iou: Vec<IouCase>,
    merge: Vec<MergeCase>,
    polygons: Vec<PolygonCase>,
    boxes: Vec<BoxCase>,
    uncompressed: Vec<UncompressedCase>,
    resize: Vec<ResizeCase>,
}

#[derive(Deserialize)]
struct MaskCase {
    h: u32,
    w: u32,
    bits: String,
    rle: String,
    area: u64,
    bbox: [f64; 4],
}

#[derive(Deserialize)]
struct IouCase {
    dt: Vec<usize>,
    gt: Vec<usize>,
    iscrowd: Vec<u8>,
    iou: Vec<Vec<f64>>,
}

#[derive(Deserialize)]
struct MergeCase {
    idx: Vec<usize>,
    intersect: u8,
    size: [u32; 2],
    rle: String,
}

#[derive(Deserialize)]
struct PolygonCase {
    h: u32,
    w: u32,
    polys: Vec<Vec<f64>>,
    rle: String,
    area: u64,
}

#[derive(Deserialize)]
struct BoxCase {
    h: u32,
    w: u32,
    bbox: [f64; 4],
    rle: String,
}

#[derive(Deserialize)]
struct UncompressedCase {
    h: u32,
    w: u32,
    counts: Vec<u32>,
    rle: String,
    area: u64,
    bbox: [f64; 4],
}

#[derive(Deserialize)]
struct ResizeCase {
    h: u32,
    w: u32,
    depth: u8,
    labels: Vec<u16>,
    oh: u32,
    ow: u32,
    out: Vec<u16>,
}

fn unpack(case: &MaskCase) -> Mask {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(&case.bits)
        .expect("base64");
    let n = case.h as usize * case.w as usize;
    let rows: Vec<u8> = (0..n).map(|i| (bytes[i / 8] >> (7 - i % 8)) & 1).collect();
    Mask::from_row_major(case.h, case.w, &rows).unwrap()
}

/// Checks one case file; returns the number of checked values.
fn check(path: &PathBuf) -> usize {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let cases: Cases = serde_json::from_str(&text).unwrap();
    let ctx = format!(
        "{} (seed {}, pycocotools {})",
        path.display(),
        cases.seed,
        cases.pycocotools
    );
    let mut checked = 0;

    let mut rles = Vec::new();
    for (i, c) in cases.masks.iter().enumerate() {
        let mask = unpack(c);
        let rle = Rle::encode(&mask);
        assert_eq!(rle.to_compressed(), c.rle, "{ctx}: encode of mask {i}");
        let parsed = Rle::from_compressed(&c.rle, c.h, c.w).unwrap();
        assert_eq!(parsed, rle, "{ctx}: string decode of mask {i}");
        assert_eq!(parsed.decode().unwrap(), mask, "{ctx}: decode of mask {i}");
        assert_eq!(rle.area(), c.area, "{ctx}: area of mask {i}");
        assert_eq!(rle.to_bbox(), c.bbox, "{ctx}: bbox of mask {i}");
        rles.push(rle);
        checked += 5;
    }
    for (i, c) in cases.iou.iter().enumerate() {
        let dt: Vec<Rle> = c.dt.iter().map(|&k| rles[k].clone()).collect();
        let gt: Vec<Rle> = c.gt.iter().map(|&k| rles[k].clone()).collect();
        let crowd: Vec<bool> = c.iscrowd.iter().map(|&v| v != 0).collect();
        let got = iou_matrix(&dt, &gt, &crowd);
        let want: Vec<f64> = c.iou.iter().flatten().copied().collect();
        assert_eq!(got.len(), want.len(), "{ctx}: iou set {i} shape");
        for (k, (g, w)) in got.iter().zip(&want).enumerate() {
            assert!(
                g.to_bits() == w.to_bits(),
                "{ctx}: iou set {i} entry {k}: {g} vs {w}"
            );
        }
        checked += got.len();
        // The single-pair function takes its own path; it must agree too.
        for (d, a) in dt.iter().enumerate() {
            for (g, b) in gt.iter().enumerate() {
                if !crowd[g] {
                    let w = want[d * gt.len() + g];
                    let p = calico_masks::iou(a, b);
                    assert!(
                        p.to_bits() == w.to_bits(),
                        "{ctx}: iou set {i} pair ({d}, {g}): {p} vs {w}"
                    );
                    checked += 1;
                }
            }
        }
    }
    for (i, c) in cases.merge.iter().enumerate() {
        let parts: Vec<Rle> = c.idx.iter().map(|&k| rles[k].clone()).collect();
        let m = Rle::merge(&parts, c.intersect != 0);
        assert_eq!([m.height, m.width], c.size, "{ctx}: merge {i} size");
        assert_eq!(m.to_compressed(), c.rle, "{ctx}: merge {i}");
        checked += 1;
    }
    for (i, c) in cases.polygons.iter().enumerate() {
        let r = polygons_to_rle(&c.polys, c.h, c.w).unwrap();
        assert_eq!(
            r.to_compressed(),
            c.rle,
            "{ctx}: polygons {i}: {:?}",
            c.polys
        );
        assert_eq!(r.area(), c.area, "{ctx}: polygon area {i}");
        checked += 2;
    }
    for (i, c) in cases.boxes.iter().enumerate() {
        let r = bbox_to_rle(c.bbox, c.h, c.w).unwrap();
        assert_eq!(r.to_compressed(), c.rle, "{ctx}: box {i}: {:?}", c.bbox);
        checked += 1;
    }
    for (i, c) in cases.uncompressed.iter().enumerate() {
        let r = Rle::new(c.h, c.w, c.counts.clone());
        assert_eq!(r.to_compressed(), c.rle, "{ctx}: uncompressed {i}");
        let back = Rle::from_compressed(&c.rle, c.h, c.w).unwrap();
        assert_eq!(
            back.counts, c.counts,
            "{ctx}: uncompressed {i} string decode"
        );
        assert_eq!(r.area(), c.area, "{ctx}: uncompressed {i} area");
        assert_eq!(r.to_bbox(), c.bbox, "{ctx}: uncompressed {i} bbox");
        checked += 4;
    }
    for (i, c) in cases.resize.iter().enumerate() {
        let map = LabelMap {
            height: c.h,
            width: c.w,
            bit_depth: c.depth,
            data: c.labels.clone(),
        };
        let out = map.resize_nearest(c.oh, c.ow);
        let first_diff = out.data.iter().zip(&c.out).position(|(a, b)| a != b);
        assert!(
            out.data.len() == c.out.len() && first_diff.is_none(),
            "{ctx}: resize {i} ({}-bit) {}×{} → {}×{} differs from Pillow at pixel {first_diff:?}",
            c.depth,
            c.h,
            c.w,
            c.oh,
            c.ow
        );
        checked += 1;
    }
    eprintln!(
        "{ctx}: {} masks, {} polygon sets, {checked} values identical",
        cases.masks.len(),
        cases.polygons.len()
    );
    checked
}

#[test]
fn committed_cases_match_pycocotools() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/pycocotools_cases.json");
    assert!(check(&path) > 1000);
}

#[test]
fn fresh_cases_match_pycocotools() {
    match std::env::var_os("CALICO_COCO_CASES") {
        Some(p) => {
            assert!(check(&PathBuf::from(p)) > 1000);
        }
        None => eprintln!("CALICO_COCO_CASES not set: only the committed cases were checked"),
    }
}
