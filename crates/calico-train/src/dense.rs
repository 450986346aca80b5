//! Dense targets for stage 1: which object class and which part lies under
//! each patch token of the EVA and DINOv2 views.
//!
//! An image-level label says only that a chair is somewhere in the image;
//! a patch-level label says which of the 64 tokens show its seat. Trained
//! from scratch on a few thousand images, a ViT learns to recognise objects
//! much faster from the second (docs/tiny-recipe.md, "Dense stage 1"). The
//! labels come from the samples' own masks: every object mask (role
//! `object`) and part mask (roles `common_part`, `unique_part`) of an image,
//! over all samples that show it, each distinct mask decoded once.
//!
//! A patch's target is a distribution: `s × s` points spread over the patch
//! are mapped back to the original image through the view's geometry
//! (resize, or resize + centre crop), and each point votes for the class of
//! the mask that covers it, or for "none" (the last class). Points outside
//! the image (crop padding) vote "none".

use std::collections::{BTreeSet, HashMap, HashSet};

use calico_data::samples::MaskRole;
use calico_masks::{CocoRle, Mask};
use calico_model::config::CalicoConfig;
use calico_model::preprocess::{crop_start, View};

use crate::data::Dataset;
use crate::TrainError;

type Result<T> = std::result::Result<T, TrainError>;

/// Points per patch side voting for its target.
const POINTS: usize = 4;

/// Where a view's pixels come from in the original image.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ViewGeometry {
    /// The whole image resized to `(h, w)` (EVA/CLIP view).
    Resize { h: usize, w: usize },
    /// Shortest edge resized, then a centre crop `(h, w)` (DINOv2 view).
    ResizeCrop {
        shortest_edge: usize,
        h: usize,
        w: usize,
    },
    /// Longest side resized to `target`, padded bottom and right to a
    /// `target` square (SAM view).
    ResizeLongest { target: usize },
}

impl ViewGeometry {
    /// The view size `(h, w)`.
    pub fn size(&self) -> (usize, usize) {
        match *self {
            ViewGeometry::Resize { h, w } | ViewGeometry::ResizeCrop { h, w, .. } => (h, w),
            ViewGeometry::ResizeLongest { target } => (target, target),
        }
    }

    /// How an `(oh, ow)` image sits in the view.
    pub fn placement(&self, (oh, ow): (usize, usize)) -> Placement {
        let (top, left, resized) = match *self {
            ViewGeometry::Resize { h, w } => (0.0, 0.0, (h, w)),
            ViewGeometry::ResizeCrop {
                shortest_edge,
                h,
                w,
            } => {
                let (rh, rw) =
                    calico_model::preprocess::DinoView::new(shortest_edge, h).resized_size(oh, ow);
                (crop_start(rh, h) as f64, crop_start(rw, w) as f64, (rh, rw))
            }
            ViewGeometry::ResizeLongest { target } => (
                0.0,
                0.0,
                calico_model::preprocess::SamView::new(target).resized_size(oh, ow),
            ),
        };
        // A mirror reflects the whole view, or for SAM the image inside its
        // padding (the padding stays put, see `pretrain::flipped`).
        let mirror_width = match *self {
            ViewGeometry::ResizeLongest { .. } => resized.1,
            _ => self.size().1,
        };
        Placement {
            top,
            left,
            resized,
            original: (oh, ow),
            mirror_width,
        }
    }
}

/// An image's place in a view: where the view's window starts in the
/// resized image (a centre crop's start; 0 otherwise), the resized and the
/// original size, and the width a left–right mirror of the view reflects.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Placement {
    pub top: f64,
    pub left: f64,
    pub resized: (usize, usize),
    pub original: (usize, usize),
    pub mirror_width: usize,
}

impl Placement {
    /// The original pixel `(y, x)` shown at view point `(vy, vx)`, or
    /// `None` in padding.
    pub fn to_original(&self, vy: f64, vx: f64) -> Option<(u32, u32)> {
        let (ry, rx) = (vy + self.top, vx + self.left);
        let ((rh, rw), (oh, ow)) = (self.resized, self.original);
        if ry < 0.0 || rx < 0.0 || ry >= rh as f64 || rx >= rw as f64 {
            return None;
        }
        let oy = ((ry * oh as f64 / rh as f64) as usize).min(oh - 1);
        let ox = ((rx * ow as f64 / rw as f64) as usize).min(ow - 1);
        Some((oy as u32, ox as u32))
    }
}

/// The encoders whose patch tokens get dense targets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoder {
    Eva,
    Dino,
    Sam,
}

/// A view's geometry and patch size (the side of a token's cell in view
/// pixels), from the model config.
pub fn view_geometry(cfg: &CalicoConfig, encoder: Encoder) -> Result<(ViewGeometry, usize)> {
    let bad = |what: &str| TrainError::Config(format!("dense stage 1: {what}"));
    if encoder == Encoder::Sam {
        let enc = &cfg.sam_encoder;
        return match &cfg.views.sam {
            View::Sam(v) if v.target == enc.img_size => Ok((
                ViewGeometry::ResizeLongest { target: v.target },
                enc.patch_size,
            )),
            _ => Err(bad(
                "views.sam must be a SAM view whose target is sam_encoder.img_size",
            )),
        };
    }
    if encoder == Encoder::Dino {
        match &cfg.views.dino {
            View::Dino(v) => Ok((
                ViewGeometry::ResizeCrop {
                    shortest_edge: v.shortest_edge,
                    h: v.crop[0],
                    w: v.crop[1],
                },
                cfg.dinov2.patch_size,
            )),
            _ => Err(bad(
                "views.dino must be a DINOv2 view (resize + centre crop)",
            )),
        }
    } else {
        match &cfg.views.clip {
            View::Clip(v) => Ok((
                ViewGeometry::Resize {
                    h: v.size[0],
                    w: v.size[1],
                },
                cfg.eva_vit.patch_size,
            )),
            _ => Err(bad("views.clip must be a CLIP view (resize)")),
        }
    }
}

/// One image's dense targets on one view's patch grid: row-major patches,
/// each a distribution over `classes + 1` (the last is "none").
#[derive(Debug, Clone, PartialEq)]
pub struct Grid {
    pub h: usize,
    pub w: usize,
    pub objects: Vec<f32>,
    pub parts: Vec<f32>,
}

/// Dense targets of a list of images on the views of some encoders.
#[derive(Debug, Clone)]
pub struct DenseLabels {
    /// Object classes (the image-level classes); index `objects.len()` is "none".
    pub objects: Vec<String>,
    /// Part names, sorted; index `parts.len()` is "none".
    pub parts: Vec<String>,
    /// Per encoder: per image, its grid on the view as is and mirrored.
    pub grids: Vec<(Encoder, Vec<[Grid; 2]>)>,
}

impl DenseLabels {
    /// An encoder's grids, if they were built.
    pub fn of(&self, encoder: Encoder) -> Option<&[[Grid; 2]]> {
        self.grids
            .iter()
            .find(|(e, _)| *e == encoder)
            .map(|(_, g)| g.as_slice())
    }
}

/// An image's distinct masks, decoded: `(is_part, class, mask)`.
type Painted = Vec<(bool, usize, Mask)>;

/// The part names of `ds`'s masks, sorted.
pub fn part_names(ds: &Dataset) -> Vec<String> {
    ds.samples
        .iter()
        .flat_map(|s| &s.masks)
        .filter(|m| is_part(m.role))
        .map(|m| m.label.clone())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect()
}

/// Builds the dense targets of `files` (as the samples name them) with
/// object classes `objects` and parts `parts` (sorted), from every mask of
/// `ds`; masks of other classes are left out.
pub fn dense_labels(
    ds: &Dataset,
    files: &[String],
    (objects, parts): (&[String], &[String]),
    cfg: &CalicoConfig,
    encoders: &[Encoder],
) -> Result<DenseLabels> {
    let index: HashMap<&str, usize> = files
        .iter()
        .enumerate()
        .map(|(i, f)| (f.as_str(), i))
        .collect();
    let mut painted: Vec<Painted> = vec![Vec::new(); files.len()];
    let mut sizes: Vec<Option<(usize, usize)>> = vec![None; files.len()];
    let mut seen: HashSet<(usize, bool, usize, &CocoRle)> = HashSet::new();
    for s in &ds.samples {
        for (k, m) in s.masks.iter().enumerate() {
            let Some(img) = s.images.get(m.image) else {
                continue;
            };
            let Some(&fi) = index.get(img.file.as_str()) else {
                continue;
            };
            let part = is_part(m.role);
            let class = if part {
                parts.binary_search(&m.label).ok()
            } else if m.role == Some(MaskRole::Object) {
                objects.iter().position(|c| *c == m.label)
            } else {
                None
            };
            let Some(class) = class else {
                continue;
            };
            if !seen.insert((fi, part, class, &m.rle)) {
                continue;
            }
            let mask = m.rle.to_rle().and_then(|r| r.decode()).map_err(|e| {
                TrainError::Data(format!(
                    "{}: sample {}: mask {k}: {e}",
                    ds.path().display(),
                    s.id
                ))
            })?;
            sizes[fi].get_or_insert((mask.height() as usize, mask.width() as usize));
            painted[fi].push((part, class, mask));
        }
    }
    let mut grids = Vec::new();
    for &e in encoders {
        let (geom, patch) = view_geometry(cfg, e)?;
        let per_image = (0..files.len())
            .map(|i| {
                let size = sizes[i].unwrap_or((1, 1));
                let g = |flip| {
                    grid(
                        &painted[i],
                        size,
                        geom,
                        patch,
                        flip,
                        (objects.len(), parts.len()),
                    )
                };
                [g(false), g(true)]
            })
            .collect();
        grids.push((e, per_image));
    }
    Ok(DenseLabels {
        objects: objects.to_vec(),
        parts: parts.to_vec(),
        grids,
    })
}

fn is_part(role: Option<MaskRole>) -> bool {
    matches!(
        role,
        Some(MaskRole::CommonPart) | Some(MaskRole::UniquePart)
    )
}

/// One image's targets on a view's patch grid; `flip` for the view
/// mirrored left–right.
fn grid(
    painted: &Painted,
    original: (usize, usize),
    geom: ViewGeometry,
    patch: usize,
    flip: bool,
    (n_objects, n_parts): (usize, usize),
) -> Grid {
    let (vh, vw) = geom.size();
    let place = geom.placement(original);
    let mirror = place.mirror_width as f64;
    let (gh, gw) = (vh / patch, vw / patch);
    let (ko, kp) = (n_objects + 1, n_parts + 1);
    let mut objects = vec![0f32; gh * gw * ko];
    let mut parts = vec![0f32; gh * gw * kp];
    let vote = 1.0 / (POINTS * POINTS) as f32;
    for gy in 0..gh {
        for gx in 0..gw {
            let cell = gy * gw + gx;
            for py in 0..POINTS {
                for px in 0..POINTS {
                    let vy = (gy * patch) as f64 + (py as f64 + 0.5) * patch as f64 / POINTS as f64;
                    let mut vx =
                        (gx * patch) as f64 + (px as f64 + 0.5) * patch as f64 / POINTS as f64;
                    if flip && vx < mirror {
                        vx = mirror - vx;
                    }
                    let (mut o, mut p) = (n_objects, n_parts);
                    if let Some((y, x)) = place.to_original(vy, vx) {
                        for (is_part, class, m) in painted {
                            if y < m.height() && x < m.width() && m.get(y, x) {
                                if *is_part {
                                    p = *class;
                                } else {
                                    o = *class;
                                }
                            }
                        }
                    }
                    objects[cell * ko + o] += vote;
                    parts[cell * kp + p] += vote;
                }
            }
        }
    }
    Grid {
        h: gh,
        w: gw,
        objects,
        parts,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resize_maps_view_points_to_the_original() {
        let g = ViewGeometry::Resize { h: 8, w: 8 };
        assert_eq!(g.placement((16, 32)).to_original(0.5, 7.5), Some((1, 30)));
    }

    #[test]
    fn crop_skips_the_margins() {
        // 256x256 → 128x128, centre crop 112: the view starts 8 px in.
        let g = ViewGeometry::ResizeCrop {
            shortest_edge: 128,
            h: 112,
            w: 112,
        };
        assert_eq!(
            g.placement((256, 256)).to_original(0.0, 0.0),
            Some((16, 16))
        );
        // A crop larger than the image pads: its corner is outside.
        let g = ViewGeometry::ResizeCrop {
            shortest_edge: 8,
            h: 12,
            w: 12,
        };
        assert_eq!(g.placement((8, 8)).to_original(0.5, 0.5), None);
    }

    #[test]
    fn patches_vote_for_the_mask_under_them() {
        // A 4x4 image whose left half is object 0 with part 1 on top.
        let obj = Mask::from_fn(4, 4, |_, x| x < 2);
        let part = Mask::from_fn(4, 4, |y, x| x < 2 && y < 2);
        let painted = vec![(false, 0, obj), (true, 1, part)];
        let at = |flip| {
            grid(
                &painted,
                (4, 4),
                ViewGeometry::Resize { h: 4, w: 4 },
                2,
                flip,
                (1, 2),
            )
        };
        let g = at(false);
        assert_eq!((g.h, g.w), (2, 2));
        // Objects: [obj, none] per cell; left cells object, right none.
        assert_eq!(g.objects, [1.0, 0.0, 0.0, 1.0, 1.0, 0.0, 0.0, 1.0]);
        // Parts: 3 classes; top-left is part 1, others none.
        assert_eq!(&g.parts[0..3], &[0.0, 1.0, 0.0]);
        assert_eq!(&g.parts[6..9], &[0.0, 0.0, 1.0]);
        // Mirrored, the object is on the right.
        assert_eq!(at(true).objects, [0.0, 1.0, 1.0, 0.0, 0.0, 1.0, 1.0, 0.0]);
    }

    #[test]
    fn sam_view_mirrors_inside_its_padding() {
        // A 4x8 image in an 8x8 SAM view: rows 4.. are padding.
        let g = ViewGeometry::ResizeLongest { target: 8 };
        assert_eq!(g.placement((4, 8)).mirror_width, 8);
        assert_eq!(g.placement((4, 8)).to_original(5.0, 1.0), None);
        // An 8x4 image: columns 4.. are padding, the mirror spans 4.
        assert_eq!(g.placement((8, 4)).mirror_width, 4);
        let obj = Mask::from_fn(8, 4, |_, x| x == 0);
        let painted = vec![(false, 0, obj)];
        let m = grid(&painted, (8, 4), g, 2, true, (1, 0));
        // Cells of 2 px: mirrored, column 0 of the image lands in cell 1;
        // cells 2 and 3 are padding.
        let row: Vec<f32> = (0..4).map(|x| m.objects[x * 2]).collect();
        assert_eq!(row, [0.0, 0.5, 0.0, 0.0]);
    }
}
