//! The driver: the one task that owns the broker core.
//!
//! gRPC handlers send it jobs (closures over the [`Driver`]) on a bounded queue and await
//! their answers; between jobs it fires lease timers and routes the core's outputs to the
//! Subscribe streams. The core never waits on a client: a stream whose response queue is
//! full is ended with RESOURCE_EXHAUSTED, and its leases go back to the other members.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tonic::Status;

use crate::core::{AckOp, Broker, BrokerError, Flow, Output, StreamId, StreamTarget};
use crate::env::Clock;
use crate::wire::{self, pb};

/// What a Subscribe stream's responses travel on.
pub type ResponseTx = mpsc::Sender<Result<pb::SubscribeResponse, Status>>;

/// Jobs the driver runs before it flushes outputs, at most: a bound on how long a burst of
/// requests can delay deliveries and timers.
const JOBS_PER_TURN_MAX: usize = 256;

type Job = Box<dyn FnOnce(&mut Driver) + Send>;

/// The handlers' side of the driver.
#[derive(Clone)]
pub struct DriverHandle {
    jobs: mpsc::Sender<Job>,
}

impl DriverHandle {
    /// Runs `f` on the driver and returns its result. Waits while the job queue is full.
    pub async fn call<R, F>(&self, f: F) -> Result<R, Status>
    where
        R: Send + 'static,
        F: FnOnce(&mut Driver) -> R + Send + 'static,
    {
        let (tx, rx) = oneshot::channel();
        let job: Job = Box::new(move |driver| {
            let _ = tx.send(f(driver));
        });
        self.jobs.send(job).await.map_err(|_| stopped())?;
        rx.await.map_err(|_| stopped())
    }
}

fn stopped() -> Status {
    Status::unavailable("the broker is shutting down")
}

/// A stream as the driver knows it.
struct Sink {
    responses: ResponseTx,
    /// Tells the stream's task to end the stream with this status.
    end: oneshot::Sender<Status>,
}

/// The broker, its clock, and the open streams' sinks.
pub struct Driver {
    pub broker: Broker,
    clock: Arc<dyn Clock>,
    sinks: BTreeMap<StreamId, Sink>,
    /// Set by shutdown: no new stream may open, so graceful shutdown is not kept waiting.
    closing: bool,
}

impl Driver {
    /// Starts the driver task; it runs until every handle is dropped.
    pub fn spawn(broker: Broker, clock: Arc<dyn Clock>, queue_max: usize) -> DriverHandle {
        let (jobs, rx) = mpsc::channel(queue_max);
        let driver = Driver { broker, clock, sinks: BTreeMap::new(), closing: false };
        tokio::spawn(driver.run(rx));
        DriverHandle { jobs }
    }

    pub fn now_ms(&self) -> u64 {
        self.clock.now_ms()
    }

    pub fn wall_ms(&self) -> u64 {
        self.clock.wall_ms()
    }

    async fn run(mut self, mut jobs: mpsc::Receiver<Job>) {
        loop {
            let deadline = self.broker.poll_timeout();
            let wait = deadline.map(|d| Duration::from_millis(d.saturating_sub(self.now_ms())));
            tokio::select! {
                job = jobs.recv() => {
                    let Some(job) = job else { break };
                    job(&mut self);
                    for _ in 1..JOBS_PER_TURN_MAX {
                        let Ok(job) = jobs.try_recv() else { break };
                        job(&mut self);
                    }
                }
                () = tokio::time::sleep(wait.unwrap_or_default()), if wait.is_some() => {
                    let now = self.now_ms();
                    self.broker.handle_timeout(now);
                }
            }
            self.flush();
        }
    }

    /// Sends the core's outputs to their streams.
    fn flush(&mut self) {
        while let Some(output) = self.broker.poll_output() {
            match output {
                Output::Deliver { stream, deliveries } => {
                    let received_messages = deliveries.into_iter().map(wire::received_message).collect();
                    self.send(stream, pb::SubscribeResponse { received_messages, ..Default::default() });
                }
                Output::EndStream { stream, reason } => {
                    if let Some(sink) = self.sinks.remove(&stream) {
                        let _ = sink.end.send(wire::status_of(&reason));
                    }
                }
            }
        }
    }

    /// Queues a response on a stream without waiting. A full queue means the client is not
    /// reading: the stream ends, and its leases go to the other members. The last slot of
    /// the queue is kept for the status that ends the stream.
    fn send(&mut self, stream: StreamId, response: pb::SubscribeResponse) {
        let Some(sink) = self.sinks.get(&stream) else { return };
        let sent = if sink.responses.is_closed() {
            Err(mpsc::error::TrySendError::Closed(()))
        } else if sink.responses.capacity() > 1 {
            sink.responses.try_send(Ok(response)).map_err(|e| match e {
                mpsc::error::TrySendError::Full(_) => mpsc::error::TrySendError::Full(()),
                mpsc::error::TrySendError::Closed(_) => mpsc::error::TrySendError::Closed(()),
            })
        } else {
            Err(mpsc::error::TrySendError::Full(()))
        };
        match sent {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => {
                let capacity = sink.responses.max_capacity();
                let status = Status::resource_exhausted(format!(
                    "the client is not reading this stream: its queue of stream_queue_max = {capacity} responses is full"
                ));
                self.end_stream(stream, status);
            }
            Err(mpsc::error::TrySendError::Closed(_)) => self.close_stream(stream),
        }
    }

    /// Opens a stream and applies what its first request carried: the first response names
    /// the subscription, confirmations and deliveries follow. A refused first request opens
    /// nothing.
    pub fn open_stream(
        &mut self,
        target: StreamTarget,
        flow: Flow,
        first_ops: Vec<(AckOp, Vec<String>)>,
        responses: ResponseTx,
        end: oneshot::Sender<Status>,
    ) -> Result<StreamId, Status> {
        if self.closing {
            return Err(stopped());
        }
        for (op, _) in &first_ops {
            self.broker.check_deadline(*op)?;
        }
        let now = self.now_ms();
        let (stream, subscription) = self.broker.open_stream(now, target, flow)?;
        let hello = pb::SubscribeResponse { subscription, ..Default::default() };
        self.sinks.insert(stream, Sink { responses, end });
        self.send(stream, hello);
        self.stream_acks(stream, first_ops)?;
        Ok(stream)
    }

    /// Applies a stream's acks, nacks and deadline changes (all, or none if one is refused)
    /// and queues their confirmations.
    pub fn stream_acks(&mut self, stream: StreamId, ops: Vec<(AckOp, Vec<String>)>) -> Result<(), BrokerError> {
        if ops.is_empty() {
            return Ok(());
        }
        let now = self.now_ms();
        let replies = self.broker.stream_acks(now, stream, &ops)?;
        let ack_confirmations = replies.into_iter().map(wire::ack_confirmation).collect();
        self.send(stream, pb::SubscribeResponse { ack_confirmations, ..Default::default() });
        Ok(())
    }

    /// The client went away: forget the stream and release its leases.
    pub fn close_stream(&mut self, stream: StreamId) {
        self.sinks.remove(&stream);
        let now = self.now_ms();
        self.broker.close_stream(now, stream);
    }

    /// Ends a stream from the server's side with `status`.
    pub fn end_stream(&mut self, stream: StreamId, status: Status) {
        if let Some(sink) = self.sinks.remove(&stream) {
            let _ = sink.end.send(status);
        }
        let now = self.now_ms();
        self.broker.close_stream(now, stream);
    }

    /// Ends every open stream with `status` and refuses new ones (shutdown).
    pub fn end_all_streams(&mut self, status: Status) {
        self.closing = true;
        let streams: Vec<StreamId> = self.sinks.keys().copied().collect();
        for stream in streams {
            self.end_stream(stream, status.clone());
        }
    }
}
