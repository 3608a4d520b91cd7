//! A test filesystem: `StdFs` with a memory of what each sync made durable.

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::env::{Fs, FsFile, StdFs};

/// `StdFs` that remembers how much of each file a sync made durable, so a test can crash
/// (cut every file back to that), counts the bytes read, and can fail directory syncs.
#[derive(Clone, Default)]
pub struct TrackingFs {
    durable: Arc<Mutex<BTreeMap<PathBuf, u64>>>,
    bytes_read: Arc<AtomicU64>,
    sync_dir_fails: Arc<AtomicBool>,
    remove_fails: Arc<AtomicBool>,
}

struct TrackedFile {
    inner: Box<dyn FsFile>,
    path: PathBuf,
    fs: TrackingFs,
}

impl TrackingFs {
    /// What a power cut leaves: each file as of its last sync.
    pub fn crash(&self) {
        for (path, durable) in self.durable.lock().unwrap().iter() {
            if path.exists() && file_len(path) > *durable {
                std::fs::OpenOptions::new().write(true).open(path).unwrap().set_len(*durable).unwrap();
            }
        }
    }

    pub fn bytes_read(&self) -> u64 {
        self.bytes_read.load(Ordering::Relaxed)
    }

    pub fn fail_sync_dir(&self, fail: bool) {
        self.sync_dir_fails.store(fail, Ordering::Relaxed);
    }

    pub fn fail_remove(&self, fail: bool) {
        self.remove_fails.store(fail, Ordering::Relaxed);
    }
}

impl Fs for TrackingFs {
    fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        StdFs.create_dir_all(path)
    }
    fn list_dir(&self, path: &Path) -> io::Result<Vec<String>> {
        StdFs.list_dir(path)
    }
    fn open(&self, path: &Path, create: bool) -> io::Result<Box<dyn FsFile>> {
        let len = if path.exists() { file_len(path) } else { 0 };
        self.durable.lock().unwrap().entry(path.to_path_buf()).or_insert(len);
        let inner = StdFs.open(path, create)?;
        Ok(Box::new(TrackedFile { inner, path: path.to_path_buf(), fs: self.clone() }))
    }
    fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
        StdFs.read(path)
    }
    fn remove_file(&self, path: &Path) -> io::Result<()> {
        if self.remove_fails.load(Ordering::Relaxed) {
            return Err(io::Error::other("injected unlink failure"));
        }
        self.durable.lock().unwrap().remove(path);
        StdFs.remove_file(path)
    }
    fn remove_dir_all(&self, path: &Path) -> io::Result<()> {
        StdFs.remove_dir_all(path)
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        StdFs.rename(from, to)
    }
    fn sync_dir(&self, path: &Path) -> io::Result<()> {
        if self.sync_dir_fails.load(Ordering::Relaxed) {
            return Err(io::Error::other("injected directory sync failure"));
        }
        StdFs.sync_dir(path)
    }
    fn exists(&self, path: &Path) -> bool {
        StdFs.exists(path)
    }
}

impl FsFile for TrackedFile {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        let n = self.inner.read_at(buf, offset)?;
        self.fs.bytes_read.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.inner.write_all_at(buf, offset)
    }
    fn size(&self) -> io::Result<u64> {
        self.inner.size()
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        self.inner.set_len(len)?;
        let mut durable = self.fs.durable.lock().unwrap();
        durable.entry(self.path.clone()).and_modify(|d| *d = (*d).min(len));
        Ok(())
    }
    fn sync_data(&self) -> io::Result<()> {
        self.inner.sync_data()?;
        let len = self.inner.size()?;
        self.fs.durable.lock().unwrap().insert(self.path.clone(), len);
        Ok(())
    }
}

fn file_len(path: &Path) -> u64 {
    std::fs::metadata(path).map_or(0, |m| m.len())
}
