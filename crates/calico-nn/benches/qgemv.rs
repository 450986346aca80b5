//! One-token products with a block-quantised weight at a 7B LLaMA's sizes:
//! `calico_nn::qgemv`'s fused blocks beside its row buffer (the path every
//! type took before), candle's `QMatMul` (llama.cpp's integer kernels,
//! `--quantized-llm q8`), the weight expanded to float32 for the product
//! (what a prefill does) and the float32 weight held (the unquantised
//! model), in one run.
//!
//! `cargo bench -p calico-nn --bench qgemv [-- --repeats R]`
//!
//! Prints a markdown table of the best of R runs (default 5) per case, in
//! milliseconds, and whether the fused path gives the row buffer's outputs
//! bit for bit.

mod common;

use calico_nn::qgemv::{dequantized_product, row_buffer_product};
use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use candle_core::{Device, Module, Result, Tensor};
use common::best;

/// LLaMA-7B's projections: attention (q, k, v, o) and MLP (gate, up; down).
const SHAPES: &[(&str, usize, usize)] = &[
    ("4096 × 4096 (attention)", 4096, 4096),
    ("11008 × 4096 (MLP up)", 11008, 4096),
];

const TYPES: &[GgmlDType] = &[
    GgmlDType::Q4_0,
    GgmlDType::Q4_1,
    GgmlDType::Q8_0,
    GgmlDType::Q4K,
    GgmlDType::Q5K,
    GgmlDType::Q6K,
];

fn uniform(rows: usize, cols: usize, seed: u64) -> Result<Tensor> {
    // A cheap deterministic fill; the values only need to differ.
    let v: Vec<f32> = (0..rows * cols)
        .map(|i| (((i as u64 * 2_654_435_761 + seed * 97) % 1000) as f32) / 500.0 - 1.0)
        .collect();
    Tensor::from_vec(v, (rows, cols), &Device::Cpu)
}

fn taken(t: Result<Option<Tensor>>) -> Result<Tensor> {
    t?.ok_or_else(|| candle_core::Error::Msg("the product was not taken".into()))
}

fn main() -> Result<()> {
    let repeats = common::repeats();
    let dev = Device::Cpu;
    println!(
        "one token (1 × cols input) times a (rows × cols) weight, best of {repeats}, milliseconds; \
         {} threads",
        candle_core::utils::get_num_threads()
    );
    println!();
    println!(
        "| weight | type | fused blocks | row buffer | QMatMul (q8) | expanded + matmul | \
         float32 held | fused vs row buffer | bit-identical |"
    );
    println!("|---|---|---:|---:|---:|---:|---:|---:|:---:|");
    let x = uniform(1, 4096, 7)?;
    for &(what, rows, cols) in SHAPES {
        let float = uniform(rows, cols, 1)?;
        let t_float = best(repeats, || x.matmul(&float.t()?).map(|_| ()))?;
        for &dtype in TYPES {
            let q = QTensor::quantize(&float, dtype)?;
            let fused = taken(dequantized_product(&q, &x))?;
            let rows_out = taken(row_buffer_product(&q, &x))?;
            let same = fused.to_vec2::<f32>()? == rows_out.to_vec2::<f32>()?;
            let t_fused = best(repeats, || taken(dequantized_product(&q, &x)).map(|_| ()))?;
            let t_rows = best(repeats, || taken(row_buffer_product(&q, &x)).map(|_| ()))?;
            let qmm = QMatMul::from_qtensor(q)?;
            let t_q8 = best(repeats, || qmm.forward(&x).map(|_| ()))?;
            let q = match &qmm {
                QMatMul::QTensor(q) => q.clone(),
                _ => candle_core::bail!("QMatMul did not keep {dtype:?} blocks"),
            };
            let t_expand = best(repeats, || x.matmul(&q.dequantize(&dev)?.t()?).map(|_| ()))?;
            println!(
                "| {what} | {dtype:?} | {t_fused:.2} | {t_rows:.2} | {t_q8:.2} | {t_expand:.1} | \
                 {t_float:.2} | {:.1}× | {} |",
                t_rows / t_fused,
                if same { "yes" } else { "**no**" }
            );
        }
    }
    Ok(())
}
