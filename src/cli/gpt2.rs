//! `rotadam gpt2`: every flag optional, so that a flag the user did not give never overrides a preset, a
//! `--config` file or a resumed run ([`RunOptions`] resolves them).

use super::{choice, model_default, threads_help, train_default};
use crate::config::{
    BlockPartition, DeviceKind, EmbeddingRotation, OptimizerKind, Precision, RotationKind,
    SoapInit, SoapMoment, VectorRotation,
};
use crate::run::options::RunOptions;
use clap::Args;
use std::path::PathBuf;

#[derive(Args, Debug, Default, Clone)]
pub struct Gpt2Args {
    /// Rebuild a run from a config.json (flags given here override it).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Continue the run in this directory from its latest checkpoint (--steps is the new total; the
    /// learning-rate schedule stays the one the run started with). Without a checkpoint yet, the run
    /// restarts from its config.json.
    #[arg(long)]
    pub resume: Option<PathBuf>,
    /// Model preset: small (CPU demo), experiment (the committed sweeps' CPU model, on demo-closed), 124m,
    /// 350m, 774m, 1558m (GPT-2), tiny (tests) [default: small].
    #[arg(long)]
    pub model: Option<String>,
    #[arg(long, help = model_default("Transformer blocks", |m| m.n_layer))]
    pub n_layer: Option<usize>,
    #[arg(long, help = model_default("Attention heads", |m| m.n_head))]
    pub n_head: Option<usize>,
    #[arg(long, help = model_default("Embedding width C", |m| m.n_embd))]
    pub n_embd: Option<usize>,
    #[arg(long, help = model_default("Context length T (sequence length of a batch)", |m| m.seq_len))]
    pub seq_len: Option<usize>,
    #[arg(long, help = model_default("Vocabulary size", |m| m.vocab_size))]
    pub vocab_size: Option<usize>,
    /// Biases in linear layers and LayerNorms (off by default, as in the paper).
    #[arg(long)]
    pub bias: bool,
    /// Token data: `demo` (the embedded corpus), `demo-compact` (the same with only the token ids it uses,
    /// which also sets --vocab-size), `demo-closed` (the tokens occurring 20+ times in train, the rest one
    /// unknown token; sets --vocab-size) or a directory with train.bin/val.bin or llm.c shards [default:
    /// demo; demo-closed for --model experiment].
    #[arg(long)]
    pub data: Option<String>,
    #[arg(long, help = train_default("Sequences per micro-batch", |t| t.batch_size.to_string()))]
    pub batch_size: Option<usize>,
    #[arg(long, help = train_default("Micro-batches accumulated per optimizer step", |t| t.grad_accum.to_string()))]
    pub grad_accum: Option<usize>,
    #[arg(long, help = train_default("Total optimizer steps (with --resume: the new total)", |t| t.steps.to_string()))]
    pub steps: Option<usize>,
    #[arg(long, help = train_default("Peak learning rate", |t| t.lr.to_string()))]
    pub lr: Option<f64>,
    #[arg(long, help = train_default("Final learning rate of the cosine schedule (with --lr alone: lr/10)", |t| t.min_lr.to_string()))]
    pub min_lr: Option<f64>,
    #[arg(long, help = train_default("Linear warm-up steps", |t| t.warmup.to_string()))]
    pub warmup: Option<usize>,
    /// Step at which the cosine decay reaches --min-lr, recorded in config.json so that extending the run
    /// with --resume --steps does not move it [default: --steps].
    #[arg(long)]
    pub lr_decay_steps: Option<usize>,
    #[arg(long, help = train_default("Decoupled weight decay λ (2-D weights only)", |t| t.weight_decay.to_string()))]
    pub wd: Option<f64>,
    #[arg(long, help = train_default("Adam's β₁ (also AdaSGD's and blockwise Adam's)", |t| t.beta1.to_string()))]
    pub beta1: Option<f64>,
    #[arg(long, help = train_default("Adam's β₂", |t| t.beta2.to_string()))]
    pub beta2: Option<f64>,
    #[arg(long, help = train_default("Adam's ε", |t| t.eps.to_string()))]
    pub eps: Option<f64>,
    #[arg(long, help = train_default("Clip the global gradient norm to this value (0 = off)", |t| t.clip.to_string()))]
    pub clip: Option<f64>,
    /// The optimizer [default: adamw].
    #[arg(long, value_parser = choice::<OptimizerKind>())]
    pub optimizer: Option<OptimizerKind>,
    /// Blocks of blockwise Adam, in the optimizer's rotated basis [default: tensor].
    #[arg(long, value_parser = choice::<BlockPartition>())]
    pub blocks: Option<BlockPartition>,
    #[arg(long, help = train_default("SGD's momentum μ", |t| t.momentum.to_string()))]
    pub momentum: Option<f64>,
    /// Muon's peak learning rate on the 2-D hidden weights (the embeddings and 1-D tensors keep --lr; both
    /// follow one schedule) [default: 0.02, Jordan et al. 2024].
    #[arg(long)]
    pub muon_lr: Option<f64>,
    /// Muon's momentum μ [default: 0.95].
    #[arg(long)]
    pub muon_momentum: Option<f64>,
    /// Muon's Newton–Schulz iterations [default: 5].
    #[arg(long)]
    pub muon_ns_steps: Option<usize>,
    /// Muon with heavy-ball momentum (buf) instead of Nesterov's (g + μ·buf, the default).
    #[arg(long)]
    pub muon_heavy_ball: bool,
    #[arg(long, help = train_default("Evaluate the val loss every N steps (and at the last)", |t| t.eval_every.to_string()))]
    pub eval_every: Option<usize>,
    #[arg(long, help = train_default("Val batches per evaluation", |t| t.eval_batches.to_string()))]
    pub eval_batches: Option<usize>,
    #[arg(long, help = train_default("Write a checkpoint every N steps (and at the last)", |t| t.checkpoint_every.to_string()))]
    pub checkpoint_every: Option<usize>,
    #[arg(long, help = train_default("Seed of the initialisation and the data order", |t| t.seed.to_string()))]
    pub seed: Option<u64>,
    /// Rotation of the optimizer's basis [default: none].
    #[arg(long, value_parser = choice::<RotationKind>())]
    pub rotation: Option<RotationKind>,
    /// Size n of the repeated Haar block of the rotation [default: 768, the paper's].
    #[arg(long)]
    pub rotation_block: Option<usize>,
    /// Seed of the rotation [default: --seed].
    #[arg(long)]
    pub rotation_seed: Option<u64>,
    /// `--rotation svd`: recompute the gradient's singular vectors every F steps [default: 250].
    #[arg(long)]
    pub svd_every: Option<usize>,
    /// `--rotation kron`: number of chained stages [default: 2].
    #[arg(long)]
    pub kron_stages: Option<usize>,
    /// `--rotation soap`: decay β of its factors L = EMA(G·Gᵀ), R = EMA(Gᵀ·G) [default: 0.95].
    #[arg(long)]
    pub soap_beta: Option<f64>,
    /// `--rotation soap`: recompute the eigenbases every F steps [default: 10].
    #[arg(long)]
    pub soap_every: Option<usize>,
    /// `--rotation soap`: where Adam's first moment lives: original (Vyas et al. Alg. 3), eigenbasis
    /// (their released code), positional (the poster's svd rule) [default: original].
    #[arg(long)]
    pub soap_first_moment: Option<SoapMoment>,
    /// `--rotation soap`: the bases before the first refresh: eigh (refresh at step 1) or identity
    /// (AdamW until step F + 1) [default: eigh].
    #[arg(long)]
    pub soap_init: Option<SoapInit>,
    /// `--rotation output|input` and `--blocks neuron`: what a neuron is for a 1-D tensor (a LayerNorm
    /// gain) [default: neuron; a config.json without the setting: mixed].
    #[arg(long, value_parser = choice::<VectorRotation>())]
    pub vector_rotation: Option<VectorRotation>,
    /// `--rotation output|input` and `--blocks neuron`: how the embeddings split into neurons
    /// [default: paper].
    #[arg(long, value_parser = choice::<EmbeddingRotation>())]
    pub embedding_rotation: Option<EmbeddingRotation>,
    /// Run directory [default: runs/gpt2-<model>-<rotation>-s<seed>-<UTC time>].
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Where the ops run [default: auto].
    #[arg(long, value_parser = choice::<DeviceKind>())]
    pub device: Option<DeviceKind>,
    /// Arithmetic [default: fp32].
    #[arg(long, value_parser = choice::<Precision>())]
    pub precision: Option<Precision>,
    #[arg(long, help = threads_help())]
    pub threads: Option<usize>,
    /// Initialise from a Hugging Face GPT-2 model.safetensors, or a directory holding one (such as a
    /// checkpoint or a `save_pretrained` directory).
    #[arg(long)]
    pub init_from: Option<PathBuf>,
    /// Print nothing but errors.
    #[arg(long)]
    pub quiet: bool,
    /// Every N steps, log the update CV (per 2-D weight, std/mean of the singular values of the
    /// optimizer's update direction) into metrics.jsonl (AdamW and Muon; 0 = off) [default: 0].
    #[arg(long)]
    pub log_update_cv: Option<usize>,
    /// Refuse the run when its estimated memory (printed at start) exceeds this size, e.g. 8G or 512M
    /// [default: the memory available on this machine].
    #[arg(long, value_parser = parse_size)]
    pub max_memory: Option<u64>,
    /// Data parallel over these devices of this process, one rank each, e.g. 0,1,2,3 (CUDA device
    /// ordinals, through NCCL; with --device cpu, one rank per entry in this process). --grad-accum
    /// counts the micro-batches of all ranks and must be a multiple of their number [default: device 0].
    #[arg(long, value_delimiter = ',')]
    pub devices: Option<Vec<usize>>,
    /// Several processes (one rank and one GPU each, through NCCL): the shared directory where rank 0
    /// leaves the NCCL id for the others. With it, --rank and --world-size, or the variables of the
    /// launcher (RANK/WORLD_SIZE/LOCAL_RANK, Slurm's SLURM_PROCID/SLURM_NTASKS/SLURM_LOCALID, Open MPI's
    /// OMPI_COMM_WORLD_RANK/…_SIZE/…_LOCAL_RANK, PMI_RANK/PMI_SIZE), say which rank this process is; its
    /// device is --devices, else the local rank modulo the devices it sees. Needs --out.
    #[arg(long)]
    pub rendezvous: Option<PathBuf>,
    /// This process's rank (with --rendezvous).
    #[arg(long, requires = "rendezvous")]
    pub rank: Option<usize>,
    /// The number of ranks over all processes (with --rendezvous).
    #[arg(long, requires = "rendezvous")]
    pub world_size: Option<usize>,
    /// Keep the whole optimizer state on every data-parallel rank instead of sharding AdamW's by
    /// rotation blocks.
    #[arg(long)]
    pub replicate_optimizer: bool,
}

/// The first of `vars` set in the environment, as a number (an error names the variable).
fn env_number(vars: &[&str]) -> crate::error::Result<Option<usize>> {
    for v in vars {
        if let Ok(text) = std::env::var(v) {
            return text.trim().parse().map(Some).map_err(|_| {
                crate::error::Error::config(*v, format!("'{text}' is not a whole number"))
            });
        }
    }
    Ok(None)
}

/// The environment variables launchers set: the rank, the number of ranks, the rank on this node.
const RANK_VARS: [&str; 4] = ["RANK", "SLURM_PROCID", "OMPI_COMM_WORLD_RANK", "PMI_RANK"];
const WORLD_VARS: [&str; 4] = [
    "WORLD_SIZE",
    "SLURM_NTASKS",
    "OMPI_COMM_WORLD_SIZE",
    "PMI_SIZE",
];
const LOCAL_VARS: [&str; 3] = ["LOCAL_RANK", "SLURM_LOCALID", "OMPI_COMM_WORLD_LOCAL_RANK"];

fn parse_size(s: &str) -> Result<u64, String> {
    let n = crate::run::memory::parse_size(s)?;
    u64::try_from(n).map_err(|_| format!("'{s}' is too large"))
}

impl Gpt2Args {
    /// The library's options (field for field).
    pub fn options(&self) -> RunOptions {
        RunOptions {
            config: self.config.clone(),
            resume: self.resume.clone(),
            model: self.model.clone(),
            n_layer: self.n_layer,
            n_head: self.n_head,
            n_embd: self.n_embd,
            seq_len: self.seq_len,
            vocab_size: self.vocab_size,
            bias: self.bias,
            data: self.data.clone(),
            batch_size: self.batch_size,
            grad_accum: self.grad_accum,
            steps: self.steps,
            lr: self.lr,
            min_lr: self.min_lr,
            warmup: self.warmup,
            lr_decay_steps: self.lr_decay_steps,
            wd: self.wd,
            beta1: self.beta1,
            beta2: self.beta2,
            eps: self.eps,
            clip: self.clip,
            optimizer: self.optimizer,
            blocks: self.blocks,
            momentum: self.momentum,
            muon_lr: self.muon_lr,
            muon_momentum: self.muon_momentum,
            muon_ns_steps: self.muon_ns_steps,
            muon_heavy_ball: self.muon_heavy_ball,
            eval_every: self.eval_every,
            eval_batches: self.eval_batches,
            checkpoint_every: self.checkpoint_every,
            seed: self.seed,
            rotation: self.rotation,
            rotation_block: self.rotation_block,
            rotation_seed: self.rotation_seed,
            svd_every: self.svd_every,
            kron_stages: self.kron_stages,
            soap_beta: self.soap_beta,
            soap_every: self.soap_every,
            soap_first_moment: self.soap_first_moment,
            soap_init: self.soap_init,
            vector_rotation: self.vector_rotation,
            embedding_rotation: self.embedding_rotation,
            out: self.out.clone(),
            device: self.device,
            precision: self.precision,
            threads: self.threads,
            init_from: self.init_from.clone(),
            quiet: self.quiet,
            log_update_cv: self.log_update_cv,
            max_memory: self.max_memory,
            parallel: None,
        }
    }

    /// The data-parallel settings of the flags and, with --rendezvous, of the launcher's environment
    /// (None when no data-parallel flag is given).
    pub fn parallel(&self) -> crate::error::Result<Option<crate::config::Parallel>> {
        use crate::config::{Parallel, Processes};
        use crate::error::Error;
        if self.rendezvous.is_some() && self.out.is_none() && self.resume.is_none() {
            return Err(Error::config(
                "out",
                "every process of a multi-process run must name the same run directory: pass --out \
                 (the default name holds the start time, which differs between processes)",
            ));
        }
        let Some(dir) = &self.rendezvous else {
            if self.devices.is_none() && !self.replicate_optimizer {
                return Ok(None);
            }
            if self.replicate_optimizer && self.devices.as_ref().is_none_or(|d| d.len() < 2) {
                return Err(Error::config(
                    "replicate-optimizer",
                    "is for several devices (--devices with more than one, or --rendezvous)",
                ));
            }
            return Ok(Some(Parallel {
                devices: self.devices.clone().unwrap_or_default(),
                processes: None,
                replicate_optimizer: self.replicate_optimizer,
            }));
        };
        let rank = match self.rank {
            Some(r) => r,
            None => env_number(&RANK_VARS)?.ok_or_else(|| {
                Error::config(
                    "rank",
                    format!(
                        "--rendezvous needs --rank or one of {}",
                        RANK_VARS.join(", ")
                    ),
                )
            })?,
        };
        let world_size = match self.world_size {
            Some(w) => w,
            None => env_number(&WORLD_VARS)?.ok_or_else(|| {
                Error::config(
                    "world-size",
                    format!(
                        "--rendezvous needs --world-size or one of {}",
                        WORLD_VARS.join(", ")
                    ),
                )
            })?,
        };
        let (devices, local_rank) = match &self.devices {
            Some(d) => (d.clone(), None),
            None => {
                let local = env_number(&LOCAL_VARS)?.unwrap_or(0);
                (vec![local], Some(local))
            }
        };
        Ok(Some(Parallel {
            devices,
            processes: Some(Processes {
                rank,
                world_size,
                rendezvous: dir.clone(),
                local_rank,
            }),
            replicate_optimizer: self.replicate_optimizer,
        }))
    }

    /// The run's config and whether it resumes; options the run would not use are refused, or warned of
    /// on stderr (unless --quiet).
    pub fn to_config(&self) -> crate::error::Result<(crate::config::RunConfig, bool)> {
        let mut opts = self.options();
        opts.parallel = self.parallel()?;
        let (cfg, resume) = opts.to_config()?;
        for w in opts.check_used(&cfg)? {
            if !self.quiet {
                eprintln!("warning: {w}");
            }
        }
        Ok((cfg, resume))
    }
}
