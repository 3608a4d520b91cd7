//! Partition-exclusive subscriptions (consumer groups, as Kafka's): each partition is
//! leased to one member at a time.
//!
//! The members of an exclusive subscription share its partitions, not its messages. The
//! assignment is balanced (members' partition counts differ by at most one) and sticky (a
//! rebalance keeps every partition with its owner unless balance needs it elsewhere), and
//! it is a pure function of the old assignment and the members in join order, so it is the
//! same on every run. Every change of membership (a join, a leave, a session that timed
//! out) starts a new generation, and every member is told its partitions and the new
//! generation.
//!
//! A partition that moves takes its leases with it: the old owner's leases on it end at
//! once (the messages are offered to the new owner without backoff, and the delivery does
//! not count as an attempt: the consumer did nothing wrong, so a rebalance never
//! dead-letters), so the old owner's acks of them are confirmed expired, and the new owner
//! starts with them, lowest offset first; a message waiting out a backoff keeps it. Leases on
//! partitions a member keeps stay valid across generations.
//!
//! A member must send a request (an empty `SubscribeRequest` is a heartbeat) at least once
//! per session timeout; a silent member is removed and its stream ended, so a client that
//! hangs, or is cut off without its connection failing, does not hold partitions forever.

use std::collections::BTreeMap;

use super::broker::Broker;
use super::delivery::{Delivery, Output};
use super::error::BrokerError;
use super::lease::StreamId;
use super::retry::Unacked;
use super::subscription::Subscription;
use super::timers::Timer;

/// How a subscription shares its messages among its members.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub enum DeliveryMode {
    /// Members compete for every message (Pub/Sub's model).
    #[default]
    Shared,
    /// Each partition is leased to one member at a time (Kafka's consumer groups).
    Exclusive,
}

/// The membership of an exclusive subscription.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct Group {
    /// Bumped at every membership change; 0 before the first member joined.
    pub generation: u64,
    /// The member each partition is leased to, by partition; `None` when there are no
    /// members (such partitions are left to Pull).
    pub owners: Vec<Option<StreamId>>,
    /// Each member's session.
    pub sessions: BTreeMap<StreamId, Session>,
}

/// How long a member may stay silent, and when it has been silent too long.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Session {
    pub timeout_ms: u64,
    pub deadline_ms: u64,
}

impl Group {
    /// A group with no members over `partitions` partitions.
    pub fn new(partitions: usize) -> Self {
        Self { generation: 0, owners: vec![None; partitions], sessions: BTreeMap::new() }
    }

    /// The partitions `member` holds, lowest first.
    pub fn partitions_of(&self, member: StreamId) -> Vec<u32> {
        let held = self.owners.iter().enumerate().filter(|(_, o)| **o == Some(member));
        held.map(|(p, _)| p as u32).collect()
    }
}

/// The new owner of every partition: balanced, sticky, deterministic. `members` are in
/// join order. The members that may hold one partition more than the others are those
/// that already hold more (so they keep theirs), then the earliest joined; each member
/// keeps its lowest partitions up to its share, and the rest go, lowest first, to the
/// earliest joined members still under their share.
pub fn assign(owners: &[Option<StreamId>], members: &[StreamId]) -> Vec<Option<StreamId>> {
    if members.is_empty() {
        return vec![None; owners.len()];
    }
    let (base, extra) = (owners.len() / members.len(), owners.len() % members.len());
    let held = |m: &StreamId| owners.iter().filter(|o| **o == Some(*m)).count();
    let mut by_claim: Vec<usize> = (0..members.len()).collect();
    // A stable sort: among members that hold as many, the earliest joined comes first.
    by_claim.sort_by_key(|&i| std::cmp::Reverse(held(&members[i]).min(base + 1)));
    let mut share = vec![base; members.len()];
    for &i in by_claim.iter().take(extra) {
        share[i] += 1;
    }
    let mut taken = vec![0usize; members.len()];
    let mut next: Vec<Option<StreamId>> = vec![None; owners.len()];
    for (p, owner) in owners.iter().enumerate() {
        let Some(i) = owner.and_then(|o| members.iter().position(|m| *m == o)) else { continue };
        if taken[i] < share[i] {
            taken[i] += 1;
            next[p] = Some(members[i]);
        }
    }
    for slot in next.iter_mut().filter(|slot| slot.is_none()) {
        let i = (0..members.len()).find(|&i| taken[i] < share[i]).expect("shares add up to the partition count");
        taken[i] += 1;
        *slot = Some(members[i]);
    }
    next
}

impl Subscription {
    /// Whether a message of `partition` may be leased to `stream` (`None`: a Pull). Shared
    /// subscriptions lease anything to anyone; exclusive ones only to the partition's
    /// owner, and to Pull only where no member holds the partition.
    pub fn may_lease(&self, partition: u32, stream: Option<StreamId>) -> bool {
        self.group.as_ref().is_none_or(|g| g.owners[partition as usize] == stream)
    }

    /// The generation deliveries are leased under now: 0 for shared subscriptions.
    pub fn generation(&self) -> u64 {
        self.group.as_ref().map_or(0, |g| g.generation)
    }

    /// How the subscription shares its messages.
    pub fn delivery_mode(&self) -> DeliveryMode {
        if self.group.is_some() {
            DeliveryMode::Exclusive
        } else {
            DeliveryMode::Shared
        }
    }
}

impl Broker {
    /// Opens a stream as [`Broker::open_stream`] does, with the member's session timeout
    /// (`None` takes `session_timeout_ms`; it matters only on exclusive subscriptions) and
    /// its client id (`None`: none; see `client_id` for what one keeps). Refused, it
    /// changes nothing.
    pub(super) fn open_member(
        &mut self,
        now_ms: u64,
        target: super::StreamTarget,
        flow: super::Flow,
        session_timeout_ms: Option<u64>,
        client_id: Option<String>,
    ) -> Result<(StreamId, String), BrokerError> {
        self.check_member(session_timeout_ms, client_id.as_deref())?;
        let (stream, name) = self.open_client_stream(now_ms, target, flow, client_id)?;
        if let Some(timeout) = session_timeout_ms {
            self.set_session(now_ms, stream, timeout);
        }
        Ok((stream, name))
    }

    /// Refuses a member's session timeout out of range and a malformed client id.
    pub(super) fn check_member(
        &self,
        session_timeout_ms: Option<u64>,
        client_id: Option<&str>,
    ) -> Result<(), BrokerError> {
        let max = self.config.session_timeout_max_ms;
        if let Some(timeout) = session_timeout_ms.filter(|t| !(1000..=max).contains(t)) {
            return Err(BrokerError::InvalidArgument {
                field: "session_timeout_seconds",
                reason: format!(
                    "{} s; allowed is 1 to {} s (session_timeout_max_ms), 0 = {} s",
                    timeout / 1000,
                    max / 1000,
                    self.config.session_timeout_ms / 1000
                ),
            });
        }
        if let Some(client_id) = client_id {
            super::client_id::check(client_id)?;
        }
        Ok(())
    }

    /// A request arrived on `stream` (acks, or an empty heartbeat): its session starts over.
    pub(super) fn heartbeat(&mut self, now_ms: u64, stream: StreamId) {
        let Some(timeout) = self.session(stream).map(|s| s.timeout_ms) else { return };
        self.set_session(now_ms, stream, timeout);
    }

    fn session(&self, stream: StreamId) -> Option<Session> {
        let uid = self.streams.get(&stream)?.subscription_uid;
        self.subscriptions[&uid].group.as_ref()?.sessions.get(&stream).copied()
    }

    fn set_session(&mut self, now_ms: u64, stream: StreamId, timeout_ms: u64) {
        let Some(uid) = self.streams.get(&stream).map(|s| s.subscription_uid) else { return };
        let Some(group) = self.subscriptions.get_mut(&uid).and_then(|s| s.group.as_mut()) else { return };
        let session = Session { timeout_ms, deadline_ms: now_ms.saturating_add(timeout_ms) };
        if let Some(old) = group.sessions.insert(stream, session) {
            self.timers.stop(Timer::Session(stream), old.deadline_ms);
        }
        self.timers.set(Timer::Session(stream), session.deadline_ms);
    }

    /// `stream` joined subscription `uid`: on an exclusive one it gets a session and the
    /// partitions are dealt again. The caller dispatches.
    pub(super) fn join_group(&mut self, now_ms: u64, uid: u64, stream: StreamId) {
        if self.subscriptions[&uid].group.is_none() {
            return;
        }
        self.set_session(now_ms, stream, self.config.session_timeout_ms);
        self.rebalance(now_ms, uid);
    }

    /// `stream` left subscription `uid` (its leases already ended, or detached for its
    /// client): on an exclusive one the partitions are dealt again. The caller dispatches.
    pub(super) fn leave_group(&mut self, now_ms: u64, uid: u64, stream: StreamId) {
        let Some(group) = self.subscriptions.get_mut(&uid).and_then(|s| s.group.as_mut()) else { return };
        if let Some(old) = group.sessions.remove(&stream) {
            self.timers.stop(Timer::Session(stream), old.deadline_ms);
        }
        self.rebalance(now_ms, uid);
    }

    /// Ends the streams of members silent past their session timeout: they leave their
    /// groups (their leases end as for a closed stream) and the driver is told why.
    pub(super) fn expire_sessions(&mut self, now_ms: u64) {
        while let Some((deadline, stream)) = self.timers.pop_session_due(now_ms) {
            let Some(uid) = self.streams.get(&stream).map(|s| s.subscription_uid) else { continue };
            let sub = &self.subscriptions[&uid];
            let session = sub.group.as_ref().and_then(|g| g.sessions.get(&stream));
            let Some(session) = session.filter(|s| s.deadline_ms == deadline) else { continue };
            let reason = BrokerError::SessionTimedOut {
                subscription: sub.name.clone(),
                stream: stream.to_string(),
                timeout_ms: session.timeout_ms,
            };
            self.outputs.push_back(Output::EndStream { stream, reason });
            self.close_stream(now_ms, stream);
        }
    }

    /// Deals the partitions of exclusive subscription `uid` to its members, starts a new
    /// generation, ends the leases on partitions that changed hands, and tells every
    /// member its partitions.
    fn rebalance(&mut self, now_ms: u64, uid: u64) {
        let sub = self.subscription_mut(uid);
        let group = sub.group.as_mut().expect("only exclusive subscriptions rebalance");
        let owners = assign(&group.owners, &sub.members);
        let old = std::mem::replace(&mut group.owners, owners.clone());
        group.generation += 1;
        let generation = group.generation;
        let mut ended = Vec::new();
        for (partition, cursor) in sub.cursors.iter().enumerate() {
            // A partition left without members keeps its leases: its last owner's leases
            // already ended, or wait detached for their client, who would get it back.
            if old[partition] == owners[partition] || owners[partition].is_none() {
                continue;
            }
            let foreign = cursor.leased.iter().filter(|(_, l)| l.stream != owners[partition]);
            ended.extend(foreign.map(|(offset, _)| (partition as u32, *offset)));
        }
        let members = sub.members.clone();
        for (partition, offset) in ended {
            self.end_unacked(now_ms, uid, partition, offset, &Unacked::Revoked);
        }
        let group = self.subscriptions[&uid].group.as_ref().expect("checked above");
        for stream in members {
            let partitions = group.partitions_of(stream);
            self.outputs.push_back(Output::Assignment { stream, generation, partitions });
        }
    }

    /// Dispatch for an exclusive subscription: each member, in join order, gets what its
    /// own partitions have while it has room. Bounded by the members' flow-control room.
    pub(super) fn dispatch_exclusive(&mut self, now_ms: u64, uid: u64) {
        let members = self.subscriptions[&uid].members.clone();
        let limit = self.config.response_bytes_max;
        for member in members {
            let mut batch: Vec<Delivery> = Vec::new();
            let mut bytes = 0;
            while self.streams[&member].has_room() {
                let Some(delivery) = self.lease_next(now_ms, uid, Some(member), None) else { break };
                let size = delivery.encoded_len_max();
                if !batch.is_empty() && bytes + size > limit {
                    let full = std::mem::take(&mut batch);
                    self.outputs.push_back(Output::Deliver { stream: member, deliveries: full });
                    bytes = 0;
                }
                bytes += size;
                batch.push(delivery);
            }
            if !batch.is_empty() {
                self.outputs.push_back(Output::Deliver { stream: member, deliveries: batch });
            }
        }
    }

    /// Panics if an exclusive subscription breaks its rules: every partition has an owner
    /// exactly when there are members, owners are members, shares differ by at most one,
    /// every lease is held by its partition's owner (or, on an unowned partition, by Pull
    /// or detached for a client), and every member has an indexed session.
    pub(super) fn assert_group_invariants(&self, sub: &Subscription) {
        let Some(group) = &sub.group else { return };
        assert_eq!(group.owners.len(), sub.cursors.len(), "{}: owners per partition", sub.name);
        for (partition, (owner, cursor)) in group.owners.iter().zip(&sub.cursors).enumerate() {
            assert_eq!(owner.is_some(), !sub.members.is_empty(), "{}: p{partition} owner", sub.name);
            assert!(owner.is_none_or(|o| sub.members.contains(&o)), "{}: p{partition} owned by a non-member", sub.name);
            for (offset, lease) in &cursor.leased {
                let detached = lease.stream.is_some_and(|s| self.detached.contains_key(&s));
                assert!(
                    lease.stream == *owner || (owner.is_none() && detached),
                    "{}: p{partition}@{offset} leased to two members",
                    sub.name
                );
            }
        }
        let counts: Vec<usize> = sub.members.iter().map(|m| group.partitions_of(*m).len()).collect();
        let (min, max) = (counts.iter().min(), counts.iter().max());
        assert!(max.zip(min).is_none_or(|(max, min)| max - min <= 1), "{}: unbalanced {counts:?}", sub.name);
        assert_eq!(group.sessions.len(), sub.members.len(), "{}: sessions per member", sub.name);
        for (stream, session) in &group.sessions {
            let timer = Timer::Session(*stream);
            assert!(self.timers.contains(timer, session.deadline_ms), "{stream}: session has no timer");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(n: u64) -> StreamId {
        StreamId(n)
    }

    #[test]
    fn assignment_is_balanced_and_deals_in_join_order() {
        let owners = assign(&[None; 5], &[s(1), s(2)]);
        assert_eq!(owners, [Some(s(1)), Some(s(1)), Some(s(1)), Some(s(2)), Some(s(2))]);
        assert_eq!(assign(&owners, &[]), [None; 5]);
    }

    #[test]
    fn a_join_moves_only_what_balance_needs() {
        let before = assign(&[None; 4], &[s(1), s(2)]);
        let after = assign(&before, &[s(1), s(2), s(3)]);
        let moved = before.iter().zip(&after).filter(|(a, b)| a != b).count();
        assert_eq!(moved, 1, "{before:?} -> {after:?}");
        assert_eq!(after, [Some(s(1)), Some(s(1)), Some(s(2)), Some(s(3))]);
    }

    #[test]
    fn a_leave_hands_only_the_leavers_partitions_over() {
        let before = assign(&[None; 6], &[s(1), s(2), s(3)]);
        let after = assign(&before, &[s(1), s(3)]);
        for (p, (b, a)) in before.iter().zip(&after).enumerate() {
            if *b != Some(s(2)) {
                assert_eq!(a, b, "p{p} moved though its owner stayed");
            }
        }
        let count = |m| after.iter().filter(|o| **o == Some(m)).count();
        assert_eq!((count(s(1)), count(s(3))), (3, 3));
    }

    #[test]
    fn more_members_than_partitions_leaves_the_latest_idle() {
        let owners = assign(&[None; 2], &[s(4), s(5), s(6)]);
        assert_eq!(owners, [Some(s(4)), Some(s(5))]);
    }
}
