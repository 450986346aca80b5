//! COCO run-length encoding: encode, decode, area, bounding box, merge.
//!
//! Every function reproduces pycocotools 2.0.x (`common/maskApi.c`) bit for bit
//! on valid input; where the C code has undefined behaviour on malformed input
//! (reading past the end, hanging, dividing by zero) we return an error or a
//! documented value instead.

use crate::error::{MaskError, Result};
use crate::mask::{pixel_count, Mask};

/// A run-length encoded binary mask in COCO layout.
///
/// `counts` alternate background / foreground run lengths over the pixels in
/// column-major order, starting with background (a mask whose first pixel is
/// foreground starts with a 0 count).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Rle {
    /// Height in pixels (`size[0]` in COCO JSON).
    pub height: u32,
    /// Width in pixels (`size[1]` in COCO JSON).
    pub width: u32,
    /// Alternating run lengths, background first.
    pub counts: Vec<u32>,
}

impl Rle {
    /// An RLE from raw counts (COCO's uncompressed form), as `frUncompressedRLE`.
    pub fn new(height: u32, width: u32, counts: Vec<u32>) -> Self {
        Rle {
            height,
            width,
            counts,
        }
    }

    /// An all-background mask.
    pub fn empty(height: u32, width: u32) -> Self {
        let n = pixel_count(height, width);
        Rle::new(height, width, vec![n as u32])
    }

    /// Run-length encodes a mask (`maskUtils.encode`).
    pub fn encode(mask: &Mask) -> Self {
        let data = mask.as_column_major();
        let mut counts = Vec::new();
        let mut start = 0usize;
        let mut value = 0u8;
        loop {
            let end = find_change(data, start, value);
            counts.push((end - start) as u32);
            if end == data.len() {
                break;
            }
            start = end;
            value ^= 1;
        }
        Rle::new(mask.height(), mask.width(), counts)
    }

    /// Encodes many masks, spread over threads (`maskUtils.encode` of an
    /// `h × w × n` array).
    pub fn encode_all(masks: &[Mask]) -> Vec<Rle> {
        use rayon::prelude::*;
        masks.par_iter().map(Rle::encode).collect()
    }

    /// Decodes many RLEs, spread over threads (`maskUtils.decode` of a list).
    pub fn decode_all(rles: &[Rle]) -> Result<Vec<Mask>> {
        use rayon::prelude::*;
        rles.par_iter().map(Rle::decode).collect()
    }

    /// Sum of all counts (the number of pixels the RLE describes).
    pub fn total(&self) -> u64 {
        self.counts.iter().map(|&c| c as u64).sum()
    }

    /// Fails unless the counts cover exactly `height × width` pixels, the
    /// condition [`Rle::decode`] needs (checked without decoding).
    pub fn check_counts(&self) -> Result<()> {
        let expected = pixel_count(self.height, self.width);
        let sum = self.total();
        if sum != expected {
            return Err(MaskError::CountsMismatch {
                sum,
                height: self.height,
                width: self.width,
                expected,
            });
        }
        Ok(())
    }

    /// Decodes into a mask (`maskUtils.decode`).
    ///
    /// Fails when the counts do not cover exactly `height × width` pixels
    /// (pycocotools raises for too many and returns uninitialised memory for
    /// too few).
    pub fn decode(&self) -> Result<Mask> {
        self.check_counts()?;
        let n = pixel_count(self.height, self.width);
        let mut data = vec![0u8; n as usize];
        let mut pos = 0usize;
        for (j, &c) in self.counts.iter().enumerate() {
            let end = pos + c as usize;
            if j % 2 == 1 {
                data[pos..end].fill(1);
            }
            pos = end;
        }
        Ok(Mask::from_raw(self.height, self.width, data))
    }

    /// Number of foreground pixels (`maskUtils.area`).
    pub fn area(&self) -> u64 {
        self.counts
            .iter()
            .skip(1)
            .step_by(2)
            .map(|&c| c as u64)
            .sum()
    }

    /// Bounding box `[x, y, w, h]` (`maskUtils.toBbox`); all zeros for an empty mask.
    pub fn to_bbox(&self) -> [f64; 4] {
        let h = self.height;
        let w = self.width;
        let m = self.counts.len() / 2 * 2;
        if m == 0 || h == 0 {
            return [0.0; 4];
        }
        // Counts inside the image that never wrap a u32 (every well-formed
        // RLE) take the division-free walk; the rest keep the C code's
        // arithmetic.
        let total: u64 = self.counts[..m].iter().map(|&c| c as u64).sum();
        if total <= u32::MAX as u64 && total <= h as u64 * w as u64 {
            return self.bbox_monotone(m);
        }
        self.bbox_dividing(m)
    }

    /// [`Rle::to_bbox`] as pycocotools computes it, for any counts.
    fn bbox_dividing(&self, m: usize) -> [f64; 4] {
        let h = self.height;
        // u32 wrapping arithmetic mirrors the C code's `uint` on odd input.
        let mut extent = Extent::new(self.width, h);
        let mut cc = 0u32;
        for j in 0..m {
            let start = cc;
            cc = cc.wrapping_add(self.counts[j]);
            if j % 2 == 0 || self.counts[j] == 0 {
                continue;
            }
            let y_start = start % h;
            let x_start = (start - y_start) / h;
            let last = cc.wrapping_sub(1);
            let y_end = last % h;
            let x_end = (last - y_end) / h;
            extent.add_run((x_start, y_start), (x_end, y_end));
        }
        extent.to_box()
    }

    /// [`Rle::to_bbox`] over the first `m` counts when their running sum
    /// never wraps: run starts and ends only grow, so each one's column is
    /// found by stepping a column base forward (at most `width` steps in
    /// all, as the counts stay inside the image) instead of dividing by the
    /// height twice for every run.
    fn bbox_monotone(&self, m: usize) -> [f64; 4] {
        let h = self.height;
        let mut extent = Extent::new(self.width, h);
        // Column index and first pixel of the column holding the last run
        // start, and the same for the last run end.
        let (mut x0, mut base0) = (0u32, 0u32);
        let (mut x1, mut base1) = (0u32, 0u32);
        let mut cc = 0u32;
        for j in 0..m {
            let start = cc;
            cc += self.counts[j];
            if j % 2 == 0 || self.counts[j] == 0 {
                continue;
            }
            let last = cc - 1;
            while start - base0 >= h {
                x0 += 1;
                base0 += h;
            }
            if base1 < base0 {
                (x1, base1) = (x0, base0);
            }
            while last - base1 >= h {
                x1 += 1;
                base1 += h;
            }
            extent.add_run((x0, start - base0), (x1, last - base1));
        }
        extent.to_box()
    }

    /// Union (or intersection when `intersect`) of several RLEs (`maskUtils.merge`).
    ///
    /// As in pycocotools, RLEs of different sizes merge to an empty 0×0 RLE,
    /// and merging nothing gives an empty 0×0 RLE.
    pub fn merge(rles: &[Rle], intersect: bool) -> Rle {
        let Some(first) = rles.first() else {
            return Rle::new(0, 0, Vec::new());
        };
        let (h, w) = (first.height, first.width);
        let mut acc = first.counts.clone();
        for b in &rles[1..] {
            if b.height != h || b.width != w {
                return Rle::new(0, 0, Vec::new());
            }
            acc = merge_two(&acc, &b.counts, intersect);
        }
        Rle::new(h, w, acc)
    }

    /// Compressed COCO string form of the counts (`counts` of `maskUtils.encode`).
    pub fn to_compressed(&self) -> String {
        crate::compress::counts_to_string(&self.counts)
    }

    /// Parses the compressed COCO string form (`maskUtils.frString` semantics).
    pub fn from_compressed(counts: &str, height: u32, width: u32) -> Result<Rle> {
        Ok(Rle::new(
            height,
            width,
            crate::compress::counts_from_string(counts.as_bytes())?,
        ))
    }
}

/// First index `>= start` whose value differs from `value` (or `data.len()`).
#[inline]
fn find_change(data: &[u8], start: usize, value: u8) -> usize {
    let pattern = u64::from_ne_bytes([value; 8]);
    let mut i = start;
    while i + 8 <= data.len() {
        let word = u64::from_le_bytes(data[i..i + 8].try_into().unwrap_or([0; 8]));
        let diff = word ^ pattern;
        if diff != 0 {
            return i + (diff.trailing_zeros() / 8) as usize;
        }
        i += 8;
    }
    while i < data.len() && data[i] == value {
        i += 1;
    }
    i
}

/// The pycocotools merge walk over two count lists.
fn merge_two(a: &[u32], b: &[u32], intersect: bool) -> Vec<u32> {
    let at = |k: usize, s: &[u32]| s.get(k).copied().unwrap_or(0) as u64;
    let mut out = Vec::with_capacity(a.len() + b.len());
    let (mut ca, mut cb) = (at(0, a), at(0, b));
    let (mut v, mut va, mut vb) = (false, false, false);
    let (mut ia, mut ib) = (1usize, 1usize);
    let mut cc = 0u64;
    loop {
        // pycocotools hangs when one list ends before the other (malformed
        // input); we treat pixels past the end of a list as background.
        let a_done = ca == 0 && ia >= a.len();
        let b_done = cb == 0 && ib >= b.len();
        if a_done {
            va = false;
        }
        if b_done {
            vb = false;
        }
        let c = match (a_done, b_done) {
            (true, false) => cb,
            (false, true) => ca,
            _ => ca.min(cb),
        };
        cc += c;
        ca -= c;
        if ca == 0 && ia < a.len() {
            ca = a[ia] as u64;
            ia += 1;
            va = !va;
        }
        cb -= c;
        if cb == 0 && ib < b.len() {
            cb = b[ib] as u64;
            ib += 1;
            vb = !vb;
        }
        let rest = ca + cb;
        let vp = v;
        v = if intersect { va && vb } else { va || vb };
        if v != vp || rest == 0 {
            out.push(cc as u32);
            cc = 0;
        }
        if rest == 0 {
            return out;
        }
    }
}

/// The columns `xs..=xe` and rows `ys..=ye` the foreground runs of an
/// `h`-high mask touch, grown run by run as `rleToBbox` does.
struct Extent {
    h: u32,
    xs: u32,
    ys: u32,
    xe: u32,
    ye: u32,
}

impl Extent {
    fn new(w: u32, h: u32) -> Self {
        Self {
            h,
            xs: w,
            ys: h,
            xe: 0,
            ye: 0,
        }
    }

    /// Adds a run from its first pixel to its last, as (column, row) each;
    /// a run over several columns spans every row.
    fn add_run(&mut self, (x_start, y_start): (u32, u32), (x_end, y_end): (u32, u32)) {
        self.xs = self.xs.min(x_start);
        self.xe = self.xe.max(x_end);
        if x_start < x_end {
            self.ys = 0;
            self.ye = self.h - 1;
        } else {
            self.ys = self.ys.min(y_start);
            self.ye = self.ye.max(y_end);
        }
    }

    /// `[x, y, w, h]` (wrapping, as the C code's `uint`, when no run was
    /// added).
    fn to_box(&self) -> [f64; 4] {
        [
            self.xs as f64,
            self.ys as f64,
            self.xe.wrapping_sub(self.xs).wrapping_add(1) as f64,
            self.ye.wrapping_sub(self.ys).wrapping_add(1) as f64,
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mask(h: u32, w: u32, rows: &[u8]) -> Mask {
        Mask::from_row_major(h, w, rows).unwrap()
    }

    #[test]
    fn encode_decode_small() {
        // 2×3, column-major pixels: 0 1 | 1 1 | 0 0
        let m = mask(2, 3, &[0, 1, 0, 1, 1, 0]);
        let r = Rle::encode(&m);
        assert_eq!(r.counts, vec![1, 3, 2]);
        assert_eq!(r.decode().unwrap(), m);
        assert_eq!(r.area(), 3);
        assert_eq!(r.to_bbox(), [0.0, 0.0, 2.0, 2.0]);
    }

    #[test]
    fn leading_foreground_gives_zero_count() {
        let r = Rle::encode(&mask(1, 3, &[1, 1, 0]));
        assert_eq!(r.counts, vec![0, 2, 1]);
        assert_eq!(r.to_bbox(), [0.0, 0.0, 2.0, 1.0]);
    }

    #[test]
    fn long_runs_cross_word_boundaries() {
        let h = 37;
        let w = 11;
        let m = Mask::from_fn(h, w, |y, x| (x * h + y) % 29 < 13);
        let r = Rle::encode(&m);
        assert_eq!(r.decode().unwrap(), m);
        assert_eq!(r.area(), m.area());
    }

    #[test]
    fn empty_and_zero_sized() {
        assert_eq!(Rle::encode(&Mask::zeros(0, 0)).counts, vec![0]);
        assert_eq!(Rle::encode(&Mask::zeros(3, 0)).counts, vec![0]);
        assert_eq!(Rle::encode(&Mask::zeros(2, 2)).counts, vec![4]);
        assert_eq!(Rle::empty(2, 2).to_bbox(), [0.0; 4]);
    }

    #[test]
    fn batch_encode_and_decode_equal_single_calls() {
        let masks: Vec<Mask> = (0..5)
            .map(|k| Mask::from_fn(7, 9, |y, x| (x * 7 + y + k) % 5 < 2))
            .collect();
        let rles = Rle::encode_all(&masks);
        for (m, r) in masks.iter().zip(&rles) {
            assert_eq!(*r, Rle::encode(m));
        }
        assert_eq!(Rle::decode_all(&rles).unwrap(), masks);
        assert!(Rle::decode_all(&[Rle::new(2, 2, vec![3])]).is_err());
    }

    #[test]
    fn decode_rejects_wrong_totals() {
        assert!(Rle::new(2, 2, vec![3]).decode().is_err());
        assert!(Rle::new(2, 2, vec![1, 4]).decode().is_err());
    }

    #[test]
    fn merge_union_intersection_and_size_mismatch() {
        let a = Rle::encode(&mask(1, 4, &[1, 1, 0, 0]));
        let b = Rle::encode(&mask(1, 4, &[0, 1, 1, 0]));
        let u = Rle::merge(&[a.clone(), b.clone()], false);
        assert_eq!(u.decode().unwrap().to_row_major(), [1, 1, 1, 0]);
        let i = Rle::merge(&[a.clone(), b], true);
        assert_eq!(i.decode().unwrap().to_row_major(), [0, 1, 0, 0]);
        let odd = Rle::empty(2, 2);
        assert_eq!(Rle::merge(&[a, odd], false), Rle::new(0, 0, vec![]));
        assert_eq!(Rle::merge(&[], false), Rle::new(0, 0, vec![]));
    }

    proptest::proptest! {
        /// The division-free bbox walk equals pycocotools' arithmetic on
        /// any counts inside the image, including ones that end early, have
        /// zero runs or an odd length.
        #[test]
        fn bbox_walk_equals_the_dividing_one(
            h in 1u32..9,
            w in 1u32..9,
            runs in proptest::collection::vec(0u32..12, 0..24),
        ) {
            let mut counts = Vec::new();
            let mut total = 0u32;
            for c in runs {
                if total + c > h * w {
                    break;
                }
                total += c;
                counts.push(c);
            }
            let r = Rle::new(h, w, counts);
            let m = r.counts.len() / 2 * 2;
            let expected = if m == 0 { [0.0; 4] } else { r.bbox_dividing(m) };
            proptest::prop_assert_eq!(r.to_bbox(), expected);
        }
    }
}
