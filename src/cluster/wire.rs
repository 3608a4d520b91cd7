//! openraft's messages to and from their protobuf form (`proto/cluster.proto`): the Raft
//! log's records and the peers' RPCs share these conversions.

use std::collections::BTreeMap;

use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, StreamAppendError, StreamAppendResult,
    TransferLeaderError, TransferLeaderRequest, TransferLeaderResponse, VoteRequest, VoteResponse,
};
use openraft::type_config::alias::{EntryOf, LogIdOf, SnapshotMetaOf, StoredMembershipOf, VoteOf};
use openraft::{BasicNode, EntryPayload, Membership, StoredMembership};

use super::{pb, Proposal, TypeConfig};

type Entry = EntryOf<TypeConfig>;
type LogId = LogIdOf<TypeConfig>;
type Vote = VoteOf<TypeConfig>;

pub(super) fn log_id_pb(id: &LogId) -> pb::LogId {
    pb::LogId { term: id.leader_id.term, index: id.index }
}

pub(super) fn log_id_of(id: &pb::LogId) -> LogId {
    LogId::new_term_index(id.term, id.index)
}

pub(super) fn vote_pb(vote: &Vote) -> pb::Vote {
    pb::Vote { term: vote.leader_id.term, node: vote.leader_id.voted_for, committed: vote.committed }
}

pub(super) fn vote_of(vote: &pb::Vote) -> Vote {
    if vote.committed {
        Vote::new_committed(vote.term, vote.node)
    } else {
        Vote::new(vote.term, vote.node)
    }
}

pub(super) fn entry_pb(entry: &Entry) -> pb::Entry {
    let payload = match &entry.payload {
        EntryPayload::Blank => pb::entry::Payload::Blank(pb::Empty {}),
        EntryPayload::Normal(proposal) => pb::entry::Payload::Normal(proposal.0.clone()),
        EntryPayload::Membership(m) => pb::entry::Payload::Membership(membership_pb(m)),
    };
    pb::Entry { log_id: Some(log_id_pb(&entry.log_id)), payload: Some(payload) }
}

pub(super) fn entry_of(entry: pb::Entry) -> Result<Entry, String> {
    let log_id = log_id_of(&entry.log_id.ok_or("entry.log_id: not set")?);
    let payload = match entry.payload.ok_or("entry.payload: not set")? {
        pb::entry::Payload::Blank(_) => EntryPayload::Blank,
        pb::entry::Payload::Normal(bytes) => EntryPayload::Normal(Proposal(bytes)),
        pb::entry::Payload::Membership(m) => EntryPayload::Membership(membership_of(m)?),
    };
    Ok(Entry { log_id, payload })
}

fn membership_pb(m: &Membership<u64, BasicNode>) -> pb::Membership {
    pb::Membership {
        configs: m.get_joint_config().iter().map(|v| pb::VoterSet { voters: v.iter().copied().collect() }).collect(),
        nodes: m.nodes().map(|(id, node)| pb::Node { id: *id, addr: node.addr.clone() }).collect(),
    }
}

fn membership_of(m: pb::Membership) -> Result<Membership<u64, BasicNode>, String> {
    let configs = m.configs.into_iter().map(|c| c.voters.into_iter().collect()).collect();
    let nodes: BTreeMap<u64, BasicNode> = m.nodes.into_iter().map(|n| (n.id, BasicNode { addr: n.addr })).collect();
    Membership::new(configs, nodes).map_err(|e| format!("membership: {e}"))
}

fn required<T>(value: Option<T>, field: &str) -> Result<T, String> {
    value.ok_or_else(|| format!("{field}: not set"))
}

pub(super) fn append_request_pb(rpc: AppendEntriesRequest<TypeConfig>) -> pb::AppendEntriesRequest {
    pb::AppendEntriesRequest {
        vote: Some(vote_pb(&rpc.vote)),
        prev_log_id: rpc.prev_log_id.as_ref().map(log_id_pb),
        entries: rpc.entries.iter().map(entry_pb).collect(),
        leader_commit: rpc.leader_commit.as_ref().map(log_id_pb),
    }
}

pub(super) fn append_request_of(rpc: pb::AppendEntriesRequest) -> Result<AppendEntriesRequest<TypeConfig>, String> {
    Ok(AppendEntriesRequest {
        vote: vote_of(&required(rpc.vote, "vote")?),
        prev_log_id: rpc.prev_log_id.as_ref().map(log_id_of),
        entries: rpc.entries.into_iter().map(entry_of).collect::<Result<_, _>>()?,
        leader_commit: rpc.leader_commit.as_ref().map(log_id_of),
    })
}

pub(super) fn append_response_pb(response: &AppendEntriesResponse<TypeConfig>) -> pb::AppendEntriesResponse {
    use pb::append_entries_response::Result as R;
    let result = match response {
        AppendEntriesResponse::Success => R::Success(pb::Empty {}),
        AppendEntriesResponse::PartialSuccess(matching) => {
            R::PartialSuccess(pb::PartialSuccess { matching: matching.as_ref().map(log_id_pb) })
        }
        AppendEntriesResponse::Conflict => R::Conflict(pb::Empty {}),
        AppendEntriesResponse::HigherVote(vote) => R::HigherVote(vote_pb(vote)),
    };
    pb::AppendEntriesResponse { result: Some(result) }
}

pub(super) fn append_response_of(
    response: pb::AppendEntriesResponse,
) -> Result<AppendEntriesResponse<TypeConfig>, String> {
    use pb::append_entries_response::Result as R;
    Ok(match required(response.result, "result")? {
        R::Success(_) => AppendEntriesResponse::Success,
        R::PartialSuccess(p) => AppendEntriesResponse::PartialSuccess(p.matching.as_ref().map(log_id_of)),
        R::Conflict(_) => AppendEntriesResponse::Conflict,
        R::HigherVote(v) => AppendEntriesResponse::HigherVote(vote_of(&v)),
    })
}

pub(super) fn stream_result_pb(result: &StreamAppendResult<TypeConfig>) -> pb::StreamAppendResponse {
    use pb::stream_append_response::Result as R;
    let result = match result {
        Ok(matched) => R::Matched(pb::Matched { log_id: matched.as_ref().map(log_id_pb) }),
        Err(StreamAppendError::Conflict(at)) => R::Conflict(log_id_pb(at)),
        Err(StreamAppendError::HigherVote(vote)) => R::HigherVote(vote_pb(vote)),
    };
    pb::StreamAppendResponse { result: Some(result) }
}

pub(super) fn stream_result_of(response: pb::StreamAppendResponse) -> Result<StreamAppendResult<TypeConfig>, String> {
    use pb::stream_append_response::Result as R;
    Ok(match required(response.result, "result")? {
        R::Matched(m) => Ok(m.log_id.as_ref().map(log_id_of)),
        R::Conflict(at) => Err(StreamAppendError::Conflict(log_id_of(&at))),
        R::HigherVote(v) => Err(StreamAppendError::HigherVote(vote_of(&v))),
    })
}

pub(super) fn vote_request_pb(rpc: &VoteRequest<TypeConfig>) -> pb::VoteRequest {
    pb::VoteRequest { vote: Some(vote_pb(&rpc.vote)), last_log_id: rpc.last_log_id.as_ref().map(log_id_pb) }
}

pub(super) fn vote_request_of(rpc: pb::VoteRequest) -> Result<VoteRequest<TypeConfig>, String> {
    Ok(VoteRequest::new(vote_of(&required(rpc.vote, "vote")?), rpc.last_log_id.as_ref().map(log_id_of)))
}

pub(super) fn vote_response_pb(response: &VoteResponse<TypeConfig>) -> pb::VoteResponse {
    pb::VoteResponse {
        vote: Some(vote_pb(&response.vote)),
        vote_granted: response.vote_granted,
        last_log_id: response.last_log_id.as_ref().map(log_id_pb),
    }
}

pub(super) fn vote_response_of(response: pb::VoteResponse) -> Result<VoteResponse<TypeConfig>, String> {
    let vote = vote_of(&required(response.vote, "vote")?);
    Ok(VoteResponse::new(vote, response.last_log_id.as_ref().map(log_id_of), response.vote_granted))
}

/// A snapshot as the chunks of an `InstallSnapshot` stream: the first carries the vote and
/// the description, and each at most `chunk_bytes` of the data (one, empty, for none).
pub(super) fn snapshot_chunks_pb(
    vote: &Vote,
    meta: &SnapshotMetaOf<TypeConfig>,
    data: &bytes::Bytes,
    chunk_bytes: usize,
) -> Vec<pb::InstallSnapshotRequest> {
    let (last_log_id, membership, membership_log_id) = meta_pb(meta);
    let mut chunks: Vec<pb::InstallSnapshotRequest> = (0..data.len().div_ceil(chunk_bytes).max(1))
        .map(|i| pb::InstallSnapshotRequest {
            data: data.slice(i * chunk_bytes..((i + 1) * chunk_bytes).min(data.len())),
            ..Default::default()
        })
        .collect();
    let first = &mut chunks[0];
    (first.vote, first.last_log_id, first.membership, first.membership_log_id) =
        (Some(vote_pb(vote)), last_log_id, membership, membership_log_id);
    chunks
}

/// A streamed snapshot as it arrives: the description from its first chunk, the data from
/// all of them, at most `bytes_max` in all.
pub(super) struct SnapshotAssembly {
    head: Option<(Vote, SnapshotMetaOf<TypeConfig>)>,
    data: bytes::BytesMut,
    bytes_max: usize,
}

impl SnapshotAssembly {
    pub(super) fn new(bytes_max: usize) -> Self {
        Self { head: None, data: bytes::BytesMut::new(), bytes_max }
    }

    /// Takes the next chunk; an error says what is wrong with the stream.
    pub(super) fn push(&mut self, chunk: pb::InstallSnapshotRequest) -> Result<(), String> {
        if self.head.is_none() {
            let vote = vote_of(&required(chunk.vote, "vote")?);
            self.head = Some((vote, meta_of(chunk.last_log_id, chunk.membership, chunk.membership_log_id)?));
        } else if chunk.vote.is_some() || chunk.last_log_id.is_some() || chunk.membership.is_some() {
            return Err("a snapshot chunk after the first sets the vote or the description".to_string());
        }
        if self.data.len() + chunk.data.len() > self.bytes_max {
            return Err(format!("a snapshot over {} bytes", self.bytes_max));
        }
        self.data.extend_from_slice(&chunk.data);
        Ok(())
    }

    /// The vote, the snapshot's description and its bytes, once the stream ended.
    pub(super) fn finish(self) -> Result<(Vote, SnapshotMetaOf<TypeConfig>, bytes::Bytes), String> {
        let (vote, meta) = self.head.ok_or("a snapshot stream without a chunk")?;
        Ok((vote, meta, self.data.freeze()))
    }
}

/// A snapshot's description as its three fields: the last entry it covers, the membership
/// there, and the entry that set it.
fn meta_pb(meta: &SnapshotMetaOf<TypeConfig>) -> (Option<pb::LogId>, Option<pb::Membership>, Option<pb::LogId>) {
    (
        meta.last_log_id.as_ref().map(log_id_pb),
        Some(membership_pb(meta.last_membership.membership())),
        meta.last_membership.log_id().as_ref().map(log_id_pb),
    )
}

/// A snapshot's description from its three fields (see [`meta_pb`]).
fn meta_of(
    last_log_id: Option<pb::LogId>,
    membership: Option<pb::Membership>,
    membership_log_id: Option<pb::LogId>,
) -> Result<SnapshotMetaOf<TypeConfig>, String> {
    let membership: StoredMembershipOf<TypeConfig> = StoredMembership::new(
        membership_log_id.as_ref().map(log_id_of),
        membership_of(required(membership, "membership")?)?,
    );
    Ok(SnapshotMetaOf::<TypeConfig> { last_log_id: last_log_id.as_ref().map(log_id_of), last_membership: membership })
}

pub(super) fn snapshot_response_pb(response: &SnapshotResponse<TypeConfig>) -> pb::InstallSnapshotResponse {
    pb::InstallSnapshotResponse { vote: Some(vote_pb(&response.vote)) }
}

pub(super) fn snapshot_response_of(
    response: pb::InstallSnapshotResponse,
) -> Result<SnapshotResponse<TypeConfig>, String> {
    Ok(SnapshotResponse::new(vote_of(&required(response.vote, "vote")?)))
}

pub(super) fn transfer_request_pb(rpc: &TransferLeaderRequest<TypeConfig>) -> pb::TransferLeaderRequest {
    pb::TransferLeaderRequest {
        from_leader: Some(vote_pb(rpc.from_leader())),
        to_node_id: *rpc.to_node_id(),
        last_log_id: rpc.last_log_id().map(log_id_pb),
    }
}

pub(super) fn transfer_request_of(rpc: pb::TransferLeaderRequest) -> Result<TransferLeaderRequest<TypeConfig>, String> {
    let from = vote_of(&required(rpc.from_leader, "from_leader")?);
    Ok(TransferLeaderRequest::new(from, rpc.to_node_id, rpc.last_log_id.as_ref().map(log_id_of)))
}

pub(super) fn transfer_response_pb(response: &TransferLeaderResponse<TypeConfig>) -> pb::TransferLeaderResponse {
    use pb::transfer_leader_response::Result as R;
    let result = match response {
        Ok(()) => R::Accepted(pb::Empty {}),
        Err(TransferLeaderError::VoteChanged { expected, actual }) => {
            R::VoteChanged(pb::VoteChanged { expected: Some(vote_pb(expected)), actual: Some(vote_pb(actual)) })
        }
        Err(TransferLeaderError::LogNotFlushed { expected, actual }) => R::LogNotFlushed(pb::LogNotFlushed {
            expected: expected.as_ref().map(log_id_pb),
            actual: actual.as_ref().map(log_id_pb),
        }),
    };
    pb::TransferLeaderResponse { result: Some(result) }
}

pub(super) fn transfer_response_of(
    response: pb::TransferLeaderResponse,
) -> Result<TransferLeaderResponse<TypeConfig>, String> {
    use pb::transfer_leader_response::Result as R;
    Ok(match required(response.result, "result")? {
        R::Accepted(_) => Ok(()),
        R::VoteChanged(v) => Err(TransferLeaderError::VoteChanged {
            expected: vote_of(&required(v.expected, "expected")?),
            actual: vote_of(&required(v.actual, "actual")?),
        }),
        R::LogNotFlushed(l) => Err(TransferLeaderError::LogNotFlushed {
            expected: l.expected.as_ref().map(log_id_of),
            actual: l.actual.as_ref().map(log_id_of),
        }),
    })
}

/// A snapshot as a node stores it.
pub(super) fn stored_snapshot_pb(meta: &SnapshotMetaOf<TypeConfig>, data: bytes::Bytes) -> pb::StoredSnapshot {
    let (last_log_id, membership, membership_log_id) = meta_pb(meta);
    pb::StoredSnapshot { last_log_id, membership, membership_log_id, data }
}

/// A stored snapshot's description and bytes.
pub(super) fn stored_snapshot_of(
    stored: pb::StoredSnapshot,
) -> Result<(SnapshotMetaOf<TypeConfig>, bytes::Bytes), String> {
    Ok((meta_of(stored.last_log_id, stored.membership, stored.membership_log_id)?, stored.data))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A vote and a snapshot description, as a first chunk would carry them.
    fn head() -> (Vote, SnapshotMetaOf<TypeConfig>) {
        let vote = vote_of(&pb::Vote { term: 3, node: 2, committed: true });
        let membership = pb::Membership {
            configs: vec![pb::VoterSet { voters: vec![1, 2, 3] }],
            nodes: (1..=3).map(|id| pb::Node { id, addr: format!("127.0.0.1:{id}") }).collect(),
        };
        let log_id = Some(pb::LogId { term: 3, index: 41 });
        let meta = meta_of(log_id, Some(membership), Some(pb::LogId { term: 1, index: 1 })).unwrap();
        (vote, meta)
    }

    #[test]
    fn a_snapshot_goes_in_chunks_and_comes_back_whole() {
        let (vote, meta) = head();
        let data = bytes::Bytes::from((0..2500u32).map(|i| i as u8).collect::<Vec<u8>>());
        let chunks = snapshot_chunks_pb(&vote, &meta, &data, 1000);
        assert_eq!(chunks.iter().map(|c| c.data.len()).collect::<Vec<_>>(), [1000, 1000, 500]);
        assert!(chunks[1..].iter().all(|c| c.vote.is_none() && c.membership.is_none()));
        let mut assembly = SnapshotAssembly::new(2500);
        for chunk in chunks {
            assembly.push(chunk).unwrap();
        }
        let (v, m, d) = assembly.finish().unwrap();
        assert_eq!((v, m, d), (vote, meta.clone(), data));

        let empty = snapshot_chunks_pb(&vote, &meta, &bytes::Bytes::new(), 1000);
        assert_eq!(empty.len(), 1, "the description travels even with no data");
    }

    #[test]
    fn a_snapshot_stream_that_is_too_large_or_malformed_is_refused() {
        let (vote, meta) = head();
        let data = bytes::Bytes::from(vec![7u8; 2001]);
        let mut assembly = SnapshotAssembly::new(2000);
        let mut chunks = snapshot_chunks_pb(&vote, &meta, &data, 1000).into_iter();
        assembly.push(chunks.next().unwrap()).unwrap();
        assembly.push(chunks.next().unwrap()).unwrap();
        assert_eq!(assembly.push(chunks.next().unwrap()).unwrap_err(), "a snapshot over 2000 bytes");

        let mut assembly = SnapshotAssembly::new(2000);
        let chunks = snapshot_chunks_pb(&vote, &meta, &data, 1000);
        assembly.push(chunks[0].clone()).unwrap();
        let again = assembly.push(chunks[0].clone()).unwrap_err();
        assert!(again.contains("after the first sets the vote"), "{again}");

        let headless = SnapshotAssembly::new(2000).push(chunks[1].clone()).unwrap_err();
        assert!(headless.contains("vote"), "{headless}");
        assert_eq!(SnapshotAssembly::new(2000).finish().unwrap_err(), "a snapshot stream without a chunk");
    }
}
