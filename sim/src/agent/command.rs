//! What the scenario driver tells an app to do: the commands, and the specs of its
//! `publish`, `subscribe` and `nack` steps.

use std::time::Duration;

use mini_pubsub::wire::pb;

/// Something the driver tells an app to do.
#[derive(Debug, Clone)]
pub enum Command {
    CreateTopic {
        topic: String,
        partitions: u32,
    },
    DeleteTopic {
        topic: String,
    },
    CreateSub {
        sub: String,
        topic: String,
        ack_deadline_s: u32,
        latest: bool,
        /// Minimum and maximum backoff, when the subscription has a retry policy.
        retry: Option<(Option<Duration>, Option<Duration>)>,
        /// Dead-letter topic and max delivery attempts (0 = the broker default).
        dead_letter: Option<(String, u32)>,
        /// Message ordering by key.
        ordered: bool,
        /// Partition-exclusive delivery (a consumer group).
        exclusive: bool,
    },
    DeleteSub {
        sub: String,
    },
    Seek {
        sub: String,
        latest: bool,
    },
    /// Move up to `max` dead letters read by `sub` back to their subscriptions.
    Redrive {
        sub: String,
        max: u32,
    },
    Publish(PublishSpec),
    Subscribe {
        sub: String,
        ack: AckMode,
        ack_delay: Duration,
        max_outstanding: u32,
        /// How its nacks are sent (`ack=nack`, `nack-all`, `reject`).
        nack: NackSpec,
        /// Session timeout on an exclusive subscription (`None`: the broker default).
        session: Option<Duration>,
        /// Consume through the client library's `Subscriber` (`via=library`).
        library: bool,
    },
    Disconnect,
    /// Ack the oldest held message (`all: false`) or every held message.
    Ack {
        all: bool,
    },
    /// Nack every held message.
    Nack(NackSpec),
    /// Change the deadline of every held message (they stay held).
    Modack {
        seconds: u32,
    },
    /// Pull and ack everything left on these subscriptions until the run ends (the final
    /// drain, so that what is never read counts as lost only if it cannot be read).
    Drain {
        subs: Vec<String>,
    },
}

/// What a subscriber does with each message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AckMode {
    /// Ack every message.
    All,
    /// Never ack: leases expire and messages come back.
    None,
    /// Nack the first delivery, ack the redeliveries.
    Nack,
    /// Nack every delivery: the message comes back until it is dead-lettered.
    NackAll,
    /// Nack every delivery as terminal: dead-lettered at once.
    Reject,
    /// Hold every message until an `ack`, `nack` or `modack` step says what to do.
    Manual,
}

/// What a nack carries beside its ack id.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NackSpec {
    pub delay: Option<Duration>,
    pub reason: String,
    pub terminal: bool,
}

impl NackSpec {
    pub(super) fn request(&self, ack_id: String) -> pb::SubscribeRequest {
        pb::SubscribeRequest {
            nack_ids: vec![ack_id],
            nack_delay: self
                .delay
                .map(|d| prost_types::Duration { seconds: d.as_secs() as i64, nanos: d.subsec_nanos() as i32 }),
            nack_reason: self.reason.clone(),
            nack_terminal: self.terminal,
            ..Default::default()
        }
    }
}

/// A `publish` step.
#[derive(Debug, Clone)]
pub struct PublishSpec {
    pub topic: String,
    pub key: Option<String>,
    pub value: Option<String>,
    pub size: usize,
    pub count: u64,
    pub every: Duration,
    pub partition: Option<u32>,
    /// The idempotency key of a single message, or the stem of `stem-1`, `stem-2`... for
    /// several. A retry resends the same key.
    pub idempotency_key: Option<String>,
    /// Publish through the client library's `Publisher` (`via=library`): it batches, keys
    /// every message and retries on its own, instead of one request per message here.
    pub library: bool,
}

impl PublishSpec {
    /// The value and idempotency key of message `i` (from 0), whose id is `id`: the value
    /// (the id unless given) padded with dots to `size`; a key stem becomes `stem-1`,
    /// `stem-2`... when several messages are sent.
    pub(super) fn nth(&self, i: u64, id: &str) -> (String, Option<String>) {
        let mut value = self.value.clone().unwrap_or_else(|| id.to_string());
        if value.len() < self.size {
            value.extend(std::iter::repeat_n('.', self.size - value.len()));
        }
        let idempotency_key = match &self.idempotency_key {
            Some(stem) if self.count > 1 => Some(format!("{stem}-{}", i + 1)),
            other => other.clone(),
        };
        (value, idempotency_key)
    }
}
