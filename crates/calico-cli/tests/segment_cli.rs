//! `calico segment`, `calico predict` and `calico report` end to end with
//! the untrained `--preset tiny` model: files written and parseable, bad
//! input rejected with exit 2 before anything is written, predictions
//! accepted by `calico eval`, the report self-contained.

mod common;

use std::path::{Path, PathBuf};

use common::{calico, interrupt_when, signal_when, stderr, tmp};

/// A gradient image with a coloured box.
fn write_png(path: &Path, w: u32, h: u32, colour: [u8; 3]) {
    let img = image::RgbImage::from_fn(w, h, |x, y| {
        if (w / 4..3 * w / 4).contains(&x) && (h / 4..3 * h / 4).contains(&y) {
            image::Rgb(colour)
        } else {
            image::Rgb([(x * 3) as u8, (y * 3) as u8, 90])
        }
    });
    img.save(path).unwrap();
}

fn crc32(bytes: &[u8]) -> u32 {
    let mut c = 0xFFFF_FFFFu32;
    for &b in bytes {
        c ^= u32::from(b);
        for _ in 0..8 {
            c = if c & 1 != 0 {
                (c >> 1) ^ 0xEDB8_8320
            } else {
                c >> 1
            };
        }
    }
    !c
}

/// A PNG whose header declares 0×0 (encoders refuse to write one).
fn zero_size_png(path: &Path) {
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut chunk = |kind: &[u8], data: &[u8]| {
        out.extend((data.len() as u32).to_be_bytes());
        let mut body = kind.to_vec();
        body.extend(data);
        out.extend(&body);
        out.extend(crc32(&body).to_be_bytes());
    };
    chunk(b"IHDR", &[0, 0, 0, 0, 0, 0, 0, 0, 8, 2, 0, 0, 0]);
    chunk(b"IEND", &[]);
    std::fs::write(path, out).unwrap();
}

fn s(p: &Path) -> String {
    p.display().to_string()
}

fn files_in(dir: &Path) -> Vec<String> {
    match std::fs::read_dir(dir) {
        Ok(rd) => rd
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect(),
        Err(_) => Vec::new(),
    }
}

fn pair(dir: &Path) -> (PathBuf, PathBuf) {
    let a = dir.join("a.png");
    let b = dir.join("b.png");
    write_png(&a, 64, 48, [200, 40, 40]);
    write_png(&b, 50, 60, [40, 160, 60]);
    (a, b)
}

#[test]
fn segment_with_tiny_writes_masks_json_and_overlays() {
    let d = tmp("segment-ok");
    let (a, b) = pair(&d);
    let out = d.join("out");
    let o = calico(&[
        "segment",
        &s(&a),
        &s(&b),
        "--task",
        "common-parts",
        "--preset",
        "tiny",
        "--seed",
        "3",
        "--out",
        &s(&out),
        "--max-new-tokens",
        "24",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(text.contains("answer: "), "{text}");
    assert!(text.contains("UNTRAINED"), "{text}");
    let rec: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("masks.json")).unwrap()).unwrap();
    assert!(rec["answer"].is_string());
    let masks = rec["masks"].as_array().unwrap();
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("segment.json")).unwrap()).unwrap();
    assert_eq!(summary["untrained"], true);
    assert_eq!(
        summary["question"],
        "Can you segment the common parts of the objects in these images?"
    );
    for i in 0..2 {
        let p = out.join(format!("overlay_img{i}.png"));
        let img = image::open(&p).unwrap();
        assert!(img.height() > 48, "{} has no legend strip", p.display());
    }
    let mask_files = files_in(&out)
        .iter()
        .filter(|f| f.starts_with("mask_"))
        .count();
    assert_eq!(mask_files, masks.len());
    // No temporary files left behind.
    assert!(files_in(&out).iter().all(|f| !f.starts_with('.')));

    // --json, three images, identify, a custom question.
    let c = d.join("c.png");
    write_png(&c, 40, 40, [20, 20, 200]);
    let out2 = d.join("out2");
    let o = calico(&[
        "segment",
        &s(&a),
        &s(&b),
        &s(&c),
        "--task",
        "identify",
        "--preset",
        "tiny",
        "--out",
        &s(&out2),
        "--json",
        "--max-new-tokens",
        "16",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let j: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(j["task"], "identify");
    assert_eq!(j["images"].as_array().unwrap().len(), 3);
    assert_eq!(j["overlays"].as_array().unwrap().len(), 3);
    let o = calico(&[
        "segment",
        &s(&a),
        &s(&b),
        "--question",
        "What is the lid?",
        "--preset",
        "tiny",
        "--out",
        &s(&d.join("out3")),
        "--json",
        "--max-new-tokens",
        "8",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let j: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(j["task"], "custom");
    assert_eq!(j["question"], "What is the lid?");
}

#[test]
fn bad_input_exits_2_names_the_problem_and_writes_nothing() {
    let d = tmp("segment-bad");
    let (a, b) = pair(&d);
    let text = d.join("notes.png");
    std::fs::write(&text, "this is a text file\n").unwrap();
    let empty = d.join("empty.png");
    std::fs::write(&empty, b"").unwrap();
    let zero = d.join("zero.png");
    zero_size_png(&zero);
    let missing = d.join("missing.png");
    let cases: Vec<(Vec<String>, &str, String)> = vec![
        (
            vec![s(&a), s(&missing)],
            "missing file",
            format!("{}: no such file", s(&missing)),
        ),
        (
            vec![s(&text), s(&b)],
            "not an image",
            format!("{}: is not an image", s(&text)),
        ),
        (
            vec![s(&a), s(&zero)],
            "0x0 PNG",
            format!("{}: is a zero-size image (0x0)", s(&zero)),
        ),
        (
            vec![s(&empty), s(&b)],
            "0-byte file",
            format!("{}: is empty (0 bytes)", s(&empty)),
        ),
        (
            vec![s(&a)],
            "one image",
            format!("at least 2 images, got 1 ({})", s(&a)),
        ),
    ];
    for (k, (images, what, expected)) in cases.iter().enumerate() {
        let out = d.join(format!("out{k}"));
        let mut args: Vec<String> = vec!["segment".into()];
        args.extend(images.iter().cloned());
        args.extend(["--preset", "tiny", "--out"].map(String::from));
        args.push(s(&out));
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let o = calico(&refs);
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(2), "{what}: {err}");
        assert!(
            err.contains(expected),
            "{what}: expected {expected:?} in {err:?}"
        );
        assert!(
            files_in(&out).is_empty(),
            "{what}: wrote {:?}",
            files_in(&out)
        );
    }
    // Unknown task, no model: exit 2 too.
    let o = calico(&[
        "segment",
        &s(&a),
        &s(&b),
        "--task",
        "parts",
        "--preset",
        "tiny",
        "--out",
        &s(&d.join("x")),
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("unknown task"));
    let o = calico(&[
        "segment",
        &s(&a),
        &s(&b),
        "--weights",
        &s(&d.join("nowhere")),
        "--out",
        &s(&d.join("y")),
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("no such weights directory"));
    assert!(files_in(&d.join("y")).is_empty());
    // No token to answer with would be an empty answer, silently.
    let o = calico(&[
        "segment",
        &s(&a),
        &s(&b),
        "--preset",
        "tiny",
        "--max-new-tokens",
        "0",
        "--out",
        &s(&d.join("z")),
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("must be at least 1"), "{}", stderr(&o));
    assert!(files_in(&d.join("z")).is_empty());
}

/// Two images with a box and a samples file of two tasks over them.
fn samples(dir: &Path) -> PathBuf {
    use calico_masks::{CocoRle, Mask, Rle};
    for (k, (x0, colour)) in [(8u32, [200u8, 40, 40]), (24, [40, 160, 60])]
        .iter()
        .enumerate()
    {
        let img = image::RgbImage::from_fn(64, 64, |x, y| {
            if (*x0..x0 + 32).contains(&x) && (16..48).contains(&y) {
                image::Rgb(*colour)
            } else {
                image::Rgb([(x * 3) as u8, (y * 3) as u8, 90])
            }
        });
        img.save(dir.join(format!("img{k}.png"))).unwrap();
    }
    let rle = |x0: u32, y1: u32| {
        let m = Mask::from_fn(64, 64, |y, x| {
            (x0..x0 + 32).contains(&x) && (16..y1).contains(&y)
        });
        serde_json::to_value(CocoRle::from_rle(&Rle::encode(&m))).unwrap()
    };
    let images = serde_json::json!([
        {"file": "img0.png", "width": 64, "height": 64},
        {"file": "img1.png", "width": 64, "height": 64}
    ]);
    let lines = [
        serde_json::json!({
            "id": "s/0", "task": "common_object", "source": "s", "images": images,
            "question": "Can you segment the common object in these images?",
            "answer": "The common object is <p> the box </p> [SEG] (IMAGE1) [SEG] (IMAGE2).",
            "masks": [{"image": 0, "label": "box", "rle": rle(8, 48)}, {"image": 1, "label": "box", "rle": rle(24, 48)}]
        }),
        serde_json::json!({
            "id": "s/1", "task": "common_parts", "source": "s", "images": images,
            "question": "Can you segment the common parts of the objects in these images?",
            "answer": "The common part is <p> the lid </p> [SEG] (IMAGE1) [SEG] (IMAGE2).",
            "masks": [{"image": 0, "label": "lid", "rle": rle(8, 32)}, {"image": 1, "label": "lid", "rle": rle(24, 32)}]
        }),
    ];
    let path = dir.join("test.jsonl");
    let text: Vec<String> = lines.iter().map(|l| l.to_string()).collect();
    std::fs::write(&path, text.join("\n") + "\n").unwrap();
    path
}

#[test]
fn predict_feeds_eval_and_report_inlines_everything() {
    let d = tmp("predict-report");
    let data = samples(&d);
    let preds = d.join("preds/predictions.jsonl");
    let o = calico(&[
        "predict",
        "--data",
        &s(&data),
        "--preset",
        "tiny",
        "--out",
        &s(&preds),
        "--max-new-tokens",
        "24",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let text = std::fs::read_to_string(&preds).unwrap();
    assert_eq!(text.lines().count(), 2);
    let o = calico(&[
        "predict",
        "--data",
        &s(&data),
        "--preset",
        "tiny",
        "--out",
        &s(&d.join("one.jsonl")),
        "--limit",
        "1",
        "--max-new-tokens",
        "4",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        std::fs::read_to_string(d.join("one.jsonl"))
            .unwrap()
            .lines()
            .count(),
        1
    );
    let o = calico(&[
        "predict",
        "--data",
        &s(&d.join("none.jsonl")),
        "--preset",
        "tiny",
        "--out",
        &s(&d.join("n.jsonl")),
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("none.jsonl: no such samples file"));
    // A sample whose image is not the size it gives is refused before any
    // answering, naming the sample, the image and both sizes.
    let text = std::fs::read_to_string(&data).unwrap();
    let mut lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    lines[1]["images"][1]["width"] = 999.into();
    let resized = d.join("resized.jsonl");
    let body: Vec<String> = lines.iter().map(|l| l.to_string()).collect();
    std::fs::write(&resized, body.join("\n") + "\n").unwrap();
    let o = calico(&[
        "predict",
        "--data",
        &s(&resized),
        "--preset",
        "tiny",
        "--out",
        &s(&d.join("r.jsonl")),
    ]);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(
        err.contains("sample s/1: image 1 (") && err.contains("the sample gives width 999"),
        "{err}"
    );
    assert!(!d.join("r.jsonl").exists() && !d.join("r.jsonl.partial").exists());

    let eval = d.join("eval.json");
    let o = calico(&[
        "eval",
        "--ground-truth",
        &s(&data),
        "--predictions",
        &s(&preds),
        "--similarity",
        "exact",
        "--out",
        &s(&eval),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));

    // A run directory as calico train leaves it (curve + metrics).
    let run = d.join("run");
    std::fs::create_dir_all(&run).unwrap();
    std::fs::write(
        run.join("curve.svg"),
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"10\" height=\"10\"><path d=\"M0 0L10 10\"/></svg>",
    )
    .unwrap();
    std::fs::write(
        run.join("metrics.jsonl"),
        "{\"step\":1,\"loss\":2.5}\n{\"step\":2,\"loss\":2.25}\n",
    )
    .unwrap();
    let seg = d.join("seg");
    let o = calico(&[
        "segment",
        &s(&d.join("img0.png")),
        &s(&d.join("img1.png")),
        "--preset",
        "tiny",
        "--out",
        &s(&seg),
        "--max-new-tokens",
        "8",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let html = d.join("report/report.html");
    let o = calico(&[
        "report",
        "--run",
        &s(&run),
        "--eval",
        &s(&eval),
        "--overlays",
        &s(&seg),
        "--out",
        &s(&html),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let h = std::fs::read_to_string(&html).unwrap();
    assert!(h.contains("data:image/svg+xml;base64,"), "no curve");
    assert!(h.contains("Metrics (Table 5)"));
    assert!(h.contains("<td>Common Object</td>") && h.contains("<td>Common Parts</td>"));
    assert!(h.contains("<tr class=\"avg\"><td>Average</td>"));
    assert_eq!(
        h.matches("data:image/png;base64,").count(),
        2,
        "two overlays"
    );
    assert!(h.contains("UNTRAINED"));
    assert!(h.contains("<td>loss</td><td>2.2500</td>"));
    assert!(!h.contains("src=\"http") && !h.contains("<link") && !h.contains("<script"));
    // Bad report input: exit 2.
    let o = calico(&[
        "report",
        "--eval",
        &s(&data),
        "--out",
        &s(&d.join("r2.html")),
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(!d.join("r2.html").exists());
}

/// `calico predict` of `data` into `out` with `tiny`'s random weights.
fn predict_args(data: &Path, out: &Path, max_new_tokens: usize) -> Vec<String> {
    vec![
        "predict".to_string(),
        "--data".into(),
        s(data),
        "--preset".into(),
        "tiny".into(),
        "--out".into(),
        s(out),
        "--max-new-tokens".into(),
        max_new_tokens.to_string(),
    ]
}

#[test]
fn a_killed_predict_resumes_to_the_same_predictions() {
    let d = tmp("predict-resume");
    let two = std::fs::read_to_string(samples(&d)).unwrap();
    let data = d.join("many.jsonl");
    std::fs::write(&data, two.repeat(20)).unwrap();
    let args = |out: &Path| predict_args(&data, out, 24);
    let full = d.join("full.jsonl");
    let o = calico(&args(&full).iter().map(String::as_str).collect::<Vec<_>>());
    assert!(o.status.success(), "{}", stderr(&o));
    let want = std::fs::read(&full).unwrap();
    assert_eq!(want.iter().filter(|&&c| c == b'\n').count(), 40);
    // Any number of workers gives the same predictions.
    for workers in ["1", "3"] {
        let out = d.join(format!("workers-{workers}.jsonl"));
        let mut w = args(&out);
        w.extend(["--workers".to_string(), workers.to_string()]);
        let o = calico(&w.iter().map(String::as_str).collect::<Vec<_>>());
        assert!(o.status.success(), "{}", stderr(&o));
        assert_eq!(std::fs::read(&out).unwrap(), want, "--workers {workers}");
    }

    let out = d.join("killed.jsonl");
    let partial = d.join("killed.jsonl.partial");
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_calico"));
    cmd.args(args(&out));
    let (_, running) = signal_when(cmd, "KILL", &d.join("killed.log"), || {
        newlines(&partial) >= 2
    });
    assert!(running, "the run finished before the kill");
    assert!(!out.exists());

    // Started again without --resume, it says what to do and keeps them.
    let kept = std::fs::read(&partial).unwrap();
    let o = calico(&args(&out).iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("pass --resume"), "{}", stderr(&o));
    assert_eq!(std::fs::read(&partial).unwrap(), kept);

    let mut resume = args(&out);
    resume.push("--resume".into());
    let o = calico(&resume.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("resuming: "), "{}", stderr(&o));
    assert_eq!(std::fs::read(&out).unwrap(), want);
    assert!(!partial.exists() && !d.join("killed.jsonl.partial.json").exists());

    // Ctrl-C stops between samples, keeping every answer made, and says so.
    let out = d.join("interrupted.jsonl");
    let partial = d.join("interrupted.jsonl.partial");
    let interrupt = args(&out);
    let interrupt: Vec<&str> = interrupt.iter().map(String::as_str).collect();
    let (code, running) = interrupt_when(&interrupt, &d.join("interrupted.log"), || {
        newlines(&partial) >= 2
    });
    let err = std::fs::read_to_string(d.join("interrupted.log")).unwrap();
    assert!(running, "the run finished before the interrupt: {err}");
    assert_eq!(code, Some(130), "{err}");
    let kept = newlines(&partial);
    assert!(
        err.contains(&format!("interrupted: stopped after {kept} of 40 samples"))
            && err.contains("--resume"),
        "{err}"
    );
    assert!((2..40).contains(&kept), "{kept}: {err}");
    // Whole lines only, the first ones of the uninterrupted run.
    let text = std::fs::read(&partial).unwrap();
    assert!(want.starts_with(&text) && text.ends_with(b"\n"));
    let mut resume = args(&out);
    resume.push("--resume".into());
    let o = calico(&resume.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(std::fs::read(&out).unwrap(), want);
}

/// Complete lines in `path` so far (0 while it does not exist).
fn newlines(path: &Path) -> usize {
    std::fs::read(path)
        .map(|b| b.iter().filter(|&&c| c == b'\n').count())
        .unwrap_or(0)
}

/// `--device cpu` is the default's path exactly; a CUDA device that this
/// build or machine lacks is refused with exit 2 before anything is
/// written, saying what to do; a device name that is neither is refused by
/// the parser. (With a GPU and a CUDA build, `--device cuda` runs; the GPU
/// check is tools/device/gpu_check.sh, docs/gpu.md.)
#[test]
fn the_device_is_chosen_and_a_missing_gpu_is_refused_up_front() {
    let d = tmp("predict-device");
    let data = samples(&d);
    let predict = |out: &Path, device: Option<&str>| {
        let mut args = predict_args(&data, out, 12);
        if let Some(dev) = device {
            args.extend(["--device".to_string(), dev.to_string()]);
        }
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        calico(&refs)
    };
    let default = d.join("default.jsonl");
    let o = predict(&default, None);
    assert!(o.status.success(), "{}", stderr(&o));
    let cpu = d.join("cpu.jsonl");
    let o = predict(&cpu, Some("cpu"));
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        std::fs::read(&default).unwrap(),
        std::fs::read(&cpu).unwrap()
    );

    let (a, b) = pair(&d);
    let cases: Vec<(&str, Vec<String>, PathBuf)> = vec![
        ("predict", vec![], d.join("gpu.jsonl")),
        (
            "segment",
            vec![s(&a), s(&b), "--preset".into(), "tiny".into()],
            d.join("gpu-seg"),
        ),
        (
            "demo",
            vec!["--seed".into(), "5".into()],
            d.join("gpu-demo"),
        ),
    ];
    for (command, extra, out) in &cases {
        let o = if *command == "predict" {
            predict(out, Some("cuda"))
        } else {
            let mut args = vec![command.to_string()];
            args.extend(extra.iter().cloned());
            args.extend(["--device", "cuda:0", "--out"].map(String::from));
            args.push(s(out));
            let refs: Vec<&str> = args.iter().map(String::as_str).collect();
            calico(&refs)
        };
        if o.status.success() {
            // A CUDA build on a machine with a GPU: nothing to refuse.
            continue;
        }
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(2), "{command}: {err}");
        assert!(err.contains("--device cuda:0:"), "{command}: {err}");
        assert!(
            err.contains("--features cuda") || err.contains("cannot open CUDA device 0"),
            "{command}: {err}"
        );
        assert!(
            !out.exists() && !d.join("gpu.jsonl.partial").exists(),
            "{command} wrote {}",
            out.display()
        );
    }
    for bad in ["metal", "cuda:x"] {
        let o = predict(&d.join("bad.jsonl"), Some(bad));
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(2), "{bad}: {err}");
        assert!(
            err.contains("--device") && (err.contains("cuda:N") || err.contains("as in cuda:0")),
            "{bad}: {err}"
        );
    }
    if !cfg!(feature = "cuda") {
        // (A CUDA build on a GPU would start serving.)
        let o = calico(&[
            "serve",
            "--preset",
            "tiny",
            "--device",
            "cuda:0",
            "--addr",
            "127.0.0.1:0",
        ]);
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(2), "serve: {err}");
        assert!(
            err.contains("--device cuda:0:") && err.contains("--features cuda"),
            "serve: {err}"
        );
    }
}
