//! `rotadam bench gemm|step|rotation|kernels`.

use super::{choice, threads_help};
use crate::backend::cpu::GatherMode;
use crate::bench::kernels::KernelOptions;
use crate::bench::rotation::RotationOptions;
use crate::bench::StepOptions;
use crate::config::{default_threads, DeviceKind, Scope};
use crate::error::{Error, Result};
use clap::{Args, Subcommand};

#[derive(Args, Debug, Clone)]
pub struct BenchArgs {
    #[command(subcommand)]
    pub what: BenchWhat,
}

#[derive(Subcommand, Debug, Clone)]
pub enum BenchWhat {
    /// GEMM throughput at the model's shapes (the practical peak).
    Gemm(StepArgs),
    /// One full training step (forward + backward + AdamW).
    Step(StepArgs),
    /// Rotation cost: build, rotate + unrotate of the whole model, vs GEMM peak and a step.
    Rotation(RotationArgs),
    /// Each kernel family on a device (the CPU ops without --device cuda): time, GB/s or GFLOP/s,
    /// fraction of a peak measured in the same run.
    Kernels(KernelArgs),
}

#[derive(Args, Debug, Clone)]
pub struct StepArgs {
    /// Model preset.
    #[arg(long, default_value = "124m")]
    pub model: String,
    /// Sequences per batch.
    #[arg(long, default_value_t = 4)]
    pub batch_size: usize,
    /// Sequence length.
    #[arg(long, default_value_t = 64)]
    pub seq_len: usize,
    #[arg(long, help = threads_help())]
    pub threads: Option<usize>,
    /// Timed steps (the median is reported).
    #[arg(long, default_value_t = 5)]
    pub steps: usize,
    /// Untimed warm-up steps.
    #[arg(long, default_value_t = 1)]
    pub warmup: usize,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Also time each optimizer's step alone (adamw, muon) on the model's parameters, as ratios to
    /// AdamW's and to the training step of the same run.
    #[arg(long)]
    pub optimizers: bool,
}

#[derive(Args, Debug, Clone)]
pub struct RotationArgs {
    /// Model preset whose parameters are rotated.
    #[arg(long, default_value = "124m")]
    pub model: String,
    /// Scope of the timed rotation.
    #[arg(long, value_parser = choice::<Scope>(), default_value = "global")]
    pub scope: Scope,
    /// Block size n; give the flag several times for several sizes.
    #[arg(long = "n", default_values_t = [768usize])]
    pub n: Vec<usize>,
    /// Batch size of the training step used as the baseline.
    #[arg(long, default_value_t = 4)]
    pub batch_size: usize,
    /// Sequence length of the training step used as the baseline.
    #[arg(long, default_value_t = 64)]
    pub seq_len: usize,
    #[arg(long, help = threads_help())]
    pub threads: Option<usize>,
    /// Timed rotate + unrotate repetitions (the median is reported).
    #[arg(long, default_value_t = 5)]
    pub reps: usize,
    /// Timed training steps for the baseline (the median is used).
    #[arg(long, default_value_t = 3)]
    pub steps: usize,
    /// How the CPU backend moves the rotated coordinates.
    #[arg(long, value_parser = choice::<GatherMode>(), default_value = "auto")]
    pub gather: GatherMode,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug, Clone)]
pub struct KernelArgs {
    /// Model preset whose shapes are measured.
    #[arg(long, default_value = "124m")]
    pub model: String,
    /// Sequences per batch.
    #[arg(long, default_value_t = 4)]
    pub batch_size: usize,
    /// Sequence length.
    #[arg(long, default_value_t = 64)]
    pub seq_len: usize,
    /// The rotation block n of the rotate + unrotate measurement (the paper's 768).
    #[arg(long, default_value_t = 768)]
    pub rotation_block: usize,
    #[arg(long, help = threads_help())]
    pub threads: Option<usize>,
    /// Timed repetitions per op (the median is reported).
    #[arg(long, default_value_t = 3)]
    pub reps: usize,
    /// `cuda` to measure on the GPU (an error without one); otherwise the CPU ops.
    #[arg(long, value_parser = choice::<DeviceKind>(), default_value = "auto")]
    pub device: DeviceKind,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    pub json: bool,
}

impl StepArgs {
    fn options(&self) -> StepOptions {
        StepOptions {
            model: self.model.clone(),
            batch_size: self.batch_size,
            seq_len: self.seq_len,
            threads: self.threads.unwrap_or_else(default_threads),
            steps: self.steps,
            warmup: self.warmup,
            json: self.json,
            optimizers: self.optimizers,
        }
    }
}

impl RotationArgs {
    fn options(&self) -> RotationOptions {
        RotationOptions {
            model: self.model.clone(),
            scope: self.scope,
            n: self.n.clone(),
            batch_size: self.batch_size,
            seq_len: self.seq_len,
            threads: self.threads.unwrap_or_else(default_threads),
            reps: self.reps,
            steps: self.steps,
            gather: self.gather,
            json: self.json,
        }
    }
}

impl KernelArgs {
    fn options(&self) -> KernelOptions {
        KernelOptions {
            model: self.model.clone(),
            batch_size: self.batch_size,
            seq_len: self.seq_len,
            rotation_block: self.rotation_block,
            threads: self.threads.unwrap_or_else(default_threads),
            reps: self.reps,
            device: self.device,
            json: self.json,
        }
    }
}

/// Runs the benchmark on a pool of the requested threads.
pub fn run(args: &BenchArgs) -> Result<()> {
    let threads = match &args.what {
        BenchWhat::Gemm(o) | BenchWhat::Step(o) => o.threads,
        BenchWhat::Rotation(o) => o.threads,
        BenchWhat::Kernels(o) => o.threads,
    }
    .unwrap_or_else(default_threads);
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .map_err(|e| Error::config("threads", e.to_string()))?;
    pool.install(|| match &args.what {
        BenchWhat::Gemm(o) => crate::bench::run_gemm(&o.options()),
        BenchWhat::Step(o) => crate::bench::run_step(&o.options()),
        BenchWhat::Rotation(o) => crate::bench::rotation::run(&o.options()),
        BenchWhat::Kernels(o) => crate::bench::kernels::run(&o.options()),
    })
}
