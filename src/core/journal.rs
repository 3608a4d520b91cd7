//! The metadata journal: topic and subscription changes, appended as they are applied and
//! made durable by the turn's one sync (group commit), instead of a rewrite of the whole
//! metadata per change.
//!
//! An entry is the command log's own form of the admin command (`proto/record.proto`), with
//! every default resolved and the uids and start offsets the broker chose, so replaying it
//! never depends on the configuration of the day. The metadata file (the base) saves the
//! sequence number of the last entry it covers; a checkpoint saves the base whenever
//! anything changed (at most once a second) and empties the journal. At start the broker
//! replays the entries past the base onto it, cuts a torn tail (entries never synced, so
//! never answered), and refuses damage with valid entries after it.

use bytes::Bytes;
use prost::Message;

use super::broker::Broker;
use super::error::BrokerError;
use super::persist::{DeadLetterMeta, Meta, RetryMeta, SubscriptionMeta, TopicMeta};
use super::subscription::StartPosition;
use crate::record::pb::{self, command::Kind};
use crate::storage::{PartitionLog, StorageError};

/// The journal as the broker keeps it.
#[derive(Default)]
pub(super) struct Journal {
    /// The last entry's sequence number; the base saves it.
    pub(super) seq: u64,
    /// Entries were appended since the last sync or base save.
    pub(super) unsynced: bool,
    /// An append failed and so did the base save meant to replace it: every change saves
    /// the base until one succeeds, so no entry is written after a missing one.
    pub(super) needs_base: bool,
    /// Topics with this uid or above were made since the last sync: a publish to one syncs
    /// the journal first, so a log never holds records of a topic a crash could forget.
    pub(super) synced_topic_uid: u64,
    /// Deleted topics' logs, removed once the deletion is durable.
    pub(super) doomed: Vec<(u64, Vec<Box<dyn PartitionLog>>)>,
}

/// What replaying the journal found.
pub(super) struct Replayed {
    /// Entries applied onto the base.
    pub(super) applied: usize,
    /// The last sequence number seen (the base's when there was nothing past it).
    pub(super) last_seq: u64,
    /// Where a torn tail was cut, and why.
    pub(super) cut: Option<(usize, String)>,
}

impl Broker {
    /// Appends a change to the journal; it is durable after the next sync. If the append
    /// fails, the whole metadata is saved instead (the change included); if that fails
    /// too, the error is returned and the caller undoes the change where it can.
    pub(super) fn journal(&mut self, kind: Kind) -> Result<(), BrokerError> {
        if self.journal.needs_base {
            return self.save_meta();
        }
        let seq = self.journal.seq + 1;
        let entry = pb::Entry {
            seq,
            wall_ms: self.wall_ms,
            command: Some(pb::Command { kind: Some(kind) }),
            ..Default::default()
        };
        let body = pb::Frame { kind: Some(pb::frame::Kind::Entry(entry)) }.encode_to_vec();
        let mut bytes = Vec::with_capacity(body.len() + 8);
        crate::record::frame(&body, &mut bytes);
        // The number is used up even if the append fails: bytes of a failed append that
        // survive are covered by the whole save that replaces them, and no later entry
        // shares their number.
        self.journal.seq = seq;
        match self.storage.append_journal(&bytes) {
            Ok(()) => {
                self.journal.unsynced = true;
                Ok(())
            }
            Err(_) => self.save_meta().inspect_err(|_| self.journal.needs_base = true),
        }
    }

    /// Whether journal entries wait for a sync: a change is answered only after one.
    pub fn metadata_unsynced(&self) -> bool {
        self.journal.unsynced || self.journal.needs_base || !self.journal.doomed.is_empty()
    }

    /// Makes the journal durable (one fsync for every change of the turn), falling back to
    /// saving the whole metadata; then removes the files of topics whose deletion is durable.
    pub(super) fn sync_metadata(&mut self) -> Result<(), BrokerError> {
        if !self.metadata_unsynced() {
            return Ok(());
        }
        if self.journal.needs_base || self.storage.sync_journal().is_err() {
            // After a failed fsync the journal's bytes are in doubt: nothing more is written
            // after them until a whole save succeeds.
            return self.save_meta().inspect_err(|_| self.journal.needs_base = true);
        }
        self.metadata_durable();
        Ok(())
    }

    /// Syncs the journal before a topic made since its last sync gets records.
    pub(super) fn sync_metadata_before_append(&mut self, topic_uid: u64) -> Result<(), BrokerError> {
        if self.journal.unsynced && topic_uid >= self.journal.synced_topic_uid {
            self.sync_metadata()?;
        }
        Ok(())
    }

    /// Everything applied so far is in durable metadata: the base saved, or the journal synced.
    pub(super) fn metadata_durable(&mut self) {
        self.journal.unsynced = false;
        self.journal.needs_base = false;
        self.journal.synced_topic_uid = self.next_topic_uid;
        for (uid, logs) in std::mem::take(&mut self.journal.doomed) {
            // Files the disk refuses to remove now are swept at the next start.
            let _ = self.storage.remove(uid, logs);
        }
    }

    /// The journal entry of the topic `name` as it is now, just made.
    pub(super) fn topic_created_entry(&self, name: &str) -> Kind {
        let t = &self.topics[name];
        Kind::CreateTopic(pb::CreateTopic {
            name: name.to_string(),
            partitions: Some(t.partition_count()),
            dedupe_window_ms: Some(t.dedupe.window_ms()),
            uid: Some(t.uid),
        })
    }

    /// The journal entry of the subscription `uid` as it is now, just made.
    pub(super) fn subscription_created_entry(&self, uid: u64) -> Kind {
        let s = &self.subscriptions[&uid];
        Kind::CreateSubscription(pb::CreateSubscription {
            name: s.name.clone(),
            topic: s.topic.clone(),
            ack_deadline_ms: Some(s.ack_deadline_ms),
            start: match s.start {
                StartPosition::Earliest => pb::StartPosition::StartEarliest,
                StartPosition::Latest => pb::StartPosition::StartLatest,
            }
            .into(),
            retry: s.retry.map(|r| pb::RetrySpec {
                minimum_backoff_ms: Some(r.minimum_backoff_ms),
                maximum_backoff_ms: Some(r.maximum_backoff_ms),
            }),
            dead_letter: s.dead_letter.as_ref().map(|d| pb::DeadLetterSpec {
                topic: d.topic.clone(),
                max_delivery_attempts: Some(d.max_delivery_attempts),
            }),
            ordered: s.ordered,
            exclusive: s.group.is_some(),
            uid: Some(uid),
            start_offsets: s.cursors.iter().map(|c| c.committed).collect(),
        })
    }
}

/// Replays the journal `bytes` onto `meta`: entries it already covers are skipped, a torn
/// tail is cut (it was never synced, so no change in it was answered), and damage with a
/// valid later entry is refused.
pub(super) fn replay(meta: &mut Meta, bytes: Vec<u8>) -> Result<Replayed, StorageError> {
    let bytes = Bytes::from(bytes);
    let mut replayed = Replayed { applied: 0, last_seq: meta.journal_seq, cut: None };
    let mut at = 0;
    while at < bytes.len() {
        let entry = match crate::record::frame_at(&bytes, at).and_then(|body| entry_of(&body)) {
            Ok(entry) => entry,
            Err(reason) => {
                let last_seq = replayed.last_seq;
                let later =
                    crate::record::later_frame(&bytes, at + 1, |body| entry_of(&body).is_ok_and(|e| e.seq > last_seq));
                if let Some(later) = later {
                    let reason = format!("{reason}, and a valid entry follows at byte {later}");
                    return Err(corrupt(at, reason));
                }
                replayed.cut = Some((at, reason));
                break;
            }
        };
        let seq = entry.seq;
        if seq <= meta.journal_seq {
            // Saved in the base already (a crash after a base save kept the old journal).
            at += crate::record::frame_size(&bytes, at);
            continue;
        }
        if seq <= replayed.last_seq {
            return Err(corrupt(at, format!("entry {seq} after entry {}", replayed.last_seq)));
        }
        let kind = entry.command.and_then(|c| c.kind).ok_or_else(|| corrupt(at, "an entry with no command".into()))?;
        apply(meta, kind).map_err(|reason| corrupt(at, reason))?;
        replayed.applied += 1;
        replayed.last_seq = seq;
        at += crate::record::frame_size(&bytes, at);
    }
    meta.journal_seq = replayed.last_seq;
    Ok(replayed)
}

fn entry_of(body: &[u8]) -> Result<pb::Entry, String> {
    match pb::Frame::decode(body).map_err(|e| format!("an entry that does not decode: {e}"))?.kind {
        Some(pb::frame::Kind::Entry(entry)) => Ok(entry),
        _ => Err("a frame that is not an entry".to_string()),
    }
}

fn corrupt(position: usize, reason: String) -> StorageError {
    StorageError::Corrupt {
        file: "meta.journal".to_string(),
        position: position as u64,
        reason: format!("metadata journal: {reason}"),
    }
}

/// Applies one entry to the metadata, as the broker applied the change.
fn apply(meta: &mut Meta, kind: Kind) -> Result<(), String> {
    match kind {
        Kind::CreateTopic(c) => {
            let uid = c.uid.ok_or("create_topic.uid: not set")?;
            meta.topics.retain(|t| t.name != c.name);
            meta.topics.push(TopicMeta {
                name: c.name,
                uid,
                partitions: c.partitions.ok_or("create_topic.partitions: not set")?,
                dedupe_window_ms: c.dedupe_window_ms,
                dedupe_keys_used: false,
            });
            meta.next_topic_uid = meta.next_topic_uid.max(uid + 1);
        }
        Kind::DeleteTopic(d) => {
            meta.topics.retain(|t| t.name != d.name);
            meta.subscriptions.retain(|s| s.topic != d.name);
            for s in &mut meta.subscriptions {
                if s.dead_letter.as_ref().is_some_and(|p| p.topic == d.name) {
                    s.dead_letter = None;
                }
            }
        }
        Kind::CreateSubscription(c) => {
            let uid = c.uid.ok_or("create_subscription.uid: not set")?;
            meta.subscriptions.retain(|s| s.name != c.name);
            meta.subscriptions.push(SubscriptionMeta {
                uid,
                ack_deadline_ms: c.ack_deadline_ms.ok_or("create_subscription.ack_deadline_ms: not set")?,
                start_latest: c.start() == pb::StartPosition::StartLatest,
                committed: c.start_offsets,
                acked: Vec::new(),
                retry: c.retry.map(|r| RetryMeta {
                    minimum_backoff_ms: r.minimum_backoff_ms.unwrap_or(0),
                    maximum_backoff_ms: r.maximum_backoff_ms.unwrap_or(0),
                }),
                dead_letter: c.dead_letter.map(|d| DeadLetterMeta {
                    topic: d.topic,
                    max_delivery_attempts: d.max_delivery_attempts.unwrap_or(1),
                }),
                dead_lettered: 0,
                ordered: c.ordered,
                exclusive: c.exclusive,
                name: c.name,
                topic: c.topic,
            });
            meta.next_subscription_uid = meta.next_subscription_uid.max(uid + 1);
        }
        Kind::DeleteSubscription(d) => meta.subscriptions.retain(|s| s.name != d.name),
        Kind::KeysUsed(k) => {
            let topic = meta.topics.iter_mut().find(|t| t.name == k.topic);
            topic.ok_or_else(|| format!("keys_used: no topic `{}`", k.topic))?.dedupe_keys_used = true;
        }
        _ => return Err("an entry of a kind the journal never holds".to_string()),
    }
    Ok(())
}
