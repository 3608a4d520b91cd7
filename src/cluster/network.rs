//! Raft between nodes over gRPC (`pubsub.cluster.Raft`, `proto/cluster.proto`): the client
//! side that openraft calls ([`PeerNetwork`]) and the service that answers it ([`RaftService`]).
//!
//! Every call has a deadline, openraft's soft time-to-live for it: a network that loses a
//! response (a partition, a crash) costs one deadline, never a stalled replication stream.
//! A peer that cannot be reached, or answers UNAVAILABLE, is reported unreachable, so
//! openraft backs off before it tries again; a call that runs out of time is reported as a
//! timeout, which openraft retries at once.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use openraft::errors::{RPCError, ReplicationClosed, StreamingError, Timeout, Unreachable};
use openraft::network::v2::RaftNetworkV2;
use openraft::network::{RPCOption, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, TransferLeaderRequest, TransferLeaderResponse,
    VoteRequest, VoteResponse,
};
use openraft::storage::RaftStateMachine;
use openraft::type_config::alias::{SnapshotOf, VoteOf};
use openraft::{BasicNode, OptionalSend, RPCTypes};
use tonic::transport::Channel;
use tonic::{Request, Response, Status};

use super::{pb, wire, TypeConfig};

/// What a snapshot is, between the nodes: the state machine's bytes.
pub type SnapshotData = bytes::Bytes;

/// A snapshot of the broker's state at most, retained records included (they are in it,
/// base64-encoded): a larger state is not snapshotted, and its Raft log is kept whole.
pub const SNAPSHOT_BYTES_MAX: usize = 1 << 30;

/// The largest message between peers: a batch of entries (up to `max_payload_entries`
/// proposals of up to a request each), with room to spare.
pub(super) const PEER_MESSAGE_BYTES_MAX: usize = SNAPSHOT_BYTES_MAX + (64 << 20);

/// A snapshot is sent in chunks of this many bytes at most, on one stream.
const SNAPSHOT_CHUNK_BYTES: usize = 1 << 20;

/// Makes the channel to a peer's address (`HOST:PORT`): tonic over TCP in production, the
/// simulator's network under turmoil. It must not connect before the first call.
pub type Connector = Arc<dyn Fn(&str) -> Channel + Send + Sync>;

/// openraft's side of the peers: one channel per peer, made when first needed.
pub struct PeerNetwork {
    /// This node's id (timeouts name it).
    id: u64,
    connect: Connector,
    channels: BTreeMap<u64, Channel>,
}

impl PeerNetwork {
    /// The network of node `id`, reaching peers through `connect`.
    pub fn new(id: u64, connect: Connector) -> Self {
        Self { id, connect, channels: BTreeMap::new() }
    }
}

impl RaftNetworkFactory<TypeConfig> for PeerNetwork {
    type Network = PeerClient;

    async fn new_client(&mut self, target: u64, node: &BasicNode) -> PeerClient {
        let channel = self.channels.entry(target).or_insert_with(|| (self.connect)(&node.addr)).clone();
        let client = pb::raft_client::RaftClient::new(channel)
            .max_decoding_message_size(PEER_MESSAGE_BYTES_MAX)
            .max_encoding_message_size(PEER_MESSAGE_BYTES_MAX);
        PeerClient { id: self.id, target, client }
    }
}

/// One peer, as openraft calls it.
pub struct PeerClient {
    id: u64,
    target: u64,
    client: pb::raft_client::RaftClient<Channel>,
}

impl PeerClient {
    /// Runs `call` within `ttl`: a transport failure or UNAVAILABLE is unreachable, the
    /// deadline passing is a timeout, and an answer that does not decode is unreachable too
    /// (a peer of another version; openraft backs off from it).
    async fn call<T, R>(
        &self,
        action: RPCTypes,
        ttl: Duration,
        call: impl Future<Output = Result<Response<T>, Status>>,
        decode: impl FnOnce(T) -> Result<R, String>,
    ) -> Result<R, RPCError<TypeConfig>> {
        let answered = match tokio::time::timeout(ttl, call).await {
            Err(_elapsed) => {
                let timeout = Timeout { action, id: self.id, target: self.target, timeout: ttl };
                return Err(RPCError::Timeout(timeout));
            }
            Ok(answered) => answered,
        };
        let response = answered.map_err(|status| unreachable(&status.to_string()))?;
        decode(response.into_inner()).map_err(|e| unreachable(&format!("an answer that does not decode: {e}")))
    }
}

fn unreachable(why: &str) -> RPCError<TypeConfig> {
    RPCError::Unreachable(Unreachable::from_string(why))
}

impl RaftNetworkV2<TypeConfig> for PeerClient {
    type SnapshotData = SnapshotData;

    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<TypeConfig>, RPCError<TypeConfig>> {
        let mut client = self.client.clone();
        let request = wire::append_request_pb(rpc);
        self.call(RPCTypes::AppendEntries, option.soft_ttl(), client.append_entries(request), wire::append_response_of)
            .await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        let mut client = self.client.clone();
        let request = wire::vote_request_pb(&rpc);
        self.call(RPCTypes::Vote, option.soft_ttl(), client.vote(request), wire::vote_response_of).await
    }

    async fn pre_vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        let mut client = self.client.clone();
        let request = wire::vote_request_pb(&rpc);
        let call = async {
            match client.pre_vote(request).await {
                // A peer of a version without Pre-Vote counts as granting it, as openraft
                // asks: its real vote still decides, so a cluster mid-upgrade stays live.
                Err(status) if status.code() == tonic::Code::Unimplemented => {
                    // Also what any other HTTP/2 server at a wrong address answers: say so.
                    tracing::warn!(
                        peer = self.target,
                        "a peer without PreVote (an older version, or not a peer port) is counted as granting it"
                    );
                    Ok(Response::new(wire::vote_response_pb(&VoteResponse::new(rpc.vote, None, true))))
                }
                answered => answered,
            }
        };
        self.call(RPCTypes::Vote, option.soft_ttl(), call, wire::vote_response_of).await
    }

    async fn transfer_leader(
        &mut self,
        rpc: TransferLeaderRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<TransferLeaderResponse<TypeConfig>, RPCError<TypeConfig>> {
        let mut client = self.client.clone();
        let request = wire::transfer_request_pb(&rpc);
        let call = client.transfer_leader(request);
        self.call(RPCTypes::TransferLeader, option.soft_ttl(), call, wire::transfer_response_of).await
    }

    async fn full_snapshot(
        &mut self,
        vote: VoteOf<TypeConfig>,
        snapshot: SnapshotOf<TypeConfig, SnapshotData>,
        cancel: impl Future<Output = ReplicationClosed> + OptionalSend + 'static,
        option: RPCOption,
    ) -> Result<SnapshotResponse<TypeConfig>, StreamingError<TypeConfig>> {
        if snapshot.snapshot.is_empty() {
            // No state is empty: the state machine could not take it (see its log). As if the
            // follower were unreachable, the sending backs off and is tried again.
            let reason = "this node could not take its state for the follower; tried again later";
            return Err(StreamingError::Unreachable(Unreachable::from_string(reason)));
        }
        let mut client = self.client.clone();
        let chunks = wire::snapshot_chunks_pb(&vote, &snapshot.meta, &snapshot.snapshot, SNAPSHOT_CHUNK_BYTES);
        let call = self.call(
            RPCTypes::InstallSnapshot,
            option.soft_ttl(),
            client.install_snapshot(futures_util::stream::iter(chunks)),
            wire::snapshot_response_of,
        );
        tokio::select! {
            biased;
            closed = cancel => Err(StreamingError::Closed(closed)),
            answered = call => answered.map_err(|e| match e {
                RPCError::Timeout(t) => StreamingError::Timeout(t),
                RPCError::Unreachable(u) => StreamingError::Unreachable(u),
                other => StreamingError::Unreachable(Unreachable::from_string(other.to_string())),
            }),
        }
    }
}

/// The service a node's peer port serves: each call handed to its openraft node.
pub struct RaftService<SM>
where
    SM: RaftStateMachine<TypeConfig, SnapshotData = SnapshotData>,
{
    raft: openraft::Raft<TypeConfig, SM>,
}

impl<SM> RaftService<SM>
where
    SM: RaftStateMachine<TypeConfig, SnapshotData = SnapshotData>,
{
    /// The service of the node `raft`.
    pub fn new(raft: openraft::Raft<TypeConfig, SM>) -> pb::raft_server::RaftServer<Self> {
        pb::raft_server::RaftServer::new(Self { raft })
            .max_decoding_message_size(PEER_MESSAGE_BYTES_MAX)
            .max_encoding_message_size(PEER_MESSAGE_BYTES_MAX)
    }
}

fn invalid(e: String) -> Status {
    Status::invalid_argument(e)
}

/// A node that cannot answer (it is stopping, or broke) is unavailable to its peers.
fn unavailable(e: impl std::fmt::Display) -> Status {
    Status::unavailable(format!("this node cannot answer Raft calls: {e}"))
}

#[tonic::async_trait]
impl<SM> pb::raft_server::Raft for RaftService<SM>
where
    SM: RaftStateMachine<TypeConfig, SnapshotData = SnapshotData>,
{
    async fn append_entries(
        &self,
        request: Request<pb::AppendEntriesRequest>,
    ) -> Result<Response<pb::AppendEntriesResponse>, Status> {
        let rpc = wire::append_request_of(request.into_inner()).map_err(invalid)?;
        let response = self.raft.append_entries(rpc).await.map_err(unavailable)?;
        Ok(Response::new(wire::append_response_pb(&response)))
    }

    async fn vote(&self, request: Request<pb::VoteRequest>) -> Result<Response<pb::VoteResponse>, Status> {
        let rpc = wire::vote_request_of(request.into_inner()).map_err(invalid)?;
        let response = self.raft.vote(rpc).await.map_err(unavailable)?;
        Ok(Response::new(wire::vote_response_pb(&response)))
    }

    async fn pre_vote(&self, request: Request<pb::VoteRequest>) -> Result<Response<pb::VoteResponse>, Status> {
        let rpc = wire::vote_request_of(request.into_inner()).map_err(invalid)?;
        let response = self.raft.pre_vote(rpc).await.map_err(unavailable)?;
        Ok(Response::new(wire::vote_response_pb(&response)))
    }

    async fn install_snapshot(
        &self,
        request: Request<tonic::Streaming<pb::InstallSnapshotRequest>>,
    ) -> Result<Response<pb::InstallSnapshotResponse>, Status> {
        let mut chunks = request.into_inner();
        let mut assembly = wire::SnapshotAssembly::new(SNAPSHOT_BYTES_MAX);
        while let Some(chunk) = chunks.message().await? {
            assembly.push(chunk).map_err(invalid)?;
        }
        let (vote, meta, data) = assembly.finish().map_err(invalid)?;
        let snapshot = SnapshotOf::<TypeConfig, SnapshotData> { meta, snapshot: data };
        let response = self.raft.install_full_snapshot(vote, snapshot).await.map_err(unavailable)?;
        Ok(Response::new(wire::snapshot_response_pb(&response)))
    }

    async fn transfer_leader(
        &self,
        request: Request<pb::TransferLeaderRequest>,
    ) -> Result<Response<pb::TransferLeaderResponse>, Status> {
        let rpc = wire::transfer_request_of(request.into_inner()).map_err(invalid)?;
        let response = self.raft.handle_transfer_leader(rpc).await.map_err(unavailable)?;
        Ok(Response::new(wire::transfer_response_pb(&response)))
    }
}
