//! Mutations: defects a test puts into the broker on purpose, to show that the
//! simulator's checker catches each one (`sim/tests/mutations.rs`). A broker has one only
//! when its config says so, and the config has room for one only in debug builds with
//! the `mutations` feature: a release build cannot enable any, and without one every
//! `mutated` test is a constant `false` the compiler removes.

use super::BrokerConfig;

/// A defect put in on purpose.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Mutation {
    /// An ack is answered `applied` but not recorded: the lease stays, expires, and the
    /// message comes again.
    AckNotRecorded,
    /// Every third offset of a partition is answered as the offset before it: two
    /// publishes are told one place.
    OffsetGivenTwice,
    /// An applied ack puts the message back, as a nack would: it is delivered again.
    RedeliveryAfterAck,
    /// Under `fsync=always` a publish is answered before the sync that makes it durable:
    /// a crash then loses what was acknowledged.
    AnswerBeforeSync,
    /// A message of a key is delivered while the key's earlier one is still leased.
    KeyOrderIgnored,
    /// A stream is given messages past its `max_outstanding_messages`.
    FlowControlIgnored,
    /// An ack stops its lease's timer but keeps the lease: the core's
    /// invariants break.
    InvariantBroken,
    /// Every third replicated ack floor a node applies puts the partition's committed
    /// offset back at the log's start: the replica forgets acknowledgements.
    FloorForgotten,
    /// A node that does not lead stores every seventh replicated publish with its value
    /// changed: the replicas no longer hold the same messages.
    FollowerDiverges,
    /// Under `fsync=always` a cluster node's Raft log counts an entry written before it is
    /// synced: a power failure of every node loses what a majority acknowledged.
    RaftLogUnsynced,
    /// A cluster's dead-letter moves copy the message on the leader that decided them
    /// only: the other nodes' dead-letter topics miss the copies.
    DeadLetterOnLeaderOnly,
    /// A PublishStream's batches after one refused for the client to send again are
    /// applied anyway: what the client resends is stored after them, out of its order.
    PublishChainIgnored,
    /// A publish its principal may not make is stored anyway, and then answered
    /// PERMISSION_DENIED.
    DeniedPublishStored,
}

impl Mutation {
    /// Every mutation, for the test that proves each is caught.
    pub const ALL: [Mutation; 13] = [
        Mutation::AckNotRecorded,
        Mutation::OffsetGivenTwice,
        Mutation::RedeliveryAfterAck,
        Mutation::AnswerBeforeSync,
        Mutation::KeyOrderIgnored,
        Mutation::FlowControlIgnored,
        Mutation::InvariantBroken,
        Mutation::FloorForgotten,
        Mutation::FollowerDiverges,
        Mutation::RaftLogUnsynced,
        Mutation::DeadLetterOnLeaderOnly,
        Mutation::PublishChainIgnored,
        Mutation::DeniedPublishStored,
    ];
}

impl BrokerConfig {
    /// Whether this broker was given `mutation` (never, outside a debug build with the
    /// `mutations` feature).
    #[inline(always)]
    pub fn mutated(&self, mutation: Mutation) -> bool {
        #[cfg(all(feature = "mutations", debug_assertions))]
        {
            self.mutation == Some(mutation)
        }
        #[cfg(not(all(feature = "mutations", debug_assertions)))]
        {
            let _ = mutation;
            false
        }
    }
}
