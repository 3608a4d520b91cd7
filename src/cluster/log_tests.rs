//! The Raft log against openraft's own storage test suite, and across reopens: what it
//! held comes back, a torn tail is cut, damage before intact records is refused, and a
//! compaction keeps the state.

use std::io;
use std::sync::Arc;

use openraft::storage::{IOFlushed, RaftLogStorage};
use openraft::testing::log::{StoreBuilder, Suite};
use openraft::type_config::alias::{EntryOf, LogIdOf, VoteOf};
use openraft::type_config::TypeConfigExt;
use openraft::{EntryPayload, RaftLogReader};

use super::log::identity;
use super::test_sm::ListSm;
use super::{Proposal, RaftLog, TypeConfig};
use crate::env::StdFs;

type Entry = EntryOf<TypeConfig>;
type LogId = LogIdOf<TypeConfig>;

struct Builder;

impl StoreBuilder<TypeConfig, RaftLog, ListSm, tempfile::TempDir> for Builder {
    async fn build(&self) -> Result<(tempfile::TempDir, RaftLog, ListSm), openraft::StorageError<TypeConfig>> {
        let dir = tempfile::tempdir().unwrap();
        let log = RaftLog::open(Arc::new(StdFs), &dir.path().join("raft"), &identity(1, [1])).unwrap();
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

/// Appends `batches` batches of 100 entries of 1000 bytes, from index 1, in term 1.
async fn fill(log: &mut RaftLog, batches: u64) {
    let value = "x".repeat(1000);
    for batch in 0..batches {
        append(log, (1..=100).map(|i| entry(1, batch * 100 + i, &value)).collect()).await;
    }
}

async fn contents(log: &mut RaftLog) -> (Option<VoteOf<TypeConfig>>, Vec<Entry>, Option<LogId>, Option<LogId>) {
    let state = log.get_log_state().await.unwrap();
    let entries = log.try_get_log_entries(..).await.unwrap();
    (log.read_vote().await.unwrap(), entries, state.last_purged_log_id, log.read_committed().await.unwrap())
}

fn open(dir: &std::path::Path) -> io::Result<RaftLog> {
    RaftLog::open(Arc::new(StdFs), &dir.join("raft"), &identity(1, [1, 2, 3]))
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

/// What a power failure leaves when a write never reached the disk but a later one did:
/// zeros where the first was, then an intact record. No fsync ended after the zeroed write
/// (it would have made it durable), so the records from it on were never acknowledged:
/// they are cut, as a torn tail is.
#[test]
fn a_zeroed_write_before_intact_records_is_cut_with_them() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("raft/log");
    let (whole, lost_end) = block_on(async {
        let mut log = open(dir.path()).unwrap();
        append(&mut log, vec![entry(1, 1, "synced")]).await;
        let synced = std::fs::metadata(&path).unwrap().len() as usize;
        append(&mut log, vec![entry(1, 2, "lost")]).await;
        let lost_end = std::fs::metadata(&path).unwrap().len() as usize;
        append(&mut log, vec![entry(1, 3, "written after")]).await;
        (synced, lost_end)
    });
    let mut bytes = std::fs::read(&path).unwrap();
    assert!(lost_end > whole && bytes.len() > lost_end);
    // The first unsynced record's bytes never reached the disk; the one after it did.
    bytes[whole..lost_end].fill(0);
    std::fs::write(&path, &bytes).unwrap();
    block_on(async {
        let mut log = open(dir.path()).unwrap();
        assert_eq!(contents(&mut log).await.1, vec![entry(1, 1, "synced")]);
    });
    assert_eq!(std::fs::metadata(&path).unwrap().len() as usize, whole, "cut where the zeros begin");
}

/// A write that began inside a disk block and lost that block's part, while its later
/// block (with the end of the record and the next record) reached the disk: zeros from the
/// record's start to the block's end. Cut there too (found by the simulator: a node whose
/// log held this refused to start, seed 11 of `cluster_seek_across_failover`).
#[test]
fn a_write_that_lost_its_first_block_but_not_a_later_one_is_cut() {
    let block = crate::record::LOST_WRITE_BLOCK_BYTES as usize;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("raft/log");
    let (whole, torn_end) = block_on(async {
        let mut log = open(dir.path()).unwrap();
        // Records until one would cross a block boundary.
        let mut index = 1;
        loop {
            let before = std::fs::metadata(&path).unwrap().len() as usize;
            append(&mut log, vec![entry(1, index, "a record of some bytes")]).await;
            index += 1;
            let after = std::fs::metadata(&path).unwrap().len() as usize;
            if after / block > before / block && !after.is_multiple_of(block) && block - before % block >= 4 {
                append(&mut log, vec![entry(1, index, "written after")]).await;
                return (before, after);
            }
        }
    });
    let mut bytes = std::fs::read(&path).unwrap();
    let boundary = torn_end / block * block;
    assert!(whole < boundary && boundary < torn_end && bytes.len() > torn_end);
    // The torn record's part in its first block never reached the disk.
    bytes[whole..boundary].fill(0);
    std::fs::write(&path, &bytes).unwrap();
    let kept = block_on(async {
        let mut log = open(dir.path()).unwrap();
        contents(&mut log).await.1.len()
    });
    assert!(kept > 0);
    assert_eq!(std::fs::metadata(&path).unwrap().len() as usize, whole, "cut where the zeros begin");
    // The same damage with a byte of it not zero is corruption: refused.
    let dir = tempfile::tempdir().unwrap();
    let path2 = dir.path().join("raft/log");
    std::fs::create_dir_all(path2.parent().unwrap()).unwrap();
    bytes[whole + 5] = 1;
    std::fs::write(&path2, &bytes).unwrap();
    assert!(open(dir.path()).is_err(), "damage that is not a lost write is refused");
}

#[test]
fn purged_records_are_compacted_away_and_the_state_kept() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("raft/log");
    block_on(async {
        let mut log = open(dir.path()).unwrap();
        fill(&mut log, 30).await;
        let full = std::fs::metadata(&path).unwrap().len();
        log.purge(LogId::new_term_index(1, 2_900)).await.unwrap();
        // The rewrite runs in a task of its own, beside the appends.
        for _ in 0..1000 {
            if std::fs::metadata(&path).unwrap().len() < full / 10 {
                break;
            }
            tokio::task::yield_now().await;
        }
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

/// The rewrite runs beside the appends (a multi-thread runtime here): what is written while
/// it runs, appends and a truncation, is in the new file, and a reopen finds the same log.
#[test]
fn writes_during_a_rewrite_are_kept() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("raft/log");
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let scoped = openraft::rt::deterministic_rng::DeterministicRng::<openraft_rt_tokio::TokioRuntime>::scope;
    runtime.block_on(scoped(7, async {
        let mut log = open(dir.path()).unwrap();
        fill(&mut log, 60).await;
        let value = "x".repeat(1000);
        let full = std::fs::metadata(&path).unwrap().len();
        // More than half the log purged: a rewrite of the rest (2.9 MB) begins.
        log.purge(LogId::new_term_index(1, 3_100)).await.unwrap();
        for i in 6_001..=6_200u64 {
            append(&mut log, vec![entry(1, i, &value)]).await;
        }
        log.truncate_after(Some(LogId::new_term_index(1, 6_150))).await.unwrap();
        append(&mut log, vec![entry(2, 6_151, "after the truncation")]).await;
        let mut rewritten = false;
        for _ in 0..5000 {
            if std::fs::metadata(&path).unwrap().len() < full * 3 / 4 {
                rewritten = true;
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
        assert!(rewritten, "the log was not rewritten");
        let before = contents(&mut log).await;
        assert_eq!(before.1.len(), 3_051);
        assert_eq!(before.1.last().map(|e| e.log_id), Some(LogId::new_term_index(2, 6_151)));
        drop(log);
        let mut again = open(dir.path()).unwrap();
        let after = contents(&mut again).await;
        assert_eq!(after.1, before.1);
        assert_eq!((after.0, after.2), (before.0, before.2));
    }));
}

/// A rewrite that finds the log closed (the node stopped, and another may open it) leaves
/// the file as it was.
#[test]
fn a_rewrite_of_a_closed_log_leaves_its_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("raft/log");
    block_on(async {
        let mut log = open(dir.path()).unwrap();
        fill(&mut log, 30).await;
        log.purge(LogId::new_term_index(1, 2_900)).await.unwrap();
        let before = contents(&mut log).await;
        let full = std::fs::metadata(&path).unwrap().len();
        // The rewrite's task has not run yet on this one-thread runtime.
        drop(log);
        for _ in 0..100 {
            tokio::task::yield_now().await;
        }
        assert_eq!(std::fs::metadata(&path).unwrap().len(), full, "the closed log was rewritten");
        let mut again = open(dir.path()).unwrap();
        assert_eq!(contents(&mut again).await.1, before.1);
    });
}

#[test]
fn a_log_of_another_node_or_another_cluster_is_refused_naming_the_setting() {
    let dir = tempfile::tempdir().unwrap();
    let raft = dir.path().join("raft");
    block_on(async {
        let mut log = RaftLog::open(Arc::new(StdFs), &raft, &identity(2, [3, 1, 2])).unwrap();
        append(&mut log, vec![entry(1, 1, "made by node 2")]).await;
    });
    let refused = |id, nodes: &[u64]| RaftLog::open(Arc::new(StdFs), &raft, &identity(id, nodes.iter().copied())).err();
    let other_node = refused(1, &[1, 2, 3]).expect("node 1 on node 2's data is refused").to_string();
    assert!(other_node.contains("node 2's Raft log, not node 1's: node_id must be"), "{other_node}");
    let other_cluster = refused(2, &[1, 2, 4]).expect("other peers are refused").to_string();
    assert!(other_cluster.contains("a cluster of nodes 1,2,3, not 1,2,4: peers must name"), "{other_cluster}");
    // The same node and cluster, peers in another order, opens and finds its entry.
    block_on(async {
        let mut log = RaftLog::open(Arc::new(StdFs), &raft, &identity(2, [2, 3, 1])).unwrap();
        assert_eq!(contents(&mut log).await.1, vec![entry(1, 1, "made by node 2")]);
    });
}

#[test]
fn a_log_without_fsync_writes_the_same_records_and_syncs_none() {
    use crate::env::ops::{Op, OpLog};
    let dir = tempfile::tempdir().unwrap();
    let run = |fsync: bool| {
        let ops = OpLog::new(Arc::new(StdFs));
        let path = dir.path().join(format!("raft-{fsync}"));
        let log = RaftLog::open(Arc::new(ops.clone()), &path, &identity(1, [1, 2, 3])).unwrap();
        let mut log = if fsync { log } else { log.without_fsync() };
        let _ = ops.take();
        block_on(async {
            log.save_vote(&VoteOf::<TypeConfig>::new(3, 2)).await.unwrap();
            append(&mut log, (1..=3).map(|i| entry(3, i, &format!("e{i}"))).collect()).await;
            log.truncate_after(Some(LogId::new_term_index(3, 2))).await.unwrap();
        });
        let ops = ops.take();
        let syncs = ops.iter().filter(|op| matches!(op, Op::SyncData(_))).count();
        let reopened = RaftLog::open(Arc::new(StdFs), &path, &identity(1, [1, 2, 3])).unwrap();
        let mut reopened = reopened;
        (syncs, block_on(async { contents(&mut reopened).await }))
    };
    let (synced, with) = run(true);
    let (unsynced, without) = run(false);
    assert_eq!(synced, 3, "the vote, the append and the truncation are each fsynced");
    assert_eq!(unsynced, 0);
    assert_eq!(with, without, "the same records either way");
}
