//! LLaMA self-attention (HF `LlamaAttention`, eager): q/k/v/o projections,
//! RoPE on queries and keys, grouped-query attention, causal + padding mask.
//!
//! Grouped-query attention does not copy the key/value heads: the
//! `n_rep = heads / kv_heads` query heads that share a key/value head are
//! stacked along the sequence axis, `(B, kv_heads, n_rep·T, d)`, and attend to
//! that head's keys directly — the same function as HF's `repeat_kv`.

use candle_core::{DType, Device, Result, Tensor};
use candle_nn::VarBuilder;
use rand::RngCore;

use calico_nn::attention::scaled_dot_product_attention;
use calico_nn::Linear;

use super::{rope, LlamaConfig, LoraSpec, QuantizedWeights};

/// Builds projection `name` under `base`, with a LoRA adapter under
/// `adapters` when the spec targets it. A weight found in `quantized` (under
/// its full name) is kept in its stored type; its bias, if any, still comes
/// from `base`.
pub(crate) fn projection(
    in_dim: usize,
    out_dim: usize,
    bias: bool,
    name: &str,
    base: &VarBuilder,
    quantized: Option<&QuantizedWeights>,
    lora: Option<(&LoraSpec, &VarBuilder)>,
) -> Result<Linear> {
    let vb = base.pp(name);
    let full = format!("{}.weight", vb.prefix());
    let layer = match quantized.and_then(|q| q.get(&full)) {
        Some(w) => {
            if w.shape().dims() != [out_dim, in_dim] {
                candle_core::bail!(
                    "quantized tensor `{full}` has shape {:?}, expected [{out_dim}, {in_dim}]",
                    w.shape().dims()
                );
            }
            let b = if bias {
                Some(vb.get(out_dim, "bias")?)
            } else {
                None
            };
            Linear::from_qtensor(
                w.clone(),
                b,
                quantized.map(|q| q.matmul).unwrap_or_default(),
            )?
        }
        None => Linear::new(in_dim, out_dim, bias, vb)?,
    };
    match lora {
        Some((spec, adapters)) if spec.targets(name) => {
            layer.with_lora(spec.layer_config(), adapters.pp(name))
        }
        _ => Ok(layer),
    }
}

/// Runs a projection; with an `rng` the LoRA input goes through dropout.
pub(crate) fn project(
    layer: &Linear,
    x: &Tensor,
    rng: &mut Option<&mut dyn RngCore>,
) -> Result<Tensor> {
    match rng.as_deref_mut() {
        Some(r) => layer.forward_train(x, &mut &mut *r),
        None => layer.forward(x),
    }
}

/// Per-forward inputs shared by every layer.
pub(crate) struct AttnContext {
    pub cos: Tensor,
    pub sin: Tensor,
    /// Additive mask broadcast against `(B, kv_heads, n_rep·T, S)`.
    pub mask: Option<Tensor>,
}

/// The most negative finite value of `dtype` (HF's `torch.finfo(dtype).min`).
fn min_value(dtype: DType) -> f64 {
    match dtype {
        DType::F16 => -65504.0,
        DType::BF16 => -3.3895313892515355e38,
        DType::F64 => f64::MIN,
        _ => f32::MIN as f64,
    }
}

/// The additive attention mask for `t` new queries at positions
/// `past..past+t` over `past + t` keys, its query rows repeated `n_rep`
/// times (see the module docs). Key `j` is visible to query `i` when
/// `j ≤ past + i` and, with a keep-mask, `keep[b][j]`. Masked entries get the
/// dtype's minimum, as HF's eager mask does (a query that sees no key, e.g. a
/// left-padding position, then attends uniformly, exactly like HF).
/// `None` when nothing is masked (one new token and no padding).
pub(crate) fn build_mask(
    keep: Option<&[Vec<bool>]>,
    t: usize,
    past: usize,
    n_rep: usize,
    dtype: DType,
    device: &Device,
) -> Result<Option<Tensor>> {
    let s = past + t;
    if keep.is_none() && t == 1 {
        return Ok(None);
    }
    let neg = min_value(dtype);
    let all = [vec![true; s]];
    let rows: &[Vec<bool>] = keep.unwrap_or(&all);
    let mut v = Vec::with_capacity(rows.len() * n_rep * t * s);
    for row in rows {
        for _ in 0..n_rep {
            for i in 0..t {
                v.extend((0..s).map(|j| if j <= past + i && row[j] { 0.0 } else { neg }));
            }
        }
    }
    let m = Tensor::from_vec(v, (rows.len(), 1, n_rep * t, s), device)?;
    Ok(Some(m.to_dtype(dtype)?))
}

/// One layer's self-attention (`model.layers.N.self_attn`).
#[derive(Debug, Clone)]
pub struct LlamaAttention {
    pub q_proj: Linear,
    pub k_proj: Linear,
    pub v_proj: Linear,
    pub o_proj: Linear,
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
}

impl LlamaAttention {
    /// `quantized` holds weights kept in their stored types (see
    /// [`QuantizedWeights`]).
    pub fn new(
        cfg: &LlamaConfig,
        base: VarBuilder,
        quantized: Option<&QuantizedWeights>,
        lora: Option<(&LoraSpec, &VarBuilder)>,
    ) -> Result<Self> {
        let (h, kvh, d) = (cfg.num_attention_heads, cfg.kv_heads(), cfg.head_dim());
        if kvh == 0 || h % kvh != 0 {
            candle_core::bail!(
                "LLaMA config: num_attention_heads ({h}) must be a multiple of num_key_value_heads ({kvh})"
            );
        }
        let hs = cfg.hidden_size;
        let b = cfg.attention_bias;
        Ok(Self {
            q_proj: projection(hs, h * d, b, "q_proj", &base, quantized, lora)?,
            k_proj: projection(hs, kvh * d, b, "k_proj", &base, quantized, lora)?,
            v_proj: projection(hs, kvh * d, b, "v_proj", &base, quantized, lora)?,
            o_proj: projection(h * d, hs, b, "o_proj", &base, quantized, lora)?,
            heads: h,
            kv_heads: kvh,
            head_dim: d,
        })
    }

    pub(crate) fn linears_mut(&mut self) -> [&mut Linear; 4] {
        [
            &mut self.q_proj,
            &mut self.k_proj,
            &mut self.v_proj,
            &mut self.o_proj,
        ]
    }

    /// `x` `(B, T, hidden)` → `(B, T, hidden)`. With a cache slot the new
    /// keys/values are appended to it and attention covers all of them.
    pub(crate) fn forward(
        &self,
        x: &Tensor,
        ctx: &AttnContext,
        cache: Option<&mut Option<(Tensor, Tensor)>>,
        rng: &mut Option<&mut dyn RngCore>,
    ) -> Result<Tensor> {
        let (b, t, _) = x.dims3()?;
        let (h, kvh, d) = (self.heads, self.kv_heads, self.head_dim);
        let q = project(&self.q_proj, x, rng)?
            .reshape((b, t, h, d))?
            .transpose(1, 2)?;
        let k = project(&self.k_proj, x, rng)?
            .reshape((b, t, kvh, d))?
            .transpose(1, 2)?;
        let v = project(&self.v_proj, x, rng)?
            .reshape((b, t, kvh, d))?
            .transpose(1, 2)?;
        let q = rope::apply(&q, &ctx.cos, &ctx.sin)?;
        let mut k = rope::apply(&k, &ctx.cos, &ctx.sin)?;
        let mut v = v.contiguous()?;
        if let Some(slot) = cache {
            if let Some((pk, pv)) = slot.as_ref() {
                k = Tensor::cat(&[pk, &k], 2)?;
                v = Tensor::cat(&[pv, &v], 2)?;
            }
            *slot = Some((k.clone(), v.clone()));
        }
        let n_rep = h / kvh;
        let q = q.reshape((b, kvh, n_rep * t, d))?;
        let y =
            scaled_dot_product_attention(&q, &k, &v, ctx.mask.as_ref(), 1.0 / (d as f64).sqrt())?;
        let y = y
            .reshape((b, h, t, d))?
            .transpose(1, 2)?
            .reshape((b, t, h * d))?;
        project(&self.o_proj, &y, rng)
    }
}
