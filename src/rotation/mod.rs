//! Rotations of the parameter space (Maes et al. §2.3, App. C, D.1).
//!
//! A rotation is data, not code (`docs/architecture.md`, decision 3): index lists over the flat parameter buffer plus
//! small Haar-random blocks, applied by two backend ops ([`Backend::rotate`], [`Backend::unrotate`]). Every
//! scope is just a different way to build the index lists ([`scope::groups`]), so one kernel serves all.
//!
//! Construction, as the paper does it (App. C.1, C.3, D.1), for block size n:
//! 1. the scope splits the d coordinates into groups (a tensor, a row, a column, or everything; see
//!    [`scope`] for what each scope does with embeddings and with 1-D parameters, which `--vector-rotation`
//!    and `--embedding-rotation` choose: a [`Neurons`]);
//! 2. each group's indices are shuffled by a uniformly random permutation π (Fisher–Yates);
//! 3. the permuted group is cut into consecutive chunks of n, each rotated by the SAME Haar block R_n
//!    (shared by every group); the last p = len mod n entries form a residual chunk rotated by a p×p Haar
//!    block, shared by every residual chunk of that size (a group shorter than n is all residual).
//!
//! Memory is O(n² + d) — the index lists, prepared once by the backend (`Backend::rotation_index`: on the
//! CPU a bucketed plan of 6–10 bytes per coordinate for scattered lists, see `backend::cpu::rotation`),
//! plus the blocks — and compute O(n·d); no d×d matrix ever exists. Random draws, all from `Rng::derive(seed, STREAM_ROTATION)`, in this order: the n×n
//! Gaussian of R_n, the permutations group by group (in [`scope::groups_with`] order), then one p×p
//! Gaussian per residual size p in ascending p. The matrices are computed in f64 and cast to the backend's
//! type. Coordinates in no group ([`scope::unrotated`]: embeddings under `--embedding-rotation none`) draw
//! nothing: they form a last class of 1×1 blocks holding exactly 1, the identity.
//!
//! **The rotated layout.** `rotate` returns a vector of length d laid out for speed, not in the standard
//! order: first every full n-block of every group (in group order; a block holds the n rotated coordinates
//! R_n·g[π-chunk]), then the residual blocks grouped by size, ascending p, then the unrotated coordinates
//! (if any) in index order. So rotate is one gather plus ONE large GEMM (nb×n)·(n×n)ᵀ, plus one per
//! residual size. The permutation is never undone in the rotated space (App. C.2: Adam is
//! permutation-equivariant, so it does not matter); optimizer state (the moments) lives in this layout
//! (blockwise Adam's in a fixed permutation of it, `optim::blocks`), and `unrotate` maps an update back to
//! the standard layout. Each position is *placed* at the standard index it was gathered from
//! ([`Rotation::layout_index`]), inside its group: that is how blockwise Adam finds its blocks here.
//!
//! `Scope::None` is the identity: no groups, `is_identity()` is true, and rotate/unrotate are plain copies
//! (optimizers skip them altogether). n = 1 makes R_1 = ±1: a pure permutation with random sign flips, under
//! which Adam must reproduce unrotated Adam exactly.

pub mod basis;
pub mod haar;
pub mod kron;
pub mod scope;
pub mod svd;

pub use haar::{haar, qr_q_unsigned};
pub use kron::KronRotation;
pub use scope::{groups, groups_with, Group, Neurons};
pub use svd::SvdRotation;

pub use crate::config::Scope;

use crate::backend::{AdamStep, Backend, Scalar};
use crate::error::{Error, Result};
use crate::model::ParamTable;
use crate::rng::{Rng, STREAM_ROTATION};
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt;

/// The paper's block size n (Maes et al. App. D.1); `--rotation-block` changes it.
pub const DEFAULT_BLOCK: usize = 768;

/// `count` blocks of size `size` at `offset` in the rotated layout, gathered by `index`, rotated by `r`.
struct BlockClass<BK: Backend> {
    size: usize,
    count: usize,
    offset: usize,
    /// count·size indices into the standard layout (the permuted chunks, one after another), prepared for
    /// the backend.
    index: BK::RotIndex,
    /// The size×size Haar block, row-major, in the backend's type (1 for the unrotated class).
    r: BK::Buf,
    /// The coordinates no group holds: size 1, r = 1 (`scope::unrotated`).
    unrotated: bool,
}

/// A span of the rotated layout: `count` consecutive blocks of `size` coordinates starting at `offset`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Segment {
    pub offset: usize,
    pub count: usize,
    pub size: usize,
}

/// A random rotation R of the d-dimensional parameter space: per-group permutations, the shared block R_n
/// and residual blocks (module docs). `rotate` computes R·g into the rotated layout, `unrotate` Rᵀ·u back.
pub struct Rotation<BK: Backend> {
    scope: Scope,
    /// What a neuron is under `output` and `input` (unused by the other scopes).
    neurons: Neurons,
    n: usize,
    seed: u64,
    /// The standard side's length: every parameter.
    d: usize,
    /// The rotated layout's length: d, or the length of the range [`Rotation::restrict`] kept.
    len: usize,
    /// Full n-blocks first (class 0, size n, possibly 0 blocks), then residual classes by ascending size.
    /// Empty for the identity.
    classes: Vec<BlockClass<BK>>,
}

/// Fisher–Yates shuffle of `x` with `rng` (uniform over all permutations): for i from len − 1 down to 1,
/// j = `rng.below(i + 1)` and x[i] ↔ x[j], so a seed gives the permutation [`Rotation::new`] draws.
pub fn shuffle(x: &mut [u32], rng: &mut Rng) {
    for i in (1..x.len()).rev() {
        let j = rng.below(i as u64 + 1) as usize;
        x.swap(i, j);
    }
}

/// `x` with thousands separators: 161894 → "161,894".
fn thousands(x: usize) -> String {
    let s = x.to_string();
    let mut out = String::with_capacity(s.len() + s.len() / 3);
    for (i, ch) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(ch);
    }
    out
}

/// Panics unless both buffers of a rotation op have the rotation's dimension d.
#[track_caller]
fn check_lens<BK: Backend>(be: &BK, what: &str, op: &str, d: usize, out: &BK::Buf, inp: &BK::Buf) {
    check_named(be, what, op, d, &[("out", out), ("input", inp)]);
}

/// Panics unless every named buffer of a rotation op has the rotation's dimension d.
#[track_caller]
fn check_named<BK: Backend>(be: &BK, what: &str, op: &str, d: usize, bufs: &[(&str, &BK::Buf)]) {
    for &(name, buf) in bufs {
        let len = be.buf_len(buf);
        assert!(
            len == d,
            "{what}::{op}: {name} has {len} elements, expected d = {d}"
        );
    }
}

/// Upload an f64 row-major matrix to a backend buffer of its type.
fn upload_f64<BK: Backend>(be: &BK, m: &[f64]) -> Result<BK::Buf> {
    let host: Vec<BK::T> = m.iter().map(|&x| <BK::T as Scalar>::from_f64(x)).collect();
    let mut buf = be.alloc(host.len())?;
    be.upload(&mut buf, &host)?;
    Ok(buf)
}

impl<BK: Backend> Rotation<BK> {
    /// Builds the rotation of `scope` with block size `n` over the parameters of `table`, drawn from
    /// `Rng::derive(seed, STREAM_ROTATION)` (module docs for the order of the draws), with the default
    /// [`Neurons`] (what a new run gets).
    pub fn new(be: &BK, scope: Scope, n: usize, seed: u64, table: &ParamTable) -> Result<Self> {
        Self::with_neurons(be, scope, n, seed, Neurons::default(), table)
    }

    /// [`Rotation::new`] with the neurons `neurons` (what `output` and `input` do with embeddings and
    /// 1-D tensors; [`scope`]).
    pub fn with_neurons(
        be: &BK,
        scope: Scope,
        n: usize,
        seed: u64,
        neurons: Neurons,
        table: &ParamTable,
    ) -> Result<Self> {
        if n == 0 {
            return Err(Error::config("rotation block", "must be at least 1"));
        }
        let d = table.total;
        if d as u64 > u32::MAX as u64 + 1 {
            return Err(Error::config(
                "rotation",
                format!("{d} parameters exceed the u32 index lists (at most 2^32)"),
            ));
        }
        let mut rot = Rotation {
            scope,
            neurons,
            n,
            seed,
            d,
            len: d,
            classes: Vec::new(),
        };
        if scope == Scope::None {
            return Ok(rot);
        }
        let mut rng = Rng::derive(seed, STREAM_ROTATION);
        let r_n = haar(n, &mut rng);

        let groups = scope::groups_with(scope, neurons, table);
        let full_len: usize = groups.iter().map(|g| g.len - g.len % n).sum();
        // A group is shuffled in place at the end of `full`, then its residual tail moves out.
        let mut full: Vec<u32> = Vec::with_capacity(full_len + n);
        let mut residual: BTreeMap<usize, Vec<u32>> = BTreeMap::new();
        for g in &groups {
            let start = full.len();
            full.extend(g.indices().map(|i| i as u32));
            shuffle(&mut full[start..], &mut rng);
            let p = g.len % n;
            if p > 0 {
                let tail = full.len() - p;
                residual
                    .entry(p)
                    .or_default()
                    .extend_from_slice(&full[tail..]);
                full.truncate(tail);
            }
        }
        debug_assert_eq!(full.len(), full_len);

        rot.classes.push(BlockClass {
            size: n,
            count: full.len() / n,
            offset: 0,
            index: be.rotation_index(full, n, d)?,
            r: upload_f64(be, &r_n)?,
            unrotated: false,
        });
        let mut offset = full_len;
        for (p, index) in residual {
            let r_p = haar(p, &mut rng);
            let count = index.len() / p;
            rot.classes.push(BlockClass {
                size: p,
                count,
                offset,
                index: be.rotation_index(index, p, d)?,
                r: upload_f64(be, &r_p)?,
                unrotated: false,
            });
            offset += count * p;
        }
        let fixed: Vec<u32> = scope::unrotated(scope, neurons, table)
            .iter()
            .flat_map(|g| g.indices().map(|i| i as u32))
            .collect();
        if !fixed.is_empty() {
            let count = fixed.len();
            rot.classes.push(BlockClass {
                size: 1,
                count,
                offset,
                index: be.rotation_index(fixed, 1, d)?,
                r: upload_f64(be, &[1.0])?,
                unrotated: true,
            });
            offset += count;
        }
        debug_assert_eq!(offset, d);
        Ok(rot)
    }

    /// True for `Scope::None`: rotate and unrotate are copies.
    pub fn is_identity(&self) -> bool {
        self.scope == Scope::None
    }
    /// d, the number of coordinates (parameters).
    pub fn dim(&self) -> usize {
        self.d
    }
    /// The block size n.
    pub fn block(&self) -> usize {
        self.n
    }
    pub fn scope(&self) -> Scope {
        self.scope
    }
    /// What a neuron is under `output` and `input` (and for blockwise Adam's neuron blocks in this basis).
    pub fn neurons(&self) -> Neurons {
        self.neurons
    }
    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// For each position of the rotated layout, the standard index gathered there: position `offset + k`
    /// of a class holds R·(gathered chunk) at the place of gathered index `index[k]`. Writing a rotated
    /// vector back to these indices keeps every rotated coordinate inside its group (its tensor, row or
    /// column), an "in-place" view of the rotated basis that the diagnostics use. The identity: 0..d.
    pub fn layout_index(&self, be: &BK) -> Vec<usize> {
        if self.is_identity() {
            return (0..self.d).collect();
        }
        self.classes
            .iter()
            .flat_map(|c| be.rotation_index_list(&c.index))
            .map(|i| i as usize)
            .collect()
    }

    /// [`Rotation::layout_index`] as u32 (what an index list holds); None for the identity.
    pub fn placement(&self, be: &BK) -> Option<Vec<u32>> {
        if self.is_identity() {
            return None;
        }
        Some(
            self.classes
                .iter()
                .flat_map(|c| be.rotation_index_list(&c.index))
                .collect(),
        )
    }

    /// The rotated layout as segments of equal-size blocks: full n-blocks first (present even when empty),
    /// then residual blocks by ascending size, then the unrotated coordinates as blocks of 1 (if any).
    /// Empty for the identity (whose layout is the standard one).
    pub fn segments(&self) -> Vec<Segment> {
        self.classes
            .iter()
            .map(|c| Segment {
                offset: c.offset,
                count: c.count,
                size: c.size,
            })
            .collect()
    }

    /// e.g. "global, n=768: 161,894 blocks of 768 + 1 residual block of 512"; the neuron scopes say what
    /// their neurons are: "output (1-D tensors per neuron, embeddings none), n=768: … + 39,383,808
    /// unrotated".
    pub fn describe(&self) -> String {
        if self.is_identity() {
            return format!("none (identity), {} coordinates", thousands(self.d));
        }
        let plural = |c: usize| if c == 1 { "" } else { "s" };
        let mut s = match self.scope {
            Scope::Output | Scope::Input => {
                format!("{} ({}), n={}", self.scope, self.neurons, self.n)
            }
            _ => format!("{}, n={}", self.scope, self.n),
        };
        for (i, c) in self.classes.iter().enumerate() {
            s += if i == 0 { ": " } else { " + " };
            if c.unrotated {
                s += &format!("{} unrotated", thousands(c.count));
                continue;
            }
            let kind = if i == 0 { "" } else { "residual " };
            s += &format!(
                "{} {kind}block{} of {}",
                thousands(c.count),
                plural(c.count),
                c.size
            );
        }
        s
    }

    #[track_caller]
    fn check(&self, be: &BK, op: &str, out: &BK::Buf, inp: &BK::Buf) {
        assert_eq!(
            self.len, self.d,
            "Rotation::{op} on a part of a rotation (restrict): only its fused Adam ops run there"
        );
        check_lens(be, "Rotation", op, self.d, out, inp);
    }

    /// Where each block of the rotated layout starts, ascending, then the layout's length: the places the
    /// layout can be cut without splitting a block (a data-parallel rank owns the blocks between two).
    pub fn block_starts(&self) -> Vec<usize> {
        let mut out: Vec<usize> = self
            .classes
            .iter()
            .flat_map(|c| (0..c.count).map(move |j| c.offset + j * c.size))
            .collect();
        out.push(self.len);
        out
    }

    /// The blocks in `range` of the rotated layout (cut at [`Rotation::block_starts`]) as a rotation of
    /// their own: its rotated layout is `range`, shifted to start at 0, and its standard side is still all
    /// d coordinates, so [`Rotation::rotate_adam_direction`] reads the whole gradient and
    /// [`Rotation::unrotate_apply_update`] writes the parameters at the blocks' indices only. What one
    /// data-parallel rank of a sharded optimizer runs (`optim::shard`); each block's arithmetic is the
    /// whole rotation's.
    pub fn restrict(&self, be: &BK, range: std::ops::Range<usize>) -> Result<Self> {
        assert!(
            !self.is_identity() && range.end <= self.len,
            "Rotation::restrict: {range:?} of a layout of {}",
            self.len
        );
        let mut classes = Vec::new();
        for c in &self.classes {
            let (lo, hi) = (c.offset, c.offset + c.count * c.size);
            let (a, b) = (range.start.max(lo), range.end.min(hi));
            if a >= b {
                continue;
            }
            assert!(
                (a - lo).is_multiple_of(c.size) && (b - lo).is_multiple_of(c.size),
                "Rotation::restrict: {range:?} cuts a block of {}",
                c.size
            );
            let list = be.rotation_index_list(&c.index);
            let r: Vec<f64> = be.download(&c.r)?.into_iter().map(Scalar::to_f64).collect();
            classes.push(BlockClass {
                size: c.size,
                count: (b - a) / c.size,
                offset: a - range.start,
                index: be.rotation_index(list[a - lo..b - lo].to_vec(), c.size, self.d)?,
                r: upload_f64(be, &r)?,
                unrotated: c.unrotated,
            });
        }
        Ok(Rotation {
            scope: self.scope,
            neurons: self.neurons,
            n: self.n,
            seed: self.seed,
            d: self.d,
            len: range.len(),
            classes,
        })
    }

    /// out = g (identity only): a zero fill and an add, so it stays a backend op (−0.0 becomes +0.0).
    fn copy(&self, be: &BK, out: &mut BK::Buf, g: &BK::Buf) -> Result<()> {
        let d = self.d;
        be.fill(be.view_mut(out, 0..d), <BK::T as Scalar>::from_f64(0.0))?;
        be.add_inplace(be.view_mut(out, 0..d), be.view(g, 0..d))?;
        Ok(())
    }

    /// out = R·g, in the rotated layout (module docs). `g` is in the standard layout; both have d elements.
    pub fn rotate(&self, be: &BK, out: &mut BK::Buf, g: &BK::Buf) -> Result<()> {
        self.check(be, "rotate", out, g);
        if self.is_identity() {
            return self.copy(be, out, g);
        }
        for c in &self.classes {
            let len = c.count * c.size;
            be.rotate(
                be.view_mut(out, c.offset..c.offset + len),
                be.view(g, 0..self.d),
                &c.index,
                be.view(&c.r, 0..c.size * c.size),
                c.count,
                c.size,
            )?;
        }
        Ok(())
    }

    /// out = Rᵀ·u, in the standard layout; `u` is in the rotated layout. Every index of `out` is written.
    pub fn unrotate(&self, be: &BK, out: &mut BK::Buf, u: &BK::Buf) -> Result<()> {
        self.check(be, "unrotate", out, u);
        if self.is_identity() {
            return self.copy(be, out, u);
        }
        for c in &self.classes {
            let len = c.count * c.size;
            be.unrotate(
                be.view_mut(out, 0..self.d),
                be.view(u, c.offset..c.offset + len),
                &c.index,
                be.view(&c.r, 0..c.size * c.size),
                c.count,
                c.size,
            )?;
        }
        Ok(())
    }

    /// Rotated AdamW, first half, fused over every block class ([`Backend::rotate_adam_direction`]):
    /// with g̃ = R·g, the moments m, v and the direction u = m̂/(√v̂ + ε), all in the rotated layout;
    /// `g` is in the standard layout. Not for the identity (it has no classes).
    pub fn rotate_adam_direction(
        &self,
        be: &BK,
        u: &mut BK::Buf,
        m: &mut BK::Buf,
        v: &mut BK::Buf,
        g: &BK::Buf,
        hp: AdamStep,
    ) -> Result<()> {
        assert!(
            !self.is_identity(),
            "Rotation::rotate_adam_direction on the identity"
        );
        let bufs = [("u", &*u), ("m", &*m), ("v", &*v)];
        check_named(be, "Rotation", "rotate_adam_direction", self.len, &bufs);
        check_named(be, "Rotation", "rotate_adam_direction", self.d, &[("g", g)]);
        for c in &self.classes {
            let r = c.offset..c.offset + c.count * c.size;
            be.rotate_adam_direction(
                be.view_mut(u, r.clone()),
                be.view_mut(m, r.clone()),
                be.view_mut(v, r),
                be.view(g, 0..self.d),
                &c.index,
                be.view(&c.r, 0..c.size * c.size),
                c.count,
                c.size,
                hp,
            )?;
        }
        Ok(())
    }

    /// Rotated AdamW, second half, fused over every block class ([`Backend::unrotate_apply_update`]):
    /// params −= lr·Rᵀu, `u` in the rotated layout. Weight decay is the caller's (applied before).
    pub fn unrotate_apply_update(
        &self,
        be: &BK,
        params: &mut BK::Buf,
        u: &BK::Buf,
        lr: f64,
    ) -> Result<()> {
        assert!(
            !self.is_identity(),
            "Rotation::unrotate_apply_update on the identity"
        );
        check_named(
            be,
            "Rotation",
            "unrotate_apply_update",
            self.len,
            &[("u", u)],
        );
        check_named(
            be,
            "Rotation",
            "unrotate_apply_update",
            self.d,
            &[("params", &*params)],
        );
        for c in &self.classes {
            be.unrotate_apply_update(
                be.view_mut(params, 0..self.d),
                be.view(u, c.offset..c.offset + c.count * c.size),
                &c.index,
                be.view(&c.r, 0..c.size * c.size),
                c.count,
                c.size,
                lr,
            )?;
        }
        Ok(())
    }
}

impl<BK: Backend> fmt::Debug for Rotation<BK> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Rotation({}, seed {})", self.describe(), self.seed)
    }
}
