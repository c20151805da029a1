//! Sweeps: the report's table and figures, reuse and resume of runs, the slowdown arithmetic, and the
//! SGD validation ablation (curves must coincide).

use crate::util::{synthetic_data, tiny_config, tmp};
use clap::Parser;
use rotadam::config::RotationKind;
use rotadam::diagnose::{self, DiagnoseOptions, What};
use rotadam::run::options::RunOptions;
use rotadam::sweep::report::{self, Slowdown};
use rotadam::sweep::{self as sw, Ablation, SweepOptions};
use std::path::{Path, PathBuf};

/// A sweep over the tiny test model: base config written to `root/base.json`.
fn args(root: &Path, rotations: &[&str], seeds: usize, steps: usize) -> SweepOptions {
    let mut cfg = tiny_config(root, &root.join("unused"), steps);
    cfg.train.checkpoint_every = 4;
    cfg.train.lr_decay_steps = None;
    let base = root.join("base.json");
    std::fs::write(&base, serde_json::to_vec_pretty(&cfg).unwrap()).unwrap();
    SweepOptions {
        rotations: rotations.iter().map(|s| s.parse().unwrap()).collect(),
        seeds,
        ablation: None,
        sgd_lr: 0.3,
        run: RunOptions {
            config: Some(base),
            out: Some(root.join("sweep")),
            quiet: true,
            ..Default::default()
        },
        select: Default::default(),
    }
}

fn mtime(p: &Path) -> std::time::SystemTime {
    std::fs::metadata(p).unwrap().modified().unwrap()
}

fn run_dirs(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir.join("runs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    v.sort();
    v
}

#[test]
fn sweep_writes_a_report_and_reuses_its_runs() {
    let root = tmp("sweep-report");
    synthetic_data(&root);
    let a = args(&root, &["none", "global"], 2, 6);
    let dir = sw::run(&a).unwrap();

    let runs = run_dirs(&dir);
    let names: Vec<String> = runs
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        names,
        ["global-s1337", "global-s1338", "none-s1337", "none-s1338"]
    );
    let report = std::fs::read_to_string(dir.join("report.md")).unwrap();
    assert!(
        report.contains("of 11 token ids occur") && report.contains("embeddings (wte, wpe) are"),
        "the report says how much of the vocabulary the data uses:\n{report}"
    );
    let rows: Vec<&str> = report.lines().filter(|l| l.starts_with("| ")).collect();
    assert_eq!(rows.len(), 3, "header + 2 variants:\n{report}");
    assert!(rows[1].starts_with("| none | 2 |") && rows[2].starts_with("| global | 2 |"));
    assert!(
        rows[1].contains("+0.0%"),
        "the baseline's slowdown is 0: {}",
        rows[1]
    );
    let summary: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("summary.json")).unwrap()).unwrap();
    assert_eq!(summary["rows"].as_array().unwrap().len(), 2);
    assert_eq!(summary["slowdown_curve"], "val");
    for png in ["loss_val.png", "loss_train.png"] {
        let img = image::open(dir.join(png)).unwrap_or_else(|e| panic!("{png}: {e}"));
        assert!(img.width() > 100 && img.height() > 100);
        assert!(report.contains(png), "report links {png}");
    }
    // same seed, same init and data: the two rotations start from the same loss
    let first =
        |run: &Path| rotadam::run::metrics::read(&run.join("metrics.jsonl")).unwrap()[0].train_loss;
    assert_eq!(first(&runs[0]), first(&runs[2]));
    assert_ne!(first(&runs[2]), first(&runs[3]), "seeds differ");

    // diagnose --sweep: a table and bar charts in the report, numbers equal to per-run diagnose
    let mut d = DiagnoseOptions::new(&dir, vec![What::Linf, What::UpdateCv]);
    d.batches = 2;
    d.threads = Some(2);
    let rows = sw::diagnostics::run(&d).unwrap();
    assert_eq!(rows.len(), 2);
    let direct: Vec<f64> = ["none-s1337", "none-s1338"]
        .iter()
        .map(|r| {
            let mut one = DiagnoseOptions::new(dir.join("runs").join(r), vec![What::Linf]);
            one.batches = 2;
            one.threads = Some(2);
            diagnose::run(&one).unwrap().linf.unwrap().bound
        })
        .collect();
    let (mean, _) = report::mean_std(&direct);
    assert_eq!(rows[0].variant, "none");
    assert_eq!(rows[0].values["linf"].0, mean);
    assert!(rows[1].values["update_cv"].0 > 0.0);
    let img = image::open(dir.join("diag_linf.png")).unwrap();
    assert!(img.width() > 100);
    sw::diagnostics::run(&d).unwrap();
    let report = std::fs::read_to_string(dir.join("report.md")).unwrap();
    assert_eq!(
        report.matches("## Diagnostics").count(),
        1,
        "a rerun replaces the section"
    );
    assert!(report.contains("| none | 2 |") && report.contains("diag_update_cv.png"));
    // ρ over the four runs between each run's C̃ and its final val loss, as diagnostics.json has it
    let (mut xs, mut ys) = (Vec::new(), Vec::new());
    for r in ["none-s1337", "none-s1338", "global-s1337", "global-s1338"] {
        let run = dir.join("runs").join(r);
        let mut one = DiagnoseOptions::new(&run, vec![What::Linf]);
        one.batches = 2;
        one.threads = Some(2);
        xs.push(diagnose::run(&one).unwrap().linf.unwrap().bound);
        let rows = rotadam::run::metrics::read(&run.join("metrics.jsonl")).unwrap();
        ys.push(rows.iter().rev().find_map(|r| r.val_loss).unwrap());
    }
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("diagnostics.json")).unwrap()).unwrap();
    let rho = json["spearman_with_final_val"]["linf"].as_f64();
    assert_eq!(rho, report::spearman(&xs, &ys), "{xs:?} {ys:?}");
    assert!(report.contains("ρ with the final val loss, over the 4 runs"));

    // a second invocation trains nothing, and keeps the diagnostics section
    let metrics: Vec<PathBuf> = runs.iter().map(|r| r.join("metrics.jsonl")).collect();
    let before: Vec<_> = metrics.iter().map(|m| mtime(m)).collect();
    sw::run(&a).unwrap();
    let after: Vec<_> = metrics.iter().map(|m| mtime(m)).collect();
    assert_eq!(before, after, "finished runs are reused, not retrained");
    let report = std::fs::read_to_string(dir.join("report.md")).unwrap();
    assert_eq!(report.matches("## Diagnostics").count(), 1);
    std::fs::remove_dir_all(&root).unwrap();
}

#[test]
fn an_interrupted_sweep_resumes_bit_identically() {
    let root = tmp("sweep-resume");
    synthetic_data(&root);
    let a = args(&root, &["none", "layer"], 1, 8);
    let dir = sw::run(&a).unwrap();
    let run = dir.join("runs").join("layer-s1337");
    let full = std::fs::read(run.join("metrics.jsonl")).unwrap();
    // interrupt after the step-4 checkpoint: drop the final checkpoint and the rows after step 4
    std::fs::remove_dir_all(run.join("checkpoints").join("step_8")).unwrap();
    let text = String::from_utf8(full.clone()).unwrap();
    let kept: String = text.lines().take(5).map(|l| format!("{l}\n")).collect();
    std::fs::write(run.join("metrics.jsonl"), kept).unwrap();
    // and one run that never wrote a checkpoint
    let none = dir.join("runs").join("none-s1337");
    let none_full = std::fs::read(none.join("metrics.jsonl")).unwrap();
    std::fs::remove_dir_all(none.join("checkpoints")).unwrap();

    sw::run(&a).unwrap();
    assert!(run.join("checkpoints/step_8/state.json").is_file());
    let again = std::fs::read(run.join("metrics.jsonl")).unwrap();
    let strip = |b: &[u8]| -> Vec<serde_json::Value> {
        String::from_utf8_lossy(b)
            .lines()
            .map(|l| {
                let mut v: serde_json::Value = serde_json::from_str(l).unwrap();
                let o = v.as_object_mut().unwrap();
                o.remove("tokens_per_s");
                o.remove("ms_per_step");
                v
            })
            .collect()
    };
    assert_eq!(
        strip(&full),
        strip(&again),
        "resumed run = uninterrupted run"
    );
    assert_eq!(
        strip(&none_full),
        strip(&std::fs::read(none.join("metrics.jsonl")).unwrap()),
        "restarted run = original"
    );
    std::fs::remove_dir_all(&root).unwrap();
}

#[test]
fn a_run_directory_with_another_config_is_an_error_not_overwritten() {
    let root = tmp("sweep-conflict");
    synthetic_data(&root);
    let mut a = args(&root, &["none"], 1, 2);
    sw::run(&a).unwrap();
    let metrics = root.join("sweep/runs/none-s1337/metrics.jsonl");
    let before = std::fs::read(&metrics).unwrap();
    a.run.lr = Some(0.5);
    let err = sw::run(&a).unwrap_err().to_string();
    assert!(
        err.contains("config.json") && err.contains("train.lr"),
        "error names the file and the field: {err}"
    );
    assert_eq!(before, std::fs::read(&metrics).unwrap());
    // the cosine schedule ends at --steps (no --lr-decay-steps): more steps would be another run,
    // whose recorded decay step differs
    a.run.lr = None;
    a.run.steps = Some(3);
    let err = sw::run(&a).unwrap_err().to_string();
    assert!(err.contains("train.lr_decay_steps"), "{err}");

    // an unknown rotation is refused where it is parsed, naming it and what is accepted
    let e = rotadam::cli::Cli::try_parse_from(["rotadam", "sweep", "--rotations", "none,sideways"])
        .unwrap_err()
        .to_string();
    assert!(e.contains("sideways") && e.contains("global"), "{e}");
    let e = "sideways".parse::<RotationKind>().unwrap_err().to_string();
    assert!(e.contains("sideways") && e.contains("kron"), "{e}");
    let mut bad = args(&root, &["none", "none"], 1, 2);
    assert!(sw::run(&bad).unwrap_err().to_string().contains("twice"));
    bad.rotations = vec![RotationKind::default()];
    bad.run.rotation = Some(RotationKind::Scope(rotadam::config::Scope::Global));
    assert!(sw::run(&bad)
        .unwrap_err()
        .to_string()
        .contains("--rotations"));
    std::fs::remove_dir_all(&root).unwrap();
}

/// Synthetic curves with a known answer: a variant that descends at half the speed needs twice the steps.
#[test]
fn slowdown_on_synthetic_curves() {
    let line = |slope: f64, end: f64| -> report::Curve {
        (0..=20)
            .map(|i| {
                let s = end * i as f64 / 20.0;
                (s, 10.0 - slope * s)
            })
            .collect()
    };
    let base = line(0.1, 100.0); // reaches 0 at step 100
    let half = line(0.05, 300.0); // reaches 0 at step 200
    let fast = line(0.2, 100.0); // reaches 0 at step 50
    let close = |s: Option<Slowdown>, want: f64| match s {
        Some(Slowdown::Reached(p)) => assert!((p - want).abs() < 1e-9, "{p} vs {want}"),
        other => panic!("{other:?}"),
    };
    close(report::slowdown(&base, &base), 0.0);
    close(report::slowdown(&base, &half), 100.0);
    close(report::slowdown(&base, &fast), -50.0);
    let short = line(0.05, 150.0); // ends at loss 2.5 at step 150: never reaches 0
    match report::slowdown(&base, &short) {
        Some(Slowdown::NotReached(p)) => assert!((p - 50.0).abs() < 1e-9),
        other => panic!("{other:?}"),
    }
    // as the report prints them: a lower bound of 0 is no information, so none is printed
    let shown = |s: Slowdown| s.to_string();
    assert_eq!(shown(Slowdown::NotReached(50.0)), "> +50.0% (not reached)");
    assert_eq!(shown(Slowdown::NotReached(0.0)), "not reached");
    assert_eq!(shown(Slowdown::Reached(-12.34)), "-12.3%");
    // interpolation between points, and a baseline that dips below its final value earlier
    assert_eq!(
        report::steps_to_reach(&[(0.0, 4.0), (10.0, 2.0)], 3.0),
        Some(5.0)
    );
    // the baseline never reaches the half-speed variant's final loss (−5 at step 300); the short one's
    // (2.5 at step 150) at step 75
    assert_eq!(report::baseline_steps_to_final(&base, &half), None);
    assert_eq!(
        report::baseline_steps_to_final(&base, &short),
        Some((75.0, 150.0))
    );
    let dip = vec![(0.0, 5.0), (10.0, 1.0), (20.0, 2.0)];
    // the baseline first reaches its final 2.0 at step 7.5; the variant at step 30: +300%
    close(report::slowdown(&dip, &[(0.0, 5.0), (30.0, 2.0)]), 300.0);

    let band =
        rotadam::plot::aggregate(&[vec![(1.0, 1.0), (2.0, 4.0)], vec![(1.0, 3.0), (2.0, 2.0)]]);
    assert_eq!(band.iter().map(|s| s.mean).collect::<Vec<_>>(), [2.0, 3.0]);
    assert_eq!(band.iter().map(|s| s.min).collect::<Vec<_>>(), [1.0, 2.0]);
    assert_eq!(band.iter().map(|s| s.max).collect::<Vec<_>>(), [3.0, 4.0]);
    let e = report::ema(&[(1.0, 2.0), (2.0, 2.0), (3.0, 2.0)], 0.9);
    assert!(
        e.iter().all(|p| (p.1 - 2.0).abs() < 1e-12),
        "bias-corrected EMA of a constant"
    );
    assert_eq!(report::mean_std(&[1.0, 3.0]), (2.0, 2f64.sqrt()));
}

/// Maes et al. Fig. 9 as a sweep: SGD under none and global gives the same curve (fp32: 1e-4 relative, the
/// tolerance of the equivariance tests; bf16 rounds the rotated weights differently: 2e-2).
#[test]
fn sgd_validation_ablation_curves_coincide() {
    let root = tmp("sweep-sgd");
    synthetic_data(&root);
    let mut a = args(&root, &[], 1, 10);
    a.ablation = Some(Ablation::SgdValidation);
    let dir = sw::run(&a).unwrap();
    let losses = |name: &str| -> Vec<f64> {
        rotadam::run::metrics::read(&dir.join("runs").join(name).join("metrics.jsonl"))
            .unwrap()
            .iter()
            .map(|r| r.train_loss)
            .collect()
    };
    for (p, tol) in [("fp32", 1e-4), ("bf16", 2e-2)] {
        let (n, g) = (
            losses(&format!("sgd-none-{p}-s1337")),
            losses(&format!("sgd-global-{p}-s1337")),
        );
        assert!(n[9] < n[0] - 0.05, "SGD trains ({p}): {n:?}");
        let d = n
            .iter()
            .zip(&g)
            .map(|(x, y)| (x - y).abs() / x.abs())
            .fold(0.0, f64::max);
        assert!(d <= tol, "{p}: max relative difference {d:e} > {tol:e}");
    }
    let v = sw::variants(&a).unwrap();
    assert_eq!(v.len(), 4);
    std::fs::remove_dir_all(&root).unwrap();
}

/// A sweep spread over parts (`--list`, `--shard`, `--only`, `--report-only`) gives the whole sweep's
/// numbers: shards 1/2 and 2/2 are disjoint and cover the plan; `--list` writes each run's config.json
/// and prints one `gpt2 --resume RUN_DIR` line per run; after one shard the report lists the other's
/// runs as not started; after the listed commands (parsed and run as a user's shell would) `--report-only`
/// gives the summary of one whole sweep, row for row. Checked planting the shard rule `k % n == i`: fails.
#[test]
fn a_sweep_in_parts_matches_the_whole_sweep() {
    use rotadam::sweep::Selection;
    let root = tmp("sweep-parts");
    synthetic_data(&root);
    let whole = sw::run(&args(&root, &["none", "global"], 2, 6)).unwrap();
    let mut parts = args(&root, &["none", "global"], 2, 6);
    parts.run.out = Some(root.join("parts"));
    let (_, _, runs) = sw::plan(&parts).unwrap();
    let shard = |i, n| Selection {
        shard: Some((i, n)),
        ..Default::default()
    };
    for n in 1..=5 {
        let mut all: Vec<usize> = (1..=n)
            .flat_map(|i| shard(i, n).indices(&runs).unwrap())
            .collect();
        all.sort_unstable();
        assert_eq!(all, (0..runs.len()).collect::<Vec<_>>(), "{n} shards");
    }
    let second = shard(2, 2).indices(&runs).unwrap();
    assert_eq!(second, [1, 3]);

    parts.select = shard(2, 2);
    let lines = sw::list(&parts, "rotadam").unwrap();
    let expect: Vec<String> = second
        .iter()
        .map(|&k| format!("rotadam gpt2 --resume {}", runs[k].dir.display()))
        .collect();
    assert_eq!(lines, expect);
    for &k in &second {
        let cfg = rotadam::config::RunConfig::read(&runs[k].dir.join("config.json")).unwrap();
        assert_eq!(cfg, runs[k].cfg);
    }
    // listing again changes nothing
    assert_eq!(sw::list(&parts, "rotadam").unwrap(), expect);

    parts.select = shard(1, 2);
    let dir = sw::run(&parts).unwrap();
    let summary = |d: &Path| -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(d.join("summary.json")).unwrap()).unwrap()
    };
    let missing: Vec<String> = second
        .iter()
        .map(|&k| format!("{} (not started)", runs[k].name()))
        .collect();
    assert_eq!(summary(&dir)["missing"], serde_json::json!(missing));
    let report = std::fs::read_to_string(dir.join("report.md")).unwrap();
    assert!(report.contains("**Incomplete:** 2 of 4 runs"), "{report}");
    assert!(
        !report.contains("--shard"),
        "the report shows the whole sweep's command"
    );

    for line in &lines {
        let cli = rotadam::cli::Cli::try_parse_from(line.split(' ')).unwrap();
        rotadam::cli::run(cli).unwrap();
    }
    parts.select = Selection::default();
    sw::report_only(&parts).unwrap();
    let (a, b) = (summary(&whole), summary(&dir));
    assert_eq!(b["missing"], serde_json::json!([]));
    assert_eq!(a["rows"], b["rows"]);
    // each row's val gap is its mean final val loss minus the baseline's (0 for the baseline)
    let rows = b["rows"].as_array().unwrap();
    let val = |r: &serde_json::Value| r["final_val_mean"].as_f64().unwrap();
    for r in rows {
        assert_eq!(r["val_gap"].as_f64().unwrap(), val(r) - val(&rows[0]));
    }
    let report = std::fs::read_to_string(dir.join("report.md")).unwrap();
    assert!(report.contains("| +0.0000 | 6 |"), "{report}");

    // a report over runs trained with other settings is refused, naming the field
    let mut other = parts.clone();
    other.run.lr = Some(0.123);
    let record = std::fs::read(dir.join("sweep.json")).unwrap();
    let e = sw::report_only(&other).unwrap_err().to_string();
    assert!(e.contains("train.lr"), "{e}");
    assert_eq!(
        std::fs::read(dir.join("sweep.json")).unwrap(),
        record,
        "sweep.json rewritten"
    );
    // a run name that is not in the plan is refused, listing the names
    parts.select = Selection {
        only: vec!["global-s9".into()],
        ..Default::default()
    };
    let e = sw::run(&parts).unwrap_err().to_string();
    assert!(e.contains("--only") && e.contains("global-s1338"), "{e}");
    for bad in ["0/2", "3/2", "2", "a/b"] {
        let e = Selection::parse_shard(bad).unwrap_err().to_string();
        assert!(e.contains("--shard") && e.contains(bad), "{e}");
    }
    std::fs::remove_dir_all(&root).unwrap();
}

/// Spearman's ρ: ±1 on monotone pairs (and unchanged by a monotone transform of one side), a
/// hand-computed value with a tie (x = 1..5, y = 5, 6, 7, 8, 7: ranks of y 1, 2, 3.5, 5, 3.5, so ρ =
/// 8/√95), None when a side is constant or with fewer than 3 pairs; the 5% critical |ρ|: exact for n = 6
/// (0.886), by the t approximation for n = 15 (2.160/√(13 + 2.160²) = 0.514), none for n = 4.
#[test]
fn spearman_rank_correlation() {
    let x = [1.0, 2.0, 3.0, 4.0, 5.0];
    let up = [0.1, 0.5, 0.9, 3.0, 40.0];
    assert!((report::spearman(&x, &up).unwrap() - 1.0).abs() < 1e-15);
    let down: Vec<f64> = up.iter().map(|v: &f64| -v.exp()).collect();
    assert!((report::spearman(&x, &down).unwrap() + 1.0).abs() < 1e-15);
    let tie = [5.0, 6.0, 7.0, 8.0, 7.0];
    let want = 8.0 / 95f64.sqrt();
    assert!((report::spearman(&x, &tie).unwrap() - want).abs() < 1e-12);
    assert_eq!(report::ranks(&tie), vec![1.0, 2.0, 3.5, 5.0, 3.5]);
    assert!(report::spearman(&x, &[1.0; 5]).is_none());
    assert!(report::spearman(&x[..2], &up[..2]).is_none());
    let c = report::spearman_critical(15).unwrap();
    assert!((c - 0.5139).abs() < 1e-3, "{c}");
    assert_eq!(report::spearman_critical(6), Some(0.886));
    assert_eq!(report::spearman_critical(4), None);
}

/// `--ablation orthogonality` on the tiny model: AdamW under none, global, svd and soap, and Muon, each
/// logging its update CV (every 50 steps unless told: here every 2); the report's section puts the mean
/// logged CV against the final val loss of each run, with the scatter figure and ρ, and summary.json
/// holds the same numbers (each run's mean CV recomputed here from its metrics.jsonl).
#[test]
fn orthogonality_ablation_reports_update_cv_against_loss() {
    let root = tmp("sweep-ortho");
    synthetic_data(&root);
    let mut a = args(&root, &[], 1, 4);
    a.ablation = Some(Ablation::Orthogonality);
    a.run.log_update_cv = Some(2);
    let labels: Vec<String> = sw::variants(&a)
        .unwrap()
        .into_iter()
        .map(|v| v.label)
        .collect();
    assert_eq!(labels, ["none", "global", "svd", "soap", "muon"]);
    let dir = sw::run(&a).unwrap();
    let md = std::fs::read_to_string(dir.join("report.md")).unwrap();
    assert!(md.contains("## Update CV against the loss"), "{md}");
    assert!(dir.join("update_cv_vs_val.png").is_file());
    let summary: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("summary.json")).unwrap()).unwrap();
    let cv = &summary["update_cv"];
    let runs = cv["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 5);
    for (r, label) in runs.iter().zip(&labels) {
        assert_eq!(r["variant"], label.as_str());
        let rows = rotadam::run::metrics::read(
            &dir.join("runs")
                .join(format!("{label}-s1337"))
                .join("metrics.jsonl"),
        )
        .unwrap();
        let logged: Vec<f64> = rows
            .iter()
            .filter_map(|r| r.update_cv.as_ref().map(|u| u.mean))
            .collect();
        assert_eq!(logged.len(), 2, "{label}: steps 2 and 4");
        let mean = logged.iter().sum::<f64>() / 2.0;
        assert!((r["mean_cv"].as_f64().unwrap() - mean).abs() < 1e-12);
        assert_eq!(r["last_cv"].as_f64().unwrap(), logged[1]);
    }
    let rho = cv["spearman_mean_cv"].as_f64().unwrap();
    assert!((-1.0..=1.0).contains(&rho));
    std::fs::remove_dir_all(&root).unwrap();
}
