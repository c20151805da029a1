//! The command line: clap derive for raw flags, then validation into the configs the runs are built from.
//!
//! Every `gpt2` flag is optional so that a flag the user did not give never overrides a preset or a
//! `--config` file: the config is built from (preset | config file | resumed run), then each given flag.

use crate::config::{
    BlockPartition, DeviceKind, ModelConfig, OptimizerKind, Precision, RunConfig, TrainConfig,
};
use crate::error::{Error, Result};
use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;

#[derive(Parser, Debug)]
#[command(
    name = "rotadam",
    version,
    about = "Train GPT-2 and measure how Adam behaves under rotations of the parameter space"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Train GPT-2 (default: the small CPU model on the embedded Shakespeare corpus).
    Gpt2(Box<Gpt2Args>),
    /// Tokenize text (files, directories, JSON Lines with a `text` field) into train.bin / val.bin.
    Prepare(PrepareArgs),
    /// Benchmarks: GEMM peak and a full training step (prints JSON with --json).
    Bench(crate::bench::BenchArgs),
    /// Train every rotation (or an ablation's variants) over several seeds and write a report with figures.
    Sweep(Box<crate::sweep::SweepArgs>),
    /// Draw the loss curves of any runs into one PNG and SVG.
    Plot(crate::sweep::plot_runs::PlotArgs),
    /// Xie et al. §4.1: Adam, AdaSGD and SGD on a quadratic rotated by R(θ) = exp(θA); table and figure.
    Quadratic(crate::quadratic::QuadraticArgs),
    /// Diagnostics of a checkpoint in its rotated basis: linf, l11, spectral, hessian-rows, update-cv.
    Diagnose(crate::diagnose::DiagnoseArgs),
}

#[derive(Args, Debug, Default, Clone)]
pub struct Gpt2Args {
    /// Rebuild a run from a config.json (flags given here override it).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Continue the run in this directory from its latest checkpoint (--steps is the new total).
    #[arg(long)]
    pub resume: Option<PathBuf>,
    /// Model preset: small (CPU demo), 124m, 350m, 774m, 1558m, tiny.
    #[arg(long)]
    pub model: Option<String>,
    #[arg(long)]
    pub n_layer: Option<usize>,
    #[arg(long)]
    pub n_head: Option<usize>,
    #[arg(long)]
    pub n_embd: Option<usize>,
    #[arg(long)]
    pub seq_len: Option<usize>,
    #[arg(long)]
    pub vocab_size: Option<usize>,
    /// Biases in linear layers and LayerNorms (off by default, as in the paper).
    #[arg(long)]
    pub bias: bool,
    /// Token data: `demo` (embedded corpus) or a directory with train.bin/val.bin or llm.c shards.
    #[arg(long)]
    pub data: Option<String>,
    #[arg(long)]
    pub batch_size: Option<usize>,
    #[arg(long)]
    pub grad_accum: Option<usize>,
    /// Total optimizer steps.
    #[arg(long)]
    pub steps: Option<usize>,
    #[arg(long)]
    pub lr: Option<f64>,
    /// Final learning rate of the cosine schedule (default: lr/10).
    #[arg(long)]
    pub min_lr: Option<f64>,
    #[arg(long)]
    pub warmup: Option<usize>,
    /// Step at which the cosine decay reaches --min-lr (default: --steps).
    #[arg(long)]
    pub lr_decay_steps: Option<usize>,
    /// Decoupled weight decay (2-D weights only).
    #[arg(long)]
    pub wd: Option<f64>,
    #[arg(long)]
    pub beta1: Option<f64>,
    #[arg(long)]
    pub beta2: Option<f64>,
    #[arg(long)]
    pub eps: Option<f64>,
    /// Clip the global gradient norm to this value (0 = off).
    #[arg(long)]
    pub clip: Option<f64>,
    #[arg(long, value_enum)]
    pub optimizer: Option<OptimizerKind>,
    /// Blocks of blockwise Adam: one second moment per tensor or per output neuron (row).
    #[arg(long, value_enum)]
    pub blocks: Option<BlockPartition>,
    #[arg(long)]
    pub momentum: Option<f64>,
    #[arg(long)]
    pub eval_every: Option<usize>,
    #[arg(long)]
    pub eval_batches: Option<usize>,
    #[arg(long)]
    pub checkpoint_every: Option<usize>,
    #[arg(long)]
    pub seed: Option<u64>,
    /// Rotation of the optimizer's basis: none, global, layer, output, input, svd, kron.
    #[arg(long)]
    pub rotation: Option<String>,
    /// Size n of the repeated Haar block of the rotation.
    #[arg(long)]
    pub rotation_block: Option<usize>,
    /// Seed of the rotation (default: --seed).
    #[arg(long)]
    pub rotation_seed: Option<u64>,
    /// `--rotation svd`: recompute the gradient's singular vectors every F steps.
    #[arg(long)]
    pub svd_every: Option<usize>,
    /// `--rotation kron`: number of chained stages.
    #[arg(long)]
    pub kron_stages: Option<usize>,
    /// Run directory (default: runs/gpt2-<model>-<rotation>-s<seed>-<UTC time>).
    #[arg(long)]
    pub out: Option<PathBuf>,
    #[arg(long, value_enum)]
    pub device: Option<DeviceKind>,
    #[arg(long, value_enum)]
    pub precision: Option<Precision>,
    /// Worker threads (default: all cores).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Initialise from a Hugging Face GPT-2 model.safetensors.
    #[arg(long)]
    pub init_from: Option<PathBuf>,
    /// Print nothing but errors.
    #[arg(long)]
    pub quiet: bool,
    /// Every N steps, log the update CV (per 2-D weight, std/mean of the singular values of Adam's
    /// update) into metrics.jsonl (AdamW only; 0 = off).
    #[arg(long)]
    pub log_update_cv: Option<usize>,
}

#[derive(Args, Debug, Clone)]
pub struct PrepareArgs {
    /// Text files, directories (recursed) or .jsonl files with a `text` field.
    #[arg(long, required = true, num_args = 1..)]
    pub input: Vec<PathBuf>,
    /// Output directory for train.bin, val.bin and meta.json.
    #[arg(long)]
    pub out: PathBuf,
    /// Fraction of documents held out for validation.
    #[arg(long, default_value_t = crate::data::prepare::DEFAULT_VAL_FRACTION)]
    pub val_fraction: f64,
    /// Seed of the document-level val split.
    #[arg(long, default_value_t = crate::data::prepare::DEFAULT_SEED)]
    pub seed: u64,
    #[arg(long)]
    pub quiet: bool,
}

pub fn default_threads() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

/// Seconds since the Unix epoch as `YYYYmmdd-HHMMSS` (UTC), for default run directory names.
pub(crate) fn utc_stamp() -> String {
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

impl Gpt2Args {
    /// Flags that would change what a resumed run computes (and so break bit-identical resume).
    fn run_changing_flags(&self) -> Vec<&'static str> {
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
        chk(self.seed.is_some(), "--seed");
        chk(self.rotation.is_some(), "--rotation");
        chk(self.rotation_block.is_some(), "--rotation-block");
        chk(self.rotation_seed.is_some(), "--rotation-seed");
        chk(self.svd_every.is_some(), "--svd-every");
        chk(self.kron_stages.is_some(), "--kron-stages");
        chk(self.blocks.is_some(), "--blocks");
        chk(self.out.is_some(), "--out");
        chk(self.precision.is_some(), "--precision");
        chk(self.init_from.is_some(), "--init-from");
        v
    }

    /// Build the run's config. Returns it and whether this is a resume.
    pub fn to_config(&self) -> Result<(RunConfig, bool)> {
        if let Some(dir) = &self.resume {
            let changing = self.run_changing_flags();
            if !changing.is_empty() {
                return Err(Error::config(
                    "--resume",
                    format!(
                        "{} cannot be changed on resume (the run's config.json fixes it); only --steps, --eval-every, --eval-batches, --checkpoint-every, --log-update-cv, --threads, --device and --quiet may be given",
                        changing.join(", ")
                    ),
                ));
            }
            let mut cfg = read_config(&dir.join("config.json"))?;
            cfg.out = dir.clone();
            self.apply_runtime(&mut cfg);
            cfg.validate()?;
            return Ok((cfg, true));
        }
        let mut cfg = match &self.config {
            Some(path) => read_config(path)?,
            None => {
                let preset = self.model.clone().unwrap_or_else(|| "small".into());
                RunConfig {
                    model: ModelConfig::preset(&preset)?,
                    train: TrainConfig::for_preset(&preset),
                    model_preset: preset,
                    rotation: Default::default(),
                    data: "demo".into(),
                    out: PathBuf::new(),
                    device: DeviceKind::Auto,
                    precision: Precision::Fp32,
                    threads: default_threads(),
                    init_from: None,
                    quiet: false,
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
        }
        if let Some(r) = &self.rotation {
            cfg.rotation.kind = r.clone();
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
        cfg.quiet = self.quiet;
    }
}

/// Read a run's config.json, naming the file on any error.
pub fn read_config(path: &std::path::Path) -> Result<RunConfig> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    serde_json::from_str(&text).map_err(|e| Error::Json {
        path: path.into(),
        source: e,
    })
}
