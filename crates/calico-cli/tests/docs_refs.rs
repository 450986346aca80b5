//! The documentation's cross-references resolve: every relative Markdown
//! link names a file that exists, and every section named by its title —
//! `docs/training.md, "Run directory"` or `docs/training.md ("Run
//! directory")` in the docs, code comments and tools, `("Run directory",
//! below)` inside a Markdown file — is a heading of that file (the title may
//! stop early, e.g. "Ablations" for "Ablations (Table 2's rows)").

use regex::Regex;
use std::path::{Path, PathBuf};

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Files that may hold references: Markdown, Rust, Python and shell,
/// outside build outputs, caches and fetched models.
fn scanned_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        if path.is_dir() {
            if !name.starts_with('.')
                && !["target", "models", "node_modules", "out"].contains(&name.as_str())
            {
                scanned_files(&path, out);
            }
        } else if ["md", "rs", "py", "sh"]
            .iter()
            .any(|ext| path.extension().is_some_and(|e| e == *ext))
        {
            out.push(path);
        }
    }
}

/// The file's text as one line: comment markers at line starts dropped, so
/// that a reference broken over comment lines reads whole.
fn flattened(path: &Path, text: &str) -> String {
    let markdown = path.extension().is_some_and(|e| e == "md");
    text.lines()
        .map(|line| {
            let t = line.trim_start();
            if markdown {
                return t;
            }
            for marker in ["//!", "///", "//", "#"] {
                if let Some(rest) = t.strip_prefix(marker) {
                    return rest.trim_start();
                }
            }
            t
        })
        .collect::<Vec<_>>()
        .join(" ")
}

fn headings(path: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let mut fenced = false;
    let mut out = Vec::new();
    for line in text.lines() {
        if line.starts_with("```") {
            fenced = !fenced;
        } else if !fenced && line.starts_with('#') {
            out.push(line.trim_start_matches('#').trim().to_string());
        }
    }
    out
}

/// Whether `title` is a heading of `headings`, or the start of one up to a
/// word boundary.
fn names_a_heading(title: &str, headings: &[String]) -> bool {
    headings.iter().any(|h| {
        h == title
            || h.strip_prefix(title)
                .is_some_and(|rest| rest.starts_with([' ', ':', '(', ',']))
    })
}

/// The Markdown file a reference names: next to the referring file if it
/// is there, else from the repository root, else in docs/.
fn resolve(root: &Path, from: &Path, name: &str) -> Option<PathBuf> {
    let candidates = [
        from.parent().unwrap_or(root).join(name),
        root.join(name),
        root.join("docs").join(name),
    ];
    candidates.into_iter().find(|p| p.is_file())
}

#[test]
fn every_cross_reference_names_an_existing_file_and_heading() {
    let root = repo_root();
    let mut files = Vec::new();
    scanned_files(&root, &mut files);
    files.sort();
    assert!(
        files.len() > 50,
        "only {} files found under {}",
        files.len(),
        root.display()
    );

    let section_ref =
        Regex::new(r#"((?:[\w.-]+/)*[\w-]+\.md)(?:,\s*|\s*\(\s*)"([^"]{3,120})""#).unwrap();
    let local_ref = Regex::new(r#""([^"]{3,120})",\s*(?:above|below)\b"#).unwrap();
    let link = Regex::new(r"\]\(([^)\s]+)\)").unwrap();

    let mut problems = Vec::new();
    let mut checked = 0;
    for file in &files {
        let Ok(text) = std::fs::read_to_string(file) else {
            continue;
        };
        let shown = file
            .strip_prefix(&root)
            .unwrap_or(file)
            .display()
            .to_string();
        let flat = flattened(file, &text);
        let mut cited = Vec::new();
        for c in section_ref.captures_iter(&flat) {
            let (name, title) = (&c[1], &c[2]);
            cited.push(c.get(0).unwrap().range());
            checked += 1;
            match resolve(&root, file, name) {
                None => problems.push(format!("{shown}: {name} does not exist")),
                Some(target) if !names_a_heading(title, &headings(&target)) => {
                    problems.push(format!("{shown}: {name} has no section \"{title}\""))
                }
                Some(_) => {}
            }
        }
        let markdown = file.extension().is_some_and(|e| e == "md");
        if !markdown {
            continue;
        }
        let own = headings(file);
        for c in local_ref.captures_iter(&flat) {
            let whole = c.get(0).unwrap().range();
            if cited
                .iter()
                .any(|r| r.start < whole.end && whole.start < r.end)
            {
                continue;
            }
            checked += 1;
            if !names_a_heading(&c[1], &own) {
                problems.push(format!("{shown}: no section \"{}\" in this file", &c[1]));
            }
        }
        for c in link.captures_iter(&flat) {
            let target = c[1].split('#').next().unwrap_or_default();
            if target.is_empty() || target.contains("://") || target.starts_with("mailto:") {
                continue;
            }
            checked += 1;
            if !file.parent().unwrap_or(&root).join(target).exists() {
                problems.push(format!("{shown}: the link to {target} leads nowhere"));
            }
        }
    }
    assert!(checked > 20, "only {checked} references found");
    assert!(
        problems.is_empty(),
        "{} stale references:\n{}",
        problems.len(),
        problems.join("\n")
    );
}
