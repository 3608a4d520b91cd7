//! The Raft log against openraft's own storage test suite, and across reopens: what it
//! held comes back, a torn tail is cut, damage before intact records is refused, and a
//! compaction keeps the state.

use std::io;
use std::sync::{Arc, Mutex};

use futures_util::TryStreamExt;
use openraft::storage::{EntryResponder, IOFlushed, RaftLogStorage, RaftStateMachine};
use openraft::testing::log::{StoreBuilder, Suite};
use openraft::type_config::alias::{EntryOf, LogIdOf, SnapshotMetaOf, SnapshotOf, StoredMembershipOf, VoteOf};
use openraft::type_config::TypeConfigExt;
use openraft::{EntryPayload, OptionalSend, RaftLogReader, RaftSnapshotBuilder, StoredMembership};

use super::{Applied, Proposal, RaftLog, TypeConfig};
use crate::env::StdFs;

type Entry = EntryOf<TypeConfig>;
type LogId = LogIdOf<TypeConfig>;

/// The smallest state machine the suite accepts: it remembers what it applied, and its
/// snapshot is that list.
#[derive(Clone, Default)]
struct ListSm(Arc<Mutex<ListState>>);

#[derive(Clone, Default)]
struct ListState {
    applied: Option<LogId>,
    membership: StoredMembershipOf<TypeConfig>,
    proposals: Vec<Proposal>,
    snapshot: Option<(SnapshotMetaOf<TypeConfig>, Vec<Proposal>)>,
}

impl RaftSnapshotBuilder<TypeConfig> for ListSm {
    type SnapshotData = Vec<Proposal>;

    async fn build_snapshot(&mut self) -> Result<SnapshotOf<TypeConfig, Vec<Proposal>>, io::Error> {
        let mut state = self.0.lock().unwrap();
        let meta =
            SnapshotMetaOf::<TypeConfig> { last_log_id: state.applied, last_membership: state.membership.clone() };
        state.snapshot = Some((meta.clone(), state.proposals.clone()));
        Ok(SnapshotOf::<TypeConfig, Vec<Proposal>> { meta, snapshot: state.proposals.clone() })
    }
}

impl RaftStateMachine<TypeConfig> for ListSm {
    type SnapshotData = Vec<Proposal>;
    type SnapshotBuilder = Self;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembershipOf<TypeConfig>), io::Error> {
        let state = self.0.lock().unwrap();
        Ok((state.applied, state.membership.clone()))
    }

    async fn apply<S>(&mut self, mut entries: S) -> Result<(), io::Error>
    where
        S: futures_util::Stream<Item = Result<EntryResponder<TypeConfig>, io::Error>> + Unpin + OptionalSend,
    {
        while let Some((entry, responder)) = entries.try_next().await? {
            let mut state = self.0.lock().unwrap();
            state.applied = Some(entry.log_id);
            match entry.payload {
                EntryPayload::Blank => {}
                EntryPayload::Normal(p) => state.proposals.push(p),
                EntryPayload::Membership(m) => state.membership = StoredMembership::new(Some(entry.log_id), m),
            }
            if let Some(responder) = responder {
                responder.send(Applied { index: entry.log_id.index });
            }
        }
        Ok(())
    }

    async fn get_snapshot_builder(&mut self) -> Self {
        self.clone()
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMetaOf<TypeConfig>,
        data: Vec<Proposal>,
    ) -> Result<(), io::Error> {
        let mut state = self.0.lock().unwrap();
        state.applied = meta.last_log_id;
        state.membership = meta.last_membership.clone();
        state.proposals = data.clone();
        state.snapshot = Some((meta.clone(), data));
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<SnapshotOf<TypeConfig, Vec<Proposal>>>, io::Error> {
        let state = self.0.lock().unwrap();
        Ok(state.snapshot.clone().map(|(meta, snapshot)| SnapshotOf::<TypeConfig, Vec<Proposal>> { meta, snapshot }))
    }
}

struct Builder;

impl StoreBuilder<TypeConfig, RaftLog, ListSm, tempfile::TempDir> for Builder {
    async fn build(&self) -> Result<(tempfile::TempDir, RaftLog, ListSm), openraft::StorageError<TypeConfig>> {
        let dir = tempfile::tempdir().unwrap();
        let log = RaftLog::open(Arc::new(StdFs), &dir.path().join("raft")).unwrap();
        Ok((dir, log, ListSm::default()))
    }
}

/// Runs `f` on a current-thread runtime inside openraft's seeded scope.
fn block_on<F: std::future::Future>(f: F) -> F::Output {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(openraft::rt::deterministic_rng::DeterministicRng::<openraft_rt_tokio::TokioRuntime>::scope(7, f))
}

#[test]
fn the_log_passes_openraft_s_storage_suite() {
    block_on(async { Suite::test_all(Builder).await.unwrap() });
}

fn entry(term: u64, index: u64, text: &str) -> Entry {
    Entry {
        log_id: LogId::new_term_index(term, index),
        payload: EntryPayload::Normal(Proposal(text.as_bytes().to_vec().into())),
    }
}

/// Appends and waits for the flush.
async fn append(log: &mut RaftLog, entries: Vec<Entry>) {
    let (tx, flushed) = TypeConfig::oneshot();
    log.append(entries, IOFlushed::signal(tx)).await.unwrap();
    flushed.await.unwrap().unwrap();
}

async fn contents(log: &mut RaftLog) -> (Option<VoteOf<TypeConfig>>, Vec<Entry>, Option<LogId>, Option<LogId>) {
    let state = log.get_log_state().await.unwrap();
    let entries = log.try_get_log_entries(..).await.unwrap();
    (log.read_vote().await.unwrap(), entries, state.last_purged_log_id, log.read_committed().await.unwrap())
}

fn open(dir: &std::path::Path) -> io::Result<RaftLog> {
    RaftLog::open(Arc::new(StdFs), &dir.join("raft"))
}

#[test]
fn what_was_written_comes_back_after_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    block_on(async {
        let mut log = open(dir.path()).unwrap();
        log.save_vote(&VoteOf::<TypeConfig>::new(3, 2)).await.unwrap();
        append(&mut log, (1..=6).map(|i| entry(2, i, &format!("e{i}"))).collect()).await;
        log.truncate_after(Some(LogId::new_term_index(2, 4))).await.unwrap();
        append(&mut log, vec![entry(3, 5, "new 5")]).await;
        log.purge(LogId::new_term_index(2, 2)).await.unwrap();
        log.save_committed(Some(LogId::new_term_index(3, 5))).await.unwrap();
        log.save_vote(&VoteOf::<TypeConfig>::new_committed(3, 2)).await.unwrap();
        let before = contents(&mut log).await;
        assert_eq!(before.1.iter().map(|e| e.log_id.index).collect::<Vec<_>>(), vec![3, 4, 5]);
        assert_eq!(before.1[2], entry(3, 5, "new 5"));
        drop(log);
        let mut again = open(dir.path()).unwrap();
        assert_eq!(contents(&mut again).await, before);
    });
}

#[test]
fn a_torn_last_record_is_cut_and_the_records_before_it_kept() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("raft/log");
    block_on(async {
        let mut log = open(dir.path()).unwrap();
        append(&mut log, vec![entry(1, 1, "kept"), entry(1, 2, "torn")]).await;
    });
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() - 3]).unwrap();
    block_on(async {
        let mut log = open(dir.path()).unwrap();
        assert_eq!(contents(&mut log).await.1, vec![entry(1, 1, "kept")]);
        // The next record goes where the torn one was cut.
        append(&mut log, vec![entry(1, 2, "again")]).await;
        drop(log);
        let mut log = open(dir.path()).unwrap();
        assert_eq!(contents(&mut log).await.1, vec![entry(1, 1, "kept"), entry(1, 2, "again")]);
    });
}

#[test]
fn damage_before_intact_records_refuses_to_open() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("raft/log");
    block_on(async {
        let mut log = open(dir.path()).unwrap();
        append(&mut log, vec![entry(1, 1, "first"), entry(1, 2, "second")]).await;
    });
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[10] ^= 0x20;
    std::fs::write(&path, &bytes).unwrap();
    let refused = open(dir.path()).err().expect("damage with intact records after it is refused");
    assert_eq!(refused.kind(), io::ErrorKind::InvalidData);
    assert!(
        refused.to_string().contains("at byte 0") && refused.to_string().contains("intact record follows"),
        "{refused}"
    );
    assert_eq!(std::fs::read(&path).unwrap(), bytes, "nothing is cut");
}

#[test]
fn purged_records_are_compacted_away_and_the_state_kept() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("raft/log");
    block_on(async {
        let mut log = open(dir.path()).unwrap();
        let value = "x".repeat(1000);
        for batch in 0..30u64 {
            append(&mut log, (1..=100).map(|i| entry(1, batch * 100 + i, &value)).collect()).await;
        }
        let full = std::fs::metadata(&path).unwrap().len();
        log.purge(LogId::new_term_index(1, 2_900)).await.unwrap();
        let compacted = std::fs::metadata(&path).unwrap().len();
        assert!(compacted < full / 10, "{compacted} bytes after the purge, {full} before");
        let before = contents(&mut log).await;
        assert_eq!(before.1.len(), 100);
        append(&mut log, vec![entry(2, 3_001, "after")]).await;
        drop(log);
        let mut again = open(dir.path()).unwrap();
        let after = contents(&mut again).await;
        assert_eq!((after.1.len(), after.2), (101, before.2));
    });
}
