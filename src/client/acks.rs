//! Acks, nacks and deadline changes waiting to go out, gathered into as few Subscribe
//! requests as the wire allows: one request per distinct nack (delay, reason, terminal),
//! since those fields apply to all of a request's nack ids.

use std::collections::BTreeMap;
use std::time::Duration;

use super::received::LeaseId;
use crate::wire::pb;

/// How a nack asks for its message back. Nacks with equal options share a request.
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct NackKey {
    pub delay_ms: Option<u64>,
    pub reason: String,
    pub terminal: bool,
}

/// Operations not yet sent.
#[derive(Debug, Default)]
pub(crate) struct PendingOps {
    acks: Vec<LeaseId>,
    nacks: BTreeMap<NackKey, Vec<LeaseId>>,
    extends: Vec<(LeaseId, u32)>,
    len: usize,
}

impl PendingOps {
    pub(crate) fn ack(&mut self, ack_id: LeaseId) {
        self.acks.push(ack_id);
        self.len += 1;
    }

    pub(crate) fn nack(&mut self, ack_id: LeaseId, key: NackKey) {
        self.nacks.entry(key).or_default().push(ack_id);
        self.len += 1;
    }

    pub(crate) fn extend(&mut self, ack_id: LeaseId, seconds: u32) {
        self.extends.push((ack_id, seconds));
        self.len += 1;
    }

    /// Ack ids waiting, of every kind.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Everything pending as Subscribe requests of at most `ids_max` ack ids each (acks
    /// and deadline changes ride with the first nacks), emptying the set. Each ack and
    /// nack is handed to `on_decided` (with its nack's options; `None` for an ack) once its
    /// text is in a request.
    pub(crate) fn take_requests(
        &mut self,
        ids_max: usize,
        mut on_decided: impl FnMut(LeaseId, Option<&NackKey>),
    ) -> Vec<pb::SubscribeRequest> {
        assert!(ids_max >= 1, "a request must carry at least one ack id");
        let PendingOps { acks, nacks, extends, .. } = std::mem::take(self);
        let mut requests = Vec::new();
        let mut current = pb::SubscribeRequest::default();
        let mut ids = 0;
        for ack_id in acks {
            if ids == ids_max {
                close(&mut current, &mut ids, &mut requests);
            }
            current.ack_ids.push(ack_id.as_str().to_string());
            on_decided(ack_id, None);
            ids += 1;
        }
        for (ack_id, seconds) in extends {
            if ids == ids_max {
                close(&mut current, &mut ids, &mut requests);
            }
            current.modify_deadline_ack_ids.push(ack_id.as_str().to_string());
            current.modify_deadline_seconds.push(seconds);
            ids += 1;
        }
        for (key, ack_ids) in nacks {
            // A request carries one set of nack options; start a fresh one if this one has
            // nacks with other options, or no room.
            if !current.nack_ids.is_empty() || ids == ids_max {
                close(&mut current, &mut ids, &mut requests);
            }
            for ack_id in ack_ids {
                if ids == ids_max {
                    close(&mut current, &mut ids, &mut requests);
                }
                if current.nack_ids.is_empty() {
                    current.nack_delay = key.delay_ms.map(|ms| duration(Duration::from_millis(ms)));
                    current.nack_reason.clone_from(&key.reason);
                    current.nack_terminal = key.terminal;
                }
                current.nack_ids.push(ack_id.as_str().to_string());
                on_decided(ack_id, Some(&key));
                ids += 1;
            }
        }
        close(&mut current, &mut ids, &mut requests);
        requests
    }
}

/// Ends the request being filled, if it carries anything.
fn close(current: &mut pb::SubscribeRequest, ids: &mut usize, requests: &mut Vec<pb::SubscribeRequest>) {
    if *ids > 0 {
        requests.push(std::mem::take(current));
        *ids = 0;
    }
}

fn duration(d: Duration) -> prost_types::Duration {
    prost_types::Duration { seconds: d.as_secs() as i64, nanos: d.subsec_nanos() as i32 }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(request: &pb::SubscribeRequest) -> (Vec<&str>, Vec<&str>, Vec<&str>) {
        (strs(&request.ack_ids), strs(&request.nack_ids), strs(&request.modify_deadline_ack_ids))
    }

    fn strs(v: &[String]) -> Vec<&str> {
        v.iter().map(String::as_str).collect()
    }

    #[test]
    fn acks_and_one_kind_of_nack_share_a_request() {
        let mut ops = PendingOps::default();
        ops.ack("a".into());
        ops.ack("b".into());
        ops.nack("c".into(), NackKey::default());
        ops.extend("d".into(), 10);
        let requests = ops.take_requests(100, |_, _| {});
        assert_eq!(requests.len(), 1);
        assert_eq!(ids(&requests[0]), (vec!["a", "b"], vec!["c"], vec!["d"]));
        assert_eq!(requests[0].modify_deadline_seconds, [10]);
        assert_eq!(ops.len(), 0);
    }

    #[test]
    fn nacks_with_different_delays_go_in_separate_requests() {
        let mut ops = PendingOps::default();
        ops.nack("a".into(), NackKey { delay_ms: Some(1500), ..Default::default() });
        ops.nack("b".into(), NackKey::default());
        let requests = ops.take_requests(100, |_, _| {});
        assert_eq!(requests.len(), 2);
        assert_eq!(requests[0].nack_ids, ["b"]);
        assert_eq!(requests[0].nack_delay, None);
        assert_eq!(requests[1].nack_ids, ["a"]);
        assert_eq!(requests[1].nack_delay, Some(prost_types::Duration { seconds: 1, nanos: 500_000_000 }));
    }

    #[test]
    fn no_request_carries_more_than_the_bound() {
        let mut ops = PendingOps::default();
        for n in 0..7 {
            ops.ack(LeaseId::new(format!("a{n}")));
        }
        let sizes: Vec<_> = ops.take_requests(3, |_, _| {}).iter().map(|r| r.ack_ids.len()).collect();
        assert_eq!(sizes, [3, 3, 1]);
        assert!(PendingOps::default().take_requests(3, |_, _| {}).is_empty());
    }
}
