//! Source dataset readers: PACO-LVIS ([`paco`]), PartImageNet
//! ([`part_image_net`]), ADE20K-Part-234 ([`ade`]), and the released
//! MixedParts JSON ([`mixed_parts`]).
//!
//! [`read_source`] reads a whole source directory into a [`Dataset`]; each
//! module documents its directory layout, schema and skip policy, and
//! exposes a function reading a single annotation file.
//!
//! # Skip policy (all readers)
//!
//! Bad *records* are skipped and counted in [`SkipCounts`], never silently:
//! annotations of unknown images (`unknown_images`) or categories
//! (`unknown_categories`), masks with zero area (`empty_masks`), parts whose
//! object is missing (`dangling_parts`), and — when
//! [`ReadOptions::check_images`] is set — images missing on disk
//! (`missing_images`), files that do not open as an image
//! (`unreadable_images`) and files whose size is not the annotations'
//! (`wrong_size_images`). Bad *files* are errors naming the file and, where
//! possible, the record (`annotations[12] (id 7)`): unreadable or malformed
//! JSON, masks that do not decode or do not fit their image, part label PNGs
//! that are missing, not 16-bit, or of the wrong size. Readers never panic
//! on input.
//!
//! Images without any (kept) object are left out of [`Dataset::images`].
//! Masks are kept as COCO RLE, names are normalised to everyday English.

pub mod ade;
mod coco;
pub mod mixed_parts;
pub mod names;
pub mod paco;
pub mod part_image_net;

use crate::error::{DataError, Result};
use crate::taxonomy::{Dataset, ImageRecord, SkipCounts, SourceFormat};
use rayon::prelude::*;
use std::path::{Path, PathBuf};

/// Options of [`read_source`].
#[derive(Clone, Debug, Default)]
pub struct ReadOptions {
    /// Check that every kept image file exists and has the size its
    /// annotations give (its header is read); the others are dropped and
    /// counted in [`SkipCounts::missing_images`],
    /// [`SkipCounts::unreadable_images`] and [`SkipCounts::wrong_size_images`].
    pub check_images: bool,
    /// [`Dataset::name`] (default: the format's name, e.g. `paco_lvis`).
    pub name: Option<String>,
    /// Read only these source splits (`train`, `val`, `test`; ADE also
    /// accepts `training` / `validation`). Each must exist. Default: every
    /// split present.
    pub splits: Option<Vec<String>>,
    /// PartImageNet: a JSON object mapping object names or synset ids to
    /// everyday names (`{"n02071294": "whale", "killer whale": "whale"}`),
    /// applied over the built-in map.
    pub class_map: Option<PathBuf>,
}

/// Reads a source directory laid out as its module documents.
///
/// Errors: no annotation file found (an `Io` error listing the paths looked
/// for), a requested split missing, a bad `class_map` file, or any error of
/// the per-file readers.
pub fn read_source(format: SourceFormat, root: &Path, opts: &ReadOptions) -> Result<Dataset> {
    let mut skipped = SkipCounts::default();
    let splits = opts.splits.as_deref();
    let mut images = match format {
        SourceFormat::PacoLvis => paco::read_root(root, splits, &mut skipped)?,
        SourceFormat::PartImageNet => {
            let mut classes = part_image_net::ClassMap::builtin();
            if let Some(p) = &opts.class_map {
                classes = classes.load_overrides(p)?;
            }
            part_image_net::read_root(root, splits, &classes, &mut skipped)?
        }
        SourceFormat::Ade20kPart234 => ade::read_root(root, splits, &mut skipped)?,
    };
    if opts.check_images {
        skipped.add(&drop_unusable_images(root, &mut images));
    }
    Ok(Dataset {
        name: opts
            .name
            .clone()
            .unwrap_or_else(|| format.as_str().to_string()),
        format,
        image_root: root.to_path_buf(),
        images,
        skipped,
    })
}

/// What is wrong with an image file, if anything.
enum ImageCheck {
    Usable,
    Missing,
    Unreadable,
    WrongSize,
}

/// `(width, height)` of the image file at `path`, from its header alone
/// (the format is recognised by content; no EXIF rotation); the error says
/// why the file cannot be read as an image.
pub fn image_dimensions(path: &Path) -> std::result::Result<(u32, u32), String> {
    image::ImageReader::open(path)
        .map_err(|e| e.to_string())?
        .with_guessed_format()
        .map_err(|e| e.to_string())?
        .into_dimensions()
        .map_err(|e| format!("not a readable image: {e}"))
}

/// Reads the header of `path` and compares its size with `record`'s.
fn check_image(path: &Path, record: &ImageRecord) -> ImageCheck {
    if !path.is_file() {
        return ImageCheck::Missing;
    }
    match image_dimensions(path) {
        Err(_) => ImageCheck::Unreadable,
        Ok(d) if d != (record.width, record.height) => ImageCheck::WrongSize,
        Ok(_) => ImageCheck::Usable,
    }
}

/// Removes the records whose `root/file` is missing, does not open as an
/// image, or is not of the size the record gives (its header only is
/// read); returns how many of each were removed.
pub fn drop_unusable_images(root: &Path, images: &mut Vec<ImageRecord>) -> SkipCounts {
    let checks: Vec<ImageCheck> = images
        .par_iter()
        .map(|r| check_image(&root.join(&r.file), r))
        .collect();
    let mut counts = SkipCounts::default();
    for c in &checks {
        match c {
            ImageCheck::Usable => {}
            ImageCheck::Missing => counts.missing_images += 1,
            ImageCheck::Unreadable => counts.unreadable_images += 1,
            ImageCheck::WrongSize => counts.wrong_size_images += 1,
        }
    }
    let mut keep = checks.into_iter();
    images.retain(|_| matches!(keep.next(), Some(ImageCheck::Usable)));
    counts
}

/// The requested splits, normalised and checked against `known`, or all
/// `known` splits.
fn wanted_splits(dataset: &str, known: &[&str], splits: Option<&[String]>) -> Result<Vec<String>> {
    let Some(requested) = splits else {
        return Ok(known.iter().map(|s| s.to_string()).collect());
    };
    let mut out: Vec<String> = Vec::new();
    for name in requested {
        let n = names::normalise_split(name);
        if !known.contains(&n.as_str()) {
            return Err(DataError::Config(format!(
                "{dataset} has no split {name:?}; expected one of {}",
                known.join(", ")
            )));
        }
        if !out.contains(&n) {
            out.push(n);
        }
    }
    Ok(out)
}

/// A "not found" I/O error on `path` with an explanation.
fn not_found(path: &Path, message: &str) -> DataError {
    DataError::io(
        path,
        std::io::Error::new(std::io::ErrorKind::NotFound, message.to_string()),
    )
}
