//! Partition-exclusive subscriptions: one member per partition per generation.

use std::collections::{BTreeMap, BTreeSet};

use super::{result, Check, Problem};
use crate::history::{Entry, Event};

/// Partition-exclusive subscriptions held: within one generation, every partition's
/// messages reached one member (a host's stream) only, and a member got messages only from
/// the partitions its assignment for that generation gave it (the assignment comes on the
/// same stream before anything leased under it). A broker crash starts the generations
/// over (members do not survive it), and so does a new leader of a cluster (groups live on
/// the leader): generations are told apart by the broker's life too, a life ending at each
/// crash of the broker (of a cluster's serving leader: a follower's crash leaves the
/// leader's groups as they are) and each time another node, or a new term, starts to serve
/// as the leader. A stream
/// whose opening reaches its client after its broker crashed, before that broker is back or
/// another serves, was opened by the broker that crashed: the answer was on its way. Pulls
/// (stream 0) may only read partitions no member holds: they count as a holder.
pub(super) fn exclusive(entries: &[Entry]) -> Check {
    let subs: BTreeSet<&str> = entries
        .iter()
        .filter_map(|e| match &e.event {
            Event::Assigned { sub, .. } => Some(sub.as_str()),
            _ => None,
        })
        .collect();
    let mut life = 0u32;
    // The node serving as a cluster's leader, and its term.
    let mut serving: Option<(&str, u64)> = None;
    // A stream lives in the broker life it opened in: what it receives after a crash was
    // sent before it, by the broker that crashed.
    let mut opened_in: BTreeMap<(&str, &str, u64), u32> = BTreeMap::new();
    // After a crash of the serving broker (or of the one broker), until it restarts or
    // another serves: the life that ended with the crash, which any stream opened meanwhile
    // belongs to.
    let mut crashed_life: Option<(&str, u32)> = None;
    // (host, subscription, stream, generation) -> the partitions assigned.
    let mut assigned: BTreeMap<(&str, &str, u64, u64), &[u32]> = BTreeMap::new();
    // (broker life, subscription, generation, partition) -> the (host, stream) that got it first.
    let mut holders: BTreeMap<(u32, &str, u64, u32), (&str, u64)> = BTreeMap::new();
    // Each host's latest assignment on each subscription. An ack is answered on the stream
    // it came on, ahead of any later assignment there, so an ack applied for a partition
    // outside the latest assignment means the old owner's lease outlived the move.
    let mut latest: BTreeMap<(&str, &str), &[u32]> = BTreeMap::new();
    let mut problems = Vec::new();
    let mut deliveries = 0;
    for e in entries {
        let host = e.host.as_str();
        match &e.event {
            // The broker, the serving leader, or any node before one serves.
            Event::Crashed { host: crashed } if serving.is_none_or(|(leader, _)| leader == crashed) => {
                crashed_life.get_or_insert((crashed.as_str(), life));
                life += 1;
            }
            Event::Restarted { host: restarted } => {
                crashed_life = crashed_life.filter(|(crashed, _)| crashed != restarted);
            }
            // A new leader (another node, or a new term): a leader whose quorum lapsed and
            // came back within its term keeps its groups, and stays in its life.
            Event::Cluster { serving: true, term, .. } => {
                crashed_life = None;
                let leader = Some((host, *term));
                life += u32::from(std::mem::replace(&mut serving, leader) != leader);
            }
            Event::StreamOpened { sub, stream, .. } => {
                let opened = crashed_life.map_or(life, |(_, before)| before);
                opened_in.insert((host, sub.as_str(), *stream), opened);
            }
            Event::Assigned { sub, stream, generation, partitions } => {
                assigned.insert((host, sub.as_str(), *stream, *generation), partitions.as_slice());
                latest.insert((host, sub.as_str()), partitions.as_slice());
            }
            Event::AckAnswered { id, sub, op, partition, result, .. } if op == "ack" && result == "applied" => {
                if let Some(partitions) = latest.get(&(host, sub.as_str())).filter(|p| !p.contains(partition)) {
                    problems.push(Problem::new(
                        format!(
                        "{sub} p{partition}: {host}'s ack of {id} was applied, but its assignment is {partitions:?}"
                    ),
                        &[id],
                    ));
                }
            }
            Event::Delivered { sub, stream, partition, generation, id, .. } if subs.contains(sub.as_str()) => {
                deliveries += 1;
                let member = (host, *stream);
                if *stream != 0 {
                    let given = assigned.get(&(host, sub.as_str(), *stream, *generation));
                    if !given.is_some_and(|p| p.contains(partition)) {
                        problems.push(Problem::new(format!(
                            "{sub} p{partition} gen={generation}: {id} reached {host}#{stream}, whose assignment is {given:?}"
                        ), &[id]));
                    }
                }
                let life = opened_in.get(&(host, sub.as_str(), *stream)).copied().unwrap_or(life);
                let holder = *holders.entry((life, sub.as_str(), *generation, *partition)).or_insert(member);
                if holder != member {
                    let (holder_host, holder_stream) = holder;
                    problems.push(Problem::new(format!(
                        "{sub} p{partition} gen={generation}: {id} reached {host}#{stream}, but {holder_host}#{holder_stream} holds the partition"
                    ), &[id]));
                }
            }
            _ => {}
        }
    }
    let generations: BTreeSet<(u32, &str, u64)> = holders.keys().map(|(l, s, g, _)| (*l, *s, *g)).collect();
    let ok = format!(
        "{deliveries} deliveries on exclusive subscriptions in {} generations; each from the member's own partitions, none reached two members within one",
        generations.len()
    );
    result("exclusive", problems, ok)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(at_ms: u64, host: &str, event: Event) -> Entry {
        Entry { at_ms, host: host.into(), event }
    }

    fn opened(at_ms: u64, stream: u64) -> Entry {
        at(at_ms, "w1", Event::StreamOpened { sub: "s".into(), stream, max: 10 })
    }

    fn assigned(at_ms: u64, stream: u64) -> Entry {
        at(at_ms, "w1", Event::Assigned { sub: "s".into(), stream, generation: 1, partitions: vec![0, 1] })
    }

    fn delivered(at_ms: u64, stream: u64, id: &str) -> Entry {
        at(
            at_ms,
            "w1",
            Event::Delivered {
                id: id.into(),
                message_id: id.into(),
                sub: "s".into(),
                stream,
                partition: 1,
                offset: 0,
                attempt: 1,
                value: String::new(),
                dead_letter: None,
                key: None,
                idempotency_key: None,
                publish_ms: 0,
                generation: 1,
                lease: 1,
            },
        )
    }

    fn driver(at_ms: u64, event: Event) -> Entry {
        at(at_ms, "driver", event)
    }

    fn serving(at_ms: u64, host: &str, term: u64) -> Entry {
        at(at_ms, host, Event::Cluster { role: "leader".into(), term, leader: Some(host.into()), serving: true })
    }

    /// Every broker crashes (the leader, broker2, not first) while the answer that opens
    /// stream 2 (generation 1) is on its way; the leader restarts, starts the generations
    /// over, and gives stream 4 generation 1.
    fn power_failure(opened_after_crash: bool) -> Vec<Entry> {
        let crash = |at_ms, host: &str| driver(at_ms, Event::Crashed { host: host.into() });
        let restart = |at_ms, host: &str| driver(at_ms, Event::Restarted { host: host.into() });
        let stream_2_at = if opened_after_crash { 2270 } else { 2260 };
        let mut entries = vec![serving(817, "broker2", 2)];
        entries.extend(["broker1", "broker2", "broker3"].map(|b| crash(2265, b)));
        entries.extend([opened(stream_2_at, 2), assigned(stream_2_at, 2), delivered(stream_2_at, 2, "p1-1")]);
        entries.extend(["broker1", "broker2", "broker3"].map(|b| restart(3973, b)));
        entries.extend([serving(4114, "broker2", 2), opened(6456, 4), assigned(6463, 4), delivered(6463, 4, "p1-1")]);
        entries.sort_by_key(|e| e.at_ms);
        entries
    }

    #[test]
    fn a_stream_whose_opening_arrives_after_the_crash_belongs_to_the_crashed_broker() {
        let check = exclusive(&power_failure(true));
        assert!(check.passed, "{}", check.detail);
        assert!(check.detail.contains("in 2 generations"), "{}", check.detail);
        // Opened before the crash: the same two lives.
        assert!(exclusive(&power_failure(false)).passed);
    }

    #[test]
    fn a_stream_whose_opening_arrives_after_the_crash_holds_with_the_streams_before_it() {
        // Before the crash, stream 1 held p1 in generation 1; the in-flight opening of
        // stream 2 gave it p1 in that same generation of the same broker life.
        let mut entries = power_failure(true);
        entries.extend([opened(1000, 1), assigned(1000, 1), delivered(1000, 1, "p1-0")]);
        entries.sort_by_key(|e| e.at_ms);
        let check = exclusive(&entries);
        assert!(!check.passed, "{}", check.detail);
        assert!(check.detail.contains("p1-1 reached w1#2, but w1#1 holds the partition"), "{}", check.detail);
    }

    #[test]
    fn two_streams_holding_one_partition_in_one_life_fail() {
        // No crash between them: one broker gave generation 1's partition to two streams.
        let mut entries = power_failure(true);
        entries.retain(|e| !matches!(e.event, Event::Crashed { .. } | Event::Restarted { .. }));
        let check = exclusive(&entries);
        assert!(!check.passed);
        assert!(check.detail.contains("w1#2 holds the partition"), "{}", check.detail);
        // A follower's crash between them changes nothing: the leader kept its groups.
        let entries = vec![
            serving(817, "broker2", 2),
            opened(1000, 1),
            assigned(1000, 1),
            delivered(1000, 1, "p1-0"),
            driver(2265, Event::Crashed { host: "broker1".into() }),
            driver(3973, Event::Restarted { host: "broker1".into() }),
            opened(6456, 4),
            assigned(6463, 4),
            delivered(6463, 4, "p1-1"),
        ];
        let check = exclusive(&entries);
        assert!(!check.passed, "{}", check.detail);
        assert!(check.detail.contains("p1-1 reached w1#4, but w1#1 holds the partition"), "{}", check.detail);
    }
}
