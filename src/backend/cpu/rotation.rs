//! Batched block rotation with a gather, and its transpose with a scatter (`docs/architecture.md`, decision 3;
//! Maes et al. App. C.1: the block-diagonal R_n ⊕ … ⊕ R_n applied to permuted coordinates).
//!
//! - `rotate`:   out (NB,N) row b = R · inp[index[b·N .. (b+1)·N]]   i.e. OUT = X·Rᵀ, X the gathered rows;
//! - `unrotate`: Y = U·R (row b of Y = Rᵀ · u_b), then out[index[i]] = Y[i] (a scatter, `=`).
//!
//! R is (N,N) row-major. The blocks are processed in chunks of about [`CHUNK_ELEMS`] elements (whole
//! blocks), each multiplied on the backend's threads by one GEMM of chunk·N × N × N (5,460 × 768 × 768 at
//! N = 768). Two GEMMs: in f32 with N a multiple of 32 on an AVX-512 CPU, the [`rotgemm`] kernel, which
//! gathers each block of rows as it packs them and hands back each block of results while it is in L2
//! (no chunk-sized copy of the gathered rows); otherwise faer (`T::gemm`) on a chunk gathered into a
//! per-thread scratch buffer. No bf16 rounding: rotations run in `T` (the paper applies them in single
//! precision). Invariants: `rotate` overwrites all of `out`; `unrotate` overwrites exactly the entries
//! named by `index` and leaves the others untouched.
//!
//! **Two ways to move the coordinates** ([`RotIndex`], chosen once per index list by [`prepare`]):
//! - `Direct`: x[i] = inp[index[i]] and out[index[i]] = y[i]. Right for lists whose chunks read from a
//!   cache-sized span (rows of one tensor: the `output` scope), but for a list that scatters over the whole
//!   model (`global`) nearly every access is a cache and TLB miss, so the moves cost more than the GEMMs
//!   (`docs/benchmarks.md`, "Rotation cost").
//! - `Bucketed`: the same permutation as a radix partition (as in database hash joins). The rotated layout
//!   is cut into windows of whole blocks of at most 2^16 coordinates (256 KB in f32: L2-sized). Pass 1
//!   reads `inp` in order and appends each coordinate to its window's bucket in a staging buffer; with more
//!   than [`FANOUT`] windows it does so in two levels, because a pass that writes to more than about 64
//!   streams at once slows down several times ([`FANOUT`]): first to groups, one per GEMM chunk (≤ 64 groups up to 64 chunks,
//!   268 M coordinates; beyond, this level writes to more streams), then, right before each chunk's GEMM,
//!   the group's coordinates to its windows in a chunk-sized buffer. Pass 2, per window, moves the bucket
//!   into the window's rows (random access, but within 256 KB); with the f32 kernel, windows are the
//!   kernel's blocks of rows (a whole number of its 12-row tiles: 84 rows at N = 768) and pass 2 is its
//!   packing (`rotate`: row element k = bucket[inverse[k]]) and its store (`unrotate`: bucket[i] =
//!   C[offset[i]]). `unrotate` runs the passes backwards. `rotadam bench rotation --gather bucketed|direct`
//!   compares the two (`docs/benchmarks.md`). It costs, per coordinate, a u32
//!   staging position, a u32 hop with two levels, a u16 window offset and with the kernel its u16
//!   inverse, plus a staging buffer of the list's length and one chunk (for `global` 124M in f32:
//!   1.49 GB of plan, 0.5 GB of staging), and building it is a few parallel counting sorts in
//!   `Rotation::new`.
//!
//! Both give bit-identical results: the chunk boundaries (hence every GEMM) are the same, only the order in
//! which coordinates are moved differs.

use super::optim::{adam_direction, decayed_step};
use super::rotgemm::{self, PackedB};
use super::{check_len, with_scratch, with_staging, CHUNK};
use crate::backend::AdamCoeffs;
use crate::backend::{check_rotation_index, AdamStep, Scalar};
use crate::error::Result;
use rayon::prelude::*;
use std::sync::atomic::{AtomicU32, Ordering};

/// Target number of elements per GEMM chunk (whole windows of blocks; at least one window per chunk).
pub const CHUNK_ELEMS: usize = 1 << 22;

/// The most coordinates in one window of the bucketed plan (its offsets are u16).
pub const WINDOW_ELEMS: usize = 1 << 16;

/// `Auto` uses the bucketed plan for lists at least this long whose windows read from a wide span.
const BUCKETED_MIN: usize = 1 << 20;

/// `Auto`: a list counts as scattered when its windows' source spans average more than this many windows.
const SCATTER_SPAN_WINDOWS: usize = 16;

/// Below this many elements the direct scatter runs on the calling thread only.
const SCATTER_PAR_MIN: usize = 1 << 15;

/// The most write (or read) streams one bucketing pass keeps open: beyond about 64 the L1 TLB and the
/// line fill buffers run out and a pass slows down several times (measured: `docs/benchmarks.md`), so
/// more windows than this go through two levels.
const FANOUT: usize = 64;

/// Marks a source coordinate that the index list does not name.
const NOT_LISTED: u32 = u32::MAX;

/// How the CPU backend moves a rotation's coordinates (`bench rotation --gather`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum GatherMode {
    /// Bucketed for long lists that read from a wide span, direct otherwise.
    #[default]
    Auto,
    /// One random access per coordinate.
    Direct,
    /// The two-pass bucketed permutation wherever it applies (block size n ≤ 2^16).
    Bucketed,
}

impl crate::config::Choice for GatherMode {
    const WHAT: &'static str = "gather";
    const VALUES: &'static [(Self, &'static str, &'static str)] = &[
        (
            GatherMode::Auto,
            "auto",
            "bucketed for long lists that read from a wide span, direct otherwise",
        ),
        (
            GatherMode::Direct,
            "direct",
            "one random access per coordinate",
        ),
        (
            GatherMode::Bucketed,
            "bucketed",
            "the two-pass bucketed permutation wherever it applies (n ≤ 2^16)",
        ),
    ];
}
crate::config::choice_impls!(GatherMode);

/// A rotation's index list as the CPU backend keeps it (`Backend::RotIndex`; module docs).
#[derive(Debug)]
pub enum RotIndex {
    Direct(Vec<u32>),
    Bucketed(BucketPlan),
}

impl RotIndex {
    /// The number of entries of the list (NB·N).
    pub fn len(&self) -> usize {
        match self {
            RotIndex::Direct(ix) => ix.len(),
            RotIndex::Bucketed(p) => p.len,
        }
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// True for the bucketed plan.
    pub fn is_bucketed(&self) -> bool {
        matches!(self, RotIndex::Bucketed(_))
    }
    /// Bucketing levels of pass 1: 0 for a direct list, 1, or 2 when there are more than 64 windows.
    pub fn levels(&self) -> usize {
        match self {
            RotIndex::Direct(_) => 0,
            RotIndex::Bucketed(p) => p.levels(),
        }
    }
    /// The list itself: entry i is the source coordinate gathered to position i.
    pub fn to_list(&self) -> Vec<u32> {
        match self {
            RotIndex::Direct(ix) => ix.clone(),
            RotIndex::Bucketed(p) => p.to_list(),
        }
    }
}

/// The bucketed permutation of one index list (module docs). Windows cover the rotated positions
/// [w·W, min((w+1)·W, len)); the staging buffer holds window w's coordinates at the same positions, in
/// increasing source order. With more than [`FANOUT`] windows, pass 1 goes through groups of windows
/// first (`hop`), so no pass writes to more than [`FANOUT`] streams (module docs).
#[derive(Debug)]
pub struct BucketPlan {
    /// W, coordinates per window: a whole number of blocks, at most [`WINDOW_ELEMS`].
    window: usize,
    /// NB·N, the list's length.
    len: usize,
    /// Coordinates per group of windows: the GEMM chunk (a multiple of W) with two levels, `len` with one.
    group: usize,
    /// Per source coordinate (src_len entries): its position in the first staging buffer (grouped by
    /// group of windows, or by window with one level), or [`NOT_LISTED`].
    stage: Vec<u32>,
    /// Two levels only (else empty): per position of the first staging buffer, its window-order position
    /// (grouped by window). Each group's entries stay inside the group's range.
    hop: Vec<u32>,
    /// Per (final) staging position (len entries): its offset in its window of the rotated layout.
    offset: Vec<u16>,
    /// The inverse of `offset` within each window (per rotated position, the staging position it comes
    /// from, relative to the window), kept only for the f32 kernel that packs straight from the buckets
    /// ([`rotgemm`]); else empty.
    inverse: Vec<u16>,
}

impl BucketPlan {
    /// The plan of `index` (distinct entries < `src_len`) for blocks of `n`, with the inverse offsets when
    /// `inverse`; None when n > 2^16.
    fn new(index: &[u32], n: usize, src_len: usize, inverse: bool) -> Result<Option<Self>> {
        if n == 0 || n > WINDOW_ELEMS {
            return Ok(None);
        }
        let window = window_rows(n, inverse) * n;
        let len = index.len();
        // stage[src] first holds the rotated position of src, then its position in the window order.
        let Some(mut stage) = listed_positions(index, src_len) else {
            // Out of range or repeated: the shared check names which.
            return check_rotation_index(index, src_len).map(|()| None);
        };
        let mut offset = vec![0u16; len];
        super::advise_huge_pages(&offset);
        let windows = len.div_ceil(window);
        let offsets = SharedMut(offset.as_mut_ptr());
        // offset[pos] for the window position `pos` of rotated position j
        let set_offset = |pos: usize, j: usize| {
            // SAFETY: `bucket_slots` passes every position once, each < len (the windows cover [0, len)),
            // and the per-group sorts below cover disjoint ranges of positions; so tasks write distinct
            // in-bounds elements of `offset`, which is alive and otherwise unborrowed until the plan is
            // built.
            unsafe { *offsets.ptr().add(pos) = (j % window) as u16 };
        };
        let (group, hop) = if windows <= FANOUT {
            bucket_slots(
                &mut stage,
                windows,
                |j| j / window,
                |w| w * window,
                set_offset,
            );
            (len.max(1), Vec::new())
        } else {
            // Groups of windows, one per GEMM chunk (at most FANOUT of them up to 64 chunks):
            // stage → group position, in source order within a group; `hop` holds the rotated position
            // meanwhile. Then each group on its own (its positions stay inside it): hop → window
            // position, in the same order.
            let group = chunk_rows_for(n, inverse) * n;
            let mut hop = vec![0u32; len];
            super::advise_huge_pages(&hop);
            let hops = SharedMut(hop.as_mut_ptr());
            let groups = len.div_ceil(group);
            bucket_slots(
                &mut stage,
                groups,
                |j| j / group,
                |g| g * group,
                |first, j| {
                    // SAFETY: `stage` lists each rotated position j < len exactly once, and bucket_slots
                    // hands every one a distinct `first` < len (bucket g holds positions g·group up to
                    // min((g + 1)·group, len), exclusive), so tasks write distinct in-bounds elements of
                    // `hop`, which lives and is not otherwise borrowed during this call.
                    unsafe { *hops.ptr().add(first) = j as u32 };
                },
            );
            hop.par_chunks_mut(group).enumerate().for_each(|(g, hop)| {
                let first_window = g * group / window;
                let windows = hop.len().div_ceil(window);
                let start = |w: usize| (first_window + w) * window;
                bucket_slots(
                    hop,
                    windows,
                    |j| j / window - first_window,
                    start,
                    set_offset,
                );
            });
            (group, hop)
        };
        let mut inv = Vec::new();
        if inverse {
            inv = vec![0u16; len];
            super::advise_huge_pages(&inv);
            inv.par_chunks_mut(window)
                .zip(offset.par_chunks(window))
                .for_each(|(inv, off)| {
                    for (i, &o) in off.iter().enumerate() {
                        inv[o as usize] = i as u16;
                    }
                });
        }
        Ok(Some(BucketPlan {
            window,
            len,
            group,
            stage,
            hop,
            offset,
            inverse: inv,
        }))
    }

    /// 1, or 2 when pass 1 goes through groups of windows.
    fn levels(&self) -> usize {
        if self.hop.is_empty() {
            1
        } else {
            2
        }
    }

    /// Elements of the staging buffer of a rotate or unrotate: the group-order list, plus one group in
    /// window order with two levels.
    fn staging_len(&self) -> usize {
        self.len + (self.levels() - 1) * self.group
    }

    /// The moves of `rotate` before pass 2: level 1 of `inp` into the staging buffer, then for each GEMM
    /// chunk of `chunk` list positions in order, its second level (with two levels; each chunk is one
    /// group) and `f(start, buckets)`, `buckets` holding the chunk's coordinates in window order.
    fn forward<T: Scalar>(&self, inp: &[T], chunk: usize, mut f: impl FnMut(usize, &[T])) {
        with_staging(self.staging_len(), |buf: &mut [T]| {
            let (first, win) = buf.split_at_mut(self.len);
            bucket_scatter(first, inp, &self.stage, 0);
            for (k, group) in first.chunks(chunk).enumerate() {
                let start = k * chunk;
                match self.group_hop(start, group.len()) {
                    None => f(start, group),
                    Some(hop) => {
                        // into a chunk-sized buffer that stays in cache for pass 2
                        let w = &mut win[..group.len()];
                        bucket_scatter(w, group, hop, start);
                        f(start, w);
                    }
                }
            }
        })
    }

    /// The moves of `unrotate` after pass 2 backwards, the transpose of [`Self::forward`]: for each chunk
    /// in order, `f(start, buckets)` fills the chunk's window-order buckets, then its second level runs
    /// backwards; at the end level 1 writes every listed coordinate of `out` with `write`.
    fn backward<T: Scalar>(
        &self,
        out: &mut [T],
        chunk: usize,
        write: &(impl Fn(&mut T, T) + Sync),
        mut f: impl FnMut(usize, &mut [T]),
    ) {
        with_staging(self.staging_len(), |buf: &mut [T]| {
            let (first, win) = buf.split_at_mut(self.len);
            for (k, group) in first.chunks_mut(chunk).enumerate() {
                let start = k * chunk;
                match self.group_hop(start, group.len()) {
                    None => f(start, group),
                    Some(hop) => {
                        let w = &mut win[..group.len()];
                        f(start, w);
                        bucket_gather(group, w, hop, start, &|o, v| *o = v);
                    }
                }
            }
            bucket_gather(out, first, &self.stage, 0, write);
        })
    }

    /// Panics unless the plan was built for the f32 kernel with windows of `window` coordinates.
    #[track_caller]
    fn check_kernel(&self, window: usize) {
        assert!(
            self.window == window && self.inverse.len() == self.len,
            "rotation plan: built for windows of {} without the kernel's inverse offsets, used by the \
             f32 kernel with windows of {window}",
            self.window
        );
    }

    /// With two levels, the `hop` entries of the group of `len` list positions from `start` (a GEMM
    /// chunk); None with one level.
    fn group_hop(&self, start: usize, len: usize) -> Option<&[u32]> {
        (!self.hop.is_empty()).then(|| &self.hop[start..][..len])
    }

    /// The window-order staging position of the first-level position `pos`.
    fn final_pos(&self, pos: usize) -> usize {
        if self.hop.is_empty() {
            pos
        } else {
            self.hop[pos] as usize
        }
    }

    fn to_list(&self) -> Vec<u32> {
        let mut index = vec![0u32; self.len];
        for (src, &pos) in self.stage.iter().enumerate() {
            if pos != NOT_LISTED {
                let pos = self.final_pos(pos as usize);
                index[pos / self.window * self.window + self.offset[pos] as usize] = src as u32;
            }
        }
        index
    }
}

/// stage[src] = the position of src in `index` for every listed source, NOT_LISTED for the others; None
/// when an entry is out of range or repeated. Filled in parallel: the slots are atomics (plain stores,
/// `Relaxed`), so a repeated entry is a benign race that the count afterwards detects.
fn listed_positions(index: &[u32], src_len: usize) -> Option<Vec<u32>> {
    let mut stage = vec![NOT_LISTED; src_len];
    super::advise_huge_pages(&stage);
    // SAFETY: AtomicU32 has the size and bit validity of u32 and, on every target with 32-bit atomics,
    // its alignment (4 bytes); the `&mut` borrow of `stage` is held (and unused) while `slots` lives.
    let slots: &[AtomicU32] =
        unsafe { std::slice::from_raw_parts(stage.as_mut_ptr().cast(), stage.len()) };
    let in_range = index.par_chunks(CHUNK).enumerate().all(|(c, ix)| {
        ix.iter()
            .enumerate()
            .all(|(k, &src)| match slots.get(src as usize) {
                Some(slot) => {
                    slot.store((c * CHUNK + k) as u32, Ordering::Relaxed);
                    true
                }
                None => false,
            })
    });
    let listed: usize = stage
        .par_chunks(CHUNK)
        .map(|s| s.iter().filter(|&&p| p != NOT_LISTED).count())
        .sum();
    (in_range && listed == index.len()).then_some(stage)
}

/// A stable counting sort of the listed slots of `stage` into `buckets` buckets, in parallel: the value v
/// of every listed slot (not NOT_LISTED) goes to bucket `bucket_of(v)`, whose positions start at
/// `start(bucket)`, in increasing slot order within each bucket (so the result does not depend on the
/// thread count); the slot is overwritten with its position, and `record(pos, v)` is called once per
/// slot, with pairwise distinct positions.
fn bucket_slots(
    stage: &mut [u32],
    buckets: usize,
    bucket_of: impl Fn(usize) -> usize + Sync,
    start: impl Fn(usize) -> usize,
    record: impl Fn(usize, usize) + Sync,
) {
    let part = stage
        .len()
        .div_ceil(4 * rayon::current_num_threads())
        .max(CHUNK);
    let counts: Vec<Vec<usize>> = stage
        .par_chunks(part)
        .map(|s| {
            let mut c = vec![0usize; buckets];
            for &v in s.iter().filter(|&&v| v != NOT_LISTED) {
                c[bucket_of(v as usize)] += 1;
            }
            c
        })
        .collect();
    // Each part's first position per bucket: the bucket's start plus what earlier parts put there.
    let mut cursors = counts;
    for b in 0..buckets {
        let mut next = start(b);
        for c in cursors.iter_mut() {
            let count = c[b];
            c[b] = next;
            next += count;
        }
    }
    stage
        .par_chunks_mut(part)
        .zip(cursors.into_par_iter())
        .for_each(|(s, mut cursor)| {
            for slot in s.iter_mut().filter(|v| **v != NOT_LISTED) {
                let v = *slot as usize;
                let b = bucket_of(v);
                let pos = cursor[b];
                cursor[b] += 1;
                *slot = pos as u32;
                record(pos, v);
            }
        });
}

/// Blocks of `n` per window of the bucketed plan: as many as fit in [`WINDOW_ELEMS`], and with the f32
/// kernel (`kernel`) a whole number of its register tiles where that leaves at least one, since each
/// window is then one block of the kernel's GEMM (85 → 84 rows at n = 768).
pub fn window_rows(n: usize, kernel: bool) -> usize {
    let rows = (WINDOW_ELEMS / n.max(1)).max(1);
    if kernel && rows >= rotgemm::MR {
        rows / rotgemm::MR * rotgemm::MR
    } else {
        rows
    }
}

/// Blocks of `n` per GEMM chunk in `T`: a whole number of windows, the same for both plans.
pub fn chunk_rows<T: Scalar>(n: usize) -> usize {
    chunk_rows_for(n, rotgemm::fits::<T>(n))
}

fn chunk_rows_for(n: usize, kernel: bool) -> usize {
    let wr = window_rows(n, kernel);
    ((CHUNK_ELEMS / n.max(1)) / wr).max(1) * wr
}

/// (min, max) of a non-empty list; (u32::MAX, 0) for an empty one.
fn min_max(ix: &[u32]) -> (u32, u32) {
    ix.iter()
        .fold((u32::MAX, 0), |(a, b), &i| (a.min(i), b.max(i)))
}

/// Whether the windows of `index` read, on average, from a span wider than [`SCATTER_SPAN_WINDOWS`]
/// windows (the direct gather then misses the caches).
fn scattered(index: &[u32], n: usize) -> bool {
    let window = window_rows(n, false) * n;
    let spans: Vec<usize> = index
        .par_chunks(window)
        .map(|w| {
            let (lo, hi) = min_max(w);
            (hi - lo) as usize + 1
        })
        .collect();
    let mean = spans.iter().sum::<usize>() / spans.len().max(1);
    mean > SCATTER_SPAN_WINDOWS * window
}

/// Prepares `index` (NB·N distinct entries, each < `src_len`) for [`rotate`] / [`unrotate`] in `T` with
/// blocks of `n`, as `mode` asks (module docs).
pub fn prepare<T: Scalar>(
    index: Vec<u32>,
    n: usize,
    src_len: usize,
    mode: GatherMode,
) -> Result<RotIndex> {
    let bucketed = match mode {
        GatherMode::Direct => false,
        GatherMode::Bucketed => true,
        GatherMode::Auto => index.len() >= BUCKETED_MIN && scattered(&index, n),
    };
    if bucketed {
        if let Some(plan) = BucketPlan::new(&index, n, src_len, rotgemm::fits::<T>(n))? {
            return Ok(RotIndex::Bucketed(plan));
        }
    }
    check_rotation_index(&index, src_len)?;
    Ok(RotIndex::Direct(index))
}

/// Checks shared by both ops.
#[track_caller]
fn check(op: &str, blocks: usize, index: &RotIndex, r: &[impl Sized], nb: usize, n: usize) {
    check_len(op, "blocks", blocks, nb * n);
    check_len(op, "index", index.len(), nb * n);
    check_len(op, "r", r.len(), n * n);
}

/// x[i] = inp[index[i]], parallel over fixed chunks.
fn gather<T: Scalar>(x: &mut [T], inp: &[T], index: &[u32]) {
    x.par_chunks_mut(CHUNK)
        .zip(index.par_chunks(CHUNK))
        .for_each(|(x, ix)| {
            for (x, &i) in x.iter_mut().zip(ix) {
                *x = inp[i as usize];
            }
        });
}

/// write(&mut out[index[i]], y[i]) (`=` for `unrotate`). Parallel over disjoint ranges of `out`: the span
/// [min, max] of the indices is cut into one range per thread (so local index lists — rows, columns —
/// split evenly too); task k scans the whole index list and writes the entries that fall in its range.
fn scatter<T: Scalar, W: Fn(&mut T, T) + Sync>(out: &mut [T], y: &[T], index: &[u32], write: &W) {
    let parts = rayon::current_num_threads();
    if parts <= 1 || y.len() < SCATTER_PAR_MIN {
        for (&i, &v) in index.iter().zip(y) {
            write(&mut out[i as usize], v);
        }
        return;
    }
    let (min, max) = index
        .par_chunks(CHUNK)
        .map(min_max)
        .reduce(|| (u32::MAX, 0), |(a, b), (c, d)| (a.min(c), b.max(d)));
    let (lo, hi) = (min as usize, max as usize + 1);
    assert!(
        hi <= out.len(),
        "unrotate: index {max} is out of bounds for an output of {} elements",
        out.len()
    );
    let part_len = (hi - lo).div_ceil(parts);
    out[lo..hi]
        .par_chunks_mut(part_len)
        .enumerate()
        .for_each(|(k, o)| {
            let start = lo + k * part_len;
            for (&i, &v) in index.iter().zip(y) {
                let j = (i as usize).wrapping_sub(start);
                if j < o.len() {
                    write(&mut o[j], v);
                }
            }
        });
}

/// A raw pointer that rayon tasks may share: pass 1 writes disjoint positions of one buffer through it.
#[derive(Clone, Copy)]
struct SharedMut<T>(*mut T);
// SAFETY: only used by `bucket_scatter` and the plan's construction (`BucketPlan::new`), whose tasks write
// pairwise distinct elements (module docs, `bucket_slots`).
unsafe impl<T: Send> Send for SharedMut<T> {}
// SAFETY: a shared `&SharedMut` only lets rayon tasks copy the raw pointer out; its users (`bucket_scatter`,
// `BucketPlan::new`) write pairwise distinct elements through it while the buffer's `&mut` borrow is held, so
// no element is accessed by two threads.
unsafe impl<T: Send> Sync for SharedMut<T> {}

impl<T> SharedMut<T> {
    /// The pointer (a method, so closures capture the whole `Send` wrapper, not its raw field).
    fn ptr(self) -> *mut T {
        self.0
    }
}

/// One bucketing level forwards: dst[pos[i] − base] = src[i] for every listed i (pos[i] ≠ NOT_LISTED).
/// Pass 1 of `rotate`: level 1 from the source coordinates (`plan.stage`, base 0), and with two levels,
/// level 2 within a group (its `hop` entries, base: the group's first list position).
fn bucket_scatter<T: Scalar>(dst: &mut [T], src: &[T], pos: &[u32], base: usize) {
    assert_eq!(src.len(), pos.len());
    let len = dst.len();
    let dst = SharedMut(dst.as_mut_ptr());
    src.par_chunks(CHUNK)
        .zip(pos.par_chunks(CHUNK))
        .for_each(|(x, pos)| {
            for (&v, &p) in x.iter().zip(pos) {
                if p != NOT_LISTED {
                    let j = (p as usize).wrapping_sub(base);
                    assert!(
                        j < len,
                        "rotation plan: position {p} is outside [{base}, +{len})"
                    );
                    // SAFETY: j < len = dst.len() (checked), and `BucketPlan::new` gives the listed
                    // items of `stage` and of each group's `hop` pairwise distinct positions (stable
                    // counting sorts), so tasks write distinct elements of `dst`, which the `&mut` borrow
                    // keeps alive and unaliased for the whole loop.
                    unsafe { *dst.ptr().add(j) = v };
                }
            }
        });
}

/// The transpose of [`bucket_scatter`]: write(&mut out[i], src[pos[i] − base]) for every listed i (the
/// others untouched). Pass 1 of `unrotate`, both levels.
fn bucket_gather<T: Scalar, W: Fn(&mut T, T) + Sync>(
    out: &mut [T],
    src: &[T],
    pos: &[u32],
    base: usize,
    write: &W,
) {
    assert_eq!(out.len(), pos.len());
    out.par_chunks_mut(CHUNK)
        .zip(pos.par_chunks(CHUNK))
        .for_each(|(o, pos)| {
            for (o, &p) in o.iter_mut().zip(pos) {
                if p != NOT_LISTED {
                    write(o, src[p as usize - base]);
                }
            }
        });
}

/// out (NB·N) = for each block b: R · inp[index[b·N .. (b+1)·N]]; R (N,N) row-major. `=`.
/// GEMMs run on `threads` threads.
pub fn rotate<T: Scalar>(
    out: &mut [T],
    inp: &[T],
    index: &RotIndex,
    r: &[T],
    nb: usize,
    n: usize,
    threads: usize,
) {
    rotate_then(out, inp, index, r, nb, n, threads, |_, _| {});
}

/// [`rotate`], then `epilogue(start, rows)` on each chunk of `out` right after its GEMM, while the chunk
/// is in cache (`start`: the chunk's offset in `out`; chunks in ascending order, covering `out` once).
#[allow(clippy::too_many_arguments)]
pub fn rotate_then<T: Scalar>(
    out: &mut [T],
    inp: &[T],
    index: &RotIndex,
    r: &[T],
    nb: usize,
    n: usize,
    threads: usize,
    mut epilogue: impl FnMut(usize, &mut [T]),
) {
    check("rotate", out.len(), index, r, nb, n);
    if nb == 0 || n == 0 {
        return;
    }
    let chunk = chunk_rows::<T>(n) * n;
    if rotgemm::fits::<T>(n) {
        return rotate_kernel(out, inp, index, r, n, chunk, epilogue);
    }
    let gemm =
        |o: &mut [T], x: &[T]| T::gemm(o, x, r, o.len() / n, n, n, false, true, false, threads);
    match index {
        RotIndex::Direct(index) => with_scratch(chunk.min(nb * n), |s: &mut [T]| {
            for (k, (o, ix)) in out.chunks_mut(chunk).zip(index.chunks(chunk)).enumerate() {
                let x = &mut s[..o.len()];
                gather(x, inp, ix);
                gemm(o, x);
                epilogue(k * chunk, o);
            }
        }),
        RotIndex::Bucketed(plan) => with_scratch(chunk.min(nb * n), |s: &mut [T]| {
            let mut outs = out.chunks_mut(chunk);
            plan.forward(inp, chunk, |start, st| {
                let o = outs.next().expect("one output chunk per chunk of the list");
                let off = &plan.offset[start..][..o.len()];
                let x = &mut s[..o.len()];
                // Pass 2: each window's bucket into the window's rows. Writing the window in order
                // first brings its lines into the cache, so the scattered stores that follow hit
                // (0.17 s → 0.13 s per rotate at 124M, n = 768, 2 threads).
                x.par_chunks_mut(plan.window)
                    .zip(st.par_chunks(plan.window))
                    .zip(off.par_chunks(plan.window))
                    .for_each(|((x, st), off)| {
                        x.fill(T::default());
                        for (&v, &k) in st.iter().zip(off) {
                            x[k as usize] = v;
                        }
                    });
                gemm(o, x);
                epilogue(start, o);
            })
        }),
    }
}

/// [`rotate_then`] through [`rotgemm`] (T is f32 and the kernel fits n): the same chunks, but the
/// kernel's packing gathers each row itself, from the source with a direct list, from the window bucket
/// through the inverse offsets with the bucketed plan (whose windows are the kernel's blocks), so pass 2
/// and its 16 MB buffer disappear.
fn rotate_kernel<T: Scalar>(
    out: &mut [T],
    inp: &[T],
    index: &RotIndex,
    r: &[T],
    n: usize,
    chunk: usize,
    mut epilogue: impl FnMut(usize, &mut [T]),
) {
    // `fits` checked that T is f32: these casts keep every length.
    let (inp, r): (&[f32], &[f32]) = (bytemuck::cast_slice(inp), bytemuck::cast_slice(r));
    let rt = PackedB::new(r, n, true);
    let copy = |_: usize, c: &[f32], d: &mut [f32]| d.copy_from_slice(c);
    let mc = window_rows(n, true);
    match index {
        RotIndex::Direct(index) => {
            for (k, (o, ix)) in out.chunks_mut(chunk).zip(index.chunks(chunk)).enumerate() {
                let fill = |i: usize, row: &mut [f32]| {
                    for (v, &src) in row.iter_mut().zip(&ix[i * n..][..n]) {
                        *v = inp[src as usize];
                    }
                };
                rotgemm::gemm_rows(bytemuck::cast_slice_mut(o), mc, &rt, fill, copy);
                epilogue(k * chunk, o);
            }
        }
        RotIndex::Bucketed(plan) => {
            plan.check_kernel(mc * n);
            let mut outs = out.chunks_mut(chunk);
            plan.forward(inp, chunk, |start, st| {
                let o = outs.next().expect("one output chunk per chunk of the list");
                let inverse = &plan.inverse[start..][..o.len()];
                // Row i of the chunk is in window i / mc; its bucket starts at that window's start.
                let fill = |i: usize, row: &mut [f32]| {
                    let bucket = &st[i / mc * plan.window..];
                    for (v, &j) in row.iter_mut().zip(&inverse[i * n..][..n]) {
                        *v = bucket[j as usize];
                    }
                };
                rotgemm::gemm_rows(bytemuck::cast_slice_mut(o), mc, &rt, fill, copy);
                epilogue(start, o);
            })
        }
    }
}

/// For each block b: out[index[b·N + i]] = (Rᵀ · inp[b·N .. (b+1)·N])ᵢ; R (N,N) row-major. `=` on the
/// entries named by `index` (each < out.len()); the others are untouched. GEMMs run on `threads` threads.
pub fn unrotate<T: Scalar>(
    out: &mut [T],
    inp: &[T],
    index: &RotIndex,
    r: &[T],
    nb: usize,
    n: usize,
    threads: usize,
) {
    unrotate_with(out, inp, index, r, nb, n, threads, |o, y| *o = y);
}

/// [`unrotate`] with `write(&mut out[index[k]], y[k])` in place of the plain store, e.g. an update
/// `p −= lr·y` that then needs no buffer for the unrotated vector. Each listed entry is written once.
#[allow(clippy::too_many_arguments)]
pub fn unrotate_with<T: Scalar>(
    out: &mut [T],
    inp: &[T],
    index: &RotIndex,
    r: &[T],
    nb: usize,
    n: usize,
    threads: usize,
    write: impl Fn(&mut T, T) + Sync,
) {
    check("unrotate", inp.len(), index, r, nb, n);
    if nb == 0 || n == 0 {
        return;
    }
    let chunk = chunk_rows::<T>(n) * n;
    if rotgemm::fits::<T>(n) {
        return unrotate_kernel(out, inp, index, r, n, chunk, write);
    }
    let gemm =
        |y: &mut [T], u: &[T]| T::gemm(y, u, r, u.len() / n, n, n, false, false, false, threads);
    match index {
        RotIndex::Direct(index) => with_scratch(chunk.min(nb * n), |s: &mut [T]| {
            for (u, ix) in inp.chunks(chunk).zip(index.chunks(chunk)) {
                let y = &mut s[..u.len()];
                gemm(y, u);
                scatter(out, y, ix, &write);
            }
        }),
        RotIndex::Bucketed(plan) => with_scratch(chunk.min(nb * n), |s: &mut [T]| {
            plan.backward(out, chunk, &write, |start, st| {
                let u = &inp[start..][..st.len()];
                let y = &mut s[..u.len()];
                gemm(y, u);
                let off = &plan.offset[start..][..u.len()];
                // Pass 2 backwards: each window's rows into its bucket.
                st.par_chunks_mut(plan.window)
                    .zip(y.par_chunks(plan.window))
                    .zip(off.par_chunks(plan.window))
                    .for_each(|((st, y), off)| {
                        for (v, &k) in st.iter_mut().zip(off) {
                            *v = y[k as usize];
                        }
                    });
            })
        }),
    }
}

/// [`unrotate_with`] through [`rotgemm`] (T is f32 and the kernel fits n): the same chunks; with the
/// bucketed plan each block of the kernel (one window) goes from its C block, still in L2, straight into
/// the window's bucket (pass 2 backwards as the GEMM's store), with a direct list into the scratch chunk
/// that the scatter reads.
#[allow(clippy::too_many_arguments)]
fn unrotate_kernel<T: Scalar>(
    out: &mut [T],
    inp: &[T],
    index: &RotIndex,
    r: &[T],
    n: usize,
    chunk: usize,
    write: impl Fn(&mut T, T) + Sync,
) {
    let rb = PackedB::new(bytemuck::cast_slice(r), n, false);
    let mc = window_rows(n, true);
    match index {
        RotIndex::Direct(index) => with_scratch(chunk.min(inp.len()), |s: &mut [T]| {
            for (u, ix) in inp.chunks(chunk).zip(index.chunks(chunk)) {
                let y = &mut s[..u.len()];
                let u: &[f32] = bytemuck::cast_slice(u);
                rotgemm::gemm_rows(
                    bytemuck::cast_slice_mut(y),
                    mc,
                    &rb,
                    |i, row| row.copy_from_slice(&u[i * n..][..n]),
                    |_, c, d| d.copy_from_slice(c),
                );
                scatter(out, y, ix, &write);
            }
        }),
        RotIndex::Bucketed(plan) => {
            plan.check_kernel(mc * n);
            plan.backward(out, chunk, &write, |start, st| {
                let u: &[f32] = bytemuck::cast_slice(&inp[start..][..st.len()]);
                let off = &plan.offset[start..][..u.len()];
                // Block b is window b of the chunk: its bucket takes the C entries in offset order.
                rotgemm::gemm_rows(
                    bytemuck::cast_slice_mut(st),
                    mc,
                    &rb,
                    |i, row| row.copy_from_slice(&u[i * n..][..n]),
                    |first_row, c, d| {
                        for (d, &o) in d.iter_mut().zip(&off[first_row * n..]) {
                            *d = c[o as usize];
                        }
                    },
                );
            })
        }
    }
}

/// Rotated AdamW, first half (`Backend::rotate_adam_direction`): [`rotate`] into `u`, and on each chunk
/// right after its GEMM, m, v and u = m̂/(√v̂ + ε) from g̃ = that chunk (`adam_direction`, the per-element
/// function of `adam_direction_step`: the same bits as the two ops in sequence).
#[allow(clippy::too_many_arguments)]
pub fn rotate_adam_direction<T: Scalar>(
    u: &mut [T],
    m: &mut [T],
    v: &mut [T],
    grads: &[T],
    index: &RotIndex,
    r: &[T],
    nb: usize,
    n: usize,
    hp: AdamStep,
    threads: usize,
) {
    check_len("rotate_adam_direction", "m", m.len(), u.len());
    check_len("rotate_adam_direction", "v", v.len(), u.len());
    let k = AdamCoeffs::<T>::new(&hp);
    rotate_then(u, grads, index, r, nb, n, threads, |start, g| {
        let end = start + g.len();
        g.par_chunks_mut(CHUNK)
            .zip(m[start..end].par_chunks_mut(CHUNK))
            .zip(v[start..end].par_chunks_mut(CHUNK))
            .for_each(|((g, m), v)| {
                for ((g, m), v) in g.iter_mut().zip(m).zip(v) {
                    *g = adam_direction(m, v, *g, &k);
                }
            });
    });
}

/// Rotated AdamW, second half (`Backend::unrotate_apply_update`): params[index[k]] −= lr·(Rᵀu)[k] in the
/// unrotation's scatter, the decayed step with decay 1 (λ is applied before, per tensor): the same bits
/// as `apply_update` with λ = 0, since p·1 is exact.
#[allow(clippy::too_many_arguments)]
pub fn unrotate_apply_update<T: Scalar>(
    params: &mut [T],
    u: &[T],
    index: &RotIndex,
    r: &[T],
    nb: usize,
    n: usize,
    lr: f64,
    threads: usize,
) {
    let lr = <T as Scalar>::from_f64(lr);
    let one = <T as Scalar>::from_f64(1.0);
    unrotate_with(params, u, index, r, nb, n, threads, |p, y| {
        *p = decayed_step(*p, y, lr, one)
    });
}
