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
        BrokerError::SessionTimedOut { .. } | BrokerError::ClientReplaced { .. } => Code::Aborted,
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
