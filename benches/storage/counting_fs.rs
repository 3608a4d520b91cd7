//! An `Fs` that counts fdatasync calls and the time they take: `StdFs`, with every file's
//! `sync_data` counted and timed.
#![allow(clippy::disallowed_methods, reason = "it times each fdatasync: that is what it is for")]

use std::io;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use mini_pubsub::env::{Fs, FsFile, StdFs};

/// fdatasync calls on segment and metadata files, and the time spent in them.
#[derive(Debug, Default)]
pub struct FsyncCounter {
    calls: AtomicU64,
    nanos: AtomicU64,
}

/// A snapshot of a counter.
#[derive(Debug, Clone, Copy, Default)]
pub struct FsyncCount {
    pub calls: u64,
    pub nanos: u64,
}

impl FsyncCounter {
    pub fn get(&self) -> FsyncCount {
        FsyncCount { calls: self.calls.load(Ordering::Relaxed), nanos: self.nanos.load(Ordering::Relaxed) }
    }
}

impl FsyncCount {
    pub fn since(self, before: FsyncCount) -> FsyncCount {
        FsyncCount { calls: self.calls - before.calls, nanos: self.nanos - before.nanos }
    }

    pub fn mean_us(self) -> Option<f64> {
        (self.calls > 0).then(|| self.nanos as f64 / self.calls as f64 / 1000.0)
    }
}

/// `StdFs`, with every file's `sync_data` counted and timed.
pub struct CountingFs {
    pub counter: Arc<FsyncCounter>,
}

pub struct CountingFile {
    inner: Box<dyn FsFile>,
    counter: Arc<FsyncCounter>,
}

impl Fs for CountingFs {
    fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        StdFs.create_dir_all(path)
    }

    fn list_dir(&self, path: &Path) -> io::Result<Vec<String>> {
        StdFs.list_dir(path)
    }

    fn open(&self, path: &Path, create: bool) -> io::Result<Box<dyn FsFile>> {
        let inner = StdFs.open(path, create)?;
        Ok(Box::new(CountingFile { inner, counter: Arc::clone(&self.counter) }))
    }

    fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
        StdFs.read(path)
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        StdFs.remove_file(path)
    }

    fn remove_dir_all(&self, path: &Path) -> io::Result<()> {
        StdFs.remove_dir_all(path)
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        StdFs.rename(from, to)
    }

    fn sync_dir(&self, path: &Path) -> io::Result<()> {
        StdFs.sync_dir(path)
    }

    fn exists(&self, path: &Path) -> bool {
        StdFs.exists(path)
    }
}

impl FsFile for CountingFile {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        self.inner.read_at(buf, offset)
    }

    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.inner.write_all_at(buf, offset)
    }

    fn size(&self) -> io::Result<u64> {
        self.inner.size()
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        self.inner.set_len(len)
    }

    fn sync_data(&self) -> io::Result<()> {
        let started = Instant::now();
        let result = self.inner.sync_data();
        self.counter.calls.fetch_add(1, Ordering::Relaxed);
        self.counter.nanos.fetch_add(started.elapsed().as_nanos() as u64, Ordering::Relaxed);
        result
    }
}
