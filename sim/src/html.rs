//! A run as a picture: one self-contained HTML page (no network, no external script,
//! style or font) with a lane per host, publishes, deliveries and acks as marks, faults
//! as bands over the lanes they cut, crashes and restarts, and the verdict. Clicking a
//! message's mark (or a failed check's message) highlights that message's whole life:
//! its publish, every attempt, its ack or dead letter.
//!
//! The page is written from the run's report: the data goes in as JSON, and a small
//! script draws it into SVG.

use std::fmt::Write;

use crate::history::{trace_line, Entry, Event};
use crate::runner::Report;
use mini_pubsub::core::Notice;

/// The page for `report`, a run of the scenario named `name` (whose replay command is
/// `replay`).
pub fn page(name: &str, report: &Report, replay: &str) -> String {
    let mut data = String::new();
    let _ = write!(data, "{{\"name\":{},\"seed\":{},", json(name), report.seed);
    let _ = write!(data, "\"passed\":{},\"end\":{},", report.passed, report.simulated.as_millis());
    let _ = write!(data, "\"replay\":{},\"lanes\":{},", json(replay), json_list(&lanes(&report.entries)));
    data.push_str("\"events\":[");
    let marks: Vec<String> = report.entries.iter().filter_map(mark).collect();
    data.push_str(&marks.join(","));
    data.push_str("],\"spans\":[");
    let spans: Vec<String> = report
        .spans
        .iter()
        .map(|s| {
            format!(
                "{{\"text\":{},\"hosts\":{},\"from\":{},\"to\":{}}}",
                json(&s.text),
                json_list(&s.hosts),
                s.from_ms,
                s.to_ms
            )
        })
        .collect();
    data.push_str(&spans.join(","));
    data.push_str("],\"checks\":[");
    let checks: Vec<String> = report
        .checks
        .iter()
        .map(|c| {
            format!(
                "{{\"name\":{},\"passed\":{},\"detail\":{},\"ids\":{}}}",
                json(c.name),
                c.passed,
                json(&c.detail),
                json_list(&c.ids)
            )
        })
        .collect();
    data.push_str(&checks.join(","));
    let _ = write!(data, "],\"verdict\":{},\"trace\":{}}}", json(&report.verdict), json(&report.trace));
    // `</` inside a script element would end it early.
    let data = data.replace("</", "<\\/");
    let title = escape(&format!("{name}, seed {}: {}", report.seed, if report.passed { "PASS" } else { "FAIL" }));
    TEMPLATE.replace("{{TITLE}}", &title).replace("{{DATA}}", &data)
}

/// The hosts, in lane order: brokers, the admin host, the apps as they first appear, and
/// the driver (faults and expectations) last.
fn lanes(entries: &[Entry]) -> Vec<String> {
    let mut hosts: Vec<String> = Vec::new();
    for e in entries {
        if !hosts.contains(&e.host) {
            hosts.push(e.host.clone());
        }
    }
    let rank = |h: &str| match h {
        h if h.starts_with("broker") => 0,
        "admin" => 1,
        "driver" => 3,
        _ => 2,
    };
    hosts.sort_by_key(|h| rank(h));
    hosts
}

/// One drawn event: when, where, what kind, its full trace line, and the message it is
/// about (the scenario's id), if any.
fn mark(entry: &Entry) -> Option<String> {
    let (kind, id): (&str, Option<&str>) = match &entry.event {
        Event::PublishInvoked { attempt: 1, .. } => return None,
        Event::PublishInvoked { id, .. } => ("retry", Some(id)),
        Event::Published { id, duplicate: true, .. } => ("duplicate", Some(id)),
        Event::Published { id, .. } => ("publish", Some(id)),
        Event::PublishFailed { id, .. } => ("failed", Some(id)),
        Event::Delivered { id, dead_letter: Some(_), .. } => ("dead", Some(id)),
        Event::Delivered { id, attempt: 1, .. } => ("deliver", Some(id)),
        Event::Delivered { id, .. } => ("redeliver", Some(id)),
        Event::AckAnswered { id, op, result, .. } if op == "ack" && result == "applied" => ("ack", Some(id)),
        Event::AckAnswered { id, .. } => ("answer", Some(id)),
        Event::AckSent { .. } | Event::Checkpoint => return None,
        // Every stored message, on every broker: the checker's, too many to draw.
        Event::Broker(Notice::Appended { .. } | Notice::FloorRaised { .. }) => return None,
        Event::Cluster { .. } | Event::SnapshotInstalled { .. } => ("broker", None),
        Event::ReplicaSeeked { .. } | Event::ReplicaRedriven { .. } => return None,
        Event::Redriven { .. } | Event::AdminAnswered { .. } => ("admin", None),
        Event::StreamOpened { .. } | Event::Assigned { .. } => ("stream", None),
        Event::StreamFailed { .. } => ("ended", None),
        Event::Crashed { .. } => ("crash", None),
        Event::Restarted { .. } => ("restart", None),
        Event::Broker(_) | Event::ReadFailed { .. } | Event::Damaged { .. } => ("broker", None),
        Event::InvariantBroken { .. } => ("broken", None),
        Event::Step { .. } => ("step", None),
    };
    let text = trace_line(entry, true)?;
    let id = id.map_or_else(|| "null".to_string(), json);
    // A crash and a restart are drawn on the host that went down, not the driver's lane.
    let host = match &entry.event {
        Event::Crashed { host } | Event::Restarted { host } => host,
        _ => &entry.host,
    };
    Some(format!(
        "{{\"t\":{},\"host\":{},\"kind\":\"{kind}\",\"id\":{id},\"text\":{}}}",
        entry.at_ms,
        json(host),
        json(&text)
    ))
}

/// Whether `entry` is drawn as a mark (the rest are in the trace only).
pub fn drawn(entry: &Entry) -> bool {
    mark(entry).is_some()
}

/// A JSON string.
fn json(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn json_list(items: &[String]) -> String {
    format!("[{}]", items.iter().map(|i| json(i)).collect::<Vec<_>>().join(","))
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// The page: styles, the drawing script and the slots for the title and the data.
const TEMPLATE: &str = include_str!("html/page.html");

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_strings_are_escaped() {
        assert_eq!(json("a \"b\"\\\n\u{1}"), "\"a \\\"b\\\"\\\\\\n\\u0001\"");
        assert_eq!(json_list(&["x".into(), "y".into()]), "[\"x\",\"y\"]");
    }
}
