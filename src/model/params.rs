//! The ParamTable: every GPT-2 tensor as an entry over ONE flat buffer (`docs/architecture.md`, decision 1).
//!
//! Entries are (out, in) row-major, with q, k and v as three separate entries that are contiguous thirds of
//! the fused (3C, C) qkv weight, so rotation scopes see them as separate layers while the forward still runs
//! one fused matmul. Gradients and optimizer state use the same table. The order is fixed and documented:
//!
//! `wte, wpe, then per layer l: ln_1.weight, [ln_1.bias], q, k, v, [q.bias, k.bias, v.bias],
//!  attn.c_proj.weight, [attn.c_proj.bias], ln_2.weight, [ln_2.bias], mlp.c_fc.weight, [mlp.c_fc.bias],
//!  mlp.c_proj.weight, [mlp.c_proj.bias]; then ln_f.weight, [ln_f.bias]` (bracketed entries only with biases).
//!
//! Initialisation follows GPT-2/nanoGPT: N(0, 0.02) for every 2-D weight, residual projections
//! (attn.c_proj, mlp.c_proj) N(0, 0.02/√(2·n_layer)), biases 0, LayerNorm gains 1.

use crate::config::ModelConfig;
use crate::rng::Rng;
use serde::{Deserialize, Serialize};
use std::ops::Range;

/// What a tensor is, independent of its layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Role {
    Wte,
    Wpe,
    Ln1Weight,
    Ln1Bias,
    Q,
    K,
    V,
    QBias,
    KBias,
    VBias,
    AttnProj,
    AttnProjBias,
    Ln2Weight,
    Ln2Bias,
    Fc,
    FcBias,
    FcProj,
    FcProjBias,
    LnfWeight,
    LnfBias,
    /// A parameter vector outside GPT-2 ([`ParamTable::vector`]).
    Vector,
}

impl Role {
    /// Residual projections get the 1/√(2·n_layer) init scale (GPT-2 paper, nanoGPT).
    pub fn is_residual_projection(self) -> bool {
        matches!(self, Role::AttnProj | Role::FcProj)
    }
    pub fn is_layernorm_gain(self) -> bool {
        matches!(self, Role::Ln1Weight | Role::Ln2Weight | Role::LnfWeight)
    }
    /// wte or wpe: lookup tables stored (in, out) = (vocabulary or position, channel), not (out, in).
    pub fn is_embedding(self) -> bool {
        matches!(self, Role::Wte | Role::Wpe)
    }
}

/// One tensor of the flat buffer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ParamEntry {
    /// Internal name (`h.3.attn.q.weight`); q/k/v map onto HF's fused `c_attn` on export.
    pub name: String,
    pub offset: usize,
    /// (out, in) for 2-D weights; (n, 1) for vectors.
    pub rows: usize,
    pub cols: usize,
    /// Transformer block index; None for wte, wpe and ln_f.
    pub layer: Option<usize>,
    pub role: Role,
    /// In nanoGPT's weight-decay group: every tensor with ≥ 2 dimensions.
    pub decay: bool,
}

impl ParamEntry {
    pub fn len(&self) -> usize {
        self.rows * self.cols
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    pub fn range(&self) -> Range<usize> {
        self.offset..self.offset + self.len()
    }
    pub fn is_matrix(&self) -> bool {
        self.cols > 1
    }
}

/// Offsets of the tensors of one transformer block (indices into `ParamTable::entries`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LayerParams {
    pub ln1_w: usize,
    pub ln1_b: Option<usize>,
    pub q: usize,
    pub k: usize,
    pub v: usize,
    pub q_b: Option<usize>,
    pub attn_proj: usize,
    pub attn_proj_b: Option<usize>,
    pub ln2_w: usize,
    pub ln2_b: Option<usize>,
    pub fc: usize,
    pub fc_b: Option<usize>,
    pub fc_proj: usize,
    pub fc_proj_b: Option<usize>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ParamTable {
    pub entries: Vec<ParamEntry>,
    pub layers: Vec<LayerParams>,
    pub wte: usize,
    pub wpe: usize,
    pub lnf_w: usize,
    pub lnf_b: Option<usize>,
    pub total: usize,
}

impl ParamTable {
    /// A table of one 1-D entry `x` of `d` parameters outside the decay group: what an optimizer needs to
    /// run on a plain vector (the quadratic of Xie et al. §4.1). Its GPT-2 indices (`wte`, `wpe`, `lnf_w`,
    /// `layers`) name nothing and must not be used.
    pub fn vector(d: usize) -> Self {
        ParamTable {
            entries: vec![ParamEntry {
                name: "x".into(),
                offset: 0,
                rows: d,
                cols: 1,
                layer: None,
                role: Role::Vector,
                decay: false,
            }],
            layers: Vec::new(),
            wte: 0,
            wpe: 0,
            lnf_w: 0,
            lnf_b: None,
            total: d,
        }
    }

    pub fn new(cfg: &ModelConfig) -> Self {
        let c = cfg.n_embd;
        let mut entries: Vec<ParamEntry> = Vec::new();
        let mut offset = 0;
        let mut push =
            |name: String, rows: usize, cols: usize, layer: Option<usize>, role: Role| {
                let decay = cols > 1;
                entries.push(ParamEntry {
                    name,
                    offset,
                    rows,
                    cols,
                    layer,
                    role,
                    decay,
                });
                offset += rows * cols;
                entries.len() - 1
            };
        let wte = push("wte.weight".into(), cfg.vocab_size, c, None, Role::Wte);
        let wpe = push("wpe.weight".into(), cfg.seq_len, c, None, Role::Wpe);
        let mut layers = Vec::with_capacity(cfg.n_layer);
        for l in 0..cfg.n_layer {
            let p = |s: &str| format!("h.{l}.{s}");
            let ln1_w = push(p("ln_1.weight"), c, 1, Some(l), Role::Ln1Weight);
            let ln1_b = cfg
                .bias
                .then(|| push(p("ln_1.bias"), c, 1, Some(l), Role::Ln1Bias));
            let q = push(p("attn.q.weight"), c, c, Some(l), Role::Q);
            let k = push(p("attn.k.weight"), c, c, Some(l), Role::K);
            let v = push(p("attn.v.weight"), c, c, Some(l), Role::V);
            let q_b = cfg.bias.then(|| {
                let qb = push(p("attn.q.bias"), c, 1, Some(l), Role::QBias);
                push(p("attn.k.bias"), c, 1, Some(l), Role::KBias);
                push(p("attn.v.bias"), c, 1, Some(l), Role::VBias);
                qb
            });
            let attn_proj = push(p("attn.c_proj.weight"), c, c, Some(l), Role::AttnProj);
            let attn_proj_b = cfg
                .bias
                .then(|| push(p("attn.c_proj.bias"), c, 1, Some(l), Role::AttnProjBias));
            let ln2_w = push(p("ln_2.weight"), c, 1, Some(l), Role::Ln2Weight);
            let ln2_b = cfg
                .bias
                .then(|| push(p("ln_2.bias"), c, 1, Some(l), Role::Ln2Bias));
            let fc = push(p("mlp.c_fc.weight"), 4 * c, c, Some(l), Role::Fc);
            let fc_b = cfg
                .bias
                .then(|| push(p("mlp.c_fc.bias"), 4 * c, 1, Some(l), Role::FcBias));
            let fc_proj = push(p("mlp.c_proj.weight"), c, 4 * c, Some(l), Role::FcProj);
            let fc_proj_b = cfg
                .bias
                .then(|| push(p("mlp.c_proj.bias"), c, 1, Some(l), Role::FcProjBias));
            layers.push(LayerParams {
                ln1_w,
                ln1_b,
                q,
                k,
                v,
                q_b,
                attn_proj,
                attn_proj_b,
                ln2_w,
                ln2_b,
                fc,
                fc_b,
                fc_proj,
                fc_proj_b,
            });
        }
        let lnf_w = push("ln_f.weight".into(), c, 1, None, Role::LnfWeight);
        let lnf_b = cfg
            .bias
            .then(|| push("ln_f.bias".into(), c, 1, None, Role::LnfBias));
        ParamTable {
            entries,
            layers,
            wte,
            wpe,
            lnf_w,
            lnf_b,
            total: offset,
        }
    }

    /// The range of entry `i`.
    pub fn r(&self, i: usize) -> Range<usize> {
        self.entries[i].range()
    }

    /// The fused (3C, C) qkv weight of layer `l` (q, k, v are contiguous).
    pub fn qkv(&self, l: usize) -> Range<usize> {
        let lp = &self.layers[l];
        self.entries[lp.q].offset..self.entries[lp.v].range().end
    }

    /// The fused 3C qkv bias of layer `l`, if the model has biases.
    pub fn qkv_bias(&self, l: usize) -> Option<Range<usize>> {
        let qb = self.layers[l].q_b?;
        let start = self.entries[qb].offset;
        Some(start..start + 3 * self.entries[qb].rows)
    }

    /// Optional entry index → optional range.
    pub fn opt(&self, i: Option<usize>) -> Option<Range<usize>> {
        i.map(|i| self.r(i))
    }

    pub fn find(&self, name: &str) -> Option<&ParamEntry> {
        self.entries.iter().find(|e| e.name == name)
    }

    /// GPT-2 initialisation of the flat buffer, drawn in table order from `rng` (in f64, then cast).
    pub fn init(&self, cfg: &ModelConfig, rng: &mut Rng) -> Vec<f64> {
        let mut out = vec![0.0f64; self.total];
        let residual_std = 0.02 / ((2 * cfg.n_layer) as f64).sqrt();
        for e in &self.entries {
            let dst = &mut out[e.range()];
            if e.role.is_layernorm_gain() {
                dst.fill(1.0);
            } else if e.is_matrix() {
                let std = if e.role.is_residual_projection() {
                    residual_std
                } else {
                    0.02
                };
                for x in dst.iter_mut() {
                    *x = std * rng.normal();
                }
            } // biases stay 0
        }
        out
    }

    /// Number of parameters excluding the position embedding (how GPT-2 papers count, nanoGPT's
    /// `get_num_params(non_embedding=True)` also drops wpe).
    pub fn num_non_embedding(&self) -> usize {
        self.total - self.entries[self.wpe].len()
    }
}
