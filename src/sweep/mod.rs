//! `rotadam sweep`: the same GPT-2 run under several rotations (or an ablation's variants) and seeds, then a
//! report (`report.md`, loss figures, a table of final losses and slowdowns, the exact command lines).
//!
//! Layout of a sweep directory: `DIR/runs/<variant>-s<seed>/` (ordinary run directories), `DIR/sweep.json`
//! (the variants, seeds and the base config), `DIR/report.md`, `DIR/loss_val.{png,svg}`,
//! `DIR/loss_train.{png,svg}`, `DIR/summary.json`. Every run of one seed shares the initialisation and the
//! data order (both follow `--seed`); the rotation's seed follows the run's seed too.
//!
//! Reuse: a run directory whose config matches (ignoring `out`, `threads`, `device`, `quiet`,
//! `eval_every`, `checkpoint_every`, and `steps` when `--lr-decay-steps` fixes the schedule) is reused: finished runs are not retrained, interrupted ones resume
//! from their latest checkpoint (bit-identically), runs that wrote no checkpoint yet start over. A run
//! directory with a different config is an error naming the field, never overwritten.
//!
//! Parts: a sweep spreads over machines as its runs ([`Selection`]: `--only`, `--shard`; [`list`]: one
//! `gpt2 --resume` command per run), and [`report_only`] aggregates whatever has finished.

pub mod diagnostics;
pub mod plot_runs;
pub mod report;

use crate::config::{EmbeddingRotation, OptimizerKind, Precision, RotationKind, RunConfig, Scope};
use crate::data::shard::Dataset;
use crate::error::{Error, Result};
use crate::plot::{Axes, LineChart, Series};
use crate::run::lock::DirLock;
use crate::run::options::{utc_stamp, RunOptions};
use crate::run::{checkpoint, metrics};
use indicatif::{ProgressBar, ProgressStyle};
use report::{RunCurves, Slowdown};
use serde::{Deserialize, Serialize};
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use EmbeddingRotation::{Head, None as EmbNone, Paper};

/// The rotations of a plain sweep (Maes et al. Fig. 3), in the order of the paper's legend.
pub const DEFAULT_ROTATIONS: &str = "none,output,input,layer,global,svd";

/// The SGD learning rate of the ablations with SGD variants: SGD needs a far larger step than Adam's
/// lr; 0.1 was the best of 0.1, 0.5, 1.5 for 60 steps of the `small` model.
pub const DEFAULT_SGD_LR: f64 = 0.1;

/// `--ablation orthogonality` logs the update CV every this many steps unless `--log-update-cv` says.
pub const ORTHOGONALITY_CV_EVERY: usize = 50;

/// Block sizes of `--ablation block-size` (Maes et al. Fig. 8).
pub const ABLATION_BLOCKS: [usize; 4] = [64, 256, 768, 2048];

/// Preset sweeps reproducing the papers' ablations.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ablation {
    BlockSize,
    SgdValidation,
    Precision,
    Optimizers,
    Embeddings,
    Orthogonality,
}

impl crate::config::Choice for Ablation {
    const WHAT: &'static str = "ablation";
    const VALUES: &'static [(Self, &'static str, &'static str)] = &[
        (
            Ablation::BlockSize,
            "block-size",
            "global rotation with block sizes n ∈ {64, 256, 768, 2048}, plus the unrotated baseline (Maes et al. Fig. 8)",
        ),
        (
            Ablation::SgdValidation,
            "sgd-validation",
            "SGD with momentum, none vs global, in fp32 and bf16: the curves must coincide (Maes et al. Fig. 9)",
        ),
        (
            Ablation::Precision,
            "precision",
            "AdamW in fp32 vs bf16, under none and global",
        ),
        (
            Ablation::Optimizers,
            "optimizers",
            "AdamW, SGD, AdaSGD and blockwise Adam, under none and global (Xie et al. Fig. 1)",
        ),
        (
            Ablation::Embeddings,
            "embeddings",
            "--embedding-rotation paper, head and none under output, paper and none under global (where paper and head are the same), plus the unrotated baseline",
        ),
        (
            Ablation::Orthogonality,
            "orthogonality",
            "AdamW under none, global, svd and soap, and Muon, logging the update CV: does the update's orthogonality predict the loss (the poster's claim)?",
        ),
    ];
}
crate::config::choice_impls!(Ablation);

/// What a sweep runs (the command line's `--help` documents each option).
#[derive(Debug, Clone)]
pub struct SweepOptions {
    /// Rotations to compare (ignored with an ablation).
    pub rotations: Vec<RotationKind>,
    /// Seeds per variant: the base seed, +1, …
    pub seeds: usize,
    /// A preset sweep instead of `rotations`.
    pub ablation: Option<Ablation>,
    /// Learning rate of the SGD variants of the `optimizers` and `sgd-validation` ablations.
    pub sgd_lr: f64,
    /// Options of every run; `out` is the sweep directory, `seed` the first seed.
    pub run: RunOptions,
    /// Which of the planned runs this invocation handles (all by default).
    pub select: Selection,
}

/// A subset of a sweep's runs, for spreading one sweep over several machines or jobs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Selection {
    /// Run names (`<variant>-s<seed>`, the run directory's name); empty: no restriction.
    pub only: Vec<String>,
    /// `(i, n)`, 1 ≤ i ≤ n: the runs whose 0-based index in the plan is ≡ i − 1 (mod n).
    pub shard: Option<(usize, usize)>,
}

impl Selection {
    /// Parses `I/N` (1 ≤ I ≤ N).
    pub fn parse_shard(text: &str) -> Result<(usize, usize)> {
        let bad = || {
            Error::config(
                "--shard",
                format!(
                    "'{text}' is not I/N with 1 ≤ I ≤ N (e.g. 2/8: the second of eight shards)"
                ),
            )
        };
        let (i, n) = text.split_once('/').ok_or_else(bad)?;
        let (i, n): (usize, usize) = (
            i.trim().parse().map_err(|_| bad())?,
            n.trim().parse().map_err(|_| bad())?,
        );
        if i == 0 || i > n {
            return Err(bad());
        }
        Ok((i, n))
    }

    fn is_all(&self) -> bool {
        self.only.is_empty() && self.shard.is_none()
    }

    /// The indices of the selected runs, in plan order; an `only` name that is no run is an error that
    /// lists the names.
    pub fn indices(&self, runs: &[PlannedRun]) -> Result<Vec<usize>> {
        let names: Vec<String> = runs.iter().map(PlannedRun::name).collect();
        if let Some(unknown) = self.only.iter().find(|o| !names.contains(o)) {
            return Err(Error::config(
                "--only",
                format!(
                    "'{unknown}' is not a run of this sweep; its runs are {}",
                    names.join(", ")
                ),
            ));
        }
        Ok((0..runs.len())
            .filter(|&k| self.only.is_empty() || self.only.contains(&names[k]))
            .filter(|&k| self.shard.is_none_or(|(i, n)| k % n == i - 1))
            .collect())
    }
}

/// One line of a sweep: what differs from the base run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Variant {
    /// Row label and directory stem, e.g. `global`, `global-n64`, `sgd-global-bf16`.
    pub label: String,
    pub rotation: RotationKind,
    pub rotation_block: Option<usize>,
    pub optimizer: Option<OptimizerKind>,
    pub precision: Option<Precision>,
    pub lr: Option<f64>,
    /// `--embedding-rotation` of the variant (absent from a `sweep.json` written before it existed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub embeddings: Option<EmbeddingRotation>,
}

impl Variant {
    fn rotation(kind: RotationKind) -> Variant {
        Variant {
            label: kind.to_string(),
            rotation: kind,
            rotation_block: None,
            optimizer: None,
            precision: None,
            lr: None,
            embeddings: None,
        }
    }
}

const NONE: RotationKind = RotationKind::Scope(Scope::None);
const GLOBAL: RotationKind = RotationKind::Scope(Scope::Global);

/// The variants a sweep runs, first the baseline (the slowdowns are measured against it).
pub fn variants(args: &SweepOptions) -> Result<Vec<Variant>> {
    let v = match args.ablation {
        None => {
            if args.rotations.is_empty() {
                return Err(Error::config("--rotations", "names no rotation"));
            }
            let mut seen = std::collections::BTreeSet::new();
            if let Some(dup) = args.rotations.iter().find(|r| !seen.insert(r.name())) {
                return Err(Error::config(
                    "--rotations",
                    format!("{dup} is listed twice"),
                ));
            }
            args.rotations
                .iter()
                .map(|&r| Variant::rotation(r))
                .collect()
        }
        Some(Ablation::BlockSize) => std::iter::once(Variant::rotation(NONE))
            .chain(ABLATION_BLOCKS.iter().map(|&n| Variant {
                label: format!("global-n{n}"),
                rotation_block: Some(n),
                ..Variant::rotation(GLOBAL)
            }))
            .collect(),
        Some(Ablation::SgdValidation) => {
            let mut v = Vec::new();
            for p in [Precision::Fp32, Precision::Bf16] {
                for r in [NONE, GLOBAL] {
                    v.push(Variant {
                        label: format!("sgd-{r}-{}", p.name()),
                        optimizer: Some(OptimizerKind::Sgd),
                        precision: Some(p),
                        lr: Some(args.sgd_lr),
                        ..Variant::rotation(r)
                    });
                }
            }
            v
        }
        Some(Ablation::Precision) => {
            let mut v = Vec::new();
            for p in [Precision::Fp32, Precision::Bf16] {
                for r in [NONE, GLOBAL] {
                    v.push(Variant {
                        label: format!("{r}-{}", p.name()),
                        precision: Some(p),
                        ..Variant::rotation(r)
                    });
                }
            }
            v
        }
        Some(Ablation::Optimizers) => {
            let mut v = Vec::new();
            for o in [
                OptimizerKind::Adamw,
                OptimizerKind::Sgd,
                OptimizerKind::Adasgd,
                OptimizerKind::BlockwiseAdam,
            ] {
                for r in [NONE, GLOBAL] {
                    v.push(Variant {
                        label: format!("{}-{r}", o.name()),
                        optimizer: Some(o),
                        lr: (o == OptimizerKind::Sgd).then_some(args.sgd_lr),
                        ..Variant::rotation(r)
                    });
                }
            }
            v
        }
        Some(Ablation::Embeddings) => {
            let output = RotationKind::Scope(Scope::Output);
            let mut v = vec![Variant::rotation(NONE)];
            for (r, choices) in [
                (output, &[Paper, Head, EmbNone][..]),
                (GLOBAL, &[Paper, EmbNone][..]),
            ] {
                for &e in choices {
                    v.push(Variant {
                        // `paper` is the default: its runs are the plain sweep's (and reusable from it)
                        label: match e {
                            Paper => r.to_string(),
                            _ => format!("{r}-emb-{e}"),
                        },
                        embeddings: Some(e),
                        ..Variant::rotation(r)
                    });
                }
            }
            v
        }
        Some(Ablation::Orthogonality) => {
            let mut v: Vec<Variant> = [NONE, GLOBAL, RotationKind::Svd, RotationKind::Soap]
                .into_iter()
                .map(Variant::rotation)
                .collect();
            v.push(Variant {
                label: "muon".into(),
                optimizer: Some(OptimizerKind::Muon),
                ..Variant::rotation(NONE)
            });
            v
        }
    };
    Ok(v)
}

/// One run of the sweep: its variant, seed, directory and config.
#[derive(Clone, Debug)]
pub struct PlannedRun {
    pub variant: usize,
    pub seed: u64,
    pub dir: PathBuf,
    pub cfg: RunConfig,
}

impl PlannedRun {
    /// `<variant>-s<seed>`: the run directory's name, and what `--only` takes.
    pub fn name(&self) -> String {
        self.dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    }

    /// Whether the run has trained all its steps: its last metrics row is at `steps` or beyond.
    pub fn progress(&self) -> Result<RunProgress> {
        let path = self.dir.join("metrics.jsonl");
        if !path.exists() {
            return Ok(RunProgress::NotStarted);
        }
        let rows = metrics::read(&path)?;
        let last = rows.last().map_or(0, |r| r.step);
        Ok(if last >= self.cfg.train.steps {
            RunProgress::Finished
        } else {
            RunProgress::AtStep(last)
        })
    }
}

/// How far a planned run has got.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RunProgress {
    NotStarted,
    AtStep(usize),
    Finished,
}

/// The sweep directory and every run's config, built from the base flags (the same validation as `gpt2`).
pub fn plan(args: &SweepOptions) -> Result<(PathBuf, Vec<Variant>, Vec<PlannedRun>)> {
    let g = &args.run;
    for (given, flag, instead) in [
        (g.rotation.is_some(), "--rotation", "--rotations"),
        (
            g.resume.is_some(),
            "--resume",
            "the same sweep command again",
        ),
    ] {
        if given {
            return Err(Error::config(
                flag,
                format!("is not a sweep option; use {instead}"),
            ));
        }
    }
    if args.seeds == 0 {
        return Err(Error::config("--seeds", "must be at least 1"));
    }
    let variants = variants(args)?;
    let dir = g
        .out
        .clone()
        .unwrap_or_else(|| PathBuf::from("runs").join(format!("sweep-{}", utc_stamp())));
    // The first seed: --seed, or the preset's (or config file's) default.
    let base_seed = match g.seed {
        Some(s) => s,
        None => {
            let mut probe = g.clone();
            probe.out = Some(dir.join("probe"));
            probe.to_config()?.0.train.seed
        }
    };
    let mut runs = Vec::new();
    for (vi, v) in variants.iter().enumerate() {
        for k in 0..args.seeds {
            let seed = base_seed + k as u64;
            let run_dir = dir.join("runs").join(format!("{}-s{seed}", v.label));
            let mut a = g.clone();
            a.rotation = Some(v.rotation);
            a.rotation_block = v.rotation_block.or(a.rotation_block);
            a.optimizer = v.optimizer.or(a.optimizer);
            a.precision = v.precision.or(a.precision);
            a.embedding_rotation = v.embeddings.or(a.embedding_rotation);
            if v.lr.is_some() {
                a.lr = v.lr;
                a.min_lr = None;
            }
            if args.ablation == Some(Ablation::Orthogonality) && a.log_update_cv.is_none() {
                a.log_update_cv = Some(ORTHOGONALITY_CV_EVERY);
            }
            a.seed = Some(seed);
            a.out = Some(run_dir.clone());
            a.quiet = true;
            let (cfg, _) = a.to_config()?;
            runs.push(PlannedRun {
                variant: vi,
                seed,
                dir: run_dir,
                cfg,
            });
        }
    }
    Ok((dir, variants, runs))
}

/// Fields of `train` that may differ between a run directory's config.json and the sweep's plan of it
/// (with [`crate::config::RUNTIME_FIELDS`]): a sweep extends its runs and may evaluate and checkpoint
/// them at other intervals. The schedule's decay step is compared, so extending a run whose cosine
/// schedule ended at its old `steps` is refused.
const RUNTIME_TRAIN_FIELDS: [&str; 3] = ["steps", "eval_every", "checkpoint_every"];

/// What happened to one run of the sweep.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum RunStatus {
    Trained,
    Resumed,
    Reused,
}

/// Whether `run.dir` holds a finished, resumable or no usable run; errors if it holds a different one.
fn existing_state(run: &PlannedRun) -> Result<Option<usize>> {
    let config_path = run.dir.join("config.json");
    if !config_path.exists() {
        return Ok(None);
    }
    let old = RunConfig::read(&config_path)?;
    if let Some(field) = old.difference(&run.cfg, &RUNTIME_TRAIN_FIELDS) {
        return Err(Error::bad_file(
            &config_path,
            field,
            format!(
                "this sweep would run {} with a different setting; choose another --out or remove the directory",
                run.dir.display()
            ),
        ));
    }
    Ok(checkpoint::latest(&run.dir)?.map(|(step, _)| step))
}

/// Train (or resume, or reuse) one planned run. `on_step` sees every step trained.
pub fn run_one(
    run: &PlannedRun,
    on_step: &mut (dyn FnMut(&metrics::StepMetrics) + Send),
) -> Result<RunStatus> {
    let steps = run.cfg.train.steps;
    match existing_state(run)? {
        Some(step) if step >= steps => Ok(RunStatus::Reused),
        Some(_) => {
            // exactly `gpt2 --resume DIR` with this sweep's runtime settings
            let (cfg, _) = RunOptions {
                resume: Some(run.dir.clone()),
                steps: Some(steps),
                eval_every: Some(run.cfg.train.eval_every),
                checkpoint_every: Some(run.cfg.train.checkpoint_every),
                threads: Some(run.cfg.threads),
                device: Some(run.cfg.device),
                quiet: true,
                ..Default::default()
            }
            .to_config()?;
            crate::run::train::train_observed(&cfg, true, on_step)?;
            Ok(RunStatus::Resumed)
        }
        None => {
            // no checkpoint: what is there (config.json, a partial metrics.jsonl) is rewritten from step 0
            for f in ["config.json", "metrics.jsonl"] {
                let p = run.dir.join(f);
                if p.exists() {
                    std::fs::remove_file(&p).map_err(|e| Error::io(&p, e))?;
                }
            }
            crate::run::train::train_observed(&run.cfg, false, on_step)?;
            Ok(RunStatus::Trained)
        }
    }
}

/// The sweep's progress: one bar over all steps of all runs on a terminal, log lines otherwise.
struct SweepProgress {
    bar: Option<ProgressBar>,
    quiet: bool,
}

impl SweepProgress {
    fn new(total_steps: u64, quiet: bool) -> Self {
        let bar = (!quiet && std::io::stderr().is_terminal()).then(|| {
            let bar = ProgressBar::new(total_steps);
            bar.set_style(
                ProgressStyle::with_template(
                    "{bar:30.cyan/blue} {pos}/{len} steps | {msg} | {elapsed_precise} < ETA {eta_precise}",
                )
                .expect("valid template")
                .progress_chars("=> "),
            );
            bar
        });
        SweepProgress { bar, quiet }
    }
    fn line(&self, msg: String) {
        match &self.bar {
            Some(b) => b.println(msg),
            None if !self.quiet => eprintln!("{msg}"),
            None => {}
        }
    }
}

/// One run in `sweep.json`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RunEntry {
    pub variant: String,
    pub seed: u64,
    pub dir: PathBuf,
}

/// Settings of a sweep, saved as `sweep.json` (read back by `diagnose --sweep`).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SweepRecord {
    pub command: Vec<String>,
    pub ablation: Option<Ablation>,
    pub seeds: Vec<u64>,
    pub variants: Vec<Variant>,
    pub runs: Vec<RunEntry>,
}

/// The command line of the whole sweep: this process's, without the options that select a part of it
/// or say what to do with it (`--only`, `--shard`, `--list`, `--report-only`), which every part shares.
fn whole_sweep_command() -> Vec<String> {
    let mut out = Vec::new();
    let mut args = std::env::args();
    while let Some(a) = args.next() {
        match a.as_str() {
            "--only" | "--shard" => {
                args.next();
            }
            "--list" | "--report-only" => {}
            _ if a.starts_with("--only=") || a.starts_with("--shard=") => {}
            _ => out.push(a),
        }
    }
    out
}

/// What [`start`] returns: the sweep directory, the variants, the planned runs, and the sweep directory's
/// lock when one was asked for.
type Started = (PathBuf, Vec<Variant>, Vec<PlannedRun>, Option<DirLock>);

/// Plans the sweep, creates its directory, takes its lock as `lock_as` when given, checks that no run
/// directory holds a run with other settings (an error naming the field, before anything is written) and
/// writes `sweep.json` (the same from every part of the sweep).
fn start(args: &SweepOptions, lock_as: Option<&str>) -> Result<Started> {
    let (dir, variants, runs) = plan(args)?;
    std::fs::create_dir_all(dir.join("runs")).map_err(|e| Error::io(&dir, e))?;
    let lock = lock_as.map(|who| DirLock::acquire(&dir, who)).transpose()?;
    for run in &runs {
        existing_state(run)?;
    }
    let mut seeds: Vec<u64> = runs.iter().map(|r| r.seed).collect();
    seeds.sort_unstable();
    seeds.dedup();
    let record = SweepRecord {
        command: whole_sweep_command(),
        ablation: args.ablation,
        seeds,
        variants: variants.clone(),
        runs: runs
            .iter()
            .map(|r| RunEntry {
                variant: variants[r.variant].label.clone(),
                seed: r.seed,
                dir: r.dir.clone(),
            })
            .collect(),
    };
    let path = dir.join("sweep.json");
    let json = serde_json::to_vec_pretty(&record).map_err(|source| Error::Json {
        path: path.clone(),
        source,
    })?;
    crate::files::write_atomic(&path, &json)?;
    Ok((dir, variants, runs, lock))
}

/// `sweep --list`: writes each selected run's `config.json` (kept when it is already there with the same
/// settings; an error naming the field when it differs) and returns one command per run that trains it
/// into its place in the sweep directory, `PROGRAM gpt2 --resume RUN_DIR`. The command is the same
/// whatever the run's state: it starts a run that has no checkpoint, resumes an interrupted one and
/// leaves a finished one as it is, so a scheduler may retry it; the run's own lock keeps two copies of
/// it from training at once. Rerunning `sweep` (or `sweep --report-only`) then writes the report.
pub fn list(args: &SweepOptions, program: &str) -> Result<Vec<String>> {
    let (_, _, runs, _) = start(args, None)?;
    let mut lines = Vec::new();
    for k in args.select.indices(&runs)? {
        let run = &runs[k];
        if existing_state(run)?.is_none() && !run.dir.join("config.json").exists() {
            std::fs::create_dir_all(&run.dir).map_err(|e| Error::io(&run.dir, e))?;
            let path = run.dir.join("config.json");
            let json = serde_json::to_vec_pretty(&run.cfg).map_err(|source| Error::Json {
                path: path.clone(),
                source,
            })?;
            crate::files::write_atomic(&path, &json)?;
        }
        lines.push(format!(
            "{program} gpt2 --resume {}",
            shell_quote(&run.dir.to_string_lossy())
        ));
    }
    Ok(lines)
}

/// `s` as one shell word: unchanged when it holds only safe characters, else single-quoted.
fn shell_quote(s: &str) -> String {
    let safe = |c: char| c.is_ascii_alphanumeric() || "/._-+=:,@%".contains(c);
    if !s.is_empty() && s.chars().all(safe) {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}

/// `sweep --report-only`: the report over the runs that have finished, the others listed as missing;
/// trains nothing. A run directory trained with other settings than these options plan is an error
/// naming the field, as when the sweep would train it. Returns the sweep directory.
pub fn report_only(args: &SweepOptions) -> Result<PathBuf> {
    let (dir, variants, runs, _lock) = start(args, Some("rotadam sweep --report-only"))?;
    let summary = write_report(&dir, &variants, &runs, args)?;
    if !args.run.quiet {
        eprintln!("{}", report_line(&dir, &summary));
    }
    Ok(dir)
}

fn report_line(dir: &Path, summary: &Summary) -> String {
    let missing = match summary.missing.len() {
        0 => String::new(),
        n => format!("; {n} run(s) not finished, listed there"),
    };
    format!(
        "report: {} ({} rows{missing})",
        dir.join("report.md").display(),
        summary.rows.len()
    )
}

/// Run the sweep (the runs `args.select` picks) and write its report. Returns the sweep directory.
///
/// A whole sweep holds the sweep directory's lock throughout. A part of one (`--only`, `--shard`) may run
/// beside the other parts, on other machines sharing the directory: it holds only its runs' locks, and
/// writes the report at the end when no other sweep process is writing it (else it says so and leaves
/// it to the last part, or to `--report-only`).
pub fn run(args: &SweepOptions) -> Result<PathBuf> {
    let whole = args.select.is_all();
    let (dir, variants, runs, lock) = start(args, whole.then_some("rotadam sweep"))?;
    let selected = args.select.indices(&runs)?;

    let total: u64 = selected
        .iter()
        .map(|&k| runs[k].cfg.train.steps as u64)
        .sum();
    let progress = SweepProgress::new(total, args.run.quiet);
    let part = if whole {
        String::new()
    } else {
        format!(", this part {} of them", selected.len())
    };
    progress.line(format!(
        "sweep: {} variants x {} seeds = {} runs of {} steps into {}{part}",
        variants.len(),
        args.seeds,
        runs.len(),
        runs.first().map_or(0, |r| r.cfg.train.steps),
        dir.display()
    ));
    let mut done_steps = 0u64;
    for (i, &k) in selected.iter().enumerate() {
        let run = &runs[k];
        let label = format!(
            "run {}/{} {} seed {}",
            i + 1,
            selected.len(),
            variants[run.variant].label,
            run.seed
        );
        let bar = progress.bar.clone();
        if let Some(b) = &bar {
            b.set_message(label.clone());
        }
        let base = done_steps;
        let every = (run.cfg.train.steps / 4).max(1);
        let quiet = args.run.quiet;
        let status = run_one(run, &mut |m| match &bar {
            Some(b) => b.set_position(base + m.step as u64),
            None if !quiet && (m.step % every == 0) => eprintln!(
                "{label}: step {}/{} loss {:.4}{}",
                m.step,
                run.cfg.train.steps,
                m.train_loss,
                m.val_loss
                    .map(|v| format!(" val {v:.4}"))
                    .unwrap_or_default()
            ),
            None => {}
        })?;
        done_steps += run.cfg.train.steps as u64;
        if let Some(b) = &progress.bar {
            b.set_position(done_steps);
        }
        progress.line(format!("{label}: {status:?} ({})", run.dir.display()));
    }
    if let Some(b) = &progress.bar {
        b.finish_and_clear();
    }
    let _lock = match lock {
        Some(l) => l,
        None => match DirLock::acquire(&dir, "rotadam sweep") {
            Ok(l) => l,
            Err(e) => {
                progress.line(format!(
                    "report: not written ({e}); `sweep --report-only` with the same options writes it"
                ));
                return Ok(dir);
            }
        },
    };
    let summary = write_report(&dir, &variants, &runs, args)?;
    progress.line(report_line(&dir, &summary));
    Ok(dir)
}

/// One row of the report's table.
#[derive(Clone, Debug, Serialize)]
pub struct SummaryRow {
    pub label: String,
    pub runs: usize,
    pub final_train_mean: f64,
    pub final_train_std: f64,
    pub final_val_mean: Option<f64>,
    pub final_val_std: Option<f64>,
    /// Percent extra steps to reach the baseline's final loss (see [`report`]); None for the baseline itself
    /// when the sweep has one variant.
    pub slowdown_pct: Option<f64>,
    /// True when the variant never reached the baseline's final loss (slowdown_pct is then a lower bound).
    pub slowdown_lower_bound: bool,
    /// Mean final val loss minus the baseline's: the comparison that stays informative when a variant
    /// ends just above the baseline (its slowdown then only says "not reached").
    pub val_gap: Option<f64>,
    /// The steps at which the baseline's mean curve reaches this variant's final loss
    /// ([`report::baseline_steps_to_final`]); None when it never does.
    pub baseline_steps_to_final: Option<f64>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Summary {
    /// `val` or `train (EMA 0.9)`: the curve the slowdowns were measured on.
    pub slowdown_curve: String,
    pub baseline: String,
    pub rows: Vec<SummaryRow>,
    /// Runs of the plan left out because they have not finished: `<variant>-s<seed>` and how far each
    /// got ("not started", "at step 500 of 1000").
    pub missing: Vec<String>,
    /// When every finished run logged its update CV (`--log-update-cv`): the update CV against the loss.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub update_cv: Option<UpdateCvAgainstLoss>,
}

/// The poster's predictor tested over a sweep's runs: each run's mean logged update CV (and its last
/// logged one) against its final val loss, and Spearman's ρ over runs.
#[derive(Clone, Debug, Serialize)]
pub struct UpdateCvAgainstLoss {
    pub runs: Vec<RunUpdateCv>,
    /// ρ(mean update CV over the logged steps, final val loss) over runs.
    pub spearman_mean_cv: Option<f64>,
    /// ρ(update CV at the last logged step, final val loss) over runs.
    pub spearman_last_cv: Option<f64>,
    /// The |ρ| above which ρ is significant at 5% (two-sided; `report::spearman_critical`) for this many
    /// runs.
    pub critical_rho: Option<f64>,
}

#[derive(Clone, Debug, Serialize)]
pub struct RunUpdateCv {
    pub variant: String,
    pub mean_cv: f64,
    pub last_cv: f64,
    pub final_val: f64,
}

/// The report's "update CV against the loss" section and its numbers, with the scatter figure
/// `update_cv_vs_val.png`; None unless every finished run has val losses and logged update CVs.
fn update_cv_section(
    dir: &Path,
    labels: &[String],
    curves: &[Vec<RunCurves>],
    runs: &[PlannedRun],
) -> Result<Option<(String, UpdateCvAgainstLoss)>> {
    let all = curves.iter().flatten();
    if all.clone().next().is_none()
        || all
            .clone()
            .any(|c| c.update_cv.is_empty() || c.val.is_empty())
    {
        return Ok(None);
    }
    let mut points = Vec::new();
    for (label, per) in labels.iter().zip(curves) {
        for c in per {
            let cvs: Vec<f64> = c.update_cv.iter().map(|p| p.1).collect();
            points.push(RunUpdateCv {
                variant: label.clone(),
                mean_cv: cvs.iter().sum::<f64>() / cvs.len() as f64,
                last_cv: *cvs.last().expect("non-empty"),
                final_val: c.val.last().expect("non-empty").1,
            });
        }
    }
    let xs: Vec<f64> = points.iter().map(|p| p.mean_cv).collect();
    let last: Vec<f64> = points.iter().map(|p| p.last_cv).collect();
    let ys: Vec<f64> = points.iter().map(|p| p.final_val).collect();
    let out = UpdateCvAgainstLoss {
        spearman_mean_cv: report::spearman(&xs, &ys),
        spearman_last_cv: report::spearman(&last, &ys),
        critical_rho: report::spearman_critical(points.len()),
        runs: points,
    };
    let every = runs.first().map_or(0, |r| r.cfg.train.log_update_cv);
    let mut series = Vec::new();
    for (i, label) in labels.iter().enumerate() {
        for (k, p) in out.runs.iter().filter(|p| &p.variant == label).enumerate() {
            let name = if k == 0 { label.as_str() } else { "" };
            series.push(Series::new(name, vec![(p.mean_cv, p.final_val)]).color(i));
        }
    }
    LineChart {
        axes: Axes::new(
            "final val loss against the mean update CV, one point per run",
            "mean update CV (std/mean of the update's singular values, mean over 2-D weights)",
            "final val loss",
        ),
        series,
    }
    .save_png_svg(&dir.join("update_cv_vs_val"))?;
    let fmt = |r: Option<f64>| r.map_or("—".to_string(), |r| format!("{r:+.2}"));
    let mut md = format!(
        "## Update CV against the loss\n\nThe poster's predictor (Maes et al., NeurIPS 2025 poster): the more \
         (semi-)orthogonal a run's updates (the lower the CV of their singular values), the better the run. \
         Each run's update CV was logged every {every} steps (`--log-update-cv`; Muon: the direction its \
         step applied, AdamW: Rᵀ(m̂/(√v̂+ε))); \"mean\" is over those steps, \"last\" the last of them.\n\n\
         ![final val loss against the mean update CV](update_cv_vs_val.png)\n\n\
         | variant | runs | mean update CV | last update CV | final val loss |\n|---|---:|---:|---:|---:|\n"
    );
    for label in labels {
        let mine: Vec<&RunUpdateCv> = out.runs.iter().filter(|p| &p.variant == label).collect();
        let col = |f: fn(&RunUpdateCv) -> f64| {
            let (m, s) = report::mean_std(&mine.iter().map(|p| f(p)).collect::<Vec<_>>());
            format!("{m:.3} ± {s:.3}")
        };
        md += &format!(
            "| {label} | {} | {} | {} | {} |\n",
            mine.len(),
            col(|p| p.mean_cv),
            col(|p| p.last_cv),
            col(|p| p.final_val)
        );
    }
    md += &format!(
        "\nSpearman's ρ over the {} runs between the update CV and the final val loss: **{}** (mean CV), \
         {} (last CV); |ρ| above {} is significant at the 5% level (two-sided), but the \
         runs of one variant share everything except the seed, so they are not independent draws of the \
         claim: read ρ together with the per-variant table. A positive ρ is what the poster predicts.\n\n",
        out.runs.len(),
        fmt(out.spearman_mean_cv),
        fmt(out.spearman_last_cv),
        out.critical_rho.map_or("—".to_string(), |c| format!("{c:.2}")),
    );
    Ok(Some((md, out)))
}

/// Per variant: the curves of its finished runs; and the runs that have not finished, with how far
/// each got.
fn load_curves(
    variants: &[Variant],
    runs: &[PlannedRun],
) -> Result<(Vec<Vec<RunCurves>>, Vec<String>)> {
    let mut per = vec![Vec::new(); variants.len()];
    let mut missing = Vec::new();
    for r in runs {
        match r.progress()? {
            RunProgress::Finished => {
                let rows = metrics::read(&r.dir.join("metrics.jsonl"))?;
                per[r.variant].push(RunCurves::from_metrics(&rows));
            }
            RunProgress::NotStarted => missing.push(format!("{} (not started)", r.name())),
            RunProgress::AtStep(s) => missing.push(format!(
                "{} (at step {s} of {})",
                r.name(),
                r.cfg.train.steps
            )),
        }
    }
    Ok((per, missing))
}

/// Summary table from the curves (pure: tested on synthetic curves).
pub fn summarize(labels: &[String], curves: &[Vec<RunCurves>]) -> Summary {
    let use_val = curves
        .iter()
        .all(|runs| runs.iter().all(|c| c.val.len() >= 2));
    let slowdown_curve = if use_val {
        "val".to_string()
    } else {
        format!("train (EMA {})", report::TRAIN_EMA)
    };
    let base = curves
        .first()
        .map(|r| report::mean_curve(r, use_val))
        .unwrap_or_default();
    let final_val = |runs: &[RunCurves]| -> Option<f64> {
        let val: Vec<f64> = runs
            .iter()
            .filter_map(|c| c.val.last().map(|p| p.1))
            .collect();
        (!val.is_empty() && val.len() == runs.len()).then(|| report::mean_std(&val).0)
    };
    let base_val = curves.first().and_then(|r| final_val(r));
    let rows = labels
        .iter()
        .zip(curves)
        .map(|(label, runs)| {
            let train: Vec<f64> = runs
                .iter()
                .map(|c| report::final_train_loss(&c.train))
                .collect();
            let val: Vec<f64> = runs
                .iter()
                .filter_map(|c| c.val.last().map(|p| p.1))
                .collect();
            let (tm, ts) = report::mean_std(&train);
            let (vm, vs) = report::mean_std(&val);
            let has_val = !val.is_empty() && val.len() == runs.len();
            let mean = report::mean_curve(runs, use_val);
            let sd = report::slowdown(&base, &mean);
            let equivalent = report::baseline_steps_to_final(&base, &mean);
            SummaryRow {
                label: label.clone(),
                runs: runs.len(),
                final_train_mean: tm,
                final_train_std: ts,
                final_val_mean: has_val.then_some(vm),
                final_val_std: has_val.then_some(vs),
                slowdown_pct: sd.map(|s| match s {
                    Slowdown::Reached(p) | Slowdown::NotReached(p) => p,
                }),
                slowdown_lower_bound: matches!(sd, Some(Slowdown::NotReached(_))),
                val_gap: base_val.zip(has_val.then_some(vm)).map(|(b, v)| v - b),
                baseline_steps_to_final: equivalent.map(|e| e.0),
            }
        })
        .collect();
    Summary {
        slowdown_curve,
        baseline: labels.first().cloned().unwrap_or_default(),
        rows,
        missing: Vec::new(),
        update_cv: None,
    }
}

/// The markdown table of a summary.
pub fn summary_table(s: &Summary) -> String {
    let mut t = String::from(
        "| variant | runs | final train loss | final val loss | val − baseline's | baseline's steps to it | slowdown vs baseline |\n|---|---:|---:|---:|---:|---:|---:|\n",
    );
    for r in &s.rows {
        // one run has no spread: print the value alone
        let pm = |m: f64, sd: f64| {
            if r.runs == 0 {
                "–".to_string()
            } else if r.runs > 1 {
                format!("{m:.4} ± {sd:.4}")
            } else {
                format!("{m:.4}")
            }
        };
        let val = match (r.final_val_mean, r.final_val_std) {
            (Some(m), Some(sd)) => pm(m, sd),
            _ => "–".into(),
        };
        let slow = match r.slowdown_pct {
            Some(p) if r.slowdown_lower_bound => Slowdown::NotReached(p).to_string(),
            Some(p) => Slowdown::Reached(p).to_string(),
            None => "–".into(),
        };
        let gap = r.val_gap.map_or("–".into(), |g| format!("{g:+.4}"));
        let steps = r
            .baseline_steps_to_final
            .map_or("never".into(), |s| format!("{s:.0}"));
        t += &format!(
            "| {} | {} | {} | {val} | {gap} | {steps} | {slow} |\n",
            r.label,
            r.runs,
            pm(r.final_train_mean, r.final_train_std)
        );
    }
    t
}

fn write_report(
    dir: &Path,
    variants: &[Variant],
    runs: &[PlannedRun],
    args: &SweepOptions,
) -> Result<Summary> {
    let (curves, missing) = load_curves(variants, runs)?;
    let labels: Vec<String> = variants.iter().map(|v| v.label.clone()).collect();
    let mut summary = summarize(&labels, &curves);
    summary.missing = missing;
    let figures = figures(dir, &labels, &curves)?;
    let steps = runs.first().map_or(0, |r| r.cfg.train.steps);
    let mut md = String::new();
    let title = match args.ablation {
        Some(a) => format!("Ablation `{a}`"),
        None => "Rotation sweep".into(),
    };
    md += &format!("# {title}\n\n");
    if let Some(first) = runs.first() {
        let c = &first.cfg;
        md += &format!(
            "GPT-2 `{}` ({} layers, {} wide), {} steps of {} tokens, data `{}`, {} seed(s) per variant ({}), \
             precision {}, optimizer {} unless the variant says otherwise.\n\n",
            c.model_preset,
            c.model.n_layer,
            c.model.n_embd,
            steps,
            c.tokens_per_step(),
            c.data,
            args.seeds,
            runs.iter()
                .filter(|r| r.variant == 0)
                .map(|r| r.seed.to_string())
                .collect::<Vec<_>>()
                .join(", "),
            c.precision.name(),
            c.train.optimizer.name()
        );
        let data_dir = crate::data::resolve(&c.data, true)?;
        let data = Dataset::open(&data_dir, c.model.vocab_size, c.model.seq_len)?;
        md += &format!(
            "Vocabulary: {}.\n\n",
            crate::run::trainer::vocab_report(&c.model, &data)
        );
    }
    for f in &figures {
        md += &format!("![{}]({})\n\n", f.0, f.1);
    }
    if !summary.missing.is_empty() {
        md += &format!(
            "**Incomplete:** {} of {} runs have finished; the table and figures use those. Not finished: {}.\n\n",
            runs.len() - summary.missing.len(),
            runs.len(),
            summary.missing.join(", ")
        );
    }
    md += &format!(
        "Curves: mean over seeds, shaded min–max. Final train loss: mean of the last 5% of steps per run; both \
         finals are mean ± std over seeds; \"val − baseline's\" is the difference of the mean final val losses, \
         \"baseline's steps to it\" the first step at which the baseline's mean curve reaches the variant's final \
         loss (\"never\": the variant ends below the baseline).\n\n{}\n",
        summary_table(&summary)
    );
    md += &format!(
        "**Slowdown** is measured on the {} curve (mean over seeds) against the baseline `{}`: L* is the \
         baseline's final loss, T_base the first step at which the baseline reaches L*, T the first step at \
         which the variant does (linear interpolation between logged points); slowdown = 100·(T − T_base)/T_base. \
         Negative is faster; \"> X% (not reached)\" means the variant never reached L* and X is a lower bound (\"not reached\" alone: the bound is 0, as when L* is only reached at the last step).\n\n",
        summary.slowdown_curve, summary.baseline
    );
    if let Some((section, cv)) = update_cv_section(dir, &labels, &curves, runs)? {
        md += &section;
        summary.update_cv = Some(cv);
    }
    md += "## Commands\n\nThe sweep:\n\n```\n";
    md += &whole_sweep_command().join(" ");
    md += "\n```\n\nEach run is reproducible from its config (exactly the same numbers):\n\n```\n";
    for r in runs {
        md += &format!(
            "cargo run --release -- gpt2 --config {} --out <new dir>\n",
            r.dir.join("config.json").display()
        );
    }
    md += "```\n";
    if let Some(section) = diagnostics::existing_section(&dir.join("report.md")) {
        md = diagnostics::with_section(&md, &section);
    }
    crate::files::write_atomic(&dir.join("report.md"), md.as_bytes())?;
    crate::files::write_atomic(
        &dir.join("summary.json"),
        &serde_json::to_vec_pretty(&summary).expect("summary serialises"),
    )?;
    Ok(summary)
}

/// Draws the loss figures (`loss_val`, `loss_train`: mean over seeds, shaded min–max); returns
/// (caption, relative path) of each PNG.
fn figures(
    dir: &Path,
    labels: &[String],
    curves: &[Vec<RunCurves>],
) -> Result<Vec<(String, String)>> {
    let mut out = Vec::new();
    let has_val = curves.iter().all(|r| r.iter().all(|c| !c.val.is_empty()));
    let kinds: &[(bool, &str, &str)] = if has_val {
        &[
            (true, "val", "validation loss"),
            (false, "train", "training loss (EMA 0.9)"),
        ]
    } else {
        &[(false, "train", "training loss (EMA 0.9)")]
    };
    for &(val, kind, caption) in kinds {
        let series = labels
            .iter()
            .zip(curves)
            .filter(|(_, runs)| !runs.is_empty())
            .map(|(label, runs)| {
                let cs: Vec<report::Curve> = runs.iter().map(|c| c.curve(val)).collect();
                crate::plot::Series::mean_min_max(label, &crate::plot::aggregate(&cs))
            })
            .collect();
        let chart = crate::plot::LineChart {
            axes: crate::plot::Axes::new(caption, "step", "loss"),
            series,
        };
        let stem = format!("loss_{kind}");
        chart.save_png_svg(&dir.join(&stem))?;
        out.push((caption.to_string(), format!("{stem}.png")));
    }
    Ok(out)
}
