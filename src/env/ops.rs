//! A filesystem wrapper that writes down every write, fsync and directory sync it passes
//! on, in order (tests only): what durability order a change promises can be checked.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use super::{Fs, FsFile};

/// One operation, by the path it touched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// Bytes written to a file.
    Write(PathBuf),
    /// A file's data synced.
    SyncData(PathBuf),
    /// A directory's entries synced.
    SyncDir(PathBuf),
}

/// Wraps a filesystem and records its operations; clones share the record.
#[derive(Clone)]
pub struct OpLog {
    inner: Arc<dyn Fs>,
    ops: Arc<Mutex<Vec<Op>>>,
}

impl OpLog {
    /// `inner`, recording from now on.
    pub fn new(inner: Arc<dyn Fs>) -> Self {
        Self { inner, ops: Arc::default() }
    }

    /// Takes the operations recorded so far.
    pub fn take(&self) -> Vec<Op> {
        std::mem::take(&mut self.ops.lock().unwrap())
    }

    fn push(&self, op: Op) {
        self.ops.lock().unwrap().push(op);
    }
}

struct OpFile {
    inner: Box<dyn FsFile>,
    path: PathBuf,
    log: OpLog,
}

impl FsFile for OpFile {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        self.inner.read_at(buf, offset)
    }
    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.log.push(Op::Write(self.path.clone()));
        self.inner.write_all_at(buf, offset)
    }
    fn size(&self) -> io::Result<u64> {
        self.inner.size()
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        self.inner.set_len(len)
    }
    fn sync_data(&self) -> io::Result<()> {
        self.log.push(Op::SyncData(self.path.clone()));
        self.inner.sync_data()
    }
}

impl Fs for OpLog {
    fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        self.inner.create_dir_all(path)
    }
    fn list_dir(&self, path: &Path) -> io::Result<Vec<String>> {
        self.inner.list_dir(path)
    }
    fn open(&self, path: &Path, create: bool) -> io::Result<Box<dyn FsFile>> {
        let inner = self.inner.open(path, create)?;
        Ok(Box::new(OpFile { inner, path: path.to_path_buf(), log: self.clone() }))
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
        self.push(Op::SyncDir(path.to_path_buf()));
        self.inner.sync_dir(path)
    }
    fn exists(&self, path: &Path) -> bool {
        self.inner.exists(path)
    }
}
