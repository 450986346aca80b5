//! The JSON shapes of a COCO `segmentation` field.

use crate::error::{MaskError, Result};
use crate::polygon::polygons_to_rle;
use crate::rle::Rle;
use serde::{Deserialize, Serialize};

/// `counts` of a COCO RLE: the compressed string or the raw list.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(untagged)]
pub enum CocoCounts {
    /// pycocotools' compressed string form.
    Compressed(String),
    /// Raw run lengths ("uncompressed RLE", used for `iscrowd` annotations).
    Uncompressed(Vec<u32>),
}

/// A COCO RLE object: `{"size": [height, width], "counts": …}`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct CocoRle {
    /// `[height, width]`.
    pub size: [u32; 2],
    /// Run lengths, compressed or not.
    pub counts: CocoCounts,
}

impl CocoRle {
    /// The compressed JSON form of an RLE (what `maskUtils.encode` returns).
    pub fn from_rle(rle: &Rle) -> Self {
        CocoRle {
            size: [rle.height, rle.width],
            counts: CocoCounts::Compressed(rle.to_compressed()),
        }
    }

    /// Parses the counts.
    pub fn to_rle(&self) -> Result<Rle> {
        let [h, w] = self.size;
        match &self.counts {
            CocoCounts::Compressed(s) => Rle::from_compressed(s, h, w),
            CocoCounts::Uncompressed(c) => Ok(Rle::new(h, w, c.clone())),
        }
    }
}

/// A COCO `segmentation` value: a list of polygons or an RLE object.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Segmentation {
    /// `[[x0, y0, x1, y1, …], …]`; the polygons are unioned.
    Polygons(Vec<Vec<f64>>),
    /// `{"size": …, "counts": …}`.
    Rle(CocoRle),
}

impl Segmentation {
    /// Converts to an RLE as pycocotools' `COCO.annToRLE` does: polygons are
    /// rasterised at `height × width` and merged; RLE objects keep their own
    /// `size`.
    ///
    /// Differences from pycocotools, where it raises: an empty polygon list
    /// gives an empty mask, and a first polygon of exactly 4 numbers is
    /// rasterised as a (degenerate) polygon instead of raising a `TypeError`.
    pub fn to_rle(&self, height: u32, width: u32) -> Result<Rle> {
        match self {
            Segmentation::Polygons(polys) => polygons_to_rle(polys, height, width),
            Segmentation::Rle(r) => r.to_rle(),
        }
    }

    /// Like [`Segmentation::to_rle`], and checks that the result is `height × width`.
    pub fn to_rle_sized(&self, height: u32, width: u32) -> Result<Rle> {
        let rle = self.to_rle(height, width)?;
        if rle.height != height || rle.width != width {
            return Err(MaskError::SizeMismatch {
                a_height: rle.height,
                a_width: rle.width,
                b_height: height,
                b_width: width,
            });
        }
        Ok(rle)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_all_three_shapes() {
        let poly: Segmentation = serde_json::from_str("[[1,1,5,1,5,5]]").unwrap();
        assert_eq!(poly.to_rle(10, 10).unwrap().to_compressed(), "e0191O1`1");
        let unc: Segmentation = serde_json::from_str(r#"{"size":[2,2],"counts":[1,2,1]}"#).unwrap();
        assert_eq!(unc.to_rle(2, 2).unwrap().to_compressed(), "121");
        let comp: Segmentation = serde_json::from_str(r#"{"size":[2,2],"counts":"121"}"#).unwrap();
        assert_eq!(comp.to_rle(2, 2).unwrap().counts, vec![1, 2, 1]);
        assert!(comp.to_rle_sized(3, 2).is_err());
    }

    #[test]
    fn json_round_trip() {
        let r = CocoRle::from_rle(&Rle::new(2, 2, vec![1, 2, 1]));
        let s = serde_json::to_string(&r).unwrap();
        assert_eq!(s, r#"{"size":[2,2],"counts":"121"}"#);
        assert_eq!(serde_json::from_str::<CocoRle>(&s).unwrap(), r);
    }
}
