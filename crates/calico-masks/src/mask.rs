//! Binary masks stored in COCO (column-major) order.

use crate::error::{MaskError, Result};

/// A binary mask of `height × width` pixels, each 0 or 1.
///
/// Pixels are stored **column-major** (the order of COCO RLE and of
/// `np.asfortranarray`), so run-length encoding is a single forward scan.
/// Use [`Mask::from_row_major`] / [`Mask::to_row_major`] to exchange data
/// with images, which are row-major.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Mask {
    height: u32,
    width: u32,
    data: Vec<u8>,
}

impl std::fmt::Debug for Mask {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Mask({}×{}, area {})",
            self.height,
            self.width,
            self.area()
        )
    }
}

pub(crate) fn pixel_count(height: u32, width: u32) -> u64 {
    height as u64 * width as u64
}

impl Mask {
    /// An all-zero mask.
    pub fn zeros(height: u32, width: u32) -> Self {
        Mask {
            height,
            width,
            data: vec![0; pixel_count(height, width) as usize],
        }
    }

    /// A mask from column-major values; any non-zero value counts as 1.
    pub fn from_column_major(height: u32, width: u32, mut data: Vec<u8>) -> Result<Self> {
        check_len(data.len(), height, width)?;
        for v in &mut data {
            *v = (*v != 0) as u8;
        }
        Ok(Mask {
            height,
            width,
            data,
        })
    }

    /// A mask from row-major values (image order); any non-zero value counts as 1.
    pub fn from_row_major(height: u32, width: u32, data: &[u8]) -> Result<Self> {
        check_len(data.len(), height, width)?;
        Ok(Self::from_fn(height, width, |y, x| {
            data[y as usize * width as usize + x as usize] != 0
        }))
    }

    /// A mask whose pixel `(y, x)` is `f(y, x)`.
    pub fn from_fn(height: u32, width: u32, mut f: impl FnMut(u32, u32) -> bool) -> Self {
        let mut data = Vec::with_capacity(pixel_count(height, width) as usize);
        for x in 0..width {
            for y in 0..height {
                data.push(f(y, x) as u8);
            }
        }
        Mask {
            height,
            width,
            data,
        }
    }

    /// Wraps column-major 0/1 data that is known to be valid.
    pub(crate) fn from_raw(height: u32, width: u32, data: Vec<u8>) -> Self {
        debug_assert_eq!(data.len() as u64, pixel_count(height, width));
        Mask {
            height,
            width,
            data,
        }
    }

    /// Height in pixels.
    pub fn height(&self) -> u32 {
        self.height
    }

    /// Width in pixels.
    pub fn width(&self) -> u32 {
        self.width
    }

    /// The pixel at row `y`, column `x` (panics when out of bounds, like slice indexing).
    pub fn get(&self, y: u32, x: u32) -> bool {
        assert!(y < self.height && x < self.width, "pixel out of bounds");
        self.data[x as usize * self.height as usize + y as usize] != 0
    }

    /// Sets the pixel at row `y`, column `x` (panics when out of bounds).
    pub fn set(&mut self, y: u32, x: u32, value: bool) {
        assert!(y < self.height && x < self.width, "pixel out of bounds");
        self.data[x as usize * self.height as usize + y as usize] = value as u8;
    }

    /// Column-major 0/1 values.
    pub fn as_column_major(&self) -> &[u8] {
        &self.data
    }

    /// Row-major 0/1 values (image order).
    pub fn to_row_major(&self) -> Vec<u8> {
        let (h, w) = (self.height as usize, self.width as usize);
        let mut out = vec![0u8; h * w];
        for x in 0..w {
            let col = &self.data[x * h..(x + 1) * h];
            for (y, &v) in col.iter().enumerate() {
                out[y * w + x] = v;
            }
        }
        out
    }

    /// Number of foreground pixels.
    pub fn area(&self) -> u64 {
        self.data.iter().map(|&v| v as u64).sum()
    }

    /// Pixel-wise OR with another mask of the same size.
    pub fn union(&self, other: &Mask) -> Result<Mask> {
        self.zip(other, |a, b| a | b)
    }

    /// Pixel-wise AND with another mask of the same size.
    pub fn intersection(&self, other: &Mask) -> Result<Mask> {
        self.zip(other, |a, b| a & b)
    }

    fn zip(&self, other: &Mask, f: impl Fn(u8, u8) -> u8) -> Result<Mask> {
        self.check_same_size(other)?;
        let data = self
            .data
            .iter()
            .zip(&other.data)
            .map(|(&a, &b)| f(a, b))
            .collect();
        Ok(Mask::from_raw(self.height, self.width, data))
    }

    pub(crate) fn check_same_size(&self, other: &Mask) -> Result<()> {
        if self.height != other.height || self.width != other.width {
            return Err(MaskError::SizeMismatch {
                a_height: self.height,
                a_width: self.width,
                b_height: other.height,
                b_width: other.width,
            });
        }
        Ok(())
    }
}

fn check_len(got: usize, height: u32, width: u32) -> Result<()> {
    let expected = pixel_count(height, width);
    if got as u64 != expected {
        return Err(MaskError::BufferSize {
            got,
            height,
            width,
            expected,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn row_major_round_trip() {
        let rows = [0u8, 1, 0, 1, 1, 0]; // 2 rows × 3 columns
        let m = Mask::from_row_major(2, 3, &rows).unwrap();
        assert!(m.get(0, 1) && m.get(1, 0) && m.get(1, 1));
        assert!(!m.get(0, 0) && !m.get(0, 2) && !m.get(1, 2));
        assert_eq!(m.as_column_major(), &[0, 1, 1, 1, 0, 0]);
        assert_eq!(m.to_row_major(), rows);
        assert_eq!(m.area(), 3);
    }

    #[test]
    fn wrong_buffer_size_is_an_error() {
        let err = Mask::from_row_major(2, 3, &[0; 5]).unwrap_err();
        assert!(err.to_string().contains("2×3 needs 6"), "{err}");
    }

    #[test]
    fn union_and_intersection() {
        let a = Mask::from_row_major(1, 4, &[1, 1, 0, 0]).unwrap();
        let b = Mask::from_row_major(1, 4, &[0, 1, 1, 0]).unwrap();
        assert_eq!(a.union(&b).unwrap().to_row_major(), [1, 1, 1, 0]);
        assert_eq!(a.intersection(&b).unwrap().to_row_major(), [0, 1, 0, 0]);
        assert!(a.union(&Mask::zeros(2, 2)).is_err());
    }
}
