//! Fused row products for the simple 32-value block types (Q4_0, Q4_1,
//! Q8_0): each block's values are made in registers from its bytes and
//! multiplied at once, instead of being written out as a float32 row first
//! and read back ([`crate::qgemv`]'s general path).
//!
//! The values are the ones candle's `to_float` computes (the same
//! expressions, `q · d` or `q · d + m` in float32) and each product is
//! summed in the general path's order (eight lanes over the row, then the
//! same pairwise finish), so the results are bit for bit the same. On an
//! x86-64 CPU with AVX2 the same code runs compiled for it (chosen at run
//! time); the lanes are written out, so the compiler keeps their order and
//! the results do not depend on the instruction set either.

use candle_core::quantized::GgmlDType;
use candle_core::Result;
use rayon::prelude::*;

use crate::qgemv::{finish_lanes, GEMV_MAX_ROWS};

/// Values per block of every type here.
const BLOCK: usize = 32;

/// A block type whose values a fused product reads straight from its bytes.
pub(crate) trait Fused {
    const DTYPE: GgmlDType;
    /// Bytes of one block (candle's `repr(C)` struct).
    const BYTES: usize;
    /// The block's 32 values, as candle's `to_float` computes them.
    fn values(block: &[u8], out: &mut [f32; BLOCK]);
}

/// The float16 at `at`, as stored (native byte order, like candle's blocks).
#[inline(always)]
fn f16_at(block: &[u8], at: usize) -> f32 {
    half::f16::from_bits(u16::from_ne_bytes([block[at], block[at + 1]])).to_f32()
}

/// `{ d: f16, qs: [u8; 16] }`: `(nibble − 8) · d`, low nibbles first.
pub(crate) struct Q4_0;

impl Fused for Q4_0 {
    const DTYPE: GgmlDType = GgmlDType::Q4_0;
    const BYTES: usize = 18;
    #[inline(always)]
    fn values(block: &[u8], out: &mut [f32; BLOCK]) {
        let d = f16_at(block, 0);
        for j in 0..BLOCK / 2 {
            let q = block[2 + j];
            out[j] = (((q & 0x0F) as i16 - 8) as f32) * d;
            out[j + BLOCK / 2] = (((q >> 4) as i16 - 8) as f32) * d;
        }
    }
}

/// `{ d: f16, m: f16, qs: [u8; 16] }`: `nibble · d + m`, low nibbles first.
pub(crate) struct Q4_1;

impl Fused for Q4_1 {
    const DTYPE: GgmlDType = GgmlDType::Q4_1;
    const BYTES: usize = 20;
    #[inline(always)]
    fn values(block: &[u8], out: &mut [f32; BLOCK]) {
        let (d, m) = (f16_at(block, 0), f16_at(block, 2));
        for j in 0..BLOCK / 2 {
            let q = block[4 + j];
            out[j] = ((q & 0x0F) as f32) * d + m;
            out[j + BLOCK / 2] = ((q >> 4) as f32) * d + m;
        }
    }
}

/// `{ d: f16, qs: [i8; 32] }`: `q · d`.
pub(crate) struct Q8_0;

impl Fused for Q8_0 {
    const DTYPE: GgmlDType = GgmlDType::Q8_0;
    const BYTES: usize = 34;
    #[inline(always)]
    fn values(block: &[u8], out: &mut [f32; BLOCK]) {
        let d = f16_at(block, 0);
        for (o, &q) in out.iter_mut().zip(&block[2..2 + BLOCK]) {
            *o = (q as i8 as f32) * d;
        }
    }
}

/// Fills `out_t` `(n, m)` with each weight row's products with the `m`
/// rows of `xs` (`k` values each), `bytes` holding `n` rows of `F` blocks;
/// each task of rayon's takes `rows_per_task` weight rows.
pub(crate) fn rows_dot<F: Fused>(
    bytes: &[u8],
    (n, k): (usize, usize),
    xs: &[f32],
    m: usize,
    out_t: &mut [f32],
    rows_per_task: usize,
) -> Result<()> {
    let row_bytes = k / BLOCK * F::BYTES;
    if !k.is_multiple_of(BLOCK) || bytes.len() != n * row_bytes {
        candle_core::bail!(
            "{:?} weight ({n}, {k}): {} bytes are not whole rows of {}-byte blocks",
            F::DTYPE,
            bytes.len(),
            F::BYTES
        );
    }
    if m == 0 || m > GEMV_MAX_ROWS || xs.len() != m * k || out_t.len() != n * m {
        candle_core::bail!(
            "fused product: {m} input rows of {k} values and {} outputs do not fit",
            out_t.len()
        );
    }
    let wide = has_avx2();
    out_t
        .par_chunks_mut(rows_per_task * m)
        .enumerate()
        .for_each(|(task, out)| {
            let first = task * rows_per_task;
            for (j, outs) in out.chunks_exact_mut(m).enumerate() {
                let r = first + j;
                let row = &bytes[r * row_bytes..(r + 1) * row_bytes];
                #[cfg(target_arch = "x86_64")]
                if wide {
                    // SAFETY: `has_avx2` saw the CPU run AVX2.
                    unsafe { row_dot_avx2::<F>(row, xs, k, outs) };
                    continue;
                }
                row_dot::<F>(row, xs, k, outs);
            }
        });
    Ok(())
}

fn has_avx2() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx2")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// [`row_dot`] compiled for AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn row_dot_avx2<F: Fused>(row: &[u8], xs: &[f32], k: usize, outs: &mut [f32]) {
    row_dot::<F>(row, xs, k, outs)
}

/// One weight row's products with each input row: eight lanes per input,
/// lane `l` summing values `8c + l` in order of `c`, as `qgemv`'s `dot`.
#[inline(always)]
fn row_dot<F: Fused>(row: &[u8], xs: &[f32], k: usize, outs: &mut [f32]) {
    let mut acc = [[0f32; 8]; GEMV_MAX_ROWS];
    let mut w = [0f32; BLOCK];
    for (b, block) in row.chunks_exact(F::BYTES).enumerate() {
        F::values(block, &mut w);
        for (i, lanes) in acc.iter_mut().take(outs.len()).enumerate() {
            let x = &xs[i * k + b * BLOCK..i * k + (b + 1) * BLOCK];
            for c in 0..BLOCK / 8 {
                for l in 0..8 {
                    lanes[l] += w[c * 8 + l] * x[c * 8 + l];
                }
            }
        }
    }
    for (o, lanes) in outs.iter_mut().zip(&acc) {
        *o = finish_lanes(lanes, 0.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The scalar and AVX2 builds of a row product agree bit for bit.
    fn both_builds<F: Fused>(row: &[u8], xs: &[f32], k: usize, m: usize) {
        let mut plain = vec![0f32; m];
        row_dot::<F>(row, xs, k, &mut plain);
        assert!(plain.iter().all(|v| v.is_finite()));
        #[cfg(target_arch = "x86_64")]
        if has_avx2() {
            let mut wide = vec![0f32; m];
            // SAFETY: the CPU runs AVX2 (checked).
            unsafe { row_dot_avx2::<F>(row, xs, k, &mut wide) };
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&wide), bits(&plain));
        }
    }

    #[test]
    fn scalar_and_avx2_builds_agree() {
        let k = 256;
        // Bytes cycling through every value, with float16 scales of 0.5
        // (0x3800) and offsets of -1.25 (0xbd00) written over each block's
        // header.
        let block_row = |bytes: usize, header: &[u8]| -> Vec<u8> {
            let mut v: Vec<u8> = (0..k / BLOCK * bytes)
                .map(|i| (i * 37 % 256) as u8)
                .collect();
            for b in v.chunks_exact_mut(bytes) {
                b[..header.len()].copy_from_slice(header);
            }
            v
        };
        let half = |v: f32| half::f16::from_f32(v).to_bits().to_ne_bytes();
        let (d, mn) = (half(0.5), half(-1.25));
        let xs: Vec<f32> = (0..GEMV_MAX_ROWS * k)
            .map(|i| ((i * 131 % 97) as f32 - 48.0) / 7.0)
            .collect();
        for m in [1, 3, GEMV_MAX_ROWS] {
            let xs = &xs[..m * k];
            both_builds::<Q4_0>(&block_row(Q4_0::BYTES, &d), xs, k, m);
            both_builds::<Q4_1>(&block_row(Q4_1::BYTES, &[d, mn].concat()), xs, k, m);
            both_builds::<Q8_0>(&block_row(Q8_0::BYTES, &d), xs, k, m);
        }
        // A Q4_1 block of nibbles 0..15 with d 0.5, m -1.25: 0.5 q - 1.25.
        let mut block = [d, mn].concat();
        block.extend((0..16u8).map(|j| j | ((15 - j) << 4)));
        let mut w = [0f32; BLOCK];
        Q4_1::values(&block, &mut w);
        for j in 0..16 {
            assert_eq!(w[j], 0.5 * j as f32 - 1.25);
            assert_eq!(w[j + 16], 0.5 * (15 - j) as f32 - 1.25);
        }
    }
}
