//! A state machine for the cluster's tests: it remembers what it applied, in order, and its
//! snapshot is that list.

use std::io;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
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
    snapshot: Option<(SnapshotMetaOf<TypeConfig>, Bytes)>,
}

impl RaftSnapshotBuilder<TypeConfig> for ListSm {
    type SnapshotData = Bytes;

    async fn build_snapshot(&mut self) -> Result<SnapshotOf<TypeConfig, Bytes>, io::Error> {
        let mut state = self.0.lock().unwrap();
        let meta =
            SnapshotMetaOf::<TypeConfig> { last_log_id: state.applied, last_membership: state.membership.clone() };
        let data = encode(&state.proposals);
        state.snapshot = Some((meta.clone(), data.clone()));
        Ok(SnapshotOf::<TypeConfig, Bytes> { meta, snapshot: data })
    }
}

impl RaftStateMachine<TypeConfig> for ListSm {
    type SnapshotData = Bytes;
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
                responder.send(Applied { index: entry.log_id.index, reply: None });
            }
        }
        Ok(())
    }

    async fn get_snapshot_builder(&mut self) -> Self {
        self.clone()
    }

    async fn install_snapshot(&mut self, meta: &SnapshotMetaOf<TypeConfig>, data: Bytes) -> Result<(), io::Error> {
        let mut state = self.0.lock().unwrap();
        state.applied = meta.last_log_id;
        state.membership = meta.last_membership.clone();
        state.proposals = decode(&data)?;
        state.snapshot = Some((meta.clone(), data));
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<SnapshotOf<TypeConfig, Bytes>>, io::Error> {
        let state = self.0.lock().unwrap();
        Ok(state.snapshot.clone().map(|(meta, snapshot)| SnapshotOf::<TypeConfig, Bytes> { meta, snapshot }))
    }
}

/// The proposals, each as its length (u32, little-endian) and bytes.
fn encode(proposals: &[Proposal]) -> Bytes {
    let mut out = Vec::new();
    for p in proposals {
        out.extend_from_slice(&(p.0.len() as u32).to_le_bytes());
        out.extend_from_slice(&p.0);
    }
    out.into()
}

fn decode(mut data: &[u8]) -> Result<Vec<Proposal>, io::Error> {
    let mut proposals = Vec::new();
    while !data.is_empty() {
        let torn = || io::Error::new(io::ErrorKind::InvalidData, "a torn snapshot");
        let len = u32::from_le_bytes(data.get(..4).ok_or_else(torn)?.try_into().expect("4 bytes")) as usize;
        let body = data.get(4..4 + len).ok_or_else(torn)?;
        proposals.push(Proposal(Bytes::copy_from_slice(body)));
        data = &data[4 + len..];
    }
    Ok(proposals)
}
