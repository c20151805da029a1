//! The Hugging Face GPT-2 layout of the parameters: names (`transformer.h.0.attn.c_attn.weight`), Conv1D
//! weights stored (in, out), q/k/v fused into `c_attn`, the LM head tied to `wte` and not stored. A model
//! without biases exports zero biases, which is exactly what it computes (`transformers` needs every
//! bias tensor: one missing would be initialised at random). [`hf_config`] is the `config.json` that goes
//! with such a file.

use super::ParamTable;
use crate::backend::cpu::layernorm::LN_EPS;
use crate::config::ModelConfig;
use crate::error::{Error, Result};
use crate::tensors::TensorMap;
use safetensors::Dtype;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

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

/// GPT-2's end-of-text token, `transformers`' default `bos_token_id` and `eos_token_id`.
const EOT: usize = 50256;

/// The `torch_dtype` of a `config.json` for weights stored as `dtype`.
fn torch_dtype(dtype: Dtype) -> &'static str {
    match dtype {
        Dtype::F64 => "float64",
        Dtype::F32 => "float32",
        Dtype::F16 => "float16",
        Dtype::BF16 => "bfloat16",
        other => panic!("no floating-point torch dtype for {other:?}"),
    }
}

/// The Hugging Face `config.json` (a `GPT2Config`) of a model of shape `cfg` whose weights are stored as
/// `dtype`: with it beside a `model.safetensors` from [`to_hf`], `GPT2LMHeadModel.from_pretrained(dir)`
/// (and the Flax one) builds the model this crate computes: GELU with the tanh approximation
/// (`gelu_new`), a 4·n_embd MLP (`n_inner: null`), LayerNorm epsilon [`LN_EPS`], attention scaled by
/// 1/√head_size, the LM head tied to `wte`, no dropout. `bos_token_id`/`eos_token_id` are GPT-2's
/// end-of-text token when the vocabulary has it and `null` otherwise (`GPT2Config` would default them to
/// 50256, an id such a model does not have).
pub fn hf_config(cfg: &ModelConfig, dtype: Dtype) -> serde_json::Value {
    let eot = (cfg.vocab_size > EOT).then_some(EOT);
    serde_json::json!({
        "model_type": "gpt2",
        "architectures": ["GPT2LMHeadModel"],
        "vocab_size": cfg.vocab_size,
        "n_positions": cfg.seq_len,
        "n_ctx": cfg.seq_len,
        "n_embd": cfg.n_embd,
        "n_layer": cfg.n_layer,
        "n_head": cfg.n_head,
        "n_inner": null,
        "activation_function": "gelu_new",
        "layer_norm_epsilon": LN_EPS,
        "resid_pdrop": 0.0,
        "embd_pdrop": 0.0,
        "attn_pdrop": 0.0,
        "initializer_range": 0.02,
        "scale_attn_weights": true,
        "scale_attn_by_inverse_layer_idx": false,
        "reorder_and_upcast_attn": false,
        "tie_word_embeddings": true,
        "use_cache": true,
        "torch_dtype": torch_dtype(dtype),
        "bos_token_id": eot,
        "eos_token_id": eot,
    })
}

/// The weights file `path` names: `path` itself when it is a file, `path/model.safetensors` when it is a
/// directory holding one (a checkpoint `checkpoints/step_N`, or a model saved by `transformers`).
pub fn weights_file(path: &Path) -> Result<PathBuf> {
    const EXPECTED: &str =
        "expected a Hugging Face GPT-2 model.safetensors, or a directory holding one \
                            (such as a checkpoint, RUN/checkpoints/step_N)";
    if path.is_file() {
        return Ok(path.to_path_buf());
    }
    if path.is_dir() {
        let file = path.join("model.safetensors");
        if file.is_file() {
            return Ok(file);
        }
        return Err(Error::bad_file(
            path,
            "weights",
            format!("a directory without model.safetensors; {EXPECTED}"),
        ));
    }
    let what = match std::fs::metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => "does not exist".to_string(),
        Err(e) => format!("cannot be read ({e})"),
        Ok(_) => "is neither a file nor a directory".to_string(),
    };
    Err(Error::bad_file(
        path,
        "weights",
        format!("{what}; {EXPECTED}"),
    ))
}

/// HF GPT-2 weights for `cfg` from `path`, a `model.safetensors` or a directory holding one
/// ([`weights_file`]), read with [`from_hf`]: the flat buffer and the count of non-zero biases ignored.
pub fn load(path: &Path, cfg: &ModelConfig, tb: &ParamTable) -> Result<(Vec<f64>, usize)> {
    let file = weights_file(path)?;
    let tensors = crate::tensors::read(&file)?;
    from_hf(&file, cfg, tb, &tensors)
}

/// Tensors of a GPT-2 file that hold no parameter of the model and are skipped: the causal-mask buffers
/// older `transformers` saved (`h.N.attn.bias`, `h.N.attn.masked_bias`) of the model's layers, and an
/// `lm_head.weight` equal to `wte` (the tied head stored anyway).
fn skippable(name: &str, cfg: &ModelConfig, tensors: &TensorMap, wte: Option<&str>) -> bool {
    let bare = name.strip_prefix(HF_PREFIX).unwrap_or(name);
    if let Some(rest) = bare.strip_prefix("h.") {
        if let Some((layer, tail)) = rest.split_once('.') {
            return matches!(tail, "attn.bias" | "attn.masked_bias")
                && layer.parse::<usize>().is_ok_and(|l| l < cfg.n_layer);
        }
    }
    if name == "lm_head.weight" {
        let (Some(head), Some(wte)) = (tensors.get(name), wte.and_then(|w| tensors.get(w))) else {
            return false;
        };
        return head == wte;
    }
    false
}

/// Load HF GPT-2 tensors (with or without the `transformer.` prefix) into a flat buffer for `cfg`.
/// Shapes must match the model; biases in the file are used when the model has biases and ignored
/// otherwise (the returned count says how many were ignored because they were non-zero). A tensor the
/// model has no place for (a layer beyond `n_layer`, an unknown name) is an error listing them, except
/// the buffers [`skippable`] names.
pub fn from_hf(
    path: &Path,
    cfg: &ModelConfig,
    tb: &ParamTable,
    tensors: &TensorMap,
) -> Result<(Vec<f64>, usize)> {
    let mut flat = vec![0.0; tb.total];
    let mut ignored_nonzero = 0;
    let mut used: BTreeSet<&str> = BTreeSet::new();
    for m in hf_layout(cfg, tb) {
        let prefixed = format!("{HF_PREFIX}{}", m.name);
        let key = [prefixed.as_str(), m.name.as_str()]
            .into_iter()
            .find_map(|k| tensors.get_key_value(k));
        if let Some((k, _)) = key {
            used.insert(k.as_str());
        }
        let found = key.map(|(_, v)| v);
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
    let wte = used.iter().copied().find(|k| k.ends_with("wte.weight"));
    let unused: Vec<&str> = tensors
        .keys()
        .map(String::as_str)
        .filter(|k| !used.contains(k) && !skippable(k, cfg, tensors, wte))
        .collect();
    if !unused.is_empty() {
        const SHOWN: usize = 24;
        let more = match unused.len().saturating_sub(SHOWN) {
            0 => String::new(),
            n => format!(" and {n} more"),
        };
        return Err(Error::bad_file(
            path,
            "tensors",
            format!(
                "{} tensor(s) that a GPT-2 of {} layers (n_embd {}, bias {}) does not use: {}{more}; \
                 the file is for another model",
                unused.len(),
                cfg.n_layer,
                cfg.n_embd,
                cfg.bias,
                unused[..unused.len().min(SHOWN)].join(", "),
            ),
        ));
    }
    Ok((flat, ignored_nonzero))
}
