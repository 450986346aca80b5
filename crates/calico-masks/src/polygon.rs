//! Polygon and box rasterisation (`rleFrPoly`, `rleFrBbox`).
//!
//! The algorithm upsamples the outline 5×, walks it with a DDA, keeps the
//! points where the outline crosses a pixel column centre, and turns those
//! crossings into run boundaries. Self-intersecting polygons therefore fill
//! with the even-odd rule, exactly as pycocotools does.

use crate::error::{MaskError, Result};
use crate::rle::Rle;

const SCALE: f64 = 5.0;
/// Refuse outlines longer than this many upsampled points (≈ 2 GiB of work
/// memory); pycocotools would try to allocate it.
const MAX_OUTLINE_POINTS: u64 = 1 << 28;

/// C's `(int)` cast of a double as x86-64 performs it (`cvttsd2si`):
/// truncation toward zero, and `INT_MIN` for NaN or out-of-range values.
fn c_int(v: f64) -> i32 {
    if v.is_nan() || v >= 2_147_483_648.0 || v <= -2_147_483_649.0 {
        i32::MIN
    } else {
        v as i32
    }
}

/// Rasterises one polygon given as `[x0, y0, x1, y1, …]` (an odd trailing
/// coordinate is ignored, as in pycocotools).
pub fn polygon_to_rle(xy: &[f64], height: u32, width: u32) -> Result<Rle> {
    let k = xy.len() / 2;
    if let Some(bad) = xy[..2 * k].iter().find(|v| !v.is_finite()) {
        return Err(MaskError::BadSegmentation(format!(
            "polygon coordinate {bad} is not a finite number"
        )));
    }
    let h = height as u64;
    let w = width as u64;
    // Upsampled integer vertices, closed.
    let mut x: Vec<i32> = (0..k).map(|j| c_int(SCALE * xy[2 * j] + 0.5)).collect();
    let mut y: Vec<i32> = (0..k).map(|j| c_int(SCALE * xy[2 * j + 1] + 0.5)).collect();
    if k > 0 {
        x.push(x[0]);
        y.push(y[0]);
    }
    let mut total = 0u64;
    for j in 0..k {
        let dx = (x[j] as i64 - x[j + 1] as i64).unsigned_abs();
        let dy = (y[j] as i64 - y[j + 1] as i64).unsigned_abs();
        total += dx.max(dy) + 1;
    }
    if total > MAX_OUTLINE_POINTS {
        return Err(MaskError::BadSegmentation(format!(
            "polygon outline is {total} upsampled points long; coordinates far outside a {height}×{width} image?"
        )));
    }
    // Dense points along the outline.
    let mut u: Vec<i32> = Vec::with_capacity(total as usize);
    let mut v: Vec<i32> = Vec::with_capacity(total as usize);
    for j in 0..k {
        let (mut xs, mut xe, mut ys, mut ye) = (x[j], x[j + 1], y[j], y[j + 1]);
        let dx = (xe - xs).abs();
        let dy = (ys - ye).abs();
        let flip = (dx >= dy && xs > xe) || (dx < dy && ys > ye);
        if flip {
            std::mem::swap(&mut xs, &mut xe);
            std::mem::swap(&mut ys, &mut ye);
        }
        if dx >= dy {
            // A repeated vertex gives 0/0 = NaN in the C code, which x86
            // converts to INT_MIN; c_int reproduces that.
            let s = (ye - ys) as f64 / dx as f64;
            for d in 0..=dx {
                let t = if flip { dx - d } else { d };
                u.push(t + xs);
                v.push(c_int(ys as f64 + s * t as f64 + 0.5));
            }
        } else {
            let s = (xe - xs) as f64 / dy as f64;
            for d in 0..=dy {
                let t = if flip { dy - d } else { d };
                v.push(t + ys);
                u.push(c_int(xs as f64 + s * t as f64 + 0.5));
            }
        }
    }
    // Crossings of pixel-column centres, downsampled.
    let w_max = w.wrapping_sub(1) as f64;
    let mut a: Vec<u32> = Vec::new();
    for j in 1..u.len() {
        if u[j] == u[j - 1] {
            continue;
        }
        let xd = if u[j] < u[j - 1] { u[j] } else { u[j] - 1 } as f64;
        let xd = (xd + 0.5) / SCALE - 0.5;
        if xd.floor() != xd || xd < 0.0 || xd > w_max {
            continue;
        }
        let yd = if v[j] < v[j - 1] { v[j] } else { v[j - 1] } as f64;
        let mut yd = (yd + 0.5) / SCALE - 0.5;
        if yd < 0.0 {
            yd = 0.0;
        } else if yd > h as f64 {
            yd = h as f64;
        }
        let yd = yd.ceil();
        a.push(
            (xd as i32)
                .wrapping_mul(height as i32)
                .wrapping_add(yd as i32) as u32,
        );
    }
    a.push(h.wrapping_mul(w) as u32);
    a.sort_unstable();
    let mut prev = 0u32;
    for value in a.iter_mut() {
        let t = *value;
        *value = value.wrapping_sub(prev);
        prev = t;
    }
    // Zero-length differences merge their neighbours.
    let mut counts = Vec::with_capacity(a.len());
    let mut j = 0;
    counts.push(a[j]);
    j += 1;
    while j < a.len() {
        if a[j] > 0 {
            counts.push(a[j]);
            j += 1;
        } else {
            j += 1;
            if j < a.len() {
                if let Some(last) = counts.last_mut() {
                    *last = last.wrapping_add(a[j]);
                }
                j += 1;
            }
        }
    }
    Ok(Rle::new(height, width, counts))
}

/// Rasterises a box `[x, y, w, h]` (`maskUtils.frBbox`).
pub fn bbox_to_rle(bbox: [f64; 4], height: u32, width: u32) -> Result<Rle> {
    let [xs, ys, bw, bh] = bbox;
    let (xe, ye) = (xs + bw, ys + bh);
    polygon_to_rle(&[xs, ys, xs, ye, xe, ye, xe, ys], height, width)
}

/// Union of several polygons (a COCO polygon `segmentation`), as
/// `maskUtils.merge(maskUtils.frPyObjects(polys, h, w))`.
pub fn polygons_to_rle(polygons: &[Vec<f64>], height: u32, width: u32) -> Result<Rle> {
    let rles = polygons
        .iter()
        .map(|p| polygon_to_rle(p, height, width))
        .collect::<Result<Vec<_>>>()?;
    if rles.is_empty() {
        return Ok(Rle::empty(height, width));
    }
    Ok(Rle::merge(&rles, false))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn triangle_matches_pycocotools() {
        // maskUtils.frPyObjects([[1,1,5,1,5,5]], 10, 10) == b'e0191O1`1'
        let r = polygon_to_rle(&[1.0, 1.0, 5.0, 1.0, 5.0, 5.0], 10, 10).unwrap();
        assert_eq!(r.to_compressed(), "e0191O1`1");
        // An odd trailing coordinate is ignored.
        let r = polygon_to_rle(&[1.0, 1.0, 5.0, 1.0, 5.0, 5.0, 2.0], 10, 10).unwrap();
        assert_eq!(r.to_compressed(), "e0191O1`1");
    }

    #[test]
    fn clipped_and_degenerate() {
        let r = polygon_to_rle(&[-3.0, -3.0, 50.0, -3.0, 50.0, 50.0], 10, 10).unwrap();
        assert_eq!(r.to_compressed(), ":191O1O1O1O1O1O1O1O");
        let r = polygon_to_rle(&[1.0, 2.0, 3.0], 10, 10).unwrap();
        assert_eq!(r.to_compressed(), "T3");
        assert_eq!(r.area(), 0);
    }

    #[test]
    fn box_matches_pycocotools() {
        // maskUtils.frPyObjects(np.array([[1,1,3,3.5]]), 10, 10) == b';46000k1'
        let r = bbox_to_rle([1.0, 1.0, 3.0, 3.5], 10, 10).unwrap();
        assert_eq!(r.to_compressed(), ";46000k1");
    }

    #[test]
    fn non_finite_and_huge_are_errors() {
        assert!(polygon_to_rle(&[0.0, f64::NAN, 1.0, 1.0, 2.0, 0.0], 4, 4).is_err());
        assert!(polygon_to_rle(&[0.0, 0.0, 4e8, 0.0, 4e8, 4e8], 4, 4).is_err());
    }
}
