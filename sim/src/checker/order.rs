//! Order: first deliveries rise per partition and stream, and on ordered subscriptions a
//! key's messages go out one at a time. Seeks and redrives restart the reckoning where the
//! broker applied them (its notices), not where a client heard of it. A library
//! publisher's messages are stored in the order they were handed to it.

use std::collections::{BTreeMap, BTreeSet};

use mini_pubsub::core::Notice;

use super::{count, dead_lettered, result, Check, Problem};
use crate::history::{Entry, Event};

/// First deliveries going backwards within a partition on one stream (streams are
/// numbered per host). A seek the broker applied to the subscription between two leases
/// (told apart by their sequence numbers, which the seek's notice carries: a lease made
/// before the seek may still be on its way after it) allows one step back: the replay. A
/// message a redrive put back comes with attempt 1 at its old offset: it is exempt.
/// Ordered subscriptions are the key-order check's.
pub(super) fn out_of_order(entries: &[Entry], ordered: &BTreeSet<String>) -> Check {
    // Each subscription's seeks, by the first lease sequence number after each.
    let mut seeks: BTreeMap<&str, Vec<u64>> = BTreeMap::new();
    // Redriven places, with the first lease sequence number after the redrive.
    let mut redriven: BTreeMap<(&str, u32, u64), u64> = BTreeMap::new();
    // (host, subscription, stream, partition) -> (offset, lease) of the last first delivery.
    let mut last: BTreeMap<(&str, &str, u64, u32), (u64, u64)> = BTreeMap::new();
    let (mut examined, mut compared, mut restarts, mut exempt) = (0, 0, 0, 0);
    let mut problems = Vec::new();
    for e in entries {
        match &e.event {
            Event::Broker(Notice::Seeked { subscription, lease_seq, .. }) => {
                seeks.entry(subscription).or_default().push(*lease_seq);
            }
            Event::Broker(Notice::Redriven { subscription, partition, offset, lease_seq }) => {
                redriven.insert((subscription, *partition, *offset), *lease_seq);
            }
            Event::Delivered { id, sub, stream, partition, offset, attempt: 1, lease, .. }
                if !ordered.contains(sub) =>
            {
                examined += 1;
                let place = (sub.as_str(), *partition, *offset);
                if redriven.get(&place).is_some_and(|after| lease >= after) {
                    redriven.remove(&place);
                    exempt += 1;
                    continue;
                }
                let key = (e.host.as_str(), sub.as_str(), *stream, *partition);
                if let Some((previous, before)) = last.insert(key, (*offset, *lease)) {
                    compared += 1;
                    if *offset < previous {
                        let sought =
                            seeks.get(sub.as_str()).is_some_and(|s| s.iter().any(|s| before < *s && s <= lease));
                        if sought {
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
/// reader). A crash, a seek or a redrive (as the broker applied them) starts over; a
/// delivery leased before the latest seek or redrive of its subscription (its lease's
/// sequence number is lower than the notice's), still on its way after it, is not judged.
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
    // The first lease sequence number after each subscription's latest seek or redrive.
    let mut restarted: BTreeMap<&str, u64> = BTreeMap::new();
    let (mut checked, mut delivered, mut problems) = (0, 0, Vec::new());
    for e in entries {
        match &e.event {
            Event::Crashed { .. } => seen.clear(),
            Event::Broker(
                Notice::Seeked { subscription, lease_seq, .. } | Notice::Redriven { subscription, lease_seq, .. },
            ) => {
                seen.retain(|(s, ..), _| s != subscription);
                restarted.insert(subscription, *lease_seq);
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
                    lease,
                    ..
                } = &e.event
                else {
                    continue;
                };
                if restarted.get(sub.as_str()).is_some_and(|after| lease < after) {
                    continue;
                }
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

/// Where a publisher's answers are compared: (publisher, topic uid, partition, crashes
/// before the answer). Each holds (position, offset, id) of every answer.
type Stream<'a> = (&'a str, &'a str, u32, usize);

/// A library publisher's messages stored out of the order they were handed to it: within a
/// partition (of one incarnation of a topic), the places its answers name must rise in
/// that order, retries and duplicate answers included, however many batches were in flight
/// and however often the stream under them broke. Only messages whose partition the client
/// chose (a key or a partition) are held to it: the broker places a keyless one, and a
/// retry of a batch partly stored before a crash may place it in another partition, after
/// messages handed over later. Messages that failed have no place and are skipped. Where a
/// crash may lose acknowledged messages (`loss_allowed`), only answers between the same two
/// crashes are compared.
pub(super) fn publish_order(entries: &[Entry], loss_allowed: bool) -> Check {
    // Each message's publisher and its position among that publisher's messages.
    let mut handed: BTreeMap<&str, (&str, usize)> = BTreeMap::new();
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    let mut places: BTreeMap<Stream<'_>, Vec<(usize, u64, &str)>> = BTreeMap::new();
    let (mut answered, mut crashes) = (0, 0);
    for e in entries {
        match &e.event {
            Event::PublishInvoked { id, attempt: 1, publisher: Some(publisher), .. } => {
                let n = counts.entry(publisher).or_default();
                handed.insert(id, (publisher, *n));
                *n += 1;
            }
            Event::Crashed { .. } if loss_allowed => crashes += 1,
            Event::Published { id, message_id, partition, offset, .. } => {
                let Some(&(publisher, position)) = handed.get(id.as_str()) else { continue };
                answered += 1;
                let uid = message_id.split('-').next().unwrap_or_default();
                places.entry((publisher, uid, *partition, crashes)).or_default().push((position, *offset, id));
            }
            _ => {}
        }
    }
    let mut problems = Vec::new();
    for ((publisher, _, partition, _), mut seen) in places {
        seen.sort_unstable();
        for pair in seen.windows(2) {
            let ((_, at, first), (_, later, second)) = (pair[0], pair[1]);
            if later <= at {
                let text = format!(
                    "{publisher} was handed {first} before {second}, but they are stored at p{partition}@{at} and p{partition}@{later}"
                );
                problems.push(Problem::new(text, &[first, second]));
            }
        }
    }
    let ok = format!(
        "{} from {}: each stored after those handed to its publisher before it",
        count(answered, "answered message"),
        count(counts.len(), "library publisher")
    );
    result("publish-order", problems, ok)
}
