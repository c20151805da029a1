//! `rotadam diagnose`.

use super::{choice, threads_help};
use crate::config::RotationKind;
use crate::diagnose::estimators::L11Method;
use crate::diagnose::{
    DiagnoseOptions, RowExpectation, What, DEFAULT_LANCZOS_STEPS, DEFAULT_LANCZOS_TOL,
    DEFAULT_PROBES, DEFAULT_SEED,
};
use clap::Args;
use std::path::PathBuf;

/// `rotadam diagnose` flags.
#[derive(Args, Debug, Clone)]
pub struct DiagnoseArgs {
    /// A run directory (its latest checkpoint is used) or a checkpoint directory (checkpoints/step_N).
    pub path: PathBuf,
    /// What to compute: linf, l11, spectral, hessian-rows, update-cv, all (one or more).
    #[arg(required = true, num_args = 1.., value_parser = choice::<What>())]
    pub what: Vec<What>,
    /// Minibatches of the L∞ gradient bound.
    #[arg(long, default_value_t = 1000)]
    pub batches: usize,
    /// Tokens of the mean loss whose Hessian is probed (l11, spectral, hessian-rows), in fixed train
    /// micro-batches of --batch-size x the model's context, rounded up to whole micro-batches [default:
    /// the run's batch, batch_size x grad_accum x seq_len].
    #[arg(long)]
    pub hvp_tokens: Option<usize>,
    /// Removed: H is now taken over a token budget. Refused with a pointer to --hvp-tokens.
    #[arg(long, hide = true, value_parser = removed_hvp_batches)]
    pub hvp_batches: Option<usize>,
    /// Rows per minibatch (default: the run's batch size).
    #[arg(long)]
    pub batch_size: Option<usize>,
    /// Seed of the diagnostic minibatches, probes, Lanczos start and random directions.
    #[arg(long, default_value_t = DEFAULT_SEED)]
    pub seed: u64,
    /// Cauchy probes (HVPs) of the (1,1)-norm estimator (default: Xie et al.'s 50, App. D.2).
    #[arg(long, default_value_t = DEFAULT_PROBES)]
    pub probes: usize,
    /// Reduction of the Cauchy probes: auto (median if it fits in --max-memory, plus streaming), median,
    /// streaming, both.
    #[arg(long, value_parser = choice::<L11Method>(), default_value = "auto")]
    pub l11_method: L11Method,
    /// Memory the median estimator may use for its K x d values, in GB.
    #[arg(long, default_value_t = 4.0)]
    pub max_memory: f64,
    /// Most Lanczos steps of the spectral norm.
    #[arg(long, default_value_t = DEFAULT_LANCZOS_STEPS)]
    pub lanczos_iters: usize,
    /// Lanczos stops when both extreme Ritz pairs (θ, y) have |Hy - θy| <= tol·|θ|; the report says
    /// whether they did.
    #[arg(long, default_value_t = DEFAULT_LANCZOS_TOL)]
    pub lanczos_tol: f64,
    /// Flat parameter indices of the Hessian rows (comma-separated; default: Maes et al. Table 4's
    /// positions mapped onto the model).
    #[arg(long, value_delimiter = ',')]
    pub rows: Vec<usize>,
    /// Random directions of the row decomposition.
    #[arg(long, default_value_t = 8)]
    pub random_dirs: usize,
    /// Which H the row decomposition <d, H_i> uses (Maes et al. Table 5's expectation over batches).
    #[arg(long, value_parser = choice::<RowExpectation>(), default_value = "budget")]
    pub row_expectation: RowExpectation,
    /// Probe another basis [default: the run's rotation].
    #[arg(long, value_parser = choice::<RotationKind>())]
    pub rotation: Option<RotationKind>,
    /// Block size n of an overriding rotation (default: the run's).
    #[arg(long)]
    pub rotation_block: Option<usize>,
    /// Seed of an overriding rotation (default: the run's).
    #[arg(long)]
    pub rotation_seed: Option<u64>,
    /// Token data (default: the run's `data`).
    #[arg(long)]
    pub data: Option<String>,
    /// Output directory for the JSON and the plots (default: <run>/diagnostics).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Print the JSON report on stdout instead of the table.
    #[arg(long)]
    pub json: bool,
    #[arg(long, help = threads_help())]
    pub threads: Option<usize>,
    /// No progress lines on stderr.
    #[arg(long)]
    pub quiet: bool,
    /// PATH is a sweep directory: diagnose every run and add a table and bar charts to its report.md
    /// (linf, l11, spectral, update-cv).
    #[arg(long)]
    pub sweep: bool,
}

impl DiagnoseArgs {
    /// The library's options (field for field; `--json` and `--sweep` choose what the command prints).
    pub fn options(&self) -> DiagnoseOptions {
        DiagnoseOptions {
            path: self.path.clone(),
            what: self.what.clone(),
            batches: self.batches,
            hvp_tokens: self.hvp_tokens,
            batch_size: self.batch_size,
            seed: self.seed,
            probes: self.probes,
            l11_method: self.l11_method,
            max_memory: self.max_memory,
            lanczos_iters: self.lanczos_iters,
            lanczos_tol: self.lanczos_tol,
            rows: self.rows.clone(),
            random_dirs: self.random_dirs,
            row_expectation: self.row_expectation,
            rotation: self.rotation,
            rotation_block: self.rotation_block,
            rotation_seed: self.rotation_seed,
            data: self.data.clone(),
            out: self.out.clone(),
            threads: self.threads,
            quiet: self.quiet,
        }
    }
}

/// `--hvp-batches` is refused: H used to be the Hessian over that many micro-batches; it is now taken over
/// a token budget (`docs/diagnostics.md`).
fn removed_hvp_batches(v: &str) -> Result<usize, String> {
    Err(format!(
        "--hvp-batches was removed: H is the Hessian of the mean loss over a token budget; for {v} \
         micro-batches use --hvp-tokens {v}xBxT (B = --batch-size or the run's, T = the model's context); \
         the default is the run's batch, B x grad_accum x T"
    ))
}
