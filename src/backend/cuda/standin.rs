//! The CUDA driver + cuBLAS stand-in (`kernels/standin`, built with the crate into
//! `ROTADAM_STANDIN_DIR`; `docs/cuda.md`). With `ROTADAM_CUDA_STANDIN=1` — or the path of a directory
//! holding the two libraries — its `libcuda.so` and `libcublas.so` are loaded before cudarc's first call
//! (and its `libnccl.so.2`, beside them, by [`super::nccl`] when that is first used).
//! Their SONAMEs are exactly `libcuda.so` and `libcublas.so`, so cudarc's own `dlopen` of those names
//! finds the loaded stand-ins instead of NVIDIA's libraries, and the CUDA backend's host code runs
//! unchanged with the kernels executed by the emulator.

use crate::error::{Error, Result};
use std::ffi::{c_char, CStr};
use std::path::PathBuf;
use std::sync::OnceLock;

/// The environment variable that turns the stand-in on.
pub const ENV: &str = "ROTADAM_CUDA_STANDIN";

/// Where the build put the libraries.
pub const BUILT_DIR: &str = env!("ROTADAM_STANDIN_DIR");

/// The loaded stand-in driver (kept loaded for the process).
struct Loaded {
    dir: PathBuf,
    driver: libloading::Library,
    _blas: libloading::Library,
}

static LOADED: OnceLock<std::result::Result<Option<Loaded>, String>> = OnceLock::new();

/// The directory the environment names, if the stand-in is asked for.
fn requested() -> Option<PathBuf> {
    match std::env::var(ENV).ok()?.as_str() {
        "" | "0" => None,
        "1" => Some(PathBuf::from(BUILT_DIR)),
        dir => Some(PathBuf::from(dir)),
    }
}

/// Loads the stand-in when the environment asks for it (once per process); returns its directory, or
/// None when it is not asked for. An error names the library that could not be loaded.
pub fn activate() -> Result<Option<PathBuf>> {
    let loaded = LOADED.get_or_init(|| {
        let Some(dir) = requested() else {
            return Ok(None);
        };
        let open = |name: &str| {
            let path = dir.join(name);
            // SAFETY: loading runs the library's initialisers; the stand-in's only set up its own state
            // (no other thread can be inside it yet: this runs once, before any CUDA call).
            unsafe { libloading::Library::new(&path) }.map_err(|e| {
                format!(
                    "{ENV}: cannot load {}: {e} (build the crate on Linux, or point {ENV} at the directory \
                     of libcuda.so and libcublas.so)",
                    path.display()
                )
            })
        };
        let driver = open("libcuda.so")?;
        let blas = open("libcublas.so")?;
        Ok(Some(Loaded {
            dir,
            driver,
            _blas: blas,
        }))
    });
    match loaded {
        Ok(l) => Ok(l.as_ref().map(|l| l.dir.clone())),
        Err(e) => Err(Error::Device(e.clone())),
    }
}

/// Whether the stand-in is loaded in this process.
pub fn active() -> bool {
    matches!(LOADED.get(), Some(Ok(Some(_))))
}

/// The directory of the loaded stand-in's libraries (its `libnccl.so.2` too: `super::nccl` opens it from
/// there), when it is loaded.
pub fn dir() -> Option<PathBuf> {
    match LOADED.get() {
        Some(Ok(Some(l))) => Some(l.dir.clone()),
        _ => None,
    }
}

fn driver() -> Result<&'static libloading::Library> {
    match LOADED.get() {
        Some(Ok(Some(l))) => Ok(&l.driver),
        _ => Err(Error::Device("the CUDA stand-in is not loaded".into())),
    }
}

/// The misuses the stand-in detected so far (one line each, naming the call) and their count.
pub fn errors() -> Result<(usize, String)> {
    let lib = driver()?;
    // SAFETY: the stand-in's libcuda.so exports `rotadam_standin_errors` as `int(char*, uint64_t)`
    // (extern "C"), which this fn type matches; `lib`, the stand-in loaded for the whole process, keeps the
    // symbol valid.
    let f = unsafe {
        lib.get::<unsafe extern "C" fn(*mut c_char, u64) -> i32>(b"rotadam_standin_errors\0")
    }
    .map_err(|e| Error::Device(format!("stand-in: {e}")))?;
    let mut buf = vec![0 as c_char; 1 << 16];
    // SAFETY: the buffer is writable for its length; the function NUL-terminates within it.
    let n = unsafe { f(buf.as_mut_ptr(), buf.len() as u64) };
    // SAFETY: `buf` was zero-filled and the call wrote at most buf.len() − 1 bytes plus a NUL, so a NUL ends
    // the string within `buf`.
    let text = unsafe { CStr::from_ptr(buf.as_ptr()) }
        .to_string_lossy()
        .into_owned();
    Ok((n.max(0) as usize, text))
}

/// Forgets the misuses reported so far.
pub fn clear_errors() -> Result<()> {
    let lib = driver()?;
    // SAFETY: the stand-in's libcuda.so exports `rotadam_standin_clear_errors` as `void(void)` (extern "C"),
    // which this fn type matches; `lib`, the stand-in loaded for the whole process, keeps the symbol valid.
    let f = unsafe { lib.get::<unsafe extern "C" fn()>(b"rotadam_standin_clear_errors\0") }
        .map_err(|e| Error::Device(format!("stand-in: {e}")))?;
    // SAFETY: no arguments; the stand-in guards its state with its own mutex.
    unsafe { f() };
    Ok(())
}

/// The CUDA driver and cuBLAS entry points the stand-in implements.
pub fn entry_points() -> Result<Vec<String>> {
    let lib = driver()?;
    // SAFETY: the stand-in's libcuda.so exports `rotadam_standin_entry_points` as `const char*(void)`
    // (extern "C"), which this fn type matches; `lib`, the stand-in loaded for the whole process, keeps the
    // symbol valid.
    let f = unsafe {
        lib.get::<unsafe extern "C" fn() -> *const c_char>(b"rotadam_standin_entry_points\0")
    }
    .map_err(|e| Error::Device(format!("stand-in: {e}")))?;
    // SAFETY: returns a static NUL-terminated string.
    let text = unsafe { CStr::from_ptr(f()) }
        .to_string_lossy()
        .into_owned();
    Ok(text.lines().map(str::to_string).collect())
}

/// The stand-in's account of this thread's last failing call (names the call and what it checked), when
/// the stand-in is loaded and a call failed.
pub fn last_error() -> Option<String> {
    let lib = driver().ok()?;
    // SAFETY: the stand-in's libcuda.so exports `rotadam_standin_last_error` as `const char*(void)`
    // (extern "C"), which this fn type matches; `lib`, the stand-in loaded for the whole process, keeps the
    // symbol valid.
    let f = unsafe {
        lib.get::<unsafe extern "C" fn() -> *const c_char>(b"rotadam_standin_last_error\0")
    }
    .ok()?;
    // SAFETY: returns a NUL-terminated string owned by the calling thread, valid until its next call.
    let text = unsafe { CStr::from_ptr(f()) }
        .to_string_lossy()
        .into_owned();
    (!text.is_empty()).then_some(text)
}
