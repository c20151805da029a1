//! The CUDA kernel stack, verified without a GPU:
//! - `emu`: every kernel of `kernels/*.cu` run by the CPU emulator (both thread orders, bit-identical) vs
//!   the f64 CPU reference (`CpuBackend<f64>`), on small and odd shapes (`emu_optim`: the optimizer,
//!   rotation and Cauchy kernels);
//! - `race`: a reduction kernel with one `__syncthreads` removed is reported by the emulator, every time;
//! - `step`: whole tiny-GPT-2 training steps through the emulated kernels vs the CPU backend (f32, bf16);
//! - `nvrtc`: every module compiled by NVRTC (PyPI wheels fetched into `.cuda/` on first use) for
//!   compute_80 and compute_90, and ptxas's register/spill report for sm_90 with a no-spill budget on the
//!   hot kernels;
//! - `device`: `--device` choices and the paths that need a CUDA device, on a GPU when there is one and on
//!   the driver + cuBLAS stand-in otherwise;
//! - `standin`: the CUDA host path end to end on the stand-in (`docs/cuda.md`): training from the command
//!   line against the CPU, resume, `--device auto`, the kernel benchmark, the diagnostics' kernels, and
//!   planted misuses the stand-in must report;
//! - `nccl`: NCCL's collectives on the stand-in's `libnccl.so.2` between threads and processes (rank-order
//!   reductions bit for bit, group calls), and planted misuses it must report.

mod device;
mod emu;
mod emu_optim;
mod nccl;
mod nvrtc;
mod parallel;
mod race;
mod standin;
pub mod step;

use rotadam::backend::Backend;

/// Runs one op of an f32 backend on host data — how the tests call the kernel backend: `outs` (their
/// initial contents) and `ins` are uploaded into buffers of `be`, `op` gets their views, and the outputs
/// come back.
pub fn on<B: Backend<T = f32>, const N: usize, const M: usize>(
    be: &B,
    outs: [&[f32]; N],
    ins: [&[f32]; M],
    op: impl FnOnce(&B, [B::ViewMut<'_>; N], [B::View<'_>; M]) -> rotadam::Result<()>,
) -> [Vec<f32>; N] {
    let up = |x: &[f32]| {
        let mut b = be.alloc(x.len()).unwrap();
        be.upload(&mut b, x).unwrap();
        b
    };
    let mut ob: Vec<B::Buf> = outs.iter().map(|x| up(x)).collect();
    let ib: Vec<B::Buf> = ins.iter().map(|x| up(x)).collect();
    {
        let ov: Vec<B::ViewMut<'_>> = ob
            .iter_mut()
            .map(|b| {
                let n = be.buf_len(b);
                be.view_mut(b, 0..n)
            })
            .collect();
        let iv: Vec<B::View<'_>> = ib.iter().map(|b| be.view(b, 0..be.buf_len(b))).collect();
        let (Ok(ov), Ok(iv)) = (ov.try_into(), iv.try_into()) else {
            unreachable!("N outputs and M inputs were uploaded")
        };
        op(be, ov, iv).unwrap();
    }
    let down: Vec<Vec<f32>> = ob.iter().map(|b| be.download(b).unwrap()).collect();
    down.try_into().expect("N outputs")
}
