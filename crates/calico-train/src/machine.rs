//! The machine a run trained on (`RUN/machine.json`), as far as it decides
//! how the run's numbers round.
//!
//! A run is deterministic on one machine, but candle's CPU matrix products
//! (the `gemm` crate) cut the sum over K into blocks sized from the L1 data
//! cache, which `gemm` reads once per process from
//! `/sys/devices/system/cpu/cpu*/cache`. The products of a block are added
//! in registers and each block's total is then added to the result, so a
//! CPU with another L1 geometry adds in another order and a long run drifts
//! to other weights (docs/training.md, "Reproducing a run on another CPU").
//!
//! The record holds what this process's `gemm` read, so `--resume` on a
//! machine that blocks its sums otherwise can say that the resumed steps
//! will not be bit for bit those of an uninterrupted run, and so that
//! `tools/train/with_cache_geometry.sh` can make another machine read the
//! same caches.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::TrainError;

type Result<T> = std::result::Result<T, TrainError>;

/// The record's file name in the run directory.
pub const MACHINE_FILE: &str = "machine.json";

/// One cache level as `gemm` sees it (per core for L1 and L2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct CacheLevel {
    pub bytes: usize,
    pub ways: usize,
    pub line_bytes: usize,
}

impl CacheLevel {
    /// The level as `with_cache_geometry.sh` takes it, `48K/12`.
    pub fn script_arg(&self) -> String {
        if self.bytes.is_multiple_of(1024) {
            format!("{}K/{}", self.bytes / 1024, self.ways)
        } else {
            format!("{}/{}", self.bytes, self.ways)
        }
    }

    fn describe(&self) -> String {
        if self.bytes.is_multiple_of(1024) {
            format!("{} KiB {}-way", self.bytes / 1024, self.ways)
        } else {
            format!("{} bytes {}-way", self.bytes, self.ways)
        }
    }
}

/// How `gemm` computes float products on this machine.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Matmul {
    /// The kernel family `gemm` dispatches to: `x86-64 FMA`,
    /// `x86-64 scalar`, or the architecture's name.
    pub kernel: String,
    pub l1d: CacheLevel,
    pub l2: CacheLevel,
    pub l3: CacheLevel,
    /// The longest block of K a large float32 product sums before adding
    /// it to the result (known for the x86-64 FMA kernel only).
    pub k_block: Option<usize>,
}

/// What `RUN/machine.json` holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MachineRecord {
    /// The CPU's model name (`/proc/cpuinfo`), or the architecture.
    pub cpu: String,
    pub matmul: Matmul,
}

/// The x86-64 FMA float32 kernel's register tile in `gemm` 0.19 (two
/// 8-lane vectors by six columns), which with the L1 geometry decides the
/// K block.
const FMA_F32_MR: usize = 16;
const FMA_F32_NR: usize = 6;

impl MachineRecord {
    /// This machine, as this process's `gemm` sees it.
    pub fn here() -> Self {
        let info = *gemm_common::cache::CACHE_INFO;
        let level = |i: usize| CacheLevel {
            bytes: info[i].cache_bytes,
            ways: info[i].associativity,
            line_bytes: info[i].cache_line_bytes,
        };
        let (kernel, k_block) = kernel();
        Self {
            cpu: cpu_name(),
            matmul: Matmul {
                kernel,
                l1d: level(0),
                l2: level(1),
                l3: level(2),
                k_block,
            },
        }
    }

    /// The record of run directory `run`; `None` for runs from before it.
    pub fn read(run: &Path) -> Result<Option<Self>> {
        crate::samples_record::read_record(run, MACHINE_FILE)
    }

    /// Whether products on this machine and on `other` add in the same
    /// order: the same kernel and the same K block (or, where the block is
    /// not known, the same L1 data cache).
    pub fn rounds_like(&self, other: &MachineRecord) -> bool {
        let (a, b) = (&self.matmul, &other.matmul);
        a.kernel == b.kernel
            && match (a.k_block, b.k_block) {
                (Some(x), Some(y)) => x == y,
                _ => a.l1d == b.l1d,
            }
    }

    /// The note `--resume` prints when this machine (`self`) rounds
    /// otherwise than the one the run started on.
    pub fn resume_note(&self, started: &MachineRecord) -> Option<String> {
        if self.rounds_like(started) {
            return None;
        }
        let s = &started.matmul;
        Some(format!(
            "note: this run started on {} ({}), and this machine ({}) adds the terms of its \
             matrix products in another order, so the resumed steps round differently and the \
             run will not continue bit for bit as it would have there. To match it, resume \
             under tools/train/with_cache_geometry.sh {} {} {} -- calico train … (the caches \
             the run started with; docs/training.md, \"Reproducing a run on another CPU\")",
            started.cpu,
            s.describe(),
            self.matmul.describe(),
            s.l1d.script_arg(),
            s.l2.script_arg(),
            s.l3.script_arg(),
        ))
    }
}

impl Matmul {
    fn describe(&self) -> String {
        let block = match self.k_block {
            Some(k) => format!(", K blocks of {k}"),
            None => String::new(),
        };
        format!("{} kernel, L1d {}{block}", self.kernel, self.l1d.describe())
    }
}

/// The kernel `gemm` 0.19 picks for float32 (its AVX-512 kernels are behind
/// a feature candle does not enable) and, for the FMA kernel, its K block.
fn kernel() -> (String, Option<usize>) {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("fma") {
            let p = gemm_common::cache::kernel_params(
                4096,
                4096,
                1 << 20,
                FMA_F32_MR,
                FMA_F32_NR,
                std::mem::size_of::<f32>(),
            );
            return ("x86-64 FMA".into(), Some(p.kc));
        }
        ("x86-64 scalar".into(), None)
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (FMA_F32_MR, FMA_F32_NR);
        (std::env::consts::ARCH.to_string(), None)
    }
}

fn cpu_name() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|text| {
            text.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| std::env::consts::ARCH.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(l1d_bytes: usize, ways: usize, k_block: Option<usize>) -> MachineRecord {
        let level = |bytes, ways| CacheLevel {
            bytes,
            ways,
            line_bytes: 64,
        };
        MachineRecord {
            cpu: "test CPU".into(),
            matmul: Matmul {
                kernel: "x86-64 FMA".into(),
                l1d: level(l1d_bytes, ways),
                l2: level(2 << 20, 16),
                l3: level(480 << 20, 16),
                k_block,
            },
        }
    }

    #[test]
    fn the_k_block_follows_the_l1_geometry_as_gemm_computes_it() {
        // gemm_common::cache::kernel_params reads the process's own caches,
        // so this checks the formula's two known outcomes through `here`
        // only where the machine is one of them.
        let here = MachineRecord::here();
        assert!(here.matmul.l1d.bytes > 0 && here.matmul.l1d.ways > 0);
        if here.matmul.kernel == "x86-64 FMA" {
            let k = here
                .matmul
                .k_block
                .expect("the FMA kernel's block is known");
            // 64 sets of 64-byte lines: 8 ways give 512, 12 or 16 ways 1024.
            let sets = here.matmul.l1d.bytes / (here.matmul.l1d.line_bytes * here.matmul.l1d.ways);
            if sets == 64 {
                let want = if here.matmul.l1d.ways <= 8 { 512 } else { 1024 };
                assert_eq!(k, want, "{here:?}");
            }
        }
    }

    #[test]
    fn machines_with_the_same_block_round_alike() {
        let intel = record(48 << 10, 12, Some(1024));
        let zen5 = record(48 << 10, 12, Some(1024));
        let zen4 = record(32 << 10, 8, Some(512));
        assert!(intel.rounds_like(&zen5));
        assert!(intel.resume_note(&zen5).is_none());
        assert!(!intel.rounds_like(&zen4));
        let note = zen4.resume_note(&intel).expect("a note");
        assert!(
            note.contains("K blocks of 1024") && note.contains("K blocks of 512"),
            "{note}"
        );
        assert!(
            note.contains("with_cache_geometry.sh 48K/12 2048K/16 491520K/16 --"),
            "{note}"
        );
        // Without a known block the L1 geometry decides.
        let a = record(48 << 10, 12, None);
        let b = record(32 << 10, 8, None);
        assert!(!a.rounds_like(&b) && a.rounds_like(&a.clone()));
    }

    #[test]
    fn the_record_reads_back_and_a_damaged_one_is_named() {
        let dir = std::env::temp_dir().join(format!("calico-machine-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        assert!(MachineRecord::read(&dir).unwrap().is_none());
        let here = MachineRecord::here();
        std::fs::write(
            dir.join(MACHINE_FILE),
            serde_json::to_string_pretty(&here).unwrap(),
        )
        .unwrap();
        assert_eq!(MachineRecord::read(&dir).unwrap(), Some(here));
        std::fs::write(dir.join(MACHINE_FILE), "{\"cpu\": 3}").unwrap();
        let e = MachineRecord::read(&dir).unwrap_err().to_string();
        assert!(e.contains(MACHINE_FILE), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
