//! NVRTC compiles every kernel module for compute_80 and compute_90, and ptxas (run by NVRTC for sm_90
//! with `--ptxas-options=-v`) reports registers and spills; a spill in a hot kernel (rotation, adamw,
//! attention, layernorm) fails the test. No GPU and no CUDA installation are needed: the first run fetches
//! the PyPI wheels `nvidia-cuda-nvrtc-cu12==12.9.86` (libnvrtc) and `nvidia-cuda-runtime-cu12==12.9.79`
//! (`cuda_bf16.h`) into the git-ignored `.cuda/` directory (≈93 MB download; a lock file serialises
//! concurrent test processes; installed into a temporary directory, then renamed). Set `ROTADAM_CUDA_HOME`
//! to an installed CUDA 12 toolkit to use it instead.

use rotadam::backend::cuda::nvrtc::{self, parse_ptxas_report, Toolkit, CUDA_HOME_VAR, WHEELS};
use rotadam::kernels::Module;
use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;
use std::time::Instant;

/// Kernel modules whose kernels must not spill (the per-step hot path).
const HOT: [&str; 4] = ["rotation", "adamw", "attention", "layernorm"];

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The toolkit, fetching the wheels first if needed (module docs); NVRTC loaded.
pub fn toolkit() -> &'static Toolkit {
    static TK: OnceLock<Result<Toolkit, String>> = OnceLock::new();
    TK.get_or_init(|| {
        let tk = locate_or_fetch()?;
        tk.load().map_err(|e| e.to_string())?;
        Ok(tk)
    })
    .as_ref()
    .unwrap_or_else(|e| panic!("{e}"))
}

fn locate_or_fetch() -> Result<Toolkit, String> {
    let dir = repo().join(".cuda");
    if let Some(tk) = Toolkit::locate(&dir) {
        return Ok(tk);
    }
    let lock_path = repo().join(".cuda.lock");
    let lock =
        std::fs::File::create(&lock_path).map_err(|e| format!("{}: {e}", lock_path.display()))?;
    lock.lock()
        .map_err(|e| format!("locking {}: {e}", lock_path.display()))?;
    if let Some(tk) = Toolkit::from_wheels(&dir) {
        return Ok(tk); // another test process fetched them while we waited
    }
    let tmp = repo().join(format!(".cuda.tmp-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    let t0 = Instant::now();
    let out = Command::new("python3")
        .args(["-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-deps", "--target"])
        .arg(&tmp)
        .args(WHEELS)
        .output()
        .map_err(|e| format!("fetching the NVRTC wheels: cannot run python3 -m pip: {e} (install Python 3 with pip, or set {CUDA_HOME_VAR} to a CUDA toolkit)"))?;
    if !out.status.success() {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(format!(
            "fetching the NVRTC wheels failed: `python3 -m pip install --target {} {}` exited with {}:\n{}\
             (needs network access to PyPI; or set {CUDA_HOME_VAR} to a CUDA toolkit)",
            tmp.display(),
            WHEELS.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    std::fs::rename(&tmp, &dir)
        .map_err(|e| format!("renaming {} to {}: {e}", tmp.display(), dir.display()))?;
    eprintln!(
        "fetched {} into {} in {:.1} s",
        WHEELS.join(", "),
        dir.display(),
        t0.elapsed().as_secs_f64()
    );
    Toolkit::from_wheels(&dir)
        .ok_or_else(|| format!("{}: the wheels did not unpack as expected", dir.display()))
}

#[test]
fn every_module_compiles_with_nvrtc_for_compute_80_and_compute_90() {
    let tk = toolkit();
    let t0 = Instant::now();
    for &m in Module::ALL {
        for arch in ["compute_80", "compute_90"] {
            let out = nvrtc::compile(m, arch, tk, &[]).unwrap_or_else(|e| panic!("{e}"));
            let target = format!(".target sm_{}", &arch["compute_".len()..]);
            assert!(
                out.ptx.contains(&target),
                "{}: PTX for {arch} lacks `{target}`",
                m.name()
            );
            for &k in m.kernels() {
                assert!(
                    out.ptx.contains(&format!(".entry {}(", k.name())),
                    "{}: PTX for {arch} has no entry `{}`",
                    m.name(),
                    k.name()
                );
            }
        }
    }
    eprintln!(
        "NVRTC: {} modules × 2 architectures in {:.2} s",
        Module::ALL.len(),
        t0.elapsed().as_secs_f64()
    );
}

#[test]
fn ptxas_reports_registers_and_no_spills_in_the_hot_kernels() {
    let tk = toolkit();
    let t0 = Instant::now();
    let mut table = String::from(
        "kernel                         module        regs  stack  spill st/ld  smem\n",
    );
    let mut spills = Vec::new();
    for &m in Module::ALL {
        let out = nvrtc::compile(m, "sm_90", tk, &["--ptxas-options=-v"])
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(!out.cubin.is_empty(), "{}: empty cubin", m.name());
        let report = parse_ptxas_report(&out.log);
        for &k in m.kernels() {
            let r = report
                .iter()
                .find(|r| r.name == k.name())
                .unwrap_or_else(|| {
                    panic!(
                        "{}: ptxas reported nothing for {}:\n{}",
                        m.name(),
                        k.name(),
                        out.log
                    )
                });
            assert!(
                r.registers > 0,
                "{}: no register count parsed:\n{}",
                k.name(),
                out.log
            );
            table.push_str(&format!(
                "{:<30} {:<13} {:>4} {:>6} {:>6}/{:<5} {:>5}\n",
                r.name,
                m.name(),
                r.registers,
                r.stack_frame_bytes,
                r.spill_store_bytes,
                r.spill_load_bytes,
                r.smem_bytes
            ));
            if HOT.contains(&m.name()) && (r.spill_store_bytes > 0 || r.spill_load_bytes > 0) {
                spills.push(format!(
                    "{} ({}): {} B spill stores, {} B spill loads",
                    r.name,
                    m.name(),
                    r.spill_store_bytes,
                    r.spill_load_bytes
                ));
            }
        }
    }
    eprintln!(
        "ptxas -v, sm_90 (NVRTC 12.9), in {:.2} s:\n{table}",
        t0.elapsed().as_secs_f64()
    );
    assert!(
        spills.is_empty(),
        "spills in hot kernels:\n{}",
        spills.join("\n")
    );
}

#[test]
fn a_compile_error_names_the_file_and_shows_the_log() {
    let tk = toolkit();
    let err = nvrtc::compile_source(
        "kernels/broken.cu",
        "extern \"C\" __global__ void k(float* x) { x[0] = y; }",
        "compute_90",
        tk,
        &[],
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("kernels/broken.cu") && err.contains("identifier \"y\" is undefined"),
        "{err}"
    );
}

#[test]
fn ptxas_report_parser_reads_every_field() {
    // a report as NVRTC 12.9 prints it
    let log = "ptxas info    : Compiling entry function 'sgemm_tiled' for 'sm_90'\n\
               ptxas info    : Function properties for sgemm_tiled\n    \
               8 bytes stack frame, 4 bytes spill stores, 12 bytes spill loads\n\
               ptxas info    : Used 32 registers, used 1 barriers, 8448 bytes smem\n\
               ptxas info    : Compiling entry function 'adam_bf16' for 'sm_90'\n\
               ptxas info    : Used 20 registers, used 0 barriers\n";
    let r = parse_ptxas_report(log);
    assert_eq!(r.len(), 2);
    assert_eq!(
        (
            r[0].name.as_str(),
            r[0].registers,
            r[0].stack_frame_bytes,
            r[0].spill_store_bytes,
            r[0].spill_load_bytes,
            r[0].smem_bytes
        ),
        ("sgemm_tiled", 32, 8, 4, 12, 8448)
    );
    assert_eq!(
        (r[1].name.as_str(), r[1].registers, r[1].smem_bytes),
        ("adam_bf16", 20, 0)
    );
}
