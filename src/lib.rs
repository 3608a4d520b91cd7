//! mini-pubsub: a gRPC publish/subscribe broker whose behaviour can be replayed
//! deterministically.
//!
//! The crate is layered so that everything that decides what the broker does is a pure
//! function of its inputs, and everything that touches the world sits at the edge:
//!
//! - [`core`]: the broker as a sans-IO state machine. Topics with partitions, subscriptions
//!   (consumer groups) with a cursor per partition, leases with ack deadlines, deliveries and
//!   acks. Time is an argument; maps are ordered; ids come from counters.
//! - [`storage`]: the partition log trait the core appends to and reads from, and the
//!   in-memory log.
//! - [`env`](mod@crate::env): the `Clock` and `Net` traits with their tokio implementations; a simulator
//!   supplies its own.
//! - [`wire`]: the generated protobuf types (`pubsub.proto`), conversions to and from core
//!   types, and the one mapping of broker errors to gRPC statuses.
//! - [`server`]: the driver task that owns the core, the tonic services, health and
//!   reflection, started by [`server::run`] on whatever listener and shutdown signal it is
//!   given; and Prometheus metrics ([`server::metrics`]), off unless installed.
//! - [`config`]: the broker process's settings from a TOML file, `MINI_PUBSUB_*` variables and
//!   flags, with their precedence, validation and provenance (`mini-pubsub config print`).
//! - [`client`]: the client library: [`client::Client`] (connect, admin helpers), a batching
//!   [`client::Publisher`] with retries and idempotency keys, and a streaming
//!   [`client::Subscriber`] with lease extension, batched acks and reconnects. It takes a
//!   URL or a ready `Channel`, so the simulator can use it over its own network.
//! - [`cluster`]: replication on Raft (openraft, kept inside this module): the broker's
//!   proposals and a node's Raft log over the `Fs` trait.

#![warn(missing_docs)]

pub mod certs;
pub mod client;
pub mod cluster;
pub mod config;
pub mod core;
pub mod env;
pub mod record;
pub mod server;
pub mod storage;
pub mod wire;
