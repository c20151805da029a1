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

use super::{check_len, with_scratch, CHUNK};
use crate::backend::Scalar;
use rayon::prelude::*;

/// Target number of elements per GEMM chunk (whole blocks; at least one block per chunk).
pub const CHUNK_ELEMS: usize = 1 << 22;

/// Below this many elements the scatter runs on the calling thread only.
const SCATTER_PAR_MIN: usize = 1 << 15;

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

/// out[index[i]] = y[i]. Parallel over disjoint ranges of `out`: the span [min, max] of the indices is cut
/// into one range per thread (so local index lists — rows, columns — split evenly too); task k scans the
/// whole index list and writes the entries that fall in its range.
fn scatter<T: Scalar>(out: &mut [T], y: &[T], index: &[u32]) {
    let parts = rayon::current_num_threads();
    if parts <= 1 || y.len() < SCATTER_PAR_MIN {
        for (&i, &v) in index.iter().zip(y) {
            out[i as usize] = v;
        }
        return;
    }
    let (min, max) = index
        .par_chunks(CHUNK)
        .map(|c| {
            c.iter()
                .fold((u32::MAX, 0), |(a, b), &i| (a.min(i), b.max(i)))
        })
        .reduce(|| (u32::MAX, 0), |(a, b), (c, d)| (a.min(c), b.max(d)));
    let (lo, hi) = (min as usize, max as usize + 1);
    assert!(
        hi <= out.len(),
        "unrotate: index {max} is out of bounds for an output of {} elements",
        out.len()
    );
    let part_len = (hi - lo).div_ceil(parts);
    out[lo..hi]
        .par_chunks_mut(part_len)
        .enumerate()
        .for_each(|(k, o)| {
            let start = lo + k * part_len;
            for (&i, &v) in index.iter().zip(y) {
                let j = (i as usize).wrapping_sub(start);
                if j < o.len() {
                    o[j] = v;
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
