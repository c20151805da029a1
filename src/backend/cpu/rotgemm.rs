//! The f32 GEMM of the block rotations, C = A·B with B = Rᵀ (`rotate`) or R (`unrotate`), whose rows of
//! A are produced, and rows of C consumed, one L2-sized block at a time (an AVX-512 kernel).
//!
//! Through faer, the bucketed `rotate` must first write its gathered rows out whole (pass 2: a 16 MB
//! chunk), which faer's packing then reads again, and `unrotate` writes C whole before pass 2 reads it
//! back. Here the packing *is* the gather: [`gemm_rows`] asks the caller's `fill` for each row of a block
//! (the bucketed plan reads the window's bucket through the inverse offsets; a direct list reads the
//! source), transposes MR rows at a time into the kernel's panel layout while they are in L1, computes the
//! block of C into a per-thread buffer, and hands it to the caller's `finish` (a copy, or pass 2 of
//! `unrotate`, which fills the window's bucket from it) while it is still in L2. Layout and blocking follow
//! the GotoBLAS/BLIS scheme (Goto & van de Geijn, "Anatomy of high-performance matrix multiplication",
//! ACM TOMS 34(3), 2008): B packed once per call in panels of [`NR`] columns, A in panels of [`MR`] rows,
//! k in blocks of [`KC`] (one block up to n = 1024), a 12×32 register tile (24 zmm accumulators, two B
//! vectors, one broadcast operand).
//!
//! Every entry of C is one FMA chain over k in increasing order whatever the blocking or thread count, so
//! results do not depend on either; they differ from faer's in the last bits (another summation order),
//! which is why the direct and bucketed plans both use this kernel whenever it [`fits`]. Its speed is on a
//! par with faer's at the rotation's shapes (`bench rotation`: `kernel_chunk_gflops` against
//! `gemm_chunk_gflops`; figures in `docs/benchmarks.md`): the gain is in the passes it removes.

use super::Scalar;
use rayon::prelude::*;
use std::cell::RefCell;

/// Rows of the register tile.
pub const MR: usize = 12;
/// Columns of the register tile (two 16-lane vectors); n must be a multiple.
pub const NR: usize = 32;
/// k per block. No blocking up to n = 1024 measured fastest on the development machine
/// (`docs/benchmarks.md`): the B panel (n·NR·4 ≤ 128 KB) streams from L2 well, and C is stored once
/// instead of being reloaded per k block.
pub const KC: usize = 1024;

/// Whether this kernel computes the rotation GEMM of blocks of `n` in `T`: f32, n a multiple of [`NR`],
/// and a CPU with AVX-512F (checked once at run time).
pub fn fits<T: Scalar>(n: usize) -> bool {
    std::any::TypeId::of::<T>() == std::any::TypeId::of::<f32>()
        && n > 0
        && n.is_multiple_of(NR)
        && avx512()
}

#[cfg(target_arch = "x86_64")]
fn avx512() -> bool {
    std::arch::is_x86_feature_detected!("avx512f")
}

#[cfg(not(target_arch = "x86_64"))]
fn avx512() -> bool {
    false
}

/// The right operand B (n×n) in the kernel's layout: panel p of NR columns holds, for each k, the NR
/// values B[k][p·NR .. (p+1)·NR].
pub struct PackedB {
    n: usize,
    data: Vec<f32>,
}

impl PackedB {
    /// B = Rᵀ (`rotate`: OUT = X·Rᵀ) when `transpose`, else B = R (`unrotate`: Y = U·R); R is n×n
    /// row-major.
    pub fn new(r: &[f32], n: usize, transpose: bool) -> Self {
        assert!(
            n.is_multiple_of(NR),
            "rotgemm: n = {n} is not a multiple of {NR}"
        );
        assert_eq!(
            r.len(),
            n * n,
            "rotgemm: R has {} elements, expected {n}²",
            r.len()
        );
        let mut data = vec![0f32; n * n];
        data.par_chunks_mut(n * NR)
            .enumerate()
            .for_each(|(p, panel)| {
                for (k, row) in panel.chunks_exact_mut(NR).enumerate() {
                    for (j, v) in row.iter_mut().enumerate() {
                        let col = p * NR + j;
                        *v = if transpose {
                            r[col * n + k]
                        } else {
                            r[k * n + col]
                        };
                    }
                }
            });
        PackedB { n, data }
    }
}

/// Per-thread buffers of [`gemm_rows`]: MR rows as `fill` writes them, the packed A block, the C block.
#[derive(Default)]
struct Bufs {
    rows: Vec<f32>,
    packed: Vec<f32>,
    c: Vec<f32>,
}

thread_local! {
    static BUFS: RefCell<Bufs> = RefCell::new(Bufs::default());
}

/// For each block of `mc` rows (the last may be shorter) of a product C = A·B with `dest.len() / n` rows:
/// `fill(i, row)` writes row i of A (n elements, counted from the first row), the block of C is computed
/// into a per-thread buffer (L2-sized for mc·n·4 ≲ 1 MB), then `finish(first_row, c, dest_block)` moves it
/// into the block's `mc·n` elements of `dest`. Blocks run in parallel on the current rayon pool. Panics
/// unless [`fits`]`::<f32>(n)`, mc ≥ 1 and dest.len() is a multiple of n.
pub fn gemm_rows(
    dest: &mut [f32],
    mc: usize,
    b: &PackedB,
    fill: impl Fn(usize, &mut [f32]) + Sync,
    finish: impl Fn(usize, &[f32], &mut [f32]) + Sync,
) {
    let n = b.n;
    assert!(fits::<f32>(n), "rotgemm: no AVX-512 kernel for n = {n}");
    assert!(mc >= 1, "rotgemm: blocks of 0 rows");
    assert!(
        dest.len().is_multiple_of(n),
        "rotgemm: dest has {} elements, not a multiple of n = {n}",
        dest.len()
    );
    let run = |blk: usize, d: &mut [f32], bufs: &mut Bufs| {
        let c = block(d.len() / n, blk * mc, b, &fill, bufs);
        finish(blk * mc, c, d);
    };
    dest.par_chunks_mut(mc * n)
        .enumerate()
        .for_each(|(blk, d)| {
            BUFS.with(|bufs| match bufs.try_borrow_mut() {
                Ok(mut bufs) => run(blk, d, &mut bufs),
                // Re-entered (a stolen task while this thread holds the buffers): fresh ones.
                Err(_) => run(blk, d, &mut Bufs::default()),
            })
        });
}

/// C (m rows, the first being row `first` of A) = A·B in `bufs.c`: pack, then the kernel over every
/// (k block, column panel, row panel).
fn block<'a>(
    m: usize,
    first: usize,
    b: &PackedB,
    fill: &impl Fn(usize, &mut [f32]),
    bufs: &'a mut Bufs,
) -> &'a [f32] {
    let n = b.n;
    let panels = m.div_ceil(MR);
    let Bufs { rows, packed, c } = bufs;
    rows.resize(MR * n, 0.0);
    packed.resize(panels * MR * n, 0.0);
    c.resize(m * n, 0.0);
    let c = &mut c[..m * n];
    for (p, panel) in packed.chunks_exact_mut(MR * n).enumerate().take(panels) {
        let here = MR.min(m - p * MR);
        for (i, row) in rows.chunks_exact_mut(n).enumerate() {
            if i < here {
                fill(first + p * MR + i, row);
            } else {
                row.fill(0.0);
            }
        }
        // panel[k·MR + i] = A[p·MR + i][k]
        for (k, col) in panel.chunks_exact_mut(MR).enumerate() {
            for (i, v) in col.iter_mut().enumerate() {
                *v = rows[i * n + k];
            }
        }
    }
    for k0 in (0..n).step_by(KC) {
        let kl = KC.min(n - k0);
        for (jp, bp) in b.data.chunks_exact(n * NR).enumerate() {
            let bp = &bp[k0 * NR..][..kl * NR];
            for (p, a) in packed.chunks_exact(MR * n).enumerate().take(panels) {
                let a = &a[k0 * MR..][..kl * MR];
                let here = MR.min(m - p * MR);
                let tile = &mut c[p * MR * n + jp * NR..];
                tile_kernel(kl, a, bp, tile, n, here, k0 > 0);
            }
        }
    }
    c
}

/// c[i·ldc + j] (+)= Σ_k a[k·MR + i]·b[k·NR + j] for i < rows, j < NR; `add`: start from c's values.
fn tile_kernel(kl: usize, a: &[f32], b: &[f32], c: &mut [f32], ldc: usize, rows: usize, add: bool) {
    assert!((1..=MR).contains(&rows) && a.len() >= kl * MR && b.len() >= kl * NR);
    assert!(c.len() >= (rows - 1) * ldc + NR);
    #[cfg(target_arch = "x86_64")]
    // SAFETY: tile_kernel's only caller, `block`, runs only inside `gemm_rows`, which first asserts
    // `fits::<f32>(n)` (AVX-512F detected on this CPU); the two asserts at the top of this function bound
    // every access the kernel makes (a: kl·MR, b: kl·NR, c: `rows` rows of NR at stride ldc).
    unsafe {
        avx512_kernel(kl, a.as_ptr(), b.as_ptr(), c.as_mut_ptr(), ldc, rows, add)
    }
    #[cfg(not(target_arch = "x86_64"))]
    unreachable!("rotgemm: no kernel on this architecture (`fits` is false)")
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
/// # Safety
/// AVX-512F must be available; a: kl·MR, b: kl·NR readable; c: `rows` rows of NR at stride ldc writable.
unsafe fn avx512_kernel(
    kl: usize,
    a: *const f32,
    b: *const f32,
    c: *mut f32,
    ldc: usize,
    rows: usize,
    add: bool,
) {
    use std::arch::x86_64::*;
    let mut acc = [[_mm512_setzero_ps(); 2]; MR];
    if add {
        for (i, acc) in acc.iter_mut().enumerate().take(rows) {
            // SAFETY: i < rows, and the caller guarantees c readable for `rows` rows of NR = 32 floats at
            // stride ldc, so the two 16-lane loads at c[i·ldc] and c[i·ldc + 16] are in bounds (unaligned
            // loads: no alignment needed).
            unsafe {
                acc[0] = _mm512_loadu_ps(c.add(i * ldc));
                acc[1] = _mm512_loadu_ps(c.add(i * ldc + 16));
            }
        }
    }
    for k in 0..kl {
        // SAFETY: k < kl, and the caller guarantees a readable for kl·MR and b for kl·NR floats, so the loads
        // of b[k·NR .. k·NR + 32] and of a[k·MR + i], i < MR, are in bounds (unaligned loads).
        unsafe {
            let b0 = _mm512_loadu_ps(b.add(k * NR));
            let b1 = _mm512_loadu_ps(b.add(k * NR + 16));
            for (i, acc) in acc.iter_mut().enumerate() {
                let av = _mm512_set1_ps(*a.add(k * MR + i));
                acc[0] = _mm512_fmadd_ps(av, b0, acc[0]);
                acc[1] = _mm512_fmadd_ps(av, b1, acc[1]);
            }
        }
    }
    for (i, acc) in acc.iter().enumerate().take(rows) {
        // SAFETY: i < rows, and the caller guarantees c writable for `rows` rows of NR = 32 floats at stride
        // ldc, so the two 16-lane stores at c[i·ldc] and c[i·ldc + 16] are in bounds (unaligned stores: no
        // alignment needed).
        unsafe {
            _mm512_storeu_ps(c.add(i * ldc), acc[0]);
            _mm512_storeu_ps(c.add(i * ldc + 16), acc[1]);
        }
    }
}
