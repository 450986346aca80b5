//! 2-D primitives, affine poses and scan conversion.
//!
//! A primitive lives in its own unit frame (`u, v ∈ [-1, 1]`), placed in the
//! object frame by a centre, half-sizes and an angle; an object is placed in
//! the image by a [`Pose`]. A pixel is covered when its centre falls inside
//! the primitive, so coverage is exact and masks need no anti-aliasing.

/// The shape of a primitive in its unit frame.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Kind {
    /// `|u| ≤ 1` and `|v| ≤ 1`.
    Rect,
    /// `u² + v² ≤ 1`.
    Ellipse,
    /// `r² ≤ u² + v² ≤ 1`: an elliptic annulus (wheels, handles, rims).
    Ring(f32),
    /// A polygon with vertices in the unit square, filled even-odd.
    Poly(Vec<[f32; 2]>),
}

/// A primitive placed in the object frame.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Prim {
    pub kind: Kind,
    pub cx: f32,
    pub cy: f32,
    pub hx: f32,
    pub hy: f32,
    pub angle: f32,
}

impl Prim {
    /// An axis-aligned rectangle by centre and half-sizes.
    pub fn rect(cx: f32, cy: f32, hx: f32, hy: f32) -> Self {
        Prim {
            kind: Kind::Rect,
            cx,
            cy,
            hx,
            hy,
            angle: 0.0,
        }
    }

    /// An axis-aligned rectangle by corners.
    pub fn span(x0: f32, y0: f32, x1: f32, y1: f32) -> Self {
        Prim::rect(
            (x0 + x1) / 2.0,
            (y0 + y1) / 2.0,
            (x1 - x0).abs() / 2.0,
            (y1 - y0).abs() / 2.0,
        )
    }

    /// A bar of half-thickness `t` from `(x0, y0)` to `(x1, y1)`.
    pub fn bar(x0: f32, y0: f32, x1: f32, y1: f32, t: f32) -> Self {
        let (dx, dy) = (x1 - x0, y1 - y0);
        Prim {
            kind: Kind::Rect,
            cx: (x0 + x1) / 2.0,
            cy: (y0 + y1) / 2.0,
            hx: (dx * dx + dy * dy).sqrt() / 2.0,
            hy: t,
            angle: dy.atan2(dx),
        }
    }

    /// An axis-aligned ellipse by centre and radii.
    pub fn ellipse(cx: f32, cy: f32, rx: f32, ry: f32) -> Self {
        Prim {
            kind: Kind::Ellipse,
            ..Prim::rect(cx, cy, rx, ry)
        }
    }

    /// An elliptic ring with inner radius `inner` (a fraction of the outer).
    pub fn ring(cx: f32, cy: f32, rx: f32, ry: f32, inner: f32) -> Self {
        Prim {
            kind: Kind::Ring(inner),
            ..Prim::rect(cx, cy, rx, ry)
        }
    }

    /// A polygon given in object coordinates (its unit frame is its bounding box).
    pub fn poly(points: &[[f32; 2]]) -> Self {
        let (mut x0, mut y0, mut x1, mut y1) = (f32::MAX, f32::MAX, f32::MIN, f32::MIN);
        for p in points {
            x0 = x0.min(p[0]);
            y0 = y0.min(p[1]);
            x1 = x1.max(p[0]);
            y1 = y1.max(p[1]);
        }
        let (cx, cy) = ((x0 + x1) / 2.0, (y0 + y1) / 2.0);
        let (hx, hy) = (((x1 - x0) / 2.0).max(1e-6), ((y1 - y0) / 2.0).max(1e-6));
        let unit = points
            .iter()
            .map(|p| [(p[0] - cx) / hx, (p[1] - cy) / hy])
            .collect();
        Prim {
            kind: Kind::Poly(unit),
            cx,
            cy,
            hx,
            hy,
            angle: 0.0,
        }
    }

    /// The same primitive rotated by `angle` radians about its centre.
    pub fn rot(mut self, angle: f32) -> Self {
        self.angle += angle;
        self
    }

    /// The affine map from the unit frame to the object frame.
    pub fn to_object(&self) -> Affine {
        let (s, c) = self.angle.sin_cos();
        Affine([
            c * self.hx,
            -s * self.hy,
            self.cx,
            s * self.hx,
            c * self.hy,
            self.cy,
        ])
    }
}

/// `x' = a0·x + a1·y + a2`, `y' = a3·x + a4·y + a5`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Affine(pub [f32; 6]);

impl Affine {
    pub fn apply(&self, x: f32, y: f32) -> (f32, f32) {
        let a = &self.0;
        (a[0] * x + a[1] * y + a[2], a[3] * x + a[4] * y + a[5])
    }

    /// `self ∘ other` (apply `other` first).
    pub fn then_after(&self, other: &Affine) -> Affine {
        let a = &self.0;
        let b = &other.0;
        Affine([
            a[0] * b[0] + a[1] * b[3],
            a[0] * b[1] + a[1] * b[4],
            a[0] * b[2] + a[1] * b[5] + a[2],
            a[3] * b[0] + a[4] * b[3],
            a[3] * b[1] + a[4] * b[4],
            a[3] * b[2] + a[4] * b[5] + a[5],
        ])
    }

    /// The inverse map, or `None` when it is singular.
    pub fn inverse(&self) -> Option<Affine> {
        let a = &self.0;
        let det = a[0] * a[4] - a[1] * a[3];
        if det.abs() < 1e-12 || !det.is_finite() {
            return None;
        }
        let (i0, i1, i3, i4) = (a[4] / det, -a[1] / det, -a[3] / det, a[0] / det);
        Some(Affine([
            i0,
            i1,
            -(i0 * a[2] + i1 * a[5]),
            i3,
            i4,
            -(i3 * a[2] + i4 * a[5]),
        ]))
    }
}

/// Where an object sits in the image.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Pose {
    /// Centre in pixels.
    pub tx: f32,
    pub ty: f32,
    /// Pixels per object unit.
    pub scale: f32,
    /// Rotation in radians.
    pub angle: f32,
    /// Mirror left-right before rotating.
    pub flip: bool,
}

impl Pose {
    /// The affine map from the object frame to pixel coordinates.
    pub fn to_image(self) -> Affine {
        let (s, c) = self.angle.sin_cos();
        let sx = if self.flip { -self.scale } else { self.scale };
        let sy = self.scale;
        Affine([c * sx, -s * sy, self.tx, s * sx, c * sy, self.ty])
    }
}

#[inline]
fn inside(kind: &Kind, u: f32, v: f32) -> bool {
    match kind {
        Kind::Rect => u.abs() <= 1.0 && v.abs() <= 1.0,
        Kind::Ellipse => u * u + v * v <= 1.0,
        Kind::Ring(r) => {
            let d = u * u + v * v;
            d <= 1.0 && d >= r * r
        }
        Kind::Poly(pts) => {
            let mut c = false;
            let n = pts.len();
            let mut j = n.wrapping_sub(1);
            for i in 0..n {
                let (pi, pj) = (pts[i], pts[j]);
                if (pi[1] > v) != (pj[1] > v)
                    && u < (pj[0] - pi[0]) * (v - pi[1]) / (pj[1] - pi[1]) + pi[0]
                {
                    c = !c;
                }
                j = i;
            }
            c
        }
    }
}

/// Calls `f(pixel_index, u, v)` for every pixel of a `width × height`
/// canvas whose centre lies inside `kind` mapped by `unit_to_image`.
pub(crate) fn scan(
    width: u32,
    height: u32,
    unit_to_image: &Affine,
    kind: &Kind,
    mut f: impl FnMut(usize, f32, f32),
) {
    let Some(inv) = unit_to_image.inverse() else {
        return;
    };
    let (mut x0, mut y0, mut x1, mut y1) = (f32::MAX, f32::MAX, f32::MIN, f32::MIN);
    for (u, v) in [(-1.0, -1.0), (1.0, -1.0), (1.0, 1.0), (-1.0, 1.0)] {
        let (x, y) = unit_to_image.apply(u, v);
        x0 = x0.min(x);
        y0 = y0.min(y);
        x1 = x1.max(x);
        y1 = y1.max(y);
    }
    if !(x0.is_finite() && y0.is_finite() && x1.is_finite() && y1.is_finite()) {
        return;
    }
    let px0 = (x0 - 0.5).floor().max(0.0) as u32;
    let py0 = (y0 - 0.5).floor().max(0.0) as u32;
    let px1 = ((x1 - 0.5).ceil() + 1.0).clamp(0.0, width as f32) as u32;
    let py1 = ((y1 - 0.5).ceil() + 1.0).clamp(0.0, height as f32) as u32;
    let a = &inv.0;
    for py in py0..py1 {
        let yc = py as f32 + 0.5;
        let row = py as usize * width as usize;
        for px in px0..px1 {
            let xc = px as f32 + 0.5;
            let u = a[0] * xc + a[1] * yc + a[2];
            let v = a[3] * xc + a[4] * yc + a[5];
            if inside(kind, u, v) {
                f(row + px as usize, u, v);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn count(prim: &Prim, pose: &Pose, w: u32, h: u32) -> usize {
        let m = pose.to_image().then_after(&prim.to_object());
        let mut n = 0;
        scan(w, h, &m, &prim.kind, |_, _, _| n += 1);
        n
    }

    #[test]
    fn rect_covers_exact_pixel_centres() {
        let pose = Pose {
            tx: 0.0,
            ty: 0.0,
            scale: 1.0,
            angle: 0.0,
            flip: false,
        };
        // Pixels 2..6 × 1..4 have centres inside [2, 6] × [1, 4].
        assert_eq!(count(&Prim::span(2.0, 1.0, 6.0, 4.0), &pose, 10, 10), 12);
        // Clipped by the canvas.
        assert_eq!(count(&Prim::span(-5.0, -5.0, 2.0, 2.0), &pose, 10, 10), 4);
    }

    #[test]
    fn shapes_have_about_their_area() {
        let pose = Pose {
            tx: 50.0,
            ty: 50.0,
            scale: 40.0,
            angle: 0.3,
            flip: true,
        };
        let e = count(&Prim::ellipse(0.0, 0.0, 0.5, 0.25), &pose, 100, 100) as f32;
        let want = std::f32::consts::PI * 20.0 * 10.0;
        assert!((e - want).abs() / want < 0.05, "{e} vs {want}");
        let r = count(&Prim::ring(0.0, 0.0, 0.5, 0.5, 0.5), &pose, 100, 100) as f32;
        let want = std::f32::consts::PI * (400.0 - 100.0);
        assert!((r - want).abs() / want < 0.05, "{r} vs {want}");
        let t = count(
            &Prim::poly(&[[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]]),
            &Pose {
                scale: 20.0,
                ..pose
            },
            100,
            100,
        ) as f32;
        assert!((t - 200.0).abs() < 20.0, "{t}");
        let b = count(&Prim::bar(-0.5, -0.5, 0.5, 0.5, 0.05), &pose, 100, 100) as f32;
        let want = 2f32.sqrt() * 40.0 * 4.0;
        assert!((b - want).abs() / want < 0.1, "{b} vs {want}");
    }

    #[test]
    fn affine_inverse_round_trips() {
        let m = Pose {
            tx: 3.0,
            ty: -2.0,
            scale: 7.0,
            angle: 1.1,
            flip: true,
        }
        .to_image();
        let inv = m.inverse().unwrap();
        let (x, y) = m.apply(0.25, -0.75);
        let (u, v) = inv.apply(x, y);
        assert!((u - 0.25).abs() < 1e-5 && (v + 0.75).abs() < 1e-5);
    }
}
