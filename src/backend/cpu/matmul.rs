//! Linear layer: out (N,OC) = inp (N,C) · weightᵀ + bias, weight (OC,C) as in `nn.Linear`.
//!
//! Forward is one GEMM (trans_b), backward two: dinp (N,C) += dout·weight and dweight (OC,C) += doutᵀ·inp
//! (trans_a, accumulate). All products go through [`Scalar::gemm`] (faer). dbias (OC) += Σ_rows dout is
//! parallel over blocks of columns, each column summed over rows in ascending order (thread-independent).
//! bf16 mode: the GEMM inputs (inp, weight, dout) are rounded to bf16 into a per-thread scratch buffer
//! (the fp32 master weights are never touched), accumulation stays in `T`, and the forward output is rounded
//! to bf16 after the bias add. Gradients stay in `T`.
//! Invariants: forward overwrites `out` (`=`); backward accumulates (`+=`).

use super::{check_len, with_scratch, CHUNK};
use crate::backend::Scalar;
use rayon::prelude::*;

/// Columns of dbias per task.
const BIAS_COLS: usize = 256;

/// dst = bf16(src), in parallel.
fn round_into<T: Scalar>(dst: &mut [T], src: &[T]) {
    dst.par_chunks_mut(CHUNK)
        .zip(src.par_chunks(CHUNK))
        .for_each(|(d, s)| {
            for (d, &s) in d.iter_mut().zip(s) {
                *d = s.round_bf16();
            }
        });
}

/// out (N,OC) = inp (N,C) · weightᵀ + bias (OC); output rounded to bf16 when `bf16`.
#[allow(clippy::too_many_arguments)]
pub fn matmul_forward<T: Scalar>(
    out: &mut [T],
    inp: &[T],
    weight: &[T],
    bias: Option<&[T]>,
    n: usize,
    c: usize,
    oc: usize,
    bf16: bool,
    threads: usize,
) {
    let op = "matmul_forward";
    check_len(op, "out", out.len(), n * oc);
    check_len(op, "inp", inp.len(), n * c);
    check_len(op, "weight", weight.len(), oc * c);
    if n == 0 || oc == 0 {
        return;
    }
    // With a bias, start from it and let the GEMM accumulate (saves a pass over `out`).
    let accumulate = match bias {
        Some(bias) => {
            check_len(op, "bias", bias.len(), oc);
            out.par_chunks_mut(oc).for_each(|o| o.copy_from_slice(bias));
            true
        }
        None => false,
    };
    if bf16 {
        with_scratch(n * c + oc * c, |s: &mut [T]| {
            let (x, w) = s.split_at_mut(n * c);
            round_into(x, inp);
            round_into(w, weight);
            T::gemm(out, x, w, n, oc, c, false, true, accumulate, threads);
        });
        out.par_chunks_mut(CHUNK).for_each(|o| {
            for y in o {
                *y = y.round_bf16();
            }
        });
    } else {
        T::gemm(out, inp, weight, n, oc, c, false, true, accumulate, threads);
    }
}

/// dinp += dout·weight (skipped when None), dweight += doutᵀ·inp, dbias += Σ_rows dout.
#[allow(clippy::too_many_arguments)]
pub fn matmul_backward<T: Scalar>(
    dinp: Option<&mut [T]>,
    dweight: &mut [T],
    dbias: Option<&mut [T]>,
    dout: &[T],
    inp: &[T],
    weight: &[T],
    n: usize,
    c: usize,
    oc: usize,
    bf16: bool,
    threads: usize,
) {
    let op = "matmul_backward";
    check_len(op, "dout", dout.len(), n * oc);
    check_len(op, "inp", inp.len(), n * c);
    check_len(op, "weight", weight.len(), oc * c);
    check_len(op, "dweight", dweight.len(), oc * c);
    if let Some(d) = &dinp {
        check_len(op, "dinp", d.len(), n * c);
    }
    if let Some(d) = &dbias {
        check_len(op, "dbias", d.len(), oc);
    }
    let mut run = |dinp: Option<&mut [T]>, dbias: Option<&mut [T]>, g: &[T], x: &[T], w: &[T]| {
        if let Some(dinp) = dinp {
            T::gemm(dinp, g, w, n, c, oc, false, false, true, threads);
        }
        T::gemm(dweight, g, x, oc, c, n, true, false, true, threads);
        if let Some(dbias) = dbias {
            dbias_accumulate(dbias, g, n, oc);
        }
    };
    if bf16 {
        let wlen = if dinp.is_some() { oc * c } else { 0 };
        with_scratch(n * oc + n * c + wlen, |s: &mut [T]| {
            let (g, rest) = s.split_at_mut(n * oc);
            let (x, w) = rest.split_at_mut(n * c);
            round_into(g, dout);
            round_into(x, inp);
            if dinp.is_some() {
                round_into(w, weight);
            }
            run(dinp, dbias, g, x, w);
        });
    } else {
        run(dinp, dbias, dout, inp, weight);
    }
}

/// dbias (OC) += Σ_rows dout (N,OC): one task per block of columns, rows added in ascending order.
fn dbias_accumulate<T: Scalar>(dbias: &mut [T], dout: &[T], n: usize, oc: usize) {
    dbias
        .par_chunks_mut(BIAS_COLS)
        .enumerate()
        .for_each(|(blk, d)| {
            let j0 = blk * BIAS_COLS;
            for row in 0..n {
                let g = &dout[row * oc + j0..row * oc + j0 + d.len()];
                for (d, &g) in d.iter_mut().zip(g) {
                    *d += g;
                }
            }
        });
}
