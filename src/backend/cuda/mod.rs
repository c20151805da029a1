//! The CUDA side of the backend interface (ARCHITECTURE.md decision 2), as far as it is built:
//! - [`nvrtc`]: compiling the kernel modules with NVRTC (from a CUDA toolkit or the PyPI wheels) to PTX
//!   or to sm_XX cubins with ptxas's register/spill report — runs without a GPU and is tested;
//! - [`runtime`]: a context, a stream and the kernel modules loaded on it (nvcc PTX or NVRTC at start-up);
//! - [`probe`]: whether a CUDA device is usable, without ever panicking (cudarc panics when libcuda is
//!   missing unless guarded, STACK.md §1).
//!
//! - [`device`]: `CudaBackend`, the `Backend` trait on a device (cudarc buffers, the launch plans of
//!   [`ops`], cuBLAS GEMMs); [`self_check`] compares it with the CPU backend on a tiny model;
//! - [`bench`]: `rotadam bench kernels`.
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

/// Relative loss difference and gradient tolerances of [`self_check`] (the fp32 tolerances of the
/// emulator's full-step test, `tests/cuda/step.rs`; bf16 rounds operands to 8 bits, hence looser).
const SELF_CHECK_TOL: [(f64, f64); 2] = [(1e-5, 1e-4), (2e-2, 5e-2)];

/// The tiny GPT-2 of [`self_check`] and of the emulator's full-step tests (`tests/cuda/step.rs`): 2 layers,
/// 2 heads, width 16, context 8, a vocabulary of 37 (odd: no dimension is a multiple of a warp), biases on.
pub fn check_model() -> crate::config::ModelConfig {
    use crate::config::ModelConfig;
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
/// backend could not run). `--device auto` uses the GPU only when this passes (`crate::device`).
pub fn self_check(bf16: bool) -> Result<String, String> {
    use crate::backend::cpu::CpuBackend;
    use crate::backend::Backend;
    use crate::config::ModelConfig;
    use crate::model::Gpt2;
    use crate::rng::Rng;
    let cfg = check_model();
    let tk = nvrtc::Toolkit::locate(std::path::Path::new(".cuda"));
    let gpu = device::CudaBackend::new(0, tk, bf16).map_err(|e| e.to_string())?;
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
            m.zero_grads(be);
            let loss = m.forward_backward(be, x, y, b, t, 1.0 / (b * t) as f64)?;
            Ok((loss, m.grads_f64(be)?))
        };
        run().map_err(|e| e.to_string())
    }
    let (lg, gg) = loss_and_grads(&gpu, &cfg, (&x, &y, b, t))?;
    let (lc, gc) = loss_and_grads(&cpu, &cfg, (&x, &y, b, t))?;
    let (loss_tol, rtol) = SELF_CHECK_TOL[bf16 as usize];
    let loss_err = (lg - lc).abs() / lc.abs().max(f64::MIN_POSITIVE);
    let grad_err = gg
        .iter()
        .zip(&gc)
        .map(|(g, c)| (g - c).abs() / (1e-6 / rtol + c.abs()))
        .fold(0.0f64, f64::max);
    let summary = format!(
        "loss {lg:.6} vs {lc:.6} (rel. {loss_err:.1e}), worst gradient entry {grad_err:.1e} of |cpu|"
    );
    if gg.len() == gc.len() && loss_err <= loss_tol && grad_err <= rtol && lg.is_finite() {
        Ok(summary)
    } else {
        Err(summary)
    }
}
