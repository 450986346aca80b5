//! Binary masks in the formats COCO-style datasets use, bit-identical to
//! pycocotools 2.0.x.
//!
//! * [`Mask`]: a binary mask (column-major, like COCO).
//! * [`Rle`]: COCO run-length encoding — [`Rle::encode`], [`Rle::decode`],
//!   [`Rle::area`], [`Rle::to_bbox`], [`Rle::merge`], and the compressed
//!   string form ([`Rle::to_compressed`], [`Rle::from_compressed`]).
//! * [`iou_matrix`] / [`iou`]: IoU computed on the runs, without decoding.
//! * [`polygon_to_rle`], [`polygons_to_rle`], [`bbox_to_rle`]: rasterisation.
//! * [`Segmentation`]: the three shapes of a COCO `segmentation` field and
//!   their conversion to RLE (pycocotools' `annToRLE`), plus the JSON form
//!   [`CocoRle`].
//! * [`png_io`]: 8- and 16-bit label-map PNGs and nearest-neighbour resize.
//!
//! ```
//! use calico_masks::{Mask, Rle, iou};
//! let a = Mask::from_row_major(2, 3, &[1, 1, 0, 1, 1, 0]).unwrap();
//! let rle = Rle::encode(&a);
//! assert_eq!(rle.to_compressed(), "042");
//! assert_eq!(rle.area(), 4);
//! assert_eq!(rle.to_bbox(), [0.0, 0.0, 2.0, 2.0]);
//! let back = Rle::from_compressed("042", 2, 3).unwrap().decode().unwrap();
//! assert_eq!(back, a);
//! assert_eq!(iou(&rle, &rle), 1.0);
//! ```

mod compress;
mod error;
mod iou;
mod mask;
pub mod png_io;
mod polygon;
mod rle;
mod segmentation;

pub use compress::{counts_from_string, counts_to_string};
pub use error::{MaskError, Result};
pub use iou::{bbox_iou, iou, iou_matrix, iou_matrix_prepared, IouRle};
pub use mask::Mask;
pub use polygon::{bbox_to_rle, polygon_to_rle, polygons_to_rle};
pub use rle::Rle;
pub use segmentation::{CocoCounts, CocoRle, Segmentation};
