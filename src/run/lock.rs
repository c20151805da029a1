//! One writer per run directory: an advisory lock on `<dir>/.lock`, taken by every command that writes
//! a run (`gpt2`, `gpt2 --resume`, `sweep`) and held until it ends. Readers (`diagnose`, `plot`) take none.
//!
//! The lock is the operating system's (`flock` on Unix), so it dies with its process: a lock file left by
//! a killed run never blocks the next one. The holder writes its pid into the file so that a second
//! writer's error can name it.

use crate::error::{Error, Result};
use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// The name of the lock file inside a run or sweep directory.
pub const LOCK_FILE: &str = ".lock";

/// A held lock; released when dropped (or when the process ends).
#[derive(Debug)]
pub struct DirLock {
    path: PathBuf,
    _file: File,
}

impl DirLock {
    /// Takes the lock of `dir` (created if missing) for `what` (e.g. `gpt2`), or fails at once, naming the
    /// process that holds it.
    pub fn acquire(dir: &Path, what: &str) -> Result<DirLock> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let path = dir.join(LOCK_FILE);
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| Error::io(&path, e))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                let mut holder = String::new();
                // Best effort: the holder may be between truncating and writing its line.
                let _ = file.read_to_string(&mut holder);
                let holder = holder.trim();
                let who = if holder.is_empty() {
                    "another process".to_string()
                } else {
                    format!("another process ({holder})")
                };
                return Err(Error::config(
                    "run directory",
                    format!(
                        "{} is in use: {who} is writing it; wait for it to finish or stop it \
                         (readers such as diagnose and plot need no lock)",
                        dir.display()
                    ),
                ));
            }
            Err(TryLockError::Error(e)) => return Err(Error::io(&path, e)),
        }
        let line = format!("pid {} ({what})\n", std::process::id());
        file.set_len(0)
            .and_then(|_| file.seek(SeekFrom::Start(0)))
            .and_then(|_| file.write_all(line.as_bytes()))
            .and_then(|_| file.flush())
            .map_err(|e| Error::io(&path, e))?;
        Ok(DirLock { path, _file: file })
    }

    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}
