//! Launch plans of the rotations and the optimizer steps (module docs of `ops`).

use super::{check_index, dim, flat, gemm_grid, same_len, AdamParams, Dev, Exec, BLOCK};
use crate::backend::cpu::check_len;
use crate::backend::emu::launch::Geometry;
use crate::backend::AdamStep;
use crate::kernels::{EmuArg, Kernel};

// SAFETY (for every `unsafe` launch below): as in `ops` — lengths checked against the shapes, index
// arrays against the tensors they index, `outs` lists every written tensor, arguments follow the kernel.

/// Block rotation with a gather (`rotate`) or its transpose with a scatter (`unrotate`). `resident` is
/// the address of a copy of `index` that kernels can already read (a device-resident list); None stages
/// `index` for this call.
#[allow(clippy::too_many_arguments)]
pub fn rotate_or_unrotate<E: Exec>(
    e: &E,
    unrotate: bool,
    out: Dev,
    inp: Dev,
    index: &[u32],
    resident: Option<u64>,
    r: Dev,
    nb: usize,
    n: usize,
) {
    let op = if unrotate { "unrotate" } else { "rotate" };
    let (blocks, gathered) = if unrotate { (inp, out) } else { (out, inp) };
    check_len(op, if unrotate { "inp" } else { "out" }, blocks.len, nb * n);
    check_len(op, "index", index.len(), nb * n);
    check_len(op, "r", r.len, n * n);
    check_index(op, index, gathered.len);
    if nb == 0 || n == 0 {
        return;
    }
    let (ip, _keep) = match resident {
        Some(addr) => (addr, None),
        None => {
            let (addr, keep) = e.stage_u32(index);
            (addr, Some(keep))
        }
    };
    let (o, x, rp) = (out.addr, inp.addr, r.addr);
    let (nbl, ni) = (nb as i64, dim(op, "N", n));
    let kernel = if unrotate {
        Kernel::UnrotateScatter
    } else {
        Kernel::RotateGather
    };
    // SAFETY: module comment above.
    unsafe {
        e.launch(
            kernel,
            gemm_grid(nb, n),
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

/// Fused AdamW over one tensor.
pub fn adamw_step<E: Exec>(e: &E, params: Dev, m: Dev, v: Dev, grads: Dev, hp: AdamStep) {
    let len = params.len;
    same_len("adamw_step", len, &[("m", m), ("v", v), ("grads", grads)]);
    let (pp, mp, vp, gp) = (params.addr, m.addr, v.addr, grads.addr);
    let (k, n) = (AdamParams::new(&hp), len as i64);
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
        (1.0 - lr * weight_decay) as f32,
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
    let (k, n) = (AdamParams::new(&hp), len as i64);
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
    let (bl, k, n) = (block as i64, AdamParams::new(&hp), len as i64);
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
        (1.0 - lr * weight_decay) as f32,
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
