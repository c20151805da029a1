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
//!
//! Every position of the optimizer's layout is *placed* at one standard index ([`Basis::placement`]): a
//! block rotation's rotated coordinate at the index it was gathered from (`Rotation::layout_index`, which
//! keeps it inside its group), the other bases' position p at index p (svd keeps each tensor at its own
//! range). Blockwise Adam reads its blocks through this placement (`optim`), and every basis carries the
//! run's [`Neurons`] for its neuron blocks.

use super::{KronRotation, Neurons, Rotation, Scope, SvdRotation};
use crate::backend::Backend;
use crate::config::{RotationConfig, RotationKind};
use crate::error::Result;
use crate::model::ParamTable;
use crate::tensors::TensorMap;
use std::path::Path;

/// `Svd` and `Kron` do not depend on the run's [`Neurons`] and carry them beside the rotation, for
/// blockwise Adam's neuron blocks; a block rotation's groups are built from them, so it keeps its own.
pub enum Basis<BK: Backend> {
    Block(Rotation<BK>),
    Svd(SvdRotation<BK>, Neurons),
    Kron(KronRotation<BK>, Neurons),
}

impl<BK: Backend> Basis<BK> {
    pub fn new(be: &BK, cfg: &RotationConfig, table: &ParamTable) -> Result<Self> {
        let neurons = Neurons::of(cfg);
        Ok(match cfg.kind {
            RotationKind::Svd => Basis::Svd(
                SvdRotation::with_basis(be, table, cfg.svd_every, cfg.svd_basis)?,
                neurons,
            ),
            RotationKind::Soap => Basis::Svd(SvdRotation::soap(be, table, &cfg.soap)?, neurons),
            RotationKind::Kron => Basis::Kron(
                KronRotation::new(be, table.total, cfg.kron_stages, cfg.seed)?,
                neurons,
            ),
            RotationKind::Scope(scope) => Basis::Block(Rotation::with_neurons(
                be, scope, cfg.block, cfg.seed, neurons, table,
            )?),
        })
    }

    /// The standard basis (`--rotation none`), with the default [`Neurons`].
    pub fn identity(be: &BK, table: &ParamTable) -> Result<Self> {
        Ok(Basis::Block(Rotation::new(be, Scope::None, 1, 0, table)?))
    }

    pub fn is_identity(&self) -> bool {
        matches!(self, Basis::Block(r) if r.is_identity())
    }

    /// The run's neurons (`--vector-rotation`, `--embedding-rotation`): the groups of `output` and
    /// `input`, and blockwise Adam's neuron blocks in this basis.
    pub fn neurons(&self) -> Neurons {
        match self {
            Basis::Block(r) => r.neurons(),
            Basis::Svd(_, n) | Basis::Kron(_, n) => *n,
        }
    }

    /// The standard index each position of the optimizer's layout is placed at (module docs); None when
    /// position p is placed at index p (the identity, svd, kron).
    pub fn placement(&self, be: &BK) -> Option<Vec<u32>> {
        match self {
            Basis::Block(r) => r.placement(be),
            Basis::Svd(_, _) | Basis::Kron(_, _) => None,
        }
    }

    /// Whether the basis was refreshed from the gradient of (1-based) step `step`: svd at steps 1, F+1,
    /// 2F+1, …, the first from the gradient at the initial weights; never for the fixed bases.
    pub fn refreshed_at(&self, step: usize) -> bool {
        matches!(self, Basis::Svd(s, _) if s.last_refresh() == Some(step))
    }

    /// Called before every optimizer step (1-based `step`) with its gradient and, for soap's `original`
    /// and `eigenbasis` forms, the first moment of the Adam link ([`SvdRotation::prepare_with`]).
    pub fn prepare(
        &mut self,
        be: &BK,
        step: usize,
        grads: &BK::Buf,
        moment: Option<super::svd::Moment<'_, BK>>,
    ) -> Result<()> {
        match self {
            Basis::Svd(s, _) => s.prepare_with(be, step, grads, moment),
            Basis::Block(_) | Basis::Kron(_, _) => Ok(()),
        }
    }

    pub fn rotate(&mut self, be: &BK, out: &mut BK::Buf, g: &BK::Buf) -> Result<()> {
        match self {
            Basis::Block(r) => r.rotate(be, out, g),
            Basis::Svd(s, _) => s.rotate(be, out, g),
            Basis::Kron(k, _) => k.rotate(be, out, g),
        }
    }

    pub fn unrotate(&mut self, be: &BK, out: &mut BK::Buf, u: &BK::Buf) -> Result<()> {
        match self {
            Basis::Block(r) => r.unrotate(be, out, u),
            Basis::Svd(s, _) => s.unrotate(be, out, u),
            Basis::Kron(k, _) => k.unrotate(be, out, u),
        }
    }

    pub fn describe(&self) -> String {
        match self {
            Basis::Block(r) => r.describe(),
            Basis::Svd(s, _) => s.describe(),
            Basis::Kron(k, _) => k.describe(),
        }
    }

    /// State a checkpoint must carry beyond the config (svd: U, V and the last refresh).
    pub fn state(&self, be: &BK) -> Result<Vec<super::svd::StateTensor>> {
        match self {
            Basis::Svd(s, _) => s.state(be),
            Basis::Block(_) | Basis::Kron(_, _) => Ok(Vec::new()),
        }
    }

    pub fn load_state(&mut self, be: &BK, path: &Path, tensors: &TensorMap) -> Result<()> {
        match self {
            Basis::Svd(s, _) => s.load_state(be, path, tensors),
            Basis::Block(_) | Basis::Kron(_, _) => Ok(()),
        }
    }

    /// Whether `state` is non-empty for this kind (a checkpoint then has `rotation.safetensors`).
    pub fn has_state(&self) -> bool {
        matches!(self, Basis::Svd(_, _))
    }
}
