//! The device side of the kernel stack: a CUDA context and stream, and the kernel modules loaded on it —
//! from nvcc's PTX when the build found nvcc, else compiled by NVRTC at start-up from the flattened
//! sources (for `compute_80`: the driver JIT-compiles that PTX for the actual GPU, sm_80 and newer).
//! Launches go through cudarc's `launch_kernel` ([`super::exec::CudaExec`]) with the argument lists of the
//! generated typed launchers (`backend::kernel::launch`) and the geometry each kernel file documents.
//!
//! Not run on a GPU (none was available): it runs in the tests on the driver stand-in
//! (`tests/cuda/standin.rs`, `docs/cuda.md`), which executes the PTX's kernels on the CPU emulator. The
//! driver must be at least as new as the NVRTC that wrote the PTX (12.9 wheels: PTX 8.8, a 12.9+ driver;
//! `docs/cuda.md`).

use super::nvrtc::{self, Toolkit};
use crate::error::{Error, Result};
use crate::kernels::{Kernel, Module};
use cudarc::driver::{CudaContext, CudaFunction, CudaModule, CudaStream};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// The NVRTC target of start-up compiles (PTX, JIT-compiled by the driver for the installed GPU).
pub const PTX_ARCH: &str = "compute_80";

/// A CUDA context with its default stream and the kernel modules loaded so far.
pub struct CudaRuntime {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    toolkit: Option<Toolkit>,
    modules: Mutex<HashMap<Module, Arc<CudaModule>>>,
}

fn dev_err(what: &str, e: impl std::fmt::Debug) -> Error {
    Error::Device(format!("{what}: {e:?}"))
}

impl CudaRuntime {
    /// Opens device `ordinal`; `toolkit` says where NVRTC is when the PTX was not built by nvcc. A missing
    /// driver library or device is an error (never a panic: see [`super::probe`]).
    pub fn new(ordinal: usize, toolkit: Option<Toolkit>) -> Result<Self> {
        super::probe().map_err(|why| Error::Device(format!("no usable CUDA device: {why}")))?;
        let ctx = CudaContext::new(ordinal).map_err(|e| dev_err("CudaContext::new", e))?;
        let stream = ctx.default_stream();
        let rt = CudaRuntime {
            ctx,
            stream,
            toolkit,
            modules: Mutex::new(HashMap::new()),
        };
        // Without nvcc's PTX the modules are compiled at first use: a missing NVRTC is said now, before
        // a run starts, not at its first launch.
        if Module::ALL.iter().any(|m| m.prebuilt_ptx().is_none()) {
            rt.nvrtc().load()?;
        }
        Ok(rt)
    }

    /// The toolkit NVRTC comes from (the dynamic loader's search path when none was found).
    fn nvrtc(&self) -> Toolkit {
        self.toolkit.clone().unwrap_or(Toolkit {
            nvrtc_lib: None,
            include_dirs: Vec::new(),
        })
    }

    /// The context.
    pub fn context(&self) -> &Arc<CudaContext> {
        &self.ctx
    }

    /// The stream every launch goes to.
    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }

    /// `module`'s PTX: nvcc's from build time, else NVRTC's (the log, with the file name, on failure).
    pub fn ptx(&self, module: Module) -> Result<String> {
        if let Some(ptx) = module.prebuilt_ptx() {
            return Ok(ptx.to_string());
        }
        let tk = self.nvrtc();
        tk.load()?;
        Ok(nvrtc::compile(module, PTX_ARCH, &tk, &[])?.ptx)
    }

    /// The device function of `kernel`, loading its module on first use.
    pub fn function(&self, kernel: Kernel) -> Result<CudaFunction> {
        let module = kernel.module();
        let mut loaded = self.modules.lock().expect("module cache poisoned");
        let m = match loaded.get(&module) {
            Some(m) => m.clone(),
            None => {
                let ptx = self.ptx(module)?;
                let m = self
                    .ctx
                    .load_module(cudarc::nvrtc::Ptx::from_src(ptx))
                    .map_err(|e| dev_err(&format!("loading kernels/{}.cu", module.name()), e))?;
                loaded.insert(module, m.clone());
                m
            }
        };
        m.load_function(kernel.name()).map_err(|e| {
            dev_err(
                &format!("kernel {} in kernels/{}.cu", kernel.name(), module.name()),
                e,
            )
        })
    }
}
