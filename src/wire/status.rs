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
    };
    Status::new(code, error.to_string())
}

impl From<BrokerError> for Status {
    fn from(error: BrokerError) -> Self {
        status_of(&error)
    }
}
