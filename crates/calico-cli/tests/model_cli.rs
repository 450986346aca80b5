//! `calico model info`: presets, config files, JSON output and errors.

mod common;

use common::{calico, stderr, tmp};

fn json(args: &[&str]) -> serde_json::Value {
    let o = calico(args);
    assert!(o.status.success(), "{}", stderr(&o));
    serde_json::from_slice(&o.stdout).expect("JSON on stdout")
}

#[test]
fn paper_preset_reports_counts_tokens_and_table4() {
    let r = json(&["model", "info", "--preset", "paper", "--json"]);
    assert_eq!(r["config"], "paper");
    let comps = r["parameters"]["components"].as_array().unwrap();
    let get = |name: &str| {
        comps
            .iter()
            .find(|c| c["name"] == name)
            .unwrap_or_else(|| panic!("no component {name}"))["params"]
            .as_u64()
            .unwrap()
    };
    assert_eq!(get("llm"), 6_738_415_616);
    assert_eq!(get("sam_image_encoder"), 637_026_048);
    assert_eq!(get("lora"), 4_194_304);
    let sum: u64 = comps.iter().map(|c| c["params"].as_u64().unwrap()).sum();
    assert_eq!(r["total_parameters"].as_u64().unwrap(), sum);
    let pct = r["trainable_percent"].as_f64().unwrap();
    assert!(pct > 0.1 && pct < 1.0, "{pct}");
    assert_eq!(r["paper_trainable_percent"].as_f64().unwrap(), 0.3);
    let methods = r["methods"].as_array().unwrap();
    let tokens: Vec<(u64, u64)> = methods
        .iter()
        .map(|m| {
            (
                m["image_tokens"].as_u64().unwrap(),
                m["paper_image_tokens"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(tokens, [(32, 32), (256, 256), (576, 576)]);
    let paper_tflops: Vec<f64> = methods
        .iter()
        .map(|m| m["paper_tflops"].as_f64().unwrap())
        .collect();
    assert_eq!(paper_tflops, [28.5, 44.0, 42.3]);
    // Fewer image tokens, fewer FLOPs, on every task.
    for task in 0..3 {
        let t: Vec<f64> = methods
            .iter()
            .map(|m| m["flops"][task]["tflops"].as_f64().unwrap())
            .collect();
        assert!(t[0] < t[1] && t[1] < t[2], "{t:?}");
        assert!(t[0] > 1.0 && t[2] < 100.0, "{t:?}");
    }
}

#[test]
fn text_output_lists_components_and_methods() {
    for preset in ["tiny", "small", "paper"] {
        let o = calico(&["model", "info", "--preset", preset]);
        assert!(o.status.success(), "{}", stderr(&o));
        let out = String::from_utf8(o.stdout).unwrap();
        for needle in [
            "eva_vit",
            "cem",
            "cam",
            "sam_mask_decoder",
            "trainable",
            "Multi-Image LISA",
            "Multi-Image GLaMM",
            "llm_decode",
        ] {
            assert!(out.contains(needle), "{preset}: no `{needle}` in\n{out}");
        }
        assert!(out.contains(&format!("Model `{preset}`")), "{out}");
    }
}

#[test]
fn config_files_override_the_paper_values_and_are_validated() {
    let d = tmp("model-info");
    let ok = d.join("custom.json");
    std::fs::write(
        &ok,
        r#"{"name": "one-cam", "cam": {"layers": [16]}, "ablation": {"use_cem": false}}"#,
    )
    .unwrap();
    let r = json(&["model", "info", "--config", ok.to_str().unwrap(), "--json"]);
    assert_eq!(r["config"], "one-cam");
    let names: Vec<&str> = r["parameters"]["components"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert!(names.contains(&"cam") && !names.contains(&"cem") && !names.contains(&"dinov2"));

    let bad = d.join("bad.json");
    std::fs::write(&bad, r#"{"cam": {"layers": [11, 40]}}"#).unwrap();
    let o = calico(&["model", "info", "--config", bad.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2));
    let e = stderr(&o);
    assert!(
        e.contains("cam.layers contains 40") && e.contains("bad.json"),
        "{e}"
    );

    let o = calico(&["model", "info", "--preset", "huge"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("unknown preset `huge`"),
        "{}",
        stderr(&o)
    );

    let o = calico(&[
        "model",
        "info",
        "--config",
        d.join("missing.json").to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("missing.json"), "{}", stderr(&o));
}

#[test]
fn init_writes_a_weights_directory_and_check_reports_on_it() {
    let d = tmp("model-init").join("w");
    let ds = d.to_str().unwrap();
    let o = calico(&["model", "init", "--preset", "tiny", "--out", ds]);
    assert!(o.status.success(), "{}", stderr(&o));
    let cfg: serde_json::Value =
        serde_json::from_slice(&std::fs::read(d.join("calico.json")).unwrap()).unwrap();
    assert_eq!(cfg["name"], "tiny");
    // A second init does not overwrite it.
    let o = calico(&["model", "init", "--preset", "tiny", "--out", ds]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("already exists"));
    // No tokenizer and no GGUF: check names what is missing.
    let o = calico(&["model", "check", ds]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("no tokenizer"), "{}", stderr(&o));
    let o = calico(&["model", "init", "--gguf", "/no/such.gguf", "--out", ds]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("/no/such.gguf"));
    // A file that is not a GGUF is refused before anything is written.
    let other = d.with_file_name("other");
    let fake = d.with_file_name("model.gguf");
    std::fs::write(&fake, b"PK\x03\x04 not a gguf").unwrap();
    let o = calico(&[
        "model",
        "init",
        "--gguf",
        fake.to_str().unwrap(),
        "--out",
        other.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("not a GGUF file"), "{}", stderr(&o));
    assert!(!other.exists());
}

/// `calico model parity` replays committed cases and reports each one; a
/// case whose data no longer matches its reference fails with exit 1
/// naming it; a file that is no case, or a path that is not there, is bad
/// input (exit 2).
#[test]
fn parity_replays_cases_and_fails_on_a_mismatch() {
    let fixtures = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../calico-model/tests/fixtures/parity");
    let good = fixtures.join("sam_prompt_mask_decoder_text_d16_8x8.safetensors");
    let o = calico(&["model", "parity", good.to_str().unwrap(), "--device", "cpu"]);
    let out = String::from_utf8_lossy(&o.stdout).to_string();
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(out.contains("sam_prompt_mask_decoder  tol 1e-4"), "{out}");
    assert!(
        out.contains("1 of 1 parity cases within tolerance on cpu"),
        "{out}"
    );

    // The same case with its tensor data overwritten: the outputs no longer
    // follow from the inputs and weights.
    let d = tmp("model-parity");
    let bytes = std::fs::read(&good).unwrap();
    let header = 8 + u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let mut broken = bytes.clone();
    broken[header..].fill(0x3f);
    let bad = d.join("broken.safetensors");
    std::fs::write(&bad, &broken).unwrap();
    let o = calico(&[
        "model",
        "parity",
        good.to_str().unwrap(),
        bad.to_str().unwrap(),
    ]);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("1 of 2 parity cases within tolerance"),
        "{}",
        String::from_utf8_lossy(&o.stdout)
    );
    assert!(err.contains("broken.safetensors"), "{err}");

    let text = d.join("notes.safetensors");
    std::fs::write(&text, "not a case").unwrap();
    for (path, expected) in [
        (text.clone(), "notes.safetensors"),
        (d.join("missing"), "no such file or directory"),
    ] {
        let o = calico(&["model", "parity", path.to_str().unwrap()]);
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(2), "{err}");
        assert!(err.contains(expected), "{err}");
    }
}

/// `calico model quantize` on the shipped demo model, then `calico segment
/// --quantized-llm` on the result: the same answer as the float model, masks
/// within the Q8_0 weights' own error, and bad requests refused up front.
#[test]
fn quantize_writes_a_gguf_llm_that_segment_runs_quantized() {
    let d = tmp("model-quantize");
    let demo = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../assets/demo-model");
    let (demo_s, d_s) = (demo.to_str().unwrap(), d.to_str().unwrap());
    let q = d.join("q8");
    let q_s = q.to_str().unwrap();
    let o = calico(&[
        "model",
        "quantize",
        "--weights",
        demo_s,
        "--type",
        "q8_0",
        "--out",
        q_s,
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(text.contains("21 LLM projections → Q8_0"), "{text}");
    // The default --vocab-type: the embedding and the untied head in Q8_0.
    assert!(text.contains("2 vocabulary tables → Q8_0"), "{text}");
    assert!(q.join("llm.gguf").is_file() && q.join("model.safetensors").is_file());

    let synth = common::synth(&d, 2);
    let img = |n: usize| {
        synth
            .join(format!("paco_lvis/train2017/{n:012}.jpg"))
            .to_str()
            .unwrap()
            .to_string()
    };
    let (a, b) = (img(1), img(2));
    let segment = |weights: &str, extra: &[&str], out: &str| {
        let mut args = vec![
            "segment",
            &a,
            &b,
            "--weights",
            weights,
            "--json",
            "--out",
            out,
        ];
        args.extend(extra);
        let o = calico(&args);
        assert!(o.status.success(), "{}", stderr(&o));
        serde_json::from_slice::<serde_json::Value>(&o.stdout).expect("segment.json")
    };
    let float = segment(demo_s, &[], &format!("{d_s}/seg-float"));
    for (extra, name) in [
        (vec!["--quantized-llm"], "dequantize"),
        (vec!["--quantized-llm", "q8"], "q8"),
    ] {
        let out = format!("{d_s}/seg-{name}");
        let got = segment(q_s, &extra, &out);
        assert_eq!(got["answer"], float["answer"], "{name}");
        let model = got["model"].as_str().unwrap_or_default();
        assert!(
            model.contains(&format!("LLM kept in Q8_0, {name} matmul")),
            "{model}"
        );
        // Each mask against the float model's: IoU of the PNGs' pixels.
        let masks = std::fs::read_dir(&out)
            .unwrap()
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with("mask_"))
            .collect::<Vec<_>>();
        assert!(!masks.is_empty());
        for m in masks {
            let load = |dir: &str| {
                image::open(format!("{dir}/{m}"))
                    .unwrap()
                    .to_luma8()
                    .pixels()
                    .map(|p| p.0[0] > 0)
                    .collect::<Vec<bool>>()
            };
            let (x, y) = (load(&out), load(&format!("{d_s}/seg-float")));
            let inter = x.iter().zip(&y).filter(|(p, q)| **p && **q).count();
            let union = x.iter().zip(&y).filter(|(p, q)| **p || **q).count();
            let iou = inter as f64 / union.max(1) as f64;
            assert!(iou > 0.95, "{name} {m}: IoU {iou}");
        }
    }

    // A relative weights directory whose GGUF lies in it (not named by
    // sources.json) loads too.
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_calico"))
        .args([
            "model",
            "check",
            "q8",
            "--missing",
            "error",
            "--quantized-llm",
        ])
        .current_dir(&d)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let report = String::from_utf8_lossy(&o.stdout);
    assert!(
        report.contains("LLM weights kept quantized: 23 Q8_0"),
        "{report}"
    );

    // Refused with exit 2, nothing written: a preset, a directory without
    // a GGUF LLM, an unknown type, a k-type whose blocks do not fit, and an
    // output directory that holds something.
    let refused = |args: &[&str], msg: &str| {
        let o = calico(args);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", stderr(&o));
        assert!(stderr(&o).contains(msg), "{args:?}: {}", stderr(&o));
    };
    let no = format!("{d_s}/no");
    refused(
        &[
            "segment",
            &a,
            &b,
            "--preset",
            "tiny",
            "--quantized-llm",
            "--out",
            &no,
        ],
        "--quantized-llm needs --weights DIR whose LLM is a GGUF file",
    );
    refused(
        &[
            "segment",
            &a,
            &b,
            "--weights",
            demo_s,
            "--quantized-llm",
            "--out",
            &no,
        ],
        "no GGUF LLM to keep quantized",
    );
    refused(
        &[
            "segment",
            &a,
            &b,
            "--weights",
            q_s,
            "--quantized-llm",
            "q4",
            "--out",
            &no,
        ],
        "`q4` is not a quantized matmul",
    );
    assert!(!std::path::Path::new(&no).exists());
    let q2 = format!("{d_s}/q2");
    for (flag, dtype, msg) in [
        ("--type", "q3", "--type: `q3` is not a quantization type"),
        ("--type", "q4_k", "do not split into Q4K blocks of 256"),
        (
            "--vocab-type",
            "f16",
            "--vocab-type: `f16` is not a quantization type",
        ),
        (
            "--vocab-type",
            "q5_k",
            "do not split into Q5K blocks of 256",
        ),
    ] {
        let quantize = ["model", "quantize", "--weights", demo_s, flag, dtype];
        refused(&[&quantize[..], &["--out", &q2]].concat(), msg);
    }
    assert!(!std::path::Path::new(&q2).exists());
    refused(
        &["model", "quantize", "--weights", demo_s, "--out", q_s],
        "already exists and is not an empty directory",
    );
    let _ = std::fs::remove_dir_all(&d);
}
