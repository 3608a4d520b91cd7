//! The wire edge: generated protobuf types, their conversions to and from core types, and
//! the one mapping of broker errors to gRPC statuses. Generated types go no further in.

pub(crate) mod client_codec;
mod codec;
mod convert;
mod status;

pub use codec::{set_entry_limits, BytesDecoder, WireCodec, FIELD_ENTRIES_MAX, STREAM_ACK_ENTRY_BYTES_MIN};
pub use convert::*;
pub use status::{is_retryable, refused_message_index, resent_by_clients, status_of};

/// The generated `pubsub` package.
#[allow(clippy::all, clippy::too_many_lines, missing_docs)]
pub mod pb {
    tonic::include_proto!("pubsub");

    /// The encoded descriptors of `pubsub.proto`, for server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("pubsub_descriptor");
}
