//! The publisher's background task: gathers queued messages into batches (by count, bytes
//! and linger), sends one batch at a time, retries, and answers each message.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use crate::client::Client;
use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};
use tonic::Status;
use tracing::debug;

use super::{Command, Counters, PublisherSettings, Queued};
use crate::client::error::{is_retryable, ClientError};
use crate::client::message::PublishResult;
use crate::client::Moved;
use crate::env::{Clock, TokioClock};
use crate::wire::client_codec as codec;

/// The wait between attempts that follow a cluster's leadership: this many steps of the
/// backoff (100 ms by default). An election takes a fraction of a second, and a grown wait
/// would be paid on top of it (the failover bench measured 1.5 to 1.9 s with 400 ms).
const FOLLOW_BACKOFF_STEPS: u32 = 1;

pub(super) struct Batcher {
    /// Where batches go: the broker the client sends to now.
    pub(super) client: Client,
    pub(super) topic: String,
    pub(super) settings: PublisherSettings,
    pub(super) counters: Arc<Counters>,
    pub(super) clock: TokioClock,
}

/// A batch being gathered.
#[derive(Default)]
struct Batch {
    messages: Vec<Queued>,
    bytes: usize,
}

impl Batch {
    fn full(&self, settings: &PublisherSettings) -> bool {
        self.messages.len() >= settings.batch_messages_max || self.bytes >= settings.batch_bytes_max
    }

    /// Whether `q` may join. The first message always may, however large: the broker,
    /// not the batch bound, decides whether one message is too big.
    fn fits(&self, q: &Queued, settings: &PublisherSettings) -> bool {
        self.messages.is_empty()
            || (self.messages.len() < settings.batch_messages_max && self.bytes + q.bytes <= settings.batch_bytes_max)
    }

    fn push(&mut self, q: Queued) {
        self.bytes += q.bytes;
        self.messages.push(q);
    }
}

/// What ended the gathering of a batch.
enum Gathered {
    /// Full, or the linger passed.
    Ready,
    /// A flush asked for it; answer the flush once the batch is sent.
    Flush(oneshot::Sender<()>),
    /// The publisher is gone: send it, then stop.
    Closed,
}

impl Batcher {
    /// Runs until the publisher is dropped or shut down and every queued message answered.
    pub(super) async fn run(self, mut commands: mpsc::Receiver<Command>) {
        // A message that did not fit the previous batch opens the next one.
        let mut carried: Option<Queued> = None;
        loop {
            let first = match carried.take() {
                Some(q) => q,
                None => match commands.recv().await {
                    None => return,
                    Some(Command::Flush(done)) => {
                        let _ = done.send(());
                        continue;
                    }
                    Some(Command::Publish(q)) => q,
                },
            };
            let mut batch = Batch::default();
            batch.push(first);
            let gathered = self.gather(&mut batch, &mut commands, &mut carried).await;
            self.send(batch).await;
            match gathered {
                Gathered::Ready => {}
                Gathered::Flush(done) => {
                    let _ = done.send(());
                }
                // The next `recv` sees the closed queue and ends the task.
                Gathered::Closed => {}
            }
        }
    }

    /// Adds queued messages to `batch` until it is full, the linger passes, a flush comes,
    /// or a message does not fit (it is `carried` to the next batch).
    async fn gather(
        &self,
        batch: &mut Batch,
        commands: &mut mpsc::Receiver<Command>,
        carried: &mut Option<Queued>,
    ) -> Gathered {
        // What is queued already goes in without waiting on the timer: a zero linger sends
        // the batch as soon as the queue is drained (a timer, even a zero one, fires only at
        // the next tick of tokio's clock, up to 1 ms later).
        while !batch.full(&self.settings) {
            let command = match commands.try_recv() {
                Ok(command) => command,
                Err(mpsc::error::TryRecvError::Empty) => break,
                Err(mpsc::error::TryRecvError::Disconnected) => return Gathered::Closed,
            };
            match command {
                Command::Flush(done) => return Gathered::Flush(done),
                Command::Publish(q) if batch.fits(&q, &self.settings) => batch.push(q),
                Command::Publish(q) => {
                    *carried = Some(q);
                    return Gathered::Ready;
                }
            }
        }
        if self.settings.linger.is_zero() {
            return Gathered::Ready;
        }
        let linger = tokio::time::sleep(self.settings.linger);
        tokio::pin!(linger);
        while !batch.full(&self.settings) {
            tokio::select! {
                // Queued messages first: with a zero linger, what is already queued still
                // goes in the batch.
                biased;
                command = commands.recv() => match command {
                    None => return Gathered::Closed,
                    Some(Command::Flush(done)) => return Gathered::Flush(done),
                    Some(Command::Publish(q)) if batch.fits(&q, &self.settings) => batch.push(q),
                    Some(Command::Publish(q)) => {
                        *carried = Some(q);
                        return Gathered::Ready;
                    }
                },
                () = &mut linger => return Gathered::Ready,
            }
        }
        Gathered::Ready
    }

    /// Sends one batch (with retries) and answers each of its messages. The broker refuses
    /// a whole request for one bad message (`messages[i]...`, INVALID_ARGUMENT): that
    /// message alone fails, and the others are sent again (their keys are unchanged, so
    /// nothing can be stored twice).
    async fn send(&self, mut batch: Batch) {
        // Each round either answers the batch or takes one message out of it.
        let rounds_max = batch.messages.len();
        for _ in 0..rounds_max {
            match self.send_once(&batch).await {
                Err(ClientError::Status(status)) if batch.messages.len() > 1 => match refused_index(&status) {
                    Some(i) if i < batch.messages.len() => {
                        let q = batch.messages.remove(i);
                        batch.bytes -= q.bytes;
                        let message = status.message().split_once("].").map_or(status.message(), |(_, m)| m);
                        let error = ClientError::Status(Status::invalid_argument(message.to_string()));
                        self.answer(vec![q], Err(error));
                    }
                    _ => return self.answer(batch.messages, Err(ClientError::Status(status))),
                },
                outcome => return self.answer(batch.messages, outcome),
            }
        }
    }

    async fn send_once(&self, batch: &Batch) -> Result<Vec<PublishResult>, ClientError> {
        let count = batch.messages.len();
        // Encoded once, from the queued messages themselves; every attempt sends these bytes.
        let capacity = batch.bytes + self.topic.len() + 16;
        let request = codec::encode_publish(&self.topic, batch.messages.iter().map(|q| &q.message), capacity);
        // The batch's budget ends when its oldest message's does.
        let queued_ms = batch.messages.iter().map(|q| q.queued_ms).min().unwrap_or_default();
        match self.send_with_retries(&request, queued_ms).await {
            Ok(results) if results.len() == count => Ok(results),
            Ok(results) => Err(ClientError::Status(Status::internal(format!(
                "the broker answered {} results for a batch of {count} messages",
                results.len()
            )))),
            Err(error) => Err(error),
        }
    }

    fn answer(&self, messages: Vec<Queued>, outcome: Result<Vec<PublishResult>, ClientError>) {
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

    /// Sends the `request` until it is answered, fails with a status that is not retryable, or
    /// the attempts or the total timeout run out.
    async fn send_with_retries(&self, request: &Bytes, queued_ms: u64) -> Result<Vec<PublishResult>, ClientError> {
        let retry = &self.settings.retry;
        let waited = Duration::from_millis(self.clock.now_ms().saturating_sub(queued_ms));
        let Some(budget) = retry.total_timeout.checked_sub(waited).filter(|b| !b.is_zero()) else {
            return Err(ClientError::GaveUp {
                attempts: 0,
                last: Status::deadline_exceeded(format!(
                    "queued for {waited:?}, past retry.total_timeout = {:?}, behind batches that could not be sent",
                    retry.total_timeout
                )),
            });
        };
        let mut attempts = 0u32;
        let mut followed = 0u32;
        let mut last: Option<Status> = None;
        let tries = async {
            loop {
                attempts += 1;
                self.counters.requests.fetch_add(1, Ordering::Relaxed);
                let (status, moved) = match self.attempt(request.clone()).await {
                    Ok(results) => return Ok(results),
                    Err(failed) => failed,
                };
                if !is_retryable(&status) {
                    return Err(ClientError::Status(status));
                }
                // Following a cluster's leadership (to the leader a follower named, or to the
                // next broker) is not a failure of the broker tried: the wait stays short and
                // the attempt does not count against max_attempts; total_timeout bounds it.
                if moved != Moved::Stayed {
                    followed += 1;
                }
                if attempts - followed >= retry.max_attempts {
                    return Err(ClientError::GaveUp { attempts, last: status });
                }
                let wait = match moved {
                    Moved::Stayed => retry.backoff(attempts - followed),
                    Moved::ToLeader | Moved::ToNext => retry.backoff(followed).min(retry.backoff(FOLLOW_BACKOFF_STEPS)),
                };
                debug!(topic = %self.topic, attempt = attempts, code = ?status.code(), ?wait, "publish failed; retrying");
                self.counters.retries.fetch_add(1, Ordering::Relaxed);
                last = Some(status);
                tokio::time::sleep(wait).await;
            }
        };
        let outcome = tokio::time::timeout(budget, tries).await;
        match outcome {
            Ok(outcome) => outcome,
            Err(_) => Err(ClientError::GaveUp {
                attempts,
                last: last.unwrap_or_else(|| {
                    Status::deadline_exceeded(format!(
                        "no answer within retry.total_timeout = {:?}",
                        retry.total_timeout
                    ))
                }),
            }),
        }
    }

    /// One request to the broker the client sends to now; a failure comes with where the
    /// client sends the next one.
    async fn attempt(&self, request: Bytes) -> Result<Vec<PublishResult>, (Status, Moved)> {
        let timeout = self.settings.request_timeout;
        let (used, channel) = self.client.target();
        let answer = match tokio::time::timeout(timeout, codec::publish(channel, request)).await {
            Ok(answer) => answer,
            Err(_) => Err(Status::deadline_exceeded(format!("no answer within request_timeout = {timeout:?}"))),
        };
        answer.map_err(|status| {
            let moved = self.client.observe(used, &status);
            (status, moved)
        })
    }
}

/// The batch position a refusal names (`messages[3].value: ...`), when it names one.
fn refused_index(status: &Status) -> Option<usize> {
    if status.code() != tonic::Code::InvalidArgument {
        return None;
    }
    let rest = status.message().strip_prefix("messages[")?;
    rest.split_once(']')?.0.parse().ok()
}
