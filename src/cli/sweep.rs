//! `rotadam sweep` and `rotadam plot`.

use super::{choice, Gpt2Args};
use crate::config::RotationKind;
use crate::sweep::plot_runs::{Metric, PlotOptions};
use crate::sweep::{report, Ablation, SweepOptions, DEFAULT_ROTATIONS, DEFAULT_SGD_LR};
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
    /// Options of every run (`rotadam gpt2 --help`); --out is the sweep directory, --seed the first seed.
    #[command(flatten)]
    pub gpt2: Gpt2Args,
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
