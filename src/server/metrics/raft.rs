//! A cluster node's Raft metrics: its state as gauges (refreshed by [`export`]), the time
//! its Raft log's fsyncs take ([`TimedFs`]), and the time a proposal takes to apply.

use std::io;
use std::path::Path;
use std::sync::Arc;

use metrics::Histogram;

use super::{
    seconds_from_us, RAFT_APPLIED, RAFT_APPLY_LAG, RAFT_COMMITTED, RAFT_ELECTIONS, RAFT_LEADER, RAFT_LOG_FSYNC,
    RAFT_SERVING, RAFT_TERM,
};
use crate::cluster::ClusterState;
use crate::env::{Clock, Fs, FsFile};

/// Sets the gauges from the node's state; `last_term` is the term the previous call saw,
/// and each term begun since counts as an election.
pub fn export(state: &ClusterState, last_term: &mut Option<u64>) {
    metrics::gauge!(RAFT_TERM).set(state.term as f64);
    metrics::gauge!(RAFT_LEADER).set(state.leader.unwrap_or(0) as f64);
    metrics::gauge!(RAFT_SERVING).set(if state.serving { 1.0 } else { 0.0 });
    metrics::gauge!(RAFT_COMMITTED).set(state.committed as f64);
    metrics::gauge!(RAFT_APPLIED).set(state.applied as f64);
    metrics::gauge!(RAFT_APPLY_LAG).set(state.committed.saturating_sub(state.applied) as f64);
    let counter = metrics::counter!(RAFT_ELECTIONS);
    match last_term {
        Some(last) if state.term > *last => counter.increment(state.term - *last),
        _ => counter.absolute(0),
    }
    *last_term = Some(state.term.max(last_term.unwrap_or(0)));
}

/// A filesystem whose files record how long each `sync_data` takes (the Raft log's fsyncs).
pub struct TimedFs {
    inner: Arc<dyn Fs>,
    timer: SyncTimer,
}

#[derive(Clone)]
struct SyncTimer {
    clock: Arc<dyn Clock>,
    histogram: Histogram,
}

impl TimedFs {
    /// Wraps `inner`.
    pub fn new(inner: Arc<dyn Fs>, clock: Arc<dyn Clock>) -> Self {
        Self { inner, timer: SyncTimer { clock, histogram: metrics::histogram!(RAFT_LOG_FSYNC) } }
    }
}

impl Fs for TimedFs {
    fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        self.inner.create_dir_all(path)
    }

    fn list_dir(&self, path: &Path) -> io::Result<Vec<String>> {
        self.inner.list_dir(path)
    }

    fn open(&self, path: &Path, create: bool) -> io::Result<Box<dyn FsFile>> {
        let file = self.inner.open(path, create)?;
        Ok(Box::new(TimedFile { file, timer: self.timer.clone() }))
    }

    fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
        self.inner.read(path)
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        self.inner.remove_file(path)
    }

    fn remove_dir_all(&self, path: &Path) -> io::Result<()> {
        self.inner.remove_dir_all(path)
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        self.inner.rename(from, to)
    }

    fn sync_dir(&self, path: &Path) -> io::Result<()> {
        self.inner.sync_dir(path)
    }

    fn exists(&self, path: &Path) -> bool {
        self.inner.exists(path)
    }

    fn sync_latency(&self) -> std::time::Duration {
        self.inner.sync_latency()
    }
}

struct TimedFile {
    file: Box<dyn FsFile>,
    timer: SyncTimer,
}

impl FsFile for TimedFile {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        self.file.read_at(buf, offset)
    }

    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.file.write_all_at(buf, offset)
    }

    fn size(&self) -> io::Result<u64> {
        self.file.size()
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        self.file.set_len(len)
    }

    fn sync_data(&self) -> io::Result<()> {
        let start = self.timer.clock.now_us();
        let synced = self.file.sync_data();
        self.timer.histogram.record(seconds_from_us(self.timer.clock.now_us().saturating_sub(start)));
        synced
    }
}
