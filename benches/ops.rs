//! Criterion microbenchmarks of the CPU backend: GEMM at the default CPU model's shapes, the non-GEMM
//! ops, and one full training step of that model. Ratios against the machine's GEMM peak are reported by
//! `rotadam bench step` (same run); this bench tracks each op's time across commits.
//!
//! `cargo bench --bench ops -- --warm-up-time 1 --measurement-time 3`

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use rotadam::backend::cpu::CpuBackend;
use rotadam::backend::{AdamStep, Backend, Scalar};
use rotadam::config::{ModelConfig, TrainConfig};
use rotadam::model::Gpt2;
use rotadam::optim::Optimizer;
use rotadam::rng::Rng;

fn randn(n: usize, seed: u64) -> Vec<f32> {
    let mut r = Rng::new(seed);
    (0..n).map(|_| r.normal() as f32).collect()
}

fn ops(c: &mut Criterion) {
    let cfg = ModelConfig::preset("small").unwrap();
    let (b, t, ch, nh, v) = (8, 128, cfg.n_embd, cfg.n_head, cfg.vocab_size);
    let n = b * t;
    let threads = rayon::current_num_threads();
    let be = CpuBackend::<f32>::new(threads, false);

    let mut g = c.benchmark_group("gemm");
    for (m, nn, k) in [(n, 3 * ch, ch), (n, 4 * ch, ch), (n, v, ch)] {
        let a = randn(m * k, 1);
        let w = randn(nn * k, 2);
        let mut out = vec![0.0f32; m * nn];
        g.throughput(Throughput::Elements((2 * m * nn * k) as u64));
        g.bench_function(format!("{m}x{nn}x{k}"), |bch| {
            bch.iter(|| f32::gemm(&mut out, &a, &w, m, nn, k, false, true, false, threads))
        });
    }
    g.finish();

    let mut g = c.benchmark_group("ops");
    let x = randn(n * ch, 3);
    let w = randn(ch, 4);
    let (mut out, mut mean, mut rstd) = (vec![0.0; n * ch], vec![0.0; n], vec![0.0; n]);
    g.bench_function("layernorm_forward", |bch| {
        bch.iter(|| {
            be.layernorm_forward(&mut out, &mut mean, &mut rstd, &x, &w, None, n, ch)
                .unwrap()
        })
    });
    let qkv = randn(n * 3 * ch, 5);
    let mut att = vec![0.0; b * nh * t * t];
    g.bench_function("attention_forward", |bch| {
        bch.iter(|| {
            be.attention_forward(&mut out, &mut att, &qkv, b, t, ch, nh)
                .unwrap()
        })
    });
    let h = randn(n * 4 * ch, 6);
    let mut hout = vec![0.0; n * 4 * ch];
    g.bench_function("gelu_forward", |bch| {
        bch.iter(|| be.gelu_forward(&mut hout, &h).unwrap())
    });
    let logits0 = randn(n * v, 7);
    let targets: Vec<u32> = (0..n as u32).map(|i| i * 7 % v as u32).collect();
    let mut logits = logits0.clone();
    let mut losses = vec![0.0; n];
    g.bench_function("crossentropy_forward+grad", |bch| {
        bch.iter(|| {
            logits.copy_from_slice(&logits0);
            be.crossentropy_forward(
                &mut losses,
                &mut logits,
                &targets,
                Some(1.0 / n as f32),
                n,
                v,
            )
            .unwrap()
        })
    });
    let np = 1 << 22;
    let (mut p, mut m1, mut m2, gr) = (randn(np, 8), vec![0.0; np], vec![0.0; np], randn(np, 9));
    let hp = AdamStep {
        lr: 1e-3,
        beta1: 0.9,
        beta2: 0.95,
        eps: 1e-8,
        weight_decay: 0.1,
        bias_correction1: 0.1,
        bias_correction2: 0.05,
    };
    g.throughput(Throughput::Elements(np as u64));
    g.bench_function("adamw_step_4M", |bch| {
        bch.iter(|| be.adamw_step(&mut p, &mut m1, &mut m2, &gr, hp).unwrap())
    });
    g.finish();

    let mut g = c.benchmark_group("step");
    g.sample_size(10);
    let mut model = Gpt2::new(&be, &cfg, 1).unwrap();
    let tc = TrainConfig::for_preset("small");
    let mut opt = Optimizer::unrotated(&be, &tc, &model.table).unwrap();
    let tokens: Vec<u32> = (0..n as u32).map(|i| i * 31 % v as u32).collect();
    g.throughput(Throughput::Elements(n as u64));
    g.bench_function("small_B8_T128", |bch| {
        bch.iter(|| {
            model.zero_grads(&be).unwrap();
            model
                .forward_backward(&be, &tokens, &targets, b, t, 1.0 / n as f64)
                .unwrap();
            opt.step(&be, &model.table, &mut model.params, &model.grads, 1e-3)
                .unwrap();
        })
    });
    g.finish();
}

criterion_group!(benches, ops);
criterion_main!(benches);
