//! Runs: the training loop, run directories (config.json, metrics.jsonl, checkpoints) and resume.

pub mod checkpoint;
pub mod lock;
pub mod memory;
pub mod metrics;
pub mod options;
pub mod progress;
pub mod train;
pub mod trainer;
