//! Every op's backward vs central finite differences in f64 (test loss L = Σ out ⊙ R, so dout = R);
//! gradient buffers start non-zero to check that backward ops accumulate.

use super::*;

#[test]
fn encoder_backward_gradcheck() {
    let mut rng = Rng::new(1);
    let (wte, wpe, r) = (
        randn_f32(&mut rng, V * C, 1.0),
        randn_f32(&mut rng, T * C, 1.0),
        randn_f32(&mut rng, N * C, 1.0),
    );
    let (g0te, g0pe) = (
        randn_f32(&mut rng, V * C, 1.0),
        randn_f32(&mut rng, T * C, 1.0),
    );
    let (mut dwte, mut dwpe) = (g0te.clone(), g0pe.clone());
    be::<f64>(false)
        .encoder_backward(&mut dwte, &mut dwpe, &r, &TOKENS, B, T, C)
        .unwrap();
    let op = "encoder_backward";
    gradcheck(op, "wte", &wte, &sub(&dwte, &g0te), |x| {
        dot(&run_encoder::<f64>(false, x, &wpe), &r)
    });
    gradcheck(op, "wpe", &wpe, &sub(&dwpe, &g0pe), |x| {
        dot(&run_encoder::<f64>(false, &wte, x), &r)
    });
}

#[test]
fn layernorm_backward_gradcheck() {
    let mut rng = Rng::new(2);
    let x: Vec<f64> = randn_f32(&mut rng, N * C, 1.0)
        .iter()
        .map(|v| v + 0.5)
        .collect();
    let (w, bias, r) = (
        randn_f32(&mut rng, C, 1.0),
        randn_f32(&mut rng, C, 1.0),
        randn_f32(&mut rng, N * C, 1.0),
    );
    let [_, mean, rstd] = run_layernorm::<f64>(false, &x, &w, &bias, N, C);
    let (g0x, g0w, g0b) = (
        randn_f32(&mut rng, N * C, 1.0),
        randn_f32(&mut rng, C, 1.0),
        randn_f32(&mut rng, C, 1.0),
    );
    let (mut dx, mut dw, mut db) = (g0x.clone(), g0w.clone(), g0b.clone());
    be::<f64>(false)
        .layernorm_backward(
            &mut dx,
            &mut dw,
            Some(&mut db),
            &r,
            &x,
            &w,
            &mean,
            &rstd,
            N,
            C,
        )
        .unwrap();
    let op = "layernorm_backward";
    let loss =
        |x: &[f64], w: &[f64], b: &[f64]| dot(&run_layernorm::<f64>(false, x, w, b, N, C)[0], &r);
    gradcheck(op, "inp", &x, &sub(&dx, &g0x), |v| loss(v, &w, &bias));
    gradcheck(op, "weight", &w, &sub(&dw, &g0w), |v| loss(&x, v, &bias));
    gradcheck(op, "bias", &bias, &sub(&db, &g0b), |v| loss(&x, &w, v));
}

#[test]
fn matmul_backward_gradcheck() {
    let mut rng = Rng::new(3);
    let (x, w, bias) = (
        randn_f32(&mut rng, N * C, 1.0),
        randn_f32(&mut rng, OC * C, 1.0),
        randn_f32(&mut rng, OC, 1.0),
    );
    let r = randn_f32(&mut rng, N * OC, 1.0);
    let (g0x, g0w, g0b) = (
        randn_f32(&mut rng, N * C, 1.0),
        randn_f32(&mut rng, OC * C, 1.0),
        randn_f32(&mut rng, OC, 1.0),
    );
    let (mut dx, mut dw, mut db) = (g0x.clone(), g0w.clone(), g0b.clone());
    be::<f64>(false)
        .matmul_backward(Some(&mut dx), &mut dw, Some(&mut db), &r, &x, &w, N, C, OC)
        .unwrap();
    let op = "matmul_backward";
    let loss =
        |x: &[f64], w: &[f64], b: &[f64]| dot(&run_matmul::<f64>(false, x, w, b, N, C, OC), &r);
    gradcheck(op, "inp", &x, &sub(&dx, &g0x), |v| loss(v, &w, &bias));
    gradcheck(op, "weight", &w, &sub(&dw, &g0w), |v| loss(&x, v, &bias));
    gradcheck(op, "bias", &bias, &sub(&db, &g0b), |v| loss(&x, &w, v));
    // dinp = None, dbias = None: dweight alone, identical to the full call.
    let mut dw2 = g0w.clone();
    be::<f64>(false)
        .matmul_backward(None, &mut dw2, None, &r, &x, &w, N, C, OC)
        .unwrap();
    assert_eq!(
        dw2, dw,
        "matmul_backward: dweight differs when dinp/dbias are None"
    );
}

#[test]
fn attention_backward_gradcheck() {
    let mut rng = Rng::new(4);
    let (qkv, r) = (
        randn_f32(&mut rng, N * 3 * C, 1.0),
        randn_f32(&mut rng, N * C, 1.0),
    );
    let [_, att] = run_attention::<f64>(false, &qkv, B, T);
    let g0 = randn_f32(&mut rng, N * 3 * C, 1.0);
    let mut dqkv = g0.clone();
    let mut scratch = vec![f64::NAN; B * NH * T * T]; // contents on entry must not matter
    be::<f64>(false)
        .attention_backward(&mut dqkv, &mut scratch, &r, &qkv, &att, B, T, C, NH)
        .unwrap();
    assert!(
        scratch.iter().all(|s| s.is_finite()),
        "attention_backward: scratch not fully overwritten"
    );
    gradcheck("attention_backward", "qkv", &qkv, &sub(&dqkv, &g0), |v| {
        dot(&run_attention::<f64>(false, v, B, T)[0], &r)
    });
}

#[test]
fn gelu_backward_gradcheck() {
    let mut rng = Rng::new(5);
    let (x, r, g0) = (
        randn_f32(&mut rng, 97, 2.0),
        randn_f32(&mut rng, 97, 1.0),
        randn_f32(&mut rng, 97, 1.0),
    );
    let mut dx = g0.clone();
    be::<f64>(false).gelu_backward(&mut dx, &x, &r).unwrap();
    gradcheck("gelu_backward", "inp", &x, &sub(&dx, &g0), |v| {
        dot(&run_gelu::<f64>(false, v), &r)
    });
}

#[test]
fn residual_backward_gradcheck() {
    // The residual backward is add_inplace on each branch.
    let mut rng = Rng::new(6);
    let (a, b, r, g0) = (
        randn_f32(&mut rng, 31, 1.0),
        randn_f32(&mut rng, 31, 1.0),
        randn_f32(&mut rng, 31, 1.0),
        randn_f32(&mut rng, 31, 1.0),
    );
    let mut da = g0.clone();
    be::<f64>(false).add_inplace(&mut da, &r).unwrap();
    gradcheck("add_inplace", "a", &a, &sub(&da, &g0), |v| {
        dot(&run_residual::<f64>(false, v, &b), &r)
    });
}

#[test]
fn crossentropy_forward_gradcheck() {
    let mut rng = Rng::new(7);
    let logits = randn_f32(&mut rng, N * V, 2.0);
    let targets: Vec<u32> = (0..N as u32).map(|i| (i * 7 + 3) % V as u32).collect();
    let s = 0.37;
    let [losses, grad] = run_crossentropy::<f64>(&logits, &targets, Some(s));
    let [losses_nograd, untouched] = run_crossentropy::<f64>(&logits, &targets, None);
    assert_eq!(
        losses, losses_nograd,
        "crossentropy_forward: losses depend on dloss"
    );
    assert_eq!(
        untouched, logits,
        "crossentropy_forward: dloss None modified the logits"
    );
    gradcheck("crossentropy_forward", "logits", &logits, &grad, |v| {
        s * run_crossentropy::<f64>(v, &targets, None)[0]
            .iter()
            .sum::<f64>()
    });
}
