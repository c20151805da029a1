//! Optimizer steps, elementwise over one tensor: fused AdamW (torch/nanoGPT numerics, decoupled weight
//! decay) and SGD with momentum (dampening 0, decoupled weight decay).
//!
//! AdamW per element (`adamw_update`), in `T`, hyper-parameters converted to `T` once per call
//! ([`AdamCoeffs`]):
//!   m = β₁m + (1−β₁)g;  v = β₂v + (1−β₂)g·g;  u = (m/bc1) / (√(v/bc2) + ε);  p = p·(1 − lr·λ) − lr·u.
//! The per-element functions are public so a split path (rotate → update → unrotate) can reuse them and be
//! bit-identical to the fused step. Parallel over fixed chunks; every element is independent.

use super::{check_len, CHUNK};
use crate::backend::{AdamStep, Scalar};
use rayon::prelude::*;

/// AdamW hyper-parameters of one step, converted to `T` (the `1 − x` terms are formed in f64 first).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdamCoeffs<T> {
    pub lr: T,
    pub beta1: T,
    /// 1 − β₁
    pub one_minus_beta1: T,
    pub beta2: T,
    /// 1 − β₂
    pub one_minus_beta2: T,
    pub eps: T,
    /// 1 − β₁ᵗ
    pub bc1: T,
    /// 1 − β₂ᵗ
    pub bc2: T,
    /// 1 − lr·λ
    pub decay: T,
}

impl<T: Scalar> AdamCoeffs<T> {
    pub fn new(hp: &AdamStep) -> Self {
        AdamCoeffs {
            lr: <T as Scalar>::from_f64(hp.lr),
            beta1: <T as Scalar>::from_f64(hp.beta1),
            one_minus_beta1: <T as Scalar>::from_f64(1.0 - hp.beta1),
            beta2: <T as Scalar>::from_f64(hp.beta2),
            one_minus_beta2: <T as Scalar>::from_f64(1.0 - hp.beta2),
            eps: <T as Scalar>::from_f64(hp.eps),
            bc1: <T as Scalar>::from_f64(hp.bias_correction1),
            bc2: <T as Scalar>::from_f64(hp.bias_correction2),
            decay: <T as Scalar>::from_f64(1.0 - hp.lr * hp.weight_decay),
        }
    }
}

/// Updates the moments m, v with gradient g and returns the Adam direction u = m̂ / (√v̂ + ε).
#[inline]
pub fn adam_direction<T: Scalar>(m: &mut T, v: &mut T, g: T, k: &AdamCoeffs<T>) -> T {
    *m = k.beta1 * *m + k.one_minus_beta1 * g;
    *v = k.beta2 * *v + k.one_minus_beta2 * g * g;
    let mhat = *m / k.bc1;
    let vhat = *v / k.bc2;
    mhat / (vhat.sqrt() + k.eps)
}

/// One AdamW element: moments, direction, then p = p·(1 − lr·λ) − lr·u.
#[inline]
pub fn adamw_update<T: Scalar>(p: &mut T, m: &mut T, v: &mut T, g: T, k: &AdamCoeffs<T>) {
    let u = adam_direction(m, v, g, k);
    *p = *p * k.decay - k.lr * u;
}

/// Fused AdamW over one tensor (module docs).
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
                adamw_update(p, m, v, g, &k);
            }
        });
}

/// One SGD element: buf = μ·buf + g;  p = p·decay − lr·buf, with decay = 1 − lr·λ.
#[inline]
pub fn sgd_update<T: Scalar>(p: &mut T, buf: &mut T, g: T, lr: T, momentum: T, decay: T) {
    *buf = momentum * *buf + g;
    *p = *p * decay - lr * *buf;
}

/// SGD with momentum over one tensor (torch semantics, dampening 0; weight decay decoupled as documented).
pub fn sgd_step<T: Scalar>(
    params: &mut [T],
    momentum_buf: &mut [T],
    grads: &[T],
    lr: f64,
    momentum: f64,
    weight_decay: f64,
) {
    let n = params.len();
    check_len("sgd_step", "momentum_buf", momentum_buf.len(), n);
    check_len("sgd_step", "grads", grads.len(), n);
    let (lr_t, mu) = (
        <T as Scalar>::from_f64(lr),
        <T as Scalar>::from_f64(momentum),
    );
    let decay = <T as Scalar>::from_f64(1.0 - lr * weight_decay);
    params
        .par_chunks_mut(CHUNK)
        .zip(momentum_buf.par_chunks_mut(CHUNK))
        .zip(grads.par_chunks(CHUNK))
        .for_each(|((p, b), g)| {
            for ((p, b), &g) in p.iter_mut().zip(b.iter_mut()).zip(g) {
                sgd_update(p, b, g, lr_t, mu, decay);
            }
        });
}

// ---- the split path: direction in the (rotated) optimizer basis, then the update in the standard one ----
//
// Rotated optimizers (Maes et al. Alg. 2) compute a direction u in the rotated basis, unrotate it, and apply
// it with decoupled weight decay in the standard basis. The per-element arithmetic is the same as the fused
// steps above (`adam_direction`, then `p·decay − lr·u`), so with the identity rotation the split path gives
// the same bits as the fused one.

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
pub fn sgd_direction_step<T: Scalar>(
    u: &mut [T],
    momentum_buf: &mut [T],
    grads: &[T],
    momentum: f64,
) {
    let n = u.len();
    check_len("sgd_direction_step", "momentum_buf", momentum_buf.len(), n);
    check_len("sgd_direction_step", "grads", grads.len(), n);
    let mu = <T as Scalar>::from_f64(momentum);
    u.par_chunks_mut(CHUNK)
        .zip(momentum_buf.par_chunks_mut(CHUNK))
        .zip(grads.par_chunks(CHUNK))
        .for_each(|((u, b), g)| {
            for ((u, b), &g) in u.iter_mut().zip(b.iter_mut()).zip(g) {
                *b = mu * *b + g;
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
            let denom = (vb / k.bc2).sqrt() + k.eps;
            for ((u, m), &g) in u.iter_mut().zip(m.iter_mut()).zip(g) {
                *m = k.beta1 * *m + k.one_minus_beta1 * g;
                *u = (*m / k.bc1) / denom;
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
        *v = b * *v + ob * s;
    }
}

/// The update in the standard basis: p = p·(1 − lr·λ) − lr·u (the same expression as the fused steps).
pub fn apply_update<T: Scalar>(params: &mut [T], u: &[T], lr: f64, weight_decay: f64) {
    check_len("apply_update", "u", u.len(), params.len());
    let lr_t = <T as Scalar>::from_f64(lr);
    let decay = <T as Scalar>::from_f64(1.0 - lr * weight_decay);
    params
        .par_chunks_mut(CHUNK)
        .zip(u.par_chunks(CHUNK))
        .for_each(|(p, u)| {
            for (p, &u) in p.iter_mut().zip(u) {
                *p = *p * decay - lr_t * u;
            }
        });
}
