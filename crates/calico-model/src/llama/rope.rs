//! Rotary position embedding tables (§3.2, LLaMA's RoPE in HF's
//! "rotate half" layout).
//!
//! Like HF `LlamaRotaryEmbedding`, everything is computed in f32:
//! `inv_freq[i] = 1 / θ^(2i / d)`, `angle = position · inv_freq`, and the
//! tables are `cos(angle)`, `sin(angle)` for the `d / 2` frequencies
//! (candle's rope kernel repeats them over the two halves).

use candle_core::{DType, Device, Result, Tensor};

use super::LlamaConfig;

/// The inverse frequencies of one head.
#[derive(Debug, Clone)]
pub struct Rotary {
    inv_freq: Vec<f32>,
}

/// Token positions for a forward pass: either one list shared by every batch
/// row, or one list per row (left padding, per-row cache offsets).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Positions {
    Shared(Vec<usize>),
    PerRow(Vec<Vec<usize>>),
}

impl Positions {
    /// Collapses per-row positions that happen to be identical.
    pub fn normalised(self) -> Self {
        match self {
            Positions::PerRow(rows)
                if rows.windows(2).all(|w| w[0] == w[1]) && !rows.is_empty() =>
            {
                Positions::Shared(rows.into_iter().next().unwrap_or_default())
            }
            p => p,
        }
    }
}

impl Rotary {
    pub fn new(cfg: &LlamaConfig) -> Result<Self> {
        let theta = cfg.rope()? as f32;
        let d = cfg.head_dim();
        if !d.is_multiple_of(2) {
            candle_core::bail!("LLaMA head_dim must be even for RoPE, got {d}");
        }
        let inv_freq = (0..d / 2)
            .map(|i| 1.0f32 / theta.powf((2 * i) as f32 / d as f32))
            .collect();
        Ok(Self { inv_freq })
    }

    fn table(&self, positions: &[usize], out_cos: &mut Vec<f32>, out_sin: &mut Vec<f32>) {
        for &p in positions {
            let p = p as f32;
            for &f in &self.inv_freq {
                let a = p * f;
                out_cos.push(a.cos());
                out_sin.push(a.sin());
            }
        }
    }

    /// `(cos, sin)` of shape `(T, d/2)` for shared positions or
    /// `(B, T, d/2)` for per-row positions.
    pub fn cos_sin(
        &self,
        positions: &Positions,
        dtype: DType,
        device: &Device,
    ) -> Result<(Tensor, Tensor)> {
        let half = self.inv_freq.len();
        let (mut cos, mut sin) = (Vec::new(), Vec::new());
        let shape: Vec<usize> = match positions {
            Positions::Shared(p) => {
                self.table(p, &mut cos, &mut sin);
                vec![p.len(), half]
            }
            Positions::PerRow(rows) => {
                let t = rows.first().map_or(0, |r| r.len());
                for r in rows {
                    if r.len() != t {
                        candle_core::bail!("per-row positions must all have the same length");
                    }
                    self.table(r, &mut cos, &mut sin);
                }
                vec![rows.len(), t, half]
            }
        };
        let cos = Tensor::from_vec(cos, shape.as_slice(), device)?.to_dtype(dtype)?;
        let sin = Tensor::from_vec(sin, shape.as_slice(), device)?.to_dtype(dtype)?;
        Ok((cos, sin))
    }
}

/// Applies RoPE to `x` `(B, heads, T, d)` through `calico_nn::ops::rope`
/// (fused without gradients). Per-row tables `(B, T, d/2)` go to the fused
/// kernel directly; with gradients each row is rotated with its own 2-D
/// table, since the differentiable path takes `(T, d/2)` tables only.
pub fn apply(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    if cos.rank() == 2 || !calico_nn::ops::needs_grad(&[x, cos, sin]) {
        return calico_nn::ops::rope(x, cos, sin);
    }
    let b = x.dim(0)?;
    let rows = (0..b)
        .map(|i| {
            calico_nn::ops::rope(
                &x.narrow(0, i, 1)?,
                &cos.get(i)?.contiguous()?,
                &sin.get(i)?.contiguous()?,
            )
        })
        .collect::<Result<Vec<_>>>()?;
    Tensor::cat(&rows, 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Var;

    #[test]
    fn per_row_tables_match_shared_tables_with_and_without_gradients() {
        let cfg = LlamaConfig {
            hidden_size: 16,
            num_attention_heads: 2,
            ..LlamaConfig::vicuna_7b()
        };
        let r = Rotary::new(&cfg).unwrap();
        let dev = Device::Cpu;
        let x = Tensor::randn(0f32, 1.0, (2, 2, 3, 8), &dev).unwrap();
        let rows = vec![vec![4, 5, 6], vec![0, 1, 2]];
        let (c3, s3) = r
            .cos_sin(&Positions::PerRow(rows.clone()), DType::F32, &dev)
            .unwrap();
        let fused = apply(&x, &c3, &s3).unwrap();
        let xv = Var::from_tensor(&x).unwrap();
        let slow = apply(xv.as_tensor(), &c3, &s3).unwrap();
        for (i, row) in rows.into_iter().enumerate() {
            let (c, s) = r
                .cos_sin(&Positions::Shared(row), DType::F32, &dev)
                .unwrap();
            let want = apply(&x.narrow(0, i, 1).unwrap(), &c, &s).unwrap();
            for got in [&fused, &slow] {
                let d = (got.narrow(0, i, 1).unwrap() - &want)
                    .unwrap()
                    .abs()
                    .unwrap()
                    .max_all()
                    .unwrap()
                    .to_scalar::<f32>()
                    .unwrap();
                assert!(d < 1e-5, "{d}");
            }
        }
        // Position 0 is the identity.
        let (c, s) = r
            .cos_sin(&Positions::Shared(vec![0]), DType::F32, &dev)
            .unwrap();
        let x0 = x.narrow(2, 0, 1).unwrap().contiguous().unwrap();
        let y0 = apply(&x0, &c, &s).unwrap();
        let d = (y0 - &x0)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert_eq!(d, 0.0);
    }
}
