//! A node's Raft log: one file of framed records (`proto/cluster.proto`) over the `Fs`
//! trait, with the state they add up to kept in memory.
//!
//! Durability follows openraft's contract: a vote is synced before `save_vote` returns; an
//! append's entries are readable at once and reported flushed after one fsync that covers
//! the whole batch (and everything written before it, so a completion always means the whole
//! prefix is on disk); a truncation is synced before it returns, so conflicting entries never
//! come back after a crash. Purges and the committed hint are written without a sync: losing
//! one to a crash only keeps more entries, or re-applies from the snapshot.
//!
//! Frames are the command log's (length, CRC32C, body; at most 64 MiB a record).
//!
//! Records that no longer count (purged or truncated entries, old votes) are dropped by
//! rewriting the file once they outweigh the live ones (temp file, fsync, rename, directory
//! fsync), in a task beside the appends: the log is locked only to copy what was written
//! during the rewrite and to swap the files.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::io;
use std::ops::RangeBounds;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use openraft::storage::{IOFlushed, LogState, RaftLogStorage};
use openraft::type_config::alias::{EntryOf, LogIdOf, VoteOf};
use openraft::{OptionalSend, RaftLogReader};
use prost::Message;

use super::wire::{entry_of, entry_pb, log_id_of, log_id_pb, vote_of, vote_pb};
use super::{pb, TypeConfig};
use crate::env::{blocking, Fs, FsFile};
use crate::record::{frame, frame_at, frame_size, later_frame, looks_lost};

type Entry = EntryOf<TypeConfig>;
type LogId = LogIdOf<TypeConfig>;
type Vote = VoteOf<TypeConfig>;

/// The log file's name in its directory.
const LOG_FILE: &str = "log";
const LOG_TEMP_FILE: &str = "log.tmp";
/// Dead bytes that make a rewrite worth its cost, at least.
const COMPACT_MIN_BYTES: u64 = 1 << 20;

/// A node's Raft log. Clones share it (openraft reads through one while it writes through
/// another).
#[derive(Clone)]
pub struct RaftLog(Arc<Mutex<Inner>>);

struct Inner {
    fs: Arc<dyn Fs>,
    dir: PathBuf,
    /// Shared with the fsyncs of appends, which run beside the next writes.
    file: Arc<dyn FsFile>,
    /// The file's length: where the next record goes.
    len: u64,
    vote: Option<Vote>,
    /// By index, contiguous, after `purged`.
    entries: BTreeMap<u64, (Entry, u64)>,
    purged: Option<LogId>,
    committed: Option<LogId>,
    /// Bytes of the file that no longer count.
    dead: u64,
    /// Whose log this is (the first record).
    identity: Option<pb::Identity>,
    /// Whether votes, appends and truncations are fsynced before they count (true unless
    /// [`RaftLog::without_fsync`]).
    fsync: bool,
    /// See [`RaftLog::with_unsynced_appends`].
    appends_unsynced: bool,
    /// A rewrite runs (one at a time, beside the appends).
    compacting: bool,
    /// Why the log takes no more writes: a rewrite replaced the file but could not make
    /// the replacement durable. openraft stops the node on the next write's error, as it did
    /// when the rewrite ran in the purge.
    broken: Option<String>,
}

/// What a rewrite of the log file starts from: the records that count when it begins, and
/// where the file ended then. Records written after are copied from the old file as they are.
struct Compaction {
    records: Vec<pb::LogRecord>,
    /// The old file's length when the records were taken.
    from: u64,
    /// Its dead bytes then: the rewrite drops them, and only them.
    dead: u64,
}

/// The identity of node `node` in the cluster of `nodes` (any order).
pub fn identity(node: u64, nodes: impl IntoIterator<Item = u64>) -> pb::Identity {
    let mut ids: Vec<u64> = nodes.into_iter().collect();
    ids.sort_unstable();
    ids.dedup();
    let cluster = ids.iter().map(u64::to_string).collect::<Vec<_>>().join(",");
    pb::Identity { cluster, node }
}

impl RaftLog {
    /// Opens node `identity.node`'s log in `dir` (creating both if needed) and reads it
    /// back. A new log begins with the identity; a log of another node or another cluster
    /// (other node ids) is refused, naming `node_id` or `peers`. A torn last record is cut;
    /// damage with an intact record after it is refused, naming the file and the byte.
    pub fn open(fs: Arc<dyn Fs>, dir: &Path, identity: &pb::Identity) -> io::Result<Self> {
        if !fs.exists(dir) {
            fs.create_dir_all(dir)?;
            if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
                fs.sync_dir(parent)?;
            }
        }
        let path = dir.join(LOG_FILE);
        let created = !fs.exists(&path);
        let file: Arc<dyn FsFile> = Arc::from(fs.open(&path, true)?);
        if created {
            fs.sync_dir(dir)?;
        }
        let bytes = Bytes::from(if created { Vec::new() } else { fs.read(&path)? });
        let mut inner = Inner {
            fs,
            dir: dir.to_path_buf(),
            file,
            len: 0,
            vote: None,
            entries: BTreeMap::new(),
            purged: None,
            committed: None,
            dead: 0,
            identity: None,
            fsync: true,
            appends_unsynced: false,
            compacting: false,
            broken: None,
        };
        inner.replay(&bytes, &path)?;
        match &inner.identity {
            None => {
                inner.write(vec![record(pb::log_record::Kind::Identity(identity.clone()))])?;
                inner.sync()?;
            }
            Some(found) if found.cluster != identity.cluster => {
                return Err(io::Error::new(io::ErrorKind::InvalidData, format!(
                    "{} belongs to a cluster of nodes {}, not {}: peers must name the same node ids as when the data was made, or give this node an empty data directory",
                    path.display(), found.cluster, identity.cluster
                )));
            }
            Some(found) if found.node != identity.node => {
                return Err(io::Error::new(io::ErrorKind::InvalidData, format!(
                    "{} is node {}'s Raft log, not node {}'s: node_id must be the id the data was made with, or give this node an empty data directory",
                    path.display(), found.node, identity.node
                )));
            }
            Some(_) => {}
        }
        Ok(Self(Arc::new(Mutex::new(inner))))
    }

    /// From now on votes, appends and truncations count once written, without an fsync: a
    /// write survives this process's crash (the page cache keeps it), not a power cut. What
    /// a cluster whose `fsync` is not `always` runs with: a write is acknowledged once a
    /// majority wrote it. Compaction still syncs its new file before it replaces the old.
    pub fn without_fsync(self) -> Self {
        self.lock().fsync = false;
        self
    }

    /// A defect on purpose ([`Mutation::RaftLogUnsynced`](crate::core::Mutation)): appends
    /// count once written, never synced; votes and truncations still are.
    pub fn with_unsynced_appends(self) -> Self {
        self.lock().appends_unsynced = true;
        self
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Rewrites the file with the records of `plan`, then what was written after it began,
    /// into a temp file that replaces the log (fsync, rename, directory fsync). The log is
    /// locked only to copy the last of those writes and swap the files: appends go on while
    /// the bulk is written. A rewrite that fails before the rename leaves the old file, which
    /// still holds everything; the next purge tries again.
    fn compact(&self, plan: Compaction) {
        let done = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.try_compact(plan)))
            .unwrap_or_else(|_| Err(io::Error::other("the rewrite panicked")));
        if let Err(e) = done {
            // Before the rename the old file stands and the next purge tries again; after it,
            // the log is broken (see `Inner::broken`).
            tracing::warn!(error = %e, "the Raft log's rewrite failed");
            let mut inner = self.lock();
            let _ = inner.fs.remove_file(&inner.dir.join(LOG_TEMP_FILE));
            inner.compacting = false;
        }
    }

    fn try_compact(&self, plan: Compaction) -> io::Result<()> {
        let (fs, dir, old) = {
            let inner = self.lock();
            (inner.fs.clone(), inner.dir.clone(), inner.file.clone())
        };
        let mut bytes = Vec::new();
        for r in &plan.records {
            frame(&r.encode_to_vec(), &mut bytes);
        }
        let (temp, path) = (dir.join(LOG_TEMP_FILE), dir.join(LOG_FILE));
        let file: Arc<dyn FsFile> = Arc::from(fs.open(&temp, true)?);
        file.set_len(0)?;
        file.write_all_at(&bytes, 0)?;
        // What was written since, copied unlocked while the log goes on, then the rest locked.
        let head = bytes.len() as u64;
        let mut copied = plan.from;
        let end = self.lock().len;
        copy_range(old.as_ref(), file.as_ref(), copied, end, head + (copied - plan.from))?;
        copied = end;
        file.sync_data()?;
        let mut inner = self.lock();
        if Arc::strong_count(&self.0) == 1 {
            // Every other holder is gone: the node stopped, and another may open the log
            // now. The old file stands.
            return Err(io::Error::other("the log was closed while it was rewritten"));
        }
        copy_range(old.as_ref(), file.as_ref(), copied, inner.len, head + (copied - plan.from))?;
        file.sync_data()?;
        fs.rename(&temp, &path)?;
        // The new file is the log from here on, whatever follows. It is opened again by its
        // name: a handle need not follow a rename (the simulator's do not).
        inner.len = head + (inner.len - plan.from);
        inner.dead -= plan.dead.min(inner.dead);
        inner.compacting = false;
        let reopened = fs.open(&path, false).and_then(|file| fs.sync_dir(&dir).map(|()| file));
        match reopened {
            Ok(file) => inner.file = Arc::from(file),
            Err(e) => {
                inner.file = file;
                inner.broken = Some(format!("the Raft log's rewrite was not made durable: {e}"));
                return Err(e);
            }
        }
        Ok(())
    }
}

/// Copies bytes `from..to` of `source` to `target` at `at`, a bounded chunk at a time.
fn copy_range(source: &dyn FsFile, target: &dyn FsFile, from: u64, to: u64, at: u64) -> io::Result<()> {
    const CHUNK: u64 = 1 << 20;
    let mut buffer = Vec::new();
    let mut done = 0;
    while from + done < to {
        let n = CHUNK.min(to - from - done);
        buffer.resize(n as usize, 0);
        crate::env::read_exact_at(source, &mut buffer, from + done)?;
        target.write_all_at(&buffer, at + done)?;
        done += n;
    }
    Ok(())
}

impl Inner {
    /// Rebuilds the state from the file's records, cutting a torn tail.
    fn replay(&mut self, bytes: &Bytes, path: &Path) -> io::Result<()> {
        let mut at = 0usize;
        while at < bytes.len() {
            // A zeroed stretch (a file grown but its blocks never written, as after a power
            // failure) reads as empty frames with a good checksum: a record of no kind is
            // torn like one that does not decode.
            let decoded = frame_at(bytes, at)
                .and_then(|body| pb::LogRecord::decode(body).map_err(|e| format!("a record that does not decode: {e}")))
                .and_then(|record| match record.kind {
                    Some(_) => Ok(record),
                    None => Err("a record of no kind".to_string()),
                });
            let record = match decoded {
                Ok(record) => record,
                Err(reason) => {
                    // Damage that looks like a lost write (zeros where a write never reached
                    // the disk while a later one did; `record::looks_lost`) before an intact
                    // record: no fsync ended after it (one would have made it durable), so
                    // nothing from here on was ever acknowledged, and it is cut like any
                    // torn tail. Other damage followed by an intact record is corruption of
                    // what was synced: refused.
                    let later =
                        later_frame(bytes, at + 1, |b| pb::LogRecord::decode(b).is_ok_and(|r| r.kind.is_some()));
                    if let Some(later) = later.filter(|later| !looks_lost(&bytes[at..*later], at as u64)) {
                        return Err(corrupt(
                            path,
                            at,
                            format!("{reason}, and an intact record follows at byte {later}"),
                        ));
                    }
                    tracing::warn!(file = %path.display(), position = at, cut_bytes = bytes.len() - at, %reason,
                        "cut the Raft log's torn tail: a write never synced");
                    self.file.set_len(at as u64)?;
                    self.file.sync_data()?;
                    break;
                }
            };
            let size = frame_size(bytes, at);
            self.apply(record, size as u64).map_err(|reason| corrupt(path, at, reason))?;
            at += size;
            self.len = at as u64;
        }
        Ok(())
    }

    /// Applies one record to the in-memory state (at open and as it is written).
    fn apply(&mut self, record: pb::LogRecord, size: u64) -> Result<(), String> {
        match record.kind.ok_or("a record of no kind")? {
            pb::log_record::Kind::Vote(v) => {
                self.dead += self.vote.map_or(0, |_| size);
                self.vote = Some(vote_of(&v));
            }
            pb::log_record::Kind::Entry(e) => {
                let entry = entry_of(e)?;
                let index = entry.log_id.index;
                self.drop_from(index);
                self.entries.insert(index, (entry, size));
            }
            pb::log_record::Kind::TruncateAfter(t) => {
                self.drop_from(t.last.map_or(0, |l| l.index + 1));
                self.dead += size;
            }
            pb::log_record::Kind::Purged(id) => {
                let id = log_id_of(&id);
                let kept = self.entries.split_off(&(id.index + 1));
                self.dead += self.entries.values().map(|(_, s)| s).sum::<u64>() + size;
                self.entries = kept;
                self.purged = Some(id);
            }
            pb::log_record::Kind::Committed(id) => {
                self.dead += size;
                self.committed = Some(log_id_of(&id));
            }
            pb::log_record::Kind::Identity(identity) => {
                if self.identity.as_ref().is_some_and(|i| *i != identity) {
                    return Err("a second identity that differs from the first".to_string());
                }
                self.identity = Some(identity);
            }
        }
        Ok(())
    }

    fn drop_from(&mut self, index: u64) {
        let dropped = self.entries.split_off(&index);
        self.dead += dropped.values().map(|(_, s)| s).sum::<u64>();
    }

    /// Writes records at the end of the file, and applies them.
    fn write(&mut self, records: Vec<pb::LogRecord>) -> io::Result<()> {
        if let Some(why) = &self.broken {
            return Err(io::Error::other(why.clone()));
        }
        let mut bytes = Vec::new();
        let mut sizes = Vec::with_capacity(records.len());
        for record in &records {
            let before = bytes.len();
            frame(&record.encode_to_vec(), &mut bytes);
            sizes.push((bytes.len() - before) as u64);
        }
        self.file.write_all_at(&bytes, self.len)?;
        self.len += bytes.len() as u64;
        for (record, size) in records.into_iter().zip(sizes) {
            self.apply(record, size).map_err(io::Error::other)?;
        }
        Ok(())
    }

    fn sync(&mut self) -> io::Result<()> {
        if !self.fsync {
            return Ok(());
        }
        self.file.sync_data()
    }

    /// What a rewrite of the file would keep, once the dead bytes outweigh the live ones and
    /// no rewrite runs; the rewrite is then running.
    fn compaction_due(&mut self) -> Option<Compaction> {
        let live = self.len - self.dead.min(self.len);
        if self.compacting || self.dead < COMPACT_MIN_BYTES.max(live) {
            return None;
        }
        let mut records = Vec::with_capacity(4 + self.entries.len());
        records.extend(self.identity.clone().map(|i| record(pb::log_record::Kind::Identity(i))));
        records.extend(self.vote.map(|v| record(pb::log_record::Kind::Vote(vote_pb(&v)))));
        records.extend(self.purged.map(|p| record(pb::log_record::Kind::Purged(log_id_pb(&p)))));
        records.extend(self.committed.map(|c| record(pb::log_record::Kind::Committed(log_id_pb(&c)))));
        records.extend(self.entries.values().map(|(entry, _)| record(pb::log_record::Kind::Entry(entry_pb(entry)))));
        self.compacting = true;
        Some(Compaction { records, from: self.len, dead: self.dead })
    }

    fn state(&self) -> LogState<TypeConfig> {
        let last = self.entries.values().next_back().map(|(e, _)| e.log_id).or(self.purged);
        LogState { last_purged_log_id: self.purged, last_log_id: last }
    }
}

impl RaftLogReader<TypeConfig> for RaftLog {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, io::Error> {
        Ok(self.lock().entries.range(range).map(|(_, (e, _))| e.clone()).collect())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, io::Error> {
        Ok(self.lock().vote)
    }
}

impl RaftLogStorage<TypeConfig> for RaftLog {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, io::Error> {
        Ok(self.lock().state())
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), io::Error> {
        let mut inner = self.lock();
        inner.write(vec![record(pb::log_record::Kind::Vote(vote_pb(vote)))])?;
        inner.sync()
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), io::Error> {
        let Some(committed) = committed else { return Ok(()) };
        self.lock().write(vec![record(pb::log_record::Kind::Committed(log_id_pb(&committed)))])
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, io::Error> {
        Ok(self.lock().committed)
    }

    async fn append<I>(&mut self, entries: I, callback: IOFlushed<TypeConfig>) -> Result<(), io::Error>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let records: Vec<pb::LogRecord> =
            entries.into_iter().map(|e| record(pb::log_record::Kind::Entry(entry_pb(&e)))).collect();
        let mut inner = self.lock();
        inner.write(records)?;
        if !inner.fsync {
            drop(inner);
            callback.io_completed(Ok(()));
            return Ok(());
        }
        // One fsync for the batch and everything written before it, in a task of its own:
        // the entries are readable now, so the leader sends them to its followers while its
        // own fsync runs, and the next appends are written meanwhile (group commit). A later
        // fsync that ends first reports a later batch flushed, which it is: it covers every
        // write made before it began; openraft ignores the earlier one's report after it.
        let (file, fs) = (inner.file.clone(), inner.fs.clone());
        if inner.appends_unsynced {
            drop(inner);
            callback.io_completed(Ok(()));
            return Ok(());
        }
        drop(inner);
        tokio::spawn(async move {
            // A simulated slow disk: the fsync ends this much later.
            let latency = fs.sync_latency();
            if !latency.is_zero() {
                tokio::time::sleep(latency).await;
            }
            let synced = blocking(|| file.sync_data());
            callback.io_completed(synced.map_err(|e| io::Error::new(e.kind(), e.to_string())));
        });
        Ok(())
    }

    async fn truncate_after(&mut self, last: Option<LogId>) -> Result<(), io::Error> {
        let mut inner = self.lock();
        let truncate = pb::TruncateAfter { last: last.map(|l| log_id_pb(&l)) };
        inner.write(vec![record(pb::log_record::Kind::TruncateAfter(truncate))])?;
        inner.sync()
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), io::Error> {
        let plan = {
            let mut inner = self.lock();
            inner.write(vec![record(pb::log_record::Kind::Purged(log_id_pb(&log_id)))])?;
            inner.compaction_due()
        };
        if let Some(plan) = plan {
            // Beside the appends: rewriting a large log holds nothing up for its duration.
            let log = self.clone();
            tokio::spawn(async move { blocking(|| log.compact(plan)) });
        }
        Ok(())
    }
}

fn record(kind: pb::log_record::Kind) -> pb::LogRecord {
    pb::LogRecord { kind: Some(kind) }
}

fn corrupt(path: &Path, position: usize, reason: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("{} at byte {position}: {reason}", path.display()))
}
