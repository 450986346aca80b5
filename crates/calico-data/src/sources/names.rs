//! Name normalisation shared by the source readers.
//!
//! Every reader turns dataset spellings into the everyday, lower-case,
//! space-separated names that samples and answers use:
//!
//! * [`crate::normalise_name`] does the general part (`car_(automobile)` →
//!   `car`, `side_mirror` → `side mirror`);
//! * [`fix_spelling`] repairs dataset-specific words (PartImageNet's `tier`
//!   is a tire);
//! * [`part_image_net_part`] strips the super-category prefix of original
//!   PartImageNet part names (`Quadruped Head` → `head`);
//! * [`ade_class`] splits an ADE20K-Part-234 class (`chair's seat`) into its
//!   object and part;
//! * [`strip_code`] removes the `_NNN` / `_NNNNN` instance code of MixedParts
//!   release mentions (`leg_10102` → `leg`).

use crate::taxonomy::normalise_name;

/// Word-level spelling fixes applied to part names after normalisation:
/// PartImageNet writes `tier` for `tire` (and `tiers` for `tires`).
pub fn fix_spelling(name: &str) -> String {
    name.split(' ')
        .map(|w| match w {
            "tier" => "tire",
            "tiers" => "tires",
            other => other,
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Normalised part name of a PartImageNet part category.
///
/// Handles both spellings of the category list: MixedParts'
/// `{name: "head", supercategory: "quadruped"}` and the original
/// `{name: "Quadruped Head", supercategory: "Quadruped"}` (the
/// super-category prefix is removed, case-insensitively, whether it is
/// followed by a space, an underscore or nothing: `CarSideMirror` works
/// too). `Tier` becomes `tire`.
pub fn part_image_net_part(name: &str, supercategory: Option<&str>) -> String {
    let mut rest = name.trim();
    if let Some(sup) = supercategory.map(str::trim).filter(|s| !s.is_empty()) {
        if rest.len() > sup.len()
            && rest.is_char_boundary(sup.len())
            && rest[..sup.len()].eq_ignore_ascii_case(sup)
        {
            let tail = &rest[sup.len()..];
            let stripped = tail.trim_start_matches([' ', '_', '-']);
            // Strip at a separator or a camel-case boundary only
            // (`CarSideMirror`, not `Carpet`).
            let at_boundary =
                stripped.len() < tail.len() || tail.starts_with(|c: char| c.is_uppercase());
            if at_boundary && !stripped.is_empty() {
                rest = stripped;
            }
        }
    }
    fix_spelling(&normalise_name(&split_camel_case(rest)))
}

/// `SideMirror` → `Side Mirror`; leaves names that already contain spaces or
/// underscores, or are all one case, alone.
fn split_camel_case(s: &str) -> String {
    if s.contains([' ', '_']) {
        return s.to_string();
    }
    let mut out = String::with_capacity(s.len() + 4);
    let mut prev_lower = false;
    for c in s.chars() {
        if c.is_uppercase() && prev_lower {
            out.push(' ');
        }
        prev_lower = c.is_lowercase();
        out.push(c);
    }
    out
}

/// Splits an ADE20K-Part-234 class name `"{object}'s {part}"` into the
/// normalised object and part names (`"pool table's pocket"` →
/// `("pool table", "pocket")`). A name without `'s ` is all part, with an
/// empty object.
pub fn ade_class(raw: &str) -> (String, String) {
    match raw.find("'s ") {
        Some(i) => (
            fix_spelling(&normalise_name(&raw[..i])),
            fix_spelling(&normalise_name(&raw[i + 3..])),
        ),
        None => (String::new(), fix_spelling(&normalise_name(raw))),
    }
}

/// The split names readers write in [`crate::ImageRecord::split`]: ADE's
/// `training` / `validation` become `train` / `val`; others are lower-cased.
pub fn normalise_split(split: &str) -> String {
    let s = split.trim().to_ascii_lowercase();
    match s.as_str() {
        "training" => "train".to_string(),
        "validation" | "valid" => "val".to_string(),
        "testing" => "test".to_string(),
        _ => s,
    }
}

/// Whether `s` is a WordNet noun synset id as ImageNet writes them
/// (`n02071294`).
pub fn is_synset_id(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 9 && (b[0] == b'n' || b[0] == b'N') && b[1..].iter().all(u8::is_ascii_digit)
}

/// The synset id an ImageNet file name starts with
/// (`n02486261_8883.JPEG` → `n02486261`), if any. Directories are ignored.
pub fn synset_prefix(file_name: &str) -> Option<&str> {
    let base = file_name.rsplit(['/', '\\']).next().unwrap_or(file_name);
    let head = base.get(..9)?;
    let next = base[9..].chars().next();
    (is_synset_id(head) && matches!(next, None | Some('_') | Some('.'))).then_some(head)
}

/// Removes a trailing MixedParts instance code: `_` followed by exactly 3
/// (object) or 5 (part) ASCII digits (`chair_101` → `chair`,
/// `seat_cushion_10203` → `seat_cushion`). Other names are returned as is.
pub fn strip_code(name: &str) -> &str {
    let trimmed = name.trim();
    code_split(trimmed).map_or(trimmed, |(stem, _)| stem)
}

/// Splits `stem_DDD` or `stem_DDDDD` into the stem and the digits (the stem
/// must be non-empty).
pub(crate) fn code_split(token: &str) -> Option<(&str, &str)> {
    let b = token.as_bytes();
    let digits = b.iter().rev().take_while(|c| c.is_ascii_digit()).count();
    if digits != 3 && digits != 5 {
        return None;
    }
    let us = b.len().checked_sub(digits + 1)?;
    if us == 0 || b[us] != b'_' {
        return None;
    }
    Some((&token[..us], &token[us + 1..]))
}

/// A grounding or class label as samples write it: the code stripped, then
/// [`normalise_name`] and [`fix_spelling`].
pub fn label(name: &str) -> String {
    fix_spelling(&normalise_name(strip_code(name)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn part_image_net_prefixes_are_stripped() {
        assert_eq!(
            part_image_net_part("Quadruped Head", Some("Quadruped")),
            "head"
        );
        assert_eq!(part_image_net_part("head", Some("quadruped")), "head");
        assert_eq!(part_image_net_part("Car Tier", Some("Car")), "tire");
        assert_eq!(
            part_image_net_part("Car Side Mirror", Some("Car")),
            "side mirror"
        );
        assert_eq!(
            part_image_net_part("CarSideMirror", Some("Car")),
            "side mirror"
        );
        assert_eq!(
            part_image_net_part("side_mirror", Some("car")),
            "side mirror"
        );
        // The prefix is only stripped when something is left.
        assert_eq!(part_image_net_part("Car", Some("Car")), "car");
        assert_eq!(part_image_net_part("Bicycle Tier", None), "bicycle tire");
        // Not at a word boundary: kept.
        assert_eq!(part_image_net_part("Carpet", Some("Car")), "carpet");
    }

    #[test]
    fn ade_classes_split_on_possessive() {
        assert_eq!(ade_class("chair's seat"), ("chair".into(), "seat".into()));
        assert_eq!(
            ade_class("pool table's pocket"),
            ("pool table".into(), "pocket".into())
        );
        assert_eq!(
            ade_class("lamp's light source"),
            ("lamp".into(), "light source".into())
        );
        assert_eq!(ade_class("wheel"), (String::new(), "wheel".into()));
    }

    #[test]
    fn codes_are_stripped() {
        assert_eq!(strip_code("chair_101"), "chair");
        assert_eq!(strip_code("seat_cushion_10203"), "seat_cushion");
        assert_eq!(strip_code("leg_1010"), "leg_1010");
        assert_eq!(strip_code("_101"), "_101");
        assert_eq!(strip_code("tv"), "tv");
        assert_eq!(label("Side_Mirror_20103"), "side mirror");
        assert_eq!(label("tier_10101"), "tire");
    }

    #[test]
    fn synsets_and_splits() {
        assert!(is_synset_id("n02071294"));
        assert!(!is_synset_id("n0207129"));
        assert!(!is_synset_id("whale"));
        assert_eq!(synset_prefix("n02486261_8883.JPEG"), Some("n02486261"));
        assert_eq!(
            synset_prefix("train/n02486261/n02486261_8883.JPEG"),
            Some("n02486261")
        );
        assert_eq!(synset_prefix("n024862610.jpg"), None);
        assert_eq!(synset_prefix("x.jpg"), None);
        assert_eq!(normalise_split("training"), "train");
        assert_eq!(normalise_split("Validation"), "val");
        assert_eq!(normalise_split("test"), "test");
    }
}
