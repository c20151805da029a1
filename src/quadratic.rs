//! Xie, Mohamadi, Li §4.1: Adam, AdaSGD and SGD on a rotated ill-conditioned quadratic.
//!
//! The loss is
//!   f(x) = ½ (x − x*)ᵀ H (x − x*),  H = R(θ)ᵀ Λ R(θ),  Λ = diag(λ₁ … λ_d),
//! with the spectrum chosen by `--spectrum` ([`Spectrum`]), λ₁ = 1 the largest in each:
//! - `inv-square` (the default): λ_i = i⁻². ‖H‖₂ = 1 and, at θ = 0, ‖H‖₍₁,₁₎ = tr Λ = Σ i⁻² (→ π²/6).
//!   H is dominated by its top eigenvectors (λ₂ = ¼, λ₃ = ⅑), and a rank-one v vᵀ with v a random unit
//!   vector has ‖v vᵀ‖₍₁,₁₎/d = (Σ_j |v_j|)²/d ≈ 2/π: under every rotation of the default grid
//!   ‖H‖₍₁,₁₎/d stays below ‖H‖₂ = 1 (0.706 at d = 500, θ = 10), so the regime below is never reached;
//! - `inv-sqrt`: λ_i = i^(−1/2), condition number √d. At θ = 0, ‖H‖₍₁,₁₎/d = Σ i^(−1/2)/d ≈ 2/√d < 1;
//!   under a Haar-random rotation the off-diagonal entries are ≈ N(0, (Σλ² − (Σλ)²/d)/d²) (the spread
//!   of the eigenvalues, not their size: a flat spectrum gives none), so
//!   ‖H‖₍₁,₁₎/d ≈ Σλ/d + √(2/π)·√(Σλ² − (Σλ)²/d) ≈ 0.09 + 0.80·√(6.79 − 3.75) ≈ 1.48 > ‖H‖₂ = 1 at
//!   d = 500 (1.44 measured at θ = 10): the regime of Xie et al. §4.1 (after Theorem 3.11) where AdaSGD
//!   is expected to overtake Adam;
//! - `flat`: λ_i = 1, H = I at every θ, ‖H‖₍₁,₁₎/d = ‖H‖₂ = 1: the control in which rotating changes only
//!   the start's direction, not the Hessian.
//!
//! ‖H‖₂ is rotation-invariant (H's eigenvalues are Λ at every θ); the table's ‖H‖₂ is measured from the
//! explicit H (largest |eigenvalue|, [`spectral_norm`]) and tested against λ₁ at every θ.
//!
//! The rotation family is the paper's: R(θ) = exp(θA) with A = S − Sᵀ skew-symmetric and S Gaussian
//! (Xie et al. §4.1, the unnumbered definition of R_θ; the text available to this project lost the
//! formulas). Xie et al. draw S_ij ~ N(0, 1); here S_ij ~ N(0, 1/d), so the eigenvalues ±iω of A fill
//! [−2√2, 2√2] whatever d is and θ has the same meaning at every size (θ = 0: R = I; θ ≳ 3: R is, in
//! distribution, close to a Haar-random rotation). **Mapping to the paper's θ:** our A is the N(0, 1)
//! generator divided by √d, so exp(θA) here is the paper's R at θ_paper = θ/√d, i.e. θ = √d·θ_paper
//! (θ scales by √d; at d = 500, θ = 10 here is θ_paper ≈ 0.447 and θ_paper = 1 is θ ≈ 22.4). The table
//! prints θ/√d next to θ. R is computed in f64 by scaling and squaring with a Taylor series ([`expm`]);
//! RRᵀ = I and det R = 1 are tested.
//!
//! Each seed s draws z₀ ~ N(0, I_d) and x* ~ N(0, I_d) and starts from x₀ = x* + R(θ)ᵀ z₀, so in the
//! eigenbasis of H every θ starts from the same point z₀ with the same loss ½ Σ λ_i z₀ᵢ² (the paper starts
//! from the rotated initial point for this reason). The gradient is exact (no noise): ∇f = H (x − x*).
//! SGD (with or without momentum) and AdaSGD are rotation-equivariant, so their iterates satisfy
//! R(θ)(x_t − x*) = z_t for every θ and their final losses do not depend on θ (up to roundoff; tested).
//! Adam's division is coordinate-wise: its loss grows as H stops being diagonal, which is what the
//! (1,1)-norm measures (Xie et al. Corollary 3.7). At θ = 0, H = Λ is exactly diagonal, while a rotated H
//! carries roundoff of ~1e-13; Adam's and AdaSGD's late, oscillating phase at a constant learning rate
//! is sensitive to it, which flatters their θ = 0 cells at β₁ = 0 (measured and bounded in
//! `docs/experiments.md`).
//!
//! Optimizers: the project's own ([`crate::optim`], the chains of transforms the GPT-2 runs use), on the
//! f64 CPU backend, no weight decay, constant learning rate, bias-corrected moments, t counted from 1.
//! Every optimizer runs at every β₁ of `--beta1s` (default 0 and 0.9, [`DEFAULT_BETA1S`]):
//! - Adam (β₂ = `--beta2`, ε = `--eps`): scale_by_adam → step;
//! - AdaSGD: one second moment v = EMA_β₂ of mean_i g_i², first moment m = EMA_β₁ of g,
//!   u = m̂ / (√v̂ + ε): scale_by_block_adam (one block) → step;
//! - SGD with heavy-ball momentum μ = β₁ (torch semantics, buf = μ·buf + g; μ = 0 is plain gradient
//!   descent): momentum → step. Its buffer sums gradients where Adam's m averages them, so its step is
//!   1/(1 − μ) times an EMA's at the same lr; the per-cell lr tuning absorbs the factor.
//!
//! Each optimizer runs at every learning rate of the grid for every seed; its row in the table is the
//! learning rate with the lowest mean final loss over seeds (a diverged run counts as +∞), with the mean
//! ± sample standard deviation over seeds.
//!
//! All runs of one θ advance in lockstep: the rows of X (runs × d) are the iterates, the gradients of all
//! runs are one GEMM G = (X − X*) H (H is symmetric), then each row takes its optimizer's step.
//!
//! Where this deviates from the paper (whose text available to us lost its formulas): the
//! spectra, the variance of S (1/d, so θ is size-independent; mapping above), d, the step count,
//! β₂ = 0.99, and the θ and learning-rate grids are this project's choices, stated in
//! `docs/experiments.md`; the procedure (rotation family, rotated start, per-setting lr tuning over
//! seeds, mean ± std) is the paper's.

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
use serde::ser::SerializeStruct;
use serde::Serialize;
use std::path::Path;
use std::str::FromStr;

/// Default θ grid: 0 (no rotation), then log-spaced up to a near-random rotation.
pub const DEFAULT_THETAS: [f64; 8] = [0.0, 0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0];

/// Default β₁ values, each run by every optimizer (SGD's momentum μ = β₁).
pub const DEFAULT_BETA1S: [f64; 2] = [0.0, 0.9];

/// Default learning-rate grid: 10^(k/2) for k = −8 … 2, i.e. 1e-4 … 10 in half-decades.
pub fn default_lrs() -> Vec<f64> {
    (-8..=2).map(|k| 10f64.powf(k as f64 / 2.0)).collect()
}

/// The spectrum Λ of H (`--spectrum`; module docs). Serialized as `{"name", "formula"}`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Spectrum {
    /// λ_i = i⁻² (the default): ‖H‖₍₁,₁₎/d < ‖H‖₂ at every θ.
    InvSquare,
    /// λ_i = i^(−1/2): ‖H‖₍₁,₁₎/d > ‖H‖₂ under a random rotation.
    InvSqrt,
    /// λ_i = 1: H = I at every θ.
    Flat,
}

impl Spectrum {
    pub const ALL: [Spectrum; 3] = [Spectrum::InvSquare, Spectrum::InvSqrt, Spectrum::Flat];

    /// The `--spectrum` value.
    pub fn name(self) -> &'static str {
        match self {
            Spectrum::InvSquare => "inv-square",
            Spectrum::InvSqrt => "inv-sqrt",
            Spectrum::Flat => "flat",
        }
    }

    /// The formula, in ASCII.
    pub fn formula(self) -> &'static str {
        match self {
            Spectrum::InvSquare => "lambda_i = i^-2, i = 1..d",
            Spectrum::InvSqrt => "lambda_i = i^-1/2, i = 1..d",
            Spectrum::Flat => "lambda_i = 1, i = 1..d",
        }
    }

    /// λ₁ … λ_d, descending, λ₁ = 1 = ‖H‖₂.
    pub fn values(self, d: usize) -> Vec<f64> {
        (1..=d)
            .map(|i| {
                let i = i as f64;
                match self {
                    Spectrum::InvSquare => 1.0 / (i * i),
                    Spectrum::InvSqrt => 1.0 / i.sqrt(),
                    Spectrum::Flat => 1.0,
                }
            })
            .collect()
    }
}

impl FromStr for Spectrum {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Spectrum::ALL
            .into_iter()
            .find(|k| k.name() == s)
            .ok_or_else(|| {
                Error::config(
                    "--spectrum",
                    format!(
                        "{s:?} (expected one of {})",
                        Spectrum::ALL.map(|k| k.name()).join(", ")
                    ),
                )
            })
    }
}

impl std::fmt::Display for Spectrum {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.name(), self.formula())
    }
}

impl Serialize for Spectrum {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        let mut st = s.serialize_struct("Spectrum", 2)?;
        st.serialize_field("name", self.name())?;
        st.serialize_field("formula", self.formula())?;
        st.end()
    }
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
    pub seed: u64,
    pub threads: usize,
    pub spectrum: Spectrum,
    /// "S_ij ~ N(0, 1/d), A = S - S^T, R = exp(theta A)".
    pub rotation: String,
    /// Every optimizer at every β₁ ([`QuadOpt::grid`]).
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
            seed: 0,
            threads: crate::config::default_threads(),
            spectrum: Spectrum::InvSquare,
            rotation: "S_ij ~ N(0, 1/d), A = S - S^T, R = exp(theta A)".into(),
            optimizers: QuadOpt::grid(&DEFAULT_BETA1S),
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
        let beta1s: Vec<f64> = self.optimizers.iter().map(|o| o.beta1()).collect();
        if self.optimizers.is_empty() || beta1s.iter().any(|b| !(0.0..1.0).contains(b)) {
            return bad(
                "--beta1s",
                format!("{beta1s:?} (expected at least one, each 0 ≤ β₁ < 1)"),
            );
        }
        if let Some(o) = (1..self.optimizers.len())
            .find(|&i| self.optimizers[..i].contains(&self.optimizers[i]))
            .map(|i| self.optimizers[i])
        {
            return bad("--beta1s", format!("{} appears twice", o.name()));
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

/// The optimizers compared, each with its β₁.
#[derive(Clone, Copy, Debug, Serialize, PartialEq)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum QuadOpt {
    /// Adam with this β₁ (β₂, ε from the config).
    Adam { beta1: f64 },
    /// AdaSGD with this β₁: one scalar second moment (mean of g² over coordinates).
    AdaSgd { beta1: f64 },
    /// SGD with heavy-ball momentum μ (torch semantics), the analogue of β₁.
    Sgd { momentum: f64 },
}

impl QuadOpt {
    /// Adam, AdaSGD and SGD (momentum μ = β₁), each at every β₁ of `beta1s`, in that order.
    pub fn grid(beta1s: &[f64]) -> Vec<QuadOpt> {
        let mut v: Vec<QuadOpt> = beta1s.iter().map(|&b| QuadOpt::Adam { beta1: b }).collect();
        v.extend(beta1s.iter().map(|&b| QuadOpt::AdaSgd { beta1: b }));
        v.extend(beta1s.iter().map(|&b| QuadOpt::Sgd { momentum: b }));
        v
    }
    /// β₁ (SGD: its momentum μ).
    pub fn beta1(&self) -> f64 {
        match *self {
            QuadOpt::Adam { beta1 } | QuadOpt::AdaSgd { beta1 } => beta1,
            QuadOpt::Sgd { momentum } => momentum,
        }
    }
    /// "adam", "adasgd" or "sgd" (the JSON tag).
    pub fn kind(&self) -> &'static str {
        match self {
            QuadOpt::Adam { .. } => "adam",
            QuadOpt::AdaSgd { .. } => "adasgd",
            QuadOpt::Sgd { .. } => "sgd",
        }
    }
    /// Display name.
    pub fn name(&self) -> String {
        match self {
            QuadOpt::Adam { beta1 } => format!("Adam β1={beta1}"),
            QuadOpt::AdaSgd { beta1 } => format!("AdaSGD β1={beta1}"),
            QuadOpt::Sgd { momentum } => format!("SGD μ={momentum}"),
        }
    }
}

// ---- the problem -----------------------------------------------------------------------------------------

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

/// ‖H‖₂ = max |eigenvalue| of the symmetric row-major d×d matrix `h`, from its eigenvalues (faer's
/// symmetric eigensolver, backward stable: the error is O(d·u·‖H‖₂)).
pub fn spectral_norm(h: &[f64], d: usize) -> Result<f64> {
    assert_eq!(
        h.len(),
        d * d,
        "spectral_norm: {} entries for d = {d}",
        h.len()
    );
    let m = faer::Mat::<f64>::from_fn(d, d, |i, j| h[i * d + j]);
    let ev = m
        .self_adjoint_eigenvalues(faer::Side::Lower)
        .map_err(|e| Error::config("quadratic", format!("eigensolver failed: {e:?}")))?;
    Ok(ev.iter().fold(0.0, |a: f64, v| a.max(v.abs())))
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

/// Hyper-parameters shared by the runs of one experiment (β₁ and SGD's momentum are the optimizer's own,
/// [`QuadOpt`]).
#[derive(Clone, Copy, Debug)]
pub struct OptHyper {
    pub beta2: f64,
    pub eps: f64,
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
            QuadOpt::AdaSgd { beta1 } => (
                OptimizerKind::Adasgd,
                Transform::ScaleByBlockAdam {
                    beta1,
                    beta2,
                    eps,
                    blocks: Blocks::Whole,
                },
            ),
            QuadOpt::Sgd { momentum } => (OptimizerKind::Sgd, Transform::Momentum { momentum }),
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
    /// θ/√d: the same rotation for Xie et al.'s generator S_ij ~ N(0, 1) (module docs).
    pub theta_paper: f64,
    /// ‖H‖₍₁,₁₎ from the explicit matrix.
    pub h_norm_11: f64,
    /// ‖H‖₍₁,₁₎ / d.
    pub h_norm_11_over_d: f64,
    /// ‖H‖₂ = max |eigenvalue| of the explicit matrix ([`spectral_norm`]).
    pub h_norm_2: f64,
    /// max λ_i of the spectrum: ‖H‖₂ at every θ in exact arithmetic (rotation invariance).
    pub lambda_max: f64,
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
        let p = Problem::new(&a, cfg.spectrum.values(d), theta, cfg.threads);
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
            theta_paper: theta / (d as f64).sqrt(),
            h_norm_11: n11,
            h_norm_11_over_d: n11 / d as f64,
            h_norm_2: spectral_norm(&p.h, d)?,
            lambda_max: p.lambda.iter().cloned().fold(0.0, f64::max),
            orthogonality_error: orthogonality_error(&p.r, d, cfg.threads),
            initial_loss_mean: mean_std(&init).0,
            results,
        };
        log(&format!(
            "theta {theta}: |H|_11/d = {:.4}, |H|_2 = {:.4}, {}  ({:.1} s)",
            tr.h_norm_11_over_d,
            tr.h_norm_2,
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
    // The magnitude as printed (3 significant digits), so that 0.99996 prints as 1.00, not 1.000.
    let a: f64 = format!("{:.2e}", v.abs()).parse().unwrap_or(v.abs());
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

/// θ as given, in scientific notation when below 1e-3 (but not 0).
fn fmt_theta(t: f64) -> String {
    if t == 0.0 || t >= 1e-3 {
        format!("{t}")
    } else {
        format!("{t:e}")
    }
}

/// The θ values at which ‖H‖₍₁,₁₎/d > ‖H‖₂: the regime where Xie et al. (§4.1, after
/// Theorem 3.11) expect AdaSGD to beat Adam.
pub fn thetas_l11_over_d_above_spectral(res: &QuadResults) -> Vec<f64> {
    res.thetas
        .iter()
        .filter(|t| t.h_norm_11_over_d > t.h_norm_2)
        .map(|t| t.theta)
        .collect()
}

/// The Markdown table: θ, θ/√d, ‖H‖₍₁,₁₎, ‖H‖₍₁,₁₎/d, ‖H‖₂, then per optimizer "mean ± std (lr)"; a
/// footer with every setting.
pub fn markdown_table(res: &QuadResults) -> String {
    let mut s = String::new();
    let opts: Vec<String> = res
        .thetas
        .first()
        .map(|t| t.results.iter().map(|r| r.optimizer.clone()).collect())
        .unwrap_or_default();
    s.push_str("| θ | θ/√d | ‖H‖₍₁,₁₎ | ‖H‖₍₁,₁₎/d | ‖H‖₂ |");
    for o in &opts {
        s.push_str(&format!(" {o}: final loss (lr) |"));
    }
    s.push('\n');
    s.push_str("|---|---|---|---|---|");
    for _ in &opts {
        s.push_str("---|");
    }
    s.push('\n');
    for t in &res.thetas {
        s.push_str(&format!(
            "| {} | {} | {} | {} | {} |",
            fmt_theta(t.theta),
            if t.theta_paper == 0.0 {
                "0".to_string()
            } else {
                sig3(t.theta_paper)
            },
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
    let above = thetas_l11_over_d_above_spectral(res);
    let regime = if above.is_empty() {
        "at no θ of the grid".to_string()
    } else {
        format!(
            "at θ ∈ {{{}}}",
            above
                .iter()
                .map(|&t| fmt_theta(t))
                .collect::<Vec<_>>()
                .join(", ")
        )
    };
    let mut beta1s: Vec<f64> = Vec::new();
    for b in c.optimizers.iter().map(|o| o.beta1()) {
        if !beta1s.contains(&b) {
            beta1s.push(b);
        }
    }
    s.push_str(&format!(
        "\nd = {}, {} steps, {} seeds, spectrum {}; {}; θ/√d is the same rotation for Xie et al.'s \
         S_ij ~ N(0, 1) (§4.1); ‖H‖₂ measured (max |eigenvalue| of H); ‖H‖₍₁,₁₎/d > ‖H‖₂ {regime}; \
         β₁ ∈ {{{}}} for every optimizer (SGD: heavy-ball momentum μ = β₁), Adam/AdaSGD β₂ = {}, ε = {:e}; \
         best lr of {} per cell (mean ± sample std over seeds of the final loss f(x_T)); {:.1} s.\n",
        c.dim,
        c.steps,
        c.seeds,
        c.spectrum,
        c.rotation,
        beta1s
            .iter()
            .map(|b| b.to_string())
            .collect::<Vec<_>>()
            .join(", "),
        c.beta2,
        c.eps,
        c.lrs.iter().map(|l| sig3(*l)).collect::<Vec<_>>().join(", "),
        res.seconds
    ));
    s
}

/// The figure: final loss (mean ± std over seeds, at each optimizer's best lr) against θ, log y; θ is
/// drawn as a category axis (θ = 0 has no place on a log axis). One colour per optimizer, solid for its
/// largest β₁ and dashed for the others.
pub fn figure(res: &QuadResults) -> LineChart {
    let names: Vec<String> = res.thetas.iter().map(|t| fmt_theta(t.theta)).collect();
    let opts: Vec<QuadOpt> = res
        .thetas
        .first()
        .map(|t| t.results.iter().map(|r| r.spec).collect())
        .unwrap_or_default();
    let kinds = ["adam", "adasgd", "sgd"];
    let series = opts
        .iter()
        .enumerate()
        .map(|(oi, opt)| {
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
            let colour = kinds.iter().position(|k| *k == opt.kind()).unwrap_or(0);
            let top = opts
                .iter()
                .filter(|o| o.kind() == opt.kind())
                .map(|o| o.beta1())
                .fold(f64::NEG_INFINITY, f64::max);
            let s = Series::mean_std_bars(&opt.name(), &stats).color(colour);
            if opt.beta1() < top {
                s.dashed()
            } else {
                s
            }
        })
        .collect();
    let mut axes = Axes::new(
        &format!(
            "Rotated quadratic (Xie et al. §4.1), {}, d = {}, {} steps",
            res.config.spectrum.name(),
            res.config.dim,
            res.config.steps
        ),
        "θ  (R = exp(θA); the paper's θ is θ/√d)",
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
        "quadratic: spectrum {}, d = {}, {} steps, {} seeds, {} thetas × {} optimizers × {} lrs ({} runs)",
        cfg.spectrum,
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
