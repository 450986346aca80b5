//! `calico data …` end to end, and its handling of bad input: clear message
//! naming the file, exit code 2, nothing half-written.

mod common;

use common::{build, calico, stderr, tmp};
use std::path::Path;

fn synth(dir: &Path) -> std::path::PathBuf {
    common::synth(dir, 24)
}

#[test]
fn synth_build_stats_and_determinism() {
    let d = tmp("ok");
    let s = synth(&d);
    let (a, b) = (d.join("a"), d.join("b"));
    assert!(build(&s, &a, &[]).status.success());
    assert!(build(&s, &b, &[]).status.success());
    for f in ["train.jsonl", "val.jsonl", "test.jsonl", "stats.json"] {
        assert_eq!(
            std::fs::read(a.join(f)).unwrap(),
            std::fs::read(b.join(f)).unwrap(),
            "{f}"
        );
    }
    let o = calico(&[
        "data",
        "stats",
        a.to_str().unwrap(),
        "--json",
        d.join("s.json").to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let table = String::from_utf8_lossy(&o.stdout);
    assert!(table.contains("Total # Instances"), "{table}");
    let stats: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(d.join("s.json")).unwrap()).unwrap();
    let built: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(a.join("stats.json")).unwrap()).unwrap();
    assert_eq!(stats, built, "stats of the files equal the builder's own");
}

#[test]
fn malformed_json_names_the_file_and_writes_nothing() {
    let d = tmp("json");
    let s = synth(&d);
    let f = s.join("paco_lvis/annotations/paco_lvis_v1_train.json");
    let text = std::fs::read_to_string(&f).unwrap();
    std::fs::write(&f, &text[..text.len() / 2]).unwrap();
    let out = d.join("out");
    let o = build(&s, &out, &[]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("paco_lvis_v1_train.json"),
        "{}",
        stderr(&o)
    );
    assert!(!out.join("train.jsonl").exists());
}

#[test]
fn wrong_png_depth_is_an_error_naming_the_png() {
    let d = tmp("png");
    let s = synth(&d);
    let dir = s.join("ade20k_part234/annotations_detectron2_part/training");
    let png = std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .next()
        .unwrap()
        .path();
    let map = calico_masks::png_io::read_label_png(&png).unwrap();
    let eight = calico_masks::png_io::LabelMap {
        bit_depth: 8,
        data: map.data.iter().map(|&v| v.min(255)).collect(),
        ..map
    };
    calico_masks::png_io::write_label_png(&png, &eight).unwrap();
    let out = d.join("out");
    let o = build(&s, &out, &[]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    let name = png.file_name().unwrap().to_string_lossy().into_owned();
    assert!(
        stderr(&o).contains(&name) && stderr(&o).contains("16"),
        "{}",
        stderr(&o)
    );
    assert!(!out.join("train.jsonl").exists());
}

#[test]
fn missing_or_spoilt_images_and_dangling_parts_are_skipped_and_counted() {
    let d = tmp("skip");
    let s = synth(&d);
    // Remove two PACO images, spoil two more (one is not an image, one is
    // of another size than its annotations give), and cut one part loose
    // from its object.
    let img_dir = s.join("paco_lvis/train2017");
    let mut files: Vec<_> = std::fs::read_dir(&img_dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    files.sort();
    for f in &files[..2] {
        std::fs::remove_file(f).unwrap();
    }
    std::fs::write(&files[2], b"not an image").unwrap();
    // PNG bytes under a .jpg name: images are recognised by content.
    image::RgbImage::new(10, 7)
        .save_with_format(&files[3], image::ImageFormat::Png)
        .unwrap();
    let f = s.join("paco_lvis/annotations/paco_lvis_v1_train.json");
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&f).unwrap()).unwrap();
    let anns = v["annotations"].as_array_mut().unwrap();
    let part = anns
        .iter_mut()
        .find(|a| a.get("obj_ann_id").is_some())
        .unwrap();
    part["obj_ann_id"] = serde_json::json!(987654321);
    std::fs::write(&f, serde_json::to_string(&v).unwrap()).unwrap();
    let out = d.join("out");
    let o = build(&s, &out, &["--check-images"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(err.contains("\"missing_images\":2"), "{err}");
    assert!(err.contains("\"unreadable_images\":1"), "{err}");
    assert!(err.contains("\"wrong_size_images\":1"), "{err}");
    assert!(err.contains("\"dangling_parts\":1"), "{err}");
}

#[test]
fn bad_arguments_exit_2() {
    let d = tmp("args");
    let o = calico(&[
        "data",
        "build",
        "--source",
        "coco=/nowhere",
        "--out",
        d.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("unknown source format"),
        "{}",
        stderr(&o)
    );
    let o = calico(&[
        "data",
        "build",
        "--source",
        "paco_lvis=/nowhere",
        "--out",
        d.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("/nowhere"), "{}", stderr(&o));
    let o = calico(&["data", "stats", "/nowhere.jsonl"]);
    assert_eq!(o.status.code(), Some(2));
    let empty = d.join("empty_synth");
    let o = calico(&[
        "data",
        "synth",
        "--images",
        "0",
        "--out",
        empty.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("at least 1"), "{}", stderr(&o));
    assert!(!empty.exists());
    // An --out that is a file, or lies below one, is named as such.
    let file = d.join("afile");
    std::fs::write(&file, "x").unwrap();
    for (out, said) in [
        (file.clone(), "afile: exists and is not a directory"),
        (file.join("synth"), "afile is a file, not a directory"),
    ] {
        let o = calico(&[
            "data",
            "synth",
            "--images",
            "1",
            "--out",
            out.to_str().unwrap(),
        ]);
        assert_eq!(o.status.code(), Some(2));
        assert!(stderr(&o).contains(said), "{}", stderr(&o));
    }
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "x");
    // A source with no objects at all: nothing to build, nothing written.
    let paco = d.join("paco/annotations");
    std::fs::create_dir_all(&paco).unwrap();
    std::fs::write(
        paco.join("paco_lvis_v1_train.json"),
        r#"{"images": [], "annotations": [], "categories": []}"#,
    )
    .unwrap();
    let out = d.join("built");
    let src = format!("paco_lvis={}", d.join("paco").display());
    let o = calico(&[
        "data",
        "build",
        "--source",
        &src,
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("no source has a usable object"),
        "{}",
        stderr(&o)
    );
    assert!(!out.exists());
}

#[test]
fn release_json_converts_to_samples() {
    let d = tmp("release");
    let s = synth(&d);
    // Two PACO images of the synthetic set, one coded item in the release schema.
    let f = s.join("paco_lvis/annotations/paco_lvis_v1_train.json");
    let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&f).unwrap()).unwrap();
    let ids: Vec<u64> = v["images"].as_array().unwrap()[..2]
        .iter()
        .map(|i| i["id"].as_u64().unwrap())
        .collect();
    let square = serde_json::json!([[4.0, 4.0, 20.0, 4.0, 20.0, 20.0, 4.0, 20.0]]);
    let item = serde_json::json!([{
        "dataset_name": "paco_lvis", "img_ids": ids,
        "q": "Can you segment the common object in these images?",
        "a": "The common object is chair_101 and chair_201.",
        "groundings": {"img_1": [{"name": "chair", "segmentation": square}],
                       "img_2": [{"name": "chair", "segmentation": square}]}}]);
    let release = d.join("mixed_parts_train.json");
    std::fs::write(&release, item.to_string()).unwrap();
    let out = d.join("converted/samples.jsonl");
    std::fs::create_dir_all(out.parent().unwrap()).unwrap();
    let o = calico(&[
        "data",
        "convert-release",
        "--release",
        release.to_str().unwrap(),
        "--source",
        &format!("paco_lvis={}", s.join("paco_lvis").display()),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let samples = calico_data::samples::read_samples(&out).unwrap();
    assert_eq!(samples.len(), 1);
    let sample = &samples[0];
    assert_eq!(sample.task, "common_object");
    assert_eq!(sample.masks.len(), 2);
    let parsed = calico_text::parse::parse_answer(&sample.answer, 2).unwrap();
    assert_eq!(parsed.requests.len(), 2, "{}", sample.answer);
    // Image paths resolve from the samples file's directory.
    let img = out.parent().unwrap().join(&sample.images[0].file);
    assert!(img.exists(), "{}", img.display());
}

fn jsonl_lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect()
}

fn subset(data: &Path, out: &Path, extra: &[&str]) -> std::process::Output {
    let mut args = vec![
        "data",
        "subset",
        "--data",
        data.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    calico(&args)
}

#[test]
fn subsets_are_evenly_spaced_or_seeded_and_keep_their_images_reachable() {
    let d = tmp("subset");
    let s = synth(&d);
    let built = d.join("built");
    assert!(build(&s, &built, &[]).status.success());
    let samples = built.join("train.jsonl");
    let all = jsonl_lines(&samples);
    let n = all.len();
    assert!(n > 20, "{n} samples");

    // Evenly spaced, next to the data: the chosen lines, byte for byte.
    let near = built.join("spread.jsonl");
    let o = subset(&samples, &near, &["--count", "7"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let want: Vec<String> = (0..7).map(|i| all[i * n / 7].clone()).collect();
    assert_eq!(jsonl_lines(&near), want);
    assert!(
        stderr(&o).contains(&format!("wrote 7 of the {n} samples")),
        "{}",
        stderr(&o)
    );

    // Random: the seed decides, file order is kept, a task filter holds.
    let pick = |name: &str, seed: &str| {
        let out = built.join(name);
        let o = subset(
            &samples,
            &out,
            &[
                "--count",
                "5",
                "--random",
                "--seed",
                seed,
                "--task",
                "common-parts",
            ],
        );
        assert!(o.status.success(), "{}", stderr(&o));
        jsonl_lines(&out)
    };
    let (a, b, c) = (
        pick("r1.jsonl", "1"),
        pick("r2.jsonl", "1"),
        pick("r3.jsonl", "2"),
    );
    assert_eq!(a, b);
    assert_ne!(a, c);
    let positions: Vec<usize> = a
        .iter()
        .map(|l| all.iter().position(|x| x == l).expect("a line of the data"))
        .collect();
    assert!(positions.windows(2).all(|w| w[0] < w[1]), "{positions:?}");
    for l in &a {
        let v: serde_json::Value = serde_json::from_str(l).unwrap();
        assert_eq!(v["task"], "common_parts");
    }

    // Elsewhere: the image paths are rewritten to reach the same files, the
    // rest of each sample is unchanged.
    let far_dir = d.join("elsewhere/deeper");
    std::fs::create_dir_all(&far_dir).unwrap();
    let far = far_dir.join("spread.jsonl");
    let o = subset(&samples, &far, &["--count", "7"]);
    assert!(o.status.success(), "{}", stderr(&o));
    for (moved, orig) in jsonl_lines(&far).iter().zip(&want) {
        let mut m: serde_json::Value = serde_json::from_str(moved).unwrap();
        let o: serde_json::Value = serde_json::from_str(orig).unwrap();
        for (k, img) in m["images"].as_array_mut().unwrap().iter_mut().enumerate() {
            let new = far_dir.join(img["file"].as_str().unwrap());
            let old = built.join(o["images"][k]["file"].as_str().unwrap());
            assert_ne!(img["file"], o["images"][k]["file"]);
            assert_eq!(new.canonicalize().unwrap(), old.canonicalize().unwrap());
            img["file"] = o["images"][k]["file"].clone();
        }
        assert_eq!(m, o);
    }
    // A count above what matches writes all of it and says so.
    let o = subset(&samples, &d.join("all.jsonl"), &["--count", "1000000"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(jsonl_lines(&d.join("all.jsonl")).len(), n);
    assert!(stderr(&o).contains("all"), "{}", stderr(&o));
}

#[test]
fn bad_subset_requests_exit_2_and_write_nothing() {
    let d = tmp("subset-bad");
    let good = r#"{"id": "a/1", "task": "common_object", "source": "a", "images": [{"file": "x.png", "width": 4, "height": 4}], "question": "q", "answer": "a", "masks": []}"#;
    let data = d.join("s.jsonl");
    std::fs::write(&data, format!("{good}\n{good}\n")).unwrap();
    let out = d.join("out.jsonl");
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec!["--count", "1", "--task", "common_objects"],
            "--task common_objects: not a task",
        ),
        (vec!["--count", "1", "--source", "b"], "its sources: a"),
        (
            vec!["--count", "1", "--task", "unique_parts"],
            "no sample of",
        ),
        (vec!["--count", "0"], "at least 1"),
    ];
    for (args, want) in cases {
        let o = subset(&data, &out, &args);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", stderr(&o));
        assert!(stderr(&o).contains(want), "{args:?}: {}", stderr(&o));
        assert!(!out.exists(), "{args:?}");
    }
    let o = subset(&data, &data, &["--count", "1"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("is the --data file itself"),
        "{}",
        stderr(&o)
    );
    assert_eq!(jsonl_lines(&data).len(), 2, "the data is untouched");
    let o = subset(&data, &d.join("missing/out.jsonl"), &["--count", "1"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    // A bad line anywhere is named, even one the subset would not take.
    std::fs::write(&data, format!("{good}\n{good}\n{{\"id\": 3}}\n")).unwrap();
    let o = subset(&data, &out, &["--count", "1"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("line 3"), "{}", stderr(&o));
    assert!(!out.exists());
}
