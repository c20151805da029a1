//! The `soap` rotation (Vyas et al. 2024, "SOAP"; `rotation::svd`): AdamW steps against a reference
//! written here from the paper's Alg. 3, the two first-moment forms that are equal in exact arithmetic,
//! identity bases = AdamW bit for bit, orthogonal bases, rotate∘unrotate = identity, β = 0 = the `svd`
//! rotation (bases and steps), and the settings it refuses. Resume is in `optim.rs`, the emulated kernels
//! in `optim.rs` too, the driver stand-in in `cuda.rs`.
//!
//! Everything in f64 on the tiny model's table (wte 11×16, wpe 8×16, square attention weights, c_fc
//! 64×16, c_proj 16×64). Tolerances: 1e-10 for ten steps of two paths that round differently (a few
//! GEMMs and one eigendecomposition per refresh, each ~1e-15 relative, amplified by Adam's division
//! where v is small); 1e-12 for orthogonality (dot products of length ≤ 64).

use crate::util::{identity, matmul, max_diff, randn, tiny_config, transpose};
use faer::{Mat, Side};
use rotadam::backend::cpu::CpuBackend;
use rotadam::backend::Backend;
use rotadam::config::{
    OptimizerKind, RotationConfig, RunConfig, SoapConfig, SoapInit, SoapMoment, TrainConfig,
};
use rotadam::model::{ParamTable, Role};
use rotadam::optim::{Optimizer, Transform};
use rotadam::rng::Rng;
use rotadam::rotation::basis::Basis;
use std::collections::BTreeMap;
use std::path::Path;

type Be = CpuBackend<f64>;

fn table() -> ParamTable {
    let mut m = tiny_config(Path::new("."), Path::new("."), 1).model;
    m.bias = true;
    ParamTable::new(&m)
}

fn train() -> TrainConfig {
    TrainConfig {
        lr: 1e-2,
        weight_decay: 0.1,
        ..TrainConfig::default()
    }
}

fn soap(beta: f64, every: usize, first_moment: SoapMoment, init: SoapInit) -> RotationConfig {
    RotationConfig {
        kind: "soap".parse().unwrap(),
        soap: SoapConfig {
            beta,
            every,
            first_moment,
            init,
        },
        ..Default::default()
    }
}

fn optimizer(be: &Be, tr: &TrainConfig, rc: &RotationConfig, table: &ParamTable) -> Optimizer<Be> {
    let basis = Basis::new(be, rc, table).unwrap();
    Optimizer::for_run(be, tr, basis, table).unwrap()
}

/// A gradient: Gaussian, or on the 2-D tensors of rank 2 (then G·Gᵀ and Gᵀ·G have large null spaces,
/// which the canonical completion fills).
fn gradient(rng: &mut Rng, table: &ParamTable, low_rank: bool) -> Vec<f64> {
    let mut g = randn(rng, table.total, 1.0);
    if low_rank {
        for e in table.entries.iter().filter(|e| e.is_matrix()) {
            let (m, n) = (e.rows, e.cols);
            let a = randn(rng, m * 2, 1.0);
            let b = randn(rng, 2 * n, 1.0);
            g[e.range()].copy_from_slice(&matmul(&a, &b, m, 2, n));
        }
    }
    g
}

/// Runs `steps` optimizer steps from the same start and gradients (`low_rank` picks which steps get a
/// rank-2 gradient); returns the parameters after each step.
fn run(
    opt: &mut Optimizer<Be>,
    be: &Be,
    table: &ParamTable,
    steps: usize,
    low_rank: &dyn Fn(usize) -> bool,
) -> Vec<Vec<f64>> {
    let d = table.total;
    let mut rng = Rng::new(21);
    let p0 = randn(&mut rng, d, 0.1);
    let mut p = be.alloc(d).unwrap();
    be.upload(&mut p, &p0).unwrap();
    let mut out = Vec::new();
    for t in 1..=steps {
        let g = gradient(&mut rng, table, low_rank(t));
        let mut grads = be.alloc(d).unwrap();
        be.upload(&mut grads, &g).unwrap();
        opt.step(be, table, &mut p, &grads, 1e-2).unwrap();
        out.push(be.download(&p).unwrap());
    }
    out
}

/// Eigenvectors of a symmetric k×k matrix as the columns of a row-major matrix, eigenvalues descending.
fn eigvecs(a: &[f64], k: usize) -> Vec<f64> {
    let m = Mat::<f64>::from_fn(k, k, |i, j| a[i * k + j]);
    let e = m.self_adjoint_eigen(Side::Lower).unwrap();
    let u = e.U();
    let mut q = vec![0.0; k * k];
    for i in 0..k {
        for j in 0..k {
            q[i * k + j] = u[(i, k - 1 - j)];
        }
    }
    q
}

/// SOAP (Vyas et al. Alg. 3) on each 2-D tensor, written from the paper: L, R ← β·(L, R) + (1−β)·(GGᵀ,
/// GᵀG) before the step; at (t − 1) % F = 0 (and not t = 1 with identity initial bases) Q_L, Q_R ←
/// eigenvectors of L, R by descending eigenvalue; M ← β₁M + (1−β₁)G in the original space; M̃ = Q_LᵀMQ_R,
/// G̃ = Q_LᵀGQ_R; V ← β₂V + (1−β₂)G̃² in the eigenbasis; N = Q_L·((M̃/bc₁)/(√(V/bc₂) + ε))·Q_Rᵀ; W ←
/// W(1 − lr·λ) − lr·N. Embeddings: Q_L = I (the channel side only). 1-D tensors: AdamW.
struct Reference {
    beta: f64,
    every: usize,
    identity_init: bool,
    l: BTreeMap<String, Vec<f64>>,
    r: BTreeMap<String, Vec<f64>>,
    ql: BTreeMap<String, Vec<f64>>,
    qr: BTreeMap<String, Vec<f64>>,
    m: Vec<f64>,
    v: Vec<f64>,
}

impl Reference {
    fn new(table: &ParamTable, beta: f64, every: usize, identity_init: bool) -> Self {
        let mut r = Reference {
            beta,
            every,
            identity_init,
            l: BTreeMap::new(),
            r: BTreeMap::new(),
            ql: BTreeMap::new(),
            qr: BTreeMap::new(),
            m: vec![0.0; table.total],
            v: vec![0.0; table.total],
        };
        for e in table.entries.iter().filter(|e| e.is_matrix()) {
            r.l.insert(e.name.clone(), vec![0.0; e.rows * e.rows]);
            r.r.insert(e.name.clone(), vec![0.0; e.cols * e.cols]);
            r.ql.insert(e.name.clone(), identity(e.rows));
            r.qr.insert(e.name.clone(), identity(e.cols));
        }
        r
    }

    fn step(
        &mut self,
        table: &ParamTable,
        tr: &TrainConfig,
        t: usize,
        w: &mut [f64],
        g: &[f64],
        lr: f64,
    ) {
        let (b1, b2, eps) = (tr.beta1, tr.beta2, tr.eps);
        let (bc1, bc2) = (1.0 - b1.powi(t as i32), 1.0 - b2.powi(t as i32));
        let refresh = (t - 1).is_multiple_of(self.every) && !(self.identity_init && t == 1);
        for e in &table.entries {
            let r = e.range();
            let decay = if e.decay {
                1.0 - lr * tr.weight_decay
            } else {
                1.0
            };
            for i in r.clone() {
                self.m[i] = b1 * self.m[i] + (1.0 - b1) * g[i];
            }
            if !e.is_matrix() {
                for i in r {
                    self.v[i] = b2 * self.v[i] + (1.0 - b2) * g[i] * g[i];
                    let u = (self.m[i] / bc1) / ((self.v[i] / bc2).sqrt() + eps);
                    w[i] = w[i] * decay - lr * u;
                }
                continue;
            }
            let (m, n) = (e.rows, e.cols);
            let emb = matches!(e.role, Role::Wte | Role::Wpe);
            let gm = &g[r.clone()];
            let ema = |x: &mut Vec<f64>, s: Vec<f64>| {
                for (x, s) in x.iter_mut().zip(s) {
                    *x = self.beta * *x + (1.0 - self.beta) * s;
                }
            };
            let mut l = self.l[&e.name].clone();
            let mut rr = self.r[&e.name].clone();
            ema(&mut l, matmul(gm, &transpose(gm, m, n), m, n, m));
            ema(&mut rr, matmul(&transpose(gm, m, n), gm, n, m, n));
            if refresh {
                if !emb {
                    self.ql.insert(e.name.clone(), eigvecs(&l, m));
                }
                self.qr.insert(e.name.clone(), eigvecs(&rr, n));
            }
            self.l.insert(e.name.clone(), l);
            self.r.insert(e.name.clone(), rr);
            let (ql, qr) = (&self.ql[&e.name], &self.qr[&e.name]);
            let into = |x: &[f64]| matmul(&matmul(&transpose(ql, m, m), x, m, m, n), qr, m, n, n);
            let mt = into(&self.m[r.clone()]);
            let gt = into(gm);
            let mut nt = vec![0.0; m * n];
            for k in 0..m * n {
                let v = &mut self.v[r.start + k];
                *v = b2 * *v + (1.0 - b2) * gt[k] * gt[k];
                nt[k] = (mt[k] / bc1) / ((*v / bc2).sqrt() + eps);
            }
            let back = matmul(&matmul(ql, &nt, m, m, n), &transpose(qr, n, n), m, n, n);
            for (k, i) in r.enumerate() {
                w[i] = w[i] * decay - lr * back[k];
            }
        }
    }
}

/// soap's steps equal the reference from the paper's formulas, in both first-moment forms (original,
/// and eigenbasis, carried at each refresh: equal in exact arithmetic), with identity initial bases and
/// F = 3: the first refresh (step 4) sees four Gaussian gradients, so L and R are full rank and the
/// eigenbases are unique up to signs, which the paper's form does not see (M̃ and the update flip
/// together, V is squared). Checked planting a refresh at step 1 despite the identity start: fails.
#[test]
fn soap_steps_match_the_papers_formulas() {
    let be = Be::new(1, false);
    let table = table();
    let tr = train();
    let steps = 10;
    for form in [SoapMoment::Original, SoapMoment::Eigenbasis] {
        let rc = soap(0.9, 3, form, SoapInit::Identity);
        let mut opt = optimizer(&be, &tr, &rc, &table);
        let got = run(&mut opt, &be, &table, steps, &|_| false);
        let mut reference = Reference::new(&table, 0.9, 3, true);
        let mut rng = Rng::new(21);
        let mut w = randn(&mut rng, table.total, 0.1);
        for (t, got) in got.iter().enumerate() {
            let g = gradient(&mut rng, &table, false);
            reference.step(&table, &tr, t + 1, &mut w, &g, 1e-2);
            let err = max_diff(got, &w);
            assert!(err <= 1e-10, "{form}: step {}: {err:e}", t + 1);
        }
    }
}

/// With identity initial bases and a refresh period longer than the run, soap is AdamW bit for bit, in
/// every first-moment form (the rotations are copies and M's EMA is the Adam link's own arithmetic).
/// Checked planting β₁ + 0.01 in the original form's EMA of M: fails.
#[test]
fn soap_with_identity_bases_is_adamw_bit_for_bit() {
    let be = Be::new(2, false);
    let table = table();
    let tr = train();
    let plain = run(
        &mut Optimizer::unrotated(&be, &tr, &table).unwrap(),
        &be,
        &table,
        6,
        &|_| false,
    );
    for form in [
        SoapMoment::Original,
        SoapMoment::Eigenbasis,
        SoapMoment::Positional,
    ] {
        let rc = soap(0.95, 100, form, SoapInit::Identity);
        let mut opt = optimizer(&be, &tr, &rc, &table);
        let got = run(&mut opt, &be, &table, 6, &|_| false);
        assert!(got == plain, "{form}: differs from AdamW");
        assert!(opt.basis.describe().contains("identity until"));
    }
}

/// The bases are orthogonal (QᵀQ = I to 1e-12), also where G·Gᵀ is rank-deficient and the canonical
/// completion fills the null space; rotate∘unrotate is the identity. Checked planting a completion that
/// skips the Householder step (the identity's columns): fails (0.59).
#[test]
fn soap_bases_are_orthogonal_and_rotate_unrotate_is_the_identity() {
    let be = Be::new(2, false);
    let table = table();
    let tr = train();
    let rc = soap(0.95, 2, SoapMoment::Original, SoapInit::Eigh);
    let mut opt = optimizer(&be, &tr, &rc, &table);
    // rank-2 gradients at the refreshes of steps 1 and 3
    run(&mut opt, &be, &table, 3, &|t| t != 2);
    let state = opt.basis.state(&be).unwrap();
    let mut checked = 0;
    for (name, shape, q) in &state {
        if !(name.ends_with(".U") || name.ends_with(".V")) {
            continue;
        }
        let k = shape[0];
        let qtq = matmul(&transpose(q, k, k), q, k, k, k);
        let err = max_diff(&qtq, &identity(k));
        assert!(err <= 1e-12, "{name}: ‖QᵀQ − I‖ = {err:e}");
        checked += 1;
    }
    // per layer q, k, v, c_proj, c_fc, c_proj (U and V) and wte, wpe (V only)
    assert_eq!(checked, 2 * 6 * 2 + 2, "{state:?}");
    let mut rng = Rng::new(5);
    let x = randn(&mut rng, table.total, 1.0);
    let (mut xb, mut y, mut back) = (
        be.alloc(table.total).unwrap(),
        be.alloc(table.total).unwrap(),
        be.alloc(table.total).unwrap(),
    );
    be.upload(&mut xb, &x).unwrap();
    opt.basis.rotate(&be, &mut y, &xb).unwrap();
    opt.basis.unrotate(&be, &mut back, &y).unwrap();
    let err = max_diff(&be.download(&back).unwrap(), &x);
    assert!(err <= 1e-12, "rotate∘unrotate: {err:e}");
    let moved = max_diff(&be.download(&y).unwrap(), &x);
    assert!(moved > 0.1, "the rotation should move x ({moved:e})");
}

/// soap with β = 0 computes its bases from the current gradient alone: the eigenvectors of G·Gᵀ and
/// Gᵀ·G are G's singular vectors, so with the poster's positional first moment it IS the `svd` rotation
/// (any F), and with β₁ = 0 also in the paper's form (F = 1). Canonical signs,
/// order and null-space completion make the bases equal, not only equivalent: checked with rank-2
/// gradients at the refreshes (null spaces of dimension up to 62). The bases agree to ~1e-15. Planting
/// no sign rule: fails (2.8e-2 at step 4).
#[test]
fn soap_with_beta_zero_is_the_svd_rotation() {
    let be = Be::new(2, false);
    let table = table();
    let svd_rc = |every| RotationConfig {
        kind: "svd".parse().unwrap(),
        svd_every: every,
        ..Default::default()
    };
    let low_rank = |t: usize| t % 2 == 1;
    for (every, form, beta1) in [
        (3, SoapMoment::Positional, 0.9),
        (1, SoapMoment::Positional, 0.9),
        (1, SoapMoment::Original, 0.0),
        (1, SoapMoment::Eigenbasis, 0.0),
    ] {
        // ε = 1e-4: in a null direction G̃ is rounding noise (~1e-14 here), which Adam divides by
        // |noise| + ε; at the default 1e-8 that puts ~1e-7 of differing noise into the parameters
        let tr = TrainConfig {
            beta1,
            eps: 1e-4,
            ..train()
        };
        let mut a = optimizer(&be, &tr, &svd_rc(every), &table);
        let mut b = optimizer(&be, &tr, &soap(0.0, every, form, SoapInit::Eigh), &table);
        let pa = run(&mut a, &be, &table, 7, &low_rank);
        let pb = run(&mut b, &be, &table, 7, &low_rank);
        let mut worst: f64 = 0.0;
        for (t, (x, y)) in pa.iter().zip(&pb).enumerate() {
            let err = max_diff(x, y);
            assert!(
                err <= 1e-9,
                "F={every} {form} β₁={beta1}: step {}: {err:e}",
                t + 1
            );
            worst = worst.max(err);
        }
        let sa = a.basis.state(&be).unwrap();
        let sb: BTreeMap<String, Vec<f64>> = b
            .basis
            .state(&be)
            .unwrap()
            .into_iter()
            .map(|(n, _, v)| (n, v))
            .collect();
        let mut worst_basis: f64 = 0.0;
        for (name, _, q) in sa
            .iter()
            .filter(|(n, _, _)| n.ends_with(".U") || n.ends_with(".V"))
        {
            let other = &sb[&name.replacen("svd.", "soap.", 1)];
            let err = max_diff(q, other);
            assert!(err <= 1e-8, "F={every} {form}: basis {name}: {err:e}");
            worst_basis = worst_basis.max(err);
        }
        eprintln!("F={every} {form}: parameters {worst:e}, bases {worst_basis:e}");
    }
}

/// What soap refuses: another optimizer than AdamW (the config), a chain without an Adam link whose first
/// moment the original form keeps (the optimizer), β outside [0, 1), F = 0; Muon under soap.
#[test]
fn soap_refuses_what_it_cannot_do() {
    let be = Be::new(1, false);
    let table = table();
    let mut cfg: RunConfig = tiny_config(Path::new("."), Path::new("."), 1);
    cfg.rotation.kind = "soap".parse().unwrap();
    cfg.validate().unwrap();
    for (opt, word) in [(OptimizerKind::Sgd, "adamw"), (OptimizerKind::Muon, "soap")] {
        let mut c = cfg.clone();
        c.train.optimizer = opt;
        let err = c.validate().unwrap_err().to_string();
        assert!(
            err.contains(word) && err.contains("rotation"),
            "{opt:?}: {err}"
        );
    }
    let mut c = cfg.clone();
    c.rotation.soap.beta = 1.0;
    assert!(c.validate().unwrap_err().to_string().contains("soap-beta"));
    let mut c = cfg.clone();
    c.rotation.soap.every = 0;
    assert!(c.validate().unwrap_err().to_string().contains("soap-every"));
    // the optimizer: SGD's chain in soap's original form has no first moment to keep
    let tr = TrainConfig {
        optimizer: OptimizerKind::Sgd,
        ..train()
    };
    let rc = soap(0.9, 3, SoapMoment::Original, SoapInit::Eigh);
    let basis = Basis::new(&be, &rc, &table).unwrap();
    let chain = Transform::chain(OptimizerKind::Sgd, &tr, true);
    let err = Optimizer::new(&be, OptimizerKind::Sgd, chain, basis, &table)
        .err()
        .expect("refused")
        .to_string();
    assert!(err.contains("first moment"), "{err}");
}
