//! Runs that survive what users and machines do: a torn metrics row, an extension, an interruption before
//! the first checkpoint, a second writer, a run too large for memory, options that make no sense.

use crate::util::{synthetic_data, tiny_config, tmp};
use rotadam::config::{BlockPartition, OptimizerKind, RotationKind, RunConfig};
use rotadam::run::lock::DirLock;
use rotadam::run::memory;
use rotadam::run::options::RunOptions;
use rotadam::run::{checkpoint, metrics, train};
use std::path::{Path, PathBuf};
use std::process::Command;

fn read(p: &Path) -> Vec<u8> {
    std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn resume(dir: &Path, steps: usize) -> rotadam::Result<train::RunOutcome> {
    let (cfg, resumed) = RunOptions {
        resume: Some(dir.to_path_buf()),
        steps: Some(steps),
        quiet: true,
        ..Default::default()
    }
    .to_config()?;
    assert!(resumed);
    train::train(&cfg, true)
}

fn lines(p: &Path) -> Vec<String> {
    String::from_utf8(read(p))
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect()
}

#[test]
fn a_torn_last_metrics_row_is_dropped_and_kept_rows_keep_their_bytes() {
    let root = tmp("torn");
    synthetic_data(&root);
    let cfg = tiny_config(&root, &root.join("run"), 4); // checkpoint at 4
    train::train(&cfg, false).unwrap();
    let path = cfg.out.join("metrics.jsonl");
    let before = lines(&path);
    // a crash (or a full disk) in the middle of appending row 5
    let mut text = read(&path);
    text.extend_from_slice(br#"{"step":5,"train_loss":2.3"#);
    std::fs::write(&path, &text).unwrap();
    assert_eq!(metrics::read(&path).unwrap().len(), 4, "read skips it");
    resume(&cfg.out, 6).unwrap();
    let after = lines(&path);
    assert_eq!(after.len(), 6, "{after:?}");
    assert_eq!(after[..4], before[..], "the rows before the resume changed");
    // a malformed row that is not the last is still an error naming the file and line
    let mut bad = after.clone();
    bad[2] = "{\"step\":3,".into();
    std::fs::write(&path, bad.join("\n") + "\n").unwrap();
    let err = metrics::read(&path).unwrap_err().to_string();
    assert!(
        err.contains("metrics.jsonl") && err.contains("line 3"),
        "{err}"
    );
    std::fs::remove_dir_all(&root).unwrap();
}

/// A config file as a user writes one: no decay step, so the schedule decays over `steps`.
fn config_file(root: &Path, steps: usize) -> PathBuf {
    let mut cfg = tiny_config(root, &root.join("unused"), steps);
    cfg.train.lr_decay_steps = None;
    cfg.train.checkpoint_every = 100;
    let p = root.join("config.json");
    std::fs::write(&p, serde_json::to_vec_pretty(&cfg).unwrap()).unwrap();
    p
}

fn fresh(config: &Path, out: &Path) -> RunConfig {
    let (cfg, resumed) = RunOptions {
        config: Some(config.to_path_buf()),
        out: Some(out.to_path_buf()),
        quiet: true,
        ..Default::default()
    }
    .to_config()
    .unwrap();
    assert!(!resumed);
    cfg
}

#[test]
fn extending_a_run_keeps_its_schedule_and_its_config_replays_it() {
    let root = tmp("extend");
    synthetic_data(&root);
    let a = fresh(&config_file(&root, 4), &root.join("a"));
    assert_eq!(a.train.lr_decay_steps, Some(4), "the schedule is recorded");
    train::train(&a, false).unwrap();
    let config_a = a.out.join("config.json");
    // a resume that trains nothing changes nothing
    let written = read(&config_a);
    resume(&a.out, 2).unwrap();
    assert_eq!(
        read(&config_a),
        written,
        "a no-op resume rewrote config.json"
    );
    // the extension: steps 5..8 run at the end of the schedule, min_lr, not back up the cosine
    resume(&a.out, 8).unwrap();
    let rows = metrics::read(&a.out.join("metrics.jsonl")).unwrap();
    assert_eq!(rows.len(), 8);
    for r in &rows[4..] {
        assert_eq!(r.lr, a.train.min_lr, "step {}: lr {}", r.step, r.lr);
    }
    let saved = RunConfig::read(&config_a).unwrap();
    assert_eq!(
        (saved.train.steps, saved.train.lr_decay_steps),
        (8, Some(4))
    );
    let history = lines(&a.out.join("history.jsonl"));
    assert_eq!(history.len(), 2, "{history:?}");
    assert!(history[0].contains("\"command\":\"start\"") && history[1].contains("\"from_step\":4"));
    // replaying the extended run's config.json gives the same losses
    let b = fresh(&config_a, &root.join("b"));
    train::train(&b, false).unwrap();
    let losses = |d: &Path| -> Vec<(f64, f64)> {
        metrics::read(&d.join("metrics.jsonl"))
            .unwrap()
            .iter()
            .map(|r| (r.train_loss, r.lr))
            .collect()
    };
    assert_eq!(losses(&a.out), losses(&b.out));
    std::fs::remove_dir_all(&root).unwrap();
}

#[test]
fn a_run_interrupted_before_its_first_checkpoint_restarts_bit_identically() {
    let root = tmp("restart");
    synthetic_data(&root);
    let mut cfg = tiny_config(&root, &root.join("fresh"), 3);
    cfg.train.checkpoint_every = 100; // only the last step's
    train::train(&cfg, false).unwrap();
    // the same run, killed after two rows and before any checkpoint
    let mut killed = cfg.clone();
    killed.out = root.join("killed");
    std::fs::create_dir_all(&killed.out).unwrap();
    std::fs::write(
        killed.out.join("config.json"),
        serde_json::to_vec_pretty(&killed).unwrap(),
    )
    .unwrap();
    let two: Vec<String> = lines(&cfg.out.join("metrics.jsonl"))[..2].to_vec();
    std::fs::write(killed.out.join("metrics.jsonl"), two.join("\n") + "\n").unwrap();
    let o = resume(&killed.out, 3).unwrap();
    assert_eq!(o.start_step, 0);
    for f in ["model.safetensors", "optim.safetensors"] {
        assert!(
            read(&checkpoint::step_dir(&cfg.out, 3).join(f))
                == read(&checkpoint::step_dir(&killed.out, 3).join(f)),
            "{f} differs from the uninterrupted run"
        );
    }
    let steps: Vec<usize> = metrics::read(&killed.out.join("metrics.jsonl"))
        .unwrap()
        .iter()
        .map(|r| r.step)
        .collect();
    assert_eq!(steps, vec![1, 2, 3]);
    std::fs::remove_dir_all(&root).unwrap();
}

#[test]
fn a_second_writer_is_refused_with_the_holders_pid_and_a_dead_holder_blocks_nothing() {
    let root = tmp("lock");
    synthetic_data(&root);
    let cfg = tiny_config(&root, &root.join("run"), 4);
    let held = DirLock::acquire(&cfg.out, "test").unwrap();
    let pid = format!("pid {}", std::process::id());
    let err = train::train(&cfg, false).unwrap_err().to_string();
    assert!(err.contains("in use") && err.contains(&pid), "{err}");
    drop(held);
    train::train(&cfg, false).unwrap();
    let held = DirLock::acquire(&cfg.out, "test").unwrap();
    let err = resume(&cfg.out, 6).unwrap_err().to_string();
    assert!(err.contains(&pid), "{err}");
    drop(held);
    // the file a killed process leaves, with its pid, does not block: the lock died with it
    std::fs::write(cfg.out.join(".lock"), "pid 4194303 (rotadam gpt2)\n").unwrap();
    resume(&cfg.out, 6).unwrap();
    std::fs::remove_dir_all(&root).unwrap();
}

#[test]
fn a_running_process_holds_its_run_against_a_resume_from_another() {
    let root = tmp("lock-cli");
    synthetic_data(&root);
    let out = root.join("run");
    let bin = env!("CARGO_BIN_EXE_rotadam");
    let args = |extra: &[&str]| {
        let mut v: Vec<String> = [
            "gpt2",
            "--data",
            root.to_str().unwrap(),
            "--model",
            "tiny",
            "--vocab-size",
            "11",
            "--device",
            "cpu",
            "--threads",
            "1",
            "--out",
            out.to_str().unwrap(),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        v.extend(extra.iter().map(|s| s.to_string()));
        v
    };
    let mut child = Command::new(bin)
        .args(args(&[
            "--steps",
            "100000",
            "--checkpoint-every",
            "1000000",
            "--quiet",
        ]))
        .spawn()
        .unwrap();
    // wait until it holds the lock (its pid in the lock file)
    let lock = out.join(".lock");
    let want = format!("pid {}", child.id());
    let t0 = std::time::Instant::now();
    while !std::fs::read_to_string(&lock).is_ok_and(|s| s.contains(&want)) {
        assert!(t0.elapsed().as_secs() < 120, "the run never took its lock");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let second = Command::new(bin)
        .args(["gpt2", "--resume", out.to_str().unwrap(), "--steps", "5"])
        .output()
        .unwrap();
    child.kill().unwrap();
    child.wait().unwrap();
    let err = String::from_utf8_lossy(&second.stderr);
    assert!(!second.status.success(), "{err}");
    assert!(err.contains(&want) && err.contains("in use"), "{err}");
    // killed before any checkpoint: --resume restarts it, and says which checkpoint it resumes later
    let third = Command::new(bin)
        .args(["gpt2", "--resume", out.to_str().unwrap(), "--steps", "2"])
        .output()
        .unwrap();
    let log = String::from_utf8_lossy(&third.stderr);
    assert!(third.status.success(), "{log}");
    assert!(
        log.contains("no checkpoint yet") && log.contains("step 0"),
        "{log}"
    );
    let fourth = Command::new(bin)
        .args(["gpt2", "--resume", out.to_str().unwrap(), "--steps", "3"])
        .output()
        .unwrap();
    let log = String::from_utf8_lossy(&fourth.stderr);
    assert!(fourth.status.success(), "{log}");
    assert!(
        log.contains("resume: from") && log.contains("step_2"),
        "{log}"
    );
    std::fs::remove_dir_all(&root).unwrap();
}

#[test]
fn a_run_larger_than_its_memory_is_refused_before_it_allocates() {
    let root = tmp("memory");
    synthetic_data(&root);
    let mut cfg = tiny_config(&root, &root.join("run"), 2);
    let est = memory::estimate(&cfg);
    // the activations are what the model allocates (checked against every allocation in debug builds)
    let acts = rotadam::model::gpt2::activation_elements(&cfg.model, 3, cfg.model.seq_len);
    assert_eq!(est.activations, 4 * acts);
    let p = rotadam::model::ParamTable::new(&cfg.model).total as u128;
    assert_eq!(
        (est.params, est.grads, est.optimizer),
        (4 * p, 4 * p, 8 * p)
    );
    cfg.max_memory = Some((est.total() - 1) as u64);
    let err = train::train(&cfg, false).unwrap_err().to_string();
    assert!(
        err.contains("max-memory") && err.contains("activations"),
        "{err}"
    );
    assert!(
        !cfg.out.exists(),
        "a refused run left {}",
        cfg.out.display()
    );
    cfg.max_memory = Some(est.total() as u64);
    train::train(&cfg, false).unwrap();
    // an absurd batch is counted, not overflowed, and refused against the machine
    let mut huge = tiny_config(&root, &root.join("huge"), 2);
    huge.train.batch_size = 100_000_000;
    huge.model.seq_len = 1024;
    huge.model.vocab_size = 50257;
    let est = memory::estimate(&huge);
    assert!(est.activations > 100_000_000u128 * 1024 * 50257 * 4);
    let err = memory::check(&est, None, Some(64 << 30))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("--batch-size") && err.contains("available"),
        "{err}"
    );
    assert_eq!(memory::parse_size("1.5G").unwrap(), 3 << 29);
    assert!(memory::parse_size("12 parsecs").is_err());
    std::fs::remove_dir_all(&root).unwrap();
}

fn opts(root: &Path) -> RunOptions {
    RunOptions {
        data: Some(root.to_string_lossy().into()),
        model: Some("tiny".into()),
        vocab_size: Some(11),
        out: Some(root.join("run")),
        quiet: true,
        ..Default::default()
    }
}

fn config_error(o: &RunOptions) -> String {
    match o.to_config() {
        Err(e) => e.to_string(),
        Ok((cfg, _)) => match o.check_used(&cfg) {
            Err(e) => e.to_string(),
            Ok(w) => panic!("accepted, with warnings {w:?}"),
        },
    }
}

#[test]
fn nonsense_options_are_refused_and_equal_ones_accepted_on_resume() {
    let root = tmp("nonsense");
    synthetic_data(&root);
    let base = opts(&root);
    let e = config_error(&RunOptions {
        lr: Some(1e-3),
        min_lr: Some(1e-2),
        ..base.clone()
    });
    assert!(e.contains("min-lr") && e.contains("above"), "{e}");
    let e = config_error(&RunOptions {
        optimizer: Some(OptimizerKind::Sgd),
        momentum: Some(1.0),
        ..base.clone()
    });
    assert!(e.contains("momentum") && e.contains("[0, 1)"), "{e}");
    let e = config_error(&RunOptions {
        blocks: Some(BlockPartition::Neuron),
        ..base.clone()
    });
    assert!(e.contains("--blocks") && e.contains("adamw"), "{e}");
    let e = config_error(&RunOptions {
        momentum: Some(0.5),
        ..base.clone()
    });
    assert!(e.contains("--momentum") && e.contains("adamw"), "{e}");
    let e = config_error(&RunOptions {
        svd_every: Some(5),
        ..base.clone()
    });
    assert!(e.contains("--svd-every"), "{e}");
    // soap's flags need --rotation soap, and soap needs AdamW
    for soap in [
        RunOptions {
            soap_beta: Some(0.5),
            ..base.clone()
        },
        RunOptions {
            rotation: Some(RotationKind::Svd),
            soap_every: Some(3),
            ..base.clone()
        },
        RunOptions {
            soap_first_moment: Some(rotadam::config::SoapMoment::Eigenbasis),
            ..base.clone()
        },
    ] {
        let e = config_error(&soap);
        assert!(e.contains("--soap-") && e.contains("soap"), "{e}");
    }
    let e = config_error(&RunOptions {
        rotation: Some(RotationKind::Soap),
        optimizer: Some(OptimizerKind::Sgd),
        ..base.clone()
    });
    assert!(e.contains("adamw"), "{e}");
    let (cfg, _) = RunOptions {
        rotation: Some(RotationKind::Soap),
        soap_beta: Some(0.0),
        soap_every: Some(3),
        soap_init: Some(rotadam::config::SoapInit::Identity),
        ..base.clone()
    }
    .to_config()
    .unwrap();
    assert_eq!((cfg.rotation.soap.beta, cfg.rotation.soap.every), (0.0, 3));
    assert_eq!(cfg.rotation.soap.init, rotadam::config::SoapInit::Identity);
    // a warm-up longer than the run: a warning, not an error
    let (cfg, _) = RunOptions {
        warmup: Some(50),
        steps: Some(10),
        ..base.clone()
    }
    .to_config()
    .unwrap();
    let w = cfg.train.warnings();
    assert!(w.len() == 1 && w[0].contains("warmup 50"), "{w:?}");
    // the preset's defaults raise none
    let (cfg, _) = base.to_config().unwrap();
    assert!(cfg.train.warnings().is_empty() && base.check_used(&cfg).unwrap().is_empty());

    // resume: a flag equal to the stored value is accepted, a change is refused with both values
    let (cfg, _) = RunOptions {
        steps: Some(2),
        ..base.clone()
    }
    .to_config()
    .unwrap();
    train::train(&cfg, false).unwrap();
    let again = RunOptions {
        resume: Some(cfg.out.clone()),
        lr: Some(cfg.train.lr),
        seed: Some(cfg.train.seed),
        model: Some("tiny".into()),
        vocab_size: Some(11),
        steps: Some(3),
        quiet: true,
        ..Default::default()
    };
    let (c, resumed) = again.to_config().unwrap();
    assert!(resumed && c.train.steps == 3);
    let e = RunOptions {
        beta2: Some(0.5),
        ..again.clone()
    }
    .to_config()
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("train.beta2") && e.contains("0.95") && e.contains("0.5"),
        "{e}"
    );
    // --resume on a directory that is not a run says exactly that
    std::fs::create_dir_all(root.join("empty")).unwrap();
    let e = RunOptions {
        resume: Some(root.join("empty")),
        ..Default::default()
    }
    .to_config()
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("empty") && e.contains("not a run directory"),
        "{e}"
    );
    std::fs::remove_dir_all(&root).unwrap();
}

#[test]
fn compact_data_sets_the_vocabulary_and_the_banner_counts_what_occurs() {
    use rotadam::backend::cpu::CpuBackend;
    let root = tmp("compact-run");
    std::fs::create_dir_all(root.join("text")).unwrap();
    for i in 0..4 {
        let doc = format!("To be, or not to be, that is the question {i}. ").repeat(20);
        std::fs::write(root.join("text").join(format!("{i}.txt")), doc).unwrap();
    }
    let data = root.join("data");
    let summary = rotadam::data::prepare(&rotadam::data::PrepareOptions {
        inputs: vec![root.join("text")],
        out: data.clone(),
        compact_vocab: true,
        quiet: true,
        ..Default::default()
    })
    .unwrap();
    let k = summary.vocab_size.expect("a compact vocabulary");
    let o = RunOptions {
        data: Some(data.to_string_lossy().into()),
        model: Some("tiny".into()),
        out: Some(root.join("run")),
        quiet: true,
        ..Default::default()
    };
    let (cfg, _) = o.to_config().unwrap();
    assert_eq!(
        cfg.model.vocab_size, k,
        "the model takes meta.json's vocabulary"
    );
    // an explicit --vocab-size wins
    let (cfg2, _) = RunOptions {
        vocab_size: Some(k + 5),
        ..o.clone()
    }
    .to_config()
    .unwrap();
    assert_eq!(cfg2.model.vocab_size, k + 5);
    let be = CpuBackend::<f32>::new(1, false);
    let t = rotadam::run::trainer::Trainer::new(&be, &cfg2).unwrap();
    let line = t.describe_vocab();
    assert!(
        line.starts_with(&format!("{k} of {} token ids occur (5 never)", k + 5)),
        "{line}"
    );
    assert!(line.contains("% of the parameters"), "{line}");
    // --resume of a checkpoint directory says what it takes instead
    train::train(&cfg, false).unwrap();
    let e = RunOptions {
        resume: Some(checkpoint::step_dir(&cfg.out, cfg.train.steps)),
        ..Default::default()
    }
    .to_config()
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("checkpoint directory") && e.contains("run directory"),
        "{e}"
    );
    std::fs::remove_dir_all(&root).unwrap();
}
