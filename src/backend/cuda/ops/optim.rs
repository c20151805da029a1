//! Launch plans of the rotations and the optimizer steps (module docs of `ops`).

use super::{dim, flat, gemm_grid, same_len, Dev, Exec, BLOCK};
use crate::backend::cpu::check_len;
use crate::backend::emu::launch::Geometry;
use crate::backend::{check_rotation_index, decoupled_decay, AdamCoeffs, AdamStep};
use crate::error::Result;
use crate::kernels::{EmuArg, Kernel};

// SAFETY (for every `unsafe` launch below): as in `ops` — lengths checked against the shapes, index
// arrays against the tensors they index (a rotation list once, when its `IndexList` is made, then its
// bound against the tensor per launch), `outs` lists every written tensor, arguments follow the kernel.

/// A rotation index list checked once, when it is prepared ([`Backend::rotation_index`]): distinct
/// entries, each < `src_len`. A launch then checks `src_len` against the tensor it gathers from or
/// scatters to in O(1), instead of scanning the whole list on every call (at 124M that scan would be a
/// host pass over 0.5 GB per rotation, every step).
///
/// [`Backend::rotation_index`]: crate::backend::Backend::rotation_index
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

/// The block structure of a rotation launch: the prepared index list, the address of a copy kernels can
/// already read (`resident`: a device-resident list; None stages the list for the call), the shared
/// block matrix R (N,N) and NB blocks of N. Built only inside the crate, by the backends that own the
/// buffers: `resident` is a raw address that kernels read.
#[derive(Clone, Copy, Debug)]
pub struct RotBlocks<'a> {
    pub(crate) index: &'a IndexList,
    pub(crate) resident: Option<u64>,
    pub(crate) r: Dev,
    pub(crate) nb: usize,
    pub(crate) n: usize,
}

impl RotBlocks<'_> {
    /// Checks the shapes of `op` — `blocks` (the NB·N tensors in the rotated layout, by name) and the
    /// tensor the list indexes — and returns the index list's address, a staged copy to keep alive, and
    /// (NB, N) as kernel arguments; None when there is nothing to launch.
    #[track_caller]
    fn prepare<E: Exec>(
        &self,
        e: &E,
        op: &str,
        blocks: &[(&str, Dev)],
        indexed: (&str, Dev),
    ) -> Option<(u64, Option<E::Staged>, i64, i32)> {
        let (nb, n) = (self.nb, self.n);
        for (name, t) in blocks {
            check_len(op, name, t.len, nb * n);
        }
        check_len(op, "index", self.index.list.len(), nb * n);
        check_len(op, "r", self.r.len, n * n);
        assert!(
            self.index.src_len <= indexed.1.len,
            "{op}: the index list was prepared for {} elements, {} has {}",
            self.index.src_len,
            indexed.0,
            indexed.1.len
        );
        if nb == 0 || n == 0 {
            return None;
        }
        let (addr, keep) = match self.resident {
            Some(addr) => (addr, None),
            None => {
                let (addr, keep) = e.stage_u32(&self.index.list);
                (addr, Some(keep))
            }
        };
        Some((addr, keep, nb as i64, dim(op, "N", n)))
    }
}

/// Block rotation with a gather (`rotate`: out = R·inp[index] per block) or its transpose with a scatter
/// (`unrotate`: out[index] = Rᵀ·inp per block).
pub fn rotate_or_unrotate<E: Exec>(e: &E, unrotate: bool, out: Dev, inp: Dev, rb: RotBlocks<'_>) {
    let op = if unrotate { "unrotate" } else { "rotate" };
    let plan = if unrotate {
        rb.prepare(e, op, &[("inp", inp)], ("out", out))
    } else {
        rb.prepare(e, op, &[("out", out)], ("inp", inp))
    };
    let Some((ip, _keep, nbl, ni)) = plan else {
        return;
    };
    let (o, x, rp) = (out.addr, inp.addr, rb.r.addr);
    let kernel = if unrotate {
        Kernel::UnrotateScatter
    } else {
        Kernel::RotateGather
    };
    // SAFETY: module comment above.
    unsafe {
        e.launch(
            kernel,
            gemm_grid(rb.nb, rb.n),
            &[out.out("out")],
            &[
                EmuArg::of(&o),
                EmuArg::of(&x),
                EmuArg::of(&ip),
                EmuArg::of(&rp),
                EmuArg::of(&nbl),
                EmuArg::of(&ni),
            ],
        )
    }
}

/// Rotated AdamW, first half (Maes et al. Alg. 2): g̃ = R·grads[index] per block, then m, v and the
/// direction u = m̂/(√v̂ + ε) in the rotated layout, in the GEMM's epilogue (`adamw.cu`).
pub fn rotate_adam_direction<E: Exec>(
    e: &E,
    u: Dev,
    m: Dev,
    v: Dev,
    grads: Dev,
    rb: RotBlocks<'_>,
    hp: AdamStep,
) {
    let op = "rotate_adam_direction";
    let blocks = [("u", u), ("m", m), ("v", v)];
    let Some((ip, _keep, nbl, ni)) = rb.prepare(e, op, &blocks, ("grads", grads)) else {
        return;
    };
    let (up, mp, vp, gp, rp) = (u.addr, m.addr, v.addr, grads.addr, rb.r.addr);
    let k = AdamCoeffs::<f32>::new(&hp);
    // SAFETY: module comment above.
    unsafe {
        e.launch(
            Kernel::RotateAdamDirection,
            gemm_grid(rb.nb, rb.n),
            &[u.out("u"), m.out("m"), v.out("v")],
            &[
                EmuArg::of(&up),
                EmuArg::of(&mp),
                EmuArg::of(&vp),
                EmuArg::of(&gp),
                EmuArg::of(&ip),
                EmuArg::of(&rp),
                EmuArg::of(&k),
                EmuArg::of(&nbl),
                EmuArg::of(&ni),
            ],
        )
    }
}

/// Rotated AdamW, second half: params[index] −= lr·(Rᵀ·u) per block, the learning rate in the
/// unrotation GEMM's epilogue (decoupled decay is applied before, per tensor).
pub fn unrotate_apply_update<E: Exec>(e: &E, params: Dev, u: Dev, rb: RotBlocks<'_>, lr: f64) {
    let op = "unrotate_apply_update";
    let Some((ip, _keep, nbl, ni)) = rb.prepare(e, op, &[("u", u)], ("params", params)) else {
        return;
    };
    let (pp, up, rp, lr32) = (params.addr, u.addr, rb.r.addr, lr as f32);
    // SAFETY: module comment above.
    unsafe {
        e.launch(
            Kernel::UnrotateApplyUpdate,
            gemm_grid(rb.nb, rb.n),
            &[params.out("params")],
            &[
                EmuArg::of(&pp),
                EmuArg::of(&up),
                EmuArg::of(&ip),
                EmuArg::of(&rp),
                EmuArg::of(&lr32),
                EmuArg::of(&nbl),
                EmuArg::of(&ni),
            ],
        )
    }
}

/// Fused AdamW over one tensor.
pub fn adamw_step<E: Exec>(e: &E, params: Dev, m: Dev, v: Dev, grads: Dev, hp: AdamStep) {
    let len = params.len;
    same_len("adamw_step", len, &[("m", m), ("v", v), ("grads", grads)]);
    let (pp, mp, vp, gp) = (params.addr, m.addr, v.addr, grads.addr);
    let (k, n) = (AdamCoeffs::<f32>::new(&hp), len as i64);
    // SAFETY: module comment above.
    unsafe {
        e.launch(
            Kernel::AdamwStep,
            flat(len),
            &[params.out("params"), m.out("m"), v.out("v")],
            &[
                EmuArg::of(&pp),
                EmuArg::of(&mp),
                EmuArg::of(&vp),
                EmuArg::of(&gp),
                EmuArg::of(&k),
                EmuArg::of(&n),
            ],
        )
    }
}

/// SGD with momentum over one tensor.
pub fn sgd_step<E: Exec>(
    e: &E,
    params: Dev,
    buf: Dev,
    grads: Dev,
    lr: f64,
    momentum: f64,
    weight_decay: f64,
) {
    let len = params.len;
    same_len("sgd_step", len, &[("momentum_buf", buf), ("grads", grads)]);
    let (pp, bp, gp) = (params.addr, buf.addr, grads.addr);
    let (lr32, mu, decay, n) = (
        lr as f32,
        momentum as f32,
        decoupled_decay(lr, weight_decay) as f32,
        len as i64,
    );
    // SAFETY: module comment above.
    unsafe {
        e.launch(
            Kernel::SgdStep,
            flat(len),
            &[params.out("params"), buf.out("momentum_buf")],
            &[
                EmuArg::of(&pp),
                EmuArg::of(&bp),
                EmuArg::of(&gp),
                EmuArg::of(&lr32),
                EmuArg::of(&mu),
                EmuArg::of(&decay),
                EmuArg::of(&n),
            ],
        )
    }
}

/// Adam moments and direction.
pub fn adam_direction_step<E: Exec>(e: &E, u: Dev, m: Dev, v: Dev, grads: Dev, hp: AdamStep) {
    let len = u.len;
    same_len(
        "adam_direction_step",
        len,
        &[("m", m), ("v", v), ("grads", grads)],
    );
    let (up, mp, vp, gp) = (u.addr, m.addr, v.addr, grads.addr);
    let (k, n) = (AdamCoeffs::<f32>::new(&hp), len as i64);
    // SAFETY: module comment above.
    unsafe {
        e.launch(
            Kernel::AdamDirectionStep,
            flat(len),
            &[u.out("u"), m.out("m"), v.out("v")],
            &[
                EmuArg::of(&up),
                EmuArg::of(&mp),
                EmuArg::of(&vp),
                EmuArg::of(&gp),
                EmuArg::of(&k),
                EmuArg::of(&n),
            ],
        )
    }
}

/// SGD momentum and direction.
pub fn sgd_direction_step<E: Exec>(e: &E, u: Dev, buf: Dev, grads: Dev, momentum: f64) {
    let len = u.len;
    same_len(
        "sgd_direction_step",
        len,
        &[("momentum_buf", buf), ("grads", grads)],
    );
    let (up, bp, gp) = (u.addr, buf.addr, grads.addr);
    let (mu, n) = (momentum as f32, len as i64);
    // SAFETY: module comment above.
    unsafe {
        e.launch(
            Kernel::SgdDirectionStep,
            flat(len),
            &[u.out("u"), buf.out("momentum_buf")],
            &[
                EmuArg::of(&up),
                EmuArg::of(&bp),
                EmuArg::of(&gp),
                EmuArg::of(&mu),
                EmuArg::of(&n),
            ],
        )
    }
}

/// Mean of squares per block.
pub fn block_mean_squares<E: Exec>(e: &E, out: Dev, x: Dev, block: usize) {
    assert!(block > 0, "block_mean_squares: block must be > 0");
    check_len("block_mean_squares", "x", x.len, out.len * block);
    let (o, xp, bl, nb) = (out.addr, x.addr, block as i64, out.len as i64);
    // SAFETY: module comment above.
    unsafe {
        e.launch(
            Kernel::BlockMeanSquares,
            Geometry::blocks(out.len, BLOCK),
            &[out.out("out")],
            &[
                EmuArg::of(&o),
                EmuArg::of(&xp),
                EmuArg::of(&bl),
                EmuArg::of(&nb),
            ],
        )
    }
}

/// v = β₂v + (1−β₂)s
pub fn ema_inplace<E: Exec>(e: &E, v: Dev, s: Dev, beta2: f64) {
    check_len("ema_inplace", "s", s.len, v.len);
    let (vp, sp, b, ob, n) = (
        v.addr,
        s.addr,
        beta2 as f32,
        (1.0 - beta2) as f32,
        v.len as i64,
    );
    // SAFETY: module comment above.
    unsafe {
        e.launch(
            Kernel::EmaInplace,
            flat(v.len),
            &[v.out("v")],
            &[
                EmuArg::of(&vp),
                EmuArg::of(&sp),
                EmuArg::of(&b),
                EmuArg::of(&ob),
                EmuArg::of(&n),
            ],
        )
    }
}

/// Momentum with one second moment per block.
pub fn block_adam_direction_step<E: Exec>(
    e: &E,
    u: Dev,
    m: Dev,
    v: Dev,
    grads: Dev,
    block: usize,
    hp: AdamStep,
) {
    let len = u.len;
    assert!(block > 0, "block_adam_direction_step: block must be > 0");
    same_len(
        "block_adam_direction_step",
        len,
        &[("m", m), ("grads", grads)],
    );
    check_len("block_adam_direction_step", "v", v.len * block, len);
    let (up, mp, vp, gp) = (u.addr, m.addr, v.addr, grads.addr);
    let (bl, k, n) = (block as i64, AdamCoeffs::<f32>::new(&hp), len as i64);
    // SAFETY: module comment above.
    unsafe {
        e.launch(
            Kernel::BlockAdamDirectionStep,
            flat(len),
            &[u.out("u"), m.out("m")],
            &[
                EmuArg::of(&up),
                EmuArg::of(&mp),
                EmuArg::of(&vp),
                EmuArg::of(&gp),
                EmuArg::of(&bl),
                EmuArg::of(&k),
                EmuArg::of(&n),
            ],
        )
    }
}

/// p = p·(1 − lr·λ) − lr·u
pub fn apply_update<E: Exec>(e: &E, params: Dev, u: Dev, lr: f64, weight_decay: f64) {
    check_len("apply_update", "u", u.len, params.len);
    let (pp, up, lr32, decay, n) = (
        params.addr,
        u.addr,
        lr as f32,
        decoupled_decay(lr, weight_decay) as f32,
        params.len as i64,
    );
    // SAFETY: module comment above.
    unsafe {
        e.launch(
            Kernel::ApplyUpdate,
            flat(params.len),
            &[params.out("params")],
            &[
                EmuArg::of(&pp),
                EmuArg::of(&up),
                EmuArg::of(&lr32),
                EmuArg::of(&decay),
                EmuArg::of(&n),
            ],
        )
    }
}
