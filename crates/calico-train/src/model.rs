//! Building the model to train: which tensors are variables.
//!
//! * [`TrainableSet::Paper`] — the paper's set (LoRA, CEM, CAM, f_image,
//!   `text_hidden_fcs`, SAM mask decoder, added vocabulary rows); encoders
//!   and the LLM are frozen tensors.
//! * [`TrainableSet::All`] — every tensor is a variable: for presets
//!   without pretrained weights (`tiny`), which must learn to see and to
//!   speak from scratch. The model is built by the same code
//!   ([`Calico::new`]); only the frozen builder reads variables.

use std::collections::HashMap;

use calico_model::calico::Calico;
use calico_model::config::CalicoConfig;
use calico_model::prompt::SpecialIds;
use candle_core::{DType, Device, Shape, Tensor, Var};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::{Init, VarBuilder, VarMap};
use serde::{Deserialize, Serialize};

/// Which tensors training updates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TrainableSet {
    Paper,
    All,
}

/// A model with its variables.
pub struct Built {
    pub model: Calico,
    /// The variables training updates.
    pub vars: VarMap,
    /// Frozen tensors (empty for [`TrainableSet::All`]).
    pub frozen: HashMap<String, Tensor>,
}

/// A `VarMap` that also answers shape-less lookups (SAM's
/// relative-position tables) from the variables it holds.
struct Vars(VarMap);

impl SimpleBackend for Vars {
    fn get(
        &self,
        s: Shape,
        name: &str,
        h: Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        self.0.get(s, name, h, dtype, dev)
    }

    fn get_unchecked(&self, name: &str, dtype: DType, _: &Device) -> candle_core::Result<Tensor> {
        let data = self
            .0
            .data()
            .lock()
            .map_err(|_| candle_core::Error::Msg("VarMap lock poisoned".into()))?;
        match data.get(name) {
            Some(v) => v.as_tensor().to_dtype(dtype),
            None => candle_core::bail!("no variable `{name}`"),
        }
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.0
            .data()
            .lock()
            .map(|d| d.contains_key(name))
            .unwrap_or(false)
    }
}

/// Makes every tensor of `frozen` a variable of `map`.
pub fn into_vars(map: &VarMap, frozen: &HashMap<String, Tensor>) -> candle_core::Result<()> {
    let mut data = map
        .data()
        .lock()
        .map_err(|_| candle_core::Error::Msg("VarMap lock poisoned".into()))?;
    for (name, t) in frozen {
        data.insert(name.clone(), Var::from_tensor(t)?);
    }
    Ok(())
}

/// Rebuilds `cfg`'s model over the variables of `map` (which must hold
/// every tensor, frozen ones included).
pub fn build_over(
    cfg: &CalicoConfig,
    special: SpecialIds,
    map: &VarMap,
    device: &Device,
) -> candle_core::Result<Calico> {
    let all = VarBuilder::from_backend(Box::new(Vars(map.clone())), DType::F32, device.clone());
    Calico::new(cfg, all.clone(), all, special)
}

/// A seeded random model (the weights of [`Calico::random`] for `seed`)
/// whose `set` are variables.
pub fn build_random(
    cfg: &CalicoConfig,
    special: SpecialIds,
    set: TrainableSet,
    seed: u64,
    device: &Device,
) -> candle_core::Result<Built> {
    let vars = VarMap::new();
    let (model, frozen) = Calico::random(cfg, special, &vars, seed, device)?;
    match set {
        TrainableSet::Paper => Ok(Built {
            model,
            vars,
            frozen,
        }),
        TrainableSet::All => {
            into_vars(&vars, &frozen)?;
            let model = build_over(cfg, special, &vars, device)?;
            Ok(Built {
                model,
                vars,
                frozen: HashMap::new(),
            })
        }
    }
}
