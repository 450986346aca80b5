//! SynthParts: procedural images and annotations in the three source formats.
//!
//! [`generate`] renders scenes of posed 2-D part models ([`class_table`]:
//! chairs, stools, tables, mugs, dogs, birds, cars, …, in comparable groups
//! that share parts) over textured backgrounds with unannotated distractor
//! shapes, and writes them exactly as the real datasets lay them out, so the
//! source readers and the MixedParts builder run on them:
//!
//! ```text
//! OUT/synth.json                                            config, seed, counts, class table
//! OUT/paco_lvis/annotations/paco_lvis_v1_{train,val,test}.json
//! OUT/paco_lvis/{train2017,val2017}/000000000001.jpg
//! OUT/part_image_net/annotations/{split}/{split}.json        parts
//! OUT/part_image_net/annotations/{split}_whole/{split}.json  objects (one per image)
//! OUT/part_image_net/images/{split}/n99000014_17.JPEG
//! OUT/ade20k_part234/ade20k_instance_{train,val}.json
//! OUT/ade20k_part234/images/{training,validation}/ADE_synth_00000001.jpg
//! OUT/ade20k_part234/annotations_detectron2_part/{training,validation}/ADE_synth_00000001.png
//! OUT/ade20k_part234/ade20k_part234_classes.json
//! ```
//!
//! Annotations are of **visible** pixels: objects are painted back to front
//! into a label buffer, so a part hidden by a later object or a distractor
//! loses those pixels, and an object's mask is the union of its visible
//! parts. A part visible on fewer than 8 pixels is not annotated, and an
//! object that stays mostly hidden after a few re-samplings is left
//! unannotated (in ADE part maps its pixels are "no part").
//!
//! Output is deterministic: image `i` of a format draws everything from its
//! own ChaCha8 stream of `seed`, so the same config gives byte-identical
//! files whatever the thread count. Every file is written through a
//! temporary sibling and renamed into place.

mod ade;
mod classes;
mod coco;
mod extract;
mod geom;
mod io;
mod masks;
mod models;
mod paco;
mod paint;
mod pin;
mod scene;

pub use ade::{
    ade_object_classes, ade_part_classes, ade_part_id, ADE_NO_PART, ADE_PART_CLASSES_JSON,
};
pub use classes::{
    class_table, classes_in, groups, FormatNames, SynthClass, PART_IMAGE_NET_SUPERCATEGORIES,
};
pub use coco::SplitCounts;

use crate::error::{DataError, Result};
use crate::taxonomy::SourceFormat;
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use std::path::Path;

/// JPEG quality of every written image.
pub const JPEG_QUALITY: u8 = 90;

/// What to generate.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SynthConfig {
    /// Seed of everything.
    pub seed: u64,
    /// Images written per source format (split by `splits`).
    pub images_per_source: usize,
    /// Image width in pixels.
    pub width: u32,
    /// Image height in pixels.
    pub height: u32,
    /// Train / val / test fractions (normalised; ADE20K's val takes val + test).
    pub splits: [f32; 3],
    /// Source formats to write.
    pub formats: Vec<SourceFormat>,
    /// Most objects per image (PartImageNet always has one).
    pub max_objects: usize,
    /// Skip the JPEGs (annotations, including ADE part maps, are still written
    /// and identical to a full run's).
    pub annotation_only: bool,
}

impl Default for SynthConfig {
    fn default() -> Self {
        SynthConfig {
            seed: 0,
            images_per_source: 200,
            width: 256,
            height: 256,
            splits: [0.8, 0.1, 0.1],
            formats: SourceFormat::ALL.to_vec(),
            max_objects: 3,
            annotation_only: false,
        }
    }
}

impl SynthConfig {
    /// Checks the options; the error says which one is wrong.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(DataError::Config(m));
        if !(8..=8192).contains(&self.width) || !(8..=8192).contains(&self.height) {
            return bad(format!(
                "image size {}×{} is out of range (8..=8192 pixels a side)",
                self.width, self.height
            ));
        }
        if self.splits.iter().any(|f| !f.is_finite() || *f < 0.0)
            || self.splits.iter().sum::<f32>() <= 0.0
        {
            return bad(format!(
                "split fractions {:?} must be non-negative with a positive sum",
                self.splits
            ));
        }
        if !(1..=16).contains(&self.max_objects) {
            return bad(format!("max_objects is {}; use 1..=16", self.max_objects));
        }
        for (i, f) in self.formats.iter().enumerate() {
            if self.formats[..i].contains(f) {
                return bad(format!("format {f} is listed twice"));
            }
        }
        Ok(())
    }
}

/// What one source format received.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceSummary {
    /// The format.
    pub format: SourceFormat,
    /// Its directory under the output directory (the reader's root).
    pub dir: String,
    /// Per split counts.
    pub splits: Vec<SplitCounts>,
}

/// What [`generate`] wrote.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SynthSummary {
    /// One entry per generated format, in config order.
    pub sources: Vec<SourceSummary>,
}

impl SynthSummary {
    /// Images written over all formats.
    pub fn images(&self) -> usize {
        self.sources
            .iter()
            .flat_map(|s| &s.splits)
            .map(|s| s.images)
            .sum()
    }

    /// Object annotations over all formats.
    pub fn objects(&self) -> usize {
        self.sources
            .iter()
            .flat_map(|s| &s.splits)
            .map(|s| s.objects)
            .sum()
    }

    /// Part annotations over all formats.
    pub fn parts(&self) -> usize {
        self.sources
            .iter()
            .flat_map(|s| &s.splits)
            .map(|s| s.parts)
            .sum()
    }
}

/// Number of objects of the next image.
pub(crate) fn n_objects(rng: &mut ChaCha8Rng, cfg: &SynthConfig, format: SourceFormat) -> usize {
    match format {
        SourceFormat::PartImageNet => 1,
        _ => rng.random_range(1..=cfg.max_objects.max(1)),
    }
}

/// Directory of a format under the output directory.
pub fn format_dir(format: SourceFormat) -> &'static str {
    match format {
        SourceFormat::PacoLvis => "paco_lvis",
        SourceFormat::PartImageNet => "part_image_net",
        SourceFormat::Ade20kPart234 => "ade20k_part234",
    }
}

/// Writes `cfg.images_per_source` images and their annotations for each of
/// `cfg.formats` under `out`, and `out/synth.json`. `progress(done, total)`
/// is called on the calling thread after every chunk of images.
pub fn generate(
    cfg: &SynthConfig,
    out: &Path,
    progress: &dyn Fn(usize, usize),
) -> Result<SynthSummary> {
    cfg.validate()?;
    std::fs::create_dir_all(out).map_err(|e| DataError::io(out, e))?;
    let total = cfg.images_per_source * cfg.formats.len();
    let mut done = 0;
    let mut tick = |n: usize| {
        done += n;
        progress(done, total);
    };
    let mut summary = SynthSummary::default();
    for &format in &cfg.formats {
        let splits = match format {
            SourceFormat::PacoLvis => coco::run(&mut paco::Paco::new(out), cfg, format, &mut tick)?,
            SourceFormat::PartImageNet => {
                coco::run(&mut pin::Pin::new(out)?, cfg, format, &mut tick)?
            }
            SourceFormat::Ade20kPart234 => {
                let mut w = ade::Ade::new(out)?;
                w.write_class_list()?;
                coco::run(&mut w, cfg, format, &mut tick)?
            }
        };
        summary.sources.push(SourceSummary {
            format,
            dir: format_dir(format).to_string(),
            splits,
        });
    }
    write_manifest(cfg, out, &summary)?;
    Ok(summary)
}

fn write_manifest(cfg: &SynthConfig, out: &Path, summary: &SynthSummary) -> Result<()> {
    let classes: Vec<serde_json::Value> = class_table()
        .iter()
        .map(|c| {
            let mut formats = serde_json::Map::new();
            for f in SourceFormat::ALL {
                if let Some(n) = c.names(f) {
                    let mut v = serde_json::json!({"object": n.object, "parts": c.format_parts(f)});
                    if !n.supercategory.is_empty() {
                        v["supercategory"] = n.supercategory.into();
                        v["synset"] = n.synset.into();
                    }
                    formats.insert(f.as_str().to_string(), v);
                }
            }
            serde_json::json!({"name": c.name, "group": c.group, "parts": c.parts, "formats": formats})
        })
        .collect();
    let manifest = serde_json::json!({
        "generator": "SynthParts",
        "version": 1,
        "seed": cfg.seed,
        "config": cfg,
        "summary": summary,
        "synthetic_synsets": "PartImageNet synset ids n99xxxxxx are synthetic, not WordNet ids",
        "classes": classes,
    });
    let mut text = serde_json::to_string_pretty(&manifest)
        .map_err(|e| DataError::json(out.join("synth.json"), "writing", e))?;
    text.push('\n');
    io::write_atomic(&out.join("synth.json"), text.as_bytes())
}
