//! Causal multi-head self-attention, computed explicitly (no flash fusion), as in llm.c's CPU reference.
//!
//! Shapes: qkv (B,T,3C) = [q | k | v] along the last axis; head h of size hs = C/NH uses channels
//! h·hs..(h+1)·hs of each of q, k, v. att (B,NH,T,T) holds the softmax probabilities (0 above the diagonal);
//! out (B,T,C) has the heads re-interleaved.
//! Forward:  preatt[t,t2] = q_t·k_t2 / √hs for t2 ≤ t;  att = softmax over t2 (max-subtracted);
//!           out_t = Σ_{t2≤t} att[t,t2] v_t2.
//! Backward: datt[t,t2] = dout_t·v_t2;  dpre = att ⊙ (datt − Σ_t2 att·datt) / √hs  (kept in `scratch`);
//!           dq_t += Σ_t2 dpre[t,t2] k_t2;  dk_t2 += Σ_t dpre[t,t2] q_t;  dv_t2 += Σ_t att[t,t2] dout_t.
//! Parallel in two phases: over (b,h) for the T×T matrices, then over (b,t) rows for out/dqkv, so every
//! output is summed sequentially in a fixed order (thread-independent).
//! Invariants: forward overwrites out and att (`=`; out rounded to bf16 in bf16 mode, att never); backward
//! accumulates into dqkv (`+=`) and overwrites all of `scratch`, whatever it held.

use super::{axpy, check_len, dot, store};
use crate::backend::Scalar;
use rayon::prelude::*;

#[allow(clippy::too_many_arguments)]
fn check_shapes(
    op: &str,
    out: (&str, usize),
    att: usize,
    qkv: usize,
    b: usize,
    t: usize,
    c: usize,
    nh: usize,
) {
    assert!(
        nh > 0 && c.is_multiple_of(nh),
        "{op}: C = {c} is not a multiple of NH = {nh}"
    );
    check_len(op, out.0, out.1, b * t * c);
    check_len(op, "att", att, b * nh * t * t);
    check_len(op, "qkv", qkv, b * t * 3 * c);
}

/// out (B,T,C), att (B,NH,T,T) from qkv (B,T,3C); out rounded to bf16 when `bf16`.
#[allow(clippy::too_many_arguments)]
pub fn attention_forward<T: Scalar>(
    out: &mut [T],
    att: &mut [T],
    qkv: &[T],
    b: usize,
    t: usize,
    c: usize,
    nh: usize,
    bf16: bool,
) {
    check_shapes(
        "attention_forward",
        ("out", out.len()),
        att.len(),
        qkv.len(),
        b,
        t,
        c,
        nh,
    );
    if b == 0 || t == 0 || c == 0 {
        return;
    }
    let hs = c / nh;
    let c3 = 3 * c;
    let scale = T::one() / T::from_usize(hs).unwrap().sqrt();
    // Phase 1: softmax(q·kᵀ/√hs) per (b,h).
    att.par_chunks_mut(t * t).enumerate().for_each(|(bh, a)| {
        let (bi, h) = (bh / nh, bh % nh);
        let base = bi * t * c3 + h * hs;
        for (tq, row) in a.chunks_mut(t).enumerate() {
            let q = &qkv[base + tq * c3..base + tq * c3 + hs];
            let mut max = T::neg_infinity();
            for (t2, r) in row[..=tq].iter_mut().enumerate() {
                let k = &qkv[base + t2 * c3 + c..base + t2 * c3 + c + hs];
                let s = dot(q, k) * scale;
                *r = s;
                if s > max {
                    max = s;
                }
            }
            let mut sum = T::zero();
            for r in row[..=tq].iter_mut() {
                *r = (*r - max).exp();
                sum += *r;
            }
            let inv = T::one() / sum;
            for r in row[..=tq].iter_mut() {
                *r *= inv;
            }
            row[tq + 1..].fill(T::zero());
        }
    });
    // Phase 2: out_t = Σ att[t,t2] v_t2 per (b,t) row.
    let att = &*att;
    out.par_chunks_mut(c).enumerate().for_each(|(bt, o)| {
        let (bi, tq) = (bt / t, bt % t);
        o.fill(T::zero());
        for h in 0..nh {
            let oh = &mut o[h * hs..(h + 1) * hs];
            let arow = &att[((bi * nh + h) * t + tq) * t..][..=tq];
            for (t2, &p) in arow.iter().enumerate() {
                let vo = bi * t * c3 + t2 * c3 + 2 * c + h * hs;
                axpy(oh, p, &qkv[vo..vo + hs]);
            }
        }
        if bf16 {
            for y in o.iter_mut() {
                *y = store(*y, true);
            }
        }
    });
}

/// dqkv (B,T,3C) += ∂L/∂qkv given dout (B,T,C); `scratch` (B,NH,T,T) is overwritten with d(preatt).
#[allow(clippy::too_many_arguments)]
pub fn attention_backward<T: Scalar>(
    dqkv: &mut [T],
    scratch: &mut [T],
    dout: &[T],
    qkv: &[T],
    att: &[T],
    b: usize,
    t: usize,
    c: usize,
    nh: usize,
) {
    let op = "attention_backward";
    check_shapes(op, ("dout", dout.len()), att.len(), qkv.len(), b, t, c, nh);
    check_len(op, "dqkv", dqkv.len(), b * t * 3 * c);
    check_len(op, "scratch", scratch.len(), b * nh * t * t);
    if b == 0 || t == 0 || c == 0 {
        return;
    }
    let hs = c / nh;
    let c3 = 3 * c;
    let scale = T::one() / T::from_usize(hs).unwrap().sqrt();
    // Phase A: scratch = d(preatt)·(1/√hs)-scaled gradient of q·kᵀ, per (b,h).
    scratch
        .par_chunks_mut(t * t)
        .enumerate()
        .for_each(|(bh, s)| {
            let (bi, h) = (bh / nh, bh % nh);
            for (tq, row) in s.chunks_mut(t).enumerate() {
                let go = (bi * t + tq) * c + h * hs;
                let g = &dout[go..go + hs];
                let arow = &att[(bh * t + tq) * t..][..=tq];
                let mut acc = T::zero();
                for (t2, (r, &p)) in row[..=tq].iter_mut().zip(arow).enumerate() {
                    let vo = bi * t * c3 + t2 * c3 + 2 * c + h * hs;
                    let da = dot(g, &qkv[vo..vo + hs]);
                    *r = da;
                    acc += p * da;
                }
                for (r, &p) in row[..=tq].iter_mut().zip(arow) {
                    *r = p * (*r - acc) * scale;
                }
                row[tq + 1..].fill(T::zero());
            }
        });
    // Phase B: dq, dk, dv per (b,t) row.
    let s = &*scratch;
    dqkv.par_chunks_mut(c3).enumerate().for_each(|(bt, d)| {
        let (bi, tq) = (bt / t, bt % t);
        let (dq, rest) = d.split_at_mut(c);
        let (dk, dv) = rest.split_at_mut(c);
        for h in 0..nh {
            let bh = bi * nh + h;
            let hr = h * hs..(h + 1) * hs;
            let row0 = bi * t * c3 + h * hs;
            // dq_t += Σ_{t2≤t} dpre[t,t2] k_t2
            let srow = &s[(bh * t + tq) * t..][..=tq];
            for (t2, &ds) in srow.iter().enumerate() {
                let ko = row0 + t2 * c3 + c;
                axpy(&mut dq[hr.clone()], ds, &qkv[ko..ko + hs]);
            }
            // dk_t += Σ_{t1≥t} dpre[t1,t] q_t1;  dv_t += Σ_{t1≥t} att[t1,t] dout_t1
            for t1 in tq..t {
                let idx = (bh * t + t1) * t + tq;
                let qo = row0 + t1 * c3;
                axpy(&mut dk[hr.clone()], s[idx], &qkv[qo..qo + hs]);
                let go = (bi * t + t1) * c + h * hs;
                axpy(&mut dv[hr.clone()], att[idx], &dout[go..go + hs]);
            }
        }
    });
}
