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

/// What a mask shows: a whole object or a common / unique part.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MaskRole {
    /// A whole object (the common object, or an object named before its parts).
    Object,
    /// A part present on every image.
    CommonPart,
    /// A part present on only some images.
    UniquePart,
}

impl MaskRole {
    /// snake_case name.
    pub fn as_str(self) -> &'static str {
        match self {
            MaskRole::Object => "object",
            MaskRole::CommonPart => "common_part",
            MaskRole::UniquePart => "unique_part",
        }
    }
}

/// One ground-truth mask, in `[SEG]` order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SampleMask {
    /// 0-based image index.
    pub image: usize,
    /// Label without article, e.g. `leg`.
    pub label: String,
    /// Object, common part or unique part (written by the builder; optional in user files).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<MaskRole>,
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

/// Reads every sample of a JSONL file; errors name the file and line.
pub fn read_samples(path: &std::path::Path) -> crate::Result<Vec<Sample>> {
    let mut out = Vec::new();
    for_each_sample(path, |s| {
        out.push(s);
        Ok(())
    })?;
    Ok(out)
}

/// Streams the samples of a JSONL file (blank lines are skipped, and so is
/// the byte-order mark some editors write at the start of a UTF-8 file).
pub fn for_each_sample(
    path: &std::path::Path,
    mut f: impl FnMut(Sample) -> crate::Result<()>,
) -> crate::Result<()> {
    let lines = crate::jsonl::JsonLines::open(path).map_err(|e| crate::DataError::io(path, e))?;
    for line in lines {
        let (n, line) = line.map_err(|e| match e {
            crate::jsonl::LineError::Io(e) => crate::DataError::io(path, e),
            e => crate::DataError::invalid(path, e.context(), e.problem()),
        })?;
        let sample: Sample = serde_json::from_str(&line)
            .map_err(|e| crate::DataError::json(path, format!("line {n}"), e))?;
        f(sample)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_byte_order_mark_is_skipped_and_bad_lines_are_named() {
        let dir = std::env::temp_dir().join(format!("calico-samples-bom-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let line = r#"{"id": "a/1", "task": "common_object", "source": "a", "images": [{"file": "x.png", "width": 4, "height": 4}], "question": "q", "answer": "a", "masks": []}"#;
        let p = dir.join("bom.jsonl");
        std::fs::write(&p, format!("\u{feff}{line}\n\n{line}\n")).unwrap();
        let samples = read_samples(&p).unwrap();
        assert_eq!(samples.len(), 2);
        assert_eq!(samples[0].id, "a/1");
        std::fs::write(&p, format!("{line}\n{{\n")).unwrap();
        let e = read_samples(&p).unwrap_err().to_string();
        assert!(e.contains("line 2"), "{e}");
        let mut bytes = format!("{line}\r\n{line}\n").into_bytes();
        bytes.extend_from_slice(b"{\"id\": \"\xff\"}\n");
        std::fs::write(&p, &bytes).unwrap();
        let e = read_samples(&p).unwrap_err().to_string();
        assert!(e.contains("line 3") && e.contains("not UTF-8"), "{e}");
        std::fs::remove_dir_all(&dir).ok();
    }
}
