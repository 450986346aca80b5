//! The documentation's cross-references resolve: every relative Markdown
//! link names a file that exists, and every section named by its title —
//! `docs/training.md, "Run directory"` or `docs/training.md ("Run
//! directory")` in the docs, code comments and tools, `("Run directory",
//! below)` inside a Markdown file — is a heading of that file (the title may
//! stop early, e.g. "Ablations" for "Ablations (Table 2's rows)"); and
//! every `calico …` command the docs show names a subcommand and flags that
//! the binary has.

use regex::Regex;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;

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
    // Each cited file's headings, read once.
    let mut known: HashMap<PathBuf, Vec<String>> = HashMap::new();
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
                Some(target)
                    if !names_a_heading(
                        title,
                        known
                            .entry(target.clone())
                            .or_insert_with(|| headings(&target)),
                    ) =>
                {
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

/// The `calico …` commands of a Markdown file: shell blocks' lines (joined
/// over trailing backslashes) and inline code spans, from `calico` on.
fn shown_commands(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut fenced = None::<bool>;
    let mut pending = String::new();
    for line in text.lines() {
        if line.starts_with("```") {
            fenced = match fenced {
                None => Some(line.starts_with("```sh") || line.starts_with("```bash")),
                Some(_) => None,
            };
            continue;
        }
        match fenced {
            Some(true) => {
                let line = line.split(" # ").next().unwrap_or_default();
                pending.push_str(line.trim_end_matches('\\'));
                pending.push(' ');
                if !line.trim_end().ends_with('\\') {
                    out.push(std::mem::take(&mut pending));
                }
            }
            Some(false) => {}
            None => {
                for span in line.split('`').skip(1).step_by(2) {
                    out.push(span.to_string());
                }
            }
        }
    }
    out.into_iter()
        .filter_map(|c| {
            let words: Vec<&str> = c.split_whitespace().collect();
            let at = words.iter().position(|w| *w == "calico" || *w == "$B")?;
            let rest = &words[at + 1..];
            // Prose like "calico train's" or a bare "calico" names no command.
            let first = rest.first()?;
            first
                .chars()
                .all(|ch| ch.is_ascii_lowercase() || ch == '-')
                .then(|| rest.join(" "))
        })
        .collect()
}

/// `calico PATH --help`, cached; `None` when PATH is no command.
fn help<'a>(cache: &'a mut HashMap<String, Option<String>>, path: &[&str]) -> Option<&'a str> {
    let key = path.join(" ");
    cache
        .entry(key)
        .or_insert_with(|| {
            let o = Command::new(env!("CARGO_BIN_EXE_calico"))
                .args(path)
                .arg("--help")
                .output()
                .expect("run calico");
            o.status
                .success()
                .then(|| String::from_utf8_lossy(&o.stdout).into_owned())
        })
        .as_deref()
}

/// The subcommand names a help text lists under `Commands:`.
fn subcommands(help: &str) -> Vec<String> {
    help.split("Commands:")
        .nth(1)
        .map(|rest| {
            rest.lines()
                .skip(1)
                .take_while(|l| l.starts_with("  "))
                .filter_map(|l| l.split_whitespace().next().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn every_command_the_docs_show_exists_with_its_flags() {
    let root = repo_root();
    let mut docs = vec![
        root.join("README.md"),
        root.join("assets/demo-model/README.md"),
    ];
    let mut in_docs: Vec<PathBuf> = std::fs::read_dir(root.join("docs"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "md"))
        .collect();
    in_docs.sort();
    docs.extend(in_docs);

    let flag = Regex::new(r"^--[a-z][a-z0-9-]*").unwrap();
    let mut cache = HashMap::new();
    let mut problems = Vec::new();
    let mut checked = 0;
    for doc in &docs {
        let text = std::fs::read_to_string(doc).unwrap();
        let shown = doc.strip_prefix(&root).unwrap_or(doc).display().to_string();
        for command in shown_commands(&text) {
            let words: Vec<&str> = command.split_whitespace().collect();
            // The subcommand path: words while the current command has subcommands.
            let mut path: Vec<&str> = Vec::new();
            let mut rest = &words[..];
            while let Some(h) = help(&mut cache, &path) {
                let subs = subcommands(h);
                match rest.first() {
                    Some(w) if !subs.is_empty() && !w.starts_with('-') => {
                        if !subs.iter().any(|s| s == w) {
                            problems.push(format!(
                                "{shown}: `calico {command}`: `calico {}` has no subcommand {w}",
                                path.join(" ")
                            ));
                            path.clear();
                            break;
                        }
                        path.push(w);
                        rest = &rest[1..];
                    }
                    _ => break,
                }
            }
            if path.is_empty() {
                continue;
            }
            checked += 1;
            let h = help(&mut cache, &path).unwrap_or_default().to_string();
            for w in rest {
                let w = w.trim_start_matches(['[', '(']);
                let Some(m) = flag.find(w) else {
                    continue;
                };
                let name = m.as_str();
                let listed = h
                    .split(|c: char| c.is_whitespace() || c == ',')
                    .any(|t| t == name);
                if !listed {
                    problems.push(format!(
                        "{shown}: `calico {command}`: `calico {}` has no flag {name}",
                        path.join(" ")
                    ));
                }
            }
        }
    }
    assert!(checked > 30, "only {checked} commands found in the docs");
    assert!(
        problems.is_empty(),
        "{} commands the binary does not take:\n{}",
        problems.len(),
        problems.join("\n")
    );
}
