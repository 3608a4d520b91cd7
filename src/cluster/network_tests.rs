//! Three nodes whose Raft traffic crosses real gRPC on 127.0.0.1: they elect a leader,
//! replicate to every node, and when the leader's process side stops (its node shut down,
//! its port closed) the other two elect another and go on.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use openraft::rt::watch::WatchReceiver;
use openraft::{BasicNode, Config, ServerState};
use tokio::task::JoinHandle;
use tonic::transport::Endpoint;
use tonic::{Request, Response, Status};

use super::log::identity;
use super::test_sm::ListSm;
use super::{pb, Connector, PeerNetwork, Proposal, RaftLog, RaftService, TypeConfig};
use crate::env::StdFs;

type Raft = openraft::Raft<TypeConfig, ListSm>;

/// Longest any wait here takes before the test fails.
const WAIT_MAX: Duration = Duration::from_secs(20);

struct Node {
    raft: Raft,
    machine: ListSm,
    server: JoinHandle<()>,
}

/// Which version of the Raft service a node runs.
#[derive(Clone, Copy, PartialEq)]
enum Version {
    Current,
    /// The one before `StreamAppend`: that call is UNIMPLEMENTED, the rest as today.
    BeforeStreamAppend,
}

/// The Raft service of a node of [`Version::BeforeStreamAppend`].
struct BeforeStreamAppend(RaftService<ListSm>);

#[tonic::async_trait]
impl pb::raft_server::Raft for BeforeStreamAppend {
    async fn append_entries(
        &self,
        request: Request<pb::AppendEntriesRequest>,
    ) -> Result<Response<pb::AppendEntriesResponse>, Status> {
        self.0.append_entries(request).await
    }

    type StreamAppendStream = <RaftService<ListSm> as pb::raft_server::Raft>::StreamAppendStream;

    async fn stream_append(
        &self,
        _request: Request<tonic::Streaming<pb::AppendEntriesRequest>>,
    ) -> Result<Response<Self::StreamAppendStream>, Status> {
        Err(Status::unimplemented("no StreamAppend in this version"))
    }

    async fn vote(&self, request: Request<pb::VoteRequest>) -> Result<Response<pb::VoteResponse>, Status> {
        self.0.vote(request).await
    }

    async fn pre_vote(&self, request: Request<pb::VoteRequest>) -> Result<Response<pb::VoteResponse>, Status> {
        self.0.pre_vote(request).await
    }

    async fn install_snapshot(
        &self,
        request: Request<tonic::Streaming<pb::InstallSnapshotRequest>>,
    ) -> Result<Response<pb::InstallSnapshotResponse>, Status> {
        self.0.install_snapshot(request).await
    }

    async fn transfer_leader(
        &self,
        request: Request<pb::TransferLeaderRequest>,
    ) -> Result<Response<pb::TransferLeaderResponse>, Status> {
        self.0.transfer_leader(request).await
    }
}

async fn start(
    id: u64,
    dir: &std::path::Path,
    listener: tokio::net::TcpListener,
    config: Arc<Config>,
    version: Version,
) -> Node {
    let connect: Connector =
        Arc::new(|addr: &str| Endpoint::from_shared(format!("http://{addr}")).expect("an address").connect_lazy());
    let log = RaftLog::open(Arc::new(StdFs), &dir.join(format!("node-{id}")), &identity(id, 1..=3)).unwrap();
    let machine = ListSm::default();
    let raft = Raft::new(id, config, PeerNetwork::new(id, connect), log, machine.clone()).await.unwrap();
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
    let server = if version == Version::Current {
        let service = RaftService::new(raft.clone());
        tokio::spawn(async move {
            let _ = tonic::transport::Server::builder().add_service(service).serve_with_incoming(incoming).await;
        })
    } else {
        let service = pb::raft_server::RaftServer::new(BeforeStreamAppend(RaftService::bare(raft.clone())));
        tokio::spawn(async move {
            let _ = tonic::transport::Server::builder().add_service(service).serve_with_incoming(incoming).await;
        })
    };
    Node { raft, machine, server }
}

/// Waits until one of `nodes` leads and returns its id.
async fn leader(nodes: &BTreeMap<u64, Node>) -> u64 {
    tokio::time::timeout(WAIT_MAX, async {
        loop {
            let leading = nodes.iter().find(|(_, n)| n.raft.metrics().borrow_watched().state == ServerState::Leader);
            if let Some((id, _)) = leading {
                return *id;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("a leader within the bound")
}

async fn write(nodes: &BTreeMap<u64, Node>, text: &str) {
    tokio::time::timeout(WAIT_MAX, async {
        loop {
            let id = leader(nodes).await;
            if nodes[&id].raft.client_write(Proposal(text.as_bytes().to_vec().into())).await.is_ok() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the write within the bound");
}

async fn applied_everywhere(nodes: &BTreeMap<u64, Node>, count: usize) {
    tokio::time::timeout(WAIT_MAX, async {
        while !nodes.values().all(|n| n.machine.0.lock().unwrap().proposals.len() == count) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("every node applies within the bound");
}

/// Nodes 1 to 3 on ports of 127.0.0.1, each of `version(id)`, with pre-vote as asked; node
/// 1 initialises the cluster.
async fn three_nodes(dir: &std::path::Path, pre_vote: bool, version: impl Fn(u64) -> Version) -> BTreeMap<u64, Node> {
    let config = Config {
        heartbeat_interval: 100,
        election_timeout_min: 300,
        election_timeout_max: 600,
        enable_pre_vote: Some(pre_vote),
        ..Default::default()
    };
    let config = Arc::new(config.validate().unwrap());
    let mut listeners = Vec::new();
    let mut members = BTreeMap::new();
    for id in 1..=3u64 {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        members.insert(id, BasicNode { addr: listener.local_addr().unwrap().to_string() });
        listeners.push((id, listener));
    }
    let mut nodes = BTreeMap::new();
    for (id, listener) in listeners {
        nodes.insert(id, start(id, dir, listener, config.clone(), version(id)).await);
    }
    nodes[&1].raft.initialize(members).await.unwrap();
    nodes
}

async fn cluster() {
    let dir = tempfile::tempdir().unwrap();
    let mut nodes = three_nodes(dir.path(), true, |_| Version::Current).await;
    for i in 0..20 {
        write(&nodes, &format!("a{i}")).await;
    }
    applied_everywhere(&nodes, 20).await;

    let first = leader(&nodes).await;
    let gone = nodes.remove(&first).unwrap();
    gone.raft.shutdown().await.unwrap();
    gone.server.abort();
    for i in 0..20 {
        write(&nodes, &format!("b{i}")).await;
    }
    applied_everywhere(&nodes, 40).await;
    let second = leader(&nodes).await;
    assert_ne!(second, first);
    let expected: Vec<String> = ["a", "b"].iter().flat_map(|p| (0..20).map(move |i| format!("{p}{i}"))).collect();
    for node in nodes.values() {
        let applied: Vec<String> = node
            .machine
            .0
            .lock()
            .unwrap()
            .proposals
            .iter()
            .map(|p| String::from_utf8_lossy(&p.0).into_owned())
            .collect();
        assert_eq!(applied, expected);
    }
    for node in nodes.into_values() {
        node.raft.shutdown().await.unwrap();
        node.server.abort();
    }
}

#[test]
fn three_nodes_over_grpc_elect_replicate_and_fail_over() {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let scoped = openraft::rt::deterministic_rng::DeterministicRng::<openraft_rt_tokio::TokioRuntime>::scope;
    runtime.block_on(scoped(11, cluster()));
}

/// A leader whose state machine could not take its state for a follower hands the network
/// an empty one: it is not sent, and the sending counts as a follower out of reach (openraft
/// backs off and tries again) rather than an error that would stop the leader.
#[tokio::test]
async fn an_empty_state_is_not_sent_and_the_follower_counts_as_out_of_reach() {
    use openraft::network::v2::RaftNetworkV2;
    use openraft::network::{RPCOption, RaftNetworkFactory};
    use openraft::type_config::alias::{SnapshotMetaOf, SnapshotOf, VoteOf};

    // No peer listens: a send that went out would fail otherwise (as unreachable too, but
    // after the connect), so the message tells the two apart.
    let connect: Connector =
        Arc::new(|addr: &str| Endpoint::from_shared(format!("http://{addr}")).expect("an address").connect_lazy());
    let mut network = PeerNetwork::new(1, connect);
    let mut peer = network.new_client(2, &BasicNode { addr: "127.0.0.1:9".into() }).await;
    let empty = SnapshotOf::<TypeConfig, bytes::Bytes> {
        meta: SnapshotMetaOf::<TypeConfig>::default(),
        snapshot: bytes::Bytes::new(),
    };
    let vote = VoteOf::<TypeConfig>::new_committed(3, 1);
    let option = RPCOption::new(Duration::from_secs(1));
    let refused = peer.full_snapshot(vote, empty, std::future::pending(), option).await.unwrap_err();
    let text = refused.to_string();
    assert!(matches!(refused, openraft::errors::StreamingError::Unreachable(_)), "{text}");
    assert!(text.contains("could not take its state for the follower"), "{text}");
}

/// Pre-Vote crosses gRPC: a node that leads its term refuses a pre-vote for that term; a
/// peer without the `PreVote` call (an older version) counts as granting it, as openraft
/// asks, so its real vote decides; a peer out of reach is an error, never a grant.
#[test]
fn pre_votes_are_answered_by_the_peer_and_granted_by_an_older_one() {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let scoped = openraft::rt::deterministic_rng::DeterministicRng::<openraft_rt_tokio::TokioRuntime>::scope;
    runtime.block_on(scoped(12, pre_votes()));
}

async fn pre_votes() {
    use openraft::network::v2::RaftNetworkV2;
    use openraft::network::{RPCOption, RaftNetworkFactory};
    use openraft::raft::VoteRequest;
    use openraft::type_config::alias::VoteOf;

    let dir = tempfile::tempdir().unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let config = Arc::new(Config { enable_pre_vote: Some(true), ..Default::default() }.validate().unwrap());
    let node = start(1, dir.path(), listener, config, Version::Current).await;
    node.raft.initialize(BTreeMap::from([(1, BasicNode { addr: addr.clone() })])).await.unwrap();
    let nodes = BTreeMap::from([(1, node)]);
    leader(&nodes).await;
    let term = nodes[&1].raft.metrics().borrow_watched().current_term;

    // An older peer: a gRPC server without the Raft service answers UNIMPLEMENTED.
    let older = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let older_addr = older.local_addr().unwrap().to_string();
    let (_reporter, health) = tonic_health::server::health_reporter();
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(older);
    let older_server = tokio::spawn(async move {
        let _ = tonic::transport::Server::builder().add_service(health).serve_with_incoming(incoming).await;
    });

    let connect: Connector =
        Arc::new(|addr: &str| Endpoint::from_shared(format!("http://{addr}")).expect("an address").connect_lazy());
    let mut network = PeerNetwork::new(2, connect);
    let option = RPCOption::new(Duration::from_secs(5));
    let ask = || VoteRequest::<TypeConfig>::new(VoteOf::<TypeConfig>::new(term, 2), None);

    let mut peer = network.new_client(1, &BasicNode { addr }).await;
    let answer = peer.pre_vote(ask(), option.clone()).await.unwrap();
    assert!(!answer.vote_granted, "a leader of the term refuses: {answer}");

    let mut older_peer = network.new_client(3, &BasicNode { addr: older_addr }).await;
    let answer = older_peer.pre_vote(ask(), option.clone()).await.unwrap();
    assert!(answer.vote_granted, "{answer}");

    let mut gone = network.new_client(4, &BasicNode { addr: "127.0.0.1:9".into() }).await;
    assert!(gone.pre_vote(ask(), option).await.is_err());

    older_server.abort();
    for node in nodes.into_values() {
        node.raft.shutdown().await.unwrap();
        node.server.abort();
    }
}

/// A peer whose `StreamAppend` takes every request and never answers (or, with `answer_after`,
/// answers each that long after the one before): it counts the requests it received, and
/// the connections made to it. It never closes its side of the stream.
#[derive(Clone, Default)]
struct SilentPeer {
    received: Arc<std::sync::atomic::AtomicUsize>,
    answer_after: Option<Duration>,
}

#[tonic::async_trait]
impl pb::raft_server::Raft for SilentPeer {
    async fn append_entries(
        &self,
        _: tonic::Request<pb::AppendEntriesRequest>,
    ) -> Result<tonic::Response<pb::AppendEntriesResponse>, tonic::Status> {
        Err(tonic::Status::unimplemented("silent"))
    }

    type StreamAppendStream = openraft::base::BoxStream<'static, Result<pb::StreamAppendResponse, tonic::Status>>;

    async fn stream_append(
        &self,
        request: tonic::Request<tonic::Streaming<pb::AppendEntriesRequest>>,
    ) -> Result<tonic::Response<Self::StreamAppendStream>, tonic::Status> {
        let mut requests = request.into_inner();
        let received = self.received.clone();
        let Some(pace) = self.answer_after else {
            tokio::spawn(async move {
                while let Ok(Some(_)) = requests.message().await {
                    received.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                }
            });
            return Ok(tonic::Response::new(Box::pin(futures_util::stream::pending())));
        };
        let (answers, answered) = tokio::sync::mpsc::unbounded_channel();
        let (taken, mut to_answer) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok(Some(_)) = requests.message().await {
                received.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let _ = taken.send(());
            }
        });
        tokio::spawn(async move {
            while to_answer.recv().await.is_some() {
                tokio::time::sleep(pace).await;
                let matched = pb::stream_append_response::Result::Matched(pb::Matched { log_id: None });
                let _ = answers.send(Ok(pb::StreamAppendResponse { result: Some(matched) }));
            }
            // Every request answered: the stream stays open, as over a dead connection.
            std::future::pending::<()>().await;
            drop(answers);
        });
        Ok(tonic::Response::new(Box::pin(tokio_stream::wrappers::UnboundedReceiverStream::new(answered))))
    }

    async fn vote(
        &self,
        _: tonic::Request<pb::VoteRequest>,
    ) -> Result<tonic::Response<pb::VoteResponse>, tonic::Status> {
        Err(tonic::Status::unimplemented("silent"))
    }

    async fn pre_vote(
        &self,
        _: tonic::Request<pb::VoteRequest>,
    ) -> Result<tonic::Response<pb::VoteResponse>, tonic::Status> {
        Err(tonic::Status::unimplemented("silent"))
    }

    async fn install_snapshot(
        &self,
        _: tonic::Request<tonic::Streaming<pb::InstallSnapshotRequest>>,
    ) -> Result<tonic::Response<pb::InstallSnapshotResponse>, tonic::Status> {
        Err(tonic::Status::unimplemented("silent"))
    }

    async fn transfer_leader(
        &self,
        _: tonic::Request<pb::TransferLeaderRequest>,
    ) -> Result<tonic::Response<pb::TransferLeaderResponse>, tonic::Status> {
        Err(tonic::Status::unimplemented("silent"))
    }
}

/// Serves `peer` on a port of 127.0.0.1, counting the connections it accepts.
async fn serve_silent(peer: SilentPeer) -> (String, Arc<std::sync::atomic::AtomicUsize>) {
    use futures_util::StreamExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = accepted.clone();
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener).inspect(move |_| {
        counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    });
    let service = pb::raft_server::RaftServer::new(peer);
    tokio::spawn(async move {
        let _ = tonic::transport::Server::builder().add_service(service).serve_with_incoming(incoming).await;
    });
    (addr, accepted)
}

fn heartbeat() -> openraft::raft::AppendEntriesRequest<TypeConfig> {
    openraft::raft::AppendEntriesRequest {
        vote: openraft::type_config::alias::VoteOf::<TypeConfig>::new_committed(2, 1),
        prev_log_id: None,
        entries: vec![],
        leader_commit: None,
    }
}

/// The leader's side of `StreamAppend`: no call before openraft makes a request (its backoff
/// is waited as it makes one), every request sent without waiting for the answers before it,
/// and a timeout once the oldest unanswered one has waited the time-to-live.
#[tokio::test]
async fn stream_append_starts_with_a_request_pipelines_them_and_times_out_on_silence() {
    use futures_util::StreamExt;
    use openraft::network::v2::RaftNetworkV2;
    use openraft::network::{RPCOption, RaftNetworkFactory};
    use std::sync::atomic::Ordering;

    let peer = SilentPeer::default();
    let (addr, accepted) = serve_silent(peer.clone()).await;
    let connect: Connector =
        Arc::new(|addr: &str| Endpoint::from_shared(format!("http://{addr}")).expect("an address").connect_lazy());
    let mut network = PeerNetwork::new(1, connect);
    let mut client = network.new_client(2, &BasicNode { addr: addr.clone() }).await;

    // openraft has no request yet: nothing connects.
    let ttl = Duration::from_millis(300);
    let idle = futures_util::stream::pending::<openraft::raft::AppendEntriesRequest<TypeConfig>>();
    let mut answers = client.stream_append(idle, RPCOption::new(ttl)).await.unwrap();
    assert!(tokio::time::timeout(Duration::from_millis(500), answers.next()).await.is_err(), "an idle stream waits");
    drop(answers);
    assert_eq!(accepted.load(Ordering::SeqCst), 0, "no request, no connection");

    // Three requests at once: all reach the peer though none is answered, then the stream
    // times out, measured from the oldest.
    let three =
        futures_util::stream::iter([heartbeat(), heartbeat(), heartbeat()]).chain(futures_util::stream::pending());
    #[allow(clippy::disallowed_methods, reason = "the test measures the real wait for the timeout")]
    let started = tokio::time::Instant::now();
    let option = RPCOption::new(ttl);
    let soft = option.soft_ttl();
    let mut answers = client.stream_append(Box::pin(three), option).await.unwrap();
    let answer = tokio::time::timeout(WAIT_MAX, answers.next()).await.expect("an answer in time").expect("one");
    let waited = started.elapsed();
    assert!(matches!(answer, Err(openraft::errors::RPCError::Timeout(_))), "{answer:?}");
    assert!(waited >= soft && waited < soft * 10, "timed out after {waited:?}, the time-to-live being {soft:?}");
    assert_eq!(peer.received.load(Ordering::SeqCst), 3, "every request sent before any answer");
    assert!(answers.next().await.is_none(), "the stream ends after its timeout");
}

/// A follower of the version before `StreamAppend` answers it UNIMPLEMENTED: the leader
/// then sends it one `AppendEntries` call at a time, so a cluster being upgraded one node
/// at a time keeps replicating to every node.
#[test]
fn a_follower_without_stream_append_is_sent_one_call_at_a_time() {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let scoped = openraft::rt::deterministic_rng::DeterministicRng::<openraft_rt_tokio::TokioRuntime>::scope;
    runtime.block_on(scoped(12, async {
        let dir = tempfile::tempdir().unwrap();
        let version = |id| if id == 3 { Version::BeforeStreamAppend } else { Version::Current };
        let nodes = three_nodes(dir.path(), false, version).await;
        // Node 3 follows, so the leader's replication to it meets the older service.
        tokio::time::timeout(WAIT_MAX, async {
            while leader(&nodes).await == 3 {
                let _ = nodes[&3].raft.trigger().transfer_leader(1).await;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
        .await
        .expect("node 3 hands over within the bound");
        for i in 0..20 {
            write(&nodes, &format!("a{i}")).await;
        }
        // Node 3 applies what the leader committed only once it has the entries (openraft
        // sends the commit index with them).
        applied_everywhere(&nodes, 20).await;
        assert_ne!(leader(&nodes).await, 3);
        for node in nodes.into_values() {
            node.raft.shutdown().await.unwrap();
            node.server.abort();
        }
    }));
}

async fn client_of(addr: &str) -> super::network::PeerClient {
    use openraft::network::RaftNetworkFactory;
    let connect: Connector =
        Arc::new(|addr: &str| Endpoint::from_shared(format!("http://{addr}")).expect("an address").connect_lazy());
    PeerNetwork::new(1, connect).new_client(2, &BasicNode { addr: addr.to_string() }).await
}

/// A stream whose requests ended and were all answered ends, though the follower keeps its
/// side open (a dead connection would never close it).
#[tokio::test]
async fn stream_append_ends_once_its_last_request_is_answered() {
    use futures_util::StreamExt;
    use openraft::network::v2::RaftNetworkV2;
    use openraft::network::RPCOption;

    let peer = SilentPeer { answer_after: Some(Duration::from_millis(10)), ..Default::default() };
    let (addr, _) = serve_silent(peer).await;
    let mut client = client_of(&addr).await;
    let two = futures_util::stream::iter([heartbeat(), heartbeat()]);
    let answers = client.stream_append(two, RPCOption::new(Duration::from_secs(10))).await.unwrap();
    let answers: Vec<_> = tokio::time::timeout(WAIT_MAX, answers.collect()).await.expect("the stream ends");
    assert_eq!(answers.len(), 2);
    assert!(answers.iter().all(|a| matches!(a, Ok(Ok(None)))), "{answers:?}");
}

/// A follower that keeps answering keeps the stream alive, however long the later requests
/// wait behind the earlier ones: the time-to-live runs from the last answer.
#[tokio::test]
async fn stream_append_times_out_on_silence_not_on_a_long_queue() {
    use futures_util::StreamExt;
    use openraft::network::v2::RaftNetworkV2;
    use openraft::network::RPCOption;

    let peer = SilentPeer { answer_after: Some(Duration::from_millis(100)), ..Default::default() };
    let (addr, _) = serve_silent(peer).await;
    let mut client = client_of(&addr).await;
    // Six at once, answered 100 ms apart: the last waits 600 ms, twice the time-to-live.
    let six =
        futures_util::stream::iter(std::iter::repeat_with(heartbeat).take(6)).chain(futures_util::stream::pending());
    let option = RPCOption::new(Duration::from_millis(400));
    assert!(option.soft_ttl() < Duration::from_millis(600));
    let mut answers = client.stream_append(Box::pin(six), option).await.unwrap();
    for n in 0..6 {
        let answer = tokio::time::timeout(WAIT_MAX, answers.next()).await.expect("an answer in time").expect("one");
        assert!(matches!(answer, Ok(Ok(None))), "answer {n}: {answer:?}");
    }
}

/// Unanswered requests are bounded by their bytes too: large batches stop at
/// `APPEND_PIPELINE_BYTES_MAX`, well before `APPEND_PIPELINE_MAX` of them.
#[tokio::test]
async fn stream_append_holds_large_batches_at_the_byte_bound() {
    use futures_util::StreamExt;
    use openraft::network::v2::RaftNetworkV2;
    use openraft::network::RPCOption;
    use openraft::type_config::alias::{EntryOf, LogIdOf};
    use std::sync::atomic::Ordering;

    let peer = SilentPeer::default();
    let (addr, _) = serve_silent(peer.clone()).await;
    let mut client = client_of(&addr).await;
    let mib = bytes::Bytes::from(vec![7u8; 1 << 20]);
    let large = (1..=40u64).map(move |index| {
        let mut request = heartbeat();
        request.prev_log_id = (index > 1).then(|| LogIdOf::<TypeConfig>::new_term_index(2, index - 1));
        request.entries = vec![EntryOf::<TypeConfig> {
            log_id: LogIdOf::<TypeConfig>::new_term_index(2, index),
            payload: openraft::EntryPayload::Normal(Proposal(mib.clone())),
        }];
        request
    });
    let large = futures_util::stream::iter(large).chain(futures_util::stream::pending());
    let mut answers = client.stream_append(Box::pin(large), RPCOption::new(Duration::from_secs(60))).await.unwrap();
    // Polled for a while: the requests go out until the bound, and no answer comes.
    assert!(tokio::time::timeout(Duration::from_secs(2), answers.next()).await.is_err());
    let sent = peer.received.load(Ordering::SeqCst);
    let bound = super::network::APPEND_PIPELINE_BYTES_MAX >> 20;
    assert_eq!(sent, bound, "1 MiB requests sent before any answer");
}

/// A peer that answered `StreamAppend` UNIMPLEMENTED is sent one call at a time for a
/// while, then the stream is tried again (it may have been upgraded).
#[tokio::test(start_paused = true)]
async fn an_older_peer_is_tried_with_the_stream_again_after_a_while() {
    use openraft::type_config::TypeConfigExt;
    let unary = super::network::Unary::default();
    assert!(!unary.now());
    unary.set(Some(TypeConfig::now()));
    assert!(unary.now());
    tokio::time::advance(super::network::UNARY_RETRY_AFTER - Duration::from_secs(1)).await;
    assert!(unary.now());
    tokio::time::advance(Duration::from_secs(2)).await;
    assert!(!unary.now(), "tried again");
    assert!(!unary.now(), "and stays so until the peer refuses again");
}
