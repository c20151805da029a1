//! `rotadam plot RUN_DIR...`: the loss curves of any runs in one figure (PNG and SVG).

use super::report::{self, RunCurves};
use crate::error::{Error, Result};
use crate::run::metrics;
use std::path::{Path, PathBuf};

/// Which curve to draw.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Metric {
    Val,
    Train,
}

impl crate::config::Choice for Metric {
    const WHAT: &'static str = "metric";
    const VALUES: &'static [(Self, &'static str, &'static str)] = &[
        (Metric::Val, "val", "validation loss at each evaluation"),
        (
            Metric::Train,
            "train",
            "training loss, smoothed by a bias-corrected EMA (decay --ema)",
        ),
    ];
}
crate::config::choice_impls!(Metric);

/// What `plot` draws (the command line's `--help` documents each option).
#[derive(Debug, Clone)]
pub struct PlotOptions {
    /// Run directories (each with a metrics.jsonl).
    pub runs: Vec<PathBuf>,
    /// Output path: writes OUT.png and OUT.svg; an OUT ending in `.png` or `.svg` loses that extension
    /// first (`y.png` writes `y.png` and `y.svg`; see [`crate::plot::figure_stem`]).
    pub out: PathBuf,
    pub metric: Metric,
    /// EMA decay of the training loss (0 = raw).
    pub ema: f64,
    /// Logarithmic loss axis.
    pub log_y: bool,
    pub title: String,
}

/// A run's legend label: the directory name (the whole path when it has none, e.g. `..`).
fn label(dir: &Path) -> String {
    dir.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| dir.display().to_string())
}

/// Draws the figure; returns the PNG and SVG paths (OUT.png and OUT.svg, see [`PlotOptions::out`]).
pub fn run(a: &PlotOptions) -> Result<(PathBuf, PathBuf)> {
    if !(0.0..1.0).contains(&a.ema) {
        return Err(Error::config("--ema", "must be in [0, 1)"));
    }
    let mut series = Vec::new();
    for dir in &a.runs {
        let path = dir.join("metrics.jsonl");
        if !path.is_file() {
            // Named once: the run directory, then the file it lacks.
            return Err(Error::bad_file(
                dir,
                "metrics.jsonl",
                "missing: expected a run directory written by `rotadam gpt2`",
            ));
        }
        let c = RunCurves::from_metrics(&metrics::read(&path)?);
        let points = match a.metric {
            Metric::Val => c.val,
            Metric::Train => report::ema(&c.train, a.ema),
        };
        if points.is_empty() {
            return Err(Error::bad_file(
                &path,
                "val_loss",
                "no evaluation logged; use --metric train",
            ));
        }
        series.push(crate::plot::Series::new(&label(dir), points));
    }
    let y = match a.metric {
        Metric::Val => "validation loss",
        Metric::Train => "training loss",
    };
    let mut axes = crate::plot::Axes::new(&a.title, "step", y);
    if a.log_y {
        axes = axes.log_y();
    }
    crate::plot::LineChart { axes, series }.save_png_svg(&a.out)
}
