//! The command line: every argument of every subcommand explains itself in `--help`, and the kinds are
//! parsed at the edge with errors that name the flag and what it accepts.

use clap::{CommandFactory, Parser};
use rotadam::cli::{Cli, Command};
use rotadam::config::{Choice, OptimizerKind, RotationKind, Scope};

/// Every (command path, argument) pair without help text.
fn undocumented(cmd: &clap::Command, path: &str, out: &mut Vec<String>) {
    for a in cmd.get_arguments() {
        let id = a.get_id().as_str();
        if matches!(id, "help" | "version") {
            continue;
        }
        let text = a
            .get_help()
            .or(a.get_long_help())
            .map(|s| s.to_string())
            .unwrap_or_default();
        if text.trim().is_empty() {
            out.push(format!("{path} --{id}"));
        }
    }
    for sub in cmd.get_subcommands() {
        undocumented(sub, &format!("{path} {}", sub.get_name()), out);
    }
}

#[test]
fn every_argument_of_every_subcommand_has_help_text() {
    let cmd = Cli::command();
    cmd.clone().debug_assert();
    let mut missing = Vec::new();
    undocumented(&cmd, "rotadam", &mut missing);
    assert!(
        missing.is_empty(),
        "arguments without help text: {missing:?}"
    );
}

#[test]
fn preset_dependent_defaults_are_listed_per_preset() {
    let help = Cli::command()
        .find_subcommand_mut("gpt2")
        .unwrap()
        .render_long_help()
        .to_string();
    // from the presets themselves: small 8, experiment 8, tiny 4, the GPT-2 family the paper's 12
    assert!(
        help.contains("[default: small 8, experiment 8, tiny 4, 124m–1558m 12]"),
        "{help}"
    );
    assert!(help.contains("[default: small 400, experiment 1000, tiny 20, 124m–1558m 100000]"));
}

#[test]
fn kinds_parse_once_at_the_edge() {
    let cli = Cli::try_parse_from([
        "rotadam",
        "gpt2",
        "--rotation",
        "output",
        "--optimizer",
        "blockwise-adam",
    ])
    .unwrap();
    let Command::Gpt2(a) = cli.command else {
        panic!("not gpt2")
    };
    assert_eq!(a.rotation, Some(RotationKind::Scope(Scope::Output)));
    assert_eq!(a.optimizer, Some(OptimizerKind::BlockwiseAdam));
    let e = Cli::try_parse_from(["rotadam", "gpt2", "--rotation", "diagonal"])
        .unwrap_err()
        .to_string();
    assert!(e.contains("diagonal") && e.contains("--rotation"), "{e}");
    // every name round-trips, through the parser and serde (config.json stores the name)
    for &(k, name, _) in RotationKind::VALUES {
        assert_eq!(name.parse::<RotationKind>().unwrap(), k);
        assert_eq!(serde_json::to_string(&k).unwrap(), format!("\"{name}\""));
        assert_eq!(
            serde_json::from_str::<RotationKind>(&format!("\"{name}\"")).unwrap(),
            k
        );
    }
    let e = serde_json::from_str::<RotationKind>("\"diagonal\"").unwrap_err();
    assert!(
        e.to_string().contains("expected one of none, global"),
        "{e}"
    );
}

/// The scopes' names and descriptions are one table: `--rotation`'s rows of the scopes are `Scope`'s.
#[test]
fn every_scope_has_one_description() {
    let scope_rows: Vec<_> = RotationKind::VALUES
        .iter()
        .filter_map(|&(k, name, help)| match k {
            RotationKind::Scope(s) => Some((s, name, help)),
            _ => None,
        })
        .collect();
    assert_eq!(scope_rows, Scope::VALUES.to_vec());
}

/// `--json` output of a value that cannot be JSON (a path that is not UTF-8) is an error, not a panic.
#[cfg(unix)]
#[test]
fn json_of_a_non_utf8_path_is_an_error() {
    use std::os::unix::ffi::OsStrExt;
    let p = std::path::PathBuf::from(std::ffi::OsStr::from_bytes(b"run-\xff"));
    let r = std::panic::catch_unwind(|| rotadam::cli::to_json(&p).map(|_| ()));
    let e = r.expect("to_json panicked").unwrap_err().to_string();
    assert!(e.contains("UTF-8"), "{e}");
    assert!(rotadam::cli::to_json(&vec![1, 2]).unwrap().contains('1'));
}

/// The data-parallel flags: `--devices` alone picks devices (one: that device, no ranks), several make
/// ranks; `--rank`/`--world-size` need `--rendezvous`, which needs `--out`; `--replicate-optimizer` is
/// for several devices. Planted: refusing `--replicate-optimizer` whenever `--devices` has one entry (a
/// bug of this change) made `--devices 1` fail.
#[test]
fn data_parallel_flags_parse_and_refuse_what_cannot_work() {
    let parallel = |args: &[&str]| {
        let cli = Cli::try_parse_from([&["rotadam", "gpt2"][..], args].concat()).unwrap();
        let Command::Gpt2(a) = cli.command else {
            panic!("not gpt2")
        };
        a.parallel().map_err(|e| e.to_string())
    };
    let one = parallel(&["--devices", "1"]).unwrap().unwrap();
    assert_eq!((one.devices.clone(), one.world()), (vec![1], 1));
    let four = parallel(&["--devices", "0,1,2,3"]).unwrap().unwrap();
    assert_eq!(four.world(), 4);
    assert!(parallel(&[]).unwrap().is_none());
    let e = parallel(&["--replicate-optimizer"]).unwrap_err();
    assert!(e.contains("replicate-optimizer"), "{e}");
    let e = parallel(&[
        "--rendezvous",
        "/tmp/rv",
        "--rank",
        "0",
        "--world-size",
        "2",
    ])
    .unwrap_err();
    assert!(e.contains("--out"), "{e}");
    let p = parallel(&[
        "--rendezvous",
        "/tmp/rv",
        "--rank",
        "1",
        "--world-size",
        "2",
        "--out",
        "/tmp/x",
        "--devices",
        "3",
    ])
    .unwrap()
    .unwrap();
    let procs = p.processes.clone().unwrap();
    assert_eq!(
        (procs.rank, procs.world_size, procs.local_rank),
        (1, 2, None)
    );
    assert_eq!((p.devices.clone(), p.world()), (vec![3], 2));
    assert!(Cli::try_parse_from(["rotadam", "gpt2", "--rank", "0"]).is_err());
}
