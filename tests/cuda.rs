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

mod device;
mod emu;
mod emu_optim;
mod nvrtc;
mod race;
pub mod step;
