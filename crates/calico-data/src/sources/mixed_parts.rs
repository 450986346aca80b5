//! The released MixedParts JSON (`mixed_parts_{train,val,test}.json`):
//! coded answers turned into grounded samples.
//!
//! # Schema
//!
//! The file is a JSON array of items:
//!
//! ```json
//! {"dataset_name": "paco_lvis", "img_ids": [139, 285],
//!  "q": "Can you segment the common parts of the objects in these images?",
//!  "a": "Both images show chair_101 and chair_201. The common parts are leg_10101 …",
//!  "groundings": {"img_1": [{"segmentation": …, "name": "chair_101", "obj_ann_id": 7}, …],
//!                 "img_2": […]}}
//! ```
//!
//! Coded mentions in `a` are whole words `{name}_DDD` (an object: image
//! digit, 2-digit instance) or `{name}_DDDDD` (a part: image digit, 2-digit
//! object, 2-digit part), the words matching `\b(\w+)_\d{3}\b` or
//! `\b(\w+)_\d{5}\b`. The first mention of a code becomes
//! `<p> {label} </p> [SEG] (IMAGE{k})` and adds one [`SampleMask`]; a repeat
//! mention becomes `(IMAGE{k})`. Object mentions get the role `object`,
//! part mentions `common_part` or `unique_part` after the task.
//!
//! Each first mention takes a grounding of its image (`img_{k}`): the
//! unused entry whose `name` is the mention itself if there is one, else
//! the next unused entry in order. The mask label is the grounding's `name`
//! without its code, normalised (`seat_cushion_10203` → `seat cushion`); a
//! polygon `segmentation` is rasterised at the image size taken from the
//! source [`Dataset`], an RLE keeps its own size (which must be the image's).
//!
//! The task is not in the schema: it is inferred from `q`
//! ([`infer_task`]). Sample ids are `{dataset_name}/release-{index}`; the
//! split comes from the file name (`mixed_parts_val.json` → `val`), else from
//! the images' own split when they agree.

use super::coco::{self, Id};
use super::names;
use crate::error::{DataError, Result};
use crate::samples::{MaskRole, Sample, SampleImage, SampleMask};
use crate::taxonomy::{Dataset, ImageRecord};
use calico_masks::{CocoRle, Segmentation};
use calico_text::templates::{self, Task};
use serde::Deserialize;
use std::collections::{HashMap, HashSet};
use std::path::Path;

#[derive(Deserialize)]
struct Item {
    dataset_name: String,
    img_ids: Vec<Id>,
    q: String,
    a: String,
    #[serde(default)]
    groundings: HashMap<String, Vec<Grounding>>,
}

#[derive(Deserialize)]
struct Grounding {
    segmentation: Segmentation,
    #[serde(default)]
    name: String,
}

/// How [`read_release_with`] treats items it cannot resolve.
#[derive(Clone, Debug, Default)]
pub struct ReleaseOptions {
    /// Skip (and count) items whose `dataset_name` is not among the sources,
    /// or whose images are not in their source, instead of failing.
    pub skip_unavailable: bool,
}

/// A coded mention found in an answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mention {
    /// Byte range of the whole word in the answer.
    pub start: usize,
    /// End of the byte range (exclusive).
    pub end: usize,
    /// The name before the code (`seat_cushion` in `seat_cushion_10203`).
    pub stem: String,
    /// 1-based image index (the code's first digit).
    pub image: usize,
    /// Object index within the image.
    pub object: u32,
    /// Part index within the object (part codes only).
    pub part: Option<u32>,
}

fn is_word_char(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

/// Finds the coded mentions of an answer, in order.
pub fn find_mentions(answer: &str) -> Vec<Mention> {
    let mut out = Vec::new();
    let mut start: Option<usize> = None;
    let mut check = |s: usize, e: usize| {
        let word = &answer[s..e];
        if let Some((stem, digits)) = names::code_split(word) {
            let d: Vec<u32> = digits.bytes().map(|b| (b - b'0') as u32).collect();
            out.push(Mention {
                start: s,
                end: e,
                stem: stem.to_string(),
                image: d[0] as usize,
                object: d[1] * 10 + d[2],
                part: (d.len() == 5).then(|| d[3] * 10 + d[4]),
            });
        }
    };
    for (i, c) in answer.char_indices() {
        match (is_word_char(c), start) {
            (true, None) => start = Some(i),
            (false, Some(s)) => {
                check(s, i);
                start = None;
            }
            _ => {}
        }
    }
    if let Some(s) = start {
        check(s, answer.len());
    }
    out
}

/// The task of a release question: an exact match of a question template
/// of `calico_text` (ignoring case, surrounding space and a multi-image
/// prefix), else keywords: a question about parts is `unique_parts` when it
/// says unique / distinct / differ / not shared, else `common_parts`; a
/// question about a common object is `common_object`.
pub fn infer_task(question: &str) -> Option<&'static str> {
    let q = strip_prefix(question).trim().to_lowercase();
    for task in [Task::CommonObject, Task::CommonParts, Task::UniqueParts] {
        if templates::questions(task)
            .iter()
            .any(|t| t.trim().to_lowercase() == q)
        {
            return Some(task.as_str());
        }
    }
    let has = |w: &str| q.contains(w);
    if has("part") {
        if has("unique") || has("distinct") || has("differ") || has("not shared") || has("apart") {
            return Some(Task::UniqueParts.as_str());
        }
        return Some(Task::CommonParts.as_str());
    }
    if has("common object") || (has("object") && (has("common") || has("share"))) {
        return Some(Task::CommonObject.as_str());
    }
    None
}

/// The question without a multi-image prefix (`The <image> (IMAGE1) and …
/// provide an overview of the pictures.\n`).
fn strip_prefix(q: &str) -> &str {
    match q.rfind('\n') {
        Some(i) if q[..i].contains("<image>") => &q[i + 1..],
        _ => q,
    }
}

/// Image lookup for one source: by id, then by file stem or name.
struct Index<'a> {
    dataset: &'a Dataset,
    by_key: HashMap<&'a str, usize>,
}

impl<'a> Index<'a> {
    fn new(dataset: &'a Dataset) -> Self {
        let mut by_key = HashMap::new();
        for (i, im) in dataset.images.iter().enumerate() {
            let base = im.file.rsplit('/').next().unwrap_or(&im.file);
            let stem = base.rsplit_once('.').map_or(base, |(s, _)| s);
            for key in [stem, base, im.file.as_str()] {
                by_key.entry(key).or_insert(i);
            }
        }
        // Ids take precedence over file names.
        for (i, im) in dataset.images.iter().enumerate() {
            by_key.insert(im.id.as_str(), i);
        }
        Index { dataset, by_key }
    }

    fn get(&self, id: &str) -> Option<&'a ImageRecord> {
        self.by_key.get(id).map(|&i| &self.dataset.images[i])
    }
}

/// Reads a release file; every item's dataset and images must be in
/// `sources` (keyed by [`Dataset::name`], e.g. `paco_lvis`).
pub fn read_release(path: &Path, sources: &HashMap<String, Dataset>) -> Result<Vec<Sample>> {
    read_release_with(path, sources, &ReleaseOptions::default()).map(|(s, _)| s)
}

/// Like [`read_release`]; with `skip_unavailable`, items whose dataset or
/// images are not loaded are skipped. Returns the samples and the number
/// of skipped items.
pub fn read_release_with(
    path: &Path,
    sources: &HashMap<String, Dataset>,
    opts: &ReleaseOptions,
) -> Result<(Vec<Sample>, u64)> {
    let indexes: HashMap<&str, Index> = sources
        .iter()
        .map(|(k, d)| (k.as_str(), Index::new(d)))
        .collect();
    let file_split = release_split(path);
    let mut samples = Vec::new();
    let mut skipped = 0u64;
    coco::read_array(path, "items", |index, item: Item| {
        let ctx = format!("items[{index}]");
        let Some(ix) = indexes.get(item.dataset_name.as_str()) else {
            if opts.skip_unavailable {
                skipped += 1;
                return Ok(());
            }
            let mut known: Vec<&str> = indexes.keys().copied().collect();
            known.sort_unstable();
            return Err(DataError::invalid(
                path,
                ctx,
                format!(
                    "dataset {:?} is not loaded (loaded: {})",
                    item.dataset_name,
                    known.join(", ")
                ),
            ));
        };
        let mut images = Vec::with_capacity(item.img_ids.len());
        for id in &item.img_ids {
            match ix.get(&id.0) {
                Some(r) => images.push(r),
                None if opts.skip_unavailable => {
                    skipped += 1;
                    return Ok(());
                }
                None => {
                    return Err(DataError::invalid(
                        path,
                        ctx,
                        format!("image {:?} is not in source {:?}", id.0, item.dataset_name),
                    ))
                }
            }
        }
        samples.push(build_sample(
            path,
            index,
            item,
            ix.dataset,
            &images,
            &file_split,
        )?);
        Ok(())
    })?;
    Ok((samples, skipped))
}

/// `train`/`val`/`test` from a file name ending in `_train.json` etc.
fn release_split(path: &Path) -> Option<String> {
    let stem = path.file_stem()?.to_str()?.to_ascii_lowercase();
    ["train", "val", "test"]
        .into_iter()
        .find(|s| stem.ends_with(&format!("_{s}")) || stem.contains(&format!("_{s}_")))
        .map(str::to_string)
}

fn build_sample(
    path: &Path,
    index: usize,
    item: Item,
    dataset: &Dataset,
    images: &[&ImageRecord],
    file_split: &Option<String>,
) -> Result<Sample> {
    let ctx = || format!("items[{index}]");
    if images.is_empty() {
        return Err(DataError::invalid(path, ctx(), "`img_ids` is empty"));
    }
    let task = infer_task(&item.q).ok_or_else(|| {
        DataError::invalid(
            path,
            ctx(),
            format!("cannot tell the task from the question {:?}", item.q),
        )
    })?;
    let part_role = if task == Task::UniqueParts.as_str() {
        MaskRole::UniquePart
    } else {
        MaskRole::CommonPart
    };
    let (answer, masks) = rewrite_answer(&item.a, &item.groundings, images, part_role)
        .map_err(|m| DataError::invalid(path, ctx(), m))?;
    let split = file_split.clone().or_else(|| {
        let first = images[0].split.clone()?;
        images
            .iter()
            .all(|r| r.split.as_deref() == Some(first.as_str()))
            .then_some(first)
    });
    let images = images
        .iter()
        .map(|r| SampleImage {
            file: dataset
                .image_root
                .join(&r.file)
                .to_string_lossy()
                .into_owned(),
            width: r.width,
            height: r.height,
        })
        .collect();
    Ok(Sample {
        id: format!("{}/release-{index}", item.dataset_name),
        task: task.to_string(),
        source: item.dataset_name,
        split,
        images,
        question: strip_prefix(&item.q).trim().to_string(),
        answer,
        masks,
    })
}

/// Rewrites a coded answer and collects its masks (see the module docs).
/// `images[k]` is IMAGE{k+1}; object mentions get [`MaskRole::Object`],
/// part mentions `part_role`. Errors are messages naming the mention.
fn rewrite_answer(
    answer: &str,
    groundings: &HashMap<String, Vec<Grounding>>,
    images: &[&ImageRecord],
    part_role: MaskRole,
) -> std::result::Result<(String, Vec<SampleMask>), String> {
    let mut out = String::with_capacity(answer.len() * 2);
    let mut masks = Vec::new();
    let mut seen: HashSet<&str> = HashSet::new();
    let mut used: HashMap<usize, Vec<bool>> = HashMap::new();
    let mut last = 0;
    for m in find_mentions(answer) {
        out.push_str(&answer[last..m.start]);
        last = m.end;
        let token = &answer[m.start..m.end];
        if m.image == 0 || m.image > images.len() {
            return Err(format!(
                "mention {token} names image {} but the item has {} images",
                m.image,
                images.len()
            ));
        }
        if !seen.insert(token) {
            out.push_str(&format!("(IMAGE{})", m.image));
            continue;
        }
        let key = format!("img_{}", m.image);
        let list = groundings.get(&key).map(Vec::as_slice).unwrap_or_default();
        let flags = used
            .entry(m.image)
            .or_insert_with(|| vec![false; list.len()]);
        let pick = (0..list.len())
            .find(|&j| !flags[j] && list[j].name.trim() == token)
            .or_else(|| (0..list.len()).find(|&j| !flags[j]))
            .ok_or_else(|| {
                format!(
                    "mention {token} has no grounding left in `groundings.{key}` ({} entries)",
                    list.len()
                )
            })?;
        flags[pick] = true;
        let g = &list[pick];
        let label = names::label(if g.name.trim().is_empty() {
            &m.stem
        } else {
            &g.name
        });
        let rec = images[m.image - 1];
        let rle = coco::to_rle(&g.segmentation, rec.height, rec.width)
            .map_err(|e| format!("`groundings.{key}[{pick}]` (mention {token}): {e}"))?;
        out.push_str(&format!("<p> {label} </p> [SEG] (IMAGE{})", m.image));
        masks.push(SampleMask {
            image: m.image - 1,
            label,
            role: Some(if m.part.is_some() {
                part_role
            } else {
                MaskRole::Object
            }),
            rle: CocoRle::from_rle(&rle),
        });
    }
    out.push_str(&answer[last..]);
    let n_seg = out.matches(calico_text::tokens::SEG).count();
    if n_seg != masks.len() {
        return Err(format!(
            "the rewritten answer has {n_seg} [SEG] tokens but {} masks",
            masks.len()
        ));
    }
    Ok((out, masks))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mentions_follow_the_release_regex() {
        let m = find_mentions("Both have leg_10101, seat_cushion_20103 and chair_101; x_1010 no.");
        let words: Vec<(&str, usize, u32, Option<u32>)> = m
            .iter()
            .map(|m| (m.stem.as_str(), m.image, m.object, m.part))
            .collect();
        assert_eq!(
            words,
            [
                ("leg", 1, 1, Some(1)),
                ("seat_cushion", 2, 1, Some(3)),
                ("chair", 1, 1, None)
            ]
        );
        // Not whole words, or the wrong number of digits.
        assert!(find_mentions("chair_1011 chair_10 _101 chair_101a").is_empty());
        // At the end of the text.
        assert_eq!(find_mentions("a chair_201").len(), 1);
    }

    #[test]
    fn tasks_are_inferred() {
        assert_eq!(
            infer_task("Can you segment the common object in these images?"),
            Some("common_object")
        );
        assert_eq!(
            infer_task("The <image> (IMAGE1) and <image> (IMAGE2) provide an overview of the pictures.\nPlease segment the objects' common parts in these photos."),
            Some("common_parts")
        );
        assert_eq!(
            infer_task("What are the distinct parts of these objects?"),
            Some("unique_parts")
        );
        assert_eq!(
            infer_task("Segment the parts that tell the objects in these pictures apart."),
            Some("unique_parts")
        );
        assert_eq!(infer_task("How are you?"), None);
    }

    #[test]
    fn release_split_from_file_name() {
        assert_eq!(
            release_split(Path::new("x/mixed_parts_val.json")).as_deref(),
            Some("val")
        );
        assert_eq!(
            release_split(Path::new("mixed_parts_test_1k.json")).as_deref(),
            Some("test")
        );
        assert_eq!(release_split(Path::new("release.json")), None);
    }
}
