//! CPU backend op tests: backward vs central finite differences (f64), f32 and bf16 forward parity vs f64
//! with tolerances derived from the precision used, known values, and determinism across thread counts.
//!
//! Shapes are small and odd: B=2, T=5, C=12, NH=3 (hs=4), OC=7, V=11. Inputs are drawn from a fixed seed and
//! made exactly representable in f32, so f32-vs-f64 differences come from the f32 arithmetic alone.

use rotadam::backend::cpu::{self, CpuBackend};
use rotadam::backend::{AdamStep, Backend, Scalar};
use rotadam::rng::Rng;

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

/// N(0,1)·scale values, rounded to f32 so both precisions see the same inputs.
fn randn(rng: &mut Rng, n: usize, scale: f64) -> Vec<f64> {
    (0..n).map(|_| (rng.normal() * scale) as f32 as f64).collect()
}
fn cast<S: Scalar>(x: &[f64]) -> Vec<S> {
    x.iter().map(|&v| <S as Scalar>::from_f64(v)).collect()
}
fn back<S: Scalar>(x: &[S]) -> Vec<f64> {
    x.iter().map(|&v| Scalar::to_f64(v)).collect()
}
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

/// Asserts |got − want| ≤ tol(i, want) everywhere; on failure prints the op, the first mismatches (index and
/// both values) and the largest difference.
fn assert_close(op: &str, got: &[f64], want: &[f64], tol: impl Fn(usize, f64) -> f64) {
    assert_eq!(got.len(), want.len(), "{op}: lengths differ");
    let mut bad = Vec::new();
    let mut max_diff = 0.0f64;
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let d = (g - w).abs();
        max_diff = max_diff.max(d);
        if d.is_nan() || d > tol(i, w) {
            bad.push(format!("  [{i}] got {g:.9e} want {w:.9e} (diff {d:.3e}, tol {:.3e})", tol(i, w)));
        }
    }
    assert!(
        bad.is_empty(),
        "{op}: {} of {} elements out of tolerance, max diff {max_diff:.3e}\n{}",
        bad.len(),
        got.len(),
        bad[..bad.len().min(5)].join("\n")
    );
}

/// Asserts every value is exactly representable in bf16 (a stored output in bf16 mode).
fn assert_bf16(op: &str, x: &[f64]) {
    for (i, &v) in x.iter().enumerate() {
        assert_eq!(v.round_bf16(), v, "{op}: output [{i}] = {v:e} is not a bf16 value");
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
    be::<S>(bf16).encoder_forward(&mut out, &TOKENS, &cast(wte), &cast(wpe), B, T, C);
    back(&out)
}

/// [out, mean, rstd]
fn run_layernorm<S: Scalar>(bf16: bool, x: &[f64], w: &[f64], bias: &[f64], n: usize, c: usize) -> [Vec<f64>; 3] {
    let (mut out, mut mean, mut rstd) = (vec![S::zero(); n * c], vec![S::zero(); n], vec![S::zero(); n]);
    let bias: Vec<S> = cast(bias);
    let bias = (!bias.is_empty()).then_some(&bias[..]);
    be::<S>(bf16).layernorm_forward(&mut out, &mut mean, &mut rstd, &cast(x), &cast(w), bias, n, c);
    [back(&out), back(&mean), back(&rstd)]
}

fn run_matmul<S: Scalar>(bf16: bool, x: &[f64], w: &[f64], bias: &[f64], n: usize, c: usize, oc: usize) -> Vec<f64> {
    let mut out = vec![S::zero(); n * oc];
    let bias: Vec<S> = cast(bias);
    let bias = (!bias.is_empty()).then_some(&bias[..]);
    be::<S>(bf16).matmul_forward(&mut out, &cast(x), &cast(w), bias, n, c, oc);
    back(&out)
}

/// [out, att]
fn run_attention<S: Scalar>(bf16: bool, qkv: &[f64], b: usize, t: usize) -> [Vec<f64>; 2] {
    let (mut out, mut att) = (vec![S::zero(); b * t * C], vec![S::zero(); b * NH * t * t]);
    be::<S>(bf16).attention_forward(&mut out, &mut att, &cast(qkv), b, t, C, NH);
    [back(&out), back(&att)]
}

fn run_gelu<S: Scalar>(bf16: bool, x: &[f64]) -> Vec<f64> {
    let mut out = vec![S::zero(); x.len()];
    be::<S>(bf16).gelu_forward(&mut out, &cast(x));
    back(&out)
}

fn run_residual<S: Scalar>(bf16: bool, a: &[f64], b: &[f64]) -> Vec<f64> {
    let mut out = vec![S::zero(); a.len()];
    be::<S>(bf16).residual_forward(&mut out, &cast(a), &cast(b));
    back(&out)
}

/// [losses, logits after the call (the gradient when `dloss` is Some)]
fn run_crossentropy<S: Scalar>(logits: &[f64], targets: &[u32], dloss: Option<f64>) -> [Vec<f64>; 2] {
    let n = targets.len();
    let (mut losses, mut lg) = (vec![S::zero(); n], cast::<S>(logits));
    let dloss = dloss.map(<S as Scalar>::from_f64);
    be::<S>(false).crossentropy_forward(&mut losses, &mut lg, targets, dloss, n, logits.len() / n);
    [back(&losses), back(&lg)]
}

// ---- backward vs finite differences (f64) ---------------------------------------------------------------

#[test]
fn encoder_backward_gradcheck() {
    let mut rng = Rng::new(1);
    let (wte, wpe, r) = (randn(&mut rng, V * C, 1.0), randn(&mut rng, T * C, 1.0), randn(&mut rng, N * C, 1.0));
    let (g0te, g0pe) = (randn(&mut rng, V * C, 1.0), randn(&mut rng, T * C, 1.0));
    let (mut dwte, mut dwpe) = (g0te.clone(), g0pe.clone());
    be::<f64>(false).encoder_backward(&mut dwte, &mut dwpe, &r, &TOKENS, B, T, C);
    let op = "encoder_backward";
    gradcheck(op, "wte", &wte, &sub(&dwte, &g0te), |x| dot(&run_encoder::<f64>(false, x, &wpe), &r));
    gradcheck(op, "wpe", &wpe, &sub(&dwpe, &g0pe), |x| dot(&run_encoder::<f64>(false, &wte, x), &r));
}

#[test]
fn layernorm_backward_gradcheck() {
    let mut rng = Rng::new(2);
    let x: Vec<f64> = randn(&mut rng, N * C, 1.0).iter().map(|v| v + 0.5).collect();
    let (w, bias, r) = (randn(&mut rng, C, 1.0), randn(&mut rng, C, 1.0), randn(&mut rng, N * C, 1.0));
    let [_, mean, rstd] = run_layernorm::<f64>(false, &x, &w, &bias, N, C);
    let (g0x, g0w, g0b) = (randn(&mut rng, N * C, 1.0), randn(&mut rng, C, 1.0), randn(&mut rng, C, 1.0));
    let (mut dx, mut dw, mut db) = (g0x.clone(), g0w.clone(), g0b.clone());
    be::<f64>(false).layernorm_backward(&mut dx, &mut dw, Some(&mut db), &r, &x, &w, &mean, &rstd, N, C);
    let op = "layernorm_backward";
    let loss = |x: &[f64], w: &[f64], b: &[f64]| dot(&run_layernorm::<f64>(false, x, w, b, N, C)[0], &r);
    gradcheck(op, "inp", &x, &sub(&dx, &g0x), |v| loss(v, &w, &bias));
    gradcheck(op, "weight", &w, &sub(&dw, &g0w), |v| loss(&x, v, &bias));
    gradcheck(op, "bias", &bias, &sub(&db, &g0b), |v| loss(&x, &w, v));
}

#[test]
fn matmul_backward_gradcheck() {
    let mut rng = Rng::new(3);
    let (x, w, bias) = (randn(&mut rng, N * C, 1.0), randn(&mut rng, OC * C, 1.0), randn(&mut rng, OC, 1.0));
    let r = randn(&mut rng, N * OC, 1.0);
    let (g0x, g0w, g0b) = (randn(&mut rng, N * C, 1.0), randn(&mut rng, OC * C, 1.0), randn(&mut rng, OC, 1.0));
    let (mut dx, mut dw, mut db) = (g0x.clone(), g0w.clone(), g0b.clone());
    be::<f64>(false).matmul_backward(Some(&mut dx), &mut dw, Some(&mut db), &r, &x, &w, N, C, OC);
    let op = "matmul_backward";
    let loss = |x: &[f64], w: &[f64], b: &[f64]| dot(&run_matmul::<f64>(false, x, w, b, N, C, OC), &r);
    gradcheck(op, "inp", &x, &sub(&dx, &g0x), |v| loss(v, &w, &bias));
    gradcheck(op, "weight", &w, &sub(&dw, &g0w), |v| loss(&x, v, &bias));
    gradcheck(op, "bias", &bias, &sub(&db, &g0b), |v| loss(&x, &w, v));
    // dinp = None, dbias = None: dweight alone, identical to the full call.
    let mut dw2 = g0w.clone();
    be::<f64>(false).matmul_backward(None, &mut dw2, None, &r, &x, &w, N, C, OC);
    assert_eq!(dw2, dw, "matmul_backward: dweight differs when dinp/dbias are None");
}

#[test]
fn attention_backward_gradcheck() {
    let mut rng = Rng::new(4);
    let (qkv, r) = (randn(&mut rng, N * 3 * C, 1.0), randn(&mut rng, N * C, 1.0));
    let [_, att] = run_attention::<f64>(false, &qkv, B, T);
    let g0 = randn(&mut rng, N * 3 * C, 1.0);
    let mut dqkv = g0.clone();
    let mut scratch = vec![f64::NAN; B * NH * T * T]; // contents on entry must not matter
    be::<f64>(false).attention_backward(&mut dqkv, &mut scratch, &r, &qkv, &att, B, T, C, NH);
    assert!(scratch.iter().all(|s| s.is_finite()), "attention_backward: scratch not fully overwritten");
    gradcheck("attention_backward", "qkv", &qkv, &sub(&dqkv, &g0), |v| {
        dot(&run_attention::<f64>(false, v, B, T)[0], &r)
    });
}

#[test]
fn gelu_backward_gradcheck() {
    let mut rng = Rng::new(5);
    let (x, r, g0) = (randn(&mut rng, 97, 2.0), randn(&mut rng, 97, 1.0), randn(&mut rng, 97, 1.0));
    let mut dx = g0.clone();
    be::<f64>(false).gelu_backward(&mut dx, &x, &r);
    gradcheck("gelu_backward", "inp", &x, &sub(&dx, &g0), |v| dot(&run_gelu::<f64>(false, v), &r));
}

#[test]
fn residual_backward_gradcheck() {
    // The residual backward is add_inplace on each branch.
    let mut rng = Rng::new(6);
    let (a, b, r, g0) = (randn(&mut rng, 31, 1.0), randn(&mut rng, 31, 1.0), randn(&mut rng, 31, 1.0), randn(&mut rng, 31, 1.0));
    let mut da = g0.clone();
    be::<f64>(false).add_inplace(&mut da, &r);
    gradcheck("add_inplace", "a", &a, &sub(&da, &g0), |v| dot(&run_residual::<f64>(false, v, &b), &r));
}

#[test]
fn crossentropy_forward_gradcheck() {
    let mut rng = Rng::new(7);
    let logits = randn(&mut rng, N * V, 2.0);
    let targets: Vec<u32> = (0..N as u32).map(|i| (i * 7 + 3) % V as u32).collect();
    let s = 0.37;
    let [losses, grad] = run_crossentropy::<f64>(&logits, &targets, Some(s));
    let [losses_nograd, untouched] = run_crossentropy::<f64>(&logits, &targets, None);
    assert_eq!(losses, losses_nograd, "crossentropy_forward: losses depend on dloss");
    assert_eq!(untouched, logits, "crossentropy_forward: dloss None modified the logits");
    gradcheck("crossentropy_forward", "logits", &logits, &grad, |v| {
        s * run_crossentropy::<f64>(v, &targets, None)[0].iter().sum::<f64>()
    });
}

// ---- f32 and bf16 forward parity vs f64 ----------------------------------------------------------------
// Tolerances: |got − ref| ≤ atol + rtol·|ref| from error bounds of the arithmetic, with ~2x margin:
// - elementwise (encoder, residual: 1 rounding; GELU: ~8 roundings incl. tanh's ≤ 1-ulp error) on O(1)
//   values: 16·u·(1 + |ref|);
// - reductions over K terms (matmul, LN statistics, softmax sums): Higham's γ_K = K·u relative to the sum of
//   absolute terms (for matmul exactly |inp|·|W|ᵀ + |bias|, computed in f64);
// - bf16 mode: one extra rounding of each stored output (≤ 2⁻⁹·|ref|) on top of f32; for matmul also the
//   rounding of both inputs: each product errs by ≤ 2·2⁻⁹, i.e. 2⁻⁸·(|inp|·|W|ᵀ).

fn tol_elem(r: f64) -> f64 {
    16.0 * U32 * (1.0 + r.abs())
}
fn tol_bf16(r: f64, f32_tol: f64) -> f64 {
    2.0 * U_BF16 * r.abs() + f32_tol
}

#[test]
fn encoder_forward_parity() {
    let mut rng = Rng::new(11);
    let (wte, wpe) = (randn(&mut rng, V * C, 1.0), randn(&mut rng, T * C, 1.0));
    let want = run_encoder::<f64>(false, &wte, &wpe);
    assert_close("encoder_forward f32", &run_encoder::<f32>(false, &wte, &wpe), &want, |_, r| tol_elem(r));
    let got = run_encoder::<f32>(true, &wte, &wpe);
    assert_bf16("encoder_forward bf16", &got);
    assert_close("encoder_forward bf16", &got, &want, |_, r| tol_bf16(r, tol_elem(r)));
}

#[test]
fn gelu_forward_parity() {
    let mut rng = Rng::new(12);
    let x = randn(&mut rng, 1001, 3.0);
    let want = run_gelu::<f64>(false, &x);
    let tol = |i: usize, r: f64| 16.0 * U32 * (1.0 + r.abs() + x[i].abs());
    assert_close("gelu_forward f32", &run_gelu::<f32>(false, &x), &want, tol);
    let got = run_gelu::<f32>(true, &x);
    assert_bf16("gelu_forward bf16", &got);
    assert_close("gelu_forward bf16", &got, &want, |i, r| tol_bf16(r, tol(i, r)));
}

#[test]
fn residual_forward_parity() {
    let mut rng = Rng::new(13);
    let (a, b) = (randn(&mut rng, 333, 1.0), randn(&mut rng, 333, 1.0));
    let want = run_residual::<f64>(false, &a, &b);
    assert_close("residual_forward f32", &run_residual::<f32>(false, &a, &b), &want, |_, r| tol_elem(r));
    let got = run_residual::<f32>(true, &a, &b);
    assert_bf16("residual_forward bf16", &got);
    assert_close("residual_forward bf16", &got, &want, |_, r| tol_bf16(r, tol_elem(r)));
}

#[test]
fn layernorm_forward_parity() {
    let mut rng = Rng::new(14);
    let (x, w, bias) = (randn(&mut rng, N * C, 1.0), randn(&mut rng, C, 1.0), randn(&mut rng, C, 1.0));
    let [out, mean, rstd] = run_layernorm::<f64>(false, &x, &w, &bias, N, C);
    // mean/var are sums of C terms: γ_C relative error, carried through (x − mean)·rstd·w + b.
    let k = (C + 8) as f64 * U32;
    let tol_out = |i: usize, r: f64| 4.0 * k * (1.0 + r.abs() + w[i % C].abs() * 4.0);
    for bf16 in [false, true] {
        let [o, m, s] = run_layernorm::<f32>(bf16, &x, &w, &bias, N, C);
        let tag = if bf16 { "bf16" } else { "f32" };
        assert_close(&format!("layernorm_forward mean {tag}"), &m, &mean, |_, r| 4.0 * k * (1.0 + r.abs()));
        assert_close(&format!("layernorm_forward rstd {tag}"), &s, &rstd, |_, r| 4.0 * k * r.abs());
        if bf16 {
            assert_bf16("layernorm_forward bf16", &o);
            assert_close("layernorm_forward out bf16", &o, &out, |i, r| tol_bf16(r, tol_out(i, r)));
        } else {
            assert_close("layernorm_forward out f32", &o, &out, tol_out);
        }
    }
}

#[test]
fn matmul_forward_parity() {
    let mut rng = Rng::new(15);
    let (x, w, bias) = (randn(&mut rng, N * C, 1.0), randn(&mut rng, OC * C, 1.0), randn(&mut rng, OC, 1.0));
    for bias in [bias, vec![]] {
        let want = run_matmul::<f64>(false, &x, &w, &bias, N, C, OC);
        let absref = run_matmul::<f64>(false, &abs(&x), &abs(&w), &abs(&bias), N, C, OC);
        let gamma = (C + 2) as f64 * U32;
        let tol = |i: usize, _| gamma * absref[i];
        assert_close("matmul_forward f32", &run_matmul::<f32>(false, &x, &w, &bias, N, C, OC), &want, tol);
        let got = run_matmul::<f32>(true, &x, &w, &bias, N, C, OC);
        assert_bf16("matmul_forward bf16", &got);
        let tol_b = |i: usize, r: f64| 1.01 * 2.0 * U_BF16 * absref[i] + tol_bf16(r, tol(i, r));
        assert_close("matmul_forward bf16", &got, &want, tol_b);
    }
}

#[test]
fn matmul_backward_parity() {
    let mut rng = Rng::new(16);
    let (x, w, g) = (randn(&mut rng, N * C, 1.0), randn(&mut rng, OC * C, 1.0), randn(&mut rng, N * OC, 1.0));
    let run = |bf16: bool, x: &[f64], w: &[f64], g: &[f64]| -> [Vec<f64>; 3] {
        let (mut dx, mut dw, mut db) = (vec![0f32; N * C], vec![0f32; OC * C], vec![0f32; OC]);
        let (x, w, g) = (cast::<f32>(x), cast::<f32>(w), cast::<f32>(g));
        be::<f32>(bf16).matmul_backward(Some(&mut dx), &mut dw, Some(&mut db), &g, &x, &w, N, C, OC);
        [back(&dx), back(&dw), back(&db)]
    };
    let mut want = [vec![0.0; N * C], vec![0.0; OC * C], vec![0.0; OC]];
    let [a, b, c] = &mut want;
    be::<f64>(false).matmul_backward(Some(a), b, Some(c), &g, &x, &w, N, C, OC);
    let mut absref = [vec![0.0; N * C], vec![0.0; OC * C], vec![0.0; OC]];
    let [a, b, c] = &mut absref;
    be::<f64>(false).matmul_backward(Some(a), b, Some(c), &abs(&g), &abs(&x), &abs(&w), N, C, OC);
    let names = ["dinp", "dweight", "dbias"];
    let gamma = (N.max(OC) + 2) as f64 * U32;
    for (bf16, rel) in [(false, gamma), (true, gamma + 1.01 * 2.0 * U_BF16)] {
        for (k, got) in run(bf16, &x, &w, &g).iter().enumerate() {
            let op = format!("matmul_backward {} bf16={bf16}", names[k]);
            assert_close(&op, got, &want[k], |i, _| rel * absref[k][i]);
        }
    }
}

#[test]
fn attention_forward_parity() {
    let mut rng = Rng::new(17);
    let qkv = randn(&mut rng, N * 3 * C, 1.0);
    let [out, att] = run_attention::<f64>(false, &qkv, B, T);
    // q·k: γ_hs on O(1) terms, carried into exp as a relative error; softmax sum and att·v: γ_T.
    let hs = C / NH;
    let vmax = qkv.iter().fold(0.0f64, |m, v| m.max(v.abs()));
    let k = 4.0 * (4 * hs + 2 * T + 8) as f64 * U32;
    for bf16 in [false, true] {
        let [o, a] = run_attention::<f32>(bf16, &qkv, B, T);
        assert_close(&format!("attention_forward att bf16={bf16}"), &a, &att, |_, r| k * r.abs() + U32);
        if bf16 {
            assert_bf16("attention_forward bf16", &o);
            assert_close("attention_forward out bf16", &o, &out, |_, r| tol_bf16(r, k * vmax));
        } else {
            assert_close("attention_forward out f32", &o, &out, |_, _| k * vmax);
        }
    }
}

#[test]
fn crossentropy_forward_parity() {
    let mut rng = Rng::new(18);
    let logits = randn(&mut rng, N * V, 3.0);
    let targets: Vec<u32> = (0..N as u32).map(|i| (i * 5 + 1) % V as u32).collect();
    let s = 0.25;
    let [l64, g64] = run_crossentropy::<f64>(&logits, &targets, Some(s));
    let [l32, g32] = run_crossentropy::<f32>(&logits, &targets, Some(s));
    // loss = ln Σ exp(l − max) − (l_t − max): a few roundings of terms bounded by |loss|.
    assert_close("crossentropy_forward losses f32", &l32, &l64, |_, r| 8.0 * U32 * (1.0 + r.abs()));
    // s·p: exp, 1/sum and two products (≤ 4u relative); target element subtracts s.
    assert_close("crossentropy_forward dlogits f32", &g32, &g64, |_, r| 8.0 * U32 * (r.abs() + s));
}

#[test]
fn adamw_step_parity() {
    let mut rng = Rng::new(19);
    let n = 1000;
    let (p, g) = (randn(&mut rng, n, 1.0), randn(&mut rng, n, 0.1));
    let m = randn(&mut rng, n, 0.01);
    let v: Vec<f64> = randn(&mut rng, n, 0.01).iter().map(|x| (x * x) as f32 as f64).collect();
    let hp = adam_hp(0.1, 5);
    let run = |s32: bool| -> [Vec<f64>; 3] {
        if s32 {
            let (mut p, mut m, mut v) = (cast::<f32>(&p), cast::<f32>(&m), cast::<f32>(&v));
            be::<f32>(false).adamw_step(&mut p, &mut m, &mut v, &cast(&g), hp);
            [back(&p), back(&m), back(&v)]
        } else {
            let (mut p, mut m, mut v) = (p.clone(), m.clone(), v.clone());
            be::<f64>(false).adamw_step(&mut p, &mut m, &mut v, &g, hp);
            [p, m, v]
        }
    };
    let ([p64, m64, v64], [p32, m32, v32]) = (run(false), run(true));
    // m, v: two products and a sum (+ rounded coefficients): 8u relative to the magnitudes involved.
    assert_close("adamw_step m f32", &m32, &m64, |i, r| 8.0 * U32 * (r.abs() + m[i].abs() + g[i].abs()));
    assert_close("adamw_step v f32", &v32, &v64, |i, r| 8.0 * U32 * (r.abs() + v[i] + g[i] * g[i]));
    // p: ~10 roundings in u = m̂/(√v̂+ε) (relative), then p·decay − lr·u.
    let u: Vec<f64> = (0..n).map(|i| (p[i] * (1.0 - hp.lr * hp.weight_decay) - p64[i]) / hp.lr).collect();
    assert_close("adamw_step p f32", &p32, &p64, |i, r| 16.0 * U32 * (r.abs() + p[i].abs() + hp.lr * u[i].abs()));
}

fn adam_hp(weight_decay: f64, step: i32) -> AdamStep {
    let (beta1, beta2) = (0.9, 0.95);
    AdamStep {
        lr: 1e-3,
        beta1,
        beta2,
        eps: 1e-8,
        weight_decay,
        bias_correction1: 1.0 - beta1.powi(step),
        bias_correction2: 1.0 - beta2.powi(step),
    }
}

#[test]
fn sum_squares_parity() {
    // f32 values are exact in f64, x² of an f32 is exact in f64, and the summation order is the same.
    let mut rng = Rng::new(20);
    let x = randn(&mut rng, 200_003, 1.0);
    let (a, b) = (be::<f64>(false).sum_squares(&x), be::<f32>(false).sum_squares(&cast::<f32>(&x)));
    assert_eq!(a.to_bits(), b.to_bits(), "sum_squares: f32 {b} vs f64 {a}");
    let naive: f64 = x.iter().map(|v| v * v).sum();
    assert!((a - naive).abs() <= 1e-12 * naive, "sum_squares: {a} vs naive {naive}");
}

// ---- known values ----------------------------------------------------------------------------------------

#[test]
fn layernorm_forward_normalizes() {
    let mut rng = Rng::new(21);
    let x: Vec<f64> = randn(&mut rng, N * C, 3.0).iter().map(|v| v + 2.0).collect();
    let [out, mean, _] = run_layernorm::<f64>(false, &x, &vec![1.0; C], &vec![0.0; C], N, C);
    for row in 0..N {
        let o = &out[row * C..(row + 1) * C];
        let xs = &x[row * C..(row + 1) * C];
        let mu = xs.iter().sum::<f64>() / C as f64;
        let var = xs.iter().map(|v| (v - mu) * (v - mu)).sum::<f64>() / C as f64;
        let (om, ov) = (o.iter().sum::<f64>() / C as f64, o.iter().map(|v| v * v).sum::<f64>() / C as f64);
        assert!(om.abs() < 1e-14, "layernorm_forward: row {row} mean {om:e}");
        let want_var = var / (var + 1e-5); // 1 up to eps = 1e-5
        assert!((ov - want_var).abs() < 1e-13, "layernorm_forward: row {row} var {ov} vs {want_var}");
        assert!((mean[row] - mu).abs() < 1e-14, "layernorm_forward: row {row} saved mean {} vs {mu}", mean[row]);
    }
}

/// bf16 matmul = f32 matmul of bf16-rounded copies (output rounded), bit for bit; the weights are untouched.
#[test]
fn matmul_bf16_rounds_inputs() {
    let mut rng = Rng::new(25);
    let (x, w) = (cast::<f32>(&randn(&mut rng, N * C, 1.0)), cast::<f32>(&randn(&mut rng, OC * C, 1.0)));
    let (w0, g, bias) = (w.clone(), cast::<f32>(&randn(&mut rng, N * OC, 1.0)), cast::<f32>(&randn(&mut rng, OC, 1.0)));
    let r = |v: &[f32]| v.iter().map(|x| x.round_bf16()).collect::<Vec<f32>>();
    let (b16, b32) = (be::<f32>(true), be::<f32>(false));
    let (mut o16, mut o32) = (vec![0f32; N * OC], vec![0f32; N * OC]);
    b16.matmul_forward(&mut o16, &x, &w, Some(&bias), N, C, OC);
    b32.matmul_forward(&mut o32, &r(&x), &r(&w), Some(&bias), N, C, OC);
    assert!(o16 == r(&o32), "matmul_forward bf16 ≠ rounded f32 matmul of rounded inputs");
    let grads = |be: &CpuBackend<f32>, g: &[f32], x: &[f32], w: &[f32]| {
        let (mut dx, mut dw, mut db) = (vec![0.5f32; N * C], vec![0.5f32; OC * C], vec![0.5f32; OC]);
        be.matmul_backward(Some(&mut dx), &mut dw, Some(&mut db), g, x, w, N, C, OC);
        [dx, dw, db]
    };
    let want = grads(&b32, &r(&g), &r(&x), &r(&w));
    assert!(grads(&b16, &g, &x, &w) == want, "matmul_backward bf16 ≠ f32 backward of rounded inputs");
    assert!(w == w0 && w.iter().any(|v| v.round_bf16() != *v), "matmul bf16: weights were modified");
}

#[test]
fn attention_forward_t1_returns_v() {
    let mut rng = Rng::new(22);
    let qkv = randn(&mut rng, B * 3 * C, 1.0);
    let [out, att] = run_attention::<f64>(false, &qkv, B, 1);
    for bi in 0..B {
        let v = &qkv[bi * 3 * C + 2 * C..(bi + 1) * 3 * C];
        assert_eq!(&out[bi * C..(bi + 1) * C], v, "attention_forward T=1: batch {bi} out ≠ v");
    }
    assert!(att.iter().all(|&a| a == 1.0), "attention_forward T=1: att {att:?}");
}

#[test]
fn attention_forward_softmax_rows() {
    let mut rng = Rng::new(23);
    let qkv = randn(&mut rng, N * 3 * C, 2.0);
    let [_, att] = run_attention::<f64>(false, &qkv, B, T);
    for (r, row) in att.chunks(T).enumerate() {
        let tq = r % T;
        let s: f64 = row.iter().sum();
        assert!((s - 1.0).abs() < 1e-14, "attention_forward: row {r} sums to {s}");
        for (t2, &a) in row.iter().enumerate() {
            assert!(if t2 > tq { a == 0.0 } else { a > 0.0 }, "attention_forward: att[{r},{t2}] = {a}");
        }
    }
}

/// C = op(A)·op(B) (+ C0 when accumulating), naive triple loop in f64.
#[allow(clippy::too_many_arguments)]
fn naive_gemm(c0: &[f64], a: &[f64], b: &[f64], m: usize, n: usize, k: usize, ta: bool, tb: bool, acc: bool) -> Vec<f64> {
    let mut c = vec![0.0; m * n];
    for i in 0..m {
        for j in 0..n {
            let mut s = if acc { c0[i * n + j] } else { 0.0 };
            for p in 0..k {
                let x = if ta { a[p * m + i] } else { a[i * k + p] };
                let y = if tb { b[j * k + p] } else { b[p * n + j] };
                s += x * y;
            }
            c[i * n + j] = s;
        }
    }
    c
}

fn check_gemm<S: Scalar>(m: usize, n: usize, k: usize, threads: usize, rel: f64) {
    let mut rng = Rng::new(24);
    let (a, b, c0) = (randn(&mut rng, m * k, 1.0), randn(&mut rng, k * n, 1.0), randn(&mut rng, m * n, 1.0));
    for ta in [false, true] {
        for tb in [false, true] {
            for acc in [false, true] {
                let mut c = cast::<S>(&c0);
                S::gemm(&mut c, &cast(&a), &cast(&b), m, n, k, ta, tb, acc, threads);
                let want = naive_gemm(&c0, &a, &b, m, n, k, ta, tb, acc);
                let absref = naive_gemm(&abs(&c0), &abs(&a), &abs(&b), m, n, k, ta, tb, acc);
                let op = format!("gemm {} {m}x{n}x{k} ta={ta} tb={tb} acc={acc} threads={threads}", S::NAME);
                assert_close(&op, &back(&c), &want, |i, _| rel * absref[i]);
            }
        }
    }
}

#[test]
fn gemm_matches_naive() {
    for threads in [1, 2] {
        for (m, n, k) in [(7, 5, 9), (67, 131, 45)] {
            check_gemm::<f64>(m, n, k, threads, (k + 2) as f64 * f64::EPSILON / 2.0);
            check_gemm::<f32>(m, n, k, threads, (k + 2) as f64 * U32);
        }
    }
}

#[test]
fn adamw_step_known_value() {
    // Hand-computed (40-digit decimal arithmetic) for t = 3, β = (0.9, 0.95), lr 0.01, λ 0.1.
    let hp = AdamStep {
        lr: 0.01,
        beta1: 0.9,
        beta2: 0.95,
        eps: 1e-8,
        weight_decay: 0.1,
        bias_correction1: 1.0 - 0.9f64.powi(3),
        bias_correction2: 1.0 - 0.95f64.powi(3),
    };
    let (mut p, mut m, mut v) = ([0.5], [0.02], [0.003]);
    be::<f64>(false).adamw_step(&mut p, &mut m, &mut v, &[-0.25], hp);
    let want = [(p[0], 0.500_761_994_905_790_461_6), (m[0], -0.007), (v[0], 0.005975)];
    for (k, (got, want)) in want.into_iter().enumerate() {
        assert!((got - want).abs() <= 1e-15, "adamw_step known value [{k}]: got {got:.17} want {want:.17}");
    }
    // The public per-element function is the one the step uses.
    let (mut p2, mut m2, mut v2) = (0.5, 0.02, 0.003);
    cpu::adamw_update(&mut p2, &mut m2, &mut v2, -0.25, &cpu::AdamCoeffs::new(&hp));
    assert_eq!((p2, m2, v2), (p[0], m[0], v[0]), "adamw_update differs from adamw_step");
}

#[test]
fn sgd_step_known_value() {
    let (mut p, mut buf) = ([0.5], [0.3]);
    be::<f64>(false).sgd_step(&mut p, &mut buf, &[-0.25], 0.01, 0.9, 0.1);
    // buf = 0.9·0.3 − 0.25 = 0.02;  p = 0.5·(1 − 0.001) − 0.01·0.02 = 0.4993
    assert!((buf[0] - 0.02).abs() < 1e-16, "sgd_step buf: got {} want 0.02", buf[0]);
    assert!((p[0] - 0.4993).abs() < 1e-15, "sgd_step p: got {} want 0.4993", p[0]);
}

#[test]
fn fill_scale_add_inplace() {
    let be = be::<f32>(false);
    let mut x = vec![0f32; 70_001];
    be.fill(&mut x, 1.5);
    be.scale(&mut x, -2.0);
    be.add_inplace(&mut x, &vec![0.5; 70_001]);
    assert!(x.iter().all(|&v| v == -2.5), "fill/scale/add_inplace: got {:?}", &x[..4]);
}

#[test]
fn views_mut_any_order() {
    let be = be::<f64>(false);
    let mut buf: Vec<f64> = (0..10).map(|i| i as f64).collect();
    let [a, b, e, c] = be.views_mut(&mut buf, [6..9, 0..2, 4..4, 2..5]);
    assert_eq!((a.to_vec(), b.to_vec(), e.len(), c.to_vec()), (vec![6.0, 7.0, 8.0], vec![0.0, 1.0], 0, vec![2.0, 3.0, 4.0]));
    a[0] = -1.0;
    c[2] = -2.0;
    assert_eq!((buf[6], buf[4]), (-1.0, -2.0), "views_mut: writes did not reach the buffer");
}

#[test]
#[should_panic(expected = "overlap")]
fn views_mut_overlap_panics() {
    let be = be::<f64>(false);
    let mut buf = vec![0.0; 10];
    let _ = be.views_mut(&mut buf, [5..8, 0..3, 7..9]);
}

#[test]
fn backend_name() {
    assert_eq!(CpuBackend::<f32>::new(2, false).name(), "cpu f32 (2 threads)");
    assert_eq!(CpuBackend::<f32>::new(2, true).name(), "cpu f32+bf16 (2 threads)");
    assert!(CpuBackend::<f64>::new(1, true).bf16());
}

// ---- determinism ------------------------------------------------------------------------------------------

fn pool(n: usize) -> rayon::ThreadPool {
    rayon::ThreadPoolBuilder::new().num_threads(n).build().expect("rayon pool")
}

#[test]
fn sum_squares_thread_independent() {
    let mut rng = Rng::new(30);
    let x = cast::<f32>(&randn(&mut rng, 1_000_003, 1.0));
    let [s1, s2] = [1, 2].map(|n| pool(n).install(|| be::<f32>(false).sum_squares(&x)));
    assert_eq!(s1.to_bits(), s2.to_bits(), "sum_squares: 1 thread {s1} vs 2 threads {s2}");
}

/// Every reduction outside the GEMMs gives the same bits on 1 and 2 rayon threads (GEMMs sequential here),
/// on shapes large enough to span several reduction blocks.
#[test]
fn backward_ops_thread_independent() {
    let (n, c, oc, v, b, t) = (300, 24, 600, 700, 3, 100);
    let mut rng = Rng::new(31);
    let x = cast::<f32>(&randn(&mut rng, n * c, 1.0));
    let w = cast::<f32>(&randn(&mut rng, oc * c, 1.0));
    let g = cast::<f32>(&randn(&mut rng, n * oc, 1.0));
    let gc = cast::<f32>(&randn(&mut rng, n * c, 1.0));
    let qkv = cast::<f32>(&randn(&mut rng, n * 3 * c, 1.0));
    let tokens: Vec<u32> = (0..n as u32).map(|i| (i * i * 31 + 7) % 9 * 77 % v as u32).collect();
    let run = || -> Vec<Vec<f32>> {
        let be = be::<f32>(false);
        let (mut out, mut mean, mut rstd) = (vec![0f32; n * c], vec![0f32; n], vec![0f32; n]);
        be.layernorm_forward(&mut out, &mut mean, &mut rstd, &x, &w[..c], Some(&w[c..2 * c]), n, c);
        let (mut dx, mut dw, mut db) = (vec![0f32; n * c], vec![0f32; c], vec![0f32; c]);
        be.layernorm_backward(&mut dx, &mut dw, Some(&mut db), &gc, &x, &w[..c], &mean, &rstd, n, c);
        let (mut dwm, mut dbm) = (vec![0f32; oc * c], vec![0f32; oc]);
        be.matmul_backward(None, &mut dwm, Some(&mut dbm), &g, &x, &w, n, c, oc);
        let (mut dwte, mut dwpe) = (vec![0f32; v * c], vec![0f32; t * c]);
        be.encoder_backward(&mut dwte, &mut dwpe, &gc, &tokens, b, t, c);
        let (mut ao, mut att) = (vec![0f32; n * c], vec![0f32; b * NH * t * t]);
        be.attention_forward(&mut ao, &mut att, &qkv, b, t, c, NH);
        let (mut dqkv, mut scratch) = (vec![0f32; n * 3 * c], vec![0f32; b * NH * t * t]);
        be.attention_backward(&mut dqkv, &mut scratch, &gc, &qkv, &att, b, t, c, NH);
        vec![out, dx, dw, db, dwm, dbm, dwte, dwpe, ao, att, dqkv]
    };
    let [r1, r2] = [1, 2].map(|k| pool(k).install(run));
    for (i, (a, b)) in r1.iter().zip(&r2).enumerate() {
        let bits = |x: &[f32]| x.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
        assert!(bits(a) == bits(b), "output #{i} differs between 1 and 2 threads");
    }
}

#[test]
fn gemm_deterministic_run_to_run() {
    let mut rng = Rng::new(32);
    let (m, n, k) = (256, 300, 200);
    let (a, b) = (cast::<f32>(&randn(&mut rng, m * k, 1.0)), cast::<f32>(&randn(&mut rng, n * k, 1.0)));
    let p = pool(2);
    let run = || {
        let mut c = vec![0f32; m * n];
        p.install(|| f32::gemm(&mut c, &a, &b, m, n, k, false, true, false, 2));
        c.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
    };
    let first = run();
    for rep in 0..3 {
        assert!(run() == first, "gemm: run {rep} differs from the first (2 threads)");
    }
}
