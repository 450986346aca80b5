//! A content-addressed cache of the frozen encoders' outputs, so training
//! with the paper's trainable set (EVA, DINOv2, Q-Former and the SAM image
//! encoder frozen) computes each image's features once, not once per
//! epoch.
//!
//! The key hashes the model config, the encoders' outputs on a fixed probe
//! image (standing for their weights) and the bytes of the image's three
//! views, so a changed image, view, encoder config or encoder weights never
//! hits a stale entry.
//!
//! Only valid while those encoders are frozen: a model whose encoders are
//! trained (`TrainableSet::All`) must not use one.
//!
//! # Where entries live
//!
//! With a directory ([`FeatureCache::on_disk`]) every entry is a file
//! `<key>.safetensors`, written atomically and shared between runs, also
//! runs going on at the same time. The disk (and the OS page cache) is then
//! the cache: entries are not also kept in memory, which at the paper's size
//! would take ~6.8 MB per image for the whole run. Only an entry whose file
//! could not be written (a read-only or full directory, …) is kept in
//! memory instead, for the rest of the process, so it is never lost; such
//! failures are counted and the first one kept
//! ([`FeatureCache::failed_writes`], [`FeatureCache::first_write_error`]) so
//! the caller can warn once — the cache itself prints nothing. A cache
//! without a directory ([`FeatureCache::in_memory`]) keeps every entry in
//! memory. [`FeatureCache::in_memory_len`] tells how many entries memory
//! holds.
//!
//! # Checking entries read back
//!
//! A file is used only when it holds exactly the expected fields
//! (`x_global`, `sam`, and `x_semantic` / `qformer` exactly when the model
//! makes them), each with the expected shape and dtype, and only finite
//! values. The expected layout is that of the model's features on the probe
//! image ([`FeatureCache::expect_layout`], which
//! [`crate::calico::Calico::set_feature_cache`] calls); a cache given none
//! takes the layout of the first entry it stores, and until then checks
//! only that `x_global` and `sam` are there with batch size 1. A file that
//! does not parse, does not match or holds NaN or infinite values counts as
//! damaged ([`FeatureCache::damaged`]): it is a miss, so the features are
//! recomputed and the file rewritten.
//!
//! # Leftover temporary files
//!
//! A file is written as `.<key>.safetensors.tmp<pid>-<n>` and then renamed
//! into place (`weights::write_atomic`), so a process killed mid-write
//! leaves its temporary file behind. Since other runs may be writing to the
//! same directory at the same time, [`FeatureCache::on_disk`] removes only
//! files of exactly that pattern whose modification time is more than
//! [`STALE_TEMP_AGE`] (10 minutes) in the past — writing one entry takes
//! far less — and keeps younger ones, which may belong to a writer still at
//! work.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use candle_core::{DType, Device, Result, Tensor};

use super::vision::ImageInput;

/// The frozen encoders' outputs for one image (batch dimension 1).
#[derive(Debug, Clone)]
pub struct FrozenFeatures {
    /// X_global = ln_vision(EVA(x)), `(1, 1 + N, D_g)`.
    pub x_global: Tensor,
    /// DINOv2 patch tokens, `(1, N_s, D_s)`, when the CEM runs.
    pub x_semantic: Option<Tensor>,
    /// The first Q-Former pass 𝒬(q, X_global), `(1, Q, D_q)`.
    pub qformer: Option<Tensor>,
    /// X_ground, SAM image embeddings `(1, C, g, g)`.
    pub sam: Tensor,
}

impl FrozenFeatures {
    /// Row `i` of batched features (batch dimension kept, size 1).
    pub fn row(&self, i: usize) -> Result<Self> {
        let r = |t: &Tensor| t.narrow(0, i, 1);
        Ok(Self {
            x_global: r(&self.x_global)?,
            x_semantic: self.x_semantic.as_ref().map(r).transpose()?,
            qformer: self.qformer.as_ref().map(r).transpose()?,
            sam: r(&self.sam)?,
        })
    }

    /// Concatenates rows along the batch dimension. Errors when some rows
    /// have `x_semantic` (or `qformer`) and others do not.
    pub fn stack(rows: &[Self]) -> Result<Self> {
        if rows.is_empty() {
            candle_core::bail!("cached features: no rows to stack");
        }
        let cat = |what: &str, f: &dyn Fn(&Self) -> Option<&Tensor>| -> Result<Option<Tensor>> {
            let present: Vec<Tensor> = rows.iter().filter_map(|r| f(r).cloned()).collect();
            if present.is_empty() {
                return Ok(None);
            }
            if present.len() != rows.len() {
                candle_core::bail!(
                    "cached features: {} of {} rows have {what}, the others do not",
                    present.len(),
                    rows.len()
                );
            }
            Ok(Some(Tensor::cat(&present, 0)?))
        };
        let need = |t: Option<Tensor>, what: &str| {
            t.ok_or_else(|| candle_core::Error::Msg(format!("cached features: no {what}")))
        };
        Ok(Self {
            x_global: need(cat("x_global", &|r| Some(&r.x_global))?, "x_global")?,
            x_semantic: cat("x_semantic", &|r| r.x_semantic.as_ref())?,
            qformer: cat("qformer", &|r| r.qformer.as_ref())?,
            sam: need(cat("sam", &|r| Some(&r.sam))?, "sam")?,
        })
    }

    /// The fields present, by their names in a cache file (sorted).
    fn fields(&self) -> Vec<(&'static str, &Tensor)> {
        let mut v = vec![("sam", &self.sam), ("x_global", &self.x_global)];
        if let Some(q) = &self.qformer {
            v.push(("qformer", q));
        }
        if let Some(s) = &self.x_semantic {
            v.push(("x_semantic", s));
        }
        v.sort_by_key(|(n, _)| *n);
        v
    }

    /// The same features with every tensor in storage of its own (a row
    /// of a batch otherwise keeps the whole batch alive).
    fn compact(&self) -> Self {
        let own = |t: &Tensor| t.copy().unwrap_or_else(|_| t.clone());
        Self {
            x_global: own(&self.x_global),
            x_semantic: self.x_semantic.as_ref().map(own),
            qformer: self.qformer.as_ref().map(own),
            sam: own(&self.sam),
        }
    }
}

/// The fields of an entry, sorted by name, with their shapes and dtypes.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Layout(Vec<(&'static str, Vec<usize>, DType)>);

impl Layout {
    fn of(f: &FrozenFeatures) -> Self {
        Self(
            f.fields()
                .into_iter()
                .map(|(n, t)| (n, t.dims().to_vec(), t.dtype()))
                .collect(),
        )
    }

    fn matches(&self, t: &HashMap<String, Tensor>) -> bool {
        t.len() == self.0.len()
            && self.0.iter().all(|(name, shape, dtype)| {
                t.get(*name)
                    .is_some_and(|x| x.dims() == shape.as_slice() && x.dtype() == *dtype)
            })
    }
}

/// Whether every value of `t` is finite (integer tensors always are).
fn all_finite(t: &Tensor) -> Result<bool> {
    Ok(match t.dtype() {
        DType::F64 => t
            .flatten_all()?
            .to_vec1::<f64>()?
            .iter()
            .all(|x| x.is_finite()),
        d if d.is_float() => t
            .to_dtype(DType::F32)?
            .flatten_all()?
            .to_vec1::<f32>()?
            .iter()
            .all(|x| x.is_finite()),
        _ => true,
    })
}

/// How old a leftover temporary file must be before
/// [`FeatureCache::on_disk`] removes it (see the module docs).
pub const STALE_TEMP_AGE: Duration = Duration::from_secs(10 * 60);

/// Whether `name` is a temporary file of an entry,
/// `.<32 hex digits>.safetensors.tmp<pid>-<n>` (see
/// `weights::write_atomic`).
fn is_entry_temp_name(name: &str) -> bool {
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    name.strip_prefix('.')
        .and_then(|rest| rest.split_once(".safetensors.tmp"))
        .and_then(|(key, tail)| Some((key, tail.split_once('-')?)))
        .is_some_and(|(key, (pid, n))| {
            key.len() == 32
                && key.bytes().all(|b| b.is_ascii_hexdigit())
                && digits(pid)
                && digits(n)
        })
}

/// Removes the entries' temporary files in `dir` last modified more than
/// `max_age` ago; returns how many it removed.
fn remove_stale_temp_files(dir: &Path, max_age: Duration) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    let now = SystemTime::now();
    let mut removed = 0;
    for e in entries.flatten() {
        if !e.file_name().to_str().is_some_and(is_entry_temp_name) {
            continue;
        }
        // Not following links: only plain files are removed.
        let Ok(meta) = e.metadata() else { continue };
        let stale = meta.is_file()
            && meta
                .modified()
                .ok()
                .and_then(|m| now.duration_since(m).ok())
                .is_some_and(|age| age > max_age);
        if stale && std::fs::remove_file(e.path()).is_ok() {
            removed += 1;
        }
    }
    removed
}

/// See the module docs.
#[derive(Debug, Default)]
pub struct FeatureCache {
    dir: Option<PathBuf>,
    /// Every entry without a directory; with one, only those whose file
    /// could not be written.
    mem: Mutex<HashMap<String, FrozenFeatures>>,
    /// The layouts an entry read from disk may have (see the module docs).
    layouts: Mutex<Vec<Layout>>,
    hits: AtomicUsize,
    misses: AtomicUsize,
    damaged: AtomicUsize,
    failed_writes: AtomicUsize,
    first_write_error: Mutex<Option<String>>,
    removed_temp_files: usize,
}

/// The fixed image the encoders' weights are fingerprinted on: 64 × 48
/// pixels of smooth colour ramps crossed by a checkerboard, so every
/// channel and every region of the views carries signal.
pub(crate) fn probe_image() -> Result<crate::preprocess::RgbImage> {
    let (w, h) = (64usize, 48usize);
    let mut data = Vec::with_capacity(w * h * 3);
    for y in 0..h {
        for x in 0..w {
            let check = if (x / 8 + y / 8) % 2 == 0 { 60 } else { 0 };
            data.push((x * 3 + check) as u8);
            data.push((y * 4 + check) as u8);
            data.push(((x + y) * 2) as u8);
        }
    }
    crate::preprocess::RgbImage::new(w, h, data)
}

fn fnv(mut h: u64, bytes: &[u8]) -> u64 {
    for &b in bytes {
        h ^= b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

fn tensor_bytes(t: &Tensor) -> Result<Vec<u8>> {
    let v: Vec<f32> = t
        .to_dtype(candle_core::DType::F32)?
        .flatten_all()?
        .to_vec1()?;
    let mut out = Vec::with_capacity(v.len() * 4 + 16);
    for d in t.dims() {
        out.extend_from_slice(&(*d as u64).to_le_bytes());
    }
    for x in v {
        out.extend_from_slice(&x.to_le_bytes());
    }
    Ok(out)
}

/// Two FNV-1a hashes (differently seeded) of `prefix` and then the tensors'
/// shapes and values, as 32 hex digits.
fn hash_tensors<'t>(prefix: &str, tensors: impl IntoIterator<Item = &'t Tensor>) -> Result<String> {
    let mut a = fnv(0xcbf2_9ce4_8422_2325, prefix.as_bytes());
    let mut b = fnv(0x8422_2325_cbf2_9ce4, prefix.as_bytes());
    for t in tensors {
        let bytes = tensor_bytes(t)?;
        a = fnv(a, &bytes);
        b = fnv(b ^ 0x5bd1_e995, &bytes);
    }
    Ok(format!("{a:016x}{b:016x}"))
}

/// Locks `m`, also after a panic elsewhere (the data stays usable: every
/// update is a single insert or remove).
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl FeatureCache {
    /// A memory-only cache.
    pub fn in_memory() -> Self {
        Self::default()
    }

    /// A cache that reads and writes `dir` (created when missing). Removes
    /// the entries' temporary files there older than [`STALE_TEMP_AGE`]
    /// (see the module docs).
    pub fn on_disk(dir: impl AsRef<Path>) -> std::io::Result<Self> {
        let dir = dir.as_ref();
        std::fs::create_dir_all(dir)?;
        Ok(Self {
            dir: Some(dir.to_path_buf()),
            removed_temp_files: remove_stale_temp_files(dir, STALE_TEMP_AGE),
            ..Self::default()
        })
    }

    /// `(hits, misses)` so far: features served by [`FeatureCache::get`]
    /// (from memory or disk), and features computed and stored by
    /// [`FeatureCache::put`].
    pub fn stats(&self) -> (usize, usize) {
        (
            self.hits.load(Ordering::Relaxed),
            self.misses.load(Ordering::Relaxed),
        )
    }

    /// How many files read so far were damaged (unreadable, unparsable, of
    /// another layout or with non-finite values) and so treated as misses.
    pub fn damaged(&self) -> usize {
        self.damaged.load(Ordering::Relaxed)
    }

    /// How many entries held in memory now: all of them without a
    /// directory; with one, those whose file could not be written.
    pub fn in_memory_len(&self) -> usize {
        lock(&self.mem).len()
    }

    /// How many entries' files could not be written so far (each is kept
    /// in memory instead). Nonzero means the directory is read-only, full
    /// or otherwise failing, and memory grows with every such entry; see
    /// [`FeatureCache::first_write_error`] for why.
    pub fn failed_writes(&self) -> usize {
        self.failed_writes.load(Ordering::Relaxed)
    }

    /// The first failed write's error, with the file's path, for a
    /// one-time warning; `None` while every write succeeded.
    pub fn first_write_error(&self) -> Option<String> {
        lock(&self.first_write_error).clone()
    }

    /// How many stale temporary files [`FeatureCache::on_disk`] removed.
    pub fn removed_temp_files(&self) -> usize {
        self.removed_temp_files
    }

    /// Declares the layout entries must have (the fields present, each
    /// tensor's shape and dtype) as that of `f`, one image's features
    /// (batch dimension 1): files read back that differ are treated as
    /// damaged. [`crate::calico::Calico::set_feature_cache`] calls it with
    /// the features of the probe image. A cache shared by models of
    /// different layouts accepts an entry of any of them.
    pub fn expect_layout(&self, f: &FrozenFeatures) {
        let layout = Layout::of(f);
        let mut layouts = lock(&self.layouts);
        if !layouts.contains(&layout) {
            layouts.push(layout);
        }
    }

    /// A digest of features (for [`crate::calico::Calico::set_feature_cache`]'s
    /// fingerprint of the encoders' weights), 32 hex digits.
    pub fn digest(f: &FrozenFeatures) -> Result<String> {
        let parts = [
            Some(&f.x_global),
            f.x_semantic.as_ref(),
            f.qformer.as_ref(),
            Some(&f.sam),
        ];
        hash_tensors("", parts.into_iter().flatten())
    }

    /// The key of an image under a model fingerprint.
    pub fn key(config_fingerprint: &str, image: &ImageInput) -> Result<String> {
        hash_tensors(config_fingerprint, [&image.clip, &image.dino, &image.sam])
    }

    fn path(dir: &Path, key: &str) -> PathBuf {
        dir.join(format!("{key}.safetensors"))
    }

    /// The cached features for `key`, from memory or disk; `None` when
    /// missing or damaged (see the module docs).
    pub fn get(&self, key: &str, device: &Device) -> Option<FrozenFeatures> {
        if let Some(f) = lock(&self.mem).get(key).cloned() {
            self.hits.fetch_add(1, Ordering::Relaxed);
            return Some(f);
        }
        let path = Self::path(self.dir.as_ref()?, key);
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
            Err(_) => {
                self.damaged.fetch_add(1, Ordering::Relaxed);
                return None;
            }
        };
        match self.read_entry(&bytes, device) {
            Some(f) => {
                self.hits.fetch_add(1, Ordering::Relaxed);
                Some(f)
            }
            None => {
                self.damaged.fetch_add(1, Ordering::Relaxed);
                None
            }
        }
    }

    /// The features in a file's bytes, when they pass the checks of the
    /// module docs.
    fn read_entry(&self, bytes: &[u8], device: &Device) -> Option<FrozenFeatures> {
        let t = candle_core::safetensors::load_buffer(bytes, &Device::Cpu).ok()?;
        let layouts = lock(&self.layouts).clone();
        let fits = if layouts.is_empty() {
            let known = ["x_global", "x_semantic", "qformer", "sam"];
            t.keys().all(|k| known.contains(&k.as_str()))
                && ["x_global", "sam"].iter().all(|k| t.contains_key(*k))
                && t.values().all(|x| x.dims().first() == Some(&1))
        } else {
            layouts.iter().any(|l| l.matches(&t))
        };
        if !fits || !t.values().all(|x| all_finite(x).unwrap_or(false)) {
            return None;
        }
        let on = |name: &str| t.get(name).map(|x| x.to_device(device)).transpose();
        (|| -> Result<Option<FrozenFeatures>> {
            let (Some(x_global), Some(sam)) = (on("x_global")?, on("sam")?) else {
                return Ok(None);
            };
            Ok(Some(FrozenFeatures {
                x_global,
                x_semantic: on("x_semantic")?,
                qformer: on("qformer")?,
                sam,
            }))
        })()
        .ok()
        .flatten()
    }

    /// Stores features computed for `key`: in its file with a directory
    /// (in memory when the write fails, counted in
    /// [`FeatureCache::failed_writes`]), in memory without one. The first
    /// entry stored sets the expected layout when none was declared
    /// ([`FeatureCache::expect_layout`]).
    pub fn put(&self, key: &str, f: &FrozenFeatures) {
        self.misses.fetch_add(1, Ordering::Relaxed);
        {
            let mut layouts = lock(&self.layouts);
            if layouts.is_empty() {
                layouts.push(Layout::of(f));
            }
        }
        let Some(dir) = &self.dir else {
            lock(&self.mem).insert(key.to_string(), f.compact());
            return;
        };
        let path = Self::path(dir, key);
        let map: HashMap<String, Tensor> = f
            .fields()
            .into_iter()
            .map(|(n, t)| (n.to_string(), t.clone()))
            .collect();
        let written = super::weights::safetensors_bytes(&map)
            .map_err(|e| e.to_string())
            .and_then(|bytes| {
                super::weights::write_atomic(&path, &bytes).map_err(|e| e.to_string())
            });
        match written {
            Ok(()) => {
                lock(&self.mem).remove(key);
            }
            Err(e) => {
                lock(&self.mem).insert(key.to_string(), f.compact());
                self.failed_writes.fetch_add(1, Ordering::Relaxed);
                lock(&self.first_write_error)
                    .get_or_insert_with(|| format!("writing {}: {e}", path.display()));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fresh_dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("calico-cache-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        let _ = std::fs::remove_file(&d);
        d
    }

    fn ramp(shape: &[usize], start: f32) -> Tensor {
        let n: usize = shape.iter().product();
        let v: Vec<f32> = (0..n).map(|i| start + i as f32 * 0.01).collect();
        Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
    }

    fn features(seed: f32, semantic: bool) -> FrozenFeatures {
        FrozenFeatures {
            x_global: ramp(&[1, 5, 8], seed),
            x_semantic: semantic.then(|| ramp(&[1, 4, 6], seed + 1.0)),
            qformer: Some(ramp(&[1, 3, 8], seed + 2.0)),
            sam: ramp(&[1, 4, 2, 2], seed + 3.0),
        }
    }

    fn key(i: u64) -> String {
        format!("{i:032x}")
    }

    fn values(t: &Tensor) -> Vec<f32> {
        t.flatten_all().unwrap().to_vec1().unwrap()
    }

    fn assert_same(a: &FrozenFeatures, b: &FrozenFeatures) {
        let (fa, fb) = (a.fields(), b.fields());
        assert_eq!(
            fa.iter().map(|(n, t)| (*n, t.dims())).collect::<Vec<_>>(),
            fb.iter().map(|(n, t)| (*n, t.dims())).collect::<Vec<_>>()
        );
        for ((_, x), (_, y)) in fa.iter().zip(&fb) {
            assert_eq!(values(x), values(y));
        }
    }

    fn file_bytes(tensors: Vec<(&str, Tensor)>) -> Vec<u8> {
        let map: HashMap<String, Tensor> = tensors
            .into_iter()
            .map(|(n, t)| (n.to_string(), t))
            .collect();
        super::super::weights::safetensors_bytes(&map).unwrap()
    }

    fn entry_bytes(f: &FrozenFeatures) -> Vec<u8> {
        file_bytes(
            f.fields()
                .into_iter()
                .map(|(n, t)| (n, t.clone()))
                .collect(),
        )
    }

    #[test]
    fn a_cache_with_a_directory_keeps_no_entries_in_memory() {
        let d = fresh_dir("memory");
        let cache = FeatureCache::on_disk(&d).unwrap();
        for i in 0..3 {
            cache.put(&key(i), &features(i as f32, true));
        }
        assert_eq!(cache.in_memory_len(), 0);
        for i in 0..3 {
            let f = cache.get(&key(i), &Device::Cpu).unwrap();
            assert_same(&f, &features(i as f32, true));
        }
        assert_eq!(cache.in_memory_len(), 0, "reads are not kept either");
        assert!(cache.get(&key(7), &Device::Cpu).is_none());
        assert_eq!(cache.stats(), (3, 3));
        assert_eq!(cache.damaged(), 0);
        assert_eq!(cache.failed_writes(), 0);
        assert_eq!(cache.first_write_error(), None);
        // Without a directory, memory is the cache.
        let mem = FeatureCache::in_memory();
        mem.put(&key(0), &features(0.0, true));
        assert_eq!(mem.in_memory_len(), 1);
        assert_same(
            &mem.get(&key(0), &Device::Cpu).unwrap(),
            &features(0.0, true),
        );
        assert_eq!(mem.stats(), (1, 1));
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn damaged_entries_on_disk_are_recomputed_and_rewritten() {
        let good = features(0.0, true);
        let mut nan = values(&good.sam);
        nan[5] = f32::NAN;
        let mut inf = values(&good.x_global);
        inf[0] = f32::INFINITY;
        let with = |name: &'static str, t: Tensor| {
            let mut v: Vec<(&str, Tensor)> = good
                .fields()
                .into_iter()
                .filter(|(n, _)| *n != name)
                .map(|(n, t)| (n, t.clone()))
                .collect();
            v.push((name, t));
            file_bytes(v)
        };
        let cases: Vec<(&str, Vec<u8>)> = vec![
            ("not safetensors", b"not a safetensors file".to_vec()),
            (
                "x_global with fewer tokens",
                with("x_global", good.x_global.narrow(1, 0, 4).unwrap()),
            ),
            (
                "x_semantic missing",
                entry_bytes(&FrozenFeatures {
                    x_semantic: None,
                    ..good.clone()
                }),
            ),
            ("an extra field", with("junk", ramp(&[1, 2], 0.0))),
            (
                "sam in f16",
                with("sam", good.sam.to_dtype(DType::F16).unwrap()),
            ),
            (
                "a NaN in sam",
                with(
                    "sam",
                    Tensor::from_vec(nan, (1, 4, 2, 2), &Device::Cpu).unwrap(),
                ),
            ),
            (
                "an infinity in x_global",
                with(
                    "x_global",
                    Tensor::from_vec(inf, (1, 5, 8), &Device::Cpu).unwrap(),
                ),
            ),
        ];
        for (i, (what, bytes)) in cases.into_iter().enumerate() {
            let d = fresh_dir(&format!("damaged{i}"));
            let cache = FeatureCache::on_disk(&d).unwrap();
            cache.expect_layout(&good);
            let k = key(1);
            std::fs::write(d.join(format!("{k}.safetensors")), bytes).unwrap();
            assert!(cache.get(&k, &Device::Cpu).is_none(), "{what} was used");
            assert_eq!(cache.damaged(), 1, "{what}");
            // The caller recomputes and stores; the file is rewritten.
            cache.put(&k, &good);
            assert_eq!(cache.in_memory_len(), 0);
            let again = FeatureCache::on_disk(&d).unwrap();
            again.expect_layout(&good);
            assert_same(&again.get(&k, &Device::Cpu).unwrap(), &good);
            assert_eq!((again.stats(), again.damaged()), ((1, 0), 0), "{what}");
            std::fs::remove_dir_all(&d).unwrap();
        }
    }

    #[test]
    fn without_a_declared_layout_the_first_entry_stored_sets_it() {
        let d = fresh_dir("first-layout");
        let cache = FeatureCache::on_disk(&d).unwrap();
        let good = features(0.0, true);
        let no_sam = file_bytes(vec![("x_global", good.x_global.clone())]);
        std::fs::write(d.join(format!("{}.safetensors", key(1))), no_sam).unwrap();
        assert!(cache.get(&key(1), &Device::Cpu).is_none());
        cache.put(&key(0), &good);
        let no_semantic = entry_bytes(&FrozenFeatures {
            x_semantic: None,
            ..good.clone()
        });
        std::fs::write(d.join(format!("{}.safetensors", key(2))), no_semantic).unwrap();
        assert!(cache.get(&key(2), &Device::Cpu).is_none());
        assert!(cache.get(&key(0), &Device::Cpu).is_some());
        assert_eq!((cache.stats(), cache.damaged()), ((1, 1), 2));
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn stack_refuses_rows_with_and_without_a_field() {
        let (a, b) = (features(0.0, true), features(1.0, false));
        let e = FrozenFeatures::stack(&[a.clone(), b.clone()])
            .unwrap_err()
            .to_string();
        assert!(e.contains("x_semantic"), "{e}");
        let mut c = a.clone();
        c.qformer = None;
        let e = FrozenFeatures::stack(&[c, a.clone()])
            .unwrap_err()
            .to_string();
        assert!(e.contains("qformer"), "{e}");
        let both = FrozenFeatures::stack(&[a.clone(), a]).unwrap();
        assert_eq!(both.x_semantic.unwrap().dims(), [2, 4, 6]);
        let neither = FrozenFeatures::stack(&[b.clone(), b]).unwrap();
        assert!(neither.x_semantic.is_none());
        assert_eq!(neither.sam.dims(), [2, 4, 2, 2]);
    }

    #[test]
    fn failed_writes_are_reported_and_kept_in_memory() {
        let d = fresh_dir("unwritable");
        let cache = FeatureCache::on_disk(&d).unwrap();
        // A file where the directory was: every write fails (even as root,
        // which a read-only directory would not stop).
        std::fs::remove_dir_all(&d).unwrap();
        std::fs::write(&d, b"in the way").unwrap();
        let f = features(0.0, true);
        cache.put(&key(0), &f);
        cache.put(&key(1), &f);
        assert_eq!(cache.failed_writes(), 2);
        let e = cache.first_write_error().unwrap();
        assert!(e.contains(&key(0)), "{e}");
        assert_eq!(cache.in_memory_len(), 2, "kept in memory");
        assert_same(&cache.get(&key(0), &Device::Cpu).unwrap(), &f);
        assert_eq!(cache.stats(), (1, 2));
        // Once the directory works again, a stored entry leaves memory.
        std::fs::remove_file(&d).unwrap();
        std::fs::create_dir_all(&d).unwrap();
        cache.put(&key(0), &f);
        assert_eq!(cache.in_memory_len(), 1);
        assert_eq!(cache.failed_writes(), 2);
        assert!(d.join(format!("{}.safetensors", key(0))).is_file());
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn opening_a_directory_removes_only_stale_temporary_files() {
        let d = fresh_dir("temp");
        std::fs::create_dir_all(&d).unwrap();
        // The names `weights::write_atomic` gives its temporary files.
        let temp = |k: u64, n: u64| format!(".{}.safetensors.tmp4242-{n}", key(k));
        let stale = temp(1, 0);
        let fresh = temp(2, 1);
        let kept_old = [
            format!("{}.safetensors", key(3)),
            ".notakey.safetensors.tmp1-0".to_string(),
            format!(".{}.safetensors.tmpx-0", key(4)),
            "notes.txt".to_string(),
        ];
        let old = SystemTime::now() - Duration::from_secs(20 * 60);
        for name in kept_old.iter().chain([&stale, &fresh]) {
            std::fs::write(d.join(name), b"partial").unwrap();
            if *name != fresh {
                std::fs::File::options()
                    .write(true)
                    .open(d.join(name))
                    .unwrap()
                    .set_modified(old)
                    .unwrap();
            }
        }
        let cache = FeatureCache::on_disk(&d).unwrap();
        assert_eq!(cache.removed_temp_files(), 1);
        assert!(
            !d.join(&stale).exists(),
            "a stale temporary file is removed"
        );
        assert!(d.join(&fresh).exists(), "a fresh one may be in use");
        for name in &kept_old {
            assert!(
                d.join(name).exists(),
                "{name} is not an entry's temporary file"
            );
        }
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn the_probe_layout_accepts_the_models_entries_and_rejects_a_missing_field() {
        use crate::calico::Calico;
        use crate::config::CalicoConfig;
        let ids = crate::prompt::ByteText::SPECIAL_IDS;
        let cfg = CalicoConfig::preset("tiny").unwrap();
        let map = candle_nn::VarMap::new();
        let (mut model, _) = Calico::random(&cfg, ids, &map, 7, &Device::Cpu).unwrap();
        let d = fresh_dir("model");
        let cache = std::sync::Arc::new(FeatureCache::on_disk(&d).unwrap());
        model.set_feature_cache(Some(cache.clone())).unwrap();
        let (w, h) = (40usize, 30usize);
        let pixels: Vec<u8> = (0..w * h * 3).map(|i| (i * 7 % 251) as u8).collect();
        let rgb = crate::preprocess::RgbImage::new(w, h, pixels).unwrap();
        let im = ImageInput::from_image(&cfg, &rgb).unwrap();
        let want = model.encode_images(&[&im]).unwrap();
        let got = model.encode_images(&[&im]).unwrap();
        assert_eq!(
            values(&want[0].visual_tokens),
            values(&got[0].visual_tokens)
        );
        assert_eq!((cache.stats(), cache.damaged()), ((1, 1), 0));
        assert_eq!(cache.in_memory_len(), 0);
        // A file without a field the model makes is damaged, not used.
        let k = FeatureCache::key(&model.fingerprint, &im).unwrap();
        let f = cache.get(&k, &Device::Cpu).unwrap();
        let fields = f.fields().len();
        let cut = FrozenFeatures {
            x_semantic: None,
            qformer: None,
            ..f
        };
        assert!(
            fields > cut.fields().len(),
            "the tiny model makes x_semantic or qformer"
        );
        std::fs::write(d.join(format!("{k}.safetensors")), entry_bytes(&cut)).unwrap();
        let again = model.encode_images(&[&im]).unwrap();
        assert_eq!(
            values(&want[0].visual_tokens),
            values(&again[0].visual_tokens)
        );
        assert_eq!((cache.stats(), cache.damaged()), ((2, 2), 1));
        std::fs::remove_dir_all(&d).unwrap();
    }
}
