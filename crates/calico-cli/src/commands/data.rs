//! `calico data …`: SynthParts, the MixedParts builder, statistics.

use crate::exit::bad_input;
use crate::progress::StageBars;
use anyhow::{Context, Result};
use calico_data::builder::{build, BuildConfig, ComparablePairs};
use calico_data::samples::for_each_sample;
use calico_data::sources::{read_source, ReadOptions};
use calico_data::stats::StatsAccumulator;
use calico_data::synth::{generate, SynthConfig};
use calico_data::SourceFormat;
use clap::{Args, Subcommand};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

#[derive(Subcommand)]
pub enum DataCommand {
    /// Generate SynthParts: images + annotations in the PACO-LVIS,
    /// PartImageNet and ADE20K-Part-234 formats.
    Synth(SynthArgs),
    /// Build MixedParts samples (train/val/test JSONL + statistics) from sources.
    Build(BuildArgs),
    /// Statistics of samples files or build directories (appendix B / Table 3).
    Stats(StatsArgs),
    /// SynthParts → the three readers → the builder, in one step, into --out.
    Demo(DemoArgs),
    /// Convert the released MixedParts annotation JSON into samples JSONL.
    ConvertRelease(ConvertArgs),
    /// A smaller samples file: N samples evenly spaced over a file (or drawn at
    /// random), optionally of some tasks or sources only, e.g. a held-out set to score.
    Subset(SubsetArgs),
}

#[derive(Args)]
pub struct SubsetArgs {
    /// Samples file to draw from (e.g. calico data build's test.jsonl).
    #[arg(long)]
    data: PathBuf,
    /// How many samples (all that match, if fewer do).
    #[arg(long, value_parser = super::at_least_one)]
    count: usize,
    /// Output samples file. Next to --data its lines are copies of the chosen ones;
    /// elsewhere their relative image paths are rewritten to stay valid.
    #[arg(long)]
    out: PathBuf,
    /// Draw at random (with --seed) instead of evenly spaced over the file.
    #[arg(long)]
    random: bool,
    /// Seed of --random.
    #[arg(long, default_value_t = 0, requires = "random")]
    seed: u64,
    /// Only samples of these tasks: common_object, common_parts, unique_parts (or common-object, …; repeatable, or comma-separated).
    #[arg(long = "task", value_delimiter = ',')]
    tasks: Vec<String>,
    /// Only samples of these sources, e.g. part_image_net (repeatable, or comma-separated).
    #[arg(long = "source", value_delimiter = ',')]
    sources: Vec<String>,
}

#[derive(Args)]
pub struct ConvertArgs {
    /// A release file, e.g. mixed_parts_val.json.
    #[arg(long)]
    release: PathBuf,
    /// The source datasets its items refer to, as FORMAT=DIR[:NAME] (repeatable);
    /// NAME must match the items' `dataset_name` (default: the format name).
    #[arg(long = "source", required = true)]
    sources: Vec<String>,
    /// Output samples file (.jsonl).
    #[arg(long)]
    out: PathBuf,
    /// Skip (and count) items whose dataset or images are not loaded.
    #[arg(long)]
    skip_unavailable: bool,
}

#[derive(Args)]
pub struct DemoArgs {
    /// Output directory: `synth/` (images + annotations) and `mixedparts/` (samples + statistics).
    #[arg(long, default_value = "out/demo")]
    out: PathBuf,
    /// Images per source format.
    #[arg(long, default_value_t = 200)]
    images: usize,
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

#[derive(Args)]
pub struct SynthArgs {
    /// Output directory (one sub-directory per format).
    #[arg(long)]
    out: PathBuf,
    /// Seed: the same seed writes byte-identical files.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Images per source format.
    #[arg(long, default_value_t = 300, value_parser = super::at_least_one)]
    images: usize,
    /// Image width and height in pixels.
    #[arg(long, default_value_t = 256)]
    size: u32,
    /// Formats to write (default: all three).
    #[arg(long, value_delimiter = ',')]
    formats: Vec<SourceFormat>,
    /// Write annotations only (no JPEGs), e.g. for scale benchmarks.
    #[arg(long)]
    annotation_only: bool,
}

#[derive(Args)]
pub struct BuildArgs {
    /// A source as FORMAT=DIR or FORMAT=DIR:NAME (repeatable). FORMAT is
    /// paco_lvis, part_image_net or ade20k_part234; NAME goes into the
    /// samples' `source` field (default: the format).
    #[arg(long = "source", required = true)]
    sources: Vec<String>,
    /// Output directory for train/val/test JSONL, stats.json, stats.svg, build.json.
    #[arg(long)]
    out: PathBuf,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Partners drawn per (image, object category) and task.
    #[arg(long, default_value_t = 4)]
    per_object: usize,
    /// Train,val,test fractions of images.
    #[arg(long, value_delimiter = ',', default_values_t = [0.8, 0.1, 0.1])]
    splits: Vec<f64>,
    /// Keep the sources' own train/val/test splits.
    #[arg(long, conflicts_with = "splits")]
    source_splits: bool,
    /// Cap samples per (split, source, task), as SPLIT=N (repeatable), e.g. test=111.
    #[arg(long = "max")]
    max: Vec<String>,
    /// Comparable pairs file ({"groups": {…}, "pairs": [[a, b], …]}); default: built-in list.
    #[arg(long)]
    pairs: Option<PathBuf>,
    /// Lines per JSONL shard.
    #[arg(long, default_value_t = 500_000)]
    shard_lines: usize,
    /// Check that every image file exists, opens and has its annotated size (others are skipped and counted).
    #[arg(long)]
    check_images: bool,
    /// PartImageNet class-name overrides ({"n02071294": "whale", …}).
    #[arg(long)]
    class_map: Option<PathBuf>,
}

#[derive(Args)]
pub struct StatsArgs {
    /// JSONL samples files or build directories.
    #[arg(required = true)]
    paths: Vec<PathBuf>,
    /// Write the statistics as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Write the top-category bar charts as SVG here.
    #[arg(long)]
    svg: Option<PathBuf>,
}

pub fn run(cmd: DataCommand) -> Result<()> {
    match cmd {
        DataCommand::Synth(a) => run_synth(a),
        DataCommand::Build(a) => run_build(a),
        DataCommand::Stats(a) => run_stats(a),
        DataCommand::Demo(a) => run_demo(a),
        DataCommand::ConvertRelease(a) => run_convert(a),
        DataCommand::Subset(a) => run_subset(a),
    }
}

fn run_convert(a: ConvertArgs) -> Result<()> {
    use calico_data::sources::mixed_parts::{read_release_with, ReleaseOptions};
    let mut sources = std::collections::HashMap::new();
    for spec in &a.sources {
        let (format, dir, name) = parse_source(spec)?;
        let opts = ReadOptions {
            name,
            ..ReadOptions::default()
        };
        let d =
            read_source(format, &dir, &opts).with_context(|| format!("reading --source {spec}"))?;
        sources.insert(d.name.clone(), d);
    }
    let opts = ReleaseOptions {
        skip_unavailable: a.skip_unavailable,
    };
    let (mut samples, skipped) = read_release_with(&a.release, &sources, &opts)?;
    // Image paths relative to the output file's directory, like the builder's.
    let out_dir = std::path::absolute(&a.out)
        .with_context(|| format!("resolving {}", a.out.display()))?
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default();
    let mut acc = StatsAccumulator::default();
    let mut text = String::new();
    for s in &mut samples {
        for img in &mut s.images {
            let abs = std::path::absolute(&img.file).unwrap_or_else(|_| PathBuf::from(&img.file));
            img.file = calico_data::builder::relative_path(&abs, &out_dir);
        }
        acc.add(s);
        text.push_str(&serde_json::to_string(s)?);
        text.push('\n');
    }
    write_text(&a.out, &text)?;
    print!("{}", acc.finish().to_table());
    eprintln!(
        "wrote {} samples to {} ({skipped} items skipped)",
        samples.len(),
        a.out.display()
    );
    Ok(())
}

fn run_subset(a: SubsetArgs) -> Result<()> {
    use calico_data::subset::{write_subset, Pick, SubsetOptions};
    let opts = SubsetOptions {
        count: a.count,
        pick: if a.random {
            Pick::Random { seed: a.seed }
        } else {
            Pick::Spread
        },
        tasks: a.tasks,
        sources: a.sources,
    };
    let mut acc = StatsAccumulator::default();
    let report = write_subset(&a.data, &a.out, &opts, |s| acc.add(s))?;
    print!("{}", acc.finish().to_table());
    let how = match opts.pick {
        Pick::Spread => "evenly spaced".to_string(),
        Pick::Random { seed } => format!("at random, seed {seed}"),
    };
    let of = if report.matching == report.total {
        format!("{} samples", report.total)
    } else {
        format!(
            "{} matching samples ({} in all)",
            report.matching, report.total
        )
    };
    eprintln!(
        "wrote {} of the {of} of {} ({how}) to {}",
        report.written,
        a.data.display(),
        a.out.display()
    );
    if report.written < a.count {
        eprintln!(
            "note: --count {} asked for more samples than match; all {} are written",
            a.count, report.written
        );
    }
    if report.paths_rewritten {
        eprintln!("image paths are rewritten relative to the directory of the output file");
    }
    Ok(())
}

fn run_demo(a: DemoArgs) -> Result<()> {
    crate::exit::out_dir(&a.out)?;
    synth_and_build(&a.out, a.images, a.seed, Vec::new())?;
    eprintln!(
        "samples: {0}/mixedparts/{{train,val,test}}.jsonl; statistics: {0}/mixedparts/stats.{{txt,json,svg}}",
        a.out.display()
    );
    Ok(())
}

/// SynthParts (`images` per format, 256×256) into `OUT/synth`, read back
/// by the three readers and built into MixedParts samples in
/// `OUT/mixedparts` (`max`: caps as `SPLIT=N`), each stage with a progress
/// bar. Returns the `mixedparts` directory. Used by `calico data demo` and
/// `calico demo`.
pub(crate) fn synth_and_build(
    out: &Path,
    images: usize,
    seed: u64,
    max: Vec<String>,
) -> Result<PathBuf> {
    let synth = out.join("synth");
    run_synth(SynthArgs {
        out: synth.clone(),
        seed,
        images,
        size: 256,
        formats: Vec::new(),
        annotation_only: false,
    })?;
    let sources = SourceFormat::ALL
        .iter()
        .map(|f| format!("{f}={}", synth.join(f.as_str()).display()))
        .collect();
    let mixedparts = out.join("mixedparts");
    run_build(BuildArgs {
        sources,
        out: mixedparts.clone(),
        seed,
        per_object: 4,
        splits: vec![0.8, 0.1, 0.1],
        source_splits: false,
        max,
        pairs: None,
        shard_lines: 500_000,
        check_images: true,
        class_map: None,
    })?;
    Ok(mixedparts)
}

fn run_synth(a: SynthArgs) -> Result<()> {
    crate::exit::out_dir(&a.out)?;
    let cfg = SynthConfig {
        seed: a.seed,
        images_per_source: a.images,
        width: a.size,
        height: a.size,
        formats: if a.formats.is_empty() {
            SourceFormat::ALL.to_vec()
        } else {
            a.formats
        },
        annotation_only: a.annotation_only,
        ..SynthConfig::default()
    };
    let bars = StageBars::new();
    let t = std::time::Instant::now();
    let summary = generate(&cfg, &a.out, &|done, total| {
        bars.update("synth", done as u64, total as u64)
    })?;
    bars.finish();
    for s in &summary.sources {
        let counts: Vec<String> = s
            .splits
            .iter()
            .map(|c| {
                format!(
                    "{} {} images / {} objects / {} parts",
                    c.split, c.images, c.objects, c.parts
                )
            })
            .collect();
        eprintln!("  {}: {}", s.format, counts.join(", "));
    }
    eprintln!(
        "wrote SynthParts ({} images) to {} in {:.1} s",
        summary.images(),
        a.out.display(),
        t.elapsed().as_secs_f64()
    );
    Ok(())
}

fn parse_source(spec: &str) -> Result<(SourceFormat, PathBuf, Option<String>)> {
    let (format, rest) = spec
        .split_once('=')
        .ok_or_else(|| bad_input(format!("--source {spec:?}: expected FORMAT=DIR[:NAME]")))?;
    let format: SourceFormat = format.parse().map_err(|e: String| bad_input(e))?;
    let (dir, name) = match rest.rsplit_once(':') {
        Some((d, n)) if !n.contains('/') && !n.is_empty() && !d.is_empty() => {
            (d.to_string(), Some(n.to_string()))
        }
        _ => (rest.to_string(), None),
    };
    Ok((format, PathBuf::from(dir), name))
}

fn run_build(a: BuildArgs) -> Result<()> {
    crate::exit::out_dir(&a.out)?;
    let mut max_per_group = BTreeMap::new();
    for m in &a.max {
        let (split, n) = m
            .split_once('=')
            .ok_or_else(|| bad_input(format!("--max {m:?}: expected SPLIT=N")))?;
        let n: usize = n
            .parse()
            .map_err(|_| bad_input(format!("--max {m:?}: {n:?} is not a count")))?;
        max_per_group.insert(split.to_string(), n);
    }
    if a.splits.len() != 3 {
        return Err(bad_input("--splits needs three fractions: train,val,test"));
    }
    let pairs = match &a.pairs {
        Some(p) => ComparablePairs::from_file(p)?,
        None => ComparablePairs::default_list(),
    };
    let cfg = BuildConfig {
        seed: a.seed,
        per_object: a.per_object,
        split_fractions: [a.splits[0], a.splits[1], a.splits[2]],
        source_splits: a.source_splits,
        max_per_group,
        pairs,
        shard_lines: a.shard_lines,
    };
    let t = std::time::Instant::now();
    let mut datasets = Vec::new();
    let mut usable_objects = 0;
    for spec in &a.sources {
        let (format, dir, name) = parse_source(spec)?;
        let opts = ReadOptions {
            check_images: a.check_images,
            name,
            class_map: a.class_map.clone(),
            ..ReadOptions::default()
        };
        eprintln!("reading {format} from {}", dir.display());
        let d =
            read_source(format, &dir, &opts).with_context(|| format!("reading --source {spec}"))?;
        let objects: usize = d.images.iter().map(|i| i.objects.len()).sum();
        usable_objects += objects;
        eprintln!(
            "  {}: {} images, {} objects; skipped {} ({})",
            d.name,
            d.images.len(),
            objects,
            d.skipped.total(),
            serde_json::to_string(&d.skipped)?
        );
        if objects == 0 {
            eprintln!(
                "warning: --source {spec}: no usable object (every image or annotation was \
                 skipped or there are none); it adds no samples"
            );
        }
        datasets.push(d);
    }
    if usable_objects == 0 {
        return Err(bad_input(
            "no source has a usable object, so there is nothing to build; nothing written",
        ));
    }
    let bars = StageBars::new();
    let summary = build(&datasets, &cfg, &a.out, &|stage, done, total| {
        bars.update(stage, done, total)
    })?;
    bars.finish();
    print!("{}", summary.stats.to_table());
    eprintln!(
        "wrote {} samples to {} in {:.1} s",
        summary.stats.samples,
        a.out.display(),
        t.elapsed().as_secs_f64()
    );
    if summary.stats.samples == 0 {
        eprintln!(
            "warning: no samples: a sample pairs two images of one source and split, and no \
             two such images show objects of one class or of a comparable pair of classes \
             (--pairs); add images or check --splits"
        );
    }
    Ok(())
}

/// Samples files named by a path: the file itself, or a build directory's split files.
fn sample_files(path: &Path) -> Result<Vec<PathBuf>> {
    if path.is_dir() {
        let mut files: Vec<PathBuf> = std::fs::read_dir(path)
            .with_context(|| format!("listing {}", path.display()))?
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "jsonl"))
            .collect();
        files.sort();
        if files.is_empty() {
            return Err(bad_input(format!("{}: no .jsonl files", path.display())));
        }
        Ok(files)
    } else {
        Ok(vec![path.to_path_buf()])
    }
}

fn run_stats(a: StatsArgs) -> Result<()> {
    let mut acc = StatsAccumulator::default();
    for path in &a.paths {
        for file in sample_files(path)? {
            for_each_sample(&file, |s| {
                acc.add(&s);
                Ok(())
            })?;
        }
    }
    let stats = acc.finish();
    print!("{}", stats.to_table());
    if let Some(p) = &a.json {
        write_text(p, &(serde_json::to_string_pretty(&stats)? + "\n"))?;
    }
    if let Some(p) = &a.svg {
        write_text(p, &stats.to_svg())?;
    }
    Ok(())
}

fn write_text(path: &Path, text: &str) -> Result<()> {
    calico_masks::png_io::write_atomic(path, |w| std::io::Write::write_all(w, text.as_bytes()))?;
    Ok(())
}
