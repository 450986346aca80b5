//! Overlays: an image with each mask alpha-blended in its label's colour
//! and outlined, above a legend strip listing colour swatch + label.
//!
//! Colours come from [`ColourMap`], built once per answer from all its
//! labels, so a label (a common part) has the same colour on every image.

use calico_masks::Mask;
use image::{Rgb, RgbImage};
use serde::{Deserialize, Serialize};

use crate::error::{AppError, Result};
use crate::font;

/// Distinct colours, assigned to labels in order of first appearance (and
/// reused cyclically past the end).
pub const PALETTE: [[u8; 3]; 16] = [
    [230, 25, 75],   // red
    [60, 180, 75],   // green
    [0, 130, 200],   // blue
    [245, 130, 48],  // orange
    [145, 30, 180],  // purple
    [70, 240, 240],  // cyan
    [240, 50, 230],  // magenta
    [210, 245, 60],  // lime
    [250, 190, 212], // pink
    [0, 128, 128],   // teal
    [220, 190, 255], // lavender
    [170, 110, 40],  // brown
    [255, 225, 25],  // yellow
    [128, 0, 0],     // maroon
    [170, 255, 195], // mint
    [0, 0, 128],     // navy
];

/// Label used for masks whose `[SEG]` had no `<p>` phrase.
pub const UNLABELLED: &str = "(unlabelled)";

/// The key a label is coloured by: trimmed, inner whitespace collapsed,
/// lower case; empty labels become [`UNLABELLED`].
pub fn label_key(label: &str) -> String {
    let k = label
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .to_lowercase();
    if k.is_empty() {
        UNLABELLED.to_string()
    } else {
        k
    }
}

/// `#rrggbb`.
pub fn hex(c: [u8; 3]) -> String {
    format!("#{:02x}{:02x}{:02x}", c[0], c[1], c[2])
}

/// One legend entry: a label and its colour.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LegendEntry {
    pub label: String,
    /// `#rrggbb`.
    pub colour: String,
    #[serde(skip)]
    pub rgb: [u8; 3],
}

/// Label → colour for one answer: the same label always gets the same
/// colour, different labels different colours (up to the palette's size).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ColourMap {
    entries: Vec<(String, [u8; 3])>,
}

impl ColourMap {
    /// Colours `labels` by first appearance (labels are compared by
    /// [`label_key`]; the first spelling is kept for display).
    pub fn from_labels<'a>(labels: impl IntoIterator<Item = &'a str>) -> Self {
        let mut m = ColourMap::default();
        for l in labels {
            m.insert(l);
        }
        m
    }

    /// Adds `label` if it is new; returns its colour.
    pub fn insert(&mut self, label: &str) -> [u8; 3] {
        let key = label_key(label);
        if let Some(c) = self.get(&key) {
            return c;
        }
        let c = PALETTE[self.entries.len() % PALETTE.len()];
        self.entries.push((key, c));
        c
    }

    /// The colour of `label`, if it is in the map.
    pub fn get(&self, label: &str) -> Option<[u8; 3]> {
        let key = label_key(label);
        self.entries
            .iter()
            .find(|(k, _)| *k == key)
            .map(|(_, c)| *c)
    }

    /// The colour of `label` (grey for labels not in the map).
    pub fn colour(&self, label: &str) -> [u8; 3] {
        self.get(label).unwrap_or([128, 128, 128])
    }

    /// `(label key, colour)` in order of first appearance.
    pub fn entries(&self) -> &[(String, [u8; 3])] {
        &self.entries
    }

    /// The whole map as legend entries.
    pub fn legend(&self) -> Vec<LegendEntry> {
        self.entries
            .iter()
            .map(|(l, c)| LegendEntry {
                label: l.clone(),
                colour: hex(*c),
                rgb: *c,
            })
            .collect()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// How overlays are drawn.
#[derive(Debug, Clone)]
pub struct OverlayStyle {
    /// Opacity of the mask colour over the image (0..=1).
    pub alpha: f32,
    /// The overlay is at least this wide (small images get a readable
    /// legend; the image sits at the left over a white background).
    pub min_width: u32,
    /// Draw each mask's outline in its full colour.
    pub outline: bool,
}

impl Default for OverlayStyle {
    fn default() -> Self {
        OverlayStyle {
            alpha: 0.45,
            min_width: 240,
            outline: true,
        }
    }
}

const BACKGROUND: [u8; 3] = [255, 255, 255];
const TEXT: [u8; 3] = [20, 20, 20];

/// Font scale for an overlay of width `w`.
fn scale_for(w: u32) -> u32 {
    (w / 320).clamp(1, 4)
}

/// Legend line height and padding at `scale`.
fn line_height(scale: u32) -> u32 {
    font::text_height(scale) + 6 * scale
}

/// The labels of `masks` in order of first appearance, by [`label_key`].
pub fn legend_labels(masks: &[(&str, &Mask)]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for (l, _) in masks {
        let k = label_key(l);
        if !out.contains(&k) {
            out.push(k);
        }
    }
    out
}

/// Height of the legend strip under an overlay of width `w` with `n`
/// legend lines (one line saying "no masks" when `n` is 0).
pub fn legend_height(w: u32, n: usize) -> u32 {
    let s = scale_for(w);
    line_height(s) * n.max(1) as u32 + 4 * s
}

/// Renders `image` with `masks` (`(label, mask)`, each mask the image's
/// size) blended in `colours`' colours, outlined, and a legend strip below
/// with one line per distinct label of these masks.
pub fn render(
    image: &RgbImage,
    masks: &[(&str, &Mask)],
    colours: &ColourMap,
    style: &OverlayStyle,
) -> Result<RgbImage> {
    let (iw, ih) = image.dimensions();
    if iw == 0 || ih == 0 {
        return Err(AppError::Input(format!("image has zero size ({iw}x{ih})")));
    }
    for (label, m) in masks {
        if (m.width(), m.height()) != (iw, ih) {
            return Err(AppError::Model(format!(
                "mask `{label}` is {}x{} but the image is {iw}x{ih}",
                m.width(),
                m.height()
            )));
        }
    }
    let labels = legend_labels(masks);
    let w = iw.max(style.min_width);
    let h = ih + legend_height(w, labels.len());
    let mut out = RgbImage::from_pixel(w, h, Rgb(BACKGROUND));
    let a = style.alpha.clamp(0.0, 1.0);
    for (x, y, p) in image.enumerate_pixels() {
        out.put_pixel(x, y, *p);
    }
    for (label, m) in masks {
        let c = colours.colour(label);
        for y in 0..ih {
            for x in 0..iw {
                if !m.get(y, x) {
                    continue;
                }
                let p = out.get_pixel_mut(x, y);
                for (v, &ck) in p.0.iter_mut().zip(&c) {
                    *v = (f32::from(*v) * (1.0 - a) + f32::from(ck) * a).round() as u8;
                }
            }
        }
    }
    if style.outline {
        for (label, m) in masks {
            let c = colours.colour(label);
            for y in 0..ih {
                for x in 0..iw {
                    if m.get(y, x) && is_edge(m, x, y) {
                        out.put_pixel(x, y, Rgb(c));
                    }
                }
            }
        }
    }
    draw_legend(&mut out, ih, &labels, colours);
    Ok(out)
}

/// A mask pixel with a 4-neighbour outside the mask (or on the border).
fn is_edge(m: &Mask, x: u32, y: u32) -> bool {
    x == 0
        || y == 0
        || x + 1 == m.width()
        || y + 1 == m.height()
        || !m.get(y, x - 1)
        || !m.get(y, x + 1)
        || !m.get(y - 1, x)
        || !m.get(y + 1, x)
}

fn draw_legend(out: &mut RgbImage, top: u32, labels: &[String], colours: &ColourMap) {
    let w = out.width();
    let s = scale_for(w);
    let lh = line_height(s);
    let th = font::text_height(s);
    let pad = 4 * s;
    // A thin rule between the image and the legend.
    for x in 0..w {
        out.put_pixel(x, top, Rgb([200, 200, 200]));
    }
    if labels.is_empty() {
        font::draw_text(
            out,
            i64::from(pad),
            i64::from(top + pad + 3 * s),
            &font::fit_text("no masks", w.saturating_sub(2 * pad), s),
            s,
            [110, 110, 110],
        );
        return;
    }
    for (i, label) in labels.iter().enumerate() {
        let y0 = top + pad + i as u32 * lh;
        let c = colours.colour(label);
        let sw = th + 2 * s;
        for y in y0 + 2 * s..(y0 + 2 * s + sw).min(out.height()) {
            for x in pad..(pad + sw).min(w) {
                let border =
                    y == y0 + 2 * s || y + 1 == y0 + 2 * s + sw || x == pad || x + 1 == pad + sw;
                out.put_pixel(x, y, Rgb(if border { TEXT } else { c }));
            }
        }
        let tx = pad + sw + 3 * s;
        let text = font::fit_text(label, w.saturating_sub(tx + pad), s);
        font::draw_text(out, i64::from(tx), i64::from(y0 + 3 * s), &text, s, TEXT);
    }
}

/// PNG bytes of an RGB image.
pub fn png_bytes(img: &RgbImage) -> Result<Vec<u8>> {
    let mut buf = std::io::Cursor::new(Vec::new());
    img.write_to(&mut buf, image::ImageFormat::Png)
        .map_err(|e| AppError::Output(format!("encoding a PNG: {e}")))?;
    Ok(buf.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn square(w: u32, h: u32, x0: u32, x1: u32) -> Mask {
        Mask::from_fn(h, w, |y, x| {
            (x0..x1).contains(&x) && (4..h - 4).contains(&y)
        })
    }

    #[test]
    fn same_label_same_colour_distinct_labels_distinct_colours() {
        let m = ColourMap::from_labels(["the lid", "the handle", "The  lid ", "", "the base"]);
        assert_eq!(m.len(), 4);
        assert_eq!(m.colour("the lid"), m.colour(" THE LID"));
        assert_eq!(m.colour(""), m.colour(UNLABELLED));
        let cs: Vec<_> = m.entries().iter().map(|(_, c)| *c).collect();
        let mut d = cs.clone();
        d.sort();
        d.dedup();
        assert_eq!(d.len(), cs.len());
        assert_eq!(m.colour("unknown"), [128, 128, 128]);
        // The palette itself has ≥ 12 distinct colours.
        let mut p = PALETTE.to_vec();
        p.sort();
        p.dedup();
        assert!(p.len() >= 12);
        assert_eq!(m.legend()[0].colour, hex(PALETTE[0]));
    }

    #[test]
    fn common_part_has_one_colour_on_every_image() {
        let colours = ColourMap::from_labels(["lid", "handle", "lid"]);
        let img = RgbImage::from_pixel(300, 40, Rgb([0, 0, 0]));
        let lid0 = square(300, 40, 10, 50);
        let handle = square(300, 40, 100, 150);
        let lid1 = square(300, 40, 200, 260);
        let style = OverlayStyle {
            alpha: 1.0,
            outline: false,
            ..OverlayStyle::default()
        };
        let a = render(
            &img,
            &[("lid", &lid0), ("handle", &handle)],
            &colours,
            &style,
        )
        .unwrap();
        let b = render(&img, &[("lid", &lid1)], &colours, &style).unwrap();
        assert_eq!(a.get_pixel(20, 20).0, b.get_pixel(220, 20).0);
        assert_eq!(a.get_pixel(20, 20).0, PALETTE[0]);
        assert_eq!(a.get_pixel(120, 20).0, PALETTE[1]);
        assert_eq!(a.get_pixel(80, 20).0, [0, 0, 0]);
    }

    #[test]
    fn overlay_size_legend_and_outline() {
        let img = RgbImage::from_pixel(64, 48, Rgb([50, 50, 50]));
        let m = square(64, 48, 8, 40);
        let colours = ColourMap::from_labels(["box", "lid"]);
        let style = OverlayStyle::default();
        let out = render(&img, &[("box", &m), ("lid", &m)], &colours, &style).unwrap();
        // Small images are widened to min_width; the legend has two lines.
        assert_eq!(out.width(), 240);
        assert_eq!(out.height(), 48 + legend_height(240, 2));
        assert!(legend_height(240, 2) > legend_height(240, 1));
        // Inside: blended; the edge: the outline colour; outside: untouched.
        assert_ne!(out.get_pixel(20, 20).0, [50, 50, 50]);
        assert_eq!(out.get_pixel(8, 20).0, PALETTE[1]);
        assert_eq!(out.get_pixel(50, 20).0, [50, 50, 50]);
        // The legend strip holds both swatch colours and dark text.
        let legend: Vec<[u8; 3]> = (48..out.height())
            .flat_map(|y| (0..out.width()).map(move |x| (x, y)))
            .map(|(x, y)| out.get_pixel(x, y).0)
            .collect();
        assert!(legend.contains(&PALETTE[0]) && legend.contains(&PALETTE[1]));
        assert!(legend.iter().filter(|p| **p == TEXT).count() > 50);
        // No masks: a "no masks" line.
        let empty = render(&img, &[], &colours, &style).unwrap();
        assert_eq!(empty.height(), 48 + legend_height(240, 0));
        let png = png_bytes(&out).unwrap();
        assert_eq!(&png[1..4], b"PNG");
        let back = image::load_from_memory(&png).unwrap();
        assert_eq!((back.width(), back.height()), out.dimensions());
    }

    #[test]
    fn wrong_mask_size_is_an_error() {
        let img = RgbImage::new(10, 10);
        let m = Mask::zeros(5, 5);
        let c = ColourMap::from_labels(["x"]);
        assert!(render(&img, &[("x", &m)], &c, &OverlayStyle::default()).is_err());
    }
}
