//! Checkpoints: `checkpoints/step_N/{model.safetensors, optim.safetensors, state.json}`, written into a
//! temporary directory and renamed into place, so a crash never leaves a half-written checkpoint.
//!
//! `model.safetensors` uses Hugging Face GPT-2 names and layouts (`transformer.h.0.attn.c_attn.weight`,
//! Conv1D weights stored (in, out), q/k/v fused into `c_attn`), with `{"format": "pt"}` metadata, so
//! `transformers`' `GPT2LMHeadModel.from_pretrained` loads it (the LM head is tied to wte and not stored).
//! Models without biases export zero biases, which is exactly what they compute. Weights are stored in the
//! run's precision (F32, or F64 for `--precision fp64`) so a resume is bit-identical.

use crate::backend::{Backend, Scalar};
use crate::config::{ModelConfig, OptimizerKind, RotationConfig};
use crate::data::loader::BatchSampler;
use crate::error::{Error, Result};
use crate::model::{Gpt2, ParamTable};
use crate::optim::Optimizer;
use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

/// Everything besides tensors that a resume needs (`state.json`).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TrainState {
    /// Optimizer steps completed.
    pub step: usize,
    /// The training batch sampler (RNG state = the data cursor).
    pub sampler: BatchSampler,
    pub optimizer: OptimizerKind,
    pub rotation: RotationConfig,
    pub model: ModelConfig,
    /// `f32` or `f64`: the dtype of the stored tensors.
    pub dtype: String,
    pub num_params: usize,
    pub train_loss: f64,
    pub val_loss: Option<f64>,
}

const HF_PREFIX: &str = "transformer.";

/// Tensors read from a safetensors file: name → (shape, values as f64).
pub type TensorMap = BTreeMap<String, (Vec<usize>, Vec<f64>)>;

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

fn to_bytes<T: Scalar>(values: &[f64]) -> Vec<u8> {
    let v: Vec<T> = values.iter().map(|&x| <T as Scalar>::from_f64(x)).collect();
    bytemuck::cast_slice(&v).to_vec()
}

/// Write named flat tensors as a safetensors file in dtype `T`.
fn write_safetensors<T: Scalar>(
    path: &Path,
    tensors: &[(String, Vec<usize>, Vec<u8>)],
    metadata: HashMap<String, String>,
) -> Result<()> {
    let views: Vec<(String, TensorView<'_>)> = tensors
        .iter()
        .map(|(name, shape, bytes)| {
            let view = TensorView::new(T::DTYPE, shape.clone(), bytes).map_err(|e| {
                Error::SafeTensors {
                    path: path.into(),
                    msg: format!("{name}: {e}"),
                }
            })?;
            Ok((name.clone(), view))
        })
        .collect::<Result<_>>()?;
    safetensors::serialize_to_file(views, Some(metadata), path).map_err(|e| Error::SafeTensors {
        path: path.into(),
        msg: e.to_string(),
    })
}

/// Read every tensor of a safetensors file as f64 (F32, F64, BF16 and F16 accepted), keyed by name.
pub fn read_safetensors(path: &Path) -> Result<TensorMap> {
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    // SAFETY: the file is opened read-only and only read during this function; a concurrent writer
    // truncating it is outside our contract (checkpoints are written to a temp dir and renamed).
    let mmap = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| Error::io(path, e))?;
    let st = SafeTensors::deserialize(&mmap).map_err(|e| Error::SafeTensors {
        path: path.into(),
        msg: e.to_string(),
    })?;
    let mut out = BTreeMap::new();
    for (name, view) in st.tensors() {
        let data = view.data();
        let values: Vec<f64> = match view.dtype() {
            Dtype::F32 => data
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes(b.try_into().unwrap()) as f64)
                .collect(),
            Dtype::F64 => data
                .chunks_exact(8)
                .map(|b| f64::from_le_bytes(b.try_into().unwrap()))
                .collect(),
            Dtype::BF16 => data
                .chunks_exact(2)
                .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f64())
                .collect(),
            Dtype::F16 => data
                .chunks_exact(2)
                .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f64())
                .collect(),
            other => {
                return Err(Error::bad_file(
                    path,
                    &name,
                    format!("dtype {other:?}; expected F32, F64, BF16 or F16"),
                ))
            }
        };
        out.insert(name, (view.shape().to_vec(), values));
    }
    Ok(out)
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

/// Directory of the checkpoint after `step` steps.
pub fn step_dir(run_dir: &Path, step: usize) -> PathBuf {
    run_dir.join("checkpoints").join(format!("step_{step}"))
}

/// The newest complete checkpoint of a run directory (one with a `state.json`).
pub fn latest(run_dir: &Path) -> Result<Option<(usize, PathBuf)>> {
    let dir = run_dir.join("checkpoints");
    if !dir.is_dir() {
        return Ok(None);
    }
    let mut best: Option<(usize, PathBuf)> = None;
    for entry in std::fs::read_dir(&dir).map_err(|e| Error::io(&dir, e))? {
        let entry = entry.map_err(|e| Error::io(&dir, e))?;
        let name = entry.file_name().to_string_lossy().to_string();
        let Some(n) = name
            .strip_prefix("step_")
            .and_then(|s| s.parse::<usize>().ok())
        else {
            continue;
        };
        if entry.path().join("state.json").is_file() && best.as_ref().is_none_or(|(b, _)| n > *b) {
            best = Some((n, entry.path()));
        }
    }
    Ok(best)
}

fn buf_f64<BK: Backend>(be: &BK, buf: &BK::Buf) -> Result<Vec<f64>> {
    Ok(be
        .download(buf)?
        .into_iter()
        .map(<BK::T as Scalar>::to_f64)
        .collect())
}

/// Write a checkpoint atomically; returns its directory.
pub fn save<BK: Backend>(
    be: &BK,
    run_dir: &Path,
    model: &Gpt2<BK>,
    opt: &Optimizer<BK>,
    state: &TrainState,
) -> Result<PathBuf> {
    let final_dir = step_dir(run_dir, state.step);
    let tmp = run_dir
        .join("checkpoints")
        .join(format!(".step_{}.tmp", state.step));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
    }
    std::fs::create_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;

    let flat = model.params_f64(be)?;
    let tensors: Vec<(String, Vec<usize>, Vec<u8>)> = to_hf(&model.cfg, &model.table, &flat)
        .into_iter()
        .map(|t| {
            (
                format!("{HF_PREFIX}{}", t.name),
                t.shape,
                to_bytes::<BK::T>(&t.values),
            )
        })
        .collect();
    // ONE metadata key per file: safetensors serialises the metadata map in hash order, so a second key
    // would make the file bytes differ from run to run (the model config is in state.json instead).
    let mut meta = HashMap::new();
    meta.insert("format".to_string(), "pt".to_string());
    write_safetensors::<BK::T>(&tmp.join("model.safetensors"), &tensors, meta)?;

    let mut opt_tensors = Vec::new();
    for (name, buf) in opt.state_tensors() {
        let v = buf_f64(be, buf)?;
        opt_tensors.push((name.to_string(), vec![v.len()], to_bytes::<BK::T>(&v)));
    }
    let mut meta = HashMap::new();
    meta.insert("optimizer_step".to_string(), opt.step.to_string());
    write_safetensors::<BK::T>(&tmp.join("optim.safetensors"), &opt_tensors, meta)?;

    // A basis that changes during training (svd: U, V and the last refresh) is saved in f64.
    if opt.rotation.has_state() {
        let tensors: Vec<(String, Vec<usize>, Vec<u8>)> = opt
            .rotation
            .state(be)?
            .into_iter()
            .map(|(name, shape, values)| (name, shape, to_bytes::<f64>(&values)))
            .collect();
        let mut meta = HashMap::new();
        meta.insert("rotation".to_string(), state.rotation.kind.to_string());
        write_safetensors::<f64>(&tmp.join("rotation.safetensors"), &tensors, meta)?;
    }

    let json = serde_json::to_vec_pretty(state).expect("state serialises");
    let p = tmp.join("state.json");
    std::fs::write(&p, json).map_err(|e| Error::io(&p, e))?;

    if final_dir.exists() {
        std::fs::remove_dir_all(&final_dir).map_err(|e| Error::io(&final_dir, e))?;
    }
    std::fs::rename(&tmp, &final_dir).map_err(|e| Error::io(&final_dir, e))?;
    Ok(final_dir)
}

/// Restore weights, optimizer state and the train state from a checkpoint directory.
pub fn load<BK: Backend>(
    be: &BK,
    dir: &Path,
    model: &mut Gpt2<BK>,
    opt: &mut Optimizer<BK>,
) -> Result<TrainState> {
    let sp = dir.join("state.json");
    let text = std::fs::read_to_string(&sp).map_err(|e| Error::io(&sp, e))?;
    let state: TrainState = serde_json::from_str(&text).map_err(|e| Error::Json {
        path: sp.clone(),
        source: e,
    })?;
    if state.model != model.cfg {
        return Err(Error::bad_file(
            &sp,
            "model",
            format!(
                "checkpoint is for {:?}, but the run's model is {:?}",
                state.model, model.cfg
            ),
        ));
    }
    if state.dtype != BK::T::NAME {
        return Err(Error::bad_file(
            &sp,
            "dtype",
            format!(
                "checkpoint stores {}, the run computes in {}",
                state.dtype,
                BK::T::NAME
            ),
        ));
    }
    let mp = dir.join("model.safetensors");
    let tensors = read_safetensors(&mp)?;
    let (flat, _) = from_hf(&mp, &model.cfg, &model.table, &tensors)?;
    model.set_params_f64(be, &flat)?;

    let op = dir.join("optim.safetensors");
    let tensors = read_safetensors(&op)?;
    let kind = opt.kind.name();
    for (name, buf) in opt.state_tensors_mut() {
        let Some((shape, values)) = tensors.get(name) else {
            return Err(Error::bad_file(
                &op,
                name,
                format!("missing: the {kind} optimizer needs it"),
            ));
        };
        let n = be.buf_len(buf);
        if shape.as_slice() != [n] {
            return Err(Error::bad_file(
                &op,
                name,
                format!("shape {shape:?}, but the {kind} optimizer of this model keeps [{n}]"),
            ));
        }
        let v: Vec<BK::T> = values
            .iter()
            .map(|&x| <BK::T as Scalar>::from_f64(x))
            .collect();
        be.upload(buf, &v)?;
    }
    if opt.rotation.has_state() {
        let rp = dir.join("rotation.safetensors");
        let tensors = read_safetensors(&rp)?;
        opt.rotation.load_state(be, &rp, &tensors)?;
    }
    opt.step = state.step;
    Ok(state)
}
