//! `rotadam bench rotation`: what a rotation costs on this machine, measured beside its own baselines.
//!
//! For the model's ParamTable (default 124M) and each block size `--n` (repeatable; default 768):
//! `Rotation::new` (permutations + Haar blocks), then rotate + unrotate of a random d-vector in f32, median
//! over `--reps`. Reported against two baselines taken in the same run: the GEMM peak (`bench::gemm_gflops`
//! at the rotation's chunk shape (rows × n × n, Rᵀ on the right, as `rotate` runs it) and at 1024³, plus the
//! model shapes of `bench step`, and where it fits n, the f32 rotation kernel (`rotgemm`) on the chunk
//! shape from rows already in memory; the max) and one full training step (`bench step`'s code: forward +
//! backward + AdamW at B=4, T=64 by default). Also the time to sample R_n alone for n = 768 and 2048.
//!
//! FLOPs: rotate and unrotate are each 2·d·n (one n×n matvec per n coordinates), so `gflops` =
//! 4·d·n / time. `fraction_of_step` = (rotate + unrotate) / step: what a rotated optimizer adds to a step.
//! Then whole AdamW optimizer steps (median over `--reps`, after one untimed step): under the rotation
//! fused (`ms_adamw_fused`, the training path) and split (`ms_adamw_unfused`: rotate → direction → unrotate
//! → update), and unrotated (`ms_adamw_none`, the one-pass kernel); `adamw_fused_fraction_of_step` =
//! (fused − none) / step, what the rotation adds to a training step's optimizer.
//! The top-level fields are those of the first `--n`; `results` holds every n.

use super::{
    at_least_one, bench_step, best_gflops, cpu_ticks, gemm_gflops, median, other_load,
    peak_rss_bytes, StepOptions,
};
use crate::backend::cpu::rotation::{chunk_rows, window_rows};
use crate::backend::cpu::{rotgemm, CpuBackend, GatherMode};
use crate::backend::Backend;
use crate::config::{ModelConfig, TrainConfig};
use crate::error::Result;
use crate::model::ParamTable;
use crate::optim::Optimizer;
use crate::rng::Rng;
use crate::rotation::basis::Basis;
use crate::rotation::{haar, Rotation, Scope};
use serde::Serialize;
use std::collections::BTreeMap;
use std::time::Instant;

/// Options of `bench rotation` (the command line's `--help` documents each).
#[derive(Debug, Clone)]
pub struct RotationOptions {
    pub model: String,
    /// Scope of the timed rotation.
    pub scope: Scope,
    /// Block size n; give the flag several times for several sizes.
    pub n: Vec<usize>,
    /// Batch size of the training step used as the baseline.
    pub batch_size: usize,
    /// Sequence length of the training step used as the baseline.
    pub seq_len: usize,
    pub threads: usize,
    /// Timed rotate + unrotate repetitions (the median is reported).
    pub reps: usize,
    /// Timed training steps for the baseline (the median is used).
    pub steps: usize,
    /// How the CPU backend moves the rotated coordinates (backend::cpu::rotation module docs).
    pub gather: GatherMode,
    /// Print one JSON object instead of a table.
    pub json: bool,
}

impl RotationOptions {
    /// At least one block size, and every block size, count and size at least 1.
    pub fn validate(&self) -> Result<()> {
        if self.n.is_empty() || self.n.contains(&0) {
            return Err(crate::Error::config(
                "--n",
                "block sizes must be at least 1",
            ));
        }
        at_least_one(&[
            ("--batch-size", self.batch_size),
            ("--seq-len", self.seq_len),
            ("--threads", self.threads),
            ("--reps", self.reps),
            ("--steps", self.steps),
        ])
    }
}

/// The figures for one block size.
#[derive(Serialize, Debug, Clone)]
pub struct RotationTiming {
    pub n: usize,
    pub describe: String,
    pub ms_new: f64,
    pub ms_sample_rn: f64,
    pub ms_rotate: f64,
    pub ms_unrotate: f64,
    pub ms_rotate_unrotate: f64,
    pub gflops: f64,
    /// GFLOP/s of the bare GEMM (faer) at the rotation's chunk shape (rows × n × n).
    pub gemm_chunk_gflops: f64,
    /// GFLOP/s of the f32 rotation kernel at the same shape, its rows copied from memory; None where it
    /// does not fit n (or the CPU has no AVX-512).
    pub kernel_chunk_gflops: Option<f64>,
    pub fraction_of_peak: f64,
    pub fraction_of_step: f64,
    /// max |unrotate(rotate(g)) − g| / max |g| in f32.
    pub roundtrip_rel_err: f64,
    /// One AdamW step under the rotation, fused (the training path).
    pub ms_adamw_fused: f64,
    /// One AdamW step under the rotation through the split path.
    pub ms_adamw_unfused: f64,
    /// One unrotated AdamW step (the one-pass kernel).
    pub ms_adamw_none: f64,
    /// (ms_adamw_fused − ms_adamw_none) / ms_step.
    pub adamw_fused_fraction_of_step: f64,
}

#[derive(Serialize, Debug)]
pub struct RotationBenchResult {
    pub model: String,
    pub params: usize,
    pub scope: Scope,
    pub threads: usize,
    pub gather: GatherMode,
    #[serde(flatten)]
    pub first: RotationTiming,
    pub gemm_peak_gflops: f64,
    pub ms_step: f64,
    pub step_batch_size: usize,
    pub step_seq_len: usize,
    /// ms to sample R_n alone (QR of an n×n Gaussian in f64 + sign fix), n = 768 and 2048.
    pub sample_rn_ms: BTreeMap<usize, f64>,
    pub peak_rss_bytes: Option<u64>,
    pub other_load_cores: Option<f64>,
    pub contended: bool,
    pub results: Vec<RotationTiming>,
}

fn ms_since(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1e3
}

/// ms to draw one n×n Haar matrix.
fn time_haar(n: usize) -> f64 {
    let mut rng = Rng::new(n as u64);
    let t = Instant::now();
    std::hint::black_box(haar(n, &mut rng));
    ms_since(t)
}

fn time_one(
    o: &RotationOptions,
    be: &CpuBackend<f32>,
    table: &ParamTable,
    g: &Vec<f32>,
    n: usize,
    ms_step: f64,
) -> Result<RotationTiming> {
    let t = Instant::now();
    let rot = Rotation::new(be, o.scope, n, 1, table)?;
    let ms_new = ms_since(t);
    let d = rot.dim();
    let mut y = be.alloc(d)?;
    let mut back = be.alloc(d)?;
    let (mut tr, mut tu) = (Vec::new(), Vec::new());
    for rep in 0..=o.reps {
        let t = Instant::now();
        rot.rotate(be, &mut y, g)?;
        tr.push(ms_since(t));
        let t = Instant::now();
        rot.unrotate(be, &mut back, &y)?;
        tu.push(ms_since(t));
        if rep == 0 {
            // Untimed: the first round trip also faults in the staging buffers, as a training run's
            // first step does (`time_adamw` skips its first step likewise).
            tr.clear();
            tu.clear();
        }
    }
    let both: Vec<f64> = tr.iter().zip(&tu).map(|(a, b)| a + b).collect();
    let ms = median(both);
    let gmax = g.iter().fold(0.0f32, |m, v| m.max(v.abs())) as f64;
    let err = back
        .iter()
        .zip(g)
        .fold(0.0f32, |m, (a, b)| m.max((a - b).abs())) as f64;
    let describe = rot.describe();
    drop((y, back));
    let paper = TrainConfig::default();
    let mut opt = Optimizer::for_run(be, &paper, Basis::Block(rot), table)?;
    let ms_adamw_fused = time_adamw(o, be, table, g, &mut opt)?;
    let mut opt = opt.unfused();
    let ms_adamw_unfused = time_adamw(o, be, table, g, &mut opt)?;
    drop(opt);
    let unrotated = &mut Optimizer::unrotated(be, &paper, table)?;
    let ms_adamw_none = time_adamw(o, be, table, g, unrotated)?;
    let rows = chunk_rows::<f32>(n).min(d / n).max(1);
    let gemm_chunk = gemm_gflops::<f32>(rows, n, n, o.threads);
    let kernel_chunk = rotgemm::fits::<f32>(n).then(|| kernel_gflops(rows, n));
    let gflops = 4.0 * d as f64 * n as f64 / (ms / 1e3) / 1e9;
    Ok(RotationTiming {
        n,
        describe,
        ms_new,
        ms_sample_rn: time_haar(n),
        ms_rotate: median(tr),
        ms_unrotate: median(tu),
        ms_rotate_unrotate: ms,
        gflops,
        gemm_chunk_gflops: gemm_chunk,
        kernel_chunk_gflops: kernel_chunk,
        fraction_of_peak: 0.0, // filled in once the peak is known
        fraction_of_step: ms / ms_step,
        roundtrip_rel_err: err / gmax,
        ms_adamw_fused,
        ms_adamw_unfused,
        ms_adamw_none,
        adamw_fused_fraction_of_step: (ms_adamw_fused - ms_adamw_none) / ms_step,
    })
}

/// GFLOP/s of [`rotgemm::gemm_rows`] on a rows × n × n product (B = Rᵀ packed each time, as `rotate`
/// does), rows copied from a matrix in memory into the output, in the blocks `rotate` uses; timed as
/// `bench::gemm_gflops` times faer.
fn kernel_gflops(rows: usize, n: usize) -> f64 {
    let mut rng = Rng::new(7);
    let a: Vec<f32> = (0..rows * n).map(|_| rng.normal() as f32).collect();
    let r: Vec<f32> = (0..n * n).map(|_| rng.normal() as f32).collect();
    let mut c = vec![0f32; rows * n];
    best_gflops(2.0 * (rows * n * n) as f64, || {
        let b = rotgemm::PackedB::new(&r, n, true);
        rotgemm::gemm_rows(
            &mut c,
            window_rows(n, true),
            &b,
            |i, row| row.copy_from_slice(&a[i * n..][..n]),
            |_, c, d| d.copy_from_slice(c),
        );
    })
}

/// Median ms of one step of `opt` with gradient `g` (after one untimed step: buffers allocated).
fn time_adamw(
    o: &RotationOptions,
    be: &CpuBackend<f32>,
    table: &ParamTable,
    g: &Vec<f32>,
    opt: &mut Optimizer<CpuBackend<f32>>,
) -> Result<f64> {
    let tr = TrainConfig::default();
    let mut params = be.alloc(table.total)?;
    let mut times = Vec::new();
    for rep in 0..=o.reps {
        let t = Instant::now();
        opt.step(be, table, &mut params, g, tr.lr)?;
        if rep > 0 {
            times.push(ms_since(t));
        }
    }
    Ok(median(times))
}

/// Runs the benchmark (on the caller's rayon pool) and returns the report.
pub fn measure(o: &RotationOptions) -> Result<RotationBenchResult> {
    o.validate()?;
    let cfg = ModelConfig::preset(&o.model)?;
    let table = ParamTable::new(&cfg);
    let c0 = cpu_ticks();
    let w0 = Instant::now();
    // The step first, so its model is freed before the rotation's buffers exist.
    let step = bench_step(&StepOptions {
        model: o.model.clone(),
        batch_size: o.batch_size,
        seq_len: o.seq_len,
        threads: o.threads,
        steps: o.steps,
        warmup: 1,
        json: false,
        optimizers: false,
    })?;
    let be = CpuBackend::<f32>::new(o.threads, false).with_gather(o.gather);
    let mut rng = Rng::new(5);
    let g: Vec<f32> = (0..table.total).map(|_| rng.normal() as f32).collect();
    let mut results = Vec::new();
    for &n in &o.n {
        results.push(time_one(o, &be, &table, &g, n, step.ms_per_step)?);
    }
    let sample_rn_ms = [768, 2048].iter().map(|&n| (n, time_haar(n))).collect();
    let square = gemm_gflops::<f32>(1024, 1024, 1024, o.threads);
    let peak = results
        .iter()
        .flat_map(|r| [Some(r.gemm_chunk_gflops), r.kernel_chunk_gflops])
        .flatten()
        .fold(step.gemm_peak_gflops.max(square), f64::max);
    for r in &mut results {
        r.fraction_of_peak = r.gflops / peak;
    }
    let load = other_load(c0, cpu_ticks(), w0.elapsed().as_secs_f64());
    Ok(RotationBenchResult {
        model: o.model.clone(),
        params: table.total,
        scope: o.scope,
        threads: o.threads,
        gather: o.gather,
        first: results[0].clone(),
        gemm_peak_gflops: peak,
        ms_step: step.ms_per_step,
        step_batch_size: o.batch_size,
        step_seq_len: o.seq_len,
        sample_rn_ms,
        peak_rss_bytes: peak_rss_bytes(),
        other_load_cores: load,
        contended: load.is_some_and(|l| l > 0.1),
        results,
    })
}

/// `rotadam bench rotation`: JSON with `--json`, else a short table.
pub fn run(o: &RotationOptions) -> Result<()> {
    let r = measure(o)?;
    if o.json {
        println!("{}", serde_json::to_string(&r).expect("serialise"));
        return Ok(());
    }
    println!(
        "{} ({} params), {} threads, gather {:?}; step B={} T={}: {:.0} ms; GEMM peak {:.1} GFLOP/s",
        r.model,
        r.params,
        r.threads,
        r.gather,
        r.step_batch_size,
        r.step_seq_len,
        r.ms_step,
        r.gemm_peak_gflops
    );
    for t in &r.results {
        println!("{}", t.describe);
        println!(
            "  new {:.0} ms (R_n {:.1} ms); rotate {:.0} ms + unrotate {:.0} ms = {:.0} ms: {:.1} GFLOP/s \
             ({:.0}% of peak), {:.2} of a step; round trip rel. err {:.1e}",
            t.ms_new, t.ms_sample_rn, t.ms_rotate, t.ms_unrotate, t.ms_rotate_unrotate, t.gflops,
            100.0 * t.fraction_of_peak, t.fraction_of_step, t.roundtrip_rel_err
        );
        println!(
            "  AdamW step: fused {:.0} ms, unfused {:.0} ms, unrotated {:.0} ms; the rotation adds {:.2} \
             of a training step",
            t.ms_adamw_fused, t.ms_adamw_unfused, t.ms_adamw_none, t.adamw_fused_fraction_of_step
        );
    }
    for (n, ms) in &r.sample_rn_ms {
        println!("sample R_n alone, n = {n}: {ms:.1} ms");
    }
    if r.contended {
        println!(
            "WARNING: other processes used {:.2} cores during the run: figures taken under contention",
            r.other_load_cores.unwrap_or(0.0)
        );
    }
    Ok(())
}
