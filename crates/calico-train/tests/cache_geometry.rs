//! `tools/train/with_cache_geometry.sh` makes this process's matrix products
//! block their sums as on a CPU with the given caches: what
//! `RUN/machine.json` records follows the geometry, and so do the rounded
//! bits of a long product (docs/training.md, "Reproducing a run on another
//! CPU").
//!
//! The test runs itself again under the script (the child branch prints
//! the record and a hash of a product's bits), for two L1 geometries that `gemm`
//! blocks by 512 and by 1024.

use std::path::Path;
use std::process::Command;

use calico_train::machine::MachineRecord;
use candle_core::{Device, Tensor};

const CHILD: &str = "CALICO_CACHE_GEOMETRY_CHILD";

/// A (128 × 4096) · (4096 × 128) product of fixed values, as a hash of its
/// bits: large enough that `gemm` sizes its K blocks from the caches.
fn product_bits() -> u64 {
    let k = 4096;
    let values = |n: usize, seed: u64| -> Vec<f32> {
        let mut s = seed;
        (0..n)
            .map(|_| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((s >> 40) as f32 / (1u64 << 24) as f32) - 0.5
            })
            .collect()
    };
    let a = Tensor::from_vec(values(128 * k, 1), (128, k), &Device::Cpu).unwrap();
    let b = Tensor::from_vec(values(k * 128, 2), (k, 128), &Device::Cpu).unwrap();
    a.matmul(&b)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap()
        .iter()
        .fold(0xcbf2_9ce4_8422_2325u64, |h, x| {
            (h ^ u64::from(x.to_bits())).wrapping_mul(0x0100_0000_01b3)
        })
}

/// The record and the product's bits as a child under `l1d` (SIZE/WAYS);
/// `None` where this machine allows no mount namespace.
fn under(l1d: &str) -> Option<(MachineRecord, u64)> {
    let script =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tools/train/with_cache_geometry.sh");
    let me = std::env::current_exe().unwrap();
    let o = Command::new("bash")
        .arg(&script)
        .args([l1d, "1024K/8", "32M/16", "--"])
        .arg(&me)
        .args(["--exact", "child", "--nocapture", "--test-threads", "1"])
        .env(CHILD, "1")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    if !o.status.success() && err.contains("unshare:") {
        eprintln!("skipped: this machine allows no mount namespace here ({err})");
        return None;
    }
    assert!(o.status.success(), "{err}");
    let out = String::from_utf8_lossy(&o.stdout);
    // The harness prints `test child ... ` before the child's first line.
    let line = |tag: &str| {
        out.lines()
            .find_map(|l| l.find(tag).map(|at| &l[at + tag.len()..]))
            .unwrap_or_else(|| panic!("no `{tag}` line in:\n{out}\n{err}"))
            .to_string()
    };
    let record: MachineRecord = serde_json::from_str(&line("record ")).unwrap();
    let bits: u64 = line("bits ").trim().parse().unwrap();
    Some((record, bits))
}

#[test]
fn child() {
    if std::env::var_os(CHILD).is_none() {
        return; // only meaningful under the script (the test below)
    }
    let record = MachineRecord::here();
    println!("record {}", serde_json::to_string(&record).unwrap());
    println!("bits {}", product_bits());
}

#[test]
fn the_l1_geometry_decides_the_k_block_and_the_rounding() {
    let Some((zen4, a)) = under("32K/8") else {
        return;
    };
    let Some((intel, b)) = under("48K/12") else {
        return;
    };
    assert_eq!(zen4.matmul.l1d.bytes, 32 << 10);
    assert_eq!(zen4.matmul.l1d.ways, 8);
    assert_eq!(intel.matmul.l1d.bytes, 48 << 10);
    assert_eq!(intel.matmul.l2.bytes, 1 << 20);
    if zen4.matmul.kernel != "x86-64 FMA" {
        eprintln!("skipped: the K blocks are known for the x86-64 FMA kernel only");
        return;
    }
    assert_eq!(zen4.matmul.k_block, Some(512));
    assert_eq!(intel.matmul.k_block, Some(1024));
    assert!(!zen4.rounds_like(&intel));
    // Same values, same code: only the order of the additions differs.
    assert_ne!(a, b, "the two geometries rounded every sum alike");
    // And the same geometry again rounds the same.
    let (_, again) = under("32K/8").unwrap();
    assert_eq!(a, again);
    // This process, outside the script, matches one of them exactly when
    // its own block is one of theirs.
    let here = MachineRecord::here();
    if here.rounds_like(&zen4) {
        assert_eq!(product_bits(), a);
    } else if here.rounds_like(&intel) {
        assert_eq!(product_bits(), b);
    }
}
