//! The SynthParts class table: enough classes and comparable groups, parts
//! shared within a group and parts that tell its classes apart, and only
//! names that exist in the real taxonomies.

use calico_data::normalise_name;
use calico_data::synth::{
    ade_part_id, class_table, classes_in, groups, PART_IMAGE_NET_SUPERCATEGORIES,
};
use calico_data::SourceFormat;
use std::collections::{BTreeMap, BTreeSet};

fn parts(c: &calico_data::synth::SynthClass) -> BTreeSet<&'static str> {
    c.parts.iter().copied().collect()
}

#[test]
fn at_least_sixteen_classes_in_five_groups() {
    let table = class_table();
    assert!(table.len() >= 16, "{} classes", table.len());
    assert!(groups().len() >= 5, "{:?}", groups());
    let names: BTreeSet<&str> = table.iter().map(|c| c.name).collect();
    assert_eq!(names.len(), table.len(), "class names are unique");
    for c in table {
        assert!(!c.parts.is_empty(), "{}", c.name);
        assert_eq!(parts(c).len(), c.parts.len(), "{}: repeated part", c.name);
        assert!(
            SourceFormat::ALL.iter().any(|&f| c.names(f).is_some()),
            "{} is written to no format",
            c.name
        );
    }
}

#[test]
fn classes_of_a_group_share_parts_and_differ_in_some() {
    let mut by_group: BTreeMap<&str, Vec<_>> = BTreeMap::new();
    for c in class_table() {
        by_group.entry(c.group).or_default().push(c);
    }
    for (group, members) in &by_group {
        assert!(members.len() >= 2, "group {group} has one class");
        for c in members {
            let others: Vec<_> = members.iter().filter(|d| d.name != c.name).collect();
            assert!(
                others.iter().any(|d| !parts(c).is_disjoint(&parts(d))),
                "{}: shares no part with another {group} class",
                c.name
            );
            assert!(
                others.iter().any(|d| !parts(c).is_subset(&parts(d))),
                "{}: has no part that another {group} class lacks",
                c.name
            );
        }
    }
}

#[test]
fn every_format_has_pairs_to_compare() {
    for f in SourceFormat::ALL {
        let mut by_group: BTreeMap<&str, usize> = BTreeMap::new();
        for i in classes_in(f) {
            *by_group.entry(class_table()[i].group).or_default() += 1;
        }
        let comparable = by_group.values().filter(|&&n| n >= 2).count();
        assert!(comparable >= 2, "{f}: groups {by_group:?}");
    }
}

#[test]
fn paco_names_normalise_to_the_class_names() {
    let mut qualified = 0;
    for c in class_table() {
        let Some(n) = c.paco else { continue };
        qualified += n.object.contains('(') as usize;
        assert_eq!(normalise_name(n.object), c.name, "{}", n.object);
        for p in c.format_parts(SourceFormat::PacoLvis) {
            assert!(
                !p.contains(':') && !p.contains(' '),
                "PACO spells {p:?} with underscores"
            );
        }
    }
    assert!(
        qualified >= 1,
        "one PACO name has a parenthesised qualifier"
    );
}

#[test]
fn ade_names_are_in_the_234_part_list() {
    for c in class_table() {
        let Some(n) = c.ade else { continue };
        for p in c.format_parts(SourceFormat::Ade20kPart234) {
            assert!(
                ade_part_id(n.object, p).is_some(),
                "\"{}'s {p}\" is not an ADE part",
                n.object
            );
        }
    }
    assert!(ade_part_id("stool", "back").is_none());
}

#[test]
fn part_image_net_parts_are_their_supercategory_parts() {
    let mut synsets = BTreeSet::new();
    for c in class_table() {
        let Some(n) = c.part_image_net else { continue };
        let (_, allowed) = PART_IMAGE_NET_SUPERCATEGORIES
            .iter()
            .find(|(s, _)| *s == n.supercategory)
            .unwrap_or_else(|| panic!("{}: supercategory {}", c.name, n.supercategory));
        for p in c.format_parts(SourceFormat::PartImageNet) {
            assert!(
                allowed.contains(&p),
                "{}: {p} is not a {} part",
                c.name,
                n.supercategory
            );
        }
        assert!(
            n.synset.len() == 9 && n.synset.starts_with("n99"),
            "{}",
            n.synset
        );
        assert!(synsets.insert(n.synset), "synset {} used twice", n.synset);
    }
    let total: usize = PART_IMAGE_NET_SUPERCATEGORIES
        .iter()
        .map(|(_, p)| p.len())
        .sum();
    assert_eq!(total, 40);
}

#[test]
fn documented_exclusions_hold() {
    let get = |n: &str| class_table().iter().find(|c| c.name == n).unwrap();
    assert!(!parts(get("ottoman")).contains("back"));
    assert!(!parts(get("stool")).contains("back") && !parts(get("stool")).contains("arm"));
    assert!(!parts(get("cup")).contains("cap"));
    assert!(!parts(get("bottle")).contains("handle"));
}
