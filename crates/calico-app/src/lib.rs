//! Calico as a product: what `calico segment`, `calico predict` and
//! `calico report` (and later `calico demo` / `calico serve`) are built on.
//!
//! * [`device`] — `--device cpu|cuda[:N]`, parsed and opened;
//! * [`model`] — a model and tokenizer from a weights directory or from a
//!   preset with seeded random (untrained) weights;
//! * [`segment`] — validated images + a task or question → answer, masks
//!   (COCO RLE) and one overlay PNG per image;
//! * [`overlay`] — overlays: masks alpha-blended with outlines and a legend
//!   strip; one colour per label on every image ([`overlay::ColourMap`]);
//! * [`font`] — the built-in 5×7 bitmap font the legends are drawn with;
//! * [`output`] — the files of `calico segment --out DIR` and reading them back;
//! * [`report`] — a self-contained HTML report (curve, Table 5, gallery).

pub mod device;
pub mod error;
pub mod font;
pub mod model;
pub mod output;
pub mod overlay;
pub mod report;
pub mod segment;

pub use error::AppError;
