//! Reading a custom op's CPU input: the elements a contiguous layout
//! covers, with errors naming the op.

use candle_core::{CpuStorage, Layout, Result};

/// The elements of `data` that `layout` covers, which must be contiguous.
pub(crate) fn contiguous_slice<'a, T>(data: &'a [T], layout: &Layout, op: &str) -> Result<&'a [T]> {
    match layout.contiguous_offsets() {
        Some((start, end)) => Ok(&data[start..end]),
        None => candle_core::bail!("{op}: the input must be contiguous"),
    }
}

/// [`contiguous_slice`] of an `f32` storage.
pub(crate) fn f32_slice<'a>(
    storage: &'a CpuStorage,
    layout: &Layout,
    op: &str,
) -> Result<&'a [f32]> {
    match storage {
        CpuStorage::F32(v) => contiguous_slice(v, layout, op),
        _ => candle_core::bail!("{op}: expected f32"),
    }
}
