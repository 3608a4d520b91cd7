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

/// turmoil's largest default link latency, twice: the earlier delivery's trip, and one
/// more for the order of events on the wire.
const LINK_SLACK_MS: u64 = 200;
/// The nack's trip, the broker's turn, and the redelivery's trip, with room to spare.
const LATE_SLACK_MS: u64 = 400;

/// On a subscription with a retry policy, delivery `n + 1` of a message comes no sooner
/// than its backoff after delivery `n` arrived, and, when delivery `n` was nacked (and the
/// nack applied), no later than its backoff after the nack was sent, give or take the
/// trips. Only pairs of deliveries the client saw in a settled stretch count (no fault in
/// place, the earlier one's stream not ended, no seek, redrive, crash or move to another
/// member between), with a slack for the link's latency: the client's clock stands in for
/// the broker's only there.
pub(super) fn backoff(entries: &[Entry], retry: &BTreeMap<String, RetryBounds>, unsettled: &Unsettled) -> Check {
    if retry.is_empty() {
        return result("backoff", Vec::new(), "examined nothing: no subscription has a retry policy".to_string());
    }
    let mut walk = Walk { retry, unsettled, seen: Seen::default(), tally: Tally::default() };
    for e in entries {
        walk.entry(e);
    }
    walk.tally.verdict()
}

/// A delivery as the client saw it: what the next delivery of its message is measured from.
#[derive(Clone, Copy)]
struct Delivery<'e> {
    attempt: u32,
    at_ms: u64,
    host: &'e str,
    stream: u64,
    generation: u64,
}

/// A delivery that came right after an earlier one of the same message (`attempt` one more).
struct Redelivery<'e> {
    id: &'e str,
    sub: &'e str,
    partition: u32,
    offset: u64,
    prev: Delivery<'e>,
    this: Delivery<'e>,
}

/// What the history told so far that decides whether a redelivery counts, and its bounds.
#[derive(Default)]
struct Seen<'e> {
    /// The last delivery of each stored message, by (sub, message id): a publish retried
    /// without an idempotency key stores one id twice. Seeks, redrives and crashes clear it.
    last: BTreeMap<(&'e str, &'e str), Delivery<'e>>,
    /// Streams the client saw fail: (host, sub, stream, when).
    ended: Vec<(&'e str, &'e str, u64, u64)>,
    /// Leases a closed stream released, as the broker saw it: (sub, partition, offset) -> when.
    released: BTreeMap<(&'e str, u32, u64), Vec<u64>>,
    /// Nacks sent, by (sub, partition, offset, attempt): when.
    nack_sent: BTreeMap<(&'e str, u32, u64, u32), u64>,
    /// The nacks sent that the broker applied: when each was sent.
    nack_applied: BTreeMap<(&'e str, u32, u64, u32), u64>,
}

/// The redeliveries examined so far, how close they came to their bounds, and the problems.
struct Tally {
    /// Redeliveries of a delivery the client saw, settled or not.
    candidates: u64,
    /// Those in a settled stretch, held to the least gap.
    checked: u64,
    /// The smallest margin (ms) by which a checked redelivery kept its least gap.
    tightest: u64,
    /// Checked redeliveries after an applied nack, held to the most time.
    nacked: u64,
    /// The smallest margin (ms) by which a nacked one came back in time.
    spare: u64,
    problems: Vec<Problem>,
}

impl Default for Tally {
    fn default() -> Self {
        Tally { candidates: 0, checked: 0, tightest: u64::MAX, nacked: 0, spare: u64::MAX, problems: Vec::new() }
    }
}

/// The check's walk through the history, one entry at a time.
struct Walk<'e> {
    retry: &'e BTreeMap<String, RetryBounds>,
    unsettled: &'e Unsettled,
    seen: Seen<'e>,
    tally: Tally,
}

impl<'e> Walk<'e> {
    /// Notes what an entry tells (nacks, seeks, redrives, released leases, crashes, ended
    /// streams) and judges a redelivery on a subscription with a retry policy.
    fn entry(&mut self, e: &'e Entry) {
        let seen = &mut self.seen;
        match &e.event {
            Event::AckSent { sub, op, partition, offset, attempt, .. } if op == "nack" => {
                seen.nack_sent.insert((sub.as_str(), *partition, *offset, *attempt), e.at_ms);
            }
            Event::AckAnswered { sub, op, partition, offset, attempt, result, .. }
                if op == "nack" && result == "applied" =>
            {
                let key = (sub.as_str(), *partition, *offset, *attempt);
                if let Some(sent) = seen.nack_sent.get(&key) {
                    seen.nack_applied.insert(key, *sent);
                }
            }
            Event::Broker(Notice::Seeked { subscription, .. } | Notice::Redriven { subscription, .. }) => {
                seen.last.retain(|(s, _), _| s != subscription);
            }
            Event::Broker(Notice::LeasesReleased { subscription, leases, .. }) => {
                for (partition, offset) in leases {
                    seen.released.entry((subscription, *partition, *offset)).or_default().push(e.at_ms);
                }
            }
            Event::Crashed { .. } => seen.last.clear(),
            Event::StreamFailed { sub, stream, .. } => {
                seen.ended.push((e.host.as_str(), sub.as_str(), *stream, e.at_ms));
            }
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
                let Some(bounds) = self.retry.get(sub) else { return };
                let key = (sub.as_str(), message_id.as_str());
                let this = Delivery {
                    attempt: *attempt,
                    at_ms: e.at_ms,
                    host: e.host.as_str(),
                    stream: *stream,
                    generation: *generation,
                };
                // Taken out and put back below: the next delivery is measured from this one.
                let prev = seen.last.remove(&key).filter(|p| p.attempt + 1 == *attempt);
                if let Some(prev) = prev {
                    let redelivery = Redelivery { id, sub, partition: *partition, offset: *offset, prev, this };
                    self.redelivered(bounds, &redelivery);
                }
                self.seen.last.insert(key, this);
            }
            _ => {}
        }
    }

    /// Holds a redelivery to its bounds, when it came in a settled stretch.
    fn redelivered(&mut self, bounds: &RetryBounds, r: &Redelivery<'e>) {
        self.tally.candidates += 1;
        if !self.seen.settled(self.unsettled, r) {
            return;
        }
        self.tally.too_soon(bounds, r);
        let nack = self.seen.nack_applied.get(&(r.sub, r.partition, r.offset, r.prev.attempt));
        if let Some(sent) = nack.filter(|_| bounds.upper_bound) {
            self.tally.too_late(bounds, r, *sent);
        }
    }
}

impl Seen<'_> {
    /// Whether nothing between the two deliveries (give or take the link's slack) could
    /// have made the broker send the message again sooner than its backoff.
    fn settled(&self, unsettled: &Unsettled, r: &Redelivery) -> bool {
        let (prev, this) = (&r.prev, &r.this);
        let window = (prev.at_ms.saturating_sub(LINK_SLACK_MS), this.at_ms);
        let faulted = unsettled.faulted(window.0, window.1);
        let disconnected =
            unsettled.disconnects.iter().any(|(h, at)| h == prev.host && (window.0..=window.1).contains(at));
        let stream_ended = self.ended.iter().any(|&(h, s, n, at)| {
            h == prev.host && s == r.sub && n == prev.stream && (window.0..=window.1).contains(&at)
        });
        // The broker released the lease when a stream closed, before the client noticed its
        // stream was gone.
        let released = self
            .released
            .get(&(r.sub, r.partition, r.offset))
            .is_some_and(|times| times.iter().any(|at| (window.0..=window.1).contains(at)));
        // On an exclusive subscription a partition that moved to another member takes its
        // messages along at once, as a closed stream does.
        let moved = this.generation != prev.generation && (this.host, this.stream) != (prev.host, prev.stream);
        !(faulted || disconnected || stream_ended || released || moved)
    }
}

impl Tally {
    /// The least-gap bound: the redelivery came no sooner than the backoff (or the nack's
    /// delay) after the earlier delivery, less the link's slack.
    fn too_soon(&mut self, bounds: &RetryBounds, r: &Redelivery) {
        let (gap, least) = (r.this.at_ms - r.prev.at_ms, bounds.least_gap_ms(r.prev.attempt));
        self.checked += 1;
        self.tightest = self.tightest.min((gap + LINK_SLACK_MS).saturating_sub(least));
        if gap + LINK_SLACK_MS < least {
            let (id, attempt, sub) = (r.id, r.this.attempt, r.sub);
            let text = format!(
                "{id} attempt {attempt} reached {sub} {gap} ms after attempt {}; its backoff is {least} ms",
                r.prev.attempt
            );
            self.problems.push(Problem::new(text, &[id]));
        }
    }

    /// The most-time bound: a redelivery after an applied nack (sent at `sent`) came within
    /// the backoff, plus the trips' slack.
    fn too_late(&mut self, bounds: &RetryBounds, r: &Redelivery, sent: u64) {
        let (waited, most) = (r.this.at_ms.saturating_sub(sent), bounds.backoff_ms(r.prev.attempt));
        self.nacked += 1;
        self.spare = self.spare.min((most + LATE_SLACK_MS).saturating_sub(waited));
        if waited > most + LATE_SLACK_MS {
            let (id, attempt, sub) = (r.id, r.this.attempt, r.sub);
            let text = format!(
                "{id} attempt {attempt} reached {sub} {waited} ms after attempt {} was nacked; its backoff is {most} ms",
                r.prev.attempt
            );
            self.problems.push(Problem::new(text, &[id]));
        }
    }

    /// The check's result: its problems, or how many redeliveries kept their bounds and by
    /// how much; a failure when there were redeliveries but none in a settled stretch.
    fn verdict(self) -> Check {
        let Tally { candidates, checked, tightest, nacked, spare, problems } = self;
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
}
