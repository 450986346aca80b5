//! A block-quantised `(rows, cols)` table read two ways: rows by index (a
//! token-embedding lookup) and as a linear map onto the rows (an output
//! head, tied or not). A LLaMA's vocabulary tables are its largest single
//! tensors (32,000 × 4,096 for a 7B, 49,152 × 576 for SmolLM2-135M); kept in
//! their stored type they take 1–4.5 bits a value instead of 32.
//!
//! Both reads give the numbers the dequantised float table gives: a lookup
//! dequantises only the rows it asks for, and the product dequantises the
//! table in chunks of [`TABLE_CHUNK_ROWS`] rows, so no float copy of the
//! whole table is ever held.
//!
//! The product never takes llama.cpp's integer kernels
//! ([`QuantizedMatmul::Q8`]), which quantise the input to 8 bits per block
//! of 32: a LLaMA's final hidden state has a few outlying channels (SmolLM2:
//! 33 against a median of 0.8), the other channels of their blocks lose most
//! of their bits, and the logits move by about 1 % of the largest, which is
//! enough to change SmolLM2's first answer token ("L'Étoile, …" instead of
//! "The capital of France is Paris.").

use std::sync::Arc;

use candle_core::quantized::{ggml_file, GgmlDType, QTensor};
use candle_core::{DType, Device, Result, Tensor, D};

use crate::linear::{quantized_product, QuantizedMatmul};
use crate::qrows::{is_float, RowLayout};

/// Rows per chunk of the product: the float copy a product holds at once is
/// at most this many rows (8,192 × 4,096 × 4 bytes = 128 MiB for a 7B).
pub const TABLE_CHUNK_ROWS: usize = 8192;

/// See the module docs.
#[derive(Debug, Clone)]
pub struct QuantizedTable {
    /// Consecutive row ranges of the table, each of `chunk_rows` rows but
    /// the last.
    chunks: Vec<Arc<QTensor>>,
    chunk_rows: usize,
    /// The whole table's rows.
    layout: RowLayout,
}

impl QuantizedTable {
    /// Wraps a `(rows, cols)` block-quantised weight. Float storage types
    /// are refused: such a table belongs in a plain tensor.
    pub fn new(table: Arc<QTensor>) -> Result<Self> {
        Self::with_chunk_rows(table, TABLE_CHUNK_ROWS)
    }

    /// [`QuantizedTable::new`] with a chosen chunk size (tests use small ones).
    pub fn with_chunk_rows(table: Arc<QTensor>, chunk_rows: usize) -> Result<Self> {
        let layout = RowLayout::of(&table)?;
        let (rows, cols, dtype) = (layout.rows, layout.cols, layout.dtype);
        if is_float(dtype) {
            candle_core::bail!("a quantized table needs a block-quantized type, got {dtype:?}");
        }
        if chunk_rows == 0 || rows == 0 {
            candle_core::bail!("a quantized table needs rows, got shape [{rows}, {cols}]");
        }
        let chunks = if rows <= chunk_rows {
            vec![table]
        } else {
            let data = layout.data(&table)?;
            let device = table.device();
            (0..rows)
                .step_by(chunk_rows)
                .map(|start| {
                    let n = chunk_rows.min(rows - start);
                    let bytes = layout.rows_of(&data, start, n);
                    ggml_file::qtensor_from_ggml(dtype, bytes, vec![n, cols], &device).map(Arc::new)
                })
                .collect::<Result<Vec<_>>>()?
        };
        Ok(Self {
            chunks,
            chunk_rows,
            layout,
        })
    }

    pub fn rows(&self) -> usize {
        self.layout.rows
    }

    pub fn cols(&self) -> usize {
        self.layout.cols
    }

    pub fn dtype(&self) -> GgmlDType {
        self.layout.dtype
    }

    pub fn device(&self) -> Device {
        self.chunks[0].device()
    }

    /// Bytes the quantised blocks take.
    pub fn size_in_bytes(&self) -> usize {
        self.chunks.iter().map(|c| c.storage_size_in_bytes()).sum()
    }

    /// Rows `ids` as a float32 `(ids.len(), cols)` tensor on the table's
    /// device. An id past the table is an error naming it.
    pub fn lookup(&self, ids: &[u32]) -> Result<Tensor> {
        let l = &self.layout;
        if let Some(bad) = ids.iter().find(|&&i| i as usize >= l.rows) {
            candle_core::bail!(
                "row {bad} is outside the quantized table of {} rows",
                l.rows
            );
        }
        let device = self.device();
        if ids.is_empty() {
            return Tensor::zeros((0, l.cols), DType::F32, &device);
        }
        if device.is_cpu() {
            // Copy the rows' blocks side by side and dequantise only those.
            let data: Vec<_> = self
                .chunks
                .iter()
                .map(|c| c.data())
                .collect::<Result<_>>()?;
            let mut picked = Vec::with_capacity(ids.len() * l.row_bytes);
            for &id in ids {
                let (c, r) = (id as usize / self.chunk_rows, id as usize % self.chunk_rows);
                picked.extend_from_slice(l.rows_of(&data[c], r, 1));
            }
            let q =
                ggml_file::qtensor_from_ggml(l.dtype, &picked, vec![ids.len(), l.cols], &device)?;
            return q.dequantize(&device);
        }
        // Elsewhere the blocks live on the accelerator: dequantise each
        // chunk the ids touch there, pick its rows, then restore the order.
        let mut parts = Vec::new();
        let mut order = Vec::with_capacity(ids.len());
        for (c, chunk) in self.chunks.iter().enumerate() {
            let mine: Vec<(usize, u32)> = ids
                .iter()
                .enumerate()
                .filter(|(_, &id)| id as usize / self.chunk_rows == c)
                .map(|(k, &id)| (k, (id as usize % self.chunk_rows) as u32))
                .collect();
            if mine.is_empty() {
                continue;
            }
            let local: Vec<u32> = mine.iter().map(|&(_, r)| r).collect();
            let n = local.len();
            let rows = chunk
                .dequantize(&device)?
                .index_select(&Tensor::from_vec(local, n, &device)?, 0)?;
            order.extend(mine.iter().map(|&(k, _)| k));
            parts.push(rows);
        }
        let stacked = Tensor::cat(&parts, 0)?;
        // `order[j]` is the input position of stacked row j; invert it.
        let mut inverse = vec![0u32; ids.len()];
        for (j, &k) in order.iter().enumerate() {
            inverse[k] = j as u32;
        }
        stacked.index_select(&Tensor::from_vec(inverse, ids.len(), &device)?, 0)
    }

    /// `(…, cols)` → `(…, rows)`: `h · tableᵀ`, chunk by chunk. A tracked
    /// `h` gets its gradient through [`crate::input_grad`] (the table itself is
    /// frozen), so no chunk's float copy outlives its product.
    pub fn forward(&self, h: &Tensor) -> Result<Tensor> {
        let free = h.contiguous()?.detach();
        let outs = self
            .chunks
            .iter()
            .map(|c| quantized_product(c, QuantizedMatmul::Dequantize, &free))
            .collect::<Result<Vec<_>>>()?;
        let y0 = if outs.len() == 1 {
            outs.into_iter().next().expect("one chunk")
        } else {
            Tensor::cat(&outs, D::Minus1)?
        };
        crate::input_grad::with_input_grad(h, y0, &self.chunks)
    }

    /// The mean row `(1, cols)` in float32, summed chunk by chunk (so at
    /// most one chunk is held as float32).
    pub fn mean_row(&self) -> Result<Tensor> {
        let device = self.device();
        let mut sum: Option<Tensor> = None;
        for c in &self.chunks {
            let part = c.dequantize(&device)?.sum_keepdim(0)?;
            sum = Some(match sum {
                Some(s) => (s + part)?,
                None => part,
            });
        }
        let sum = sum.expect("a table has at least one chunk");
        sum / self.layout.rows as f64
    }

    /// The whole table in float32 (tests and one-off inspection; inference
    /// never needs it).
    pub fn dequantize(&self) -> Result<Tensor> {
        let device = self.device();
        let parts = self
            .chunks
            .iter()
            .map(|c| c.dequantize(&device))
            .collect::<Result<Vec<_>>>()?;
        Tensor::cat(&parts, 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::linear::Linear;
    use crate::testing::max_rel_diff;

    fn table(rows: usize, cols: usize, dtype: GgmlDType) -> (Tensor, Arc<QTensor>) {
        let dev = Device::Cpu;
        let vals: Vec<f32> = (0..rows * cols)
            .map(|i| ((i * 7919 % 1013) as f32 / 1013.0 - 0.5) * 2.0)
            .collect();
        let t = Tensor::from_vec(vals, (rows, cols), &dev).unwrap();
        let q = QTensor::quantize(&t, dtype).unwrap();
        let float = q.dequantize(&dev).unwrap();
        (float, Arc::new(q))
    }

    #[test]
    fn lookup_gives_the_dequantized_rows_in_any_chunking() {
        let (float, q) = table(70, 64, GgmlDType::Q4_1);
        let ids = [0u32, 69, 13, 13, 32, 31, 64];
        let idx = Tensor::new(&ids[..], &Device::Cpu).unwrap();
        let want: Vec<Vec<f32>> = float.index_select(&idx, 0).unwrap().to_vec2().unwrap();
        for chunk in [8, 32, 70, 1000] {
            let t = QuantizedTable::with_chunk_rows(q.clone(), chunk).unwrap();
            assert_eq!(t.rows(), 70);
            let got: Vec<Vec<f32>> = t.lookup(&ids).unwrap().to_vec2().unwrap();
            assert_eq!(got, want, "chunks of {chunk} rows");
            assert_eq!(
                t.dequantize().unwrap().to_vec2::<f32>().unwrap(),
                float.to_vec2::<f32>().unwrap()
            );
            let mean = float.mean_keepdim(0).unwrap();
            assert!(
                max_rel_diff(&t.mean_row().unwrap(), &mean) < 1e-5,
                "chunks of {chunk}"
            );
        }
    }

    #[test]
    fn forward_matches_the_dequantized_product_in_any_chunking() {
        let (float, q) = table(70, 64, GgmlDType::Q8_0);
        let dev = Device::Cpu;
        for rows in [1usize, 5, 12] {
            let h = Tensor::randn(0f32, 1.0, (1, rows, 64), &dev).unwrap();
            let want = Linear::from_tensors(float.clone(), None)
                .forward(&h)
                .unwrap();
            for chunk in [16, 70] {
                let t = QuantizedTable::with_chunk_rows(q.clone(), chunk).unwrap();
                let got = t.forward(&h).unwrap();
                assert_eq!(got.dims(), &[1, rows, 70]);
                let err = max_rel_diff(&got, &want);
                assert!(err < 1e-6, "{rows} rows, chunks of {chunk}: {err}");
            }
        }
    }

    /// A tied head trained through (QLoRA): the hidden state gets the
    /// gradient of the dequantised product.
    #[test]
    fn a_tracked_input_gets_the_dequantized_gradient_in_any_chunking() {
        let (float, q) = table(70, 64, GgmlDType::Q4_1);
        let dev = Device::Cpu;
        let h0 = Tensor::randn(0f32, 1.0, (2, 3, 64), &dev).unwrap();
        let w = Tensor::randn(0f32, 1.0, (2, 3, 70), &dev).unwrap();
        let grad_of = |f: &dyn Fn(&Tensor) -> Tensor| {
            let h = candle_core::Var::from_tensor(&h0).unwrap();
            let y = f(h.as_tensor());
            let g = (y * &w).unwrap().sum_all().unwrap().backward().unwrap();
            g.get(h.as_tensor()).unwrap().clone()
        };
        let dense = Linear::from_tensors(float, None);
        let want = grad_of(&|h| dense.forward(h).unwrap());
        for chunk in [16, 64, 70] {
            let t = QuantizedTable::with_chunk_rows(q.clone(), chunk).unwrap();
            let got = grad_of(&|h| t.forward(h).unwrap());
            let err = max_rel_diff(&got, &want);
            assert!(err < 1e-5, "chunks of {chunk}: {err}");
        }
    }

    #[test]
    fn bad_tables_and_ids_are_refused() {
        let (float, q) = table(8, 32, GgmlDType::Q8_0);
        let t = QuantizedTable::new(q).unwrap();
        let e = t.lookup(&[3, 8]).unwrap_err().to_string();
        assert!(
            e.contains("row 8 is outside the quantized table of 8 rows"),
            "{e}"
        );
        let f = Arc::new(QTensor::quantize(&float, GgmlDType::F32).unwrap());
        let e = QuantizedTable::new(f).unwrap_err().to_string();
        assert!(e.contains("needs a block-quantized type, got F32"), "{e}");
        let v = Tensor::zeros(64, DType::F32, &Device::Cpu).unwrap();
        let one_d = Arc::new(QTensor::quantize(&v, GgmlDType::Q8_0).unwrap());
        let e = QuantizedTable::new(one_d).unwrap_err().to_string();
        assert!(e.contains("must be 2-D"), "{e}");
        assert_eq!(t.lookup(&[]).unwrap().dims(), &[0, 32]);
    }
}
