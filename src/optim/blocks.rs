//! Blockwise Adam's blocks (Xie et al. Alg. 3) in the optimizer's layout.
//!
//! A partition is defined on the standard coordinates: one block per tensor (`tensor`), per output
//! neuron (`neuron`: the groups of the `output` scope with the run's [`Neurons`], embeddings and 1-D
//! tensors included; `rotation::scope`), per coordinate (`coordinate`), or one block of everything
//! (AdaSGD). The optimizer's layout is the basis's: position p holds a rotated coordinate *placed* at a
//! standard index (`rotation::basis`), and position p belongs to the block of the index it is placed at.
//! A block thus keeps its size under every basis, and when the rotation stays inside the blocks (`layer`
//! with tensor blocks, `output` with neuron blocks, any block rotation with coarser blocks) its positions
//! hold exactly the rotated coordinates of its own coordinates. Its second moment, the mean of g̃² over
//! the block, is then the mean of g² (a rotation keeps the norm of what it mixes), and blockwise Adam is
//! equivariant to that rotation (tested).
//!
//! Those positions need not be consecutive (a group's residual chunk sits at the end of a block
//! rotation's layout; an embedding's column is strided), while the backend's block ops take consecutive
//! blocks. So blockwise Adam runs in the *block order*: blocks in the order of their first position in
//! the layout, each block's positions in layout order, consecutive. When that order is the layout itself
//! (tensor blocks without a rotation, coordinate blocks, AdaSGD) nothing moves; otherwise the link
//! gathers its input into block order and scatters its direction back, two moves of d coordinates (the
//! backend's rotation ops with 1×1 blocks holding exactly 1). The first moment lives in block order (the
//! `m` of a checkpoint), the second moment has one entry per block, in block order.

use super::transform::Blocks;
use crate::config::BlockPartition;
use crate::model::ParamTable;
use crate::rotation::scope::{self, Group, Neurons};
use std::ops::Range;

/// Runs of consecutive blocks of one size in block order: (coordinates, block size, second moments).
pub(super) type Parts = Vec<(Range<usize>, usize, Range<usize>)>;

/// A partition in the optimizer's layout.
pub(super) struct BlockLayout {
    pub parts: Parts,
    /// order[q] = the layout position at position q of the block order; None when it is the layout.
    pub order: Option<Vec<u32>>,
}

impl BlockLayout {
    /// The number of blocks (second moments).
    pub fn count(&self) -> usize {
        self.parts.last().map_or(0, |(_, _, v)| v.end)
    }
}

/// The blocks of `blocks` over `table`, in the layout whose position p is placed at standard index
/// `placement[p]` (None: at p), with the run's `neurons` for neuron blocks.
pub(super) fn layout(
    blocks: Blocks,
    neurons: Neurons,
    table: &ParamTable,
    placement: Option<&[u32]>,
) -> BlockLayout {
    let d = table.total;
    let single = |block: usize| BlockLayout {
        parts: if d == 0 {
            Vec::new()
        } else {
            vec![(0..d, block, 0..d / block)]
        },
        order: None,
    };
    let groups: Vec<Group> = match blocks {
        // one block, or one per position: any placement keeps them as they are
        Blocks::Whole => return single(d),
        Blocks::Partition(BlockPartition::Coordinate) => return single(1),
        Blocks::Partition(BlockPartition::Tensor) => table
            .entries
            .iter()
            .filter(|e| !e.is_empty())
            .map(|e| Group::contiguous(e.offset, e.len()))
            .collect(),
        Blocks::Partition(BlockPartition::Neuron) => scope::neuron_groups(neurons, table),
    };
    order_blocks(&groups, d, placement)
}

/// The block order of `groups` (a partition of `0..d`) under `placement` (module docs).
fn order_blocks(groups: &[Group], d: usize, placement: Option<&[u32]>) -> BlockLayout {
    const UNSEEN: u32 = u32::MAX;
    let mut block_of = vec![UNSEEN; d];
    for (b, g) in groups.iter().enumerate() {
        for i in g.indices() {
            debug_assert_eq!(block_of[i], UNSEEN, "index {i} in two blocks");
            block_of[i] = b as u32;
        }
    }
    debug_assert!(
        block_of.iter().all(|&b| b != UNSEEN),
        "the blocks cover every index"
    );
    // the block of each layout position
    let at = |p: usize| -> usize {
        let i = placement.map_or(p, |pl| pl[p] as usize);
        block_of[i] as usize
    };
    // blocks ranked by their first position in the layout
    let mut seen = vec![false; groups.len()];
    let mut ranked: Vec<usize> = Vec::with_capacity(groups.len());
    for p in 0..d {
        let b = at(p);
        if !seen[b] {
            seen[b] = true;
            ranked.push(b);
        }
    }
    let mut next = vec![0usize; groups.len()];
    let mut parts: Parts = Vec::new();
    let (mut pos, mut count) = (0, 0);
    for &b in &ranked {
        let len = groups[b].len;
        next[b] = pos;
        match parts.last_mut() {
            Some((r, size, v)) if *size == len => {
                r.end += len;
                v.end += 1;
            }
            _ => parts.push((pos..pos + len, len, count..count + 1)),
        }
        pos += len;
        count += 1;
    }
    debug_assert_eq!(pos, d);
    let mut order = vec![0u32; d];
    for p in 0..d {
        let b = at(p);
        order[next[b]] = p as u32;
        next[b] += 1;
    }
    let moved = order.iter().enumerate().any(|(q, &p)| q != p as usize);
    BlockLayout {
        parts,
        order: moved.then_some(order),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn consecutive_blocks_stay_in_place() {
        let groups = [
            Group::contiguous(0, 3),
            Group::contiguous(3, 3),
            Group::contiguous(6, 2),
        ];
        let l = order_blocks(&groups, 8, None);
        assert!(l.order.is_none());
        assert_eq!(l.parts, vec![(0..6, 3, 0..2), (6..8, 2, 2..3)]);
    }

    #[test]
    fn scattered_blocks_are_gathered_in_order_of_first_position() {
        // columns of a 2×3 matrix: {0, 3}, {1, 4}, {2, 5}
        let groups: Vec<Group> = (0..3)
            .map(|j| Group {
                offset: j,
                len: 2,
                stride: 3,
            })
            .collect();
        let l = order_blocks(&groups, 6, None);
        assert_eq!(l.order, Some(vec![0, 3, 1, 4, 2, 5]));
        assert_eq!(l.parts, vec![(0..6, 2, 0..3)]);
        // a placement that puts index 1 first: its block (column 1) comes first
        let l = order_blocks(&groups, 6, Some(&[1, 0, 2, 3, 4, 5]));
        assert_eq!(l.order, Some(vec![0, 4, 1, 3, 2, 5]));
    }
}
