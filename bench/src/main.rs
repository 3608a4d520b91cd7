//! `mini-pubsub-bench`: mini-pubsub, NATS JetStream and Redis Streams side by side in one
//! run on 127.0.0.1 (DESIGN.md section 7). Each run of each case starts a fresh server as a
//! child process, drives it with each system's ordinary client, and records msgs/s, MB/s,
//! latency percentiles, and the server's CPU time and memory. See bench/README.md.
//!
//! ```text
//! bench/run.sh                         # build, then the full matrix (not yet timed: a 128 B-only run took 18 minutes, so expect about an hour on 2 cores; --seconds and --backlog-messages shorten it)
//! bench/run.sh --quick                 # smoke run: every case once, tiny counts
//! mini-pubsub-bench --only e2e --sizes 128 --classes memory --repeats 3
//! mini-pubsub-bench --report-from bench/results/comparison.json   # rewrite the md and svg
//! ```
//!
//! Modules: `plan` (systems, classes, workloads, bounds), `servers` (child processes,
//! /proc readings), `systems` (the three clients behind one shape), `workloads`,
//! `runner` (the interleaved matrix), `stats`, `report` (markdown), `chart` (SVG),
//! `machine`, `results` (the JSON).

#![allow(clippy::disallowed_methods, reason = "a benchmark measures wall time: that is its output")]

mod chart;
mod failover;
mod machine;
mod plan;
mod report;
mod results;
mod runner;
mod servers;
mod stats;
mod systems;
mod workloads;

#[cfg(test)]
mod render_tests;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context};
use clap::Parser;

use plan::{Class, Plan, System, Workload};
use results::Report;
use servers::Binaries;

#[derive(Parser, Debug)]
#[command(name = "mini-pubsub-bench", about = "mini-pubsub vs NATS JetStream vs Redis Streams on 127.0.0.1")]
struct Args {
    /// Tiny counts and one repeat: checks that every case works, measures little.
    #[arg(long)]
    quick: bool,
    /// Repeats of every case for every system (interleaved). Default 5 (1 with --quick).
    #[arg(long)]
    repeats: Option<u32>,
    /// Only workloads whose name contains this (sync-publish, async-publish, batch-publish,
    /// backlog-consume, produce-consume, e2e-1k, e2e-5k, e2e-20k, group4, fanout4,
    /// creates, footprint). Repeatable.
    #[arg(long)]
    only: Vec<String>,
    /// Value sizes in bytes, comma-separated.
    #[arg(long, value_delimiter = ',', default_values_t = [16usize, 128, 1024, 16384])]
    sizes: Vec<usize>,
    /// Durability classes: memory, no-fsync, fsync.
    #[arg(long, value_delimiter = ',')]
    classes: Vec<String>,
    /// Systems: mini-pubsub, nats, redis, mini-pubsub-recorded, mini-pubsub-tls, mini-pubsub-baseline (with --baseline-bin).
    #[arg(long, value_delimiter = ',')]
    systems: Vec<String>,
    /// Measured window of a timed case, in seconds (fractions allowed).
    #[arg(long)]
    seconds: Option<f64>,
    /// Messages in the backlog case (and retained in the footprint case), at most.
    #[arg(long)]
    backlog_messages: Option<u64>,
    /// mini-pubsub's sync publish through the generated client (one `PublishRequest` per
    /// message) instead of the client library's Publisher.
    #[arg(long)]
    sync_via_generated: bool,
    /// Batches mini-pubsub's `Publisher` keeps in flight (its `batches_in_flight`, 1 to 16);
    /// default: the library's default.
    #[arg(long)]
    publisher_in_flight: Option<usize>,
    /// Where the report goes. Default bench/results (bench/results/quick with --quick).
    #[arg(long)]
    out: Option<PathBuf>,
    /// The mini-pubsub binary. Default: `mini-pubsub` beside this program.
    #[arg(long)]
    mini_pubsub_bin: Option<PathBuf>,
    /// An earlier mini-pubsub build, run as the system `mini-pubsub-baseline`.
    #[arg(long)]
    baseline_bin: Option<PathBuf>,
    #[arg(long, default_value = "nats-server")]
    nats_server_bin: PathBuf,
    #[arg(long, default_value = "redis-server")]
    redis_server_bin: PathBuf,
    /// Writes the markdown and the chart again from a JSON file of an earlier run.
    #[arg(long)]
    report_from: Option<PathBuf>,
    /// Instead of the cases: kills the leader of each cluster system (mini-pubsub-3, nats-3)
    /// this many times and times each kill until a publish is acknowledged; in the first
    /// class given (no-fsync by default). Writes failover.md.
    #[arg(long)]
    failover: Option<usize>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> anyhow::Result<()> {
    if let Some(path) = &args.report_from {
        let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
        let report: Report = serde_json::from_str(&text).context("not a comparison.json")?;
        let out = path.parent().unwrap_or(Path::new("."));
        return write_report(&report, out, false);
    }
    let plan = plan_from(&args)?;
    let binaries = binaries(&args)?;
    if let Some(kills) = args.failover {
        let out = args.out.clone().unwrap_or_else(|| PathBuf::from("bench/results/cluster"));
        return run_failover(&plan, &binaries, kills.max(1), &out);
    }
    let footprint = args.only.is_empty() || args.only.iter().any(|o| "footprint".contains(o.as_str()));
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| PathBuf::from(if plan.quick { "bench/results/quick" } else { "bench/results" }));
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let report = runtime.block_on(async {
        tokio::select! {
            report = runner::run(&plan, &binaries, footprint) => Ok(report),
            // Dropping the run drops the server guard it holds, which stops the server.
            _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted; the servers started were stopped")),
        }
    })?;
    write_report(&report, &out, true)
}

/// Times failovers of every cluster system in the plan, and writes `failover.md`.
fn run_failover(plan: &Plan, binaries: &Binaries, kills: usize, out: &Path) -> anyhow::Result<()> {
    let class = if plan.classes.len() == Class::ALL.len() { Class::NoFsync } else { plan.classes[0] };
    let systems: Vec<System> =
        plan.systems.iter().copied().filter(|s| matches!(s, System::OursCluster | System::NatsCluster)).collect();
    anyhow::ensure!(!systems.is_empty(), "--failover needs --systems mini-pubsub-3 and/or nats-3");
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let mut lines = vec![
        format!("# Failover: SIGKILL of the leader to the first acknowledged publish ({kills} kills, class {class})"),
        String::new(),
        "Each system's own client publishes one message at a time; the leader (for NATS, the stream's) is \
         SIGKILLed, and the time until a publish sent after the kill is acknowledged is taken. The killed \
         node is started again on its data, 3 s before the next kill."
            .to_string(),
        String::new(),
        "| system | p50 | max | each kill |".to_string(),
        "|---|---|---|---|".to_string(),
    ];
    for system in systems {
        let times = runtime.block_on(failover::measure(system, class, binaries, kills))?;
        let (p50, max) = failover::summary(&times);
        let each: Vec<String> = times.iter().map(|t| format!("{} ms", t.as_millis())).collect();
        lines.push(format!("| {system} | {} ms | {} ms | {} |", p50.as_millis(), max.as_millis(), each.join(", ")));
        eprintln!("{system}: failover p50 {p50:?}, max {max:?}");
    }
    std::fs::create_dir_all(out)?;
    std::fs::write(out.join("failover.md"), lines.join("\n") + "\n")?;
    eprintln!("wrote {}/failover.md", out.display());
    Ok(())
}

fn write_report(report: &Report, out: &Path, with_json: bool) -> anyhow::Result<()> {
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    if with_json {
        std::fs::write(out.join("comparison.json"), serde_json::to_string_pretty(report)?)?;
    }
    std::fs::write(out.join("comparison.md"), report::markdown(report))?;
    let table = report::group(&report.runs);
    std::fs::write(out.join("comparison.svg"), chart::svg(&table, &report.plan.classes, &report.plan.systems))?;
    eprintln!("wrote {}/comparison.{{md,svg{}}}", out.display(), if with_json { ",json" } else { "" });
    Ok(())
}

fn plan_from(args: &Args) -> anyhow::Result<Plan> {
    let quick = args.quick;
    let workloads: Vec<Workload> = Workload::all()
        .into_iter()
        .filter(|w| args.only.is_empty() || args.only.iter().any(|o| w.id().contains(o.as_str())))
        .collect();
    let classes = pick(&args.classes, &Class::ALL, |c| c.id())?;
    let systems = match args.systems.is_empty() {
        true => System::DEFAULT.to_vec(),
        false => pick(&args.systems, &System::ALL, |s| s.id())?,
    };
    if args.sizes.iter().any(|&s| s < 8) {
        bail!("value sizes must be at least 8 bytes (the end-to-end case writes an index into each value)");
    }
    let window_ms = match args.seconds {
        Some(s) if s > 0.0 && s <= 600.0 => (s * 1000.0) as u64,
        Some(s) => bail!("--seconds {s}: allowed is more than 0 to 600"),
        None if quick => 300,
        None => 800,
    };
    let backlog_messages_max = args.backlog_messages.unwrap_or(if quick { 5_000 } else { 1_000_000 });
    Ok(Plan {
        quick,
        repeats: args.repeats.unwrap_or(if quick { 1 } else { 5 }).max(1),
        sizes: args.sizes.clone(),
        classes,
        systems,
        workloads,
        warmup_ms: if quick { 100 } else { 250 },
        window_ms,
        case_messages_max: if quick { 20_000 } else { 5_000_000 },
        backlog_messages_max,
        backlog_bytes_max: if quick { 8 << 20 } else { 512 << 20 },
        backlog_seconds_max: if quick { 20 } else { 30 },
        retained_messages: backlog_messages_max,
        sync_via_generated: args.sync_via_generated,
        publisher_in_flight: args.publisher_in_flight,
    })
}

/// The named items of `all`, in `all`'s order; every item when none are named.
fn pick<T: Copy>(named: &[String], all: &[T], id: fn(&T) -> &'static str) -> anyhow::Result<Vec<T>> {
    if let Some(unknown) = named.iter().find(|n| !all.iter().any(|item| id(item) == n.as_str())) {
        let known: Vec<&str> = all.iter().map(id).collect();
        bail!("unknown `{unknown}`; known are {}", known.join(", "));
    }
    Ok(all.iter().copied().filter(|item| named.is_empty() || named.iter().any(|n| n == id(item))).collect())
}

fn binaries(args: &Args) -> anyhow::Result<Binaries> {
    let mini_pubsub = match &args.mini_pubsub_bin {
        Some(path) => path.clone(),
        None => {
            let exe = std::env::current_exe()?;
            exe.with_file_name("mini-pubsub")
        }
    };
    if !mini_pubsub.exists() {
        bail!("no mini-pubsub binary at {} (build it with `cargo build --release -p mini-pubsub`, or pass --mini-pubsub-bin)", mini_pubsub.display());
    }
    Ok(Binaries {
        mini_pubsub,
        baseline: args.baseline_bin.clone(),
        nats_server: args.nats_server_bin.clone(),
        redis_server: args.redis_server_bin.clone(),
    })
}
