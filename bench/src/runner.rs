//! Runs the plan: for each case, repeat 1 of every system, then repeat 2, and so on, each
//! against a fresh server; a case that fails is recorded as failed and the run goes on.

use std::time::{Duration, Instant};

use anyhow::Context;

use crate::plan::{cases, Case, Class, Plan, System};
use crate::results::{Footprint, Outcome, Report, RunResult};
use crate::servers::{Binaries, ServerProcess, Usage};

use crate::systems::{Driver, Layout};
use crate::{machine, workloads};

/// Value size of the retained-memory case.
const FOOTPRINT_VALUE_BYTES: usize = 128;
/// How long the server settles after the fill before its memory is read.
const FOOTPRINT_SETTLE: Duration = Duration::from_secs(1);

/// Runs every case of `plan` and the memory footprint, printing progress to stderr.
pub async fn run(plan: &Plan, binaries: &Binaries, footprint: bool) -> Report {
    let started = Instant::now();
    let mut machine = machine::describe(binaries);
    let cases = cases(plan);
    let total = cases.len() * plan.systems.len() * plan.repeats as usize;
    let mut runs = Vec::with_capacity(total);
    for case in &cases {
        for repeat in 1..=plan.repeats {
            for &system in &plan.systems {
                let outcome = match case.class.unsupported(system) {
                    Some(why) => Outcome::NotApplicable(why.to_string()),
                    None => run_case(*case, system, plan, binaries).await,
                };
                runs.push(RunResult { case: *case, system, repeat, outcome });
                progress(runs.len(), total, started, runs.last());
            }
        }
    }
    let mut footprints = Vec::new();
    if footprint {
        for &system in &plan.systems {
            eprintln!("[footprint] {system}: {} retained {FOOTPRINT_VALUE_BYTES} B messages", plan.retained_messages);
            footprints.push(measure_footprint(system, plan, binaries).await);
        }
    }
    machine.load_after = machine::load_average();
    machine.wall_seconds = started.elapsed().as_secs_f64();
    Report { machine, plan: plan.clone(), runs, footprints }
}

fn progress(done: usize, total: usize, started: Instant, last: Option<&RunResult>) {
    let Some(run) = last else { return };
    let what = match &run.outcome {
        Outcome::Measured(m) => {
            let second = m.second_rate.map_or(String::new(), |r| format!(" (published {:.0}/s)", r));
            let p99 = m.latency.map_or(String::new(), |l| format!(", p99 {} us", l.p99_us));
            format!("{:.0} msgs/s{second}{p99}", m.rate)
        }
        Outcome::Failed(error) => format!("FAILED: {error}"),
        Outcome::NotApplicable(_) => "n/a".to_string(),
    };
    let elapsed = started.elapsed().as_secs();
    eprintln!("[{done}/{total} {elapsed}s] {} #{} {}: {what}", run.case.label(), run.repeat, run.system);
}

/// One system, one case, one repeat, on a fresh server, bounded by the case's timeout.
async fn run_case(case: Case, system: System, plan: &Plan, binaries: &Binaries) -> Outcome {
    let server = match start(system, case.class, binaries).await {
        Ok(server) => server,
        Err(error) => return Outcome::Failed(format!("{error:#}")),
    };
    let layout = workloads::layout(case.workload);
    let limit = plan.case_timeout(case.workload);
    let measured = tokio::time::timeout(limit, async {
        let driver = Driver::connect(&server, case.class, &layout).await.context("set-up")?;
        workloads::run(case.workload, case.size, plan, &driver, server.pids()).await
    })
    .await;
    let outcome = match measured {
        Ok(Ok(measured)) => Outcome::Measured(measured),
        Ok(Err(error)) => Outcome::Failed(one_line(&format!("{error:#}"))),
        Err(_) => Outcome::Failed(format!("did not finish within {limit:?}")),
    };
    stop(server).await;
    outcome
}

/// Starts a server off the async threads (startup polls with sleeps).
async fn start(system: System, class: Class, binaries: &Binaries) -> anyhow::Result<ServerProcess> {
    let binaries = binaries.clone();
    tokio::task::spawn_blocking(move || ServerProcess::start(system, class, &binaries)).await?
}

/// Stops a server off the async threads (stopping waits for the process to exit).
async fn stop(server: ServerProcess) {
    let _ = tokio::task::spawn_blocking(move || drop(server)).await;
}

/// Memory of a server in its memory configuration holding `plan.retained_messages`.
async fn measure_footprint(system: System, plan: &Plan, binaries: &Binaries) -> Footprint {
    let messages = plan.retained_messages;
    let outcome = match start(system, Class::Memory, binaries).await {
        Err(error) => Err(format!("{error:#}")),
        Ok(server) => {
            let usage = fill_and_read(&server, plan).await.map_err(|e| one_line(&format!("{e:#}")));
            stop(server).await;
            usage
        }
    };
    Footprint { system, messages, size: FOOTPRINT_VALUE_BYTES, outcome }
}

async fn fill_and_read(server: &ServerProcess, plan: &Plan) -> anyhow::Result<Usage> {
    let driver = Driver::connect(server, Class::Memory, &Layout::publish_only()).await?;
    let sender = driver.sender(plan.publisher_in_flight).await?;
    let bound = Duration::from_secs(plan.backlog_seconds_max);
    let stored = workloads::prefill(&sender, plan.retained_messages, FOOTPRINT_VALUE_BYTES, bound).await?;
    sender.close().await?;
    anyhow::ensure!(stored == plan.retained_messages, "stored {stored} of {} within {bound:?}", plan.retained_messages);
    tokio::time::sleep(FOOTPRINT_SETTLE).await;
    server.pids().usage()
}

fn one_line(text: &str) -> String {
    text.replace('\n', " ").chars().take(300).collect()
}
