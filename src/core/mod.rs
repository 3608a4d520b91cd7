//! The broker core: a deterministic, sans-IO state machine.
//!
//! It knows nothing of tokio, tonic, sockets, files or clocks. Time comes in as an argument
//! (`now_ms`, monotonic milliseconds; `wall_ms`, for publish times), maps are ordered
//! (`BTreeMap`), and ids come from counters, so the same inputs in the same order give the
//! same outputs, byte for byte.
//!
//! # How a driver runs it
//!
//! 1. Call an input method (`publish`, `open_stream`, `stream_acks`, `acks`, `pull`,
//!    `seek`, `close_stream`, an admin method) with the current time. Requests get their
//!    answer as the return value.
//! 2. Drain [`Broker::poll_output`] until it returns `None`: deliveries for streams, and
//!    streams the broker ended. Every input may produce outputs.
//! 3. Ask [`Broker::poll_timeout`] for the next deadline, and call
//!    [`Broker::handle_timeout`] when the clock reaches it (then drain outputs again).
//!
//! Every request that arrives on a Subscribe stream, empty ones included, is also told to
//! [`Broker::heartbeat`]: members of exclusive subscriptions that stay silent past their
//! session timeout leave their group. A stream that ends is told to
//! [`Broker::close_stream`], or to [`Broker::leave_stream`] when its client said it leaves:
//! a stream that named its client (a client id) releases its leases only then.
//!
//! Storage is the one thing the core calls out to, through the [`PartitionLog`] trait
//! object; the memory log does no IO at all.
//!
//! [`PartitionLog`]: crate::storage::PartitionLog

mod admin;
mod broker;
mod client_id;
mod config;
mod counts;
mod dead_letter;
mod decimal;
mod dedupe;
mod delivery;
mod error;
mod group;
mod lease;
mod mutation;
pub mod name;
mod notice;
mod ordering;
mod pending;
mod persist;
mod publish;
mod redrive;
mod retry;
mod subscription;
mod topic;

pub use admin::{PartitionInfo, PartitionStats, SubscriptionInfo, SubscriptionSpec, SubscriptionStats, TopicInfo};
pub use broker::Broker;
pub use client_id::CLIENT_ID_BYTES_MAX;
pub use config::BrokerConfig;
pub use counts::{SubscriptionCounts, SubscriptionCountsView};
pub use dead_letter::{
    ATTR_DELIVERY_ATTEMPTS, ATTR_DETAIL, ATTR_MESSAGE_ID, ATTR_OFFSET, ATTR_PARTITION, ATTR_REASON,
    ATTR_SOURCE_SUBSCRIPTION, ATTR_SOURCE_TOPIC,
};
pub(crate) use decimal::{dashed_after, undashed};
pub use dedupe::{DEDUPE_WINDOW_MS_MAX, DEDUPE_WINDOW_MS_MIN};
pub use delivery::{Delivery, Flow, Output, SeekTarget, StreamTarget};
pub use error::BrokerError;
pub use group::{assign, DeliveryMode};
pub use lease::{AckId, AckOp, AckOutcome, AckReply, StreamId};
pub use mutation::Mutation;
pub use notice::Notice;
pub use pending::{PendingMessage, PendingState};
pub use persist::SyncFailure;
pub use publish::{OutgoingMessage, Published};
pub use redrive::Redriven;
pub use retry::{DeadLetterPolicy, DeadLetterSpec, RetryPolicy, RetrySpec, Unacked};
pub use subscription::StartPosition;
pub use topic::{message_id, murmur2, partition_for_key, visible_end};

#[cfg(test)]
mod client_id_tests;
#[cfg(test)]
mod dedupe_tests;
#[cfg(test)]
mod group_tests;
#[cfg(test)]
mod ordering_tests;
#[cfg(test)]
mod persist_tests;
#[cfg(test)]
mod policy_proptests;
#[cfg(test)]
mod proptests;
#[cfg(test)]
mod retry_tests;
#[cfg(test)]
mod tests;
