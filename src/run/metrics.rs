//! `metrics.jsonl`: one JSON object per optimizer step, appended and flushed as training goes.

use crate::config::RotationKind;
use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::{Path, PathBuf};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StepMetrics {
    pub step: usize,
    pub train_loss: f64,
    pub lr: f64,
    pub grad_norm: f64,
    pub tokens_per_s: f64,
    pub ms_per_step: f64,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub val_loss: Option<f64>,
    pub optimizer: String,
    pub rotation: RotationKind,
    /// `--log-update-cv N`: the update CV summary at this step (every N steps).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub update_cv: Option<crate::optim::update_cv::UpdateCvSummary>,
    /// `--rotation svd`: true on the row of a step whose basis was refreshed from that step's gradient
    /// (steps 1, F+1, 2F+1, …; the first from the gradient at the initial weights); absent on every other
    /// row, so the rows of other runs are as they were.
    #[serde(skip_serializing_if = "std::ops::Not::not", default)]
    pub svd_refresh: bool,
}

pub struct MetricsWriter {
    path: PathBuf,
    file: std::fs::File,
    /// What [`MetricsWriter::open`] left out of the file: a torn last line (its number and why).
    pub torn: Option<String>,
}

impl MetricsWriter {
    /// Open `path` for appending. With `keep_until = Some(n)`, rows with `step > n` are dropped first
    /// (a resume from the checkpoint at step n replaces what came after it), and so is a torn last line;
    /// the rows kept keep their bytes, and the rewrite is atomic.
    pub fn open(path: &Path, keep_until: Option<usize>) -> Result<Self> {
        let mut torn = None;
        if let Some(n) = keep_until {
            if path.exists() {
                let text = read_text(path)?;
                let parsed = parse(path, &text)?;
                torn = parsed
                    .torn
                    .map(|(line, why)| format!("{}: line {line}: {why}", path.display()));
                let mut kept = String::new();
                for line in parsed.rows {
                    if line.row.step <= n {
                        kept.push_str(line.text);
                        kept.push('\n');
                    }
                }
                if kept != text {
                    crate::files::write_atomic(path, kept.as_bytes())?;
                }
            }
        }
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|e| Error::io(path, e))?;
        Ok(MetricsWriter {
            path: path.to_path_buf(),
            file,
            torn,
        })
    }

    /// Appends one row as one line in one write, flushed.
    pub fn write(&mut self, m: &StepMetrics) -> Result<()> {
        let mut line = serde_json::to_string(m).map_err(|source| Error::Json {
            path: self.path.clone(),
            source,
        })?;
        line.push('\n');
        self.file
            .write_all(line.as_bytes())
            .and_then(|_| self.file.flush())
            .map_err(|e| Error::io(&self.path, e))
    }
}

/// One parsed line of a metrics file, with its bytes.
struct Line<'a> {
    text: &'a str,
    row: StepMetrics,
}

/// The rows of a metrics file, and the torn last line that was left out (if any).
struct Parsed<'a> {
    rows: Vec<Line<'a>>,
    torn: Option<(usize, String)>,
}

fn read_text(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).map_err(|e| Error::io(path, e))
}

/// Parses every line; a malformed last line is torn (a crash or a full disk in the middle of an append)
/// and left out, a malformed line before it is an error naming the file and line.
fn parse<'a>(path: &Path, text: &'a str) -> Result<Parsed<'a>> {
    let lines: Vec<(usize, &str)> = text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .collect();
    let mut out = Parsed {
        rows: Vec::with_capacity(lines.len()),
        torn: None,
    };
    for (k, &(i, l)) in lines.iter().enumerate() {
        match serde_json::from_str(l) {
            Ok(row) => out.rows.push(Line { text: l, row }),
            Err(e) if k + 1 == lines.len() => out.torn = Some((i + 1, e.to_string())),
            Err(e) => {
                return Err(Error::bad_file(
                    path,
                    format!("line {}", i + 1),
                    format!("not a metrics row: {e}"),
                ))
            }
        }
    }
    Ok(out)
}

/// Reads a metrics file. A torn last line (a partial row written by a crash or on a full disk) is left
/// out with a warning on stderr; any other malformed line is an error naming the file and line.
pub fn read(path: &Path) -> Result<Vec<StepMetrics>> {
    let text = read_text(path)?;
    let parsed = parse(path, &text)?;
    if let Some((line, why)) = &parsed.torn {
        eprintln!(
            "warning: {}: line {line} is a torn last row ({why}); it was left out",
            path.display()
        );
    }
    Ok(parsed.rows.into_iter().map(|l| l.row).collect())
}
