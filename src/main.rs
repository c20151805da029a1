//! The `rotadam` binary: parse, run, print the error chain once, exit with a status.

use clap::Parser;
use rotadam::cli::{Cli, Command};
use std::process::ExitCode;

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Gpt2(args) => {
            let (cfg, resume) = args.to_config()?;
            rotadam::run::train::train(&cfg, resume)?;
        }
        Command::Prepare(a) => {
            let summary =
                rotadam::data::prepare::prepare(&rotadam::data::prepare::PrepareOptions {
                    inputs: a.input,
                    out: a.out,
                    val_fraction: a.val_fraction,
                    seed: a.seed,
                    quiet: a.quiet,
                })?;
            println!("{}", serde_json::to_string_pretty(&summary)?);
        }
        Command::Bench(a) => rotadam::bench::run(&a)?,
        Command::Sweep(a) => {
            let dir = rotadam::sweep::run(&a)?;
            println!("{}", dir.join("report.md").display());
        }
        Command::Plot(a) => {
            let (png, svg) = rotadam::sweep::plot_runs::run(&a)?;
            println!("{}\n{}", png.display(), svg.display());
        }
        Command::Quadratic(a) => rotadam::quadratic::run_cli(&a)?,
        Command::Diagnose(a) if a.sweep => {
            let rows = rotadam::sweep::diagnostics::run(&a)?;
            if a.json {
                println!("{}", serde_json::to_string_pretty(&rows)?);
            } else {
                println!("{}", a.path.join("report.md").display());
            }
        }
        Command::Diagnose(a) => {
            let report = rotadam::diagnose::run(&a)?;
            if a.json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            }
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
