//! Optimisation primitives of the paper's recipe (appendix C.1): AdamW with
//! decoupled weight decay, gradient accumulation over micro-batches and
//! global-norm gradient clipping.
//!
//! Everything is deterministic: variables are kept sorted by name and every
//! reduction runs in a fixed order, so two runs fed the same gradients give
//! bit-identical parameters (the basis of bit-exact `--resume`).

use std::collections::{BTreeMap, HashMap};

use candle_core::backprop::GradStore;
use candle_core::{DType, Result, Tensor, Var};
use serde::{Deserialize, Serialize};

/// Hyper-parameters of [`AdamW`]. Defaults are the paper's (appendix C.1) and
/// LISA/GLaMM's DeepSpeed config: lr 4e-4, betas (0.9, 0.95), eps 1e-8,
/// weight decay 0.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdamWConfig {
    /// Base (peak) learning rate; [`AdamW::step`] takes the scheduled lr.
    pub lr: f64,
    /// Decay rate of the first-moment estimate.
    pub beta1: f64,
    /// Decay rate of the second-moment estimate.
    pub beta2: f64,
    /// Added to the denominator for numerical stability.
    pub eps: f64,
    /// Decoupled weight decay (multiplies the parameter by `1 - lr * wd`).
    pub weight_decay: f64,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        Self {
            lr: 4e-4,
            beta1: 0.9,
            beta2: 0.95,
            eps: 1e-8,
            weight_decay: 0.0,
        }
    }
}

/// Per-variable optimizer state.
struct ParamState {
    var: Var,
    exp_avg: Tensor,
    exp_avg_sq: Tensor,
    /// Number of updates this variable received (torch keeps one per param).
    step: u64,
}

/// AdamW (Loshchilov & Hutter) with the exact update of `torch.optim.AdamW`
/// (non-amsgrad, non-fused). For a variable θ with gradient g at its t-th
/// update (t counts only the steps in which it had a gradient):
///
/// ```text
/// θ ← θ · (1 − lr·wd)
/// m ← β1·m + (1 − β1)·g
/// v ← β2·v + (1 − β2)·g²
/// θ ← θ − (lr / (1 − β1^t)) · m / (√v / √(1 − β2^t) + eps)
/// ```
///
/// Arithmetic is in the variable's dtype (f32 in practice); scalars in f64.
pub struct AdamW {
    params: BTreeMap<String, ParamState>,
    cfg: AdamWConfig,
    steps: u64,
}

fn err(msg: String) -> candle_core::Error {
    candle_core::Error::Msg(msg)
}

impl AdamW {
    /// Creates the optimizer over named variables (order is irrelevant; they
    /// are kept sorted by name). Moments start at zero. Duplicate names or
    /// non-float variables are an error.
    pub fn new(vars: Vec<(String, Var)>, cfg: AdamWConfig) -> Result<Self> {
        let mut params = BTreeMap::new();
        for (name, var) in vars {
            if !var.dtype().is_float() {
                return Err(err(format!(
                    "AdamW: variable {name} has non-float dtype {:?}",
                    var.dtype()
                )));
            }
            let exp_avg = var.as_tensor().zeros_like()?;
            let exp_avg_sq = var.as_tensor().zeros_like()?;
            let state = ParamState {
                var,
                exp_avg,
                exp_avg_sq,
                step: 0,
            };
            if params.insert(name.clone(), state).is_some() {
                return Err(err(format!("AdamW: duplicate variable name {name}")));
            }
        }
        Ok(Self {
            params,
            cfg,
            steps: 0,
        })
    }

    /// The hyper-parameters.
    pub fn config(&self) -> &AdamWConfig {
        &self.cfg
    }

    /// Names of the optimised variables, sorted.
    pub fn var_names(&self) -> impl Iterator<Item = &str> {
        self.params.keys().map(String::as_str)
    }

    /// Applies one update with learning rate `lr` to every variable that has
    /// an entry in `grads`; variables without one are left untouched and
    /// their step count does not advance (torch's behaviour for
    /// `grad is None`). A gradient for an unknown name or of the wrong shape
    /// is an error (nothing is updated then).
    pub fn step(&mut self, grads: &BTreeMap<String, Tensor>, lr: f64) -> Result<()> {
        for (name, g) in grads {
            let p = self.params.get(name).ok_or_else(|| {
                err(format!(
                    "AdamW: gradient for {name}, which is not an optimised variable"
                ))
            })?;
            if g.dims() != p.var.dims() {
                return Err(err(format!(
                    "AdamW: gradient for {name} has shape {:?}, the variable {:?}",
                    g.dims(),
                    p.var.dims()
                )));
            }
        }
        let AdamWConfig {
            beta1,
            beta2,
            eps,
            weight_decay,
            ..
        } = self.cfg;
        for (name, p) in self.params.iter_mut() {
            let Some(g) = grads.get(name) else { continue };
            let g = g
                .to_dtype(p.var.dtype())?
                .to_device(p.var.device())?
                .detach();
            p.step += 1;
            let t = p.step as i32;
            let mut theta = p.var.as_tensor().detach();
            if weight_decay != 0.0 {
                theta = theta.affine(1.0 - lr * weight_decay, 0.0)?;
            }
            let m = (p.exp_avg.affine(beta1, 0.0)? + g.affine(1.0 - beta1, 0.0)?)?;
            let v = (p.exp_avg_sq.affine(beta2, 0.0)? + g.sqr()?.affine(1.0 - beta2, 0.0)?)?;
            let bc1 = 1.0 - beta1.powi(t);
            let bc2 = 1.0 - beta2.powi(t);
            let step_size = lr / bc1;
            let denom = v.sqrt()?.affine(1.0 / bc2.sqrt(), eps)?;
            let update = (m.div(&denom)?).affine(step_size, 0.0)?;
            theta = (theta - update)?;
            p.var.set(&theta)?;
            p.exp_avg = m;
            p.exp_avg_sq = v;
        }
        self.steps += 1;
        Ok(())
    }

    /// Number of [`AdamW::step`] calls so far (including restored ones).
    pub fn steps(&self) -> u64 {
        self.steps
    }

    /// The optimizer state as named tensors: `exp_avg.<var>` and
    /// `exp_avg_sq.<var>` for every variable, plus `step.<var>` (an f64
    /// scalar: that variable's own update count).
    pub fn state_tensors(&self) -> HashMap<String, Tensor> {
        let mut out = HashMap::with_capacity(self.params.len() * 3);
        for (name, p) in &self.params {
            out.insert(format!("exp_avg.{name}"), p.exp_avg.clone());
            out.insert(format!("exp_avg_sq.{name}"), p.exp_avg_sq.clone());
            // Only fails on allocation; a CPU scalar cannot.
            if let Ok(s) = Tensor::new(p.step as f64, &candle_core::Device::Cpu) {
                out.insert(format!("step.{name}"), s);
            }
        }
        out
    }

    /// Restores the state written by [`AdamW::state_tensors`], with `steps`
    /// the global step count. Every variable must have both moments with its
    /// own shape; `step.<var>` is optional (defaults to `steps`). Unknown
    /// tensors are an error. Errors name the offending tensor; on error the
    /// optimizer is unchanged.
    pub fn load_state(&mut self, tensors: &HashMap<String, Tensor>, steps: u64) -> Result<()> {
        let mut expected = 0usize;
        let mut restored = Vec::with_capacity(self.params.len());
        for (name, p) in &self.params {
            let load = |key: String| -> Result<Tensor> {
                let t = tensors
                    .get(&key)
                    .ok_or_else(|| err(format!("optimizer state: missing tensor {key}")))?;
                if t.dims() != p.var.dims() {
                    return Err(err(format!(
                        "optimizer state: tensor {key} has shape {:?}, expected {:?}",
                        t.dims(),
                        p.var.dims()
                    )));
                }
                t.to_dtype(p.var.dtype())?
                    .to_device(p.var.device())?
                    .detach()
                    .copy()
            };
            let m = load(format!("exp_avg.{name}"))?;
            let v = load(format!("exp_avg_sq.{name}"))?;
            expected += 2;
            let step_key = format!("step.{name}");
            let step = match tensors.get(&step_key) {
                None => steps,
                Some(t) => {
                    expected += 1;
                    let s = t
                        .to_dtype(DType::F64)
                        .and_then(|t| t.to_scalar::<f64>())
                        .map_err(|e| {
                            err(format!(
                                "optimizer state: tensor {step_key} is not a scalar: {e}"
                            ))
                        })?;
                    if !(s >= 0.0 && s.fract() == 0.0 && s <= 2f64.powi(53)) {
                        return Err(err(format!(
                            "optimizer state: tensor {step_key} = {s} is not a step count"
                        )));
                    }
                    s as u64
                }
            };
            restored.push((m, v, step));
        }
        if tensors.len() != expected {
            let mut unknown: Vec<&String> = tensors
                .keys()
                .filter(|k| {
                    let var = k
                        .strip_prefix("exp_avg.")
                        .or_else(|| k.strip_prefix("exp_avg_sq."))
                        .or_else(|| k.strip_prefix("step."));
                    !var.is_some_and(|v| self.params.contains_key(v))
                })
                .collect();
            unknown.sort();
            return Err(err(format!(
                "optimizer state: unexpected tensor {} (no such variable)",
                unknown.first().map(|s| s.as_str()).unwrap_or("?")
            )));
        }
        for (p, (m, v, step)) in self.params.values_mut().zip(restored) {
            p.exp_avg = m;
            p.exp_avg_sq = v;
            p.step = step;
        }
        self.steps = steps;
        Ok(())
    }
}

/// Sums gradients over micro-batches (gradient accumulation).
#[derive(Debug, Default)]
pub struct GradAccumulator {
    sums: BTreeMap<String, Tensor>,
    count: usize,
}

/// Only the gradients of `vars` out of `grads`. candle's backward pass
/// also leaves in its store the gradients it computed for untracked
/// operands (dropout masks, RoPE tables, attention masks, broadcast views):
/// nothing reads them, and a store held until the step's other
/// micro-batches are done would keep them all alive.
pub fn var_grads(mut grads: GradStore, vars: &[(String, Var)]) -> GradStore {
    let mut kept = GradStore::default();
    for (_, var) in vars {
        if let Some(g) = grads.remove(var.as_tensor()) {
            kept.insert(var.as_tensor(), g);
        }
    }
    kept
}

impl GradAccumulator {
    /// An empty accumulator.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds one micro-batch's gradients: for each named variable with a
    /// gradient in `grads`, adds it to that name's running sum. Variables
    /// without a gradient are skipped (they count as zero in the mean).
    pub fn add(&mut self, vars: &[(String, Var)], grads: &GradStore) -> Result<()> {
        for (name, var) in vars {
            let Some(g) = grads.get(var.as_tensor()) else {
                continue;
            };
            let g = g.detach();
            let sum = match self.sums.remove(name) {
                None => g.copy()?,
                Some(s) => (s + g)?,
            };
            self.sums.insert(name.clone(), sum);
        }
        self.count += 1;
        Ok(())
    }

    /// Number of micro-batches added.
    pub fn count(&self) -> usize {
        self.count
    }

    /// Summed gradient per name (the gradient of the summed losses). Empty
    /// if nothing was added.
    pub fn sum(self) -> BTreeMap<String, Tensor> {
        self.sums
    }

    /// Mean gradient per name: the sum divided by the number of micro-batches
    /// added (not by how many of them had a gradient for that name). Empty
    /// if nothing was added.
    pub fn mean(self) -> Result<BTreeMap<String, Tensor>> {
        let n = self.count as f64;
        self.sums
            .into_iter()
            .map(|(k, s)| Ok((k, (s / n)?)))
            .collect()
    }
}

/// Global L2 norm of all gradients: the sum of squares of each tensor is
/// taken in f32, the per-tensor sums are added in f64 (in name order).
pub fn grad_norm(grads: &BTreeMap<String, Tensor>) -> Result<f64> {
    let mut total = 0f64;
    for g in grads.values() {
        let ss = g
            .to_dtype(DType::F32)?
            .sqr()?
            .sum_all()?
            .to_scalar::<f32>()?;
        total += ss as f64;
    }
    Ok(total.sqrt())
}

/// Clips gradients by their global L2 norm like
/// `torch.nn.utils.clip_grad_norm_`: with `coef = max_norm / (norm + 1e-6)`,
/// every gradient is multiplied by `coef` when `coef < 1` (so in practice when
/// `norm > max_norm`). Returns the pre-clip norm. A non-finite norm leaves the
/// gradients unchanged and is returned as is (check it, or use
/// [`all_finite`], before stepping).
pub fn clip_grad_norm(grads: &mut BTreeMap<String, Tensor>, max_norm: f64) -> Result<f64> {
    let norm = grad_norm(grads)?;
    if !norm.is_finite() {
        return Ok(norm);
    }
    let coef = max_norm / (norm + 1e-6);
    if coef < 1.0 {
        for g in grads.values_mut() {
            *g = g.affine(coef, 0.0)?;
        }
    }
    Ok(norm)
}

/// Whether every element of every gradient is finite (no NaN or ±Inf).
pub fn all_finite(grads: &BTreeMap<String, Tensor>) -> Result<bool> {
    for g in grads.values() {
        let v = g.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
        if v.iter().any(|x| !x.is_finite()) {
            return Ok(false);
        }
    }
    Ok(true)
}

/// The first variable (in `vars`' order) holding a NaN or an infinity, with
/// that value: an update that overflowed (a learning rate far too high)
/// leaves finite gradients behind but weights that no later step can use,
/// and no checkpoint should keep them.
///
/// `0·x` is 0 for every finite `x` and NaN for NaN and ±∞, so the sum of
/// `0·t` is 0 exactly when `t` is finite: one reduction on the tensor's
/// device (nothing overflows, one scalar is read back); only a tensor that
/// fails is read to find the value.
pub fn first_non_finite(vars: &[(String, Var)]) -> Result<Option<(String, f32)>> {
    for (name, v) in vars {
        let t = v.as_tensor();
        let probe = t
            .affine(0.0, 0.0)?
            .to_dtype(DType::F32)?
            .sum_all()?
            .to_scalar::<f32>()?;
        if probe == 0.0 {
            continue;
        }
        let values = t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
        if let Some(x) = values.iter().find(|x| !x.is_finite()) {
            return Ok(Some((name.clone(), *x)));
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn var(v: &[f32]) -> Var {
        Var::new(v, &Device::Cpu).unwrap()
    }

    fn t(v: &[f32]) -> Tensor {
        Tensor::new(v, &Device::Cpu).unwrap()
    }

    /// Only the variables' gradients are kept: candle's store also holds
    /// one for the constant the variable was multiplied by.
    #[test]
    fn var_grads_keeps_only_the_variables_gradients() {
        let w = var(&[1.0, 2.0]);
        let c = t(&[3.0, -1.0]).broadcast_as((2, 2)).unwrap();
        let y = w.as_tensor().broadcast_mul(&c).unwrap();
        let all = y.sum_all().unwrap().backward().unwrap();
        assert!(all.get_ids().count() > 1);
        let kept = var_grads(all, &[("w".into(), w.clone())]);
        assert_eq!(kept.get_ids().count(), 1);
        let g: Vec<f32> = kept.get(w.as_tensor()).unwrap().to_vec1().unwrap();
        assert_eq!(g, vec![6.0, -2.0]);
    }

    fn vals(v: &Var) -> Vec<f32> {
        v.as_tensor().to_vec1::<f32>().unwrap()
    }

    fn grads(items: &[(&str, &[f32])]) -> BTreeMap<String, Tensor> {
        items.iter().map(|(n, g)| (n.to_string(), t(g))).collect()
    }

    fn assert_close(got: &[f32], want: &[f64]) {
        assert_eq!(got.len(), want.len());
        for (g, w) in got.iter().zip(want) {
            assert!((*g as f64 - w).abs() < 2e-6, "got {got:?}, want {want:?}");
        }
    }

    /// Three AdamW steps checked against numbers derived from the update rule
    /// (lr 0.1, β (0.9, 0.95), eps 1e-8, wd 0.1); the same values come out of
    /// torch.optim.AdamW in f64.
    ///
    /// Step 1, for each element: m = 0.1·g, v = 0.05·g², so m̂ = g, v̂ = g² and
    /// θ1 = 0.99·θ0 − 0.1·g/(|g| + 1e-8):
    ///   p = [1, −2, 0.5], g = [0.1, −0.2, 0]:
    ///   [0.99 − 0.1·0.1/0.10000001, −1.98 + 0.1·0.2/0.20000001, 0.495]
    ///   = [0.89000001, −1.880000005, 0.495].
    /// Step 2 (g = [−0.5, 0.4, 0.3]): m = 0.9·m1 + 0.1·g, v = 0.95·v1 + 0.05·g²,
    ///   θ2 = 0.99·θ1 − (0.1/0.19)·m / (√v/√0.0975 + 1e-8), e.g. element 0:
    ///   m = −0.041, v = 0.012975, √v/√0.0975 = 0.3647971…,
    ///   θ2 = 0.8811000099 + 0.5263158·0.041/0.3658119 = 0.9402532950.
    /// Step 3 (g = [1, 1, −1]) likewise with 1−β1³ = 0.271, 1−β2³ = 0.142625.
    /// `q` gets no gradient at step 1, so its first update (step 2) uses t = 1
    /// bias correction: q2 = 0.99·q0 − 0.1·sign(g).
    #[test]
    fn matches_torch_adamw_three_steps() {
        let p = var(&[1.0, -2.0, 0.5]);
        let q = var(&[0.25, -0.75]);
        let cfg = AdamWConfig {
            lr: 0.1,
            weight_decay: 0.1,
            ..Default::default()
        };
        let mut opt =
            AdamW::new(vec![("q".into(), q.clone()), ("p".into(), p.clone())], cfg).unwrap();
        opt.step(&grads(&[("p", &[0.1, -0.2, 0.0])]), 0.1).unwrap();
        assert_close(
            &vals(&p),
            &[0.890000010000, -1.880000005000, 0.495000000000],
        );
        assert_close(&vals(&q), &[0.25, -0.75]);
        opt.step(
            &grads(&[("p", &[-0.5, 0.4, 0.3]), ("q", &[0.2, -0.1])]),
            0.1,
        )
        .unwrap();
        assert_close(
            &vals(&p),
            &[0.940253295015, -1.897537398857, 0.416554003191],
        );
        assert_close(&vals(&q), &[0.147500005000, -0.642500010000]);
        opt.step(
            &grads(&[("p", &[1.0, 1.0, -1.0]), ("q", &[0.3, 0.05])]),
            0.1,
        )
        .unwrap();
        assert_close(
            &vals(&p),
            &[0.895628082500, -1.947059387338, 0.456055274001],
        );
        assert_close(&vals(&q), &[0.047419777245, -0.609238068513]);
        assert_eq!(opt.steps(), 3);
        let st = opt.state_tensors();
        assert_eq!(st["step.p"].to_scalar::<f64>().unwrap(), 3.0);
        assert_eq!(st["step.q"].to_scalar::<f64>().unwrap(), 2.0);
    }

    /// Deterministic pseudo-random gradient for step `k`.
    fn fake_grads(k: u64, shapes: &[(&str, usize)]) -> BTreeMap<String, Tensor> {
        shapes
            .iter()
            .enumerate()
            .map(|(i, (name, n))| {
                let v: Vec<f32> = (0..*n)
                    .map(|j| (((k * 31 + i as u64 * 7 + j as u64 * 13) % 17) as f32 - 8.0) * 0.07)
                    .collect();
                (name.to_string(), t(&v))
            })
            .collect()
    }

    fn bits(v: &Var) -> Vec<u32> {
        vals(v).iter().map(|x| x.to_bits()).collect()
    }

    #[test]
    fn resume_is_bit_identical() {
        let shapes = [("a.weight", 5usize), ("b.bias", 3)];
        let init =
            |n: usize, s: f32| var(&(0..n).map(|i| s * (i as f32 + 1.0)).collect::<Vec<_>>());
        let cfg = AdamWConfig {
            weight_decay: 0.05,
            ..Default::default()
        };
        let lr = |k: u64| 1e-2 * (k + 1) as f64;

        // Uninterrupted: 6 steps.
        let (a, b) = (init(5, 0.3), init(3, -0.2));
        let mut opt = AdamW::new(
            vec![("a.weight".into(), a.clone()), ("b.bias".into(), b.clone())],
            cfg,
        )
        .unwrap();
        for k in 0..6 {
            opt.step(&fake_grads(k, &shapes), lr(k)).unwrap();
        }

        // Interrupted after 3 steps, state through safetensors bytes.
        let (a2, b2) = (init(5, 0.3), init(3, -0.2));
        let mut opt2 = AdamW::new(
            vec![
                ("a.weight".into(), a2.clone()),
                ("b.bias".into(), b2.clone()),
            ],
            cfg,
        )
        .unwrap();
        for k in 0..3 {
            opt2.step(&fake_grads(k, &shapes), lr(k)).unwrap();
        }
        let state = opt2.state_tensors();
        let steps = opt2.steps();
        let bytes = safetensors::serialize(&state, None).unwrap();
        let weights: HashMap<String, Tensor> = [
            ("a".to_string(), a2.as_tensor().clone()),
            ("b".to_string(), b2.as_tensor().clone()),
        ]
        .into_iter()
        .collect();
        let wbytes = safetensors::serialize(&weights, None).unwrap();
        drop((opt2, a2, b2));

        let loaded = candle_core::safetensors::load_buffer(&bytes, &Device::Cpu).unwrap();
        let w = candle_core::safetensors::load_buffer(&wbytes, &Device::Cpu).unwrap();
        let a3 = Var::from_tensor(&w["a"]).unwrap();
        let b3 = Var::from_tensor(&w["b"]).unwrap();
        let mut opt3 = AdamW::new(
            vec![
                ("b.bias".into(), b3.clone()),
                ("a.weight".into(), a3.clone()),
            ],
            cfg,
        )
        .unwrap();
        opt3.load_state(&loaded, steps).unwrap();
        assert_eq!(opt3.steps(), 3);
        for k in 3..6 {
            opt3.step(&fake_grads(k, &shapes), lr(k)).unwrap();
        }
        assert_eq!(bits(&a), bits(&a3));
        assert_eq!(bits(&b), bits(&b3));
    }

    #[test]
    fn load_state_errors_name_the_tensor() {
        let mk = || {
            AdamW::new(
                vec![("w".into(), var(&[1.0, 2.0])), ("z".into(), var(&[3.0]))],
                AdamWConfig::default(),
            )
            .unwrap()
        };
        let good = mk().state_tensors();

        let mut missing = good.clone();
        missing.remove("exp_avg_sq.z");
        let e = mk().load_state(&missing, 0).unwrap_err().to_string();
        assert!(e.contains("exp_avg_sq.z"), "{e}");

        let mut bad_shape = good.clone();
        bad_shape.insert("exp_avg.w".into(), t(&[0.0, 0.0, 0.0]));
        let e = mk().load_state(&bad_shape, 0).unwrap_err().to_string();
        assert!(e.contains("exp_avg.w") && e.contains("[3]"), "{e}");

        let mut extra = good.clone();
        extra.insert("exp_avg.ghost".into(), t(&[0.0]));
        let e = mk().load_state(&extra, 0).unwrap_err().to_string();
        assert!(e.contains("exp_avg.ghost"), "{e}");

        // Without step.* tensors the global count is used.
        let moments: HashMap<_, _> = good
            .into_iter()
            .filter(|(k, _)| !k.starts_with("step."))
            .collect();
        let mut opt = mk();
        opt.load_state(&moments, 7).unwrap();
        assert_eq!(opt.steps(), 7);
        assert_eq!(
            opt.state_tensors()["step.w"].to_scalar::<f64>().unwrap(),
            7.0
        );
    }

    #[test]
    fn step_rejects_unknown_or_misshapen_grads() {
        let w = var(&[1.0, 2.0]);
        let mut opt = AdamW::new(vec![("w".into(), w.clone())], AdamWConfig::default()).unwrap();
        let e = opt.step(&grads(&[("nope", &[1.0])]), 0.1).unwrap_err();
        assert!(e.to_string().contains("nope"));
        let e = opt.step(&grads(&[("w", &[1.0])]), 0.1).unwrap_err();
        assert!(e.to_string().contains("w"));
        assert_eq!(vals(&w), vec![1.0, 2.0]);
        assert_eq!(opt.steps(), 0);
        let dup = AdamW::new(
            vec![("w".into(), var(&[1.0])), ("w".into(), var(&[1.0]))],
            AdamWConfig::default(),
        );
        assert!(dup.is_err());
    }

    #[test]
    fn config_defaults_and_serde() {
        let c = AdamWConfig::default();
        assert_eq!(
            (c.lr, c.beta1, c.beta2, c.eps, c.weight_decay),
            (4e-4, 0.9, 0.95, 1e-8, 0.0)
        );
        let partial: AdamWConfig = serde_json::from_str(r#"{"lr": 0.001}"#).unwrap();
        assert_eq!(partial, AdamWConfig { lr: 0.001, ..c });
    }

    #[test]
    fn accumulator_means_over_micro_batches() {
        let x = var(&[1.0, 2.0]);
        let y = var(&[3.0]);
        let unused = var(&[5.0]);
        let vars = vec![
            ("x".to_string(), x.clone()),
            ("y".to_string(), y.clone()),
            ("unused".to_string(), unused.clone()),
        ];
        let mut acc = GradAccumulator::new();
        // loss1 = sum(x²) + 2y  → dx = 2x = [2, 4], dy = 2
        let l1 = (x.as_tensor().sqr().unwrap().sum_all().unwrap()
            + y.as_tensor().affine(2.0, 0.0).unwrap().sum_all().unwrap())
        .unwrap();
        acc.add(&vars, &l1.backward().unwrap()).unwrap();
        // loss2 = 3·sum(x) → dx = [3, 3], y gets none
        let l2 = x.as_tensor().affine(3.0, 0.0).unwrap().sum_all().unwrap();
        acc.add(&vars, &l2.backward().unwrap()).unwrap();
        assert_eq!(acc.count(), 2);
        let m = acc.mean().unwrap();
        assert_eq!(m.keys().collect::<Vec<_>>(), vec!["x", "y"]);
        assert_eq!(m["x"].to_vec1::<f32>().unwrap(), vec![2.5, 3.5]);
        assert_eq!(m["y"].to_vec1::<f32>().unwrap(), vec![1.0]);
        assert!(GradAccumulator::new().mean().unwrap().is_empty());
    }

    #[test]
    fn clipping_follows_torch() {
        // norm = sqrt(3² + 4² + 12²) = 13
        let mut g = grads(&[("a", &[3.0, 4.0]), ("b", &[12.0])]);
        let n = clip_grad_norm(&mut g, 1.0).unwrap();
        assert!((n - 13.0).abs() < 1e-9);
        let coef = 1.0 / (13.0 + 1e-6);
        assert_close(&g["a"].to_vec1::<f32>().unwrap(), &[3.0 * coef, 4.0 * coef]);
        assert_close(&g["b"].to_vec1::<f32>().unwrap(), &[12.0 * coef]);
        let after = grad_norm(&g).unwrap();
        assert!((after - 1.0).abs() < 1e-6);

        // Below the threshold nothing changes.
        let mut g = grads(&[("a", &[0.3, 0.4])]);
        let n = clip_grad_norm(&mut g, 1.0).unwrap();
        assert!((n - 0.5).abs() < 1e-7);
        assert_eq!(g["a"].to_vec1::<f32>().unwrap(), vec![0.3, 0.4]);
    }

    #[test]
    fn finiteness_checks() {
        let g = grads(&[("a", &[1.0, 2.0]), ("b", &[3.0])]);
        assert!(all_finite(&g).unwrap());
        for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
            let mut g = grads(&[("a", &[1.0, 2.0]), ("b", &[3.0, bad])]);
            assert!(!all_finite(&g).unwrap());
            let n = clip_grad_norm(&mut g, 1.0).unwrap();
            assert!(!n.is_finite());
            assert_eq!(g["a"].to_vec1::<f32>().unwrap(), vec![1.0, 2.0]);
        }
        // Huge but finite values overflow the f32 sum of squares, yet are finite.
        let g = grads(&[("a", &[3e38, 3e38])]);
        assert!(all_finite(&g).unwrap());

        let vars = |b: f32| {
            vec![
                ("a".to_string(), var(&[1.0, 3e38])),
                ("b".into(), var(&[2.0, b])),
            ]
        };
        assert_eq!(first_non_finite(&vars(0.5)).unwrap(), None);
        let (name, x) = first_non_finite(&vars(f32::NEG_INFINITY)).unwrap().unwrap();
        assert_eq!((name.as_str(), x), ("b", f32::NEG_INFINITY));
        let (name, x) = first_non_finite(&vars(f32::NAN)).unwrap().unwrap();
        assert!(name == "b" && x.is_nan());
    }
}
