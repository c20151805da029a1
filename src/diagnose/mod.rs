//! `rotadam diagnose <run or checkpoint> <what>…`: the rotation-dependent assumptions of Maes et al. (§4,
//! App. D.5) and Xie et al. (§3–4, App. D.2), measured at a checkpoint in the rotated basis of its run
//! (MISSION.md "Diagnostics").
//!
//! - `linf`: C̃ = max over K minibatches of ‖R∇f_B(w)‖∞ (Maes et al. Alg. 2; `--batches K`, default 1000).
//! - `l11`: ‖H‖₍₁,₁₎ by Cauchy probes, median and/or streaming ([`estimators::l11`]); also ‖H‖₍₁,₁₎/d.
//! - `spectral`: λ_max, λ_min and ‖H‖₂ by Lanczos ([`estimators::lanczos`]) and d·‖H‖₂, which Xie et al.
//!   compare with ‖H‖₍₁,₁₎: they observe Adam optimizing faster than AdaSGD when ‖H‖₍₁,₁₎/d < ‖H‖₂, as
//!   their bounds suggest (§3–4, their Table 4). It is a comparison, not a bound: ‖Hᵢ‖₁ ≤ √d·‖Hᵢ‖₂ only gives ‖H‖₍₁,₁₎ ≤ d^{3/2}·‖H‖₂
//!   (a ±1 Hadamard matrix reaches it), while a diagonal H gives ‖H‖₍₁,₁₎ = tr|H| ≤ d·‖H‖₂.
//! - `hessian-rows`: rows Hᵢ by one-hot HVPs at the positions of Maes et al. Table 4 ([`rows`]) or
//!   `--rows`, the neuron / layer / non-layer decomposition of ⟨d, Hᵢ⟩ for the last update and for random
//!   directions (Tables 2 and 5), and a plot per row (Fig. 7 style).
//! - `update-cv`: the coefficient of variation of the singular values of Adam's update per 2-D weight
//!   ([`update_cv`]).
//!
//! **What is held fixed.** H is the Hessian of the mean loss over `--hvp-batches` minibatches (default 1,
//! Xie et al.'s "fixed batch"); the L∞ bound uses `--batches` minibatches. Both lists come from
//! `fixed_batches` on the TRAIN split with `--seed` (default [`DEFAULT_SEED`]) — the HVP batches are the
//! first `--hvp-batches` of that list — so they are the same for every checkpoint and every rotation, and
//! never the val windows the training loop evaluates on (val split, `EVAL_SEED`). Batch size: the run's
//! unless `--batch-size`; length: the model's context.
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
//! `<out>/diagnose_step<N>_<basis>.json`, and row plots to `<out>/row<i>_step<N>_<basis>.png`
//! (`--out`, default `<run>/diagnostics`); `<basis>` is `none`, `svd`, `<scope>-n<block>-s<seed>` or
//! `kron-k<stages>-s<seed>`.

pub mod estimators;
pub mod hvp;
pub mod rows;

use crate::config::{ModelConfig, OptimizerKind, RotationConfig, RotationKind, RunConfig, Scope};
use crate::data::loader::{fixed_batches, Batch};
use crate::data::shard::Dataset;
use crate::error::{Error, Result};
use crate::model::ParamTable;
use crate::optim::{update_cv, Optimizer};
use crate::rng::Rng;
use crate::rotation::basis::Basis;
use crate::run::checkpoint::{self, TrainState};
use estimators::{Contribution, L11Method, L11Report, LanczosResult};
use hvp::{Cpu64, Gpt2Hvp, InPlaceBasis};
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Default `--seed` of the diagnostic minibatches.
pub const DEFAULT_SEED: u64 = 1000;
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

/// What to diagnose and how (the command line's `--help` documents each option).
#[derive(Debug, Clone)]
pub struct DiagnoseOptions {
    /// A run directory (its latest checkpoint is used) or a checkpoint directory (checkpoints/step_N).
    pub path: PathBuf,
    /// What to compute: linf, l11, spectral, hessian-rows, update-cv, all (one or more).
    pub what: Vec<What>,
    /// Minibatches of the L∞ gradient bound.
    pub batches: usize,
    /// Minibatches whose mean loss's Hessian is probed (l11, spectral, hessian-rows).
    pub hvp_batches: usize,
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
    /// Lanczos iterations of the spectral norm.
    pub lanczos_iters: usize,
    /// Flat parameter indices of the Hessian rows (comma-separated; default: Maes et al. Table 4's
    /// positions mapped onto the model).
    pub rows: Vec<usize>,
    /// Random directions of the row decomposition.
    pub random_dirs: usize,
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
            hvp_batches: 1,
            batch_size: None,
            seed: DEFAULT_SEED,
            probes: 1000,
            l11_method: L11Method::Auto,
            max_memory: 4.0,
            lanczos_iters: 50,
            rows: Vec::new(),
            random_dirs: 8,
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
            ("--hvp-batches", self.hvp_batches),
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
        if !(self.max_memory.is_finite() && self.max_memory >= 0.0) {
            return Err(Error::config(
                "--max-memory",
                format!("{} must be a finite number of GB ≥ 0", self.max_memory),
            ));
        }
        Ok(())
    }
}

/// The checkpoint being diagnosed.
pub struct Target {
    pub run_dir: PathBuf,
    pub dir: PathBuf,
    pub config: RunConfig,
    pub state: TrainState,
}

/// Resolve a run directory (latest checkpoint) or a checkpoint directory.
pub fn open_target(path: &Path) -> Result<Target> {
    let (run_dir, dir) = if path.join("state.json").is_file() {
        let run = path
            .parent()
            .and_then(Path::parent)
            .map(Path::to_path_buf)
            .unwrap_or_default();
        (run, path.to_path_buf())
    } else if path.join("config.json").is_file() {
        let Some((_, dir)) = checkpoint::latest(path)? else {
            return Err(Error::bad_file(
                path.join("checkpoints"),
                "checkpoints",
                "no checkpoint in this run (expected checkpoints/step_N/state.json)",
            ));
        };
        (path.to_path_buf(), dir)
    } else {
        return Err(Error::bad_file(
            path,
            "path",
            "expected a run directory (with config.json) or a checkpoint directory (with state.json)",
        ));
    };
    let config = RunConfig::read(&run_dir.join("config.json"))?;
    let sp = dir.join("state.json");
    let text = std::fs::read_to_string(&sp).map_err(|e| Error::io(&sp, e))?;
    let state: TrainState = serde_json::from_str(&text).map_err(|e| Error::Json {
        path: sp,
        source: e,
    })?;
    Ok(Target {
        run_dir,
        dir,
        config,
        state,
    })
}

/// The checkpoint's weights in the standard flat layout (f64).
pub fn load_weights(t: &Target, table: &ParamTable) -> Result<Vec<f64>> {
    let mp = t.dir.join("model.safetensors");
    let tensors = crate::tensors::read(&mp)?;
    Ok(crate::model::hf::from_hf(&mp, &t.state.model, table, &tensors)?.0)
}

/// Build the basis of `rc` on the f64 CPU backend; `svd` loads its factors from the checkpoint.
fn build_basis(t: &Target, rc: &RotationConfig, table: &ParamTable) -> Result<Basis<Cpu64>> {
    let be = Cpu64::new(1, false);
    let mut basis = Basis::new(&be, rc, table)?;
    if basis.has_state() {
        let rp = t.dir.join("rotation.safetensors");
        if !rp.is_file() {
            return Err(Error::bad_file(
                &rp,
                "rotation",
                "missing: the svd basis needs the run's singular vectors, which only a checkpoint of an svd run carries",
            ));
        }
        let tensors = crate::tensors::read(&rp)?;
        basis.load_state(&be, &rp, &tensors)?;
    }
    Ok(basis)
}

/// The L∞ gradient bound.
#[derive(Clone, Debug, Serialize)]
pub struct LinfReport {
    pub batches: usize,
    /// C̃ = max_B ‖R∇f_B(w)‖∞.
    pub bound: f64,
    /// Mean over batches of ‖R∇f_B(w)‖∞.
    pub mean: f64,
    /// The batch (0-based) where the max occurred.
    pub argmax: usize,
    pub seconds: f64,
}

/// The (1,1)-norm estimates and their time.
#[derive(Clone, Debug, Serialize)]
pub struct L11Section {
    #[serde(flatten)]
    pub estimate: L11Report,
    pub seconds: f64,
}

/// Lanczos and Xie et al.'s comparison.
#[derive(Clone, Debug, Serialize)]
pub struct SpectralReport {
    #[serde(flatten)]
    pub lanczos: LanczosResult,
    /// d·‖H‖₂, Xie et al.'s point of comparison for ‖H‖₍₁,₁₎ (not a bound of it; module docs).
    pub d_times_spectral: f64,
    /// ‖H‖₍₁,₁₎ / (d·‖H‖₂) when `l11` ran too.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub l11_over_d_spectral: Option<f64>,
    pub seconds: f64,
}

/// Where Σⱼ|Hᵢⱼ| sits: fractions in the neuron, the rest of the layer, and outside the layer.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct RowMass {
    pub neuron: f64,
    pub layer: f64,
    pub non_layer: f64,
}

/// One sampled row.
#[derive(Clone, Debug, Serialize)]
pub struct RowReport {
    #[serde(flatten)]
    pub position: rows::RowPosition,
    /// Hᵢᵢ, ‖Hᵢ‖₁ and ‖Hᵢ‖∞.
    pub diagonal: f64,
    pub l1: f64,
    pub linf: f64,
    pub mass: RowMass,
    /// ⟨d, Hᵢ⟩ parts for the last update direction (AdamW runs).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub update: Option<Contribution>,
    /// Mean over random directions of the parts, and of their absolute values.
    pub random_mean: Contribution,
    pub random_mean_abs: Contribution,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub plot: Option<PathBuf>,
}

#[derive(Clone, Debug, Serialize)]
pub struct RowsReport {
    /// `last-update` (rebuilt from the checkpoint's moments) or absent with the reason.
    pub update_direction: String,
    /// ‖d‖₂ of the update direction (0 if none).
    pub update_norm: f64,
    pub random_dirs: usize,
    pub rows: Vec<RowReport>,
    pub seconds: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct UpdateCvReport {
    #[serde(flatten)]
    pub summary: update_cv::UpdateCvSummary,
    pub weights: Vec<update_cv::WeightCv>,
    pub seconds: f64,
}

/// Every setting of a diagnose run.
#[derive(Clone, Debug, Serialize)]
pub struct Settings {
    /// The diagnostics asked for.
    pub what: Vec<What>,
    pub checkpoint: PathBuf,
    pub step: usize,
    pub model: ModelConfig,
    pub num_params: usize,
    pub optimizer: String,
    /// The run's rotation and the one diagnosed (differs with --rotation).
    pub run_rotation: RotationConfig,
    pub rotation: RotationConfig,
    pub basis: String,
    pub data: String,
    /// `fixed_batches(train split, batch_size, seq_len, count, seed)`.
    pub batches: String,
    pub batch_size: usize,
    pub seq_len: usize,
    pub seed: u64,
    pub linf_batches: usize,
    pub hvp_batches: usize,
    pub probes: usize,
    pub l11_method: L11Method,
    pub max_memory_gb: f64,
    pub lanczos_iters: usize,
    pub random_dirs: usize,
    /// `central difference of f64 gradients`, step h.
    pub hvp: String,
    pub hvp_step: f64,
    /// Mean loss over the HVP batches at w.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub loss: Option<f64>,
    pub threads: usize,
}

/// The whole report (`--json`).
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub settings: Settings,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub linf: Option<LinfReport>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub l11: Option<L11Section>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub spectral: Option<SpectralReport>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hessian_rows: Option<RowsReport>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub update_cv: Option<UpdateCvReport>,
    /// Where the JSON was written.
    pub json_path: PathBuf,
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

/// The run's optimizer as the checkpoint left it, in f64 on the CPU: the run's chain in the run's basis,
/// with the checkpoint's moments and step count. Only AdamW keeps the per-coordinate moments the
/// diagnostics read.
fn checkpoint_optimizer(t: &Target, table: &ParamTable) -> Result<(Cpu64, Optimizer<Cpu64>)> {
    if t.state.optimizer != OptimizerKind::Adamw {
        return Err(Error::config(
            "update-cv",
            format!(
                "needs AdamW's per-coordinate second moment; the run's optimizer is {}",
                t.state.optimizer.name()
            ),
        ));
    }
    let be = Cpu64::new(1, false);
    let basis = Basis::new(&be, &t.state.rotation, table)?;
    let mut opt = Optimizer::for_run(&be, &t.config.train, basis, table)?;
    checkpoint::load_optimizer(&be, &t.dir, &mut opt, t.state.step)?;
    Ok((be, opt))
}

/// Adam's direction Rᵀ(m̂/(√v̂+ε)) in the standard layout, as the checkpoint's optimizer gives it.
fn checkpoint_update(t: &Target, table: &ParamTable) -> Result<Vec<f64>> {
    let (be, mut opt) = checkpoint_optimizer(t, table)?;
    opt.direction(&be)
}

/// The learning rate of step t: from metrics.jsonl when it has the row, else the schedule.
fn step_lr(t: &Target) -> f64 {
    let step = t.state.step;
    if let Ok(rows) = crate::run::metrics::read(&t.run_dir.join("metrics.jsonl")) {
        if let Some(r) = rows.iter().rev().find(|r| r.step == step) {
            return r.lr;
        }
    }
    let tr = &t.config.train;
    crate::optim::schedule::lr_at(
        step.saturating_sub(1),
        tr.lr,
        tr.min_lr,
        tr.warmup,
        tr.decay_steps(),
    )
}

/// d = w_t − w_{t−1} of the checkpoint's last AdamW step (module docs): the optimizer inverts its step.
pub fn last_update(t: &Target, table: &ParamTable, w: &[f64]) -> Result<Vec<f64>> {
    let (be, mut opt) = checkpoint_optimizer(t, table)?;
    let u = opt.direction(&be)?;
    let prev = opt.previous_params(table, w, &u, step_lr(t));
    Ok(w.iter().zip(&prev).map(|(w, p)| w - p).collect())
}

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
        k @ (RotationKind::Svd | RotationKind::Scope(Scope::None)) => {
            format!("step{}_{k}", t.state.step)
        }
        RotationKind::Kron => format!("step{}_kron-k{}-s{}", t.state.step, rc.kron_stages, rc.seed),
        k @ RotationKind::Scope(_) => {
            format!("step{}_{k}-n{}-s{}", t.state.step, rc.block, rc.seed)
        }
    };
    let batch_size = args.batch_size.unwrap_or(t.config.train.batch_size);
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

    let needs_model = args.wants(What::Linf)
        || args.wants(What::L11)
        || args.wants(What::Spectral)
        || args.wants(What::HessianRows);
    let mut settings = Settings {
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
        batches: "fixed_batches(train split, batch_size, seq_len, count, seed): the HVP batches are the first hvp_batches".into(),
        batch_size,
        seq_len: model.seq_len,
        seed: args.seed,
        linf_batches: args.batches,
        hvp_batches: args.hvp_batches,
        probes: args.probes,
        l11_method: args.l11_method,
        max_memory_gb: args.max_memory,
        lanczos_iters: args.lanczos_iters,
        random_dirs: args.random_dirs,
        hvp: "central difference of f64 gradients along v/|v|, step h = cbrt(eps) * max(1, |w|_inf)".into(),
        hvp_step: 0.0,
        loss: None,
        threads,
    };
    let mut report = Report {
        settings: settings.clone(),
        linf: None,
        l11: None,
        spectral: None,
        hessian_rows: None,
        update_cv: None,
        json_path: out_dir.join(format!("diagnose_{tag}.json")),
    };

    if needs_model {
        let data_dir = crate::data::resolve(&data_name, args.quiet)?;
        let data = Dataset::open(&data_dir, model.vocab_size, model.seq_len)?;
        let count = args.batches.max(args.hvp_batches);
        let all: Vec<Batch> =
            fixed_batches(&data.train, batch_size, model.seq_len, count, args.seed);
        let hvp_batches = all[..args.hvp_batches].to_vec();
        let w = load_weights(t, &table)?;
        let basis = InPlaceBasis::new(build_basis(t, &rc, &table)?);
        let mut f = Gpt2Hvp::new(&model, w.clone(), hvp_batches, basis, threads)?;
        settings.basis = f.describe_basis();
        settings.hvp_step = f.step_length();
        let (loss, _) = f.gradient()?;
        settings.loss = Some(loss);
        let d = f.dim();

        if args.wants(What::Linf) {
            let t0 = Instant::now();
            let (mut best, mut arg, mut sum) = (0.0f64, 0, 0.0);
            for (k, b) in all[..args.batches].iter().enumerate() {
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
        }
        if args.wants(What::L11) {
            let t0 = Instant::now();
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
        }
        if args.wants(What::Spectral) {
            let t0 = Instant::now();
            say(
                args,
                format!("spectral: {} Lanczos steps", args.lanczos_iters),
            );
            let lz = estimators::lanczos(|v, o| f.hvp(v, o), d, args.lanczos_iters, args.seed)?;
            let dh = d as f64 * lz.spectral_norm;
            report.spectral = Some(SpectralReport {
                d_times_spectral: dh,
                l11_over_d_spectral: report.l11.as_ref().map(|r| r.estimate.best().norm / dh),
                lanczos: lz,
                seconds: t0.elapsed().as_secs_f64(),
            });
        }
        if args.wants(What::HessianRows) {
            let t0 = Instant::now();
            report.hessian_rows = Some(hessian_rows(args, t, &table, &w, &mut f, &out_dir, &tag)?);
            if let Some(r) = report.hessian_rows.as_mut() {
                r.seconds = t0.elapsed().as_secs_f64();
            }
        }
    }
    let explicit_cv = args.what.contains(&What::UpdateCv);
    if args.wants(What::UpdateCv) && !explicit_cv && t.state.optimizer != OptimizerKind::Adamw {
        say(
            args,
            format!(
                "update-cv: skipped (needs AdamW; the run's optimizer is {})",
                t.state.optimizer.name()
            ),
        );
    } else if args.wants(What::UpdateCv) {
        let t0 = Instant::now();
        let u = checkpoint_update(t, &table)?;
        let weights = update_cv::per_weight(&table, &u)?;
        report.update_cv = Some(UpdateCvReport {
            summary: update_cv::summarize(&weights),
            weights,
            seconds: t0.elapsed().as_secs_f64(),
        });
    }
    report.settings = settings;
    let json = serde_json::to_vec_pretty(&report).expect("report serialises");
    crate::run::write_atomic(&report.json_path, &json)?;
    say(args, format!("wrote {}", report.json_path.display()));
    Ok(report)
}

fn hessian_rows(
    args: &DiagnoseOptions,
    t: &Target,
    table: &ParamTable,
    w: &[f64],
    f: &mut Gpt2Hvp,
    out_dir: &Path,
    tag: &str,
) -> Result<RowsReport> {
    let d = f.dim();
    let positions: Vec<rows::RowPosition> = if args.rows.is_empty() {
        rows::default_positions(table)
    } else {
        args.rows
            .iter()
            .map(|&i| {
                rows::position(table, i).ok_or_else(|| {
                    Error::config("--rows", format!("index {i} is out of range (d = {d})"))
                })
            })
            .collect::<Result<_>>()?
    };
    let (update, update_desc) = match last_update(t, table, w) {
        Ok(u) => (
            Some(f.rotate(&u)?),
            "last-update (w_t - w_{t-1} rebuilt from the checkpoint's AdamW moments)".to_string(),
        ),
        Err(e) => (None, format!("none: {e}")),
    };
    let update_norm = update.as_ref().map_or(0.0, |u| estimators::norm2(u));
    let scale = if update_norm > 0.0 { update_norm } else { 1.0 };
    let mut rng = Rng::derive(args.seed, STREAM_RANDOM_DIRS);
    let random: Vec<Vec<f64>> = (0..args.random_dirs)
        .map(|_| {
            let g: Vec<f64> = (0..d).map(|_| rng.normal()).collect();
            let n = estimators::norm2(&g);
            g.into_iter().map(|x| x * scale / n).collect()
        })
        .collect();
    let mut out = Vec::new();
    for p in positions {
        say(
            args,
            format!("hessian-rows: row {} ({})", p.index, p.tensor),
        );
        let row = estimators::hessian_row(|v, o| f.hvp(v, o), d, p.index)?;
        let (neuron, layer) = rows::groups(table, p.index).expect("position inside the table");
        let abs_sum = |it: &mut dyn Iterator<Item = usize>| it.map(|j| row[j].abs()).sum::<f64>();
        let l1: f64 = row.iter().map(|x| x.abs()).sum();
        let n_mass = abs_sum(&mut neuron.iter().copied());
        let l_mass = abs_sum(&mut layer.clone()) - n_mass;
        let denom = if l1 > 0.0 { l1 } else { 1.0 };
        let upd = update
            .as_ref()
            .map(|u| rows::contribution(table, p.index, &row, u));
        let rc: Vec<Contribution> = random
            .iter()
            .map(|r| rows::contribution(table, p.index, &row, r))
            .collect();
        let title = format!(
            "Hessian row {} ({} [{}, {}]), basis {}, step {}",
            p.index,
            p.tensor,
            p.row,
            p.col,
            tag_basis(tag),
            t.state.step
        );
        let plot = plot_row(
            args,
            table,
            &row,
            &p,
            &title,
            &out_dir.join(format!("row{}_{tag}.png", p.index)),
        );
        out.push(RowReport {
            diagonal: row[p.index],
            l1,
            linf: estimators::linf(&row),
            mass: RowMass {
                neuron: n_mass / denom,
                layer: l_mass / denom,
                non_layer: (l1 - n_mass - l_mass) / denom,
            },
            update: upd,
            random_mean: rows::mean_contribution(&rc, false),
            random_mean_abs: rows::mean_contribution(&rc, true),
            plot,
            position: p,
        });
    }
    Ok(RowsReport {
        update_direction: update_desc,
        update_norm,
        random_dirs: args.random_dirs,
        rows: out,
        seconds: 0.0,
    })
}

/// The row's plot (Maes et al. Fig. 7 style): |H_ij| over the parameter index j on a log axis (downsampled
/// by the max per pixel column, so no spike is lost), with markers at wte, wpe, every transformer block,
/// ln_f and the sampled index itself. A failure to draw is reported on stderr and leaves `plot` empty:
/// the numbers matter more than the figure.
fn plot_row(
    args: &DiagnoseOptions,
    table: &ParamTable,
    row: &[f64],
    p: &rows::RowPosition,
    title: &str,
    path: &Path,
) -> Option<PathBuf> {
    use crate::plot::{Axes, Marker, RowPlot, RowValues};
    let mut markers = vec![
        Marker {
            x: table.entries[table.wte].offset as f64,
            label: "wte".into(),
        },
        Marker {
            x: table.entries[table.wpe].offset as f64,
            label: "wpe".into(),
        },
    ];
    for (l, lp) in table.layers.iter().enumerate() {
        markers.push(Marker {
            x: table.entries[lp.ln1_w].offset as f64,
            label: format!("h.{l}"),
        });
    }
    markers.push(Marker {
        x: table.entries[table.lnf_w].offset as f64,
        label: "ln_f".into(),
    });
    markers.push(Marker {
        x: p.index as f64,
        label: format!("row {}", p.index),
    });
    let plot = RowPlot {
        axes: Axes::new(title, "parameter index j", "|H_ij|").log_y(),
        values: RowValues::F64(row),
        markers,
    };
    match plot.save(path) {
        Ok(()) => Some(path.to_path_buf()),
        Err(e) => {
            say(
                args,
                format!("hessian-rows: no plot for row {}: {e}", p.index),
            );
            None
        }
    }
}

/// The basis part of a file tag `step<N>_<basis>`.
fn tag_basis(tag: &str) -> &str {
    tag.split_once('_').map_or(tag, |(_, b)| b)
}

fn sci(x: f64) -> String {
    format!("{x:.4e}")
}

/// The human-readable table of a report.
pub fn table(r: &Report) -> String {
    let s = &r.settings;
    let mut o = String::new();
    o += &format!(
        "checkpoint {} (step {}), {} parameters, basis: {}\n",
        s.checkpoint.display(),
        s.step,
        s.num_params,
        if s.basis.is_empty() {
            s.rotation.kind.to_string()
        } else {
            s.basis.clone()
        }
    );
    if let Some(loss) = s.loss {
        o += &format!(
            "f = mean loss over {} fixed train batches of {}x{} (seed {}): {loss:.6}; HVP step h = {:.3e}\n",
            s.hvp_batches, s.batch_size, s.seq_len, s.seed, s.hvp_step
        );
    }
    if let Some(l) = &r.linf {
        o += &format!(
            "linf      C~ = max_B |R grad f_B|_inf = {}  (mean {}, over {} batches; max at batch {})  [{:.1} s]\n",
            sci(l.bound),
            sci(l.mean),
            l.batches,
            l.argmax,
            l.seconds
        );
    }
    if let Some(l) = &r.l11 {
        for e in [&l.estimate.median, &l.estimate.streaming]
            .into_iter()
            .flatten()
        {
            o += &format!(
                "l11       |H|_(1,1) = {}  (/d = {}; {} over {} Cauchy probes; {} zero rows)  [{:.1} s]\n",
                sci(e.norm),
                sci(e.norm_per_dim),
                e.method,
                e.probes,
                e.zero_rows,
                l.seconds
            );
        }
    }
    if let Some(sp) = &r.spectral {
        o += &format!(
            "spectral  lambda_max = {}, lambda_min = {}, |H|_2 = {}, d*|H|_2 = {}{}  ({} Lanczos steps)  [{:.1} s]\n",
            sci(sp.lanczos.lambda_max),
            sci(sp.lanczos.lambda_min),
            sci(sp.lanczos.spectral_norm),
            sci(sp.d_times_spectral),
            sp.l11_over_d_spectral
                .map(|x| format!(", |H|_(1,1)/(d*|H|_2) = {x:.4}"))
                .unwrap_or_default(),
            sp.lanczos.iterations,
            sp.seconds
        );
    }
    if let Some(h) = &r.hessian_rows {
        o += &format!(
            "hessian-rows  direction: {}; |d| = {}; {} random directions  [{:.1} s]\n",
            h.update_direction,
            sci(h.update_norm),
            h.random_dirs,
            h.seconds
        );
        o += &format!(
            "  {:>10} {:<24} {:>11} {:>11}  {:>6} {:>6} {:>6}  {:>11} {:>11} {:>11} {:>11}  {:>11} {:>11} {:>11}\n",
            "index", "tensor", "H_ii", "|H_i|_1", "m.neu", "m.lay", "m.out", "upd.neuron", "upd.layer", "upd.nonlay", "upd.total", "rnd.neuron", "rnd.layer", "rnd.nonlay"
        );
        for row in &h.rows {
            let u = row.update;
            let f = |x: Option<f64>| x.map(sci).unwrap_or_else(|| "-".into());
            o += &format!(
                "  {:>10} {:<24} {:>11} {:>11}  {:>6.3} {:>6.3} {:>6.3}  {:>11} {:>11} {:>11} {:>11}  {:>11} {:>11} {:>11}\n",
                row.position.index,
                row.position.tensor,
                sci(row.diagonal),
                sci(row.l1),
                row.mass.neuron,
                row.mass.layer,
                row.mass.non_layer,
                f(u.map(|c| c.neuron)),
                f(u.map(|c| c.layer)),
                f(u.map(|c| c.non_layer)),
                f(u.map(|c| c.total)),
                sci(row.random_mean.neuron),
                sci(row.random_mean.layer),
                sci(row.random_mean.non_layer),
            );
        }
    }
    if let Some(u) = &r.update_cv {
        o += &format!(
            "update-cv std/mean of singular values of R^T(m^/(sqrt(v^)+eps)): mean {:.4}, median {:.4}, max {:.4} over {} weights  [{:.1} s]\n",
            u.summary.mean,
            u.summary.median,
            u.summary.max,
            u.weights.len(),
            u.seconds
        );
        for w in &u.weights {
            o += &format!("  {:<28} {:>5}x{:<5} {:.4}\n", w.name, w.rows, w.cols, w.cv);
        }
    }
    o += &format!("json: {}\n", r.json_path.display());
    o
}
