//! `rotadam bench`: the machine's GEMM peak and a full training step, measured in the same run, so every
//! speed figure is a ratio against a baseline taken on the same machine at the same time.
//!
//! - `bench gemm`: GFLOP/s of the CPU GEMM (faer) at the model's matmul shapes and at 1024³; the maximum is
//!   the practical peak used as the MFU denominator.
//! - `bench rotation`: the cost of a rotation of the whole model against the same run's GEMM peak and
//!   training step ([`rotation`]).
//! - `bench kernels`: each kernel family on the best device ([`kernels`]).
//! - `bench step`: forward + backward + AdamW of GPT-2 on random tokens: median ms/step over `--steps`
//!   steps after `--warmup`, tokens/s, MFU = (6·N·tokens + 12·L·B·T²·C) / time / GEMM peak, peak RSS.
//!   A comparison with another trainer (llm.c's CPU `train_gpt2.c`) is only meaningful measured side by
//!   side on the same machine in one session: `docs/benchmarks.md` records one, with its method.
//!
//! The machine may be shared: `/proc/stat` is read around each timed region, and the report says how much
//! CPU other processes used (`other_load_cores`) and flags `contended` when it exceeded 0.1 core.

use crate::backend::cpu::CpuBackend;
use crate::backend::Scalar;
use crate::config::{ModelConfig, OptimizerKind, RotationConfig, RotationKind, Scope, TrainConfig};
use crate::error::{Error, Result};
use crate::model::Gpt2;
use crate::optim::{clip_grads, grad_norm, Optimizer};
use crate::rng::Rng;
use crate::rotation::basis::Basis;
use serde::Serialize;
use std::time::Instant;

pub mod kernels;
pub mod rotation;

/// Options of `bench gemm` and `bench step` (the command line's `--help` documents each).
#[derive(Debug, Clone)]
pub struct StepOptions {
    pub model: String,
    pub batch_size: usize,
    pub seq_len: usize,
    pub threads: usize,
    /// Timed steps (the median is reported).
    pub steps: usize,
    /// Untimed warm-up steps.
    pub warmup: usize,
    /// Print one JSON object instead of a table.
    pub json: bool,
    /// Also time each optimizer's step alone ([`OPTIMIZERS_TIMED`]), in the same run.
    pub optimizers: bool,
}

/// The optimizers `bench step --optimizers` times, AdamW first (the baseline of the ratios): label,
/// optimizer, rotation (svd and soap at their default refresh periods).
pub const OPTIMIZERS_TIMED: [(&str, OptimizerKind, RotationKind); 4] = [
    (
        "adamw",
        OptimizerKind::Adamw,
        RotationKind::Scope(Scope::None),
    ),
    (
        "muon",
        OptimizerKind::Muon,
        RotationKind::Scope(Scope::None),
    ),
    ("adamw/svd", OptimizerKind::Adamw, RotationKind::Svd),
    ("adamw/soap", OptimizerKind::Adamw, RotationKind::Soap),
];

/// One optimizer's step alone (no forward or backward), timed in the same run as the training step.
#[derive(Clone, Debug, Serialize)]
pub struct OptimizerTiming {
    pub optimizer: String,
    /// ms of the first step, untimed by the median: for svd and soap it includes the refresh of every
    /// basis (their first refresh is at step 1), so `first_ms − ms` is a refresh's cost (plus the
    /// first step's allocations of work vectors and bases, small beside it at 124M). Keep `--warmup` +
    /// `--steps` below F so that no later refresh falls among the timed steps.
    pub first_ms: f64,
    /// The refresh period F of svd and soap (None for the others).
    pub refresh_every: Option<usize>,
    /// The state the optimizer and its rotation keep (moments, momentum, bases, factors, work
    /// buffers), in bytes: `run::memory`'s estimate for this optimizer and rotation.
    pub state_bytes: u128,
    /// Median ms of `Optimizer::step` on the model's parameters, over the steps after the first.
    pub ms: f64,
    /// `ms` over AdamW's, measured in the same run.
    pub vs_adamw: f64,
    /// `ms` over the same run's whole training step (forward, backward, AdamW).
    pub vs_training_step: f64,
}

impl StepOptions {
    /// The counts and sizes `bench step` uses are at least 1 (`--warmup` may be 0).
    pub fn validate(&self) -> Result<()> {
        self.validate_shape()?;
        at_least_one(&[("--steps", self.steps)])
    }

    /// The options `bench gemm` uses (`--batch-size`, `--seq-len`, `--threads`) are at least 1.
    fn validate_shape(&self) -> Result<()> {
        at_least_one(&[
            ("--batch-size", self.batch_size),
            ("--seq-len", self.seq_len),
            ("--threads", self.threads),
        ])
    }
}

/// `Error::config(flag, "must be at least 1")` for the first `(flag, value)` whose value is 0: a count of
/// timed runs (a median of none), a block size (a division by it), a batch or sequence of no tokens (a
/// step that measures nothing), or no threads.
pub(crate) fn at_least_one(options: &[(&str, usize)]) -> Result<()> {
    match options.iter().find(|(_, v)| *v == 0) {
        Some((flag, _)) => Err(Error::config(*flag, "must be at least 1")),
        None => Ok(()),
    }
}

/// CPU time counters from /proc/stat (all CPUs) and /proc/self/stat, in clock ticks.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct CpuTicks {
    busy: u64,
    own: u64,
}

pub(crate) fn cpu_ticks() -> Option<CpuTicks> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().next()?;
    let f: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal (guest and guest_nice are already inside user/nice)
    let busy = f
        .iter()
        .take(8)
        .enumerate()
        .filter(|(i, _)| *i != 3 && *i != 4)
        .map(|(_, v)| v)
        .sum();
    let me = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name, starting with the state (field 3 in proc(5)'s 1-based numbering);
    // utime and stime are fields 14 and 15, so indices 11 and 12 here. Some fields can be negative.
    let after: Vec<&str> = me.rsplit(')').next()?.split_whitespace().collect();
    let own = after.get(11)?.parse::<u64>().ok()? + after.get(12)?.parse::<u64>().ok()?;
    Some(CpuTicks { busy, own })
}

/// Average number of cores used by other processes between two readings over `secs` seconds.
pub(crate) fn other_load(a: Option<CpuTicks>, b: Option<CpuTicks>, secs: f64) -> Option<f64> {
    let (a, b) = (a?, b?);
    let hz = 100.0; // USER_HZ is 100 on Linux x86_64
    let busy = (b.busy.saturating_sub(a.busy)) as f64 / hz;
    let own = (b.own.saturating_sub(a.own)) as f64 / hz;
    Some(((busy - own) / secs).max(0.0))
}

/// Peak resident set size of this process (VmHWM), in bytes.
pub fn peak_rss_bytes() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// The median of `v` (the mean of the two middle values for an even count); `v` must not be empty (the
/// options' checks, [`at_least_one`], keep every timed count ≥ 1).
pub(crate) fn median(mut v: Vec<f64>) -> f64 {
    assert!(!v.is_empty(), "median of no values");
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        0.5 * (v[n / 2 - 1] + v[n / 2])
    }
}

#[derive(Serialize, Debug)]
pub struct GemmResult {
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub gflops: f64,
}

/// GFLOP/s of `T::gemm` for C(m×n) = A(m×k)·B(n×k)ᵀ (the forward's layout), best of a few repeats.
pub fn gemm_gflops<T: Scalar>(m: usize, n: usize, k: usize, threads: usize) -> f64 {
    let mut rng = Rng::new(7);
    let a: Vec<T> = (0..m * k)
        .map(|_| <T as Scalar>::from_f64(rng.normal()))
        .collect();
    let b: Vec<T> = (0..n * k)
        .map(|_| <T as Scalar>::from_f64(rng.normal()))
        .collect();
    let mut c = vec![<T as num_traits::Zero>::zero(); m * n];
    best_gflops(2.0 * (m * n * k) as f64, || {
        T::gemm(&mut c, &a, &b, m, n, k, false, true, false, threads)
    })
}

/// GFLOP/s of the fastest of ≈ 2 GFLOP worth of runs of `f` (1 to 50 runs, after one untimed), `f`
/// doing `flops` floating-point operations: the practical peak of a GEMM.
pub fn best_gflops(flops: f64, mut f: impl FnMut()) -> f64 {
    let reps = ((2e9 / flops).ceil() as usize).clamp(1, 50);
    let mut best = f64::INFINITY;
    for _ in 0..=reps {
        let t = Instant::now();
        f();
        best = best.min(t.elapsed().as_secs_f64());
    }
    flops / best / 1e9
}

/// The model's matmul shapes (m = B·T rows) plus a square 1024³.
fn model_shapes(cfg: &ModelConfig, bt: usize) -> Vec<(usize, usize, usize)> {
    let c = cfg.n_embd;
    vec![
        (bt, 3 * c, c),
        (bt, c, c),
        (bt, 4 * c, c),
        (bt, c, 4 * c),
        (bt, cfg.vocab_size, c),
        (1024, 1024, 1024),
    ]
}

fn bench_gemm(cfg: &ModelConfig, bt: usize, threads: usize) -> Vec<GemmResult> {
    model_shapes(cfg, bt)
        .into_iter()
        .map(|(m, n, k)| GemmResult {
            m,
            n,
            k,
            gflops: gemm_gflops::<f32>(m, n, k, threads),
        })
        .collect()
}

#[derive(Serialize, Debug)]
pub struct StepResult {
    pub model: String,
    pub params: usize,
    pub batch_size: usize,
    pub seq_len: usize,
    pub threads: usize,
    pub steps_timed: usize,
    pub ms_per_step: f64,
    pub ms_per_step_min: f64,
    pub ms_per_step_max: f64,
    pub tokens_per_s: f64,
    pub flops_per_step: f64,
    pub achieved_gflops: f64,
    pub gemm_peak_gflops: f64,
    pub mfu: f64,
    pub peak_rss_bytes: Option<u64>,
    pub other_load_cores: Option<f64>,
    pub contended: bool,
    pub gemm: Vec<GemmResult>,
    /// With `--optimizers`: each optimizer's step alone.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub optimizers: Vec<OptimizerTiming>,
}

/// Model FLOPs of one training step: 6·N per token for the matmuls (N without wpe, wte counted once for
/// the tied LM head) plus attention's 12·L·B·T²·C (QKᵀ and att·V, forward and backward).
pub fn step_flops(cfg: &ModelConfig, n_params_matmul: usize, b: usize, t: usize) -> f64 {
    6.0 * n_params_matmul as f64 * (b * t) as f64
        + 12.0 * (cfg.n_layer * b * t * t * cfg.n_embd) as f64
}

pub fn bench_step(o: &StepOptions) -> Result<StepResult> {
    o.validate()?;
    let cfg = ModelConfig::preset(&o.model)?;
    if o.seq_len > cfg.seq_len {
        return Err(Error::config(
            "--seq-len",
            format!("{} exceeds the model's context {}", o.seq_len, cfg.seq_len),
        ));
    }
    let (b, t) = (o.batch_size, o.seq_len);
    let gemm = bench_gemm(&cfg, b * t, o.threads);
    let peak = gemm.iter().map(|g| g.gflops).fold(0.0, f64::max);

    let be = CpuBackend::<f32>::new(o.threads, false);
    let mut model = Gpt2::new(&be, &cfg, 1)?;
    let tc = TrainConfig::default();
    let mut opt = Optimizer::unrotated(&be, &tc, &model.table)?;
    let mut rng = Rng::new(3);
    let v = cfg.vocab_size as u64;
    let tokens: Vec<u32> = (0..b * t).map(|_| rng.below(v) as u32).collect();
    let targets: Vec<u32> = (0..b * t).map(|_| rng.below(v) as u32).collect();
    let mut times = Vec::new();
    let c0 = cpu_ticks();
    let w0 = Instant::now();
    for i in 0..o.warmup + o.steps {
        let s = Instant::now();
        model.zero_grads(&be)?;
        model.forward_backward(&be, &tokens, &targets, b, t, 1.0 / (b * t) as f64)?;
        let norm = grad_norm(&be, &model.grads)?;
        clip_grads(&be, &mut model.grads, norm, tc.clip)?;
        opt.step(&be, &model.table, &mut model.params, &model.grads, 1e-4)?;
        if i >= o.warmup {
            times.push(s.elapsed().as_secs_f64() * 1e3);
        }
    }
    let ms = median(times.clone());
    let mut optimizers = Vec::new();
    if o.optimizers {
        for (label, kind, rotation) in OPTIMIZERS_TIMED {
            let tc = TrainConfig {
                optimizer: kind,
                ..TrainConfig::default()
            };
            let rc = RotationConfig {
                kind: rotation,
                ..RotationConfig::default()
            };
            let basis = Basis::new(&be, &rc, &model.table)?;
            let mut opt = Optimizer::for_run(&be, &tc, basis, &model.table)?;
            let (mut t_opt, mut first_ms) = (Vec::new(), 0.0);
            // the first step (a refresh under svd and soap) is timed apart, then warmup, then steps
            for i in 0..1 + o.warmup + o.steps {
                let s = Instant::now();
                opt.step(&be, &model.table, &mut model.params, &model.grads, 1e-4)?;
                let ms = s.elapsed().as_secs_f64() * 1e3;
                if i == 0 {
                    first_ms = ms;
                } else if i > o.warmup {
                    t_opt.push(ms);
                }
            }
            let m = median(t_opt);
            let run = crate::config::RunConfig {
                model_preset: o.model.clone(),
                model: cfg.clone(),
                train: tc,
                rotation: rc,
                data: String::new(),
                out: std::path::PathBuf::new(),
                device: crate::config::DeviceKind::Cpu,
                precision: crate::config::Precision::Fp32,
                threads: o.threads,
                init_from: None,
                quiet: true,
                max_memory: None,
                parallel: Default::default(),
            };
            let est = crate::run::memory::estimate(&run);
            let base = optimizers.first().map_or(m, |b: &OptimizerTiming| b.ms);
            optimizers.push(OptimizerTiming {
                optimizer: label.to_string(),
                first_ms,
                refresh_every: match rotation {
                    RotationKind::Svd => Some(run.rotation.svd_every),
                    RotationKind::Soap => Some(run.rotation.soap.every),
                    _ => None,
                },
                state_bytes: est.optimizer + est.rotation,
                ms: m,
                vs_adamw: m / base,
                vs_training_step: m / ms,
            });
        }
    }
    let load = other_load(c0, cpu_ticks(), w0.elapsed().as_secs_f64());
    let flops = step_flops(&cfg, model.table.num_non_embedding(), b, t);
    Ok(StepResult {
        model: o.model.clone(),
        params: model.num_params(),
        batch_size: b,
        seq_len: t,
        threads: o.threads,
        steps_timed: times.len(),
        ms_per_step: ms,
        ms_per_step_min: times.iter().cloned().fold(f64::INFINITY, f64::min),
        ms_per_step_max: times.iter().cloned().fold(0.0, f64::max),
        tokens_per_s: (b * t) as f64 / (ms / 1e3),
        flops_per_step: flops,
        achieved_gflops: flops / (ms / 1e3) / 1e9,
        gemm_peak_gflops: peak,
        mfu: flops / (ms / 1e3) / 1e9 / peak,
        peak_rss_bytes: peak_rss_bytes(),
        other_load_cores: load,
        contended: load.is_some_and(|l| l > 0.1),
        gemm,
        optimizers,
    })
}

/// `rotadam bench gemm`: prints the table (or JSON).
pub fn run_gemm(o: &StepOptions) -> Result<()> {
    o.validate_shape()?;
    let cfg = ModelConfig::preset(&o.model)?;
    let r = bench_gemm(&cfg, o.batch_size * o.seq_len, o.threads);
    if o.json {
        let peak = r.iter().map(|g| g.gflops).fold(0.0, f64::max);
        let j = serde_json::json!({ "gemm_peak_gflops": peak, "threads": o.threads, "shapes": r });
        println!("{j}");
    } else {
        for g in &r {
            println!(
                "gemm {:>5} x {:>5} x {:>5}: {:7.1} GFLOP/s",
                g.m, g.n, g.k, g.gflops
            );
        }
    }
    Ok(())
}

/// `rotadam bench step`: prints the table (or JSON).
pub fn run_step(o: &StepOptions) -> Result<()> {
    let r = bench_step(o)?;
    if o.json {
        println!("{}", serde_json::to_string(&r).expect("serialise"));
        return Ok(());
    }
    println!(
        "GPT-2 {} ({:.1}M params), B={} T={}, {} threads: {:.0} ms/step (min {:.0}, max {:.0}), {:.0} tokens/s",
        r.model, r.params as f64 / 1e6, r.batch_size, r.seq_len, r.threads,
        r.ms_per_step, r.ms_per_step_min, r.ms_per_step_max, r.tokens_per_s
    );
    println!(
        "{:.1} GFLOP/s achieved vs GEMM peak {:.1} GFLOP/s (same run): MFU {:.1}%",
        r.achieved_gflops,
        r.gemm_peak_gflops,
        100.0 * r.mfu
    );
    for t in &r.optimizers {
        println!(
            "optimizer step alone, {}: {:.1} ms = {:.2}× AdamW's, {:.2}× the training step (same run); \
             state {:.2} GB",
            t.optimizer,
            t.ms,
            t.vs_adamw,
            t.vs_training_step,
            t.state_bytes as f64 / 1e9
        );
        if let Some(f) = t.refresh_every {
            println!(
                "  its first step, with the refresh of every basis: {:.1} ms; the refresh {:.1} ms, \
                 {:.1} ms per step at F = {f}",
                t.first_ms,
                t.first_ms - t.ms,
                (t.first_ms - t.ms) / f as f64
            );
        }
    }
    if let Some(rss) = r.peak_rss_bytes {
        println!("peak RSS {:.2} GB", rss as f64 / 1e9);
    }
    if r.contended {
        println!(
            "WARNING: other processes used {:.2} cores during the run: figures taken under contention",
            r.other_load_cores.unwrap_or(0.0)
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::kernels::{bench_ops, KernelOptions};
    use super::rotation::{measure, RotationOptions};
    use super::*;
    use crate::backend::cpu::GatherMode;
    use crate::config::{DeviceKind, Scope};

    /// The flag a `Config` error names; panics on success or another error.
    fn flag<T: std::fmt::Debug>(r: Result<T>) -> String {
        match r {
            Err(Error::Config { field, .. }) => field,
            other => panic!("expected a config error, got {other:?}"),
        }
    }

    /// `--optimizers` times every optimizer of [`OPTIMIZERS_TIMED`] once, AdamW first and its ratio 1.
    #[test]
    fn optimizers_are_timed_against_adamw() {
        let r = bench_step(&StepOptions {
            model: "tiny".into(),
            batch_size: 2,
            seq_len: 8,
            threads: 1,
            steps: 2,
            warmup: 0,
            json: true,
            optimizers: true,
        })
        .unwrap();
        let names: Vec<&str> = r.optimizers.iter().map(|t| t.optimizer.as_str()).collect();
        assert_eq!(names, ["adamw", "muon", "adamw/svd", "adamw/soap"]);
        assert_eq!(r.optimizers[0].vs_adamw, 1.0);
        for t in &r.optimizers {
            assert!(t.ms > 0.0 && t.vs_training_step > 0.0, "{t:?}");
            assert!((t.vs_adamw - t.ms / r.optimizers[0].ms).abs() < 1e-12);
            assert!(t.first_ms > 0.0 && t.state_bytes > 0);
            assert_eq!(t.refresh_every.is_some(), t.optimizer.contains('/'));
        }
    }

    #[test]
    fn zero_counts_and_sizes_are_config_errors_not_panics() {
        let step = StepOptions {
            model: "tiny".into(),
            batch_size: 2,
            seq_len: 8,
            threads: 1,
            steps: 1,
            warmup: 0,
            json: true,
            optimizers: false,
        };
        type Zero<O> = (&'static str, fn(&mut O));
        let zeros: [Zero<StepOptions>; 4] = [
            ("--batch-size", |o| o.batch_size = 0),
            ("--seq-len", |o| o.seq_len = 0),
            ("--threads", |o| o.threads = 0),
            ("--steps", |o| o.steps = 0),
        ];
        for (want, zero) in zeros {
            let mut o = step.clone();
            zero(&mut o);
            assert_eq!(flag(bench_step(&o)), want);
            if want != "--steps" {
                assert_eq!(flag(run_gemm(&o)), want, "bench gemm");
            }
        }

        let kernels = KernelOptions {
            model: "tiny".into(),
            batch_size: 2,
            seq_len: 8,
            rotation_block: 16,
            threads: 1,
            reps: 1,
            device: DeviceKind::Cpu,
            json: true,
        };
        let zeros: [Zero<KernelOptions>; 5] = [
            ("--batch-size", |o| o.batch_size = 0),
            ("--seq-len", |o| o.seq_len = 0),
            ("--rotation-block", |o| o.rotation_block = 0),
            ("--threads", |o| o.threads = 0),
            ("--reps", |o| o.reps = 0),
        ];
        let be = CpuBackend::<f32>::new(1, false);
        for (want, zero) in zeros {
            let mut o = kernels.clone();
            zero(&mut o);
            assert_eq!(flag(bench_ops(&be, &o, 1.0, false)), want);
        }

        let rotation = RotationOptions {
            model: "tiny".into(),
            scope: Scope::Global,
            n: vec![16],
            batch_size: 2,
            seq_len: 8,
            threads: 1,
            reps: 1,
            steps: 1,
            gather: GatherMode::Auto,
            json: true,
        };
        let zeros: [Zero<RotationOptions>; 7] = [
            ("--n", |o| o.n = vec![16, 0]),
            ("--n", |o| o.n.clear()),
            ("--batch-size", |o| o.batch_size = 0),
            ("--seq-len", |o| o.seq_len = 0),
            ("--threads", |o| o.threads = 0),
            ("--reps", |o| o.reps = 0),
            ("--steps", |o| o.steps = 0),
        ];
        for (want, zero) in zeros {
            let mut o = rotation.clone();
            zero(&mut o);
            assert_eq!(flag(measure(&o)), want);
        }
    }

    #[test]
    fn median_takes_the_middle_or_the_mean_of_the_two_middle_values() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0, 3.0, 2.0]), 2.5);
        assert_eq!(median(vec![7.0]), 7.0);
    }
}
