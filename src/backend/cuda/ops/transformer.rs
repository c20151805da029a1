//! Launch plans of the transformer ops: encoder, layernorm, attention, gelu, residual, the GEMM
//! epilogues (bias, bf16 rounding) and the fused cross-entropy (module docs of `ops`).

use super::{check_index, dim, elementwise, flat, warp_rows, Dev, Exec, BLOCK};
use crate::backend::cpu::check_len;
use crate::backend::emu::launch::{Geometry, OutBuf};
use crate::kernels::{EmuArg, Kernel};

// SAFETY (for every `unsafe` launch below): as in `ops` — lengths checked against the shapes, index
// arrays against the tensors they index, `outs` lists every written tensor, arguments follow the kernel.

/// out (B,T,C) = wte[tokens] + wpe[t]
#[allow(clippy::too_many_arguments)]
pub fn encoder_forward<E: Exec>(
    e: &E,
    out: Dev,
    tokens: &[u32],
    wte: Dev,
    wpe: Dev,
    b: usize,
    t: usize,
    c: usize,
    bf16: bool,
) {
    let op = "encoder_forward";
    check_len(op, "out", out.len, b * t * c);
    check_len(op, "tokens", tokens.len(), b * t);
    assert!(wpe.len >= t * c && c > 0, "{op}: wpe too short or C = 0");
    check_index(op, tokens, wte.len / c);
    let (tp, _keep) = e.stage_u32(tokens);
    let (o, wtp, wpp) = (out.addr, wte.addr, wpe.addr);
    let (bt, ti, ci, bf) = (
        dim(op, "B·T", b * t),
        dim(op, "T", t),
        dim(op, "C", c),
        bf16 as i32,
    );
    // SAFETY: module comment above.
    unsafe {
        e.launch(
            Kernel::EncoderForward,
            flat(out.len),
            &[out.out("out")],
            &[
                EmuArg::of(&o),
                EmuArg::of(&tp),
                EmuArg::of(&wtp),
                EmuArg::of(&wpp),
                EmuArg::of(&bt),
                EmuArg::of(&ti),
                EmuArg::of(&ci),
                EmuArg::of(&bf),
            ],
        )
    }
}

/// dwte[tokens] += dout, dwpe[t] += Σ_b dout (the CPU backend's addition order).
#[allow(clippy::too_many_arguments)]
pub fn encoder_backward<E: Exec>(
    e: &E,
    dwte: Dev,
    dwpe: Dev,
    dout: Dev,
    tokens: &[u32],
    b: usize,
    t: usize,
    c: usize,
) {
    let op = "encoder_backward";
    check_len(op, "dout", dout.len, b * t * c);
    check_len(op, "tokens", tokens.len(), b * t);
    assert!(dwpe.len >= t * c && c > 0, "{op}: dwpe too short or C = 0");
    check_index(op, tokens, dwte.len / c);
    let (bi, ti, ci) = (dim(op, "B", b), dim(op, "T", t), dim(op, "C", c));
    let (dpp, gp) = (dwpe.addr, dout.addr);
    // SAFETY: module comment above.
    unsafe {
        e.launch(
            Kernel::EncoderBackwardWpe,
            flat(t * c),
            &[OutBuf::at("dwpe", dpp, t * c * 4)],
            &[
                EmuArg::of(&dpp),
                EmuArg::of(&gp),
                EmuArg::of(&bi),
                EmuArg::of(&ti),
                EmuArg::of(&ci),
            ],
        )
    }
    // Runs of equal tokens over positions sorted by (token, position).
    let mut order: Vec<u32> = (0..tokens.len() as u32).collect();
    order.sort_by_key(|&i| (tokens[i as usize], i));
    let mut runs = vec![0u32];
    for j in 1..order.len() {
        if tokens[order[j] as usize] != tokens[order[j - 1] as usize] {
            runs.push(j as u32);
        }
    }
    runs.push(order.len() as u32);
    if order.is_empty() {
        return;
    }
    let nruns = runs.len() - 1;
    let (tp, _k1) = e.stage_u32(tokens);
    let (orp, _k2) = e.stage_u32(&order);
    let (rp, _k3) = e.stage_u32(&runs);
    let (dtp, nr) = (dwte.addr, nruns as i32);
    // SAFETY: module comment above.
    unsafe {
        e.launch(
            Kernel::EncoderBackwardWte,
            flat(nruns * c),
            &[dwte.out("dwte")],
            &[
                EmuArg::of(&dtp),
                EmuArg::of(&gp),
                EmuArg::of(&tp),
                EmuArg::of(&orp),
                EmuArg::of(&rp),
                EmuArg::of(&nr),
                EmuArg::of(&ci),
            ],
        )
    }
}

/// LayerNorm forward (kernels/layernorm.cu).
#[allow(clippy::too_many_arguments)]
pub fn layernorm_forward<E: Exec>(
    e: &E,
    out: Dev,
    mean: Dev,
    rstd: Dev,
    inp: Dev,
    weight: Dev,
    bias: Option<Dev>,
    n: usize,
    c: usize,
    bf16: bool,
) {
    let op = "layernorm_forward";
    check_len(op, "out", out.len, n * c);
    check_len(op, "inp", inp.len, n * c);
    check_len(op, "mean", mean.len, n);
    check_len(op, "rstd", rstd.len, n);
    check_len(op, "weight", weight.len, c);
    if let Some(bb) = bias {
        check_len(op, "bias", bb.len, c);
    }
    let (o, mp, rp, xp, wp) = (out.addr, mean.addr, rstd.addr, inp.addr, weight.addr);
    let bp = bias.map_or(0u64, |b| b.addr);
    let (ni, ci, bf) = (dim(op, "N", n), dim(op, "C", c), bf16 as i32);
    // SAFETY: module comment above.
    unsafe {
        e.launch(
            Kernel::LayernormForward,
            warp_rows(n),
            &[out.out("out"), mean.out("mean"), rstd.out("rstd")],
            &[
                EmuArg::of(&o),
                EmuArg::of(&mp),
                EmuArg::of(&rp),
                EmuArg::of(&xp),
                EmuArg::of(&wp),
                EmuArg::of(&bp),
                EmuArg::of(&ni),
                EmuArg::of(&ci),
                EmuArg::of(&bf),
            ],
        )
    }
}

/// LayerNorm backward: dinp, then dweight/dbias (kernels/layernorm.cu).
#[allow(clippy::too_many_arguments)]
pub fn layernorm_backward<E: Exec>(
    e: &E,
    dinp: Dev,
    dweight: Dev,
    dbias: Option<Dev>,
    dout: Dev,
    inp: Dev,
    weight: Dev,
    mean: Dev,
    rstd: Dev,
    n: usize,
    c: usize,
) {
    let op = "layernorm_backward";
    check_len(op, "dinp", dinp.len, n * c);
    check_len(op, "dout", dout.len, n * c);
    check_len(op, "inp", inp.len, n * c);
    check_len(op, "dweight", dweight.len, c);
    check_len(op, "weight", weight.len, c);
    check_len(op, "mean", mean.len, n);
    check_len(op, "rstd", rstd.len, n);
    let (dp, gp, xp, wp, mp, rp) = (
        dinp.addr,
        dout.addr,
        inp.addr,
        weight.addr,
        mean.addr,
        rstd.addr,
    );
    let (ni, ci) = (dim(op, "N", n), dim(op, "C", c));
    // SAFETY: module comment above.
    unsafe {
        e.launch(
            Kernel::LayernormBackwardDinp,
            warp_rows(n),
            &[dinp.out("dinp")],
            &[
                EmuArg::of(&dp),
                EmuArg::of(&gp),
                EmuArg::of(&xp),
                EmuArg::of(&wp),
                EmuArg::of(&mp),
                EmuArg::of(&rp),
                EmuArg::of(&ni),
                EmuArg::of(&ci),
            ],
        )
    }
    let mut outs = vec![dweight.out("dweight")];
    let dbp = match dbias {
        Some(db) => {
            check_len(op, "dbias", db.len, c);
            outs.push(db.out("dbias"));
            db.addr
        }
        None => 0,
    };
    let dwp = dweight.addr;
    // SAFETY: module comment above.
    unsafe {
        e.launch(
            Kernel::LayernormBackwardDweight,
            flat(c),
            &outs,
            &[
                EmuArg::of(&dwp),
                EmuArg::of(&dbp),
                EmuArg::of(&gp),
                EmuArg::of(&xp),
                EmuArg::of(&mp),
                EmuArg::of(&rp),
                EmuArg::of(&ni),
                EmuArg::of(&ci),
            ],
        )
    }
}

#[track_caller]
fn check_attention(op: &str, att: Dev, qkv: Dev, b: usize, t: usize, c: usize, nh: usize) {
    assert!(
        nh > 0 && c.is_multiple_of(nh),
        "{op}: C = {c} is not a multiple of NH = {nh}"
    );
    check_len(op, "att", att.len, b * nh * t * t);
    check_len(op, "qkv", qkv.len, b * t * 3 * c);
}

/// Attention forward: softmax rows, then att·v (kernels/attention.cu).
#[allow(clippy::too_many_arguments)]
pub fn attention_forward<E: Exec>(
    e: &E,
    out: Dev,
    att: Dev,
    qkv: Dev,
    b: usize,
    t: usize,
    c: usize,
    nh: usize,
    bf16: bool,
) {
    let op = "attention_forward";
    check_attention(op, att, qkv, b, t, c, nh);
    check_len(op, "out", out.len, b * t * c);
    let (ap, qp, o) = (att.addr, qkv.addr, out.addr);
    let (bi, ti, ci, nhi, bf) = (
        dim(op, "B", b),
        dim(op, "T", t),
        dim(op, "C", c),
        dim(op, "NH", nh),
        bf16 as i32,
    );
    // SAFETY: module comment above.
    unsafe {
        e.launch(
            Kernel::AttentionSoftmaxForward,
            warp_rows(b * nh * t),
            &[att.out("att")],
            &[
                EmuArg::of(&ap),
                EmuArg::of(&qp),
                EmuArg::of(&bi),
                EmuArg::of(&ti),
                EmuArg::of(&ci),
                EmuArg::of(&nhi),
            ],
        )
    }
    // SAFETY: module comment above.
    unsafe {
        e.launch(
            Kernel::AttentionValueForward,
            flat(b * t * c),
            &[out.out("out")],
            &[
                EmuArg::of(&o),
                EmuArg::of(&ap),
                EmuArg::of(&qp),
                EmuArg::of(&bi),
                EmuArg::of(&ti),
                EmuArg::of(&ci),
                EmuArg::of(&nhi),
                EmuArg::of(&bf),
            ],
        )
    }
}

/// Attention backward: d(preatt) into scratch, then dq, dk, dv (kernels/attention.cu).
#[allow(clippy::too_many_arguments)]
pub fn attention_backward<E: Exec>(
    e: &E,
    dqkv: Dev,
    scratch: Dev,
    dout: Dev,
    qkv: Dev,
    att: Dev,
    b: usize,
    t: usize,
    c: usize,
    nh: usize,
) {
    let op = "attention_backward";
    check_attention(op, att, qkv, b, t, c, nh);
    check_len(op, "dout", dout.len, b * t * c);
    check_len(op, "scratch", scratch.len, b * nh * t * t);
    check_len(op, "dqkv", dqkv.len, b * t * 3 * c);
    let (sp, gp, qp, ap, dp) = (scratch.addr, dout.addr, qkv.addr, att.addr, dqkv.addr);
    let (bi, ti, ci, nhi) = (
        dim(op, "B", b),
        dim(op, "T", t),
        dim(op, "C", c),
        dim(op, "NH", nh),
    );
    // SAFETY: module comment above.
    unsafe {
        e.launch(
            Kernel::AttentionBackwardDatt,
            warp_rows(b * nh * t),
            &[scratch.out("scratch")],
            &[
                EmuArg::of(&sp),
                EmuArg::of(&gp),
                EmuArg::of(&qp),
                EmuArg::of(&ap),
                EmuArg::of(&bi),
                EmuArg::of(&ti),
                EmuArg::of(&ci),
                EmuArg::of(&nhi),
            ],
        )
    }
    // SAFETY: module comment above.
    unsafe {
        e.launch(
            Kernel::AttentionBackwardDqkv,
            flat(b * t * c),
            &[dqkv.out("dqkv")],
            &[
                EmuArg::of(&dp),
                EmuArg::of(&sp),
                EmuArg::of(&gp),
                EmuArg::of(&qp),
                EmuArg::of(&ap),
                EmuArg::of(&bi),
                EmuArg::of(&ti),
                EmuArg::of(&ci),
                EmuArg::of(&nhi),
            ],
        )
    }
}

/// GELU forward (`=`, bf16-rounded when `bf16`).
pub fn gelu_forward<E: Exec>(e: &E, out: Dev, inp: Dev, bf16: bool) {
    elementwise(e, Kernel::GeluForward, out, &[inp], Some(bf16 as i32))
}
/// GELU backward (`+=`).
pub fn gelu_backward<E: Exec>(e: &E, dinp: Dev, inp: Dev, dout: Dev) {
    elementwise(e, Kernel::GeluBackward, dinp, &[inp, dout], None)
}
/// out = a + b
pub fn residual_forward<E: Exec>(e: &E, out: Dev, a: Dev, b: Dev, bf16: bool) {
    elementwise(e, Kernel::ResidualForward, out, &[a, b], Some(bf16 as i32))
}
/// dx += dout
pub fn add_inplace<E: Exec>(e: &E, dx: Dev, dout: Dev) {
    elementwise(e, Kernel::AddInplace, dx, &[dout], None)
}
/// out = bf16(inp), widened (the bf16 GEMM operands).
pub fn round_bf16_copy<E: Exec>(e: &E, out: Dev, inp: Dev) {
    elementwise(e, Kernel::RoundBf16Copy, out, &[inp], None)
}

/// out = bf16(inp), round-to-nearest-even, stored as bf16 (`out` counts bf16 elements): the operands of
/// the CUDA backend's native bf16 GEMMs.
pub fn to_bf16<E: Exec>(e: &E, out: Dev, inp: Dev) {
    check_len("to_bf16", "out", out.len, inp.len);
    let (o, x, n) = (out.addr, inp.addr, inp.len as i64);
    // SAFETY: module comment above (`out` holds inp.len bf16 = 2-byte elements).
    unsafe {
        e.launch(
            Kernel::ToBf16,
            flat(inp.len),
            &[OutBuf::at("out", out.addr, out.len * 2)],
            &[EmuArg::of(&o), EmuArg::of(&x), EmuArg::of(&n)],
        )
    }
}

/// out (N,OC) += bias (OC) per row.
pub fn bias_forward<E: Exec>(e: &E, out: Dev, bias: Dev, n: usize, oc: usize) {
    check_len("bias_forward", "out", out.len, n * oc);
    check_len("bias_forward", "bias", bias.len, oc);
    let (o, bp, nl, oci) = (out.addr, bias.addr, n as i64, dim("bias_forward", "OC", oc));
    // SAFETY: module comment above.
    unsafe {
        e.launch(
            Kernel::BiasForward,
            flat(n * oc),
            &[out.out("out")],
            &[
                EmuArg::of(&o),
                EmuArg::of(&bp),
                EmuArg::of(&nl),
                EmuArg::of(&oci),
            ],
        )
    }
}

/// dbias (OC) += Σ_rows dout (N,OC).
pub fn bias_backward<E: Exec>(e: &E, dbias: Dev, dout: Dev, n: usize, oc: usize) {
    check_len("bias_backward", "dout", dout.len, n * oc);
    check_len("bias_backward", "dbias", dbias.len, oc);
    let (d, g, nl, oci) = (
        dbias.addr,
        dout.addr,
        n as i64,
        dim("bias_backward", "OC", oc),
    );
    // SAFETY: module comment above.
    unsafe {
        e.launch(
            Kernel::BiasBackward,
            flat(oc),
            &[dbias.out("dbias")],
            &[
                EmuArg::of(&d),
                EmuArg::of(&g),
                EmuArg::of(&nl),
                EmuArg::of(&oci),
            ],
        )
    }
}

/// Fused softmax + cross-entropy (+ gradient in place when `dloss`).
pub fn crossentropy_forward<E: Exec>(
    e: &E,
    losses: Dev,
    logits: Dev,
    targets: &[u32],
    dloss: Option<f32>,
    n: usize,
    v: usize,
) {
    let op = "crossentropy_forward";
    check_len(op, "losses", losses.len, n);
    check_len(op, "logits", logits.len, n * v);
    check_len(op, "targets", targets.len(), n);
    check_index(op, targets, v);
    if n == 0 {
        return;
    }
    let (tp, _keep) = e.stage_u32(targets);
    let (lp, xp) = (losses.addr, logits.addr);
    let (s, has) = (dloss.unwrap_or(0.0), dloss.is_some() as i32);
    let (ni, vi) = (dim(op, "N", n), dim(op, "V", v));
    // SAFETY: module comment above.
    unsafe {
        e.launch(
            Kernel::CrossentropyForward,
            Geometry::blocks(n, BLOCK),
            &[losses.out("losses"), logits.out("logits")],
            &[
                EmuArg::of(&lp),
                EmuArg::of(&xp),
                EmuArg::of(&tp),
                EmuArg::of(&s),
                EmuArg::of(&has),
                EmuArg::of(&ni),
                EmuArg::of(&vi),
            ],
        )
    }
}
