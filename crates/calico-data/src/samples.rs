//! `samples.jsonl`: one MixedParts co-segmentation sample per line.
//!
//! ```json
//! {"id":"paco_lvis/000123","task":"common_parts","source":"paco_lvis","split":"train",
//!  "images":[{"file":"images/a.jpg","width":640,"height":480},{"file":"images/b.jpg","width":500,"height":375}],
//!  "question":"Can you segment the common parts of the objects in these images?",
//!  "answer":"The images show <p> a chair </p> [SEG] (IMAGE1) and <p> an ottoman </p> [SEG] (IMAGE2). …",
//!  "masks":[{"image":0,"label":"chair","rle":{"size":[480,640],"counts":"…"}}, …]}
//! ```
//!
//! `masks` are in `[SEG]` order, `image` is 0-based, `rle` is COCO compressed
//! RLE. `question` is the task question without the multi-image prefix (the
//! prompt builder adds it for the number of images).

use calico_masks::CocoRle;
use serde::{Deserialize, Serialize};

/// Task names as written in samples.
pub const TASKS: [&str; 3] = ["common_object", "common_parts", "unique_parts"];

/// One image of a sample.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SampleImage {
    /// Path to the image, relative to the directory of the samples file
    /// (or absolute).
    pub file: String,
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
}

/// One ground-truth mask, in `[SEG]` order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SampleMask {
    /// 0-based image index.
    pub image: usize,
    /// Label without article, e.g. `leg`.
    pub label: String,
    /// The mask, `size` = `[height, width]` of its image.
    pub rle: CocoRle,
}

/// One co-segmentation sample.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sample {
    /// Unique id, `{source}/{number}` for built samples.
    pub id: String,
    /// `common_object`, `common_parts` or `unique_parts`.
    pub task: String,
    /// Source dataset name (`paco_lvis`, `part_image_net`, `ade20k_part234`, or a user name).
    pub source: String,
    /// `train`, `val` or `test` (absent in user files).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub split: Option<String>,
    /// The images, in order (IMAGE1 first).
    pub images: Vec<SampleImage>,
    /// The question (without the multi-image prefix).
    pub question: String,
    /// The grounded answer.
    pub answer: String,
    /// Ground-truth masks in `[SEG]` order.
    pub masks: Vec<SampleMask>,
}
