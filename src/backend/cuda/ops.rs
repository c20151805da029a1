//! The launch plan of every op, shared by the emulated backend (`backend::emu`, tested) and the CUDA
//! backend (`backend::cuda::device`, never run: no GPU was available): shape checks, launch geometry and
//! the kernel's argument list, once. Tensors are [`Dev`] (an address and a length): host addresses under
//! the emulator, device addresses on a GPU; small host arrays (tokens, targets, index lists) are staged by
//! the [`Exec`]. Geometry per kernel is the one its `.cu` file documents.

use super::super::cpu::check_len;
use super::super::AdamStep;
use crate::backend::emu::launch::{Geometry, OutBuf};
use crate::kernels::{EmuArg, Kernel};

/// Threads per block of the elementwise and per-row kernels (the kernels' `__launch_bounds__(256)`).
pub const BLOCK: u32 = 256;
/// Elements per block of `reduce.cu: sum_squares_partial` (`REDUCE_CHUNK`).
pub const REDUCE_CHUNK: usize = 65536;
/// Output tile of `block_gemm.cuh` (rows × columns).
pub const GEMM_TILE: usize = 64;

/// A tensor for a kernel: its address (host or device) and its length in elements. Only the crate's
/// backends build one from a buffer they borrow; outside the crate [`Dev::host`] / [`Dev::host_mut`] are
/// `unsafe` (a `Dev` does not carry the buffer's lifetime).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Dev {
    pub(crate) addr: u64,
    pub(crate) len: usize,
}

impl Dev {
    /// The tensor at a host slice (the emulator's addresses).
    ///
    /// # Safety
    /// `x` must outlive every use of the returned `Dev`, and no `&mut` to it may be used meanwhile.
    pub unsafe fn host<T>(x: &[T]) -> Dev {
        Dev {
            addr: x.as_ptr() as u64,
            len: x.len(),
        }
    }
    /// The tensor at a mutable host slice.
    ///
    /// # Safety
    /// `x` must outlive every use of the returned `Dev`, and no other reference to it may be used
    /// meanwhile.
    pub unsafe fn host_mut<T>(x: &mut [T]) -> Dev {
        Dev {
            addr: x.as_mut_ptr() as u64,
            len: x.len(),
        }
    }
    /// Length in elements.
    pub fn len(&self) -> usize {
        self.len
    }
    /// True when the tensor has no elements.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    /// The output-buffer record of an f32 tensor (what the emulator snapshots and compares).
    fn out(self, name: &'static str) -> OutBuf {
        OutBuf::at(name, self.addr, self.len * 4)
    }
}

/// Where kernels run: the CPU emulator or a CUDA stream.
pub trait Exec {
    /// Keeps a staged host array alive until the op returns.
    type Staged;
    /// Runs `kernel`; panics with the kernel's name on a failed launch (Backend ops return `()`).
    ///
    /// # Safety
    /// `args` must match the kernel's parameters and every address must be valid for what the kernel
    /// accesses at `geo`; `outs` must cover everything it writes.
    unsafe fn launch(&self, kernel: Kernel, geo: Geometry, outs: &[OutBuf], args: &[EmuArg]);
    /// `host` where kernels can read it: its address (emulator), or a device copy (CUDA).
    fn stage_u32(&self, host: &[u32]) -> (u64, Self::Staged);
    /// A zeroed f64 scratch buffer of `n` elements and its address.
    fn scratch_f64(&self, n: usize) -> (u64, Self::Staged);
    /// Reads back `n` f64 from a scratch buffer made by `scratch_f64` (synchronises a device).
    fn read_f64(&self, s: &Self::Staged, n: usize) -> Vec<f64>;
}

/// A flat elementwise launch: one thread per element, 256-thread blocks.
pub fn flat(n: usize) -> Geometry {
    Geometry::linear(n, BLOCK)
}

/// One warp per row, 8 rows per 256-thread block.
pub fn warp_rows(rows: usize) -> Geometry {
    Geometry::blocks(rows.div_ceil((BLOCK / 32) as usize), BLOCK)
}

/// The block-rotation GEMM grid of `block_gemm.cuh`.
pub fn gemm_grid(nb: usize, n: usize) -> Geometry {
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

/// `x` as a CUDA `int` dimension (panics with the op and name if it does not fit).
#[track_caller]
fn dim(op: &str, name: &str, x: usize) -> i32 {
    i32::try_from(x).unwrap_or_else(|_| panic!("{op}: {name} = {x} does not fit a CUDA int"))
}

/// Panics unless every index is < `len` (an out-of-range index would be an out-of-bounds access).
#[track_caller]
pub fn check_index(op: &str, index: &[u32], len: usize) {
    if let Some((pos, &i)) = index.iter().enumerate().find(|(_, &i)| i as usize >= len) {
        panic!("{op}: index[{pos}] = {i} is out of bounds for {len} elements");
    }
}

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

// SAFETY (for every `unsafe` launch below): the lengths of all tensors are checked against the shapes
// first and the index/token arrays against the tensors they index, so every address the kernel forms at
// this geometry is inside a tensor; `outs` lists every tensor the kernel writes; the argument lists follow
// the kernel's parameters (the emulator checks their count and sizes on every call).

/// out = value
pub fn fill<E: Exec>(e: &E, out: Dev, value: f32) {
    let (o, n) = (out.addr, out.len as i64);
    // SAFETY: module comment above.
    unsafe {
        e.launch(
            Kernel::Fill,
            flat(out.len),
            &[out.out("out")],
            &[EmuArg::of(&o), EmuArg::of(&value), EmuArg::of(&n)],
        )
    }
}

/// out *= s
pub fn scale<E: Exec>(e: &E, out: Dev, s: f32) {
    let (o, n) = (out.addr, out.len as i64);
    // SAFETY: module comment above.
    unsafe {
        e.launch(
            Kernel::Scale,
            flat(out.len),
            &[out.out("out")],
            &[EmuArg::of(&o), EmuArg::of(&s), EmuArg::of(&n)],
        )
    }
}

/// Σ x² in f64: per-block partials, then one block sums them in order.
pub fn sum_squares<E: Exec>(e: &E, x: Dev) -> f64 {
    let parts = x.len.div_ceil(REDUCE_CHUNK).max(1);
    let (pp, pk) = e.scratch_f64(parts);
    let (xp, n) = (x.addr, x.len as i64);
    // SAFETY: module comment above; partial has one f64 per block.
    unsafe {
        e.launch(
            Kernel::SumSquaresPartial,
            Geometry::blocks(parts, BLOCK),
            &[OutBuf::at("partial", pp, parts * 8)],
            &[EmuArg::of(&pp), EmuArg::of(&xp), EmuArg::of(&n)],
        )
    }
    let (op, ok) = e.scratch_f64(1);
    let np = parts as i32;
    // SAFETY: module comment above; one block reads `parts` partials and writes out[0].
    unsafe {
        e.launch(
            Kernel::SumPartials,
            Geometry::blocks(1, 1024),
            &[OutBuf::at("out", op, 8)],
            &[EmuArg::of(&op), EmuArg::of(&pp), EmuArg::of(&np)],
        )
    }
    drop(pk);
    e.read_f64(&ok, 1)[0]
}

/// out (B,T,C) = wte[tokens] + wpe[t]
#[allow(clippy::too_many_arguments)]
pub fn encoder_forward<E: Exec>(
    e: &E,
    out: Dev,
    tokens: &[u32],
    wte: Dev,
    wpe: Dev,
    b: usize,
    t: usize,
    c: usize,
    bf16: bool,
) {
    let op = "encoder_forward";
    check_len(op, "out", out.len, b * t * c);
    check_len(op, "tokens", tokens.len(), b * t);
    assert!(wpe.len >= t * c && c > 0, "{op}: wpe too short or C = 0");
    check_index(op, tokens, wte.len / c);
    let (tp, _keep) = e.stage_u32(tokens);
    let (o, wtp, wpp) = (out.addr, wte.addr, wpe.addr);
    let (bt, ti, ci, bf) = (
        dim(op, "B·T", b * t),
        dim(op, "T", t),
        dim(op, "C", c),
        bf16 as i32,
    );
    // SAFETY: module comment above.
    unsafe {
        e.launch(
            Kernel::EncoderForward,
            flat(out.len),
            &[out.out("out")],
            &[
                EmuArg::of(&o),
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

/// dwte[tokens] += dout, dwpe[t] += Σ_b dout (the CPU backend's addition order).
#[allow(clippy::too_many_arguments)]
pub fn encoder_backward<E: Exec>(
    e: &E,
    dwte: Dev,
    dwpe: Dev,
    dout: Dev,
    tokens: &[u32],
    b: usize,
    t: usize,
    c: usize,
) {
    let op = "encoder_backward";
    check_len(op, "dout", dout.len, b * t * c);
    check_len(op, "tokens", tokens.len(), b * t);
    assert!(dwpe.len >= t * c && c > 0, "{op}: dwpe too short or C = 0");
    check_index(op, tokens, dwte.len / c);
    let (bi, ti, ci) = (dim(op, "B", b), dim(op, "T", t), dim(op, "C", c));
    let (dpp, gp) = (dwpe.addr, dout.addr);
    // SAFETY: module comment above.
    unsafe {
        e.launch(
            Kernel::EncoderBackwardWpe,
            flat(t * c),
            &[OutBuf::at("dwpe", dpp, t * c * 4)],
            &[
                EmuArg::of(&dpp),
                EmuArg::of(&gp),
                EmuArg::of(&bi),
                EmuArg::of(&ti),
                EmuArg::of(&ci),
            ],
        )
    }
    // Runs of equal tokens over positions sorted by (token, position).
    let mut order: Vec<u32> = (0..tokens.len() as u32).collect();
    order.sort_by_key(|&i| (tokens[i as usize], i));
    let mut runs = vec![0u32];
    for j in 1..order.len() {
        if tokens[order[j] as usize] != tokens[order[j - 1] as usize] {
            runs.push(j as u32);
        }
    }
    runs.push(order.len() as u32);
    if order.is_empty() {
        return;
    }
    let nruns = runs.len() - 1;
    let (tp, _k1) = e.stage_u32(tokens);
    let (orp, _k2) = e.stage_u32(&order);
    let (rp, _k3) = e.stage_u32(&runs);
    let (dtp, nr) = (dwte.addr, nruns as i32);
    // SAFETY: module comment above.
    unsafe {
        e.launch(
            Kernel::EncoderBackwardWte,
            flat(nruns * c),
            &[dwte.out("dwte")],
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

/// LayerNorm forward (kernels/layernorm.cu).
#[allow(clippy::too_many_arguments)]
pub fn layernorm_forward<E: Exec>(
    e: &E,
    out: Dev,
    mean: Dev,
    rstd: Dev,
    inp: Dev,
    weight: Dev,
    bias: Option<Dev>,
    n: usize,
    c: usize,
    bf16: bool,
) {
    let op = "layernorm_forward";
    check_len(op, "out", out.len, n * c);
    check_len(op, "inp", inp.len, n * c);
    check_len(op, "mean", mean.len, n);
    check_len(op, "rstd", rstd.len, n);
    check_len(op, "weight", weight.len, c);
    if let Some(bb) = bias {
        check_len(op, "bias", bb.len, c);
    }
    let (o, mp, rp, xp, wp) = (out.addr, mean.addr, rstd.addr, inp.addr, weight.addr);
    let bp = bias.map_or(0u64, |b| b.addr);
    let (ni, ci, bf) = (dim(op, "N", n), dim(op, "C", c), bf16 as i32);
    // SAFETY: module comment above.
    unsafe {
        e.launch(
            Kernel::LayernormForward,
            warp_rows(n),
            &[out.out("out"), mean.out("mean"), rstd.out("rstd")],
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

/// LayerNorm backward: dinp, then dweight/dbias (kernels/layernorm.cu).
#[allow(clippy::too_many_arguments)]
pub fn layernorm_backward<E: Exec>(
    e: &E,
    dinp: Dev,
    dweight: Dev,
    dbias: Option<Dev>,
    dout: Dev,
    inp: Dev,
    weight: Dev,
    mean: Dev,
    rstd: Dev,
    n: usize,
    c: usize,
) {
    let op = "layernorm_backward";
    check_len(op, "dinp", dinp.len, n * c);
    check_len(op, "dout", dout.len, n * c);
    check_len(op, "inp", inp.len, n * c);
    check_len(op, "dweight", dweight.len, c);
    check_len(op, "weight", weight.len, c);
    check_len(op, "mean", mean.len, n);
    check_len(op, "rstd", rstd.len, n);
    let (dp, gp, xp, wp, mp, rp) = (
        dinp.addr,
        dout.addr,
        inp.addr,
        weight.addr,
        mean.addr,
        rstd.addr,
    );
    let (ni, ci) = (dim(op, "N", n), dim(op, "C", c));
    // SAFETY: module comment above.
    unsafe {
        e.launch(
            Kernel::LayernormBackwardDinp,
            warp_rows(n),
            &[dinp.out("dinp")],
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
    let mut outs = vec![dweight.out("dweight")];
    let dbp = match dbias {
        Some(db) => {
            check_len(op, "dbias", db.len, c);
            outs.push(db.out("dbias"));
            db.addr
        }
        None => 0,
    };
    let dwp = dweight.addr;
    // SAFETY: module comment above.
    unsafe {
        e.launch(
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

#[track_caller]
fn check_attention(op: &str, att: Dev, qkv: Dev, b: usize, t: usize, c: usize, nh: usize) {
    assert!(
        nh > 0 && c.is_multiple_of(nh),
        "{op}: C = {c} is not a multiple of NH = {nh}"
    );
    check_len(op, "att", att.len, b * nh * t * t);
    check_len(op, "qkv", qkv.len, b * t * 3 * c);
}

/// Attention forward: softmax rows, then att·v (kernels/attention.cu).
#[allow(clippy::too_many_arguments)]
pub fn attention_forward<E: Exec>(
    e: &E,
    out: Dev,
    att: Dev,
    qkv: Dev,
    b: usize,
    t: usize,
    c: usize,
    nh: usize,
    bf16: bool,
) {
    let op = "attention_forward";
    check_attention(op, att, qkv, b, t, c, nh);
    check_len(op, "out", out.len, b * t * c);
    let (ap, qp, o) = (att.addr, qkv.addr, out.addr);
    let (bi, ti, ci, nhi, bf) = (
        dim(op, "B", b),
        dim(op, "T", t),
        dim(op, "C", c),
        dim(op, "NH", nh),
        bf16 as i32,
    );
    // SAFETY: module comment above.
    unsafe {
        e.launch(
            Kernel::AttentionSoftmaxForward,
            warp_rows(b * nh * t),
            &[att.out("att")],
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
    // SAFETY: module comment above.
    unsafe {
        e.launch(
            Kernel::AttentionValueForward,
            flat(b * t * c),
            &[out.out("out")],
            &[
                EmuArg::of(&o),
                EmuArg::of(&ap),
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

/// Attention backward: d(preatt) into scratch, then dq, dk, dv (kernels/attention.cu).
#[allow(clippy::too_many_arguments)]
pub fn attention_backward<E: Exec>(
    e: &E,
    dqkv: Dev,
    scratch: Dev,
    dout: Dev,
    qkv: Dev,
    att: Dev,
    b: usize,
    t: usize,
    c: usize,
    nh: usize,
) {
    let op = "attention_backward";
    check_attention(op, att, qkv, b, t, c, nh);
    check_len(op, "dout", dout.len, b * t * c);
    check_len(op, "scratch", scratch.len, b * nh * t * t);
    check_len(op, "dqkv", dqkv.len, b * t * 3 * c);
    let (sp, gp, qp, ap, dp) = (scratch.addr, dout.addr, qkv.addr, att.addr, dqkv.addr);
    let (bi, ti, ci, nhi) = (
        dim(op, "B", b),
        dim(op, "T", t),
        dim(op, "C", c),
        dim(op, "NH", nh),
    );
    // SAFETY: module comment above.
    unsafe {
        e.launch(
            Kernel::AttentionBackwardDatt,
            warp_rows(b * nh * t),
            &[scratch.out("scratch")],
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
    // SAFETY: module comment above.
    unsafe {
        e.launch(
            Kernel::AttentionBackwardDqkv,
            flat(b * t * c),
            &[dqkv.out("dqkv")],
            &[
                EmuArg::of(&dp),
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
}

/// An elementwise kernel `k(out, in…, n[, flag])` over tensors of equal length.
fn elementwise<E: Exec>(e: &E, kernel: Kernel, out: Dev, ins: &[Dev], flag: Option<i32>) {
    for (i, x) in ins.iter().enumerate() {
        assert!(
            x.len == out.len,
            "{}: input {i} has {} elements, expected {}",
            kernel.name(),
            x.len,
            out.len
        );
    }
    let o = out.addr;
    let addrs: Vec<u64> = ins.iter().map(|x| x.addr).collect();
    let n = out.len as i64;
    let mut args = vec![EmuArg::of(&o)];
    args.extend(addrs.iter().map(EmuArg::of));
    args.push(EmuArg::of(&n));
    if let Some(f) = &flag {
        args.push(EmuArg::of(f));
    }
    // SAFETY: module comment above (all tensors have `n` elements).
    unsafe { e.launch(kernel, flat(out.len), &[out.out("out")], &args) }
}

/// GELU forward (`=`, bf16-rounded when `bf16`).
pub fn gelu_forward<E: Exec>(e: &E, out: Dev, inp: Dev, bf16: bool) {
    elementwise(e, Kernel::GeluForward, out, &[inp], Some(bf16 as i32))
}
/// GELU backward (`+=`).
pub fn gelu_backward<E: Exec>(e: &E, dinp: Dev, inp: Dev, dout: Dev) {
    elementwise(e, Kernel::GeluBackward, dinp, &[inp, dout], None)
}
/// out = a + b
pub fn residual_forward<E: Exec>(e: &E, out: Dev, a: Dev, b: Dev, bf16: bool) {
    elementwise(e, Kernel::ResidualForward, out, &[a, b], Some(bf16 as i32))
}
/// dx += dout
pub fn add_inplace<E: Exec>(e: &E, dx: Dev, dout: Dev) {
    elementwise(e, Kernel::AddInplace, dx, &[dout], None)
}
/// out = bf16(inp), widened (the bf16 GEMM operands).
pub fn round_bf16_copy<E: Exec>(e: &E, out: Dev, inp: Dev) {
    elementwise(e, Kernel::RoundBf16Copy, out, &[inp], None)
}

/// out (N,OC) += bias (OC) per row.
pub fn bias_forward<E: Exec>(e: &E, out: Dev, bias: Dev, n: usize, oc: usize) {
    check_len("bias_forward", "out", out.len, n * oc);
    check_len("bias_forward", "bias", bias.len, oc);
    let (o, bp, nl, oci) = (out.addr, bias.addr, n as i64, dim("bias_forward", "OC", oc));
    // SAFETY: module comment above.
    unsafe {
        e.launch(
            Kernel::BiasForward,
            flat(n * oc),
            &[out.out("out")],
            &[
                EmuArg::of(&o),
                EmuArg::of(&bp),
                EmuArg::of(&nl),
                EmuArg::of(&oci),
            ],
        )
    }
}

/// dbias (OC) += Σ_rows dout (N,OC).
pub fn bias_backward<E: Exec>(e: &E, dbias: Dev, dout: Dev, n: usize, oc: usize) {
    check_len("bias_backward", "dout", dout.len, n * oc);
    check_len("bias_backward", "dbias", dbias.len, oc);
    let (d, g, nl, oci) = (
        dbias.addr,
        dout.addr,
        n as i64,
        dim("bias_backward", "OC", oc),
    );
    // SAFETY: module comment above.
    unsafe {
        e.launch(
            Kernel::BiasBackward,
            flat(oc),
            &[dbias.out("dbias")],
            &[
                EmuArg::of(&d),
                EmuArg::of(&g),
                EmuArg::of(&nl),
                EmuArg::of(&oci),
            ],
        )
    }
}

/// Fused softmax + cross-entropy (+ gradient in place when `dloss`).
pub fn crossentropy_forward<E: Exec>(
    e: &E,
    losses: Dev,
    logits: Dev,
    targets: &[u32],
    dloss: Option<f32>,
    n: usize,
    v: usize,
) {
    let op = "crossentropy_forward";
    check_len(op, "losses", losses.len, n);
    check_len(op, "logits", logits.len, n * v);
    check_len(op, "targets", targets.len(), n);
    check_index(op, targets, v);
    if n == 0 {
        return;
    }
    let (tp, _keep) = e.stage_u32(targets);
    let (lp, xp) = (losses.addr, logits.addr);
    let (s, has) = (dloss.unwrap_or(0.0), dloss.is_some() as i32);
    let (ni, vi) = (dim(op, "N", n), dim(op, "V", v));
    // SAFETY: module comment above.
    unsafe {
        e.launch(
            Kernel::CrossentropyForward,
            Geometry::blocks(n, BLOCK),
            &[losses.out("losses"), logits.out("logits")],
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

/// Block rotation with a gather (`rotate`) or its transpose with a scatter (`unrotate`).
#[allow(clippy::too_many_arguments)]
pub fn rotate_or_unrotate<E: Exec>(
    e: &E,
    unrotate: bool,
    out: Dev,
    inp: Dev,
    index: &[u32],
    r: Dev,
    nb: usize,
    n: usize,
) {
    let op = if unrotate { "unrotate" } else { "rotate" };
    let (blocks, gathered) = if unrotate { (inp, out) } else { (out, inp) };
    check_len(op, if unrotate { "inp" } else { "out" }, blocks.len, nb * n);
    check_len(op, "index", index.len(), nb * n);
    check_len(op, "r", r.len, n * n);
    check_index(op, index, gathered.len);
    if nb == 0 || n == 0 {
        return;
    }
    let (ip, _keep) = e.stage_u32(index);
    let (o, x, rp) = (out.addr, inp.addr, r.addr);
    let (nbl, ni) = (nb as i64, dim(op, "N", n));
    let kernel = if unrotate {
        Kernel::UnrotateScatter
    } else {
        Kernel::RotateGather
    };
    // SAFETY: module comment above.
    unsafe {
        e.launch(
            kernel,
            gemm_grid(nb, n),
            &[out.out("out")],
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

/// Checks that every tensor has `n` elements.
#[track_caller]
fn same_len(op: &str, n: usize, named: &[(&str, Dev)]) {
    for (name, d) in named {
        check_len(op, name, d.len, n);
    }
}

/// Fused AdamW over one tensor.
pub fn adamw_step<E: Exec>(e: &E, params: Dev, m: Dev, v: Dev, grads: Dev, hp: AdamStep) {
    let len = params.len;
    same_len("adamw_step", len, &[("m", m), ("v", v), ("grads", grads)]);
    let (pp, mp, vp, gp) = (params.addr, m.addr, v.addr, grads.addr);
    let (k, n) = (AdamParams::new(&hp), len as i64);
    // SAFETY: module comment above.
    unsafe {
        e.launch(
            Kernel::AdamwStep,
            flat(len),
            &[params.out("params"), m.out("m"), v.out("v")],
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

/// SGD with momentum over one tensor.
pub fn sgd_step<E: Exec>(
    e: &E,
    params: Dev,
    buf: Dev,
    grads: Dev,
    lr: f64,
    momentum: f64,
    weight_decay: f64,
) {
    let len = params.len;
    same_len("sgd_step", len, &[("momentum_buf", buf), ("grads", grads)]);
    let (pp, bp, gp) = (params.addr, buf.addr, grads.addr);
    let (lr32, mu, decay, n) = (
        lr as f32,
        momentum as f32,
        (1.0 - lr * weight_decay) as f32,
        len as i64,
    );
    // SAFETY: module comment above.
    unsafe {
        e.launch(
            Kernel::SgdStep,
            flat(len),
            &[params.out("params"), buf.out("momentum_buf")],
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

/// Adam moments and direction.
pub fn adam_direction_step<E: Exec>(e: &E, u: Dev, m: Dev, v: Dev, grads: Dev, hp: AdamStep) {
    let len = u.len;
    same_len(
        "adam_direction_step",
        len,
        &[("m", m), ("v", v), ("grads", grads)],
    );
    let (up, mp, vp, gp) = (u.addr, m.addr, v.addr, grads.addr);
    let (k, n) = (AdamParams::new(&hp), len as i64);
    // SAFETY: module comment above.
    unsafe {
        e.launch(
            Kernel::AdamDirectionStep,
            flat(len),
            &[u.out("u"), m.out("m"), v.out("v")],
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

/// SGD momentum and direction.
pub fn sgd_direction_step<E: Exec>(e: &E, u: Dev, buf: Dev, grads: Dev, momentum: f64) {
    let len = u.len;
    same_len(
        "sgd_direction_step",
        len,
        &[("momentum_buf", buf), ("grads", grads)],
    );
    let (up, bp, gp) = (u.addr, buf.addr, grads.addr);
    let (mu, n) = (momentum as f32, len as i64);
    // SAFETY: module comment above.
    unsafe {
        e.launch(
            Kernel::SgdDirectionStep,
            flat(len),
            &[u.out("u"), buf.out("momentum_buf")],
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

/// Mean of squares per block.
pub fn block_mean_squares<E: Exec>(e: &E, out: Dev, x: Dev, block: usize) {
    assert!(block > 0, "block_mean_squares: block must be > 0");
    check_len("block_mean_squares", "x", x.len, out.len * block);
    let (o, xp, bl, nb) = (out.addr, x.addr, block as i64, out.len as i64);
    // SAFETY: module comment above.
    unsafe {
        e.launch(
            Kernel::BlockMeanSquares,
            Geometry::blocks(out.len, BLOCK),
            &[out.out("out")],
            &[
                EmuArg::of(&o),
                EmuArg::of(&xp),
                EmuArg::of(&bl),
                EmuArg::of(&nb),
            ],
        )
    }
}

/// v = β₂v + (1−β₂)s
pub fn ema_inplace<E: Exec>(e: &E, v: Dev, s: Dev, beta2: f64) {
    check_len("ema_inplace", "s", s.len, v.len);
    let (vp, sp, b, ob, n) = (
        v.addr,
        s.addr,
        beta2 as f32,
        (1.0 - beta2) as f32,
        v.len as i64,
    );
    // SAFETY: module comment above.
    unsafe {
        e.launch(
            Kernel::EmaInplace,
            flat(v.len),
            &[v.out("v")],
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

/// Momentum with one second moment per block.
pub fn block_adam_direction_step<E: Exec>(
    e: &E,
    u: Dev,
    m: Dev,
    v: Dev,
    grads: Dev,
    block: usize,
    hp: AdamStep,
) {
    let len = u.len;
    assert!(block > 0, "block_adam_direction_step: block must be > 0");
    same_len(
        "block_adam_direction_step",
        len,
        &[("m", m), ("grads", grads)],
    );
    check_len("block_adam_direction_step", "v", v.len * block, len);
    let (up, mp, vp, gp) = (u.addr, m.addr, v.addr, grads.addr);
    let (bl, k, n) = (block as i64, AdamParams::new(&hp), len as i64);
    // SAFETY: module comment above.
    unsafe {
        e.launch(
            Kernel::BlockAdamDirectionStep,
            flat(len),
            &[u.out("u"), m.out("m")],
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

/// p = p·(1 − lr·λ) − lr·u
pub fn apply_update<E: Exec>(e: &E, params: Dev, u: Dev, lr: f64, weight_decay: f64) {
    check_len("apply_update", "u", u.len, params.len);
    let (pp, up, lr32, decay, n) = (
        params.addr,
        u.addr,
        lr as f32,
        (1.0 - lr * weight_decay) as f32,
        params.len as i64,
    );
    // SAFETY: module comment above.
    unsafe {
        e.launch(
            Kernel::ApplyUpdate,
            flat(params.len),
            &[params.out("params")],
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
