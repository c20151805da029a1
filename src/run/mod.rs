//! Runs: the training loop, run directories (config.json, metrics.jsonl, checkpoints) and resume.

pub mod checkpoint;
pub mod metrics;
pub mod options;
pub mod progress;
pub mod train;
pub mod trainer;

use crate::error::{Error, Result};
use std::path::Path;

/// Write a file through a temporary name in the same directory and rename it into place.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_else(|| "out".into());
    let tmp = path.with_file_name(format!(".{name}.tmp"));
    std::fs::write(&tmp, bytes).map_err(|e| Error::io(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))
}
