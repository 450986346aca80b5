//! PACO-LVIS reader on hand-written fixtures in the real schema.

use calico_data::sources::{paco, read_source, ReadOptions};
use calico_data::{DataError, SkipCounts, SourceFormat};
use calico_masks::{polygons_to_rle, Rle};
use std::path::{Path, PathBuf};

fn fixture_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/sources/paco")
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("sources_paco_{name}"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn reads_objects_parts_and_counts_skips() {
    let path = fixture_root().join("annotations/paco_lvis_v1_val.json");
    let mut skipped = SkipCounts::default();
    let images = paco::read_file(&path, "val", &mut skipped).unwrap();

    assert_eq!(
        skipped,
        SkipCounts {
            // id 3 (obj_ann_id 99), id 4 (no obj_ann_id), id 12 (object in another image)
            dangling_parts: 3,
            unknown_categories: 1,
            unknown_images: 1,
            // id 9 (empty polygon list), id 10 (all-background RLE)
            empty_masks: 2,
            missing_images: 0,
            unreadable_images: 0,
            wrong_size_images: 0,
        }
    );

    let ids: Vec<&str> = images.iter().map(|r| r.id.as_str()).collect();
    assert_eq!(ids, ["139", "140"], "image 141 has no annotation");

    let im = &images[0];
    assert_eq!(im.file, "val2017/000000000139.jpg");
    assert_eq!((im.width, im.height), (4, 3));
    assert_eq!(im.split.as_deref(), Some("val"));
    assert_eq!(im.objects.len(), 2);

    // Uncompressed RLE, iscrowd.
    let chair = &im.objects[0];
    assert_eq!((chair.ann_id, chair.category.as_str()), (1, "chair"));
    assert!(chair.iscrowd);
    assert_eq!(chair.mask, Rle::new(3, 4, vec![0, 3, 9]));
    // Compressed RLE part linked by obj_ann_id.
    assert_eq!(chair.parts.len(), 1);
    assert_eq!(chair.parts[0].ann_id, 2);
    assert_eq!(chair.parts[0].category, "leg");
    assert_eq!(chair.parts[0].mask, Rle::new(3, 4, vec![1, 2, 9]));

    // Polygons, names normalised (`car_(automobile)`, `side_mirror`).
    let car = &im.objects[1];
    assert_eq!((car.ann_id, car.category.as_str()), (5, "car"));
    assert!(!car.iscrowd);
    assert_eq!(
        car.mask,
        polygons_to_rle(&[vec![0.0, 0.0, 3.0, 0.0, 3.0, 2.0, 0.0, 2.0]], 3, 4).unwrap()
    );
    assert!(car.mask.area() > 0);
    assert_eq!(car.parts.len(), 1);
    assert_eq!(car.parts[0].category, "side mirror");
    assert_eq!(
        car.parts[0].mask,
        polygons_to_rle(
            &[
                vec![1.0, 0.0, 3.0, 0.0, 3.0, 1.0, 1.0, 1.0],
                vec![0.0, 2.0, 1.0, 2.0, 1.0, 3.0]
            ],
            3,
            4
        )
        .unwrap()
    );

    let im = &images[1];
    assert_eq!(im.objects.len(), 1);
    assert_eq!(im.objects[0].mask, Rle::new(2, 2, vec![1, 2, 1]));
    assert!(!im.objects[0].iscrowd);
    assert!(im.objects[0].parts.is_empty());
}

#[test]
fn read_source_finds_split_files_and_checks_images() {
    let root = fixture_root();
    let ds = read_source(SourceFormat::PacoLvis, &root, &ReadOptions::default()).unwrap();
    assert_eq!(ds.name, "paco_lvis");
    assert_eq!(ds.format, SourceFormat::PacoLvis);
    assert_eq!(ds.image_root, root);
    assert_eq!(ds.images.len(), 2);
    assert_eq!(ds.skipped.total(), 7);

    // Only val2017/000000000139.jpg exists in the fixture.
    let opts = ReadOptions {
        check_images: true,
        name: Some("paco".into()),
        ..Default::default()
    };
    let ds = read_source(SourceFormat::PacoLvis, &root, &opts).unwrap();
    assert_eq!(ds.name, "paco");
    assert_eq!(ds.images.len(), 1);
    assert_eq!(ds.images[0].id, "139");
    assert_eq!(ds.skipped.missing_images, 1);

    let only_val = ReadOptions {
        splits: Some(vec!["val".into()]),
        ..Default::default()
    };
    assert_eq!(
        read_source(SourceFormat::PacoLvis, &root, &only_val)
            .unwrap()
            .images
            .len(),
        2
    );
    let train = ReadOptions {
        splits: Some(vec!["train".into()]),
        ..Default::default()
    };
    let err = read_source(SourceFormat::PacoLvis, &root, &train).unwrap_err();
    assert!(matches!(err, DataError::Io { .. }), "{err}");
    assert!(err.to_string().contains("paco_lvis_v1_train.json"), "{err}");
    let bogus = ReadOptions {
        splits: Some(vec!["minival".into()]),
        ..Default::default()
    };
    assert!(matches!(
        read_source(SourceFormat::PacoLvis, &root, &bogus),
        Err(DataError::Config(_))
    ));
}

#[test]
fn missing_annotation_files_list_what_was_looked_for() {
    let dir = temp_dir("empty");
    let err = read_source(SourceFormat::PacoLvis, &dir, &ReadOptions::default()).unwrap_err();
    assert!(matches!(err, DataError::Io { .. }), "{err}");
    let msg = err.to_string();
    for split in ["train", "val", "test"] {
        assert!(msg.contains(&format!("paco_lvis_v1_{split}.json")), "{msg}");
    }
}

#[test]
fn malformed_json_names_file_and_record() {
    let dir = temp_dir("malformed");
    // Syntax error.
    let p = dir.join("truncated.json");
    std::fs::write(&p, r#"{"images": [{"id": 1, "file_name": "a.jpg", "width": 2, "height": 2}], "annotations": [{"id": 1,"#).unwrap();
    let err = paco::read_file(&p, "val", &mut SkipCounts::default()).unwrap_err();
    match &err {
        DataError::Json { path, context, .. } => {
            assert_eq!(path, &p);
            assert_eq!(context, "annotations[0]");
        }
        other => panic!("expected a JSON error, got {other}"),
    }
    assert!(err.to_string().contains("truncated.json"));

    // A record of the wrong shape: annotations[1] has no image_id.
    let p = dir.join("shape.json");
    std::fs::write(
        &p,
        r#"{"categories": [{"id": 1, "name": "cup"}],
            "images": [{"id": 1, "file_name": "a.jpg", "width": 2, "height": 2}],
            "annotations": [
              {"id": 1, "image_id": 1, "category_id": 1, "segmentation": {"size": [2, 2], "counts": [0, 4]}},
              {"id": 2, "category_id": 1, "segmentation": {"size": [2, 2], "counts": [0, 4]}}
            ]}"#,
    )
    .unwrap();
    let err = paco::read_file(&p, "val", &mut SkipCounts::default()).unwrap_err();
    match &err {
        DataError::Json {
            path,
            context,
            message,
        } => {
            assert_eq!(path, &p);
            assert_eq!(context, "annotations[1]");
            assert!(message.contains("image_id"), "{message}");
        }
        other => panic!("expected a JSON error, got {other}"),
    }

    // Missing `categories`.
    let p = dir.join("nocats.json");
    std::fs::write(&p, r#"{"images": [], "annotations": []}"#).unwrap();
    let err = paco::read_file(&p, "val", &mut SkipCounts::default()).unwrap_err();
    assert!(matches!(err, DataError::Json { .. }), "{err}");
    assert!(err.to_string().contains("categories"), "{err}");

    // Not an object at all.
    let p = dir.join("array.json");
    std::fs::write(&p, "[1, 2]").unwrap();
    assert!(matches!(
        paco::read_file(&p, "val", &mut SkipCounts::default()),
        Err(DataError::Json { .. })
    ));

    // Missing file.
    let p = dir.join("absent.json");
    let err = paco::read_file(&p, "val", &mut SkipCounts::default()).unwrap_err();
    assert!(
        matches!(&err, DataError::Io { path, .. } if path == &p),
        "{err}"
    );
}

#[test]
fn bad_masks_are_errors_naming_the_record() {
    let dir = temp_dir("badmask");
    let write = |name: &str, seg: &str| {
        let p = dir.join(name);
        std::fs::write(
            &p,
            format!(
                r#"{{"images": [{{"id": 1, "file_name": "a.jpg", "width": 2, "height": 2}}],
                    "categories": [{{"id": 1, "name": "cup"}}],
                    "annotations": [
                      {{"id": 4, "image_id": 1, "category_id": 1, "segmentation": {{"size": [2, 2], "counts": [0, 4]}}}},
                      {{"id": 7, "image_id": 1, "category_id": 1, "segmentation": {seg}}}
                    ]}}"#
            ),
        )
        .unwrap();
        p
    };
    for (name, seg) in [
        ("sum.json", r#"{"size": [2, 2], "counts": [1, 2]}"#),
        ("size.json", r#"{"size": [3, 2], "counts": [0, 6]}"#),
        ("string.json", r#"{"size": [2, 2], "counts": "\u0001"}"#),
    ] {
        let p = write(name, seg);
        let err = paco::read_file(&p, "val", &mut SkipCounts::default()).unwrap_err();
        match &err {
            DataError::Mask { path, context, .. } => {
                assert_eq!(path, &p);
                assert_eq!(context, "annotations[1] (id 7)");
            }
            other => panic!("{name}: expected a mask error, got {other}"),
        }
    }
}

/// More annotations than one batch, objects listed after their parts:
/// order and linking survive the batching.
#[test]
fn many_annotations_stream_in_order() {
    let dir = temp_dir("many");
    let n_images = 1100usize;
    let mut anns = Vec::new();
    let mut id = 0u64;
    for im in 0..n_images {
        // Two parts first, then their object.
        let obj = 100_000 + im as u64;
        for _ in 0..2 {
            id += 1;
            anns.push(
                serde_json::json!({"id": id, "image_id": im, "category_id": 2, "obj_ann_id": obj,
                "segmentation": {"size": [2, 3], "counts": [1, 1, 4]}}),
            );
        }
        anns.push(
            serde_json::json!({"id": obj, "image_id": im, "category_id": 1,
            "segmentation": [[0.0, 0.0, 2.0, 0.0, 2.0, 1.0, 0.0, 1.0]]}),
        );
        id += 1;
        anns.push(
            serde_json::json!({"id": id, "image_id": im, "category_id": 1,
            "segmentation": {"size": [2, 3], "counts": [0, 6]}}),
        );
    }
    assert!(anns.len() > 2 * 2048);
    let images: Vec<_> = (0..n_images)
        .map(|i| serde_json::json!({"id": i, "file_name": format!("x/{i}.jpg"), "width": 3, "height": 2}))
        .collect();
    let doc = serde_json::json!({
        "images": images,
        "categories": [{"id": 1, "name": "mug"}, {"id": 2, "name": "mug:handle"}],
        "annotations": anns,
    });
    let p = dir.join("paco_lvis_v1_train.json");
    std::fs::write(&p, serde_json::to_vec(&doc).unwrap()).unwrap();
    let mut skipped = SkipCounts::default();
    let recs = paco::read_file(&p, "train", &mut skipped).unwrap();
    assert_eq!(skipped.total(), 0);
    assert_eq!(recs.len(), n_images);
    for (i, r) in recs.iter().enumerate() {
        assert_eq!(r.id, i.to_string());
        assert_eq!(r.objects.len(), 2);
        assert_eq!(r.objects[0].ann_id, 100_000 + i as u64);
        assert_eq!(r.objects[0].parts.len(), 2);
        assert_eq!(r.objects[0].parts[0].category, "handle");
        assert!(r.objects[0].parts[0].ann_id < r.objects[0].parts[1].ann_id);
        assert!(r.objects[1].parts.is_empty());
    }
}
