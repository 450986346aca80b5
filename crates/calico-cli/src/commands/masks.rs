//! `calico masks …`: COCO RLE tools.

use crate::exit::bad_input;
use anyhow::{Context, Result};
use calico_masks::png_io::{read_label_png, write_mask_png};
use calico_masks::{iou, CocoRle, Rle};
use clap::{Args, Subcommand};
use std::path::{Path, PathBuf};

#[derive(Subcommand)]
pub enum MasksCommand {
    /// Encode a label PNG (8/16-bit) as COCO RLE JSON.
    Encode(EncodeArgs),
    /// Decode COCO RLE JSON to a 0/255 PNG.
    Decode(DecodeArgs),
    /// Area and bounding box of COCO RLE JSON masks.
    Info(InfoArgs),
    /// IoU between two COCO RLE JSON masks (pycocotools semantics).
    Iou(IouArgs),
}

#[derive(Args)]
pub struct EncodeArgs {
    /// A grayscale or palette PNG.
    png: PathBuf,
    /// Encode the pixels equal to this label (default: every non-zero pixel).
    #[arg(long)]
    label: Option<u16>,
}

#[derive(Args)]
pub struct DecodeArgs {
    /// A JSON file with `{"size": [h, w], "counts": …}`.
    rle: PathBuf,
    /// Output PNG.
    #[arg(long)]
    out: PathBuf,
}

#[derive(Args)]
pub struct InfoArgs {
    /// JSON files, each one RLE object or a list of them.
    #[arg(required = true)]
    rle: Vec<PathBuf>,
}

#[derive(Args)]
pub struct IouArgs {
    a: PathBuf,
    b: PathBuf,
    /// Treat B as a crowd region (union = area of A).
    #[arg(long)]
    crowd: bool,
}

pub fn run(cmd: MasksCommand) -> Result<()> {
    match cmd {
        MasksCommand::Encode(a) => {
            let map = read_label_png(&a.png)?;
            let mask = match a.label {
                Some(l) => map.mask_of(l),
                None => map.mask_where(|v| v != 0),
            };
            let rle = Rle::encode(&mask);
            let out = serde_json::json!({
                "size": [rle.height, rle.width], "counts": rle.to_compressed(),
                "area": rle.area(), "bbox": rle.to_bbox(),
            });
            println!("{out}");
            Ok(())
        }
        MasksCommand::Decode(a) => {
            let rle = read_rles(&a.rle)?
                .into_iter()
                .next()
                .ok_or_else(|| bad_input(format!("{}: no RLE object", a.rle.display())))?;
            let mask = rle
                .decode()
                .with_context(|| format!("{}: cannot decode", a.rle.display()))?;
            write_mask_png(&a.out, &mask)?;
            eprintln!(
                "wrote {} ({}×{}, area {})",
                a.out.display(),
                mask.height(),
                mask.width(),
                mask.area()
            );
            Ok(())
        }
        MasksCommand::Info(a) => {
            for path in &a.rle {
                for (k, rle) in read_rles(path)?.iter().enumerate() {
                    let out = serde_json::json!({
                        "file": path, "index": k, "size": [rle.height, rle.width],
                        "area": rle.area(), "bbox": rle.to_bbox(),
                    });
                    println!("{out}");
                }
            }
            Ok(())
        }
        MasksCommand::Iou(a) => {
            let first = |p: &Path| -> Result<Rle> {
                read_rles(p)?
                    .into_iter()
                    .next()
                    .ok_or_else(|| bad_input(format!("{}: no RLE object", p.display())))
            };
            let (ra, rb) = (first(&a.a)?, first(&a.b)?);
            let value = if a.crowd {
                calico_masks::iou_matrix(&[ra], &[rb], &[true])[0]
            } else {
                iou(&ra, &rb)
            };
            println!("{value}");
            Ok(())
        }
    }
}

/// Reads one RLE object or a list of them from a JSON file.
fn read_rles(path: &Path) -> Result<Vec<Rle>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let value: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("{}: not JSON", path.display()))?;
    let items = match value {
        serde_json::Value::Array(items) => items,
        other => vec![other],
    };
    items
        .into_iter()
        .enumerate()
        .map(|(k, v)| {
            let obj: CocoRle = serde_json::from_value(v).map_err(|e| {
                bad_input(format!(
                    "{} item {k}: expected {{\"size\": [h, w], \"counts\": …}}: {e}",
                    path.display()
                ))
            })?;
            obj.to_rle()
                .with_context(|| format!("{} item {k}", path.display()))
        })
        .collect()
}
