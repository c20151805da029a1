//! The launch plan of every op, shared by the emulated backend (`backend::emu`, tested) and the CUDA
//! backend (`backend::cuda::device`, never run: no GPU was available): shape checks, launch geometry and
//! the kernel's argument list, once. Tensors are [`Dev`] (an address and a length): host addresses under
//! the emulator, device addresses on a GPU; small host arrays (tokens, targets, index lists) are staged by
//! the [`Exec`]. Geometry per kernel is the one its `.cu` file documents. Split by family:
//! `transformer` (encoder, layernorm, attention, gelu, residual, bias, cross-entropy) and `optim`
//! (rotations, optimizer steps); both re-exported here.

use super::super::cpu::check_len;
use crate::backend::emu::launch::{Geometry, OutBuf};
use crate::kernels::{EmuArg, Kernel};

mod optim;
mod transformer;
pub use optim::*;
pub use transformer::*;

/// Threads per block of the elementwise and per-row kernels (the kernels' `__launch_bounds__(256)`).
pub const BLOCK: u32 = 256;
/// Elements per block of `reduce.cu: sum_squares_partial` (`REDUCE_CHUNK`).
pub const REDUCE_CHUNK: usize = 65536;
/// Output tile of `block_gemm.cuh` (rows × columns).
pub const GEMM_TILE: usize = 64;

/// A tensor for a kernel: its address (host or device) and its length in elements. Only the crate's
/// backends build one from a buffer they borrow; outside the crate [`Dev::host`] / [`Dev::host_mut`] are
/// `unsafe` (a `Dev` does not carry the buffer's lifetime).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Dev {
    pub(crate) addr: u64,
    pub(crate) len: usize,
}

impl Dev {
    /// The tensor at a host slice (the emulator's addresses).
    ///
    /// # Safety
    /// `x` must outlive every use of the returned `Dev`, and no `&mut` to it may be used meanwhile.
    pub unsafe fn host<T>(x: &[T]) -> Dev {
        Dev {
            addr: x.as_ptr() as u64,
            len: x.len(),
        }
    }
    /// The tensor at a mutable host slice.
    ///
    /// # Safety
    /// `x` must outlive every use of the returned `Dev`, and no other reference to it may be used
    /// meanwhile.
    pub unsafe fn host_mut<T>(x: &mut [T]) -> Dev {
        Dev {
            addr: x.as_mut_ptr() as u64,
            len: x.len(),
        }
    }
    /// Length in elements.
    pub fn len(&self) -> usize {
        self.len
    }
    /// True when the tensor has no elements.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    /// The output-buffer record of an f32 tensor (what the emulator snapshots and compares).
    fn out(self, name: &'static str) -> OutBuf {
        OutBuf::at(name, self.addr, self.len * 4)
    }
}

/// Where kernels run: the CPU emulator or a CUDA stream.
pub trait Exec {
    /// Keeps a staged host array alive until the op returns.
    type Staged;
    /// Runs `kernel`; panics with the kernel's name on a failed launch (Backend ops return `()`).
    ///
    /// # Safety
    /// `args` must match the kernel's parameters and every address must be valid for what the kernel
    /// accesses at `geo`; `outs` must cover everything it writes.
    unsafe fn launch(&self, kernel: Kernel, geo: Geometry, outs: &[OutBuf], args: &[EmuArg]);
    /// `host` where kernels can read it: its address (emulator), or a device copy (CUDA).
    fn stage_u32(&self, host: &[u32]) -> (u64, Self::Staged);
    /// A zeroed f64 scratch buffer of `n` elements and its address.
    fn scratch_f64(&self, n: usize) -> (u64, Self::Staged);
    /// Reads back `n` f64 from a scratch buffer made by `scratch_f64` (synchronises a device).
    fn read_f64(&self, s: &Self::Staged, n: usize) -> Vec<f64>;
}

/// A flat elementwise launch: one thread per element, 256-thread blocks.
pub fn flat(n: usize) -> Geometry {
    Geometry::linear(n, BLOCK)
}

/// One warp per row, 8 rows per 256-thread block.
pub fn warp_rows(rows: usize) -> Geometry {
    Geometry::blocks(rows.div_ceil((BLOCK / 32) as usize), BLOCK)
}

/// The block-rotation GEMM grid of `block_gemm.cuh`.
pub fn gemm_grid(nb: usize, n: usize) -> Geometry {
    Geometry {
        grid: [
            n.div_ceil(GEMM_TILE).max(1) as u32,
            nb.div_ceil(GEMM_TILE).max(1) as u32,
            1,
        ],
        block: [BLOCK, 1, 1],
        smem: 0,
    }
}

/// `x` as a CUDA `int` dimension (panics with the op and name if it does not fit).
#[track_caller]
fn dim(op: &str, name: &str, x: usize) -> i32 {
    i32::try_from(x).unwrap_or_else(|_| panic!("{op}: {name} = {x} does not fit a CUDA int"))
}

/// Panics unless every index is < `len` (an out-of-range index would be an out-of-bounds access).
#[track_caller]
pub fn check_index(op: &str, index: &[u32], len: usize) {
    if let Some((pos, &i)) = index.iter().enumerate().find(|(_, &i)| i as usize >= len) {
        panic!("{op}: index[{pos}] = {i} is out of bounds for {len} elements");
    }
}

// SAFETY (for every `unsafe` launch below): the lengths of all tensors are checked against the shapes
// first and the index/token arrays against the tensors they index, so every address the kernel forms at
// this geometry is inside a tensor; `outs` lists every tensor the kernel writes; the argument lists follow
// the kernel's parameters (the emulator checks their count and sizes on every call).

/// out = value
pub fn fill<E: Exec>(e: &E, out: Dev, value: f32) {
    let (o, n) = (out.addr, out.len as i64);
    // SAFETY: module comment above.
    unsafe {
        e.launch(
            Kernel::Fill,
            flat(out.len),
            &[out.out("out")],
            &[EmuArg::of(&o), EmuArg::of(&value), EmuArg::of(&n)],
        )
    }
}

/// out *= s
pub fn scale<E: Exec>(e: &E, out: Dev, s: f32) {
    let (o, n) = (out.addr, out.len as i64);
    // SAFETY: module comment above.
    unsafe {
        e.launch(
            Kernel::Scale,
            flat(out.len),
            &[out.out("out")],
            &[EmuArg::of(&o), EmuArg::of(&s), EmuArg::of(&n)],
        )
    }
}

/// Σ x² in f64: per-block partials, then one block sums them in order.
pub fn sum_squares<E: Exec>(e: &E, x: Dev) -> f64 {
    let parts = x.len.div_ceil(REDUCE_CHUNK).max(1);
    let (pp, pk) = e.scratch_f64(parts);
    let (xp, n) = (x.addr, x.len as i64);
    // SAFETY: module comment above; partial has one f64 per block.
    unsafe {
        e.launch(
            Kernel::SumSquaresPartial,
            Geometry::blocks(parts, BLOCK),
            &[OutBuf::at("partial", pp, parts * 8)],
            &[EmuArg::of(&pp), EmuArg::of(&xp), EmuArg::of(&n)],
        )
    }
    let (op, ok) = e.scratch_f64(1);
    let np = parts as i32;
    // SAFETY: module comment above; one block reads `parts` partials and writes out[0].
    unsafe {
        e.launch(
            Kernel::SumPartials,
            Geometry::blocks(1, 1024),
            &[OutBuf::at("out", op, 8)],
            &[EmuArg::of(&op), EmuArg::of(&pp), EmuArg::of(&np)],
        )
    }
    drop(pk);
    e.read_f64(&ok, 1)[0]
}

/// An elementwise kernel `k(out, in…, n[, flag])` over tensors of equal length.
fn elementwise<E: Exec>(e: &E, kernel: Kernel, out: Dev, ins: &[Dev], flag: Option<i32>) {
    for (i, x) in ins.iter().enumerate() {
        assert!(
            x.len == out.len,
            "{}: input {i} has {} elements, expected {}",
            kernel.name(),
            x.len,
            out.len
        );
    }
    let o = out.addr;
    let addrs: Vec<u64> = ins.iter().map(|x| x.addr).collect();
    let n = out.len as i64;
    let mut args = vec![EmuArg::of(&o)];
    args.extend(addrs.iter().map(EmuArg::of));
    args.push(EmuArg::of(&n));
    if let Some(f) = &flag {
        args.push(EmuArg::of(f));
    }
    // SAFETY: module comment above (all tensors have `n` elements).
    unsafe { e.launch(kernel, flat(out.len), &[out.out("out")], &args) }
}

/// Checks that every tensor has `n` elements.
#[track_caller]
fn same_len(op: &str, n: usize, named: &[(&str, Dev)]) {
    for (name, d) in named {
        check_len(op, name, d.len, n);
    }
}
