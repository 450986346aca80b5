//! The Correspondence Adaptation Modules (CAM, §3.4, eq. 7–9), VPG-C style
//! (Cheetah's `qformer_proj` / `llm_proj`, anchors §2.5).
//!
//! Before LLM layer `l ∈ L` (paper: {11, 22}), for every batch row:
//!
//! 1. q′ = q + f_adaptation(t^l) where t^l is the hidden state of the last
//!    instruction token and q the base query tokens `(1, Q, D_q)` (eq. 7);
//! 2. for each image i, X′_embed,i = 𝒬(q′, X′_global,i): the Q-Former run
//!    again over that image's CEM-fused EVA tokens (eq. 8);
//! 3. the image's token span in the hidden states gets
//!    f_reintegration(X′_embed,i) added (eq. 9).
//!
//! Both projections are created at zero, as VPG-C's `zero_module`, so a
//! fresh CAM leaves the LLM's hidden states unchanged (exactly) and training
//! starts from the pretrained model's behaviour; f_reintegration receives
//! gradient from the first step, f_adaptation once f_reintegration is
//! non-zero. Whether Calico keeps the zero-init is not stated (anchors §1.4).
//!
//! [`CamConfig::guidance`] `false` drops f_adaptation (q′ = q): the paper's
//! "w/o CAM" ablation is described as injecting CEM features "without fusing
//! them with the last hidden state" (Table 2).
//!
//! Tensor names are ours: `cam.{layer}.f_adaptation.{weight,bias}`,
//! `cam.{layer}.f_reintegration.{weight,bias}`.

use std::collections::BTreeMap;

use calico_nn::Linear;
use candle_core::{DType, Device, Result, Tensor};
use candle_nn::VarBuilder;
use serde::{Deserialize, Serialize};

use crate::load::Checkpoint;
use crate::parity::Case;
use crate::qformer::{load_query_tokens, QFormer, QFormerConfig};

/// Where CAMs go and whether they use instruction guidance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CamConfig {
    /// LLM layer indices (0-based) whose *input* hidden states a CAM
    /// updates; the paper's L = {11, 22} of 32 layers.
    pub layers: Vec<usize>,
    /// Whether q′ = q + f_adaptation(t^l) (true) or q′ = q (false).
    pub guidance: bool,
}

impl Default for CamConfig {
    fn default() -> Self {
        Self {
            layers: vec![11, 22],
            guidance: true,
        }
    }
}

/// One CAM, injected before LLM layer `layer`.
#[derive(Debug, Clone)]
pub struct CamLayer {
    layer: usize,
    f_adaptation: Option<Linear>,
    f_reintegration: Linear,
    d_llm: usize,
    d_query: usize,
}

/// A span `[start, end)` of image tokens in one row of the hidden states.
pub type Span = (usize, usize);

impl CamLayer {
    /// Builds the CAM for `layer` from `vb` positioned at `cam.{layer}`:
    /// f_adaptation `D_llm → D_q` (when `guidance`) and f_reintegration
    /// `D_q → D_llm`, both zero-initialised when created.
    pub fn new(
        layer: usize,
        d_llm: usize,
        d_query: usize,
        guidance: bool,
        vb: VarBuilder,
    ) -> Result<Self> {
        let f_adaptation = if guidance {
            Some(Linear::zeros(d_llm, d_query, true, vb.pp("f_adaptation"))?)
        } else {
            None
        };
        Ok(Self {
            layer,
            f_adaptation,
            f_reintegration: Linear::zeros(d_query, d_llm, true, vb.pp("f_reintegration"))?,
            d_llm,
            d_query,
        })
    }

    /// The LLM layer this CAM feeds.
    pub fn layer(&self) -> usize {
        self.layer
    }

    /// Applies eq. 7–9 and returns the new hidden states (the input is not
    /// modified; the result is built with `cat`, so it is differentiable).
    ///
    /// * `hidden`: `(B, T, D_llm)`, the input of layer `l`;
    /// * `last_instruction_idx`: per batch row, the position of the last
    ///   instruction token (t^l);
    /// * `spans`: per batch row, the `[start, end)` token span of each image
    ///   (recorded when the prompt was built), each `Q` long, in image order;
    /// * `x_global_per_image`: per image, the CEM-fused EVA tokens
    ///   X′_global,i `(B, N_g, D_g)`;
    /// * `qformer`: the Q-Former 𝒬;
    /// * `queries`: the base query tokens q, `(1, Q, D_q)` or `(B, Q, D_q)`.
    pub fn apply(
        &self,
        hidden: &Tensor,
        last_instruction_idx: &[usize],
        spans: &[Vec<Span>],
        x_global_per_image: &[Tensor],
        qformer: &QFormer,
        queries: &Tensor,
    ) -> Result<Tensor> {
        let (b, t, d) = hidden.dims3().map_err(|_| {
            candle_core::Error::Msg(format!(
                "CAM {}: expected hidden states of shape (batch, tokens, {}), got {:?}",
                self.layer,
                self.d_llm,
                hidden.dims()
            ))
        })?;
        if d != self.d_llm {
            candle_core::bail!(
                "CAM {}: expected hidden states of shape (batch, tokens, {}), got {:?}",
                self.layer,
                self.d_llm,
                hidden.dims()
            );
        }
        let (qb, nq, qd) = queries.dims3().map_err(|_| {
            candle_core::Error::Msg(format!(
                "CAM {}: expected queries of shape (1, queries, {}), got {:?}",
                self.layer,
                self.d_query,
                queries.dims()
            ))
        })?;
        if qd != self.d_query || (qb != 1 && qb != b) {
            candle_core::bail!(
                "CAM {}: expected queries of shape (1 or {b}, queries, {}), got {:?}",
                self.layer,
                self.d_query,
                queries.dims()
            );
        }
        if last_instruction_idx.len() != b {
            candle_core::bail!(
                "CAM {}: {} last-instruction indices for a batch of {b}",
                self.layer,
                last_instruction_idx.len()
            );
        }
        if let Some((row, &i)) = last_instruction_idx
            .iter()
            .enumerate()
            .find(|(_, &i)| i >= t)
        {
            candle_core::bail!(
                "CAM {}: row {row}: last instruction index {i} is outside the {t} tokens",
                self.layer
            );
        }
        let n_images = x_global_per_image.len();
        check_spans(self.layer, spans, b, t, nq, n_images)?;
        for (i, x) in x_global_per_image.iter().enumerate() {
            if x.dims().len() != 3 || x.dims()[0] != b {
                candle_core::bail!(
                    "CAM {}: expected X′_global of image {i} of shape ({b}, tokens, width), got {:?}",
                    self.layer,
                    x.dims()
                );
            }
        }
        if n_images == 0 {
            return Ok(hidden.clone());
        }

        // eq. 7: q′ = q + f_adaptation(t^l), (B, Q, D_q).
        let q_prime = match &self.f_adaptation {
            Some(f) => {
                let rows = last_instruction_idx
                    .iter()
                    .enumerate()
                    .map(|(row, &i)| hidden.get(row)?.narrow(0, i, 1))
                    .collect::<Result<Vec<_>>>()?;
                let last = Tensor::cat(&rows, 0)?; // (B, D_llm)
                let guide = f.forward(&last)?.unsqueeze(1)?; // (B, 1, D_q)
                calico_nn::broadcast::add(queries, &guide)?
            }
            None => queries.clone(),
        };
        // eq. 8 and the projection of eq. 9, per image: (B, Q, D_llm).
        let injected = x_global_per_image
            .iter()
            .map(|x| {
                let out = qformer.forward(&q_prime, x, None)?;
                self.f_reintegration.forward(&out)
            })
            .collect::<Result<Vec<_>>>()?;
        // eq. 9: a per-row delta that is zero outside the image spans.
        let zeros = |n: usize| Tensor::zeros((n, d), hidden.dtype(), hidden.device());
        let mut deltas = Vec::with_capacity(b);
        for (row, row_spans) in spans.iter().enumerate() {
            let mut order: Vec<usize> = (0..row_spans.len()).collect();
            order.sort_by_key(|&i| row_spans[i].0);
            let mut parts = Vec::with_capacity(2 * order.len() + 1);
            let mut pos = 0;
            for i in order {
                let (start, end) = row_spans[i];
                if start > pos {
                    parts.push(zeros(start - pos)?);
                }
                parts.push(injected[i].get(row)?);
                pos = end;
            }
            if t > pos {
                parts.push(zeros(t - pos)?);
            }
            deltas.push(Tensor::cat(&parts, 0)?);
        }
        hidden + Tensor::stack(&deltas, 0)?
    }
}

fn check_spans(
    layer: usize,
    spans: &[Vec<Span>],
    b: usize,
    t: usize,
    nq: usize,
    n_images: usize,
) -> Result<()> {
    if spans.len() != b {
        candle_core::bail!(
            "CAM {layer}: image spans given for {} rows, the batch has {b}",
            spans.len()
        );
    }
    for (row, row_spans) in spans.iter().enumerate() {
        if row_spans.len() != n_images {
            candle_core::bail!(
                "CAM {layer}: row {row} has {} image spans for {n_images} images",
                row_spans.len()
            );
        }
        let mut sorted = row_spans.clone();
        sorted.sort();
        let mut prev_end = 0;
        for (start, end) in sorted {
            if end < start || end - start != nq {
                candle_core::bail!(
                    "CAM {layer}: row {row}: image span [{start}, {end}) is not {nq} tokens long (one per query)"
                );
            }
            if end > t {
                candle_core::bail!(
                    "CAM {layer}: row {row}: image span [{start}, {end}) ends past the {t} tokens"
                );
            }
            if start < prev_end {
                candle_core::bail!("CAM {layer}: row {row}: image spans overlap at {start}");
            }
            prev_end = end;
        }
    }
    Ok(())
}

/// The CAMs of a model, one per layer in [`CamConfig::layers`].
#[derive(Debug, Clone)]
pub struct Cams {
    modules: BTreeMap<usize, CamLayer>,
}

impl Cams {
    /// Builds one [`CamLayer`] per configured layer from `vb` positioned at
    /// the model root (names `cam.{layer}.…`).
    pub fn new(cfg: &CamConfig, d_llm: usize, d_query: usize, vb: VarBuilder) -> Result<Self> {
        let mut modules = BTreeMap::new();
        for &l in &cfg.layers {
            if modules.contains_key(&l) {
                candle_core::bail!("CamConfig: layer {l} is listed twice");
            }
            let m = CamLayer::new(l, d_llm, d_query, cfg.guidance, vb.pp("cam").pp(l))?;
            modules.insert(l, m);
        }
        Ok(Self { modules })
    }

    /// The CAM that feeds `layer`, if any.
    pub fn get(&self, layer: usize) -> Option<&CamLayer> {
        self.modules.get(&layer)
    }

    /// The layers with a CAM, ascending.
    pub fn layers(&self) -> Vec<usize> {
        self.modules.keys().copied().collect()
    }
}

/// Parity replay. Config: `qformer` (a [`QFormerConfig`]), `layer`,
/// `d_llm`. Weights: `qformer.*` (HF names), `query_tokens`,
/// `cam.{layer}.*`. Inputs: `hidden` (B, T, D), `last_instruction_idx` (B),
/// `spans` (B, images, 2), `x_global.{i}` per image. Output: `hidden`.
pub fn parity_forward(
    case: &Case,
    ckpt: &Checkpoint,
    device: &Device,
) -> Result<BTreeMap<String, Tensor>> {
    let err = |m: String| candle_core::Error::Msg(format!("{}: {m}", case.path.display()));
    let field = |k: &str| {
        case.config
            .get(k)
            .cloned()
            .ok_or_else(|| err(format!("config has no `{k}`")))
    };
    let number = |k: &str| -> Result<usize> {
        field(k)?
            .as_u64()
            .map(|v| v as usize)
            .ok_or_else(|| err(format!("config `{k}` is not a number")))
    };
    let qcfg: QFormerConfig = serde_json::from_value(field("qformer")?)
        .map_err(|e| err(format!("config `qformer`: {e}")))?;
    let layer = number("layer")?;
    let d_llm = number("d_llm")?;
    let vb = ckpt.var_builder(DType::F32, device);
    let qformer = QFormer::new(&qcfg, vb.pp("qformer"))?;
    let queries = load_query_tokens(&qcfg, &vb)?;
    let cams = Cams::new(
        &CamConfig {
            layers: vec![layer],
            guidance: true,
        },
        d_llm,
        qcfg.hidden_size,
        vb,
    )?;
    let hidden = case.input("hidden")?.to_device(device)?;
    let as_usize = |t: Tensor| -> Result<Vec<usize>> {
        Ok(t.flatten_all()?
            .to_vec1::<f32>()?
            .into_iter()
            .map(|v| v as usize)
            .collect())
    };
    let last = as_usize(case.input("last_instruction_idx")?)?;
    let spans_t = case.input("spans")?;
    let (b, n_images, _) = spans_t.dims3()?;
    let flat = as_usize(spans_t)?;
    let spans: Vec<Vec<Span>> = (0..b)
        .map(|row| {
            (0..n_images)
                .map(|i| {
                    let k = 2 * (row * n_images + i);
                    (flat[k], flat[k + 1])
                })
                .collect()
        })
        .collect();
    let xs = (0..n_images)
        .map(|i| case.input(&format!("x_global.{i}"))?.to_device(device))
        .collect::<Result<Vec<_>>>()?;
    let cam = cams
        .get(layer)
        .ok_or_else(|| err(format!("no CAM for layer {layer}")))?;
    let out = cam.apply(&hidden, &last, &spans, &xs, &qformer, &queries)?;
    let mut m = BTreeMap::new();
    m.insert("hidden".to_string(), out);
    Ok(m)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Var;
    use candle_nn::VarMap;

    const D_LLM: usize = 24;
    const Q: usize = 3;

    fn qformer_cfg() -> QFormerConfig {
        QFormerConfig {
            hidden_size: 16,
            num_hidden_layers: 2,
            num_attention_heads: 4,
            intermediate_size: 32,
            encoder_hidden_size: 8,
            num_query_tokens: Q,
            ..QFormerConfig::paper()
        }
    }

    struct Setup {
        varmap: VarMap,
        cams: Cams,
        qformer: QFormer,
        queries: Tensor,
        x: Vec<Tensor>,
    }

    fn setup() -> Setup {
        let dev = Device::Cpu;
        let frozen = VarMap::new();
        let fvb = VarBuilder::from_varmap(&frozen, DType::F32, &dev);
        let qcfg = qformer_cfg();
        let qformer = QFormer::new(&qcfg, fvb.pp("qformer")).unwrap();
        let queries = load_query_tokens(&qcfg, &fvb).unwrap();
        let varmap = VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, &dev);
        let cams = Cams::new(&CamConfig::default(), D_LLM, 16, vb).unwrap();
        let x = (0..2)
            .map(|_| Tensor::randn(0f32, 1.0, (2, 5, 8), &dev).unwrap())
            .collect();
        Setup {
            varmap,
            cams,
            qformer,
            queries,
            x,
        }
    }

    fn randomise(varmap: &VarMap) {
        for var in varmap.all_vars() {
            let t = Tensor::randn(0f32, 0.5, var.shape(), &Device::Cpu).unwrap();
            var.set(&t).unwrap();
        }
    }

    // Row 0: images at [2, 5) and [7, 10); row 1: at [1, 4) and [4, 7).
    fn spans() -> Vec<Vec<Span>> {
        vec![vec![(2, 5), (7, 10)], vec![(1, 4), (4, 7)]]
    }

    fn max_abs(t: &Tensor) -> f32 {
        t.abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
    }

    #[test]
    fn names_follow_the_layers() {
        let s = setup();
        assert_eq!(s.cams.layers(), vec![11, 22]);
        let mut names: Vec<String> = s.varmap.data().lock().unwrap().keys().cloned().collect();
        names.sort();
        assert_eq!(
            names,
            [
                "cam.11.f_adaptation.bias",
                "cam.11.f_adaptation.weight",
                "cam.11.f_reintegration.bias",
                "cam.11.f_reintegration.weight",
                "cam.22.f_adaptation.bias",
                "cam.22.f_adaptation.weight",
                "cam.22.f_reintegration.bias",
                "cam.22.f_reintegration.weight",
            ]
        );
    }

    #[test]
    fn zero_initialised_cam_returns_the_hidden_states_exactly() {
        let s = setup();
        let hidden = Tensor::randn(0f32, 1.0, (2, 12, D_LLM), &Device::Cpu).unwrap();
        let cam = s.cams.get(11).unwrap();
        let out = cam
            .apply(&hidden, &[11, 9], &spans(), &s.x, &s.qformer, &s.queries)
            .unwrap();
        assert_eq!(out.dims(), hidden.dims());
        assert_eq!(max_abs(&(&out - &hidden).unwrap()), 0.0);
    }

    #[test]
    fn trained_cam_changes_only_the_image_spans() {
        let s = setup();
        randomise(&s.varmap);
        let hidden = Tensor::randn(0f32, 1.0, (2, 12, D_LLM), &Device::Cpu).unwrap();
        let cam = s.cams.get(22).unwrap();
        let out = cam
            .apply(&hidden, &[11, 9], &spans(), &s.x, &s.qformer, &s.queries)
            .unwrap();
        let diff = (&out - &hidden).unwrap();
        for (row, row_spans) in spans().iter().enumerate() {
            for pos in 0..12 {
                let inside = row_spans.iter().any(|&(a, b)| (a..b).contains(&pos));
                let m = max_abs(&diff.get(row).unwrap().get(pos).unwrap());
                if inside {
                    assert!(m > 0.0, "row {row} pos {pos} unchanged");
                } else {
                    assert_eq!(m, 0.0, "row {row} pos {pos} changed");
                }
            }
        }
        // Image 0 of row 0 received f_reintegration(𝒬(q′, X′_0)) exactly.
        let last = hidden.get(0).unwrap().narrow(0, 11, 1).unwrap();
        let q_prime = s
            .queries
            .broadcast_add(
                &cam.f_adaptation
                    .as_ref()
                    .unwrap()
                    .forward(&last)
                    .unwrap()
                    .unsqueeze(1)
                    .unwrap(),
            )
            .unwrap();
        let x0 = s.x[0].narrow(0, 0, 1).unwrap();
        let expected = cam
            .f_reintegration
            .forward(&s.qformer.forward(&q_prime, &x0, None).unwrap())
            .unwrap()
            .squeeze(0)
            .unwrap();
        let got = diff.get(0).unwrap().narrow(0, 2, Q).unwrap();
        assert!(max_abs(&(&got - &expected).unwrap()) < 1e-4);
    }

    #[test]
    fn the_instruction_token_steers_the_injection() {
        let s = setup();
        randomise(&s.varmap);
        let hidden = Tensor::randn(0f32, 1.0, (2, 12, D_LLM), &Device::Cpu).unwrap();
        let cam = s.cams.get(11).unwrap();
        let a = cam
            .apply(&hidden, &[11, 9], &spans(), &s.x, &s.qformer, &s.queries)
            .unwrap();
        let b = cam
            .apply(&hidden, &[10, 9], &spans(), &s.x, &s.qformer, &s.queries)
            .unwrap();
        assert!(max_abs(&(a.get(0).unwrap() - b.get(0).unwrap()).unwrap()) > 0.0);
        assert_eq!(
            max_abs(&(a.get(1).unwrap() - b.get(1).unwrap()).unwrap()),
            0.0
        );
    }

    #[test]
    fn gradients_reach_both_projections() {
        let s = setup();
        let hidden = Var::randn(0f32, 1.0, (2, 12, D_LLM), &Device::Cpu).unwrap();
        let cam = s.cams.get(11).unwrap();
        let grad_norms = |s: &Setup| {
            let out = cam
                .apply(
                    hidden.as_tensor(),
                    &[11, 9],
                    &spans(),
                    &s.x,
                    &s.qformer,
                    &s.queries,
                )
                .unwrap();
            let grads = out.sqr().unwrap().sum_all().unwrap().backward().unwrap();
            let data = s.varmap.data().lock().unwrap();
            let norm = |n: &str| grads.get(data[n].as_tensor()).map(max_abs).unwrap_or(0.0);
            (
                norm("cam.11.f_adaptation.weight"),
                norm("cam.11.f_reintegration.weight"),
                grads.get(hidden.as_tensor()).is_some(),
            )
        };
        // Fresh: f_reintegration learns first (f_adaptation's signal passes
        // through the zero f_reintegration).
        let (ga, gr, gh) = grad_norms(&s);
        assert!(gr > 0.0 && gh, "{ga} {gr}");
        assert_eq!(ga, 0.0);
        randomise(&s.varmap);
        let (ga, gr, _) = grad_norms(&s);
        assert!(ga > 0.0 && gr > 0.0, "{ga} {gr}");
    }

    #[test]
    fn without_guidance_there_is_no_f_adaptation() {
        let vm = VarMap::new();
        let vb = VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu);
        let cfg = CamConfig {
            layers: vec![1],
            guidance: false,
        };
        Cams::new(&cfg, D_LLM, 16, vb).unwrap();
        let mut names: Vec<String> = vm.data().lock().unwrap().keys().cloned().collect();
        names.sort();
        assert_eq!(
            names,
            ["cam.1.f_reintegration.bias", "cam.1.f_reintegration.weight"]
        );
    }

    #[test]
    fn bad_spans_and_indices_are_errors() {
        let s = setup();
        let hidden = Tensor::zeros((2, 12, D_LLM), DType::F32, &Device::Cpu).unwrap();
        let cam = s.cams.get(11).unwrap();
        let run = |idx: &[usize], sp: Vec<Vec<Span>>| {
            cam.apply(&hidden, idx, &sp, &s.x, &s.qformer, &s.queries)
                .unwrap_err()
                .to_string()
        };
        let e = run(&[11, 9], vec![vec![(2, 6), (7, 10)], vec![(1, 4), (4, 7)]]);
        assert!(e.contains("not 3 tokens long"), "{e}");
        let e = run(&[11, 9], vec![vec![(2, 5), (4, 7)], vec![(1, 4), (4, 7)]]);
        assert!(e.contains("overlap"), "{e}");
        let e = run(&[11, 9], vec![vec![(2, 5), (10, 13)], vec![(1, 4), (4, 7)]]);
        assert!(e.contains("ends past"), "{e}");
        let e = run(&[12, 9], spans());
        assert!(e.contains("outside the 12 tokens"), "{e}");
        let e = run(&[11], spans());
        assert!(e.contains("batch of 2"), "{e}");
        let e = run(&[11, 9], vec![vec![(2, 5)], vec![(1, 4)]]);
        assert!(e.contains("1 image spans for 2 images"), "{e}");
        let e = Cams::new(
            &CamConfig {
                layers: vec![3, 3],
                guidance: true,
            },
            D_LLM,
            16,
            VarBuilder::from_varmap(&VarMap::new(), DType::F32, &Device::Cpu),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("listed twice"), "{e}");
    }
}
