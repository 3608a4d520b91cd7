//! ListPending: every message a subscription has delivered and not yet finished, and
//! where it is (leased to whom until when, waiting out a backoff, ready, or on its way to
//! the dead-letter topic): what answers "why did this message not arrive?".

use super::broker::Broker;
use super::error::BrokerError;
use super::lease::StreamId;
use super::name;

/// Where a delivered, unfinished message is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PendingState {
    /// Leased to a stream until its deadline. `None`: to a Pull, or detached (its
    /// stream closed and the lease waits for its client, named in `client_id`).
    Leased {
        /// The stream that holds it; `None` for a Pull or a detached lease.
        stream: Option<StreamId>,
        /// Time left before its deadline.
        expires_in_ms: u64,
    },
    /// Its lease ended unacked; it waits out a retry backoff.
    Backoff {
        /// Time left before it is offered again.
        ready_in_ms: u64,
    },
    /// Ready for redelivery, waiting for a member with room.
    Ready,
    /// Copied to the dead-letter topic; done once the copy is synced.
    DeadLettering,
    /// Held back until an earlier message of its ordering key is acked or dead-lettered.
    KeyBlocked,
}

/// A page of [`Broker::list_pending`], and the position after which the next page starts
/// (`None` on the last page).
pub type PendingPage = (Vec<PendingMessage>, Option<(u32, u64)>);

/// One row of [`Broker::list_pending`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingMessage {
    /// The message's id.
    pub message_id: String,
    /// Its partition.
    pub partition: u32,
    /// Its offset.
    pub offset: u64,
    /// Deliveries so far (the current one included when leased).
    pub delivery_attempts: u32,
    /// Where it is now.
    pub state: PendingState,
    /// Leased: the client id of the stream that holds it, or of the closed stream whose
    /// client it waits for (detached).
    pub client_id: Option<String>,
}

impl Broker {
    /// Up to `limit` unfinished messages of `subscription` in (partition, offset) order,
    /// after `after`; the second value is the last position returned when more may follow.
    pub(super) fn list_pending(
        &self,
        now_ms: u64,
        subscription: &str,
        after: Option<(u32, u64)>,
        limit: usize,
    ) -> Result<PendingPage, BrokerError> {
        name::check("subscription", subscription)?;
        let sub = self.subscription_by_name(subscription)?;
        let topic = self.topic(&sub.topic)?;
        let mut page: Vec<PendingMessage> = Vec::new();
        let first = after.map_or(0, |(p, _)| p as usize);
        for (p, cursor) in sub.cursors.iter().enumerate().skip(first) {
            let from = match after {
                Some((ap, ao)) if ap as usize == p => ao.saturating_add(1),
                _ => 0,
            };
            // Each state's offsets are sorted; the page needs the smallest of their union.
            let want = limit + 1 - page.len();
            let mut rows: Vec<(u64, PendingState)> = Vec::new();
            rows.extend(cursor.leased.range(from..).take(want).map(|(o, l)| {
                let open = l.stream.filter(|s| self.streams.contains_key(s));
                (*o, PendingState::Leased { stream: open, expires_in_ms: l.deadline_ms.saturating_sub(now_ms) })
            }));
            rows.extend(
                cursor
                    .delayed
                    .range(from..)
                    .take(want)
                    .map(|(o, r)| (*o, PendingState::Backoff { ready_in_ms: r.saturating_sub(now_ms) })),
            );
            rows.extend(cursor.pending.range(from..).take(want).map(|o| (*o, PendingState::Ready)));
            rows.extend(cursor.in_transit.range(from..).take(want).map(|o| (*o, PendingState::DeadLettering)));
            rows.extend(cursor.keys.parked_from(from).take(want).map(|o| (o, PendingState::KeyBlocked)));
            rows.sort_unstable_by_key(|(offset, _)| *offset);
            rows.truncate(want);
            page.extend(rows.into_iter().map(|(offset, state)| PendingMessage {
                message_id: topic.message_id(p as u32, offset),
                partition: p as u32,
                offset,
                delivery_attempts: cursor.attempts.get(&offset).copied().unwrap_or(0),
                state,
                client_id: self.lease_client(cursor.leased.get(&offset).and_then(|l| l.stream)),
            }));
            if page.len() > limit {
                break;
            }
        }
        let more = page.len() > limit;
        page.truncate(limit);
        let next = if more { page.last().map(|m| (m.partition, m.offset)) } else { None };
        Ok((page, next))
    }

    /// The client id of a lease's stream, open or detached.
    fn lease_client(&self, stream: Option<StreamId>) -> Option<String> {
        let stream = stream?;
        let state = self.streams.get(&stream).or_else(|| self.detached.get(&stream))?;
        state.client_id.clone()
    }
}
