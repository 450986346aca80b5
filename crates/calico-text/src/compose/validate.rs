//! Input checks shared by the composition functions.

use super::ComposeError;
use crate::tokens::{IMAGE_TAG_PREFIX, SEG};

/// Text that may not occur inside a label, because the parser would read it
/// as markup.
const RESERVED: [&str; 4] = ["<", ">", SEG, IMAGE_TAG_PREFIX];

/// Checks that there is at least one image.
pub(super) fn n_images(n: usize) -> Result<(), ComposeError> {
    if n == 0 {
        Err(ComposeError::NoImages)
    } else {
        Ok(())
    }
}

/// Normalises a label (trim, collapse whitespace runs to one space) and
/// rejects empty labels and labels containing reserved markup.
pub(super) fn label(raw: &str, index: usize) -> Result<String, ComposeError> {
    let norm = raw.split_whitespace().collect::<Vec<_>>().join(" ");
    if norm.is_empty() {
        return Err(ComposeError::EmptyLabel { index });
    }
    if let Some(found) = RESERVED.iter().find(|r| norm.contains(*r)) {
        return Err(ComposeError::ReservedText { label: norm, found });
    }
    Ok(norm)
}

/// Normalises every label of a list.
pub(super) fn labels<S: AsRef<str>>(raw: &[S]) -> Result<Vec<String>, ComposeError> {
    raw.iter()
        .enumerate()
        .map(|(i, l)| label(l.as_ref(), i))
        .collect()
}

/// Checks a list of 0-based image indices for one label: non-empty, in
/// range and free of repeats.
pub(super) fn images(label: &str, images: &[usize], n_images: usize) -> Result<(), ComposeError> {
    if images.is_empty() {
        return Err(ComposeError::NoImagesForPart {
            label: label.to_string(),
        });
    }
    for (i, &image) in images.iter().enumerate() {
        if image >= n_images {
            return Err(ComposeError::ImageOutOfRange {
                label: label.to_string(),
                image,
                n_images,
            });
        }
        if images[..i].contains(&image) {
            return Err(ComposeError::DuplicateImage {
                label: label.to_string(),
                image,
            });
        }
    }
    Ok(())
}
