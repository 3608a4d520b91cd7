//! The dedupe index of a topic: which idempotency keys were stored recently, and where.
//!
//! A publish that carries an idempotency key already in the index is answered with the
//! original's partition and offset and stores nothing (Pub/Sub's and JetStream's
//! `Nats-Msg-Id` dedupe). An entry lives for the topic's dedupe window, counted from the
//! publish time stamped on its record (wall time, an input like every other time), and
//! leaves earlier when its record leaves the log: a cut of unsynced or refused records, or
//! retention. So the index only ever points at records that exist, which is also exactly
//! what [`Dedupe::rebuild_entry`] can find again when the broker opens.
//!
//! Keys of the shape `{prefix}-{n}` (n a canonical decimal `u64`: what the client's
//! `Publisher` sends, numbering its messages) are held as *runs*: one entry for keys
//! `{prefix}-{first}` to `{prefix}-{first + count - 1}` stored at consecutive offsets of one
//! partition with one publish time, which is what a batch appended to a partition gives.
//! So a publisher's batch of 100 costs one entry, not 100, and `dedupe_keys_max` (which
//! bounds entries, since memory is what it protects) lets it publish at full speed. Every
//! other key has an entry of its own. Either way a key answers exactly the original it
//! would have as an entry of its own: a run is only a shorter way to write its keys, cut,
//! trimmed or split wherever its records leave the log.

use std::collections::{BTreeMap, BTreeSet};

use crate::storage::{PartitionLog, StorageError};

/// Records read at a time while rebuilding the index at open.
const REBUILD_READ_RECORDS: usize = 1024;

/// Shortest dedupe window a topic (or the broker default) may have.
pub const DEDUPE_WINDOW_MS_MIN: u64 = 1000;
/// Longest dedupe window: a day. The index holds every key of the window in memory.
pub const DEDUPE_WINDOW_MS_MAX: u64 = 24 * 3600 * 1000;

/// Where the first message with a key was stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Original {
    pub partition: u32,
    pub offset: u64,
    /// The publish time on the stored record; the entry expires `window_ms` after it.
    pub time_ms: u64,
}

/// `(prefix, n)` of a key `{prefix}-{n}` whose prefix is not empty and whose n is a
/// canonical decimal `u64` (digits only, no leading zero but in "0"), so that the key can
/// be written back from them. Any other key is held as itself.
pub(super) fn sequenced(key: &str) -> Option<(&str, u64)> {
    let (prefix, digits) = key.rsplit_once('-')?;
    let canonical = !digits.is_empty()
        && digits.bytes().all(|b| b.is_ascii_digit())
        && (digits.len() == 1 || !digits.starts_with('0'));
    if prefix.is_empty() || !canonical {
        return None;
    }
    Some((prefix, digits.parse().ok()?))
}

/// Keys `{prefix}-{first}` to `{prefix}-{first + count - 1}` (the prefix and `first` are
/// where the run is filed), stored at `offset` to `offset + count - 1` of `partition`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
struct Run {
    count: u64,
    partition: u32,
    offset: u64,
    time_ms: u64,
}

/// The keys of an entry, as its position finds them.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
enum Name {
    Key(String),
    Run { prefix: String, first: u64 },
}

/// An entry seen from its first record: how many records it covers, and its keys.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
struct Span {
    count: u64,
    name: Name,
}

/// The idempotency keys of the records of one append to one partition, grouped as the
/// index will hold them (a run of keys `{prefix}-{n}` in order costs one allocation).
#[derive(Debug, Default)]
pub struct BatchKeys {
    /// (index of the first record in the append, its entry), in append order.
    spans: Vec<(u64, Span)>,
}

impl BatchKeys {
    /// Notes that the record at index `at` of the append carries `key`; `at` grows from
    /// call to call, and keys are new and distinct.
    pub fn push(&mut self, at: u64, key: &str) {
        let seq = sequenced(key);
        if let (Some((prefix, n)), Some((last_at, span))) = (seq, self.spans.last_mut()) {
            if let Name::Run { prefix: run_prefix, first } = &span.name {
                if run_prefix == prefix && n.checked_sub(*first) == Some(span.count) && *last_at + span.count == at {
                    span.count += 1;
                    return;
                }
            }
        }
        let name = match seq {
            Some((prefix, first)) => Name::Run { prefix: prefix.to_string(), first },
            None => Name::Key(key.to_string()),
        };
        self.spans.push((at, Span { count: 1, name }));
    }
}

/// One topic's index. Three views of the same entries, each ordered so that every removal
/// costs only what it removes (plus one entry it shortens): by key (lookups, with runs
/// filed by prefix and first number), by position (cuts and retention), by time (expiry).
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct Dedupe {
    window_ms: u64,
    /// Whether the topic ever stored a key (saved in the metadata). Only such topics are
    /// scanned when the broker opens: the others pay nothing for the feature.
    keys_used: bool,
    /// Keys that are not `{prefix}-{n}`, one entry each.
    keys: BTreeMap<String, Original>,
    /// Runs of keys `{prefix}-{n}`, by prefix and first n; the runs of a prefix never
    /// share a key.
    runs: BTreeMap<String, BTreeMap<u64, Run>>,
    /// Every entry by (partition, offset of its first record); entries never share a record.
    #[serde(with = "super::snapshot::pairs")]
    by_position: BTreeMap<(u32, u64), Span>,
    /// (publish time, partition, offset of the first record) of every entry.
    by_time: BTreeSet<(u64, u32, u64)>,
}

impl Dedupe {
    /// An empty index whose entries live `window_ms`.
    pub fn new(window_ms: u64) -> Self {
        Self { window_ms, ..Self::default() }
    }

    /// How long an entry lives after its publish time.
    pub fn window_ms(&self) -> u64 {
        self.window_ms
    }

    /// Whether the topic ever stored an idempotency key.
    pub fn keys_used(&self) -> bool {
        self.keys_used
    }

    /// Marks the topic as one that stores idempotency keys (or not, to undo a mark whose
    /// metadata save failed).
    pub fn set_keys_used(&mut self, used: bool) {
        self.keys_used = used;
    }

    /// Entries currently held: runs plus keys of their own (what `dedupe_keys_max` bounds).
    pub fn len(&self) -> usize {
        self.by_position.len()
    }

    /// The original of `key`, if it is still in the window.
    pub fn get(&self, key: &str) -> Option<Original> {
        self.get_sequenced(key, sequenced(key))
    }

    /// [`Dedupe::get`] of a key whose `{prefix}-{n}` form its caller has read already
    /// (`sequenced(key)`), so a publish reads each key once.
    pub(super) fn get_sequenced(&self, key: &str, seq: Option<(&str, u64)>) -> Option<Original> {
        let Some((prefix, n)) = seq else { return self.keys.get(key).copied() };
        let (&first, run) = self.runs.get(prefix)?.range(..=n).next_back()?;
        let index = n - first;
        (index < run.count).then_some(Original {
            partition: run.partition,
            offset: run.offset + index,
            time_ms: run.time_ms,
        })
    }

    /// Drops every entry whose window has passed at wall time `wall_ms` (the keys of a run
    /// share their publish time, so they leave together).
    pub fn expire(&mut self, wall_ms: u64) {
        while let Some(&(time_ms, partition, offset)) = self.by_time.first() {
            if time_ms.saturating_add(self.window_ms) > wall_ms {
                break;
            }
            self.remove((partition, offset));
        }
    }

    /// Records that `key` was stored at `original`. The caller checked that the key is not
    /// held (a live key is answered as a duplicate, never stored again).
    pub fn insert(&mut self, key: &str, original: Original) {
        let mut batch = BatchKeys::default();
        batch.push(0, key);
        self.insert_batch(original.partition, original.offset, original.time_ms, batch);
    }

    /// How many entries [`Dedupe::insert_batch`] would add for `keys` appended to
    /// `partition` from `offset`, stamped `wall_ms` or, if later, the publish time of the
    /// partition's last record (as an append stamps them). Exact, so that the bound refuses
    /// only a publish that would really pass it.
    pub fn entries_added(&self, partition: u32, offset: u64, wall_ms: u64, keys: &BatchKeys) -> usize {
        // The run ending at the record before ends the partition: its time is the last.
        let extends = match keys.spans.first() {
            Some((0, span)) => self.run_before(span, partition, offset).is_some_and(|(_, run)| wall_ms <= run.time_ms),
            _ => false,
        };
        keys.spans.len() - usize::from(extends)
    }

    /// Records that `keys` were appended to `partition` from `offset` with publish time
    /// `time_ms`; a first run that continues the run ending at the record before extends it.
    pub fn insert_batch(&mut self, partition: u32, offset: u64, time_ms: u64, keys: BatchKeys) {
        for (at, span) in keys.spans {
            let original = Original { partition, offset: offset + at, time_ms };
            assert!(
                self.free(partition, original.offset, span.count),
                "two dedupe entries for one record p{partition}@{}",
                original.offset
            );
            if let Some((prefix, first)) = self.extended_run(&span, original) {
                let run = self.runs.get_mut(&prefix).and_then(|runs| runs.get_mut(&first)).expect("the run is held");
                run.count += span.count;
                self.by_position.get_mut(&(partition, run.offset)).expect("a run has its position").count += span.count;
                continue;
            }
            self.put(original, span);
        }
    }

    /// `(prefix, first)` of the run that `span`, stored from `original`, would extend.
    fn extended_run(&self, span: &Span, original: Original) -> Option<(String, u64)> {
        let (first, run) = self.run_before(span, original.partition, original.offset)?;
        let Name::Run { prefix, .. } = &span.name else { return None };
        (run.time_ms == original.time_ms).then(|| (prefix.clone(), first))
    }

    /// The run, with its first n, that holds the keys just before the run `span` and ends
    /// at the record just before `offset` of `partition`.
    fn run_before(&self, span: &Span, partition: u32, offset: u64) -> Option<(u64, &Run)> {
        let Name::Run { prefix, first } = &span.name else { return None };
        let before = first.checked_sub(1)?;
        let (&run_first, run) = self.runs.get(prefix)?.range(..=before).next_back()?;
        let adjacent = run.partition == partition && run.offset + run.count == offset;
        (before - run_first + 1 == run.count && adjacent).then_some((run_first, run))
    }

    /// Adds `span` as an entry of its own, from `original`.
    fn put(&mut self, original: Original, span: Span) {
        let Original { partition, offset, time_ms } = original;
        match &span.name {
            Name::Key(key) => {
                let previous = self.keys.insert(key.clone(), original);
                assert!(previous.is_none(), "idempotency key {key:?} stored twice within its window");
            }
            Name::Run { prefix, first } => {
                let run = Run { count: span.count, partition, offset, time_ms };
                if !self.runs.contains_key(prefix) {
                    self.runs.insert(prefix.clone(), BTreeMap::new());
                }
                let runs = self.runs.get_mut(prefix).expect("the prefix was just filed");
                // A run never numbers past u64::MAX, so its last n is `first + count - 1`.
                if let Some((&other, held)) = runs.range(..=first + (span.count - 1)).next_back() {
                    let apart = other < *first && *first - other >= held.count;
                    assert!(apart, "idempotency key {prefix}-{first}.. stored twice within its window");
                }
                runs.insert(*first, run);
            }
        }
        self.by_position.insert((partition, offset), span);
        self.by_time.insert((time_ms, partition, offset));
    }

    /// Whether no entry holds a record of `partition` in `offset..offset + count`.
    fn free(&self, partition: u32, offset: u64, count: u64) -> bool {
        let end = offset.saturating_add(count);
        match self.by_position.range(..(partition, end)).next_back() {
            Some((&(p, o), span)) if p == partition => o.saturating_add(span.count) <= offset,
            _ => true,
        }
    }

    /// The index as the logs hold it (of a topic whose keys are used): every keyed record published within `window_ms` of
    /// the newest record of the topic (the open broker does not know the time yet; keys
    /// older than the window at the first publish expire then). Each partition is read
    /// from the first record of the window, found by the sparse time index, to its end.
    ///
    /// A partition that cannot be read stops at the unreadable record: keys past it do not
    /// dedupe. Refusing to start would be worse, and delivery reports the damage anyway.
    pub fn rebuild(window_ms: u64, keys_max: usize, logs: &[Box<dyn PartitionLog>]) -> Self {
        let mut dedupe = Self::new(window_ms);
        dedupe.keys_used = true;
        let newest = logs.iter().filter_map(|log| log.last_publish_time_ms()).max();
        let Some(newest) = newest else { return dedupe };
        let since = newest.saturating_sub(window_ms);
        for (partition, log) in logs.iter().enumerate() {
            let _ = dedupe.rebuild_partition(partition as u32, log.as_ref(), since);
        }
        dedupe.expire(newest);
        dedupe.keep_newest(keys_max);
        dedupe
    }

    fn rebuild_partition(&mut self, partition: u32, log: &dyn PartitionLog, since: u64) -> Result<(), StorageError> {
        let mut at = log.offset_for_time(since)?.max(log.start_offset());
        let end = log.end_offset();
        while at < end {
            let batch = match log.read(at, REBUILD_READ_RECORDS, usize::MAX) {
                Ok(batch) => batch,
                // A damaged run holds no key that can be read: the rebuild goes on after it.
                Err(e) => match log.damaged().into_iter().find(|run| run.contains(&at)) {
                    Some(run) => {
                        at = run.end;
                        continue;
                    }
                    None => return Err(e),
                },
            };
            let Some(last) = batch.last() else { break };
            at = last.offset + 1;
            for stored in batch {
                if let Some(key) = &stored.record.idempotency_key {
                    let original =
                        Original { partition, offset: stored.offset, time_ms: stored.record.publish_time_ms };
                    self.rebuild_entry(key, original);
                }
            }
        }
        Ok(())
    }

    /// Adds an entry found on disk when the broker opens (records of a partition come in
    /// offset order, so runs form again as they did live). A key found twice (stored again
    /// after its window had passed) keeps its newest record, which is the one a live
    /// broker would hold.
    pub fn rebuild_entry(&mut self, key: &str, original: Original) {
        if let Some(held) = self.get(key) {
            if (held.time_ms, held.partition, held.offset) >= (original.time_ms, original.partition, original.offset) {
                return;
            }
            self.forget(held.partition, held.offset, held.offset + 1);
        }
        self.insert(key, original);
    }

    /// The publish time of every entry, oldest first.
    pub fn entry_times(&self) -> impl Iterator<Item = u64> + '_ {
        self.by_time.iter().map(|&(time_ms, _, _)| time_ms)
    }

    /// Keeps only the `keys_max` newest entries: what a rebuild found may be more than the
    /// bound if the bound was lowered since.
    pub fn keep_newest(&mut self, keys_max: usize) {
        while self.len() > keys_max {
            let &(_, partition, offset) = self.by_time.first().expect("more entries than zero");
            self.remove((partition, offset));
        }
    }

    /// Forgets the records of `partition` at or after `from`: they were cut from the log.
    pub fn cut(&mut self, partition: u32, from: u64) {
        self.forget(partition, from, u64::MAX);
    }

    /// Forgets the records of `partition` below `start`: retention removed them, and a
    /// duplicate answer must name a record that a reader can still find.
    pub fn retained_from(&mut self, partition: u32, start: u64) {
        self.forget(partition, 0, start);
    }

    /// Forgets the records `from..to` of `partition`: entries inside go, and a run across
    /// either end keeps its records outside (as one or two runs).
    fn forget(&mut self, partition: u32, from: u64, to: u64) {
        let across_from = self
            .by_position
            .range(..(partition, from))
            .next_back()
            .filter(|(&(p, o), span)| p == partition && o.saturating_add(span.count) > from)
            .map(|(position, _)| *position);
        let inside = self.by_position.range((partition, from)..(partition, to)).map(|(position, _)| *position);
        let hit: Vec<(u32, u64)> = across_from.into_iter().chain(inside).collect();
        for position in hit {
            let (span, time_ms) = self.remove(position);
            let Name::Run { prefix, first } = span.name else { continue };
            let (offset, end) = (position.1, position.1 + span.count);
            if offset < from {
                let before = Span { count: from - offset, name: Name::Run { prefix: prefix.clone(), first } };
                self.put(Original { partition, offset, time_ms }, before);
            }
            if to < end {
                let after = Span { count: end - to, name: Name::Run { prefix, first: first + (to - offset) } };
                self.put(Original { partition, offset: to, time_ms }, after);
            }
        }
    }

    /// Removes the entry whose first record is at `position`; returns it and its time.
    fn remove(&mut self, position: (u32, u64)) -> (Span, u64) {
        let span = self.by_position.remove(&position).expect("a dedupe position has its entry");
        let time_ms = match &span.name {
            Name::Key(key) => self.keys.remove(key).expect("a dedupe key has its entry").time_ms,
            Name::Run { prefix, first } => {
                let runs = self.runs.get_mut(prefix).expect("a dedupe prefix has its runs");
                let run = runs.remove(first).expect("a dedupe run has its entry");
                if runs.is_empty() {
                    self.runs.remove(prefix);
                }
                run.time_ms
            }
        };
        assert!(self.by_time.remove(&(time_ms, position.0, position.1)), "dedupe entry {position:?} has its time");
        (span, time_ms)
    }

    /// Panics if the three views disagree, or an entry names a record that `logs` do not
    /// hold (a cut or retention that forgot to tell the index).
    pub fn assert_invariants(&self, logs: &[Box<dyn PartitionLog>]) {
        for (&(partition, offset), span) in &self.by_position {
            let log = &logs[partition as usize];
            let held = log.start_offset()..log.end_offset();
            let last = offset + span.count - 1;
            assert!(
                held.contains(&offset) && held.contains(&last),
                "dedupe entry p{partition}@{offset}..={last} outside the log's {held:?}"
            );
        }
        self.assert_views();
    }

    /// Panics if the views of the index disagree with each other.
    fn assert_views(&self) {
        let runs: usize = self.runs.values().map(BTreeMap::len).sum();
        assert_eq!(self.keys.len() + runs, self.by_position.len(), "dedupe key and position views differ in size");
        assert_eq!(self.by_position.len(), self.by_time.len(), "dedupe position and time views differ in size");
        let mut previous_end: Option<(u32, u64)> = None;
        for (&(partition, offset), span) in &self.by_position {
            assert!(span.count >= 1, "empty dedupe entry p{partition}@{offset}");
            if let Some((p, end)) = previous_end {
                assert!(p < partition || end <= offset, "dedupe entries overlap at p{partition}@{offset}");
            }
            previous_end = Some((partition, offset + span.count));
            let time_ms = match &span.name {
                Name::Key(key) => {
                    assert!(sequenced(key).is_none(), "{key:?} is held by itself, not in a run");
                    let o = self.keys.get(key).unwrap_or_else(|| panic!("dedupe key {key:?} has its entry"));
                    assert_eq!(
                        (o.partition, o.offset, span.count),
                        (partition, offset, 1),
                        "dedupe position of {key:?}"
                    );
                    o.time_ms
                }
                Name::Run { prefix, first } => {
                    let run = self.runs.get(prefix).and_then(|runs| runs.get(first));
                    let run = run.unwrap_or_else(|| panic!("dedupe run {prefix}-{first} has its entry"));
                    let at = (run.partition, run.offset, run.count);
                    assert_eq!(at, (partition, offset, span.count), "dedupe position of run {prefix}-{first}");
                    run.time_ms
                }
            };
            assert!(self.by_time.contains(&(time_ms, partition, offset)), "dedupe time of p{partition}@{offset}");
        }
        for (prefix, runs) in &self.runs {
            assert!(!runs.is_empty(), "dedupe prefix {prefix:?} without runs");
            let mut previous: Option<(u64, u64)> = None;
            for (&first, run) in runs {
                let apart = previous.is_none_or(|(other, count)| first - other >= count);
                assert!(apart, "dedupe runs of {prefix:?} overlap at {first}");
                assert!(run.count - 1 <= u64::MAX - first, "dedupe run {prefix}-{first} numbers past u64");
                previous = Some((first, run.count));
            }
        }
    }
}

#[cfg(test)]
#[path = "dedupe_proptests.rs"]
mod proptests;

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::storage::memory::MemoryLog;
    use crate::storage::Record;

    /// `partitions` memory logs of `records` records each.
    fn logs(partitions: u32, records: u64) -> Vec<Box<dyn PartitionLog>> {
        (0..partitions)
            .map(|_| {
                let mut log: Box<dyn PartitionLog> = Box::new(MemoryLog::default());
                log.append(vec![record(None, 0); records as usize]).unwrap();
                log
            })
            .collect()
    }

    fn record(idempotency_key: Option<String>, publish_time_ms: u64) -> Record {
        Record { key: None, value: Bytes::new(), attributes: Default::default(), publish_time_ms, idempotency_key }
    }

    fn at(partition: u32, offset: u64, time_ms: u64) -> Original {
        Original { partition, offset, time_ms }
    }

    /// Keys `{prefix}-{first}` to `{prefix}-{first + count - 1}` appended to `partition` at
    /// `offset`, as a publish teaches them; returns how many entries were predicted.
    fn append(d: &mut Dedupe, prefix: &str, first: u64, count: u64, original: Original) -> usize {
        let mut keys = BatchKeys::default();
        for n in 0..count {
            keys.push(n, &format!("{prefix}-{}", first + n));
        }
        let predicted = d.entries_added(original.partition, original.offset, original.time_ms, &keys);
        let before = d.len();
        d.insert_batch(original.partition, original.offset, original.time_ms, keys);
        assert_eq!(d.len(), before + predicted, "entries_added predicted the entries insert_batch added");
        predicted
    }

    /// Every entry: (partition, offset, records, keys as written).
    fn entries(d: &Dedupe) -> Vec<(u32, u64, u64, String)> {
        let name = |span: &Span| match &span.name {
            Name::Key(key) => key.clone(),
            Name::Run { prefix, first } => format!("{prefix}-{first}.."),
        };
        d.by_position.iter().map(|(&(p, o), span)| (p, o, span.count, name(span))).collect()
    }

    #[test]
    fn entries_expire_when_their_window_passes() {
        let mut d = Dedupe::new(1000);
        d.insert("a", at(0, 0, 100));
        d.insert("b", at(1, 0, 600));
        d.expire(1099);
        assert_eq!(d.get("a"), Some(at(0, 0, 100)));
        d.expire(1100);
        assert_eq!((d.get("a"), d.len()), (None, 1));
        d.expire(1600);
        assert_eq!(d.len(), 0);
        d.assert_invariants(&logs(2, 4));
    }

    #[test]
    fn a_cut_and_retention_forget_only_their_partition_range() {
        let mut d = Dedupe::new(1000);
        for offset in 0..4 {
            d.insert(&format!("p0-{offset}"), at(0, offset, 10));
            d.insert(&format!("p1-{offset}"), at(1, offset, 10));
        }
        assert_eq!(d.len(), 2, "each partition's keys form one run");
        d.cut(0, 2);
        d.retained_from(1, 1);
        let held: Vec<&str> = ["p0-0", "p0-1", "p0-2", "p0-3", "p1-0", "p1-1", "p1-2", "p1-3"]
            .into_iter()
            .filter(|key| d.get(key).is_some())
            .collect();
        assert_eq!(held, ["p0-0", "p0-1", "p1-1", "p1-2", "p1-3"]);
        d.assert_invariants(&logs(2, 4));
    }

    #[test]
    fn a_rebuild_keeps_the_newest_record_of_a_key_and_the_newest_keys() {
        let mut d = Dedupe::new(1000);
        d.rebuild_entry("k", at(0, 5, 200));
        d.rebuild_entry("k", at(1, 0, 100));
        assert_eq!(d.get("k"), Some(at(0, 5, 200)));
        d.rebuild_entry("j", at(1, 1, 300));
        d.keep_newest(1);
        assert_eq!((d.get("k"), d.get("j")), (None, Some(at(1, 1, 300))));
        d.assert_invariants(&logs(2, 4));
    }

    #[test]
    fn keys_numbered_in_order_at_consecutive_offsets_with_one_time_are_one_run() {
        let mut d = Dedupe::new(1000);
        assert_eq!(append(&mut d, "pub", 0, 100, at(0, 0, 10)), 1);
        assert_eq!(append(&mut d, "pub", 100, 100, at(0, 100, 10)), 0, "the next batch at the same time extends it");
        assert_eq!(entries(&d), [(0, 0, 200, "pub-0..".to_string())]);
        assert_eq!(d.get("pub-0"), Some(at(0, 0, 10)));
        assert_eq!(d.get("pub-137"), Some(at(0, 137, 10)));
        assert_eq!(d.get("pub-199"), Some(at(0, 199, 10)));
        assert_eq!((d.get("pub-200"), d.get("pu-5"), d.get("pub")), (None, None, None));
        // A later time, a gap in offsets or in numbers, or another partition starts a run.
        assert_eq!(append(&mut d, "pub", 200, 10, at(0, 200, 11)), 1);
        assert_eq!(append(&mut d, "pub", 210, 10, at(0, 211, 11)), 1);
        assert_eq!(append(&mut d, "pub", 221, 10, at(0, 221, 11)), 1);
        assert_eq!(append(&mut d, "pub", 231, 10, at(1, 231, 11)), 1);
        assert_eq!(d.len(), 5);
        assert_eq!(d.get("pub-215"), Some(at(0, 216, 11)));
        assert_eq!(d.get("pub-220"), None);
        d.assert_invariants(&logs(2, 300));
    }

    #[test]
    fn a_later_wall_time_predicts_a_new_run_and_an_earlier_one_an_extension() {
        let mut d = Dedupe::new(1000);
        append(&mut d, "p", 0, 5, at(0, 0, 50));
        let mut keys = BatchKeys::default();
        keys.push(0, "p-5");
        keys.push(1, "p-6");
        // An append is stamped no earlier than the partition's last record.
        assert_eq!(d.entries_added(0, 5, 49, &keys), 0);
        assert_eq!(d.entries_added(0, 5, 50, &keys), 0);
        assert_eq!(d.entries_added(0, 5, 51, &keys), 1);
        assert_eq!(d.entries_added(0, 6, 50, &keys), 1, "a keyless record between");
        keys.push(2, "other");
        keys.push(3, "p-7");
        assert_eq!(d.entries_added(0, 5, 50, &keys), 2, "a key of its own and a new run");
    }

    #[test]
    fn a_cut_in_the_middle_of_a_run_keeps_its_front() {
        let mut d = Dedupe::new(1000);
        append(&mut d, "p", 0, 10, at(0, 0, 10));
        d.cut(0, 4);
        assert_eq!((d.get("p-3"), d.get("p-4"), d.get("p-9")), (Some(at(0, 3, 10)), None, None));
        assert_eq!(entries(&d), [(0, 0, 4, "p-0..".to_string())]);
        d.assert_invariants(&logs(1, 4));
        // The retry of what was cut is stored again, and continues the run.
        assert_eq!(append(&mut d, "p", 4, 6, at(0, 4, 10)), 0);
        assert_eq!(d.get("p-9"), Some(at(0, 9, 10)));
    }

    #[test]
    fn a_key_forgotten_inside_a_run_splits_it_in_two() {
        let mut d = Dedupe::new(1000);
        append(&mut d, "p", 0, 10, at(0, 0, 10));
        // At open, `p-4` found again in a newer record keeps only the newer one.
        d.rebuild_entry("p-4", at(0, 10, 20));
        assert_eq!(d.get("p-4"), Some(at(0, 10, 20)));
        assert_eq!((d.get("p-3"), d.get("p-5")), (Some(at(0, 3, 10)), Some(at(0, 5, 10))));
        let runs = [(0, 0, 4, "p-0..".to_string()), (0, 5, 5, "p-5..".to_string()), (0, 10, 1, "p-4..".to_string())];
        assert_eq!(entries(&d), runs);
        d.assert_invariants(&logs(1, 11));
    }

    #[test]
    fn retention_trims_a_run_from_its_front() {
        let mut d = Dedupe::new(1000);
        append(&mut d, "p", 0, 10, at(0, 0, 10));
        append(&mut d, "p", 10, 10, at(0, 10, 20));
        d.retained_from(0, 13);
        assert_eq!((d.get("p-12"), d.get("p-13")), (None, Some(at(0, 13, 20))));
        assert_eq!(entries(&d), [(0, 13, 7, "p-13..".to_string())]);
        d.assert_invariants(&logs(1, 20));
        d.expire(1019);
        assert_eq!(d.get("p-19"), Some(at(0, 19, 20)));
        d.expire(1020);
        assert_eq!((d.get("p-19"), d.len()), (None, 0), "a run expires whole");
    }

    #[test]
    fn keys_not_numbered_canonically_are_entries_of_their_own() {
        let odd = ["p-007", "p-x", "-5", "p-", "p-+5", "5", "p-18446744073709551616", "p-1e3", "p-٣"];
        let mut d = Dedupe::new(1000);
        for (offset, key) in odd.iter().enumerate() {
            d.insert(key, at(0, offset as u64, 10));
        }
        d.insert("p-7", at(0, 9, 10));
        d.insert("p-8", at(0, 10, 10));
        d.insert("p--1", at(0, 11, 10));
        d.insert("p-18446744073709551615", at(0, 12, 10));
        let plain: Vec<&str> = d.keys.keys().map(String::as_str).collect();
        let mut expected = odd.to_vec();
        expected.sort_unstable();
        assert_eq!(plain, expected);
        assert_eq!(d.get("p-007"), Some(at(0, 0, 10)));
        assert_eq!(d.get("p-7"), Some(at(0, 9, 10)), "`p-7` is not `p-007`");
        assert_eq!(d.get("p--1"), Some(at(0, 11, 10)), "prefix `p-`, number 1");
        assert_eq!(d.get("p-18446744073709551615"), Some(at(0, 12, 10)));
        assert_eq!(d.len(), odd.len() + 3);
        d.assert_invariants(&logs(1, 13));
    }

    #[test]
    fn a_rebuild_from_the_logs_gives_the_index_a_live_broker_held() {
        let mut live = Dedupe::new(1000);
        live.set_keys_used(true);
        let mut logs: Vec<Box<dyn PartitionLog>> = vec![Box::new(MemoryLog::default()), Box::new(MemoryLog::default())];
        // (partition, first n, count, time, keyless records after, a key of its own after)
        let batches = [
            (0, 0, 50, 50, 0, true),
            (1, 50, 50, 100, 1, true),
            (0, 100, 50, 100, 0, false),
            (0, 150, 30, 100, 0, true),
            (0, 180, 5, 105, 2, false),
            (1, 185, 1, 1060, 0, false),
        ];
        for (partition, first, count, time_ms, keyless, own) in batches {
            let log = &mut logs[partition as usize];
            let offset = log.end_offset();
            let mut records: Vec<Record> =
                (first..first + count).map(|n| record(Some(format!("pub-{n}")), time_ms)).collect();
            records.extend((0..keyless).map(|_| record(None, time_ms)));
            if own {
                records.push(record(Some(format!("x{first}")), time_ms));
            }
            log.append(records).unwrap();
            append(&mut live, "pub", first, count, at(partition, offset, time_ms));
            if own {
                live.insert(&format!("x{first}"), at(partition, offset + count + keyless, time_ms));
            }
        }
        live.expire(1060);
        assert_eq!(live.len(), 6, "four runs (pub-100 to pub-179 is one) and two keys of their own");
        let rebuilt = Dedupe::rebuild(1000, 100, &logs);
        assert_eq!(entries(&rebuilt), entries(&live));
        assert_eq!((&rebuilt.keys, &rebuilt.runs, &rebuilt.by_time), (&live.keys, &live.runs, &live.by_time));
        rebuilt.assert_invariants(&logs);
        assert_eq!(rebuilt.get("pub-179"), Some(at(0, 130, 100)));
        assert_eq!(rebuilt.get("pub-0"), None, "out of the window of the newest record");
        assert_eq!(Dedupe::rebuild(1000, 2, &logs).len(), 2, "the newest entries are kept");
    }
}
