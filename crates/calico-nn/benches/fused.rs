//! GELU and softmax as `tiny`'s training steps run them, candle's ops
//! beside calico_nn's one-pass ops (`gelu::gelu_erf`,
//! `softmax::softmax_last_dim`), forward + backward, in one run.
//!
//! `cargo bench -p calico-nn --bench fused [-- --repeats R]`
//!
//! Prints a markdown table of the best of R runs (default 5) per case, in
//! milliseconds, and whether the two give the same values and gradients
//! bit for bit. Run it with `RAYON_NUM_THREADS=1` for a training worker's
//! view: each of a step's workers runs its kernels on one thread.

mod common;

use calico_nn::{gelu, softmax};
use candle_core::{Result, Tensor, Var};
use common::{best, uniform};

type Op = fn(&Tensor) -> Result<Tensor>;

/// Where a training step applies the op, the input's dims, the inputs'
/// range and the two ops.
struct Case {
    what: &'static str,
    dims: &'static [usize],
    scale: f32,
    candle: Op,
    ours: Op,
}

const CASES: &[Case] = &[
    Case {
        what: "GELU, EVA MLP, stage 1 (16 images × 50 tokens, 128)",
        dims: &[16, 50, 128],
        scale: 4.0,
        candle: Tensor::gelu_erf,
        ours: gelu::gelu_erf,
    },
    Case {
        what: "GELU, SAM encoder MLP (8 images × 256 tokens, 96)",
        dims: &[8, 256, 96],
        scale: 4.0,
        candle: Tensor::gelu_erf,
        ours: gelu::gelu_erf,
    },
    Case {
        what: "GELU, SAM upscaling (64 masks, 4 × 64 × 64)",
        dims: &[64, 4, 64, 64],
        scale: 4.0,
        candle: Tensor::gelu_erf,
        ours: gelu::gelu_erf,
    },
    Case {
        what: "softmax, EVA attention, stage 1 (16 images × 4 heads, 50 × 50)",
        dims: &[16, 4, 50, 50],
        scale: 8.0,
        candle: softmax::composed,
        ours: softmax::softmax_last_dim,
    },
    Case {
        what: "softmax, SAM encoder attention (8 images × 4 heads, 256 × 256)",
        dims: &[8, 4, 256, 256],
        scale: 8.0,
        candle: softmax::composed,
        ours: softmax::softmax_last_dim,
    },
    Case {
        what: "softmax, LLM attention (8 sequences × 4 heads, 160 × 160)",
        dims: &[8, 4, 160, 160],
        scale: 8.0,
        candle: softmax::composed,
        ours: softmax::softmax_last_dim,
    },
];

/// Forward + backward of `sum(op(x) · r)`: the output's and the gradient's bits.
fn run(op: Op, x: &Var, r: &Tensor) -> Result<Vec<Vec<u32>>> {
    let y = op(x.as_tensor())?;
    let g = (&y * r)?.sum_all()?.backward()?;
    let bits = |t: &Tensor| -> Result<Vec<u32>> {
        Ok(t.flatten_all()?
            .to_vec1::<f32>()?
            .iter()
            .map(|v| v.to_bits())
            .collect())
    };
    Ok(vec![
        bits(&y)?,
        bits(g.get(x.as_tensor()).expect("x has a gradient"))?,
    ])
}

fn main() -> Result<()> {
    let repeats = common::repeats();
    common::print_header(repeats, "candle's ops", "calico_nn's op");
    for c in CASES {
        let x = Var::from_tensor(&(uniform(c.dims, 1)? * f64::from(c.scale))?)?;
        let r = uniform(c.dims, 3)?;
        let same = run(c.ours, &x, &r)? == run(c.candle, &x, &r)?;
        let t_candle = best(repeats, || run(c.candle, &x, &r).map(|_| ()))?;
        let t_ours = best(repeats, || run(c.ours, &x, &r).map(|_| ()))?;
        common::print_row(c.what, t_candle, t_ours, same);
    }
    Ok(())
}
