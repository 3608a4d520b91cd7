//! The real binary with `--metrics-listen`: a publish, deliver, ack, nack and dead-letter
//! workload shows up on `/metrics` as Prometheus text with the exact counts, histograms
//! with buckets, and the open streams; a deleted subscription's series leave it.

mod common;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{channel, http_get as get, sample as value, subscribe, KillOnDrop};
use mini_pubsub::wire::pb;

/// How long a series may take to show a change: the driver exports once a second.
const EXPORTED: Duration = Duration::from_secs(5);
/// How long a deleted subscription's series may stay: the exporter's idle timeout (10 s)
/// and an export.
const AGED_OUT: Duration = Duration::from_secs(20);

#[tokio::test]
async fn metrics_count_the_workload_per_topic_and_subscription() {
    let data = tempfile::tempdir().unwrap();
    let mut server = KillOnDrop(
        Command::new(env!("CARGO_BIN_EXE_mini-pubsub"))
            .args(["serve", "--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0", "--data-dir"])
            .arg(data.path())
            .env("RUST_LOG", "info")
            .stderr(Stdio::piped())
            .spawn()
            .expect("the binary starts"),
    );
    let (grpc, metrics) = addresses(&mut server.0);
    let channel = channel(grpc).await;
    let mut admin = pb::admin_client::AdminClient::new(channel.clone());
    let mut pubsub = pb::pub_sub_client::PubSubClient::new(channel);

    for name in ["t", "dlq"] {
        admin.create_topic(pb::CreateTopicRequest { name: name.into(), ..Default::default() }).await.unwrap();
    }
    let dead_letter_policy = Some(pb::DeadLetterPolicy { dead_letter_topic: "dlq".into(), max_delivery_attempts: 2 });
    let req =
        pb::CreateSubscriptionRequest { name: "s".into(), topic: "t".into(), dead_letter_policy, ..Default::default() };
    admin.create_subscription(req).await.unwrap();
    for value in ["a", "b", "c"] {
        let req = pb::PublishRequest { topic: "t".into(), value: value.into(), ..Default::default() };
        pubsub.publish(req).await.unwrap();
    }

    // Ack two, nack the third; nack it again when it comes back: its second attempt was
    // its last, so it goes to `dlq`.
    let mut sub = subscribe(&pubsub, pb::SubscribeRequest { subscription: "s".into(), ..Default::default() }).await;
    let first = sub.messages(3).await;
    let ids: Vec<String> = first.iter().map(|m| m.ack_id.clone()).collect();
    sub.send(pb::SubscribeRequest { ack_ids: ids[..2].to_vec(), nack_ids: ids[2..].to_vec(), ..Default::default() })
        .await;
    let again = sub.messages(1).await;
    assert_eq!(again[0].delivery_attempt, 2, "{again:?}");
    sub.send(pb::SubscribeRequest { nack_ids: vec![again[0].ack_id.clone()], ..Default::default() }).await;

    let s = r#"{topic="t",subscription="s"}"#;
    let expected = [
        (r#"mini_pubsub_published_messages_total{topic="t"}"#.to_string(), 3.0),
        (r#"mini_pubsub_published_messages_total{topic="dlq"}"#.to_string(), 0.0),
        (format!("mini_pubsub_delivered_messages_total{s}"), 4.0),
        (format!("mini_pubsub_redelivered_messages_total{s}"), 1.0),
        (format!("mini_pubsub_acked_messages_total{s}"), 2.0),
        (format!("mini_pubsub_nacked_messages_total{s}"), 2.0),
        (format!("mini_pubsub_dead_lettered_messages_total{s}"), 1.0),
        (format!("mini_pubsub_backlog_messages{s}"), 0.0),
        (format!("mini_pubsub_outstanding_messages{s}"), 0.0),
        ("mini_pubsub_open_streams".to_string(), 1.0),
        (r#"mini_pubsub_end_to_end_latency_seconds_bucket{topic="t",subscription="s",le="+Inf"}"#.to_string(), 4.0),
        (format!("mini_pubsub_end_to_end_latency_seconds_count{s}"), 4.0),
        (r#"mini_pubsub_publish_latency_seconds_bucket{le="+Inf"}"#.to_string(), 3.0),
        ("mini_pubsub_publish_latency_seconds_count".to_string(), 3.0),
        // Three publishes and the dead-letter copy; under fsync=always each is synced.
        ("mini_pubsub_storage_append_seconds_count".to_string(), 4.0),
        ("mini_pubsub_storage_fsync_seconds_count".to_string(), 4.0),
    ];
    let text = wait_for(metrics, |text| expected.iter().all(|(series, v)| value(text, series) == Some(*v))).await;
    for kind in ["publish_latency_seconds", "end_to_end_latency_seconds", "storage_append_seconds"] {
        assert!(text.contains(&format!("# TYPE mini_pubsub_{kind} histogram")), "{kind} is not a histogram:\n{text}");
    }
    // Publish latency has real buckets, and a publish on loopback takes under 10 s.
    assert_eq!(value(&text, r#"mini_pubsub_publish_latency_seconds_bucket{le="10"}"#), Some(3.0), "{text}");

    // The stream closes: no stream is open.
    drop(sub);
    wait_for(metrics, |text| value(text, "mini_pubsub_open_streams") == Some(0.0)).await;

    // A deleted subscription's counters and gauges leave the output; the topic's stay.
    admin.delete_subscription(pb::DeleteSubscriptionRequest { name: "s".into() }).await.unwrap();
    let text = wait_within(AGED_OUT, metrics, |text| !gauges_and_counters_of_s(text)).await;
    assert_eq!(value(&text, r#"mini_pubsub_published_messages_total{topic="t"}"#), Some(3.0), "{text}");

    let (status, _) = get(metrics, "/nothing").await;
    assert!(status.contains(" 404 "), "{status}");
}

/// Whether any counter or gauge of subscription `s` is in `text` (its latency histogram
/// stays, by design).
fn gauges_and_counters_of_s(text: &str) -> bool {
    text.lines().any(|line| line.contains(r#"subscription="s""#) && !line.starts_with("mini_pubsub_end_to_end"))
}

/// The gRPC and metrics addresses the server logged at startup. The rest of its log is
/// read (and dropped) by a thread, so the server never blocks on a full pipe.
fn addresses(child: &mut std::process::Child) -> (SocketAddr, SocketAddr) {
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines().map_while(Result::ok);
    let (mut grpc, mut metrics) = (None, None);
    let mut seen = Vec::new();
    for line in lines.by_ref().take(20) {
        let after = |marker: &str| {
            line.split(marker).nth(1).and_then(|rest| rest.split_whitespace().next()).map(str::to_string)
        };
        grpc = grpc.or(after("listening on "));
        metrics = metrics.or(after("metrics on http://").and_then(|a| a.strip_suffix("/metrics").map(str::to_string)));
        seen.push(line);
        if let (Some(grpc), Some(metrics)) = (&grpc, &metrics) {
            let found = (grpc.parse().unwrap(), metrics.parse().unwrap());
            std::thread::spawn(move || lines.for_each(drop));
            return found;
        }
    }
    panic!("no gRPC and metrics addresses in {seen:#?}");
}

async fn wait_for(addr: SocketAddr, done: impl Fn(&str) -> bool) -> String {
    wait_within(EXPORTED, addr, done).await
}

/// Scrapes `/metrics` until `done` holds; panics with the last scrape after `limit`.
async fn wait_within(limit: Duration, addr: SocketAddr, done: impl Fn(&str) -> bool) -> String {
    let tries = limit.as_millis() / 100;
    let mut text = String::new();
    for _ in 0..tries {
        let (status, body) = get(addr, "/metrics").await;
        assert!(status.contains(" 200 "), "{status}");
        text = body;
        if done(&text) {
            return text;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("not within {limit:?}; the last scrape:\n{text}");
}
