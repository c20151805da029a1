//! The `kron` rotation: chained permutations and three-factor Kronecker rotations (Xie, Mohamadi & Li,
//! "Adam exploits ℓ∞-geometry of loss landscape via coordinate-wise adaptivity", App. D.1).
//!
//! A d×d Haar rotation is out of reach at d = 124M, so Xie et al. compose cheap orthogonal maps: permute the
//! vector at random, reshape it to a 3-D tensor, rotate every side by a fixed random orthogonal factor, and
//! chain k such stages (default 2). Here stage s, with a uniformly random permutation π_s of 0..d:
//! 1. x' = P_s x, i.e. `x'[i] = x[π_s[i]]`;
//! 2. the first a·b·c entries of x', read row-major as X (a, b, c), become Y = X ×₁ A ×₂ B ×₃ C, i.e.
//!    vec(Y) = (A ⊗ B ⊗ C)·vec(X), with A, B, C Haar-random orthogonal factors of sizes a, b, c;
//! 3. the last r = d − a·b·c entries (the remainder: a few hundred at most for almost every d) are
//!    rotated by one r×r Haar block, a full orthogonal mix of the remainder at O(r²) cost. A remainder
//!    longer than 768 (rare: the first d is 1,456,825, where r = 769) is cut like the block rotation:
//!    q = ⌊r/768⌋ blocks of 768 sharing one Haar block, then one block of r mod 768.
//!
//! So stage s = (A ⊗ B ⊗ C ⊕ R_res)·P_s is orthogonal on all d coordinates, and the rotation is
//! R = stage_k ∘ … ∘ stage_1; `unrotate` applies Rᵀ = stage_1ᵀ ∘ … ∘ stage_kᵀ. The remainder gets only a
//! small block per stage, but each later stage re-permutes, so the remainder coordinates are mixed into
//! the Kronecker part from stage 2 on.
//!
//! **Factor sizes** ([`kron_shape`]): with t = ∛d, search a ∈ [⌈0.9·t⌉, ⌊t⌋] (clamped to ≥ 1 and to
//! a non-empty range), b ∈ [a, ⌊√(d/a)⌋], c = ⌊d/(a·b)⌋ (so a ≤ b ≤ c), and take the smallest remainder
//! r = d − a·b·c, then the smallest a + b + c (the GEMM cost is 2·d·(a + b + c) flops per stage), then the
//! smallest a, then b. The window keeps every factor within [0.9·t, 1.24·t] (for d large enough that
//! the window is not empty), so the cost is within about 1% of the balanced 3·t (over d ≥ 1,000 sampled)
//! while the remainder stays tiny: GPT-2 124M without biases, d = 124,337,664, gives 453 × 514 × 534 + 36;
//! d = 7,236,864 gives 176 × 178 × 231 + 96; a tiny d such as 7 gives 1 × 1 × 7 (one Haar factor of all d
//! coordinates). All stages share the shape, not the draws.
//!
//! **Random draws**, all from `Rng::derive(seed, STREAM_ROTATION)`, stage by stage (s = 1..k): the
//! Fisher–Yates shuffle of π_s (i from d−1 down to 1, j = below(i+1), swap; π starts as the identity),
//! then the Gaussian matrices of A (a×a), B (b×b), C (c×c) via [`haar`], then the remainder blocks (the
//! 768 block if q > 0, then the r mod 768 block if non-zero). Factors are computed in f64 and cast to the
//! backend's type. [`KronRotation::with_identity_permutation`] skips the shuffles (and their draws).
//!
//! **Ops** (only the [`Backend`] trait): step 1 fused with mode 3 is one [`Backend::rotate`] (a gather
//! of `π_s[..abc]` and one GEMM X·Cᵀ over the a·b rows of length c), the remainder another; mode 2 is one
//! GEMM B·X_i per slice i < a (b×c); mode 1 is one GEMM A·X as (a×a)(a×bc). The transposed stage runs
//! mode 1ᵀ, mode 2ᵀ, then [`Backend::unrotate`] (Cᵀ and the scatter through π_s) and the remainder's
//! unrotate. Two d-buffers suffice: `out` and one scratch the struct owns (stages alternate between them
//! so the last one lands in `out`; no copies). Memory: one u32 per coordinate per stage plus one scratch
//! vector of d; compute 2·d·(a+b+c) flops per stage and direction (≈ 3.7·10¹¹ at d = 124M, about twice
//! the block rotation's 2·d·768).
//!
//! The output is R·g in the standard sense (a length-d vector, the image of the last stage), with no
//! layout convention beyond that: unlike the block [`super::Rotation`], nothing is left "permuted".

use super::haar::haar;
use super::DEFAULT_BLOCK;
use super::{shuffle, thousands};
use crate::backend::{Backend, Scalar};
use crate::error::{Error, Result};
use crate::rng::{Rng, STREAM_ROTATION};
use std::fmt;

/// The default number of chained stages k (Xie et al. App. D.1 chain "a positive number"
/// of them).
pub const DEFAULT_STAGES: usize = 2;

/// A remainder longer than this is cut into blocks of this size (the block rotation's n).
const RESIDUAL_BLOCK: usize = DEFAULT_BLOCK;

/// The factor sizes (a, b, c), a ≤ b ≤ c, for a vector of length d ≥ 1, by the rule in the module docs;
/// the remainder is d − a·b·c.
pub fn kron_shape(d: usize) -> [usize; 3] {
    assert!(d > 0, "kron_shape: d must be at least 1");
    let d128 = d as u128;
    // ⌊∛d⌋ exactly: a float guess, corrected with integer arithmetic.
    let mut hi = (d as f64).cbrt().round() as u128;
    while hi > 1 && hi * hi * hi > d128 {
        hi -= 1;
    }
    while (hi + 1).pow(3) <= d128 {
        hi += 1;
    }
    let hi = hi.max(1);
    // ⌈0.9·∛d⌉: the least a with (a/0.9)³ ≥ d, i.e. 1000·a³ ≥ 729·d.
    let mut lo = hi;
    while lo > 1 && 1000 * (lo - 1).pow(3) >= 729 * d128 {
        lo -= 1;
    }
    let (lo, hi) = (lo as usize, hi as usize);
    // The key (r, a + b + c, a, b), compared lexicographically. a = hi, b = a always qualifies
    // (hi³ ≤ d), so the search is never empty.
    let mut best = (usize::MAX, usize::MAX, 0, 0);
    for a in lo..=hi {
        let mut b = a;
        while a * b * b <= d {
            let c = d / (a * b);
            best = best.min((d - a * b * c, a + b + c, a, b));
            b += 1;
        }
    }
    let (_, _, a, b) = best;
    [a, b, d / (a * b)]
}

/// `count` consecutive remainder blocks of `size`, rotated by one shared Haar block `r` (size×size).
struct ResidualClass<BK: Backend> {
    size: usize,
    count: usize,
    /// Offset in the stage's output (and in π): a·b·c + the blocks before.
    offset: usize,
    /// π[offset .. offset + count·size], prepared for the backend.
    index: BK::RotIndex,
    r: BK::Buf,
}

/// One stage: permutation, the three factors, the remainder blocks.
struct Stage<BK: Backend> {
    /// π[..a·b·c] (π: the stage's input index of each output position), prepared for the backend with
    /// blocks of c; the remainder's entries are in the residual classes.
    body: BK::RotIndex,
    /// A (a×a), B (b×b), C (c×c), row-major, in the backend's type.
    fa: BK::Buf,
    fb: BK::Buf,
    fc: BK::Buf,
    residual: Vec<ResidualClass<BK>>,
}

/// The `kron` rotation R = stage_k ∘ … ∘ stage_1 of a vector of length d (module docs).
pub struct KronRotation<BK: Backend> {
    d: usize,
    /// (a, b, c), shared by every stage.
    shape: [usize; 3],
    seed: u64,
    permuted: bool,
    stages: Vec<Stage<BK>>,
    /// d elements of workspace (that is why rotate and unrotate take `&mut self`).
    scratch: BK::Buf,
}

/// A Haar-random n×n orthogonal matrix drawn from `rng`, uploaded in the backend's type.
fn upload_haar<BK: Backend>(be: &BK, n: usize, rng: &mut Rng) -> Result<BK::Buf> {
    let host: Vec<BK::T> = haar(n, rng)
        .iter()
        .map(|&x| <BK::T as Scalar>::from_f64(x))
        .collect();
    let mut buf = be.alloc(host.len())?;
    be.upload(&mut buf, &host)?;
    Ok(buf)
}

impl<BK: Backend> KronRotation<BK> {
    /// `stages` chained stages over a vector of length d, all random draws from
    /// `Rng::derive(seed, crate::rng::STREAM_ROTATION)`: per stage, in order, the permutation's
    /// Fisher–Yates shuffle, the Gaussians of A, B, C, then the remainder blocks (module docs).
    pub fn new(be: &BK, d: usize, stages: usize, seed: u64) -> Result<Self> {
        Self::build(be, d, stages, seed, true)
    }

    /// The same construction with every permutation π_s the identity and no shuffle draws (the first
    /// draw is stage 1's A). Only for tests: without the permutations, stage s is A_s ⊗ B_s ⊗ C_s on the
    /// first a·b·c coordinates, so the factor structure can be checked densely. Not a rotation of the
    /// paper: chained stages collapse to the single Kronecker product (A_k⋯A_1) ⊗ (B_k⋯B_1) ⊗ (C_k⋯C_1).
    pub fn with_identity_permutation(be: &BK, d: usize, stages: usize, seed: u64) -> Result<Self> {
        Self::build(be, d, stages, seed, false)
    }

    fn build(be: &BK, d: usize, stages: usize, seed: u64, permute: bool) -> Result<Self> {
        if d == 0 {
            return Err(Error::config("kron rotation", "d must be at least 1"));
        }
        if stages == 0 {
            return Err(Error::config("kron stages", "must be at least 1"));
        }
        if d as u64 > u32::MAX as u64 + 1 {
            return Err(Error::config(
                "kron rotation",
                format!("{d} coordinates exceed the u32 permutations (at most 2^32)"),
            ));
        }
        let shape = kron_shape(d);
        let [a, b, c] = shape;
        let body = a * b * c;
        let rem = d - body;
        let mut rng = Rng::derive(seed, STREAM_ROTATION);
        let mut built = Vec::with_capacity(stages);
        for _ in 0..stages {
            let mut perm: Vec<u32> = (0..d).map(|i| i as u32).collect();
            if permute {
                shuffle(&mut perm, &mut rng);
            }
            let fa = upload_haar(be, a, &mut rng)?;
            let fb = upload_haar(be, b, &mut rng)?;
            let fc = upload_haar(be, c, &mut rng)?;
            let mut residual = Vec::new();
            let (q, p) = if rem <= RESIDUAL_BLOCK {
                (0, rem)
            } else {
                (rem / RESIDUAL_BLOCK, rem % RESIDUAL_BLOCK)
            };
            let mut offset = body;
            for (size, count) in [(RESIDUAL_BLOCK, q), (p, 1)] {
                if count == 0 || size == 0 {
                    continue;
                }
                let index = perm[offset..offset + size * count].to_vec();
                residual.push(ResidualClass {
                    size,
                    count,
                    offset,
                    index: be.rotation_index(index, size, d)?,
                    r: upload_haar(be, size, &mut rng)?,
                });
                offset += size * count;
            }
            debug_assert_eq!(offset, d);
            perm.truncate(body);
            built.push(Stage {
                body: be.rotation_index(perm, c, d)?,
                fa,
                fb,
                fc,
                residual,
            });
        }
        Ok(KronRotation {
            d,
            shape,
            seed,
            permuted: permute,
            stages: built,
            scratch: be.alloc(d)?,
        })
    }

    /// d, the length of the vectors rotated.
    pub fn dim(&self) -> usize {
        self.d
    }
    /// The number of chained stages k.
    pub fn stages(&self) -> usize {
        self.stages.len()
    }
    /// The factor sizes (a, b, c) of every stage ([`kron_shape`] of d).
    pub fn shape(&self) -> [usize; 3] {
        self.shape
    }
    /// The remainder r = d − a·b·c.
    pub fn residual(&self) -> usize {
        self.d - self.shape.iter().product::<usize>()
    }
    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// e.g. "kron, 2 stages of 453 x 514 x 534 + 36 residual (one 36x36 Haar block); d = 124,337,664,
    /// factors: least remainder with a in [0.9, 1]·∛d, a ≤ b ≤ c".
    pub fn describe(&self) -> String {
        let [a, b, c] = self.shape;
        let k = self.stages.len();
        let mut s = format!(
            "kron, {k} stage{} of {a} x {b} x {c}",
            if k == 1 { "" } else { "s" }
        );
        let r = self.residual();
        if r > 0 {
            s += &format!(" + {} residual (", thousands(r));
            let classes = self.stages[0].residual.iter();
            let parts: Vec<String> = classes
                .map(|rc| match rc.count {
                    1 => format!("one {0}x{0} Haar block", rc.size),
                    n => format!("{} Haar blocks of {}", thousands(n), rc.size),
                })
                .collect();
            s += &parts.join(" + ");
            s += ")";
        }
        s += &format!(
            "; d = {}, factors: least remainder with a in [0.9, 1]·∛d, a ≤ b ≤ c",
            thousands(self.d)
        );
        if !self.permuted {
            s += "; identity permutations (test only)";
        }
        s
    }

    #[track_caller]
    fn check(&self, be: &BK, op: &str, out: &BK::Buf, inp: &BK::Buf) {
        super::check_lens(be, "KronRotation", op, self.d, out, inp);
    }

    /// out = R·g (both of length d).
    pub fn rotate(&mut self, be: &BK, out: &mut BK::Buf, g: &BK::Buf) -> Result<()> {
        self.check(be, "rotate", out, g);
        let KronRotation {
            d,
            shape,
            stages,
            scratch,
            ..
        } = self;
        let k = stages.len();
        for (s, stage) in stages.iter().enumerate() {
            // Stage s (0-based) writes `out` when k − 1 − s is even, so the last stage lands in `out`;
            // its input is `g` for the first stage, else the other buffer (its `tmp`).
            let (dst, tmp) = if (k - 1 - s) % 2 == 0 {
                (&mut *out, &mut *scratch)
            } else {
                (&mut *scratch, &mut *out)
            };
            let src = if s == 0 { Some(g) } else { None };
            stage_rotate(be, stage, *shape, *d, dst, tmp, src)?;
        }
        Ok(())
    }

    /// out = Rᵀ·u (both of length d).
    pub fn unrotate(&mut self, be: &BK, out: &mut BK::Buf, u: &BK::Buf) -> Result<()> {
        self.check(be, "unrotate", out, u);
        let KronRotation {
            d,
            shape,
            stages,
            scratch,
            ..
        } = self;
        let k = stages.len();
        for (s, stage) in stages.iter().enumerate().rev() {
            // Stages run k−1 … 0; stage s writes `out` when s is even, so stage 0 lands in `out`.
            let (dst, tmp) = if s % 2 == 0 {
                (&mut *out, &mut *scratch)
            } else {
                (&mut *scratch, &mut *out)
            };
            let src = if s == k - 1 { Some(u) } else { None };
            stage_unrotate(be, stage, *shape, *d, dst, tmp, src)?;
        }
        Ok(())
    }
}

/// dst = stage·x, x = `src`, or `tmp` when `src` is None; `tmp` is clobbered (its first a·b·c entries).
fn stage_rotate<BK: Backend>(
    be: &BK,
    st: &Stage<BK>,
    [a, b, c]: [usize; 3],
    d: usize,
    dst: &mut BK::Buf,
    tmp: &mut BK::Buf,
    src: Option<&BK::Buf>,
) -> Result<()> {
    let body = a * b * c;
    {
        let x = src.unwrap_or(&*tmp);
        // Permutation + mode 3: row p of the (ab × c) matrix is C · x[π[p·c .. (p+1)·c]].
        be.rotate(
            be.view_mut(dst, 0..body),
            be.view(x, 0..d),
            &st.body,
            be.view(&st.fc, 0..c * c),
            a * b,
            c,
        )?;
        for rc in &st.residual {
            let len = rc.count * rc.size;
            be.rotate(
                be.view_mut(dst, rc.offset..rc.offset + len),
                be.view(x, 0..d),
                &rc.index,
                be.view(&rc.r, 0..rc.size * rc.size),
                rc.count,
                rc.size,
            )?;
        }
    }
    // Mode 2: slice i (b × c) ← B · slice i.
    let slice = b * c;
    for i in 0..a {
        be.gemm(
            be.view_mut(tmp, i * slice..(i + 1) * slice),
            be.view(&st.fb, 0..b * b),
            be.view(dst, i * slice..(i + 1) * slice),
            b,
            c,
            b,
            false,
            false,
            false,
        )?;
    }
    // Mode 1: (a × bc) ← A · (a × bc).
    be.gemm(
        be.view_mut(dst, 0..body),
        be.view(&st.fa, 0..a * a),
        be.view(tmp, 0..body),
        a,
        slice,
        a,
        false,
        false,
        false,
    )?;
    Ok(())
}

/// dst = stageᵀ·y, y = `src`, or `tmp` when `src` is None (only tmp's first a·b·c entries are clobbered
/// before its remainder is read).
fn stage_unrotate<BK: Backend>(
    be: &BK,
    st: &Stage<BK>,
    [a, b, c]: [usize; 3],
    d: usize,
    dst: &mut BK::Buf,
    tmp: &mut BK::Buf,
    src: Option<&BK::Buf>,
) -> Result<()> {
    let body = a * b * c;
    let slice = b * c;
    // Mode 1ᵀ: (a × bc) ← Aᵀ · (a × bc).
    be.gemm(
        be.view_mut(dst, 0..body),
        be.view(&st.fa, 0..a * a),
        be.view(src.unwrap_or(&*tmp), 0..body),
        a,
        slice,
        a,
        true,
        false,
        false,
    )?;
    // Mode 2ᵀ: slice i ← Bᵀ · slice i.
    for i in 0..a {
        be.gemm(
            be.view_mut(tmp, i * slice..(i + 1) * slice),
            be.view(&st.fb, 0..b * b),
            be.view(dst, i * slice..(i + 1) * slice),
            b,
            c,
            b,
            true,
            false,
            false,
        )?;
    }
    // Mode 3ᵀ + inverse permutation: dst[π[p·c + j]] = (Cᵀ · row p)_j.
    be.unrotate(
        be.view_mut(dst, 0..d),
        be.view(tmp, 0..body),
        &st.body,
        be.view(&st.fc, 0..c * c),
        a * b,
        c,
    )?;
    let y = src.unwrap_or(&*tmp);
    for rc in &st.residual {
        let len = rc.count * rc.size;
        be.unrotate(
            be.view_mut(dst, 0..d),
            be.view(y, rc.offset..rc.offset + len),
            &rc.index,
            be.view(&rc.r, 0..rc.size * rc.size),
            rc.count,
            rc.size,
        )?;
    }
    Ok(())
}

impl<BK: Backend> fmt::Debug for KronRotation<BK> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KronRotation({}, seed {})", self.describe(), self.seed)
    }
}
