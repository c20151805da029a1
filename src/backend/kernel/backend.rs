//! `impl Backend for KernelBackend<E>`: every op of the interface, written once over an executor
//! (module docs of `kernel`).

use super::{optim, transformer, Dev, DevMut, Exec, Gemm, Mem, Operands};
use crate::backend::cpu::check_len;
use crate::backend::{AdamStep, Backend};
use crate::error::Result;
use std::marker::PhantomData;
use std::ops::Range;

/// A read-only view of a [`KernelBackend`] buffer.
#[derive(Clone, Copy, Debug)]
pub struct DevView<'a> {
    dev: Dev<'a, f32>,
    _l: PhantomData<&'a ()>,
}

/// A writable view of a [`KernelBackend`] buffer.
#[derive(Debug)]
pub struct DevViewMut<'a> {
    dev: DevMut<'a, f32>,
    _l: PhantomData<&'a mut ()>,
}

/// A rotation's index list: checked once on the host ([`optim::IndexList`]) and resident on the device.
#[derive(Debug)]
pub struct KernelRotIndex<E: Exec> {
    pub(super) host: optim::IndexList,
    pub(super) dev: Mem<E, u32>,
}

/// The kernel backend over executor `E` (module docs).
pub struct KernelBackend<E: Exec> {
    exec: E,
    bf16: bool,
}

impl<E: Exec> KernelBackend<E> {
    /// The backend over `exec`; `bf16` for `--precision bf16`.
    pub fn new(exec: E, bf16: bool) -> Self {
        KernelBackend { exec, bf16 }
    }
    /// The executor.
    pub fn exec(&self) -> &E {
        &self.exec
    }

    /// `x` rounded to bf16 into a new buffer.
    fn to_bf16(&self, x: Dev<f32>) -> Result<Mem<E, half::bf16>> {
        let mut out = Mem::zeros(&self.exec, x.len)?;
        transformer::to_bf16(&self.exec, out.dev_mut(), x)?;
        Ok(out)
    }

    /// C = op(A)·op(B) (+ C), on bf16 copies of A and B under `--precision bf16`.
    #[allow(clippy::too_many_arguments)]
    fn matmul(
        &self,
        c: DevMut<f32>,
        a: Dev<f32>,
        b: Dev<f32>,
        (m, n, k): (usize, usize, usize),
        trans_a: bool,
        trans_b: bool,
        accumulate: bool,
        bf16: bool,
    ) -> Result<()> {
        for (x, name) in [(c.read(), "C"), (a, "A"), (b, "B")] {
            x.check_space(&self.exec, "GEMM", name);
        }
        let (a16, b16);
        let (a_addr, b_addr, operands) = if bf16 {
            a16 = self.to_bf16(a)?;
            b16 = self.to_bf16(b)?;
            (a16.dev().addr, b16.dev().addr, Operands::Bf16)
        } else {
            (a.addr, b.addr, Operands::F32)
        };
        self.gemm_raw(Gemm {
            c,
            a: a_addr,
            b: b_addr,
            operands,
            m,
            n,
            k,
            trans_a,
            trans_b,
            accumulate,
        })
    }

    fn gemm_raw(&self, g: Gemm) -> Result<()> {
        if g.m == 0 || g.n == 0 {
            return Ok(());
        }
        if g.k == 0 {
            // an empty sum: C = 0, or C as it is when accumulating (cuBLAS refuses a leading dimension of 0)
            return match g.accumulate {
                true => Ok(()),
                false => transformer::fill(&self.exec, g.c.slice(0..g.m * g.n), 0.0),
            };
        }
        // SAFETY: gemm_raw's only caller, `matmul`, is reached from `gemm` (asserts C ≥ m·n, A ≥ m·k,
        // B ≥ k·n) and from matmul_forward and matmul_backward (check_len on every operand at the shape they
        // pass), and its bf16 copies of A and B have their originals' lengths; so A, B and C hold what the
        // shapes name.
        unsafe { self.exec.gemm(&g) }.map_err(|e| e.context(format!("GEMM {}", g.describe())))
    }
}

fn v(x: DevView<'_>) -> Dev<'_, f32> {
    x.dev
}
fn vm(x: DevViewMut<'_>) -> DevMut<'_, f32> {
    x.dev
}

/// `Err` of `r` in op `op` with its shapes.
fn in_op<T>(r: Result<T>, op: &str, shapes: impl FnOnce() -> String) -> Result<T> {
    r.map_err(|e| e.context(format!("{op} ({})", shapes())))
}

impl<E: Exec> Backend for KernelBackend<E> {
    type T = f32;
    type Buf = Mem<E, f32>;
    type RotIndex = KernelRotIndex<E>;
    type View<'a>
        = DevView<'a>
    where
        Self: 'a;
    type ViewMut<'a>
        = DevViewMut<'a>
    where
        Self: 'a;

    fn name(&self) -> String {
        let prec = if self.bf16 { "+bf16" } else { "" };
        format!("{} f32{prec}", self.exec.describe())
    }
    fn bf16(&self) -> bool {
        self.bf16
    }
    fn alloc(&self, n: usize) -> Result<Mem<E, f32>> {
        Mem::zeros(&self.exec, n)
    }
    fn buf_len(&self, buf: &Mem<E, f32>) -> usize {
        buf.len()
    }
    fn upload(&self, dst: &mut Mem<E, f32>, src: &[f32]) -> Result<()> {
        dst.upload(&self.exec, src)
    }
    fn download(&self, src: &Mem<E, f32>) -> Result<Vec<f32>> {
        src.download(&self.exec)
    }
    fn view<'a>(&self, buf: &'a Mem<E, f32>, range: Range<usize>) -> DevView<'a> {
        DevView {
            dev: buf.dev().slice(range),
            _l: PhantomData,
        }
    }
    fn view_mut<'a>(&self, buf: &'a mut Mem<E, f32>, range: Range<usize>) -> DevViewMut<'a> {
        DevViewMut {
            dev: buf.dev_mut().slice(range),
            _l: PhantomData,
        }
    }
    fn views_mut<'a, const N: usize>(
        &self,
        buf: &'a mut Mem<E, f32>,
        ranges: [Range<usize>; N],
    ) -> [DevViewMut<'a>; N] {
        // The CPU splitter's checks (bounds, overlaps) on a zero-sized stand-in of the buffer.
        let mut unit = vec![(); buf.len()];
        let _ = crate::backend::cpu::split_ranges_mut(&mut unit, ranges.clone());
        let all = buf.dev_mut();
        ranges.map(|r| DevViewMut {
            dev: all.slice(r),
            _l: PhantomData,
        })
    }

    fn fill(&self, out: DevViewMut<'_>, value: f32) -> Result<()> {
        let n = out.dev.len;
        let r = transformer::fill(&self.exec, vm(out), value);
        in_op(r, "fill", || format!("n = {n}"))
    }
    fn scale(&self, out: DevViewMut<'_>, s: f32) -> Result<()> {
        let n = out.dev.len;
        let r = transformer::scale(&self.exec, vm(out), s);
        in_op(r, "scale", || format!("n = {n}"))
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
        let (c, a, b) = (vm(c), v(a), v(b));
        assert!(
            c.len >= m * n && a.len >= m * k && b.len >= k * n,
            "gemm: operand too small for {m}×{n}×{k}"
        );
        self.matmul(c, a, b, (m, n, k), trans_a, trans_b, accumulate, false)
    }
    fn sum_squares(&self, x: DevView<'_>) -> Result<f64> {
        let n = x.dev.len;
        let r = optim::sum_squares(&self.exec, v(x));
        in_op(r, "sum_squares", || format!("n = {n}"))
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
        let r = transformer::encoder_forward(
            &self.exec,
            vm(out),
            tokens,
            v(wte),
            v(wpe),
            (b, t, c),
            self.bf16,
        );
        in_op(r, "encoder_forward", || {
            format!("B = {b}, T = {t}, C = {c}")
        })
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
        let r = transformer::encoder_backward(
            &self.exec,
            vm(dwte),
            vm(dwpe),
            v(dout),
            tokens,
            (b, t, c),
        );
        in_op(r, "encoder_backward", || {
            format!("B = {b}, T = {t}, C = {c}")
        })
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
        let r = transformer::layernorm_forward(
            &self.exec,
            [vm(out), vm(mean), vm(rstd)],
            v(inp),
            v(weight),
            bias.map(v),
            (n, c),
            self.bf16,
        );
        in_op(r, "layernorm_forward", || format!("N = {n}, C = {c}"))
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
        let r = transformer::layernorm_backward(
            &self.exec,
            (vm(dinp), vm(dweight), dbias.map(vm)),
            v(dout),
            [v(inp), v(weight), v(mean), v(rstd)],
            (n, c),
        );
        in_op(r, "layernorm_backward", || format!("N = {n}, C = {c}"))
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
        let op = "matmul_forward";
        check_len(op, "out", out.len, n * oc);
        check_len(op, "inp", inp.len, n * c);
        check_len(op, "weight", weight.len, oc * c);
        if let Some(b) = bias {
            check_len(op, "bias", b.dev.len, oc);
        }
        if n == 0 || oc == 0 {
            return Ok(());
        }
        let r = (|| {
            self.matmul(out, inp, weight, (n, oc, c), false, true, false, self.bf16)?;
            if let Some(b) = bias {
                transformer::bias_forward(&self.exec, out, v(b), n, oc)?;
            }
            if self.bf16 {
                transformer::round_bf16_copy(&self.exec, out, out.read())?;
            }
            Ok(())
        })();
        in_op(r, op, || format!("N = {n}, C = {c}, OC = {oc}"))
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
        let (dweight, g, x, w) = (vm(dweight), v(dout), v(inp), v(weight));
        let op = "matmul_backward";
        check_len(op, "dout", g.len, n * oc);
        check_len(op, "inp", x.len, n * c);
        check_len(op, "weight", w.len, oc * c);
        check_len(op, "dweight", dweight.len, oc * c);
        let dinp = dinp.map(vm);
        if let Some(d) = dinp {
            check_len(op, "dinp", d.len, n * c);
        }
        let r = (|| {
            if let Some(db) = dbias {
                // under bf16 the sum of the rounded dout, as the CPU backend's emulation computes it
                transformer::bias_backward(&self.exec, vm(db), g, n, oc, self.bf16)?;
            }
            if let Some(dinp) = dinp {
                self.matmul(dinp, g, w, (n, c, oc), false, false, true, self.bf16)?;
            }
            self.matmul(dweight, g, x, (oc, c, n), true, false, true, self.bf16)
        })();
        in_op(r, op, || format!("N = {n}, C = {c}, OC = {oc}"))
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
        let r = transformer::attention_forward(
            &self.exec,
            vm(out),
            vm(att),
            v(qkv),
            (b, t, c, nh),
            self.bf16,
        );
        in_op(r, "attention_forward", || {
            format!("B = {b}, T = {t}, C = {c}, NH = {nh}")
        })
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
        let r = transformer::attention_backward(
            &self.exec,
            vm(dqkv),
            vm(scratch),
            [v(dout), v(qkv), v(att)],
            (b, t, c, nh),
        );
        in_op(r, "attention_backward", || {
            format!("B = {b}, T = {t}, C = {c}, NH = {nh}")
        })
    }
    fn gelu_forward(&self, out: DevViewMut<'_>, inp: DevView<'_>) -> Result<()> {
        let n = out.dev.len;
        let r = transformer::gelu_forward(&self.exec, vm(out), v(inp), self.bf16);
        in_op(r, "gelu_forward", || format!("n = {n}"))
    }
    fn gelu_backward(
        &self,
        dinp: DevViewMut<'_>,
        inp: DevView<'_>,
        dout: DevView<'_>,
    ) -> Result<()> {
        let n = dinp.dev.len;
        let r = transformer::gelu_backward(&self.exec, vm(dinp), v(inp), v(dout));
        in_op(r, "gelu_backward", || format!("n = {n}"))
    }
    fn residual_forward(&self, out: DevViewMut<'_>, a: DevView<'_>, b: DevView<'_>) -> Result<()> {
        let n = out.dev.len;
        let r = transformer::residual_forward(&self.exec, vm(out), v(a), v(b), self.bf16);
        in_op(r, "residual_forward", || format!("n = {n}"))
    }
    fn add_inplace(&self, dx: DevViewMut<'_>, dout: DevView<'_>) -> Result<()> {
        let n = dx.dev.len;
        let r = transformer::add_inplace(&self.exec, vm(dx), v(dout));
        in_op(r, "add_inplace", || format!("n = {n}"))
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
        let r = transformer::crossentropy_forward(
            &self.exec,
            vm(losses),
            vm(logits),
            targets,
            dloss,
            (n, vocab),
        );
        in_op(r, "crossentropy_forward", || {
            format!("N = {n}, V = {vocab}")
        })
    }
    fn rotation_index(
        &self,
        index: Vec<u32>,
        _n: usize,
        src_len: usize,
    ) -> Result<KernelRotIndex<E>> {
        let host = optim::IndexList::new(index, src_len)?;
        let dev = Mem::from_host(&self.exec, host.list())
            .map_err(|e| e.context("uploading a rotation index list"))?;
        Ok(KernelRotIndex { host, dev })
    }
    fn rotation_index_list(&self, index: &KernelRotIndex<E>) -> Vec<u32> {
        index.host.list().to_vec()
    }
    fn rotate(
        &self,
        out: DevViewMut<'_>,
        inp: DevView<'_>,
        index: &KernelRotIndex<E>,
        r: DevView<'_>,
        nb: usize,
        n: usize,
    ) -> Result<()> {
        let rb = optim::RotBlocks::new(index, v(r), nb, n);
        let r = optim::rotate_or_unrotate(&self.exec, false, vm(out), v(inp), rb);
        in_op(r, "rotate", || format!("NB = {nb}, N = {n}"))
    }
    fn unrotate(
        &self,
        out: DevViewMut<'_>,
        inp: DevView<'_>,
        index: &KernelRotIndex<E>,
        r: DevView<'_>,
        nb: usize,
        n: usize,
    ) -> Result<()> {
        let rb = optim::RotBlocks::new(index, v(r), nb, n);
        let r = optim::rotate_or_unrotate(&self.exec, true, vm(out), v(inp), rb);
        in_op(r, "unrotate", || format!("NB = {nb}, N = {n}"))
    }
    fn rotate_adam_direction(
        &self,
        u: DevViewMut<'_>,
        m: DevViewMut<'_>,
        vv: DevViewMut<'_>,
        grads: DevView<'_>,
        index: &KernelRotIndex<E>,
        r: DevView<'_>,
        nb: usize,
        n: usize,
        hp: AdamStep,
    ) -> Result<()> {
        let rb = optim::RotBlocks::new(index, v(r), nb, n);
        let r = optim::rotate_adam_direction(&self.exec, [vm(u), vm(m), vm(vv)], v(grads), rb, hp);
        in_op(r, "rotate_adam_direction", || format!("NB = {nb}, N = {n}"))
    }
    fn unrotate_apply_update(
        &self,
        params: DevViewMut<'_>,
        u: DevView<'_>,
        index: &KernelRotIndex<E>,
        r: DevView<'_>,
        nb: usize,
        n: usize,
        lr: f64,
    ) -> Result<()> {
        let rb = optim::RotBlocks::new(index, v(r), nb, n);
        let r = optim::unrotate_apply_update(&self.exec, vm(params), v(u), rb, lr);
        in_op(r, "unrotate_apply_update", || format!("NB = {nb}, N = {n}"))
    }
    fn adamw_step(
        &self,
        params: DevViewMut<'_>,
        m: DevViewMut<'_>,
        vv: DevViewMut<'_>,
        grads: DevView<'_>,
        hp: AdamStep,
    ) -> Result<()> {
        let n = params.dev.len;
        let r = optim::adamw_step(&self.exec, [vm(params), vm(m), vm(vv)], v(grads), hp);
        in_op(r, "adamw_step", || format!("n = {n}"))
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
        let n = params.dev.len;
        let r = optim::sgd_step(
            &self.exec,
            [vm(params), vm(momentum_buf)],
            v(grads),
            lr,
            momentum,
            weight_decay,
        );
        in_op(r, "sgd_step", || format!("n = {n}"))
    }
    fn adam_direction_step(
        &self,
        u: DevViewMut<'_>,
        m: DevViewMut<'_>,
        vv: DevViewMut<'_>,
        grads: DevView<'_>,
        hp: AdamStep,
    ) -> Result<()> {
        let n = u.dev.len;
        let r = optim::adam_direction_step(&self.exec, [vm(u), vm(m), vm(vv)], v(grads), hp);
        in_op(r, "adam_direction_step", || format!("n = {n}"))
    }
    fn sgd_direction_step(
        &self,
        u: DevViewMut<'_>,
        momentum_buf: DevViewMut<'_>,
        grads: DevView<'_>,
        momentum: f64,
    ) -> Result<()> {
        let n = u.dev.len;
        let r =
            optim::sgd_direction_step(&self.exec, [vm(u), vm(momentum_buf)], v(grads), momentum);
        in_op(r, "sgd_direction_step", || format!("n = {n}"))
    }
    fn block_mean_squares(&self, out: DevViewMut<'_>, x: DevView<'_>, block: usize) -> Result<()> {
        let n = x.dev.len;
        let r = optim::block_mean_squares(&self.exec, vm(out), v(x), block);
        in_op(r, "block_mean_squares", || {
            format!("n = {n}, block = {block}")
        })
    }
    fn ema_inplace(&self, vv: DevViewMut<'_>, s: DevView<'_>, beta2: f64) -> Result<()> {
        let n = vv.dev.len;
        let r = optim::ema_inplace(&self.exec, vm(vv), v(s), beta2);
        in_op(r, "ema_inplace", || format!("n = {n}"))
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
        let n = u.dev.len;
        let r = optim::block_adam_direction_step(
            &self.exec,
            [vm(u), vm(m)],
            [v(vv), v(grads)],
            block,
            hp,
        );
        in_op(r, "block_adam_direction_step", || {
            format!("n = {n}, block = {block}")
        })
    }
    fn apply_update(
        &self,
        params: DevViewMut<'_>,
        u: DevView<'_>,
        lr: f64,
        weight_decay: f64,
    ) -> Result<()> {
        let n = params.dev.len;
        let r = optim::apply_update(&self.exec, vm(params), v(u), lr, weight_decay);
        in_op(r, "apply_update", || format!("n = {n}"))
    }
}
