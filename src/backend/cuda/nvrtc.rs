//! NVRTC: compiling the kernel modules at run time, without a GPU and without a CUDA installation.
//!
//! [`Toolkit::find`] finds `libnvrtc.so` and the CUDA headers (`cuda_bf16.h`): `ROTADAM_CUDA_HOME` (an
//! installed toolkit: `lib64/` or `lib/`, `include/`), else the PyPI wheels ([`WHEELS`]) unpacked in
//! `.cuda/` (`nvidia/cuda_nvrtc/lib/libnvrtc.so.12`, `nvidia/cuda_runtime/include`; `docs/cuda.md`), else
//! whatever the dynamic loader finds. [`Toolkit::load`] `dlopen`s the library by absolute path first, so cudarc's
//! later lookup by bare name (`libnvrtc.so.12`) finds it already loaded — no `LD_LIBRARY_PATH` needed —
//! and checks `is_culib_present()` (cudarc panics on a missing library otherwise).
//! [`compile`] returns PTX (`compute_XX`) or a cubin (`sm_XX`, with ptxas's `-v` report in the log);
//! [`parse_ptxas_report`] reads registers, spills and shared memory per kernel from that report.
//! Compile errors carry the NVRTC log and the module's file name.
//!
//! Floating-point contraction: every module is compiled with NVRTC's default `--fmad=true` (nvcc's PTX
//! too, `build/main.rs`), so the device compiler may fuse a product and the sum it feeds into one FMA,
//! one rounding instead of two. The GEMM kernels want that, so it stays on for every module, the
//! optimizer formulas of `kernels/adamw.cu` included: `β₁m + (1−β₁)g` may become `fma(β₁, m, (1−β₁)·g)`.
//! So on a GPU the optimizer kernels agree with `CpuBackend<f32>` to f32 rounding (an ulp or so per
//! formula and step), not bit for bit. The bit-for-bit comparisons of those kernels with the CPU backend
//! (`docs/cuda.md`, "What runs in `cargo test`") run on the emulator, whose host C++ build is compiled
//! with `-ffp-contract=off` and so rounds every product and sum as the CPU backend's Rust does (Rust
//! never contracts, and the optimizer formulas there use no `mul_add`).

use crate::error::{Error, Result};
use crate::kernels::Module;
use std::ffi::CString;
use std::path::{Path, PathBuf};

/// Where NVRTC and the CUDA headers come from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Toolkit {
    /// `libnvrtc.so*` to preload by absolute path (None: rely on the dynamic loader's search path).
    pub nvrtc_lib: Option<PathBuf>,
    /// Include directories passed to NVRTC (`--include-path`).
    pub include_dirs: Vec<PathBuf>,
}

/// The environment variable naming an installed CUDA toolkit to use instead of the wheels.
pub const CUDA_HOME_VAR: &str = "ROTADAM_CUDA_HOME";

/// The PyPI wheels that stand in for a toolkit: libnvrtc and the headers (`cuda_bf16.h`) it compiles
/// against (`docs/cuda.md`).
pub const WHEELS: [&str; 2] = [
    "nvidia-cuda-nvrtc-cu12==12.9.86",
    "nvidia-cuda-runtime-cu12==12.9.79",
];

impl Toolkit {
    /// The toolkit under `ROTADAM_CUDA_HOME` if set, else the wheels under `wheel_dir` (normally
    /// `<repo>/.cuda`) if unpacked there, else None.
    pub fn locate(wheel_dir: &Path) -> Option<Toolkit> {
        if let Some(home) = std::env::var_os(CUDA_HOME_VAR) {
            return Some(Self::from_toolkit(Path::new(&home)));
        }
        Self::from_wheels(wheel_dir)
    }

    /// What the binary uses: [`Toolkit::locate`] with the wheels in `./.cuda`, else in the `.cuda/` of
    /// the source tree it was built from (where `cargo test` fetches them), else None (the dynamic
    /// loader's search path).
    pub fn find() -> Option<Toolkit> {
        Self::locate(Path::new(".cuda"))
            .or_else(|| Self::from_wheels(&Path::new(env!("CARGO_MANIFEST_DIR")).join(".cuda")))
    }

    /// An installed toolkit at `home`: `lib64/libnvrtc.so` (or `lib/`), `include/`.
    pub fn from_toolkit(home: &Path) -> Toolkit {
        let lib = ["lib64", "lib"]
            .iter()
            .flat_map(|d| ["libnvrtc.so", "libnvrtc.so.12"].map(|f| home.join(d).join(f)))
            .find(|p| p.is_file());
        Toolkit {
            nvrtc_lib: lib,
            include_dirs: vec![home.join("include")],
        }
    }

    /// The PyPI wheels `nvidia-cuda-nvrtc-cu12` and `nvidia-cuda-runtime-cu12` installed with
    /// `pip install --target <dir>`; None when they are not there.
    pub fn from_wheels(dir: &Path) -> Option<Toolkit> {
        let lib = dir.join("nvidia/cuda_nvrtc/lib/libnvrtc.so.12");
        let include = dir.join("nvidia/cuda_runtime/include");
        (lib.is_file() && include.join("cuda_bf16.h").is_file()).then(|| Toolkit {
            nvrtc_lib: Some(lib),
            include_dirs: vec![include],
        })
    }

    /// Loads libnvrtc (module docs). Idempotent.
    pub fn load(&self) -> Result<()> {
        if let Some(lib) = &self.nvrtc_lib {
            // SAFETY: loading NVRTC runs only its (trusted, vendor) initialisers; the handle is leaked on
            // purpose so the library stays loaded for cudarc's lookups by name.
            let handle = unsafe { libloading::Library::new(lib) }.map_err(|e| {
                Error::Device(format!("cannot load NVRTC from {}: {e}", lib.display()))
            })?;
            std::mem::forget(handle);
        }
        // SAFETY: only tries to dlopen the library by name and reports whether it succeeded.
        if unsafe { cudarc::nvrtc::sys::is_culib_present() } {
            Ok(())
        } else {
            Err(Error::Device(format!(
                "no NVRTC library found: set {CUDA_HOME_VAR} to a CUDA 12 toolkit, or fetch the \
                 wheels once with `python3 -m pip install --no-deps --target .cuda {}` in the \
                 repository (`cargo test` does it too)",
                WHEELS.join(" ")
            )))
        }
    }
}

/// The output of one NVRTC compile.
#[derive(Clone, Debug)]
pub struct Compiled {
    /// PTX text (for a `compute_XX` target) — empty for an `sm_XX` target.
    pub ptx: String,
    /// The cubin (for an `sm_XX` target) — empty for a `compute_XX` target.
    pub cubin: Vec<u8>,
    /// NVRTC's log (for `sm_XX` with `--ptxas-options=-v`, ptxas's resource report).
    pub log: String,
}

/// Compiles `module`'s flattened source for `arch` (`compute_80`, `compute_90`: PTX; `sm_90`: a cubin)
/// with `--std=c++17` plus `extra` options. NVRTC must be loaded ([`Toolkit::load`]).
pub fn compile(module: Module, arch: &str, toolkit: &Toolkit, extra: &[&str]) -> Result<Compiled> {
    compile_source(
        &format!("kernels/{}.cu", module.name()),
        module.source(),
        arch,
        toolkit,
        extra,
    )
}

/// An NVRTC program, destroyed when dropped, so that every exit of [`compile_source`] (errors included)
/// frees it; [`Program::destroy`] does it on the success path and reports a failure.
struct Program(Option<cudarc::nvrtc::sys::nvrtcProgram>);

impl Program {
    fn get(&self) -> cudarc::nvrtc::sys::nvrtcProgram {
        self.0.expect("NVRTC program used after destroy")
    }

    fn destroy(mut self) -> std::result::Result<(), cudarc::nvrtc::result::NvrtcError> {
        match self.0.take() {
            // SAFETY: the program came from `create_program` and `take` leaves nothing to destroy again.
            Some(prog) => unsafe { cudarc::nvrtc::result::destroy_program(prog) },
            None => Ok(()),
        }
    }
}

impl Drop for Program {
    fn drop(&mut self) {
        if let Some(prog) = self.0.take() {
            // SAFETY: as in `destroy`: created by `create_program`, destroyed exactly once. A failure here
            // is on an error path already being reported, so it is not reported again.
            let _ = unsafe { cudarc::nvrtc::result::destroy_program(prog) };
        }
    }
}

/// [`compile`] for any source; `file` names it in errors and in NVRTC's log.
pub fn compile_source(
    file: &str,
    source: &str,
    arch: &str,
    toolkit: &Toolkit,
    extra: &[&str],
) -> Result<Compiled> {
    use cudarc::nvrtc::{result, sys};
    let file = file.to_string();
    let src = CString::new(source)
        .map_err(|_| Error::Device(format!("{file}: source contains a NUL byte")))?;
    let name = CString::new(file.clone()).unwrap();
    let mut opts = vec![format!("--gpu-architecture={arch}"), "--std=c++17".into()];
    for d in &toolkit.include_dirs {
        opts.push(format!("--include-path={}", d.display()));
    }
    opts.extend(extra.iter().map(|s| s.to_string()));
    let err =
        |what: &str, e: result::NvrtcError| Error::Device(format!("NVRTC {what} of {file}: {e:?}"));
    let program = Program(Some(
        result::create_program(&src, Some(&name)).map_err(|e| err("create", e))?,
    ));
    let prog = program.get();
    // SAFETY: `prog` was just created from `src`/`name`, which outlive it; `program` destroys it exactly
    // once, after its last use (on every return: `Program`'s Drop); buffers passed to the getters have
    // the sizes NVRTC reported.
    unsafe {
        let compiled = result::compile_program(prog, &opts);
        let log = result::get_program_log(prog)
            .map(|l| {
                let bytes: Vec<u8> = l
                    .iter()
                    .take_while(|&&c| c != 0)
                    .map(|&c| c as u8)
                    .collect();
                String::from_utf8_lossy(&bytes).into_owned()
            })
            .unwrap_or_default();
        if let Err(e) = compiled {
            return Err(Error::Device(format!(
                "NVRTC failed to compile {file} for {arch} ({e:?}):\n{log}"
            )));
        }
        let mut out = Compiled {
            ptx: String::new(),
            cubin: Vec::new(),
            log,
        };
        if arch.starts_with("sm_") {
            let mut size = 0usize;
            sys::nvrtcGetCUBINSize(prog, &mut size)
                .result()
                .map_err(|e| err("cubin size", e))?;
            let mut buf = vec![0 as std::ffi::c_char; size];
            sys::nvrtcGetCUBIN(prog, buf.as_mut_ptr())
                .result()
                .map_err(|e| err("cubin", e))?;
            out.cubin = buf.into_iter().map(|c| c as u8).collect();
        } else {
            let ptx = result::get_ptx(prog).map_err(|e| err("get_ptx", e))?;
            let bytes: Vec<u8> = ptx
                .iter()
                .take_while(|&&c| c != 0)
                .map(|&c| c as u8)
                .collect();
            out.ptx = String::from_utf8_lossy(&bytes).into_owned();
        }
        program.destroy().map_err(|e| err("destroy", e))?;
        Ok(out)
    }
}

/// One kernel's resources as ptxas reports them (`-v`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KernelResources {
    pub name: String,
    pub registers: u32,
    pub stack_frame_bytes: u32,
    pub spill_store_bytes: u32,
    pub spill_load_bytes: u32,
    pub smem_bytes: u32,
}

/// Reads ptxas's `-v` report: for every "Compiling entry function 'NAME'" the following
/// "N bytes stack frame, N bytes spill stores, N bytes spill loads" and "Used N registers, …, N bytes smem"
/// lines.
pub fn parse_ptxas_report(log: &str) -> Vec<KernelResources> {
    let num_before = |line: &str, key: &str| -> Option<u32> {
        let i = line.find(key)?;
        line[..i].split_whitespace().last()?.parse().ok()
    };
    let mut out: Vec<KernelResources> = Vec::new();
    for line in log.lines() {
        if let Some(rest) = line.split("Compiling entry function '").nth(1) {
            let name = rest.split('\'').next().unwrap_or_default().to_string();
            out.push(KernelResources {
                name,
                ..Default::default()
            });
            continue;
        }
        let Some(k) = out.last_mut() else { continue };
        if line.contains("bytes stack frame") {
            k.stack_frame_bytes = num_before(line, "bytes stack frame").unwrap_or(0);
            k.spill_store_bytes = num_before(line, "bytes spill stores").unwrap_or(0);
            k.spill_load_bytes = num_before(line, "bytes spill loads").unwrap_or(0);
        } else if line.contains("Used") && line.contains("registers") {
            k.registers = num_before(line, "registers").unwrap_or(0);
            k.smem_bytes = num_before(line, "bytes smem").unwrap_or(0);
        }
    }
    out
}
