//! Replays every parity case: the committed ones under tests/fixtures/parity
//! and, when `CALICO_PARITY_DIR` is set, every case in that directory.
//! Format: docs/parity.md.

use std::path::PathBuf;

use calico_model::parity::{case_files, check, Case};
use candle_core::Device;

fn case_dirs() -> Vec<PathBuf> {
    let mut dirs = vec![PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/parity")];
    if let Some(d) = std::env::var_os("CALICO_PARITY_DIR") {
        dirs.push(PathBuf::from(d));
    }
    dirs
}

#[test]
fn every_parity_case_matches_its_reference() {
    let device = Device::Cpu;
    let mut failures = Vec::new();
    let mut count = 0;
    for dir in case_dirs() {
        let files = case_files(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        for file in files {
            count += 1;
            let name = file.display().to_string();
            let outcome = Case::read(&file).and_then(|case| check(&case, &device));
            match outcome {
                Ok(r) => {
                    println!("{}", r.line());
                    failures.extend(r.failure());
                }
                Err(e) => failures.push(format!("{name}: {e}")),
            }
        }
    }
    println!("{count} parity cases");
    assert!(
        failures.is_empty(),
        "{} of {count} cases failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// The committed fixtures keep at least three cases per component, so a
/// deleted or renamed fixture cannot silently shrink the coverage.
#[test]
fn committed_cases_cover_every_component() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/parity");
    let mut counts: std::collections::BTreeMap<String, usize> = calico_model::parity::COMPONENTS
        .iter()
        .map(|c| (c.to_string(), 0))
        .collect();
    for file in case_files(&dir).unwrap() {
        let case = Case::read(&file).unwrap_or_else(|e| panic!("{e}"));
        *counts.entry(case.component).or_default() += 1;
    }
    let short: Vec<String> = counts
        .iter()
        .filter(|(_, &n)| n < 3)
        .map(|(c, n)| format!("{c}: {n}"))
        .collect();
    assert!(
        short.is_empty(),
        "components with fewer than 3 cases: {}",
        short.join(", ")
    );
}

#[test]
fn a_malformed_case_is_a_clear_error() {
    let dir = std::env::temp_dir().join(format!("calico-parity-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("broken.safetensors");
    std::fs::write(&path, b"not a safetensors file").unwrap();
    let err = Case::read(&path).err().expect("must fail").to_string();
    assert!(err.contains("broken.safetensors"), "{err}");
    // A valid file without metadata names the missing field.
    let t = candle_core::Tensor::zeros(2, candle_core::DType::F32, &Device::Cpu).unwrap();
    candle_core::safetensors::save(
        &std::collections::HashMap::from([("outputs.y".to_string(), t)]),
        &path,
    )
    .unwrap();
    let err = Case::read(&path).err().expect("must fail").to_string();
    assert!(err.contains("metadata has no `component`"), "{err}");
    std::fs::remove_dir_all(&dir).ok();
}
