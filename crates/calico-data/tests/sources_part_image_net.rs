//! PartImageNet reader on hand-written fixtures: the original part-category
//! spelling (`Quadruped Head`), the MixedParts spelling (`head`), whole-object
//! files, and a split without one.

use calico_data::sources::part_image_net::{self, ClassMap};
use calico_data::sources::{read_source, ReadOptions};
use calico_data::{DataError, SkipCounts, SourceFormat};
use calico_masks::{polygons_to_rle, Rle};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

fn fixture_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/sources/part_image_net")
}

#[test]
fn original_spelling_with_whole_file() {
    let root = fixture_root();
    let (parts, whole) = part_image_net::split_files(&root, "val");
    let (parts, whole) = (parts.unwrap(), whole.unwrap());
    assert!(parts.ends_with("annotations/val/val.json"));
    assert!(whole.ends_with("annotations/val_whole/val.json"));
    let mut skipped = SkipCounts::default();
    let recs = part_image_net::read_files(
        &parts,
        Some(&whole),
        "val",
        &ClassMap::builtin(),
        &mut skipped,
    )
    .unwrap();
    assert_eq!(
        skipped,
        SkipCounts {
            dangling_parts: 1,
            unknown_categories: 1,
            ..Default::default()
        }
    );
    assert_eq!(recs.len(), 2, "image 3 has no whole-object annotation");

    let whale = &recs[0];
    assert_eq!(whale.id, "1");
    assert_eq!(whale.file, "images/val/n02071294_1.JPEG");
    assert_eq!(whale.split.as_deref(), Some("val"));
    assert_eq!(whale.objects.len(), 1);
    let o = &whale.objects[0];
    // The killer whale synset is a `whale` (paper, appendix A.2).
    assert_eq!((o.ann_id, o.category.as_str()), (11, "whale"));
    assert_eq!(o.mask, Rle::new(4, 4, vec![0, 16]));
    let parts: Vec<(&str, &Rle)> = o
        .parts
        .iter()
        .map(|p| (p.category.as_str(), &p.mask))
        .collect();
    assert_eq!(
        parts,
        [
            ("head", &Rle::new(4, 4, vec![0, 2, 2, 2, 10])),
            ("tail", &Rle::new(4, 4, vec![12, 4]))
        ]
    );

    let dog = &recs[1];
    // n02085620 (Chihuahua) is in the dog-breed range.
    assert_eq!(dog.objects[0].category, "dog");
    assert_eq!(
        dog.objects[0].mask,
        polygons_to_rle(&[vec![0.0, 0.0, 4.0, 0.0, 4.0, 4.0, 0.0, 4.0]], 4, 4).unwrap()
    );
    assert_eq!(dog.objects[0].parts.len(), 1);
    assert_eq!(dog.objects[0].parts[0].category, "foot");
    assert_eq!(dog.objects[0].parts[0].ann_id, 3);
}

#[test]
fn mixed_parts_spelling_links_parts_by_overlap() {
    let root = fixture_root();
    let (parts, whole) = part_image_net::split_files(&root, "test");
    let (parts, whole) = (parts.unwrap(), whole.unwrap());
    assert!(parts.ends_with("annotations/test/test_mixed_parts.json"));
    let mut skipped = SkipCounts::default();
    let recs = part_image_net::read_files(
        &parts,
        Some(&whole),
        "test",
        &ClassMap::builtin(),
        &mut skipped,
    )
    .unwrap();
    assert_eq!(skipped.total(), 0);
    assert_eq!(recs.len(), 1);
    let objs = &recs[0].objects;
    assert_eq!(objs.len(), 2);
    let names =
        |k: usize| -> Vec<&str> { objs[k].parts.iter().map(|p| p.category.as_str()).collect() };
    // The side mirror overlaps both cars by one pixel: the first wins. The
    // body is in the left car, the tire ("tier") in the right one.
    assert_eq!(objs[0].category, "car");
    assert_eq!(names(0), ["side mirror", "body"]);
    assert_eq!(names(1), ["tire"]);
}

#[test]
fn split_without_whole_file_gets_one_object_per_image() {
    let root = fixture_root();
    let (parts, whole) = part_image_net::split_files(&root, "train");
    assert!(whole.is_none());
    let mut skipped = SkipCounts::default();
    let recs = part_image_net::read_files(
        &parts.unwrap(),
        None,
        "train",
        &ClassMap::builtin(),
        &mut skipped,
    )
    .unwrap();
    assert_eq!(recs.len(), 1);
    let o = &recs[0].objects[0];
    assert_eq!(o.category, "airplane", "synset n02690373 (airliner)");
    assert_eq!(
        o.mask,
        Rle::new(2, 3, vec![0, 2, 2, 2]),
        "union of the parts"
    );
    let names: Vec<&str> = o.parts.iter().map(|p| p.category.as_str()).collect();
    assert_eq!(names, ["wing", "tail"]);
}

#[test]
fn read_source_reads_every_split_and_applies_the_override_map() {
    let root = fixture_root();
    let ds = read_source(SourceFormat::PartImageNet, &root, &ReadOptions::default()).unwrap();
    assert_eq!(ds.name, "part_image_net");
    let splits: Vec<&str> = ds
        .images
        .iter()
        .map(|r| r.split.as_deref().unwrap())
        .collect();
    assert_eq!(splits, ["train", "val", "val", "test"]);

    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("sources_pin_override");
    std::fs::create_dir_all(&dir).unwrap();
    let map = dir.join("map.json");
    std::fs::write(&map, r#"{"n02085620": "Small_Dog", "CAR": "automobile"}"#).unwrap();
    let opts = ReadOptions {
        class_map: Some(map),
        splits: Some(vec!["val".into(), "test".into()]),
        ..Default::default()
    };
    let ds = read_source(SourceFormat::PartImageNet, &root, &opts).unwrap();
    let cats: Vec<&str> = ds
        .images
        .iter()
        .flat_map(|r| r.objects.iter().map(|o| o.category.as_str()))
        .collect();
    assert_eq!(cats, ["whale", "small dog", "automobile", "automobile"]);

    let bad = dir.join("bad.json");
    std::fs::write(&bad, r#"{"n02085620": 3}"#).unwrap();
    let opts = ReadOptions {
        class_map: Some(bad.clone()),
        ..Default::default()
    };
    let err = read_source(SourceFormat::PartImageNet, &root, &opts).unwrap_err();
    assert!(
        matches!(&err, DataError::Json { path, .. } if path == &bad),
        "{err}"
    );

    let empty = dir.join("empty_root");
    std::fs::create_dir_all(&empty).unwrap();
    let err = read_source(SourceFormat::PartImageNet, &empty, &ReadOptions::default()).unwrap_err();
    assert!(err.to_string().contains("annotations/train"), "{err}");
}

#[test]
fn class_map_lookups() {
    let m = ClassMap::builtin();
    assert_eq!(m.object_name("n02071294", None), "whale");
    assert_eq!(m.object_name("killer whale", None), "whale");
    assert_eq!(m.object_name("killer_whale", None), "whale");
    assert_eq!(m.object_name("impala", None), "antelope");
    assert_eq!(m.object_name("n02113978", None), "dog", "last dog breed");
    assert_eq!(m.object_name("n02114367", None), "wolf", "timber wolf");
    assert_eq!(m.object_name("n02480855", None), "ape", "gorilla");
    assert_eq!(m.object_name("n02486261", None), "monkey", "patas");
    assert_eq!(m.object_name("n04552348", None), "airplane", "warplane");
    // Unknown synsets fall back to the super-category, unknown names to themselves.
    assert_eq!(m.object_name("n09999999", Some("Quadruped")), "quadruped");
    assert_eq!(m.object_name("n09999999", None), "n09999999");
    assert_eq!(m.object_name("Antelope", Some("quadruped")), "antelope");
    assert_eq!(m.object_name("sea_otter", None), "sea otter");

    let m = m.with_overrides(HashMap::from([(
        "impala".to_string(),
        "Impala".to_string(),
    )]));
    assert_eq!(m.object_name("impala", None), "impala");
    assert_eq!(m.synset_name("n02071294").as_deref(), Some("whale"));
}

#[test]
fn builtin_map_covers_the_table_6_names() {
    // Every PartImageNet object name of the paper's Table 6 is produced by
    // at least one synset of the built-in map.
    let table6 = [
        "airplane",
        "alligator",
        "antelope",
        "ape",
        "badger",
        "bear",
        "bird",
        "boat",
        "camel",
        "cat",
        "cheetah",
        "cougar",
        "crocodile",
        "dog",
        "fish",
        "fox",
        "frog",
        "goat",
        "leopard",
        "lizard",
        "mink",
        "monkey",
        "otter",
        "ox",
        "panda",
        "polecat",
        "shark",
        "sheep",
        "snake",
        "squirrel",
        "swine",
        "tiger",
        "turtle",
        "water buffalo",
        "weasel",
        "whale",
        "wolf",
    ];
    let doc: serde_json::Value = serde_json::from_str(part_image_net::BUILTIN_CLASS_MAP).unwrap();
    let synsets = doc["synsets"].as_object().unwrap();
    let m = ClassMap::builtin();
    for name in table6 {
        let hit = synsets.keys().any(|s| m.object_name(s, None) == name) || name == "dog";
        assert!(hit, "{name}");
    }
    // Every entry is a well-formed synset with a name.
    for (k, v) in synsets {
        assert!(calico_data::sources::names::is_synset_id(k), "{k}");
        assert!(!v["name"].as_str().unwrap().is_empty(), "{k}");
    }
}
