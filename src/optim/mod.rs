//! Optimizers as chains of transforms ([`Transform`]) over the flat parameter buffer, each usable under
//! every rotation. A step of rotated AdamW (Maes et al. Alg. 2) is the chain
//!
//!   rotate (g̃ = R·g) → scale_by_adam (ũ from g̃ and the moments, which live in the rotated layout)
//!   → unrotate (u = Rᵀ·ũ) → step (θ ← θ·(1 − lr·λ) − lr·u per ParamTable entry: decoupled decay in the
//!   standard basis; λ = 0 outside nanoGPT's decay group of 2-D tensors)
//!
//! and every optimizer here is the same chain with another scaling link: SGD with momentum
//! (rotation-equivariant), AdaSGD (one second moment, the mean of g̃² over all coordinates: equivariant
//! too, Xie et al.) and blockwise Adam (one second moment per tensor or per output neuron, Xie et al. Alg.
//! 3; a block is the set of rotated coordinates placed in it, so a rotation that stays inside the blocks
//! leaves blockwise Adam unchanged: [`blocks`]). Muon (Jordan et al. 2024, [`muon`]) is one more
//! scaling link: Newton–Schulz-orthogonalized momentum on the 2-D hidden weights and Adam's direction on
//! the rest, in a basis that keeps every tensor in place (the standard one or `svd`). Without a rotation
//! the chain has no rotate/unrotate links.
//!
//! **Plans.** A chain runs link by link ([`Plan::Chain`], the reference), or, for the chains a backend
//! has a fused op for, as that op: AdamW and SGD without a rotation in one pass per tensor
//! (`adamw_step`, `sgd_step`), AdamW under a block rotation in two (`rotate_adam_direction`: the moments
//! and direction in the rotation GEMM's epilogue; then the decay per decayed tensor and
//! `unrotate_apply_update`: the update in the unrotation's scatter). The fused ops compute the chain's
//! per-element expressions in the same order, so both give the same bits (tested);
//! [`Optimizer::unfused`] keeps the reference path for the tests and `bench rotation`.
//!
//! The optimizer also answers what the diagnostics ask of it: Adam's current direction in the standard
//! basis ([`Optimizer::direction`], the update-CV of the poster) and the parameters before its last step
//! ([`Optimizer::previous_params`]).

pub mod blocks;
pub mod muon;
pub mod schedule;
pub mod shard;
pub mod transform;
pub mod update_cv;

pub use transform::{Blocks, Transform};

use crate::backend::cpu::optim::{adam_denominator, adam_ratio};
use crate::backend::{decoupled_decay, AdamCoeffs, AdamStep, Backend, Collective, Scalar};
use crate::config::{BlockPartition, OptimizerKind, TrainConfig};
use crate::error::{Error, Result};
use crate::model::ParamTable;
use crate::rotation::basis::Basis;
use crate::rotation::svd::Moment;
use blocks::Parts;

/// How a step runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Plan {
    /// scale_by_adam → step: `adamw_step` per tensor.
    FusedAdamW,
    /// momentum → step: `sgd_step` per tensor.
    FusedSgd,
    /// rotate → scale_by_adam → unrotate → step under a block rotation: `rotate_adam_direction`, the
    /// decay per decayed tensor, `unrotate_apply_update`.
    FusedRotatedAdamW,
    /// Link by link (the reference the fused plans are tested against).
    Chain,
}

/// The state of one link of the chain.
enum State<BK: Backend> {
    Stateless,
    /// Adam's moments, one per coordinate of the optimizer's layout.
    Adam {
        m: BK::Buf,
        v: BK::Buf,
    },
    /// The first moment per coordinate, the second per block, and room for the blocks' mean squares;
    /// all in block order ([`blocks`]).
    BlockAdam {
        parts: Parts,
        /// The move into block order, when it is not the layout itself.
        order: Option<BlockOrder<BK>>,
        m: BK::Buf,
        v: BK::Buf,
        mean_squares: BK::Buf,
    },
    /// SGD's momentum buffer.
    Momentum {
        buf: BK::Buf,
    },
    /// Muon's momentum (its matrices' coordinates, one tensor after another), Adam's moments (the other
    /// tensors', likewise), the tensors with their places in those, and the Newton–Schulz work buffers.
    Muon {
        buf: BK::Buf,
        m: BK::Buf,
        v: BK::Buf,
        parts: Vec<muon::Part>,
        scratch: muon::Scratch<BK>,
    },
}

/// The move of a d-vector between the optimizer's layout and blockwise Adam's block order: a gather
/// (`Backend::rotate`) and a scatter (`Backend::unrotate`) with 1×1 blocks holding exactly 1.
struct BlockOrder<BK: Backend> {
    index: BK::RotIndex,
    one: BK::Buf,
    /// The direction in block order, before it is scattered.
    scratch: BK::Buf,
}

/// An optimizer: a chain of transforms with their state, the basis its rotate/unrotate links use, and the
/// plan its steps run.
pub struct Optimizer<BK: Backend> {
    pub kind: OptimizerKind,
    /// Number of steps taken (Adam's t).
    pub step: usize,
    /// The basis of the rotate and unrotate links (the identity without them).
    pub basis: Basis<BK>,
    chain: Vec<Transform>,
    states: Vec<State<BK>>,
    plan: Plan,
    /// Work vectors of the chain's links, allocated at the first step that needs them.
    work: Vec<BK::Buf>,
    /// The work vector the last chain step fed to its step link (its direction, standard layout).
    last_direction: Option<usize>,
    /// This data-parallel rank's part of a sharded AdamW ([`shard`]): its moments hold that range only.
    shard: Option<shard::Sharded<BK>>,
}

impl<BK: Backend> Optimizer<BK> {
    /// The optimizer `chain` (of an optimizer of `kind`) over the parameters of `table` in `basis`.
    pub fn new(
        be: &BK,
        kind: OptimizerKind,
        chain: Vec<Transform>,
        basis: Basis<BK>,
        table: &ParamTable,
    ) -> Result<Self> {
        Self::build(be, kind, chain, basis, table, None)
    }

    /// [`Optimizer::new`], for rank `rank` of `world` when `shard` is set: an AdamW chain (the ones
    /// [`Optimizer::shardable`] accepts) then keeps its moments for that rank's range only.
    fn build(
        be: &BK,
        kind: OptimizerKind,
        chain: Vec<Transform>,
        basis: Basis<BK>,
        table: &ParamTable,
        shard: Option<(usize, usize)>,
    ) -> Result<Self> {
        let d = table.total;
        let sharded = match shard {
            None => None,
            Some((rank, world)) => {
                let rotation = match &basis {
                    Basis::Block(r) if !r.is_identity() => Some(r),
                    _ => None,
                };
                Some(shard::Sharded::new(be, table, rotation, rank, world)?)
            }
        };
        let state_len = sharded.as_ref().map_or(d, |s| s.mine().len());
        let mut states = Vec::with_capacity(chain.len());
        for link in &chain {
            states.push(match *link {
                Transform::ScaleByAdam { .. } => State::Adam {
                    m: be.alloc(state_len)?,
                    v: be.alloc(state_len)?,
                },
                Transform::ScaleByBlockAdam { blocks, .. } => {
                    let placement = basis.placement(be);
                    let layout =
                        blocks::layout(blocks, basis.neurons(), table, placement.as_deref());
                    drop(placement);
                    let count = layout.count();
                    let order = match layout.order {
                        None => None,
                        Some(order) => {
                            let mut one = be.alloc(1)?;
                            be.upload(&mut one, &[<BK::T as Scalar>::from_f64(1.0)])?;
                            Some(BlockOrder {
                                index: be.rotation_index(order, 1, d)?,
                                one,
                                scratch: be.alloc(d)?,
                            })
                        }
                    };
                    State::BlockAdam {
                        parts: layout.parts,
                        order,
                        m: be.alloc(d)?,
                        v: be.alloc(count)?,
                        mean_squares: be.alloc(count)?,
                    }
                }
                Transform::Momentum { .. } => State::Momentum { buf: be.alloc(d)? },
                Transform::ScaleByMuon { .. } => {
                    let parts = muon::parts(&table.entries);
                    let (n_muon, n_adam) = muon::state_lens(&parts);
                    State::Muon {
                        buf: be.alloc(n_muon.max(1))?,
                        m: be.alloc(n_adam.max(1))?,
                        v: be.alloc(n_adam.max(1))?,
                        scratch: muon::Scratch::new(be, &parts)?,
                        parts,
                    }
                }
                Transform::Rotate | Transform::Unrotate | Transform::Step { .. } => {
                    State::Stateless
                }
            });
        }
        let stateful = states
            .iter()
            .filter(|s| !matches!(s, State::Stateless))
            .count();
        if stateful > 1 || !matches!(chain.last(), Some(Transform::Step { .. })) {
            return Err(Error::config(
                "optimizer",
                format!(
                    "the chain {} is not one of this project's: at most one link with state, ending in a step",
                    Transform::describe(&chain)
                ),
            ));
        }
        // The basis acts only through the rotate/unrotate links (a plan without them never reads it):
        // they come together, and exactly when the basis is not the standard one.
        let has = |t: Transform| chain.contains(&t);
        let (rotate, unrotate) = (has(Transform::Rotate), has(Transform::Unrotate));
        let mismatch = if rotate != unrotate {
            Some("has one of rotate and unrotate without the other".to_string())
        } else if !rotate && !basis.is_identity() {
            Some(format!(
                "has no rotate/unrotate links, so it would ignore its basis ({}): a rotated basis needs \
                 the chain between rotate and unrotate",
                basis.describe()
            ))
        } else if rotate && basis.is_identity() {
            Some(
                "has rotate/unrotate links, but its basis is the standard basis: build it without them"
                    .to_string(),
            )
        } else {
            None
        };
        let muon_link = chain
            .iter()
            .any(|t| matches!(t, Transform::ScaleByMuon { .. }));
        let mismatch = mismatch.or_else(|| {
            // Muon reads each weight as a matrix where it lies: a basis must keep tensors in place
            let in_place = basis.is_identity()
                || matches!(&basis, Basis::Svd(s, _) if s.soap_config().is_none());
            (muon_link && !in_place).then(|| {
                format!(
                    "orthogonalizes each weight as a matrix, which needs a basis that keeps every tensor \
                     in place (--rotation none or svd), not {}",
                    basis.describe()
                )
            })
        });
        let adam_link = chain
            .iter()
            .any(|t| matches!(t, Transform::ScaleByAdam { .. }));
        let mismatch = mismatch.or_else(|| {
            // soap's original and eigenbasis forms keep or carry the Adam link's first moment
            let needs = matches!(&basis, Basis::Svd(s, _) if s.needs_moment());
            (needs && !adam_link).then(|| {
                "has no per-coordinate Adam link, whose first moment soap's original and eigenbasis \
                 forms keep (soap runs under --optimizer adamw)"
                    .to_string()
            })
        });
        if let Some(why) = mismatch {
            return Err(Error::config(
                "optimizer",
                format!("the chain {} {why}", Transform::describe(&chain)),
            ));
        }
        let mut opt = Optimizer {
            kind,
            step: 0,
            basis,
            chain,
            states,
            plan: Plan::Chain,
            work: Vec::new(),
            last_direction: None,
            shard: sharded,
        };
        opt.plan = opt.fused_plan().unwrap_or(Plan::Chain);
        Ok(opt)
    }

    /// Whether `train`'s optimizer in `basis` can be sharded over data-parallel ranks ([`shard`]): AdamW
    /// without a rotation or under a block rotation (`none`, `global`, `layer`, …). The others (svd, soap
    /// and kron bases, SGD, blockwise Adam, AdaSGD, Muon) run whole on every rank.
    pub fn shardable(train: &TrainConfig, basis: &Basis<BK>) -> bool {
        train.optimizer == OptimizerKind::Adamw && matches!(basis, Basis::Block(_))
    }

    /// The optimizer of data-parallel rank `rank` of `world`: sharded when [`Optimizer::shardable`] and
    /// `shard` allow it, whole otherwise (every rank then steps identically on the same gradient).
    pub fn for_rank(
        be: &BK,
        train: &TrainConfig,
        basis: Basis<BK>,
        table: &ParamTable,
        rank: usize,
        world: usize,
        shard: bool,
    ) -> Result<Self> {
        let split = (shard && world > 1 && Self::shardable(train, &basis)).then_some((rank, world));
        let chain = Transform::chain(train.optimizer, train, !basis.is_identity());
        Self::build(be, train.optimizer, chain, basis, table, split)
    }

    /// The length of each rank's part of the gradient when the ranks reduce-scatter it (a sharded AdamW
    /// without a rotation: [`shard::Sharded::gradient_part`]); the gradient buffer then holds W parts.
    pub fn gradient_part(&self) -> Option<usize> {
        self.shard.as_ref().and_then(|s| s.gradient_part())
    }

    /// This rank's range of the optimizer's layout when its state is sharded ([`shard`]), and the
    /// layout's whole length.
    pub fn shard_range(&self) -> Option<std::ops::Range<usize>> {
        self.shard.as_ref().map(|s| s.mine())
    }

    /// The length of the whole layout a sharded optimizer's ranges cut (d).
    pub fn shard_layout_len(&self) -> Option<usize> {
        self.shard.as_ref().map(|s| s.len)
    }

    /// The state tensors of [`Optimizer::state_tensors`] whole, on the host: a sharded optimizer gathers
    /// every rank's range (a collective: every rank calls it; only rank 0 gets the values, the others
    /// empty vectors), a whole one downloads its own.
    pub fn state_host(
        &mut self,
        be: &BK,
        comm: Option<&dyn Collective<BK>>,
    ) -> Result<Vec<(&'static str, Vec<f64>)>> {
        let mut out = Vec::new();
        let Optimizer { states, shard, .. } = self;
        for (name, buf) in Self::named(states) {
            let values = match (shard.as_mut(), comm) {
                (Some(sh), Some(c)) => sh.gather_state(be, buf, c)?,
                (Some(_), None) => {
                    return Err(Error::config(
                        "optimizer",
                        "a sharded optimizer's state is gathered from its ranks: pass their \
                         collective",
                    ))
                }
                (None, _) => be.download(buf)?.into_iter().map(Scalar::to_f64).collect(),
            };
            out.push((name, values));
        }
        Ok(out)
    }

    /// The optimizer of a run: `train.optimizer` with `train`'s hyper-parameters, in `basis`.
    pub fn for_run(
        be: &BK,
        train: &TrainConfig,
        basis: Basis<BK>,
        table: &ParamTable,
    ) -> Result<Self> {
        let chain = Transform::chain(train.optimizer, train, !basis.is_identity());
        Self::new(be, train.optimizer, chain, basis, table)
    }

    /// `train.optimizer` without a rotation (`--rotation none`).
    pub fn unrotated(be: &BK, train: &TrainConfig, table: &ParamTable) -> Result<Self> {
        Self::for_run(be, train, Basis::identity(be, table)?, table)
    }

    /// Runs every step link by link (the reference the fused plans are tested and benchmarked against).
    pub fn unfused(mut self) -> Self {
        self.plan = Plan::Chain;
        self.work.clear();
        self
    }

    /// The fused op that runs this chain, if there is one (module docs).
    fn fused_plan(&self) -> Option<Plan> {
        use Transform::*;
        match self.chain.as_slice() {
            [ScaleByAdam { .. }, Step { .. }] => Some(Plan::FusedAdamW),
            [Momentum { .. }, Step { .. }] => Some(Plan::FusedSgd),
            [Rotate, ScaleByAdam { .. }, Unrotate, Step { .. }] if matches!(&self.basis, Basis::Block(r) if !r.is_identity()) => {
                Some(Plan::FusedRotatedAdamW)
            }
            _ => None,
        }
    }

    /// How the steps run.
    pub fn plan(&self) -> Plan {
        self.plan
    }

    /// The chain in words, with blockwise Adam's blocks and the basis of its rotate/unrotate links.
    pub fn describe(&self) -> String {
        let mut s = Transform::describe(&self.chain);
        for (link, state) in self.chain.iter().zip(&self.states) {
            if let (
                Transform::ScaleByBlockAdam { blocks, .. },
                State::BlockAdam { parts, order, .. },
            ) = (link, state)
            {
                let count = parts.last().map_or(0, |(_, _, v)| v.end);
                s += &format!(", {count} block{}", if count == 1 { "" } else { "s" });
                if *blocks == Blocks::Partition(BlockPartition::Neuron) {
                    s += &format!(" ({})", self.basis.neurons());
                }
                if order.is_some() {
                    s += ", moved into block order";
                }
            }
        }
        if !self.basis.is_identity() {
            s += &format!(", rotation {}", self.basis.describe());
        }
        s
    }

    /// Named state tensors for checkpoints: (name, buffer). The names are those of the checkpoints
    /// written so far: `m`, `v` for the Adam family, `sgd.momentum` for SGD. Blockwise Adam's are in its
    /// block order ([`blocks`]).
    pub fn state_tensors(&self) -> Vec<(&'static str, &BK::Buf)> {
        Self::named(&self.states)
    }

    /// The state tensors of `states` with their checkpoint names ([`Optimizer::state_tensors`]).
    fn named(states: &[State<BK>]) -> Vec<(&'static str, &BK::Buf)> {
        let mut out = Vec::new();
        for s in states {
            match s {
                State::Adam { m, v } | State::BlockAdam { m, v, .. } => {
                    out.extend([("m", m), ("v", v)])
                }
                State::Momentum { buf } => out.push(("sgd.momentum", buf)),
                State::Muon { buf, m, v, .. } => {
                    out.extend([("muon.momentum", buf), ("m", m), ("v", v)])
                }
                State::Stateless => {}
            }
        }
        out
    }

    /// [`Optimizer::state_tensors`], writable (a checkpoint being loaded).
    pub fn state_tensors_mut(&mut self) -> Vec<(&'static str, &mut BK::Buf)> {
        let mut out = Vec::new();
        for s in &mut self.states {
            match s {
                State::Adam { m, v } | State::BlockAdam { m, v, .. } => {
                    out.push(("m", m));
                    out.push(("v", v));
                }
                State::Momentum { buf } => out.push(("sgd.momentum", buf)),
                State::Muon { buf, m, v, .. } => {
                    out.push(("muon.momentum", buf));
                    out.push(("m", m));
                    out.push(("v", v));
                }
                State::Stateless => {}
            }
        }
        out
    }

    /// The hyper-parameters of the chain's Adam link, if it has one.
    fn adam_link(&self) -> Option<(f64, f64, f64)> {
        self.chain.iter().find_map(|l| match *l {
            Transform::ScaleByAdam { beta1, beta2, eps } => Some((beta1, beta2, eps)),
            _ => None,
        })
    }

    /// λ of the terminal step link.
    fn weight_decay(&self) -> f64 {
        match self.chain.last() {
            Some(Transform::Step { weight_decay }) => *weight_decay,
            _ => unreachable!("a chain ends in a step (checked by new)"),
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
    ) -> Result<()> {
        self.step_ranked(be, table, params, grads, lr, None)
    }

    /// [`Optimizer::step`] of one data-parallel rank: a sharded optimizer updates its range and exchanges
    /// the updated parameters through `comm` ([`shard`]); a whole one steps as on one device.
    pub fn step_ranked(
        &mut self,
        be: &BK,
        table: &ParamTable,
        params: &mut BK::Buf,
        grads: &BK::Buf,
        lr: f64,
        comm: Option<&dyn Collective<BK>>,
    ) -> Result<()> {
        if self.shard.is_some() {
            let Some(comm) = comm else {
                return Err(Error::config(
                    "optimizer",
                    "a sharded optimizer steps with its ranks: pass their collective",
                ));
            };
            self.step += 1;
            let (beta1, beta2, eps) = self.adam_link().expect("a sharded chain has an Adam link");
            let weight_decay = self.weight_decay();
            let hp = AdamStep::new(self.step, lr, beta1, beta2, eps, 0.0);
            let Optimizer { states, shard, .. } = self;
            let (Some(sh), Some((m, v))) = (
                shard.as_mut(),
                states.iter_mut().find_map(|s| match s {
                    State::Adam { m, v } => Some((m, v)),
                    _ => None,
                }),
            ) else {
                unreachable!("a sharded chain has an Adam link")
            };
            return sh.step(be, table, params, grads, m, v, hp, weight_decay, comm);
        }
        self.step += 1;
        match self.plan {
            Plan::FusedAdamW | Plan::FusedSgd => self.fused_step(be, table, params, grads, lr),
            Plan::FusedRotatedAdamW => self.fused_rotated_adamw(be, table, params, grads, lr),
            Plan::Chain => self.run_chain(be, table, params, grads, lr),
        }
    }

    /// The one-pass AdamW / SGD ops per tensor.
    fn fused_step(
        &mut self,
        be: &BK,
        table: &ParamTable,
        params: &mut BK::Buf,
        grads: &BK::Buf,
        lr: f64,
    ) -> Result<()> {
        let (t, weight_decay, adam) = (self.step, self.weight_decay(), self.adam_link());
        let momentum = self.chain.iter().find_map(|l| match *l {
            Transform::Momentum { momentum } => Some(momentum),
            _ => None,
        });
        match (&mut self.states[0], adam, momentum) {
            (State::Adam { m, v }, Some((beta1, beta2, eps)), _) => {
                let hp = AdamStep::new(t, lr, beta1, beta2, eps, 0.0);
                adamw_span(
                    be,
                    table,
                    0..table.total,
                    params,
                    m,
                    v,
                    grads,
                    hp,
                    weight_decay,
                )
            }
            (State::Momentum { buf }, _, Some(mu)) => {
                for e in &table.entries {
                    let r = e.range();
                    be.sgd_step(
                        be.view_mut(params, r.clone()),
                        be.view_mut(buf, r.clone()),
                        be.view(grads, r),
                        lr,
                        mu,
                        decay_of(weight_decay, e.decay),
                    )?;
                }
                Ok(())
            }
            _ => unreachable!("the fused plans are chosen from the chain's links"),
        }
    }

    /// Rotated AdamW in two fused passes (module docs).
    fn fused_rotated_adamw(
        &mut self,
        be: &BK,
        table: &ParamTable,
        params: &mut BK::Buf,
        grads: &BK::Buf,
        lr: f64,
    ) -> Result<()> {
        let (beta1, beta2, eps) = self.adam_link().expect("the fused plan has an Adam link");
        let hp = AdamStep::new(self.step, lr, beta1, beta2, eps, 0.0);
        let weight_decay = self.weight_decay();
        if self.work.is_empty() {
            self.work.push(be.alloc(table.total)?);
        }
        let (Basis::Block(rot), State::Adam { m, v }) = (&self.basis, &mut self.states[1]) else {
            unreachable!("the fused rotated plan is chosen for a block rotation and an Adam link")
        };
        rotated_adamw(
            be,
            rot,
            table,
            params,
            grads,
            &mut self.work[0],
            m,
            v,
            hp,
            weight_decay,
        )
    }

    /// The chain, link by link: each link reads the previous one's vector (the gradient first) and writes
    /// the next into a work vector (two suffice: they alternate); the step link updates the parameters.
    fn run_chain(
        &mut self,
        be: &BK,
        table: &ParamTable,
        params: &mut BK::Buf,
        grads: &BK::Buf,
        lr: f64,
    ) -> Result<()> {
        let (t, d) = (self.step, table.total);
        let vectors = (self.chain.len() - 1).min(2);
        while self.work.len() < vectors {
            self.work.push(be.alloc(d)?);
        }
        let Optimizer {
            chain,
            states,
            basis,
            work,
            last_direction,
            ..
        } = self;
        if chain.contains(&Transform::Rotate) {
            // the basis sees every step's gradient first (svd and soap refresh from it; soap's first
            // moment forms work on the Adam link's m)
            let moment = chain
                .iter()
                .zip(states.iter_mut())
                .find_map(|(link, state)| match (link, state) {
                    (Transform::ScaleByAdam { beta1, .. }, State::Adam { m, .. }) => {
                        Some(Moment { m, beta1: *beta1 })
                    }
                    _ => None,
                });
            basis.prepare(be, t, grads, moment)?;
        }
        // None: the gradient; Some(i): work vector i
        let mut cur: Option<usize> = None;
        for (link, state) in chain.iter().zip(states.iter_mut()) {
            if let Transform::Step { weight_decay } = *link {
                *last_direction = cur;
                let u = cur.map_or(grads, |i| &work[i]);
                for e in &table.entries {
                    let wd = decay_of(weight_decay, e.decay);
                    be.apply_update(
                        be.view_mut(params, e.range()),
                        be.view(u, e.range()),
                        lr,
                        wd,
                    )?;
                }
                return Ok(());
            }
            let next = cur.map_or(0, |i| 1 - i);
            let (input, output): (&BK::Buf, &mut BK::Buf) = match cur {
                None => (grads, &mut work[0]),
                Some(i) => {
                    let (a, b) = work.split_at_mut(1);
                    if i == 0 {
                        (&a[0], &mut b[0])
                    } else {
                        (&b[0], &mut a[0])
                    }
                }
            };
            match (*link, state) {
                (Transform::Rotate, _) => basis.rotate(be, output, input)?,
                (Transform::Unrotate, _) => basis.unrotate(be, output, input)?,
                (Transform::ScaleByAdam { beta1, beta2, eps }, State::Adam { m, v }) => be
                    .adam_direction_step(
                        be.view_mut(output, 0..d),
                        be.view_mut(m, 0..d),
                        be.view_mut(v, 0..d),
                        be.view(input, 0..d),
                        AdamStep::new(t, lr, beta1, beta2, eps, 0.0),
                    )?,
                (Transform::Momentum { momentum }, State::Momentum { buf }) => be
                    .sgd_direction_step(
                        be.view_mut(output, 0..d),
                        be.view_mut(buf, 0..d),
                        be.view(input, 0..d),
                        momentum,
                    )?,
                (
                    Transform::ScaleByBlockAdam {
                        beta1, beta2, eps, ..
                    },
                    State::BlockAdam {
                        parts,
                        order,
                        m,
                        v,
                        mean_squares,
                    },
                ) => {
                    let hp = AdamStep::new(t, lr, beta1, beta2, eps, 0.0);
                    let mut block_step = |u: &mut BK::Buf, g: &BK::Buf| -> Result<()> {
                        for (r, block, vr) in parts.iter() {
                            be.block_mean_squares(
                                be.view_mut(mean_squares, vr.clone()),
                                be.view(g, r.clone()),
                                *block,
                            )?;
                            be.ema_inplace(
                                be.view_mut(v, vr.clone()),
                                be.view(mean_squares, vr.clone()),
                                beta2,
                            )?;
                            be.block_adam_direction_step(
                                be.view_mut(u, r.clone()),
                                be.view_mut(m, r.clone()),
                                be.view(v, vr.clone()),
                                be.view(g, r.clone()),
                                *block,
                                hp,
                            )?;
                        }
                        Ok(())
                    };
                    match order {
                        None => block_step(output, input)?,
                        Some(o) => {
                            // the input in block order, in `output` (free until the scatter)
                            let one = be.view(&o.one, 0..1);
                            be.rotate(
                                be.view_mut(output, 0..d),
                                be.view(input, 0..d),
                                &o.index,
                                one,
                                d,
                                1,
                            )?;
                            block_step(&mut o.scratch, output)?;
                            be.unrotate(
                                be.view_mut(output, 0..d),
                                be.view(&o.scratch, 0..d),
                                &o.index,
                                one,
                                d,
                                1,
                            )?;
                        }
                    }
                }
                (
                    Transform::ScaleByMuon {
                        momentum,
                        nesterov,
                        ns_steps,
                        lr_ratio,
                        beta1,
                        beta2,
                        eps,
                    },
                    State::Muon {
                        buf,
                        m,
                        v,
                        parts,
                        scratch,
                    },
                ) => {
                    let hp = AdamStep::new(t, lr, beta1, beta2, eps, 0.0);
                    for p in parts.iter() {
                        let (r, st) = (p.range.clone(), p.state.clone());
                        if !p.muon {
                            be.adam_direction_step(
                                be.view_mut(output, r.clone()),
                                be.view_mut(m, st.clone()),
                                be.view_mut(v, st),
                                be.view(input, r),
                                hp,
                            )?;
                            continue;
                        }
                        be.sgd_direction_step(
                            be.view_mut(output, r.clone()),
                            be.view_mut(buf, st),
                            be.view(input, r.clone()),
                            momentum,
                        )?;
                        if nesterov {
                            // g + μ·buf: buf scaled in place, then the update op adds g (p − (−1)·g)
                            be.scale(
                                be.view_mut(output, r.clone()),
                                <BK::T as Scalar>::from_f64(momentum),
                            )?;
                            be.apply_update(
                                be.view_mut(output, r.clone()),
                                be.view(input, r.clone()),
                                -1.0,
                                0.0,
                            )?;
                        }
                        let shape = (p.rows as f64 / p.cols as f64).max(1.0).sqrt();
                        muon::orthogonalize(
                            be,
                            output,
                            r,
                            p.rows,
                            p.cols,
                            ns_steps,
                            lr_ratio * shape,
                            scratch,
                        )?;
                    }
                }
                _ => unreachable!("each link's state is made with it (new)"),
            }
            cur = Some(next);
        }
        unreachable!("a chain ends in a step (checked by new)")
    }

    /// Adam's current direction Rᵀ(m̂/(√v̂ + ε)) in the standard layout, from the moments of the last step
    /// (bias corrections of step t = `self.step`, at least 1), in f64 with the CPU's per-element formula:
    /// what the poster's update-CV takes the singular values of. Only a chain with a per-coordinate Adam
    /// link has one; for Muon it is the direction its last step applied (before the learning rate).
    pub fn direction(&mut self, be: &BK) -> Result<Vec<f64>> {
        if let Some(range) = self.shard_range() {
            return Err(Error::config(
                "update-cv",
                format!(
                    "this data-parallel rank keeps the optimizer state of {range:?} only (sharded); \
                     --log-update-cv keeps it whole on every rank"
                ),
            ));
        }
        if self.kind == OptimizerKind::Muon {
            // Muon's direction (momentum, Newton–Schulz) needs the step's gradient: the one its last
            // step applied, kept in the work vector it fed to the step link
            return match self.last_direction {
                Some(i) => Ok(be
                    .download(&self.work[i])?
                    .into_iter()
                    .map(Scalar::to_f64)
                    .collect()),
                None => Err(Error::config(
                    "update-cv",
                    "Muon's direction is the one of its last step, and this optimizer has taken none \
                     (a checkpoint does not keep it)",
                )),
            };
        }
        let (Some((beta1, beta2, eps)), Some((m, v))) = (
            self.adam_link(),
            self.states.iter().find_map(|s| match s {
                State::Adam { m, v } => Some((m, v)),
                _ => None,
            }),
        ) else {
            return Err(Error::config(
                "update-cv",
                format!(
                    "needs AdamW's per-coordinate second moment; the optimizer is {}",
                    self.kind.name()
                ),
            ));
        };
        let k = AdamCoeffs::<f64>::new(&AdamStep::new(
            self.step.max(1),
            0.0,
            beta1,
            beta2,
            eps,
            0.0,
        ));
        let to64 = |b: &BK::Buf| -> Result<Vec<f64>> {
            Ok(be.download(b)?.into_iter().map(Scalar::to_f64).collect())
        };
        let (m, v) = (to64(m)?, to64(v)?);
        let dir: Vec<f64> = m
            .iter()
            .zip(&v)
            .map(|(&m, &v)| adam_ratio(m, adam_denominator(v, &k), &k))
            .collect();
        // through the basis even without a rotation (the identity's copy makes −0.0 +0.0), as always
        let host: Vec<BK::T> = dir
            .iter()
            .map(|&x| <BK::T as Scalar>::from_f64(x))
            .collect();
        let mut rotated = be.alloc(host.len())?;
        be.upload(&mut rotated, &host)?;
        let mut out = be.alloc(host.len())?;
        self.basis.unrotate(be, &mut out, &rotated)?;
        to64(&out)
    }

    /// The parameters before the last step, from the parameters `w` after it, that step's update `u` in
    /// the standard layout and its learning rate: the inverse of the step link,
    /// w_{t−1} = (w_t + lr·u) / (1 − lr·λ) per tensor.
    pub fn previous_params(&self, table: &ParamTable, w: &[f64], u: &[f64], lr: f64) -> Vec<f64> {
        let weight_decay = self.weight_decay();
        let mut prev = vec![0.0; w.len()];
        for e in &table.entries {
            let decay = decoupled_decay(lr, decay_of(weight_decay, e.decay));
            for i in e.range() {
                prev[i] = (w[i] + lr * u[i]) / decay;
            }
        }
        prev
    }
}

/// λ for a tensor of the decay group (`decayed`), 0 for the others.
fn decay_of(weight_decay: f64, decayed: bool) -> f64 {
    if decayed {
        weight_decay
    } else {
        0.0
    }
}

/// AdamW in one pass per tensor (`adamw_step`) over the parameters in `span` of the standard layout, whose
/// moments `m` and `v` hold `span` from their index 0; λ = `weight_decay` on the decay group
/// (`hp.weight_decay` is not read). The fused AdamW plan runs it over every parameter, a sharded rank
/// over its range (`shard`).
#[allow(clippy::too_many_arguments)]
pub(crate) fn adamw_span<BK: Backend>(
    be: &BK,
    table: &ParamTable,
    span: std::ops::Range<usize>,
    params: &mut BK::Buf,
    m: &mut BK::Buf,
    v: &mut BK::Buf,
    grads: &BK::Buf,
    hp: AdamStep,
    weight_decay: f64,
) -> Result<()> {
    let a = span.start;
    for e in &table.entries {
        let r = e.range();
        let (lo, hi) = (r.start.max(span.start), r.end.min(span.end));
        if lo >= hi {
            continue;
        }
        be.adamw_step(
            be.view_mut(params, lo..hi),
            be.view_mut(m, lo - a..hi - a),
            be.view_mut(v, lo - a..hi - a),
            be.view(grads, lo..hi),
            AdamStep {
                weight_decay: decay_of(weight_decay, e.decay),
                ..hp
            },
        )?;
    }
    Ok(())
}

/// Rotated AdamW in two fused passes under the block rotation `rot` (a whole rotation, or a sharded rank's
/// blocks: `Rotation::restrict`): the moments and the direction `u` in `rot`'s layout
/// (`rotate_adam_direction`, with `hp`'s λ unused), p·(1 − lr·λ) per decayed tensor, then p −= lr·Rᵀu at
/// `rot`'s indices (`unrotate_apply_update`): the step link's arithmetic.
#[allow(clippy::too_many_arguments)]
pub(crate) fn rotated_adamw<BK: Backend>(
    be: &BK,
    rot: &crate::rotation::Rotation<BK>,
    table: &ParamTable,
    params: &mut BK::Buf,
    grads: &BK::Buf,
    u: &mut BK::Buf,
    m: &mut BK::Buf,
    v: &mut BK::Buf,
    hp: AdamStep,
    weight_decay: f64,
) -> Result<()> {
    // the direction does not use λ: the decay is applied in the standard basis
    let direction = AdamStep {
        weight_decay: 0.0,
        ..hp
    };
    rot.rotate_adam_direction(be, u, m, v, grads, direction)?;
    let decay = decoupled_decay(hp.lr, weight_decay);
    if decay != 1.0 {
        let s = <BK::T as Scalar>::from_f64(decay);
        for e in table.entries.iter().filter(|e| e.decay) {
            be.scale(be.view_mut(params, e.range()), s)?;
        }
    }
    rot.unrotate_apply_update(be, params, u, hp.lr)
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
            be.scale(be.view_mut(grads, 0..n), <BK::T as Scalar>::from_f64(coef))?;
        }
    }
    Ok(())
}
