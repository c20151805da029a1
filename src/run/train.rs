//! `rotadam gpt2`: a run from its config. The device is chosen, the run directory prepared, and a
//! [`Trainer`] runs with the observers a run writes: update-CV logging, `metrics.jsonl`, the progress
//! display, and the caller's (a sweep's progress bar).

use super::metrics::{MetricsWriter, StepMetrics};
use super::progress::Progress;
use super::trainer::{OnStep, Trainer, UpdateCvLog};
use crate::backend::cpu::CpuBackend;
use crate::backend::Backend;
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
    super::memory::check(&est, cfg.max_memory.map(u128::from), host.flatten())?;
    if device == crate::device::Resolved::Cuda {
        let tk = crate::backend::cuda::nvrtc::Toolkit::find();
        let be = crate::backend::cuda::CudaBackend::cuda(0, tk, cfg.precision == Precision::Bf16)?;
        return pool.install(|| train_on(&be, cfg, resume, on_step));
    }
    pool.install(|| match cfg.precision {
        Precision::Fp32 => train_on(
            &CpuBackend::<f32>::new(cfg.threads, false),
            cfg,
            resume,
            on_step,
        ),
        Precision::Bf16 => train_on(
            &CpuBackend::<f32>::new(cfg.threads, true),
            cfg,
            resume,
            on_step,
        ),
        Precision::Fp64 => train_on(
            &CpuBackend::<f64>::new(cfg.threads, false),
            cfg,
            resume,
            on_step,
        ),
    })
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
    let t0 = Instant::now();
    let (m, tr) = (&cfg.model, &cfg.train);
    let entry = match (resume, super::checkpoint::latest(&cfg.out)?) {
        (false, _) => Entry::Fresh,
        (true, Some(_)) => Entry::Resume,
        (true, None) => Entry::Restart,
    };
    if entry == Entry::Fresh {
        check_fresh(cfg)?;
    }
    let mut trainer = match entry {
        Entry::Resume => Trainer::resume(be, cfg)?,
        Entry::Fresh | Entry::Restart => Trainer::new(be, cfg)?,
    };
    // One writer per run directory, from here until the run ends (`run::lock`).
    let _lock = super::lock::DirLock::acquire(&cfg.out, "rotadam gpt2")?;
    if entry == Entry::Fresh {
        check_fresh(cfg)?; // again under the lock: another process may have started it meanwhile
    }
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
    record_run(cfg, entry, start)?;
    let mut metrics = MetricsWriter::open(
        &cfg.out.join("metrics.jsonl"),
        (entry != Entry::Fresh).then_some(start),
    )?;
    if let Some(torn) = &metrics.torn {
        say(
            cfg,
            format!("warning: a torn last row of metrics.jsonl was dropped ({torn})"),
        );
    }

    say(cfg, format!("backend: {}", be.name()));
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
