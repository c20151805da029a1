//! Muon (Jordan et al. 2024, "Muon: An optimizer for hidden layers in neural networks"): for each 2-D
//! hidden weight W (m×n, stored (out, in)), momentum on its gradient, the momentum orthogonalized by a
//! Newton–Schulz iteration, the result scaled by √max(1, m/n):
//!
//!   buf ← μ·buf + G;   M = G + μ·buf (Nesterov) or buf;   O = NS₅(M / (‖M‖_F + 10⁻⁷));
//!   W ← W·(1 − lr·λ) − lr_muon(t)·√max(1, m/n)·O
//!
//! where NS₅ is five steps of the quintic X ← aX + (bA + cA²)X, A = XXᵀ, (a, b, c) = (3.4445, −4.7750,
//! 2.0315) (the coefficients of the post; for m > n the iteration runs on the n×n side, X ← aX + X(bA +
//! cA²) with A = XᵀX, which is the same map). The quintic does not converge to the orthogonal polar factor:
//! it pushes every singular value of the normalized input into a band around 1 quickly, which is what the
//! post designs it for ([`NS_COEFFS`]; the band measured here is in `docs/usage.md`).
//!
//! The embeddings (wte, also the tied head; wpe) and the 1-D tensors stay on AdamW, as Muon's authors do.
//! Both parts share one schedule: the step link applies the AdamW learning rate lr(t), and the Muon part's
//! direction carries the factor muon.lr / lr, so the Muon matrices move at muon.lr·lr(t)/lr. Decoupled
//! weight decay is the step link's, lr(t)·λ on every 2-D tensor (nanoGPT's decay group) for both parts.
//!
//! Every operation is an existing backend op (GEMM, scale, sums of squares, the momentum and update
//! steps), so Muon runs on every backend (the CPU, the kernel emulator, CUDA) with no kernel of its own.
//!
//! **Equivariance.** For orthogonal U (m×m), V (n×n), NS(UᵀMV) = Uᵀ·NS(M)·V exactly in exact arithmetic
//! (each step is a polynomial in XXᵀ times X, and ‖UᵀMV‖_F = ‖M‖_F), and momentum is linear: Muon in a
//! basis that rotates each weight on both sides (the `svd` rotation) takes the same steps on those
//! weights as Muon in the standard basis (tested to rounding).

use crate::backend::{Backend, Scalar};
use crate::error::Result;
use crate::model::ParamEntry;
use std::ops::Range;

/// (a, b, c) of the quintic Newton–Schulz step X ← aX + (bA + cA²)X (Jordan et al. 2024).
pub const NS_COEFFS: (f64, f64, f64) = (3.4445, -4.7750, 2.0315);

/// ε of the Frobenius normalization before the iteration (Jordan et al. 2024).
pub const NS_EPS: f64 = 1e-7;

/// Whether Muon updates this tensor: a 2-D weight that is not an embedding (the tied head is wte).
pub fn is_muon_weight(e: &ParamEntry) -> bool {
    e.is_matrix() && !e.role.is_embedding()
}

/// One tensor of the parameters, for Muon or for AdamW.
#[derive(Clone, Debug)]
pub struct Part {
    /// Where the tensor lies in the flat parameter buffer.
    pub range: Range<usize>,
    pub rows: usize,
    pub cols: usize,
    pub muon: bool,
    /// Where its state lies: in the momentum buffer (Muon's tensors, one after another) or in Adam's m
    /// and v (the others), so that each holds only the coordinates it serves.
    pub state: Range<usize>,
}

/// (coordinates on Muon, coordinates on AdamW) of `parts`: the lengths of the two state buffers.
pub fn state_lens(parts: &[Part]) -> (usize, usize) {
    let muon = parts.iter().filter(|p| p.muon).map(|p| p.range.len()).sum();
    let adam = parts
        .iter()
        .filter(|p| !p.muon)
        .map(|p| p.range.len())
        .sum();
    (muon, adam)
}

/// Work buffers of the iteration: two m·n matrices and two k×k, k = min(m, n), sized for the largest.
pub struct Scratch<BK: Backend> {
    x: BK::Buf,
    t: BK::Buf,
    a: BK::Buf,
    b: BK::Buf,
}

/// The sizes of the work buffers for `parts`: (the largest m·n, the largest min(m, n)²), at least 1.
fn scratch_sizes(parts: &[Part]) -> (usize, usize) {
    let muon = parts.iter().filter(|p| p.muon);
    let mn = muon.clone().map(|p| p.rows * p.cols).max().unwrap_or(0);
    let kk = muon.map(|p| p.rows.min(p.cols).pow(2)).max().unwrap_or(0);
    (mn.max(1), kk.max(1))
}

/// Elements the work buffers of `parts` hold (for the memory estimate).
pub fn scratch_len(parts: &[Part]) -> usize {
    let (mn, kk) = scratch_sizes(parts);
    2 * mn + 2 * kk
}

impl<BK: Backend> Scratch<BK> {
    pub fn new(be: &BK, parts: &[Part]) -> Result<Self> {
        let (mn, kk) = scratch_sizes(parts);
        Ok(Scratch {
            x: be.alloc(mn)?,
            t: be.alloc(mn)?,
            a: be.alloc(kk)?,
            b: be.alloc(kk)?,
        })
    }
}

/// The tensors of `entries` in order, each marked for Muon or AdamW, with its place in its state buffer.
pub fn parts(entries: &[ParamEntry]) -> Vec<Part> {
    let (mut at_muon, mut at_adam) = (0, 0);
    entries
        .iter()
        .filter(|e| !e.is_empty())
        .map(|e| {
            let muon = is_muon_weight(e);
            let at = if muon { &mut at_muon } else { &mut at_adam };
            let state = *at..*at + e.len();
            *at += e.len();
            Part {
                range: e.range(),
                rows: e.rows,
                cols: e.cols,
                muon,
                state,
            }
        })
        .collect()
}

/// Replaces the `rows`×`cols` row-major matrix M at `range` of `buf` by
/// `scale`·NS_steps(M / (‖M‖_F + ε)) (module docs).
#[allow(clippy::too_many_arguments)]
pub fn orthogonalize<BK: Backend>(
    be: &BK,
    buf: &mut BK::Buf,
    range: Range<usize>,
    rows: usize,
    cols: usize,
    steps: usize,
    scale: f64,
    s: &mut Scratch<BK>,
) -> Result<()> {
    let n = rows * cols;
    debug_assert_eq!(range.len(), n);
    let (a, b, c) = NS_COEFFS;
    let k = rows.min(cols);
    let kk = k * k;
    let zero = <BK::T as Scalar>::from_f64(0.0);
    let norm = be.sum_squares(be.view(buf, range.clone()))?.sqrt();
    // X = M / (‖M‖ + ε): the update op on a zeroed X, X − (−1/(‖M‖+ε))·M
    be.fill(be.view_mut(&mut s.x, 0..n), zero)?;
    be.apply_update(
        be.view_mut(&mut s.x, 0..n),
        be.view(buf, range.clone()),
        -1.0 / (norm + NS_EPS),
        0.0,
    )?;
    // C (m×n) = op(A)·op(B) with op(A) m×k and op(B) k×n, each operand the front of its buffer
    let gemm = |c: &mut BK::Buf,
                a: &BK::Buf,
                b: &BK::Buf,
                (m, n, k): (usize, usize, usize),
                trans_a: bool,
                trans_b: bool| {
        let (c, a, b) = (
            be.view_mut(c, 0..m * n),
            be.view(a, 0..m * k),
            be.view(b, 0..k * n),
        );
        be.gemm(c, a, b, m, n, k, trans_a, trans_b, false)
    };
    let wide = rows <= cols;
    for _ in 0..steps {
        let Scratch { x, t, a: am, b: bm } = s;
        // A = XXᵀ (k = m) or XᵀX (k = n)
        if wide {
            gemm(am, x, x, (k, k, cols), false, true)?;
        } else {
            gemm(am, x, x, (k, k, rows), true, false)?;
        }
        // B = c·A² + b·A
        gemm(bm, am, am, (k, k, k), false, false)?;
        be.scale(be.view_mut(bm, 0..kk), <BK::T as Scalar>::from_f64(c))?;
        be.apply_update(be.view_mut(bm, 0..kk), be.view(am, 0..kk), -b, 0.0)?;
        // T = BX (wide) or XB (tall), then T += a·X
        if wide {
            gemm(t, bm, x, (rows, cols, k), false, false)?;
        } else {
            gemm(t, x, bm, (rows, cols, k), false, false)?;
        }
        be.apply_update(be.view_mut(t, 0..n), be.view(x, 0..n), -a, 0.0)?;
        std::mem::swap(x, t);
    }
    be.fill(be.view_mut(buf, range.clone()), zero)?;
    be.apply_update(be.view_mut(buf, range), be.view(&s.x, 0..n), -scale, 0.0)
}
