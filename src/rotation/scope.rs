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
//! What the neuron scopes do with the tensors that are not (out, in) weights is a [`Neurons`] (from
//! `--vector-rotation` and `--embedding-rotation`, stored in `RotationConfig`):
//!
//! - **Embeddings** are lookup tables stored (in, out) — wte (V, C), wpe (T, C): row i is token/position i,
//!   column j is channel j. `paper` (the default) transposes them as the paper does (App. D.1): under
//!   `output` a group is a COLUMN of wte/wpe (the V resp. T weights feeding channel j), under `input` a ROW
//!   (the C weights leaving token i). `head` reads wte as the tied LM head does, an (out, in) = (V, C)
//!   weight whose output neurons are the tokens: under `output` a ROW of wte, under `input` a COLUMN (wpe,
//!   which is no head, stays as `paper`). `none` leaves wte and wpe out of every group, under `layer` and
//!   `global` too: the rotation is the identity on them ([`unrotated`]). `paper` and `head` differ only
//!   under the neuron scopes (`layer` keeps a tensor whole and `global` draws a uniformly random
//!   permutation of its one group, so the order of a tensor's coordinates does not matter there).
//! - **1-D tensors** (LayerNorm gains and biases, linear biases) have no (out, in) structure. A gain γⱼ
//!   scales neuron j alone, so under the neuron-wise definition (Maes et al. §2.3, Fig. 6; App. D.1) it is
//!   a group by itself: `neuron` (the default for new runs) makes every coordinate of a 1-D tensor its own
//!   group (a bias bⱼ too; the paper's GPT-2 has none, App. D.2). `mixed` makes each 1-D tensor ONE group,
//!   as under `layer` (what this project did before the setting existed; older `config.json` files read
//!   as `mixed`).
//!
//! `layer` and `global` look only at whether the embeddings are rotated. Every index `0..table.total`
//! lies in exactly one group of [`groups_with`] or of [`unrotated`], for every scope but `none`.
//!
//! Blockwise Adam's neuron blocks (Xie et al. Alg. 3, `--blocks neuron`) are the `output` groups of the
//! same [`Neurons`] ([`neuron_groups`]; embeddings left unrotated are split as `paper` there), so an
//! `output` rotation never mixes two of its blocks.

use super::Scope;
use crate::config::{EmbeddingRotation, RotationConfig, VectorRotation};
use crate::model::{ParamEntry, ParamTable, Role};

/// What a neuron is for the tensors that are not (out, in) weights (module docs).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Neurons {
    pub vectors: VectorRotation,
    pub embeddings: EmbeddingRotation,
}

impl Neurons {
    /// The neurons of a run's rotation config.
    pub fn of(cfg: &RotationConfig) -> Self {
        Neurons {
            vectors: cfg.vectors,
            embeddings: cfg.embeddings,
        }
    }
}

impl std::fmt::Display for Neurons {
    /// e.g. `1-D tensors per neuron, embeddings paper`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let vectors = match self.vectors {
            VectorRotation::Mixed => "mixed",
            VectorRotation::Neuron => "per neuron",
        };
        write!(f, "1-D tensors {vectors}, embeddings {}", self.embeddings)
    }
}

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
    e.role.is_embedding()
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

/// The groups of `scope` over `table` with the default [`Neurons`] (what a new run gets).
pub fn groups(scope: Scope, table: &ParamTable) -> Vec<Group> {
    groups_with(scope, Neurons::default(), table)
}

/// The groups of `scope` over `table`: what the rotation may mix. `Scope::None` has no groups (the
/// identity rotates nothing). With [`unrotated`], every index `0..table.total` lies in exactly one group
/// for every other scope.
pub fn groups_with(scope: Scope, neurons: Neurons, table: &ParamTable) -> Vec<Group> {
    let mut out: Vec<Group> = Vec::new();
    match scope {
        Scope::None => {}
        Scope::Global => {
            // one group; without the embeddings, the non-embedding coordinates (contiguous ranges merged:
            // wte and wpe come first, so this is one range)
            for e in table.entries.iter().filter(|e| !e.is_empty()) {
                if neurons.embeddings == EmbeddingRotation::None && is_embedding(e) {
                    continue;
                }
                match out.last_mut() {
                    Some(g) if g.offset + g.len == e.offset => g.len += e.len(),
                    _ => out.push(Group::contiguous(e.offset, e.len())),
                }
            }
        }
        Scope::Layer => {
            for e in table.entries.iter().filter(|e| !e.is_empty()) {
                if neurons.embeddings == EmbeddingRotation::None && is_embedding(e) {
                    continue;
                }
                out.push(Group::contiguous(e.offset, e.len()));
            }
        }
        Scope::Output | Scope::Input => {
            let output = scope == Scope::Output;
            for e in table.entries.iter().filter(|e| !e.is_empty()) {
                if !e.is_matrix() {
                    match neurons.vectors {
                        VectorRotation::Mixed => out.push(Group::contiguous(e.offset, e.len())),
                        VectorRotation::Neuron => {
                            out.extend(e.range().map(|i| Group::contiguous(i, 1)))
                        }
                    }
                    continue;
                }
                // is the tensor read (out, in), so that an output neuron is a row?
                let out_in = match neurons.embeddings {
                    _ if !is_embedding(e) => true,
                    EmbeddingRotation::None => continue,
                    EmbeddingRotation::Head => e.role == Role::Wte,
                    EmbeddingRotation::Paper => false,
                };
                if output == out_in {
                    // the output of an (out, in) weight, or the input of a transposed embedding
                    rows_of(e, &mut out);
                } else {
                    cols_of(e, &mut out);
                }
            }
        }
    }
    out
}

/// The coordinates `scope` leaves unrotated: the embeddings with `--embedding-rotation none`, one group
/// per tensor, under every scope but `none` (which rotates nothing); empty otherwise.
pub fn unrotated(scope: Scope, neurons: Neurons, table: &ParamTable) -> Vec<Group> {
    if scope == Scope::None || neurons.embeddings != EmbeddingRotation::None {
        return Vec::new();
    }
    table
        .entries
        .iter()
        .filter(|e| !e.is_empty() && e.is_matrix() && is_embedding(e))
        .map(|e| Group::contiguous(e.offset, e.len()))
        .collect()
}

/// Blockwise Adam's neuron blocks: the `output` groups of `neurons`, with embeddings that `none` leaves
/// unrotated split as `paper` (one block per channel). Every index lies in exactly one of them.
pub fn neuron_groups(neurons: Neurons, table: &ParamTable) -> Vec<Group> {
    let embeddings = match neurons.embeddings {
        EmbeddingRotation::None => EmbeddingRotation::Paper,
        e => e,
    };
    groups_with(
        Scope::Output,
        Neurons {
            embeddings,
            ..neurons
        },
        table,
    )
}
