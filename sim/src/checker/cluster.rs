//! Checks of a replicated cluster (`config brokers=3`), from what each node reported:
//! its Raft role and term, every message it stored, and every replicated ack floor it
//! applied.
//!
//! - `replicas-agree`: a message id names the same message (key and value) on every node;
//! - `leader-per-term`: at most one node leads in a term;
//! - `floors`: a node's replicated committed offsets never move back, except by a seek;
//! - `real-time-order`: a publish answered before another began has the lower offset in
//!   its partition;
//! - `delivered-committed`: each delivered message is in every node's final log, as
//!   delivered;
//! - `leader-after-heal`: once every fault is healed, a node serves as the leader within
//!   the bound.

use std::collections::{BTreeMap, BTreeSet};

use mini_pubsub::core::Notice;

use super::{count, result, Check, Context, Problem};
use crate::history::{Entry, Event};

/// Whether the history is a cluster's (its nodes report their Raft state).
pub fn is_cluster(entries: &[Entry]) -> bool {
    entries.iter().any(|e| matches!(e.event, Event::Cluster { .. }))
}

/// The cluster checks, in the order the verdict lists them.
pub fn checks(entries: &[Entry], context: &Context) -> Vec<Check> {
    vec![
        replicas_agree(entries),
        leader_per_term(entries),
        floors(entries),
        real_time_order(entries),
        delivered_committed(entries),
        leader_after_heal(entries, context),
    ]
}

/// CRC32C of a key's bytes followed by a value's, as the broker's `Appended` notice has it.
fn digest(key: Option<&str>, value: &[u8]) -> u32 {
    crc32c::crc32c_append(crc32c::crc32c(key.unwrap_or_default().as_bytes()), value)
}

/// Every message id each node stored, with its digest, over all its lives.
fn stored(entries: &[Entry]) -> Vec<(&str, &str, u32, u64)> {
    let mut out = Vec::new();
    for e in entries {
        if let Event::Broker(Notice::Appended { message_id, digest, .. }) = &e.event {
            out.push((e.host.as_str(), message_id.as_str(), *digest, e.at_ms));
        }
    }
    out
}

pub fn replicas_agree(entries: &[Entry]) -> Check {
    let mut first: BTreeMap<&str, (&str, u32)> = BTreeMap::new();
    let mut problems = Vec::new();
    let mut copies = 0;
    for (host, id, digest, at_ms) in stored(entries) {
        copies += 1;
        match first.get(id) {
            None => {
                first.insert(id, (host, digest));
            }
            Some((other, d)) if *d != digest => problems.push(Problem::new(
                format!("{id}: {host} stored crc {digest:08x} at {at_ms} ms, {other} crc {d:08x}"),
                &[],
            )),
            Some(_) => {}
        }
    }
    let ok = format!(
        "{} stored, {}: each id names one message everywhere",
        count(first.len(), "message"),
        count(copies, "copy")
    );
    if copies == 0 {
        return super::nothing_examined("replicas-agree", "no node reported a stored message".into());
    }
    result("replicas-agree", problems, ok)
}

pub fn leader_per_term(entries: &[Entry]) -> Check {
    let mut leaders: BTreeMap<u64, BTreeSet<&str>> = BTreeMap::new();
    for e in entries {
        if let Event::Cluster { role, term, .. } = &e.event {
            if role == "leader" {
                leaders.entry(*term).or_default().insert(e.host.as_str());
            }
        }
    }
    let problems = leaders
        .iter()
        .filter(|(_, hosts)| hosts.len() > 1)
        .map(|(term, hosts)| {
            Problem::new(
                format!("term {term} had leaders {}", hosts.iter().copied().collect::<Vec<_>>().join(", ")),
                &[],
            )
        })
        .collect();
    if leaders.is_empty() {
        return super::nothing_examined("leader-per-term", "no node ever led".into());
    }
    result("leader-per-term", problems, format!("{}, one leader each", count(leaders.len(), "term")))
}

/// Per node life: a replicated floor below the one before it, for the same subscription
/// and partition, with no seek of that subscription applied on the node in between.
pub fn floors(entries: &[Entry]) -> Check {
    let mut last: BTreeMap<(&str, &str, u32), u64> = BTreeMap::new();
    let (mut problems, mut raised) = (Vec::new(), 0);
    for e in entries {
        match &e.event {
            Event::Broker(Notice::FloorRaised { subscription, partition, offset }) => {
                raised += 1;
                let key = (e.host.as_str(), subscription.as_str(), *partition);
                if let Some(before) = last.insert(key, *offset).filter(|before| before > offset) {
                    let text = format!(
                        "{}: {subscription} p{partition} went back from {before} to {offset} at {} ms",
                        e.host, e.at_ms
                    );
                    problems.push(Problem::new(text, &[]));
                }
            }
            // A seek may move a subscription anywhere, on the node that applied it; a
            // redrive may move it back to the message it puts back.
            event if event.moves_floors_back().is_some() => {
                let subscription = event.moves_floors_back().unwrap_or_default();
                last.retain(|(h, s, _), _| *h != e.host.as_str() || *s != subscription);
            }
            // A deleted subscription's floors are gone.
            Event::Broker(Notice::SubscriptionDeleted { subscription }) => {
                last.retain(|(_, s, _), _| *s != subscription.as_str());
            }
            // A node restarts from its checkpoint, told next, and applies its log on.
            Event::Crashed { host } => last.retain(|(h, _, _), _| *h != host.as_str()),
            // The node's floors are the snapshot's, told next: a snapshot taken after a seek
            // it did not apply may hold lower ones.
            Event::SnapshotInstalled { .. } => last.retain(|(h, _, _), _| *h != e.host.as_str()),
            _ => {}
        }
    }
    let ok = format!("{} applied, none below the one before", count(raised, "replicated floor"));
    result("floors", problems, ok)
}

/// The highest offset answered so far per (topic uid, partition), with its publish's id.
type Highest<'e> = BTreeMap<(String, u32), (u64, &'e str)>;

/// A publish answered before another began (its first attempt) has the lower offset when
/// both went to one partition of one topic: offsets follow real time, as a linearizable
/// log's must. Duplicates (answered with an earlier message's place) are left out.
pub fn real_time_order(entries: &[Entry]) -> Check {
    // The highest answered offset per (topic uid, partition) so far, and for each publish
    // what it was when the publish began.
    let mut answered: Highest = BTreeMap::new();
    let mut at_start: BTreeMap<&str, Highest> = BTreeMap::new();
    let (mut problems, mut pairs) = (Vec::new(), 0);
    for e in entries {
        match &e.event {
            Event::PublishInvoked { id, attempt: 1, .. } => {
                at_start.insert(id.as_str(), answered.clone());
            }
            Event::Published { id, message_id, partition, offset, duplicate: false, .. } => {
                let uid = message_id.split('-').next().unwrap_or_default().to_string();
                let key = (uid, *partition);
                if let Some((before, earlier)) = at_start.get(id.as_str()).and_then(|m| m.get(&key)) {
                    pairs += 1;
                    if before >= offset {
                        let text = format!(
                            "{id} began after {earlier} was answered p{partition}@{before}, yet was answered p{partition}@{offset}"
                        );
                        problems.push(Problem::new(text, &[id.as_str(), earlier]));
                    }
                }
                let slot = answered.entry(key).or_insert((*offset, id.as_str()));
                if *offset >= slot.0 {
                    *slot = (*offset, id.as_str());
                }
            }
            _ => {}
        }
    }
    let ok = format!("{} answered before the other began: offsets rise with real time", count(pairs, "pair"));
    result("real-time-order", problems, ok)
}

/// Every delivered message (its id and digest) is in the last life of every node's log,
/// as delivered.
pub fn delivered_committed(entries: &[Entry]) -> Check {
    // Each node's stored ids, from its last start on; a node that never stored one counts.
    let mut lives: BTreeMap<&str, BTreeMap<&str, u32>> = BTreeMap::new();
    for e in entries {
        match &e.event {
            Event::Cluster { .. } => {
                lives.entry(e.host.as_str()).or_default();
            }
            Event::Broker(Notice::Appended { message_id, digest, .. }) => {
                lives.entry(e.host.as_str()).or_default().insert(message_id.as_str(), *digest);
            }
            Event::Crashed { host } => {
                lives.insert(host.as_str(), BTreeMap::new());
            }
            // What the node stores now is the snapshot's, told next.
            Event::SnapshotInstalled { .. } => {
                lives.insert(e.host.as_str(), BTreeMap::new());
            }
            _ => {}
        }
    }
    let (mut problems, mut delivered) = (Vec::new(), BTreeSet::new());
    for e in entries {
        let Event::Delivered { id, message_id, key, value, .. } = &e.event else { continue };
        if !delivered.insert(message_id.as_str()) {
            continue;
        }
        let seen = digest(key.as_deref(), value.as_bytes());
        for (node, log) in &lives {
            match log.get(message_id.as_str()) {
                Some(d) if *d == seen => {}
                Some(d) => problems.push(Problem::new(
                    format!("{id} ({message_id}) was delivered as crc {seen:08x}; {node} holds crc {d:08x}"),
                    &[id.as_str()],
                )),
                None => problems.push(Problem::new(
                    format!("{id} ({message_id}) was delivered but is not in {node}'s final log"),
                    &[id.as_str()],
                )),
            }
        }
    }
    let ok = format!("{} delivered, each in all {} nodes' final logs", count(delivered.len(), "message"), lives.len());
    result("delivered-committed", problems, ok)
}

/// After the last heal, some node serves as the leader within the bound (one that served
/// through the heal counts from the heal).
pub fn leader_after_heal(entries: &[Entry], context: &Context) -> Check {
    let mut serving: BTreeMap<&str, bool> = BTreeMap::new();
    let mut served_at = None;
    for e in entries {
        match &e.event {
            Event::Cluster { serving: s, .. } => {
                serving.insert(e.host.as_str(), *s);
            }
            Event::Crashed { host } => {
                serving.insert(host.as_str(), false);
            }
            _ => {}
        }
        if e.at_ms >= context.healed_at_ms && served_at.is_none() && serving.values().any(|s| *s) {
            served_at = Some(e.at_ms);
        }
    }
    let bound = context.bound_ms;
    match served_at {
        Some(at) if at - context.healed_at_ms <= bound => Check {
            name: "leader-after-heal",
            passed: true,
            detail: format!("a leader served {} ms after the last heal (bound {bound} ms)", at - context.healed_at_ms),
            ids: Vec::new(),
        },
        Some(at) => result(
            "leader-after-heal",
            vec![Problem::new(
                format!("no leader served until {} ms after the last heal", at - context.healed_at_ms),
                &[],
            )],
            String::new(),
        ),
        None => result(
            "leader-after-heal",
            vec![Problem::new("no leader served after the last heal".into(), &[])],
            String::new(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cluster(at_ms: u64, host: &str, role: &str, term: u64, serving: bool) -> Entry {
        let event = Event::Cluster { role: role.into(), term, leader: None, serving };
        Entry { at_ms, host: host.into(), event }
    }

    /// openraft cannot be made to elect two leaders in a term, so the check is proven on a
    /// history that has them.
    #[test]
    fn two_leaders_in_one_term_fail_and_one_per_term_passes() {
        let one = [cluster(1, "broker1", "leader", 2, true), cluster(9, "broker2", "leader", 3, true)];
        assert!(leader_per_term(&one).passed, "{:?}", leader_per_term(&one));
        let two = [cluster(1, "broker1", "leader", 2, true), cluster(9, "broker2", "leader", 2, false)];
        let check = leader_per_term(&two);
        assert!(!check.passed && check.detail.contains("term 2 had leaders broker1, broker2"), "{check:?}");
        assert!(!leader_per_term(&[cluster(1, "broker1", "candidate", 1, false)]).passed, "nothing to examine");
    }

    #[test]
    fn no_leader_within_the_bound_after_the_heal_fails() {
        let context = Context { healed_at_ms: 100, bound_ms: 50, ..Context::default() };
        let late = [cluster(1, "broker1", "leader", 2, true), cluster(90, "broker1", "leader", 2, false)];
        let mut entries = late.to_vec();
        entries.push(cluster(200, "broker2", "leader", 3, true));
        assert!(!leader_after_heal(&entries, &context).passed);
        entries[2].at_ms = 140;
        assert!(leader_after_heal(&entries, &context).passed, "{:?}", leader_after_heal(&entries, &context));
        assert!(!leader_after_heal(&late, &context).passed);
    }

    #[test]
    fn a_floor_below_the_one_before_fails_unless_a_seek_came_between() {
        let floor = |at_ms, offset| Entry {
            at_ms,
            host: "broker1".into(),
            event: Event::Broker(Notice::FloorRaised { subscription: "s".into(), partition: 0, offset }),
        };
        assert!(!floors(&[floor(1, 5), floor(2, 3)]).passed);
        let seek = Entry {
            at_ms: 2,
            host: "broker1".into(),
            event: Event::Broker(Notice::Seeked { subscription: "s".into(), to: vec![(0, 0)], lease_seq: 1 }),
        };
        assert!(floors(&[floor(1, 5), seek, floor(3, 3)]).passed);
    }
}
