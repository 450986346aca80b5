//! Intersection over union on RLEs, without decoding (`maskUtils.iou`).

use crate::rle::Rle;
use rayon::prelude::*;

/// Bounding-box IoU as pycocotools' `bbIou` (boxes are `[x, y, w, h]`).
/// With `crowd`, the union is the detection's box area.
pub fn bbox_iou(dt: [f64; 4], gt: [f64; 4], crowd: bool) -> f64 {
    let w = (dt[2] + dt[0]).min(gt[2] + gt[0]) - dt[0].max(gt[0]);
    if w <= 0.0 {
        return 0.0;
    }
    let h = (dt[3] + dt[1]).min(gt[3] + gt[1]) - dt[1].max(gt[1]);
    if h <= 0.0 {
        return 0.0;
    }
    let i = w * h;
    let da = dt[2] * dt[3];
    let u = if crowd { da } else { da + gt[2] * gt[3] - i };
    i / u
}

/// An RLE prepared for repeated IoU queries: foreground intervals, area, box.
#[derive(Clone, Debug)]
pub struct IouRle {
    height: u32,
    width: u32,
    /// Half-open foreground intervals `[start, end)` in column-major pixel index.
    runs: Vec<(u64, u64)>,
    area: u64,
    bbox: [f64; 4],
}

impl IouRle {
    /// Prepares an RLE.
    pub fn new(rle: &Rle) -> Self {
        let mut runs = Vec::with_capacity(rle.counts.len() / 2);
        let mut pos = 0u64;
        for (j, &c) in rle.counts.iter().enumerate() {
            let end = pos + c as u64;
            if j % 2 == 1 && c > 0 {
                runs.push((pos, end));
            }
            pos = end;
        }
        IouRle {
            height: rle.height,
            width: rle.width,
            area: rle.area(),
            bbox: rle.to_bbox(),
            runs,
        }
    }

    /// Number of foreground pixels.
    pub fn area(&self) -> u64 {
        self.area
    }

    /// Number of foreground pixels shared with `other`.
    pub fn intersection(&self, other: &IouRle) -> u64 {
        let (a, b) = (&self.runs[..], &other.runs[..]);
        let (Some(a0), Some(b0), Some(a1), Some(b1)) = (a.first(), b.first(), a.last(), b.last())
        else {
            return 0;
        };
        // Only runs inside the span both masks cover can overlap.
        let lo = a0.0.max(b0.0);
        let hi = a1.1.min(b1.1);
        if lo >= hi {
            return 0;
        }
        let a = &a[a.partition_point(|r| r.1 <= lo)..a.partition_point(|r| r.0 < hi)];
        let b = &b[b.partition_point(|r| r.1 <= lo)..b.partition_point(|r| r.0 < hi)];
        let (mut i, mut j, mut total) = (0usize, 0usize, 0u64);
        while i < a.len() && j < b.len() {
            let (sa, ea) = a[i];
            let (sb, eb) = b[j];
            total += ea.min(eb).saturating_sub(sa.max(sb));
            // Advance whichever run ends first (branch-free).
            let step_a = (ea <= eb) as usize;
            i += step_a;
            j += 1 - step_a;
        }
        total
    }

    /// IoU with a ground-truth mask, exactly as pycocotools' `rleIou`:
    /// 0 when the boxes do not overlap, −1 when sizes differ, and with
    /// `crowd` the union is this (detection) mask's area.
    pub fn iou(&self, gt: &IouRle, crowd: bool) -> f64 {
        self.iou_by(gt, crowd, || self.intersection(gt))
    }

    /// [`IouRle::iou`] with the intersection counted by `intersection`.
    fn iou_by(&self, gt: &IouRle, crowd: bool, intersection: impl FnOnce() -> u64) -> f64 {
        if bbox_iou(self.bbox, gt.bbox, crowd) <= 0.0 {
            return 0.0;
        }
        if self.height != gt.height || self.width != gt.width {
            return -1.0;
        }
        let i = intersection();
        let u = if i == 0 {
            1
        } else if crowd {
            self.area
        } else {
            self.area + gt.area - i
        };
        i as f64 / u as f64
    }
}

/// IoU of every detection with every ground truth (`maskUtils.iou(dt, gt, iscrowd)`).
///
/// Returns a row-major `dt.len() × gt.len()` matrix (`out[d * gt.len() + g]`),
/// the layout of the numpy array pycocotools returns. `iscrowd` must have one
/// entry per ground truth; a shorter slice counts missing entries as `false`.
pub fn iou_matrix(dt: &[Rle], gt: &[Rle], iscrowd: &[bool]) -> Vec<f64> {
    let gt: Vec<IouRle> = gt.par_iter().map(IouRle::new).collect();
    let dt: Vec<IouRle> = dt.par_iter().map(IouRle::new).collect();
    iou_matrix_prepared(&dt, &gt, iscrowd)
}

/// One bit per pixel (column-major) over the words a mask's runs span:
/// a matrix of IoUs counts most intersections faster as `popcount(a & b)`
/// over the words both masks span than by merging their runs.
struct BitSpan {
    /// Index of the first 64-pixel word.
    first: usize,
    words: Vec<u64>,
}

impl BitSpan {
    /// The 64-pixel words `[first, end)` that `m`'s runs span (empty for
    /// an empty mask).
    fn words_of(m: &IouRle) -> (usize, usize) {
        match (m.runs.first(), m.runs.last()) {
            (Some(r0), Some(r1)) => ((r0.0 / 64) as usize, r1.1.div_ceil(64) as usize),
            _ => (0, 0),
        }
    }

    fn new(m: &IouRle) -> Self {
        let (first, end) = Self::words_of(m);
        let mut words = vec![0u64; end - first];
        for &(s, e) in &m.runs {
            let (s, e) = (s - first as u64 * 64, e - first as u64 * 64);
            let (ws, we) = ((s / 64) as usize, ((e - 1) / 64) as usize);
            let head = !0u64 << (s % 64);
            let tail = !0u64 >> (63 - (e - 1) % 64);
            if ws == we {
                words[ws] |= head & tail;
            } else {
                words[ws] |= head;
                words[ws + 1..we].fill(!0);
                words[we] |= tail;
            }
        }
        BitSpan { first, words }
    }

    /// Words both spans cover, as index ranges into each.
    fn overlap(&self, other: &BitSpan) -> (usize, usize, usize) {
        let lo = self.first.max(other.first);
        let hi = (self.first + self.words.len()).min(other.first + other.words.len());
        (lo - self.first, lo - other.first, hi.saturating_sub(lo))
    }

    fn intersection(&self, other: &BitSpan) -> u64 {
        let (a, b, len) = self.overlap(other);
        and_count(&self.words[a..a + len], &other.words[b..b + len])
    }
}

/// `popcount(a & b)` summed over two equal-length word slices.
fn and_count(a: &[u64], b: &[u64]) -> u64 {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("popcnt") {
        // SAFETY: the CPU has the `popcnt` instruction (checked just above).
        return unsafe { and_count_popcnt(a, b) };
    }
    and_count_portable(a, b)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "popcnt")]
unsafe fn and_count_popcnt(a: &[u64], b: &[u64]) -> u64 {
    and_count_portable(a, b)
}

#[inline(always)]
fn and_count_portable(a: &[u64], b: &[u64]) -> u64 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x & y).count_ones() as u64)
        .sum()
}

/// At most this many bytes of [`BitSpan`]s per matrix; larger inputs merge
/// runs only.
const BIT_SPAN_BUDGET: usize = 64 << 20;

/// [`iou_matrix`] on already prepared RLEs.
pub fn iou_matrix_prepared(dt: &[IouRle], gt: &[IouRle], iscrowd: &[bool]) -> Vec<f64> {
    let n = gt.len();
    let mut out = vec![0.0; dt.len() * n];
    let bytes: usize = dt
        .iter()
        .chain(gt)
        .map(|m| {
            let (first, end) = BitSpan::words_of(m);
            (end - first) * 8
        })
        .sum();
    let bits = (dt.len() * n >= 16 && bytes <= BIT_SPAN_BUDGET).then(|| {
        let dt: Vec<BitSpan> = dt.par_iter().map(BitSpan::new).collect();
        let gt: Vec<BitSpan> = gt.par_iter().map(BitSpan::new).collect();
        (dt, gt)
    });
    let row = |(d, chunk): (usize, &mut [f64])| {
        for (g, o) in chunk.iter_mut().enumerate() {
            let crowd = iscrowd.get(g).copied().unwrap_or(false);
            *o = match &bits {
                // A word costs a fraction of a run step: count bits unless
                // the shared span is long and the masks have few runs.
                Some((bd, bg))
                    if bd[d].overlap(&bg[g]).2 <= 4 * (dt[d].runs.len() + gt[g].runs.len()) =>
                {
                    dt[d].iou_by(&gt[g], crowd, || bd[d].intersection(&bg[g]))
                }
                _ => dt[d].iou(&gt[g], crowd),
            };
        }
    };
    if n == 0 {
        return out;
    }
    if dt.len() * n >= 64 {
        out.par_chunks_mut(n).enumerate().for_each(row);
    } else {
        out.chunks_mut(n).enumerate().for_each(row);
    }
    out
}

/// IoU of one pair (non-crowd), as `maskUtils.iou([a], [b], [0])`.
///
/// Walks both count lists once, without building interval lists.
pub fn iou(a: &Rle, b: &Rle) -> f64 {
    if bbox_iou(a.to_bbox(), b.to_bbox(), false) <= 0.0 {
        return 0.0;
    }
    if a.height != b.height || a.width != b.width {
        return -1.0;
    }
    let i = intersection_of_counts(&a.counts, &b.counts);
    if i == 0 {
        return 0.0;
    }
    let u = a.area() + b.area() - i;
    i as f64 / u as f64
}

/// Foreground pixels shared by two count lists (walking runs in step).
fn intersection_of_counts(a: &[u32], b: &[u32]) -> u64 {
    // Foreground intervals are odd-indexed runs; advance through both lists
    // by interval end, summing overlaps.
    let (mut ia, mut ib) = (1usize, 1usize);
    let (mut sa, mut sb) = (
        a.first().copied().unwrap_or(0) as u64,
        b.first().copied().unwrap_or(0) as u64,
    );
    let mut total = 0u64;
    while ia < a.len() && ib < b.len() {
        let ea = sa + a[ia] as u64;
        let eb = sb + b[ib] as u64;
        total += ea.min(eb).saturating_sub(sa.max(sb));
        if ea <= eb {
            sa = ea + a.get(ia + 1).copied().unwrap_or(0) as u64;
            ia += 2;
        } else {
            sb = eb + b.get(ib + 1).copied().unwrap_or(0) as u64;
            ib += 2;
        }
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Mask;

    fn rle(h: u32, w: u32, rows: &[u8]) -> Rle {
        Rle::encode(&Mask::from_row_major(h, w, rows).unwrap())
    }

    #[test]
    fn pair_iou_and_crowd() {
        let a = rle(2, 2, &[1, 1, 0, 0]);
        let b = rle(2, 2, &[1, 0, 1, 0]);
        assert_eq!(iou(&a, &b), 1.0 / 3.0);
        let m = iou_matrix(std::slice::from_ref(&a), std::slice::from_ref(&b), &[true]);
        assert_eq!(m, vec![0.5]);
        assert_eq!(iou(&a, &a), 1.0);
    }

    #[test]
    fn empty_masks_and_size_mismatch() {
        let e = Rle::empty(2, 2);
        assert_eq!(iou(&e, &e), 0.0);
        let a = rle(2, 2, &[1, 1, 0, 0]);
        let c = rle(2, 3, &[1, 1, 0, 0, 0, 0]);
        assert_eq!(iou(&a, &c), -1.0);
        // Boxes that do not overlap give 0 even when sizes differ.
        let d = rle(2, 3, &[0, 0, 0, 0, 0, 1]);
        assert_eq!(iou(&a, &d), 0.0);
    }

    #[test]
    fn bit_spans_count_what_merging_runs_counts() {
        // Masks of 7 × 37 = 259 pixels (runs crossing word boundaries),
        // drawn from a fixed generator: every matrix entry equals the pair
        // IoU computed by merging runs.
        let (h, w) = (7u32, 37u32);
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let masks: Vec<Rle> = (0..24)
            .map(|k| {
                let density = k % 4;
                let px: Vec<u8> = (0..h * w)
                    .map(|_| u8::from(next() % 4 < density as u64))
                    .collect();
                rle(h, w, &px)
            })
            .collect();
        let prepared: Vec<IouRle> = masks.iter().map(IouRle::new).collect();
        let m = iou_matrix(&masks, &masks, &[]);
        for (d, a) in prepared.iter().enumerate() {
            for (g, b) in prepared.iter().enumerate() {
                let bits = BitSpan::new(a).intersection(&BitSpan::new(b));
                assert_eq!(bits, a.intersection(b), "pair {d}, {g}");
                assert_eq!(m[d * masks.len() + g], a.iou(b, false), "pair {d}, {g}");
            }
        }
        assert_eq!(and_count(&[!0, 0b1011], &[0b110, !0]), 5);
    }

    #[test]
    fn matrix_layout_is_dt_major() {
        let a = rle(1, 3, &[1, 0, 0]);
        let b = rle(1, 3, &[1, 1, 0]);
        let c = rle(1, 3, &[0, 0, 1]);
        let m = iou_matrix(&[a, b], &[c.clone(), rle(1, 3, &[1, 1, 1])], &[]);
        assert_eq!(m, vec![0.0, 1.0 / 3.0, 0.0, 2.0 / 3.0]);
    }
}
