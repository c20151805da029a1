//! The `rotadam` binary: parse, run, print an error once (with its causes), exit with a status.

use clap::Parser;
use rotadam::cli::{self, Cli};
use std::process::ExitCode;

fn main() -> ExitCode {
    match cli::run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // every message includes its cause (src/error.rs): printed once
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
