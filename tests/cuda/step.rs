//! Whole training steps of a tiny GPT-2 through the emulated kernels (`EmuBackend`: every op a kernel of
//! `kernels/*.cu` run by the CPU emulator, GEMMs on the CPU since cuBLAS is not emulated) against the CPU
//! backend's steps (`CpuBackend<f32>`), in fp32 and bf16, under AdamW with the `global` rotation
//! (n = 7, which divides nothing: a residual block is exercised; the emulator runs the fused rotated-AdamW
//! kernels, the CPU the split path) and with plain AdamW.
//!
//! Documented tolerance. fp32: the two backends compute the same formulas and differ only in the order of
//! reductions (warp butterflies vs 8-lane CPU sums): per-op differences of a few f32 ulps. Over 3 steps
//! the losses agree to 1e-5 relative and the parameters to 1e-5 + 1e-4·|p| (Adam's normalised update
//! magnifies gradient differences only where v is tiny; lr = 1e-2). bf16: both round every stored
//! activation to bf16, and an ulp-level difference can flip a rounding (2⁻⁸ relative): losses agree to
//! 2e-3 relative, parameters to 2e-3 + 2e-3·|p|, and the update directions have cosine > 0.999.

use rotadam::backend::cpu::CpuBackend;
use rotadam::backend::emu::EmuBackend;
use rotadam::backend::Backend;
use rotadam::config::{ModelConfig, OptimizerKind, RotationConfig, TrainConfig};
use rotadam::model::Gpt2;
use rotadam::optim::{clip_grads, grad_norm, Optimizer, Plan};
use rotadam::rng::Rng;
use rotadam::rotation::basis::Basis;

/// The model of the CUDA backend's self-check.
fn cfg() -> ModelConfig {
    rotadam::device::check_model()
}

/// A training run of [`train`]: the losses and the final parameters.
pub type Run = (Vec<f64>, Vec<f64>);

/// Losses of `steps` AdamW training steps (weight decay on, clipping active) and the final parameters,
/// on backend `be`, under rotation `rotation` (n = 7); `split` runs AdamW's chain link by link
/// ([`Optimizer::unfused`]) instead of the fused ops. Panics unless the plan taken is the one asked for.
pub fn train<BK: Backend>(be: &BK, rotation: &str, steps: usize, split: bool) -> Run {
    train_optimizer(be, OptimizerKind::Adamw, rotation, steps, split)
}

/// [`train`] with optimizer `kind` (SGD at a larger learning rate).
pub fn train_optimizer<BK: Backend>(
    be: &BK,
    kind: OptimizerKind,
    rotation: &str,
    steps: usize,
    split: bool,
) -> Run {
    let cfg = cfg();
    let tr = TrainConfig {
        optimizer: kind,
        lr: if kind == OptimizerKind::Sgd {
            0.3
        } else {
            1e-2
        },
        // svd and soap rotate each weight into its gradient's singular (eigen)vectors; with 24 tokens a
        // step the gradients are rank-deficient, and in the null directions G̃ is f32 rounding noise
        // (~1e-7·‖G‖), which Adam at ε = 1e-8 turns into full-size steps that differ between any two
        // backends. ε = 1e-3 keeps that noise out of the comparison.
        eps: if matches!(rotation, "svd" | "soap") {
            1e-3
        } else {
            TrainConfig::default().eps
        },
        ..TrainConfig::default()
    };
    let mut model = Gpt2::new(be, &cfg, 3).unwrap();
    let rot = RotationConfig {
        kind: rotation.parse().unwrap(),
        block: 7,
        seed: 5,
        ..Default::default()
    };
    let basis = Basis::new(be, &rot, &model.table).unwrap();
    let mut opt = Optimizer::for_run(be, &tr, basis, &model.table).unwrap();
    if split {
        opt = opt.unfused();
    }
    let want = match (split, kind, rotation) {
        (true, _, _) => Plan::Chain,
        (false, OptimizerKind::Adamw, "none") => Plan::FusedAdamW,
        (false, OptimizerKind::Sgd, "none") => Plan::FusedSgd,
        (false, OptimizerKind::Adamw, _) => Plan::FusedRotatedAdamW,
        (false, _, _) => Plan::Chain,
    };
    assert_eq!(opt.plan(), want, "{rotation} split={split}");
    let (b, t) = (3, 8);
    let mut rng = Rng::new(11);
    let mut losses = Vec::new();
    for _ in 0..steps {
        let x: Vec<u32> = (0..b * t)
            .map(|_| rng.below(cfg.vocab_size as u64) as u32)
            .collect();
        let y: Vec<u32> = (0..b * t)
            .map(|_| rng.below(cfg.vocab_size as u64) as u32)
            .collect();
        model.zero_grads(be).unwrap();
        let loss = model
            .forward_backward(be, &x, &y, b, t, 1.0 / (b * t) as f64)
            .unwrap();
        let norm = grad_norm(be, &model.grads).unwrap();
        // clip at half the norm so the clipping kernel path runs
        clip_grads(be, &mut model.grads, norm, 0.5 * norm).unwrap();
        opt.step(be, &model.table, &mut model.params, &model.grads, tr.lr)
            .unwrap();
        losses.push(loss);
    }
    (losses, model.params_f64(be).unwrap())
}

fn compare(label: &str, bf16: bool, rotation: &str) {
    let steps = 3;
    // the emulated kernels fused, the CPU through the split path: the fused kernels against the reference
    let (le, pe) = train(&EmuBackend::emulated(1, bf16), rotation, steps, false);
    let (lc, pc) = train(&CpuBackend::<f32>::new(1, bf16), rotation, steps, true);
    let (lrt, patol, prtol) = if bf16 {
        (2e-3, 2e-3, 2e-3)
    } else {
        (1e-5, 1e-5, 1e-4)
    };
    for (s, (a, b)) in le.iter().zip(&lc).enumerate() {
        assert!(
            (a - b).abs() <= lrt * b.abs(),
            "{label}: step {} loss {a} (emulated) vs {b} (cpu)",
            s + 1
        );
    }
    crate::util::assert_close(
        &format!("{label}: parameters after {steps} steps"),
        &pe,
        &pc,
        patol,
        prtol,
    );
    // the parameters moved, by the same direction
    let p0 = {
        let be = CpuBackend::<f32>::new(1, bf16);
        Gpt2::new(&be, &cfg(), 3).unwrap().params_f64(&be).unwrap()
    };
    let de: Vec<f64> = pe.iter().zip(&p0).map(|(a, b)| a - b).collect();
    let dc: Vec<f64> = pc.iter().zip(&p0).map(|(a, b)| a - b).collect();
    let dot: f64 = de.iter().zip(&dc).map(|(a, b)| a * b).sum();
    let (na, nb) = (
        de.iter().map(|a| a * a).sum::<f64>().sqrt(),
        dc.iter().map(|a| a * a).sum::<f64>().sqrt(),
    );
    assert!(nb > 1e-3, "{label}: the parameters did not move");
    assert!(
        dot / (na * nb) > 0.999,
        "{label}: update cosine {}",
        dot / (na * nb)
    );
}

#[test]
fn training_steps_through_emulated_kernels_match_the_cpu_backend_fp32() {
    compare("fp32 adamw global n=7", false, "global");
    compare("fp32 adamw none", false, "none");
}

#[test]
fn training_steps_through_emulated_kernels_match_the_cpu_backend_bf16() {
    compare("bf16 adamw global n=7", true, "global");
}
