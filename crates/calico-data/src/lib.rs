//! MixedParts data: source readers (PACO-LVIS, PartImageNet,
//! ADE20K-Part-234, the released MixedParts JSON), the co-segmentation sample
//! builder, dataset statistics, and SynthParts, a procedural generator that
//! writes images and annotations in the three source formats.

pub mod builder;
pub mod error;
pub mod jsonl;
pub mod samples;
pub mod sources;
pub mod stats;
pub mod subset;
pub mod synth;
pub mod taxonomy;

pub use error::{DataError, Result};
pub use samples::{Sample, SampleImage, SampleMask};
pub use taxonomy::{
    normalise_name, Dataset, ImageRecord, ObjectInstance, PartInstance, SkipCounts, SourceFormat,
};
