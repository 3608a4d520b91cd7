//! What a client call can fail with, and which failures are worth another try.

use std::fmt;

use tonic::{Code, Status};

pub use crate::wire::is_retryable;

/// Why a client operation failed.
///
/// `Display` is one line meant for people: a server refusal prints as
/// `NOT_FOUND: topic `x` not found`, the gRPC code name followed by the server's message.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ClientError {
    /// The server (or the transport on the way to it) refused the request.
    #[error("{}", StatusLine(.0))]
    Status(Status),
    /// A retryable failure kept coming back until the retry budget ran out.
    #[error("gave up after {attempts} attempts: {}", StatusLine(.last))]
    GaveUp {
        /// Requests sent, the first included.
        attempts: u32,
        /// The failure of the last one.
        last: Status,
    },
    /// The server address is not a URL tonic can connect to, or the connection failed.
    #[error("cannot connect to {url}: {reason}")]
    Connect {
        /// The address as given.
        url: String,
        /// The transport's explanation.
        reason: String,
    },
    /// A setting or argument the client refuses before sending anything.
    #[error("{field}: {reason}")]
    InvalidArgument {
        /// The setting or argument, as named in the API.
        field: &'static str,
        /// What is wrong, and what is allowed.
        reason: String,
    },
    /// The publisher or subscriber was shut down (or its task ended) before the operation
    /// could complete.
    #[error("the {what} is shut down")]
    Closed {
        /// `publisher` or `subscriber`.
        what: &'static str,
    },
}

impl ClientError {
    /// The gRPC status code behind the error, if the server or the transport produced one.
    pub fn code(&self) -> Option<Code> {
        match self {
            ClientError::Status(status) | ClientError::GaveUp { last: status, .. } => Some(status.code()),
            ClientError::Connect { .. } => Some(Code::Unavailable),
            ClientError::InvalidArgument { .. } | ClientError::Closed { .. } => None,
        }
    }

    /// `Ok` when `ok`; otherwise an [`ClientError::InvalidArgument`] for `field`: the
    /// settings checks' one shape.
    pub(crate) fn check(ok: bool, field: &'static str, reason: String) -> Result<(), ClientError> {
        if ok {
            Ok(())
        } else {
            Err(ClientError::invalid(field, reason))
        }
    }

    pub(crate) fn invalid(field: &'static str, reason: impl Into<String>) -> Self {
        ClientError::InvalidArgument { field, reason: reason.into() }
    }
}

impl From<Status> for ClientError {
    fn from(status: Status) -> Self {
        ClientError::Status(status)
    }
}

/// `NOT_FOUND: message`, as grpc-go and the gRPC spec name codes.
struct StatusLine<'a>(&'a Status);

impl fmt::Display for StatusLine<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let message = self.0.message();
        if message.is_empty() {
            write!(f, "{}", code_name(self.0.code()))
        } else {
            write!(f, "{}: {message}", code_name(self.0.code()))
        }
    }
}

/// The canonical upper-case name of a gRPC code (`NOT_FOUND`).
pub fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_server_status_prints_as_code_name_and_message() {
        let error = ClientError::from(Status::not_found("topic `x` not found"));
        assert_eq!(error.to_string(), "NOT_FOUND: topic `x` not found");
        let error = ClientError::GaveUp { attempts: 3, last: Status::unavailable("down") };
        assert_eq!(error.to_string(), "gave up after 3 attempts: UNAVAILABLE: down");
    }

    #[test]
    fn server_sent_internal_is_not_retried_but_unavailable_is() {
        assert!(is_retryable(&Status::unavailable("shutting down")));
        assert!(is_retryable(&Status::resource_exhausted("dedupe_keys_max")));
        assert!(!is_retryable(&Status::resource_exhausted("cannot create topic `t`: the limit is topics_max = 10")));
        assert!(is_retryable(&Status::resource_exhausted("another stream: the limit is streams_max = 10")));
        assert!(!is_retryable(&Status::internal("out of range")));
        assert!(!is_retryable(&Status::invalid_argument("topic: is empty")));
        assert!(!is_retryable(&Status::not_found("topic `x` not found")));
    }
}
