//! LayerNorm over the last axis: out (N,C) = (inp − mean)·rstd·weight + bias, with eps = 1e-5 (GPT-2).
//!
//! Math (llm.c `layernorm_forward/backward`): with norm = (x − mean)·rstd and dnorm = weight·dout,
//!   dinp += rstd·(dnorm − mean(dnorm) − norm·mean(dnorm·norm)),  dweight += Σ_rows norm·dout,
//!   dbias += Σ_rows dout.
//! Shapes: inp/out (N,C) (N = B·T rows), weight/bias (C), mean/rstd (N).
//! Invariants: forward overwrites out/mean/rstd (`=`; out rounded to bf16 in bf16 mode, mean/rstd never);
//! backward accumulates (`+=`). dweight/dbias: each task sums a fixed block of [`ROWS`] rows, and the block
//! partials are added in block order, so the result does not depend on the thread count.

use super::{check_len, store, sum};
use crate::backend::Scalar;
use rayon::prelude::*;

/// LayerNorm epsilon (GPT-2, PyTorch default).
pub const LN_EPS: f64 = 1e-5;

/// Rows per block in the weight/bias-gradient reduction.
const ROWS: usize = 32;

/// out (N,C) = (inp − mean)·rstd·weight + bias; mean, rstd (N) saved for backward.
#[allow(clippy::too_many_arguments)]
pub fn layernorm_forward<T: Scalar>(
    out: &mut [T],
    mean: &mut [T],
    rstd: &mut [T],
    inp: &[T],
    weight: &[T],
    bias: Option<&[T]>,
    n: usize,
    c: usize,
    bf16: bool,
) {
    let op = "layernorm_forward";
    check_len(op, "out", out.len(), n * c);
    check_len(op, "inp", inp.len(), n * c);
    check_len(op, "mean", mean.len(), n);
    check_len(op, "rstd", rstd.len(), n);
    check_len(op, "weight", weight.len(), c);
    if let Some(bias) = bias {
        check_len(op, "bias", bias.len(), c);
    }
    if n == 0 || c == 0 {
        return;
    }
    let inv_c = T::one() / T::from_usize(c).unwrap();
    let eps = <T as Scalar>::from_f64(LN_EPS);
    out.par_chunks_mut(c)
        .zip(inp.par_chunks(c))
        .zip(mean.par_iter_mut().zip(rstd.par_iter_mut()))
        .for_each(|((o, x), (mu, rs))| {
            let m = sum(x) * inv_c;
            let mut acc = [T::zero(); 8];
            let it = x.chunks_exact(8);
            let tail = it.remainder();
            for ch in it {
                for j in 0..8 {
                    let d = ch[j] - m;
                    acc[j] += d * d;
                }
            }
            let mut var = super::sum(&acc);
            for &xi in tail {
                var += (xi - m) * (xi - m);
            }
            let r = T::one() / (var * inv_c + eps).sqrt();
            match bias {
                Some(bias) => {
                    for (((o, &xi), &w), &bb) in o.iter_mut().zip(x).zip(weight).zip(bias) {
                        *o = store((xi - m) * r * w + bb, bf16);
                    }
                }
                None => {
                    for ((o, &xi), &w) in o.iter_mut().zip(x).zip(weight) {
                        *o = store((xi - m) * r * w, bf16);
                    }
                }
            }
            *mu = m;
            *rs = r;
        });
}

/// dinp += ∂L/∂inp, dweight += Σ norm·dout, dbias += Σ dout (module docs).
#[allow(clippy::too_many_arguments)]
pub fn layernorm_backward<T: Scalar>(
    dinp: &mut [T],
    dweight: &mut [T],
    dbias: Option<&mut [T]>,
    dout: &[T],
    inp: &[T],
    weight: &[T],
    mean: &[T],
    rstd: &[T],
    n: usize,
    c: usize,
) {
    let op = "layernorm_backward";
    check_len(op, "dinp", dinp.len(), n * c);
    check_len(op, "dout", dout.len(), n * c);
    check_len(op, "inp", inp.len(), n * c);
    check_len(op, "dweight", dweight.len(), c);
    check_len(op, "weight", weight.len(), c);
    check_len(op, "mean", mean.len(), n);
    check_len(op, "rstd", rstd.len(), n);
    if let Some(db) = &dbias {
        check_len(op, "dbias", db.len(), c);
    }
    if n == 0 || c == 0 {
        return;
    }
    let inv_c = T::one() / T::from_usize(c).unwrap();
    let blocks = n.div_ceil(ROWS);
    // Per block: [dweight partial | dbias partial], each of length C.
    let mut partial = vec![T::zero(); blocks * 2 * c];
    partial
        .par_chunks_mut(2 * c)
        .zip(dinp.par_chunks_mut(ROWS * c))
        .enumerate()
        .for_each(|(blk, (part, dx_blk))| {
            let (pw, pb) = part.split_at_mut(c);
            let mut dnorm = vec![T::zero(); c];
            let mut norm = vec![T::zero(); c];
            for (r, dx) in dx_blk.chunks_mut(c).enumerate() {
                let row = blk * ROWS + r;
                let x = &inp[row * c..(row + 1) * c];
                let g = &dout[row * c..(row + 1) * c];
                let (m, rs) = (mean[row], rstd[row]);
                for ((((nm, dn), &xi), &gi), &w) in norm
                    .iter_mut()
                    .zip(dnorm.iter_mut())
                    .zip(x)
                    .zip(g)
                    .zip(weight)
                {
                    *nm = (xi - m) * rs;
                    *dn = w * gi;
                }
                let dnorm_mean = sum(&dnorm) * inv_c;
                let dnorm_norm_mean = super::dot(&dnorm, &norm) * inv_c;
                for (((d, &dn), &nm), ((w_acc, b_acc), &gi)) in dx
                    .iter_mut()
                    .zip(&dnorm)
                    .zip(&norm)
                    .zip(pw.iter_mut().zip(pb.iter_mut()).zip(g))
                {
                    *d += rs * (dn - dnorm_mean - nm * dnorm_norm_mean);
                    *w_acc += nm * gi;
                    *b_acc += gi;
                }
            }
        });
    let mut dbias = dbias;
    for part in partial.chunks(2 * c) {
        let (pw, pb) = part.split_at(c);
        for (d, &p) in dweight.iter_mut().zip(pw) {
            *d += p;
        }
        if let Some(db) = dbias.as_deref_mut() {
            for (d, &p) in db.iter_mut().zip(pb) {
                *d += p;
            }
        }
    }
}
