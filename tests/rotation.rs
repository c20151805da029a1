//! Rotations: the Haar sampler (orthogonality, determinants, moments, and distribution tests that the
//! sampler without Mezzadri's sign fix must fail), the scope groups (with what `--vector-rotation` and
//! `--embedding-rotation` make of 1-D tensors and embeddings, and what an older `config.json` without
//! them means), `Rotation` for every scope and block size (inverse, isometry, linearity, locality,
//! seeding), and the backend ops against a naive f64 loop.
//!
//! Tolerances: f64 results are checked at 1e-12 relative (unit roundoff 1.1e-16 times the O(n) terms of a
//! dot product, with margin); f32 at 1e-5 relative (unit roundoff 6e-8 times ~√n·few for n ≤ 1000).

use crate::util::{assert_close_scaled, back, cast, identity, max_abs, randn};
use faer::Mat;
use rotadam::backend::cpu::{self, CpuBackend, GatherMode};
use rotadam::backend::{AdamStep, Backend, Scalar};
use rotadam::config::{EmbeddingRotation, ModelConfig, VectorRotation};
use rotadam::model::{ParamTable, Role};
use rotadam::rng::Rng;
use rotadam::rotation::scope::unrotated;
use rotadam::rotation::{
    groups, groups_with, haar, qr_q_unsigned, shuffle, Neurons, Rotation, Scope,
};

// ---- helpers -------------------------------------------------------------------------------------------

fn norm(x: &[f64]) -> f64 {
    x.iter().map(|v| v * v).sum::<f64>().sqrt()
}

/// C = A·B for row-major n×n f64 matrices; `trans_b` uses Bᵀ.
fn matmul(a: &[f64], b: &[f64], n: usize, trans_b: bool) -> Vec<f64> {
    let mut c = vec![0.0; n * n];
    for i in 0..n {
        for j in 0..n {
            let mut s = 0.0;
            for k in 0..n {
                s += a[i * n + k] * if trans_b { b[j * n + k] } else { b[k * n + j] };
            }
            c[i * n + j] = s;
        }
    }
    c
}

/// Kolmogorov–Smirnov statistic of `x` against the continuous CDF `cdf`.
fn ks(mut x: Vec<f64>, cdf: impl Fn(f64) -> f64) -> f64 {
    x.sort_by(f64::total_cmp);
    let k = x.len() as f64;
    x.iter().enumerate().fold(0.0, |d, (i, &v)| {
        let f = cdf(v);
        d.max((i as f64 + 1.0) / k - f).max(f - i as f64 / k)
    })
}
/// The KS critical value at level 0.001 for `k` samples (asymptotic: √(−ln(α/2)/2)/√k = 1.949/√k).
fn ks_critical(k: usize) -> f64 {
    1.949 / (k as f64).sqrt()
}
/// erfc with fractional error < 1.2e-7 (Numerical Recipes' Chebyshev fit), ample for a KS test.
fn erfc(x: f64) -> f64 {
    let z = x.abs();
    let t = 1.0 / (1.0 + 0.5 * z);
    let p = -z * z - 1.265_512_23
        + t * (1.000_023_68
            + t * (0.374_091_96
                + t * (0.096_784_18
                    + t * (-0.186_288_06
                        + t * (0.278_868_07
                            + t * (-1.135_203_98
                                + t * (1.488_515_87 + t * (-0.822_152_23 + t * 0.170_872_77))))))));
    let r = t * p.exp();
    if x >= 0.0 {
        r
    } else {
        2.0 - r
    }
}
fn normal_cdf(x: f64) -> f64 {
    0.5 * erfc(-x / std::f64::consts::SQRT_2)
}
/// CDF of one coordinate of a uniform point on the sphere S^{n−1} (= of any entry of a Haar O(n) matrix):
/// density ∝ (1 − t²)^{(n−3)/2} on [−1, 1], integrated by the trapezoid rule on a fine grid.
fn sphere_coordinate_cdf(n: usize) -> impl Fn(f64) -> f64 {
    let m = 200_000;
    let h = 2.0 / m as f64;
    let dens = |t: f64| (1.0 - t * t).max(0.0).powf((n as f64 - 3.0) / 2.0);
    let mut cum = vec![0.0; m + 1];
    for i in 1..=m {
        let (a, b) = (-1.0 + (i - 1) as f64 * h, -1.0 + i as f64 * h);
        cum[i] = cum[i - 1] + 0.5 * h * (dens(a) + dens(b));
    }
    let total = cum[m];
    move |x: f64| {
        let u = ((x + 1.0) / h).clamp(0.0, m as f64);
        let i = (u.floor() as usize).min(m - 1);
        let f = u - i as f64;
        ((1.0 - f) * cum[i] + f * cum[i + 1]) / total
    }
}

// ---- Haar sampler --------------------------------------------------------------------------------------

#[test]
fn haar_is_orthogonal() {
    let mut rng = Rng::new(1);
    for n in [1, 2, 3, 7, 16, 64, 257] {
        let r = haar(n, &mut rng);
        let eye = identity(n);
        assert_close_scaled(
            &format!("R·Rᵀ (n={n})"),
            &matmul(&r, &r, n, true),
            &eye,
            1e-12,
        );
        let rt: Vec<f64> = (0..n * n).map(|i| r[(i % n) * n + i / n]).collect();
        assert_close_scaled(
            &format!("Rᵀ·R (n={n})"),
            &matmul(&rt, &rt, n, true),
            &eye,
            1e-12,
        );
        // Cast to f32 and multiplied in f32 (as the fp32 path uses it).
        let r32: Vec<f32> = cast(&r);
        let mut p = vec![0.0f32; n * n];
        f32::gemm(&mut p, &r32, &r32, n, n, n, false, true, false, 1);
        assert_close_scaled(&format!("R·Rᵀ in f32 (n={n})"), &back(&p), &eye, 1e-5);
    }
}

#[test]
fn haar_determinant_is_plus_or_minus_one_and_both_occur() {
    let (mut pos, mut neg) = (0, 0);
    for seed in 0..40 {
        let n = 5;
        let r = haar(n, &mut Rng::new(seed));
        let det = Mat::<f64>::from_fn(n, n, |i, j| r[i * n + j]).determinant();
        assert!((det.abs() - 1.0).abs() < 1e-12, "seed {seed}: det {det}");
        if det > 0.0 {
            pos += 1
        } else {
            neg += 1
        }
    }
    assert!(
        pos > 5 && neg > 5,
        "det signs over 40 seeds: {pos} × +1, {neg} × −1"
    );
    // n = 1: R_1 = ±1, both signs.
    let signs: Vec<f64> = (0..20).map(|s| haar(1, &mut Rng::new(s))[0]).collect();
    assert!(signs.iter().all(|s| s.abs() == 1.0), "{signs:?}");
    assert!(signs.contains(&1.0) && signs.contains(&-1.0), "{signs:?}");
}

#[test]
fn haar_first_entry_has_mean_square_one_over_n() {
    // R₁₁² of a Haar O(n) matrix is Beta(1/2, (n−1)/2): mean 1/n, variance 2(n−1)/(n²(n+2)).
    // The mean of K draws is within 5 standard errors with probability 1 − 6e-7.
    let (n, k) = (8usize, 20_000usize);
    let mut rng = Rng::new(2);
    let mean = (0..k).map(|_| haar(n, &mut rng)[0].powi(2)).sum::<f64>() / k as f64;
    let nf = n as f64;
    let se = (2.0 * (nf - 1.0) / (nf * nf * (nf + 2.0)) / k as f64).sqrt();
    assert!(
        (mean - 1.0 / nf).abs() < 5.0 * se,
        "E[R11²] = {mean:.5}, expected {:.5} ± {:.5}",
        1.0 / nf,
        5.0 * se
    );
}

/// Distribution tests at n = 16 over K = 4000 draws (KS at level 0.001):
/// (a) every entry of a Haar O(n) matrix is distributed as a coordinate of a uniform point on S^{n−1}; draw
///     k tests the diagonal entry (k mod n, k mod n), so all diagonal positions are covered by iid samples;
/// (b) tr(R) of Haar O(n) is N(0, 1) up to an error that vanishes faster than any power of n (Diaconis &
///     Shahshahani 1994; Johansson 1997) — far below the KS resolution at n = 16.
///
/// Why not the eigenvalue phases: Mezzadri's uniform-phase picture is for U(n). For real O(n) the phases
/// are NOT uniform (eigenvalues come in conjugate pairs, det = −1 forces eigenvalues +1 and −1 exactly, and
/// the pairs repel from ±1), so a uniformity test of the phases would reject a correct sampler.
fn haar_statistics(sample: fn(usize, &mut Rng) -> Vec<f64>, seed: u64) -> (f64, f64) {
    let (n, k) = (16usize, 4000usize);
    let mut rng = Rng::new(seed);
    let (mut diag, mut trace) = (Vec::with_capacity(k), Vec::with_capacity(k));
    for draw in 0..k {
        let r = sample(n, &mut rng);
        let j = draw % n;
        diag.push(r[j * n + j]);
        trace.push((0..n).map(|i| r[i * n + i]).sum());
    }
    (ks(diag, sphere_coordinate_cdf(n)), ks(trace, normal_cdf))
}

#[test]
fn haar_passes_distribution_tests() {
    let crit = ks_critical(4000);
    let (d_diag, d_trace) = haar_statistics(haar, 3);
    println!("haar: KS diagonal {d_diag:.4}, KS trace {d_trace:.4} (critical {crit:.4})");
    assert!(
        d_diag < crit,
        "diagonal entries: KS {d_diag:.4} ≥ {crit:.4}"
    );
    assert!(
        d_trace < crit,
        "trace vs N(0,1): KS {d_trace:.4} ≥ {crit:.4}"
    );
}

#[test]
fn qr_without_sign_fix_fails_distribution_tests() {
    let crit = ks_critical(4000);
    let (d_diag, d_trace) = haar_statistics(qr_q_unsigned, 3);
    println!("unsigned QR: KS diagonal {d_diag:.4}, KS trace {d_trace:.4} (critical {crit:.4})");
    assert!(
        d_diag > crit,
        "diagonal entries should reject: KS {d_diag:.4} ≤ {crit:.4}"
    );
    assert!(
        d_trace > crit,
        "trace should reject: KS {d_trace:.4} ≤ {crit:.4}"
    );
}

// ---- scopes --------------------------------------------------------------------------------------------

/// A very small GPT-2 with biases (d = 618): dense checks are cheap and every group is short.
fn micro() -> ModelConfig {
    ModelConfig {
        n_layer: 1,
        n_head: 2,
        n_embd: 6,
        seq_len: 5,
        vocab_size: 11,
        bias: true,
    }
}
/// The `tiny` preset with biases (d ≈ 7.9k; groups of 16 … 1024).
fn tiny() -> ModelConfig {
    ModelConfig {
        bias: true,
        ..ModelConfig::preset("tiny").unwrap()
    }
}
const SCOPES: [Scope; 5] = [
    Scope::None,
    Scope::Global,
    Scope::Layer,
    Scope::Output,
    Scope::Input,
];

/// Every combination of `--vector-rotation` and `--embedding-rotation`.
fn all_neurons() -> Vec<Neurons> {
    let mut out = Vec::new();
    for vectors in [VectorRotation::Mixed, VectorRotation::Neuron] {
        for embeddings in [
            EmbeddingRotation::Paper,
            EmbeddingRotation::Head,
            EmbeddingRotation::None,
        ] {
            out.push(Neurons {
                vectors,
                embeddings,
            });
        }
    }
    out
}

#[test]
fn scope_groups_cover_every_index_once() {
    for cfg in [micro(), tiny()] {
        let table = ParamTable::new(&cfg);
        for neurons in all_neurons() {
            for scope in &SCOPES[1..] {
                let mut seen = vec![0u32; table.total];
                let all = groups_with(*scope, neurons, &table);
                for g in all.iter().chain(&unrotated(*scope, neurons, &table)) {
                    for i in g.indices() {
                        seen[i] += 1;
                    }
                }
                let bad: Vec<usize> = (0..table.total).filter(|&i| seen[i] != 1).take(5).collect();
                assert!(
                    bad.is_empty(),
                    "{scope} {neurons}: indices not covered exactly once: {bad:?}"
                );
            }
            assert!(groups_with(Scope::None, neurons, &table).is_empty());
        }
        assert!(groups(Scope::None, &table).is_empty());
    }
}

#[test]
fn scope_groups_follow_the_paper() {
    let table = ParamTable::new(&tiny());
    let q = table.entries[table.layers[0].q].clone();
    let wte = table.entries[table.wte].clone();
    let ln = table.entries[table.layers[1].ln2_w].clone();
    let find = |scope: Scope, i: usize| -> Vec<usize> {
        let g = groups(scope, &table);
        let g = g.iter().find(|g| g.indices().any(|j| j == i)).unwrap();
        g.indices().collect()
    };
    // q is (out, in) = (C, C): output group = row 3, input group = column 5.
    let row3: Vec<usize> = (0..q.cols).map(|j| q.offset + 3 * q.cols + j).collect();
    assert_eq!(find(Scope::Output, row3[2]), row3);
    let col5: Vec<usize> = (0..q.rows).map(|i| q.offset + i * q.cols + 5).collect();
    assert_eq!(find(Scope::Input, col5[4]), col5);
    // wte is (V, C) = (in, out): output group = column (channel) 2, input group = row (token) 7.
    let wcol2: Vec<usize> = (0..wte.rows)
        .map(|i| wte.offset + i * wte.cols + 2)
        .collect();
    assert_eq!(find(Scope::Output, wcol2[9]), wcol2);
    let wrow7: Vec<usize> = (0..wte.cols)
        .map(|j| wte.offset + 7 * wte.cols + j)
        .collect();
    assert_eq!(find(Scope::Input, wrow7[0]), wrow7);
    // A 1-D tensor is one group under layer; under output and input each of its coordinates is its own
    // group by default (a gain belongs to its neuron alone), and the tensor is one group with `mixed`.
    assert_eq!(
        find(Scope::Layer, ln.offset + 1),
        ln.range().collect::<Vec<_>>()
    );
    let mixed = Neurons {
        vectors: VectorRotation::Mixed,
        ..Neurons::default()
    };
    for scope in [Scope::Output, Scope::Input] {
        assert_eq!(find(scope, ln.offset + 1), vec![ln.offset + 1], "{scope}");
        let g = groups_with(scope, mixed, &table);
        let g = g.iter().find(|g| g.offset == ln.offset).unwrap();
        assert_eq!(
            g.indices().collect::<Vec<_>>(),
            ln.range().collect::<Vec<_>>(),
            "{scope} mixed"
        );
    }
    assert_eq!(
        find(Scope::Layer, q.offset + 7),
        q.range().collect::<Vec<_>>()
    );
    assert_eq!(find(Scope::Global, 0).len(), table.total);
    assert_eq!(groups(Scope::Layer, &table).len(), table.entries.len());
    assert!(table.entries.iter().any(|e| e.role == Role::QBias));
}

#[test]
fn scope_parses_and_lists_valid_names() {
    for s in SCOPES {
        assert_eq!(s.to_string().parse::<Scope>().unwrap(), s);
        assert_eq!(serde_json::to_string(&s).unwrap(), format!("\"{s}\""));
    }
    let err = "svd2".parse::<Scope>().unwrap_err().to_string();
    assert!(err.contains("none, global, layer, output, input"), "{err}");
}

// ---- Rotation ------------------------------------------------------------------------------------------

fn build<S: Scalar>(
    cfg: &ModelConfig,
    scope: Scope,
    n: usize,
    seed: u64,
) -> (CpuBackend<S>, Rotation<CpuBackend<S>>) {
    let be = CpuBackend::<S>::new(2, false);
    let table = ParamTable::new(cfg);
    let rot = Rotation::new(&be, scope, n, seed, &table).unwrap();
    (be, rot)
}
fn apply<S: Scalar>(
    be: &CpuBackend<S>,
    rot: &Rotation<CpuBackend<S>>,
    x: &[f64],
    forward: bool,
) -> Vec<f64> {
    let inp: Vec<S> = cast(x);
    let mut out = vec![S::zero(); x.len()];
    if forward {
        rot.rotate(be, &mut out, &inp).unwrap();
    } else {
        rot.unrotate(be, &mut out, &inp).unwrap();
    }
    back(&out)
}

/// Inverse both ways, isometry and linearity, in one precision.
fn check_rotation<S: Scalar>(cfg: &ModelConfig, scope: Scope, n: usize, tol: f64) {
    let (be, rot) = build::<S>(cfg, scope, n, 11);
    let d = rot.dim();
    let label = format!("{} {}", S::NAME, rot.describe());
    let mut rng = Rng::new(5);
    let (a, b) = (randn(&mut rng, d, 1.0), randn(&mut rng, d, 1.0));
    let ra = apply(&be, &rot, &a, true);
    assert_close_scaled(
        &format!("{label}: unrotate∘rotate"),
        &apply(&be, &rot, &ra, false),
        &a,
        tol,
    );
    let ub = apply(&be, &rot, &b, false);
    assert_close_scaled(
        &format!("{label}: rotate∘unrotate"),
        &apply(&be, &rot, &ub, true),
        &b,
        tol,
    );
    let (na, nra) = (norm(&a), norm(&ra));
    assert!(
        (na - nra).abs() <= tol * na,
        "{label}: ‖Ra‖ = {nra}, ‖a‖ = {na}"
    );
    let ab: Vec<f64> = a.iter().zip(&b).map(|(x, y)| x + y).collect();
    let rb = apply(&be, &rot, &b, true);
    let sum: Vec<f64> = ra.iter().zip(&rb).map(|(x, y)| x + y).collect();
    assert_close_scaled(
        &format!("{label}: R(a+b) = Ra + Rb"),
        &apply(&be, &rot, &ab, true),
        &sum,
        tol,
    );
    if scope == Scope::None {
        assert!(rot.is_identity());
        assert_eq!(ra, back::<S>(&cast(&a)), "{label}: identity must copy");
    } else {
        assert!(!rot.is_identity());
        assert!(max_abs(&ra.iter().zip(&a).map(|(x, y)| x - y).collect::<Vec<_>>()) > 1e-3);
    }
}

#[test]
fn rotation_inverse_isometry_linearity_every_scope() {
    // n = 7 divides no group size of either model; 1 is a signed permutation; 1000 exceeds every group
    // of `micro` (d = 618), so everything is residual; 40 exceeds every 1-D tensor and row of `tiny`.
    for scope in SCOPES {
        for (cfg, n) in [
            (micro(), 7),
            (micro(), 1),
            (micro(), 1000),
            (tiny(), 7),
            (tiny(), 40),
        ] {
            check_rotation::<f64>(&cfg, scope, n, 1e-12);
            check_rotation::<f32>(&cfg, scope, n, 1e-5);
        }
    }
}

#[test]
fn rotation_is_orthogonal_as_a_dense_matrix() {
    // Column j of the d×d matrix = rotate(e_j). MᵀM = I checks every block, permutation and residual.
    let cfg = micro();
    for scope in &SCOPES[1..] {
        let (be, rot) = build::<f64>(&cfg, *scope, 7, 4);
        let d = rot.dim();
        let mut m = vec![0.0; d * d]; // row j = rotate(e_j) = column j of M
        let mut e = vec![0.0; d];
        for j in 0..d {
            e[j] = 1.0;
            let col = apply(&be, &rot, &e, true);
            m[j * d..(j + 1) * d].copy_from_slice(&col);
            e[j] = 0.0;
        }
        let mtm = matmul(&m, &m, d, true); // rows of the stored matrix are columns of M: (MᵀM)
        assert_close_scaled(&format!("{scope}: MᵀM"), &mtm, &identity(d), 1e-12);
    }
}

#[test]
fn rotation_mixes_only_within_groups() {
    // Rᵀ·D·R with a positive diagonal D (what Adam's division does) maps a vector supported on one group
    // into that group: the rotation never mixes two groups.
    let cfg = tiny();
    let table = ParamTable::new(&cfg);
    for scope in [Scope::Layer, Scope::Output, Scope::Input] {
        let (be, rot) = build::<f64>(&cfg, scope, 7, 9);
        let gs = groups(scope, &table);
        let mut rng = Rng::new(8);
        let dscale: Vec<f64> = (0..rot.dim()).map(|_| 0.5 + rng.uniform()).collect();
        // wte's first group, q's fifth group (row or column), and a 1-D tensor's first coordinate
        let q = &table.entries[table.layers[1].q];
        let pick = [
            0,
            gs.iter().position(|g| g.offset >= q.offset).unwrap() + 4,
            gs.iter()
                .position(|g| g.offset == table.entries[table.lnf_w].offset)
                .unwrap(),
        ];
        for gi in pick {
            let mut x = vec![0.0; rot.dim()];
            for i in gs[gi].indices() {
                x[i] = 1.0 + rng.uniform();
            }
            let mut y = apply(&be, &rot, &x, true);
            y.iter_mut().zip(&dscale).for_each(|(y, s)| *y *= s);
            let z = apply(&be, &rot, &y, false);
            let inside: Vec<usize> = gs[gi].indices().collect();
            let leak = (0..z.len())
                .filter(|i| !inside.contains(i))
                .fold(0.0f64, |m, i| m.max(z[i].abs()));
            assert!(
                leak < 1e-12,
                "{scope}, group {gi}: leaked {leak:.3e} outside the group"
            );
            assert!(max_abs(&z) > 0.1, "{scope}: nothing left inside the group");
        }
    }
}

#[test]
fn rotation_is_seeded() {
    let cfg = tiny();
    let x = randn(&mut Rng::new(1), ParamTable::new(&cfg).total, 1.0);
    for scope in &SCOPES[1..] {
        let (be, r1) = build::<f32>(&cfg, *scope, 7, 42);
        let (_, r2) = build::<f32>(&cfg, *scope, 7, 42);
        let (_, r3) = build::<f32>(&cfg, *scope, 7, 43);
        let (y1, y2, y3) = (
            apply(&be, &r1, &x, true),
            apply(&be, &r2, &x, true),
            apply(&be, &r3, &x, true),
        );
        assert!(y1 == y2, "{scope}: same seed, different rotation");
        assert!(y1 != y3, "{scope}: different seeds, same rotation");
        assert_eq!((r1.seed(), r1.block(), r1.scope()), (42, 7, *scope));
    }
}

#[test]
fn block_one_is_a_signed_permutation() {
    // n = 1: every block is ±1, so the rotated vector holds exactly the input values up to sign.
    let cfg = tiny();
    let x = randn(&mut Rng::new(2), ParamTable::new(&cfg).total, 1.0);
    for scope in &SCOPES[1..] {
        let (be, rot) = build::<f32>(&cfg, *scope, 1, 3);
        let y = apply(&be, &rot, &x, true);
        let mut a: Vec<f64> = back::<f32>(&cast(&x)).iter().map(|v| v.abs()).collect();
        let mut b: Vec<f64> = y.iter().map(|v| v.abs()).collect();
        a.sort_by(f64::total_cmp);
        b.sort_by(f64::total_cmp);
        assert!(a == b, "{scope}: n = 1 is not a signed permutation");
        let flips = y
            .iter()
            .zip(&x)
            .filter(|(a, b)| a.signum() != b.signum())
            .count();
        assert!(flips > 0, "{scope}: no sign flips at all");
    }
}

/// The position of the rotated layout placed at each standard index (`Rotation::layout_index` inverted).
fn position_of<S: Scalar>(be: &CpuBackend<S>, rot: &Rotation<CpuBackend<S>>) -> Vec<usize> {
    let layout = rot.layout_index(be);
    let mut pos = vec![usize::MAX; layout.len()];
    for (p, &i) in layout.iter().enumerate() {
        pos[i] = p;
    }
    pos
}

/// A LayerNorm gain γⱼ under `output` (and `input`) belongs to neuron j alone by default: the rotated
/// coordinate placed at γⱼ is ±γⱼ, whatever the other gains are; with `--vector-rotation mixed` it mixes
/// the gains of its LayerNorm (and nothing else). Checked planting the old grouping as the default
/// (`neuron` building one group per tensor): the first half fails.
#[test]
fn layernorm_gain_is_its_neurons_alone_unless_mixed() {
    let cfg = tiny();
    let table = ParamTable::new(&cfg);
    let be = CpuBackend::<f64>::new(1, false);
    let x = randn(&mut Rng::new(12), table.total, 1.0);
    let gains: Vec<usize> = table
        .entries
        .iter()
        .filter(|e| e.role.is_layernorm_gain())
        .flat_map(|e| e.range())
        .collect();
    assert_eq!(gains.len(), 5 * cfg.n_embd);
    for scope in [Scope::Output, Scope::Input] {
        for n in [4, 7, 16] {
            let rot = Rotation::new(&be, scope, n, 5, &table).unwrap();
            let (y, pos) = (apply(&be, &rot, &x, true), position_of(&be, &rot));
            for &j in &gains {
                assert!(
                    (y[pos[j]].abs() - x[j].abs()).abs() <= 1e-15 * x[j].abs(),
                    "{scope} n={n}: the coordinate at gain {j} is {}, not ±γⱼ = ±{}",
                    y[pos[j]],
                    x[j]
                );
            }
            // the same gain with every other coordinate changed: the same rotated coordinate
            let mut x2 = randn(&mut Rng::new(13), table.total, 1.0);
            for &j in &gains {
                x2[j] = x[j];
            }
            let y2 = apply(&be, &rot, &x2, true);
            assert!(gains.iter().all(|&j| y2[pos[j]] == y[pos[j]]), "{scope}");

            let mixed = Neurons {
                vectors: VectorRotation::Mixed,
                ..Neurons::default()
            };
            let rot = Rotation::with_neurons(&be, scope, n, 5, mixed, &table).unwrap();
            let (y, pos) = (apply(&be, &rot, &x, true), position_of(&be, &rot));
            let ln = &table.entries[table.layers[1].ln2_w];
            let moved = ln
                .range()
                .filter(|&j| (y[pos[j]].abs() - x[j].abs()).abs() > 1e-9)
                .count();
            assert!(
                moved > ln.len() / 2,
                "{scope} n={n} mixed: only {moved} of {} gains were mixed",
                ln.len()
            );
            // mixed only with its own LayerNorm: e_j rotates onto positions placed inside the tensor
            let layout = rot.layout_index(&be);
            let mut e = vec![0.0; table.total];
            e[ln.offset + 3] = 1.0;
            let ye = apply(&be, &rot, &e, true);
            for (p, v) in ye.iter().enumerate() {
                if *v != 0.0 {
                    assert!(
                        ln.range().contains(&layout[p]),
                        "{scope} n={n}: leak to {p}"
                    );
                }
            }
        }
    }
}

/// The standard indices at which `rotate(e_i)` is non-zero, for each i of `indices`.
fn supports<S: Scalar>(
    be: &CpuBackend<S>,
    rot: &Rotation<CpuBackend<S>>,
    indices: impl Iterator<Item = usize>,
) -> Vec<Vec<usize>> {
    let layout = rot.layout_index(be);
    let mut e = vec![0.0; rot.dim()];
    indices
        .map(|i| {
            e[i] = 1.0;
            let y = apply(be, rot, &e, true);
            e[i] = 0.0;
            (0..y.len())
                .filter(|&p| y[p] != 0.0)
                .map(|p| layout[p])
                .collect()
        })
        .collect()
}

/// `--embedding-rotation` touches what it says, under `output` (and transposed under `input`): `paper`
/// mixes a column of wte across tokens, `head` a row across channels, `none` leaves wte and wpe exactly
/// as they are. wpe is transposed under both `paper` and `head`. Checked planting `head` as `paper` and
/// `none` as `paper`: both fail.
#[test]
fn embedding_rotation_modes_touch_what_they_say() {
    let table = ParamTable::new(&tiny());
    let be = CpuBackend::<f64>::new(1, false);
    let wte = table.entries[table.wte].clone();
    let wpe = table.entries[table.wpe].clone();
    let c = wte.cols;
    let token = |i: usize| (i - wte.offset) / c;
    let channel = |i: usize| (i - wte.offset) % c;
    let x = randn(&mut Rng::new(3), table.total, 1.0);
    for scope in [Scope::Output, Scope::Input] {
        for embeddings in [
            EmbeddingRotation::Paper,
            EmbeddingRotation::Head,
            EmbeddingRotation::None,
        ] {
            let neurons = Neurons {
                embeddings,
                ..Neurons::default()
            };
            let rot = Rotation::with_neurons(&be, scope, 16, 9, neurons, &table).unwrap();
            let label = format!("{scope} {embeddings}");
            if embeddings == EmbeddingRotation::None {
                let (y, pos) = (apply(&be, &rot, &x, true), position_of(&be, &rot));
                for i in wte.range().chain(wpe.range()) {
                    assert_eq!(y[pos[i]], x[i], "{label}: embedding coordinate {i} changed");
                }
                // 64·16 + 16·16 = 1,280 coordinates
                assert_eq!(wte.len() + wpe.len(), 1280);
                assert!(
                    rot.describe().ends_with(" + 1,280 unrotated"),
                    "{}",
                    rot.describe()
                );
                continue;
            }
            // is a group of wte a column (all tokens of one channel) or a row (all channels of one token)?
            let column = (scope == Scope::Output) == (embeddings == EmbeddingRotation::Paper);
            let sup = supports(&be, &rot, wte.range());
            for (i, s) in wte.range().zip(&sup) {
                let same = |j: &usize| {
                    wte.range().contains(j)
                        && if column {
                            channel(*j) == channel(i)
                        } else {
                            token(*j) == token(i)
                        }
                };
                assert!(s.iter().all(same), "{label}: wte[{i}] leaks to {s:?}");
                // a block of 16 mixes 16 coordinates: a whole row (16 channels) or 16 of 64 tokens
                assert_eq!(s.len(), 16, "{label}: wte[{i}] mixed with {s:?}");
            }
            // wpe is no head: transposed under paper and head alike (a column under output)
            let wpe_column = scope == Scope::Output;
            for (i, s) in wpe.range().zip(supports(&be, &rot, wpe.range())) {
                let (t, ch) = ((i - wpe.offset) / c, (i - wpe.offset) % c);
                assert!(
                    s.iter().all(|&j| wpe.range().contains(&j)
                        && if wpe_column {
                            (j - wpe.offset) % c == ch
                        } else {
                            (j - wpe.offset) / c == t
                        }),
                    "{label}: wpe[{i}] leaks to {s:?}"
                );
            }
        }
    }
}

/// `--embedding-rotation none` keeps wte and wpe out of `layer` and `global` too, which still mix every
/// other coordinate (global across tensors); there `paper` and `head` are one and the same rotation.
/// Checked planting the old `global` (one group over everything whatever the setting): fails.
#[test]
fn embedding_rotation_none_under_layer_and_global() {
    let table = ParamTable::new(&tiny());
    let be = CpuBackend::<f64>::new(1, false);
    let (wte, wpe) = (&table.entries[table.wte], &table.entries[table.wpe]);
    let emb = wte.len() + wpe.len();
    let x = randn(&mut Rng::new(5), table.total, 1.0);
    let with = |scope, embeddings| {
        let neurons = Neurons {
            embeddings,
            ..Neurons::default()
        };
        Rotation::with_neurons(&be, scope, 16, 9, neurons, &table).unwrap()
    };
    for scope in [Scope::Layer, Scope::Global] {
        let rot = with(scope, EmbeddingRotation::None);
        let (y, pos) = (apply(&be, &rot, &x, true), position_of(&be, &rot));
        for i in wte.range().chain(wpe.range()) {
            assert_eq!(y[pos[i]], x[i], "{scope}: embedding coordinate {i} changed");
        }
        let d = rot.describe();
        assert_eq!(emb, 1280);
        assert!(d.ends_with(" + 1,280 unrotated"), "{d}");
        // every other coordinate is still mixed, never with an embedding
        let rest = emb..table.total;
        for s in supports(&be, &rot, rest.clone()) {
            assert!(
                s.len() > 1 && s.iter().all(|j| rest.contains(j)),
                "{scope}: {s:?}"
            );
        }
        let paper = apply(&be, &with(scope, EmbeddingRotation::Paper), &x, true);
        let head = apply(&be, &with(scope, EmbeddingRotation::Head), &x, true);
        assert_eq!(paper, head, "{scope}: paper and head differ");
    }
    // global mixes across tensors: some coordinate of the first block leaks into another tensor
    let rot = with(Scope::Global, EmbeddingRotation::None);
    let entry_of = |i: usize| table.entries.iter().position(|e| e.range().contains(&i));
    let crosses = supports(&be, &rot, emb..table.total)
        .iter()
        .zip(emb..)
        .any(|(s, i)| s.iter().any(|&j| entry_of(j) != entry_of(i)));
    assert!(crosses, "global without embeddings no longer mixes tensors");
}

/// A `config.json` written before `rotation.vectors` and `rotation.embeddings` existed reads as what it
/// ran (`mixed`, `paper`), `--config` replays it so, and a new run gets `neuron`. Checked planting the
/// serde default of `vectors` as `neuron`: fails.
#[test]
fn an_old_config_without_the_neuron_fields_keeps_its_rotation() {
    use rotadam::config::RunConfig;
    use rotadam::rotation::basis::Basis;
    use rotadam::run::options::RunOptions;
    let root = crate::util::tmp("old-config");
    let mut cfg = crate::util::tiny_config(&root, &root.join("run"), 4);
    cfg.rotation.kind = "output".parse().unwrap();
    cfg.rotation.block = 7;
    let mut json = serde_json::to_value(&cfg).unwrap();
    let rot = json["rotation"].as_object_mut().unwrap();
    assert_eq!(rot["vectors"], "neuron", "a new config records its neurons");
    assert_eq!(rot["embeddings"], "paper");
    rot.remove("vectors");
    rot.remove("embeddings");
    let path = root.join("config.json");
    std::fs::write(&path, serde_json::to_string_pretty(&json).unwrap()).unwrap();

    let old = RunConfig::read(&path).unwrap();
    assert_eq!(old.rotation.vectors, VectorRotation::Mixed);
    assert_eq!(old.rotation.embeddings, EmbeddingRotation::Paper);
    let replay = RunOptions {
        config: Some(path.clone()),
        out: Some(root.join("again")),
        quiet: true,
        ..Default::default()
    };
    let (again, _) = replay.to_config().unwrap();
    assert_eq!(
        again.rotation, old.rotation,
        "--config replays the old rotation"
    );
    // the rotation it builds mixes each LayerNorm's gains, as the old code did
    let be = CpuBackend::<f64>::new(1, false);
    let table = ParamTable::new(&again.model);
    let basis = Basis::new(&be, &again.rotation, &table).unwrap();
    assert!(
        basis.describe().contains("1-D tensors mixed"),
        "{}",
        basis.describe()
    );
    let Basis::Block(rot) = &basis else {
        panic!("a block rotation")
    };
    assert_eq!(
        rot.segments(),
        Rotation::with_neurons(
            &be,
            Scope::Output,
            7,
            again.rotation.seed,
            Neurons {
                vectors: VectorRotation::Mixed,
                embeddings: EmbeddingRotation::Paper,
            },
            &table
        )
        .unwrap()
        .segments()
    );
    // a new run gets the paper's neurons, and the options set them
    let fresh = RunOptions {
        model: Some("tiny".into()),
        rotation: Some("output".parse().unwrap()),
        out: Some(root.join("new")),
        ..Default::default()
    };
    let (new, _) = fresh.to_config().unwrap();
    assert_eq!(new.rotation.vectors, VectorRotation::Neuron);
    assert_eq!(new.rotation.embeddings, EmbeddingRotation::Paper);
    let (set, _) = RunOptions {
        vector_rotation: Some(VectorRotation::Mixed),
        embedding_rotation: Some(EmbeddingRotation::Head),
        ..fresh.clone()
    }
    .to_config()
    .unwrap();
    assert_eq!(
        (set.rotation.vectors, set.rotation.embeddings),
        (VectorRotation::Mixed, EmbeddingRotation::Head)
    );
    // and refuses them where nothing uses them: neurons outside the neuron scopes, embeddings under svd
    for (rotation, vector_rotation, embedding_rotation, flag) in [
        (
            "layer",
            Some(VectorRotation::Mixed),
            None,
            "--vector-rotation",
        ),
        (
            "svd",
            None,
            Some(EmbeddingRotation::None),
            "--embedding-rotation",
        ),
        (
            "none",
            None,
            Some(EmbeddingRotation::None),
            "--embedding-rotation",
        ),
    ] {
        let err = RunOptions {
            rotation: Some(rotation.parse().unwrap()),
            vector_rotation,
            embedding_rotation,
            ..fresh.clone()
        };
        let (c, _) = err.to_config().unwrap();
        let e = err.check_used(&c).unwrap_err().to_string();
        assert!(e.contains(flag), "{rotation}: {e}");
    }
    // layer and global use only whether the embeddings are rotated: none is taken, head warns
    for rotation in ["layer", "global"] {
        let with = |e| RunOptions {
            rotation: Some(rotation.parse().unwrap()),
            embedding_rotation: Some(e),
            ..fresh.clone()
        };
        let none = with(EmbeddingRotation::None);
        assert_eq!(
            none.check_used(&none.to_config().unwrap().0).unwrap(),
            Vec::<String>::new()
        );
        let head = with(EmbeddingRotation::Head);
        let w = head.check_used(&head.to_config().unwrap().0).unwrap();
        assert!(w.len() == 1 && w[0].contains("same as paper"), "{w:?}");
    }
    std::fs::remove_dir_all(&root).unwrap();
}

#[test]
fn describe_counts_blocks() {
    let (_, rot) = build::<f32>(&micro(), Scope::Global, 100, 0);
    assert_eq!(
        rot.describe(),
        "global, n=100: 6 blocks of 100 + 1 residual block of 18"
    );
    let (_, rot) = build::<f32>(&ModelConfig::preset("124m").unwrap(), Scope::None, 768, 0);
    assert_eq!(rot.describe(), "none (identity), 124,337,664 coordinates");
    // micro: wte 11×6, wpe 5×6; under output, 12 columns of 11 or 5, 13 gains alone; 6-wide rows
    let (_, rot) = build::<f32>(&micro(), Scope::Output, 100, 0);
    assert!(
        rot.describe().starts_with(
            "output (1-D tensors per neuron, embeddings paper), n=100: 0 blocks of 100 + "
        ),
        "{}",
        rot.describe()
    );
    let seg = build::<f32>(&tiny(), Scope::Output, 7, 0).1.segments();
    assert_eq!(seg[0].offset, 0);
    for w in seg.windows(2) {
        assert_eq!(w[0].offset + w[0].count * w[0].size, w[1].offset);
    }
    let last = seg.last().unwrap();
    assert_eq!(
        last.offset + last.count * last.size,
        ParamTable::new(&tiny()).total
    );
}

// ---- backend ops ---------------------------------------------------------------------------------------

/// The ops on random (non-orthogonal) R against a naive f64 loop, for both precisions, thread counts and
/// both ways of moving the coordinates.
fn check_ops<S: Scalar>(nb: usize, n: usize, len: usize, threads: usize, tol: f64) {
    for mode in [GatherMode::Direct, GatherMode::Bucketed] {
        check_ops_with::<S>(nb, n, len, threads, tol, mode);
    }
}

fn check_ops_with<S: Scalar>(
    nb: usize,
    n: usize,
    len: usize,
    threads: usize,
    tol: f64,
    mode: GatherMode,
) {
    let mut rng = Rng::new((nb * 31 + n) as u64);
    let inp = randn(&mut rng, len, 1.0);
    let r = randn(&mut rng, n * n, 1.0);
    let mut perm: Vec<u32> = (0..len as u32).collect();
    shuffle(&mut perm, &mut rng);
    let index = &perm[..nb * n];
    let be = CpuBackend::<S>::new(threads, false).with_gather(mode);
    let ix = be.rotation_index(index.to_vec(), n, len).unwrap();
    assert_eq!(
        ix.is_bucketed(),
        mode == GatherMode::Bucketed && n > 0,
        "{mode:?}"
    );
    assert_eq!(
        be.rotation_index_list(&ix),
        index,
        "{mode:?}: the list back"
    );
    let label = format!("{} nb={nb} n={n} threads={threads} {mode:?}", S::NAME);
    // rotate
    let mut want = vec![0.0; nb * n];
    for b in 0..nb {
        for i in 0..n {
            want[b * n + i] = (0..n)
                .map(|k| r[i * n + k] * inp[index[b * n + k] as usize])
                .sum();
        }
    }
    let (inp_s, r_s): (Vec<S>, Vec<S>) = (cast(&inp), cast(&r));
    let mut out = vec![S::zero(); nb * n];
    be.rotate(&mut out, &inp_s, &ix, &r_s, nb, n).unwrap();
    assert_close_scaled(&format!("rotate {label}"), &back(&out), &want, tol);
    // unrotate: out[index[b·n+i]] = Σ_k R[k][i] u[b·n+k]; other entries untouched
    let u = randn(&mut rng, nb * n, 1.0);
    let sentinel = 7.5;
    let mut want = vec![sentinel; len];
    for b in 0..nb {
        for i in 0..n {
            want[index[b * n + i] as usize] = (0..n).map(|k| r[k * n + i] * u[b * n + k]).sum();
        }
    }
    let mut out = vec![<S as Scalar>::from_f64(sentinel); len];
    be.unrotate(&mut out, &cast::<S>(&u), &ix, &r_s, nb, n)
        .unwrap();
    assert_close_scaled(&format!("unrotate {label}"), &back(&out), &want, tol);
    check_fused_adamw(&be, &ix, &inp_s, &r_s, nb, n, &mut rng, &label);
}

/// `x` in a new buffer of `be`.
fn upload<BK: Backend>(be: &BK, x: &[BK::T]) -> BK::Buf {
    let mut b = be.alloc(x.len()).unwrap();
    be.upload(&mut b, x).unwrap();
    b
}

/// `apply_update` with λ = 0 on the `listed` coordinates of `p` only (p[i] −= lr·dir[i]), the others
/// untouched: the split reference of `unrotate_apply_update`.
pub fn apply_on_listed<BK: Backend>(
    be: &BK,
    p: &mut [BK::T],
    dir: &[BK::T],
    listed: &[u32],
    lr: f64,
) {
    let k = listed.len();
    let sub: Vec<BK::T> = listed.iter().map(|&i| p[i as usize]).collect();
    let d: Vec<BK::T> = listed.iter().map(|&i| dir[i as usize]).collect();
    let (mut sub, d) = (upload(be, &sub), upload(be, &d));
    be.apply_update(be.view_mut(&mut sub, 0..k), be.view(&d, 0..k), lr, 0.0)
        .unwrap();
    for (&i, x) in listed.iter().zip(be.download(&sub).unwrap()) {
        p[i as usize] = x;
    }
}

/// Panics unless `got` and `want` hold the same bits, naming how many entries differ, the first, and the
/// largest difference.
#[track_caller]
fn assert_same_bits<S: Scalar>(what: &str, got: &[S], want: &[S]) {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    let (got, want): (Vec<f64>, Vec<f64>) = (back(got), back(want));
    let differ: Vec<usize> = (0..got.len())
        .filter(|&i| got[i].to_bits() != want[i].to_bits())
        .collect();
    if let Some(&i) = differ.first() {
        let abs = |j: usize| (got[j] - want[j]).abs();
        let max = differ.iter().map(|&j| abs(j)).fold(0.0, f64::max);
        let rel = differ
            .iter()
            .map(|&j| abs(j) / want[j].abs())
            .fold(0.0, f64::max);
        panic!(
            "{what}: {} of {} entries differ; first [{i}]: {:e} vs {:e}; max |diff| {max:e}, max relative {rel:e}",
            differ.len(),
            got.len(),
            got[i],
            want[i]
        );
    }
}

/// The fused rotated-AdamW ops give the bits of the split ops they fuse, on any backend:
/// `rotate_adam_direction` = `rotate` then `adam_direction_step`; `unrotate_apply_update` = `unrotate`
/// then `apply_update` with λ = 0 on the listed entries, the others untouched.
#[allow(clippy::too_many_arguments)]
pub fn check_fused_adamw<BK: Backend>(
    be: &BK,
    ix: &BK::RotIndex,
    g: &[BK::T],
    r: &[BK::T],
    nb: usize,
    n: usize,
    rng: &mut Rng,
    label: &str,
) {
    let (len, k) = (g.len(), nb * n);
    let hp = AdamStep::new(4, 3e-3, 0.9, 0.95, 1e-8, 0.0);
    let m0: Vec<BK::T> = cast(&randn(rng, k, 1.0));
    let v0: Vec<BK::T> = cast(&randn(rng, k, 1.0).iter().map(|x| x * x).collect::<Vec<_>>());
    let (g, r) = (upload(be, g), upload(be, r));
    let (g, r) = (be.view(&g, 0..len), be.view(&r, 0..n * n));
    let down = |b: &BK::Buf| be.download(b).unwrap();
    // split
    let mut gt = be.alloc(k).unwrap();
    be.rotate(be.view_mut(&mut gt, 0..k), g, ix, r, nb, n)
        .unwrap();
    let (mut u, mut m, mut v) = (be.alloc(k).unwrap(), upload(be, &m0), upload(be, &v0));
    let [u_, m_, v_] = [&mut u, &mut m, &mut v].map(|b| be.view_mut(b, 0..k));
    be.adam_direction_step(u_, m_, v_, be.view(&gt, 0..k), hp)
        .unwrap();
    // fused
    let (mut uf, mut mf, mut vf) = (be.alloc(k).unwrap(), upload(be, &m0), upload(be, &v0));
    let [u_, m_, v_] = [&mut uf, &mut mf, &mut vf].map(|b| be.view_mut(b, 0..k));
    be.rotate_adam_direction(u_, m_, v_, g, ix, r, nb, n, hp)
        .unwrap();
    for (name, fused, split) in [("u", &uf, &u), ("m", &mf, &m), ("v", &vf, &v)] {
        assert_same_bits(
            &format!("rotate_adam_direction vs rotate + adam_direction_step, {name}: {label}"),
            &down(fused),
            &down(split),
        );
    }
    // split: the unrotated direction, then the update on the listed entries
    let p0: Vec<BK::T> = cast(&randn(rng, len, 1.0));
    let listed = be.rotation_index_list(ix);
    let mut dir = be.alloc(len).unwrap();
    be.unrotate(
        be.view_mut(&mut dir, 0..len),
        be.view(&u, 0..k),
        ix,
        r,
        nb,
        n,
    )
    .unwrap();
    let mut want = p0.clone();
    apply_on_listed(be, &mut want, &down(&dir), &listed, hp.lr);
    let mut p = upload(be, &p0);
    be.unrotate_apply_update(
        be.view_mut(&mut p, 0..len),
        be.view(&u, 0..k),
        ix,
        r,
        nb,
        n,
        hp.lr,
    )
    .unwrap();
    assert_same_bits(
        &format!("unrotate_apply_update vs unrotate + apply_update: {label}"),
        &down(&p),
        &want,
    );
}

#[test]
fn rotate_unrotate_ops_match_naive_loop() {
    for threads in [1, 2] {
        for (nb, n, len) in [(5, 7, 53), (1, 1, 1), (13, 1, 20), (3, 11, 33), (0, 4, 9)] {
            check_ops::<f64>(nb, n, len, threads, 1e-12);
            check_ops::<f32>(nb, n, len, threads, 1e-5);
        }
    }
    // f32 blocks the AVX-512 kernel takes (`rotgemm`; where the CPU has no AVX-512 these run faer):
    // one partial register tile, several windows with a partial last one, n > KC (two k blocks).
    let wide = cpu::rotgemm::KC + 32;
    for threads in [1, 2] {
        for (nb, n, len) in [
            (5, 64, 400),
            (200, 32, 200 * 32 + 50),
            (500, 288, 500 * 288 + 7),
            (30, wide, 30 * wide + 3),
        ] {
            check_ops::<f32>(nb, n, len, threads, 1e-5);
        }
    }
    // Several GEMM chunks and the parallel scatter: more than CHUNK_ELEMS elements.
    let n = 3;
    let nb = cpu::rotation::CHUNK_ELEMS / n + 5;
    check_ops::<f64>(nb, n, nb * n + 100, 2, 1e-12);
}

/// A random permutation of 0..len.
fn random_perm(rng: &mut Rng, len: usize) -> Vec<u32> {
    let mut perm: Vec<u32> = (0..len as u32).collect();
    shuffle(&mut perm, rng);
    perm
}

#[test]
fn bucketed_and_direct_rotations_are_bit_identical() {
    // Several windows and GEMM chunks (n = 3: 21,845 blocks per window, 1,398,080 per chunk; 65 windows, so
    // two bucketing levels), a list that leaves 1,000 coordinates out, and a last window and chunk that are
    // partial. The small cases of `rotate_unrotate_ops_match_naive_loop` cover one level. n = 3 runs faer,
    // n = 32 the f32 kernel (2,040 blocks per window, 68 windows, two chunks).
    bucketed_and_direct_agree(3);
    bucketed_and_direct_agree(32);
}

fn bucketed_and_direct_agree(n: usize) {
    let nb = cpu::rotation::CHUNK_ELEMS / n + 7_001;
    let len = nb * n + 1_000;
    let mut rng = Rng::new(77);
    let mut index = random_perm(&mut rng, len);
    index.truncate(nb * n);
    let inp: Vec<f32> = (0..len).map(|_| rng.normal() as f32).collect();
    let u: Vec<f32> = (0..nb * n).map(|_| rng.normal() as f32).collect();
    let r: Vec<f32> = (0..n * n).map(|_| rng.normal() as f32).collect();
    for threads in [1, 2] {
        let run = |mode: GatherMode| {
            let be = CpuBackend::<f32>::new(threads, false).with_gather(mode);
            let ix = be.rotation_index(index.clone(), n, len).unwrap();
            let levels = if mode == GatherMode::Bucketed { 2 } else { 0 };
            assert_eq!(ix.levels(), levels);
            assert!(
                be.rotation_index_list(&ix) == index,
                "{mode:?}: the list back"
            );
            let mut out = vec![0f32; nb * n];
            be.rotate(&mut out, &inp, &ix, &r, nb, n).unwrap();
            let mut back = vec![9.0f32; len];
            be.unrotate(&mut back, &u, &ix, &r, nb, n).unwrap();
            (out, back)
        };
        let (direct, bucketed) = (run(GatherMode::Direct), run(GatherMode::Bucketed));
        assert!(
            direct.0 == bucketed.0,
            "rotate differs, n={n} threads={threads}"
        );
        assert!(
            direct.1 == bucketed.1,
            "unrotate differs, n={n} threads={threads}"
        );
        // the coordinates left out are untouched by unrotate
        let listed = index.iter().fold(vec![false; len], |mut s, &i| {
            s[i as usize] = true;
            s
        });
        let untouched = (0..len)
            .filter(|&i| !listed[i])
            .all(|i| bucketed.1[i] == 9.0);
        assert!(untouched, "unrotate wrote an unlisted coordinate");
    }
}

#[test]
fn gather_auto_buckets_only_scattered_long_lists() {
    let be = CpuBackend::<f32>::new(1, false);
    let n = 768;
    let nb = (1 << 20) / n + 1;
    let len = nb * n;
    // global-like: a random permutation of everything
    let scattered = random_perm(&mut Rng::new(5), len);
    assert!(be
        .rotation_index(scattered.clone(), n, len)
        .unwrap()
        .is_bucketed());
    // output-like: each row of n shuffled in place (reads stay within one window)
    let mut rows: Vec<u32> = (0..len as u32).collect();
    let mut rng = Rng::new(6);
    for row in rows.chunks_mut(n) {
        shuffle(row, &mut rng);
    }
    assert!(!be.rotation_index(rows, n, len).unwrap().is_bucketed());
    // short lists stay direct however scattered
    let short = random_perm(&mut Rng::new(7), 10 * n);
    assert!(!be.rotation_index(short, n, 10 * n).unwrap().is_bucketed());
    // n above the u16 window: direct even when asked for buckets
    let wide = CpuBackend::<f32>::new(1, false).with_gather(GatherMode::Bucketed);
    let big_n = cpu::rotation::WINDOW_ELEMS + 1;
    let ix = wide.rotation_index(scattered[..big_n].to_vec(), big_n, len);
    assert!(!ix.unwrap().is_bucketed());
}

#[test]
fn rotation_index_rejects_bad_lists_on_every_backend() {
    let cases: [(&str, Vec<u32>); 2] = [("< 6", vec![0, 1, 6]), ("listed twice", vec![2, 0, 2])];
    for (want, list) in cases {
        for mode in [GatherMode::Direct, GatherMode::Bucketed] {
            let be = CpuBackend::<f64>::new(1, false).with_gather(mode);
            let err = be
                .rotation_index(list.clone(), 3, 6)
                .unwrap_err()
                .to_string();
            assert!(
                err.contains("rotation index") && err.contains(want),
                "{mode:?}: {err}"
            );
        }
        let emu = rotadam::backend::emu::EmuBackend::emulated(1, false);
        let err = emu
            .rotation_index(list.clone(), 3, 6)
            .unwrap_err()
            .to_string();
        assert!(err.contains(want), "emu: {err}");
    }
}

/// The bucketed plan is built in parallel (a counting sort per level); any thread count gives a plan that
/// reproduces the list and the same rotation bits: one and three threads, two levels, a partial list.
#[test]
fn bucketed_plan_does_not_depend_on_the_thread_count() {
    let n = 5;
    let nb = 65 * (cpu::rotation::WINDOW_ELEMS / n) + 11; // 66 windows: two levels
    let len = nb * n + 333;
    let mut rng = Rng::new(78);
    let mut index = random_perm(&mut rng, len);
    index.truncate(nb * n);
    let inp: Vec<f32> = (0..len).map(|_| rng.normal() as f32).collect();
    let r: Vec<f32> = (0..n * n).map(|_| rng.normal() as f32).collect();
    let run = |threads: usize| {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        pool.install(|| {
            let be = CpuBackend::<f32>::new(1, false).with_gather(GatherMode::Bucketed);
            let ix = be.rotation_index(index.clone(), n, len).unwrap();
            assert_eq!(ix.levels(), 2);
            assert!(
                be.rotation_index_list(&ix) == index,
                "{threads} threads: the list back"
            );
            let mut out = vec![0f32; nb * n];
            be.rotate(&mut out, &inp, &ix, &r, nb, n).unwrap();
            out
        })
    };
    assert!(
        run(1) == run(3),
        "the rotation differs between 1 and 3 threads"
    );
}

// ---- the f32 kernel of the block rotations -------------------------------------------------------------

/// Row i of a test matrix A (m×n): deterministic values of both signs.
fn test_row(seed: u64, i: usize, row: &mut [f32]) {
    let mut rng = Rng::new(seed * 1_000_003 + i as u64);
    for v in row {
        *v = rng.normal() as f32;
    }
}

/// `gemm_rows` computes every entry as one f32 FMA chain over k in increasing order: the same bits as a
/// scalar `mul_add` loop, for any block size (tiles of 12 rows, partial ones, a block that is not a whole
/// number of tiles), thread count, k blocking (n > KC) and either B (R or Rᵀ); `finish` sees
/// each block's first row and its C block.
#[test]
fn rotgemm_is_an_fma_chain_for_any_blocking() {
    use cpu::rotgemm::{fits, gemm_rows, PackedB};
    assert!(!fits::<f64>(32), "f64 goes through faer");
    assert!(
        !fits::<f32>(48) && !fits::<f32>(0),
        "n must be a multiple of 32"
    );
    if !fits::<f32>(32) {
        eprintln!(
            "no AVX-512 on this CPU: the f32 kernel is not used and this test checks nothing more"
        );
        return;
    }
    for (m, n) in [
        (1, 32),
        (13, 32),
        (100, 64),
        (37, 288),
        (13, cpu::rotgemm::KC + 32),
    ] {
        let mut rng = Rng::new(m as u64 + n as u64);
        let r: Vec<f32> = (0..n * n).map(|_| rng.normal() as f32).collect();
        for transpose in [false, true] {
            // C[i][j] = Σ_k A[i][k]·B[k][j], B = Rᵀ (B[k][j] = R[j][k]) or R
            let mut want = vec![0f32; m * n];
            let mut a = vec![0f32; n];
            for i in 0..m {
                test_row(7, i, &mut a);
                for j in 0..n {
                    want[i * n + j] = (0..n).fold(0f32, |c, k| {
                        let b = if transpose {
                            r[j * n + k]
                        } else {
                            r[k * n + j]
                        };
                        a[k].mul_add(b, c)
                    });
                }
            }
            let b = PackedB::new(&r, n, transpose);
            for (mc, threads) in [(12, 1), (7, 2), (36, 3), (m, 2)] {
                let pool = rayon::ThreadPoolBuilder::new()
                    .num_threads(threads)
                    .build()
                    .unwrap();
                let mut got = vec![f32::NAN; m * n];
                pool.install(|| {
                    gemm_rows(
                        &mut got,
                        mc,
                        &b,
                        |i, row| test_row(7, i, row),
                        |first, c, d| {
                            assert_eq!(first % mc, 0, "a block starts at a multiple of mc");
                            assert_eq!(c.len(), d.len());
                            // reversed within the block, to check `finish` gets the block it names
                            for (d, v) in d.iter_mut().zip(c.iter().rev()) {
                                *d = -*v;
                            }
                        },
                    )
                });
                for blk in got.chunks_mut(mc * n) {
                    blk.reverse();
                    blk.iter_mut().for_each(|v| *v = -*v);
                }
                let label = format!("m={m} n={n} transpose={transpose} mc={mc} threads={threads}");
                assert!(got == want, "gemm_rows differs from the FMA chain: {label}");
            }
        }
    }
}
