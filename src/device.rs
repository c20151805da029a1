//! Device selection. `--device auto` probes for a GPU without ever panicking (cudarc panics when libcuda is
//! missing unless guarded, STACK.md §1) and trains on the CPU, saying why: the CUDA backend
//! (`backend::cuda::device`) has never run on a GPU, so it is used only when asked for by name.
//! `--device cuda` uses it when a device is present (saying that it is unverified) and is a clear error
//! otherwise.

use crate::config::DeviceKind;
use crate::error::{Error, Result};

/// Probe for a CUDA device: Ok(description) or Err(why not).
pub fn probe_cuda() -> Result<String, String> {
    crate::backend::cuda::probe()
}

/// The device a run uses, as the line to print; an error for `--device cuda` (module docs).
pub fn choose(kind: DeviceKind) -> Result<String> {
    match kind {
        DeviceKind::Cpu => Ok("device: cpu (requested)".into()),
        DeviceKind::Auto => Ok(match probe_cuda() {
            Ok(found) => format!(
                "device: auto -> cpu ({found}, but the CUDA backend has not been verified on a GPU; \
                 pass --device cuda to use it)"
            ),
            Err(why) => format!("device: auto -> cpu ({why})"),
        }),
        DeviceKind::Cuda => match probe_cuda() {
            Ok(found) => Ok(format!(
                "device: cuda ({found}; this backend's kernels are verified by NVRTC and the CPU emulator, \
                 but it has not been run on a GPU before)"
            )),
            Err(why) => Err(Error::Device(format!(
                "--device cuda: no usable CUDA device ({why}); use --device auto or --device cpu"
            ))),
        },
    }
}

/// The line printed for the device choice (for `cuda` without a device, the reason).
pub fn describe_choice(kind: DeviceKind) -> String {
    choose(kind).unwrap_or_else(|e| e.to_string())
}
