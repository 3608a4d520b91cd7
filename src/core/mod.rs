//! The broker core: a deterministic, sans-IO state machine.
//!
//! It knows nothing of tokio, tonic, sockets, files or clocks. Time comes in as an argument
//! (`now_ms`, monotonic milliseconds; `wall_ms`, for publish times), maps are ordered
//! (`BTreeMap`), and ids come from counters, so the same inputs in the same order give the
//! same outputs, byte for byte.
//!
//! # How a driver runs it
//!
//! The methods a driver calls fall in three kinds, as in quinn-proto:
//!
//! - **Handlers of inputs.** [`Broker::handle`] applies one [`Command`] (a publish, an
//!   admin operation, a stream opening, a request on a stream or its end, a pull, acks, a
//!   seek, a redrive, a timer [`Command::Tick`], a [`Command::Sync`], retention, a
//!   checkpoint) at the [`At`] it carries, and returns its [`Reply`]. Nothing else changes
//!   the broker, so a driver that logs the commands it applied can apply them again.
//! - **Polls of outputs.** After each command, drain [`Broker::poll_output`] until it
//!   returns `None`: deliveries for streams, assignments, streams the broker ended, records
//!   it could not read. [`Broker::poll_timeout`] says when to apply the next
//!   [`Command::Tick`]; [`Broker::poll_notice`] gives what an observer asked to hear
//!   ([`Broker::observe`]).
//! - **Getters.** [`Broker::query`] answers a [`Query`] (topics, subscriptions, counts,
//!   pending messages) and changes nothing; so do [`Broker::config`],
//!   [`Broker::needs_sync`], [`Broker::acks_after_sync`] and the counts for metrics.
//!
//! The server's driver does, each turn: apply the commands that arrived (at most a bound),
//! or a `Tick` when the timeout came, draining outputs after each; under `fsync=always`, a
//! `Sync` that covers the turn's publishes before they are answered; send the outputs to
//! their streams (a stream that cannot take them gets a `CloseStream`); then tell the
//! observer the notices and check the invariants. On its own timers it applies `Sync`
//! (`fsync=interval`), `Retention` and `Checkpoint`; the core keeps those timers too
//! ([`Broker::set_driver_timer`], [`Broker::driver_timer_due`]), so the driver sleeps until
//! [`Broker::poll_timeout`] and nothing else.
//!
//! Every request that arrives on a Subscribe stream, empty ones included, is a
//! [`Command::StreamRequest`], and so a heartbeat: members of exclusive subscriptions that
//! stay silent past their session timeout leave their group. A stream that ends is a
//! [`Command::CloseStream`], or a [`Command::LeaveStream`] when its client said it
//! leaves: a stream that named its client (a client id) releases its leases only then.
//!
//! Storage is the one thing the core calls out to, through the [`PartitionLog`] trait
//! object; the memory log does no IO at all.
//!
//! [`PartitionLog`]: crate::storage::PartitionLog

mod ack;
mod admin;
mod broker;
mod client_id;
mod command;
mod config;
mod counts;
mod dead_letter;
mod decimal;
mod dedupe;
mod delivery;
mod error;
mod group;
mod journal;
mod lease;
mod mutation;
pub mod name;
mod notice;
mod ordering;
mod pending;
mod persist;
mod publish;
mod redrive;
mod replica;
mod retry;
mod seek;
mod snapshot;
mod stream;
mod subscription;
mod timers;
mod topic;

pub use ack::{ACK_IDS_PER_CALL_MAX, ACK_ID_CHARS_MAX};
pub use admin::{PartitionInfo, PartitionStats, SubscriptionInfo, SubscriptionSpec, SubscriptionStats, TopicInfo};
pub use broker::Broker;
pub use client_id::CLIENT_ID_BYTES_MAX;
pub use command::{Answer, At, Command, Query, Reply};
pub use config::BrokerConfig;
pub use counts::{SubscriptionCounts, SubscriptionCountsView};
pub use dead_letter::{
    DeadLetterMove, ATTR_DELIVERY_ATTEMPTS, ATTR_DETAIL, ATTR_MESSAGE_ID, ATTR_OFFSET, ATTR_PARTITION, ATTR_REASON,
    ATTR_SOURCE_SUBSCRIPTION, ATTR_SOURCE_TOPIC,
};
pub(crate) use decimal::{dashed_after, undashed};
pub use dedupe::{DEDUPE_WINDOW_MS_MAX, DEDUPE_WINDOW_MS_MIN};
pub use delivery::{Delivery, Output};
pub use error::{BrokerError, LeaderHint};
pub use group::{assign, DeliveryMode};
pub use lease::{AckId, AckOp, AckOutcome, AckReply, StreamId};
pub use mutation::Mutation;
pub use notice::Notice;
pub use pending::{PendingMessage, PendingState};
pub use persist::SyncFailure;
pub use publish::{OutgoingMessage, Published};
pub use redrive::Redriven;
pub use retry::{DeadLetterPolicy, DeadLetterSpec, RetryPolicy, RetrySpec, Unacked};
pub use seek::{AckFloor, SeekTarget};
pub use snapshot::SnapshotError;
pub use stream::{Flow, StreamTarget};
pub use subscription::StartPosition;
pub use timers::DriverTimer;
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
mod replicated_tests;
#[cfg(test)]
mod retry_tests;
#[cfg(test)]
mod tests;
