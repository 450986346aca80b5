//! The SynthParts class table: object classes, the comparable group each
//! belongs to, its parts, and how each class and part is spelled in every
//! source format it is written to.
//!
//! Every name written to a file is a name the real dataset uses (Table 6 of
//! the paper, the PACO-LVIS category list, the 234 ADE20K-Part-234 part
//! classes, the 11 PartImageNet super-categories). The PartImageNet synset
//! ids (`n99000001`, …) are **synthetic**: they only look like WordNet ids
//! and name no real ImageNet class.

use crate::taxonomy::SourceFormat;

/// How one class is spelled in one source format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FormatNames {
    /// The object category as written in the files (`car_(automobile)`, `dog`, `swivel chair`).
    pub object: &'static str,
    /// PartImageNet super-category (`quadruped`); empty for the other formats.
    pub supercategory: &'static str,
    /// PartImageNet synthetic synset id (`n99000014`); empty for the other formats.
    pub synset: &'static str,
    /// The format's name for each of [`SynthClass::parts`], in the same order:
    /// `None` when the format has no such part (its pixels then belong to the
    /// object but to no part annotation). Several parts may share a name
    /// (PartImageNet's `head` covers a dog's head and ears); they are then
    /// annotated as one part.
    pub parts: &'static [Option<&'static str>],
}

/// One procedural object class.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SynthClass {
    /// Everyday name (`chair`, `car`).
    pub name: &'static str,
    /// Comparable group (`seating`, `vehicles`): classes of a group share parts.
    pub group: &'static str,
    /// The parts of the shape model, in everyday English.
    pub parts: &'static [&'static str],
    /// PACO-LVIS spelling (`object:part` categories are built from it).
    pub paco: Option<FormatNames>,
    /// PartImageNet spelling (parts are the super-category's part set).
    pub part_image_net: Option<FormatNames>,
    /// ADE20K-Part-234 spelling (parts are `"{object}'s {part}"` entries of the 234-name list).
    pub ade: Option<FormatNames>,
}

impl SynthClass {
    /// The class's names in `format`, if the class is written to it.
    pub fn names(&self, format: SourceFormat) -> Option<&FormatNames> {
        match format {
            SourceFormat::PacoLvis => self.paco.as_ref(),
            SourceFormat::PartImageNet => self.part_image_net.as_ref(),
            SourceFormat::Ade20kPart234 => self.ade.as_ref(),
        }
    }

    /// The distinct part names annotated in `format`, in order of first use
    /// (empty when the class is not written to `format`).
    pub fn format_parts(&self, format: SourceFormat) -> Vec<&'static str> {
        let mut out: Vec<&'static str> = Vec::new();
        if let Some(n) = self.names(format) {
            for p in n.parts.iter().flatten() {
                if !out.contains(p) {
                    out.push(p);
                }
            }
        }
        out
    }

    /// For each shape part, the index of its name in [`SynthClass::format_parts`].
    pub(crate) fn part_keys(&self, format: SourceFormat) -> Vec<Option<usize>> {
        let names = self.format_parts(format);
        match self.names(format) {
            Some(n) => n
                .parts
                .iter()
                .map(|p| p.and_then(|p| names.iter().position(|q| *q == p)))
                .collect(),
            None => vec![None; self.parts.len()],
        }
    }
}

/// Every class, in a fixed order (the order of category ids in the files).
pub fn class_table() -> &'static [SynthClass] {
    CLASSES
}

/// The comparable groups, in class-table order.
pub fn groups() -> Vec<&'static str> {
    let mut out: Vec<&'static str> = Vec::new();
    for c in CLASSES {
        if !out.contains(&c.group) {
            out.push(c.group);
        }
    }
    out
}

/// Indices (into [`class_table`]) of the classes written to `format`.
pub fn classes_in(format: SourceFormat) -> Vec<usize> {
    (0..CLASSES.len())
        .filter(|&i| CLASSES[i].names(format).is_some())
        .collect()
}

/// The eleven PartImageNet super-categories and their parts, in the order of
/// the part-category ids written to the part files (ids 0..40).
pub const PART_IMAGE_NET_SUPERCATEGORIES: [(&str, &[&str]); 11] = [
    ("quadruped", &["head", "body", "foot", "tail"]),
    ("biped", &["head", "body", "hand", "foot", "tail"]),
    ("fish", &["head", "body", "fin", "tail"]),
    ("bird", &["head", "body", "wing", "foot", "tail"]),
    ("snake", &["head", "body"]),
    ("reptile", &["head", "body", "foot", "tail"]),
    ("car", &["body", "tier", "side_mirror"]),
    ("bicycle", &["head", "body", "seat", "tier"]),
    ("boat", &["body", "sail"]),
    ("aeroplane", &["head", "body", "wing", "engine", "tail"]),
    ("bottle", &["body", "mouth"]),
];

const fn paco(object: &'static str, parts: &'static [Option<&'static str>]) -> Option<FormatNames> {
    Some(FormatNames {
        object,
        supercategory: "",
        synset: "",
        parts,
    })
}

const fn pin(
    object: &'static str,
    supercategory: &'static str,
    synset: &'static str,
    parts: &'static [Option<&'static str>],
) -> Option<FormatNames> {
    Some(FormatNames {
        object,
        supercategory,
        synset,
        parts,
    })
}

const fn ade(object: &'static str, parts: &'static [Option<&'static str>]) -> Option<FormatNames> {
    paco(object, parts)
}

// The class table. The shape model of each class lives in `models.rs`
// (`build`), indexed by `name`; parts are drawn in the order listed there,
// which need not be the order here.
static CLASSES: &[SynthClass] = &[
    // ---- seating
    SynthClass {
        name: "chair",
        group: "seating",
        parts: &["seat", "back", "leg", "arm"],
        paco: paco(
            "chair",
            &[Some("seat"), Some("back"), Some("leg"), Some("arm")],
        ),
        part_image_net: None,
        ade: ade(
            "chair",
            &[Some("seat"), Some("back"), Some("leg"), Some("arm")],
        ),
    },
    SynthClass {
        name: "stool",
        group: "seating",
        parts: &["seat", "leg"],
        paco: paco("stool", &[Some("seat"), Some("leg")]),
        part_image_net: None,
        ade: ade("stool", &[Some("seat"), Some("leg")]),
    },
    SynthClass {
        name: "bench",
        group: "seating",
        parts: &["seat", "back", "leg", "arm"],
        paco: paco(
            "bench",
            &[Some("seat"), Some("back"), Some("leg"), Some("arm")],
        ),
        part_image_net: None,
        ade: ade(
            "bench",
            &[Some("seat"), Some("back"), Some("leg"), Some("arm")],
        ),
    },
    SynthClass {
        name: "swivel chair",
        group: "seating",
        parts: &["seat", "back", "base", "wheel"],
        paco: None,
        part_image_net: None,
        ade: ade(
            "swivel chair",
            &[Some("seat"), Some("back"), Some("base"), Some("wheel")],
        ),
    },
    SynthClass {
        name: "ottoman",
        group: "seating",
        parts: &["seat", "leg"],
        paco: None,
        part_image_net: None,
        ade: ade("ottoman", &[Some("seat"), Some("leg")]),
    },
    // ---- tables
    SynthClass {
        name: "table",
        group: "tables",
        parts: &["top", "leg", "drawer"],
        paco: paco("table", &[Some("top"), Some("leg"), Some("drawer")]),
        part_image_net: None,
        ade: ade("table", &[Some("top"), Some("leg"), Some("drawer")]),
    },
    SynthClass {
        name: "desk",
        group: "tables",
        parts: &["top", "leg", "drawer", "door"],
        paco: None,
        part_image_net: None,
        ade: ade(
            "desk",
            &[Some("top"), Some("leg"), Some("drawer"), Some("door")],
        ),
    },
    SynthClass {
        name: "pool table",
        group: "tables",
        parts: &["bed", "leg", "pocket"],
        paco: None,
        part_image_net: None,
        ade: ade("pool table", &[Some("bed"), Some("leg"), Some("pocket")]),
    },
    // ---- containers
    SynthClass {
        name: "mug",
        group: "containers",
        parts: &["body", "handle", "rim", "base"],
        paco: paco(
            "mug",
            &[Some("body"), Some("handle"), Some("rim"), Some("base")],
        ),
        part_image_net: None,
        ade: None,
    },
    SynthClass {
        name: "cup",
        group: "containers",
        parts: &["body", "inner body", "handle", "rim", "base"],
        // PACO's cup has no `body` part: the outer wall stays unannotated.
        paco: paco(
            "cup",
            &[
                None,
                Some("inner_body"),
                Some("handle"),
                Some("rim"),
                Some("base"),
            ],
        ),
        part_image_net: None,
        ade: None,
    },
    SynthClass {
        name: "bottle",
        group: "containers",
        parts: &["body", "neck", "cap", "label"],
        paco: paco(
            "bottle",
            &[Some("body"), Some("neck"), Some("cap"), Some("label")],
        ),
        part_image_net: pin(
            "bottle",
            "bottle",
            "n99000011",
            &[Some("body"), Some("mouth"), Some("mouth"), Some("body")],
        ),
        ade: None,
    },
    SynthClass {
        name: "can",
        group: "containers",
        parts: &["body", "lid", "rim", "pull tab"],
        paco: paco(
            "can",
            &[Some("body"), Some("lid"), Some("rim"), Some("pull_tab")],
        ),
        part_image_net: None,
        ade: None,
    },
    SynthClass {
        name: "jar",
        group: "containers",
        parts: &["body", "lid", "sticker", "base"],
        paco: paco(
            "jar",
            &[Some("body"), Some("lid"), Some("sticker"), Some("base")],
        ),
        part_image_net: None,
        ade: None,
    },
    // ---- quadrupeds
    SynthClass {
        name: "dog",
        group: "quadrupeds",
        parts: &["body", "head", "ear", "leg", "tail"],
        paco: paco(
            "dog",
            &[
                Some("body"),
                Some("head"),
                Some("ear"),
                Some("leg"),
                Some("tail"),
            ],
        ),
        part_image_net: pin(
            "dog",
            "quadruped",
            "n99000014",
            &[
                Some("body"),
                Some("head"),
                Some("head"),
                Some("foot"),
                Some("tail"),
            ],
        ),
        ade: None,
    },
    SynthClass {
        name: "cat",
        group: "quadrupeds",
        parts: &["body", "head", "ear", "leg", "tail"],
        paco: None,
        part_image_net: pin(
            "cat",
            "quadruped",
            "n99000015",
            &[
                Some("body"),
                Some("head"),
                Some("head"),
                Some("foot"),
                Some("tail"),
            ],
        ),
        ade: None,
    },
    SynthClass {
        name: "sheep",
        group: "quadrupeds",
        parts: &["body", "head", "horn", "leg", "tail"],
        paco: None,
        part_image_net: pin(
            "sheep",
            "quadruped",
            "n99000016",
            &[
                Some("body"),
                Some("head"),
                Some("head"),
                Some("foot"),
                Some("tail"),
            ],
        ),
        ade: None,
    },
    // ---- flyers
    SynthClass {
        name: "bird",
        group: "flyers",
        parts: &["body", "head", "wing", "tail", "foot"],
        paco: None,
        part_image_net: pin(
            "bird",
            "bird",
            "n99000017",
            &[
                Some("body"),
                Some("head"),
                Some("wing"),
                Some("tail"),
                Some("foot"),
            ],
        ),
        ade: None,
    },
    SynthClass {
        name: "airplane",
        group: "flyers",
        parts: &["body", "head", "wing", "tail", "engine"],
        paco: None,
        part_image_net: pin(
            "airplane",
            "aeroplane",
            "n99000018",
            &[
                Some("body"),
                Some("head"),
                Some("wing"),
                Some("tail"),
                Some("engine"),
            ],
        ),
        // ADE has no nose part: the nose is part of the fuselage.
        ade: ade(
            "airplane",
            &[
                Some("fuselage"),
                Some("fuselage"),
                Some("wing"),
                Some("stabilizer"),
                Some("turbine engine"),
            ],
        ),
    },
    // ---- vehicles
    SynthClass {
        name: "car",
        group: "vehicles",
        parts: &[
            "body",
            "hood",
            "door",
            "window",
            "wheel",
            "headlight",
            "mirror",
            "bumper",
        ],
        // PACO and ADE have no car `body` (nor PACO a `door`).
        paco: paco(
            "car_(automobile)",
            &[
                None,
                Some("hood"),
                None,
                Some("window"),
                Some("wheel"),
                Some("headlight"),
                Some("mirror"),
                Some("bumper"),
            ],
        ),
        part_image_net: pin(
            "car",
            "car",
            "n99000019",
            &[
                Some("body"),
                Some("body"),
                Some("body"),
                Some("body"),
                Some("tier"),
                Some("body"),
                Some("side_mirror"),
                Some("body"),
            ],
        ),
        ade: ade(
            "car",
            &[
                None,
                Some("hood"),
                Some("door"),
                Some("window"),
                Some("wheel"),
                Some("headlight"),
                Some("mirror"),
                Some("bumper"),
            ],
        ),
    },
    SynthClass {
        name: "bus",
        group: "vehicles",
        parts: &[
            "body",
            "door",
            "window",
            "wheel",
            "headlight",
            "wiper",
            "bumper",
        ],
        paco: None,
        part_image_net: pin(
            "bus",
            "car",
            "n99000020",
            &[
                Some("body"),
                Some("body"),
                Some("body"),
                Some("tier"),
                Some("body"),
                Some("body"),
                Some("body"),
            ],
        ),
        ade: ade(
            "bus",
            &[
                None,
                Some("door"),
                Some("window"),
                Some("wheel"),
                Some("headlight"),
                Some("wiper"),
                Some("bumper"),
            ],
        ),
    },
    SynthClass {
        name: "truck",
        group: "vehicles",
        parts: &[
            "body",
            "door",
            "window",
            "wheel",
            "headlight",
            "mirror",
            "bumper",
        ],
        paco: None,
        part_image_net: pin(
            "truck",
            "car",
            "n99000021",
            &[
                Some("body"),
                Some("body"),
                Some("body"),
                Some("tier"),
                Some("body"),
                Some("side_mirror"),
                Some("body"),
            ],
        ),
        ade: ade(
            "truck",
            &[
                None,
                Some("door"),
                Some("window"),
                Some("wheel"),
                Some("headlight"),
                Some("mirror"),
                Some("bumper"),
            ],
        ),
    },
    SynthClass {
        name: "van",
        group: "vehicles",
        parts: &[
            "body",
            "door",
            "window",
            "wheel",
            "headlight",
            "taillight",
            "mirror",
            "bumper",
        ],
        paco: None,
        part_image_net: pin(
            "van",
            "car",
            "n99000022",
            &[
                Some("body"),
                Some("body"),
                Some("body"),
                Some("tier"),
                Some("body"),
                Some("body"),
                Some("side_mirror"),
                Some("body"),
            ],
        ),
        ade: ade(
            "van",
            &[
                None,
                Some("door"),
                Some("window"),
                Some("wheel"),
                Some("headlight"),
                Some("taillight"),
                Some("mirror"),
                Some("bumper"),
            ],
        ),
    },
    // ---- two-wheelers
    SynthClass {
        name: "bicycle",
        group: "two-wheelers",
        parts: &[
            "wheel",
            "top tube",
            "down tube",
            "seat tube",
            "seat",
            "handlebar",
        ],
        paco: paco(
            "bicycle",
            &[
                Some("wheel"),
                Some("top_tube"),
                Some("down_tube"),
                Some("seat_tube"),
                Some("saddle"),
                Some("handlebar"),
            ],
        ),
        part_image_net: pin(
            "bicycle",
            "bicycle",
            "n99000023",
            &[
                Some("tier"),
                Some("body"),
                Some("body"),
                Some("body"),
                Some("seat"),
                Some("head"),
            ],
        ),
        ade: None,
    },
    SynthClass {
        name: "minibike",
        group: "two-wheelers",
        parts: &["body", "wheel", "seat", "mirror", "license plate"],
        paco: None,
        part_image_net: None,
        ade: ade(
            "minibike",
            &[
                None,
                Some("wheel"),
                Some("seat"),
                Some("mirror"),
                Some("license plate"),
            ],
        ),
    },
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_format_name_list_matches_the_parts() {
        for c in class_table() {
            for f in SourceFormat::ALL {
                if let Some(n) = c.names(f) {
                    assert_eq!(n.parts.len(), c.parts.len(), "{} in {f}", c.name);
                    assert!(n.parts.iter().any(|p| p.is_some()), "{} in {f}", c.name);
                }
            }
        }
    }

    #[test]
    fn part_image_net_parts_belong_to_their_supercategory() {
        for c in class_table() {
            let Some(n) = c.part_image_net else { continue };
            let (_, parts) = PART_IMAGE_NET_SUPERCATEGORIES
                .iter()
                .find(|(s, _)| *s == n.supercategory)
                .unwrap_or_else(|| panic!("{}: unknown supercategory", c.name));
            for p in n.parts.iter().flatten() {
                assert!(
                    parts.contains(p),
                    "{}: {p} not a {} part",
                    c.name,
                    n.supercategory
                );
            }
            assert!(n.synset.len() == 9 && n.synset.starts_with('n'));
        }
    }
}
