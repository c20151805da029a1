//! Elementwise ops and flat reductions: fill, scale, sum_squares, the token+position encoder, GELU, and
//! the residual add.
//!
//! Shapes: encoder out (B,T,C) from wte (V,C) and wpe (maxT,C); GELU and residual are flat.
//! Invariants: forward ops overwrite (`=`) and round their output to bf16 in bf16 mode; backward ops
//! accumulate (`+=`) in `T`. `sum_squares` sums fixed chunks of [`CHUNK`] elements in f64 and adds the chunk
//! sums in chunk order; `encoder_backward` sums each dwte/dwpe row over positions in ascending order. Both
//! are therefore independent of the thread count.

use super::{check_len, store, CHUNK};
use crate::backend::Scalar;
use rayon::prelude::*;

/// out = value
pub fn fill<T: Scalar>(out: &mut [T], value: T) {
    out.par_chunks_mut(CHUNK).for_each(|o| o.fill(value));
}

/// out *= s
pub fn scale<T: Scalar>(out: &mut [T], s: T) {
    out.par_chunks_mut(CHUNK).for_each(|o| {
        for x in o {
            *x *= s;
        }
    });
}

/// Σ x² in f64: chunks of [`CHUNK`] elements summed with 8 interleaved lanes, chunk sums added in order.
pub fn sum_squares<T: Scalar>(x: &[T]) -> f64 {
    let partial: Vec<f64> = x
        .par_chunks(CHUNK)
        .map(|ch| {
            let mut acc = [0.0f64; 8];
            let it = ch.chunks_exact(8);
            let tail = it.remainder();
            for c in it {
                for j in 0..8 {
                    let y = Scalar::to_f64(c[j]);
                    acc[j] += y * y;
                }
            }
            let mut s =
                ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
            for &y in tail {
                let y = Scalar::to_f64(y);
                s += y * y;
            }
            s
        })
        .collect();
    partial.iter().sum()
}

/// out (B,T,C) = wte[tokens] + wpe[t]; tokens (B·T); rounded to bf16 when `bf16`.
#[allow(clippy::too_many_arguments)]
pub fn encoder_forward<T: Scalar>(
    out: &mut [T],
    tokens: &[u32],
    wte: &[T],
    wpe: &[T],
    b: usize,
    t: usize,
    c: usize,
    bf16: bool,
) {
    let op = "encoder_forward";
    check_len(op, "out", out.len(), b * t * c);
    check_len(op, "tokens", tokens.len(), b * t);
    assert!(
        wpe.len() >= t * c,
        "{op}: wpe has {} elements, need ≥ T·C = {t}·{c}",
        wpe.len()
    );
    assert!(
        wte.len().is_multiple_of(c.max(1)),
        "{op}: wte length {} is not a multiple of C = {c}",
        wte.len()
    );
    if c == 0 {
        return;
    }
    let vocab = wte.len() / c;
    out.par_chunks_mut(c).enumerate().for_each(|(bt, o)| {
        let tok = tokens[bt] as usize;
        assert!(
            tok < vocab,
            "{op}: token {tok} at position {bt} is ≥ vocabulary size {vocab}"
        );
        let pos = bt % t;
        let we = &wte[tok * c..(tok + 1) * c];
        let pe = &wpe[pos * c..(pos + 1) * c];
        for ((o, &x), &y) in o.iter_mut().zip(we).zip(pe) {
            *o = store(x + y, bf16);
        }
    });
}

/// Rows of dwte per task in `encoder_backward`.
const VOCAB_ROWS: usize = 256;

/// dwte[tokens] += dout, dwpe[t] += Σ_b dout. Each row is summed over positions in ascending order.
#[allow(clippy::too_many_arguments)]
pub fn encoder_backward<T: Scalar>(
    dwte: &mut [T],
    dwpe: &mut [T],
    dout: &[T],
    tokens: &[u32],
    b: usize,
    t: usize,
    c: usize,
) {
    let op = "encoder_backward";
    check_len(op, "dout", dout.len(), b * t * c);
    check_len(op, "tokens", tokens.len(), b * t);
    assert!(
        dwpe.len() >= t * c,
        "{op}: dwpe has {} elements, need ≥ T·C = {t}·{c}",
        dwpe.len()
    );
    if c == 0 {
        return;
    }
    assert!(
        dwte.len().is_multiple_of(c),
        "{op}: dwte length {} is not a multiple of C = {c}",
        dwte.len()
    );
    let vocab = dwte.len() / c;
    // dwpe: one task per position, summed over b in order.
    dwpe[..t * c]
        .par_chunks_mut(c)
        .enumerate()
        .for_each(|(pos, d)| {
            for bi in 0..b {
                let row = &dout[(bi * t + pos) * c..(bi * t + pos + 1) * c];
                for (d, &g) in d.iter_mut().zip(row) {
                    *d += g;
                }
            }
        });
    // dwte: positions sorted by (token, position); each task owns a block of vocabulary rows.
    let mut order: Vec<(u32, u32)> = tokens
        .iter()
        .enumerate()
        .map(|(i, &tok)| {
            assert!(
                (tok as usize) < vocab,
                "{op}: token {tok} at position {i} is ≥ vocabulary size {vocab}"
            );
            (tok, i as u32)
        })
        .collect();
    order.sort_unstable();
    dwte.par_chunks_mut(VOCAB_ROWS * c)
        .enumerate()
        .for_each(|(blk, d)| {
            let first = (blk * VOCAB_ROWS) as u32;
            let last = first + (d.len() / c) as u32;
            let lo = order.partition_point(|&(tok, _)| tok < first);
            let hi = order.partition_point(|&(tok, _)| tok < last);
            for &(tok, i) in &order[lo..hi] {
                let r = (tok - first) as usize;
                let i = i as usize;
                let row = &dout[i * c..(i + 1) * c];
                for (d, &g) in d[r * c..(r + 1) * c].iter_mut().zip(row) {
                    *d += g;
                }
            }
        });
}

/// √(2/π)
const GELU_SCALE: f64 = 0.797_884_560_802_865_4;
const GELU_CUBE: f64 = 0.044715;

/// GELU, tanh approximation: out = ½x(1 + tanh(√(2/π)(x + 0.044715x³))); rounded to bf16 when `bf16`.
/// Evaluated as x·σ(2u) with σ(z) = 1/(1 + e^(−z)), the same function (½(1 + tanh u) = σ(2u)) with one `exp`
/// instead of `tanh` (faster) and no cancellation for negative x.
pub fn gelu_forward<T: Scalar>(out: &mut [T], inp: &[T], bf16: bool) {
    check_len("gelu_forward", "inp", inp.len(), out.len());
    let m2s = <T as Scalar>::from_f64(-2.0 * GELU_SCALE);
    let k = <T as Scalar>::from_f64(GELU_CUBE);
    let one = T::one();
    out.par_chunks_mut(CHUNK)
        .zip(inp.par_chunks(CHUNK))
        .for_each(|(o, x)| {
            for (o, &x) in o.iter_mut().zip(x) {
                let e = (m2s * (x + k * x * x * x)).exp();
                *o = store(x / (one + e), bf16);
            }
        });
}

/// dinp += dout · gelu'(inp). With u = √(2/π)(x + 0.044715x³), σ = σ(2u), 1 − σ = σ·e^(−2u):
/// gelu'(x) = ½(1 + tanh u) + ½x·sech²u·u' = σ + 2x·σ(1 − σ)·√(2/π)(1 + 3·0.044715x²).
pub fn gelu_backward<T: Scalar>(dinp: &mut [T], inp: &[T], dout: &[T]) {
    check_len("gelu_backward", "inp", inp.len(), dinp.len());
    check_len("gelu_backward", "dout", dout.len(), dinp.len());
    let m2s = <T as Scalar>::from_f64(-2.0 * GELU_SCALE);
    let s2 = <T as Scalar>::from_f64(2.0 * GELU_SCALE);
    let k = <T as Scalar>::from_f64(GELU_CUBE);
    let k3 = <T as Scalar>::from_f64(3.0 * GELU_CUBE);
    let one = T::one();
    dinp.par_chunks_mut(CHUNK)
        .zip(inp.par_chunks(CHUNK))
        .zip(dout.par_chunks(CHUNK))
        .for_each(|((d, x), g)| {
            for ((d, &x), &g) in d.iter_mut().zip(x).zip(g) {
                let x2 = x * x;
                let e = (m2s * (x + k * x2 * x)).exp();
                let sig = one / (one + e);
                // 1 − σ; its limit is 0 where e^(−2u) overflows (x → −∞).
                let one_minus_sig = if e.is_infinite() { T::zero() } else { sig * e };
                let local = sig + x * sig * one_minus_sig * s2 * (one + k3 * x2);
                *d += local * g;
            }
        });
}

/// out = a + b; rounded to bf16 when `bf16`.
pub fn residual_forward<T: Scalar>(out: &mut [T], a: &[T], b: &[T], bf16: bool) {
    check_len("residual_forward", "a", a.len(), out.len());
    check_len("residual_forward", "b", b.len(), out.len());
    out.par_chunks_mut(CHUNK)
        .zip(a.par_chunks(CHUNK))
        .zip(b.par_chunks(CHUNK))
        .for_each(|((o, a), b)| {
            for ((o, &a), &b) in o.iter_mut().zip(a).zip(b) {
                *o = store(a + b, bf16);
            }
        });
}

/// dx += dout
pub fn add_inplace<T: Scalar>(dx: &mut [T], dout: &[T]) {
    check_len("add_inplace", "dout", dout.len(), dx.len());
    dx.par_chunks_mut(CHUNK)
        .zip(dout.par_chunks(CHUNK))
        .for_each(|(d, g)| {
            for (d, &g) in d.iter_mut().zip(g) {
                *d += g;
            }
        });
}
