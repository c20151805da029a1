//! `rotadam diagnose <run or checkpoint> <what>…`: the rotation-dependent assumptions of Maes et al. (§4,
//! App. D.5) and Xie et al. (§3–4, App. D.2), measured at a checkpoint in the rotated basis of its run
//! (`docs/diagnostics.md`).
//!
//! - `linf`: C̃ = max over K minibatches of ‖R∇f_B(w)‖∞ (Maes et al. Alg. 2; `--batches K`, default 1000).
//! - `l11`: ‖H‖₍₁,₁₎ by Cauchy probes, median and/or streaming ([`estimators::l11`]); also ‖H‖₍₁,₁₎/d.
//!   `--probes` defaults to [`DEFAULT_PROBES`] = 50, the number of Cauchy vectors of Xie et al.'s GPT-2
//!   measurements (App. D.2, Alg. 4), whose method Maes et al. reuse for their Table 3 (§4.3).
//! - `spectral`: λ_max, λ_min and ‖H‖₂ by Lanczos ([`estimators::lanczos`]: at most `--lanczos-iters`
//!   steps, stopped when both extreme Ritz pairs have ‖Hy − θy‖ ≤ `--lanczos-tol`·|θ|; the residuals,
//!   the steps used and whether it converged are reported) and d·‖H‖₂, which Xie et al.
//!   compare with ‖H‖₍₁,₁₎: they observe Adam optimizing faster than AdaSGD when ‖H‖₍₁,₁₎/d < ‖H‖₂, as
//!   their bounds suggest (§3–4, their Table 4). It is a comparison, not a bound: ‖Hᵢ‖₁ ≤ √d·‖Hᵢ‖₂ only gives ‖H‖₍₁,₁₎ ≤ d^{3/2}·‖H‖₂
//!   (a ±1 Hadamard matrix reaches it), while a diagonal H gives ‖H‖₍₁,₁₎ = tr|H| ≤ d·‖H‖₂.
//! - `hessian-rows`: rows Hᵢ by one-hot HVPs at the positions of Maes et al. Table 4 ([`rows`]) or
//!   `--rows`, the neuron / layer / non-layer decomposition of ⟨d, Hᵢ⟩ for the last update and for random
//!   directions (Tables 2 and 5), a plot per row (Fig. 7 style) and the row itself as safetensors in the
//!   checkpoint's tensor names and shapes. Table 5's "expected gradient contribution" is an expectation
//!   over batches: `--row-expectation budget` (default) takes ⟨d, Hᵢ⟩ with H over the token budget (one
//!   fixed batch, the H of `l11` and `spectral`); `--row-expectation batches` averages the per-batch
//!   ⟨d, H_{B,i}⟩ over the `--batches` minibatches of the L∞ bound and reports each batch's value.
//! - `update-cv`: the coefficient of variation of the singular values of Adam's update per 2-D weight
//!   ([`update_cv`](crate::optim::update_cv)).
//!
//! **What is held fixed.** H is the Hessian of the mean loss over a token budget, `--hvp-tokens` (default:
//! the run's effective batch B·accum·T, the loss of one optimizer step: Xie et al.'s "fixed batch", App.
//! D.2, and the loss Maes et al. optimize, §2.1), cut into k = ⌈tokens / (B·T)⌉ micro-batches of B rows of
//! T tokens; every HVP is the mean of the k micro-batch HVPs ([`hvp`]), the same micro-batches for every
//! probe. The budget (tokens asked and used, k, B, T) is in the JSON (`settings.hvp_budget`) and the
//! table. The L∞ bound uses `--batches` minibatches. Both lists come from `fixed_batches` on the TRAIN
//! split with `--seed` (default [`DEFAULT_SEED`]) — H's micro-batches are the first k of that list — so
//! they are the same for every checkpoint and every rotation, and never the val windows the training loop
//! evaluates on (val split, `EVAL_SEED`). B: the run's batch size unless `--batch-size`; T: the model's
//! context. `--hvp-batches` (the number of micro-batches of H before the budget) is refused by the command
//! line with a pointer to `--hvp-tokens` (`docs/diagnostics.md`).
//!
//! **The basis** is the run's rotation (`state.json`; for `svd`, the factors in `rotation.safetensors`);
//! `--rotation KIND` (with `--rotation-block`, `--rotation-seed`) probes another one. Coordinates are
//! written in place ([`hvp::InPlaceBasis`]), so row indices keep their tensor. Everything is computed in
//! f64 on the CPU from the checkpoint's weights (`hvp` for the HVP and its step).
//!
//! **The update direction** of `hessian-rows` is the checkpoint's last step d = w_t − w_{t−1}, rebuilt
//! exactly from the checkpoint (no second checkpoint needed): AdamW's step was
//! w_t = w_{t−1}(1 − ηλ) − η·Rᵀ(m̂_t/(√v̂_t+ε)) with m_t, v_t the moments stored at step t and η the
//! step's learning rate (from `metrics.jsonl`, else the schedule), so w_{t−1} = (w_t + ηu)/(1 − ηλ) per
//! tensor and d follows. Other optimizers get only the random directions. Random directions are Gaussian,
//! scaled to ‖d‖ (to 1 without an update direction), the same for every row.
//!
//! Output: a table on stdout (or the JSON with `--json`); the JSON is also written, atomically, to
//! `<out>/diagnose_step<N>_<basis>.json`, row plots to `<out>/row<i>_step<N>_<basis>.png` and the rows
//! to `<out>/row<i>_step<N>_<basis>.safetensors` (layout in `docs/diagnostics.md`) (`--out`, default
//! `<run>/diagnostics`); `<basis>` is `none`, `svd`, `<scope>-n<block>-s<seed>` or
//! `kron-k<stages>-s<seed>`.

pub mod estimators;
pub mod hvp;
mod report;
pub mod rows;
mod target;

pub use report::{
    table, HvpBudget, L11Section, LinfReport, Report, RowBatches, RowMass, RowReport, RowsReport,
    Settings, SpectralReport, UpdateCvReport,
};
pub use target::{
    last_update, load_weights, muon_next_direction, open_target, CheckpointAdam, Target,
};

use crate::config::{OptimizerKind, RotationConfig, RotationKind, Scope};
use crate::data::loader::{fixed_batches, Batch};
use crate::data::shard::Dataset;
use crate::error::{Error, Result};
use crate::model::ParamTable;
use crate::optim::update_cv;
use estimators::{L11Method, LanczosOptions};
use hvp::{Gpt2Hvp, InPlaceBasis};
use std::path::PathBuf;
use std::time::Instant;
use target::build_basis;

/// Default `--seed` of the diagnostic minibatches.
pub const DEFAULT_SEED: u64 = 1000;
/// Default `--probes`: Xie et al.'s number of Cauchy vectors for GPT-2 (App. D.2, Alg. 4), also the
/// estimator behind Maes et al.'s Table 3 (§4.3). Each coordinate's estimate then spreads by
/// π/(2√50) ≈ 22% ([`estimators::l11`]); the sum over d rows much less when the rows' errors are
/// independent.
pub const DEFAULT_PROBES: usize = 50;
/// Default `--lanczos-iters`, the most Lanczos steps.
pub const DEFAULT_LANCZOS_STEPS: usize = 50;
/// Default `--lanczos-tol`: a Ritz pair is converged when ‖Hy − θy‖ ≤ 1e-3·|θ|, which puts an eigenvalue
/// of H within 0.1% of θ (|λ − θ| ≤ ‖Hy − θy‖ for a unit y).
pub const DEFAULT_LANCZOS_TOL: f64 = 1e-3;
/// Stream id ([`Rng::derive`]) of the random directions of `hessian-rows`.
pub const STREAM_RANDOM_DIRS: u64 = 0xD1A6_0003;

/// What `diagnose` computes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum What {
    Linf,
    L11,
    Spectral,
    HessianRows,
    UpdateCv,
    All,
}

impl crate::config::Choice for What {
    const WHAT: &'static str = "diagnostic";
    const VALUES: &'static [(Self, &'static str, &'static str)] = &[
        (
            What::Linf,
            "linf",
            "the L∞ gradient bound C̃ = max over minibatches of ‖R∇f_B‖∞ (Maes et al. Alg. 2)",
        ),
        (
            What::L11,
            "l11",
            "‖H‖₍₁,₁₎ by Cauchy probes (Xie et al. App. D.2)",
        ),
        (
            What::Spectral,
            "spectral",
            "λ_max, λ_min and ‖H‖₂ by Lanczos, and d·‖H‖₂",
        ),
        (
            What::HessianRows,
            "hessian-rows",
            "Hessian rows and their neuron / layer / non-layer decomposition (Maes et al. Tables 2, 4, 5)",
        ),
        (
            What::UpdateCv,
            "update-cv",
            "the coefficient of variation of the singular values of Adam's update per 2-D weight (poster)",
        ),
        (What::All, "all", "everything above"),
    ];
}
crate::config::choice_impls!(What);

/// Which H the contributions ⟨d, Hᵢ⟩ of `hessian-rows` use (Maes et al. Table 5's expectation).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RowExpectation {
    /// H over the token budget (`--hvp-tokens`), the H of `l11` and `spectral`: one fixed batch.
    Budget,
    /// The mean over the `--batches` minibatches of the per-batch ⟨d, H_{B,i}⟩ (one row per batch).
    Batches,
}

impl crate::config::Choice for RowExpectation {
    const WHAT: &'static str = "row-expectation";
    const VALUES: &'static [(Self, &'static str, &'static str)] = &[
        (
            RowExpectation::Budget,
            "budget",
            "⟨d, H_i⟩ with H the Hessian of the mean loss over --hvp-tokens (the H of l11 and spectral)",
        ),
        (
            RowExpectation::Batches,
            "batches",
            "the mean over the --batches minibatches of each batch's ⟨d, H_B,i⟩ (Maes et al. Table 5's expectation; one HVP per batch and row)",
        ),
    ];
}
crate::config::choice_impls!(RowExpectation);

/// What to diagnose and how (the command line's `--help` documents each option).
#[derive(Debug, Clone)]
pub struct DiagnoseOptions {
    /// A run directory (its latest checkpoint is used) or a checkpoint directory (checkpoints/step_N).
    pub path: PathBuf,
    /// What to compute: linf, l11, spectral, hessian-rows, update-cv, all (one or more).
    pub what: Vec<What>,
    /// Minibatches of the L∞ gradient bound.
    pub batches: usize,
    /// Tokens of the mean loss whose Hessian is probed (l11, spectral, hessian-rows), in micro-batches of
    /// batch_size x seq_len (rounded up to whole micro-batches) [default: the run's batch_size x
    /// grad_accum x seq_len].
    pub hvp_tokens: Option<usize>,
    /// Rows per minibatch (default: the run's batch size).
    pub batch_size: Option<usize>,
    /// Seed of the diagnostic minibatches, probes, Lanczos start and random directions.
    pub seed: u64,
    /// Cauchy probes (HVPs) of the (1,1)-norm estimator.
    pub probes: usize,
    /// Reduction of the Cauchy probes: auto (median if it fits in --max-memory, plus streaming), median,
    /// streaming, both.
    pub l11_method: L11Method,
    /// Memory the median estimator may use for its K x d values, in GB.
    pub max_memory: f64,
    /// Most Lanczos steps of the spectral norm.
    pub lanczos_iters: usize,
    /// Lanczos stops when both extreme Ritz pairs have |Hy - θy| <= tol·|θ|.
    pub lanczos_tol: f64,
    /// Flat parameter indices of the Hessian rows (comma-separated; default: Maes et al. Table 4's
    /// positions mapped onto the model).
    pub rows: Vec<usize>,
    /// Random directions of the row decomposition.
    pub random_dirs: usize,
    /// The H of the row decomposition: budget (H over --hvp-tokens) or batches (the mean over --batches
    /// of each batch's contribution).
    pub row_expectation: RowExpectation,
    /// Probe another basis: none, global, layer, output, input, svd, kron (default: the run's rotation).
    pub rotation: Option<RotationKind>,
    /// Block size n of an overriding rotation (default: the run's).
    pub rotation_block: Option<usize>,
    /// Seed of an overriding rotation (default: the run's).
    pub rotation_seed: Option<u64>,
    /// Token data (default: the run's `data`).
    pub data: Option<String>,
    /// Output directory for the JSON and the plots (default: <run>/diagnostics).
    pub out: Option<PathBuf>,
    /// Worker threads (default: all cores).
    pub threads: Option<usize>,
    /// No progress lines on stderr.
    pub quiet: bool,
}

impl DiagnoseOptions {
    /// Defaults for `path` and `what` (what the CLI gives when no flag is set).
    pub fn new(path: impl Into<PathBuf>, what: Vec<What>) -> Self {
        DiagnoseOptions {
            path: path.into(),
            what,
            batches: 1000,
            hvp_tokens: None,
            batch_size: None,
            seed: DEFAULT_SEED,
            probes: DEFAULT_PROBES,
            l11_method: L11Method::Auto,
            max_memory: 4.0,
            lanczos_iters: DEFAULT_LANCZOS_STEPS,
            lanczos_tol: DEFAULT_LANCZOS_TOL,
            rows: Vec::new(),
            random_dirs: 8,
            row_expectation: RowExpectation::Budget,
            rotation: None,
            rotation_block: None,
            rotation_seed: None,
            data: None,
            out: None,
            threads: None,
            quiet: true,
        }
    }

    fn wants(&self, w: What) -> bool {
        self.what.contains(&w) || self.what.contains(&What::All)
    }

    fn validate(&self) -> Result<()> {
        for (field, v) in [
            ("--batches", self.batches),
            ("--hvp-tokens", self.hvp_tokens.unwrap_or(1)),
            ("--probes", self.probes),
            ("--lanczos-iters", self.lanczos_iters),
        ] {
            if v == 0 {
                return Err(Error::config(field, "must be at least 1"));
            }
        }
        if self.batch_size == Some(0) || self.rotation_block == Some(0) || self.threads == Some(0) {
            return Err(Error::config(
                "--batch-size/--rotation-block/--threads",
                "must be at least 1",
            ));
        }
        if !(self.lanczos_tol.is_finite() && self.lanczos_tol >= 0.0) {
            return Err(Error::config(
                "--lanczos-tol",
                format!("{} must be a finite number ≥ 0", self.lanczos_tol),
            ));
        }
        if !(self.max_memory.is_finite() && self.max_memory >= 0.0) {
            return Err(Error::config(
                "--max-memory",
                format!("{} must be a finite number of GB ≥ 0", self.max_memory),
            ));
        }
        Ok(())
    }
}

/// Run `diagnose`: compute what `args` asks, write the JSON (and plots) to the output directory, and
/// return the report ([`table`] renders it).
pub fn run(args: &DiagnoseOptions) -> Result<Report> {
    args.validate()?;
    let threads = args.threads.unwrap_or_else(crate::config::default_threads);
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .map_err(|e| Error::config("--threads", e.to_string()))?;
    let target = open_target(&args.path)?;
    pool.install(|| run_on(args, &target, threads))
}

fn say(args: &DiagnoseOptions, msg: impl AsRef<str>) {
    if !args.quiet {
        eprintln!("{}", msg.as_ref());
    }
}

/// The token budget of H for `args` on the checkpoint `t`: `--hvp-tokens` (else the run's effective batch
/// B·accum·T) in micro-batches of `--batch-size` (else the run's B) rows of the model's T tokens, rounded
/// up to whole micro-batches.
pub fn hvp_budget(args: &DiagnoseOptions, t: &Target) -> HvpBudget {
    let tr = &t.config.train;
    let seq_len = t.state.model.seq_len;
    let batch_size = args.batch_size.unwrap_or(tr.batch_size);
    let (requested_tokens, source) = match args.hvp_tokens {
        Some(n) => (n, "--hvp-tokens".to_string()),
        None => (
            tr.batch_size * tr.grad_accum * seq_len,
            format!(
                "the run's batch: batch_size x grad_accum x seq_len = {} x {} x {seq_len}",
                tr.batch_size, tr.grad_accum
            ),
        ),
    };
    let per_batch = batch_size * seq_len;
    let micro_batches = requested_tokens.div_ceil(per_batch).max(1);
    HvpBudget {
        tokens: micro_batches * per_batch,
        requested_tokens,
        source,
        micro_batches,
        batch_size,
        seq_len,
    }
}

/// The rotation the diagnostics use: the run's, with the overrides.
fn diag_rotation(args: &DiagnoseOptions, run: &RotationConfig) -> RotationConfig {
    let mut rc = run.clone();
    if let Some(k) = args.rotation {
        rc.kind = k;
    }
    if let Some(n) = args.rotation_block {
        rc.block = n;
    }
    if let Some(s) = args.rotation_seed {
        rc.seed = s;
    }
    rc
}

/// What the estimators share: the options, the checkpoint and its table, where the outputs go, and, for
/// the gradient and Hessian diagnostics, the loss over the fixed batches in the diagnosed basis.
struct Context<'a> {
    args: &'a DiagnoseOptions,
    t: &'a Target,
    table: ParamTable,
    out_dir: PathBuf,
    /// `step<N>_<basis>`, the stem of the output files.
    tag: String,
    probe: Option<Probe>,
    /// The checkpoint's AdamW, opened at most once (the last update of hessian-rows, update-cv).
    adam: Option<Result<CheckpointAdam>>,
}

/// The model's loss where the diagnostics probe it.
struct Probe {
    f: Gpt2Hvp,
    /// The weights, standard basis.
    w: Vec<f64>,
    /// The L∞ bound's minibatches (also those of `--row-expectation batches`; H's micro-batches are the
    /// first `hvp_budget.micro_batches` of the same list).
    batches: Vec<Batch>,
}

impl Context<'_> {
    fn probe(&mut self) -> &mut Probe {
        self.probe
            .as_mut()
            .expect("the loss is built for every estimator that needs it")
    }

    /// The checkpoint's AdamW, opened on first use.
    fn adam(&mut self) -> &Result<CheckpointAdam> {
        let (t, table) = (self.t, &self.table);
        self.adam
            .get_or_insert_with(|| CheckpointAdam::open(t, table))
    }
}

/// An estimator: fills its section of the report.
type Estimator = fn(&mut Context<'_>, &mut Report) -> Result<()>;

/// The diagnostics in the order they run: what, whether it probes the model's loss, how.
const ESTIMATORS: [(What, bool, Estimator); 5] = [
    (What::Linf, true, linf),
    (What::L11, true, l11),
    (What::Spectral, true, spectral),
    (What::HessianRows, true, hessian_rows),
    (What::UpdateCv, false, update_cv),
];

fn run_on(args: &DiagnoseOptions, t: &Target, threads: usize) -> Result<Report> {
    let model = t.state.model.clone();
    let table = ParamTable::new(&model);
    let rc = diag_rotation(args, &t.state.rotation);
    let out_dir = args
        .out
        .clone()
        .unwrap_or_else(|| t.run_dir.join("diagnostics"));
    std::fs::create_dir_all(&out_dir).map_err(|e| Error::io(&out_dir, e))?;
    let tag = match rc.kind {
        k @ (RotationKind::Svd | RotationKind::Soap | RotationKind::Scope(Scope::None)) => {
            format!("step{}_{k}", t.state.step)
        }
        RotationKind::Kron => format!("step{}_kron-k{}-s{}", t.state.step, rc.kron_stages, rc.seed),
        k @ RotationKind::Scope(_) => {
            format!("step{}_{k}-n{}-s{}", t.state.step, rc.block, rc.seed)
        }
    };
    let budget = hvp_budget(args, t);
    let batch_size = budget.batch_size;
    let data_name = args.data.clone().unwrap_or_else(|| t.config.data.clone());
    say(
        args,
        format!(
            "diagnose: checkpoint {} (step {}), basis {} (run: {})",
            t.dir.display(),
            t.state.step,
            rc.kind,
            t.state.rotation.kind
        ),
    );
    let mut report = Report {
        settings: Settings {
            what: args.what.clone(),
            checkpoint: t.dir.clone(),
            step: t.state.step,
            model: model.clone(),
            num_params: table.total,
            optimizer: t.state.optimizer.name().into(),
            run_rotation: t.state.rotation.clone(),
            rotation: rc.clone(),
            basis: String::new(),
            data: data_name.clone(),
            vocabulary: None,
            batches: "fixed_batches(train split, batch_size, seq_len, count, seed): H's micro-batches are the first hvp_budget.micro_batches, the L∞ bound's (and --row-expectation batches') the first linf_batches".into(),
            batch_size,
            seq_len: model.seq_len,
            seed: args.seed,
            linf_batches: args.batches,
            hvp_budget: budget.clone(),
            probes: args.probes,
            l11_method: args.l11_method,
            max_memory_gb: args.max_memory,
            lanczos_iters: args.lanczos_iters,
            lanczos_tol: args.lanczos_tol,
            random_dirs: args.random_dirs,
            row_expectation: args.row_expectation,
            hvp: Gpt2Hvp::<hvp::Cpu64>::method(),
            hvp_step: 0.0,
            loss: None,
            threads,
        },
        linf: None,
        l11: None,
        spectral: None,
        hessian_rows: None,
        update_cv: None,
        json_path: out_dir.join(format!("diagnose_{tag}.json")),
    };

    // Muon's update CV needs a gradient (its direction is the next step's: `target::muon_next_direction`)
    let muon_cv = t.state.optimizer == OptimizerKind::Muon && args.wants(What::UpdateCv);
    let needs_loss = muon_cv
        || ESTIMATORS
            .iter()
            .any(|(w, loss, _)| *loss && args.wants(*w));
    let probe = if needs_loss {
        let data_dir = crate::data::resolve(&data_name, args.quiet)?;
        let data = Dataset::open(&data_dir, model.vocab_size, model.seq_len)?;
        report.settings.vocabulary = Some(crate::run::trainer::vocab_report(&model, &data));
        let count = args.batches.max(budget.micro_batches);
        let all: Vec<Batch> =
            fixed_batches(&data.train, batch_size, model.seq_len, count, args.seed);
        let w = load_weights(t, &table)?;
        let basis = InPlaceBasis::new(build_basis(t, &rc, &table)?);
        let mut f = Gpt2Hvp::new(
            &model,
            w.clone(),
            all[..budget.micro_batches].to_vec(),
            basis,
            threads,
        )?;
        let s = &mut report.settings;
        s.basis = f.describe_basis();
        s.hvp_step = f.step_length();
        s.loss = Some(f.gradient()?.0);
        Some(Probe {
            f,
            w,
            batches: all[..args.batches].to_vec(),
        })
    } else {
        None
    };
    let mut cx = Context {
        args,
        t,
        table,
        out_dir,
        tag,
        probe,
        adam: None,
    };
    for (what, _, estimate) in ESTIMATORS {
        if args.wants(what) {
            estimate(&mut cx, &mut report)?;
        }
    }
    let json = serde_json::to_vec_pretty(&report).map_err(|source| Error::Json {
        path: report.json_path.clone(),
        source,
    })?;
    crate::files::write_atomic(&report.json_path, &json)?;
    say(args, format!("wrote {}", report.json_path.display()));
    Ok(report)
}

/// C̃ = max over the minibatches of ‖R∇f_B(w)‖∞, its mean and where the max is.
fn linf(cx: &mut Context<'_>, report: &mut Report) -> Result<()> {
    let t0 = Instant::now();
    let args = cx.args;
    let Probe { f, batches, .. } = cx.probe();
    let (mut best, mut arg, mut sum) = (0.0f64, 0, 0.0);
    for (k, b) in batches.iter().enumerate() {
        let (_, g) = f.batch_gradient(b)?;
        let n = estimators::linf(&g);
        sum += n;
        if n > best {
            best = n;
            arg = k;
        }
        if (k + 1) % 100 == 0 {
            say(args, format!("linf: {} / {} batches", k + 1, args.batches));
        }
    }
    report.linf = Some(LinfReport {
        batches: args.batches,
        bound: best,
        mean: sum / args.batches as f64,
        argmax: arg,
        seconds: t0.elapsed().as_secs_f64(),
    });
    Ok(())
}

/// ‖H‖₍₁,₁₎ by Cauchy probes.
fn l11(cx: &mut Context<'_>, report: &mut Report) -> Result<()> {
    let t0 = Instant::now();
    let args = cx.args;
    let f = &mut cx.probe().f;
    let d = f.dim();
    let max_bytes = (args.max_memory * 1e9) as u64;
    say(
        args,
        format!("l11: {} Cauchy probes on d = {d}", args.probes),
    );
    let r = estimators::l11(
        |v, o| f.hvp(v, o),
        d,
        args.probes,
        args.seed,
        args.l11_method,
        max_bytes,
    )?;
    if r.median.is_none() && args.l11_method == L11Method::Auto {
        say(
            args,
            format!(
                "l11: the median needs {:.2} GB > --max-memory {} GB: streaming estimator only",
                r.median_bytes as f64 / 1e9,
                args.max_memory
            ),
        );
    }
    report.l11 = Some(L11Section {
        estimate: r,
        seconds: t0.elapsed().as_secs_f64(),
    });
    Ok(())
}

/// λ_max, λ_min and ‖H‖₂ by Lanczos; d·‖H‖₂ and, when l11 ran, ‖H‖₍₁,₁₎ / (d·‖H‖₂).
fn spectral(cx: &mut Context<'_>, report: &mut Report) -> Result<()> {
    let t0 = Instant::now();
    let args = cx.args;
    let f = &mut cx.probe().f;
    let d = f.dim();
    say(
        args,
        format!(
            "spectral: at most {} Lanczos steps, tolerance {:e}",
            args.lanczos_iters, args.lanczos_tol
        ),
    );
    let opts = LanczosOptions {
        max_steps: args.lanczos_iters,
        tol: args.lanczos_tol,
    };
    let lz = estimators::lanczos(|v, o| f.hvp(v, o), d, opts, args.seed)?;
    if !lz.converged {
        say(
            args,
            format!(
                "spectral: NOT converged after {} steps: relative residuals {:.2e} (lambda_max), {:.2e} (lambda_min) > {:e}",
                lz.iterations, lz.max_pair.relative_residual, lz.min_pair.relative_residual, lz.tol
            ),
        );
    }
    let dh = d as f64 * lz.spectral_norm;
    report.spectral = Some(SpectralReport {
        d_times_spectral: dh,
        l11_over_d_spectral: report.l11.as_ref().map(|r| r.estimate.best().norm / dh),
        lanczos: lz,
        seconds: t0.elapsed().as_secs_f64(),
    });
    Ok(())
}

/// Hessian rows and their decomposition ([`rows::measure`]).
fn hessian_rows(cx: &mut Context<'_>, report: &mut Report) -> Result<()> {
    let t0 = Instant::now();
    let (args, t) = (cx.args, cx.t);
    cx.adam();
    let Context {
        table,
        out_dir,
        tag,
        probe,
        adam,
        ..
    } = cx;
    let Probe { f, w, batches } = probe.as_mut().expect("hessian-rows probes the loss");
    let last_update = match adam.as_ref().expect("opened above") {
        Ok(a) => Ok(a.last_update(t, table, w)),
        Err(e) => Err(e.to_string()),
    };
    let mut r = rows::measure(args, t, table, last_update, f, batches, out_dir, tag)?;
    r.seconds = t0.elapsed().as_secs_f64();
    report.hessian_rows = Some(r);
    Ok(())
}

/// The update CV of Adam's direction at the checkpoint; with `all`, skipped (said) for runs without
/// AdamW's moments.
fn update_cv(cx: &mut Context<'_>, report: &mut Report) -> Result<()> {
    let (args, t) = (cx.args, cx.t);
    let explicit = args.what.contains(&What::UpdateCv);
    if t.state.optimizer == OptimizerKind::Muon {
        let t0 = Instant::now();
        let table = cx.table.clone();
        let probe = cx.probe();
        let batches = probe.f.batches().to_vec();
        let (_, g) = probe.f.loss_grad_at(&probe.w, &batches)?;
        let direction = target::muon_next_direction(t, &table, &probe.w, &g)?;
        let weights = update_cv::per_weight(&table, &direction)?;
        report.update_cv = Some(UpdateCvReport {
            summary: update_cv::summarize(&weights),
            weights,
            source: format!(
                "muon: the direction of the step after the checkpoint, from its momentum and the mean \
                 gradient of H's {} micro-batches",
                batches.len()
            ),
            seconds: t0.elapsed().as_secs_f64(),
        });
        return Ok(());
    }
    if !explicit && t.state.optimizer != OptimizerKind::Adamw {
        say(
            args,
            format!(
                "update-cv: skipped (needs AdamW; the run's optimizer is {})",
                t.state.optimizer.name()
            ),
        );
        return Ok(());
    }
    let t0 = Instant::now();
    // the last estimator: take the optimizer hessian-rows opened (its error is this one's), or open it
    let adam = match cx.adam.take() {
        Some(opened) => opened?,
        None => CheckpointAdam::open(t, &cx.table)?,
    };
    let weights = update_cv::per_weight(&cx.table, &adam.direction)?;
    report.update_cv = Some(UpdateCvReport {
        summary: update_cv::summarize(&weights),
        weights,
        source: "adamw: Rᵀ(m̂/(√v̂ + ε)) from the checkpoint's moments (its last step's direction)"
            .into(),
        seconds: t0.elapsed().as_secs_f64(),
    });
    Ok(())
}
