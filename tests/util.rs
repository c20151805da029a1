//! Helpers every test module shares: random inputs, casts between the scalar types, one tolerance check
//! (with tolerances written as multiples of the unit roundoff), and the tiny runs (a token stream, a
//! config, a scratch directory).

use rotadam::backend::Scalar;
use rotadam::config::{DeviceKind, ModelConfig, Precision, RunConfig, TrainConfig};
use rotadam::data::shard::write_flat;
use rotadam::rng::Rng;
use std::path::{Path, PathBuf};

/// f32 unit roundoff 2⁻²⁴.
pub const U32: f64 = f32::EPSILON as f64 / 2.0;

/// `n` values N(0, 1)·scale.
pub fn randn(rng: &mut Rng, n: usize, scale: f64) -> Vec<f64> {
    (0..n).map(|_| rng.normal() * scale).collect()
}

/// [`randn`] rounded to f32, as f64: inputs both precisions see exactly.
pub fn randn_f32(rng: &mut Rng, n: usize, scale: f64) -> Vec<f64> {
    (0..n)
        .map(|_| (rng.normal() * scale) as f32 as f64)
        .collect()
}

pub fn cast<S: Scalar>(x: &[f64]) -> Vec<S> {
    x.iter().map(|&v| <S as Scalar>::from_f64(v)).collect()
}
pub fn back<S: Scalar>(x: &[S]) -> Vec<f64> {
    x.iter().map(|&v| Scalar::to_f64(v)).collect()
}
pub fn f32s(x: &[f64]) -> Vec<f32> {
    x.iter().map(|&v| v as f32).collect()
}
pub fn f64s(x: &[f32]) -> Vec<f64> {
    x.iter().map(|&v| v as f64).collect()
}

/// Row-major m×k times k×n, plain loops (i, k, j order).
pub fn matmul(a: &[f64], b: &[f64], m: usize, k: usize, n: usize) -> Vec<f64> {
    let mut c = vec![0.0; m * n];
    for i in 0..m {
        for p in 0..k {
            for j in 0..n {
                c[i * n + j] += a[i * k + p] * b[p * n + j];
            }
        }
    }
    c
}

/// The transpose of a row-major m×n matrix (n×m, row-major).
pub fn transpose(a: &[f64], m: usize, n: usize) -> Vec<f64> {
    let mut t = vec![0.0; m * n];
    for i in 0..m {
        for j in 0..n {
            t[j * m + i] = a[i * n + j];
        }
    }
    t
}

/// The n×n identity, row-major.
pub fn identity(n: usize) -> Vec<f64> {
    (0..n * n)
        .map(|i| if i / n == i % n { 1.0 } else { 0.0 })
        .collect()
}

/// The largest |a_i − b_i|.
pub fn max_diff(a: &[f64], b: &[f64]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f64::max)
}

/// max |x|.
pub fn max_abs(x: &[f64]) -> f64 {
    x.iter().fold(0.0f64, |m, v| m.max(v.abs()))
}

/// Asserts |got − want| ≤ tol(i, want[i]) elementwise; on failure prints the label, how many elements
/// failed, the first five and the largest difference. A NaN anywhere fails.
#[track_caller]
pub fn assert_close_with(label: &str, got: &[f64], want: &[f64], tol: impl Fn(usize, f64) -> f64) {
    assert_eq!(got.len(), want.len(), "{label}: lengths differ");
    let mut bad = Vec::new();
    let mut max_diff = 0.0f64;
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let d = (g - w).abs();
        max_diff = max_diff.max(d);
        let t = tol(i, w);
        if d.is_nan() || d > t {
            bad.push(format!(
                "  [{i}] got {g:.9e} want {w:.9e} (diff {d:.3e}, tol {t:.3e})"
            ));
        }
    }
    assert!(
        bad.is_empty(),
        "{label}: {} of {} elements out of tolerance, max diff {max_diff:.3e}\n{}",
        bad.len(),
        got.len(),
        bad[..bad.len().min(5)].join("\n")
    );
}

/// |got − want| ≤ atol + rtol·|want| elementwise.
#[track_caller]
pub fn assert_close(label: &str, got: &[f64], want: &[f64], atol: f64, rtol: f64) {
    assert_close_with(label, got, want, |_, w| atol + rtol * w.abs())
}

/// |got − want| ≤ tol·max|want| elementwise: an error relative to the vector's scale.
#[track_caller]
pub fn assert_close_scaled(label: &str, got: &[f64], want: &[f64], tol: f64) {
    let scale = max_abs(want).max(1e-300);
    assert_close_with(label, got, want, |_, _| tol * scale)
}

/// A fresh scratch directory for one test.
pub fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("rotadam-test-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A learnable token stream over a vocabulary of 11: a noisy repeating pattern.
pub fn synthetic_data(dir: &Path) {
    let mut rng = rotadam::rng::Rng::new(4);
    let stream = |n: usize, rng: &mut rotadam::rng::Rng| -> Vec<u16> {
        (0..n)
            .map(|i| {
                if rng.below(10) == 0 {
                    rng.below(11) as u16
                } else {
                    ((i * 3) % 11) as u16
                }
            })
            .collect()
    };
    write_flat(&dir.join("train.bin"), &stream(4000, &mut rng)).unwrap();
    write_flat(&dir.join("val.bin"), &stream(500, &mut rng)).unwrap();
}

pub fn tiny_config(data: &Path, out: &Path, steps: usize) -> RunConfig {
    RunConfig {
        model_preset: "test".into(),
        model: ModelConfig {
            n_layer: 2,
            n_head: 2,
            n_embd: 16,
            seq_len: 8,
            vocab_size: 11,
            bias: false,
        },
        train: TrainConfig {
            batch_size: 3,
            grad_accum: 2,
            steps,
            lr: 1e-2,
            min_lr: 1e-3,
            warmup: 2,
            lr_decay_steps: Some(8),
            eval_every: 2,
            eval_batches: 2,
            checkpoint_every: 4,
            ..TrainConfig::default()
        },
        rotation: Default::default(),
        data: data.to_string_lossy().into(),
        out: out.to_path_buf(),
        device: DeviceKind::Cpu,
        precision: Precision::Fp32,
        threads: 2,
        init_from: None,
        quiet: true,
        max_memory: None,
        parallel: Default::default(),
    }
}

/// The `state.json` of a checkpoint of an f32 AdamW model of `model` after `step` steps (for tests that
/// write checkpoints straight through `checkpoint::save`).
pub fn train_state(
    model: &ModelConfig,
    step: usize,
    num_params: usize,
    train_loss: f64,
) -> rotadam::run::checkpoint::TrainState {
    rotadam::run::checkpoint::TrainState {
        step,
        sampler: rotadam::data::loader::BatchSampler::new(1),
        optimizer: rotadam::config::OptimizerKind::Adamw,
        rotation: Default::default(),
        model: model.clone(),
        dtype: "f32".into(),
        num_params,
        train_loss,
        val_loss: None,
    }
}
