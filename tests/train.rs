//! End-to-end runs: run directories, metrics, bit-identical resume, reproduction from config.json,
//! divergence handling, bad input, and a short run on the demo corpus that must lower the loss.

use crate::util::{synthetic_data, tiny_config, tmp};
use rotadam::config::{ModelConfig, Precision, RunConfig};
use rotadam::run::options::RunOptions;
use rotadam::run::{checkpoint, metrics, train};
use std::path::Path;

fn read(p: &Path) -> Vec<u8> {
    std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

#[test]
fn run_directory_has_config_metrics_and_checkpoints() {
    let root = tmp("rundir");
    synthetic_data(&root);
    let out = root.join("run");
    let cfg = tiny_config(&root, &out, 8);
    let o = train::train(&cfg, false).unwrap();
    assert!(
        o.final_train_loss < o.first_train_loss.unwrap() - 0.25,
        "{o:?}"
    );
    let saved: RunConfig =
        serde_json::from_slice(&read(&out.join("config.json"))).expect("config.json parses");
    assert_eq!(saved, cfg);
    let rows = metrics::read(&out.join("metrics.jsonl")).unwrap();
    assert_eq!(
        rows.iter().map(|r| r.step).collect::<Vec<_>>(),
        (1..=8).collect::<Vec<_>>()
    );
    assert!(rows
        .iter()
        .all(|r| r.tokens_per_s > 0.0 && r.ms_per_step > 0.0 && r.lr > 0.0));
    assert_eq!(
        rows.iter()
            .filter(|r| r.val_loss.is_some())
            .map(|r| r.step)
            .collect::<Vec<_>>(),
        vec![2, 4, 6, 8]
    );
    let text = String::from_utf8(read(&out.join("metrics.jsonl"))).unwrap();
    for key in [
        "\"step\"",
        "\"train_loss\"",
        "\"lr\"",
        "\"grad_norm\"",
        "\"tokens_per_s\"",
        "\"ms_per_step\"",
        "\"val_loss\"",
    ] {
        assert!(text.contains(key), "metrics.jsonl lacks {key}");
    }
    for step in [4, 8] {
        let d = checkpoint::step_dir(&out, step);
        for f in ["model.safetensors", "optim.safetensors", "state.json"] {
            assert!(d.join(f).is_file(), "{}/{f} missing", d.display());
        }
    }
    // nothing temporary left behind
    let leftovers: Vec<_> = std::fs::read_dir(out.join("checkpoints"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .filter(|n| n.contains("tmp"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    // an existing run directory is not overwritten
    let err = train::train(&cfg, false).unwrap_err().to_string();
    assert!(
        err.contains("already a run directory") && err.contains("--resume"),
        "{err}"
    );
    std::fs::remove_dir_all(&root).unwrap();
}

#[test]
fn resume_is_bit_identical() {
    for precision in [Precision::Fp32, Precision::Fp64] {
        let root = tmp(&format!("resume-{precision:?}"));
        synthetic_data(&root);
        let mut straight = tiny_config(&root, &root.join("straight"), 8);
        straight.precision = precision;
        train::train(&straight, false).unwrap();

        // the same run interrupted after its checkpoint at step 4, then resumed to 8 via the CLI path
        let mut first = straight.clone();
        first.out = root.join("resumed");
        first.train.steps = 4;
        train::train(&first, false).unwrap();
        let args = RunOptions {
            resume: Some(first.out.clone()),
            steps: Some(8),
            quiet: true,
            ..Default::default()
        };
        let (cfg, resume) = args.to_config().unwrap();
        assert!(resume);
        train::train(&cfg, true).unwrap();

        for f in ["model.safetensors", "optim.safetensors"] {
            let a = read(&checkpoint::step_dir(&straight.out, 8).join(f));
            let b = read(&checkpoint::step_dir(&first.out, 8).join(f));
            assert!(
                a == b,
                "{precision:?}: {f} differs between straight and resumed runs"
            );
        }
        let la: Vec<f64> = metrics::read(&straight.out.join("metrics.jsonl"))
            .unwrap()
            .iter()
            .map(|r| r.train_loss)
            .collect();
        let lb: Vec<f64> = metrics::read(&first.out.join("metrics.jsonl"))
            .unwrap()
            .iter()
            .map(|r| r.train_loss)
            .collect();
        assert_eq!(la, lb, "{precision:?}: loss curves differ");
        std::fs::remove_dir_all(&root).unwrap();
    }
}

#[test]
fn rerun_from_config_json_reproduces_the_run() {
    let root = tmp("rerun");
    synthetic_data(&root);
    let cfg = tiny_config(&root, &root.join("a"), 4);
    train::train(&cfg, false).unwrap();
    let args = RunOptions {
        config: Some(root.join("a/config.json")),
        out: Some(root.join("b")),
        quiet: true,
        ..Default::default()
    };
    let (cfg_b, resume) = args.to_config().unwrap();
    assert!(!resume);
    train::train(&cfg_b, false).unwrap();
    let loss = |d: &str| -> Vec<(f64, Option<f64>)> {
        metrics::read(&root.join(d).join("metrics.jsonl"))
            .unwrap()
            .iter()
            .map(|r| (r.train_loss, r.val_loss))
            .collect()
    };
    assert_eq!(loss("a"), loss("b"));
    std::fs::remove_dir_all(&root).unwrap();
}

#[test]
fn resume_rows_after_the_checkpoint_are_replaced() {
    let root = tmp("rows");
    synthetic_data(&root);
    let mut cfg = tiny_config(&root, &root.join("run"), 6);
    cfg.train.checkpoint_every = 4;
    train::train(&cfg, false).unwrap(); // checkpoints at 4 and 6
    std::fs::remove_dir_all(checkpoint::step_dir(&cfg.out, 6)).unwrap(); // as if it died after step 6's row
    let args = RunOptions {
        resume: Some(cfg.out.clone()),
        steps: Some(7),
        quiet: true,
        ..Default::default()
    };
    let (c, _) = args.to_config().unwrap();
    train::train(&c, true).unwrap();
    let steps: Vec<usize> = metrics::read(&cfg.out.join("metrics.jsonl"))
        .unwrap()
        .iter()
        .map(|r| r.step)
        .collect();
    assert_eq!(steps, (1..=7).collect::<Vec<_>>());
    std::fs::remove_dir_all(&root).unwrap();
}

#[test]
fn divergence_stops_with_the_step_and_keeps_the_last_good_checkpoint() {
    let root = tmp("diverge");
    synthetic_data(&root);
    let mut cfg = tiny_config(&root, &root.join("run"), 8);
    cfg.train.lr = 1e30;
    cfg.train.min_lr = 1e30;
    cfg.train.warmup = 0;
    cfg.train.checkpoint_every = 1;
    let err = train::train(&cfg, false).unwrap_err();
    let msg = err.to_string();
    let rotadam::Error::Diverged { step, .. } = err else {
        panic!("expected divergence, got {msg}");
    };
    assert!(step >= 2, "{msg}");
    assert!(msg.contains(&format!("step {step}")), "{msg}");
    let (last, dir) = checkpoint::latest(&cfg.out)
        .unwrap()
        .expect("a checkpoint survives");
    assert_eq!(last, step - 1);
    assert!(msg.contains(&dir.display().to_string()), "{msg}");
    std::fs::remove_dir_all(&root).unwrap();
}

#[test]
fn bad_resume_and_bad_checkpoints_are_clear_errors() {
    let root = tmp("badresume");
    synthetic_data(&root);
    // a directory that is not a run
    let args = RunOptions {
        resume: Some(root.join("nothing")),
        quiet: true,
        ..Default::default()
    };
    let err = args.to_config().unwrap_err().to_string();
    assert!(
        err.contains("nothing") && err.contains("config.json"),
        "{err}"
    );
    // a run directory (written by the run, without checkpoints yet: `tests/runs.rs` resumes such a one)
    let cfg = tiny_config(&root, &root.join("run"), 2);
    std::fs::create_dir_all(&cfg.out).unwrap();
    std::fs::write(
        cfg.out.join("config.json"),
        serde_json::to_vec(&cfg).unwrap(),
    )
    .unwrap();
    // run-changing flags are refused on resume
    let args = RunOptions {
        resume: Some(cfg.out.clone()),
        lr: Some(1.0),
        ..Default::default()
    };
    let err = args.to_config().unwrap_err().to_string();
    assert!(err.contains("train.lr") && err.contains("to 1"), "{err}");
    // a checkpoint whose shapes do not match the model
    let mut a = tiny_config(&root, &root.join("a"), 1);
    a.train.checkpoint_every = 1;
    train::train(&a, false).unwrap();
    let mut b = tiny_config(&root, &root.join("b"), 1);
    b.model.n_embd = 8;
    b.init_from = Some(checkpoint::step_dir(&a.out, 1).join("model.safetensors"));
    let err = train::train(&b, false).unwrap_err().to_string();
    assert!(
        err.contains("model.safetensors") && err.contains("wte.weight"),
        "{err}"
    );
    // a token id beyond the vocabulary
    let mut c = tiny_config(&root, &root.join("c"), 1);
    c.model.vocab_size = 5;
    let err = train::train(&c, false).unwrap_err().to_string();
    assert!(err.contains("train.bin"), "{err}");
    std::fs::remove_dir_all(&root).unwrap();
}

/// The demo corpus with a small model: 40 steps must take the loss from ln(50257) ≈ 10.8 down by at
/// least 2 nats (measured: see the assertion message on failure).
#[test]
fn short_run_on_demo_corpus_lowers_the_loss() {
    let root = tmp("demo");
    let mut cfg = tiny_config(&root, &root.join("run"), 40);
    cfg.data = "demo".into();
    cfg.model = ModelConfig {
        n_layer: 1,
        n_head: 2,
        n_embd: 32,
        seq_len: 32,
        vocab_size: 50257,
        bias: false,
    };
    cfg.train.batch_size = 8;
    cfg.train.grad_accum = 1;
    cfg.train.lr = 1e-2;
    cfg.train.min_lr = 1e-3;
    cfg.train.warmup = 5;
    cfg.train.lr_decay_steps = None;
    cfg.train.eval_every = 40;
    cfg.train.checkpoint_every = 40;
    let o = train::train(&cfg, false).unwrap();
    let first = o.first_train_loss.unwrap();
    assert!(
        (first - (50257f64).ln()).abs() < 0.3,
        "initial loss {first}"
    );
    assert!(
        o.final_val_loss.unwrap() < first - 2.0,
        "loss did not fall enough: first {first}, final train {}, val {:?}",
        o.final_train_loss,
        o.final_val_loss
    );
    std::fs::remove_dir_all(&root).unwrap();
}

/// A Trainer built from a config with `init_from` starts from that file's weights (not the seed's), so
/// any user of the Trainer gets the run config.json describes.
#[test]
fn a_trainer_starts_from_the_weights_of_init_from() {
    use rotadam::backend::cpu::CpuBackend;
    use rotadam::model::ParamTable;
    let root = tmp("trainer-init");
    synthetic_data(&root);
    let mut a = tiny_config(&root, &root.join("a"), 1);
    a.train.checkpoint_every = 1;
    train::train(&a, false).unwrap();
    let file = checkpoint::step_dir(&a.out, 1).join("model.safetensors");
    let mut b = tiny_config(&root, &root.join("b"), 1);
    b.init_from = Some(file.clone());
    let be = CpuBackend::<f32>::new(1, false);
    let t = rotadam::run::trainer::Trainer::new(&be, &b).unwrap();
    let table = ParamTable::new(&b.model);
    let tensors = rotadam::tensors::read(&file).unwrap();
    let (want, _) = rotadam::model::hf::from_hf(&file, &b.model, &table, &tensors).unwrap();
    assert!(
        t.model.params_f64(&be).unwrap() == want,
        "the Trainer's weights are not those of --init-from"
    );
    std::fs::remove_dir_all(&root).unwrap();
}

/// A resumed run takes its step from the checkpoint's state.json (the optimizer's step count), not from
/// the directory's name: a checkpoint found under another step's name still resumes bit-identically.
#[test]
fn resume_takes_the_step_from_state_json() {
    let root = tmp("resume-state-step");
    synthetic_data(&root);
    let straight = tiny_config(&root, &root.join("straight"), 8);
    train::train(&straight, false).unwrap();
    let mut first = straight.clone();
    first.out = root.join("resumed");
    first.train.steps = 4;
    train::train(&first, false).unwrap();
    // step 4's checkpoint under the name of step 6
    let (from, to) = (
        checkpoint::step_dir(&first.out, 4),
        checkpoint::step_dir(&first.out, 6),
    );
    std::fs::rename(&from, &to).unwrap();
    let mut second = first.clone();
    second.train.steps = 8;
    let o = train::train(&second, true).unwrap();
    assert_eq!(o.start_step, 4);
    for f in ["model.safetensors", "optim.safetensors"] {
        let a = read(&checkpoint::step_dir(&straight.out, 8).join(f));
        let b = read(&checkpoint::step_dir(&first.out, 8).join(f));
        assert!(a == b, "{f} differs between straight and resumed runs");
    }
    std::fs::remove_dir_all(&root).unwrap();
}

/// The CUDA self-check's comparison fails on a NaN or an infinity in the loss or any gradient entry, and
/// `--device auto` then stays on the CPU, saying why.
#[test]
fn the_cuda_self_check_fails_on_a_non_finite_loss_or_gradient() {
    use rotadam::config::DeviceKind;
    use rotadam::device::{compare, decide, Resolved};
    let cpu: Vec<f64> = (0..40).map(|i| (i as f64 - 20.0) * 1e-3).collect();
    assert!(compare((2.5, &cpu), (2.5, &cpu), false).is_ok());
    for bad in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
        for at in [0, 17, 39] {
            let mut gpu = cpu.clone();
            gpu[at] = bad;
            let e = compare((2.5, &gpu), (2.5, &cpu), false).unwrap_err();
            assert!(
                e.contains("gradient") && e.contains(&format!("{bad}")),
                "{e}"
            );
        }
        let e = compare((bad, &cpu), (2.5, &cpu), true).unwrap_err();
        assert!(e.contains("loss") && e.contains(&format!("{bad}")), "{e}");
    }
    let mut gpu = cpu.clone();
    gpu[3] = f64::NAN;
    let (dev, line) = decide(
        DeviceKind::Auto,
        Precision::Fp32,
        || Ok("a planted GPU".into()),
        || compare((2.5, &gpu), (2.5, &cpu), false),
    )
    .unwrap();
    assert_eq!(dev, Resolved::Cpu, "{line}");
    assert!(
        line.contains("NaN") && line.contains("self-check"),
        "{line}"
    );
}
