//! Deterministic random weights: candle's CPU generator cannot be seeded, so
//! tests overwrite a `VarMap` from a ChaCha generator seeded per tensor name.

use candle_core::{DType, Result, Tensor};
use candle_nn::VarMap;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// What [`seeded_fill`] does with tensors that were created constant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FillMode {
    /// Keep constant tensors (norm weights 1, biases 0, zero-initialised
    /// projections, LoRA `B`) as they are.
    KeepConstants,
    /// Overwrite every tensor (so zero-initialised modules carry signal and
    /// gradient, e.g. for a gradient-flow test).
    All,
}

fn name_seed(seed: u64, name: &str) -> u64 {
    // FNV-1a over the name, mixed with the seed.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325 ^ seed.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    for b in name.bytes() {
        h ^= b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// Overwrites the tensors of `map` with N(0, σ²), σ = 1/√fan_in (fan_in =
/// product of all dims but the first; 0.02 for 1-D tensors), drawn from a
/// ChaCha8 generator seeded by `seed` and the tensor's name.
pub fn seeded_fill(map: &VarMap, seed: u64, mode: FillMode) -> Result<()> {
    seeded_fill_where(map, seed, mode, |_| true)
}

/// [`seeded_fill`] on the variables whose name passes `keep` only.
pub fn seeded_fill_where(
    map: &VarMap,
    seed: u64,
    mode: FillMode,
    keep: impl Fn(&str) -> bool,
) -> Result<()> {
    let data = map
        .data()
        .lock()
        .map_err(|_| candle_core::Error::Msg("VarMap lock poisoned".into()))?;
    let mut names: Vec<&String> = data.keys().filter(|n| keep(n)).collect();
    names.sort();
    for name in names {
        let var = &data[name];
        let t = var.as_tensor();
        if mode == FillMode::KeepConstants {
            let flat: Vec<f32> = t.flatten_all()?.to_dtype(DType::F32)?.to_vec1()?;
            if flat.windows(2).all(|w| w[0] == w[1]) {
                continue;
            }
        }
        let dims = t.dims();
        let values = seeded_normal(seed, name, dims);
        let new = Tensor::from_vec(values, dims, t.device())?.to_dtype(t.dtype())?;
        var.set(&new)?;
    }
    Ok(())
}

fn seeded_normal(seed: u64, name: &str, dims: &[usize]) -> Vec<f32> {
    let fan_in: usize = dims.iter().skip(1).product();
    let std = if dims.len() <= 1 {
        0.02
    } else {
        1.0 / (fan_in.max(1) as f64).sqrt()
    };
    let n: usize = dims.iter().product();
    let mut rng = ChaCha8Rng::seed_from_u64(name_seed(seed, name));
    (0..n)
        .map(|_| {
            // Box–Muller.
            let u1: f64 = rng.random::<f64>().max(1e-12);
            let u2: f64 = rng.random::<f64>();
            ((-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos() * std) as f32
        })
        .collect()
}

/// A `VarBuilder` backend that creates plain (non-variable) tensors on
/// request, deterministically from `seed` and the tensor name: non-zero
/// constant initialisations (norm weights, layer scales) stay constant,
/// everything else is N(0, 1/fan_in) — including zero-initialised requests,
/// since `VarBuilder::get` without hints asks for zeros (SAM's encoder reads
/// its convolutions that way) and a frozen block is never zero in a real
/// checkpoint. Tensors a
/// module reads without a shape (SAM's relative-position tables) must be
/// supplied up front with [`SeededBackend::insert`]. Everything created is
/// recorded ([`SeededBackend::tensors`]).
#[derive(Debug, Clone, Default)]
pub struct SeededBackend {
    seed: u64,
    made: std::sync::Arc<std::sync::Mutex<std::collections::HashMap<String, Tensor>>>,
}

impl SeededBackend {
    pub fn new(seed: u64) -> Self {
        Self {
            seed,
            made: Default::default(),
        }
    }

    /// Creates the tensor `name` of `dims` now (seeded normal values).
    pub fn insert(&self, name: &str, dims: &[usize], device: &candle_core::Device) -> Result<()> {
        let t = Tensor::from_vec(seeded_normal(self.seed, name, dims), dims, device)?;
        self.lock()?.insert(name.to_string(), t);
        Ok(())
    }

    fn lock(&self) -> Result<std::sync::MutexGuard<'_, std::collections::HashMap<String, Tensor>>> {
        self.made
            .lock()
            .map_err(|_| candle_core::Error::Msg("seeded backend lock poisoned".into()))
    }

    /// Every tensor created so far, by name.
    pub fn tensors(&self) -> Result<std::collections::HashMap<String, Tensor>> {
        Ok(self.lock()?.clone())
    }
}

impl candle_nn::var_builder::SimpleBackend for SeededBackend {
    fn get(
        &self,
        s: candle_core::Shape,
        name: &str,
        h: candle_nn::Init,
        dtype: DType,
        dev: &candle_core::Device,
    ) -> Result<Tensor> {
        if let Some(t) = self.lock()?.get(name) {
            if t.shape() != &s {
                candle_core::bail!(
                    "seeded backend: `{name}` was created with shape {:?}, now requested as {:?}",
                    t.dims(),
                    s.dims()
                );
            }
            return t.to_dtype(dtype);
        }
        let t = match h {
            candle_nn::Init::Const(v) if v != 0.0 => Tensor::full(v as f32, s.clone(), dev)?,
            _ => Tensor::from_vec(seeded_normal(self.seed, name, s.dims()), s.clone(), dev)?,
        };
        self.lock()?.insert(name.to_string(), t.clone());
        t.to_dtype(dtype)
    }

    fn get_unchecked(
        &self,
        name: &str,
        dtype: DType,
        _dev: &candle_core::Device,
    ) -> Result<Tensor> {
        match self.lock()?.get(name) {
            Some(t) => t.to_dtype(dtype),
            None => candle_core::bail!(
                "seeded backend: `{name}` is read without a shape and was not inserted up front"
            ),
        }
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.made
            .lock()
            .map(|m| m.contains_key(name))
            .unwrap_or(false)
    }
}
