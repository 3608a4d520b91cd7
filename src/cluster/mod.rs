//! Replication: brokers as a cluster on Raft, with openraft doing the consensus.
//!
//! Nothing of openraft leaves this module: the rest of the broker sees commands, replies and
//! the cluster's state in its own types, so a change of openraft's (an alpha, pinned with
//! `=`) touches only this folder.
//!
//! How the pieces fit (the design of `../shared/REPLICATION.md`, phase 1):
//!
//! - One Raft group for the whole broker. A [`Proposal`] is one broker command with the time
//!   it was decided at, in the command log's own encoding (`proto/record.proto`), so a
//!   replica applies exactly what the leader applied.
//! - The leader decides (the core's `check_*` refuses bad input before anything is
//!   proposed); every replica applies committed entries in log order through the same
//!   `Broker::handle`. What a proposal answered comes back as [`Applied`]: the index it was
//!   applied at, which the proposer matches to the client waiting for it.
//! - Each node's Raft log ([`RaftLog`]) is a file over the [`Fs`](crate::env::Fs) trait, so
//!   the simulator's disk, its crashes and torn writes apply to it.
//! - Randomness (election timeouts) comes from openraft's seeded runtime wrapper: the same
//!   seed gives the same elections, in production and in the simulator alike.

mod log;
#[cfg(test)]
mod log_tests;
mod network;
#[cfg(test)]
mod network_tests;
mod node;
#[cfg(test)]
mod raft_tests;
mod snapshot;
#[cfg(test)]
mod test_sm;
mod wire;

pub use log::{identity, RaftLog};
pub use network::{Connector, PeerNetwork, RaftService, SnapshotData, SNAPSHOT_BYTES_MAX};
pub use node::{
    Answerer, Applier, BrokerSm, Checkpoint, ClusterNode, ClusterState, Committed, NodeSettings, ProposeError,
    StateWatcher, Submitted, SNAPSHOT_ENTRIES_DEFAULT,
};

/// The generated `pubsub.cluster` package (a node's Raft log records).
#[allow(clippy::all, clippy::too_many_lines, missing_docs)]
pub mod pb {
    include!(concat!(env!("OUT_DIR"), "/pubsub.cluster.rs"));
}

/// A broker command as the Raft log carries it: a command-log `Entry` (the command and the
/// time it was decided at), encoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Proposal(pub bytes::Bytes);

impl std::fmt::Display for Proposal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "proposal of {} bytes", self.0.len())
    }
}

/// What a replica's state machine answers for an applied entry, on the node that proposed
/// it: the index it applied it at, and the broker's reply (none for Raft's own entries).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    /// The entry's log index.
    pub index: u64,
    /// What the broker answered.
    pub reply: Option<crate::core::Reply>,
}

openraft::declare_raft_types!(
    /// The cluster's openraft types: node ids are `u64`, one leader per term (standard
    /// Raft, so "at most one leader per term" is a property a checker can hold it to), and
    /// the runtime draws its randomness from a seed.
    pub TypeConfig:
        D = Proposal,
        R = Applied,
        NodeId = u64,
        Node = openraft::BasicNode,
        LeaderId = openraft::impls::leader_id_std::LeaderId<u64, u64>,
        AsyncRuntime = openraft::rt::deterministic_rng::DeterministicRng<openraft_rt_tokio::TokioRuntime>,
);
