//! The `kron` rotation (Xie et al. App. D.1): the factor-size rule, inverse and isometry in f64 and f32
//! for tiny, prime and large d, agreement with the dense transpose, linearity, seeding, the three-factor
//! structure (identity permutations: R = A ⊗ B ⊗ C exactly), and mixing (a one-hot becomes dense).
//!
//! Tolerances: f64 at 1e-12 relative (unit roundoff 1.1e-16 times dot products of ≤ a few hundred terms,
//! over 2 stages × 3 modes, with margin); f32 at 1e-5 relative (unit roundoff 6e-8 times the same).

use crate::util::randn;
use rotadam::backend::cpu::CpuBackend;
use rotadam::backend::{Backend, Scalar};
use rotadam::rng::Rng;
use rotadam::rotation::haar;
use rotadam::rotation::kron::{kron_shape, KronRotation, DEFAULT_STAGES};

// ---- helpers -------------------------------------------------------------------------------------------

fn norm(x: &[f64]) -> f64 {
    x.iter().map(|v| v * v).sum::<f64>().sqrt()
}
fn dist(x: &[f64], y: &[f64]) -> f64 {
    x.iter()
        .zip(y)
        .map(|(a, b)| (a - b) * (a - b))
        .sum::<f64>()
        .sqrt()
}

/// Asserts ‖got − want‖₂ ≤ tol·‖want‖₂, printing the first mismatching entries and the max difference.
#[track_caller]
fn assert_rel(label: &str, got: &[f64], want: &[f64], tol: f64) {
    assert_eq!(got.len(), want.len(), "{label}: lengths differ");
    let err = dist(got, want);
    let scale = norm(want).max(1e-300);
    if err > tol * scale {
        let worst = got
            .iter()
            .zip(want)
            .fold(0.0f64, |m, (g, w)| m.max((g - w).abs()));
        let first: Vec<String> = got
            .iter()
            .zip(want)
            .enumerate()
            .filter(|(_, (g, w))| (*g - *w).abs() > tol * scale / (got.len() as f64).sqrt())
            .take(5)
            .map(|(i, (g, w))| format!("[{i}] got {g} want {w}"))
            .collect();
        panic!(
            "{label}: ‖diff‖ {err:.3e} > {tol:.1e}·{scale:.3e} (max |diff| {worst:.3e}); first: {}",
            first.join(", ")
        );
    }
}

/// Applies rotate (or unrotate) to a host f64 vector on backend `be`.
fn apply<S: Scalar>(
    be: &CpuBackend<S>,
    rot: &mut KronRotation<CpuBackend<S>>,
    x: &[f64],
    transpose: bool,
) -> Vec<f64> {
    let host: Vec<S> = x.iter().map(|&v| <S as Scalar>::from_f64(v)).collect();
    let mut inp = be.alloc(x.len()).unwrap();
    be.upload(&mut inp, &host).unwrap();
    let mut out = be.alloc(x.len()).unwrap();
    if transpose {
        rot.unrotate(be, &mut out, &inp).unwrap();
    } else {
        rot.rotate(be, &mut out, &inp).unwrap();
    }
    let y = be.download(&out).unwrap();
    y.iter().map(|&v| Scalar::to_f64(v)).collect()
}

fn one_hot(d: usize, j: usize) -> Vec<f64> {
    let mut e = vec![0.0; d];
    e[j] = 1.0;
    e
}

/// The dense d×d matrix of `rot` (column j = R·e_j), row-major, from f64 rotations.
fn dense(be: &CpuBackend<f64>, rot: &mut KronRotation<CpuBackend<f64>>) -> Vec<f64> {
    let d = rot.dim();
    let mut m = vec![0.0; d * d];
    for j in 0..d {
        let col = apply(be, rot, &one_hot(d, j), false);
        for i in 0..d {
            m[i * d + j] = col[i];
        }
    }
    m
}

/// Sizes: tiny, primes, a product with no remainder, and a few hundred thousand (prime).
const DIMS: [usize; 9] = [1, 2, 7, 11, 60, 97, 1009, 4096, 300_007];

/// rotate∘unrotate and unrotate∘rotate are the identity, and rotate preserves the norm.
fn inverse_and_isometry<S: Scalar>(tol: f64) {
    let be = CpuBackend::<S>::new(1, false);
    let mut rng = Rng::new(11);
    for d in DIMS {
        let mut rot = KronRotation::new(&be, d, DEFAULT_STAGES, 3).unwrap();
        let label = format!("{} d={d} ({})", S::NAME, rot.describe());
        let g = randn(&mut rng, d, 1.0);
        let y = apply(&be, &mut rot, &g, false);
        assert_rel(
            &format!("{label}: unrotate∘rotate"),
            &apply(&be, &mut rot, &y, true),
            &g,
            tol,
        );
        let x = apply(&be, &mut rot, &g, true);
        assert_rel(
            &format!("{label}: rotate∘unrotate"),
            &apply(&be, &mut rot, &x, false),
            &g,
            tol,
        );
        let (ny, ng) = (norm(&y), norm(&g));
        assert!(
            (ny - ng).abs() <= tol * ng,
            "{label}: ‖Rg‖ = {ny} but ‖g‖ = {ng}"
        );
    }
}

// ---- the factor-size rule ----------------------------------------------------------------------------

#[test]
fn kron_shape_rule() {
    // The documented examples: GPT-2 124M without biases, a small model, tiny d.
    let cases: [(usize, [usize; 3]); 7] = [
        (124_337_664, [453, 514, 534]),
        (7_236_864, [176, 178, 231]),
        (1, [1, 1, 1]),
        (2, [1, 1, 2]),
        (7, [1, 1, 7]),
        (60, [3, 4, 5]),
        (1_000_000, [100, 100, 100]),
    ];
    for (d, want) in cases {
        assert_eq!(kron_shape(d), want, "kron_shape({d})");
    }
    assert_eq!(124_337_664 - 453 * 514 * 534, 36);
    assert_eq!(7_236_864 - 176 * 178 * 231, 96);
    // Invariants over many d: a ≤ b ≤ c, a·b·c ≤ d, a ≤ ∛d, and the remainder is small.
    for d in (1..5000).chain([65_537, 300_007, 1 << 24, (1 << 31) - 1]) {
        let [a, b, c] = kron_shape(d);
        assert!(a <= b && b <= c, "kron_shape({d}) = {a}x{b}x{c} not sorted");
        assert!(
            a * b * c <= d && a * a * a <= d,
            "kron_shape({d}) too large"
        );
        let r = d - a * b * c;
        assert!(
            r < a * b,
            "kron_shape({d}): remainder {r} ≥ a·b = {}",
            a * b
        );
        assert!(r <= 768, "kron_shape({d}): remainder {r} > 768");
    }
    // The rare long remainder (module docs): 107 x 108 x 126 + 775 = one 768 block + one 7 block.
    assert_eq!(kron_shape(1_456_831), [107, 108, 126]);
}

#[test]
fn kron_describe() {
    let be = CpuBackend::<f64>::new(1, false);
    let rot = KronRotation::new(&be, 97, 2, 0).unwrap();
    let s = rot.describe();
    assert!(
        s.starts_with("kron, 2 stages of 4 x 4 x 6 + 1 residual (one 1x1 Haar block)"),
        "{s}"
    );
    assert!(s.contains("d = 97"), "{s}");
    let rot = KronRotation::new(&be, 60, 1, 0).unwrap();
    assert!(
        rot.describe().starts_with("kron, 1 stage of 3 x 4 x 5;"),
        "{}",
        rot.describe()
    );
    assert_eq!(rot.residual(), 0);
    assert_eq!(rot.dim(), 60);
    assert_eq!(rot.stages(), 1);
}

#[test]
fn kron_rejects_bad_sizes() {
    let be = CpuBackend::<f64>::new(1, false);
    assert!(KronRotation::new(&be, 0, 2, 0).is_err());
    assert!(KronRotation::new(&be, 10, 0, 0).is_err());
}

// ---- inverse, isometry, transpose, linearity -----------------------------------------------------------

#[test]
fn kron_inverse_isometry_f64() {
    inverse_and_isometry::<f64>(1e-12);
}

#[test]
fn kron_inverse_isometry_f32() {
    inverse_and_isometry::<f32>(1e-5);
}

/// For small d the dense R is orthogonal (RᵀR = I) and unrotate is exactly its transpose.
#[test]
fn kron_dense_orthogonal_and_transpose() {
    let be = CpuBackend::<f64>::new(1, false);
    for (d, stages) in [(7, 2), (11, 2), (60, 3), (97, 2), (130, 1)] {
        let mut rot = KronRotation::new(&be, d, stages, 5).unwrap();
        let label = format!("d={d} ({})", rot.describe());
        let r = dense(&be, &mut rot);
        let mut worst = 0.0f64;
        for i in 0..d {
            for j in 0..d {
                let dot: f64 = (0..d).map(|k| r[k * d + i] * r[k * d + j]).sum();
                let want = if i == j { 1.0 } else { 0.0 };
                worst = worst.max((dot - want).abs());
            }
        }
        assert!(worst <= 1e-12, "{label}: max |RᵀR − I| = {worst:.3e}");
        let mut rng = Rng::new(d as u64);
        let u = randn(&mut rng, d, 1.0);
        let rt_u: Vec<f64> = (0..d)
            .map(|j| (0..d).map(|i| r[i * d + j] * u[i]).sum())
            .collect();
        assert_rel(
            &format!("{label}: unrotate vs dense Rᵀ"),
            &apply(&be, &mut rot, &u, true),
            &rt_u,
            1e-12,
        );
    }
}

/// A remainder longer than 768 is cut into a 768 block and a short one; still orthogonal.
#[test]
fn kron_long_remainder() {
    let be = CpuBackend::<f64>::new(1, false);
    let d = 1_456_831;
    let mut rot = KronRotation::new(&be, d, 2, 8).unwrap();
    assert_eq!(rot.residual(), 775);
    let s = rot.describe();
    assert!(
        s.contains("+ 775 residual (one 768x768 Haar block + one 7x7 Haar block)"),
        "{s}"
    );
    let g = randn(&mut Rng::new(6), d, 1.0);
    let y = apply(&be, &mut rot, &g, false);
    assert_rel(
        "long remainder: unrotate∘rotate",
        &apply(&be, &mut rot, &y, true),
        &g,
        1e-12,
    );
    assert!((norm(&y) - norm(&g)).abs() <= 1e-12 * norm(&g));
}

#[test]
fn kron_linear() {
    let be = CpuBackend::<f64>::new(1, false);
    let d = 1009;
    let mut rot = KronRotation::new(&be, d, 2, 9).unwrap();
    let mut rng = Rng::new(2);
    let (x, y) = (randn(&mut rng, d, 1.0), randn(&mut rng, d, 1.0));
    let (al, bt) = (0.7, -2.5);
    let comb: Vec<f64> = x.iter().zip(&y).map(|(a, b)| al * a + bt * b).collect();
    for transpose in [false, true] {
        let rx = apply(&be, &mut rot, &x, transpose);
        let ry = apply(&be, &mut rot, &y, transpose);
        let want: Vec<f64> = rx.iter().zip(&ry).map(|(a, b)| al * a + bt * b).collect();
        assert_rel(
            &format!("linearity (transpose {transpose})"),
            &apply(&be, &mut rot, &comb, transpose),
            &want,
            1e-12,
        );
    }
}

// ---- seeding -------------------------------------------------------------------------------------------

#[test]
fn kron_seeding() {
    let be = CpuBackend::<f64>::new(1, false);
    let d = 4099;
    let g = randn(&mut Rng::new(4), d, 1.0);
    let run = |stages: usize, seed: u64| {
        let mut rot = KronRotation::new(&be, d, stages, seed).unwrap();
        apply(&be, &mut rot, &g, false)
    };
    let base = run(2, 1);
    assert_eq!(
        base,
        run(2, 1),
        "same seed, same stages: must be bit-identical"
    );
    let other = run(2, 2);
    assert!(
        dist(&base, &other) > 0.1 * norm(&g),
        "seed 1 and seed 2 give (nearly) the same rotation"
    );
    let one = run(1, 1);
    assert!(
        dist(&base, &one) > 0.1 * norm(&g),
        "1 stage and 2 stages give (nearly) the same rotation"
    );
}

// ---- structure and mixing ----------------------------------------------------------------------------

/// With identity permutations, d = a·b·c and one stage, R is exactly A ⊗ B ⊗ C, the factors being the
/// first three Haar draws of `Rng::derive(seed, STREAM_ROTATION)` (the documented draw order).
fn three_factor_structure<S: Scalar>(tol: f64) {
    let be = CpuBackend::<S>::new(1, false);
    let (d, seed) = (60, 17);
    let mut rot = KronRotation::with_identity_permutation(&be, d, 1, seed).unwrap();
    assert_eq!(rot.shape(), [3, 4, 5]);
    assert_eq!(rot.residual(), 0);
    let mut rng = Rng::derive(seed, rotadam::rng::STREAM_ROTATION);
    let (fa, fb, fc) = (haar(3, &mut rng), haar(4, &mut rng), haar(5, &mut rng));
    let mut worst = 0.0f64;
    let mut first = None;
    for j in 0..d {
        let col = apply(&be, &mut rot, &one_hot(d, j), false);
        let (j1, j2, j3) = (j / 20, (j / 5) % 4, j % 5);
        for (i, &got) in col.iter().enumerate() {
            let (i1, i2, i3) = (i / 20, (i / 5) % 4, i % 5);
            let want = fa[i1 * 3 + j1] * fb[i2 * 4 + j2] * fc[i3 * 5 + j3];
            let diff = (got - want).abs();
            if diff > tol && first.is_none() {
                first = Some(format!("R[{i}][{j}] got {got} want {want}"));
            }
            worst = worst.max(diff);
        }
    }
    assert!(
        worst <= tol,
        "{}: R vs A ⊗ B ⊗ C: max |diff| {worst:.3e} > {tol:.1e}; first: {}",
        S::NAME,
        first.unwrap_or_default()
    );
}

#[test]
fn kron_three_factor_structure_f64() {
    three_factor_structure::<f64>(1e-13);
}

#[test]
fn kron_three_factor_structure_f32() {
    three_factor_structure::<f32>(1e-6);
}

/// The test above can fail: the randomly permuted rotation is NOT A ⊗ B ⊗ C.
#[test]
fn kron_permutation_breaks_plain_kronecker() {
    let be = CpuBackend::<f64>::new(1, false);
    let mut plain = KronRotation::with_identity_permutation(&be, 60, 1, 17).unwrap();
    let mut permuted = KronRotation::new(&be, 60, 1, 17).unwrap();
    let (a, b) = (dense(&be, &mut plain), dense(&be, &mut permuted));
    assert!(dist(&a, &b) > 1.0, "the permutation changed nothing");
}

/// A one-hot vector is spread over (nearly) every coordinate: R is not a permutation or a sign flip.
#[test]
fn kron_mixes_coordinates() {
    let be = CpuBackend::<f64>::new(1, false);
    let d = 20_011;
    let mut rot = KronRotation::new(&be, d, 2, 23).unwrap();
    for j in [0, 1, d / 2, d - 1] {
        let y = apply(&be, &mut rot, &one_hot(d, j), false);
        let nonzero = y.iter().filter(|v| v.abs() > 1e-12).count();
        let peak = y.iter().fold(0.0f64, |m, v| m.max(v.abs()));
        assert!(
            nonzero >= d * 9 / 10,
            "R·e_{j}: only {nonzero} of {d} entries non-zero"
        );
        assert!(peak < 0.5, "R·e_{j}: an entry of size {peak} (not mixed)");
    }
    // One stage already spreads over a whole a·b·c body (or the remainder block).
    let mut one = KronRotation::new(&be, d, 1, 23).unwrap();
    let y = apply(&be, &mut one, &one_hot(d, 0), false);
    let nonzero = y.iter().filter(|v| v.abs() > 1e-12).count();
    assert!(nonzero > 1, "one stage left e_0 a one-hot");
}
