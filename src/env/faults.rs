//! A filesystem that fails on command: what a full disk, a dying disk or a torn write look
//! like to the file log, injected from a scenario (`disk <host> eio|full|torn|ok`) or a test.

use std::io;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use super::fs::{Fs, FsFile};

/// A fault the disk shows until it is cleared (a torn write clears itself).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiskFault {
    /// Every write, truncate, sync and create fails with EIO; reads still work.
    Eio,
    /// Writes that would grow a file and file creation fail with ENOSPC.
    Full,
    /// The next write stores only its first half, then fails with EIO.
    TornWrite,
}

/// Wraps a filesystem and injects the current [`DiskFault`]. Clones share the fault.
#[derive(Clone)]
pub struct FaultyFs {
    inner: Arc<dyn Fs>,
    fault: Arc<Mutex<Option<DiskFault>>>,
    refused: Arc<AtomicU64>,
    /// See [`FaultyFs::set_sync_latency`].
    latency_us: Arc<AtomicU64>,
    /// Fsyncs that were told to wait.
    delayed: Arc<AtomicU64>,
}

impl FaultyFs {
    /// `inner` with no fault set and nothing refused yet.
    pub fn new(inner: Arc<dyn Fs>) -> Self {
        Self {
            inner,
            fault: Arc::new(Mutex::new(None)),
            refused: Arc::default(),
            latency_us: Arc::default(),
            delayed: Arc::default(),
        }
    }

    /// Makes every fsync take `latency` more (see [`Fs::sync_latency`]); zero clears it.
    pub fn set_sync_latency(&self, latency: std::time::Duration) {
        self.latency_us.store(latency.as_micros() as u64, Ordering::Relaxed);
    }

    /// How many fsyncs were told to wait: whether a slow disk did anything.
    pub fn delayed(&self) -> u64 {
        self.delayed.load(Ordering::Relaxed)
    }

    /// How many operations an injected fault has refused so far: whether a fault did
    /// anything.
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    fn refuse(&self, error: io::Error) -> io::Error {
        self.refused.fetch_add(1, Ordering::Relaxed);
        error
    }

    /// Sets (or with `None`, clears) the fault.
    pub fn set_fault(&self, fault: Option<DiskFault>) {
        *self.fault.lock().unwrap_or_else(PoisonError::into_inner) = fault;
    }

    /// The fault in place, if any (a torn write shows until the write it tears).
    pub fn fault(&self) -> Option<DiskFault> {
        *self.fault.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn check_mutation(&self) -> io::Result<()> {
        match self.fault() {
            Some(DiskFault::Eio) => Err(self.refuse(eio())),
            _ => Ok(()),
        }
    }
}

fn eio() -> io::Error {
    io::Error::other("injected I/O error (EIO)")
}

fn enospc() -> io::Error {
    io::Error::new(io::ErrorKind::StorageFull, "injected full disk (ENOSPC)")
}

impl Fs for FaultyFs {
    fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        self.check_mutation()?;
        self.inner.create_dir_all(path)
    }

    fn list_dir(&self, path: &Path) -> io::Result<Vec<String>> {
        self.inner.list_dir(path)
    }

    fn open(&self, path: &Path, create: bool) -> io::Result<Box<dyn FsFile>> {
        if create && !self.inner.exists(path) {
            match self.fault() {
                Some(DiskFault::Eio) => return Err(self.refuse(eio())),
                Some(DiskFault::Full) => return Err(self.refuse(enospc())),
                _ => {}
            }
        }
        let file = self.inner.open(path, create)?;
        Ok(Box::new(FaultyFile { inner: file, fault: Arc::clone(&self.fault), refused: Arc::clone(&self.refused) }))
    }

    fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
        self.inner.read(path)
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        self.check_mutation()?;
        self.inner.remove_file(path)
    }

    fn remove_dir_all(&self, path: &Path) -> io::Result<()> {
        self.check_mutation()?;
        self.inner.remove_dir_all(path)
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        self.check_mutation()?;
        self.inner.rename(from, to)
    }

    fn sync_dir(&self, path: &Path) -> io::Result<()> {
        self.check_mutation()?;
        self.inner.sync_dir(path)
    }

    fn exists(&self, path: &Path) -> bool {
        self.inner.exists(path)
    }

    fn sync_latency(&self) -> std::time::Duration {
        let us = self.latency_us.load(Ordering::Relaxed);
        if us > 0 {
            self.delayed.fetch_add(1, Ordering::Relaxed);
        }
        std::time::Duration::from_micros(us) + self.inner.sync_latency()
    }
}

struct FaultyFile {
    inner: Box<dyn FsFile>,
    fault: Arc<Mutex<Option<DiskFault>>>,
    refused: Arc<AtomicU64>,
}

impl FaultyFile {
    fn fault(&self) -> Option<DiskFault> {
        *self.fault.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn refuse(&self, error: io::Error) -> io::Error {
        self.refused.fetch_add(1, Ordering::Relaxed);
        error
    }
}

impl FsFile for FaultyFile {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        self.inner.read_at(buf, offset)
    }

    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        // A torn write is taken under the same lock that reads it, so it tears one write.
        let fault = {
            let mut fault = self.fault.lock().unwrap_or_else(PoisonError::into_inner);
            match *fault {
                Some(DiskFault::TornWrite) => fault.take(),
                other => other,
            }
        };
        match fault {
            Some(DiskFault::Eio) => Err(self.refuse(eio())),
            Some(DiskFault::Full) if offset + buf.len() as u64 > self.inner.size()? => Err(self.refuse(enospc())),
            Some(DiskFault::TornWrite) => {
                self.inner.write_all_at(&buf[..buf.len() / 2], offset)?;
                Err(self.refuse(eio()))
            }
            _ => self.inner.write_all_at(buf, offset),
        }
    }

    fn size(&self) -> io::Result<u64> {
        self.inner.size()
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        match self.fault() {
            Some(DiskFault::Eio) => Err(self.refuse(eio())),
            Some(DiskFault::Full) if len > self.inner.size()? => Err(self.refuse(enospc())),
            _ => self.inner.set_len(len),
        }
    }

    fn sync_data(&self) -> io::Result<()> {
        match self.fault() {
            Some(DiskFault::Eio) => Err(self.refuse(eio())),
            _ => self.inner.sync_data(),
        }
    }
}
