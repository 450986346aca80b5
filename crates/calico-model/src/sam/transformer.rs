//! SAM's two-way transformer (Kirillov et al. 2023, §3 and App. A): the
//! prompt tokens and the image embedding take turns attending to each other.
//!
//! Each block runs (1) self-attention over the tokens, (2) tokens → image
//! cross-attention, (3) an MLP on the tokens and (4) image → tokens
//! cross-attention, every step followed by a residual add and a LayerNorm.
//! A last tokens → image attention and LayerNorm close the stack.
//! Positional encodings are re-added to queries and keys at every attention
//! (the first block's self-attention skips them: its tokens are the prompt
//! embeddings themselves).
//!
//! Tensor names are the original checkpoint's, under
//! `mask_decoder.transformer.`: `layers.N.{self_attn, norm1,
//! cross_attn_token_to_image, norm2, mlp.lin1, mlp.lin2, norm3, norm4,
//! cross_attn_image_to_token}`, `final_attn_token_to_image`,
//! `norm_final_attn`.

use calico_nn::attention::{merge_heads, scaled_dot_product_attention, split_heads};
use calico_nn::{LayerNorm, Linear};
use candle_core::{Result, Tensor};
use candle_nn::VarBuilder;
use serde::{Deserialize, Serialize};

/// `nn.LayerNorm`'s default epsilon, which SAM's transformer keeps.
const LAYER_NORM_EPS: f64 = 1e-5;

/// Sizes of the two-way transformer (SAM: depth 2, width 256, 8 heads,
/// MLP 2048, cross-attention downsampled ×2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TwoWayTransformerConfig {
    pub depth: usize,
    pub embedding_dim: usize,
    pub num_heads: usize,
    pub mlp_dim: usize,
    /// Cross-attention projects to `embedding_dim / attention_downsample_rate`
    /// channels.
    pub attention_downsample_rate: usize,
}

impl Default for TwoWayTransformerConfig {
    fn default() -> Self {
        Self {
            depth: 2,
            embedding_dim: 256,
            num_heads: 8,
            mlp_dim: 2048,
            attention_downsample_rate: 2,
        }
    }
}

/// Multi-head attention whose projections may shrink the width
/// (`q_proj`, `k_proj`, `v_proj`: `dim → dim / downsample_rate`;
/// `out_proj` back to `dim`).
#[derive(Debug, Clone)]
pub struct Attention {
    q_proj: Linear,
    k_proj: Linear,
    v_proj: Linear,
    out_proj: Linear,
    num_heads: usize,
    scale: f64,
}

impl Attention {
    pub fn new(
        embedding_dim: usize,
        num_heads: usize,
        downsample_rate: usize,
        vb: VarBuilder,
    ) -> Result<Self> {
        if downsample_rate == 0 || !embedding_dim.is_multiple_of(downsample_rate) {
            candle_core::bail!(
                "SAM attention: downsample rate {downsample_rate} does not divide width {embedding_dim}"
            );
        }
        let internal = embedding_dim / downsample_rate;
        if num_heads == 0 || !internal.is_multiple_of(num_heads) {
            candle_core::bail!(
                "SAM attention: {num_heads} heads do not divide the internal width {internal}"
            );
        }
        Ok(Self {
            q_proj: Linear::new(embedding_dim, internal, true, vb.pp("q_proj"))?,
            k_proj: Linear::new(embedding_dim, internal, true, vb.pp("k_proj"))?,
            v_proj: Linear::new(embedding_dim, internal, true, vb.pp("v_proj"))?,
            out_proj: Linear::new(internal, embedding_dim, true, vb.pp("out_proj"))?,
            num_heads,
            scale: 1.0 / ((internal / num_heads) as f64).sqrt(),
        })
    }

    /// `q` is `(B, Nq, dim)`, `k` and `v` are `(B, Nk, dim)`.
    pub fn forward(&self, q: &Tensor, k: &Tensor, v: &Tensor) -> Result<Tensor> {
        // Contiguous inputs: candle 0.11's `Linear` gives wrong results for a
        // transposed 3-d input with batch > 1 (a no-op when already so).
        let project = |proj: &Linear, x: &Tensor| -> Result<Tensor> {
            split_heads(&proj.forward(&x.contiguous()?)?, self.num_heads)
        };
        let q = project(&self.q_proj, q)?;
        let k = project(&self.k_proj, k)?;
        let v = project(&self.v_proj, v)?;
        let out = scaled_dot_product_attention(&q, &k, &v, None, self.scale)?;
        self.out_proj.forward(&merge_heads(&out)?)
    }
}

/// The token MLP (`lin1`, ReLU, `lin2`).
#[derive(Debug, Clone)]
struct MlpBlock {
    lin1: Linear,
    lin2: Linear,
}

impl MlpBlock {
    fn new(dim: usize, hidden: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            lin1: Linear::new(dim, hidden, true, vb.pp("lin1"))?,
            lin2: Linear::new(hidden, dim, true, vb.pp("lin2"))?,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.lin2.forward(&self.lin1.forward(x)?.relu()?)
    }
}

/// One block of the two-way transformer.
#[derive(Debug, Clone)]
pub struct TwoWayAttentionBlock {
    self_attn: Attention,
    norm1: LayerNorm,
    cross_attn_token_to_image: Attention,
    norm2: LayerNorm,
    mlp: MlpBlock,
    norm3: LayerNorm,
    norm4: LayerNorm,
    cross_attn_image_to_token: Attention,
    skip_first_layer_pe: bool,
}

impl TwoWayAttentionBlock {
    pub fn new(
        cfg: &TwoWayTransformerConfig,
        skip_first_layer_pe: bool,
        vb: VarBuilder,
    ) -> Result<Self> {
        let d = cfg.embedding_dim;
        let rate = cfg.attention_downsample_rate;
        Ok(Self {
            self_attn: Attention::new(d, cfg.num_heads, 1, vb.pp("self_attn"))?,
            norm1: LayerNorm::new(d, LAYER_NORM_EPS, vb.pp("norm1"))?,
            cross_attn_token_to_image: Attention::new(
                d,
                cfg.num_heads,
                rate,
                vb.pp("cross_attn_token_to_image"),
            )?,
            norm2: LayerNorm::new(d, LAYER_NORM_EPS, vb.pp("norm2"))?,
            mlp: MlpBlock::new(d, cfg.mlp_dim, vb.pp("mlp"))?,
            norm3: LayerNorm::new(d, LAYER_NORM_EPS, vb.pp("norm3"))?,
            norm4: LayerNorm::new(d, LAYER_NORM_EPS, vb.pp("norm4"))?,
            cross_attn_image_to_token: Attention::new(
                d,
                cfg.num_heads,
                rate,
                vb.pp("cross_attn_image_to_token"),
            )?,
            skip_first_layer_pe,
        })
    }

    /// Updates `(queries, keys)`: tokens `(B, N, C)` with their positional
    /// part `query_pe`, image tokens `(B, HW, C)` with `key_pe`.
    pub fn forward(
        &self,
        queries: &Tensor,
        keys: &Tensor,
        query_pe: &Tensor,
        key_pe: &Tensor,
    ) -> Result<(Tensor, Tensor)> {
        // (1) token self-attention.
        let queries = if self.skip_first_layer_pe {
            self.self_attn.forward(queries, queries, queries)?
        } else {
            let q = (queries + query_pe)?;
            (queries + self.self_attn.forward(&q, &q, queries)?)?
        };
        let queries = self.norm1.forward(&queries)?;

        // (2) tokens attend to the image.
        let q = (&queries + query_pe)?;
        let k = (keys + key_pe)?;
        let attn = self.cross_attn_token_to_image.forward(&q, &k, keys)?;
        let queries = self.norm2.forward(&(queries + attn)?)?;

        // (3) token MLP.
        let queries = self
            .norm3
            .forward(&(&queries + self.mlp.forward(&queries)?)?)?;

        // (4) the image attends to the tokens.
        let q = (&queries + query_pe)?;
        let attn = self.cross_attn_image_to_token.forward(&k, &q, &queries)?;
        let keys = self.norm4.forward(&(keys + attn)?)?;
        Ok((queries, keys))
    }
}

/// The full two-way transformer.
#[derive(Debug, Clone)]
pub struct TwoWayTransformer {
    layers: Vec<TwoWayAttentionBlock>,
    final_attn_token_to_image: Attention,
    norm_final_attn: LayerNorm,
    cfg: TwoWayTransformerConfig,
}

impl TwoWayTransformer {
    pub fn new(cfg: &TwoWayTransformerConfig, vb: VarBuilder) -> Result<Self> {
        let layers = (0..cfg.depth)
            .map(|i| TwoWayAttentionBlock::new(cfg, i == 0, vb.pp("layers").pp(i)))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            layers,
            final_attn_token_to_image: Attention::new(
                cfg.embedding_dim,
                cfg.num_heads,
                cfg.attention_downsample_rate,
                vb.pp("final_attn_token_to_image"),
            )?,
            norm_final_attn: LayerNorm::new(
                cfg.embedding_dim,
                LAYER_NORM_EPS,
                vb.pp("norm_final_attn"),
            )?,
            cfg: *cfg,
        })
    }

    pub fn config(&self) -> &TwoWayTransformerConfig {
        &self.cfg
    }

    /// `image_embedding` and `image_pe` are `(B, C, H, W)`, `point_embedding`
    /// is `(B, N, C)`. Returns the updated tokens `(B, N, C)` and image tokens
    /// `(B, HW, C)`.
    pub fn forward(
        &self,
        image_embedding: &Tensor,
        image_pe: &Tensor,
        point_embedding: &Tensor,
    ) -> Result<(Tensor, Tensor)> {
        let (b, c, _, _) = image_embedding.dims4()?;
        if c != self.cfg.embedding_dim {
            candle_core::bail!(
                "SAM two-way transformer: image embedding has {c} channels, expected {}",
                self.cfg.embedding_dim
            );
        }
        if image_pe.dims() != image_embedding.dims() {
            candle_core::bail!(
                "SAM two-way transformer: positional encoding has shape {:?}, expected the image embedding's {:?}",
                image_pe.dims(),
                image_embedding.dims()
            );
        }
        let (pb, _, pc) = point_embedding.dims3()?;
        if pb != b || pc != c {
            candle_core::bail!(
                "SAM two-way transformer: tokens have shape {:?}, expected ({b}, N, {c})",
                point_embedding.dims()
            );
        }
        // (B, C, H, W) → (B, HW, C), contiguous (see `Attention::forward`).
        let keys = image_embedding
            .flatten_from(2)?
            .transpose(1, 2)?
            .contiguous()?;
        let key_pe = image_pe.flatten_from(2)?.transpose(1, 2)?.contiguous()?;
        let mut queries = point_embedding.clone();
        let mut keys = keys;
        for layer in &self.layers {
            (queries, keys) = layer.forward(&queries, &keys, point_embedding, &key_pe)?;
        }
        let q = (&queries + point_embedding)?;
        let k = (&keys + &key_pe)?;
        let attn = self.final_attn_token_to_image.forward(&q, &k, &keys)?;
        let queries = self.norm_final_attn.forward(&(queries + attn)?)?;
        Ok((queries, keys))
    }
}
