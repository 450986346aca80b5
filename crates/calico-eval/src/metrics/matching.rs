//! The two greedy one-to-one matchings of GLaMM's evaluator, on dense
//! row-major matrices given by accessor functions.
//!
//! Both take the largest entry first, and on ties the first in row-major
//! order, as `np.unravel_index(np.argmax(m), m.shape)` does.

/// Position and value of the first largest entry over the live rows and
/// columns, or `None` when no entry is live.
fn first_max(
    live_rows: &[bool],
    live_cols: &[bool],
    at: &impl Fn(usize, usize) -> f64,
) -> Option<(usize, usize, f64)> {
    let mut best: Option<(usize, usize, f64)> = None;
    for (r, _) in live_rows.iter().enumerate().filter(|(_, &l)| l) {
        for (c, _) in live_cols.iter().enumerate().filter(|(_, &l)| l) {
            let v = at(r, c);
            if best.is_none_or(|(_, _, b)| v > b) {
                best = Some((r, c, v));
            }
        }
    }
    best
}

/// GLaMM's `compute_miou` matching: while the largest remaining entry is
/// positive, record it and delete its row and column. Returns `(row, col, value)`
/// in the order taken.
///
/// Deleting rows and columns keeps the others in order, so the first maximum
/// of the shrunken matrix is the first maximum over the live rows and columns
/// of the original one.
pub(crate) fn greedy_positive(
    rows: usize,
    cols: usize,
    at: impl Fn(usize, usize) -> f64,
) -> Vec<(usize, usize, f64)> {
    let mut live_rows = vec![true; rows];
    let mut live_cols = vec![true; cols];
    let mut out = Vec::with_capacity(rows.min(cols));
    while let Some((r, c, v)) = first_max(&live_rows, &live_cols, &at) {
        // `np.max(m) > 0` is false for NaN too.
        if v.is_nan() || v <= 0.0 {
            break;
        }
        out.push((r, c, v));
        live_rows[r] = false;
        live_cols[c] = false;
    }
    out
}

/// GLaMM's `find_best_matches`: take the first largest entry of `score`; stop
/// if it is below `score_threshold` or the `gate` entry at the same place is
/// below `gate_threshold`; otherwise record the pair and set its row and
/// column to 0 in both matrices. Returns the `(row, col)` pairs taken.
///
/// The matrices are copied and zeroed exactly as GLaMM does, so zeroed
/// entries take part in later `argmax` ties like any other 0. The number of
/// matches is capped at `min(rows, cols)`; that only matters for thresholds
/// ≤ 0, where the Python loop would not end.
pub(crate) fn greedy_thresholded(
    rows: usize,
    cols: usize,
    score: impl Fn(usize, usize) -> f64,
    gate: impl Fn(usize, usize) -> f64,
    score_threshold: f64,
    gate_threshold: f64,
) -> Vec<(usize, usize)> {
    let mut s: Vec<f64> = (0..rows * cols)
        .map(|k| score(k / cols, k % cols))
        .collect();
    let mut g: Vec<f64> = (0..rows * cols).map(|k| gate(k / cols, k % cols)).collect();
    let mut out = Vec::new();
    while out.len() < rows.min(cols) {
        // First maximum of the whole (partly zeroed) matrix.
        let mut best = 0;
        for (k, &v) in s.iter().enumerate().skip(1) {
            if v > s[best] {
                best = k;
            }
        }
        if s[best] < score_threshold || g[best] < gate_threshold {
            break;
        }
        let (r, c) = (best / cols, best % cols);
        out.push((r, c));
        for m in [&mut s, &mut g] {
            m[r * cols..(r + 1) * cols].fill(0.0);
            for row in 0..rows {
                m[row * cols + c] = 0.0;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn from<'a>(m: &'a [&'a [f64]]) -> impl Fn(usize, usize) -> f64 + 'a {
        move |r, c| m[r][c]
    }

    #[test]
    fn positive_takes_global_maxima_and_skips_zero() {
        let m: &[&[f64]] = &[&[0.5, 0.9, 0.0], &[0.6, 0.8, 0.0]];
        let got = greedy_positive(2, 3, from(m));
        assert_eq!(got, vec![(0, 1, 0.9), (1, 0, 0.6)]);
        let zeros: &[&[f64]] = &[&[0.0, 0.0]];
        assert!(greedy_positive(1, 2, from(zeros)).is_empty());
        assert!(greedy_positive(0, 2, |_, _| 1.0).is_empty());
    }

    #[test]
    fn positive_ties_take_the_first_in_row_major_order() {
        let m: &[&[f64]] = &[&[0.3, 0.7], &[0.7, 0.7]];
        assert_eq!(
            greedy_positive(2, 2, from(m)),
            vec![(0, 1, 0.7), (1, 0, 0.7)]
        );
    }

    #[test]
    fn thresholded_stops_at_the_first_failing_pair() {
        // The best IoU pair has the wrong label: nothing is matched, although
        // (1, 1) would pass both thresholds.
        let iou: &[&[f64]] = &[&[0.9, 0.0], &[0.0, 0.8]];
        let sim: &[&[f64]] = &[&[0.0, 0.0], &[0.0, 1.0]];
        assert!(greedy_thresholded(2, 2, from(iou), from(sim), 0.5, 0.5).is_empty());
        let sim: &[&[f64]] = &[&[1.0, 0.0], &[0.0, 1.0]];
        assert_eq!(
            greedy_thresholded(2, 2, from(iou), from(sim), 0.5, 0.5),
            vec![(0, 0), (1, 1)]
        );
    }

    #[test]
    fn thresholded_accepts_values_at_the_threshold() {
        let iou: &[&[f64]] = &[&[0.5]];
        let sim: &[&[f64]] = &[&[0.5]];
        assert_eq!(
            greedy_thresholded(1, 1, from(iou), from(sim), 0.5, 0.5),
            vec![(0, 0)]
        );
        assert!(greedy_thresholded(1, 1, from(iou), from(sim), 0.0, 0.0).len() == 1);
    }
}
