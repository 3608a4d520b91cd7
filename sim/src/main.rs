//! `mini-pubsub-sim run scenarios/x.scn [--seed N]`: runs a scenario, prints its trace, its
//! verdict and the command that replays it; exits 1 when an expectation or a check fails.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use mini_pubsub_sim::{runner, scenario};

#[derive(Parser)]
#[command(name = "mini-pubsub-sim", about = "Deterministic scenarios for mini-pubsub")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Runs one scenario file.
    Run {
        file: PathBuf,
        /// Overrides the scenario's `config seed`.
        #[arg(long)]
        seed: Option<u64>,
    },
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Run { file, seed } => run(&file, seed),
    }
}

fn run(file: &PathBuf, seed: Option<u64>) -> ExitCode {
    let name = file.display().to_string();
    let text = match std::fs::read_to_string(file) {
        Ok(text) => text,
        Err(error) => {
            eprintln!("{name}: {error}");
            return ExitCode::from(2);
        }
    };
    let parsed = match scenario::parse(&name, &text) {
        Ok(parsed) => parsed,
        Err(error) => {
            eprintln!("{error}");
            return ExitCode::from(2);
        }
    };
    let report = runner::run(&parsed, seed);
    println!("{}\n\n{}", report.trace, report.verdict);
    println!("\nreplay: cargo run -p mini-pubsub-sim -- run {name} --seed {}", report.seed);
    if report.passed {
        println!("PASS");
        ExitCode::SUCCESS
    } else {
        println!("FAIL");
        ExitCode::FAILURE
    }
}
