//! The driver's series against a real Prometheus recorder, installed for this thread only.

use super::*;
use crate::core::{
    AckOp, Answer, At, Broker, BrokerConfig, Command, Delivery, Flow, OutgoingMessage, Output, StartPosition,
    StreamTarget, SubscriptionSpec,
};
use crate::storage::MemoryStorage;

/// Applies `command` at monotonic time 0 and wall time `wall_ms`, as the driver would.
fn apply(b: &mut Broker, wall_ms: u64, command: Command) -> Answer {
    b.handle(At { now_ms: 0, wall_ms }, command).unwrap()
}

fn create_subscription(b: &mut Broker) {
    let spec = SubscriptionSpec { name: "s".into(), topic: "t".into(), ..Default::default() };
    apply(b, 0, Command::CreateSubscription(spec));
}

fn broker() -> Broker {
    let mut b = Broker::new(BrokerConfig::default(), Box::new(MemoryStorage)).unwrap();
    apply(&mut b, 0, Command::CreateTopic { name: "t".into(), partitions: None, dedupe_window_ms: None });
    create_subscription(&mut b);
    b
}

fn publish(b: &mut Broker, metrics: &mut BrokerMetrics, wall_ms: u64, count: usize) {
    let messages = vec![OutgoingMessage { value: "m".into(), ..Default::default() }; count];
    let Answer::Published(published) = apply(b, wall_ms, Command::Publish { topic: "t".into(), messages }) else {
        panic!("a publish answers where its messages went")
    };
    metrics.published("t", &published);
}

fn pull(b: &mut Broker, max_messages: u32) -> Vec<Delivery> {
    let Answer::Deliveries(deliveries) = apply(b, 0, Command::Pull { subscription: "s".into(), max_messages }) else {
        panic!("a pull answers its deliveries")
    };
    deliveries
}

fn acks(b: &mut Broker, op: AckOp, ack_ids: &[String]) {
    apply(b, 0, Command::Acks { subscription: "s".into(), op, ack_ids: ack_ids.to_vec() });
}

/// The value of the one line of `text` that starts with `series ` (name and labels).
fn value(text: &str, series: &str) -> Option<f64> {
    let prefix = format!("{series} ");
    text.lines().find_map(|line| line.strip_prefix(&prefix)).map(|v| v.parse().unwrap())
}

#[test]
fn counts_are_exported_once_each_and_continue_across_a_subscription_made_again() {
    let recorder = builder().unwrap().build_recorder();
    let _local = metrics::set_default_local_recorder(&recorder);
    let mut b = broker();
    let mut metrics = BrokerMetrics::new();
    publish(&mut b, &mut metrics, 1000, 3);
    let deliveries = pull(&mut b, 10);
    metrics.delivered(1250, "s", &deliveries);
    let ids: Vec<String> = deliveries.iter().map(|d| d.ack_id.clone()).collect();
    acks(&mut b, AckOp::Ack, &ids[..2]);
    acks(&mut b, AckOp::Nack { delay_ms: None, terminal: false, reason: None }, &ids[2..]);
    metrics.export(1000, &b, 2);
    metrics.export(2000, &b, 2); // nothing new: nothing added twice

    let text = recorder.handle().render();
    let s = r#"{topic="t",subscription="s"}"#;
    assert_eq!(value(&text, r#"mini_pubsub_published_messages_total{topic="t"}"#), Some(3.0), "{text}");
    assert_eq!(value(&text, &format!("{DELIVERED}{s}")), Some(3.0), "{text}");
    assert_eq!(value(&text, &format!("{ACKED}{s}")), Some(2.0), "{text}");
    assert_eq!(value(&text, &format!("{NACKED}{s}")), Some(1.0), "{text}");
    assert_eq!(value(&text, &format!("{REDELIVERED}{s}")), Some(0.0), "{text}");
    assert_eq!(value(&text, &format!("{BACKLOG}{s}")), Some(1.0), "{text}");
    assert_eq!(value(&text, &format!("{OUTSTANDING}{s}")), Some(0.0), "{text}");
    assert_eq!(value(&text, OPEN_STREAMS), Some(2.0), "{text}");
    // 250 ms after publishing: in the 0.25 s bucket, not in the 0.1 s one.
    let bucket =
        |le: &str| value(&text, &format!(r#"{END_TO_END_LATENCY}_bucket{{topic="t",subscription="s",le="{le}"}}"#));
    assert_eq!((bucket("0.1"), bucket("0.25"), bucket("+Inf")), (Some(0.0), Some(3.0), Some(3.0)), "{text}");
    assert!(text.contains(&format!("# TYPE {END_TO_END_LATENCY} histogram")), "{text}");

    // A subscription made again under the name has new counts; its series goes on.
    apply(&mut b, 0, Command::DeleteSubscription { name: "s".into() });
    metrics.export(3000, &b, 0);
    create_subscription(&mut b);
    assert_eq!(pull(&mut b, 1).len(), 1);
    metrics.export(4000, &b, 0);
    let text = recorder.handle().render();
    assert_eq!(value(&text, &format!("{DELIVERED}{s}")), Some(4.0), "{text}");
    assert_eq!(value(&text, &format!("{BACKLOG}{s}")), Some(3.0), "{text}");
}

#[test]
fn ephemeral_subscriptions_of_a_topic_share_one_series() {
    let recorder = builder().unwrap().build_recorder();
    let _local = metrics::set_default_local_recorder(&recorder);
    let mut b = broker();
    let mut metrics = BrokerMetrics::new();
    publish(&mut b, &mut metrics, 0, 2);
    for _ in 0..2 {
        let target = StreamTarget::Topic { topic: "t".into(), ack_deadline_ms: None, start: StartPosition::Earliest };
        let open = Command::OpenStream {
            target,
            flow: Flow::default(),
            session_timeout_ms: None,
            client_id: None,
            ops: Vec::new(),
        };
        apply(&mut b, 0, open);
    }
    while let Some(output) = b.poll_output() {
        if let Output::Deliver { deliveries, .. } = output {
            metrics.delivered(0, "__ephemeral.1", &deliveries);
        }
    }
    metrics.export(1000, &b, 2);
    let text = recorder.handle().render();
    let e = r#"{topic="t",subscription="__ephemeral"}"#;
    assert_eq!(value(&text, &format!("{DELIVERED}{e}")), Some(4.0), "{text}");
    assert_eq!(value(&text, &format!("{OUTSTANDING}{e}")), Some(4.0), "{text}");
    assert_eq!(value(&text, &format!("{END_TO_END_LATENCY}_count{e}")), Some(4.0), "{text}");
    assert!(!text.contains("ephemeral.1"), "{text}");
}
