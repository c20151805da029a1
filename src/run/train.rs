//! `rotadam gpt2`: a run from its config. The device is chosen, the run directory prepared, and a
//! [`Trainer`] runs with the observers a run writes: update-CV logging, `metrics.jsonl`, the progress
//! display, and the caller's (a sweep's progress bar).

use super::metrics::{MetricsWriter, StepMetrics};
use super::progress::Progress;
use super::trainer::{OnStep, Trainer, UpdateCvLog};
use crate::backend::collective::LocalGroup;
use crate::backend::cpu::CpuBackend;
use crate::backend::{Backend, Collective};
use crate::config::{Precision, RunConfig};
use crate::error::{Error, Result};
use std::path::PathBuf;
use std::time::Instant;

/// What a finished run reports.
#[derive(Clone, Debug)]
pub struct RunOutcome {
    pub run_dir: PathBuf,
    /// Step the run started from (0, or the checkpoint it resumed).
    pub start_step: usize,
    pub steps: usize,
    pub first_train_loss: Option<f64>,
    pub final_train_loss: f64,
    pub final_val_loss: Option<f64>,
    pub seconds: f64,
}

/// Train as `cfg` says. With `resume`, `cfg.out` is an existing run directory whose latest checkpoint is
/// restored (weights, moments, step, RNG/data cursor); training continues to `cfg.train.steps`.
pub fn train(cfg: &RunConfig, resume: bool) -> Result<RunOutcome> {
    train_observed(cfg, resume, &mut |_| {})
}

/// [`train`], calling `on_step` with every step's metrics row after it is written (a sweep's progress bar).
pub fn train_observed(
    cfg: &RunConfig,
    resume: bool,
    on_step: &mut (dyn FnMut(&StepMetrics) + Send),
) -> Result<RunOutcome> {
    cfg.validate()?;
    // a process of a multi-process run other than rank 0's trains silently (rank 0 speaks for the run)
    let silent;
    let cfg = match &cfg.parallel.processes {
        Some(p) if p.rank != 0 && !cfg.quiet => {
            silent = RunConfig {
                quiet: true,
                ..cfg.clone()
            };
            &silent
        }
        _ => cfg,
    };
    for w in cfg.train.warnings() {
        say(cfg, format!("warning: {w}"));
    }
    let cores = crate::config::default_threads();
    if cfg.threads > cores {
        say(
            cfg,
            format!(
                "warning: --threads {} is above the {cores} cores of this machine; the extra threads \
                 only take turns",
                cfg.threads
            ),
        );
    }
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(cfg.threads)
        .build()
        .map_err(|e| Error::config("threads", e.to_string()))?;
    // Which device, said once at start-up (`crate::device`: auto self-checks a GPU before using it).
    let (device, line) = crate::device::resolve(cfg.device, cfg.precision)?;
    say(cfg, line);
    // The memory the run needs, before anything is allocated (`run::memory`): checked against the
    // host's available memory on the CPU; on a GPU only against --max-memory (the device's free memory
    // is not queried).
    let est = super::memory::estimate(cfg);
    say(cfg, format!("memory: about {}", est.describe()));
    let host = (device != crate::device::Resolved::Cuda).then(super::memory::available);
    if device != crate::device::Resolved::Cuda && !cfg.parallel.is_single() {
        // the CPU ranks share this process's memory
        let ranks = cfg.parallel.world() as u128;
        say(
            cfg,
            format!("memory: {ranks} ranks on the host, each about the above"),
        );
        let all = crate::run::memory::MemoryEstimate {
            params: est.params * ranks,
            grads: est.grads * ranks,
            optimizer: est.optimizer * ranks,
            activations: est.activations * ranks,
            rotation: est.rotation * ranks,
            checkpoint: est.checkpoint,
        };
        super::memory::check(&all, cfg.max_memory.map(u128::from), host.flatten())?;
    } else {
        super::memory::check(&est, cfg.max_memory.map(u128::from), host.flatten())?;
    }
    if device == crate::device::Resolved::Cuda {
        use crate::backend::cuda::{collective, CudaBackend};
        let tk = crate::backend::cuda::nvrtc::Toolkit::find();
        let bf16 = cfg.precision == Precision::Bf16;
        let ordinals = match (&cfg.parallel.processes, cfg.parallel.devices.as_slice()) {
            // the rank on its node, among the devices this process sees
            (
                Some(crate::config::Processes {
                    local_rank: Some(local),
                    ..
                }),
                _,
            ) => {
                let count = cudarc::driver::CudaContext::device_count()
                    .map_err(|e| Error::Device(format!("counting the CUDA devices: {e:?}")))?;
                vec![local % (count.max(1) as usize)]
            }
            (_, []) => vec![0],
            (_, d) => d.to_vec(),
        };
        let bes = ordinals
            .iter()
            .map(|&o| CudaBackend::cuda(o, tk.clone(), bf16))
            .collect::<Result<Vec<_>>>()?;
        if cfg.parallel.is_single() {
            return pool.install(|| train_on(&bes[0], cfg, resume, on_step));
        }
        let ranks = bes
            .iter()
            .zip(collective::connect(&bes, &cfg.parallel)?)
            .map(|(be, c)| LocalRank {
                be,
                comm: Some(Box::new(c) as Box<dyn Collective<CudaBackend>>),
            })
            .collect();
        return pool.install(|| train_ranks(ranks, cfg, resume, on_step));
    }
    let world = cfg.parallel.devices.len().max(1);
    if cfg.parallel.processes.is_some() {
        return Err(Error::config(
            "rendezvous",
            "ranks in several processes exchange through NCCL, which needs --device cuda; on the CPU, \
             --devices N runs N ranks in this process",
        ));
    }
    pool.install(|| match cfg.precision {
        Precision::Fp32 | Precision::Bf16 => {
            let bf16 = cfg.precision == Precision::Bf16;
            let bes: Vec<_> = (0..world)
                .map(|_| CpuBackend::<f32>::new(cfg.threads, bf16))
                .collect();
            train_on_cpu(&bes, cfg, resume, on_step)
        }
        Precision::Fp64 => {
            let bes: Vec<_> = (0..world)
                .map(|_| CpuBackend::<f64>::new(cfg.threads, false))
                .collect();
            train_on_cpu(&bes, cfg, resume, on_step)
        }
    })
}

/// One rank per backend of `bes`, exchanging through host memory when there are several.
fn train_on_cpu<BK: Backend>(
    bes: &[BK],
    cfg: &RunConfig,
    resume: bool,
    on_step: &mut (dyn FnMut(&StepMetrics) + Send),
) -> Result<RunOutcome> {
    if bes.len() == 1 {
        return train_on(&bes[0], cfg, resume, on_step);
    }
    let ranks = bes
        .iter()
        .zip(LocalGroup::new(bes.len()))
        .map(|(be, g)| LocalRank {
            be,
            comm: Some(Box::new(g) as Box<dyn Collective<BK>>),
        })
        .collect();
    train_ranks(ranks, cfg, resume, on_step)
}

/// One data-parallel rank of this process: its backend and its link to the other ranks.
pub struct LocalRank<'a, BK: Backend> {
    pub be: &'a BK,
    pub comm: Option<Box<dyn Collective<BK> + 'a>>,
}

impl<BK: Backend> LocalRank<'_, BK> {
    fn rank(&self) -> usize {
        self.comm.as_ref().map_or(0, |c| c.rank())
    }
}

fn say(cfg: &RunConfig, msg: impl AsRef<str>) {
    if !cfg.quiet {
        eprintln!("{}", msg.as_ref());
    }
}

/// How a run directory is entered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Entry {
    /// A new run: the directory must not hold one.
    Fresh,
    /// `--resume` from the latest checkpoint.
    Resume,
    /// `--resume` of a run that has no checkpoint yet: trained again from step 0 (what a fresh run of its
    /// config.json computes).
    Restart,
}

impl Entry {
    fn name(self) -> &'static str {
        match self {
            Entry::Fresh => "start",
            Entry::Resume => "resume",
            Entry::Restart => "restart",
        }
    }
}

/// Refuses a fresh run in a directory that already holds one.
fn check_fresh(cfg: &RunConfig) -> Result<()> {
    let dir = &cfg.out;
    if dir.join("config.json").exists() {
        return Err(Error::config(
            "--out",
            format!(
                "{} is already a run directory; pass --resume {} to continue it, or choose another --out",
                dir.display(),
                dir.display()
            ),
        ));
    }
    Ok(())
}

/// Writes config.json (except on a resume that trains nothing, which changes nothing) and appends the
/// invocation to `history.jsonl`: one line per command that trained the run, from which step to which.
fn record_run(cfg: &RunConfig, entry: Entry, start: usize) -> Result<()> {
    let dir = &cfg.out;
    if entry == Entry::Resume && start >= cfg.train.steps {
        return Ok(());
    }
    let config_path = dir.join("config.json");
    let json = serde_json::to_vec_pretty(cfg).map_err(|source| Error::Json {
        path: config_path.clone(),
        source,
    })?;
    crate::files::write_atomic(&config_path, &json)?;
    let line = serde_json::json!({
        "utc": super::options::utc_stamp(),
        "command": entry.name(),
        "from_step": start,
        "to_step": cfg.train.steps,
        "lr_decay_steps": cfg.train.decay_steps(),
        "ranks": cfg.parallel.world(),
        "version": env!("CARGO_PKG_VERSION"),
    });
    let path = dir.join("history.jsonl");
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .map_err(|e| Error::io(&path, e))?;
    use std::io::Write;
    writeln!(f, "{line}").map_err(|e| Error::io(&path, e))
}

fn train_on<BK: Backend>(
    be: &BK,
    cfg: &RunConfig,
    resume: bool,
    on_step: &mut (dyn FnMut(&StepMetrics) + Send),
) -> Result<RunOutcome> {
    train_ranks(vec![LocalRank { be, comm: None }], cfg, resume, on_step)
}

/// Trains with this process's ranks: rank 0 of the run (if it is here) on this thread, writing what a
/// run writes (config, history, metrics, checkpoints) and printing; every other rank in a thread of its
/// own, writing nothing (its backend's parallel loops on rayon's global pool: a thread of the run's
/// pool blocked in a collective would starve the ranks waiting for a worker). The ranks agree before
/// the first step (the same step and config, rank 0's run directory ready) and stop together when one
/// fails; the error reported is the first rank's own (not a rank's report that another failed), rank
/// 0's first.
pub fn train_ranks<BK: Backend>(
    mut ranks: Vec<LocalRank<'_, BK>>,
    cfg: &RunConfig,
    resume: bool,
    on_step: &mut (dyn FnMut(&StepMetrics) + Send),
) -> Result<RunOutcome> {
    let entry = match (resume, super::checkpoint::latest(&cfg.out)?) {
        (false, _) => Entry::Fresh,
        (true, Some(_)) => Entry::Resume,
        (true, None) => Entry::Restart,
    };
    let lead = ranks
        .iter()
        .position(|r| r.rank() == 0)
        .map(|i| ranks.remove(i));
    // rank 0's checks of the run directory, before any other rank starts
    let lock = match lead {
        Some(_) => {
            if entry == Entry::Fresh {
                check_fresh(cfg)?;
            }
            // One writer per run directory, from here until the run ends (`run::lock`).
            let lock = super::lock::DirLock::acquire(&cfg.out, "rotadam gpt2")?;
            if entry == Entry::Fresh {
                check_fresh(cfg)?; // again under the lock: another process may have started it
            }
            Some(lock)
        }
        None => None,
    };
    std::thread::scope(|s| {
        let followers: Vec<_> = ranks
            .into_iter()
            .map(|r| {
                let rank = r.rank();
                let body = move || -> Result<super::trainer::RunLosses> {
                    if let Some(c) = &r.comm {
                        c.enter(r.be)?;
                    }
                    let mut t = match entry {
                        Entry::Resume => Trainer::resume_rank(r.be, cfg, r.comm)?,
                        Entry::Fresh | Entry::Restart => Trainer::new_rank(r.be, cfg, r.comm)?,
                    };
                    t.agree(Ok(()))?;
                    let losses = t.run(&mut [])?;
                    t.finish();
                    Ok(losses)
                };
                let handle = s.spawn(body);
                (rank, handle)
            })
            .collect();
        let led = lead.map(|r| lead_rank(r, entry, cfg, on_step));
        drop(lock);
        let mut errors = Vec::new();
        let mut outcome = None;
        let led = match led {
            Some(Ok(out)) => Some(out),
            Some(Err(e)) => {
                errors.push(e);
                None
            }
            None => None,
        };
        for (rank, h) in followers {
            match h.join() {
                Ok(Ok(losses)) => outcome = outcome.or(Some(losses)),
                Ok(Err(e)) => errors.push(e.context(format!("data-parallel rank {rank}"))),
                Err(panic) => std::panic::resume_unwind(panic),
            }
        }
        // a rank's own error explains the others' reports that it failed
        if let Some(i) = errors.iter().position(|e| !e.is_peer_failure()) {
            return Err(errors.swap_remove(i));
        }
        if let Some(e) = errors.into_iter().next() {
            return Err(e);
        }
        Ok(match led {
            Some(out) => out,
            None => {
                let losses = outcome.expect("a process runs at least one rank");
                RunOutcome {
                    run_dir: cfg.out.clone(),
                    start_step: 0,
                    steps: cfg.train.steps,
                    first_train_loss: losses.first_train,
                    final_train_loss: losses.final_train,
                    final_val_loss: losses.final_val,
                    seconds: 0.0,
                }
            }
        })
    })
}

/// Rank 0: the run as one device runs it, with its link to the other ranks (the run directory is
/// checked and locked by the caller).
fn lead_rank<BK: Backend>(
    rank: LocalRank<'_, BK>,
    entry: Entry,
    cfg: &RunConfig,
    on_step: &mut (dyn FnMut(&StepMetrics) + Send),
) -> Result<RunOutcome> {
    let LocalRank { be, comm } = rank;
    if let Some(c) = &comm {
        c.enter(be)?;
    }
    let t0 = Instant::now();
    let (m, tr) = (&cfg.model, &cfg.train);
    let mut trainer = match entry {
        Entry::Resume => Trainer::resume_rank(be, cfg, comm)?,
        Entry::Fresh | Entry::Restart => Trainer::new_rank(be, cfg, comm)?,
    };
    match (entry, &trainer.last_checkpoint) {
        (Entry::Resume, Some(dir)) => say(
            cfg,
            format!(
                "resume: from {} (step {} of {})",
                dir.display(),
                trainer.steps_done(),
                tr.steps
            ),
        ),
        (Entry::Restart, _) => say(
            cfg,
            format!(
                "resume: {} has no checkpoint yet; the run restarts from its config.json at step 0",
                cfg.out.display()
            ),
        ),
        _ => {}
    }
    if let Some(init) = &trainer.init {
        say(cfg, format!("init: weights from {}", init.path.display()));
        if init.ignored_biases > 0 {
            say(
                cfg,
                format!(
                    "init: {} non-zero bias tensors in the file were ignored (the model has no biases; pass --bias to use them)",
                    init.ignored_biases
                ),
            );
        }
    }
    let start = trainer.steps_done();
    let opened = record_run(cfg, entry, start).and_then(|()| {
        MetricsWriter::open(
            &cfg.out.join("metrics.jsonl"),
            (entry != Entry::Fresh).then_some(start),
        )
    });
    let (opened, ready) = match opened {
        Ok(m) => (Some(m), Ok(())),
        Err(e) => (None, Err(e)),
    };
    trainer.agree(ready)?;
    let mut metrics = opened.expect("agree returns this rank's own error first");
    if let Some(torn) = &metrics.torn {
        say(
            cfg,
            format!("warning: a torn last row of metrics.jsonl was dropped ({torn})"),
        );
    }

    say(cfg, format!("backend: {}", be.name()));
    if !cfg.parallel.is_single() {
        say(
            cfg,
            format!(
                "data parallel: {}; {}",
                cfg.parallel.describe(),
                match trainer.opt.shard_range() {
                    Some(r) => format!(
                        "AdamW's state sharded by rotation blocks (rank 0 keeps {} of {} coordinates)",
                        r.len(),
                        trainer.model.num_params()
                    ),
                    None => "the optimizer state whole on every rank".into(),
                }
            ),
        );
    }
    say(
        cfg,
        format!(
            "model: GPT-2 {} ({} layers, {} heads, {} wide, context {}, vocab {}, bias {}): {:.2}M parameters",
            cfg.model_preset,
            m.n_layer,
            m.n_head,
            m.n_embd,
            m.seq_len,
            m.vocab_size,
            m.bias,
            trainer.model.num_params() as f64 / 1e6
        ),
    );
    say(cfg, format!("data: {}", trainer.describe_data()));
    say(cfg, format!("vocabulary: {}", trainer.describe_vocab()));
    say(
        cfg,
        format!(
            "optimizer: {} = {} (rotation seed {}), {} steps of {} tokens (batch {} x accum {} x T {}); run dir {}",
            tr.optimizer.name(),
            trainer.opt.describe(),
            cfg.rotation.seed,
            tr.steps,
            cfg.tokens_per_step(),
            tr.batch_size,
            tr.grad_accum,
            m.seq_len,
            cfg.out.display()
        ),
    );
    if start >= tr.steps {
        say(
            cfg,
            format!("nothing to do: the run is at step {start} of {}", tr.steps),
        );
    }

    let label = format!("{}/{}", tr.optimizer.name(), cfg.rotation.kind);
    let mut progress = Progress::new(start, tr.steps, cfg.quiet, label);
    let mut update_cv = UpdateCvLog {
        every: tr.log_update_cv,
    };
    let mut caller = OnStep(on_step);
    let losses = trainer.run(&mut [&mut update_cv, &mut metrics, &mut progress, &mut caller])?;
    trainer.finish();
    let outcome = RunOutcome {
        run_dir: cfg.out.clone(),
        start_step: start,
        steps: tr.steps,
        first_train_loss: losses.first_train,
        final_train_loss: losses.final_train,
        final_val_loss: losses.final_val,
        seconds: t0.elapsed().as_secs_f64(),
    };
    if start < tr.steps {
        say(
            cfg,
            format!(
                "done: step {} train loss {:.4}{} in {:.1} s; run dir {}",
                tr.steps,
                losses.final_train,
                losses
                    .final_val
                    .map(|v| format!(", val loss {v:.4}"))
                    .unwrap_or_default(),
                outcome.seconds,
                cfg.out.display()
            ),
        );
    }
    Ok(outcome)
}
