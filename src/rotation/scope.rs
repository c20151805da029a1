//! Index groups per rotation scope: which coordinates of the flat parameter buffer a rotation may mix.
//!
//! A rotation (see [`super::Rotation`]) permutes and rotates the coordinates of each group separately and
//! never mixes two groups. Every group is an arithmetic progression over the flat buffer (a whole tensor, a
//! row, or a column), so a [`Group`] is three numbers and 124M parameters need no 124M-entry list until the
//! rotation is built. Groups come in ParamTable order, and within one tensor in row (resp. column) order.
//!
//! Scopes (Maes et al. App. D.1), for a tensor stored (out, in) row-major as `nn.Linear`:
//! - `global`: one group holding every coordinate;
//! - `layer`: one group per ParamTable entry (q, k and v are separate entries, so separate layers; every
//!   LayerNorm gain and bias is its own group);
//! - `output`: one group per output neuron of each 2-D weight = one ROW of the (out, in) matrix;
//! - `input`: one group per input neuron = one COLUMN of the (out, in) matrix.
//!
//! Embeddings are lookup tables stored (in, out) — wte (V, C), wpe (T, C): row i is token/position i, column
//! j is output channel j. As in the paper they are transposed for the neuron scopes, so under `output` a
//! group is a COLUMN of wte/wpe (the V resp. T weights feeding channel j) and under `input` a ROW (the C
//! weights leaving token i).
//!
//! 1-D tensors (LayerNorm gains and biases, linear biases) have no (out, in) structure. Under `output` and
//! `input` each 1-D tensor is ONE group, exactly as under `layer`. So every scope is a rotation of the whole
//! parameter space (every coordinate lies in exactly one group), and the 1-D parameters are treated the same
//! by `layer`, `output` and `input`.

use super::Scope;
use crate::model::{ParamEntry, ParamTable, Role};

/// The coordinates `offset + k·stride` for `k < len` of the flat parameter buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Group {
    pub offset: usize,
    pub len: usize,
    pub stride: usize,
}

impl Group {
    /// A contiguous range of `len` coordinates starting at `offset`.
    pub fn contiguous(offset: usize, len: usize) -> Self {
        Group {
            offset,
            len,
            stride: 1,
        }
    }

    /// The coordinates of the group, in order.
    pub fn indices(&self) -> impl Iterator<Item = usize> + '_ {
        (0..self.len).map(move |k| self.offset + k * self.stride)
    }
}

/// Is the entry an embedding, stored (in, out) instead of (out, in)?
fn is_embedding(e: &ParamEntry) -> bool {
    matches!(e.role, Role::Wte | Role::Wpe)
}

/// The rows of entry `e` (stored row-major `rows × cols`), one group each.
fn rows_of(e: &ParamEntry, out: &mut Vec<Group>) {
    out.extend((0..e.rows).map(|i| Group::contiguous(e.offset + i * e.cols, e.cols)));
}

/// The columns of entry `e`, one group each.
fn cols_of(e: &ParamEntry, out: &mut Vec<Group>) {
    out.extend((0..e.cols).map(|j| Group {
        offset: e.offset + j,
        len: e.rows,
        stride: e.cols,
    }));
}

/// The groups of `scope` over `table`. `Scope::None` has no groups (the identity rotates nothing).
/// Every index `0..table.total` lies in exactly one group for every other scope.
pub fn groups(scope: Scope, table: &ParamTable) -> Vec<Group> {
    let mut out = Vec::new();
    match scope {
        Scope::None => {}
        Scope::Global => {
            if table.total > 0 {
                out.push(Group::contiguous(0, table.total));
            }
        }
        Scope::Layer => {
            for e in table.entries.iter().filter(|e| !e.is_empty()) {
                out.push(Group::contiguous(e.offset, e.len()));
            }
        }
        Scope::Output | Scope::Input => {
            for e in table.entries.iter().filter(|e| !e.is_empty()) {
                if !e.is_matrix() {
                    out.push(Group::contiguous(e.offset, e.len()));
                } else if (scope == Scope::Output) != is_embedding(e) {
                    // output of an (out, in) weight, or input of an (in, out) embedding
                    rows_of(e, &mut out);
                } else {
                    cols_of(e, &mut out);
                }
            }
        }
    }
    out
}
