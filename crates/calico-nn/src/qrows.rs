//! The row layout of a 2-D quantised weight `(rows, cols)`: each row is
//! `cols / block_size` blocks of `type_size` bytes, stored one row after the
//! other. Code that moves or reads whole rows as bytes (the GGUF loader's
//! q/k reordering, [`crate::QuantizedTable`]'s chunks and lookups,
//! [`crate::qgemv`]'s row-at-a-time product) checks the layout here.

use std::borrow::Cow;

use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::Result;

/// Whether a stored type is a plain float (F32, F16, BF16) rather than
/// llama.cpp's blocks: such weights are used as float32 tensors.
pub fn is_float(dtype: GgmlDType) -> bool {
    matches!(dtype, GgmlDType::F32 | GgmlDType::F16 | GgmlDType::BF16)
}

/// A 2-D quantised weight's rows; see the module docs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RowLayout {
    pub rows: usize,
    pub cols: usize,
    pub dtype: GgmlDType,
    /// Bytes of one row's blocks.
    pub row_bytes: usize,
}

impl RowLayout {
    /// The layout of `w`: an error unless it is 2-D and its rows split into
    /// whole blocks.
    pub fn of(w: &QTensor) -> Result<Self> {
        let dims = w.shape().dims();
        let (rows, cols) = match dims {
            [r, c] => (*r, *c),
            _ => candle_core::bail!("a quantized weight must be 2-D, got shape {dims:?}"),
        };
        let dtype = w.dtype();
        if !cols.is_multiple_of(dtype.block_size()) {
            candle_core::bail!(
                "rows of {cols} values do not split into {dtype:?} blocks of {}",
                dtype.block_size()
            );
        }
        Ok(Self {
            rows,
            cols,
            dtype,
            row_bytes: cols / dtype.block_size() * dtype.type_size(),
        })
    }

    /// `w`'s bytes (borrowed on the CPU, copied from other devices), checked
    /// to hold exactly `rows` rows.
    pub fn data<'a>(&self, w: &'a QTensor) -> Result<Cow<'a, [u8]>> {
        let data = w.data()?;
        if data.len() != self.rows * self.row_bytes {
            candle_core::bail!(
                "{:?} weight ({}, {}) holds {} bytes, expected {}",
                self.dtype,
                self.rows,
                self.cols,
                data.len(),
                self.rows * self.row_bytes
            );
        }
        Ok(data)
    }

    /// Bytes of rows `start..start + n` within `data`.
    pub fn rows_of<'d>(&self, data: &'d [u8], start: usize, n: usize) -> &'d [u8] {
        &data[start * self.row_bytes..(start + n) * self.row_bytes]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device, Tensor};

    #[test]
    fn layouts_are_checked() {
        let dev = Device::Cpu;
        let w = Tensor::ones((3, 64), DType::F32, &dev).unwrap();
        let q = QTensor::quantize(&w, GgmlDType::Q8_0).unwrap();
        let l = RowLayout::of(&q).unwrap();
        // Two Q8_0 blocks of 34 bytes per row.
        assert_eq!((l.rows, l.cols, l.row_bytes), (3, 64, 68));
        let data = l.data(&q).unwrap();
        assert_eq!(data.len(), 3 * 68);
        assert_eq!(l.rows_of(&data, 1, 2).len(), 2 * 68);
        let v = Tensor::ones(64, DType::F32, &dev).unwrap();
        let e = RowLayout::of(&QTensor::quantize(&v, GgmlDType::Q8_0).unwrap())
            .unwrap_err()
            .to_string();
        assert!(e.contains("must be 2-D, got shape [64]"), "{e}");
        assert!(is_float(GgmlDType::BF16) && !is_float(GgmlDType::Q4K));
    }
}
