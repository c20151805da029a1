//! The CPU backend: every op of [`Backend`] as a free function over slices, generic over [`Scalar`]
//! (f32 = the fast path, f64 = the reference), plus [`CpuBackend`], which forwards the trait to them.
//!
//! Files, one op family each: `elementwise` (fill, scale, sum_squares, encoder, gelu, residual), `layernorm`,
//! `matmul`, `attention`, `crossentropy`, `optim` (adamw_step, sgd_step), `rotation` (rotate, unrotate).
//! Every forward op overwrites its outputs (`=`); every backward op accumulates (`+=`) into every gradient
//! output.
//!
//! Threading: ops run on the current rayon pool (the caller sizes it); `threads` is handed to faer's GEMM.
//! Determinism: no atomics; every reduction either sums one output sequentially in a fixed order, or sums
//! fixed-size chunks whose partial results are combined in chunk order, so results do not depend on the
//! number of threads (GEMMs: bit-identical run to run for a given thread count).
//!
//! bf16 (`--precision bf16`) is emulated as llm.c does it: GEMM inputs are rounded to bf16 (in scratch
//! copies; master weights are never modified), accumulation stays in `T`, and the stored outputs of forward
//! ops are rounded to bf16. Statistics (LN mean/rstd, losses, attention probabilities), gradients and the
//! optimizer stay in `T`.

pub mod attention;
pub mod crossentropy;
pub mod elementwise;
pub mod layernorm;
pub mod matmul;
pub mod optim;
pub mod rotation;
pub mod rotgemm;

pub use attention::{attention_backward, attention_forward};
pub use crossentropy::crossentropy_forward;
pub use elementwise::{
    add_inplace, encoder_backward, encoder_forward, fill, gelu_backward, gelu_forward,
    residual_forward, scale, sum_squares,
};
pub use layernorm::{layernorm_backward, layernorm_forward};
pub use matmul::{matmul_backward, matmul_forward};
pub use optim::{adam_direction, adamw_step, decayed_step, sgd_step};
pub use rotation::{
    rotate, rotate_adam_direction, unrotate, unrotate_apply_update, GatherMode, RotIndex,
};

use super::{AdamStep, Backend, Scalar};
use crate::error::{Error, Result};
use std::marker::PhantomData;

/// Buffers at least this large are advised to use transparent huge pages.
const HUGE_PAGE_MIN_BYTES: usize = 8 << 20;
/// The x86-64 / aarch64 transparent huge page size.
const HUGE_PAGE: usize = 2 << 20;

/// Asks the kernel for transparent huge pages (`madvise(MADV_HUGEPAGE)`) over the 2 MiB-aligned interior
/// of a large, freshly allocated buffer. A zeroed `vec!` of this size comes from a fresh, untouched `mmap`,
/// so the pages are faulted in (as huge pages) on first touch. This matters for the random gathers and
/// scatters of the block rotations: with 4 KiB pages nearly every access of a 124M-parameter gradient is
/// also a TLB miss. Advice only: failure (or a kernel with THP `never`) changes speed, never results.
pub(crate) fn advise_huge_pages<T>(buf: &[T]) {
    let bytes = std::mem::size_of_val(buf);
    if bytes < HUGE_PAGE_MIN_BYTES {
        return;
    }
    let start = buf.as_ptr() as usize;
    let lo = start.next_multiple_of(HUGE_PAGE);
    let hi = (start + bytes) / HUGE_PAGE * HUGE_PAGE;
    #[cfg(target_os = "linux")]
    if hi > lo {
        // SAFETY: [lo, hi) lies inside the live allocation `buf` and is page-aligned; MADV_HUGEPAGE only
        // changes how the kernel backs these pages, never their contents or the mapping's validity.
        unsafe {
            libc::madvise(lo as *mut libc::c_void, hi - lo, libc::MADV_HUGEPAGE);
        }
    }
}
use std::cell::RefCell;
use std::ops::Range;
use std::thread::LocalKey;

/// Elements per task for flat elementwise ops and fixed-size reduction chunks (independent of threads).
pub(crate) const CHUNK: usize = 1 << 16;

thread_local! {
    /// Reused per-thread scratch (u64 words, so f32 and f64 both fit aligned): the bf16-rounded GEMM
    /// operands of `matmul`, the gathered / rotated chunks of `rotation`.
    static SCRATCH: RefCell<Vec<u64>> = const { RefCell::new(Vec::new()) };
    /// A second per-thread buffer: the staging buffer of the bucketed rotations (as long as the index list).
    static STAGING: RefCell<Vec<u64>> = const { RefCell::new(Vec::new()) };
}

/// Runs `f` on `len` elements (contents unspecified) of the per-thread buffer `cell`, grown as needed.
fn with_local<T: Scalar, R>(
    cell: &'static LocalKey<RefCell<Vec<u64>>>,
    len: usize,
    f: impl FnOnce(&mut [T]) -> R,
) -> R {
    let words = (len * std::mem::size_of::<T>()).div_ceil(8);
    cell.with(|cell| match cell.try_borrow_mut() {
        Ok(mut buf) => {
            if buf.len() < words {
                // A fresh zeroed allocation (untouched pages, so huge pages can back them), not a resize.
                *buf = vec![0; words];
                advise_huge_pages(&buf);
            }
            let s: &mut [T] = bytemuck::cast_slice_mut(&mut buf[..words]);
            f(&mut s[..len])
        }
        // Re-entered (a rayon task stolen by this thread while it holds the buffer): a fresh allocation.
        Err(_) => f(&mut vec![T::zero(); len]),
    })
}

/// Runs `f` on a scratch slice of `len` elements (contents unspecified), reusing a per-thread buffer.
pub(crate) fn with_scratch<T: Scalar, R>(len: usize, f: impl FnOnce(&mut [T]) -> R) -> R {
    with_local(&SCRATCH, len, f)
}

/// As [`with_scratch`], on a second per-thread buffer (so both can be held at once).
pub(crate) fn with_staging<T: Scalar, R>(len: usize, f: impl FnOnce(&mut [T]) -> R) -> R {
    with_local(&STAGING, len, f)
}

/// Panics with the op and tensor name unless `x` has exactly `expected` elements.
#[track_caller]
pub(crate) fn check_len(op: &str, name: &str, len: usize, expected: usize) {
    assert!(
        len == expected,
        "{op}: {name} has {len} elements, expected {expected}"
    );
}

/// `x` rounded to bf16 when `bf16`, else `x` unchanged.
#[inline(always)]
pub(crate) fn store<T: Scalar>(x: T, bf16: bool) -> T {
    if bf16 {
        x.round_bf16()
    } else {
        x
    }
}

/// Σ x in a fixed order (8 interleaved partial sums, so LLVM can vectorise it).
#[inline]
pub(crate) fn sum<T: Scalar>(x: &[T]) -> T {
    let mut acc = [T::zero(); 8];
    let chunks = x.chunks_exact(8);
    let tail = chunks.remainder();
    for ch in chunks {
        for j in 0..8 {
            acc[j] += ch[j];
        }
    }
    let mut s = ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
    for &t in tail {
        s += t;
    }
    s
}

/// Σ a·b in a fixed order (8 interleaved partial sums). `a` and `b` have the same length.
#[inline]
pub(crate) fn dot<T: Scalar>(a: &[T], b: &[T]) -> T {
    debug_assert_eq!(a.len(), b.len());
    let mut acc = [T::zero(); 8];
    let ca = a.chunks_exact(8);
    let cb = b.chunks_exact(8);
    let (ta, tb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for j in 0..8 {
            acc[j] += x[j] * y[j];
        }
    }
    let mut s = ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
    for (&x, &y) in ta.iter().zip(tb) {
        s += x * y;
    }
    s
}

/// y += a·x
#[inline]
pub(crate) fn axpy<T: Scalar>(y: &mut [T], a: T, x: &[T]) {
    debug_assert_eq!(y.len(), x.len());
    for (y, &x) in y.iter_mut().zip(x) {
        *y += a * x;
    }
}

/// Several disjoint mutable sub-slices of `buf` at once, returned in the order of `ranges` (which may come in
/// any order). Empty ranges are allowed anywhere inside the buffer. Panics on a range that is reversed, out
/// of bounds, or overlaps another.
pub fn split_ranges_mut<'a, T, const N: usize>(
    buf: &'a mut [T],
    ranges: [Range<usize>; N],
) -> [&'a mut [T]; N] {
    let len = buf.len();
    for r in &ranges {
        assert!(
            r.start <= r.end && r.end <= len,
            "views_mut: range {r:?} is reversed or out of bounds for a buffer of {len} elements"
        );
    }
    let mut order: Vec<usize> = (0..N).filter(|&i| !ranges[i].is_empty()).collect();
    order.sort_by_key(|&i| ranges[i].start);
    for w in order.windows(2) {
        let (a, b) = (&ranges[w[0]], &ranges[w[1]]);
        assert!(
            a.end <= b.start,
            "views_mut: ranges {a:?} (#{}) and {b:?} (#{}) overlap",
            w[0],
            w[1]
        );
    }
    let mut out: [Option<&'a mut [T]>; N] = std::array::from_fn(|_| None);
    let mut rest: &'a mut [T] = buf;
    let mut offset = 0;
    for &i in &order {
        let r = &ranges[i];
        let (_, tail) = std::mem::take(&mut rest).split_at_mut(r.start - offset);
        let (mid, tail) = tail.split_at_mut(r.len());
        out[i] = Some(mid);
        rest = tail;
        offset = r.end;
    }
    out.map(|s| s.unwrap_or_default())
}

/// The CPU backend: buffers are `Vec<T>`, views are slices.
#[derive(Clone, Debug)]
pub struct CpuBackend<T> {
    /// Threads handed to faer's GEMM (the rayon pool itself is set up by the caller).
    threads: usize,
    /// Emulate bf16 mixed precision (module docs).
    bf16: bool,
    /// How rotations move coordinates (`rotation` module docs).
    gather: GatherMode,
    _t: PhantomData<T>,
}

impl<T: Scalar> CpuBackend<T> {
    /// A backend whose GEMMs use `threads` threads of the current rayon pool (1 = sequential).
    pub fn new(threads: usize, bf16: bool) -> Self {
        CpuBackend {
            threads: threads.max(1),
            bf16,
            gather: GatherMode::Auto,
            _t: PhantomData,
        }
    }

    /// The same backend, moving rotated coordinates as `mode` says (default `Auto`).
    pub fn with_gather(mut self, mode: GatherMode) -> Self {
        self.gather = mode;
        self
    }

    /// Threads handed to the GEMMs.
    pub fn threads(&self) -> usize {
        self.threads
    }
}

impl<T: Scalar> Backend for CpuBackend<T> {
    type T = T;
    type Buf = Vec<T>;
    type RotIndex = RotIndex;
    type View<'a>
        = &'a [T]
    where
        Self: 'a;
    type ViewMut<'a>
        = &'a mut [T]
    where
        Self: 'a;

    fn name(&self) -> String {
        let prec = if self.bf16 { "+bf16" } else { "" };
        let plural = if self.threads == 1 { "" } else { "s" };
        format!("cpu {}{prec} ({} thread{plural})", T::NAME, self.threads)
    }
    fn bf16(&self) -> bool {
        self.bf16
    }

    fn alloc(&self, n: usize) -> Result<Vec<T>> {
        let buf = vec![T::zero(); n];
        advise_huge_pages(&buf);
        Ok(buf)
    }
    fn buf_len(&self, buf: &Vec<T>) -> usize {
        buf.len()
    }
    fn upload(&self, dst: &mut Vec<T>, src: &[T]) -> Result<()> {
        if dst.len() != src.len() {
            return Err(Error::Shape {
                context: "upload".into(),
                expected: format!("{} elements", dst.len()),
                got: format!("{} elements", src.len()),
            });
        }
        dst.copy_from_slice(src);
        Ok(())
    }
    fn download(&self, src: &Vec<T>) -> Result<Vec<T>> {
        Ok(src.clone())
    }
    fn view<'a>(&self, buf: &'a Vec<T>, range: Range<usize>) -> &'a [T] {
        &buf[range]
    }
    fn view_mut<'a>(&self, buf: &'a mut Vec<T>, range: Range<usize>) -> &'a mut [T] {
        &mut buf[range]
    }
    fn views_mut<'a, const N: usize>(
        &self,
        buf: &'a mut Vec<T>,
        ranges: [Range<usize>; N],
    ) -> [&'a mut [T]; N] {
        split_ranges_mut(buf.as_mut_slice(), ranges)
    }

    fn fill(&self, out: &mut [T], value: T) -> Result<()> {
        fill(out, value);
        Ok(())
    }
    fn scale(&self, out: &mut [T], s: T) -> Result<()> {
        scale(out, s);
        Ok(())
    }
    fn sum_squares(&self, x: &[T]) -> Result<f64> {
        Ok(sum_squares(x))
    }

    fn encoder_forward(
        &self,
        out: &mut [T],
        tokens: &[u32],
        wte: &[T],
        wpe: &[T],
        b: usize,
        t: usize,
        c: usize,
    ) -> Result<()> {
        encoder_forward(out, tokens, wte, wpe, b, t, c, self.bf16);
        Ok(())
    }
    fn encoder_backward(
        &self,
        dwte: &mut [T],
        dwpe: &mut [T],
        dout: &[T],
        tokens: &[u32],
        b: usize,
        t: usize,
        c: usize,
    ) -> Result<()> {
        encoder_backward(dwte, dwpe, dout, tokens, b, t, c);
        Ok(())
    }
    fn layernorm_forward(
        &self,
        out: &mut [T],
        mean: &mut [T],
        rstd: &mut [T],
        inp: &[T],
        weight: &[T],
        bias: Option<&[T]>,
        n: usize,
        c: usize,
    ) -> Result<()> {
        layernorm_forward(out, mean, rstd, inp, weight, bias, n, c, self.bf16);
        Ok(())
    }
    fn layernorm_backward(
        &self,
        dinp: &mut [T],
        dweight: &mut [T],
        dbias: Option<&mut [T]>,
        dout: &[T],
        inp: &[T],
        weight: &[T],
        mean: &[T],
        rstd: &[T],
        n: usize,
        c: usize,
    ) -> Result<()> {
        layernorm_backward(dinp, dweight, dbias, dout, inp, weight, mean, rstd, n, c);
        Ok(())
    }
    fn matmul_forward(
        &self,
        out: &mut [T],
        inp: &[T],
        weight: &[T],
        bias: Option<&[T]>,
        n: usize,
        c: usize,
        oc: usize,
    ) -> Result<()> {
        matmul_forward(out, inp, weight, bias, n, c, oc, self.bf16, self.threads);
        Ok(())
    }
    fn matmul_backward(
        &self,
        dinp: Option<&mut [T]>,
        dweight: &mut [T],
        dbias: Option<&mut [T]>,
        dout: &[T],
        inp: &[T],
        weight: &[T],
        n: usize,
        c: usize,
        oc: usize,
    ) -> Result<()> {
        matmul_backward(
            dinp,
            dweight,
            dbias,
            dout,
            inp,
            weight,
            n,
            c,
            oc,
            self.bf16,
            self.threads,
        );
        Ok(())
    }
    fn attention_forward(
        &self,
        out: &mut [T],
        att: &mut [T],
        qkv: &[T],
        b: usize,
        t: usize,
        c: usize,
        nh: usize,
    ) -> Result<()> {
        attention_forward(out, att, qkv, b, t, c, nh, self.bf16);
        Ok(())
    }
    fn attention_backward(
        &self,
        dqkv: &mut [T],
        scratch: &mut [T],
        dout: &[T],
        qkv: &[T],
        att: &[T],
        b: usize,
        t: usize,
        c: usize,
        nh: usize,
    ) -> Result<()> {
        attention_backward(dqkv, scratch, dout, qkv, att, b, t, c, nh);
        Ok(())
    }
    fn gelu_forward(&self, out: &mut [T], inp: &[T]) -> Result<()> {
        gelu_forward(out, inp, self.bf16);
        Ok(())
    }
    fn gelu_backward(&self, dinp: &mut [T], inp: &[T], dout: &[T]) -> Result<()> {
        gelu_backward(dinp, inp, dout);
        Ok(())
    }
    fn residual_forward(&self, out: &mut [T], a: &[T], b: &[T]) -> Result<()> {
        residual_forward(out, a, b, self.bf16);
        Ok(())
    }
    fn add_inplace(&self, dx: &mut [T], dout: &[T]) -> Result<()> {
        add_inplace(dx, dout);
        Ok(())
    }
    fn crossentropy_forward(
        &self,
        losses: &mut [T],
        logits: &mut [T],
        targets: &[u32],
        dloss: Option<T>,
        n: usize,
        v: usize,
    ) -> Result<()> {
        crossentropy_forward(losses, logits, targets, dloss, n, v);
        Ok(())
    }

    fn rotation_index(&self, index: Vec<u32>, n: usize, src_len: usize) -> Result<RotIndex> {
        rotation::prepare::<T>(index, n, src_len, self.gather)
    }
    fn rotation_index_list(&self, index: &RotIndex) -> Vec<u32> {
        index.to_list()
    }
    fn rotate(
        &self,
        out: &mut [T],
        inp: &[T],
        index: &RotIndex,
        r: &[T],
        nb: usize,
        n: usize,
    ) -> Result<()> {
        rotate(out, inp, index, r, nb, n, self.threads);
        Ok(())
    }
    fn unrotate(
        &self,
        out: &mut [T],
        inp: &[T],
        index: &RotIndex,
        r: &[T],
        nb: usize,
        n: usize,
    ) -> Result<()> {
        unrotate(out, inp, index, r, nb, n, self.threads);
        Ok(())
    }
    fn rotate_adam_direction(
        &self,
        u: &mut [T],
        m: &mut [T],
        v: &mut [T],
        grads: &[T],
        index: &RotIndex,
        r: &[T],
        nb: usize,
        n: usize,
        hp: AdamStep,
    ) -> Result<()> {
        rotate_adam_direction(u, m, v, grads, index, r, nb, n, hp, self.threads);
        Ok(())
    }
    fn unrotate_apply_update(
        &self,
        params: &mut [T],
        u: &[T],
        index: &RotIndex,
        r: &[T],
        nb: usize,
        n: usize,
        lr: f64,
    ) -> Result<()> {
        unrotate_apply_update(params, u, index, r, nb, n, lr, self.threads);
        Ok(())
    }

    fn gemm(
        &self,
        c: &mut [T],
        a: &[T],
        b: &[T],
        m: usize,
        n: usize,
        k: usize,
        trans_a: bool,
        trans_b: bool,
        accumulate: bool,
    ) -> Result<()> {
        T::gemm(c, a, b, m, n, k, trans_a, trans_b, accumulate, self.threads);
        Ok(())
    }
    fn adamw_step(
        &self,
        params: &mut [T],
        m: &mut [T],
        v: &mut [T],
        grads: &[T],
        hp: AdamStep,
    ) -> Result<()> {
        adamw_step(params, m, v, grads, hp);
        Ok(())
    }
    fn sgd_step(
        &self,
        params: &mut [T],
        momentum_buf: &mut [T],
        grads: &[T],
        lr: f64,
        momentum: f64,
        weight_decay: f64,
    ) -> Result<()> {
        sgd_step(params, momentum_buf, grads, lr, momentum, weight_decay);
        Ok(())
    }
    fn adam_direction_step(
        &self,
        u: &mut [T],
        m: &mut [T],
        v: &mut [T],
        grads: &[T],
        hp: AdamStep,
    ) -> Result<()> {
        optim::adam_direction_step(u, m, v, grads, hp);
        Ok(())
    }
    fn sgd_direction_step(
        &self,
        u: &mut [T],
        momentum_buf: &mut [T],
        grads: &[T],
        momentum: f64,
    ) -> Result<()> {
        optim::sgd_direction_step(u, momentum_buf, grads, momentum);
        Ok(())
    }
    fn block_mean_squares(&self, out: &mut [T], x: &[T], block: usize) -> Result<()> {
        optim::block_mean_squares(out, x, block);
        Ok(())
    }
    fn ema_inplace(&self, v: &mut [T], s: &[T], beta2: f64) -> Result<()> {
        optim::ema_inplace(v, s, beta2);
        Ok(())
    }
    fn block_adam_direction_step(
        &self,
        u: &mut [T],
        m: &mut [T],
        v: &[T],
        grads: &[T],
        block: usize,
        hp: AdamStep,
    ) -> Result<()> {
        optim::block_adam_direction_step(u, m, v, grads, block, hp);
        Ok(())
    }
    fn apply_update(&self, params: &mut [T], u: &[T], lr: f64, weight_decay: f64) -> Result<()> {
        optim::apply_update(params, u, lr, weight_decay);
        Ok(())
    }
}
