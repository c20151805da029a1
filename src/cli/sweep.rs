//! `rotadam sweep` and `rotadam plot`.

use super::{choice, Gpt2Args};
use crate::config::RotationKind;
use crate::sweep::plot_runs::{Metric, PlotOptions};
use crate::sweep::{report, Ablation, Selection, SweepOptions, DEFAULT_ROTATIONS, DEFAULT_SGD_LR};
use clap::Args;
use std::path::PathBuf;

#[derive(Args, Debug, Clone)]
pub struct SweepArgs {
    /// Rotations to compare, comma-separated (ignored with --ablation).
    #[arg(long, value_delimiter = ',', default_value = DEFAULT_ROTATIONS, value_parser = choice::<RotationKind>())]
    pub rotations: Vec<RotationKind>,
    /// Seeds per variant: --seed, --seed+1, …
    #[arg(long, default_value_t = 3)]
    pub seeds: usize,
    /// A preset sweep instead of --rotations.
    #[arg(long, value_parser = choice::<Ablation>())]
    pub ablation: Option<Ablation>,
    /// Learning rate of the SGD variants of the `optimizers` and `sgd-validation` ablations (SGD needs a
    /// far larger step than Adam's --lr).
    #[arg(long, default_value_t = DEFAULT_SGD_LR)]
    pub sgd_lr: f64,
    /// Print one `rotadam gpt2 --resume RUN_DIR` command per run (after writing each run's config.json)
    /// and train nothing: for a scheduler (a Slurm job array, GNU parallel) to run them anywhere the
    /// sweep directory is shared. Combines with --only and --shard.
    #[arg(long, conflicts_with = "report_only")]
    pub list: bool,
    /// Only these runs, by name: VARIANT-sSEED (the run directory's name, e.g. global-s1338),
    /// comma-separated.
    #[arg(long, value_delimiter = ',', value_name = "RUN")]
    pub only: Vec<String>,
    /// Only shard I of N (1 ≤ I ≤ N): the runs whose position in the sweep's order is I−1 modulo N. N
    /// jobs with I = 1..N cover every run once.
    #[arg(long, value_name = "I/N", value_parser = parse_shard)]
    pub shard: Option<(usize, usize)>,
    /// Write the report over the runs that have finished (the others are listed as not finished) and
    /// train nothing.
    #[arg(long, conflicts_with_all = ["only", "shard"])]
    pub report_only: bool,
    /// Options of every run (`rotadam gpt2 --help`); --out is the sweep directory, --seed the first seed.
    #[command(flatten)]
    pub gpt2: Gpt2Args,
}

fn parse_shard(text: &str) -> Result<(usize, usize), String> {
    Selection::parse_shard(text).map_err(|e| e.to_string())
}

impl SweepArgs {
    /// The library's options.
    pub fn options(&self) -> SweepOptions {
        SweepOptions {
            rotations: self.rotations.clone(),
            seeds: self.seeds,
            ablation: self.ablation,
            sgd_lr: self.sgd_lr,
            run: self.gpt2.options(),
            select: Selection {
                only: self.only.clone(),
                shard: self.shard,
            },
        }
    }
}

#[derive(Args, Debug, Clone)]
pub struct PlotArgs {
    /// Run directories (each with a metrics.jsonl).
    #[arg(required = true, num_args = 1..)]
    pub runs: Vec<PathBuf>,
    /// Output path: writes OUT.png and OUT.svg (a trailing .png or .svg is dropped first, so
    /// `--out y.png` writes y.png and y.svg).
    #[arg(long, default_value = "loss")]
    pub out: PathBuf,
    /// Which curve to draw.
    #[arg(long, value_parser = choice::<Metric>(), default_value = "val")]
    pub metric: Metric,
    /// EMA decay of the training loss (0 = raw).
    #[arg(long, default_value_t = report::TRAIN_EMA)]
    pub ema: f64,
    /// Logarithmic loss axis.
    #[arg(long)]
    pub log_y: bool,
    /// Title of the figure.
    #[arg(long, default_value = "loss curves")]
    pub title: String,
}

impl PlotArgs {
    /// The library's options.
    pub fn options(&self) -> PlotOptions {
        PlotOptions {
            runs: self.runs.clone(),
            out: self.out.clone(),
            metric: self.metric,
            ema: self.ema,
            log_y: self.log_y,
            title: self.title.clone(),
        }
    }
}
