//! Data-parallel ranks exchanging buffers: the collectives data parallelism needs, named as NCCL names
//! them ([`Collective`]), and [`LocalGroup`], ranks that are threads of this process exchanging through
//! host memory (any backend: the CPU, the emulator; `docs/usage.md`, "Several devices"). On CUDA devices
//! the ranks use NCCL instead (`backend::cuda::collective`).
//!
//! Every implementation reduces so that all ranks receive the same bits; [`LocalGroup`] also sums in rank
//! order 0, 1, …, W−1 (as the NCCL stand-in does), so its results are reproducible run to run. NCCL on
//! GPUs reduces in the order of its ring or tree: the same on every rank, but not rank order.

use super::{Backend, Scalar};
use crate::error::{Error, Result};
use std::sync::{Arc, Condvar, Mutex};

/// One rank's view of a group of W data-parallel ranks. Every rank must make the same calls in the same
/// order (as with NCCL); a call blocks until every rank made it.
pub trait Collective<BK: Backend>: Send {
    /// This rank, 0 ≤ rank < world.
    fn rank(&self) -> usize;
    /// W, the number of ranks.
    fn world(&self) -> usize;
    /// x ← Σ_r x_r elementwise over the ranks' `x` (all of the same length); every rank gets the same bits.
    fn all_reduce_sum(&self, be: &BK, x: &mut BK::Buf) -> Result<()>;
    /// x[r·part .. (r+1)·part] ← Σ_q x_q[r·part .. (r+1)·part] on rank r (in place; `x` has at least
    /// W·part elements, and the rest of it is left as it was). Every rank gets its part of the sum with
    /// the bits all_reduce_sum would give it.
    fn reduce_scatter_sum(&self, be: &BK, x: &mut BK::Buf, part: usize) -> Result<()>;
    /// x[range] ← rank `root`'s x[range], in place (the same range on every rank).
    fn broadcast(
        &self,
        be: &BK,
        x: &mut BK::Buf,
        range: std::ops::Range<usize>,
        root: usize,
    ) -> Result<()>;
    /// The ranks' host values one after another in rank order (each rank passes as many).
    fn all_gather_host(&self, be: &BK, x: &[f64]) -> Result<Vec<f64>>;
    /// This rank's work ended well: leaving no longer stops the other ranks.
    fn finish(&mut self) {}
    /// Called first on the thread that runs this rank (a CUDA rank makes its device current there).
    fn enter(&self, _be: &BK) -> Result<()> {
        Ok(())
    }
}

/// What the ranks of a [`LocalGroup`] share: one exchange round at a time.
struct Exchange {
    world: usize,
    /// The round's contributions, by rank (None: not yet given).
    slots: Vec<Option<Vec<f64>>>,
    /// Ranks that have read the current round's result (the round ends when all have).
    read: usize,
    /// True once every rank has contributed to the current round.
    full: bool,
    /// Why the group cannot go on (a rank left early), if it cannot.
    broken: Option<String>,
}

/// Ranks that are threads of one process, exchanging through host memory (module docs).
pub struct LocalGroup {
    rank: usize,
    world: usize,
    shared: Arc<(Mutex<Exchange>, Condvar)>,
    /// Set once this rank's thread returns normally; a rank dropped before that breaks the group so
    /// that the others fail instead of waiting forever.
    finished: bool,
}

impl LocalGroup {
    /// The W ranks of a new group, rank r at index r: hand each to its own thread.
    pub fn new(world: usize) -> Vec<LocalGroup> {
        let shared = Arc::new((
            Mutex::new(Exchange {
                world,
                slots: vec![None; world],
                read: 0,
                full: false,
                broken: None,
            }),
            Condvar::new(),
        ));
        (0..world)
            .map(|rank| LocalGroup {
                rank,
                world,
                shared: shared.clone(),
                finished: false,
            })
            .collect()
    }

    /// Breaks the group with `why`: every rank waiting in (or later entering) a collective gets an error.
    pub fn abort(&self, why: &str) {
        let (lock, cv) = &*self.shared;
        let mut ex = lock.lock().unwrap_or_else(|p| p.into_inner());
        ex.broken.get_or_insert_with(|| why.to_string());
        cv.notify_all();
    }

    /// One round: every rank's `mine`, in rank order.
    fn exchange(&self, mine: Vec<f64>) -> Result<Vec<Vec<f64>>> {
        let (lock, cv) = &*self.shared;
        let broken = |ex: &Exchange| {
            ex.broken.as_ref().map(|why| {
                Error::PeerFailed(format!(
                    "data-parallel rank {} stopped waiting for the other ranks: {why}",
                    self.rank
                ))
            })
        };
        let mut ex = lock.lock().unwrap_or_else(|p| p.into_inner());
        // the previous round must be read by every rank before its slots are reused
        while ex.full {
            if let Some(e) = broken(&ex) {
                return Err(e);
            }
            ex = cv.wait(ex).unwrap_or_else(|p| p.into_inner());
        }
        ex.slots[self.rank] = Some(mine);
        if ex.slots.iter().all(Option::is_some) {
            ex.full = true;
            cv.notify_all();
        }
        while !ex.full {
            if let Some(e) = broken(&ex) {
                return Err(e);
            }
            ex = cv.wait(ex).unwrap_or_else(|p| p.into_inner());
        }
        let all: Vec<Vec<f64>> = ex.slots.iter().map(|s| s.clone().unwrap()).collect();
        ex.read += 1;
        if ex.read == ex.world {
            ex.read = 0;
            ex.full = false;
            ex.slots.iter_mut().for_each(|s| *s = None);
            cv.notify_all();
        }
        Ok(all)
    }
}

impl Drop for LocalGroup {
    /// A rank that leaves breaks the group for the collectives after it: an error of this rank, or a
    /// rank that finished while another still calls (the ranks' calls then disagree).
    fn drop(&mut self) {
        if self.finished {
            self.abort(&format!("rank {} has finished", self.rank));
        } else {
            self.abort(&format!("rank {} ended with an error", self.rank));
        }
    }
}

/// Element `i` of the ranks' `parts` summed in the backend's type, rank by rank (what the NCCL stand-in
/// does), so that every rank gets the same bits.
fn rank_order_sum<T: Scalar>(parts: &[Vec<f64>], i: usize) -> T {
    let mut sum = <T as Scalar>::from_f64(parts[0][i]);
    for p in &parts[1..] {
        sum += <T as Scalar>::from_f64(p[i]);
    }
    sum
}

/// A length check: a collective's buffers must agree across ranks.
fn same_lengths(parts: &[Vec<f64>], what: &str) -> Result<usize> {
    let n = parts[0].len();
    if let Some((r, p)) = parts.iter().enumerate().find(|(_, p)| p.len() != n) {
        return Err(Error::Device(format!(
            "{what}: rank {r} passed {} elements where rank 0 passed {n} (every rank must make the same \
             calls)",
            p.len()
        )));
    }
    Ok(n)
}

impl<BK: Backend> Collective<BK> for LocalGroup {
    fn rank(&self) -> usize {
        self.rank
    }
    fn world(&self) -> usize {
        self.shared
            .0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .world
    }
    fn all_reduce_sum(&self, be: &BK, x: &mut BK::Buf) -> Result<()> {
        let host: Vec<f64> = be.download(x)?.into_iter().map(Scalar::to_f64).collect();
        let parts = self.exchange(host)?;
        let n = same_lengths(&parts, "all_reduce_sum")?;
        let sum: Vec<BK::T> = (0..n).map(|i| rank_order_sum(&parts, i)).collect();
        be.upload(x, &sum)
    }
    fn reduce_scatter_sum(&self, be: &BK, x: &mut BK::Buf, part: usize) -> Result<()> {
        let mut host = be.download(x)?;
        let world = self.world;
        assert!(
            host.len() >= world * part,
            "reduce_scatter_sum: {} elements, fewer than W × {part}",
            host.len()
        );
        let flat: Vec<f64> = host[..world * part].iter().map(|v| v.to_f64()).collect();
        let parts = self.exchange(flat)?;
        same_lengths(&parts, "reduce_scatter_sum")?;
        let mine = self.rank * part..(self.rank + 1) * part;
        for (i, h) in mine.clone().zip(host[mine].iter_mut()) {
            *h = rank_order_sum(&parts, i);
        }
        be.upload(x, &host)
    }
    fn broadcast(
        &self,
        be: &BK,
        x: &mut BK::Buf,
        range: std::ops::Range<usize>,
        root: usize,
    ) -> Result<()> {
        let mut host = be.download(x)?;
        let mine = if self.rank == root {
            host[range.clone()].iter().map(|v| v.to_f64()).collect()
        } else {
            Vec::new()
        };
        let parts = self.exchange(mine)?;
        if parts[root].len() != range.len() {
            return Err(Error::Device(format!(
                "broadcast: root {root} sent {} elements, rank {} expects {}",
                parts[root].len(),
                self.rank,
                range.len()
            )));
        }
        if self.rank != root {
            for (h, &v) in host[range].iter_mut().zip(&parts[root]) {
                *h = <BK::T as Scalar>::from_f64(v);
            }
            be.upload(x, &host)?;
        }
        Ok(())
    }
    fn all_gather_host(&self, _: &BK, x: &[f64]) -> Result<Vec<f64>> {
        let parts = self.exchange(x.to_vec())?;
        same_lengths(&parts, "all_gather_host")?;
        Ok(parts.concat())
    }
    fn finish(&mut self) {
        self.finished = true;
    }
}
