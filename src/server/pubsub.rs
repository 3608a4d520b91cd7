//! The `pubsub.PubSub` service.

use std::pin::Pin;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::Stream;
use tonic::{Request, Response, Status, Streaming};
use tracing::{debug, info_span, Instrument};

use super::access::{principal_of, Access, Permission, StreamGuard};
use super::driver::{unexpected, DriverHandle, Link, PublishChain, ResponseTx, StreamSink};
use super::metrics::LatencyTimer;
use super::ServerConfig;
use crate::core::{AckOp, Answer, Command, StreamId, StreamTarget};
use crate::wire::{self, pb};

/// How long a stream's task waits to queue its final status behind undelivered responses.
const FINAL_STATUS_WAIT: Duration = Duration::from_secs(5);

/// Unanswered batches a PublishStream may have at once: the next request is read only when
/// one is answered, so a fast client is held back by HTTP/2's flow control, not queued here.
/// On a cluster node too: its proposals reach the Raft log in the order they were made.
pub const PUBLISH_STREAM_WINDOW: usize = 16;

/// Publishing and consuming, backed by the driver.
pub struct PubSubService {
    driver: DriverHandle,
    config: ServerConfig,
    /// Times acknowledged publishes when metrics are on.
    publish_latency: Option<LatencyTimer>,
    /// Turns true when the server stops: PublishStreams then read no more batches, answer
    /// those they took, and end with UNAVAILABLE.
    stopping: tokio::sync::watch::Receiver<bool>,
    /// What each principal may do.
    access: std::sync::Arc<Access>,
}

impl PubSubService {
    /// The service, and what tells its PublishStreams the server is stopping: they then
    /// read no more batches, answer those they took, and end with UNAVAILABLE (Subscribe
    /// streams are ended by the driver).
    pub(super) fn new(
        driver: DriverHandle,
        config: ServerConfig,
        publish_latency: Option<LatencyTimer>,
        access: std::sync::Arc<Access>,
    ) -> (Self, tokio::sync::watch::Sender<bool>) {
        let (stop, stopping) = tokio::sync::watch::channel(false);
        (Self { driver, config, publish_latency, stopping, access }, stop)
    }
}

type ResponseStream = Pin<Box<dyn Stream<Item = Result<pb::SubscribeResponse, Status>> + Send>>;

type PublishResponses = Pin<Box<dyn Stream<Item = Result<pb::PublishStreamResponse, Status>> + Send>>;

/// The answer a PublishStream batch waits for.
type Answering = Pin<Box<dyn std::future::Future<Output = Result<Answer, Status>> + Send>>;

/// The answer to one batch of a PublishStream: where its messages went, or its refusal.
fn stream_answer(sequence: u64, answer: Result<Answer, Status>) -> pb::PublishStreamResponse {
    let stored = answer.and_then(|answer| match answer {
        Answer::Published(published) => Ok(wire::publish_response(published).results),
        other => Err(unexpected(&other)),
    });
    match stored {
        Ok(results) => pb::PublishStreamResponse { sequence, results, ..Default::default() },
        Err(status) => pb::PublishStreamResponse {
            sequence,
            results: Vec::new(),
            code: status.code() as i32,
            message: status.message().to_string(),
        },
    }
}

#[tonic::async_trait]
impl pb::pub_sub_server::PubSub for PubSubService {
    async fn publish(&self, request: Request<pb::PublishRequest>) -> Result<Response<pb::PublishResponse>, Status> {
        let start = self.publish_latency.as_ref().map(LatencyTimer::start);
        super::stages::arrived();
        let denied = self.access.check_request(&request, Permission::Publish, "topic", |r| &r.topic);
        if let Err(status) = denied {
            if self.config.broker.mutated(crate::core::Mutation::DeniedPublishStored) {
                let (topic, messages) = wire::publish_messages(request.into_inner())?;
                let _ = self.driver.handle(Command::Publish { topic, messages }).await;
            }
            return Err(status);
        }
        let (topic, messages) = wire::publish_messages(request.into_inner())?;
        debug!(%topic, messages = messages.len(), "publish");
        let published = match self.driver.handle(Command::Publish { topic, messages }).await? {
            Answer::Published(published) => published,
            other => return Err(unexpected(&other)),
        };
        let response = Response::new(wire::publish_response(published));
        if let (Some(timer), Some(start)) = (&self.publish_latency, start) {
            timer.record(start);
        }
        Ok(response)
    }

    type PublishStreamStream = PublishResponses;

    async fn publish_stream(
        &self,
        request: Request<Streaming<pb::PublishStreamRequest>>,
    ) -> Result<Response<Self::PublishStreamStream>, Status> {
        // Each batch is checked against the principal the stream opened as.
        let allowed = Allowed { access: self.access.clone(), principal: principal_of(&request) };
        let mut guard = self.access.guard(&request);
        let mut inbound = request.into_inner();
        let (responses, rx) = mpsc::channel(PUBLISH_STREAM_WINDOW);
        let driver = self.driver.clone();
        let latency = self.publish_latency.clone();
        let mut stopping = self.stopping.clone();
        tokio::spawn(
            async move {
                // Submitted in request order, so the driver stores them in that order; answered
                // in the same order, each once its own answer came.
                let mut unanswered = std::collections::VecDeque::new();
                let mut reading = true;
                let mut stopped = false;
                let chain = std::sync::Arc::new(PublishChain::default());
                loop {
                    let room = reading && unanswered.len() < PUBLISH_STREAM_WINDOW;
                    let front = async {
                        match unanswered.front_mut() {
                            Some((_, _, answer)) => answer.await,
                            None => std::future::pending().await,
                        }
                    };
                    tokio::select! {
                        biased;
                        answered = front => {
                            let Some((sequence, start, _)) = unanswered.pop_front() else { break };
                            if let (Some(timer), Some(start), Ok(_)) = (&latency, start, &answered) {
                                timer.record(start);
                            }
                            // A refusal with metadata (a follower's hint of the leader) has no
                            // place in a response: it ends the stream, as Publish would answer it.
                            let answered: Result<Answer, Status> = answered;
                            if let Err(status) = &answered {
                                if !status.metadata().is_empty() {
                                    let _ = responses.send(Err(status.clone())).await;
                                    return;
                                }
                            }
                            if responses.send(Ok(stream_answer(sequence, answered))).await.is_err() {
                                return;
                            }
                        }
                        () = stop(&mut stopping), if reading => {
                            reading = false;
                            stopped = true;
                        }
                        // A reload took the stream's token away: it ends, answered or not.
                        status = guard.revoked(None) => {
                            let _ = responses.send(Err(status)).await;
                            return;
                        }
                        next = inbound.message(), if room => match next {
                            Ok(Some(request)) => {
                                super::stages::arrived();
                                let (sequence, start) = (request.sequence, latency.as_ref().map(LatencyTimer::start));
                                let link = Link { chain: chain.clone(), sequence };
                                unanswered.push_back((sequence, start, submit_batch(&driver, request, link, &allowed).await));
                            }
                            Ok(None) => reading = false,
                            Err(status) => {
                                let _ = responses.send(Err(status)).await;
                                return;
                            }
                        },
                    }
                    if !reading && unanswered.is_empty() {
                        if stopped {
                            let status = "the server is shutting down; send the batches not answered again, to another broker or later";
                            let _ = responses.send(Err(Status::unavailable(status))).await;
                        }
                        return;
                    }
                }
            }
            .instrument(info_span!("publish_stream")),
        );
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    type SubscribeStream = ResponseStream;

    async fn subscribe(
        &self,
        request: Request<Streaming<pb::SubscribeRequest>>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        let principal = principal_of(&request);
        let guard = self.access.guard(&request);
        let mut inbound = request.into_inner();
        let Some(mut first) = inbound.message().await? else {
            return Err(Status::invalid_argument(
                "subscription: the stream ended before its first request, which must name a subscription or a topic",
            ));
        };
        let (target, flow) = wire::stream_open(&first)?;
        let resource = match &target {
            StreamTarget::Subscription(name) => ("subscription", name.clone()),
            StreamTarget::Topic { topic, .. } => ("topic", topic.clone()),
        };
        self.access.check(principal.as_ref(), Permission::Subscribe, resource.0, &resource.1)?;
        let revoked = Revocation { guard, what: resource.0, name: resource.1 };
        let ops = wire::stream_ack_ops(&mut first)?;
        let session_timeout_ms = wire::session_timeout_ms(&first);
        let client_id = wire::client_id(&first);
        let leaving = first.leave;
        let open = Command::OpenStream { target, flow, session_timeout_ms, client_id, ops };
        let (responses, rx) = mpsc::channel(self.config.stream_queue_max);
        let (opened_tx, opened_rx) = oneshot::channel();
        // The stream's own task opens it and then serves it, so a client that goes away at
        // any moment still has its stream closed: the task sees the response side dropped.
        let driver = self.driver.clone();
        tokio::spawn(async move {
            let (end, end_rx) = oneshot::channel();
            let sink = StreamSink { responses: responses.clone(), end };
            let opened = match driver.open_stream(open, sink).await {
                Ok(Answer::Opened { stream, .. }) => Ok(stream),
                Ok(other) => Err(unexpected(&other)),
                Err(status) => Err(status),
            };
            match opened {
                Ok(stream) => {
                    let _ = opened_tx.send(Ok(()));
                    let span = info_span!("subscribe", %stream);
                    pump(inbound, driver, stream, responses, end_rx, leaving, revoked).instrument(span).await;
                }
                Err(status) => {
                    let _ = opened_tx.send(Err(status));
                }
            }
        });
        opened_rx.await.map_err(|_| Status::unavailable("the broker is shutting down"))??;
        let responses = tokio_stream::StreamExt::map(ReceiverStream::new(rx), |response| {
            if matches!(&response, Ok(r) if !r.received_messages.is_empty()) {
                super::stages::polled();
            }
            response
        });
        Ok(Response::new(Box::pin(responses)))
    }

    async fn pull(&self, request: Request<pb::PullRequest>) -> Result<Response<pb::PullResponse>, Status> {
        self.access.check_request(&request, Permission::Subscribe, "subscription", |r| &r.subscription)?;
        let req = request.into_inner();
        let command = Command::Pull { subscription: req.subscription, max_messages: req.max_messages };
        let deliveries = match self.driver.handle(command).await? {
            Answer::Deliveries(deliveries) => deliveries,
            other => return Err(unexpected(&other)),
        };
        let received_messages = deliveries.into_iter().map(wire::received_message).collect();
        Ok(Response::new(pb::PullResponse { received_messages }))
    }

    async fn ack(&self, request: Request<pb::AckRequest>) -> Result<Response<pb::AckResponse>, Status> {
        self.access.check_request(&request, Permission::Subscribe, "subscription", |r| &r.subscription)?;
        let req = request.into_inner();
        self.acks(req.subscription, AckOp::Ack, req.ack_ids).await
    }

    async fn nack(&self, request: Request<pb::NackRequest>) -> Result<Response<pb::AckResponse>, Status> {
        self.access.check_request(&request, Permission::Subscribe, "subscription", |r| &r.subscription)?;
        let req = request.into_inner();
        let op = wire::nack_op("delay", req.delay.as_ref(), &req.reason, req.terminal)?;
        self.acks(req.subscription, op, req.ack_ids).await
    }

    async fn modify_ack_deadline(
        &self,
        request: Request<pb::ModifyAckDeadlineRequest>,
    ) -> Result<Response<pb::AckResponse>, Status> {
        self.access.check_request(&request, Permission::Subscribe, "subscription", |r| &r.subscription)?;
        let req = request.into_inner();
        let op = AckOp::ModifyDeadline { deadline_ms: u64::from(req.ack_deadline_seconds) * 1000 };
        self.acks(req.subscription, op, req.ack_ids).await
    }

    async fn seek(&self, request: Request<pb::SeekRequest>) -> Result<Response<pb::SeekResponse>, Status> {
        self.access.check_request(&request, Permission::Admin, "subscription", |r| &r.subscription)?;
        let req = request.into_inner();
        let target = wire::seek_target(req.target)?;
        let offsets = match self.driver.handle(Command::Seek { subscription: req.subscription, target }).await? {
            Answer::Offsets(offsets) => offsets,
            other => return Err(unexpected(&other)),
        };
        let offsets =
            offsets.into_iter().map(|(partition, offset)| pb::PartitionOffset { partition, offset }).collect();
        Ok(Response::new(pb::SeekResponse { offsets }))
    }
}

impl PubSubService {
    async fn acks(
        &self,
        subscription: String,
        op: AckOp,
        ids: Vec<String>,
    ) -> Result<Response<pb::AckResponse>, Status> {
        if ids.is_empty() {
            return Err(Status::invalid_argument("ack_ids: empty; name at least one ack id"));
        }
        let replies = match self.driver.handle(Command::Acks { subscription, op, ack_ids: ids }).await? {
            Answer::Confirmations(replies) => replies,
            other => return Err(unexpected(&other)),
        };
        Ok(Response::new(pb::AckResponse { confirmations: replies.into_iter().map(wire::ack_confirmation).collect() }))
    }
}

/// Carries a stream's later requests to the driver until the stream ends: the client goes
/// away, the client leaves (a request with `leave`; `leaving` when the first one had it), or
/// the server ends it (`end`). After the client half-closes, the stream keeps delivering
/// (grpcurl half-closes right after sending its request).
async fn pump(
    mut inbound: Streaming<pb::SubscribeRequest>,
    driver: DriverHandle,
    stream: StreamId,
    responses: ResponseTx,
    mut end: oneshot::Receiver<Status>,
    leaving: bool,
    mut revocation: Revocation,
) {
    if leaving {
        return leave(&driver, stream).await;
    }
    let mut half_closed = false;
    let status = loop {
        tokio::select! {
            biased;
            status = &mut end => break status.ok(),
            () = responses.closed() => break None,
            status = revocation.revoked() => break Some(status),
            request = inbound.message(), if !half_closed => match request {
                Ok(Some(mut request)) => {
                    let applied = match wire::stream_ack_ops(&mut request) {
                        Ok(ops) => driver.handle(Command::StreamRequest { stream, ops }).await.map(|_| ()),
                        Err(status) => Err(status),
                    };
                    if let Err(status) = applied {
                        break Some(status);
                    }
                    if request.leave {
                        return leave(&driver, stream).await;
                    }
                }
                Ok(None) => {
                    debug!("client half-closed; still delivering");
                    half_closed = true;
                }
                Err(error) if is_undecodable(&error) => {
                    break Some(Status::invalid_argument(format!("SubscribeRequest: {}", error.message())));
                }
                // Larger than request_bytes_max (OUT_OF_RANGE), or holding more entries than a
                // request may (INVALID_ARGUMENT, from the codec): told as a unary call is.
                Err(error) if matches!(error.code(), tonic::Code::OutOfRange | tonic::Code::InvalidArgument) => {
                    break Some(error)
                }
                Err(error) => {
                    debug!(%error, "client stream failed");
                    break None;
                }
            },
        }
    };
    if let Some(status) = status {
        debug!(code = ?status.code(), message = status.message(), "ending stream");
        let _ = tokio::time::timeout(FINAL_STATUS_WAIT, responses.send(Err(status))).await;
    }
    let _ = driver.handle(Command::CloseStream { stream }).await;
}

/// What a Subscribe stream is checked against after a reload of tokens and grants: its
/// credential, and its `subscribe` grant on the subscription (or topic) it opened.
struct Revocation {
    guard: StreamGuard,
    what: &'static str,
    name: String,
}

impl Revocation {
    async fn revoked(&mut self) -> Status {
        self.guard.revoked(Some((Permission::Subscribe, self.what, &self.name))).await
    }
}

/// True when a later request arrived but could not be read as a `SubscribeRequest`: the
/// decoder's error (INTERNAL, as gRPC answers a request it cannot parse) names the field
/// prost stopped at. The client is told INVALID_ARGUMENT with that message, rather than
/// its stream ending as if nothing went wrong; a transport failure is not this.
fn is_undecodable(error: &Status) -> bool {
    error.code() == tonic::Code::Internal && error.message().starts_with("failed to decode Protobuf message")
}

/// The client leaves: its leases are released at once, and the stream ends (OK) once the
/// responses already queued (the confirmations of its last acks) are sent.
async fn leave(driver: &DriverHandle, stream: StreamId) {
    debug!("client leaves; its leases are released");
    let _ = driver.handle(Command::LeaveStream { stream }).await;
}

/// Submits the batch a PublishStream request carries, in its stream's chain; its answer,
/// or its refusal.
async fn submit_batch(
    driver: &DriverHandle,
    request: pb::PublishStreamRequest,
    link: Link,
    allowed: &Allowed,
) -> Answering {
    let checked = publish_of(request).and_then(|command| allowed.publish(command));
    let submitted = match checked {
        Ok(command) => driver.submit_chained(command, link).await,
        Err(refused) => {
            // Refused before the driver saw it: the chain breaks here, as the driver breaks it.
            if wire::resent_by_clients(&refused) {
                link.chain.break_at(link.sequence);
            }
            return Box::pin(std::future::ready(Err(refused)));
        }
    };
    match submitted {
        Ok(answer) => Box::pin(answer),
        Err(stopped) => Box::pin(std::future::ready(Err(stopped))),
    }
}

/// Who a PublishStream's batches are checked as.
struct Allowed {
    access: std::sync::Arc<Access>,
    principal: Option<crate::server::auth::Principal>,
}

impl Allowed {
    /// The publish, if the principal may publish to its topic.
    fn publish(&self, command: Command) -> Result<Command, Status> {
        if let Command::Publish { topic, .. } = &command {
            self.access.check(self.principal.as_ref(), Permission::Publish, "topic", topic)?;
        }
        Ok(command)
    }
}

/// The publish a PublishStream request carries, checked as Publish checks it.
fn publish_of(request: pb::PublishStreamRequest) -> Result<Command, Status> {
    let publish = request.publish.ok_or_else(|| {
        Status::invalid_argument("publish: not set; each PublishStream request carries a batch for one topic")
    })?;
    let (topic, messages) = wire::publish_messages(publish)?;
    Ok(Command::Publish { topic, messages })
}

/// Resolves once the server is stopping (or the server is gone).
async fn stop(stopping: &mut tokio::sync::watch::Receiver<bool>) {
    let _ = stopping.wait_for(|stopping| *stopping).await;
}
