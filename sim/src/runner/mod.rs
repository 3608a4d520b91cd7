//! Runs a scenario: brokers and apps on turmoil hosts, the driver stepping simulated time
//! and applying each step when its time comes, then the verdict.
//!
//! - `driver`: the hosts, the clock, and the steps that send commands;
//! - `faults`: network, crash and disk faults, and whether each one met any traffic;
//! - `expect`: expectations, evaluated against the history as it grows.

mod driver;
mod expect;
mod faults;

use std::time::Duration;

use mini_pubsub::core::Mutation;
use std::path::PathBuf;

use mini_pubsub::server::ServerConfig;

use crate::agent::Command;
use crate::checker;
use crate::facts;
use crate::history::{render, Entry, Event};
use crate::scenario::Scenario;
use driver::Driver;

pub use crate::scenario::ADMIN_HOST;
/// How long the run goes on after the last step, with every fault healed and the admin
/// host pulling what is left on every subscription, so that what was published
/// can be delivered before the checker reads the history.
const DRAIN: Duration = Duration::from_secs(30);
/// How long the drain goes on after the last publish was answered (or sent again).
const SETTLE: Duration = Duration::from_secs(5);
/// Most the drain goes on past [`DRAIN`] while publishes are still being answered.
const DRAIN_EXTRA_MAX: Duration = Duration::from_secs(60);

/// The outcome of a run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    pub seed: u64,
    /// One line per event, stamped with simulated time (condensed).
    pub trace: String,
    /// Every event of the run, for `--trace full`.
    pub entries: Vec<Entry>,
    /// Expectations, history counts, checker results, faults.
    pub verdict: String,
    pub passed: bool,
    /// What failed, as a stable signature (the failing expectations' lines and checks'
    /// names), or `None` when the run passed.
    pub failure: Option<String>,
    /// Simulated time the run covered, drain included.
    pub simulated: Duration,
    /// The checker's results (empty when a broken invariant stopped the run).
    pub checks: Vec<checker::Check>,
    /// Every fault, with when it was in place and the hosts it cut.
    pub spans: Vec<FaultSpan>,
}

/// A fault as it showed on the hosts: when it began and ended, and which hosts it cut
/// (none listed: every host).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FaultSpan {
    pub text: String,
    pub hosts: Vec<String>,
    pub from_ms: u64,
    pub to_ms: u64,
}

/// What the steps of a run came to, before the checker reads the history.
#[derive(Default)]
struct Played {
    /// Why the run fails so far, as signatures (see [`Report::failure`]).
    failures: Vec<String>,
    /// Each expectation's verdict line.
    expectations: Vec<String>,
    /// Each late step's verdict line.
    late: Vec<String>,
}

/// Runs `scenario` with `seed` (or its `config seed`, or 0).
pub fn run(scenario: &Scenario, seed: Option<u64>) -> Report {
    run_mutated(scenario, seed, None)
}

/// [`run`], with the brokers broken on purpose by `mutation` (see [`Mutation`]): only in
/// debug builds, where the broker has room for one.
///
/// # Panics
/// When given a mutation in a release build.
pub fn run_mutated(scenario: &Scenario, seed: Option<u64>, mutation: Option<Mutation>) -> Report {
    run_with(scenario, seed, Options { mutation, record: None })
}

/// What else a run may do.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Breaks the brokers on purpose (see [`run_mutated`]).
    pub mutation: Option<Mutation>,
    /// Each broker records every command it applies (`serve --record`) into
    /// `<dir>/<host>-<life>`, a directory per start, on the real filesystem, so that
    /// `mini-pubsub-sim replay` can replay it. A broker restarted on its data starts a
    /// recording that does not replay from empty.
    pub record: Option<PathBuf>,
}

/// [`run`], with [`Options`].
///
/// # Panics
/// When given a mutation in a release build.
pub fn run_with(scenario: &Scenario, seed: Option<u64>, options: Options) -> Report {
    let seed = seed.or(scenario.config.seed).unwrap_or(0);
    let mut driver = Driver::new(scenario, seed, options);
    let mut played = play(&mut driver, scenario);
    if driver.history.broken().is_none() {
        played.failures.extend(driver.heal_all());
    }
    let healed_at_ms = driver.calm_since_ms.unwrap_or(driver.now_ms());
    let drain_from_ms = driver.now_ms();
    if driver.history.broken().is_none() {
        if let Err(message) = drain(&mut driver) {
            played.failures.push(message);
        }
    }
    let entries = driver.history.entries();
    // A broken invariant stops the run where it broke: the history after it would be a
    // broken broker's, so nothing is checked.
    let checks = match driver.history.broken() {
        Some(_) => Vec::new(),
        None => {
            let settled =
                checker::Unsettled { faults: driver.fault_windows.clone(), disconnects: driver.disconnects.clone() };
            let context = checker::Context {
                loss_allowed: scenario.config.loss_allowed,
                healed_at_ms,
                drain_from_ms,
                bound_ms: DRAIN.as_millis() as u64,
                retry: facts::retry_bounds(scenario),
                ordered: facts::ordered_subscriptions(scenario),
                unsettled: settled,
                dedupe_window_ms: ServerConfig::default().broker.dedupe_window_ms,
                ack_deadlines_ms: facts::ack_deadlines(scenario),
            };
            checker::check(&entries, &context)
        }
    };
    let failed = checks.iter().filter(|c| !c.passed);
    played.failures.extend(failed.map(|c| match c.detail.starts_with("examined nothing") {
        true => format!("check {} examined nothing", c.name),
        false => format!("check {}", c.name),
    }));
    let verdict = verdict(seed, &played, &entries, &checks, &driver.faults);
    let failure = (!played.failures.is_empty()).then(|| played.failures.join("; "));
    let simulated = driver.elapsed();
    let trace = render(&entries, false);
    let end_ms = driver.now_ms();
    let spans = driver.spans.iter().cloned().map(|s| FaultSpan { to_ms: s.to_ms.min(end_ms), ..s }).collect();
    Report { seed, trace, entries, verdict, passed: failure.is_none(), failure, simulated, checks, spans }
}

/// The final drain: the admin host pulls and acks what is left on every subscription the
/// broker has for [`DRAIN`], and on while publishes are still being answered, so that no
/// publish is answered too late to be delivered: until none was for [`SETTLE`], at most
/// [`DRAIN_EXTRA_MAX`] more.
fn drain(driver: &mut Driver) -> Result<(), String> {
    driver.send(ADMIN_HOST, Command::Drain);
    let end = driver.elapsed() + DRAIN;
    driver.advance_to(end)?;
    let last_chance = end + DRAIN_EXTRA_MAX;
    loop {
        let publishing = driver.history.last_at(|e| {
            matches!(e, Event::PublishInvoked { .. } | Event::Published { .. } | Event::PublishFailed { .. })
        });
        let quiet_from = Duration::from_millis(publishing.unwrap_or(0)) + SETTLE;
        if quiet_from <= driver.elapsed() || driver.elapsed() >= last_chance {
            return Ok(());
        }
        driver.advance_to(quiet_from.min(last_chance))?;
    }
}

/// Applies every step at its time; stops early when the simulation fails (a broken
/// invariant included).
fn play(driver: &mut Driver, scenario: &Scenario) -> Played {
    let mut played = Played::default();
    // The last step that held the timeline (an admin step waiting for its answer, or an
    // `eventually`): a later step due before it finished runs late, and says so.
    let mut holder = None;
    for (i, step) in scenario.steps.iter().enumerate() {
        // The late steps that run now, up to the next one that blocks, share one note.
        let starts_group = i == 0 || scenario.steps[i - 1].action.blocks();
        if starts_group && driver.elapsed() > step.at {
            let now = driver.elapsed();
            let mut overdue = Vec::new();
            for s in scenario.steps[i..].iter().take_while(|s| s.at < now) {
                if s.timed {
                    overdue.push(s);
                }
                if s.action.blocks() {
                    break;
                }
            }
            if !overdue.is_empty() {
                played.late.push(driver.note_late(&overdue, holder));
            }
        }
        if step.action.blocks() {
            holder = Some(step);
        }
        if let Err(message) = driver.advance_to(step.at) {
            played.failures.push(message);
            break;
        }
        match driver.apply(step) {
            Ok(Some(line)) => played.expectations.push(line),
            Ok(None) => {}
            // The broken invariant below is the failure; the expectation only stopped there.
            Err(line) if driver.history.broken().is_some() => played.expectations.push(line),
            Err(line) => {
                // The signature leaves out line numbers and times, so shrinking can match it.
                let what = line.split_once("ms: ").map_or(line.as_str(), |(_, what)| what).to_string();
                played.failures.push(format!("expectation {what}"));
                played.expectations.push(line);
            }
        }
        if let Some(what) = driver.history.broken() {
            let message = format!("invariant broken at {} ms on {what}", driver.now_ms());
            if !played.failures.contains(&message) {
                played.failures.push(message);
            }
            break;
        }
    }
    played
}

fn verdict(seed: u64, played: &Played, entries: &[Entry], checks: &[checker::Check], faults: &[String]) -> String {
    let count = |f: fn(&Event) -> bool| entries.iter().filter(|e| f(&e.event)).count();
    let mut out = vec![format!("seed: {seed}"), "expectations:".to_string()];
    out.extend(played.expectations.iter().map(|e| format!("  {e}")));
    if !played.late.is_empty() {
        out.push("late steps (an earlier step held the timeline):".to_string());
        out.extend(played.late.iter().map(|l| format!("  {l}")));
    }
    out.push(format!(
        "history: {} published, {} publish failures, {} deliveries, {} acks applied, {} stream failures",
        count(|e| matches!(e, Event::Published { .. })),
        count(|e| matches!(e, Event::PublishFailed { .. })),
        count(|e| matches!(e, Event::Delivered { .. })),
        count(|e| matches!(e, Event::AckAnswered { op, result, .. } if op == "ack" && result == "applied")),
        count(|e| matches!(e, Event::StreamFailed { .. })),
    ));
    if checks.is_empty() {
        out.push("checks: none run: the run stopped where the broker broke an invariant".to_string());
    } else {
        out.push("checks:".to_string());
    }
    out.extend(
        checks.iter().map(|c| format!("  {:<24} {} {}", c.name, if c.passed { "ok  " } else { "FAIL" }, c.detail)),
    );
    out.push(format!("faults fired: {}", if faults.is_empty() { "none".to_string() } else { faults.join(", ") }));
    if !played.failures.is_empty() {
        out.push("failed:".to_string());
        out.extend(played.failures.iter().map(|f| format!("  {f}")));
    }
    out.join("\n")
}
