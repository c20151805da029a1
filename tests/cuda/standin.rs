//! The CUDA host path run end to end without a GPU: the CUDA backend (`CudaExec`: cudarc's driver calls,
//! cuBLAS, the PTX NVRTC compiled) on the driver + cuBLAS stand-in (`kernels/standin`, loaded with
//! `ROTADAM_CUDA_STANDIN=1`; `docs/cuda.md`).
//!
//! The stand-in replaces the driver for a whole process, so each test runs in a process of its own: the
//! command line (`rotadam gpt2 --device cuda …`, the built binary), or this test binary again with the
//! stand-in loaded ([`in_standin`]), which afterwards fails the test if the stand-in reported any misuse
//! (a pointer outside live memory, a leaked buffer, …) the test did not plant. Six tests plant one each
//! — swapped kernel arguments, a wrong leading dimension, a device-to-host read without a synchronize, a
//! leaked buffer, allocations too large to map, malformed stand-in settings — and require the stand-in to
//! report it.

use super::nvrtc::{repo, toolkit};
use crate::util::{synthetic_data, tiny_config, tmp};
use rotadam::backend::cuda::{standin, CudaBackend, CudaExec};
use rotadam::backend::kernel::{Exec, Geometry, Mem, BLOCK};
use rotadam::config::{OptimizerKind, Precision, RunConfig};
use rotadam::kernels::{EmuArg, Kernel};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// Set in a child that runs one test under the stand-in: the test's name.
const CHILD: &str = "ROTADAM_STANDIN_CHILD";

/// Runs `body` under the stand-in: in a child process of this test binary (`test` is the test's name,
/// `module::fn`) with `ROTADAM_CUDA_STANDIN=1`; in the child, after `body`, the stand-in's report must be
/// empty unless `planted` (the test then checks it itself).
pub fn in_standin(test: &str, planted: bool, body: impl FnOnce()) {
    in_standin_with(test, planted, &[], body);
}

/// [`in_standin`] with the variables `env` (name, value) set in the child only, for the stand-in's own
/// settings. A test may call it several times, each with its own non-empty `env`: each call starts a
/// child, and in a child only the call whose `env` it was started with runs its body.
pub fn in_standin_with(test: &str, planted: bool, env: &[(&str, &str)], body: impl FnOnce()) {
    if std::env::var(CHILD).as_deref() == Ok(test) {
        if !env
            .iter()
            .all(|(k, v)| std::env::var(k).as_deref() == Ok(*v))
        {
            return; // another call of this test started this child
        }
        // Loaded, not probed: a test of a setting cuInit refuses must be able to run its body.
        assert!(
            matches!(standin::activate(), Ok(Some(_))) && standin::active(),
            "the child of {test} did not load the stand-in"
        );
        body();
        if !planted {
            let (n, report) = standin::errors().unwrap();
            assert_eq!(n, 0, "the stand-in reported misuses:\n{report}");
        }
        return;
    }
    toolkit(); // the NVRTC wheels, fetched once for every process
    let out = Command::new(std::env::current_exe().unwrap())
        // --include-ignored: an ignored test run with --ignored runs its body in the child too
        .args([
            test,
            "--exact",
            "--nocapture",
            "--test-threads=1",
            "--include-ignored",
        ])
        .env(standin::ENV, "1")
        .env(CHILD, test)
        .envs(env.iter().copied())
        .current_dir(repo())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("1 passed"),
        "{test} under the stand-in failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `rotadam` with `args` under the stand-in (from the repository, where NVRTC's wheels are).
fn rotadam_on_standin(args: &[&str]) -> Output {
    toolkit();
    let out = Command::new(env!("CARGO_BIN_EXE_rotadam"))
        .args(args)
        .env(standin::ENV, "1")
        .current_dir(repo())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "rotadam {args:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !err.contains("cuda stand-in:"),
        "the stand-in reported misuses:\n{err}"
    );
    out
}

/// The losses of a run directory's metrics.jsonl.
fn losses(dir: &Path) -> Vec<(f64, Option<f64>)> {
    rotadam::run::metrics::read(&dir.join("metrics.jsonl"))
        .unwrap()
        .iter()
        .map(|r| (r.train_loss, r.val_loss))
        .collect()
}

/// A config file of the tiny test run (synthetic data, 4 steps) under `rotation` in `precision`, with
/// `optimizer`.
pub(crate) fn tiny_run(
    root: &Path,
    rotation: &str,
    precision: Precision,
    optimizer: OptimizerKind,
) -> PathBuf {
    let mut cfg: RunConfig = tiny_config(root, &root.join("unused"), 4);
    cfg.model.bias = true;
    cfg.rotation.kind = rotation.parse().unwrap();
    cfg.rotation.block = 7;
    cfg.precision = precision;
    cfg.train.optimizer = optimizer;
    cfg.train.checkpoint_every = 2;
    if rotation == "soap" {
        // rank-deficient gradients (48 tokens a step): keep Adam from amplifying the f32 rounding noise
        // of the null directions, which differs between backends (`cuda::step::train_optimizer`)
        cfg.train.eps = 1e-3;
        cfg.rotation.soap.every = 2;
    }
    let path = root.join(format!("{rotation}-{precision}-{}.json", optimizer.name()));
    std::fs::write(&path, serde_json::to_vec_pretty(&cfg).unwrap()).unwrap();
    path
}

/// `rotadam gpt2 --device cuda` on the stand-in trains the tiny GPT-2 as the CPU backend does, under
/// `none` and `global` (fused rotated AdamW), fp32 and bf16 (the emulator tests' tolerances), with
/// Muon (its Newton–Schulz GEMMs through cuBLAS), and under soap (its factors' GEMMs and EMAs, refreshes
/// at steps 1 and 3).
#[test]
fn cli_training_on_the_cuda_backend_matches_the_cpu() {
    let root = tmp("standin-cli");
    synthetic_data(&root);
    let adamw = OptimizerKind::Adamw;
    for (rotation, precision, tol, optimizer) in [
        ("none", Precision::Fp32, 1e-5, adamw),
        ("global", Precision::Fp32, 1e-5, adamw),
        ("none", Precision::Bf16, 2e-3, adamw),
        ("global", Precision::Bf16, 2e-3, adamw),
        ("none", Precision::Fp32, 1e-5, OptimizerKind::Muon),
        ("soap", Precision::Fp32, 1e-5, adamw),
    ] {
        let cfg = tiny_run(&root, rotation, precision, optimizer);
        let run = |device: &str| {
            let out = root.join(format!(
                "{rotation}-{precision}-{}-{device}",
                optimizer.name()
            ));
            let (c, o) = (cfg.to_str().unwrap(), out.to_str().unwrap());
            let res = rotadam_on_standin(&["gpt2", "--config", c, "--device", device, "--out", o]);
            (out, String::from_utf8_lossy(&res.stderr).into_owned())
        };
        let ((cuda, log), (cpu, _)) = (run("cuda"), run("cpu"));
        assert!(
            log.contains("device: cuda") && log.contains("stand-in"),
            "{log}"
        );
        let (a, b) = (losses(&cuda), losses(&cpu));
        assert_eq!(a.len(), 4);
        for (step, ((ta, va), (tb, vb))) in a.iter().zip(&b).enumerate() {
            let rel = (ta - tb).abs() / tb.abs();
            assert!(
                rel <= tol,
                "{rotation} {precision} step {}: train loss {ta} on cuda, {tb} on the cpu",
                step + 1
            );
            assert_eq!(va.is_some(), vb.is_some());
            if let (Some(va), Some(vb)) = (va, vb) {
                assert!((va - vb).abs() <= tol * vb.abs(), "val {va} vs {vb}");
            }
        }
    }
    std::fs::remove_dir_all(&root).unwrap();
}

/// A run resumed from a checkpoint written on the (stand-in) GPU continues bit for bit: the same
/// checkpoint files as the run that was not interrupted.
#[test]
fn cli_resume_on_the_cuda_backend_is_bit_identical() {
    let root = tmp("standin-resume");
    synthetic_data(&root);
    let cfg = tiny_run(&root, "global", Precision::Fp32, OptimizerKind::Adamw);
    let c = cfg.to_str().unwrap();
    let (straight, first) = (root.join("straight"), root.join("first"));
    let (s, f) = (straight.to_str().unwrap(), first.to_str().unwrap());
    rotadam_on_standin(&["gpt2", "--config", c, "--device", "cuda", "--out", s]);
    rotadam_on_standin(&[
        "gpt2", "--config", c, "--device", "cuda", "--out", f, "--steps", "2",
    ]);
    rotadam_on_standin(&["gpt2", "--resume", f, "--device", "cuda", "--steps", "4"]);
    for file in ["model.safetensors", "optim.safetensors"] {
        let read = |dir: &Path| {
            std::fs::read(rotadam::run::checkpoint::step_dir(dir, 4).join(file)).unwrap()
        };
        assert!(
            read(&straight) == read(&first),
            "{file}: the resumed run differs from the straight one"
        );
    }
    std::fs::remove_dir_all(&root).unwrap();
}

/// `--device auto` runs the real self-check on the stand-in and picks CUDA; `bench kernels --device cuda`
/// runs, and says its times are the emulator's.
#[test]
fn auto_picks_cuda_after_its_self_check_and_the_kernel_bench_runs() {
    let root = tmp("standin-auto");
    synthetic_data(&root);
    let cfg = tiny_run(&root, "none", Precision::Fp32, OptimizerKind::Adamw);
    let out = root.join("auto");
    let res = rotadam_on_standin(&[
        "gpt2",
        "--config",
        cfg.to_str().unwrap(),
        "--device",
        "auto",
        "--steps",
        "1",
        "--out",
        out.to_str().unwrap(),
    ]);
    let log = String::from_utf8_lossy(&res.stderr);
    assert!(
        log.contains("device: auto -> cuda")
            && log.contains("self-check against the CPU passed")
            && log.contains("CPU emulator, not a GPU"),
        "{log}"
    );
    let res = rotadam_on_standin(&[
        "bench",
        "kernels",
        "--device",
        "cuda",
        "--model",
        "tiny",
        "--batch-size",
        "2",
        "--seq-len",
        "8",
        "--rotation-block",
        "16",
        "--reps",
        "1",
        "--threads",
        "2",
        "--json",
    ]);
    let j: serde_json::Value = serde_json::from_slice(&res.stdout).unwrap();
    assert!(j["device"].as_str().unwrap().contains("stand-in"), "{j}");
    assert_eq!(j["emulated"], true, "{j}");
    assert!(j["ops"].as_array().unwrap().len() >= 10, "{j}");
    std::fs::remove_dir_all(&root).unwrap();
}

fn cuda() -> CudaBackend {
    CudaBackend::cuda(0, Some(toolkit().clone()), false).unwrap()
}

#[test]
fn cauchy_kernels_through_the_cuda_executor_match_the_cpu() {
    in_standin(
        "cuda::standin::cauchy_kernels_through_the_cuda_executor_match_the_cpu",
        false,
        || {
            let be = cuda();
            super::emu_optim::check_cauchy_fill(be.exec());
            super::emu_optim::check_median_and_streaming(be.exec());
        },
    );
}

/// Hessian-vector products of diagnose's estimator (`Gpt2Hvp`, gradients on the backend, the basis in
/// f64) agree between the CUDA backend and the CPU backend in f32: the same central difference of the
/// same gradients, which differ by f32 rounding only.
#[test]
fn hessian_vector_products_through_the_cuda_executor_match_the_cpu() {
    in_standin(
        "cuda::standin::hessian_vector_products_through_the_cuda_executor_match_the_cpu",
        false,
        || {
            use rotadam::backend::cpu::CpuBackend;
            use rotadam::data::loader::Batch;
            use rotadam::diagnose::hvp::{Gpt2Hvp, InPlaceBasis};
            use rotadam::model::ParamTable;
            use rotadam::rotation::basis::Basis;
            let cfg = rotadam::device::check_model();
            let table = ParamTable::new(&cfg);
            let mut rng = rotadam::rng::Rng::new(4);
            let w = table.init(&cfg, &mut rng);
            let (b, t) = (2, 8);
            let tokens = |rng: &mut rotadam::rng::Rng| -> Vec<u32> {
                (0..b * t)
                    .map(|_| rng.below(cfg.vocab_size as u64) as u32)
                    .collect()
            };
            let batches = vec![Batch {
                inputs: tokens(&mut rng),
                targets: tokens(&mut rng),
                b,
                t,
            }];
            let cpu64 = CpuBackend::<f64>::new(1, false);
            let basis = || InPlaceBasis::new(Basis::identity(&cpu64, &table).unwrap());
            let mut on_cuda =
                Gpt2Hvp::on(cuda(), &cfg, w.clone(), batches.clone(), basis()).unwrap();
            let mut on_cpu =
                Gpt2Hvp::on(CpuBackend::<f32>::new(1, false), &cfg, w, batches, basis()).unwrap();
            let d = table.total;
            let v: Vec<f64> = (0..d).map(|_| rng.normal()).collect();
            let (mut hc, mut hg) = (vec![0.0; d], vec![0.0; d]);
            on_cuda.hvp(&v, &mut hg).unwrap();
            on_cpu.hvp(&v, &mut hc).unwrap();
            let scale = hc.iter().fold(0.0f64, |m, x| m.max(x.abs()));
            crate::util::assert_close_scaled("hvp cuda vs cpu", &hg, &hc, 1e-2);
            assert!(scale > 0.0);
        },
    );
}

/// Buffers of no elements (an optimizer without a second moment, an empty residual block) never reach the
/// driver, which refuses a zero-byte allocation: allocating, viewing, filling and reading them back work;
/// nor does a GEMM with k = 0.
#[test]
fn empty_buffers_never_reach_the_driver() {
    in_standin(
        "cuda::standin::empty_buffers_never_reach_the_driver",
        false,
        || {
            use rotadam::backend::Backend;
            let be = cuda();
            let mut empty = be.alloc(0).unwrap();
            be.fill(be.view_mut(&mut empty, 0..0), 1.0).unwrap();
            be.upload(&mut empty, &[]).unwrap();
            assert!(be.download(&empty).unwrap().is_empty());
            assert_eq!(be.sum_squares(be.view(&empty, 0..0)).unwrap(), 0.0);
            // a GEMM over an empty sum (k = 0) never reaches cuBLAS, which refuses a leading dimension of 0
            let c0: Vec<f32> = (0..6).map(|i| i as f32 + 0.5).collect();
            for accumulate in [false, true] {
                let [got] = super::on(&be, [&c0], [&[], &[]], |be, [c], [a, b]| {
                    be.gemm(c, a, b, 2, 3, 0, false, false, accumulate)
                });
                let want = if accumulate { c0.clone() } else { vec![0.0; 6] };
                assert_eq!(got, want, "k = 0, accumulate {accumulate}");
            }
        },
    );
}

/// Work queued before a device-to-host copy into pinned memory that still reads that memory runs before
/// the copy's poison lands: uploading from a pinned buffer and then downloading into it, in stream order
/// (on the same stream, or on another stream made to wait with an event), moves the data, not NaN.
#[test]
fn pinned_memory_reused_in_stream_order_keeps_its_data() {
    in_standin(
        "cuda::standin::pinned_memory_reused_in_stream_order_keeps_its_data",
        false,
        || {
            use cudarc::driver::result::{self, stream::StreamKind};
            use cudarc::driver::{sys, CudaContext};
            let ctx = CudaContext::new(0).unwrap();
            let n = 64usize;
            // SAFETY: `host` is pinned memory of n f32 (malloc_host) and `a`, `b` device buffers of n f32
            // (malloc_sync); every copy moves exactly n f32 between them. `pinned` is not read or written
            // while a copy that uses it is queued: only after cuCtxSynchronize (the stand-in runs queued work
            // on the calling thread, so nothing else touches it meanwhile). All handles are released here.
            unsafe {
                let host = result::malloc_host(n * 4, 0).unwrap() as *mut f32;
                let pinned = std::slice::from_raw_parts_mut(host, n);
                let (a, b) = (
                    result::malloc_sync(n * 4).unwrap(),
                    result::malloc_sync(n * 4).unwrap(),
                );
                let s1 = result::stream::create(StreamKind::NonBlocking).unwrap();
                let s2 = result::stream::create(StreamKind::NonBlocking).unwrap();
                let read = |d| {
                    let mut v = vec![0.0f32; n];
                    result::memcpy_dtoh_sync(&mut v, d).unwrap();
                    v
                };

                // one stream: upload 42 from the pinned buffer, then download it back into that buffer
                pinned.fill(42.0);
                result::memcpy_htod_async(a, &*pinned, s1).unwrap();
                result::memcpy_dtoh_async(&mut *pinned, a, s1).unwrap();
                result::ctx::synchronize().unwrap();
                assert_eq!(read(a), vec![42.0; n], "one stream: the upload");
                assert_eq!(*pinned, vec![42.0; n], "one stream: the download");

                // two streams: upload 7 into b on s1; s2 waits for it, then downloads a (42) into the buffer
                pinned.fill(7.0);
                let e = result::event::create(sys::CUevent_flags::CU_EVENT_DISABLE_TIMING).unwrap();
                result::memcpy_htod_async(b, &*pinned, s1).unwrap();
                result::event::record(e, s1).unwrap();
                result::stream::wait_event(s2, e, sys::CUevent_wait_flags::CU_EVENT_WAIT_DEFAULT)
                    .unwrap();
                result::memcpy_dtoh_async(&mut *pinned, a, s2).unwrap();
                result::ctx::synchronize().unwrap();
                assert_eq!(read(b), vec![7.0; n], "two streams: the upload");
                assert_eq!(*pinned, vec![42.0; n], "two streams: the download");

                result::event::destroy(e).unwrap();
                result::stream::destroy(s1).unwrap();
                result::stream::destroy(s2).unwrap();
                result::free_sync(a).unwrap();
                result::free_sync(b).unwrap();
                result::free_host(host.cast()).unwrap();
            }
            drop(ctx);
        },
    );
}

/// Memory of one executor never reaches another's launch: an emulator buffer given to a CUDA launch, or a
/// CUDA buffer to an emulator launch, or one CUDA executor's buffer to another's, is refused before the
/// launch (a device would read a host address as a device address, or another context's memory).
#[test]
fn memory_of_another_executor_is_refused() {
    in_standin(
        "cuda::standin::memory_of_another_executor_is_refused",
        false,
        || {
            use rotadam::backend::emu::EmuBackend;
            use rotadam::backend::kernel::transformer;
            let (gpu, other, emu) = (cuda(), cuda(), EmuBackend::emulated(1, false));
            let refused = |what: &str, f: &mut dyn FnMut()| {
                let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
                let msg = r.expect_err(what);
                let msg = msg.downcast_ref::<String>().cloned().unwrap_or_default();
                assert!(msg.contains("memory of another executor"), "{what}: {msg}");
            };
            let mut host = Mem::<_, f32>::zeros(emu.exec(), 4).unwrap();
            let mut dev = Mem::<_, f32>::zeros(gpu.exec(), 4).unwrap();
            refused("emulator memory on the device", &mut || {
                let _ = transformer::fill(gpu.exec(), host.dev_mut(), 1.0);
            });
            refused("device memory on the emulator", &mut || {
                let _ = transformer::fill(emu.exec(), dev.dev_mut(), 1.0);
            });
            refused("one CUDA executor's memory on another", &mut || {
                let _ = transformer::fill(other.exec(), dev.dev_mut(), 1.0);
            });
            // each on its own executor: fine
            transformer::fill(gpu.exec(), dev.dev_mut(), 2.0).unwrap();
            transformer::fill(emu.exec(), host.dev_mut(), 3.0).unwrap();
            assert_eq!(dev.download(gpu.exec()).unwrap(), vec![2.0; 4]);
            assert_eq!(host.download(emu.exec()).unwrap(), vec![3.0; 4]);
        },
    );
}

// ---- planted misuses: each must be reported by the stand-in ----------------------------------------------

/// Two kernel arguments swapped (a pointer where the length goes, the length where the pointer goes),
/// through the executor's raw launch (the typed launchers cannot express it): the launch fails, naming
/// the kernel, the parameter and the address.
#[test]
fn planted_swapped_kernel_arguments_are_reported() {
    in_standin(
        "cuda::standin::planted_swapped_kernel_arguments_are_reported",
        true,
        || {
            let be = cuda();
            let ex = be.exec();
            let x = Mem::<CudaExec, f32>::zeros(ex, 1000).unwrap();
            let (ptr, value, n) = (x.dev().addr(), 2.5f32, 1000i64);
            // fill(float* out, float value, long long n) with out and n swapped
            let args = [EmuArg::of(&n), EmuArg::of(&value), EmuArg::of(&ptr)];
            // SAFETY: deliberately wrong (the stand-in checks pointers before anything runs); no real
            // device is touched in this process.
            let err = unsafe { ex.launch(Kernel::Fill, Geometry::linear(1000, BLOCK), &[], &args) }
                .unwrap_err()
                .to_string();
            assert!(
                err.contains("kernel fill") && err.contains("parameter 0"),
                "{err}"
            );
            let (count, report) = standin::errors().unwrap();
            assert!(
                count >= 1 && report.contains("not in any live device allocation"),
                "{report}"
            );
            standin::clear_errors().unwrap();
        },
    );
}

/// A cuBLAS call whose leading dimension is too small for its matrix is refused with
/// CUBLAS_STATUS_INVALID_VALUE, and the report names the argument and the shapes.
#[test]
fn planted_wrong_leading_dimension_is_reported() {
    in_standin(
        "cuda::standin::planted_wrong_leading_dimension_is_reported",
        true,
        || {
            use cudarc::cublas::{result as blas, sys as blas_sys, CudaBlas};
            use cudarc::driver::{CudaContext, DevicePtr, DevicePtrMut};
            let ctx = CudaContext::new(0).unwrap();
            let stream = ctx.default_stream();
            let handle = CudaBlas::new(stream.clone()).unwrap();
            let (m, n, k) = (48usize, 64usize, 16usize);
            let a = stream.alloc_zeros::<f32>(m * k).unwrap();
            let b = stream.alloc_zeros::<f32>(k * n).unwrap();
            let mut c = stream.alloc_zeros::<f32>(m * n).unwrap();
            let (alpha, beta) = (1.0f32, 0.0f32);
            let op = blas_sys::cublasOperation_t::CUBLAS_OP_N;
            let (ap, _ga) = a.device_ptr(&stream);
            let (bp, _gb) = b.device_ptr(&stream);
            let (cp, _gc) = c.device_ptr_mut(&stream);
            // column-major m×k A needs lda ≥ m: pass m − 1
            // SAFETY: the buffers hold the elements the shapes name; lda is deliberately wrong, which
            // cuBLAS (here the stand-in) must refuse before reading anything.
            let r = unsafe {
                blas::sgemm(
                    *handle.handle(),
                    op,
                    op,
                    m as i32,
                    n as i32,
                    k as i32,
                    &alpha,
                    ap as *const f32,
                    m as i32 - 1,
                    bp as *const f32,
                    k as i32,
                    &beta,
                    cp as *mut f32,
                    m as i32,
                )
            };
            let err = format!("{:?}", r.unwrap_err());
            assert!(err.contains("INVALID_VALUE"), "{err}");
            let (count, report) = standin::errors().unwrap();
            assert!(count >= 1 && report.contains("lda"), "{report}");
            standin::clear_errors().unwrap();
        },
    );
}

/// A device-to-host copy into pinned memory is asynchronous: read before the stream is synchronized, the
/// host sees the stand-in's NaN poison instead of the data (a GPU would show stale bytes); after the
/// synchronize, the data.
#[test]
fn planted_read_without_a_synchronize_sees_poison() {
    in_standin(
        "cuda::standin::planted_read_without_a_synchronize_sees_poison",
        true,
        || {
            use cudarc::driver::{result, CudaContext, DevicePtr};
            let ctx = CudaContext::new(0).unwrap();
            let stream = ctx.default_stream();
            let n = 256usize;
            let data: Vec<f32> = (0..n).map(|i| i as f32 + 0.5).collect();
            let dev = stream.clone_htod(&data).unwrap();
            stream.synchronize().unwrap();
            let (dp, _g) = dev.device_ptr(&stream);
            // SAFETY: `host` is pinned memory of n f32 (malloc_host), freed at the end of this block, and the
            // async copy writes exactly n f32 into it; the early read races with nothing, because the
            // stand-in runs queued work only at a synchronization, on the calling thread (`dst` is not used
            // after the copy call).
            unsafe {
                let host = result::malloc_host(n * 4, 0).unwrap() as *mut f32;
                let dst = std::slice::from_raw_parts_mut(host, n);
                result::memcpy_dtoh_async(dst, dp, stream.cu_stream()).unwrap();
                // the planted bug: reading before the stream is synchronized
                let early: Vec<f32> = std::slice::from_raw_parts(host, n).to_vec();
                assert!(
                    early.iter().all(|v| v.is_nan()),
                    "a read before the synchronize saw data: {:?}",
                    &early[..4]
                );
                stream.synchronize().unwrap();
                let late = std::slice::from_raw_parts(host, n).to_vec();
                assert_eq!(late, data, "after the synchronize");
                result::free_host(host.cast()).unwrap();
            }
        },
    );
}

/// Device memory still allocated when its context is destroyed is reported, naming the allocation and
/// the call that destroyed the context.
#[test]
fn planted_leaked_buffer_is_reported() {
    in_standin(
        "cuda::standin::planted_leaked_buffer_is_reported",
        true,
        || {
            let ctx = cudarc::driver::CudaContext::new(0).unwrap();
            // SAFETY: a raw allocation, deliberately never freed (the planted leak).
            let _leak = unsafe { cudarc::driver::result::malloc_sync(4096) }.unwrap();
            drop(ctx);
            let (count, report) = standin::errors().unwrap();
            assert!(
                count >= 1 && report.contains("4096") && report.contains("still live"),
                "{report}"
            );
            standin::clear_errors().unwrap();
        },
    );
}

/// Allocations whose size cannot be mapped (rounded up to the alignment, whole pages and a guard page, it
/// overflows 64 bits) fail with CUDA_ERROR_OUT_OF_MEMORY, as on a GPU, naming the call and the size: pinned
/// memory, and device memory under a total (`ROTADAM_STANDIN_TOTAL_MEM`) that would allow them.
#[test]
fn planted_allocations_too_large_to_map_are_refused() {
    in_standin_with(
        "cuda::standin::planted_allocations_too_large_to_map_are_refused",
        true,
        &[("ROTADAM_STANDIN_TOTAL_MEM", &u64::MAX.to_string())],
        || {
            use cudarc::driver::{result, sys, CudaContext};
            let ctx = CudaContext::new(0).unwrap();
            // wrapping in each step of the mapping's size (the alignment, the page, the guard page with 4 KiB
            // pages), and one that does not wrap but cannot be mapped
            for size in [
                usize::MAX,
                usize::MAX - 255,
                usize::MAX - 5000,
                usize::MAX / 2,
            ] {
                // SAFETY: allocations the stand-in must refuse; one it grants (the stand-in's bug) is
                // freed at once, its memory never touched.
                let (host, dev) = unsafe {
                    let host = result::malloc_host(size, 0);
                    if let Ok(p) = host {
                        result::free_host(p).unwrap();
                    }
                    let dev = result::malloc_sync(size);
                    if let Ok(p) = dev {
                        result::free_sync(p).unwrap();
                    }
                    (host.map(drop), dev.map(drop))
                };
                for (call, r) in [("cuMemHostAlloc", host), ("cuMemAlloc_v2", dev)] {
                    assert_eq!(
                        r,
                        Err(result::DriverError(sys::CUresult::CUDA_ERROR_OUT_OF_MEMORY)),
                        "{call} of {size} bytes"
                    );
                    let (_, report) = standin::errors().unwrap();
                    assert!(
                        report.contains(&format!("{call}: {size} bytes")),
                        "{call} of {size} bytes: {report}"
                    );
                }
            }
            standin::clear_errors().unwrap();
            drop(ctx);
        },
    );
}

/// The stand-in's settings are read strictly at cuInit: a well-formed value takes effect; a malformed or
/// overflowing one fails cuInit with CUDA_ERROR_INVALID_VALUE, naming the variable, the value and what is
/// expected, instead of wrapping (16777216T is 2^64 bytes) or ignoring what follows the number.
#[test]
fn planted_malformed_settings_fail_cuinit() {
    const TEST: &str = "cuda::standin::planted_malformed_settings_fail_cuinit";
    const MEM: &str = "ROTADAM_STANDIN_TOTAL_MEM";
    const DEVICES: &str = "ROTADAM_STANDIN_DEVICES";
    in_standin_with(TEST, false, &[(MEM, "3G"), (DEVICES, "2")], || {
        use cudarc::driver::result;
        result::init().unwrap();
        assert_eq!(result::device::get_count().unwrap(), 2);
        // SAFETY: device 0 exists (two were asked for).
        assert_eq!(unsafe { result::device::total_mem(0) }.unwrap(), 3 << 30);
    });
    for (var, value) in [
        (MEM, "16777216T"),
        (MEM, "80GB"),
        (MEM, "-1"),
        (MEM, "0"),
        (DEVICES, "2x"),
        (DEVICES, "99999999999"),
    ] {
        in_standin_with(TEST, true, &[(var, value)], || {
            use cudarc::driver::{result, sys};
            let refused = Err(result::DriverError(sys::CUresult::CUDA_ERROR_INVALID_VALUE));
            assert_eq!(result::init(), refused, "{var}={value}");
            let (count, report) = standin::errors().unwrap();
            assert!(
                count == 1 && report.contains(&format!("cuInit: {var}={value:?}")),
                "{var}={value}: {report}"
            );
            // the failure stays: cuInit again fails alike, and a later call says why it cannot run
            assert_eq!(result::init(), refused, "{var}={value}, again");
            assert!(result::device::get_count().is_err());
            let (_, report) = standin::errors().unwrap();
            assert!(
                report.contains("cuDeviceGetCount: cuInit failed"),
                "{report}"
            );
            standin::clear_errors().unwrap();
        });
    }
}

/// The entry points the stand-in implements are exactly those `docs/cuda.md` lists (names and counts).
#[test]
fn the_standin_lists_its_entry_points() {
    in_standin(
        "cuda::standin::the_standin_lists_its_entry_points",
        false,
        || {
            let e = standin::entry_points().unwrap();
            let driver = e
                .iter()
                .filter(|n| n.starts_with("cu") && !n.starts_with("cublas"))
                .count();
            let blas = e.iter().filter(|n| n.starts_with("cublas")).count();
            println!("stand-in entry points: {driver} driver, {blas} cuBLAS");
            // the page's list: every `cu…` name between "**The entry points**" and "**What it cannot check.**"
            let page = std::fs::read_to_string(repo().join("docs/cuda.md")).unwrap();
            let from = page
                .find("**The entry points**")
                .expect("docs/cuda.md: the entry points");
            let to = from + page[from..].find("**What it cannot check.**").unwrap();
            let mut listed: Vec<&str> = page[from..to]
                .split('`')
                .skip(1)
                .step_by(2)
                .filter(|w| {
                    w.starts_with("cu") && w.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                })
                .collect();
            listed.sort_unstable();
            let mut exported: Vec<&str> = e.iter().map(String::as_str).collect();
            exported.sort_unstable();
            assert_eq!(
                listed, exported,
                "docs/cuda.md's list against the stand-in's exports"
            );
            let counts = format!("{driver} of the driver API and {blas} of cuBLAS");
            assert!(
                page[from..to].contains(&counts),
                "docs/cuda.md does not say {counts}"
            );
        },
    );
}
