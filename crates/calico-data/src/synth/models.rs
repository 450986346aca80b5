//! Parametric 2-D shape models, one per class.
//!
//! Each model draws its parts as primitives in an object frame whose y axis
//! points down, with the object about one unit tall and resting on y = 0.5
//! (flyers are centred). Proportions are drawn per instance, so two chairs
//! differ and a stool differs from a chair by more than its missing back.

use super::classes::SynthClass;
use super::geom::Prim;
use super::paint::Style;
use rand::Rng;
use rand_chacha::ChaCha8Rng;

/// One instance's primitives, back to front.
#[derive(Clone, Debug)]
pub(crate) struct Model {
    /// `(part index, primitive, use the part's second paint)`, in drawing order.
    pub prims: Vec<(usize, Prim, bool)>,
    /// Colour family of each part (indexed like [`SynthClass::parts`]).
    pub styles: Vec<Style>,
}

struct Builder<'a> {
    class: &'a SynthClass,
    model: Model,
}

impl Builder<'_> {
    fn index(&self, part: &str) -> usize {
        self.class
            .parts
            .iter()
            .position(|p| *p == part)
            .unwrap_or_else(|| {
                panic!(
                    "shape model of {} draws unknown part {part}",
                    self.class.name
                )
            })
    }

    fn add(&mut self, part: &str, prim: Prim) {
        let i = self.index(part);
        self.model.prims.push((i, prim, false));
    }

    fn add_alt(&mut self, part: &str, prim: Prim) {
        let i = self.index(part);
        self.model.prims.push((i, prim, true));
    }

    fn style(&mut self, part: &str, style: Style) {
        let i = self.index(part);
        self.model.styles[i] = style;
    }
}

fn r(rng: &mut ChaCha8Rng, lo: f32, hi: f32) -> f32 {
    rng.random_range(lo..hi)
}

/// Samples one instance of `class`.
pub(crate) fn build(class: &SynthClass, rng: &mut ChaCha8Rng) -> Model {
    let mut b = Builder {
        class,
        model: Model {
            prims: Vec::new(),
            styles: vec![Style::Any; class.parts.len()],
        },
    };
    match class.name {
        "chair" => chair(&mut b, rng),
        "stool" => stool(&mut b, rng),
        "bench" => bench(&mut b, rng),
        "swivel chair" => swivel_chair(&mut b, rng),
        "ottoman" => ottoman(&mut b, rng),
        "table" | "desk" => table(&mut b, rng, class.name == "desk"),
        "pool table" => pool_table(&mut b, rng),
        "mug" | "cup" => mug_or_cup(&mut b, rng, class.name == "cup"),
        "bottle" => bottle(&mut b, rng),
        "can" => can(&mut b, rng),
        "jar" => jar(&mut b, rng),
        "dog" | "cat" | "sheep" => quadruped(&mut b, rng),
        "bird" => bird(&mut b, rng),
        "airplane" => airplane(&mut b, rng),
        "car" | "van" => car_or_van(&mut b, rng, class.name == "van"),
        "bus" => bus(&mut b, rng),
        "truck" => truck(&mut b, rng),
        "bicycle" => bicycle(&mut b, rng),
        "minibike" => minibike(&mut b, rng),
        other => panic!("no shape model for class {other}"),
    }
    b.model
}

// ---------------------------------------------------------------- seating

fn legs_under(
    b: &mut Builder,
    rng: &mut ChaCha8Rng,
    xs: &[f32],
    top: f32,
    t: f32,
    splay: f32,
    part: &str,
) {
    for &x in xs {
        let out = splay * x.signum();
        let dx = r(rng, -0.01, 0.01);
        b.add(part, Prim::bar(x, top, x + out + dx, 0.5, t));
    }
}

fn chair(b: &mut Builder, rng: &mut ChaCha8Rng) {
    let sw = r(rng, 0.2, 0.3);
    let sy = r(rng, -0.02, 0.08);
    let st = r(rng, 0.02, 0.045);
    let lt = r(rng, 0.014, 0.028);
    let splay = r(rng, 0.0, 0.04);
    let depth = r(rng, 0.03, 0.08);
    if rng.random_bool(0.5) {
        b.style("leg", Style::Wood);
        b.style("seat", Style::Wood);
    }
    // Far legs (behind the seat), then the back, the seat, near legs, arm.
    legs_under(
        b,
        rng,
        &[-sw + lt + depth, sw - lt - depth],
        sy,
        lt,
        splay,
        "leg",
    );
    let top = -0.5 + r(rng, 0.0, 0.08);
    let tilt = r(rng, 0.0, 0.08);
    let bt = r(rng, 0.025, 0.07);
    b.add("back", Prim::bar(-sw + bt, sy, -sw + bt - tilt, top, bt));
    if rng.random_bool(0.5) {
        // A cross rail on the back.
        let y = (sy + top) / 2.0;
        b.add("back", Prim::bar(-sw, y, -sw + 2.5 * bt, y - 0.02, 0.015));
    }
    b.add("seat", Prim::span(-sw, sy - st, sw, sy + st));
    legs_under(b, rng, &[-sw + lt, sw - lt], sy + st, lt, splay, "leg");
    let ay = sy - r(rng, 0.14, 0.22);
    let front = sw * r(rng, 0.55, 0.9);
    let at = r(rng, 0.012, 0.022);
    b.add("arm", Prim::bar(-sw + bt, ay, front, ay, at));
    b.add("arm", Prim::bar(front - at, ay, front - at, sy - st, at));
}

fn stool(b: &mut Builder, rng: &mut ChaCha8Rng) {
    let sw = r(rng, 0.16, 0.26);
    let sy = r(rng, -0.32, -0.12);
    let lt = r(rng, 0.014, 0.026);
    let splay = r(rng, 0.02, 0.1);
    if rng.random_bool(0.5) {
        b.style("leg", Style::Metal);
    }
    legs_under(b, rng, &[-sw * 0.3, sw * 0.35], sy, lt, splay * 0.5, "leg");
    legs_under(b, rng, &[-sw * 0.75, sw * 0.75], sy, lt, splay, "leg");
    if rng.random_bool(0.5) {
        b.add("seat", Prim::ellipse(0.0, sy, sw, r(rng, 0.035, 0.07)));
    } else {
        let st = r(rng, 0.02, 0.05);
        b.add("seat", Prim::span(-sw, sy - st, sw, sy + st));
    }
}

fn bench(b: &mut Builder, rng: &mut ChaCha8Rng) {
    let sw = r(rng, 0.55, 0.8);
    let sy = r(rng, 0.0, 0.1);
    let st = r(rng, 0.02, 0.04);
    let lt = r(rng, 0.02, 0.035);
    if rng.random_bool(0.6) {
        b.style("seat", Style::Wood);
        b.style("back", Style::Wood);
    }
    let xs: &[f32] = if rng.random_bool(0.5) {
        &[-0.85, 0.85]
    } else {
        &[-0.85, 0.0, 0.85]
    };
    let xs: Vec<f32> = xs.iter().map(|x| x * sw).collect();
    // Back posts and a wide back panel (or two slats).
    let gap = r(rng, 0.04, 0.1);
    let bh = r(rng, 0.05, 0.1);
    let by = sy - st - gap - bh;
    for &x in &[-sw * 0.8, sw * 0.8] {
        b.add("back", Prim::span(x - 0.015, by, x + 0.015, sy));
    }
    if rng.random_bool(0.5) {
        b.add("back", Prim::span(-sw, by - bh, sw, by + bh));
    } else {
        b.add("back", Prim::span(-sw, by - bh, sw, by - bh * 0.2));
        b.add("back", Prim::span(-sw, by + bh * 0.2, sw, by + bh));
    }
    b.add("seat", Prim::span(-sw, sy - st, sw, sy + st));
    let splay = r(rng, 0.0, 0.03);
    legs_under(b, rng, &xs, sy + st, lt, splay, "leg");
    let ay = sy - r(rng, 0.1, 0.16);
    for side in [-1.0f32, 1.0] {
        let x = side * sw;
        b.add(
            "arm",
            Prim::bar(x - side * 0.12, ay, x + side * 0.02, ay, 0.018),
        );
        b.add("arm", Prim::span(x - 0.012, ay, x + 0.012, sy - st));
    }
}

fn swivel_chair(b: &mut Builder, rng: &mut ChaCha8Rng) {
    let sw = r(rng, 0.2, 0.28);
    let sy = r(rng, -0.05, 0.05);
    b.style("wheel", Style::Dark);
    b.style("base", Style::Metal);
    // Back: a post and a rounded panel.
    let top = -0.5 + r(rng, 0.0, 0.06);
    let ph = (sy - top) * 0.38;
    let px = -sw * r(rng, 0.55, 0.8);
    b.add("back", Prim::bar(px, sy, px - 0.03, top + ph, 0.018));
    b.add(
        "back",
        Prim::ellipse(px - 0.03, top + ph, r(rng, 0.07, 0.12), ph).rot(r(rng, -0.15, 0.05)),
    );
    b.add("seat", Prim::ellipse(0.0, sy, sw, r(rng, 0.04, 0.065)));
    let foot = 0.42;
    b.add("base", Prim::span(-0.022, sy + 0.04, 0.022, foot));
    let spread = r(rng, 0.22, 0.32);
    b.add(
        "base",
        Prim::bar(-spread, foot + 0.01, spread, foot + 0.01, 0.018),
    );
    let wr = r(rng, 0.03, 0.045);
    for x in [-spread, 0.0, spread] {
        b.add("wheel", Prim::ellipse(x, 0.5 - wr, wr, wr));
    }
}

fn ottoman(b: &mut Builder, rng: &mut ChaCha8Rng) {
    let sw = r(rng, 0.3, 0.48);
    let h = r(rng, 0.22, 0.38);
    let lh = r(rng, 0.04, 0.1);
    let bottom = 0.5 - lh;
    for x in [-sw * 0.8, sw * 0.8] {
        b.add("leg", Prim::span(x - 0.025, bottom - 0.02, x + 0.025, 0.5));
    }
    b.add("seat", Prim::span(-sw, bottom - h, sw, bottom));
    // A puffed top cushion.
    b.add(
        "seat",
        Prim::ellipse(0.0, bottom - h, sw, r(rng, 0.03, 0.07)),
    );
}

// ---------------------------------------------------------------- tables

fn table(b: &mut Builder, rng: &mut ChaCha8Rng, desk: bool) {
    let tw = r(rng, 0.5, 0.75);
    let ty = r(rng, -0.15, -0.02);
    let tt = r(rng, 0.015, 0.04);
    let lt = r(rng, 0.015, 0.035);
    if rng.random_bool(0.6) {
        b.style("top", Style::Wood);
        b.style("leg", Style::Wood);
    }
    let under = ty + tt;
    if desk {
        // Drawer pedestal on one side, a cupboard door on the other.
        let pw = tw * r(rng, 0.28, 0.4);
        let n = rng.random_range(2..4);
        let dh = (0.46 - under) / n as f32;
        for k in 0..n {
            let y0 = under + k as f32 * dh;
            b.add(
                "drawer",
                Prim::span(-tw + 0.02, y0 + 0.006, -tw + pw, y0 + dh - 0.006),
            );
            b.add_alt(
                "drawer",
                Prim::ellipse(-tw + pw / 2.0, y0 + dh / 2.0, 0.02, 0.012),
            );
        }
        b.add("door", Prim::span(tw - pw, under + 0.006, tw - 0.02, 0.46));
        b.add_alt(
            "door",
            Prim::ellipse(tw - pw + 0.04, (under + 0.46) / 2.0, 0.012, 0.03),
        );
        for x in [-tw + 0.02, -tw + pw, tw - pw, tw - 0.02] {
            b.add("leg", Prim::span(x - 0.012, 0.46, x + 0.012, 0.5));
        }
    } else {
        let inset = r(rng, 0.02, 0.1);
        let splay = r(rng, 0.0, 0.03);
        legs_under(
            b,
            rng,
            &[-tw + inset + 0.08, tw - inset - 0.08],
            under,
            lt * 0.8,
            splay,
            "leg",
        );
        legs_under(b, rng, &[-tw + inset, tw - inset], under, lt, splay, "leg");
        let cx = r(rng, -0.2, 0.2) * tw;
        let hx = r(rng, 0.12, 0.25);
        let hy = r(rng, 0.03, 0.06);
        b.add(
            "drawer",
            Prim::span(cx - hx, under, cx + hx, under + 2.0 * hy),
        );
        b.add_alt("drawer", Prim::ellipse(cx, under + hy, 0.02, 0.012));
    }
    b.add("top", Prim::span(-tw, ty - tt, tw, ty + tt));
}

fn pool_table(b: &mut Builder, rng: &mut ChaCha8Rng) {
    let tw = r(rng, 0.6, 0.85);
    let ty = r(rng, -0.15, 0.0);
    let th = r(rng, 0.07, 0.12);
    b.style("pocket", Style::Dark);
    b.style("leg", Style::Wood);
    for x in [-tw * 0.8, tw * 0.8] {
        let w = r(rng, 0.04, 0.07);
        b.add(
            "leg",
            Prim::poly(&[
                [x - w, ty + th],
                [x + w, ty + th],
                [x + w * 0.6, 0.5],
                [x - w * 0.6, 0.5],
            ]),
        );
    }
    b.add("bed", Prim::span(-tw, ty - th, tw, ty + th));
    b.add_alt(
        "bed",
        Prim::span(-tw + 0.03, ty - th, tw - 0.03, ty - th + 0.03),
    );
    let pr = r(rng, 0.025, 0.04);
    for x in [-tw + pr, 0.0, tw - pr] {
        b.add("pocket", Prim::ellipse(x, ty - th + pr * 0.6, pr, pr * 0.7));
    }
}

// ---------------------------------------------------------------- containers

fn side_handle(b: &mut Builder, rng: &mut ChaCha8Rng, x: f32, y: f32) {
    let hr = r(rng, 0.12, 0.18);
    let vr = r(rng, 0.13, 0.2);
    b.add(
        "handle",
        Prim::ring(x + hr * 0.25, y, hr, vr, r(rng, 0.5, 0.7)),
    );
}

fn mug_or_cup(b: &mut Builder, rng: &mut ChaCha8Rng, cup: bool) {
    let top = r(rng, -0.42, -0.3);
    let bottom = 0.45;
    let bw = r(rng, 0.2, 0.3);
    b.style("base", Style::Any);
    if cup {
        b.style("inner body", Style::Dark);
        let tw = bw * r(rng, 1.1, 1.4);
        let ow = tw * r(rng, 0.2, 0.32);
        side_handle(b, rng, bw * 0.95, (top + bottom) / 2.0);
        b.add(
            "body",
            Prim::poly(&[[-tw, top], [tw, top], [bw, bottom], [-bw, bottom]]),
        );
        b.add("rim", Prim::ellipse(0.0, top, tw, ow));
        b.add("inner body", Prim::ellipse(0.0, top, tw * 0.85, ow * 0.75));
        b.add(
            "base",
            Prim::ellipse(0.0, bottom, bw * 1.15, r(rng, 0.025, 0.05)),
        );
    } else {
        side_handle(b, rng, bw, (top + bottom) / 2.0);
        b.add("body", Prim::span(-bw, top, bw, bottom));
        let rh = r(rng, 0.015, 0.035);
        b.add("rim", Prim::span(-bw - 0.01, top - rh, bw + 0.01, top + rh));
        let bh = r(rng, 0.015, 0.04);
        b.add(
            "base",
            Prim::span(-bw - 0.005, bottom - bh, bw + 0.005, bottom + bh * 0.5),
        );
    }
}

fn bottle(b: &mut Builder, rng: &mut ChaCha8Rng) {
    let bw = r(rng, 0.13, 0.22);
    let nw = bw * r(rng, 0.28, 0.45);
    let shoulder = r(rng, -0.15, 0.05);
    let neck_base = shoulder - r(rng, 0.08, 0.18);
    let cap_base = r(rng, -0.4, -0.3).min(neck_base - 0.08);
    b.style(
        "body",
        if rng.random_bool(0.5) {
            Style::Glass
        } else {
            Style::Any
        },
    );
    b.add("body", Prim::span(-bw, shoulder, bw, 0.5));
    b.add(
        "body",
        Prim::poly(&[
            [-bw, shoulder + 0.001],
            [-nw, neck_base],
            [nw, neck_base],
            [bw, shoulder + 0.001],
        ]),
    );
    b.add("neck", Prim::span(-nw, cap_base, nw, neck_base + 0.005));
    b.add("cap", Prim::span(-nw * 1.15, -0.5, nw * 1.15, cap_base));
    let l0 = r(rng, shoulder + 0.06, 0.2);
    b.add("label", Prim::span(-bw, l0, bw, l0 + r(rng, 0.1, 0.22)));
}

fn can(b: &mut Builder, rng: &mut ChaCha8Rng) {
    let bw = r(rng, 0.18, 0.3);
    let top = r(rng, -0.38, -0.25);
    let ry = bw * r(rng, 0.18, 0.35);
    b.style("rim", Style::Metal);
    b.style("lid", Style::Metal);
    b.style("pull tab", Style::Metal);
    b.add("body", Prim::span(-bw, top, bw, 0.5 - ry * 0.5));
    b.add("body", Prim::ellipse(0.0, 0.5 - ry * 0.5, bw, ry * 0.5));
    b.add("rim", Prim::ellipse(0.0, top, bw, ry));
    b.add("lid", Prim::ellipse(0.0, top, bw * 0.86, ry * 0.8));
    let tx = r(rng, -0.3, 0.3) * bw;
    b.add("pull tab", Prim::ellipse(tx, top, bw * 0.22, ry * 0.3));
}

fn jar(b: &mut Builder, rng: &mut ChaCha8Rng) {
    let bw = r(rng, 0.22, 0.34);
    let top = r(rng, -0.38, -0.28);
    let lid_h = r(rng, 0.04, 0.08);
    b.style(
        "lid",
        if rng.random_bool(0.5) {
            Style::Metal
        } else {
            Style::Any
        },
    );
    let bh = r(rng, 0.02, 0.04);
    b.add("base", Prim::span(-bw * 0.9, 0.5 - 2.0 * bh, bw * 0.9, 0.5));
    let mid = (top + 0.5 - 2.0 * bh) / 2.0;
    let half = (0.5 - 2.0 * bh - top) / 2.0;
    if rng.random_bool(0.5) {
        b.add("body", Prim::ellipse(0.0, mid, bw, half));
        b.add("body", Prim::span(-bw * 0.6, top, bw * 0.6, mid));
    } else {
        b.add("body", Prim::span(-bw, top + 0.03, bw, mid + half));
    }
    b.add(
        "lid",
        Prim::span(-bw * 0.7, top - lid_h, bw * 0.7, top + 0.02),
    );
    if rng.random_bool(0.5) {
        b.add(
            "sticker",
            Prim::ellipse(0.0, mid + 0.02, bw * 0.55, half * 0.35),
        );
    } else {
        b.add(
            "sticker",
            Prim::span(-bw * 0.6, mid - 0.05, bw * 0.6, mid + 0.1),
        );
    }
}

// ---------------------------------------------------------------- animals

fn quadruped(b: &mut Builder, rng: &mut ChaCha8Rng) {
    let kind = b.class.name;
    let bl = r(rng, 0.3, 0.42);
    let bh = r(rng, 0.12, 0.19);
    let cy = 0.5 - r(rng, 0.26, 0.36) - bh * 0.3;
    let lt = if kind == "sheep" {
        r(rng, 0.018, 0.03)
    } else {
        r(rng, 0.025, 0.045)
    };
    for p in ["body", "head", "leg", "tail"] {
        b.style(p, Style::Fur);
    }
    if kind == "sheep" {
        b.style("body", Style::Light);
        b.style("tail", Style::Light);
        b.style("head", Style::Dark);
        b.style("leg", Style::Dark);
        b.style("horn", Style::Wood);
    } else {
        b.style("ear", Style::Fur);
    }
    let leg_top = cy + bh * 0.3;
    // Far legs, tail, body, near legs, head, ears.
    for x in [-bl * 0.55 + 0.06, bl * 0.6 + 0.05] {
        b.add(
            "leg",
            Prim::bar(x, leg_top, x + r(rng, -0.05, 0.05), 0.5, lt),
        );
    }
    let tx = -bl * 0.92;
    match kind {
        "cat" => {
            let (mx, my) = (tx - r(rng, 0.08, 0.14), cy - r(rng, 0.0, 0.1));
            b.add("tail", Prim::bar(tx, cy - bh * 0.3, mx, my, 0.022));
            b.add(
                "tail",
                Prim::bar(
                    mx,
                    my,
                    mx - r(rng, -0.05, 0.05),
                    my - r(rng, 0.1, 0.2),
                    0.02,
                ),
            );
        }
        "sheep" => b.add("tail", Prim::ellipse(tx - 0.02, cy, 0.05, 0.035)),
        _ => {
            let (ex, ey) = (tx - r(rng, 0.1, 0.2), cy - bh - r(rng, 0.0, 0.15));
            b.add(
                "tail",
                Prim::bar(tx, cy - bh * 0.4, ex, ey, r(rng, 0.018, 0.03)),
            );
        }
    }
    b.add("body", Prim::ellipse(0.0, cy, bl, bh));
    if kind == "sheep" {
        // Wool tufts.
        for k in 0..3 {
            let x = (k as f32 - 1.0) * bl * 0.55;
            b.add(
                "body",
                Prim::ellipse(x, cy - bh * 0.75, bl * 0.3, bh * 0.45),
            );
        }
    }
    for x in [-bl * 0.55, bl * 0.6] {
        b.add(
            "leg",
            Prim::bar(x, leg_top, x + r(rng, -0.05, 0.05), 0.5, lt),
        );
    }
    let hr = r(rng, 0.09, 0.14);
    let (hx, hy) = (bl * 0.95 + hr * 0.2, cy - bh - hr * r(rng, 0.2, 0.9));
    b.add(
        "body",
        Prim::bar(bl * 0.6, cy - bh * 0.3, hx, hy, hr * 0.55),
    );
    b.add("head", Prim::ellipse(hx, hy, hr, hr * r(rng, 0.8, 1.0)));
    match kind {
        "dog" => {
            b.add(
                "head",
                Prim::ellipse(
                    hx + hr * 0.9,
                    hy + hr * 0.3,
                    hr * r(rng, 0.5, 0.8),
                    hr * 0.45,
                ),
            );
            b.add(
                "ear",
                Prim::ellipse(
                    hx - hr * 0.35,
                    hy + hr * 0.1,
                    hr * 0.25,
                    hr * r(rng, 0.5, 0.8),
                )
                .rot(0.3),
            );
        }
        "cat" => {
            for dx in [-0.5f32, 0.35] {
                let x = hx + dx * hr;
                let base = hy - hr * 0.6;
                b.add(
                    "ear",
                    Prim::poly(&[
                        [x - hr * 0.3, base],
                        [x + hr * 0.3, base],
                        [x, base - hr * r(rng, 0.6, 0.9)],
                    ]),
                );
            }
        }
        _ => {
            b.add(
                "head",
                Prim::ellipse(hx + hr * 0.7, hy + hr * 0.35, hr * 0.7, hr * 0.45),
            );
            b.add(
                "horn",
                Prim::ring(hx - hr * 0.2, hy - hr * 0.1, hr * 0.6, hr * 0.6, 0.45),
            );
        }
    }
}

fn bird(b: &mut Builder, rng: &mut ChaCha8Rng) {
    let bw = r(rng, 0.22, 0.3);
    let bh = r(rng, 0.13, 0.19);
    let cy = r(rng, -0.1, 0.0);
    b.style("foot", Style::Dark);
    let fy = cy + bh * 0.7;
    for x in [-0.04f32, 0.05] {
        b.add("foot", Prim::bar(x, fy, x + 0.02, 0.45, 0.012));
        b.add("foot", Prim::bar(x + 0.02, 0.45, x + 0.07, 0.46, 0.01));
    }
    let tl = r(rng, 0.16, 0.28);
    b.add(
        "tail",
        Prim::poly(&[
            [-bw * 0.7, cy - bh * 0.3],
            [-bw * 0.7, cy + bh * 0.3],
            [-bw - tl, cy + r(rng, -0.05, 0.15)],
            [-bw - tl * 0.9, cy - r(rng, 0.02, 0.12)],
        ]),
    );
    b.add("body", Prim::ellipse(0.0, cy, bw, bh));
    let hr = r(rng, 0.08, 0.12);
    let (hx, hy) = (bw * 0.85, cy - bh * 0.9);
    b.add("head", Prim::ellipse(hx, hy, hr, hr));
    let bl = r(rng, 0.06, 0.14);
    b.add_alt(
        "head",
        Prim::poly(&[
            [hx + hr * 0.8, hy - hr * 0.3],
            [hx + hr * 0.8, hy + hr * 0.3],
            [hx + hr + bl, hy + 0.01],
        ]),
    );
    let raised = rng.random_bool(0.4);
    if raised {
        b.add(
            "wing",
            Prim::poly(&[
                [-bw * 0.3, cy - bh * 0.5],
                [bw * 0.3, cy - bh * 0.5],
                [-bw * 0.1, cy - bh - r(rng, 0.15, 0.3)],
            ]),
        );
    } else {
        b.add(
            "wing",
            Prim::ellipse(-bw * 0.15, cy - bh * 0.05, bw * 0.7, bh * 0.45).rot(r(rng, -0.25, 0.05)),
        );
    }
}

fn airplane(b: &mut Builder, rng: &mut ChaCha8Rng) {
    let len = r(rng, 0.5, 0.65);
    let fh = r(rng, 0.05, 0.085);
    let cy = r(rng, -0.05, 0.05);
    b.style("body", Style::Metal);
    b.style("engine", Style::Metal);
    let sweep = r(rng, 0.05, 0.2);
    let span = r(rng, 0.3, 0.45);
    let root = r(rng, -0.05, 0.15);
    // Far wing, far stabilizer, fuselage, fin, near wing, engines, nose.
    b.add(
        "wing",
        Prim::poly(&[
            [root + 0.12, cy],
            [root - 0.05, cy],
            [root - 0.05 - sweep * 0.7, cy - span * 0.5],
            [root - sweep * 0.7 + 0.03, cy - span * 0.5],
        ]),
    );
    b.add("body", Prim::span(-len, cy - fh, len * 0.7, cy + fh));
    b.add(
        "body",
        Prim::poly(&[
            [-len, cy - fh],
            [-len - 0.12, cy - fh * 0.6],
            [-len - 0.12, cy],
            [-len, cy + fh],
        ]),
    );
    let fin = r(rng, 0.15, 0.25);
    b.add(
        "tail",
        Prim::poly(&[
            [-len + 0.12, cy - fh * 0.9],
            [-len - 0.1, cy - fh * 0.9],
            [-len - 0.14, cy - fh - fin],
            [-len - 0.04, cy - fh - fin],
        ]),
    );
    b.add(
        "tail",
        Prim::bar(-len - 0.12, cy, -len + 0.05, cy + 0.01, 0.02),
    );
    b.add(
        "wing",
        Prim::poly(&[
            [root + 0.15, cy + fh * 0.3],
            [root - 0.08, cy + fh * 0.3],
            [root - 0.08 - sweep, cy + span],
            [root - sweep + 0.02, cy + span],
        ]),
    );
    let n = rng.random_range(1..3);
    for k in 0..n {
        let t = (k as f32 + 1.0) / (n as f32 + 1.0);
        let ex = root - 0.03 - sweep * t + 0.06;
        let ey = cy + fh * 0.3 + span * t + 0.035;
        b.add(
            "engine",
            Prim::ellipse(ex, ey, r(rng, 0.06, 0.09), r(rng, 0.025, 0.035)),
        );
    }
    b.add("head", Prim::ellipse(len * 0.7, cy, r(rng, 0.1, 0.18), fh));
    b.add_alt(
        "body",
        Prim::span(-len * 0.6, cy - fh * 0.45, len * 0.5, cy - fh * 0.25),
    );
}

// ---------------------------------------------------------------- vehicles

fn wheels(b: &mut Builder, rng: &mut ChaCha8Rng, xs: &[f32], radius: f32) {
    b.style("wheel", Style::Dark);
    let hub = r(rng, 0.35, 0.6);
    for &x in xs {
        b.add("wheel", Prim::ellipse(x, 0.5 - radius, radius, radius));
        b.add_alt(
            "wheel",
            Prim::ellipse(x, 0.5 - radius, radius * hub, radius * hub),
        );
    }
}

fn lights_and_bumpers(b: &mut Builder, rng: &mut ChaCha8Rng, len: f32, y: f32, taillight: bool) {
    b.style("headlight", Style::Light);
    b.style(
        "bumper",
        if rng.random_bool(0.5) {
            Style::Metal
        } else {
            Style::Dark
        },
    );
    b.add(
        "headlight",
        Prim::ellipse(len - 0.02, y, 0.03, r(rng, 0.02, 0.035)),
    );
    if taillight {
        b.add(
            "taillight",
            Prim::span(-len - 0.005, y - 0.03, -len + 0.025, y + 0.02),
        );
    }
    let bh = r(rng, 0.02, 0.035);
    let by = y + r(rng, 0.06, 0.1);
    b.add(
        "bumper",
        Prim::span(len - 0.03, by - bh, len + 0.03, by + bh),
    );
    b.add(
        "bumper",
        Prim::span(-len - 0.03, by - bh, -len + 0.03, by + bh),
    );
}

fn car_or_van(b: &mut Builder, rng: &mut ChaCha8Rng, van: bool) {
    let len = r(rng, 0.75, 0.95);
    let wr = r(rng, 0.12, 0.17);
    let sill = 0.5 - wr * 0.9;
    let belt = sill - r(rng, 0.18, 0.26);
    b.style("window", Style::Glass);
    b.style("mirror", Style::Any);
    if van {
        let roof = belt - r(rng, 0.25, 0.33);
        let nose = len - r(rng, 0.2, 0.35);
        b.add(
            "body",
            Prim::poly(&[
                [-len, roof],
                [nose, roof],
                [len, belt - 0.02],
                [len, sill],
                [-len, sill],
            ]),
        );
        // Windows along the side, the front one sloped.
        let n = rng.random_range(2..4);
        let ww = (nose + len * 0.85) / n as f32;
        for k in 0..n - 1 {
            let x0 = -len * 0.85 + k as f32 * ww;
            b.add(
                "window",
                Prim::span(x0 + 0.02, roof + 0.04, x0 + ww - 0.02, belt - 0.02),
            );
        }
        let x0 = -len * 0.85 + (n - 1) as f32 * ww;
        b.add(
            "window",
            Prim::poly(&[
                [x0 + 0.02, roof + 0.04],
                [nose, roof + 0.04],
                [len - 0.06, belt - 0.02],
                [x0 + 0.02, belt - 0.02],
            ]),
        );
        let dx = r(rng, -0.35, -0.05);
        b.add(
            "door",
            Prim::span(dx - 0.2, belt + 0.01, dx + 0.2, sill - 0.02),
        );
        b.add(
            "mirror",
            Prim::ellipse(nose + 0.04, belt + 0.01, 0.035, 0.025),
        );
    } else {
        let roof = belt - r(rng, 0.16, 0.24);
        let c0 = -len * r(rng, 0.55, 0.75);
        let c1 = len * r(rng, 0.2, 0.4);
        b.add("body", Prim::span(-len, belt, len, sill));
        b.add(
            "body",
            Prim::poly(&[
                [c0 - 0.08, belt + 0.001],
                [c0 + 0.06, roof],
                [c1 - 0.08, roof],
                [c1 + 0.08, belt + 0.001],
            ]),
        );
        b.style("hood", Style::Any);
        b.add(
            "hood",
            Prim::span(c1 + 0.08, belt, len, belt + r(rng, 0.03, 0.06)),
        );
        let mid = (c0 + c1) / 2.0;
        b.add(
            "window",
            Prim::poly(&[
                [c0 - 0.02, belt - 0.015],
                [c0 + 0.08, roof + 0.03],
                [mid - 0.02, roof + 0.03],
                [mid - 0.02, belt - 0.015],
            ]),
        );
        b.add(
            "window",
            Prim::poly(&[
                [mid + 0.02, belt - 0.015],
                [mid + 0.02, roof + 0.03],
                [c1 - 0.09, roof + 0.03],
                [c1 + 0.03, belt - 0.015],
            ]),
        );
        b.add(
            "door",
            Prim::span(mid - 0.02, belt + 0.015, c1 + 0.06, sill - 0.03),
        );
        b.add_alt(
            "door",
            Prim::span(c1 - 0.02, belt + 0.04, c1 + 0.03, belt + 0.055),
        );
        b.add(
            "mirror",
            Prim::poly(&[
                [c1 + 0.05, belt - 0.01],
                [c1 + 0.12, belt - 0.04],
                [c1 + 0.13, belt + 0.005],
            ]),
        );
    }
    lights_and_bumpers(b, rng, len, belt + 0.04, van);
    wheels(b, rng, &[-len * 0.62, len * 0.62], wr);
}

fn bus(b: &mut Builder, rng: &mut ChaCha8Rng) {
    let len = r(rng, 0.9, 1.15);
    let wr = r(rng, 0.1, 0.14);
    let sill = 0.5 - wr * 0.9;
    let roof = -0.5 + r(rng, 0.0, 0.1);
    let belt = roof + r(rng, 0.3, 0.38) * (sill - roof);
    b.style("window", Style::Glass);
    b.style("wiper", Style::Dark);
    b.add("body", Prim::span(-len, roof, len, sill));
    let door_x = len * r(rng, 0.55, 0.7);
    let n = rng.random_range(3..7);
    let ww = (door_x - 0.12 + len * 0.92) / n as f32;
    for k in 0..n {
        let x0 = -len * 0.92 + k as f32 * ww;
        b.add(
            "window",
            Prim::span(x0 + 0.015, roof + 0.05, x0 + ww - 0.015, belt),
        );
    }
    b.add(
        "door",
        Prim::span(door_x - 0.11, roof + 0.05, door_x + 0.04, sill - 0.02),
    );
    b.add(
        "window",
        Prim::span(door_x + 0.07, roof + 0.05, len - 0.02, belt + 0.05),
    );
    b.add(
        "wiper",
        Prim::bar(len - 0.12, belt + 0.04, len - 0.05, belt - 0.04, 0.008),
    );
    lights_and_bumpers(b, rng, len, sill - 0.08, false);
    wheels(b, rng, &[-len * 0.65, len * 0.6], wr);
}

fn truck(b: &mut Builder, rng: &mut ChaCha8Rng) {
    let len = r(rng, 0.85, 1.05);
    let wr = r(rng, 0.11, 0.15);
    let sill = 0.5 - wr * 0.9;
    let cab_x = len * r(rng, 0.2, 0.4);
    let cab_top = -0.5 + r(rng, 0.08, 0.2);
    let box_top = -0.5 + r(rng, 0.0, 0.12);
    b.style("window", Style::Glass);
    b.style("mirror", Style::Dark);
    b.add("body", Prim::span(-len, box_top, cab_x - 0.03, sill - 0.05));
    b.add("body", Prim::span(-len, sill - 0.07, len, sill));
    b.add(
        "body",
        Prim::poly(&[
            [cab_x, cab_top],
            [len - 0.1, cab_top],
            [len, cab_top + 0.15],
            [len, sill],
            [cab_x, sill],
        ]),
    );
    let belt = cab_top + r(rng, 0.15, 0.22);
    b.add(
        "window",
        Prim::poly(&[
            [cab_x + 0.05, cab_top + 0.04],
            [len - 0.12, cab_top + 0.04],
            [len - 0.04, belt],
            [cab_x + 0.05, belt],
        ]),
    );
    b.add(
        "door",
        Prim::span(cab_x + 0.05, belt + 0.02, len - 0.12, sill - 0.03),
    );
    b.add(
        "mirror",
        Prim::span(len - 0.03, cab_top + 0.06, len + 0.02, belt),
    );
    lights_and_bumpers(b, rng, len, sill - 0.06, false);
    let xs: Vec<f32> = if rng.random_bool(0.5) {
        vec![-len * 0.7, len * 0.65]
    } else {
        vec![-len * 0.75, -len * 0.45, len * 0.65]
    };
    wheels(b, rng, &xs, wr);
}

fn bicycle(b: &mut Builder, rng: &mut ChaCha8Rng) {
    let wr = r(rng, 0.24, 0.3);
    let hub_y = 0.5 - wr;
    let (rx, fx) = (-r(rng, 0.48, 0.58), r(rng, 0.48, 0.58));
    b.style("wheel", Style::Dark);
    b.style("seat", Style::Dark);
    b.style("handlebar", Style::Metal);
    for x in [rx, fx] {
        b.add("wheel", Prim::ring(x, hub_y, wr, wr, r(rng, 0.82, 0.9)));
        b.add_alt("wheel", Prim::ellipse(x, hub_y, 0.025, 0.025));
    }
    let t = r(rng, 0.014, 0.022);
    let bb = (r(rng, -0.1, 0.0), hub_y + 0.02);
    let seat_top = (bb.0 - r(rng, 0.08, 0.14), hub_y - r(rng, 0.4, 0.5));
    let head = (fx - r(rng, 0.12, 0.18), hub_y - r(rng, 0.3, 0.4));
    b.add(
        "seat tube",
        Prim::bar(bb.0, bb.1, seat_top.0, seat_top.1, t),
    );
    b.add(
        "down tube",
        Prim::bar(bb.0, bb.1, head.0, head.1 + 0.05, t * 1.2),
    );
    b.add("down tube", Prim::bar(head.0, head.1, fx, hub_y, t * 0.8));
    b.add(
        "top tube",
        Prim::bar(seat_top.0 + 0.01, seat_top.1 + 0.05, head.0, head.1, t),
    );
    b.add("top tube", Prim::bar(bb.0, bb.1, rx, hub_y, t * 0.7));
    b.add(
        "seat",
        Prim::ellipse(seat_top.0, seat_top.1 - 0.02, r(rng, 0.06, 0.09), 0.022),
    );
    let bar_y = head.1 - r(rng, 0.06, 0.12);
    b.add(
        "handlebar",
        Prim::bar(head.0, head.1, head.0 - 0.01, bar_y, t),
    );
    b.add(
        "handlebar",
        Prim::bar(head.0 - 0.06, bar_y, head.0 + 0.05, bar_y - 0.01, t * 0.9),
    );
}

fn minibike(b: &mut Builder, rng: &mut ChaCha8Rng) {
    let wr = r(rng, 0.16, 0.22);
    let hub_y = 0.5 - wr;
    let (rx, fx) = (-r(rng, 0.45, 0.55), r(rng, 0.45, 0.55));
    b.style("seat", Style::Dark);
    b.style("license plate", Style::Light);
    b.style("mirror", Style::Metal);
    let top = hub_y - r(rng, 0.25, 0.33);
    b.add(
        "body",
        Prim::poly(&[
            [rx + 0.1, hub_y - 0.05],
            [rx + 0.05, top + 0.06],
            [fx - 0.2, top],
            [fx - 0.08, hub_y - 0.12],
            [0.05, hub_y + 0.05],
        ]),
    );
    b.add("body", Prim::bar(fx - 0.15, top - 0.05, fx, hub_y, 0.025));
    for x in [rx, fx] {
        b.add("wheel", Prim::ellipse(x, hub_y, wr, wr));
        b.add_alt("wheel", Prim::ellipse(x, hub_y, wr * 0.45, wr * 0.45));
    }
    b.add("seat", Prim::span(rx + 0.05, top, -0.02, top + 0.05));
    b.add(
        "license plate",
        Prim::span(rx - 0.06, top + 0.04, rx + 0.02, top + 0.1),
    );
    b.add(
        "mirror",
        Prim::bar(fx - 0.15, top - 0.05, fx - 0.12, top - 0.16, 0.008),
    );
    b.add("mirror", Prim::ellipse(fx - 0.12, top - 0.17, 0.035, 0.022));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::synth::classes::class_table;
    use rand::SeedableRng;

    #[test]
    fn every_class_draws_every_part_inside_a_sane_frame() {
        let mut rng = ChaCha8Rng::seed_from_u64(11);
        for class in class_table() {
            for _ in 0..50 {
                let m = build(class, &mut rng);
                let mut drawn = vec![false; class.parts.len()];
                for (p, prim, _) in &m.prims {
                    drawn[*p] = true;
                    assert!(prim.hx > 0.0 && prim.hy > 0.0, "{}: {prim:?}", class.name);
                    assert!(
                        prim.cx.abs() < 1.3 && prim.cy.abs() < 0.8,
                        "{}: {prim:?}",
                        class.name
                    );
                }
                for (k, d) in drawn.iter().enumerate() {
                    assert!(d, "{} never draws {}", class.name, class.parts[k]);
                }
            }
        }
    }
}
