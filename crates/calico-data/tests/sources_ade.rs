//! ADE20K-Part-234 reader: a hand-written instance file plus 16-bit part
//! label PNGs written by the test.

use calico_data::sources::ade::{self, PartClasses};
use calico_data::sources::{read_source, ReadOptions};
use calico_data::{DataError, SkipCounts, SourceFormat};
use calico_masks::png_io::{write_label_png, LabelMap};
use calico_masks::Rle;
use std::path::{Path, PathBuf};

const NO: u16 = 65535;

fn fixture_json() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/sources/ade/ade20k_instance_val.json")
}

fn label_map(rows: &[&[u16]], bit_depth: u8) -> LabelMap {
    let h = rows.len() as u32;
    let w = rows[0].len() as u32;
    let mut m = LabelMap::filled(h, w, bit_depth, 0);
    for (y, row) in rows.iter().enumerate() {
        for (x, &v) in row.iter().enumerate() {
            m.set(y as u32, x as u32, v);
        }
    }
    m
}

/// A root with the fixture instance file and the part PNGs of images 1
/// and 2; `first` replaces image 1's map.
fn make_root(name: &str, first: Option<LabelMap>) -> PathBuf {
    let root = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("sources_ade_{name}"));
    let _ = std::fs::remove_dir_all(&root);
    let pngs = root.join("annotations_detectron2_part/validation");
    std::fs::create_dir_all(&pngs).unwrap();
    std::fs::copy(fixture_json(), root.join("ade20k_instance_val.json")).unwrap();
    let first = first
        .unwrap_or_else(|| label_map(&[&[46, 46, 5, 5], &[48, NO, 300, 0], &[48, 48, 0, 49]], 16));
    write_label_png(&pngs.join("ADE_val_00000001.png"), &first).unwrap();
    write_label_png(
        &pngs.join("ADE_val_00000002.png"),
        &label_map(&[&[49, NO], &[NO, NO]], 16),
    )
    .unwrap();
    root
}

#[test]
fn parts_are_label_maps_intersected_with_objects() {
    let root = make_root("ok", None);
    let mut skipped = SkipCounts::default();
    let recs = ade::read_file(
        &root.join("ade20k_instance_val.json"),
        &root,
        "validation",
        &PartClasses::builtin(),
        &mut skipped,
    )
    .unwrap();
    assert_eq!(
        skipped,
        SkipCounts {
            // id 300 in image 1
            unknown_categories: 1,
            // annotation 30
            unknown_images: 1,
            // the table (annotation 12)
            empty_masks: 1,
            ..Default::default()
        }
    );
    assert_eq!(recs.len(), 2, "image 3 has no objects");

    let r = &recs[0];
    assert_eq!(r.id, "1");
    assert_eq!(r.file, "images/validation/ADE_val_00000001.jpg");
    assert_eq!(r.split.as_deref(), Some("val"));
    assert_eq!((r.width, r.height), (4, 3));
    assert_eq!(r.objects.len(), 2);

    // Chair: columns 0-1, part_category_id [46, 48] (back, leg).
    let chair = &r.objects[0];
    assert_eq!((chair.ann_id, chair.category.as_str()), (10, "chair"));
    assert_eq!(chair.mask, Rle::new(3, 4, vec![0, 6, 6]));
    let parts: Vec<(u64, &str, &Rle)> = chair
        .parts
        .iter()
        .map(|p| (p.ann_id, p.category.as_str(), &p.mask))
        .collect();
    assert_eq!(
        parts,
        [
            (46, "back", &Rle::new(3, 4, vec![0, 1, 2, 1, 8])),
            (48, "leg", &Rle::new(3, 4, vec![1, 2, 2, 1, 6])),
        ]
    );

    // Person: columns 2-3, no part_category_id: only person's parts (0 arm,
    // 5 head), not the chair's seat (49) lying on it.
    let person = &r.objects[1];
    assert_eq!(person.category, "person");
    let parts: Vec<(u64, &str, &Rle)> = person
        .parts
        .iter()
        .map(|p| (p.ann_id, p.category.as_str(), &p.mask))
        .collect();
    assert_eq!(
        parts,
        [
            (0, "arm", &Rle::new(3, 4, vec![8, 1, 1, 1, 1])),
            (5, "head", &Rle::new(3, 4, vec![6, 1, 2, 1, 2])),
        ]
    );

    // `images/validation/…` file name, part_category_id as a single number.
    let r = &recs[1];
    assert_eq!(r.file, "images/validation/ADE_val_00000002.jpg");
    assert_eq!(r.objects[0].parts.len(), 1);
    assert_eq!(r.objects[0].parts[0].category, "seat");
    assert_eq!(r.objects[0].parts[0].mask, Rle::new(2, 2, vec![0, 1, 3]));
}

#[test]
fn read_source_uses_the_root_class_list() {
    let root = make_root("classes", None);
    let ds = read_source(SourceFormat::Ade20kPart234, &root, &ReadOptions::default()).unwrap();
    assert_eq!(ds.name, "ade20k_part234");
    assert_eq!(ds.images.len(), 2);
    assert_eq!(ds.skipped.unknown_categories, 1);

    // A custom list with 47 classes makes 48 and 49 unknown too, and
    // renames 46.
    let mut names: Vec<String> = (0..46).map(|i| format!("thing's part {i}")).collect();
    names[0] = "person's arm".into();
    names[5] = "person's head".into();
    names.push("chair's backrest".into());
    std::fs::write(
        root.join("ade20k_part234_classes.json"),
        serde_json::to_string(&names).unwrap(),
    )
    .unwrap();
    let opts = ReadOptions {
        splits: Some(vec!["validation".into()]),
        ..Default::default()
    };
    let ds = read_source(SourceFormat::Ade20kPart234, &root, &opts).unwrap();
    // Image 1: 48, 49, 300 unknown; image 2: 49 unknown.
    assert_eq!(ds.skipped.unknown_categories, 4);
    let chair = &ds.images[0].objects[0];
    let parts: Vec<&str> = chair.parts.iter().map(|p| p.category.as_str()).collect();
    assert_eq!(parts, ["backrest"]);
    assert!(ds.images[1].objects[0].parts.is_empty());

    let opts = ReadOptions {
        splits: Some(vec!["train".into()]),
        ..Default::default()
    };
    let err = read_source(SourceFormat::Ade20kPart234, &root, &opts).unwrap_err();
    assert!(
        err.to_string().contains("ade20k_instance_train.json"),
        "{err}"
    );
}

#[test]
fn eight_bit_png_is_an_error_naming_it() {
    let root = make_root(
        "eight_bit",
        Some(label_map(&[&[1, 1, 1, 1], &[1, 1, 1, 1], &[1, 1, 1, 1]], 8)),
    );
    let err = read_source(SourceFormat::Ade20kPart234, &root, &ReadOptions::default()).unwrap_err();
    match &err {
        DataError::Invalid { path, message, .. } => {
            assert!(path.ends_with("annotations_detectron2_part/validation/ADE_val_00000001.png"));
            assert!(
                message.contains("16-bit") && message.contains("8-bit"),
                "{message}"
            );
        }
        other => panic!("expected Invalid, got {other}"),
    }
}

#[test]
fn png_of_the_wrong_size_is_an_error_naming_both_sizes() {
    let root = make_root("size", Some(label_map(&[&[NO, NO, NO], &[NO, NO, NO]], 16)));
    let err = read_source(SourceFormat::Ade20kPart234, &root, &ReadOptions::default()).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, DataError::Invalid { .. }), "{msg}");
    assert!(msg.contains("ADE_val_00000001.png"), "{msg}");
    assert!(msg.contains("3x2") && msg.contains("4x3"), "{msg}");
}

#[test]
fn missing_png_is_an_error_naming_it() {
    let root = make_root("missing", None);
    let png = root.join("annotations_detectron2_part/validation/ADE_val_00000002.png");
    std::fs::remove_file(&png).unwrap();
    let err = read_source(SourceFormat::Ade20kPart234, &root, &ReadOptions::default()).unwrap_err();
    assert!(
        matches!(&err, DataError::Io { path, .. } if path == &png),
        "{err}"
    );
}

#[test]
fn corrupt_png_is_an_error_naming_it() {
    let root = make_root("corrupt", None);
    let png = root.join("annotations_detectron2_part/validation/ADE_val_00000001.png");
    std::fs::write(&png, b"not a png").unwrap();
    let err = read_source(SourceFormat::Ade20kPart234, &root, &ReadOptions::default()).unwrap_err();
    assert!(
        matches!(&err, DataError::Invalid { path, .. } if path == &png),
        "{err}"
    );
}

#[test]
fn file_names_and_png_paths() {
    for (name, want) in [
        (
            "ADE_train_00000001.jpg",
            "images/training/ADE_train_00000001.jpg",
        ),
        (
            "training/ADE_train_00000001.jpg",
            "images/training/ADE_train_00000001.jpg",
        ),
        (
            "images/training/ADE_train_00000001.jpg",
            "images/training/ADE_train_00000001.jpg",
        ),
        (
            "ADE20K-Part-234/images/training/ADE_train_00000001.jpg",
            "images/training/ADE_train_00000001.jpg",
        ),
        ("sub/ADE_train_1.jpg", "images/training/sub/ADE_train_1.jpg"),
    ] {
        assert_eq!(ade::image_rel_path(name, "training"), want, "{name}");
    }
    assert_eq!(
        ade::part_png_rel_path("images/training/ADE_train_00000001.jpg"),
        "annotations_detectron2_part/training/ADE_train_00000001.png"
    );
    assert_eq!(
        ade::part_png_rel_path("images/validation/a.b.jpeg"),
        "annotations_detectron2_part/validation/a.b.png"
    );
}

#[test]
fn builtin_class_list_has_234_classes() {
    let c = PartClasses::builtin();
    assert_eq!(c.len(), 234);
    assert_eq!(c.part(0), Some("arm"));
    assert_eq!(c.object(0), Some("person"));
    assert_eq!((c.object(49), c.part(49)), (Some("chair"), Some("seat")));
    assert_eq!(c.part(233).map(|s| !s.is_empty()), Some(true));
    assert_eq!(c.part(234), None);
}
