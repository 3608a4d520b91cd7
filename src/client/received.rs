//! A message a [`Subscriber`](super::Subscriber) received: its data, and the handle that
//! acks or nacks it.

use std::borrow::Borrow;
use std::fmt;
use std::ops::Deref;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use super::acks::NackKey;
use super::message::Message;
use crate::wire::pb;

/// Longest nack delay the broker accepts by default (`nack_delay_max_ms`); longer ones are
/// cut to it, since a refused request would end the whole stream.
pub const NACK_DELAY_MAX: Duration = Duration::from_secs(600);
/// Longest nack reason the broker accepts by default (`nack_reason_bytes_max`); longer ones
/// are cut to it (at a character boundary).
pub const NACK_REASON_BYTES_MAX: usize = 1024;

/// What the application decided about a message, on its way to the subscriber's task,
/// with where to tell the broker's answer when the application asked for it.
#[derive(Debug)]
pub(crate) enum Op {
    Ack { ack_id: LeaseId, epoch: u64, respond: Option<Responder> },
    Nack { ack_id: LeaseId, epoch: u64, key: NackKey, respond: Option<Responder> },
}

/// Where the broker's answer to one decision goes.
pub(crate) type Responder = oneshot::Sender<AckResponse>;

/// What the broker answered to an ack or a nack sent with
/// [`AckHandle::ack_with_response`] or [`AckHandle::nack_with_response`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AckResponse {
    /// Applied: an acked message is not delivered again; a nacked one comes back.
    Applied,
    /// The broker did not know the ack id (malformed, or not of this subscription).
    Invalid,
    /// The lease was gone (it expired, or a seek or a restart ended it): the decision did
    /// nothing, and the message comes again (or already came).
    Expired,
    /// No answer to tell: the subscriber stopped first, or the stream broke after the
    /// decision was sent and its resend on the next stream found the lease gone, so the
    /// first send may have been applied.
    Unknown,
}

impl AckResponse {
    /// The broker's answer, as a confirmation carries it; `resent` when the decision was
    /// sent again after a broken stream (an `Expired` then may hide an earlier `Applied`).
    pub(crate) fn of(confirmation: &pb::AckConfirmation, resent: bool) -> Self {
        match pb::AckResult::try_from(confirmation.result) {
            Ok(pb::AckResult::Applied) => AckResponse::Applied,
            Ok(pb::AckResult::Invalid) => AckResponse::Invalid,
            Ok(pb::AckResult::Expired) if !resent => AckResponse::Expired,
            _ => AckResponse::Unknown,
        }
    }
}

/// A lease's ack id, shared (not copied) by the message's handle, the lease extender and
/// the decisions on their way to the broker, with the flag set when the handle is dropped
/// without a decision. The lease is then no longer extended, whether or not the handle's
/// nack found room in the queue of decisions: a nack that did not fit would otherwise
/// leave the lease extended until `max_lease_extension`, and the message would not come
/// again until then.
///
/// Ordered and compared by its [`AckKey`], and `Borrow<AckKey>`, so maps keyed by it are
/// looked up with the key of a confirmation's ack id.
#[derive(Debug, Clone)]
pub(crate) struct LeaseId(Arc<LeaseIdInner>);

#[derive(Debug)]
struct LeaseIdInner {
    ack_id: String,
    key: AckKey,
    dropped: AtomicBool,
}

/// What the subscriber's maps are keyed by: the numbers of an ack id as the broker writes
/// them (`subscription-partition-offset-lease`), compared as four integers rather than as
/// text with a long common prefix. An ack id of another form is kept as text (after every
/// numeric one), so nothing depends on the form beyond speed.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum AckKey {
    Numbers([u64; 4]),
    Text(String),
}

impl AckKey {
    pub(crate) fn of(ack_id: &str) -> Self {
        crate::core::undashed::<4>(ack_id).map_or_else(|| AckKey::Text(ack_id.to_string()), AckKey::Numbers)
    }
}

impl LeaseId {
    pub(crate) fn new(ack_id: String) -> Self {
        let key = AckKey::of(&ack_id);
        Self(Arc::new(LeaseIdInner { ack_id, key, dropped: AtomicBool::new(false) }))
    }

    pub(crate) fn as_str(&self) -> &str {
        &self.0.ack_id
    }

    pub(crate) fn key(&self) -> &AckKey {
        &self.0.key
    }

    pub(crate) fn set_dropped(&self) {
        self.0.dropped.store(true, Ordering::Relaxed);
    }

    pub(crate) fn is_dropped(&self) -> bool {
        self.0.dropped.load(Ordering::Relaxed)
    }
}

impl Borrow<AckKey> for LeaseId {
    fn borrow(&self) -> &AckKey {
        self.key()
    }
}

impl PartialEq for LeaseId {
    fn eq(&self, other: &Self) -> bool {
        self.key() == other.key()
    }
}

impl Eq for LeaseId {}

impl PartialOrd for LeaseId {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for LeaseId {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.key().cmp(other.key())
    }
}

impl fmt::Display for LeaseId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
impl From<&str> for LeaseId {
    fn from(ack_id: &str) -> Self {
        Self::new(ack_id.to_string())
    }
}

#[cfg(test)]
impl PartialEq<&str> for LeaseId {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

/// How a nacked message comes back.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NackOptions {
    /// Redeliver after this long instead of the subscription's retry backoff (at most
    /// 600 s; longer is cut to 600 s). Unset: the retry policy's backoff, else at once.
    pub delay: Option<Duration>,
    /// Why; kept with the message if it is dead-lettered (cut to 1024 bytes).
    pub reason: Option<String>,
    /// Dead-letter the message now. On a subscription without a dead-letter policy (and on
    /// ephemeral ones) this is sent as an ordinary nack, with a warning, because the broker
    /// would refuse the request and end the stream.
    pub terminal: bool,
}

impl NackOptions {
    fn into_key(self) -> NackKey {
        let mut reason = self.reason.unwrap_or_default();
        if reason.len() > NACK_REASON_BYTES_MAX {
            let mut cut = NACK_REASON_BYTES_MAX;
            while !reason.is_char_boundary(cut) {
                cut -= 1;
            }
            reason.truncate(cut);
        }
        let delay_ms = self.delay.map(|d| d.min(NACK_DELAY_MAX).as_millis() as u64);
        NackKey { delay_ms, reason, terminal: self.terminal }
    }
}

/// Acks or nacks one received message. Dropped without either, it nacks the message (best
/// effort: if the subscriber's queue of decisions is full, or the subscriber is gone, its
/// lease is no longer extended and expires, and the message comes again).
///
/// The decision is queued and sent in a batch (see
/// [`SubscriberSettings::ack_batch_max`](super::SubscriberSettings::ack_batch_max)), so
/// `ack().await` returns before the broker has applied it; [`Subscriber::shutdown`]
/// (super::Subscriber::shutdown) waits for the broker's confirmations.
#[derive(Debug)]
pub struct AckHandle {
    /// Shared with the lease's entry in the subscriber's `Leases`.
    lease: LeaseId,
    /// The subscriber's lease epoch the message was received in (see `Shared::epoch`).
    epoch: u64,
    ops: mpsc::Sender<Op>,
    decided: bool,
}

impl AckHandle {
    pub(crate) fn new(lease: LeaseId, epoch: u64, ops: mpsc::Sender<Op>) -> Self {
        Self { lease, epoch, ops, decided: false }
    }

    /// The lease it decides on, shared with the lease extender.
    pub(crate) fn lease(&self) -> &LeaseId {
        &self.lease
    }

    /// Drops the handle without a decision: its lease is already gone.
    pub(crate) fn forget(mut self) {
        self.decided = true;
    }

    /// The lease's id, as the broker names it (`subscription-partition-offset-lease`).
    pub fn ack_id(&self) -> &str {
        self.lease.as_str()
    }

    /// Acknowledges the message: it will not be delivered again.
    pub async fn ack(mut self) {
        let op = Op::Ack { ack_id: self.lease.clone(), epoch: self.epoch, respond: None };
        self.decide(op).await;
    }

    /// Acknowledges the message and waits for the broker's answer (Pub/Sub's
    /// `ack_with_response`): [`AckResponse::Applied`] means it will not be delivered again.
    /// The answer comes with the next confirmation the broker sends, so this waits at
    /// least one round trip and up to the ack batch's flush.
    pub async fn ack_with_response(mut self) -> AckResponse {
        let (respond, answer) = oneshot::channel();
        let op = Op::Ack { ack_id: self.lease.clone(), epoch: self.epoch, respond: Some(respond) };
        self.decide(op).await;
        answer.await.unwrap_or(AckResponse::Unknown)
    }

    /// Gives the message back with options and waits for the broker's answer.
    pub async fn nack_with_response(mut self, options: NackOptions) -> AckResponse {
        let (respond, answer) = oneshot::channel();
        let key = options.into_key();
        let op = Op::Nack { ack_id: self.lease.clone(), epoch: self.epoch, key, respond: Some(respond) };
        self.decide(op).await;
        answer.await.unwrap_or(AckResponse::Unknown)
    }

    /// Gives the message back for redelivery (after the retry policy's backoff, if any).
    pub async fn nack(self) {
        self.nack_with(NackOptions::default()).await;
    }

    /// Gives the message back with options: a delay, a reason, or terminal.
    pub async fn nack_with(mut self, options: NackOptions) {
        let key = options.into_key();
        let op = Op::Nack { ack_id: self.lease.clone(), epoch: self.epoch, key, respond: None };
        self.decide(op).await;
    }

    async fn decide(&mut self, op: Op) {
        self.decided = true;
        // Waits while the subscriber's queue of decisions is full. If the subscriber has
        // shut down or failed, its stream and so this lease are gone: nothing left to tell.
        let _ = self.ops.send(op).await;
    }
}

impl Drop for AckHandle {
    fn drop(&mut self) {
        if !self.decided {
            self.lease.set_dropped();
            let ack_id = self.lease.clone();
            let _ = self.ops.try_send(Op::Nack { ack_id, epoch: self.epoch, key: NackKey::default(), respond: None });
        }
    }
}

/// A received message: its data (through `Deref` to [`Message`]) and its [`AckHandle`].
///
/// ```no_run
/// # async fn example(mut subscriber: mini_pubsub::client::Subscriber) -> Result<(), mini_pubsub::client::ClientError> {
/// use std::time::Duration;
/// use tokio_stream::StreamExt;
///
/// while let Some(message) = subscriber.next().await {
///     let message = message?;
///     if message.value.is_empty() {
///         message.nack_with_delay(Duration::from_secs(5)).await;
///     } else {
///         println!("{}:{} {}", message.partition, message.offset, message.value_lossy());
///         message.ack().await;
///     }
/// }
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
pub struct ReceivedMessage {
    message: Message,
    handle: AckHandle,
}

impl ReceivedMessage {
    pub(crate) fn new(message: Message, handle: AckHandle) -> Self {
        Self { message, handle }
    }

    /// The message's data.
    pub fn message(&self) -> &Message {
        &self.message
    }

    /// The lease's id.
    pub fn ack_id(&self) -> &str {
        self.handle.ack_id()
    }

    /// Its lease, shared with the handle (which tells whether it was dropped undecided).
    pub(crate) fn lease(&self) -> &LeaseId {
        self.handle.lease()
    }

    /// The lease epoch it was received in.
    pub(crate) fn epoch(&self) -> u64 {
        self.handle.epoch
    }

    /// Drops the message without a decision: its lease is already gone.
    pub(crate) fn forget(self) {
        self.handle.forget();
    }

    /// Splits the data from the handle, to pass the data on and decide later.
    pub fn into_parts(self) -> (Message, AckHandle) {
        (self.message, self.handle)
    }

    /// Acknowledges the message.
    pub async fn ack(self) {
        self.handle.ack().await;
    }

    /// Gives the message back for redelivery.
    pub async fn nack(self) {
        self.handle.nack().await;
    }

    /// Gives the message back, to be redelivered after `delay` (at most 600 s).
    pub async fn nack_with_delay(self, delay: Duration) {
        self.handle.nack_with(NackOptions { delay: Some(delay), ..Default::default() }).await;
    }

    /// Gives the message back with options.
    pub async fn nack_with(self, options: NackOptions) {
        self.handle.nack_with(options).await;
    }

    /// Acknowledges the message and waits for the broker's answer.
    pub async fn ack_with_response(self) -> AckResponse {
        self.handle.ack_with_response().await
    }

    /// Gives the message back with options and waits for the broker's answer.
    pub async fn nack_with_response(self, options: NackOptions) -> AckResponse {
        self.handle.nack_with_response(options).await
    }
}

impl Deref for ReceivedMessage {
    type Target = Message;

    fn deref(&self) -> &Message {
        &self.message
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lease_ids_are_ordered_by_the_numbers_of_their_ack_ids_and_others_come_after() {
        let ids = ["1-0-10-3", "x", "1-0-9-4", "2-0-0-1", "1-1-0-2", "1-0-9", "1-0-9-18446744073709551616"];
        let mut sorted: Vec<LeaseId> = ids.iter().map(|&id| LeaseId::from(id)).collect();
        sorted.sort();
        let texts: Vec<&str> = sorted.iter().map(LeaseId::as_str).collect();
        assert_eq!(texts, ["1-0-9-4", "1-0-10-3", "1-1-0-2", "2-0-0-1", "1-0-9", "1-0-9-18446744073709551616", "x"]);
        let held: std::collections::BTreeSet<LeaseId> = sorted.into_iter().collect();
        for id in ids {
            assert!(held.contains(&AckKey::of(id)), "{id} is found by the key of its text");
        }
        assert!(!held.contains(&AckKey::of("1-0-9-5")));
    }

    #[test]
    fn a_long_reason_is_cut_at_a_character_boundary_and_a_long_delay_to_the_limit() {
        let options =
            NackOptions { delay: Some(Duration::from_secs(3600)), reason: Some("é".repeat(600)), terminal: false };
        let key = options.into_key();
        assert_eq!(key.delay_ms, Some(600_000));
        assert_eq!(key.reason.len(), 1024);
    }
}
