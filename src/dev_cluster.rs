//! `mini-pubsub dev-cluster`: a local cluster in one command. It starts N `serve`
//! processes of this same binary on 127.0.0.1, prints where each is, waits for a leader, and
//! on Ctrl-C or SIGTERM stops each node by its pid (SIGTERM, then SIGKILL after a bound).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::Context;

use mini_pubsub::config::CLUSTER_NODES_MAX;
use mini_pubsub::wire::pb;

/// How long a stopping node has after SIGTERM before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(15);

/// How long the command waits for the first leader before it says it has none yet.
const LEADER_WAIT: Duration = Duration::from_secs(10);

/// `dev-cluster`'s options.
#[derive(clap::Args)]
pub struct DevCluster {
    /// Nodes to run (1 to 7).
    #[arg(long, default_value_t = 3)]
    nodes: u64,
    /// Node N's gRPC port is BASE_PORT + N - 1, its peer port BASE_PORT + 100 + N - 1, and
    /// its Prometheus metrics are on BASE_PORT + 200 + N - 1.
    #[arg(long, default_value_t = 50051)]
    base_port: u16,
    /// Node N keeps its data in DIR/node-N (its log in DIR/node-N.log); a restart on the
    /// same directory rejoins the same cluster.
    #[arg(long, default_value = "dev-cluster")]
    data_dir: PathBuf,
}

/// One running node.
struct Node {
    id: u64,
    grpc: String,
    child: Child,
    /// It exited on its own, and that was said.
    exited: bool,
}

impl DevCluster {
    /// Starts the nodes and runs until Ctrl-C or SIGTERM, then stops them.
    pub async fn run(self, shutdown: impl std::future::Future<Output = ()>) -> anyhow::Result<()> {
        anyhow::ensure!(
            (1..=CLUSTER_NODES_MAX as u64).contains(&self.nodes),
            "--nodes must be 1 to {CLUSTER_NODES_MAX}; {} is given",
            self.nodes
        );
        let last = u64::from(self.base_port) + 200 + self.nodes - 1;
        anyhow::ensure!(
            last <= u64::from(u16::MAX),
            "--base-port {} leaves no room for the peer ports",
            self.base_port
        );
        let grpc = |id: u64| format!("127.0.0.1:{}", u64::from(self.base_port) + id - 1);
        let peer = |id: u64| format!("127.0.0.1:{}", u64::from(self.base_port) + 100 + id - 1);
        let metrics = |id: u64| format!("127.0.0.1:{}", u64::from(self.base_port) + 200 + id - 1);
        let ids = 1..=self.nodes;
        let peers: Vec<String> = ids.clone().map(|id| format!("{id}={}", peer(id))).collect();
        let brokers: Vec<String> = ids.clone().map(|id| format!("{id}={}", grpc(id))).collect();
        let (peers, brokers) = (peers.join(","), brokers.join(","));
        std::fs::create_dir_all(&self.data_dir)
            .with_context(|| format!("cannot create {}", self.data_dir.display()))?;
        let exe = std::env::current_exe().context("cannot find this program's path to start the nodes")?;
        let mut nodes = Vec::new();
        for id in ids {
            let data = self.data_dir.join(format!("node-{id}"));
            let log = self.data_dir.join(format!("node-{id}.log"));
            let addrs = Addrs { grpc: grpc(id), metrics: metrics(id), peers: peers.clone(), brokers: brokers.clone() };
            let child = start(&exe, id, &addrs, &data, &log);
            let child = match child {
                Ok(child) => child,
                Err(e) => {
                    stop_all(&mut nodes).await;
                    return Err(e);
                }
            };
            println!(
                "node {id}: pid {:>7}  grpc {}  peers {}  metrics {}  data {}  log {}",
                child.id(),
                grpc(id),
                peer(id),
                metrics(id),
                data.display(),
                log.display()
            );
            nodes.push(Node { id, grpc: grpc(id), child, exited: false });
        }
        match wait_for_leader(&nodes).await {
            Some((id, addr)) => println!("node {id} leads; send calls to {addr} (every node answers Admin.GetCluster)"),
            None => println!("no leader within {LEADER_WAIT:?}; see the nodes' logs"),
        }
        println!("Ctrl-C stops all {} nodes", nodes.len());
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                () = &mut shutdown => break,
                () = tokio::time::sleep(Duration::from_millis(500)) => report_exits(&mut nodes),
            }
        }
        stop_all(&mut nodes).await;
        Ok(())
    }
}

/// Where a node listens, and the cluster's settings.
struct Addrs {
    grpc: String,
    metrics: String,
    peers: String,
    brokers: String,
}

/// Starts node `id` of the cluster, its standard error into `log`.
fn start(exe: &Path, id: u64, addrs: &Addrs, data: &Path, log: &Path) -> anyhow::Result<Child> {
    let log = std::fs::File::create(log).with_context(|| format!("cannot create {}", log.display()))?;
    let mut command = Command::new(exe);
    command
        .args(["serve", "--listen", &addrs.grpc, "--node-id", &id.to_string(), "--peers", &addrs.peers])
        .args(["--brokers", &addrs.brokers, "--metrics-listen", &addrs.metrics])
        .arg("--data-dir")
        .arg(data)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log);
    // Ctrl-C in the terminal goes to the whole process group; the nodes are stopped by this
    // command instead, each by its pid, so none is left behind and none is stopped twice.
    #[cfg(unix)]
    std::os::unix::process::CommandExt::process_group(&mut command, 0);
    command.spawn().with_context(|| format!("cannot start node {id}"))
}

/// The leader once one serves: its id and gRPC address.
async fn wait_for_leader(nodes: &[Node]) -> Option<(u64, String)> {
    let found = tokio::time::timeout(LEADER_WAIT, async {
        loop {
            for node in nodes {
                let Ok(channel) = tonic::transport::Endpoint::from_shared(format!("http://{}", node.grpc)) else {
                    continue;
                };
                let channel = channel.timeout(Duration::from_secs(1)).connect_lazy();
                let mut admin = pb::admin_client::AdminClient::new(channel);
                if let Ok(cluster) = admin.get_cluster(pb::GetClusterRequest {}).await {
                    if cluster.get_ref().serving {
                        return (node.id, node.grpc.clone());
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    found.await.ok()
}

/// Says which nodes exited on their own (they stay down: look at their logs).
fn report_exits(nodes: &mut [Node]) {
    for node in nodes.iter_mut().filter(|n| !n.exited) {
        if let Ok(Some(status)) = node.child.try_wait() {
            println!("node {} exited ({status}); its log says why", node.id);
            node.exited = true;
        }
    }
}

/// SIGTERM to every node still running, each by its pid; SIGKILL to any still running
/// `STOP_GRACE` later.
async fn stop_all(nodes: &mut Vec<Node>) {
    let running = nodes.iter().filter(|n| !n.exited).count();
    for node in nodes.iter().filter(|n| !n.exited) {
        let _ = Command::new("kill").args(["-TERM", &node.child.id().to_string()]).status();
    }
    for node in nodes.iter_mut().filter(|n| !n.exited) {
        let mut stopped = false;
        for _ in 0..STOP_GRACE.as_millis() / 50 {
            if matches!(node.child.try_wait(), Ok(Some(_)) | Err(_)) {
                stopped = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        if !stopped {
            println!("node {} did not stop within {STOP_GRACE:?}; killing it", node.id);
            let _ = node.child.kill();
            let _ = node.child.wait();
        }
    }
    println!("stopped {running} nodes");
    nodes.clear();
}
