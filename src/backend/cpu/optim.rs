//! Optimizer steps on the CPU, elementwise over one tensor. Each formula is written once, as a per-element
//! function, and every op (fused or not, rotated or not) is a loop over those functions, so the fused
//! steps and the optimizer's unfused chain compute the same bits (`optim` tests it):
//!
//! - [`first_moment`]: m ← β₁m + (1−β₁)g;
//! - [`second_moment`]: v ← β₂v + (1−β₂)g·g;
//! - [`adam_denominator`], [`adam_ratio`]: u = (m/bc1) / (√(v/bc2) + ε), with bc = 1 − βᵗ (Kingma & Ba;
//!   Maes et al. Alg. 1); [`adam_direction`] is the three in sequence;
//! - [`momentum`]: buf ← μ·buf + g (torch's SGD, dampening 0);
//! - [`ema`]: v ← β₂v + (1−β₂)s, the blockwise second moments from the mean squares s;
//! - [`decayed_step`]: p ← p·(1 − lr·λ) − lr·u, decoupled weight decay then the step, in torch's order of
//!   roundings (the decay factor from [`crate::backend::decoupled_decay`]).
//!
//! Hyper-parameters are converted to `T` once per call ([`AdamCoeffs`]). Parallel over fixed chunks; every
//! element is independent.

use super::{check_len, CHUNK};
use crate::backend::{decoupled_decay, AdamCoeffs, AdamStep, Scalar};
use rayon::prelude::*;

/// m ← β₁m + (1−β₁)g.
#[inline]
pub fn first_moment<T: Scalar>(m: T, g: T, k: &AdamCoeffs<T>) -> T {
    k.beta1 * m + k.one_minus_beta1 * g
}

/// v ← β₂v + (1−β₂)g·g.
#[inline]
pub fn second_moment<T: Scalar>(v: T, g: T, k: &AdamCoeffs<T>) -> T {
    k.beta2 * v + k.one_minus_beta2 * g * g
}

/// √(v/bc2) + ε.
#[inline]
pub fn adam_denominator<T: Scalar>(v: T, k: &AdamCoeffs<T>) -> T {
    (v / k.bc2).sqrt() + k.eps
}

/// (m/bc1) / denominator.
#[inline]
pub fn adam_ratio<T: Scalar>(m: T, denominator: T, k: &AdamCoeffs<T>) -> T {
    (m / k.bc1) / denominator
}

/// Updates the moments m, v with gradient g and returns the Adam direction u = m̂ / (√v̂ + ε).
#[inline]
pub fn adam_direction<T: Scalar>(m: &mut T, v: &mut T, g: T, k: &AdamCoeffs<T>) -> T {
    *m = first_moment(*m, g, k);
    *v = second_moment(*v, g, k);
    adam_ratio(*m, adam_denominator(*v, k), k)
}

/// buf ← μ·buf + g.
#[inline]
pub fn momentum<T: Scalar>(buf: T, g: T, mu: T) -> T {
    mu * buf + g
}

/// v ← β₂v + (1−β₂)s.
#[inline]
pub fn ema<T: Scalar>(v: T, s: T, beta: T, one_minus_beta: T) -> T {
    beta * v + one_minus_beta * s
}

/// p·decay − lr·u, decay = 1 − lr·λ.
#[inline]
pub fn decayed_step<T: Scalar>(p: T, u: T, lr: T, decay: T) -> T {
    p * decay - lr * u
}

/// Fused AdamW over one tensor: moments, direction, then the decayed step.
pub fn adamw_step<T: Scalar>(
    params: &mut [T],
    m: &mut [T],
    v: &mut [T],
    grads: &[T],
    hp: AdamStep,
) {
    let n = params.len();
    check_len("adamw_step", "m", m.len(), n);
    check_len("adamw_step", "v", v.len(), n);
    check_len("adamw_step", "grads", grads.len(), n);
    let k = AdamCoeffs::<T>::new(&hp);
    params
        .par_chunks_mut(CHUNK)
        .zip(m.par_chunks_mut(CHUNK))
        .zip(v.par_chunks_mut(CHUNK))
        .zip(grads.par_chunks(CHUNK))
        .for_each(|(((p, m), v), g)| {
            for (((p, m), v), &g) in p.iter_mut().zip(m.iter_mut()).zip(v.iter_mut()).zip(g) {
                let u = adam_direction(m, v, g, &k);
                *p = decayed_step(*p, u, k.lr, k.decay);
            }
        });
}

/// SGD with momentum over one tensor (torch semantics, dampening 0), then the decayed step.
pub fn sgd_step<T: Scalar>(
    params: &mut [T],
    momentum_buf: &mut [T],
    grads: &[T],
    lr: f64,
    mu: f64,
    weight_decay: f64,
) {
    let n = params.len();
    check_len("sgd_step", "momentum_buf", momentum_buf.len(), n);
    check_len("sgd_step", "grads", grads.len(), n);
    let (lr_t, mu) = (<T as Scalar>::from_f64(lr), <T as Scalar>::from_f64(mu));
    let decay = <T as Scalar>::from_f64(decoupled_decay(lr, weight_decay));
    params
        .par_chunks_mut(CHUNK)
        .zip(momentum_buf.par_chunks_mut(CHUNK))
        .zip(grads.par_chunks(CHUNK))
        .for_each(|((p, b), g)| {
            for ((p, b), &g) in p.iter_mut().zip(b.iter_mut()).zip(g) {
                *b = momentum(*b, g, mu);
                *p = decayed_step(*p, *b, lr_t, decay);
            }
        });
}

// ---- the unfused chain: a direction in the (rotated) optimizer basis, then the update in the standard
// one (Maes et al. Alg. 2). The same per-element functions as the fused steps above.

/// Adam moments and direction over one vector: u = m̂/(√v̂ + ε) (moments updated in place).
pub fn adam_direction_step<T: Scalar>(
    u: &mut [T],
    m: &mut [T],
    v: &mut [T],
    grads: &[T],
    hp: AdamStep,
) {
    let n = u.len();
    check_len("adam_direction_step", "m", m.len(), n);
    check_len("adam_direction_step", "v", v.len(), n);
    check_len("adam_direction_step", "grads", grads.len(), n);
    let k = AdamCoeffs::<T>::new(&hp);
    u.par_chunks_mut(CHUNK)
        .zip(m.par_chunks_mut(CHUNK))
        .zip(v.par_chunks_mut(CHUNK))
        .zip(grads.par_chunks(CHUNK))
        .for_each(|(((u, m), v), g)| {
            for (((u, m), v), &g) in u.iter_mut().zip(m.iter_mut()).zip(v.iter_mut()).zip(g) {
                *u = adam_direction(m, v, g, &k);
            }
        });
}

/// SGD momentum and direction: buf = μ·buf + g; u = buf.
pub fn sgd_direction_step<T: Scalar>(u: &mut [T], momentum_buf: &mut [T], grads: &[T], mu: f64) {
    let n = u.len();
    check_len("sgd_direction_step", "momentum_buf", momentum_buf.len(), n);
    check_len("sgd_direction_step", "grads", grads.len(), n);
    let mu = <T as Scalar>::from_f64(mu);
    u.par_chunks_mut(CHUNK)
        .zip(momentum_buf.par_chunks_mut(CHUNK))
        .zip(grads.par_chunks(CHUNK))
        .for_each(|((u, b), g)| {
            for ((u, b), &g) in u.iter_mut().zip(b.iter_mut()).zip(g) {
                *b = momentum(*b, g, mu);
                *u = *b;
            }
        });
}

/// Mean of squares of each consecutive block of `block` elements: out[i] = mean(x[i·block..(i+1)·block]²),
/// accumulated in f64 in index order (deterministic).
pub fn block_mean_squares<T: Scalar>(out: &mut [T], x: &[T], block: usize) {
    assert!(block > 0, "block_mean_squares: block must be > 0");
    check_len("block_mean_squares", "x", x.len(), out.len() * block);
    let inv = 1.0 / block as f64;
    out.par_iter_mut()
        .zip(x.par_chunks(block))
        .for_each(|(o, xs)| {
            let s: f64 = xs
                .iter()
                .map(|&v| {
                    let v = Scalar::to_f64(v);
                    v * v
                })
                .sum();
            *o = <T as Scalar>::from_f64(s * inv);
        });
}

/// Momentum with one shared second moment per block of `block` elements (AdaSGD: one block for the whole
/// vector; blockwise Adam, Xie et al. Alg. 3: one per tensor or per output neuron):
///   m = β₁m + (1−β₁)g;  u = (m/bc1) / (√(vb/bc2) + ε) with vb = v[i / block].
#[allow(clippy::too_many_arguments)]
pub fn block_adam_direction_step<T: Scalar>(
    u: &mut [T],
    m: &mut [T],
    v: &[T],
    grads: &[T],
    block: usize,
    hp: AdamStep,
) {
    let n = u.len();
    assert!(block > 0, "block_adam_direction_step: block must be > 0");
    check_len("block_adam_direction_step", "m", m.len(), n);
    check_len("block_adam_direction_step", "grads", grads.len(), n);
    check_len("block_adam_direction_step", "v", v.len() * block, n);
    let k = AdamCoeffs::<T>::new(&hp);
    u.par_chunks_mut(block)
        .zip(m.par_chunks_mut(block))
        .zip(grads.par_chunks(block))
        .zip(v.par_iter())
        .for_each(|(((u, m), g), &vb)| {
            let denominator = adam_denominator(vb, &k);
            for ((u, m), &g) in u.iter_mut().zip(m.iter_mut()).zip(g) {
                *m = first_moment(*m, g, &k);
                *u = adam_ratio(*m, denominator, &k);
            }
        });
}

/// v = β₂·v + (1−β₂)·s, elementwise (the blockwise second moments from `block_mean_squares`).
pub fn ema_inplace<T: Scalar>(v: &mut [T], s: &[T], beta2: f64) {
    check_len("ema_inplace", "s", s.len(), v.len());
    let (b, ob) = (
        <T as Scalar>::from_f64(beta2),
        <T as Scalar>::from_f64(1.0 - beta2),
    );
    for (v, &s) in v.iter_mut().zip(s) {
        *v = ema(*v, s, b, ob);
    }
}

/// The update in the standard basis: p = p·(1 − lr·λ) − lr·u.
pub fn apply_update<T: Scalar>(params: &mut [T], u: &[T], lr: f64, weight_decay: f64) {
    check_len("apply_update", "u", u.len(), params.len());
    let lr_t = <T as Scalar>::from_f64(lr);
    let decay = <T as Scalar>::from_f64(decoupled_decay(lr, weight_decay));
    params
        .par_chunks_mut(CHUNK)
        .zip(u.par_chunks(CHUNK))
        .for_each(|(p, u)| {
            for (p, &u) in p.iter_mut().zip(u) {
                *p = decayed_step(*p, u, lr_t, decay);
            }
        });
}
