//! The training curve (`RUN/curve.svg`): a self-contained SVG (no fonts,
//! scripts or links) redrawn from `metrics.jsonl` as training goes.
//!
//! Layout (900 × 520): on the left the loss and its components (total, text,
//! focal, Dice) against the step, with the learning rate in a strip below;
//! on the right the validation averages (mIoU, Recall, SS, 0–100). The loss
//! axis is linear from 0 (or the minimum, if negative) to 1.1 × the largest
//! per-component 99th percentile, so an early spike does not flatten the
//! rest; clipped values are drawn on the top edge and noted. Long runs are
//! thinned to a min/max pair per pixel column, which keeps the envelope of a
//! noisy curve. Steps are ticked at whole numbers; tick labels and legend
//! values switch to scientific notation (`1.2e12`, `2.5e-7`) for very large
//! or small magnitudes, so any finite value fits the margins.

use crate::best::Best;
use crate::metrics::{write_atomic, Record, Result, TrainRecord, ValRecord};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// The file name inside a run directory.
pub const CURVE_FILE: &str = "curve.svg";

const WIDTH: f64 = 900.0;
const HEIGHT: f64 = 520.0;
const GRID: &str = "#e0e0e0";
const AXIS: &str = "#555555";
const MUTED: &str = "#777777";

/// A plotted quantity: legend name, polyline class, colour, accessor.
type Series<R> = (&'static str, &'static str, &'static str, fn(&R) -> f64);

/// A plotting rectangle in SVG pixels with its data ranges.
struct Panel {
    left: f64,
    right: f64,
    top: f64,
    bottom: f64,
    x: (f64, f64),
    y: (f64, f64),
}

impl Panel {
    fn px(&self, x: f64) -> f64 {
        let t = (x - self.x.0) / (self.x.1 - self.x.0);
        self.left + t.clamp(0.0, 1.0) * (self.right - self.left)
    }

    fn py(&self, y: f64) -> f64 {
        let t = (y - self.y.0) / (self.y.1 - self.y.0);
        self.bottom - t.clamp(0.0, 1.0) * (self.bottom - self.top)
    }

    fn width(&self) -> f64 {
        self.right - self.left
    }
}

/// A coordinate or size for the SVG: one decimal, never NaN/inf.
fn n(v: f64) -> String {
    if v.is_finite() {
        let s = format!("{v:.1}");
        s.strip_suffix(".0").map(str::to_string).unwrap_or(s)
    } else {
        "0".into()
    }
}

/// Escapes text for XML content and attribute values.
pub fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&apos;")
}

/// A tick spacing of 1, 2 or 5 × 10^k giving about `target` intervals.
fn nice_step(span: f64, target: f64) -> f64 {
    if !span.is_finite() || span <= 0.0 {
        return 1.0;
    }
    let raw = span / target.max(1.0);
    let mag = 10f64.powf(raw.log10().floor());
    let norm = raw / mag;
    let m = if norm <= 1.0 {
        1.0
    } else if norm <= 2.0 {
        2.0
    } else if norm <= 5.0 {
        5.0
    } else {
        10.0
    };
    m * mag
}

/// Tick values in `[lo, hi]` at `step`, strictly increasing (it stops where
/// `step` is below the resolution of the values).
fn ticks(lo: f64, hi: f64, step: f64) -> Vec<f64> {
    let mut out = Vec::new();
    if !(lo.is_finite() && hi.is_finite() && step.is_finite() && step > 0.0) {
        return out;
    }
    let first = (lo / step - 1e-9).ceil();
    for k in 0..100 {
        let v = (first + k as f64) * step;
        if v > hi + step * 1e-9 {
            break;
        }
        // Avoid "-0" and float noise like 0.30000000000000004.
        let v = if v.abs() < step * 1e-9 { 0.0 } else { v };
        if matches!(out.last(), Some(&last) if v <= last) {
            break;
        }
        out.push(v);
    }
    out
}

/// Magnitudes written in scientific notation: at least this large…
const SCI_LARGE: f64 = 1e5;
/// …or non-zero and below this.
const SCI_SMALL: f64 = 1e-3;

/// The decimal exponent of `v` (`floor(log10 |v|)`, robust to float noise).
fn exponent(v: f64) -> i32 {
    (v.abs().log10() + 1e-9).floor() as i32
}

/// `v` in scientific notation with at most `decimals` mantissa decimals,
/// trailing zeros dropped: `1e12`, `2.5e-7`, `-8.034e11`.
fn sci(v: f64, decimals: usize) -> String {
    let s = format!("{v:.decimals$e}");
    match s.split_once('e') {
        Some((m, e)) if m.contains('.') => {
            format!("{}e{e}", m.trim_end_matches('0').trim_end_matches('.'))
        }
        _ => s,
    }
}

/// A tick label for `v` on an axis ticked at `step` whose largest |value| is
/// `scale`: as many decimals as the spacing needs, or scientific (for the
/// whole axis, so its labels look alike) when the spacing is below 1e-3 or
/// the axis reaches 1e5. At most 10 characters for any finite value.
fn tick_label(v: f64, step: f64, scale: f64) -> String {
    if v == 0.0 || !v.is_finite() {
        return "0".into();
    }
    if step < SCI_SMALL || scale.max(v.abs()) >= SCI_LARGE {
        // Ticks are multiples of 1, 2 or 5 × 10^k: digits down to 10^k.
        let decimals = (exponent(v) - exponent(step)).clamp(0, 3) as usize;
        return sci(v, decimals);
    }
    if step >= 1.0 {
        return format!("{v:.0}");
    }
    let decimals = (-step.log10()).ceil().clamp(0.0, 6.0) as usize;
    format!("{v:.decimals$}")
}

/// The value at quantile `q` of the finite values (0 when there are none).
fn quantile(values: &[f64], q: f64) -> f64 {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    let idx = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1;
    v[idx]
}

/// Thins a pixel series to at most a min/max pair per pixel column (in their
/// original order), keeping spikes visible.
fn thin(points: &[(f64, f64)], columns: f64) -> Vec<(f64, f64)> {
    if points.len() as f64 <= 2.0 * columns {
        return points.to_vec();
    }
    let mut out = Vec::new();
    let mut k = 0;
    while k < points.len() {
        let col = points[k].0.floor();
        let mut end = k;
        while end < points.len() && points[end].0.floor() == col {
            end += 1;
        }
        let bucket = &points[k..end];
        let (mut lo, mut hi) = (0, 0);
        for (i, p) in bucket.iter().enumerate() {
            if p.1 < bucket[lo].1 {
                lo = i;
            }
            if p.1 > bucket[hi].1 {
                hi = i;
            }
        }
        out.push(bucket[lo.min(hi)]);
        if lo != hi {
            out.push(bucket[lo.max(hi)]);
        }
        k = end;
    }
    out
}

fn text(s: &mut String, x: f64, y: f64, attrs: &str, content: &str) {
    let _ = write!(
        s,
        r#"<text x="{}" y="{}"{attrs}>{}</text>"#,
        n(x),
        n(y),
        xml_escape(content)
    );
}

/// The frame, title and "no data" note of a panel.
fn frame(s: &mut String, p: &Panel, title: &str, empty: Option<&str>) {
    let _ = write!(
        s,
        r#"<rect x="{}" y="{}" width="{}" height="{}" fill="none" stroke="{AXIS}"/>"#,
        n(p.left),
        n(p.top),
        n(p.width()),
        n(p.bottom - p.top)
    );
    text(s, p.left, p.top - 7.0, r#" font-weight="bold""#, title);
    if let Some(note) = empty {
        text(
            s,
            (p.left + p.right) / 2.0,
            (p.top + p.bottom) / 2.0,
            &format!(r#" text-anchor="middle" fill="{MUTED}""#),
            note,
        );
    }
}

/// Horizontal grid lines and y labels.
fn y_axis(s: &mut String, p: &Panel, step: f64) {
    let scale = p.y.0.abs().max(p.y.1.abs());
    for v in ticks(p.y.0, p.y.1, step) {
        let y = p.py(v);
        let _ = write!(
            s,
            r#"<line x1="{}" y1="{}" x2="{}" y2="{}" stroke="{GRID}"/>"#,
            n(p.left),
            n(y),
            n(p.right),
            n(y)
        );
        text(
            s,
            p.left - 5.0,
            y + 3.5,
            r#" text-anchor="end""#,
            &tick_label(v, step, scale),
        );
    }
}

/// Step tick marks, with labels when `labels`. Steps are whole numbers, so
/// the spacing is at least 1.
fn x_axis(s: &mut String, p: &Panel, step: f64, labels: bool) {
    let step = step.max(1.0);
    let scale = p.x.0.abs().max(p.x.1.abs());
    for v in ticks(p.x.0, p.x.1, step) {
        let x = p.px(v);
        let _ = write!(
            s,
            r#"<line x1="{}" y1="{}" x2="{}" y2="{}" stroke="{AXIS}"/>"#,
            n(x),
            n(p.bottom),
            n(x),
            n(p.bottom + 4.0)
        );
        if labels {
            text(
                s,
                x,
                p.bottom + 15.0,
                r#" text-anchor="middle""#,
                &tick_label(v, step, scale),
            );
        }
    }
}

/// One series: a polyline (thinned) plus circle markers when `markers` or
/// when it has a single point. Non-finite values are skipped.
fn series(s: &mut String, p: &Panel, class: &str, color: &str, data: &[(f64, f64)], markers: bool) {
    let pts: Vec<(f64, f64)> = data
        .iter()
        .filter(|(x, y)| x.is_finite() && y.is_finite())
        .map(|&(x, y)| (p.px(x), p.py(y)))
        .collect();
    let drawn = thin(&pts, p.width());
    let list: Vec<String> = drawn
        .iter()
        .map(|&(x, y)| format!("{},{}", n(x), n(y)))
        .collect();
    let _ = write!(
        s,
        r#"<polyline class="{class}" fill="none" stroke="{color}" stroke-width="1.5" stroke-linejoin="round" points="{}"/>"#,
        list.join(" ")
    );
    if markers || pts.len() == 1 {
        for &(x, y) in &pts {
            let _ = write!(
                s,
                r#"<circle cx="{}" cy="{}" r="3" fill="{color}"/>"#,
                n(x),
                n(y)
            );
        }
    }
}

/// A legend: colour swatch, name and last value per entry, one per row.
fn legend(s: &mut String, x: f64, y: f64, entries: &[(&str, &str, String)], background: bool) {
    let w = 150.0;
    let h = 16.0 * entries.len() as f64 + 6.0;
    if background {
        let _ = write!(
            s,
            r#"<rect x="{}" y="{}" width="{}" height="{}" fill="white" fill-opacity="0.85" stroke="{GRID}"/>"#,
            n(x),
            n(y),
            n(w),
            n(h)
        );
    }
    for (k, (name, color, last)) in entries.iter().enumerate() {
        let yy = y + 14.0 + 16.0 * k as f64;
        let _ = write!(
            s,
            r#"<line x1="{}" y1="{}" x2="{}" y2="{}" stroke="{color}" stroke-width="3"/>"#,
            n(x + 6.0),
            n(yy - 4.0),
            n(x + 24.0),
            n(yy - 4.0)
        );
        text(s, x + 30.0, yy, "", name);
        text(s, x + w - 6.0, yy, r#" text-anchor="end""#, last);
    }
}

/// The last finite value, compactly: 3 decimals below 10, fewer above, and
/// scientific with 4 significant digits from 1e5 or (non-zero) below 1e-3.
fn last_value(values: &[(f64, f64)]) -> String {
    match values.iter().rev().find(|(_, y)| y.is_finite()) {
        Some((_, y)) if *y != 0.0 && !(SCI_SMALL..SCI_LARGE).contains(&y.abs()) => sci(*y, 3),
        Some((_, y)) if y.abs() >= 100.0 => format!("{y:.0}"),
        Some((_, y)) if y.abs() >= 10.0 => format!("{y:.1}"),
        Some((_, y)) => format!("{y:.3}"),
        None => "–".into(),
    }
}

/// Renders the training curve of `records` (any order; sorted by step here).
/// Never panics and never writes NaN/inf, whatever the records hold; with no
/// data the panels are drawn empty with a note. `best` (a run's `keep_best`
/// choice) is marked on the validation panel: a dashed line at its step,
/// labelled with its metric and score.
pub fn training_curve_svg(records: &[Record], title: &str, best: Option<&Best>) -> String {
    let mut train: Vec<&TrainRecord> = records
        .iter()
        .filter_map(|r| match r {
            Record::Train(t) => Some(t),
            Record::Val(_) => None,
        })
        .collect();
    train.sort_by_key(|r| r.step);
    let mut val: Vec<&ValRecord> = records
        .iter()
        .filter_map(|r| match r {
            Record::Val(v) => Some(v),
            Record::Train(_) => None,
        })
        .collect();
    val.sort_by_key(|r| r.step);

    let max_step = records.iter().map(Record::step).max().unwrap_or(0).max(1) as f64;
    let x_range = (0.0, max_step);
    let x_step = nice_step(max_step, 6.0).max(1.0);

    let mut s = String::new();
    let _ = write!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" font-family="sans-serif" font-size="11">"#
    );
    s.push_str(r#"<rect width="100%" height="100%" fill="white"/>"#);
    text(
        &mut s,
        20.0,
        24.0,
        r#" font-size="15" font-weight="bold""#,
        title,
    );
    if let Some(last) = train.last() {
        let el = if last.elapsed_s.is_finite() {
            last.elapsed_s.max(0.0) as u64
        } else {
            0
        };
        let speed = if last.steps_per_s.is_finite() {
            format!("{:.2}", last.steps_per_s)
        } else {
            "–".into()
        };
        let summary = format!(
            "step {} · epoch {} · {speed} steps/s · elapsed {}:{:02}:{:02}",
            last.step,
            last.epoch,
            el / 3600,
            el / 60 % 60,
            el % 60
        );
        text(
            &mut s,
            WIDTH - 20.0,
            24.0,
            &format!(r#" text-anchor="end" fill="{MUTED}""#),
            &summary,
        );
    }

    // Loss panel.
    let components: [Series<TrainRecord>; 4] = [
        ("total", "loss-total", "#4e79a7", |r| r.loss),
        ("text", "loss-text", "#f28e2b", |r| r.text),
        ("focal", "loss-focal", "#e15759", |r| r.focal),
        ("dice", "loss-dice", "#59a14f", |r| r.dice),
    ];
    let data: Vec<Vec<(f64, f64)>> = components
        .iter()
        .map(|(_, _, _, f)| train.iter().map(|r| (r.step as f64, f(r))).collect())
        .collect();
    let all: Vec<f64> = data
        .iter()
        .flatten()
        .map(|p| p.1)
        .filter(|v| v.is_finite())
        .collect();
    let lo = all.iter().copied().fold(0.0f64, f64::min);
    // The largest per-component 99th percentile, so a spike in one component
    // clips only that spike.
    let p99 = data
        .iter()
        .map(|d| quantile(&d.iter().map(|p| p.1).collect::<Vec<_>>(), 0.99))
        .fold(0.0f64, f64::max);
    let mut hi = p99 * 1.1;
    if !hi.is_finite() || hi <= lo {
        hi = lo + 1.0;
    }
    let y_step = nice_step(hi - lo, 5.0);
    let hi = (hi / y_step - 1e-9).ceil() * y_step;
    let lo = (lo / y_step + 1e-9).floor() * y_step;
    let loss = Panel {
        left: 70.0,
        right: 600.0,
        top: 50.0,
        bottom: 300.0,
        x: x_range,
        y: (lo, hi),
    };
    let has_train = !train.is_empty();
    frame(&mut s, &loss, "loss", (!has_train).then_some("no data yet"));
    if has_train {
        y_axis(&mut s, &loss, y_step);
        x_axis(&mut s, &loss, x_step, true);
        for ((_, class, color, _), d) in components.iter().zip(&data) {
            series(&mut s, &loss, class, color, d, false);
        }
        let clipped = all.iter().filter(|&&v| v > hi).count();
        if clipped > 0 {
            text(
                &mut s,
                loss.right,
                loss.top - 7.0,
                &format!(r#" text-anchor="end" fill="{MUTED}""#),
                &format!(
                    "{clipped} value{} above {} clipped",
                    if clipped == 1 { "" } else { "s" },
                    tick_label(hi, y_step, lo.abs().max(hi.abs()))
                ),
            );
        }
        let entries: Vec<(&str, &str, String)> = components
            .iter()
            .zip(&data)
            .map(|((name, _, color, _), d)| (*name, *color, last_value(d)))
            .collect();
        legend(&mut s, loss.right - 158.0, loss.top + 8.0, &entries, true);
    }

    // Learning-rate strip.
    let lrs: Vec<(f64, f64)> = train.iter().map(|r| (r.step as f64, r.lr)).collect();
    let lr_max = lrs
        .iter()
        .map(|p| p.1)
        .filter(|v| v.is_finite())
        .fold(0.0f64, f64::max);
    let lr_max = if lr_max > 0.0 { lr_max } else { 1e-3 };
    let lr_step = nice_step(lr_max, 2.0);
    let lr = Panel {
        left: 70.0,
        right: 600.0,
        top: 350.0,
        bottom: 460.0,
        x: x_range,
        y: (0.0, (lr_max / lr_step - 1e-9).ceil() * lr_step),
    };
    frame(
        &mut s,
        &lr,
        "learning rate",
        (!has_train).then_some("no data yet"),
    );
    if has_train {
        y_axis(&mut s, &lr, lr_step);
        x_axis(&mut s, &lr, x_step, true);
        series(&mut s, &lr, "lr", "#76b7b2", &lrs, false);
    }
    text(
        &mut s,
        (lr.left + lr.right) / 2.0,
        lr.bottom + 34.0,
        r#" text-anchor="middle""#,
        "step",
    );

    // Validation panel.
    let metrics: [Series<ValRecord>; 3] = [
        ("mIoU", "val-miou", "#4e79a7", |r| r.average.miou),
        ("Recall", "val-recall", "#e15759", |r| r.average.recall),
        ("SS", "val-ss", "#59a14f", |r| r.average.ss),
    ];
    let vp = Panel {
        left: 680.0,
        right: 880.0,
        top: 50.0,
        bottom: 300.0,
        x: x_range,
        y: (0.0, 100.0),
    };
    let has_val = !val.is_empty();
    frame(
        &mut s,
        &vp,
        "validation (average, %)",
        (!has_val).then_some("no validation yet"),
    );
    if has_val {
        y_axis(&mut s, &vp, 20.0);
        x_axis(&mut s, &vp, nice_step(max_step, 3.0).max(1.0), true);
        let mut entries = Vec::new();
        for (name, class, color, f) in metrics {
            let d: Vec<(f64, f64)> = val.iter().map(|r| (r.step as f64, f(r))).collect();
            series(&mut s, &vp, class, color, &d, true);
            entries.push((name, color, last_value(&d)));
        }
        legend(&mut s, vp.left + 25.0, vp.bottom + 30.0, &entries, false);
        if let Some(b) = best.filter(|b| b.score.is_finite()) {
            best_marker(&mut s, &vp, b);
        }
    }

    s.push_str("</svg>\n");
    s
}

/// The `keep_best` choice on the validation panel: a dashed vertical line
/// at its step, labelled inside the panel's top edge `best miou 21.4 @ 300`
/// (on the line's left when it lies in the panel's right half).
fn best_marker(s: &mut String, p: &Panel, b: &Best) {
    let x = p.px(b.step as f64);
    let _ = write!(
        s,
        r#"<line class="best" x1="{}" y1="{}" x2="{}" y2="{}" stroke="{AXIS}" stroke-dasharray="4 3"/>"#,
        n(x),
        n(p.top),
        n(x),
        n(p.bottom)
    );
    let label = format!("best {} {:.1} @ {}", b.metric.name(), b.score, b.step);
    let (dx, anchor) = if x > (p.left + p.right) / 2.0 {
        (-3.0, "end")
    } else {
        (3.0, "start")
    };
    let attrs = format!(r#" class="best" text-anchor="{anchor}" font-size="10" fill="{AXIS}""#);
    text(s, x + dx, p.top + 12.0, &attrs, &label);
}

/// Writes `run_dir/curve.svg` atomically (temp + fsync + rename), titled
/// with the run directory's name, and returns its path. `best` as for
/// [`training_curve_svg`].
pub fn write_curve(run_dir: &Path, records: &[Record], best: Option<&Best>) -> Result<PathBuf> {
    let name = run_dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| run_dir.display().to_string());
    let svg = training_curve_svg(records, &format!("Calico training — {name}"), best);
    let path = run_dir.join(CURVE_FILE);
    write_atomic(&path, svg.as_bytes())?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::tests::{train, val};

    /// A small well-formedness check: balanced, properly nested tags, quoted
    /// attributes, no stray `<` or unknown entities. Returns the element names
    /// in document order.
    fn check_xml(doc: &str) -> Vec<String> {
        let mut stack: Vec<String> = Vec::new();
        let mut names = Vec::new();
        let mut rest = doc.trim_end();
        let mut roots = 0;
        let check_text = |t: &str| {
            let mut parts = t.split('&');
            parts.next();
            for p in parts {
                let ent = p.split(';').next().unwrap();
                assert!(
                    p.contains(';') && ["amp", "lt", "gt", "quot", "apos"].contains(&ent),
                    "bad entity &{ent}"
                );
            }
            assert!(!t.contains('>'), "stray > in {t:?}");
        };
        while !rest.is_empty() {
            let Some(open) = rest.find('<') else {
                check_text(rest);
                assert!(
                    rest.trim().is_empty() || !stack.is_empty(),
                    "text outside root"
                );
                break;
            };
            check_text(&rest[..open]);
            let close = rest[open..].find('>').expect("unclosed tag") + open;
            let tag = &rest[open + 1..close];
            assert!(!tag.contains('<'), "< inside tag {tag:?}");
            if let Some(name) = tag.strip_prefix('/') {
                assert_eq!(stack.pop().as_deref(), Some(name), "mismatched </{name}>");
            } else {
                let self_closing = tag.ends_with('/');
                let body = tag.trim_end_matches('/');
                let name = body.split_whitespace().next().expect("empty tag");
                assert!(name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'));
                // Attributes: name="value" pairs.
                let mut attrs = body[name.len()..].trim();
                while !attrs.is_empty() {
                    let eq = attrs.find("=\"").expect("unquoted attribute");
                    let after = &attrs[eq + 2..];
                    let end = after.find('"').expect("unterminated attribute");
                    check_text(&after[..end]);
                    attrs = after[end + 1..].trim_start();
                }
                if stack.is_empty() {
                    roots += 1;
                }
                names.push(name.to_string());
                if !self_closing {
                    stack.push(name.to_string());
                }
            }
            rest = &rest[close + 1..];
        }
        assert!(stack.is_empty(), "unclosed elements {stack:?}");
        assert_eq!(roots, 1, "exactly one root element");
        names
    }

    fn no_bad_numbers(svg: &str) {
        let lower = svg.to_lowercase();
        assert!(!lower.contains("nan") && !lower.contains("inf"), "{svg}");
    }

    fn run(steps: u64) -> Vec<Record> {
        let mut r: Vec<Record> = (1..=steps)
            .map(|s| {
                train(
                    s,
                    3.0 / (1.0 + s as f64 * 0.05) + 0.1 * ((s * 7 % 5) as f64),
                )
            })
            .collect();
        r.extend((1..=steps / 50).map(|k| val(k * 50, 10.0 + k as f64 * 8.0)));
        r
    }

    #[test]
    fn the_kept_best_is_marked_at_its_step() {
        let records = run(300);
        let chosen = records
            .iter()
            .find_map(|r| match r {
                Record::Val(v) if v.step == 100 => Some(v.clone()),
                _ => None,
            })
            .unwrap();
        let best = Best {
            metric: crate::config::BestMetric::Miou,
            score: chosen.average.miou,
            step: 100,
            validation: chosen,
        };
        let svg = training_curve_svg(&records, "run", Some(&best));
        check_xml(&svg);
        no_bad_numbers(&svg);
        // The validation panel spans x 680..880 over steps 0..300.
        let x = n(680.0 + 200.0 * 100.0 / 300.0);
        assert!(
            svg.contains(&format!(
                r#"<line class="best" x1="{x}" y1="50" x2="{x}" y2="300""#
            )),
            "{svg}"
        );
        assert!(svg.contains(">best miou 26.0 @ 100<"), "{svg}");
        assert!(!training_curve_svg(&records, "run", None).contains("class=\"best\""));
        let nan = Best {
            score: f64::NAN,
            ..best
        };
        assert!(!training_curve_svg(&records, "run", Some(&nan)).contains("class=\"best\""));
    }

    #[test]
    fn curve_is_wellformed_with_one_polyline_per_series() {
        let svg = training_curve_svg(&run(300), "tiny <run> & \"co\"", None);
        let names = check_xml(&svg);
        assert_eq!(names[0], "svg");
        no_bad_numbers(&svg);
        for class in ["loss-total", "loss-text", "loss-focal", "loss-dice", "lr"] {
            let needle = format!(r#"<polyline class="{class}""#);
            assert_eq!(svg.matches(&needle).count(), 1, "{class}");
        }
        for class in ["val-miou", "val-recall", "val-ss"] {
            assert_eq!(svg.matches(&format!(r#"class="{class}""#)).count(), 1);
        }
        assert!(svg.contains("tiny &lt;run&gt; &amp; &quot;co&quot;"));
        assert!(svg.contains(">total<") && svg.contains(">mIoU<"));
        assert!(!svg.contains("no data yet"));
        assert!(svg.contains(r#"width="900" height="520""#));
    }

    #[test]
    fn empty_and_single_records_render_frames() {
        for records in [vec![], vec![train(1, 0.5)], vec![val(10, 50.0)]] {
            let svg = training_curve_svg(&records, "run", None);
            check_xml(&svg);
            no_bad_numbers(&svg);
        }
        let empty = training_curve_svg(&[], "run", None);
        assert!(empty.contains("no data yet") && empty.contains("no validation yet"));
        assert_eq!(empty.matches("<polyline").count(), 0);
        let one = training_curve_svg(&[train(1, 0.5)], "run", None);
        assert_eq!(one.matches(r#"<polyline class="loss-"#).count(), 4);
        assert!(one.contains("<circle") && one.contains("no validation yet"));
    }

    #[test]
    fn non_finite_values_and_outliers_are_handled() {
        let mut records = run(100);
        records.push(train(101, f64::NAN));
        records.push(train(102, f64::INFINITY));
        if let Record::Train(t) = &mut records[49] {
            t.loss = 1e6; // a spike
        }
        if let Record::Train(t) = &mut records[5] {
            t.lr = f64::NAN;
            t.text = f64::NEG_INFINITY;
        }
        if let Record::Val(v) = records.last_mut().unwrap() {
            v.average.miou = f64::NAN;
        }
        let svg = training_curve_svg(&records, "run", None);
        check_xml(&svg);
        no_bad_numbers(&svg);
        // The spike is clipped, not used for the axis.
        assert!(svg.contains("clipped"), "{svg}");
        assert!(!svg.contains("1000000"));
    }

    #[test]
    fn long_runs_are_thinned() {
        let svg = training_curve_svg(&run(5000), "run", None);
        check_xml(&svg);
        let total = svg
            .split(r#"<polyline class="loss-total""#)
            .nth(1)
            .unwrap()
            .split("/>")
            .next()
            .unwrap();
        let points = total.matches(',').count();
        assert!(points <= 2 * 530 + 2, "{points}");
        assert!(svg.len() < 200_000, "{}", svg.len());
    }

    #[test]
    fn nice_ticks_and_labels() {
        assert_eq!(nice_step(10.0, 5.0), 2.0);
        assert_eq!(nice_step(4e-4, 2.0), 2e-4);
        assert_eq!(nice_step(0.0, 5.0), 1.0);
        assert_eq!(ticks(0.0, 1.0, 0.2).len(), 6);
        assert_eq!(ticks(1e300, 1e300, 1.0), vec![1e300]);
        assert_eq!(tick_label(0.6000000000000001, 0.2, 1.0), "0.6");
        assert_eq!(tick_label(4e-4, 2e-4, 1e-3), "4e-4");
        assert_eq!(tick_label(1e-3, 5e-4, 1e-3), "1e-3");
        assert_eq!(tick_label(2.5e-5, 5e-6, 3e-5), "2.5e-5");
        assert_eq!(tick_label(1500.0, 500.0, 3000.0), "1500");
        assert_eq!(tick_label(1e12, 2e11, 1.2e12), "1e12");
        assert_eq!(tick_label(1.2e12, 2e11, 1.2e12), "1.2e12");
        assert_eq!(tick_label(5e4, 5e4, 2e5), "5e4");
        assert_eq!(tick_label(1.5e5, 5e4, 2e5), "1.5e5");
        assert_eq!(tick_label(-4e30, 2e30, 4e30), "-4e30");
        assert_eq!(tick_label(99999.0, 1.0, 99999.0), "99999");
        assert_eq!(sci(9.9996e12, 3), "1e13");
        assert_eq!(sci(-2.5e-7, 3), "-2.5e-7");
        let last = |y: f64| last_value(&[(1.0, y), (2.0, f64::NAN)]);
        assert_eq!(last(803358900224.0), "8.034e11");
        assert_eq!(last(2.5e-7), "2.5e-7");
        assert_eq!(last(1e300), "1e300");
        assert_eq!(last(0.0), "0.000");
        assert_eq!(last(8.6887), "8.689");
        assert_eq!(last(42.26), "42.3");
        assert_eq!(last(99999.4), "99999");
        assert_eq!(last(f64::NAN), "–");
        assert_eq!(quantile(&[1.0, f64::NAN, 3.0, 2.0], 0.99), 3.0);
    }

    /// The `<text>` elements: (x, y, text-anchor, content as written).
    fn texts(svg: &str) -> Vec<(f64, f64, String, String)> {
        svg.split("<text ")
            .skip(1)
            .map(|t| {
                let (attrs, rest) = t.split_once('>').unwrap();
                let content = rest.split("</text>").next().unwrap().to_string();
                let attr = |name: &str| {
                    attrs
                        .split(&format!(" {name}=\""))
                        .nth(1)
                        .or_else(|| attrs.strip_prefix(&format!("{name}=\"")))
                        .and_then(|v| v.split('"').next())
                        .map(str::to_string)
                };
                let num = |name: &str| attr(name).unwrap().parse::<f64>().unwrap();
                (
                    num("x"),
                    num("y"),
                    attr("text-anchor").unwrap_or_default(),
                    content,
                )
            })
            .collect()
    }

    /// The y labels of the panel whose left edge is at `left`, top to bottom.
    fn y_labels(svg: &str, left: f64, top: f64, bottom: f64) -> Vec<String> {
        texts(svg)
            .into_iter()
            .filter(|(x, y, a, _)| *x == left - 5.0 && a == "end" && *y > top && *y < bottom + 5.0)
            .map(|t| t.3)
            .collect()
    }

    /// The x labels of the panel `left..right` whose bottom edge is `bottom`.
    fn x_labels(svg: &str, left: f64, right: f64, bottom: f64) -> Vec<(f64, String)> {
        texts(svg)
            .into_iter()
            .filter(|(x, y, a, _)| {
                *y == bottom + 15.0 && a == "middle" && *x >= left && *x <= right
            })
            .map(|t| (t.0, t.3))
            .collect()
    }

    /// The longest run of consecutive ASCII digits in `s`.
    fn digit_run(s: &str) -> usize {
        s.split(|c: char| !c.is_ascii_digit())
            .map(str::len)
            .max()
            .unwrap_or(0)
    }

    #[test]
    fn huge_and_tiny_values_get_short_labels_inside_the_margin() {
        for base in [8.033589e11, 1e30, -1e30, 1e300, 1e308, -1e308, 2.5e-7] {
            let records: Vec<Record> = (1..=30)
                .map(|s| train(s, base * (1.0 + 0.01 * s as f64)))
                .collect();
            let svg = training_curve_svg(&records, "run", None);
            check_xml(&svg);
            no_bad_numbers(&svg);
            let labels = y_labels(&svg, 70.0, 50.0, 300.0);
            assert!(labels.len() >= 2, "{base}: {labels:?}");
            let mut seen = std::collections::HashSet::new();
            for l in &labels {
                // About 6.2 px a character at 11 px: 10 fit in the 65 px margin.
                assert!(l.chars().count() <= 10, "{base}: {l:?} is too long");
                assert!(l.parse::<f64>().is_ok_and(f64::is_finite), "{base}: {l:?}");
                assert!(seen.insert(l.clone()), "{base}: duplicate label {l:?}");
            }
            for (_, _, _, content) in texts(&svg) {
                assert!(digit_run(&content) <= 6, "{base}: {content:?}");
            }
            // The legend's last total is compact and close to the true value.
            let total = svg
                .split(">total</text>")
                .nth(1)
                .and_then(|t| t.split("</text>").next())
                .and_then(|t| t.rsplit('>').next())
                .unwrap();
            let last = base * 1.3;
            let shown: f64 = total.parse().unwrap();
            assert!(
                ((shown - last) / last).abs() < 1e-3,
                "{base}: legend {total:?} for {last}"
            );
            assert!(total.len() <= 9, "{base}: legend {total:?}");
        }
        let huge = training_curve_svg(&[train(1, 8.033589e11)], "run", None);
        assert!(huge.contains(">8.034e11<"), "{huge}");
    }

    #[test]
    fn few_steps_give_distinct_integer_x_ticks() {
        for steps in 1..=25u64 {
            let mut records: Vec<Record> = (1..=steps).map(|s| train(s, 1.0)).collect();
            records.push(val(steps, 50.0));
            let svg = training_curve_svg(&records, "run", None);
            check_xml(&svg);
            no_bad_numbers(&svg);
            for (left, right, bottom) in [
                (70.0, 600.0, 300.0),
                (70.0, 600.0, 460.0),
                (680.0, 880.0, 300.0),
            ] {
                let labels = x_labels(&svg, left, right, bottom);
                assert!(labels.len() >= 2, "{steps} steps: {labels:?}");
                let values: Vec<u64> = labels
                    .iter()
                    .map(|(_, l)| {
                        l.parse().unwrap_or_else(|_| {
                            panic!("{steps} steps: x tick {l:?} is not an integer")
                        })
                    })
                    .collect();
                assert_eq!(values[0], 0, "{steps} steps");
                assert!(
                    *values.last().unwrap() <= steps,
                    "{steps} steps: {values:?}"
                );
                assert!(
                    values.windows(2).all(|w| w[0] < w[1]),
                    "{steps} steps: {values:?}"
                );
                assert!(
                    labels.windows(2).all(|w| w[0].0 < w[1].0),
                    "{steps} steps: {labels:?}"
                );
            }
        }
    }

    #[test]
    fn write_curve_replaces_the_file() {
        let dir = std::env::temp_dir().join(format!("calico-train-curve-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = write_curve(&dir, &[], None).unwrap();
        assert_eq!(p, dir.join(CURVE_FILE));
        let p = write_curve(&dir, &run(60), None).unwrap();
        let svg = std::fs::read_to_string(&p).unwrap();
        check_xml(&svg);
        let leftovers: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(leftovers.len(), 1, "{leftovers:?}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
