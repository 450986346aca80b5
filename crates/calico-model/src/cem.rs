//! The Correspondence Extraction Module (CEM, §3.3, eq. 4–6).
//!
//! Multi-head cross-attention 𝒜 from the EVA-CLIP tokens X_global (the
//! queries, `(B, N_g, D_g)`, taken after `ln_vision`) to the DINOv2 tokens
//! X_semantic (keys and values, `(B, N_s, D_s)`), with a residual:
//!
//! ```text
//! X′_global = X_global + out_proj(MHA(q_proj(X_global), k_proj(X_semantic), v_proj(X_semantic)))
//! ```
//!
//! The output has X_global's shape, so the Q-Former (which was trained on
//! `ln_vision` tokens) reads X′_global in their place.
//!
//! Choices the paper leaves open (eq. 6 writes only X′_global =
//! 𝒜(X_global, X_semantic); the released code is not available, anchors
//! §1.4):
//!
//! * **Residual.** X′_global keeps X_global and adds the attended DINOv2
//!   information. With [`CemConfig::zero_init_output`] (the default) the
//!   output projection starts at zero, so a fresh CEM is the identity and the
//!   pretrained Q-Former initially sees exactly the tokens it was trained on
//!   (VPG-C's `zero_module` idea, which CAM also uses).
//! * **No LayerNorm by default.** The paper mentions none, X_global is
//!   already the output of `ln_vision`, and the DINOv2 features are taken
//!   after DINOv2's final LayerNorm (`CalicoConfig::dinov2_final_norm`).
//!   [`CemConfig::layer_norm`] adds pre-norms on both inputs
//!   (`cem.norm_global`, `cem.norm_semantic`) for features that are not
//!   normalised.
//! * **Width and heads.** q/k/v project to `hidden_size` (default D_g, the
//!   EVA width) split over `num_attention_heads` (paper preset: 16, EVA's
//!   own head count); `out_proj` maps back to D_g.
//!
//! Tensor names are ours (no released checkpoint has a CEM):
//! `cem.{q_proj,k_proj,v_proj,out_proj}.{weight,bias}` and, with
//! `layer_norm`, `cem.{norm_global,norm_semantic}.{weight,bias}`.

use std::collections::BTreeMap;

use calico_nn::attention::{merge_heads, scaled_dot_product_attention, split_heads};
use calico_nn::{LayerNorm, Linear};
use candle_core::{DType, Device, Result, Tensor};
use candle_nn::VarBuilder;
use serde::{Deserialize, Serialize};

use crate::load::Checkpoint;
use crate::parity::Case;

/// CEM hyper-parameters. The input widths come from the EVA and DINOv2
/// configs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CemConfig {
    /// Attention heads.
    pub num_attention_heads: usize,
    /// Width of the attention (q, k, v); `None` means the EVA width D_g.
    pub hidden_size: Option<usize>,
    /// Pre-LayerNorm on X_global and X_semantic.
    pub layer_norm: bool,
    pub layer_norm_eps: f64,
    /// Create `out_proj` at zero (the module starts as the identity). Only
    /// affects fresh weights; a checkpoint's values are used as stored.
    pub zero_init_output: bool,
}

impl Default for CemConfig {
    fn default() -> Self {
        Self {
            num_attention_heads: 16,
            hidden_size: None,
            layer_norm: false,
            layer_norm_eps: 1e-6,
            zero_init_output: true,
        }
    }
}

impl CemConfig {
    /// The attention width for EVA tokens of width `d_global`.
    pub fn attention_width(&self, d_global: usize) -> usize {
        self.hidden_size.unwrap_or(d_global)
    }

    /// Checks the head split for EVA tokens of width `d_global`.
    pub fn validate(&self, d_global: usize) -> Result<()> {
        let a = self.attention_width(d_global);
        if a == 0 || self.num_attention_heads == 0 || !a.is_multiple_of(self.num_attention_heads) {
            candle_core::bail!(
                "CemConfig: attention width {a} is not a positive multiple of num_attention_heads {}",
                self.num_attention_heads
            );
        }
        Ok(())
    }
}

/// The CEM cross-attention 𝒜 with its residual.
#[derive(Debug, Clone)]
pub struct Cem {
    norm_global: Option<LayerNorm>,
    norm_semantic: Option<LayerNorm>,
    q_proj: Linear,
    k_proj: Linear,
    v_proj: Linear,
    out_proj: Linear,
    num_heads: usize,
    d_global: usize,
    d_semantic: usize,
    scale: f64,
}

impl Cem {
    /// Builds the module from `vb` positioned at `cem` for EVA tokens of
    /// width `d_global` and DINOv2 tokens of width `d_semantic`.
    pub fn new(
        cfg: &CemConfig,
        d_global: usize,
        d_semantic: usize,
        vb: VarBuilder,
    ) -> Result<Self> {
        cfg.validate(d_global)?;
        let a = cfg.attention_width(d_global);
        let (norm_global, norm_semantic) = if cfg.layer_norm {
            (
                Some(LayerNorm::new(
                    d_global,
                    cfg.layer_norm_eps,
                    vb.pp("norm_global"),
                )?),
                Some(LayerNorm::new(
                    d_semantic,
                    cfg.layer_norm_eps,
                    vb.pp("norm_semantic"),
                )?),
            )
        } else {
            (None, None)
        };
        let out_proj = if cfg.zero_init_output {
            Linear::zeros(a, d_global, true, vb.pp("out_proj"))?
        } else {
            Linear::new(a, d_global, true, vb.pp("out_proj"))?
        };
        Ok(Self {
            norm_global,
            norm_semantic,
            q_proj: Linear::new(d_global, a, true, vb.pp("q_proj"))?,
            k_proj: Linear::new(d_semantic, a, true, vb.pp("k_proj"))?,
            v_proj: Linear::new(d_semantic, a, true, vb.pp("v_proj"))?,
            out_proj,
            num_heads: cfg.num_attention_heads,
            d_global,
            d_semantic,
            scale: ((a / cfg.num_attention_heads) as f64).powf(-0.5),
        })
    }

    fn check(&self, x_global: &Tensor, x_semantic: &Tensor) -> Result<()> {
        let g = x_global.dims();
        let s = x_semantic.dims();
        if g.len() != 3 || g[2] != self.d_global {
            candle_core::bail!(
                "CEM: expected x_global of shape (batch, tokens, {}), got {g:?}",
                self.d_global
            );
        }
        if s.len() != 3 || s[2] != self.d_semantic || s[0] != g[0] {
            candle_core::bail!(
                "CEM: expected x_semantic of shape ({}, tokens, {}), got {s:?}",
                g[0],
                self.d_semantic
            );
        }
        if s[1] == 0 {
            candle_core::bail!("CEM: x_semantic has no tokens");
        }
        Ok(())
    }

    /// 𝒜(X_global, X_semantic) alone, `(B, N_g, D_g)`.
    pub fn attend(&self, x_global: &Tensor, x_semantic: &Tensor) -> Result<Tensor> {
        self.check(x_global, x_semantic)?;
        let (q_in, kv_in) = match (&self.norm_global, &self.norm_semantic) {
            (Some(ng), Some(ns)) => (ng.forward(x_global)?, ns.forward(x_semantic)?),
            _ => (x_global.clone(), x_semantic.clone()),
        };
        let h = self.num_heads;
        let q = split_heads(&self.q_proj.forward(&q_in)?, h)?;
        let k = split_heads(&self.k_proj.forward(&kv_in)?, h)?;
        let v = split_heads(&self.v_proj.forward(&kv_in)?, h)?;
        let o = scaled_dot_product_attention(&q, &k, &v, None, self.scale)?;
        self.out_proj.forward(&merge_heads(&o)?)
    }

    /// X′_global = X_global + 𝒜(X_global, X_semantic): `x_global`
    /// `(B, N_g, D_g)`, `x_semantic` `(B, N_s, D_s)` → `(B, N_g, D_g)`.
    pub fn forward(&self, x_global: &Tensor, x_semantic: &Tensor) -> Result<Tensor> {
        x_global + self.attend(x_global, x_semantic)?
    }
}

/// Parity replay. Config: `cem` (a [`CemConfig`]), `d_global`,
/// `d_semantic`. Inputs: `x_global`, `x_semantic`. Output:
/// `x_global_fused` (X′_global).
pub fn parity_forward(
    case: &Case,
    ckpt: &Checkpoint,
    device: &Device,
) -> Result<BTreeMap<String, Tensor>> {
    let field = |k: &str| {
        case.config.get(k).cloned().ok_or_else(|| {
            candle_core::Error::Msg(format!("{}: config has no `{k}`", case.path.display()))
        })
    };
    let dim = |k: &str| -> Result<usize> {
        field(k)?.as_u64().map(|v| v as usize).ok_or_else(|| {
            candle_core::Error::Msg(format!(
                "{}: config `{k}` is not a number",
                case.path.display()
            ))
        })
    };
    let cfg: CemConfig = serde_json::from_value(field("cem")?).map_err(|e| {
        candle_core::Error::Msg(format!("{}: config `cem`: {e}", case.path.display()))
    })?;
    let vb = ckpt.var_builder(DType::F32, device);
    let cem = Cem::new(&cfg, dim("d_global")?, dim("d_semantic")?, vb.pp("cem"))?;
    let xg = case.input("x_global")?.to_device(device)?;
    let xs = case.input("x_semantic")?.to_device(device)?;
    let mut out = BTreeMap::new();
    out.insert("x_global_fused".to_string(), cem.forward(&xg, &xs)?);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device, Var};
    use candle_nn::VarMap;

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

    fn build(cfg: &CemConfig, varmap: &VarMap) -> Cem {
        let vb = VarBuilder::from_varmap(varmap, DType::F32, &Device::Cpu);
        Cem::new(cfg, 16, 12, vb.pp("cem")).unwrap()
    }

    #[test]
    fn fresh_cem_is_the_identity_and_names_are_ours() {
        let varmap = VarMap::new();
        let cem = build(&CemConfig::default_for_tests(), &varmap);
        let mut names: Vec<String> = varmap.data().lock().unwrap().keys().cloned().collect();
        names.sort();
        assert_eq!(
            names,
            [
                "cem.k_proj.bias",
                "cem.k_proj.weight",
                "cem.out_proj.bias",
                "cem.out_proj.weight",
                "cem.q_proj.bias",
                "cem.q_proj.weight",
                "cem.v_proj.bias",
                "cem.v_proj.weight",
            ]
        );
        let xg = Tensor::randn(0f32, 1.0, (2, 5, 16), &Device::Cpu).unwrap();
        let xs = Tensor::randn(0f32, 1.0, (2, 7, 12), &Device::Cpu).unwrap();
        let y = cem.forward(&xg, &xs).unwrap();
        assert_eq!(y.dims(), &[2, 5, 16]);
        assert_eq!(max_abs(&(&y - &xg).unwrap()), 0.0);
    }

    impl CemConfig {
        fn default_for_tests() -> Self {
            Self {
                num_attention_heads: 4,
                ..Self::default()
            }
        }
    }

    #[test]
    fn output_depends_on_the_semantic_tokens_and_matches_a_hand_computation() {
        // One head, identity projections: the attention is softmax(q·kᵀ/√d) v.
        let dev = Device::Cpu;
        let eye = |n: usize| Tensor::eye(n, DType::F32, &dev).unwrap();
        let zeros = |n: usize| Tensor::zeros(n, DType::F32, &dev).unwrap();
        let lin = |n: usize| Linear::from_tensors(eye(n), Some(zeros(n)));
        let cem = Cem {
            norm_global: None,
            norm_semantic: None,
            q_proj: lin(2),
            k_proj: lin(2),
            v_proj: lin(2),
            out_proj: lin(2),
            num_heads: 1,
            d_global: 2,
            d_semantic: 2,
            scale: 0.5f64.sqrt(),
        };
        let xg = Tensor::new(&[[[1.0f32, 0.0]]], &dev).unwrap();
        let xs = Tensor::new(&[[[1.0f32, 0.0], [0.0, 1.0]]], &dev).unwrap();
        let y: Vec<f32> = cem
            .forward(&xg, &xs)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let s = 0.5f32.sqrt();
        let w0 = s.exp() / (s.exp() + 1.0);
        assert!((y[0] - (1.0 + w0)).abs() < 1e-5, "{y:?}");
        assert!((y[1] - (1.0 - w0)).abs() < 1e-5, "{y:?}");
    }

    #[test]
    fn gradients_reach_every_parameter_once_out_proj_is_non_zero() {
        let varmap = VarMap::new();
        let cfg = CemConfig {
            layer_norm: true,
            zero_init_output: false,
            ..CemConfig::default_for_tests()
        };
        let cem = build(&cfg, &varmap);
        assert_eq!(varmap.all_vars().len(), 12);
        let xg = Var::randn(0f32, 1.0, (2, 5, 16), &Device::Cpu).unwrap();
        let xs = Tensor::randn(0f32, 1.0, (2, 7, 12), &Device::Cpu).unwrap();
        let y = cem.forward(xg.as_tensor(), &xs).unwrap();
        let grads = y.sqr().unwrap().sum_all().unwrap().backward().unwrap();
        for (name, var) in varmap.data().lock().unwrap().iter() {
            let g = grads
                .get(var.as_tensor())
                .unwrap_or_else(|| panic!("no gradient for {name}"));
            assert!(max_abs(g) > 0.0, "zero gradient for {name}");
        }
        assert!(grads.get(xg.as_tensor()).is_some());
    }

    #[test]
    fn zero_initialised_cem_trains_its_output_projection_first() {
        let varmap = VarMap::new();
        let cem = build(&CemConfig::default_for_tests(), &varmap);
        let xg = Tensor::randn(0f32, 1.0, (1, 3, 16), &Device::Cpu).unwrap();
        let xs = Tensor::randn(0f32, 1.0, (1, 4, 12), &Device::Cpu).unwrap();
        let y = cem.forward(&xg, &xs).unwrap();
        let grads = y.sum_all().unwrap().backward().unwrap();
        let data = varmap.data().lock().unwrap();
        let g = grads
            .get(data["cem.out_proj.weight"].as_tensor())
            .expect("gradient for out_proj");
        assert!(max_abs(g) > 0.0);
    }

    #[test]
    fn bad_shapes_are_errors_naming_the_expected_shape() {
        let varmap = VarMap::new();
        let cem = build(&CemConfig::default_for_tests(), &varmap);
        let xg = Tensor::zeros((2, 5, 16), DType::F32, &Device::Cpu).unwrap();
        let bad = Tensor::zeros((2, 7, 10), DType::F32, &Device::Cpu).unwrap();
        let e = cem.forward(&xg, &bad).unwrap_err().to_string();
        assert!(e.contains("(2, tokens, 12)"), "{e}");
        let e = cem.forward(&bad, &bad).unwrap_err().to_string();
        assert!(e.contains("(batch, tokens, 16)"), "{e}");
        let e = Cem::new(
            &CemConfig {
                num_attention_heads: 5,
                ..CemConfig::default()
            },
            16,
            12,
            VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("num_attention_heads 5"), "{e}");
    }
}
