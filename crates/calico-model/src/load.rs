//! Checkpoint loading that knows what it loaded.
//!
//! A [`Checkpoint`] wraps a set of named tensors (safetensors files, a
//! PyTorch `.pth`, or tensors in memory) and hands out a [`VarBuilder`] whose
//! lookups are recorded. A model is built from the builder; afterwards
//! [`Checkpoint::report`] lists the tensors it used and the checkpoint
//! tensors nothing asked for. A missing tensor or one with the wrong shape is
//! an error naming the tensor and both shapes.
//!
//! A [`NameMap`] translates the names a module asks for (HF transformers
//! names) into the checkpoint's own scheme (LAVIS, torch-hub), so one module
//! definition loads every layout.

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use candle_core::{safetensors::MmapedSafetensors, DType, Device, Shape, Tensor};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::{Init, VarBuilder};

/// Translates a module's tensor name into the checkpoint's name; `None`
/// means "this checkpoint scheme has no such tensor".
pub type NameMap = Arc<dyn Fn(&str) -> Option<String> + Send + Sync>;

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot read checkpoint {path}: {message}")]
    Read { path: PathBuf, message: String },
    #[error("{0}")]
    Model(#[from] candle_core::Error),
}

enum Store {
    Memory(HashMap<String, Tensor>),
    Safetensors(MmapedSafetensors),
    Pth(candle_core::pickle::PthTensors),
}

impl Store {
    fn names(&self) -> Vec<String> {
        match self {
            Store::Memory(m) => m.keys().cloned().collect(),
            Store::Safetensors(s) => s.tensors().into_iter().map(|(n, _)| n).collect(),
            Store::Pth(p) => p.tensor_infos().keys().cloned().collect(),
        }
    }

    fn contains(&self, name: &str) -> bool {
        match self {
            Store::Memory(m) => m.contains_key(name),
            Store::Safetensors(s) => s.get(name).is_ok(),
            Store::Pth(p) => p.tensor_infos().contains_key(name),
        }
    }

    fn load(&self, name: &str, dev: &Device) -> candle_core::Result<Tensor> {
        match self {
            Store::Memory(m) => m
                .get(name)
                .cloned()
                .ok_or_else(|| candle_core::Error::Msg(format!("no tensor {name}"))),
            Store::Safetensors(s) => s.load(name, dev),
            Store::Pth(p) => p
                .get(name)?
                .ok_or_else(|| candle_core::Error::Msg(format!("no tensor {name}"))),
        }
    }
}

struct Inner {
    store: Store,
    origin: String,
    used: Mutex<BTreeSet<String>>,
}

/// Named tensors plus a record of which were used.
#[derive(Clone)]
pub struct Checkpoint {
    inner: Arc<Inner>,
}

/// What building a model from a [`Checkpoint`] consumed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadReport {
    /// Where the tensors came from.
    pub origin: String,
    /// Checkpoint tensors the model read.
    pub loaded: Vec<String>,
    /// Checkpoint tensors nothing asked for (sorted).
    pub unexpected: Vec<String>,
}

impl fmt::Display for LoadReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: loaded {} tensors", self.origin, self.loaded.len())?;
        if !self.unexpected.is_empty() {
            write!(
                f,
                "; warning: {} tensors in the checkpoint were not used: {}",
                self.unexpected.len(),
                abbreviate(&self.unexpected, 12)
            )?;
        }
        Ok(())
    }
}

fn abbreviate(names: &[String], max: usize) -> String {
    let mut s = names
        .iter()
        .take(max)
        .map(String::as_str)
        .collect::<Vec<_>>()
        .join(", ");
    if names.len() > max {
        s.push_str(&format!(" … and {} more", names.len() - max));
    }
    s
}

impl Checkpoint {
    fn from_store(store: Store, origin: String) -> Self {
        Self {
            inner: Arc::new(Inner {
                store,
                origin,
                used: Mutex::new(BTreeSet::new()),
            }),
        }
    }

    /// Tensors already in memory.
    pub fn from_tensors(tensors: HashMap<String, Tensor>, origin: impl Into<String>) -> Self {
        Self::from_store(Store::Memory(tensors), origin.into())
    }

    /// One or more `.safetensors` files (shards), memory-mapped.
    pub fn from_safetensors<P: AsRef<Path>>(paths: &[P]) -> Result<Self, LoadError> {
        let origin = paths
            .iter()
            .map(|p| p.as_ref().display().to_string())
            .collect::<Vec<_>>()
            .join(", ");
        for p in paths {
            if !p.as_ref().is_file() {
                return Err(LoadError::Read {
                    path: p.as_ref().to_path_buf(),
                    message: "no such file".into(),
                });
            }
        }
        // SAFETY: the files are opened read-only; like every mmap-based
        // loader we rely on them not being truncated while mapped.
        let st = unsafe { MmapedSafetensors::multi(paths) }.map_err(|e| LoadError::Read {
            path: PathBuf::from(&origin),
            message: e.to_string(),
        })?;
        Ok(Self::from_store(Store::Safetensors(st), origin))
    }

    /// A PyTorch pickle checkpoint (`torch.save`), optionally the state dict
    /// under `key` (LAVIS files keep it under `"model"`).
    pub fn from_pth(path: &Path, key: Option<&str>) -> Result<Self, LoadError> {
        let p = candle_core::pickle::PthTensors::new(path, key).map_err(|e| LoadError::Read {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        Ok(Self::from_store(Store::Pth(p), path.display().to_string()))
    }

    /// Opens a file by extension: `.safetensors` or `.pth`/`.pt`/`.bin`.
    pub fn open(path: &Path) -> Result<Self, LoadError> {
        match path.extension().and_then(|e| e.to_str()) {
            Some("safetensors") => Self::from_safetensors(&[path]),
            Some("pth") | Some("pt") | Some("bin") => {
                // LAVIS stores {"model": state_dict}; plain files are the dict.
                match Self::from_pth(path, Some("model")) {
                    Ok(c) if !c.names().is_empty() => Ok(c),
                    _ => Self::from_pth(path, None),
                }
            }
            _ => Err(LoadError::Read {
                path: path.to_path_buf(),
                message: "expected a .safetensors, .pth, .pt or .bin file".into(),
            }),
        }
    }

    /// Every tensor name in the checkpoint.
    pub fn names(&self) -> Vec<String> {
        let mut n = self.inner.store.names();
        n.sort();
        n
    }

    /// A builder reading tensors under their own names.
    pub fn var_builder(&self, dtype: DType, device: &Device) -> VarBuilder<'static> {
        self.var_builder_mapped(None, dtype, device)
    }

    /// A builder translating each requested name through `map` first.
    pub fn var_builder_mapped(
        &self,
        map: Option<NameMap>,
        dtype: DType,
        device: &Device,
    ) -> VarBuilder<'static> {
        let backend = Tracking {
            inner: self.inner.clone(),
            map,
        };
        VarBuilder::from_backend(Box::new(backend), dtype, device.clone())
    }

    /// Tensors used so far and those nothing asked for.
    pub fn report(&self) -> LoadReport {
        let used = self
            .inner
            .used
            .lock()
            .map(|u| u.clone())
            .unwrap_or_default();
        let unexpected = self
            .names()
            .into_iter()
            .filter(|n| !used.contains(n))
            .collect();
        LoadReport {
            origin: self.inner.origin.clone(),
            loaded: used.into_iter().collect(),
            unexpected,
        }
    }

    /// Forgets which tensors were used (to build a second model from the same
    /// checkpoint and report on it separately).
    pub fn reset_report(&self) {
        if let Ok(mut u) = self.inner.used.lock() {
            u.clear();
        }
    }
}

struct Tracking {
    inner: Arc<Inner>,
    map: Option<NameMap>,
}

impl Tracking {
    fn resolve(&self, name: &str) -> candle_core::Result<String> {
        let stored = match &self.map {
            None => Some(name.to_string()),
            Some(m) => m(name),
        };
        match stored {
            Some(s) if self.inner.store.contains(&s) => Ok(s),
            Some(s) => {
                let via = if s == name {
                    String::new()
                } else {
                    format!(" (looked up as `{s}`)")
                };
                Err(candle_core::Error::Msg(format!(
                    "checkpoint {} has no tensor `{name}`{via}",
                    self.inner.origin
                )))
            }
            None => Err(candle_core::Error::Msg(format!(
                "checkpoint {}: tensor `{name}` has no counterpart in this checkpoint's naming scheme",
                self.inner.origin
            ))),
        }
    }

    fn fetch(
        &self,
        name: &str,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<(Tensor, String)> {
        let stored = self.resolve(name)?;
        let t = self.inner.store.load(&stored, dev)?.to_dtype(dtype)?;
        if let Ok(mut u) = self.inner.used.lock() {
            u.insert(stored.clone());
        }
        Ok((t, stored))
    }
}

impl SimpleBackend for Tracking {
    fn get(
        &self,
        s: Shape,
        name: &str,
        _h: Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        let (t, stored) = self.fetch(name, dtype, dev)?;
        if t.shape() != &s {
            let via = if stored == name {
                String::new()
            } else {
                format!(" (stored as `{stored}`)")
            };
            return Err(candle_core::Error::Msg(format!(
                "checkpoint {}: tensor `{name}`{via} has shape {:?}, the model expects {:?}",
                self.inner.origin,
                t.dims(),
                s.dims()
            )));
        }
        Ok(t)
    }

    fn get_unchecked(&self, name: &str, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        Ok(self.fetch(name, dtype, dev)?.0)
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.resolve(name).is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ckpt() -> Checkpoint {
        let dev = Device::Cpu;
        let mut m = HashMap::new();
        m.insert(
            "a.weight".to_string(),
            Tensor::zeros((2, 3), DType::F32, &dev).unwrap(),
        );
        m.insert(
            "a.bias".to_string(),
            Tensor::zeros(2, DType::F32, &dev).unwrap(),
        );
        m.insert(
            "extra".to_string(),
            Tensor::zeros(1, DType::F32, &dev).unwrap(),
        );
        Checkpoint::from_tensors(m, "test.safetensors")
    }

    #[test]
    fn reports_used_and_unexpected_tensors() {
        let c = ckpt();
        let vb = c.var_builder(DType::F32, &Device::Cpu);
        calico_nn::Linear::new(3, 2, true, vb.pp("a")).unwrap();
        let r = c.report();
        assert_eq!(r.loaded, vec!["a.bias", "a.weight"]);
        assert_eq!(r.unexpected, vec!["extra"]);
        assert!(r
            .to_string()
            .contains("1 tensors in the checkpoint were not used: extra"));
    }

    #[test]
    fn missing_and_misshaped_tensors_name_the_tensor_and_shapes() {
        let c = ckpt();
        let vb = c.var_builder(DType::F32, &Device::Cpu);
        let e = calico_nn::Linear::new(4, 2, true, vb.pp("a"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("`a.weight`") && e.contains("[2, 3]") && e.contains("[2, 4]"),
            "{e}"
        );
        let e = calico_nn::Linear::new(3, 2, true, vb.pp("b"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("no tensor `b.weight`"), "{e}");
    }

    #[test]
    fn name_maps_translate_lookups() {
        let c = ckpt();
        let map: NameMap = Arc::new(|n: &str| Some(n.replacen("proj.", "a.", 1)));
        let vb = c.var_builder_mapped(Some(map), DType::F32, &Device::Cpu);
        calico_nn::Linear::new(3, 2, true, vb.pp("proj")).unwrap();
        assert_eq!(c.report().unexpected, vec!["extra"]);
        let e = calico_nn::Linear::new(3, 2, true, vb.pp("other"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("other.weight"), "{e}");
    }
}
