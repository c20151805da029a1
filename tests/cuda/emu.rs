//! Every kernel through the CPU emulator against the f64 CPU reference (`CpuBackend<f64>`), on small and
//! odd shapes: sizes that are not multiples of the block (256), the warp (32) or the GEMM tile (64), and a
//! rotation block n that divides nothing. Every launch runs under ascending and descending thread order
//! and must give bit-identical outputs (`EmuBackend` checks it on every call).
//!
//! Tolerances come from the f32 arithmetic (Higham, Accuracy and Stability, §3.1): a length-K sum of
//! products errs by at most γ_K = K·u/(1 − K·u) relative to Σ|terms|, u = 2⁻²⁴. Each test states its K and
//! the magnitude the error is relative to; the bound used is atol = rtol = 2·γ_K (a factor 2 for the
//! conversion of the result and libm's exp/log/tan, which are within 1 ulp). The optimizer kernels compute
//! the CPU backend's exact expression in f32 and must equal `CpuBackend<f32>` bit for bit.

use super::on;
use crate::util::{assert_close, f32s, f64s, randn_f32 as randn, U32};
use rotadam::backend::cpu::CpuBackend;
use rotadam::backend::emu::EmuBackend;
use rotadam::backend::kernel::{diagnostics, transformer, Mem};
use rotadam::backend::Backend;
use rotadam::kernels::Module;
use rotadam::rng::Rng;

/// 2·γ_K for a length-K reduction (module docs).
pub fn gamma(k: usize) -> f64 {
    let ku = k as f64 * U32;
    2.0 * ku / (1.0 - ku)
}

fn emu() -> EmuBackend {
    EmuBackend::emulated(1, false)
}
fn cpu64() -> CpuBackend<f64> {
    CpuBackend::new(1, false)
}

// Odd shapes: B·T = 74 rows, C = 36 (> one warp, not a multiple), NH = 3 (hs = 12), T = 37 (> 32 keys per
// row), V = 300 (> one 256-thread block per row).
const B: usize = 2;
const T: usize = 37;
const C: usize = 36;
const NH: usize = 3;
const V: usize = 300;

#[test]
fn kernel_index_lists_every_module_and_kernel() {
    // The typed index is generated from the sources: every module has kernels, names are unique, and each
    // kernel's name appears as an extern "C" __global__ in its module's flattened source.
    let mut names = std::collections::HashSet::new();
    for &m in Module::ALL {
        assert!(!m.kernels().is_empty(), "{}: no kernels", m.name());
        for &k in m.kernels() {
            assert_eq!(k.module(), m);
            assert!(names.insert(k.name()), "duplicate kernel {}", k.name());
            assert!(
                m.source().contains(&format!("{}(", k.name())),
                "{} not in the source of {}",
                k.name(),
                m.name()
            );
        }
        assert!(
            !m.source().contains("#include \""),
            "{}: a local include was not flattened",
            m.name()
        );
    }
    for family in [
        "rotation",
        "adamw",
        "reduce",
        "layernorm",
        "encoder",
        "gelu",
        "residual",
        "attention",
        "crossentropy",
        "cauchy",
    ] {
        assert!(
            Module::ALL.iter().any(|m| m.name() == family),
            "module {family} missing"
        );
    }
}

#[test]
fn encoder_forward_backward_parity() {
    let mut rng = Rng::new(1);
    let vocab = 23;
    let tokens: Vec<u32> = (0..B * T).map(|_| rng.below(vocab as u64) as u32).collect();
    let wte = randn(&mut rng, vocab * C, 1.0);
    let wpe = randn(&mut rng, T * C, 1.0);
    let dout = randn(&mut rng, B * T * C, 1.0);
    let [o32] = on(
        &emu(),
        [&vec![0f32; B * T * C]],
        [&f32s(&wte), &f32s(&wpe)],
        |be, [o], [wte, wpe]| be.encoder_forward(o, &tokens, wte, wpe, B, T, C),
    );
    let mut o64 = vec![0f64; B * T * C];
    cpu64()
        .encoder_forward(&mut o64, &tokens, &wte, &wpe, B, T, C)
        .unwrap();
    assert_close("encoder_forward", &f64s(&o32), &o64, 0.0, gamma(1));

    let (init_te, init_pe) = (randn(&mut rng, vocab * C, 1.0), randn(&mut rng, T * C, 1.0));
    let [te32, pe32] = on(
        &emu(),
        [&f32s(&init_te), &f32s(&init_pe)],
        [&f32s(&dout)],
        |be, [te, pe], [g]| be.encoder_backward(te, pe, g, &tokens, B, T, C),
    );
    let (mut te64, mut pe64) = (init_te.clone(), init_pe.clone());
    cpu64()
        .encoder_backward(&mut te64, &mut pe64, &dout, &tokens, B, T, C)
        .unwrap();
    // K ≤ B·T + 1 terms of magnitude ≤ ~4
    let k = B * T + 1;
    assert_close(
        "encoder_backward dwte",
        &f64s(&te32),
        &te64,
        4.0 * gamma(k),
        gamma(k),
    );
    assert_close(
        "encoder_backward dwpe",
        &f64s(&pe32),
        &pe64,
        4.0 * gamma(B + 1),
        gamma(B + 1),
    );
}

#[test]
fn layernorm_forward_backward_parity() {
    let n = B * T;
    let mut rng = Rng::new(2);
    let x: Vec<f64> = randn(&mut rng, n * C, 1.0)
        .iter()
        .map(|v| v + 0.5)
        .collect();
    let w = randn(&mut rng, C, 1.0);
    let bias = randn(&mut rng, C, 1.0);
    let dout = randn(&mut rng, n * C, 1.0);
    for with_bias in [true, false] {
        let [o32, m32, r32] = on(
            &emu(),
            [&vec![0f32; n * C], &vec![0f32; n], &vec![0f32; n]],
            [&f32s(&x), &f32s(&w), &f32s(&bias)],
            |be, [o, m, r], [x, w, b]| {
                be.layernorm_forward(o, m, r, x, w, with_bias.then_some(b), n, C)
            },
        );
        let (mut o64, mut m64, mut r64) = (vec![0f64; n * C], vec![0f64; n], vec![0f64; n]);
        cpu64()
            .layernorm_forward(
                &mut o64,
                &mut m64,
                &mut r64,
                &x,
                &w,
                with_bias.then_some(&bias[..]),
                n,
                C,
            )
            .unwrap();
        // K = C terms; outputs are O(|w|·|norm|) ≤ ~10
        let g = gamma(4 * C);
        assert_close("layernorm_forward mean", &f64s(&m32), &m64, 4.0 * g, g);
        assert_close("layernorm_forward rstd", &f64s(&r32), &r64, 0.0, g);
        assert_close("layernorm_forward out", &f64s(&o32), &o64, 10.0 * g, g);

        let init_dx = randn(&mut rng, n * C, 1.0);
        let (init_dw, init_db) = (randn(&mut rng, C, 1.0), randn(&mut rng, C, 1.0));
        let [dx32, dw32, db32] = on(
            &emu(),
            [&f32s(&init_dx), &f32s(&init_dw), &f32s(&init_db)],
            [&f32s(&dout), &f32s(&x), &f32s(&w), &m32, &r32],
            |be, [dx, dw, db], [g, x, w, m, r]| {
                be.layernorm_backward(dx, dw, with_bias.then_some(db), g, x, w, m, r, n, C)
            },
        );
        let (mut dx64, mut dw64, mut db64) = (init_dx.clone(), init_dw.clone(), init_db.clone());
        cpu64()
            .layernorm_backward(
                &mut dx64,
                &mut dw64,
                with_bias.then_some(&mut db64[..]),
                &dout,
                &x,
                &w,
                &m64,
                &r64,
                n,
                C,
            )
            .unwrap();
        let g = gamma(4 * C);
        assert_close("layernorm_backward dinp", &f64s(&dx32), &dx64, 50.0 * g, g);
        let g = gamma(2 * n);
        assert_close(
            "layernorm_backward dweight",
            &f64s(&dw32),
            &dw64,
            50.0 * g,
            g,
        );
        if with_bias {
            assert_close("layernorm_backward dbias", &f64s(&db32), &db64, 10.0 * g, g);
        } else {
            assert_eq!(f64s(&db32), init_db, "dbias must be untouched without bias");
        }
    }
}

#[test]
fn attention_forward_backward_parity() {
    let mut rng = Rng::new(3);
    let qkv = randn(&mut rng, B * T * 3 * C, 1.0);
    let dout = randn(&mut rng, B * T * C, 1.0);
    let [o32, a32] = on(
        &emu(),
        [&vec![0f32; B * T * C], &vec![7f32; B * NH * T * T]],
        [&f32s(&qkv)],
        |be, [o, a], [q]| be.attention_forward(o, a, q, B, T, C, NH),
    );
    let (mut o64, mut a64) = (vec![0f64; B * T * C], vec![0f64; B * NH * T * T]);
    cpu64()
        .attention_forward(&mut o64, &mut a64, &qkv, B, T, C, NH)
        .unwrap();
    // scores: K = hs = 12 terms of magnitude ~1 each → ~hs·γ absolute in the exponent; probabilities and
    // outputs then carry that relative error (plus the length-T sums).
    let g = gamma(C / NH + T) * 8.0;
    assert_close("attention_forward att", &f64s(&a32), &a64, g, g);
    assert_close("attention_forward out", &f64s(&o32), &o64, 4.0 * g, g);

    let init = randn(&mut rng, B * T * 3 * C, 1.0);
    let [d32, s32] = on(
        &emu(),
        [&f32s(&init), &vec![3f32; B * NH * T * T]],
        [&f32s(&dout), &f32s(&qkv), &a32],
        |be, [d, s], [g, q, a]| be.attention_backward(d, s, g, q, a, B, T, C, NH),
    );
    let mut d64 = init.clone();
    let mut s64 = vec![0f64; B * NH * T * T];
    cpu64()
        .attention_backward(&mut d64, &mut s64, &dout, &qkv, &a64, B, T, C, NH)
        .unwrap();
    let g = gamma(C / NH + T) * 32.0;
    assert_close("attention_backward scratch", &f64s(&s32), &s64, g, g);
    assert_close("attention_backward dqkv", &f64s(&d32), &d64, 8.0 * g, g);
}

#[test]
fn gelu_residual_and_flat_ops_parity() {
    let n = 1000; // 3.9 blocks of 256
    let mut rng = Rng::new(4);
    let x: Vec<f64> = randn(&mut rng, n, 3.0);
    let y = randn(&mut rng, n, 1.0);
    let mut o64 = vec![0f64; n];
    let [o32] = on(&emu(), [&vec![0f32; n]], [&f32s(&x)], |be, [o], [x]| {
        be.gelu_forward(o, x)
    });
    cpu64().gelu_forward(&mut o64, &x).unwrap();
    // exp's argument carries ~|u|·γ₄ absolute error, |u| ≤ ~25 here
    let g = gamma(4) * 32.0;
    assert_close("gelu_forward", &f64s(&o32), &o64, g, g);
    let mut d64 = y.clone();
    let [d32] = on(
        &emu(),
        [&f32s(&y)],
        [&f32s(&x), &f32s(&y)],
        |be, [d], [x, g]| be.gelu_backward(d, x, g),
    );
    cpu64().gelu_backward(&mut d64, &x, &y).unwrap();
    assert_close("gelu_backward", &f64s(&d32), &d64, g, g);

    let mut r64 = vec![0f64; n];
    let [r32] = on(
        &emu(),
        [&vec![0f32; n]],
        [&f32s(&x), &f32s(&y)],
        |be, [r], [a, b]| be.residual_forward(r, a, b),
    );
    cpu64().residual_forward(&mut r64, &x, &y).unwrap();
    assert_close("residual_forward", &f64s(&r32), &r64, 0.0, gamma(1));
    let mut a64 = x.clone();
    let [a32] = on(&emu(), [&f32s(&x)], [&f32s(&y)], |be, [a], [y]| {
        be.add_inplace(a, y)
    });
    cpu64().add_inplace(&mut a64, &y).unwrap();
    assert_close("add_inplace", &f64s(&a32), &a64, 0.0, gamma(1));
    let [a32] = on(&emu(), [&a32], [], |be, [a], []| be.scale(a, 0.375));
    cpu64().scale(&mut a64, 0.375).unwrap();
    assert_close("scale", &f64s(&a32), &a64, 0.0, gamma(2));
    let [a32] = on(&emu(), [&a32], [], |be, [a], []| be.fill(a, -2.5));
    assert!(a32.iter().all(|&v| v == -2.5), "fill");
}

#[test]
fn bf16_mode_rounds_stored_activations_like_the_cpu_backend() {
    // In bf16 mode the kernels store activations rounded to bf16 (round-to-nearest-even), as the CPU
    // backend's emulation does: the elementwise results agree with CpuBackend<f32, bf16> bit for bit.
    let n = 777;
    let mut rng = Rng::new(5);
    let x = f32s(&randn(&mut rng, n, 2.0));
    let y = f32s(&randn(&mut rng, n, 2.0));
    let (e, c) = (
        EmuBackend::emulated(1, true),
        CpuBackend::<f32>::new(1, true),
    );
    let mut b = vec![0f32; n];
    let [a] = on(&e, [&vec![0f32; n]], [&x, &y], |be, [a], [x, y]| {
        be.residual_forward(a, x, y)
    });
    c.residual_forward(&mut b, &x, &y).unwrap();
    assert_eq!(a, b, "residual_forward bf16");
    assert!(
        a.iter().all(|v| v.to_bits() & 0xffff == 0),
        "not bf16 values"
    );
    let [a] = on(&e, [&a], [&x], |be, [a], [x]| be.gelu_forward(a, x));
    c.gelu_forward(&mut b, &x).unwrap();
    let diff = a.iter().zip(&b).filter(|(p, q)| p != q).count();
    // The exp inside GELU may differ by an ulp between glibc (C++) and Rust's libm, which can flip a
    // bf16 rounding: allow a handful, each by one bf16 ulp at most.
    assert!(diff <= n / 50, "gelu_forward bf16: {diff} of {n} differ");
    for (p, q) in a.iter().zip(&b) {
        assert!(
            (p - q).abs() <= q.abs() / 128.0 + 1e-30,
            "gelu bf16 {p} vs {q}"
        );
    }
}

#[test]
fn crossentropy_forward_parity() {
    let n = 6;
    let mut rng = Rng::new(6);
    let logits = randn(&mut rng, n * V, 2.0);
    let targets: Vec<u32> = (0..n).map(|_| rng.below(V as u64) as u32).collect();
    for dloss in [None, Some(1.0 / 12.0)] {
        let [l32, x32] = on(
            &emu(),
            [&vec![0f32; n], &f32s(&logits)],
            [],
            |be, [l, x], []| be.crossentropy_forward(l, x, &targets, dloss.map(|s| s as f32), n, V),
        );
        let (mut l64, mut x64) = (vec![0f64; n], logits.clone());
        cpu64()
            .crossentropy_forward(&mut l64, &mut x64, &targets, dloss, n, V)
            .unwrap();
        let g = gamma(V) * 16.0;
        assert_close("crossentropy_forward losses", &f64s(&l32), &l64, g, g);
        assert_close(
            "crossentropy_forward dlogits",
            &f64s(&x32),
            &x64,
            g / 12.0,
            g,
        );
        if dloss.is_none() {
            assert_eq!(x32, f32s(&logits), "logits must be untouched without dloss");
        }
    }
}

#[test]
fn reductions_and_clipping_parity() {
    let mut rng = Rng::new(7);
    let n = 150_001; // 3 partial blocks of 65,536
    let x = randn(&mut rng, n, 1.0);
    let mut s32 = 0.0;
    on(&emu(), [], [&f32s(&x)], |be, [], [x]| {
        s32 = be.sum_squares(x)?;
        Ok(())
    });
    let s64 = cpu64().sum_squares(&x).unwrap();
    // both sum the same f32-exact squares in f64: equal up to f64 reassociation
    assert!(
        (s32 - s64).abs() <= 1e-12 * s64,
        "sum_squares {s32} vs {s64}"
    );

    // clip_by_norm reads ‖g‖² from device memory; compare with the host formula (optim::clip_grads).
    for max_norm in [1.0f32, 1e6] {
        let mut g = f32s(&x[..1000]);
        let sumsq: Vec<f64> = x[..1000]
            .iter()
            .map(|&v| (v as f32 as f64).powi(2))
            .collect();
        let sumsq = [sumsq.iter().sum::<f64>()];
        let want: Vec<f32> = {
            let coef = max_norm as f64 / (sumsq[0].sqrt() + 1e-6);
            g.iter()
                .map(|&v| if coef < 1.0 { v * coef as f32 } else { v })
                .collect()
        };
        let ex = emu();
        let (mut dg, ds) = (
            Mem::from_host(ex.exec(), &g).unwrap(),
            Mem::from_host(ex.exec(), &sumsq).unwrap(),
        );
        diagnostics::clip_by_norm(ex.exec(), dg.dev_mut(), ds.dev(), max_norm).unwrap();
        g = dg.download(ex.exec()).unwrap();
        assert_eq!(g, want, "clip_by_norm at max_norm {max_norm}");
    }

    let (blocks, block) = (5, 333);
    let y = randn(&mut rng, blocks * block, 1.0);
    let mut b64 = vec![0f64; blocks];
    let [b32] = on(
        &emu(),
        [&vec![0f32; blocks]],
        [&f32s(&y)],
        |be, [b], [y]| be.block_mean_squares(b, y, block),
    );
    cpu64().block_mean_squares(&mut b64, &y, block).unwrap();
    assert_close("block_mean_squares", &f64s(&b32), &b64, 0.0, gamma(1));
    let mut v64 = b64.clone();
    let [v32] = on(&emu(), [&f32s(&b64)], [&b32], |be, [v], [s]| {
        be.ema_inplace(v, s, 0.95)
    });
    cpu64().ema_inplace(&mut v64, &b64, 0.95).unwrap();
    assert_close("ema_inplace", &f64s(&v32), &v64, 0.0, gamma(4));
}

#[test]
fn gemm_epilogue_kernels_bias_and_bf16_rounding() {
    // The pieces the kernel backend puts around a GEMM: out += bias per row, dbias += column sums (of the
    // bf16-rounded dout under bf16, as the CPU backend's emulation sums it), and the bf16 rounding of
    // GEMM outputs (equal to the CPU's Scalar::round_bf16, bit for bit).
    let (n, oc) = (37, 300);
    let mut rng = Rng::new(21);
    let x = randn(&mut rng, n * oc, 1.0);
    let bias = randn(&mut rng, oc, 1.0);
    let be = emu();
    let ex = be.exec();
    let mut out = Mem::from_host(ex, &f32s(&x)).unwrap();
    let b32 = Mem::from_host(ex, &f32s(&bias)).unwrap();
    transformer::bias_forward(ex, out.dev_mut(), b32.dev(), n, oc).unwrap();
    let want: Vec<f64> = (0..n * oc).map(|i| x[i] + bias[i % oc]).collect();
    assert_close(
        "bias_forward",
        &f64s(&out.download(ex).unwrap()),
        &want,
        0.0,
        gamma(1),
    );
    let x32 = Mem::from_host(ex, &f32s(&x)).unwrap();
    for bf16 in [false, true] {
        let mut db = Mem::from_host(ex, &f32s(&bias)).unwrap();
        transformer::bias_backward(ex, db.dev_mut(), x32.dev(), n, oc, bf16).unwrap();
        let round = |v: f64| {
            if bf16 {
                half::bf16::from_f32(v as f32).to_f64()
            } else {
                v
            }
        };
        let want: Vec<f64> = (0..oc)
            .map(|j| bias[j] + (0..n).map(|r| round(x[r * oc + j])).sum::<f64>())
            .collect();
        assert_close(
            &format!("bias_backward (bf16 {bf16})"),
            &f64s(&db.download(ex).unwrap()),
            &want,
            4.0 * gamma(n + 1),
            gamma(n + 1),
        );
    }
    let src = f32s(&randn(&mut rng, 1001, 100.0));
    let d = Mem::from_host(ex, &src).unwrap();
    let mut r = Mem::<_, f32>::zeros(ex, src.len()).unwrap();
    transformer::round_bf16_copy(ex, r.dev_mut(), d.dev()).unwrap();
    let want: Vec<f32> = src
        .iter()
        .map(|&v| half::bf16::from_f32(v).to_f32())
        .collect();
    assert_eq!(r.download(ex).unwrap(), want, "round_bf16_copy");
}

/// `to_bf16` (the operands of the CUDA backend's native bf16 GEMMs) rounds to nearest even exactly as the
/// `half` crate does, on an odd length (not a multiple of the block), ties both ways, overflow, infinities,
/// signed zero and subnormals.
#[test]
fn to_bf16_matches_half_bit_for_bit() {
    let mut rng = Rng::new(3);
    let mut x: Vec<f32> = (0..1000)
        .map(|i| (rng.normal() * 10f64.powi(i % 13 - 6)) as f32)
        .collect();
    let ulp = 2f32.powi(-7); // bf16 spacing at 1.0
    x.extend([
        1.0 + ulp / 2.0, // tie: stays at the even 1.0
        1.0 + 1.5 * ulp, // tie: rounds up to the even 1 + 2 ulp
        -(1.0 + ulp / 2.0),
        f32::MAX, // rounds up to infinity
        f32::INFINITY,
        f32::NEG_INFINITY,
        -0.0,
        f32::MIN_POSITIVE / 3.0, // subnormal
    ]);
    let be = emu();
    let ex = be.exec();
    let d = Mem::from_host(ex, &x).unwrap();
    let mut o = Mem::<_, half::bf16>::zeros(ex, x.len()).unwrap();
    transformer::to_bf16(ex, o.dev_mut(), d.dev()).unwrap();
    let out: Vec<u16> = o
        .download(ex)
        .unwrap()
        .iter()
        .map(|v| v.to_bits())
        .collect();
    for (i, (&o, &xi)) in out.iter().zip(&x).enumerate() {
        let want = half::bf16::from_f32(xi).to_bits();
        assert_eq!(
            o, want,
            "to_bf16(x[{i}] = {xi:e}): {o:#06x}, half gives {want:#06x}"
        );
    }
    assert_eq!(
        out[1000],
        half::bf16::from_f32(1.0).to_bits(),
        "tie to even"
    );
}

/// GEMMs with an empty dimension, as the CPU backend computes them: k = 0 writes zeros (or leaves C as it
/// is when accumulating) and m = 0 writes nothing. Empty operands may have address 0, which the emulated
/// GEMM must never turn into a slice.
#[test]
fn gemm_with_an_empty_dimension_matches_the_cpu() {
    let cpu = CpuBackend::<f32>::new(1, false);
    let be = emu();
    let c0: Vec<f32> = (0..6).map(|i| i as f32 + 0.5).collect();
    for (m, n, k) in [(2, 3, 0), (0, 3, 4), (2, 0, 4)] {
        let a = vec![1.0f32; m * k];
        let b = vec![2.0f32; k * n];
        for accumulate in [false, true] {
            let [want] = on(&cpu, [&c0[..m * n]], [&a, &b], |be, [c], [a, b]| {
                be.gemm(c, a, b, m, n, k, false, false, accumulate)
            });
            let [got] = on(&be, [&c0[..m * n]], [&a, &b], |be, [c], [a, b]| {
                be.gemm(c, a, b, m, n, k, false, false, accumulate)
            });
            assert_eq!(got, want, "m {m} n {n} k {k} accumulate {accumulate}");
        }
    }
}
