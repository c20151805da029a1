//! Determinism: bit-identical results across rayon thread counts (non-GEMM reductions) and run to run
//! (GEMMs at a fixed thread count).

use super::*;

fn pool(n: usize) -> rayon::ThreadPool {
    rayon::ThreadPoolBuilder::new()
        .num_threads(n)
        .build()
        .expect("rayon pool")
}

#[test]
fn sum_squares_thread_independent() {
    let mut rng = Rng::new(30);
    let x = cast::<f32>(&randn_f32(&mut rng, 1_000_003, 1.0));
    let [s1, s2] = [1, 2].map(|n| pool(n).install(|| be::<f32>(false).sum_squares(&x).unwrap()));
    assert_eq!(
        s1.to_bits(),
        s2.to_bits(),
        "sum_squares: 1 thread {s1} vs 2 threads {s2}"
    );
}

/// Every reduction outside the GEMMs gives the same bits on 1 and 2 rayon threads (GEMMs sequential here),
/// on shapes large enough to span several reduction blocks.
#[test]
fn backward_ops_thread_independent() {
    let (n, c, oc, v, b, t) = (300, 24, 600, 700, 3, 100);
    let mut rng = Rng::new(31);
    let x = cast::<f32>(&randn_f32(&mut rng, n * c, 1.0));
    let w = cast::<f32>(&randn_f32(&mut rng, oc * c, 1.0));
    let g = cast::<f32>(&randn_f32(&mut rng, n * oc, 1.0));
    let gc = cast::<f32>(&randn_f32(&mut rng, n * c, 1.0));
    let qkv = cast::<f32>(&randn_f32(&mut rng, n * 3 * c, 1.0));
    let tokens: Vec<u32> = (0..n as u32)
        .map(|i| (i * i * 31 + 7) % 9 * 77 % v as u32)
        .collect();
    let run = || -> Vec<Vec<f32>> {
        let be = be::<f32>(false);
        let (mut out, mut mean, mut rstd) = (vec![0f32; n * c], vec![0f32; n], vec![0f32; n]);
        be.layernorm_forward(
            &mut out,
            &mut mean,
            &mut rstd,
            &x,
            &w[..c],
            Some(&w[c..2 * c]),
            n,
            c,
        )
        .unwrap();
        let (mut dx, mut dw, mut db) = (vec![0f32; n * c], vec![0f32; c], vec![0f32; c]);
        be.layernorm_backward(
            &mut dx,
            &mut dw,
            Some(&mut db),
            &gc,
            &x,
            &w[..c],
            &mean,
            &rstd,
            n,
            c,
        )
        .unwrap();
        let (mut dwm, mut dbm) = (vec![0f32; oc * c], vec![0f32; oc]);
        be.matmul_backward(None, &mut dwm, Some(&mut dbm), &g, &x, &w, n, c, oc)
            .unwrap();
        let (mut dwte, mut dwpe) = (vec![0f32; v * c], vec![0f32; t * c]);
        be.encoder_backward(&mut dwte, &mut dwpe, &gc, &tokens, b, t, c)
            .unwrap();
        let (mut ao, mut att) = (vec![0f32; n * c], vec![0f32; b * NH * t * t]);
        be.attention_forward(&mut ao, &mut att, &qkv, b, t, c, NH)
            .unwrap();
        let (mut dqkv, mut scratch) = (vec![0f32; n * 3 * c], vec![0f32; b * NH * t * t]);
        be.attention_backward(&mut dqkv, &mut scratch, &gc, &qkv, &att, b, t, c, NH)
            .unwrap();
        vec![out, dx, dw, db, dwm, dbm, dwte, dwpe, ao, att, dqkv]
    };
    let [r1, r2] = [1, 2].map(|k| pool(k).install(run));
    for (i, (a, b)) in r1.iter().zip(&r2).enumerate() {
        let bits = |x: &[f32]| x.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
        assert!(
            bits(a) == bits(b),
            "output #{i} differs between 1 and 2 threads"
        );
    }
}

#[test]
fn gemm_deterministic_run_to_run() {
    let mut rng = Rng::new(32);
    let (m, n, k) = (256, 300, 200);
    let (a, b) = (
        cast::<f32>(&randn_f32(&mut rng, m * k, 1.0)),
        cast::<f32>(&randn_f32(&mut rng, n * k, 1.0)),
    );
    let p = pool(2);
    let run = || {
        let mut c = vec![0f32; m * n];
        p.install(|| f32::gemm(&mut c, &a, &b, m, n, k, false, true, false, 2));
        c.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
    };
    let first = run();
    for rep in 0..3 {
        assert!(
            run() == first,
            "gemm: run {rep} differs from the first (2 threads)"
        );
    }
}
