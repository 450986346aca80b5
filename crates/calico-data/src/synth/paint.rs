//! Colours, part textures and backgrounds.
//!
//! Everything random is drawn from the scene's generator when the scene is
//! sampled; per-pixel grain comes from an integer hash of the pixel index,
//! so painting consumes no randomness and an annotation-only run samples
//! exactly the same scenes.

use rand::Rng;
use rand_chacha::ChaCha8Rng;

/// Colour family of a part.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Style {
    /// Any saturated colour.
    Any,
    /// Near black (tyres, pockets, interiors).
    Dark,
    /// Bluish grey (windows).
    Glass,
    /// Pale yellow-white (lights).
    Light,
    /// Browns.
    Wood,
    /// Animal coat colours.
    Fur,
    /// Greys.
    Metal,
}

fn hsv(h: f32, s: f32, v: f32) -> [f32; 3] {
    let h = h.rem_euclid(360.0) / 60.0;
    let c = v * s;
    let x = c * (1.0 - (h % 2.0 - 1.0).abs());
    let (r, g, b) = match h as u32 {
        0 => (c, x, 0.0),
        1 => (x, c, 0.0),
        2 => (0.0, c, x),
        3 => (0.0, x, c),
        4 => (x, 0.0, c),
        _ => (c, 0.0, x),
    };
    let m = v - c;
    [(r + m) * 255.0, (g + m) * 255.0, (b + m) * 255.0]
}

/// A random colour of a style.
pub(crate) fn colour(rng: &mut ChaCha8Rng, style: Style) -> [f32; 3] {
    let (h, s, v) = match style {
        Style::Any => (
            rng.random_range(0.0..360.0),
            rng.random_range(0.3..0.9),
            rng.random_range(0.35..0.95),
        ),
        Style::Dark => (
            rng.random_range(0.0..360.0),
            rng.random_range(0.0..0.3),
            rng.random_range(0.05..0.22),
        ),
        Style::Glass => (
            rng.random_range(185.0..225.0),
            rng.random_range(0.2..0.6),
            rng.random_range(0.45..0.85),
        ),
        Style::Light => (
            rng.random_range(40.0..60.0),
            rng.random_range(0.0..0.35),
            rng.random_range(0.88..1.0),
        ),
        Style::Wood => (
            rng.random_range(18.0..38.0),
            rng.random_range(0.4..0.8),
            rng.random_range(0.3..0.75),
        ),
        Style::Fur => (
            rng.random_range(20.0..45.0),
            rng.random_range(0.05..0.7),
            rng.random_range(0.15..0.95),
        ),
        Style::Metal => (
            rng.random_range(0.0..360.0),
            rng.random_range(0.0..0.1),
            rng.random_range(0.5..0.9),
        ),
    };
    hsv(h, s, v)
}

/// A texture over object-frame (or image-frame) coordinates.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum Pattern {
    Flat,
    /// Hard stripes along direction `(dx, dy)` with `freq` stripes per unit.
    Stripes {
        dx: f32,
        dy: f32,
        freq: f32,
    },
    /// A checkerboard with `freq` cells per unit.
    Checker {
        freq: f32,
    },
    /// A linear blend from the base to the alternate colour along `(dx, dy)`.
    Gradient {
        dx: f32,
        dy: f32,
    },
}

/// How a part or a background region is coloured.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Paint {
    pub base: [f32; 3],
    pub alt: [f32; 3],
    pub pattern: Pattern,
    /// Darkening towards `|u| = 1` of the primitive (a cylinder look), 0..1.
    pub shade: f32,
    /// Amplitude of per-pixel grain, in grey levels.
    pub grain: f32,
}

impl Paint {
    /// A random paint of `style`; `scale` is the coordinate unit's rough size
    /// (1 for object frames, the image size for backgrounds).
    pub fn random(rng: &mut ChaCha8Rng, style: Style, scale: f32) -> Paint {
        let base = colour(rng, style);
        let mut alt = colour(rng, style);
        if style == Style::Any && rng.random_bool(0.5) {
            alt = colour(rng, Style::Any);
        }
        let angle: f32 = rng.random_range(0.0..std::f32::consts::TAU);
        let (dy, dx) = angle.sin_cos();
        let pattern = match rng.random_range(0..10u32) {
            0..=3 => Pattern::Flat,
            4..=5 => Pattern::Stripes {
                dx,
                dy,
                freq: rng.random_range(4.0..14.0) / scale,
            },
            6 => Pattern::Checker {
                freq: rng.random_range(4.0..12.0) / scale,
            },
            _ => Pattern::Gradient {
                dx: dx / scale,
                dy: dy / scale,
            },
        };
        Paint {
            base,
            alt,
            pattern,
            shade: rng.random_range(0.0..0.45),
            grain: rng.random_range(1.0..8.0),
        }
    }

    /// The colour at frame coordinates `(x, y)`, primitive coordinate `u`
    /// and pixel grain `g` (see [`grain`]).
    #[inline]
    pub fn at(&self, x: f32, y: f32, u: f32, g: i8) -> [u8; 3] {
        let t = self.pattern_at(x, y);
        let light = 1.0 - self.shade * u * u;
        let g = g as f32 * (self.grain / 255.0);
        let mut out = [0u8; 3];
        for (k, o) in out.iter_mut().enumerate() {
            let c = self.base[k] + (self.alt[k] - self.base[k]) * t;
            *o = to_u8(c * light + g);
        }
        out
    }

    /// The blend weight of the alternate colour at `(x, y)`.
    #[inline]
    fn pattern_at(&self, x: f32, y: f32) -> f32 {
        match self.pattern {
            Pattern::Flat => 0.0,
            Pattern::Stripes { dx, dy, freq } => {
                let s = (x * dx + y * dy) * freq;
                if (s - floor(s)) < 0.5 {
                    0.0
                } else {
                    1.0
                }
            }
            Pattern::Checker { freq } => {
                let a = floor(x * freq) as i32 + floor(y * freq) as i32;
                (a & 1) as f32
            }
            Pattern::Gradient { dx, dy } => ((x * dx + y * dy) * 0.5 + 0.5).clamp(0.0, 1.0),
        }
    }
}

/// A scene background.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Background {
    /// A paint over the whole image (flat, stripes, checker or gradient).
    Painted(Paint),
    /// Smooth value noise: a coarse grid of colours, bilinearly blended.
    Blobs {
        cols: usize,
        rows: usize,
        grid: Vec<[f32; 3]>,
        grain: f32,
    },
}

impl Background {
    pub fn random(rng: &mut ChaCha8Rng, width: u32, height: u32) -> Background {
        let size = width.max(height) as f32;
        if rng.random_bool(0.4) {
            let (cols, rows) = (rng.random_range(2..7usize), rng.random_range(2..7usize));
            let style = if rng.random_bool(0.5) {
                Style::Any
            } else {
                Style::Wood
            };
            let grid = (0..cols * rows).map(|_| colour(rng, style)).collect();
            Background::Blobs {
                cols,
                rows,
                grid,
                grain: rng.random_range(1.0..8.0),
            }
        } else {
            let mut p = Paint::random(rng, Style::Any, size);
            p.shade = 0.0;
            if let Pattern::Stripes { freq, .. } | Pattern::Checker { freq } = &mut p.pattern {
                *freq *= 0.5;
            }
            Background::Painted(p)
        }
    }

    /// Paints the whole RGB canvas.
    pub fn paint(&self, rgb: &mut [u8], width: u32, height: u32, seed: u32) {
        let (w, h) = (width as usize, height as usize);
        match self {
            Background::Painted(p) => {
                // One loop per pattern, so the pattern test is not per pixel.
                match p.pattern {
                    Pattern::Flat => fill_blend(rgb, w, h, seed, p, |_, _| 0.0),
                    Pattern::Gradient { dx, dy } => fill_blend(rgb, w, h, seed, p, |x, y| {
                        ((x * dx + y * dy) * 0.5 + 0.5).clamp(0.0, 1.0)
                    }),
                    Pattern::Stripes { .. } | Pattern::Checker { .. } => {
                        fill_blend(rgb, w, h, seed, p, |x, y| p.pattern_at(x, y))
                    }
                }
            }
            Background::Blobs {
                cols,
                rows,
                grid,
                grain: amp,
            } => {
                let fx = (*cols - 1) as f32 / w.max(2) as f32;
                let fy = (*rows - 1) as f32 / h.max(2) as f32;
                // Per column: left grid cell and blend weight.
                let xs: Vec<(usize, f32)> = (0..w)
                    .map(|x| {
                        let gx = x as f32 * fx;
                        let c0 = (gx as usize).min(cols - 2);
                        (c0, gx - c0 as f32)
                    })
                    .collect();
                let mut line = vec![[0f32; 3]; *cols];
                let table = grain_table();
                for y in 0..h {
                    let gy = y as f32 * fy;
                    let r0 = (gy as usize).min(rows - 2);
                    let ty = gy - r0 as f32;
                    for (c, l) in line.iter_mut().enumerate() {
                        let (a, b) = (&grid[r0 * cols + c], &grid[(r0 + 1) * cols + c]);
                        *l = [0, 1, 2].map(|k| a[k] + (b[k] - a[k]) * ty);
                    }
                    let row = &mut rgb[3 * y * w..3 * (y + 1) * w];
                    for (x, px) in row.chunks_exact_mut(3).enumerate() {
                        let (c0, tx) = xs[x];
                        let (a, b) = (&line[c0], &line[c0 + 1]);
                        let g = table
                            [((y * w + x) as u32).wrapping_add(seed) as usize & GRAIN_MASK as usize]
                            as f32
                            * (amp / 255.0);
                        for k in 0..3 {
                            px[k] = to_u8(a[k] + (b[k] - a[k]) * tx + g);
                        }
                    }
                }
            }
        }
    }
}

/// Fills a row-major RGB canvas with `p.base` blended towards `p.alt` by
/// `t(x, y)`, plus grain.
fn fill_blend(
    rgb: &mut [u8],
    w: usize,
    h: usize,
    seed: u32,
    p: &Paint,
    t: impl Fn(f32, f32) -> f32,
) {
    let table = grain_table();
    let amp = p.grain / 255.0;
    let diff = [0, 1, 2].map(|k| p.alt[k] - p.base[k]);
    for y in 0..h {
        let row = &mut rgb[3 * y * w..3 * (y + 1) * w];
        for (x, px) in row.chunks_exact_mut(3).enumerate() {
            let i = (y * w + x) as u32;
            let g = table[(i.wrapping_add(seed) & GRAIN_MASK) as usize] as f32 * amp;
            let t = t(x as f32, y as f32);
            for k in 0..3 {
                px[k] = to_u8(p.base[k] + diff[k] * t + g);
            }
        }
    }
}

const GRAIN_BITS: u32 = 16;
const GRAIN_MASK: u32 = (1 << GRAIN_BITS) - 1;

fn grain_table() -> &'static [i8] {
    static TABLE: std::sync::OnceLock<Vec<i8>> = std::sync::OnceLock::new();
    TABLE.get_or_init(|| {
        (0..1u32 << GRAIN_BITS)
            .map(|k| (pixel_hash(k, 0x5EED) >> 24) as u8 as i8)
            .collect()
    })
}

/// Per-pixel grain in -128..=127: a fixed table of hashed values, read at
/// an image-specific offset (cheaper than hashing every pixel).
#[inline]
pub(crate) fn grain(i: u32, seed: u32) -> i8 {
    grain_table()[(i.wrapping_add(seed) & GRAIN_MASK) as usize]
}

/// A colour channel: clamped to 0..=255 and rounded. Adding 1.5·2²³ puts
/// the rounded value in the low mantissa bits, which is cheaper than a
/// saturating float-to-int cast (NaN clamps to 0).
#[inline]
#[allow(clippy::manual_clamp)] // `max`/`min` send NaN to 0; `clamp` would keep it
fn to_u8(c: f32) -> u8 {
    (c.max(0.0).min(255.0) + 12_582_912.0).to_bits() as u8
}

/// `x.floor()` without the libm call baseline x86-64 makes for it (exact
/// for |x| < 2³¹).
#[inline]
fn floor(x: f32) -> f32 {
    let t = x as i32 as f32;
    if t > x {
        t - 1.0
    } else {
        t
    }
}

/// A cheap, well-mixed 32-bit hash of a pixel index.
#[inline]
pub(crate) fn pixel_hash(i: u32, seed: u32) -> u32 {
    let mut x = i.wrapping_mul(0x9E37_79B9) ^ seed;
    x ^= x >> 16;
    x = x.wrapping_mul(0x7FEB_352D);
    x ^= x >> 15;
    x = x.wrapping_mul(0x846C_A68B);
    x ^ (x >> 16)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn styles_stay_in_their_range() {
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        for _ in 0..200 {
            let d = colour(&mut rng, Style::Dark);
            assert!(d.iter().all(|&c| c <= 0.23 * 255.0), "{d:?}");
            let l = colour(&mut rng, Style::Light);
            assert!(l.iter().all(|&c| c >= 0.55 * 255.0), "{l:?}");
        }
    }

    #[test]
    fn channel_conversion_rounds_and_clamps() {
        assert_eq!(to_u8(-3.0), 0);
        assert_eq!(to_u8(f32::NAN), 0);
        assert_eq!(to_u8(300.0), 255);
        assert_eq!(to_u8(254.6), 255);
        assert_eq!(to_u8(17.4), 17);
        assert_eq!(to_u8(17.6), 18);
        assert_eq!(to_u8(128.0), 128);
    }

    #[test]
    fn hsv_primaries() {
        let r = hsv(0.0, 1.0, 1.0);
        assert_eq!(r.map(|c| c.round() as u8), [255, 0, 0]);
        let b = hsv(240.0, 1.0, 1.0);
        assert_eq!(b.map(|c| c.round() as u8), [0, 0, 255]);
    }
}
