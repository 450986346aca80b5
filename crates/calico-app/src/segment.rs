//! Segmenting a set of images: validated images + a task or question →
//! the answer, one mask per routed `[SEG]` (COCO RLE) and one overlay PNG
//! per image, with one colour per label across all images.

use std::path::Path;

use calico_eval::predictions::{PredictedMask, Prediction};
use calico_masks::{CocoRle, Mask, Rle};
use calico_model::calico::{Calico, ImageInput};
use calico_model::llama::GenerateOptions;
use calico_model::prompt::TextEncoder;
use calico_text::templates::{multi_image_prefix, questions, Task};
use image::RgbImage;
use serde::Serialize;

use crate::error::{AppError, Result};
use crate::overlay::{self, ColourMap, LegendEntry, OverlayStyle};

/// An image and the name it is reported under (its path or upload name).
#[derive(Debug, Clone)]
pub struct NamedImage {
    pub name: String,
    pub image: RgbImage,
}

/// Why bytes are not a usable image, or `None` when they decode.
fn undecodable(bytes: &[u8]) -> std::result::Result<RgbImage, String> {
    if bytes.is_empty() {
        return Err("is empty (0 bytes), not an image".into());
    }
    // A PNG header declaring a zero side: say so rather than "invalid".
    if bytes.len() >= 24 && bytes.starts_with(b"\x89PNG\r\n\x1a\n") && &bytes[12..16] == b"IHDR" {
        let w = u32::from_be_bytes([bytes[16], bytes[17], bytes[18], bytes[19]]);
        let h = u32::from_be_bytes([bytes[20], bytes[21], bytes[22], bytes[23]]);
        if w == 0 || h == 0 {
            return Err(format!("is a zero-size image ({w}x{h})"));
        }
    }
    let format = image::guess_format(bytes)
        .map_err(|_| "is not an image (not a PNG, JPEG or other supported format)".to_string())?;
    let img = image::load_from_memory_with_format(bytes, format)
        .map_err(|e| format!("is not a decodable {format:?} image: {e}"))?;
    let rgb = img.to_rgb8();
    if rgb.width() == 0 || rgb.height() == 0 {
        return Err(format!(
            "is a zero-size image ({}x{})",
            rgb.width(),
            rgb.height()
        ));
    }
    Ok(rgb)
}

/// Decodes an uploaded or in-memory image; errors name it.
pub fn decode_image(name: &str, bytes: &[u8]) -> Result<NamedImage> {
    undecodable(bytes)
        .map(|image| NamedImage {
            name: name.to_string(),
            image,
        })
        .map_err(|why| AppError::Input(format!("{name}: {why}")))
}

/// Reads and decodes an image file; errors name the file (missing, a
/// directory, not an image, zero size).
pub fn load_image(path: &Path) -> Result<NamedImage> {
    let name = path.display().to_string();
    if !path.exists() {
        return Err(AppError::Input(format!("{name}: no such file")));
    }
    if path.is_dir() {
        return Err(AppError::Input(format!(
            "{name}: is a directory, not an image"
        )));
    }
    let bytes =
        std::fs::read(path).map_err(|e| AppError::Input(format!("{name}: cannot read: {e}")))?;
    decode_image(&name, &bytes)
}

/// Parses a task name: `common-object`, `common-parts`, `unique-parts`,
/// `identify` (or any spelling [`Task`] accepts, e.g. `identify_objects`).
pub fn parse_task(s: &str) -> Result<Task> {
    let norm = s.trim().to_ascii_lowercase().replace('_', "-");
    if norm == "identify" {
        return Ok(Task::IdentifyObjects);
    }
    s.parse::<Task>().map_err(|_| {
        AppError::Input(format!(
            "unknown task {s:?}; expected common-object, common-parts, unique-parts or identify"
        ))
    })
}

/// The CLI spelling of a task.
pub fn task_name(task: Task) -> &'static str {
    match task {
        Task::CommonObject => "common-object",
        Task::CommonParts => "common-parts",
        Task::UniqueParts => "unique-parts",
        Task::IdentifyObjects => "identify",
    }
}

/// The canonical question of `task` (the first phrasing of its template
/// list, so the same task always asks the same question).
pub fn task_question(task: Task) -> &'static str {
    questions(task)[0]
}

/// Settings of [`segment`].
#[derive(Debug, Clone)]
pub struct SegmentOptions {
    /// Generation settings (greedy by default).
    pub generate: GenerateOptions,
    pub style: OverlayStyle,
}

impl Default for SegmentOptions {
    fn default() -> Self {
        SegmentOptions {
            generate: calico_train::predict::greedy(256),
            style: OverlayStyle::default(),
        }
    }
}

/// One predicted mask.
#[derive(Debug, Clone, Serialize)]
pub struct SegmentedMask {
    /// 0-based image index.
    pub image: usize,
    /// The `<p>` phrase (by [`overlay::label_key`]).
    pub label: String,
    /// `#rrggbb`, the same for the same label on every image.
    pub colour: String,
    /// Foreground pixels.
    pub area: u64,
    pub rle: CocoRle,
    #[serde(skip)]
    pub mask: Mask,
}

/// What [`segment`] returns.
#[derive(Debug, Clone, Serialize)]
pub struct SegmentResult {
    /// The question asked (without the image prefix).
    pub question: String,
    /// The answer with `<p>`, `</p>`, `[SEG]` and `(IMAGEk)` spelled out.
    pub answer: String,
    /// Image names, in order.
    pub images: Vec<String>,
    /// `[height, width]` per image.
    pub sizes: Vec<[u32; 2]>,
    pub masks: Vec<SegmentedMask>,
    /// Label → colour of the whole answer, in order of appearance.
    pub legend: Vec<LegendEntry>,
    /// `[SEG]`s without a valid `(IMAGEk)` tag (no mask).
    pub unrouted: usize,
    /// One overlay PNG per image.
    #[serde(skip)]
    pub overlays: Vec<Vec<u8>>,
}

impl SegmentResult {
    /// The predictions.jsonl record of this answer (what `calico eval` reads).
    pub fn prediction(&self, id: &str) -> Prediction {
        Prediction {
            id: id.to_string(),
            answer: self.answer.clone(),
            masks: self
                .masks
                .iter()
                .map(|m| PredictedMask {
                    image: m.image,
                    label: m.label.clone(),
                    rle: m.rle.clone(),
                    score: 1.0,
                })
                .collect(),
        }
    }
}

/// Fails unless there are at least two images.
pub fn check_count(n: usize) -> Result<()> {
    if n < 2 {
        return Err(AppError::Input(format!(
            "co-segmentation needs at least 2 images, got {n}"
        )));
    }
    Ok(())
}

/// Answers `question` about `images` and renders the overlays. Errors:
/// fewer than two images, a zero-size image, or more images (with the
/// question) than the model's context holds.
pub fn segment(
    model: &Calico,
    tok: &dyn TextEncoder,
    images: &[NamedImage],
    question: &str,
    opts: &SegmentOptions,
) -> Result<SegmentResult> {
    check_count(images.len())?;
    let question = question.trim();
    if question.is_empty() {
        return Err(AppError::Input("the question is empty".into()));
    }
    let cfg = model.config();
    let mut inputs = Vec::with_capacity(images.len());
    for im in images {
        let (w, h) = im.image.dimensions();
        if w == 0 || h == 0 {
            return Err(AppError::Input(format!(
                "{}: is a zero-size image ({w}x{h})",
                im.name
            )));
        }
        let rgb = calico_model::preprocess::RgbImage::new(
            w as usize,
            h as usize,
            im.image.as_raw().clone(),
        )
        .map_err(|e| AppError::Input(format!("{}: {e}", im.name)))?;
        inputs.push(
            ImageInput::from_image(cfg, &rgb)
                .map_err(|e| AppError::Input(format!("{}: {e}", im.name)))?,
        );
    }
    let prompt = multi_image_prefix(images.len()) + question;
    model.prompt(&prompt, images.len(), tok).map_err(|e| {
        AppError::Input(format!(
            "{} images with this question do not fit the model: {e}",
            images.len()
        ))
    })?;
    let answer = model.generate(&prompt, &inputs, tok, &opts.generate, None)?;

    let colours = ColourMap::from_labels(
        answer
            .masks
            .iter()
            .map(|m| m.phrase.as_deref().unwrap_or("")),
    );
    let mut masks = Vec::with_capacity(answer.masks.len());
    for m in &answer.masks {
        let (h, w) = m.mask.dims2()?;
        let data: Vec<u8> = m.mask.flatten_all()?.to_vec1()?;
        let mask = Mask::from_row_major(h as u32, w as u32, &data)
            .map_err(|e| AppError::Model(format!("mask of {h}x{w}: {e}")))?;
        let label = overlay::label_key(m.phrase.as_deref().unwrap_or(""));
        masks.push(SegmentedMask {
            image: m.image,
            colour: overlay::hex(colours.colour(&label)),
            area: mask.area(),
            rle: CocoRle::from_rle(&Rle::encode(&mask)),
            label,
            mask,
        });
    }
    let overlays = render_overlays(images, &masks, &colours, &opts.style)?;
    Ok(SegmentResult {
        question: question.to_string(),
        answer: answer.text,
        images: images.iter().map(|i| i.name.clone()).collect(),
        sizes: images
            .iter()
            .map(|i| [i.image.height(), i.image.width()])
            .collect(),
        masks,
        legend: colours.legend(),
        unrouted: answer.unrouted.len(),
        overlays,
    })
}

/// One overlay PNG per image from masks already decoded.
pub fn render_overlays(
    images: &[NamedImage],
    masks: &[SegmentedMask],
    colours: &ColourMap,
    style: &OverlayStyle,
) -> Result<Vec<Vec<u8>>> {
    images
        .iter()
        .enumerate()
        .map(|(i, im)| {
            let mine: Vec<(&str, &Mask)> = masks
                .iter()
                .filter(|m| m.image == i)
                .map(|m| (m.label.as_str(), &m.mask))
                .collect();
            overlay::png_bytes(&overlay::render(&im.image, &mine, colours, style)?)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{load, ModelSource};

    fn png(w: u32, h: u32) -> Vec<u8> {
        let img = RgbImage::from_fn(w, h, |x, y| image::Rgb([(x * 4) as u8, (y * 4) as u8, 99]));
        overlay::png_bytes(&img).unwrap()
    }

    #[test]
    fn bad_images_are_named_input_errors() {
        let e = decode_image("a.png", b"hello").unwrap_err();
        assert!(e.is_input() && e.to_string().contains("a.png: is not an image"));
        let e = decode_image("e.png", b"").unwrap_err();
        assert!(e.to_string().contains("0 bytes"), "{e}");
        let mut zero = png(4, 4);
        zero[16..24].copy_from_slice(&[0; 8]);
        let e = decode_image("z.png", &zero).unwrap_err();
        assert!(e.to_string().contains("zero-size"), "{e}");
        let e = load_image(Path::new("/no/such.png")).unwrap_err();
        assert!(e.to_string().contains("/no/such.png: no such file"));
        assert_eq!(
            decode_image("ok", &png(5, 3)).unwrap().image.dimensions(),
            (5, 3)
        );
    }

    #[test]
    fn tasks_parse_in_cli_spelling() {
        assert_eq!(parse_task("identify").unwrap(), Task::IdentifyObjects);
        assert_eq!(parse_task("common-parts").unwrap(), Task::CommonParts);
        assert_eq!(parse_task("unique_parts").unwrap(), Task::UniqueParts);
        assert!(parse_task("parts").unwrap_err().is_input());
        for t in Task::ALL {
            assert_eq!(parse_task(task_name(t)).unwrap(), t);
        }
    }

    #[test]
    fn segment_with_random_tiny_gives_one_overlay_per_image() {
        let m = load(
            &ModelSource::Random {
                preset: "tiny".into(),
                seed: 0,
            },
            &[],
            &candle_core::Device::Cpu,
        )
        .unwrap();
        let imgs: Vec<NamedImage> = [(40, 30), (32, 48), (20, 20)]
            .iter()
            .enumerate()
            .map(|(i, (w, h))| decode_image(&format!("i{i}"), &png(*w, *h)).unwrap())
            .collect();
        let opts = SegmentOptions {
            generate: calico_train::predict::greedy(16),
            ..Default::default()
        };
        let q = task_question(Task::CommonParts);
        let r = segment(&m.model, &m.tokenizer, &imgs, q, &opts).unwrap();
        assert_eq!(r.overlays.len(), 3);
        assert_eq!(r.sizes, vec![[30, 40], [48, 32], [20, 20]]);
        for (png, im) in r.overlays.iter().zip(&imgs) {
            let o = image::load_from_memory(png).unwrap();
            assert!(o.height() > im.image.height());
        }
        assert_eq!(r.prediction("x").masks.len(), r.masks.len());
        let one = segment(&m.model, &m.tokenizer, &imgs[..1], q, &opts).unwrap_err();
        assert!(one.is_input() && one.to_string().contains("at least 2"));
        // More images than the 512-token context holds.
        let many: Vec<NamedImage> = (0..200).map(|_| imgs[2].clone()).collect();
        let e = segment(&m.model, &m.tokenizer, &many, q, &opts).unwrap_err();
        assert!(e.is_input() && e.to_string().contains("do not fit"), "{e}");
    }
}
