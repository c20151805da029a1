//! The training loop of `rotadam gpt2`: data → model → optimizer, with evaluation, metrics, checkpoints,
//! divergence detection and bit-identical resume.

use crate::backend::cpu::CpuBackend;
use crate::backend::Backend;
use crate::config::{Precision, RunConfig};
use crate::data::loader::{fixed_batches, Batch, BatchSampler, EVAL_SEED};
use crate::data::shard::Dataset;
use crate::error::{Error, Result};
use crate::model::Gpt2;
use crate::optim::{clip_grads, grad_norm, schedule, Optimizer};
use crate::rotation::basis::Basis;
use crate::run::checkpoint::{self, TrainState};
use crate::run::metrics::{MetricsWriter, StepMetrics};
use std::path::{Path, PathBuf};
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
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(cfg.threads)
        .build()
        .map_err(|e| Error::config("threads", e.to_string()))?;
    // Which device, said once at start-up (`crate::device`: auto self-checks a GPU before using it).
    let (device, line) = crate::device::resolve(cfg.device, cfg.precision)?;
    say(cfg, line);
    if device == crate::device::Resolved::Cuda {
        let tk = crate::backend::cuda::nvrtc::Toolkit::locate(std::path::Path::new(".cuda"));
        let be = crate::backend::cuda::device::CudaBackend::new(
            0,
            tk,
            cfg.precision == Precision::Bf16,
        )?;
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

/// The data directory a config names (`demo` = the embedded corpus, prepared on first use).
pub fn resolve_data(data: &str, quiet: bool) -> Result<PathBuf> {
    if data == "demo" {
        crate::data::prepare::demo_corpus(quiet)
    } else {
        Ok(PathBuf::from(data))
    }
}

fn say(cfg: &RunConfig, msg: impl AsRef<str>) {
    if !cfg.quiet {
        eprintln!("{}", msg.as_ref());
    }
}

/// Mean loss over the fixed evaluation batches.
fn evaluate<BK: Backend>(be: &BK, model: &mut Gpt2<BK>, batches: &[Batch]) -> Result<f64> {
    let mut sum = 0.0;
    for b in batches {
        sum += model.loss(be, &b.inputs, &b.targets, b.b, b.t)?;
    }
    Ok(sum / batches.len() as f64)
}

fn prepare_run_dir(cfg: &RunConfig, resume: bool) -> Result<()> {
    let dir = &cfg.out;
    let config_path = dir.join("config.json");
    if resume {
        if !config_path.is_file() {
            return Err(Error::bad_file(
                &config_path,
                "config.json",
                "missing: --resume needs a run directory written by `rotadam gpt2`",
            ));
        }
    } else if config_path.exists() {
        return Err(Error::config(
            "--out",
            format!(
                "{} is already a run directory; pass --resume {} to continue it, or choose another --out",
                dir.display(),
                dir.display()
            ),
        ));
    }
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let json = serde_json::to_vec_pretty(cfg).expect("config serialises");
    super::write_atomic(&config_path, &json)
}

fn train_on<BK: Backend>(
    be: &BK,
    cfg: &RunConfig,
    resume: bool,
    on_step: &mut (dyn FnMut(&StepMetrics) + Send),
) -> Result<RunOutcome> {
    let t0 = Instant::now();
    let (m, tr) = (&cfg.model, &cfg.train);
    let data_dir = resolve_data(&cfg.data, cfg.quiet)?;
    let data = Dataset::open(&data_dir, m.vocab_size, m.seq_len)?;
    let mut model = Gpt2::new(be, m, tr.seed)?;
    if let Some(path) = &cfg.init_from {
        load_init(be, &mut model, path, cfg)?;
    }
    let rotation = Basis::new(be, &cfg.rotation, &model.table)?;
    let rotation_desc = rotation.describe();
    let mut opt = Optimizer::for_run(be, tr, rotation, &model.table)?;
    let mut sampler = BatchSampler::new(tr.seed);
    // The same val windows for every run, whatever its seed, so val curves are comparable across runs.
    let eval = fixed_batches(
        &data.val,
        tr.batch_size,
        m.seq_len,
        tr.eval_batches,
        EVAL_SEED,
    );

    let mut start = 0;
    let mut last_ckpt: Option<PathBuf> = None;
    if resume {
        let Some((step, dir)) = checkpoint::latest(&cfg.out)? else {
            return Err(Error::bad_file(
                cfg.out.join("checkpoints"),
                "checkpoints",
                "no checkpoint to resume from (expected checkpoints/step_N/state.json)",
            ));
        };
        let state = checkpoint::load(be, &dir, &mut model, &mut opt)?;
        if state.rotation != cfg.rotation {
            return Err(Error::bad_file(
                dir.join("state.json"),
                "rotation",
                format!(
                    "checkpoint was trained under {:?}, the run's config says {:?}",
                    state.rotation, cfg.rotation
                ),
            ));
        }
        sampler = state.sampler;
        start = step;
        last_ckpt = Some(dir);
    }
    prepare_run_dir(cfg, resume)?;
    let mut metrics = MetricsWriter::open(&cfg.out.join("metrics.jsonl"), resume.then_some(start))?;

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
            model.num_params() as f64 / 1e6
        ),
    );
    say(cfg, format!("data: {}", data.describe()));
    say(
        cfg,
        format!(
            "optimizer: {} under rotation {} (seed {}), {} steps of {} tokens (batch {} x accum {} x T {}); run dir {}",
            tr.optimizer.name(),
            rotation_desc,
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
    let progress = super::progress::Progress::new(start, tr.steps, cfg.quiet, label);
    let dloss = 1.0 / (tr.batch_size * m.seq_len * tr.grad_accum) as f64;
    let mut first_loss = None;
    let mut final_train = f64::NAN;
    let mut final_val = None;
    for it in start..tr.steps {
        let step = it + 1;
        let ts = Instant::now();
        let lr = schedule::lr_at(it, tr.lr, tr.min_lr, tr.warmup, tr.decay_steps());
        model.zero_grads(be)?;
        let mut loss = 0.0;
        for _ in 0..tr.grad_accum {
            let b = sampler.next_batch(&data.train, tr.batch_size, m.seq_len);
            loss += model.forward_backward(be, &b.inputs, &b.targets, b.b, b.t, dloss)?;
        }
        loss /= tr.grad_accum as f64;
        let norm = grad_norm(be, &model.grads)?;
        let bad = if !loss.is_finite() {
            Some(("train loss", loss))
        } else if !norm.is_finite() {
            Some(("gradient norm", norm))
        } else {
            None
        };
        if let Some((what, value)) = bad {
            progress.finish();
            return Err(Error::Diverged {
                step,
                what: what.into(),
                value,
                kept: match &last_ckpt {
                    Some(d) => format!("the last good checkpoint is {}", d.display()),
                    None => "no checkpoint had been written yet".into(),
                },
            });
        }
        clip_grads(be, &mut model.grads, norm, tr.clip)?;
        opt.step(be, &model.table, &mut model.params, &model.grads, lr)?;
        let secs = ts.elapsed().as_secs_f64();

        let val = if step % tr.eval_every == 0 || step == tr.steps {
            Some(evaluate(be, &mut model, &eval)?)
        } else {
            None
        };
        first_loss.get_or_insert(loss);
        final_train = loss;
        if val.is_some() {
            final_val = val;
        }
        let row = StepMetrics {
            step,
            train_loss: loss,
            lr,
            grad_norm: norm,
            tokens_per_s: cfg.tokens_per_step() as f64 / secs,
            ms_per_step: secs * 1e3,
            val_loss: val,
            optimizer: tr.optimizer.name().into(),
            rotation: cfg.rotation.kind,
            update_cv: if tr.log_update_cv > 0 && step % tr.log_update_cv == 0 {
                let u = opt.direction(be)?;
                let cvs = crate::optim::update_cv::per_weight(&model.table, &u)?;
                Some(crate::optim::update_cv::summarize(&cvs))
            } else {
                None
            },
        };
        metrics.write(&row)?;
        progress.step(&row);
        on_step(&row);
        if step % tr.checkpoint_every == 0 || step == tr.steps {
            let state = TrainState {
                step,
                sampler: sampler.clone(),
                optimizer: tr.optimizer,
                rotation: cfg.rotation.clone(),
                model: m.clone(),
                dtype: <BK::T as crate::backend::Scalar>::NAME.into(),
                num_params: model.num_params(),
                train_loss: loss,
                val_loss: final_val,
            };
            last_ckpt = Some(checkpoint::save(be, &cfg.out, &model, &opt, &state)?);
        }
    }
    progress.finish();
    let outcome = RunOutcome {
        run_dir: cfg.out.clone(),
        start_step: start,
        steps: tr.steps,
        first_train_loss: first_loss,
        final_train_loss: final_train,
        final_val_loss: final_val,
        seconds: t0.elapsed().as_secs_f64(),
    };
    if start < tr.steps {
        say(
            cfg,
            format!(
                "done: step {} train loss {:.4}{} in {:.1} s; run dir {}",
                tr.steps,
                final_train,
                final_val
                    .map(|v| format!(", val loss {v:.4}"))
                    .unwrap_or_default(),
                outcome.seconds,
                cfg.out.display()
            ),
        );
    }
    Ok(outcome)
}

fn load_init<BK: Backend>(
    be: &BK,
    model: &mut Gpt2<BK>,
    path: &Path,
    cfg: &RunConfig,
) -> Result<()> {
    let tensors = crate::tensors::read(path)?;
    let (flat, ignored) = crate::model::hf::from_hf(path, &model.cfg, &model.table, &tensors)?;
    model.set_params_f64(be, &flat)?;
    say(cfg, format!("init: weights from {}", path.display()));
    if ignored > 0 {
        say(
            cfg,
            format!("init: {ignored} non-zero bias tensors in the file were ignored (the model has no biases; pass --bias to use them)"),
        );
    }
    Ok(())
}
