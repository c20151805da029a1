//! The options of a `gpt2` run as the user gave them, and their resolution into the [`RunConfig`] a run is
//! built from (`config.json`).
//!
//! Every option is optional so that one the user did not give never overrides a preset, a `--config` file
//! or a resumed run: the config is built from (preset | config file | resumed run), then each given option.
//! The command line fills a [`RunOptions`] (`cli::gpt2`); a sweep fills one per run.

use crate::config::{
    default_threads, BlockPartition, DeviceKind, EmbeddingRotation, ModelConfig, OptimizerKind,
    Precision, RotationKind, RunConfig, Scope, SoapInit, SoapMoment, TrainConfig, VectorRotation,
};

/// The `train` fields a resume may change (with [`crate::config::RUNTIME_FIELDS`]): how long the run
/// goes on, how often it is evaluated, checkpointed and logged.
const RESUME_RUNTIME_TRAIN_FIELDS: [&str; 5] = [
    "steps",
    "eval_every",
    "eval_batches",
    "checkpoint_every",
    "log_update_cv",
];
use crate::error::{Error, Result};
use std::path::PathBuf;

/// The `gpt2` options (the command line's `--help` documents each).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RunOptions {
    pub config: Option<PathBuf>,
    pub resume: Option<PathBuf>,
    pub model: Option<String>,
    pub n_layer: Option<usize>,
    pub n_head: Option<usize>,
    pub n_embd: Option<usize>,
    pub seq_len: Option<usize>,
    pub vocab_size: Option<usize>,
    pub bias: bool,
    pub data: Option<String>,
    pub batch_size: Option<usize>,
    pub grad_accum: Option<usize>,
    pub steps: Option<usize>,
    pub lr: Option<f64>,
    pub min_lr: Option<f64>,
    pub warmup: Option<usize>,
    pub lr_decay_steps: Option<usize>,
    pub wd: Option<f64>,
    pub beta1: Option<f64>,
    pub beta2: Option<f64>,
    pub eps: Option<f64>,
    pub clip: Option<f64>,
    pub optimizer: Option<OptimizerKind>,
    pub blocks: Option<BlockPartition>,
    pub momentum: Option<f64>,
    pub muon_lr: Option<f64>,
    pub muon_momentum: Option<f64>,
    pub muon_ns_steps: Option<usize>,
    /// `--muon-heavy-ball`: Muon's momentum without Nesterov.
    pub muon_heavy_ball: bool,
    pub eval_every: Option<usize>,
    pub eval_batches: Option<usize>,
    pub checkpoint_every: Option<usize>,
    pub seed: Option<u64>,
    pub rotation: Option<RotationKind>,
    pub rotation_block: Option<usize>,
    pub rotation_seed: Option<u64>,
    pub svd_every: Option<usize>,
    pub kron_stages: Option<usize>,
    pub soap_beta: Option<f64>,
    pub soap_every: Option<usize>,
    pub soap_first_moment: Option<SoapMoment>,
    pub soap_init: Option<SoapInit>,
    /// `--vector-rotation`: a new run without it gets `neuron` (`RotationConfig`'s default).
    pub vector_rotation: Option<VectorRotation>,
    /// `--embedding-rotation`: a new run without it gets `paper`.
    pub embedding_rotation: Option<EmbeddingRotation>,
    pub out: Option<PathBuf>,
    pub device: Option<DeviceKind>,
    pub precision: Option<Precision>,
    pub threads: Option<usize>,
    pub init_from: Option<PathBuf>,
    pub quiet: bool,
    pub log_update_cv: Option<usize>,
    /// `--max-memory` in bytes.
    pub max_memory: Option<u64>,
    /// `--devices`, `--rank`, `--world-size`, `--rendezvous`, `--replicate-optimizer` (None: one device,
    /// or what a resumed run's config says).
    pub parallel: Option<crate::config::Parallel>,
}

/// Seconds since the Unix epoch as `YYYYmmdd-HHMMSS` (UTC), for default run and sweep directory names.
pub fn utc_stamp() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // civil-from-days (Howard Hinnant's algorithm)
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}{m:02}{d:02}-{:02}{:02}{:02}",
        rem / 3600,
        (rem / 60) % 60,
        rem % 60
    )
}

impl RunOptions {
    /// Options that would change what a resumed run computes (and so break bit-identical resume).
    fn run_changing(&self) -> Vec<&'static str> {
        let mut v = Vec::new();
        let mut chk = |set: bool, name: &'static str| {
            if set {
                v.push(name)
            }
        };
        chk(self.config.is_some(), "--config");
        chk(self.model.is_some(), "--model");
        chk(self.n_layer.is_some(), "--n-layer");
        chk(self.n_head.is_some(), "--n-head");
        chk(self.n_embd.is_some(), "--n-embd");
        chk(self.seq_len.is_some(), "--seq-len");
        chk(self.vocab_size.is_some(), "--vocab-size");
        chk(self.bias, "--bias");
        chk(self.data.is_some(), "--data");
        chk(self.batch_size.is_some(), "--batch-size");
        chk(self.grad_accum.is_some(), "--grad-accum");
        chk(self.lr.is_some(), "--lr");
        chk(self.min_lr.is_some(), "--min-lr");
        chk(self.warmup.is_some(), "--warmup");
        chk(self.lr_decay_steps.is_some(), "--lr-decay-steps");
        chk(self.wd.is_some(), "--wd");
        chk(self.beta1.is_some(), "--beta1");
        chk(self.beta2.is_some(), "--beta2");
        chk(self.eps.is_some(), "--eps");
        chk(self.clip.is_some(), "--clip");
        chk(self.optimizer.is_some(), "--optimizer");
        chk(self.momentum.is_some(), "--momentum");
        chk(self.muon_lr.is_some(), "--muon-lr");
        chk(self.muon_momentum.is_some(), "--muon-momentum");
        chk(self.muon_ns_steps.is_some(), "--muon-ns-steps");
        chk(self.muon_heavy_ball, "--muon-heavy-ball");
        chk(self.seed.is_some(), "--seed");
        chk(self.rotation.is_some(), "--rotation");
        chk(self.rotation_block.is_some(), "--rotation-block");
        chk(self.rotation_seed.is_some(), "--rotation-seed");
        chk(self.svd_every.is_some(), "--svd-every");
        chk(self.kron_stages.is_some(), "--kron-stages");
        chk(self.soap_beta.is_some(), "--soap-beta");
        chk(self.soap_every.is_some(), "--soap-every");
        chk(self.soap_first_moment.is_some(), "--soap-first-moment");
        chk(self.soap_init.is_some(), "--soap-init");
        chk(self.vector_rotation.is_some(), "--vector-rotation");
        chk(self.embedding_rotation.is_some(), "--embedding-rotation");
        chk(self.blocks.is_some(), "--blocks");
        chk(self.out.is_some(), "--out");
        chk(self.precision.is_some(), "--precision");
        chk(self.init_from.is_some(), "--init-from");
        v
    }

    /// Builds the run's config. Returns it and whether this is a resume.
    ///
    /// A fresh run records its schedule: `lr_decay_steps` is written as a number (default: `steps`), so a
    /// later `--resume --steps N` extends the run without moving its schedule, and `--config` replays it.
    /// On resume, a run-changing option is accepted when it equals the stored value and refused, naming
    /// the field, when it would change it.
    pub fn to_config(&self) -> Result<(RunConfig, bool)> {
        if let Some(dir) = &self.resume {
            if self.config.is_some() {
                return Err(Error::config(
                    "--config",
                    "cannot be combined with --resume: a resumed run is rebuilt from its own config.json",
                ));
            }
            let path = dir.join("config.json");
            if !dir.is_dir() {
                return Err(Error::bad_file(
                    dir,
                    "--resume",
                    "does not exist; --resume takes a run directory (one with a config.json, written by \
                     `rotadam gpt2 --out DIR`)",
                ));
            }
            if dir.join("state.json").is_file() {
                return Err(Error::bad_file(
                    dir,
                    "--resume",
                    "is a checkpoint directory; --resume takes the run directory that holds it \
                     (runs/NAME, whose latest checkpoint is used)",
                ));
            }
            if !path.is_file() {
                return Err(Error::bad_file(
                    dir,
                    "--resume",
                    "is not a run directory: it has no config.json (--resume takes a directory written by \
                     `rotadam gpt2 --out DIR`)",
                ));
            }
            if self.out.as_ref().is_some_and(|o| o != dir) {
                return Err(Error::config(
                    "--out",
                    format!(
                        "a resumed run stays in its directory {}; leave --out out",
                        dir.display()
                    ),
                ));
            }
            let mut stored = RunConfig::read(&path)?;
            // the schedule as it was: an older config.json without a decay step decayed over its steps
            stored.train.lr_decay_steps = Some(stored.train.decay_steps());
            stored.out = dir.clone();
            if !self.run_changing().is_empty() {
                let probe = RunOptions {
                    config: Some(path.clone()),
                    resume: None,
                    out: Some(dir.clone()),
                    ..self.computing()
                };
                let (asked, _) = probe.to_config()?;
                if let Some(field) = stored.difference(&asked, &RESUME_RUNTIME_TRAIN_FIELDS) {
                    return Err(Error::config(
                        "--resume",
                        format!(
                            "the options given would change {field} from {} to {}; a resumed run keeps \
                             its config.json (only --steps, --eval-every, --eval-batches, \
                             --checkpoint-every, --log-update-cv, --threads, --device, --devices and the \
                             other data-parallel options, --max-memory and --quiet may change); to train differently, start a new run with --out",
                            stored.field_text(&field),
                            asked.field_text(&field)
                        ),
                    ));
                }
            }
            let mut cfg = stored;
            self.apply_runtime(&mut cfg);
            cfg.validate()?;
            return Ok((cfg, true));
        }
        let mut cfg = match &self.config {
            Some(path) => RunConfig::read(path)?,
            None => {
                let preset = self.model.clone().unwrap_or_else(|| "small".into());
                RunConfig {
                    model: ModelConfig::preset(&preset)?,
                    train: TrainConfig::for_preset(&preset),
                    data: crate::config::preset_data(&preset).into(),
                    model_preset: preset,
                    rotation: Default::default(),
                    out: PathBuf::new(),
                    device: DeviceKind::Auto,
                    precision: Precision::Fp32,
                    threads: default_threads(),
                    init_from: None,
                    quiet: false,
                    max_memory: None,
                    parallel: Default::default(),
                }
            }
        };
        if self.config.is_some() {
            if let Some(preset) = &self.model {
                cfg.model = ModelConfig::preset(preset)?;
                cfg.model_preset = preset.clone();
            }
        }
        let m = &mut cfg.model;
        let dims = [
            (&mut m.n_layer, self.n_layer),
            (&mut m.n_head, self.n_head),
            (&mut m.n_embd, self.n_embd),
            (&mut m.seq_len, self.seq_len),
            (&mut m.vocab_size, self.vocab_size),
        ];
        let mut custom = false;
        for (field, flag) in dims {
            if let Some(v) = flag {
                custom |= *field != v;
                *field = v;
            }
        }
        if self.bias {
            m.bias = true;
        }
        if custom {
            cfg.model_preset = format!("{}+custom", cfg.model_preset);
        }
        let t = &mut cfg.train;
        macro_rules! set {
            ($($field:ident <- $flag:ident),*) => { $( if let Some(v) = self.$flag { t.$field = v; } )* };
        }
        set!(batch_size <- batch_size, grad_accum <- grad_accum, warmup <- warmup,
             weight_decay <- wd, beta1 <- beta1, beta2 <- beta2, eps <- eps, clip <- clip,
             optimizer <- optimizer, blocks <- blocks, momentum <- momentum, seed <- seed);
        let mu = &mut t.muon;
        if let Some(v) = self.muon_lr {
            mu.lr = v;
        }
        if let Some(v) = self.muon_momentum {
            mu.momentum = v;
        }
        if let Some(v) = self.muon_ns_steps {
            mu.ns_steps = v;
        }
        if self.muon_heavy_ball {
            mu.nesterov = false;
        }
        if let Some(lr) = self.lr {
            t.lr = lr;
            t.min_lr = self.min_lr.unwrap_or(lr / 10.0);
        } else if let Some(min_lr) = self.min_lr {
            t.min_lr = min_lr;
        }
        if self.lr_decay_steps.is_some() {
            t.lr_decay_steps = self.lr_decay_steps;
        }
        if let Some(d) = &self.data {
            cfg.data = d.clone();
            // Data prepared with a compact vocabulary (`prepare --compact-vocab`, `demo-compact`) sets
            // the model's vocabulary unless --vocab-size or a --config file does.
            if self.vocab_size.is_none() && self.config.is_none() && d != crate::data::DEMO {
                let dir = crate::data::resolve(d, self.quiet)?;
                if let Some(k) = crate::data::meta_vocab_size(&dir)? {
                    if cfg.model.vocab_size != k {
                        cfg.model.vocab_size = k;
                        cfg.model_preset = format!("{}+vocab{k}", cfg.model_preset);
                    }
                }
            }
        }
        if let Some(r) = self.rotation {
            cfg.rotation.kind = r;
        }
        if let Some(n) = self.rotation_block {
            cfg.rotation.block = n;
        }
        if let Some(f) = self.svd_every {
            cfg.rotation.svd_every = f;
        }
        if let Some(k) = self.kron_stages {
            cfg.rotation.kron_stages = k;
        }
        if let Some(b) = self.soap_beta {
            cfg.rotation.soap.beta = b;
        }
        if let Some(f) = self.soap_every {
            cfg.rotation.soap.every = f;
        }
        if let Some(m) = self.soap_first_moment {
            cfg.rotation.soap.first_moment = m;
        }
        if let Some(i) = self.soap_init {
            cfg.rotation.soap.init = i;
        }
        // a new run's neurons are RotationConfig's defaults; a --config file keeps its own (a file
        // without them reads as what it ran: `rotation.vectors` mixed)
        if let Some(v) = self.vector_rotation {
            cfg.rotation.vectors = v;
        }
        if let Some(e) = self.embedding_rotation {
            cfg.rotation.embeddings = e;
        }
        // the rotation seed follows --seed unless given (or fixed by a --config file)
        match self.rotation_seed {
            Some(s) => cfg.rotation.seed = s,
            None if self.config.is_none() => cfg.rotation.seed = cfg.train.seed,
            None => {}
        }
        if let Some(p) = self.precision {
            cfg.precision = p;
        }
        if let Some(p) = &self.init_from {
            cfg.init_from = Some(p.clone());
        }
        self.apply_runtime(&mut cfg);
        cfg.train.lr_decay_steps = Some(cfg.train.decay_steps());
        cfg.out = match &self.out {
            Some(o) => o.clone(),
            None => PathBuf::from("runs").join(format!(
                "gpt2-{}-{}-s{}-{}",
                cfg.model_preset,
                cfg.rotation.kind,
                cfg.train.seed,
                utc_stamp()
            )),
        };
        cfg.validate()?;
        Ok((cfg, false))
    }

    /// Settings that do not change what is computed: allowed on resume too.
    fn apply_runtime(&self, cfg: &mut RunConfig) {
        let t = &mut cfg.train;
        if let Some(v) = self.steps {
            t.steps = v;
        }
        if let Some(v) = self.eval_every {
            t.eval_every = v;
        }
        if let Some(v) = self.eval_batches {
            t.eval_batches = v;
        }
        if let Some(v) = self.checkpoint_every {
            t.checkpoint_every = v;
        }
        if let Some(v) = self.log_update_cv {
            t.log_update_cv = v;
        }
        if let Some(v) = self.threads {
            cfg.threads = v;
        }
        if let Some(d) = self.device {
            cfg.device = d;
        }
        if self.max_memory.is_some() {
            cfg.max_memory = self.max_memory;
        }
        if let Some(p) = &self.parallel {
            cfg.parallel = p.clone();
        }
        cfg.quiet = self.quiet;
    }

    /// These options without the runtime ones (what [`RunOptions::run_changing`] checks).
    fn computing(&self) -> RunOptions {
        RunOptions {
            steps: None,
            eval_every: None,
            eval_batches: None,
            checkpoint_every: None,
            log_update_cv: None,
            threads: None,
            device: None,
            max_memory: None,
            parallel: None,
            quiet: false,
            ..self.clone()
        }
    }

    /// Options given that the run's optimizer or rotation does not use: an error for those that would
    /// surely be a mistake, a warning (returned) where a script may pass them to every run. A resumed
    /// run is not checked (its options must equal the stored ones).
    pub fn check_used(&self, cfg: &RunConfig) -> Result<Vec<String>> {
        if self.resume.is_some() {
            return Ok(Vec::new());
        }
        let opt = cfg.train.optimizer;
        let kind = cfg.rotation.kind;
        let mut unused: Vec<(&str, String)> = Vec::new();
        let mut given = |set: bool, flag: &'static str, used: bool, by: String| {
            if set && !used {
                unused.push((flag, by));
            }
        };
        let by_opt = format!("the optimizer {}", opt.name());
        let by_rot = format!("--rotation {kind}");
        given(
            self.blocks.is_some(),
            "--blocks",
            opt == OptimizerKind::BlockwiseAdam,
            format!("{by_opt} (only blockwise-adam has blocks)"),
        );
        given(
            self.momentum.is_some(),
            "--momentum",
            opt == OptimizerKind::Sgd,
            format!("{by_opt} (only sgd uses it; Adam's momentum is --beta1)"),
        );
        for (set, flag) in [
            (self.muon_lr.is_some(), "--muon-lr"),
            (self.muon_momentum.is_some(), "--muon-momentum"),
            (self.muon_ns_steps.is_some(), "--muon-ns-steps"),
            (self.muon_heavy_ball, "--muon-heavy-ball"),
        ] {
            given(
                set,
                flag,
                opt == OptimizerKind::Muon,
                format!("{by_opt} (only muon uses it)"),
            );
        }
        for (set, flag) in [
            (self.beta1.is_some(), "--beta1"),
            (self.beta2.is_some(), "--beta2"),
            (self.eps.is_some(), "--eps"),
        ] {
            given(
                set,
                flag,
                opt != OptimizerKind::Sgd,
                format!("{by_opt} (its momentum is --momentum)"),
            );
        }
        given(
            self.svd_every.is_some(),
            "--svd-every",
            kind == RotationKind::Svd,
            by_rot.clone(),
        );
        given(
            self.kron_stages.is_some(),
            "--kron-stages",
            kind == RotationKind::Kron,
            by_rot.clone(),
        );
        for (set, flag) in [
            (self.soap_beta.is_some(), "--soap-beta"),
            (self.soap_every.is_some(), "--soap-every"),
            (self.soap_first_moment.is_some(), "--soap-first-moment"),
            (self.soap_init.is_some(), "--soap-init"),
        ] {
            given(set, flag, kind == RotationKind::Soap, by_rot.clone());
        }
        given(
            self.rotation_block.is_some(),
            "--rotation-block",
            matches!(kind, RotationKind::Scope(s) if s != Scope::None),
            by_rot.clone(),
        );
        // what a neuron is: the groups of the neuron scopes, and blockwise Adam's neuron blocks
        let neuron_blocks =
            opt == OptimizerKind::BlockwiseAdam && cfg.train.blocks == BlockPartition::Neuron;
        let neurons_used =
            matches!(kind, RotationKind::Scope(Scope::Output | Scope::Input)) || neuron_blocks;
        // `layer` and `global` look at the embeddings too, but only at whether they are rotated
        let whole_scope = matches!(kind, RotationKind::Scope(Scope::Layer | Scope::Global));
        for (set, flag, used, which) in [
            (
                self.vector_rotation.is_some(),
                "--vector-rotation",
                neurons_used,
                "only --rotation output or input, and blockwise-adam with --blocks neuron, have neurons",
            ),
            (
                self.embedding_rotation.is_some(),
                "--embedding-rotation",
                neurons_used || whole_scope,
                "only --rotation output, input, layer or global, and blockwise-adam with --blocks \
                 neuron, rotate or split the embeddings",
            ),
        ] {
            given(
                set,
                flag,
                used,
                format!("{by_rot} with the optimizer {} ({which})", opt.name()),
            );
        }
        if let Some((flag, by)) = unused.first() {
            return Err(Error::config(
                flag.trim_start_matches('-'),
                format!("{flag} is not used by {by}; leave it out or choose what uses it"),
            ));
        }
        let mut warnings = Vec::new();
        if whole_scope
            && !neuron_blocks
            && self.embedding_rotation == Some(crate::config::EmbeddingRotation::Head)
        {
            warnings.push(format!(
                "--embedding-rotation head is the same as paper under {by_rot} (only none changes it)"
            ));
        }
        let seeded = matches!(kind, RotationKind::Scope(s) if s != Scope::None)
            || kind == RotationKind::Kron;
        if self.rotation_seed.is_some() && !seeded {
            warnings.push(format!(
                "--rotation-seed has no effect under {by_rot} (it draws no random rotation)"
            ));
        }
        Ok(warnings)
    }
}
