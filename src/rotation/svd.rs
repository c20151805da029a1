//! The `svd` rotation (Maes et al., NeurIPS 2025 poster, "Rotate the gradient with
//! its SVD"): every F steps take U, S, Vᵀ = SVD(G) of each weight's gradient; between refreshes the
//! optimizer sees g̃ = Uᵀ·G·V and its update Ũ is mapped back as U·Ũ·Vᵀ. Moments are NOT transformed at a
//! refresh (the poster's algorithm): they simply continue in the new basis.
//!
//! **Definition.** For each 2-D weight W stored (out, in) = m×n with gradient block G (m×n, row-major):
//! - U (m×m) and V (n×n) are the FULL left and right singular vector matrices of G, computed in f64 on the
//!   host with faer (`faer::linalg::svd::svd`), then cast to the backend's type. Both are orthogonal, so
//!   g ↦ Uᵀ·G·V is a rotation of that tensor's m·n coordinates (the Kronecker product Uᵀ ⊗ Vᵀ acting on
//!   the row-major vec G), and at the
//!   refresh step itself Uᵀ·G·V = S, the m×n "diagonal" of singular values in descending order. When
//!   m ≠ n the columns of the larger factor beyond min(m, n) are faer's orthonormal completion of the
//!   column space (a Householder basis); any completion gives a valid rotation.
//! - Embeddings (wte (vocab, C) and wpe (T, C), stored (in, out)) are rotated on their channel side only:
//!   G̃ = G·V with V (C×C) the right singular vectors of G, and U = I. A full U for wte would have
//!   50,257² ≈ 2.5·10⁹ entries (10 GB in f32, 20 GB in f64), and its SVD is out of reach on a CPU; the
//!   channel side is where the SVD's structure lives (rank ≤ C), so this keeps the spirit at C² memory. wpe
//!   is treated the same way for consistency (its T×T U would be 1024², affordable, but the position axis
//!   plays the same role as the vocabulary axis).
//! - 1-D tensors (LayerNorm gains and biases) are left unrotated: rotate/unrotate copy them.
//! - Signs of singular vectors are arbitrary (faer's choice); every choice is a rotation, and Adam's
//!   per-coordinate update is sign-equivariant, so it does not matter.
//!
//! **Layout.** The rotated vector keeps each tensor at its own range of the flat buffer: tensor i's G̃ sits
//! at `entries[i].range()`, an m×n row-major matrix (so 1-D tensors sit where they were).
//!
//! **Schedule.** `prepare(step, grads)` is called before every optimizer step (1-based) and refreshes all
//! factors from that step's gradient when (step − 1) mod F = 0, i.e. at steps 1, F+1, 2F+1, … (the poster's
//! "t mod F = 0" with 0-based t). So the first basis comes from the first step's gradient, taken at the
//! initial weights (the seed's, or `--init-from`'s), and that step is already taken in it; no step runs
//! in the standard basis. The rotation is the identity (plain copies) only before that first `prepare`.
//! A run's `metrics.jsonl` marks each refresh step with `"svd_refresh": true` (`docs/usage.md`).
//!
//! **Refresh.** The gradient is downloaded once; the SVDs run one per rayon task (largest first), each
//! sequential inside faer (`Par::Seq`), so the factors do not depend on the thread count; each task casts
//! and uploads its own factors. Factors are kept TRANSPOSED on the backend (row-major Uᵀ and Vᵀ, i.e.
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

use super::{thousands, upload_f64};
use crate::backend::{Backend, Scalar};
use crate::error::{Error, Result};
use crate::model::{ParamTable, Role};
use crate::tensors::TensorMap;
use faer::diag::Diag;
use faer::dyn_stack::{MemBuffer, MemStack};
use faer::linalg::svd::{svd, svd_scratch, ComputeSvdVectors};
use faer::{Mat, Par};
use rayon::prelude::*;
use std::fmt;
use std::ops::Range;
use std::path::Path;

/// One tensor of checkpoint state: name, shape, row-major values.
pub type StateTensor = (String, Vec<usize>, Vec<f64>);

/// The name of the last-refresh tensor in the checkpoint state.
pub const LAST_REFRESH: &str = "svd.last_refresh";

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

/// The poster's SVD rotation of every 2-D tensor (module docs).
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
}

impl<BK: Backend> SvdRotation<BK> {
    /// Identity until the first refresh. `every` = F (`--svd-every`, default 250).
    pub fn new(_be: &BK, table: &ParamTable, every: usize) -> Result<Self> {
        if every == 0 {
            return Err(Error::config("svd-every", "must be at least 1"));
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
                    embedding: matches!(e.role, Role::Wte | Role::Wpe),
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

    /// Values held in U and V over all matrices (whether or not refreshed yet).
    pub fn factor_len(&self) -> usize {
        self.matrices
            .iter()
            .map(|mx| if mx.embedding { 0 } else { mx.m * mx.m } + mx.n * mx.n)
            .sum()
    }

    /// Called before every optimizer step with that step's gradient; `step` is 1-based (the step about to
    /// be taken). Refreshes U, V of every 2-D tensor from this gradient when (step − 1) % every == 0.
    pub fn prepare(&mut self, be: &BK, step: usize, grads: &BK::Buf) -> Result<()> {
        if step == 0 {
            return Err(Error::config("svd step", "steps are 1-based; got 0"));
        }
        if !(step - 1).is_multiple_of(self.every) {
            return Ok(());
        }
        let len = be.buf_len(grads);
        if len != self.d {
            return Err(Error::Shape {
                context: "SvdRotation::prepare gradient".into(),
                expected: format!("{} elements", self.d),
                got: format!("{len} elements"),
            });
        }
        let host = be.download(grads)?;
        // Check every block before touching any factor, so a bad gradient leaves the rotation as it was.
        for mx in &self.matrices {
            let bad = host[mx.range()]
                .iter()
                .map(|&x| Scalar::to_f64(x))
                .find(|x| !x.is_finite());
            if let Some(value) = bad {
                return Err(Error::Diverged {
                    step,
                    what: format!("an entry of the gradient of {} (svd refresh)", mx.name),
                    value,
                    kept: "the svd rotation was not refreshed".into(),
                });
            }
        }
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
        // One SVD per task on the rayon pool, each sequential inside, largest first for balance: faer's
        // own parallel SVD gains little (768²: 0.196 s on 2 threads vs 0.203 s sequential), while two
        // sequential ones side by side take 0.224 s. Peak host memory: one f64 block and its factors per
        // thread (wte: 309 MB; mlp.c_fc: 19 MB + 75 MB + 5 MB).
        let mut jobs: Vec<(&Matrix, &mut Factors<BK>)> =
            self.matrices.iter().zip(self.factors.iter_mut()).collect();
        jobs.sort_by_key(|(mx, _)| std::cmp::Reverse(svd_cost(mx)));
        let done = jobs.into_par_iter().try_for_each(|(mx, f)| {
            let (ut, vt) = svd_factors(&host[mx.range()], mx, step)?;
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
    /// values; last refresh at step 1".
    pub fn describe(&self) -> String {
        let emb = self.matrices.iter().filter(|m| m.embedding).count();
        let plural = |c: usize| if c == 1 { "" } else { "s" };
        let n_mat = self.matrices.len() - emb;
        let n_vec: usize = self.vectors.iter().map(|r| r.len()).sum();
        let refresh = match self.last_refresh {
            Some(s) => format!("last refresh at step {s}"),
            None => {
                "identity until the first refresh (before step 1, from the gradient at the initial \
                 weights)"
                    .into()
            }
        };
        format!(
            "svd, F={}: {n_mat} matri{} Uᵀ·G·V + {emb} embedding{} G·V, {} 1-D coordinates unrotated; \
             U,V hold {} values; {refresh}",
            self.every,
            if n_mat == 1 { "x" } else { "ces" },
            plural(emb),
            thousands(n_vec),
            thousands(self.factor_len()),
        )
    }

    /// Checkpoint state (module docs): `svd.<name>.U` [m, m] (not for embeddings), `svd.<name>.V` [n, n],
    /// row-major f64, and `svd.last_refresh` [1] (0 = never refreshed, then no factors).
    pub fn state(&self, be: &BK) -> Result<Vec<StateTensor>> {
        let mut out = Vec::with_capacity(2 * self.factors.len() + 1);
        out.push((
            LAST_REFRESH.to_string(),
            vec![1],
            vec![self.last_refresh.unwrap_or(0) as f64],
        ));
        // Stored transposed: transposing back gives row-major U and V.
        let widen = |buf: &BK::Buf, k: usize| -> Result<Vec<f64>> {
            let t: Vec<f64> = be.download(buf)?.into_iter().map(Scalar::to_f64).collect();
            Ok(transpose(&t, k))
        };
        for (mx, f) in self.matrices.iter().zip(&self.factors) {
            if let Some(ut) = &f.ut {
                out.push((factor_name(mx, "U"), vec![mx.m, mx.m], widen(ut, mx.m)?));
            }
            out.push((factor_name(mx, "V"), vec![mx.n, mx.n], widen(&f.vt, mx.n)?));
        }
        Ok(out)
    }

    /// Restore from tensors read back from a checkpoint (`path` names it in errors); errors name the
    /// missing or misshapen tensor and the expected shape.
    pub fn load_state(&mut self, be: &BK, path: &Path, tensors: &TensorMap) -> Result<()> {
        let last = get(path, tensors, LAST_REFRESH, &[1])?[0];
        if !(last >= 0.0 && last.fract() == 0.0 && last < 2f64.powi(53)) {
            return Err(Error::bad_file(
                path,
                LAST_REFRESH,
                format!("expected a step number ≥ 0, got {last}"),
            ));
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
                let vals = get(path, tensors, &factor_name(mx, "U"), &[mx.m, mx.m])?;
                Some(upload_f64(be, &transpose(vals, mx.m))?)
            };
            let vals = get(path, tensors, &factor_name(mx, "V"), &[mx.n, mx.n])?;
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

/// `svd.<entry name>.<which>`, e.g. `svd.h.0.attn.q.weight.U`.
fn factor_name(mx: &Matrix, which: &str) -> String {
    format!("svd.{}.{which}", mx.name)
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

/// The SVD factors of one gradient block `g` (m×n row-major) in f64, sequential (`Par::Seq`: the result
/// does not depend on the thread count), TRANSPOSED row-major: (Uᵀ m×m or None for embeddings, Vᵀ n×n).
fn svd_factors<T: Scalar>(
    g: &[T],
    mx: &Matrix,
    step: usize,
) -> Result<(Option<Vec<f64>>, Vec<f64>)> {
    let (m, n) = (mx.m, mx.n);
    let a = Mat::<f64>::from_fn(m, n, |i, j| Scalar::to_f64(g[i * n + j]));
    let mut s = Diag::<f64>::zeros(m.min(n));
    let mut u = (!mx.embedding).then(|| Mat::<f64>::zeros(m, m));
    let mut v = Mat::<f64>::zeros(n, n);
    let compute_u = if mx.embedding {
        ComputeSvdVectors::No
    } else {
        ComputeSvdVectors::Full
    };
    let mut mem = MemBuffer::new(svd_scratch::<f64>(
        m,
        n,
        compute_u,
        ComputeSvdVectors::Full,
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
    // Column j of U is row j of Uᵀ: contiguous copies of faer's column-major storage.
    let transposed = |x: &Mat<f64>| -> Vec<f64> {
        let mut out = Vec::with_capacity(x.nrows() * x.ncols());
        for j in 0..x.ncols() {
            out.extend_from_slice(x.col_as_slice(j));
        }
        out
    };
    Ok((u.as_ref().map(transposed), transposed(&v)))
}
