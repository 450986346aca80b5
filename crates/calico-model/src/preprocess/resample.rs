//! 8-bit image resizing that gives the same bytes as Pillow's `Image.resize`
//! (the resampler behind torchvision's PIL path, LAVIS, HF image processors
//! with the PIL backend and SAM's `ResizeLongestSide`).
//!
//! The algorithm, as Pillow implements it for 8-bit images:
//!
//! * The resize is separable: a horizontal and a vertical pass. A pass
//!   whose size does not change is skipped; if neither changes, the image is
//!   copied.
//! * For each output position the filter is centred at
//!   `center = (i + 0.5) · scale` (scale = input / output size) and sampled at
//!   input pixel centres. When downscaling, the filter is stretched by the
//!   scale (`support = filter support · max(scale, 1)`), which low-pass filters
//!   the image (antialiasing); upscaling uses the plain filter.
//! * The taps of one output position are normalised to sum to one, then turned
//!   into fixed-point integers with 22 fractional bits (rounded half away from
//!   zero). A pixel is `(Σ tap · value + 2²¹) >> 22`, clamped to 0..=255.
//! * The first pass only computes the rows the second reads, and its output
//!   is an 8-bit image: rounding happens after each pass, so the order of the
//!   passes changes results. Pillow ≤ 12 always goes horizontal first;
//!   Pillow 13 (the pinned reference) goes vertical first when the height
//!   shrinks by more than twice as many pixels as the width (see
//!   [`vertical_first`]).
//!
//! `Nearest` follows Pillow's separate nearest-neighbour path (an affine map
//! whose source coordinate is accumulated step by step).

use candle_core::Result;

/// A packed 8-bit RGB image, row-major, `width · height · 3` bytes.
#[derive(Clone, PartialEq, Eq)]
pub struct RgbImage {
    width: usize,
    height: usize,
    data: Vec<u8>,
}

impl std::fmt::Debug for RgbImage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RgbImage({}x{})", self.width, self.height)
    }
}

impl RgbImage {
    /// Wraps packed RGB bytes; the length must be `width · height · 3` and
    /// neither side may be zero.
    pub fn new(width: usize, height: usize, data: Vec<u8>) -> Result<Self> {
        if width == 0 || height == 0 {
            candle_core::bail!("image has zero size ({width}x{height})");
        }
        if data.len() != width * height * 3 {
            candle_core::bail!(
                "RGB image {width}x{height} needs {} bytes, got {}",
                width * height * 3,
                data.len()
            );
        }
        Ok(Self {
            width,
            height,
            data,
        })
    }

    pub fn width(&self) -> usize {
        self.width
    }

    pub fn height(&self) -> usize {
        self.height
    }

    /// (height, width).
    pub fn size_hw(&self) -> (usize, usize) {
        (self.height, self.width)
    }

    /// The packed bytes, row-major RGB.
    pub fn as_raw(&self) -> &[u8] {
        &self.data
    }

    pub fn into_raw(self) -> Vec<u8> {
        self.data
    }

    /// The pixel at column `x`, row `y`.
    pub fn pixel(&self, x: usize, y: usize) -> [u8; 3] {
        let i = (y * self.width + x) * 3;
        [self.data[i], self.data[i + 1], self.data[i + 2]]
    }
}

/// A resampling filter, as Pillow names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Filter {
    /// Pillow `NEAREST`.
    Nearest,
    /// Pillow `BILINEAR` (triangle filter, support 1).
    Bilinear,
    /// Pillow `BICUBIC` (Keys cubic with a = −0.5, support 2).
    Bicubic,
}

impl Filter {
    fn support(self) -> f64 {
        match self {
            Filter::Nearest => 0.0,
            Filter::Bilinear => 1.0,
            Filter::Bicubic => 2.0,
        }
    }

    fn weight(self, x: f64) -> f64 {
        let x = x.abs();
        match self {
            Filter::Nearest => 0.0,
            Filter::Bilinear => {
                if x < 1.0 {
                    1.0 - x
                } else {
                    0.0
                }
            }
            Filter::Bicubic => {
                // Keys' cubic convolution kernel with a = -0.5, evaluated
                // in the same operation order as Pillow so the doubles agree.
                const A: f64 = -0.5;
                if x < 1.0 {
                    ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
                } else if x < 2.0 {
                    (((x - 5.0) * x + 8.0) * x - 4.0) * A
                } else {
                    0.0
                }
            }
        }
    }
}

/// Fractional bits of the fixed-point taps (32 bits minus 8 for the value
/// minus 2 of headroom for taps that sum above one or go negative).
const PRECISION_BITS: u32 = 32 - 8 - 2;

/// The taps of one resampling direction.
struct Taps {
    /// Taps per output position (the stride of `weights`).
    ksize: usize,
    /// First input index and number of taps, per output position.
    bounds: Vec<(usize, usize)>,
    /// Fixed-point taps, `ksize` per output position.
    weights: Vec<i32>,
}

impl Taps {
    /// Taps mapping the input span `[in0, in1)` of an axis of `in_size`
    /// pixels onto `out_size` pixels. The span is `f32` as in Pillow's box.
    fn new(in_size: usize, in0: f32, in1: f32, out_size: usize, filter: Filter) -> Taps {
        let scale = f64::from(in1 - in0) / out_size as f64;
        let filterscale = scale.max(1.0);
        let support = filter.support() * filterscale;
        let ksize = support.ceil() as usize * 2 + 1;
        let inv = 1.0 / filterscale;
        let mut bounds = Vec::with_capacity(out_size);
        let mut weights = vec![0i32; out_size * ksize];
        let mut taps = vec![0f64; ksize];
        for (i, row) in weights.chunks_exact_mut(ksize).enumerate() {
            let center = f64::from(in0) + (i as f64 + 0.5) * scale;
            // `as` truncates toward zero, like the C cast in the reference.
            let first = ((center - support + 0.5) as i64).max(0);
            let end = ((center + support + 0.5) as i64).min(in_size as i64);
            let n = (end - first).max(0) as usize;
            let mut sum = 0.0;
            for (t, tap) in taps.iter_mut().enumerate().take(n) {
                let w = filter.weight(((t as i64 + first) as f64 - center + 0.5) * inv);
                *tap = w;
                sum += w;
            }
            for (t, tap) in taps.iter().enumerate().take(n) {
                let w = if sum != 0.0 { tap / sum } else { *tap };
                let scaled = w * f64::from(1u32 << PRECISION_BITS);
                row[t] = if w < 0.0 {
                    (scaled - 0.5) as i32
                } else {
                    (scaled + 0.5) as i32
                };
            }
            bounds.push((first as usize, n));
        }
        Taps {
            ksize,
            bounds,
            weights,
        }
    }

    fn of(&self, i: usize) -> (usize, &[i32]) {
        let (first, n) = self.bounds[i];
        (first, &self.weights[i * self.ksize..i * self.ksize + n])
    }
}

#[inline]
fn clip8(acc: i32) -> u8 {
    (acc >> PRECISION_BITS).clamp(0, 255) as u8
}

const HALF: i32 = 1 << (PRECISION_BITS - 1);

/// Horizontal pass over input rows `rows` of a `width`-wide image.
fn pass_horizontal(
    src: &[u8],
    width: usize,
    channels: usize,
    rows: std::ops::Range<usize>,
    taps: &Taps,
    out_width: usize,
) -> Vec<u8> {
    let mut out = vec![0u8; rows.len() * out_width * channels];
    for (oy, y) in rows.enumerate() {
        let line = &src[y * width * channels..(y + 1) * width * channels];
        let out_line = &mut out[oy * out_width * channels..(oy + 1) * out_width * channels];
        for ox in 0..out_width {
            let (first, k) = taps.of(ox);
            for c in 0..channels {
                let mut acc = HALF;
                for (t, &w) in k.iter().enumerate() {
                    acc += i32::from(line[(first + t) * channels + c]) * w;
                }
                out_line[ox * channels + c] = clip8(acc);
            }
        }
    }
    out
}

/// Vertical pass; `taps` index rows of `src` shifted down by `row_offset`.
fn pass_vertical(
    src: &[u8],
    width: usize,
    channels: usize,
    row_offset: usize,
    taps: &Taps,
    out_height: usize,
) -> Vec<u8> {
    let stride = width * channels;
    let mut out = vec![0u8; out_height * stride];
    let mut acc = vec![0i32; stride];
    for oy in 0..out_height {
        let (first, k) = taps.of(oy);
        acc.fill(HALF);
        for (t, &w) in k.iter().enumerate() {
            let y = first + t - row_offset;
            let line = &src[y * stride..(y + 1) * stride];
            for (a, &v) in acc.iter_mut().zip(line) {
                *a += i32::from(v) * w;
            }
        }
        for (o, &a) in out[oy * stride..(oy + 1) * stride].iter_mut().zip(&acc) {
            *o = clip8(a);
        }
    }
    out
}

/// Pillow's nearest-neighbour resize: source coordinates start at half a
/// step and are accumulated (not multiplied) per output pixel.
fn resize_nearest(
    src: &[u8],
    width: usize,
    height: usize,
    channels: usize,
    out_width: usize,
    out_height: usize,
) -> Vec<u8> {
    let index = |n_in: usize, n_out: usize| -> Vec<Option<usize>> {
        let step = f64::from(n_in as f32) / n_out as f64;
        let mut pos = step * 0.5;
        (0..n_out)
            .map(|_| {
                let i = if pos < 0.0 { None } else { Some(pos as usize) };
                pos += step;
                i.filter(|&i| i < n_in)
            })
            .collect()
    };
    let xs = index(width, out_width);
    let ys = index(height, out_height);
    let mut out = vec![0u8; out_width * out_height * channels];
    for (oy, y) in ys.iter().enumerate() {
        let Some(y) = *y else { continue };
        for (ox, x) in xs.iter().enumerate() {
            let Some(x) = *x else { continue };
            let s = (y * width + x) * channels;
            let d = (oy * out_width + ox) * channels;
            out[d..d + channels].copy_from_slice(&src[s..s + channels]);
        }
    }
    out
}

/// Whether Pillow 13 runs the vertical pass first: when the height shrinks
/// and the height loses more than twice as many pixels as the width
/// (`2·(W − w) < H − h`). Pillow up to 12.x always went horizontal first.
/// The order matters because the intermediate image is rounded to 8 bits.
/// This rule was measured against Pillow 13.0 (bit-identical output on
/// thousands of random size pairs, both filters, up to ~900 px), not read
/// from its source; the parity cases pin it on both sides of the boundary.
fn vertical_first(width: usize, height: usize, out_width: usize, out_height: usize) -> bool {
    let (w0, h0, w1, h1) = (
        width as i64,
        height as i64,
        out_width as i64,
        out_height as i64,
    );
    h1 < h0 && 2 * (w0 - w1) < h0 - h1
}

/// Resizes a packed 8-bit image with any number of interleaved channels
/// (1 for masks, 3 for RGB, …) exactly as Pillow does for an 8-bit mode.
/// Returns `out_width · out_height · channels` bytes.
pub fn resize_u8_channels(
    src: &[u8],
    width: usize,
    height: usize,
    channels: usize,
    out_width: usize,
    out_height: usize,
    filter: Filter,
) -> Result<Vec<u8>> {
    if width == 0 || height == 0 || channels == 0 {
        candle_core::bail!("resize: input has zero size ({width}x{height}x{channels})");
    }
    if out_width == 0 || out_height == 0 {
        candle_core::bail!("resize: output size must be positive, got {out_width}x{out_height}");
    }
    if src.len() != width * height * channels {
        candle_core::bail!(
            "resize: a {width}x{height}x{channels} image needs {} bytes, got {}",
            width * height * channels,
            src.len()
        );
    }
    if out_width == width && out_height == height {
        return Ok(src.to_vec());
    }
    if filter == Filter::Nearest {
        return Ok(resize_nearest(
            src, width, height, channels, out_width, out_height,
        ));
    }
    let need_h = out_width != width;
    let need_v = out_height != height;
    let vtaps = Taps::new(height, 0.0, height as f32, out_height, filter);
    if need_h && need_v && vertical_first(width, height, out_width, out_height) {
        let htaps = Taps::new(width, 0.0, width as f32, out_width, filter);
        let tmp = pass_vertical(src, width, channels, 0, &vtaps, out_height);
        return Ok(pass_horizontal(
            &tmp,
            width,
            channels,
            0..out_height,
            &htaps,
            out_width,
        ));
    }
    // The rows the vertical pass reads.
    let first_row = vtaps.bounds[0].0;
    let (last_first, last_n) = vtaps.bounds[out_height - 1];
    let end_row = last_first + last_n;

    let (mut img, mut row_offset, mut cur_width) = (None, 0, width);
    if need_h {
        let htaps = Taps::new(width, 0.0, width as f32, out_width, filter);
        img = Some(pass_horizontal(
            src,
            width,
            channels,
            first_row..end_row,
            &htaps,
            out_width,
        ));
        row_offset = first_row;
        cur_width = out_width;
    }
    if need_v {
        let input = img.as_deref().unwrap_or(src);
        img = Some(pass_vertical(
            input, cur_width, channels, row_offset, &vtaps, out_height,
        ));
    }
    Ok(img.unwrap_or_else(|| src.to_vec()))
}

/// Resizes an RGB image to `out_width × out_height` exactly as Pillow's
/// `Image.resize((out_width, out_height), filter)` does on an RGB image.
pub fn resize_u8(
    img: &RgbImage,
    out_width: usize,
    out_height: usize,
    filter: Filter,
) -> Result<RgbImage> {
    let data = resize_u8_channels(
        &img.data, img.width, img.height, 3, out_width, out_height, filter,
    )?;
    RgbImage::new(out_width, out_height, data)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gradient(w: usize, h: usize) -> RgbImage {
        let mut d = Vec::with_capacity(w * h * 3);
        for y in 0..h {
            for x in 0..w {
                d.extend_from_slice(&[
                    (x * 255 / w.max(1)) as u8,
                    (y * 255 / h.max(1)) as u8,
                    ((x * 7 + y * 13) % 256) as u8,
                ]);
            }
        }
        RgbImage::new(w, h, d).unwrap()
    }

    #[test]
    fn same_size_is_a_copy() {
        let img = gradient(9, 5);
        for f in [Filter::Nearest, Filter::Bilinear, Filter::Bicubic] {
            assert_eq!(resize_u8(&img, 9, 5, f).unwrap(), img);
        }
    }

    #[test]
    fn constant_image_stays_constant() {
        let img = RgbImage::new(13, 7, [10u8, 200, 255].repeat(13 * 7)).unwrap();
        for f in [Filter::Nearest, Filter::Bilinear, Filter::Bicubic] {
            for (w, h) in [(5, 3), (40, 21), (1, 1), (13, 30)] {
                let out = resize_u8(&img, w, h, f).unwrap();
                assert!(out.as_raw().chunks(3).all(|p| p == [10, 200, 255]));
            }
        }
    }

    #[test]
    fn taps_sum_to_one_in_fixed_point() {
        for (n_in, n_out) in [(37, 224), (640, 17), (5, 1), (1, 5), (300, 1024)] {
            for f in [Filter::Bilinear, Filter::Bicubic] {
                let t = Taps::new(n_in, 0.0, n_in as f32, n_out, f);
                for i in 0..n_out {
                    let s: i32 = t.of(i).1.iter().sum();
                    assert!((s - (1 << PRECISION_BITS)).abs() <= t.ksize as i32, "{s}");
                }
            }
        }
    }

    /// Values worked out by hand from the algorithm: upscaling a 2-pixel
    /// row to 4 with the triangle filter gives 1/4-3/4 blends at the inner
    /// positions and the edge values at the borders.
    #[test]
    fn bilinear_two_to_four() {
        let out = resize_u8_channels(&[0, 100], 2, 1, 1, 4, 1, Filter::Bilinear).unwrap();
        assert_eq!(out, vec![0, 25, 75, 100]);
    }

    #[test]
    fn nearest_picks_centres() {
        let out = resize_u8_channels(&[1, 2, 3, 4, 5, 6], 6, 1, 1, 3, 1, Filter::Nearest).unwrap();
        assert_eq!(out, vec![2, 4, 6]);
        let out = resize_u8_channels(&[1, 2], 2, 1, 1, 5, 1, Filter::Nearest).unwrap();
        assert_eq!(out, vec![1, 1, 2, 2, 2]);
    }

    #[test]
    fn pass_order_boundary() {
        // Vertical first only when the height shrinks by more than twice
        // the pixels the width loses.
        assert!(vertical_first(60, 60, 32, 2));
        assert!(!vertical_first(60, 60, 31, 2));
        assert!(vertical_first(37, 53, 40, 40));
        assert!(!vertical_first(40, 40, 80, 50));
    }

    #[test]
    fn bad_sizes_are_errors() {
        assert!(RgbImage::new(0, 3, vec![]).is_err());
        assert!(RgbImage::new(2, 2, vec![0; 11]).is_err());
        let img = gradient(4, 4);
        assert!(resize_u8(&img, 0, 4, Filter::Bilinear).is_err());
    }
}
