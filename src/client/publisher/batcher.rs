//! The publisher's gathering task: takes queued messages into batches (by count, bytes
//! and linger) whenever the window of batches in flight has room, and hands them to the
//! pipeline in order.

use std::sync::Arc;

use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit, Semaphore};

use super::{Command, PublisherSettings, Queued};

pub(super) struct Batcher {
    pub(super) settings: PublisherSettings,
    /// Room in the window: a batch is gathered only with a permit, which goes with it and
    /// comes back when it is answered. While the window is full, messages wait in the
    /// queue, so the next batch takes every message queued meanwhile.
    pub(super) window: Arc<Semaphore>,
    pub(super) pipeline: mpsc::Sender<Item>,
}

/// What the gatherer hands the pipeline, in order.
pub(super) enum Item {
    Batch(Batch, OwnedSemaphorePermit),
    /// Answer once every batch handed over before it is answered.
    Flush(oneshot::Sender<()>),
}

/// A batch being gathered.
#[derive(Default)]
pub(super) struct Batch {
    pub(super) messages: Vec<Queued>,
    pub(super) bytes: usize,
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
    /// A flush asked for it; hand the flush over after the batch.
    Flush(oneshot::Sender<()>),
    /// The publisher is gone: hand the batch over, then stop.
    Closed,
}

impl Batcher {
    /// Runs until the publisher is dropped or shut down and its queue drained; the pipeline
    /// then answers what it holds and ends.
    pub(super) async fn run(self, mut commands: mpsc::Receiver<Command>) {
        // A message that did not fit the previous batch opens the next one.
        let mut carried: Option<Queued> = None;
        loop {
            let Ok(permit) = self.window.clone().acquire_owned().await else { return };
            let first = match carried.take() {
                Some(q) => q,
                None => match self.first(&mut commands).await {
                    Some(q) => q,
                    None => return,
                },
            };
            let mut batch = Batch::default();
            batch.push(first);
            let gathered = self.gather(&mut batch, &mut commands, &mut carried).await;
            if self.pipeline.send(Item::Batch(batch, permit)).await.is_err() {
                return;
            }
            match gathered {
                Gathered::Ready => {}
                Gathered::Flush(done) => {
                    if self.pipeline.send(Item::Flush(done)).await.is_err() {
                        return;
                    }
                }
                // The next `recv` sees the closed queue and ends the task.
                Gathered::Closed => {}
            }
        }
    }

    /// The next message to open a batch with, handing flushes that come first to the
    /// pipeline; `None` once the publisher is gone.
    async fn first(&self, commands: &mut mpsc::Receiver<Command>) -> Option<Queued> {
        // Each round takes one command off the bounded queue.
        loop {
            match commands.recv().await? {
                Command::Flush(done) => self.pipeline.send(Item::Flush(done)).await.ok()?,
                Command::Publish(q) => return Some(q),
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
}
