//! Broadcasting ops as `tiny`'s training steps run them: candle's
//! `broadcast_add` / `broadcast_mul` / `broadcast_as` beside
//! `calico_nn::broadcast`, forward + backward, in one run.
//!
//! `cargo bench -p calico-nn --bench broadcast [-- --repeats R]`
//!
//! Prints a markdown table of the best of R runs (default 5) per case, in
//! milliseconds, and whether the two give the same values and gradients
//! bit for bit.

mod common;

use calico_nn::broadcast;
use candle_core::{DType, Result, Tensor, Var};
use common::{best, uniform};

type Op = fn(&Tensor, &Tensor) -> Result<Tensor>;

/// One broadcast as a training step runs it: `x` (tracked or not) combined
/// with the parameter `p`.
struct Case {
    what: &'static str,
    x: &'static [usize],
    p: &'static [usize],
    ours: Op,
    candle: Op,
}

fn expand_ours(x: &Tensor, p: &Tensor) -> Result<Tensor> {
    broadcast::expand(p, x.shape())?.contiguous()? * x
}

fn expand_candle(x: &Tensor, p: &Tensor) -> Result<Tensor> {
    p.broadcast_as(x.shape())?.contiguous()? * x
}

const CASES: &[Case] = &[
    Case {
        what: "linear bias, SAM encoder MLP (8 images × 256 tokens, 96)",
        x: &[8, 256, 96],
        p: &[96],
        ours: broadcast::add,
        candle: Tensor::broadcast_add,
    },
    Case {
        what: "layer-norm weight, SAM decoder keys (64 masks × 256 tokens, 32)",
        x: &[64, 256, 32],
        p: &[32],
        ours: broadcast::mul,
        candle: Tensor::broadcast_mul,
    },
    Case {
        what: "transposed-conv bias, SAM upscaling (64 masks, 4 × 64 × 64)",
        x: &[64, 4, 64, 64],
        p: &[1, 4, 1, 1],
        ours: broadcast::add,
        candle: Tensor::broadcast_add,
    },
    Case {
        what: "LayerNorm2d weight, SAM upscaling (64 masks, 8 × 32 × 32)",
        x: &[64, 8, 32, 32],
        p: &[1, 8, 1, 1],
        ours: broadcast::mul,
        candle: Tensor::broadcast_mul,
    },
    Case {
        what: "image embedding shared by 64 masks (32 × 16 × 16)",
        x: &[64, 32, 16, 16],
        p: &[1, 32, 16, 16],
        ours: expand_ours,
        candle: expand_candle,
    },
    Case {
        what: "SAM rel-pos width term, global attention (16 image-heads, 16 × 16 tokens)",
        x: &[16, 16, 16, 16, 16],
        p: &[16, 16, 16, 1, 16],
        ours: broadcast::add,
        candle: Tensor::broadcast_add,
    },
    Case {
        what: "LLM RMS-norm weight (8 sequences × 160 tokens, 64)",
        x: &[8, 160, 64],
        p: &[64],
        ours: broadcast::mul,
        candle: Tensor::broadcast_mul,
    },
];

/// Forward + backward of `sum(op(x, p) · r)`; the output and both gradients.
fn run(op: Op, x: &Var, p: &Var, r: &Tensor) -> Result<Vec<Vec<f32>>> {
    let y = op(x.as_tensor(), p.as_tensor())?;
    let g = (&y * r)?.sum_all()?.backward()?;
    let flat = |t: &Tensor| t.flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>();
    Ok(vec![
        flat(&y)?,
        flat(g.get(x.as_tensor()).expect("x has a gradient"))?,
        flat(g.get(p.as_tensor()).expect("p has a gradient"))?,
    ])
}

fn main() -> Result<()> {
    let repeats = common::repeats();
    common::print_header(repeats, "candle", "calico_nn::broadcast");
    for c in CASES {
        let x = Var::from_tensor(&uniform(c.x, 1)?)?;
        let p = Var::from_tensor(&(uniform(c.p, 2)? + 2.0)?)?;
        let r = uniform(c.x, 3)?;
        let same = run(c.ours, &x, &p, &r)? == run(c.candle, &x, &p, &r)?;
        let t_candle = best(repeats, || run(c.candle, &x, &p, &r).map(|_| ()))?;
        let t_ours = best(repeats, || run(c.ours, &x, &p, &r).map(|_| ()))?;
        common::print_row(c.what, t_candle, t_ours, same);
    }
    Ok(())
}
