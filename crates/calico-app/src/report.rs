//! A single self-contained HTML report: the training curve, the Table 5
//! metrics of an evaluation and a gallery of overlays with their answers
//! and legends. Images are inlined as base64 data URIs; no external
//! resources, no scripts.

use std::fmt::Write as _;
use std::path::Path;

use base64::Engine as _;
use serde_json::Value;

use crate::error::{AppError, Result};
use crate::overlay::{label_key, LegendEntry};

/// One gallery entry: a set of images answered together.
#[derive(Debug, Clone, Default)]
pub struct GalleryItem {
    pub title: String,
    pub question: String,
    pub answer: String,
    pub legend: Vec<LegendEntry>,
    /// `(name, PNG bytes)` per overlay.
    pub overlays: Vec<(String, Vec<u8>)>,
    /// E.g. which model answered.
    pub note: Option<String>,
}

/// Everything the report shows; absent parts are left out.
#[derive(Debug, Clone, Default)]
pub struct ReportInput {
    pub title: String,
    /// Lines under the title (run directory, model, …).
    pub notes: Vec<String>,
    /// The training curve (RUN/curve.svg).
    pub curve_svg: Option<String>,
    /// The last record of RUN/metrics.jsonl, shown as a small table.
    pub last_metrics: Option<Value>,
    /// An evaluation report as written by `calico eval --out`.
    pub eval: Option<Value>,
    pub gallery: Vec<GalleryItem>,
}

/// HTML-escapes text.
pub fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;")
}

/// A `data:` URI.
pub fn data_uri(mime: &str, bytes: &[u8]) -> String {
    format!(
        "data:{mime};base64,{}",
        base64::engine::general_purpose::STANDARD.encode(bytes)
    )
}

const STYLE: &str = "\
body{font-family:system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;margin:0;color:#1d1d1f;background:#f6f7f9;line-height:1.45}\
main{max-width:1100px;margin:0 auto;padding:24px}\
h1{font-size:1.7em;margin:.2em 0}h2{font-size:1.25em;margin:1.6em 0 .6em;border-bottom:1px solid #dde;padding-bottom:.2em}\
.note{color:#666;margin:.2em 0}.card{background:#fff;border:1px solid #e2e4e8;border-radius:8px;padding:16px;margin:12px 0}\
table{border-collapse:collapse;margin:.6em 0;font-variant-numeric:tabular-nums}td,th{border:1px solid #dde;padding:4px 10px;text-align:right}\
th{background:#f0f2f5}th:first-child,td:first-child{text-align:left}tr.avg{font-weight:600;background:#f7f7fa}caption{text-align:left;font-weight:600;padding:4px 0}\
.curve img{max-width:100%;height:auto}.overlays{display:grid;grid-template-columns:repeat(auto-fit,minmax(300px,1fr));gap:12px}.overlays figure{margin:0}\
.overlays img{width:100%;height:auto;border:1px solid #ccc;border-radius:4px;image-rendering:pixelated}figcaption{font-size:.85em;color:#555}\
.answer{font-family:ui-monospace,Menlo,Consolas,monospace;background:#f4f5f7;border-radius:4px;padding:8px;white-space:pre-wrap;word-break:break-word}\
.label{border-radius:3px;padding:0 4px;font-weight:600}.legend{list-style:none;padding:0;display:flex;flex-wrap:wrap;gap:6px 16px}\
.swatch{display:inline-block;width:.9em;height:.9em;border:1px solid #333;vertical-align:-.1em;margin-right:.35em}\
.untrained{color:#a00;font-weight:600}";

fn task_title(task: &str) -> String {
    match task {
        "common_object" => "Common Object".into(),
        "common_parts" => "Common Parts".into(),
        "unique_parts" => "Unique Parts".into(),
        "identify_objects" => "Identify Objects".into(),
        other => other.into(),
    }
}

fn num(v: Option<&Value>) -> String {
    match v.and_then(Value::as_f64) {
        Some(x) if x.fract() == 0.0 && x.abs() < 1e15 && x >= 1.0 => format!("{x:.0}"),
        Some(x) => format!("{x:.1}"),
        None => "–".into(),
    }
}

const COLS: [(&str, &str); 9] = [
    ("ap50", "AP50"),
    ("miou", "mIoU"),
    ("recall", "Recall"),
    ("ss", "SS"),
    ("s_iou", "S-IoU"),
    ("miou_strict", "mIoU (strict)"),
    ("images", "images"),
    ("gt_masks", "GT masks"),
    ("pred_masks", "predicted"),
];

fn scores_row(h: &mut String, name: &str, s: &Value, class: &str) {
    let _ = write!(h, "<tr{class}><td>{}</td>", esc(name));
    for (k, _) in COLS {
        let v = s.get(k);
        let text = if k.ends_with('s') && k != "ss" {
            v.and_then(Value::as_u64)
                .map(|n| n.to_string())
                .unwrap_or_else(|| num(v))
        } else {
            v.and_then(Value::as_f64)
                .map(|x| format!("{x:.1}"))
                .unwrap_or_else(|| "–".into())
        };
        let _ = write!(h, "<td>{text}</td>");
    }
    h.push_str("</tr>");
}

/// One Table 5 table (a row per task, then the average) of a `TaskTable`
/// JSON value.
fn task_table(h: &mut String, caption: &str, t: &Value) {
    let _ = write!(
        h,
        "<table><caption>{}</caption><tr><th>Task</th>",
        esc(caption)
    );
    for (_, title) in COLS {
        let _ = write!(h, "<th>{title}</th>");
    }
    h.push_str("</tr>");
    if let Some(tasks) = t.get("tasks").and_then(Value::as_object) {
        for (task, s) in tasks {
            scores_row(h, &task_title(task), s, "");
        }
    }
    if let Some(avg) = t.get("average") {
        scores_row(h, "Average", avg, " class=\"avg\"");
    }
    h.push_str("</table>");
}

/// The metrics tables of an evaluation report (`calico eval --out`).
pub fn eval_tables_html(eval: &Value) -> String {
    let mut h = String::new();
    if let Some(o) = eval.get("overall") {
        task_table(&mut h, "All sources (percent)", o);
    }
    if let Some(by) = eval.get("by_source").and_then(Value::as_object) {
        if by.len() > 1 {
            for (src, t) in by {
                task_table(&mut h, &format!("Source: {src}"), t);
            }
        }
    }
    let get = |k: &str| eval.get(k).map(|v| v.to_string()).unwrap_or_default();
    let _ = write!(
        h,
        "<p class=\"note\">{} samples, {} predictions, {} missing; text similarity: {}.</p>",
        get("samples"),
        get("predictions"),
        eval.get("missing_predictions")
            .and_then(Value::as_array)
            .map_or(0, Vec::len),
        esc(eval.get("embedder").and_then(Value::as_str).unwrap_or("?"))
    );
    h
}

/// The answer with each `<p> phrase </p>` shown in its legend colour.
pub fn answer_html(answer: &str, legend: &[LegendEntry]) -> String {
    let mut out = String::new();
    let mut rest = answer;
    while let Some(open) = rest.find("<p>") {
        let Some(close) = rest[open..].find("</p>") else {
            break;
        };
        out.push_str(&esc(&rest[..open]));
        let phrase = &rest[open + 3..open + close];
        let key = label_key(phrase);
        match legend.iter().find(|e| e.label == key) {
            Some(e) => {
                let _ = write!(
                    out,
                    "<span class=\"label\" style=\"background:{}33;border-bottom:3px solid {}\">&lt;p&gt;{}&lt;/p&gt;</span>",
                    e.colour,
                    e.colour,
                    esc(phrase)
                );
            }
            None => out.push_str(&esc(&rest[open..open + close + 4])),
        }
        rest = &rest[open + close + 4..];
    }
    out.push_str(&esc(rest));
    out
}

fn gallery_html(h: &mut String, g: &GalleryItem) {
    let _ = write!(h, "<div class=\"card\"><h3>{}</h3>", esc(&g.title));
    if let Some(n) = &g.note {
        let class = if n.contains("UNTRAINED") {
            "note untrained"
        } else {
            "note"
        };
        let _ = write!(h, "<p class=\"{class}\">{}</p>", esc(n));
    }
    let _ = write!(
        h,
        "<p><b>Question:</b> {}</p><p><b>Answer:</b></p><div class=\"answer\">{}</div>",
        esc(&g.question),
        answer_html(&g.answer, &g.legend)
    );
    if !g.legend.is_empty() {
        h.push_str("<ul class=\"legend\">");
        for e in &g.legend {
            let _ = write!(
                h,
                "<li><span class=\"swatch\" style=\"background:{}\"></span>{}</li>",
                esc(&e.colour),
                esc(&e.label)
            );
        }
        h.push_str("</ul>");
    }
    h.push_str("<div class=\"overlays\">");
    for (name, png) in &g.overlays {
        let _ = write!(
            h,
            "<figure><img alt=\"{}\" src=\"{}\"><figcaption>{}</figcaption></figure>",
            esc(name),
            data_uri("image/png", png),
            esc(name)
        );
    }
    h.push_str("</div></div>");
}

/// Renders the report.
pub fn render_html(r: &ReportInput) -> String {
    let title = if r.title.is_empty() {
        "Calico report"
    } else {
        &r.title
    };
    let mut h = String::new();
    let _ = write!(
        h,
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">\
         <title>{}</title><style>{STYLE}</style></head><body><main><h1>{}</h1>",
        esc(title),
        esc(title)
    );
    for n in &r.notes {
        let _ = write!(h, "<p class=\"note\">{}</p>", esc(n));
    }
    if r.curve_svg.is_some() || r.last_metrics.is_some() {
        h.push_str("<h2 id=\"training\">Training</h2>");
    }
    if let Some(svg) = &r.curve_svg {
        let _ = write!(
            h,
            "<div class=\"card curve\"><img alt=\"training curve\" src=\"{}\"></div>",
            data_uri("image/svg+xml", svg.as_bytes())
        );
    }
    if let Some(Value::Object(m)) = &r.last_metrics {
        h.push_str("<table><caption>Last training record</caption>");
        for (k, v) in m {
            let text = match v {
                Value::Number(n) => n
                    .as_f64()
                    .map(|x| {
                        if x.fract() == 0.0 {
                            format!("{x:.0}")
                        } else {
                            format!("{x:.4}")
                        }
                    })
                    .unwrap_or_default(),
                other => other.to_string(),
            };
            let _ = write!(h, "<tr><td>{}</td><td>{}</td></tr>", esc(k), esc(&text));
        }
        h.push_str("</table>");
    }
    if let Some(e) = &r.eval {
        h.push_str("<h2 id=\"metrics\">Metrics (Table 5)</h2><div class=\"card\">");
        h.push_str(&eval_tables_html(e));
        h.push_str("</div>");
    }
    if !r.gallery.is_empty() {
        h.push_str("<h2 id=\"gallery\">Segmentations</h2>");
        for g in &r.gallery {
            gallery_html(&mut h, g);
        }
    }
    h.push_str("</main></body></html>\n");
    h
}

/// Reads `RUN/curve.svg` and the last record of `RUN/metrics.jsonl`
/// (either may be absent).
pub fn read_run(dir: &Path) -> Result<(Option<String>, Option<Value>)> {
    if !dir.is_dir() {
        return Err(AppError::Input(format!(
            "{}: no such run directory",
            dir.display()
        )));
    }
    let curve = std::fs::read_to_string(dir.join("curve.svg")).ok();
    // The last training record (validation records are the curve's).
    let last = std::fs::read_to_string(dir.join("metrics.jsonl"))
        .ok()
        .and_then(|t| {
            t.lines()
                .rev()
                .filter_map(|l| serde_json::from_str::<Value>(l).ok())
                .find(|v| v.get("kind").and_then(Value::as_str) != Some("val"))
        });
    Ok((curve, last))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_has_curve_table_and_gallery_inline() {
        let eval = serde_json::json!({
            "overall": {"tasks": {"common_parts": {"ap50": 12.5, "miou": 40.0, "miou_strict": 30.0,
                "recall": 20.0, "ss": 50.0, "s_iou": 33.3, "images": 4, "gt_masks": 8, "pred_masks": 6}},
                "average": {"ap50": null, "miou": 40.0, "miou_strict": 30.0, "recall": 20.0,
                "ss": 50.0, "s_iou": 33.3, "images": 4, "gt_masks": 8, "pred_masks": 6}},
            "by_source": {}, "samples": 2, "predictions": 2, "missing_predictions": [],
            "embedder": "exact"
        });
        let legend = vec![LegendEntry {
            label: "the lid".into(),
            colour: "#e6194b".into(),
            rgb: [230, 25, 75],
        }];
        let r = ReportInput {
            title: "T <1>".into(),
            curve_svg: Some("<svg xmlns=\"http://www.w3.org/2000/svg\"></svg>".into()),
            eval: Some(eval),
            gallery: vec![GalleryItem {
                title: "pair".into(),
                question: "Q?".into(),
                answer: "It is <p> the lid </p> [SEG] (IMAGE1).".into(),
                legend,
                overlays: vec![("a.png".into(), vec![1, 2, 3])],
                note: Some("UNTRAINED".into()),
            }],
            ..Default::default()
        };
        let h = render_html(&r);
        assert!(h.contains("<title>T &lt;1&gt;</title>"));
        assert!(h.contains("data:image/svg+xml;base64,"));
        assert!(h.contains("<td>Common Parts</td><td>12.5</td><td>40.0</td>"));
        assert!(h.contains("<td>Average</td><td>–</td>"));
        assert!(h.contains("data:image/png;base64,AQID"));
        assert!(h.contains("border-bottom:3px solid #e6194b\">&lt;p&gt; the lid &lt;/p&gt;"));
        assert!(h.contains("class=\"note untrained\""));
        assert!(!h.contains("src=\"http") && !h.contains("href=\"http"));
        assert!(!h.contains("<script"));
    }
}
