//! `mini-pubsub-sim run scenarios/x.scn [--seed N]`: runs a scenario, prints its trace, its
//! verdict and the command that replays it; exits 1 when an expectation or a check fails.
//!
//! `mini-pubsub-sim explore [--seeds N] [--start S]`: runs generated scenarios, prints each
//! failing seed with its replay command, and writes each failure, shrunk, to
//! `scenarios/regressions/`; exits 1 when any seed failed.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use mini_pubsub_sim::{explore, runner, scenario};

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
    /// Prints the scenario `explore` generates for a seed.
    Generate {
        #[arg(long)]
        seed: u64,
    },
    /// Runs generated scenarios with random workloads and fault mixes.
    Explore {
        /// How many seeds to try.
        #[arg(long, default_value_t = 20)]
        seeds: u64,
        /// The first seed.
        #[arg(long, default_value_t = 1)]
        start: u64,
        /// Where shrunk failures are written.
        #[arg(long, default_value = "scenarios/regressions")]
        out: PathBuf,
    },
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Run { file, seed } => run(&file, seed),
        Command::Explore { seeds, start, out } => explore(seeds, start, &out),
        Command::Generate { seed } => {
            print!("{}", explore::generate(seed));
            ExitCode::SUCCESS
        }
    }
}

fn explore(seeds: u64, start: u64, out: &std::path::Path) -> ExitCode {
    let failure = |text: &str| scenario::parse("generated.scn", text).ok().and_then(|s| runner::run(&s, None).failure);
    let mut failing = 0;
    for (i, seed) in (start..start + seeds).enumerate() {
        eprint!("\rexplore: {}/{seeds} seeds, {failing} failing", i + 1);
        let text = explore::generate(seed);
        let Some(why) = failure(&text) else { continue };
        failing += 1;
        eprintln!();
        let shrunk = explore::shrink(&text, failure);
        let path = out.join(format!("seed-{seed}.scn"));
        let written = std::fs::create_dir_all(out).and_then(|()| std::fs::write(&path, &shrunk));
        match written {
            Ok(()) => println!("seed {seed} failed ({why}); shrunk to {}", path.display()),
            Err(error) => println!("seed {seed} failed; could not write {}: {error}", path.display()),
        }
        println!("  replay: cargo run -p mini-pubsub-sim -- run {}", path.display());
    }
    eprintln!();
    println!("{failing} of {seeds} seeds failed");
    if failing == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
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
