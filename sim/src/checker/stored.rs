//! What is stored: nothing unpublished is delivered, one message per place, duplicates
//! counted, and idempotency keys stored once. Places are the broker's message ids, so a
//! topic deleted and created again (a new uid) never mixes with the old one.

use std::collections::{BTreeMap, BTreeSet};

use super::model::{Model, Place};
use super::{count, result, summary, Check, Problem};
use crate::history::{Entry, Event};

/// Deliveries of messages nobody published.
pub(super) fn unexpected(entries: &[Entry]) -> Check {
    let invoked: BTreeSet<&str> = entries
        .iter()
        .filter_map(|e| match &e.event {
            Event::PublishInvoked { id, .. } => Some(id.as_str()),
            _ => None,
        })
        .collect();
    let (mut examined, mut problems) = (0, Vec::new());
    for e in entries {
        if let Event::Delivered { id, sub, .. } = &e.event {
            examined += 1;
            if !invoked.contains(id.as_str()) {
                problems.push(Problem::new(format!("{sub} received `{id}`, never published"), &[id]));
            }
        }
    }
    result("unexpected", problems, format!("{}, each of a published message", count(examined, "delivery")))
}

/// Duplicates, allowed under at-least-once and counted: a stored message delivered again
/// to one subscription, and a publish stored more than once (a retry after a lost answer,
/// when it carries no idempotency key).
pub(super) fn duplicated(entries: &[Entry]) -> Check {
    let mut deliveries: BTreeMap<(&str, &str), u32> = BTreeMap::new();
    let mut stored: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for e in entries {
        match &e.event {
            Event::Delivered { id, message_id, sub, dead_letter, .. } => {
                *deliveries.entry((sub.as_str(), message_id.as_str())).or_default() += 1;
                // A dead-letter copy is stored in another topic on purpose.
                if dead_letter.is_none() {
                    stored.entry(id.as_str()).or_default().insert(message_id.as_str());
                }
            }
            Event::Published { id, message_id, duplicate: false, .. } => {
                stored.entry(id.as_str()).or_default().insert(message_id.as_str());
            }
            _ => {}
        }
    }
    let redelivered: u32 = deliveries.values().map(|n| n - 1).sum();
    let twice: usize = stored.values().map(|places| places.len() - 1).sum();
    let detail = format!(
        "{}: {redelivered} redeliveries; {}: {twice} stored more than once",
        count(deliveries.len(), "delivered place"),
        count(stored.len(), "publish")
    );
    Check { name: "duplicated (allowed)", passed: true, detail, ids: Vec::new() }
}

/// Two messages at one place (broker id). Where loss is declared, a place whose message a
/// broker crash lost may be taken by another: reported, not failed, when the first
/// holder's publish began before a crash.
pub(super) fn offsets(entries: &[Entry], model: &Model, loss_allowed: bool) -> Check {
    let mut at: BTreeMap<&str, &str> = BTreeMap::new();
    let (mut problems, mut reused) = (Vec::new(), Vec::new());
    let mut invoked: BTreeMap<&str, u64> = BTreeMap::new();
    for e in entries {
        let (message_id, id) = match &e.event {
            Event::PublishInvoked { id, .. } => {
                invoked.entry(id.as_str()).or_insert(e.at_ms);
                continue;
            }
            // A duplicate answer names another publish's place; duplicated-publish checks it.
            Event::Published { duplicate: true, .. } => continue,
            Event::Published { id, message_id, .. } | Event::Delivered { id, message_id, .. } => {
                (message_id.as_str(), id.as_str())
            }
            _ => continue,
        };
        let first = *at.entry(message_id).or_insert(id);
        if first == id {
            continue;
        }
        let text = format!("{message_id} holds both {first} and {id}");
        // The first holder's answer may reach its publisher after the crash that lost it.
        let first_invoked = invoked.get(first).copied().unwrap_or(u64::MAX);
        let lost_to_crash = model.crashes.iter().any(|c| first_invoked < *c && *c <= e.at_ms);
        if loss_allowed && lost_to_crash {
            if !reused.contains(&text) {
                reused.push(text);
            }
        } else if !problems.iter().any(|p: &Problem| p.text == text) {
            problems.push(Problem::new(text, &[first, id]));
        }
    }
    if problems.is_empty() && !reused.is_empty() {
        let detail =
            format!("{} examined; reused after a declared crash: {}", count(at.len(), "place"), summary(&reused));
        return Check { name: "offsets (allowed)", passed: true, detail, ids: Vec::new() };
    }
    result("offsets", problems, format!("{}, one message each", count(at.len(), "place")))
}

/// A stored message: publish time (wall ms) and its broker id.
type Stored<'a> = (u64, &'a str);

/// Idempotent publishing held: no two stored messages of a topic carry one idempotency
/// key within the dedupe window, and every publish answered `duplicate` names the place
/// of a message stored with its key.
pub(super) fn duplicated_publish(entries: &[Entry], window_ms: u64) -> Check {
    // Broker id -> (idempotency key, publish time, scenario id) of what is stored there.
    let mut stored: BTreeMap<&str, (Option<&str>, u64, &str)> = BTreeMap::new();
    for e in entries {
        if let Event::Delivered { id, message_id, idempotency_key, publish_ms, dead_letter: None, .. } = &e.event {
            stored.insert(message_id, (idempotency_key.as_deref(), *publish_ms, id));
        }
    }
    let topic_of = |message_id: &str| Place::of(message_id).map_or(0, |p| p.topic_uid);
    let mut problems = Vec::new();
    // (topic uid, key) -> each stored message with it.
    let mut by_key: BTreeMap<(u64, &str), Vec<Stored>> = BTreeMap::new();
    // (topic uid, scenario id) -> the places of a message that carried an idempotency key:
    // a retry must not store it again, whatever key the retry carried.
    let mut keyed_by_id: BTreeMap<(u64, &str), Vec<Stored>> = BTreeMap::new();
    for (&message_id, &(key, publish_ms, id)) in &stored {
        if let Some(key) = key {
            let topic = topic_of(message_id);
            by_key.entry((topic, key)).or_default().push((publish_ms, message_id));
            keyed_by_id.entry((topic, id)).or_default().push((publish_ms, message_id));
        }
    }
    let mut close_pairs = |what: String, ids: &[&str], mut places: Vec<Stored>| {
        places.sort_unstable();
        for pair in places.windows(2) {
            let ((t0, m0), (t1, m1)) = (pair[0], pair[1]);
            if t1 - t0 < window_ms {
                problems.push(Problem::new(format!("{what} at {m0} and {m1}, {} ms apart", t1 - t0), ids));
            }
        }
    };
    for ((topic, key), places) in by_key {
        let ids: Vec<&str> = places.iter().filter_map(|(_, m)| stored.get(m).map(|s| s.2)).collect();
        close_pairs(format!("topic uid {topic} stores idempotency key {key}"), &ids, places);
    }
    for ((topic, id), places) in keyed_by_id {
        close_pairs(
            format!("topic uid {topic} stores message {id}, published with an idempotency key,"),
            &[id],
            places,
        );
    }
    let mut answered = 0;
    for e in entries {
        let Event::Published { id, message_id, idempotency_key: Some(key), duplicate: true, .. } = &e.event else {
            continue;
        };
        answered += 1;
        if let Some((held, ..)) = stored.get(message_id.as_str()) {
            if *held != Some(key.as_str()) {
                let text =
                    format!("{id} was answered as a duplicate at {message_id}, which holds key {held:?}, not {key}");
                problems.push(Problem::new(text, &[id]));
            }
        }
    }
    let keyed = stored.values().filter(|(key, ..)| key.is_some()).count();
    let ok = format!(
        "{}: each idempotency key stored once; {answered} duplicate answers, each naming the original",
        super::count_of(keyed, "stored message", " with a key")
    );
    result("duplicated-publish", problems, ok)
}

/// Publishes the broker refused for good (a definite code, such as PERMISSION_DENIED or
/// INVALID_ARGUMENT, at the first attempt and every one after) must store nothing: no
/// such message is ever delivered or answered as stored. A message with any attempt whose
/// outcome is unknown (a timeout, a retry) is left out; with none left, there is no verdict.
pub(super) fn refused_stored(entries: &[Entry]) -> Option<Check> {
    let mut refused: BTreeSet<&str> = BTreeSet::new();
    let mut unsure: BTreeSet<&str> = BTreeSet::new();
    for e in entries {
        match &e.event {
            Event::PublishFailed { id, definite: true, .. } => {
                refused.insert(id.as_str());
            }
            Event::PublishFailed { id, definite: false, .. } | Event::Published { id, .. } => {
                unsure.insert(id.as_str());
            }
            Event::PublishInvoked { id, attempt, .. } if *attempt > 1 => {
                unsure.insert(id.as_str());
            }
            _ => {}
        }
    }
    let refused: BTreeSet<&str> = refused.difference(&unsure).copied().collect();
    if refused.is_empty() {
        return None;
    }
    let mut problems = Vec::new();
    for e in entries {
        if let Event::Delivered { id, sub, .. } = &e.event {
            if refused.contains(id.as_str()) {
                problems.push(Problem::new(format!("{sub} received `{id}`, whose publish was refused"), &[id]));
            }
        }
    }
    Some(result("refused-stored", problems, format!("{}, none delivered", count(refused.len(), "refused publish"))))
}
