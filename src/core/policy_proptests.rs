//! Random operation sequences on a subscription with a retry policy, a dead-letter policy
//! and (half the time) ordering keys: the invariants hold after every step, a message of a
//! key is delivered only once every earlier message of its key is acked or dead-lettered,
//! and in the end every message is acked or dead-lettered. Some runs park at most a few
//! messages per partition; some run on the file log with acknowledgement after fsync, and
//! sync after every step as the driver does each turn (dead-letter copies in transit).

use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;

use std::sync::Arc;

use super::*;
use crate::env::StdFs;
use crate::storage::{FileStorage, FileStorageConfig, MemoryStorage, Storage};

#[derive(Debug, Clone)]
enum Op {
    Publish { key: Option<u8>, count: u8 },
    Open { max: u32 },
    Close { stream: usize },
    Ack { delivery: usize },
    Nack { delivery: usize, delay_ms: Option<u64> },
    Terminal { delivery: usize },
    Advance { ms: u64 },
    Pull { max: u32 },
    Redrive { max: u32 },
    Seek { latest: bool },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (proptest::option::of(0u8..3), 1u8..4).prop_map(|(key, count)| Op::Publish { key, count }),
        1 => (1u32..4).prop_map(|max| Op::Open { max }),
        1 => any::<usize>().prop_map(|stream| Op::Close { stream }),
        4 => any::<usize>().prop_map(|delivery| Op::Ack { delivery }),
        2 => (any::<usize>(), proptest::option::of(0u64..1500)).prop_map(|(delivery, delay_ms)| Op::Nack { delivery, delay_ms }),
        1 => any::<usize>().prop_map(|delivery| Op::Terminal { delivery }),
        3 => (0u64..2000).prop_map(|ms| Op::Advance { ms }),
        1 => (1u32..4).prop_map(|max| Op::Pull { max }),
        1 => (1u32..4).prop_map(|max| Op::Redrive { max }),
        1 => any::<bool>().prop_map(|latest| Op::Seek { latest }),
    ]
}

/// What the test knows of partition and offset `(p, o)` of topic `t`.
#[derive(Default)]
struct Model {
    keys: BTreeMap<(u32, u64), Option<String>>,
    deliveries: Vec<Delivery>,
    streams: Vec<StreamId>,
    /// Acked offsets (the ack was applied).
    acked: BTreeSet<(u32, u64)>,
    /// Dead-letter copies (by offset in the dead-letter topic) that no longer stand for
    /// their message: a redrive brought it back, or a seek started over after them.
    consumed: BTreeSet<u64>,
    /// Offsets below a seek's target count as done.
    floor: Vec<u64>,
    /// For each redriven offset, the offsets of its key delivered before it came back:
    /// those went first, and it does not hold them back.
    overtaken: BTreeMap<(u32, u64), BTreeSet<u64>>,
    ordered: bool,
}

impl Model {
    /// Whether `(p, o)` has a dead-letter copy that still stands for it.
    fn dead(&self, b: &Broker, at: (u32, u64)) -> bool {
        let log = &b.topics["dlq"].logs[0];
        let copies = log.read(0, usize::MAX, usize::MAX).unwrap();
        copies.iter().filter(|r| !self.consumed.contains(&r.offset)).any(|r| {
            let attr = |k: &str| r.record.attributes.get(k).and_then(|v| v.parse::<u64>().ok());
            attr("dead_letter_partition") == Some(u64::from(at.0)) && attr("dead_letter_offset") == Some(at.1)
        })
    }

    fn finished(&self, b: &Broker, at: (u32, u64)) -> bool {
        at.1 < self.floor[at.0 as usize] || self.acked.contains(&at) || self.dead(b, at)
    }

    fn record(&mut self, b: &Broker, delivery: Delivery) {
        let at = (delivery.partition, delivery.offset);
        if self.ordered {
            if let Some(key) = self.keys[&at].clone() {
                let earlier = self.keys.range((at.0, 0)..at).filter(|(_, k)| k.as_ref() == Some(&key));
                for (before, _) in earlier {
                    let overtook = self.overtaken.get(before).is_some_and(|o| o.contains(&at.1));
                    assert!(
                        overtook || self.finished(b, *before),
                        "{at:?} of key {key} delivered before {before:?} finished"
                    );
                }
            }
        }
        self.deliveries.push(delivery);
    }

    fn drain(&mut self, b: &mut Broker) {
        while let Some(output) = b.poll_output() {
            if let Output::Deliver { deliveries, .. } = output {
                deliveries.into_iter().for_each(|d| self.record(b, d));
            }
        }
    }

    fn answer(&mut self, b: &mut Broker, now: u64, op: AckOp, delivery: usize) {
        let Some(d) = (!self.deliveries.is_empty()).then(|| self.deliveries[delivery % self.deliveries.len()].clone())
        else {
            return;
        };
        let is_ack = op == AckOp::Ack;
        let reply = b.acks(now, "s", op, vec![d.ack_id]).unwrap();
        if is_ack && reply[0].outcome == AckOutcome::Applied {
            self.acked.insert((d.partition, d.offset));
        }
    }
}

/// How a run is set up.
#[derive(Debug, Clone, Copy)]
struct Setup {
    ordered: bool,
    parked_max: usize,
    durable: bool,
}

fn broker(setup: Setup, dir: &std::path::Path) -> Broker {
    let config =
        BrokerConfig { ack_deadline_ms: 1000, ordered_parked_messages_max: setup.parked_max, ..Default::default() };
    let storage: Box<dyn Storage> = if setup.durable {
        Box::new(FileStorage::open(Arc::new(StdFs), FileStorageConfig::new(dir)).unwrap())
    } else {
        Box::new(MemoryStorage)
    };
    let mut b = Broker::open(config, storage).unwrap();
    b.create_topic("t", Some(2)).unwrap();
    b.create_topic("dlq", Some(1)).unwrap();
    let spec = SubscriptionSpec {
        name: "s".into(),
        topic: "t".into(),
        retry: Some(RetrySpec { minimum_backoff_ms: Some(100), maximum_backoff_ms: Some(800) }),
        dead_letter: Some(DeadLetterSpec { topic: "dlq".into(), max_delivery_attempts: Some(3) }),
        ordered: setup.ordered,
        ..Default::default()
    };
    b.create_subscription(spec).unwrap();
    b.create_subscription(SubscriptionSpec { name: "dead".into(), topic: "dlq".into(), ..Default::default() }).unwrap();
    b
}

impl Model {
    /// Redrives up to `max` dead letters and notes what went back; true when any did.
    fn redrive(&mut self, b: &mut Broker, now: u64, max: u32) -> bool {
        let mut rewound = false;
        for r in b.redrive_dead_letters(now, "dead", max).unwrap() {
            if r.outcome.is_ok() {
                let delivered = self.deliveries.iter().filter(|d| d.partition == r.partition);
                let offsets = delivered.map(|d| d.offset).filter(|o| *o > r.offset).collect();
                self.overtaken.insert((r.partition, r.offset), offsets);
                let copy = r.message_id.rsplit('-').next().and_then(|o| o.parse().ok());
                self.consumed.insert(copy.expect("a dead-letter topic message id"));
                self.acked.remove(&(r.partition, r.offset));
                rewound = true;
            }
        }
        rewound
    }

    /// Seeks to the earliest or latest offset and starts the model over from there.
    fn seek(&mut self, b: &mut Broker, now: u64, latest: bool) {
        let target = if latest { SeekTarget::Latest } else { SeekTarget::Earliest };
        let offsets = b.seek(now, "s", target).unwrap();
        self.floor = offsets.iter().map(|(_, o)| *o).collect();
        self.acked.clear();
        self.overtaken.clear();
        // Offsets dead-lettered before the seek are behind us or will be offered again.
        self.consumed.extend(b.topics["dlq"].logs[0].read(0, usize::MAX, usize::MAX).unwrap().iter().map(|r| r.offset));
    }
}

fn run(ops: Vec<Op>, setup: Setup) {
    let dir = tempfile::tempdir().unwrap();
    let mut b = broker(setup, dir.path());
    let mut m = Model { ordered: setup.ordered, floor: vec![0, 0], ..Default::default() };
    let (mut now, mut serial) = (0u64, 0u64);
    for op in ops {
        let committed_before: Vec<u64> =
            b.subscription_stats("s").unwrap().partitions.iter().map(|p| p.committed_offset).collect();
        let mut rewound = false;
        match op {
            Op::Publish { key, count } => {
                let key = key.map(|k| format!("k{k}"));
                let batch: Vec<OutgoingMessage> = (0..count)
                    .map(|_| {
                        serial += 1;
                        OutgoingMessage { value: serial.to_string().into(), key: key.clone(), ..Default::default() }
                    })
                    .collect();
                for p in b.publish(now, now, "t", batch).unwrap() {
                    m.keys.insert((p.partition, p.offset), key.clone());
                }
            }
            Op::Open { max } => {
                let flow = Flow { max_outstanding_messages: max, max_outstanding_bytes: 0 };
                m.streams.push(b.open_stream(now, StreamTarget::Subscription("s".into()), flow).unwrap().0);
            }
            Op::Close { stream } => {
                if !m.streams.is_empty() {
                    let i = stream % m.streams.len();
                    b.close_stream(now, m.streams.remove(i));
                }
            }
            Op::Ack { delivery } => m.answer(&mut b, now, AckOp::Ack, delivery),
            Op::Nack { delivery, delay_ms } => {
                m.answer(&mut b, now, AckOp::Nack { delay_ms, terminal: false, reason: None }, delivery)
            }
            Op::Terminal { delivery } => {
                let op = AckOp::Nack { delay_ms: None, terminal: true, reason: Some("bad".into()) };
                m.answer(&mut b, now, op, delivery)
            }
            Op::Advance { ms } => {
                now += ms;
                b.handle_timeout(now);
            }
            Op::Pull { max } => {
                for d in b.pull(now, "s", max).unwrap() {
                    m.record(&b, d);
                }
            }
            Op::Redrive { max } => rewound = m.redrive(&mut b, now, max),
            Op::Seek { latest } => {
                m.seek(&mut b, now, latest);
                rewound = true;
            }
        }
        m.drain(&mut b);
        if setup.durable {
            // The end of a driver's turn: one sync makes the turn's records visible and
            // settles dead-letter copies in transit.
            assert!(b.sync(now).is_empty());
            m.drain(&mut b);
        }
        b.assert_invariants();
        let stats = b.subscription_stats("s").unwrap();
        if !rewound {
            for (before, p) in committed_before.iter().zip(&stats.partitions) {
                assert!(p.committed_offset >= *before, "committed offset moved back");
            }
        }
    }
    finish(&mut b, &mut m, now);
}

/// The end of a turn: under acknowledgement after fsync, a sync, and what it delivered.
fn end_turn(b: &mut Broker, m: &mut Model, now: u64) {
    assert!(b.sync(now).is_empty());
    m.drain(b);
}

/// Closes the streams, then acks everything that comes on a fresh one until the backlog is
/// gone: every message is then acked or dead-lettered.
fn finish(b: &mut Broker, m: &mut Model, mut now: u64) {
    for stream in std::mem::take(&mut m.streams) {
        b.close_stream(now, stream);
    }
    m.drain(b);
    let flow = Flow { max_outstanding_messages: 1000, max_outstanding_bytes: 0 };
    let (stream, _) = b.open_stream(now, StreamTarget::Subscription("s".into()), flow).unwrap();
    for _ in 0..500 {
        let from = m.deliveries.len();
        m.drain(b);
        let fresh: Vec<Delivery> = m.deliveries[from..].to_vec();
        let ids: Vec<String> = fresh.iter().map(|d| d.ack_id.clone()).collect();
        for (reply, d) in b.stream_acks(now, stream, vec![(AckOp::Ack, ids)]).unwrap().into_iter().zip(&fresh) {
            assert_eq!(reply.outcome, AckOutcome::Applied, "a fresh lease could not be acked");
            m.acked.insert((d.partition, d.offset));
        }
        m.drain(b);
        end_turn(b, m, now);
        if b.subscription_stats("s").unwrap().backlog == 0 {
            break;
        }
        now += 1000; // leases held by pullers expire, backoffs end
        b.handle_timeout(now);
    }
    b.assert_invariants();
    assert_eq!(b.subscription_stats("s").unwrap().backlog, 0, "messages were never finished");
    let open: Vec<(u32, u64)> = m.keys.keys().copied().filter(|at| !m.finished(b, *at)).collect();
    assert!(open.is_empty(), "neither acked nor dead-lettered: {open:?}");
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 256,
        rng_seed: proptest::test_runner::RngSeed::Fixed(2026),
        ..ProptestConfig::default()
    })]

    #[test]
    fn random_operations_with_retry_dead_letters_and_ordering_keep_every_promise(
        ops in proptest::collection::vec(op(), 1..60),
        ordered in any::<bool>(),
        parked_max in prop_oneof![Just(10_000usize), 1usize..4],
        durable in proptest::bool::weighted(0.25),
    ) {
        run(ops, Setup { ordered, parked_max, durable });
    }
}
