//! The CUDA kernel stack, verified without a GPU (issue 6):
//! - `emu`: every kernel of `kernels/*.cu` run by the CPU emulator (both thread orders, bit-identical) vs
//!   the f64 CPU reference (`CpuBackend<f64>`), on small and odd shapes (`emu_optim`: the optimizer,
//!   rotation and Cauchy kernels);
//! - `race`: a reduction kernel with one `__syncthreads` removed is reported by the emulator, every time;
//! - `step`: whole tiny-GPT-2 training steps through the emulated kernels vs the CPU backend (f32, bf16);
//! - `nvrtc`: every module compiled by NVRTC (PyPI wheels fetched into `.cuda/` on first use) for
//!   compute_80 and compute_90, and ptxas's register/spill report for sm_90 with a no-spill budget on the
//!   hot kernels;
//! - `device`: the `--device cuda` paths that need a real GPU, skipped with a message when there is none.

use rotadam::rng::Rng;

mod device;
mod emu;
mod emu_optim;
mod nvrtc;
mod race;
pub mod step;

/// f32 unit roundoff 2⁻²⁴.
pub const U32: f64 = f32::EPSILON as f64 / 2.0;

/// N(0,1)·scale values rounded to f32 (so both precisions see the same inputs), as f64.
pub fn randn(rng: &mut Rng, n: usize, scale: f64) -> Vec<f64> {
    (0..n)
        .map(|_| (rng.normal() * scale) as f32 as f64)
        .collect()
}
pub fn f32s(x: &[f64]) -> Vec<f32> {
    x.iter().map(|&v| v as f32).collect()
}
pub fn f64s(x: &[f32]) -> Vec<f64> {
    x.iter().map(|&v| v as f64).collect()
}

/// Asserts |got − want| ≤ atol + rtol·|want| elementwise; on failure prints the label, the first
/// mismatches and the largest difference.
#[track_caller]
pub fn assert_close(label: &str, got: &[f64], want: &[f64], atol: f64, rtol: f64) {
    assert_eq!(got.len(), want.len(), "{label}: lengths differ");
    let mut bad = Vec::new();
    let mut max_diff = 0.0f64;
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let d = (g - w).abs();
        max_diff = max_diff.max(d);
        let tol = atol + rtol * w.abs();
        if d.is_nan() || d > tol {
            bad.push(format!(
                "  [{i}] got {g:.9e} want {w:.9e} (diff {d:.3e}, tol {tol:.3e})"
            ));
        }
    }
    assert!(
        bad.is_empty(),
        "{label}: {} of {} elements out of tolerance (atol {atol:.1e}, rtol {rtol:.1e}), max diff {max_diff:.3e}\n{}",
        bad.len(),
        got.len(),
        bad[..bad.len().min(5)].join("\n")
    );
}
