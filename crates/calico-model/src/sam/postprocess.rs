//! SAM's mask post-processing: low-resolution mask logits from the mask
//! decoder are upsampled to the padded model input (`img_size`²), cropped to
//! the resized image (dropping the padding) and resized to the original
//! image size, all with bilinear interpolation on half-pixel centres
//! (PyTorch `interpolate(mode="bilinear", align_corners=False)`, no
//! antialiasing). Plus the resize-longest-side shape rule that decides the
//! resized size.
//!
//! Bilinear resizing is separable and linear, so each axis is one
//! interpolation matrix and the three steps fold into one matrix per axis:
//! `out = M_h · x · M_wᵀ`. Two small matmuls replace the `img_size`²
//! intermediate, and the whole path is differentiable (full-resolution mask
//! losses can train the decoder through it).

use std::collections::BTreeMap;

use candle_core::{DType, Device, Result, Tensor};
use serde::{Deserialize, Serialize};

use crate::load::Checkpoint;
use crate::parity::Case;

/// One output row of a 1-D linear interpolation: the two source indices
/// and their weights.
#[derive(Debug, Clone, Copy)]
struct Tap {
    i0: usize,
    i1: usize,
    w0: f64,
    w1: f64,
}

/// Taps of a 1-D linear resize from `in_size` to `out_size` samples with
/// half-pixel centres: output `o` samples input coordinate
/// `(o + ½) · in/out − ½`, clamped below at 0; the upper neighbour is
/// clamped to the last sample. The coordinates are computed in f32, as
/// PyTorch does for f32 tensors (in f64 the sampling positions of a large
/// resize drift from PyTorch's by ~1e-5 pixels).
fn taps(in_size: usize, out_size: usize) -> Vec<Tap> {
    let scale = in_size as f32 / out_size as f32;
    (0..out_size)
        .map(|o| {
            let src = (scale * (o as f32 + 0.5) - 0.5).max(0.0);
            let i0 = (src.floor() as usize).min(in_size - 1);
            let i1 = (i0 + 1).min(in_size - 1);
            let l = (src - i0 as f32).clamp(0.0, 1.0);
            Tap {
                i0,
                i1,
                w0: (1.0 - l) as f64,
                w1: l as f64,
            }
        })
        .collect()
}

fn check_size(what: &str, n: usize) -> Result<()> {
    if n == 0 {
        candle_core::bail!("bilinear resize: {what} must be positive");
    }
    Ok(())
}

/// The `(out_size, in_size)` matrix of a 1-D linear resize with half-pixel
/// centres (`interpolate(mode="linear", align_corners=False)`), as f32.
pub fn linear_resize_matrix(in_size: usize, out_size: usize, device: &Device) -> Result<Tensor> {
    check_size("input size", in_size)?;
    check_size("output size", out_size)?;
    let mut m = vec![0f32; out_size * in_size];
    for (o, t) in taps(in_size, out_size).iter().enumerate() {
        m[o * in_size + t.i0] += t.w0 as f32;
        m[o * in_size + t.i1] += t.w1 as f32;
    }
    Tensor::from_vec(m, (out_size, in_size), device)
}

/// One axis of the post-processing as a dense `(out, low)` matrix:
/// upsample `low → padded`, keep the first `keep` samples, resize
/// `keep → out`. Built from the taps (each output row touches at most four
/// low-resolution samples).
fn folded_axis(low: usize, padded: usize, keep: usize, out: usize) -> Vec<f64> {
    let up = taps(low, padded);
    let down = taps(keep, out);
    let mut m = vec![0f64; out * low];
    for (o, t) in down.iter().enumerate() {
        for (i, w) in [(t.i0, t.w0), (t.i1, t.w1)] {
            let u = up[i];
            m[o * low + u.i0] += w * u.w0;
            m[o * low + u.i1] += w * u.w1;
        }
    }
    m
}

/// Applies `out[b, c] = m_h · x[b, c] · m_wᵀ` to `(B, C, h, w)`, with
/// `m_h` `(H, h)` and `m_w_t` `(w, W)`.
fn apply_separable(x: &Tensor, m_h: &Tensor, m_w_t: &Tensor) -> Result<Tensor> {
    let (b, c, h, w) = x.dims4()?;
    let out_h = m_h.dim(0)?;
    let out_w = m_w_t.dim(1)?;
    let rows = x.contiguous()?.reshape((b * c * h, w))?.matmul(m_w_t)?;
    let rows = rows.reshape((b * c, h, out_w))?;
    m_h.broadcast_left(b * c)?
        .matmul(&rows)?
        .reshape((b, c, out_h, out_w))
}

fn matrix(v: Vec<f64>, rows: usize, cols: usize, like: &Tensor) -> Result<Tensor> {
    Tensor::from_vec(v, (rows, cols), like.device())?.to_dtype(like.dtype())
}

/// Bilinear resize of `(B, C, h, w)` to `(B, C, out_h, out_w)`, equal to
/// PyTorch's `interpolate(mode="bilinear", align_corners=False,
/// antialias=False)` for up- and downsampling; differentiable.
pub fn resize_bilinear(x: &Tensor, (out_h, out_w): (usize, usize)) -> Result<Tensor> {
    let (_, _, h, w) = dims4_named(x, "bilinear resize input")?;
    check_size("output height", out_h)?;
    check_size("output width", out_w)?;
    let m_h = linear_resize_matrix(h, out_h, x.device())?.to_dtype(x.dtype())?;
    let m_w_t = linear_resize_matrix(w, out_w, x.device())?
        .t()?
        .contiguous()?
        .to_dtype(x.dtype())?;
    apply_separable(x, &m_h, &m_w_t)
}

fn dims4_named(x: &Tensor, what: &str) -> Result<(usize, usize, usize, usize)> {
    match *x.dims() {
        [b, c, h, w] if h > 0 && w > 0 => Ok((b, c, h, w)),
        ref d => candle_core::bail!("{what}: expected a (B, C, H, W) tensor, got shape {d:?}"),
    }
}

/// Mask post-processing as in SAM (`Sam.postprocess_masks`): low-resolution
/// mask logits `(B, C, h, w)` → upsampled to `img_size × img_size`, cropped
/// to `input_size` (the resized image inside the padded input, `(H, W)`),
/// resized to `original_size` `(H, W)`. Returns logits; see [`binarize`].
pub fn postprocess_masks(
    low_res: &Tensor,
    img_size: usize,
    input_size: (usize, usize),
    original_size: (usize, usize),
) -> Result<Tensor> {
    let (_, _, h, w) = dims4_named(low_res, "SAM postprocess_masks: low-resolution masks")?;
    let (ih, iw) = input_size;
    let (oh, ow) = original_size;
    if ih == 0 || iw == 0 || ih > img_size || iw > img_size {
        candle_core::bail!(
            "SAM postprocess_masks: input size {ih}x{iw} must be positive and fit in the {img_size}x{img_size} model input"
        );
    }
    if oh == 0 || ow == 0 {
        candle_core::bail!("SAM postprocess_masks: original size {oh}x{ow} must be positive");
    }
    let m_h = matrix(folded_axis(h, img_size, ih, oh), oh, h, low_res)?;
    let m_w = matrix(folded_axis(w, img_size, iw, ow), ow, w, low_res)?;
    apply_separable(low_res, &m_h, &m_w.t()?.contiguous()?)
}

/// Binary masks from logits: 1 where the logit is above 0 (SAM's
/// `mask_threshold`), as `u8`.
pub fn binarize(masks: &Tensor) -> Result<Tensor> {
    masks.gt(0f64)
}

/// The size `(H, W)` an `(h, w)` image is resized to so that its longer
/// side is `long_side` (SAM's `ResizeLongestSide.get_preprocess_shape`):
/// both sides scaled by `long_side / max(h, w)` and rounded half up.
pub fn get_preprocess_shape(h: usize, w: usize, long_side: usize) -> (usize, usize) {
    let scale = long_side as f64 / h.max(w).max(1) as f64;
    let round = |v: usize| (v as f64 * scale + 0.5) as usize;
    (round(h), round(w))
}

/// The sizes a post-processing parity case carries.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct PostprocessCaseConfig {
    img_size: usize,
    /// `(H, W)` as the reference computed it from `original_size`.
    input_size: (usize, usize),
    original_size: (usize, usize),
}

/// Parity replay: input `low_res_masks`; outputs `masks` (post-processed
/// logits) and `preprocess_shape` (our resize-longest-side shape, which
/// must also equal the config's `input_size`).
pub fn parity_forward(
    case: &Case,
    _ckpt: &Checkpoint,
    device: &Device,
) -> Result<BTreeMap<String, Tensor>> {
    let cfg: PostprocessCaseConfig = case.config()?;
    let (oh, ow) = cfg.original_size;
    let input_size = get_preprocess_shape(oh, ow, cfg.img_size);
    if input_size != cfg.input_size {
        candle_core::bail!(
            "{}: get_preprocess_shape gave {input_size:?}, the reference {:?}",
            case.path.display(),
            cfg.input_size
        );
    }
    let low = case.input("low_res_masks")?.to_device(device)?;
    let masks = postprocess_masks(&low, cfg.img_size, input_size, cfg.original_size)?;
    let shape = Tensor::new(&[input_size.0 as f32, input_size.1 as f32], device)?;
    Ok(BTreeMap::from([
        ("masks".to_string(), masks),
        ("preprocess_shape".to_string(), shape.to_dtype(DType::F32)?),
    ]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use calico_nn::testing::max_abs_diff;
    use candle_core::Var;

    fn ramp(shape: (usize, usize, usize, usize)) -> Tensor {
        let n = shape.0 * shape.1 * shape.2 * shape.3;
        let v: Vec<f32> = (0..n)
            .map(|i| ((i * 37 % 101) as f32 / 50.0) - 1.0)
            .collect();
        Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
    }

    /// Direct per-pixel bilinear sampling, the textbook formula.
    fn naive_resize(x: &[f32], h: usize, w: usize, oh: usize, ow: usize) -> Vec<f32> {
        let (th, tw) = (taps(h, oh), taps(w, ow));
        let mut out = vec![0f32; oh * ow];
        for (i, a) in th.iter().enumerate() {
            for (j, b) in tw.iter().enumerate() {
                let px = |r: usize, c: usize| x[r * w + c] as f64;
                let top = b.w0 * px(a.i0, b.i0) + b.w1 * px(a.i0, b.i1);
                let bot = b.w0 * px(a.i1, b.i0) + b.w1 * px(a.i1, b.i1);
                out[i * ow + j] = (a.w0 * top + a.w1 * bot) as f32;
            }
        }
        out
    }

    #[test]
    fn preprocess_shape_rounds_half_up_like_the_reference() {
        assert_eq!(get_preprocess_shape(480, 640, 1024), (768, 1024));
        assert_eq!(get_preprocess_shape(5, 128, 64), (3, 64));
        assert_eq!(get_preprocess_shape(1024, 1024, 1024), (1024, 1024));
        assert_eq!(get_preprocess_shape(375, 500, 1024), (768, 1024));
        assert_eq!(get_preprocess_shape(333, 500, 1024), (682, 1024));
    }

    #[test]
    fn folded_postprocess_equals_the_three_steps() {
        let x = ramp((2, 1, 8, 8));
        let direct = postprocess_masks(&x, 32, (20, 32), (13, 41)).unwrap();
        let up = resize_bilinear(&x, (32, 32)).unwrap();
        let cropped = up.narrow(2, 0, 20).unwrap().narrow(3, 0, 32).unwrap();
        let steps = resize_bilinear(&cropped, (13, 41)).unwrap();
        let d = max_abs_diff(&direct, &steps);
        assert!(d < 1e-5, "{d}");
    }

    #[test]
    fn resize_matches_direct_sampling_up_and_down() {
        for &(h, w, oh, ow) in &[(5, 7, 11, 3), (9, 4, 2, 13), (6, 6, 6, 6)] {
            let x = ramp((1, 1, h, w));
            let ours: Vec<f32> = resize_bilinear(&x, (oh, ow))
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap();
            let xs: Vec<f32> = x.flatten_all().unwrap().to_vec1().unwrap();
            let want = naive_resize(&xs, h, w, oh, ow);
            for (a, b) in ours.iter().zip(&want) {
                assert!((a - b).abs() < 1e-5, "{h}x{w}→{oh}x{ow}: {a} vs {b}");
            }
        }
    }

    #[test]
    fn binarize_thresholds_at_zero() {
        let x = Tensor::new(&[[-1f32, 0.0], [1e-3, 2.0]], &Device::Cpu).unwrap();
        let b: Vec<Vec<u8>> = binarize(&x).unwrap().to_vec2().unwrap();
        assert_eq!(b, vec![vec![0, 0], vec![1, 1]]);
    }

    #[test]
    fn postprocess_is_differentiable() {
        // d/dx of sum(postprocess(x) * r) equals M_hᵀ r M_w, checked
        // against finite differences on a few elements.
        let x = ramp((1, 2, 6, 5)).to_dtype(DType::F64).unwrap();
        let r = ramp((1, 2, 9, 14)).to_dtype(DType::F64).unwrap();
        let f = |t: &Tensor| {
            (postprocess_masks(t, 20, (12, 20), (9, 14)).unwrap() * &r)
                .unwrap()
                .sum_all()
                .unwrap()
        };
        let xv = Var::from_tensor(&x).unwrap();
        let grads = f(xv.as_tensor()).backward().unwrap();
        let g: Vec<f64> = grads
            .get(xv.as_tensor())
            .expect("gradient reaches the low-resolution logits")
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let base: Vec<f64> = x.flatten_all().unwrap().to_vec1().unwrap();
        let mut nonzero = 0;
        for i in (0..base.len()).step_by(7) {
            let eval = |d: f64| {
                let mut v = base.clone();
                v[i] += d;
                let t = Tensor::from_vec(v, x.shape(), x.device()).unwrap();
                f(&t).to_scalar::<f64>().unwrap()
            };
            let numeric = (eval(1e-4) - eval(-1e-4)) / 2e-4;
            assert!(
                (numeric - g[i]).abs() < 1e-8 * (1.0 + numeric.abs()),
                "element {i}: analytic {} vs numeric {numeric}",
                g[i]
            );
            nonzero += (g[i].abs() > 1e-9) as usize;
        }
        assert!(nonzero > 0);
    }
}
