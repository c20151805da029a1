//! Every setting of a run, as serde structs whose `Default`s are the paper's values (Maes et al. App. D.2,
//! nanoGPT). A run directory's `config.json` is a serialised [`RunConfig`]; `rotadam gpt2 --config FILE`
//! rebuilds the same run from it.

mod kinds;

pub(crate) use kinds::choice_impls;

pub use kinds::{
    BlockPartition, Choice, DeviceKind, EmbeddingRotation, OptimizerKind, Precision, RotationKind,
    Scope, SoapInit, SoapMoment, VectorRotation,
};

use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// The worker threads a run uses unless told otherwise: every core.
pub fn default_threads() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

/// The GPT-2 architecture.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelConfig {
    pub n_layer: usize,
    pub n_head: usize,
    pub n_embd: usize,
    /// Context length (nanoGPT's `block_size`); also the size of the position embedding.
    pub seq_len: usize,
    pub vocab_size: usize,
    /// Biases in the linear layers and LayerNorms (GPT-2 has them; the paper trains without).
    pub bias: bool,
}

/// Names accepted by `--model`.
pub const MODEL_PRESETS: &[&str] = &[
    "small",
    "experiment",
    "124m",
    "350m",
    "774m",
    "1558m",
    "tiny",
];

/// The data a new run of a model preset reads unless `--data` says otherwise: `demo-closed` for the
/// `experiment` preset (its vocabulary is that data's), the demo corpus for the others.
pub fn preset_data(preset: &str) -> &'static str {
    match preset {
        "experiment" => crate::data::DEMO_CLOSED,
        _ => crate::data::DEMO,
    }
}

impl ModelConfig {
    /// A named preset: `124m` … `1558m` are the GPT-2 family; `small` is the CPU demo model
    /// (4 layers, 4 heads, 128 wide, context 128); `experiment` the CPU model of the committed sweeps
    /// (6 layers, 4 heads, 128 wide, context 128, the 4,286-token closed vocabulary of `demo-closed`), whose
    /// embeddings are 32% of its parameters as they are 31% of GPT-2 124M's (`docs/experiments.md`);
    /// `tiny` is for tests (2 layers, 2 heads, 16 wide, context 16, vocabulary 64).
    pub fn preset(name: &str) -> Result<Self> {
        let (n_layer, n_head, n_embd, seq_len, vocab_size) = match name {
            "small" => (4, 4, 128, 128, 50257),
            "experiment" => (6, 4, 128, 128, EXPERIMENT_VOCAB),
            "124m" => (12, 12, 768, 1024, 50257),
            "350m" => (24, 16, 1024, 1024, 50257),
            "774m" => (36, 20, 1280, 1024, 50257),
            "1558m" => (48, 25, 1600, 1024, 50257),
            "tiny" => (2, 2, 16, 16, 64),
            other => {
                return Err(Error::config(
                    "--model",
                    format!(
                        "unknown model '{other}'; expected one of {}",
                        MODEL_PRESETS.join(", ")
                    ),
                ))
            }
        };
        Ok(ModelConfig {
            n_layer,
            n_head,
            n_embd,
            seq_len,
            vocab_size,
            bias: false,
        })
    }

    pub fn validate(&self) -> Result<()> {
        let positive = [
            ("n_layer", self.n_layer),
            ("n_head", self.n_head),
            ("n_embd", self.n_embd),
            ("seq_len", self.seq_len),
            ("vocab_size", self.vocab_size),
        ];
        for (field, v) in positive {
            if v == 0 {
                return Err(Error::config(field, "must be at least 1"));
            }
        }
        if !self.n_embd.is_multiple_of(self.n_head) {
            return Err(Error::config(
                "n_embd",
                format!(
                    "{} is not divisible by n_head = {}",
                    self.n_embd, self.n_head
                ),
            ));
        }
        if self.vocab_size > 65536 {
            return Err(Error::config(
                "vocab_size",
                format!(
                    "{} exceeds the uint16 token format (at most 65536)",
                    self.vocab_size
                ),
            ));
        }
        Ok(())
    }

    pub fn head_size(&self) -> usize {
        self.n_embd / self.n_head
    }
}

/// The vocabulary of the `experiment` preset: `demo-closed`'s 4,285 tokens plus its unknown token (a
/// test checks that the prepared data agrees).
pub const EXPERIMENT_VOCAB: usize = 4286;

/// The rotation of the optimizer's basis (Maes et al. §2.3, App. C): its kind, block size n, seed, and
/// what a neuron is (for the neuron scopes and blockwise Adam's neuron blocks).
///
/// `Default` is what a new run gets; a field missing from a file reads as what the code did before the
/// field existed (each field's serde default), which is not always the same.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RotationConfig {
    pub kind: RotationKind,
    /// Size n of the repeated Haar block R_n (the paper's 768).
    #[serde(default = "default_rotation_block")]
    pub block: usize,
    pub seed: u64,
    /// `svd`: refresh the singular vectors every F steps (the poster's F).
    #[serde(default = "default_svd_every")]
    pub svd_every: usize,
    /// `svd`: canonical bases for new runs; a `config.json` or `state.json` written before this field
    /// existed reads as `faer` (faer's signs and null-space completion), which is what it ran.
    #[serde(default = "legacy_svd_basis")]
    pub svd_basis: SvdBasis,
    /// `kron`: number of chained permutation + Kronecker stages (Xie et al. App. D.1).
    #[serde(default = "default_kron_stages")]
    pub kron_stages: usize,
    /// `soap`: its factors' decay, refresh period, first moment and initial bases.
    #[serde(default)]
    pub soap: SoapConfig,
    /// What a neuron is for the 1-D tensors, under `output` and `input` and for blockwise Adam's neuron
    /// blocks. New runs get [`VectorRotation::Neuron`] (the `Default` below, the paper's definition); a
    /// `config.json` or `state.json` written before this field existed was trained with `mixed`, and
    /// reads so (the serde default), so that it replays what it ran.
    #[serde(default = "legacy_vectors")]
    pub vectors: VectorRotation,
    /// How the embeddings split into neurons, under `output` and `input` and for blockwise Adam's neuron
    /// blocks. `paper` for new runs and for a `config.json` without the field (the only behaviour then).
    #[serde(default = "legacy_embeddings")]
    pub embeddings: EmbeddingRotation,
}

impl RotationConfig {
    /// The same rotation with the settings it does not use at their defaults, for comparing two runs'
    /// rotations: `svd_basis` matters to svd only (a file without it reads as `faer`, whatever its kind).
    pub fn normalized(&self) -> RotationConfig {
        let mut c = self.clone();
        if c.kind != RotationKind::Svd {
            c.svd_basis = SvdBasis::Canonical;
        }
        c
    }
}

/// What a config written before `vectors` existed computed: each 1-D tensor one group.
fn legacy_vectors() -> VectorRotation {
    VectorRotation::Mixed
}
/// What a config written before `svd_basis` existed computed: faer's bases.
fn legacy_svd_basis() -> SvdBasis {
    SvdBasis::Faer
}
/// What a config written before `embeddings` existed computed: the paper's transposed embeddings.
fn legacy_embeddings() -> EmbeddingRotation {
    EmbeddingRotation::Paper
}

fn default_rotation_block() -> usize {
    768
}
fn default_svd_every() -> usize {
    250
}
fn default_kron_stages() -> usize {
    2
}

impl Default for RotationConfig {
    fn default() -> Self {
        RotationConfig {
            kind: RotationKind::default(),
            block: default_rotation_block(),
            seed: 0,
            svd_every: default_svd_every(),
            svd_basis: SvdBasis::Canonical,
            kron_stages: default_kron_stages(),
            soap: SoapConfig::default(),
            vectors: VectorRotation::default(),
            embeddings: EmbeddingRotation::default(),
        }
    }
}

/// The bases of the `svd` rotation (`rotation::svd`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SvdBasis {
    /// Canonical order, signs and null-space completion (the same function as soap's).
    Canonical,
    /// faer's full singular vectors as they come: what svd runs trained before the canonical form.
    Faer,
}

/// `--rotation soap` (Vyas et al. 2024, "SOAP: Improving and Stabilizing Shampoo using Adam"): the defaults
/// are the released code's (`precondition_frequency=10`; its `shampoo_beta` unset means Adam's β₂, 0.95
/// there and by default here; `beta` is its own setting and does not follow `--beta2`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SoapConfig {
    /// Decay of the Kronecker factors L = EMA(G·Gᵀ), R = EMA(Gᵀ·G).
    pub beta: f64,
    /// Refresh the eigenbases every F steps.
    pub every: usize,
    /// Where Adam's first moment lives.
    pub first_moment: SoapMoment,
    /// The bases before the first refresh.
    pub init: SoapInit,
}

impl SoapConfig {
    /// β must be in [0, 1) (an error naming `soap-beta` otherwise).
    pub fn check_beta(&self) -> Result<()> {
        if (0.0..1.0).contains(&self.beta) {
            Ok(())
        } else {
            Err(Error::config(
                "soap-beta",
                format!("must be in [0, 1), got {}", self.beta),
            ))
        }
    }
}

impl Default for SoapConfig {
    fn default() -> Self {
        SoapConfig {
            beta: 0.95,
            every: 10,
            first_moment: SoapMoment::default(),
            init: SoapInit::default(),
        }
    }
}

/// Optimisation and schedule settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    pub batch_size: usize,
    pub grad_accum: usize,
    /// Total optimizer steps (a resumed run continues up to this number).
    pub steps: usize,
    pub lr: f64,
    pub min_lr: f64,
    pub warmup: usize,
    /// Step at which the cosine schedule reaches `min_lr` (nanoGPT's `lr_decay_iters`); None = `steps`.
    #[serde(default)]
    pub lr_decay_steps: Option<usize>,
    pub weight_decay: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    /// Gradient clipping on the global L2 norm (0 = off).
    pub clip: f64,
    pub optimizer: OptimizerKind,
    /// Blocks of blockwise Adam.
    #[serde(default)]
    pub blocks: BlockPartition,
    pub momentum: f64,
    pub eval_every: usize,
    pub eval_batches: usize,
    pub checkpoint_every: usize,
    pub seed: u64,
    /// Every N steps, log the update CV (std/mean of the singular values of Adam's update per 2-D weight;
    /// `optim::update_cv`) into metrics.jsonl; 0 = off. AdamW and Muon (its last step's direction).
    #[serde(default)]
    pub log_update_cv: usize,
    /// Muon's settings (`optimizer: muon`); absent from configs written before Muon existed.
    #[serde(default)]
    pub muon: MuonConfig,
}

/// Muon's hyper-parameters (Jordan et al. 2024, "Muon: An optimizer for hidden layers in neural
/// networks"; the defaults are that post's and its modded-nanogpt GPT-2 speedrun's).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MuonConfig {
    /// Peak learning rate of the Muon matrices; follows the same warmup and cosine schedule as `lr`
    /// (scaled by muon.lr / lr), which the AdamW part keeps.
    pub lr: f64,
    /// Momentum μ of the Muon matrices.
    pub momentum: f64,
    /// Nesterov momentum (the update is g + μ·buf instead of buf).
    pub nesterov: bool,
    /// Newton–Schulz iterations.
    pub ns_steps: usize,
}

impl Default for MuonConfig {
    fn default() -> Self {
        MuonConfig {
            lr: 0.02,
            momentum: 0.95,
            nesterov: true,
            ns_steps: 5,
        }
    }
}

impl Default for TrainConfig {
    /// The paper's GPT-2 124M settings (Maes et al. App. D.2, nanoGPT's train_gpt2 config).
    fn default() -> Self {
        TrainConfig {
            batch_size: 12,
            grad_accum: 40,
            steps: 100_000,
            lr: 6e-4,
            min_lr: 6e-5,
            warmup: 2000,
            lr_decay_steps: None,
            weight_decay: 0.1,
            beta1: 0.9,
            beta2: 0.95,
            eps: 1e-8,
            clip: 1.0,
            optimizer: OptimizerKind::Adamw,
            blocks: BlockPartition::Tensor,
            momentum: 0.9,
            eval_every: 1000,
            eval_batches: 200,
            checkpoint_every: 5000,
            seed: 1337,
            log_update_cv: 0,
            muon: MuonConfig::default(),
        }
    }
}

impl TrainConfig {
    /// Defaults for a model preset: the paper's for the GPT-2 family; for `small` a ~3-minute CPU run on the
    /// demo corpus; for `experiment` 1000 steps of 1024 tokens (about 0.9 epochs of `demo-closed`), with
    /// the learning rate the best of 2e-3, 3e-3 and 5e-3 for `none` (`docs/experiments.md`); for `tiny` a
    /// few-second test run.
    pub fn for_preset(preset: &str) -> Self {
        let paper = TrainConfig::default();
        match preset {
            "small" => TrainConfig {
                batch_size: 8,
                grad_accum: 1,
                steps: 400,
                lr: 2e-3,
                min_lr: 2e-4,
                warmup: 40,
                eval_every: 50,
                eval_batches: 8,
                checkpoint_every: 200,
                ..paper
            },
            "experiment" => TrainConfig {
                batch_size: 8,
                grad_accum: 1,
                steps: 1000,
                lr: 3e-3,
                min_lr: 3e-4,
                warmup: 50,
                eval_every: 100,
                eval_batches: 16,
                checkpoint_every: 500,
                ..paper
            },
            "tiny" => TrainConfig {
                batch_size: 4,
                grad_accum: 1,
                steps: 20,
                lr: 1e-2,
                min_lr: 1e-3,
                warmup: 2,
                eval_every: 10,
                eval_batches: 2,
                checkpoint_every: 10,
                ..paper
            },
            _ => paper,
        }
    }

    /// The step at which the cosine schedule ends.
    pub fn decay_steps(&self) -> usize {
        self.lr_decay_steps.unwrap_or(self.steps)
    }

    pub fn validate(&self) -> Result<()> {
        let positive = [
            ("batch_size", self.batch_size),
            ("grad_accum", self.grad_accum),
            ("steps", self.steps),
            ("eval_every", self.eval_every),
            ("eval_batches", self.eval_batches),
            ("checkpoint_every", self.checkpoint_every),
        ];
        for (field, v) in positive {
            if v == 0 {
                return Err(Error::config(field, "must be at least 1"));
            }
        }
        let finite_nonneg = [
            ("lr", self.lr),
            ("min_lr", self.min_lr),
            ("weight_decay", self.weight_decay),
            ("eps", self.eps),
            ("clip", self.clip),
            ("momentum", self.momentum),
        ];
        for (field, v) in finite_nonneg {
            if !(v.is_finite() && v >= 0.0) {
                return Err(Error::config(field, format!("{v} must be finite and ≥ 0")));
            }
        }
        if self.log_update_cv > 0
            && !matches!(self.optimizer, OptimizerKind::Adamw | OptimizerKind::Muon)
        {
            return Err(Error::config(
                "log-update-cv",
                format!(
                    "needs AdamW's per-coordinate second moment or Muon's step; the optimizer is {}",
                    self.optimizer.name()
                ),
            ));
        }
        if !(self.muon.lr.is_finite() && self.muon.lr >= 0.0) {
            return Err(Error::config(
                "muon-lr",
                format!("{} must be finite and ≥ 0", self.muon.lr),
            ));
        }
        if self.optimizer == OptimizerKind::Muon && self.muon.lr > 0.0 && self.lr == 0.0 {
            return Err(Error::config(
                "lr",
                "is 0, so Muon's schedule (muon-lr × the schedule of lr / lr) is undefined; give lr > 0",
            ));
        }
        if self.muon.ns_steps == 0 {
            return Err(Error::config("muon-ns-steps", "must be at least 1"));
        }
        for (field, v) in [
            ("beta1", self.beta1),
            ("beta2", self.beta2),
            ("momentum", self.momentum),
            ("muon-momentum", self.muon.momentum),
        ] {
            if !(0.0..1.0).contains(&v) {
                return Err(Error::config(field, format!("{v} must be in [0, 1)")));
            }
        }
        if self.min_lr > self.lr {
            return Err(Error::config(
                "min-lr",
                format!(
                    "{} is above the peak --lr {}: the cosine schedule decays from lr to min-lr",
                    self.min_lr, self.lr
                ),
            ));
        }
        if self.lr_decay_steps == Some(0) {
            return Err(Error::config("lr-decay-steps", "must be at least 1"));
        }
        Ok(())
    }

    /// Settings a user may mean but probably does not: said at the start of a run.
    pub fn warnings(&self) -> Vec<String> {
        let mut w = Vec::new();
        let decay = self.decay_steps();
        if self.warmup >= decay.min(self.steps) {
            w.push(format!(
                "warmup {} is not below the {} steps{}: the learning rate never reaches its peak {} and \
                 never decays",
                self.warmup,
                decay.min(self.steps),
                if decay < self.steps {
                    " of the cosine schedule (--lr-decay-steps)"
                } else {
                    " of the run"
                },
                self.lr
            ));
        }
        w
    }
}

/// Everything a `gpt2` run needs; serialised as the run directory's `config.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunConfig {
    /// The preset the model came from (`small`, `124m`, …), or `custom` when dimensions were overridden.
    pub model_preset: String,
    pub model: ModelConfig,
    pub train: TrainConfig,
    pub rotation: RotationConfig,
    /// `demo` (the embedded Shakespeare corpus), `demo-compact` (the same with only the token ids it uses)
    /// or a directory of token shards.
    pub data: String,
    pub out: PathBuf,
    pub device: DeviceKind,
    pub precision: Precision,
    pub threads: usize,
    pub init_from: Option<PathBuf>,
    pub quiet: bool,
    /// `--max-memory`: refuse a run whose estimated memory exceeds this many bytes (None: what the
    /// machine has available).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_memory: Option<u64>,
    /// Data parallelism: the devices and ranks the run is spread over (one device when empty). Given
    /// anew by every command (not kept in config.json: a resumed run is on one device unless told;
    /// history.jsonl records each command's).
    #[serde(skip)]
    pub parallel: Parallel,
}

/// Where a data-parallel run's ranks are (`--devices`, `--rank`, `--world-size`, `--rendezvous`;
/// `docs/usage.md`, "Several devices"). A runtime setting: the ranks sum the same micro-batches in
/// another order, so a run may resume on another number of devices and computes the same step to
/// rounding.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Parallel {
    /// The devices this process drives, one rank each (CUDA ordinals; on the CPU, one rank per entry, all
    /// on the host). Empty: device 0 alone.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub devices: Vec<usize>,
    /// Several processes (one rank each): this process's rank, the number of ranks, and the shared
    /// directory where rank 0 leaves the NCCL id for the others.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub processes: Option<Processes>,
    /// Keep the whole optimizer state on every rank instead of sharding AdamW's by rotation blocks
    /// (`--log-update-cv` needs it whole).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub replicate_optimizer: bool,
}

/// One process of a multi-process data-parallel run.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Processes {
    pub rank: usize,
    pub world_size: usize,
    pub rendezvous: PathBuf,
    /// The rank on its node when the device was not named (`--devices`): the device is then this rank
    /// modulo the devices the process sees (a launcher that gives each process one GPU makes it device
    /// 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub local_rank: Option<usize>,
}

impl Parallel {
    /// One rank on one device.
    pub fn is_single(&self) -> bool {
        self.world() == 1
    }
    /// W, the number of ranks over all processes.
    pub fn world(&self) -> usize {
        match &self.processes {
            Some(p) => p.world_size,
            None => self.devices.len().max(1),
        }
    }
    /// "4 ranks (devices 0, 1, 2, 3 of this process)" / "rank 3 of 8 (device 1; rendezvous /shared/x)".
    pub fn describe(&self) -> String {
        let list = |d: &[usize]| {
            d.iter()
                .map(|x| x.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        };
        match &self.processes {
            Some(p) => format!(
                "rank {} of {} (device {}; rendezvous {})",
                p.rank,
                p.world_size,
                list(&self.devices),
                p.rendezvous.display()
            ),
            None => format!(
                "{} ranks (devices {} of this process)",
                self.world(),
                list(&self.devices)
            ),
        }
    }
}

/// Fields of a [`RunConfig`] that do not change what a run computes: where it is written, how fast, how
/// loudly, on how many devices.
pub const RUNTIME_FIELDS: [&str; 6] = [
    "out",
    "threads",
    "device",
    "quiet",
    "max_memory",
    "parallel",
];

impl RunConfig {
    /// Reads a run's `config.json`, naming the file on any error.
    pub fn read(path: &Path) -> Result<RunConfig> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        serde_json::from_str(&text).map_err(|e| Error::Json {
            path: path.into(),
            source: e,
        })
    }

    pub fn validate(&self) -> Result<()> {
        self.model.validate()?;
        self.train.validate()?;
        if self.threads == 0 {
            return Err(Error::config("threads", "must be at least 1"));
        }
        let world = self.parallel.world();
        if world == 0 {
            return Err(Error::config("world-size", "must be at least 1"));
        }
        if let Some(p) = &self.parallel.processes {
            if p.rank >= p.world_size {
                return Err(Error::config(
                    "rank",
                    format!("{} is not below the world size {}", p.rank, p.world_size),
                ));
            }
            if self.parallel.devices.len() > 1 {
                return Err(Error::config(
                    "devices",
                    "a process of a multi-process run drives one device (one rank per process)",
                ));
            }
        }
        let mut seen = std::collections::BTreeSet::new();
        if let Some(d) = self.parallel.devices.iter().find(|d| !seen.insert(**d)) {
            return Err(Error::config(
                "devices",
                format!("device {d} is listed twice (one rank per device)"),
            ));
        }
        if !self.train.grad_accum.is_multiple_of(world) {
            return Err(Error::config(
                "grad-accum",
                format!(
                    "{} micro-batches per step cannot be shared by {world} data-parallel ranks: \
                     --grad-accum counts the micro-batches of all ranks together and must be a \
                     multiple of the number of ranks",
                    self.train.grad_accum
                ),
            ));
        }
        if self.train.optimizer == OptimizerKind::Muon
            && !matches!(
                self.rotation.kind,
                RotationKind::Scope(Scope::None) | RotationKind::Svd
            )
        {
            return Err(Error::config(
                "rotation",
                format!(
                    "muon orthogonalizes each weight as a matrix, so its basis must keep every tensor in \
                     place: --rotation none or svd, not {}",
                    self.rotation.kind
                ),
            ));
        }
        if self.rotation.kind == RotationKind::Soap && self.train.optimizer != OptimizerKind::Adamw
        {
            return Err(Error::config(
                "rotation",
                format!(
                    "soap runs Adam in the eigenbases of its factors, so it needs --optimizer adamw, not {}",
                    self.train.optimizer
                ),
            ));
        }
        if self.rotation.kind == RotationKind::Soap {
            self.rotation.soap.check_beta()?;
        }
        for (field, v) in [
            ("rotation-block", self.rotation.block),
            ("svd-every", self.rotation.svd_every),
            ("soap-every", self.rotation.soap.every),
            ("kron-stages", self.rotation.kron_stages),
        ] {
            if v == 0 {
                return Err(Error::config(field, "must be at least 1"));
            }
        }
        Ok(())
    }

    /// What this config computes, as JSON: without the [`RUNTIME_FIELDS`] and the `train_runtime` fields
    /// of `train`, with the schedule's decay length and the rotation in their normal forms (Null when a
    /// path is not UTF-8). Two configs with the same value train the same run.
    pub fn computing(&self, train_runtime: &[&str]) -> serde_json::Value {
        let mut c = self.clone();
        c.train.lr_decay_steps = Some(c.train.decay_steps());
        c.rotation = c.rotation.normalized();
        let mut v = serde_json::to_value(&c).unwrap_or(serde_json::Value::Null);
        if let Some(o) = v.as_object_mut() {
            for f in RUNTIME_FIELDS {
                o.remove(f);
            }
            if let Some(t) = o.get_mut("train").and_then(|t| t.as_object_mut()) {
                for f in train_runtime {
                    t.remove(*f);
                }
            }
        }
        v
    }

    /// The first field (a dotted path such as `train.lr`) in which two configs differ, leaving out the
    /// [`RUNTIME_FIELDS`] and the `train` fields named in `train_runtime`. A schedule written before the
    /// decay step was recorded (`lr_decay_steps: null`) ends at `steps`, and is compared as such.
    pub fn difference(&self, other: &RunConfig, train_runtime: &[&str]) -> Option<String> {
        let strip = |c: &RunConfig| c.computing(train_runtime);
        fn first_diff(a: &serde_json::Value, b: &serde_json::Value, path: &str) -> Option<String> {
            match (a.as_object(), b.as_object()) {
                (Some(x), Some(y)) => {
                    let keys: std::collections::BTreeSet<&String> =
                        x.keys().chain(y.keys()).collect();
                    keys.into_iter().find_map(|k| {
                        let p = if path.is_empty() {
                            k.clone()
                        } else {
                            format!("{path}.{k}")
                        };
                        match (x.get(k), y.get(k)) {
                            (Some(u), Some(v)) => first_diff(u, v, &p),
                            _ => Some(p),
                        }
                    })
                }
                _ => (a != b).then(|| {
                    if path.is_empty() {
                        "config".to_string()
                    } else {
                        path.to_string()
                    }
                }),
            }
        }
        let (a, b) = (strip(self), strip(other));
        if a.is_null() || b.is_null() {
            let (mut x, mut y) = (self.clone(), other.clone());
            for c in [&mut x, &mut y] {
                c.out = PathBuf::new();
                c.threads = 1;
                c.device = DeviceKind::Auto;
                c.quiet = false;
                c.max_memory = None;
                c.parallel = Parallel::default();
            }
            return (x != y).then(|| "config".to_string());
        }
        first_diff(&a, &b, "")
    }

    /// The value at a dotted path of [`RunConfig::difference`], as JSON text (for error messages).
    pub fn field_text(&self, path: &str) -> String {
        let v = serde_json::to_value(self).unwrap_or(serde_json::Value::Null);
        path.split('.')
            .try_fold(&v, |v, k| v.get(k))
            .map(|v| v.to_string())
            .unwrap_or_else(|| "(absent)".into())
    }

    /// Tokens consumed by one optimizer step.
    pub fn tokens_per_step(&self) -> usize {
        self.train.batch_size * self.train.grad_accum * self.model.seq_len
    }
}
