//! The report as text (the layout of the paper's Table 5), JSON and HTML.

use crate::evaluate::{Report, Scores, TaskTable, TASKS};
use calico_data::stats::xml_escape as esc;
use std::fmt::Write as _;

fn task_title(task: &str) -> &str {
    match task {
        "common_object" => "Common Object",
        "common_parts" => "Common Parts",
        "unique_parts" => "Unique Parts",
        other => other,
    }
}

fn one(v: f64) -> String {
    format!("{v:.1}")
}

fn ap(s: &Scores) -> String {
    s.ap50.map_or_else(|| "–".to_string(), one)
}

fn rows(t: &TaskTable) -> Vec<(String, &Scores)> {
    let mut out: Vec<(String, &Scores)> = TASKS
        .iter()
        .filter_map(|task| {
            t.tasks
                .get(*task)
                .map(|s| (task_title(task).to_string(), s))
        })
        .collect();
    out.push(("Average".to_string(), &t.average));
    out
}

fn text_table(out: &mut String, title: &str, t: &TaskTable) {
    let _ = writeln!(out, "{title}");
    let _ = writeln!(
        out,
        "{:<15} {:>6} {:>6} {:>7} {:>6} {:>6}   {:>7} {:>7} {:>7}",
        "Task", "AP50", "mIoU", "Recall", "SS", "S-IoU", "images", "GT", "pred"
    );
    for (name, s) in rows(t) {
        let _ = writeln!(
            out,
            "{:<15} {:>6} {:>6} {:>7} {:>6} {:>6}   {:>7} {:>7} {:>7}",
            name,
            ap(s),
            one(s.miou),
            one(s.recall),
            one(s.ss),
            one(s.s_iou),
            s.images,
            s.gt_masks,
            s.pred_masks
        );
    }
}

impl Report {
    /// Plain text: the overall table, then one per source, then notes.
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        text_table(&mut out, "All sources (percent)", &self.overall);
        for (src, t) in &self.by_source {
            let _ = writeln!(out);
            text_table(&mut out, &format!("Source {src}"), t);
        }
        let _ = writeln!(out);
        let _ = writeln!(
            out,
            "{} samples, {} predictions, {} missing (scored as empty), {} skipped; text similarity: {}",
            self.samples,
            self.predictions,
            self.missing_predictions.len(),
            self.skipped.len(),
            self.embedder
        );
        let _ = writeln!(
            out,
            "strict mIoU (unmatched ground truth counts 0): {}",
            rows(&self.overall)
                .iter()
                .map(|(n, s)| format!("{n} {}", one(s.miou_strict)))
                .collect::<Vec<_>>()
                .join(", ")
        );
        out
    }

    /// A self-contained HTML page with the same tables.
    pub fn to_html(&self) -> String {
        let mut h = String::new();
        h.push_str("<!doctype html><html><head><meta charset=\"utf-8\"><title>Calico evaluation</title><style>");
        h.push_str("body{font-family:sans-serif;margin:2em;color:#222}table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 10px;text-align:right}th:first-child,td:first-child{text-align:left}tr.avg{font-weight:bold;background:#f3f3f3}caption{text-align:left;font-weight:bold;padding:4px 0}.note{color:#666}");
        h.push_str("</style></head><body><h1>Calico evaluation</h1>");
        let _ = write!(
            h,
            "<p class=\"note\">Ground truth <code>{}</code>, predictions <code>{}</code>. Metrics in percent (paper appendix C.2); text similarity: {}.</p>",
            esc(&self.ground_truth.display().to_string()),
            esc(&self.predictions_file.display().to_string()),
            esc(&self.embedder)
        );
        html_table(&mut h, "All sources", &self.overall);
        for (src, t) in &self.by_source {
            html_table(&mut h, &format!("Source: {src}"), t);
        }
        let _ = write!(
            h,
            "<p>{} samples, {} predictions, {} missing (scored as empty), {} skipped.</p>",
            self.samples,
            self.predictions,
            self.missing_predictions.len(),
            self.skipped.len()
        );
        if !self.skipped.is_empty() {
            h.push_str("<details><summary>Skipped</summary><ul>");
            for s in self.skipped.iter().take(200) {
                let _ = write!(h, "<li>{}</li>", esc(s));
            }
            h.push_str("</ul></details>");
        }
        h.push_str("</body></html>\n");
        h
    }
}

fn html_table(h: &mut String, title: &str, t: &TaskTable) {
    let _ = write!(
        h,
        "<table><caption>{}</caption><tr><th>Task</th><th>AP50</th><th>mIoU</th><th>Recall</th><th>SS</th><th>S-IoU</th><th>mIoU (strict)</th><th>images</th><th>GT masks</th><th>predicted</th></tr>",
        esc(title)
    );
    for (name, s) in rows(t) {
        let class = if name == "Average" {
            " class=\"avg\""
        } else {
            ""
        };
        let _ = write!(
            h,
            "<tr{class}><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(&name),
            ap(s),
            one(s.miou),
            one(s.recall),
            one(s.ss),
            one(s.s_iou),
            one(s.miou_strict),
            s.images,
            s.gt_masks,
            s.pred_masks
        );
    }
    h.push_str("</table>");
}
