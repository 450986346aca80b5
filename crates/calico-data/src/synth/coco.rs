//! COCO-style JSON records shared by the three writers, and the driver that
//! renders a split in parallel chunks and streams it to its writer.

use super::io::{JsonStream, Sep};
use super::SynthConfig;
use crate::error::Result;
use crate::taxonomy::SourceFormat;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

/// Images rendered in parallel before their annotations are appended.
const CHUNK: usize = 256;

/// An `images[]` entry.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct CocoImage {
    pub id: u64,
    pub file_name: String,
    pub width: u32,
    pub height: u32,
}

/// An `annotations[]` entry; the optional fields belong to one format each.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct CocoAnn<S: Serialize> {
    pub id: u64,
    pub image_id: u64,
    pub category_id: u32,
    pub bbox: [f64; 4],
    pub area: u64,
    pub segmentation: S,
    pub iscrowd: u8,
    /// PACO parts: the object annotation the part belongs to.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub obj_ann_id: Option<u64>,
    /// ADE objects: the part classes visible on the object.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub part_category_id: Option<Vec<u16>>,
}

/// Images, objects and parts written to one split.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SplitCounts {
    /// `train`, `val` or `test`.
    pub split: String,
    /// Images written.
    pub images: usize,
    /// Object annotations.
    pub objects: usize,
    /// Part annotations.
    pub parts: usize,
}

/// A contiguous range of image indices forming one split.
#[derive(Clone, Debug)]
pub(crate) struct Split {
    /// `train`, `val` or `test`.
    pub name: &'static str,
    /// The format's directory or prefix for it (`train2017`, `training`, `train`).
    pub dir: &'static str,
    pub start: usize,
    pub end: usize,
}

/// Splits `n` images by the configured fractions. ADE20K has no test split:
/// its validation split takes the val and test fractions.
pub(crate) fn plan_splits(n: usize, fractions: [f32; 3], format: SourceFormat) -> Vec<Split> {
    let sum: f64 = fractions.iter().map(|&f| f as f64).sum();
    let b1 = ((n as f64) * fractions[0] as f64 / sum).round() as usize;
    let b2 = ((n as f64) * (fractions[0] + fractions[1]) as f64 / sum).round() as usize;
    let (b1, b2) = (b1.min(n), b2.min(n).max(b1.min(n)));
    let splits = match format {
        SourceFormat::PacoLvis => vec![
            ("train", "train2017", 0, b1),
            ("val", "val2017", b1, b2),
            ("test", "val2017", b2, n),
        ],
        SourceFormat::PartImageNet => vec![
            ("train", "train", 0, b1),
            ("val", "val", b1, b2),
            ("test", "test", b2, n),
        ],
        SourceFormat::Ade20kPart234 => {
            vec![("train", "training", 0, b1), ("val", "validation", b1, n)]
        }
    };
    splits
        .into_iter()
        .filter(|s| s.3 > s.2)
        .map(|(name, dir, start, end)| Split {
            name,
            dir,
            start,
            end,
        })
        .collect()
}

/// The generator of image `index` of `format`: independent of every other
/// image, so images can be rendered in any order on any thread.
pub(crate) fn image_rng(seed: u64, format: SourceFormat, index: usize) -> ChaCha8Rng {
    let tag: u64 = match format {
        SourceFormat::PacoLvis => 1,
        SourceFormat::PartImageNet => 2,
        SourceFormat::Ade20kPart234 => 3,
    };
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream((tag << 56) | index as u64);
    rng
}

/// One source format's output.
pub(crate) trait FormatWriter: Sync {
    /// What rendering one image hands to `append`.
    type Image: Send;
    /// Opens the split's files.
    fn begin_split(&mut self, split: &Split) -> Result<()>;
    /// Renders image `index` and writes its image files (runs in parallel).
    fn image(&self, cfg: &SynthConfig, split: &Split, index: usize) -> Result<Self::Image>;
    /// Streams one image's annotations (runs in index order).
    fn append(&mut self, image: Self::Image) -> Result<()>;
    /// Completes and renames the split's files.
    fn end_split(&mut self) -> Result<SplitCounts>;
}

/// Renders and writes every split of one format.
pub(crate) fn run<W: FormatWriter>(
    writer: &mut W,
    cfg: &SynthConfig,
    format: SourceFormat,
    progress: &mut dyn FnMut(usize),
) -> Result<Vec<SplitCounts>> {
    let mut counts = Vec::new();
    for split in plan_splits(cfg.images_per_source, cfg.splits, format) {
        writer.begin_split(&split)?;
        let mut start = split.start;
        while start < split.end {
            let end = (start + CHUNK).min(split.end);
            let w: &W = writer;
            let images: Vec<Result<W::Image>> = (start..end)
                .into_par_iter()
                .map(|i| w.image(cfg, &split, i))
                .collect();
            for image in images {
                writer.append(image?)?;
            }
            progress(end - start);
            start = end;
        }
        counts.push(writer.end_split()?);
    }
    Ok(counts)
}

/// The open JSON file of a split, with its annotation array being streamed.
pub(crate) struct OpenSplit {
    pub stream: JsonStream,
    pub sep: Sep,
    pub images: Vec<CocoImage>,
    pub counts: SplitCounts,
}

impl OpenSplit {
    /// Opens `path` and writes everything up to the first annotation.
    pub fn open(path: &std::path::Path, split: &Split, header: &str) -> Result<OpenSplit> {
        let mut stream = JsonStream::create(path)?;
        stream.raw(header)?;
        stream.raw("\"annotations\":[")?;
        Ok(OpenSplit {
            stream,
            sep: Sep::default(),
            images: Vec::new(),
            counts: SplitCounts {
                split: split.name.to_string(),
                ..Default::default()
            },
        })
    }

    /// Appends one annotation.
    pub fn annotation<S: Serialize>(&mut self, ann: &CocoAnn<S>) -> Result<()> {
        let sep = self.sep.next();
        self.stream.raw(sep)?;
        self.stream.value(ann)
    }

    /// Closes the annotation array, writes the images and the `tail`
    /// arrays, and renames the file into place.
    pub fn close(mut self, tail: &[(&str, &serde_json::Value)]) -> Result<SplitCounts> {
        self.stream.raw("]")?;
        self.stream.array("images", &self.images, false)?;
        for (key, value) in tail {
            self.stream.raw(&format!(",\"{key}\":"))?;
            self.stream.value(value)?;
        }
        self.stream.raw("}\n")?;
        self.stream.finish()?;
        Ok(self.counts)
    }
}

/// The `info` header shared by every file.
pub(crate) fn header(description: &str) -> String {
    let info = serde_json::json!({
        "description": description,
        "version": "1.0",
        "contributor": "SynthParts (calico-rs), procedurally generated",
    });
    format!("{{\"info\":{info},")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_cover_every_image_once() {
        for n in [0usize, 1, 2, 7, 100, 1001] {
            for f in [
                [0.8, 0.1, 0.1],
                [1.0, 0.0, 0.0],
                [0.0, 0.0, 1.0],
                [3.0, 1.0, 1.0],
            ] {
                for format in SourceFormat::ALL {
                    let s = plan_splits(n, f, format);
                    let mut next = 0;
                    for split in &s {
                        assert_eq!(split.start, next);
                        assert!(split.end > split.start);
                        next = split.end;
                    }
                    assert_eq!(next, n, "{n} {f:?} {format}");
                }
            }
        }
        let s = plan_splits(100, [0.8, 0.1, 0.1], SourceFormat::Ade20kPart234);
        assert_eq!(
            s.iter().map(|s| s.dir).collect::<Vec<_>>(),
            ["training", "validation"]
        );
        assert_eq!((s[1].start, s[1].end), (80, 100));
    }

    #[test]
    fn image_streams_differ_by_format_and_index() {
        use rand::Rng;
        let a: u64 = image_rng(1, SourceFormat::PacoLvis, 0).random();
        let b: u64 = image_rng(1, SourceFormat::PacoLvis, 1).random();
        let c: u64 = image_rng(1, SourceFormat::Ade20kPart234, 0).random();
        let d: u64 = image_rng(2, SourceFormat::PacoLvis, 0).random();
        let again: u64 = image_rng(1, SourceFormat::PacoLvis, 0).random();
        assert_eq!(a, again);
        assert!(a != b && a != c && a != d);
    }
}
