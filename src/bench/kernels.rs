//! `rotadam bench kernels`: each kernel family at a model's shapes on the best device present — the CUDA
//! backend when `--device cuda` finds a GPU, else the CPU backend's ops — with time, GB/s or GFLOP/s, and
//! the fraction of a peak measured in the same run: the device's GEMM (`Backend::gemm` at 1024³) for
//! compute-bound ops, an in-place axpy over 256 MB vectors for memory-bound ones (on a GPU: the device's memory
//! bandwidth from its clock and bus width).
//!
//! Bytes are the minimum traffic of each op (every input read once, every output written once); FLOPs
//! count multiply-adds as 2. The median of `--reps` timed runs after one warm-up (the peaks: the best of
//! at least 5); a device is synchronised (a one-element download) before each timer stops. Nothing here
//! has been run on a GPU.

use crate::backend::{AdamStep, Backend};
use crate::config::{DeviceKind, ModelConfig, TrainConfig};
use crate::error::{Error, Result};
use crate::model::{Gpt2, ParamTable};
use crate::optim::Optimizer;
use crate::rng::Rng;
use serde::Serialize;
use std::time::Instant;

/// Options of `bench kernels` (the command line's `--help` documents each).
#[derive(Debug, Clone)]
pub struct KernelOptions {
    pub model: String,
    pub batch_size: usize,
    pub seq_len: usize,
    /// The rotation block n of the rotate + unrotate measurement (the paper's 768).
    pub rotation_block: usize,
    pub threads: usize,
    /// Timed repetitions per op (the median is reported).
    pub reps: usize,
    /// `cuda` to measure on the GPU (an error without one); anything else runs the CPU ops.
    pub device: DeviceKind,
    /// Print one JSON object instead of a table.
    pub json: bool,
}

impl KernelOptions {
    /// Every count and size at least 1 (`--rotation-block` divides the parameter count).
    pub fn validate(&self) -> Result<()> {
        super::at_least_one(&[
            ("--batch-size", self.batch_size),
            ("--seq-len", self.seq_len),
            ("--rotation-block", self.rotation_block),
            ("--threads", self.threads),
            ("--reps", self.reps),
        ])
    }
}

/// One op's measurement.
#[derive(Serialize, Debug, Clone)]
pub struct OpTiming {
    pub op: String,
    pub ms: f64,
    /// GB/s for memory-bound ops, GFLOP/s for compute-bound ones (`unit` says which).
    pub rate: f64,
    pub unit: &'static str,
    /// rate / the same run's peak of that unit.
    pub fraction_of_peak: f64,
}

/// The whole report.
#[derive(Serialize, Debug, Clone)]
pub struct KernelBench {
    pub device: String,
    /// The times are the CPU emulator's (the emulated backend, or CUDA on the driver stand-in), not a
    /// GPU's: they measure nothing about a GPU.
    pub emulated: bool,
    pub model: String,
    pub batch_size: usize,
    pub seq_len: usize,
    pub gemm_peak_gflops: f64,
    pub bandwidth_peak_gbs: f64,
    pub ops: Vec<OpTiming>,
    /// One training step at B×T: forward, backward, unrotated AdamW.
    pub ms_step: f64,
    /// The fused rotated AdamW (global, n = `--rotation-block`) / `ms_step`; the GPU goal is ≤ 0.05
    /// (`docs/benchmarks.md`).
    pub rotated_adamw_fraction_of_step: f64,
}

fn randn(rng: &mut Rng, n: usize, scale: f64) -> Vec<f32> {
    (0..n).map(|_| (rng.normal() * scale) as f32).collect()
}

/// Median wall time in ms of `f` over `reps` runs after one warm-up, synchronising with `sync`.
fn time(reps: usize, f: impl FnMut() -> Result<()>, sync: &dyn Fn() -> Result<()>) -> Result<f64> {
    Ok(super::median(times(reps, f, sync)?))
}

/// The wall times in ms of `reps` runs of `f` (at least one) after one warm-up, in increasing order.
fn times(
    reps: usize,
    mut f: impl FnMut() -> Result<()>,
    sync: &dyn Fn() -> Result<()>,
) -> Result<Vec<f64>> {
    f()?;
    sync()?;
    let mut v = Vec::with_capacity(reps.max(1));
    for _ in 0..reps.max(1) {
        let t = Instant::now();
        f()?;
        sync()?;
        v.push(t.elapsed().as_secs_f64() * 1e3);
    }
    v.sort_by(|a, b| a.total_cmp(b));
    Ok(v)
}

/// GB/s of an in-place axpy over 256 MB vectors (x = 3·x + y) on the caller's rayon pool: the CPU's
/// streaming bandwidth with the threads the ops get. Read + write counted, as the op rows count them; the
/// written stream is one that is read, as in the optimizer steps, so no write-allocate traffic goes
/// uncounted (a copy's destination would be read for ownership, 1.5× its counted bytes). On huge pages,
/// as the backend's buffers are.
pub fn host_stream_bandwidth() -> f64 {
    use rayon::prelude::*;
    let n = 1 << 26;
    // advised before first touch, as `CpuBackend::alloc` does
    let (mut x, mut y) = (vec![0.0f32; n], vec![0.0f32; n]);
    crate::backend::cpu::advise_huge_pages(&x);
    crate::backend::cpu::advise_huge_pages(&y);
    y.par_iter_mut().for_each(|v| *v = 1.0);
    // the best of 5, as for the GEMM peak
    let ms = times(
        5,
        || {
            x.par_chunks_mut(1 << 16)
                .zip(y.par_chunks(1 << 16))
                .for_each(|(x, y)| {
                    for (x, &y) in x.iter_mut().zip(y) {
                        *x = 3.0 * *x + y;
                    }
                });
            Ok(())
        },
        &|| Ok(()),
    )
    .expect("host loops cannot fail")[0];
    std::hint::black_box(&x);
    (3 * 4 * n) as f64 / (ms / 1e3) / 1e9
}

/// Measures every kernel family on `be` (module docs). `bandwidth_peak` in GB/s.
pub fn bench_ops<BK: Backend<T = f32>>(
    be: &BK,
    o: &KernelOptions,
    bandwidth_peak: f64,
    emulated: bool,
) -> Result<KernelBench> {
    o.validate()?;
    let cfg = ModelConfig::preset(&o.model)?;
    let (b, t, c, nh, v) = (
        o.batch_size,
        o.seq_len,
        cfg.n_embd,
        cfg.n_head,
        cfg.vocab_size,
    );
    if t > cfg.seq_len {
        return Err(Error::config(
            "--seq-len",
            format!("{t} exceeds the context {}", cfg.seq_len),
        ));
    }
    let n = b * t;
    let table = ParamTable::new(&cfg);
    let d = table.total;
    let mut rng = Rng::new(5);
    let buf = |x: &[f32]| -> Result<BK::Buf> {
        let mut b = be.alloc(x.len())?;
        be.upload(&mut b, x)?;
        Ok(b)
    };
    let tiny = be.alloc(1)?;
    let sync = || be.download(&tiny).map(|_| ());
    let reps = o.reps;
    let mut ops = Vec::new();

    // GEMM peak of this backend (1024³), same run: the best of at least 5 runs (a capability, as
    // `bench::gemm_gflops` takes it; a median let one slow moment of a shared CPU halve it)
    let g = 1024;
    let (ga, gb) = (
        buf(&randn(&mut rng, g * g, 1.0))?,
        buf(&randn(&mut rng, g * g, 1.0))?,
    );
    let mut gc = be.alloc(g * g)?;
    let ms = times(
        reps.max(5),
        || {
            be.gemm(
                be.view_mut(&mut gc, 0..g * g),
                be.view(&ga, 0..g * g),
                be.view(&gb, 0..g * g),
                g,
                g,
                g,
                false,
                true,
                false,
            )
        },
        &sync,
    )?[0];
    let peak = 2.0 * (g * g * g) as f64 / (ms / 1e3) / 1e9;
    let mut push = |op: String, ms: f64, amount: f64, flops: bool| {
        let rate = amount / (ms / 1e3) / 1e9;
        let (unit, p) = if flops {
            ("GFLOP/s", peak)
        } else {
            ("GB/s", bandwidth_peak)
        };
        ops.push(OpTiming {
            op,
            ms,
            rate,
            unit,
            fraction_of_peak: rate / p,
        });
    };

    // layernorm forward / backward over (B·T, C)
    let x = buf(&randn(&mut rng, n * c, 1.0))?;
    let w = buf(&randn(&mut rng, c, 1.0))?;
    let (mut out, mut mean, mut rstd) = (be.alloc(n * c)?, be.alloc(n)?, be.alloc(n)?);
    let ms = time(
        reps,
        || {
            let [o_, m_, r_] = [
                be.view_mut(&mut out, 0..n * c),
                be.view_mut(&mut mean, 0..n),
                be.view_mut(&mut rstd, 0..n),
            ];
            be.layernorm_forward(
                o_,
                m_,
                r_,
                be.view(&x, 0..n * c),
                be.view(&w, 0..c),
                None,
                n,
                c,
            )
        },
        &sync,
    )?;
    push(
        "layernorm_forward".into(),
        ms,
        (2 * n * c * 4) as f64,
        false,
    );
    let (mut dx, mut dw) = (be.alloc(n * c)?, be.alloc(c)?);
    let ms = time(
        reps,
        || {
            be.layernorm_backward(
                be.view_mut(&mut dx, 0..n * c),
                be.view_mut(&mut dw, 0..c),
                None,
                be.view(&out, 0..n * c),
                be.view(&x, 0..n * c),
                be.view(&w, 0..c),
                be.view(&mean, 0..n),
                be.view(&rstd, 0..n),
                n,
                c,
            )
        },
        &sync,
    )?;
    push(
        "layernorm_backward".into(),
        ms,
        (4 * n * c * 4) as f64,
        false,
    );

    // attention forward / backward (B, T, C, NH): QKᵀ and att·V are 2·B·NH·T²·hs FLOPs each (causal: half)
    let qkv = buf(&randn(&mut rng, n * 3 * c, 1.0))?;
    let (mut att, mut atty, mut scratch, mut dqkv) = (
        be.alloc(b * nh * t * t)?,
        be.alloc(n * c)?,
        be.alloc(b * nh * t * t)?,
        be.alloc(n * 3 * c)?,
    );
    let attn_flops = 2.0 * (b * t * t * c) as f64; // 2 products × 2 FLOPs × ½ (causal)
    let ms = time(
        reps,
        || {
            be.attention_forward(
                be.view_mut(&mut atty, 0..n * c),
                be.view_mut(&mut att, 0..b * nh * t * t),
                be.view(&qkv, 0..n * 3 * c),
                b,
                t,
                c,
                nh,
            )
        },
        &sync,
    )?;
    push("attention_forward".into(), ms, attn_flops, true);
    let ms = time(
        reps,
        || {
            be.attention_backward(
                be.view_mut(&mut dqkv, 0..n * 3 * c),
                be.view_mut(&mut scratch, 0..b * nh * t * t),
                be.view(&atty, 0..n * c),
                be.view(&qkv, 0..n * 3 * c),
                be.view(&att, 0..b * nh * t * t),
                b,
                t,
                c,
                nh,
            )
        },
        &sync,
    )?;
    push("attention_backward".into(), ms, 2.0 * attn_flops, true);

    // gelu over (B·T, 4C)
    let h = buf(&randn(&mut rng, n * 4 * c, 1.0))?;
    let mut hg = be.alloc(n * 4 * c)?;
    let ms = time(
        reps,
        || {
            be.gelu_forward(
                be.view_mut(&mut hg, 0..n * 4 * c),
                be.view(&h, 0..n * 4 * c),
            )
        },
        &sync,
    )?;
    push("gelu_forward".into(), ms, (2 * n * 4 * c * 4) as f64, false);

    // fused softmax cross-entropy with gradient over (B·T, V)
    let logits0 = randn(&mut rng, n * v, 1.0);
    let mut logits = buf(&logits0)?;
    let mut losses = be.alloc(n)?;
    let targets: Vec<u32> = (0..n).map(|_| rng.below(v as u64) as u32).collect();
    let ms = time(
        reps,
        || {
            be.crossentropy_forward(
                be.view_mut(&mut losses, 0..n),
                be.view_mut(&mut logits, 0..n * v),
                &targets,
                Some(1.0 / n as f32),
                n,
                v,
            )
        },
        &sync,
    )?;
    push(
        "crossentropy_forward".into(),
        ms,
        (2 * n * v * 4) as f64,
        false,
    );

    // optimizer and reductions over all d parameters
    let grads = buf(&randn(&mut rng, d, 1e-3))?;
    let (mut p, mut m, mut vv) = (buf(&randn(&mut rng, d, 0.02))?, be.alloc(d)?, be.alloc(d)?);
    let hp = AdamStep::new(1, 6e-4, 0.9, 0.95, 1e-8, 0.1);
    let ms = time(
        reps,
        || {
            let [p_, m_, v_] = [
                be.view_mut(&mut p, 0..d),
                be.view_mut(&mut m, 0..d),
                be.view_mut(&mut vv, 0..d),
            ];
            be.adamw_step(p_, m_, v_, be.view(&grads, 0..d), hp)
        },
        &sync,
    )?;
    push(
        format!("adamw_step ({:.1}M params)", d as f64 / 1e6),
        ms,
        (7 * d * 4) as f64,
        false,
    );
    let ms = time(
        reps,
        || {
            std::hint::black_box(be.sum_squares(be.view(&grads, 0..d))?);
            Ok(())
        },
        &sync,
    )?;
    push(
        "sum_squares (global grad norm)".into(),
        ms,
        (d * 4) as f64,
        false,
    );

    // rotate + unrotate of all parameters (global scope: one permutation, chunks of n)
    let rn = o.rotation_block.min(d);
    let nb = d / rn;
    let mut perm: Vec<u32> = (0..d as u32).collect();
    crate::rotation::shuffle(&mut perm, &mut rng);
    perm.truncate(nb * rn);
    let index = &be.rotation_index(perm, rn, d)?;
    let r = buf(&crate::rotation::haar(rn, &mut rng)
        .iter()
        .map(|&x| x as f32)
        .collect::<Vec<_>>())?;
    let mut rot = be.alloc(nb * rn)?;
    let mut back = be.alloc(d)?;
    let ms = time(
        reps,
        || {
            be.rotate(
                be.view_mut(&mut rot, 0..nb * rn),
                be.view(&grads, 0..d),
                index,
                be.view(&r, 0..rn * rn),
                nb,
                rn,
            )?;
            be.unrotate(
                be.view_mut(&mut back, 0..d),
                be.view(&rot, 0..nb * rn),
                index,
                be.view(&r, 0..rn * rn),
                nb,
                rn,
            )?;
            Ok(())
        },
        &sync,
    )?;
    push(
        format!("rotate + unrotate (global, n = {rn})"),
        ms,
        4.0 * (nb * rn * rn) as f64,
        true,
    );

    // Rotated AdamW as training runs it (Optimizer's fused path): the moments and direction in the
    // rotation GEMM's epilogue, the decay, the update in the unrotation's scatter
    let decay = hp.decay() as f32;
    let ms_rotated_adamw = time(
        reps,
        || {
            be.rotate_adam_direction(
                be.view_mut(&mut rot, 0..nb * rn),
                be.view_mut(&mut m, 0..nb * rn),
                be.view_mut(&mut vv, 0..nb * rn),
                be.view(&grads, 0..d),
                index,
                be.view(&r, 0..rn * rn),
                nb,
                rn,
                hp,
            )?;
            be.scale(be.view_mut(&mut p, 0..d), decay)?;
            be.unrotate_apply_update(
                be.view_mut(&mut p, 0..d),
                be.view(&rot, 0..nb * rn),
                index,
                be.view(&r, 0..rn * rn),
                nb,
                rn,
                hp.lr,
            )?;
            Ok(())
        },
        &sync,
    )?;
    push(
        format!("rotated AdamW, fused (global, n = {rn})"),
        ms_rotated_adamw,
        4.0 * (nb * rn * rn) as f64,
        true,
    );
    drop((grads, p, m, vv, rot, back));

    // one training step (forward + backward + unrotated AdamW), the baseline of the rotated optimizer's GPU goal
    let ms_step = time_step(be, &cfg, b, t, reps)?;

    Ok(KernelBench {
        device: be.name(),
        emulated,
        model: o.model.clone(),
        batch_size: b,
        seq_len: t,
        gemm_peak_gflops: peak,
        bandwidth_peak_gbs: bandwidth_peak,
        ops,
        ms_step,
        rotated_adamw_fraction_of_step: ms_rotated_adamw / ms_step,
    })
}

/// Median ms of one training step of GPT-2 `cfg` at B×T on `be`: forward, backward, unrotated AdamW.
fn time_step<BK: Backend<T = f32>>(
    be: &BK,
    cfg: &ModelConfig,
    b: usize,
    t: usize,
    reps: usize,
) -> Result<f64> {
    let mut model = Gpt2::new(be, cfg, 1)?;
    let tr = TrainConfig::default();
    let mut opt = Optimizer::unrotated(be, &tr, &model.table)?;
    let mut rng = Rng::new(9);
    let mut tokens = || -> Vec<u32> {
        (0..b * t)
            .map(|_| rng.below(cfg.vocab_size as u64) as u32)
            .collect()
    };
    let (x, y) = (tokens(), tokens());
    let tiny = be.alloc(1)?;
    time(
        reps,
        || {
            model.zero_grads(be)?;
            model.forward_backward(be, &x, &y, b, t, 1.0 / (b * t) as f64)?;
            opt.step(be, &model.table, &mut model.params, &model.grads, tr.lr)
        },
        &|| be.download(&tiny).map(|_| ()),
    )
}

/// Runs the benchmark on the best device present (module docs) and prints it.
pub fn run(o: &KernelOptions) -> Result<()> {
    o.validate()?;
    let report = if o.device == DeviceKind::Cuda {
        let tk = crate::backend::cuda::nvrtc::Toolkit::find();
        let be = crate::backend::cuda::CudaBackend::cuda(0, tk, false)?;
        let bw = be.exec().memory_bandwidth_gbs().unwrap_or(f64::NAN);
        bench_ops(&be, o, bw, crate::backend::cuda::standin::active())?
    } else {
        let be = crate::backend::cpu::CpuBackend::<f32>::new(o.threads, false);
        bench_ops(&be, o, host_stream_bandwidth(), false)?
    };
    if o.json {
        println!("{}", serde_json::to_string(&report).expect("serialise"));
    } else {
        println!(
            "{} — GPT-2 {}, B={} T={}; peaks measured in this run: GEMM {:.1} GFLOP/s, memory {:.1} GB/s",
            report.device, report.model, report.batch_size, report.seq_len, report.gemm_peak_gflops, report.bandwidth_peak_gbs
        );
        for op in &report.ops {
            println!(
                "{:<40} {:>10.3} ms {:>9.1} {:<8} {:>5.1}% of peak",
                op.op,
                op.ms,
                op.rate,
                op.unit,
                100.0 * op.fraction_of_peak
            );
        }
        println!(
            "training step (forward + backward + AdamW) {:.3} ms; the fused rotated AdamW is {:.3} of it",
            report.ms_step, report.rotated_adamw_fraction_of_step
        );
        if report.emulated {
            println!(
                "NOTE: these are the CPU emulator's times (the CUDA stand-in), not a GPU's: they measure \
                 nothing about a GPU"
            );
        }
    }
    Ok(())
}
