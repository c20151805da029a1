//! Xie, Mohamadi, Li §4.1: Adam, AdaSGD and SGD on a rotated ill-conditioned quadratic.
//!
//! The loss is
//!   f(x) = ½ (x − x*)ᵀ H (x − x*),  H = R(θ)ᵀ Λ R(θ),  Λ = diag(λ₁ … λ_d),  λ_i = i⁻² (i = 1 … d),
//! so ‖H‖₂ = λ₁ = 1 and, at θ = 0, ‖H‖₍₁,₁₎ = Σ_ij |H_ij| = tr Λ = Σ i⁻² (→ π²/6). The rotation family is
//! the paper's: R(θ) = exp(θA) with A = S − Sᵀ skew-symmetric and S Gaussian; here S_ij ~ N(0, 1/d), so
//! the eigenvalues ±iω of A fill [−2√2, 2√2] whatever d is and θ has the same meaning at every size
//! (θ = 0: R = I; θ ≳ 3: R is, in distribution, close to a Haar-random rotation). R is computed in f64
//! by scaling and squaring with a Taylor series ([`expm`]); RRᵀ = I and det R = 1 are tested.
//!
//! Each seed s draws z₀ ~ N(0, I_d) and x* ~ N(0, I_d) and starts from x₀ = x* + R(θ)ᵀ z₀, so in the
//! eigenbasis of H every θ starts from the same point z₀ with the same loss ½ Σ λ_i z₀ᵢ² (the paper starts
//! from the rotated initial point for this reason). The gradient is exact (no noise): ∇f = H (x − x*).
//! SGD (with momentum) and AdaSGD are rotation-equivariant, so their iterates satisfy
//! R(θ)(x_t − x*) = z_t for every θ and their final losses do not depend on θ (up to roundoff; tested).
//! Adam's division is coordinate-wise: its loss grows as H stops being diagonal, which is what the
//! (1,1)-norm measures (Xie et al. Corollary 3.7).
//!
//! Optimizers: the project's own ([`crate::optim`], the chains of transforms the GPT-2 runs use), on the
//! f64 CPU backend, no weight decay, constant learning rate, bias-corrected moments, t counted from 1:
//! - Adam with β₁ = 0 and β₁ = 0.9 (β₂ = `--beta2`, ε = `--eps`): scale_by_adam → step;
//! - AdaSGD (β₁ = 0.9): one second moment v = EMA_β₂ of mean_i g_i², u = m̂ / (√v̂ + ε):
//!   scale_by_block_adam (one block) → step;
//! - SGD with momentum μ = `--momentum` (torch semantics): momentum → step.
//!
//! Each optimizer runs at every learning rate of the grid for every seed; its row in the table is the
//! learning rate with the lowest mean final loss over seeds (a diverged run counts as +∞), with the mean
//! ± sample standard deviation over seeds.
//!
//! All runs of one θ advance in lockstep: the rows of X (runs × d) are the iterates, the gradients of all
//! runs are one GEMM G = (X − X*) H (H is symmetric), then each row takes its optimizer's step.
//!
//! Where this deviates from the paper (whose text available to us lost its formulas): the
//! spectrum (i⁻²), the scale of S (1/d, so θ is size-independent), d, the step count, β₂ = 0.99,
//! momentum 0.9, and the θ and learning-rate grids are this project's choices, stated in `docs/experiments.md`; the
//! procedure (rotation family, rotated start, per-setting lr tuning over seeds, mean ± std) is the paper's.

use crate::backend::cpu::CpuBackend;
use crate::backend::Scalar;
use crate::config::OptimizerKind;
use crate::error::{Error, Result};
use crate::model::ParamTable;
use crate::optim::{Blocks, Optimizer, Transform};
use crate::plot::{mean_std, Axes, LineChart, Series, Stat};
use crate::rng::Rng;
use crate::rotation::basis::Basis;
use rayon::prelude::*;
use serde::Serialize;
use std::path::Path;

/// Default θ grid: 0 (no rotation), then log-spaced up to a near-random rotation.
pub const DEFAULT_THETAS: [f64; 8] = [0.0, 0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0];

/// Default learning-rate grid: 10^(k/2) for k = −8 … 2, i.e. 1e-4 … 10 in half-decades.
pub fn default_lrs() -> Vec<f64> {
    (-8..=2).map(|k| 10f64.powf(k as f64 / 2.0)).collect()
}

/// Every setting of an experiment (saved in results.json).
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct QuadConfig {
    pub dim: usize,
    pub steps: usize,
    pub seeds: usize,
    pub thetas: Vec<f64>,
    pub lrs: Vec<f64>,
    pub beta2: f64,
    pub eps: f64,
    pub momentum: f64,
    pub seed: u64,
    pub threads: usize,
    /// The spectrum, in words: "lambda_i = i^-2, i = 1..d".
    pub spectrum: String,
    /// "S_ij ~ N(0, 1/d), A = S - S^T, R = exp(theta A)".
    pub rotation: String,
    pub optimizers: Vec<QuadOpt>,
}

impl QuadConfig {
    /// The defaults of `rotadam quadratic` with the given size.
    pub fn new(dim: usize, steps: usize, seeds: usize) -> Self {
        QuadConfig {
            dim,
            steps,
            seeds,
            thetas: DEFAULT_THETAS.to_vec(),
            lrs: default_lrs(),
            beta2: 0.99,
            eps: 1e-8,
            momentum: 0.9,
            seed: 0,
            threads: crate::config::default_threads(),
            spectrum: "lambda_i = i^-2, i = 1..d".into(),
            rotation: "S_ij ~ N(0, 1/d), A = S - S^T, R = exp(theta A)".into(),
            optimizers: QuadOpt::ALL.to_vec(),
        }
    }

    pub fn validate(&self) -> Result<()> {
        let bad = |f: &str, m: String| Err(Error::config(f, m));
        if self.dim < 2 {
            return bad("--dim", format!("{} (expected at least 2)", self.dim));
        }
        if self.steps == 0 || self.seeds == 0 {
            return bad("--steps/--seeds", "expected at least 1".into());
        }
        if self.thetas.is_empty() || self.thetas.iter().any(|t| !t.is_finite() || *t < 0.0) {
            return bad(
                "--thetas",
                format!("{:?} (expected finite angles ≥ 0)", self.thetas),
            );
        }
        if self.lrs.is_empty() || self.lrs.iter().any(|l| !l.is_finite() || *l <= 0.0) {
            return bad(
                "--lrs",
                format!("{:?} (expected finite learning rates > 0)", self.lrs),
            );
        }
        if !(0.0..1.0).contains(&self.beta2) {
            return bad("--beta2", format!("{} (expected 0 ≤ β₂ < 1)", self.beta2));
        }
        if !(0.0..1.0).contains(&self.momentum) {
            return bad(
                "--momentum",
                format!("{} (expected 0 ≤ μ < 1)", self.momentum),
            );
        }
        if !(self.eps >= 0.0 && self.eps.is_finite()) {
            return bad("--eps", format!("{} (expected ≥ 0)", self.eps));
        }
        if self.threads == 0 {
            return bad("--threads", "expected at least 1".into());
        }
        Ok(())
    }
}

/// The optimizers compared.
#[derive(Clone, Copy, Debug, Serialize, PartialEq)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum QuadOpt {
    /// Adam with this β₁ (β₂, ε from the config).
    Adam { beta1: f64 },
    /// β₁ = 0.9, one scalar second moment (mean of g² over coordinates).
    AdaSgd,
    /// SGD with momentum (the config's μ).
    Sgd,
}

impl QuadOpt {
    /// Adam (β₁ = 0), Adam (β₁ = 0.9), AdaSGD, SGD.
    pub const ALL: [QuadOpt; 4] = [
        QuadOpt::Adam { beta1: 0.0 },
        QuadOpt::Adam { beta1: 0.9 },
        QuadOpt::AdaSgd,
        QuadOpt::Sgd,
    ];
    /// Display name.
    pub fn name(&self) -> String {
        match self {
            QuadOpt::Adam { beta1 } => format!("Adam β1={beta1}"),
            QuadOpt::AdaSgd => "AdaSGD".into(),
            QuadOpt::Sgd => "SGD".into(),
        }
    }
}

// ---- the problem -----------------------------------------------------------------------------------------

/// The spectrum λ_i = i⁻², i = 1 … d (descending; λ₁ = 1 = ‖H‖₂).
pub fn spectrum(d: usize) -> Vec<f64> {
    (1..=d).map(|i| 1.0 / (i as f64 * i as f64)).collect()
}

/// The skew-symmetric generator A = S − Sᵀ, S_ij ~ N(0, 1/d) i.i.d. (row-major d×d), from
/// `Rng::derive(seed, STREAM_ROTATION)`.
pub fn skew_generator(d: usize, seed: u64) -> Vec<f64> {
    let mut rng = Rng::derive(seed, crate::rng::STREAM_ROTATION);
    let sd = 1.0 / (d as f64).sqrt();
    let s: Vec<f64> = (0..d * d).map(|_| sd * rng.normal()).collect();
    let mut a = vec![0.0; d * d];
    for i in 0..d {
        for j in 0..d {
            a[i * d + j] = s[i * d + j] - s[j * d + i];
        }
    }
    a
}

/// C = A·B for row-major n×n matrices.
fn matmul(a: &[f64], b: &[f64], n: usize, threads: usize) -> Vec<f64> {
    let mut c = vec![0.0; n * n];
    f64::gemm(&mut c, a, b, n, n, n, false, false, false, threads);
    c
}

/// The matrix 1-norm max_j Σ_i |M_ij| (an upper bound of the spectral norm's growth factor in the Taylor
/// truncation bound).
fn norm1(m: &[f64], n: usize) -> f64 {
    (0..n)
        .map(|j| (0..n).map(|i| m[i * n + j].abs()).sum::<f64>())
        .fold(0.0, f64::max)
}

/// exp(M) of a row-major n×n matrix in f64 by scaling and squaring (Higham 2005, "The scaling and
/// squaring method for the matrix exponential revisited", the classical form): pick s ≥ 0 with
/// ‖M‖₁/2ˢ ≤ ½, sum the Taylor series of exp(M/2ˢ) until a term's 1-norm falls below 1e-18 times the sum's
/// (‖B‖₁ ≤ ½ bounds the remainder by the last term), then square s times. For skew-symmetric M the result
/// is orthogonal to about 2ˢ·n·u.
pub fn expm(m: &[f64], n: usize, threads: usize) -> Vec<f64> {
    assert_eq!(m.len(), n * n, "expm: {} entries for n = {n}", m.len());
    let nrm = norm1(m, n);
    let s = if nrm > 0.5 {
        (nrm / 0.5).log2().ceil() as i32
    } else {
        0
    };
    let scale = 0.5f64.powi(s);
    let b: Vec<f64> = m.iter().map(|v| v * scale).collect();
    let mut sum = vec![0.0; n * n];
    for i in 0..n {
        sum[i * n + i] = 1.0;
    }
    let mut term = sum.clone();
    for k in 1..=40 {
        term = matmul(&term, &b, n, threads);
        let inv = 1.0 / k as f64;
        term.iter_mut().for_each(|t| *t *= inv);
        sum.iter_mut().zip(&term).for_each(|(a, t)| *a += t);
        if norm1(&term, n) <= 1e-18 * norm1(&sum, n) {
            break;
        }
    }
    for _ in 0..s {
        sum = matmul(&sum, &sum, n, threads);
    }
    sum
}

/// R(θ) = exp(θA), row-major.
pub fn rotation(a: &[f64], d: usize, theta: f64, threads: usize) -> Vec<f64> {
    let m: Vec<f64> = a.iter().map(|v| v * theta).collect();
    expm(&m, d, threads)
}

/// H = Rᵀ Λ R, row-major (symmetrised: (H + Hᵀ)/2, which it is up to roundoff).
pub fn hessian(r: &[f64], lambda: &[f64], threads: usize) -> Vec<f64> {
    let d = lambda.len();
    let lr: Vec<f64> = (0..d * d).map(|k| lambda[k / d] * r[k]).collect();
    let mut h = vec![0.0; d * d];
    f64::gemm(&mut h, r, &lr, d, d, d, true, false, false, threads);
    for i in 0..d {
        for j in 0..i {
            let v = 0.5 * (h[i * d + j] + h[j * d + i]);
            h[i * d + j] = v;
            h[j * d + i] = v;
        }
    }
    h
}

/// ‖H‖₍₁,₁₎ = Σ_ij |H_ij|.
pub fn norm_11(h: &[f64]) -> f64 {
    h.iter().map(|v| v.abs()).sum()
}

/// One rotated quadratic: Λ, R(θ) and H = RᵀΛR (row-major, d×d).
pub struct Problem {
    pub d: usize,
    pub theta: f64,
    pub lambda: Vec<f64>,
    pub r: Vec<f64>,
    pub h: Vec<f64>,
}

impl Problem {
    /// The problem at angle θ for the generator `a` (see [`skew_generator`]).
    pub fn new(a: &[f64], lambda: Vec<f64>, theta: f64, threads: usize) -> Self {
        let d = lambda.len();
        let r = rotation(a, d, theta, threads);
        let h = hessian(&r, &lambda, threads);
        Problem {
            d,
            theta,
            lambda,
            r,
            h,
        }
    }
    /// f(x) = ½ Σ_i λ_i (R(x − x*))_i², evaluated in the eigenbasis (a sum of non-negative terms, so a
    /// small loss keeps its relative accuracy).
    pub fn loss(&self, x: &[f64], xstar: &[f64]) -> f64 {
        let d = self.d;
        let e: Vec<f64> = x.iter().zip(xstar).map(|(a, b)| a - b).collect();
        (0..d)
            .map(|i| {
                let y: f64 = (0..d).map(|j| self.r[i * d + j] * e[j]).sum();
                0.5 * self.lambda[i] * y * y
            })
            .sum()
    }
    /// ∇f(x) = H (x − x*).
    pub fn grad(&self, x: &[f64], xstar: &[f64]) -> Vec<f64> {
        let d = self.d;
        (0..d)
            .map(|i| (0..d).map(|j| self.h[i * d + j] * (x[j] - xstar[j])).sum())
            .collect()
    }
    /// The start of seed s: (x₀ = x* + Rᵀz₀, x*), with z₀, x* ~ N(0, I) from `Rng::derive(seed, 1000 + s)`.
    pub fn start(&self, seed: u64, s: usize) -> (Vec<f64>, Vec<f64>) {
        let (z0, xstar) = draw_start(self.d, seed, s);
        let d = self.d;
        let x0 = (0..d)
            .map(|j| xstar[j] + (0..d).map(|i| self.r[i * d + j] * z0[i]).sum::<f64>())
            .collect();
        (x0, xstar)
    }
}

/// (z₀, x*) of seed s: both N(0, I_d), from `Rng::derive(seed, 1000 + s)`.
pub fn draw_start(d: usize, seed: u64, s: usize) -> (Vec<f64>, Vec<f64>) {
    let mut rng = Rng::derive(seed, 1000 + s as u64);
    let z0 = (0..d).map(|_| rng.normal()).collect();
    let xstar = (0..d).map(|_| rng.normal()).collect();
    (z0, xstar)
}

// ---- the runs --------------------------------------------------------------------------------------------

/// One run: an optimizer at a learning rate from one seed's start.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RunSpec {
    pub opt: QuadOpt,
    pub lr: f64,
    pub seed_index: usize,
}

struct RunState {
    spec: RunSpec,
    xstar: Vec<f64>,
    /// The iterate and its gradient (a row of the lockstep G).
    x: Vec<f64>,
    g: Vec<f64>,
    opt: Optimizer<Cpu64>,
    diverged: bool,
}

/// Hyper-parameters shared by the runs of one experiment.
#[derive(Clone, Copy, Debug)]
pub struct OptHyper {
    pub beta2: f64,
    pub eps: f64,
    pub momentum: f64,
}

impl QuadOpt {
    /// The optimizer's chain of transforms (`optim`): its scaling, then the step without weight decay.
    pub fn chain(&self, hy: &OptHyper) -> (OptimizerKind, Vec<Transform>) {
        let (beta2, eps) = (hy.beta2, hy.eps);
        let (kind, scale) = match *self {
            QuadOpt::Adam { beta1 } => (
                OptimizerKind::Adamw,
                Transform::ScaleByAdam { beta1, beta2, eps },
            ),
            QuadOpt::AdaSgd => (
                OptimizerKind::Adasgd,
                Transform::ScaleByBlockAdam {
                    beta1: 0.9,
                    beta2,
                    eps,
                    blocks: Blocks::Whole,
                },
            ),
            QuadOpt::Sgd => (
                OptimizerKind::Sgd,
                Transform::Momentum {
                    momentum: hy.momentum,
                },
            ),
        };
        (kind, vec![scale, Transform::Step { weight_decay: 0.0 }])
    }
}

type Cpu64 = CpuBackend<f64>;

/// Run every spec for `steps` steps on `p` (all in lockstep: one GEMM for all gradients per step) and
/// return each run's final loss f(x_T) (+∞ for a run whose iterate became non-finite or exceeded 1e150).
pub fn final_losses(
    p: &Problem,
    specs: &[RunSpec],
    steps: usize,
    seed: u64,
    hy: &OptHyper,
    threads: usize,
) -> Result<Vec<f64>> {
    let d = p.d;
    let b = specs.len();
    let be = Cpu64::new(1, false);
    let table = ParamTable::vector(d);
    let mut runs = Vec::with_capacity(b);
    for &spec in specs {
        let (x, xstar) = p.start(seed, spec.seed_index);
        let (kind, chain) = spec.opt.chain(hy);
        let basis = Basis::identity(&be, &table)?;
        runs.push(RunState {
            spec,
            xstar,
            x,
            g: vec![0.0; d],
            opt: Optimizer::new(&be, kind, chain, basis, &table)?,
            diverged: false,
        });
    }
    let mut e = vec![0.0; b * d];
    let mut g = vec![0.0; b * d];
    for _ in 1..=steps {
        // E = X − X* (zero rows for diverged runs), G = E·H (H symmetric: row k of G is H e_k).
        e.par_chunks_mut(d).zip(runs.par_iter()).for_each(|(e, r)| {
            for ((e, x), xs) in e.iter_mut().zip(&r.x).zip(&r.xstar) {
                *e = if r.diverged { 0.0 } else { x - xs };
            }
        });
        f64::gemm(&mut g, &e, &p.h, b, d, d, false, false, false, threads);
        runs.par_iter_mut()
            .zip(g.par_chunks(d))
            .try_for_each(|(r, g)| -> Result<()> {
                if r.diverged {
                    return Ok(());
                }
                r.g.copy_from_slice(g);
                let lr = r.spec.lr;
                r.opt.step(&be, &table, &mut r.x, &r.g, lr)?;
                if r.x.iter().any(|v| !v.is_finite() || v.abs() > 1e150) {
                    r.diverged = true;
                }
                Ok(())
            })?;
    }
    Ok(runs
        .par_iter()
        .map(|r| {
            if r.diverged {
                f64::INFINITY
            } else {
                let l = p.loss(&r.x, &r.xstar);
                if l.is_finite() {
                    l
                } else {
                    f64::INFINITY
                }
            }
        })
        .collect())
}

// ---- the experiment --------------------------------------------------------------------------------------

/// One optimizer at one θ: the chosen learning rate and its final losses, plus the whole grid.
#[derive(Clone, Debug, Serialize)]
pub struct OptResult {
    pub optimizer: String,
    pub spec: QuadOpt,
    /// The learning rate with the lowest mean final loss (None if every lr diverged).
    pub best_lr: Option<f64>,
    /// The best lr is the smallest or the largest of the grid: the grid may be too narrow.
    pub lr_at_grid_edge: bool,
    pub mean: f64,
    /// Sample standard deviation over seeds (n − 1; 0 for one seed).
    pub std: f64,
    /// Final loss of each seed at the best lr.
    pub losses: Vec<f64>,
    /// Mean final loss at every lr of the grid (+∞ where a seed diverged; JSON null).
    pub mean_by_lr: Vec<Option<f64>>,
}

/// One θ: the Hessian's norms and each optimizer's result.
#[derive(Clone, Debug, Serialize)]
pub struct ThetaResult {
    pub theta: f64,
    /// ‖H‖₍₁,₁₎ from the explicit matrix.
    pub h_norm_11: f64,
    /// ‖H‖₍₁,₁₎ / d.
    pub h_norm_11_over_d: f64,
    /// ‖H‖₂ = max λ (rotation-invariant).
    pub h_norm_2: f64,
    /// max |R Rᵀ − I| of the computed rotation.
    pub orthogonality_error: f64,
    pub initial_loss_mean: f64,
    pub results: Vec<OptResult>,
}

/// Everything an experiment produced (results.json).
#[derive(Clone, Debug, Serialize)]
pub struct QuadResults {
    pub config: QuadConfig,
    pub thetas: Vec<ThetaResult>,
    pub seconds: f64,
}

/// max_ij |(R Rᵀ − I)_ij|.
pub fn orthogonality_error(r: &[f64], d: usize, threads: usize) -> f64 {
    let mut rrt = vec![0.0; d * d];
    f64::gemm(&mut rrt, r, r, d, d, d, false, true, false, threads);
    (0..d * d)
        .map(|k| (rrt[k] - if k / d == k % d { 1.0 } else { 0.0 }).abs())
        .fold(0.0, f64::max)
}

/// Run the experiment: for each θ, every optimizer × lr × seed; pick each optimizer's best lr. `log`
/// receives one progress line per θ.
pub fn run(cfg: &QuadConfig, log: &mut (dyn FnMut(&str) + Send)) -> Result<QuadResults> {
    cfg.validate()?;
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(cfg.threads)
        .build()
        .map_err(|e| Error::config("--threads", e.to_string()))?;
    pool.install(|| run_in_pool(cfg, log))
}

fn run_in_pool(cfg: &QuadConfig, log: &mut (dyn FnMut(&str) + Send)) -> Result<QuadResults> {
    let t0 = std::time::Instant::now();
    let d = cfg.dim;
    let a = skew_generator(d, cfg.seed);
    let hy = OptHyper {
        beta2: cfg.beta2,
        eps: cfg.eps,
        momentum: cfg.momentum,
    };
    let mut specs = Vec::new();
    for &opt in &cfg.optimizers {
        for &lr in &cfg.lrs {
            for s in 0..cfg.seeds {
                specs.push(RunSpec {
                    opt,
                    lr,
                    seed_index: s,
                });
            }
        }
    }
    let mut out = Vec::new();
    for &theta in &cfg.thetas {
        let p = Problem::new(&a, spectrum(d), theta, cfg.threads);
        let losses = final_losses(&p, &specs, cfg.steps, cfg.seed, &hy, cfg.threads)?;
        let init: Vec<f64> = (0..cfg.seeds)
            .map(|s| {
                let (x0, xs) = p.start(cfg.seed, s);
                p.loss(&x0, &xs)
            })
            .collect();
        let mut results = Vec::new();
        for (oi, &opt) in cfg.optimizers.iter().enumerate() {
            let per_lr: Vec<&[f64]> = (0..cfg.lrs.len())
                .map(|li| {
                    let k = (oi * cfg.lrs.len() + li) * cfg.seeds;
                    &losses[k..k + cfg.seeds]
                })
                .collect();
            let means: Vec<f64> = per_lr
                .iter()
                .map(|l| {
                    if l.iter().all(|v| v.is_finite()) {
                        mean_std(l).0
                    } else {
                        f64::INFINITY
                    }
                })
                .collect();
            let best = (0..means.len()).filter(|&i| means[i].is_finite()).fold(
                None,
                |b: Option<usize>, i| match b {
                    Some(j) if means[j] <= means[i] => Some(j),
                    _ => Some(i),
                },
            );
            let (mean, std, seeds_l) = match best {
                Some(i) => {
                    let (m, s) = mean_std(per_lr[i]);
                    (m, s, per_lr[i].to_vec())
                }
                None => (f64::INFINITY, 0.0, Vec::new()),
            };
            results.push(OptResult {
                optimizer: opt.name(),
                spec: opt,
                best_lr: best.map(|i| cfg.lrs[i]),
                lr_at_grid_edge: best.is_some_and(|i| {
                    let lr = cfg.lrs[i];
                    lr == cfg.lrs.iter().cloned().fold(f64::INFINITY, f64::min)
                        || lr == cfg.lrs.iter().cloned().fold(0.0, f64::max)
                }),
                mean,
                std,
                losses: seeds_l,
                mean_by_lr: means
                    .iter()
                    .map(|&m| if m.is_finite() { Some(m) } else { None })
                    .collect(),
            });
        }
        let n11 = norm_11(&p.h);
        let tr = ThetaResult {
            theta,
            h_norm_11: n11,
            h_norm_11_over_d: n11 / d as f64,
            h_norm_2: p.lambda.iter().cloned().fold(0.0, f64::max),
            orthogonality_error: orthogonality_error(&p.r, d, cfg.threads),
            initial_loss_mean: mean_std(&init).0,
            results,
        };
        log(&format!(
            "theta {theta}: |H|_11 = {n11:.4}, {}  ({:.1} s)",
            tr.results
                .iter()
                .map(|r| format!("{} {:.3e}", r.optimizer, r.mean))
                .collect::<Vec<_>>()
                .join(", "),
            t0.elapsed().as_secs_f64()
        ));
        out.push(tr);
    }
    Ok(QuadResults {
        config: cfg.clone(),
        thetas: out,
        seconds: t0.elapsed().as_secs_f64(),
    })
}

// ---- outputs ---------------------------------------------------------------------------------------------

/// A number with 3 significant digits (scientific below 1e-3 or from 1e4).
fn sig3(v: f64) -> String {
    if !v.is_finite() {
        return if v.is_nan() {
            "NaN".into()
        } else {
            "∞".into()
        };
    }
    let a = v.abs();
    if a != 0.0 && !(1e-3..1e4).contains(&a) {
        format!("{v:.2e}")
    } else {
        let digits = if a == 0.0 {
            2
        } else {
            (2 - a.log10().floor() as i32).max(0) as usize
        };
        format!("{v:.digits$}")
    }
}

/// The Markdown table: θ, ‖H‖₍₁,₁₎, ‖H‖₍₁,₁₎/d, ‖H‖₂, then per optimizer "mean ± std (lr)".
pub fn markdown_table(res: &QuadResults) -> String {
    let mut s = String::new();
    let opts: Vec<String> = res
        .thetas
        .first()
        .map(|t| t.results.iter().map(|r| r.optimizer.clone()).collect())
        .unwrap_or_default();
    s.push_str("| θ | ‖H‖₍₁,₁₎ | ‖H‖₍₁,₁₎/d | ‖H‖₂ |");
    for o in &opts {
        s.push_str(&format!(" {o}: final loss (lr) |"));
    }
    s.push('\n');
    s.push_str("|---|---|---|---|");
    for _ in &opts {
        s.push_str("---|");
    }
    s.push('\n');
    for t in &res.thetas {
        s.push_str(&format!(
            "| {} | {} | {} | {} |",
            t.theta,
            sig3(t.h_norm_11),
            sig3(t.h_norm_11_over_d),
            sig3(t.h_norm_2)
        ));
        for r in &t.results {
            match r.best_lr {
                Some(lr) => s.push_str(&format!(
                    " {} ± {} ({}{}) |",
                    sig3(r.mean),
                    sig3(r.std),
                    sig3(lr),
                    if r.lr_at_grid_edge { ", grid edge" } else { "" }
                )),
                None => s.push_str(" diverged at every lr |"),
            }
        }
        s.push('\n');
    }
    let c = &res.config;
    s.push_str(&format!(
        "\nd = {}, {} steps, {} seeds, {}; {}; Adam/AdaSGD β₂ = {}, ε = {:e}, AdaSGD β₁ = 0.9, SGD momentum {}; \
         best lr of {} per cell (mean ± sample std over seeds of the final loss f(x_T)); {:.1} s.\n",
        c.dim,
        c.steps,
        c.seeds,
        c.spectrum,
        c.rotation,
        c.beta2,
        c.eps,
        c.momentum,
        c.lrs.iter().map(|l| sig3(*l)).collect::<Vec<_>>().join(", "),
        res.seconds
    ));
    s
}

/// The figure: final loss (mean ± std over seeds, at each optimizer's best lr) against θ, log y; θ is
/// drawn as a category axis (θ = 0 has no place on a log axis).
pub fn figure(res: &QuadResults) -> LineChart {
    let names: Vec<String> = res.thetas.iter().map(|t| format!("{}", t.theta)).collect();
    let n_opt = res.thetas.first().map_or(0, |t| t.results.len());
    let series = (0..n_opt)
        .map(|oi| {
            let stats: Vec<Stat> = res
                .thetas
                .iter()
                .enumerate()
                .filter(|(_, t)| t.results[oi].mean.is_finite())
                .map(|(i, t)| {
                    let r = &t.results[oi];
                    let (lo, hi) = r
                        .losses
                        .iter()
                        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &v| {
                            (a.min(v), b.max(v))
                        });
                    Stat {
                        x: i as f64,
                        n: r.losses.len(),
                        mean: r.mean,
                        std: r.std,
                        min: lo,
                        max: hi,
                    }
                })
                .collect();
            let name = res.thetas[0].results[oi].optimizer.clone();
            Series::mean_std_bars(&name, &stats)
        })
        .collect();
    let mut axes = Axes::new(
        &format!(
            "Rotated quadratic (Xie et al. §4.1), d = {}, {} steps",
            res.config.dim, res.config.steps
        ),
        "θ  (R = exp(θA))",
        "final loss (mean ± std over seeds, best lr)",
    )
    .log_y();
    axes.x_categories = names;
    LineChart { axes, series }
}

/// Write table.md, results.json, quadratic.png and quadratic.svg into `dir` (created if missing).
pub fn write_outputs(res: &QuadResults, dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    crate::files::write_atomic(&dir.join("table.md"), markdown_table(res).as_bytes())?;
    let p = dir.join("results.json");
    let json = serde_json::to_vec_pretty(res).map_err(|e| Error::Json {
        path: p.clone(),
        source: e,
    })?;
    crate::files::write_atomic(&p, &json)?;
    figure(res).save_png_svg(&dir.join("quadratic"))?;
    Ok(())
}

/// `rotadam quadratic`: run `cfg`, print the table, write the outputs into `out`.
pub fn run_and_write(cfg: &QuadConfig, out: &Path) -> Result<()> {
    eprintln!(
        "quadratic: d = {}, {} steps, {} seeds, {} thetas × {} optimizers × {} lrs ({} runs)",
        cfg.dim,
        cfg.steps,
        cfg.seeds,
        cfg.thetas.len(),
        cfg.optimizers.len(),
        cfg.lrs.len(),
        cfg.thetas.len() * cfg.optimizers.len() * cfg.lrs.len() * cfg.seeds
    );
    let res = run(cfg, &mut |line| eprintln!("  {line}"))?;
    print!("{}", markdown_table(&res));
    write_outputs(&res, out)?;
    eprintln!(
        "wrote {}/table.md, results.json, quadratic.png, quadratic.svg",
        out.display()
    );
    Ok(())
}
