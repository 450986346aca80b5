//! Atomic file output: whole files through a temporary sibling and a
//! rename, and JSON files streamed into a temporary file that is renamed
//! into place only when complete (and removed when dropped unfinished).

use crate::error::{DataError, Result};
use image::ImageEncoder;
use serde::Serialize;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

fn temp_sibling(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.tmp{}", std::process::id()))
}

/// Creates the parent directory of `path`.
pub(crate) fn ensure_parent(path: &Path) -> Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| DataError::io(dir, e))?;
    }
    Ok(())
}

/// Writes `bytes` to `path` through a temporary sibling and a rename, so
/// `path` is either absent, its old content, or complete.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = temp_sibling(path);
    let result = std::fs::write(&tmp, bytes).and_then(|()| std::fs::rename(&tmp, path));
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(DataError::io(path, e));
    }
    Ok(())
}

/// JPEG bytes of a row-major RGB buffer.
pub(crate) fn encode_jpeg(
    path: &Path,
    rgb: &[u8],
    width: u32,
    height: u32,
    quality: u8,
) -> Result<Vec<u8>> {
    let mut out = Vec::with_capacity(rgb.len() / 8);
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, quality)
        .encode(rgb, width, height, image::ExtendedColorType::Rgb8)
        .map_err(|e| DataError::io(path, std::io::Error::other(e)))?;
    Ok(out)
}

/// 16-bit grayscale PNG bytes of a row-major label buffer.
pub(crate) fn encode_png16(path: &Path, data: &[u16], width: u32, height: u32) -> Result<Vec<u8>> {
    // The encoder takes native-endian samples and writes big-endian ones.
    let bytes: Vec<u8> = data.iter().flat_map(|v| v.to_ne_bytes()).collect();
    let mut out = Vec::new();
    image::codecs::png::PngEncoder::new(&mut out)
        .write_image(&bytes, width, height, image::ExtendedColorType::L16)
        .map_err(|e| DataError::io(path, std::io::Error::other(e)))?;
    Ok(out)
}

/// A JSON file written piece by piece into a temporary sibling.
pub(crate) struct JsonStream {
    path: PathBuf,
    tmp: PathBuf,
    out: Option<BufWriter<File>>,
}

impl JsonStream {
    pub fn create(path: &Path) -> Result<JsonStream> {
        ensure_parent(path)?;
        let tmp = temp_sibling(path);
        let file = File::create(&tmp).map_err(|e| DataError::io(&tmp, e))?;
        Ok(JsonStream {
            path: path.to_path_buf(),
            tmp,
            out: Some(BufWriter::with_capacity(1 << 20, file)),
        })
    }

    fn writer(&mut self) -> &mut BufWriter<File> {
        // `out` is only taken by `finish`, which consumes the stream.
        self.out.as_mut().unwrap_or_else(|| unreachable!())
    }

    /// Writes literal JSON text.
    pub fn raw(&mut self, text: &str) -> Result<()> {
        let r = self.writer().write_all(text.as_bytes());
        r.map_err(|e| DataError::io(&self.tmp, e))
    }

    /// Writes one serialised value.
    pub fn value<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<()> {
        let r = serde_json::to_writer(self.writer(), value);
        r.map_err(|e| DataError::json(&self.tmp, "writing", e))
    }

    /// Writes `"key":[v0,v1,…]` (with a leading comma unless `first`).
    pub fn array<T: Serialize>(&mut self, key: &str, values: &[T], first: bool) -> Result<()> {
        self.raw(&format!("{}\"{key}\":[", if first { "" } else { "," }))?;
        for (i, v) in values.iter().enumerate() {
            if i > 0 {
                self.raw(",")?;
            }
            self.value(v)?;
        }
        self.raw("]")
    }

    /// Flushes, syncs and renames the file into place.
    pub fn finish(mut self) -> Result<()> {
        let out = self.out.take();
        let result = (|| {
            let Some(out) = out else {
                return Ok(());
            };
            let file = out.into_inner().map_err(|e| e.into_error())?;
            file.sync_all()?;
            drop(file);
            std::fs::rename(&self.tmp, &self.path)
        })();
        result.map_err(|e| DataError::io(&self.path, e))
    }
}

impl Drop for JsonStream {
    fn drop(&mut self) {
        if self.out.take().is_some() || self.tmp.exists() {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

/// An array element separator helper: `","` except before the first element.
#[derive(Default)]
pub(crate) struct Sep(bool);

impl Sep {
    pub fn next(&mut self) -> &'static str {
        if std::mem::replace(&mut self.0, true) {
            ","
        } else {
            ""
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmpdir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("calico-synth-io-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn unfinished_streams_leave_nothing() {
        let d = tmpdir("drop");
        let p = d.join("a.json");
        {
            let mut s = JsonStream::create(&p).unwrap();
            s.raw("{\"x\":").unwrap();
        }
        assert!(!p.exists());
        assert_eq!(std::fs::read_dir(&d).unwrap().count(), 0);
        let mut s = JsonStream::create(&p).unwrap();
        s.raw("{").unwrap();
        s.array("a", &[1, 2], true).unwrap();
        s.raw("}").unwrap();
        s.finish().unwrap();
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "{\"a\":[1,2]}");
        assert_eq!(std::fs::read_dir(&d).unwrap().count(), 1);
    }

    #[test]
    fn png16_round_trips_through_the_label_reader() {
        let d = tmpdir("png");
        let p = d.join("l.png");
        let data: Vec<u16> = (0..12)
            .map(|i| if i % 3 == 0 { 65535 } else { i * 20 })
            .collect();
        write_atomic(&p, &encode_png16(&p, &data, 4, 3).unwrap()).unwrap();
        let back = calico_masks::png_io::read_label_png(&p).unwrap();
        assert_eq!(back.bit_depth, 16);
        assert_eq!(back.data, data);
    }
}
