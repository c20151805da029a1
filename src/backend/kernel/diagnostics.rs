//! Launch plans of the diagnostics' device kernels (`kernels/cauchy.cu`, `clip_by_norm` of
//! `kernels/reduce.cu`): the Cauchy probes of Xie et al.'s (1,1)-norm estimator (App. D.2), drawn on the
//! device from the counter-based stream the CPU draws too (`crate::kernels::cauchy_probe`), the
//! coordinate-wise median of |Hv| over K probes and the streaming geometric mean, and clipping by a norm
//! that stays on the device.

use super::transformer::dim;
use super::{flat, launch, Dev, DevMut, Exec};
use crate::backend::cpu::check_len;
use crate::error::Result;

// SAFETY (for every `unsafe` launch below): every tensor is live (a `Dev`/`DevMut` borrows its `Mem`) and
// the typed launcher checks that it is memory of `e` (`Dev::check_space`); the lengths are checked against
// the shapes first; the typed launcher supplies the kernel's own argument list.

/// out[i] = the standard Cauchy variate of element `offset + i` of the probe stream of `seed`.
pub fn cauchy_fill<E: Exec>(e: &E, out: DevMut<f32>, seed: u64, offset: u64) -> Result<()> {
    // SAFETY: `out` is the kernel's only tensor and it writes out[i] only for i < n = out.len (its guard), so
    // every access is inside `out`; the generated launcher passes cauchy_fill's own arguments.
    unsafe { launch::cauchy_fill(e, flat(out.len), out, seed, offset, out.len as i64) }
}

/// out[j] = the median of |samples[q·chunk + j]| over q < k (`samples` is reordered in place).
pub fn median_abs_select<E: Exec>(
    e: &E,
    out: DevMut<f32>,
    samples: DevMut<f32>,
    k: usize,
) -> Result<()> {
    let chunk = out.len;
    check_len("median_abs_select", "samples", samples.len, k * chunk);
    let ki = dim("median_abs_select", "K", k);
    // SAFETY: check_len: samples = K·chunk with chunk = out.len, and K fits an int (dim); thread j < chunk
    // (the guard) reads and reorders samples[q·chunk + j], q < K, and writes out[j]; the generated launcher
    // passes median_abs_select's own arguments.
    unsafe { launch::median_abs_select(e, flat(chunk), out, samples, ki, chunk as i64) }
}

/// acc += log|x| elementwise (one probe of the streaming estimator).
pub fn log_abs_accumulate<E: Exec>(e: &E, acc: DevMut<f32>, x: Dev<f32>) -> Result<()> {
    check_len("log_abs_accumulate", "x", x.len, acc.len);
    // SAFETY: check_len: x has acc.len elements; threads i < n = acc.len (the guard) update acc[i] from x[i];
    // the generated launcher passes log_abs_accumulate's own arguments.
    unsafe { launch::log_abs_accumulate(e, flat(acc.len), acc, x, acc.len as i64) }
}

/// out = exp(acc / k): the geometric mean of |x| over the k accumulated probes.
pub fn log_abs_finalize<E: Exec>(e: &E, out: DevMut<f32>, acc: Dev<f32>, k: usize) -> Result<()> {
    check_len("log_abs_finalize", "acc", acc.len, out.len);
    let ki = dim("log_abs_finalize", "K", k);
    // SAFETY: check_len: acc has out.len elements; threads i < n = out.len (the guard) read acc[i] and write
    // out[i]; the generated launcher passes log_abs_finalize's own arguments.
    unsafe { launch::log_abs_finalize(e, flat(out.len), out, acc, ki, out.len as i64) }
}

/// x *= max_norm/(√sumsq + 1e-6) when that is < 1, with Σx² read from the device (`sumsq`, one f64).
pub fn clip_by_norm<E: Exec>(e: &E, x: DevMut<f32>, sumsq: Dev<f64>, max_norm: f32) -> Result<()> {
    check_len("clip_by_norm", "sumsq", sumsq.len, 1);
    // SAFETY: check_len: sumsq holds 1 f64; threads i < n = x.len (the guard) read sumsq[0] and scale x[i];
    // the generated launcher passes clip_by_norm's own arguments.
    unsafe { launch::clip_by_norm(e, flat(x.len), x, sumsq, max_norm, x.len as i64) }
}
