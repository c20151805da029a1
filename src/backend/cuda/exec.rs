//! A CUDA device as an executor of the kernel backend: memory as cudarc device buffers on one stream,
//! launches of the kernels loaded by [`CudaRuntime`] (nvcc's PTX or NVRTC's), GEMMs as cuBLAS calls —
//! row-major through the transposed column-major call; `sgemm` for f32 operands, `cublasGemmEx` (bf16 in,
//! fp32 compute and out) for bf16 ones. Every failure of the driver or cuBLAS is an error naming the call.
//!
//! Runs on a GPU or, with `ROTADAM_CUDA_STANDIN=1`, on the driver + cuBLAS stand-in (`super::standin`,
//! `docs/cuda.md`): the same code in both cases.

use super::nvrtc::Toolkit;
use super::runtime::CudaRuntime;
use crate::backend::kernel::{Exec, Gemm, Geometry, KernelBackend, Operands, OutBuf, HOST};
use crate::error::{Error, Result};
use crate::kernels::{EmuArg, Kernel};
use cudarc::cublas::{result as blas, sys as blas_sys, CudaBlas};
use cudarc::driver::{CudaFunction, CudaSlice, DevicePtr};
use std::collections::HashMap;
use std::sync::Mutex;

/// The kernel backend on a CUDA device.
pub type CudaBackend = KernelBackend<CudaExec>;

impl KernelBackend<CudaExec> {
    /// The backend on device `ordinal`; `toolkit` says where NVRTC is when the PTX was not built by nvcc.
    pub fn cuda(ordinal: usize, toolkit: Option<Toolkit>, bf16: bool) -> Result<Self> {
        Ok(KernelBackend::new(CudaExec::new(ordinal, toolkit)?, bf16))
    }
}

/// A failed driver or cuBLAS call as an error of `what`, with the stand-in's account of it when the
/// stand-in is loaded (it names the argument it checked).
fn failed(e: impl Into<Error>, what: String) -> Error {
    let err = e.into();
    match super::standin::last_error() {
        Some(detail) => err.context(format!("{what} [stand-in: {detail}]")),
        None => err.context(what),
    }
}

/// The CUDA executor (module docs).
pub struct CudaExec {
    rt: CudaRuntime,
    blas: CudaBlas,
    functions: Mutex<HashMap<Kernel, CudaFunction>>,
    /// Its memory space ([`Exec::space`]): one per executor, never host memory's.
    space: u64,
}

/// The next executor's memory space.
static NEXT_SPACE: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(HOST + 1);

impl CudaExec {
    /// Opens device `ordinal` (an error, never a panic, without a driver, a device or cuBLAS).
    pub fn new(ordinal: usize, toolkit: Option<Toolkit>) -> Result<Self> {
        let rt = CudaRuntime::new(ordinal, toolkit)?;
        // SAFETY: only tries to dlopen cuBLAS by name and reports whether it succeeded.
        if !unsafe { cudarc::cublas::sys::is_culib_present() } {
            return Err(Error::Device("no cuBLAS library (libcublas) found".into()));
        }
        let blas =
            CudaBlas::new(rt.stream().clone()).map_err(|e| Error::from(e).context("cuBLAS"))?;
        Ok(CudaExec {
            rt,
            blas,
            functions: Mutex::new(HashMap::new()),
            space: NEXT_SPACE.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
        })
    }

    /// The device's peak memory bandwidth in GB/s: 2 (DDR) × memory clock × bus width.
    pub fn memory_bandwidth_gbs(&self) -> Result<f64> {
        use cudarc::driver::sys::CUdevice_attribute as A;
        let ctx = self.rt.context();
        let clock_khz = ctx.attribute(A::CU_DEVICE_ATTRIBUTE_MEMORY_CLOCK_RATE)?;
        let bus_bits = ctx.attribute(A::CU_DEVICE_ATTRIBUTE_GLOBAL_MEMORY_BUS_WIDTH)?;
        Ok(2.0 * clock_khz as f64 * 1e3 * (bus_bits as f64 / 8.0) / 1e9)
    }

    /// The device's ordinal.
    pub fn ordinal(&self) -> usize {
        self.rt.context().ordinal()
    }

    /// The raw handle of the executor's one stream (for NCCL's calls, queued on it).
    pub fn raw_stream(&self) -> cudarc::driver::sys::CUstream {
        self.rt.stream().cu_stream()
    }

    /// Makes the device's context current on the calling thread (a thread driving this device calls
    /// NCCL or the driver directly).
    pub fn bind(&self) -> Result<()> {
        self.rt
            .context()
            .bind_to_thread()
            .map_err(|e| failed(e, "binding the device's context to this thread".into()))
    }

    /// Waits for every queued operation.
    pub fn synchronize(&self) -> Result<()> {
        self.rt.stream().synchronize().map_err(|e| {
            failed(
                e,
                "synchronizing the stream (an error of the work queued before)".into(),
            )
        })
    }

    fn function(&self, k: Kernel) -> Result<CudaFunction> {
        let mut f = self.functions.lock().expect("function cache poisoned");
        if let Some(func) = f.get(&k) {
            return Ok(func.clone());
        }
        let func = self.rt.function(k)?;
        f.insert(k, func.clone());
        Ok(func)
    }
}

impl Exec for CudaExec {
    type Mem = CudaSlice<u8>;
    fn describe(&self) -> String {
        let dev = self
            .rt
            .context()
            .name()
            .unwrap_or_else(|_| "unknown".into());
        format!("cuda ({dev})")
    }
    fn space(&self) -> u64 {
        self.space
    }
    fn alloc(&self, bytes: usize) -> Result<CudaSlice<u8>> {
        self.rt
            .stream()
            .alloc_zeros::<u8>(bytes)
            .map_err(|e| failed(e, format!("cuMemAlloc of {bytes} bytes")))
    }
    fn addr(&self, mem: &CudaSlice<u8>) -> u64 {
        let (ptr, _sync) = mem.device_ptr(self.rt.stream());
        ptr
    }
    fn upload(&self, dst: &mut CudaSlice<u8>, src: &[u8]) -> Result<()> {
        let mut view = dst.slice_mut(0..src.len());
        let n = src.len();
        self.rt
            .stream()
            .memcpy_htod(src, &mut view)
            .map_err(|e| failed(e, format!("cuMemcpyHtoD of {n} bytes")))
    }
    fn download(&self, src: &CudaSlice<u8>, dst: &mut [u8]) -> Result<()> {
        let view = src.slice(0..dst.len());
        let n = dst.len();
        self.rt
            .stream()
            .memcpy_dtoh(&view, dst)
            .map_err(|e| failed(e, format!("cuMemcpyDtoH of {n} bytes")))?;
        // a pageable destination is complete when the copy returns; the synchronize makes it so for
        // every destination and reports an error of the work before it here
        self.synchronize()
    }
    unsafe fn launch(
        &self,
        kernel: Kernel,
        geo: Geometry,
        _outs: &[OutBuf],
        args: &[EmuArg],
    ) -> Result<()> {
        let what = || format!("kernel {} ({geo})", kernel.name());
        let f = self.function(kernel).map_err(|e| e.context(what()))?;
        let mut params: Vec<*mut std::ffi::c_void> = args.iter().map(|a| a.ptr).collect();
        // SAFETY: the caller upholds Exec::launch: `args` are the kernel's parameters in order and size (the
        // typed launchers are generated from its signature) and every address is a live device allocation
        // covering what the kernel accesses at `geo`; each `params` entry points at a value that outlives
        // this call, and `f` was loaded into this executor's context, whose stream runs it.
        unsafe {
            cudarc::driver::result::launch_kernel(
                f.cu_function(),
                (geo.grid[0], geo.grid[1], geo.grid[2]),
                (geo.block[0], geo.block[1], geo.block[2]),
                geo.smem as u32,
                self.rt.stream().cu_stream(),
                &mut params,
            )
        }
        .map_err(|e| failed(e, what()))
    }
    unsafe fn gemm(&self, g: &Gemm) -> Result<()> {
        // Row-major C (m×n) = op(A)·op(B) is column-major Cᵀ = op(B)ᵀ·op(A)ᵀ: B first, m and n swapped.
        use blas_sys::cublasOperation_t::{CUBLAS_OP_N as N, CUBLAS_OP_T as T};
        let (m, n, k) = (g.m, g.n, g.k);
        let (opb, ldb) = if g.trans_b { (T, k) } else { (N, n) };
        let (opa, lda) = if g.trans_a { (T, m) } else { (N, k) };
        let (alpha, beta) = (1.0f32, if g.accumulate { 1.0f32 } else { 0.0 });
        let int = |x: usize, what: &str| {
            i32::try_from(x)
                .map_err(|_| Error::Device(format!("gemm: {what} = {x} exceeds a cuBLAS int")))
        };
        let (mi, ni, ki, lda, ldb) = (
            int(m, "m")?,
            int(n, "n")?,
            int(k, "k")?,
            int(lda, "lda")?,
            int(ldb, "ldb")?,
        );
        let handle = *self.blas.handle();
        // SAFETY: the handle is bound to this executor's stream; A, B and C hold the elements the shapes
        // name (Exec::gemm's contract), with the leading dimensions of row-major storage; alpha and beta
        // are host f32, as CUBLAS_COMPUTE_32F takes them.
        let r = unsafe {
            match g.operands {
                Operands::Bf16 => {
                    use blas_sys::cudaDataType_t::{CUDA_R_16BF, CUDA_R_32F};
                    blas::gemm_ex(
                        handle,
                        opb,
                        opa,
                        ni,
                        mi,
                        ki,
                        (&alpha as *const f32).cast(),
                        g.b as *const std::ffi::c_void,
                        CUDA_R_16BF,
                        ldb,
                        g.a as *const std::ffi::c_void,
                        CUDA_R_16BF,
                        lda,
                        (&beta as *const f32).cast(),
                        g.c.addr as *mut std::ffi::c_void,
                        CUDA_R_32F,
                        ni,
                        blas_sys::cublasComputeType_t::CUBLAS_COMPUTE_32F,
                        blas_sys::cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
                    )
                }
                Operands::F32 => blas::sgemm(
                    handle,
                    opb,
                    opa,
                    ni,
                    mi,
                    ki,
                    &alpha,
                    g.b as *const f32,
                    ldb,
                    g.a as *const f32,
                    lda,
                    &beta,
                    g.c.addr as *mut f32,
                    ni,
                ),
            }
        };
        let call = match g.operands {
            Operands::Bf16 => "cublasGemmEx",
            Operands::F32 => "cublasSgemm",
        };
        r.map_err(|e| failed(e, call.to_string()))
    }
}
