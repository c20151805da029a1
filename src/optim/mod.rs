//! Optimizers as explicit state + a step over the flat parameter buffer, each usable under every rotation.
//!
//! A step (Maes et al. Alg. 2, generalised to every optimizer here):
//!   g̃ = R·g (rotate) → the optimizer's direction ũ from g̃ and its state (which lives in the rotated
//!   layout) → u = Rᵀ·ũ (unrotate) → θ ← θ·(1 − lr·λ) − lr·u per ParamTable entry (decoupled weight decay
//!   in the standard basis; λ = 0 outside nanoGPT's decay group of 2-D tensors).
//! With the identity rotation (`--rotation none`) AdamW and SGD run their fused one-pass kernels, and the
//! split path computes the same expression per element, so both give the same bits. AdamW under a block
//! rotation (global, layer, output, input) runs fused too, in two passes: `rotate_adam_direction` (the
//! moments and direction in the rotation GEMM's epilogue) and, after the decay of each decayed tensor,
//! `unrotate_apply_update` (the update in the unrotation's scatter). On the CPU that is the split path's
//! arithmetic, so the same bits (tested), with one d-sized buffer instead of three and four fewer passes
//! over memory; [`Optimizer::split_path`] keeps the split path (tests, `bench rotation`).
//!
//! - AdamW: per-coordinate moments (Alg. 1).
//! - SGD with momentum (torch semantics, dampening 0): rotation-equivariant.
//! - AdaSGD (Xie et al.): momentum with ONE second moment, the mean of g̃² over all coordinates:
//!   rotation-equivariant as well.
//! - Blockwise Adam (Xie et al. Alg. 3): one second moment per block — per tensor (`--blocks tensor`) or
//!   per row of each tensor (`--blocks neuron`: a row of an (out,in) weight is an output neuron; for the
//!   embeddings, stored (in,out), a row is one token's / position's vector; a 1-D tensor is one block).
//!   Blocks are position ranges of the optimizer's (rotated) layout; under `none` they are the tensors.

pub mod schedule;
pub mod update_cv;

use crate::backend::{AdamStep, Backend, Scalar};
use crate::config::{BlockPartition, OptimizerKind, TrainConfig};
use crate::error::Result;
use crate::model::ParamTable;
use crate::rotation::basis::Basis;
use std::ops::Range;

/// A block partition of the optimizer layout for the one-second-moment-per-block optimizers:
/// (range of coordinates, block size, range of second moments).
#[derive(Clone, Debug)]
struct Blocks {
    parts: Vec<(Range<usize>, usize, Range<usize>)>,
    count: usize,
}

impl Blocks {
    fn new(kind: OptimizerKind, partition: BlockPartition, table: &ParamTable) -> Self {
        let mut parts = Vec::new();
        let mut count = 0;
        let mut push = |r: Range<usize>, block: usize| {
            let nb = r.len() / block;
            parts.push((r, block, count..count + nb));
            count += nb;
        };
        match kind {
            OptimizerKind::Adasgd => push(0..table.total, table.total),
            OptimizerKind::BlockwiseAdam => {
                for e in &table.entries {
                    let block = match partition {
                        BlockPartition::Tensor => e.len(),
                        BlockPartition::Neuron if e.is_matrix() => e.cols,
                        BlockPartition::Neuron => e.len(),
                        BlockPartition::Coordinate => 1,
                    };
                    push(e.range(), block);
                }
            }
            OptimizerKind::Adamw | OptimizerKind::Sgd => {}
        }
        Blocks { parts, count }
    }
}

/// Work buffers of the split path, allocated on first use.
struct Scratch<BK: Backend> {
    /// g̃ = R·g
    rotated_grad: BK::Buf,
    /// ũ, the direction in the optimizer's basis
    rotated_dir: BK::Buf,
    /// u = Rᵀ·ũ
    dir: BK::Buf,
    /// per-block mean squares (AdaSGD, blockwise Adam)
    block_ms: BK::Buf,
}

/// Optimizer state: moment buffers in the rotated layout (for `none`, the standard one).
pub struct Optimizer<BK: Backend> {
    pub kind: OptimizerKind,
    /// Number of steps taken (Adam's t).
    pub step: usize,
    /// AdamW, AdaSGD, blockwise Adam: first moment; SGD: momentum buffer.
    pub m: BK::Buf,
    /// AdamW: per-coordinate second moment; AdaSGD / blockwise Adam: one per block; SGD: empty.
    pub v: BK::Buf,
    pub rotation: Basis<BK>,
    blocks: Blocks,
    scratch: Option<Scratch<BK>>,
    /// Run rotated AdamW through the split path even where the fused one applies.
    split: bool,
}

impl<BK: Backend> Optimizer<BK> {
    pub fn new(
        be: &BK,
        kind: OptimizerKind,
        partition: BlockPartition,
        rotation: Basis<BK>,
        table: &ParamTable,
    ) -> Result<Self> {
        let n = table.total;
        let blocks = Blocks::new(kind, partition, table);
        let v_len = match kind {
            OptimizerKind::Adamw => n,
            OptimizerKind::Sgd => 0,
            OptimizerKind::Adasgd | OptimizerKind::BlockwiseAdam => blocks.count,
        };
        Ok(Optimizer {
            kind,
            step: 0,
            m: be.alloc(n)?,
            v: be.alloc(v_len)?,
            rotation,
            blocks,
            scratch: None,
            split: false,
        })
    }

    /// Runs rotated AdamW through the split path (rotate → direction → unrotate → update) instead of the
    /// fused two-pass one: the reference the fused path is tested and benchmarked against.
    pub fn split_path(mut self) -> Self {
        self.split = true;
        self.scratch = None; // the split path needs more work buffers than the fused one
        self
    }

    /// Whether a step runs rotated AdamW fused (module docs): AdamW under a non-identity block rotation.
    pub fn fused_rotation(&self) -> bool {
        !self.split
            && self.kind == OptimizerKind::Adamw
            && matches!(&self.rotation, Basis::Block(r) if !r.is_identity())
    }

    /// The optimizer without a rotation (`--rotation none`).
    pub fn unrotated(be: &BK, kind: OptimizerKind, table: &ParamTable) -> Result<Self> {
        Self::new(
            be,
            kind,
            BlockPartition::Tensor,
            Basis::identity(be, table)?,
            table,
        )
    }

    /// Named state tensors for checkpoints: (name, buffer).
    pub fn state_tensors(&self) -> Vec<(&'static str, &BK::Buf)> {
        match self.kind {
            OptimizerKind::Sgd => vec![("sgd.momentum", &self.m)],
            _ => vec![("m", &self.m), ("v", &self.v)],
        }
    }

    pub fn state_tensors_mut(&mut self) -> Vec<(&'static str, &mut BK::Buf)> {
        match self.kind {
            OptimizerKind::Sgd => vec![("sgd.momentum", &mut self.m)],
            _ => vec![("m", &mut self.m), ("v", &mut self.v)],
        }
    }

    fn adam_step(&self, lr: f64, cfg: &TrainConfig, weight_decay: f64) -> AdamStep {
        let t = self.step as i32;
        AdamStep {
            lr,
            beta1: cfg.beta1,
            beta2: cfg.beta2,
            eps: cfg.eps,
            weight_decay,
            bias_correction1: 1.0 - cfg.beta1.powi(t),
            bias_correction2: 1.0 - cfg.beta2.powi(t),
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
    ) -> Result<()> {
        self.step += 1;
        let fused = self.rotation.is_identity()
            && matches!(self.kind, OptimizerKind::Adamw | OptimizerKind::Sgd);
        if fused {
            self.fused_step(be, table, params, grads, lr, cfg)?;
            return Ok(());
        }
        let n = table.total;
        // the direction does not use λ: decay is applied in the standard basis below
        let hp = self.adam_step(lr, cfg, 0.0);
        let fused_rotation = self.fused_rotation();
        if self.scratch.is_none() {
            let split_len = if fused_rotation { 0 } else { n };
            self.scratch = Some(Scratch {
                rotated_grad: be.alloc(split_len)?,
                rotated_dir: be.alloc(n)?,
                dir: be.alloc(split_len)?,
                block_ms: be.alloc(self.blocks.count)?,
            });
        }
        if fused_rotation {
            let Basis::Block(rot) = &self.rotation else {
                unreachable!("fused_rotation implies a block rotation")
            };
            let ur = &mut self.scratch.as_mut().expect("scratch").rotated_dir;
            rot.rotate_adam_direction(be, ur, &mut self.m, &mut self.v, grads, hp)?;
            // p·(1 − lr·λ) per decayed tensor, then p −= lr·Rᵀũ: apply_update's arithmetic, in two passes
            let decay = 1.0 - lr * cfg.weight_decay;
            if decay != 1.0 {
                let s = <BK::T as Scalar>::from_f64(decay);
                for e in table.entries.iter().filter(|e| e.decay) {
                    be.scale(be.view_mut(params, e.range()), s)?;
                }
            }
            rot.unrotate_apply_update(be, params, ur, lr)?;
            return Ok(());
        }
        let Scratch {
            rotated_grad: gr,
            rotated_dir: ur,
            dir: u,
            block_ms: ms,
        } = self.scratch.as_mut().expect("scratch");
        let identity = self.rotation.is_identity();
        if !identity {
            self.rotation.prepare(be, self.step, grads)?;
            self.rotation.rotate(be, gr, grads)?;
        }
        let g = if identity { grads } else { &*gr };
        let directed: Result<()> = match self.kind {
            OptimizerKind::Adamw => be.adam_direction_step(
                be.view_mut(ur, 0..n),
                be.view_mut(&mut self.m, 0..n),
                be.view_mut(&mut self.v, 0..n),
                be.view(g, 0..n),
                hp,
            ),
            OptimizerKind::Sgd => be.sgd_direction_step(
                be.view_mut(ur, 0..n),
                be.view_mut(&mut self.m, 0..n),
                be.view(g, 0..n),
                cfg.momentum,
            ),
            OptimizerKind::Adasgd | OptimizerKind::BlockwiseAdam => {
                for (r, block, vr) in &self.blocks.parts {
                    be.block_mean_squares(
                        be.view_mut(ms, vr.clone()),
                        be.view(g, r.clone()),
                        *block,
                    )?;
                    be.ema_inplace(
                        be.view_mut(&mut self.v, vr.clone()),
                        be.view(ms, vr.clone()),
                        cfg.beta2,
                    )?;
                    be.block_adam_direction_step(
                        be.view_mut(ur, r.clone()),
                        be.view_mut(&mut self.m, r.clone()),
                        be.view(&self.v, vr.clone()),
                        be.view(g, r.clone()),
                        *block,
                        hp,
                    )?;
                }
                Ok(())
            }
        };
        directed?;
        let dir: &BK::Buf = if identity {
            ur
        } else {
            self.rotation.unrotate(be, u, ur)?;
            u
        };
        for e in &table.entries {
            let wd = if e.decay { cfg.weight_decay } else { 0.0 };
            be.apply_update(
                be.view_mut(params, e.range()),
                be.view(dir, e.range()),
                lr,
                wd,
            )?;
        }
        Ok(())
    }

    /// The one-pass AdamW / SGD kernels (identity rotation only).
    fn fused_step(
        &mut self,
        be: &BK,
        table: &ParamTable,
        params: &mut BK::Buf,
        grads: &BK::Buf,
        lr: f64,
        cfg: &TrainConfig,
    ) -> Result<()> {
        for e in &table.entries {
            let wd = if e.decay { cfg.weight_decay } else { 0.0 };
            let r = e.range();
            let stepped = match self.kind {
                OptimizerKind::Adamw => {
                    let hp = self.adam_step(lr, cfg, wd);
                    be.adamw_step(
                        be.view_mut(params, r.clone()),
                        be.view_mut(&mut self.m, r.clone()),
                        be.view_mut(&mut self.v, r.clone()),
                        be.view(grads, r),
                        hp,
                    )
                }
                OptimizerKind::Sgd => be.sgd_step(
                    be.view_mut(params, r.clone()),
                    be.view_mut(&mut self.m, r.clone()),
                    be.view(grads, r),
                    lr,
                    cfg.momentum,
                    wd,
                ),
                _ => unreachable!("only AdamW and SGD have fused steps"),
            };
            stepped?;
        }
        Ok(())
    }
}

/// The global L2 norm of the gradient (rotation-invariant, so clipping commutes with every rotation).
pub fn grad_norm<BK: Backend>(be: &BK, grads: &BK::Buf) -> Result<f64> {
    Ok(be.sum_squares(be.view(grads, 0..be.buf_len(grads)))?.sqrt())
}

/// torch's `clip_grad_norm_`: scale by max_norm/(norm + 1e-6) when that is below 1.
pub fn clip_grads<BK: Backend>(
    be: &BK,
    grads: &mut BK::Buf,
    norm: f64,
    max_norm: f64,
) -> Result<()> {
    if max_norm > 0.0 && norm.is_finite() {
        let coef = max_norm / (norm + 1e-6);
        if coef < 1.0 {
            let n = be.buf_len(grads);
            be.scale(be.view_mut(grads, 0..n), num_traits::cast(coef).unwrap())?;
        }
    }
    Ok(())
}
