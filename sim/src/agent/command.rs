//! What the scenario driver tells an app to do. The steps' own typed forms travel as they
//! are: the agent never reads scenario text.

use std::time::Duration;

use mini_pubsub::wire::pb;

use crate::scenario::{Admin, Nack, Publish, Subscribe};

/// Something the driver tells an app to do.
#[derive(Debug, Clone)]
pub enum Command {
    /// An admin step, for the admin host, with the scenario's ack deadline for a `sub
    /// create` that sets none.
    Admin(Admin, Duration),
    Publish(Publish),
    Subscribe(Subscribe),
    Disconnect,
    /// Ack the oldest held message (`all: false`) or every held message.
    Ack {
        all: bool,
    },
    /// Nack every held message.
    Nack(Nack),
    /// Change the deadline of every held message (they stay held).
    Modack {
        seconds: u32,
    },
    /// Pull and ack everything left on every subscription until the run ends (the final
    /// drain, so that what is never read counts as lost only if it cannot be read).
    Drain,
}

/// The stream request that nacks `ack_id` as `nack` says.
pub(super) fn nack_request(nack: &Nack, ack_id: String) -> pb::SubscribeRequest {
    pb::SubscribeRequest {
        nack_ids: vec![ack_id],
        nack_delay: nack
            .delay
            .map(|d| prost_types::Duration { seconds: d.as_secs() as i64, nanos: d.subsec_nanos() as i32 }),
        nack_reason: nack.reason.clone(),
        nack_terminal: nack.terminal,
        ..Default::default()
    }
}
