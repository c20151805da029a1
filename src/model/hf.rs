//! The Hugging Face GPT-2 layout of the parameters: names (`transformer.h.0.attn.c_attn.weight`), Conv1D
//! weights stored (in, out), q/k/v fused into `c_attn`, the LM head tied to `wte` and not stored. A model
//! without biases exports zero biases, which is exactly what it computes.

use super::ParamTable;
use crate::config::ModelConfig;
use crate::error::{Error, Result};
use crate::tensors::TensorMap;
use std::path::Path;

/// The prefix of every tensor name in a `GPT2LMHeadModel` state dict.
pub const HF_PREFIX: &str = "transformer.";

/// One tensor in Hugging Face layout.
pub struct HfTensor {
    pub name: String,
    pub shape: Vec<usize>,
    pub values: Vec<f64>,
}

fn transpose(x: &[f64], rows: usize, cols: usize) -> Vec<f64> {
    let mut out = vec![0.0; x.len()];
    for r in 0..rows {
        for c in 0..cols {
            out[c * rows + r] = x[r * cols + c];
        }
    }
    out
}

/// How one HF tensor maps onto the flat buffer: a range, its (out, in) shape, and whether HF stores it
/// transposed (Conv1D).
struct HfMap {
    name: String,
    range: Option<std::ops::Range<usize>>,
    rows: usize,
    cols: usize,
    conv1d: bool,
}

fn hf_layout(cfg: &ModelConfig, tb: &ParamTable) -> Vec<HfMap> {
    let c = cfg.n_embd;
    let vec = |name: String, range: Option<std::ops::Range<usize>>, n: usize| HfMap {
        name,
        range,
        rows: n,
        cols: 1,
        conv1d: false,
    };
    let mat =
        |name: String, range: std::ops::Range<usize>, rows: usize, cols: usize, conv1d| HfMap {
            name,
            range: Some(range),
            rows,
            cols,
            conv1d,
        };
    let mut out = vec![
        mat("wte.weight".into(), tb.r(tb.wte), cfg.vocab_size, c, false),
        mat("wpe.weight".into(), tb.r(tb.wpe), cfg.seq_len, c, false),
    ];
    for (l, lp) in tb.layers.iter().enumerate() {
        let p = |s: &str| format!("h.{l}.{s}");
        out.push(vec(p("ln_1.weight"), Some(tb.r(lp.ln1_w)), c));
        out.push(vec(p("ln_1.bias"), tb.opt(lp.ln1_b), c));
        out.push(mat(p("attn.c_attn.weight"), tb.qkv(l), 3 * c, c, true));
        out.push(vec(p("attn.c_attn.bias"), tb.qkv_bias(l), 3 * c));
        out.push(mat(p("attn.c_proj.weight"), tb.r(lp.attn_proj), c, c, true));
        out.push(vec(p("attn.c_proj.bias"), tb.opt(lp.attn_proj_b), c));
        out.push(vec(p("ln_2.weight"), Some(tb.r(lp.ln2_w)), c));
        out.push(vec(p("ln_2.bias"), tb.opt(lp.ln2_b), c));
        out.push(mat(p("mlp.c_fc.weight"), tb.r(lp.fc), 4 * c, c, true));
        out.push(vec(p("mlp.c_fc.bias"), tb.opt(lp.fc_b), 4 * c));
        out.push(mat(
            p("mlp.c_proj.weight"),
            tb.r(lp.fc_proj),
            c,
            4 * c,
            true,
        ));
        out.push(vec(p("mlp.c_proj.bias"), tb.opt(lp.fc_proj_b), c));
    }
    out.push(vec("ln_f.weight".into(), Some(tb.r(tb.lnf_w)), c));
    out.push(vec("ln_f.bias".into(), tb.opt(tb.lnf_b), c));
    out
}

/// The flat buffer as HF GPT-2 tensors (names without the `transformer.` prefix).
pub fn to_hf(cfg: &ModelConfig, tb: &ParamTable, flat: &[f64]) -> Vec<HfTensor> {
    hf_layout(cfg, tb)
        .into_iter()
        .map(|m| {
            let values = match &m.range {
                None => vec![0.0; m.rows * m.cols],
                Some(r) if m.conv1d => transpose(&flat[r.clone()], m.rows, m.cols),
                Some(r) => flat[r.clone()].to_vec(),
            };
            let shape = if m.cols == 1 {
                vec![m.rows]
            } else if m.conv1d {
                vec![m.cols, m.rows]
            } else {
                vec![m.rows, m.cols]
            };
            HfTensor {
                name: m.name,
                shape,
                values,
            }
        })
        .collect()
}

/// Load HF GPT-2 tensors (with or without the `transformer.` prefix) into a flat buffer for `cfg`.
/// Shapes must match the model; biases in the file are used when the model has biases and ignored
/// otherwise (the returned count says how many were ignored because they were non-zero).
pub fn from_hf(
    path: &Path,
    cfg: &ModelConfig,
    tb: &ParamTable,
    tensors: &TensorMap,
) -> Result<(Vec<f64>, usize)> {
    let mut flat = vec![0.0; tb.total];
    let mut ignored_nonzero = 0;
    for m in hf_layout(cfg, tb) {
        let found = tensors
            .get(&format!("{HF_PREFIX}{}", m.name))
            .or_else(|| tensors.get(&m.name));
        let expected: Vec<usize> = if m.cols == 1 {
            vec![m.rows]
        } else if m.conv1d {
            vec![m.cols, m.rows]
        } else {
            vec![m.rows, m.cols]
        };
        let Some((shape, values)) = found else {
            if m.range.is_none() {
                continue; // a bias the model does not have and the file does not carry
            }
            return Err(Error::bad_file(
                path,
                &m.name,
                format!("missing; expected a tensor of shape {expected:?}"),
            ));
        };
        if *shape != expected {
            return Err(Error::bad_file(
                path,
                &m.name,
                format!("shape {shape:?}, but the model needs {expected:?}"),
            ));
        }
        match &m.range {
            None => {
                if values.iter().any(|&x| x != 0.0) {
                    ignored_nonzero += 1;
                }
            }
            Some(r) if m.conv1d => {
                flat[r.clone()].copy_from_slice(&transpose(values, m.cols, m.rows))
            }
            Some(r) => flat[r.clone()].copy_from_slice(values),
        }
    }
    Ok((flat, ignored_nonzero))
}
