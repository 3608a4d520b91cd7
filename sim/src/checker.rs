//! The queue checker: reads a run's history in Jepsen's total-queue terms.

use std::collections::{BTreeMap, BTreeSet};

use crate::history::{Entry, Event};

/// One checker result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    pub name: &'static str,
    pub passed: bool,
    pub detail: String,
}

/// Runs every check. `audited` maps each subscription that must see every acknowledged
/// publish of its topic (created at the earliest position, never seeked or deleted) to
/// that topic. With `loss_allowed` (a scenario that declares it, such as a crash of a
/// broker on the memory log, or under `fsync=never`) lost messages are reported but do not
/// fail the run, and neither do offsets that held a lost message and then a new one.
pub fn check(
    entries: &[Entry],
    audited: &BTreeMap<String, String>,
    loss_allowed: bool,
    healed_at_ms: u64,
    bound_ms: u64,
    dedupe_window_ms: u64,
) -> Vec<Check> {
    let liveness = liveness(entries, audited, healed_at_ms, bound_ms);
    let mut lost = lost(entries, audited);
    if loss_allowed && !lost.passed {
        lost = Check { name: "lost (allowed)", passed: true, detail: lost.detail };
    }
    let offsets = inconsistent_offsets(entries, audited, loss_allowed);
    let mut checks = vec![
        lost,
        unexpected(entries),
        duplicated(entries),
        redelivered_after_ack(entries),
        out_of_order(entries),
        offsets,
        liveness,
    ];
    // Only runs that publish with idempotency keys have a verdict on them.
    if entries.iter().any(|e| matches!(&e.event, Event::Published { idempotency_key: Some(_), .. })) {
        checks.push(duplicated_publish(entries, audited, dedupe_window_ms));
    }
    checks
}

/// A stored message: publish time (wall ms), partition, offset.
type Place = (u64, u32, u64);

/// Idempotent publishing held: no two stored messages of a topic carry one idempotency
/// key within the dedupe window, and every publish answered `duplicate` names the place
/// of a message stored with its key.
fn duplicated_publish(entries: &[Entry], audited: &BTreeMap<String, String>, window_ms: u64) -> Check {
    // (topic, partition, offset) -> (idempotency key, publish time) of what is stored there.
    let mut stored: BTreeMap<(&str, u32, u64), (Option<&str>, u64)> = BTreeMap::new();
    for e in entries {
        if let Event::Delivered { sub, partition, offset, idempotency_key, publish_ms, .. } = &e.event {
            if let Some(topic) = audited.get(sub) {
                stored.insert((topic.as_str(), *partition, *offset), (idempotency_key.as_deref(), *publish_ms));
            }
        }
    }
    let mut problems = Vec::new();
    // (topic, key) -> (publish time, partition, offset) of each stored message with it.
    let mut by_key: BTreeMap<(&str, &str), Vec<Place>> = BTreeMap::new();
    for (&(topic, partition, offset), &(key, publish_ms)) in &stored {
        if let Some(key) = key {
            by_key.entry((topic, key)).or_default().push((publish_ms, partition, offset));
        }
    }
    for ((topic, key), mut places) in by_key {
        places.sort_unstable();
        for pair in places.windows(2) {
            let ((t0, p0, o0), (t1, p1, o1)) = (pair[0], pair[1]);
            if t1 - t0 < window_ms {
                problems.push(format!(
                    "{topic} stores idempotency key {key} at p{p0}@{o0} and p{p1}@{o1}, {} ms apart",
                    t1 - t0
                ));
            }
        }
    }
    let mut answered = 0;
    for e in entries {
        let Event::Published { id, topic, partition, offset, idempotency_key: Some(key), duplicate: true } = &e.event
        else {
            continue;
        };
        answered += 1;
        if let Some((held, _)) = stored.get(&(topic.as_str(), *partition, *offset)) {
            if *held != Some(key.as_str()) {
                problems.push(format!("{id} was answered as a duplicate at {topic} p{partition}@{offset}, which holds key {held:?}, not {key}"));
            }
        }
    }
    let ok = format!("each idempotency key stored once; duplicate answers naming the original: {answered}");
    result("duplicated-publish", problems, ok)
}

/// After the last heal (`healed_at_ms`), every acknowledged publish not yet delivered to an
/// audited subscription of its topic must be delivered within `bound_ms`. Reports how long
/// the slowest took. Messages that are never delivered are the `lost` check's to report.
fn liveness(entries: &[Entry], audited: &BTreeMap<String, String>, healed_at_ms: u64, bound_ms: u64) -> Check {
    let mut first: BTreeMap<(&str, &str), u64> = BTreeMap::new();
    for e in entries {
        if let Event::Delivered { id, sub, .. } = &e.event {
            first.entry((sub.as_str(), id.as_str())).or_insert(e.at_ms);
        }
    }
    let (mut slowest, mut pending) = (0, 0);
    let mut problems = Vec::new();
    for e in entries {
        let Event::Published { id, topic, .. } = &e.event else { continue };
        for (sub, _) in audited.iter().filter(|(_, t)| *t == topic) {
            let Some(&at) = first.get(&(sub.as_str(), id.as_str())) else { continue };
            let after_heal = at.saturating_sub(healed_at_ms.max(e.at_ms));
            if at >= healed_at_ms {
                pending += 1;
                slowest = slowest.max(after_heal);
                if after_heal > bound_ms {
                    problems.push(format!("{id} reached {sub} {after_heal} ms after the last heal"));
                }
            }
        }
    }
    let ok = if pending == 0 {
        format!("nothing was waiting at the last heal (bound {bound_ms} ms)")
    } else {
        format!("{pending} deliveries waiting at the last heal arrived within {slowest} ms (bound {bound_ms} ms)")
    };
    result("liveness", problems, ok)
}

fn result(name: &'static str, problems: Vec<String>, ok: String) -> Check {
    if problems.is_empty() {
        return Check { name, passed: true, detail: ok };
    }
    Check { name, passed: false, detail: summary(&problems) }
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

/// Acknowledged publishes never delivered to an audited subscription of their topic.
fn lost(entries: &[Entry], audited: &BTreeMap<String, String>) -> Check {
    let delivered: BTreeSet<(&str, &str)> = entries
        .iter()
        .filter_map(|e| match &e.event {
            Event::Delivered { id, sub, .. } => Some((sub.as_str(), id.as_str())),
            _ => None,
        })
        .collect();
    // A duplicate answer stored nothing of its own: what must arrive is the original,
    // which may carry another id (a publisher that sent the same key twice on purpose).
    let delivered_at: BTreeSet<(&str, u32, u64)> = entries
        .iter()
        .filter_map(|e| match &e.event {
            Event::Delivered { sub, partition, offset, .. } => Some((sub.as_str(), *partition, *offset)),
            _ => None,
        })
        .collect();
    let mut acknowledged = 0;
    let mut problems = Vec::new();
    for entry in entries {
        let Event::Published { id, topic, partition, offset, duplicate, .. } = &entry.event else { continue };
        acknowledged += 1;
        for (sub, _) in audited.iter().filter(|(_, t)| *t == topic) {
            let arrived = match duplicate {
                true => delivered_at.contains(&(sub.as_str(), *partition, *offset)),
                false => delivered.contains(&(sub.as_str(), id.as_str())),
            };
            if !arrived {
                problems.push(format!("{id} never reached {sub}"));
            }
        }
    }
    let subs = audited.keys().cloned().collect::<Vec<_>>().join(", ");
    result("lost", problems, format!("{acknowledged} acknowledged publishes, all delivered to [{subs}]"))
}

/// Deliveries of messages nobody published.
fn unexpected(entries: &[Entry]) -> Check {
    let invoked: BTreeSet<&str> = entries
        .iter()
        .filter_map(|e| match &e.event {
            Event::PublishInvoked { id, .. } => Some(id.as_str()),
            _ => None,
        })
        .collect();
    let problems = entries
        .iter()
        .filter_map(|e| match &e.event {
            Event::Delivered { id, sub, .. } if !invoked.contains(id.as_str()) => {
                Some(format!("{sub} received `{id}`, never published"))
            }
            _ => None,
        })
        .collect();
    result("unexpected", problems, "none".to_string())
}

/// Duplicates, allowed under at-least-once and counted: a stored message delivered again
/// to one subscription, and a publish stored more than once (a retry after a lost answer,
/// when it carries no idempotency key).
fn duplicated(entries: &[Entry]) -> Check {
    let mut deliveries: BTreeMap<(&str, u32, u64), u32> = BTreeMap::new();
    let mut stored: BTreeMap<&str, BTreeSet<(u32, u64)>> = BTreeMap::new();
    for e in entries {
        match &e.event {
            Event::Delivered { id, sub, partition, offset, .. } => {
                *deliveries.entry((sub.as_str(), *partition, *offset)).or_default() += 1;
                stored.entry(id.as_str()).or_default().insert((*partition, *offset));
            }
            Event::Published { id, partition, offset, .. } => {
                stored.entry(id.as_str()).or_default().insert((*partition, *offset));
            }
            _ => {}
        }
    }
    let redelivered: u32 = deliveries.values().map(|n| n - 1).sum();
    let twice: usize = stored.values().map(|places| places.len() - 1).sum();
    let detail = format!("{redelivered} redeliveries, {twice} publishes stored more than once");
    Check { name: "duplicated (allowed)", passed: true, detail }
}

/// A new delivery of a stored message to a subscription after an ack of it there was
/// applied: an attempt higher than the acked one. A lower or equal attempt was leased
/// before the ack and only arrived late (it was held in the network), which is allowed.
///
/// A broker crash forgets the acks applied since its last checkpoint: their messages come
/// again (at least once), which is allowed. An ack the client saw answered before the
/// checkpoint was applied before it, so it survives the crash and still binds; since the
/// restarted broker counts attempts from 1 again, any delivery of it on a stream opened
/// after the restart is a redelivery. An answer that reaches the client while the broker
/// is down was given after the last checkpoint, so it is forgotten too.
fn redelivered_after_ack(entries: &[Entry]) -> Check {
    struct Acked<'e> {
        id: &'e str,
        at_ms: u64,
        attempt: u32,
        /// Set for an ack that survived a crash: the restart it survived.
        survived_restart_ms: Option<u64>,
    }
    let mut acked: BTreeMap<(&str, u32, u64), Acked> = BTreeMap::new();
    let mut opened: BTreeMap<(&str, &str, u64), u64> = BTreeMap::new();
    let mut last_checkpoint_ms: Option<u64> = None;
    let mut crashed = false;
    let mut problems = Vec::new();
    for e in entries {
        match &e.event {
            // An answer that arrives while the broker is down was given by the crashed
            // incarnation after its last checkpoint: forgotten like the acks above.
            Event::AckAnswered { id, sub, op, partition, offset, attempt, result }
                if result == "applied" && op == "ack" && !crashed =>
            {
                let key = (sub.as_str(), *partition, *offset);
                let ack = Acked { id: id.as_str(), at_ms: e.at_ms, attempt: *attempt, survived_restart_ms: None };
                // An offset a crash lost and a new message took is a different message.
                if acked.get(&key).is_none_or(|a| a.id != id.as_str()) {
                    acked.insert(key, ack);
                }
            }
            Event::Seeked { sub } => acked.retain(|(s, ..), _| s != sub),
            Event::Checkpoint => last_checkpoint_ms = Some(e.at_ms),
            Event::Crashed { .. } => {
                acked.retain(|_, a| last_checkpoint_ms.is_some_and(|k| a.at_ms < k));
                crashed = true;
            }
            Event::Restarted { .. } if crashed => {
                for a in acked.values_mut() {
                    a.survived_restart_ms.get_or_insert(e.at_ms);
                }
                crashed = false;
            }
            Event::StreamOpened { sub, stream } => {
                opened.insert((e.host.as_str(), sub.as_str(), *stream), e.at_ms);
            }
            Event::Delivered { id, sub, stream, partition, offset, attempt, .. } => {
                let Some(a) = acked.get(&(sub.as_str(), *partition, *offset)).filter(|a| a.id == id.as_str()) else {
                    continue;
                };
                let stream_opened = opened.get(&(e.host.as_str(), sub.as_str(), *stream)).copied();
                let after_restart = a.survived_restart_ms.is_some_and(|r| stream_opened.is_some_and(|o| o >= r));
                if *attempt > a.attempt || after_restart {
                    let (when, at, acked_attempt) = (e.at_ms, a.at_ms, a.attempt);
                    problems.push(format!(
                        "{id} (p{partition}@{offset}) delivered to {sub} as attempt {attempt} at {when} ms, after attempt {acked_attempt} was acked at {at} ms"
                    ));
                }
            }
            _ => {}
        }
    }
    result("redelivered-after-ack", problems, "none".to_string())
}

/// First deliveries going backwards within a partition on one stream (streams are
/// numbered per host). A seek starts the count again.
fn out_of_order(entries: &[Entry]) -> Check {
    let mut last: BTreeMap<(&str, &str, u64, u32), u64> = BTreeMap::new();
    let mut problems = Vec::new();
    for e in entries {
        if let Event::Seeked { sub: seeked } = &e.event {
            last.retain(|(_, s, ..), _| s != seeked);
        }
        if let Event::Delivered { sub, stream, partition, offset, attempt: 1, .. } = &e.event {
            let key = (e.host.as_str(), sub.as_str(), *stream, *partition);
            if let Some(previous) = last.insert(key, *offset) {
                if *offset < previous {
                    let host = &e.host;
                    problems.push(format!("{host} {sub}#{stream} p{partition}: offset {offset} after {previous}"));
                }
            }
        }
    }
    result("order", problems, "offsets rise per partition and stream".to_string())
}

/// Two messages at one offset. Where loss is declared, an offset whose message a broker
/// crash lost may be taken by another once the broker has crashed: reported, not failed.
fn inconsistent_offsets(entries: &[Entry], audited: &BTreeMap<String, String>, loss_allowed: bool) -> Check {
    let mut at: BTreeMap<(String, u32, u64), String> = BTreeMap::new();
    let mut crashes: Vec<u64> = Vec::new();
    let (mut problems, mut reused) = (Vec::new(), Vec::new());
    for e in entries {
        let (topic, partition, offset, id) = match &e.event {
            Event::Crashed { .. } => {
                crashes.push(e.at_ms);
                continue;
            }
            // A duplicate answer names another publish's place; duplicated-publish checks it.
            Event::Published { duplicate: true, .. } => continue,
            Event::Published { id, topic, partition, offset, .. } => (topic.as_str(), *partition, *offset, id),
            Event::Delivered { id, sub, partition, offset, .. } => match audited.get(sub) {
                Some(topic) => (topic.as_str(), *partition, *offset, id),
                None => continue,
            },
            _ => continue,
        };
        let key = (topic.to_string(), partition, offset);
        let first = at.entry(key).or_insert_with(|| id.clone()).clone();
        if first == *id {
            continue;
        }
        let problem = format!("{topic} p{partition}@{offset} holds both {first} and {id}");
        // The first holder's answer may reach its publisher after the crash that lost it.
        let after_crash = crashes.iter().any(|c| *c <= e.at_ms);
        let list = if loss_allowed && after_crash { &mut reused } else { &mut problems };
        if !list.contains(&problem) {
            list.push(problem);
        }
    }
    if problems.is_empty() && !reused.is_empty() {
        return Check { name: "offsets (allowed)", passed: true, detail: summary(&reused) };
    }
    result("offsets", problems, "one message per offset".to_string())
}
