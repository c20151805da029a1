//! Data parallelism on the CPU backend (ranks as threads exchanging through host memory): the shared
//! code path of the multi-device runs — the micro-batch split, the all-reduce of the gradients, the
//! optimizer sharded by rotation blocks, the gathered checkpoints, resume on another number of ranks.
//! The same trainer runs over NCCL on CUDA devices (`cuda::standin`'s data-parallel tests).

use crate::util::{synthetic_data, tiny_config, tmp};
use rotadam::backend::collective::LocalGroup;
use rotadam::backend::cpu::CpuBackend;
use rotadam::backend::{Backend, Collective};
use rotadam::config::{Parallel, Precision, RotationKind, RunConfig, Scope};
use rotadam::optim::shard::ranges;
use rotadam::run::train::train;
use std::path::Path;

/// A tiny run's config on `ranks` CPU ranks (1: one device) under `rotation`, in `precision`, with
/// `accum` micro-batches per step over all ranks.
fn config(
    data: &Path,
    out: &Path,
    steps: usize,
    rotation: Scope,
    ranks: usize,
    accum: usize,
    precision: Precision,
) -> RunConfig {
    let mut cfg = tiny_config(data, out, steps);
    cfg.precision = precision;
    cfg.train.grad_accum = accum;
    cfg.train.checkpoint_every = 3;
    cfg.train.eval_every = 3;
    cfg.rotation.kind = RotationKind::Scope(rotation);
    cfg.rotation.block = 16;
    if ranks > 1 {
        cfg.parallel = Parallel {
            devices: (0..ranks).collect(),
            ..Parallel::default()
        };
    }
    cfg
}

/// (train loss, val loss, grad norm) per step of a run's metrics.jsonl.
fn metrics(dir: &Path) -> Vec<(f64, Option<f64>, f64)> {
    let text = std::fs::read_to_string(dir.join("metrics.jsonl")).unwrap();
    text.lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            (
                v["train_loss"].as_f64().unwrap(),
                v["val_loss"].as_f64(),
                v["grad_norm"].as_f64().unwrap(),
            )
        })
        .collect()
}

/// Every tensor of a checkpoint's weights and optimizer state, by file and name.
fn checkpoint(dir: &Path, step: usize) -> Vec<(String, Vec<f64>)> {
    let ck = dir.join(format!("checkpoints/step_{step}"));
    let mut out = Vec::new();
    for file in ["model.safetensors", "optim.safetensors"] {
        for (name, (_, values)) in rotadam::tensors::read(&ck.join(file)).unwrap() {
            out.push((format!("{file}:{name}"), values));
        }
    }
    out
}

/// The largest difference between two runs' checkpoints relative to the tensor's largest entry.
fn checkpoint_diff(a: &Path, b: &Path, step: usize) -> f64 {
    let (x, y) = (checkpoint(a, step), checkpoint(b, step));
    assert_eq!(x.len(), y.len());
    let mut worst: f64 = 0.0;
    for ((na, va), (nb, vb)) in x.iter().zip(&y) {
        assert_eq!(na, nb);
        assert_eq!(va.len(), vb.len(), "{na}");
        let scale = va.iter().fold(0.0f64, |m, v| m.max(v.abs())).max(1e-300);
        for (p, q) in va.iter().zip(vb) {
            worst = worst.max((p - q).abs() / scale);
        }
    }
    worst
}

fn relative(a: f64, b: f64) -> f64 {
    (a - b).abs() / a.abs().max(b.abs()).max(1e-300)
}

/// W ranks with accumulation A/W each compute what one rank with accumulation A computes: the same
/// micro-batches, the gradient summed in another order. In f64 the metrics and the checkpoints (weights,
/// and the sharded moments gathered) agree to 1e-12 relative; in f32 to 1e-4, the rounding of a few
/// steps. W = 2 and 3, under `none` (shards cut anywhere) and `global` (shards cut at the blocks of 16),
/// with two micro-batches per rank for W = 2. Planted: a sharded step that skips the exchange of the
/// updated parameters (each rank's other ranges stay stale) fails this test, the two below and the
/// resume test.
#[test]
fn data_parallel_ranks_match_one_rank_with_accumulation() {
    let root = tmp("dp-match");
    let data = root.join("data");
    std::fs::create_dir_all(&data).unwrap();
    synthetic_data(&data);
    for (precision, tol) in [(Precision::Fp64, 1e-12), (Precision::Fp32, 1e-4)] {
        for scope in [Scope::None, Scope::Global] {
            for (ranks, accum) in [(2, 4), (3, 3)] {
                let label = format!("{precision:?} {scope} W={ranks} A={accum}");
                let one = root.join(format!("{label}-one").replace(' ', "_"));
                let many = root.join(format!("{label}-many").replace(' ', "_"));
                train(&config(&data, &one, 6, scope, 1, accum, precision), false).unwrap();
                train(
                    &config(&data, &many, 6, scope, ranks, accum, precision),
                    false,
                )
                .unwrap();
                let (a, b) = (metrics(&one), metrics(&many));
                assert_eq!((a.len(), b.len()), (6, 6), "{label}");
                for (s, (x, y)) in a.iter().zip(&b).enumerate() {
                    assert!(
                        relative(x.0, y.0) <= tol,
                        "{label} step {}: train loss {x:?} vs {y:?}",
                        s + 1
                    );
                    assert!(
                        relative(x.2, y.2) <= tol.max(1e-10),
                        "{label} step {}: grad norm {x:?} vs {y:?}",
                        s + 1
                    );
                    assert_eq!(x.1.is_some(), y.1.is_some());
                    if let (Some(p), Some(q)) = (x.1, y.1) {
                        assert!(
                            relative(p, q) <= tol,
                            "{label} step {}: val {p} vs {q}",
                            s + 1
                        );
                    }
                }
                for step in [3, 6] {
                    let d = checkpoint_diff(&one, &many, step);
                    assert!(
                        d <= tol * 10.0,
                        "{label}: checkpoint of step {step} differs by {d:e}"
                    );
                }
            }
        }
    }
    let _ = std::fs::remove_dir_all(&root);
}

/// The sharded optimizer computes each block and element with the ops and inputs of the whole one: W
/// ranks sharding AdamW's state give the bits of W ranks keeping it whole (`--replicate-optimizer`):
/// the same losses and checkpoints, under `none` (gradient reduce-scattered) and `global` (all-reduced),
/// W = 2 and 3, and the same gradient norm to rounding (bit for bit under `global`). Planted: the
/// skipped exchange above fails it.
#[test]
fn sharded_optimizer_equals_the_whole_one_bit_for_bit() {
    let root = tmp("dp-sharded");
    let data = root.join("data");
    std::fs::create_dir_all(&data).unwrap();
    synthetic_data(&data);
    for scope in [Scope::None, Scope::Global] {
        for ranks in [2, 3] {
            let label = format!("{scope}-W{ranks}");
            let sharded = root.join(format!("{label}-sharded"));
            let whole = root.join(format!("{label}-whole"));
            let mut a = config(&data, &sharded, 4, scope, ranks, ranks, Precision::Fp32);
            a.train.checkpoint_every = 2;
            // without a rotation the sharded ranks reduce-scatter the gradient and sum its norm from
            // their ranges, which rounds the norm (not the gradient) differently: no clipping there,
            // so the norm does not reach the parameters (under global, clipping as configured)
            if scope == Scope::None {
                a.train.clip = 0.0;
            }
            let mut b = a.clone();
            b.out = whole.clone();
            b.parallel.replicate_optimizer = true;
            train(&a, false).unwrap();
            train(&b, false).unwrap();
            let (x, y) = (metrics(&sharded), metrics(&whole));
            assert_eq!((x.len(), y.len()), (4, 4), "{label}");
            for (p, q) in x.iter().zip(&y) {
                assert_eq!((p.0, p.1), (q.0, q.1), "{label}: losses");
                assert!(
                    relative(p.2, q.2) <= 1e-6,
                    "{label}: grad norm {p:?} vs {q:?}"
                );
                if scope == Scope::Global {
                    assert_eq!(p.2, q.2, "{label}: grad norm");
                }
            }
            for step in [2, 4] {
                assert_eq!(
                    checkpoint(&sharded, step),
                    checkpoint(&whole, step),
                    "{label} step {step}"
                );
            }
        }
    }
    let _ = std::fs::remove_dir_all(&root);
}

/// A data-parallel run resumed from its checkpoint continues bit for bit (the gathered moments are
/// split again among the ranks); resumed on another number of ranks it continues to rounding (the
/// checkpoint is the whole state, whatever W wrote it). Planted: the skipped exchange above fails it.
#[test]
fn data_parallel_resume_is_bit_identical_and_works_on_another_number_of_ranks() {
    let root = tmp("dp-resume");
    let data = root.join("data");
    std::fs::create_dir_all(&data).unwrap();
    synthetic_data(&data);
    let straight = root.join("straight");
    train(
        &config(&data, &straight, 6, Scope::Global, 2, 2, Precision::Fp32),
        false,
    )
    .unwrap();
    // the same run stopped at step 3, then resumed on 2 ranks, and on 3 (accumulation 6 over 3 ranks
    // would change the config, so the 3-rank resume keeps A = 6: a run of its own)
    let resumed = root.join("resumed");
    train(
        &config(&data, &resumed, 3, Scope::Global, 2, 2, Precision::Fp32),
        false,
    )
    .unwrap();
    train(
        &config(&data, &resumed, 6, Scope::Global, 2, 2, Precision::Fp32),
        true,
    )
    .unwrap();
    assert_eq!(metrics(&straight), metrics(&resumed));
    assert_eq!(checkpoint(&straight, 6), checkpoint(&resumed, 6));

    let one = root.join("one");
    train(
        &config(&data, &one, 6, Scope::Global, 1, 6, Precision::Fp64),
        false,
    )
    .unwrap();
    let moved = root.join("moved");
    train(
        &config(&data, &moved, 3, Scope::Global, 2, 6, Precision::Fp64),
        false,
    )
    .unwrap();
    train(
        &config(&data, &moved, 6, Scope::Global, 3, 6, Precision::Fp64),
        true,
    )
    .unwrap();
    let (a, b) = (metrics(&one), metrics(&moved));
    assert_eq!((a.len(), b.len()), (6, 6));
    for (x, y) in a.iter().zip(&b) {
        assert!(relative(x.0, y.0) <= 1e-12, "{x:?} vs {y:?}");
    }
    let d = checkpoint_diff(&one, &moved, 6);
    assert!(
        d <= 1e-11,
        "checkpoint after resuming on 3 ranks differs by {d:e}"
    );
    let _ = std::fs::remove_dir_all(&root);
}

/// What cannot be split is refused before anything runs, naming the setting: micro-batches not a
/// multiple of the ranks, a device listed twice, several processes on the CPU (they need NCCL), a run
/// directory that holds a run (rank 0's message is the one reported); more
/// ranks than rotation blocks: `shard_ranges_cover_the_layout_at_block_starts`.
#[test]
fn data_parallel_settings_that_cannot_work_are_refused() {
    let root = tmp("dp-refused");
    let data = root.join("data");
    std::fs::create_dir_all(&data).unwrap();
    synthetic_data(&data);
    let out = root.join("run");
    let err = |cfg: RunConfig| train(&cfg, false).unwrap_err().to_string();
    let e = err(config(&data, &out, 2, Scope::None, 2, 3, Precision::Fp32));
    assert!(
        e.contains("grad-accum") && e.contains("multiple of the number of ranks"),
        "{e}"
    );
    let mut c = config(&data, &out, 2, Scope::None, 2, 2, Precision::Fp32);
    c.parallel.devices = vec![0, 0];
    let e = err(c);
    assert!(e.contains("device 0 is listed twice"), "{e}");
    let mut c = config(&data, &out, 2, Scope::None, 1, 2, Precision::Fp32);
    c.parallel.processes = Some(rotadam::config::Processes {
        rank: 0,
        world_size: 2,
        rendezvous: root.join("rv"),
        local_rank: None,
    });
    let e = err(c);
    assert!(e.contains("NCCL") && e.contains("--device cuda"), "{e}");
    assert!(
        !out.join("config.json").exists(),
        "a refused run wrote its directory"
    );
    // a run directory that already holds a run: rank 0's own message, not another rank's report that
    // rank 0 stopped
    let c = config(&data, &out, 1, Scope::None, 1, 2, Precision::Fp32);
    train(&c, false).unwrap();
    let e = err(config(&data, &out, 1, Scope::None, 2, 2, Precision::Fp32));
    assert!(e.contains("already a run directory"), "{e}");
    let _ = std::fs::remove_dir_all(&root);
}

/// The ranges of a sharded layout: contiguous, covering it once, cut only at block starts, each near
/// its even share. Planted: cutting at the target itself (ignoring the block starts) fails the
/// block-start check.
#[test]
fn shard_ranges_cover_the_layout_at_block_starts() {
    let starts: Vec<usize> = (0..10).map(|j| j * 7).chain([70]).collect();
    for world in 1..=10 {
        let r = ranges(70, world, &starts).unwrap();
        assert_eq!(r.len(), world);
        assert_eq!(r[0].start, 0);
        assert_eq!(r[world - 1].end, 70);
        for w in r.windows(2) {
            assert_eq!(w[0].end, w[1].start);
        }
        for x in &r {
            assert!(starts.contains(&x.start) && !x.is_empty(), "{world}: {r:?}");
            // within one block of the even share
            assert!(x.len().abs_diff(70 / world) <= 7 + 1, "{world}: {r:?}");
        }
    }
    assert!(ranges(70, 11, &starts).is_err());
}

/// A rank that fails stops the others instead of leaving them waiting in a collective. Planted: a
/// LocalGroup whose drop does not break the group hangs this test (the other rank waits forever).
#[test]
fn a_failed_rank_stops_the_others() {
    let be = CpuBackend::<f64>::new(1, false);
    let mut ranks = LocalGroup::new(2);
    let second = ranks.pop().unwrap();
    let first = ranks.pop().unwrap();
    std::thread::scope(|s| {
        let waiting = s.spawn(|| {
            let mut x = be.alloc(3).unwrap();
            <LocalGroup as Collective<CpuBackend<f64>>>::all_reduce_sum(&first, &be, &mut x)
        });
        drop(second); // rank 1 ends without finishing
        let e = waiting.join().unwrap().unwrap_err().to_string();
        assert!(e.contains("rank 1 ended with an error"), "{e}");
    });
}

/// The host collectives: the sum in rank order in the backend's type (f32 here: the order matters for
/// these values), a gather in rank order by broadcasts of each rank's range and of host values, a
/// broadcast of a range from its root, a reduce-scatter.
#[test]
fn local_group_collectives_follow_rank_order() {
    let be = CpuBackend::<f32>::new(1, false);
    let ranks = LocalGroup::new(3);
    let values = [[1.0e8f32, 1.0], [-1.0e8, 3.0], [1.0, -4.0]];
    let got: Vec<(Vec<f32>, Vec<f32>, Vec<f64>)> = std::thread::scope(|s| {
        let hs: Vec<_> = ranks
            .iter()
            .zip(values)
            .map(|(g, v)| {
                let be = &be;
                s.spawn(move || {
                    let mut x = be.alloc(2).unwrap();
                    be.upload(&mut x, &v).unwrap();
                    let c: &dyn Collective<CpuBackend<f32>> = g;
                    // every rank's pair into its slot, then each slot broadcast from its rank (the
                    // sharded optimizer's exchange): the pairs in rank order on every rank
                    let mut all = be.alloc(6).unwrap();
                    let mut mine = vec![0.0f32; 6];
                    mine[2 * c.rank()..2 * c.rank() + 2].copy_from_slice(&v);
                    be.upload(&mut all, &mine).unwrap();
                    for q in 0..3 {
                        c.broadcast(be, &mut all, 2 * q..2 * q + 2, q).unwrap();
                    }
                    c.all_reduce_sum(be, &mut x).unwrap();
                    // rank 2's second element to everyone (rank 2 holds 1 + 3 + −4 = 0 there now)
                    let mut y = be.alloc(2).unwrap();
                    be.upload(&mut y, &[c.rank() as f32, 7.0 + c.rank() as f32])
                        .unwrap();
                    c.broadcast(be, &mut y, 1..2, 2).unwrap();
                    assert_eq!(be.download(&y).unwrap(), vec![c.rank() as f32, 9.0]);
                    // parts of 1: rank r gets the sum of every rank's element r (rank q holds 10q + r
                    // there); the rest is left as it was
                    let mut z = be.alloc(4).unwrap();
                    let mine: Vec<f32> = (0..4).map(|r| (10 * c.rank() + r) as f32).collect();
                    be.upload(&mut z, &mine).unwrap();
                    c.reduce_scatter_sum(be, &mut z, 1).unwrap();
                    let mut want = mine.clone();
                    want[c.rank()] = (30 + 3 * c.rank()) as f32;
                    assert_eq!(be.download(&z).unwrap(), want);
                    let host = c.all_gather_host(be, &[c.rank() as f64]).unwrap();
                    (be.download(&x).unwrap(), be.download(&all).unwrap(), host)
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    // ((1e8 + −1e8) + 1) = 1 in rank order; (1 + 3) + −4 = 0
    let want_sum = vec![(1.0e8f32 + -1.0e8) + 1.0, (1.0f32 + 3.0) + -4.0];
    for (sum, all, host) in &got {
        assert_eq!(sum, &want_sum);
        assert_eq!(all, &values.concat());
        assert_eq!(host, &vec![0.0, 1.0, 2.0]);
    }
    for mut g in ranks {
        <LocalGroup as Collective<CpuBackend<f32>>>::finish(&mut g);
    }
}
