//! Crash-safe, resumable checkpoints of a training run.
//!
//! Layout of a run directory:
//!
//! ```text
//! RUN/checkpoints/step-00000123/trainable.safetensors   trainable tensors
//! RUN/checkpoints/step-00000123/optimizer.safetensors   optimizer state
//! RUN/checkpoints/step-00000123/state.json              TrainState
//! RUN/checkpoints/latest                                "step-00000123"
//! RUN/checkpoints/stage1/…, RUN/checkpoints/stage1b/…   the same inside stages 1 and 1b
//! ```
//!
//! A save writes everything into `RUN/checkpoints/.tmp-step-…-PID`, fsyncs
//! each file and the directory, renames the directory into place, fsyncs
//! `checkpoints/`, then replaces `latest` atomically (temp file + fsync +
//! rename). A crash or a full disk at any point therefore leaves the previous
//! checkpoint and `latest` intact; at worst `latest` names the previous
//! checkpoint while a newer complete one exists. Leftover `.tmp-*` entries
//! are removed by the next save. One process saves into a run at a time.

use std::collections::{BTreeMap, HashMap};
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use serde::{Deserialize, Serialize};

/// Sub-directory of the run directory holding the checkpoints.
pub const CHECKPOINTS_DIR: &str = "checkpoints";
/// File naming the newest checkpoint directory.
pub const LATEST_FILE: &str = "latest";
/// Trainable tensors of a checkpoint.
pub const TRAINABLE_FILE: &str = "trainable.safetensors";
/// Optimizer state of a checkpoint.
pub const OPTIMIZER_FILE: &str = "optimizer.safetensors";
/// [`TrainState`] of a checkpoint, as JSON.
pub const STATE_FILE: &str = "state.json";

const TMP_PREFIX: &str = ".tmp-";
const STEP_PREFIX: &str = "step-";

/// Errors of saving or loading checkpoints; each names the file or tensor.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    /// A filesystem operation failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or directory concerned.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// A safetensors file could not be parsed or written.
    #[error("{}: invalid safetensors: {msg}", path.display())]
    Safetensors {
        /// The file concerned.
        path: PathBuf,
        /// What went wrong.
        msg: String,
    },
    /// `state.json` could not be parsed or written.
    #[error("{}: invalid train state: {source}", path.display())]
    State {
        /// The file concerned.
        path: PathBuf,
        /// The JSON error.
        source: serde_json::Error,
    },
    /// A tensor cannot be stored (e.g. unsupported dtype).
    #[error("tensor {name}: {msg}")]
    Tensor {
        /// The tensor's name.
        name: String,
        /// What went wrong.
        msg: String,
    },
}

/// Result of checkpoint operations.
pub type Result<T> = std::result::Result<T, CheckpointError>;

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> CheckpointError + '_ {
    move |source| CheckpointError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Progress and configuration of a run, stored as `state.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainState {
    /// Training step (micro-batch or optimizer step, as the trainer counts).
    pub step: u64,
    /// Current epoch.
    pub epoch: u64,
    /// Number of samples consumed so far.
    pub samples_seen: u64,
    /// Seed of the run.
    pub seed: u64,
    /// Number of optimizer updates applied (`AdamW::steps`).
    pub optimizer_steps: u64,
    /// The run's full configuration.
    #[serde(default)]
    pub config: serde_json::Value,
    /// Anything else the trainer needs to resume (RNG state, data cursor…).
    #[serde(default)]
    pub extra: serde_json::Value,
}

/// A checkpoint read back by [`load_checkpoint`] (tensors on the CPU).
#[derive(Debug, Clone)]
pub struct LoadedCheckpoint {
    /// Trainable tensors by name.
    pub trainable: HashMap<String, Tensor>,
    /// Optimizer state tensors by name.
    pub optimizer: HashMap<String, Tensor>,
    /// Progress and configuration.
    pub state: TrainState,
}

/// Name of the checkpoint directory of `step`: `step-00000123`.
pub fn checkpoint_dir_name(step: u64) -> String {
    format!("{STEP_PREFIX}{step:08}")
}

/// The step of checkpoint directory `dir` (`…/step-00000123` → 123).
pub fn checkpoint_step(dir: &Path) -> Option<u64> {
    parse_dir_name(dir.file_name()?.to_str()?)
}

/// Step number of a checkpoint directory name (`step-<digits>`), if it is one.
fn parse_dir_name(name: &str) -> Option<u64> {
    let digits = name.strip_prefix(STEP_PREFIX)?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// Saves a checkpoint of `run` at `state.step` and returns its directory.
///
/// After the new checkpoint is in place and `latest` names it, the oldest
/// complete checkpoints beyond the newest `keep_last` (at least 1) are
/// deleted; the one just written is never deleted. Deletion is best-effort:
/// a failure there does not fail the save. Saving a step that already has a
/// checkpoint replaces it.
pub fn save_checkpoint(
    run: &Path,
    trainable: &HashMap<String, Tensor>,
    optimizer: &HashMap<String, Tensor>,
    state: &TrainState,
    keep_last: usize,
) -> Result<PathBuf> {
    save_checkpoint_in(
        &run.join(CHECKPOINTS_DIR),
        trainable,
        optimizer,
        state,
        keep_last,
    )
}

/// [`save_checkpoint`] into the checkpoints folder `ckdir` itself (its
/// `step-…` directories and `latest`), created with its parent if need be:
/// the pretraining stages keep theirs below `RUN/checkpoints/`.
pub fn save_checkpoint_in(
    ckdir: &Path,
    trainable: &HashMap<String, Tensor>,
    optimizer: &HashMap<String, Tensor>,
    state: &TrainState,
    keep_last: usize,
) -> Result<PathBuf> {
    save_with_hook(ckdir, trainable, optimizer, state, keep_last, &|_| Ok(()))
}

/// Points of a save at which tests inject failures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    TmpCreated,
    FileWritten(&'static str),
    BeforeDirRename,
    BeforeLatest,
    BeforeLatestRename,
    BeforePrune,
}

fn save_with_hook(
    ckdir: &Path,
    trainable: &HashMap<String, Tensor>,
    optimizer: &HashMap<String, Tensor>,
    state: &TrainState,
    keep_last: usize,
    hook: &dyn Fn(Stage) -> io::Result<()>,
) -> Result<PathBuf> {
    let name = checkpoint_dir_name(state.step);
    let final_dir = ckdir.join(&name);
    let trainable_path = final_dir.join(TRAINABLE_FILE);
    let optimizer_path = final_dir.join(OPTIMIZER_FILE);
    let state_path = final_dir.join(STATE_FILE);

    // Serialise everything before touching the disk.
    let trainable_bytes = serialize_tensors(trainable, &trainable_path)?;
    let optimizer_bytes = serialize_tensors(optimizer, &optimizer_path)?;
    let mut state_bytes =
        serde_json::to_vec_pretty(state).map_err(|source| CheckpointError::State {
            path: state_path.clone(),
            source,
        })?;
    state_bytes.push(b'\n');

    create_dir_durably(ckdir)?;
    remove_leftovers(ckdir);

    let pid = std::process::id();
    let tmp = ckdir.join(format!("{TMP_PREFIX}{name}-{pid}"));
    fs::create_dir(&tmp).map_err(io_err(&tmp))?;
    let written = (|| -> Result<()> {
        hook(Stage::TmpCreated).map_err(io_err(&tmp))?;
        for (file, bytes) in [
            (TRAINABLE_FILE, &trainable_bytes),
            (OPTIMIZER_FILE, &optimizer_bytes),
            (STATE_FILE, &state_bytes),
        ] {
            let path = tmp.join(file);
            write_synced(&path, bytes)?;
            hook(Stage::FileWritten(file)).map_err(io_err(&path))?;
        }
        sync_dir(&tmp)?;
        hook(Stage::BeforeDirRename).map_err(io_err(&final_dir))?;
        if final_dir.exists() {
            // Re-saving a step: move the old one aside first (a rename cannot
            // replace a non-empty directory).
            let aside = ckdir.join(format!("{TMP_PREFIX}replaced-{name}-{pid}"));
            fs::rename(&final_dir, &aside).map_err(io_err(&final_dir))?;
        }
        fs::rename(&tmp, &final_dir).map_err(io_err(&final_dir))?;
        sync_dir(ckdir)
    })();
    if let Err(e) = written {
        let _ = fs::remove_dir_all(&tmp);
        return Err(e);
    }

    hook(Stage::BeforeLatest).map_err(io_err(&ckdir.join(LATEST_FILE)))?;
    write_latest(ckdir, &name, hook)?;
    hook(Stage::BeforePrune).map_err(io_err(ckdir))?;
    remove_leftovers(ckdir);
    prune(ckdir, state.step, keep_last.max(1));
    Ok(final_dir)
}

/// Replaces `checkpoints/latest` atomically with `name`.
fn write_latest(ckdir: &Path, name: &str, hook: &dyn Fn(Stage) -> io::Result<()>) -> Result<()> {
    let latest = ckdir.join(LATEST_FILE);
    let tmp = ckdir.join(format!("{TMP_PREFIX}{LATEST_FILE}-{}", std::process::id()));
    let res = (|| -> Result<()> {
        write_synced(&tmp, format!("{name}\n").as_bytes())?;
        hook(Stage::BeforeLatestRename).map_err(io_err(&latest))?;
        fs::rename(&tmp, &latest).map_err(io_err(&latest))?;
        sync_dir(ckdir)
    })();
    if res.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    res
}

/// Deletes the oldest complete checkpoints so that `keep` remain, never
/// `current`. Each is renamed to a `.tmp-` name first so that a crash
/// mid-deletion never leaves a half-deleted `step-…` directory. Best-effort.
fn prune(ckdir: &Path, current: u64, keep: usize) {
    let Ok(mut all) = list_checkpoints_in(ckdir) else {
        return;
    };
    all.retain(|(s, _)| *s != current);
    // `current` counts towards `keep`.
    let excess = (all.len() + 1).saturating_sub(keep);
    for (step, dir) in all.into_iter().take(excess) {
        let doomed = ckdir.join(format!(
            "{TMP_PREFIX}delete-{}-{}",
            checkpoint_dir_name(step),
            std::process::id()
        ));
        if fs::rename(&dir, &doomed).is_ok() {
            let _ = fs::remove_dir_all(&doomed);
        }
    }
    let _ = sync_dir(ckdir);
}

/// Removes every `.tmp-*` entry of `checkpoints/` (leftovers of interrupted
/// saves). Best-effort: they never affect which checkpoint is loaded.
fn remove_leftovers(ckdir: &Path) {
    let Ok(entries) = fs::read_dir(ckdir) else {
        return;
    };
    for entry in entries.flatten() {
        if !entry.file_name().to_string_lossy().starts_with(TMP_PREFIX) {
            continue;
        }
        let path = entry.path();
        let _ = match entry.file_type() {
            Ok(t) if t.is_dir() => fs::remove_dir_all(&path),
            _ => fs::remove_file(&path),
        };
    }
}

/// Writes `bytes` to a new file at `path` and fsyncs it.
fn write_synced(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut f = File::create(path).map_err(io_err(path))?;
    f.write_all(bytes).map_err(io_err(path))?;
    f.sync_all().map_err(io_err(path))
}

/// Creates `dir` and any missing parents so that they survive a power
/// loss: a new directory's entry lives in its parent, so every parent whose
/// entries changed is fsynced, up to the first directory that already
/// existed. Does nothing when `dir` exists.
pub(crate) fn create_dir_durably(dir: &Path) -> Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    // A relative path's last ancestor is "", the current directory.
    let as_dir = |d: &Path| -> PathBuf {
        if d.as_os_str().is_empty() {
            PathBuf::from(".")
        } else {
            d.to_path_buf()
        }
    };
    let existed = dir
        .ancestors()
        .map(as_dir)
        .find(|d| d.is_dir())
        .unwrap_or_else(|| PathBuf::from("."));
    fs::create_dir_all(dir).map_err(io_err(dir))?;
    for parent in dir.ancestors().skip(1).map(as_dir) {
        sync_dir(&parent)?;
        if parent == existed {
            break;
        }
    }
    Ok(())
}

/// Fsyncs a directory so that renames/creations in it are durable.
fn sync_dir(dir: &Path) -> Result<()> {
    #[cfg(unix)]
    {
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io_err(dir))?;
    }
    #[cfg(not(unix))]
    let _ = dir;
    Ok(())
}

/// Serialises named tensors (moved to the CPU) into safetensors bytes.
fn serialize_tensors(tensors: &HashMap<String, Tensor>, path: &Path) -> Result<Vec<u8>> {
    let mut cpu = BTreeMap::new();
    for (name, t) in tensors {
        let supported = matches!(
            t.dtype(),
            DType::U8
                | DType::U32
                | DType::I16
                | DType::I32
                | DType::I64
                | DType::BF16
                | DType::F16
                | DType::F32
                | DType::F64
        );
        if !supported {
            return Err(CheckpointError::Tensor {
                name: name.clone(),
                msg: format!("dtype {:?} cannot be checkpointed", t.dtype()),
            });
        }
        let t = t
            .to_device(&Device::Cpu)
            .and_then(|t| t.contiguous())
            .map_err(|e| CheckpointError::Tensor {
                name: name.clone(),
                msg: e.to_string(),
            })?;
        cpu.insert(name.as_str(), t);
    }
    safetensors::serialize(cpu, None).map_err(|e| CheckpointError::Safetensors {
        path: path.to_path_buf(),
        msg: e.to_string(),
    })
}

/// Reads a safetensors file into CPU tensors.
fn load_tensors(path: &Path) -> Result<HashMap<String, Tensor>> {
    let bytes = fs::read(path).map_err(io_err(path))?;
    candle_core::safetensors::load_buffer(&bytes, &Device::Cpu).map_err(|e| {
        CheckpointError::Safetensors {
            path: path.to_path_buf(),
            msg: e.to_string(),
        }
    })
}

fn read_state(path: &Path) -> Result<TrainState> {
    let bytes = fs::read(path).map_err(io_err(path))?;
    serde_json::from_slice(&bytes).map_err(|source| CheckpointError::State {
        path: path.to_path_buf(),
        source,
    })
}

/// Loads the checkpoint in `dir` (tensors on the CPU). Errors name the file.
pub fn load_checkpoint(dir: &Path) -> Result<LoadedCheckpoint> {
    let state = read_state(&dir.join(STATE_FILE))?;
    let trainable = load_tensors(&dir.join(TRAINABLE_FILE))?;
    let optimizer = load_tensors(&dir.join(OPTIMIZER_FILE))?;
    Ok(LoadedCheckpoint {
        trainable,
        optimizer,
        state,
    })
}

/// Whether a safetensors file's header is readable and its length matches
/// the header (catches truncation without reading the data).
fn safetensors_intact(path: &Path) -> bool {
    let check = || -> io::Result<bool> {
        let mut f = File::open(path)?;
        let len = f.metadata()?.len();
        let mut n = [0u8; 8];
        f.read_exact(&mut n)?;
        let n = u64::from_le_bytes(n);
        if n > 100_000_000 || 8 + n > len {
            return Ok(false);
        }
        let mut header = vec![0u8; n as usize];
        f.read_exact(&mut header)?;
        let Ok(serde_json::Value::Object(map)) = serde_json::from_slice(&header) else {
            return Ok(false);
        };
        let mut end = 0u64;
        for (k, v) in &map {
            if k == "__metadata__" {
                continue;
            }
            match v["data_offsets"][1].as_u64() {
                Some(e) => end = end.max(e),
                None => return Ok(false),
            }
        }
        Ok(8 + n + end == len)
    };
    check().unwrap_or(false)
}

/// Whether `dir` holds a complete checkpoint: both safetensors files intact
/// (header consistent with the file length) and `state.json` parses.
pub fn is_complete(dir: &Path) -> bool {
    safetensors_intact(&dir.join(TRAINABLE_FILE))
        && safetensors_intact(&dir.join(OPTIMIZER_FILE))
        && read_state(&dir.join(STATE_FILE)).is_ok()
}

/// [`list_checkpoints`] of the checkpoints folder `ckdir` itself.
pub fn list_checkpoints_in(ckdir: &Path) -> Result<Vec<(u64, PathBuf)>> {
    let mut out = Vec::new();
    for entry in fs::read_dir(ckdir).map_err(io_err(ckdir))? {
        let entry = entry.map_err(io_err(ckdir))?;
        let Some(step) = entry.file_name().to_str().and_then(parse_dir_name) else {
            continue;
        };
        let path = entry.path();
        if path.is_dir() && is_complete(&path) {
            out.push((step, path));
        }
    }
    out.sort();
    Ok(out)
}

/// The `step-…` directories of `ckdir` that are not complete checkpoints
/// (damaged, or not what a save leaves), oldest first: never loaded, and
/// named when they are why a run cannot resume.
pub fn incomplete_checkpoints_in(ckdir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = fs::read_dir(ckdir) else {
        return Vec::new();
    };
    let mut out: Vec<(u64, PathBuf)> = entries
        .flatten()
        .filter_map(|e| {
            let step = e.file_name().to_str().and_then(parse_dir_name)?;
            let path = e.path();
            (path.is_dir() && !is_complete(&path)).then_some((step, path))
        })
        .collect();
    out.sort();
    out.into_iter().map(|(_, p)| p).collect()
}

/// The complete checkpoints of `run`, oldest first, as (step, directory).
pub fn list_checkpoints(run: &Path) -> Result<Vec<(u64, PathBuf)>> {
    let ckdir = run.join(CHECKPOINTS_DIR);
    if !ckdir.is_dir() {
        return Ok(Vec::new());
    }
    list_checkpoints_in(&ckdir)
}

/// The checkpoint to resume `run` from: the one `checkpoints/latest` names
/// if that is a complete checkpoint, otherwise the highest-numbered complete
/// checkpoint; `None` if there is none.
pub fn latest_checkpoint(run: &Path) -> Result<Option<PathBuf>> {
    latest_checkpoint_in(&run.join(CHECKPOINTS_DIR))
}

/// [`latest_checkpoint`] of the checkpoints folder `ckdir` itself.
pub fn latest_checkpoint_in(ckdir: &Path) -> Result<Option<PathBuf>> {
    if !ckdir.is_dir() {
        return Ok(None);
    }
    if let Ok(text) = fs::read_to_string(ckdir.join(LATEST_FILE)) {
        let name = text.trim();
        if parse_dir_name(name).is_some() {
            let dir = ckdir.join(name);
            if dir.is_dir() && is_complete(&dir) {
                return Ok(Some(dir));
            }
        }
    }
    Ok(list_checkpoints_in(ckdir)?.pop().map(|(_, dir)| dir))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A scratch run directory removed on drop.
    struct Scratch(PathBuf);

    impl Scratch {
        fn new(tag: &str) -> Self {
            static N: AtomicUsize = AtomicUsize::new(0);
            let dir = std::env::temp_dir().join(format!(
                "calico-ckpt-{tag}-{}-{}",
                std::process::id(),
                N.fetch_add(1, Ordering::SeqCst)
            ));
            let _ = fs::remove_dir_all(&dir);
            fs::create_dir_all(&dir).unwrap();
            Scratch(dir)
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn tensors(seed: f32) -> HashMap<String, Tensor> {
        let dev = Device::Cpu;
        let w: Vec<f32> = (0..12).map(|i| seed + i as f32 * 0.37).collect();
        let mut m = HashMap::new();
        m.insert(
            "lm.lora_a.weight".to_string(),
            Tensor::from_vec(w, (3, 4), &dev).unwrap(),
        );
        m.insert(
            "cam.bias".to_string(),
            Tensor::new(&[-0.0f32, f32::MIN_POSITIVE / 8.0, 1e-30, seed], &dev).unwrap(),
        );
        m
    }

    fn opt_tensors() -> HashMap<String, Tensor> {
        let dev = Device::Cpu;
        let mut m = HashMap::new();
        m.insert(
            "exp_avg.cam.bias".to_string(),
            Tensor::new(&[1e-9f32, -2.5, 3.0, 0.1], &dev).unwrap(),
        );
        m.insert(
            "step.cam.bias".to_string(),
            Tensor::new(3f64, &dev).unwrap(),
        );
        m.insert(
            "rng".to_string(),
            Tensor::new(&[i64::MAX, -7], &dev).unwrap(),
        );
        m
    }

    fn state(step: u64) -> TrainState {
        TrainState {
            step,
            epoch: step / 10,
            samples_seen: step * 16,
            seed: 42,
            optimizer_steps: step,
            config: serde_json::json!({"preset": "tiny", "lr": 4e-4}),
            extra: serde_json::json!({"rng": [1, 2, 3]}),
        }
    }

    fn save(run: &Path, step: u64, keep: usize) -> PathBuf {
        save_checkpoint(
            run,
            &tensors(step as f32),
            &opt_tensors(),
            &state(step),
            keep,
        )
        .unwrap()
    }

    fn bits(t: &Tensor) -> Vec<u8> {
        use safetensors::View;
        t.data().into_owned()
    }

    fn assert_same(a: &HashMap<String, Tensor>, b: &HashMap<String, Tensor>) {
        assert_eq!(a.len(), b.len());
        for (k, t) in a {
            let u = &b[k];
            assert_eq!(t.dtype(), u.dtype(), "{k}");
            assert_eq!(t.dims(), u.dims(), "{k}");
            assert_eq!(bits(t), bits(u), "{k}");
        }
    }

    fn latest_step(run: &Path) -> Option<u64> {
        latest_checkpoint(run)
            .unwrap()
            .map(|d| load_checkpoint(&d).unwrap().state.step)
    }

    fn tmp_entries(run: &Path) -> Vec<String> {
        fs::read_dir(run.join(CHECKPOINTS_DIR))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with(TMP_PREFIX))
            .collect()
    }

    #[test]
    fn round_trip_is_bit_exact() {
        let run = Scratch::new("roundtrip");
        assert_eq!(latest_checkpoint(&run.0).unwrap(), None);
        let dir = save(&run.0, 123, 3);
        assert_eq!(dir, run.0.join("checkpoints/step-00000123"));
        assert_eq!(
            fs::read_to_string(run.0.join("checkpoints/latest")).unwrap(),
            "step-00000123\n"
        );
        assert_eq!(latest_checkpoint(&run.0).unwrap(), Some(dir.clone()));
        let ck = load_checkpoint(&dir).unwrap();
        assert_same(&ck.trainable, &tensors(123.0));
        assert_same(&ck.optimizer, &opt_tensors());
        assert_eq!(ck.state, state(123));
        assert!(tmp_entries(&run.0).is_empty());
    }

    #[test]
    fn keeps_last_k() {
        let run = Scratch::new("keep");
        for s in 1..=5 {
            save(&run.0, s * 10, 2);
        }
        let steps: Vec<u64> = list_checkpoints(&run.0)
            .unwrap()
            .iter()
            .map(|c| c.0)
            .collect();
        assert_eq!(steps, vec![40, 50]);
        assert!(!run.0.join("checkpoints/step-00000010").exists());
        // keep_last 0 still keeps the one just written.
        save(&run.0, 60, 0);
        let steps: Vec<u64> = list_checkpoints(&run.0)
            .unwrap()
            .iter()
            .map(|c| c.0)
            .collect();
        assert_eq!(steps, vec![60]);
        assert_eq!(latest_step(&run.0), Some(60));
        assert!(tmp_entries(&run.0).is_empty());
    }

    #[test]
    fn leftover_tmp_and_corrupt_latest_are_tolerated() {
        let run = Scratch::new("leftover");
        save(&run.0, 1, 5);
        save(&run.0, 2, 5);
        let ckdir = run.0.join(CHECKPOINTS_DIR);
        // An interrupted save of step 3: partial files in a temp dir.
        let tmp = ckdir.join(".tmp-step-00000003-99999");
        fs::create_dir(&tmp).unwrap();
        fs::write(tmp.join(TRAINABLE_FILE), b"\x10\x00\x00").unwrap();
        fs::write(ckdir.join(".tmp-latest-99999"), b"step-000").unwrap();
        assert_eq!(latest_step(&run.0), Some(2));

        for garbage in [
            &b"garbage"[..],
            b"",
            b"step-00000007\n",
            b"../step-00000001",
            b"step-\xff\xfe",
        ] {
            fs::write(ckdir.join(LATEST_FILE), garbage).unwrap();
            assert_eq!(latest_step(&run.0), Some(2), "{garbage:?}");
        }
        fs::remove_file(ckdir.join(LATEST_FILE)).unwrap();
        assert_eq!(latest_step(&run.0), Some(2));
        // A valid `latest` is followed even if a newer checkpoint exists.
        fs::write(ckdir.join(LATEST_FILE), b"step-00000001\n").unwrap();
        assert_eq!(latest_step(&run.0), Some(1));

        save(&run.0, 3, 5);
        assert!(tmp_entries(&run.0).is_empty());
        assert_eq!(latest_step(&run.0), Some(3));
    }

    #[test]
    fn incomplete_checkpoint_dirs_are_skipped() {
        let run = Scratch::new("incomplete");
        save(&run.0, 1, 5);
        let ckdir = run.0.join(CHECKPOINTS_DIR);
        type Damage = fn(&Path);
        let cases: [(&str, Damage); 4] = [
            ("missing optimizer", |d| {
                fs::remove_file(d.join(OPTIMIZER_FILE)).unwrap()
            }),
            ("truncated trainable", |d| {
                let p = d.join(TRAINABLE_FILE);
                let b = fs::read(&p).unwrap();
                fs::write(&p, &b[..b.len() - 4]).unwrap();
            }),
            ("corrupt state", |d| {
                fs::write(d.join(STATE_FILE), b"{\"step\": 2").unwrap()
            }),
            ("missing state", |d| {
                fs::remove_file(d.join(STATE_FILE)).unwrap()
            }),
        ];
        for (what, damage) in cases {
            let dir = save(&run.0, 2, 5);
            damage(&dir);
            // `latest` names the damaged step 2: fall back to step 1.
            assert_eq!(latest_step(&run.0), Some(1), "{what}");
            fs::remove_file(ckdir.join(LATEST_FILE)).unwrap();
            assert_eq!(latest_step(&run.0), Some(1), "{what}");
            let listed: Vec<u64> = list_checkpoints(&run.0)
                .unwrap()
                .iter()
                .map(|c| c.0)
                .collect();
            assert_eq!(listed, vec![1], "{what}");
            fs::remove_dir_all(&dir).unwrap();
        }
    }

    #[test]
    fn load_errors_name_the_file() {
        let run = Scratch::new("loaderr");
        let dir = save(&run.0, 5, 5);
        fs::write(dir.join(OPTIMIZER_FILE), b"not a safetensors file").unwrap();
        let e = load_checkpoint(&dir).unwrap_err().to_string();
        assert!(e.contains(OPTIMIZER_FILE), "{e}");
        fs::remove_file(dir.join(TRAINABLE_FILE)).unwrap();
        let e = load_checkpoint(&dir).unwrap_err().to_string();
        assert!(e.contains(TRAINABLE_FILE), "{e}");
        fs::write(dir.join(STATE_FILE), b"[]").unwrap();
        let e = load_checkpoint(&dir).unwrap_err().to_string();
        assert!(e.contains(STATE_FILE), "{e}");
    }

    #[test]
    fn resaving_a_step_replaces_it() {
        let run = Scratch::new("resave");
        save(&run.0, 1, 5);
        save(&run.0, 2, 5);
        let mut st = state(2);
        st.samples_seen = 999;
        let dir = save_checkpoint(&run.0, &tensors(7.0), &opt_tensors(), &st, 5).unwrap();
        let ck = load_checkpoint(&dir).unwrap();
        assert_eq!(ck.state.samples_seen, 999);
        assert_same(&ck.trainable, &tensors(7.0));
        assert_eq!(list_checkpoints(&run.0).unwrap().len(), 2);
        assert!(tmp_entries(&run.0).is_empty());
    }

    /// A failure injected at each stage of a save (what ENOSPC or an I/O
    /// error would do) leaves a loadable checkpoint: the previous one until
    /// `latest` has been replaced, the new one afterwards.
    #[test]
    fn failed_save_keeps_previous_checkpoint() {
        let stages = [
            (Stage::TmpCreated, 1),
            (Stage::FileWritten(TRAINABLE_FILE), 1),
            (Stage::FileWritten(OPTIMIZER_FILE), 1),
            (Stage::FileWritten(STATE_FILE), 1),
            (Stage::BeforeDirRename, 1),
            (Stage::BeforeLatest, 1),
            (Stage::BeforeLatestRename, 1),
            (Stage::BeforePrune, 2),
        ];
        for (stage, expect) in stages {
            let run = Scratch::new("fail");
            save(&run.0, 1, 1);
            let hook = |s: Stage| {
                if s == stage {
                    Err(io::Error::other("injected failure (disk full)"))
                } else {
                    Ok(())
                }
            };
            let res = save_with_hook(
                &run.0.join(CHECKPOINTS_DIR),
                &tensors(2.0),
                &opt_tensors(),
                &state(2),
                1,
                &hook,
            );
            let e = res.unwrap_err().to_string();
            assert!(e.contains("injected"), "{stage:?}: {e}");
            assert_eq!(latest_step(&run.0), Some(expect), "{stage:?}");
            // The previous checkpoint is intact (keep_last 1 pruning only
            // happens after a fully successful save).
            let first = load_checkpoint(&run.0.join("checkpoints/step-00000001")).unwrap();
            assert_same(&first.trainable, &tensors(1.0));
            assert_eq!(first.state, state(1));
            // The next save succeeds and cleans up.
            save(&run.0, 3, 1);
            assert_eq!(latest_step(&run.0), Some(3), "{stage:?}");
            assert!(tmp_entries(&run.0).is_empty(), "{stage:?}");
            assert_eq!(list_checkpoints(&run.0).unwrap().len(), 1);
        }
    }

    /// A save into a read-only `checkpoints/` fails without harming the
    /// previous checkpoint. Skipped when permissions are not enforced (root).
    #[cfg(unix)]
    #[test]
    fn save_into_read_only_dir_fails_cleanly() {
        use std::os::unix::fs::PermissionsExt;
        let run = Scratch::new("readonly");
        save(&run.0, 1, 3);
        let ckdir = run.0.join(CHECKPOINTS_DIR);
        fs::set_permissions(&ckdir, fs::Permissions::from_mode(0o555)).unwrap();
        let probe = ckdir.join("probe");
        if fs::write(&probe, b"x").is_ok() {
            let _ = fs::remove_file(&probe);
            fs::set_permissions(&ckdir, fs::Permissions::from_mode(0o755)).unwrap();
            eprintln!("skipping: permissions are not enforced (running as root?)");
            return;
        }
        let res = save_checkpoint(&run.0, &tensors(2.0), &opt_tensors(), &state(2), 3);
        fs::set_permissions(&ckdir, fs::Permissions::from_mode(0o755)).unwrap();
        assert!(res.is_err());
        assert_eq!(latest_step(&run.0), Some(1));
        save(&run.0, 2, 3);
        assert_eq!(latest_step(&run.0), Some(2));
    }

    #[test]
    fn durable_dirs_are_created_with_their_parents_and_existing_ones_kept() {
        let run = Scratch::new("durable");
        let deep = run.0.join("a").join("b").join("c");
        create_dir_durably(&deep).unwrap();
        assert!(deep.is_dir());
        fs::write(deep.join("kept"), b"x").unwrap();
        create_dir_durably(&deep).unwrap();
        assert!(deep.join("kept").is_file());
        // Under a file: the error names the directory asked for.
        let file = run.0.join("file");
        fs::write(&file, b"x").unwrap();
        let err = create_dir_durably(&file.join("d")).unwrap_err().to_string();
        assert!(err.contains(&*file.join("d").to_string_lossy()), "{err}");
    }

    #[test]
    fn dir_names() {
        assert_eq!(checkpoint_dir_name(123), "step-00000123");
        assert_eq!(checkpoint_dir_name(1_234_567_890), "step-1234567890");
        assert_eq!(parse_dir_name("step-00000123"), Some(123));
        assert_eq!(parse_dir_name("step-1234567890"), Some(1_234_567_890));
        for bad in [
            "step-",
            "step-12a",
            "step--1",
            "step-+1",
            ".tmp-step-1",
            "latest",
        ] {
            assert_eq!(parse_dir_name(bad), None, "{bad}");
        }
    }
}
