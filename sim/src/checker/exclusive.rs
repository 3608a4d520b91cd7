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
/// crash and each time another node, or a new term, starts to serve as the leader. Pulls
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
            Event::Crashed { .. } => life += 1,
            // A new leader (another node, or a new term): a leader whose quorum lapsed and
            // came back within its term keeps its groups, and stays in its life.
            Event::Cluster { serving: true, term, .. } => {
                let leader = Some((host, *term));
                life += u32::from(std::mem::replace(&mut serving, leader) != leader);
            }
            Event::StreamOpened { sub, stream, .. } => {
                opened_in.insert((host, sub.as_str(), *stream), life);
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
