//! Checkpoints: `checkpoints/step_N/{model.safetensors, config.json, optim.safetensors, state.json}`,
//! written into a temporary directory and renamed into place, so a crash never leaves a half-written
//! checkpoint (a temporary directory left by a killed process is removed by the next save).
//!
//! `model.safetensors` uses Hugging Face GPT-2 names and layouts ([`crate::model::hf`], zero biases for a
//! model without biases), with `{"format": "pt"}` metadata, and `config.json` is its `GPT2Config`
//! ([`hf_config`]), so `transformers`' `GPT2LMHeadModel.from_pretrained(step_dir)` (and the Flax one) loads
//! the directory as it is. Weights are stored in the run's precision (F32, or F64 for `--precision fp64`)
//! so a resume is bit-identical; every file gets the permissions the umask gives.

use crate::backend::{Backend, Scalar};
use crate::config::{ModelConfig, OptimizerKind, RotationConfig};
use crate::data::loader::BatchSampler;
use crate::error::{Error, Result};
use crate::model::hf::{from_hf, hf_config, to_hf, HF_PREFIX};
use crate::model::Gpt2;
use crate::optim::Optimizer;
use crate::tensors;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
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

fn to_bytes<T: Scalar>(values: &[f64]) -> Vec<u8> {
    let v: Vec<T> = values.iter().map(|&x| <T as Scalar>::from_f64(x)).collect();
    bytemuck::cast_slice(&v).to_vec()
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

/// Prefix and suffix of the temporary directory a checkpoint is written into (`.step_N.tmp`).
const TMP_PREFIX: &str = ".step_";
const TMP_SUFFIX: &str = ".tmp";

/// Removes the temporary directories (`.step_N.tmp`) of `checkpoints/` that a killed process left,
/// best effort: one that cannot be removed is left for the next save.
fn remove_stale_tmp(checkpoints: &Path) {
    let Ok(entries) = std::fs::read_dir(checkpoints) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        let is_tmp = name
            .strip_prefix(TMP_PREFIX)
            .and_then(|s| s.strip_suffix(TMP_SUFFIX))
            .is_some_and(|n| n.parse::<usize>().is_ok());
        if is_tmp && entry.file_type().is_ok_and(|t| t.is_dir()) {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// Write a checkpoint atomically; returns its directory. The files are written into
/// `checkpoints/.step_N.tmp`, renamed to `step_N` when complete; a failed save removes its temporary
/// directory (best effort) and returns the error, and every save first removes those a killed process
/// left. Besides the tensors and `state.json`, the directory holds a Hugging Face `config.json`
/// ([`hf_config`]), so `transformers` loads it as is.
pub fn save<BK: Backend>(
    be: &BK,
    run_dir: &Path,
    model: &Gpt2<BK>,
    opt: &Optimizer<BK>,
    state: &TrainState,
) -> Result<PathBuf> {
    let mut opt_state = Vec::new();
    for (name, buf) in opt.state_tensors() {
        opt_state.push((name, buf_f64(be, buf)?));
    }
    save_state(be, run_dir, model, opt, &opt_state, state)
}

/// [`save`] with the optimizer's state tensors given whole on the host (a data-parallel run gathers a
/// sharded optimizer's from its ranks: `Optimizer::state_host`).
pub fn save_state<BK: Backend>(
    be: &BK,
    run_dir: &Path,
    model: &Gpt2<BK>,
    opt: &Optimizer<BK>,
    opt_state: &[(&'static str, Vec<f64>)],
    state: &TrainState,
) -> Result<PathBuf> {
    let checkpoints = run_dir.join("checkpoints");
    let final_dir = step_dir(run_dir, state.step);
    let tmp = checkpoints.join(format!("{TMP_PREFIX}{}{TMP_SUFFIX}", state.step));
    remove_stale_tmp(&checkpoints);
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
    }
    std::fs::create_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
    let written = write_files(be, &tmp, model, opt, opt_state, state).and_then(|()| {
        if final_dir.exists() {
            std::fs::remove_dir_all(&final_dir).map_err(|e| Error::io(&final_dir, e))?;
        }
        std::fs::rename(&tmp, &final_dir).map_err(|e| Error::io(&final_dir, e))
    });
    if let Err(e) = written {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(e);
    }
    Ok(final_dir)
}

/// The files of a checkpoint, written into the (temporary) directory `dir`.
fn write_files<BK: Backend>(
    be: &BK,
    dir: &Path,
    model: &Gpt2<BK>,
    opt: &Optimizer<BK>,
    opt_state: &[(&'static str, Vec<f64>)],
    state: &TrainState,
) -> Result<()> {
    let flat = model.params_f64(be)?;
    let encoded: Vec<tensors::Encoded> = to_hf(&model.cfg, &model.table, &flat)
        .into_iter()
        .map(|t| {
            (
                format!("{HF_PREFIX}{}", t.name),
                t.shape,
                to_bytes::<BK::T>(&t.values),
            )
        })
        .collect();
    drop(flat);
    // ONE metadata key per file: safetensors serialises the metadata map in hash order, so a second key
    // would make the file bytes differ from run to run (the model config is in state.json instead).
    let mut meta = HashMap::new();
    meta.insert("format".to_string(), "pt".to_string());
    tensors::write(&dir.join("model.safetensors"), BK::T::DTYPE, &encoded, meta)?;
    drop(encoded);

    let hf =
        serde_json::to_vec_pretty(&hf_config(&model.cfg, BK::T::DTYPE)).expect("config serialises");
    let p = dir.join("config.json");
    std::fs::write(&p, hf).map_err(|e| Error::io(&p, e))?;

    let mut opt_tensors = Vec::new();
    for (name, v) in opt_state {
        opt_tensors.push((name.to_string(), vec![v.len()], to_bytes::<BK::T>(v)));
    }
    let mut meta = HashMap::new();
    meta.insert("optimizer_step".to_string(), opt.step.to_string());
    tensors::write(
        &dir.join("optim.safetensors"),
        BK::T::DTYPE,
        &opt_tensors,
        meta,
    )?;
    drop(opt_tensors);

    // A basis that changes during training (svd: U, V and the last refresh) is saved in f64.
    if opt.basis.has_state() {
        let encoded: Vec<tensors::Encoded> = opt
            .basis
            .state(be)?
            .into_iter()
            .map(|(name, shape, values)| (name, shape, to_bytes::<f64>(&values)))
            .collect();
        let mut meta = HashMap::new();
        meta.insert("rotation".to_string(), state.rotation.kind.to_string());
        tensors::write(
            &dir.join("rotation.safetensors"),
            f64::DTYPE,
            &encoded,
            meta,
        )?;
    }

    let json = serde_json::to_vec_pretty(state).expect("state serialises");
    let p = dir.join("state.json");
    std::fs::write(&p, json).map_err(|e| Error::io(&p, e))
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
    let weights = tensors::read(&mp)?;
    let (flat, _) = from_hf(&mp, &model.cfg, &model.table, &weights)?;
    model.set_params_f64(be, &flat)?;

    load_optimizer(be, dir, opt, state.step)?;
    Ok(state)
}

/// Restores an optimizer's state from checkpoint `dir`, written after `step` steps: its moments
/// (`optim.safetensors`), the state of its basis (`rotation.safetensors`, svd only) and its step count.
pub fn load_optimizer<BK: Backend>(
    be: &BK,
    dir: &Path,
    opt: &mut Optimizer<BK>,
    step: usize,
) -> Result<()> {
    let op = dir.join("optim.safetensors");
    let moments = tensors::read(&op)?;
    let kind = opt.kind.name();
    // a data-parallel rank with a sharded optimizer keeps its range of the whole state
    let (part, layout) = (opt.shard_range(), opt.shard_layout_len());
    for (name, buf) in opt.state_tensors_mut() {
        let Some((shape, values)) = moments.get(name) else {
            return Err(Error::bad_file(
                &op,
                name,
                format!("missing: the {kind} optimizer needs it"),
            ));
        };
        let n = layout.unwrap_or_else(|| be.buf_len(buf));
        let whole = part.as_ref().map_or(0..n, |r| r.clone());
        if shape.as_slice() != [n] {
            let rank = part
                .as_ref()
                .map(|r| format!(" (this data-parallel rank loads {r:?} of it)"))
                .unwrap_or_default();
            return Err(Error::bad_file(
                &op,
                name,
                format!(
                    "shape {shape:?}, but the {kind} optimizer of this model keeps [{n}]{rank}"
                ),
            ));
        }
        let v: Vec<BK::T> = values[whole]
            .iter()
            .map(|&x| <BK::T as Scalar>::from_f64(x))
            .collect();
        be.upload(buf, &v)?;
    }
    if opt.basis.has_state() {
        let rp = dir.join("rotation.safetensors");
        let state = tensors::read(&rp)?;
        opt.basis.load_state(be, &rp, &state)?;
    }
    opt.step = step;
    Ok(())
}
