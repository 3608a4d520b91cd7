//! The simulated disk: turmoil's per-host filesystem behind mini-pubsub's `Fs` trait. A
//! crash loses what was not synced (file data and directory entries alike), and pending
//! writes that span blocks can be torn.

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

struct TurmoilFile(sim_fs::File);

impl FsFile for TurmoilFile {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        self.0.read_at(buf, offset)
    }

    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.0.write_all_at(buf, offset)
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
