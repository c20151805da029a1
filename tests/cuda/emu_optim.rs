//! The optimizer, rotation and Cauchy kernels under the emulator (tolerances as in `emu`): the
//! optimizer kernels equal `CpuBackend<f32>` bit for bit, the rotations and the fused rotated AdamW match
//! the f64 reference on odd shapes, the fused rotated AdamW equals the split kernels bit for bit, the
//! probe stream is identical on the CPU and the emulator, and the median selection / streaming log
//! accumulation match exact references.

use super::emu::gamma;
use super::on;
use crate::util::{assert_close, f32s, f64s, randn_f32 as randn};
use rotadam::backend::cpu::CpuBackend;
use rotadam::backend::emu::EmuBackend;
use rotadam::backend::kernel::{diagnostics, Exec, Mem};
use rotadam::backend::{AdamStep, Backend};
use rotadam::config::ModelConfig;
use rotadam::kernels;
use rotadam::model::ParamTable;
use rotadam::rng::{splitmix64, Rng};
use rotadam::rotation::{Rotation, Scope};

fn emu() -> EmuBackend {
    EmuBackend::emulated(1, false)
}
fn cpu64() -> CpuBackend<f64> {
    CpuBackend::new(1, false)
}

fn hp(t: i32, wd: f64) -> AdamStep {
    let (b1, b2) = (0.9f64, 0.95f64);
    AdamStep {
        lr: 6e-4,
        beta1: b1,
        beta2: b2,
        eps: 1e-8,
        weight_decay: wd,
        bias_correction1: 1.0 - b1.powi(t),
        bias_correction2: 1.0 - b2.powi(t),
    }
}

#[test]
fn optimizer_kernels_equal_the_cpu_f32_backend_bit_for_bit() {
    let n = 1001;
    let mut rng = Rng::new(8);
    let g = f32s(&randn(&mut rng, n, 1e-2));
    let p0 = f32s(&randn(&mut rng, n, 1.0));
    let m0 = f32s(&randn(&mut rng, n, 1e-3));
    let v0: Vec<f32> = f32s(&randn(&mut rng, n, 1e-3))
        .iter()
        .map(|x| x * x)
        .collect();
    let (e, c) = (emu(), CpuBackend::<f32>::new(1, false));
    let h = hp(3, 0.1);

    // adamw_step
    let [p1, m1, v1] = on(&e, [&p0, &m0, &v0], [&g], |be, [p, m, v], [g]| {
        be.adamw_step(p, m, v, g, h)
    });
    let (mut p2, mut m2, mut v2) = (p0.clone(), m0.clone(), v0.clone());
    c.adamw_step(&mut p2, &mut m2, &mut v2, &g, h).unwrap();
    assert_eq!((&p1, &m1, &v1), (&p2, &m2, &v2), "adamw_step");
    assert_ne!(p1, p0, "adamw_step changed nothing");
    // adam_direction_step
    let [u1, m1, v1] = on(
        &e,
        [&vec![0f32; n], &m0, &v0],
        [&g],
        |be, [u, m, v], [g]| be.adam_direction_step(u, m, v, g, h),
    );
    let (mut u2, mut m2, mut v2) = (vec![0f32; n], m0.clone(), v0.clone());
    c.adam_direction_step(&mut u2, &mut m2, &mut v2, &g, h)
        .unwrap();
    assert_eq!((&u1, &m1, &v1), (&u2, &m2, &v2), "adam_direction_step");
    // sgd_step, sgd_direction_step
    let [p1, b1] = on(&e, [&p0, &m0], [&g], |be, [p, b], [g]| {
        be.sgd_step(p, b, g, 0.1, 0.9, 0.1)
    });
    let (mut p2, mut b2) = (p0.clone(), m0.clone());
    c.sgd_step(&mut p2, &mut b2, &g, 0.1, 0.9, 0.1).unwrap();
    assert_eq!((&p1, &b1), (&p2, &b2), "sgd_step");
    let [u1, b1] = on(&e, [&vec![0f32; n], &m0], [&g], |be, [u, b], [g]| {
        be.sgd_direction_step(u, b, g, 0.9)
    });
    let (mut u2, mut b2) = (vec![0f32; n], m0.clone());
    c.sgd_direction_step(&mut u2, &mut b2, &g, 0.9).unwrap();
    assert_eq!((&u1, &b1), (&u2, &b2), "sgd_direction_step");
    // AdaSGD / blockwise Adam: one second moment per block of 143 (7 blocks)
    let block = 143;
    let vb = &v0[..n / block];
    let [u1, m1] = on(
        &e,
        [&vec![0f32; n], &m0],
        [vb, &g],
        |be, [u, m], [vb, g]| be.block_adam_direction_step(u, m, vb, g, block, h),
    );
    let (mut u2, mut m2) = (vec![0f32; n], m0.clone());
    c.block_adam_direction_step(&mut u2, &mut m2, vb, &g, block, h)
        .unwrap();
    assert_eq!((&u1, &m1), (&u2, &m2), "block_adam_direction_step");
    // apply_update
    let mut p2 = p0.clone();
    let [p1] = on(&e, [&p0], [&u1], |be, [p], [u]| {
        be.apply_update(p, u, 6e-4, 0.1)
    });
    c.apply_update(&mut p2, &u2, 6e-4, 0.1).unwrap();
    assert_eq!(p1, p2, "apply_update");
}

/// A random permutation of 0..len (Fisher–Yates, `rotation::shuffle`).
fn permutation(rng: &mut Rng, len: usize) -> Vec<u32> {
    let mut p: Vec<u32> = (0..len as u32).collect();
    rotadam::rotation::shuffle(&mut p, rng);
    p
}

/// Row-major n×n orthogonal matrix (Haar, the project's sampler) in f64.
fn orthogonal(n: usize, seed: u64) -> Vec<f64> {
    let mut rng = Rng::new(seed);
    rotadam::rotation::haar::haar(n, &mut rng)
}

#[test]
fn rotate_and_unrotate_parity_on_odd_shapes() {
    // NB = 70 blocks (> one 64-row tile), n = 37 (not a multiple of 16 or 64); the index list is a
    // permutation of a longer vector, so 11 coordinates (the residual, not divisible by n) are left out.
    let (nb, n) = (70, 37);
    let len = nb * n + 11;
    let mut rng = Rng::new(9);
    let perm = permutation(&mut rng, len);
    let index = &perm[..nb * n];
    let ix_emu = emu().rotation_index(index.to_vec(), n, len).unwrap();
    let ix_cpu = cpu64().rotation_index(index.to_vec(), n, len).unwrap();
    // an index list is the backend's: the emulated one's lives in its executor's memory (host memory)
    let r = orthogonal(n, 10);
    let x = randn(&mut rng, len, 1.0);
    let e = emu();
    let [o32] = on(
        &e,
        [&vec![0f32; nb * n]],
        [&f32s(&x), &f32s(&r)],
        |be, [o], [x, r]| be.rotate(o, x, &ix_emu, r, nb, n),
    );
    let mut o64 = vec![0f64; nb * n];
    cpu64().rotate(&mut o64, &x, &ix_cpu, &r, nb, n).unwrap();
    // K = n terms, |terms| summing to ≤ ~√n·‖x‖∞
    let g = gamma(n) * 8.0;
    assert_close("rotate", &f64s(&o32), &o64, g, g);

    let init = randn(&mut rng, len, 1.0);
    let [u32_] = on(&e, [&f32s(&init)], [&o32, &f32s(&r)], |be, [u], [o, r]| {
        be.unrotate(u, o, &ix_emu, r, nb, n)
    });
    let mut u64_ = init.clone();
    cpu64()
        .unrotate(&mut u64_, &o64, &ix_cpu, &r, nb, n)
        .unwrap();
    assert_close("unrotate", &f64s(&u32_), &u64_, g, g);
    // unrotate∘rotate = identity on the indexed coordinates, the rest untouched
    assert_close(
        "unrotate(rotate(x))",
        &f64s(&u32_),
        &{
            let mut want = init.clone();
            for &i in index {
                want[i as usize] = x[i as usize];
            }
            want
        },
        2.0 * g,
        g,
    );
    for &i in &perm[nb * n..] {
        assert_eq!(
            u32_[i as usize], init[i as usize] as f32,
            "unindexed coordinate {i} changed"
        );
    }
}

#[test]
fn fused_rotated_adamw_matches_the_split_reference() {
    // rotate_adam_direction (gather + GEMM + Adam in the epilogue) then unrotate_apply_update (GEMM + lr
    // in the epilogue, scattered; decay is the caller's, before) vs the f64 composition rotate →
    // adam_direction_step → unrotate → apply_update with λ = 0 (Maes et al. Alg. 2).
    let (nb, n) = (67, 29);
    let len = nb * n + 5;
    let mut rng = Rng::new(11);
    let perm = permutation(&mut rng, len);
    let index = &perm[..nb * n];
    let r = orthogonal(n, 12);
    let g = randn(&mut rng, len, 1e-2);
    let p0 = randn(&mut rng, len, 1.0);
    let m0 = randn(&mut rng, nb * n, 1e-3);
    let v0: Vec<f64> = randn(&mut rng, nb * n, 1e-2)
        .iter()
        .map(|x| x * x)
        .collect();
    let h = hp(5, 0.1);

    // f64 reference, split path
    let be = cpu64();
    let ix = be.rotation_index(index.to_vec(), n, len).unwrap();
    let mut gt = vec![0f64; nb * n];
    be.rotate(&mut gt, &g, &ix, &r, nb, n).unwrap();
    let (mut u, mut m64, mut v64) = (vec![0f64; nb * n], m0.clone(), v0.clone());
    be.adam_direction_step(&mut u, &mut m64, &mut v64, &gt, h)
        .unwrap();
    let mut dir = vec![0f64; len];
    be.unrotate(&mut dir, &u, &ix, &r, nb, n).unwrap();
    let mut p64 = p0.clone();
    crate::rotation::apply_on_listed(&be, &mut p64, &dir, index, h.lr);

    // the emulated fused kernels, through the backend ops (the launch plans training uses)
    let e = emu();
    let ix_emu = e.rotation_index(index.to_vec(), n, len).unwrap();
    let r32 = f32s(&r);
    let [u32_, m32, v32] = on(
        &e,
        [&vec![0f32; nb * n], &f32s(&m0), &f32s(&v0)],
        [&f32s(&g), &r32],
        |be, [u, m, v], [g, r]| be.rotate_adam_direction(u, m, v, g, &ix_emu, r, nb, n, h),
    );
    let tol = gamma(n) * 8.0;
    assert_close(
        "rotate_adam_direction m",
        &f64s(&m32),
        &m64,
        1e-2 * tol,
        tol,
    );
    assert_close(
        "rotate_adam_direction v",
        &f64s(&v32),
        &v64,
        1e-4 * tol,
        2.0 * tol,
    );
    // u = m̂/(√v̂+ε) amplifies the relative error of small v: compare relative to |u| ≤ ~1/(1−β₁ᵗ)·…
    assert_close(
        "rotate_adam_direction u",
        &f64s(&u32_),
        &u,
        8.0 * tol,
        8.0 * tol,
    );

    let [p32] = on(&e, [&f32s(&p0)], [&u32_, &r32], |be, [p], [u, r]| {
        be.unrotate_apply_update(p, u, &ix_emu, r, nb, n, h.lr)
    });
    assert_close(
        "unrotate_apply_update params",
        &f64s(&p32),
        &p64,
        1e-6,
        2.0 * gamma(2),
    );
    for &i in &perm[nb * n..] {
        assert_eq!(
            p32[i as usize], p0[i as usize] as f32,
            "unindexed parameter {i} changed"
        );
    }
}

/// The fused rotated-AdamW kernels give the bits of the split kernels they fuse (`rotate` then
/// `adam_direction_step`; `unrotate` then `apply_update` with λ = 0): both run the same block GEMM, K in
/// the same order, and the same Adam arithmetic. On every block class of whole-model rotations of the tiny
/// GPT-2 under `global` (one permutation of all parameters) and `output` (rows), n = 7: full blocks and
/// residual classes of several sizes.
#[test]
fn fused_rotated_adamw_kernels_equal_the_split_kernels_bit_for_bit() {
    let cfg = ModelConfig {
        bias: true,
        ..ModelConfig::preset("tiny").unwrap()
    };
    let table = ParamTable::new(&cfg);
    let d = table.total;
    let e = emu();
    let mut rng = Rng::new(21);
    let g = f32s(&randn(&mut rng, d, 1e-2));
    for scope in [Scope::Global, Scope::Output] {
        let rot = Rotation::new(&e, scope, 7, 1, &table).unwrap();
        let layout = rot.layout_index(&e);
        for s in rot.segments() {
            let k = s.count * s.size;
            let list: Vec<u32> = layout[s.offset..s.offset + k]
                .iter()
                .map(|&i| i as u32)
                .collect();
            let ix = e.rotation_index(list, s.size, d).unwrap();
            let r = f32s(&orthogonal(s.size, s.size as u64));
            let label = format!("{scope}, {} blocks of {}", s.count, s.size);
            crate::rotation::check_fused_adamw(&e, &ix, &g, &r, s.count, s.size, &mut rng, &label);
        }
    }
}

#[test]
fn cauchy_stream_is_splitmix64_and_identical_on_cpu_and_emulator() {
    // The counter stream is SplitMix64's sequence (src/rng.rs) read at any index.
    let seed = 0x1234_5678_9abc_def0u64;
    let mut x = seed;
    for i in 0..1000u64 {
        assert_eq!(
            kernels::counter_u64(seed, i),
            splitmix64(&mut x),
            "element {i}"
        );
    }
    check_cauchy_fill(emu().exec());
    // a standard Cauchy has median |C| = 1: over 100,000 draws the sample median of |C| is within 2%
    let mut a: Vec<f64> = (0..100_000u64)
        .map(|i| kernels::cauchy_probe(7, i).abs())
        .collect();
    a.sort_by(|p, q| p.partial_cmp(q).unwrap());
    let med = 0.5 * (a[49_999] + a[50_000]);
    assert!((med - 1.0).abs() < 0.02, "median |C| = {med}");
}

/// u in (0,1), and the probes `cauchy_fill` writes on `ex` equal the host function bit for bit (after
/// f32), at an offset past 2³².
pub fn check_cauchy_fill<E: Exec>(ex: &E) {
    let (seed, n, offset) = (0x1234_5678_9abc_def0u64, 1000usize, 5_000_000_000u64);
    let mut out = Mem::<E, f32>::zeros(ex, n).unwrap();
    diagnostics::cauchy_fill(ex, out.dev_mut(), seed, offset).unwrap();
    for (i, &o) in out.download(ex).unwrap().iter().enumerate() {
        let want = kernels::cauchy_probe(seed, offset + i as u64);
        assert_eq!(o.to_bits(), (want as f32).to_bits(), "probe {i}");
        let u = kernels::counter_uniform(seed, offset + i as u64);
        assert!(u > 0.0 && u < 1.0);
        // tan(π(u − ½)) is the inverse CDF of the standard Cauchy: F(c) = ½ + atan(c)/π = u
        assert!((0.5 + want.atan() / std::f64::consts::PI - u).abs() < 1e-12);
    }
}

#[test]
fn median_selection_and_streaming_log_accumulation() {
    check_median_and_streaming(emu().exec());
}

/// The coordinate-wise median of |x| over K probes (with ties) and the streaming geometric mean on `ex`
/// equal exact references.
pub fn check_median_and_streaming<E: Exec>(ex: &E) {
    let chunk = 300; // > one 256-thread block
    for k in [1usize, 7, 10] {
        let mut rng = Rng::new(13 + k as u64);
        // with ties: values on a coarse grid
        let samples: Vec<f32> = (0..k * chunk)
            .map(|_| ((rng.normal() * 4.0).round() / 2.0) as f32)
            .collect();
        let mut s = Mem::from_host(ex, &samples).unwrap();
        let mut out = Mem::<E, f32>::zeros(ex, chunk).unwrap();
        diagnostics::median_abs_select(ex, out.dev_mut(), s.dev_mut(), k).unwrap();
        let out = out.download(ex).unwrap();
        for j in 0..chunk {
            let mut col: Vec<f64> = (0..k)
                .map(|q| samples[q * chunk + j].abs() as f64)
                .collect();
            col.sort_by(|p, q| p.partial_cmp(q).unwrap());
            let want = if k % 2 == 1 {
                col[k / 2]
            } else {
                0.5 * (col[k / 2 - 1] + col[k / 2])
            };
            assert_eq!(out[j] as f64, want, "K = {k}, coordinate {j}");
        }
    }
    // streaming: acc += log|x| over K probes, then exp(acc/K)
    let (k, n) = (9, 333);
    let mut rng = Rng::new(20);
    let xs: Vec<Vec<f32>> = (0..k).map(|_| f32s(&randn(&mut rng, n, 3.0))).collect();
    let mut acc = Mem::<E, f32>::zeros(ex, n).unwrap();
    for x in &xs {
        let x = Mem::from_host(ex, x).unwrap();
        diagnostics::log_abs_accumulate(ex, acc.dev_mut(), x.dev()).unwrap();
    }
    let mut out = Mem::<E, f32>::zeros(ex, n).unwrap();
    diagnostics::log_abs_finalize(ex, out.dev_mut(), acc.dev(), k).unwrap();
    let want: Vec<f64> = (0..n)
        .map(|j| ((0..k).map(|q| (xs[q][j] as f64).abs().ln()).sum::<f64>() / k as f64).exp())
        .collect();
    let g = gamma(4 * k) * 16.0;
    assert_close(
        "log_abs_accumulate/finalize",
        &f64s(&out.download(ex).unwrap()),
        &want,
        0.0,
        g,
    );
}

/// The rotation GEMM's grid stays inside sm_90's limits (x < 2^31, y and z ≤ 65,535) for every block size
/// of a 124M-parameter model, the smallest blocks giving the most of them (n = 16: 7.8M blocks).
#[test]
fn rotation_grid_fits_the_device_limits_at_every_block_size() {
    let d = 124_337_664usize;
    for n in [1, 2, 16, 64, 768, 2048, 4096] {
        let g = rotadam::backend::kernel::gemm_grid(d / n, n);
        assert!(
            g.grid[0] < (1 << 31) && g.grid[1] <= 65_535 && g.grid[2] <= 65_535,
            "n = {n}: grid {:?}",
            g.grid
        );
    }
}
