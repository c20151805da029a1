//! `CudaBackend`: the [`Backend`] trait on a CUDA device. Buffers are `CudaSlice<f32>` (f32 master
//! weights and optimizer state); views are (device address, length) pairs; every op other than the
//! GEMMs is the launch plan of `backend::cuda::ops` — the same code the emulator tests run — queued on one
//! stream; GEMMs are cuBLAS (row-major through the transposed column-major call): `sgemm` in fp32, and
//! under `--precision bf16` the model's matmuls are native bf16 `cublasGemmEx` calls (bf16 operands
//! converted by `to_bf16` into scratch copies, fp32 accumulation and output: the values the CPU
//! backend's emulation multiplies, summed in another order); stored activations are rounded as on the
//! CPU. `Backend::gemm` (the svd and kron rotations) stays fp32: rotations run in single precision.
//!
//! NOT RUN ON A GPU: no device was available while this was written. It compiles; its launches are the
//! emulator-tested ones; the memory handling and the cuBLAS calls are untested. Known costs: the host
//! arrays the trait passes per call (tokens, targets) are uploaded on every call; the rotation index lists
//! are uploaded once, by `rotation_index`, and stay on the device. Failures inside an op panic with the kernel's name (ops return `()`).

use super::nvrtc::Toolkit;
use super::ops::{self, Dev, Exec, IndexList, RotBlocks};
use super::runtime::CudaRuntime;
use crate::backend::emu::launch::{Geometry, OutBuf};
use crate::backend::{AdamStep, Backend};
use crate::error::{Error, Result};
use crate::kernels::{EmuArg, Kernel};
use cudarc::cublas::{result as blas, sys as blas_sys, CudaBlas};
use cudarc::driver::{CudaFunction, CudaSlice, DevicePtr};
use std::collections::HashMap;
use std::marker::PhantomData;
use std::ops::Range;
use std::sync::Mutex;

/// A read-only view of a device buffer.
#[derive(Clone, Copy, Debug)]
pub struct DevView<'a> {
    pub(crate) dev: Dev,
    _m: PhantomData<&'a CudaSlice<f32>>,
}

/// A writable view of a device buffer.
#[derive(Debug)]
pub struct DevViewMut<'a> {
    pub(crate) dev: Dev,
    _m: PhantomData<&'a mut CudaSlice<f32>>,
}

/// A device buffer kept alive until the op that staged it returns (frees are stream-ordered).
pub enum Staged {
    U32(CudaSlice<u32>),
    F64(CudaSlice<f64>),
}

/// A rotation's index list on the device (read by the rotation kernels) and on the host (checked once
/// when prepared, and `rotation_index_list`).
pub struct CudaRotIndex {
    host: IndexList,
    dev: CudaSlice<u32>,
}

/// The CUDA backend (module docs).
pub struct CudaBackend {
    rt: CudaRuntime,
    blas: CudaBlas,
    bf16: bool,
    functions: Mutex<HashMap<Kernel, CudaFunction>>,
}

fn dev_err(what: &str, e: impl std::fmt::Debug) -> Error {
    Error::Device(format!("{what}: {e:?}"))
}

impl CudaBackend {
    /// Opens device `ordinal` (an error, never a panic, without a driver, a device or cuBLAS).
    pub fn new(ordinal: usize, toolkit: Option<Toolkit>, bf16: bool) -> Result<Self> {
        let rt = CudaRuntime::new(ordinal, toolkit)?;
        // SAFETY: only tries to dlopen cuBLAS by name and reports whether it succeeded.
        if !unsafe { cudarc::cublas::sys::is_culib_present() } {
            return Err(Error::Device("no cuBLAS library (libcublas) found".into()));
        }
        let blas = CudaBlas::new(rt.stream().clone()).map_err(|e| dev_err("cuBLAS", e))?;
        Ok(CudaBackend {
            rt,
            blas,
            bf16,
            functions: Mutex::new(HashMap::new()),
        })
    }

    /// The device's peak memory bandwidth in GB/s: 2 (DDR) × memory clock × bus width.
    pub fn memory_bandwidth_gbs(&self) -> Result<f64> {
        use cudarc::driver::sys::CUdevice_attribute as A;
        let ctx = self.rt.context();
        let clock_khz = ctx
            .attribute(A::CU_DEVICE_ATTRIBUTE_MEMORY_CLOCK_RATE)
            .map_err(|e| dev_err("memory clock", e))?;
        let bus_bits = ctx
            .attribute(A::CU_DEVICE_ATTRIBUTE_GLOBAL_MEMORY_BUS_WIDTH)
            .map_err(|e| dev_err("bus width", e))?;
        Ok(2.0 * clock_khz as f64 * 1e3 * (bus_bits as f64 / 8.0) / 1e9)
    }

    fn function(&self, k: Kernel) -> CudaFunction {
        let mut f = self.functions.lock().expect("function cache poisoned");
        if let Some(func) = f.get(&k) {
            return func.clone();
        }
        let func = self.rt.function(k).unwrap_or_else(|e| panic!("{e}"));
        f.insert(k, func.clone());
        func
    }

    fn addr_of<T>(&self, s: &CudaSlice<T>) -> u64 {
        let (ptr, _sync) = s.device_ptr(self.rt.stream());
        ptr
    }

    /// The block structure of a rotation op, reading the device-resident copy of the index list.
    fn blocks<'a>(
        &self,
        index: &'a CudaRotIndex,
        r: DevView<'_>,
        nb: usize,
        n: usize,
    ) -> RotBlocks<'a> {
        RotBlocks {
            index: &index.host,
            resident: Some(self.addr_of(&index.dev)),
            r: v(r),
            nb,
            n,
        }
    }

    /// `x` converted to bf16 into a scratch buffer (kept alive by the returned slice); the `Dev` counts
    /// bf16 elements.
    fn to_bf16(&self, x: Dev) -> (Dev, CudaSlice<u16>) {
        let s = self
            .rt
            .stream()
            .alloc_zeros::<u16>(x.len.max(1))
            .unwrap_or_else(|e| panic!("cuda alloc of {} bf16: {e:?}", x.len));
        let d = Dev {
            addr: self.addr_of(&s),
            len: x.len,
        };
        ops::to_bf16(self, d, x);
        (d, s)
    }

    /// Row-major C (m×n) = op(A)·op(B) (+ C when `accumulate`) through column-major cuBLAS: Cᵀ = op(B)ᵀ·op(A)ᵀ.
    /// A and B are f32, or bf16 when `bf16` (then `cublasGemmEx`: bf16 inputs, fp32 compute and C).
    #[allow(clippy::too_many_arguments)]
    fn gemm_dev(
        &self,
        c: Dev,
        a: Dev,
        b: Dev,
        m: usize,
        n: usize,
        k: usize,
        trans_a: bool,
        trans_b: bool,
        accumulate: bool,
        bf16: bool,
    ) {
        assert!(
            c.len >= m * n && a.len >= m * k && b.len >= k * n,
            "gemm: operand too small for {m}×{n}×{k}"
        );
        if m == 0 || n == 0 {
            return;
        }
        use blas_sys::cublasOperation_t::{CUBLAS_OP_N as N, CUBLAS_OP_T as T};
        let (opb, ldb) = if trans_b { (T, k) } else { (N, n) };
        let (opa, lda) = if trans_a { (T, m) } else { (N, k) };
        let (alpha, beta) = (1.0f32, if accumulate { 1.0f32 } else { 0.0 });
        let int = |x: usize| i32::try_from(x).expect("gemm dimension fits an int");
        // SAFETY: the handle is bound to this backend's stream; a, b, c are device addresses of at least the
        // sizes asserted above (in elements of their types: bf16 for a and b when `bf16`), with the leading
        // dimensions of row-major storage; alpha and beta are host f32, as CUBLAS_COMPUTE_32F requires.
        unsafe {
            if bf16 {
                use blas_sys::cudaDataType_t::{CUDA_R_16BF, CUDA_R_32F};
                blas::gemm_ex(
                    *self.blas.handle(),
                    opb,
                    opa,
                    int(n),
                    int(m),
                    int(k),
                    (&alpha as *const f32).cast(),
                    b.addr as *const std::ffi::c_void,
                    CUDA_R_16BF,
                    int(ldb),
                    a.addr as *const std::ffi::c_void,
                    CUDA_R_16BF,
                    int(lda),
                    (&beta as *const f32).cast(),
                    c.addr as *mut std::ffi::c_void,
                    CUDA_R_32F,
                    int(n),
                    blas_sys::cublasComputeType_t::CUBLAS_COMPUTE_32F,
                    blas_sys::cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
                )
            } else {
                blas::sgemm(
                    *self.blas.handle(),
                    opb,
                    opa,
                    int(n),
                    int(m),
                    int(k),
                    &alpha,
                    b.addr as *const f32,
                    int(ldb),
                    a.addr as *const f32,
                    int(lda),
                    &beta,
                    c.addr as *mut f32,
                    int(n),
                )
            }
        }
        .unwrap_or_else(|e| {
            let kind = if bf16 { "bf16 GemmEx" } else { "sgemm" };
            panic!("cuBLAS {kind} {m}×{n}×{k}: {e:?}")
        });
    }
}

impl Exec for CudaBackend {
    type Staged = Staged;
    unsafe fn launch(&self, kernel: Kernel, geo: Geometry, _outs: &[OutBuf], args: &[EmuArg]) {
        let f = self.function(kernel);
        let mut params: Vec<*mut std::ffi::c_void> = args.iter().map(|a| a.ptr).collect();
        // SAFETY: forwarded contract (Exec::launch): the argument list matches the kernel's parameters
        // (the same lists the emulator checks); addresses are device addresses of checked sizes.
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
        .unwrap_or_else(|e| panic!("CUDA launch of {}: {e:?}", kernel.name()));
    }
    fn stage_u32(&self, host: &[u32]) -> (u64, Staged) {
        let s = self
            .rt
            .stream()
            .clone_htod(host)
            .unwrap_or_else(|e| panic!("cuda upload of {} u32: {e:?}", host.len()));
        (self.addr_of(&s), Staged::U32(s))
    }
    fn scratch_f64(&self, n: usize) -> (u64, Staged) {
        let s = self
            .rt
            .stream()
            .alloc_zeros::<f64>(n.max(1))
            .unwrap_or_else(|e| panic!("cuda alloc of {n} f64: {e:?}"));
        (self.addr_of(&s), Staged::F64(s))
    }
    fn read_f64(&self, s: &Staged, n: usize) -> Vec<f64> {
        match s {
            Staged::F64(s) => {
                let v = self
                    .rt
                    .stream()
                    .clone_dtoh(s)
                    .unwrap_or_else(|e| panic!("cuda download: {e:?}"));
                v[..n].to_vec()
            }
            Staged::U32(_) => panic!("read_f64 on a u32 staging buffer"),
        }
    }
}

fn v(x: DevView<'_>) -> Dev {
    x.dev
}
fn vm(x: DevViewMut<'_>) -> Dev {
    x.dev
}

impl Backend for CudaBackend {
    type T = f32;
    type Buf = CudaSlice<f32>;
    type RotIndex = CudaRotIndex;
    type View<'a>
        = DevView<'a>
    where
        Self: 'a;
    type ViewMut<'a>
        = DevViewMut<'a>
    where
        Self: 'a;

    fn name(&self) -> String {
        let dev = self
            .rt
            .context()
            .name()
            .unwrap_or_else(|_| "unknown".into());
        let prec = if self.bf16 { "+bf16" } else { "" };
        format!("cuda f32{prec} ({dev})")
    }
    fn bf16(&self) -> bool {
        self.bf16
    }
    fn alloc(&self, n: usize) -> Result<CudaSlice<f32>> {
        self.rt
            .stream()
            .alloc_zeros::<f32>(n)
            .map_err(|e| dev_err(&format!("allocating {n} floats"), e))
    }
    fn buf_len(&self, buf: &CudaSlice<f32>) -> usize {
        buf.len()
    }
    fn upload(&self, dst: &mut CudaSlice<f32>, src: &[f32]) -> Result<()> {
        if dst.len() != src.len() {
            return Err(Error::Shape {
                context: "upload".into(),
                expected: format!("{} elements", dst.len()),
                got: format!("{} elements", src.len()),
            });
        }
        self.rt
            .stream()
            .memcpy_htod(src, dst)
            .map_err(|e| dev_err("upload", e))
    }
    fn download(&self, src: &CudaSlice<f32>) -> Result<Vec<f32>> {
        self.rt
            .stream()
            .clone_dtoh(src)
            .map_err(|e| dev_err("download", e))
    }
    fn view<'a>(&self, buf: &'a CudaSlice<f32>, range: Range<usize>) -> DevView<'a> {
        assert!(
            range.start <= range.end && range.end <= buf.len(),
            "view {range:?} out of bounds for {} elements",
            buf.len()
        );
        DevView {
            dev: Dev {
                addr: self.addr_of(buf) + 4 * range.start as u64,
                len: range.len(),
            },
            _m: PhantomData,
        }
    }
    fn view_mut<'a>(&self, buf: &'a mut CudaSlice<f32>, range: Range<usize>) -> DevViewMut<'a> {
        let d = self.view(buf, range).dev;
        DevViewMut {
            dev: d,
            _m: PhantomData,
        }
    }
    fn views_mut<'a, const N: usize>(
        &self,
        buf: &'a mut CudaSlice<f32>,
        ranges: [Range<usize>; N],
    ) -> [DevViewMut<'a>; N] {
        // The CPU splitter's checks (bounds, overlaps) on a zero-sized stand-in of the buffer.
        let mut unit = vec![(); buf.len()];
        let _ = crate::backend::cpu::split_ranges_mut(&mut unit, ranges.clone());
        let base = self.addr_of(buf);
        ranges.map(|r| DevViewMut {
            dev: Dev {
                addr: base + 4 * r.start as u64,
                len: r.len(),
            },
            _m: PhantomData,
        })
    }

    fn fill(&self, out: DevViewMut<'_>, value: f32) -> Result<()> {
        ops::fill(self, vm(out), value);
        Ok(())
    }
    fn scale(&self, out: DevViewMut<'_>, s: f32) -> Result<()> {
        ops::scale(self, vm(out), s);
        Ok(())
    }
    fn gemm(
        &self,
        c: DevViewMut<'_>,
        a: DevView<'_>,
        b: DevView<'_>,
        m: usize,
        n: usize,
        k: usize,
        trans_a: bool,
        trans_b: bool,
        accumulate: bool,
    ) -> Result<()> {
        self.gemm_dev(
            vm(c),
            v(a),
            v(b),
            m,
            n,
            k,
            trans_a,
            trans_b,
            accumulate,
            false,
        );
        Ok(())
    }
    fn sum_squares(&self, x: DevView<'_>) -> Result<f64> {
        Ok(ops::sum_squares(self, v(x)))
    }
    fn encoder_forward(
        &self,
        out: DevViewMut<'_>,
        tokens: &[u32],
        wte: DevView<'_>,
        wpe: DevView<'_>,
        b: usize,
        t: usize,
        c: usize,
    ) -> Result<()> {
        ops::encoder_forward(self, vm(out), tokens, v(wte), v(wpe), b, t, c, self.bf16);
        Ok(())
    }
    fn encoder_backward(
        &self,
        dwte: DevViewMut<'_>,
        dwpe: DevViewMut<'_>,
        dout: DevView<'_>,
        tokens: &[u32],
        b: usize,
        t: usize,
        c: usize,
    ) -> Result<()> {
        ops::encoder_backward(self, vm(dwte), vm(dwpe), v(dout), tokens, b, t, c);
        Ok(())
    }
    fn layernorm_forward(
        &self,
        out: DevViewMut<'_>,
        mean: DevViewMut<'_>,
        rstd: DevViewMut<'_>,
        inp: DevView<'_>,
        weight: DevView<'_>,
        bias: Option<DevView<'_>>,
        n: usize,
        c: usize,
    ) -> Result<()> {
        ops::layernorm_forward(
            self,
            vm(out),
            vm(mean),
            vm(rstd),
            v(inp),
            v(weight),
            bias.map(v),
            n,
            c,
            self.bf16,
        );
        Ok(())
    }
    fn layernorm_backward(
        &self,
        dinp: DevViewMut<'_>,
        dweight: DevViewMut<'_>,
        dbias: Option<DevViewMut<'_>>,
        dout: DevView<'_>,
        inp: DevView<'_>,
        weight: DevView<'_>,
        mean: DevView<'_>,
        rstd: DevView<'_>,
        n: usize,
        c: usize,
    ) -> Result<()> {
        ops::layernorm_backward(
            self,
            vm(dinp),
            vm(dweight),
            dbias.map(vm),
            v(dout),
            v(inp),
            v(weight),
            v(mean),
            v(rstd),
            n,
            c,
        );
        Ok(())
    }
    fn matmul_forward(
        &self,
        out: DevViewMut<'_>,
        inp: DevView<'_>,
        weight: DevView<'_>,
        bias: Option<DevView<'_>>,
        n: usize,
        c: usize,
        oc: usize,
    ) -> Result<()> {
        let (out, inp, weight) = (vm(out), v(inp), v(weight));
        crate::backend::cpu::check_len("matmul_forward", "out", out.len, n * oc);
        crate::backend::cpu::check_len("matmul_forward", "inp", inp.len, n * c);
        crate::backend::cpu::check_len("matmul_forward", "weight", weight.len, oc * c);
        if self.bf16 {
            let (x, _kx) = self.to_bf16(inp);
            let (w, _kw) = self.to_bf16(weight);
            self.gemm_dev(out, x, w, n, oc, c, false, true, false, true);
        } else {
            self.gemm_dev(out, inp, weight, n, oc, c, false, true, false, false);
        }
        if let Some(b) = bias {
            ops::bias_forward(self, out, v(b), n, oc);
        }
        if self.bf16 {
            ops::round_bf16_copy(self, out, out);
        };
        Ok(())
    }
    fn matmul_backward(
        &self,
        dinp: Option<DevViewMut<'_>>,
        dweight: DevViewMut<'_>,
        dbias: Option<DevViewMut<'_>>,
        dout: DevView<'_>,
        inp: DevView<'_>,
        weight: DevView<'_>,
        n: usize,
        c: usize,
        oc: usize,
    ) -> Result<()> {
        let (dweight, mut g, mut x, mut w) = (vm(dweight), v(dout), v(inp), v(weight));
        let op = "matmul_backward";
        crate::backend::cpu::check_len(op, "dout", g.len, n * oc);
        crate::backend::cpu::check_len(op, "inp", x.len, n * c);
        crate::backend::cpu::check_len(op, "weight", w.len, oc * c);
        crate::backend::cpu::check_len(op, "dweight", dweight.len, oc * c);
        // the bias gradient sums the fp32 dout (the CPU emulation sums the rounded one: within bf16 tolerance)
        if let Some(db) = dbias {
            ops::bias_backward(self, vm(db), g, n, oc);
        }
        let mut keep = Vec::new();
        let bf16 = self.bf16;
        if bf16 {
            for t in [&mut g, &mut x, &mut w] {
                let (r, k) = self.to_bf16(*t);
                *t = r;
                keep.push(k);
            }
        }
        if let Some(dinp) = dinp {
            crate::backend::cpu::check_len(op, "dinp", dinp.dev.len, n * c);
            self.gemm_dev(vm(dinp), g, w, n, c, oc, false, false, true, bf16);
        }
        self.gemm_dev(dweight, g, x, oc, c, n, true, false, true, bf16);
        drop(keep);
        Ok(())
    }
    fn attention_forward(
        &self,
        out: DevViewMut<'_>,
        att: DevViewMut<'_>,
        qkv: DevView<'_>,
        b: usize,
        t: usize,
        c: usize,
        nh: usize,
    ) -> Result<()> {
        ops::attention_forward(self, vm(out), vm(att), v(qkv), b, t, c, nh, self.bf16);
        Ok(())
    }
    fn attention_backward(
        &self,
        dqkv: DevViewMut<'_>,
        scratch: DevViewMut<'_>,
        dout: DevView<'_>,
        qkv: DevView<'_>,
        att: DevView<'_>,
        b: usize,
        t: usize,
        c: usize,
        nh: usize,
    ) -> Result<()> {
        ops::attention_backward(
            self,
            vm(dqkv),
            vm(scratch),
            v(dout),
            v(qkv),
            v(att),
            b,
            t,
            c,
            nh,
        );
        Ok(())
    }
    fn gelu_forward(&self, out: DevViewMut<'_>, inp: DevView<'_>) -> Result<()> {
        ops::gelu_forward(self, vm(out), v(inp), self.bf16);
        Ok(())
    }
    fn gelu_backward(
        &self,
        dinp: DevViewMut<'_>,
        inp: DevView<'_>,
        dout: DevView<'_>,
    ) -> Result<()> {
        ops::gelu_backward(self, vm(dinp), v(inp), v(dout));
        Ok(())
    }
    fn residual_forward(&self, out: DevViewMut<'_>, a: DevView<'_>, b: DevView<'_>) -> Result<()> {
        ops::residual_forward(self, vm(out), v(a), v(b), self.bf16);
        Ok(())
    }
    fn add_inplace(&self, dx: DevViewMut<'_>, dout: DevView<'_>) -> Result<()> {
        ops::add_inplace(self, vm(dx), v(dout));
        Ok(())
    }
    fn crossentropy_forward(
        &self,
        losses: DevViewMut<'_>,
        logits: DevViewMut<'_>,
        targets: &[u32],
        dloss: Option<f32>,
        n: usize,
        vocab: usize,
    ) -> Result<()> {
        ops::crossentropy_forward(self, vm(losses), vm(logits), targets, dloss, n, vocab);
        Ok(())
    }
    fn rotation_index(&self, index: Vec<u32>, _n: usize, src_len: usize) -> Result<CudaRotIndex> {
        let host = IndexList::new(index, src_len)?;
        let dev = self
            .rt
            .stream()
            .clone_htod(host.list())
            .map_err(|e| dev_err("upload of a rotation index list", e))?;
        Ok(CudaRotIndex { host, dev })
    }
    fn rotation_index_list(&self, index: &CudaRotIndex) -> Vec<u32> {
        index.host.list().to_vec()
    }
    fn rotate(
        &self,
        out: DevViewMut<'_>,
        inp: DevView<'_>,
        index: &CudaRotIndex,
        r: DevView<'_>,
        nb: usize,
        n: usize,
    ) -> Result<()> {
        let rb = self.blocks(index, r, nb, n);
        ops::rotate_or_unrotate(self, false, vm(out), v(inp), rb);
        Ok(())
    }
    fn unrotate(
        &self,
        out: DevViewMut<'_>,
        inp: DevView<'_>,
        index: &CudaRotIndex,
        r: DevView<'_>,
        nb: usize,
        n: usize,
    ) -> Result<()> {
        let rb = self.blocks(index, r, nb, n);
        ops::rotate_or_unrotate(self, true, vm(out), v(inp), rb);
        Ok(())
    }
    fn rotate_adam_direction(
        &self,
        u: DevViewMut<'_>,
        m: DevViewMut<'_>,
        vv: DevViewMut<'_>,
        grads: DevView<'_>,
        index: &CudaRotIndex,
        r: DevView<'_>,
        nb: usize,
        n: usize,
        hp: AdamStep,
    ) -> Result<()> {
        let rb = self.blocks(index, r, nb, n);
        ops::rotate_adam_direction(self, vm(u), vm(m), vm(vv), v(grads), rb, hp);
        Ok(())
    }
    fn unrotate_apply_update(
        &self,
        params: DevViewMut<'_>,
        u: DevView<'_>,
        index: &CudaRotIndex,
        r: DevView<'_>,
        nb: usize,
        n: usize,
        lr: f64,
    ) -> Result<()> {
        let rb = self.blocks(index, r, nb, n);
        ops::unrotate_apply_update(self, vm(params), v(u), rb, lr);
        Ok(())
    }
    fn adamw_step(
        &self,
        params: DevViewMut<'_>,
        m: DevViewMut<'_>,
        vv: DevViewMut<'_>,
        grads: DevView<'_>,
        hp: AdamStep,
    ) -> Result<()> {
        ops::adamw_step(self, vm(params), vm(m), vm(vv), v(grads), hp);
        Ok(())
    }
    fn sgd_step(
        &self,
        params: DevViewMut<'_>,
        momentum_buf: DevViewMut<'_>,
        grads: DevView<'_>,
        lr: f64,
        momentum: f64,
        weight_decay: f64,
    ) -> Result<()> {
        ops::sgd_step(
            self,
            vm(params),
            vm(momentum_buf),
            v(grads),
            lr,
            momentum,
            weight_decay,
        );
        Ok(())
    }
    fn adam_direction_step(
        &self,
        u: DevViewMut<'_>,
        m: DevViewMut<'_>,
        vv: DevViewMut<'_>,
        grads: DevView<'_>,
        hp: AdamStep,
    ) -> Result<()> {
        ops::adam_direction_step(self, vm(u), vm(m), vm(vv), v(grads), hp);
        Ok(())
    }
    fn sgd_direction_step(
        &self,
        u: DevViewMut<'_>,
        momentum_buf: DevViewMut<'_>,
        grads: DevView<'_>,
        momentum: f64,
    ) -> Result<()> {
        ops::sgd_direction_step(self, vm(u), vm(momentum_buf), v(grads), momentum);
        Ok(())
    }
    fn block_mean_squares(&self, out: DevViewMut<'_>, x: DevView<'_>, block: usize) -> Result<()> {
        ops::block_mean_squares(self, vm(out), v(x), block);
        Ok(())
    }
    fn ema_inplace(&self, vv: DevViewMut<'_>, s: DevView<'_>, beta2: f64) -> Result<()> {
        ops::ema_inplace(self, vm(vv), v(s), beta2);
        Ok(())
    }
    fn block_adam_direction_step(
        &self,
        u: DevViewMut<'_>,
        m: DevViewMut<'_>,
        vv: DevView<'_>,
        grads: DevView<'_>,
        block: usize,
        hp: AdamStep,
    ) -> Result<()> {
        ops::block_adam_direction_step(self, vm(u), vm(m), v(vv), v(grads), block, hp);
        Ok(())
    }
    fn apply_update(
        &self,
        params: DevViewMut<'_>,
        u: DevView<'_>,
        lr: f64,
        weight_decay: f64,
    ) -> Result<()> {
        ops::apply_update(self, vm(params), v(u), lr, weight_decay);
        Ok(())
    }
}
