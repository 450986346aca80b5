//! Errors raised while composing answers.

/// Invalid input to one of the composition functions.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ComposeError {
    /// The query has no images (`n_images == 0` or an empty object list).
    #[error("an answer needs at least one image, but n_images is 0")]
    NoImages,
    /// A label is empty or only whitespace.
    #[error("label #{index} is empty")]
    EmptyLabel {
        /// Position of the label in the input list.
        index: usize,
    },
    /// A label contains text that would be read back as markup.
    #[error("label {label:?} contains {found:?}, which is reserved for answer markup")]
    ReservedText {
        /// The offending label.
        label: String,
        /// The reserved text found in it.
        found: &'static str,
    },
    /// An image index (0-based) is not below the number of images.
    #[error("image index {image} (0-based) for {label:?} is out of range for {n_images} image(s)")]
    ImageOutOfRange {
        /// Label the index was given for.
        label: String,
        /// The offending 0-based index.
        image: usize,
        /// Number of images in the query.
        n_images: usize,
    },
    /// The same image is listed twice for one label.
    #[error("image index {image} (0-based) is listed twice for {label:?}")]
    DuplicateImage {
        /// Label the index was given for.
        label: String,
        /// The repeated 0-based index.
        image: usize,
    },
    /// A part was given with an empty list of owning images.
    #[error("part {label:?} is not assigned to any image")]
    NoImagesForPart {
        /// The part label.
        label: String,
    },
    /// An image has no object mention in an identification answer.
    #[error("image index {image} (0-based) has no object mention")]
    MissingMention {
        /// The image without a mention.
        image: usize,
    },
}
