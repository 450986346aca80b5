//! Special tokens of the Calico / GLaMM vocabulary and the image tag format.
//!
//! A grounded answer interleaves ordinary words with these tokens: a phrase
//! is wrapped in [`P_OPEN`] / [`P_CLOSE`], and every [`SEG`] token that
//! follows it is immediately tagged with the image it segments, written with
//! [`image_tag`] as `(IMAGEk)` where `k` counts from 1.

/// The segmentation token; each occurrence yields one mask.
pub const SEG: &str = "[SEG]";
/// Opens a grounded phrase.
pub const P_OPEN: &str = "<p>";
/// Closes a grounded phrase.
pub const P_CLOSE: &str = "</p>";
/// Placeholder replaced by the visual tokens of one image.
pub const IMAGE: &str = "<image>";
/// Marks the start of an image's visual tokens.
pub const IM_START: &str = "<im_start>";
/// Marks the end of an image's visual tokens.
pub const IM_END: &str = "<im_end>";
/// Bounding-box token from GLaMM's vocabulary (unused by Calico's tasks).
pub const BBOX: &str = "<bbox>";
/// Point token from GLaMM's vocabulary (unused by Calico's tasks).
pub const POINT: &str = "<point>";

/// Every special token, in a stable order (useful for tokenizer set-up).
pub const ALL_SPECIAL: [&str; 8] = [SEG, P_OPEN, P_CLOSE, IMAGE, IM_START, IM_END, BBOX, POINT];

/// The literal text that starts every image tag: `(IMAGE`.
pub const IMAGE_TAG_PREFIX: &str = "(IMAGE";

/// Formats the tag of image `k_one_based` (1-based), e.g. `image_tag(2)` is
/// `"(IMAGE2)"`.
///
/// ```
/// assert_eq!(calico_text::tokens::image_tag(1), "(IMAGE1)");
/// ```
pub fn image_tag(k_one_based: usize) -> String {
    format!("{IMAGE_TAG_PREFIX}{k_one_based})")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_tags_are_one_based_and_parenthesised() {
        assert_eq!(image_tag(1), "(IMAGE1)");
        assert_eq!(image_tag(12), "(IMAGE12)");
    }

    #[test]
    fn special_tokens_are_distinct() {
        for (i, a) in ALL_SPECIAL.iter().enumerate() {
            for b in &ALL_SPECIAL[i + 1..] {
                assert_ne!(a, b);
            }
        }
        assert!(ALL_SPECIAL.contains(&"[SEG]"));
        assert!(ALL_SPECIAL.contains(&"<im_start>"));
    }
}
