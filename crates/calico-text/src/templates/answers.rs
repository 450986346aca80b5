//! Answer templates.
//!
//! Placeholders (filled by [`crate::english::fill`]):
//!
//! * `{a_objects}` / `{the_objects}`: the list of grounded object phrases,
//!   with indefinite / definite articles;
//! * `{the_parts}`: the list of grounded part phrases (always definite);
//! * `{both}`: `"both"` for exactly two images, `"all"` otherwise.
//!
//! Every template is a single sentence. Templates of the non-empty lists
//! contain exactly one list placeholder; the `*_NONE` templates contain none
//! and are used when there is nothing to list (their answers carry no
//! `[SEG]` token). The first entry of each list is the canonical form.

/// Common object, one category shared by the images.
pub const COMMON_OBJECT_SINGULAR: &[&str] = &[
    "The common object is {the_objects}.",
    "The images show {a_objects}.",
    "The object shared by the images is {the_objects}.",
    "{a_objects} appears in {both} images.",
    "The images have {a_objects} in common.",
    "Each image contains {a_objects}.",
    "The object that the images share is {the_objects}.",
    "{the_objects} is the object common to the images.",
];

/// Common object, several categories shared by the images.
pub const COMMON_OBJECT_PLURAL: &[&str] = &[
    "The common objects are {the_objects}.",
    "The images show {a_objects}.",
    "The objects shared by the images are {the_objects}.",
    "{a_objects} appear in {both} images.",
    "The images have {a_objects} in common.",
    "Each image contains {a_objects}.",
];

/// Common object, nothing shared (empty label list).
pub const COMMON_OBJECT_NONE: &[&str] = &[
    "The images do not share a common object.",
    "There is no object that the images have in common.",
    "No single object appears in {both} images.",
];

/// Identification with a single image.
pub const IDENTIFY_SINGLE: &[&str] = &[
    "The image shows {a_objects}.",
    "The picture contains {a_objects}.",
    "{a_objects} can be seen in the image.",
    "There is {a_objects} in the image.",
];

/// Identification when every image shows the same category.
pub const IDENTIFY_SAME: &[&str] = &[
    "{both} images show {a_objects}.",
    "{both} images contain {a_objects}.",
    "{a_objects} can be seen in {both} images.",
    "{both} pictures depict {a_objects}.",
];

/// Identification when the images show different categories.
pub const IDENTIFY_DIFFERENT: &[&str] = &[
    "The images show {a_objects}.",
    "The images contain {a_objects}.",
    "The pictures depict {a_objects}.",
    "{a_objects} can be seen in the images.",
    "The objects in the images are {a_objects}.",
];

/// Common parts, exactly one part.
pub const COMMON_PARTS_SINGULAR: &[&str] = &[
    "The common part between the objects is {the_parts}.",
    "{both} objects have {the_parts}.",
    "The part shared by the objects is {the_parts}.",
    "The objects have {the_parts} in common.",
    "{the_parts} is present on {both} objects.",
];

/// Common parts, several parts.
pub const COMMON_PARTS_PLURAL: &[&str] = &[
    "The common parts between the objects are {the_parts}.",
    "{both} objects have {the_parts}.",
    "The parts shared by the objects are {the_parts}.",
    "The objects have {the_parts} in common.",
    "{the_parts} are present on {both} objects.",
];

/// Common parts, none.
pub const COMMON_PARTS_NONE: &[&str] = &[
    "The objects have no parts in common.",
    "There are no parts shared by the objects.",
    "No part is common to {both} objects.",
];

/// Unique parts, exactly one part.
pub const UNIQUE_PARTS_SINGULAR: &[&str] = &[
    "The unique part between the objects is {the_parts}.",
    "The distinct part is {the_parts}.",
    "The only part that is not shared is {the_parts}.",
    "{the_parts} is not shared by {both} objects.",
    "The objects differ in {the_parts}.",
];

/// Unique parts, several parts.
pub const UNIQUE_PARTS_PLURAL: &[&str] = &[
    "The unique parts between the objects are {the_parts}.",
    "The distinct parts are {the_parts}.",
    "The parts that are not shared are {the_parts}.",
    "{the_parts} are not shared by {both} objects.",
    "The objects differ in {the_parts}.",
];

/// Unique parts, none.
pub const UNIQUE_PARTS_NONE: &[&str] = &[
    "The objects have no unique parts.",
    "Every part is shared by {both} objects.",
    "There are no distinct parts between the objects.",
];

/// Every answer-template list with a short name, for checks and tooling.
pub const ALL: &[(&str, &[&str])] = &[
    ("common_object_singular", COMMON_OBJECT_SINGULAR),
    ("common_object_plural", COMMON_OBJECT_PLURAL),
    ("common_object_none", COMMON_OBJECT_NONE),
    ("identify_single", IDENTIFY_SINGLE),
    ("identify_same", IDENTIFY_SAME),
    ("identify_different", IDENTIFY_DIFFERENT),
    ("common_parts_singular", COMMON_PARTS_SINGULAR),
    ("common_parts_plural", COMMON_PARTS_PLURAL),
    ("common_parts_none", COMMON_PARTS_NONE),
    ("unique_parts_singular", UNIQUE_PARTS_SINGULAR),
    ("unique_parts_plural", UNIQUE_PARTS_PLURAL),
    ("unique_parts_none", UNIQUE_PARTS_NONE),
];
