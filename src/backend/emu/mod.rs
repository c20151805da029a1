//! The emulated CUDA backend: every op of [`Backend`] runs the project's CUDA kernels (`kernels/*.cu`)
//! through the CPU emulator (`kernels/emu/`), each launch under both thread orders with bit-identical
//! outputs required ([`launch::launch_both_orders`]). It exists for tests: it checks the kernels' math
//! against the CPU backend and the f64 reference, and a whole training step through the kernels.
//!
//! The launch plan of every op (shape checks, geometry, argument lists) is `backend::cuda::ops`, shared
//! with the CUDA backend, so the tests here exercise exactly the launches a GPU would get. GEMMs
//! (`matmul_forward`, `matmul_backward`, `gemm`) stay on the CPU (faer, through [`CpuBackend<f32>`]): on
//! a GPU they are cuBLAS calls, which the emulator does not emulate. Buffers are host `Vec<f32>`;
//! `--precision bf16` is the CPU backend's emulation (activations stored rounded to bf16 by the kernels'
//! `store_act`), so the two backends compute the same function.

pub mod launch;

use super::cpu::{split_ranges_mut, CpuBackend};
use super::cuda::ops::{self, Dev, Exec, IndexList, RotBlocks};
use super::{AdamStep, Backend};
use crate::error::Result;
use crate::kernels::{EmuArg, Kernel};
use launch::{launch_both_orders, Geometry, OutBuf};
use std::ops::Range;

pub use super::cuda::ops::{BLOCK, GEMM_TILE, REDUCE_CHUNK};

/// Launches on the emulator, both orders compared (module docs).
#[derive(Clone, Copy, Debug, Default)]
pub struct EmuExec;

impl Exec for EmuExec {
    type Staged = Vec<f64>;
    unsafe fn launch(&self, kernel: Kernel, geo: Geometry, outs: &[OutBuf], args: &[EmuArg]) {
        // SAFETY: forwarded contract (Exec::launch).
        if let Err(e) = unsafe { launch_both_orders(kernel, geo, outs, args) } {
            panic!("{e}");
        }
    }
    fn stage_u32(&self, host: &[u32]) -> (u64, Vec<f64>) {
        (host.as_ptr() as u64, Vec::new())
    }
    fn scratch_f64(&self, n: usize) -> (u64, Vec<f64>) {
        let mut v = vec![0f64; n];
        (v.as_mut_ptr() as u64, v)
    }
    fn read_f64(&self, s: &Vec<f64>, n: usize) -> Vec<f64> {
        s[..n].to_vec()
    }
}

/// The emulated CUDA backend (module docs). f32 only, like the CUDA backend's master weights.
#[derive(Clone, Debug)]
pub struct EmuBackend {
    cpu: CpuBackend<f32>,
    bf16: bool,
}

impl EmuBackend {
    /// An emulated backend; GEMMs run on the CPU with `threads` threads.
    pub fn new(threads: usize, bf16: bool) -> Self {
        EmuBackend {
            cpu: CpuBackend::new(threads, bf16),
            bf16,
        }
    }
}

/// The `Dev` of a borrowed slice. Used only as an argument of one `ops::` call, during which the slice
/// stays borrowed by the calling trait method.
fn d(x: &[f32]) -> Dev {
    // SAFETY: the Dev is consumed by the single ops:: call it is an argument of, while `x` is borrowed.
    unsafe { Dev::host(x) }
}
/// As [`d`] for a mutable slice.
fn dm(x: &mut [f32]) -> Dev {
    // SAFETY: as in `d`; the trait method holds the only `&mut` to `x` for the duration of the call.
    unsafe { Dev::host_mut(x) }
}

/// The block structure of a rotation op (the emulator reads the host list in place).
fn blocks<'a>(index: &'a IndexList, r: &[f32], nb: usize, n: usize) -> RotBlocks<'a> {
    RotBlocks {
        index,
        resident: None,
        r: d(r),
        nb,
        n,
    }
}

impl Backend for EmuBackend {
    type T = f32;
    type Buf = Vec<f32>;
    type RotIndex = IndexList;
    type View<'a>
        = &'a [f32]
    where
        Self: 'a;
    type ViewMut<'a>
        = &'a mut [f32]
    where
        Self: 'a;

    fn name(&self) -> String {
        let prec = if self.bf16 { "+bf16" } else { "" };
        format!("cuda-emulator f32{prec} (GEMMs on the CPU)")
    }
    fn bf16(&self) -> bool {
        self.bf16
    }
    fn alloc(&self, n: usize) -> Result<Vec<f32>> {
        self.cpu.alloc(n)
    }
    fn buf_len(&self, buf: &Vec<f32>) -> usize {
        buf.len()
    }
    fn upload(&self, dst: &mut Vec<f32>, src: &[f32]) -> Result<()> {
        self.cpu.upload(dst, src)
    }
    fn download(&self, src: &Vec<f32>) -> Result<Vec<f32>> {
        Ok(src.clone())
    }
    fn view<'a>(&self, buf: &'a Vec<f32>, range: Range<usize>) -> &'a [f32] {
        &buf[range]
    }
    fn view_mut<'a>(&self, buf: &'a mut Vec<f32>, range: Range<usize>) -> &'a mut [f32] {
        &mut buf[range]
    }
    fn views_mut<'a, const N: usize>(
        &self,
        buf: &'a mut Vec<f32>,
        ranges: [Range<usize>; N],
    ) -> [&'a mut [f32]; N] {
        split_ranges_mut(buf.as_mut_slice(), ranges)
    }

    fn fill(&self, out: &mut [f32], value: f32) -> Result<()> {
        ops::fill(&EmuExec, dm(out), value);
        Ok(())
    }
    fn scale(&self, out: &mut [f32], s: f32) -> Result<()> {
        ops::scale(&EmuExec, dm(out), s);
        Ok(())
    }
    fn gemm(
        &self,
        c: &mut [f32],
        a: &[f32],
        b: &[f32],
        m: usize,
        n: usize,
        k: usize,
        trans_a: bool,
        trans_b: bool,
        accumulate: bool,
    ) -> Result<()> {
        self.cpu
            .gemm(c, a, b, m, n, k, trans_a, trans_b, accumulate)?;
        Ok(())
    }
    fn sum_squares(&self, x: &[f32]) -> Result<f64> {
        Ok(ops::sum_squares(&EmuExec, d(x)))
    }
    fn encoder_forward(
        &self,
        out: &mut [f32],
        tokens: &[u32],
        wte: &[f32],
        wpe: &[f32],
        b: usize,
        t: usize,
        c: usize,
    ) -> Result<()> {
        ops::encoder_forward(
            &EmuExec,
            dm(out),
            tokens,
            d(wte),
            d(wpe),
            b,
            t,
            c,
            self.bf16,
        );
        Ok(())
    }
    fn encoder_backward(
        &self,
        dwte: &mut [f32],
        dwpe: &mut [f32],
        dout: &[f32],
        tokens: &[u32],
        b: usize,
        t: usize,
        c: usize,
    ) -> Result<()> {
        ops::encoder_backward(&EmuExec, dm(dwte), dm(dwpe), d(dout), tokens, b, t, c);
        Ok(())
    }
    fn layernorm_forward(
        &self,
        out: &mut [f32],
        mean: &mut [f32],
        rstd: &mut [f32],
        inp: &[f32],
        weight: &[f32],
        bias: Option<&[f32]>,
        n: usize,
        c: usize,
    ) -> Result<()> {
        ops::layernorm_forward(
            &EmuExec,
            dm(out),
            dm(mean),
            dm(rstd),
            d(inp),
            d(weight),
            bias.map(d),
            n,
            c,
            self.bf16,
        );
        Ok(())
    }
    fn layernorm_backward(
        &self,
        dinp: &mut [f32],
        dweight: &mut [f32],
        dbias: Option<&mut [f32]>,
        dout: &[f32],
        inp: &[f32],
        weight: &[f32],
        mean: &[f32],
        rstd: &[f32],
        n: usize,
        c: usize,
    ) -> Result<()> {
        ops::layernorm_backward(
            &EmuExec,
            dm(dinp),
            dm(dweight),
            dbias.map(dm),
            d(dout),
            d(inp),
            d(weight),
            d(mean),
            d(rstd),
            n,
            c,
        );
        Ok(())
    }
    fn matmul_forward(
        &self,
        out: &mut [f32],
        inp: &[f32],
        weight: &[f32],
        bias: Option<&[f32]>,
        n: usize,
        c: usize,
        oc: usize,
    ) -> Result<()> {
        self.cpu.matmul_forward(out, inp, weight, bias, n, c, oc)?;
        Ok(())
    }
    fn matmul_backward(
        &self,
        dinp: Option<&mut [f32]>,
        dweight: &mut [f32],
        dbias: Option<&mut [f32]>,
        dout: &[f32],
        inp: &[f32],
        weight: &[f32],
        n: usize,
        c: usize,
        oc: usize,
    ) -> Result<()> {
        self.cpu
            .matmul_backward(dinp, dweight, dbias, dout, inp, weight, n, c, oc)?;
        Ok(())
    }
    fn attention_forward(
        &self,
        out: &mut [f32],
        att: &mut [f32],
        qkv: &[f32],
        b: usize,
        t: usize,
        c: usize,
        nh: usize,
    ) -> Result<()> {
        ops::attention_forward(&EmuExec, dm(out), dm(att), d(qkv), b, t, c, nh, self.bf16);
        Ok(())
    }
    fn attention_backward(
        &self,
        dqkv: &mut [f32],
        scratch: &mut [f32],
        dout: &[f32],
        qkv: &[f32],
        att: &[f32],
        b: usize,
        t: usize,
        c: usize,
        nh: usize,
    ) -> Result<()> {
        ops::attention_backward(
            &EmuExec,
            dm(dqkv),
            dm(scratch),
            d(dout),
            d(qkv),
            d(att),
            b,
            t,
            c,
            nh,
        );
        Ok(())
    }
    fn gelu_forward(&self, out: &mut [f32], inp: &[f32]) -> Result<()> {
        ops::gelu_forward(&EmuExec, dm(out), d(inp), self.bf16);
        Ok(())
    }
    fn gelu_backward(&self, dinp: &mut [f32], inp: &[f32], dout: &[f32]) -> Result<()> {
        ops::gelu_backward(&EmuExec, dm(dinp), d(inp), d(dout));
        Ok(())
    }
    fn residual_forward(&self, out: &mut [f32], a: &[f32], b: &[f32]) -> Result<()> {
        ops::residual_forward(&EmuExec, dm(out), d(a), d(b), self.bf16);
        Ok(())
    }
    fn add_inplace(&self, dx: &mut [f32], dout: &[f32]) -> Result<()> {
        ops::add_inplace(&EmuExec, dm(dx), d(dout));
        Ok(())
    }
    fn crossentropy_forward(
        &self,
        losses: &mut [f32],
        logits: &mut [f32],
        targets: &[u32],
        dloss: Option<f32>,
        n: usize,
        v: usize,
    ) -> Result<()> {
        ops::crossentropy_forward(&EmuExec, dm(losses), dm(logits), targets, dloss, n, v);
        Ok(())
    }
    fn rotation_index(&self, index: Vec<u32>, _n: usize, src_len: usize) -> Result<IndexList> {
        IndexList::new(index, src_len)
    }
    fn rotation_index_list(&self, index: &IndexList) -> Vec<u32> {
        index.list().to_vec()
    }
    fn rotate(
        &self,
        out: &mut [f32],
        inp: &[f32],
        index: &IndexList,
        r: &[f32],
        nb: usize,
        n: usize,
    ) -> Result<()> {
        ops::rotate_or_unrotate(&EmuExec, false, dm(out), d(inp), blocks(index, r, nb, n));
        Ok(())
    }
    fn unrotate(
        &self,
        out: &mut [f32],
        inp: &[f32],
        index: &IndexList,
        r: &[f32],
        nb: usize,
        n: usize,
    ) -> Result<()> {
        ops::rotate_or_unrotate(&EmuExec, true, dm(out), d(inp), blocks(index, r, nb, n));
        Ok(())
    }
    fn rotate_adam_direction(
        &self,
        u: &mut [f32],
        m: &mut [f32],
        v: &mut [f32],
        grads: &[f32],
        index: &IndexList,
        r: &[f32],
        nb: usize,
        n: usize,
        hp: AdamStep,
    ) -> Result<()> {
        let rb = blocks(index, r, nb, n);
        ops::rotate_adam_direction(&EmuExec, dm(u), dm(m), dm(v), d(grads), rb, hp);
        Ok(())
    }
    fn unrotate_apply_update(
        &self,
        params: &mut [f32],
        u: &[f32],
        index: &IndexList,
        r: &[f32],
        nb: usize,
        n: usize,
        lr: f64,
    ) -> Result<()> {
        let rb = blocks(index, r, nb, n);
        ops::unrotate_apply_update(&EmuExec, dm(params), d(u), rb, lr);
        Ok(())
    }
    fn adamw_step(
        &self,
        params: &mut [f32],
        m: &mut [f32],
        v: &mut [f32],
        grads: &[f32],
        hp: AdamStep,
    ) -> Result<()> {
        ops::adamw_step(&EmuExec, dm(params), dm(m), dm(v), d(grads), hp);
        Ok(())
    }
    fn sgd_step(
        &self,
        params: &mut [f32],
        momentum_buf: &mut [f32],
        grads: &[f32],
        lr: f64,
        momentum: f64,
        weight_decay: f64,
    ) -> Result<()> {
        ops::sgd_step(
            &EmuExec,
            dm(params),
            dm(momentum_buf),
            d(grads),
            lr,
            momentum,
            weight_decay,
        );
        Ok(())
    }
    fn adam_direction_step(
        &self,
        u: &mut [f32],
        m: &mut [f32],
        v: &mut [f32],
        grads: &[f32],
        hp: AdamStep,
    ) -> Result<()> {
        ops::adam_direction_step(&EmuExec, dm(u), dm(m), dm(v), d(grads), hp);
        Ok(())
    }
    fn sgd_direction_step(
        &self,
        u: &mut [f32],
        momentum_buf: &mut [f32],
        grads: &[f32],
        momentum: f64,
    ) -> Result<()> {
        ops::sgd_direction_step(&EmuExec, dm(u), dm(momentum_buf), d(grads), momentum);
        Ok(())
    }
    fn block_mean_squares(&self, out: &mut [f32], x: &[f32], block: usize) -> Result<()> {
        ops::block_mean_squares(&EmuExec, dm(out), d(x), block);
        Ok(())
    }
    fn ema_inplace(&self, v: &mut [f32], s: &[f32], beta2: f64) -> Result<()> {
        ops::ema_inplace(&EmuExec, dm(v), d(s), beta2);
        Ok(())
    }
    fn block_adam_direction_step(
        &self,
        u: &mut [f32],
        m: &mut [f32],
        v: &[f32],
        grads: &[f32],
        block: usize,
        hp: AdamStep,
    ) -> Result<()> {
        ops::block_adam_direction_step(&EmuExec, dm(u), dm(m), d(v), d(grads), block, hp);
        Ok(())
    }
    fn apply_update(
        &self,
        params: &mut [f32],
        u: &[f32],
        lr: f64,
        weight_decay: f64,
    ) -> Result<()> {
        ops::apply_update(&EmuExec, dm(params), d(u), lr, weight_decay);
        Ok(())
    }
}
