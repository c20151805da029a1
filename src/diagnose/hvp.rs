//! Gradients and Hessian-vector products of GPT-2's loss in a rotated basis: in f64 on the CPU for the
//! diagnostics, on any backend (`Gpt2Hvp::on`: the kernel backend on a GPU or its stand-in) with the
//! step length of that backend's precision.
//!
//! **The function.** f(w) = the mean cross-entropy over a fixed list of micro-batches (each micro-batch's
//! mean loss, averaged over the micro-batches): Xie et al. (App. D.2) "subsample a fixed batch of training
//! data" and probe the Hessian of the loss on it; Maes et al. (§2.1) write f = E_B f_B over minibatches B,
//! and their Table 5 (App. D.5.3) reports expected contributions ⟨d, Hᵢ⟩ over batches, which by
//! linearity are the contributions of the rows of such a mean's Hessian. `diagnose` makes the list a
//! token budget (`--hvp-tokens`, by default the run's effective batch B·accum·T: the loss one optimizer
//! step sees), cut into micro-batches of the run's shape (`docs/diagnostics.md`).
//!
//! **Accumulation.** H = (1/k) Σⱼ Hⱼ over the k micro-batches, so an HVP is the mean of the k micro-batch
//! HVPs, each the difference below of that micro-batch's gradient (the same points w ± h v̂ and the same
//! step h for every micro-batch and every probe): one micro-batch at a time in memory, and a budget of k
//! micro-batches gives exactly the average of the k single-batch HVPs (tests/diagnose.rs).
//!
//! **The basis.** For a rotation R (the run's, or `--rotation`), the rotated loss is f̃(x) = f(Rᵀx); its
//! gradient is R∇f and its Hessian R H Rᵀ, so an HVP unrotates the probe, takes the HVP in the standard
//! basis and rotates the result. The block rotations write R·g in a speed-first layout (every full n-block,
//! then residual blocks); [`InPlaceBasis`] puts each rotated coordinate back at the standard index it was
//! gathered from (`Rotation::layout_index`), a fixed permutation P, so the basis used here is P·R. Every
//! diagnostic is invariant under P except the indices of Hessian rows, which then keep their meaning: a
//! coordinate of tensor X under `--rotation layer` is still inside X (rotated within X), a coordinate of
//! row r of a weight under `--rotation output` is still in row r. The svd rotation already keeps each
//! tensor at its own range and `kron` has no layout convention; both are used as they are (P = I).
//!
//! **The HVP** is a central difference of analytic gradients along the unit probe v̂ = v/‖v‖:
//!
//!   H v ≈ ‖v‖ · (∇f(w + h v̂) − ∇f(w − h v̂)) / (2h),   h = ∛ε_mach · max(1, ‖w‖∞),
//!
//! with ε_mach of the precision the gradients are computed in: h ≈ 6.06e-6 · max(1, ‖w‖∞) in f64 (the
//! diagnostics; ε = 2⁻⁵²), h ≈ 4.9e-3 · max(1, ‖w‖∞) on an f32 backend (ε = 2⁻²³). Its error is
//! O(h²·f''') from truncation plus O(ε_mach·|∇f|/h) from rounding; h ∝ ∛ε_mach balances the two (the
//! classical optimum for a central difference) in units of the scale of the coordinates, which ‖w‖∞
//! bounds (GPT-2's LayerNorm gains are ≈ 1, weights ≈ 0.02–1). Scaling the step to ‖v‖ makes the HVP
//! exactly linear in the probe's length, and using ‖w‖∞ rather than ‖w‖₂ keeps h from growing with √d
//! (‖w‖₂ ≈ 260 for GPT-2 124M would move a single weight by 1.6e-3 in f64 for a one-hot probe). Measured
//! on the test model: relative error ≤ 1e-6 against a 5-point stencil (tests/diagnose.rs).

use crate::backend::cpu::CpuBackend;
use crate::backend::{Backend, Scalar};
use crate::config::ModelConfig;
use crate::data::loader::Batch;
use crate::error::{Error, Result};
use crate::model::Gpt2;
use crate::rotation::basis::Basis;

/// The f64 CPU backend the diagnostics run on.
pub type Cpu64 = CpuBackend<f64>;

/// A rotation written "in place": x ↦ P·R·x with P putting every rotated coordinate at the standard index
/// it was gathered from (module docs).
pub struct InPlaceBasis {
    basis: Basis<Cpu64>,
    /// rotated-layout position → standard index; None when the layout is used as it is.
    place: Option<Vec<usize>>,
}

impl InPlaceBasis {
    pub fn new(basis: Basis<Cpu64>) -> Self {
        let place = match &basis {
            // Reading a CPU index list back needs no backend state: any Cpu64 will do.
            Basis::Block(r) if !r.is_identity() => Some(r.layout_index(&Cpu64::new(1, false))),
            _ => None,
        };
        InPlaceBasis { basis, place }
    }

    pub fn is_identity(&self) -> bool {
        self.basis.is_identity()
    }

    pub fn describe(&self) -> String {
        self.basis.describe()
    }

    /// P·R·x.
    pub fn rotate(&mut self, be: &Cpu64, x: &[f64]) -> Result<Vec<f64>> {
        if self.is_identity() {
            return Ok(x.to_vec());
        }
        let mut y = vec![0.0; x.len()];
        self.basis.rotate(be, &mut y, &x.to_vec())?;
        Ok(match &self.place {
            None => y,
            Some(p) => {
                let mut z = vec![0.0; y.len()];
                for (j, &i) in p.iter().enumerate() {
                    z[i] = y[j];
                }
                z
            }
        })
    }

    /// Rᵀ·Pᵀ·z (the inverse of [`Self::rotate`]).
    pub fn unrotate(&mut self, be: &Cpu64, z: &[f64]) -> Result<Vec<f64>> {
        if self.is_identity() {
            return Ok(z.to_vec());
        }
        let y = match &self.place {
            None => z.to_vec(),
            Some(p) => p.iter().map(|&i| z[i]).collect(),
        };
        let mut x = vec![0.0; y.len()];
        self.basis.unrotate(be, &mut x, &y)?;
        Ok(x)
    }
}

/// GPT-2's loss over fixed micro-batches at fixed weights, seen in a rotated basis; the gradients run on
/// `BK` (the f64 CPU backend by default), the basis changes in f64 on the CPU.
pub struct Gpt2Hvp<BK: Backend = Cpu64> {
    be: BK,
    /// The backend of the basis changes, with the threads of the rayon pool the probe was built in.
    cpu: Cpu64,
    model: Gpt2<BK>,
    /// The weights, standard basis.
    w: Vec<f64>,
    batches: Vec<Batch>,
    basis: InPlaceBasis,
    /// Central-difference step length h (module docs).
    h: f64,
    /// Gradient evaluations so far (one per batch per point).
    pub grad_evals: usize,
}

impl Gpt2Hvp<Cpu64> {
    /// `w` in the standard basis; `batches` define f (non-empty, all the same (B, T)); `threads` for the
    /// backend's parallel ops (call inside a rayon pool of that size).
    pub fn new(
        cfg: &ModelConfig,
        w: Vec<f64>,
        batches: Vec<Batch>,
        basis: InPlaceBasis,
        threads: usize,
    ) -> Result<Self> {
        Self::on(Cpu64::new(threads, false), cfg, w, batches, basis)
    }
}

impl<BK: Backend> Gpt2Hvp<BK> {
    /// [`Gpt2Hvp::new`] with the gradients on `be`; the step length h is ∛ε of `be`'s precision. The basis
    /// changes use the threads of the current rayon pool (call inside the pool the diagnostics run in).
    pub fn on(
        be: BK,
        cfg: &ModelConfig,
        w: Vec<f64>,
        batches: Vec<Batch>,
        basis: InPlaceBasis,
    ) -> Result<Self> {
        if batches.is_empty() {
            return Err(Error::config(
                "hvp-tokens",
                "the Hessian needs at least one micro-batch",
            ));
        }
        let mut model = Gpt2::new(&be, cfg, 0)?;
        model.set_params_f64(&be, &w)?;
        let winf = w.iter().fold(0.0f64, |m, x| m.max(x.abs()));
        let eps = <BK::T as num_traits::Float>::epsilon().to_f64();
        Ok(Gpt2Hvp {
            be,
            cpu: Cpu64::new(rayon::current_num_threads(), false),
            model,
            h: eps.cbrt() * winf.max(1.0),
            w,
            batches,
            basis,
            grad_evals: 0,
        })
    }

    /// d, the number of parameters.
    pub fn dim(&self) -> usize {
        self.w.len()
    }

    /// The central-difference step length h.
    pub fn step_length(&self) -> f64 {
        self.h
    }

    /// The HVP's method in words, in the precision of `BK`'s gradients (`Settings::hvp`).
    pub fn method() -> String {
        let t = <BK::T as Scalar>::NAME;
        format!(
            "central difference of {t} gradients along v/|v|, step h = cbrt(eps_{t}) * max(1, |w|_inf)"
        )
    }

    pub fn describe_basis(&self) -> String {
        self.basis.describe()
    }

    /// P·R·x (into the diagnostics' basis).
    pub fn rotate(&mut self, x: &[f64]) -> Result<Vec<f64>> {
        self.basis.rotate(&self.cpu, x)
    }

    /// Rᵀ·Pᵀ·z (back to the standard basis).
    pub fn unrotate(&mut self, z: &[f64]) -> Result<Vec<f64>> {
        self.basis.unrotate(&self.cpu, z)
    }

    /// Mean loss and its gradient over `batches` at `w`, both in the standard basis.
    pub fn loss_grad_at(&mut self, w: &[f64], batches: &[Batch]) -> Result<(f64, Vec<f64>)> {
        self.model.set_params_f64(&self.be, w)?;
        self.model.zero_grads(&self.be)?;
        let mut loss = 0.0;
        for b in batches {
            let scale = 1.0 / (b.b * b.t * batches.len()) as f64;
            loss += self
                .model
                .forward_backward(&self.be, &b.inputs, &b.targets, b.b, b.t, scale)?;
            self.grad_evals += 1;
        }
        Ok((loss / batches.len() as f64, self.model.grads_f64(&self.be)?))
    }

    /// The gradient of one batch's mean loss at the weights, in the diagnostics' basis (P·R·∇f_B).
    pub fn batch_gradient(&mut self, batch: &Batch) -> Result<(f64, Vec<f64>)> {
        let w = std::mem::take(&mut self.w);
        let r = self.loss_grad_at(&w, std::slice::from_ref(batch));
        self.w = w;
        let (loss, g) = r?;
        Ok((loss, self.rotate(&g)?))
    }

    /// The gradient of f (the mean over the fixed batches), in the diagnostics' basis.
    pub fn gradient(&mut self) -> Result<(f64, Vec<f64>)> {
        let (w, batches) = (
            std::mem::take(&mut self.w),
            std::mem::take(&mut self.batches),
        );
        let r = self.loss_grad_at(&w, &batches);
        self.w = w;
        self.batches = batches;
        let (loss, g) = r?;
        Ok((loss, self.rotate(&g)?))
    }

    /// The fixed micro-batches that define f (and H).
    pub fn batches(&self) -> &[Batch] {
        &self.batches
    }

    /// out = (P R H Rᵀ Pᵀ)·v with H the Hessian of f (the mean over the fixed micro-batches), v and out in
    /// the diagnostics' basis ([`Self::hvp_on`]).
    pub fn hvp(&mut self, v: &[f64], out: &mut [f64]) -> Result<()> {
        let batches = std::mem::take(&mut self.batches);
        let r = self.hvp_on(&batches, v, out);
        self.batches = batches;
        r
    }

    /// out = (P R H_S Rᵀ Pᵀ)·v with H_S the Hessian of the mean loss over the micro-batches `batches`: the
    /// mean over them of each one's central difference (module docs), in the order given.
    pub fn hvp_on(&mut self, batches: &[Batch], v: &[f64], out: &mut [f64]) -> Result<()> {
        let d = self.dim();
        if v.len() != d || out.len() != d {
            return Err(Error::Shape {
                context: "hvp".into(),
                expected: format!("vectors of d = {d}"),
                got: format!("{} and {}", v.len(), out.len()),
            });
        }
        if batches.is_empty() {
            return Err(Error::config(
                "hvp-tokens",
                "the Hessian needs at least one micro-batch",
            ));
        }
        let nv = v.iter().map(|x| x * x).sum::<f64>().sqrt();
        if nv == 0.0 {
            out.fill(0.0);
            return Ok(());
        }
        let u = self.unrotate(v)?;
        let h = self.h;
        let point = |sign: f64| -> Vec<f64> {
            self.w
                .iter()
                .zip(&u)
                .map(|(&wi, &ui)| wi + sign * h * ui / nv)
                .collect()
        };
        let (plus, minus) = (point(1.0), point(-1.0));
        let mut sum = vec![0.0; d];
        for b in batches {
            let one = std::slice::from_ref(b);
            let (_, gp) = self.loss_grad_at(&plus, one)?;
            let (_, gm) = self.loss_grad_at(&minus, one)?;
            for ((s, a), b) in sum.iter_mut().zip(&gp).zip(&gm) {
                *s += nv * (a - b) / (2.0 * h);
            }
        }
        let k = batches.len() as f64;
        sum.iter_mut().for_each(|s| *s /= k);
        let r = self.rotate(&sum)?;
        out.copy_from_slice(&r);
        Ok(())
    }
}
