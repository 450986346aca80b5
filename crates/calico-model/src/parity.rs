//! Parity cases: a reference implementation's weights, inputs and outputs in
//! one `.safetensors` file, and the code that replays them (docs/parity.md).
//!
//! Tensor names carry a role prefix: `weights.<checkpoint name>`,
//! `inputs.<name>`, `outputs.<name>`. The file's metadata holds `component`
//! (which block to build), `config` (a JSON object for that block),
//! `tolerance` (the largest allowed relative error) and free-form
//! provenance (`generator`, `description`).
//!
//! The relative error of an output is `max|ours − ref| / max(max|ref|, 1e-6)`
//! over all its elements (the ∞-norm of the difference relative to the
//! ∞-norm of the reference).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};

use crate::load::{Checkpoint, LoadReport};

/// One reference case.
pub struct Case {
    pub path: PathBuf,
    pub component: String,
    pub config: serde_json::Value,
    pub tolerance: f64,
    pub metadata: HashMap<String, String>,
    pub weights: HashMap<String, Tensor>,
    pub inputs: BTreeMap<String, Tensor>,
    pub outputs: BTreeMap<String, Tensor>,
}

/// What replaying a case gave.
#[derive(Debug, Clone)]
pub struct CaseResult {
    pub path: PathBuf,
    pub component: String,
    pub tolerance: f64,
    /// Relative error per reference output.
    pub errors: BTreeMap<String, f64>,
    /// Tensors in the case the component did not read.
    pub unused_weights: Vec<String>,
}

impl CaseResult {
    pub fn max_error(&self) -> f64 {
        self.errors.values().cloned().fold(0.0, f64::max)
    }

    pub fn passed(&self) -> bool {
        self.unused_weights.is_empty()
            && self
                .errors
                .values()
                .all(|e| e.is_finite() && *e <= self.tolerance)
    }
    /// One line of a parity table: file, component, tolerance and the
    /// relative error of each output.
    pub fn line(&self) -> String {
        let worst = self
            .errors
            .iter()
            .map(|(k, v)| format!("{k} {v:.2e}"))
            .collect::<Vec<_>>()
            .join(", ");
        let file = self.path.file_name().unwrap_or_default().to_string_lossy();
        format!(
            "{file:<60} {:<24} tol {:.0e}  {worst}",
            self.component, self.tolerance
        )
    }

    /// Why the case failed (`None` if it passed): the largest error against
    /// the tolerance, and any weights the component never read.
    pub fn failure(&self) -> Option<String> {
        if self.passed() {
            return None;
        }
        Some(format!(
            "{}: max relative error {:.3e} > {:.0e}{}",
            self.path.display(),
            self.max_error(),
            self.tolerance,
            if self.unused_weights.is_empty() {
                String::new()
            } else {
                format!("; weights never read: {}", self.unused_weights.join(", "))
            }
        ))
    }
}

fn meta_err(path: &Path, msg: impl std::fmt::Display) -> candle_core::Error {
    candle_core::Error::Msg(format!("parity case {}: {msg}", path.display()))
}

impl Case {
    /// Reads a case file.
    pub fn read(path: &Path) -> candle_core::Result<Case> {
        let bytes = std::fs::read(path).map_err(|e| meta_err(path, e))?;
        let (_, header) =
            safetensors::SafeTensors::read_metadata(&bytes).map_err(|e| meta_err(path, e))?;
        let metadata: HashMap<String, String> = header.metadata().clone().unwrap_or_default();
        let get = |k: &str| {
            metadata
                .get(k)
                .cloned()
                .ok_or_else(|| meta_err(path, format!("metadata has no `{k}`")))
        };
        let component = get("component")?;
        let config: serde_json::Value = serde_json::from_str(&get("config")?)
            .map_err(|e| meta_err(path, format!("metadata `config` is not JSON: {e}")))?;
        let tolerance: f64 = get("tolerance")?
            .parse()
            .map_err(|e| meta_err(path, format!("metadata `tolerance`: {e}")))?;
        let tensors = candle_core::safetensors::load_buffer(&bytes, &Device::Cpu)?;
        let mut weights = HashMap::new();
        let mut inputs = BTreeMap::new();
        let mut outputs = BTreeMap::new();
        for (name, t) in tensors {
            if let Some(n) = name.strip_prefix("weights.") {
                weights.insert(n.to_string(), t);
            } else if let Some(n) = name.strip_prefix("inputs.") {
                inputs.insert(n.to_string(), t);
            } else if let Some(n) = name.strip_prefix("outputs.") {
                outputs.insert(n.to_string(), t);
            } else {
                return Err(meta_err(
                    path,
                    format!("tensor `{name}` has none of the prefixes weights., inputs., outputs."),
                ));
            }
        }
        if outputs.is_empty() {
            return Err(meta_err(path, "no `outputs.*` tensors"));
        }
        Ok(Case {
            path: path.to_path_buf(),
            component,
            config,
            tolerance,
            metadata,
            weights,
            inputs,
            outputs,
        })
    }

    /// The case's weights as a checkpoint (names without `weights.`).
    pub fn checkpoint(&self) -> Checkpoint {
        Checkpoint::from_tensors(self.weights.clone(), self.path.display().to_string())
    }

    /// An input by name, as f32.
    pub fn input(&self, name: &str) -> candle_core::Result<Tensor> {
        self.inputs
            .get(name)
            .ok_or_else(|| meta_err(&self.path, format!("missing input `inputs.{name}`")))?
            .to_dtype(DType::F32)
    }

    /// The config's `names` field (the checkpoint naming scheme), `default`
    /// when absent; an error unless it is one of `allowed`.
    pub fn name_scheme(&self, default: &str, allowed: &[&str]) -> candle_core::Result<String> {
        let names = self
            .config
            .get("names")
            .and_then(|v| v.as_str())
            .unwrap_or(default);
        if !allowed.contains(&names) {
            return Err(meta_err(
                &self.path,
                format!(
                    "config `names` is `{names}`, expected one of: {}",
                    allowed.join(", ")
                ),
            ));
        }
        Ok(names.to_string())
    }

    /// The config deserialised into a block's config type.
    pub fn config<T: serde::de::DeserializeOwned>(&self) -> candle_core::Result<T> {
        serde_json::from_value(self.config.clone())
            .map_err(|e| meta_err(&self.path, format!("metadata `config`: {e}")))
    }
}

/// Relative error `max|a − b| / max(max|b|, 1e-6)`; infinite on a shape
/// mismatch.
pub fn relative_error(ours: &Tensor, reference: &Tensor) -> candle_core::Result<f64> {
    if ours.dims() != reference.dims() {
        return Ok(f64::INFINITY);
    }
    let a = ours.to_dtype(DType::F64)?.flatten_all()?;
    let b = reference.to_dtype(DType::F64)?.flatten_all()?;
    if a.elem_count() == 0 {
        return Ok(0.0);
    }
    let diff = (a - &b)?.abs()?.max(0)?.to_scalar::<f64>()?;
    let scale = b.abs()?.max(0)?.to_scalar::<f64>()?.max(1e-6);
    let e = diff / scale;
    Ok(if e.is_nan() { f64::INFINITY } else { e })
}

/// Builds the case's component from its weights, runs it on its inputs and
/// returns the named outputs it produced, plus what loading reported.
pub fn run(
    case: &Case,
    device: &Device,
) -> candle_core::Result<(BTreeMap<String, Tensor>, LoadReport)> {
    let ckpt = case.checkpoint();
    let outputs = match case.component.as_str() {
        "eva_vit" => crate::eva_vit::parity_forward(case, &ckpt, device)?,
        "qformer" => crate::qformer::parity_forward(case, &ckpt, device)?,
        "dinov2" => crate::dinov2::parity_forward(case, &ckpt, device)?,
        "sam_image_encoder" => crate::sam::parity_image_encoder(case, &ckpt, device)?,
        "sam_prompt_mask_decoder" => crate::sam::parity_prompt_mask_decoder(case, &ckpt, device)?,
        "sam_postprocess" => crate::sam::parity_postprocess(case, &ckpt, device)?,
        "preprocess" => crate::preprocess::parity_forward(case, &ckpt, device)?,
        "llama" => crate::llama::parity_forward(case, &ckpt, device)?,
        "llama_lora" => crate::llama::parity_forward_lora(case, &ckpt, device)?,
        "cem" => crate::cem::parity_forward(case, &ckpt, device)?,
        "cam" => crate::cam::parity_forward(case, &ckpt, device)?,
        "clip_vision" => crate::clip_vision::parity_forward(case, &ckpt, device)?,
        other => {
            return Err(meta_err(
                &case.path,
                format!(
                    "unknown component `{other}` (known: {})",
                    COMPONENTS.join(", ")
                ),
            ))
        }
    };
    Ok((outputs, ckpt.report()))
}

/// Components [`run`] knows.
pub const COMPONENTS: &[&str] = &[
    "eva_vit",
    "qformer",
    "dinov2",
    "sam_image_encoder",
    "sam_prompt_mask_decoder",
    "sam_postprocess",
    "preprocess",
    "llama",
    "llama_lora",
    "cem",
    "cam",
    "clip_vision",
];

/// Replays a case and measures every reference output. An output the
/// component did not produce is an error.
pub fn check(case: &Case, device: &Device) -> candle_core::Result<CaseResult> {
    let (ours, report) = run(case, device)?;
    let mut errors = BTreeMap::new();
    for (name, reference) in &case.outputs {
        let mine = ours.get(name).ok_or_else(|| {
            meta_err(
                &case.path,
                format!(
                    "component `{}` produced no output `{name}` (it produced: {})",
                    case.component,
                    ours.keys().cloned().collect::<Vec<_>>().join(", ")
                ),
            )
        })?;
        if mine.dims() != reference.dims() {
            return Err(meta_err(
                &case.path,
                format!(
                    "output `{name}` has shape {:?}, the reference has {:?}",
                    mine.dims(),
                    reference.dims()
                ),
            ));
        }
        errors.insert(
            name.clone(),
            relative_error(&mine.to_device(&Device::Cpu)?, reference)?,
        );
    }
    Ok(CaseResult {
        path: case.path.clone(),
        component: case.component.clone(),
        tolerance: case.tolerance,
        errors,
        unused_weights: report.unexpected,
    })
}

/// Every `*.safetensors` file directly in `dir`, sorted.
pub fn case_files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "safetensors"))
        .collect();
    v.sort();
    Ok(v)
}
