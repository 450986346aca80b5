//! Label-map PNGs (8- and 16-bit grayscale or palette) and nearest resize.
//!
//! ADE20K-Part-234 stores part ids in 16-bit PNGs (65535 = no part); most
//! other datasets use 8-bit grayscale or palette PNGs. Writes are atomic:
//! the file appears complete or not at all.

use crate::error::{MaskError, Result};
use crate::mask::Mask;
use std::fs::File;
use std::io::{BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};

/// A row-major map of integer labels, one per pixel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LabelMap {
    /// Height in pixels.
    pub height: u32,
    /// Width in pixels.
    pub width: u32,
    /// Bits per sample of the file it came from (8 or 16).
    pub bit_depth: u8,
    /// Row-major labels.
    pub data: Vec<u16>,
}

impl LabelMap {
    /// A map filled with `value`.
    pub fn filled(height: u32, width: u32, bit_depth: u8, value: u16) -> Self {
        LabelMap {
            height,
            width,
            bit_depth,
            data: vec![value; height as usize * width as usize],
        }
    }

    /// The label at row `y`, column `x`.
    pub fn get(&self, y: u32, x: u32) -> u16 {
        self.data[y as usize * self.width as usize + x as usize]
    }

    /// Sets the label at row `y`, column `x`.
    pub fn set(&mut self, y: u32, x: u32, value: u16) {
        self.data[y as usize * self.width as usize + x as usize] = value;
    }

    /// The binary mask of pixels equal to `label`.
    pub fn mask_of(&self, label: u16) -> Mask {
        self.mask_where(|v| v == label)
    }

    /// The binary mask of pixels whose label satisfies `f`.
    pub fn mask_where(&self, f: impl Fn(u16) -> bool) -> Mask {
        let w = self.width as usize;
        Mask::from_fn(self.height, self.width, |y, x| {
            f(self.data[y as usize * w + x as usize])
        })
    }

    /// Distinct labels present, sorted.
    pub fn labels(&self) -> Vec<u16> {
        let mut seen = vec![false; 65536];
        for &v in &self.data {
            seen[v as usize] = true;
        }
        (0..=u16::MAX).filter(|&v| seen[v as usize]).collect()
    }

    /// Nearest-neighbour resize with pixel-centre alignment: output pixel `i`
    /// samples input `floor((i + 0.5) · in / out)`, rounded exactly as Pillow's
    /// `Image.NEAREST` does for an 8-bit (`L`) or 16-bit (`I;16`) image, so the
    /// result is identical to Pillow's.
    pub fn resize_nearest(&self, height: u32, width: u32) -> LabelMap {
        let accumulate = self.bit_depth <= 8;
        let ys = nearest_index(self.height, height, accumulate);
        let xs = nearest_index(self.width, width, accumulate);
        let mut data = Vec::with_capacity(height as usize * width as usize);
        for &sy in &ys {
            let row = &self.data[sy * self.width as usize..][..self.width as usize];
            data.extend(xs.iter().map(|&sx| row[sx]));
        }
        LabelMap {
            height,
            width,
            bit_depth: self.bit_depth,
            data,
        }
    }
}

/// Nearest-neighbour resize of a binary mask (as [`LabelMap::resize_nearest`] on an 8-bit map).
pub fn resize_mask_nearest(mask: &Mask, height: u32, width: u32) -> Mask {
    let ys = nearest_index(mask.height(), height, true);
    let xs = nearest_index(mask.width(), width, true);
    let src = mask.as_column_major();
    let h = mask.height() as usize;
    let mut data = Vec::with_capacity(height as usize * width as usize);
    for &sx in &xs {
        let col = &src[sx * h..];
        data.extend(ys.iter().map(|&sy| col[sy]));
    }
    Mask::from_column_major(height, width, data).unwrap_or_else(|_| Mask::zeros(height, width))
}

/// Source index of every output pixel, as Pillow's `Image.resize(…, NEAREST)`
/// computes it: 8-bit images go through `ImagingScaleAffine`, which
/// accumulates the position by repeated addition; 16-bit images go through
/// the generic transform, which multiplies. Both floor `(i + 0.5) · in / out`,
/// and the two roundings differ in the last bit often enough to matter.
fn nearest_index(input: u32, output: u32, accumulate: bool) -> Vec<usize> {
    if input == 0 {
        return Vec::new();
    }
    let scale = input as f64 / output as f64;
    let last = input as usize - 1;
    if accumulate {
        let mut pos = scale * 0.5;
        (0..output)
            .map(|_| {
                let i = (pos as usize).min(last);
                pos += scale;
                i
            })
            .collect()
    } else {
        (0..output)
            .map(|i| ((scale * (i as f64 + 0.5)) as usize).min(last))
            .collect()
    }
}

fn png_err(path: &Path, reason: impl Into<String>) -> MaskError {
    MaskError::Png {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

/// Reads an 8- or 16-bit single-channel PNG (grayscale or palette indices).
pub fn read_label_png(path: &Path) -> Result<LabelMap> {
    let file = File::open(path).map_err(|error| MaskError::Io {
        path: path.to_path_buf(),
        error,
    })?;
    let mut decoder = png::Decoder::new(BufReader::new(file));
    // Keep palette indices and 16-bit samples as they are.
    decoder.set_transformations(png::Transformations::IDENTITY);
    let mut reader = decoder
        .read_info()
        .map_err(|e| png_err(path, format!("not a readable PNG: {e}")))?;
    let info = reader.info();
    let (width, height) = (info.width, info.height);
    let color = info.color_type;
    let depth = info.bit_depth;
    if !matches!(color, png::ColorType::Grayscale | png::ColorType::Indexed) {
        return Err(png_err(
            path,
            format!("expected a single-channel label PNG (grayscale or palette), found {color:?}"),
        ));
    }
    let bit_depth = match depth {
        png::BitDepth::Eight => 8,
        png::BitDepth::Sixteen => 16,
        other => {
            return Err(png_err(
                path,
                format!("expected 8- or 16-bit samples, found {other:?}"),
            ))
        }
    };
    let mut buf = vec![0u8; reader.output_buffer_size()];
    let frame = reader
        .next_frame(&mut buf)
        .map_err(|e| png_err(path, format!("corrupt image data: {e}")))?;
    let bytes = &buf[..frame.buffer_size()];
    let data: Vec<u16> = if bit_depth == 8 {
        bytes.iter().map(|&b| b as u16).collect()
    } else {
        bytes
            .chunks_exact(2)
            .map(|c| u16::from_be_bytes([c[0], c[1]]))
            .collect()
    };
    if data.len() != width as usize * height as usize {
        return Err(png_err(path, "pixel data size does not match the header"));
    }
    Ok(LabelMap {
        height,
        width,
        bit_depth,
        data,
    })
}

/// Writes a grayscale label PNG with `map.bit_depth` bits (8 or 16), atomically.
pub fn write_label_png(path: &Path, map: &LabelMap) -> Result<()> {
    let (depth, bytes) = match map.bit_depth {
        8 => {
            if let Some(v) = map.data.iter().find(|&&v| v > 255) {
                return Err(png_err(
                    path,
                    format!("label {v} does not fit an 8-bit PNG; use bit_depth 16"),
                ));
            }
            (
                png::BitDepth::Eight,
                map.data.iter().map(|&v| v as u8).collect::<Vec<u8>>(),
            )
        }
        16 => (
            png::BitDepth::Sixteen,
            map.data.iter().flat_map(|v| v.to_be_bytes()).collect(),
        ),
        other => return Err(png_err(path, format!("bit depth {other} is not 8 or 16"))),
    };
    write_gray_png(path, map.height, map.width, depth, &bytes)
}

/// Writes a binary mask as an 8-bit PNG (0 and 255), atomically.
pub fn write_mask_png(path: &Path, mask: &Mask) -> Result<()> {
    let bytes: Vec<u8> = mask.to_row_major().iter().map(|&v| v * 255).collect();
    write_gray_png(
        path,
        mask.height(),
        mask.width(),
        png::BitDepth::Eight,
        &bytes,
    )
}

/// Reads a PNG as a binary mask: every non-zero label is foreground.
pub fn read_mask_png(path: &Path) -> Result<Mask> {
    read_label_png(path).map(|m| m.mask_where(|v| v != 0))
}

fn write_gray_png(
    path: &Path,
    height: u32,
    width: u32,
    depth: png::BitDepth,
    bytes: &[u8],
) -> Result<()> {
    write_atomic(path, |w| {
        let mut enc = png::Encoder::new(w, width, height);
        enc.set_color(png::ColorType::Grayscale);
        enc.set_depth(depth);
        let mut writer = enc.write_header().map_err(std::io::Error::other)?;
        writer
            .write_image_data(bytes)
            .map_err(std::io::Error::other)?;
        writer.finish().map_err(std::io::Error::other)
    })
}

/// Writes a file through a temporary sibling and renames it into place, so a
/// crash never leaves a half-written file under `path`.
pub fn write_atomic(
    path: &Path,
    write: impl FnOnce(&mut BufWriter<File>) -> std::io::Result<()>,
) -> Result<()> {
    let io = |error| MaskError::Io {
        path: path.to_path_buf(),
        error,
    };
    let tmp = temp_sibling(path);
    let result = (|| {
        let mut w = BufWriter::new(File::create(&tmp)?);
        write(&mut w)?;
        w.flush()?;
        w.get_ref().sync_all()?;
        drop(w);
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.map_err(io)
}

fn temp_sibling(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.tmp{}", std::process::id()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmpdir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("calico-masks-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn sixteen_bit_round_trip_keeps_large_ids() {
        let d = tmpdir("png16");
        let mut map = LabelMap::filled(3, 4, 16, 65535);
        map.set(1, 2, 233);
        map.set(2, 3, 40000);
        let p = d.join("part.png");
        write_label_png(&p, &map).unwrap();
        let back = read_label_png(&p).unwrap();
        assert_eq!(back, map);
        assert_eq!(back.labels(), vec![233, 40000, 65535]);
        assert!(back.mask_of(233).get(1, 2));
        assert_eq!(back.mask_of(233).area(), 1);
    }

    #[test]
    fn eight_bit_refuses_large_labels_and_writes_nothing() {
        let d = tmpdir("png8");
        let p = d.join("bad.png");
        let map = LabelMap::filled(2, 2, 8, 300);
        assert!(write_label_png(&p, &map).is_err());
        assert!(!p.exists());
    }

    #[test]
    fn rgb_png_is_rejected_with_the_file_name() {
        let d = tmpdir("rgb");
        let p = d.join("rgb.png");
        write_atomic(&p, |w| {
            let mut enc = png::Encoder::new(w, 1, 1);
            enc.set_color(png::ColorType::Rgb);
            let mut wr = enc.write_header().map_err(std::io::Error::other)?;
            wr.write_image_data(&[1, 2, 3])
                .map_err(std::io::Error::other)
        })
        .unwrap();
        let err = read_label_png(&p).unwrap_err().to_string();
        assert!(err.contains("rgb.png") && err.contains("Rgb"), "{err}");
        let err = read_label_png(&d.join("missing.png"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("missing.png"), "{err}");
    }

    #[test]
    fn nearest_resize_uses_pixel_centres() {
        let map = LabelMap {
            height: 1,
            width: 4,
            bit_depth: 8,
            data: vec![1, 2, 3, 4],
        };
        assert_eq!(map.resize_nearest(1, 2).data, vec![2, 4]);
        assert_eq!(map.resize_nearest(1, 8).data, vec![1, 1, 2, 2, 3, 3, 4, 4]);
        assert_eq!(map.resize_nearest(1, 3).data, vec![1, 3, 4]); // Pillow gives [1 3 4]
        assert_eq!(map.resize_nearest(1, 7).data, vec![1, 1, 2, 2, 3, 4, 4]);
        let m = map.mask_of(2);
        assert_eq!(resize_mask_nearest(&m, 2, 8).area(), 4);
    }

    #[test]
    fn mask_png_round_trip() {
        let d = tmpdir("mask");
        let m = Mask::from_row_major(2, 2, &[1, 0, 0, 1]).unwrap();
        let p = d.join("m.png");
        write_mask_png(&p, &m).unwrap();
        assert_eq!(read_mask_png(&p).unwrap(), m);
    }
}
