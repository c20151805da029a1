//! The emulated CUDA backend: every op of [`Backend`] runs the project's CUDA kernels (`kernels/*.cu`)
//! through the CPU emulator (`kernels/emu/`), each launch under both thread orders with bit-identical
//! outputs required ([`launch::launch_both_orders`]). It exists for tests: it checks the kernels' math
//! against the CPU backend and the f64 reference, and a whole training step through the kernels.
//!
//! GEMMs (`matmul_forward`, `matmul_backward`, `gemm`) stay on the CPU (faer, through
//! [`CpuBackend<f32>`]): on a GPU they are cuBLAS calls, which the emulator does not emulate. Buffers are
//! host `Vec<f32>`; `--precision bf16` is the CPU backend's emulation (activations stored rounded to bf16,
//! by the kernels' `store_act`), so the two backends compute the same function.
//! Launch geometry mirrors the CUDA backend's (each kernel file's header states it).

pub mod launch;

use super::cpu::{check_len, CpuBackend};
use super::{AdamStep, Backend};
use crate::error::Result;
use crate::kernels::{EmuArg, Kernel};
use launch::{launch_both_orders, Geometry, OutBuf};
use std::ops::Range;

/// Threads per block of the elementwise and per-row kernels (the kernels' `__launch_bounds__(256)`).
pub const BLOCK: u32 = 256;
/// Elements per block of `reduce.cu: sum_squares_partial` (`REDUCE_CHUNK`).
pub const REDUCE_CHUNK: usize = 65536;
/// Output tile of `block_gemm.cuh` (rows × columns).
pub const GEMM_TILE: usize = 64;

/// The AdamW coefficients of one step in f32 (`struct AdamParams` in `kernels/adamw.cu`), converted from
/// [`AdamStep`] exactly as the CPU backend's `AdamCoeffs` does (1 − β and 1 − lr·λ formed in f64 first).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdamParams {
    pub lr: f32,
    pub beta1: f32,
    pub one_minus_beta1: f32,
    pub beta2: f32,
    pub one_minus_beta2: f32,
    pub eps: f32,
    pub bc1: f32,
    pub bc2: f32,
    pub decay: f32,
}

impl AdamParams {
    /// The f32 coefficients of `hp`.
    pub fn new(hp: &AdamStep) -> Self {
        AdamParams {
            lr: hp.lr as f32,
            beta1: hp.beta1 as f32,
            one_minus_beta1: (1.0 - hp.beta1) as f32,
            beta2: hp.beta2 as f32,
            one_minus_beta2: (1.0 - hp.beta2) as f32,
            eps: hp.eps as f32,
            bc1: hp.bias_correction1 as f32,
            bc2: hp.bias_correction2 as f32,
            decay: (1.0 - hp.lr * hp.weight_decay) as f32,
        }
    }
}

/// `x` as a CUDA `int` dimension (panics with the op and name if it does not fit).
#[track_caller]
fn dim(op: &str, name: &str, x: usize) -> i32 {
    i32::try_from(x).unwrap_or_else(|_| panic!("{op}: {name} = {x} does not fit a CUDA int"))
}

/// Runs `kernel` on the emulator under both orders; panics with the emulator's message on failure (like
/// the CPU backend's shape checks: a failing kernel is a bug, not a recoverable condition).
///
/// # Safety
/// As [`launch_both_orders`].
#[track_caller]
unsafe fn run(kernel: Kernel, geo: Geometry, outs: &[OutBuf], args: &[EmuArg]) {
    // SAFETY: forwarded contract.
    if let Err(e) = unsafe { launch_both_orders(kernel, geo, outs, args) } {
        panic!("{e}");
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

/// A flat elementwise launch: one thread per element, 256-thread blocks.
fn flat(n: usize) -> Geometry {
    Geometry::linear(n, BLOCK)
}

/// One warp per row, 8 rows per 256-thread block.
fn warp_rows(rows: usize) -> Geometry {
    Geometry::blocks(rows.div_ceil((BLOCK / 32) as usize), BLOCK)
}

/// The block-rotation GEMM grid of `block_gemm.cuh`.
fn gemm_grid(nb: usize, n: usize) -> Geometry {
    Geometry {
        grid: [
            n.div_ceil(GEMM_TILE).max(1) as u32,
            nb.div_ceil(GEMM_TILE).max(1) as u32,
            1,
        ],
        block: [BLOCK, 1, 1],
        smem: 0,
    }
}

/// Panics unless every index is < `len` (an out-of-range index would be an out-of-bounds access).
#[track_caller]
fn check_index(op: &str, index: &[u32], len: usize) {
    if let Some((pos, &i)) = index.iter().enumerate().find(|(_, &i)| i as usize >= len) {
        panic!("{op}: index[{pos}] = {i} is out of bounds for {len} elements");
    }
}

impl Backend for EmuBackend {
    type T = f32;
    type Buf = Vec<f32>;
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
        super::cpu::split_ranges_mut(buf.as_mut_slice(), ranges)
    }

    fn fill(&self, out: &mut [f32], value: f32) {
        let (p, n) = (out.as_mut_ptr(), out.len() as i64);
        // SAFETY: the kernel writes out[0..n) through p, which covers exactly `out`.
        unsafe {
            run(
                Kernel::Fill,
                flat(out.len()),
                &[OutBuf::new("out", p, out.len())],
                &[EmuArg::of(&p), EmuArg::of(&value), EmuArg::of(&n)],
            )
        }
    }
    fn scale(&self, out: &mut [f32], s: f32) {
        let (p, n) = (out.as_mut_ptr(), out.len() as i64);
        // SAFETY: the kernel reads and writes out[0..n) through p.
        unsafe {
            run(
                Kernel::Scale,
                flat(out.len()),
                &[OutBuf::new("out", p, out.len())],
                &[EmuArg::of(&p), EmuArg::of(&s), EmuArg::of(&n)],
            )
        }
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
    ) {
        self.cpu
            .gemm(c, a, b, m, n, k, trans_a, trans_b, accumulate)
    }
    fn sum_squares(&self, x: &[f32]) -> f64 {
        let parts = x.len().div_ceil(REDUCE_CHUNK).max(1);
        let mut partial = vec![0.0f64; parts];
        let mut out = [0.0f64; 1];
        let (pp, xp, n) = (partial.as_mut_ptr(), x.as_ptr(), x.len() as i64);
        // SAFETY: block i reads x[i·CHUNK ..] below n and writes partial[i], i < parts.
        unsafe {
            run(
                Kernel::SumSquaresPartial,
                Geometry::blocks(parts, BLOCK),
                &[OutBuf::new("partial", pp, parts)],
                &[EmuArg::of(&pp), EmuArg::of(&xp), EmuArg::of(&n)],
            )
        }
        let (op, np) = (out.as_mut_ptr(), parts as i32);
        let cpp = pp as *const f64;
        // SAFETY: one block reads partial[0..parts) and writes out[0].
        unsafe {
            run(
                Kernel::SumPartials,
                Geometry::blocks(1, 1024),
                &[OutBuf::new("out", op, 1)],
                &[EmuArg::of(&op), EmuArg::of(&cpp), EmuArg::of(&np)],
            )
        }
        out[0]
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
    ) {
        let op = "encoder_forward";
        check_len(op, "out", out.len(), b * t * c);
        check_len(op, "tokens", tokens.len(), b * t);
        assert!(wpe.len() >= t * c && c > 0, "{op}: wpe too short or C = 0");
        check_index(op, tokens, wte.len() / c);
        let (op_, tp, wtp, wpp) = (
            out.as_mut_ptr(),
            tokens.as_ptr(),
            wte.as_ptr(),
            wpe.as_ptr(),
        );
        let (bt, ti, ci, bf) = (
            dim(op, "B·T", b * t),
            dim(op, "T", t),
            dim(op, "C", c),
            self.bf16 as i32,
        );
        // SAFETY: lengths checked above; the kernel writes out[0..B·T·C) and reads in-range rows.
        unsafe {
            run(
                Kernel::EncoderForward,
                flat(out.len()),
                &[OutBuf::new("out", op_, out.len())],
                &[
                    EmuArg::of(&op_),
                    EmuArg::of(&tp),
                    EmuArg::of(&wtp),
                    EmuArg::of(&wpp),
                    EmuArg::of(&bt),
                    EmuArg::of(&ti),
                    EmuArg::of(&ci),
                    EmuArg::of(&bf),
                ],
            )
        }
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
    ) {
        let op = "encoder_backward";
        check_len(op, "dout", dout.len(), b * t * c);
        check_len(op, "tokens", tokens.len(), b * t);
        assert!(
            dwpe.len() >= t * c && c > 0,
            "{op}: dwpe too short or C = 0"
        );
        check_index(op, tokens, dwte.len() / c);
        let (bi, ti, ci) = (dim(op, "B", b), dim(op, "T", t), dim(op, "C", c));
        let (dpp, gp) = (dwpe.as_mut_ptr(), dout.as_ptr());
        // SAFETY: the kernel updates dwpe[0..T·C) and reads dout rows < B·T.
        unsafe {
            run(
                Kernel::EncoderBackwardWpe,
                flat(t * c),
                &[OutBuf::new("dwpe", dpp, t * c)],
                &[
                    EmuArg::of(&dpp),
                    EmuArg::of(&gp),
                    EmuArg::of(&bi),
                    EmuArg::of(&ti),
                    EmuArg::of(&ci),
                ],
            )
        }
        // Runs of equal tokens over positions sorted by (token, position): the CPU backend's order.
        let mut order: Vec<u32> = (0..tokens.len() as u32).collect();
        order.sort_by_key(|&i| (tokens[i as usize], i));
        let mut runs = vec![0u32];
        for j in 1..order.len() {
            if tokens[order[j] as usize] != tokens[order[j - 1] as usize] {
                runs.push(j as u32);
            }
        }
        runs.push(order.len() as u32);
        let nruns = if order.is_empty() { 0 } else { runs.len() - 1 };
        if nruns == 0 {
            return;
        }
        let (dtp, tp, orp, rp, nr) = (
            dwte.as_mut_ptr(),
            tokens.as_ptr(),
            order.as_ptr(),
            runs.as_ptr(),
            nruns as i32,
        );
        // SAFETY: tokens are checked < vocab; the kernel updates dwte rows of those tokens only.
        unsafe {
            run(
                Kernel::EncoderBackwardWte,
                flat(nruns * c),
                &[OutBuf::new("dwte", dtp, dwte.len())],
                &[
                    EmuArg::of(&dtp),
                    EmuArg::of(&gp),
                    EmuArg::of(&tp),
                    EmuArg::of(&orp),
                    EmuArg::of(&rp),
                    EmuArg::of(&nr),
                    EmuArg::of(&ci),
                ],
            )
        }
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
    ) {
        let op = "layernorm_forward";
        check_len(op, "out", out.len(), n * c);
        check_len(op, "inp", inp.len(), n * c);
        check_len(op, "mean", mean.len(), n);
        check_len(op, "rstd", rstd.len(), n);
        check_len(op, "weight", weight.len(), c);
        if let Some(bb) = bias {
            check_len(op, "bias", bb.len(), c);
        }
        let (o, mp, rp, xp, wp) = (
            out.as_mut_ptr(),
            mean.as_mut_ptr(),
            rstd.as_mut_ptr(),
            inp.as_ptr(),
            weight.as_ptr(),
        );
        let bp = bias.map_or(std::ptr::null(), |b| b.as_ptr());
        let (ni, ci, bf) = (dim(op, "N", n), dim(op, "C", c), self.bf16 as i32);
        // SAFETY: lengths checked; the kernel writes rows < N of out, mean, rstd.
        unsafe {
            run(
                Kernel::LayernormForward,
                warp_rows(n),
                &[
                    OutBuf::new("out", o, out.len()),
                    OutBuf::new("mean", mp, n),
                    OutBuf::new("rstd", rp, n),
                ],
                &[
                    EmuArg::of(&o),
                    EmuArg::of(&mp),
                    EmuArg::of(&rp),
                    EmuArg::of(&xp),
                    EmuArg::of(&wp),
                    EmuArg::of(&bp),
                    EmuArg::of(&ni),
                    EmuArg::of(&ci),
                    EmuArg::of(&bf),
                ],
            )
        }
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
    ) {
        let op = "layernorm_backward";
        check_len(op, "dinp", dinp.len(), n * c);
        check_len(op, "dout", dout.len(), n * c);
        check_len(op, "inp", inp.len(), n * c);
        check_len(op, "dweight", dweight.len(), c);
        check_len(op, "weight", weight.len(), c);
        check_len(op, "mean", mean.len(), n);
        check_len(op, "rstd", rstd.len(), n);
        let (dp, gp, xp, wp, mp, rp) = (
            dinp.as_mut_ptr(),
            dout.as_ptr(),
            inp.as_ptr(),
            weight.as_ptr(),
            mean.as_ptr(),
            rstd.as_ptr(),
        );
        let (ni, ci) = (dim(op, "N", n), dim(op, "C", c));
        // SAFETY: lengths checked; the kernel updates rows < N of dinp.
        unsafe {
            run(
                Kernel::LayernormBackwardDinp,
                warp_rows(n),
                &[OutBuf::new("dinp", dp, dinp.len())],
                &[
                    EmuArg::of(&dp),
                    EmuArg::of(&gp),
                    EmuArg::of(&xp),
                    EmuArg::of(&wp),
                    EmuArg::of(&mp),
                    EmuArg::of(&rp),
                    EmuArg::of(&ni),
                    EmuArg::of(&ci),
                ],
            )
        }
        let dwp = dweight.as_mut_ptr();
        let (dbp, mut outs) = match dbias {
            Some(db) => {
                check_len(op, "dbias", db.len(), c);
                let p = db.as_mut_ptr();
                (p, vec![OutBuf::new("dbias", p, c)])
            }
            None => (std::ptr::null_mut(), vec![]),
        };
        outs.push(OutBuf::new("dweight", dwp, c));
        // SAFETY: lengths checked; the kernel updates dweight[0..C) and dbias[0..C) when non-null.
        unsafe {
            run(
                Kernel::LayernormBackwardDweight,
                flat(c),
                &outs,
                &[
                    EmuArg::of(&dwp),
                    EmuArg::of(&dbp),
                    EmuArg::of(&gp),
                    EmuArg::of(&xp),
                    EmuArg::of(&mp),
                    EmuArg::of(&rp),
                    EmuArg::of(&ni),
                    EmuArg::of(&ci),
                ],
            )
        }
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
    ) {
        self.cpu.matmul_forward(out, inp, weight, bias, n, c, oc)
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
    ) {
        self.cpu
            .matmul_backward(dinp, dweight, dbias, dout, inp, weight, n, c, oc)
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
    ) {
        let op = "attention_forward";
        assert!(
            nh > 0 && c.is_multiple_of(nh),
            "{op}: C = {c} is not a multiple of NH = {nh}"
        );
        check_len(op, "out", out.len(), b * t * c);
        check_len(op, "att", att.len(), b * nh * t * t);
        check_len(op, "qkv", qkv.len(), b * t * 3 * c);
        let (ap, qp, o) = (att.as_mut_ptr(), qkv.as_ptr(), out.as_mut_ptr());
        let cap = ap as *const f32;
        let (bi, ti, ci, nhi, bf) = (
            dim(op, "B", b),
            dim(op, "T", t),
            dim(op, "C", c),
            dim(op, "NH", nh),
            self.bf16 as i32,
        );
        // SAFETY: lengths checked; the kernel writes every row of att.
        unsafe {
            run(
                Kernel::AttentionSoftmaxForward,
                warp_rows(b * nh * t),
                &[OutBuf::new("att", ap, att.len())],
                &[
                    EmuArg::of(&ap),
                    EmuArg::of(&qp),
                    EmuArg::of(&bi),
                    EmuArg::of(&ti),
                    EmuArg::of(&ci),
                    EmuArg::of(&nhi),
                ],
            )
        }
        // SAFETY: lengths checked; the kernel writes out[0..B·T·C) and reads att (no longer written).
        unsafe {
            run(
                Kernel::AttentionValueForward,
                flat(b * t * c),
                &[OutBuf::new("out", o, out.len())],
                &[
                    EmuArg::of(&o),
                    EmuArg::of(&cap),
                    EmuArg::of(&qp),
                    EmuArg::of(&bi),
                    EmuArg::of(&ti),
                    EmuArg::of(&ci),
                    EmuArg::of(&nhi),
                    EmuArg::of(&bf),
                ],
            )
        }
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
    ) {
        let op = "attention_backward";
        assert!(
            nh > 0 && c.is_multiple_of(nh),
            "{op}: C = {c} is not a multiple of NH = {nh}"
        );
        check_len(op, "dout", dout.len(), b * t * c);
        check_len(op, "att", att.len(), b * nh * t * t);
        check_len(op, "scratch", scratch.len(), b * nh * t * t);
        check_len(op, "qkv", qkv.len(), b * t * 3 * c);
        check_len(op, "dqkv", dqkv.len(), b * t * 3 * c);
        let (sp, gp, qp, ap, dp) = (
            scratch.as_mut_ptr(),
            dout.as_ptr(),
            qkv.as_ptr(),
            att.as_ptr(),
            dqkv.as_mut_ptr(),
        );
        let csp = sp as *const f32;
        let (bi, ti, ci, nhi) = (
            dim(op, "B", b),
            dim(op, "T", t),
            dim(op, "C", c),
            dim(op, "NH", nh),
        );
        // SAFETY: lengths checked; the kernel writes every row of scratch.
        unsafe {
            run(
                Kernel::AttentionBackwardDatt,
                warp_rows(b * nh * t),
                &[OutBuf::new("scratch", sp, scratch.len())],
                &[
                    EmuArg::of(&sp),
                    EmuArg::of(&gp),
                    EmuArg::of(&qp),
                    EmuArg::of(&ap),
                    EmuArg::of(&bi),
                    EmuArg::of(&ti),
                    EmuArg::of(&ci),
                    EmuArg::of(&nhi),
                ],
            )
        }
        // SAFETY: lengths checked; the kernel updates dqkv[0..B·T·3C).
        unsafe {
            run(
                Kernel::AttentionBackwardDqkv,
                flat(b * t * c),
                &[OutBuf::new("dqkv", dp, dqkv.len())],
                &[
                    EmuArg::of(&dp),
                    EmuArg::of(&csp),
                    EmuArg::of(&gp),
                    EmuArg::of(&qp),
                    EmuArg::of(&ap),
                    EmuArg::of(&bi),
                    EmuArg::of(&ti),
                    EmuArg::of(&ci),
                    EmuArg::of(&nhi),
                ],
            )
        }
    }
    fn gelu_forward(&self, out: &mut [f32], inp: &[f32]) {
        check_len("gelu_forward", "inp", inp.len(), out.len());
        let (o, x, n, bf) = (
            out.as_mut_ptr(),
            inp.as_ptr(),
            out.len() as i64,
            self.bf16 as i32,
        );
        // SAFETY: equal lengths checked; elementwise over n.
        unsafe {
            run(
                Kernel::GeluForward,
                flat(out.len()),
                &[OutBuf::new("out", o, out.len())],
                &[
                    EmuArg::of(&o),
                    EmuArg::of(&x),
                    EmuArg::of(&n),
                    EmuArg::of(&bf),
                ],
            )
        }
    }
    fn gelu_backward(&self, dinp: &mut [f32], inp: &[f32], dout: &[f32]) {
        check_len("gelu_backward", "inp", inp.len(), dinp.len());
        check_len("gelu_backward", "dout", dout.len(), dinp.len());
        let (d, x, g, n) = (
            dinp.as_mut_ptr(),
            inp.as_ptr(),
            dout.as_ptr(),
            dinp.len() as i64,
        );
        // SAFETY: equal lengths checked; elementwise over n.
        unsafe {
            run(
                Kernel::GeluBackward,
                flat(dinp.len()),
                &[OutBuf::new("dinp", d, dinp.len())],
                &[
                    EmuArg::of(&d),
                    EmuArg::of(&x),
                    EmuArg::of(&g),
                    EmuArg::of(&n),
                ],
            )
        }
    }
    fn residual_forward(&self, out: &mut [f32], a: &[f32], b: &[f32]) {
        check_len("residual_forward", "a", a.len(), out.len());
        check_len("residual_forward", "b", b.len(), out.len());
        let (o, ap, bp, n, bf) = (
            out.as_mut_ptr(),
            a.as_ptr(),
            b.as_ptr(),
            out.len() as i64,
            self.bf16 as i32,
        );
        // SAFETY: equal lengths checked; elementwise over n.
        unsafe {
            run(
                Kernel::ResidualForward,
                flat(out.len()),
                &[OutBuf::new("out", o, out.len())],
                &[
                    EmuArg::of(&o),
                    EmuArg::of(&ap),
                    EmuArg::of(&bp),
                    EmuArg::of(&n),
                    EmuArg::of(&bf),
                ],
            )
        }
    }
    fn add_inplace(&self, dx: &mut [f32], dout: &[f32]) {
        check_len("add_inplace", "dout", dout.len(), dx.len());
        let (d, g, n) = (dx.as_mut_ptr(), dout.as_ptr(), dx.len() as i64);
        // SAFETY: equal lengths checked; elementwise over n.
        unsafe {
            run(
                Kernel::AddInplace,
                flat(dx.len()),
                &[OutBuf::new("dx", d, dx.len())],
                &[EmuArg::of(&d), EmuArg::of(&g), EmuArg::of(&n)],
            )
        }
    }
    fn crossentropy_forward(
        &self,
        losses: &mut [f32],
        logits: &mut [f32],
        targets: &[u32],
        dloss: Option<f32>,
        n: usize,
        v: usize,
    ) {
        let op = "crossentropy_forward";
        check_len(op, "losses", losses.len(), n);
        check_len(op, "logits", logits.len(), n * v);
        check_len(op, "targets", targets.len(), n);
        check_index(op, targets, v);
        if n == 0 {
            return;
        }
        let (lp, xp, tp) = (losses.as_mut_ptr(), logits.as_mut_ptr(), targets.as_ptr());
        let (s, has) = (dloss.unwrap_or(0.0), dloss.is_some() as i32);
        let (ni, vi) = (dim(op, "N", n), dim(op, "V", v));
        // SAFETY: lengths and targets checked; block i reads and writes row i of logits and losses[i].
        unsafe {
            run(
                Kernel::CrossentropyForward,
                Geometry::blocks(n, BLOCK),
                &[
                    OutBuf::new("losses", lp, n),
                    OutBuf::new("logits", xp, logits.len()),
                ],
                &[
                    EmuArg::of(&lp),
                    EmuArg::of(&xp),
                    EmuArg::of(&tp),
                    EmuArg::of(&s),
                    EmuArg::of(&has),
                    EmuArg::of(&ni),
                    EmuArg::of(&vi),
                ],
            )
        }
    }

    fn rotate(&self, out: &mut [f32], inp: &[f32], index: &[u32], r: &[f32], nb: usize, n: usize) {
        let op = "rotate";
        check_len(op, "out", out.len(), nb * n);
        check_len(op, "index", index.len(), nb * n);
        check_len(op, "r", r.len(), n * n);
        check_index(op, index, inp.len());
        if nb == 0 || n == 0 {
            return;
        }
        let (o, x, ip, rp) = (out.as_mut_ptr(), inp.as_ptr(), index.as_ptr(), r.as_ptr());
        let (nbl, ni) = (nb as i64, dim(op, "N", n));
        // SAFETY: lengths and indices checked; the kernel writes out[0..NB·N).
        unsafe {
            run(
                Kernel::RotateGather,
                gemm_grid(nb, n),
                &[OutBuf::new("out", o, out.len())],
                &[
                    EmuArg::of(&o),
                    EmuArg::of(&x),
                    EmuArg::of(&ip),
                    EmuArg::of(&rp),
                    EmuArg::of(&nbl),
                    EmuArg::of(&ni),
                ],
            )
        }
    }
    fn unrotate(
        &self,
        out: &mut [f32],
        inp: &[f32],
        index: &[u32],
        r: &[f32],
        nb: usize,
        n: usize,
    ) {
        let op = "unrotate";
        check_len(op, "inp", inp.len(), nb * n);
        check_len(op, "index", index.len(), nb * n);
        check_len(op, "r", r.len(), n * n);
        check_index(op, index, out.len());
        if nb == 0 || n == 0 {
            return;
        }
        let (o, x, ip, rp) = (out.as_mut_ptr(), inp.as_ptr(), index.as_ptr(), r.as_ptr());
        let (nbl, ni) = (nb as i64, dim(op, "N", n));
        // SAFETY: lengths and indices checked; the kernel writes out at the indexed positions only.
        unsafe {
            run(
                Kernel::UnrotateScatter,
                gemm_grid(nb, n),
                &[OutBuf::new("out", o, out.len())],
                &[
                    EmuArg::of(&o),
                    EmuArg::of(&x),
                    EmuArg::of(&ip),
                    EmuArg::of(&rp),
                    EmuArg::of(&nbl),
                    EmuArg::of(&ni),
                ],
            )
        }
    }

    fn adamw_step(
        &self,
        params: &mut [f32],
        m: &mut [f32],
        v: &mut [f32],
        grads: &[f32],
        hp: AdamStep,
    ) {
        let len = params.len();
        check_len("adamw_step", "m", m.len(), len);
        check_len("adamw_step", "v", v.len(), len);
        check_len("adamw_step", "grads", grads.len(), len);
        let (pp, mp, vp, gp) = (
            params.as_mut_ptr(),
            m.as_mut_ptr(),
            v.as_mut_ptr(),
            grads.as_ptr(),
        );
        let (k, n) = (AdamParams::new(&hp), len as i64);
        // SAFETY: equal lengths checked; elementwise over n.
        unsafe {
            run(
                Kernel::AdamwStep,
                flat(len),
                &[
                    OutBuf::new("params", pp, len),
                    OutBuf::new("m", mp, len),
                    OutBuf::new("v", vp, len),
                ],
                &[
                    EmuArg::of(&pp),
                    EmuArg::of(&mp),
                    EmuArg::of(&vp),
                    EmuArg::of(&gp),
                    EmuArg::of(&k),
                    EmuArg::of(&n),
                ],
            )
        }
    }
    fn sgd_step(
        &self,
        params: &mut [f32],
        momentum_buf: &mut [f32],
        grads: &[f32],
        lr: f64,
        momentum: f64,
        weight_decay: f64,
    ) {
        let len = params.len();
        check_len("sgd_step", "momentum_buf", momentum_buf.len(), len);
        check_len("sgd_step", "grads", grads.len(), len);
        let (pp, bp, gp) = (
            params.as_mut_ptr(),
            momentum_buf.as_mut_ptr(),
            grads.as_ptr(),
        );
        let (lr32, mu, decay, n) = (
            lr as f32,
            momentum as f32,
            (1.0 - lr * weight_decay) as f32,
            len as i64,
        );
        // SAFETY: equal lengths checked; elementwise over n.
        unsafe {
            run(
                Kernel::SgdStep,
                flat(len),
                &[
                    OutBuf::new("params", pp, len),
                    OutBuf::new("momentum_buf", bp, len),
                ],
                &[
                    EmuArg::of(&pp),
                    EmuArg::of(&bp),
                    EmuArg::of(&gp),
                    EmuArg::of(&lr32),
                    EmuArg::of(&mu),
                    EmuArg::of(&decay),
                    EmuArg::of(&n),
                ],
            )
        }
    }
    fn adam_direction_step(
        &self,
        u: &mut [f32],
        m: &mut [f32],
        v: &mut [f32],
        grads: &[f32],
        hp: AdamStep,
    ) {
        let len = u.len();
        check_len("adam_direction_step", "m", m.len(), len);
        check_len("adam_direction_step", "v", v.len(), len);
        check_len("adam_direction_step", "grads", grads.len(), len);
        let (up, mp, vp, gp) = (
            u.as_mut_ptr(),
            m.as_mut_ptr(),
            v.as_mut_ptr(),
            grads.as_ptr(),
        );
        let (k, n) = (AdamParams::new(&hp), len as i64);
        // SAFETY: equal lengths checked; elementwise over n.
        unsafe {
            run(
                Kernel::AdamDirectionStep,
                flat(len),
                &[
                    OutBuf::new("u", up, len),
                    OutBuf::new("m", mp, len),
                    OutBuf::new("v", vp, len),
                ],
                &[
                    EmuArg::of(&up),
                    EmuArg::of(&mp),
                    EmuArg::of(&vp),
                    EmuArg::of(&gp),
                    EmuArg::of(&k),
                    EmuArg::of(&n),
                ],
            )
        }
    }
    fn sgd_direction_step(
        &self,
        u: &mut [f32],
        momentum_buf: &mut [f32],
        grads: &[f32],
        momentum: f64,
    ) {
        let len = u.len();
        check_len(
            "sgd_direction_step",
            "momentum_buf",
            momentum_buf.len(),
            len,
        );
        check_len("sgd_direction_step", "grads", grads.len(), len);
        let (up, bp, gp) = (u.as_mut_ptr(), momentum_buf.as_mut_ptr(), grads.as_ptr());
        let (mu, n) = (momentum as f32, len as i64);
        // SAFETY: equal lengths checked; elementwise over n.
        unsafe {
            run(
                Kernel::SgdDirectionStep,
                flat(len),
                &[
                    OutBuf::new("u", up, len),
                    OutBuf::new("momentum_buf", bp, len),
                ],
                &[
                    EmuArg::of(&up),
                    EmuArg::of(&bp),
                    EmuArg::of(&gp),
                    EmuArg::of(&mu),
                    EmuArg::of(&n),
                ],
            )
        }
    }
    fn block_mean_squares(&self, out: &mut [f32], x: &[f32], block: usize) {
        assert!(block > 0, "block_mean_squares: block must be > 0");
        check_len("block_mean_squares", "x", x.len(), out.len() * block);
        let (o, xp, bl, nb) = (out.as_mut_ptr(), x.as_ptr(), block as i64, out.len() as i64);
        // SAFETY: lengths checked; block i writes out[i] from x[i·block ..].
        unsafe {
            run(
                Kernel::BlockMeanSquares,
                Geometry::blocks(out.len(), BLOCK),
                &[OutBuf::new("out", o, out.len())],
                &[
                    EmuArg::of(&o),
                    EmuArg::of(&xp),
                    EmuArg::of(&bl),
                    EmuArg::of(&nb),
                ],
            )
        }
    }
    fn ema_inplace(&self, v: &mut [f32], s: &[f32], beta2: f64) {
        check_len("ema_inplace", "s", s.len(), v.len());
        let (vp, sp, b, ob, n) = (
            v.as_mut_ptr(),
            s.as_ptr(),
            beta2 as f32,
            (1.0 - beta2) as f32,
            v.len() as i64,
        );
        // SAFETY: equal lengths checked; elementwise over n.
        unsafe {
            run(
                Kernel::EmaInplace,
                flat(v.len()),
                &[OutBuf::new("v", vp, v.len())],
                &[
                    EmuArg::of(&vp),
                    EmuArg::of(&sp),
                    EmuArg::of(&b),
                    EmuArg::of(&ob),
                    EmuArg::of(&n),
                ],
            )
        }
    }
    fn block_adam_direction_step(
        &self,
        u: &mut [f32],
        m: &mut [f32],
        v: &[f32],
        grads: &[f32],
        block: usize,
        hp: AdamStep,
    ) {
        let len = u.len();
        assert!(block > 0, "block_adam_direction_step: block must be > 0");
        check_len("block_adam_direction_step", "m", m.len(), len);
        check_len("block_adam_direction_step", "grads", grads.len(), len);
        check_len("block_adam_direction_step", "v", v.len() * block, len);
        let (up, mp, vp, gp) = (u.as_mut_ptr(), m.as_mut_ptr(), v.as_ptr(), grads.as_ptr());
        let (bl, k, n) = (block as i64, AdamParams::new(&hp), len as i64);
        // SAFETY: lengths checked; elementwise over n, v read at i / block < v.len().
        unsafe {
            run(
                Kernel::BlockAdamDirectionStep,
                flat(len),
                &[OutBuf::new("u", up, len), OutBuf::new("m", mp, len)],
                &[
                    EmuArg::of(&up),
                    EmuArg::of(&mp),
                    EmuArg::of(&vp),
                    EmuArg::of(&gp),
                    EmuArg::of(&bl),
                    EmuArg::of(&k),
                    EmuArg::of(&n),
                ],
            )
        }
    }
    fn apply_update(&self, params: &mut [f32], u: &[f32], lr: f64, weight_decay: f64) {
        check_len("apply_update", "u", u.len(), params.len());
        let (pp, up, lr32, decay, n) = (
            params.as_mut_ptr(),
            u.as_ptr(),
            lr as f32,
            (1.0 - lr * weight_decay) as f32,
            params.len() as i64,
        );
        // SAFETY: equal lengths checked; elementwise over n.
        unsafe {
            run(
                Kernel::ApplyUpdate,
                flat(params.len()),
                &[OutBuf::new("params", pp, params.len())],
                &[
                    EmuArg::of(&pp),
                    EmuArg::of(&up),
                    EmuArg::of(&lr32),
                    EmuArg::of(&decay),
                    EmuArg::of(&n),
                ],
            )
        }
    }
}
