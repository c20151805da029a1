//! Known values: LayerNorm statistics, attention edge cases, GEMM vs a naive loop, optimizer steps by
//! hand, views_mut, backend name.

use super::*;

#[test]
fn layernorm_forward_normalizes() {
    let mut rng = Rng::new(21);
    let x: Vec<f64> = randn_f32(&mut rng, N * C, 3.0)
        .iter()
        .map(|v| v + 2.0)
        .collect();
    let [out, mean, _] = run_layernorm::<f64>(false, &x, &[1.0; C], &[0.0; C], N, C);
    for row in 0..N {
        let o = &out[row * C..(row + 1) * C];
        let xs = &x[row * C..(row + 1) * C];
        let mu = xs.iter().sum::<f64>() / C as f64;
        let var = xs.iter().map(|v| (v - mu) * (v - mu)).sum::<f64>() / C as f64;
        let (om, ov) = (
            o.iter().sum::<f64>() / C as f64,
            o.iter().map(|v| v * v).sum::<f64>() / C as f64,
        );
        assert!(om.abs() < 1e-14, "layernorm_forward: row {row} mean {om:e}");
        let want_var = var / (var + 1e-5); // 1 up to eps = 1e-5
        assert!(
            (ov - want_var).abs() < 1e-13,
            "layernorm_forward: row {row} var {ov} vs {want_var}"
        );
        assert!(
            (mean[row] - mu).abs() < 1e-14,
            "layernorm_forward: row {row} saved mean {} vs {mu}",
            mean[row]
        );
    }
}

/// bf16 matmul = f32 matmul of bf16-rounded copies (output rounded), bit for bit; the weights are untouched.
#[test]
fn matmul_bf16_rounds_inputs() {
    let mut rng = Rng::new(25);
    let (x, w) = (
        cast::<f32>(&randn_f32(&mut rng, N * C, 1.0)),
        cast::<f32>(&randn_f32(&mut rng, OC * C, 1.0)),
    );
    let (w0, g, bias) = (
        w.clone(),
        cast::<f32>(&randn_f32(&mut rng, N * OC, 1.0)),
        cast::<f32>(&randn_f32(&mut rng, OC, 1.0)),
    );
    let r = |v: &[f32]| v.iter().map(|x| x.round_bf16()).collect::<Vec<f32>>();
    let (b16, b32) = (be::<f32>(true), be::<f32>(false));
    let (mut o16, mut o32) = (vec![0f32; N * OC], vec![0f32; N * OC]);
    b16.matmul_forward(&mut o16, &x, &w, Some(&bias), N, C, OC)
        .unwrap();
    b32.matmul_forward(&mut o32, &r(&x), &r(&w), Some(&bias), N, C, OC)
        .unwrap();
    assert!(
        o16 == r(&o32),
        "matmul_forward bf16 ≠ rounded f32 matmul of rounded inputs"
    );
    let grads = |be: &CpuBackend<f32>, g: &[f32], x: &[f32], w: &[f32]| {
        let (mut dx, mut dw, mut db) =
            (vec![0.5f32; N * C], vec![0.5f32; OC * C], vec![0.5f32; OC]);
        be.matmul_backward(Some(&mut dx), &mut dw, Some(&mut db), g, x, w, N, C, OC)
            .unwrap();
        [dx, dw, db]
    };
    let want = grads(&b32, &r(&g), &r(&x), &r(&w));
    assert!(
        grads(&b16, &g, &x, &w) == want,
        "matmul_backward bf16 ≠ f32 backward of rounded inputs"
    );
    assert!(
        w == w0 && w.iter().any(|v| v.round_bf16() != *v),
        "matmul bf16: weights were modified"
    );
}

#[test]
fn attention_forward_t1_returns_v() {
    let mut rng = Rng::new(22);
    let qkv = randn_f32(&mut rng, B * 3 * C, 1.0);
    let [out, att] = run_attention::<f64>(false, &qkv, B, 1);
    for bi in 0..B {
        let v = &qkv[bi * 3 * C + 2 * C..(bi + 1) * 3 * C];
        assert_eq!(
            &out[bi * C..(bi + 1) * C],
            v,
            "attention_forward T=1: batch {bi} out ≠ v"
        );
    }
    assert!(
        att.iter().all(|&a| a == 1.0),
        "attention_forward T=1: att {att:?}"
    );
}

#[test]
fn attention_forward_softmax_rows() {
    let mut rng = Rng::new(23);
    let qkv = randn_f32(&mut rng, N * 3 * C, 2.0);
    let [_, att] = run_attention::<f64>(false, &qkv, B, T);
    for (r, row) in att.chunks(T).enumerate() {
        let tq = r % T;
        let s: f64 = row.iter().sum();
        assert!(
            (s - 1.0).abs() < 1e-14,
            "attention_forward: row {r} sums to {s}"
        );
        for (t2, &a) in row.iter().enumerate() {
            assert!(
                if t2 > tq { a == 0.0 } else { a > 0.0 },
                "attention_forward: att[{r},{t2}] = {a}"
            );
        }
    }
}

/// C = op(A)·op(B) (+ C0 when accumulating), naive triple loop in f64.
#[allow(clippy::too_many_arguments)]
fn naive_gemm(
    c0: &[f64],
    a: &[f64],
    b: &[f64],
    m: usize,
    n: usize,
    k: usize,
    ta: bool,
    tb: bool,
    acc: bool,
) -> Vec<f64> {
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
    let (a, b, c0) = (
        randn_f32(&mut rng, m * k, 1.0),
        randn_f32(&mut rng, k * n, 1.0),
        randn_f32(&mut rng, m * n, 1.0),
    );
    for ta in [false, true] {
        for tb in [false, true] {
            for acc in [false, true] {
                let mut c = cast::<S>(&c0);
                S::gemm(&mut c, &cast(&a), &cast(&b), m, n, k, ta, tb, acc, threads);
                let want = naive_gemm(&c0, &a, &b, m, n, k, ta, tb, acc);
                let absref = naive_gemm(&abs(&c0), &abs(&a), &abs(&b), m, n, k, ta, tb, acc);
                let op = format!(
                    "gemm {} {m}x{n}x{k} ta={ta} tb={tb} acc={acc} threads={threads}",
                    S::NAME
                );
                assert_close_with(&op, &back(&c), &want, |i, _| rel * absref[i]);
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
    be::<f64>(false)
        .adamw_step(&mut p, &mut m, &mut v, &[-0.25], hp)
        .unwrap();
    let want = [
        (p[0], 0.500_761_994_905_790_4),
        (m[0], -0.007),
        (v[0], 0.005975),
    ];
    for (k, (got, want)) in want.into_iter().enumerate() {
        assert!(
            (got - want).abs() <= 1e-15,
            "adamw_step known value [{k}]: got {got:.17} want {want:.17}"
        );
    }
    // The public per-element functions are the ones the step uses.
    let (mut p2, mut m2, mut v2) = (0.5, 0.02, 0.003);
    let k = rotadam::backend::AdamCoeffs::new(&hp);
    let u = cpu::adam_direction(&mut m2, &mut v2, -0.25, &k);
    p2 = cpu::decayed_step(p2, u, k.lr, k.decay);
    assert_eq!(
        (p2, m2, v2),
        (p[0], m[0], v[0]),
        "adam_direction + decayed_step differ from adamw_step"
    );
}

#[test]
fn sgd_step_known_value() {
    let (mut p, mut buf) = ([0.5], [0.3]);
    be::<f64>(false)
        .sgd_step(&mut p, &mut buf, &[-0.25], 0.01, 0.9, 0.1)
        .unwrap();
    // buf = 0.9·0.3 − 0.25 = 0.02;  p = 0.5·(1 − 0.001) − 0.01·0.02 = 0.4993
    assert!(
        (buf[0] - 0.02).abs() < 1e-16,
        "sgd_step buf: got {} want 0.02",
        buf[0]
    );
    assert!(
        (p[0] - 0.4993).abs() < 1e-15,
        "sgd_step p: got {} want 0.4993",
        p[0]
    );
}

#[test]
fn fill_scale_add_inplace() {
    let be = be::<f32>(false);
    let mut x = vec![0f32; 70_001];
    be.fill(&mut x, 1.5).unwrap();
    be.scale(&mut x, -2.0).unwrap();
    be.add_inplace(&mut x, &vec![0.5; 70_001]).unwrap();
    assert!(
        x.iter().all(|&v| v == -2.5),
        "fill/scale/add_inplace: got {:?}",
        &x[..4]
    );
}

#[test]
fn views_mut_any_order() {
    let be = be::<f64>(false);
    let mut buf: Vec<f64> = (0..10).map(|i| i as f64).collect();
    let [a, b, e, c] = be.views_mut(&mut buf, [6..9, 0..2, 4..4, 2..5]);
    assert_eq!(
        (a.to_vec(), b.to_vec(), e.len(), c.to_vec()),
        (vec![6.0, 7.0, 8.0], vec![0.0, 1.0], 0, vec![2.0, 3.0, 4.0])
    );
    a[0] = -1.0;
    c[2] = -2.0;
    assert_eq!(
        (buf[6], buf[4]),
        (-1.0, -2.0),
        "views_mut: writes did not reach the buffer"
    );
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
    assert_eq!(
        CpuBackend::<f32>::new(2, false).name(),
        "cpu f32 (2 threads)"
    );
    assert_eq!(
        CpuBackend::<f32>::new(2, true).name(),
        "cpu f32+bf16 (2 threads)"
    );
    assert!(CpuBackend::<f64>::new(1, true).bf16());
}
