//! How the client commands print messages, topics, subscriptions and stats.

use std::fmt::Write;

use base64::Engine;
use serde_json::{json, Map, Value};

use mini_pubsub::client::{pb, Message};

/// `partition=0 offset=3 attempt=1 key=user-7 value=hello`: the value as UTF-8 (invalid
/// bytes replaced), with backslashes and control characters escaped so that a message is
/// always one line.
pub fn message_line(m: &Message) -> String {
    let mut line = format!("partition={} offset={} attempt={}", m.partition, m.offset, m.delivery_attempt);
    if let Some(key) = &m.key {
        let _ = write!(line, " key={}", escape(key));
    }
    let _ = write!(line, " value={}", escape(&m.value_lossy()));
    line
}

fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => out.extend(c.escape_default()),
            c => out.push(c),
        }
    }
    out
}

/// One JSON object: `value` holds the value as a string when it is valid UTF-8; otherwise
/// `value_base64` holds it in standard base64 and `value` is absent. Absent key or
/// idempotency key are `null`.
pub fn message_json(subscription: &str, m: &Message, ack_id: &str) -> String {
    let mut object = Map::new();
    object.insert("subscription".into(), json!(subscription));
    object.insert("message_id".into(), json!(m.message_id));
    object.insert("topic".into(), json!(m.topic));
    object.insert("partition".into(), json!(m.partition));
    object.insert("offset".into(), json!(m.offset));
    object.insert("key".into(), json!(m.key));
    match std::str::from_utf8(&m.value) {
        Ok(text) => object.insert("value".into(), json!(text)),
        Err(_) => {
            object.insert("value_base64".into(), json!(base64::engine::general_purpose::STANDARD.encode(&m.value)))
        }
    };
    object.insert("attributes".into(), json!(m.attributes));
    let publish_time = m.publish_time.map(|t| prost_types::Timestamp::from(t).to_string());
    object.insert("publish_time".into(), json!(publish_time));
    object.insert("delivery_attempt".into(), json!(m.delivery_attempt));
    object.insert("idempotency_key".into(), json!(m.idempotency_key));
    object.insert("ack_id".into(), json!(ack_id));
    Value::Object(object).to_string()
}

/// A topic, one `name: value` line per field and one line per partition.
pub fn topic(t: &pb::Topic) -> String {
    let mut out = format!("topic: {}\npartitions: {}\n", t.name, t.partitions);
    if let Some(window) = &t.dedupe_window {
        let _ = writeln!(out, "dedupe_window: {window}");
    }
    for p in &t.partition_info {
        let _ = writeln!(out, "partition {}: start_offset={} end_offset={}", p.partition, p.start_offset, p.end_offset);
    }
    let _ = write!(out, "subscriptions: {}", list(&t.subscriptions));
    out
}

/// A topic in one line, for `topic list`.
pub fn topic_summary(t: &pb::Topic) -> String {
    let messages: u64 = t.partition_info.iter().map(|p| p.end_offset - p.start_offset).sum();
    format!("{} partitions={} messages={} subscriptions={}", t.name, t.partitions, messages, list(&t.subscriptions))
}

fn list(names: &[String]) -> String {
    if names.is_empty() {
        "-".to_string()
    } else {
        names.join(",")
    }
}

/// A subscription's settings, one `name: value` line each.
pub fn subscription(s: &pb::Subscription) -> String {
    let mut out = format!("subscription: {}\ntopic: {}\n", s.name, s.topic);
    let _ = writeln!(out, "ack_deadline_seconds: {}", s.ack_deadline_seconds);
    let _ = writeln!(out, "start_position: {}", start_position(s.start_position));
    let _ = writeln!(out, "delivery_mode: {}", delivery_mode(s.delivery_mode));
    let _ = writeln!(out, "message_ordering: {}", s.enable_message_ordering);
    match &s.retry_policy {
        Some(p) => {
            let _ = writeln!(
                out,
                "retry_policy: minimum_backoff={} maximum_backoff={}",
                opt(&p.minimum_backoff),
                opt(&p.maximum_backoff)
            );
        }
        None => out.push_str("retry_policy: none (redelivered at once)\n"),
    }
    match &s.dead_letter_policy {
        Some(p) => {
            let _ = writeln!(
                out,
                "dead_letter_policy: topic={} max_delivery_attempts={}",
                p.dead_letter_topic, p.max_delivery_attempts
            );
        }
        None => out.push_str("dead_letter_policy: none\n"),
    }
    let _ = write!(out, "ephemeral: {}", s.ephemeral);
    out
}

/// A subscription in one line, for `sub list`.
pub fn subscription_summary(s: &pb::Subscription) -> String {
    format!(
        "{} topic={} ack_deadline_seconds={} delivery_mode={}",
        s.name,
        s.topic,
        s.ack_deadline_seconds,
        delivery_mode(s.delivery_mode)
    )
}

/// A subscription's stats, one `name: value` line each and one line per partition.
pub fn stats(s: &pb::SubscriptionStats) -> String {
    let mut out = format!("subscription: {}\ntopic: {}\n", s.name, s.topic);
    let _ = writeln!(out, "backlog: {}\noutstanding: {}\ndelayed: {}", s.backlog, s.outstanding, s.delayed);
    let _ = writeln!(out, "dead_lettered: {}\nstreams: {}", s.dead_lettered, s.streams);
    let _ = writeln!(out, "oldest_unacked_age: {}", opt(&s.oldest_unacked_age));
    if s.generation != 0 {
        let _ = writeln!(out, "generation: {}", s.generation);
    }
    for p in &s.partitions {
        let _ = write!(
            out,
            "partition {}: committed_offset={} end_offset={} lag={} backlog={} outstanding={} delayed={}",
            p.partition, p.committed_offset, p.end_offset, p.lag, p.backlog, p.outstanding, p.delayed
        );
        if !p.member.is_empty() {
            let _ = write!(out, " member={}", p.member);
        }
        out.push('\n');
    }
    out.pop();
    out
}

fn opt(d: &Option<prost_types::Duration>) -> String {
    d.as_ref().map_or_else(|| "-".to_string(), ToString::to_string)
}

fn start_position(value: i32) -> &'static str {
    match pb::StartPosition::try_from(value) {
        Ok(pb::StartPosition::Latest) => "latest",
        Ok(_) => "earliest",
        Err(_) => "unknown",
    }
}

fn delivery_mode(value: i32) -> &'static str {
    match pb::DeliveryMode::try_from(value) {
        Ok(pb::DeliveryMode::Exclusive) => "exclusive",
        Ok(_) => "shared",
        Err(_) => "unknown",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_and_backslashes_are_escaped_to_keep_one_line() {
        assert_eq!(escape("a\nb\\c\td"), "a\\nb\\\\c\\td");
        assert_eq!(escape("héllo"), "héllo");
    }
}
