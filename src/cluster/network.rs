//! Raft between nodes over gRPC (`pubsub.cluster.Raft`, `proto/cluster.proto`): the client
//! side that openraft calls ([`PeerNetwork`]) and the service that answers it ([`RaftService`]).
//!
//! Every call has a deadline, openraft's soft time-to-live for it: a network that loses a
//! response (a partition, a crash) costs one deadline, never a stalled replication stream.
//! A peer that cannot be reached, or answers UNAVAILABLE, is reported unreachable, so
//! openraft backs off before it tries again; a call that runs out of time is reported as a
//! timeout, which openraft retries at once.

use std::collections::{BTreeMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::{Stream, StreamExt};

use openraft::base::{BoxFuture, BoxStream};
use openraft::errors::{RPCError, ReplicationClosed, StreamingError, Timeout, Unreachable};
use openraft::network::v2::RaftNetworkV2;
use openraft::network::{RPCOption, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, StreamAppendResult, TransferLeaderRequest,
    TransferLeaderResponse, VoteRequest, VoteResponse,
};
use openraft::storage::RaftStateMachine;
use openraft::type_config::alias::{InstantOf, SleepOf, SnapshotOf, VoteOf};
use openraft::type_config::TypeConfigExt;
use openraft::{BasicNode, OptionalSend, RPCTypes};
use prost::Message;
use tokio::sync::mpsc;
use tonic::transport::Channel;
use tonic::{Request, Response, Status, Streaming};

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
    /// Per peer: whether its entries go one `AppendEntries` call at a time (see [`Unary`]).
    unary: BTreeMap<u64, Unary>,
}

impl PeerNetwork {
    /// The network of node `id`, reaching peers through `connect`.
    pub fn new(id: u64, connect: Connector) -> Self {
        Self { id, connect, channels: BTreeMap::new(), unary: BTreeMap::new() }
    }
}

impl RaftNetworkFactory<TypeConfig> for PeerNetwork {
    type Network = PeerClient;

    async fn new_client(&mut self, target: u64, node: &BasicNode) -> PeerClient {
        let channel = self.channels.entry(target).or_insert_with(|| (self.connect)(&node.addr)).clone();
        let client = pb::raft_client::RaftClient::new(channel)
            .max_decoding_message_size(PEER_MESSAGE_BYTES_MAX)
            .max_encoding_message_size(PEER_MESSAGE_BYTES_MAX);
        let unary = self.unary.entry(target).or_default().clone();
        PeerClient { id: self.id, target, client, unary }
    }
}

/// One peer, as openraft calls it.
pub struct PeerClient {
    id: u64,
    target: u64,
    client: pb::raft_client::RaftClient<Channel>,
    /// See [`Unary`].
    unary: Unary,
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

/// One answer of a `StreamAppend` stream, as openraft takes it.
type AppendAnswer = Result<StreamAppendResult<TypeConfig>, RPCError<TypeConfig>>;

/// Requests of one `StreamAppend` call that may be unanswered at once: as many as a
/// follower takes before it answers the first (openraft's pipeline there holds 64).
const APPEND_PIPELINE_MAX: usize = 64;

/// Bytes of unanswered requests of one `StreamAppend` call (their encoded size) past which
/// no more are sent until answers come; one request is always let through, however large.
pub(super) const APPEND_PIPELINE_BYTES_MAX: usize = 16 << 20;

/// How long a peer that answered `StreamAppend` UNIMPLEMENTED is sent one `AppendEntries`
/// call at a time before the stream is tried again (the peer may have been upgraded).
pub(super) const UNARY_RETRY_AFTER: Duration = Duration::from_secs(60);

/// A timer of openraft's runtime.
type Timer = Pin<Box<SleepOf<TypeConfig>>>;

/// One `StreamAppend` call, as the stream of its answers.
///
/// openraft's requests are pulled only when openraft polls for answers, never by the
/// transport's own task: openraft looks whether this node still leads before it polls, and
/// a request made after it stepped down would be read from a log that moved on since. The
/// call starts with the first request, so openraft's backoff after a failure (waited as it
/// makes a request) comes before the next attempt to connect. The stream fails with a
/// timeout once a request is unanswered and neither it was sent nor an answer came within
/// openraft's soft time-to-live; an idle stream waits as long as openraft keeps it, and one
/// whose requests ended and were all answered ends.
struct AppendStream<S> {
    /// openraft's requests; none once they ended.
    input: Option<S>,
    /// The call's body; closed when the input ends.
    body: Option<mpsc::UnboundedSender<pb::AppendEntriesRequest>>,
    /// The call until the follower answers it: its answers from then on.
    call: Option<BoxFuture<'static, Result<Response<Streaming<pb::StreamAppendResponse>>, Status>>>,
    answers: Option<Streaming<pb::StreamAppendResponse>>,
    /// When each unanswered request was sent and its encoded size, oldest first (at most
    /// [`APPEND_PIPELINE_MAX`]), by openraft's runtime clock.
    sent: VecDeque<(InstantOf<TypeConfig>, usize)>,
    /// The encoded bytes of the unanswered requests.
    sent_bytes: usize,
    /// When the last answer came.
    answered: Option<InstantOf<TypeConfig>>,
    /// The deadline of the oldest unanswered request, and its timer.
    deadline: Option<(InstantOf<TypeConfig>, Timer)>,
    timeout: Timeout<TypeConfig>,
    /// Set when the peer does not know `StreamAppend`.
    unary: Unary,
    done: bool,
}

impl<S> AppendStream<S> {
    fn new(
        mut client: pb::raft_client::RaftClient<Channel>,
        input: S,
        timeout: Timeout<TypeConfig>,
        unary: Unary,
    ) -> Self {
        let (body, requests) = mpsc::unbounded_channel();
        let call = Box::pin(async move {
            client.stream_append(tokio_stream::wrappers::UnboundedReceiverStream::new(requests)).await
        });
        Self {
            input: Some(input),
            body: Some(body),
            call: Some(call),
            answers: None,
            sent: VecDeque::new(),
            sent_bytes: 0,
            answered: None,
            deadline: None,
            timeout,
            unary,
            done: false,
        }
    }

    /// Takes what openraft has made and sends it, while the pipeline has room.
    fn pull(&mut self, cx: &mut Context<'_>)
    where
        S: Stream<Item = AppendEntriesRequest<TypeConfig>> + Unpin,
    {
        while self.sent.is_empty()
            || (self.sent.len() < APPEND_PIPELINE_MAX && self.sent_bytes < APPEND_PIPELINE_BYTES_MAX)
        {
            let Some(input) = self.input.as_mut() else { break };
            match input.poll_next_unpin(cx) {
                Poll::Ready(Some(rpc)) => {
                    let request = wire::append_request_pb(rpc);
                    let size = request.encoded_len();
                    self.sent.push_back((TypeConfig::now(), size));
                    self.sent_bytes += size;
                    if let Some(body) = &self.body {
                        // The call may have ended already; its answer says why.
                        let _ = body.send(request);
                    }
                }
                Poll::Ready(None) => {
                    self.input = None;
                    self.body = None;
                }
                Poll::Pending => break,
            }
        }
    }

    /// Whether a request is unanswered and neither it was sent nor an answer came within
    /// the time-to-live (the timer wakes the task when that time comes).
    fn timed_out(&mut self, cx: &mut Context<'_>) -> bool {
        if let Some((oldest, _)) = self.sent.front() {
            // A follower that answers keeps the stream alive, however many wait behind.
            let since = self.answered.map_or(*oldest, |answered| answered.max(*oldest));
            let at = since + self.timeout.timeout;
            let (_, timer) = match &mut self.deadline {
                Some(deadline) if deadline.0 == at => deadline,
                other => other.insert((at, Box::pin(TypeConfig::sleep_until(at)))),
            };
            return timer.as_mut().poll(cx).is_ready();
        }
        false
    }

    /// Ends the stream with `error`.
    fn fail(&mut self, error: RPCError<TypeConfig>) -> Poll<Option<AppendAnswer>> {
        self.done = true;
        Poll::Ready(Some(Err(error)))
    }
}

impl<S> Stream for AppendStream<S>
where
    S: Stream<Item = AppendEntriesRequest<TypeConfig>> + Unpin,
{
    type Item = AppendAnswer;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<AppendAnswer>> {
        let this = &mut *self;
        if this.done {
            return Poll::Ready(None);
        }
        this.pull(cx);
        if this.sent.is_empty() {
            // Every request answered, and openraft made its last: done (without waiting for
            // the follower to close its side, which a dead connection never would).
            if this.input.is_none() {
                this.done = true;
                return Poll::Ready(None);
            }
            // No request yet: the call has not started.
            if this.answers.is_none() {
                return Poll::Pending;
            }
        }
        if let Some(call) = this.call.as_mut() {
            match call.as_mut().poll(cx) {
                Poll::Ready(Ok(response)) => {
                    this.call = None;
                    this.answers = Some(response.into_inner());
                }
                Poll::Ready(Err(status)) => {
                    if status.code() == tonic::Code::Unimplemented {
                        // An older peer: openraft tries again after its backoff, and this
                        // peer's entries then go one call at a time.
                        tracing::warn!(
                            peer = this.timeout.target,
                            "the peer does not take StreamAppend (an older version?): appending one call at a time"
                        );
                        this.unary.set(Some(TypeConfig::now()));
                    }
                    return this.fail(unreachable(&status.to_string()));
                }
                Poll::Pending => {}
            }
        }
        if let Some(answers) = this.answers.as_mut() {
            match answers.poll_next_unpin(cx) {
                Poll::Ready(Some(Ok(answer))) => {
                    if let Some((_, size)) = this.sent.pop_front() {
                        this.sent_bytes -= size;
                    }
                    this.answered = Some(TypeConfig::now());
                    return match wire::stream_result_of(answer) {
                        Ok(result) => Poll::Ready(Some(Ok(result))),
                        Err(e) => this.fail(unreachable(&format!("an answer that does not decode: {e}"))),
                    };
                }
                Poll::Ready(Some(Err(status))) => return this.fail(unreachable(&status.to_string())),
                Poll::Ready(None) => {
                    this.done = true;
                    return Poll::Ready(None);
                }
                Poll::Pending => {}
            }
        }
        if this.timed_out(cx) {
            let timeout = this.timeout.clone();
            return this.fail(RPCError::Timeout(timeout));
        }
        Poll::Pending
    }
}

/// Per peer: when it answered `StreamAppend` UNIMPLEMENTED (an older version); its entries
/// go one `AppendEntries` call at a time for [`UNARY_RETRY_AFTER`] from then.
#[derive(Clone, Default)]
pub(super) struct Unary(Arc<Mutex<Option<InstantOf<TypeConfig>>>>);

impl Unary {
    pub(super) fn set(&self, at: Option<InstantOf<TypeConfig>>) {
        *self.0.lock().expect("not poisoned") = at;
    }

    /// Whether the peer is sent one call at a time now; once the time is up, the stream is
    /// tried again.
    pub(super) fn now(&self) -> bool {
        let mut since = self.0.lock().expect("not poisoned");
        match *since {
            Some(at) if TypeConfig::now() < at + UNARY_RETRY_AFTER => true,
            Some(_) => {
                *since = None;
                false
            }
            None => false,
        }
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

    /// Pipelined: each request goes out as openraft makes it, and the answers come back in
    /// order on the same stream (see [`AppendStream`]). A peer that does not know
    /// `StreamAppend` (an older version) is sent one `AppendEntries` call at a time instead.
    fn stream_append<'s, S>(
        &'s mut self,
        input: S,
        option: RPCOption,
    ) -> BoxFuture<'s, Result<BoxStream<'s, AppendAnswer>, RPCError<TypeConfig>>>
    where
        S: Stream<Item = AppendEntriesRequest<TypeConfig>> + OptionalSend + Unpin + 'static,
    {
        if self.unary.now() {
            return openraft::network::stream_append_sequential(self, input, option);
        }
        let timeout =
            Timeout { action: RPCTypes::AppendEntries, id: self.id, target: self.target, timeout: option.soft_ttl() };
        let stream = AppendStream::new(self.client.clone(), input, timeout, self.unary.clone());
        Box::pin(std::future::ready(Ok(Box::pin(stream) as BoxStream<'s, AppendAnswer>)))
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
    /// `StreamAppend` streams taken so far.
    streams: AtomicU64,
}

impl<SM> RaftService<SM>
where
    SM: RaftStateMachine<TypeConfig, SnapshotData = SnapshotData>,
{
    /// The service of the node `raft`.
    pub fn new(raft: openraft::Raft<TypeConfig, SM>) -> pb::raft_server::RaftServer<Self> {
        pb::raft_server::RaftServer::new(Self { raft, streams: AtomicU64::new(0) })
            .max_decoding_message_size(PEER_MESSAGE_BYTES_MAX)
            .max_encoding_message_size(PEER_MESSAGE_BYTES_MAX)
    }

    /// The service of the node `raft`, not yet wrapped for tonic (for a test's own wrapper).
    #[cfg(test)]
    pub(super) fn bare(raft: openraft::Raft<TypeConfig, SM>) -> Self {
        Self { raft, streams: AtomicU64::new(0) }
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

    type StreamAppendStream = BoxStream<'static, Result<pb::StreamAppendResponse, Status>>;

    async fn stream_append(
        &self,
        request: Request<Streaming<pb::AppendEntriesRequest>>,
    ) -> Result<Response<Self::StreamAppendStream>, Status> {
        // A request that does not decode ends the stream: openraft answers those before it,
        // then the leader hears why.
        let refused = Arc::new(Mutex::new(None));
        let requests = {
            let refused = refused.clone();
            futures_util::stream::unfold(request.into_inner(), move |mut requests| {
                let refused = refused.clone();
                async move {
                    match requests.message().await {
                        Ok(Some(rpc)) => match wire::append_request_of(rpc) {
                            Ok(rpc) => Some((rpc, requests)),
                            Err(e) => {
                                *refused.lock().expect("not poisoned") = Some(invalid(e));
                                None
                            }
                        },
                        // The leader closed the stream.
                        Ok(None) => None,
                        // The stream broke (the leader went away, or sent what HTTP/2 or
                        // gRPC refuses): said in the answer, should the leader still hear.
                        Err(status) => {
                            *refused.lock().expect("not poisoned") = Some(status);
                            None
                        }
                    }
                }
            })
        };
        // openraft spawns the stream's task on its seeded runtime, which takes the seed of
        // the task that spawns: a handler's task has none, so each stream is given one, from
        // a counter.
        let seed = self.streams.fetch_add(1, Ordering::Relaxed);
        let seeded = openraft::rt::deterministic_rng::DeterministicRng::<openraft_rt_tokio::TokioRuntime>::scope;
        let answers = seeded(seed, async { self.raft.stream_append(requests) }).await;
        let answers = answers.map(|answer| match answer {
            Ok(result) => Ok(wire::stream_result_pb(&result)),
            Err(fatal) => Err(unavailable(fatal)),
        });
        let refusal = futures_util::stream::once(async move { refused.lock().expect("not poisoned").take().map(Err) })
            .filter_map(std::future::ready);
        Ok(Response::new(Box::pin(answers.chain(refusal))))
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
