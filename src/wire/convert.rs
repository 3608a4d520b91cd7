//! Conversions between generated protobuf types and core types. Validation of the wire's
//! own shape (one form or the other, enum values, paired lists) happens here; the core
//! validates meaning (names, sizes, ranges).

use prost_types::{Duration, Timestamp};
use tonic::Status;

use super::pb;
use crate::core::{
    AckOp, AckOutcome, AckReply, DeadLetterPolicy, DeadLetterSpec, Delivery, DeliveryMode, Flow, OutgoingMessage,
    PendingMessage, PendingState, Published, Redriven, RetryPolicy, RetrySpec, SeekTarget, StartPosition, StreamTarget,
    SubscriptionInfo, SubscriptionStats, TopicInfo,
};

/// Most items one List call returns.
pub const PAGE_SIZE_MAX: u32 = 1000;
/// Items a List call returns when it asks for 0.
pub const PAGE_SIZE_DEFAULT: u32 = 100;

fn invalid(field: &str, reason: impl std::fmt::Display) -> Status {
    Status::invalid_argument(format!("{field}: {reason}"))
}

/// Characters of a client's text an error message quotes at most: an error never echoes
/// unbounded input (a default client refuses a status message past a few KiB).
const QUOTED_CHARS_MAX: usize = 64;

/// `text` in backquotes, cut to its first [`QUOTED_CHARS_MAX`] characters with its length
/// in bytes when it is longer.
fn quoted(text: &str) -> String {
    match text.char_indices().nth(QUOTED_CHARS_MAX) {
        None => format!("`{text}`"),
        Some((cut, _)) => format!("`{}`... ({} bytes)", &text[..cut], text.len()),
    }
}

/// The topic and messages of a Publish: the single form (value, key, attributes,
/// partition) or the batch form (messages), never both.
pub fn publish_messages(req: pb::PublishRequest) -> Result<(String, Vec<OutgoingMessage>), Status> {
    if req.messages.is_empty() {
        let message = OutgoingMessage {
            value: req.value,
            key: req.key,
            attributes: req.attributes,
            partition: req.partition,
            idempotency_key: req.idempotency_key,
        };
        return Ok((req.topic, vec![message]));
    }
    let single = !req.value.is_empty()
        || req.key.is_some()
        || !req.attributes.is_empty()
        || req.partition.is_some()
        || req.idempotency_key.is_some();
    if single {
        return Err(invalid(
            "messages",
            "a request carries either one message (value, key, attributes, partition, idempotency_key) or a batch (messages), not both",
        ));
    }
    let messages = req
        .messages
        .into_iter()
        .map(|m| OutgoingMessage {
            value: m.value,
            key: m.key,
            attributes: m.attributes,
            partition: m.partition,
            idempotency_key: m.idempotency_key,
        })
        .collect();
    Ok((req.topic, messages))
}

/// The PublishResponse: one result per message, in request order (id, partition, offset,
/// and whether it repeated an idempotency key already stored).
pub fn publish_response(published: Vec<Published>) -> pb::PublishResponse {
    let results = published
        .into_iter()
        .map(|p| pb::PublishResult {
            message_id: p.message_id,
            partition: p.partition,
            offset: p.offset,
            duplicate: p.duplicate,
        })
        .collect();
    pb::PublishResponse { results }
}

/// A topic's dedupe window in milliseconds: `None` (the default) when unset or zero. The
/// range is the core's to check; here only the shape of the Duration (whole milliseconds).
pub fn dedupe_window_ms(window: Option<&Duration>) -> Result<Option<u64>, Status> {
    let Some(d) = window else { return Ok(None) };
    if d.seconds < 0 || !(0..1_000_000_000).contains(&d.nanos) {
        return Err(invalid(
            "dedupe_window",
            format!("{}s {}ns is not a valid positive Duration; allowed is 1s to 86400s", d.seconds, d.nanos),
        ));
    }
    if d.nanos % 1_000_000 != 0 {
        // Stored in milliseconds: a finer window would be kept shorter than asked for.
        return Err(invalid(
            "dedupe_window",
            format!("{}s {}ns is not a whole number of milliseconds; allowed is 1s to 86400s", d.seconds, d.nanos),
        ));
    }
    let ms = (d.seconds as u64).saturating_mul(1000).saturating_add(d.nanos as u64 / 1_000_000);
    Ok((d.seconds != 0 || d.nanos != 0).then_some(ms))
}

/// Milliseconds since the Unix epoch as a protobuf Timestamp.
pub fn timestamp(ms: u64) -> Timestamp {
    Timestamp { seconds: (ms / 1000) as i64, nanos: ((ms % 1000) * 1_000_000) as i32 }
}

fn timestamp_ms(field: &str, t: &Timestamp) -> Result<u64, Status> {
    // 253402300799 is 9999-12-31T23:59:59Z, the last second protobuf's Timestamp allows.
    if !(0..=253_402_300_799).contains(&t.seconds) || !(0..1_000_000_000).contains(&t.nanos) {
        return Err(invalid(
            field,
            "must be a time from 1970-01-01T00:00:00Z to 9999-12-31T23:59:59Z, with nanos in 0 to 999999999",
        ));
    }
    Ok(t.seconds as u64 * 1000 + t.nanos as u64 / 1_000_000)
}

/// Longest Duration accepted anywhere (ten years): past it, milliseconds could overflow.
const DURATION_SECONDS_MAX: i64 = 10 * 366 * 24 * 3600;

/// A Duration as milliseconds; negative or malformed ones are refused naming `field`.
pub fn duration_ms(field: &str, d: &Duration) -> Result<u64, Status> {
    if !(0..=DURATION_SECONDS_MAX).contains(&d.seconds) || !(0..1_000_000_000).contains(&d.nanos) {
        return Err(invalid(field, "must be a duration from 0 to 10 years, with nanos in 0 to 999999999"));
    }
    Ok(d.seconds as u64 * 1000 + d.nanos as u64 / 1_000_000)
}

/// Milliseconds as a protobuf Duration.
pub fn duration(ms: u64) -> Duration {
    Duration { seconds: (ms / 1000) as i64, nanos: ((ms % 1000) * 1_000_000) as i32 }
}

/// A nack with its optional delay, reason and terminal flag (empty reason = none).
pub fn nack_op(field: &str, delay: Option<&Duration>, reason: &str, terminal: bool) -> Result<AckOp, Status> {
    let delay_ms = delay.map(|d| duration_ms(field, d)).transpose()?;
    let reason = (!reason.is_empty()).then(|| reason.to_string());
    Ok(AckOp::Nack { delay_ms, terminal, reason })
}

/// A retry policy from a request: an unset backoff takes the broker's default; a negative
/// or malformed Duration is INVALID_ARGUMENT (the range is the core's to check).
pub fn retry_spec(policy: Option<pb::RetryPolicy>) -> Result<Option<RetrySpec>, Status> {
    let Some(p) = policy else { return Ok(None) };
    Ok(Some(RetrySpec {
        minimum_backoff_ms: p.minimum_backoff.map(|d| duration_ms("retry_policy.minimum_backoff", &d)).transpose()?,
        maximum_backoff_ms: p.maximum_backoff.map(|d| duration_ms("retry_policy.maximum_backoff", &d)).transpose()?,
    }))
}

/// A dead-letter policy from a request; `max_delivery_attempts` 0 takes the broker's
/// default. The topic and the bounds are the core's to check.
pub fn dead_letter_spec(policy: Option<pb::DeadLetterPolicy>) -> Option<DeadLetterSpec> {
    policy.map(|p| DeadLetterSpec {
        topic: p.dead_letter_topic,
        max_delivery_attempts: (p.max_delivery_attempts != 0).then_some(p.max_delivery_attempts),
    })
}

fn retry_policy_pb(p: RetryPolicy) -> pb::RetryPolicy {
    pb::RetryPolicy {
        minimum_backoff: Some(duration(p.minimum_backoff_ms)),
        maximum_backoff: Some(duration(p.maximum_backoff_ms)),
    }
}

fn dead_letter_policy_pb(p: DeadLetterPolicy) -> pb::DeadLetterPolicy {
    pb::DeadLetterPolicy { dead_letter_topic: p.topic, max_delivery_attempts: p.max_delivery_attempts }
}

/// A delivery as the wire carries it: the message with its publish time as a Timestamp,
/// the ack id, the attempt number and the exclusive generation (0 when shared).
pub fn received_message(d: Delivery) -> pb::ReceivedMessage {
    let record = d.record;
    pb::ReceivedMessage {
        ack_id: d.ack_id,
        message: Some(pb::Message {
            message_id: d.message_id,
            topic: d.topic,
            partition: d.partition,
            offset: d.offset,
            key: record.key.clone(),
            value: record.value.clone(),
            attributes: record.attributes.clone(),
            publish_time: Some(timestamp(record.publish_time_ms)),
            idempotency_key: record.idempotency_key.clone(),
        }),
        delivery_attempt: d.delivery_attempt,
        generation: d.generation,
    }
}

/// What the broker did with one ack, nack or deadline change, for the stream's client.
pub fn ack_confirmation(reply: AckReply) -> pb::AckConfirmation {
    let operation = match reply.op {
        AckOp::Ack => pb::AckOperation::Ack,
        AckOp::Nack { .. } => pb::AckOperation::Nack,
        AckOp::ModifyDeadline { .. } => pb::AckOperation::ModifyDeadline,
    };
    let result = match reply.outcome {
        AckOutcome::Applied => pb::AckResult::Applied,
        AckOutcome::Invalid => pb::AckResult::Invalid,
        AckOutcome::Expired => pb::AckResult::Expired,
    };
    pb::AckConfirmation { ack_id: reply.ack_id, operation: operation.into(), result: result.into() }
}

/// A StartPosition number: 0 (unspecified) and 1 are earliest, 2 is latest; anything else
/// is INVALID_ARGUMENT naming `field`.
pub fn start_position(field: &str, value: i32) -> Result<StartPosition, Status> {
    match pb::StartPosition::try_from(value) {
        Ok(pb::StartPosition::Unspecified | pb::StartPosition::Earliest) => Ok(StartPosition::Earliest),
        Ok(pb::StartPosition::Latest) => Ok(StartPosition::Latest),
        Err(_) => Err(invalid(field, format!("{value} is not a StartPosition (0, 1 or 2)"))),
    }
}

fn start_position_pb(start: StartPosition) -> pb::StartPosition {
    match start {
        StartPosition::Earliest => pb::StartPosition::Earliest,
        StartPosition::Latest => pb::StartPosition::Latest,
    }
}

/// A DeliveryMode number: 0 (unspecified) and 1 are shared, 2 is exclusive; anything else
/// is INVALID_ARGUMENT naming `field`.
pub fn delivery_mode(field: &str, value: i32) -> Result<DeliveryMode, Status> {
    match pb::DeliveryMode::try_from(value) {
        Ok(pb::DeliveryMode::Unspecified | pb::DeliveryMode::Shared) => Ok(DeliveryMode::Shared),
        Ok(pb::DeliveryMode::Exclusive) => Ok(DeliveryMode::Exclusive),
        Err(_) => Err(invalid(field, format!("{value} is not a DeliveryMode (0 or 1 = shared, 2 = exclusive)"))),
    }
}

fn delivery_mode_pb(mode: DeliveryMode) -> pb::DeliveryMode {
    match mode {
        DeliveryMode::Shared => pb::DeliveryMode::Shared,
        DeliveryMode::Exclusive => pb::DeliveryMode::Exclusive,
    }
}

/// A member's session timeout from the first Subscribe request; 0 means "the default".
pub fn session_timeout_ms(first: &pb::SubscribeRequest) -> Option<u64> {
    (first.session_timeout_seconds != 0).then_some(u64::from(first.session_timeout_seconds) * 1000)
}

/// A new assignment for a member of an exclusive subscription.
pub fn assignment(generation: u64, partitions: Vec<u32>) -> pb::SubscribeResponse {
    pb::SubscribeResponse { assignment: Some(pb::Assignment { generation, partitions }), ..Default::default() }
}

/// 0 means "the default".
pub fn ack_deadline_ms(seconds: u32) -> Option<u64> {
    (seconds != 0).then_some(u64::from(seconds) * 1000)
}

/// What the first Subscribe request opens.
pub fn stream_open(first: &pb::SubscribeRequest) -> Result<(StreamTarget, Flow), Status> {
    let target = match (first.subscription.is_empty(), first.topic.is_empty()) {
        (false, true) => StreamTarget::Subscription(first.subscription.clone()),
        (true, false) => StreamTarget::Topic {
            topic: first.topic.clone(),
            ack_deadline_ms: ack_deadline_ms(first.ack_deadline_seconds),
            start: start_position("start_position", first.start_position)?,
        },
        (true, true) => {
            return Err(invalid(
                "subscription",
                "the first Subscribe request must name a subscription, or a topic for an ephemeral subscription",
            ))
        }
        (false, false) => {
            return Err(invalid("subscription", "name a subscription or a topic in the first request, not both"))
        }
    };
    let flow = Flow {
        max_outstanding_messages: first.max_outstanding_messages,
        max_outstanding_bytes: first.max_outstanding_bytes,
    };
    Ok((target, flow))
}

/// The client id of a first Subscribe request; empty means none. (The broker checks it.)
pub fn client_id(first: &pb::SubscribeRequest) -> Option<String> {
    (!first.client_id.is_empty()).then(|| first.client_id.clone())
}

/// The acks, nacks and deadline changes a Subscribe request carries, in that order.
/// Moves the ack ids out of `req` (a request's ids are applied once; copying them cost as
/// much as applying them).
pub fn stream_ack_ops(req: &mut pb::SubscribeRequest) -> Result<Vec<(AckOp, Vec<String>)>, Status> {
    let (ids, seconds) = (&req.modify_deadline_ack_ids, &req.modify_deadline_seconds);
    if ids.len() != seconds.len() {
        return Err(invalid(
            "modify_deadline_seconds",
            format!("has {} entries for {} modify_deadline_ack_ids; they pair up one to one", seconds.len(), ids.len()),
        ));
    }
    let nack = if req.nack_ids.is_empty() {
        None
    } else {
        Some(nack_op("nack_delay", req.nack_delay.as_ref(), &req.nack_reason, req.nack_terminal)?)
    };
    let mut ops = Vec::new();
    if !req.ack_ids.is_empty() {
        ops.push((AckOp::Ack, std::mem::take(&mut req.ack_ids)));
    }
    if let Some(nack) = nack {
        ops.push((nack, std::mem::take(&mut req.nack_ids)));
    }
    let ids = std::mem::take(&mut req.modify_deadline_ack_ids);
    for (id, s) in ids.into_iter().zip(&req.modify_deadline_seconds) {
        ops.push((AckOp::ModifyDeadline { deadline_ms: u64::from(*s) * 1000 }, vec![id]));
    }
    Ok(ops)
}

/// A seek's target: `earliest: true`, `latest: true`, a time (ms since the epoch), or
/// per-partition offsets; none of these (or an empty list) is INVALID_ARGUMENT.
pub fn seek_target(target: Option<pb::seek_request::Target>) -> Result<SeekTarget, Status> {
    use pb::seek_request::Target;
    match target {
        Some(Target::Earliest(true)) => Ok(SeekTarget::Earliest),
        Some(Target::Latest(true)) => Ok(SeekTarget::Latest),
        Some(Target::Time(t)) => Ok(SeekTarget::TimeMs(timestamp_ms("time", &t)?)),
        Some(Target::Offsets(o)) if !o.offsets.is_empty() => {
            Ok(SeekTarget::Offsets(o.offsets.into_iter().map(|p| (p.partition, p.offset)).collect()))
        }
        _ => Err(invalid("target", "set one of earliest: true, latest: true, time, or a non-empty offsets list")),
    }
}

/// A List call's page size: 0 means the default, past the maximum is refused.
pub fn page_size(requested: u32) -> Result<usize, Status> {
    match requested {
        0 => Ok(PAGE_SIZE_DEFAULT as usize),
        n if n <= PAGE_SIZE_MAX => Ok(n as usize),
        n => Err(invalid("page_size", format!("{n}; allowed is 1 to {PAGE_SIZE_MAX} (0 = {PAGE_SIZE_DEFAULT})"))),
    }
}

/// An empty page token means the first page.
pub fn page_token(token: &str) -> Option<&str> {
    (!token.is_empty()).then_some(token)
}

/// A topic as the admin API shows it: its partitions with their start and end offsets,
/// its subscriptions, and its dedupe window.
pub fn topic(info: TopicInfo) -> pb::Topic {
    pb::Topic {
        name: info.name,
        partitions: info.partitions.len() as u32,
        partition_info: info
            .partitions
            .into_iter()
            .map(|p| pb::PartitionInfo {
                partition: p.partition,
                start_offset: p.start_offset,
                end_offset: p.end_offset,
                damaged: p.damaged.into_iter().map(|r| pb::OffsetRange { first: r.start, end: r.end }).collect(),
            })
            .collect(),
        subscriptions: info.subscriptions,
        dedupe_window: Some(duration(info.dedupe_window_ms)),
    }
}

/// A subscription as the admin API shows it; the ack deadline is rounded down to whole
/// seconds, and unset policies stay unset.
pub fn subscription(info: SubscriptionInfo) -> pb::Subscription {
    pb::Subscription {
        name: info.name,
        topic: info.topic,
        ack_deadline_seconds: (info.ack_deadline_ms / 1000) as u32,
        start_position: start_position_pb(info.start).into(),
        ephemeral: info.ephemeral,
        retry_policy: info.retry.map(retry_policy_pb),
        dead_letter_policy: info.dead_letter.map(dead_letter_policy_pb),
        enable_message_ordering: info.ordered,
        delivery_mode: delivery_mode_pb(info.delivery_mode).into(),
    }
}

/// A subscription's stats as the admin API shows them, per partition too; `member` is
/// empty on a shared subscription, and on an exclusive one's partition nobody holds.
pub fn subscription_stats(stats: SubscriptionStats) -> pb::SubscriptionStats {
    pb::SubscriptionStats {
        name: stats.name,
        topic: stats.topic,
        backlog: stats.backlog,
        outstanding: stats.outstanding,
        streams: stats.streams,
        dead_lettered: stats.dead_lettered,
        delayed: stats.delayed,
        oldest_unacked_age: stats.oldest_unacked_age_ms.map(duration),
        generation: stats.generation,
        partitions: stats
            .partitions
            .into_iter()
            .map(|p| pb::PartitionStats {
                partition: p.partition,
                committed_offset: p.committed_offset,
                end_offset: p.end_offset,
                backlog: p.backlog,
                outstanding: p.outstanding,
                lag: p.lag,
                delayed: p.delayed,
                member: p.member.map(|m| m.to_string()).unwrap_or_default(),
            })
            .collect(),
    }
}

/// A ListPending page token: `partition-offset` of the last row of the previous page.
pub fn pending_token(token: &str) -> Result<Option<(u32, u64)>, Status> {
    if token.is_empty() {
        return Ok(None);
    }
    let parsed = token.split_once('-').and_then(|(p, o)| Some((p.parse().ok()?, o.parse().ok()?)));
    parsed.map(Some).ok_or_else(|| invalid("page_token", format!("{} is not a token this server gave", quoted(token))))
}

/// The ListPending page token after a page: `partition-offset` of its last row, or empty
/// when there is no next page.
pub fn pending_token_of(position: Option<(u32, u64)>) -> String {
    position.map(|(p, o)| format!("{p}-{o}")).unwrap_or_default()
}

/// A pending row; times in the core's monotonic clock become wall-clock timestamps.
pub fn pending_message(m: PendingMessage, wall_ms: u64) -> pb::PendingMessage {
    let mut row = pb::PendingMessage {
        message_id: m.message_id,
        partition: m.partition,
        offset: m.offset,
        delivery_attempt: m.delivery_attempts,
        ..Default::default()
    };
    let state = match m.state {
        PendingState::Leased { stream, expires_in_ms } => {
            row.member = match (stream, &m.client_id) {
                (Some(stream), _) => stream.to_string(),
                (None, Some(client_id)) => format!("detached:{client_id}"),
                (None, None) => "pull".to_string(),
            };
            row.lease_expiry = Some(timestamp(wall_ms.saturating_add(expires_in_ms)));
            pb::PendingState::Leased
        }
        PendingState::Backoff { ready_in_ms } => {
            row.retry_time = Some(timestamp(wall_ms.saturating_add(ready_in_ms)));
            pb::PendingState::Backoff
        }
        PendingState::Ready => pb::PendingState::Ready,
        PendingState::DeadLettering => pb::PendingState::DeadLettering,
        PendingState::KeyBlocked => pb::PendingState::KeyBlocked,
    };
    row.state = state.into();
    row
}

/// One redriven dead letter: `redriven` when it went back to its source subscription,
/// else `error` says why not.
pub fn redrive_result(r: Redriven) -> pb::RedriveResult {
    pb::RedriveResult {
        message_id: r.message_id,
        source_subscription: r.source_subscription,
        partition: r.partition,
        offset: r.offset,
        redriven: r.outcome.is_ok(),
        error: r.outcome.err().unwrap_or_default(),
    }
}
