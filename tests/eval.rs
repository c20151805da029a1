//! `rotadam eval`: the loss and gradient of a checkpoint over a token file against the trainer's own step
//! on the same tokens (a file holding the windows the trainer's first step draws), the windowing (a
//! trailing partial window dropped and counted, a shorter --seq-len), run directories, bad token files,
//! and the command line.

use crate::util::{assert_close_scaled, synthetic_data, tiny_config, tmp};
use clap::{CommandFactory, Parser};
use rotadam::backend::cpu::CpuBackend;
use rotadam::cli::{Cli, Command};
use rotadam::config::{ModelConfig, Precision};
use rotadam::data::loader::BatchSampler;
use rotadam::data::shard::{write_flat, write_llmc_shard, Dataset};
use rotadam::eval::{self, EvalOptions, EvalPrecision, EvalReport};
use rotadam::model::hf::from_hf;
use rotadam::model::{Gpt2, ParamTable};
use rotadam::run::checkpoint;
use rotadam::run::trainer::Trainer;
use std::path::{Path, PathBuf};

/// Threads of the trainer and of `eval` alike (results are bit-identical for one thread count).
const THREADS: usize = 2;

/// A tiny f64 run whose first step was taken on the windows of a token file.
struct Step {
    root: PathBuf,
    model: ModelConfig,
    /// The run directory (checkpoints step_0 and step_1).
    run: PathBuf,
    /// The checkpoint before the step: the weights the step's gradient was taken at.
    ckpt: PathBuf,
    /// The windows of the step's micro-batches in order, T + 1 tokens each.
    stream: Vec<u16>,
    /// The file holding `stream`.
    tokens: PathBuf,
    /// Micro-batch size B of the run.
    batch_size: usize,
    /// The trainer's loss of the step (the mean over its micro-batches).
    loss: f64,
    /// The gradient the optimizer was given (clipping off), flat layout.
    grad: Vec<f64>,
}

/// Trains one step of the tiny model in f64 (clipping off, so the gradient the optimizer sees is the
/// gradient), with checkpoints before and after it, and writes the step's windows to `tokens.bin`: the
/// training sampler's batches, drawn again from the run's seed, each row's T inputs and its last target.
fn one_step(name: &str, bias: bool) -> Step {
    let root = tmp(name);
    synthetic_data(&root);
    let run = root.join("run");
    let mut cfg = tiny_config(&root, &run, 1);
    cfg.precision = Precision::Fp64;
    cfg.threads = THREADS;
    cfg.train.clip = 0.0;
    cfg.model.bias = bias;
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(THREADS)
        .build()
        .unwrap();
    let (ckpt, loss, grad) = pool.install(|| {
        let be = CpuBackend::<f64>::new(THREADS, false);
        let mut trainer = Trainer::new(&be, &cfg).unwrap();
        let ckpt = trainer.checkpoint(0.0, None).unwrap();
        let report = trainer.step().unwrap();
        let grad = trainer.model.grads_f64(&be).unwrap();
        trainer.checkpoint(report.loss, None).unwrap();
        (ckpt, report.loss, grad)
    });
    let (m, tr) = (&cfg.model, &cfg.train);
    let data = Dataset::open(&root, m.vocab_size, m.seq_len).unwrap();
    let mut sampler = BatchSampler::new(tr.seed);
    let mut stream = Vec::new();
    for _ in 0..tr.grad_accum {
        let b = sampler.next_batch(&data.train, tr.batch_size, m.seq_len);
        for i in 0..b.b {
            let (x, y) = b.row(i);
            stream.extend(x.iter().map(|&v| v as u16));
            stream.push(*y.last().unwrap() as u16);
        }
    }
    let tokens = root.join("tokens.bin");
    write_flat(&tokens, &stream).unwrap();
    Step {
        root,
        model: cfg.model.clone(),
        run,
        ckpt,
        stream,
        tokens,
        batch_size: tr.batch_size,
        loss,
        grad,
    }
}

impl Step {
    /// `eval`'s options on this step's checkpoint and file, with the run's micro-batch size.
    fn options(&self) -> EvalOptions {
        EvalOptions {
            batch_size: self.batch_size,
            threads: Some(THREADS),
            ..EvalOptions::new(&self.ckpt, &self.tokens)
        }
    }

    /// The micro-batches of the step: B × grad_accum windows.
    fn windows(&self) -> usize {
        self.stream.len() / (self.model.seq_len + 1)
    }
}

fn rel(a: f64, b: f64) -> f64 {
    (a - b).abs() / b.abs()
}

/// The gradient file read back: its tensor names, its dtype, and the flat gradient.
fn read_grad(path: &Path, model: &ModelConfig) -> (Vec<String>, safetensors::Dtype, Vec<f64>) {
    let bytes = std::fs::read(path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut names: Vec<String> = st.names().into_iter().map(String::from).collect();
    names.sort();
    let dtypes: Vec<safetensors::Dtype> = st.tensors().iter().map(|(_, v)| v.dtype()).collect();
    assert!(dtypes.windows(2).all(|w| w[0] == w[1]), "{dtypes:?}");
    let tensors = rotadam::tensors::read(path).unwrap();
    let table = ParamTable::new(model);
    let (flat, ignored) = from_hf(path, model, &table, &tensors).unwrap();
    assert_eq!(ignored, 0);
    (names, dtypes[0], flat)
}

fn names_of(path: &Path) -> Vec<String> {
    let mut names: Vec<String> = rotadam::tensors::read(path).unwrap().into_keys().collect();
    names.sort();
    names
}

fn error_of(opts: &EvalOptions) -> String {
    match eval::run(opts) {
        Ok(r) => panic!("expected an error, got {r:?}"),
        Err(e) => e.to_string(),
    }
}

/// (a) The loss of `eval` is the trainer's loss of the same windows, whatever the micro-batching.
/// Checked against planted bugs: targets not shifted (`window[..T]`), windows read with a stride of T,
/// and each micro-batch's mean weighted equally (fails at --batch-size 4: micro-batches of 4 and 2).
#[test]
fn the_loss_is_the_training_loss_of_the_same_windows() {
    let s = one_step("eval-loss", false);
    let r = eval::run(&s.options()).unwrap();
    assert_eq!(r.windows, s.windows());
    assert_eq!(r.tokens, s.windows() * s.model.seq_len);
    assert_eq!(r.dropped_tokens, 0);
    assert_eq!(r.seq_len, s.model.seq_len);
    // the checkpoint stores f64: its precision by default
    assert_eq!(r.precision, EvalPrecision::Fp64);
    assert_eq!(r.checkpoint, s.ckpt);
    assert_eq!(r.step, 0);
    assert!(r.grad.is_none());
    assert!(
        rel(r.loss, s.loss) <= 1e-12,
        "eval {} vs training {}",
        r.loss,
        s.loss
    );
    for b in [1, 4, 5, 100] {
        let r = eval::run(&EvalOptions {
            batch_size: b,
            ..s.options()
        })
        .unwrap();
        assert!(
            rel(r.loss, s.loss) <= 1e-12,
            "--batch-size {b}: eval {} vs training {}",
            r.loss,
            s.loss
        );
    }
    // fp32 of the same weights: close to the f64 loss
    let r32 = eval::run(&EvalOptions {
        precision: Some(EvalPrecision::Fp32),
        ..s.options()
    })
    .unwrap();
    assert_eq!(r32.precision, EvalPrecision::Fp32);
    assert!(rel(r32.loss, s.loss) <= 1e-5, "{} vs {}", r32.loss, s.loss);
    std::fs::remove_dir_all(&s.root).unwrap();
}

/// (b) The gradient written by --grad is the gradient the optimizer was given for the same windows, bit
/// for bit at the run's micro-batching (same micro-batches, same scale 1/(B·T·grad_accum)), to rounding at
/// another, in the checkpoint's Hugging Face names (all of them with biases; no bias tensors without) and
/// the dtype of the precision. Checked against planted bugs: each micro-batch's gradient scaled by its own
/// 1/(b·T) (off by grad_accum), the flat gradient written without the Hugging Face transposes (from_hf
/// reads Conv1D weights transposed), and the targets not shifted.
#[test]
fn the_gradient_is_the_one_the_optimizer_sees() {
    for bias in [false, true] {
        let s = one_step(&format!("eval-grad-{bias}"), bias);
        let out = s.root.join("grad.safetensors");
        let r = eval::run(&EvalOptions {
            grad: Some(out.clone()),
            ..s.options()
        })
        .unwrap();
        assert_eq!(r.grad.as_deref(), Some(out.as_path()));
        assert!(rel(r.loss, s.loss) <= 1e-12, "{} vs {}", r.loss, s.loss);
        let (names, dtype, g) = read_grad(&out, &s.model);
        assert_eq!(dtype, safetensors::Dtype::F64);
        let model_names: Vec<String> = names_of(&s.ckpt.join("model.safetensors"))
            .into_iter()
            .filter(|n| bias || !n.ends_with(".bias"))
            .collect();
        assert_eq!(names, model_names, "bias {bias}");
        assert!(s.grad.iter().any(|&x| x != 0.0));
        let differ = g
            .iter()
            .zip(&s.grad)
            .filter(|(a, b)| a.to_bits() != b.to_bits())
            .count();
        assert_eq!(
            differ,
            0,
            "bias {bias}: {differ} of {} gradient entries differ",
            g.len()
        );

        // micro-batches of 4 and 2 windows: the same mean, to rounding
        let out4 = s.root.join("grad4.safetensors");
        eval::run(&EvalOptions {
            batch_size: 4,
            grad: Some(out4.clone()),
            ..s.options()
        })
        .unwrap();
        assert_close_scaled(
            "--batch-size 4",
            &read_grad(&out4, &s.model).2,
            &s.grad,
            1e-12,
        );

        // fp32: an f32 file, close to the f64 gradient
        let out32 = s.root.join("grad32.safetensors");
        eval::run(&EvalOptions {
            precision: Some(EvalPrecision::Fp32),
            grad: Some(out32.clone()),
            ..s.options()
        })
        .unwrap();
        let (_, dtype, g32) = read_grad(&out32, &s.model);
        assert_eq!(dtype, safetensors::Dtype::F32);
        assert_close_scaled("fp32", &g32, &s.grad, 1e-4);
        std::fs::remove_dir_all(&s.root).unwrap();
    }
}

/// The mean loss over consecutive windows of `t + 1` tokens, window by window on the model itself.
fn reference_loss(s: &Step, stream: &[u16], t: usize) -> f64 {
    let be = CpuBackend::<f64>::new(1, false);
    let mut model = Gpt2::new(&be, &s.model, 0).unwrap();
    let mp = s.ckpt.join("model.safetensors");
    let table = ParamTable::new(&s.model);
    let w = from_hf(&mp, &s.model, &table, &rotadam::tensors::read(&mp).unwrap())
        .unwrap()
        .0;
    model.set_params_f64(&be, &w).unwrap();
    let windows: Vec<&[u16]> = stream.chunks_exact(t + 1).collect();
    let sum: f64 = windows
        .iter()
        .map(|w| {
            let x: Vec<u32> = w[..t].iter().map(|&v| v.into()).collect();
            let y: Vec<u32> = w[1..].iter().map(|&v| v.into()).collect();
            model.loss(&be, &x, &y, 1, t).unwrap()
        })
        .sum();
    sum / windows.len() as f64
}

/// (c) A trailing partial window is dropped and counted, and leaves the loss as it was; a shorter
/// --seq-len cuts windows of that length + 1. Checked against planted bugs: the remainder not counted
/// (`dropped_tokens` 0), the partial window kept (zero-padded), and windows of T tokens (stride T).
#[test]
fn a_trailing_partial_window_is_dropped_and_counted() {
    let s = one_step("eval-partial", false);
    let full = eval::run(&s.options()).unwrap();
    let t = s.model.seq_len;
    for extra in [1, 5, t] {
        let mut stream = s.stream.clone();
        stream.extend((0..extra).map(|i| (i % s.model.vocab_size) as u16));
        let path = s.root.join(format!("tokens-{extra}.bin"));
        write_flat(&path, &stream).unwrap();
        let r = eval::run(&EvalOptions {
            tokens: path.clone(),
            ..s.options()
        })
        .unwrap();
        assert_eq!(
            (r.windows, r.tokens, r.dropped_tokens),
            (s.windows(), s.windows() * t, extra),
            "{extra} extra tokens"
        );
        assert_eq!(
            r.loss.to_bits(),
            full.loss.to_bits(),
            "{extra} extra tokens"
        );
    }

    // --seq-len 5 on the same 54 tokens: 9 windows of 6, nothing left
    let r = eval::run(&EvalOptions {
        seq_len: Some(5),
        ..s.options()
    })
    .unwrap();
    let n = s.stream.len();
    assert_eq!(
        (r.seq_len, r.windows, r.tokens, r.dropped_tokens),
        (5, n / 6, n / 6 * 5, n % 6)
    );
    let want = reference_loss(&s, &s.stream, 5);
    assert!(rel(r.loss, want) <= 1e-12, "{} vs {want}", r.loss);
    // --seq-len 4: windows of 5, with a remainder
    let r = eval::run(&EvalOptions {
        seq_len: Some(4),
        ..s.options()
    })
    .unwrap();
    assert_eq!((r.windows, r.dropped_tokens), (n / 5, n % 5));
    assert!(!n.is_multiple_of(5));
    let want = reference_loss(&s, &s.stream, 4);
    assert!(rel(r.loss, want) <= 1e-12, "{} vs {want}", r.loss);

    // longer than the model's context: an error naming the flag
    let e = error_of(&EvalOptions {
        seq_len: Some(t + 1),
        ..s.options()
    });
    assert!(e.contains("--seq-len") && e.contains("context"), "{e}");
    // fewer tokens than one window: an error naming the file
    let short = s.root.join("short.bin");
    write_flat(&short, &s.stream[..t]).unwrap();
    let e = error_of(&EvalOptions {
        tokens: short.clone(),
        ..s.options()
    });
    assert!(e.contains(&short.display().to_string()), "{e}");
    std::fs::remove_dir_all(&s.root).unwrap();
}

/// A run directory means its latest checkpoint (step_1 here, after step_0).
#[test]
fn a_run_directory_means_its_latest_checkpoint() {
    let s = one_step("eval-rundir", false);
    let r = eval::run(&EvalOptions {
        checkpoint: s.run.clone(),
        ..s.options()
    })
    .unwrap();
    assert_eq!(r.checkpoint, checkpoint::step_dir(&s.run, 1));
    assert_eq!(r.step, 1);
    // the step moved the weights: another loss
    assert!(rel(r.loss, s.loss) > 1e-6, "{} vs {}", r.loss, s.loss);
    let e = error_of(&EvalOptions {
        checkpoint: s.root.clone(),
        ..s.options()
    });
    assert!(e.contains(&s.root.display().to_string()), "{e}");
    std::fs::remove_dir_all(&s.root).unwrap();
}

/// An llm.c token shard is read as its tokens, not its header as 512 more (whose ids would pass a
/// GPT-2-sized vocabulary): the same windows, the same loss bit for bit.
#[test]
fn an_llmc_shard_is_read_as_its_tokens() {
    let s = one_step("eval-llmc", false);
    let flat = eval::run(&s.options()).unwrap();
    let shard = s.root.join("tokens_val.bin");
    write_llmc_shard(&shard, &s.stream).unwrap();
    let r = eval::run(&EvalOptions {
        tokens: shard,
        ..s.options()
    })
    .unwrap();
    assert_eq!((r.windows, r.dropped_tokens), (flat.windows, 0));
    assert_eq!(r.loss.to_bits(), flat.loss.to_bits());
    std::fs::remove_dir_all(&s.root).unwrap();
}

/// (d) A bad token file is an error naming the file: an odd number of bytes, a token id ≥ the vocabulary.
/// Checked against a planted bug: the file opened without the vocabulary check (the model then refuses
/// the batch, in a message that does not name the file).
#[test]
fn a_bad_token_file_is_an_error_naming_it() {
    let s = one_step("eval-bad", false);
    let odd = s.root.join("odd.bin");
    let mut bytes = std::fs::read(&s.tokens).unwrap();
    bytes.push(0);
    std::fs::write(&odd, &bytes).unwrap();
    let e = error_of(&EvalOptions {
        tokens: odd.clone(),
        ..s.options()
    });
    assert!(
        e.contains(&odd.display().to_string()) && e.contains("odd"),
        "{e}"
    );

    let big = s.root.join("big.bin");
    let mut stream = s.stream.clone();
    stream[7] = s.model.vocab_size as u16;
    write_flat(&big, &stream).unwrap();
    let e = error_of(&EvalOptions {
        tokens: big.clone(),
        ..s.options()
    });
    assert!(
        e.contains(&big.display().to_string()) && e.contains("token id"),
        "{e}"
    );

    let missing = s.root.join("missing.bin");
    let e = error_of(&EvalOptions {
        tokens: missing.clone(),
        ..s.options()
    });
    assert!(e.contains(&missing.display().to_string()), "{e}");
    std::fs::remove_dir_all(&s.root).unwrap();
}

#[test]
fn the_command_line_maps_onto_the_options() {
    let cli = Cli::try_parse_from([
        "rotadam",
        "eval",
        "runs/x/checkpoints/step_4",
        "--tokens",
        "val.bin",
        "--seq-len",
        "64",
        "--batch-size",
        "2",
        "--precision",
        "fp32",
        "--grad",
        "g.safetensors",
        "--json",
        "--threads",
        "3",
    ])
    .unwrap();
    let Command::Eval(a) = cli.command else {
        panic!("not eval")
    };
    assert!(a.json);
    let o = a.options();
    assert_eq!(o.checkpoint, PathBuf::from("runs/x/checkpoints/step_4"));
    assert_eq!(o.tokens, PathBuf::from("val.bin"));
    assert_eq!(o.seq_len, Some(64));
    assert_eq!(o.batch_size, 2);
    assert_eq!(o.precision, Some(EvalPrecision::Fp32));
    assert_eq!(o.grad, Some(PathBuf::from("g.safetensors")));
    assert_eq!(o.threads, Some(3));

    // the defaults: the library's
    let cli = Cli::try_parse_from(["rotadam", "eval", "run", "--tokens", "val.bin"]).unwrap();
    let Command::Eval(a) = cli.command else {
        panic!("not eval")
    };
    let (o, d) = (a.options(), EvalOptions::new("run", "val.bin"));
    assert_eq!(
        (o.seq_len, o.batch_size, o.precision, o.grad, o.threads),
        (d.seq_len, d.batch_size, d.precision, d.grad, d.threads)
    );
    assert!(!a.json);

    // bf16 is a training precision, not an eval one; --tokens is required
    assert!(Cli::try_parse_from([
        "rotadam",
        "eval",
        "r",
        "--tokens",
        "f",
        "--precision",
        "bf16"
    ])
    .is_err());
    assert!(Cli::try_parse_from(["rotadam", "eval", "r"]).is_err());
    let help = Cli::command()
        .find_subcommand_mut("eval")
        .unwrap()
        .render_long_help()
        .to_string();
    assert!(help.contains("the checkpoint's dtype"), "{help}");
}

/// `rotadam eval … --json --grad` end to end through the command line, and the JSON's keys.
#[test]
fn the_command_runs_and_its_json_has_the_documented_keys() {
    let s = one_step("eval-cli", false);
    let out = s.root.join("cli-grad.safetensors");
    let args: Vec<std::ffi::OsString> = vec![
        "rotadam".into(),
        "eval".into(),
        s.ckpt.clone().into(),
        "--tokens".into(),
        s.tokens.clone().into(),
        "--grad".into(),
        out.clone().into(),
        "--json".into(),
        "--threads".into(),
        "2".into(),
    ];
    let cli = Cli::try_parse_from(args).unwrap();
    rotadam::cli::run(cli).unwrap();
    assert!(out.is_file());
    let r: EvalReport = eval::run(&s.options()).unwrap();
    let json: serde_json::Value =
        serde_json::from_str(&rotadam::cli::to_json(&r).unwrap()).unwrap();
    for key in [
        "loss",
        "tokens",
        "windows",
        "dropped_tokens",
        "checkpoint",
        "precision",
    ] {
        assert!(json.get(key).is_some(), "no {key} in {json}");
    }
    assert_eq!(json["precision"], "fp64");
    let line = eval::line(&r);
    assert!(
        line.contains("loss") && line.contains("48 tokens"),
        "{line}"
    );
    std::fs::remove_dir_all(&s.root).unwrap();
}
