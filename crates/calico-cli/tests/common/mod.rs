//! Helpers shared by the CLI tests: run the binary, make a scratch directory,
//! generate SynthParts and build samples from it.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// Runs `calico` with `args`.
pub fn calico(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_calico"))
        .args(args)
        .output()
        .expect("run calico")
}

/// A fresh scratch directory for one test.
pub fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("calico-cli-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Standard error as text.
pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// `calico data synth` into `dir/synth` (`images` per format, 64×64).
pub fn synth(dir: &Path, images: usize) -> PathBuf {
    let out = dir.join("synth");
    let n = images.to_string();
    let o = calico(&[
        "data",
        "synth",
        "--out",
        out.to_str().unwrap(),
        "--images",
        &n,
        "--size",
        "64",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    out
}

/// `calico data build` over the three formats of a SynthParts directory.
pub fn build(synth: &Path, out: &Path, extra: &[&str]) -> Output {
    let mut args: Vec<String> = vec![
        "data".into(),
        "build".into(),
        "--out".into(),
        out.display().to_string(),
    ];
    for f in ["paco_lvis", "part_image_net", "ade20k_part234"] {
        args.push("--source".into());
        args.push(format!("{f}={}", synth.join(f).display()));
    }
    args.extend(extra.iter().map(|s| s.to_string()));
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    calico(&refs)
}
