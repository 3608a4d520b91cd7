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

use super::log::identity;
use super::test_sm::ListSm;
use super::{Connector, PeerNetwork, Proposal, RaftLog, RaftService, TypeConfig};
use crate::env::StdFs;

type Raft = openraft::Raft<TypeConfig, ListSm>;

/// Longest any wait here takes before the test fails.
const WAIT_MAX: Duration = Duration::from_secs(20);

struct Node {
    raft: Raft,
    machine: ListSm,
    server: JoinHandle<()>,
}

async fn start(id: u64, dir: &std::path::Path, listener: tokio::net::TcpListener, config: Arc<Config>) -> Node {
    let connect: Connector =
        Arc::new(|addr: &str| Endpoint::from_shared(format!("http://{addr}")).expect("an address").connect_lazy());
    let log = RaftLog::open(Arc::new(StdFs), &dir.join(format!("node-{id}")), &identity(id, 1..=3)).unwrap();
    let machine = ListSm::default();
    let raft = Raft::new(id, config, PeerNetwork::new(id, connect), log, machine.clone()).await.unwrap();
    let service = RaftService::new(raft.clone());
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
    let server = tokio::spawn(async move {
        let _ = tonic::transport::Server::builder().add_service(service).serve_with_incoming(incoming).await;
    });
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

async fn cluster() {
    let dir = tempfile::tempdir().unwrap();
    let config = Config {
        heartbeat_interval: 100,
        election_timeout_min: 300,
        election_timeout_max: 600,
        enable_pre_vote: Some(true),
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
        nodes.insert(id, start(id, dir.path(), listener, config.clone()).await);
    }
    nodes[&1].raft.initialize(members).await.unwrap();
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
    let node = start(1, dir.path(), listener, config).await;
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
