//! `mini-pubsub-sim run scenarios/x.scn [--seed N]`: runs a scenario, prints its trace, its
//! verdict and the command that replays it; exits 1 when an expectation or a check fails.
//!
//! `mini-pubsub-sim replay DIR`: replays a flight recording on a fresh broker core and
//! checks every reply against it; exits 1 when anything differs.
//!
//! `mini-pubsub-sim sweep [--seeds 20]`: runs every scenario under seeds 1 to N, in
//! parallel, and lists each failing run with its replay command; exits 1 when any failed.
//!
//! `mini-pubsub-sim explore [--seeds N] [--start S]`: runs generated scenarios, prints each
//! failing seed with its replay command, and writes each failure, shrunk, to
//! `scenarios/regressions/`; exits 1 when any seed failed. With `--cluster` the scenarios
//! run three or five brokers under cluster faults.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use mini_pubsub::core::Mutation;
use mini_pubsub_sim::{explore, history, runner, scenario};

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
        /// `full` prints every event, first publish attempts included.
        #[arg(long, default_value = "condensed", value_parser = ["condensed", "full"])]
        trace: String,
        /// Also writes the run as one self-contained HTML page (lanes per host, marks,
        /// fault bands, the verdict; click a message to see its life).
        #[arg(long)]
        html: Option<PathBuf>,
        /// Breaks the broker on purpose, to see the checker catch it (debug builds only):
        /// ack-not-recorded, offset-given-twice, redelivery-after-ack, answer-before-sync,
        /// key-order-ignored, flow-control-ignored, invariant-broken.
        #[arg(long)]
        mutation: Option<String>,
        /// Each broker records every command it applies into DIR/<host>-<start> (a flight
        /// recording, as `mini-pubsub serve --record`), for `replay`.
        #[arg(long, value_name = "DIR")]
        record: Option<PathBuf>,
    },
    /// Replays a flight recording (`mini-pubsub serve --record DIR`) on a fresh broker
    /// core: prints its trace, checks every reply, output and the final state against the
    /// recording, and runs the checker's safety checks; exits 1 when anything differs.
    Replay { dir: PathBuf },
    /// Runs every scenario in a folder under many seeds, in parallel, and lists each
    /// failing run with the command that replays it; exits 1 when any failed.
    Sweep {
        #[arg(long, default_value = "scenarios")]
        dir: PathBuf,
        /// Seeds 1 to this many.
        #[arg(long, default_value_t = 20)]
        seeds: u64,
        /// Runs at once (default: the machine's cores).
        #[arg(long)]
        jobs: Option<usize>,
    },
    /// Measures simulation speed: runs every scenario in a folder and reports simulated
    /// seconds per wall second and scenarios per second (build with --release).
    Bench {
        #[arg(long, default_value = "scenarios")]
        dir: PathBuf,
        /// Runs of each scenario.
        #[arg(long, default_value_t = 3)]
        repeat: u32,
    },
    /// Prints the scenario `explore` generates for a seed.
    Generate {
        #[arg(long)]
        seed: u64,
        /// A cluster scenario (three or five brokers, cluster faults).
        #[arg(long)]
        cluster: bool,
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
        /// Explore this scenario under many seeds instead of generated ones.
        #[arg(long)]
        scenario: Option<PathBuf>,
        /// Generate cluster scenarios: three or five brokers, with crashes of the leader or
        /// a follower, power failures, partitions of the leader, leader transfers, slow
        /// disks and slow links, one after another.
        #[arg(long, conflicts_with = "scenario")]
        cluster: bool,
    },
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Run { file, seed, trace, html, mutation, record } => {
            match mutation.as_deref().map(mutation_named).transpose() {
                Ok(mutation) => {
                    run(&file, seed, trace == "full", html.as_deref(), runner::Options { mutation, record })
                }
                Err(message) => {
                    eprintln!("{message}");
                    ExitCode::from(2)
                }
            }
        }
        Command::Explore { seeds, start, out, scenario, cluster } => match scenario {
            Some(file) => match std::fs::read_to_string(&file) {
                Ok(text) => explore(seeds, start, &out, "seed", false, |seed| with_seed(&text, seed)),
                Err(error) => {
                    eprintln!("{}: {error}", file.display());
                    ExitCode::from(2)
                }
            },
            None if cluster => explore(seeds, start, &out, "cluster-seed", true, explore::generate_cluster),
            None => explore(seeds, start, &out, "seed", true, explore::generate),
        },
        Command::Bench { dir, repeat } => bench(&dir, repeat),
        Command::Replay { dir } => match mini_pubsub_sim::replay::replay_dir(&dir) {
            Ok(report) => {
                print!("{}\n{}", report.trace, report.verdict());
                if report.passed() {
                    ExitCode::SUCCESS
                } else {
                    ExitCode::FAILURE
                }
            }
            Err(message) => {
                eprintln!("error: cannot replay {}: {message}", dir.display());
                ExitCode::from(2)
            }
        },
        Command::Sweep { dir, seeds, jobs } => sweep(&dir, seeds, jobs),
        Command::Generate { seed, cluster } => {
            print!("{}", if cluster { explore::generate_cluster(seed) } else { explore::generate(seed) });
            ExitCode::SUCCESS
        }
    }
}

/// The `.scn` files of a folder, sorted.
fn scenario_files(dir: &std::path::Path) -> Result<Vec<PathBuf>, String> {
    let entries = std::fs::read_dir(dir).map_err(|error| format!("{}: {error}", dir.display()))?;
    let mut files: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "scn"))
        .collect();
    files.sort();
    Ok(files)
}

/// Every scenario of `dir` under seeds 1 to `seeds`, `jobs` runs at a time.
fn sweep(dir: &std::path::Path, seeds: u64, jobs: Option<usize>) -> ExitCode {
    let files = match scenario_files(dir) {
        Ok(files) => files,
        Err(message) => {
            eprintln!("{message}");
            return ExitCode::from(2);
        }
    };
    let mut runs = Vec::new();
    for file in &files {
        let name = file.display().to_string();
        let parsed = match std::fs::read_to_string(file)
            .map_err(|e| e.to_string())
            .and_then(|text| scenario::parse(&name, &text).map_err(|e| e.to_string()))
        {
            Ok(parsed) => parsed,
            Err(message) => {
                eprintln!("{message}");
                return ExitCode::from(2);
            }
        };
        runs.extend((1..=seeds).map(|seed| (name.clone(), parsed.clone(), seed)));
    }
    let jobs = jobs.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, usize::from)).max(1);
    let next = std::sync::atomic::AtomicUsize::new(0);
    let failed = std::sync::Mutex::new(Vec::new());
    std::thread::scope(|scope| {
        for _ in 0..jobs {
            scope.spawn(|| loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let Some((name, parsed, seed)) = runs.get(i) else { return };
                let report = runner::run(parsed, Some(*seed));
                if let Some(why) = report.failure {
                    failed.lock().expect("sweep lock").push((name.clone(), *seed, why));
                }
            });
        }
    });
    let mut failed = failed.into_inner().expect("sweep lock");
    failed.sort();
    for (name, seed, why) in &failed {
        println!("FAIL {name} --seed {seed}: {why}");
        println!("  replay: cargo run -p mini-pubsub-sim -- run {name} --seed {seed}");
    }
    println!("{} runs ({} scenarios x seeds 1 to {seeds}), {} failed", runs.len(), files.len(), failed.len());
    if failed.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

#[allow(clippy::disallowed_methods, reason = "a benchmark measures wall time; the simulation never reads it")]
fn bench(dir: &std::path::Path, repeat: u32) -> ExitCode {
    let files = match scenario_files(dir) {
        Ok(files) => files,
        Err(message) => {
            eprintln!("{message}");
            return ExitCode::from(2);
        }
    };
    println!("{:<44} {:>10} {:>10} {:>12}", "scenario", "simulated", "wall", "sim s/wall s");
    let (mut simulated_total, mut wall_total, mut runs) = (0.0, 0.0, 0u32);
    for file in files {
        let Ok(parsed) = std::fs::read_to_string(&file)
            .map_err(|e| e.to_string())
            .and_then(|t| scenario::parse(&file.display().to_string(), &t).map_err(|e| e.to_string()))
        else {
            eprintln!("{}: cannot be read or parsed", file.display());
            return ExitCode::from(2);
        };
        let started = std::time::Instant::now();
        let mut simulated = 0.0;
        for _ in 0..repeat {
            simulated += runner::run(&parsed, None).simulated.as_secs_f64();
        }
        let wall = started.elapsed().as_secs_f64();
        let name = file.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        println!("{name:<44} {simulated:>9.1}s {wall:>9.2}s {:>12.0}", simulated / wall);
        simulated_total += simulated;
        wall_total += wall;
        runs += repeat;
    }
    println!(
        "total: {runs} runs, {simulated_total:.0} simulated s in {wall_total:.2} wall s: {:.0}x real time, {:.1} scenarios/s",
        simulated_total / wall_total,
        f64::from(runs) / wall_total
    );
    ExitCode::SUCCESS
}

/// `text` with its `config seed` replaced by `seed`.
fn with_seed(text: &str, seed: u64) -> String {
    let body: Vec<String> = text
        .lines()
        .map(|line| {
            if !line.trim_start().starts_with("config") {
                return line.to_string();
            }
            line.split_whitespace().filter(|word| !word.starts_with("seed=")).collect::<Vec<_>>().join(" ")
        })
        .collect();
    format!("config seed={seed}\n{}\n", body.join("\n"))
}

/// Runs `scenario_for(seed)` for each seed, writing each failure shrunk to
/// `out/PREFIX-SEED.scn` (the cluster explorer's prefix differs, so the two never overwrite
/// each other). Only for `generated` scenarios does a run that failed only because a fault
/// did nothing count as inconclusive; written ones keep the rule strict.
fn explore(
    seeds: u64,
    start: u64,
    out: &std::path::Path,
    prefix: &str,
    generated: bool,
    scenario_for: impl Fn(u64) -> String,
) -> ExitCode {
    let failure = |text: &str| scenario::parse("generated.scn", text).ok().and_then(|s| runner::run(&s, None).failure);
    let (mut failing, mut inconclusive) = (0, 0);
    for (i, seed) in (start..start + seeds).enumerate() {
        eprint!("\rexplore: {}/{seeds} seeds, {failing} failing", i + 1);
        let text = scenario_for(seed);
        let Some(why) = failure(&text) else { continue };
        if generated && explore::is_inconclusive(&why) {
            inconclusive += 1;
            continue;
        }
        failing += 1;
        eprintln!();
        let shrunk = explore::shrink(&text, failure);
        let path = out.join(format!("{prefix}-{seed}.scn"));
        let written = std::fs::create_dir_all(out).and_then(|()| std::fs::write(&path, &shrunk));
        match written {
            Ok(()) => println!("seed {seed} failed ({why}); shrunk to {}", path.display()),
            Err(error) => println!("seed {seed} failed; could not write {}: {error}", path.display()),
        }
        println!("  replay: cargo run -p mini-pubsub-sim -- run {}", path.display());
    }
    eprintln!();
    println!(
        "{failing} of {seeds} seeds failed; {inconclusive} inconclusive (a fault did nothing, or a check had nothing to examine)"
    );
    if failing == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// A mutation's name on the command line: `AckNotRecorded` is `ack-not-recorded`.
fn kebab(mutation: &Mutation) -> String {
    let mut out = String::new();
    for (i, c) in format!("{mutation:?}").chars().enumerate() {
        if c.is_uppercase() && i > 0 {
            out.push('-');
        }
        out.push(c.to_ascii_lowercase());
    }
    out
}

/// A mutation by its kebab-case name.
fn mutation_named(name: &str) -> Result<Mutation, String> {
    if !cfg!(debug_assertions) {
        return Err("--mutation needs a debug build (cargo run -p mini-pubsub-sim, without --release)".to_string());
    }
    let names: Vec<String> = Mutation::ALL.iter().map(kebab).collect();
    Mutation::ALL
        .into_iter()
        .find(|m| kebab(m) == name)
        .ok_or_else(|| format!("unknown mutation `{name}`; known: {}", names.join(", ")))
}

fn run(
    file: &PathBuf,
    seed: Option<u64>,
    full: bool,
    html: Option<&std::path::Path>,
    options: runner::Options,
) -> ExitCode {
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
    let mutation = options.mutation;
    let report = runner::run_with(&parsed, seed, options);

    let trace = if full { history::render(&report.entries, true) } else { report.trace.clone() };
    println!("{trace}\n\n{}", report.verdict);
    let mutated = mutation.map(|m| format!(" --mutation {}", kebab(&m))).unwrap_or_default();
    let replay = format!("cargo run -p mini-pubsub-sim -- run {name} --seed {}{mutated}", report.seed);
    println!("\nreplay: {replay}");
    if let Some(out) = html {
        if let Err(error) = std::fs::write(out, mini_pubsub_sim::html::page(&name, &report, &replay)) {
            eprintln!("{}: {error}", out.display());
            return ExitCode::from(2);
        }
        println!("page: {}", out.display());
    }
    if report.passed {
        println!("PASS");
        ExitCode::SUCCESS
    } else {
        println!("FAIL");
        ExitCode::FAILURE
    }
}
