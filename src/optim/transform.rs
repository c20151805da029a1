//! The links an optimizer is made of: optax's gradient transformations (Babuschkin et al., 2020, "The
//! DeepMind JAX Ecosystem"), in Rust. Each link maps the update vector to the next one and may keep state;
//! an optimizer is a chain of them, e.g. rotated AdamW (Maes et al. Alg. 2):
//!
//!   rotate → scale_by_adam(β₁, β₂, ε) → unrotate → step(lr, λ on the decay group)
//!
//! The per-element formulas are the backend's (`backend::cpu::optim` and `kernels/adamw.cu`, one function
//! each); a link only says which op runs on which vectors. `optim::Optimizer` runs a chain link by link
//! (the reference), or maps a chain it knows onto a fused backend op.

use crate::config::{BlockPartition, OptimizerKind, TrainConfig};
use std::fmt;

/// Which coordinates share one second moment in [`Transform::ScaleByBlockAdam`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Blocks {
    /// One block over every coordinate: AdaSGD (Xie et al.).
    Whole,
    /// Blocks of a partition of the parameters: blockwise Adam (Xie et al. Alg. 3).
    Partition(BlockPartition),
}

/// One link of an optimizer's chain.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Transform {
    /// g̃ = R·g: into the optimizer's basis (the run's rotation).
    Rotate,
    /// Adam's moments and direction u = m̂/(√v̂ + ε), per coordinate (Kingma & Ba; Maes et al. Alg. 1).
    ScaleByAdam { beta1: f64, beta2: f64, eps: f64 },
    /// Adam with one second moment per block: v_b = EMA of the mean of g² over the block.
    ScaleByBlockAdam {
        beta1: f64,
        beta2: f64,
        eps: f64,
        blocks: Blocks,
    },
    /// Heavy-ball momentum, torch's SGD: buf = μ·buf + g, u = buf.
    Momentum { momentum: f64 },
    /// Muon (Jordan et al. 2024) on the 2-D hidden weights, Adam's direction elsewhere ([`super::muon`]):
    /// u = (muon_lr/lr)·√max(1, m/n)·NS(g + μ·buf) per hidden weight (buf = μ·buf + g; `buf` alone without
    /// Nesterov), u = m̂/(√v̂ + ε) on the embeddings and 1-D tensors.
    ScaleByMuon {
        momentum: f64,
        nesterov: bool,
        ns_steps: usize,
        /// muon.lr / lr: the step link's learning rate times this is Muon's.
        lr_ratio: f64,
        beta1: f64,
        beta2: f64,
        eps: f64,
    },
    /// u = Rᵀ·ũ: back to the standard basis.
    Unrotate,
    /// The step: p ← p·(1 − lr·λ) − lr·u, with λ on the decay group (nanoGPT's: the 2-D weights) and 0
    /// elsewhere; decoupled weight decay (Loshchilov & Hutter) in torch's order of roundings. Terminal.
    Step { weight_decay: f64 },
}

impl Transform {
    /// The chain of `kind` with `train`'s hyper-parameters; `rotated` puts it between Rotate and Unrotate.
    pub fn chain(kind: OptimizerKind, train: &TrainConfig, rotated: bool) -> Vec<Transform> {
        let (beta1, beta2, eps) = (train.beta1, train.beta2, train.eps);
        let scale = match kind {
            OptimizerKind::Adamw => Transform::ScaleByAdam { beta1, beta2, eps },
            OptimizerKind::Sgd => Transform::Momentum {
                momentum: train.momentum,
            },
            OptimizerKind::Adasgd => Transform::ScaleByBlockAdam {
                beta1,
                beta2,
                eps,
                blocks: Blocks::Whole,
            },
            OptimizerKind::BlockwiseAdam => Transform::ScaleByBlockAdam {
                beta1,
                beta2,
                eps,
                blocks: Blocks::Partition(train.blocks),
            },
            OptimizerKind::Muon => Transform::ScaleByMuon {
                momentum: train.muon.momentum,
                nesterov: train.muon.nesterov,
                ns_steps: train.muon.ns_steps,
                lr_ratio: if train.lr > 0.0 {
                    train.muon.lr / train.lr
                } else {
                    0.0
                },
                beta1,
                beta2,
                eps,
            },
        };
        let step = Transform::Step {
            weight_decay: train.weight_decay,
        };
        if rotated {
            vec![Transform::Rotate, scale, Transform::Unrotate, step]
        } else {
            vec![scale, step]
        }
    }

    /// The chain as one line, e.g. `rotate → scale_by_adam(β₁=0.9, β₂=0.95, ε=1e-8) → unrotate → …`.
    pub fn describe(chain: &[Transform]) -> String {
        chain
            .iter()
            .map(|t| t.to_string())
            .collect::<Vec<_>>()
            .join(" → ")
    }
}

impl fmt::Display for Transform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Transform::Rotate => f.write_str("rotate"),
            Transform::ScaleByAdam { beta1, beta2, eps } => {
                write!(f, "scale_by_adam(β₁={beta1}, β₂={beta2}, ε={eps:e})")
            }
            Transform::ScaleByBlockAdam {
                beta1,
                beta2,
                eps,
                blocks,
            } => {
                let b = match blocks {
                    Blocks::Whole => "one block".to_string(),
                    Blocks::Partition(p) => format!("blocks per {p}"),
                };
                write!(
                    f,
                    "scale_by_block_adam(β₁={beta1}, β₂={beta2}, ε={eps:e}, {b})"
                )
            }
            Transform::Momentum { momentum } => write!(f, "momentum(μ={momentum})"),
            Transform::ScaleByMuon {
                momentum,
                nesterov,
                ns_steps,
                lr_ratio,
                beta1,
                beta2,
                eps,
            } => {
                let kind = if *nesterov { "nesterov" } else { "heavy-ball" };
                write!(
                    f,
                    "scale_by_muon({kind} μ={momentum}, {ns_steps} Newton–Schulz steps, lr ×{lr_ratio} on \
                     2-D hidden weights; adam(β₁={beta1}, β₂={beta2}, ε={eps:e}) elsewhere)"
                )
            }
            Transform::Unrotate => f.write_str("unrotate"),
            Transform::Step { weight_decay } => {
                write!(
                    f,
                    "step(−lr, decoupled decay λ={weight_decay} on 2-D weights)"
                )
            }
        }
    }
}
