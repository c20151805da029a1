//! Device selection. `--device auto` probes for a GPU without ever panicking (cudarc panics when libcuda is
//! missing unless guarded, STACK.md §1). When one is present it runs the CUDA backend's self-check
//! ([`crate::backend::cuda::self_check`]: a tiny GPT-2 forward/backward on the GPU against the CPU) and
//! trains on the GPU if that passes, on the CPU otherwise, saying which and why. `--device cuda` uses the
//! GPU whenever one is present (no self-check, so its failures show) and is a clear error otherwise.
//! fp64 runs on the CPU only. The CUDA backend has not been run on a GPU by its authors: the line printed
//! says so.

use crate::config::{DeviceKind, Precision};
use crate::error::{Error, Result};
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
            .get_or_init(|| crate::backend::cuda::self_check(bf16))
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
    const UNVERIFIED: &str =
        "this backend's kernels are verified by NVRTC and the CPU emulator, but it \
                              has not been run on a GPU by its authors";
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
                         {UNVERIFIED})"
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
            Ok(found) => Ok((Resolved::Cuda, format!("device: cuda ({found}; {UNVERIFIED})"))),
            Err(why) => Err(Error::Device(format!(
                "--device cuda: no usable CUDA device ({why}); use --device auto or --device cpu"
            ))),
        },
    }
}
