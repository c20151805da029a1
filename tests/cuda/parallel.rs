//! Data parallelism through the CUDA host path on the stand-in: `rotadam gpt2 --device cuda --devices
//! 0,1` (one process, two stand-in devices, the stand-in's NCCL between threads) and two processes meeting
//! through `--rendezvous` (the stand-in's NCCL through shared memory), against one stand-in device with
//! the same micro-batches.

use super::nvrtc::{repo, toolkit};
use super::standin::tiny_run;
use crate::util::{synthetic_data, tmp};
use rotadam::backend::cuda::standin;
use rotadam::config::{OptimizerKind, Precision};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};

/// `rotadam` with `args` under the stand-in with `devices` stand-in devices, not yet waited for.
fn spawn(args: &[&str], devices: usize) -> Child {
    toolkit();
    Command::new(env!("CARGO_BIN_EXE_rotadam"))
        .args(args)
        .env(standin::ENV, "1")
        .env("ROTADAM_STANDIN_DEVICES", devices.to_string())
        .current_dir(repo())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Waits for `child`, which must succeed without a misuse reported by the stand-in.
fn finished(child: Child, what: &str) -> Output {
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{what} failed:\n{err}");
    assert!(
        !err.contains("cuda stand-in:") && !err.contains("nccl stand-in:"),
        "{what}: the stand-in reported misuses:\n{err}"
    );
    out
}

/// (train loss, val loss, grad norm) per step.
fn metrics(dir: &Path) -> Vec<(f64, Option<f64>, f64)> {
    rotadam::run::metrics::read(&dir.join("metrics.jsonl"))
        .unwrap()
        .iter()
        .map(|r| (r.train_loss, r.val_loss, r.grad_norm))
        .collect()
}

/// f32 rounding of a few steps: the ranks sum the two micro-batches' gradients in another order.
fn assert_close(a: &[(f64, Option<f64>, f64)], b: &[(f64, Option<f64>, f64)], what: &str) {
    assert_eq!(a.len(), b.len(), "{what}");
    let rel = |x: f64, y: f64| (x - y).abs() / x.abs().max(y.abs());
    for (s, (x, y)) in a.iter().zip(b).enumerate() {
        assert!(
            rel(x.0, y.0) < 1e-5,
            "{what} step {}: {x:?} vs {y:?}",
            s + 1
        );
        assert!(
            rel(x.2, y.2) < 1e-4,
            "{what} step {}: {x:?} vs {y:?}",
            s + 1
        );
        match (x.1, y.1) {
            (Some(p), Some(q)) => assert!(rel(p, q) < 1e-5, "{what} step {}", s + 1),
            (None, None) => {}
            _ => panic!("{what} step {}: val losses {x:?} vs {y:?}", s + 1),
        }
    }
}

/// Two and three stand-in devices in one process (`--devices 0,1[,2]`: a thread each, one NCCL
/// communicator per device) train the tiny model as one device does with the same micro-batches
/// (accumulation W), under `none` (the gradient reduce-scattered, the sharded AdamW's ranges broadcast in
/// place) and `global` (the gradient all-reduced, its blocks' parameters through the staging buffer);
/// with three devices under `global`, the gathered sharded state equals the state the same ranks keep
/// whole (`--replicate-optimizer`), bit for bit; resuming the two-device run gives its straight run's
/// checkpoint bit for bit. The stand-in checks every NCCL call's buffers, stream and matching across
/// ranks (its own tests plant those misuses).
#[test]
fn standin_devices_train_as_one_device_and_resume_bit_identically() {
    let root = tmp("standin-dp");
    synthetic_data(&root);
    for rotation in ["none", "global"] {
        let cfg = tiny_run(&root, rotation, Precision::Fp32, OptimizerKind::Adamw);
        let c = cfg.to_str().unwrap();
        for (world, list) in [(2usize, "0,1"), (3, "0,1,2")] {
            let accum = world.to_string();
            let one = root.join(format!("{rotation}-{world}-one"));
            let many = root.join(format!("{rotation}-{world}-many"));
            let a = [
                "gpt2",
                "--config",
                c,
                "--device",
                "cuda",
                "--quiet",
                "--grad-accum",
                &accum,
                "--out",
            ];
            finished(
                spawn(&[&a[..], &[one.to_str().unwrap()]].concat(), 1),
                "one device",
            );
            let args = [&a[..], &[many.to_str().unwrap(), "--devices", list]].concat();
            finished(spawn(&args, world), "several devices");
            assert_close(
                &metrics(&one),
                &metrics(&many),
                &format!("{rotation} W={world}"),
            );
            if rotation == "global" && world == 3 {
                let whole = root.join("global-3-whole");
                let args = [
                    &a[..],
                    &[
                        whole.to_str().unwrap(),
                        "--devices",
                        list,
                        "--replicate-optimizer",
                    ],
                ]
                .concat();
                finished(spawn(&args, world), "several devices, whole optimizer");
                let read = |dir: &Path| {
                    std::fs::read(
                        rotadam::run::checkpoint::step_dir(dir, 4).join("optim.safetensors"),
                    )
                    .unwrap()
                };
                assert!(
                    read(&many) == read(&whole),
                    "the gathered sharded state differs from the whole one"
                );
            }
            if rotation == "global" && world == 2 {
                let first = root.join("global-first");
                let f = first.to_str().unwrap();
                let part = [&a[..], &[f, "--devices", list, "--steps", "2"]].concat();
                finished(spawn(&part, 2), "two devices, 2 steps");
                let rest = [
                    "gpt2",
                    "--resume",
                    f,
                    "--device",
                    "cuda",
                    "--devices",
                    list,
                    "--steps",
                    "4",
                ];
                finished(spawn(&rest, 2), "two devices, resumed");
                for file in ["model.safetensors", "optim.safetensors"] {
                    let read = |dir: &Path| {
                        std::fs::read(rotadam::run::checkpoint::step_dir(dir, 4).join(file))
                            .unwrap()
                    };
                    assert!(
                        read(&many) == read(&first),
                        "{file}: the resumed two-device run differs from the straight one"
                    );
                }
            }
        }
    }
    std::fs::remove_dir_all(&root).unwrap();
}

/// Two processes, one stand-in device each, meet through `--rendezvous` (rank 0 writes NCCL's id, rank 1
/// reads it; the stand-in's NCCL exchanges through shared memory) and train as one device does; rank 0
/// writes the run, rank 1 nothing, and the id file is gone afterwards. A third launch into a directory
/// that still holds an id is refused by rank 0.
#[test]
fn two_processes_meet_through_a_rendezvous_directory() {
    let root = tmp("standin-dp-procs");
    synthetic_data(&root);
    let cfg = tiny_run(&root, "global", Precision::Fp32, OptimizerKind::Adamw);
    let c = cfg.to_str().unwrap();
    let one = root.join("one");
    let a = [
        "gpt2", "--config", c, "--device", "cuda", "--quiet", "--out",
    ];
    finished(
        spawn(&[&a[..], &[one.to_str().unwrap()]].concat(), 1),
        "one device",
    );
    let (run, rv) = (root.join("procs"), root.join("rv"));
    let (r, v) = (run.to_str().unwrap(), rv.to_str().unwrap());
    let ranks: Vec<Child> = (0..2)
        .map(|rank| {
            let rank = rank.to_string();
            let args = [
                &a[..],
                &[
                    r,
                    "--rendezvous",
                    v,
                    "--rank",
                    &rank,
                    "--world-size",
                    "2",
                    "--devices",
                    &rank,
                ],
            ]
            .concat();
            spawn(&args, 2)
        })
        .collect();
    for (i, child) in ranks.into_iter().enumerate() {
        finished(child, &format!("rank {i}"));
    }
    assert_close(&metrics(&one), &metrics(&run), "two processes");
    assert!(
        !rv.join(rotadam::backend::cuda::collective::ID_FILE)
            .exists(),
        "the NCCL id outlived the launch"
    );
    std::fs::write(
        rv.join(rotadam::backend::cuda::collective::ID_FILE),
        "2 00\n",
    )
    .unwrap();
    let again = root.join("again");
    let args = [
        &a[..],
        &[
            again.to_str().unwrap(),
            "--rendezvous",
            v,
            "--rank",
            "0",
            "--world-size",
            "2",
        ],
    ]
    .concat();
    let out = spawn(&args, 1).wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("from another launch"),
        "a stale id was not refused:\n{err}"
    );
    std::fs::remove_dir_all(&root).unwrap();
}

/// Device memory one rank holds after building its trainer at 124M (weights, gradient, optimizer state,
/// rotation; activations come with the first step and are not built here), measured by the stand-in's
/// `cuMemGetInfo_v2` for W = 1, 2, 8 ranks under `none` and `global`, rank by rank (each rank's trainer
/// is dropped before the next is built, so one rank's memory is in use at a time). Each must stay within
/// the memory estimate's terms for the same buffers. Heavy (several GB of host memory, a minute):
/// `cargo test --release -- --ignored memory_per_rank`, which writes its table to
/// `$TMPDIR/rotadam-memory-per-rank.md` (copied into `docs/benchmarks.md`).
#[test]
#[ignore]
fn memory_per_rank_at_124m_on_the_standin() {
    use rotadam::backend::collective::LocalGroup;
    use rotadam::backend::cuda::CudaBackend;
    use rotadam::backend::Collective;
    use rotadam::config::{ModelConfig, Parallel, RunConfig, TrainConfig};
    use rotadam::run::trainer::Trainer;
    let test = "cuda::parallel::memory_per_rank_at_124m_on_the_standin";
    super::standin::in_standin(test, false, || {
        let tk = rotadam::backend::cuda::nvrtc::Toolkit::find();
        let be = CudaBackend::cuda(0, tk, false).unwrap();
        let used = || {
            be.exec().bind().unwrap();
            let (free, total) = cudarc::driver::result::mem_get_info().unwrap();
            (total - free) as u64
        };
        let base = used();
        let mut table = String::from(
            "| rotation | W | rank | measured | estimate (params + grads + optimizer + rotation) |\n",
        );
        for rotation in ["none", "global"] {
            for world in [1usize, 2, 8] {
                let cfg = RunConfig {
                    model_preset: "124m".into(),
                    model: ModelConfig::preset("124m").unwrap(),
                    train: TrainConfig {
                        grad_accum: 8,
                        ..TrainConfig::for_preset("124m")
                    },
                    rotation: rotadam::config::RotationConfig {
                        kind: rotation.parse().unwrap(),
                        ..Default::default()
                    },
                    data: "demo".into(),
                    out: std::env::temp_dir(),
                    device: rotadam::config::DeviceKind::Cuda,
                    precision: Precision::Fp32,
                    threads: 2,
                    init_from: None,
                    quiet: true,
                    max_memory: None,
                    parallel: Parallel {
                        devices: (0..world).collect(),
                        ..Parallel::default()
                    },
                };
                let est = rotadam::run::memory::estimate(&cfg);
                let bound = est.params + est.grads + est.optimizer + est.rotation;
                for rank in [0, world - 1] {
                    let comm = (world > 1).then(|| {
                        let g = LocalGroup::new(world).swap_remove(rank);
                        Box::new(g) as Box<dyn Collective<CudaBackend>>
                    });
                    let t = Trainer::new_rank(&be, &cfg, comm).unwrap();
                    let held = used() - base;
                    drop(t);
                    table += &format!(
                        "| {rotation} | {world} | {rank} | {:.1} MiB | {:.1} MiB |\n",
                        held as f64 / 1048576.0,
                        bound as f64 / 1048576.0
                    );
                    assert!(
                        u128::from(held) <= bound,
                        "{rotation} W={world} rank {rank}: {held} bytes held, estimate {bound}"
                    );
                }
            }
        }
        // the child's output is not shown when it passes: the table goes to a file
        let out = std::env::temp_dir().join("rotadam-memory-per-rank.md");
        std::fs::write(&out, &table).unwrap();
    });
}
