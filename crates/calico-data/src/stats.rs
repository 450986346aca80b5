//! Dataset statistics in the layout of the paper's appendix B / Table 3:
//! samples per source, task and split; instances of common objects, common
//! parts and unique parts (total, average, maximum, median per sample);
//! category counts; top-30 categories; and a bar chart.

use crate::samples::{MaskRole, Sample};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Write as _;

/// Per-role instance statistics (one row of Table 3).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct InstanceStats {
    /// Instances over all samples.
    pub total: u64,
    /// Samples with at least one instance of this role.
    pub samples: u64,
    /// Average instances per sample that has this role.
    pub average: f64,
    /// Maximum per sample.
    pub max: u64,
    /// Median per sample that has this role.
    pub median: f64,
}

/// A category and how many instances (masks) it has.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CategoryCount {
    /// Label.
    pub name: String,
    /// Number of masks.
    pub count: u64,
}

/// The whole statistics report (`stats.json`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct DatasetStats {
    /// Number of samples (image pairs).
    pub samples: u64,
    /// Samples per source.
    pub by_source: BTreeMap<String, u64>,
    /// Samples per task.
    pub by_task: BTreeMap<String, u64>,
    /// Samples per split.
    pub by_split: BTreeMap<String, u64>,
    /// Samples per source and task (`"paco_lvis/common_parts"`).
    pub by_source_task: BTreeMap<String, u64>,
    /// Object masks (common objects and the objects named before parts).
    pub objects: InstanceStats,
    /// Common-part masks.
    pub common_parts: InstanceStats,
    /// Unique-part masks.
    pub unique_parts: InstanceStats,
    /// Distinct object categories.
    pub object_categories: u64,
    /// Distinct part categories.
    pub part_categories: u64,
    /// Distinct (image, object label) pairs used.
    pub distinct_object_instances: u64,
    /// Distinct (image, part label) pairs used.
    pub distinct_part_instances: u64,
    /// The 30 most frequent object categories.
    pub top_objects: Vec<CategoryCount>,
    /// The 30 most frequent part categories.
    pub top_parts: Vec<CategoryCount>,
    /// The 30 most frequent common parts.
    pub top_common_parts: Vec<CategoryCount>,
    /// The 30 most frequent unique parts.
    pub top_unique_parts: Vec<CategoryCount>,
}

/// How many top categories the report lists.
pub const TOP: usize = 30;

#[derive(Default)]
struct RoleAcc {
    total: u64,
    histogram: BTreeMap<u64, u64>,
    labels: HashMap<String, u64>,
}

impl RoleAcc {
    fn add(&mut self, n: u64) {
        if n > 0 {
            self.total += n;
            *self.histogram.entry(n).or_default() += 1;
        }
    }

    fn finish(&self) -> InstanceStats {
        let samples: u64 = self.histogram.values().sum();
        let max = self.histogram.keys().next_back().copied().unwrap_or(0);
        InstanceStats {
            total: self.total,
            samples,
            average: if samples == 0 {
                0.0
            } else {
                self.total as f64 / samples as f64
            },
            max,
            median: median(&self.histogram, samples),
        }
    }
}

fn median(hist: &BTreeMap<u64, u64>, n: u64) -> f64 {
    if n == 0 {
        return 0.0;
    }
    let nth = |k: u64| {
        let mut seen = 0;
        for (&v, &c) in hist {
            seen += c;
            if seen > k {
                return v;
            }
        }
        0
    };
    if n % 2 == 1 {
        nth(n / 2) as f64
    } else {
        (nth(n / 2 - 1) + nth(n / 2)) as f64 / 2.0
    }
}

fn top(map: &HashMap<String, u64>) -> Vec<CategoryCount> {
    let mut v: Vec<CategoryCount> = map
        .iter()
        .map(|(name, &count)| CategoryCount {
            name: name.clone(),
            count,
        })
        .collect();
    v.sort_by(|a, b| b.count.cmp(&a.count).then_with(|| a.name.cmp(&b.name)));
    v.truncate(TOP);
    v
}

/// Accumulates statistics one sample at a time (memory grows with the number
/// of distinct images and labels, not with the number of samples).
#[derive(Default)]
pub struct StatsAccumulator {
    samples: u64,
    by_source: BTreeMap<String, u64>,
    by_task: BTreeMap<String, u64>,
    by_split: BTreeMap<String, u64>,
    by_source_task: BTreeMap<String, u64>,
    roles: BTreeMap<MaskRole, RoleAcc>,
    part_labels: HashMap<String, u64>,
    object_instances: HashSet<(String, String)>,
    part_instances: HashSet<(String, String)>,
}

impl StatsAccumulator {
    /// Adds one sample. Masks without a role count as objects in
    /// `common_object` samples and as parts of the sample's task otherwise,
    /// except that the first mask of each image in a part task is its object.
    pub fn add(&mut self, s: &Sample) {
        self.samples += 1;
        *self.by_source.entry(s.source.clone()).or_default() += 1;
        *self.by_task.entry(s.task.clone()).or_default() += 1;
        let split = s.split.clone().unwrap_or_else(|| "unsplit".into());
        *self.by_split.entry(split).or_default() += 1;
        *self
            .by_source_task
            .entry(format!("{}/{}", s.source, s.task))
            .or_default() += 1;
        let mut per_role: BTreeMap<MaskRole, u64> = BTreeMap::new();
        let mut object_seen = vec![false; s.images.len()];
        for m in &s.masks {
            let role = m
                .role
                .unwrap_or_else(|| infer_role(s, m.image, &mut object_seen));
            *per_role.entry(role).or_default() += 1;
            let acc = self.roles.entry(role).or_default();
            *acc.labels.entry(m.label.clone()).or_default() += 1;
            let file = s
                .images
                .get(m.image)
                .map(|i| i.file.clone())
                .unwrap_or_default();
            if role == MaskRole::Object {
                self.object_instances.insert((file, m.label.clone()));
            } else {
                *self.part_labels.entry(m.label.clone()).or_default() += 1;
                self.part_instances.insert((file, m.label.clone()));
            }
        }
        for role in [MaskRole::Object, MaskRole::CommonPart, MaskRole::UniquePart] {
            let n = per_role.get(&role).copied().unwrap_or(0);
            self.roles.entry(role).or_default().add(n);
        }
    }

    /// The finished report.
    pub fn finish(&self) -> DatasetStats {
        let role = |r: MaskRole| self.roles.get(&r);
        let stats = |r: MaskRole| role(r).map(RoleAcc::finish).unwrap_or_default();
        let labels = |r: MaskRole| role(r).map(|a| top(&a.labels)).unwrap_or_default();
        DatasetStats {
            samples: self.samples,
            by_source: self.by_source.clone(),
            by_task: self.by_task.clone(),
            by_split: self.by_split.clone(),
            by_source_task: self.by_source_task.clone(),
            objects: stats(MaskRole::Object),
            common_parts: stats(MaskRole::CommonPart),
            unique_parts: stats(MaskRole::UniquePart),
            object_categories: role(MaskRole::Object).map_or(0, |a| a.labels.len() as u64),
            part_categories: self.part_labels.len() as u64,
            distinct_object_instances: self.object_instances.len() as u64,
            distinct_part_instances: self.part_instances.len() as u64,
            top_objects: labels(MaskRole::Object),
            top_parts: top(&self.part_labels),
            top_common_parts: labels(MaskRole::CommonPart),
            top_unique_parts: labels(MaskRole::UniquePart),
        }
    }
}

fn infer_role(s: &Sample, image: usize, object_seen: &mut [bool]) -> MaskRole {
    if s.task == "common_object" {
        return MaskRole::Object;
    }
    if let Some(seen) = object_seen.get_mut(image) {
        if !*seen {
            *seen = true;
            return MaskRole::Object;
        }
    }
    if s.task == "unique_parts" {
        MaskRole::UniquePart
    } else {
        MaskRole::CommonPart
    }
}

fn thousands(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (k, c) in s.chars().enumerate() {
        if k > 0 && (s.len() - k).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

impl DatasetStats {
    /// A plain-text report: Table 3 plus counts and the top categories.
    pub fn to_table(&self) -> String {
        let mut t = String::new();
        let _ = writeln!(t, "samples (image pairs): {}", thousands(self.samples));
        for (name, map) in [
            ("by source", &self.by_source),
            ("by task", &self.by_task),
            ("by split", &self.by_split),
        ] {
            let items: Vec<String> = map
                .iter()
                .map(|(k, v)| format!("{k} {}", thousands(*v)))
                .collect();
            let _ = writeln!(t, "  {name}: {}", items.join(", "));
        }
        let _ = writeln!(t);
        let _ = writeln!(
            t,
            "{:<30} {:>16} {:>16} {:>16}",
            "Statistic", "Common Objects", "Common Parts", "Unique Parts"
        );
        let rows = [&self.objects, &self.common_parts, &self.unique_parts];
        let line = |t: &mut String, label: &str, f: &dyn Fn(&InstanceStats) -> String| {
            let _ = writeln!(
                t,
                "{label:<30} {:>16} {:>16} {:>16}",
                f(rows[0]),
                f(rows[1]),
                f(rows[2])
            );
        };
        line(&mut t, "Total # Instances", &|r| thousands(r.total));
        line(&mut t, "Average # Instances/Sample", &|r| {
            format!("{:.3}", r.average)
        });
        line(&mut t, "Maximum # Instances/Sample", &|r| r.max.to_string());
        line(&mut t, "Median # Instances/Sample", &|r| {
            format!("{}", r.median)
        });
        let _ = writeln!(t);
        let _ = writeln!(
            t,
            "object categories {}, part categories {}, distinct object instances {}, distinct part instances {}",
            self.object_categories,
            self.part_categories,
            thousands(self.distinct_object_instances),
            thousands(self.distinct_part_instances)
        );
        for (title, list) in [
            ("top object categories", &self.top_objects),
            ("top part categories", &self.top_parts),
            ("top common parts", &self.top_common_parts),
            ("top unique parts", &self.top_unique_parts),
        ] {
            let items: Vec<String> = list
                .iter()
                .take(10)
                .map(|c| format!("{} {}", c.name, thousands(c.count)))
                .collect();
            let _ = writeln!(
                t,
                "{title} (first 10 of {}): {}",
                list.len(),
                items.join(", ")
            );
        }
        t
    }

    /// An SVG with horizontal bar charts of the top object and part categories.
    pub fn to_svg(&self) -> String {
        let charts = [
            ("Top object categories", &self.top_objects),
            ("Top part categories", &self.top_parts),
            ("Top common parts", &self.top_common_parts),
            ("Top unique parts", &self.top_unique_parts),
        ];
        let (bar_h, label_w, bar_w, col_w) = (16.0, 150.0, 220.0, 460.0);
        let height = 40.0 + TOP as f64 * bar_h + 20.0;
        let mut s = String::new();
        let _ = write!(
            s,
            r#"<svg xmlns="http://www.w3.org/2000/svg" width="{}" height="{height}" font-family="sans-serif" font-size="11">"#,
            col_w * charts.len() as f64
        );
        let _ = write!(s, r#"<rect width="100%" height="100%" fill="white"/>"#);
        for (k, (title, list)) in charts.iter().enumerate() {
            let x0 = k as f64 * col_w + 10.0;
            let _ = write!(
                s,
                r#"<text x="{x0}" y="20" font-size="14" font-weight="bold">{}</text>"#,
                xml_escape(title)
            );
            let max = list.first().map_or(1, |c| c.count.max(1)) as f64;
            for (r, c) in list.iter().enumerate() {
                let y = 34.0 + r as f64 * bar_h;
                let w = bar_w * c.count as f64 / max;
                let _ = write!(
                    s,
                    r##"<text x="{}" y="{}" text-anchor="end">{}</text><rect x="{}" y="{y}" width="{w:.1}" height="{}" fill="#4e79a7"/><text x="{}" y="{}">{}</text>"##,
                    x0 + label_w - 4.0,
                    y + 11.0,
                    xml_escape(&c.name),
                    x0 + label_w,
                    bar_h - 3.0,
                    x0 + label_w + w + 3.0,
                    y + 11.0,
                    c.count
                );
            }
        }
        s.push_str("</svg>\n");
        s
    }
}

/// Escapes text for XML and HTML (`&`, `<`, `>`, `"`).
pub fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::samples::{SampleImage, SampleMask};
    use calico_masks::{CocoCounts, CocoRle};

    fn mask(image: usize, label: &str, role: Option<MaskRole>) -> SampleMask {
        SampleMask {
            image,
            label: label.into(),
            role,
            rle: CocoRle {
                size: [1, 1],
                counts: CocoCounts::Compressed("1".into()),
            },
        }
    }

    fn sample(task: &str, masks: Vec<SampleMask>) -> Sample {
        Sample {
            id: "x".into(),
            task: task.into(),
            source: "s".into(),
            split: Some("train".into()),
            images: vec![
                SampleImage {
                    file: "a".into(),
                    width: 1,
                    height: 1,
                },
                SampleImage {
                    file: "b".into(),
                    width: 1,
                    height: 1,
                },
            ],
            question: String::new(),
            answer: String::new(),
            masks,
        }
    }

    #[test]
    fn counts_roles_medians_and_tops() {
        let mut acc = StatsAccumulator::default();
        acc.add(&sample(
            "common_object",
            vec![mask(0, "chair", None), mask(1, "chair", None)],
        ));
        let o = Some(MaskRole::Object);
        let c = Some(MaskRole::CommonPart);
        acc.add(&sample(
            "common_parts",
            vec![
                mask(0, "chair", o),
                mask(1, "stool", o),
                mask(0, "leg", c),
                mask(1, "leg", c),
                mask(0, "seat", c),
                mask(1, "seat", c),
            ],
        ));
        // Roles inferred: the first mask of each image is its object.
        acc.add(&sample(
            "unique_parts",
            vec![
                mask(0, "chair", None),
                mask(1, "stool", None),
                mask(0, "back", None),
            ],
        ));
        let s = acc.finish();
        assert_eq!(s.samples, 3);
        assert_eq!(s.objects.total, 6);
        assert_eq!(s.objects.max, 2);
        assert_eq!(s.common_parts.total, 4);
        assert_eq!(s.common_parts.samples, 1);
        assert_eq!(s.unique_parts.total, 1);
        assert_eq!(s.object_categories, 2);
        assert_eq!(s.part_categories, 3);
        assert_eq!(s.distinct_object_instances, 3); // (a,chair) (b,chair) (b,stool)
        assert_eq!(
            s.top_objects[0],
            CategoryCount {
                name: "chair".into(),
                count: 4
            }
        );
        assert_eq!(s.by_source_task["s/common_parts"], 1);
        let table = s.to_table();
        assert!(table.contains("Common Objects") && table.contains("Total # Instances"));
        assert!(s.to_svg().contains("<svg") && s.to_svg().contains("chair"));
    }

    #[test]
    fn median_of_even_and_odd_counts() {
        let h: BTreeMap<u64, u64> = [(1, 1), (3, 1)].into_iter().collect();
        assert_eq!(median(&h, 2), 2.0);
        let h: BTreeMap<u64, u64> = [(1, 2), (5, 1)].into_iter().collect();
        assert_eq!(median(&h, 3), 1.0);
    }
}
