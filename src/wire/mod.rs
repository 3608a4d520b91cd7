//! The wire edge: generated protobuf types, their conversions to and from core types, and
//! the one mapping of broker errors to gRPC statuses. Generated types go no further in.

pub(crate) mod client_codec;
mod codec;
mod convert;
mod status;

pub use codec::{set_entry_limits, BytesDecoder, WireCodec, FIELD_ENTRIES_MAX, STREAM_ACK_ENTRY_BYTES_MIN};
pub use convert::*;
pub use status::{is_retryable, refused_message_index, resent_by_clients, status_of};

/// The largest HTTP/2 frame the broker's port and the client library accept (the
/// protocol's default is 16 KiB). A 16 KiB message, or a batch of them, then crosses in one
/// frame where it took two or more: at 20k msgs/s of 16 KiB, end to end, p50 fell from
/// 317-326 us to 212-250 us and p99 from 2.9-3.3 ms to 1.0-1.8 ms, and the broker's CPU from
/// 1.49 s to 1.32-1.40 s (`bench/results/perf-log.md`, change 16).
pub const HTTP2_MAX_FRAME: u32 = 1 << 20;
/// How many bytes a client may send on one stream of the broker before the broker has read
/// them (hyper's default for a server, said here so the bound is ours).
pub const HTTP2_STREAM_WINDOW: u32 = 1 << 20;
/// ...and on one connection, across its streams: what the broker may buffer per connection
/// ahead of its handlers, `connections_max` times at most.
pub const HTTP2_CONNECTION_WINDOW: u32 = 2 << 20;

/// The generated `pubsub` package.
#[allow(clippy::all, clippy::too_many_lines, missing_docs)]
pub mod pb {
    tonic::include_proto!("pubsub");

    /// The encoded descriptors of `pubsub.proto`, for server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("pubsub_descriptor");
}
