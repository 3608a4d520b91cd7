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

/// What the checker knows beside the history, from the scenario and the driver.
#[derive(Debug, Clone, Default)]
pub struct Context {
    /// Each subscription that must see every acknowledged publish of its topic (created at
    /// the earliest position, never seeked or deleted), and that topic.
    pub audited: BTreeMap<String, String>,
    /// The scenario declares loss (a crash of a broker on the memory log, or under
    /// `fsync=never`): lost messages are reported but do not fail the run, and neither do
    /// offsets that held a lost message and then a new one.
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

impl RetryBounds {
    /// The policy's backoff after delivery `attempt`.
    fn backoff_ms(&self, attempt: u32) -> u64 {
        let factor = 1u64.checked_shl(attempt.saturating_sub(1)).unwrap_or(u64::MAX);
        self.minimum_ms.saturating_mul(factor).min(self.maximum_ms)
    }

    /// The least time between delivery `attempt` and the next one.
    fn least_gap_ms(&self, attempt: u32) -> u64 {
        let backoff = self.backoff_ms(attempt);
        self.nack_delay_min_ms.map_or(backoff, |delay| backoff.min(delay))
    }
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

/// Runs every check.
pub fn check(entries: &[Entry], context: &Context) -> Vec<Check> {
    let audited = &context.audited;
    let liveness = liveness(entries, audited, context.healed_at_ms, context.bound_ms);
    let mut lost = lost(entries, audited);
    if context.loss_allowed && !lost.passed {
        lost = Check { name: "lost (allowed)", passed: true, detail: lost.detail };
    }
    let mut conservation = conservation(entries, audited, context.drain_from_ms);
    if context.loss_allowed && !conservation.passed {
        conservation = Check { name: "conservation (allowed)", passed: true, detail: conservation.detail };
    }
    let offsets = inconsistent_offsets(entries, audited, context.loss_allowed);
    let mut checks = vec![
        lost,
        conservation,
        unexpected(entries),
        duplicated(entries),
        redelivered_after_ack(entries),
        out_of_order(entries, &context.ordered),
        offsets,
        backoff(entries, &context.retry, &context.unsettled),
        liveness,
    ];
    // Only runs with an ordered subscription have a verdict on key order.
    if !context.ordered.is_empty() {
        checks.push(key_order(entries, &context.ordered));
    }
    // Only runs that publish with idempotency keys have a verdict on them.
    if entries.iter().any(|e| matches!(&e.event, Event::Published { idempotency_key: Some(_), .. })) {
        checks.push(duplicated_publish(entries, audited, context.dedupe_window_ms));
    }
    // Only runs with exclusive subscriptions (whose members are told assignments) have a
    // verdict on them.
    if entries.iter().any(|e| matches!(&e.event, Event::Assigned { .. })) {
        checks.push(exclusive(entries));
    }
    checks
}

/// Partition-exclusive subscriptions held: within one generation, every partition's
/// messages reached one member (a host's stream) only, and a member got messages only from
/// the partitions its assignment for that generation gave it (the assignment comes on the
/// same stream before anything leased under it). A broker crash starts the generations
/// over (members do not survive it), so generations are told apart by the broker's life
/// too. Pulls (stream 0) may only read partitions no member holds: they count as a holder.
fn exclusive(entries: &[Entry]) -> Check {
    let subs: BTreeSet<&str> = entries
        .iter()
        .filter_map(|e| match &e.event {
            Event::Assigned { sub, .. } => Some(sub.as_str()),
            _ => None,
        })
        .collect();
    let mut life = 0u32;
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
            Event::StreamOpened { sub, stream } => {
                opened_in.insert((host, sub.as_str(), *stream), life);
            }
            Event::Assigned { sub, stream, generation, partitions } => {
                assigned.insert((host, sub.as_str(), *stream, *generation), partitions.as_slice());
                latest.insert((host, sub.as_str()), partitions.as_slice());
            }
            Event::AckAnswered { id, sub, op, partition, result, .. } if op == "ack" && result == "applied" => {
                if let Some(partitions) = latest.get(&(host, sub.as_str())).filter(|p| !p.contains(partition)) {
                    problems.push(format!(
                        "{sub} p{partition}: {host}'s ack of {id} was applied, but its assignment is {partitions:?}"
                    ));
                }
            }
            Event::Delivered { sub, stream, partition, generation, id, .. } if subs.contains(sub.as_str()) => {
                deliveries += 1;
                let member = (host, *stream);
                if *stream != 0 {
                    let given = assigned.get(&(host, sub.as_str(), *stream, *generation));
                    if !given.is_some_and(|p| p.contains(partition)) {
                        problems.push(format!(
                            "{sub} p{partition} gen={generation}: {id} reached {host}#{stream}, whose assignment is {given:?}"
                        ));
                    }
                }
                let life = opened_in.get(&(host, sub.as_str(), *stream)).copied().unwrap_or(life);
                let holder = *holders.entry((life, sub.as_str(), *generation, *partition)).or_insert(member);
                if holder != member {
                    let (holder_host, holder_stream) = holder;
                    problems.push(format!(
                        "{sub} p{partition} gen={generation}: {id} reached {host}#{stream}, but {holder_host}#{holder_stream} holds the partition"
                    ));
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

/// A stored message: publish time (wall ms), partition, offset.
type Place = (u64, u32, u64);

/// Idempotent publishing held: no two stored messages of a topic carry one idempotency
/// key within the dedupe window, and every publish answered `duplicate` names the place
/// of a message stored with its key.
fn duplicated_publish(entries: &[Entry], audited: &BTreeMap<String, String>, window_ms: u64) -> Check {
    // (topic, partition, offset) -> (idempotency key, publish time, message id) of what is
    // stored there.
    type Stored<'a> = (Option<&'a str>, u64, &'a str);
    let mut stored: BTreeMap<(&str, u32, u64), Stored> = BTreeMap::new();
    for e in entries {
        if let Event::Delivered { id, sub, partition, offset, idempotency_key, publish_ms, dead_letter, .. } = &e.event
        {
            // A dead-letter copy is stored in another topic on purpose.
            if let (Some(topic), None) = (audited.get(sub), dead_letter) {
                stored.insert((topic.as_str(), *partition, *offset), (idempotency_key.as_deref(), *publish_ms, id));
            }
        }
    }
    let mut problems = Vec::new();
    // (topic, key) -> (publish time, partition, offset) of each stored message with it.
    let mut by_key: BTreeMap<(&str, &str), Vec<Place>> = BTreeMap::new();
    // (topic, message id) -> the places of a message that carried an idempotency key: a
    // retry must not store it again, whatever key the retry carried.
    let mut keyed_by_id: BTreeMap<(&str, &str), Vec<Place>> = BTreeMap::new();
    for (&(topic, partition, offset), &(key, publish_ms, id)) in &stored {
        if let Some(key) = key {
            by_key.entry((topic, key)).or_default().push((publish_ms, partition, offset));
            keyed_by_id.entry((topic, id)).or_default().push((publish_ms, partition, offset));
        }
    }
    let mut close_pairs = |what: String, mut places: Vec<Place>| {
        places.sort_unstable();
        for pair in places.windows(2) {
            let ((t0, p0, o0), (t1, p1, o1)) = (pair[0], pair[1]);
            if t1 - t0 < window_ms {
                problems.push(format!("{what} at p{p0}@{o0} and p{p1}@{o1}, {} ms apart", t1 - t0));
            }
        }
    };
    for ((topic, key), places) in by_key {
        close_pairs(format!("{topic} stores idempotency key {key}"), places);
    }
    for ((topic, id), places) in keyed_by_id {
        close_pairs(format!("{topic} stores message {id}, published with an idempotency key,"), places);
    }
    let mut answered = 0;
    for e in entries {
        let Event::Published { id, topic, partition, offset, idempotency_key: Some(key), duplicate: true } = &e.event
        else {
            continue;
        };
        answered += 1;
        if let Some((held, ..)) = stored.get(&(topic.as_str(), *partition, *offset)) {
            if *held != Some(key.as_str()) {
                problems.push(format!("{id} was answered as a duplicate at {topic} p{partition}@{offset}, which holds key {held:?}, not {key}"));
            }
        }
    }
    let ok = format!("each idempotency key stored once; duplicate answers naming the original: {answered}");
    result("duplicated-publish", problems, ok)
}

/// Every acknowledged publish ends, on every audited subscription of its topic, acked there
/// or dead-lettered from there (a dead-letter copy of it was delivered on a subscription of
/// the dead-letter topic, so scenarios that dead-letter read that topic), or is still in
/// the subscription at the end: delivered there during the final drain (a consumer that
/// never acks in time keeps it going round). A message the broker drops as done without an
/// ack or a dead-letter copy is none of these.
fn conservation(entries: &[Entry], audited: &BTreeMap<String, String>, drain_from_ms: u64) -> Check {
    let mut acked: BTreeSet<(&str, &str)> = BTreeSet::new();
    let mut alive: BTreeSet<(&str, &str)> = BTreeSet::new();
    // Acks sent minus acks answered, per (sub, id): more than zero left means an answer
    // never came, so the ack may have been applied (indeterminate, like a lost publish answer).
    let mut unanswered: BTreeMap<(&str, &str), i64> = BTreeMap::new();
    for e in entries {
        match &e.event {
            Event::AckSent { id, sub, op, .. } if op == "ack" => {
                *unanswered.entry((sub.as_str(), id.as_str())).or_default() += 1;
            }
            Event::AckAnswered { id, sub, op, .. } if op == "ack" => {
                *unanswered.entry((sub.as_str(), id.as_str())).or_default() -= 1;
            }
            _ => {}
        }
        match &e.event {
            Event::Delivered { id, sub, dead_letter: None, .. } if e.at_ms >= drain_from_ms => {
                alive.insert((sub.as_str(), id.as_str()));
            }
            Event::AckAnswered { id, sub, op, result, .. } if op == "ack" && result == "applied" => {
                acked.insert((sub.as_str(), id.as_str()));
            }
            _ => {}
        }
    }
    let dead = dead_lettered(entries);
    let (mut finished, mut going, mut unknown, mut problems) = (0, 0, 0, Vec::new());
    for e in entries {
        let Event::Published { id, topic, .. } = &e.event else { continue };
        for (sub, _) in audited.iter().filter(|(_, t)| *t == topic) {
            let key = (sub.as_str(), id.as_str());
            if acked.contains(&key) || dead.contains(&key) {
                finished += 1;
            } else if alive.contains(&key) {
                going += 1;
            } else if unanswered.get(&key).is_some_and(|n| *n > 0) {
                unknown += 1;
            } else {
                problems.push(format!("{id} neither acked on {sub}, nor dead-lettered from it, nor still there"));
            }
        }
    }
    let dead_count = dead.iter().filter(|(sub, _)| audited.contains_key(*sub)).count();
    let mut ok =
        format!("{finished} acked or dead-lettered ({dead_count} dead-lettered), {going} still going round at the end");
    // Only where it happened, so runs without lost answers read as before.
    if unknown > 0 {
        ok.push_str(&format!(", {unknown} acked with the answer lost"));
    }
    result("conservation", problems, ok)
}

/// On an ordered subscription, the messages of one key (per partition) go out one at a
/// time and in order: a message reaches a client only once every earlier message of its
/// key that a client received is finished, that is acked (the ack was sent after its
/// latest delivery: the broker applies an ack only after it is sent, and leases the next
/// message only after that) or dead-lettered (its copy reached the dead-letter topic's
/// reader). A crash, a seek or a redrive starts the reckoning over.
fn key_order(entries: &[Entry], ordered: &BTreeSet<String>) -> Check {
    /// An offset of a key as the clients saw it: its id, its latest attempt, and whether
    /// an ack was sent after that delivery.
    struct Seen<'e> {
        id: &'e str,
        attempt: u32,
        acked: bool,
    }
    let dead = dead_lettered(entries);
    let mut seen: BTreeMap<(&str, u32, &str), BTreeMap<u64, Seen>> = BTreeMap::new();
    let mut keys: BTreeMap<(&str, u32, u64), &str> = BTreeMap::new();
    let (mut checked, mut problems) = (0, Vec::new());
    for e in entries {
        match &e.event {
            Event::Crashed { .. } => seen.clear(),
            Event::Seeked { sub } | Event::Redriven { sub, .. } => seen.retain(|(s, ..), _| s != sub),
            Event::AckSent { sub, op, partition, offset, attempt, .. } if op == "ack" => {
                let Some(key) = keys.get(&(sub.as_str(), *partition, *offset)) else { continue };
                let offsets = seen.get_mut(&(sub.as_str(), *partition, *key));
                if let Some(s) = offsets.and_then(|o| o.get_mut(offset)).filter(|s| s.attempt <= *attempt) {
                    s.acked = true;
                }
            }
            Event::Delivered { id, sub, partition, offset, attempt, key: Some(key), dead_letter: None, .. }
                if ordered.contains(sub) =>
            {
                keys.insert((sub.as_str(), *partition, *offset), key.as_str());
                let offsets = seen.entry((sub.as_str(), *partition, key.as_str())).or_default();
                checked += 1;
                for (earlier, s) in offsets.range(..*offset) {
                    if !s.acked && !dead.contains(&(sub.as_str(), s.id)) {
                        problems.push(format!(
                            "{id} (p{partition}@{offset}, key {key}) reached {sub} while {} (@{earlier}) was unfinished",
                            s.id
                        ));
                    }
                }
                let entry = offsets.entry(*offset).or_insert(Seen { id: id.as_str(), attempt: 0, acked: false });
                if *attempt > entry.attempt {
                    *entry = Seen { id: id.as_str(), attempt: *attempt, acked: false };
                }
            }
            _ => {}
        }
    }
    result("key-order", problems, format!("{checked} keyed deliveries, each after the one before it finished"))
}

/// On a subscription with a retry policy, delivery `n + 1` of a message comes no sooner
/// than its backoff after delivery `n` arrived, and, when delivery `n` was nacked (and the
/// nack applied), no later than its backoff after the nack was sent, give or take the
/// trips. Only pairs of deliveries the client saw in a settled stretch count (no fault in
/// place, the earlier one's stream not ended, no seek, redrive, crash or move to another
/// member between), with a slack for the link's latency: the client's clock stands in for
/// the broker's only there.
fn backoff(entries: &[Entry], retry: &BTreeMap<String, RetryBounds>, unsettled: &Unsettled) -> Check {
    /// turmoil's largest default link latency, twice: the earlier delivery's trip, and one
    /// more for the order of events on the wire.
    const LINK_SLACK_MS: u64 = 200;
    /// The nack's trip, the broker's turn, and the redelivery's trip, with room to spare.
    const LATE_SLACK_MS: u64 = 400;
    if retry.is_empty() {
        return Check { name: "backoff", passed: true, detail: "no subscription has a retry policy".to_string() };
    }
    struct Last<'e> {
        attempt: u32,
        at_ms: u64,
        host: &'e str,
        stream: u64,
        generation: u64,
    }
    // By stored message: a publish retried without an idempotency key stores one id twice.
    let mut last: BTreeMap<(&str, u32, u64), Last> = BTreeMap::new();
    let mut ended: Vec<(&str, &str, u64, u64)> = Vec::new();
    // Nacks sent, by (sub, partition, offset, attempt): when; and those the broker applied.
    let mut nack_sent: BTreeMap<(&str, u32, u64, u32), u64> = BTreeMap::new();
    let mut nack_applied: BTreeMap<(&str, u32, u64, u32), u64> = BTreeMap::new();
    let (mut checked, mut tightest, mut problems) = (0, u64::MAX, Vec::new());
    let (mut nacked, mut spare) = (0, u64::MAX);
    for e in entries {
        match &e.event {
            Event::AckSent { sub, op, partition, offset, attempt, .. } if op == "nack" => {
                nack_sent.insert((sub.as_str(), *partition, *offset, *attempt), e.at_ms);
            }
            Event::AckAnswered { sub, op, partition, offset, attempt, result, .. }
                if op == "nack" && result == "applied" =>
            {
                let key = (sub.as_str(), *partition, *offset, *attempt);
                if let Some(sent) = nack_sent.get(&key) {
                    nack_applied.insert(key, *sent);
                }
            }
            Event::Seeked { sub } | Event::Redriven { sub, .. } => last.retain(|(s, ..), _| s != sub),
            Event::Crashed { .. } => last.clear(),
            Event::StreamFailed { sub, stream, .. } => ended.push((e.host.as_str(), sub.as_str(), *stream, e.at_ms)),
            Event::Delivered { id, sub, stream, partition, offset, attempt, dead_letter: None, generation, .. } => {
                let Some(bounds) = retry.get(sub) else { continue };
                let key = (sub.as_str(), *partition, *offset);
                if let Some(prev) = last.get(&key).filter(|p| p.attempt + 1 == *attempt) {
                    let window = (prev.at_ms.saturating_sub(LINK_SLACK_MS), e.at_ms);
                    let faulted = unsettled.faults.iter().any(|&(from, to)| from <= window.1 && to >= window.0);
                    let disconnected = unsettled
                        .disconnects
                        .iter()
                        .any(|(h, at)| h == prev.host && (window.0..=window.1).contains(at));
                    let stream_ended = ended.iter().any(|&(h, s, n, at)| {
                        h == prev.host && s == *sub && n == prev.stream && (window.0..=window.1).contains(&at)
                    });
                    // On an exclusive subscription a partition that moved to another member
                    // takes its messages along at once, as a closed stream does.
                    let moved =
                        *generation != prev.generation && (e.host.as_str(), *stream) != (prev.host, prev.stream);
                    if !(faulted || disconnected || stream_ended || moved) {
                        let (gap, least) = (e.at_ms - prev.at_ms, bounds.least_gap_ms(prev.attempt));
                        checked += 1;
                        tightest = tightest.min((gap + LINK_SLACK_MS).saturating_sub(least));
                        if gap + LINK_SLACK_MS < least {
                            problems.push(format!(
                                "{id} attempt {attempt} reached {sub} {gap} ms after attempt {}; its backoff is {least} ms",
                                prev.attempt
                            ));
                        }
                        let nack = nack_applied.get(&(sub.as_str(), *partition, *offset, prev.attempt));
                        if let Some(sent) = nack.filter(|_| bounds.upper_bound) {
                            let (waited, most) = (e.at_ms.saturating_sub(*sent), bounds.backoff_ms(prev.attempt));
                            nacked += 1;
                            spare = spare.min((most + LATE_SLACK_MS).saturating_sub(waited));
                            if waited > most + LATE_SLACK_MS {
                                problems.push(format!(
                                    "{id} attempt {attempt} reached {sub} {waited} ms after attempt {} was nacked; its backoff is {most} ms",
                                    prev.attempt
                                ));
                            }
                        }
                    }
                }
                let generation = *generation;
                last.insert(
                    key,
                    Last { attempt: *attempt, at_ms: e.at_ms, host: e.host.as_str(), stream: *stream, generation },
                );
            }
            _ => {}
        }
    }
    let mut ok = if checked == 0 {
        "no redelivery in a settled stretch to measure".to_string()
    } else {
        format!("{checked} redeliveries waited out their backoff (closest by {tightest} ms)")
    };
    if nacked > 0 {
        ok.push_str(&format!("; {nacked} nacked ones came back within it (latest with {spare} ms to spare)"));
    }
    result("backoff", problems, ok)
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

/// (subscription, message id) of every message a subscription dead-lettered: a copy of it
/// reached a reader of the dead-letter topic.
fn dead_lettered(entries: &[Entry]) -> BTreeSet<(&str, &str)> {
    let copies = entries.iter().filter_map(|e| match &e.event {
        Event::Delivered { id, dead_letter: Some((from, _)), .. } => Some((from.as_str(), id.as_str())),
        _ => None,
    });
    copies.collect()
}

/// Acknowledged publishes never delivered to an audited subscription of their topic. A
/// message dead-lettered from the subscription counts as delivered there: the broker may
/// give up on leases that never reached the client (a partition hid them until they expired
/// max_attempts times), and the copy in the dead-letter topic is the message.
fn lost(entries: &[Entry], audited: &BTreeMap<String, String>) -> Check {
    let mut delivered: BTreeSet<(&str, &str)> = entries
        .iter()
        .filter_map(|e| match &e.event {
            Event::Delivered { id, sub, dead_letter: None, .. } => Some((sub.as_str(), id.as_str())),
            _ => None,
        })
        .collect();
    delivered.extend(dead_lettered(entries));
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
            Event::Delivered { id, sub, partition, offset, dead_letter, .. } => {
                *deliveries.entry((sub.as_str(), *partition, *offset)).or_default() += 1;
                // A dead-letter copy is stored in another topic on purpose.
                if dead_letter.is_none() {
                    stored.entry(id.as_str()).or_default().insert((*partition, *offset));
                }
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
/// numbered per host). A seek starts the count again. Ordered subscriptions are the
/// key-order check's: holding a key back lets later offsets of other keys go first.
fn out_of_order(entries: &[Entry], ordered: &BTreeSet<String>) -> Check {
    let mut last: BTreeMap<(&str, &str, u64, u32), u64> = BTreeMap::new();
    let mut problems = Vec::new();
    for e in entries {
        // A seek starts over, and so does a redrive: the message it brings back comes with
        // attempt 1 at its old offset.
        if let Event::Seeked { sub: seeked } | Event::Redriven { sub: seeked, .. } = &e.event {
            last.retain(|(_, s, ..), _| s != seeked);
        }
        if let Event::Delivered { sub, stream, partition, offset, attempt: 1, .. } = &e.event {
            if ordered.contains(sub) {
                continue;
            }
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
