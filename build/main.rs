//! Build script: the CUDA kernels in `kernels/*.cu`, compiled three ways from one source
//! (`docs/architecture.md`, decision 6). Everything generated goes to `OUT_DIR`; nothing generated is
//! committed; the build never needs CUDA.
//!
//! 1. [`sources`]: every `kernels/*.cu` flattened (local `#include "..."` inlined, each header once) into
//!    `OUT_DIR/kernels/<module>.cu` — NVRTC gets no headers from us at run time — and its kernels parsed
//!    with their parameter lists.
//! 2. If `nvcc` is on PATH (or `ROTADAM_NVCC` names one), every flattened module is compiled to PTX for
//!    compute_80 (`OUT_DIR/ptx/<module>.ptx`); a compile error fails the build with nvcc's message. Without
//!    nvcc the CUDA backend compiles the flattened sources with NVRTC at start-up. Both keep their default
//!    `--fmad=true` for every module (the GEMM kernels want FMA), so on a GPU the optimizer kernels may
//!    round differently from the CPU backend: agreement to f32 rounding, not bit for bit (the module docs
//!    of `src/backend/cuda/nvrtc.rs`).
//! 3. [`emulator`]: the same sources compiled by the host C++ compiler with `kernels/emu/cuda_emu.h`
//!    forced in front: the static library of the CPU emulator, and from the same objects the CUDA driver
//!    and cuBLAS stand-in (`kernels/standin`) in `OUT_DIR/standin`. Compiled with `-ffp-contract=off`,
//!    so the emulated optimizer kernels equal the CPU backend bit for bit whatever the host's FMA support.
//! 4. [`codegen`]: `OUT_DIR/kernels_gen.rs` (the typed index of modules and kernels) and
//!    `OUT_DIR/launchers.rs` (one typed launch function per kernel, from its signature).

mod codegen;
mod emulator;
mod sources;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap());
    let out = PathBuf::from(std::env::var("OUT_DIR").unwrap());
    let kdir = root.join("kernels");
    println!("cargo:rerun-if-changed=kernels");
    println!("cargo:rerun-if-changed=build");
    println!("cargo:rerun-if-env-changed=ROTADAM_NVCC");

    let flat_dir = out.join("kernels");
    let emu_dir = out.join("emu");
    fs::create_dir_all(&flat_dir).unwrap();
    fs::create_dir_all(&emu_dir).unwrap();
    let modules = sources::modules(&kdir, &flat_dir);
    let ptx = nvcc_ptx(&out, &modules);
    let (objects, fixtures) = emulator::emulator(&kdir, &emu_dir, &modules);
    emulator::standin(&out, &kdir, &modules, &objects);

    let structs: Vec<sources::CStruct> = modules
        .iter()
        .flat_map(|m| sources::structs(&fs::read_to_string(&m.flat).unwrap()))
        .fold(Vec::new(), |mut all, s| {
            if !all.iter().any(|a: &sources::CStruct| a.name == s.name) {
                all.push(s);
            }
            all
        });
    write_if_changed(
        &out.join("kernels_gen.rs"),
        &codegen::index(&modules, &ptx, &fixtures),
    );
    write_if_changed(
        &out.join("launchers.rs"),
        &codegen::launchers(&modules, &structs),
    );
}

/// PTX of every module by nvcc, when nvcc is present (module docs, step 2).
fn nvcc_ptx(out: &Path, modules: &[sources::Module]) -> Vec<(String, PathBuf)> {
    let nvcc = std::env::var("ROTADAM_NVCC")
        .ok()
        .map(PathBuf::from)
        .or_else(|| find_on_path("nvcc"));
    let Some(nvcc) = nvcc else {
        return Vec::new();
    };
    let ptx_dir = out.join("ptx");
    fs::create_dir_all(&ptx_dir).unwrap();
    let mut ptx = Vec::new();
    for m in modules {
        let dst = ptx_dir.join(format!("{}.ptx", m.stem));
        let res = Command::new(&nvcc)
            .args(["-ptx", "-arch=compute_80", "-std=c++17", "-o"])
            .arg(&dst)
            .arg(&m.flat)
            .output()
            .unwrap_or_else(|e| panic!("running {}: {e}", nvcc.display()));
        if !res.status.success() {
            panic!(
                "nvcc failed on kernels/{}.cu (flattened: {}):\n{}{}",
                m.stem,
                m.flat.display(),
                String::from_utf8_lossy(&res.stdout),
                String::from_utf8_lossy(&res.stderr)
            );
        }
        ptx.push((m.stem.clone(), dst));
    }
    ptx
}

fn find_on_path(exe: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(exe))
        .find(|p| p.is_file())
}

/// Writes only when the contents change, so an unchanged kernel does not rebuild dependants.
fn write_if_changed(path: &Path, contents: &str) {
    if fs::read_to_string(path).ok().as_deref() != Some(contents) {
        fs::write(path, contents).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
    }
}
