//! The command line: the only module that knows clap. Each subcommand's raw flags (one file per
//! subcommand) are turned into the plain option structs the library's entry points take, and [`run`]
//! calls them and prints what they return.

mod bench;
mod diagnose;
mod eval;
mod gpt2;
mod quadratic;
mod sweep;

pub use bench::BenchArgs;
pub use diagnose::DiagnoseArgs;
pub use gpt2::Gpt2Args;
pub use quadratic::QuadraticArgs;
pub use sweep::{PlotArgs, SweepArgs};

use crate::config::{default_threads, Choice, ModelConfig, TrainConfig, MODEL_PRESETS};
use crate::error::Result;
use clap::builder::{PossibleValue, PossibleValuesParser, TypedValueParser};
use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;

#[derive(Parser, Debug)]
#[command(
    name = "rotadam",
    version,
    about = "Train GPT-2 and measure how Adam behaves under rotations of the parameter space"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Train GPT-2 (default: the small CPU model on the embedded Shakespeare corpus).
    Gpt2(Box<Gpt2Args>),
    /// Tokenize text (files, directories, JSON Lines with a `text` field) into train.bin / val.bin.
    Prepare(PrepareArgs),
    /// Benchmarks: GEMM peak, a full training step, rotation cost, kernels (JSON with --json).
    Bench(BenchArgs),
    /// Train every rotation (or an ablation's variants) over several seeds and write a report with figures.
    Sweep(Box<SweepArgs>),
    /// Draw the loss curves of any runs into one PNG and SVG.
    Plot(PlotArgs),
    /// Xie et al. §4.1: Adam, AdaSGD and SGD on a quadratic rotated by R(θ) = exp(θA); table and figure.
    Quadratic(QuadraticArgs),
    /// Diagnostics of a checkpoint in its rotated basis: linf, l11, spectral, hessian-rows, update-cv.
    Diagnose(DiagnoseArgs),
    /// Mean cross-entropy of a checkpoint over a token file; with --grad, its gradient as safetensors.
    Eval(eval::EvalArgs),
}

#[derive(Args, Debug, Clone)]
pub struct PrepareArgs {
    /// Text files, directories (recursed) or .jsonl files with a `text` field.
    #[arg(long, required = true, num_args = 1..)]
    pub input: Vec<PathBuf>,
    /// Output directory for train.bin, val.bin and meta.json.
    #[arg(long)]
    pub out: PathBuf,
    /// Fraction of documents held out for validation.
    #[arg(long, default_value_t = crate::data::prepare::DEFAULT_VAL_FRACTION)]
    pub val_fraction: f64,
    /// Seed of the document-level val split.
    #[arg(long, default_value_t = crate::data::prepare::DEFAULT_SEED)]
    pub seed: u64,
    /// Keep only the token ids that occur, renumbered 0..K-1 in GPT-2 order; meta.json records K
    /// (vocab_size) and the mapping back (gpt2_ids). Train on it with --vocab-size K or more.
    #[arg(long)]
    pub compact_vocab: bool,
    /// With --compact-vocab, a closed vocabulary: keep only the tokens occurring at least N times in
    /// train; every other token becomes one unknown token, the last id, recorded as `unk` in meta.json.
    #[arg(long, value_name = "N", requires = "compact_vocab")]
    pub min_count: Option<u64>,
    /// Print nothing but errors and the summary.
    #[arg(long)]
    pub quiet: bool,
}

/// Runs a parsed command line, printing what the command returns (paths, tables, JSON).
pub fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Gpt2(args) => {
            let (cfg, resume) = args.to_config()?;
            crate::run::train::train(&cfg, resume)?;
        }
        Command::Prepare(a) => {
            let summary = crate::data::prepare::prepare(&crate::data::prepare::PrepareOptions {
                inputs: a.input,
                out: a.out,
                val_fraction: a.val_fraction,
                seed: a.seed,
                compact_vocab: a.compact_vocab,
                min_count: a.min_count,
                quiet: a.quiet,
            })?;
            println!("{}", to_json(&summary)?);
        }
        Command::Bench(a) => bench::run(&a)?,
        Command::Sweep(a) => {
            if a.gpt2.devices.is_some() || a.gpt2.rendezvous.is_some() {
                return Err(crate::error::Error::config(
                    "devices",
                    "a sweep trains its runs one after another on one device each; spread a sweep over \
                     devices or machines with --list or --shard (docs/experiments.md)",
                ));
            }
            let opts = a.options();
            if a.list {
                let program = std::env::current_exe()
                    .map(|p| p.display().to_string())
                    .unwrap_or_else(|_| "rotadam".into());
                for line in crate::sweep::list(&opts, &program)? {
                    println!("{line}");
                }
            } else {
                let dir = if a.report_only {
                    crate::sweep::report_only(&opts)?
                } else {
                    crate::sweep::run(&opts)?
                };
                println!("{}", dir.join("report.md").display());
            }
        }
        Command::Plot(a) => {
            let (png, svg) = crate::sweep::plot_runs::run(&a.options())?;
            println!("{}\n{}", png.display(), svg.display());
        }
        Command::Quadratic(a) => {
            crate::quadratic::run_and_write(&a.config()?, &a.out)?;
        }
        Command::Diagnose(a) if a.sweep => {
            let rows = crate::sweep::diagnostics::run(&a.options())?;
            if a.json {
                println!("{}", to_json(&rows)?);
            } else {
                println!("{}", a.path.join("report.md").display());
            }
        }
        Command::Diagnose(a) => {
            let report = crate::diagnose::run(&a.options())?;
            if a.json {
                println!("{}", to_json(&report)?);
            } else if !a.quiet {
                print!("{}", crate::diagnose::table(&report));
            }
        }
        Command::Eval(a) => {
            let report = crate::eval::run(&a.options())?;
            if a.json {
                println!("{}", to_json(&report)?);
            } else {
                println!("{}", crate::eval::line(&report));
            }
        }
    }
    Ok(())
}

/// `x` as the pretty JSON the commands print; an error (not a panic) for what JSON cannot hold, e.g. a
/// path that is not UTF-8.
pub fn to_json<T: serde::Serialize>(x: &T) -> Result<String> {
    serde_json::to_string_pretty(x).map_err(|source| crate::error::Error::Json {
        path: "standard output".into(),
        source,
    })
}

/// The value parser of a [`Choice`]: accepts its names, lists them with their descriptions in `--help`.
pub fn choice<T: Choice + Send + Sync + Clone>() -> impl TypedValueParser<Value = T> {
    PossibleValuesParser::new(
        T::VALUES
            .iter()
            .map(|(_, name, help)| PossibleValue::new(*name).help(*help)),
    )
    .map(|s| T::parse(&s).expect("clap only passes a listed name"))
}

/// `what` followed by the default of every model preset, e.g.
/// "Micro-batch size [default: small 8, tiny 4, 124m–1558m 12]" (presets with the paper's value are
/// grouped; the text is built from the presets themselves, so it cannot drift from them).
fn train_default(what: &str, field: impl Fn(&TrainConfig) -> String) -> String {
    let values: Vec<(&str, String)> = MODEL_PRESETS
        .iter()
        .map(|p| (*p, field(&TrainConfig::for_preset(p))))
        .collect();
    let first = &values[0].1;
    if values.iter().all(|(_, v)| v == first) {
        return format!("{what} [default: {first}]");
    }
    // the GPT-2 family shares the paper's values: one group; the other presets one by one
    let paper = field(&TrainConfig::default());
    let family: Vec<&str> = values
        .iter()
        .filter(|(p, v)| GPT2_FAMILY.contains(p) && *v == paper)
        .map(|(p, _)| *p)
        .collect();
    let mut parts: Vec<String> = values
        .iter()
        .filter(|(p, _)| !family.contains(p))
        .map(|(p, v)| format!("{p} {v}"))
        .collect();
    match family.as_slice() {
        [] => {}
        [one] => parts.push(format!("{one} {paper}")),
        [first, .., last] => parts.push(format!("{first}–{last} {paper}")),
    }
    format!("{what} [default: {}]", parts.join(", "))
}

/// The GPT-2 presets, which take the paper's training settings.
const GPT2_FAMILY: [&str; 4] = ["124m", "350m", "774m", "1558m"];

/// `what` followed by the value of every model preset.
fn model_default(what: &str, field: impl Fn(&ModelConfig) -> usize) -> String {
    let parts: Vec<String> = MODEL_PRESETS
        .iter()
        .map(|p| {
            let m = ModelConfig::preset(p).expect("a listed preset");
            format!("{p} {}", field(&m))
        })
        .collect();
    format!(
        "{what} [default: the --model preset's: {}]",
        parts.join(", ")
    )
}

/// "Worker threads [default: all cores (N here)]".
fn threads_help() -> String {
    format!(
        "Worker threads [default: all cores, {} here]",
        default_threads()
    )
}
