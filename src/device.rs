//! Device selection. `--device auto` probes for a GPU without ever panicking (cudarc panics when libcuda is
//! missing unless guarded, STACK.md §1) and trains on the CPU, saying why; `--device cuda` is an error
//! unless it can be honoured — and it cannot yet: the CUDA kernels exist and are verified by NVRTC and the
//! CPU emulator (`backend::emu`), but the device `Backend` that would train with them is not built.

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
                "device: auto -> cpu ({found}, but this build cannot train on CUDA yet: its kernels are \
                 verified by NVRTC and the CPU emulator only; training on the CPU)"
            ),
            Err(why) => format!("device: auto -> cpu ({why})"),
        }),
        DeviceKind::Cuda => Err(Error::Device(match probe_cuda() {
            Ok(found) => format!(
                "--device cuda: {found}, but the CUDA training backend is not built yet (the kernels are \
                 verified by NVRTC and the CPU emulator only); use --device auto or --device cpu"
            ),
            Err(why) => {
                format!("--device cuda: no usable CUDA device ({why}); use --device auto or --device cpu")
            }
        })),
    }
}

/// The line printed for the device choice (for `cuda`, the reason it cannot be used).
pub fn describe_choice(kind: DeviceKind) -> String {
    choose(kind).unwrap_or_else(|e| e.to_string())
}
