//! Launching a kernel on the CPU emulator (`kernels/emu/cuda_emu.h`, `kernels/emu/emu_runtime.cpp`), the
//! way cudarc launches it on a GPU: a [`Kernel`], a grid, a block, dynamic shared memory and a list of
//! arguments, each a pointer to its value ([`EmuArg`]).
//!
//! [`launch`] runs one schedule (ascending or descending baton order). [`launch_both_orders`] is what the
//! emulated backend and the tests use: it snapshots the launch's output buffers, runs the ascending
//! schedule, keeps the result, restores the snapshot, runs the descending schedule and requires the two
//! results to be bit-identical — a race (a missing `__syncthreads`, an order-dependent atomic) becomes a
//! deterministic error naming the kernel, the buffer and the first differing element.

use crate::backend::kernel::{Geometry, OutBuf};
use crate::error::{Error, Result};
use crate::kernels::{EmuArg, EmuLaunchCfg, Launchable};

/// The order in which the threads of a block take the baton.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Order {
    Ascending,
    Descending,
}

/// Runs `kernel` once under `order`.
///
/// # Safety
/// `args` must match the kernel's parameters in number and size (checked), and every pointer argument must
/// point to memory valid for everything the kernel reads or writes at this geometry (not checkable).
pub unsafe fn launch<K: Launchable>(
    kernel: K,
    geo: Geometry,
    order: Order,
    args: &[EmuArg],
) -> Result<()> {
    let cfg = EmuLaunchCfg {
        grid: geo.grid,
        block: geo.block,
        smem: geo.smem,
        order: match order {
            Order::Ascending => 0,
            Order::Descending => 1,
        },
    };
    let mut err = vec![0 as std::ffi::c_char; 512];
    // SAFETY: cfg, args and err outlive the call; the launcher rejects a wrong argument count or size before
    // the kernel runs; the caller guarantees every pointer argument covers what the kernel reads or writes at
    // `geo` (`launch`'s # Safety); err is writable for err.len() bytes.
    let rc = unsafe {
        (kernel.launcher())(
            &cfg,
            args.as_ptr(),
            args.len() as u64,
            err.as_mut_ptr(),
            err.len() as u64,
        )
    };
    if rc == 0 {
        return Ok(());
    }
    // SAFETY: `err` was zero-filled and the launcher's error writer copies at most err.len() − 1 bytes
    // followed by a NUL, so `err` holds a NUL within its 512 bytes.
    let msg = unsafe { std::ffi::CStr::from_ptr(err.as_ptr()) }
        .to_string_lossy()
        .into_owned();
    Err(Error::Device(format!("emulator: {msg}")))
}

/// Runs `kernel` under both schedules and requires bit-identical outputs (module docs). On success the
/// outputs hold the result (of the descending run, equal to the ascending one).
///
/// # Safety
/// As [`launch`]; in addition `outs` must cover every byte the kernel writes, each `OutBuf` must be valid
/// for reads and writes of `bytes` bytes, and the kernel's pointer arguments must be derived from the same
/// pointers as `outs` (no other live reference to that memory during the call).
pub unsafe fn launch_both_orders<K: Launchable>(
    kernel: K,
    geo: Geometry,
    outs: &[OutBuf],
    args: &[EmuArg],
) -> Result<()> {
    // An output of no bytes (an absent optional tensor) may be a null pointer: nothing to compare.
    let outs: Vec<OutBuf> = outs.iter().copied().filter(|o| o.bytes > 0).collect();
    // SAFETY: each `o` in `outs` is non-null (bytes > 0, filtered at the top) and, by the caller's guarantee
    // (launch_both_orders' # Safety), valid for reads and writes of `o.bytes` bytes with no other live
    // reference to it; nothing runs while the snapshot is copied.
    let snapshot: Vec<Vec<u8>> = outs
        .iter()
        .map(|o| unsafe { std::slice::from_raw_parts(o.ptr, o.bytes) }.to_vec())
        .collect();
    // SAFETY: the caller guarantees (launch_both_orders' # Safety, which includes launch's) that `args` are
    // the kernel's parameters and that every pointer argument covers what the kernel accesses at `geo`.
    unsafe { launch(kernel, geo, Order::Ascending, args)? };
    // SAFETY: each `o` in `outs` is non-null (bytes > 0, filtered at the top) and, by the caller's guarantee
    // (launch_both_orders' # Safety), valid for reads and writes of `o.bytes` bytes with no other live
    // reference to it; the ascending launch has returned, so nothing writes it during the copy.
    let ascending: Vec<Vec<u8>> = outs
        .iter()
        .map(|o| unsafe { std::slice::from_raw_parts(o.ptr, o.bytes) }.to_vec())
        .collect();
    for (o, s) in outs.iter().zip(&snapshot) {
        // SAFETY: each `o` in `outs` is non-null (bytes > 0, filtered at the top) and, by the caller's
        // guarantee (launch_both_orders' # Safety), valid for reads and writes of `o.bytes` bytes with no
        // other live reference to it; `s` is its snapshot, a separate Vec of exactly `o.bytes` bytes.
        unsafe { std::slice::from_raw_parts_mut(o.ptr, o.bytes) }.copy_from_slice(s);
    }
    // SAFETY: the caller guarantees (launch_both_orders' # Safety, which includes launch's) that `args` are
    // the kernel's parameters and that every pointer argument covers what the kernel accesses at `geo`.
    unsafe { launch(kernel, geo, Order::Descending, args)? };
    for (o, a) in outs.iter().zip(&ascending) {
        // SAFETY: each `o` in `outs` is non-null (bytes > 0, filtered at the top) and, by the caller's
        // guarantee (launch_both_orders' # Safety), valid for reads and writes of `o.bytes` bytes with no
        // other live reference to it; the launch has returned, so nothing writes it while `d` lives.
        let d = unsafe { std::slice::from_raw_parts(o.ptr, o.bytes) };
        if let Some(pos) = d.iter().zip(a).position(|(x, y)| x != y) {
            let word = pos / 4;
            return Err(Error::Device(format!(
                "emulator: {}: output `{}` differs between ascending and descending thread order \
                 (first at byte {pos}, 4-byte word {word}): a race between threads of a block \
                 (missing __syncthreads?) or an order-dependent reduction",
                kernel.kernel_name(),
                o.name
            )));
        }
    }
    Ok(())
}
