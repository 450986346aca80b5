//! The three views of an input image that Calico's encoders take, each
//! reproducing its reference pipeline's pixel values:
//!
//! * [`SamView`]: SAM's `ResizeLongestSide` (Pillow bilinear to the longest
//!   side `target`), `(x − mean) / std` on the 0–255 scale, zero padding at
//!   the bottom and right to `target × target`, as LISA/GLaMM feed SAM.
//! * [`ClipView`]: resize to a fixed size (Pillow bicubic), `x / 255`, CLIP
//!   mean/std: BLIP-2/InstructBLIP's eval processor (LAVIS
//!   `blip_image_eval`, HF `BlipImageProcessor`). With other sizes and
//!   mean/std it is any "resize + normalise" view (e.g. DINOv2 fed at a
//!   multiple of 14).
//! * [`DinoView`]: HF `BitImageProcessor` as configured for DINOv2: resize
//!   the shortest edge (Pillow bicubic), centre crop, `x / 255`, ImageNet
//!   mean/std.
//!
//! Resizing goes through [`resize_u8`], a re-implementation of Pillow's
//! 8-bit resampler that gives the same bytes; the parity cases check every
//! view against the Python pipeline with a 1e-6 tolerance. Images are taken
//! as decoded RGB bytes: JPEG decoders differ by ±1 between libjpeg-turbo
//! (Pillow) and the Rust `image` crate, so the cases use raw pixel arrays.

mod resample;

use std::collections::BTreeMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use serde::{Deserialize, Serialize};

use crate::load::Checkpoint;
use crate::parity::Case;

pub use resample::{resize_u8, resize_u8_channels, Filter, RgbImage};

// Mean/std constants as the Python pipelines hold them (a Python float, i.e.
// an f64, cast to f32), which is not always the f32 nearest the decimal.
const fn f32x3(v: [f64; 3]) -> [f32; 3] {
    [v[0] as f32, v[1] as f32, v[2] as f32]
}

/// SAM's pixel mean on the 0–255 scale.
pub const SAM_PIXEL_MEAN: [f32; 3] = f32x3([123.675, 116.28, 103.53]);
/// SAM's pixel std on the 0–255 scale.
pub const SAM_PIXEL_STD: [f32; 3] = f32x3([58.395, 57.12, 57.375]);
/// OpenAI CLIP mean (BLIP-2, InstructBLIP, EVA-CLIP).
pub const CLIP_MEAN: [f32; 3] = f32x3([0.48145466, 0.4578275, 0.40821073]);
/// OpenAI CLIP std.
pub const CLIP_STD: [f32; 3] = f32x3([0.26862954, 0.26130258, 0.27577711]);
/// ImageNet mean (DINOv2).
pub const IMAGENET_MEAN: [f32; 3] = f32x3([0.485, 0.456, 0.406]);
/// ImageNet std.
pub const IMAGENET_STD: [f32; 3] = f32x3([0.229, 0.224, 0.225]);

/// One preprocessed image.
#[derive(Debug, Clone)]
pub struct Preprocessed {
    /// Normalised pixels, `(3, H, W)` f32 on the CPU.
    pub pixels: Tensor,
    /// Size `(h, w)` of the image content inside `pixels` after resizing
    /// (before SAM's padding, after DINO's crop); SAM's mask
    /// post-processing crops to it.
    pub resized: (usize, usize),
    /// Size `(h, w)` of the input image.
    pub original: (usize, usize),
    /// The 8-bit image that was normalised (resized, and cropped for the
    /// DINO view; SAM's padding excluded).
    pub image: RgbImage,
}

/// `(v − mean) / std` per channel into a `(3, h, w)` f32 buffer, where `v` is
/// the byte value times `scale` (1 for SAM, 1/255 for the others). Bytes
/// become f32 and are divided by 255 in f32, which equals torchvision's
/// `ToTensor` and HF's f64 rescale for every byte value.
fn normalise(img: &RgbImage, rescale: bool, mean: [f32; 3], std: [f32; 3]) -> Vec<f32> {
    let (h, w) = img.size_hw();
    let mut out = vec![0f32; 3 * h * w];
    for (i, px) in img.as_raw().chunks_exact(3).enumerate() {
        for c in 0..3 {
            let mut v = f32::from(px[c]);
            if rescale {
                v /= 255.0;
            }
            out[c * h * w + i] = (v - mean[c]) / std[c];
        }
    }
    out
}

fn check_mean_std(mean: &[f32; 3], std: &[f32; 3]) -> candle_core::Result<()> {
    if mean.iter().chain(std).any(|v| !v.is_finite()) || std.contains(&0.0) {
        candle_core::bail!(
            "normalisation needs finite mean and non-zero std, got {mean:?} / {std:?}"
        );
    }
    Ok(())
}

fn nonzero(name: &str, v: usize) -> candle_core::Result<()> {
    if v == 0 {
        candle_core::bail!("preprocessing: `{name}` must be positive");
    }
    Ok(())
}

fn sam_target_default() -> usize {
    1024
}
fn sam_mean_default() -> [f32; 3] {
    SAM_PIXEL_MEAN
}
fn sam_std_default() -> [f32; 3] {
    SAM_PIXEL_STD
}

/// SAM's view: longest side resized to `target` (Pillow bilinear),
/// normalised on the 0–255 scale, zero-padded to `target × target`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SamView {
    /// Side of the square input (`image_encoder.img_size`, 1024).
    #[serde(default = "sam_target_default")]
    pub target: usize,
    #[serde(default = "sam_mean_default")]
    pub pixel_mean: [f32; 3],
    #[serde(default = "sam_std_default")]
    pub pixel_std: [f32; 3],
}

impl Default for SamView {
    fn default() -> Self {
        Self::new(sam_target_default())
    }
}

impl SamView {
    pub fn new(target: usize) -> Self {
        Self {
            target,
            pixel_mean: SAM_PIXEL_MEAN,
            pixel_std: SAM_PIXEL_STD,
        }
    }

    /// The `(h, w)` an image of `(h, w)` is resized to: the longest side
    /// becomes `target`, the other is scaled and rounded half up
    /// (`int(x · scale + 0.5)`, SAM's `get_preprocess_shape`).
    pub fn resized_size(&self, h: usize, w: usize) -> (usize, usize) {
        let scale = self.target as f64 / h.max(w) as f64;
        let side = |x: usize| (x as f64 * scale + 0.5) as usize;
        (side(h), side(w))
    }

    pub fn apply(&self, img: &RgbImage) -> candle_core::Result<Preprocessed> {
        nonzero("target", self.target)?;
        check_mean_std(&self.pixel_mean, &self.pixel_std)?;
        let (h, w) = img.size_hw();
        let (rh, rw) = self.resized_size(h, w);
        if rh == 0 || rw == 0 {
            candle_core::bail!(
                "SAM view: a {w}x{h} image resized to longest side {} has an empty side",
                self.target
            );
        }
        let resized = resize_u8(img, rw, rh, Filter::Bilinear)?;
        let t = self.target;
        let content = normalise(&resized, false, self.pixel_mean, self.pixel_std);
        let mut padded = vec![0f32; 3 * t * t];
        for c in 0..3 {
            for y in 0..rh {
                let src = &content[(c * rh + y) * rw..(c * rh + y + 1) * rw];
                padded[(c * t + y) * t..(c * t + y) * t + rw].copy_from_slice(src);
            }
        }
        Ok(Preprocessed {
            pixels: Tensor::from_vec(padded, (3, t, t), &Device::Cpu)?,
            resized: (rh, rw),
            original: (h, w),
            image: resized,
        })
    }
}

fn clip_size_default() -> [usize; 2] {
    [224, 224]
}
fn clip_mean_default() -> [f32; 3] {
    CLIP_MEAN
}
fn clip_std_default() -> [f32; 3] {
    CLIP_STD
}
fn bicubic() -> Filter {
    Filter::Bicubic
}

/// Resize to a fixed `(h, w)` ignoring the aspect ratio, `x / 255`,
/// `(x − mean) / std`: BLIP-2/InstructBLIP's eval view with the defaults.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClipView {
    /// Output `[h, w]`.
    #[serde(default = "clip_size_default")]
    pub size: [usize; 2],
    #[serde(default = "clip_mean_default")]
    pub mean: [f32; 3],
    #[serde(default = "clip_std_default")]
    pub std: [f32; 3],
    #[serde(default = "bicubic")]
    pub filter: Filter,
}

impl Default for ClipView {
    fn default() -> Self {
        Self::new(224, CLIP_MEAN, CLIP_STD)
    }
}

impl ClipView {
    /// A square `size × size` view with bicubic resizing.
    pub fn new(size: usize, mean: [f32; 3], std: [f32; 3]) -> Self {
        Self {
            size: [size, size],
            mean,
            std,
            filter: Filter::Bicubic,
        }
    }

    pub fn apply(&self, img: &RgbImage) -> candle_core::Result<Preprocessed> {
        let [h, w] = self.size;
        nonzero("size", h.min(w))?;
        check_mean_std(&self.mean, &self.std)?;
        let resized = resize_u8(img, w, h, self.filter)?;
        let pixels = normalise(&resized, true, self.mean, self.std);
        Ok(Preprocessed {
            pixels: Tensor::from_vec(pixels, (3, h, w), &Device::Cpu)?,
            resized: (h, w),
            original: img.size_hw(),
            image: resized,
        })
    }
}

fn dino_edge_default() -> usize {
    256
}
fn dino_crop_default() -> [usize; 2] {
    [224, 224]
}
fn dino_mean_default() -> [f32; 3] {
    IMAGENET_MEAN
}
fn dino_std_default() -> [f32; 3] {
    IMAGENET_STD
}

/// HF `BitImageProcessor` as DINOv2 uses it: shortest edge resized to
/// `shortest_edge` (Pillow bicubic), centre crop `crop`, `x / 255`, ImageNet
/// mean/std.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DinoView {
    #[serde(default = "dino_edge_default")]
    pub shortest_edge: usize,
    /// Crop `[h, w]`; a crop larger than the resized image pads with black.
    #[serde(default = "dino_crop_default")]
    pub crop: [usize; 2],
    #[serde(default = "dino_mean_default")]
    pub mean: [f32; 3],
    #[serde(default = "dino_std_default")]
    pub std: [f32; 3],
    #[serde(default = "bicubic")]
    pub filter: Filter,
}

impl Default for DinoView {
    fn default() -> Self {
        Self::new(256, 224)
    }
}

impl DinoView {
    pub fn new(shortest_edge: usize, crop: usize) -> Self {
        Self {
            shortest_edge,
            crop: [crop, crop],
            mean: IMAGENET_MEAN,
            std: IMAGENET_STD,
            filter: Filter::Bicubic,
        }
    }

    /// The `(h, w)` before cropping: the shortest side becomes
    /// `shortest_edge`, the other `⌊edge · long / short⌋` (HF
    /// `get_resize_output_image_size` with `default_to_square=False`).
    pub fn resized_size(&self, h: usize, w: usize) -> (usize, usize) {
        let (short, long) = if w <= h { (w, h) } else { (h, w) };
        let e = self.shortest_edge;
        let new_long = ((e * long) as f64 / short as f64) as usize;
        if w <= h {
            (new_long, e)
        } else {
            (e, new_long)
        }
    }

    pub fn apply(&self, img: &RgbImage) -> candle_core::Result<Preprocessed> {
        nonzero("shortest_edge", self.shortest_edge)?;
        let [ch, cw] = self.crop;
        nonzero("crop", ch.min(cw))?;
        check_mean_std(&self.mean, &self.std)?;
        let (h, w) = img.size_hw();
        let (rh, rw) = self.resized_size(h, w);
        let resized = resize_u8(img, rw, rh, self.filter)?;
        let cropped = center_crop(&resized, ch, cw)?;
        let pixels = normalise(&cropped, true, self.mean, self.std);
        Ok(Preprocessed {
            pixels: Tensor::from_vec(pixels, (3, ch, cw), &Device::Cpu)?,
            resized: (ch, cw),
            original: (h, w),
            image: cropped,
        })
    }
}

/// Where [`center_crop`]'s window starts along a side of `size` pixels, in
/// image coordinates (negative when the crop is larger than the image).
pub fn crop_start(size: usize, crop: usize) -> i64 {
    (size as i64 - crop as i64).div_euclid(2)
}

/// HF's numpy `center_crop`: the window starts at `⌊(size − crop) / 2⌋`;
/// where the crop is larger than the image, the image is first centred on a
/// black canvas (offset `⌈(crop − size) / 2⌉`).
pub fn center_crop(img: &RgbImage, crop_h: usize, crop_w: usize) -> candle_core::Result<RgbImage> {
    let (h, w) = img.size_hw();
    let (top, left) = (crop_start(h, crop_h), crop_start(w, crop_w));
    let mut out = vec![0u8; crop_h * crop_w * 3];
    for y in 0..crop_h {
        let sy = top + y as i64;
        if sy < 0 || sy >= h as i64 {
            continue;
        }
        for x in 0..crop_w {
            let sx = left + x as i64;
            if sx < 0 || sx >= w as i64 {
                continue;
            }
            let p = img.pixel(sx as usize, sy as usize);
            out[(y * crop_w + x) * 3..(y * crop_w + x + 1) * 3].copy_from_slice(&p);
        }
    }
    RgbImage::new(crop_w, crop_h, out)
}

/// Any of the three views, for configs: `{"kind": "sam", "target": 1024}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum View {
    Sam(SamView),
    Clip(ClipView),
    Dino(DinoView),
}

impl View {
    pub fn apply(&self, img: &RgbImage) -> candle_core::Result<Preprocessed> {
        match self {
            View::Sam(v) => v.apply(img),
            View::Clip(v) => v.apply(img),
            View::Dino(v) => v.apply(img),
        }
    }
}

/// Decodes a PNG or JPEG file into RGB bytes (grey and alpha images are
/// converted as Pillow's `convert("RGB")` does: grey replicated, alpha
/// dropped). Errors name the file. No EXIF rotation is applied, as with
/// Pillow's `Image.open`.
pub fn load_rgb(path: &Path) -> candle_core::Result<RgbImage> {
    let err = |e: &dyn std::fmt::Display| {
        candle_core::Error::Msg(format!("cannot read image {}: {e}", path.display()))
    };
    let img = image::ImageReader::open(path)
        .map_err(|e| err(&e))?
        .with_guessed_format()
        .map_err(|e| err(&e))?
        .decode()
        .map_err(|e| err(&e))?;
    let rgb = img.to_rgb8();
    let (w, h) = (rgb.width() as usize, rgb.height() as usize);
    if w == 0 || h == 0 {
        return Err(err(&format!("image has zero size ({w}x{h})")));
    }
    RgbImage::new(w, h, rgb.into_raw()).map_err(|e| err(&e))
}

#[derive(Deserialize)]
struct ParityConfig {
    view: View,
    /// Outputs keep every `output_stride`-th row and column (so a full-size
    /// 1024² SAM input fits in a small case file).
    #[serde(default)]
    output_stride: Option<usize>,
}

fn strided(t: &Tensor, stride: usize, h_dim: usize) -> candle_core::Result<Tensor> {
    let mut t = t.clone();
    for d in [h_dim, h_dim + 1] {
        let n = t.dim(d)?;
        let idx: Vec<u32> = (0..n).step_by(stride).map(|i| i as u32).collect();
        let idx = Tensor::new(idx.as_slice(), t.device())?;
        t = t.index_select(&idx, d)?;
    }
    Ok(t)
}

/// Parity: `inputs.image` `(H, W, 3)` bytes → `outputs.pixel_values`
/// `(3, H', W')` and `outputs.resized_u8` `(h, w, 3)` (the 8-bit image before
/// normalisation and padding), optionally strided.
pub fn parity_forward(
    case: &Case,
    _ckpt: &Checkpoint,
    _device: &Device,
) -> candle_core::Result<BTreeMap<String, Tensor>> {
    let cfg: ParityConfig = case.config()?;
    let input = case.input("image")?;
    let (h, w, c) = input.dims3()?;
    if c != 3 {
        candle_core::bail!(
            "{}: inputs.image must be (H, W, 3), got {:?}",
            case.path.display(),
            input.dims()
        );
    }
    let bytes: Vec<u8> = input
        .flatten_all()?
        .to_vec1::<f32>()?
        .into_iter()
        .map(|v| v.round().clamp(0.0, 255.0) as u8)
        .collect();
    let img = RgbImage::new(w, h, bytes)?;
    let out = cfg.view.apply(&img)?;
    let (rh, rw) = out.image.size_hw();
    let resized = Tensor::from_vec(out.image.as_raw().to_vec(), (rh, rw, 3), &Device::Cpu)?
        .to_dtype(DType::F32)?;
    let mut pixels = out.pixels;
    let mut resized_u8 = resized;
    if let Some(s) = cfg.output_stride.filter(|&s| s > 1) {
        pixels = strided(&pixels, s, 1)?;
        resized_u8 = strided(&resized_u8, s, 0)?;
    }
    let mut m = BTreeMap::new();
    m.insert("pixel_values".to_string(), pixels);
    m.insert("resized_u8".to_string(), resized_u8);
    m.insert(
        "resized_hw".to_string(),
        Tensor::new(&[out.resized.0 as f32, out.resized.1 as f32], &Device::Cpu)?,
    );
    Ok(m)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(w: usize, h: usize) -> RgbImage {
        let d = (0..w * h * 3).map(|i| ((i * 37) % 251) as u8).collect();
        RgbImage::new(w, h, d).unwrap()
    }

    #[test]
    fn sam_shapes_and_padding() {
        let v = SamView::new(64);
        let p = v.apply(&image(30, 20)).unwrap();
        assert_eq!(p.resized, (43, 64));
        assert_eq!(p.original, (20, 30));
        assert_eq!(p.pixels.dims(), &[3, 64, 64]);
        let px = p.pixels.to_vec3::<f32>().unwrap();
        assert_eq!(px[0][43][0], 0.0);
        assert_eq!(px[2][63][63], 0.0);
    }

    #[test]
    fn sam_resized_size_rounds_half_up() {
        let v = SamView::new(1024);
        assert_eq!(v.resized_size(480, 640), (768, 1024));
        assert_eq!(v.resized_size(1, 5), (205, 1024));
        assert_eq!(v.resized_size(1024, 1024), (1024, 1024));
    }

    #[test]
    fn dino_sizes_follow_hf() {
        let v = DinoView::new(256, 224);
        assert_eq!(v.resized_size(480, 640), (256, 341));
        assert_eq!(v.resized_size(640, 480), (341, 256));
        assert_eq!(v.resized_size(300, 300), (256, 256));
    }

    #[test]
    fn center_crop_pads_small_images() {
        let img = RgbImage::new(1, 1, vec![9, 9, 9]).unwrap();
        let c = center_crop(&img, 3, 4).unwrap();
        // ⌈(3−1)/2⌉ = 1 row, ⌈(4−1)/2⌉ = 2 columns of padding before it.
        assert_eq!(c.pixel(2, 1), [9, 9, 9]);
        assert_eq!(c.as_raw().iter().filter(|&&b| b == 9).count(), 3);
    }

    #[test]
    fn views_parse_from_config() {
        let v: View = serde_json::from_str(r#"{"kind": "sam"}"#).unwrap();
        assert_eq!(v, View::Sam(SamView::new(1024)));
        let v: View = serde_json::from_str(r#"{"kind": "dino", "crop": [224, 224]}"#).unwrap();
        assert_eq!(v, View::Dino(DinoView::default()));
        let v: View = serde_json::from_str(r#"{"kind": "clip", "size": [224, 224]}"#).unwrap();
        assert_eq!(v, View::Clip(ClipView::default()));
    }

    #[test]
    fn load_rgb_reads_png_and_converts_grey() {
        let dir = std::env::temp_dir().join(format!("calico-prep-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let rgb = dir.join("rgb.png");
        image::RgbImage::from_raw(2, 1, vec![1, 2, 3, 4, 5, 6])
            .unwrap()
            .save(&rgb)
            .unwrap();
        let img = load_rgb(&rgb).unwrap();
        assert_eq!((img.width(), img.height()), (2, 1));
        assert_eq!(img.as_raw(), &[1, 2, 3, 4, 5, 6]);
        let grey = dir.join("grey.png");
        image::GrayImage::from_raw(1, 2, vec![7, 9])
            .unwrap()
            .save(&grey)
            .unwrap();
        assert_eq!(load_rgb(&grey).unwrap().as_raw(), &[7, 7, 7, 9, 9, 9]);
        let junk = dir.join("junk.png");
        std::fs::write(&junk, b"not an image").unwrap();
        let e = load_rgb(&junk).unwrap_err().to_string();
        assert!(e.contains("junk.png"), "{e}");
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn load_rgb_names_the_file() {
        let e = load_rgb(Path::new("/nonexistent/x.png"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("/nonexistent/x.png"), "{e}");
    }
}
