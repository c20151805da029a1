//! AdamW's state sharded over data-parallel ranks by rotation blocks (ZeRO stage 1, Rajbhandari et al.
//! 2020, §5.1, with the rotation's blocks as the unit).
//!
//! The moments live in the rotated layout, whose blocks are independent (Maes et al. App. C: one block's
//! rotated coordinates depend only on the gradient entries it gathers). So rank r of W owns a contiguous
//! range of the layout, cut at block starts ([`ranges`]): it keeps only that range's m and v, runs the
//! fused rotated AdamW on its blocks alone (`Rotation::restrict`: rotate, moments, direction, unrotate
//! into the parameters at its blocks' indices), and the ranks then exchange the parameters each one
//! updated: rank q's range is broadcast from q, for q in rank order (an all-gather of unequal parts, with
//! no buffer of all of them) — its blocks' parameter values in layout order (a gather with 1×1 blocks
//! holding 1), scattered on arrival to the standard indices of q's range. Without a rotation the layout is
//! the standard one, a range is any contiguous run of parameters, the rank runs `adamw_step` on its part
//! of each tensor, and the broadcasts go straight into the parameters; the ranges are then equal parts
//! (the last shorter), so the gradient is reduce-scattered into them rather than all-reduced (half the
//! traffic: the step needs only its range, and the global norm is the sum of the ranges' squares).
//!
//! Every block and every element is computed by the same op with the same inputs as in the unsharded step,
//! so the parameters after a step, and the state gathered from the ranks, equal the unsharded
//! optimizer's (tested) — given the same clipping coefficient: without a rotation the norm is summed from
//! the parts, which rounds it differently, so with clipping the two agree to rounding. Memory per rank: m, v (and under a rotation the direction) for its range, ≈ 2d/W
//! or 3d/W elements, and one range in transit; under a rotation also its blocks' index list (d/W) and
//! every rank's placement (d u32: each rank scatters every other rank's values), and the rotation's own
//! index lists stay whole on every rank.

use crate::backend::{AdamStep, Backend, Collective, Scalar};
use crate::error::{Error, Result};
use crate::model::ParamTable;
use crate::rotation::Rotation;
use std::ops::Range;

/// The W ranges of a layout of `len` positions: contiguous, in rank order, each cut at one of `starts`
/// (ascending, `len` last), as near to r·len/W as the cuts allow. An error when some rank would get
/// nothing (more ranks than blocks).
pub fn ranges(len: usize, world: usize, starts: &[usize]) -> Result<Vec<Range<usize>>> {
    let mut cuts = vec![0usize];
    for r in 1..world {
        let target = (r as u128 * len as u128 / world as u128) as usize;
        let i = starts.partition_point(|&s| s < target);
        // the nearer of the cut at or after the target and the one before it
        let after = starts.get(i).copied().unwrap_or(len);
        let before = if i > 0 { starts[i - 1] } else { 0 };
        let cut = if target - before < after - target {
            before
        } else {
            after
        };
        cuts.push(cut);
    }
    cuts.push(len);
    let out: Vec<Range<usize>> = cuts.windows(2).map(|w| w[0]..w[1]).collect();
    if let Some(r) = out.iter().position(|r| r.is_empty()) {
        return Err(Error::config(
            "devices",
            format!(
                "rank {r} of {world} would own no block of the optimizer's layout ({} blocks in {len} \
                 coordinates): use fewer devices or smaller rotation blocks",
                starts.len().saturating_sub(1)
            ),
        ));
    }
    Ok(out)
}

/// One rank's part of a sharded AdamW (module docs).
pub struct Sharded<BK: Backend> {
    pub rank: usize,
    /// Every rank's range of the layout, in rank order.
    pub ranges: Vec<Range<usize>>,
    /// The layout's length (d).
    pub len: usize,
    /// Under a block rotation: this rank's blocks, and every rank's placement (the standard indices of
    /// its range, in layout order) for the gather and scatter of the parameters it updated.
    rotated: Option<RotatedPart<BK>>,
    /// One rank's range of values in transit (as long as the longest range).
    staging: BK::Buf,
}

struct RotatedPart<BK: Backend> {
    blocks: Rotation<BK>,
    /// Rank q's placement, 1×1 blocks holding `one`.
    places: Vec<BK::RotIndex>,
    one: BK::Buf,
    /// The direction of this rank's blocks.
    u: BK::Buf,
}

/// `out[range] = x` (a zero fill and an add: −0.0 becomes +0.0, as in `Rotation`'s identity copy).
fn copy<BK: Backend>(
    be: &BK,
    out: &mut BK::Buf,
    range: Range<usize>,
    x: BK::View<'_>,
) -> Result<()> {
    be.fill(
        be.view_mut(out, range.clone()),
        <BK::T as Scalar>::from_f64(0.0),
    )?;
    be.add_inplace(be.view_mut(out, range), x)
}

impl<BK: Backend> Sharded<BK> {
    /// Rank `rank` of `world` over `table`'s parameters, with the rotation `rotation` (None: the standard
    /// basis).
    pub fn new(
        be: &BK,
        table: &ParamTable,
        rotation: Option<&Rotation<BK>>,
        rank: usize,
        world: usize,
    ) -> Result<Self> {
        let d = table.total;
        let ranges = match rotation {
            Some(rot) => ranges(d, world, &rot.block_starts())?,
            // equal parts (the last one shorter), so the gradient can be reduce-scattered into them
            None => {
                let part = d.div_ceil(world);
                if part * (world - 1) >= d {
                    return Err(Error::config(
                        "devices",
                        format!("{world} ranks cannot share {d} parameters in equal parts"),
                    ));
                }
                (0..world)
                    .map(|r| r * part..((r + 1) * part).min(d))
                    .collect()
            }
        };
        let mine = ranges[rank].clone();
        let longest = ranges.iter().map(|r| r.len()).max().unwrap_or(0);
        let rotated = match rotation {
            None => None,
            Some(rot) => {
                let blocks = rot.restrict(be, mine.clone())?;
                let all = rot
                    .placement(be)
                    .expect("a block rotation is not the identity");
                let places = ranges
                    .iter()
                    .map(|r| be.rotation_index(all[r.clone()].to_vec(), 1, d))
                    .collect::<Result<Vec<_>>>()?;
                let mut one = be.alloc(1)?;
                be.upload(&mut one, &[<BK::T as Scalar>::from_f64(1.0)])?;
                Some(RotatedPart {
                    places,
                    one,
                    u: be.alloc(mine.len())?,
                    blocks,
                })
            }
        };
        Ok(Sharded {
            rank,
            ranges,
            len: d,
            rotated,
            staging: be.alloc(longest)?,
        })
    }

    /// This rank's range of the layout.
    pub fn mine(&self) -> Range<usize> {
        self.ranges[self.rank].clone()
    }

    /// Without a rotation, the length of every rank's part of the gradient (the last rank's range is
    /// shorter, the rest of its part is padding): each rank needs only its range of the summed gradient,
    /// so the ranks reduce-scatter it. None under a rotation, whose blocks gather gradient entries from
    /// the whole model.
    pub fn gradient_part(&self) -> Option<usize> {
        match self.rotated {
            None => Some(self.ranges[0].len()),
            Some(_) => None,
        }
    }

    /// One AdamW step of this rank's range, then the exchange that gives every rank every parameter.
    #[allow(clippy::too_many_arguments)]
    pub fn step(
        &mut self,
        be: &BK,
        table: &ParamTable,
        params: &mut BK::Buf,
        grads: &BK::Buf,
        m: &mut BK::Buf,
        v: &mut BK::Buf,
        hp: AdamStep,
        weight_decay: f64,
        comm: &dyn Collective<BK>,
    ) -> Result<()> {
        match &mut self.rotated {
            None => super::adamw_span(
                be,
                table,
                self.mine(),
                params,
                m,
                v,
                grads,
                hp,
                weight_decay,
            )?,
            Some(part) => super::rotated_adamw(
                be,
                &part.blocks,
                table,
                params,
                grads,
                &mut part.u,
                m,
                v,
                hp,
                weight_decay,
            )?,
        }
        self.exchange_params(be, params, comm)
    }

    /// Every rank's updated parameters to every rank: rank q's range broadcast from q, in rank order —
    /// in place without a rotation (a range of the layout is a range of the parameters), else through
    /// `staging` in layout order and scattered to the standard indices of q's range.
    fn exchange_params(
        &mut self,
        be: &BK,
        params: &mut BK::Buf,
        comm: &dyn Collective<BK>,
    ) -> Result<()> {
        let d = self.len;
        for (q, r) in self.ranges.iter().enumerate() {
            let Some(part) = &self.rotated else {
                comm.broadcast(be, params, r.clone(), q)?;
                continue;
            };
            let n = r.len();
            if q == self.rank {
                be.rotate(
                    be.view_mut(&mut self.staging, 0..n),
                    be.view(params, 0..d),
                    &part.places[q],
                    be.view(&part.one, 0..1),
                    n,
                    1,
                )?;
            }
            comm.broadcast(be, &mut self.staging, 0..n, q)?;
            if q != self.rank {
                be.unrotate(
                    be.view_mut(params, 0..d),
                    be.view(&self.staging, 0..n),
                    &part.places[q],
                    be.view(&part.one, 0..1),
                    n,
                    1,
                )?;
            }
        }
        Ok(())
    }

    /// Every rank's `local` state vector (this rank's range) gathered into the whole layout on rank 0's
    /// host (the other ranks get an empty vector): rank q's range broadcast from q, in rank order.
    pub fn gather_state(
        &mut self,
        be: &BK,
        local: &BK::Buf,
        comm: &dyn Collective<BK>,
    ) -> Result<Vec<f64>> {
        let mut out = Vec::with_capacity(self.len);
        for (q, r) in self.ranges.clone().into_iter().enumerate() {
            let n = r.len();
            if q == self.rank {
                copy(be, &mut self.staging, 0..n, be.view(local, 0..n))?;
            }
            comm.broadcast(be, &mut self.staging, 0..n, q)?;
            if comm.rank() == 0 {
                let host = be.download(&self.staging)?;
                out.extend(host[..n].iter().map(|x| x.to_f64()));
            }
        }
        Ok(out)
    }
}
