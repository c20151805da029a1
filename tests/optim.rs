//! Optimizers under rotations: the paper's own validations (Maes et al. App. C.4) as tests.
//! SGD and AdaSGD are rotation-equivariant; Adam is permutation- and reflection-equivariant but not
//! rotation-equivariant; `none` is the unrotated optimizer; blockwise Adam with one block per coordinate
//! is Adam, and blockwise Adam is equivariant to the rotations that stay inside its blocks; resume under a
//! rotation is bit-identical.

use crate::util::{synthetic_data, tiny_config, tmp};
use rotadam::config::{
    BlockPartition, EmbeddingRotation, OptimizerKind, Precision, RotationKind, RunConfig,
    VectorRotation,
};
use rotadam::run::{checkpoint, metrics, train};
use std::path::Path;

fn losses(dir: &Path) -> Vec<f64> {
    metrics::read(&dir.join("metrics.jsonl"))
        .unwrap()
        .iter()
        .map(|r| r.train_loss)
        .collect()
}

/// Run `cfg` under each (scope, block) and return the loss curves.
fn curves(root: &Path, base: &RunConfig, runs: &[(&str, usize)]) -> Vec<Vec<f64>> {
    runs.iter()
        .map(|(scope, n)| {
            let mut c = base.clone();
            c.rotation.kind = scope.parse().unwrap();
            c.rotation.block = *n;
            c.rotation.seed = 7;
            c.out = root.join(format!("{scope}-{n}-{:?}", c.train.optimizer));
            train::train(&c, false).unwrap();
            losses(&c.out)
        })
        .collect()
}

fn max_rel_diff(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs() / x.abs().max(1e-12))
        .fold(0.0, f64::max)
}

/// Trains `a` straight to its `steps`, and a copy into `resumed_out` that stops at `stop` (where
/// `at_stop` looks at it), then resumes to the end; the `files` of both runs' last checkpoints must be the
/// same bytes. Returns the resumed run's config.
fn assert_resume_is_bit_identical(
    a: &RunConfig,
    resumed_out: &Path,
    stop: usize,
    at_stop: impl Fn(&RunConfig),
    files: &[&str],
    label: &str,
) -> RunConfig {
    train::train(a, false).unwrap();
    let mut b = a.clone();
    b.out = resumed_out.to_path_buf();
    b.train.steps = stop;
    train::train(&b, false).unwrap();
    at_stop(&b);
    b.train.steps = a.train.steps;
    train::train(&b, true).unwrap();
    let end = a.train.steps;
    for f in files {
        let x = std::fs::read(checkpoint::step_dir(&a.out, end).join(f)).unwrap();
        let y = std::fs::read(checkpoint::step_dir(&b.out, end).join(f)).unwrap();
        assert!(x == y, "{label}: {f} differs after resume");
    }
    b
}

fn base(root: &Path, optimizer: OptimizerKind, precision: Precision, steps: usize) -> RunConfig {
    let mut c = tiny_config(root, root, steps);
    c.model.bias = true; // biases and LN gains are rotated too
    c.train.optimizer = optimizer;
    c.train.lr = match optimizer {
        OptimizerKind::Sgd => 0.3,
        _ => 1e-2,
    };
    c.train.min_lr = c.train.lr / 10.0;
    c.train.lr_decay_steps = None;
    c.train.checkpoint_every = steps;
    c.train.eval_every = steps;
    c.precision = precision;
    c
}

/// SGD with momentum reproduces the unrotated loss curve under every scope: f64 to 1e-9 relative over 30
/// steps (the paper's Fig. 9 check). In f32 the rotations round differently (each rotated coordinate is a
/// length-n dot product): the curves agree to 1e-4 relative (`docs/testing.md`).
#[test]
fn sgd_and_adasgd_are_rotation_equivariant() {
    let root = tmp("equivariant");
    synthetic_data(&root);
    let scopes = [
        ("none", 7),
        ("global", 7),
        ("layer", 7),
        ("output", 7),
        ("input", 7),
    ];
    for (opt, precision, tol) in [
        (OptimizerKind::Sgd, Precision::Fp64, 1e-9),
        (OptimizerKind::Adasgd, Precision::Fp64, 1e-9),
        (OptimizerKind::Sgd, Precision::Fp32, 1e-4),
    ] {
        let c = curves(&root, &base(&root, opt, precision, 30), &scopes);
        assert!(
            c[0][29] < c[0][0] - 0.1,
            "{opt:?} did not train: {:?}",
            c[0]
        );
        for (i, (scope, _)) in scopes.iter().enumerate().skip(1) {
            let d = max_rel_diff(&c[0], &c[i]);
            assert!(
                d <= tol,
                "{opt:?} {precision:?} under {scope}: max relative loss difference {d:e} > {tol:e}"
            );
        }
        for (scope, _) in &scopes {
            let _ = std::fs::remove_dir_all(root.join(format!("{scope}-7-{opt:?}")));
        }
    }
    std::fs::remove_dir_all(&root).unwrap();
}

/// Adam under a pure permutation with coordinate sign flips (rotation blocks of size 1: R₁ = ±1)
/// reproduces unrotated Adam exactly in f64, while a real rotation changes it.
#[test]
fn adam_is_permutation_and_reflection_equivariant_but_not_rotation_equivariant() {
    let root = tmp("adam-equivariance");
    synthetic_data(&root);
    let b = base(&root, OptimizerKind::Adamw, Precision::Fp64, 20);
    let c = curves(
        &root,
        &b,
        &[("none", 1), ("global", 1), ("output", 1), ("global", 7)],
    );
    assert_eq!(c[0], c[1], "Adam under a global permutation + sign flips");
    assert_eq!(
        c[0], c[2],
        "Adam under per-neuron permutations + sign flips"
    );
    let d = max_rel_diff(&c[0], &c[3]);
    assert!(
        d > 1e-3,
        "Adam under a global rotation should differ from unrotated Adam (max rel diff {d:e})"
    );
    // the weights themselves, not only the losses
    let w = |scope: &str, n: usize| {
        std::fs::read(
            checkpoint::step_dir(&root.join(format!("{scope}-{n}-Adamw")), 20)
                .join("model.safetensors"),
        )
        .unwrap()
    };
    assert!(
        w("none", 1) == w("global", 1),
        "weights differ under a permutation + sign flips"
    );
    std::fs::remove_dir_all(&root).unwrap();
}

/// Blockwise Adam with one block per coordinate is Adam (same update up to the order of one product:
/// (1−β₂)·g·g vs (1−β₂)·(g·g), so 1e-12 relative in f64).
#[test]
fn blockwise_adam_with_coordinate_blocks_is_adam() {
    let root = tmp("blockwise");
    synthetic_data(&root);
    let adam = curves(
        &root,
        &base(&root, OptimizerKind::Adamw, Precision::Fp64, 15),
        &[("none", 7)],
    );
    let mut bw = base(&root, OptimizerKind::BlockwiseAdam, Precision::Fp64, 15);
    bw.train.blocks = BlockPartition::Coordinate;
    let blockwise = curves(&root, &bw, &[("none", 7)]);
    let d = max_rel_diff(&adam[0], &blockwise[0]);
    assert!(
        d <= 1e-12,
        "blockwise Adam (coordinate blocks) vs Adam: {d:e}"
    );
    // and tensor blocks are a different optimizer
    bw.train.blocks = BlockPartition::Tensor;
    bw.out = root.join("tensor");
    train::train(&bw, false).unwrap();
    assert!(max_rel_diff(&adam[0], &losses(&bw.out)) > 1e-4);
    std::fs::remove_dir_all(&root).unwrap();
}

/// Blockwise Adam is equivariant to every rotation that stays inside its blocks (a block's second moment
/// is the mean of g² over the block, which such a rotation keeps): tensor blocks under `layer` (and the
/// finer `output` and `input`), neuron blocks under `output` with every choice of what a neuron is, each
/// against the unrotated run with the same blocks — f64, 12 steps, losses to 1e-9 relative. n = 7 leaves
/// residual chunks at the end of the rotated layout and strided embedding columns; n = 16 none. Neuron
/// blocks under `global` are the control: that rotation leaves the blocks, and the losses move.
///
/// Checked with planted bugs: the blocks as ranges of ParamTable entries in the rotated layout (the code
/// before this test: tensor/layer n=7 and every neuron/output case fail), neuron blocks as rows of the
/// embeddings (neuron/output with `paper` fails), and the gather into block order left out (fails).
#[test]
fn blockwise_adam_is_equivariant_to_rotations_inside_its_blocks() {
    let root = tmp("blockwise-equivariant");
    synthetic_data(&root);
    let neurons = |vectors, embeddings| (vectors, embeddings);
    let default = neurons(VectorRotation::Neuron, EmbeddingRotation::Paper);
    let run = |blocks: BlockPartition, scope: &str, n: usize, (v, e)| {
        let mut c = base(&root, OptimizerKind::BlockwiseAdam, Precision::Fp64, 12);
        c.train.blocks = blocks;
        c.rotation.kind = scope.parse().unwrap();
        c.rotation.block = n;
        c.rotation.seed = 7;
        c.rotation.vectors = v;
        c.rotation.embeddings = e;
        c.out = root.join(format!("{blocks}-{scope}-{n}-{v}-{e}"));
        let _ = std::fs::remove_dir_all(&c.out); // an unrotated baseline is rerun per case
        train::train(&c, false).unwrap();
        losses(&c.out)
    };
    let mut cases = vec![
        (BlockPartition::Tensor, "layer", default),
        (BlockPartition::Tensor, "output", default),
        (BlockPartition::Tensor, "input", default),
    ];
    for v in [VectorRotation::Neuron, VectorRotation::Mixed] {
        for e in [
            EmbeddingRotation::Paper,
            EmbeddingRotation::Head,
            EmbeddingRotation::None,
        ] {
            cases.push((BlockPartition::Neuron, "output", neurons(v, e)));
        }
    }
    let mut bad = Vec::new();
    for n in [7, 16] {
        for &(blocks, scope, ne) in &cases {
            let plain = run(blocks, "none", n, ne);
            assert!(plain[11] < plain[0] - 0.1, "did not train: {plain:?}");
            let d = max_rel_diff(&plain, &run(blocks, scope, n, ne));
            if d > 1e-9 {
                bad.push(format!(
                    "{blocks} blocks under {scope}, n={n}, {ne:?}: {d:e}"
                ));
            }
        }
        let plain = run(BlockPartition::Neuron, "none", n, default);
        let d = max_rel_diff(&plain, &run(BlockPartition::Neuron, "global", n, default));
        assert!(
            d > 1e-6,
            "neuron blocks under global should move (n={n}, {d:e})"
        );
    }
    assert!(
        bad.is_empty(),
        "blockwise Adam is not equivariant (max relative loss difference against none, > 1e-9):\n{}",
        bad.join("\n")
    );
    std::fs::remove_dir_all(&root).unwrap();
}

/// Blockwise Adam's move into block order (a gather and a scatter with 1×1 blocks holding 1) runs on the
/// kernel backend as on the CPU: tensor blocks under `output` with n = 7 (residual chunks at the end of the
/// layout, so the blocks are gathered), 3 steps through the emulated kernels against the CPU's f32 steps,
/// to `cuda::step`'s documented f32 tolerance (reductions in another order).
#[test]
fn blockwise_adam_in_block_order_on_the_emulated_kernels() {
    use crate::cuda::step::train_optimizer;
    use rotadam::backend::cpu::CpuBackend;
    use rotadam::backend::emu::EmuBackend;
    let kind = OptimizerKind::BlockwiseAdam;
    let (le, pe) = train_optimizer(&EmuBackend::emulated(1, false), kind, "output", 3, false);
    let (lc, pc) = train_optimizer(&CpuBackend::<f32>::new(1, false), kind, "output", 3, false);
    let d = max_rel_diff(&lc, &le);
    assert!(d <= 1e-5, "losses: emulated {le:?} vs cpu {lc:?}");
    crate::util::assert_close(
        "blockwise Adam under output: parameters after 3 steps",
        &pe,
        &pc,
        1e-5,
        1e-4,
    );
}

/// Muon on the emulated kernels (through the generic backend ops: GEMMs, scales, the momentum and update
/// steps) agrees with the CPU in f32: losses to 1e-5 relative, parameters to 1e-5 + 1e-4 relative after
/// 3 steps.
#[test]
fn muon_on_the_emulated_kernels() {
    use crate::cuda::step::train_optimizer;
    use rotadam::backend::cpu::CpuBackend;
    use rotadam::backend::emu::EmuBackend;
    let kind = OptimizerKind::Muon;
    let (le, pe) = train_optimizer(&EmuBackend::emulated(1, false), kind, "none", 3, false);
    let (lc, pc) = train_optimizer(&CpuBackend::<f32>::new(1, false), kind, "none", 3, false);
    let d = max_rel_diff(&lc, &le);
    assert!(d <= 1e-5, "losses: emulated {le:?} vs cpu {lc:?}");
    crate::util::assert_close("Muon: parameters after 3 steps", &pe, &pc, 1e-5, 1e-4);
}

/// A resumed run under every rotation continues bit-identically (the basis is rebuilt from scope, n and
/// seed; `svd` has its own test below).
#[test]
fn resume_under_rotations_is_bit_identical() {
    let root = tmp("rot-resume");
    synthetic_data(&root);
    for (scope, opt) in [
        ("none", OptimizerKind::Adamw),
        ("global", OptimizerKind::Adamw),
        ("output", OptimizerKind::BlockwiseAdam),
        ("layer", OptimizerKind::Adasgd),
        ("input", OptimizerKind::Sgd),
        ("kron", OptimizerKind::Adamw),
        ("none", OptimizerKind::Muon),
    ] {
        let mut a = base(&root, opt, Precision::Fp32, 8);
        a.rotation.kind = scope.parse().unwrap();
        a.rotation.block = 5;
        a.train.checkpoint_every = 4;
        a.train.lr_decay_steps = Some(8);
        a.out = root.join(format!("{scope}-{opt:?}-straight"));
        let b = assert_resume_is_bit_identical(
            &a,
            &root.join(format!("{scope}-{opt:?}-resumed")),
            4,
            |_| {},
            &["model.safetensors", "optim.safetensors"],
            &format!("{scope}/{opt:?}"),
        );
        // resuming with another rotation seed is refused
        let mut c = b.clone();
        c.rotation.seed += 1;
        c.train.steps = 9;
        let err = train::train(&c, true).unwrap_err().to_string();
        assert!(err.contains("rotation"), "{err}");
    }
    std::fs::remove_dir_all(&root).unwrap();
}

/// The structured rotations: SGD with momentum is equivariant under `kron` (a fixed rotation); under `svd`
/// the basis changes at every refresh and the moments are not transformed (the poster's algorithm), so
/// plain SGD (momentum 0) is the equivariant one. Adam changes under both.
#[test]
fn structured_rotations_svd_and_kron() {
    let root = tmp("structured");
    synthetic_data(&root);
    let run = |opt: OptimizerKind, momentum: f64, kind: &str| {
        let mut c = base(&root, opt, Precision::Fp64, 12);
        c.train.momentum = momentum;
        c.rotation.kind = kind.parse().unwrap();
        c.rotation.svd_every = 5;
        c.rotation.kron_stages = 2;
        c.rotation.seed = 3;
        c.out = root.join(format!("{kind}-{opt:?}-{momentum}"));
        let _ = std::fs::remove_dir_all(&c.out); // the unrotated baselines are rerun per kind
        train::train(&c, false).unwrap();
        losses(&c.out)
    };
    for (kind, momentum) in [("kron", 0.9), ("svd", 0.0)] {
        let a = run(OptimizerKind::Sgd, momentum, "none");
        let b = run(OptimizerKind::Sgd, momentum, kind);
        let d = max_rel_diff(&a, &b);
        assert!(d <= 1e-9, "SGD (momentum {momentum}) under {kind}: {d:e}");
        let a = run(OptimizerKind::Adamw, 0.9, "none");
        let b = run(OptimizerKind::Adamw, 0.9, kind);
        assert!(
            max_rel_diff(&a, &b) > 1e-4,
            "Adam under {kind} should differ from unrotated Adam"
        );
    }
    std::fs::remove_dir_all(&root).unwrap();
}

/// Resume under `svd` restores U, V and the refresh step, and under `soap` its factors L, R and, in the
/// original form, M: bit-identical continuation in every form (planted: M left out of the state: the
/// original form's files differ).
#[test]
fn resume_under_svd_and_soap_restores_their_state() {
    use rotadam::config::{SoapInit, SoapMoment};
    let root = tmp("svd-resume");
    synthetic_data(&root);
    for (name, kind, form, init) in [
        (
            "svd",
            RotationKind::Svd,
            SoapMoment::Original,
            SoapInit::Eigh,
        ),
        (
            "soap-original",
            RotationKind::Soap,
            SoapMoment::Original,
            SoapInit::Eigh,
        ),
        (
            "soap-eigenbasis",
            RotationKind::Soap,
            SoapMoment::Eigenbasis,
            SoapInit::Eigh,
        ),
        (
            "soap-positional",
            RotationKind::Soap,
            SoapMoment::Positional,
            SoapInit::Identity,
        ),
    ] {
        let mut a = base(&root, OptimizerKind::Adamw, Precision::Fp32, 8);
        a.rotation.kind = kind;
        a.rotation.svd_every = 3; // refreshes before steps 1, 4, 7
        a.rotation.soap.every = 3; // likewise (4 and 7 only under the identity start)
        a.rotation.soap.first_moment = form;
        a.rotation.soap.init = init;
        a.train.checkpoint_every = 5;
        a.train.lr_decay_steps = Some(8);
        a.out = root.join(format!("{name}-straight"));
        assert_resume_is_bit_identical(
            &a,
            &root.join(format!("{name}-resumed")),
            5,
            |b| {
                assert!(checkpoint::step_dir(&b.out, 5)
                    .join("rotation.safetensors")
                    .is_file())
            },
            &[
                "model.safetensors",
                "optim.safetensors",
                "rotation.safetensors",
            ],
            name,
        );
    }
    std::fs::remove_dir_all(&root).unwrap();
}

/// svd and soap on the emulated kernels (f32: the rotations' GEMMs with both transpose flags, soap's
/// G·Gᵀ, Gᵀ·G and EMAs as CUDA kernels) against the CPU backend in f32, 3 steps (refreshes at step 1,
/// soap's factors updated at every step). soap's parameters get atol 5e-5 instead of 1e-5: its bases
/// are eigenvectors of f32 factors, accurate to ε₃₂·λ₁/gap, so the two backends' roundings move the
/// vectors of close eigenvalues apart (measured: 2 of 7,312 parameters 1.2e-5 apart).
#[test]
fn svd_and_soap_on_the_emulated_kernels() {
    use crate::cuda::step::train_optimizer;
    use rotadam::backend::cpu::CpuBackend;
    use rotadam::backend::emu::EmuBackend;
    let kind = OptimizerKind::Adamw;
    for (rot, atol) in [("svd", 1e-5), ("soap", 5e-5)] {
        let (le, pe) = train_optimizer(&EmuBackend::emulated(1, false), kind, rot, 3, true);
        let (lc, pc) = train_optimizer(&CpuBackend::<f32>::new(1, false), kind, rot, 3, true);
        let d = max_rel_diff(&lc, &le);
        assert!(d <= 1e-5, "{rot}: losses: emulated {le:?} vs cpu {lc:?}");
        crate::util::assert_close(
            &format!("{rot}: parameters after 3 steps"),
            &pe,
            &pc,
            atol,
            1e-4,
        );
    }
}

/// Every fused plan is its chain's arithmetic on the CPU, run link by link (`Optimizer::unfused`): the
/// same bits over 3 steps with weight decay and clipping. Rotated AdamW (`rotate_adam_direction`, the
/// decay per tensor, `unrotate_apply_update`) under every block scope (n = 7 leaves residual blocks), both
/// ways of moving coordinates; AdamW's and SGD's one-pass ops without a rotation; f32 and f64.
#[test]
fn fused_plans_are_bit_identical_to_the_chain() {
    use crate::cuda::step::{train_optimizer, Run};
    use rotadam::backend::cpu::{CpuBackend, GatherMode};
    use rotadam::backend::Scalar;
    fn check<S: Scalar>(kind: OptimizerKind, scope: &str, mode: GatherMode) {
        let be = CpuBackend::<S>::new(2, false).with_gather(mode);
        let run = |unfused| train_optimizer(&be, kind, scope, 3, unfused);
        let (fused, chain): (Run, Run) = (run(false), run(true));
        assert!(
            fused == chain,
            "{} {kind:?} {scope} {mode:?}: the fused plan differs from the chain",
            S::NAME
        );
    }
    for scope in ["global", "layer", "output", "input"] {
        for mode in [GatherMode::Direct, GatherMode::Bucketed] {
            check::<f32>(OptimizerKind::Adamw, scope, mode);
            check::<f64>(OptimizerKind::Adamw, scope, mode);
        }
    }
    for kind in [OptimizerKind::Adamw, OptimizerKind::Sgd] {
        check::<f32>(kind, "none", GatherMode::Auto);
        check::<f64>(kind, "none", GatherMode::Auto);
    }
}

/// A chain's rotate/unrotate links and its basis go together: a chain without them in a rotated basis
/// (the basis would be ignored) and a chain with them in the standard basis are refused, naming both.
#[test]
fn a_chain_must_match_its_basis() {
    use rotadam::backend::cpu::CpuBackend;
    use rotadam::config::{RotationConfig, TrainConfig};
    use rotadam::model::ParamTable;
    use rotadam::optim::{Optimizer, Transform};
    use rotadam::rotation::basis::Basis;
    let be = CpuBackend::<f64>::new(1, false);
    let table = ParamTable::new(&tiny_config(Path::new("."), Path::new("."), 1).model);
    let tr = TrainConfig::default();
    for kind in [
        OptimizerKind::Adamw,
        OptimizerKind::Sgd,
        OptimizerKind::Adasgd,
        OptimizerKind::BlockwiseAdam,
    ] {
        for rotation in ["layer", "global", "svd", "kron"] {
            let rc = RotationConfig {
                kind: rotation.parse().unwrap(),
                block: 8,
                seed: 3,
                ..Default::default()
            };
            let rotated = || Basis::new(&be, &rc, &table).unwrap();
            let plain = Transform::chain(kind, &tr, false);
            let e = Optimizer::new(&be, kind, plain, rotated(), &table)
                .err()
                .unwrap_or_else(|| panic!("{kind:?} without rotate links under {rotation}"))
                .to_string();
            assert!(e.contains("rotate") && e.contains(rotation), "{e}");
            // the matching chain is fine
            Optimizer::new(
                &be,
                kind,
                Transform::chain(kind, &tr, true),
                rotated(),
                &table,
            )
            .unwrap();
        }
        let identity = Basis::identity(&be, &table).unwrap();
        let e = Optimizer::new(
            &be,
            kind,
            Transform::chain(kind, &tr, true),
            identity,
            &table,
        )
        .err()
        .unwrap_or_else(|| panic!("{kind:?} with rotate links in the standard basis"))
        .to_string();
        assert!(e.contains("rotate") && e.contains("standard basis"), "{e}");
    }
}
