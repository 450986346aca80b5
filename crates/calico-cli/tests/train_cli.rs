//! `calico train`: a run killed with SIGKILL and resumed gives the losses
//! of an uninterrupted run, in stage 2 and inside the pretraining stages;
//! bad inputs are refused before anything is written.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::{build, calico, interrupt_when, signal_when, stderr, synth, tmp};

/// Six steps of two micro-batches of two samples, a checkpoint every step.
const CONFIG: &str = r#"{"epochs": 1, "steps_per_epoch": 6, "batch_size": 2,
  "grad_accumulation": 2, "warmup_steps": 2, "checkpoint_every": 1, "keep_last": 2,
  "validate_every": 0}"#;

/// A JSON file, parsed.
fn read_json(path: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// The records of `run`'s metrics.jsonl whose `kind` is `kind`.
fn records(run: &Path, kind: &str) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    text.lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v["kind"] == kind)
        .collect()
}

fn losses(run: &Path) -> Vec<(u64, f64, f64, f64, f64)> {
    records(run, "train")
        .iter()
        .map(|v| {
            let f = |k: &str| v[k].as_f64().unwrap();
            (
                v["step"].as_u64().unwrap(),
                f("loss"),
                f("text"),
                f("focal"),
                f("dice"),
            )
        })
        .collect()
}

/// SynthParts (12 images per source) built into MixedParts samples in
/// `d/mp`, which is returned.
fn mixed_parts(d: &Path) -> PathBuf {
    let s = synth(d, 12);
    let mp = d.join("mp");
    let o = build(&s, &mp, &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    mp
}

/// [`mixed_parts`] in `d/mp` and `config` in `d/train.json`: the samples
/// directory, its training file and the config file.
fn samples_and_config(d: &Path, config: &str) -> (PathBuf, String, String) {
    let mp = mixed_parts(d);
    let cfg = d.join("train.json");
    std::fs::write(&cfg, config).unwrap();
    let data = mp.join("train.jsonl").to_str().unwrap().to_string();
    (mp, data, cfg.to_str().unwrap().to_string())
}

fn train_args<'a>(data: &'a str, cfg: &'a str, out: &'a str) -> Vec<&'a str> {
    vec![
        "train", "--preset", "tiny", "--data", data, "--config", cfg, "--out", out,
    ]
}

#[test]
fn a_killed_run_resumes_to_the_same_losses() {
    let d = tmp("train-resume");
    let (_, data, cfg) = samples_and_config(&d, CONFIG);
    let (data, cfg) = (data.as_str(), cfg.as_str());

    // Uninterrupted.
    let a = d.join("a");
    let o = calico(&train_args(data, cfg, a.to_str().unwrap()));
    assert!(o.status.success(), "{}", stderr(&o));
    let want = losses(&a);
    assert_eq!(want.len(), 6);
    assert!(a.join("model/calico.json").is_file() && a.join("curve.svg").is_file());

    // Killed with SIGKILL once a few steps are checkpointed, then resumed.
    let b = d.join("b");
    let killed = kill_at(
        &train_args(data, cfg, b.to_str().unwrap()),
        &b.join("checkpoints"),
        "step-00000003",
        None,
    );
    assert!(killed, "the run finished before it could be killed");
    let mut args = train_args(data, cfg, b.to_str().unwrap());
    args.push("--resume");
    let o = calico(&args);
    assert!(o.status.success(), "{}", stderr(&o));
    let got = losses(&b);
    assert_eq!(got.len(), want.len(), "{got:?}");
    for (g, w) in got.iter().zip(&want) {
        assert_eq!(g.0, w.0);
        for (x, y) in [(g.1, w.1), (g.2, w.2), (g.3, w.3), (g.4, w.4)] {
            assert!((x - y).abs() <= 1e-6, "step {}: {x} vs {y}", g.0);
        }
    }
    // A finished run refuses a fresh start in the same directory.
    let o = calico(&train_args(data, cfg, a.to_str().unwrap()));
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("--resume"), "{}", stderr(&o));
    // --resume with flags that ask for other settings than the run
    // recorded is refused (the same flags are fine, as above).
    for extra in [["--ablation", "no-cam"], ["--seed", "7"]] {
        let mut args = train_args(data, cfg, b.to_str().unwrap());
        args.push("--resume");
        args.extend(extra);
        let o = calico(&args);
        assert_eq!(o.status.code(), Some(2), "{extra:?}: {}", stderr(&o));
        assert!(
            stderr(&o).contains("settings it recorded"),
            "{}",
            stderr(&o)
        );
    }
    // So is another samples file (here one sample fewer); the same samples
    // under another name are not.
    let text = std::fs::read_to_string(data).unwrap();
    let other = Path::new(data).with_file_name("other.jsonl");
    let lines: Vec<&str> = text.lines().collect();
    std::fs::write(&other, lines[..lines.len() - 1].join("\n") + "\n").unwrap();
    let mut args = train_args(other.to_str().unwrap(), cfg, b.to_str().unwrap());
    args.push("--resume");
    let o = calico(&args);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("not the training samples"),
        "{}",
        stderr(&o)
    );
    let copy = Path::new(data).with_file_name("copy.jsonl");
    std::fs::copy(data, &copy).unwrap();
    let mut args = train_args(copy.to_str().unwrap(), cfg, b.to_str().unwrap());
    args.push("--resume");
    let o = calico(&args);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(losses(&b), got);
    assert!(
        !stderr(&o).contains("this run started on"),
        "{}",
        stderr(&o)
    );

    // The run records the caches its matrix products block their sums by;
    // resumed where they block otherwise, it says the run will not continue
    // bit for bit, and how to match the machine it started on.
    let machine = b.join("machine.json");
    let mut m = read_json(&machine);
    assert!(m["matmul"]["l1d"]["bytes"].as_u64().unwrap() > 0, "{m}");
    match m["matmul"]["k_block"].as_u64() {
        Some(k) => m["matmul"]["k_block"] = (k * 2).into(),
        None => {
            let ways = m["matmul"]["l1d"]["ways"].as_u64().unwrap();
            m["matmul"]["l1d"]["ways"] = (ways * 2).into();
        }
    }
    m["cpu"] = "another CPU".into();
    std::fs::write(&machine, m.to_string()).unwrap();
    let o = calico(&args);
    assert!(o.status.success(), "{}", stderr(&o));
    let e = stderr(&o);
    assert!(
        e.contains("note: this run started on another CPU")
            && e.contains("tools/train/with_cache_geometry.sh"),
        "{e}"
    );
    // The record only informs: a damaged one is named and the run goes on.
    std::fs::write(&machine, "{\"cpu\": 3}").unwrap();
    let o = calico(&args);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("machine.json") && stderr(&o).contains("is unreadable"),
        "{}",
        stderr(&o)
    );
}

/// Runs `calico args` and kills it with SIGKILL once `ckdir/latest` names
/// `at` or a later step; whether it was still running then. Its standard
/// error goes to `log` if given.
fn kill_at(args: &[&str], ckdir: &Path, at: &str, log: Option<&Path>) -> bool {
    let err = match log {
        Some(p) => std::process::Stdio::from(std::fs::File::create(p).unwrap()),
        None => std::process::Stdio::null(),
    };
    let mut child = Command::new(env!("CARGO_BIN_EXE_calico"))
        .args(args)
        .stdout(std::process::Stdio::null())
        .stderr(err)
        .spawn()
        .unwrap();
    let t = Instant::now();
    loop {
        let latest = std::fs::read_to_string(ckdir.join("latest")).unwrap_or_default();
        if latest.trim() >= at || t.elapsed() > Duration::from_secs(600) {
            break;
        }
        if let Ok(Some(_)) = child.try_wait() {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let running = child.try_wait().unwrap().is_none();
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    running
}

/// Complete `"kind":"train"` lines in `run`'s metrics.jsonl so far.
fn train_lines(run: &Path) -> usize {
    let text = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap_or_default();
    text.split_inclusive('\n')
        .filter(|l| l.ends_with('\n') && l.contains(r#""kind":"train""#))
        .count()
}

/// The step a checkpoint directory's `latest` names.
fn latest_step(ckdir: &Path) -> Option<u64> {
    let latest = std::fs::read_to_string(ckdir.join("latest")).ok()?;
    latest.trim().strip_prefix("step-")?.parse().ok()
}

#[test]
fn ctrl_c_checkpoints_the_step_it_stops_after_and_resume_loses_nothing() {
    let d = tmp("train-interrupt");
    // No checkpoint is due before the end: the one after the interrupt is
    // the interrupt's.
    let (_, data, cfg) = samples_and_config(
        &d,
        r#"{"epochs": 1, "steps_per_epoch": 24, "batch_size": 2, "grad_accumulation": 2,
            "warmup_steps": 2, "checkpoint_every": 1000, "keep_last": 2, "validate_every": 0}"#,
    );
    let (data, cfg) = (data.as_str(), cfg.as_str());
    let a = d.join("a");
    let o = calico(&train_args(data, cfg, a.to_str().unwrap()));
    assert!(o.status.success(), "{}", stderr(&o));
    let want = losses(&a);
    assert_eq!(want.len(), 24);

    let b = d.join("b");
    let args = train_args(data, cfg, b.to_str().unwrap());
    let log = d.join("b.log");
    let (code, running) = interrupt_when(&args, &log, || train_lines(&b) >= 2);
    let err = std::fs::read_to_string(&log).unwrap();
    assert!(running, "the run finished before the interrupt: {err}");
    assert_eq!(code, Some(130), "{err}");
    let done = losses(&b).len() as u64;
    assert!((2..24).contains(&done), "{done} steps: {err}");
    assert_eq!(latest_step(&b.join("checkpoints")), Some(done), "{err}");
    assert!(
        err.contains(&format!("interrupted: stopped after step {done} of 24"))
            && err.contains("--resume"),
        "{err}"
    );
    assert!(!err.contains("error:"), "{err}");
    assert!(!b.join("model").exists());
    let mut resume = args.clone();
    resume.push("--resume");
    let o = calico(&resume);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).contains(&format!("at step {done}")),
        "{}",
        stderr(&o)
    );
    let got = losses(&b);
    assert_eq!(got.len(), want.len());
    for (g, w) in got.iter().zip(&want) {
        assert_eq!(g.0, w.0);
        for (x, y) in [(g.1, w.1), (g.2, w.2), (g.3, w.3), (g.4, w.4)] {
            assert!((x - y).abs() <= 1e-6, "step {}: {x} vs {y}", g.0);
        }
    }

    // Started with SIGHUP ignored (as `nohup` starts it), a run keeps
    // training through a hang-up.
    let c = d.join("c");
    let mut cmd = Command::new("sh");
    cmd.args([
        "-c",
        r#"trap "" HUP; exec "$0" "$@""#,
        env!("CARGO_BIN_EXE_calico"),
    ]);
    cmd.args(train_args(data, cfg, c.to_str().unwrap()));
    let log = d.join("c.log");
    let (code, running) = signal_when(cmd, "HUP", &log, || train_lines(&c) >= 2);
    let err = std::fs::read_to_string(&log).unwrap();
    assert!(running, "the run finished before the hang-up: {err}");
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(losses(&c), losses(&a));
}

#[test]
fn ctrl_c_while_the_samples_are_checked_ends_at_once_writing_nothing() {
    let d = tmp("train-interrupt-checks");
    let (mp, data, cfg) = samples_and_config(&d, CONFIG);
    // Enough samples for the checks to take seconds.
    let text = std::fs::read_to_string(&data).unwrap();
    let many = mp.join("many.jsonl");
    std::fs::write(&many, text.repeat(400)).unwrap();
    let out = d.join("run");
    let args = train_args(many.to_str().unwrap(), &cfg, out.to_str().unwrap());
    let log = d.join("log");
    let t = Instant::now();
    let (code, running) = interrupt_when(&args, &log, || t.elapsed() > Duration::from_millis(500));
    let err = std::fs::read_to_string(&log).unwrap();
    assert!(running, "the checks ended before the interrupt: {err}");
    assert_eq!(code, Some(130), "{err}");
    assert!(err.contains("nothing was written"), "{err}");
    assert!(!out.exists(), "{err}");
}

#[test]
fn ctrl_c_during_a_validation_cuts_it_short_and_checkpoints() {
    let d = tmp("train-interrupt-val");
    let (mp, data, cfg) = samples_and_config(
        &d,
        r#"{"epochs": 1, "steps_per_epoch": 4, "batch_size": 2, "warmup_steps": 1,
            "checkpoint_every": 1000, "validate_every": 2, "val_samples": 1000}"#,
    );
    let val = mp.join("val.jsonl");
    let b = d.join("b");
    let mut args = train_args(&data, &cfg, b.to_str().unwrap());
    args.extend(["--val", val.to_str().unwrap(), "--similarity", "exact"]);
    let log = d.join("b.log");
    let validating = || {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .contains("validating on")
    };
    let (code, running) = interrupt_when(&args, &log, validating);
    let err = std::fs::read_to_string(&log).unwrap();
    assert!(running, "the run finished before the interrupt: {err}");
    assert_eq!(code, Some(130), "{err}");
    assert!(err.contains("validation at step 2 was cut short"), "{err}");
    assert_eq!(latest_step(&b.join("checkpoints")), Some(2), "{err}");
    assert!(records(&b, "val").is_empty());
    // Resumed, the run validates again at its next due step and at the end.
    args.push("--resume");
    let o = calico(&args);
    assert!(o.status.success(), "{}", stderr(&o));
    let steps: Vec<u64> = records(&b, "val")
        .iter()
        .map(|v| v["step"].as_u64().unwrap())
        .collect();
    assert_eq!(steps, [4]);
}

#[test]
fn a_run_killed_inside_its_pretraining_stages_resumes_there() {
    let d = tmp("train-resume-stages");
    let (_, data, cfg) = samples_and_config(
        &d,
        r#"{"epochs": 1, "steps_per_epoch": 2, "batch_size": 2, "warmup_steps": 1,
            "checkpoint_every": 4, "keep_last": 2, "validate_every": 0,
            "vision_pretrain": {"steps": 40, "batch_size": 4, "warmup_steps": 2},
            "mask_pretrain": {"steps": 40, "images": 2, "warmup_steps": 2, "val_images": 0}}"#,
    );
    let (data, cfg) = (data.as_str(), cfg.as_str());
    let summaries = |run: &Path| -> Vec<f64> {
        let (p, m) = (
            read_json(&run.join("pretrain.json")),
            read_json(&run.join("mask_pretrain.json")),
        );
        ["loss", "train_accuracy"]
            .iter()
            .map(|k| p[*k].as_f64().unwrap())
            .chain(
                ["loss", "focal", "dice"]
                    .iter()
                    .map(|k| m[*k].as_f64().unwrap()),
            )
            .collect()
    };

    let a = d.join("a");
    let o = calico(&train_args(data, cfg, a.to_str().unwrap()));
    assert!(o.status.success(), "{}", stderr(&o));
    let (want, want_summaries) = (losses(&a), summaries(&a));
    assert_eq!(want.len(), 2);
    // Once the step-0 checkpoint exists, the stages' own are gone.
    assert!(!a.join("checkpoints/stage1").exists() && !a.join("checkpoints/stage1b").exists());

    // Killed in stage 1, resumed and killed in stage 1b, resumed to the end.
    let b = d.join("b");
    let args = train_args(data, cfg, b.to_str().unwrap());
    let killed = kill_at(&args, &b.join("checkpoints/stage1"), "step-00000008", None);
    assert!(
        killed && !b.join("checkpoints/latest").exists(),
        "not killed in stage 1"
    );
    let mut resume = args.clone();
    resume.push("--resume");
    let log = d.join("second.log");
    let killed = kill_at(
        &resume,
        &b.join("checkpoints/stage1b"),
        "step-00000008",
        Some(&log),
    );
    assert!(
        killed && !b.join("checkpoints/latest").exists(),
        "not killed in stage 1b"
    );
    let second = std::fs::read_to_string(&log).unwrap();
    assert!(second.contains("resuming stage 1 of"), "{second}");
    let o = calico(&resume);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("resuming stage 1b of"),
        "{}",
        stderr(&o)
    );
    assert_eq!(summaries(&b), want_summaries);
    assert_eq!(losses(&b), want);

    // An interrupt inside stage 1 checkpoints the stage where it stops, off the
    // `checkpoint_every` grid too; resumed, the run is the uninterrupted one.
    let c = d.join("c");
    let args = train_args(data, cfg, c.to_str().unwrap());
    let stage1 = c.join("checkpoints/stage1");
    let log = d.join("c.log");
    // SIGTERM, as a batch scheduler sends before its time limit.
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_calico"));
    cmd.args(&args);
    let (code, running) = signal_when(cmd, "TERM", &log, || latest_step(&stage1) >= Some(4));
    let err = std::fs::read_to_string(&log).unwrap();
    assert!(running, "the run finished before the interrupt: {err}");
    assert_eq!(code, Some(130), "{err}");
    let at = latest_step(&stage1).unwrap();
    assert!((4..40).contains(&at), "{err}");
    assert!(
        err.contains(&format!(
            "interrupted: stage 1 stopped after its step {at} of 40"
        )),
        "{err}"
    );
    let mut resume = args.clone();
    resume.push("--resume");
    let o = calico(&resume);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).contains(&format!(
            "resuming stage 1 of {} after its step {at}",
            c.display()
        )),
        "{}",
        stderr(&o)
    );
    assert_eq!(summaries(&c), want_summaries);
    assert_eq!(losses(&c), want);
}

#[test]
fn the_tiny_staged_preset_is_the_staged_recipes_two_files() {
    // `--preset tiny-staged` with a config that only shortens it runs
    // exactly what tools/train's two files run with the same shortening.
    let d = tmp("train-tiny-staged");
    let mp = mixed_parts(&d);
    let data = mp.join("train.jsonl");
    let short = r#"{"epochs": 1, "steps_per_epoch": 2, "warmup_steps": 1, "val_samples": 0,
        "checkpoint_every": 2, "vision_pretrain": {"steps": 3, "batch_size": 4},
        "mask_pretrain": {"steps": 2, "images": 2, "val_images": 0}}"#;
    let cfg = d.join("short.json");
    std::fs::write(&cfg, short).unwrap();
    let a = d.join("preset");
    let o = calico(&[
        "train",
        "--preset",
        "tiny-staged",
        "--data",
        data.to_str().unwrap(),
        "--config",
        cfg.to_str().unwrap(),
        "--out",
        a.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));

    // The two files, the shortening written over the recipe's settings.
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tools/train");
    let mut recipe = read_json(&root.join("tiny-staged.json"));
    let over: serde_json::Value = serde_json::from_str(short).unwrap();
    for (k, v) in over.as_object().unwrap() {
        match (recipe.get_mut(k), v) {
            (Some(serde_json::Value::Object(r)), serde_json::Value::Object(o)) => {
                r.extend(o.clone());
            }
            _ => recipe[k] = v.clone(),
        }
    }
    let cfg_b = d.join("recipe.json");
    std::fs::write(&cfg_b, recipe.to_string()).unwrap();
    let b = d.join("files");
    let o = calico(&[
        "train",
        "--model-config",
        root.join("tiny-staged.model.json").to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
        "--config",
        cfg_b.to_str().unwrap(),
        "--out",
        b.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));

    let read = |run: &Path, f: &str| std::fs::read(run.join(f)).unwrap();
    for f in [
        "calico.json",
        "train_config.json",
        "model/trainable.safetensors",
    ] {
        assert!(read(&a, f) == read(&b, f), "{f} differs");
    }
    assert_eq!(losses(&a), losses(&b));
    // Both stages ran, and stage 1 trained EVA's conv stem.
    let model: serde_json::Value = serde_json::from_slice(&read(&a, "calico.json")).unwrap();
    assert_eq!(
        model["eva_vit"]["conv_stem"],
        serde_json::json!([16, 32, 64, 64])
    );
    let p: serde_json::Value = serde_json::from_slice(&read(&a, "pretrain.json")).unwrap();
    assert_eq!(p["steps"], 3);
    let m: serde_json::Value = serde_json::from_slice(&read(&a, "mask_pretrain.json")).unwrap();
    assert_eq!(m["steps"], 2);
}

#[test]
fn val_samples_zero_turns_validation_off() {
    let d = tmp("train-no-val");
    let mp = mixed_parts(&d);
    let cfg = d.join("train.json");
    std::fs::write(
        &cfg,
        r#"{"epochs": 1, "steps_per_epoch": 1, "batch_size": 2, "warmup_steps": 0,
            "val_samples": 0}"#,
    )
    .unwrap();
    let (data, val, out) = (mp.join("train.jsonl"), mp.join("val.jsonl"), d.join("run"));
    let mut args = train_args(
        data.to_str().unwrap(),
        cfg.to_str().unwrap(),
        out.to_str().unwrap(),
    );
    args.extend(["--val", val.to_str().unwrap()]);
    let o = calico(&args);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(!stderr(&o).contains("validating"), "{}", stderr(&o));
    assert_eq!(losses(&out).len(), 1);
    let vals = records(&out, "val");
    assert_eq!(vals.len(), 0, "{vals:?}");
}

#[test]
fn bad_training_inputs_are_refused() {
    let d = tmp("train-bad");
    let out = d.join("run");
    let o = calico(&[
        "train",
        "--data",
        "/no/such.jsonl",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("/no/such.jsonl"));
    let cfg = d.join("bad.json");
    std::fs::write(&cfg, r#"{"epochs": 0}"#).unwrap();
    let data = d.join("empty.jsonl");
    std::fs::write(&data, "").unwrap();
    let o = calico(&[
        "train",
        "--data",
        data.to_str().unwrap(),
        "--config",
        cfg.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("epochs"), "{}", stderr(&o));
    let o = calico(&[
        "train",
        "--data",
        data.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("no samples"), "{}", stderr(&o));
    let o = calico(&[
        "train",
        "--data",
        data.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--resume",
    ]);
    assert_eq!(o.status.code(), Some(2));
    // A model config the model cannot be built from, said once, before
    // anything is written.
    let staged =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tools/train/tiny-staged.model.json");
    let mut model = read_json(&staged);
    model["ablation"]["use_qformer"] = false.into();
    let model_cfg = d.join("model.json");
    std::fs::write(&model_cfg, model.to_string()).unwrap();
    let o = calico(&[
        "train",
        "--model-config",
        model_cfg.to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert_eq!(
        err.matches("use_cam needs ablation.use_qformer").count(),
        1,
        "{err}"
    );
    assert!(!out.exists());
}

#[test]
fn a_bad_sample_anywhere_stops_the_run_before_it_writes() {
    let d = tmp("train-bad-sample");
    let (mp, _, cfg) = samples_and_config(&d, CONFIG);
    let text = std::fs::read_to_string(mp.join("train.jsonl")).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let last: serde_json::Value = serde_json::from_str(lines[lines.len() - 1]).unwrap();
    let id = last["id"].as_str().unwrap().to_string();
    // Each case spoils the last sample, which six steps of four samples
    // would never reach.
    type Spoil = fn(&mut serde_json::Value);
    let cases: [(&str, Spoil, &str); 5] = [
        (
            "missing image",
            |s| s["images"][1]["file"] = "no/such/image.png".into(),
            "no/such/image.png",
        ),
        (
            "image size",
            |s| s["images"][1]["width"] = 640.into(),
            "the sample gives width 640 and height",
        ),
        (
            "mask image",
            |s| s["masks"][0]["image"] = 7.into(),
            "mask 0 is on image 7 of 2",
        ),
        (
            "mask size",
            |s| s["masks"][0]["rle"]["size"] = serde_json::json!([3, 4]),
            "mask 0 is 3x4 but its image is",
        ),
        (
            "answer",
            |s| s["answer"] = "no masks in this answer".into(),
            "the answer has 0 [SEG]",
        ),
    ];
    for (what, spoil, expect) in cases {
        let mut bad = last.clone();
        spoil(&mut bad);
        let mut out_lines: Vec<String> = lines[..lines.len() - 1]
            .iter()
            .map(|l| l.to_string())
            .collect();
        out_lines.push(bad.to_string());
        let data = mp.join("spoilt.jsonl");
        std::fs::write(&data, out_lines.join("\n") + "\n").unwrap();
        let out = d.join("run");
        let o = calico(&train_args(
            data.to_str().unwrap(),
            &cfg,
            out.to_str().unwrap(),
        ));
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(2), "{what}: {err}");
        assert!(err.contains("spoilt.jsonl"), "{what}: {err}");
        assert!(err.contains(&format!("sample {id}")), "{what}: {err}");
        assert!(err.contains(expect), "{what}: {err}");
        assert!(!out.exists(), "{what}: the run directory was written");
    }
}

/// The tensors of a weights directory's `trainable.safetensors`, as raw values.
fn tensors(dir: &Path) -> std::collections::BTreeMap<String, Vec<f32>> {
    let t = candle_core::safetensors::load(
        dir.join("trainable.safetensors"),
        &candle_core::Device::Cpu,
    )
    .unwrap();
    t.into_iter()
        .map(|(n, v)| (n, v.flatten_all().unwrap().to_vec1::<f32>().unwrap()))
        .collect()
}

#[test]
fn a_runs_model_fine_tunes_with_every_tensor_trainable() {
    let d = tmp("train-fine-tune");
    let (mp, data, cfg) = samples_and_config(&d, CONFIG);
    let (data, cfg) = (data.as_str(), cfg.as_str());

    // A: six steps from scratch, without CAM (a model the default preset is not).
    let a = d.join("a");
    let mut args = train_args(data, cfg, a.to_str().unwrap());
    args.extend(["--ablation", "no-cam"]);
    let o = calico(&args);
    assert!(o.status.success(), "{}", stderr(&o));
    let a_model = a.join("model");
    let a_model_s = a_model.to_str().unwrap();

    // B: every tensor held by `freeze`: the exported model is A's, tensor
    // for tensor, and names no source (its own file holds everything).
    let held = d.join("held.json");
    std::fs::write(
        &held,
        r#"{"epochs": 1, "steps_per_epoch": 2, "batch_size": 2, "grad_accumulation": 2,
            "warmup_steps": 1, "validate_every": 0,
            "freeze": [{"prefixes": ["model.", "lm_head."]}]}"#,
    )
    .unwrap();
    let b = d.join("b");
    let mut args = train_args(data, held.to_str().unwrap(), b.to_str().unwrap());
    args.extend(["--weights", a_model_s]);
    let o = calico(&args);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(tensors(&b.join("model")), tensors(&a_model));
    assert!(!b.join("model/sources.json").exists());
    let config = |p: &Path| read_json(&p.join("calico.json"));
    // The model is the directory's (no CAM), not the default preset's.
    assert_eq!(config(&b), config(&a_model));
    assert_eq!(config(&b)["ablation"]["use_cam"], false);

    // C: trained from A's weights, it starts where A ended (far below A's
    // first, random-weights loss) and changes every tensor.
    let c = d.join("c");
    let mut args = train_args(data, cfg, c.to_str().unwrap());
    args.extend(["--weights", a_model_s]);
    let o = calico(&args);
    assert!(o.status.success(), "{}", stderr(&o));
    let (la, lc) = (losses(&a), losses(&c));
    assert!(
        lc[0].1 < la[0].1 - 1.0,
        "C starts at {} against A's {}",
        lc[0].1,
        la[0].1
    );
    let (ta, tc) = (tensors(&a_model), tensors(&c.join("model")));
    assert_eq!(ta.keys().collect::<Vec<_>>(), tc.keys().collect::<Vec<_>>());
    // What no loss reads keeps its value: the CEM and DINOv2 (read by the
    // CAMs only, which A's model has not), the mask tokens, IoU head and
    // prompts that single-mask output never uses, batch-norm statistics.
    let unread = [
        "model.cem.",
        "model.dinov2.",
        "iou_prediction_head",
        "output_hypernetworks_mlps.1.",
        "output_hypernetworks_mlps.2.",
        "output_hypernetworks_mlps.3.",
        "prompt_encoder.mask_downscaling",
        "prompt_encoder.not_a_point_embed",
        "prompt_encoder.point_embeddings",
        "running_",
    ];
    let unchanged: Vec<&String> = ta
        .iter()
        .filter(|(n, v)| tc[*n] == **v && !unread.iter().any(|u| n.contains(u)))
        .map(|(n, _)| n)
        .collect();
    assert!(unchanged.is_empty(), "unchanged: {unchanged:?}");

    // Stopped and resumed without --weights, the run finds its start
    // (RUN/start.json) and ends with C's losses; another directory, or
    // --weights on a run that started from random weights, is refused.
    let e = d.join("e");
    let mut args = train_args(data, cfg, e.to_str().unwrap());
    args.extend(["--weights", a_model_s, "--stop-after", "3"]);
    let o = calico(&args);
    assert!(o.status.success(), "{}", stderr(&o));
    let b_model = b.join("model");
    let mut args = train_args(data, cfg, e.to_str().unwrap());
    args.extend(["--resume", "--weights", b_model.to_str().unwrap()]);
    let o = calico(&args);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("this run started from"),
        "{}",
        stderr(&o)
    );
    let mut args = train_args(data, cfg, e.to_str().unwrap());
    args.push("--resume");
    let o = calico(&args);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(losses(&e), lc);
    let mut args = train_args(data, cfg, a.to_str().unwrap());
    args.extend(["--resume", "--weights", a_model_s]);
    let o = calico(&args);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("seeded random weights"),
        "{}",
        stderr(&o)
    );

    // A model config that is not the directory's is refused.
    let other = d.join("other.json");
    let mut tiny = config(&a_model);
    tiny["ablation"]["use_cam"] = true.into();
    std::fs::write(&other, tiny.to_string()).unwrap();
    let out = d.join("mismatch");
    let o = calico(&[
        "train",
        "--model-config",
        other.to_str().unwrap(),
        "--weights",
        a_model_s,
        "--data",
        data,
        "--config",
        cfg,
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("leave out --model-config"),
        "{}",
        stderr(&o)
    );
    assert!(!out.exists());

    // Answers with words the directory's word-level tokenizer never saw are
    // refused before anything is written, naming the words.
    let text = std::fs::read_to_string(mp.join("train.jsonl")).unwrap();
    let mut lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let id = lines[1]["id"].as_str().unwrap().to_string();
    let answer = lines[1]["answer"]
        .as_str()
        .unwrap()
        .replacen("</p>", "zebraish </p>", 1);
    lines[1]["answer"] = answer.into();
    let oov = mp.join("oov.jsonl");
    let body: Vec<String> = lines.iter().map(|v| v.to_string()).collect();
    std::fs::write(&oov, body.join("\n") + "\n").unwrap();
    let out = d.join("oov");
    let mut args = train_args(oov.to_str().unwrap(), cfg, out.to_str().unwrap());
    args.extend(["--weights", a_model_s]);
    let o = calico(&args);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains(&format!("sample {id}")), "{err}");
    assert!(err.contains("`zebraish`") && !err.contains("`a`"), "{err}");
    assert!(!out.exists());
    // As validation samples they are fine: validation answers are no targets.
    let mut args = train_args(data, cfg, out.to_str().unwrap());
    args.extend(["--weights", a_model_s, "--val", oov.to_str().unwrap()]);
    args.extend(["--stop-after", "1"]);
    let o = calico(&args);
    assert!(o.status.success(), "{}", stderr(&o));
}

#[test]
fn the_paper_set_on_a_weights_directory_trains_its_ablation_and_exports_a_whole_model() {
    let d = tmp("train-ablated-weights");
    let (_, data, cfg) = samples_and_config(&d, CONFIG);
    let (data, cfg) = (data.as_str(), cfg.as_str());
    let a = d.join("a");
    let o = calico(&train_args(data, cfg, a.to_str().unwrap()));
    assert!(o.status.success(), "{}", stderr(&o));
    let a_model = a.join("model");
    assert!(tensors(&a_model)
        .keys()
        .any(|n| n.starts_with("model.cem.")));

    // The paper's trainable set on A's weights without CEM and CAM: the
    // model trained, recorded and exported is the ablated one, with no
    // CEM or CAM tensor among its variables.
    let paper = d.join("paper.json");
    let mut c: serde_json::Value = serde_json::from_str(CONFIG).unwrap();
    c["trainable"] = "paper".into();
    std::fs::write(&paper, c.to_string()).unwrap();
    let b = d.join("b");
    let mut args = train_args(data, paper.to_str().unwrap(), b.to_str().unwrap());
    args.extend(["--weights", a_model.to_str().unwrap()]);
    args.extend(["--ablation", "no-cem-no-cam"]);
    let o = calico(&args);
    assert!(o.status.success(), "{}", stderr(&o));
    for dir in [b.clone(), b.join("model")] {
        let c = read_json(&dir.join("calico.json"));
        assert_eq!(c["ablation"]["use_cem"], false, "{}", dir.display());
        assert_eq!(c["ablation"]["use_cam"], false, "{}", dir.display());
    }
    let trained = tensors(&b.join("model"));
    assert!(!trained.is_empty());
    let ablated: Vec<&String> = trained
        .keys()
        .filter(|n| n.starts_with("model.cem.") || n.starts_with("model.cam."))
        .collect();
    assert!(ablated.is_empty(), "{ablated:?}");
    // The export names A's files as sources, and holds itself what they
    // lack: the tensors A trained that B held frozen (A's own
    // trainable.safetensors is no source). It loads with nothing missing.
    let o = calico(&["model", "check", b.join("model").to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));

    // A directory with no tensors at all (as `small`'s vision side has
    // none): the run seeds the frozen ones, and its export holds them.
    let w = d.join("w");
    let o = calico(&[
        "model",
        "init",
        "--preset",
        "tiny",
        "--out",
        w.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    std::fs::copy(a_model.join("tokenizer.json"), w.join("tokenizer.json")).unwrap();
    let c = d.join("c");
    let mut args = train_args(data, paper.to_str().unwrap(), c.to_str().unwrap());
    args.extend(["--weights", w.to_str().unwrap()]);
    let o = calico(&args);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(c.join("model/model.safetensors").is_file());
    let o = calico(&["model", "check", c.join("model").to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
}

#[test]
fn every_ablation_trains_and_records_its_modules() {
    let d = tmp("train-ablations");
    let (_, data, cfg) = samples_and_config(&d, CONFIG);
    let (data, cfg) = (data.as_str(), cfg.as_str());
    // (name, use_qformer, use_dino, use_cem, use_cam): Table 2's rows.
    let rows = [
        ("no-cem", true, true, false, true),
        ("no-cam", true, true, true, false),
        ("no-cem-no-cam", true, true, false, false),
        ("no-qformer", false, true, true, false),
        ("no-dino", true, false, false, true),
    ];
    for (name, qformer, dino, cem, cam) in rows {
        let out = d.join(name);
        let mut args = train_args(data, cfg, out.to_str().unwrap());
        args.extend(["--ablation", name, "--stop-after", "1"]);
        let o = calico(&args);
        assert!(o.status.success(), "{name}: {}", stderr(&o));
        let c = read_json(&out.join("calico.json"));
        let a = &c["ablation"];
        assert_eq!(
            (a["use_qformer"].as_bool(), a["use_dino"].as_bool()),
            (Some(qformer), Some(dino)),
            "{name}"
        );
        assert_eq!(
            (a["use_cem"].as_bool(), a["use_cam"].as_bool()),
            (Some(cem), Some(cam)),
            "{name}"
        );
        assert_eq!(losses(&out).len(), 1, "{name}");
    }
}

/// QLoRA: the paper's set trained over an LLM kept in its quantized GGUF
/// blocks has the losses of the same run over their float values, resumes
/// with the flag it started with, and exports a model that loads either
/// way (its source file's copies of the trained tensors left out). The
/// flag is refused where it cannot apply, before anything is written.
#[test]
fn the_paper_set_trains_over_a_quantized_llm_as_over_its_float_values() {
    let d = tmp("train-qlora");
    let (_, data, cfg) = samples_and_config(&d, CONFIG);
    let (data, cfg) = (data.as_str(), cfg.as_str());
    let a = d.join("a");
    let o = calico(&train_args(data, cfg, a.to_str().unwrap()));
    assert!(o.status.success(), "{}", stderr(&o));
    // A's model with its LLM in a Q8_0 GGUF and every other tensor, the
    // ones the paper's set trains too, in one model.safetensors.
    let q = d.join("q");
    let (a_model, q_s) = (a.join("model"), q.to_str().unwrap());
    let o = calico(&[
        "model",
        "quantize",
        "--weights",
        a_model.to_str().unwrap(),
        "--type",
        "q8_0",
        "--out",
        q_s,
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let paper = d.join("paper.json");
    let mut c: serde_json::Value = serde_json::from_str(CONFIG).unwrap();
    c["trainable"] = "paper".into();
    std::fs::write(&paper, c.to_string()).unwrap();
    let paper = paper.to_str().unwrap();

    let float = d.join("float");
    let mut args = train_args(data, paper, float.to_str().unwrap());
    args.extend(["--weights", q_s]);
    let o = calico(&args);
    assert!(o.status.success(), "{}", stderr(&o));
    // Stopped after 3 steps and resumed without repeating the flag.
    let ql = d.join("qlora");
    let mut args = train_args(data, paper, ql.to_str().unwrap());
    args.extend(["--weights", q_s, "--quantized-llm", "--stop-after", "3"]);
    let o = calico(&args);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("the LLM stays frozen in its quantized blocks (QLoRA): 23 Q8_0"),
        "{}",
        stderr(&o)
    );
    assert_eq!(
        read_json(&ql.join("start.json"))["quantized_llm"],
        "dequantize"
    );
    let mut args = train_args(data, paper, ql.to_str().unwrap());
    args.extend(["--resume", "--quantized-llm", "q8"]);
    let o = calico(&args);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("resume it with that value or without the flag"));
    let mut args = train_args(data, paper, ql.to_str().unwrap());
    args.push("--resume");
    let o = calico(&args);
    assert!(o.status.success(), "{}", stderr(&o));
    let (fl, ql_losses) = (losses(&float), losses(&ql));
    assert_eq!(fl.len(), 6);
    assert_eq!(ql_losses.len(), 6);
    for (f, g) in fl.iter().zip(&ql_losses) {
        assert_eq!(f.0, g.0);
        assert!(
            (f.1 - g.1).abs() <= 1e-6 * f.1.abs().max(1.0),
            "{f:?} {g:?}"
        );
    }
    // The export loads quantized and as float32.
    let model = ql.join("model");
    let sources = read_json(&model.join("sources.json"));
    let held = sources["sources"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["path"].as_str().unwrap().ends_with("model.safetensors"))
        .expect("q's model.safetensors is a source");
    assert!(!held["except"].as_array().unwrap().is_empty());
    for extra in [&["--quantized-llm"][..], &[]] {
        let mut args = vec!["model", "check", model.to_str().unwrap()];
        args.extend(extra);
        let o = calico(&args);
        assert!(o.status.success(), "{extra:?}: {}", stderr(&o));
    }

    // Refused: without --weights, with every tensor trainable, on a
    // directory without a GGUF, and on resuming a float run.
    let refused = |args: Vec<&str>, out: &Path, says: &str| {
        let o = calico(&args);
        assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
        assert!(stderr(&o).contains(says), "{}", stderr(&o));
        assert!(!out.exists() || out == float.as_path());
    };
    let r = d.join("r");
    let r_s = r.to_str().unwrap();
    let mut args = train_args(data, paper, r_s);
    args.push("--quantized-llm");
    refused(args, &r, "--quantized-llm needs --weights DIR");
    let mut args = train_args(data, cfg, r_s);
    args.extend(["--weights", q_s, "--quantized-llm"]);
    refused(args, &r, "trains every tensor");
    let mut args = train_args(data, paper, r_s);
    args.extend(["--weights", a_model.to_str().unwrap(), "--quantized-llm"]);
    refused(args, &r, "no GGUF LLM to keep quantized");
    let mut args = train_args(data, paper, float.to_str().unwrap());
    args.extend(["--resume", "--quantized-llm"]);
    refused(args, &float, "resume it without --quantized-llm");
}

/// `keep_best`: `RUN/best/` holds the weights of the first validation with
/// the highest score, records which one it was, loads, and comes out the
/// same when the run is stopped and resumed in between; with
/// `early_stop_patience` the run ends after the best. Fine-tuning the demo
/// model makes the scores move from step to step.
#[test]
fn keep_best_keeps_the_weights_of_the_best_validation_and_early_stop_ends_after_it() {
    let d = tmp("train-keep-best");
    let config = r#"{"epochs": 1, "steps_per_epoch": 5, "batch_size": 2, "warmup_steps": 1,
        "checkpoint_every": 1, "keep_last": 10, "validate_every": 1, "val_samples": 6,
        "keep_best": "miou", "optimizer": {"lr": 0.003}}"#;
    let (mp, data, cfg) = samples_and_config(&d, config);
    let demo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../assets/demo-model");
    let val = mp.join("val.jsonl");
    let args = |out: &Path| -> Vec<String> {
        [
            "train",
            "--weights",
            demo.to_str().unwrap(),
            "--data",
            &data,
            "--config",
            &cfg,
            "--out",
            out.to_str().unwrap(),
            "--val",
            val.to_str().unwrap(),
            "--similarity",
            "exact",
        ]
        .map(String::from)
        .to_vec()
    };
    let run = |a: &[String]| {
        let a: Vec<&str> = a.iter().map(String::as_str).collect();
        let o = calico(&a);
        assert!(o.status.success(), "{}", stderr(&o));
        String::from_utf8_lossy(&o.stdout).into_owned()
    };

    let a = d.join("a");
    let out = run(&args(&a));
    let scores: Vec<(u64, f64)> = records(&a, "val")
        .iter()
        .map(|v| {
            let miou = v["average"]["miou"].as_f64().unwrap();
            (v["step"].as_u64().unwrap(), miou)
        })
        .collect();
    assert_eq!(scores.len(), 5, "{scores:?}");
    let top = scores.iter().map(|s| s.1).fold(f64::MIN, f64::max);
    let (step, score) = *scores.iter().find(|s| s.1 == top).unwrap();
    let best = read_json(&a.join("best").join("best.json"));
    // At this learning rate the score rises, then falls (measured: 17.1,
    // 19.9, 21.4, 20.8, 20.8), so the best weights are not the last ones.
    assert!(step > 1 && step < 5, "{scores:?}");
    assert_eq!(best["metric"], "miou");
    assert_eq!(best["step"].as_u64(), Some(step), "{scores:?}");
    assert_eq!(best["score"].as_f64(), Some(score));
    assert_eq!(best["validation"]["average"]["miou"].as_f64(), Some(score));
    assert!(
        out.contains(&format!("best validation: miou {score:.1} at step {step}")),
        "{out}"
    );
    let curve = std::fs::read_to_string(a.join("curve.svg")).unwrap();
    assert!(curve.contains(&format!(">best miou {score:.1} @ {step}<")));
    // The weights are that step's, and they load.
    let ck = a.join("checkpoints").join(format!("step-{step:08}"));
    assert_eq!(tensors(&a.join("best")), tensors(&ck));
    assert_ne!(tensors(&a.join("best")), tensors(&a.join("model")));
    let o = calico(&["model", "check", a.join("best").to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));

    // Stopped after two steps and resumed: the same choice.
    let b = d.join("b");
    let mut first = args(&b);
    first.extend(["--stop-after".into(), "2".into()]);
    run(&first);
    let mut again = args(&b);
    again.push("--resume".into());
    run(&again);
    let best_b = read_json(&b.join("best").join("best.json"));
    for k in ["metric", "step", "score"] {
        assert_eq!(best_b[k], best[k], "{k}");
    }
    assert_eq!(tensors(&b.join("best")), tensors(&a.join("best")));

    // early_stop_patience 1 ends the run at the first validation after the
    // best (step 4), with its checkpoint and model; resumed, nothing is left.
    let patient = d.join("patient.json");
    std::fs::write(
        &patient,
        config.replace("\"keep_best\"", "\"early_stop_patience\": 1, \"keep_best\""),
    )
    .unwrap();
    let e = d.join("e");
    let mut early = args(&e);
    early[6] = patient.to_str().unwrap().to_string();
    let out = run(&early);
    let steps = |run: &Path, kind: &str| -> Vec<u64> {
        records(run, kind)
            .iter()
            .map(|v| v["step"].as_u64().unwrap())
            .collect()
    };
    let through: Vec<u64> = (1..=step + 1).collect();
    assert_eq!(steps(&e, "train"), through, "{out}");
    assert_eq!(steps(&e, "val"), through, "{out}");
    assert!(
        out.contains(&format!("stopped early at step {}", step + 1)),
        "{out}"
    );
    assert_eq!(latest_step(&e.join("checkpoints")), Some(step + 1));
    assert_eq!(
        read_json(&e.join("best").join("best.json"))["step"].as_u64(),
        Some(step)
    );
    let ck = e.join("checkpoints").join(format!("step-{:08}", step + 1));
    assert_eq!(tensors(&e.join("model")), tensors(&ck));
    early.push("--resume".into());
    let before = std::fs::read_to_string(e.join("metrics.jsonl")).unwrap();
    let early: Vec<&str> = early.iter().map(String::as_str).collect();
    let o = calico(&early);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("nothing is left to train"),
        "{}",
        stderr(&o)
    );
    let after = std::fs::read_to_string(e.join("metrics.jsonl")).unwrap();
    assert_eq!(before, after);

    // Refused before anything is written: nothing to validate on.
    let c = d.join("c");
    let mut no_val = args(&c);
    no_val.truncate(no_val.len() - 4);
    let no_val: Vec<&str> = no_val.iter().map(String::as_str).collect();
    let o = calico(&no_val);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("keep_best \"miou\""), "{}", stderr(&o));
    assert!(!c.exists());
    let off = d.join("off.json");
    std::fs::write(&off, r#"{"keep_best": "ss", "val_samples": 0}"#).unwrap();
    let mut zero = args(&c);
    zero[6] = off.to_str().unwrap().to_string();
    let zero: Vec<&str> = zero.iter().map(String::as_str).collect();
    let o = calico(&zero);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("val_samples 0"), "{}", stderr(&o));
    assert!(!c.exists());
}

/// Validation answers its samples on the workers, one sample each: the
/// predictions and scores are those of one worker.
#[test]
fn validation_on_two_workers_answers_as_on_one() {
    let d = tmp("train-val-workers");
    let (mp, data, cfg) = samples_and_config(
        &d,
        r#"{"epochs": 1, "steps_per_epoch": 2, "batch_size": 2, "grad_accumulation": 2,
            "warmup_steps": 1, "validate_every": 1, "val_samples": 5, "max_new_tokens": 24}"#,
    );
    let val = mp.join("val.jsonl");
    let mut outs = Vec::new();
    for workers in ["1", "2"] {
        let out = d.join(format!("w{workers}"));
        let mut args = train_args(&data, &cfg, out.to_str().unwrap());
        args.extend([
            "--val",
            val.to_str().unwrap(),
            "--similarity",
            "exact",
            "--workers",
            workers,
        ]);
        let o = calico(&args);
        assert!(o.status.success(), "{}", stderr(&o));
        let scores: Vec<serde_json::Value> = records(&out, "val")
            .into_iter()
            .map(|mut v| {
                v.as_object_mut().unwrap().remove("elapsed_s");
                v
            })
            .collect();
        assert_eq!(scores.len(), 2);
        let preds = std::fs::read_to_string(out.join("val_predictions.jsonl")).unwrap();
        assert_eq!(preds.lines().count(), 5);
        outs.push((scores, preds));
    }
    assert_eq!(outs[0], outs[1]);
}
