//! Batched block rotation with a gather, and its transpose with a scatter (ARCHITECTURE.md decision 3;
//! Maes et al. App. C.1: the block-diagonal R_n ⊕ … ⊕ R_n applied to permuted coordinates).
//!
//! - `rotate`:   out (NB,N) row b = R · inp[index[b·N .. (b+1)·N]]   i.e. OUT = X·Rᵀ, X the gathered rows;
//! - `unrotate`: Y = U·R (row b of Y = Rᵀ · u_b), then out[index[i]] = Y[i] (a scatter, `=`).
//!
//! R is (N,N) row-major. The blocks are processed in chunks of about [`CHUNK_ELEMS`] elements (whole blocks):
//! each chunk is one gather into a per-thread scratch buffer and ONE `T::gemm` (chunk·N × N × N) on the
//! backend's threads, so the scratch stays a few MB instead of the size of the model while every GEMM is
//! still large (5,461 × 768 × 768 at N = 768). Gathers are rayon-parallel over fixed chunks; the scatter is
//! parallel over disjoint ranges of `out` (each task scans the chunk's index list and writes only its own
//! range), so it needs no unsafe code and is deterministic even if an index repeats (the last one wins).
//! No bf16 rounding: rotations run in `T` (the paper applies them in single precision).
//! Invariants: `rotate` overwrites all of `out`; `unrotate` overwrites exactly the entries named by `index`
//! and leaves the others untouched.

use super::{check_len, CHUNK};
use crate::backend::Scalar;
use rayon::prelude::*;
use std::cell::RefCell;

/// Target number of elements per GEMM chunk (whole blocks; at least one block per chunk).
pub const CHUNK_ELEMS: usize = 1 << 22;

/// Below this many elements the scatter runs on the calling thread only.
const SCATTER_PAR_MIN: usize = 1 << 15;

thread_local! {
    /// Reused scratch for the gathered (rotate) or rotated (unrotate) chunk (u64 words: f32 and f64 fit).
    static SCRATCH: RefCell<Vec<u64>> = const { RefCell::new(Vec::new()) };
}

/// Runs `f` on a scratch slice of `len` elements (contents unspecified), reusing a per-thread buffer.
fn with_scratch<T: Scalar, R>(len: usize, f: impl FnOnce(&mut [T]) -> R) -> R {
    let words = (len * std::mem::size_of::<T>()).div_ceil(8);
    SCRATCH.with(|cell| match cell.try_borrow_mut() {
        Ok(mut buf) => {
            if buf.len() < words {
                buf.resize(words, 0);
            }
            let s: &mut [T] = bytemuck::cast_slice_mut(&mut buf[..words]);
            f(&mut s[..len])
        }
        // Re-entered (a rayon task of another rotation stolen by this thread): a fresh allocation.
        Err(_) => f(&mut vec![T::zero(); len]),
    })
}

/// Blocks of `n` per chunk.
fn chunk_blocks(n: usize) -> usize {
    (CHUNK_ELEMS / n).max(1)
}

/// Checks shared by both ops.
#[track_caller]
fn check(op: &str, blocks: usize, index: &[u32], r: &[impl Sized], nb: usize, n: usize) {
    check_len(op, "blocks", blocks, nb * n);
    check_len(op, "index", index.len(), nb * n);
    check_len(op, "r", r.len(), n * n);
}

/// x[i] = inp[index[i]], parallel over fixed chunks.
fn gather<T: Scalar>(x: &mut [T], inp: &[T], index: &[u32]) {
    x.par_chunks_mut(CHUNK)
        .zip(index.par_chunks(CHUNK))
        .for_each(|(x, ix)| {
            for (x, &i) in x.iter_mut().zip(ix) {
                *x = inp[i as usize];
            }
        });
}

/// out[index[i]] = y[i]. Parallel over disjoint ranges of `out`: task k owns [lo, hi) and scans the whole
/// index list, writing the entries that fall in its range (an index past the end panics in the last task).
fn scatter<T: Scalar>(out: &mut [T], y: &[T], index: &[u32]) {
    let parts = rayon::current_num_threads();
    if parts <= 1 || y.len() < SCATTER_PAR_MIN || out.is_empty() {
        for (&i, &v) in index.iter().zip(y) {
            out[i as usize] = v;
        }
        return;
    }
    let part_len = out.len().div_ceil(parts);
    let last = out.len().div_ceil(part_len) - 1;
    out.par_chunks_mut(part_len).enumerate().for_each(|(k, o)| {
        let lo = k * part_len;
        let hi = lo + o.len();
        for (&i, &v) in index.iter().zip(y) {
            let i = i as usize;
            if i >= lo && (i < hi || k == last) {
                o[i - lo] = v;
            }
        }
    });
}

/// out (NB·N) = for each block b: R · inp[index[b·N .. (b+1)·N]]; R (N,N) row-major. `=`.
/// `index` has NB·N entries, each < inp.len(); GEMMs run on `threads` threads.
pub fn rotate<T: Scalar>(
    out: &mut [T],
    inp: &[T],
    index: &[u32],
    r: &[T],
    nb: usize,
    n: usize,
    threads: usize,
) {
    check("rotate", out.len(), index, r, nb, n);
    if nb == 0 || n == 0 {
        return;
    }
    let chunk = chunk_blocks(n) * n;
    with_scratch(chunk.min(nb * n), |s: &mut [T]| {
        for (o, ix) in out.chunks_mut(chunk).zip(index.chunks(chunk)) {
            let x = &mut s[..o.len()];
            gather(x, inp, ix);
            T::gemm(o, x, r, o.len() / n, n, n, false, true, false, threads);
        }
    });
}

/// For each block b: out[index[b·N + i]] = (Rᵀ · inp[b·N .. (b+1)·N])ᵢ; R (N,N) row-major. `=` on the
/// entries named by `index` (each < out.len()); the others are untouched. GEMMs run on `threads` threads.
pub fn unrotate<T: Scalar>(
    out: &mut [T],
    inp: &[T],
    index: &[u32],
    r: &[T],
    nb: usize,
    n: usize,
    threads: usize,
) {
    check("unrotate", inp.len(), index, r, nb, n);
    if nb == 0 || n == 0 {
        return;
    }
    let chunk = chunk_blocks(n) * n;
    with_scratch(chunk.min(nb * n), |s: &mut [T]| {
        for (u, ix) in inp.chunks(chunk).zip(index.chunks(chunk)) {
            let y = &mut s[..u.len()];
            T::gemm(y, u, r, u.len() / n, n, n, false, false, false, threads);
            scatter(out, y, ix);
        }
    });
}
