//! Streaming reader for COCO-style instance files (the shape all three
//! sources share), with typed records and record-level error context.
//!
//! The file is parsed from a buffered reader, never held in memory as text
//! or as a generic JSON tree. `images` and `categories` are collected;
//! `annotations` are handed to the caller in batches as soon as both of the
//! others have been seen (for files that list `annotations` first, they are
//! kept, typed, until the end of the file).

use crate::error::{DataError, Result};
use crate::taxonomy::SkipCounts;
use calico_masks::{MaskError, Rle, Segmentation};
use rayon::prelude::*;
use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use std::cell::Cell;
use std::collections::HashMap;
use std::fmt;
use std::fs::File;
use std::io::BufReader;
use std::marker::PhantomData;
use std::path::Path;

/// Annotations per batch handed to the caller (converted in parallel).
pub(crate) const BATCH: usize = 2048;

/// An id written as a JSON integer or string, kept as its decimal/string form.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct Id(pub String);

impl<'de> Deserialize<'de> for Id {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Id;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an integer or string id")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> std::result::Result<Id, E> {
                Ok(Id(v.to_string()))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> std::result::Result<Id, E> {
                Ok(Id(v.to_string()))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> std::result::Result<Id, E> {
                if v.fract() == 0.0 && v.abs() < 9.0e15 {
                    Ok(Id((v as i64).to_string()))
                } else {
                    Err(E::invalid_value(de::Unexpected::Float(v), &self))
                }
            }
            fn visit_str<E: de::Error>(self, v: &str) -> std::result::Result<Id, E> {
                Ok(Id(v.to_string()))
            }
        }
        d.deserialize_any(V)
    }
}

/// `images[]` entry.
#[derive(Debug, Deserialize)]
pub(crate) struct RawImage {
    pub id: Id,
    pub file_name: String,
    pub width: u32,
    pub height: u32,
}

/// `categories[]` entry.
#[derive(Debug, Deserialize)]
pub(crate) struct RawCategory {
    pub id: u64,
    pub name: String,
    #[serde(default)]
    pub supercategory: Option<String>,
}

/// `annotations[]` entry: the union of the fields the three sources use.
#[derive(Debug, Deserialize)]
pub(crate) struct RawAnnotation {
    #[serde(default)]
    pub id: Option<u64>,
    pub image_id: Id,
    pub category_id: u64,
    #[serde(default)]
    pub segmentation: Option<Segmentation>,
    #[serde(default, deserialize_with = "flag")]
    pub iscrowd: bool,
    /// PACO: the parent object annotation of a part (negative = none).
    #[serde(default)]
    pub obj_ann_id: Option<i64>,
    /// ADE20K-Part-234: the part classes present on the object.
    #[serde(default, deserialize_with = "id_list")]
    pub part_category_id: Option<Vec<u64>>,
}

fn flag<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<bool, D::Error> {
    struct V;
    impl Visitor<'_> for V {
        type Value = bool;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("0, 1, true, false or null")
        }
        fn visit_bool<E: de::Error>(self, v: bool) -> std::result::Result<bool, E> {
            Ok(v)
        }
        fn visit_u64<E: de::Error>(self, v: u64) -> std::result::Result<bool, E> {
            Ok(v != 0)
        }
        fn visit_i64<E: de::Error>(self, v: i64) -> std::result::Result<bool, E> {
            Ok(v != 0)
        }
        fn visit_f64<E: de::Error>(self, v: f64) -> std::result::Result<bool, E> {
            Ok(v != 0.0)
        }
        fn visit_unit<E: de::Error>(self) -> std::result::Result<bool, E> {
            Ok(false)
        }
        fn visit_none<E: de::Error>(self) -> std::result::Result<bool, E> {
            Ok(false)
        }
    }
    d.deserialize_any(V)
}

fn id_list<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<Option<Vec<u64>>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(u64),
        Many(Vec<u64>),
    }
    Ok(Option::<OneOrMany>::deserialize(d)?.map(|v| match v {
        OneOrMany::One(x) => vec![x],
        OneOrMany::Many(v) => v,
    }))
}

/// `images` and `categories` of a file, with lookups.
pub(crate) struct Header {
    pub images: Vec<RawImage>,
    pub categories: Vec<RawCategory>,
    /// Image id → index in `images` (the first one wins on duplicates).
    pub image_index: HashMap<Id, usize>,
    /// Category id → index in `categories`.
    pub category_index: HashMap<u64, usize>,
}

impl Header {
    fn new(images: Vec<RawImage>, categories: Vec<RawCategory>) -> Self {
        let mut image_index = HashMap::with_capacity(images.len());
        for (i, im) in images.iter().enumerate() {
            image_index.entry(im.id.clone()).or_insert(i);
        }
        let mut category_index = HashMap::with_capacity(categories.len());
        for (i, c) in categories.iter().enumerate() {
            category_index.entry(c.id).or_insert(i);
        }
        Header {
            images,
            categories,
            image_index,
            category_index,
        }
    }
}

/// A batch of annotations with their index in the file's `annotations` array.
pub(crate) type Batch = Vec<(usize, RawAnnotation)>;

/// Where the parser is, for error messages.
#[derive(Clone, Copy)]
enum Loc {
    Top,
    Key(&'static str),
    Element(&'static str, usize),
}

impl Loc {
    fn describe(self) -> String {
        match self {
            Loc::Top => "top level".to_string(),
            Loc::Key(k) => format!("`{k}`"),
            Loc::Element(k, i) => format!("{k}[{i}]"),
        }
    }
}

struct State<'a> {
    images: Option<Vec<RawImage>>,
    categories: Option<Vec<RawCategory>>,
    header: Option<Header>,
    saw_annotations: bool,
    pending: Batch,
    on_batch: &'a mut dyn FnMut(&Header, Batch) -> Result<()>,
    error: Option<DataError>,
}

impl State<'_> {
    fn maybe_header(&mut self) {
        if self.header.is_none() && self.images.is_some() && self.categories.is_some() {
            let images = self.images.take().unwrap_or_default();
            let categories = self.categories.take().unwrap_or_default();
            self.header = Some(Header::new(images, categories));
        }
    }

    /// Takes one annotation; hands a full batch to the caller when the
    /// header is known. `Err` means the caller failed (error in `self.error`).
    fn push(&mut self, index: usize, ann: RawAnnotation) -> std::result::Result<(), String> {
        self.pending.push((index, ann));
        if self.pending.len() >= BATCH {
            if let Some(h) = &self.header {
                let batch = std::mem::take(&mut self.pending);
                if let Err(e) = (self.on_batch)(h, batch) {
                    self.error = Some(e);
                    return Err("stopped by an invalid record".to_string());
                }
            }
        }
        Ok(())
    }
}

/// Visits a JSON array, calling `f(index, element)` for each element and
/// keeping `loc` up to date.
struct Elements<'l, T, F> {
    key: &'static str,
    loc: &'l Cell<Loc>,
    f: F,
    _t: PhantomData<fn() -> T>,
}

/// Streams a file whose top level is a JSON array, calling `f(index,
/// element)` for each element in order. JSON errors name the element
/// (`{what}[12]`); an `Err` from `f` stops reading and is returned as is.
pub(crate) fn read_array<T: serde::de::DeserializeOwned>(
    path: &Path,
    what: &'static str,
    mut f: impl FnMut(usize, T) -> Result<()>,
) -> Result<()> {
    let file = File::open(path).map_err(|e| DataError::io(path, e))?;
    let reader = BufReader::with_capacity(1 << 20, file);
    let mut de = serde_json::Deserializer::from_reader(reader);
    let loc = Cell::new(Loc::Top);
    let mut failed: Option<DataError> = None;
    let parsed = Elements {
        key: what,
        loc: &loc,
        f: |i, x: T| {
            f(i, x).map_err(|e| {
                failed = Some(e);
                "stopped by an invalid record".to_string()
            })
        },
        _t: PhantomData,
    }
    .deserialize(&mut de)
    .and_then(|()| de.end());
    if let Some(e) = failed {
        return Err(e);
    }
    parsed.map_err(|e| {
        if e.is_io() {
            DataError::io(path, e.into())
        } else {
            DataError::json(path, loc.get().describe(), e)
        }
    })
}

impl<'de, T, F> DeserializeSeed<'de> for Elements<'_, T, F>
where
    T: Deserialize<'de>,
    F: FnMut(usize, T) -> std::result::Result<(), String>,
{
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> std::result::Result<(), D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de, T, F> Visitor<'de> for Elements<'_, T, F>
where
    T: Deserialize<'de>,
    F: FnMut(usize, T) -> std::result::Result<(), String>,
{
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "an array of {}", self.key)
    }
    fn visit_seq<A: SeqAccess<'de>>(mut self, mut seq: A) -> std::result::Result<(), A::Error> {
        let mut i = 0usize;
        loop {
            self.loc.set(Loc::Element(self.key, i));
            match seq.next_element::<T>()? {
                Some(v) => (self.f)(i, v).map_err(de::Error::custom)?,
                None => break,
            }
            i += 1;
        }
        self.loc.set(Loc::Key(self.key));
        Ok(())
    }
}

struct Top<'s, 'a> {
    state: &'s mut State<'a>,
    loc: &'s Cell<Loc>,
}

impl<'de> DeserializeSeed<'de> for Top<'_, '_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> std::result::Result<(), D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for Top<'_, '_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a COCO-style JSON object with `images`, `categories` and `annotations`")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> std::result::Result<(), A::Error> {
        let Top { state, loc } = self;
        while let Some(key) = map.next_key::<String>()? {
            match key.as_str() {
                "images" => {
                    if state.images.is_some() || state.header.is_some() {
                        return Err(de::Error::custom("duplicate key `images`"));
                    }
                    loc.set(Loc::Key("images"));
                    let mut v = Vec::new();
                    map.next_value_seed(Elements {
                        key: "images",
                        loc,
                        f: |_, x: RawImage| {
                            v.push(x);
                            Ok(())
                        },
                        _t: PhantomData,
                    })?;
                    state.images = Some(v);
                    state.maybe_header();
                }
                "categories" => {
                    if state.categories.is_some() || state.header.is_some() {
                        return Err(de::Error::custom("duplicate key `categories`"));
                    }
                    loc.set(Loc::Key("categories"));
                    let mut v = Vec::new();
                    map.next_value_seed(Elements {
                        key: "categories",
                        loc,
                        f: |_, x: RawCategory| {
                            v.push(x);
                            Ok(())
                        },
                        _t: PhantomData,
                    })?;
                    state.categories = Some(v);
                    state.maybe_header();
                }
                "annotations" => {
                    if state.saw_annotations {
                        return Err(de::Error::custom("duplicate key `annotations`"));
                    }
                    state.saw_annotations = true;
                    loc.set(Loc::Key("annotations"));
                    map.next_value_seed(Elements {
                        key: "annotations",
                        loc,
                        f: |i, x: RawAnnotation| state.push(i, x),
                        _t: PhantomData,
                    })?;
                }
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
            loc.set(Loc::Top);
        }
        Ok(())
    }
}

/// Reads a COCO-style file, calling `on_batch` with consecutive batches of
/// annotations (in file order) and returning the header.
///
/// Errors: the file cannot be opened or read (`Io`), it is not JSON or a
/// record has the wrong shape (`Json`, naming the record, e.g.
/// `annotations[12]`), `images` or `categories` is missing (`Json`), or
/// `on_batch` failed (its error).
pub(crate) fn read_coco(
    path: &Path,
    on_batch: &mut dyn FnMut(&Header, Batch) -> Result<()>,
) -> Result<Header> {
    let file = File::open(path).map_err(|e| DataError::io(path, e))?;
    let reader = BufReader::with_capacity(1 << 20, file);
    let mut de = serde_json::Deserializer::from_reader(reader);
    let loc = Cell::new(Loc::Top);
    let mut state = State {
        images: None,
        categories: None,
        header: None,
        saw_annotations: false,
        pending: Vec::new(),
        on_batch,
        error: None,
    };
    let parsed = Top {
        state: &mut state,
        loc: &loc,
    }
    .deserialize(&mut de)
    .and_then(|()| de.end());
    if let Some(e) = state.error.take() {
        return Err(e);
    }
    if let Err(e) = parsed {
        if e.is_io() {
            return Err(DataError::io(path, e.into()));
        }
        return Err(DataError::json(path, loc.get().describe(), e));
    }
    state.maybe_header();
    let Some(header) = state.header.take() else {
        let missing = if state.images.is_none() {
            "images"
        } else {
            "categories"
        };
        return Err(DataError::json(
            path,
            "top level",
            format!("missing `{missing}` array"),
        ));
    };
    let pending = std::mem::take(&mut state.pending);
    let mut it = pending.into_iter().peekable();
    while it.peek().is_some() {
        let batch: Batch = it.by_ref().take(BATCH).collect();
        (state.on_batch)(&header, batch)?;
    }
    Ok(header)
}

/// Context string for an annotation in error messages:
/// `annotations[12] (id 7)`.
pub(crate) fn ann_context(index: usize, id: Option<u64>) -> String {
    match id {
        Some(id) => format!("annotations[{index}] (id {id})"),
        None => format!("annotations[{index}]"),
    }
}

/// Converts a `segmentation` to an RLE of exactly `height × width` whose
/// counts cover every pixel (polygons are rasterised at that size; RLE
/// objects must already have it).
pub(crate) fn to_rle(
    seg: &Segmentation,
    height: u32,
    width: u32,
) -> std::result::Result<Rle, MaskError> {
    let rle = seg.to_rle_sized(height, width)?;
    let expected = height as u64 * width as u64;
    let sum = rle.total();
    if sum != expected {
        return Err(MaskError::CountsMismatch {
            sum,
            height,
            width,
            expected,
        });
    }
    Ok(rle)
}

/// Reads a JSON file into a typed value from a buffered reader.
pub(crate) fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T> {
    let file = File::open(path).map_err(|e| DataError::io(path, e))?;
    let reader = BufReader::with_capacity(1 << 20, file);
    serde_json::from_reader(reader).map_err(|e| {
        if e.is_io() {
            DataError::io(path, e.into())
        } else {
            DataError::json(path, "top level", e)
        }
    })
}

/// One annotation whose mask was decoded and is not empty.
pub(crate) struct Converted {
    /// Index in the file's `annotations` array.
    pub index: usize,
    /// Index in [`Header::images`].
    pub image: usize,
    /// Index in [`Header::categories`].
    pub category: usize,
    /// The annotation id (its index when the file has none).
    pub ann_id: u64,
    pub iscrowd: bool,
    pub obj_ann_id: Option<i64>,
    pub part_category_id: Option<Vec<u64>>,
    pub mask: Rle,
}

enum Conv {
    UnknownImage,
    UnknownCategory,
    Empty,
    Mask(Converted),
}

fn convert(path: &Path, h: &Header, index: usize, ann: RawAnnotation) -> Result<Conv> {
    let Some(&image) = h.image_index.get(&ann.image_id) else {
        return Ok(Conv::UnknownImage);
    };
    let Some(&category) = h.category_index.get(&ann.category_id) else {
        return Ok(Conv::UnknownCategory);
    };
    let im = &h.images[image];
    let Some(seg) = &ann.segmentation else {
        return Err(DataError::invalid(
            path,
            ann_context(index, ann.id),
            "annotation has no `segmentation`",
        ));
    };
    let mask = to_rle(seg, im.height, im.width)
        .map_err(|e| DataError::mask(path, ann_context(index, ann.id), e))?;
    if mask.area() == 0 {
        return Ok(Conv::Empty);
    }
    Ok(Conv::Mask(Converted {
        index,
        image,
        category,
        ann_id: ann.id.unwrap_or(index as u64),
        iscrowd: ann.iscrowd,
        obj_ann_id: ann.obj_ann_id,
        part_category_id: ann.part_category_id,
        mask,
    }))
}

/// Reads a COCO-style file and converts every annotation's mask to RLE
/// (in parallel batches), calling `on_mask` in file order for each
/// annotation with a known image and category and a non-empty mask. Unknown
/// images, unknown categories and empty masks are counted in `skipped`.
pub(crate) fn read_converted(
    path: &Path,
    skipped: &mut SkipCounts,
    on_mask: &mut dyn FnMut(&Header, Converted) -> Result<()>,
) -> Result<Header> {
    let mut on_batch = |h: &Header, batch: Batch| -> Result<()> {
        let converted: Vec<Result<Conv>> = batch
            .into_par_iter()
            .map(|(index, ann)| convert(path, h, index, ann))
            .collect();
        for c in converted {
            match c? {
                Conv::UnknownImage => skipped.unknown_images += 1,
                Conv::UnknownCategory => skipped.unknown_categories += 1,
                Conv::Empty => skipped.empty_masks += 1,
                Conv::Mask(m) => on_mask(h, m)?,
            }
        }
        Ok(())
    };
    read_coco(path, &mut on_batch)
}
