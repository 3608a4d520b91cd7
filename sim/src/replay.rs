//! `mini-pubsub-sim replay DIR`: a flight recording (`mini-pubsub serve --record DIR`)
//! applied again to a fresh broker core. Every reply and every command's outputs are
//! compared, by digest, with what the recorded broker produced, and the final state with
//! the digest it recorded when it stopped. What the replay shows becomes a history, as a
//! scenario run's: the trace is printed from it and the checker's safety checks read it
//! (a recording has no final drain, so lost, conservation and liveness cannot be judged).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use mini_pubsub::core::{
    AckOp, AckOutcome, Answer, Command, Delivery, Output, StreamId, StreamTarget, ATTR_MESSAGE_ID, ATTR_REASON,
    ATTR_SOURCE_SUBSCRIPTION,
};
use mini_pubsub::env::StdFs;
use mini_pubsub::record::{self, Recording, Replayed, Replayer};

use crate::checker::{self, Check};
use crate::history::{render, DeadLetter, Entry, Event};

/// What a replay found.
pub struct ReplayReport {
    /// The trace, as a scenario run prints it.
    pub trace: String,
    pub entries: Vec<Entry>,
    pub steps: usize,
    /// Entries whose reply differed from the recorded one: (seq, command name).
    pub reply_mismatches: Vec<(u64, &'static str)>,
    /// Entries whose outputs differed from the recorded ones.
    pub output_mismatches: Vec<(u64, &'static str)>,
    /// The final state's digest matched the recorded one (`None`: the recording has no
    /// end, its broker did not stop cleanly).
    pub state_matches: Option<bool>,
    /// Where the recording was cut short (a torn last frame).
    pub cut: Option<String>,
    pub checks: Vec<Check>,
}

impl ReplayReport {
    /// Every reply, every output and the final state as recorded, and every check passed.
    pub fn passed(&self) -> bool {
        self.reply_mismatches.is_empty()
            && self.output_mismatches.is_empty()
            && self.state_matches != Some(false)
            && self.checks.iter().all(|c| c.passed)
    }

    /// The verdict lines printed after the trace.
    pub fn verdict(&self) -> String {
        let mut out = format!("replayed {} commands\n", self.steps);
        let list = |v: &[(u64, &str)]| v.iter().take(10).map(|(s, n)| format!("#{s} {n}")).collect::<Vec<_>>();
        match self.reply_mismatches.len() {
            0 => out.push_str("replies: every one as recorded\n"),
            n => out.push_str(&format!(
                "replies: {n} differ from the recording: {}\n",
                list(&self.reply_mismatches).join(", ")
            )),
        }
        match self.output_mismatches.len() {
            0 => out.push_str("outputs: every command's as recorded\n"),
            n => out.push_str(&format!(
                "outputs: {n} differ from the recording: {}\n",
                list(&self.output_mismatches).join(", ")
            )),
        }
        out.push_str(match self.state_matches {
            Some(true) => "final state: as recorded\n",
            Some(false) => "final state: differs from the recording\n",
            None => "final state: not recorded (the broker did not stop cleanly)\n",
        });
        if let Some(cut) = &self.cut {
            out.push_str(&format!("the recording ends early: {cut}\n"));
        }
        out.push_str("checks (safety only: a recording has no final drain):\n");
        for check in &self.checks {
            let verdict = if check.passed { "ok" } else { "FAIL" };
            out.push_str(&format!("  {:<24} {verdict:<4} {}\n", check.name, check.detail));
        }
        out.push_str(if self.passed() { "PASS\n" } else { "FAIL\n" });
        out
    }
}

/// Replays the recording in `dir`; the broker's file log, when it had one, is rebuilt in
/// a fresh directory under the system's temporary directory and removed afterwards.
pub fn replay_dir(dir: &Path) -> Result<ReplayReport, String> {
    let recording = record::read_dir(&StdFs, dir).map_err(|e| e.to_string())?;
    let scratch = scratch_dir();
    let result = replay(&recording, &scratch);
    let _ = std::fs::remove_dir_all(&scratch);
    result
}

/// A directory under the system's temporary directory that does not exist yet.
fn scratch_dir() -> PathBuf {
    let base = std::env::temp_dir();
    (0..u32::MAX)
        .map(|n| base.join(format!("mini-pubsub-replay-{}-{n}", std::process::id())))
        .find(|dir| !dir.exists())
        .expect("a free temporary directory name")
}

/// Replays `recording`, a file log (if the recorded broker had one) in `scratch`.
pub fn replay(recording: &Recording, scratch: &Path) -> Result<ReplayReport, String> {
    let config = Replayer::settings(recording).map_err(|e| e.to_string())?;
    let storage = Replayer::storage(&config, Arc::new(StdFs), scratch).map_err(|e| e.to_string())?;
    let mut replayer = Replayer::new(recording, storage, true).map_err(|e| e.to_string())?;
    let origin = recording.steps.first().map_or(0, |s| s.at.now_ms);
    let mut history = Replay::default();
    let (mut reply_mismatches, mut output_mismatches) = (Vec::new(), Vec::new());
    for step in &recording.steps {
        let replayed = replayer.apply(step);
        let at_ms = step.at.now_ms.saturating_sub(origin);
        if !replayed.reply_matches {
            reply_mismatches.push((step.seq, step.command.name()));
        }
        if !replayed.outputs_match {
            output_mismatches.push((step.seq, step.command.name()));
        }
        let notices: Vec<_> = std::iter::from_fn(|| replayer.poll_notice()).collect();
        history.step(at_ms, replayed, notices);
    }
    let state_matches = recording.end.map(|end| replayer.state_digest(end.now_ms) == end.state_digest);
    let context = checker::Context {
        dedupe_window_ms: config.server.broker.dedupe_window_ms,
        ordered: history.ordered.clone(),
        ack_deadlines_ms: history.ack_deadlines.clone(),
        ..checker::Context::default()
    };
    let checks = checker::check_safety(&history.entries, &context);
    Ok(ReplayReport {
        trace: render(&history.entries, false),
        steps: recording.steps.len(),
        entries: history.entries,
        reply_mismatches,
        output_mismatches,
        state_matches,
        cut: recording.cut.clone(),
        checks,
    })
}

/// A lease as the replay saw it delivered.
#[derive(Debug, Clone)]
struct Leased {
    id: String,
    message_id: String,
    sub: String,
    partition: u32,
    offset: u64,
    attempt: u32,
}

/// The history a replay builds, and what it must remember to build it.
#[derive(Default)]
struct Replay {
    entries: Vec<Entry>,
    /// Each open stream's subscription.
    streams: BTreeMap<StreamId, String>,
    /// Every lease delivered, by ack id.
    leases: BTreeMap<String, Leased>,
    ordered: BTreeSet<String>,
    ack_deadlines: BTreeMap<String, u64>,
}

impl Replay {
    fn push(&mut self, at_ms: u64, host: &str, event: Event) {
        self.entries.push(Entry { at_ms, host: host.to_string(), event });
    }

    /// What one command did: its request and answer, then what the broker noticed, then
    /// its outputs (the broker notices a seek before the deliveries it causes).
    fn step(&mut self, at_ms: u64, replayed: Replayed, notices: Vec<mini_pubsub::core::Notice>) {
        let Replayed { seq, command, reply, outputs, .. } = replayed;
        self.command(at_ms, seq, command, reply);
        for notice in notices {
            self.push(at_ms, "broker", Event::Broker(notice));
        }
        for output in outputs {
            self.output(at_ms, output);
        }
    }

    /// What a client saw of a command: its publish results, its confirmations, its
    /// stream's opening, its pull's deliveries, an admin answer.
    fn command(&mut self, at_ms: u64, seq: u64, command: Command, reply: mini_pubsub::core::Reply) {
        match (command, reply) {
            (Command::Publish { topic, messages }, Ok(Answer::Published(published))) => {
                for (message, place) in messages.iter().zip(published) {
                    let id = message.attributes.get("id").cloned().unwrap_or_else(|| place.message_id.clone());
                    self.push(
                        at_ms,
                        "publisher",
                        Event::PublishInvoked {
                            id: id.clone(),
                            topic: topic.clone(),
                            attempt: 1,
                            after: None,
                            publisher: None,
                        },
                    );
                    self.push(
                        at_ms,
                        "publisher",
                        Event::Published {
                            id,
                            message_id: place.message_id,
                            topic: topic.clone(),
                            partition: place.partition,
                            offset: place.offset,
                            idempotency_key: message.idempotency_key.clone(),
                            duplicate: place.duplicate,
                        },
                    );
                }
            }
            (Command::Publish { .. }, Err(refused)) => {
                let code = format!("{:?}", mini_pubsub::wire::status_of(&refused).code());
                self.push(at_ms, "publisher", Event::PublishFailed { id: format!("#{seq}"), code, definite: true });
            }
            (Command::CreateSubscription(spec), Ok(Answer::Subscription(info))) => {
                if spec.ordered {
                    self.ordered.insert(info.name.clone());
                }
                self.ack_deadlines.insert(info.name.clone(), info.ack_deadline_ms);
                self.admin(at_ms, "create-subscription", Ok(info.name));
            }
            (Command::OpenStream { target, flow, .. }, Ok(Answer::Opened { stream, subscription, confirmations })) => {
                if let StreamTarget::Topic { ack_deadline_ms, .. } = target {
                    self.ack_deadlines.insert(subscription.clone(), ack_deadline_ms.unwrap_or(10_000));
                }
                self.streams.insert(stream, subscription.clone());
                let host = host_of(stream);
                let max = flow.max_outstanding_messages;
                self.push(at_ms, &host, Event::StreamOpened { sub: subscription, stream: stream.0, max });
                self.confirmations(at_ms, &host, confirmations.unwrap_or_default());
            }
            (Command::StreamRequest { stream, ops }, Ok(Answer::Confirmations(replies))) => {
                self.sent(at_ms, &host_of(stream), &ops);
                self.confirmations(at_ms, &host_of(stream), replies);
            }
            (Command::CloseStream { stream } | Command::LeaveStream { stream }, _) => {
                self.streams.remove(&stream);
            }
            (Command::Pull { subscription, .. }, Ok(Answer::Deliveries(deliveries))) => {
                for delivery in deliveries {
                    self.delivered(at_ms, "pull", &subscription, seq, delivery);
                }
            }
            (Command::Acks { op, ack_ids, .. }, Ok(Answer::Confirmations(replies))) => {
                self.sent(at_ms, "acks", &[(op, ack_ids)]);
                self.confirmations(at_ms, "acks", replies);
            }
            (Command::Checkpoint, Ok(Answer::Checkpointed { saved: true })) => {
                self.push(at_ms, "broker", Event::Checkpoint)
            }
            (
                command @ (Command::CreateTopic { .. }
                | Command::DeleteTopic { .. }
                | Command::DeleteSubscription { .. }
                | Command::Seek { .. }
                | Command::Redrive { .. }),
                reply,
            ) => self.admin(at_ms, command.name(), reply.map(|_| "done".to_string())),
            _ => {}
        }
    }

    /// What a stream's client saw of an output.
    fn output(&mut self, at_ms: u64, output: Output) {
        match output {
            Output::Deliver { stream, deliveries } => {
                let sub = self.streams.get(&stream).cloned().unwrap_or_default();
                for delivery in deliveries {
                    self.delivered(at_ms, &host_of(stream), &sub, stream.0, delivery);
                }
            }
            Output::Assignment { stream, generation, partitions } => {
                let sub = self.streams.get(&stream).cloned().unwrap_or_default();
                self.push(at_ms, &host_of(stream), Event::Assigned { sub, stream: stream.0, generation, partitions });
            }
            Output::EndStream { stream, reason } => {
                let sub = self.streams.remove(&stream).unwrap_or_default();
                let code = format!("{:?}", mini_pubsub::wire::status_of(&reason).code());
                self.push(at_ms, &host_of(stream), Event::StreamFailed { sub, stream: stream.0, code });
            }
            Output::ReadFailed { topic, partition, offset, error } => {
                self.push(at_ms, "broker", Event::ReadFailed { topic, partition, offset, error: error.to_string() });
            }
            Output::Damaged { topic, partition, offsets } => {
                let (first, end) = (offsets.start, offsets.end);
                self.push(at_ms, "broker", Event::Damaged { topic, partition, first, end });
            }
        }
    }

    fn admin(&mut self, at_ms: u64, what: &str, answer: Result<String, mini_pubsub::core::BrokerError>) {
        let (refused, detail) = match answer {
            Ok(detail) => (None, detail),
            Err(e) => (Some("refused".to_string()), e.to_string()),
        };
        self.push(at_ms, "admin", Event::AdminAnswered { what: what.to_string(), refused, detail });
    }

    fn delivered(&mut self, at_ms: u64, host: &str, sub: &str, stream: u64, d: Delivery) {
        let record = &d.record;
        let id = record.attributes.get("id").cloned().unwrap_or_else(|| d.message_id.clone());
        let attribute = |name: &str| record.attributes.get(name).cloned();
        let dead_letter = attribute(ATTR_SOURCE_SUBSCRIPTION).map(|from| DeadLetter {
            from,
            reason: attribute(ATTR_REASON).unwrap_or_default(),
            original: attribute(ATTR_MESSAGE_ID).unwrap_or_default(),
        });
        let lease = d.ack_id.rsplit('-').next().and_then(|seq| seq.parse().ok()).unwrap_or(0);
        self.leases.insert(
            d.ack_id.clone(),
            Leased {
                id: id.clone(),
                message_id: d.message_id.clone(),
                sub: sub.to_string(),
                partition: d.partition,
                offset: d.offset,
                attempt: d.delivery_attempt,
            },
        );
        self.push(
            at_ms,
            host,
            Event::Delivered {
                id,
                message_id: d.message_id,
                sub: sub.to_string(),
                stream,
                partition: d.partition,
                offset: d.offset,
                attempt: d.delivery_attempt,
                value: String::from_utf8_lossy(&record.value).into_owned(),
                dead_letter,
                key: record.key.clone(),
                idempotency_key: record.idempotency_key.clone(),
                publish_ms: record.publish_time_ms,
                generation: d.generation,
                lease,
            },
        );
    }

    /// The acks and nacks a client sent (deadline changes are not in the history).
    fn sent(&mut self, at_ms: u64, host: &str, ops: &[(AckOp, Vec<String>)]) {
        for (op, ids) in ops {
            let Some(op) = op_name(op) else { continue };
            for ack_id in ids {
                let Some(l) = self.leases.get(ack_id).cloned() else { continue };
                let Leased { id, message_id, sub, partition, offset, attempt } = l;
                let op = op.to_string();
                self.push(at_ms, host, Event::AckSent { id, message_id, sub, op, partition, offset, attempt });
            }
        }
    }

    fn confirmations(&mut self, at_ms: u64, host: &str, replies: Vec<mini_pubsub::core::AckReply>) {
        for reply in replies {
            let Some(op) = op_name(&reply.op) else { continue };
            let Some(l) = self.leases.get(&reply.ack_id).cloned() else { continue };
            let result = match reply.outcome {
                AckOutcome::Applied => "applied",
                AckOutcome::Invalid => "invalid",
                AckOutcome::Expired => "expired",
            };
            let Leased { id, message_id, sub, partition, offset, attempt } = l;
            let (op, result) = (op.to_string(), result.to_string());
            self.push(at_ms, host, Event::AckAnswered { id, message_id, sub, op, partition, offset, attempt, result });
        }
    }
}

fn op_name(op: &AckOp) -> Option<&'static str> {
    match op {
        AckOp::Ack => Some("ack"),
        AckOp::Nack { .. } => Some("nack"),
        AckOp::ModifyDeadline { .. } => None,
    }
}

/// The host a stream's events are shown on.
fn host_of(stream: StreamId) -> String {
    format!("stream-{}", stream.0)
}
