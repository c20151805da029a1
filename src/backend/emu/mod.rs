//! The CPU emulator of the CUDA execution model as an executor of the kernel backend
//! ([`KernelBackend`]): device memory is host memory, every launch runs the project's kernels
//! (`kernels/*.cu`) through the emulator (`kernels/emu/`) under both thread orders with bit-identical
//! outputs required ([`launch::launch_both_orders`]), and GEMMs run on the CPU (faer, the CPU backend's
//! GEMM; bf16 operands widened to f32 first). It exists for tests: it checks the kernels' math against the
//! CPU backend and the f64 reference, and whole training steps through the same host code a GPU runs.

pub mod launch;

use super::kernel::{Exec, Gemm, Geometry, KernelBackend, Operands, OutBuf};
use super::Scalar;
use crate::error::{Error, Result};
use crate::kernels::{EmuArg, Kernel};
use launch::launch_both_orders;

/// The kernel backend on the emulator.
pub type EmuBackend = KernelBackend<EmuExec>;

impl KernelBackend<EmuExec> {
    /// The emulated backend; GEMMs run on the CPU with `threads` threads.
    pub fn emulated(threads: usize, bf16: bool) -> Self {
        KernelBackend::new(EmuExec { threads }, bf16)
    }
}

/// Launches on the emulator, both orders compared; GEMMs on the CPU (module docs).
#[derive(Clone, Copy, Debug)]
pub struct EmuExec {
    threads: usize,
}

/// Host memory standing in for device memory: 8-byte aligned, zeroed.
pub struct HostMem(Vec<u64>);

impl HostMem {
    fn bytes(&self) -> &[u8] {
        bytemuck::cast_slice(&self.0)
    }
    fn bytes_mut(&mut self) -> &mut [u8] {
        bytemuck::cast_slice_mut(&mut self.0)
    }
}

/// `len` elements at `addr`, widened to f32 (`Operands::Bf16`: bf16 values).
///
/// # Safety
/// `addr` must hold `len` elements of `operands`' type.
unsafe fn widened(addr: u64, len: usize, operands: Operands) -> Vec<f32> {
    match operands {
        // SAFETY: this function's contract.
        Operands::F32 => unsafe { std::slice::from_raw_parts(addr as *const f32, len) }.to_vec(),
        // SAFETY: this function's contract.
        Operands::Bf16 => unsafe { std::slice::from_raw_parts(addr as *const half::bf16, len) }
            .iter()
            .map(|x| x.to_f32())
            .collect(),
    }
}

impl Exec for EmuExec {
    type Mem = HostMem;
    fn describe(&self) -> String {
        format!("cuda-emulator (GEMMs on the CPU, {} threads)", self.threads)
    }
    fn alloc(&self, bytes: usize) -> Result<HostMem> {
        Ok(HostMem(vec![0u64; bytes.div_ceil(8)]))
    }
    fn addr(&self, mem: &HostMem) -> u64 {
        mem.0.as_ptr() as u64
    }
    fn upload(&self, dst: &mut HostMem, src: &[u8]) -> Result<()> {
        dst.bytes_mut()[..src.len()].copy_from_slice(src);
        Ok(())
    }
    fn download(&self, src: &HostMem, dst: &mut [u8]) -> Result<()> {
        dst.copy_from_slice(&src.bytes()[..dst.len()]);
        Ok(())
    }
    unsafe fn launch(
        &self,
        kernel: Kernel,
        geo: Geometry,
        outs: &[OutBuf],
        args: &[EmuArg],
    ) -> Result<()> {
        // SAFETY: forwarded contract (Exec::launch): the outputs cover what the kernel writes and the
        // arguments point at memory these host allocations own.
        unsafe { launch_both_orders(kernel, geo, outs, args) }
            .map_err(|e| e.context(format!("kernel {} ({geo})", kernel.name())))
    }
    unsafe fn gemm(&self, g: &Gemm) -> Result<()> {
        let (m, n, k) = (g.m, g.n, g.k);
        // SAFETY: the contract of Exec::gemm: A and B hold m·k and k·n elements of their type.
        let (a, b) = unsafe {
            (
                widened(g.a, m * k, g.operands),
                widened(g.b, k * n, g.operands),
            )
        };
        if g.c.len() < m * n {
            return Err(Error::Device(format!("gemm: C holds {} < m·n", g.c.len())));
        }
        // SAFETY: C holds m·n f32 (checked), distinct from the copies of A and B taken above.
        let c = unsafe { std::slice::from_raw_parts_mut(g.c.addr as *mut f32, m * n) };
        f32::gemm(
            c,
            &a,
            &b,
            m,
            n,
            k,
            g.trans_a,
            g.trans_b,
            g.accumulate,
            self.threads,
        );
        Ok(())
    }
}
