//! A node's last snapshot: the broker's state at a log index, kept in memory to send to a
//! follower that fell behind the purged log, and durably in `<raft dir>/snapshot` to
//! restart from (`proto/cluster.proto`, `StoredSnapshot`).
//!
//! A new snapshot is written to a temporary file, fsynced, and renamed over the old one
//! (then the directory is fsynced), so a crash leaves the old snapshot or the new, whole.
//! openraft purges the log only behind a snapshot this store has saved.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use openraft::type_config::alias::{SnapshotMetaOf, SnapshotOf};
use prost::Message;

use super::network::SnapshotData;
use super::wire::{stored_snapshot_of, stored_snapshot_pb};
use super::TypeConfig;
use crate::env::{blocking, Fs};

type Meta = SnapshotMetaOf<TypeConfig>;

const SNAPSHOT_FILE: &str = "snapshot";
const SNAPSHOT_TEMP_FILE: &str = "snapshot.tmp";
/// Bytes before a stored snapshot's body: its length (u64) and CRC32C (u32).
const HEADER: usize = 12;

/// The last snapshot of a node. Clones share it.
#[derive(Clone)]
pub(super) struct SnapshotStore(Arc<Mutex<Inner>>, Arc<Mutex<()>>);

struct Inner {
    fs: Arc<dyn Fs>,
    dir: PathBuf,
    current: Option<(Meta, Bytes)>,
}

impl SnapshotStore {
    /// Opens the snapshot stored in `dir`, if any (a temporary file a crash left is
    /// removed). A snapshot that does not check out refuses the start, naming the file: the
    /// log may be purged behind it, so nothing else holds what it held.
    pub(super) fn open(fs: Arc<dyn Fs>, dir: &Path) -> io::Result<Self> {
        let temp = dir.join(SNAPSHOT_TEMP_FILE);
        if fs.exists(&temp) {
            fs.remove_file(&temp)?;
        }
        let path = dir.join(SNAPSHOT_FILE);
        let current = if fs.exists(&path) { Some(decode(&path, Bytes::from(fs.read(&path)?))?) } else { None };
        let inner = Inner { fs, dir: dir.to_path_buf(), current };
        Ok(Self(Arc::new(Mutex::new(inner)), Arc::new(Mutex::new(()))))
    }

    /// The last snapshot saved.
    pub(super) fn current(&self) -> Option<SnapshotOf<TypeConfig, SnapshotData>> {
        let inner = self.lock();
        inner
            .current
            .as_ref()
            .map(|(meta, data)| SnapshotOf::<TypeConfig, SnapshotData> { meta: meta.clone(), snapshot: data.clone() })
    }

    /// [`SnapshotStore::save`], unless the node's snapshot is at `meta`'s entry or later
    /// already (a checkpoint whose sync ran while an install from the leader saved a newer
    /// one); whether it saved.
    pub(super) fn save_if_newer(&self, meta: &Meta, data: Bytes) -> io::Result<bool> {
        let _saving = self.1.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let newer = self.lock().current.as_ref().is_none_or(|(saved, _)| saved.last_log_id < meta.last_log_id);
        if !newer {
            return Ok(false);
        }
        self.write(meta, data)?;
        Ok(true)
    }

    /// Makes `data`, the state at `meta`, the node's snapshot, durably.
    pub(super) fn save(&self, meta: &Meta, data: Bytes) -> io::Result<()> {
        let _saving = self.1.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        self.write(meta, data)
    }

    /// One save at a time (the caller holds the second lock).
    fn write(&self, meta: &Meta, data: Bytes) -> io::Result<()> {
        let body = stored_snapshot_pb(meta, data.clone()).encode_to_vec();
        let mut bytes = Vec::with_capacity(HEADER + body.len());
        bytes.extend_from_slice(&(body.len() as u64).to_le_bytes());
        bytes.extend_from_slice(&crc32c::crc32c(&body).to_le_bytes());
        bytes.extend_from_slice(&body);
        drop(body);
        let (fs, dir) = {
            let inner = self.lock();
            (inner.fs.clone(), inner.dir.clone())
        };
        let (temp, path) = (dir.join(SNAPSHOT_TEMP_FILE), dir.join(SNAPSHOT_FILE));
        blocking(|| -> io::Result<()> {
            let file = fs.open(&temp, true)?;
            file.set_len(0)?;
            file.write_all_at(&bytes, 0)?;
            file.sync_data()?;
            fs.rename(&temp, &path)?;
            fs.sync_dir(&dir)
        })?;
        self.lock().current = Some((meta.clone(), data));
        Ok(())
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

fn decode(path: &Path, bytes: Bytes) -> io::Result<(Meta, Bytes)> {
    let damaged = |reason: String| {
        io::Error::new(io::ErrorKind::InvalidData, format!("{} is not a whole snapshot: {reason}", path.display()))
    };
    if bytes.len() < HEADER {
        return Err(damaged(format!("{} bytes, shorter than its header", bytes.len())));
    }
    let len = u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes"));
    let crc = u32::from_le_bytes(bytes[8..HEADER].try_into().expect("4 bytes"));
    let body = bytes.slice(HEADER..);
    if body.len() as u64 != len {
        return Err(damaged(format!("its header says {len} bytes, {} follow", body.len())));
    }
    if crc32c::crc32c(&body) != crc {
        return Err(damaged("its CRC does not match".into()));
    }
    let stored = crate::cluster::pb::StoredSnapshot::decode(body).map_err(|e| damaged(e.to_string()))?;
    stored_snapshot_of(stored).map_err(damaged)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use openraft::type_config::alias::LogIdOf;
    use openraft::{BasicNode, Membership, StoredMembership};

    use super::*;
    use crate::env::StdFs;

    fn meta(index: u64) -> Meta {
        let nodes: BTreeMap<u64, BasicNode> = [(1, BasicNode { addr: "a:1".into() })].into();
        let membership = Membership::new(vec![[1u64].into()], nodes).unwrap();
        let log_id = |index| LogIdOf::<TypeConfig>::new_term_index(2, index);
        Meta { last_log_id: Some(log_id(index)), last_membership: StoredMembership::new(Some(log_id(1)), membership) }
    }

    #[test]
    fn a_saved_snapshot_is_read_back_and_a_damaged_one_refuses_the_start() {
        let dir = tempfile::tempdir().unwrap();
        let fs: Arc<dyn Fs> = Arc::new(StdFs);
        let store = SnapshotStore::open(fs.clone(), dir.path()).unwrap();
        assert!(store.current().is_none());
        store.save(&meta(40), Bytes::from_static(b"state at 40")).unwrap();
        store.save(&meta(90), Bytes::from_static(b"state at 90")).unwrap();
        // A checkpoint that synced while a newer snapshot was installed is not saved over it.
        assert!(!store.save_if_newer(&meta(60), Bytes::from_static(b"state at 60")).unwrap());
        assert!(!store.save_if_newer(&meta(90), Bytes::from_static(b"again at 90")).unwrap());
        let again = SnapshotStore::open(fs.clone(), dir.path()).unwrap().current().unwrap();
        assert_eq!((again.meta, again.snapshot), (meta(90), Bytes::from_static(b"state at 90")));
        // A crash mid-save leaves a temporary file: the old snapshot stands.
        std::fs::write(dir.path().join(SNAPSHOT_TEMP_FILE), b"torn").unwrap();
        assert_eq!(SnapshotStore::open(fs.clone(), dir.path()).unwrap().current().unwrap().meta, meta(90));
        assert!(!dir.path().join(SNAPSHOT_TEMP_FILE).exists());
        let path = dir.path().join(SNAPSHOT_FILE);
        let mut bytes = std::fs::read(&path).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        std::fs::write(&path, &bytes).unwrap();
        let refused = SnapshotStore::open(fs, dir.path()).err().unwrap();
        assert!(refused.to_string().contains("its CRC does not match"), "{refused}");
    }
}
