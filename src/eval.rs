//! `rotadam eval CHECKPOINT --tokens FILE`: the mean cross-entropy of a checkpoint over a token file and,
//! with `--grad OUT.safetensors`, the gradient of that mean in the checkpoint's Hugging Face layout.
//!
//! **The checkpoint** is a checkpoint directory (`checkpoints/step_N`, with `model.safetensors` and
//! `state.json`, whose `model` is the architecture) or a run directory, whose latest checkpoint is used.
//! Nothing else of the run is read (no `config.json`, no optimizer state).
//!
//! **Windows.** The file is nanoGPT's flat little-endian uint16 token stream (like `val.bin`; an llm.c
//! token shard is recognised by its header and read as its tokens), checked on open as training checks
//! its data: an odd length or a token id ≥ the model's vocabulary is an error naming the file. It is cut
//! into consecutive, non-overlapping windows of T + 1 tokens: window k is `tokens[k(T+1) .. (k+1)(T+1)]`,
//! its inputs the first T tokens and its targets the last T (the inputs shifted by one), exactly the rows
//! the training sampler reads from a start. Each window predicts T tokens; the first token of a window is
//! only an input (llm.c's loader instead reads B·T + 1 tokens and advances by B·T, so consecutive rows
//! share a token). A trailing partial window (fewer than T + 1 tokens) is dropped and counted
//! (`dropped_tokens`). T is `--seq-len`, by default the model's context and at most that.
//!
//! **The loss** is the mean over every predicted token (N = windows × T of them), evaluated `--batch-size`
//! windows at a time (the last micro-batch may hold fewer): each micro-batch's mean loss is weighted by
//! its share of the N tokens, and its gradient is accumulated with the scale 1/N per token, so loss and
//! gradient are those of the mean over all N tokens whatever the batch size. On a file holding the
//! windows of one training step in order, with `--batch-size` the run's batch size, this is the
//! computation the trainer makes (the same micro-batches, the same scale 1/(B·T·grad_accum)): the same
//! gradient bit for bit and the same loss up to rounding (`tests/eval.rs`).
//!
//! **Precision.** fp64 (`CpuBackend<f64>`) or fp32 (`CpuBackend<f32>`); by default the checkpoint's
//! dtype (`state.json`'s `dtype`). A bf16 run stores f32 weights and is evaluated in plain fp32.
//!
//! **The gradient file** holds the tensors of the checkpoint's `model.safetensors` under the same names
//! and shapes ([`crate::model::hf`]: the `transformer.` prefix, Conv1D weights (in, out), q/k/v fused
//! into `c_attn`, the tied LM head's gradient inside `wte`), in the dtype of the precision. A model without
//! biases has no bias gradients, so the file leaves those tensors out (the model file stores zeros for
//! them, which is what such a model computes, but zero is not a gradient it has); [`hf::from_hf`] reads
//! the file back into the flat layout.

use crate::backend::cpu::CpuBackend;
use crate::backend::{Backend, Scalar};
use crate::config::{Choice, ModelConfig};
use crate::data::shard::{DataFormat, TokenShard, LLMC_HEADER_BYTES, LLMC_MAGIC, LLMC_VERSION};
use crate::error::{Error, Result};
use crate::model::hf::{self, HF_PREFIX};
use crate::model::{Gpt2, ParamTable};
use crate::run::checkpoint::{self, TrainState};
use crate::tensors;
use serde::Serialize;
use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};

/// Default `--batch-size`: windows per micro-batch.
pub const DEFAULT_BATCH_SIZE: usize = 8;

/// The precision `eval` computes in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EvalPrecision {
    Fp32,
    Fp64,
}

impl Choice for EvalPrecision {
    const WHAT: &'static str = "precision";
    const VALUES: &'static [(Self, &'static str, &'static str)] = &[
        (
            EvalPrecision::Fp32,
            "fp32",
            "single precision (the f32 CPU backend)",
        ),
        (
            EvalPrecision::Fp64,
            "fp64",
            "double precision (the f64 CPU backend): the reference",
        ),
    ];
}
crate::config::choice_impls!(EvalPrecision);

impl EvalPrecision {
    /// The precision of a checkpoint's stored dtype (`state.json`'s `dtype`: `f32` or `f64`).
    pub fn of_dtype(dtype: &str) -> Option<Self> {
        match dtype {
            "f32" => Some(EvalPrecision::Fp32),
            "f64" => Some(EvalPrecision::Fp64),
            _ => None,
        }
    }
}

/// What to evaluate and how (the command line's `--help` documents each option).
#[derive(Debug, Clone)]
pub struct EvalOptions {
    /// A checkpoint directory (checkpoints/step_N) or a run directory (its latest checkpoint).
    pub checkpoint: PathBuf,
    /// The token file: flat little-endian uint16.
    pub tokens: PathBuf,
    /// Tokens per window T (T + 1 read per window); default the model's context, at most that.
    pub seq_len: Option<usize>,
    /// Windows per micro-batch.
    pub batch_size: usize,
    /// Default: the checkpoint's dtype.
    pub precision: Option<EvalPrecision>,
    /// Where to write the gradient of the mean loss (safetensors); None: no backward pass.
    pub grad: Option<PathBuf>,
    /// Worker threads (default: all cores).
    pub threads: Option<usize>,
}

impl EvalOptions {
    /// The defaults of the command line for `checkpoint` and `tokens`.
    pub fn new(checkpoint: impl Into<PathBuf>, tokens: impl Into<PathBuf>) -> Self {
        EvalOptions {
            checkpoint: checkpoint.into(),
            tokens: tokens.into(),
            seq_len: None,
            batch_size: DEFAULT_BATCH_SIZE,
            precision: None,
            grad: None,
            threads: None,
        }
    }

    fn validate(&self) -> Result<()> {
        for (flag, v) in [
            ("--seq-len", self.seq_len),
            ("--batch-size", Some(self.batch_size)),
            ("--threads", self.threads),
        ] {
            if v == Some(0) {
                return Err(Error::config(flag, "must be at least 1"));
            }
        }
        Ok(())
    }
}

/// What `eval` measured (the JSON of `--json`).
#[derive(Debug, Clone, Serialize)]
pub struct EvalReport {
    /// The checkpoint directory evaluated (a run directory resolved to its latest checkpoint).
    pub checkpoint: PathBuf,
    /// Its optimizer step (`state.json`).
    pub step: usize,
    pub tokens_file: PathBuf,
    pub precision: EvalPrecision,
    /// T: tokens per window (each window reads T + 1).
    pub seq_len: usize,
    /// Windows per micro-batch.
    pub batch_size: usize,
    /// Mean cross-entropy over every predicted token.
    pub loss: f64,
    /// Predicted tokens: windows × T.
    pub tokens: usize,
    pub windows: usize,
    /// Tokens of the trailing partial window, not evaluated.
    pub dropped_tokens: usize,
    /// The gradient file written, if any.
    pub grad: Option<PathBuf>,
    pub threads: usize,
}

/// The report as one line (what `eval` prints without `--json`).
pub fn line(r: &EvalReport) -> String {
    let mut s = format!(
        "loss {:.6} over {} tokens ({} windows of {}, {} dropped) of {}, checkpoint {} (step {}), {}",
        r.loss,
        r.tokens,
        r.windows,
        r.seq_len,
        r.dropped_tokens,
        r.tokens_file.display(),
        r.checkpoint.display(),
        r.step,
        r.precision
    );
    if let Some(g) = &r.grad {
        s.push_str(&format!("; gradient written to {}", g.display()));
    }
    s
}

/// Run `eval` (module docs): the mean loss of the checkpoint over the file's windows and, with
/// `opts.grad`, its gradient written to that file.
pub fn run(opts: &EvalOptions) -> Result<EvalReport> {
    opts.validate()?;
    let threads = opts.threads.unwrap_or_else(crate::config::default_threads);
    let (dir, state) = open_checkpoint(&opts.checkpoint)?;
    let model = &state.model;
    let precision = match opts.precision {
        Some(p) => p,
        None => EvalPrecision::of_dtype(&state.dtype).ok_or_else(|| {
            Error::bad_file(
                dir.join("state.json"),
                "dtype",
                format!(
                    "{:?} is neither f32 nor f64: choose one with --precision",
                    state.dtype
                ),
            )
        })?,
    };
    let t = opts.seq_len.unwrap_or(model.seq_len);
    if t > model.seq_len {
        return Err(Error::config(
            "--seq-len",
            format!(
                "{t} is longer than the model's context of {} tokens ({})",
                model.seq_len,
                dir.join("state.json").display()
            ),
        ));
    }
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .map_err(|e| Error::config("--threads", e.to_string()))?;
    let shard = pool.install(|| open_tokens(&opts.tokens, model.vocab_size))?;
    let stream = shard.tokens();
    let windows = stream.len() / (t + 1);
    let dropped_tokens = stream.len() - windows * (t + 1);
    if windows == 0 {
        return Err(Error::bad_file(
            &opts.tokens,
            "length",
            format!(
                "{} tokens hold no window of T + 1 = {} tokens (T = --seq-len {t})",
                stream.len(),
                t + 1
            ),
        ));
    }
    let table = ParamTable::new(model);
    let mp = dir.join("model.safetensors");
    let w = hf::from_hf(&mp, model, &table, &tensors::read(&mp)?)?.0;
    let job = Job {
        cfg: model,
        w: &w,
        stream,
        t,
        windows,
        batch_size: opts.batch_size,
        grad: opts.grad.is_some(),
    };
    let (loss, grad) = pool.install(|| match precision {
        EvalPrecision::Fp32 => job.run(&CpuBackend::<f32>::new(threads, false)),
        EvalPrecision::Fp64 => job.run(&CpuBackend::<f64>::new(threads, false)),
    })?;
    if let (Some(path), Some(g)) = (&opts.grad, grad) {
        let what = format!(
            "the gradient of the mean cross-entropy over {} tokens ({windows} windows of {t}) of {}, at {}",
            windows * t,
            opts.tokens.display(),
            dir.display()
        );
        write_grad(path, model, &table, &g, precision, what)?;
    }
    Ok(EvalReport {
        checkpoint: dir,
        step: state.step,
        tokens_file: opts.tokens.clone(),
        precision,
        seq_len: t,
        batch_size: opts.batch_size,
        loss,
        tokens: windows * t,
        windows,
        dropped_tokens,
        grad: opts.grad.clone(),
        threads,
    })
}

/// A checkpoint directory (with `state.json`) or a run directory (its latest checkpoint), and its state.
fn open_checkpoint(path: &Path) -> Result<(PathBuf, TrainState)> {
    let dir = if path.join("state.json").is_file() {
        path.to_path_buf()
    } else if let Some((_, dir)) = checkpoint::latest(path)? {
        dir
    } else {
        return Err(Error::bad_file(
            path,
            "checkpoint",
            "expected a checkpoint directory (with state.json) or a run directory with checkpoints/step_N/state.json",
        ));
    };
    let sp = dir.join("state.json");
    let text = std::fs::read_to_string(&sp).map_err(|e| Error::io(&sp, e))?;
    let state: TrainState =
        serde_json::from_str(&text).map_err(|source| Error::Json { path: sp, source })?;
    Ok((dir, state))
}

/// The token file, validated against the vocabulary: flat uint16, or an llm.c shard when it starts with
/// that format's magic and version (read flat, its header would pass as 512 tokens).
fn open_tokens(path: &Path, vocab_size: usize) -> Result<TokenShard> {
    let mut head = [0u8; 8];
    let llmc = std::fs::File::open(path)
        .map_err(|e| Error::io(path, e))?
        .read_exact(&mut head)
        .is_ok()
        && i32::from_le_bytes(head[0..4].try_into().expect("4 bytes")) == LLMC_MAGIC
        && i32::from_le_bytes(head[4..8].try_into().expect("4 bytes")) == LLMC_VERSION
        && std::fs::metadata(path).is_ok_and(|m| m.len() >= LLMC_HEADER_BYTES as u64);
    let format = if llmc {
        DataFormat::LlmC
    } else {
        DataFormat::NanoGpt
    };
    TokenShard::open(path, format, vocab_size)
}

/// One evaluation: the weights, the windows and how to batch them.
struct Job<'a> {
    cfg: &'a ModelConfig,
    /// The weights, standard flat layout.
    w: &'a [f64],
    stream: &'a [u16],
    t: usize,
    windows: usize,
    batch_size: usize,
    /// Run the backward pass too.
    grad: bool,
}

impl Job<'_> {
    /// The mean loss over the windows and, with `grad`, its gradient (flat layout), on `be`.
    fn run<BK: Backend>(&self, be: &BK) -> Result<(f64, Option<Vec<f64>>)> {
        let mut model = Gpt2::new(be, self.cfg, 0)?;
        model.set_params_f64(be, self.w)?;
        model.zero_grads(be)?;
        let t = self.t;
        let n = self.windows * t;
        // every predicted token's loss enters the mean with weight 1/N, in whichever micro-batch it is
        let scale = 1.0 / n as f64;
        let mut sum = 0.0;
        let mut first = 0;
        while first < self.windows {
            let b = self.batch_size.min(self.windows - first);
            let (inputs, targets) = self.micro_batch(first, b);
            let mean = if self.grad {
                model.forward_backward(be, &inputs, &targets, b, t, scale)?
            } else {
                model.loss(be, &inputs, &targets, b, t)?
            };
            sum += mean * (b * t) as f64;
            first += b;
        }
        let grad = if self.grad {
            Some(model.grads_f64(be)?)
        } else {
            None
        };
        Ok((sum / n as f64, grad))
    }

    /// Windows `first .. first + b` as a batch: row i reads `tokens[k(T+1) ..= k(T+1) + T]` for k = first + i,
    /// inputs its first T tokens, targets its last T.
    fn micro_batch(&self, first: usize, b: usize) -> (Vec<u32>, Vec<u32>) {
        let t = self.t;
        let mut inputs = Vec::with_capacity(b * t);
        let mut targets = Vec::with_capacity(b * t);
        for k in first..first + b {
            let window = &self.stream[k * (t + 1)..(k + 1) * (t + 1)];
            inputs.extend(window[..t].iter().map(|&x| u32::from(x)));
            targets.extend(window[1..].iter().map(|&x| u32::from(x)));
        }
        (inputs, targets)
    }
}

/// `values` as little-endian bytes of `T`.
fn to_bytes<T: Scalar>(values: &[f64]) -> Vec<u8> {
    let v: Vec<T> = values.iter().map(|&x| <T as Scalar>::from_f64(x)).collect();
    bytemuck::cast_slice(&v).to_vec()
}

/// The flat gradient `g` in the checkpoint's Hugging Face names and layouts (module docs), in the dtype of
/// `precision`, written through a temporary name and a rename.
fn write_grad(
    path: &Path,
    cfg: &ModelConfig,
    table: &ParamTable,
    g: &[f64],
    precision: EvalPrecision,
    what: String,
) -> Result<()> {
    let encoded: Vec<tensors::Encoded> = hf::to_hf(cfg, table, g)
        .into_iter()
        .filter(|t| cfg.bias || !t.name.ends_with(".bias"))
        .map(|t| {
            let bytes = match precision {
                EvalPrecision::Fp32 => to_bytes::<f32>(&t.values),
                EvalPrecision::Fp64 => to_bytes::<f64>(&t.values),
            };
            (format!("{HF_PREFIX}{}", t.name), t.shape, bytes)
        })
        .collect();
    let dtype = match precision {
        EvalPrecision::Fp32 => f32::DTYPE,
        EvalPrecision::Fp64 => f64::DTYPE,
    };
    // one metadata key: the map is serialised in hash order, so a second key would make the bytes vary
    let meta = HashMap::from([("gradient".to_string(), what)]);
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_else(|| "grad.safetensors".into());
    let tmp = path.with_file_name(format!(".{name}.tmp"));
    tensors::write(&tmp, dtype, &encoded, meta)?;
    std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))
}
