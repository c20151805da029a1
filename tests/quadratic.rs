//! The rotated quadratic (Xie et al. §4.1): the rotation family, the Hessian and its norms, the gradient,
//! the optimizers' first steps by hand, SGD's rotation equivariance, Adam's loss of it, and the outputs.
//!
//! Tolerances: R is built by scaling and squaring, whose error grows like 2ˢ·d·u (u = 1.1e-16; s ≤ 10 for
//! θ ≤ 10 at d ≤ 60 here), so orthogonality and the group law are checked at 1e-11. SGD's equivariance is
//! exact in real arithmetic; in floating point every step adds O(d·u)·‖e‖ relative error to the iterate in
//! each basis, and the stable linear iteration does not amplify it, so after T = 300 steps at d = 40 the
//! final losses agree to ~T·d·u ≈ 1.3e-12 relative; 1e-9 is the bound used (×~1000 margin).

use crate::util::tmp;
use clap::Parser;
use faer::Mat;
use rotadam::cli::{Cli, Command};
use rotadam::quadratic::{
    expm, final_losses, norm_11, orthogonality_error, rotation, skew_generator, spectrum,
    write_outputs, OptHyper, Problem, QuadConfig, QuadOpt, RunSpec, DEFAULT_THETAS,
};

const HY: OptHyper = OptHyper {
    beta2: 0.99,
    eps: 1e-8,
    momentum: 0.9,
};

fn matmul(a: &[f64], b: &[f64], n: usize) -> Vec<f64> {
    let mut c = vec![0.0; n * n];
    for i in 0..n {
        for k in 0..n {
            for j in 0..n {
                c[i * n + j] += a[i * n + k] * b[k * n + j];
            }
        }
    }
    c
}

fn max_diff(a: &[f64], b: &[f64]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f64::max)
}

#[test]
fn rotation_is_orthogonal_with_det_one_and_identity_at_zero() {
    let d = 40;
    let a = skew_generator(d, 5);
    // A is skew-symmetric.
    for i in 0..d {
        for j in 0..d {
            assert_eq!(a[i * d + j], -a[j * d + i]);
        }
    }
    let r0 = rotation(&a, d, 0.0, 1);
    let eye: Vec<f64> = (0..d * d)
        .map(|k| if k / d == k % d { 1.0 } else { 0.0 })
        .collect();
    assert_eq!(r0, eye, "R(0) must be exactly I");
    for theta in [0.01, 0.3, 1.0, 10.0] {
        let r = rotation(&a, d, theta, 2);
        let err = orthogonality_error(&r, d, 1);
        assert!(err < 1e-11, "θ = {theta}: max|RRᵀ − I| = {err:e}");
        let det = Mat::<f64>::from_fn(d, d, |i, j| r[i * d + j]).determinant();
        assert!((det - 1.0).abs() < 1e-10, "θ = {theta}: det R = {det}");
        // Not the identity (the test could not tell a no-op from a rotation otherwise).
        assert!(max_diff(&r, &eye) > 1e-3 * theta.min(1.0));
    }
    // The group law R(s)R(t) = R(s + t): checks the exponential itself, not just orthogonality.
    let (s, t) = (0.7, 2.1);
    let lhs = matmul(&rotation(&a, d, s, 1), &rotation(&a, d, t, 1), d);
    let rhs = rotation(&a, d, s + t, 1);
    let e = max_diff(&lhs, &rhs);
    assert!(e < 1e-11, "R(s)R(t) vs R(s+t): {e:e}");
}

#[test]
fn expm_of_a_plane_rotation_generator_is_cos_sin() {
    for w in [0.1f64, 1.0, 3.0, 25.0] {
        let m = [0.0, -w, w, 0.0];
        let r = expm(&m, 2, 1);
        let want = [w.cos(), -w.sin(), w.sin(), w.cos()];
        let e = max_diff(&r, &want);
        assert!(e < 1e-13 * w.max(1.0), "w = {w}: {r:?} vs {want:?} ({e:e})");
    }
}

#[test]
fn hessian_has_the_spectrum_and_its_11_norm_grows_with_theta() {
    // The default size: the (1,1)-norm must grow over the default θ grid.
    let d = 500;
    let a = skew_generator(d, 0);
    let lambda = spectrum(d);
    let trace: f64 = lambda.iter().sum();
    let mut prev = 0.0;
    for (k, &theta) in DEFAULT_THETAS.iter().enumerate() {
        let p = Problem::new(&a, lambda.clone(), theta, 2);
        let n11 = norm_11(&p.h);
        if k == 0 {
            assert!(
                (n11 - trace).abs() < 1e-14 * trace,
                "θ = 0: {n11} vs tr Λ = {trace}"
            );
        } else {
            assert!(
                n11 > prev,
                "θ = {theta}: ‖H‖₁₁ = {n11} did not grow from {prev}"
            );
        }
        prev = n11;
    }
    // The largest θ is far from diagonal: (1,1)-norm ≥ 100 × tr Λ.
    assert!(prev > 100.0 * trace, "{prev}");
    // The eigenvalues of H are Λ at every θ (‖H‖₂ = λ₁ = 1), checked at a smaller size.
    let d = 60;
    let a = skew_generator(d, 1);
    let p = Problem::new(&a, spectrum(d), 3.0, 1);
    let h = Mat::<f64>::from_fn(d, d, |i, j| p.h[i * d + j]);
    let mut ev: Vec<f64> = h
        .self_adjoint_eigenvalues(faer::Side::Lower)
        .unwrap()
        .into_iter()
        .collect();
    ev.sort_by(|x, y| y.partial_cmp(x).unwrap());
    let e = max_diff(&ev, &spectrum(d));
    assert!(e < 1e-13, "eigenvalues of H vs Λ: {e:e}");
}

#[test]
fn gradient_matches_finite_differences_and_loss_is_the_quadratic_form() {
    let d = 20;
    let a = skew_generator(d, 3);
    let p = Problem::new(&a, spectrum(d), 0.8, 1);
    let (x, xs) = p.start(9, 0);
    let g = p.grad(&x, &xs);
    let h = 1e-4;
    for i in 0..d {
        let mut xp = x.clone();
        let mut xm = x.clone();
        xp[i] += h;
        xm[i] -= h;
        // Central differences are exact for a quadratic up to roundoff: |f| ~ 1, u/h ~ 1e-12.
        let fd = (p.loss(&xp, &xs) - p.loss(&xm, &xs)) / (2.0 * h);
        assert!(
            (fd - g[i]).abs() < 1e-9 * (1.0 + g[i].abs()),
            "coordinate {i}: fd {fd} vs grad {}",
            g[i]
        );
    }
    // f = ½ eᵀHe as well, and the start has the unrotated loss ½ Σ λ z₀².
    let e: Vec<f64> = x.iter().zip(&xs).map(|(a, b)| a - b).collect();
    let quad: f64 = 0.5 * e.iter().zip(&g).map(|(a, b)| a * b).sum::<f64>();
    let f = p.loss(&x, &xs);
    assert!((quad - f).abs() < 1e-12 * f, "{quad} vs {f}");
    let (z0, _) = rotadam::quadratic::draw_start(d, 9, 0);
    let f0: f64 = 0.5
        * spectrum(d)
            .iter()
            .zip(&z0)
            .map(|(l, z)| l * z * z)
            .sum::<f64>();
    assert!((f - f0).abs() < 1e-12 * f0, "{f} vs {f0}");
}

#[test]
fn first_steps_match_the_optimizers_by_hand() {
    let d = 12;
    let a = skew_generator(d, 4);
    let p = Problem::new(&a, spectrum(d), 0.5, 1);
    let (x0, xs) = p.start(2, 0);
    let g0 = p.grad(&x0, &xs);
    let lr = 0.05;
    let run = |opt: QuadOpt, steps: usize| {
        final_losses(
            &p,
            &[RunSpec {
                opt,
                lr,
                seed_index: 0,
            }],
            steps,
            2,
            &HY,
            1,
        )
        .unwrap()[0]
    };
    let after = |u: &[f64]| {
        let x1: Vec<f64> = x0.iter().zip(u).map(|(x, u)| x - lr * u).collect();
        p.loss(&x1, &xs)
    };
    // Adam, first step, any β₁: m̂ = g, v̂ = g² → u = g / (|g| + ε).
    let u: Vec<f64> = g0.iter().map(|g| g / (g.abs() + HY.eps)).collect();
    for beta1 in [0.0, 0.9] {
        let got = run(QuadOpt::Adam { beta1 }, 1);
        assert!(
            (got - after(&u)).abs() < 1e-14,
            "Adam β1={beta1}: {got} vs {}",
            after(&u)
        );
    }
    // AdaSGD: v̂ = mean g² → u = g / (√mean g² + ε).
    let rms = (g0.iter().map(|g| g * g).sum::<f64>() / d as f64).sqrt();
    let u: Vec<f64> = g0.iter().map(|g| g / (rms + HY.eps)).collect();
    let got = run(QuadOpt::AdaSgd, 1);
    assert!(
        (got - after(&u)).abs() < 1e-14,
        "AdaSGD: {got} vs {}",
        after(&u)
    );
    // SGD with momentum, two steps: x₁ = x₀ − lr g₀, x₂ = x₁ − lr (μ g₀ + g₁).
    let x1: Vec<f64> = x0.iter().zip(&g0).map(|(x, g)| x - lr * g).collect();
    let g1 = p.grad(&x1, &xs);
    let x2: Vec<f64> = (0..d)
        .map(|i| x1[i] - lr * (HY.momentum * g0[i] + g1[i]))
        .collect();
    let got = run(QuadOpt::Sgd, 2);
    let want = p.loss(&x2, &xs);
    assert!((got - want).abs() < 1e-14, "SGD: {got} vs {want}");
    // The 1-step losses are below the start (the test inputs are not degenerate).
    assert!(after(&u) < p.loss(&x0, &xs));
}

#[test]
fn sgd_and_adasgd_are_rotation_equivariant_adam_is_not() {
    let d = 40;
    let a = skew_generator(d, 11);
    let specs = |opt| {
        (0..2)
            .map(|s| RunSpec {
                opt,
                lr: if matches!(opt, QuadOpt::Sgd) {
                    1.0
                } else {
                    0.01
                },
                seed_index: s,
            })
            .collect::<Vec<_>>()
    };
    let losses = |opt, theta, steps| {
        let p = Problem::new(&a, spectrum(d), theta, 1);
        final_losses(&p, &specs(opt), steps, 7, &HY, 1).unwrap()
    };
    let rel = |a: f64, b: f64| (a - b).abs() / a.abs().max(b.abs());
    // SGD: 300 steps, exact equivariance up to roundoff (module docs: bound 1e-9).
    let base = losses(QuadOpt::Sgd, 0.0, 300);
    for theta in [0.3, 5.0] {
        let l = losses(QuadOpt::Sgd, theta, 300);
        for s in 0..2 {
            assert!(
                rel(base[s], l[s]) < 1e-9,
                "SGD θ={theta} seed {s}: {} vs {}",
                l[s],
                base[s]
            );
        }
    }
    let p0 = Problem::new(&a, spectrum(d), 0.0, 1);
    let (x0, xs) = p0.start(7, 0);
    assert!(base[0] < 0.5 * p0.loss(&x0, &xs), "SGD did not descend");
    // AdaSGD is equivariant too (its one second moment is ‖g‖²/d); over a short horizon (its
    // normalised steps make the late, oscillating phase sensitive to roundoff) the losses agree.
    let base = losses(QuadOpt::AdaSgd, 0.0, 30);
    let l = losses(QuadOpt::AdaSgd, 5.0, 30);
    for s in 0..2 {
        assert!(
            rel(base[s], l[s]) < 1e-9,
            "AdaSGD seed {s}: {} vs {}",
            l[s],
            base[s]
        );
    }
    // Adam is not: the same 30 steps give a different loss under the rotation.
    let base = losses(QuadOpt::Adam { beta1: 0.9 }, 0.0, 30);
    let l = losses(QuadOpt::Adam { beta1: 0.9 }, 5.0, 30);
    assert!(rel(base[0], l[0]) > 0.05, "Adam: {} vs {}", l[0], base[0]);
}

#[test]
fn adam_at_theta_zero_beats_adam_under_a_random_rotation() {
    // The paper's finding on the default setup (d = 500, 1000 steps, default lr grid), one seed (0),
    // each Adam at its best lr of the grid at each θ.
    let cfg = QuadConfig::new(500, 1000, 1);
    let a = skew_generator(cfg.dim, cfg.seed);
    let best = |opt, theta| {
        let p = Problem::new(&a, spectrum(cfg.dim), theta, 2);
        let specs: Vec<RunSpec> = cfg
            .lrs
            .iter()
            .map(|&lr| RunSpec {
                opt,
                lr,
                seed_index: 0,
            })
            .collect();
        final_losses(&p, &specs, cfg.steps, cfg.seed, &HY, 2)
            .unwrap()
            .into_iter()
            .fold(f64::INFINITY, f64::min)
    };
    for beta1 in [0.0, 0.9] {
        let opt = QuadOpt::Adam { beta1 };
        let (l0, l10) = (best(opt, 0.0), best(opt, 10.0));
        assert!(
            l0 * 10.0 < l10,
            "Adam β1={beta1}: θ=0 {l0:e} is not 10× below θ=10 {l10:e}"
        );
    }
}

#[test]
fn small_run_writes_table_json_and_figure() {
    let mut cfg = QuadConfig::new(8, 60, 2);
    cfg.thetas = vec![0.0, 1.0];
    cfg.lrs = vec![1e-2, 1e-1, 1e3];
    cfg.threads = 1;
    let res = rotadam::quadratic::run(&cfg, &mut |_| {}).unwrap();
    assert_eq!(res.thetas.len(), 2);
    for t in &res.thetas {
        assert_eq!(t.results.len(), 4);
        // SGD at lr 1e3 diverges and is never chosen.
        let sgd = t.results.iter().find(|r| r.optimizer == "SGD").unwrap();
        assert_ne!(sgd.best_lr, Some(1e3));
        assert_eq!(sgd.mean_by_lr[2], None);
    }
    let dir = tmp("quad-out");
    write_outputs(&res, &dir).unwrap();
    let md = std::fs::read_to_string(dir.join("table.md")).unwrap();
    let rows: Vec<&str> = md.lines().filter(|l| l.starts_with("| ")).collect();
    assert_eq!(rows.len(), 3, "header + 2 θ rows:\n{md}");
    assert!(rows[0].contains("SGD") && rows[0].contains("‖H‖₍₁,₁₎"));
    assert!(
        rows[1].starts_with("| 0 | 1.") && rows[2].starts_with("| 1 |"),
        "{md}"
    );
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("results.json")).unwrap()).unwrap();
    assert_eq!(json["config"]["dim"], 8);
    assert_eq!(json["config"]["lrs"].as_array().unwrap().len(), 3);
    assert_eq!(json["thetas"][1]["theta"], 1.0);
    assert!(json["thetas"][0]["results"][0]["best_lr"].is_number());
    let png = image::open(dir.join("quadratic.png")).unwrap();
    assert_eq!((png.width(), png.height()), (1000, 600));
    let svg = std::fs::read_to_string(dir.join("quadratic.svg")).unwrap();
    assert!(svg.contains("AdaSGD") && svg.contains("Adam β1=0.9"));
}

#[test]
fn cli_flags_and_validation() {
    let cli = Cli::try_parse_from([
        "rotadam",
        "quadratic",
        "--dim",
        "16",
        "--thetas",
        "0,0.5,2",
        "--lrs",
        "0.1,1",
        "--seeds",
        "2",
    ])
    .unwrap();
    let Command::Quadratic(args) = cli.command else {
        panic!("not the quadratic command")
    };
    let cfg = args.config().unwrap();
    assert_eq!(cfg.thetas, vec![0.0, 0.5, 2.0]);
    assert_eq!(cfg.lrs, vec![0.1, 1.0]);
    assert_eq!((cfg.dim, cfg.seeds, cfg.steps), (16, 2, 1000));
    let bad = Cli::try_parse_from(["rotadam", "quadratic", "--thetas=-1,2"]).unwrap();
    let Command::Quadratic(args) = bad.command else {
        panic!()
    };
    let e = args.config().unwrap_err().to_string();
    assert!(e.contains("--thetas"), "{e}");
    let bad = Cli::try_parse_from(["rotadam", "quadratic", "--lrs", "0"]).unwrap();
    let Command::Quadratic(args) = bad.command else {
        panic!()
    };
    assert!(args.config().unwrap_err().to_string().contains("--lrs"));
}
