//! The memory a run needs, estimated from its config before anything is allocated, so that a run too
//! large for the machine is refused with a message instead of being killed by the operating system.
//!
//! The estimate is per data-parallel rank (one device). It counts the buffers the trainer allocates: the parameters, their gradients, the optimizer's
//! moments, the activations of one micro-batch (`model::gpt2::activation_elements`) and what the rotation
//! keeps (its index plan and Haar blocks, or the svd factors, and the rotated work vectors), and the host
//! copies made while a checkpoint is written. It leaves out the program itself and its tokenizer, the
//! token data (memory-mapped, paged in by the OS), the val batches and per-thread scratch, which is why
//! a process's peak resident memory is somewhat above the estimate (`docs/usage.md` gives a measured
//! example).

use crate::config::{OptimizerKind, Precision, RotationKind, RunConfig};
use crate::error::{Error, Result};
use crate::model::gpt2::activation_elements;
use crate::model::ParamTable;
use serde::Serialize;

/// Bytes, by what holds them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct MemoryEstimate {
    pub params: u128,
    pub grads: u128,
    pub optimizer: u128,
    pub activations: u128,
    pub rotation: u128,
    /// Host copies made while a checkpoint is written: the weights in f64 (flat, and in Hugging Face
    /// layout), one optimizer tensor in f64, and the encoded tensors.
    pub checkpoint: u128,
}

impl MemoryEstimate {
    pub fn total(&self) -> u128 {
        self.params
            + self.grads
            + self.optimizer
            + self.activations
            + self.rotation
            + self.checkpoint
    }

    /// `total (parameters …, gradients …, …)` in binary units.
    pub fn describe(&self) -> String {
        format!(
            "{} (parameters {}, gradients {}, optimizer {}, activations {}, rotation {}, checkpoint \
             writing {})",
            bytes(self.total()),
            bytes(self.params),
            bytes(self.grads),
            bytes(self.optimizer),
            bytes(self.activations),
            bytes(self.rotation),
            bytes(self.checkpoint)
        )
    }
}

/// `n` bytes as `12.3 MiB`.
pub fn bytes(n: u128) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut x = n as f64;
    let mut u = 0;
    while x >= 1024.0 && u + 1 < units.len() {
        x /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{x:.1} {}", units[u])
    }
}

/// Parses `--max-memory` values such as `8G`, `512MiB`, `1.5GB` or a plain byte count (binary units:
/// K = 1024).
pub fn parse_size(s: &str) -> std::result::Result<u128, String> {
    let t = s.trim();
    let split = t
        .find(|ch: char| !(ch.is_ascii_digit() || ch == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let x: f64 = num
        .parse()
        .map_err(|_| format!("'{s}' is not a size; expected e.g. 8G, 512M or 1000000000"))?;
    let mult: u128 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        "t" | "tb" | "tib" => 1 << 40,
        other => {
            return Err(format!(
                "unknown unit '{other}' in '{s}'; expected K, M, G or T"
            ))
        }
    };
    if !(x.is_finite() && x > 0.0) {
        return Err(format!("'{s}' must be a positive size"));
    }
    Ok((x * mult as f64) as u128)
}

/// The memory `cfg`'s run allocates (module docs for what is counted).
pub fn estimate(cfg: &RunConfig) -> MemoryEstimate {
    let elem: u128 = match cfg.precision {
        Precision::Fp64 => 8,
        Precision::Fp32 | Precision::Bf16 => 4,
    };
    let table = ParamTable::new(&cfg.model);
    let p = table.total as u128;
    let tr = &cfg.train;
    let moments = match tr.optimizer {
        OptimizerKind::Adamw => 2 * p,
        OptimizerKind::Sgd => p,
        // m per coordinate; one v and one mean square
        OptimizerKind::Adasgd => p + 2,
        // m, v and the mean squares per block (at most one per coordinate), and the vector gathered into
        // block order when the blocks are not contiguous in the optimizer's layout
        OptimizerKind::BlockwiseAdam => 4 * p,
        // momentum on Muon's matrices, Adam's m and v on the rest, the Newton–Schulz work matrices
        OptimizerKind::Muon => {
            use crate::optim::muon;
            let parts = muon::parts(&table.entries);
            let (n_muon, n_adam) = muon::state_lens(&parts);
            (n_muon + 2 * n_adam + muon::scratch_len(&parts)) as u128
        }
    };
    // a data-parallel rank of a sharded AdamW (`optim::shard`) keeps m and v of its range (about p/W) and
    // one range in transit; under a block rotation also its blocks' direction and two u32 index lists
    // (its blocks', and every rank's placement: the whole layout)
    let world = cfg.parallel.world() as u128;
    let rotated = !matches!(
        cfg.rotation.kind,
        RotationKind::Scope(crate::config::Scope::None)
    );
    let sharded = world > 1
        && !cfg.parallel.replicate_optimizer
        && tr.log_update_cv == 0
        && tr.optimizer == OptimizerKind::Adamw
        && matches!(cfg.rotation.kind, RotationKind::Scope(_));
    let whole_moments = moments;
    let (moments, shard_index) = if sharded {
        let part = p.div_ceil(world);
        if rotated {
            (4 * part, 4 * (part + p))
        } else {
            (3 * part, 0)
        }
    } else {
        (moments, 0)
    };
    // blockwise Adam's gather into block order keeps a u32 index per coordinate
    let block_order = if tr.optimizer == OptimizerKind::BlockwiseAdam {
        4 * p
    } else {
        0
    };
    let n = cfg.rotation.block as u128;
    let rotation = match cfg.rotation.kind {
        RotationKind::Scope(crate::config::Scope::None) => 0,
        // the gather plan (an index list and the CPU backend's bucketed offsets: about 16 bytes per
        // coordinate), the Haar block(s), two work vectors
        RotationKind::Scope(_) => 16 * p + elem * (n * n + 2 * p),
        RotationKind::Svd | RotationKind::Soap => {
            // per 2-D tensor: U (m², none for the embeddings, rotated on their channel side only), V
            // (n²) and the tensor's m·n
            let sides: Vec<(u128, u128, u128)> = table
                .entries
                .iter()
                .filter(|e| e.is_matrix())
                .map(|e| {
                    let u = if e.role.is_embedding() {
                        0
                    } else {
                        e.rows * e.rows
                    };
                    (
                        u as u128,
                        (e.cols * e.cols) as u128,
                        (e.rows * e.cols) as u128,
                    )
                })
                .collect();
            let factors: u128 = sides.iter().map(|&(u, v, _)| u + v).sum();
            // the rotation's scratch: the largest non-embedding tensor (u = 0 only for embeddings)
            let scratch = sides
                .iter()
                .filter(|&&(u, _, _)| u > 0)
                .map(|&(_, _, mn)| mn)
                .max()
                .unwrap_or(0);
            let soap = if cfg.rotation.kind == RotationKind::Soap {
                // L and R as large as the bases, a G·Gᵀ scratch of the largest, and M (original form)
                // or the carried moment (eigenbasis form)
                let gram = sides.iter().map(|&(u, v, _)| u.max(v)).max().unwrap_or(0);
                let moment = match cfg.rotation.soap.first_moment {
                    crate::config::SoapMoment::Positional => 0,
                    _ => p,
                };
                factors + gram + moment
            } else {
                0
            };
            elem * (factors + scratch + 2 * p + soap)
        }
        // the stages' small factors are left out; a scratch and two work vectors
        RotationKind::Kron => elem * 3 * p,
    };
    MemoryEstimate {
        params: elem * p,
        grads: elem * p,
        optimizer: elem * moments,
        activations: elem * activation_elements(&cfg.model, tr.batch_size, cfg.model.seq_len),
        rotation: rotation + block_order + shard_index,
        // rank 0 gathers a sharded optimizer's state whole
        checkpoint: (16 + elem) * p + elem * whole_moments,
    }
}

/// The memory this process may still use: the smaller of the system's available memory and what its
/// control group (a container's limit) leaves; None where neither can be read.
pub fn available() -> Option<u128> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok().and_then(|s| {
        s.lines()
            .find(|l| l.starts_with("MemAvailable:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|kb| kb.parse::<u128>().ok())
            .map(|kb| kb * 1024)
    });
    let read = |p: &str| {
        std::fs::read_to_string(p)
            .ok()
            .and_then(|s| s.trim().parse::<u128>().ok())
    };
    let cgroup = match (
        read("/sys/fs/cgroup/memory.max"),
        read("/sys/fs/cgroup/memory.current"),
    ) {
        (Some(max), Some(cur)) => Some(max.saturating_sub(cur)),
        _ => None,
    };
    match (meminfo, cgroup) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// Refuses a run whose estimate exceeds `limit` (`--max-memory`) or, without one, the memory the machine
/// has available (`available`); the error names the estimate's parts and what would make it fit.
pub fn check(est: &MemoryEstimate, limit: Option<u128>, available: Option<u128>) -> Result<()> {
    let (cap, what, field) = match (limit, available) {
        (Some(l), _) => (l, "--max-memory".to_string(), "max-memory"),
        (None, Some(a)) => (a, "the memory available on this machine".into(), "memory"),
        (None, None) => return Ok(()),
    };
    if est.total() <= cap {
        return Ok(());
    }
    Err(Error::config(
        field,
        format!(
            "the run needs about {}, more than {what} ({}); lower --batch-size (activations grow with \
             it; --grad-accum keeps the tokens per step), --seq-len or the model, or raise --max-memory",
            est.describe(),
            bytes(cap)
        ),
    ))
}
