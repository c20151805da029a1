//! Haar-random orthogonal matrices: the block R_n (and the residual blocks) of every rotation.
//!
//! Method (Mezzadri, "How to generate random matrices from the classical compact groups", Notices of the
//! AMS 54(5), 2007, §5): draw G (n×n) with i.i.d. N(0, 1) entries, factor G = QR, and multiply column j of
//! Q by sign(R[j][j]). The factorisation is made unique by asking diag(R) > 0; with that normalisation Q is
//! distributed by the Haar measure on O(n). A QR routine does not normalise this way: faer, like LAPACK,
//! uses Householder reflections with R[j][j] = −sign(pivot)·‖column‖, so its raw Q is NOT Haar (its first
//! column is −sign(G₁₁)·G₁/‖G₁‖, whose first entry is never positive). [`qr_q_unsigned`] returns that raw
//! Q so the tests can show the difference.
//!
//! Everything is computed in f64 (the callers cast to the backend's type after). Matrices are row-major.
//! Both determinants occur (O(n), not SO(n)): Adam is reflection-equivariant, so, as Maes et al. App. C.2
//! argue, the projection onto SO(n) is unnecessary.

use crate::backend::scalar::clear_upper_vector_state;
use crate::rng::Rng;
use faer::Mat;

/// An n×n Haar-random orthogonal matrix, row-major: QR of a standard Gaussian matrix (drawn row by row
/// from `rng`) with column j of Q multiplied by sign(R[j][j]) (Mezzadri 2007). `n = 1` gives ±1.
pub fn haar(n: usize, rng: &mut Rng) -> Vec<f64> {
    qr_of_gaussian(n, rng, true)
}

/// The Q factor of the same QR of a Gaussian matrix WITHOUT the sign correction. Not Haar-distributed;
/// kept only for the test that shows why the correction is needed.
pub fn qr_q_unsigned(n: usize, rng: &mut Rng) -> Vec<f64> {
    qr_of_gaussian(n, rng, false)
}

fn qr_of_gaussian(n: usize, rng: &mut Rng, sign_fix: bool) -> Vec<f64> {
    if n == 0 {
        return Vec::new();
    }
    let g: Vec<f64> = (0..n * n).map(|_| rng.normal()).collect();
    let gm = Mat::<f64>::from_fn(n, n, |i, j| g[i * n + j]);
    let qr = gm.qr();
    let q = qr.compute_Q();
    // faer's AVX-512 kernels leave the upper vector state dirty, which makes the legacy-SSE code that runs
    // next (libm's ln/cos in the next Gaussian draw, measured 16 ms → 208 ms for 768² normals) much slower;
    // clear it on this thread and on every thread of the pool, as `Scalar::gemm` does.
    clear_upper_vector_state();
    rayon::broadcast(|_| clear_upper_vector_state());
    let r = qr.R();
    // sign(0) is taken as +1; R[j][j] = 0 has probability zero for a Gaussian matrix.
    let signs: Vec<f64> = (0..n)
        .map(|j| {
            if sign_fix && r[(j, j)] < 0.0 {
                -1.0
            } else {
                1.0
            }
        })
        .collect();
    let mut out = vec![0.0; n * n];
    for i in 0..n {
        for j in 0..n {
            out[i * n + j] = q[(i, j)] * signs[j];
        }
    }
    out
}
