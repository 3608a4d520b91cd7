//! Ordering keys: on a subscription with message ordering, the messages of one key are
//! delivered in publish order and one at a time.
//!
//! Each key has at most one unfinished message at a time on a partition, its *head*:
//! delivered and not yet acked or dead-lettered (leased, waiting for redelivery, waiting
//! out a backoff, or on its way to the dead-letter topic). A later message of the key that
//! the cursor reaches meanwhile is parked; when the head finishes, the key's lowest parked
//! message becomes the head and is offered next. A nack or an expiry does not finish the
//! head, so it holds back its own key and nothing else. Keyless messages are not held.
//!
//! A redriven message comes back below later messages of its key. If the key's head has
//! not been delivered yet, the redriven message takes its place (publish order again);
//! if it has, the redriven message is parked behind it and goes next, one at a time still.
//!
//! Nothing here is saved: after a restart every unacked message is offered again lowest
//! first, and the first of each key becomes its head while the rest are parked again.

use std::collections::{BTreeMap, BTreeSet};

/// The ordering-key state of one partition of an ordered subscription.
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct KeyOrder {
    /// Each key's unfinished head.
    heads: BTreeMap<String, u64>,
    /// The key of each head.
    head_keys: BTreeMap<u64, String>,
    /// Parked offsets of each key, lowest first.
    parked_by_key: BTreeMap<String, BTreeSet<u64>>,
    /// The key of each parked offset.
    parked: BTreeMap<u64, String>,
}

impl KeyOrder {
    /// Whether `offset` must wait: its key has another unfinished head.
    pub fn blocked(&self, offset: u64, key: &str) -> bool {
        self.heads.get(key).is_some_and(|head| *head != offset)
    }

    /// `offset` is being delivered: it is its key's head until it finishes.
    pub fn deliver(&mut self, offset: u64, key: &str) {
        if let Some(previous) = self.heads.insert(key.to_string(), offset) {
            assert_eq!(previous, offset, "key {key:?} got a second head");
        }
        self.head_keys.insert(offset, key.to_string());
    }

    /// The head of `key`, if it has one.
    pub fn head(&self, key: &str) -> Option<u64> {
        self.heads.get(key).copied()
    }

    /// `offset`, earlier than `key`'s head, becomes the head; the old head is parked.
    pub fn take_over(&mut self, offset: u64, key: &str) {
        let old = self.heads.insert(key.to_string(), offset).expect("taking over needs a head");
        assert!(offset < old, "only an earlier message takes over a head");
        self.head_keys.remove(&old);
        self.head_keys.insert(offset, key.to_string());
        self.park(old, key);
    }

    /// Parks `offset` behind its key's head.
    pub fn park(&mut self, offset: u64, key: &str) {
        self.parked_by_key.entry(key.to_string()).or_default().insert(offset);
        self.parked.insert(offset, key.to_string());
    }

    /// `offset` finished (acked or dead-lettered). Returns the parked offset of its key
    /// that becomes the head and is ready for delivery, if any.
    pub fn finish(&mut self, offset: u64) -> Option<u64> {
        let key = self.head_keys.remove(&offset)?;
        self.heads.remove(&key);
        let queue = self.parked_by_key.get_mut(&key)?;
        let next = queue.pop_first().expect("empty parked queues are removed");
        if queue.is_empty() {
            self.parked_by_key.remove(&key);
        }
        self.parked.remove(&next);
        self.heads.insert(key.clone(), next);
        self.head_keys.insert(next, key);
        Some(next)
    }

    /// Retention removed every offset below `start`: heads there finish and parked
    /// offsets there are gone. Returns the offsets that became heads and are ready.
    pub fn drop_below(&mut self, start: u64) -> Vec<u64> {
        let gone: Vec<u64> = self.parked.range(..start).map(|(o, _)| *o).collect();
        for offset in gone {
            let key = self.parked.remove(&offset).expect("listed above");
            let queue = self.parked_by_key.get_mut(&key).expect("parked offsets are queued");
            queue.remove(&offset);
            if queue.is_empty() {
                self.parked_by_key.remove(&key);
            }
        }
        let old_heads: Vec<u64> = self.head_keys.range(..start).map(|(o, _)| *o).collect();
        old_heads.into_iter().filter_map(|head| self.finish(head)).collect()
    }

    pub fn is_parked(&self, offset: u64) -> bool {
        self.parked.contains_key(&offset)
    }

    /// How many offsets are parked (bounded by `ordered_parked_messages_max`).
    pub fn parked_len(&self) -> usize {
        self.parked.len()
    }

    /// Parked offsets from `from` on, lowest first.
    pub fn parked_from(&self, from: u64) -> impl Iterator<Item = u64> + '_ {
        self.parked.range(from..).map(|(o, _)| *o)
    }

    /// Heads, for the cursor's invariants.
    pub fn heads(&self) -> impl Iterator<Item = u64> + '_ {
        self.head_keys.keys().copied()
    }

    /// Panics if the views disagree, or a parked offset is not behind a head.
    pub fn assert_invariants(&self) {
        assert_eq!(self.heads.len(), self.head_keys.len(), "head views differ");
        for (offset, key) in &self.parked {
            let head = self.heads.get(key).unwrap_or_else(|| panic!("parked {offset} of {key:?} has no head"));
            // Usually above its head; a redriven message comes back below it, and goes next.
            assert_ne!(head, offset, "{key:?}'s head {head} is parked");
            assert!(self.parked_by_key[key].contains(offset), "parked {offset} missing from its key's queue");
        }
        let queued: usize = self.parked_by_key.values().map(BTreeSet::len).sum();
        assert_eq!(queued, self.parked.len(), "parked views differ");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_has_one_head_and_the_next_follows_when_it_finishes() {
        let mut k = KeyOrder::default();
        assert!(!k.blocked(0, "a"));
        k.deliver(0, "a");
        assert!(k.blocked(1, "a") && !k.blocked(1, "b") && !k.blocked(0, "a"));
        k.park(1, "a");
        k.park(3, "a");
        assert_eq!(k.finish(0), Some(1));
        assert!(!k.blocked(1, "a") && k.blocked(3, "a"));
        k.deliver(1, "a");
        assert_eq!(k.finish(1), Some(3));
        assert_eq!(k.finish(3), None);
        assert_eq!(k.parked_len(), 0);
        k.assert_invariants();
    }

    #[test]
    fn retention_finishes_old_heads_and_forgets_parked_offsets() {
        let mut k = KeyOrder::default();
        k.deliver(0, "a");
        k.park(1, "a");
        k.park(5, "a");
        k.deliver(2, "b");
        assert_eq!(k.drop_below(3), vec![5]);
        assert!(!k.blocked(7, "b"), "b's head 2 is below the start: b is free");
        assert!(!k.is_parked(1) && !k.blocked(5, "a"));
        k.assert_invariants();
    }
}
