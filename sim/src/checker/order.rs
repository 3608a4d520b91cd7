//! Order: first deliveries rise per partition and stream, and on ordered subscriptions a
//! key's messages go out one at a time. Seeks and redrives restart the reckoning where the
//! broker applied them (its notices), not where a client heard of it.

use std::collections::{BTreeMap, BTreeSet};

use mini_pubsub::core::Notice;

use super::{count, dead_lettered, result, Check, Problem};
use crate::history::{Entry, Event};

/// First deliveries going backwards within a partition on one stream (streams are
/// numbered per host). A stream may go back once for every seek the broker applied to
/// its subscription since the stream's previous delivery there: messages leased before
/// the seek arrive before those leased after it, so the replay is one step back. A
/// message a redrive put back comes with attempt 1 at its old offset: it is exempt.
/// Ordered subscriptions are the key-order check's.
pub(super) fn out_of_order(entries: &[Entry], ordered: &BTreeSet<String>) -> Check {
    let mut seeks: BTreeMap<&str, u32> = BTreeMap::new();
    let mut redriven: BTreeSet<(&str, u32, u64)> = BTreeSet::new();
    // (host, subscription, stream, partition) -> (offset, seeks applied when it came).
    let mut last: BTreeMap<(&str, &str, u64, u32), (u64, u32)> = BTreeMap::new();
    let (mut examined, mut compared, mut restarts, mut exempt) = (0, 0, 0, 0);
    let mut problems = Vec::new();
    for e in entries {
        match &e.event {
            Event::Broker(Notice::Seeked { subscription, .. }) => *seeks.entry(subscription).or_default() += 1,
            Event::Broker(Notice::Redriven { subscription, partition, offset }) => {
                redriven.insert((subscription, *partition, *offset));
            }
            Event::Delivered { id, sub, stream, partition, offset, attempt: 1, .. } if !ordered.contains(sub) => {
                examined += 1;
                if redriven.remove(&(sub.as_str(), *partition, *offset)) {
                    exempt += 1;
                    continue;
                }
                let seen = seeks.get(sub.as_str()).copied().unwrap_or(0);
                let key = (e.host.as_str(), sub.as_str(), *stream, *partition);
                if let Some((previous, seen_then)) = last.insert(key, (*offset, seen)) {
                    compared += 1;
                    if *offset < previous {
                        if seen > seen_then {
                            restarts += 1;
                        } else {
                            let host = &e.host;
                            let text =
                                format!("{host} {sub}#{stream} p{partition}: {id} at offset {offset} after {previous}");
                            problems.push(Problem::new(text, &[id]));
                        }
                    }
                }
            }
            _ => {}
        }
    }
    if examined == 0 {
        let ok = "examined nothing: no first delivery reached a client on an unordered subscription";
        return result("order", Vec::new(), ok.to_string());
    }
    let mut ok = format!(
        "{}, {compared} after another on their stream: offsets rise per partition and stream",
        count(examined, "first delivery")
    );
    if restarts > 0 || exempt > 0 {
        ok.push_str(&format!(" ({restarts} restarts at a seek, {exempt} redriven messages at their old offsets)"));
    }
    result("order", problems, ok)
}

/// On an ordered subscription, the messages of one key (per partition) go out one at a
/// time and in order: a message reaches a client only once every earlier message of its
/// key that a client received is finished, that is acked (the ack was sent after its
/// latest delivery: the broker applies an ack only after it is sent, and leases the next
/// message only after that) or dead-lettered (its copy reached the dead-letter topic's
/// reader). A crash, a seek or a redrive (as the broker applied them) starts over.
pub(super) fn key_order(entries: &[Entry], ordered: &BTreeSet<String>) -> Check {
    /// An offset of a key as the clients saw it: its id, its latest attempt, and whether
    /// an ack was sent after that delivery.
    struct Seen<'e> {
        id: &'e str,
        message_id: &'e str,
        attempt: u32,
        acked: bool,
    }
    let dead = dead_lettered(entries);
    let mut seen: BTreeMap<(&str, u32, &str), BTreeMap<u64, Seen>> = BTreeMap::new();
    let mut keys: BTreeMap<(&str, u32, u64), &str> = BTreeMap::new();
    let (mut checked, mut delivered, mut problems) = (0, 0, Vec::new());
    for e in entries {
        match &e.event {
            Event::Crashed { .. } => seen.clear(),
            Event::Broker(Notice::Seeked { subscription, .. } | Notice::Redriven { subscription, .. }) => {
                seen.retain(|(s, ..), _| s != subscription);
            }
            Event::AckSent { sub, op, partition, offset, attempt, .. } if op == "ack" => {
                let Some(key) = keys.get(&(sub.as_str(), *partition, *offset)) else { continue };
                let offsets = seen.get_mut(&(sub.as_str(), *partition, *key));
                if let Some(s) = offsets.and_then(|o| o.get_mut(offset)).filter(|s| s.attempt <= *attempt) {
                    s.acked = true;
                }
            }
            Event::Delivered { sub, .. } if ordered.contains(sub) => {
                delivered += 1;
                let Event::Delivered {
                    id,
                    message_id,
                    partition,
                    offset,
                    attempt,
                    key: Some(key),
                    dead_letter: None,
                    ..
                } = &e.event
                else {
                    continue;
                };
                keys.insert((sub.as_str(), *partition, *offset), key.as_str());
                let offsets = seen.entry((sub.as_str(), *partition, key.as_str())).or_default();
                checked += 1;
                for (earlier, s) in offsets.range(..*offset) {
                    let dead_lettered =
                        dead.get(&(sub.as_str(), s.message_id)).is_some_and(|c| c.iter().any(|(_, i)| *i == s.id));
                    if !s.acked && !dead_lettered {
                        let text = format!(
                            "{id} (p{partition}@{offset}, key {key}) reached {sub} while {} (@{earlier}) was unfinished",
                            s.id
                        );
                        problems.push(Problem::new(text, &[id, s.id]));
                    }
                }
                let entry = offsets.entry(*offset).or_insert(Seen { id, message_id, attempt: 0, acked: false });
                if *attempt > entry.attempt {
                    *entry = Seen { id, message_id, attempt: *attempt, acked: false };
                }
            }
            _ => {}
        }
    }
    if checked == 0 {
        let ok =
            format!("examined nothing: {} on ordered subscriptions, none with a key", count(delivered, "delivery"));
        return result("key-order", problems, ok);
    }
    let ok = format!("{}, each after the one before it finished", count(checked, "keyed delivery"));
    result("key-order", problems, ok)
}
