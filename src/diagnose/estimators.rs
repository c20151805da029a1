//! Estimators of rotation-dependent properties of a Hessian H that is only available through
//! Hessian-vector products. Every estimator takes the HVP as a closure
//! `hvp: FnMut(&[f64], &mut [f64]) -> Result<()>` (`hvp(v, out)` writes `out = H·v`), so the same code runs
//! on GPT-2 (`super::hvp::Gpt2Hvp`, in any rotated basis) and on any function whose Hessian is known in
//! closed form (a quadratic: `|v, out| { out = A·v; Ok(()) }`), which is how the estimators are tested.
//!
//! - [`l11`]: ‖H‖₍₁,₁₎ = Σᵢ Σⱼ |Hᵢⱼ| by Cauchy probes (Xie, Mohamadi & Li, §4 and App. D.2, Alg. 4). For
//!   c with i.i.d. standard Cauchy entries, (Hc)ᵢ = Σⱼ Hᵢⱼ cⱼ is Cauchy with scale sᵢ = Σⱼ |Hᵢⱼ| (1-stability),
//!   so the median of |(Hc)ᵢ| over probes estimates sᵢ, and Σᵢ sᵢ = ‖H‖₍₁,₁₎. Two reductions over the same
//!   probes: the coordinate-wise **median** (Xie et al.; needs all K·d values) and a **streaming**
//!   geometric mean with O(d) memory: for X Cauchy with scale s, E[log|X|] = log s, so
//!   ŝᵢ = exp(mean_k log|(Hc_k)ᵢ|). Both have the same asymptotic spread per coordinate, π/(2√K) relative
//!   (median: 1/(2f(s)√K) with density f(s) = 1/(πs) of |X| at its median; log: Var log|X| = π²/4).
//! - [`lanczos`]: extreme eigenvalues by Lanczos with full re-orthogonalisation (‖H‖₂ = max |λ|), stopped on
//!   a residual tolerance, with the residual ‖Hy − θy‖ of the extreme Ritz pairs.
//! - [`hessian_row`]: Hᵢ = H·eᵢ (H is symmetric) and [`decompose`]: ⟨d, Hᵢ⟩ split into the neuron / layer /
//!   non-layer parts of Maes et al. App. D.5.2.
//! - [`linf`]: ‖x‖∞, the quantity behind the L∞ gradient bound.

use crate::error::{Error, Result};
use crate::rng::Rng;
use serde::Serialize;

/// Stream id ([`Rng::derive`]) of the Cauchy probes.
pub const STREAM_CAUCHY: u64 = 0xD1A6_0001;
/// Stream id of the Lanczos start vector.
pub const STREAM_LANCZOS: u64 = 0xD1A6_0002;

/// ‖x‖∞ = maxᵢ |xᵢ| (0 for an empty slice; NaN if any entry is NaN).
pub fn linf(x: &[f64]) -> f64 {
    x.iter().fold(0.0f64, |m, &v| {
        if v.is_nan() || m.is_nan() {
            f64::NAN
        } else {
            m.max(v.abs())
        }
    })
}

/// A standard Cauchy draw: tan(π(u − ½)) for u uniform in (0, 1). The project's `Rng::uniform` lies in
/// [0, 1) on a grid of 2⁻⁵³; it is shifted by half a grid step so u is never 0 (tan(−π/2)) and the draw is
/// symmetric. Inverse-CDF sampling: the Cauchy CDF is F(x) = ½ + arctan(x)/π.
pub fn standard_cauchy(rng: &mut Rng) -> f64 {
    let u = rng.uniform() + 0.5 / (1u64 << 53) as f64;
    (std::f64::consts::PI * (u - 0.5)).tan()
}

/// Which reductions of the Cauchy probes to compute.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum L11Method {
    Auto,
    Median,
    Streaming,
    Both,
}

impl crate::config::Choice for L11Method {
    const WHAT: &'static str = "l11-method";
    const VALUES: &'static [(Self, &'static str, &'static str)] = &[
        (
            L11Method::Auto,
            "auto",
            "the median when K·d·8 bytes fit in --max-memory, plus the streaming estimate; else streaming",
        ),
        (
            L11Method::Median,
            "median",
            "Xie et al.'s coordinate-wise median (K·d f64 values in memory)",
        ),
        (
            L11Method::Streaming,
            "streaming",
            "the geometric-mean estimator, O(d) memory",
        ),
        (
            L11Method::Both,
            "both",
            "both on the same probes (an error if the median does not fit)",
        ),
    ];
}
crate::config::choice_impls!(L11Method);

/// One estimate of ‖H‖₍₁,₁₎.
#[derive(Clone, Debug, Serialize)]
pub struct L11Estimate {
    /// `median` or `geometric-mean`.
    pub method: &'static str,
    /// Number of Cauchy probes (HVPs) K.
    pub probes: usize,
    /// Σᵢ ŝᵢ, the estimate of ‖H‖₍₁,₁₎.
    pub norm: f64,
    /// ‖H‖₍₁,₁₎ / d.
    pub norm_per_dim: f64,
    /// Coordinates whose estimate is exactly 0 (see [`l11`] for the rule).
    pub zero_rows: usize,
    /// ŝᵢ, the estimated absolute row sums Σⱼ |Hᵢⱼ| (not serialised: d numbers).
    #[serde(skip)]
    pub row_sums: Vec<f64>,
}

/// Both reductions of one run of probes.
#[derive(Clone, Debug, Serialize)]
pub struct L11Report {
    pub dim: usize,
    pub probes: usize,
    pub seed: u64,
    /// Bytes the median needs (K·d·8).
    pub median_bytes: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub median: Option<L11Estimate>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub streaming: Option<L11Estimate>,
}

impl L11Report {
    /// The preferred estimate: the median when computed, else the streaming one.
    pub fn best(&self) -> &L11Estimate {
        self.median
            .as_ref()
            .or(self.streaming.as_ref())
            .expect("at least one estimator ran")
    }
}

/// The median of `x` (mean of the two middle values for an even length); reorders `x`.
fn median_in_place(x: &mut [f64]) -> f64 {
    let n = x.len();
    let cmp = |a: &f64, b: &f64| a.total_cmp(b);
    let (_, hi, _) = x.select_nth_unstable_by(n / 2, cmp);
    let hi = *hi;
    if n % 2 == 1 {
        return hi;
    }
    let lo = x[..n / 2].iter().copied().fold(f64::NEG_INFINITY, f64::max);
    0.5 * (lo + hi)
}

fn estimate(method: &'static str, probes: usize, row_sums: Vec<f64>) -> L11Estimate {
    let norm: f64 = row_sums.iter().sum();
    L11Estimate {
        method,
        probes,
        norm,
        norm_per_dim: norm / row_sums.len().max(1) as f64,
        zero_rows: row_sums.iter().filter(|&&s| s == 0.0).count(),
        row_sums,
    }
}

/// ‖H‖₍₁,₁₎ of the d×d symmetric H behind `hvp`, from K = `probes` HVPs with i.i.d. standard Cauchy vectors
/// drawn from `Rng::derive(seed, STREAM_CAUCHY)` (probe k is drawn entirely before probe k+1).
///
/// - median: ŝᵢ = median_k |(H c_k)ᵢ|; needs K·d·8 bytes, refused (with a pointer to the streaming
///   estimator) above `max_bytes` unless `method` is `Auto`, which then runs streaming only;
/// - streaming: ŝᵢ = exp((1/K) Σ_k log|(H c_k)ᵢ|), d sums of logs and d zero flags.
///
/// **Exact zeros.** (Hc)ᵢ = 0 has probability 0 for a Cauchy with scale sᵢ > 0, so an exact 0 comes from a
/// zero row of H (e.g. the position embeddings beyond the batch's T) or from the HVP's rounding (a
/// central difference of a gradient entry that did not change in its last bit). The streaming estimator
/// counts zeros per coordinate (O(d) u32s) and follows the median: ŝᵢ = 0 when at least half the samples
/// are exactly 0 (the median of |Hc|ᵢ is then 0 too), else the geometric mean over the non-zero samples
/// (log 0 = −∞ would otherwise force 0 for one stray zero).
/// `zero_rows` counts such coordinates.
pub fn l11<F>(
    mut hvp: F,
    d: usize,
    probes: usize,
    seed: u64,
    method: L11Method,
    max_bytes: u64,
) -> Result<L11Report>
where
    F: FnMut(&[f64], &mut [f64]) -> Result<()>,
{
    if probes == 0 {
        return Err(Error::config("probes", "must be at least 1"));
    }
    let median_bytes = (probes as u64).saturating_mul(d as u64).saturating_mul(8);
    let fits = median_bytes <= max_bytes;
    let (want_median, want_streaming) = match method {
        L11Method::Auto => (fits, true),
        L11Method::Median => (true, false),
        L11Method::Streaming => (false, true),
        L11Method::Both => (true, true),
    };
    if want_median && !fits {
        return Err(Error::config(
            "max-memory",
            format!(
                "the median estimator keeps K x d = {probes} x {d} values ({:.2} GB) but --max-memory is {:.2} GB; \
                 raise --max-memory, lower --probes, or use --l11-method streaming (O(d) memory)",
                median_bytes as f64 / 1e9,
                max_bytes as f64 / 1e9
            ),
        ));
    }
    let mut rng = Rng::derive(seed, STREAM_CAUCHY);
    let mut c = vec![0.0; d];
    let mut hc = vec![0.0; d];
    let mut samples: Vec<f64> = if want_median {
        Vec::with_capacity(probes * d)
    } else {
        Vec::new()
    };
    let (mut sum_log, mut zeros) = if want_streaming {
        (vec![0.0f64; d], vec![0u32; d])
    } else {
        (Vec::new(), Vec::new())
    };
    for _ in 0..probes {
        for x in c.iter_mut() {
            *x = standard_cauchy(&mut rng);
        }
        hvp(&c, &mut hc)?;
        if want_median {
            samples.extend(hc.iter().map(|x| x.abs()));
        }
        if want_streaming {
            for ((s, z), &x) in sum_log.iter_mut().zip(zeros.iter_mut()).zip(&hc) {
                if x == 0.0 {
                    *z += 1;
                } else {
                    *s += x.abs().ln();
                }
            }
        }
    }
    let median = want_median.then(|| {
        let mut col = vec![0.0; probes];
        let sums = (0..d)
            .map(|i| {
                for (k, x) in col.iter_mut().enumerate() {
                    *x = samples[k * d + i];
                }
                median_in_place(&mut col)
            })
            .collect();
        estimate("median", probes, sums)
    });
    let streaming = want_streaming.then(|| {
        let sums = sum_log
            .iter()
            .zip(&zeros)
            .map(|(&s, &z)| {
                let z = z as usize;
                if 2 * z >= probes {
                    0.0
                } else {
                    (s / (probes - z) as f64).exp()
                }
            })
            .collect();
        estimate("geometric-mean", probes, sums)
    });
    Ok(L11Report {
        dim: d,
        probes,
        seed,
        median_bytes,
        median,
        streaming,
    })
}

/// How far [`lanczos`] goes: at most `max_steps` steps, fewer once both extreme Ritz pairs have a
/// residual ‖Hy − θy‖ ≤ `tol`·|θ|.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LanczosOptions {
    pub max_steps: usize,
    pub tol: f64,
}

/// One extreme Ritz pair (θ, y) of [`lanczos`] and how well it solves Hy = θy.
#[derive(Clone, Debug, Serialize)]
pub struct RitzPair {
    /// θ, the Ritz value.
    pub value: f64,
    /// ‖Hy − θy‖₂ for the unit Ritz vector y = Q·s, with Hy from one more HVP (so it includes the HVP's
    /// own error, which the Lanczos estimate does not see).
    pub residual: f64,
    /// residual / |θ| (∞ for θ = 0 with a non-zero residual).
    pub relative_residual: f64,
    /// βₖ·|sₖ|, the residual the Lanczos relation HQₖ = QₖTₖ + βₖqₖ₊₁eₖᵀ gives without an HVP (what the
    /// early stop looks at).
    pub residual_lanczos: f64,
    /// residual ≤ tol·|θ|.
    pub converged: bool,
    /// y (not serialised: d numbers).
    #[serde(skip)]
    pub vector: Vec<f64>,
}

/// Why [`lanczos`] stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum LanczosStop {
    /// Both extreme pairs reached the tolerance (by the Lanczos estimate βₖ|sₖ|).
    Tolerance,
    /// βₖ ≈ 0: the Krylov space is invariant, the Ritz values are eigenvalues.
    InvariantSubspace,
    /// `max_steps` (or d) steps without reaching the tolerance.
    MaxSteps,
}

/// The result of [`lanczos`].
#[derive(Clone, Debug, Serialize)]
pub struct LanczosResult {
    /// Lanczos steps taken (HVPs, not counting the two of the residuals).
    pub iterations: usize,
    /// The step limit and the tolerance asked for.
    pub max_steps: usize,
    pub tol: f64,
    pub stop: LanczosStop,
    /// Both extreme pairs have residual ≤ tol·|θ| (measured with an HVP on the Ritz vectors).
    pub converged: bool,
    /// The largest and smallest Ritz values (estimates of λ_max, λ_min of H).
    pub lambda_max: f64,
    pub lambda_min: f64,
    /// ‖H‖₂ = max(|λ_max|, |λ_min|).
    pub spectral_norm: f64,
    /// The Ritz pairs of λ_max and λ_min.
    pub max_pair: RitzPair,
    pub min_pair: RitzPair,
    /// The seed of the start vector (`Rng::derive(seed, STREAM_LANCZOS)`, Gaussian).
    pub seed: u64,
}

/// The eigenpairs of the symmetric tridiagonal tridiag(β, α, β): eigenvalues ascending, eigenvectors as
/// the columns of a row-major n×n matrix.
fn tridiagonal_eigen(alpha: &[f64], beta: &[f64]) -> Result<(Vec<f64>, Vec<f64>)> {
    let n = alpha.len();
    let t = faer::Mat::<f64>::from_fn(n, n, |i, j| {
        if i == j {
            alpha[i]
        } else if i == j + 1 {
            beta[j]
        } else if j == i + 1 {
            beta[i]
        } else {
            0.0
        }
    });
    let e = t
        .self_adjoint_eigen(faer::Side::Lower)
        .map_err(|e| Error::config("lanczos", format!("eigensolver failed: {e:?}")))?;
    let values: Vec<f64> = (0..n).map(|i| e.S().column_vector()[i]).collect();
    let u = e.U();
    let vectors: Vec<f64> = (0..n * n).map(|k| u[(k / n, k % n)]).collect();
    Ok((values, vectors))
}

/// Extreme eigenvalues of the symmetric H behind `hvp` by Lanczos from a seeded Gaussian start vector, with
/// full re-orthogonalisation (classical Gram–Schmidt applied twice against every stored vector, "twice is
/// enough"), so memory is steps·d values: the basis Qₖ is kept, which is also what gives the Ritz vectors
/// y = Qₖs without a second pass. The Ritz values are the eigenvalues of Tₖ = tridiag(β, α, β) (faer's
/// self-adjoint eigensolver).
///
/// **When it stops.** After step k, the Lanczos relation H Qₖ = Qₖ Tₖ + βₖ qₖ₊₁ eₖᵀ gives each Ritz pair's
/// residual as ‖Hy − θy‖ = βₖ|sₖ| (sₖ the last entry of Tₖ's eigenvector; exact with full
/// re-orthogonalisation up to rounding). The loop stops when both extreme pairs have βₖ|sₖ| ≤ tol·|θ|, when
/// βₖ ≤ 1e-10·maxₖ|αₖ| (an invariant subspace: the Ritz values are then exact eigenvalues), or after
/// `max_steps` (at most d) steps. Then each extreme pair's residual is measured with one more HVP, Hy − θy,
/// and `converged` says whether both are within tol·|θ|: a λ_min still moving after the last step shows as
/// `converged: false` with its residual, which bounds the distance from θ to the nearest eigenvalue
/// (|λ − θ| ≤ ‖Hy − θy‖ for a unit y and symmetric H).
pub fn lanczos<F>(mut hvp: F, d: usize, opts: LanczosOptions, seed: u64) -> Result<LanczosResult>
where
    F: FnMut(&[f64], &mut [f64]) -> Result<()>,
{
    if opts.max_steps == 0 || d == 0 {
        return Err(Error::config(
            "lanczos-iters",
            "need at least 1 iteration and a non-empty H",
        ));
    }
    if !(opts.tol.is_finite() && opts.tol >= 0.0) {
        return Err(Error::config(
            "lanczos-tol",
            format!("{} must be a finite number ≥ 0", opts.tol),
        ));
    }
    let m = opts.max_steps.min(d);
    let mut rng = Rng::derive(seed, STREAM_LANCZOS);
    let mut q: Vec<f64> = (0..d).map(|_| rng.normal()).collect();
    let nq = norm2(&q);
    q.iter_mut().for_each(|x| *x /= nq);
    let mut basis: Vec<Vec<f64>> = Vec::with_capacity(m);
    let mut alpha: Vec<f64> = Vec::with_capacity(m);
    let mut beta: Vec<f64> = Vec::with_capacity(m);
    let mut w = vec![0.0; d];
    let stop = loop {
        let k = alpha.len();
        hvp(&q, &mut w)?;
        let a = dot(&w, &q);
        alpha.push(a);
        basis.push(q.clone());
        for _ in 0..2 {
            for b in &basis {
                let p = dot(&w, b);
                w.iter_mut().zip(b).for_each(|(x, &y)| *x -= p * y);
            }
        }
        let bnorm = norm2(&w);
        let scale = alpha.iter().fold(0.0f64, |s, a| s.max(a.abs()));
        if bnorm <= 1e-10 * scale.max(f64::MIN_POSITIVE) {
            break LanczosStop::InvariantSubspace;
        }
        // the residual estimates βₖ|sₖ| of the extreme pairs of Tₖ
        let (theta, s) = tridiagonal_eigen(&alpha, &beta)?;
        let n = alpha.len();
        let within = |j: usize| bnorm * s[(n - 1) * n + j].abs() <= opts.tol * theta[j].abs();
        if within(0) && within(n - 1) {
            break LanczosStop::Tolerance;
        }
        if k + 1 == m {
            break LanczosStop::MaxSteps;
        }
        beta.push(bnorm);
        q.iter_mut().zip(&w).for_each(|(x, &y)| *x = y / bnorm);
    };
    // β of the last step (0 at an invariant subspace): the Lanczos residual estimate's factor
    let last_beta = match stop {
        LanczosStop::InvariantSubspace => 0.0,
        _ => norm2(&w),
    };
    let (theta, s) = tridiagonal_eigen(&alpha, &beta)?;
    let n = alpha.len();
    let mut pair = |j: usize| -> Result<RitzPair> {
        let mut y = vec![0.0; d];
        for (i, qi) in basis.iter().enumerate() {
            let c = s[i * n + j];
            y.iter_mut().zip(qi).for_each(|(x, &v)| *x += c * v);
        }
        let ny = norm2(&y);
        y.iter_mut().for_each(|x| *x /= ny);
        let mut hy = vec![0.0; d];
        hvp(&y, &mut hy)?;
        let value = theta[j];
        let residual = hy
            .iter()
            .zip(&y)
            .map(|(h, v)| (h - value * v).powi(2))
            .sum::<f64>()
            .sqrt();
        let relative_residual = if residual == 0.0 {
            0.0
        } else {
            residual / value.abs()
        };
        Ok(RitzPair {
            value,
            residual,
            relative_residual,
            residual_lanczos: last_beta * s[(n - 1) * n + j].abs(),
            converged: residual <= opts.tol * value.abs(),
            vector: y,
        })
    };
    let max_pair = pair(n - 1)?;
    let min_pair = pair(0)?;
    let (lambda_max, lambda_min) = (max_pair.value, min_pair.value);
    Ok(LanczosResult {
        iterations: n,
        max_steps: opts.max_steps,
        tol: opts.tol,
        stop,
        converged: max_pair.converged && min_pair.converged,
        lambda_max,
        lambda_min,
        spectral_norm: lambda_max.abs().max(lambda_min.abs()),
        max_pair,
        min_pair,
        seed,
    })
}

/// Row i of the symmetric H: Hᵢ = H·eᵢ (one HVP with a one-hot vector, Maes et al. App. D.5.2).
pub fn hessian_row<F>(mut hvp: F, d: usize, i: usize) -> Result<Vec<f64>>
where
    F: FnMut(&[f64], &mut [f64]) -> Result<()>,
{
    if i >= d {
        return Err(Error::config(
            "rows",
            format!("index {i} is out of range (d = {d})"),
        ));
    }
    let mut e = vec![0.0; d];
    e[i] = 1.0;
    let mut out = vec![0.0; d];
    hvp(&e, &mut out)?;
    Ok(out)
}

/// ⟨d, Hᵢ⟩ split over three disjoint index sets (Maes et al. App. D.5.2, Tables 2 and 5).
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Contribution {
    /// ⟨d_neuron, H_i,neuron⟩: the coordinates of the neuron that holds coordinate i.
    pub neuron: f64,
    /// ⟨d_layer, H_i,layer⟩: the rest of the layer (tensor) holding i.
    pub layer: f64,
    /// ⟨d_non-layer, H_i,non-layer⟩: every other coordinate.
    pub non_layer: f64,
    /// ⟨d, Hᵢ⟩.
    pub total: f64,
}

/// Split ⟨dir, row⟩ into neuron / layer / non-layer parts. `neuron` lists the neuron's coordinates (a subset
/// of `layer`); `layer` is the layer's coordinate range. The three parts sum to the total up to rounding
/// (each is a separate sum; `total` is the full dot product).
pub fn decompose(
    row: &[f64],
    dir: &[f64],
    neuron: &[usize],
    layer: std::ops::Range<usize>,
) -> Contribution {
    assert_eq!(row.len(), dir.len(), "decompose: row and direction lengths");
    let neuron_part: f64 = neuron.iter().map(|&j| row[j] * dir[j]).sum();
    let layer_all: f64 = layer.clone().map(|j| row[j] * dir[j]).sum();
    let total = dot(row, dir);
    let outside: f64 = (0..layer.start)
        .chain(layer.end..row.len())
        .map(|j| row[j] * dir[j])
        .sum();
    Contribution {
        neuron: neuron_part,
        layer: layer_all - neuron_part,
        non_layer: outside,
        total,
    }
}

/// Σ aᵢbᵢ.
pub fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// ‖a‖₂.
pub fn norm2(a: &[f64]) -> f64 {
    dot(a, a).sqrt()
}
