//! Scene sampling and rendering: a background, 1–N posed objects and
//! unannotated distractor shapes, painted back to front into an RGB buffer
//! and a label buffer that records, per pixel, which object part is visible.

use super::classes::{class_table, SynthClass};
use super::geom::{scan, Affine, Kind, Pose, Prim};
use super::models::{build, Model};
use super::paint::{grain, Background, Paint, Style};
use rand::Rng;
use rand_chacha::ChaCha8Rng;

/// An object must keep at least this fraction of the image visible…
const MIN_OBJECT_FRACTION: f32 = 0.003;
/// …and at least this fraction of its own (in-image) area.
const MIN_VISIBLE_RATIO: f32 = 0.35;
/// Scenes are re-sampled this many times before failing objects are dropped.
const ATTEMPTS: usize = 8;

/// One posed object instance.
#[derive(Clone, Debug)]
pub(crate) struct SceneObject {
    pub class: usize,
    pub model: Model,
    pub pose: Pose,
    /// Two paints per part: the main one and one for details (hubs, knobs).
    pub paints: Vec<[Paint; 2]>,
}

/// An unannotated shape in image coordinates.
#[derive(Clone, Debug)]
struct Distractor {
    prim: Prim,
    paint: Paint,
    /// Drawn after this many objects (0: behind every object).
    after: usize,
}

/// Everything needed to paint one image.
#[derive(Clone, Debug)]
pub(crate) struct Scene {
    background: Background,
    pub objects: Vec<SceneObject>,
    distractors: Vec<Distractor>,
    grain_seed: u32,
}

/// What a rendered scene holds.
#[derive(Clone, Debug)]
pub(crate) struct Rendered {
    pub width: u32,
    pub height: u32,
    /// Row-major RGB, when painted.
    pub rgb: Option<Vec<u8>>,
    /// Row-major slot per pixel: 0 = no object, else `1 + slot`.
    pub labels: Vec<u16>,
    /// Object index of each label value (index 0 unused).
    pub label_object: Vec<u16>,
    /// Part index (into the class's parts) of each label value.
    pub label_part: Vec<u16>,
    /// Per object: class index.
    pub classes: Vec<usize>,
    /// Per object: whether it is visible enough to be annotated.
    pub keep: Vec<bool>,
    /// Visible pixels per label value.
    pub label_area: Vec<u64>,
}

fn r(rng: &mut ChaCha8Rng, lo: f32, hi: f32) -> f32 {
    rng.random_range(lo..hi)
}

/// The object-frame bounding box of a model.
fn model_box(model: &Model) -> [f32; 4] {
    let mut b = [f32::MAX, f32::MAX, f32::MIN, f32::MIN];
    for (_, prim, _) in &model.prims {
        let m = prim.to_object();
        for (u, v) in [(-1.0, -1.0), (1.0, -1.0), (1.0, 1.0), (-1.0, 1.0)] {
            let (x, y) = m.apply(u, v);
            b = [b[0].min(x), b[1].min(y), b[2].max(x), b[3].max(y)];
        }
    }
    b
}

fn sample_object(
    rng: &mut ChaCha8Rng,
    class: usize,
    width: u32,
    height: u32,
    n: usize,
) -> SceneObject {
    let c: &SynthClass = &class_table()[class];
    let model = build(c, rng);
    let [x0, y0, x1, y1] = model_box(&model);
    let size = (x1 - x0).max(y1 - y0).max(1e-3);
    let short = width.min(height) as f32;
    let target = short * r(rng, 0.45, 0.85) / (n as f32).sqrt();
    let scale = target / size;
    let angle = if rng.random_bool(0.15) {
        r(rng, -0.8, 0.8)
    } else {
        r(rng, -0.25, 0.25)
    };
    let flip = rng.random_bool(0.5);
    let px = r(rng, 0.22, 0.78) * width as f32;
    let py = r(rng, 0.22, 0.78) * height as f32;
    // Put the box centre at (px, py).
    let mut pose = Pose {
        tx: 0.0,
        ty: 0.0,
        scale,
        angle,
        flip,
    };
    let (bx, by) = pose.to_image().apply((x0 + x1) / 2.0, (y0 + y1) / 2.0);
    pose.tx = px - bx;
    pose.ty = py - by;
    let paints = model
        .styles
        .iter()
        .map(|&s| {
            let detail = if rng.random_bool(0.5) {
                Style::Metal
            } else {
                Style::Any
            };
            [Paint::random(rng, s, 1.0), Paint::random(rng, detail, 1.0)]
        })
        .collect();
    SceneObject {
        class,
        model,
        pose,
        paints,
    }
}

fn sample_distractor(rng: &mut ChaCha8Rng, width: u32, height: u32, n: usize) -> Distractor {
    let short = width.min(height) as f32;
    let after = rng.random_range(0..=n);
    let size = short
        * if after == 0 {
            r(rng, 0.05, 0.2)
        } else {
            r(rng, 0.03, 0.1)
        };
    let cx = r(rng, 0.0, width as f32);
    let cy = r(rng, 0.0, height as f32);
    let aspect = r(rng, 0.3, 1.0);
    let base = match rng.random_range(0..4u32) {
        0 => Prim::rect(cx, cy, size, size * aspect),
        1 => Prim::ellipse(cx, cy, size, size * aspect),
        2 => Prim::ring(cx, cy, size, size * aspect, r(rng, 0.4, 0.8)),
        _ => Prim::poly(&[
            [cx - size, cy + size * aspect],
            [cx + size, cy + size * aspect * r(rng, -1.0, 1.0)],
            [cx + r(rng, -1.0, 1.0) * size, cy - size * aspect],
        ]),
    };
    Distractor {
        prim: base.rot(r(rng, 0.0, std::f32::consts::PI)),
        paint: Paint::random(rng, Style::Any, size),
        after,
    }
}

/// Samples a scene of `n` objects of classes drawn from `classes`.
pub(crate) fn sample(
    rng: &mut ChaCha8Rng,
    classes: &[usize],
    n: usize,
    width: u32,
    height: u32,
) -> Scene {
    let background = Background::random(rng, width, height);
    let objects = (0..n)
        .map(|_| {
            let class = classes[rng.random_range(0..classes.len())];
            sample_object(rng, class, width, height, n)
        })
        .collect();
    let k = rng.random_range(0..=4usize);
    let distractors = (0..k)
        .map(|_| sample_distractor(rng, width, height, n))
        .collect();
    Scene {
        background,
        objects,
        distractors,
        grain_seed: rng.random(),
    }
}

/// Samples scenes until every object is visible enough (or gives up after
/// a few tries and marks the failing objects as not annotated), and renders.
/// Draws and renders image `index` of `format`: the scene depends only on
/// the seed, the format and the index (never on the thread that draws it).
pub(crate) fn render_image(
    cfg: &super::SynthConfig,
    classes: &[usize],
    format: crate::SourceFormat,
    index: usize,
) -> Rendered {
    let mut rng = super::coco::image_rng(cfg.seed, format, index);
    let n = super::n_objects(&mut rng, cfg, format);
    sample_and_render(
        &mut rng,
        classes,
        n,
        cfg.width,
        cfg.height,
        !cfg.annotation_only,
    )
}

pub(crate) fn sample_and_render(
    rng: &mut ChaCha8Rng,
    classes: &[usize],
    n: usize,
    width: u32,
    height: u32,
    paint_rgb: bool,
) -> Rendered {
    let mut attempt = 0;
    loop {
        attempt += 1;
        let scene = sample(rng, classes, n, width, height);
        let out = render(&scene, width, height, paint_rgb);
        if attempt == ATTEMPTS || out.keep.iter().all(|&k| k) {
            return out;
        }
    }
}

/// Paints a scene. Labels (and so annotations) do not depend on `paint_rgb`.
pub(crate) fn render(scene: &Scene, width: u32, height: u32, paint_rgb: bool) -> Rendered {
    let (w, h) = (width as usize, height as usize);
    let mut rgb = paint_rgb.then(|| {
        let mut buf = vec![0u8; w * h * 3];
        scene
            .background
            .paint(&mut buf, width, height, scene.grain_seed);
        buf
    });
    let mut labels = vec![0u16; w * h];
    let mut label_object = vec![u16::MAX];
    let mut label_part = vec![u16::MAX];
    let mut first = Vec::with_capacity(scene.objects.len());
    for (o, obj) in scene.objects.iter().enumerate() {
        first.push(label_object.len() as u16);
        let parts = class_table()[obj.class].parts.len();
        for p in 0..parts {
            label_object.push(o as u16);
            label_part.push(p as u16);
        }
    }
    let mut full_area = vec![0u64; scene.objects.len()];
    let n = scene.objects.len();
    let seed = scene.grain_seed;
    for stage in 0..=n {
        for d in scene.distractors.iter().filter(|d| d.after == stage) {
            let m = d.prim.to_object();
            scan(width, height, &m, &d.prim.kind, |i, u, _| {
                labels[i] = 0;
                if let Some(rgb) = rgb.as_mut() {
                    let (x, y) = ((i % w) as f32, (i / w) as f32);
                    let c = d.paint.at(x, y, u, grain(i as u32, seed));
                    rgb[3 * i..3 * i + 3].copy_from_slice(&c);
                }
            });
        }
        if stage == n {
            break;
        }
        let obj = &scene.objects[stage];
        let to_image = obj.pose.to_image();
        let Some(to_object) = to_image.inverse() else {
            continue;
        };
        let me = stage as u16;
        for (part, prim, detail) in &obj.model.prims {
            let m: Affine = to_image.then_after(&prim.to_object());
            let label = first[stage] + *part as u16;
            let paint = &obj.paints[*part][*detail as usize];
            let area = &mut full_area[stage];
            let kind: &Kind = &prim.kind;
            scan(width, height, &m, kind, |i, u, _| {
                let old = labels[i];
                if old == 0 || label_object[old as usize] != me {
                    *area += 1;
                }
                labels[i] = label;
                if let Some(rgb) = rgb.as_mut() {
                    let (x, y) = to_object.apply((i % w) as f32 + 0.5, (i / w) as f32 + 0.5);
                    let c = paint.at(x, y, u, grain(i as u32, seed));
                    rgb[3 * i..3 * i + 3].copy_from_slice(&c);
                }
            });
        }
    }
    let mut label_area = vec![0u64; label_object.len()];
    for &l in &labels {
        label_area[l as usize] += 1;
    }
    let mut visible = vec![0u64; n];
    for (l, &a) in label_area.iter().enumerate().skip(1) {
        visible[label_object[l] as usize] += a;
    }
    let min_px = (MIN_OBJECT_FRACTION * (w * h) as f32).max(16.0) as u64;
    let keep = (0..n)
        .map(|o| {
            visible[o] >= min_px && visible[o] as f32 >= MIN_VISIBLE_RATIO * full_area[o] as f32
        })
        .collect();
    Rendered {
        width,
        height,
        rgb,
        labels,
        label_object,
        label_part,
        classes: scene.objects.iter().map(|o| o.class).collect(),
        keep,
        label_area,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn labels_do_not_depend_on_painting() {
        let all: Vec<usize> = (0..class_table().len()).collect();
        for seed in 0..20 {
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            let scene = sample(&mut rng, &all, 3, 96, 80);
            let a = render(&scene, 96, 80, false);
            let b = render(&scene, 96, 80, true);
            assert_eq!(a.labels, b.labels);
            assert_eq!(a.keep, b.keep);
            assert_eq!(b.rgb.as_ref().map(|v| v.len()), Some(96 * 80 * 3));
        }
    }

    #[test]
    fn most_scenes_keep_every_object() {
        let all: Vec<usize> = (0..class_table().len()).collect();
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        let mut kept = 0;
        let mut total = 0;
        for _ in 0..100 {
            let out = sample_and_render(&mut rng, &all, 3, 128, 128, false);
            kept += out.keep.iter().filter(|&&k| k).count();
            total += out.keep.len();
        }
        assert!(kept * 100 >= total * 95, "{kept} of {total} objects kept");
    }
}
