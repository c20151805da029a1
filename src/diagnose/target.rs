//! The checkpoint being diagnosed: a run directory (its latest checkpoint) or a checkpoint directory, its
//! weights, its basis, and its optimizer as the checkpoint left it.

use super::hvp::Cpu64;
use crate::config::{OptimizerKind, RotationConfig, RunConfig};
use crate::error::{Error, Result};
use crate::model::ParamTable;
use crate::optim::Optimizer;
use crate::rotation::basis::Basis;
use crate::run::checkpoint::{self, TrainState};
use std::path::{Path, PathBuf};

/// The checkpoint being diagnosed.
pub struct Target {
    pub run_dir: PathBuf,
    pub dir: PathBuf,
    pub config: RunConfig,
    pub state: TrainState,
}

/// Resolve a run directory (latest checkpoint) or a checkpoint directory.
pub fn open_target(path: &Path) -> Result<Target> {
    let (run_dir, dir) = if path.join("state.json").is_file() {
        let run = path
            .parent()
            .and_then(Path::parent)
            .map(Path::to_path_buf)
            .unwrap_or_default();
        (run, path.to_path_buf())
    } else if path.join("config.json").is_file() {
        let Some((_, dir)) = checkpoint::latest(path)? else {
            return Err(Error::bad_file(
                path.join("checkpoints"),
                "checkpoints",
                "no checkpoint in this run (expected checkpoints/step_N/state.json)",
            ));
        };
        (path.to_path_buf(), dir)
    } else {
        return Err(Error::bad_file(
            path,
            "path",
            "expected a run directory (with config.json) or a checkpoint directory (with state.json)",
        ));
    };
    let config = RunConfig::read(&run_dir.join("config.json"))?;
    let sp = dir.join("state.json");
    let text = std::fs::read_to_string(&sp).map_err(|e| Error::io(&sp, e))?;
    let state: TrainState = serde_json::from_str(&text).map_err(|e| Error::Json {
        path: sp,
        source: e,
    })?;
    Ok(Target {
        run_dir,
        dir,
        config,
        state,
    })
}

/// The checkpoint's weights in the standard flat layout (f64).
pub fn load_weights(t: &Target, table: &ParamTable) -> Result<Vec<f64>> {
    let mp = t.dir.join("model.safetensors");
    let tensors = crate::tensors::read(&mp)?;
    Ok(crate::model::hf::from_hf(&mp, &t.state.model, table, &tensors)?.0)
}

/// The f64 CPU backend of the basis changes, with the threads of the current rayon pool (`--threads`).
fn pool_cpu() -> Cpu64 {
    Cpu64::new(rayon::current_num_threads(), false)
}

/// Build the basis of `rc` on the f64 CPU backend; `svd` loads its factors from the checkpoint.
pub(super) fn build_basis(
    t: &Target,
    rc: &RotationConfig,
    table: &ParamTable,
) -> Result<Basis<Cpu64>> {
    let be = pool_cpu();
    let mut basis = Basis::new(&be, rc, table)?;
    if basis.has_state() {
        let rp = t.dir.join("rotation.safetensors");
        if !rp.is_file() {
            return Err(Error::bad_file(
                &rp,
                "rotation",
                "missing: the svd and soap bases are the run's own, which only a checkpoint of an svd or soap run carries",
            ));
        }
        let tensors = crate::tensors::read(&rp)?;
        basis.load_state(&be, &rp, &tensors)?;
    }
    Ok(basis)
}

/// The run's AdamW as the checkpoint left it, in f64 on the CPU (the run's chain in the run's basis, with
/// the checkpoint's moments and step count), and its direction Rᵀ(m̂/(√v̂+ε)) in the standard layout.
/// Built once per `diagnose` (the last update of `hessian-rows` and `update-cv` both read it).
pub struct CheckpointAdam {
    opt: Optimizer<Cpu64>,
    /// Adam's direction at the checkpoint, standard layout.
    pub direction: Vec<f64>,
}

impl CheckpointAdam {
    /// Only AdamW keeps the per-coordinate moments the diagnostics read: another optimizer is an error.
    pub fn open(t: &Target, table: &ParamTable) -> Result<Self> {
        if t.state.optimizer != OptimizerKind::Adamw {
            return Err(Error::config(
                "update-cv",
                format!(
                    "needs AdamW's per-coordinate second moment; the run's optimizer is {}",
                    t.state.optimizer.name()
                ),
            ));
        }
        let (be, mut opt) = checkpoint_optimizer(t, table)?;
        let direction = opt.direction(&be)?;
        Ok(CheckpointAdam { opt, direction })
    }

    /// d = w_t − w_{t−1} of the checkpoint's last AdamW step (module docs of `diagnose`): the optimizer
    /// inverts its step at the step's learning rate.
    pub fn last_update(&self, t: &Target, table: &ParamTable, w: &[f64]) -> Vec<f64> {
        let prev = self
            .opt
            .previous_params(table, w, &self.direction, step_lr(t));
        w.iter().zip(&prev).map(|(w, p)| w - p).collect()
    }
}

/// Muon's direction at the checkpoint: a checkpoint keeps its momentum (and the AdamW part's moments) but
/// not the gradient its last step orthogonalized, so this is the direction of the step AFTER the
/// checkpoint, taken from the checkpoint's state with the gradient `grads` (standard layout) on a copy
/// of the weights `w`: the gradient clipped as the run clips, momentum, Newton–Schulz and the √max(1,
/// m/n) factor on the hidden weights, Adam's direction elsewhere, as training would take it (before the
/// learning rate).
pub fn muon_next_direction(
    t: &Target,
    table: &ParamTable,
    w: &[f64],
    grads: &[f64],
) -> Result<Vec<f64>> {
    if t.state.optimizer != OptimizerKind::Muon {
        return Err(Error::config(
            "update-cv",
            format!(
                "the run's optimizer is {}, not muon",
                t.state.optimizer.name()
            ),
        ));
    }
    let (be, mut opt) = checkpoint_optimizer(t, table)?;
    // the f64 CPU backend's buffers are the host vectors themselves
    let (mut params, mut g) = (w.to_vec(), grads.to_vec());
    // clipped as training clips before its step
    let norm = crate::optim::grad_norm(&be, &g)?;
    crate::optim::clip_grads(&be, &mut g, norm, t.config.train.clip)?;
    opt.step(&be, table, &mut params, &g, step_lr(t))?;
    opt.direction(&be)
}

/// The run's optimizer (its chain in its basis) with the checkpoint's state and step count, in f64 on
/// the CPU.
fn checkpoint_optimizer(t: &Target, table: &ParamTable) -> Result<(Cpu64, Optimizer<Cpu64>)> {
    let be = pool_cpu();
    let basis = build_basis(t, &t.state.rotation, table)?;
    let mut opt = Optimizer::for_run(&be, &t.config.train, basis, table)?;
    checkpoint::load_optimizer(&be, &t.dir, &mut opt, t.state.step)?;
    Ok((be, opt))
}

/// The learning rate of step t: from metrics.jsonl when it has the row, else the schedule.
fn step_lr(t: &Target) -> f64 {
    let step = t.state.step;
    if let Ok(rows) = crate::run::metrics::read(&t.run_dir.join("metrics.jsonl")) {
        if let Some(r) = rows.iter().rev().find(|r| r.step == step) {
            return r.lr;
        }
    }
    let tr = &t.config.train;
    crate::optim::schedule::lr_at(
        step.saturating_sub(1),
        tr.lr,
        tr.min_lr,
        tr.warmup,
        tr.decay_steps(),
    )
}

/// d = w_t − w_{t−1} of the checkpoint's last AdamW step ([`CheckpointAdam::last_update`]).
pub fn last_update(t: &Target, table: &ParamTable, w: &[f64]) -> Result<Vec<f64>> {
    Ok(CheckpointAdam::open(t, table)?.last_update(t, table, w))
}
