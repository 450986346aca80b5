//! SAM's image encoder (Kirillov et al. 2023, §3 "Image encoder"): a plain
//! ViT in the ViTDet style. Non-overlapping patches are embedded and given
//! an absolute position embedding; most blocks attend inside local windows
//! (the token grid is zero-padded to a multiple of the window), a few at
//! fixed indexes attend globally; every attention map gets MViTv2's
//! decomposed relative position terms. A neck (1×1 conv, LayerNorm2d,
//! 3×3 conv, LayerNorm2d) maps the grid to 256 channels.
//!
//! Tensor names are the original checkpoint's below `image_encoder.`:
//! `patch_embed.proj`, `pos_embed`, `blocks.N.{norm1, attn.qkv, attn.proj,
//! attn.rel_pos_h, attn.rel_pos_w, norm2, mlp.lin1, mlp.lin2}`,
//! `neck.{0,1,2,3}`. With `conv_stem` (not in SAM, for encoders trained
//! from scratch) `patch_embed.stem.*` replaces `patch_embed.proj`.
//!
//! Inside the blocks the activations stay channels-last, `(B, H, W, C)`,
//! so every projection is one contiguous matmul and windows are a batch
//! dimension.

use std::collections::BTreeMap;

use calico_nn::attention::scaled_dot_product_attention;
use calico_nn::norm::LayerNorm2d;
use calico_nn::ops::{layer_norm, needs_grad};
use calico_nn::{Activation, LayerNorm, Linear};
use candle_core::{DType, Device, Result, Tensor};
use candle_nn::VarBuilder;
use serde::{Deserialize, Serialize};

use super::postprocess::linear_resize_matrix;
use crate::load::Checkpoint;
use crate::parity::Case;

/// LayerNorm epsilon of every norm in the encoder (blocks and neck).
const LN_EPS: f64 = 1e-6;

/// Hyper-parameters of [`ImageEncoderViT`], named like the arguments of the
/// reference `ImageEncoderViT`. The defaults are SAM ViT-H (LISA's and
/// GLaMM's grounding encoder).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SamEncoderConfig {
    /// Side of the square input image in pixels (1024).
    pub img_size: usize,
    /// Side of a patch (16).
    pub patch_size: usize,
    pub embed_dim: usize,
    /// Number of transformer blocks.
    pub depth: usize,
    pub num_heads: usize,
    /// MLP hidden width over `embed_dim`.
    pub mlp_ratio: f64,
    /// Channels of the output embedding (256, the prompt dimension).
    pub out_chans: usize,
    pub qkv_bias: bool,
    /// Add decomposed relative position terms to every attention map.
    pub use_rel_pos: bool,
    /// Side of the attention windows in tokens; 0 makes every block global.
    pub window_size: usize,
    /// Blocks that attend over the whole grid.
    pub global_attn_indexes: Vec<usize>,
    /// Channels of a convolutional stem replacing the patch projection
    /// (`patch_size` must be `2^stages`), for encoders trained from scratch;
    /// see [`crate::conv_stem`]. Not in SAM; off unless a config sets it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub conv_stem: Option<Vec<usize>>,
}

impl Default for SamEncoderConfig {
    fn default() -> Self {
        Self::vit_h()
    }
}

impl SamEncoderConfig {
    fn sam(embed_dim: usize, depth: usize, num_heads: usize, global: [usize; 4]) -> Self {
        Self {
            img_size: 1024,
            patch_size: 16,
            embed_dim,
            depth,
            num_heads,
            mlp_ratio: 4.0,
            out_chans: 256,
            qkv_bias: true,
            use_rel_pos: true,
            window_size: 14,
            global_attn_indexes: global.to_vec(),
            conv_stem: None,
        }
    }

    /// SAM ViT-H (`sam_vit_h_4b8939.pth`).
    pub fn vit_h() -> Self {
        Self::sam(1280, 32, 16, [7, 15, 23, 31])
    }

    /// SAM ViT-L (`sam_vit_l_0b3195.pth`).
    pub fn vit_l() -> Self {
        Self::sam(1024, 24, 16, [5, 11, 17, 23])
    }

    /// SAM ViT-B (`sam_vit_b_01ec64.pth`).
    pub fn vit_b() -> Self {
        Self::sam(768, 12, 12, [2, 5, 8, 11])
    }

    /// Side of the token grid, `img_size / patch_size`.
    pub fn grid_size(&self) -> usize {
        self.img_size / self.patch_size
    }

    fn validate(&self) -> Result<()> {
        if self.patch_size == 0
            || !self.img_size.is_multiple_of(self.patch_size)
            || self.img_size == 0
        {
            candle_core::bail!(
                "SAM image encoder: img_size {} must be a positive multiple of patch_size {}",
                self.img_size,
                self.patch_size
            );
        }
        if self.num_heads == 0 || !self.embed_dim.is_multiple_of(self.num_heads) {
            candle_core::bail!(
                "SAM image encoder: embed_dim {} must be a multiple of num_heads {}",
                self.embed_dim,
                self.num_heads
            );
        }
        if let Some(i) = self.global_attn_indexes.iter().find(|&&i| i >= self.depth) {
            candle_core::bail!(
                "SAM image encoder: global attention index {i} is not below depth {}",
                self.depth
            );
        }
        if let Some(ch) = &self.conv_stem {
            crate::conv_stem::ConvStem::check_patch(ch, self.patch_size, "SAM image encoder")?;
        }
        Ok(())
    }
}

/// Patch embedding: a `patch × patch` convolution with stride `patch`
/// (`patch_embed.proj`), computed as one matmul over flattened patches.
#[derive(Debug, Clone)]
struct PatchEmbed {
    /// `(embed_dim, 3 · patch²)`, the conv kernel flattened.
    proj: Linear,
    patch: usize,
}

impl PatchEmbed {
    fn new(patch: usize, embed_dim: usize, vb: VarBuilder) -> Result<Self> {
        let vb = vb.pp("proj");
        let w = vb.get((embed_dim, 3, patch, patch), "weight")?;
        let b = vb.get(embed_dim, "bias")?;
        let w = w.reshape((embed_dim, 3 * patch * patch))?;
        Ok(Self {
            proj: Linear::from_tensors(w, Some(b)),
            patch,
        })
    }

    /// `(B, 3, H, W)` → `(B, H/p, W/p, C)`.
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (b, c, h, w) = x.dims4()?;
        let p = self.patch;
        let (gh, gw) = (h / p, w / p);
        let patches = x
            .reshape((b, c, gh, p, gw, p))?
            .permute((0, 2, 4, 1, 3, 5))?
            .contiguous()?
            .reshape((b, gh, gw, c * p * p))?;
        self.proj.forward(&patches)
    }
}

/// Resizes a relative-position table `(L, C)` to `len` rows by linear
/// interpolation along the rows (half-pixel centres), as the reference does
/// when a checkpoint's table was trained for another size.
fn resize_rel_pos(rel_pos: &Tensor, len: usize) -> Result<Tensor> {
    let l = rel_pos.dim(0)?;
    if l == len {
        return Ok(rel_pos.clone());
    }
    let m = linear_resize_matrix(l, len, rel_pos.device())?.to_dtype(rel_pos.dtype())?;
    m.matmul(rel_pos)
}

/// The relative-position embedding for every (query, key) pair along one
/// axis: `(q_size, k_size, C)`, row `(i, j)` being the table entry for the
/// offset between query coordinate `i` and key coordinate `j` (coordinates
/// of the shorter side are stretched to the longer one).
pub fn get_rel_pos(q_size: usize, k_size: usize, rel_pos: &Tensor) -> Result<Tensor> {
    let max_dist = 2 * q_size.max(k_size) - 1;
    let table = resize_rel_pos(rel_pos, max_dist)?;
    // The reference computes these coordinates in f32 and truncates.
    let q_scale = (k_size as f32 / q_size as f32).max(1.0);
    let k_scale = (q_size as f32 / k_size as f32).max(1.0);
    let offset = (k_size as f32 - 1.0) * k_scale;
    let mut idx = Vec::with_capacity(q_size * k_size);
    for i in 0..q_size {
        for j in 0..k_size {
            let c = (i as f32 * q_scale - j as f32 * k_scale) + offset;
            idx.push(c as u32);
        }
    }
    let idx = Tensor::from_vec(idx, q_size * k_size, rel_pos.device())?;
    let c = table.dim(1)?;
    table.index_select(&idx, 0)?.reshape((q_size, k_size, c))
}

/// Multi-head self-attention over a `(B, h, w, C)` grid with optional
/// decomposed relative positions (`attn.qkv`, `attn.proj`,
/// `attn.rel_pos_h`, `attn.rel_pos_w`).
#[derive(Debug, Clone)]
struct Attention {
    qkv: Linear,
    proj: Linear,
    num_heads: usize,
    scale: f64,
    /// The grid side this block attends over (window or whole grid), and
    /// the per-axis embeddings for it, transposed to `(side, C_head, side)`.
    rel_pos: Option<(usize, usize, Tensor, Tensor)>,
}

impl Attention {
    fn new(cfg: &SamEncoderConfig, input_size: (usize, usize), vb: VarBuilder) -> Result<Self> {
        let dim = cfg.embed_dim;
        let head_dim = dim / cfg.num_heads;
        let qkv = Linear::new(dim, 3 * dim, cfg.qkv_bias, vb.pp("qkv"))?;
        let proj = Linear::new(dim, dim, true, vb.pp("proj"))?;
        let rel_pos = if cfg.use_rel_pos {
            let (h, w) = input_size;
            // A checkpoint may carry tables of another length (trained at
            // another size); they are resized, so only the width is fixed.
            let table = |name: &str| -> Result<Tensor> {
                let t = vb.get_unchecked(name)?;
                match t.dims() {
                    [_, c] if *c == head_dim => Ok(t),
                    d => candle_core::bail!(
                        "SAM image encoder: `attn.{name}` has shape {d:?}, expected (L, {head_dim})"
                    ),
                }
            };
            let rh = get_rel_pos(h, h, &table("rel_pos_h")?)?;
            let rw = get_rel_pos(w, w, &table("rel_pos_w")?)?;
            Some((
                h,
                w,
                rh.transpose(1, 2)?.contiguous()?,
                rw.transpose(1, 2)?.contiguous()?,
            ))
        } else {
            None
        };
        Ok(Self {
            qkv,
            proj,
            num_heads: cfg.num_heads,
            scale: 1.0 / (head_dim as f64).sqrt(),
            rel_pos,
        })
    }

    /// The decomposed relative-position terms for the unscaled queries `q`
    /// `(n, h·w, C_head)`: `rel_h[n, i, j, kh] = q[n, i, j]·R_h[i, kh]` and
    /// `rel_w[n, i, j, kw] = q[n, i, j]·R_w[j, kw]`, both `(n, h, w, side)`
    /// views. The attention logit of key `(kh, kw)` gets
    /// `rel_h[.., kh] + rel_w[.., kw]`.
    fn rel_pos_terms(
        q: &Tensor,
        (h, w): (usize, usize),
        rh_t: &Tensor,
        rw_t: &Tensor,
    ) -> Result<(Tensor, Tensor)> {
        let (n, _, c) = q.dims3()?;
        let q = q.reshape((n, h, w, c))?;
        // Batch the contraction over the query row (for R_h) or column
        // (for R_w): one matmul each.
        let qh = q
            .permute((1, 0, 2, 3))?
            .contiguous()?
            .reshape((h, n * w, c))?;
        let rel_h = qh
            .matmul(rh_t)?
            .reshape((h, n, w, h))?
            .permute((1, 0, 2, 3))?;
        let qw = q
            .permute((2, 0, 1, 3))?
            .contiguous()?
            .reshape((w, n * h, c))?;
        let rel_w = qw
            .matmul(rw_t)?
            .reshape((w, n, h, w))?
            .permute((1, 2, 0, 3))?;
        Ok((rel_h, rel_w))
    }

    /// `(B, h, w, C)` → `(B, h, w, C)`.
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (b, h, w, dim) = x.dims4()?;
        let heads = self.num_heads;
        let hd = dim / heads;
        let n = h * w;
        let qkv = self
            .qkv
            .forward(x)?
            .reshape((b, n, 3, heads, hd))?
            .permute((2, 0, 3, 1, 4))?
            .contiguous()?;
        let q = qkv.get(0)?;
        let k = qkv.get(1)?;
        let v = qkv.get(2)?;
        let out = match &self.rel_pos {
            Some((rh_size, rw_size, rh_t, rw_t)) => {
                if (*rh_size, *rw_size) != (h, w) {
                    candle_core::bail!(
                        "SAM image encoder: attention built for a {rh_size}x{rw_size} grid got {h}x{w}"
                    );
                }
                let q = q.reshape((b * heads, n, hd))?;
                let k = k.reshape((b * heads, n, hd))?;
                let v = v.reshape((b * heads, n, hd))?;
                let (rel_h, rel_w) = Self::rel_pos_terms(&q, (h, w), rh_t, rw_t)?;
                let fused = q.device().is_cpu()
                    && q.dtype() == DType::F32
                    && !needs_grad(&[&q, &k, &v, rh_t, rw_t]);
                let out = if fused {
                    // Inference on the CPU: one pass over the logits adds
                    // both terms and takes the softmax in place.
                    let scores = (&q * self.scale)?.matmul(&k.t()?)?;
                    scores.inplace_op3(
                        &rel_h.contiguous()?,
                        &rel_w.contiguous()?,
                        &fused::RelPosSoftmax { kh: h, kw: w },
                    )?;
                    scores.matmul(&v)?
                } else {
                    // candle's broadcast here: `calico_nn::broadcast` measured
                    // slower on this shape (benches/broadcast.rs).
                    let bias = rel_h
                        .unsqueeze(4)?
                        .broadcast_add(&rel_w.unsqueeze(3)?)?
                        .reshape((b * heads, n, n))?;
                    scaled_dot_product_attention(&q, &k, &v, Some(&bias), self.scale)?
                };
                out.reshape((b, heads, n, hd))?
            }
            None => scaled_dot_product_attention(&q, &k, &v, None, self.scale)?,
        };
        let out = out.permute((0, 2, 1, 3))?.reshape((b, h, w, dim))?;
        self.proj.forward(&out)
    }
}

/// The block's MLP: `lin2(GELU(lin1(x)))` (`mlp.lin1`, `mlp.lin2`).
#[derive(Debug, Clone)]
struct Mlp {
    lin1: Linear,
    lin2: Linear,
}

impl Mlp {
    fn new(dim: usize, hidden: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            lin1: Linear::new(dim, hidden, true, vb.pp("lin1"))?,
            lin2: Linear::new(hidden, dim, true, vb.pp("lin2"))?,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.lin2
            .forward(&Activation::Gelu.apply(&self.lin1.forward(x)?)?)
    }
}

/// Splits `(B, H, W, C)` into `(B · nh · nw, ws, ws, C)` windows after
/// zero-padding H and W up to multiples of `ws`.
fn window_partition(x: &Tensor, ws: usize) -> Result<Tensor> {
    let (b, h, w, c) = x.dims4()?;
    let (hp, wp) = (h.div_ceil(ws) * ws, w.div_ceil(ws) * ws);
    let mut x = x.clone();
    if hp > h {
        x = x.pad_with_zeros(1, 0, hp - h)?;
    }
    if wp > w {
        x = x.pad_with_zeros(2, 0, wp - w)?;
    }
    let (nh, nw) = (hp / ws, wp / ws);
    x.reshape((b, nh, ws, nw, ws, c))?
        .permute((0, 1, 3, 2, 4, 5))?
        .contiguous()?
        .reshape((b * nh * nw, ws, ws, c))
}

/// Inverse of [`window_partition`]: windows back to `(B, H, W, C)`, the
/// padding dropped.
fn window_unpartition(windows: &Tensor, ws: usize, (h, w): (usize, usize)) -> Result<Tensor> {
    let (nwin, _, _, c) = windows.dims4()?;
    let (nh, nw) = (h.div_ceil(ws), w.div_ceil(ws));
    let b = nwin / (nh * nw);
    let x = windows
        .reshape((b, nh, nw, ws, ws, c))?
        .permute((0, 1, 3, 2, 4, 5))?
        .contiguous()?
        .reshape((b, nh * ws, nw * ws, c))?;
    if nh * ws > h || nw * ws > w {
        x.narrow(1, 0, h)?.narrow(2, 0, w)
    } else {
        Ok(x)
    }
}

/// One pre-norm transformer block: `x + attn(norm1(x))` (inside windows
/// unless global), then `x + mlp(norm2(x))`.
#[derive(Debug, Clone)]
struct Block {
    norm1: LayerNorm,
    attn: Attention,
    norm2: LayerNorm,
    mlp: Mlp,
    /// 0 for a global block.
    window_size: usize,
}

impl Block {
    fn new(cfg: &SamEncoderConfig, window_size: usize, vb: VarBuilder) -> Result<Self> {
        let dim = cfg.embed_dim;
        let grid = cfg.grid_size();
        let input_size = if window_size == 0 {
            (grid, grid)
        } else {
            (window_size, window_size)
        };
        Ok(Self {
            norm1: LayerNorm::new(dim, LN_EPS, vb.pp("norm1"))?,
            attn: Attention::new(cfg, input_size, vb.pp("attn"))?,
            norm2: LayerNorm::new(dim, LN_EPS, vb.pp("norm2"))?,
            mlp: Mlp::new(dim, (dim as f64 * cfg.mlp_ratio) as usize, vb.pp("mlp"))?,
            window_size,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (_, h, w, _) = x.dims4()?;
        let y = self.norm1.forward(x)?;
        let y = if self.window_size > 0 {
            let windows = window_partition(&y, self.window_size)?;
            let out = self.attn.forward(&windows)?;
            window_unpartition(&out, self.window_size, (h, w))?
        } else {
            self.attn.forward(&y)?
        };
        let x = (x + y)?;
        let y = self.mlp.forward(&self.norm2.forward(&x)?)?;
        x + y
    }
}

/// The neck: 1×1 conv → LayerNorm2d → 3×3 conv (padding 1) →
/// LayerNorm2d, all without conv biases (`neck.0` … `neck.3`).
#[derive(Debug, Clone)]
struct Neck {
    /// `neck.0` as a channels-last linear map `(out, C)`.
    conv1: Linear,
    norm1: LayerNorm2d,
    /// `neck.2`, `(out, out, 3, 3)`.
    conv2: Tensor,
    norm2: LayerNorm2d,
}

impl Neck {
    fn new(dim: usize, out: usize, vb: VarBuilder) -> Result<Self> {
        let w1 = vb.pp("0").get((out, dim, 1, 1), "weight")?;
        Ok(Self {
            conv1: Linear::from_tensors(w1.reshape((out, dim))?, None),
            norm1: LayerNorm2d::new(out, LN_EPS, vb.pp("1"))?,
            conv2: vb.pp("2").get((out, out, 3, 3), "weight")?,
            norm2: LayerNorm2d::new(out, LN_EPS, vb.pp("3"))?,
        })
    }

    /// `(B, H, W, C)` → `(B, out, H, W)`.
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let y = self.conv1.forward(x)?;
        // LayerNorm2d normalises over channels, i.e. the last dimension of
        // the channels-last layout.
        let y = layer_norm(&y, Some(&self.norm1.weight), Some(&self.norm1.bias), LN_EPS)?;
        let y = calico_nn::conv::conv2d_nhwc(&y, &self.conv2, 1, 1)?;
        self.norm2.forward(&y.permute((0, 3, 1, 2))?)
    }
}

/// Pixels → the patch grid `(B, grid, grid, C)`.
#[derive(Debug, Clone)]
enum Patches {
    /// SAM's `patch_size` × `patch_size` convolution.
    Linear(PatchEmbed),
    /// `sam_encoder.conv_stem` (`patch_embed.stem.*`).
    Stem(crate::conv_stem::ConvStem),
}

impl Patches {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match self {
            Patches::Linear(p) => p.forward(x),
            Patches::Stem(s) => s.forward(x)?.permute((0, 2, 3, 1)),
        }
    }
}

/// SAM's ViT image encoder: `(B, 3, img, img)` normalised, padded pixels →
/// `(B, out_chans, img/patch, img/patch)` image embeddings.
#[derive(Debug, Clone)]
pub struct ImageEncoderViT {
    cfg: SamEncoderConfig,
    patch_embed: Patches,
    /// `(1, grid, grid, C)`.
    pos_embed: Tensor,
    blocks: Vec<Block>,
    neck: Neck,
}

impl ImageEncoderViT {
    /// Builds the encoder from tensors below `image_encoder.` (pass
    /// `vb.pp("image_encoder")`).
    pub fn new(cfg: &SamEncoderConfig, vb: VarBuilder) -> Result<Self> {
        cfg.validate()?;
        let grid = cfg.grid_size();
        let patch_embed = match &cfg.conv_stem {
            Some(ch) => Patches::Stem(crate::conv_stem::ConvStem::new(
                ch,
                cfg.embed_dim,
                vb.pp("patch_embed").pp("stem"),
            )?),
            None => Patches::Linear(PatchEmbed::new(
                cfg.patch_size,
                cfg.embed_dim,
                vb.pp("patch_embed"),
            )?),
        };
        let pos_embed = vb.get((1, grid, grid, cfg.embed_dim), "pos_embed")?;
        let blocks = (0..cfg.depth)
            .map(|i| {
                let ws = if cfg.global_attn_indexes.contains(&i) {
                    0
                } else {
                    cfg.window_size
                };
                Block::new(cfg, ws, vb.pp(format!("blocks.{i}")))
            })
            .collect::<Result<Vec<_>>>()?;
        let neck = Neck::new(cfg.embed_dim, cfg.out_chans, vb.pp("neck"))?;
        Ok(Self {
            cfg: cfg.clone(),
            patch_embed,
            pos_embed,
            blocks,
            neck,
        })
    }

    pub fn config(&self) -> &SamEncoderConfig {
        &self.cfg
    }

    /// The convolutional stem, when the config has one.
    pub fn stem(&self) -> Option<&crate::conv_stem::ConvStem> {
        match &self.patch_embed {
            Patches::Stem(s) => Some(s),
            Patches::Linear(_) => None,
        }
    }

    /// `(B, 3, img_size, img_size)` → `(B, out_chans, grid, grid)`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let s = self.cfg.img_size;
        match x.dims() {
            [_, 3, h, w] if *h == s && *w == s => {}
            d => candle_core::bail!(
                "SAM image encoder: expected pixels of shape (B, 3, {s}, {s}), got {d:?}"
            ),
        }
        let mut x = calico_nn::broadcast::add(&self.patch_embed.forward(x)?, &self.pos_embed)?;
        for block in &self.blocks {
            x = block.forward(&x)?;
        }
        self.neck.forward(&x)
    }
}

/// A fused CPU kernel for inference: decomposed relative positions plus
/// softmax over attention logits, in place.
mod fused {
    use candle_core::{CpuStorage, InplaceOp3, Layout, Result};

    /// For logits `(rows, kh·kw)` and terms `rel_h (rows, kh)`,
    /// `rel_w (rows, kw)`: `softmax(logit[kh, kw] + rel_h[kh] + rel_w[kw])`
    /// per row, written over the logits.
    pub struct RelPosSoftmax {
        pub kh: usize,
        pub kw: usize,
    }

    fn contiguous<'a>(s: &'a CpuStorage, l: &Layout, what: &str) -> Result<&'a [f32]> {
        match (s, l.contiguous_offsets()) {
            (CpuStorage::F32(v), Some((a, b))) => Ok(&v[a..b]),
            _ => candle_core::bail!("rel-pos softmax: {what} must be a contiguous f32 tensor"),
        }
    }

    impl InplaceOp3 for RelPosSoftmax {
        fn name(&self) -> &'static str {
            "sam-rel-pos-softmax"
        }

        fn cpu_fwd(
            &self,
            s1: &mut CpuStorage,
            l1: &Layout,
            s2: &CpuStorage,
            l2: &Layout,
            s3: &CpuStorage,
            l3: &Layout,
        ) -> Result<()> {
            let (kh, kw) = (self.kh, self.kw);
            let rel_h = contiguous(s2, l2, "rel_h")?;
            let rel_w = contiguous(s3, l3, "rel_w")?;
            let (a, b) = match l1.contiguous_offsets() {
                Some(o) => o,
                None => candle_core::bail!("rel-pos softmax: logits must be contiguous"),
            };
            let logits = match s1 {
                CpuStorage::F32(v) => &mut v[a..b],
                _ => candle_core::bail!("rel-pos softmax: logits must be f32"),
            };
            let row = kh * kw;
            let rows = logits.len() / row.max(1);
            if row == 0
                || logits.len() != rows * row
                || rel_h.len() != rows * kh
                || rel_w.len() != rows * kw
            {
                candle_core::bail!(
                    "rel-pos softmax: {} logits, {} rel_h, {} rel_w do not fit rows of {kh}x{kw}",
                    logits.len(),
                    rel_h.len(),
                    rel_w.len()
                );
            }
            let threads = candle_core::utils::get_num_threads().clamp(1, rows);
            let per = rows.div_ceil(threads);
            std::thread::scope(|scope| {
                for ((l, h), w) in logits
                    .chunks_mut(per * row)
                    .zip(rel_h.chunks(per * kh))
                    .zip(rel_w.chunks(per * kw))
                {
                    scope.spawn(move || {
                        for ((l, h), w) in l.chunks_mut(row).zip(h.chunks(kh)).zip(w.chunks(kw)) {
                            softmax_row(l, h, w);
                        }
                    });
                }
            });
            Ok(())
        }
    }

    fn softmax_row(l: &mut [f32], h: &[f32], w: &[f32]) {
        #[cfg(target_arch = "x86_64")]
        {
            if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
                // SAFETY: the CPU supports the features the function is
                // compiled for.
                return unsafe { softmax_row_avx2(l, h, w) };
            }
        }
        softmax_row_generic(l, h, w)
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn softmax_row_avx2(l: &mut [f32], h: &[f32], w: &[f32]) {
        softmax_row_generic(l, h, w)
    }

    /// Written so that the compiler vectorises every loop: lane-wise
    /// accumulators, no branches, a polynomial `exp`.
    #[inline(always)]
    fn softmax_row_generic(l: &mut [f32], h: &[f32], w: &[f32]) {
        const LANES: usize = 8;
        let kw = w.len();
        let mut maxes = [f32::NEG_INFINITY; LANES];
        for (seg, &hv) in l.chunks_mut(kw).zip(h) {
            for (x, &wv) in seg.iter_mut().zip(w) {
                *x += hv + wv;
            }
        }
        let mut chunks = l.chunks_exact(LANES);
        for c in &mut chunks {
            for i in 0..LANES {
                maxes[i] = if c[i] > maxes[i] { c[i] } else { maxes[i] };
            }
        }
        let mut max = chunks
            .remainder()
            .iter()
            .fold(f32::NEG_INFINITY, |m, &x| if x > m { x } else { m });
        for m in maxes {
            max = if m > max { m } else { max };
        }
        let mut sums = [0f32; LANES];
        let mut chunks = l.chunks_exact_mut(LANES);
        for c in &mut chunks {
            for i in 0..LANES {
                c[i] = exp_nonpositive(c[i] - max);
                sums[i] += c[i];
            }
        }
        let mut sum = 0f32;
        for x in chunks.into_remainder() {
            *x = exp_nonpositive(*x - max);
            sum += *x;
        }
        let inv = 1.0 / (sum + sums.iter().sum::<f32>());
        for x in l.iter_mut() {
            *x *= inv;
        }
    }

    /// `exp(x)` for `x ≤ 0` to about one ulp (Cephes `expf` polynomial),
    /// branch-free: `x = n·ln2 + r`, `exp(r)` by polynomial, `2ⁿ` by
    /// building the exponent bits. Inputs below −87 return `exp(−87)`
    /// (≈1.6e−38), which a softmax cannot tell from 0.
    #[inline(always)]
    pub(super) fn exp_nonpositive(x: f32) -> f32 {
        const LOG2E: f32 = std::f32::consts::LOG2_E;
        const ROUND: f32 = 12_582_912.0; // 1.5 · 2²³: adding it rounds to an integer
        const LN2_HI: f32 = 0.693_359_4;
        const LN2_LO: f32 = -2.121_944_4e-4;
        let x = if x < -87.0 { -87.0 } else { x };
        let t = x * LOG2E + ROUND;
        let n = t - ROUND;
        let ni = (t.to_bits() as i32).wrapping_sub(ROUND.to_bits() as i32);
        let r = x - n * LN2_HI - n * LN2_LO;
        let mut p = 1.987_569_2e-4f32;
        p = p * r + 1.398_199_9e-3;
        p = p * r + 8.333_452e-3;
        p = p * r + 4.166_579_6e-2;
        p = p * r + 1.666_666_5e-1;
        p = p * r + 0.5;
        let y = p * r * r + r + 1.0;
        y * f32::from_bits(((ni + 127) << 23) as u32)
    }
}

/// Parity replay: config from the case, weights under `image_encoder.`,
/// input `pixel_values`, output `image_embeddings`.
pub fn parity_forward(
    case: &Case,
    ckpt: &Checkpoint,
    device: &Device,
) -> Result<BTreeMap<String, Tensor>> {
    let cfg: SamEncoderConfig = case.config()?;
    let vb = ckpt.var_builder(DType::F32, device);
    let encoder = ImageEncoderViT::new(&cfg, vb.pp("image_encoder"))?;
    let x = case.input("pixel_values")?.to_device(device)?;
    let y = encoder.forward(&x)?;
    Ok(BTreeMap::from([("image_embeddings".to_string(), y)]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use calico_nn::testing::max_abs_diff;
    use std::collections::HashMap;

    fn seq(shape: &[usize]) -> Tensor {
        let n: usize = shape.iter().product();
        let v: Vec<f32> = (0..n)
            .map(|i| ((i * 29 % 53) as f32 / 26.0) - 1.0)
            .collect();
        Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
    }

    #[test]
    fn presets_and_defaults() {
        assert_eq!(SamEncoderConfig::default(), SamEncoderConfig::vit_h());
        let b = SamEncoderConfig::vit_b();
        assert_eq!((b.embed_dim, b.depth, b.num_heads), (768, 12, 12));
        assert_eq!(b.global_attn_indexes, vec![2, 5, 8, 11]);
        assert_eq!(b.grid_size(), 64);
        let l = SamEncoderConfig::vit_l();
        assert_eq!((l.embed_dim, l.depth, l.num_heads), (1024, 24, 16));
        let partial: SamEncoderConfig =
            serde_json::from_str(r#"{"embed_dim": 768, "depth": 12}"#).unwrap();
        assert_eq!(partial.window_size, 14);
        assert_eq!(partial.global_attn_indexes, vec![7, 15, 23, 31]);
    }

    #[test]
    fn rel_pos_picks_the_offset_row() {
        // Table rows are offsets −2..=2; entry (i, j) is row i − j + 2.
        let table = Tensor::arange(0f32, 5.0, &Device::Cpu)
            .unwrap()
            .reshape((5, 1))
            .unwrap();
        let r: Vec<Vec<f32>> = get_rel_pos(3, 3, &table)
            .unwrap()
            .squeeze(2)
            .unwrap()
            .to_vec2()
            .unwrap();
        assert_eq!(
            r,
            vec![
                vec![2.0, 1.0, 0.0],
                vec![3.0, 2.0, 1.0],
                vec![4.0, 3.0, 2.0]
            ]
        );
        // A table of another length is resized first: a linear ramp stays a
        // ramp, so the middle row is the ramp's centre.
        let r = get_rel_pos(4, 4, &table).unwrap();
        assert_eq!(r.dims(), &[4, 4, 1]);
        let centre = r.get(0).unwrap().get(0).unwrap().to_vec1::<f32>().unwrap()[0];
        assert!((centre - 2.0).abs() < 1e-6, "{centre}");
    }

    #[test]
    fn windows_round_trip_with_padding() {
        let x = seq(&[2, 5, 7, 3]);
        let w = window_partition(&x, 3).unwrap();
        assert_eq!(w.dims(), &[2 * 2 * 3, 3, 3, 3]);
        let back = window_unpartition(&w, 3, (5, 7)).unwrap();
        let d = max_abs_diff(&back, &x);
        assert_eq!(d, 0.0);
        // The padding is zeros: window (0, 2) holds column 6 and two pads.
        let last = w.get(2).unwrap().to_vec3::<f32>().unwrap();
        assert_eq!(last[0][1], vec![0.0; 3]);
    }

    fn tiny() -> (SamEncoderConfig, Checkpoint) {
        let cfg = SamEncoderConfig {
            img_size: 32,
            patch_size: 8,
            embed_dim: 8,
            depth: 2,
            num_heads: 2,
            mlp_ratio: 2.0,
            out_chans: 4,
            qkv_bias: true,
            use_rel_pos: true,
            window_size: 3,
            global_attn_indexes: vec![1],
            conv_stem: None,
        };
        let mut m = HashMap::new();
        let mut put = |name: &str, shape: &[usize]| {
            m.insert(format!("image_encoder.{name}"), seq(shape));
        };
        put("patch_embed.proj.weight", &[8, 3, 8, 8]);
        put("patch_embed.proj.bias", &[8]);
        put("pos_embed", &[1, 4, 4, 8]);
        for (i, l) in [(0, 5), (1, 7)] {
            for (n, s) in [
                ("norm1.weight", vec![8]),
                ("norm1.bias", vec![8]),
                ("attn.qkv.weight", vec![24, 8]),
                ("attn.qkv.bias", vec![24]),
                ("attn.proj.weight", vec![8, 8]),
                ("attn.proj.bias", vec![8]),
                ("attn.rel_pos_h", vec![l, 4]),
                ("attn.rel_pos_w", vec![l, 4]),
                ("norm2.weight", vec![8]),
                ("norm2.bias", vec![8]),
                ("mlp.lin1.weight", vec![16, 8]),
                ("mlp.lin1.bias", vec![16]),
                ("mlp.lin2.weight", vec![8, 16]),
                ("mlp.lin2.bias", vec![8]),
            ] {
                put(&format!("blocks.{i}.{n}"), &s);
            }
        }
        put("neck.0.weight", &[4, 8, 1, 1]);
        put("neck.1.weight", &[4]);
        put("neck.1.bias", &[4]);
        put("neck.2.weight", &[4, 4, 3, 3]);
        put("neck.3.weight", &[4]);
        put("neck.3.bias", &[4]);
        (cfg, Checkpoint::from_tensors(m, "tiny"))
    }

    #[test]
    fn builds_reads_every_tensor_and_checks_input_shape() {
        let (cfg, ckpt) = tiny();
        let vb = ckpt.var_builder(DType::F32, &Device::Cpu);
        let enc = ImageEncoderViT::new(&cfg, vb.pp("image_encoder")).unwrap();
        assert!(ckpt.report().unexpected.is_empty());
        let y = enc.forward(&seq(&[2, 3, 32, 32])).unwrap();
        assert_eq!(y.dims(), &[2, 4, 4, 4]);
        let e = enc.forward(&seq(&[1, 3, 32, 24])).unwrap_err().to_string();
        assert!(e.contains("(B, 3, 32, 32)"), "{e}");
    }

    #[test]
    fn fast_exp_is_accurate() {
        let mut worst = 0f64;
        for i in 0..=200_000 {
            let x = -(i as f32) * 87.0 / 200_000.0;
            let want = (x as f64).exp();
            let got = fused::exp_nonpositive(x) as f64;
            worst = worst.max((got - want).abs() / want);
        }
        assert!(worst < 5e-7, "{worst}");
        assert!(fused::exp_nonpositive(-1e4) < 1e-37);
    }

    #[test]
    fn fused_inference_attention_equals_the_differentiable_path() {
        let (cfg, ckpt) = tiny();
        let vb = ckpt.var_builder(DType::F32, &Device::Cpu);
        for (block, side) in [(0, 3), (1, 4)] {
            let attn = Attention::new(
                &cfg,
                (side, side),
                vb.pp(format!("image_encoder.blocks.{block}.attn")),
            )
            .unwrap();
            let x = seq(&[2, side, side, 8]);
            let fast = attn.forward(&x).unwrap();
            let xv = candle_core::Var::from_tensor(&x).unwrap();
            let slow = attn.forward(xv.as_tensor()).unwrap();
            assert!(slow.track_op());
            let d = max_abs_diff(&fast, &slow);
            assert!(d < 1e-5, "block {block}: {d}");
        }
    }

    #[test]
    fn bad_rel_pos_width_and_config_are_errors() {
        let (mut cfg, ckpt) = tiny();
        cfg.num_heads = 4; // head_dim 2, tables have width 4
        let vb = ckpt.var_builder(DType::F32, &Device::Cpu);
        let e = ImageEncoderViT::new(&cfg, vb.pp("image_encoder"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("rel_pos_h"), "{e}");
        cfg.num_heads = 2;
        cfg.global_attn_indexes = vec![2];
        let e = ImageEncoderViT::new(&cfg, vb.pp("image_encoder"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("not below depth"), "{e}");
    }

    #[test]
    fn a_conv_stem_replaces_the_patch_projection() {
        let vm = candle_nn::VarMap::new();
        let vb = VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu);
        let cfg = SamEncoderConfig {
            use_rel_pos: false,
            conv_stem: Some(vec![4, 6, 8]),
            ..tiny().0
        };
        let enc = ImageEncoderViT::new(&cfg, vb.pp("image_encoder")).unwrap();
        let stem = enc.stem().expect("the config has a stem");
        assert_eq!(stem.stride(), 8);
        let x = Tensor::randn(0f32, 1.0, (2, 3, 32, 32), &Device::Cpu).unwrap();
        assert_eq!(enc.forward(&x).unwrap().dims(), [2, 4, 4, 4]);
        let names: Vec<String> = vm.data().lock().unwrap().keys().cloned().collect();
        assert!(names
            .iter()
            .any(|n| n == "image_encoder.patch_embed.stem.0.bn.running_var"));
        assert!(!names
            .iter()
            .any(|n| n.starts_with("image_encoder.patch_embed.proj")));
        // Two stages make 4-px patches, not the config's 8.
        let bad = SamEncoderConfig {
            conv_stem: Some(vec![4, 8]),
            ..cfg
        };
        let vb = VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu);
        let err = ImageEncoderViT::new(&bad, vb).unwrap_err().to_string();
        assert!(
            err.contains("2 stages") && err.contains("patch_size is 8"),
            "{err}"
        );
    }
}
