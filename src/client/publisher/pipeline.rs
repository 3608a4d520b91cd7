//! The publisher's sending task: batches go on one PublishStream, up to
//! `batches_in_flight` unanswered, and are answered in the order they were sent.
//!
//! Order across a failure: the broker stores a stream's batches in the order they arrive,
//! and once it refuses one in a way this task answers by sending it again (a retryable
//! status, or one refused message taken out of it), it applies none after it on that stream
//! (`BrokerError::BatchAfterRefused`). So when the stream breaks or such a refusal comes,
//! this task drops the stream and sends every unanswered batch again, first to last, on a
//! new one, with the same idempotency keys: a batch the broker had stored is answered from
//! its dedupe index (`duplicate: true`, at its first place), and one it had not is stored
//! after those. Nothing is stored twice and nothing is stored out of order.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit};
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;
use tracing::debug;

use super::batcher::{Batch, Item};
use super::{Counters, PublisherSettings, Queued};
use crate::client::error::{is_retryable, ClientError};
use crate::client::message::PublishResult;
use crate::client::{Client, Moved};
use crate::env::{Clock, TokioClock};
use crate::wire::client_codec::{self as codec, StreamAnswer, StreamBatch};

/// The wait between attempts that follow a cluster's leadership: this many steps of the
/// backoff (100 ms by default). An election takes a fraction of a second, and a grown wait
/// would be paid on top of it (the failover bench measured 1.5 to 1.9 s with 400 ms).
const FOLLOW_BACKOFF_STEPS: u32 = 1;

pub(super) struct Pipeline {
    /// Where streams go: the broker the client sends to now.
    pub(super) client: Client,
    pub(super) topic: String,
    pub(super) settings: PublisherSettings,
    pub(super) counters: Arc<Counters>,
    pub(super) clock: TokioClock,
}

/// A batch handed to the pipeline and not yet answered.
struct InFlight {
    sequence: u64,
    messages: Vec<Queued>,
    bytes: usize,
    /// The `PublishRequest`, encoded once (again only if a refused message is taken out).
    publish: Bytes,
    /// When its oldest message was queued (monotonic ms): its retry budget counts from here.
    queued_ms: u64,
    /// When it was last sent (monotonic ms), if it was sent on the open stream.
    sent_ms: Option<u64>,
    /// Sends, the first included.
    attempts: u32,
    /// Sends that followed the cluster's leadership (not counted against `max_attempts`).
    followed: u32,
    /// Why the last send failed.
    last: Option<Status>,
    /// Flushes that wait for this batch.
    flushes: Vec<oneshot::Sender<()>>,
    /// Its place in the window, given back when it is answered.
    _permit: OwnedSemaphorePermit,
}

/// The open stream.
struct Open {
    /// The broker it went to (for [`Client::observe`]).
    used: usize,
    batches: mpsc::Sender<StreamBatch>,
    answers: tonic::Streaming<StreamAnswer>,
}

/// What woke the pipeline while a stream was open.
enum Event {
    Answer(Result<Option<StreamAnswer>, Status>),
    Item(Option<Item>),
    /// The front batch's answer is overdue.
    Overdue,
}

impl Pipeline {
    /// Runs until the gatherer is gone and every batch it handed over is answered.
    pub(super) async fn run(self, mut items: mpsc::Receiver<Item>) {
        let mut unanswered: VecDeque<InFlight> = VecDeque::new();
        let mut stream: Option<Open> = None;
        // Sequence numbers count from 1 (0 is not written on the wire).
        let mut next_sequence = 1u64;
        let mut receiving = true;
        // Each round handles one answer, one item, or one failure; every failure answers a
        // batch or waits a backoff step, and the retry budget bounds the waits.
        loop {
            if !receiving && unanswered.is_empty() {
                return;
            }
            if stream.is_none() && !unanswered.is_empty() {
                stream = self.open(&mut unanswered).await;
                continue;
            }
            let event = match stream.as_mut() {
                Some(open) => {
                    let due = unanswered.front().and_then(|front| self.due(front));
                    let overdue = async {
                        match due {
                            Some(due) => tokio::time::sleep(due).await,
                            None => std::future::pending().await,
                        }
                    };
                    tokio::select! {
                        biased;
                        answer = open.answers.message() => Event::Answer(answer),
                        item = items.recv(), if receiving => Event::Item(item),
                        () = overdue => Event::Overdue,
                    }
                }
                None => Event::Item(items.recv().await),
            };
            match event {
                Event::Item(None) => receiving = false,
                Event::Item(Some(Item::Flush(done))) => match unanswered.back_mut() {
                    Some(last) => last.flushes.push(done),
                    None => {
                        let _ = done.send(());
                    }
                },
                Event::Item(Some(Item::Batch(batch, permit))) => {
                    let mut batch = self.in_flight(batch, permit, next_sequence);
                    next_sequence += 1;
                    if let Some(open) = &stream {
                        self.send(&open.batches, &mut batch);
                    }
                    unanswered.push_back(batch);
                }
                Event::Answer(Ok(Some(answer))) => {
                    let used = stream.as_ref().map_or(0, |open| open.used);
                    if !self.answered(answer, &mut unanswered, used).await {
                        stream = None;
                    }
                }
                // The stream ended (with a status, or none): its unanswered batches go again.
                Event::Answer(ended) => {
                    let used = stream.take().map_or(0, |open| open.used);
                    if !unanswered.is_empty() {
                        let status = ended.err().unwrap_or_else(|| {
                            Status::unavailable("the broker ended the publish stream with batches unanswered")
                        });
                        self.failed(&mut unanswered, status, used).await;
                    }
                }
                Event::Overdue => {
                    let used = stream.take().map_or(0, |open| open.used);
                    self.failed(&mut unanswered, self.no_answer(), used).await;
                }
            }
        }
    }

    fn in_flight(&self, batch: Batch, permit: OwnedSemaphorePermit, sequence: u64) -> InFlight {
        let publish = self.encode(&batch.messages, batch.bytes);
        // The batch's budget ends when its oldest message's does.
        let queued_ms = batch.messages.iter().map(|q| q.queued_ms).min().unwrap_or_default();
        InFlight {
            sequence,
            messages: batch.messages,
            bytes: batch.bytes,
            publish,
            queued_ms,
            sent_ms: None,
            attempts: 0,
            followed: 0,
            last: None,
            flushes: Vec::new(),
            _permit: permit,
        }
    }

    /// The `PublishRequest` of `messages`, encoded from the queued messages themselves.
    fn encode(&self, messages: &[Queued], bytes: usize) -> Bytes {
        let capacity = bytes + self.topic.len() + 16;
        codec::encode_publish(&self.topic, messages.iter().map(|q| &q.message), capacity)
    }

    /// How long until the front batch's answer is overdue: its request timeout, or its
    /// retry budget, whichever ends first.
    fn due(&self, front: &InFlight) -> Option<Duration> {
        let sent = front.sent_ms?;
        let now = self.clock.now_ms();
        let request = (sent + duration_ms(self.settings.request_timeout)).saturating_sub(now);
        let budget = (front.queued_ms + duration_ms(self.settings.retry.total_timeout)).saturating_sub(now);
        Some(Duration::from_millis(request.min(budget)))
    }

    /// Puts `batch` on the open stream. The channel holds a whole window, so this never
    /// waits; if the stream is gone, its answers say so.
    fn send(&self, batches: &mpsc::Sender<StreamBatch>, batch: &mut InFlight) {
        batch.attempts += 1;
        batch.sent_ms = Some(self.clock.now_ms());
        self.counters.requests.fetch_add(1, Ordering::Relaxed);
        let _ = batches.try_send(StreamBatch { sequence: batch.sequence, publish: batch.publish.clone() });
    }

    /// Opens a stream to the broker the client sends to now and sends every unanswered
    /// batch on it, in order. Batches past their retry budget are failed instead. A failure
    /// to open is handled as a failure of the front batch (and waits its backoff).
    async fn open(&self, unanswered: &mut VecDeque<InFlight>) -> Option<Open> {
        self.fail_expired(unanswered);
        if unanswered.is_empty() {
            return None;
        }
        let (used, channel) = self.client.target();
        let (batches, rx) = mpsc::channel(self.settings.batches_in_flight.max(unanswered.len()));
        for batch in unanswered.iter_mut() {
            self.send(&batches, batch);
        }
        let timeout = self.settings.request_timeout;
        match tokio::time::timeout(timeout, codec::publish_stream(channel, ReceiverStream::new(rx))).await {
            Ok(Ok(answers)) => Some(Open { used, batches, answers }),
            Ok(Err(status)) => {
                self.failed(unanswered, status, used).await;
                None
            }
            Err(_) => {
                self.failed(unanswered, self.no_answer(), used).await;
                None
            }
        }
    }

    /// What an attempt that got no answer in `request_timeout` failed with.
    fn no_answer(&self) -> Status {
        let timeout = self.settings.request_timeout;
        Status::deadline_exceeded(format!("no answer within request_timeout = {timeout:?}"))
    }

    /// Fails, for good, each unanswered batch queued longer than `retry.total_timeout`.
    fn fail_expired(&self, unanswered: &mut VecDeque<InFlight>) {
        let now = self.clock.now_ms();
        let total = self.settings.retry.total_timeout;
        let mut kept = VecDeque::with_capacity(unanswered.len());
        for batch in unanswered.drain(..) {
            let waited = Duration::from_millis(now.saturating_sub(batch.queued_ms));
            if waited < total {
                kept.push_back(batch);
                continue;
            }
            let last = batch.last.clone().unwrap_or_else(|| {
                Status::deadline_exceeded(format!(
                    "queued for {waited:?}, past retry.total_timeout = {total:?}, behind batches that could not be sent"
                ))
            });
            let attempts = batch.attempts;
            self.answer(batch, Err(ClientError::GaveUp { attempts, last }));
        }
        *unanswered = kept;
    }

    /// Handles the answer to the front batch; false when the stream must be dropped (the
    /// unanswered batches then go again, from the first, on a new one).
    async fn answered(&self, answer: StreamAnswer, unanswered: &mut VecDeque<InFlight>, used: usize) -> bool {
        let Some(front) = unanswered.front_mut() else {
            let status = Status::internal(format!("the broker answered batch {}, which was not sent", answer.sequence));
            debug!(topic = %self.topic, %status, "publish stream dropped");
            return false;
        };
        if answer.sequence != front.sequence {
            // Answers went missing on the way (or the broker mixed them up): the stream is
            // broken, and its unanswered batches go again on a new one.
            let status = Status::unavailable(format!(
                "the broker answered batch {} where batch {} was due",
                answer.sequence, front.sequence
            ));
            self.failed(unanswered, status, used).await;
            return false;
        }
        let status = match answer.outcome {
            Ok(results) if results.len() == front.messages.len() => {
                let front = unanswered.pop_front().expect("the front batch");
                self.answer(front, Ok(results));
                return true;
            }
            Ok(results) => Status::internal(format!(
                "the broker answered {} results for a batch of {} messages",
                results.len(),
                front.messages.len()
            )),
            Err(status) => status,
        };
        // The broker refuses a whole batch for one bad message (`messages[i]...`,
        // INVALID_ARGUMENT): that message alone fails, and the others go again (their keys
        // are unchanged, so nothing can be stored twice).
        match crate::wire::refused_message_index(&status) {
            Some(i) if i < front.messages.len() && front.messages.len() > 1 => {
                let q = front.messages.remove(i);
                front.bytes -= q.bytes;
                front.publish = self.encode(&front.messages, front.bytes);
                let message = status.message().split_once("].").map_or(status.message(), |(_, m)| m);
                let error = ClientError::Status(Status::invalid_argument(message.to_string()));
                self.answer_messages(vec![q], Err(error));
                false
            }
            _ if is_retryable(&status) => {
                self.failed(unanswered, status, used).await;
                false
            }
            _ => {
                // Refused for good. Whether later batches were applied depends on the
                // refusal: after one the broker expects to see again, they were not.
                let resent = crate::wire::resent_by_clients(&status);
                let front = unanswered.pop_front().expect("the front batch");
                self.answer(front, Err(ClientError::Status(status)));
                !resent
            }
        }
    }

    /// The stream failed (or its front batch was refused with `status`): the front batch
    /// fails for good if `status` is not retryable or its attempts are used up; otherwise
    /// the pipeline waits its backoff before the batches go again.
    async fn failed(&self, unanswered: &mut VecDeque<InFlight>, status: Status, used: usize) {
        let moved = self.client.observe(used, &status);
        let Some(front) = unanswered.front_mut() else { return };
        let retry = &self.settings.retry;
        if !is_retryable(&status) {
            let front = unanswered.pop_front().expect("the front batch");
            return self.answer(front, Err(ClientError::Status(status)));
        }
        // Following a cluster's leadership (to the leader a follower named, or to the next
        // broker) is not a failure of the broker tried: the wait stays short and the
        // attempt does not count against max_attempts; total_timeout bounds it.
        if moved != Moved::Stayed {
            front.followed += 1;
        }
        let attempts = front.attempts;
        if attempts.saturating_sub(front.followed) >= retry.max_attempts {
            let front = unanswered.pop_front().expect("the front batch");
            return self.answer(front, Err(ClientError::GaveUp { attempts, last: status }));
        }
        let wait = match moved {
            Moved::Stayed => retry.backoff(attempts - front.followed),
            Moved::ToLeader | Moved::ToNext => retry.backoff(front.followed).min(retry.backoff(FOLLOW_BACKOFF_STEPS)),
        };
        debug!(topic = %self.topic, attempt = attempts, code = ?status.code(), ?wait, "publish failed; retrying");
        self.counters.retries.fetch_add(1, Ordering::Relaxed);
        front.last = Some(status);
        front.sent_ms = None;
        // Past the budget the batch is failed when the stream is opened again.
        let left = (front.queued_ms + duration_ms(retry.total_timeout)).saturating_sub(self.clock.now_ms());
        tokio::time::sleep(wait.min(Duration::from_millis(left))).await;
    }

    /// Answers a finished batch's messages and the flushes that waited for it.
    fn answer(&self, batch: InFlight, outcome: Result<Vec<PublishResult>, ClientError>) {
        self.answer_messages(batch.messages, outcome);
        for done in batch.flushes {
            let _ = done.send(());
        }
    }

    fn answer_messages(&self, messages: Vec<Queued>, outcome: Result<Vec<PublishResult>, ClientError>) {
        let count = messages.len();
        self.counters.batches.fetch_add(1, Ordering::Relaxed);
        match outcome {
            Ok(results) => {
                self.counters.published.fetch_add(count as u64, Ordering::Relaxed);
                for (mut q, mut result) in messages.into_iter().zip(results) {
                    result.idempotency_key = q.message.idempotency_key.take();
                    let _ = q.reply.send(Ok(result));
                }
            }
            Err(error) => {
                // The caller gets the error through each handle; a log line would repeat it.
                debug!(topic = %self.topic, messages = count, %error, "publish failed");
                self.counters.failed.fetch_add(count as u64, Ordering::Relaxed);
                for q in messages {
                    let _ = q.reply.send(Err(error.clone()));
                }
            }
        }
    }
}

fn duration_ms(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}
