//! Fused softmax + cross-entropy over logits (N,V) (llm.c's fused classifier).
//!
//! losses[i] = −log softmax(logits[i])[targets[i]] = log Σ_j exp(l_j − max) − (l_target − max), computed
//! with max-subtraction; the sum of exponentials is accumulated in f64, the loss stored as `T`.
//! With `dloss = Some(s)`, logits[i] is overwritten by its gradient s·(softmax − onehot(target)); with None
//! the logits are left untouched. Parallel over rows; each row is computed sequentially.
//! Shapes: logits (N,V) with N = B·T, losses (N), targets (N).

use super::check_len;
use crate::backend::Scalar;
use rayon::prelude::*;

/// losses (N) = cross-entropy of logits (N,V) against targets; logits ← s·(softmax − onehot) if `dloss`.
pub fn crossentropy_forward<T: Scalar>(
    losses: &mut [T],
    logits: &mut [T],
    targets: &[u32],
    dloss: Option<T>,
    n: usize,
    v: usize,
) {
    let op = "crossentropy_forward";
    check_len(op, "losses", losses.len(), n);
    check_len(op, "logits", logits.len(), n * v);
    check_len(op, "targets", targets.len(), n);
    if n == 0 {
        return;
    }
    assert!(v > 0, "{op}: V = 0");
    losses
        .par_iter_mut()
        .zip(logits.par_chunks_mut(v))
        .zip(targets.par_iter())
        .enumerate()
        .for_each(|(i, ((loss, row), &target))| {
            let tgt = target as usize;
            assert!(tgt < v, "{op}: target {tgt} of row {i} is ≥ V = {v}");
            let max = row
                .iter()
                .fold(T::neg_infinity(), |m, &x| if x > m { x } else { m });
            let logit_t = row[tgt];
            let mut sum = 0.0f64;
            match dloss {
                None => {
                    for &x in row.iter() {
                        sum += Scalar::to_f64((x - max).exp());
                    }
                }
                Some(s) => {
                    for x in row.iter_mut() {
                        *x = (*x - max).exp();
                        sum += Scalar::to_f64(*x);
                    }
                    let k = s * <T as Scalar>::from_f64(1.0 / sum);
                    for x in row.iter_mut() {
                        *x *= k;
                    }
                    row[tgt] -= s;
                }
            }
            *loss = <T as Scalar>::from_f64(sum.ln()) - (logit_t - max);
        });
}
