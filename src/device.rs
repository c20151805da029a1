//! Device selection. `--device auto` probes for a GPU without ever panicking (cudarc panics when libcuda is
//! missing unless guarded). When one is present it runs the CUDA backend's self-check
//! ([`self_check`]: a tiny GPT-2 forward/backward on the GPU against the CPU) and
//! trains on the GPU if that passes, on the CPU otherwise, saying which and why. `--device cuda` uses the
//! GPU whenever one is present (no self-check, so its failures show) and is a clear error otherwise.
//! fp64 runs on the CPU only. The CUDA backend has not been run on a GPU by its authors: the line printed
//! says so, and under the driver stand-in (`ROTADAM_CUDA_STANDIN=1`, `docs/cuda.md`) it says that the
//! kernels run on the CPU emulator.

use crate::backend::cpu::CpuBackend;
use crate::backend::cuda::nvrtc::Toolkit;
use crate::backend::cuda::CudaBackend;
use crate::backend::Backend;
use crate::config::{DeviceKind, ModelConfig, Precision};
use crate::error::{Error, Result};
use crate::model::Gpt2;
use crate::rng::Rng;
use std::sync::OnceLock;

/// Where a run's ops execute.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Resolved {
    Cpu,
    Cuda,
}

/// Probe for a CUDA device: Ok(description) or Err(why not).
pub fn probe_cuda() -> Result<String, String> {
    crate::backend::cuda::probe()
}

/// The device a run uses and the line to print; an error for `--device cuda` without a device or with
/// fp64 (module docs).
/// The self-check runs once per process and precision (a sweep resolves the device for every run).
pub fn resolve(kind: DeviceKind, precision: Precision) -> Result<(Resolved, String)> {
    static CHECKED: [OnceLock<Result<String, String>>; 2] = [OnceLock::new(), OnceLock::new()];
    let bf16 = precision == Precision::Bf16;
    decide(kind, precision, probe_cuda, || {
        CHECKED[bf16 as usize]
            .get_or_init(|| self_check(bf16))
            .clone()
    })
}

/// [`resolve`] with the probe and the self-check passed in (so the decision is testable without a GPU).
pub fn decide(
    kind: DeviceKind,
    precision: Precision,
    probe: impl FnOnce() -> Result<String, String>,
    self_check: impl FnOnce() -> Result<String, String>,
) -> Result<(Resolved, String)> {
    let unverified = || {
        if crate::backend::cuda::standin::active() {
            "the CUDA driver stand-in: the real host code, with the kernels run by the CPU emulator, \
             not a GPU"
        } else {
            "this backend's kernels are verified by NVRTC and the CPU emulator, but it has not been \
             run on a GPU by its authors"
        }
    };
    match kind {
        DeviceKind::Cpu => Ok((Resolved::Cpu, "device: cpu (requested)".into())),
        DeviceKind::Auto if precision == Precision::Fp64 => Ok((
            Resolved::Cpu,
            "device: auto -> cpu (fp64 runs on the CPU only)".into(),
        )),
        DeviceKind::Auto => Ok(match probe() {
            Err(why) => (Resolved::Cpu, format!("device: auto -> cpu ({why})")),
            Ok(found) => match self_check() {
                Ok(check) => (
                    Resolved::Cuda,
                    format!(
                        "device: auto -> cuda ({found}; self-check against the CPU passed: {check}; \
                         {})",
                        unverified()
                    ),
                ),
                Err(why) => (
                    Resolved::Cpu,
                    format!(
                        "device: auto -> cpu ({found}, but the CUDA backend's self-check against the \
                         CPU failed: {why}; --device cuda forces it)"
                    ),
                ),
            },
        }),
        DeviceKind::Cuda if precision == Precision::Fp64 => Err(Error::config(
            "precision",
            "fp64 runs on the CPU only; use --device cpu or --device auto",
        )),
        DeviceKind::Cuda => match probe() {
            Ok(found) => Ok((
                Resolved::Cuda,
                format!("device: cuda ({found}; {})", unverified()),
            )),
            Err(why) => Err(Error::Device(format!(
                "--device cuda: no usable CUDA device ({why}); use --device auto or --device cpu"
            ))),
        },
    }
}

/// Relative loss difference and gradient tolerances of [`self_check`] (the fp32 tolerances of the
/// emulator's full-step test, `tests/cuda/step.rs`; bf16 rounds operands to 8 bits, hence looser).
const SELF_CHECK_TOL: [(f64, f64); 2] = [(1e-5, 1e-4), (2e-2, 5e-2)];

/// The tiny GPT-2 of [`self_check`] and of the emulator's full-step tests (`tests/cuda/step.rs`): 2 layers,
/// 2 heads, width 16, context 8, a vocabulary of 37 (odd: no dimension is a multiple of a warp), biases on.
pub fn check_model() -> ModelConfig {
    ModelConfig {
        n_layer: 2,
        n_head: 2,
        n_embd: 16,
        seq_len: 8,
        vocab_size: 37,
        bias: true,
    }
}

/// One forward/backward of a tiny GPT-2 (2 layers, width 16, biases on) on device 0 and on the CPU
/// backend, same weights and batch: Ok(the differences) when the loss agrees to a relative 1e-5 and every
/// gradient entry to 1e-6 + 1e-4·|cpu| (fp32; bf16: 2e-2 and 5e-2), else Err(what differed, or why the
/// backend could not run; a non-finite loss or gradient entry fails, [`compare`]). `--device auto` uses
/// the GPU only when this passes (`crate::device`).
pub fn self_check(bf16: bool) -> Result<String, String> {
    let cfg = check_model();
    let tk = Toolkit::find();
    let gpu = CudaBackend::cuda(0, tk, bf16).map_err(|e| e.to_string())?;
    let cpu = CpuBackend::<f32>::new(1, bf16);
    let (b, t) = (3, 8);
    let mut rng = Rng::new(11);
    let v = cfg.vocab_size as u64;
    let x: Vec<u32> = (0..b * t).map(|_| rng.below(v) as u32).collect();
    let y: Vec<u32> = (0..b * t).map(|_| rng.below(v) as u32).collect();
    // Loss and gradients of one forward/backward on `be` (same seed, so the same weights everywhere).
    fn loss_and_grads<BK: Backend>(
        be: &BK,
        cfg: &ModelConfig,
        (x, y, b, t): (&[u32], &[u32], usize, usize),
    ) -> Result<(f64, Vec<f64>), String> {
        let run = || -> crate::Result<(f64, Vec<f64>)> {
            let mut m = Gpt2::new(be, cfg, 3)?;
            m.zero_grads(be)?;
            let loss = m.forward_backward(be, x, y, b, t, 1.0 / (b * t) as f64)?;
            Ok((loss, m.grads_f64(be)?))
        };
        run().map_err(|e| e.to_string())
    }
    let (lg, gg) = loss_and_grads(&gpu, &cfg, (&x, &y, b, t))?;
    let (lc, gc) = loss_and_grads(&cpu, &cfg, (&x, &y, b, t))?;
    compare((lg, &gg), (lc, &gc), bf16)
}

/// [`self_check`]'s verdict on the GPU's (loss, gradient) against the CPU's: Ok(the differences) when
/// both are finite everywhere, the loss agrees to a relative `loss_tol` and every gradient entry to
/// 1e-6 + `rtol`·|cpu| ([`SELF_CHECK_TOL`]); else Err(what differed). A NaN or an infinity anywhere is a
/// failure that names it (a max over the entries would skip a NaN).
pub fn compare(
    (lg, gg): (f64, &[f64]),
    (lc, gc): (f64, &[f64]),
    bf16: bool,
) -> Result<String, String> {
    if gg.len() != gc.len() {
        return Err(format!(
            "the GPU gave {} gradient entries, the CPU {}",
            gg.len(),
            gc.len()
        ));
    }
    for (side, loss, grads) in [("GPU", lg, gg), ("CPU", lc, gc)] {
        if !loss.is_finite() {
            return Err(format!("the {side}'s loss is {loss}"));
        }
        let mut bad = grads.iter().enumerate().filter(|(_, g)| !g.is_finite());
        if let Some((i, g)) = bad.next() {
            let n = 1 + bad.count();
            let entries = if n == 1 { "entry" } else { "entries" };
            return Err(format!(
                "the {side}'s gradient has {n} non-finite {entries}, the first at index {i}: {g}"
            ));
        }
    }
    let (loss_tol, rtol) = SELF_CHECK_TOL[bf16 as usize];
    let loss_err = (lg - lc).abs() / lc.abs().max(f64::MIN_POSITIVE);
    let grad_err = gg
        .iter()
        .zip(gc)
        .map(|(g, c)| (g - c).abs() / (1e-6 / rtol + c.abs()))
        .fold(0.0f64, f64::max);
    let summary = format!(
        "loss {lg:.6} vs {lc:.6} (rel. {loss_err:.1e}), worst gradient entry {grad_err:.1e} of |cpu|"
    );
    if loss_err <= loss_tol && grad_err <= rtol {
        Ok(summary)
    } else {
        Err(summary)
    }
}
