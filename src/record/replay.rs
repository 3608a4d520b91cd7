//! Replaying a recording on a fresh broker core: each recorded command is applied at the
//! time it carries, and its reply and outputs are compared, by digest, with what the
//! recorded broker produced.

use std::path::Path;
use std::sync::Arc;

use super::{digest_outputs, digest_reply, digest_state, Recording, Step};
use crate::config::{Config, ConfigError, Loaded, StorageKind};
use crate::core::{Broker, BrokerError, Command, Notice, Output, Reply};
use crate::env::Fs;
use crate::storage::{FileStorage, MemoryStorage, Storage, StorageError};

/// Why a recording cannot be replayed.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    /// The recording's broker did not start empty, or its oldest segments were removed,
    /// and its first segment left carries no snapshot: its first entries apply to state
    /// the replay does not have.
    #[error(
        "the recording does not begin on an empty broker (its broker started on stored state, or its oldest \
         segments were removed at its size bound) and its first segment has no snapshot of the state it begins \
         from (the state was larger than an eighth of record_max_bytes, or the broker had not yet begun a second \
         segment)"
    )]
    NotFromStart,
    /// The first segment's snapshot does not restore.
    #[error("its snapshot: {0}")]
    Snapshot(#[from] crate::core::SnapshotError),
    /// The recorded settings do not parse as a configuration.
    #[error("its settings: {0}")]
    Settings(#[from] ConfigError),
    /// The replay's storage (a file log like the recorded one) cannot be opened.
    #[error("cannot open storage for the replay: {0}")]
    Storage(#[from] StorageError),
    /// The broker core refuses the recorded settings.
    #[error("cannot open a broker with its settings: {0}")]
    Open(#[from] BrokerError),
}

/// One recorded command, applied again.
#[derive(Debug)]
pub struct Replayed {
    /// The recorded entry's sequence number.
    pub seq: u64,
    /// The command that was applied.
    pub command: Command,
    /// What the replayed broker answered.
    pub reply: Reply,
    /// The outputs the replayed broker produced (deliveries, assignments, ended streams),
    /// in order.
    pub outputs: Vec<Output>,
    /// The reply's digest is the recorded one.
    pub reply_matches: bool,
    /// The outputs' digest is the recorded one.
    pub outputs_match: bool,
}

/// A fresh broker core that a recording's commands are applied to.
pub struct Replayer {
    broker: Broker,
}

impl Replayer {
    /// The settings the recording's broker ran with.
    pub fn settings(recording: &Recording) -> Result<Config, ReplayError> {
        Ok(Loaded::from_toml(&recording.settings_toml, Path::new("(the recording's settings)"))?.config)
    }

    /// Storage like the recorded broker's, empty: in memory, or a file log in `dir` on
    /// `fs` with the recorded file settings (fsync policy, segment sizes).
    pub fn storage(config: &Config, fs: Arc<dyn Fs>, dir: &Path) -> Result<Box<dyn Storage>, ReplayError> {
        if config.storage.kind == StorageKind::Memory {
            return Ok(Box::new(MemoryStorage));
        }
        let mut file = config.file_storage();
        file.dir = dir.to_path_buf();
        Ok(Box::new(FileStorage::open(fs, file)?))
    }

    /// A broker with the recording's settings on `storage` (empty); `observe` has it keep
    /// its notices for [`Replayer::poll_notice`].
    pub fn new(recording: &Recording, storage: Box<dyn Storage>, observe: bool) -> Result<Self, ReplayError> {
        let config = Self::settings(recording)?;
        let mut broker = match &recording.snapshot {
            _ if recording.from_empty => {
                let broker = Broker::open(config.server.broker, storage)?;
                if !broker.is_pristine() {
                    return Err(ReplayError::NotFromStart);
                }
                broker
            }
            Some(snapshot) => Broker::from_snapshot(config.server.broker, storage, &snapshot.state)?,
            None => return Err(ReplayError::NotFromStart),
        };
        if observe {
            broker.observe();
        }
        Ok(Replayer { broker })
    }

    /// Applies one recorded command and compares what it produced with the recording.
    pub fn apply(&mut self, step: &Step) -> Replayed {
        let reply = self.broker.handle(step.at, step.command.clone());
        // What a cluster leader decided was proposed by the recorded run; its commits are
        // in the recording as commands of their own.
        let _ = self.broker.take_decided();
        let outputs: Vec<Output> = std::iter::from_fn(|| self.broker.poll_output()).collect();
        Replayed {
            seq: step.seq,
            command: step.command.clone(),
            reply_matches: digest_reply(&reply) == step.reply_digest,
            outputs_match: digest_outputs(&outputs) == step.outputs_digest,
            reply,
            outputs,
        }
    }

    /// The next notice of the replayed broker (with `observe`).
    pub fn poll_notice(&mut self) -> Option<Notice> {
        self.broker.poll_notice()
    }

    /// The digest of the replayed broker's state at `now_ms` (compare with the recording's
    /// [`End`](super::End)).
    pub fn state_digest(&self, now_ms: u64) -> u64 {
        digest_state(&self.broker, now_ms)
    }
}
