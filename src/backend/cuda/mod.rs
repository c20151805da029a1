//! CUDA: a device as an executor of the kernel backend ([`exec::CudaExec`]; `CudaBackend` is
//! `KernelBackend<CudaExec>`), and what it needs:
//! - [`nvrtc`]: compiling the kernel modules with NVRTC (from a CUDA toolkit or the PyPI wheels) to PTX
//!   or to sm_XX cubins with ptxas's register/spill report — runs without a GPU and is tested;
//! - [`runtime`]: a context, a stream and the kernel modules loaded on it (nvcc's PTX or NVRTC's);
//! - [`standin`]: the driver + cuBLAS stand-in that runs all of this without a GPU
//!   (`ROTADAM_CUDA_STANDIN=1`, `docs/cuda.md`);
//! - [`nccl`]: NCCL's collectives (all-reduce, all-gather, reduce-scatter, broadcast) between devices,
//!   threads or processes, bound at run time to `libnccl.so.2` (the stand-in's with the stand-in);
//! - [`collective`]: data-parallel ranks on devices — the `Collective` over NCCL, and how ranks meet
//!   (one NCCL group in a process, or a rendezvous directory across processes);
//! - [`probe`]: whether a CUDA device is usable, without ever panicking (cudarc panics when libcuda is
//!   missing unless guarded).
//!
//! `crate::device::self_check` compares the CUDA backend with the CPU backend on a tiny model before
//! `--device auto` uses it.

pub mod collective;
pub mod exec;
pub mod nccl;
pub mod nvrtc;
pub mod runtime;
pub mod standin;

pub use exec::{CudaBackend, CudaExec};

/// Probe for a CUDA device: Ok(description of device 0) or Err(why there is none).
pub fn probe() -> Result<String, String> {
    standin::activate().map_err(|e| e.to_string())?;
    // SAFETY: `is_culib_present` only tries to dlopen the driver library by name and reports success; it
    // has no preconditions and does not touch any CUDA state.
    if !unsafe { cudarc::driver::sys::is_culib_present() } {
        return Err("no CUDA driver library (libcuda) found".into());
    }
    let n = cudarc::driver::CudaContext::device_count().map_err(|e| format!("{e:?}"))?;
    if n == 0 {
        return Err("the CUDA driver reports 0 devices".into());
    }
    let ctx = cudarc::driver::CudaContext::new(0).map_err(|e| format!("{e:?}"))?;
    let name = ctx.name().unwrap_or_else(|_| "unknown".into());
    Ok(format!("{n} CUDA device(s); device 0 is {name}"))
}
