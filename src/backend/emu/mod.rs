//! The CPU emulator of the CUDA execution model as an executor of the kernel backend
//! ([`KernelBackend`]): device memory is host memory, every launch runs the project's kernels
//! (`kernels/*.cu`) through the emulator (`kernels/emu/`) under both thread orders with bit-identical
//! outputs required ([`launch::launch_both_orders`]), and GEMMs run on the CPU (faer, the CPU backend's
//! GEMM; bf16 operands widened to f32 first). It exists for tests: it checks the kernels' math against the
//! CPU backend and the f64 reference, and whole training steps through the same host code a GPU runs.

pub mod launch;

use super::kernel::{Exec, Gemm, Geometry, KernelBackend, Operands, OutBuf, HOST};
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

/// Host memory standing in for device memory: 8-byte aligned, zeroed. Kernels and GEMMs write through
/// its address, so the address is taken once from a mutable borrow (`as_mut_ptr`); the Vec is never
/// resized, so it stays valid.
pub struct HostMem {
    words: Vec<u64>,
    addr: u64,
}

impl HostMem {
    fn zeroed(bytes: usize) -> HostMem {
        let mut words = vec![0u64; bytes.div_ceil(8)];
        let addr = words.as_mut_ptr() as u64;
        HostMem { words, addr }
    }
    fn bytes(&self) -> &[u8] {
        bytemuck::cast_slice(&self.words)
    }
    fn bytes_mut(&mut self) -> &mut [u8] {
        bytemuck::cast_slice_mut(&mut self.words)
    }
}

/// `len` elements at `addr`, widened to f32 (`Operands::Bf16`: bf16 values).
///
/// # Safety
/// `addr` must hold `len` elements of `operands`' type.
unsafe fn widened(addr: u64, len: usize, operands: Operands) -> Vec<f32> {
    if len == 0 {
        return Vec::new(); // an empty tensor may have address 0, which no slice may have
    }
    match operands {
        // SAFETY: the caller guarantees `addr` holds `len` f32 (`widened`'s contract), 4-byte aligned as
        // every executor address of an f32 tensor is, and non-null since len > 0 (the return above); the
        // slice is only read, and copied before returning.
        Operands::F32 => unsafe { std::slice::from_raw_parts(addr as *const f32, len) }.to_vec(),
        // SAFETY: the caller guarantees `addr` holds `len` bf16 (`widened`'s contract), 2-byte aligned as
        // every executor address of a bf16 tensor is, and non-null since len > 0 (the return above); the
        // slice is only read, and converted before returning.
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
    fn space(&self) -> u64 {
        HOST // host memory: every emulator instance can use it
    }
    fn alloc(&self, bytes: usize) -> Result<HostMem> {
        Ok(HostMem::zeroed(bytes))
    }
    fn addr(&self, mem: &HostMem) -> u64 {
        mem.addr
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
        // SAFETY: the caller upholds Exec::launch: `args` are the kernel's parameters (the emulator also
        // checks their count and sizes), every address is a live HostMem range covering what the kernel
        // accesses at `geo`, and `outs` (the launch's DevMut tensors, the pointers it writes through) cover
        // every byte it writes, as launch_both_orders requires.
        unsafe { launch_both_orders(kernel, geo, outs, args) }
            .map_err(|e| e.context(format!("kernel {} ({geo})", kernel.name())))
    }
    unsafe fn gemm(&self, g: &Gemm) -> Result<()> {
        let (m, n, k) = (g.m, g.n, g.k);
        // SAFETY: the caller upholds Exec::gemm: g.a and g.b address m·k and k·n live elements of
        // `g.operands` (element-aligned HostMem ranges), which is what `widened` needs; it copies them into
        // owned Vecs.
        let (a, b) = unsafe {
            (
                widened(g.a, m * k, g.operands),
                widened(g.b, k * n, g.operands),
            )
        };
        if g.c.len() < m * n {
            return Err(Error::Device(format!("gemm: C holds {} < m·n", g.c.len())));
        }
        if m * n == 0 {
            return Ok(()); // nothing to write (and an empty C may have address 0)
        }
        // SAFETY: C holds m·n f32 (g.c.len() ≥ m·n, else the error return just before) at a live, 4-byte
        // aligned HostMem address; A and B were copied into the owned Vecs `a` and `b`, so this is the only
        // reference to C's memory while the GEMM runs.
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
