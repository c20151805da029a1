//! CPU backend op tests: backward vs central finite differences (f64), f32 and bf16 forward parity vs f64
//! with tolerances derived from the precision used, known values, and determinism across thread counts.
//!
//! Shapes are small and odd: B=2, T=5, C=12, NH=3 (hs=4), OC=7, V=11. Inputs are drawn from a fixed seed and
//! made exactly representable in f32, so f32-vs-f64 differences come from the f32 arithmetic alone.
//! This file holds the shared helpers and op runners; the tests live in the submodules.

pub use crate::util::{assert_close_with, back, cast, randn_f32};
use rotadam::backend::cpu::{self, CpuBackend};
use rotadam::backend::{AdamStep, Backend, Scalar};
use rotadam::rng::Rng;

mod determinism;
mod gradcheck;
mod known;
mod parity;

const B: usize = 2;
const T: usize = 5;
const C: usize = 12;
const NH: usize = 3;
const OC: usize = 7;
const V: usize = 11;
const N: usize = B * T;
/// Tokens with repeats within and across batch rows (exercises dwte accumulation).
const TOKENS: [u32; N] = [3, 7, 3, 0, 10, 3, 7, 1, 1, 5];

/// f32 unit roundoff u = 2⁻²⁴: one correctly rounded f32 operation errs by at most u relatively.
const U32: f64 = f32::EPSILON as f64 / 2.0;
/// bf16 unit roundoff 2⁻⁹ (8 significant bits, relative spacing 2⁻⁸).
const U_BF16: f64 = 1.0 / 512.0;

// ---- helpers -------------------------------------------------------------------------------------------

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}
fn sub(a: &[f64], b: &[f64]) -> Vec<f64> {
    a.iter().zip(b).map(|(x, y)| x - y).collect()
}
fn abs(a: &[f64]) -> Vec<f64> {
    a.iter().map(|x| x.abs()).collect()
}
fn be<S: Scalar>(bf16: bool) -> CpuBackend<S> {
    CpuBackend::new(1, bf16)
}

/// Asserts every value is exactly representable in bf16 (a stored output in bf16 mode).
fn assert_bf16(op: &str, x: &[f64]) {
    for (i, &v) in x.iter().enumerate() {
        assert_eq!(
            v.round_bf16(),
            v,
            "{op}: output [{i}] = {v:e} is not a bf16 value"
        );
    }
}

/// Step of the central differences. Truncation error h²/6·|f'''| ≈ 2e-11 and rounding error ε·|L|/h ≈
/// 2e-11·|L| are both far below the 1e-6 bound of [`gradcheck`] (relative to max(|a|, |n|, 1e-3)).
const H: f64 = 1e-5;

/// Compares `analytic` = ∂L/∂x with central differences of `loss` at `x`, on every coordinate:
/// |a − n| ≤ 1e-6 · max(|a|, |n|, 1e-3).
fn gradcheck(op: &str, wrt: &str, x: &[f64], analytic: &[f64], loss: impl Fn(&[f64]) -> f64) {
    assert_eq!(x.len(), analytic.len(), "{op}: d{wrt} length");
    let mut xp = x.to_vec();
    for i in 0..x.len() {
        xp[i] = x[i] + H;
        let lp = loss(&xp);
        xp[i] = x[i] - H;
        let lm = loss(&xp);
        xp[i] = x[i];
        let num = (lp - lm) / (2.0 * H);
        let a = analytic[i];
        let err = (a - num).abs() / a.abs().max(num.abs()).max(1e-3);
        assert!(
            err <= 1e-6,
            "{op}: d{wrt}[{i}]: analytic {a:.12e} vs numeric {num:.12e} (relative error {err:.2e})"
        );
    }
}

// ---- op runners: f64 inputs → op in precision S (bf16 mode optional) → f64 outputs ---------------------

fn run_encoder<S: Scalar>(bf16: bool, wte: &[f64], wpe: &[f64]) -> Vec<f64> {
    let mut out = vec![S::zero(); N * C];
    be::<S>(bf16)
        .encoder_forward(&mut out, &TOKENS, &cast(wte), &cast(wpe), B, T, C)
        .unwrap();
    back(&out)
}

/// [out, mean, rstd]
fn run_layernorm<S: Scalar>(
    bf16: bool,
    x: &[f64],
    w: &[f64],
    bias: &[f64],
    n: usize,
    c: usize,
) -> [Vec<f64>; 3] {
    let (mut out, mut mean, mut rstd) = (
        vec![S::zero(); n * c],
        vec![S::zero(); n],
        vec![S::zero(); n],
    );
    let bias: Vec<S> = cast(bias);
    let bias = (!bias.is_empty()).then_some(&bias[..]);
    be::<S>(bf16)
        .layernorm_forward(
            &mut out,
            &mut mean,
            &mut rstd,
            &cast(x),
            &cast(w),
            bias,
            n,
            c,
        )
        .unwrap();
    [back(&out), back(&mean), back(&rstd)]
}

fn run_matmul<S: Scalar>(
    bf16: bool,
    x: &[f64],
    w: &[f64],
    bias: &[f64],
    n: usize,
    c: usize,
    oc: usize,
) -> Vec<f64> {
    let mut out = vec![S::zero(); n * oc];
    let bias: Vec<S> = cast(bias);
    let bias = (!bias.is_empty()).then_some(&bias[..]);
    be::<S>(bf16)
        .matmul_forward(&mut out, &cast(x), &cast(w), bias, n, c, oc)
        .unwrap();
    back(&out)
}

/// [out, att]
fn run_attention<S: Scalar>(bf16: bool, qkv: &[f64], b: usize, t: usize) -> [Vec<f64>; 2] {
    let (mut out, mut att) = (vec![S::zero(); b * t * C], vec![S::zero(); b * NH * t * t]);
    be::<S>(bf16)
        .attention_forward(&mut out, &mut att, &cast(qkv), b, t, C, NH)
        .unwrap();
    [back(&out), back(&att)]
}

fn run_gelu<S: Scalar>(bf16: bool, x: &[f64]) -> Vec<f64> {
    let mut out = vec![S::zero(); x.len()];
    be::<S>(bf16).gelu_forward(&mut out, &cast(x)).unwrap();
    back(&out)
}

fn run_residual<S: Scalar>(bf16: bool, a: &[f64], b: &[f64]) -> Vec<f64> {
    let mut out = vec![S::zero(); a.len()];
    be::<S>(bf16)
        .residual_forward(&mut out, &cast(a), &cast(b))
        .unwrap();
    back(&out)
}

/// [losses, logits after the call (the gradient when `dloss` is Some)]
fn run_crossentropy<S: Scalar>(
    logits: &[f64],
    targets: &[u32],
    dloss: Option<f64>,
) -> [Vec<f64>; 2] {
    let n = targets.len();
    let (mut losses, mut lg) = (vec![S::zero(); n], cast::<S>(logits));
    let dloss = dloss.map(<S as Scalar>::from_f64);
    be::<S>(false)
        .crossentropy_forward(&mut losses, &mut lg, targets, dloss, n, logits.len() / n)
        .unwrap();
    [back(&losses), back(&lg)]
}
