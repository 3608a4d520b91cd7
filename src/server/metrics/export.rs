//! The series the driver keeps: what it sees itself (acknowledged publishes, deliveries'
//! end-to-end latency, open streams), and the core's counts, exported once a second.
//!
//! Handles are looked up once per topic and subscription and kept, so the hot path
//! allocates no label. The exporter drops a counter or gauge that nothing updated for
//! [`IDLE_TIMEOUT`], and a kept handle would then update a series nobody renders: every
//! export touches every kept handle, and an export that comes too late to be sure drops
//! them all and looks them up again.

use std::collections::BTreeMap;

use metrics::{counter, gauge, histogram, Counter, Gauge, Histogram, Label};

use super::{
    ACKED, BACKLOG, DAMAGED, DEAD_LETTERED, DELIVERED, END_TO_END_LATENCY, EPHEMERAL_LABEL, IDLE_TIMEOUT, NACKED,
    OPEN_STREAMS, OUTSTANDING, PUBLISHED, REDELIVERED,
};
use crate::core::name::RESERVED_PREFIX;
use crate::core::{Broker, Delivery, Published, SubscriptionCounts, SubscriptionCountsView};

/// A gap between exports after which kept handles may name series the exporter dropped:
/// half the idle timeout, so a series is always touched well within it.
const STALE_HANDLES_MS: u64 = IDLE_TIMEOUT.as_millis() as u64 / 2;

/// The driver's metrics state; it exists only while a recorder is installed.
pub struct BrokerMetrics {
    /// Acknowledged publishes, by topic.
    published: BTreeMap<String, Counter>,
    /// Stored records found damaged, by topic.
    damaged: BTreeMap<String, Counter>,
    /// Subscription series by topic, then by `subscription` label.
    subscriptions: BTreeMap<String, BTreeMap<String, SubscriptionSeries>>,
    /// The counts last exported, by subscription uid; the series get the difference.
    exported: BTreeMap<u64, SubscriptionCounts>,
    open_streams: Gauge,
    last_export_ms: Option<u64>,
}

/// The series of one `subscription` label of one topic.
struct SubscriptionSeries {
    delivered: Counter,
    redelivered: Counter,
    acked: Counter,
    nacked: Counter,
    dead_lettered: Counter,
    backlog: Gauge,
    outstanding: Gauge,
    end_to_end: Histogram,
    /// Sums over the subscriptions of this export (the ephemeral ones share a series).
    backlog_sum: u64,
    outstanding_sum: u64,
    /// Whether a live subscription has this label in the current export.
    seen: bool,
}

impl SubscriptionSeries {
    fn new(topic: &str, label: &str) -> Self {
        let labels = vec![Label::new("topic", topic.to_string()), Label::new("subscription", label.to_string())];
        Self {
            delivered: counter!(DELIVERED, labels.iter()),
            redelivered: counter!(REDELIVERED, labels.iter()),
            acked: counter!(ACKED, labels.iter()),
            nacked: counter!(NACKED, labels.iter()),
            dead_lettered: counter!(DEAD_LETTERED, labels.iter()),
            backlog: gauge!(BACKLOG, labels.iter()),
            outstanding: gauge!(OUTSTANDING, labels.iter()),
            end_to_end: histogram!(END_TO_END_LATENCY, labels),
            backlog_sum: 0,
            outstanding_sum: 0,
            seen: false,
        }
    }

    /// Adds what one subscription did since `last` (and its gauges to the sums).
    fn add(&mut self, view: &SubscriptionCountsView<'_>, last: &SubscriptionCounts) {
        let now = &view.counts;
        // Called with 0 too: the call is what keeps the series from ageing out.
        self.delivered.increment(now.delivered.saturating_sub(last.delivered));
        self.redelivered.increment(now.redelivered.saturating_sub(last.redelivered));
        self.acked.increment(now.acked.saturating_sub(last.acked));
        self.nacked.increment(now.nacked.saturating_sub(last.nacked));
        self.dead_lettered.increment(now.dead_lettered.saturating_sub(last.dead_lettered));
        self.backlog_sum += view.backlog;
        self.outstanding_sum += view.outstanding;
        self.seen = true;
    }
}

/// The `subscription` label of a subscription: its name, or the one shared by ephemeral
/// subscriptions (only those have a name with the reserved prefix).
fn label(subscription: &str) -> &str {
    if subscription.starts_with(RESERVED_PREFIX) {
        EPHEMERAL_LABEL
    } else {
        subscription
    }
}

/// The series of `label` on `topic`, looked up once.
fn series<'a>(
    all: &'a mut BTreeMap<String, BTreeMap<String, SubscriptionSeries>>,
    topic: &str,
    label: &str,
) -> &'a mut SubscriptionSeries {
    if !all.get(topic).is_some_and(|by_label| by_label.contains_key(label)) {
        let new = SubscriptionSeries::new(topic, label);
        all.entry(topic.to_string()).or_default().insert(label.to_string(), new);
    }
    all.get_mut(topic).and_then(|by_label| by_label.get_mut(label)).expect("inserted above")
}

impl Default for BrokerMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl BrokerMetrics {
    /// No series yet but the open-streams gauge: the others appear as topics and
    /// subscriptions are first exported.
    pub fn new() -> Self {
        Self {
            published: BTreeMap::new(),
            damaged: BTreeMap::new(),
            subscriptions: BTreeMap::new(),
            exported: BTreeMap::new(),
            open_streams: gauge!(OPEN_STREAMS),
            last_export_ms: None,
        }
    }

    /// Counts the messages of an acknowledged publish that were stored (not duplicates).
    pub fn published(&mut self, topic: &str, published: &[Published]) {
        let stored = published.iter().filter(|p| !p.duplicate).count() as u64;
        match self.published.get(topic) {
            Some(counter) => counter.increment(stored),
            None => {
                let counter = counter!(PUBLISHED, "topic" => topic.to_string());
                counter.increment(stored);
                self.published.insert(topic.to_string(), counter);
            }
        }
    }

    /// Counts stored records of `topic` found damaged.
    pub fn damaged(&mut self, topic: &str, records: u64) {
        let counter =
            self.damaged.entry(topic.to_string()).or_insert_with(|| counter!(DAMAGED, "topic" => topic.to_string()));
        counter.increment(records);
    }

    /// Records the end-to-end latency of deliveries made now (`wall_ms`) to `subscription`.
    pub fn delivered(&mut self, wall_ms: u64, subscription: &str, deliveries: &[Delivery]) {
        let Some(first) = deliveries.first() else { return };
        let series = series(&mut self.subscriptions, &first.topic, label(subscription));
        for delivery in deliveries {
            let ms = wall_ms.saturating_sub(delivery.record.publish_time_ms);
            series.end_to_end.record(ms as f64 / 1000.0);
        }
    }

    /// Exports the core's counts and gauges, and the open streams; drops the handles of
    /// topics and subscriptions that are gone, which then age out of the output.
    pub fn export(&mut self, now_ms: u64, broker: &Broker, open_streams: usize) {
        if self.last_export_ms.is_some_and(|last| now_ms.saturating_sub(last) >= STALE_HANDLES_MS) {
            self.published.clear();
            self.damaged.clear();
            self.subscriptions.clear();
            self.open_streams = gauge!(OPEN_STREAMS);
        }
        self.last_export_ms = Some(now_ms);
        self.open_streams.set(open_streams as f64);
        self.export_topics(broker);
        self.export_subscriptions(broker);
    }

    fn export_topics(&mut self, broker: &Broker) {
        let live: Vec<&str> = broker.topic_names().collect();
        self.published.retain(|topic, _| live.binary_search(&topic.as_str()).is_ok());
        self.damaged.retain(|topic, _| live.binary_search(&topic.as_str()).is_ok());
        for counter in self.damaged.values() {
            counter.increment(0);
        }
        for topic in live {
            match self.published.get(topic) {
                Some(counter) => counter.increment(0),
                None => {
                    let counter = counter!(PUBLISHED, "topic" => topic.to_string());
                    self.published.insert(topic.to_string(), counter);
                }
            }
        }
    }

    fn export_subscriptions(&mut self, broker: &Broker) {
        for series in self.subscriptions.values_mut().flat_map(BTreeMap::values_mut) {
            (series.backlog_sum, series.outstanding_sum, series.seen) = (0, 0, false);
        }
        let mut live = Vec::new();
        for view in broker.subscription_counts() {
            let last = self.exported.entry(view.uid).or_default();
            series(&mut self.subscriptions, view.topic, label(view.name)).add(&view, last);
            *last = view.counts;
            live.push(view.uid);
        }
        // Uids come in order, so `live` is sorted.
        self.exported.retain(|uid, _| live.binary_search(uid).is_ok());
        for by_label in self.subscriptions.values_mut() {
            by_label.retain(|_, series| series.seen);
            for series in by_label.values() {
                series.backlog.set(series.backlog_sum as f64);
                series.outstanding.set(series.outstanding_sum as f64);
            }
        }
        self.subscriptions.retain(|_, by_label| !by_label.is_empty());
    }
}
