//! Convolution and batch norm as stage 1 trains them: candle's `conv2d`
//! (NCHW) and composite batch norm beside `calico_nn::conv::conv2d_nhwc`
//! (channels last, as the conv stem runs it) and
//! `calico_nn::batch_norm::batch_norm_rows`, forward and forward +
//! backward, in one run.
//!
//! `cargo bench -p calico-nn --bench conv [-- --repeats R]`
//!
//! Prints a markdown table of the best of R runs (default 5) per case, in
//! milliseconds, and the largest relative difference of the two outputs.

mod common;

use calico_nn::{batch_norm, conv};
use candle_core::{DType, Device, Result, Tensor, Var};
use common::best;

/// One convolution layer as a stage-1 or stage-2 step runs it.
struct ConvCase {
    what: &'static str,
    batch: usize,
    c_in: usize,
    side: usize,
    c_out: usize,
    k: usize,
    stride: usize,
    padding: usize,
}

const fn case(
    what: &'static str,
    batch: usize,
    (c_in, side, c_out): (usize, usize, usize),
    (k, stride, padding): (usize, usize, usize),
) -> ConvCase {
    ConvCase {
        what,
        batch,
        c_in,
        side,
        c_out,
        k,
        stride,
        padding,
    }
}

const CONVS: &[ConvCase] = &[
    case(
        "tiny EVA stem stage 1, 3→16, 112 px",
        32,
        (3, 112, 16),
        (3, 2, 1),
    ),
    case(
        "tiny EVA stem stage 2, 16→32, 56 px",
        32,
        (16, 56, 32),
        (3, 2, 1),
    ),
    case(
        "tiny EVA stem stage 3, 32→64, 28 px",
        32,
        (32, 28, 64),
        (3, 2, 1),
    ),
    case(
        "tiny EVA stem stage 4, 64→64, 14 px",
        32,
        (64, 14, 64),
        (3, 2, 1),
    ),
    case(
        "tiny SAM neck 3×3, 32→32, 16 px",
        16,
        (32, 16, 32),
        (3, 1, 1),
    ),
    case("16-px patches, 3→64, 112 px", 32, (3, 112, 64), (16, 16, 0)),
];

fn rel_diff(a: &Tensor, b: &Tensor) -> Result<f64> {
    let d = (a - b)?.abs()?.max_all()?.to_scalar::<f32>()? as f64;
    let m = b.abs()?.max_all()?.to_scalar::<f32>()? as f64;
    Ok(d / m.max(1e-12))
}

/// Forward, and forward + backward of `sum(y · r)`, of `f` at `inputs`.
fn time_pair(
    repeats: usize,
    f: &dyn Fn() -> Result<Tensor>,
    r: &Tensor,
) -> Result<(f64, f64, Tensor)> {
    let y = f()?;
    let fwd = best(repeats, || f().map(|_| ()))?;
    let both = best(repeats, || {
        let y = f()?;
        (y * r)?.sum_all()?.backward().map(|_| ())
    })?;
    Ok((fwd, both, y))
}

fn main() -> Result<()> {
    let repeats = common::repeats();
    let dev = Device::Cpu;
    println!(
        "| op | candle fwd ms | candle fwd+bwd ms | calico fwd ms | calico fwd+bwd ms | speed-up (fwd+bwd) | rel. diff |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|");
    for cc in CONVS {
        let (what, b, c, side, c_out) = (cc.what, cc.batch, cc.c_in, cc.side, cc.c_out);
        let (k, s, p) = (cc.k, cc.stride, cc.padding);
        // The input needs a gradient unless it is pixels (stage 1, patches).
        let x = Tensor::randn(0f32, 1.0, (b, c, side, side), &dev)?;
        let x = if c == 3 {
            x
        } else {
            Var::from_tensor(&x)?.as_tensor().clone()
        };
        let w = Var::randn(0f32, 0.1, (c_out, c, k, k), &dev)?;
        let out = (side + 2 * p - k) / s + 1;
        let r = Tensor::randn(0f32, 1.0, (b, c_out, out, out), &dev)?;
        let (cf, cb, cy) = time_pair(repeats, &|| x.conv2d(w.as_tensor(), p, s, 1, 1), &r)?;
        // What the stem runs: channels last, no transposes.
        let x_nhwc = x.permute((0, 2, 3, 1))?.contiguous()?;
        let r_nhwc = r.permute((0, 2, 3, 1))?.contiguous()?;
        let (of, ob, oy) = time_pair(
            repeats,
            &|| conv::conv2d_nhwc(&x_nhwc, w.as_tensor(), p, s),
            &r_nhwc,
        )?;
        let oy = oy.permute((0, 3, 1, 2))?;
        println!(
            "| conv2d: {what}, batch {b} | {cf:.1} | {cb:.1} | {of:.1} | {ob:.1} | {:.1}× | {:.1e} |",
            cb / ob,
            rel_diff(&oy, &cy)?
        );
    }
    for &(what, rows, ch) in &[
        ("stem stage 1 rows (32·56·56, 16)", 32 * 56 * 56, 16),
        ("stem stage 2 rows (32·28·28, 32)", 32 * 28 * 28, 32),
    ] {
        let x = Var::randn(0f32, 1.0, (rows, ch), &dev)?;
        let g = Var::ones(ch, DType::F32, &dev)?;
        let bt = Var::zeros(ch, DType::F32, &dev)?;
        let r = Tensor::randn(0f32, 1.0, (rows, ch), &dev)?;
        let composite = || -> Result<Tensor> {
            let x = x.as_tensor();
            let mean = x.mean_keepdim(0)?;
            let centred = x.broadcast_sub(&mean)?;
            let var = centred.sqr()?.mean_keepdim(0)?;
            centred
                .broadcast_div(&(var + 1e-5)?.sqrt()?)?
                .broadcast_mul(&g.as_tensor().unsqueeze(0)?)?
                .broadcast_add(&bt.as_tensor().unsqueeze(0)?)?
                .relu()
        };
        let fused = || {
            batch_norm::batch_norm_rows(x.as_tensor(), g.as_tensor(), bt.as_tensor(), 1e-5, true)
        };
        let (cf, cb, cy) = time_pair(repeats, &composite, &r)?;
        let (of, ob, oy) = time_pair(repeats, &fused, &r)?;
        println!(
            "| batch norm + ReLU: {what} | {cf:.1} | {cb:.1} | {of:.1} | {ob:.1} | {:.1}× | {:.1e} |",
            cb / ob,
            rel_diff(&oy, &cy)?
        );
    }
    Ok(())
}
