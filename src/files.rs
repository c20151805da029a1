//! Files written so that a crash never leaves half of one: through a temporary name in the same directory,
//! then renamed into place (a rename within a file system is atomic).

use crate::error::{Error, Result};
use std::path::Path;

/// Writes `bytes` to `path` through a temporary name in the same directory and a rename.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_else(|| "out".into());
    let tmp = path.with_file_name(format!(".{name}.tmp"));
    std::fs::write(&tmp, bytes).map_err(|e| Error::io(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))
}
