//! The emulator catches a missing barrier deterministically. build.rs compiles a copy of `reduce.cu` whose
//! block reduction (`block_sum`) lacks the `__syncthreads` between the per-warp partial writes to shared
//! memory and their reads (`Fixture::*MissingSync`). Under the baton, ascending order lets warp 0 read the
//! partials before warps 1.. wrote them (the emulator poisons shared memory with NaN before every block),
//! descending order lets them write first: the two outputs differ on every run, with any input, so
//! `launch_both_orders` reports the race each time — while the correct kernel passes on the same inputs.

use crate::util::randn_f32 as randn;
use rotadam::backend::emu::launch::{launch, launch_both_orders, Order};
use rotadam::backend::kernel::{Geometry, OutBuf, BLOCK, REDUCE_CHUNK};
use rotadam::kernels::{EmuArg, Fixture, Kernel, Launchable};
use rotadam::rng::Rng;

/// Runs a sum_squares_partial kernel (correct or racy) on `x` under both orders.
fn run_both<K: Launchable>(k: K, x: &[f32]) -> (Vec<f64>, rotadam::Result<()>) {
    let parts = x.len().div_ceil(REDUCE_CHUNK);
    let mut partial = vec![0f64; parts];
    let (pp, xp, n) = (partial.as_mut_ptr(), x.as_ptr(), x.len() as i64);
    // SAFETY: partial has one f64 per block; x has n elements.
    let res = unsafe {
        launch_both_orders(
            k,
            Geometry::blocks(parts, BLOCK),
            &[OutBuf::new("partial", pp, parts)],
            &[EmuArg::of(&pp), EmuArg::of(&xp), EmuArg::of(&n)],
        )
    };
    (partial, res)
}

#[test]
fn a_removed_syncthreads_is_reported_every_time() {
    for seed in 0..8u64 {
        let mut rng = Rng::new(100 + seed);
        let n = REDUCE_CHUNK + 1000 + 97 * seed as usize; // two blocks, the second partial
        let x: Vec<f32> = randn(&mut rng, n, 1.0).iter().map(|&v| v as f32).collect();
        let (good, res) = run_both(Kernel::SumSquaresPartial, &x);
        res.unwrap_or_else(|e| panic!("seed {seed}: the correct kernel was flagged: {e}"));
        let want: f64 = x[..REDUCE_CHUNK]
            .iter()
            .map(|&v| (v as f64) * (v as f64))
            .sum();
        assert!(
            (good[0] - want).abs() <= 1e-12 * want,
            "seed {seed}: {} vs {want}",
            good[0]
        );

        let (_, res) = run_both(Fixture::SumSquaresPartialMissingSync, &x);
        let msg = match res {
            Err(e) => e.to_string(),
            Ok(()) => panic!("seed {seed}: the missing __syncthreads was not reported"),
        };
        assert!(
            msg.contains("sum_squares_partial_missing_sync")
                && msg.contains("`partial`")
                && msg.contains("ascending and descending"),
            "seed {seed}: unexpected report: {msg}"
        );
    }
}

#[test]
fn the_racy_reduction_reads_unwritten_shared_memory_in_ascending_order() {
    // What the report means: ascending order reads poisoned (NaN) partials; descending order happens to
    // be correct. On a GPU either could happen on any run.
    let mut rng = Rng::new(7);
    let x: Vec<f32> = randn(&mut rng, 3000, 1.0)
        .iter()
        .map(|&v| v as f32)
        .collect();
    let want: f64 = x.iter().map(|&v| (v as f64) * (v as f64)).sum();
    for (order, expect_nan) in [(Order::Ascending, true), (Order::Descending, false)] {
        let mut partial = [0f64; 1];
        let (pp, xp, n) = (partial.as_mut_ptr(), x.as_ptr(), x.len() as i64);
        // SAFETY: one block, one partial; x has n elements.
        unsafe {
            launch(
                Fixture::SumSquaresPartialMissingSync,
                Geometry::blocks(1, BLOCK),
                order,
                &[EmuArg::of(&pp), EmuArg::of(&xp), EmuArg::of(&n)],
            )
            .unwrap();
        }
        if expect_nan {
            assert!(partial[0].is_nan(), "{order:?}: {}", partial[0]);
        } else {
            assert!(
                (partial[0] - want).abs() <= 1e-12 * want,
                "{order:?}: {} vs {want}",
                partial[0]
            );
        }
    }
}

#[test]
fn emulator_rejects_bad_launches_with_a_message() {
    let mut out = [0f32; 4];
    let (op, v, n) = (out.as_mut_ptr(), 1.5f32, 4i64);
    // a wrong argument size (i32 where the kernel takes long long)
    let bad_n = 4i32;
    // SAFETY: the launcher's size check (argument 2 has 4 bytes, fill's `long long n` 8) rejects the call
    // before the kernel runs, so no argument is dereferenced.
    let err = unsafe {
        launch(
            Kernel::Fill,
            Geometry::linear(4, BLOCK),
            Order::Ascending,
            &[EmuArg::of(&op), EmuArg::of(&v), EmuArg::of(&bad_n)],
        )
    }
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("fill: argument 2 has 4 bytes, the kernel's parameter has 8"),
        "{err}"
    );
    // SAFETY: the launcher's argument-count check (1 given, fill takes 3) rejects the call before the kernel
    // runs, so no argument is dereferenced.
    let err = unsafe {
        launch(
            Kernel::Fill,
            Geometry::linear(4, BLOCK),
            Order::Ascending,
            &[EmuArg::of(&op)],
        )
    }
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("1 arguments given, the kernel takes 3"),
        "{err}"
    );
    // SAFETY: a block of 2048 threads is rejected before running.
    let err = unsafe {
        launch(
            Kernel::Fill,
            Geometry::blocks(1, 2048),
            Order::Ascending,
            &[EmuArg::of(&op), EmuArg::of(&v), EmuArg::of(&n)],
        )
    }
    .unwrap_err()
    .to_string();
    assert!(err.contains("block of 2048 threads"), "{err}");
    // SAFETY: out has 4 elements = n.
    unsafe {
        launch(
            Kernel::Fill,
            Geometry::linear(4, BLOCK),
            Order::Descending,
            &[EmuArg::of(&op), EmuArg::of(&v), EmuArg::of(&n)],
        )
    }
    .unwrap();
    assert_eq!(out, [1.5; 4]);
}
