//! `calico demo` end to end with the embedded model (kept small with the
//! hidden `--images` / `--eval-samples` flags): every file written, the
//! report self-contained with overlays, the three tasks, the Table 5
//! metrics and the training curve; bad input exits 2.

mod common;

use std::process::{Command, Output};

use common::{stderr, tmp};

/// Runs `calico` with exact-match text similarity (no MiniLM model).
fn calico_exact(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_calico"))
        .args(args)
        .env("CALICO_MINILM_DIR", "/nonexistent/calico-demo-test-minilm")
        .output()
        .expect("run calico")
}

#[test]
fn demo_writes_report_with_overlays_metrics_and_curve() {
    let dir = tmp("demo");
    let out = dir.join("demo");
    let o = calico_exact(&[
        "demo",
        "--out",
        out.to_str().unwrap(),
        "--pairs",
        "1",
        "--images",
        "30",
        "--eval-samples",
        "9",
        "--max-new-tokens",
        "96",
    ]);
    let stdout = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(o.status.success(), "{}\n{stdout}", stderr(&o));
    assert!(stdout.contains("All sources (percent)"), "{stdout}");
    assert!(stdout.contains("text similarity: exact match"), "{stdout}");
    assert!(
        stdout.contains(&format!("report: {}", out.join("report.html").display())),
        "{stdout}"
    );

    for f in [
        "model/calico.json",
        "model/trainable.safetensors",
        "model/tokenizer.json",
        "model/tokenizer_config.json",
        "model/curve.svg",
        "model/metrics.jsonl",
        "model/README.md",
        "mixedparts/test.jsonl",
        "predictions.jsonl",
        "eval.json",
        "report.html",
    ] {
        assert!(out.join(f).is_file(), "{f} missing");
    }
    let eval: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("eval.json")).unwrap()).unwrap();
    assert!(eval["overall"]["tasks"].is_object());
    let n_pred = std::fs::read_to_string(out.join("predictions.jsonl"))
        .unwrap()
        .lines()
        .count();
    assert!((1..=9).contains(&n_pred), "{n_pred} predictions");

    for task in ["common-object", "common-parts", "unique-parts"] {
        let d = out.join("pairs").join(format!("{task}-1"));
        assert!(d.join("segment.json").is_file(), "{}", d.display());
        assert!(d.join("overlay_img0.png").is_file(), "{}", d.display());
        assert!(d.join("masks.json").is_file(), "{}", d.display());
    }

    let html = std::fs::read_to_string(out.join("report.html")).unwrap();
    assert!(html.contains("data:image/png;base64,"), "no overlays");
    for task in ["common-object", "common-parts", "unique-parts"] {
        assert!(html.contains(task), "{task} missing from the report");
    }
    for title in ["Common Object", "Common Parts", "Unique Parts"] {
        assert!(
            html.contains(&format!("<td>{title}</td>")),
            "no metrics row {title}"
        );
    }
    assert!(html.contains("Metrics (Table 5)"));
    assert!(html.contains("<th>AP50</th>"));
    assert!(
        html.contains("data:image/svg+xml;base64,"),
        "no training curve"
    );
    assert!(html.contains("Last training record"));
    assert!(html.contains("Reference answer"));
    assert!(!html.contains("src=\"http"));

    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn demo_rejects_training_seed_and_file_out() {
    let dir = tmp("demo-bad");
    let o = calico_exact(&[
        "demo",
        "--out",
        dir.join("x").to_str().unwrap(),
        "--seed",
        "1",
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("seed 1"), "{}", stderr(&o));
    assert!(!dir.join("x").exists());

    let file = dir.join("file");
    std::fs::write(&file, "x").unwrap();
    let o = calico_exact(&["demo", "--out", file.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("not a directory"), "{}", stderr(&o));

    let o = calico_exact(&[
        "demo",
        "--out",
        dir.join("y").to_str().unwrap(),
        "--pairs",
        "0",
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    let _ = std::fs::remove_dir_all(&dir);
}
