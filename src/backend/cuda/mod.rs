//! The CUDA side of the backend interface (ARCHITECTURE.md decision 2), as far as it is built:
//! - [`nvrtc`]: compiling the kernel modules with NVRTC (from a CUDA toolkit or the PyPI wheels) to PTX
//!   or to sm_XX cubins with ptxas's register/spill report — runs without a GPU and is tested;
//! - [`runtime`]: a context, a stream and the kernel modules loaded on it (nvcc PTX or NVRTC at start-up);
//! - [`probe`]: whether a CUDA device is usable, without ever panicking (cudarc panics when libcuda is
//!   missing unless guarded, STACK.md §1).
//!
//! - [`device`]: `CudaBackend`, the `Backend` trait on a device (cudarc buffers, the launch plans of
//!   [`ops`], cuBLAS GEMMs); `crate::device::self_check` compares it with the CPU backend on a tiny
//!   model before `--device auto` uses it.
//!
//! The kernels are verified by NVRTC and the CPU emulator (`backend::emu`); nothing here has been run on
//! a GPU by its authors.

pub mod device;
pub mod nvrtc;
pub mod ops;
pub mod runtime;

/// Probe for a CUDA device: Ok(description of device 0) or Err(why there is none).
pub fn probe() -> Result<String, String> {
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
