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
}

pub struct MetricsWriter {
    path: PathBuf,
    file: std::fs::File,
}

impl MetricsWriter {
    /// Open `path` for appending. With `keep_until = Some(n)`, rows with `step > n` are dropped first
    /// (a resume from the checkpoint at step n replaces what came after it); the rewrite is atomic.
    pub fn open(path: &Path, keep_until: Option<usize>) -> Result<Self> {
        if let Some(n) = keep_until {
            if path.exists() {
                let rows = read(path)?;
                let mut text = String::new();
                for r in rows.into_iter().filter(|r| r.step <= n) {
                    text.push_str(&serde_json::to_string(&r).expect("metrics serialise"));
                    text.push('\n');
                }
                crate::files::write_atomic(path, text.as_bytes())?;
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
        })
    }

    pub fn write(&mut self, m: &StepMetrics) -> Result<()> {
        let mut line = serde_json::to_string(m).expect("metrics serialise");
        line.push('\n');
        self.file
            .write_all(line.as_bytes())
            .and_then(|_| self.file.flush())
            .map_err(|e| Error::io(&self.path, e))
    }
}

/// Read a metrics file; a malformed line is an error naming the file and line.
pub fn read(path: &Path) -> Result<Vec<StepMetrics>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            serde_json::from_str(l).map_err(|e| {
                Error::bad_file(
                    path,
                    format!("line {}", i + 1),
                    format!("not a metrics row: {e}"),
                )
            })
        })
        .collect()
}
