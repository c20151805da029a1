//! The optimizer's basis: one type over every kind of rotation, so optimizers need not know which.
//!
//! - `Block`: the paper's permutation + repeated Haar block rotations for the scopes `none`, `global`,
//!   `layer`, `output`, `input` ([`Rotation`]);
//! - `Svd`: the poster's rotation by the singular vectors of each weight's gradient, refreshed every
//!   `svd_every` steps ([`SvdRotation`]);
//! - `Kron`: Xie et al.'s chained permutation + three-factor Kronecker rotation of the whole vector
//!   ([`KronRotation`]).
//!
//! All are orthogonal maps of the d parameters: `rotate` = R·g into the optimizer's layout, `unrotate` =
//! Rᵀ·u back to the standard layout. Only `svd` changes over time (`prepare` sees every step's gradient)
//! and so has checkpoint state beyond its config.

use super::{KronRotation, Rotation, Scope, SvdRotation};
use crate::backend::Backend;
use crate::config::{RotationConfig, RotationKind};
use crate::error::Result;
use crate::model::ParamTable;
use crate::tensors::TensorMap;
use std::path::Path;

pub enum Basis<BK: Backend> {
    Block(Rotation<BK>),
    Svd(SvdRotation<BK>),
    Kron(KronRotation<BK>),
}

impl<BK: Backend> Basis<BK> {
    pub fn new(be: &BK, cfg: &RotationConfig, table: &ParamTable) -> Result<Self> {
        Ok(match cfg.kind {
            RotationKind::Svd => Basis::Svd(SvdRotation::new(be, table, cfg.svd_every)?),
            RotationKind::Kron => Basis::Kron(KronRotation::new(
                be,
                table.total,
                cfg.kron_stages,
                cfg.seed,
            )?),
            RotationKind::Scope(scope) => {
                Basis::Block(Rotation::new(be, scope, cfg.block, cfg.seed, table)?)
            }
        })
    }

    /// The standard basis (`--rotation none`).
    pub fn identity(be: &BK, table: &ParamTable) -> Result<Self> {
        Ok(Basis::Block(Rotation::new(be, Scope::None, 1, 0, table)?))
    }

    pub fn is_identity(&self) -> bool {
        matches!(self, Basis::Block(r) if r.is_identity())
    }

    /// Called before every optimizer step (1-based `step`) with its gradient.
    pub fn prepare(&mut self, be: &BK, step: usize, grads: &BK::Buf) -> Result<()> {
        match self {
            Basis::Svd(s) => s.prepare(be, step, grads),
            Basis::Block(_) | Basis::Kron(_) => Ok(()),
        }
    }

    pub fn rotate(&mut self, be: &BK, out: &mut BK::Buf, g: &BK::Buf) -> Result<()> {
        match self {
            Basis::Block(r) => r.rotate(be, out, g),
            Basis::Svd(s) => s.rotate(be, out, g),
            Basis::Kron(k) => k.rotate(be, out, g),
        }
    }

    pub fn unrotate(&mut self, be: &BK, out: &mut BK::Buf, u: &BK::Buf) -> Result<()> {
        match self {
            Basis::Block(r) => r.unrotate(be, out, u),
            Basis::Svd(s) => s.unrotate(be, out, u),
            Basis::Kron(k) => k.unrotate(be, out, u),
        }
    }

    pub fn describe(&self) -> String {
        match self {
            Basis::Block(r) => r.describe(),
            Basis::Svd(s) => s.describe(),
            Basis::Kron(k) => k.describe(),
        }
    }

    /// State a checkpoint must carry beyond the config (svd: U, V and the last refresh).
    pub fn state(&self, be: &BK) -> Result<Vec<super::svd::StateTensor>> {
        match self {
            Basis::Svd(s) => s.state(be),
            Basis::Block(_) | Basis::Kron(_) => Ok(Vec::new()),
        }
    }

    pub fn load_state(&mut self, be: &BK, path: &Path, tensors: &TensorMap) -> Result<()> {
        match self {
            Basis::Svd(s) => s.load_state(be, path, tensors),
            Basis::Block(_) | Basis::Kron(_) => Ok(()),
        }
    }

    /// Whether `state` is non-empty for this kind (a checkpoint then has `rotation.safetensors`).
    pub fn has_state(&self) -> bool {
        matches!(self, Basis::Svd(_))
    }
}
