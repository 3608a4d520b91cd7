//! Seeks, and retention moving a partition's start: where a subscription reads from.

use std::collections::BTreeSet;

use super::broker::Broker;
use super::error::BrokerError;
use super::name;
use super::topic::visible_end;
use super::{Mutation, Notice};

/// A subscription's ack floor on one partition: every offset below it is acknowledged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AckFloor {
    /// The subscription's name.
    pub subscription: String,
    /// Its uid: a floor of a deleted subscription never moves a new one of the same name.
    pub uid: u64,
    /// The partition.
    pub partition: u32,
    /// The committed offset.
    pub offset: u64,
    /// The subscription's seeks and redrives applied when it was read: a floor read before
    /// one of them (and committed after it) is stale, and moves nothing.
    pub moves: u64,
}

/// Where a Seek moves a subscription.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SeekTarget {
    /// The oldest retained message of each partition.
    Earliest,
    /// The end of each partition: only messages published after the seek are delivered.
    Latest,
    /// The first message published at or after this wall-clock time, per partition.
    TimeMs(u64),
    /// Explicit offsets for the partitions named.
    Offsets(Vec<(u32, u64)>),
}

impl Broker {
    /// Moves `subscription` to `target` on every partition it names. Outstanding leases
    /// there end (their ack ids become expired). Returns each partition's committed offset.
    pub fn seek(
        &mut self,
        now_ms: u64,
        subscription: &str,
        target: SeekTarget,
    ) -> Result<Vec<(u32, u64)>, BrokerError> {
        let (uid, moves) = self.check_seek(subscription, &target)?;
        self.subscription_mut(uid).cursor_moves += 1;
        for &(partition, offset) in &moves {
            let dropped = self.cursor_mut(uid, partition).reset(offset);
            self.forget_dropped(uid, partition, dropped);
        }
        self.notice(|b| Notice::Seeked {
            subscription: subscription.to_string(),
            to: moves,
            lease_seq: b.next_lease_seq,
        });
        self.dispatch(now_ms, uid);
        let sub = &self.subscriptions[&uid];
        Ok(sub.cursors.iter().enumerate().map(|(p, c)| (p as u32, c.committed)).collect())
    }

    /// The deciding half of a seek: refuses one that cannot be applied (an unknown
    /// subscription, a partition or offset out of range), changing nothing; else the
    /// subscription's uid and the offset each partition it moves is owed from.
    pub(super) fn check_seek(
        &self,
        subscription: &str,
        target: &SeekTarget,
    ) -> Result<(u64, Vec<(u32, u64)>), BrokerError> {
        name::check("subscription", subscription)?;
        let uid = self.subscription_uid(subscription)?;
        let sub = &self.subscriptions[&uid];
        let topic = self.topic(&sub.topic)?;
        let mut moves: Vec<(u32, u64)> = Vec::new();
        for (p, log) in topic.logs.iter().enumerate() {
            let offset = match target {
                SeekTarget::Earliest => log.start_offset(),
                SeekTarget::Latest => visible_end(log.as_ref(), self.after_sync),
                SeekTarget::TimeMs(time) => log.offset_for_time(*time)?.min(visible_end(log.as_ref(), self.after_sync)),
                SeekTarget::Offsets(_) => continue,
            };
            moves.push((p as u32, offset));
        }
        if let SeekTarget::Offsets(offsets) = target {
            for (i, &(partition, offset)) in offsets.iter().enumerate() {
                let Some(log) = topic.logs.get(partition as usize) else {
                    return Err(BrokerError::PartitionOutOfRange {
                        field: format!("offsets[{i}].partition"),
                        topic: topic.name.clone(),
                        partition,
                        partitions: topic.partition_count(),
                    });
                };
                let (start, end) = (log.start_offset(), visible_end(log.as_ref(), self.after_sync));
                if !(start..=end).contains(&offset) {
                    return Err(BrokerError::InvalidArgument {
                        field: "offsets.offset",
                        reason: format!(
                            "offset {offset} of partition {partition} is outside the retained range {start} to {end}"
                        ),
                    });
                }
                moves.push((partition, offset));
            }
        }
        Ok((uid, moves))
    }

    /// Each durable subscription's ack floor (its committed offset) on each partition: what
    /// a cluster's leader replicates as its ack progress.
    pub fn ack_floors(&self) -> Vec<AckFloor> {
        let mut floors = Vec::new();
        for sub in self.subscriptions.values().filter(|s| !s.ephemeral) {
            for (partition, cursor) in sub.cursors.iter().enumerate() {
                floors.push(AckFloor {
                    subscription: sub.name.clone(),
                    uid: sub.uid,
                    partition: partition as u32,
                    offset: cursor.committed,
                    moves: sub.cursor_moves,
                });
            }
        }
        floors
    }

    /// Raises ack floors to where a cluster's leader had them (a replica applying the
    /// leader's ack progress): a cursor below its floor moves up to it, dropping what it
    /// held below and above (a replica holds no leases of its own; an earlier leader's
    /// stale ones end). A floor at or below the cursor's own, of a subscription since
    /// deleted (another uid), or past the partition's end, changes nothing.
    pub(super) fn raise_floors(&mut self, now_ms: u64, floors: Vec<AckFloor>) {
        let mut raised = BTreeSet::new();
        for floor in floors {
            if self.subscription_uids.get(&floor.subscription) != Some(&floor.uid) {
                continue;
            }
            let sub = &self.subscriptions[&floor.uid];
            if sub.cursor_moves != floor.moves {
                continue;
            }
            let Some(cursor) = sub.cursors.get(floor.partition as usize) else { continue };
            let Ok(topic) = self.topic(&sub.topic) else { continue };
            let log = &topic.logs[floor.partition as usize];
            let (start, end) = (log.start_offset(), log.end_offset());
            if cursor.committed >= floor.offset || floor.offset > end {
                continue;
            }
            self.floors_applied += 1;
            let forget = self.config.mutated(Mutation::FloorForgotten) && self.floors_applied.is_multiple_of(3);
            let offset = if forget { start } else { floor.offset };
            let dropped = self.cursor_mut(floor.uid, floor.partition).reset(offset);
            self.forget_dropped(floor.uid, floor.partition, dropped);
            let (subscription, partition) = (floor.subscription, floor.partition);
            self.notice(|_| Notice::FloorRaised { subscription, partition, offset });
            raised.insert(floor.uid);
        }
        for uid in raised {
            self.dispatch(now_ms, uid);
        }
    }

    /// Retention moved the start of `partition` to `start`: every subscription forgets the
    /// offsets below it, and leases on them end (later acks of them are expired).
    pub(super) fn retention_moved(&mut self, topic: &str, partition: u32, start: u64) {
        let uids: Vec<u64> = self.topics[topic].subscriptions.iter().map(|name| self.subscription_uids[name]).collect();
        for uid in uids {
            let dropped = self.cursor_mut(uid, partition).skip_to_log_start(start);
            self.forget_dropped(uid, partition, dropped);
        }
    }
}
