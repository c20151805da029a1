//! `rotadam diagnose --sweep DIR linf|l11|spectral|update-cv`: every run of a sweep diagnosed at its final
//! checkpoint (each in its own rotated basis), then a table (mean ± std over seeds per variant) and one bar
//! chart per number added to the sweep's `report.md` (Maes et al. Figs. 7, 8, 10), and
//! `diagnostics.json` with every run's report.

use super::SweepRecord;
use crate::diagnose::{self, DiagnoseOptions, Report, What};
use crate::error::{Error, Result};
use crate::plot::{Axes, BarChart, BarGroup};
use serde::Serialize;
use std::path::Path;

/// Markers around the diagnostics section of `report.md` (a rerun replaces what is between them; the
/// sweep keeps the section when it rewrites its report).
pub const BEGIN: &str = "<!-- diagnostics: begin -->";
pub const END: &str = "<!-- diagnostics: end -->";

/// One number per run, summarised per variant.
struct Metric {
    key: &'static str,
    title: &'static str,
    get: fn(&Report) -> Option<f64>,
}

const METRICS: [Metric; 4] = [
    Metric {
        key: "linf",
        title: "L∞ gradient bound C̃ = max_B ‖R∇f_B‖∞",
        get: |r| r.linf.as_ref().map(|l| l.bound),
    },
    Metric {
        key: "l11_per_dim",
        title: "‖H‖₍₁,₁₎ / d (Cauchy estimate)",
        get: |r| r.l11.as_ref().map(|l| l.estimate.best().norm_per_dim),
    },
    Metric {
        key: "lambda_max",
        title: "top Hessian eigenvalue (Lanczos)",
        get: |r| r.spectral.as_ref().map(|s| s.lanczos.lambda_max),
    },
    Metric {
        key: "update_cv",
        title: "update CV (mean over 2-D weights)",
        get: |r| r.update_cv.as_ref().map(|u| u.summary.mean),
    },
];

#[derive(Serialize)]
struct RunDiagnostics<'a> {
    variant: &'a str,
    seed: u64,
    report: &'a Report,
}

/// Per variant and metric: mean, std, runs.
#[derive(Clone, Debug, Serialize)]
pub struct VariantDiagnostics {
    pub variant: String,
    pub runs: usize,
    /// metric key → (mean, std) over the variant's runs
    pub values: std::collections::BTreeMap<String, (f64, f64)>,
}

/// Diagnose every run of the sweep in `args.path`; returns one row per variant.
pub fn run(args: &DiagnoseOptions) -> Result<Vec<VariantDiagnostics>> {
    let dir = &args.path;
    let allowed = [What::Linf, What::L11, What::Spectral, What::UpdateCv];
    if let Some(w) = args.what.iter().find(|w| !allowed.contains(w)) {
        return Err(Error::config(
            "--sweep",
            format!("{w} has no per-run number to tabulate; use linf, l11, spectral or update-cv"),
        ));
    }
    if args.out.is_some() {
        return Err(Error::config(
            "--out",
            "not used with --sweep (each run writes to its own diagnostics/)",
        ));
    }
    let record_path = dir.join("sweep.json");
    let text = std::fs::read_to_string(&record_path).map_err(|e| Error::io(&record_path, e))?;
    let record: SweepRecord = serde_json::from_str(&text).map_err(|e| Error::Json {
        path: record_path.clone(),
        source: e,
    })?;
    // each run's final val loss, for ρ below: read first, so that a run without one fails before the
    // diagnostics are spent
    let mut final_val = Vec::with_capacity(record.runs.len());
    for r in &record.runs {
        let path = r.dir.join("metrics.jsonl");
        let rows = crate::run::metrics::read(&path)?;
        let v = rows
            .iter()
            .rev()
            .find_map(|row| row.val_loss)
            .ok_or_else(|| {
                Error::bad_file(
                    &path,
                    "val_loss",
                    "no evaluation in this run: nothing to correlate with",
                )
            })?;
        final_val.push(v);
    }
    let mut reports = Vec::new();
    for (i, r) in record.runs.iter().enumerate() {
        if !args.quiet {
            eprintln!(
                "diagnose {}/{}: {} seed {} ({})",
                i + 1,
                record.runs.len(),
                r.variant,
                r.seed,
                r.dir.display()
            );
        }
        let mut a = args.clone();
        a.path = r.dir.clone();
        a.quiet = true;
        reports.push(diagnose::run(&a)?);
    }
    let labels: Vec<String> = record.variants.iter().map(|v| v.label.clone()).collect();
    let metrics: Vec<&Metric> = METRICS
        .iter()
        .filter(|m| reports.iter().all(|r| (m.get)(r).is_some()))
        .collect();
    let rows: Vec<VariantDiagnostics> = labels
        .iter()
        .map(|label| {
            let mine: Vec<&Report> = record
                .runs
                .iter()
                .zip(&reports)
                .filter(|(r, _)| &r.variant == label)
                .map(|(_, rep)| rep)
                .collect();
            let values = metrics
                .iter()
                .map(|m| {
                    let xs: Vec<f64> = mine.iter().filter_map(|r| (m.get)(r)).collect();
                    (m.key.to_string(), super::report::mean_std(&xs))
                })
                .collect();
            VariantDiagnostics {
                variant: label.clone(),
                runs: mine.len(),
                values,
            }
        })
        .collect();

    // Spearman's ρ over runs between each number and the run's final val loss (read above)
    let spearman: std::collections::BTreeMap<String, Option<f64>> = metrics
        .iter()
        .map(|m| {
            let (xs, ys): (Vec<f64>, Vec<f64>) = reports
                .iter()
                .zip(&final_val)
                .filter_map(|(rep, &v)| Some(((m.get)(rep)?, v)))
                .unzip();
            (m.key.to_string(), super::report::spearman(&xs, &ys))
        })
        .collect();
    let critical = super::report::spearman_critical(reports.len());

    // the bar charts and the report section
    let mut md = format!(
        "{BEGIN}\n## Diagnostics\n\nEach run at its final checkpoint, in its own rotated basis \
         (`rotadam diagnose --sweep`; settings in `diagnostics.json`). Mean ± std over seeds (the value alone for one seed).\n\n"
    );
    md += "| variant | runs |";
    for m in &metrics {
        md += &format!(" {} |", m.title);
    }
    md += "\n|---|---:|";
    md += &"---:|".repeat(metrics.len());
    md += "\n";
    for row in &rows {
        md += &format!("| {} | {} |", row.variant, row.runs);
        for m in &metrics {
            let (mean, std) = row.values[m.key];
            if row.runs > 1 {
                md += &format!(" {mean:.4e} ± {std:.1e} |");
            } else {
                md += &format!(" {mean:.4e} |");
            }
        }
        md += "\n";
    }
    md += &format!(
        "| ρ with the final val loss, over the {} runs |  |",
        reports.len()
    );
    for m in &metrics {
        md += &match spearman[m.key] {
            Some(r) => format!(" {r:+.2} |"),
            None => " — |".into(),
        };
    }
    md += &format!(
        "\n\nThe last row is Spearman's rank correlation over runs between each number and the run's final \
         val loss; |ρ| above {} is significant at the 5% level (two-sided), though a \
         variant's seeds are not independent draws.\n\n",
        critical.map_or("—".to_string(), |c| format!("{c:.2}"))
    );
    for m in &metrics {
        let chart = BarChart {
            axes: Axes::new(m.title, "variant", m.key),
            categories: labels.clone(),
            groups: vec![BarGroup {
                label: String::new(),
                values: rows.iter().map(|r| r.values[m.key].0).collect(),
                // no error bars when every variant has a single run
                errors: rows
                    .iter()
                    .any(|r| r.runs > 1)
                    .then(|| rows.iter().map(|r| r.values[m.key].1).collect()),
            }],
        };
        let stem = format!("diag_{}", m.key);
        chart.save_png_svg(&dir.join(&stem))?;
        md += &format!("![{}]({stem}.png)\n\n", m.title);
    }
    md += END;
    md += "\n";
    let report_path = dir.join("report.md");
    let old = std::fs::read_to_string(&report_path).unwrap_or_default();
    let new = with_section(&old, &md);
    crate::files::write_atomic(&report_path, new.as_bytes())?;
    let all: Vec<RunDiagnostics> = record
        .runs
        .iter()
        .zip(&reports)
        .map(|(r, rep)| RunDiagnostics {
            variant: &r.variant,
            seed: r.seed,
            report: rep,
        })
        .collect();
    #[derive(Serialize)]
    struct Out<'a> {
        variants: &'a [VariantDiagnostics],
        /// metric key → Spearman's ρ over runs with the final val loss
        spearman_with_final_val: &'a std::collections::BTreeMap<String, Option<f64>>,
        runs: Vec<RunDiagnostics<'a>>,
    }
    let path = dir.join("diagnostics.json");
    let json = serde_json::to_vec_pretty(&Out {
        variants: &rows,
        spearman_with_final_val: &spearman,
        runs: all,
    })
    .map_err(|source| Error::Json {
        path: path.clone(),
        source,
    })?;
    crate::files::write_atomic(&path, &json)?;
    if !args.quiet {
        eprintln!("diagnostics added to {}", report_path.display());
    }
    Ok(rows)
}

/// `report` with its diagnostics section replaced by `section` (or `section` appended).
pub fn with_section(report: &str, section: &str) -> String {
    match (report.find(BEGIN), report.find(END)) {
        (Some(b), Some(e)) if e > b => {
            let tail = &report[e + END.len()..];
            format!("{}{}{}", &report[..b], section.trim_end_matches('\n'), tail)
        }
        _ => {
            let sep = if report.is_empty() || report.ends_with("\n\n") {
                ""
            } else if report.ends_with('\n') {
                "\n"
            } else {
                "\n\n"
            };
            format!("{report}{sep}{section}")
        }
    }
}

/// The diagnostics section of an existing report, if any (kept when the sweep rewrites its report).
pub fn existing_section(report_path: &Path) -> Option<String> {
    let old = std::fs::read_to_string(report_path).ok()?;
    let b = old.find(BEGIN)?;
    let e = old.find(END)?;
    (e > b).then(|| format!("{}\n", &old[b..e + END.len()]))
}
