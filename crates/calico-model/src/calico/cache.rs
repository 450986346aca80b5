//! A content-addressed cache of the frozen encoders' outputs, so training
//! with the paper's trainable set (EVA, DINOv2, Q-Former and the SAM image
//! encoder frozen) computes each image's features once, not once per
//! epoch.
//!
//! The key hashes the model config, the encoders' outputs on a fixed probe
//! image (standing for their weights) and the bytes of the image's three
//! views, so a changed image, view, encoder config or encoder weights never
//! hits a stale entry. Entries live in memory and, with a directory, on disk as
//! `<key>.safetensors` (written atomically), shared between runs.
//!
//! Only valid while those encoders are frozen: a model whose encoders are
//! trained (`TrainableSet::All`) must not use one.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use candle_core::{Device, Result, Tensor};

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

    /// Concatenates rows along the batch dimension.
    pub fn stack(rows: &[Self]) -> Result<Self> {
        let cat = |f: &dyn Fn(&Self) -> Option<Tensor>| -> Result<Option<Tensor>> {
            let v: Option<Vec<Tensor>> = rows.iter().map(f).collect();
            match v {
                Some(v) if !v.is_empty() => Ok(Some(Tensor::cat(&v, 0)?)),
                _ => Ok(None),
            }
        };
        let need = |t: Option<Tensor>, what: &str| {
            t.ok_or_else(|| candle_core::Error::Msg(format!("cached features: no {what}")))
        };
        Ok(Self {
            x_global: need(cat(&|r| Some(r.x_global.clone()))?, "x_global")?,
            x_semantic: cat(&|r| r.x_semantic.clone())?,
            qformer: cat(&|r| r.qformer.clone())?,
            sam: need(cat(&|r| Some(r.sam.clone()))?, "sam")?,
        })
    }
}

/// See the module docs.
#[derive(Debug, Default)]
pub struct FeatureCache {
    dir: Option<PathBuf>,
    mem: Mutex<HashMap<String, FrozenFeatures>>,
    hits: AtomicUsize,
    misses: AtomicUsize,
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

impl FeatureCache {
    /// A memory-only cache.
    pub fn in_memory() -> Self {
        Self::default()
    }

    /// A cache that also reads and writes `dir` (created when missing).
    pub fn on_disk(dir: impl AsRef<Path>) -> std::io::Result<Self> {
        std::fs::create_dir_all(dir.as_ref())?;
        Ok(Self {
            dir: Some(dir.as_ref().to_path_buf()),
            ..Self::default()
        })
    }

    /// `(hits, misses)` so far.
    pub fn stats(&self) -> (usize, usize) {
        (
            self.hits.load(Ordering::Relaxed),
            self.misses.load(Ordering::Relaxed),
        )
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

    /// The cached features for `key`, from memory or disk.
    pub fn get(&self, key: &str, device: &Device) -> Option<FrozenFeatures> {
        if let Some(f) = self.mem.lock().ok().and_then(|m| m.get(key).cloned()) {
            self.hits.fetch_add(1, Ordering::Relaxed);
            return Some(f);
        }
        let path = self.dir.as_ref()?.join(format!("{key}.safetensors"));
        let t = candle_core::safetensors::load(&path, device).ok()?;
        let f = FrozenFeatures {
            x_global: t.get("x_global")?.clone(),
            x_semantic: t.get("x_semantic").cloned(),
            qformer: t.get("qformer").cloned(),
            sam: t.get("sam")?.clone(),
        };
        if let Ok(mut m) = self.mem.lock() {
            m.insert(key.to_string(), f.clone());
        }
        self.hits.fetch_add(1, Ordering::Relaxed);
        Some(f)
    }

    /// Stores features computed for `key` (a failed disk write only loses
    /// the disk copy).
    pub fn put(&self, key: &str, f: &FrozenFeatures) {
        self.misses.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut m) = self.mem.lock() {
            m.insert(key.to_string(), f.clone());
        }
        let Some(dir) = &self.dir else { return };
        let mut map: HashMap<String, Tensor> = HashMap::new();
        map.insert("x_global".into(), f.x_global.clone());
        map.insert("sam".into(), f.sam.clone());
        if let Some(s) = &f.x_semantic {
            map.insert("x_semantic".into(), s.clone());
        }
        if let Some(q) = &f.qformer {
            map.insert("qformer".into(), q.clone());
        }
        if let Ok(bytes) = super::weights::safetensors_bytes(&map) {
            let _ = super::weights::write_atomic(&dir.join(format!("{key}.safetensors")), &bytes);
        }
    }
}
