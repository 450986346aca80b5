//! Comparable category pairs: which object classes may be compared.
//!
//! The paper (appendix A) keeps pairs of classes that share at least one
//! part label *and* are intuitively comparable (a chair and an ottoman, not a
//! bus and a microwave). We ship curated groups derived from Table 6
//! (`data/comparable_groups.json`); users can replace them with a file of the
//! same shape:
//!
//! ```json
//! {"groups": {"seating": ["chair", "stool", "ottoman"]}, "pairs": [["bird", "airplane"]]}
//! ```
//!
//! Within a group every two classes are comparable; `pairs` adds explicit
//! pairs. A class is always comparable with itself. Whether a pair shares a
//! part is decided per image pair by the builder.

use crate::error::{DataError, Result};
use serde::Deserialize;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

const DEFAULT: &str = include_str!("../../data/comparable_groups.json");

#[derive(Deserialize)]
struct PairFile {
    #[serde(default)]
    groups: BTreeMap<String, Vec<String>>,
    #[serde(default)]
    pairs: Vec<[String; 2]>,
}

/// A symmetric relation "class A may be compared with class B".
#[derive(Clone, Debug, Default)]
pub struct ComparablePairs {
    pairs: BTreeSet<(String, String)>,
}

impl ComparablePairs {
    /// The curated default list.
    pub fn default_list() -> Self {
        Self::parse(DEFAULT, Path::new("<built-in comparable_groups.json>")).unwrap_or_default()
    }

    /// Reads a user file (`{"groups": {…}, "pairs": [[a, b], …]}`).
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| DataError::io(path, e))?;
        Self::parse(&text, path)
    }

    fn parse(text: &str, path: &Path) -> Result<Self> {
        let file: PairFile =
            serde_json::from_str(text).map_err(|e| DataError::json(path, "pair list", e))?;
        let mut out = ComparablePairs::default();
        for (name, members) in &file.groups {
            let members: Vec<String> = members.iter().map(|m| crate::normalise_name(m)).collect();
            if members.iter().any(|m| m.is_empty()) {
                return Err(DataError::invalid(
                    path,
                    format!("groups.{name}"),
                    "empty category name",
                ));
            }
            for a in &members {
                for b in &members {
                    out.insert(a, b);
                }
            }
        }
        for (k, [a, b]) in file.pairs.iter().enumerate() {
            let (a, b) = (crate::normalise_name(a), crate::normalise_name(b));
            if a.is_empty() || b.is_empty() {
                return Err(DataError::invalid(
                    path,
                    format!("pairs[{k}]"),
                    "empty category name",
                ));
            }
            out.insert(&a, &b);
        }
        Ok(out)
    }

    fn insert(&mut self, a: &str, b: &str) {
        let (x, y) = if a <= b { (a, b) } else { (b, a) };
        self.pairs.insert((x.to_string(), y.to_string()));
    }

    /// Whether `a` and `b` are comparable (always true when equal).
    pub fn contains(&self, a: &str, b: &str) -> bool {
        if a == b {
            return true;
        }
        let (x, y) = if a <= b { (a, b) } else { (b, a) };
        self.pairs.contains(&(x.to_string(), y.to_string()))
    }

    /// Number of distinct unordered pairs of different classes.
    pub fn len(&self) -> usize {
        self.pairs.iter().filter(|(a, b)| a != b).count()
    }

    /// Whether no pair of different classes is listed.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_list_pairs_seating_furniture_but_not_bus_and_microwave() {
        let p = ComparablePairs::default_list();
        assert!(p.contains("chair", "ottoman") && p.contains("ottoman", "chair"));
        assert!(p.contains("bird", "airplane"));
        assert!(p.contains("microwave", "microwave"));
        assert!(!p.contains("bus", "microwave"));
        assert!(p.len() > 300);
    }

    #[test]
    fn user_file_groups_and_pairs() {
        let text = r#"{"groups": {"g": ["Chair", "stool"]}, "pairs": [["bird", "airplane"]]}"#;
        let p = ComparablePairs::parse(text, Path::new("x.json")).unwrap();
        assert!(p.contains("chair", "stool") && p.contains("airplane", "bird"));
        assert!(!p.contains("chair", "bird"));
        let err = ComparablePairs::parse("{\"groups\": 3}", Path::new("x.json")).unwrap_err();
        assert!(err.to_string().contains("x.json"), "{err}");
    }
}
