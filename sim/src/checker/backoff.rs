//! Retry policies: a redelivery waits out its backoff, and a nacked message comes back
//! within it. Seeks and redrives (as the broker applied them) start over, and so does a
//! lease a closed stream released (it comes back at once, by design).

use std::collections::BTreeMap;

use mini_pubsub::core::Notice;

use super::{nothing_examined, result, Check, Problem, RetryBounds, Unsettled};
use crate::history::{Entry, Event};

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

/// On a subscription with a retry policy, delivery `n + 1` of a message comes no sooner
/// than its backoff after delivery `n` arrived, and, when delivery `n` was nacked (and the
/// nack applied), no later than its backoff after the nack was sent, give or take the
/// trips. Only pairs of deliveries the client saw in a settled stretch count (no fault in
/// place, the earlier one's stream not ended, no seek, redrive, crash or move to another
/// member between), with a slack for the link's latency: the client's clock stands in for
/// the broker's only there.
pub(super) fn backoff(entries: &[Entry], retry: &BTreeMap<String, RetryBounds>, unsettled: &Unsettled) -> Check {
    /// turmoil's largest default link latency, twice: the earlier delivery's trip, and one
    /// more for the order of events on the wire.
    const LINK_SLACK_MS: u64 = 200;
    /// The nack's trip, the broker's turn, and the redelivery's trip, with room to spare.
    const LATE_SLACK_MS: u64 = 400;
    if retry.is_empty() {
        return result("backoff", Vec::new(), "examined nothing: no subscription has a retry policy".to_string());
    }
    struct Last<'e> {
        attempt: u32,
        at_ms: u64,
        host: &'e str,
        stream: u64,
        generation: u64,
    }
    // By stored message: a publish retried without an idempotency key stores one id twice.
    let mut last: BTreeMap<(&str, &str), Last> = BTreeMap::new();
    let mut ended: Vec<(&str, &str, u64, u64)> = Vec::new();
    // Leases a closed stream released, as the broker saw it: (sub, partition, offset) -> when.
    let mut released: BTreeMap<(&str, u32, u64), Vec<u64>> = BTreeMap::new();
    // Nacks sent, by (sub, partition, offset, attempt): when; and those the broker applied.
    let mut nack_sent: BTreeMap<(&str, u32, u64, u32), u64> = BTreeMap::new();
    let mut nack_applied: BTreeMap<(&str, u32, u64, u32), u64> = BTreeMap::new();
    let (mut checked, mut candidates, mut tightest, mut problems) = (0, 0, u64::MAX, Vec::new());
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
            Event::Broker(Notice::Seeked { subscription, .. } | Notice::Redriven { subscription, .. }) => {
                last.retain(|(s, _), _| s != subscription);
            }
            Event::Broker(Notice::LeasesReleased { subscription, leases, .. }) => {
                for (partition, offset) in leases {
                    released.entry((subscription, *partition, *offset)).or_default().push(e.at_ms);
                }
            }
            Event::Crashed { .. } => last.clear(),
            Event::StreamFailed { sub, stream, .. } => ended.push((e.host.as_str(), sub.as_str(), *stream, e.at_ms)),
            Event::Delivered {
                id,
                message_id,
                sub,
                stream,
                partition,
                offset,
                attempt,
                dead_letter: None,
                generation,
                ..
            } => {
                let Some(bounds) = retry.get(sub) else { continue };
                let key = (sub.as_str(), message_id.as_str());
                if let Some(prev) = last.get(&key).filter(|p| p.attempt + 1 == *attempt) {
                    candidates += 1;
                    let window = (prev.at_ms.saturating_sub(LINK_SLACK_MS), e.at_ms);
                    let faulted = unsettled.faults.iter().any(|&(from, to)| from <= window.1 && to >= window.0);
                    let disconnected = unsettled
                        .disconnects
                        .iter()
                        .any(|(h, at)| h == prev.host && (window.0..=window.1).contains(at));
                    let stream_ended = ended.iter().any(|&(h, s, n, at)| {
                        h == prev.host && s == *sub && n == prev.stream && (window.0..=window.1).contains(&at)
                    });
                    // The broker released the lease when a stream closed, before the client
                    // noticed its stream was gone.
                    let released = released
                        .get(&(sub.as_str(), *partition, *offset))
                        .is_some_and(|times| times.iter().any(|at| (window.0..=window.1).contains(at)));
                    // On an exclusive subscription a partition that moved to another member
                    // takes its messages along at once, as a closed stream does.
                    let moved =
                        *generation != prev.generation && (e.host.as_str(), *stream) != (prev.host, prev.stream);
                    if !(faulted || disconnected || stream_ended || released || moved) {
                        let (gap, least) = (e.at_ms - prev.at_ms, bounds.least_gap_ms(prev.attempt));
                        checked += 1;
                        tightest = tightest.min((gap + LINK_SLACK_MS).saturating_sub(least));
                        if gap + LINK_SLACK_MS < least {
                            let text = format!(
                                "{id} attempt {attempt} reached {sub} {gap} ms after attempt {}; its backoff is {least} ms",
                                prev.attempt
                            );
                            problems.push(Problem::new(text, &[id]));
                        }
                        let nack = nack_applied.get(&(sub.as_str(), *partition, *offset, prev.attempt));
                        if let Some(sent) = nack.filter(|_| bounds.upper_bound) {
                            let (waited, most) = (e.at_ms.saturating_sub(*sent), bounds.backoff_ms(prev.attempt));
                            nacked += 1;
                            spare = spare.min((most + LATE_SLACK_MS).saturating_sub(waited));
                            if waited > most + LATE_SLACK_MS {
                                let text = format!(
                                    "{id} attempt {attempt} reached {sub} {waited} ms after attempt {} was nacked; its backoff is {most} ms",
                                    prev.attempt
                                );
                                problems.push(Problem::new(text, &[id]));
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
    if checked == 0 && candidates > 0 {
        let why = format!(
            "{candidates} redeliveries on subscriptions with a retry policy, none in a settled stretch (a fault, a disconnect or a closed stream between each and the delivery before it)"
        );
        return nothing_examined("backoff", why);
    }
    let mut ok = if checked == 0 {
        "examined nothing: no redelivery on a subscription with a retry policy".to_string()
    } else {
        format!("{checked} redeliveries waited out their backoff (closest by {tightest} ms)")
    };
    if nacked > 0 {
        ok.push_str(&format!("; {nacked} nacked ones came back within it (latest with {spare} ms to spare)"));
    }
    result("backoff", problems, ok)
}
