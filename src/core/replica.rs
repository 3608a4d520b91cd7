//! A cluster node's snapshots: a broker's whole state taken on one node
//! ([`Broker::snapshot`]) and installed on another ([`Broker::install_replica`]) that fell
//! too far behind to be sent the Raft log it missed; and a node's own checkpoint
//! ([`Broker::checkpoint_replica`]), which it restarts from ([`Broker::restore_replica`]).
//!
//! What a replica holds is what every node applies from the Raft log: topics, records,
//! subscriptions and their committed offsets, the dedupe indexes and the counters that name
//! things. What only a leader holds (streams, leases, backoffs, exclusive-group sessions,
//! ephemeral subscriptions) is dropped when a snapshot is installed, as it is lost when
//! leadership moves: the messages it had out are delivered again from the committed offset.

use std::collections::VecDeque;

use super::broker::Broker;
use super::group::Group;
use super::notice::Notice;
use super::publish::digest_of;
use super::snapshot::SnapshotError;
use super::subscription::Cursor;
use super::timers::TimerTable;
use crate::storage::MemoryStorage;

/// Records read at a time while telling an observer what an installed snapshot holds.
const TELL_BATCH_RECORDS: usize = 4096;

impl Broker {
    /// Replaces this broker's state with `snapshot` (from [`Broker::snapshot`] on any node of
    /// the cluster), as a node that does not lead holds it: what only a leader holds is
    /// dropped (see the module's comment). The old state's logs are removed from the storage,
    /// and the new metadata saved. With notices on, every restored record is told as
    /// [`Notice::Appended`] and every committed offset as [`Notice::FloorRaised`], so that an
    /// observer knows what this node now stores.
    ///
    /// A failure leaves the broker without its topics: the caller must not go on with it.
    pub fn install_replica(&mut self, snapshot: &[u8]) -> Result<(), SnapshotError> {
        for (_, topic) in std::mem::take(&mut self.topics) {
            self.storage.remove(topic.uid, topic.logs)?;
        }
        self.replace_with(|config, storage| Broker::from_snapshot(config, storage, snapshot))
    }

    /// Restores a node of a cluster, as it starts, to `checkpoint` (from
    /// [`Broker::checkpoint_replica`] on this node's storage, or a whole state from
    /// [`Broker::snapshot`], installed again), as a node that does not lead holds it; with
    /// none (no snapshot taken yet), to nothing: every topic's files are removed, for the
    /// Raft log makes them again. This broker must be pristine (new). With notices on, what
    /// it restored is told as [`Broker::install_replica`] tells it.
    pub fn restore_replica(&mut self, checkpoint: Option<&[u8]>) -> Result<(), SnapshotError> {
        if !self.is_pristine() {
            return Err(SnapshotError::Malformed("a checkpoint is restored on a new broker only".into()));
        }
        let Some(checkpoint) = checkpoint else {
            self.remove_stored_topics()?;
            // Empties the metadata journal a last life left.
            let meta = self.meta_bytes();
            self.save_meta_bytes(meta)?;
            return Ok(());
        };
        if !super::snapshot::is_checkpoint(checkpoint)? {
            // A whole state the node saved before installing it (a crash came before its own
            // checkpoint replaced it), or a snapshot of an earlier version: installed again.
            self.remove_stored_topics()?;
            return self.install_replica(checkpoint);
        }
        self.replace_with(|config, storage| Broker::from_checkpoint(config, storage, checkpoint))
    }

    /// Removes every topic's files from the storage, those kept aside included.
    fn remove_stored_topics(&mut self) -> Result<(), SnapshotError> {
        self.storage.restore_retired(&[])?;
        self.storage.retain_topics(&[], u64::MAX)?;
        Ok(())
    }

    /// Replaces this broker with the one `restore` makes on its storage, keeping this one's
    /// driver timers and notices.
    fn replace_with(
        &mut self,
        restore: impl FnOnce(super::config::BrokerConfig, Box<dyn crate::storage::Storage>) -> Result<Broker, SnapshotError>,
    ) -> Result<(), SnapshotError> {
        let observed = self.notices.is_some();
        let timers = self.timers.driver_only();
        let storage = std::mem::replace(&mut self.storage, Box::new(MemoryStorage));
        let mut broker = restore(self.config.clone(), storage)?;
        broker.forget_leadership(timers);
        let meta = broker.meta_bytes();
        broker.save_meta_bytes(meta)?;
        if observed {
            broker.notices = Some(VecDeque::new());
            broker.tell_installed()?;
        }
        *self = broker;
        Ok(())
    }

    /// Drops what only a leader holds: streams, leases, backoffs, sessions, dead-letter
    /// copies in flight and ephemeral subscriptions. Every cursor goes back to its
    /// committed offset and the offsets acked above it. `timers` (this node's driver timers) replace the snapshot's.
    fn forget_leadership(&mut self, timers: TimerTable) {
        self.streams.clear();
        self.detached.clear();
        self.timers = timers;
        self.transits.clear();
        // It leads no more: what it decided and did not commit is dropped with the cursors'
        // in-transit offsets; it decides again once it applies a `Lead`.
        self.moves_in_flight.clear();
        self.replicated = false;
        let ephemeral: Vec<u64> = self.subscriptions.values().filter(|s| s.ephemeral).map(|s| s.uid).collect();
        for uid in ephemeral {
            if let Some(sub) = self.subscriptions.remove(&uid) {
                self.subscription_uids.remove(&sub.name);
                if let Some(topic) = self.topics.get_mut(&sub.topic) {
                    topic.subscriptions.remove(&sub.name);
                }
            }
        }
        for sub in self.subscriptions.values_mut() {
            sub.members.clear();
            sub.clients.clear();
            sub.next_member = 0;
            sub.next_partition = 0;
            if let Some(group) = &mut sub.group {
                *group = Group { generation: group.generation, ..Group::new(group.owners.len()) };
            }
            // Acked offsets above the floor stay acked (those a redrive moved the floor
            // back over, or a replicated move settled): only what they held out is owed.
            for cursor in &mut sub.cursors {
                let high = cursor.high;
                let acked = std::mem::take(&mut cursor.acked);
                *cursor = Cursor { high, ..Cursor::restored(cursor.committed, acked) };
            }
        }
    }

    /// Tells every stored record and every committed offset as notices.
    fn tell_installed(&mut self) -> Result<(), SnapshotError> {
        let mut told = Vec::new();
        for topic in self.topics.values() {
            for (p, log) in topic.logs.iter().enumerate() {
                let mut next = log.start_offset();
                while next < log.end_offset() {
                    let batch = log.read(next, TELL_BATCH_RECORDS, usize::MAX)?;
                    let Some(last) = batch.last() else { break };
                    next = last.offset + 1;
                    for stored in batch {
                        let record = &stored.record;
                        told.push(Notice::Appended {
                            topic: topic.name.clone(),
                            partition: p as u32,
                            offset: stored.offset,
                            message_id: topic.message_id(p as u32, stored.offset),
                            digest: digest_of(record.key.as_deref(), &record.value),
                        });
                    }
                }
            }
        }
        for sub in self.subscriptions.values() {
            for (p, cursor) in sub.cursors.iter().enumerate() {
                let (subscription, partition, offset) = (sub.name.clone(), p as u32, cursor.committed);
                told.push(Notice::FloorRaised { subscription, partition, offset });
            }
        }
        for notice in told {
            self.notice(|_| notice);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::*;
    use crate::storage::MemoryStorage;

    fn broker() -> Broker {
        let mut b = Broker::new(BrokerConfig::default(), Box::new(MemoryStorage)).unwrap();
        b.observe();
        while b.poll_notice().is_some() {}
        b
    }

    fn msg(value: &str, key: &str) -> OutgoingMessage {
        OutgoingMessage { value: value.to_string().into(), idempotency_key: Some(key.into()), ..Default::default() }
    }

    fn values(deliveries: &[Delivery]) -> Vec<String> {
        deliveries.iter().map(|d| String::from_utf8(d.record.value.to_vec()).unwrap()).collect()
    }

    /// A leader's state, streams, leases and an ephemeral subscription included, installed on
    /// a replica: the records, committed offsets and dedupe index arrive; what only a leader
    /// holds does not, and the replica's old state is gone.
    #[test]
    fn an_installed_snapshot_holds_what_every_replica_applies_and_no_leases() {
        let mut leader = broker();
        leader.create_topic("t", Some(1)).unwrap();
        let spec = SubscriptionSpec { name: "s".into(), topic: "t".into(), ..Default::default() };
        leader.create_subscription(spec).unwrap();
        leader.publish(0, 1000, "t", (0..5).map(|i| msg(&format!("m{i}"), &format!("k{i}"))).collect()).unwrap();
        let pulled = leader.pull(0, "s", 3).unwrap();
        let acked: Vec<String> = pulled[..2].iter().map(|d| d.ack_id.clone()).collect();
        leader.acks(1, "s", AckOp::Ack, acked).unwrap();
        let target = StreamTarget::Topic { topic: "t".into(), ack_deadline_ms: None, start: StartPosition::Earliest };
        leader.open_stream(2, target, Flow::default()).unwrap();
        while leader.poll_output().is_some() {}
        let snapshot = leader.snapshot(1 << 20).unwrap();

        let mut replica = broker();
        replica.create_topic("gone", Some(2)).unwrap();
        replica.set_driver_timer(DriverTimer::Checkpoint, Some(777));
        replica.install_replica(&snapshot).unwrap();
        assert_eq!(replica.poll_timeout(), Some(777), "the replica keeps its own driver's timers");
        replica.assert_invariants();
        let notices: Vec<Notice> = std::iter::from_fn(|| replica.poll_notice()).collect();
        let appended = notices.iter().filter(|n| matches!(n, Notice::Appended { .. })).count();
        assert_eq!(appended, 5, "{notices:?}");
        assert!(notices.contains(&Notice::FloorRaised { subscription: "s".into(), partition: 0, offset: 2 }));
        assert!(replica.topic_info("gone").is_err(), "the replica's old state is replaced");
        let subscriptions = replica.list_subscriptions(None, None, 100).unwrap().0;
        assert_eq!(subscriptions.iter().map(|s| s.name.as_str()).collect::<Vec<_>>(), ["s"], "no ephemeral one");
        // The lease the leader held on m2 is not the replica's: it delivers from the floor.
        assert_eq!(values(&replica.pull(3, "s", 10).unwrap()), ["m2", "m3", "m4"]);
        // The dedupe index came along: a retried publish is a duplicate on both.
        let again = |b: &mut Broker| b.publish(4, 2000, "t", vec![msg("m4 again", "k4")]).unwrap()[0].duplicate;
        assert!(again(&mut leader) && again(&mut replica));
        let fresh = |b: &mut Broker| b.publish(5, 2000, "t", vec![msg("m5", "k5")]).unwrap()[0].offset;
        assert_eq!(fresh(&mut leader), fresh(&mut replica));
    }

    fn on_file(dir: &std::path::Path) -> Broker {
        let mut config = crate::storage::FileStorageConfig::new(dir);
        config.fsync = crate::storage::FsyncPolicy::Never;
        let storage = crate::storage::FileStorage::open(std::sync::Arc::new(crate::env::StdFs), config).unwrap();
        let mut b = Broker::new(BrokerConfig::default(), Box::new(storage)).unwrap();
        b.observe();
        b
    }

    fn ends(b: &Broker, topic: &str) -> Vec<(u64, u64)> {
        b.topic_info(topic).unwrap().partitions.iter().map(|p| (p.start_offset, p.end_offset)).collect()
    }

    /// A node restarts on its own storage from its checkpoint: the checkpoint holds no
    /// record, the partition logs hold them. What was appended after it is cut off, the
    /// files of a topic made after it are removed, and a topic deleted after it (its files
    /// gone) starts empty at the end the checkpoint saw; the metadata (dedupe index, floors)
    /// is the checkpoint's. Applying the same commands again then gives the same offsets.
    #[test]
    fn a_node_restores_its_checkpoint_from_its_partition_logs_cut_back_to_it() {
        let dir = tempfile::tempdir().unwrap();
        let mut node = on_file(dir.path());
        node.create_topic("keep", Some(2)).unwrap();
        node.create_topic("doomed", Some(1)).unwrap();
        let spec = SubscriptionSpec { name: "s".into(), topic: "keep".into(), ..Default::default() };
        node.create_subscription(spec).unwrap();
        let body = "a value only the partition logs hold";
        node.publish(0, 1000, "keep", (0..6).map(|i| msg(&format!("{body} {i}"), &format!("k{i}"))).collect()).unwrap();
        node.publish(1, 1000, "doomed", (0..3).map(|i| msg(&format!("d{i}"), &format!("d{i}"))).collect()).unwrap();
        let pulled = node.pull(2, "s", 2).unwrap();
        node.acks(3, "s", AckOp::Ack, pulled.iter().map(|d| d.ack_id.clone()).collect()).unwrap();
        while node.poll_output().is_some() {}
        let (checkpoint, sync) = node.checkpoint_replica().unwrap();
        sync.run().unwrap();
        let (keep_at, doomed_at) = (ends(&node, "keep"), ends(&node, "doomed"));
        assert!(!String::from_utf8_lossy(&checkpoint).contains("partition logs hold"), "no record in it");
        assert!(Broker::from_snapshot(BrokerConfig::default(), Box::new(MemoryStorage), &checkpoint).is_err());

        // After it: more records, a deleted topic, a new one.
        let later = |b: &mut Broker| {
            let published =
                b.publish(4, 2000, "keep", (6..9).map(|i| msg(&format!("m{i}"), &format!("k{i}"))).collect());
            published.unwrap().iter().map(|p| (p.partition, p.offset, p.duplicate)).collect::<Vec<_>>()
        };
        let first = later(&mut node);
        node.delete_topic("doomed", true).unwrap();
        node.create_topic("late", Some(1)).unwrap();
        node.publish(5, 2000, "late", vec![msg("l0", "l0")]).unwrap();
        let late_uid = node.topics["late"].uid;
        drop(node);
        let late_dir = dir.path().join("topics").join(late_uid.to_string());
        assert!(late_dir.exists());

        let mut restarted = on_file(dir.path());
        restarted.restore_replica(Some(&checkpoint)).unwrap();
        restarted.assert_invariants();
        assert_eq!(ends(&restarted, "keep"), keep_at, "cut back to the checkpoint");
        let (_, doomed_end) = doomed_at[0];
        assert_eq!(ends(&restarted, "doomed"), [(doomed_end, doomed_end)], "its files went with the deletion");
        assert!(restarted.topic_info("late").is_err() && !late_dir.exists(), "made after: its files are removed");
        let notices: Vec<Notice> = std::iter::from_fn(|| restarted.poll_notice()).collect();
        let appended = notices.iter().filter(|n| matches!(n, Notice::Appended { .. })).count();
        assert_eq!(appended, 6, "every record it holds is told: {notices:?}");
        // The floor and the dedupe index are the checkpoint's.
        assert_eq!(restarted.pull(6, "s", 10).unwrap().len(), 4);
        assert_eq!(later(&mut restarted), first, "the same commands store the same records at the same places");
        assert!(later(&mut restarted).iter().all(|(_, _, duplicate)| *duplicate));
        let value = |b: &Broker, p: u32, o: u64| b.topics["keep"].logs[p as usize].read_one(o).unwrap().unwrap();
        let (p, o, _) = first[0];
        assert_eq!(value(&restarted, p, o).record.value, "m6");

        // A log that holds fewer records than the checkpoint synced is damaged: refused.
        let (checkpoint, sync) = restarted.checkpoint_replica().unwrap();
        sync.run().unwrap();
        let keep_dir = dir.path().join("topics").join(restarted.topics["keep"].uid.to_string());
        drop(restarted);
        let segment = keep_dir.join(p.to_string()).join(format!("{:020}.log", 0));
        let file = std::fs::OpenOptions::new().write(true).open(&segment).unwrap();
        file.set_len(file.metadata().unwrap().len() / 2).unwrap();
        drop(file);
        let refused = on_file(dir.path()).restore_replica(Some(&checkpoint)).unwrap_err().to_string();
        assert!(refused.contains("the node's data is damaged"), "{refused}");

        // A whole state saved before it was installed (a crash came before the node's own
        // checkpoint replaced it) is installed again.
        let leader_dir = tempfile::tempdir().unwrap();
        let mut leader = on_file(leader_dir.path());
        leader.create_topic("w", Some(1)).unwrap();
        leader.publish(7, 3000, "w", vec![msg("w0", "w0"), msg("w1", "w1")]).unwrap();
        while leader.poll_output().is_some() {}
        let whole = leader.snapshot(1 << 20).unwrap();
        let mut installed = on_file(dir.path());
        installed.restore_replica(Some(&whole)).unwrap();
        assert_eq!(ends(&installed, "w"), [(0, 2)]);
        assert!(installed.topic_info("keep").is_err(), "what the storage held before is gone");
        drop(installed);

        // A node without a checkpoint starts empty: every topic's files go.
        let mut pristine = on_file(dir.path());
        pristine.restore_replica(None).unwrap();
        assert!(std::fs::read_dir(dir.path().join("topics")).unwrap().next().is_none());
        assert!(pristine.restore_replica(None).is_ok());
        pristine.create_topic("x", Some(1)).unwrap();
        assert!(pristine.restore_replica(Some(&checkpoint)).is_err(), "only on a new broker");
    }

    /// Retention, and a topic's deletion, after a checkpoint remove no file the checkpoint
    /// counts until a later checkpoint is saved: a node that crashes in between restores
    /// every record (and so every dedupe key) the checkpoint counts, and a retried publish
    /// the cluster answered as a duplicate is answered so again as the log is applied.
    #[test]
    fn retention_and_deletion_after_a_checkpoint_keep_the_files_it_counts_until_the_next_is_saved() {
        let dir = tempfile::tempdir().unwrap();
        let open = || {
            let config = crate::storage::FileStorageConfig {
                segment_bytes: 120,
                ..crate::storage::FileStorageConfig::new(dir.path())
            };
            let storage =
                crate::storage::FileStorage::open(std::sync::Arc::new(crate::env::StdFs), config.node_state()).unwrap();
            let config =
                BrokerConfig { max_message_bytes: 100, partition_retention_bytes: 200, ..BrokerConfig::default() };
            Broker::new(config, Box::new(storage)).unwrap()
        };
        let publish = |b: &mut Broker, i: u32| {
            let published = b.publish(u64::from(i), 1000, "t", vec![msg(&format!("value {i:03}"), &format!("k{i}"))]);
            let p = &published.unwrap()[0];
            (p.offset, p.duplicate)
        };
        let mut node = open();
        node.create_topic("t", Some(1)).unwrap();
        node.create_topic("d", Some(1)).unwrap();
        node.publish(50, 1000, "d", vec![msg("d0", "d0"), msg("d1", "d1")]).unwrap();
        for i in 0..3 {
            publish(&mut node, i);
        }
        let (checkpoint, mut sync) = node.checkpoint_replica().unwrap();
        let retired = sync.take_retired();
        sync.run().unwrap();
        // Saved; what it retired may go.
        retired.remove_retired().unwrap();
        let at_checkpoint = ends(&node, "t");
        for i in 3..12 {
            publish(&mut node, i);
        }
        // A topic deleted after the checkpoint keeps its files aside until the next one.
        node.delete_topic("d", true).unwrap();
        node.sync_metadata().unwrap();
        let (start, _) = ends(&node, "t")[0];
        assert!(start > at_checkpoint[0].1, "retention moved the start past the checkpoint's end: {start}");
        drop(node);

        let mut restarted = open();
        restarted.restore_replica(Some(&checkpoint)).unwrap();
        restarted.assert_invariants();
        assert_eq!(ends(&restarted, "t"), at_checkpoint, "every record the checkpoint counts is there");
        assert_eq!(publish(&mut restarted, 0), (0, true), "k0 is still a duplicate");
        assert_eq!(ends(&restarted, "d"), [(0, 2)], "the topic deleted after it has its records back");

        // Deleted again and checkpointed: its files go once that checkpoint is saved.
        restarted.delete_topic("d", true).unwrap();
        restarted.sync_metadata().unwrap();
        let topics = dir.path().join("state").join("topics");
        let names = || std::fs::read_dir(&topics).unwrap().map(|e| e.unwrap().file_name()).collect::<Vec<_>>();
        assert!(names().iter().any(|n| n.to_string_lossy().starts_with("retired-")), "{:?}", names());
        let (_, mut sync) = restarted.checkpoint_replica().unwrap();
        let retired = sync.take_retired();
        sync.run().unwrap();
        retired.remove_retired().unwrap();
        assert!(!names().iter().any(|n| n.to_string_lossy().starts_with("retired-")), "{:?}", names());
    }

    #[test]
    fn bytes_that_are_not_a_snapshot_are_refused() {
        let mut replica = broker();
        assert!(matches!(replica.install_replica(b"{not json"), Err(SnapshotError::Malformed(_))));
    }
}
