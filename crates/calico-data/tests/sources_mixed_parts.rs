//! MixedParts release JSON: coded answers rewritten into grounded samples.

use calico_data::samples::MaskRole;
use calico_data::sources::mixed_parts::{self, ReleaseOptions};
use calico_data::{DataError, Dataset, ImageRecord, SkipCounts, SourceFormat};
use calico_masks::{polygons_to_rle, CocoRle, Rle};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

fn record(id: &str, file: &str, width: u32, height: u32) -> ImageRecord {
    ImageRecord {
        id: id.into(),
        file: file.into(),
        width,
        height,
        split: Some("val".into()),
        objects: Vec::new(),
    }
}

fn sources() -> HashMap<String, Dataset> {
    let paco = Dataset {
        name: "paco_lvis".into(),
        format: SourceFormat::PacoLvis,
        image_root: PathBuf::from("/data/paco"),
        images: vec![
            record("139", "val2017/000000000139.jpg", 4, 3),
            record("140", "val2017/000000000140.jpg", 2, 2),
        ],
        skipped: SkipCounts::default(),
    };
    let pin = Dataset {
        name: "part_image_net".into(),
        format: SourceFormat::PartImageNet,
        image_root: PathBuf::from("/data/pin"),
        images: vec![
            record("1", "images/val/n02071294_1.JPEG", 4, 4),
            record("7", "images/val/n02085620_7.JPEG", 4, 4),
        ],
        skipped: SkipCounts::default(),
    };
    HashMap::from([(paco.name.clone(), paco), (pin.name.clone(), pin)])
}

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/sources/mixed_parts/mixed_parts_val.json")
}

fn compressed(rle: &Rle) -> CocoRle {
    CocoRle::from_rle(rle)
}

#[test]
fn coded_mentions_become_grounded_phrases() {
    let samples = mixed_parts::read_release(&fixture(), &sources()).unwrap();
    assert_eq!(samples.len(), 3);

    let s = &samples[0];
    assert_eq!(s.id, "paco_lvis/release-0");
    assert_eq!(s.source, "paco_lvis");
    assert_eq!(s.task, "common_parts");
    assert_eq!(s.split.as_deref(), Some("val"));
    assert_eq!(
        s.question,
        "Can you segment the common parts of the objects in these images?"
    );
    assert_eq!(
        s.answer,
        "Both images show <p> chair </p> [SEG] (IMAGE1) and <p> chair </p> [SEG] (IMAGE2). \
         The common part is the <p> leg </p> [SEG] (IMAGE1) of (IMAGE1) and the <p> leg </p> [SEG] (IMAGE2)."
    );
    let images: Vec<(&str, u32, u32)> = s
        .images
        .iter()
        .map(|i| (i.file.as_str(), i.width, i.height))
        .collect();
    assert_eq!(
        images,
        [
            ("/data/paco/val2017/000000000139.jpg", 4, 3),
            ("/data/paco/val2017/000000000140.jpg", 2, 2)
        ]
    );
    let masks: Vec<(usize, &str, Option<MaskRole>, &CocoRle)> = s
        .masks
        .iter()
        .map(|m| (m.image, m.label.as_str(), m.role, &m.rle))
        .collect();
    let leg = polygons_to_rle(&[vec![0.0, 0.0, 2.0, 0.0, 2.0, 2.0, 0.0, 2.0]], 3, 4).unwrap();
    assert!(leg.area() > 0);
    assert_eq!(
        masks,
        [
            (
                0,
                "chair",
                Some(MaskRole::Object),
                &compressed(&Rle::new(3, 4, vec![0, 3, 9]))
            ),
            (
                1,
                "chair",
                Some(MaskRole::Object),
                &compressed(&Rle::new(2, 2, vec![1, 2, 1]))
            ),
            (0, "leg", Some(MaskRole::CommonPart), &compressed(&leg)),
            (
                1,
                "leg",
                Some(MaskRole::CommonPart),
                &compressed(&Rle::new(2, 2, vec![0, 1, 3]))
            ),
        ]
    );
    // Compressed JSON form, as samples.jsonl writes it.
    assert_eq!(
        serde_json::to_string(&s.masks[0].rle).unwrap(),
        r#"{"size":[3,4],"counts":"039"}"#
    );

    // Groundings matched by name when they are out of order, by position
    // otherwise; image ids looked up by id or file stem.
    let s = &samples[1];
    assert_eq!(s.id, "part_image_net/release-1");
    assert_eq!(s.task, "unique_parts");
    assert_eq!(
        s.answer,
        "The images show <p> whale </p> [SEG] (IMAGE1) and <p> dog </p> [SEG] (IMAGE2). \
         The unique parts are the <p> fin </p> [SEG] (IMAGE1) and the <p> side mirror </p> [SEG] (IMAGE2)."
    );
    let masks: Vec<(usize, &str, Option<MaskRole>, &CocoRle)> = s
        .masks
        .iter()
        .map(|m| (m.image, m.label.as_str(), m.role, &m.rle))
        .collect();
    let full = compressed(&Rle::new(4, 4, vec![0, 16]));
    assert_eq!(
        masks,
        [
            (0, "whale", Some(MaskRole::Object), &full),
            (1, "dog", Some(MaskRole::Object), &full),
            (
                0,
                "fin",
                Some(MaskRole::UniquePart),
                &compressed(&Rle::new(4, 4, vec![12, 4]))
            ),
            (
                1,
                "side mirror",
                Some(MaskRole::UniquePart),
                &compressed(&Rle::new(4, 4, vec![3, 1, 12]))
            ),
        ]
    );
    assert_eq!(s.images[0].file, "/data/pin/images/val/n02071294_1.JPEG");

    let s = &samples[2];
    assert_eq!(s.task, "common_object");
    assert_eq!(s.answer, "No coded mention here.");
    assert!(s.masks.is_empty());
}

fn write_release(name: &str, json: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("sources_mixed_parts");
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join(name);
    std::fs::write(&p, json).unwrap();
    p
}

fn item(dataset: &str, ids: &str, q: &str, a: &str, groundings: &str) -> String {
    format!(
        r#"[{{"dataset_name": "{dataset}", "img_ids": {ids}, "q": "{q}", "a": "{a}", "groundings": {groundings}}}]"#
    )
}

const Q: &str = "Can you segment the common object in these images?";
const G: &str = r#"{"img_1": [{"segmentation": {"size": [3, 4], "counts": [0, 12]}, "name": "cup_101"}],
                    "img_2": [{"segmentation": {"size": [2, 2], "counts": [0, 4]}, "name": "cup_201"}]}"#;

fn invalid_message(p: &Path) -> String {
    match mixed_parts::read_release(p, &sources()) {
        Err(DataError::Invalid {
            path,
            context,
            message,
        }) => {
            assert_eq!(path, p);
            assert_eq!(context, "items[0]");
            message
        }
        other => panic!("expected an Invalid error, got {other:?}"),
    }
}

#[test]
fn unavailable_datasets_and_images() {
    let p = write_release(
        "pascal.json",
        &item("pascal_part", "[1, 2]", Q, "cup_101 cup_201", G),
    );
    let msg = invalid_message(&p);
    assert!(msg.contains("pascal_part"), "{msg}");
    let (samples, skipped) = mixed_parts::read_release_with(
        &p,
        &sources(),
        &ReleaseOptions {
            skip_unavailable: true,
        },
    )
    .unwrap();
    assert!(samples.is_empty());
    assert_eq!(skipped, 1);

    let p = write_release(
        "image.json",
        &item("paco_lvis", "[139, 12345]", Q, "cup_101 cup_201", G),
    );
    let msg = invalid_message(&p);
    assert!(msg.contains("12345"), "{msg}");
}

#[test]
fn inconsistent_items_are_errors_naming_the_item() {
    let ids = "[139, 140]";
    // A mention of a third image.
    let p = write_release(
        "third.json",
        &item("paco_lvis", ids, Q, "cup_101 cup_301", G),
    );
    let msg = invalid_message(&p);
    assert!(msg.contains("cup_301") && msg.contains("image 3"), "{msg}");

    // More first mentions than groundings.
    let p = write_release(
        "short.json",
        &item("paco_lvis", ids, Q, "cup_101 cup_102 cup_201", G),
    );
    let msg = invalid_message(&p);
    assert!(msg.contains("cup_102") && msg.contains("img_1"), "{msg}");

    // A literal [SEG] makes the counts disagree.
    let p = write_release(
        "seg.json",
        &item("paco_lvis", ids, Q, "cup_101 [SEG] cup_201", G),
    );
    let msg = invalid_message(&p);
    assert!(msg.contains("3 [SEG]") && msg.contains("2 masks"), "{msg}");

    // An RLE grounding whose size is not its image's.
    let bad = G.replace("[3, 4], \"counts\": [0, 12]", "[4, 3], \"counts\": [0, 12]");
    let p = write_release(
        "size.json",
        &item("paco_lvis", ids, Q, "cup_101 cup_201", &bad),
    );
    let msg = invalid_message(&p);
    assert!(msg.contains("groundings.img_1[0]"), "{msg}");

    // A question of no known task.
    let p = write_release(
        "task.json",
        &item("paco_lvis", ids, "What time is it?", "cup_101 cup_201", G),
    );
    let msg = invalid_message(&p);
    assert!(msg.contains("task"), "{msg}");
}

#[test]
fn malformed_items_are_json_errors_naming_the_item() {
    let good = item("paco_lvis", "[139, 140]", Q, "cup_101 cup_201", G);
    let two = format!(
        "[{}, {{\"dataset_name\": \"paco_lvis\", \"img_ids\": [139, 140], \"q\": \"x\"}}]",
        &good[1..good.len() - 1]
    );
    let p = write_release("missing_a.json", &two);
    match mixed_parts::read_release(&p, &sources()) {
        Err(DataError::Json {
            path,
            context,
            message,
        }) => {
            assert_eq!(path, p);
            assert_eq!(context, "items[1]");
            assert!(message.contains("`a`"), "{message}");
        }
        other => panic!("expected a JSON error, got {other:?}"),
    }
    let p = write_release("not_array.json", "{\"items\": []}");
    assert!(matches!(
        mixed_parts::read_release(&p, &sources()),
        Err(DataError::Json { .. })
    ));
}
