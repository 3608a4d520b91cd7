//! An observer of the broker: told every [`Notice`] the core records, every record that
//! could not be read, and a broken invariant. The simulator passes one to write them into
//! a run's history; production passes none, and the core then records no notices at all.

use crate::cluster::ClusterState;
use crate::core::Notice;
use crate::storage::StorageError;

/// What the driver tells an observer, from the driver task, right after each turn.
pub trait Observer: Send + Sync + 'static {
    /// Something the broker did (see [`Notice`]).
    fn notice(&self, notice: Notice);

    /// A stored record could not be read (a CRC mismatch, a disk error): the partition's
    /// readers wait at it. The same event is logged at error level.
    fn read_failed(&self, topic: &str, partition: u32, offset: u64, error: &StorageError);

    /// Stored records were found damaged (see [`Output::Damaged`](crate::core::Output::Damaged)).
    /// The same event is logged at error level.
    fn damaged(&self, topic: &str, partition: u32, offsets: std::ops::Range<u64>);

    /// The core broke an invariant (a bug): the driver stops right after telling (without
    /// an observer, it panics).
    fn invariant_broken(&self, what: &str);

    /// A node of a cluster changed its role, term, leader or whether it serves (told from
    /// a task of its own, soon after the change).
    fn cluster(&self, state: &ClusterState) {
        let _ = state;
    }

    /// A node of a cluster replaced its broker's state with a snapshot, the state after
    /// Raft entry `index` (what it now stores follows as notices).
    fn installed(&self, index: u64) {
        let _ = index;
    }
}
