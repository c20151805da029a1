//! The `svd` rotation (Maes et al., NeurIPS 2025 poster, "Rotate the gradient with its SVD") and the
//! `soap` rotation (Vyas et al. 2024, "SOAP: Improving and Stabilizing Shampoo using Adam", Alg. 3), one
//! type: both rotate each 2-D weight's gradient G into G̃ = Uᵀ·G·V and map the optimizer's update Ũ back
//! as U·Ũ·Vᵀ; they differ only in where U and V come from at a refresh (every F steps):
//! - `svd`: the singular vectors of that step's gradient. Moments are NOT transformed at a refresh (the
//!   poster's algorithm): they simply continue in the new basis.
//! - `soap`: the eigenvectors Q_L, Q_R of L = EMA_β(G·Gᵀ) and R = EMA_β(Gᵀ·G), which every step's
//!   gradient updates (β = `--soap-beta`), by descending eigenvalue; Adam runs on Q_Lᵀ·G·Q_R with its
//!   second moment in that basis. With β = 0, L = G·Gᵀ and R = Gᵀ·G, whose eigenvectors are G's
//!   singular vectors: soap is svd with accumulated statistics instead of one gradient (tested equal in
//!   f64; in f32 soap's null tolerance is larger, `soap_null_tol`).
//!
//! **soap's first moment** (`--soap-first-moment`): the paper's Alg. 3 keeps M ← β₁M + (1−β₁)G in the
//! original space and projects it each step (M̃ = Q_Lᵀ·M·Q_R); the released code keeps M̃ in the
//! eigenbasis and carries it into each new basis at a refresh (M̃ ← Q_newᵀ·Q_old·M̃·Q_oldᵀ·Q_new, per
//! side). The first moment is linear in the gradients, so the two are equal in exact arithmetic (tested
//! to 1e-10 against one reference); `original` is the default because it is the published definition,
//! `eigenbasis` saves two GEMMs per matrix per step (it rotates M̃ only at refreshes). `positional`
//! keeps M̃ in the eigenbasis without carrying it: the poster's svd rule, so that soap with β = 0 and
//! that form is svd for any F. Here `original` keeps M (d values) and, before the Adam link, sets the
//! link's m to Q_Lᵀ·M_{t−1}·Q_R; the link's own update m ← β₁m + (1−β₁)G̃ then gives Q_Lᵀ·M_t·Q_R, and M
//! advances by the same EMA in the original space. Whatever the form, the second moment V stays where
//! it is at a refresh (the paper's and the released code's choice: its coordinates are those of the
//! new basis, by position).
//!
//! **soap's schedule.** L and R are updated with the step's gradient before that step, and the bases
//! refreshed at steps 1, F+1, 2F+1, … as svd's, so the first basis comes from the first gradient (the
//! released code spends its first step computing it and applies it from step 2, and updates L, R after
//! each step, so its bases lag ours by one step). `--soap-init identity` starts from the identity instead
//! and refreshes first at step F+1: with F longer than the run, soap is then AdamW bit for bit (tested).
//! The bases come from an f64 eigendecomposition on the host (faer's `self_adjoint_evd`), not the
//! paper's alternative of one power iteration and a QR step from the previous basis. Defaults F = 10,
//! β = 0.95: the released code's (`precondition_frequency=10`, `shampoo_beta` = Adam's β₂ = 0.95).
//!
//! **Canonical bases**, the same function for both: from the vectors of the decomposition, ordered by
//! value (σ² for svd, an eigenvalue for soap) non-increasing, the vectors whose value exceeds
//! [`NULL_TOL`] × the largest are kept, each signed so that its largest-magnitude entry is positive; the
//! rest of the space (the null space of G or of L, R, whose vectors no decomposition pins down) is the
//! last columns of the Q of a Householder QR of the kept vectors. So U and V are a function of the
//! gradient (resp. the factors), not of how faer chose signs or completed a null space, and soap with
//! β = 0 gives svd's bases to ~1e-15 (tested). Signs and the completion matter because moments carry
//! across refreshes by position. svd runs trained before the canonical form keep faer's full singular
//! vectors as they come ([`SvdBasis::Faer`], what a config without `rotation.svd_basis` reads as), so
//! they replay bit for bit.
//!
//! **Definition.** For each 2-D weight W stored (out, in) = m×n with gradient block G (m×n, row-major):
//! - U (m×m) and V (n×n) are the canonical completions (above) of the thin left and right singular
//!   vectors of G, computed in f64 on the host with faer (`faer::linalg::svd::svd`), then cast to the
//!   backend's type. Both are orthogonal, so g ↦ Uᵀ·G·V is a rotation of that tensor's m·n coordinates
//!   (the Kronecker product Uᵀ ⊗ Vᵀ acting on the row-major vec G), and at the refresh step itself
//!   Uᵀ·G·V = S up to signs, the m×n "diagonal" of singular values in descending order.
//! - Embeddings (wte (vocab, C) and wpe (T, C), stored (in, out)) are rotated on their channel side only:
//!   G̃ = G·V with V (C×C) the right singular vectors of G, and U = I. A full U for wte would have
//!   50,257² ≈ 2.5·10⁹ entries (10 GB in f32, 20 GB in f64), and its SVD is out of reach on a CPU; the
//!   channel side is where the SVD's structure lives (rank ≤ C), so this keeps the spirit at C² memory. wpe
//!   is treated the same way for consistency (its T×T U would be 1024², affordable, but the position axis
//!   plays the same role as the vocabulary axis).
//! - 1-D tensors (LayerNorm gains and biases) are left unrotated: rotate/unrotate copy them.
//! - soap treats the embeddings the same way (R only, Q_L = I), as SOAP's released code does for a side
//!   longer than its `max_precond_dim` (10,000: the vocabulary); wpe's position side follows svd's choice.
//!
//! **Layout.** The rotated vector keeps each tensor at its own range of the flat buffer: tensor i's G̃ sits
//! at `entries[i].range()`, an m×n row-major matrix (so 1-D tensors sit where they were).
//!
//! **Schedule.** `prepare(step, grads)` is called before every optimizer step (1-based) and refreshes all
//! factors from that step's gradient when (step − 1) mod F = 0, i.e. at steps 1, F+1, 2F+1, … (the poster's
//! "t mod F = 0" with 0-based t). So the first basis comes from the first step's gradient, taken at the
//! initial weights (the seed's, or `--init-from`'s), and that step is already taken in it; no step runs
//! in the standard basis (except under soap's `--soap-init identity`, below). The rotation is the identity (plain copies) only before that first `prepare`.
//! A run's `metrics.jsonl` marks each refresh step with `"svd_refresh": true` (`docs/usage.md`), soap's
//! too.
//!
//! **Refresh.** svd downloads the gradient once; the decompositions (svd: of G; soap: of L and R, each
//! downloaded by its task) run one per rayon task (largest first), each sequential inside faer
//! (`Par::Seq`), so the factors do not depend on the thread count; each task casts and uploads its own
//! factors. Factors are kept TRANSPOSED on the backend (row-major Uᵀ and Vᵀ, i.e.
//! faer's column-major U and V copied column by column); the GEMM transpose flags absorb it. The cost at
//! 124M (a refresh of all 74 matrices, a rotate or unrotate) is in `docs/benchmarks.md`; the ignored test
//! `svd_refresh_time_124m` measures it.
//!
//! **Cost.** rotate is two GEMMs per matrix, (Uᵀ·G)·V through a scratch buffer of the largest m·n (one GEMM
//! G·V straight into the output for embeddings); unrotate likewise (U·Ũ)·Vᵀ: m²n + mn² multiply-adds per
//! matrix. Memory: m² + n² per matrix and C² per embedding, in the backend's type. For GPT-2 124M a layer
//! has q, k, v, attn.c_proj (8 × 768²) and mlp.c_fc, mlp.c_proj (each 3072² + 768²): 24.8 M values per
//! layer, 297.3 M for 12 layers plus 2 × 768² for the embeddings ≈ 298.4 M values (2.4× the parameter
//! count): 1.19 GB in f32, 2.39 GB in f64, plus a scratch of 3072·768.
//!
//! **Checkpoint state** ([`SvdRotation::state`]): f64 tensors `svd.<entry name>.U` ([m, m], absent for
//! embeddings) and `svd.<entry name>.V` ([n, n]), row-major, plus `svd.last_refresh` of shape [1] holding
//! the step of the last refresh, 0 meaning never (steps are 1-based; the factors are then absent). The
//! factors are stored as downloaded (backend type widened to f64), so a resume rotates bit for bit.
//! soap's are named `soap.…` instead and add its factors `soap.<entry name>.L` ([m, m], absent for
//! embeddings) and `soap.<entry name>.R` ([n, n]), present from the start, and in the `original` form M
//! as `soap.first_moment` ([d]).
//!
//! **soap's cost** per step beyond svd's: G·Gᵀ and Gᵀ·G per matrix (Gᵀ·G only for embeddings) and their
//! EMAs, the same multiply-adds as a rotate; in the `original` form one more rotate (of M). Memory: L and
//! R as large as U and V, a scratch of the largest m² or n², and M (d values; `eigenbasis`: a d-value
//! buffer for the carried moment, allocated at the first refresh and kept).

use super::{thousands, upload_f64};
use crate::backend::{Backend, Scalar};
use crate::config::{SoapConfig, SoapInit, SoapMoment, SvdBasis};
use crate::error::{Error, Result};
use crate::model::ParamTable;
use crate::tensors::TensorMap;
use faer::diag::Diag;
use faer::dyn_stack::{MemBuffer, MemStack};
use faer::linalg::evd::{self_adjoint_evd, self_adjoint_evd_scratch, ComputeEigenvectors};
use faer::linalg::householder::{
    apply_block_householder_sequence_on_the_left_in_place_scratch,
    apply_block_householder_sequence_on_the_left_in_place_with_conj,
};
use faer::linalg::qr::no_pivoting::factor::{
    qr_in_place, qr_in_place_scratch, recommended_block_size,
};
use faer::linalg::svd::{svd, svd_scratch, ComputeSvdVectors};
use faer::{Conj, Mat, MatRef, Par};
use rayon::prelude::*;
use std::fmt;
use std::ops::Range;
use std::path::Path;

/// One tensor of checkpoint state: name, shape, row-major values.
pub type StateTensor = (String, Vec<usize>, Vec<f64>);

/// A direction whose value (σ² for svd, an eigenvalue for soap) is at most this fraction of the largest
/// counts as null: its vector is replaced by the canonical completion (module docs). σ below
/// √(1e-11)·σ₁ ≈ 3.2e-6·σ₁ is below what an eigendecomposition of G·Gᵀ resolves in f64 (its eigenvalues
/// carry absolute errors of a few ε·λ₁·dim, up to ≈ 7e-13·λ₁ at 3072).
pub const NULL_TOL: f64 = 1e-11;

/// soap's null tolerance for a k×k factor accumulated in a type of unit roundoff `unit`: [`NULL_TOL`], or
/// 4·k·unit where that is larger (the rounding of G·Gᵀ and its EMA puts eigenvalues of that size,
/// relative to the largest, where exact arithmetic has zeros: f32 factors of 3072² up to 7e-4·λ₁).
/// In f64 it is `NULL_TOL` up to k ≈ 22,000, svd's tolerance, so soap with β = 0 is svd there.
pub fn soap_null_tol(k: usize, unit: f64) -> f64 {
    NULL_TOL.max(4.0 * k as f64 * unit)
}

/// The first moment of the optimizer's Adam link, which soap's `original` and `eigenbasis` forms update
/// or carry in [`SvdRotation::prepare_with`]: in the rotated layout, with its β₁.
pub struct Moment<'a, BK: Backend> {
    pub m: &'a mut BK::Buf,
    pub beta1: f64,
}

/// One 2-D tensor of the table, as the svd rotation sees it.
#[derive(Clone, Debug)]
struct Matrix {
    name: String,
    offset: usize,
    /// Rows (out; the vocabulary/position axis for embeddings) and columns.
    m: usize,
    n: usize,
    /// wte or wpe: rotated on the channel side only (U = I).
    embedding: bool,
}

impl Matrix {
    fn range(&self) -> Range<usize> {
        self.offset..self.offset + self.m * self.n
    }
}

/// The factors of one matrix, in the backend's type, stored TRANSPOSED: row-major Uᵀ and Vᵀ, which is
/// faer's column-major U and V copied column by column (no strided transpose on the refresh path).
struct Factors<BK: Backend> {
    /// Uᵀ, m×m row-major; None for embeddings.
    ut: Option<BK::Buf>,
    /// Vᵀ, n×n row-major.
    vt: BK::Buf,
}

/// soap's factors of one matrix: L (None for embeddings) and R.
type Stats<BK> = (Option<<BK as Backend>::Buf>, <BK as Backend>::Buf);

/// soap's statistics and its first moment's buffers.
struct Soap<BK: Backend> {
    cfg: SoapConfig,
    /// Per matrix L = EMA(G·Gᵀ) (m×m; None for embeddings) and R = EMA(Gᵀ·G) (n×n), row-major.
    stats: Vec<Stats<BK>>,
    /// G·Gᵀ or Gᵀ·G before it enters the EMA: the largest m² or n².
    gram: BK::Buf,
    /// `original`: M, the first moment in the standard layout (d values).
    first: Option<BK::Buf>,
    /// `eigenbasis`: the first moment in the standard layout while a refresh changes the basis.
    carry: Option<BK::Buf>,
}

/// Where the bases come from at a refresh.
enum Source<BK: Backend> {
    /// `svd`: the singular vectors of that step's gradient.
    Gradient,
    /// `soap`: the eigenvectors of L and R, which every step's gradient updates.
    Soap(Box<Soap<BK>>),
}

/// The poster's SVD rotation of every 2-D tensor, and SOAP's eigenbasis rotation, which is the same
/// rotation with other factors (module docs).
pub struct SvdRotation<BK: Backend> {
    every: usize,
    d: usize,
    matrices: Vec<Matrix>,
    /// Ranges of 1-D tensors, adjacent ones merged: copied by rotate/unrotate.
    vectors: Vec<Range<usize>>,
    /// One entry per matrix once refreshed; empty before (the identity).
    factors: Vec<Factors<BK>>,
    last_refresh: Option<usize>,
    /// Largest m·n over the non-embedding matrices; allocated at the first refresh.
    scratch: Option<BK::Buf>,
    source: Source<BK>,
    /// svd's bases: canonical, or faer's as they come (runs trained before the canonical form).
    basis: SvdBasis,
}

impl<BK: Backend> SvdRotation<BK> {
    /// The `svd` rotation with canonical bases, the identity until the first refresh. `every` = F
    /// (`--svd-every`, default 250).
    pub fn new(be: &BK, table: &ParamTable, every: usize) -> Result<Self> {
        Self::with_basis(be, table, every, SvdBasis::Canonical)
    }

    /// [`SvdRotation::new`] with the bases `basis` (`SvdBasis::Faer`: what runs trained before the
    /// canonical form computed; their config.json has no `svd_basis`).
    pub fn with_basis(_be: &BK, table: &ParamTable, every: usize, basis: SvdBasis) -> Result<Self> {
        let mut rot = Self::build(table, every, "svd-every")?;
        rot.basis = basis;
        Ok(rot)
    }

    /// The `soap` rotation (module docs), with its factors L, R at zero and the identity as bases.
    pub fn soap(be: &BK, table: &ParamTable, cfg: &SoapConfig) -> Result<Self> {
        cfg.check_beta()?;
        let mut rot = Self::build(table, cfg.every, "soap-every")?;
        let mut stats = Vec::with_capacity(rot.matrices.len());
        let mut gram = 1;
        for mx in &rot.matrices {
            let l = if mx.embedding {
                None
            } else {
                gram = gram.max(mx.m * mx.m);
                Some(be.alloc(mx.m * mx.m)?)
            };
            gram = gram.max(mx.n * mx.n);
            stats.push((l, be.alloc(mx.n * mx.n)?));
        }
        let first = match cfg.first_moment {
            SoapMoment::Original => Some(be.alloc(rot.d)?),
            SoapMoment::Eigenbasis | SoapMoment::Positional => None,
        };
        rot.source = Source::Soap(Box::new(Soap {
            cfg: cfg.clone(),
            stats,
            gram: be.alloc(gram)?,
            first,
            carry: None,
        }));
        Ok(rot)
    }

    fn build(table: &ParamTable, every: usize, flag: &str) -> Result<Self> {
        if every == 0 {
            return Err(Error::config(flag, "must be at least 1"));
        }
        let mut matrices = Vec::new();
        let mut vectors: Vec<Range<usize>> = Vec::new();
        for e in &table.entries {
            if e.is_matrix() {
                matrices.push(Matrix {
                    name: e.name.clone(),
                    offset: e.offset,
                    m: e.rows,
                    n: e.cols,
                    embedding: e.role.is_embedding(),
                });
            } else if e.is_empty() {
                continue;
            } else if let Some(last) = vectors.last_mut().filter(|r| r.end == e.offset) {
                last.end = e.range().end;
            } else {
                vectors.push(e.range());
            }
        }
        Ok(SvdRotation {
            every,
            d: table.total,
            matrices,
            vectors,
            factors: Vec::new(),
            last_refresh: None,
            scratch: None,
            source: Source::Gradient,
            basis: SvdBasis::Canonical,
        })
    }

    /// F, the refresh period.
    pub fn every(&self) -> usize {
        self.every
    }
    /// The step of the last refresh (1-based), None before the first.
    pub fn last_refresh(&self) -> Option<usize> {
        self.last_refresh
    }
    /// True before the first refresh: rotate and unrotate are copies.
    pub fn is_identity(&self) -> bool {
        self.factors.is_empty()
    }
    /// soap's settings; None for svd.
    pub fn soap_config(&self) -> Option<&SoapConfig> {
        match &self.source {
            Source::Soap(s) => Some(&s.cfg),
            Source::Gradient => None,
        }
    }
    /// "svd" or "soap": the rotation's name, and the prefix of its checkpoint tensors.
    pub fn name(&self) -> &'static str {
        match self.source {
            Source::Gradient => "svd",
            Source::Soap(_) => "soap",
        }
    }
    /// The checkpoint tensor holding the step of the last refresh: `svd.last_refresh` or
    /// `soap.last_refresh`.
    pub fn last_refresh_name(&self) -> String {
        format!("{}.last_refresh", self.name())
    }
    /// Whether [`SvdRotation::prepare_with`] needs the Adam link's first moment (soap's `original` and
    /// `eigenbasis` forms).
    pub fn needs_moment(&self) -> bool {
        matches!(self.soap_config(), Some(c) if c.first_moment != SoapMoment::Positional)
    }

    /// Values held in U and V over all matrices (whether or not refreshed yet); soap's L and R as many.
    pub fn factor_len(&self) -> usize {
        self.matrices
            .iter()
            .map(|mx| if mx.embedding { 0 } else { mx.m * mx.m } + mx.n * mx.n)
            .sum()
    }

    /// Whether `step` (1-based) refreshes the bases: (step − 1) % F = 0, except step 1 under soap's
    /// identity initial bases.
    pub fn refreshes_at(&self, step: usize) -> bool {
        let identity_start =
            matches!(self.soap_config(), Some(c) if c.init == SoapInit::Identity) && step == 1;
        step >= 1 && (step - 1).is_multiple_of(self.every) && !identity_start
    }

    /// [`SvdRotation::prepare_with`] without a first moment (svd, and soap's `positional` form).
    pub fn prepare(&mut self, be: &BK, step: usize, grads: &BK::Buf) -> Result<()> {
        self.prepare_with(be, step, grads, None)
    }

    /// Called before every optimizer step with that step's gradient; `step` is 1-based (the step about to
    /// be taken). soap first adds the gradient to its factors L, R; then, at a refresh step
    /// ([`SvdRotation::refreshes_at`]), the bases of every 2-D tensor are recomputed (module docs). soap's
    /// `original` form then sets the Adam link's first moment to the projection of M (whose EMA it then
    /// advances by this gradient), its `eigenbasis` form carries the moment into the new bases.
    pub fn prepare_with(
        &mut self,
        be: &BK,
        step: usize,
        grads: &BK::Buf,
        mut moment: Option<Moment<'_, BK>>,
    ) -> Result<()> {
        if step == 0 {
            return Err(Error::config(
                self.name(),
                "steps are 1-based; got 0".to_string(),
            ));
        }
        let len = be.buf_len(grads);
        if len != self.d {
            return Err(Error::Shape {
                context: format!("{} prepare gradient", self.name()),
                expected: format!("{} elements", self.d),
                got: format!("{len} elements"),
            });
        }
        if self.needs_moment() && moment.is_none() {
            return Err(Error::config(
                "soap-first-moment",
                "the original and eigenbasis forms need the first moment of an Adam link (--optimizer \
                 adamw)",
            ));
        }
        if let Source::Soap(s) = &mut self.source {
            accumulate(be, &self.matrices, s, grads)?;
        }
        if self.refreshes_at(step) {
            let carry = match (&mut self.source, moment.as_mut()) {
                (Source::Soap(s), Some(mo)) if s.cfg.first_moment == SoapMoment::Eigenbasis => {
                    Some((s.carry.take(), mo))
                }
                _ => None,
            };
            match carry {
                Some((buf, mo)) => {
                    let mut buf = match buf {
                        Some(b) => b,
                        None => be.alloc(self.d)?,
                    };
                    // M̃ back to the standard layout with the old bases, the new ones, and into them
                    self.apply(be, &mut buf, mo.m, true)?;
                    let done = self.refresh(be, step, grads);
                    let done = done.and_then(|()| self.apply(be, mo.m, &buf, false));
                    if let Source::Soap(s) = &mut self.source {
                        s.carry = Some(buf);
                    }
                    done?;
                }
                None => self.refresh(be, step, grads)?,
            }
        }
        let original = match (&mut self.source, moment) {
            (Source::Soap(s), Some(mo)) if s.cfg.first_moment == SoapMoment::Original => {
                s.first.take().map(|first| (first, mo))
            }
            _ => None,
        };
        if let Some((mut first, mo)) = original {
            // m := Q_Lᵀ·M_{t−1}·Q_R; the Adam link's m ← β₁m + (1−β₁)G̃ then gives Q_Lᵀ·M_t·Q_R, and
            // M_t = β₁M_{t−1} + (1−β₁)G is kept here, in the original space
            let done = self.apply(be, mo.m, &first, false).and_then(|()| {
                be.ema_inplace(
                    be.view_mut(&mut first, 0..self.d),
                    be.view(grads, 0..self.d),
                    mo.beta1,
                )
            });
            if let Source::Soap(s) = &mut self.source {
                s.first = Some(first);
            }
            done?;
        }
        Ok(())
    }

    /// New bases for every matrix from this step's gradient (svd) or from L and R (soap).
    fn refresh(&mut self, be: &BK, step: usize, grads: &BK::Buf) -> Result<()> {
        let host = match self.source {
            Source::Gradient => {
                let host = be.download(grads)?;
                // Check every block before touching any factor, so a bad gradient leaves the rotation
                // as it was.
                for mx in &self.matrices {
                    if let Some(value) = first_bad(&host[mx.range()]) {
                        return Err(Error::Diverged {
                            step,
                            what: format!("an entry of the gradient of {} (svd refresh)", mx.name),
                            value,
                            kept: "the svd rotation was not refreshed".into(),
                        });
                    }
                }
                Some(host)
            }
            Source::Soap(_) => None,
        };
        if self.factors.is_empty() {
            let mut factors = Vec::with_capacity(self.matrices.len());
            for mx in &self.matrices {
                let ut = if mx.embedding {
                    None
                } else {
                    Some(be.alloc(mx.m * mx.m)?)
                };
                let vt = be.alloc(mx.n * mx.n)?;
                factors.push(Factors { ut, vt });
            }
            self.ensure_scratch(be)?;
            self.factors = factors;
        }
        // One decomposition per task on the rayon pool, each sequential inside, largest first for
        // balance: faer's own parallel SVD gains little (768²: 0.196 s on 2 threads vs 0.203 s
        // sequential), while two sequential ones side by side take 0.224 s. Peak host memory: one f64
        // block and its factors per thread (wte: 309 MB; mlp.c_fc: 19 MB + 75 MB + 5 MB).
        let stats: Vec<Option<&Stats<BK>>> = match &self.source {
            Source::Soap(s) => s.stats.iter().map(Some).collect(),
            Source::Gradient => vec![None; self.matrices.len()],
        };
        let mut jobs: Vec<_> = self
            .matrices
            .iter()
            .zip(self.factors.iter_mut())
            .zip(stats)
            .collect();
        jobs.sort_by_key(|((mx, _), _)| std::cmp::Reverse(svd_cost(mx)));
        let canonical_basis = self.basis == SvdBasis::Canonical;
        // the unit roundoff of the type soap's factors are accumulated in
        let unit = <BK::T as num_traits::Float>::epsilon().to_f64() / 2.0;
        let done = jobs.into_par_iter().try_for_each(|((mx, f), st)| {
            let (ut, vt) = match (&host, st) {
                (Some(host), _) => svd_factors(&host[mx.range()], mx, step, canonical_basis)?,
                (None, Some((l, r))) => {
                    let l = match l {
                        Some(l) => Some(download_f64(be, l)?),
                        None => None,
                    };
                    eigen_factors(l.as_deref(), &download_f64(be, r)?, mx, step, unit)?
                }
                (None, None) => unreachable!("soap has statistics for every matrix"),
            };
            if let (Some(buf), Some(ut)) = (f.ut.as_mut(), ut) {
                upload_cast(be, buf, &ut)?;
            }
            upload_cast(be, &mut f.vt, &vt)
        });
        if let Err(e) = done {
            // Some factors may be new and some old: fall back to the identity (training stops anyway).
            self.factors.clear();
            self.last_refresh = None;
            return Err(e);
        }
        self.last_refresh = Some(step);
        Ok(())
    }

    fn ensure_scratch(&mut self, be: &BK) -> Result<()> {
        if self.scratch.is_none() {
            let n = self
                .matrices
                .iter()
                .filter(|mx| !mx.embedding)
                .map(|mx| mx.m * mx.n)
                .max()
                .unwrap_or(0);
            self.scratch = Some(be.alloc(n)?);
        }
        Ok(())
    }

    #[track_caller]
    fn check(&self, be: &BK, op: &str, out: &BK::Buf, inp: &BK::Buf) {
        super::check_lens(be, "SvdRotation", op, self.d, out, inp);
    }

    /// out[r] = x[r] for each range (a zero fill and an add, so it stays a backend op; −0.0 becomes +0.0).
    fn copy_ranges<'r>(
        be: &BK,
        out: &mut BK::Buf,
        x: &BK::Buf,
        ranges: impl Iterator<Item = Range<usize>> + 'r,
    ) -> Result<()> {
        for r in ranges {
            be.fill(
                be.view_mut(out, r.clone()),
                <BK::T as Scalar>::from_f64(0.0),
            )?;
            be.add_inplace(be.view_mut(out, r.clone()), be.view(x, r))?;
        }
        Ok(())
    }

    /// Per 2-D tensor: G̃ = Uᵀ·G·V (G·V for embeddings); 1-D tensors copied. Identity before the first
    /// refresh. Both buffers have d elements, in the table's layout.
    pub fn rotate(&mut self, be: &BK, out: &mut BK::Buf, g: &BK::Buf) -> Result<()> {
        self.apply(be, out, g, false)?;
        Ok(())
    }

    /// Per 2-D tensor: U·Ũ·Vᵀ (Ũ·Vᵀ for embeddings); 1-D tensors copied. The inverse (and transpose) of
    /// [`SvdRotation::rotate`].
    pub fn unrotate(&mut self, be: &BK, out: &mut BK::Buf, u: &BK::Buf) -> Result<()> {
        self.apply(be, out, u, true)?;
        Ok(())
    }

    #[track_caller]
    fn apply(&mut self, be: &BK, out: &mut BK::Buf, x: &BK::Buf, inverse: bool) -> Result<()> {
        self.check(be, if inverse { "unrotate" } else { "rotate" }, out, x);
        if self.factors.is_empty() {
            return Self::copy_ranges(be, out, x, std::iter::once(0..self.d));
        }
        Self::copy_ranges(be, out, x, self.vectors.iter().cloned())?;
        let scratch = self
            .scratch
            .as_mut()
            .expect("scratch is allocated at the first refresh");
        for (mx, f) in self.matrices.iter().zip(&self.factors) {
            let (m, n) = (mx.m, mx.n);
            let r = mx.range();
            // Stored Vᵀ: X·V is X·(Vᵀ)ᵀ (trans_b), X·Vᵀ is plain; likewise for Uᵀ on the left.
            let vt = be.view(&f.vt, 0..n * n);
            match &f.ut {
                // Embeddings: out = X·V (rotate) or X·Vᵀ (unrotate), one GEMM.
                None => be.gemm(
                    be.view_mut(out, r.clone()),
                    be.view(x, r),
                    vt,
                    m,
                    n,
                    n,
                    false,
                    !inverse,
                    false,
                )?,
                Some(ut) => {
                    let ut = be.view(ut, 0..m * m);
                    // rotate: tmp = Uᵀ·X, out = tmp·V;  unrotate: tmp = U·X, out = tmp·Vᵀ.
                    be.gemm(
                        be.view_mut(scratch, 0..m * n),
                        ut,
                        be.view(x, r.clone()),
                        m,
                        n,
                        m,
                        inverse,
                        false,
                        false,
                    )?;
                    be.gemm(
                        be.view_mut(out, r),
                        be.view(scratch, 0..m * n),
                        vt,
                        m,
                        n,
                        n,
                        false,
                        !inverse,
                        false,
                    )?;
                }
            }
        }
        Ok(())
    }

    /// e.g. "svd, F=250: 72 matrices Uᵀ·G·V + 2 embeddings G·V, 25 vectors unrotated; U,V hold 298,450,944
    /// values; last refresh at step 1"; soap names its settings and its factors.
    pub fn describe(&self) -> String {
        let emb = self.matrices.iter().filter(|m| m.embedding).count();
        let plural = |c: usize| if c == 1 { "" } else { "s" };
        let n_mat = self.matrices.len() - emb;
        let n_vec: usize = self.vectors.iter().map(|r| r.len()).sum();
        let refresh = match (self.last_refresh, self.soap_config()) {
            (Some(s), _) => format!("last refresh at step {s}"),
            (None, Some(c)) if c.init == SoapInit::Identity => format!(
                "identity until the first refresh (before step {}, from L and R)",
                self.every + 1
            ),
            (None, Some(_)) => {
                "identity until the first refresh (before step 1, from L and R after its gradient)"
                    .into()
            }
            (None, None) => {
                "identity until the first refresh (before step 1, from the gradient at the initial \
                 weights)"
                    .into()
            }
        };
        let (head, held) = match self.soap_config() {
            None => ("svd".to_string(), "U,V hold"),
            Some(c) => (
                format!(
                    "soap (L, R = EMA_{} of G·Gᵀ, Gᵀ·G; first moment {}; initial bases {})",
                    c.beta, c.first_moment, c.init
                ),
                "Q_L,Q_R (and L,R as many) hold",
            ),
        };
        format!(
            "{head}, F={}: {n_mat} matri{} Uᵀ·G·V + {emb} embedding{} G·V, {} 1-D coordinates unrotated; \
             {held} {} values; {refresh}",
            self.every,
            if n_mat == 1 { "x" } else { "ces" },
            plural(emb),
            thousands(n_vec),
            thousands(self.factor_len()),
        )
    }

    /// Checkpoint state (module docs): `<p>.<name>.U` [m, m] (not for embeddings), `<p>.<name>.V` [n, n],
    /// row-major f64, and `<p>.last_refresh` [1] (0 = never refreshed, then no bases), p = svd or soap;
    /// soap adds `soap.<name>.L` [m, m] (not for embeddings), `soap.<name>.R` [n, n] and, in its
    /// `original` form, `soap.first_moment` [d].
    pub fn state(&self, be: &BK) -> Result<Vec<StateTensor>> {
        let p = self.name();
        let mut out = Vec::with_capacity(4 * self.matrices.len() + 2);
        out.push((
            self.last_refresh_name(),
            vec![1],
            vec![self.last_refresh.unwrap_or(0) as f64],
        ));
        // Stored transposed: transposing back gives row-major U and V.
        let widen = |buf: &BK::Buf, k: usize| -> Result<Vec<f64>> {
            Ok(transpose(&download_f64(be, buf)?, k))
        };
        for (mx, f) in self.matrices.iter().zip(&self.factors) {
            if let Some(ut) = &f.ut {
                out.push((factor_name(p, mx, "U"), vec![mx.m, mx.m], widen(ut, mx.m)?));
            }
            out.push((
                factor_name(p, mx, "V"),
                vec![mx.n, mx.n],
                widen(&f.vt, mx.n)?,
            ));
        }
        if let Source::Soap(s) = &self.source {
            for (mx, (l, r)) in self.matrices.iter().zip(&s.stats) {
                if let Some(l) = l {
                    out.push((
                        factor_name(p, mx, "L"),
                        vec![mx.m, mx.m],
                        download_f64(be, l)?,
                    ));
                }
                out.push((
                    factor_name(p, mx, "R"),
                    vec![mx.n, mx.n],
                    download_f64(be, r)?,
                ));
            }
            if let Some(first) = &s.first {
                out.push((FIRST_MOMENT.into(), vec![self.d], download_f64(be, first)?));
            }
        }
        Ok(out)
    }

    /// Restore from tensors read back from a checkpoint (`path` names it in errors); errors name the
    /// missing or misshapen tensor and the expected shape.
    pub fn load_state(&mut self, be: &BK, path: &Path, tensors: &TensorMap) -> Result<()> {
        let p = self.name();
        let last_name = self.last_refresh_name();
        let last = get(path, tensors, &last_name, &[1])?[0];
        if !(last >= 0.0 && last.fract() == 0.0 && last < 2f64.powi(53)) {
            return Err(Error::bad_file(
                path,
                &last_name,
                format!("expected a step number ≥ 0, got {last}"),
            ));
        }
        if let Source::Soap(s) = &mut self.source {
            for (mx, (l, r)) in self.matrices.iter().zip(s.stats.iter_mut()) {
                if let Some(l) = l {
                    let vals = get(path, tensors, &factor_name(p, mx, "L"), &[mx.m, mx.m])?;
                    upload_cast(be, l, vals)?;
                }
                let vals = get(path, tensors, &factor_name(p, mx, "R"), &[mx.n, mx.n])?;
                upload_cast(be, r, vals)?;
            }
            if let Some(first) = &mut s.first {
                upload_cast(be, first, get(path, tensors, FIRST_MOMENT, &[self.d])?)?;
            }
        }
        if last == 0.0 {
            self.factors.clear();
            self.last_refresh = None;
            return Ok(());
        }
        let mut factors = Vec::with_capacity(self.matrices.len());
        for mx in &self.matrices {
            let ut = if mx.embedding {
                None
            } else {
                let vals = get(path, tensors, &factor_name(p, mx, "U"), &[mx.m, mx.m])?;
                Some(upload_f64(be, &transpose(vals, mx.m))?)
            };
            let vals = get(path, tensors, &factor_name(p, mx, "V"), &[mx.n, mx.n])?;
            let vt = upload_f64(be, &transpose(vals, mx.n))?;
            factors.push(Factors { ut, vt });
        }
        self.factors = factors;
        self.ensure_scratch(be)?;
        self.last_refresh = Some(last as usize);
        Ok(())
    }
}

impl<BK: Backend> fmt::Debug for SvdRotation<BK> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SvdRotation({})", self.describe())
    }
}

/// The name of soap's first moment M in the checkpoint state (`original` form).
pub const FIRST_MOMENT: &str = "soap.first_moment";

/// `<prefix>.<entry name>.<which>`, e.g. `svd.h.0.attn.q.weight.U`.
fn factor_name(prefix: &str, mx: &Matrix, which: &str) -> String {
    format!("{prefix}.{}.{which}", mx.name)
}

/// soap's factors after this step's gradient: L ← β·L + (1−β)·G·Gᵀ, R ← β·R + (1−β)·Gᵀ·G per matrix
/// (R only for embeddings), as backend GEMMs into a scratch and the backend's EMA.
fn accumulate<BK: Backend>(
    be: &BK,
    matrices: &[Matrix],
    s: &mut Soap<BK>,
    grads: &BK::Buf,
) -> Result<()> {
    let beta = s.cfg.beta;
    for (mx, (l, r)) in matrices.iter().zip(s.stats.iter_mut()) {
        let (m, n, g) = (mx.m, mx.n, mx.range());
        if let Some(l) = l {
            // G·Gᵀ: (m×n)·(m×n)ᵀ
            be.gemm(
                be.view_mut(&mut s.gram, 0..m * m),
                be.view(grads, g.clone()),
                be.view(grads, g.clone()),
                m,
                m,
                n,
                false,
                true,
                false,
            )?;
            be.ema_inplace(be.view_mut(l, 0..m * m), be.view(&s.gram, 0..m * m), beta)?;
        }
        // Gᵀ·G: (m×n)ᵀ·(m×n)
        be.gemm(
            be.view_mut(&mut s.gram, 0..n * n),
            be.view(grads, g.clone()),
            be.view(grads, g),
            n,
            n,
            m,
            true,
            false,
            false,
        )?;
        be.ema_inplace(be.view_mut(r, 0..n * n), be.view(&s.gram, 0..n * n), beta)?;
    }
    Ok(())
}

/// The first non-finite value of `x`, as f64.
fn first_bad<T: Scalar>(x: &[T]) -> Option<f64> {
    x.iter()
        .map(|&x| Scalar::to_f64(x))
        .find(|x| !x.is_finite())
}

/// A backend buffer's values, widened to f64.
fn download_f64<BK: Backend>(be: &BK, buf: &BK::Buf) -> Result<Vec<f64>> {
    Ok(be.download(buf)?.into_iter().map(Scalar::to_f64).collect())
}

/// The values of tensor `name` in `tensors`, which must have shape `shape`.
fn get<'t>(path: &Path, tensors: &'t TensorMap, name: &str, shape: &[usize]) -> Result<&'t [f64]> {
    let (got, vals) = tensors
        .get(name)
        .ok_or_else(|| Error::bad_file(path, name, format!("missing; expected shape {shape:?}")))?;
    let count: usize = shape.iter().product();
    if got.as_slice() != shape || vals.len() != count {
        return Err(Error::bad_file(
            path,
            name,
            format!(
                "expected shape {shape:?}, got {got:?} ({} values)",
                vals.len()
            ),
        ));
    }
    Ok(vals)
}

/// Upload f64 values into an existing buffer of the same length, cast to the backend's type.
fn upload_cast<BK: Backend>(be: &BK, buf: &mut BK::Buf, vals: &[f64]) -> Result<()> {
    let host: Vec<BK::T> = vals
        .iter()
        .map(|&x| <BK::T as Scalar>::from_f64(x))
        .collect();
    be.upload(buf, &host)
}

/// The transpose of a k×k row-major matrix.
fn transpose(x: &[f64], k: usize) -> Vec<f64> {
    let mut out = vec![0.0; k * k];
    for i in 0..k {
        for j in 0..k {
            out[j * k + i] = x[i * k + j];
        }
    }
    out
}

/// A proxy for the cost of one SVD (bidiagonalisation plus the full factors), for scheduling only.
fn svd_cost(mx: &Matrix) -> usize {
    let (m, n) = (mx.m, mx.n);
    let u = if mx.embedding { 0 } else { m * m * m.min(n) };
    m * n * m.min(n) + u + n * n * m.min(n)
}

/// The bases of one gradient block `g` (m×n row-major) from its SVD in f64, sequential (`Par::Seq`: the
/// result does not depend on the thread count), TRANSPOSED row-major: (Uᵀ m×m or None for embeddings, Vᵀ
/// n×n). `canonical`: the canonical bases ([`canonical`], from the thin singular vectors); otherwise
/// faer's full U and V as they come (its signs and null-space completion: what svd runs trained before
/// the canonical form, whose config.json has no `svd_basis`, computed).
fn svd_factors<T: Scalar>(
    g: &[T],
    mx: &Matrix,
    step: usize,
    canonical_basis: bool,
) -> Result<(Option<Vec<f64>>, Vec<f64>)> {
    let (m, n) = (mx.m, mx.n);
    let k = m.min(n);
    let (cols_u, cols_v, which) = if canonical_basis {
        (k, k, ComputeSvdVectors::Thin)
    } else {
        (m, n, ComputeSvdVectors::Full)
    };
    let a = Mat::<f64>::from_fn(m, n, |i, j| Scalar::to_f64(g[i * n + j]));
    let mut s = Diag::<f64>::zeros(k);
    let mut u = (!mx.embedding).then(|| Mat::<f64>::zeros(m, cols_u));
    let mut v = Mat::<f64>::zeros(n, cols_v);
    let compute_u = if mx.embedding {
        ComputeSvdVectors::No
    } else {
        which
    };
    let mut mem = MemBuffer::new(svd_scratch::<f64>(
        m,
        n,
        compute_u,
        which,
        Par::Seq,
        Default::default(),
    ));
    svd(
        a.as_ref(),
        s.as_mut(),
        u.as_mut().map(|u| u.as_mut()),
        Some(v.as_mut()),
        Par::Seq,
        MemStack::new(&mut mem),
        Default::default(),
    )
    .map_err(|e| {
        Error::config(
            "svd rotation",
            format!(
                "the SVD of the gradient of {} at step {step} failed: {e:?}",
                mx.name
            ),
        )
    })?;
    if !canonical_basis {
        // Column j of U is row j of Uᵀ: contiguous copies of faer's column-major storage.
        let transposed = |x: &Mat<f64>| -> Vec<f64> {
            let mut out = Vec::with_capacity(x.nrows() * x.ncols());
            for j in 0..x.ncols() {
                out.extend_from_slice(x.col_as_slice(j));
            }
            out
        };
        return Ok((u.as_ref().map(transposed), transposed(&v)));
    }
    // faer's singular values are non-increasing; the canonical form ranks by σ², as soap by λ
    let sq: Vec<f64> = s.column_vector().iter().map(|x| x * x).collect();
    Ok((
        u.as_ref().map(|u| canonical(u.as_ref(), &sq, NULL_TOL)),
        canonical(v.as_ref(), &sq, NULL_TOL),
    ))
}

/// soap's bases of one matrix: the eigenvectors of L (m×m, None for embeddings) and R (n×n), row-major
/// f64, in f64 and sequential, canonical ([`canonical`], eigenvalues descending) and TRANSPOSED
/// row-major, as [`svd_factors`]. `step` and the matrix name the failure, if any.
fn eigen_factors(
    l: Option<&[f64]>,
    r: &[f64],
    mx: &Matrix,
    step: usize,
    unit: f64,
) -> Result<(Option<Vec<f64>>, Vec<f64>)> {
    let basis = |x: &[f64], k: usize, which: &str| -> Result<Vec<f64>> {
        if let Some(value) = first_bad(x) {
            return Err(Error::Diverged {
                step,
                what: format!("an entry of soap's factor {which} of {}", mx.name),
                value,
                kept: "the soap rotation fell back to the identity (its factors hold this step's \
                       gradient)"
                    .into(),
            });
        }
        // the lower triangle is read (the factors are symmetric up to rounding)
        let a = MatRef::from_row_major_slice(x, k, k);
        let mut vals = Diag::<f64>::zeros(k);
        let mut vecs = Mat::<f64>::zeros(k, k);
        let mut mem = MemBuffer::new(self_adjoint_evd_scratch::<f64>(
            k,
            ComputeEigenvectors::Yes,
            Par::Seq,
            Default::default(),
        ));
        self_adjoint_evd(
            a,
            vals.as_mut(),
            Some(vecs.as_mut()),
            Par::Seq,
            MemStack::new(&mut mem),
            Default::default(),
        )
        .map_err(|e| {
            Error::config(
                "soap rotation",
                format!(
                    "the eigendecomposition of {which} of {} at step {step} failed: {e:?}",
                    mx.name
                ),
            )
        })?;
        // faer's eigenvalues are non-decreasing: reverse both (the vectors as a view)
        let desc: Vec<f64> = vals.column_vector().iter().rev().copied().collect();
        Ok(canonical(
            vecs.as_ref().reverse_cols(),
            &desc,
            soap_null_tol(k, unit),
        ))
    };
    let ut = match l {
        Some(l) => Some(basis(l, mx.m, "L")?),
        None => None,
    };
    Ok((ut, basis(r, mx.n, "R")?))
}

/// The canonical orthogonal basis spanned by `vecs` (dim×k orthonormal columns, ordered by `values`
/// non-increasing: σ² or eigenvalues), returned TRANSPOSED (row-major, row j = basis vector j):
/// 1. the columns whose value exceeds `tol` × the largest are kept, in order, each signed so that its
///    entry of largest magnitude (the first, on a tie) is positive;
/// 2. the rest of the space is completed by the last dim − kept columns of the Q of a Householder QR of
///    the kept columns (faer's, sequential), signed the same way.
///
/// So the basis depends only on the kept vectors up to sign, not on how a decomposition chose them or
/// the null space: the SVD of G and the eigendecomposition of G·Gᵀ give the same one.
fn canonical(vecs: MatRef<'_, f64>, values: &[f64], tol: f64) -> Vec<f64> {
    let dim = vecs.nrows();
    let top = values.first().copied().unwrap_or(0.0);
    let kept = values
        .iter()
        .take_while(|&&x| top > 0.0 && x > tol * top)
        .count()
        .min(vecs.ncols());
    let mut out = Vec::with_capacity(dim * dim);
    let push_signed = |out: &mut Vec<f64>, col: &mut dyn Iterator<Item = f64>| {
        let start = out.len();
        out.extend(col);
        let c = &mut out[start..];
        let mut best = 0;
        for (i, x) in c.iter().enumerate() {
            if x.abs() > c[best].abs() {
                best = i;
            }
        }
        if c[best] < 0.0 {
            c.iter_mut().for_each(|x| *x = -*x);
        }
    };
    for j in 0..kept {
        push_signed(&mut out, &mut vecs.col(j).iter().copied());
    }
    if kept == dim {
        return out;
    }
    // the completion: Q·E with E the last dim − kept columns of the identity
    let mut e = Mat::<f64>::from_fn(
        dim,
        dim - kept,
        |i, j| if i == j + kept { 1.0 } else { 0.0 },
    );
    if kept > 0 {
        let mut a = Mat::<f64>::from_fn(dim, kept, |i, j| out[j * dim + i]);
        let bs = recommended_block_size::<f64>(dim, kept);
        let mut coeff = Mat::<f64>::zeros(bs, kept);
        let mut mem = MemBuffer::new(
            qr_in_place_scratch::<f64>(dim, kept, bs, Par::Seq, Default::default()).or(
                apply_block_householder_sequence_on_the_left_in_place_scratch::<f64>(
                    dim,
                    bs,
                    dim - kept,
                ),
            ),
        );
        qr_in_place(
            a.as_mut(),
            coeff.as_mut(),
            Par::Seq,
            MemStack::new(&mut mem),
            Default::default(),
        );
        apply_block_householder_sequence_on_the_left_in_place_with_conj(
            a.as_ref(),
            coeff.as_ref(),
            Conj::No,
            e.as_mut(),
            Par::Seq,
            MemStack::new(&mut mem),
        );
    }
    for j in 0..dim - kept {
        push_signed(&mut out, &mut e.col(j).iter().copied());
    }
    out
}
