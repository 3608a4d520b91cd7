//! A state machine for the cluster's tests: it remembers what it applied, in order, and its
//! snapshot is that list.

use std::io;
use std::sync::{Arc, Mutex};

use futures_util::TryStreamExt;
use openraft::storage::{EntryResponder, RaftStateMachine};
use openraft::type_config::alias::{LogIdOf, SnapshotMetaOf, SnapshotOf, StoredMembershipOf};
use openraft::{EntryPayload, OptionalSend, RaftSnapshotBuilder, StoredMembership};

use super::{Applied, Proposal, TypeConfig};

type LogId = LogIdOf<TypeConfig>;

/// The smallest state machine the suite accepts: it remembers what it applied, and its
/// snapshot is that list.
#[derive(Clone, Default)]
pub(super) struct ListSm(pub(super) Arc<Mutex<ListState>>);

#[derive(Clone, Default)]
pub(super) struct ListState {
    pub(super) applied: Option<LogId>,
    pub(super) membership: StoredMembershipOf<TypeConfig>,
    pub(super) proposals: Vec<Proposal>,
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
