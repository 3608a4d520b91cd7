//! The queue checker: reads a run's history in Jepsen's total-queue terms.
//!
//! Every check says how many things it examined, and fails when the history holds what
//! it is about but it examined none of it: a check must not pass on nothing.
//!
//! - `model`: the stored messages and what each subscription is owed, from the broker's
//!   notices;
//! - `delivery`: lost, conservation, liveness;
//! - `order`: offsets per stream, and keys on ordered subscriptions;
//! - `acks`: redelivered-after-ack, and flow control;
//! - `backoff`: retry policies;
//! - `stored`: unexpected, duplicated, offsets, duplicated-publish;
//! - `exclusive`: partition-exclusive subscriptions;
//! - `cluster`: what a replicated cluster's nodes reported.

mod acks;
mod backoff;
pub mod cluster;
mod delivery;
mod exclusive;
pub mod model;
mod order;
mod stored;

use std::collections::{BTreeMap, BTreeSet};

use crate::history::{DeadLetter, Entry, Event};
use model::Model;

/// One checker result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    pub name: &'static str,
    pub passed: bool,
    pub detail: String,
    /// The scenario ids of the messages its problems name (empty when it passed).
    pub ids: Vec<String>,
}

/// What the checker knows beside the history, from the scenario and the driver.
#[derive(Debug, Clone, Default)]
pub struct Context {
    /// The scenario declares loss (a crash of a broker on the memory log, or under
    /// `fsync=never`): a message lost by a crash that came after its publish began is
    /// reported but does not fail the run. Nothing else is forgiven.
    pub loss_allowed: bool,
    /// When the last fault ended; liveness is measured from here, within `bound_ms`.
    pub healed_at_ms: u64,
    /// When the final drain began.
    pub drain_from_ms: u64,
    pub bound_ms: u64,
    /// The retry policy of each subscription that has one.
    pub retry: BTreeMap<String, RetryBounds>,
    /// Subscriptions with message ordering by key.
    pub ordered: BTreeSet<String>,
    pub unsettled: Unsettled,
    /// The broker's dedupe window, for the duplicated-publish check.
    pub dedupe_window_ms: u64,
    /// Each subscription's ack deadline, for the flow check.
    pub ack_deadlines_ms: BTreeMap<String, u64>,
}

/// A subscription's retry policy, and the shortest explicit nack delay the scenario uses
/// (which replaces the backoff for that redelivery).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryBounds {
    pub minimum_ms: u64,
    pub maximum_ms: u64,
    pub nack_delay_min_ms: Option<u64>,
    /// Whether a nacked message must come back within its backoff (plus slack): not when
    /// nacks carry their own delays, nor when a subscriber's flow limit may hold it back.
    pub upper_bound: bool,
}

/// When what a client sees may lag what the broker did: while faults were in place, and
/// when a host disconnected its streams (their leases end at once, with no backoff).
#[derive(Debug, Clone, Default)]
pub struct Unsettled {
    /// (from, to) in simulated milliseconds.
    pub faults: Vec<(u64, u64)>,
    /// (host, when).
    pub disconnects: Vec<(String, u64)>,
}

impl Unsettled {
    /// Whether a fault was in place at some moment of `from..=to`.
    fn faulted(&self, from: u64, to: u64) -> bool {
        self.faults.iter().any(|&(start, end)| start <= to && end >= from)
    }
}

/// The checks that need no final drain: what a broker must never do, whatever its clients
/// did (a flight recording's replay has no drain, so loss and liveness cannot be judged).
pub fn check_safety(entries: &[Entry], context: &Context) -> Vec<Check> {
    let (mut checks, conditional) = safety(entries, &Model::build(entries), context);
    checks.extend(conditional);
    checks
}

/// Runs every check.
pub fn check(entries: &[Entry], context: &Context) -> Vec<Check> {
    let model = Model::build(entries);
    let (safety, conditional) = safety(entries, &model, context);
    let mut safety = safety.into_iter();
    let mut checks = vec![delivery::lost(entries, &model, context), delivery::conservation(entries, &model, context)];
    // unexpected, duplicated, redelivered-after-ack, order, offsets; then flow.
    checks.extend(safety.by_ref().take(5));
    checks.push(backoff::backoff(entries, &context.retry, &context.unsettled));
    checks.push(delivery::liveness(entries, &model, context));
    checks.extend(safety);
    checks.extend(conditional);
    checks
}

/// The safety checks every run has, and those only some runs have a verdict on.
fn safety(entries: &[Entry], model: &Model, context: &Context) -> (Vec<Check>, Vec<Check>) {
    let always = vec![
        stored::unexpected(entries),
        stored::duplicated(entries),
        acks::redelivered_after_ack(entries),
        order::out_of_order(entries, &context.ordered),
        stored::offsets(entries, model, context.loss_allowed),
        acks::flow(entries, context),
    ];
    let mut some = Vec::new();
    // Only runs with an ordered subscription have a verdict on key order.
    if !context.ordered.is_empty() {
        some.push(order::key_order(entries, &context.ordered));
    }
    // Only runs that publish with idempotency keys have a verdict on them.
    if entries.iter().any(|e| matches!(&e.event, Event::Published { idempotency_key: Some(_), .. })) {
        some.push(stored::duplicated_publish(entries, context.dedupe_window_ms));
    }
    // Only runs that publish through the library have a verdict on its order.
    if entries.iter().any(|e| matches!(&e.event, Event::PublishInvoked { publisher: Some(_), .. })) {
        some.push(order::publish_order(entries, context.loss_allowed));
    }
    // Only runs with publishes refused for good have a verdict on what those stored.
    some.extend(stored::refused_stored(entries));
    // Only runs with exclusive subscriptions (whose members are told assignments) have a
    // verdict on them.
    if entries.iter().any(|e| matches!(&e.event, Event::Assigned { .. })) {
        some.push(exclusive::exclusive(entries));
    }
    // Only a cluster's runs have nodes that report their Raft state and stored messages.
    if cluster::is_cluster(entries) {
        some.extend(cluster::checks(entries, context));
    }
    (always, some)
}

/// Something a check found wrong, and the scenario ids of the messages it is about.
struct Problem {
    text: String,
    ids: Vec<String>,
}

impl Problem {
    fn new(text: String, ids: &[&str]) -> Self {
        Problem { text, ids: ids.iter().map(|id| id.to_string()).collect() }
    }
}

/// A check's result: passed with `ok` when nothing is wrong, failed with the problems.
fn result(name: &'static str, problems: Vec<Problem>, ok: String) -> Check {
    if problems.is_empty() {
        return Check { name, passed: true, detail: ok, ids: Vec::new() };
    }
    let mut ids: Vec<String> = problems.iter().flat_map(|p| p.ids.iter().cloned()).collect();
    ids.sort();
    ids.dedup();
    let texts: Vec<String> = problems.into_iter().map(|p| p.text).collect();
    Check { name, passed: false, detail: summary(&texts), ids }
}

/// A check that had nothing to examine although the history holds what it is about.
fn nothing_examined(name: &'static str, why: String) -> Check {
    Check { name, passed: false, detail: format!("examined nothing: {why}"), ids: Vec::new() }
}

/// The first few problems, and how many more there are.
fn summary(problems: &[String]) -> String {
    const SHOWN: usize = 5;
    let mut detail = problems.iter().take(SHOWN).cloned().collect::<Vec<_>>().join("; ");
    if problems.len() > SHOWN {
        detail.push_str(&format!("; and {} more", problems.len() - SHOWN));
    }
    detail
}

/// `n thing` or `n things` (`-y` makes `-ies`, `-sh` and `-s` take `-es`).
fn count(n: usize, thing: &str) -> String {
    if n == 1 {
        return format!("1 {thing}");
    }
    let plural = if let Some(stem) = thing.strip_suffix('y') {
        format!("{stem}ies")
    } else if thing.ends_with("sh") || thing.ends_with('s') {
        format!("{thing}es")
    } else {
        format!("{thing}s")
    };
    format!("{n} {plural}")
}

/// `n things` and what is said of them, `n thing` for one.
fn count_of(n: usize, thing: &str, of: &str) -> String {
    format!("{}{of}", count(n, thing))
}

/// (subscription, original broker id) of every message a subscription dead-lettered, with
/// when each copy reached a reader of the dead-letter topic and the scenario id it carries.
fn dead_lettered(entries: &[Entry]) -> BTreeMap<(&str, &str), Vec<(u64, &str)>> {
    let mut dead: BTreeMap<(&str, &str), Vec<(u64, &str)>> = BTreeMap::new();
    for e in entries {
        if let Event::Delivered { id, dead_letter: Some(DeadLetter { from, original, .. }), .. } = &e.event {
            dead.entry((from.as_str(), original.as_str())).or_default().push((e.at_ms, id));
        }
    }
    dead
}
