//! `calico answer …`: the grounded answer protocol.

use crate::exit::bad_input;
use anyhow::{Context, Result};
use calico_text::{compose, parse, templates, Answer, Task};
use clap::{Args, Subcommand, ValueEnum};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use std::io::Read;

#[derive(Subcommand)]
pub enum AnswerCommand {
    /// Compose a question and its grounded answer from labels.
    ///
    /// With no arguments, composes the common-parts answer for a chair and an
    /// ottoman that share a leg and a seat, and parses it back.
    Compose(ComposeArgs),
    /// Parse model output into caption, phrases and mask requests.
    Parse(ParseArgs),
    /// Print the prompt (multi-image prefix + question) for a task.
    Question(QuestionArgs),
}

#[derive(Clone, Copy, ValueEnum)]
pub enum TaskArg {
    CommonObject,
    CommonParts,
    UniqueParts,
    Identify,
}

impl From<TaskArg> for Task {
    fn from(t: TaskArg) -> Task {
        match t {
            TaskArg::CommonObject => Task::CommonObject,
            TaskArg::CommonParts => Task::CommonParts,
            TaskArg::UniqueParts => Task::UniqueParts,
            TaskArg::Identify => Task::IdentifyObjects,
        }
    }
}

#[derive(Args)]
pub struct ComposeArgs {
    /// Which question the answer responds to.
    #[arg(long, value_enum, default_value = "common-parts")]
    task: TaskArg,
    /// Object label of each image, in image order.
    #[arg(long, num_args = 1.., default_values = ["chair", "ottoman"])]
    objects: Vec<String>,
    /// Common parts (common-parts), or the common object labels (common-object).
    #[arg(long, num_args = 0.., default_values = ["leg", "seat"])]
    parts: Vec<String>,
    /// Unique parts as LABEL:IMAGE[,IMAGE…] with 1-based images, e.g. `arm:1`.
    #[arg(long = "unique", num_args = 0..)]
    unique: Vec<String>,
    /// Seed for the template choice.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
pub struct ParseArgs {
    /// The answer text; `-` or nothing reads standard input.
    text: Option<String>,
    /// Number of images in the query.
    #[arg(long, default_value_t = 2)]
    images: usize,
    /// Fail on the first malformed construct instead of skipping it.
    #[arg(long)]
    strict: bool,
}

#[derive(Args)]
pub struct QuestionArgs {
    #[arg(long, value_enum, default_value = "common-parts")]
    task: TaskArg,
    #[arg(long, default_value_t = 2)]
    images: usize,
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

pub fn run(cmd: AnswerCommand) -> Result<()> {
    match cmd {
        AnswerCommand::Compose(a) => run_compose(a),
        AnswerCommand::Parse(a) => run_parse(a),
        AnswerCommand::Question(a) => {
            if a.images == 0 {
                return Err(bad_input("--images must be at least 1"));
            }
            let mut rng = ChaCha8Rng::seed_from_u64(a.seed);
            println!("{}", templates::prompt(a.task.into(), a.images, &mut rng));
            Ok(())
        }
    }
}

fn parse_unique(spec: &str, n_images: usize) -> Result<(String, Vec<usize>)> {
    let (label, images) = spec
        .rsplit_once(':')
        .ok_or_else(|| bad_input(format!("--unique {spec:?}: expected LABEL:IMAGE[,IMAGE…]")))?;
    let images = images
        .split(',')
        .map(|k| {
            let k: usize = k.trim().parse().map_err(|_| {
                bad_input(format!("--unique {spec:?}: {k:?} is not an image number"))
            })?;
            if k == 0 || k > n_images {
                return Err(bad_input(format!(
                    "--unique {spec:?}: image {k} is outside 1..={n_images}"
                )));
            }
            Ok(k - 1)
        })
        .collect::<Result<Vec<_>>>()?;
    Ok((label.to_string(), images))
}

fn run_compose(a: ComposeArgs) -> Result<()> {
    let mut rng = ChaCha8Rng::seed_from_u64(a.seed);
    let n = a.objects.len();
    let task: Task = a.task.into();
    let question = templates::prompt(task, n, &mut rng);
    let answer: Answer = match task {
        Task::CommonObject => compose::common_object(&a.parts, n, &mut rng)?,
        Task::CommonParts => compose::common_parts(&a.objects, &a.parts, &mut rng)?,
        Task::UniqueParts => {
            let unique = a
                .unique
                .iter()
                .map(|s| parse_unique(s, n))
                .collect::<Result<Vec<_>>>()?;
            compose::unique_parts(&a.objects, &unique, &mut rng)?
        }
        Task::IdentifyObjects => compose::identify_objects(&a.objects, &mut rng)?,
    };
    let parsed = parse::parse_answer(&answer.text, n).context("parsing the composed answer")?;
    if a.json {
        let masks: Vec<_> = answer
            .masks
            .iter()
            .map(|m| serde_json::json!({"label": m.label, "image": m.image}))
            .collect();
        let out = serde_json::json!({
            "task": task.as_str(), "question": question, "answer": answer.text,
            "masks": masks, "caption": parsed.caption,
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    println!("USER: {question}");
    println!("ASSISTANT: {}", answer.text);
    println!();
    println!("caption: {}", parsed.caption);
    println!("masks in [SEG] order:");
    for (k, m) in answer.masks.iter().enumerate() {
        println!("  {k:>2}. {:<24} → IMAGE{}", m.label, m.image + 1);
    }
    Ok(())
}

fn run_parse(a: ParseArgs) -> Result<()> {
    let text = match a.text.as_deref() {
        None | Some("-") => {
            let mut buf = Vec::new();
            std::io::stdin()
                .read_to_end(&mut buf)
                .context("reading standard input")?;
            String::from_utf8(buf).map_err(|e| {
                bad_input(format!(
                    "standard input is not UTF-8 (byte {})",
                    e.utf8_error().valid_up_to()
                ))
            })?
        }
        Some(t) => t.to_string(),
    };
    let parsed = if a.strict {
        parse::parse_answer(&text, a.images)?
    } else {
        parse::parse_answer_lenient(&text, a.images)
    };
    for w in &parsed.warnings {
        eprintln!("warning: {w}");
    }
    println!("{}", serde_json::to_string_pretty(&parsed)?);
    Ok(())
}
