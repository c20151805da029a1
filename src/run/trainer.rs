//! A run in progress: the model, its optimizer, the data and the schedule, advanced one step at a time
//! ([`Trainer::step`]), evaluated ([`Trainer::evaluate`]) and checkpointed ([`Trainer::checkpoint`]) as
//! the caller decides; what watches the run (metrics.jsonl, the progress display, update-CV logging, a
//! sweep's progress) is an [`Observer`] the caller attaches to [`Trainer::run`].

use super::checkpoint::{self, TrainState};
use super::metrics::StepMetrics;
use crate::backend::{Backend, Collective, Scalar};
use crate::config::RunConfig;
use crate::data::loader::{fixed_batches, Batch, BatchSampler, EVAL_SEED};
use crate::data::shard::Dataset;
use crate::error::{Error, Result};
use crate::model::Gpt2;
use crate::optim::{clip_grads, grad_norm, schedule, Optimizer};
use crate::rotation::basis::Basis;
use std::path::PathBuf;
use std::time::Instant;

/// What one optimizer step measured.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StepReport {
    /// The step just completed (1-based).
    pub step: usize,
    /// Mean training loss over the step's micro-batches.
    pub loss: f64,
    pub lr: f64,
    /// The global gradient norm before clipping.
    pub grad_norm: f64,
    pub seconds: f64,
}

/// Something that watches a run: told of every step's metrics row, in the order the observers were
/// attached, before the next step. An observer may fill in the row (update-CV) for the ones after it.
pub trait Observer<BK: Backend> {
    fn on_step(&mut self, trainer: &mut Trainer<'_, BK>, row: &mut StepMetrics) -> Result<()>;
    /// The run ended (normally or not).
    fn on_end(&mut self) {}
}

/// A run of `cfg` on one backend (module docs).
pub struct Trainer<'a, BK: Backend> {
    pub be: &'a BK,
    pub cfg: &'a RunConfig,
    pub model: Gpt2<BK>,
    pub opt: Optimizer<BK>,
    data: Dataset,
    sampler: BatchSampler,
    /// The fixed val batches of every evaluation.
    eval: Vec<Batch>,
    /// What `cfg.init_from` loaded (None without it, and on resume).
    pub init: Option<InitFrom>,
    /// The newest checkpoint written (or resumed from).
    pub last_checkpoint: Option<PathBuf>,
    /// This data-parallel rank's link to the others (None: the run has one rank).
    comm: Option<Box<dyn Collective<BK> + 'a>>,
}

/// The weights a run started from with `--init-from`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InitFrom {
    /// The Hugging Face GPT-2 `model.safetensors`, or a directory holding one.
    pub path: PathBuf,
    /// Non-zero bias tensors of the file that a model without biases ignored.
    pub ignored_biases: usize,
}

impl<'a, BK: Backend> Trainer<'a, BK> {
    /// `cfg`'s run at step 0: weights from the seed, or from `cfg.init_from` when it is set
    /// ([`Trainer::init`] says what was loaded), the rotation, the optimizer, the data (the demo corpus
    /// prepared on first use).
    pub fn new(be: &'a BK, cfg: &'a RunConfig) -> Result<Self> {
        Self::new_rank(be, cfg, None)
    }

    /// [`Trainer::new`] for one data-parallel rank, linked to the others by `comm` (None: one rank).
    /// Every rank starts from the same weights (the same seed or file); rank r computes the gradient of
    /// its share of each step's micro-batches, and with AdamW under `none` or a block rotation keeps
    /// the optimizer state of its share of the rotation's blocks (`optim::shard`).
    pub fn new_rank(
        be: &'a BK,
        cfg: &'a RunConfig,
        comm: Option<Box<dyn Collective<BK> + 'a>>,
    ) -> Result<Self> {
        let mut t = Self::from_seed(be, cfg, comm)?;
        if let Some(path) = &cfg.init_from {
            let ignored_biases = t.init_from(path)?;
            t.init = Some(InitFrom {
                path: path.clone(),
                ignored_biases,
            });
        }
        Ok(t)
    }

    /// `cfg`'s run at step 0 with the seed's weights.
    fn from_seed(
        be: &'a BK,
        cfg: &'a RunConfig,
        comm: Option<Box<dyn Collective<BK> + 'a>>,
    ) -> Result<Self> {
        let (m, tr) = (&cfg.model, &cfg.train);
        let data_dir = crate::data::resolve(&cfg.data, cfg.quiet)?;
        let data = Dataset::open(&data_dir, m.vocab_size, m.seq_len)?;
        let mut model = Gpt2::new(be, m, tr.seed)?;
        let basis = Basis::new(be, &cfg.rotation, &model.table)?;
        let opt = match &comm {
            None => Optimizer::for_run(be, tr, basis, &model.table)?,
            Some(c) => Optimizer::for_rank(
                be,
                tr,
                basis,
                &model.table,
                c.rank(),
                c.world(),
                !cfg.parallel.replicate_optimizer && tr.log_update_cv == 0,
            )?,
        };
        // the gradient is reduce-scattered into W equal parts: room for the last part's padding
        if let (Some(part), Some(c)) = (opt.gradient_part(), &comm) {
            if part * c.world() > model.table.total {
                model.grads = be.alloc(part * c.world())?;
            }
        }
        // The same val windows for every run, whatever its seed, so val curves are comparable across runs.
        let eval = fixed_batches(
            &data.val,
            tr.batch_size,
            m.seq_len,
            tr.eval_batches,
            EVAL_SEED,
        );
        Ok(Trainer {
            be,
            cfg,
            model,
            opt,
            data,
            sampler: BatchSampler::new(tr.seed),
            eval,
            init: None,
            last_checkpoint: None,
            comm,
        })
    }

    /// `cfg`'s run restored from the latest checkpoint of its directory (weights, moments, step, data
    /// cursor, the rotation's state): continuing it gives the bits an uninterrupted run gives. The step
    /// is the one in the checkpoint's `state.json` (the optimizer's count), whatever the directory's name.
    pub fn resume(be: &'a BK, cfg: &'a RunConfig) -> Result<Self> {
        Self::resume_rank(be, cfg, None)
    }

    /// [`Trainer::resume`] for one data-parallel rank ([`Trainer::new_rank`]). A checkpoint holds the
    /// whole optimizer state, so a run resumes on any number of ranks; each keeps its own share.
    pub fn resume_rank(
        be: &'a BK,
        cfg: &'a RunConfig,
        comm: Option<Box<dyn Collective<BK> + 'a>>,
    ) -> Result<Self> {
        let mut t = Self::from_seed(be, cfg, comm)?;
        let Some((_, dir)) = checkpoint::latest(&cfg.out)? else {
            return Err(Error::bad_file(
                cfg.out.join("checkpoints"),
                "checkpoints",
                "no checkpoint to resume from (expected checkpoints/step_N/state.json)",
            ));
        };
        let state = checkpoint::load(be, &dir, &mut t.model, &mut t.opt)?;
        if state.rotation.normalized() != cfg.rotation.normalized() {
            return Err(Error::bad_file(
                dir.join("state.json"),
                "rotation",
                format!(
                    "checkpoint was trained under {:?}, the run's config says {:?}",
                    state.rotation, cfg.rotation
                ),
            ));
        }
        t.sampler = state.sampler;
        t.last_checkpoint = Some(dir);
        Ok(t)
    }

    /// Optimizer steps completed: the optimizer's step count, the one counter of the run.
    pub fn steps_done(&self) -> usize {
        self.opt.step
    }

    /// Weights from a Hugging Face GPT-2 `model.safetensors`, or a directory holding one (a checkpoint);
    /// returns how many non-zero bias tensors of the file a model without biases ignored.
    fn init_from(&mut self, path: &std::path::Path) -> Result<usize> {
        let (flat, ignored) = crate::model::hf::load(path, &self.model.cfg, &self.model.table)?;
        self.model.set_params_f64(self.be, &flat)?;
        Ok(ignored)
    }

    /// One optimizer step: the gradient of the mean loss over `grad_accum` micro-batches, the divergence
    /// check (a non-finite loss or gradient norm is an error naming the last good checkpoint), clipping,
    /// the optimizer at the schedule's learning rate.
    pub fn step(&mut self) -> Result<StepReport> {
        let (be, tr, t) = (self.be, &self.cfg.train, self.cfg.model.seq_len);
        let it = self.steps_done();
        let step = it + 1;
        let ts = Instant::now();
        let lr = schedule::lr_at(it, tr.lr, tr.min_lr, tr.warmup, tr.decay_steps());
        let dloss = 1.0 / (tr.batch_size * t * tr.grad_accum) as f64;
        self.model.zero_grads(be)?;
        // Rank r of W takes micro-batches r·A/W .. (r+1)·A/W of the step's A; every rank draws all A
        // from the same sampler, so W ranks see exactly the tokens one rank sees.
        let (rank, world) = self.rank();
        let share = tr.grad_accum / world;
        let mine = rank * share..(rank + 1) * share;
        let mut losses = Vec::with_capacity(share);
        for i in 0..tr.grad_accum {
            let b = self.sampler.next_batch(&self.data.train, tr.batch_size, t);
            if mine.contains(&i) {
                losses.push(
                    self.model
                        .forward_backward(be, &b.inputs, &b.targets, b.b, b.t, dloss)?,
                );
            }
        }
        let norm = match (&self.comm, self.opt.gradient_part()) {
            (None, _) => grad_norm(be, &self.model.grads)?,
            (Some(c), None) => {
                c.all_reduce_sum(be, &mut self.model.grads)?;
                grad_norm(be, &self.model.grads)?
            }
            // a sharded AdamW without a rotation needs only its range of the sum: the norm is the
            // sum of the ranges' squares, in rank order
            (Some(c), Some(part)) => {
                c.reduce_scatter_sum(be, &mut self.model.grads, part)?;
                let mine = self
                    .opt
                    .shard_range()
                    .expect("a sharded optimizer has a range");
                let own = be.sum_squares(be.view(&self.model.grads, mine))?;
                let mut sum = 0.0;
                for s in c.all_gather_host(be, &[own])? {
                    sum += s;
                }
                sum.sqrt()
            }
        };
        if let Some(c) = &self.comm {
            losses = c.all_gather_host(be, &losses)?;
        }
        // summed in micro-batch order, as one rank sums them
        let mut loss = 0.0;
        for l in losses {
            loss += l;
        }
        loss /= tr.grad_accum as f64;
        let bad = if !loss.is_finite() {
            Some(("train loss", loss))
        } else if !norm.is_finite() {
            Some(("gradient norm", norm))
        } else {
            None
        };
        if let Some((what, value)) = bad {
            return Err(Error::Diverged {
                step,
                what: what.into(),
                value,
                kept: match &self.last_checkpoint {
                    Some(d) => format!("the last good checkpoint is {}", d.display()),
                    None => "no checkpoint had been written yet".into(),
                },
            });
        }
        clip_grads(be, &mut self.model.grads, norm, tr.clip)?;
        self.opt.step_ranked(
            be,
            &self.model.table,
            &mut self.model.params,
            &self.model.grads,
            lr,
            self.comm.as_deref(),
        )?;
        debug_assert_eq!(self.steps_done(), step);
        Ok(StepReport {
            step,
            loss,
            lr,
            grad_norm: norm,
            seconds: ts.elapsed().as_secs_f64(),
        })
    }

    /// Mean loss over the fixed evaluation batches.
    /// Data-parallel ranks share the batches (rank r the r-th run of ⌈E/W⌉) and sum every batch's loss
    /// in batch order, as one rank does.
    pub fn evaluate(&mut self) -> Result<f64> {
        let n = self.eval.len();
        let (rank, world) = self.rank();
        let chunk = n.div_ceil(world);
        let mut losses = vec![0.0; chunk];
        for (i, b) in self.eval.iter().enumerate().skip(rank * chunk).take(chunk) {
            losses[i - rank * chunk] = self.model.loss(self.be, &b.inputs, &b.targets, b.b, b.t)?;
        }
        if let Some(c) = &self.comm {
            losses = c.all_gather_host(self.be, &losses)?;
        }
        let mut sum = 0.0;
        for l in &losses[..n] {
            sum += l;
        }
        Ok(sum / n as f64)
    }

    /// With several ranks: every rank's `outcome` of something that may fail on one rank alone, shared (a
    /// collective). Returns this rank's own error, else an error naming a rank that failed, else Ok.
    pub fn settle(&mut self, outcome: Result<()>, what: &str) -> Result<()> {
        let Some(c) = &self.comm else {
            return outcome;
        };
        let oks = c.all_gather_host(self.be, &[f64::from(u8::from(outcome.is_ok()))]);
        outcome?;
        match oks?.iter().position(|&ok| ok == 0.0) {
            Some(rank) => Err(Error::PeerFailed(format!(
                "data-parallel rank {rank} failed in {what}; this rank stopped with it"
            ))),
            None => Ok(()),
        }
    }

    /// With several ranks, before the first step: the ranks must start from the same step with the same
    /// computation (the config without its runtime fields; a process given other options, or reading
    /// another run directory, would otherwise train differently or make other collectives). `ready` is
    /// this rank's preparation (rank 0's run directory), shared as [`Trainer::settle`] does.
    pub fn agree(&mut self, ready: Result<()>) -> Result<()> {
        let Some(c) = &self.comm else {
            return ready;
        };
        let text = self.cfg.computing(&[]).to_string();
        // FNV-1a, as two exact halves
        let hash = text.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
        });
        let mine = [
            f64::from(u8::from(ready.is_ok())),
            self.steps_done() as f64,
            (hash >> 32) as f64,
            (hash & 0xffff_ffff) as f64,
        ];
        let all = c.all_gather_host(self.be, &mine);
        ready?;
        let all = all?;
        let rows: Vec<&[f64]> = all.chunks(4).collect();
        if let Some(rank) = rows.iter().position(|r| r[0] == 0.0) {
            return Err(Error::PeerFailed(format!(
                "data-parallel rank {rank} failed before training; this rank stopped with it"
            )));
        }
        for (rank, r) in rows.iter().enumerate() {
            if r[1] != rows[0][1] {
                return Err(Error::config(
                    "resume",
                    format!(
                        "data-parallel rank {rank} starts at step {} where rank 0 starts at step {}: \
                         every rank must read the same run directory (--out)",
                        r[1], rows[0][1]
                    ),
                ));
            }
            if r[2..] != rows[0][2..] {
                return Err(Error::config(
                    "config",
                    format!(
                        "data-parallel rank {rank} was given another config than rank 0 (model, \
                         training or rotation options differ): every process must get the same options"
                    ),
                ));
            }
        }
        Ok(())
    }

    /// This rank (0 with one rank) and the number of ranks.
    pub fn rank(&self) -> (usize, usize) {
        self.comm.as_ref().map_or((0, 1), |c| (c.rank(), c.world()))
    }

    /// The run ended well on this rank: leaving no longer stops the other ranks.
    pub fn finish(&mut self) {
        if let Some(c) = self.comm.as_mut() {
            c.finish();
        }
    }

    /// Writes the checkpoint of the current step (atomically); returns its directory.
    pub fn checkpoint(&mut self, train_loss: f64, val_loss: Option<f64>) -> Result<PathBuf> {
        let state = TrainState {
            step: self.steps_done(),
            sampler: self.sampler.clone(),
            optimizer: self.cfg.train.optimizer,
            rotation: self.cfg.rotation.clone(),
            model: self.cfg.model.clone(),
            dtype: <BK::T as Scalar>::NAME.into(),
            num_params: self.model.num_params(),
            train_loss,
            val_loss,
        };
        // every rank takes part in gathering a sharded optimizer's state; rank 0 writes
        let opt_state = self.opt.state_host(self.be, self.comm.as_deref())?;
        let dir = if self.rank().0 == 0 {
            checkpoint::save_state(
                self.be,
                &self.cfg.out,
                &self.model,
                &self.opt,
                &opt_state,
                &state,
            )?
        } else {
            checkpoint::step_dir(&self.cfg.out, state.step)
        };
        self.last_checkpoint = Some(dir.clone());
        Ok(dir)
    }

    /// The data in words (`data: …` of the start-up lines).
    pub fn describe_data(&self) -> String {
        self.data.describe()
    }

    /// [`vocab_report`] of this run's model and data.
    pub fn describe_vocab(&self) -> String {
        vocab_report(&self.model.cfg, &self.data)
    }

    /// Trains to `cfg.train.steps`: every step, an evaluation every `eval_every` steps and at the last,
    /// a checkpoint every `checkpoint_every` steps and at the last; each step's metrics row goes through
    /// `observers` in order. Returns the first and last training loss of this call and the last val loss.
    pub fn run(&mut self, observers: &mut [&mut dyn Observer<BK>]) -> Result<RunLosses> {
        let result = self.run_steps(observers);
        for o in observers.iter_mut() {
            o.on_end();
        }
        result
    }

    fn run_steps(&mut self, observers: &mut [&mut dyn Observer<BK>]) -> Result<RunLosses> {
        let tr = &self.cfg.train;
        let mut losses = RunLosses {
            first_train: None,
            final_train: f64::NAN,
            final_val: None,
        };
        while self.steps_done() < tr.steps {
            let s = self.step()?;
            let val = if s.step.is_multiple_of(tr.eval_every) || s.step == tr.steps {
                Some(self.evaluate()?)
            } else {
                None
            };
            losses.first_train.get_or_insert(s.loss);
            losses.final_train = s.loss;
            if val.is_some() {
                losses.final_val = val;
            }
            let mut row = StepMetrics {
                step: s.step,
                train_loss: s.loss,
                lr: s.lr,
                grad_norm: s.grad_norm,
                tokens_per_s: self.cfg.tokens_per_step() as f64 / s.seconds,
                ms_per_step: s.seconds * 1e3,
                val_loss: val,
                optimizer: tr.optimizer.name().into(),
                rotation: self.cfg.rotation.kind,
                update_cv: None,
                svd_refresh: self.opt.basis.refreshed_at(s.step),
            };
            // what only rank 0 does (its observers, writing the checkpoint) can fail there alone: the
            // ranks settle each before their next collective, so that they stop together
            let mut watched = Ok(());
            for o in observers.iter_mut() {
                watched = o.on_step(self, &mut row);
                if watched.is_err() {
                    break;
                }
            }
            self.settle(watched, "its observers")?;
            if s.step.is_multiple_of(tr.checkpoint_every) || s.step == tr.steps {
                let written = self.checkpoint(s.loss, losses.final_val).map(|_| ());
                self.settle(written, "writing the checkpoint")?;
            }
        }
        Ok(losses)
    }
}

/// The losses [`Trainer::run`] saw.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RunLosses {
    pub first_train: Option<f64>,
    pub final_train: f64,
    pub final_val: Option<f64>,
}

/// Logs the update CV (the poster's semi-orthogonality of Adam's update, `optim::update_cv`) into the
/// row every `every` steps.
pub struct UpdateCvLog {
    pub every: usize,
}

impl<BK: Backend> Observer<BK> for UpdateCvLog {
    fn on_step(&mut self, t: &mut Trainer<'_, BK>, row: &mut StepMetrics) -> Result<()> {
        if self.every > 0 && row.step.is_multiple_of(self.every) {
            let u = t.opt.direction(t.be)?;
            let cvs = crate::optim::update_cv::per_weight(&t.model.table, &u)?;
            row.update_cv = Some(crate::optim::update_cv::summarize(&cvs));
        }
        Ok(())
    }
}

impl<BK: Backend> Observer<BK> for super::metrics::MetricsWriter {
    fn on_step(&mut self, _: &mut Trainer<'_, BK>, row: &mut StepMetrics) -> Result<()> {
        self.write(row)
    }
}

impl<BK: Backend> Observer<BK> for super::progress::Progress {
    fn on_step(&mut self, _: &mut Trainer<'_, BK>, row: &mut StepMetrics) -> Result<()> {
        self.step(row);
        Ok(())
    }
    fn on_end(&mut self) {
        self.finish();
    }
}

/// A closure told of every row (a sweep's progress bar).
pub struct OnStep<'f>(pub &'f mut (dyn FnMut(&StepMetrics) + Send));

impl<BK: Backend> Observer<BK> for OnStep<'_> {
    fn on_step(&mut self, _: &mut Trainer<'_, BK>, row: &mut StepMetrics) -> Result<()> {
        (self.0)(row);
        Ok(())
    }
}

/// How much of the vocabulary `data` uses, and the share of the parameters in the embedding tables, e.g.
/// `18,559 of 50,257 token ids occur (31,698 never); embeddings (wte, wpe) are 89.1% of the parameters`:
/// rows of tokens that never occur are trained only as the softmax's negatives (and by weight decay).
pub fn vocab_report(m: &crate::config::ModelConfig, data: &Dataset) -> String {
    use crate::data::shard::group_digits;
    let u = crate::data::vocab_usage(data, m.vocab_size);
    let emb = (m.vocab_size + m.seq_len) * m.n_embd;
    let total = crate::model::ParamTable::new(m).total;
    format!(
        "{} of {} token ids occur ({} never); embeddings (wte, wpe) are {:.1}% of the parameters",
        group_digits(u.present as u64),
        group_digits(m.vocab_size as u64),
        group_digits(u.never_seen as u64),
        100.0 * emb as f64 / total as f64
    )
}
