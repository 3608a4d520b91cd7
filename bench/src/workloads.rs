//! The workloads, written once over [`Driver`], [`Sender`] and [`Consumer`]. Each runs a
//! warm-up that is not recorded, then a measured window; each stops at the end of its
//! window or its message budget, whichever comes first, and every loop also has a turn bound.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bytes::{BufMut, Bytes, BytesMut};
use futures::stream::FuturesUnordered;
use futures::StreamExt;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::plan::{
    Plan, Workload, ASYNC_WINDOW, BATCH_MESSAGES, CREATES, CREATES_SECONDS_MAX, CREATORS, GROUP_MEMBERS,
};
use crate::results::Measured;
use crate::servers::{Pids, Usage};
use crate::stats::{Latencies, Timetable};
use crate::systems::{Ack, Consumer, Driver, Layout, Sender};

/// Values a consumer takes per receive (and so acks per batch).
const RECEIVE_BATCH: usize = 100;
/// How long one receive waits for a first message.
const RECEIVE_WAIT: Duration = Duration::from_millis(20);
/// Batches in flight while pre-filling a backlog.
const PREFILL_WINDOW: usize = 8;
/// Safety bound on the turns of any loop here; time and message budgets end them first.
const TURNS_MAX: u64 = 1 << 40;
/// How long unanswered publishes may take to settle after a window.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);
/// How long an end-to-end consumer waits past the window for the last messages.
const E2E_GRACE: Duration = Duration::from_secs(5);

/// The topic and groups a workload needs.
pub fn layout(workload: Workload) -> Layout {
    match workload {
        Workload::SyncPublish | Workload::AsyncPublish | Workload::BatchPublish | Workload::Creates => {
            Layout::publish_only()
        }
        Workload::BacklogConsume | Workload::ProduceConsume | Workload::EndToEnd(_) => {
            Layout { partitions: 1, groups: vec![1] }
        }
        Workload::Group4 => Layout { partitions: GROUP_MEMBERS as u32, groups: vec![GROUP_MEMBERS] },
        Workload::Fanout4 => Layout { partitions: 1, groups: vec![1; GROUP_MEMBERS] },
    }
}

/// Runs `workload` with `size`-byte values against the server with process ids `pid`.
pub async fn run(workload: Workload, size: usize, plan: &Plan, driver: &Driver, pid: Pids) -> anyhow::Result<Measured> {
    let window = Window::new(plan);
    let measured = match workload {
        Workload::SyncPublish => publish_only(driver, size, plan, pid, Shape::ONE, window).await?,
        Workload::AsyncPublish => publish_only(driver, size, plan, pid, Shape::ASYNC, window).await?,
        Workload::BatchPublish => publish_only(driver, size, plan, pid, Shape::BATCH, window).await?,
        Workload::BacklogConsume => backlog(driver, size, plan, pid).await?,
        Workload::ProduceConsume => live(driver, size, plan, pid, &[(0, 0)], window).await?,
        Workload::Group4 => {
            let members: Vec<(usize, usize)> = (0..GROUP_MEMBERS).map(|m| (0, m)).collect();
            live(driver, size, plan, pid, &members, window).await?
        }
        Workload::Fanout4 => {
            let groups: Vec<(usize, usize)> = (0..GROUP_MEMBERS).map(|g| (g, 0)).collect();
            live(driver, size, plan, pid, &groups, window).await?
        }
        Workload::EndToEnd(rate) => end_to_end(driver, size, plan, pid, rate).await?,
        Workload::Creates => during_creates(driver, size, plan, pid).await?,
    };
    Ok(measured)
}

/// The fixed instants of a timed case: warm-up until `from`, measured until `until`.
#[derive(Debug, Clone, Copy)]
struct Window {
    from: Instant,
    until: Instant,
}

impl Window {
    fn new(plan: &Plan) -> Window {
        let from = Instant::now() + plan.warmup();
        Window { from, until: from + plan.window() }
    }

    fn contains(&self, t: Instant) -> bool {
        t >= self.from && t < self.until
    }
}

/// The server's CPU time and the wall time over the measured window.
struct Meter {
    pid: Pids,
    started: Instant,
    usage: Usage,
}

impl Meter {
    fn start(pid: Pids) -> anyhow::Result<Meter> {
        Ok(Meter { pid, started: Instant::now(), usage: pid.usage()? })
    }

    /// (seconds elapsed, server CPU seconds used, the server's usage now)
    fn stop(&self) -> anyhow::Result<(f64, f64, Usage)> {
        let seconds = self.started.elapsed().as_secs_f64();
        let now = self.pid.usage()?;
        Ok((seconds, now.cpu_seconds - self.usage.cpu_seconds, now))
    }
}

/// A value of `size` bytes.
pub fn filler(size: usize) -> Bytes {
    Bytes::from(vec![b'x'; size])
}

/// A value of `size` bytes (at least 8) starting with `index`, little-endian.
pub fn indexed(index: u64, size: usize) -> Bytes {
    let mut value = BytesMut::with_capacity(size.max(8));
    value.put_u64_le(index);
    value.resize(size.max(8), b'x');
    value.freeze()
}

/// The index an [`indexed`] value starts with.
pub fn index_of(value: &[u8]) -> Option<u64> {
    Some(u64::from_le_bytes(value.get(..8)?.try_into().ok()?))
}

type Timed = std::pin::Pin<Box<dyn std::future::Future<Output = (Instant, anyhow::Result<()>)> + Send>>;

fn timed(ack: Ack) -> Timed {
    let started = Instant::now();
    Box::pin(async move { (started, ack.await) })
}

/// How a publishing loop publishes: requests of `batch` messages, up to `in_flight_max`
/// of them unanswered.
#[derive(Debug, Clone, Copy)]
struct Shape {
    in_flight_max: usize,
    batch: usize,
}

impl Shape {
    const ONE: Shape = Shape { in_flight_max: 1, batch: 1 };
    const ASYNC: Shape = Shape { in_flight_max: ASYNC_WINDOW, batch: 1 };
    const BATCH: Shape = Shape { in_flight_max: 1, batch: BATCH_MESSAGES };
}

/// What a publishing loop saw in its window.
struct Published {
    messages: u64,
    latencies: Latencies,
    seconds: f64,
    cpu_seconds: f64,
    usage: Usage,
}

/// Publishes with up to `in_flight_max` requests of `batch` messages unanswered, until the
/// window ends or the budget is spent; counts and times the requests answered in the window.
async fn publish_loop(
    sender: &Sender,
    size: usize,
    plan: &Plan,
    pid: Pids,
    shape: Shape,
    window: Window,
    stop: &AtomicBool,
) -> anyhow::Result<Published> {
    let Shape { in_flight_max, batch } = shape;
    let value = filler(size);
    let mut in_flight = FuturesUnordered::new();
    let (mut messages, mut latencies, mut meter) = (0u64, Latencies::default(), None);
    for _ in 0..TURNS_MAX {
        let now = Instant::now();
        if meter.is_none() && now >= window.from {
            meter = Some(Meter::start(pid)?);
        }
        if now >= window.until || messages >= plan.case_messages_max || stop.load(Ordering::Relaxed) {
            break;
        }
        while in_flight.len() < in_flight_max {
            let ack = match (in_flight_max, batch) {
                (_, 2..) => sender.send_batch(vec![value.clone(); batch]).await?,
                (1, _) => sender.send_sync(value.clone(), !plan.sync_via_generated).await?,
                _ => sender.send(value.clone()).await?,
            };
            in_flight.push(timed(ack));
        }
        if let Some((started, result)) = in_flight.next().await {
            result.context("publish")?;
            let answered = Instant::now();
            if window.contains(answered) {
                messages += batch as u64;
                latencies.record(answered - started);
            }
        }
    }
    let Some(meter) = meter else { bail!("the window never started") };
    let (seconds, cpu_seconds, usage) = meter.stop()?;
    tokio::time::timeout(DRAIN_TIMEOUT, async {
        while let Some((_, result)) = in_flight.next().await {
            result.context("publish")?;
        }
        anyhow::Ok(())
    })
    .await
    .context("publishes still unanswered after the window")??;
    Ok(Published { messages, latencies, seconds, cpu_seconds, usage })
}

async fn publish_only(
    driver: &Driver,
    size: usize,
    plan: &Plan,
    pid: Pids,
    shape: Shape,
    window: Window,
) -> anyhow::Result<Measured> {
    let sender = driver.sender(plan.publisher_in_flight).await?;
    let p = publish_loop(&sender, size, plan, pid, shape, window, &AtomicBool::new(false)).await?;
    sender.close().await?;
    let latency = p.latencies.summary();
    Ok(Measured::new(p.messages, p.seconds, size, p.cpu_seconds, p.usage).with_latency(latency))
}

/// One publish in flight while [`CREATORS`] clients make [`CREATES`] topics and
/// subscriptions, each client one create at a time: the window is the creates' duration
/// (at most [`CREATES_SECONDS_MAX`]). The latency is the publishes'; the second rate is
/// creates per second, and the note gives the creates' own latency.
async fn during_creates(driver: &Driver, size: usize, plan: &Plan, pid: Pids) -> anyhow::Result<Measured> {
    let stop = Arc::new(AtomicBool::new(false));
    let sender = driver.sender(plan.publisher_in_flight).await?;
    // A short warm-up on the topic alone, then the creates begin with the window.
    let from = Instant::now() + plan.warmup().min(Duration::from_secs(1));
    let window = Window { from, until: from + CREATES_SECONDS_MAX };
    let mut creators = tokio::task::JoinSet::new();
    for creator in 0..CREATORS {
        let creator_client = driver.creator().await?;
        let stop = stop.clone();
        creators.spawn(async move {
            tokio::time::sleep_until(from.into()).await;
            let mut latencies = Latencies::default();
            // Pairs i = creator, creator + CREATORS, ...: a topic and a subscription each.
            for i in (creator..CREATES / 2).step_by(CREATORS) {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let started = Instant::now();
                creator_client.create_topic(i).await.with_context(|| format!("create topic {i}"))?;
                let between = Instant::now();
                latencies.record(between - started);
                creator_client.create_subscription(i).await.with_context(|| format!("create subscription {i}"))?;
                latencies.record(between.elapsed());
            }
            anyhow::Ok((latencies, Instant::now()))
        });
    }
    let publishing = {
        let stop = stop.clone();
        async move { publish_loop(&sender, size, plan, pid, Shape::ONE, window, &stop).await.map(|p| (p, sender)) }
    };
    let creating = async {
        let mut all = Latencies::default();
        let mut last = from;
        let mut failed = None;
        while let Some(joined) = creators.join_next().await {
            match joined.context("creator task")? {
                Ok((latencies, done)) => {
                    all.merge(&latencies);
                    last = last.max(done);
                }
                Err(e) => {
                    failed.get_or_insert(e);
                    stop.store(true, Ordering::Relaxed);
                }
            }
        }
        stop.store(true, Ordering::Relaxed);
        match failed {
            Some(e) => Err(e),
            None => Ok((all, last)),
        }
    };
    let (published, created) = tokio::join!(publishing, creating);
    let (creates, last) = created?;
    let (p, sender) = published?;
    sender.close().await?;
    let creates_summary = creates.summary().context("no create was timed")?;
    let create_seconds = (last - from).as_secs_f64();
    let mut measured =
        Measured::new(p.messages, p.seconds, size, p.cpu_seconds, p.usage).with_latency(p.latencies.summary());
    measured.second_rate = Some(creates_summary.count as f64 / create_seconds.max(f64::MIN_POSITIVE));
    measured.note = Some(format!(
        "{} creates in {create_seconds:.1} s; a create took p50 {} us, p99 {} us, max {} us",
        creates_summary.count, creates_summary.p50_us, creates_summary.p99_us, creates_summary.max_us
    ));
    Ok(measured)
}

/// Pre-fills a backlog (not timed), then times consuming and acking all of it with one
/// consumer, until the last ack is sent (and, where the client can, confirmed).
async fn backlog(driver: &Driver, size: usize, plan: &Plan, pid: Pids) -> anyhow::Result<Measured> {
    let target = plan.backlog_messages(size);
    let bound = Duration::from_secs(plan.backlog_seconds_max);
    let sender = driver.sender(plan.publisher_in_flight).await?;
    let filled = prefill(&sender, target, size, bound).await?;
    sender.close().await?;
    let meter = Meter::start(pid)?;
    let mut consumer = driver.consumer(0, 0).await?;
    let (mut received, mut values) = (0u64, Vec::with_capacity(RECEIVE_BATCH));
    let deadline = Instant::now() + bound;
    for _ in 0..TURNS_MAX {
        if received >= filled || Instant::now() >= deadline {
            break;
        }
        consumer.receive(RECEIVE_BATCH, RECEIVE_WAIT, &mut values).await?;
        received += values.len() as u64;
        values.clear();
    }
    consumer.close().await?;
    let (seconds, cpu_seconds, usage) = meter.stop()?;
    let mut measured = Measured::new(received, seconds, size, cpu_seconds, usage);
    // Hitting a bound is a measurement, not a failure: the rate is what was done in the time.
    let mut note = format!("backlog {filled}");
    if filled < target {
        note = format!("backlog {filled} of {target} (the pre-fill hit {bound:?})");
    }
    if received < filled {
        note = format!("{note}; drained {received} within {bound:?}");
    }
    measured.note = Some(note);
    Ok(measured)
}

/// Publishes `count` values in batches, several in flight, within `bound`; returns how
/// many were stored.
pub async fn prefill(sender: &Sender, count: u64, size: usize, bound: Duration) -> anyhow::Result<u64> {
    let value = filler(size);
    let deadline = Instant::now() + bound;
    let (mut queued, mut stored) = (0u64, 0u64);
    let mut in_flight = FuturesUnordered::new();
    for _ in 0..TURNS_MAX {
        while in_flight.len() < PREFILL_WINDOW && queued < count && Instant::now() < deadline {
            let n = (count - queued).min(BATCH_MESSAGES as u64);
            let ack = sender.send_batch(vec![value.clone(); n as usize]).await?;
            in_flight.push(async move { ack.await.map(|()| n) });
            queued += n;
        }
        match in_flight.next().await {
            Some(result) => stored += result.context("pre-fill")?,
            None => break,
        }
    }
    Ok(stored)
}

/// One publisher (up to [`ASYNC_WINDOW`] unanswered) and consumers `members` (group,
/// member) at once; the rate is the deliveries to all consumers, the second rate the
/// publishes.
async fn live(
    driver: &Driver,
    size: usize,
    plan: &Plan,
    pid: Pids,
    members: &[(usize, usize)],
    window: Window,
) -> anyhow::Result<Measured> {
    let stop = Arc::new(AtomicBool::new(false));
    let mut consumers = tokio::task::JoinSet::new();
    for &(group, member) in members {
        let consumer = driver.consumer(group, member).await?;
        consumers.spawn(count_in_window(consumer, window, stop.clone()));
    }
    let sender = driver.sender(plan.publisher_in_flight).await?;
    let published = publish_loop(&sender, size, plan, pid, Shape::ASYNC, window, &stop).await;
    stop.store(true, Ordering::Relaxed);
    let mut delivered = 0u64;
    while let Some(joined) = consumers.join_next().await {
        delivered += joined.context("consumer task")??;
    }
    let published = published?;
    sender.close().await?;
    let mut measured = Measured::new(delivered, published.seconds, size, published.cpu_seconds, published.usage);
    measured.second_rate = Some(published.messages as f64 / published.seconds);
    Ok(measured)
}

/// Receives until the window ends (or `stop`), counting what arrives inside it.
async fn count_in_window(mut consumer: Consumer, window: Window, stop: Arc<AtomicBool>) -> anyhow::Result<u64> {
    let (mut counted, mut values) = (0u64, Vec::with_capacity(RECEIVE_BATCH));
    for _ in 0..TURNS_MAX {
        let now = Instant::now();
        if now >= window.until || stop.load(Ordering::Relaxed) {
            break;
        }
        consumer.receive(RECEIVE_BATCH, RECEIVE_WAIT, &mut values).await?;
        if window.contains(Instant::now()) {
            counted += values.len() as u64;
        }
        values.clear();
    }
    consumer.close().await?;
    Ok(counted)
}

/// Publishes at `rate` msgs/s on a fixed timetable (up to [`ASYNC_WINDOW`] unanswered) and
/// times each message from its intended send time to its delivery to one consumer.
async fn end_to_end(driver: &Driver, size: usize, plan: &Plan, pid: Pids, rate: u32) -> anyhow::Result<Measured> {
    let table = Timetable::new(rate);
    let consumer = driver.consumer(0, 0).await?;
    let sender = Arc::new(driver.sender(plan.publisher_in_flight).await?);
    let start = Instant::now();
    let warm = table.due_by(plan.warmup());
    let total = table.due_by(plan.warmup() + plan.window()).min(warm + plan.case_messages_max);
    let deadline = start + plan.warmup() + plan.window() + E2E_GRACE;
    let receiving = tokio::spawn(receive_timed(consumer, table, start, warm, total, deadline));
    let pace = Pace { table, start, total, warm, size, pid };
    let sent = send_on_timetable(sender.clone(), pace).await;
    let (latencies, delivered) = receiving.await.context("consumer task")??;
    let (seconds, cpu_seconds, usage) = sent?;
    match Arc::try_unwrap(sender) {
        Ok(sender) => sender.close().await?,
        Err(_) => bail!("the pacing thread still holds the sender"),
    }
    let mut measured = Measured::new(delivered, seconds, size, cpu_seconds, usage);
    measured.latency = latencies.summary();
    let expected = total - warm;
    if delivered < expected {
        let missing = expected - delivered;
        measured.note = Some(format!("{missing} of {expected} not delivered within {E2E_GRACE:?} after the window"));
    }
    Ok(measured)
}

/// The timetable of one end-to-end case: `total` messages from `start`, the meter running
/// from message `warm` on.
#[derive(Debug, Clone, Copy)]
struct Pace {
    table: Timetable,
    start: Instant,
    total: u64,
    warm: u64,
    size: usize,
    pid: Pids,
}

/// Sends message `i` at `start + table.intended(i)`, or as soon after as it can. A blocking
/// thread keeps the time: `std::thread::sleep` wakes within tens of microseconds, where
/// tokio's timer wakes on 1 ms ticks. The acks are awaited here, at most [`ASYNC_WINDOW`]
/// unanswered (the thread waits for room, and the late sends are charged to latency).
async fn send_on_timetable(sender: Arc<Sender>, pace: Pace) -> anyhow::Result<(f64, f64, Usage)> {
    let (acks_tx, mut acks_rx) = tokio::sync::mpsc::channel::<(Ack, OwnedSemaphorePermit)>(ASYNC_WINDOW);
    let room = Arc::new(Semaphore::new(ASYNC_WINDOW));
    let runtime = tokio::runtime::Handle::current();
    let pacing = tokio::task::spawn_blocking(move || -> anyhow::Result<(f64, f64, Usage)> {
        let (mut next, mut meter) = (0u64, None);
        for _ in 0..TURNS_MAX {
            if next >= pace.total {
                break;
            }
            if next >= pace.table.due_by(pace.start.elapsed()) {
                let wake = pace.start + pace.table.intended(next);
                std::thread::sleep(wake.saturating_duration_since(Instant::now()));
                continue;
            }
            if next == pace.warm {
                meter = Some(Meter::start(pace.pid)?);
            }
            let permit = runtime.block_on(room.clone().acquire_owned())?;
            let ack = runtime.block_on(sender.send(indexed(next, pace.size)))?;
            acks_tx.blocking_send((ack, permit)).map_err(|_| anyhow::anyhow!("the ack task ended"))?;
            next += 1;
        }
        let Some(meter) = meter else { bail!("the window never started") };
        meter.stop()
    });
    let mut in_flight = FuturesUnordered::new();
    let settled = tokio::time::timeout(pace.table.intended(pace.total) + DRAIN_TIMEOUT, async {
        // Ends when the thread is done and has dropped its end of the channel.
        for _ in 0..TURNS_MAX {
            tokio::select! {
                received = acks_rx.recv() => match received {
                    Some((ack, permit)) => in_flight.push(async move { let _permit = permit; ack.await }),
                    None => break,
                },
                Some(result) = in_flight.next(), if !in_flight.is_empty() => result.context("publish")?,
            }
        }
        while let Some(result) = in_flight.next().await {
            result.context("publish")?;
        }
        anyhow::Ok(())
    })
    .await;
    // Closing our end stops the thread if we ended early.
    drop(acks_rx);
    let paced = pacing.await.context("pacing thread")?;
    settled.context("publishes still unanswered")??;
    paced
}

/// Receives until message `total - 1` is in (or `deadline`), recording the latency of
/// messages from `warm` on; returns them and how many of those arrived.
async fn receive_timed(
    mut consumer: Consumer,
    table: Timetable,
    start: Instant,
    warm: u64,
    total: u64,
    deadline: Instant,
) -> anyhow::Result<(Latencies, u64)> {
    let (mut latencies, mut delivered, mut seen) = (Latencies::default(), 0u64, 0u64);
    let mut values = Vec::with_capacity(RECEIVE_BATCH);
    for _ in 0..TURNS_MAX {
        if seen >= total || Instant::now() >= deadline {
            break;
        }
        consumer.receive(RECEIVE_BATCH, RECEIVE_WAIT, &mut values).await?;
        let now = Instant::now();
        for value in values.drain(..) {
            let Some(i) = index_of(&value) else { bail!("a value of {} bytes has no index", value.len()) };
            seen += 1;
            if i >= warm {
                delivered += 1;
                latencies.record(now.saturating_duration_since(start + table.intended(i)));
            }
        }
    }
    consumer.close().await?;
    Ok((latencies, delivered))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_indexed_value_has_its_size_and_gives_its_index_back() {
        let value = indexed(123_456, 16);
        assert_eq!(value.len(), 16);
        assert_eq!(index_of(&value), Some(123_456));
        assert_eq!(index_of(b"short"), None);
    }
}
