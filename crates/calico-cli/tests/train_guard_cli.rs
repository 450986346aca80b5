//! `calico train` guarding its run: a diverging run stops where it
//! diverges and keeps only finite checkpoints; one process writes a run at
//! a time; `--resume` takes the run's own settings and validation; starts
//! that cannot run, or would overwrite other files, write nothing; damaged
//! checkpoints are named.

mod common;

use std::path::{Path, PathBuf};

use common::{build, calico, stderr, synth, tmp};

/// SynthParts (12 images per source) built into MixedParts samples in `d/mp`.
fn mixed_parts(d: &Path) -> PathBuf {
    let s = synth(d, 12);
    let mp = d.join("mp");
    let o = build(&s, &mp, &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    mp
}

/// `json` written to `d/name`, as a path string.
fn write(d: &Path, name: &str, json: &str) -> String {
    let p = d.join(name);
    std::fs::write(&p, json).unwrap();
    p.to_str().unwrap().to_string()
}

/// Every value of every tensor of a safetensors file is finite.
fn all_finite(path: &Path) -> bool {
    let t = candle_core::safetensors::load(path, &candle_core::Device::Cpu).unwrap();
    assert!(!t.is_empty(), "{}", path.display());
    t.values().all(|t| {
        let v = t
            .to_dtype(candle_core::DType::F32)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        v.iter().all(|x| x.is_finite())
    })
}

/// The `step-…` checkpoint directories under `ckdir`.
fn step_dirs(ckdir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(ckdir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("step-")
        })
        .collect();
    v.sort();
    v
}

/// Trains `cfg` into `run`, which must stop on a non-finite value (exit 1)
/// leaving checkpoints in `run/ckdir` that are all finite; its stderr.
fn diverges(data: &str, cfg: &str, run: &Path, ckdir: &str) -> String {
    let o = calico(&[
        "train",
        "--data",
        data,
        "--config",
        cfg,
        "--out",
        run.to_str().unwrap(),
    ]);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("training stopped at step"), "{err}");
    let kept = step_dirs(&run.join(ckdir));
    assert!(!kept.is_empty(), "{err}");
    for k in &kept {
        let t = k.join("trainable.safetensors");
        assert!(all_finite(&t), "{}", t.display());
    }
    err
}

#[test]
fn a_diverging_run_stops_where_it_diverges_and_keeps_finite_checkpoints() {
    let d = tmp("train-diverge");
    let mp = mixed_parts(&d);
    let data = mp.join("train.jsonl");
    let data = data.to_str().unwrap();

    // Stage 1 at an absurd learning rate: its gradients go NaN. The stage
    // stops there instead of applying them, and its checkpoints hold
    // finite weights only.
    let cfg = write(
        &d,
        "stage1.json",
        r#"{"epochs": 1, "steps_per_epoch": 2, "batch_size": 2, "grad_accumulation": 1,
            "warmup_steps": 0, "val_samples": 0, "checkpoint_every": 1,
            "vision_pretrain": {"steps": 8, "batch_size": 4, "lr": 1e8, "warmup_steps": 0}}"#,
    );
    let err = diverges(data, &cfg, &d.join("s1"), "checkpoints/stage1");
    assert!(
        err.contains("of stage 1 (encoder pretraining)")
            && err.contains("stage 1's checkpoint of its step"),
        "{err}"
    );

    // Stage 2 likewise: stopped at the step whose gradient norm is NaN,
    // naming the checkpoint to resume from; every checkpoint is finite.
    let cfg = write(
        &d,
        "stage2.json",
        r#"{"epochs": 1, "steps_per_epoch": 4, "batch_size": 2, "grad_accumulation": 1,
            "warmup_steps": 0, "val_samples": 0, "checkpoint_every": 1,
            "optimizer": {"lr": 1e4}}"#,
    );
    let run = d.join("s2");
    let err = diverges(data, &cfg, &run, "checkpoints");
    assert!(err.contains("(--resume continues from it)"), "{err}");
    assert!(!run.join("model").exists());
}

#[test]
fn one_process_writes_a_run_and_resume_takes_the_runs_own_settings() {
    let d = tmp("train-resume-settings");
    let mp = mixed_parts(&d);
    let (data, val, test) = (
        mp.join("train.jsonl"),
        mp.join("val.jsonl"),
        mp.join("test.jsonl"),
    );
    let (data, val, test) = (
        data.to_str().unwrap(),
        val.to_str().unwrap(),
        test.to_str().unwrap(),
    );
    let cfg = write(
        &d,
        "run.json",
        r#"{"epochs": 1, "steps_per_epoch": 4, "batch_size": 2, "grad_accumulation": 1,
            "warmup_steps": 0, "val_samples": 3, "validate_every": 1, "max_new_tokens": 16}"#,
    );
    let run = d.join("run");
    let out = run.to_str().unwrap();
    let flags = [
        "train",
        "--preset",
        "tiny",
        "--data",
        data,
        "--out",
        out,
        "--config",
        &cfg,
        "--seed",
        "3",
        "--ablation",
        "no-cam",
    ];
    let with = |extra: &[&str]| {
        let mut a = flags.to_vec();
        a.extend(extra);
        calico(&a)
    };
    let o = with(&["--val", val, "--similarity", "exact", "--stop-after", "1"]);
    assert!(o.status.success(), "{}", stderr(&o));

    // The flags the run started with resume it (they ask for nothing else),
    // and so does any one of them alone: each is compared with the run's
    // own settings, not with the default preset's.
    let o = with(&["--resume", "--stop-after", "1"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = calico(&[
        "train",
        "--data",
        data,
        "--out",
        out,
        "--resume",
        "--seed",
        "3",
        "--ablation",
        "no-cam",
        "--stop-after",
        "1",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));

    // Another similarity or other validation samples are refused: the
    // scores in metrics.jsonl would no longer compare.
    let o = with(&["--resume", "--similarity", "minilm"]);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains("validates with --similarity exact"), "{err}");
    let o = with(&["--resume", "--val", test]);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains("not the validation samples"), "{err}");

    // While another process holds the run, a second one is refused.
    let lock = std::fs::OpenOptions::new()
        .write(true)
        .open(run.join("train.lock"))
        .unwrap();
    lock.try_lock().unwrap();
    let o = with(&["--resume"]);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains("is in use"), "{err}");
    drop(lock);

    // A plain --resume continues with the recorded validation (no MiniLM
    // needed: the run validates with exact match), and removes what a
    // killed export left behind.
    std::fs::create_dir_all(run.join(".model.tmp-999999")).unwrap();
    let o = calico(&["train", "--data", data, "--out", out, "--resume"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(!run.join(".model.tmp-999999").exists());
    assert!(run.join("model/trainable.safetensors").is_file());
    let text = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    let val_steps: Vec<u64> = text
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v["kind"] == "val")
        .map(|v| v["step"].as_u64().unwrap())
        .collect();
    assert_eq!(val_steps, [1, 2, 3, 4]);

    // Resuming a finished run says so.
    let o = calico(&["train", "--data", data, "--out", out, "--resume"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("nothing left to train"),
        "{}",
        stderr(&o)
    );

    // A damaged latest checkpoint is skipped, naming it; with none left
    // whole, the refusal names the damaged ones.
    let cks = step_dirs(&run.join("checkpoints"));
    assert!(cks.len() >= 2, "{cks:?}");
    let newest = cks.last().unwrap().join("trainable.safetensors");
    let bytes = std::fs::read(&newest).unwrap();
    std::fs::write(&newest, &bytes[..bytes.len() / 2]).unwrap();
    // Without the run's tokenizer there is nothing to resume with: a
    // refusal naming it (exit 2), not an internal error.
    let tokenizer = run.join("tokenizer.json");
    let aside = run.join("tokenizer.json.aside");
    std::fs::rename(&tokenizer, &aside).unwrap();
    let o = calico(&["train", "--data", data, "--out", out, "--resume"]);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains("tokenizer.json"), "{err}");
    std::fs::rename(&aside, &tokenizer).unwrap();
    let o = calico(&["train", "--data", data, "--out", out, "--resume"]);
    let err = stderr(&o);
    assert!(o.status.success(), "{err}");
    assert!(err.contains("is damaged and skipped"), "{err}");
    for c in step_dirs(&run.join("checkpoints")) {
        std::fs::remove_file(c.join("state.json")).ok();
    }
    let o = calico(&["train", "--data", data, "--out", out, "--resume"]);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(
        err.contains("no complete checkpoint") && err.contains("step-"),
        "{err}"
    );
}

#[test]
fn starts_that_cannot_run_write_nothing() {
    let d = tmp("train-refused-starts");
    let mp = mixed_parts(&d);
    let data = mp.join("train.jsonl");
    let data = data.to_str().unwrap();
    let small = r#"{"epochs": 1, "steps_per_epoch": 2, "batch_size": 2, "grad_accumulation": 1,
        "warmup_steps": 0, "val_samples": 0"#;
    let cfg = write(&d, "small.json", &format!("{small}}}"));
    let refused = |args: &[&str], out: &Path, says: &str| {
        let o = calico(args);
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(says), "{args:?}: {err}");
        assert!(!out.exists(), "{args:?} wrote {}", out.display());
    };
    let out = d.join("run");
    let o = out.to_str().unwrap();

    // A stage that trains nothing (the paper's set holds the encoders).
    let paper = write(
        &d,
        "paper.json",
        &format!(r#"{small}, "trainable": "paper", "vision_pretrain": {{"steps": 2}}}}"#),
    );
    refused(
        &["train", "--data", data, "--config", &paper, "--out", o],
        &out,
        "trains none of the global encoders",
    );
    // Settings that are no optimisation: caught with the field named.
    for (json, says) in [
        (r#"{"optimizer": {"beta2": 1.0}}"#, "optimizer.beta2"),
        (r#"{"optimizer": {"eps": 0}}"#, "optimizer.eps"),
        (r#"{"optimizer": {"learning_rate": 0.1}}"#, "unknown field"),
        (r#"{"loss": {"text": -1}}"#, "loss.text"),
        (r#"{"epochs": "1"}"#, "epochs: invalid type"),
        (
            r#"{"batch_size": 1000000000000}"#,
            "batch_size must be at most",
        ),
        (r#"[]"#, "expected a JSON object"),
    ] {
        let bad = write(&d, "bad.json", json);
        refused(
            &["train", "--data", data, "--config", &bad, "--out", o],
            &out,
            says,
        );
    }
    refused(
        &[
            "train",
            "--data",
            data,
            "--config",
            &cfg,
            "--out",
            o,
            "--stop-after",
            "0",
        ],
        &out,
        "--stop-after must be at least 1",
    );
    // A validation sample the evaluator cannot score, found before the
    // training rather than after it.
    let text = std::fs::read_to_string(mp.join("val.jsonl")).unwrap();
    let mut lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    lines[0]["task"] = "bogus_task".into();
    let bogus: String = lines.iter().map(|v| format!("{v}\n")).collect();
    // Beside val.jsonl: image paths are relative to the samples file.
    let bogus_val = write(&mp, "bogus_val.jsonl", &bogus);
    let with_val = write(
        &d,
        "val.json",
        &format!(r#"{small}}}"#).replace(r#""val_samples": 0"#, r#""val_samples": 50"#),
    );
    refused(
        &[
            "train",
            "--data",
            data,
            "--val",
            &bogus_val,
            "--similarity",
            "exact",
            "--config",
            &with_val,
            "--out",
            o,
        ],
        &out,
        "bogus_task",
    );
    // An --out holding files that are not a run's (here a weights
    // directory's) is not overwritten.
    let weights = d.join("weights");
    std::fs::create_dir_all(&weights).unwrap();
    std::fs::write(weights.join("calico.json"), "{}").unwrap();
    std::fs::write(weights.join("trainable.safetensors"), "x").unwrap();
    let o = calico(&[
        "train",
        "--data",
        data,
        "--config",
        &cfg,
        "--out",
        weights.to_str().unwrap(),
    ]);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains("trainable.safetensors"), "{err}");
    assert_eq!(
        std::fs::read_to_string(weights.join("calico.json")).unwrap(),
        "{}"
    );
    assert_eq!(std::fs::read_dir(&weights).unwrap().count(), 2);
}

#[test]
fn a_run_in_a_relative_directory_checkpoints_and_exports() {
    // `--out run` and `--out runs/a`, relative to the working directory:
    // the directories above the checkpoints are synced as "." and "runs".
    let d = tmp("train-relative-out");
    mixed_parts(&d);
    write(
        &d,
        "small.json",
        r#"{"epochs": 1, "steps_per_epoch": 2, "batch_size": 2, "grad_accumulation": 1,
            "warmup_steps": 0, "val_samples": 0}"#,
    );
    for out in ["run", "runs/a"] {
        let o = std::process::Command::new(env!("CARGO_BIN_EXE_calico"))
            .current_dir(&d)
            .args([
                "train",
                "--data",
                "mp/train.jsonl",
                "--config",
                "small.json",
            ])
            .args(["--out", out])
            .output()
            .unwrap();
        assert!(o.status.success(), "{out}: {}", stderr(&o));
        assert!(d.join(out).join("model/trainable.safetensors").is_file());
        assert!(d.join(out).join("checkpoints/step-00000002").is_dir());
    }
}
