//! The op interface every backend implements, and the scalar types it runs in.
//!
//! The model (`model::gpt2`) and the optimizers call only these methods. One name per op everywhere:
//! `Backend::layernorm_forward`, the CPU function `cpu::layernorm::layernorm_forward`, the CUDA kernel
//! `kernels/layernorm.cu: layernorm_forward` and the test `layernorm_forward_parity`.
//!
//! Conventions (`docs/architecture.md`, decision 2):
//! - argument order: outputs, then inputs, then dims (`n` rows, `c` channels, `oc` output channels,
//!   `b, t` batch and time, `nh` heads, `v` vocabulary);
//! - every tensor is row-major; weights are (out, in) as in `nn.Linear`;
//! - forward ops overwrite their outputs (`=`); **every backward op accumulates (`+=`) into every gradient
//!   output**, activation gradients included, so the caller zeroes gradient buffers once per step;
//! - buffers are flat; ops see sub-ranges of them through `View`/`ViewMut`, so one parameter buffer holds
//!   every tensor (`docs/architecture.md`, decision 1).

pub mod collective;
pub mod cpu;
pub mod cuda;
pub mod emu;
pub mod kernel;
pub mod scalar;

pub use collective::Collective;
pub use scalar::Scalar;

use crate::error::{Error, Result};
use std::ops::Range;

/// The decay factor 1 − lr·λ of decoupled weight decay (Loshchilov & Hutter, AdamW), formed in f64: the
/// one place every backend and the optimizer take it from.
pub fn decoupled_decay(lr: f64, weight_decay: f64) -> f64 {
    1.0 - lr * weight_decay
}

/// The Adam hyper-parameters of one step, with the bias corrections precomputed on the host (as llm.c does),
/// so no kernel recomputes `powf` per element.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdamStep {
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    /// Decoupled weight decay λ for this tensor (0 for tensors outside the decay group).
    pub weight_decay: f64,
    /// 1 − β₁ᵗ
    pub bias_correction1: f64,
    /// 1 − β₂ᵗ
    pub bias_correction2: f64,
}

impl AdamStep {
    /// The hyper-parameters of Adam's step `t` (1-based): the bias corrections 1 − βᵗ (Kingma & Ba, Alg. 1).
    pub fn new(t: usize, lr: f64, beta1: f64, beta2: f64, eps: f64, weight_decay: f64) -> Self {
        let t = t as i32;
        AdamStep {
            lr,
            beta1,
            beta2,
            eps,
            weight_decay,
            bias_correction1: 1.0 - beta1.powi(t),
            bias_correction2: 1.0 - beta2.powi(t),
        }
    }

    /// 1 − lr·λ ([`decoupled_decay`]).
    pub fn decay(&self) -> f64 {
        decoupled_decay(self.lr, self.weight_decay)
    }
}

/// The coefficients of an Adam step in the arithmetic of the backend (`T`): the CPU's per-element
/// functions read them, and the kernels receive `AdamCoeffs<f32>` as their `struct AdamCoeffs` argument
/// (`kernels/adamw.cu`; the same field order, `repr(C)`). The `1 − x` terms are formed in f64 first.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdamCoeffs<T> {
    pub lr: T,
    pub beta1: T,
    /// 1 − β₁
    pub one_minus_beta1: T,
    pub beta2: T,
    /// 1 − β₂
    pub one_minus_beta2: T,
    pub eps: T,
    /// 1 − β₁ᵗ
    pub bc1: T,
    /// 1 − β₂ᵗ
    pub bc2: T,
    /// 1 − lr·λ
    pub decay: T,
}

impl<T: Scalar> AdamCoeffs<T> {
    pub fn new(hp: &AdamStep) -> Self {
        AdamCoeffs {
            lr: <T as Scalar>::from_f64(hp.lr),
            beta1: <T as Scalar>::from_f64(hp.beta1),
            one_minus_beta1: <T as Scalar>::from_f64(1.0 - hp.beta1),
            beta2: <T as Scalar>::from_f64(hp.beta2),
            one_minus_beta2: <T as Scalar>::from_f64(1.0 - hp.beta2),
            eps: <T as Scalar>::from_f64(hp.eps),
            bc1: <T as Scalar>::from_f64(hp.bias_correction1),
            bc2: <T as Scalar>::from_f64(hp.bias_correction2),
            decay: <T as Scalar>::from_f64(hp.decay()),
        }
    }
}

/// A compute backend: memory it owns plus one method per op.
///
/// `View<'a>` / `ViewMut<'a>` are borrowed sub-ranges of a `Buf` (on the CPU plain slices; on CUDA, cudarc
/// views). All ops are synchronous from the caller's point of view on the CPU; a device backend may queue
/// them on one stream, and `download` synchronises.
///
/// **Failures.** Every op returns a `Result`: what the machine can refuse — an allocation, a launch, a
/// cuBLAS call, a driver error reported at a later synchronisation — is an `Err` naming the op, the kernel
/// and the shapes, never a panic. Arguments that disagree with each other (a view shorter than the shapes
/// say, an index out of range) are a bug in the caller and panic on every backend, as slice indexing does.
pub trait Backend: Send + Sync {
    type T: Scalar;
    type Buf: Send + Sync;
    /// A rotation's index list, prepared by [`Backend::rotation_index`] (the CPU: a direct list or a
    /// bucketed permutation plan; the emulator: the list; CUDA: the list, resident on the device).
    type RotIndex: Send + Sync;
    type View<'a>: Copy
    where
        Self: 'a;
    type ViewMut<'a>
    where
        Self: 'a;

    /// A short human-readable name, e.g. `cpu f32 (2 threads)`.
    fn name(&self) -> String;
    /// Round matmul inputs and stored activations to bf16 (the `--precision bf16` emulation).
    fn bf16(&self) -> bool;

    // ---- memory -------------------------------------------------------------------------------------
    /// A zeroed buffer of `n` elements.
    fn alloc(&self, n: usize) -> Result<Self::Buf>;
    fn buf_len(&self, buf: &Self::Buf) -> usize;
    fn upload(&self, dst: &mut Self::Buf, src: &[Self::T]) -> Result<()>;
    fn download(&self, src: &Self::Buf) -> Result<Vec<Self::T>>;
    fn view<'a>(&self, buf: &'a Self::Buf, range: Range<usize>) -> Self::View<'a>;
    fn view_mut<'a>(&self, buf: &'a mut Self::Buf, range: Range<usize>) -> Self::ViewMut<'a>;
    /// Several disjoint mutable sub-ranges of one buffer at once (ranges in any order; panics if they overlap).
    fn views_mut<'a, const N: usize>(
        &self,
        buf: &'a mut Self::Buf,
        ranges: [Range<usize>; N],
    ) -> [Self::ViewMut<'a>; N];

    // ---- elementwise and reductions ------------------------------------------------------------------
    fn fill(&self, out: Self::ViewMut<'_>, value: Self::T) -> Result<()>;
    /// out *= s
    fn scale(&self, out: Self::ViewMut<'_>, s: Self::T) -> Result<()>;
    /// Row-major GEMM on views: C (m×n) = op(A)·op(B), or C += op(A)·op(B) when `accumulate`; op(A) is
    /// m×k (A stored k×m when `trans_a`), op(B) is k×n (B stored n×k when `trans_b`). For the structured
    /// rotations (svd, kron), whose factors are small dense matrices.
    #[allow(clippy::too_many_arguments)]
    fn gemm(
        &self,
        c: Self::ViewMut<'_>,
        a: Self::View<'_>,
        b: Self::View<'_>,
        m: usize,
        n: usize,
        k: usize,
        trans_a: bool,
        trans_b: bool,
        accumulate: bool,
    ) -> Result<()>;
    /// Σ x², accumulated in f64 over fixed-size chunks in a fixed order (deterministic for any thread count).
    fn sum_squares(&self, x: Self::View<'_>) -> Result<f64>;

    // ---- transformer forward / backward ----------------------------------------------------------------
    /// out (B,T,C) = wte[tokens] + wpe[t]; tokens (B·T)
    #[allow(clippy::too_many_arguments)]
    fn encoder_forward(
        &self,
        out: Self::ViewMut<'_>,
        tokens: &[u32],
        wte: Self::View<'_>,
        wpe: Self::View<'_>,
        b: usize,
        t: usize,
        c: usize,
    ) -> Result<()>;
    /// dwte[tokens] += dout, dwpe[t] += Σ_b dout
    #[allow(clippy::too_many_arguments)]
    fn encoder_backward(
        &self,
        dwte: Self::ViewMut<'_>,
        dwpe: Self::ViewMut<'_>,
        dout: Self::View<'_>,
        tokens: &[u32],
        b: usize,
        t: usize,
        c: usize,
    ) -> Result<()>;
    /// out (N,C) = (inp − mean)·rstd·weight + bias; mean, rstd (N) saved for backward. eps = 1e-5.
    #[allow(clippy::too_many_arguments)]
    fn layernorm_forward(
        &self,
        out: Self::ViewMut<'_>,
        mean: Self::ViewMut<'_>,
        rstd: Self::ViewMut<'_>,
        inp: Self::View<'_>,
        weight: Self::View<'_>,
        bias: Option<Self::View<'_>>,
        n: usize,
        c: usize,
    ) -> Result<()>;
    #[allow(clippy::too_many_arguments)]
    fn layernorm_backward(
        &self,
        dinp: Self::ViewMut<'_>,
        dweight: Self::ViewMut<'_>,
        dbias: Option<Self::ViewMut<'_>>,
        dout: Self::View<'_>,
        inp: Self::View<'_>,
        weight: Self::View<'_>,
        mean: Self::View<'_>,
        rstd: Self::View<'_>,
        n: usize,
        c: usize,
    ) -> Result<()>;
    /// out (N,OC) = inp (N,C) · weightᵀ (weight is (OC,C)) + bias (OC)
    #[allow(clippy::too_many_arguments)]
    fn matmul_forward(
        &self,
        out: Self::ViewMut<'_>,
        inp: Self::View<'_>,
        weight: Self::View<'_>,
        bias: Option<Self::View<'_>>,
        n: usize,
        c: usize,
        oc: usize,
    ) -> Result<()>;
    /// dinp += dout·weight, dweight += doutᵀ·inp, dbias += Σ_n dout. `dinp` None skips that product.
    #[allow(clippy::too_many_arguments)]
    fn matmul_backward(
        &self,
        dinp: Option<Self::ViewMut<'_>>,
        dweight: Self::ViewMut<'_>,
        dbias: Option<Self::ViewMut<'_>>,
        dout: Self::View<'_>,
        inp: Self::View<'_>,
        weight: Self::View<'_>,
        n: usize,
        c: usize,
        oc: usize,
    ) -> Result<()>;
    /// Causal self-attention computed explicitly (no flash fusion): qkv (B,T,3C) holds [q | k | v] along
    /// the last axis, heads of size C/NH; att (B,NH,T,T) = softmax(q·kᵀ/√hs + causal mask) is saved;
    /// out (B,T,C) = att·v with heads re-interleaved.
    #[allow(clippy::too_many_arguments)]
    fn attention_forward(
        &self,
        out: Self::ViewMut<'_>,
        att: Self::ViewMut<'_>,
        qkv: Self::View<'_>,
        b: usize,
        t: usize,
        c: usize,
        nh: usize,
    ) -> Result<()>;
    /// dqkv += ∂/∂qkv; `scratch` is (B,NH,T,T) workspace (contents on entry irrelevant).
    #[allow(clippy::too_many_arguments)]
    fn attention_backward(
        &self,
        dqkv: Self::ViewMut<'_>,
        scratch: Self::ViewMut<'_>,
        dout: Self::View<'_>,
        qkv: Self::View<'_>,
        att: Self::View<'_>,
        b: usize,
        t: usize,
        c: usize,
        nh: usize,
    ) -> Result<()>;
    /// GELU, tanh approximation: out = ½x(1 + tanh(√(2/π)(x + 0.044715x³)))
    fn gelu_forward(&self, out: Self::ViewMut<'_>, inp: Self::View<'_>) -> Result<()>;
    fn gelu_backward(
        &self,
        dinp: Self::ViewMut<'_>,
        inp: Self::View<'_>,
        dout: Self::View<'_>,
    ) -> Result<()>;
    /// out = a + b
    fn residual_forward(
        &self,
        out: Self::ViewMut<'_>,
        a: Self::View<'_>,
        b: Self::View<'_>,
    ) -> Result<()>;
    /// dx += dout (used for both branches of a residual connection)
    fn add_inplace(&self, dx: Self::ViewMut<'_>, dout: Self::View<'_>) -> Result<()>;
    /// Fused softmax + cross-entropy over logits (N,V): losses[i] = −log softmax(logits[i])[targets[i]].
    /// When `dloss` is Some(s), logits are overwritten in place by their gradient s·(softmax − onehot)
    /// (llm.c's fused classifier): the caller passes s = 1/(N·grad_accum) for a mean loss.
    fn crossentropy_forward(
        &self,
        losses: Self::ViewMut<'_>,
        logits: Self::ViewMut<'_>,
        targets: &[u32],
        dloss: Option<Self::T>,
        n: usize,
        v: usize,
    ) -> Result<()>;

    // ---- rotations (`docs/architecture.md`, decision 3; `rotation::Rotation` owns the index lists and R) -------
    /// Prepares an index list for [`Backend::rotate`] / [`Backend::unrotate`] with blocks of `n`: `index`
    /// holds NB·N distinct entries, each < `src_len` (the length of the vector it gathers from / scatters
    /// to). Built once per rotation; an entry out of range or repeated is an error.
    fn rotation_index(&self, index: Vec<u32>, n: usize, src_len: usize) -> Result<Self::RotIndex>;
    /// The list a [`Backend::RotIndex`] was prepared from.
    fn rotation_index_list(&self, index: &Self::RotIndex) -> Vec<u32>;
    /// Batched block rotation with a gather: for each block b < NB,
    ///   out[b·N .. (b+1)·N] = R · inp[index[b·N .. (b+1)·N]],
    /// R (N,N) row-major. `out` has NB·N elements (`=`, all overwritten); `index` has NB·N entries, each
    /// < inp.len(). One GEMM (NB×N)·(N×N)ᵀ after the gather (chunked on the CPU to bound scratch memory).
    #[allow(clippy::too_many_arguments)]
    fn rotate(
        &self,
        out: Self::ViewMut<'_>,
        inp: Self::View<'_>,
        index: &Self::RotIndex,
        r: Self::View<'_>,
        nb: usize,
        n: usize,
    ) -> Result<()>;
    /// The transpose of [`Backend::rotate`], with a scatter: for each block b < NB,
    ///   out[index[b·N + i]] = (Rᵀ · inp[b·N .. (b+1)·N])ᵢ.
    /// `inp` has NB·N elements; `index` NB·N distinct entries, each < out.len(). Writes (`=`, not `+=`)
    /// exactly the entries named by `index` and leaves the rest of `out` untouched.
    #[allow(clippy::too_many_arguments)]
    fn unrotate(
        &self,
        out: Self::ViewMut<'_>,
        inp: Self::View<'_>,
        index: &Self::RotIndex,
        r: Self::View<'_>,
        nb: usize,
        n: usize,
    ) -> Result<()>;

    /// Rotated AdamW, first half, fused (Maes et al. Alg. 2): g̃ = R·grads[index] per block as in
    /// [`Backend::rotate`], then m, v updated with g̃ and u = m̂/(√v̂ + ε) as in
    /// [`Backend::adam_direction_step`]; `u`, `m`, `v` are NB·N elements of the rotated layout, `grads`
    /// the whole standard-layout vector. The arithmetic of those two ops in sequence (on the CPU the same
    /// bits), without a buffer for g̃ (`hp.weight_decay` and `hp.lr` are not used here).
    #[allow(clippy::too_many_arguments)]
    fn rotate_adam_direction(
        &self,
        u: Self::ViewMut<'_>,
        m: Self::ViewMut<'_>,
        v: Self::ViewMut<'_>,
        grads: Self::View<'_>,
        index: &Self::RotIndex,
        r: Self::View<'_>,
        nb: usize,
        n: usize,
        hp: AdamStep,
    ) -> Result<()>;
    /// Rotated AdamW, second half, fused: params[index[b·N + i]] −= lr·(Rᵀ · u[b·N .. (b+1)·N])ᵢ, i.e.
    /// [`Backend::unrotate`] then [`Backend::apply_update`] with λ = 0 on the listed entries (the others
    /// untouched; on the CPU the same bits), without a buffer for the unrotated vector. Decoupled weight
    /// decay is the caller's, a `scale` per tensor before this: λ belongs to a tensor, and one block of a
    /// global rotation mixes tensors.
    #[allow(clippy::too_many_arguments)]
    fn unrotate_apply_update(
        &self,
        params: Self::ViewMut<'_>,
        u: Self::View<'_>,
        index: &Self::RotIndex,
        r: Self::View<'_>,
        nb: usize,
        n: usize,
        lr: f64,
    ) -> Result<()>;

    // ---- optimizer steps (elementwise over one tensor; the caller loops over ParamTable entries) -------
    /// Fused AdamW, torch/nanoGPT numerics, per element:
    ///   m = β₁m + (1−β₁)g;  v = β₂v + (1−β₂)g²;
    ///   p = p·(1 − lr·λ) − lr · (m/bc1) / (√(v/bc2) + ε)
    fn adamw_step(
        &self,
        params: Self::ViewMut<'_>,
        m: Self::ViewMut<'_>,
        v: Self::ViewMut<'_>,
        grads: Self::View<'_>,
        hp: AdamStep,
    ) -> Result<()>;
    /// SGD with momentum (torch semantics, dampening 0): buf = μ·buf + g;  p = p·(1 − lr·λ) − lr·buf.
    fn sgd_step(
        &self,
        params: Self::ViewMut<'_>,
        momentum_buf: Self::ViewMut<'_>,
        grads: Self::View<'_>,
        lr: f64,
        momentum: f64,
        weight_decay: f64,
    ) -> Result<()>;

    // ---- the split path of rotated optimizers (`optim`): a direction in the optimizer's basis, then the
    // update in the standard basis. Same per-element arithmetic as the fused steps above. ---------------
    /// Adam moments and direction: m, v updated as in `adamw_step`; u = (m/bc1)/(√(v/bc2) + ε).
    /// (`hp.weight_decay` and `hp.lr` are not used here.)
    fn adam_direction_step(
        &self,
        u: Self::ViewMut<'_>,
        m: Self::ViewMut<'_>,
        v: Self::ViewMut<'_>,
        grads: Self::View<'_>,
        hp: AdamStep,
    ) -> Result<()>;
    /// SGD momentum: buf = μ·buf + g; u = buf.
    fn sgd_direction_step(
        &self,
        u: Self::ViewMut<'_>,
        momentum_buf: Self::ViewMut<'_>,
        grads: Self::View<'_>,
        momentum: f64,
    ) -> Result<()>;
    /// out[i] = mean of x² over block i (consecutive blocks of `block` elements), accumulated in f64.
    fn block_mean_squares(
        &self,
        out: Self::ViewMut<'_>,
        x: Self::View<'_>,
        block: usize,
    ) -> Result<()>;
    /// v = β₂·v + (1−β₂)·s elementwise.
    fn ema_inplace(&self, v: Self::ViewMut<'_>, s: Self::View<'_>, beta2: f64) -> Result<()>;
    /// Momentum with one second moment per block: m = β₁m + (1−β₁)g; u = (m/bc1)/(√(v[i/block]/bc2) + ε).
    #[allow(clippy::too_many_arguments)]
    fn block_adam_direction_step(
        &self,
        u: Self::ViewMut<'_>,
        m: Self::ViewMut<'_>,
        v: Self::View<'_>,
        grads: Self::View<'_>,
        block: usize,
        hp: AdamStep,
    ) -> Result<()>;
    /// p = p·(1 − lr·λ) − lr·u
    fn apply_update(
        &self,
        params: Self::ViewMut<'_>,
        u: Self::View<'_>,
        lr: f64,
        weight_decay: f64,
    ) -> Result<()>;
}

/// Checks a rotation index list for [`Backend::rotation_index`]: every entry < `src_len`, none repeated.
pub fn check_rotation_index(index: &[u32], src_len: usize) -> Result<()> {
    let bad = |expected: String, got: String| Error::Shape {
        context: "rotation index".into(),
        expected,
        got,
    };
    let mut seen = vec![0u64; src_len.div_ceil(64)];
    for &i in index {
        let i = i as usize;
        if i >= src_len {
            return Err(bad(
                format!("entries < {src_len} (the length of the rotated vector)"),
                i.to_string(),
            ));
        }
        let (word, bit) = (i / 64, 1u64 << (i % 64));
        if seen[word] & bit != 0 {
            return Err(bad("distinct entries".into(), format!("{i} listed twice")));
        }
        seen[word] |= bit;
    }
    Ok(())
}
