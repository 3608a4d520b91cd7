//! The simulated disk: turmoil's per-host filesystem behind mini-pubsub's `Fs` trait. A
//! crash loses what was not synced (file data and directory entries alike), and pending
//! writes that span blocks can be torn: each block of the file (aligned, as a disk's
//! sectors and the page cache's pages are) that a pending write touched is kept or lost on
//! its own.

use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;

use mini_pubsub::env::{Fs, FsFile};
use turmoil::fs::shim::std::fs as sim_fs;

/// The filesystem of the host the caller runs on.
#[derive(Debug, Clone, Copy, Default)]
pub struct TurmoilFs;

impl Fs for TurmoilFs {
    fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        sim_fs::create_dir_all(path)
    }

    fn list_dir(&self, path: &Path) -> io::Result<Vec<String>> {
        let mut names: Vec<String> = sim_fs::read_dir(path)?
            .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
            .collect::<Result<_, _>>()?;
        names.sort();
        Ok(names)
    }

    fn open(&self, path: &Path, create: bool) -> io::Result<Box<dyn FsFile>> {
        let file = sim_fs::OpenOptions::new().read(true).write(true).create(create).open(path)?;
        Ok(Box::new(TurmoilFile(file)))
    }

    fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
        sim_fs::read(path)
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        sim_fs::remove_file(path)
    }

    fn remove_dir_all(&self, path: &Path) -> io::Result<()> {
        sim_fs::remove_dir_all(path)
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        sim_fs::rename(from, to)
    }

    fn sync_dir(&self, path: &Path) -> io::Result<()> {
        sim_fs::sync_dir(path)
    }

    fn exists(&self, path: &Path) -> bool {
        sim_fs::exists(path)
    }
}

/// The disk's block: what a crash keeps or loses whole. Turmoil tears a pending write
/// after a whole number of blocks counted from where the write began; each write is given
/// to it in pieces that do not cross a block of the file, so the blocks a crash keeps are
/// the file's own, aligned ones, as on a real disk, in any combination.
pub const DISK_BLOCK_BYTES: u64 = 512;

struct TurmoilFile(sim_fs::File);

impl FsFile for TurmoilFile {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        self.0.read_at(buf, offset)
    }

    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        let mut done = 0;
        while done < buf.len() {
            let at = offset + done as u64;
            let piece = ((DISK_BLOCK_BYTES - at % DISK_BLOCK_BYTES) as usize).min(buf.len() - done);
            self.0.write_all_at(&buf[done..done + piece], at)?;
            done += piece;
        }
        Ok(())
    }

    fn size(&self) -> io::Result<u64> {
        Ok(self.0.metadata()?.len())
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        self.0.set_len(len)
    }

    fn sync_data(&self) -> io::Result<()> {
        self.0.sync_data()
    }
}

/// What a `disk HOST corrupt` step damages.
#[derive(Debug, Clone, Copy)]
pub enum CorruptAsk {
    /// A byte at this fraction of the newest segment's length.
    Anywhere(f64),
    /// A byte of one record's frame in the newest segment.
    Record(crate::scenario::CorruptTarget),
}

/// Flips one byte of the newest segment file under `dir` (the one whose path sorts last)
/// as `ask` says, and syncs it: damage that only a CRC can see. Returns the file and
/// position, or `None` when there is no such segment or record.
pub fn corrupt_newest_segment(fs: &dyn Fs, dir: &Path, ask: CorruptAsk) -> io::Result<Option<(String, u64)>> {
    let mut newest: Option<(std::path::PathBuf, u64)> = None;
    let mut stack = vec![dir.to_path_buf()];
    let mut visited = 0;
    while let Some(at) = stack.pop() {
        visited += 1;
        if visited > 10_000 {
            break;
        }
        // An entry that is not a directory (the metadata file) does not list.
        let Ok(names) = fs.list_dir(&at) else { continue };
        for name in names {
            let path = at.join(&name);
            if name.ends_with(".log") {
                let len = fs.open(&path, false)?.size()?;
                if len > 0 && newest.as_ref().is_none_or(|(p, _)| path > *p) {
                    newest = Some((path, len));
                }
            } else if !name.contains('.') && !name.starts_with("meta") {
                stack.push(path);
            }
        }
    }
    let Some((path, len)) = newest else { return Ok(None) };
    let file = fs.open(&path, false)?;
    let position = match ask {
        CorruptAsk::Anywhere(fraction) => ((len as f64 * fraction) as u64).min(len - 1),
        CorruptAsk::Record(target) => {
            let Some((start, frame_len)) = frame_of(file.as_ref(), &path, len, target.offset)? else { return Ok(None) };
            // The length field's low byte, or a byte in the middle of the body.
            if target.length {
                start
            } else {
                start + 8 + (frame_len - 8) / 2
            }
        }
    };
    let mut byte = [0u8; 1];
    file.read_at(&mut byte, position)?;
    file.write_all_at(&[byte[0] ^ 0x5a], position)?;
    file.sync_data()?;
    Ok(Some((path.display().to_string(), position)))
}

/// Where the frame of the record at `offset` starts in a segment, and its length, found
/// by walking the frames' length fields from the base offset its file name gives.
fn frame_of(file: &dyn mini_pubsub::env::FsFile, path: &Path, len: u64, offset: u64) -> io::Result<Option<(u64, u64)>> {
    let base = path.file_stem().and_then(|s| s.to_str()).and_then(|s| s.parse::<u64>().ok());
    let Some(mut next) = base.filter(|base| *base <= offset) else { return Ok(None) };
    let mut position = 0u64;
    while position + 8 <= len {
        let mut header = [0u8; 4];
        mini_pubsub::env::read_exact_at(file, &mut header, position)?;
        let frame_len = 8 + u64::from(u32::from_le_bytes(header));
        if next == offset {
            return Ok((position + frame_len <= len).then_some((position, frame_len)));
        }
        position += frame_len;
        next += 1;
    }
    Ok(None)
}

/// The file log of a simulated broker, reporting into the history what recovery cut, so
/// a scenario's trace shows a torn tail or a CRC mismatch being found.
pub struct ObservedStorage {
    pub inner: mini_pubsub::storage::FileStorage,
    pub host: String,
    pub history: crate::history::History,
    /// Notes already reported.
    pub reported: usize,
}

impl mini_pubsub::storage::Storage for ObservedStorage {
    fn open(
        &mut self,
        topic_uid: u64,
        partition: u32,
    ) -> Result<Box<dyn mini_pubsub::storage::PartitionLog>, mini_pubsub::storage::StorageError> {
        let log = self.inner.open(topic_uid, partition)?;
        for note in &self.inner.recovery_notes()[self.reported..] {
            let text = format!(
                "recovery cut {} bytes at byte {} of {}: {}",
                note.cut_bytes,
                note.position,
                note.file.display(),
                note.reason
            );
            self.history.record(&self.host, crate::history::Event::Step { text });
        }
        self.reported = self.inner.recovery_notes().len();
        Ok(log)
    }

    fn open_at(
        &mut self,
        topic_uid: u64,
        partition: u32,
        start: u64,
    ) -> Result<Box<dyn mini_pubsub::storage::PartitionLog>, mini_pubsub::storage::StorageError> {
        self.inner.open_at(topic_uid, partition, start)
    }

    fn remove(
        &mut self,
        topic_uid: u64,
        logs: Vec<Box<dyn mini_pubsub::storage::PartitionLog>>,
    ) -> Result<(), mini_pubsub::storage::StorageError> {
        self.inner.remove(topic_uid, logs)
    }

    fn retain_topics(
        &mut self,
        topic_uids: &[u64],
        next_topic_uid: u64,
    ) -> Result<Vec<u64>, mini_pubsub::storage::StorageError> {
        self.inner.retain_topics(topic_uids, next_topic_uid)
    }

    fn take_retired(&mut self) -> mini_pubsub::storage::LaterSync {
        self.inner.take_retired()
    }

    fn restore_retired(&mut self, topic_uids: &[u64]) -> Result<(), mini_pubsub::storage::StorageError> {
        self.inner.restore_retired(topic_uids)
    }

    fn fsync_policy(&self) -> mini_pubsub::storage::FsyncPolicy {
        self.inner.fsync_policy()
    }

    fn load_meta(&mut self) -> Result<Option<Vec<u8>>, mini_pubsub::storage::StorageError> {
        self.inner.load_meta()
    }

    fn save_meta(&mut self, meta: &[u8]) -> Result<(), mini_pubsub::storage::StorageError> {
        self.inner.save_meta(meta)?;
        self.history.record(&self.host, crate::history::Event::Checkpoint);
        Ok(())
    }

    fn load_journal(&mut self) -> Result<Vec<u8>, mini_pubsub::storage::StorageError> {
        self.inner.load_journal()
    }

    fn append_journal(&mut self, bytes: &[u8]) -> Result<(), mini_pubsub::storage::StorageError> {
        self.inner.append_journal(bytes)
    }

    fn sync_journal(&mut self) -> Result<(), mini_pubsub::storage::StorageError> {
        self.inner.sync_journal()
    }

    fn reset_journal(&mut self) -> Result<(), mini_pubsub::storage::StorageError> {
        self.inner.reset_journal()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use super::*;

    /// The writes [`torn`] makes: synced, then two unsynced ones.
    const WRITES: [(u64, usize, u8); 3] = [(0, 57, 7), (57, 2000, 9), (2057, 700, 5)];

    /// What a crash left of a file whose first write was synced and whose next two were not.
    fn torn(seed: u64) -> Vec<u8> {
        let mut builder = turmoil::Builder::new();
        builder.rng_seed(seed).simulation_duration(Duration::from_secs(10));
        builder.fs().block_size(DISK_BLOCK_BYTES);
        let mut sim = builder.build();
        let (restarted, kept) = (Arc::new(AtomicBool::new(false)), Arc::new(Mutex::new(Vec::new())));
        let (r, k) = (restarted.clone(), kept.clone());
        sim.host("disk", move || {
            let (restarted, kept) = (r.clone(), k.clone());
            async move {
                let path = Path::new("/f");
                if restarted.load(Ordering::SeqCst) {
                    *kept.lock().unwrap() = TurmoilFs.read(path)?;
                } else {
                    TurmoilFs.create_dir_all(Path::new("/"))?;
                    let file = TurmoilFs.open(path, true)?;
                    for (i, (at, len, byte)) in WRITES.into_iter().enumerate() {
                        file.write_all_at(&vec![byte; len], at)?;
                        if i == 0 {
                            file.sync_data()?;
                            TurmoilFs.sync_dir(Path::new("/"))?;
                        }
                    }
                }
                std::future::pending::<()>().await;
                Ok(())
            }
        });
        sim.step().unwrap();
        sim.crash("disk");
        restarted.store(true, Ordering::SeqCst);
        sim.bounce("disk");
        sim.step().unwrap();
        let kept = kept.lock().unwrap().clone();
        kept
    }

    #[test]
    fn a_crash_keeps_or_loses_whole_aligned_blocks_of_an_unsynced_write() {
        let block = DISK_BLOCK_BYTES as usize;
        let mut partly = 0;
        for seed in 0..40 {
            let kept = torn(seed);
            assert!(kept.len() >= 57 && kept[..57].iter().all(|b| *b == 7), "seed {seed}: the synced bytes stay");
            // Within each block of the file, each write's bytes are all there or all lost
            // (zeros, or past the end), never cut off within the block.
            for (at, len, byte) in WRITES.into_iter().skip(1) {
                let (at, end) = (at as usize, at as usize + len);
                for b in at / block..end.div_ceil(block) {
                    let (from, to) = ((b * block).max(at), ((b + 1) * block).min(end).min(kept.len()));
                    let Some(bytes) = kept.get(from..to) else { continue };
                    assert!(
                        bytes.iter().all(|x| *x == byte) || bytes.iter().all(|x| *x == 0),
                        "seed {seed}: block {b} ({from}..{to}) holds part of the write at {at}: {bytes:?}"
                    );
                }
            }
            let written = kept.get(57..2057).map_or(0, |w| w.iter().filter(|x| **x == 9).count());
            partly += usize::from(written > 0 && written < 2000 && kept.len() > 2057);
        }
        assert!(partly > 0, "no seed kept part of a write with a later one after it: nothing was checked");
    }
}
