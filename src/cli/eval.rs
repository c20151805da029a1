//! `rotadam eval`.

use super::{choice, threads_help};
use crate::eval::{EvalOptions, EvalPrecision, DEFAULT_BATCH_SIZE};
use clap::Args;
use std::path::PathBuf;

/// `rotadam eval` flags.
#[derive(Args, Debug, Clone)]
pub struct EvalArgs {
    /// A checkpoint directory (checkpoints/step_N) or a run directory (its latest checkpoint is used).
    pub checkpoint: PathBuf,
    /// Token file: flat little-endian uint16 (nanoGPT's train.bin/val.bin format), cut into consecutive,
    /// non-overlapping windows of --seq-len + 1 tokens (inputs T tokens, targets shifted by one); a
    /// trailing partial window is dropped and counted.
    #[arg(long, value_name = "FILE")]
    pub tokens: PathBuf,
    /// Tokens per window T (each window reads T + 1) [default: the model's context; at most that].
    #[arg(long, value_name = "T")]
    pub seq_len: Option<usize>,
    /// Windows per micro-batch (the result is the mean over all predicted tokens whatever this is).
    #[arg(long, default_value_t = DEFAULT_BATCH_SIZE)]
    pub batch_size: usize,
    /// Precision of the CPU backend [default: the checkpoint's dtype, from its state.json].
    #[arg(long, value_parser = choice::<EvalPrecision>())]
    pub precision: Option<EvalPrecision>,
    /// Also write the gradient of the mean loss to this safetensors file, in the checkpoint's Hugging
    /// Face names and layouts and the dtype of --precision (a model without biases: no bias tensors).
    #[arg(long, value_name = "OUT.safetensors")]
    pub grad: Option<PathBuf>,
    /// Print the result as JSON (loss, tokens, windows, dropped_tokens, checkpoint, precision, …).
    #[arg(long)]
    pub json: bool,
    #[arg(long, help = threads_help())]
    pub threads: Option<usize>,
}

impl EvalArgs {
    /// The library's options (field for field; `--json` chooses what the command prints).
    pub fn options(&self) -> EvalOptions {
        EvalOptions {
            checkpoint: self.checkpoint.clone(),
            tokens: self.tokens.clone(),
            seq_len: self.seq_len,
            batch_size: self.batch_size,
            precision: self.precision,
            grad: self.grad.clone(),
            threads: self.threads,
        }
    }
}
