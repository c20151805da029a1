//! The element types the CPU backend is generic over: f32 (the fast path) and f64 (the reference).

use std::fmt::{Debug, Display};

/// A floating-point element type of the CPU backend.
pub trait Scalar:
    num_traits::Float
    + num_traits::FromPrimitive
    + bytemuck::Pod
    + Default
    + Send
    + Sync
    + Debug
    + Display
    + std::iter::Sum
    + std::ops::AddAssign
    + std::ops::SubAssign
    + std::ops::MulAssign
    + 'static
{
    /// `"f32"` or `"f64"`.
    const NAME: &'static str;
    /// The safetensors dtype this type is stored as.
    const DTYPE: safetensors::Dtype;

    fn from_f64(x: f64) -> Self;
    fn to_f64(self) -> f64;
    fn from_f32(x: f32) -> Self;
    fn to_f32(self) -> f32;
    /// Round to the nearest bf16 value (round-to-nearest-even, via `half`) and back.
    fn round_bf16(self) -> Self;

    /// Row-major GEMM: C (m×n) = op(A)·op(B), or C += op(A)·op(B) when `accumulate`.
    /// op(A) is m×k: A is stored m×k, or k×m when `trans_a`. op(B) is k×n: B is stored k×n, or n×k when
    /// `trans_b`. Runs on `threads` threads of the current rayon pool (1 = sequential).
    #[allow(clippy::too_many_arguments)]
    fn gemm(
        c: &mut [Self],
        a: &[Self],
        b: &[Self],
        m: usize,
        n: usize,
        k: usize,
        trans_a: bool,
        trans_b: bool,
        accumulate: bool,
        threads: usize,
    );
}

/// Row-major GEMM through faer, shared by the f32 and f64 impls (faer's `ComplexField` bound is kept out of
/// the public `Scalar` trait).
#[allow(clippy::too_many_arguments)]
fn faer_gemm<T: faer::traits::ComplexField + Copy + num_traits::Zero>(
    c: &mut [T],
    a: &[T],
    b: &[T],
    m: usize,
    n: usize,
    k: usize,
    trans_a: bool,
    trans_b: bool,
    accumulate: bool,
    threads: usize,
    one: T,
) {
    assert_eq!(
        c.len(),
        m * n,
        "gemm: c has {} elements, expected m·n = {m}·{n}",
        c.len()
    );
    assert_eq!(
        a.len(),
        m * k,
        "gemm: a has {} elements, expected m·k = {m}·{k}",
        a.len()
    );
    assert_eq!(
        b.len(),
        k * n,
        "gemm: b has {} elements, expected k·n = {k}·{n}",
        b.len()
    );
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            c.fill(T::zero());
        }
        return;
    }
    use faer::{linalg::matmul::matmul, Accum, MatMut, MatRef, Par};
    let lhs = if trans_a {
        MatRef::from_row_major_slice(a, k, m).transpose()
    } else {
        MatRef::from_row_major_slice(a, m, k)
    };
    let rhs = if trans_b {
        MatRef::from_row_major_slice(b, n, k).transpose()
    } else {
        MatRef::from_row_major_slice(b, k, n)
    };
    let dst = MatMut::from_row_major_slice_mut(c, m, n);
    let beta = if accumulate {
        Accum::Add
    } else {
        Accum::Replace
    };
    let par = if threads <= 1 {
        Par::Seq
    } else {
        Par::rayon(threads)
    };
    matmul(dst, beta, lhs, rhs, one, par);
    // faer's AVX-512 kernels return with the upper vector state dirty; legacy-SSE code that runs next on the
    // same threads (our elementwise loops, libm's expf/tanhf) then becomes up to ~40x slower (measured:
    // cross-entropy over 256×50257 logits 30 ms → 1.1 s). Clear it on every thread that may have run them.
    clear_upper_vector_state();
    if threads > 1 {
        rayon::broadcast(|_| clear_upper_vector_state());
    }
}

/// `vzeroupper` on the current thread when the CPU has AVX (a no-op elsewhere).
#[inline]
pub(crate) fn clear_upper_vector_state() {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx") {
        #[target_feature(enable = "avx")]
        fn vzeroupper() {
            std::arch::x86_64::_mm256_zeroupper();
        }
        // SAFETY: the enclosing `if` saw AVX on this CPU (is_x86_feature_detected!), which is all
        // `vzeroupper` requires; it only zeroes the upper halves of the vector registers, which the compiler
        // treats as clobbered.
        unsafe { vzeroupper() }
    }
}

impl Scalar for f32 {
    const NAME: &'static str = "f32";
    const DTYPE: safetensors::Dtype = safetensors::Dtype::F32;

    #[inline]
    fn from_f64(x: f64) -> Self {
        x as f32
    }
    #[inline]
    fn to_f64(self) -> f64 {
        self as f64
    }
    #[inline]
    fn from_f32(x: f32) -> Self {
        x
    }
    #[inline]
    fn to_f32(self) -> f32 {
        self
    }
    #[inline]
    fn round_bf16(self) -> Self {
        half::bf16::from_f32(self).to_f32()
    }
    fn gemm(
        c: &mut [Self],
        a: &[Self],
        b: &[Self],
        m: usize,
        n: usize,
        k: usize,
        trans_a: bool,
        trans_b: bool,
        accumulate: bool,
        threads: usize,
    ) {
        faer_gemm(c, a, b, m, n, k, trans_a, trans_b, accumulate, threads, 1.0);
    }
}

impl Scalar for f64 {
    const NAME: &'static str = "f64";
    const DTYPE: safetensors::Dtype = safetensors::Dtype::F64;

    #[inline]
    fn from_f64(x: f64) -> Self {
        x
    }
    #[inline]
    fn to_f64(self) -> f64 {
        self
    }
    #[inline]
    fn from_f32(x: f32) -> Self {
        x as f64
    }
    #[inline]
    fn to_f32(self) -> f32 {
        self as f32
    }
    #[inline]
    fn round_bf16(self) -> Self {
        half::bf16::from_f64(self).to_f64()
    }
    fn gemm(
        c: &mut [Self],
        a: &[Self],
        b: &[Self],
        m: usize,
        n: usize,
        k: usize,
        trans_a: bool,
        trans_b: bool,
        accumulate: bool,
        threads: usize,
    ) {
        faer_gemm(c, a, b, m, n, k, trans_a, trans_b, accumulate, threads, 1.0);
    }
}
