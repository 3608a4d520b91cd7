//! What subscriptions are owed reaches them: lost, conservation and liveness, over every
//! (message, subscription) pair the model says is owed at the end.

use std::collections::BTreeMap;

use super::model::{End, Epoch, Message, Model};
use super::{count, dead_lettered, nothing_examined, result, Check, Context, Problem};
use crate::history::{Entry, Event};

/// Events about places, by (subscription, broker id): when, and the scenario id of the
/// message they were about.
type Seen<'e> = BTreeMap<(&'e str, &'e str), Vec<(u64, &'e str)>>;

/// When each (subscription, broker id) was delivered (dead-letter copies aside).
fn deliveries(entries: &[Entry]) -> Seen<'_> {
    let mut delivered: Seen = BTreeMap::new();
    for e in entries {
        if let Event::Delivered { id, sub, message_id, dead_letter: None, .. } = &e.event {
            delivered.entry((sub.as_str(), message_id.as_str())).or_default().push((e.at_ms, id));
        }
    }
    delivered
}

/// The first time at or after `since` that `seen` has `message` on `sub`.
fn first_since(seen: &Seen, sub: &str, message: &Message, since: u64) -> Option<u64> {
    let times = seen.get(&(sub, message.message_id))?;
    times.iter().find(|(at, id)| *at >= since && message.is(id)).map(|(at, _)| *at)
}

fn ids_of(message: &Message) -> String {
    message.ids.join("/")
}

/// Why a check that examined no owed message fails, if it must: acknowledged publishes of
/// topics that subscriptions existing at the end read, yet none is owed to them.
fn nothing_owed(model: &Model) -> Option<String> {
    let subscribed = model.subscribed_publishes();
    (subscribed > 0).then(|| {
        format!(
            "{} of topics that subscriptions read at the end, but none is owed to them (each was created after the publishes with start=latest, or seeked past them)",
            count(subscribed, "acknowledged publish")
        )
    })
}

/// What a check that examined nothing says when nothing was owed.
fn none_owed(model: &Model) -> String {
    let vanished: Vec<&str> = model.vanished.iter().map(|e| e.sub.as_str()).collect();
    if vanished.is_empty() {
        "examined nothing: no subscription that exists at the end is owed a message".to_string()
    } else {
        format!(
            "examined nothing: no subscription exists at the end ({} vanished in a restart: see lost)",
            vanished.join(", ")
        )
    }
}

/// The names of the subscriptions owed something, for the details.
fn owed_subs(owed: &[(&Message, &Epoch)]) -> String {
    let mut subs: Vec<&str> = owed.iter().map(|(_, e)| e.sub.as_str()).collect();
    subs.sort_unstable();
    subs.dedup();
    subs.join(", ")
}

/// Every owed message reached its subscription in its epoch (delivered there after the
/// notice that began the epoch, or dead-lettered from there). Messages of a subscription a
/// restart lost are lost with it. A declared loss forgives only messages whose publish
/// began before a crash.
pub(super) fn lost(entries: &[Entry], model: &Model, context: &Context) -> Check {
    let owed = model.owed();
    if owed.is_empty() {
        if let Some(why) = nothing_owed(model) {
            return nothing_examined("lost", why);
        }
        return result("lost", Vec::new(), none_owed(model));
    }
    let delivered = deliveries(entries);
    let dead = dead_lettered(entries);
    let (mut problems, mut forgiven) = (Vec::new(), Vec::new());
    for (message, epoch) in &owed {
        let (sub, since) = (epoch.sub.as_str(), epoch.since_ms(&message.place));
        if first_since(&delivered, sub, message, since).is_some() || first_since(&dead, sub, message, since).is_some() {
            continue;
        }
        let why = match epoch.end {
            End::Vanished(at) => format!(" (the subscription vanished in the restart at {at} ms)"),
            _ => String::new(),
        };
        let text = format!("{} ({}) never reached {}{why}", ids_of(message), message.message_id, epoch.sub);
        if context.loss_allowed && model.forgivable(message) {
            forgiven.push(text);
        } else {
            problems.push(Problem::new(text, &message.ids));
        }
    }
    let subs = owed_subs(&owed);
    if problems.is_empty() && !forgiven.is_empty() {
        let detail = format!(
            "{} owed to [{subs}]; {} lost, each published before a crash, as the scenario declares: {}",
            count(owed.len(), "message"),
            forgiven.len(),
            super::summary(&forgiven)
        );
        return Check { name: "lost (allowed)", passed: true, detail, ids: Vec::new() };
    }
    let ok = format!("{} owed to [{subs}], all delivered", count(owed.len(), "message"));
    result("lost", problems, ok)
}

/// Every owed message ends, on its subscription, acked there or dead-lettered from there
/// (after its epoch began), or is still in the subscription at the end (delivered there
/// during the final drain: a consumer that never acks in time keeps it going round). A
/// message the broker drops as done without an ack or a dead-letter copy is none of these.
pub(super) fn conservation(entries: &[Entry], model: &Model, context: &Context) -> Check {
    let owed: Vec<_> = model.owed().into_iter().filter(|(_, e)| e.end == End::Open).collect();
    if owed.is_empty() {
        if let Some(why) = nothing_owed(model) {
            return nothing_examined("conservation", why);
        }
        return result("conservation", Vec::new(), none_owed(model));
    }
    let mut acked: Seen = BTreeMap::new();
    // Acks sent minus acks answered: more than zero left means an answer never came, so
    // the ack may have been applied (indeterminate, like a lost publish answer).
    let mut unanswered: BTreeMap<(&str, &str, &str), i64> = BTreeMap::new();
    for e in entries {
        match &e.event {
            Event::AckSent { id, message_id, sub, op, .. } if op == "ack" => {
                *unanswered.entry((sub.as_str(), message_id.as_str(), id.as_str())).or_default() += 1;
            }
            Event::AckAnswered { id, message_id, sub, op, result, .. } if op == "ack" => {
                *unanswered.entry((sub.as_str(), message_id.as_str(), id.as_str())).or_default() -= 1;
                if result == "applied" {
                    acked.entry((sub.as_str(), message_id.as_str())).or_default().push((e.at_ms, id));
                }
            }
            _ => {}
        }
    }
    let delivered = deliveries(entries);
    let dead = dead_lettered(entries);
    let (mut finished, mut dead_count, mut going, mut unknown, mut forgiven) = (0, 0, 0, 0, 0);
    let mut problems = Vec::new();
    for (message, epoch) in &owed {
        let (sub, since) = (epoch.sub.as_str(), epoch.since_ms(&message.place));
        let unanswered_ack = unanswered
            .range((sub, message.message_id, "")..)
            .take_while(|((s, m, _), _)| *s == sub && *m == message.message_id)
            .any(|((.., id), n)| *n > 0 && message.is(id));
        if first_since(&acked, sub, message, since).is_some() {
            finished += 1;
        } else if first_since(&dead, sub, message, since).is_some() {
            finished += 1;
            dead_count += 1;
        } else if first_since(&delivered, sub, message, context.drain_from_ms.max(since)).is_some() {
            going += 1;
        } else if unanswered_ack {
            unknown += 1;
        } else if context.loss_allowed
            && model.forgivable(message)
            && first_since(&delivered, sub, message, since).is_none()
        {
            forgiven += 1;
        } else {
            let text = format!(
                "{} neither acked on {}, nor dead-lettered from it, nor still there",
                ids_of(message),
                epoch.sub
            );
            problems.push(Problem::new(text, &message.ids));
        }
    }
    let mut ok = format!(
        "{} owed: {finished} acked or dead-lettered ({dead_count} dead-lettered), {going} still going round at the end",
        count(owed.len(), "message")
    );
    // Only where it happened, so runs without lost answers read as before.
    if unknown > 0 {
        ok.push_str(&format!(", {unknown} acked with the answer lost"));
    }
    if forgiven > 0 {
        ok.push_str(&format!(", {forgiven} lost to a declared crash (see lost)"));
    }
    result("conservation", problems, ok)
}

/// After the last heal (`healed_at_ms`), every owed message not yet delivered in its epoch
/// arrives within `bound_ms` (of the heal, or of its publish's answer if later). A message
/// that never arrives fails it too, unless a declared loss forgives it.
pub(super) fn liveness(entries: &[Entry], model: &Model, context: &Context) -> Check {
    let owed: Vec<_> = model.owed().into_iter().filter(|(_, e)| e.end == End::Open).collect();
    let bound = context.bound_ms;
    if owed.is_empty() {
        if let Some(why) = nothing_owed(model) {
            return nothing_examined("liveness", why);
        }
        return result("liveness", Vec::new(), none_owed(model));
    }
    let delivered = deliveries(entries);
    let dead = dead_lettered(entries);
    let (mut slowest, mut waiting, mut problems) = (0, 0, Vec::new());
    for (message, epoch) in &owed {
        let (sub, since) = (epoch.sub.as_str(), epoch.since_ms(&message.place));
        let first = [first_since(&delivered, sub, message, since), first_since(&dead, sub, message, since)]
            .into_iter()
            .flatten()
            .min();
        let Some(at) = first else {
            if !(context.loss_allowed && model.forgivable(message)) {
                let text =
                    format!("{} never reached {} (bound {bound} ms after the last heal)", ids_of(message), epoch.sub);
                problems.push(Problem::new(text, &message.ids));
            }
            continue;
        };
        if at >= context.healed_at_ms {
            let after = at.saturating_sub(context.healed_at_ms.max(message.answered_ms));
            waiting += 1;
            slowest = slowest.max(after);
            if after > bound {
                let text = format!("{} reached {} {after} ms after the last heal", ids_of(message), epoch.sub);
                problems.push(Problem::new(text, &message.ids));
            }
        }
    }
    let ok = if waiting == 0 {
        format!("{}: all arrived before the last heal (bound {bound} ms)", count(owed.len(), "owed message"))
    } else {
        format!(
            "{}: {waiting} waiting at the last heal arrived within {slowest} ms (bound {bound} ms)",
            count(owed.len(), "owed message")
        )
    };
    result("liveness", problems, ok)
}
