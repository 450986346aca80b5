//! The files of a segmentation (`calico segment --out DIR`) and reading
//! them back for a report:
//!
//! * `mask_<k>_img<i>.png` — mask `k` (0-based, answer order) on image `i`
//!   (0-based, as in `masks.json`), 0/255 grey PNG at the image's size;
//! * `masks.json` — the predictions.jsonl record (`{"id","answer","masks":
//!   [{"image","label","rle","score"}]}`, COCO RLE) on one line, so records
//!   of several runs concatenate into a predictions file;
//! * `overlay_img<i>.png` — the overlay of image `i`;
//! * `segment.json` — [`Summary`]: question, answer, images, legend, the
//!   model, and which file holds what.
//!
//! Every file is written atomically (temporary sibling + rename).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{AppError, Result};
use crate::overlay::LegendEntry;
use crate::report::GalleryItem;
use crate::segment::SegmentResult;

pub const MASKS_JSON: &str = "masks.json";
pub const SUMMARY_JSON: &str = "segment.json";

/// One mask in [`Summary`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SummaryMask {
    pub image: usize,
    pub label: String,
    pub colour: String,
    pub area: u64,
    pub file: String,
}

/// `segment.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Summary {
    /// Task name (CLI spelling) or `custom`.
    pub task: String,
    pub question: String,
    pub answer: String,
    pub images: Vec<String>,
    /// `[height, width]` per image.
    pub sizes: Vec<[u32; 2]>,
    pub masks: Vec<SummaryMask>,
    pub legend: Vec<LegendEntryJson>,
    pub unrouted: usize,
    /// Which model answered.
    pub model: String,
    /// True for random (untrained) weights.
    pub untrained: bool,
    /// Overlay file per image.
    pub overlays: Vec<String>,
    /// The predictions record file.
    pub predictions: String,
}

/// A legend entry as stored in JSON.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LegendEntryJson {
    pub label: String,
    pub colour: String,
}

/// File name of mask `k` on image `i`.
pub fn mask_file(k: usize, image: usize) -> String {
    format!("mask_{k}_img{image}.png")
}

/// File name of image `i`'s overlay.
pub fn overlay_file(image: usize) -> String {
    format!("overlay_img{image}.png")
}

fn io(path: &Path, e: impl std::fmt::Display) -> AppError {
    AppError::Output(format!("{}: {e}", path.display()))
}

fn write_bytes(path: &Path, bytes: &[u8]) -> Result<()> {
    calico_masks::png_io::write_atomic(path, |w| std::io::Write::write_all(w, bytes))
        .map_err(|e| io(path, e))
}

/// The summary of `r`.
pub fn summary(r: &SegmentResult, task: &str, model: &str, untrained: bool) -> Summary {
    Summary {
        task: task.to_string(),
        question: r.question.clone(),
        answer: r.answer.clone(),
        images: r.images.clone(),
        sizes: r.sizes.clone(),
        masks: r
            .masks
            .iter()
            .enumerate()
            .map(|(k, m)| SummaryMask {
                image: m.image,
                label: m.label.clone(),
                colour: m.colour.clone(),
                area: m.area,
                file: mask_file(k, m.image),
            })
            .collect(),
        legend: r
            .legend
            .iter()
            .map(|e| LegendEntryJson {
                label: e.label.clone(),
                colour: e.colour.clone(),
            })
            .collect(),
        unrouted: r.unrouted,
        model: model.to_string(),
        untrained,
        overlays: (0..r.images.len()).map(overlay_file).collect(),
        predictions: MASKS_JSON.to_string(),
    }
}

/// Writes the files of `r` into `dir` (created if needed); `id` is the
/// prediction record's id. Returns the paths written.
pub fn write_segment_dir(
    dir: &Path,
    r: &SegmentResult,
    id: &str,
    s: &Summary,
) -> Result<Vec<PathBuf>> {
    if dir.exists() && !dir.is_dir() {
        return Err(AppError::Input(format!(
            "{}: exists and is not a directory",
            dir.display()
        )));
    }
    std::fs::create_dir_all(dir).map_err(|e| io(dir, e))?;
    let mut written = Vec::new();
    for (k, m) in r.masks.iter().enumerate() {
        let p = dir.join(mask_file(k, m.image));
        calico_masks::png_io::write_mask_png(&p, &m.mask).map_err(|e| io(&p, e))?;
        written.push(p);
    }
    for (i, png) in r.overlays.iter().enumerate() {
        let p = dir.join(overlay_file(i));
        write_bytes(&p, png)?;
        written.push(p);
    }
    let p = dir.join(MASKS_JSON);
    let rec = serde_json::to_string(&r.prediction(id)).map_err(|e| io(&p, e))?;
    write_bytes(&p, (rec + "\n").as_bytes())?;
    written.push(p);
    let p = dir.join(SUMMARY_JSON);
    let text = serde_json::to_string_pretty(s).map_err(|e| io(&p, e))?;
    write_bytes(&p, (text + "\n").as_bytes())?;
    written.push(p);
    Ok(written)
}

/// A gallery entry from a segmentation directory: `segment.json` when
/// present, else just its `overlay_*.png` files.
pub fn read_segment_dir(dir: &Path) -> Result<GalleryItem> {
    if !dir.is_dir() {
        return Err(AppError::Input(format!(
            "{}: no such overlay directory",
            dir.display()
        )));
    }
    let read = |name: &str| -> Result<Vec<u8>> {
        let p = dir.join(name);
        std::fs::read(&p).map_err(|e| AppError::Input(format!("{}: {e}", p.display())))
    };
    let title = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| dir.display().to_string());
    let sp = dir.join(SUMMARY_JSON);
    if sp.is_file() {
        let text = String::from_utf8(read(SUMMARY_JSON)?)
            .map_err(|e| AppError::Input(format!("{}: {e}", sp.display())))?;
        let s: Summary = serde_json::from_str(&text)
            .map_err(|e| AppError::Input(format!("{}: {e}", sp.display())))?;
        let mut overlays = Vec::new();
        for (i, f) in s.overlays.iter().enumerate() {
            let name = s.images.get(i).cloned().unwrap_or_else(|| f.clone());
            overlays.push((name, read(f)?));
        }
        return Ok(GalleryItem {
            title: format!("{title} — {}", s.task),
            question: s.question,
            answer: s.answer,
            legend: s
                .legend
                .into_iter()
                .map(|e| LegendEntry {
                    rgb: parse_hex(&e.colour),
                    label: e.label,
                    colour: e.colour,
                })
                .collect(),
            overlays,
            note: Some(format!("model: {}", s.model)),
        });
    }
    let mut files: Vec<String> = std::fs::read_dir(dir)
        .map_err(|e| AppError::Input(format!("{}: {e}", dir.display())))?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("overlay") && n.ends_with(".png"))
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(AppError::Input(format!(
            "{}: no {SUMMARY_JSON} and no overlay_*.png files",
            dir.display()
        )));
    }
    let mut overlays = Vec::new();
    for f in files {
        overlays.push((f.clone(), read(&f)?));
    }
    Ok(GalleryItem {
        title,
        overlays,
        ..Default::default()
    })
}

/// `#rrggbb` → RGB (black when malformed).
pub fn parse_hex(s: &str) -> [u8; 3] {
    let h = s.trim_start_matches('#');
    let c = |i: usize| {
        h.get(i..i + 2)
            .and_then(|x| u8::from_str_radix(x, 16).ok())
            .unwrap_or(0)
    };
    [c(0), c(2), c(4)]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::overlay::{ColourMap, OverlayStyle};
    use crate::segment::{render_overlays, NamedImage, SegmentedMask};
    use calico_masks::{CocoRle, Mask, Rle};
    use image::RgbImage;

    /// Two images, a common part on both and a unique part on one.
    pub(crate) fn synthetic() -> SegmentResult {
        let images: Vec<NamedImage> = [(96u32, 64u32), (80, 72)]
            .iter()
            .enumerate()
            .map(|(i, (w, h))| NamedImage {
                name: format!("img{i}.png"),
                image: RgbImage::from_fn(*w, *h, |x, y| {
                    image::Rgb([(x * 2) as u8, (y * 3) as u8, 120])
                }),
            })
            .collect();
        let colours = ColourMap::from_labels(["the lid", "the handle"]);
        let mk = |image: usize, label: &str, x0: u32, x1: u32| {
            let (w, h) = images[image].image.dimensions();
            let mask = Mask::from_fn(h, w, |y, x| {
                (x0..x1).contains(&x) && (8..h / 2).contains(&y)
            });
            SegmentedMask {
                image,
                label: label.into(),
                colour: crate::overlay::hex(colours.colour(label)),
                area: mask.area(),
                rle: CocoRle::from_rle(&Rle::encode(&mask)),
                mask,
            }
        };
        let masks = vec![
            mk(0, "the lid", 10, 40),
            mk(1, "the lid", 30, 70),
            mk(0, "the handle", 50, 90),
        ];
        let overlays =
            render_overlays(&images, &masks, &colours, &OverlayStyle::default()).unwrap();
        SegmentResult {
            question: "Can you segment the common parts?".into(),
            answer: "Both have <p> the lid </p> [SEG] (IMAGE1) [SEG] (IMAGE2), and <p> the handle </p> [SEG] (IMAGE1).".into(),
            images: images.iter().map(|i| i.name.clone()).collect(),
            sizes: images.iter().map(|i| [i.image.height(), i.image.width()]).collect(),
            masks,
            legend: colours.legend(),
            unrouted: 0,
            overlays,
        }
    }

    #[test]
    fn segment_dir_round_trips_into_a_gallery_item() {
        let dir = std::env::temp_dir().join(format!("calico-app-out-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let r = synthetic();
        let s = summary(&r, "common-parts", "test model", false);
        let written = write_segment_dir(&dir, &r, "x/1", &s).unwrap();
        assert_eq!(written.len(), 3 + 2 + 2);
        for f in [
            "mask_0_img0.png",
            "mask_1_img1.png",
            "mask_2_img0.png",
            "overlay_img1.png",
        ] {
            assert!(dir.join(f).is_file(), "{f}");
        }
        let m = calico_masks::png_io::read_mask_png(&dir.join("mask_1_img1.png")).unwrap();
        assert_eq!(m, r.masks[1].mask);
        let rec: calico_eval::predictions::Prediction =
            serde_json::from_str(&std::fs::read_to_string(dir.join(MASKS_JSON)).unwrap()).unwrap();
        assert_eq!(rec.id, "x/1");
        assert_eq!(rec.masks.len(), 3);
        assert_eq!(
            rec.masks[1].rle.to_rle().unwrap().decode().unwrap(),
            r.masks[1].mask
        );
        let g = read_segment_dir(&dir).unwrap();
        assert_eq!(g.overlays.len(), 2);
        assert_eq!(g.legend.len(), 2);
        assert_eq!(g.legend[0].rgb, crate::overlay::PALETTE[0]);
        assert_eq!(g.answer, r.answer);
        // The common part has one colour in both masks' records.
        assert_eq!(s.masks[0].colour, s.masks[1].colour);
        assert_ne!(s.masks[0].colour, s.masks[2].colour);
        if std::env::var_os("CALICO_APP_KEEP").is_none() {
            let _ = std::fs::remove_dir_all(&dir);
        }
    }
}
