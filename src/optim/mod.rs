//! Optimizers as explicit state + a step over the flat parameter buffer, one call per ParamTable entry
//! (so weight decay follows nanoGPT's groups: 2-D tensors decay, vectors do not).
//!
//! The rotation seam (Maes et al. Alg. 2): an optimizer sees the gradient through `rotate` and its
//! update through `unrotate`. Only the identity rotation exists so far; for it the step is one fused pass
//! (the backend's `adamw_step` / `sgd_step`), and the rotations issue adds the rotated path beside it.

pub mod schedule;

use crate::backend::{AdamStep, Backend};
use crate::config::{OptimizerKind, RotationConfig, TrainConfig};
use crate::error::{Error, Result};
use crate::model::ParamTable;

/// Optimizer state: the moment buffers live in the rotated layout (for `none`, the standard one).
pub struct Optimizer<BK: Backend> {
    pub kind: OptimizerKind,
    /// Number of steps taken (Adam's t).
    pub step: usize,
    /// AdamW: first moment; SGD: momentum buffer.
    pub m: BK::Buf,
    /// AdamW: second moment; unused (empty) for SGD.
    pub v: BK::Buf,
    pub rotation: RotationConfig,
}

impl<BK: Backend> Optimizer<BK> {
    pub fn new(be: &BK, kind: OptimizerKind, rotation: &RotationConfig, n: usize) -> Result<Self> {
        if rotation.kind != "none" {
            return Err(Error::config(
                "rotation",
                format!("'{}' is not implemented", rotation.kind),
            ));
        }
        let v_len = match kind {
            OptimizerKind::Adamw => n,
            OptimizerKind::Sgd => 0,
        };
        Ok(Optimizer {
            kind,
            step: 0,
            m: be.alloc(n)?,
            v: be.alloc(v_len)?,
            rotation: rotation.clone(),
        })
    }

    /// Named state tensors for checkpoints: (name, buffer).
    pub fn state_tensors(&self) -> Vec<(&'static str, &BK::Buf)> {
        match self.kind {
            OptimizerKind::Adamw => vec![("adamw.m", &self.m), ("adamw.v", &self.v)],
            OptimizerKind::Sgd => vec![("sgd.momentum", &self.m)],
        }
    }

    pub fn state_tensors_mut(&mut self) -> Vec<(&'static str, &mut BK::Buf)> {
        match self.kind {
            OptimizerKind::Adamw => vec![("adamw.m", &mut self.m), ("adamw.v", &mut self.v)],
            OptimizerKind::Sgd => vec![("sgd.momentum", &mut self.m)],
        }
    }

    /// One optimizer step at learning rate `lr` on every tensor of `table`.
    pub fn step(
        &mut self,
        be: &BK,
        table: &ParamTable,
        params: &mut BK::Buf,
        grads: &BK::Buf,
        lr: f64,
        cfg: &TrainConfig,
    ) {
        self.step += 1;
        let t = self.step as i32;
        for e in &table.entries {
            let wd = if e.decay { cfg.weight_decay } else { 0.0 };
            let r = e.range();
            match self.kind {
                OptimizerKind::Adamw => {
                    let hp = AdamStep {
                        lr,
                        beta1: cfg.beta1,
                        beta2: cfg.beta2,
                        eps: cfg.eps,
                        weight_decay: wd,
                        bias_correction1: 1.0 - cfg.beta1.powi(t),
                        bias_correction2: 1.0 - cfg.beta2.powi(t),
                    };
                    be.adamw_step(
                        be.view_mut(params, r.clone()),
                        be.view_mut(&mut self.m, r.clone()),
                        be.view_mut(&mut self.v, r.clone()),
                        be.view(grads, r),
                        hp,
                    );
                }
                OptimizerKind::Sgd => be.sgd_step(
                    be.view_mut(params, r.clone()),
                    be.view_mut(&mut self.m, r.clone()),
                    be.view(grads, r),
                    lr,
                    cfg.momentum,
                    wd,
                ),
            }
        }
    }
}

/// The global L2 norm of the gradient (rotation-invariant, so clipping commutes with every rotation).
pub fn grad_norm<BK: Backend>(be: &BK, grads: &BK::Buf) -> f64 {
    be.sum_squares(be.view(grads, 0..be.buf_len(grads))).sqrt()
}

/// torch's `clip_grad_norm_`: scale by max_norm/(norm + 1e-6) when that is below 1.
pub fn clip_grads<BK: Backend>(be: &BK, grads: &mut BK::Buf, norm: f64, max_norm: f64) {
    if max_norm > 0.0 && norm.is_finite() {
        let coef = max_norm / (norm + 1e-6);
        if coef < 1.0 {
            let n = be.buf_len(grads);
            be.scale(be.view_mut(grads, 0..n), num_traits::cast(coef).unwrap());
        }
    }
}
