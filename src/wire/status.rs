//! Broker errors as gRPC statuses: the one exhaustive mapping.

use tonic::{Code, Status};

use crate::core::BrokerError;
use crate::storage::StorageError;

/// The status a client sees for a refused request; the message is the error's own.
pub fn status_of(error: &BrokerError) -> Status {
    let code = match error {
        BrokerError::InvalidArgument { .. }
        | BrokerError::MessageTooLarge { .. }
        | BrokerError::InvalidIdempotencyKey { .. }
        | BrokerError::PartitionOutOfRange { .. } => Code::InvalidArgument,
        BrokerError::TopicNotFound { .. } | BrokerError::SubscriptionNotFound { .. } => Code::NotFound,
        BrokerError::TopicExists { .. } | BrokerError::SubscriptionExists { .. } => Code::AlreadyExists,
        BrokerError::TopicInUse { .. }
        | BrokerError::NoDeadLetterPolicy { .. }
        | BrokerError::DeadLetterTopicInUse { .. } => Code::FailedPrecondition,
        BrokerError::LimitReached { .. } => Code::ResourceExhausted,
        BrokerError::SessionTimedOut { .. }
        | BrokerError::ClientReplaced { .. }
        | BrokerError::BatchAfterRefused { .. } => Code::Aborted,
        BrokerError::Storage(StorageError::Full(_) | StorageError::TooManyOpenFiles(_)) => Code::ResourceExhausted,
        BrokerError::Storage(StorageError::Io(_)) => Code::Unavailable,
        BrokerError::Storage(StorageError::OutOfRange { .. }) => Code::Internal,
        BrokerError::Storage(StorageError::Corrupt { .. }) => Code::DataLoss,
        BrokerError::NotLeader { leader } => return not_leader(error, leader.as_ref()),
        BrokerError::Indeterminate(_) => Code::Unavailable,
    };
    Status::new(code, error.to_string())
}

impl From<BrokerError> for Status {
    fn from(error: BrokerError) -> Self {
        status_of(&error)
    }
}

/// UNAVAILABLE, with the leader's id and address in the metadata (`leader-id`,
/// `leader-addr`) so that a client can go there without reading the message.
fn not_leader(error: &BrokerError, leader: Option<&crate::core::LeaderHint>) -> Status {
    let mut metadata = tonic::metadata::MetadataMap::new();
    if let Some(hint) = leader {
        metadata.insert("leader-id", hint.id.into());
        if let Some(value) = hint.addr.as_deref().and_then(|a| a.parse().ok()) {
            metadata.insert("leader-addr", value);
        }
    }
    Status::with_metadata(Code::Unavailable, error.to_string(), metadata)
}

/// How the broker names the limits that retrying does not lift (its RESOURCE_EXHAUSTED
/// messages end with `the limit is NAME = N`).
const HARD_LIMITS: [&str; 2] = ["the limit is topics_max =", "the limit is subscriptions_max ="];

/// Whether a failed request may succeed if sent again unchanged.
///
/// What the broker means by its codes (`wire::status`): UNAVAILABLE is shutdown, a refused
/// connection or a disk I/O error; RESOURCE_EXHAUSTED is a configured limit (for publishes,
/// the dedupe key table, which frees as keys expire) or a full disk; ABORTED is a session
/// timeout, or a PublishStream batch held back behind a refused one. DEADLINE_EXCEEDED is the client's own per-attempt timeout. All of these may
/// pass, but for the topic and subscription limits (`topics_max`, `subscriptions_max`),
/// which wait for an operator.
///
/// UNKNOWN, INTERNAL and CANCELLED are retried only when the transport made them up (a
/// connection cut mid-request: tonic attaches the transport error as the status's source).
/// Sent by the server they mean a bug (INTERNAL is a storage read out of range), and
/// sending the request again would only repeat it.
pub fn is_retryable(status: &Status) -> bool {
    match status.code() {
        // A full disk, a full dedupe index or the stream limit clear by themselves; a topic
        // or subscription count at its limit waits for an operator.
        Code::ResourceExhausted => !HARD_LIMITS.iter().any(|limit| status.message().contains(limit)),
        Code::Unavailable | Code::DeadlineExceeded | Code::Aborted => true,
        Code::Unknown | Code::Internal | Code::Cancelled => std::error::Error::source(status).is_some(),
        _ => false,
    }
}

/// Which message of a publish batch a refusal names (`messages[3].value: ...`), when it
/// names one: the client library takes that message out and sends the rest again.
pub fn refused_message_index(status: &Status) -> Option<usize> {
    if status.code() != Code::InvalidArgument {
        return None;
    }
    let rest = status.message().strip_prefix("messages[")?;
    rest.split_once(']')?.0.parse().ok()
}

/// Whether a client sends a refused publish batch again, in whole or in part: a retryable
/// refusal, or one that names a single message (the others go again). A PublishStream
/// applies nothing of a stream after such a refusal (see `BrokerError::BatchAfterRefused`).
pub fn resent_by_clients(status: &Status) -> bool {
    is_retryable(status) || refused_message_index(status).is_some()
}
