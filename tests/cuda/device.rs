//! `--device` choices, and the paths that need a CUDA device: those run on a real GPU when this process
//! finds one, and under the driver + cuBLAS stand-in otherwise (`super::standin`), so they always run.

use rotadam::backend::cpu::CpuBackend;
use rotadam::backend::cuda::runtime::CudaRuntime;
use rotadam::backend::cuda::{nvrtc::Toolkit, probe};
use rotadam::backend::cuda::{CudaBackend, CudaExec};
use rotadam::backend::kernel::{transformer, Mem};
use rotadam::backend::Backend;
use rotadam::config::{DeviceKind, Precision};
use rotadam::device::{decide, resolve, Resolved};
use rotadam::kernels::Module;

/// None when a GPU is usable, else the reason (printed as the skip message).
fn no_gpu() -> Option<String> {
    probe().err()
}

#[test]
fn device_choice_never_panics_and_cuda_without_a_device_is_a_clear_error() {
    let (dev, line) = resolve(DeviceKind::Cpu, Precision::Fp32).unwrap();
    assert_eq!(
        (dev, line.as_str()),
        (Resolved::Cpu, "device: cpu (requested)")
    );
    match no_gpu() {
        Some(why) => {
            let (dev, auto) = resolve(DeviceKind::Auto, Precision::Fp32).unwrap();
            assert_eq!(dev, Resolved::Cpu);
            assert!(
                auto.starts_with("device: auto -> cpu (") && auto.contains(&why),
                "{auto}"
            );
            let err = resolve(DeviceKind::Cuda, Precision::Fp32)
                .unwrap_err()
                .to_string();
            assert!(
                err.contains("--device cuda: no usable CUDA device")
                    && err.contains(&why)
                    && err.contains("--device auto or --device cpu"),
                "{err}"
            );
            // opening a runtime or the backend without a device is an error, not a panic
            let e = CudaRuntime::new(0, None)
                .err()
                .expect("no device, yet a runtime opened")
                .to_string();
            assert!(e.contains("no usable CUDA device"), "{e}");
            let e = CudaBackend::cuda(0, None, false)
                .err()
                .expect("no device, yet a backend opened")
                .to_string();
            assert!(e.contains("no usable CUDA device"), "{e}");
            let e = rotadam::device::self_check(false).unwrap_err();
            assert!(e.contains("no usable CUDA device"), "{e}");
        }
        None => {
            let (dev, line) = resolve(DeviceKind::Cuda, Precision::Fp32).unwrap();
            assert_eq!(dev, Resolved::Cuda);
            assert!(line.starts_with("device: cuda ("), "{line}");
        }
    }
}

#[test]
fn auto_uses_a_gpu_only_when_its_self_check_passes() {
    let found = || Ok::<_, String>("1 CUDA device(s); device 0 is FakeGPU".to_string());
    let none = || Err::<String, _>("no CUDA driver library (libcuda) found".to_string());
    let passes = || Ok::<_, String>("loss 3.6 vs 3.6".to_string());
    let fails = || Err::<String, _>("loss 3.6 vs 9.9".to_string());
    let never = || -> Result<String, String> { panic!("must not be called") };
    let (dev, line) = decide(DeviceKind::Auto, Precision::Fp32, found, passes).unwrap();
    assert_eq!(dev, Resolved::Cuda);
    assert!(
        line.starts_with("device: auto -> cuda (1 CUDA device(s); device 0 is FakeGPU; self-check")
            && line.contains("passed: loss 3.6 vs 3.6")
            && line.contains("has not been run on a GPU"),
        "{line}"
    );
    let (dev, line) = decide(DeviceKind::Auto, Precision::Bf16, found, fails).unwrap();
    assert_eq!(dev, Resolved::Cpu);
    assert!(
        line.starts_with("device: auto -> cpu (1 CUDA device(s)")
            && line.contains("self-check against the CPU failed: loss 3.6 vs 9.9")
            && line.contains("--device cuda forces it"),
        "{line}"
    );
    let (dev, line) = decide(DeviceKind::Auto, Precision::Fp32, none, never).unwrap();
    assert_eq!(dev, Resolved::Cpu);
    assert_eq!(
        line,
        "device: auto -> cpu (no CUDA driver library (libcuda) found)"
    );
    // fp64 stays on the CPU without probing; --device cuda with fp64 is an error naming the field
    let (dev, line) = decide(DeviceKind::Auto, Precision::Fp64, never, never).unwrap();
    assert_eq!(
        (dev, line.as_str()),
        (
            Resolved::Cpu,
            "device: auto -> cpu (fp64 runs on the CPU only)"
        )
    );
    let err = decide(DeviceKind::Cuda, Precision::Fp64, never, never).unwrap_err();
    assert!(
        err.to_string().contains("precision") && err.to_string().contains("fp64"),
        "{err}"
    );
    // --device cuda skips the self-check (its failures should show), and needs a device
    let (dev, _) = decide(DeviceKind::Cuda, Precision::Fp32, found, never).unwrap();
    assert_eq!(dev, Resolved::Cuda);
    let err = decide(DeviceKind::Cuda, Precision::Fp32, none, never).unwrap_err();
    assert!(err.to_string().contains("no usable CUDA device"), "{err}");
}

/// Runs `body` on the GPU this process finds, or under the stand-in when there is none.
fn on_gpu_or_standin(test: &str, body: impl FnOnce()) {
    if std::env::var_os("ROTADAM_STANDIN_CHILD").is_none() && no_gpu().is_none() {
        eprintln!("{test}: on a real GPU");
        body();
    } else {
        super::standin::in_standin(test, false, body);
    }
}

#[test]
fn device_self_check_passes_on_the_cuda_backend_in_fp32_and_bf16() {
    on_gpu_or_standin(
        "cuda::device::device_self_check_passes_on_the_cuda_backend_in_fp32_and_bf16",
        || {
            // The comparison `--device auto` runs before using a GPU (the tolerances of
            // tests/cuda/step.rs).
            for bf16 in [false, true] {
                let r = rotadam::device::self_check(bf16);
                assert!(r.is_ok(), "bf16={bf16}: {r:?}");
            }
        },
    );
}

#[test]
fn device_every_kernel_loads_and_fill_and_layernorm_match_the_cpu() {
    on_gpu_or_standin(
        "cuda::device::device_every_kernel_loads_and_fill_and_layernorm_match_the_cpu",
        every_kernel_loads_and_fill_and_layernorm_match_the_cpu,
    );
}

fn every_kernel_loads_and_fill_and_layernorm_match_the_cpu() {
    let tk = Toolkit::locate(&std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".cuda"));
    // every module loads on the device, and every kernel in it is found by name
    {
        let rt = CudaRuntime::new(0, tk.clone()).unwrap();
        for &m in Module::ALL {
            for &k in m.kernels() {
                rt.function(k).unwrap_or_else(|e| panic!("{e}"));
            }
        }
    }
    // the launches go through the generated typed launchers (argument lists from the kernels' signatures)
    let be = CudaBackend::cuda(0, tk, false).unwrap();
    // fill
    let n = 1000usize;
    let mut x = Mem::<CudaExec, f32>::zeros(be.exec(), n).unwrap();
    transformer::fill(be.exec(), x.dev_mut(), 2.5).unwrap();
    let got = x.download(be.exec()).unwrap();
    assert!(got.iter().all(|&y| y == 2.5), "fill: {got:?}");
    // layernorm_forward (no bias) vs the CPU backend
    let (rows, c) = (37usize, 100usize);
    let inp: Vec<f32> = (0..rows * c)
        .map(|i| ((i * 37 % 101) as f32 - 50.0) / 25.0)
        .collect();
    let w: Vec<f32> = (0..c).map(|i| 1.0 + i as f32 / 100.0).collect();
    let upload = |host: &[f32]| {
        let mut buf = be.alloc(host.len()).unwrap();
        be.upload(&mut buf, host).unwrap();
        buf
    };
    let (di, dw) = (upload(&inp), upload(&w));
    let (mut dout, mut dmean, mut drstd) = (
        be.alloc(rows * c).unwrap(),
        be.alloc(rows).unwrap(),
        be.alloc(rows).unwrap(),
    );
    be.layernorm_forward(
        be.view_mut(&mut dout, 0..rows * c),
        be.view_mut(&mut dmean, 0..rows),
        be.view_mut(&mut drstd, 0..rows),
        be.view(&di, 0..rows * c),
        be.view(&dw, 0..c),
        None,
        rows,
        c,
    )
    .unwrap();
    let (mut want, mut m, mut r) = (vec![0f32; rows * c], vec![0f32; rows], vec![0f32; rows]);
    CpuBackend::<f32>::new(1, false)
        .layernorm_forward(&mut want, &mut m, &mut r, &inp, &w, None, rows, c)
        .unwrap();
    for (what, got, want) in [
        ("out", be.download(&dout).unwrap(), want),
        ("mean", be.download(&dmean).unwrap(), m),
        ("rstd", be.download(&drstd).unwrap(), r),
    ] {
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            assert!(
                (g - w).abs() <= 1e-5 * (1.0 + w.abs()),
                "layernorm_forward {what}[{i}]: gpu {g} cpu {w}"
            );
        }
    }
}

#[test]
fn kernel_bench_runs_on_the_cpu_and_reports_every_family() {
    use rotadam::bench::kernels::{bench_ops, KernelOptions};
    let o = KernelOptions {
        model: "tiny".into(),
        batch_size: 2,
        seq_len: 8,
        rotation_block: 7,
        threads: 1,
        reps: 1,
        device: DeviceKind::Cpu,
        json: true,
    };
    let r = bench_ops(&CpuBackend::<f32>::new(1, false), &o, 10.0, false).unwrap();
    assert!(r.gemm_peak_gflops > 0.0);
    for family in [
        "layernorm",
        "attention",
        "gelu",
        "crossentropy",
        "adamw",
        "sum_squares",
        "rotate",
        "rotated AdamW",
    ] {
        let op = r
            .ops
            .iter()
            .find(|op| op.op.starts_with(family))
            .unwrap_or_else(|| panic!("no {family} row"));
        assert!(
            op.ms > 0.0 && op.rate.is_finite() && op.fraction_of_peak > 0.0,
            "{op:?}"
        );
    }
    assert!(r.ms_step > 0.0 && r.rotated_adamw_fraction_of_step > 0.0);
    // and the emulated kernels run through the same benchmark (GEMM on the CPU)
    let r = bench_ops(
        &rotadam::backend::emu::EmuBackend::emulated(1, false),
        &o,
        10.0,
        true,
    )
    .unwrap();
    assert!(r.device.starts_with("cuda-emulator"));
    assert!(r.ms_step > 0.0 && r.rotated_adamw_fraction_of_step > 0.0);
}
