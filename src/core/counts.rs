//! What each subscription has done since the broker started, and how much it has waiting:
//! plain numbers kept in the state, for a driver to export as metrics.
//!
//! The counts are cumulative and never go down (a driver exports differences); they are
//! not saved, so they start from zero when the broker opens. Keeping them costs an
//! addition per event and changes no output, so a run is the same with or without anyone
//! reading them.

use super::broker::Broker;
use super::subscription::Cursor;
use super::topic::visible_end;
use crate::storage::PartitionLog;

/// Events of one subscription since the broker opened.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SubscriptionCounts {
    /// Messages leased to a consumer (a stream or a Pull), redeliveries included.
    pub delivered: u64,
    /// Deliveries with an attempt number above 1.
    pub redelivered: u64,
    /// Acks applied (not the invalid or expired ones).
    pub acked: u64,
    /// Nacks applied, deadline changes to 0 included.
    pub nacked: u64,
    /// Dead-letter copies made. A copy cut by a failed fsync is counted, and counted again
    /// when the message is dead-lettered anew.
    pub dead_lettered: u64,
}

/// One subscription as [`Broker::subscription_counts`] reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SubscriptionCountsView<'a> {
    /// From a counter: a subscription deleted and made again under its name has a new one.
    pub uid: u64,
    /// The subscription's name.
    pub name: &'a str,
    /// Its topic's name.
    pub topic: &'a str,
    /// Made by a Subscribe on a topic, and deleted with its stream.
    pub ephemeral: bool,
    /// Its counters since it was made.
    pub counts: SubscriptionCounts,
    /// Messages not yet acked (as `SubscriptionStats::backlog`).
    pub backlog: u64,
    /// Messages leased out now (as `SubscriptionStats::outstanding`).
    pub outstanding: u64,
}

impl Broker {
    /// Every subscription's counts, backlog and outstanding leases, in uid order. Reads no
    /// record, so it is cheap enough to call every second.
    pub fn subscription_counts(&self) -> impl Iterator<Item = SubscriptionCountsView<'_>> + '_ {
        self.subscriptions.values().map(|sub| {
            let logs = &self.topics[&sub.topic].logs;
            let (backlog, outstanding) =
                sub.cursors.iter().zip(logs).fold((0, 0), |(backlog, outstanding), (cursor, log)| {
                    let p = partition_waiting(cursor, log.as_ref(), self.after_sync);
                    (backlog + p.backlog, outstanding + p.outstanding)
                });
            SubscriptionCountsView {
                uid: sub.uid,
                name: &sub.name,
                topic: &sub.topic,
                ephemeral: sub.ephemeral,
                counts: sub.counts,
                backlog,
                outstanding,
            }
        })
    }

    /// The names of every topic, in name order.
    pub fn topic_names(&self) -> impl Iterator<Item = &str> + '_ {
        self.topics.keys().map(String::as_str)
    }
}

/// What waits on one partition of a subscription.
pub(super) struct PartitionWaiting {
    /// The ack floor, never below the log's start.
    pub committed: u64,
    /// The end of the log readers may see.
    pub end: u64,
    /// Offsets from the floor to the end not yet acked.
    pub backlog: u64,
    /// Offsets leased out now.
    pub outstanding: u64,
    /// Offsets waiting out a retry backoff.
    pub delayed: u64,
}

/// The backlog and leases of `cursor` on `log`; offsets retention removed count as gone.
pub(super) fn partition_waiting(cursor: &Cursor, log: &dyn PartitionLog, after_sync: bool) -> PartitionWaiting {
    let end = visible_end(log, after_sync);
    let start = log.start_offset();
    let committed = cursor.committed.max(start);
    let acked_above = cursor.acked.range(committed..).count() as u64;
    PartitionWaiting {
        committed,
        end,
        backlog: end.saturating_sub(committed) - acked_above,
        outstanding: cursor.leased.range(start..).count() as u64,
        delayed: cursor.delayed.range(start..).count() as u64,
    }
}

#[cfg(test)]
mod tests {
    use crate::core::*;
    use crate::storage::MemoryStorage;

    fn msg(value: &str) -> OutgoingMessage {
        OutgoingMessage { value: value.to_string().into(), ..Default::default() }
    }

    fn pull(b: &mut Broker, now: u64) -> Vec<String> {
        b.pull(now, "s", 10).unwrap().into_iter().map(|d| d.ack_id).collect()
    }

    fn counts(b: &Broker) -> (SubscriptionCounts, u64, u64) {
        let views: Vec<SubscriptionCountsView> = b.subscription_counts().collect();
        assert_eq!(views.len(), 1, "{views:?}");
        (views[0].counts, views[0].backlog, views[0].outstanding)
    }

    #[test]
    fn counts_follow_deliveries_acks_nacks_expiries_and_dead_letters() {
        let mut b = Broker::new(BrokerConfig::default(), Box::new(MemoryStorage)).unwrap();
        b.create_topic("dlq", None).unwrap();
        b.publish(0, 0, "t", vec![msg("a"), msg("b"), msg("c"), msg("d")]).unwrap();
        let dead_letter = Some(DeadLetterSpec { topic: "dlq".into(), max_delivery_attempts: Some(2) });
        let spec = SubscriptionSpec { name: "s".into(), topic: "t".into(), dead_letter, ..Default::default() };
        b.create_subscription(spec).unwrap();
        assert_eq!(counts(&b), (SubscriptionCounts::default(), 4, 0));

        let ids = pull(&mut b, 0);
        assert_eq!(ids.len(), 4);
        b.acks(10, "s", AckOp::Ack, ids[..2].to_vec()).unwrap();
        b.acks(10, "s", AckOp::Ack, ids[..1].to_vec()).unwrap(); // expired by now: not counted
        b.acks(10, "s", AckOp::Nack { delay_ms: None, terminal: false, reason: None }, ids[2..3].to_vec()).unwrap();
        let expected = SubscriptionCounts { delivered: 4, acked: 2, nacked: 1, ..Default::default() };
        assert_eq!(counts(&b), (expected, 2, 1));

        // "c" comes back (attempt 2); then both leases expire: "c" has had its 2 attempts
        // and is dead-lettered, "d" is offered again.
        assert_eq!(pull(&mut b, 20).len(), 1);
        b.handle_timeout(60_000);
        let expected = SubscriptionCounts { delivered: 5, redelivered: 1, acked: 2, nacked: 1, dead_lettered: 1 };
        assert_eq!(counts(&b), (expected, 1, 0));
        assert_eq!(b.topic_names().collect::<Vec<_>>(), ["dlq", "t"]);
    }
}
