//! What `diagnose` reports: one section per diagnostic and every setting (`--json`), and the table
//! printed without `--json`.

use super::estimators::{Contribution, L11Method, L11Report, LanczosResult};
use super::{rows, RowExpectation, What};
use crate::config::{ModelConfig, RotationConfig};
use crate::optim::update_cv;
use serde::Serialize;
use std::path::PathBuf;

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

/// Table 5's expectation over batches (`--row-expectation batches`): the per-batch values behind a row's
/// means.
#[derive(Clone, Debug, Serialize)]
pub struct RowBatches {
    /// Batches averaged over (`--batches`).
    pub count: usize,
    /// ⟨d, H_{B,i}⟩ parts for the last update, per batch (empty without an update direction); the row's
    /// `update` is their mean.
    pub update: Vec<Contribution>,
    /// Sample standard deviation over batches of the update parts (absent without an update direction or
    /// with one batch).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub update_std: Option<Contribution>,
    /// Mean over random directions of the parts, per batch; the row's `random_mean` is their mean.
    pub random_mean: Vec<Contribution>,
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
    /// ⟨d, Hᵢ⟩ parts for the last update direction (AdamW runs); with `--row-expectation batches`, the
    /// mean over batches of the per-batch parts (`batches.update`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub update: Option<Contribution>,
    /// Mean over random directions of the parts, and of their absolute values (with `--row-expectation
    /// batches`, also averaged over batches: E_B mean_r of each batch's parts, resp. absolute parts).
    pub random_mean: Contribution,
    pub random_mean_abs: Contribution,
    /// The per-batch values of `--row-expectation batches`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub batches: Option<RowBatches>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub plot: Option<PathBuf>,
    /// The row Hᵢ itself, as safetensors in the checkpoint's tensor names and shapes
    /// (`docs/diagnostics.md`).
    pub tensors: PathBuf,
}

#[derive(Clone, Debug, Serialize)]
pub struct RowsReport {
    /// Which H the contributions use: `budget` (H over `settings.hvp_budget`; diagonal, masses, plots
    /// and files too) or `batches` (contributions averaged over `expectation_batches` minibatches; the
    /// row, its masses, plot and file are the mean row over those batches).
    pub expectation: RowExpectation,
    /// Batches of the expectation (`--batches` with `batches`, absent with `budget`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expectation_batches: Option<usize>,
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
    /// Which direction: AdamW's last step's, or Muon's next step's (`diagnose::target`).
    pub source: String,
    pub seconds: f64,
}

/// The token budget of H: the mean loss over `micro_batches` fixed train micro-batches of
/// `batch_size` x `seq_len` tokens.
#[derive(Clone, Debug, Serialize)]
pub struct HvpBudget {
    /// Tokens H is taken over: micro_batches · batch_size · seq_len.
    pub tokens: usize,
    /// Tokens asked for (`--hvp-tokens`, else the run's effective batch), before rounding up to whole
    /// micro-batches.
    pub requested_tokens: usize,
    /// Where `requested_tokens` comes from.
    pub source: String,
    pub micro_batches: usize,
    pub batch_size: usize,
    pub seq_len: usize,
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
    /// How much of the vocabulary the data uses and the embeddings' share of the parameters (when the
    /// diagnostics read the data).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vocabulary: Option<String>,
    /// `fixed_batches(train split, batch_size, seq_len, count, seed)`.
    pub batches: String,
    pub batch_size: usize,
    pub seq_len: usize,
    pub seed: u64,
    pub linf_batches: usize,
    /// The token budget of H (l11, spectral, hessian-rows).
    pub hvp_budget: HvpBudget,
    pub probes: usize,
    pub l11_method: L11Method,
    pub max_memory_gb: f64,
    /// The most Lanczos steps and the residual tolerance relative to |θ|.
    pub lanczos_iters: usize,
    pub lanczos_tol: f64,
    pub random_dirs: usize,
    pub row_expectation: RowExpectation,
    /// The HVP's method: a central difference of the gradients (in their precision), step h.
    pub hvp: String,
    pub hvp_step: f64,
    /// Mean loss over H's micro-batches at w.
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
    if let Some(v) = &s.vocabulary {
        o += &format!("vocabulary: {v}\n");
    }
    if let Some(loss) = s.loss {
        let b = &s.hvp_budget;
        o += &format!(
            "H = Hessian of f = mean loss over {} tokens: {} fixed train micro-batches of {}x{} (seed {}; asked {} tokens, {}): f = {loss:.6}; HVP step h = {:.3e}\n",
            b.tokens, b.micro_batches, b.batch_size, b.seq_len, s.seed, b.requested_tokens, b.source, s.hvp_step
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
        let lz = &sp.lanczos;
        o += &format!(
            "spectral  lambda_max = {}, lambda_min = {}, |H|_2 = {}, d*|H|_2 = {}{}  [{:.1} s]\n",
            sci(lz.lambda_max),
            sci(lz.lambda_min),
            sci(lz.spectral_norm),
            sci(sp.d_times_spectral),
            sp.l11_over_d_spectral
                .map(|x| format!(", |H|_(1,1)/(d*|H|_2) = {x:.4}"))
                .unwrap_or_default(),
            sp.seconds
        );
        o += &format!(
            "          Lanczos: {} of at most {} steps, {}; {} at tol {:e}: |Hy - ty|/|t| = {:.2e} (max), {:.2e} (min)\n",
            lz.iterations,
            lz.max_steps,
            match lz.stop {
                super::estimators::LanczosStop::Tolerance => "stopped on the tolerance",
                super::estimators::LanczosStop::InvariantSubspace => "stopped on an invariant subspace",
                super::estimators::LanczosStop::MaxSteps => "stopped on the step limit",
            },
            if lz.converged { "converged" } else { "NOT CONVERGED" },
            lz.tol,
            lz.max_pair.relative_residual,
            lz.min_pair.relative_residual,
        );
    }
    if let Some(h) = &r.hessian_rows {
        o += &format!(
            "hessian-rows  direction: {}; |d| = {}; {} random directions; <d, H_i> {}  [{:.1} s]\n",
            h.update_direction,
            sci(h.update_norm),
            h.random_dirs,
            match h.expectation_batches {
                Some(k) => format!("averaged over {k} minibatches (Table 5's expectation)"),
                None => "with H over the token budget".to_string(),
            },
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
        if let Some(first) = h.rows.first() {
            o += &format!(
                "  rows as safetensors (checkpoint names and shapes): {}{}\n",
                first.tensors.display(),
                if h.rows.len() > 1 {
                    format!(" and {} more beside it", h.rows.len() - 1)
                } else {
                    String::new()
                }
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
