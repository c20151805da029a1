//! Launch plans of the rotations, the optimizer steps and the gradient norm (`kernels/rotation.cu`,
//! `kernels/adamw.cu`, `kernels/reduce.cu`), as [`super::transformer`]'s: shapes checked, then the typed
//! launches. The coefficients are converted on the host once ([`AdamCoeffs`], [`decoupled_decay`]).

use super::transformer::{dim, same_len};
use super::{flat, gemm_grid, launch, Dev, DevMut, Exec, Geometry, KernelRotIndex, Mem};
use super::{BLOCK, REDUCE_CHUNK};
use crate::backend::cpu::check_len;
use crate::backend::{check_rotation_index, decoupled_decay, AdamCoeffs, AdamStep};
use crate::error::Result;

// SAFETY (for every `unsafe` launch below): every tensor is live (a `Dev`/`DevMut` borrows its `Mem`) and
// the typed launcher checks that it is memory of `e` (`Dev::check_space`); lengths checked against the
// shapes, index arrays against the tensors they index (a rotation list once, when its `IndexList` is made,
// then its bound against the tensor per launch); the typed launcher supplies the kernel's own arguments.

/// A rotation index list checked once, when it is prepared (`Backend::rotation_index`): distinct
/// entries, each < `src_len`. A launch then checks `src_len` against the tensor it gathers from or
/// scatters to in O(1), instead of scanning the whole list on every call (at 124M that scan would be a
/// host pass over 0.5 GB per rotation, every step).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IndexList {
    list: Vec<u32>,
    src_len: usize,
}

impl IndexList {
    /// Checks `list` (range and distinctness, [`check_rotation_index`]) and keeps it.
    pub fn new(list: Vec<u32>, src_len: usize) -> Result<Self> {
        check_rotation_index(&list, src_len)?;
        Ok(IndexList { list, src_len })
    }
    pub fn list(&self) -> &[u32] {
        &self.list
    }
}

/// The block structure of a rotation launch: the index list (checked on the host, resident on the
/// device), the shared block matrix R (N,N), and NB blocks of N.
#[derive(Clone, Copy, Debug)]
pub struct RotBlocks<'a> {
    index: Dev<'a, u32>,
    src_len: usize,
    r: Dev<'a, f32>,
    nb: usize,
    n: usize,
}

impl<'a> RotBlocks<'a> {
    pub fn new<E: Exec>(
        index: &'a KernelRotIndex<E>,
        r: Dev<'a, f32>,
        nb: usize,
        n: usize,
    ) -> Self {
        RotBlocks {
            index: index.dev.dev(),
            src_len: index.host.src_len,
            r,
            nb,
            n,
        }
    }

    /// Checks the shapes of `op` — `blocks` (the NB·N tensors in the rotated layout, by name) and the
    /// tensor the list indexes — and returns (NB, N) as kernel arguments; None when there is nothing to
    /// launch.
    #[track_caller]
    fn check(
        &self,
        op: &str,
        blocks: &[(&str, usize)],
        indexed: (&str, usize),
    ) -> Option<(i64, i32)> {
        let (nb, n) = (self.nb, self.n);
        for (name, len) in blocks {
            check_len(op, name, *len, nb * n);
        }
        check_len(op, "index", self.index.len, nb * n);
        check_len(op, "r", self.r.len, n * n);
        assert!(
            self.src_len <= indexed.1,
            "{op}: the index list was prepared for {} elements, {} has {}",
            self.src_len,
            indexed.0,
            indexed.1
        );
        (nb > 0 && n > 0).then(|| (nb as i64, dim(op, "N", n)))
    }
}

/// Block rotation with a gather (`rotate`: out = R·inp[index] per block) or its transpose with a scatter
/// (`unrotate`: out[index] = Rᵀ·inp per block).
pub fn rotate_or_unrotate<E: Exec>(
    e: &E,
    unrotate: bool,
    out: DevMut<f32>,
    inp: Dev<f32>,
    rb: RotBlocks,
) -> Result<()> {
    let geo = gemm_grid(rb.nb, rb.n);
    if unrotate {
        let Some((nb, n)) = rb.check("unrotate", &[("inp", inp.len)], ("out", out.len)) else {
            return Ok(());
        };
        // SAFETY: rb.check: inp, index NB·N, r N·N, and the list (distinct, each < src_len, checked when its
        // IndexList was made; rb.index is its device copy) has src_len ≤ out.len. block_gemm's bounds
        // (b < NB; i, j < N) keep reads of inp[b·N + j], r[j·N + i], index[b·N + i] and writes of
        // out[index[b·N + i]] inside; the generated launcher passes unrotate_scatter's own arguments.
        unsafe { launch::unrotate_scatter(e, geo, out, inp, rb.index, rb.r, nb, n) }
    } else {
        let Some((nb, n)) = rb.check("rotate", &[("out", out.len)], ("inp", inp.len)) else {
            return Ok(());
        };
        // SAFETY: rb.check: out, index NB·N, r N·N, and the list (distinct, each < src_len, checked when its
        // IndexList was made; rb.index is its device copy) has src_len ≤ inp.len. block_gemm's bounds
        // (b < NB; i, j < N) keep reads of inp[index[b·N + j]], r[i·N + j] and writes of out[b·N + i] inside;
        // the generated launcher passes rotate_gather's own arguments.
        unsafe { launch::rotate_gather(e, geo, out, inp, rb.index, rb.r, nb, n) }
    }
}

/// Rotated AdamW, first half (Maes et al. Alg. 2): g̃ = R·grads[index] per block, then m, v and the
/// direction u = m̂/(√v̂ + ε) in the rotated layout, in the GEMM's epilogue (`adamw.cu`).
pub fn rotate_adam_direction<E: Exec>(
    e: &E,
    [u, m, v]: [DevMut<f32>; 3],
    grads: Dev<f32>,
    rb: RotBlocks,
    hp: AdamStep,
) -> Result<()> {
    let blocks = [("u", u.len), ("m", m.len), ("v", v.len)];
    let Some((nb, n)) = rb.check("rotate_adam_direction", &blocks, ("grads", grads.len)) else {
        return Ok(());
    };
    let k = AdamCoeffs::<f32>::new(&hp);
    let geo = gemm_grid(rb.nb, rb.n);
    // SAFETY: rb.check: u, m, v, index NB·N, r N·N, and the list (distinct, each < src_len, checked when its
    // IndexList was made; rb.index is its device copy) has src_len ≤ grads.len. block_gemm's bounds
    // (b < NB; i, j < N) keep grads[index[b·N + j]], r[i·N + j] and u/m/v[b·N + i] inside; the generated
    // launcher passes the kernel's own arguments (AdamCoeffs layout asserted at compile time).
    unsafe { launch::rotate_adam_direction(e, geo, u, m, v, grads, rb.index, rb.r, k, nb, n) }
}

/// Rotated AdamW, second half: params[index] −= lr·(Rᵀ·u) per block, the step in the unrotation GEMM's
/// epilogue (decoupled decay is applied before, per tensor).
pub fn unrotate_apply_update<E: Exec>(
    e: &E,
    params: DevMut<f32>,
    u: Dev<f32>,
    rb: RotBlocks,
    lr: f64,
) -> Result<()> {
    let op = "unrotate_apply_update";
    let Some((nb, n)) = rb.check(op, &[("u", u.len)], ("params", params.len)) else {
        return Ok(());
    };
    let geo = gemm_grid(rb.nb, rb.n);
    // SAFETY: rb.check: u, index NB·N, r N·N, and the list (distinct, each < src_len, checked when its
    // IndexList was made; rb.index is its device copy) has src_len ≤ params.len. block_gemm's bounds
    // (b < NB; i, j < N) keep u[b·N + j], r[j·N + i] and params[index[b·N + i]] inside; the generated
    // launcher passes the kernel's own arguments.
    unsafe { launch::unrotate_apply_update(e, geo, params, u, rb.index, rb.r, lr as f32, nb, n) }
}

/// Fused AdamW over one tensor.
pub fn adamw_step<E: Exec>(
    e: &E,
    [params, m, v]: [DevMut<f32>; 3],
    grads: Dev<f32>,
    hp: AdamStep,
) -> Result<()> {
    let n = params.len;
    same_len(
        "adamw_step",
        n,
        &[("m", m.len), ("v", v.len), ("grads", grads.len)],
    );
    let k = AdamCoeffs::<f32>::new(&hp);
    // SAFETY: same_len: m, v, grads have n = params.len elements; threads i < n (the guard) touch
    // params/m/v/grads[i] only; the generated launcher passes adamw_step's own arguments (AdamCoeffs by
    // value, its layout asserted against the C struct at compile time).
    unsafe { launch::adamw_step(e, flat(n), params, m, v, grads, k, n as i64) }
}

/// SGD with momentum over one tensor.
pub fn sgd_step<E: Exec>(
    e: &E,
    [params, buf]: [DevMut<f32>; 2],
    grads: Dev<f32>,
    lr: f64,
    momentum: f64,
    weight_decay: f64,
) -> Result<()> {
    let n = params.len;
    same_len(
        "sgd_step",
        n,
        &[("momentum_buf", buf.len), ("grads", grads.len)],
    );
    let decay = decoupled_decay(lr, weight_decay) as f32;
    // SAFETY: same_len: momentum_buf and grads have n = params.len elements; threads i < n (the guard) touch
    // params/momentum_buf/grads[i] only; the generated launcher passes sgd_step's own arguments.
    unsafe {
        launch::sgd_step(
            e,
            flat(n),
            params,
            buf,
            grads,
            lr as f32,
            momentum as f32,
            decay,
            n as i64,
        )
    }
}

/// Adam moments and direction.
pub fn adam_direction_step<E: Exec>(
    e: &E,
    [u, m, v]: [DevMut<f32>; 3],
    grads: Dev<f32>,
    hp: AdamStep,
) -> Result<()> {
    let n = u.len;
    let named = [("m", m.len), ("v", v.len), ("grads", grads.len)];
    same_len("adam_direction_step", n, &named);
    let k = AdamCoeffs::<f32>::new(&hp);
    // SAFETY: same_len: m, v, grads have n = u.len elements; threads i < n (the guard) touch u/m/v/grads[i]
    // only; the generated launcher passes adam_direction_step's own arguments (AdamCoeffs layout asserted at
    // compile time).
    unsafe { launch::adam_direction_step(e, flat(n), u, m, v, grads, k, n as i64) }
}

/// SGD momentum and direction.
pub fn sgd_direction_step<E: Exec>(
    e: &E,
    [u, buf]: [DevMut<f32>; 2],
    grads: Dev<f32>,
    momentum: f64,
) -> Result<()> {
    let n = u.len;
    same_len(
        "sgd_direction_step",
        n,
        &[("momentum_buf", buf.len), ("grads", grads.len)],
    );
    // SAFETY: same_len: momentum_buf and grads have n = u.len elements; threads i < n (the guard) touch
    // u/momentum_buf/grads[i] only; the generated launcher passes sgd_direction_step's own arguments.
    unsafe { launch::sgd_direction_step(e, flat(n), u, buf, grads, momentum as f32, n as i64) }
}

/// Mean of squares per block.
pub fn block_mean_squares<E: Exec>(
    e: &E,
    out: DevMut<f32>,
    x: Dev<f32>,
    block: usize,
) -> Result<()> {
    assert!(block > 0, "block_mean_squares: block must be > 0");
    check_len("block_mean_squares", "x", x.len, out.len * block);
    let geo = Geometry::blocks(out.len, BLOCK);
    // SAFETY: block > 0 and x.len = out.len·block (check_len); one block per element of out, blocks
    // bi ≥ out.len return, so block bi reads x[bi·block + i], i < block, and writes out[bi]; the generated
    // launcher passes block_mean_squares's own arguments.
    unsafe { launch::block_mean_squares(e, geo, out, x, block as i64, out.len as i64) }
}

/// v = β₂v + (1−β₂)s
pub fn ema_inplace<E: Exec>(e: &E, v: DevMut<f32>, s: Dev<f32>, beta2: f64) -> Result<()> {
    check_len("ema_inplace", "s", s.len, v.len);
    let (b, ob) = (beta2 as f32, (1.0 - beta2) as f32);
    // SAFETY: check_len: s has v.len elements; threads i < n = v.len (the guard) update v[i] from s[i]; the
    // generated launcher passes ema_inplace's own arguments.
    unsafe { launch::ema_inplace(e, flat(v.len), v, s, b, ob, v.len as i64) }
}

/// Momentum with one second moment per block.
pub fn block_adam_direction_step<E: Exec>(
    e: &E,
    [u, m]: [DevMut<f32>; 2],
    [v, grads]: [Dev<f32>; 2],
    block: usize,
    hp: AdamStep,
) -> Result<()> {
    let n = u.len;
    let op = "block_adam_direction_step";
    assert!(block > 0, "{op}: block must be > 0");
    same_len(op, n, &[("m", m.len), ("grads", grads.len)]);
    check_len(op, "v", v.len * block, n);
    let k = AdamCoeffs::<f32>::new(&hp);
    // SAFETY: same_len: m, grads have n = u.len elements; block > 0 and v.len·block = n (check_len), so
    // threads i < n (the guard) read v[i / block] < v.len and touch u/m/grads[i]; the generated launcher
    // passes the kernel's own arguments.
    unsafe {
        launch::block_adam_direction_step(e, flat(n), u, m, v, grads, block as i64, k, n as i64)
    }
}

/// p = p·(1 − lr·λ) − lr·u
pub fn apply_update<E: Exec>(
    e: &E,
    params: DevMut<f32>,
    u: Dev<f32>,
    lr: f64,
    weight_decay: f64,
) -> Result<()> {
    let n = params.len;
    check_len("apply_update", "u", u.len, n);
    let decay = decoupled_decay(lr, weight_decay) as f32;
    // SAFETY: check_len: u has n = params.len elements; threads i < n (the guard) update params[i] from u[i];
    // the generated launcher passes apply_update's own arguments.
    unsafe { launch::apply_update(e, flat(n), params, u, lr as f32, decay, n as i64) }
}

/// Σ x² in f64: per-block partials, then one block sums them in order.
pub fn sum_squares<E: Exec>(e: &E, x: Dev<f32>) -> Result<f64> {
    let parts = x.len.div_ceil(REDUCE_CHUNK).max(1);
    let mut partial = Mem::<E, f64>::zeros(e, parts)?;
    let mut out = Mem::<E, f64>::zeros(e, 1)?;
    // SAFETY: `partial` holds parts = ⌈x.len / REDUCE_CHUNK⌉ (≥ 1) f64, one per block of the first grid:
    // block b reads x[b·REDUCE_CHUNK + i] below n = x.len and writes partial[b]. The single 1024-thread block
    // then reads partial[i], i < nparts = parts (< 2^31: Geometry::blocks asserted it), and writes out[0]
    // (1 f64). The generated launchers pass each kernel's own arguments.
    unsafe {
        launch::sum_squares_partial(
            e,
            Geometry::blocks(parts, BLOCK),
            partial.dev_mut(),
            x,
            x.len as i64,
        )?;
        launch::sum_partials(
            e,
            Geometry::blocks(1, 1024),
            out.dev_mut(),
            partial.dev(),
            parts as i32,
        )?;
    }
    Ok(out.download(e)?[0])
}
