//! A topic: N partition logs, and where each published message goes.

use std::collections::BTreeSet;

use super::dedupe::Dedupe;
use crate::storage::PartitionLog;

/// A topic and its partitions. Partition `i` is `logs[i]`.
pub struct Topic {
    pub name: String,
    /// From a counter: message ids stay unique when a topic is deleted and made again.
    pub uid: u64,
    pub logs: Vec<Box<dyn PartitionLog>>,
    /// Subscriptions attached to this topic, by name.
    pub subscriptions: BTreeSet<String>,
    /// Idempotency keys published within the topic's dedupe window.
    pub dedupe: Dedupe,
    /// The partition the next keyless message without an explicit partition goes to
    /// (restored by a publish that is refused after it chose partitions).
    pub(super) round_robin: u32,
}

impl Topic {
    /// A topic over `logs` whose idempotency keys live `dedupe_window_ms`.
    pub fn new(name: String, uid: u64, logs: Vec<Box<dyn PartitionLog>>, dedupe_window_ms: u64) -> Self {
        assert!(!logs.is_empty(), "a topic has at least one partition");
        let dedupe = Dedupe::new(dedupe_window_ms);
        Self { name, uid, logs, subscriptions: BTreeSet::new(), dedupe, round_robin: 0 }
    }

    pub fn partition_count(&self) -> u32 {
        self.logs.len() as u32
    }

    /// The partition for a message: the explicit one when given (already checked to be in
    /// range), else the key's murmur2 hash, else round-robin.
    pub fn choose_partition(&mut self, key: Option<&str>, explicit: Option<u32>) -> u32 {
        let count = self.partition_count();
        if let Some(partition) = explicit {
            return partition;
        }
        if let Some(key) = key {
            return partition_for_key(key.as_bytes(), count);
        }
        let partition = self.round_robin % count;
        self.round_robin = (partition + 1) % count;
        partition
    }

    /// The id of the message at `offset` of `partition`.
    pub fn message_id(&self, partition: u32, offset: u64) -> String {
        message_id(self.uid, partition, offset)
    }
}

/// The end of what readers may see: with acknowledgement after fsync, only what is synced
/// (a record that a crash could still take away is neither acknowledged nor delivered).
pub fn visible_end(log: &dyn PartitionLog, after_sync: bool) -> u64 {
    if after_sync {
        log.synced_end()
    } else {
        log.end_offset()
    }
}

/// Message ids are `topic-uid "-" partition "-" offset`: unique, and stable across reads.
pub fn message_id(topic_uid: u64, partition: u32, offset: u64) -> String {
    super::decimal::dashed(&[topic_uid, u64::from(partition), offset])
}

/// The partition of a keyed message: Kafka's default partitioner,
/// `(murmur2(key) & 0x7fffffff) % partitions`, so a key lands on the same partition on
/// every machine and as it would in Kafka.
pub fn partition_for_key(key: &[u8], partitions: u32) -> u32 {
    (murmur2(key) & 0x7fff_ffff) % partitions
}

/// MurmurHash2, 32-bit, with Kafka's seed `0x9747b28c`.
pub fn murmur2(data: &[u8]) -> u32 {
    const SEED: u32 = 0x9747_b28c;
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;
    let mut h = SEED ^ data.len() as u32;
    let mut chunks = data.chunks_exact(4);
    for chunk in &mut chunks {
        let mut k = u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    let tail = chunks.remainder();
    if !tail.is_empty() {
        for (i, byte) in tail.iter().enumerate().rev() {
            h ^= u32::from(*byte) << (8 * i);
        }
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The vectors of Kafka's own murmur2 test (as signed 32-bit Java ints).
    #[test]
    fn murmur2_matches_kafka() {
        let cases: [(&[u8], i32); 6] = [
            (b"21", -973932308),
            (b"foobar", -790332482),
            (b"a-little-bit-long-string", -985981536),
            (b"a-little-bit-longer-string", -1486304829),
            (b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8", -58897971),
            (b"abc", 479470107),
        ];
        for (key, expected) in cases {
            assert_eq!(murmur2(key) as i32, expected, "{:?}", String::from_utf8_lossy(key));
        }
    }

    #[test]
    fn same_key_same_partition() {
        let p = partition_for_key(b"user-42", 8);
        assert!(p < 8);
        for _ in 0..10 {
            assert_eq!(partition_for_key(b"user-42", 8), p);
        }
    }
}
