//! What a request can do wrong, or what the world refused. Each variant names the thing
//! and the limit; `wire::status` maps every variant to its gRPC code in one place.

use crate::storage::StorageError;

/// Why the broker refused a request. A refused request changed nothing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BrokerError {
    /// A malformed argument (INVALID_ARGUMENT).
    #[error("{field}: {reason}")]
    InvalidArgument {
        /// The request field at fault, as the client named it.
        field: &'static str,
        /// What is wrong with it, and what is allowed.
        reason: String,
    },
    /// An idempotency key that is empty or too long (INVALID_ARGUMENT).
    #[error("{field}: {reason}")]
    InvalidIdempotencyKey {
        /// The message's key field (`messages[i].idempotency_key`).
        field: String,
        /// What is wrong with it, and what is allowed.
        reason: String,
    },
    /// A message larger than `max_message_bytes` (INVALID_ARGUMENT).
    #[error("{field}: message is {size} bytes (value, key and attributes); the limit is max_message_bytes = {limit}")]
    MessageTooLarge {
        /// The message at fault (`messages[i]`).
        field: String,
        /// Its size: value, key and attributes.
        size: usize,
        /// `max_message_bytes`.
        limit: usize,
    },
    /// A partition the topic does not have (INVALID_ARGUMENT).
    #[error("{field}: partition {partition} does not exist; topic `{topic}` has partitions 0 to {last}", last = partitions - 1)]
    PartitionOutOfRange {
        /// The request field at fault, as the client named it.
        field: String,
        /// The topic.
        topic: String,
        /// The partition asked for.
        partition: u32,
        /// How many the topic has.
        partitions: u32,
    },
    /// NOT_FOUND.
    #[error("topic `{topic}` not found")]
    TopicNotFound {
        /// The name asked for.
        topic: String,
    },
    /// NOT_FOUND.
    #[error("subscription `{subscription}` not found")]
    SubscriptionNotFound {
        /// The name asked for.
        subscription: String,
    },
    /// ALREADY_EXISTS.
    #[error("topic `{topic}` already exists")]
    TopicExists {
        /// The name asked for.
        topic: String,
    },
    /// ALREADY_EXISTS.
    #[error("subscription `{subscription}` already exists")]
    SubscriptionExists {
        /// The name asked for.
        subscription: String,
    },
    /// FAILED_PRECONDITION: deleting a topic that subscriptions still read.
    #[error(
        "topic `{topic}` has subscriptions {subscriptions:?}; delete them first, or delete the topic with force = true to delete them with it"
    )]
    TopicInUse {
        /// The topic.
        topic: String,
        /// The subscriptions that read it.
        subscriptions: Vec<String>,
    },
    /// FAILED_PRECONDITION: a terminal nack on a subscription without a dead-letter policy.
    #[error(
        "nack_terminal: subscription `{subscription}` has no dead_letter_policy, so a terminal nack has nowhere to put the message; set a dead_letter_policy, or ack the message"
    )]
    NoDeadLetterPolicy {
        /// The subscription.
        subscription: String,
    },
    /// FAILED_PRECONDITION: deleting a topic that subscriptions dead-letter into.
    #[error(
        "topic `{topic}` is the dead-letter topic of subscriptions {subscriptions:?}; change their dead_letter_policy first, or delete the topic with force = true to remove those policies"
    )]
    DeadLetterTopicInUse {
        /// The topic.
        topic: String,
        /// The subscriptions that dead-letter into it.
        subscriptions: Vec<String>,
    },
    /// ABORTED: a member of an exclusive subscription sent nothing for its session timeout;
    /// it left the group and its partitions went to the other members.
    #[error(
        "subscription `{subscription}`: {stream} sent no request for {timeout_ms} ms (its session timeout) and left the group; send an empty SubscribeRequest as a heartbeat more often, then subscribe again"
    )]
    SessionTimedOut {
        /// The exclusive subscription.
        subscription: String,
        /// The member that went silent.
        stream: String,
        /// Its session timeout.
        timeout_ms: u64,
    },
    /// ABORTED: a newer stream with the same client id opened on the subscription and took
    /// over this one's leases.
    #[error(
        "subscription `{subscription}`: {stream} was replaced by a newer stream of client `{client_id}` ({by}), which took over its leases"
    )]
    ClientReplaced {
        /// The subscription.
        subscription: String,
        /// The stream that was replaced.
        stream: String,
        /// The client id both streams named.
        client_id: String,
        /// The newer stream.
        by: String,
    },
    /// ABORTED: a PublishStream batch sent after one of the same stream that was refused in a
    /// way a client answers by sending it again (a retryable status, or one message of it
    /// refused and the rest to go again). It is not applied, so that what the client
    /// resends is stored in the order it was first sent.
    #[error(
        "not applied: batch {refused} of this stream was refused before it, and later batches wait for it to be sent again; send batch {refused} and those after it again, on a new stream"
    )]
    BatchAfterRefused {
        /// The refused batch's sequence number.
        refused: u64,
    },
    /// RESOURCE_EXHAUSTED: a configured bound was reached.
    #[error("{what}: the limit is {limit_name} = {limit}")]
    LimitReached {
        /// What could not be done.
        what: String,
        /// The setting that bounds it.
        limit_name: &'static str,
        /// Its value.
        limit: u64,
    },
    /// UNAVAILABLE: the storage refused; nothing was acknowledged.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// UNAVAILABLE: this node of a cluster does not lead (or its leadership lapsed), so it
    /// takes no data or admin calls; the leader it knows of is in the message and in the
    /// trailers `leader-id` and `leader-addr`.
    #[error("{}", not_leader(leader.as_ref()))]
    NotLeader {
        /// The leader this node knows of.
        leader: Option<LeaderHint>,
    },
    /// UNAVAILABLE: a cluster write whose fate is unknown: it was appended to the Raft log,
    /// and leadership changed before it was committed; another leader may yet commit it.
    #[error(
        "not acknowledged: {0}; the write may still take effect, so retry it with the same idempotency keys (a publish without them may be stored twice)"
    )]
    Indeterminate(String),
}

/// The leader a follower knows of: its node id, and its gRPC address when the cluster's
/// `brokers` setting names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaderHint {
    /// The leader's node id.
    pub id: u64,
    /// Where clients reach it.
    pub addr: Option<String>,
}

fn not_leader(leader: Option<&LeaderHint>) -> String {
    match leader {
        Some(LeaderHint { id, addr: Some(addr) }) => {
            format!("this node is not the cluster's leader; node {id} leads, at {addr}: send the call there")
        }
        Some(LeaderHint { id, addr: None }) => {
            format!("this node is not the cluster's leader; node {id} leads (Admin.GetCluster lists the nodes)")
        }
        None => "this node is not the cluster's leader, and no leader is known now (an election is under way, \
                 or this node cannot reach a quorum); retry shortly, or ask another node"
            .to_string(),
    }
}
