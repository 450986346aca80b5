//! Fused row products for the common block types (Q4_0, Q4_1, Q8_0 and the
//! k-quants Q4_K, Q5_K, Q6_K of llama.cpp's `Q4_K_M` / `Q5_K_M` files): each
//! block's values are made on the stack from its bytes and multiplied at
//! once, instead of being written out as a float32 row first and read back
//! ([`crate::qgemv`]'s general path).
//!
//! The values are the ones candle's `to_float` computes (the same
//! float32 expressions, in the same order) and each product is
//! summed in the general path's order (eight lanes over the row, then the
//! same pairwise finish), so the results are bit for bit the same. On an
//! x86-64 CPU with AVX2 the same code runs compiled for it, and for the
//! 32-value types with AVX-512 where the CPU has that (chosen at run time;
//! the k-quants measured no faster with it, `cargo bench -p calico-nn
//! --bench qgemv`). The lanes are written out and float arithmetic is never
//! reordered by the compiler, so the results do not depend on the
//! instruction set either.

use candle_core::quantized::GgmlDType;
use candle_core::Result;

use crate::qgemv::{finish_lanes, for_each_row, GEMV_MAX_ROWS};

/// Values per block of the simple types.
const BLOCK: usize = 32;

/// Values per block of the k-quants (`QK_K`).
const SUPER: usize = 256;

/// A block type whose values a fused product reads straight from its bytes.
pub(crate) trait Fused {
    const DTYPE: GgmlDType;
    /// Values per block: 32, or 256 for the k-quants.
    const VALUES: usize;
    /// Bytes of one block (candle's `repr(C)` struct).
    const BYTES: usize;
    /// Whether the AVX-512 build is the faster one.
    const AVX512: bool;
    /// The block's values (`out` holds [`Self::VALUES`]), as candle's
    /// `to_float` computes them.
    fn values(block: &[u8], out: &mut [f32]);
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
    const VALUES: usize = BLOCK;
    const AVX512: bool = true;
    const BYTES: usize = 18;
    #[inline(always)]
    fn values(block: &[u8], out: &mut [f32]) {
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
    const VALUES: usize = BLOCK;
    const AVX512: bool = true;
    const BYTES: usize = 20;
    #[inline(always)]
    fn values(block: &[u8], out: &mut [f32]) {
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
    const VALUES: usize = BLOCK;
    const AVX512: bool = true;
    const BYTES: usize = 34;
    #[inline(always)]
    fn values(block: &[u8], out: &mut [f32]) {
        let d = f16_at(block, 0);
        for (o, &q) in out.iter_mut().zip(&block[2..2 + BLOCK]) {
            *o = (q as i8 as f32) * d;
        }
    }
}

/// Scale and minimum `j` (0..8) of a Q4_K / Q5_K block's 12 packed 6-bit
/// pairs (llama.cpp's `get_scale_min_k4`).
#[inline(always)]
fn scale_min_k4(j: usize, q: &[u8]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        (
            (q[j + 4] & 0x0F) | ((q[j - 4] >> 6) << 4),
            (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
        )
    }
}

/// Q4_K's (absent) fifth bits.
const NO_FIFTH_BITS: [u8; 32] = [0; 32];

/// The values of a Q4_K or Q5_K block: `d` and `dmin` at its start, eight
/// sub-blocks of 32, each `d · sc · q − dmin · m`; within 64 values the low
/// nibbles of 32 bytes of `qs`, then their high nibbles, and a fifth bit of
/// each from `qh` (bits 2g and 2g + 1 for 64-value group g; Q4_K's are
/// [`NO_FIFTH_BITS`]).
#[inline(always)]
fn k_nibble_values(block: &[u8], scales: &[u8], qs: &[u8], qh: &[u8], out: &mut [f32]) {
    let (d, min) = (f16_at(block, 0), f16_at(block, 2));
    for (g, out) in out.chunks_exact_mut(64).enumerate() {
        let q = &qs[g * 32..g * 32 + 32];
        let (sc, m) = scale_min_k4(2 * g, scales);
        let (d1, m1) = (d * sc as f32, min * m as f32);
        let (sc, m) = scale_min_k4(2 * g + 1, scales);
        let (d2, m2) = (d * sc as f32, min * m as f32);
        let (u1, u2) = (1u8 << (2 * g), 2u8 << (2 * g));
        for (j, (&b, &h)) in q.iter().zip(qh).enumerate() {
            // candle adds 16.0 to the nibble's float for a fifth bit: the
            // same value as the 5-bit integer's.
            let lo = (b & 0xF) | if h & u1 != 0 { 16 } else { 0 };
            let hi = (b >> 4) | if h & u2 != 0 { 16 } else { 0 };
            out[j] = d1 * lo as f32 - m1;
            out[j + 32] = d2 * hi as f32 - m2;
        }
    }
}

/// `{ d: f16, dmin: f16, scales: [u8; 12], qs: [u8; 128] }`
/// ([`k_nibble_values`]).
pub(crate) struct Q4K;

impl Fused for Q4K {
    const DTYPE: GgmlDType = GgmlDType::Q4K;
    const VALUES: usize = SUPER;
    const AVX512: bool = false;
    const BYTES: usize = 144;
    #[inline(always)]
    fn values(block: &[u8], out: &mut [f32]) {
        k_nibble_values(block, &block[4..16], &block[16..144], &NO_FIFTH_BITS, out)
    }
}

/// `{ d: f16, dmin: f16, scales: [u8; 12], qh: [u8; 32], qs: [u8; 128] }`
/// ([`k_nibble_values`]).
pub(crate) struct Q5K;

impl Fused for Q5K {
    const DTYPE: GgmlDType = GgmlDType::Q5K;
    const VALUES: usize = SUPER;
    const AVX512: bool = false;
    const BYTES: usize = 176;
    #[inline(always)]
    fn values(block: &[u8], out: &mut [f32]) {
        k_nibble_values(block, &block[4..16], &block[48..176], &block[16..48], out)
    }
}

/// `{ ql: [u8; 128], qh: [u8; 64], scales: [i8; 16], d: f16 }`: 6-bit
/// values (4 low bits from `ql`, 2 high from `qh`) minus 32, each times
/// `d · scale` of its 16.
pub(crate) struct Q6K;

impl Fused for Q6K {
    const DTYPE: GgmlDType = GgmlDType::Q6K;
    const VALUES: usize = SUPER;
    const AVX512: bool = false;
    const BYTES: usize = 210;
    #[inline(always)]
    fn values(block: &[u8], out: &mut [f32]) {
        let d = f16_at(block, 208);
        for (half, out) in out.chunks_exact_mut(128).enumerate() {
            let ql = &block[64 * half..64 * half + 64];
            let qh = &block[128 + 32 * half..128 + 32 * half + 32];
            let sc = &block[192 + 8 * half..192 + 8 * half + 8];
            for l in 0..32 {
                let is = l / 16;
                let q1 = ((ql[l] & 0xF) | ((qh[l] & 3) << 4)) as i8 - 32;
                let q2 = ((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) as i8 - 32;
                let q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i8 - 32;
                let q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i8 - 32;
                out[l] = d * (sc[is] as i8) as f32 * q1 as f32;
                out[l + 32] = d * (sc[is + 2] as i8) as f32 * q2 as f32;
                out[l + 64] = d * (sc[is + 4] as i8) as f32 * q3 as f32;
                out[l + 96] = d * (sc[is + 6] as i8) as f32 * q4 as f32;
            }
        }
    }
}

/// Fills `out_t` `(n, m)` with each weight row's products with the `m`
/// rows of `xs` (`k` values each), `bytes` holding `n` rows of `F` blocks;
/// rayon's tasks take their rows as the row path's ([`for_each_row`]).
pub(crate) fn rows_dot<F: Fused>(
    bytes: &[u8],
    (n, k): (usize, usize),
    xs: &[f32],
    m: usize,
    out_t: &mut [f32],
) -> Result<()> {
    let row_bytes = k / F::VALUES * F::BYTES;
    if !k.is_multiple_of(F::VALUES) || bytes.len() != n * row_bytes {
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
    let isa = Isa::best_for::<F>();
    for_each_row(
        out_t,
        m,
        || (),
        |_, r, outs| isa.row_dot::<F>(&bytes[r * row_bytes..(r + 1) * row_bytes], xs, k, outs),
    );
    Ok(())
}

/// The instruction set a row product is compiled for.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Isa {
    Plain,
    Avx2,
    Avx512,
}

impl Isa {
    /// The fastest build for `F` that this CPU runs.
    fn best_for<F: Fused>() -> Self {
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::is_x86_feature_detected as has;
            if F::AVX512 && has!("avx512f") && has!("avx512bw") && has!("avx2") {
                return Isa::Avx512;
            }
            if has!("avx2") {
                return Isa::Avx2;
            }
        }
        Isa::Plain
    }

    fn row_dot<F: Fused>(self, row: &[u8], xs: &[f32], k: usize, outs: &mut [f32]) {
        match self {
            // SAFETY: `best_for` (or a test) saw the CPU run these.
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => unsafe { row_dot_avx512::<F>(row, xs, k, outs) },
            // SAFETY: as above.
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => unsafe { row_dot_avx2::<F>(row, xs, k, outs) },
            _ => row_dot::<F>(row, xs, k, outs),
        }
    }
}

/// [`row_dot`] compiled for AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn row_dot_avx2<F: Fused>(row: &[u8], xs: &[f32], k: usize, outs: &mut [f32]) {
    row_dot::<F>(row, xs, k, outs)
}

/// [`row_dot`] compiled for AVX-512.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,avx512f,avx512bw")]
unsafe fn row_dot_avx512<F: Fused>(row: &[u8], xs: &[f32], k: usize, outs: &mut [f32]) {
    row_dot::<F>(row, xs, k, outs)
}

/// One weight row's products with each input row: eight lanes per input,
/// lane `l` summing values `8c + l` in order of `c`, as `qgemv`'s `dot`.
#[inline(always)]
fn row_dot<F: Fused>(row: &[u8], xs: &[f32], k: usize, outs: &mut [f32]) {
    let mut acc = [[0f32; 8]; GEMV_MAX_ROWS];
    let mut w = [0f32; SUPER];
    let w = &mut w[..F::VALUES];
    for (b, block) in row.chunks_exact(F::BYTES).enumerate() {
        F::values(block, w);
        for (i, lanes) in acc.iter_mut().take(outs.len()).enumerate() {
            let x = &xs[i * k + b * F::VALUES..i * k + (b + 1) * F::VALUES];
            for c in 0..F::VALUES / 8 {
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
    use candle_core::quantized::QTensor;
    use candle_core::{Device, Tensor};

    /// `rows` rows of `k` values quantized to `F`'s type by candle.
    fn blocks<F: Fused>(rows: usize, k: usize) -> Vec<u8> {
        let vals: Vec<f32> = (0..rows * k)
            .map(|i| ((i * 7919 % 1013) as f32 / 1013.0 - 0.45) * 2.5)
            .collect();
        let w = Tensor::from_vec(vals, (rows, k), &Device::Cpu).unwrap();
        let q = QTensor::quantize(&w, F::DTYPE).unwrap();
        q.data().unwrap().into_owned()
    }

    /// Every build of one row's products that this CPU runs agrees with
    /// the plain one bit for bit.
    fn every_build<F: Fused>(k: usize) {
        let row = blocks::<F>(1, k);
        let xs: Vec<f32> = (0..GEMV_MAX_ROWS * k)
            .map(|i| ((i * 131 % 97) as f32 - 48.0) / 7.0)
            .collect();
        #[cfg(target_arch = "x86_64")]
        let builds: Vec<Isa> = {
            use std::arch::is_x86_feature_detected as has;
            let mut b = Vec::new();
            if has!("avx2") {
                b.push(Isa::Avx2);
                if has!("avx512f") && has!("avx512bw") {
                    b.push(Isa::Avx512);
                }
            }
            b
        };
        #[cfg(not(target_arch = "x86_64"))]
        let builds: Vec<Isa> = Vec::new();
        for m in [1, 3, GEMV_MAX_ROWS] {
            let xs = &xs[..m * k];
            let mut plain = vec![0f32; m];
            Isa::Plain.row_dot::<F>(&row, xs, k, &mut plain);
            assert!(plain.iter().all(|v| v.is_finite() && *v != 0.0));
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            for &isa in &builds {
                let mut got = vec![0f32; m];
                isa.row_dot::<F>(&row, xs, k, &mut got);
                assert_eq!(
                    bits(&got),
                    bits(&plain),
                    "{:?} {isa:?}, {m} inputs",
                    F::DTYPE
                );
            }
        }
    }

    #[test]
    fn every_instruction_set_gives_the_same_bits() {
        every_build::<Q4_0>(512);
        every_build::<Q4_1>(512);
        every_build::<Q8_0>(512);
        every_build::<Q4K>(512);
        every_build::<Q5K>(512);
        every_build::<Q6K>(512);
    }

    #[test]
    fn block_values_follow_the_layouts() {
        let half = |v: f32| half::f16::from_f32(v).to_bits().to_ne_bytes();
        // Q4_1 nibbles 0..15 (low) and 15..0 (high), d 0.5, m -1.25.
        let mut block = [half(0.5), half(-1.25)].concat();
        block.extend((0..16u8).map(|j| j | ((15 - j) << 4)));
        let mut w = [0f32; BLOCK];
        Q4_1::values(&block, &mut w);
        for j in 0..16 {
            assert_eq!(w[j], 0.5 * j as f32 - 1.25);
            assert_eq!(w[j + 16], 0.5 * (15 - j) as f32 - 1.25);
        }
        // Q6_K: d 0.25 at the end, every scale 2, every value's low bits 5
        // and high bits 1: (16 + 5 − 32) · 0.25 · 2.
        let mut block = vec![0x55u8; 128];
        block.extend([0x55u8; 64]);
        block.extend([2u8; 16]);
        block.extend(half(0.25));
        let mut w = [0f32; SUPER];
        Q6K::values(&block, &mut w);
        assert!(w.iter().all(|&v| v == -5.5), "{:?}", &w[..8]);
    }
}
