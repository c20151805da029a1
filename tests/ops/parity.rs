//! f32 and bf16-mode forward ops vs the f64 reference, with tolerances derived from the precision used.

use super::*;

// Tolerances: |got − ref| ≤ atol + rtol·|ref| from error bounds of the arithmetic, with ~2x margin:
// - elementwise (encoder, residual: 1 rounding; GELU: ~8 roundings incl. exp's ≤ 1-ulp error) on O(1)
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
    let (wte, wpe) = (
        randn_f32(&mut rng, V * C, 1.0),
        randn_f32(&mut rng, T * C, 1.0),
    );
    let want = run_encoder::<f64>(false, &wte, &wpe);
    assert_close_with(
        "encoder_forward f32",
        &run_encoder::<f32>(false, &wte, &wpe),
        &want,
        |_, r| tol_elem(r),
    );
    let got = run_encoder::<f32>(true, &wte, &wpe);
    assert_bf16("encoder_forward bf16", &got);
    assert_close_with("encoder_forward bf16", &got, &want, |_, r| {
        tol_bf16(r, tol_elem(r))
    });
}

#[test]
fn gelu_forward_parity() {
    let mut rng = Rng::new(12);
    let x = randn_f32(&mut rng, 1001, 3.0);
    let want = run_gelu::<f64>(false, &x);
    let tol = |i: usize, r: f64| 16.0 * U32 * (1.0 + r.abs() + x[i].abs());
    assert_close_with("gelu_forward f32", &run_gelu::<f32>(false, &x), &want, tol);
    let got = run_gelu::<f32>(true, &x);
    assert_bf16("gelu_forward bf16", &got);
    assert_close_with("gelu_forward bf16", &got, &want, |i, r| {
        tol_bf16(r, tol(i, r))
    });
}

#[test]
fn gelu_extreme_inputs() {
    let x = [-1e4f32, -1e3, -60.0, -9.5, 0.0, 9.5, 60.0, 1e3];
    let (mut out, mut d) = ([0f32; 8], [0f32; 8]);
    be::<f32>(false).gelu_forward(&mut out, &x).unwrap();
    be::<f32>(false)
        .gelu_backward(&mut d, &x, &[1.0; 8])
        .unwrap();
    for i in 0..x.len() {
        let (want, dwant) = if x[i] < 0.0 {
            (0.0, 0.0)
        } else if x[i] == 0.0 {
            (0.0, 0.5)
        } else {
            (x[i], 1.0)
        };
        assert!(
            (out[i] - want).abs() <= 1e-6 * x[i].abs(),
            "gelu_forward({}) = {} want {want}",
            x[i],
            out[i]
        );
        assert!(
            (d[i] - dwant).abs() <= 1e-6,
            "gelu_backward({}) = {} want {dwant}",
            x[i],
            d[i]
        );
    }
}

#[test]
fn residual_forward_parity() {
    let mut rng = Rng::new(13);
    let (a, b) = (randn_f32(&mut rng, 333, 1.0), randn_f32(&mut rng, 333, 1.0));
    let want = run_residual::<f64>(false, &a, &b);
    assert_close_with(
        "residual_forward f32",
        &run_residual::<f32>(false, &a, &b),
        &want,
        |_, r| tol_elem(r),
    );
    let got = run_residual::<f32>(true, &a, &b);
    assert_bf16("residual_forward bf16", &got);
    assert_close_with("residual_forward bf16", &got, &want, |_, r| {
        tol_bf16(r, tol_elem(r))
    });
}

#[test]
fn layernorm_forward_parity() {
    let mut rng = Rng::new(14);
    let (x, w, bias) = (
        randn_f32(&mut rng, N * C, 1.0),
        randn_f32(&mut rng, C, 1.0),
        randn_f32(&mut rng, C, 1.0),
    );
    let [out, mean, rstd] = run_layernorm::<f64>(false, &x, &w, &bias, N, C);
    // mean/var are sums of C terms: γ_C relative error, carried through (x − mean)·rstd·w + b.
    let k = (C + 8) as f64 * U32;
    let tol_out = |i: usize, r: f64| 4.0 * k * (1.0 + r.abs() + w[i % C].abs() * 4.0);
    for bf16 in [false, true] {
        let [o, m, s] = run_layernorm::<f32>(bf16, &x, &w, &bias, N, C);
        let tag = if bf16 { "bf16" } else { "f32" };
        assert_close_with(
            &format!("layernorm_forward mean {tag}"),
            &m,
            &mean,
            |_, r| 4.0 * k * (1.0 + r.abs()),
        );
        assert_close_with(
            &format!("layernorm_forward rstd {tag}"),
            &s,
            &rstd,
            |_, r| 4.0 * k * r.abs(),
        );
        if bf16 {
            assert_bf16("layernorm_forward bf16", &o);
            assert_close_with("layernorm_forward out bf16", &o, &out, |i, r| {
                tol_bf16(r, tol_out(i, r))
            });
        } else {
            assert_close_with("layernorm_forward out f32", &o, &out, tol_out);
        }
    }
}

#[test]
fn matmul_forward_parity() {
    let mut rng = Rng::new(15);
    let (x, w, bias) = (
        randn_f32(&mut rng, N * C, 1.0),
        randn_f32(&mut rng, OC * C, 1.0),
        randn_f32(&mut rng, OC, 1.0),
    );
    for bias in [bias, vec![]] {
        let want = run_matmul::<f64>(false, &x, &w, &bias, N, C, OC);
        let absref = run_matmul::<f64>(false, &abs(&x), &abs(&w), &abs(&bias), N, C, OC);
        let gamma = (C + 2) as f64 * U32;
        let tol = |i: usize, _| gamma * absref[i];
        assert_close_with(
            "matmul_forward f32",
            &run_matmul::<f32>(false, &x, &w, &bias, N, C, OC),
            &want,
            tol,
        );
        let got = run_matmul::<f32>(true, &x, &w, &bias, N, C, OC);
        assert_bf16("matmul_forward bf16", &got);
        let tol_b = |i: usize, r: f64| 1.01 * 2.0 * U_BF16 * absref[i] + tol_bf16(r, tol(i, r));
        assert_close_with("matmul_forward bf16", &got, &want, tol_b);
    }
}

#[test]
fn matmul_backward_parity() {
    let mut rng = Rng::new(16);
    let (x, w, g) = (
        randn_f32(&mut rng, N * C, 1.0),
        randn_f32(&mut rng, OC * C, 1.0),
        randn_f32(&mut rng, N * OC, 1.0),
    );
    let run = |bf16: bool, x: &[f64], w: &[f64], g: &[f64]| -> [Vec<f64>; 3] {
        let (mut dx, mut dw, mut db) = (vec![0f32; N * C], vec![0f32; OC * C], vec![0f32; OC]);
        let (x, w, g) = (cast::<f32>(x), cast::<f32>(w), cast::<f32>(g));
        be::<f32>(bf16)
            .matmul_backward(Some(&mut dx), &mut dw, Some(&mut db), &g, &x, &w, N, C, OC)
            .unwrap();
        [back(&dx), back(&dw), back(&db)]
    };
    let mut want = [vec![0.0; N * C], vec![0.0; OC * C], vec![0.0; OC]];
    let [a, b, c] = &mut want;
    be::<f64>(false)
        .matmul_backward(Some(a), b, Some(c), &g, &x, &w, N, C, OC)
        .unwrap();
    let mut absref = [vec![0.0; N * C], vec![0.0; OC * C], vec![0.0; OC]];
    let [a, b, c] = &mut absref;
    be::<f64>(false)
        .matmul_backward(Some(a), b, Some(c), &abs(&g), &abs(&x), &abs(&w), N, C, OC)
        .unwrap();
    let names = ["dinp", "dweight", "dbias"];
    let gamma = (N.max(OC) + 2) as f64 * U32;
    for (bf16, rel) in [(false, gamma), (true, gamma + 1.01 * 2.0 * U_BF16)] {
        for (k, got) in run(bf16, &x, &w, &g).iter().enumerate() {
            let op = format!("matmul_backward {} bf16={bf16}", names[k]);
            assert_close_with(&op, got, &want[k], |i, _| rel * absref[k][i]);
        }
    }
}

#[test]
fn attention_forward_parity() {
    let mut rng = Rng::new(17);
    let qkv = randn_f32(&mut rng, N * 3 * C, 1.0);
    let [out, att] = run_attention::<f64>(false, &qkv, B, T);
    // q·k: γ_hs on O(1) terms, carried into exp as a relative error; softmax sum and att·v: γ_T.
    let hs = C / NH;
    let vmax = qkv.iter().fold(0.0f64, |m, v| m.max(v.abs()));
    let k = 4.0 * (4 * hs + 2 * T + 8) as f64 * U32;
    for bf16 in [false, true] {
        let [o, a] = run_attention::<f32>(bf16, &qkv, B, T);
        assert_close_with(
            &format!("attention_forward att bf16={bf16}"),
            &a,
            &att,
            |_, r| k * r.abs() + U32,
        );
        if bf16 {
            assert_bf16("attention_forward bf16", &o);
            assert_close_with("attention_forward out bf16", &o, &out, |_, r| {
                tol_bf16(r, k * vmax)
            });
        } else {
            assert_close_with("attention_forward out f32", &o, &out, |_, _| k * vmax);
        }
    }
}

#[test]
fn crossentropy_forward_parity() {
    let mut rng = Rng::new(18);
    let logits = randn_f32(&mut rng, N * V, 3.0);
    let targets: Vec<u32> = (0..N as u32).map(|i| (i * 5 + 1) % V as u32).collect();
    let s = 0.25;
    let [l64, g64] = run_crossentropy::<f64>(&logits, &targets, Some(s));
    let [l32, g32] = run_crossentropy::<f32>(&logits, &targets, Some(s));
    // loss = ln Σ exp(l − max) − (l_t − max): a few roundings of terms bounded by |loss|.
    assert_close_with("crossentropy_forward losses f32", &l32, &l64, |_, r| {
        8.0 * U32 * (1.0 + r.abs())
    });
    // s·p: exp, 1/sum and two products (≤ 4u relative); target element subtracts s.
    assert_close_with("crossentropy_forward dlogits f32", &g32, &g64, |_, r| {
        8.0 * U32 * (r.abs() + s)
    });
}

#[test]
fn adamw_step_parity() {
    let mut rng = Rng::new(19);
    let n = 1000;
    let (p, g) = (randn_f32(&mut rng, n, 1.0), randn_f32(&mut rng, n, 0.1));
    let m = randn_f32(&mut rng, n, 0.01);
    let v: Vec<f64> = randn_f32(&mut rng, n, 0.01)
        .iter()
        .map(|x| (x * x) as f32 as f64)
        .collect();
    let hp = adam_hp(0.1, 5);
    let run = |s32: bool| -> [Vec<f64>; 3] {
        if s32 {
            let (mut p, mut m, mut v) = (cast::<f32>(&p), cast::<f32>(&m), cast::<f32>(&v));
            be::<f32>(false)
                .adamw_step(&mut p, &mut m, &mut v, &cast(&g), hp)
                .unwrap();
            [back(&p), back(&m), back(&v)]
        } else {
            let (mut p, mut m, mut v) = (p.clone(), m.clone(), v.clone());
            be::<f64>(false)
                .adamw_step(&mut p, &mut m, &mut v, &g, hp)
                .unwrap();
            [p, m, v]
        }
    };
    let ([p64, m64, v64], [p32, m32, v32]) = (run(false), run(true));
    // m, v: two products and a sum (+ rounded coefficients): 8u relative to the magnitudes involved.
    assert_close_with("adamw_step m f32", &m32, &m64, |i, r| {
        8.0 * U32 * (r.abs() + m[i].abs() + g[i].abs())
    });
    assert_close_with("adamw_step v f32", &v32, &v64, |i, r| {
        8.0 * U32 * (r.abs() + v[i] + g[i] * g[i])
    });
    // p: ~10 roundings in u = m̂/(√v̂+ε) (relative), then p·decay − lr·u.
    let u: Vec<f64> = (0..n)
        .map(|i| (p[i] * (1.0 - hp.lr * hp.weight_decay) - p64[i]) / hp.lr)
        .collect();
    assert_close_with("adamw_step p f32", &p32, &p64, |i, r| {
        16.0 * U32 * (r.abs() + p[i].abs() + hp.lr * u[i].abs())
    });
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
    let x = randn_f32(&mut rng, 200_003, 1.0);
    let (a, b) = (
        be::<f64>(false).sum_squares(&x).unwrap(),
        be::<f32>(false).sum_squares(&cast::<f32>(&x)).unwrap(),
    );
    assert_eq!(a.to_bits(), b.to_bits(), "sum_squares: f32 {b} vs f64 {a}");
    let naive: f64 = x.iter().map(|v| v * v).sum();
    assert!(
        (a - naive).abs() <= 1e-12 * naive,
        "sum_squares: {a} vs naive {naive}"
    );
}
