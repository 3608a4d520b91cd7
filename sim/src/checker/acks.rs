//! What acks and flow control promise: an applied ack is final, and a stream never holds
//! more unanswered messages than it asked for.

use std::collections::BTreeMap;

use mini_pubsub::core::Notice;

use super::{count, nothing_examined, result, Check, Context, Problem};
use crate::history::{Entry, Event};

/// A new delivery of a stored message to a subscription after an ack of it there was
/// applied: an attempt higher than the acked one. A lower or equal attempt was leased
/// before the ack and only arrived late (it was held in the network), which is allowed.
///
/// A broker crash forgets the acks applied since its last checkpoint: their messages come
/// again (at least once), which is allowed. An ack the client saw answered before the
/// checkpoint was applied before it, so it survives the crash and still binds; since the
/// restarted broker counts attempts from 1 again, any delivery of it on a stream opened
/// after the restart is a redelivery. An answer that reaches the client while the broker
/// is down was given after the last checkpoint, so it is forgotten too. A seek (as the
/// broker applied it) releases every ack of its subscription sent before it.
///
/// In a cluster an ack binds once a replicated ack floor past its offset was applied: a
/// new leader (after a crash or a cut) forgets the others, and counts attempts from 1, so
/// any delivery of a bound ack's message on a stream opened after the change is a
/// redelivery. A follower's crash forgets nothing. A seek or a redrive applied on a node
/// may move its floors back: the node's floors for that subscription start over.
pub(super) fn redelivered_after_ack(entries: &[Entry]) -> Check {
    let mut acked: BTreeMap<(&str, &str), Acked> = BTreeMap::new();
    let mut sent: BTreeMap<(&str, &str, u32), u64> = BTreeMap::new();
    let mut seeked: BTreeMap<&str, u64> = BTreeMap::new();
    let mut opened: BTreeMap<(&str, &str, u64), u64> = BTreeMap::new();
    let mut last_checkpoint_ms: Option<u64> = None;
    let mut crashed = false;
    let cluster = super::cluster::is_cluster(entries);
    let mut nodes = Nodes::default();
    let (mut applied, mut watched, mut checked, mut problems) = (0, 0, 0, Vec::new());
    for e in entries {
        if let Some(subscription) = e.event.moves_floors_back() {
            nodes.seeked(&e.host, subscription);
        }
        match &e.event {
            Event::AckSent { message_id, sub, op, attempt, .. } if op == "ack" => {
                sent.insert((sub.as_str(), message_id.as_str(), *attempt), e.at_ms);
            }
            // An answer that arrives while the broker is down was given by the crashed
            // incarnation after its last checkpoint: forgotten like the acks above.
            Event::AckAnswered { id, message_id, sub, op, attempt, result, partition, offset }
                if result == "applied" && op == "ack" =>
            {
                applied += 1;
                let sent_ms = sent.get(&(sub.as_str(), message_id.as_str(), *attempt)).copied().unwrap_or(e.at_ms);
                let before_seek = seeked.get(sub.as_str()).is_some_and(|seek| sent_ms < *seek);
                if crashed || before_seek {
                    continue;
                }
                watched += 1;
                let key = (sub.as_str(), message_id.as_str());
                let (partition, offset) = (*partition, *offset);
                let ack = Acked { id, at_ms: e.at_ms, attempt: *attempt, partition, offset, survived_restart_ms: None };
                // A place a crash lost and a new message took holds a different message.
                if acked.get(&key).is_none_or(|a| a.id != id.as_str()) {
                    acked.insert(key, ack);
                }
            }
            Event::Broker(Notice::Seeked { subscription, .. }) => {
                acked.retain(|(s, _), _| s != subscription);
                seeked.insert(subscription, e.at_ms);
            }
            Event::Broker(Notice::FloorRaised { subscription, partition, offset }) => {
                nodes.floors.insert((e.host.as_str(), subscription.as_str(), *partition), *offset);
            }
            // The node's floors are the snapshot's, told next.
            Event::SnapshotInstalled { .. } => nodes.floors.retain(|(h, _, _), _| *h != e.host.as_str()),
            Event::Cluster { serving: true, .. } => nodes.serves(&e.host, e.at_ms, &mut acked),
            Event::Crashed { host } if cluster => nodes.crashed(host),
            Event::Restarted { .. } if cluster => {}
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
            Event::StreamOpened { sub, stream, .. } => {
                opened.insert((e.host.as_str(), sub.as_str(), *stream), e.at_ms);
            }
            Event::Delivered { id, message_id, sub, stream, .. } => {
                let key = (sub.as_str(), message_id.as_str());
                let Some(a) = acked.get(&key).filter(|a| a.id == id.as_str()) else { continue };
                checked += 1;
                let stream_opened = opened.get(&(e.host.as_str(), sub.as_str(), *stream)).copied();
                problems.extend(redelivery(e, a, stream_opened));
            }
            _ => {}
        }
    }
    if watched == 0 && applied > 0 {
        let why =
            format!("{} applied, each forgotten by a crash or a seek before it could bind", count(applied, "ack"));
        return nothing_examined("redelivered-after-ack", why);
    }
    let ok = format!(
        "{} watched ({} of them delivered again, none as a new attempt)",
        count(watched, "applied ack"),
        checked
    );
    result("redelivered-after-ack", problems, ok)
}

/// The delivery `e` of an acked message, when it breaks the ack `a`: a higher attempt, or
/// any on a stream opened after the restart (or change of leader) the ack survived.
fn redelivery(e: &Entry, a: &Acked, stream_opened: Option<u64>) -> Option<Problem> {
    let Event::Delivered { id, sub, partition, offset, attempt, .. } = &e.event else { return None };
    let after_restart = a.survived_restart_ms.is_some_and(|r| stream_opened.is_some_and(|o| o >= r));
    if *attempt <= a.attempt && !after_restart {
        return None;
    }
    let (when, at, acked_attempt) = (e.at_ms, a.at_ms, a.attempt);
    let text = format!(
        "{id} (p{partition}@{offset}) delivered to {sub} as attempt {attempt} at {when} ms, after attempt {acked_attempt} was acked at {at} ms"
    );
    Some(Problem::new(text, &[id]))
}

/// An applied ack the check watches.
struct Acked<'e> {
    id: &'e str,
    at_ms: u64,
    attempt: u32,
    partition: u32,
    offset: u64,
    /// Set for an ack that survived a crash (or, in a cluster, a change of leader): the
    /// restart (or change) it survived.
    survived_restart_ms: Option<u64>,
}

/// What `redelivered_after_ack` knows of a cluster's nodes: each node's replicated floor
/// per (subscription, partition), and the node that serves as the leader.
#[derive(Default)]
struct Nodes<'e> {
    floors: BTreeMap<(&'e str, &'e str, u32), u64>,
    leader: Option<&'e str>,
    led: bool,
}

impl<'e> Nodes<'e> {
    /// Node `host` applied a seek of `sub`: its floors start over.
    fn seeked(&mut self, host: &str, sub: &str) {
        self.floors.retain(|(h, s, _), _| *h != host || *s != sub);
    }

    fn crashed(&mut self, host: &str) {
        if self.leader == Some(host) {
            self.leader = None;
        }
    }

    /// Node `host` serves as the leader from `at_ms`: a change of leader keeps the acks
    /// its floors cover, which bind from then on, and forgets the others.
    fn serves(&mut self, host: &'e str, at_ms: u64, acked: &mut BTreeMap<(&'e str, &'e str), Acked<'e>>) {
        if self.leader == Some(host) {
            return;
        }
        self.leader = Some(host);
        if std::mem::replace(&mut self.led, true) {
            acked.retain(|(s, _), a| self.floors.get(&(host, *s, a.partition)).is_some_and(|f| a.offset < *f));
            for a in acked.values_mut() {
                a.survived_restart_ms.get_or_insert(at_ms);
            }
        }
    }
}

/// Turmoil's largest default link latency, with room: a lease a client received was made
/// at most this long before.
const FLOW_SLACK_MS: u64 = 300;

/// A stream that asked for at most `max` outstanding messages never holds more: when a
/// message arrives, the earlier ones on its stream that are surely still leased (no ack,
/// nack or deadline change sent for them, their partition not moved to another member,
/// and their lease not yet expired) number fewer than `max`. Pulls (stream 0) and streams that asked for the default are not checked;
/// deliveries while a fault was in place are not either (a lease's age is not known then).
pub(super) fn flow(entries: &[Entry], context: &Context) -> Check {
    struct Held<'e> {
        id: &'e str,
        message_id: &'e str,
        partition: u32,
        attempt: u32,
        at_ms: u64,
        answered: bool,
    }
    let mut limits: BTreeMap<(&str, &str, u64), u32> = BTreeMap::new();
    let mut held: BTreeMap<(&str, &str, u64), Vec<Held>> = BTreeMap::new();
    let (mut examined, mut limited_deliveries, mut fullest) = (0, 0, 0);
    let mut problems = Vec::new();
    for e in entries {
        let host = e.host.as_str();
        match &e.event {
            Event::StreamOpened { sub, stream, max } if *max > 0 => {
                limits.insert((host, sub.as_str(), *stream), *max);
            }
            Event::AckSent { message_id, sub, attempt, .. } => {
                for list in held.iter_mut().filter(|((h, s, _), _)| *h == host && *s == sub.as_str()).map(|(_, l)| l) {
                    for h in list.iter_mut().filter(|h| h.message_id == message_id.as_str() && h.attempt == *attempt) {
                        h.answered = true;
                    }
                }
            }
            // A partition that moves to another member takes its leases along.
            Event::Assigned { sub, stream, partitions, .. } => {
                for h in held.get_mut(&(host, sub.as_str(), *stream)).into_iter().flatten() {
                    h.answered |= !partitions.contains(&h.partition);
                }
            }
            Event::Delivered { id, message_id, sub, stream, partition, attempt, .. } => {
                let key = (host, sub.as_str(), *stream);
                let Some(&max) = limits.get(&key) else { continue };
                limited_deliveries += 1;
                let deadline = context.ack_deadlines_ms.get(sub.as_str()).copied().unwrap_or(0);
                let list = held.entry(key).or_default();
                let alive: Vec<&Held> =
                    list.iter().filter(|h| !h.answered && e.at_ms + FLOW_SLACK_MS < h.at_ms + deadline).collect();
                let settled = !context.unsettled.faulted(e.at_ms.saturating_sub(deadline), e.at_ms);
                if settled {
                    examined += 1;
                    fullest = fullest.max(alive.len() + 1);
                    if alive.len() >= max as usize {
                        let holding: Vec<&str> = alive.iter().map(|h| h.id).collect();
                        let text = format!(
                            "{id} reached {host} {sub}#{stream} (max_outstanding_messages={max}) while it held {}",
                            holding.join(", ")
                        );
                        let mut ids = holding.clone();
                        ids.push(id);
                        problems.push(Problem::new(text, &ids));
                    }
                }
                let partition = *partition;
                list.push(Held { id, message_id, partition, attempt: *attempt, at_ms: e.at_ms, answered: false });
            }
            _ => {}
        }
    }
    if examined == 0 && limited_deliveries > 0 {
        let why =
            format!("{} on limited streams, each while a fault was in place", count(limited_deliveries, "delivery"));
        return nothing_examined("flow", why);
    }
    if limits.is_empty() {
        return result("flow", problems, "examined nothing: no stream asked for a flow limit".to_string());
    }
    let ok = format!(
        "{} on {}: none past its max_outstanding_messages (most held at once: {fullest})",
        count(examined, "delivery"),
        count(limits.len(), "limited stream")
    );
    result("flow", problems, ok)
}
