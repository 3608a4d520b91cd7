//! Failover: from the SIGKILL of a cluster's leader to the first publish acknowledged after
//! it, through each system's own client (which finds the new leader by itself), over
//! several kills; the killed node is started again on its data between kills.

use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;

use crate::plan::{Class, System};
use crate::servers::{Binaries, ServerProcess};
use crate::systems::{Driver, Layout};

/// How long one kill may take to be followed by an acknowledged publish.
const FAILOVER_MAX: Duration = Duration::from_secs(30);
/// How long a restarted node has to catch up before the next kill.
const SETTLE: Duration = Duration::from_secs(3);
/// How often the publisher tries after a kill, at most.
const RETRY_EVERY: Duration = Duration::from_millis(1);

/// Each kill's failover time, for `system` (a cluster system).
pub async fn measure(system: System, class: Class, binaries: &Binaries, kills: usize) -> anyhow::Result<Vec<Duration>> {
    let started = {
        let binaries = binaries.clone();
        tokio::task::spawn_blocking(move || ServerProcess::start(system, class, &binaries)).await??
    };
    let mut server = started;
    let driver = Driver::connect(&server, class, &Layout::publish_only()).await.context("set-up")?;
    let mut times = Vec::new();
    for kill in 0..kills {
        let sender = driver.sender(None).await?;
        // One acknowledged publish first: the client knows the leader.
        sender.send(Bytes::from_static(b"before")).await?.await?;
        let leader = leader(&server).await.with_context(|| format!("kill {kill}: no leader found"))?;
        server.kill_node(leader);
        let killed_at = Instant::now();
        let acked = tokio::time::timeout(FAILOVER_MAX, async {
            loop {
                let attempt = async { sender.send(Bytes::from_static(b"after")).await?.await };
                if attempt.await.is_ok() {
                    return killed_at.elapsed();
                }
                tokio::time::sleep(RETRY_EVERY).await;
            }
        })
        .await
        .with_context(|| format!("kill {kill}: no publish acknowledged within {FAILOVER_MAX:?}"))?;
        eprintln!("  {system} kill {}: node {} killed, a publish acknowledged {acked:?} later", kill + 1, leader + 1);
        times.push(acked);
        drop(sender);
        server.restart_node(leader)?;
        tokio::time::sleep(SETTLE).await;
    }
    let _ = tokio::task::spawn_blocking(move || drop(server)).await;
    Ok(times)
}

/// The index of the node that leads (for NATS, the stream's leader).
async fn leader(server: &ServerProcess) -> anyhow::Result<usize> {
    match server.system {
        System::OursCluster => {
            for addr in &server.addrs {
                let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?
                    .timeout(Duration::from_secs(2))
                    .connect_lazy();
                let mut admin = mini_pubsub::wire::pb::admin_client::AdminClient::new(channel);
                if let Ok(cluster) = admin.get_cluster(mini_pubsub::wire::pb::GetClusterRequest {}).await {
                    let id = cluster.into_inner().leader_id;
                    if id > 0 {
                        return Ok(id as usize - 1);
                    }
                }
            }
            anyhow::bail!("no node names a leader")
        }
        System::NatsCluster => {
            let urls: Vec<String> = server.addrs.iter().map(|a| format!("nats://{a}")).collect();
            let client = async_nats::connect(urls).await?;
            let js = async_nats::jetstream::new(client);
            let mut stream = js.get_stream(crate::systems::STREAM).await?;
            let info = stream.info().await?;
            let name = info.cluster.as_ref().and_then(|c| c.leader.clone()).context("the stream names no leader")?;
            let index: usize = name.trim_start_matches('n').parse().context("a server name n1, n2 or n3")?;
            Ok(index - 1)
        }
        other => anyhow::bail!("{other} is not a cluster"),
    }
}

/// The median and the largest of `times`.
pub fn summary(times: &[Duration]) -> (Duration, Duration) {
    let mut sorted = times.to_vec();
    sorted.sort();
    (sorted[sorted.len() / 2], sorted[sorted.len() - 1])
}
