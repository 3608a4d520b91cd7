//! The broker core's settings: defaults and every bound, with what happens when it is hit.

use super::dedupe::{DEDUPE_WINDOW_MS_MAX, DEDUPE_WINDOW_MS_MIN};
use super::error::BrokerError;

/// The most `idempotency_key_bytes_max` may allow: keys are held in memory for the whole
/// dedupe window, in up to `dedupe_keys_max` entries per topic.
const IDEMPOTENCY_KEY_BYTES_LIMIT: usize = 1024;

/// Settings of the broker core. Every bound says what happens when it is reached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerConfig {
    /// Create a topic on its first publish (with `default_partitions`). When false, a
    /// publish to an unknown topic is refused with NOT_FOUND.
    pub auto_create_topics: bool,
    /// Partitions of a topic created without a count.
    pub default_partitions: u32,
    /// Most partitions a topic may have; more is INVALID_ARGUMENT.
    pub partitions_max: u32,
    /// Most topics; creating another is RESOURCE_EXHAUSTED.
    pub topics_max: usize,
    /// Most subscriptions, ephemeral ones included; another is RESOURCE_EXHAUSTED.
    pub subscriptions_max: usize,
    /// Most open Subscribe streams; another is RESOURCE_EXHAUSTED.
    pub streams_max: usize,
    /// Largest message (value + key + attribute keys and values); larger is INVALID_ARGUMENT.
    pub max_message_bytes: usize,
    /// Most attributes on one message; more is INVALID_ARGUMENT.
    pub attributes_max: usize,
    /// Most messages in one publish request; more is INVALID_ARGUMENT.
    pub publish_batch_messages_max: usize,
    /// Lease length of subscriptions created without one.
    pub ack_deadline_ms: u64,
    /// Longest lease a subscription or a ModifyAckDeadline may ask for.
    pub ack_deadline_max_ms: u64,
    /// Backoff after the first failed delivery, for a retry policy that leaves it unset.
    pub retry_minimum_backoff_ms: u64,
    /// Longest backoff, for a retry policy that leaves it unset.
    pub retry_maximum_backoff_ms: u64,
    /// Longest backoff or nack delay anyone may ask for; more is INVALID_ARGUMENT.
    pub nack_delay_max_ms: u64,
    /// Longest nack reason (it travels with a dead-letter copy); longer is INVALID_ARGUMENT.
    pub nack_reason_bytes_max: usize,
    /// Deliveries before dead-lettering, for a dead-letter policy that leaves it unset.
    pub max_delivery_attempts: u32,
    /// Most deliveries a dead-letter policy may allow; more is INVALID_ARGUMENT.
    pub max_delivery_attempts_max: u32,
    /// How far behind its committed offset a redrive may put a message back, in offsets
    /// (every offset between is remembered as acked); farther ones are left in the
    /// dead-letter topic and reported.
    pub redrive_rewind_offsets_max: u64,
    /// Messages one partition of an ordered subscription may hold back behind the
    /// unfinished messages of their keys. Past it the partition delivers nothing new until
    /// a key moves on (head-of-line blocking), so the held-back set stays bounded.
    pub ordered_parked_messages_max: usize,
    /// A stream's `max_outstanding_messages` when it asks for 0.
    pub max_outstanding_messages: u32,
    /// A stream's `max_outstanding_bytes` when it asks for 0.
    pub max_outstanding_bytes: u64,
    /// Most messages one Pull may return (and the cap on a stream's outstanding messages).
    pub pull_messages_max: u32,
    /// Most bytes in one Pull or Subscribe response, counting each message's envelope (ids,
    /// topic, framing): past it a Subscribe delivery is split into several responses and a
    /// Pull returns fewer messages (one always fits). It stays under the 4 MiB that gRPC
    /// clients accept by default.
    pub response_bytes_max: usize,
    /// Retained bytes per partition; past it the oldest messages are dropped (the log start
    /// moves), as Kafka's `retention.bytes`.
    pub partition_retention_bytes: u64,
    /// How long a message is kept, by publish time; older ones are dropped (whole segments
    /// in the file log), as Kafka's `retention.ms`. `None` keeps them until size retention.
    pub partition_retention_ms: Option<u64>,
    /// How long an idempotency key is remembered after its message's publish time, for
    /// topics created without a window of their own (JetStream's `duplicate_window`).
    /// Within it a publish with the same key stores nothing and gets the original's place.
    pub dedupe_window_ms: u64,
    /// Most entries a topic's dedupe index holds at once, since memory is what it protects.
    /// A key has an entry of its own, but keys `{prefix}-{n}` (n a decimal number without
    /// leading zeros, as the client's `Publisher` numbers them) published in order count
    /// once per batch per partition: a run of them is one entry. A publish that would add
    /// entries past it is refused with RESOURCE_EXHAUSTED (and stores nothing) until older
    /// keys expire: forgetting a key early would silently store a retry twice.
    pub dedupe_keys_max: usize,
    /// Most dedupe entries all topics hold together: the per-topic bound times the number
    /// of topics would not bound the broker's memory. A publish whose new keys would pass it
    /// is refused with RESOURCE_EXHAUSTED, as at the per-topic bound; when the broker opens,
    /// each topic's rebuilt index keeps its newest entries within what is left of it.
    pub dedupe_keys_broker_max: usize,
    /// Longest idempotency key, in bytes; longer is INVALID_ARGUMENT.
    pub idempotency_key_bytes_max: usize,
    /// How long a member of an exclusive subscription may send nothing (no ack, no empty
    /// heartbeat request) when it asks for no session timeout of its own. Past it the
    /// member's stream is ended with ABORTED and its partitions go to the other members.
    pub session_timeout_ms: u64,
    /// Longest session timeout a member may ask for; more is INVALID_ARGUMENT.
    pub session_timeout_max_ms: u64,
    /// A defect a test put in on purpose (see [`Mutation`](super::Mutation)): debug
    /// builds with the `mutations` feature only, never a setting.
    #[cfg(all(feature = "mutations", debug_assertions))]
    pub mutation: Option<super::Mutation>,
}

impl Default for BrokerConfig {
    fn default() -> Self {
        Self {
            auto_create_topics: true,
            default_partitions: 1,
            partitions_max: 1024,
            topics_max: 10_000,
            subscriptions_max: 10_000,
            streams_max: 10_000,
            max_message_bytes: 1024 * 1024,
            attributes_max: 100,
            publish_batch_messages_max: 1000,
            ack_deadline_ms: 30_000,
            ack_deadline_max_ms: 600_000,
            retry_minimum_backoff_ms: 1000,
            retry_maximum_backoff_ms: 60_000,
            nack_delay_max_ms: 600_000,
            nack_reason_bytes_max: 1024,
            max_delivery_attempts: 5,
            max_delivery_attempts_max: 100,
            redrive_rewind_offsets_max: 100_000,
            ordered_parked_messages_max: 10_000,
            max_outstanding_messages: 1000,
            max_outstanding_bytes: 100 * 1024 * 1024,
            pull_messages_max: 1000,
            response_bytes_max: 3 * 1024 * 1024 + 512 * 1024,
            partition_retention_bytes: 1024 * 1024 * 1024,
            partition_retention_ms: Some(7 * 24 * 3600 * 1000),
            dedupe_window_ms: 120_000,
            dedupe_keys_max: 100_000,
            dedupe_keys_broker_max: 1_000_000,
            idempotency_key_bytes_max: 256,
            session_timeout_ms: 10_000,
            session_timeout_max_ms: 300_000,
            #[cfg(all(feature = "mutations", debug_assertions))]
            mutation: None,
        }
    }
}

/// `Ok` when `ok`, else a refusal naming `key` and what it must be.
fn check(ok: bool, key: &'static str, allowed: &str) -> Result<(), BrokerError> {
    if ok {
        Ok(())
    } else {
        Err(BrokerError::InvalidArgument { field: key, reason: format!("must be {allowed}") })
    }
}

impl BrokerConfig {
    /// Refuses settings that cannot work, naming the key and the allowed range.
    pub fn validate(&self) -> Result<(), BrokerError> {
        self.validate_limits()?;
        self.validate_delivery()?;
        self.validate_retention_and_dedupe()
    }

    /// Counts and sizes: partitions, topics, subscriptions, streams, messages, batches.
    fn validate_limits(&self) -> Result<(), BrokerError> {
        check(
            (1..=self.partitions_max).contains(&self.default_partitions),
            "default_partitions",
            "1 to partitions_max",
        )?;
        check((1..=65_536).contains(&self.partitions_max), "partitions_max", "1 to 65536")?;
        check(self.topics_max >= 1, "topics_max", "at least 1")?;
        check(self.subscriptions_max >= 1, "subscriptions_max", "at least 1")?;
        check(self.streams_max >= 1, "streams_max", "at least 1")?;
        // A message and its envelope must fit the 4 MiB a default gRPC client accepts.
        check((1..=3 * 1024 * 1024).contains(&self.max_message_bytes), "max_message_bytes", "1 B to 3 MiB")?;
        check(
            (self.max_message_bytes..=4 * 1024 * 1024 - 64 * 1024).contains(&self.response_bytes_max),
            "response_bytes_max",
            "max_message_bytes to 4032 KiB",
        )?;
        check(self.publish_batch_messages_max >= 1, "publish_batch_messages_max", "at least 1")?;
        Ok(())
    }

    /// Leases, backoffs, nacks, dead letters, redrive, ordering, flow control, sessions.
    fn validate_delivery(&self) -> Result<(), BrokerError> {
        check(self.ack_deadline_max_ms >= 1000, "ack_deadline_max_ms", "at least 1000")?;
        check(
            (1000..=self.ack_deadline_max_ms).contains(&self.ack_deadline_ms),
            "ack_deadline_ms",
            "1000 to ack_deadline_max_ms",
        )?;
        check((1..=3_600_000).contains(&self.nack_delay_max_ms), "nack_delay_max_ms", "1 to 3600000")?;
        check(
            self.retry_maximum_backoff_ms <= self.nack_delay_max_ms,
            "retry_maximum_backoff_ms",
            "at most nack_delay_max_ms",
        )?;
        check(
            self.retry_minimum_backoff_ms <= self.retry_maximum_backoff_ms,
            "retry_minimum_backoff_ms",
            "at most retry_maximum_backoff_ms",
        )?;
        check((1..=64 * 1024).contains(&self.nack_reason_bytes_max), "nack_reason_bytes_max", "1 to 65536")?;
        check((1..=10_000).contains(&self.max_delivery_attempts_max), "max_delivery_attempts_max", "1 to 10000")?;
        check(
            (1..=self.max_delivery_attempts_max).contains(&self.max_delivery_attempts),
            "max_delivery_attempts",
            "1 to max_delivery_attempts_max",
        )?;
        check(self.redrive_rewind_offsets_max <= 10_000_000, "redrive_rewind_offsets_max", "0 to 10000000")?;
        check(
            (1..=1_000_000).contains(&self.ordered_parked_messages_max),
            "ordered_parked_messages_max",
            "1 to 1000000",
        )?;
        check((1..=100_000).contains(&self.pull_messages_max), "pull_messages_max", "1 to 100000")?;
        check(
            (1..=self.pull_messages_max).contains(&self.max_outstanding_messages),
            "max_outstanding_messages",
            "1 to pull_messages_max",
        )?;
        check(self.max_outstanding_bytes >= 1, "max_outstanding_bytes", "at least 1")?;
        check((1000..=3_600_000).contains(&self.session_timeout_max_ms), "session_timeout_max_ms", "1000 to 3600000")?;
        check(
            (1000..=self.session_timeout_max_ms).contains(&self.session_timeout_ms),
            "session_timeout_ms",
            "1000 to session_timeout_max_ms",
        )?;
        Ok(())
    }

    /// Retention and the dedupe index.
    fn validate_retention_and_dedupe(&self) -> Result<(), BrokerError> {
        check(
            self.partition_retention_bytes >= self.max_message_bytes as u64,
            "partition_retention_bytes",
            "at least max_message_bytes",
        )?;
        check(
            self.partition_retention_ms.is_none_or(|ms| ms >= 1000),
            "partition_retention_ms",
            "at least 1000 (or unset)",
        )?;
        check(
            (DEDUPE_WINDOW_MS_MIN..=DEDUPE_WINDOW_MS_MAX).contains(&self.dedupe_window_ms),
            "dedupe_window_ms",
            "1000 to 86400000 (1 s to 24 h)",
        )?;
        check(self.dedupe_keys_max >= 1, "dedupe_keys_max", "at least 1")?;
        check(self.dedupe_keys_broker_max >= 1, "dedupe_keys_broker_max", "at least 1")?;
        check(
            (1..=IDEMPOTENCY_KEY_BYTES_LIMIT).contains(&self.idempotency_key_bytes_max),
            "idempotency_key_bytes_max",
            "1 to 1024",
        )?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_nonsense_is_named() {
        BrokerConfig::default().validate().unwrap();
        let bad = BrokerConfig { ack_deadline_ms: 10, ..Default::default() };
        let err = bad.validate().unwrap_err().to_string();
        assert!(err.contains("ack_deadline_ms"), "{err}");
    }
}
