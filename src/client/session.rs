//! The subscriber's background task: opens the Subscribe stream (again after a retryable
//! end), hands received messages to the application through a bounded queue, sends its
//! acks and nacks in batches, extends the leases it holds, and heartbeats.
//!
//! Every stream names the subscriber's client id, so on a named subscription a reconnect
//! loses nothing: the broker keeps the broken stream's leases for the new stream, and what
//! the session holds ([`Held`]: messages not yet handed out, leases, unconfirmed decisions)
//! carries over to it. A topic's ephemeral subscription ends with its stream, so there the
//! session starts afresh with each stream. Shutdown ends the stream with `leave`, which has
//! the broker release at once the leases of the messages not decided on.
//!
//! One turn of the loop does one thing: read a response, hand out one message, take one
//! decision, flush the batch, or check the leases. Nothing in a turn waits on the
//! application, so acks keep flowing while the application is slow to read.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::MissedTickBehavior;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Status, Streaming};
use tracing::{debug, warn};

use super::acks::NackKey;
use super::error::{is_retryable, ClientError};
use super::held::Held;
use super::received::{AckHandle, LeaseId, Op, ReceivedMessage};
use super::subscriber::{Delivery, Shared, SubscribeTarget, SubscriberSettings};
use super::Client;
use crate::env::{Clock, TokioClock};
use crate::wire::client_codec::{self as codec, StreamResponse};
use crate::wire::pb;

/// Longest wait for a stream to open (the call, then its opening response).
const OPEN_TIMEOUT: Duration = Duration::from_secs(10);
/// Requests queued for the stream's sending side; the task waits when it is full.
const REQUESTS_QUEUE_MAX: usize = 64;
/// In the ABORTED message of a stream the broker ended because a newer stream of the same
/// client id took its place.
const REPLACED: &str = "was replaced by a newer stream of client";
/// Heartbeat period when no session timeout is set: a third of the broker's default (10 s).
const HEARTBEAT_DEFAULT: Duration = Duration::from_secs(3);

pub(crate) struct Session {
    client: Client,
    target: SubscribeTarget,
    settings: SubscriberSettings,
    /// Sent in every stream's first request.
    client_id: String,
    /// What the subscriber holds; `None` before the first stream opened.
    held: Option<Held>,
    /// The current lease epoch (see `Shared::epoch`).
    epoch: u64,
    /// Streams opened so far (for logs).
    streams: u64,
    shared: Arc<Shared>,
    deliveries: mpsc::Sender<Delivery>,
    /// Cloned into every message's handle.
    ops_tx: mpsc::Sender<Op>,
    ops: mpsc::Receiver<Op>,
    clock: TokioClock,
    /// The broker the last stream went to (see [`Client::observe`]).
    broker: usize,
}

/// A stream just opened.
struct Opened {
    requests: mpsc::Sender<pb::SubscribeRequest>,
    inbound: Streaming<StreamResponse>,
    hello: StreamResponse,
    deadline_seconds: u32,
    dead_letter: bool,
}

/// The state of one open stream.
struct Live {
    requests: mpsc::Sender<pb::SubscribeRequest>,
    /// Whether terminal nacks may be sent (the subscription has a dead-letter policy).
    dead_letter: bool,
    last_sent_ms: u64,
    /// Whether the stream carried anything after its opening (a healthy stream).
    delivered: bool,
}

/// Why a stream stopped being served.
enum End {
    /// Shutdown was asked for, or the application dropped the subscriber.
    Stopped,
    /// The stream ended with this status (or broke).
    Broken(Status),
}

impl Session {
    pub(crate) fn new(
        client: Client,
        target: SubscribeTarget,
        settings: SubscriberSettings,
        shared: Arc<Shared>,
        deliveries: mpsc::Sender<Delivery>,
        client_id: String,
    ) -> Self {
        // Each held message sends at most one decision, and flow control bounds the held
        // messages of a stream by max_outstanding_messages; the queue holds two streams'
        // worth, so that handles of an older stream do not crowd out the current one.
        let (ops_tx, ops) = mpsc::channel(2 * settings.max_outstanding_messages as usize + 16);
        Self {
            client,
            target,
            settings,
            client_id,
            held: None,
            epoch: 0,
            streams: 0,
            shared,
            deliveries,
            ops_tx,
            ops,
            clock: TokioClock::new(),
            broker: 0,
        }
    }

    /// Opens the stream and serves it, reopening it after retryable ends, until shutdown
    /// or an error that is not retryable (or the reconnect budget runs out). `opened`
    /// learns how the first opening went.
    pub(crate) async fn run(
        mut self,
        opened: oneshot::Sender<Result<(), ClientError>>,
        mut shutdown: watch::Receiver<bool>,
    ) -> Result<(), ClientError> {
        let mut opened = Some(opened);
        let retry = self.settings.reconnect.clone();
        let mut failures = 0u32;
        let mut first_failure_ms: Option<u64> = None;
        loop {
            if failures > 0 {
                tokio::select! {
                    biased;
                    () = stopped(&mut shutdown) => return self.stop_between_streams().await,
                    () = tokio::time::sleep(retry.backoff(failures)) => {}
                }
            }
            let attempt = tokio::select! {
                biased;
                () = stopped(&mut shutdown) => return self.stop_between_streams().await,
                attempt = self.open() => attempt,
            };
            let status = match attempt {
                Ok(stream) => {
                    // Named before `subscribe` returns, so `Subscriber::subscription` is
                    // right from the start.
                    if let Ok(mut name) = self.shared.subscription.lock() {
                        name.clone_from(&stream.hello.subscription);
                    }
                    match opened.take() {
                        Some(tx) => {
                            let _ = tx.send(Ok(()));
                        }
                        None => {
                            self.shared.reconnects.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    let opened_ms = self.clock.now_ms();
                    let (end, delivered) = self.serve(stream, &mut shutdown).await;
                    let status = match end {
                        End::Stopped => return Ok(()),
                        End::Broken(status) => status,
                    };
                    let lived_ms = self.clock.now_ms().saturating_sub(opened_ms);
                    if delivered || lived_ms >= retry.max_backoff.as_millis() as u64 {
                        failures = 0;
                        first_failure_ms = None;
                    }
                    status
                }
                Err(status) => status,
            };
            // A follower names the leader; a broker that is down sends us to the next. Either
            // way the next attempt goes soon: the wait grows only at the same broker.
            if self.client.observe(self.broker, &status) != crate::client::Moved::Stayed {
                failures = failures.min(1);
            }
            // Another subscriber with this client id took the stream over: reconnecting
            // would take it back, and the two would take turns for ever.
            let replaced = status.code() == tonic::Code::Aborted && status.message().contains(REPLACED);
            if !is_retryable(&status) || replaced {
                return self.fail(ClientError::Status(status), opened, &mut shutdown).await;
            }
            failures += 1;
            let now_ms = self.clock.now_ms();
            let since_ms = now_ms - *first_failure_ms.get_or_insert(now_ms);
            if failures >= retry.max_attempts || since_ms >= retry.total_timeout.as_millis() as u64 {
                let error = ClientError::GaveUp { attempts: failures, last: status };
                return self.fail(error, opened, &mut shutdown).await;
            }
            warn!(code = ?status.code(), message = status.message(), attempt = failures, "subscribe stream ended; reopening it");
        }
    }

    /// Reports a final error: to `subscribe` if the first opening failed, else to the
    /// application through the message queue.
    ///
    /// No stream will carry a decision any more, so first the queue of decisions is closed:
    /// handles waiting for room in it return (their decisions lost, as they would be once
    /// the session ends), and so do later ones. Otherwise an application blocked in
    /// `ack().await` on a full queue, which nothing drains now, would never read the error
    /// this waits to hand it: a deadlock.
    async fn fail(
        &mut self,
        error: ClientError,
        opened: Option<oneshot::Sender<Result<(), ClientError>>>,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Result<(), ClientError> {
        self.ops.close();
        match opened {
            Some(tx) => {
                let _ = tx.send(Err(error.clone()));
            }
            None => {
                tokio::select! {
                    biased;
                    () = stopped(shutdown) => {}
                    _ = self.deliveries.send(Err(error.clone())) => {}
                }
            }
        }
        Err(error)
    }

    fn first_request(&self) -> pb::SubscribeRequest {
        let s = &self.settings;
        let mut first = pb::SubscribeRequest {
            client_id: self.client_id.clone(),
            max_outstanding_messages: s.max_outstanding_messages,
            max_outstanding_bytes: s.max_outstanding_bytes.unwrap_or(0),
            session_timeout_seconds: s.session_timeout.map_or(0, |t| t.as_secs() as u32),
            ..Default::default()
        };
        match &self.target {
            SubscribeTarget::Subscription(name) => first.subscription.clone_from(name),
            SubscribeTarget::Topic { topic, start_position, ack_deadline_seconds } => {
                first.topic.clone_from(topic);
                first.start_position = (*start_position).into();
                first.ack_deadline_seconds = *ack_deadline_seconds;
            }
        }
        first
    }

    /// Opens one stream: learns the lease length (a named subscription's own), sends the
    /// first request, and reads the opening response.
    async fn open(&mut self) -> Result<Opened, Status> {
        let (deadline_seconds, dead_letter) = match &self.target {
            SubscribeTarget::Subscription(name) => {
                let subscription = self.client.get_subscription(name).await.map_err(into_status)?;
                (subscription.ack_deadline_seconds.max(1), subscription.dead_letter_policy.is_some())
            }
            SubscribeTarget::Topic { ack_deadline_seconds, .. } => (*ack_deadline_seconds, false),
        };
        let (requests, rx) = mpsc::channel(REQUESTS_QUEUE_MAX);
        requests.try_send(self.first_request()).expect("a new queue has room for the first request");
        let (broker, channel) = self.client.target();
        self.broker = broker;
        let call = codec::subscribe(channel, ReceiverStream::new(rx));
        let timed_out = || Status::deadline_exceeded(format!("the stream did not open within {OPEN_TIMEOUT:?}"));
        let mut inbound = tokio::time::timeout(OPEN_TIMEOUT, call).await.map_err(|_| timed_out())??.into_inner();
        let hello = tokio::time::timeout(OPEN_TIMEOUT, inbound.message())
            .await
            .map_err(|_| timed_out())??
            .ok_or_else(|| Status::unavailable("the stream ended before its opening response"))?;
        Ok(Opened { requests, inbound, hello, deadline_seconds, dead_letter })
    }

    /// Serves one open stream until it ends or the subscriber stops. Returns why, and
    /// whether it carried anything after opening.
    async fn serve(&mut self, opened: Opened, shutdown: &mut watch::Receiver<bool>) -> (End, bool) {
        let Opened { requests, mut inbound, hello, deadline_seconds, dead_letter } = opened;
        self.streams += 1;
        debug!(subscription = %hello.subscription, stream = self.streams, client_id = %self.client_id, "subscribe stream open");
        let mut live = Live { requests, dead_letter, last_sent_ms: self.clock.now_ms(), delivered: false };
        self.take_over(u64::from(deadline_seconds) * 1000);
        self.absorb(&mut live, hello);
        live.delivered = false;
        // Extensions of the leases taken over go out at once.
        self.send_pending(&mut live).await;
        let mut flush = tokio::time::interval(self.settings.ack_flush_interval);
        flush.set_missed_tick_behavior(MissedTickBehavior::Delay);
        // Lease checks also send heartbeats, so they come at least twice per heartbeat period:
        // an exclusive member with a short session timeout must not miss one.
        let heartbeat_ms = self.heartbeat().as_millis() as u64;
        let check_ms = self.held().leases.check_interval_ms().min(heartbeat_ms / 2).max(1);
        let mut check = tokio::time::interval(Duration::from_millis(check_ms));
        check.set_missed_tick_behavior(MissedTickBehavior::Delay);
        // A handle of its own: a permit borrows the sender while the other branches run.
        let deliveries = self.deliveries.clone();
        let end = loop {
            let has_undelivered = !self.held().undelivered.is_empty();
            // The flush timer runs only while there is something to send: an idle
            // subscriber does not wake every ack_flush_interval.
            let has_pending = self.held().pending_len() > 0;
            // Biased, so that a simulated run replays; the timers go before the stream, for
            // they are ready only when due and the stream must not starve them.
            tokio::select! {
                biased;
                () = stopped(shutdown) => break End::Stopped,
                _ = flush.tick(), if has_pending => self.send_pending(&mut live).await,
                _ = check.tick() => self.check_leases(&mut live).await,
                response = inbound.message() => match response {
                    Ok(Some(response)) => self.absorb(&mut live, response),
                    Ok(None) => break End::Broken(Status::unavailable("the broker closed the stream without a status")),
                    Err(status) => break End::Broken(status),
                },
                permit = deliveries.reserve(), if has_undelivered => match permit {
                    Ok(permit) => permit.send(Ok(self.held_mut().undelivered.pop_front().expect("checked non-empty"))),
                    // The application dropped the subscriber.
                    Err(_) => break End::Stopped,
                },
                Some(op) = self.ops.recv() => {
                    self.decide(&live, op);
                    if self.held().pending_len() >= self.settings.ack_batch_max {
                        self.send_pending(&mut live).await;
                    }
                }
            }
        };
        if let End::Stopped = end {
            self.leave(&mut live, &mut inbound).await;
        }
        (end, live.delivered)
    }

    /// A stream opened: on a named subscription it takes over what the session held (the
    /// broker kept the leases for this client id); otherwise (the first stream, or a new
    /// ephemeral subscription) the session starts afresh, in a new lease epoch.
    fn take_over(&mut self, deadline_ms: u64) {
        let named = matches!(self.target, SubscribeTarget::Subscription(_));
        match self.held.as_mut() {
            Some(held) if named => {
                let extended = held.resume(self.clock.now_ms());
                self.shared.lease_extensions.fetch_add(extended as u64, Ordering::Relaxed);
                debug!(extended, undelivered = held.undelivered.len(), "the new stream takes over the held leases");
            }
            _ => {
                // A new ephemeral subscription: the old one's leases ended with it.
                let old = self.held.take().map(|held| held.undelivered).unwrap_or_default();
                old.into_iter().for_each(ReceivedMessage::forget);
                let max_extension_ms = self.settings.max_lease_extension.as_millis() as u64;
                self.held = Some(Held::new(deadline_ms, max_extension_ms));
                self.epoch += 1;
                self.shared.epoch.store(self.epoch, Ordering::SeqCst);
            }
        }
    }

    fn held(&self) -> &Held {
        self.held.as_ref().expect("a stream is open")
    }

    fn held_mut(&mut self) -> &mut Held {
        self.held.as_mut().expect("a stream is open")
    }

    /// Takes in one response: messages (held, queued for the application), confirmations.
    fn absorb(&mut self, live: &mut Live, response: StreamResponse) {
        let now_ms = self.clock.now_ms();
        // Only messages make a stream healthy: every stream of an exclusive subscription
        // opens with an assignment, and a stream that keeps ending right after it must use
        // up the reconnect budget instead of resetting it.
        live.delivered |= !response.received.is_empty();
        let (epoch, max) = (self.epoch, self.settings.max_outstanding_messages as usize);
        for (ack_id, message) in response.received {
            self.shared.received.fetch_add(1, Ordering::Relaxed);
            let handle = AckHandle::new(LeaseId::new(ack_id), epoch, self.ops_tx.clone());
            if self.held().undelivered.len() >= max {
                // Flow control should make this impossible; if the broker overshoots, the
                // message goes back rather than growing the queue.
                warn!(ack_id = handle.ack_id(), "more messages than max_outstanding_messages; nacking the extra");
                drop(handle);
                continue;
            }
            self.held_mut().receive(ReceivedMessage::new(message, handle), now_ms);
        }
        for confirmation in response.ack_confirmations {
            self.held_mut().confirmed(&confirmation);
            self.shared.count(&confirmation);
        }
        if let Some(assignment) = response.assignment {
            debug!(generation = assignment.generation, partitions = ?assignment.partitions, "assignment");
        }
    }

    /// Queues the application's decision on a message; a decision on a message of an
    /// earlier lease epoch is dropped (that lease is gone; it comes again).
    fn decide(&mut self, live: &Live, op: Op) {
        let epoch = self.epoch;
        let held = self.held_mut();
        match op {
            Op::Ack { ack_id, epoch: of, respond } if of == epoch => {
                held.respond(&ack_id, respond);
                held.ack(ack_id);
            }
            Op::Nack { ack_id, epoch: of, mut key, respond } if of == epoch => {
                held.respond(&ack_id, respond);
                if key.terminal && !live.dead_letter {
                    warn!(%ack_id, "terminal nack on a subscription without a dead-letter policy; sent as a plain nack");
                    key = NackKey { terminal: false, ..key };
                }
                held.nack(ack_id, key);
            }
            Op::Ack { ack_id, .. } | Op::Nack { ack_id, .. } => {
                debug!(%ack_id, "decision on a message of an earlier ephemeral subscription; its lease is gone");
            }
        }
    }

    /// Sends every pending ack, nack and extension.
    async fn send_pending(&mut self, live: &mut Live) {
        let batch = self.settings.ack_batch_max;
        for request in self.held_mut().take_requests(batch) {
            self.send(live, request).await;
        }
    }

    async fn send(&self, live: &mut Live, request: pb::SubscribeRequest) {
        live.last_sent_ms = self.clock.now_ms();
        // A closed stream shows up on the reading side, with its status.
        let _ = live.requests.send(request).await;
    }

    /// Extends the leases that are due, and heartbeats if nothing was sent for a while.
    async fn check_leases(&mut self, live: &mut Live) {
        let now_ms = self.clock.now_ms();
        let (forgotten, extended) = self.held_mut().extend_due(now_ms);
        for ack_id in &forgotten.abandoned {
            debug!(%ack_id, "held past max_lease_extension; its lease is left to expire");
        }
        for ack_id in &forgotten.dropped {
            debug!(%ack_id, "its handle was dropped undecided; its lease is left to expire");
        }
        if extended > 0 {
            self.shared.lease_extensions.fetch_add(extended as u64, Ordering::Relaxed);
            self.send_pending(live).await;
        }
        if now_ms.saturating_sub(live.last_sent_ms) >= self.heartbeat().as_millis() as u64 {
            self.send(live, pb::SubscribeRequest::default()).await;
        }
    }

    /// Shutdown while no stream is open (between a broken stream and the next): the acks
    /// and nacks the application decided, and those sent on the broken stream without a
    /// confirmation, go as unary Ack and Nack calls (they apply to the leases the broker
    /// kept for this client id), within `shutdown_timeout`. The other held leases expire.
    async fn stop_between_streams(&mut self) -> Result<(), ClientError> {
        let Some(held) = self.held.as_mut() else { return Ok(()) };
        // Bounded by the queue's capacity: only the application adds to it, and it is
        // asking us to stop.
        while let Ok(op) = self.ops.try_recv() {
            match op {
                Op::Ack { ack_id, epoch, .. } if epoch == self.epoch => held.ack(ack_id),
                Op::Nack { ack_id, epoch, key, .. } if epoch == self.epoch => held.nack(ack_id, key),
                Op::Ack { .. } | Op::Nack { .. } => {}
            }
        }
        held.resume(self.clock.now_ms());
        let requests = held.take_requests(self.settings.ack_batch_max);
        let subscription = self.shared.subscription.lock().map(|name| name.clone()).unwrap_or_default();
        let mut pubsub = self.client.pubsub_client();
        let send = async {
            for request in requests {
                if !request.ack_ids.is_empty() {
                    let ack = pb::AckRequest { subscription: subscription.clone(), ack_ids: request.ack_ids };
                    if let Err(status) = pubsub.ack(ack).await {
                        debug!(code = ?status.code(), "acks at shutdown not sent");
                    }
                }
                if !request.nack_ids.is_empty() {
                    let nack = pb::NackRequest {
                        subscription: subscription.clone(),
                        ack_ids: request.nack_ids,
                        delay: request.nack_delay,
                        reason: request.nack_reason,
                        terminal: request.nack_terminal,
                    };
                    if let Err(status) = pubsub.nack(nack).await {
                        debug!(code = ?status.code(), "nacks at shutdown not sent");
                    }
                }
            }
        };
        if tokio::time::timeout(self.settings.shutdown_timeout, send).await.is_err() {
            warn!("acks at shutdown not all sent within shutdown_timeout; those messages come again");
        }
        Ok(())
    }

    /// How often an idle stream sends an empty request: a third of the session timeout.
    fn heartbeat(&self) -> Duration {
        self.settings.session_timeout.map_or(HEARTBEAT_DEFAULT, |t| t / 3)
    }

    /// Shutdown: sends every decision the application made, then `leave`, and reads the
    /// stream until the broker ends it (up to `shutdown_timeout`): by then every decision is
    /// applied and the leases of the other messages (received but not handed out, or still
    /// held) are released, for other members at once. Releasing them with nacks instead
    /// would have the broker redeliver them to this stream before it closes, and count a
    /// second attempt.
    async fn leave(&mut self, live: &mut Live, inbound: &mut Streaming<StreamResponse>) {
        // Bounded by the queue's capacity: only the application adds to it, and it is
        // asking us to stop.
        while let Ok(op) = self.ops.try_recv() {
            self.decide(live, op);
        }
        let wait = self.settings.shutdown_timeout;
        // The sends are timed too: a stalled connection must not hold the shutdown.
        let ended = async {
            self.send_pending(live).await;
            self.send(live, pb::SubscribeRequest { leave: true, ..Default::default() }).await;
            // Until the broker ends the stream (or it breaks).
            while let Ok(Some(response)) = inbound.message().await {
                // Messages that arrive now are not handed out; the leave releases their
                // leases.
                let confirmations = response.ack_confirmations.len();
                let response = StreamResponse { ack_confirmations: response.ack_confirmations, ..Default::default() };
                self.absorb(live, response);
                debug!(confirmations, "leaving");
            }
        };
        if tokio::time::timeout(wait, ended).await.is_err() {
            warn!("shutdown: the broker did not end the stream in time; its leases wait for their deadlines");
        }
    }
}

/// Resolves when the subscriber asks to stop (or is dropped).
async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    // Err means the sender is gone: the subscriber was dropped, which also means stop.
    let _ = shutdown.wait_for(|stop| *stop).await;
}

fn into_status(error: ClientError) -> Status {
    match error {
        ClientError::Status(status) | ClientError::GaveUp { last: status, .. } => status,
        other => Status::unknown(other.to_string()),
    }
}
