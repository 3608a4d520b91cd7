//! A load generator for the broker's hot paths, bounded by time and count.
//!
//! ```text
//! cargo run --release --example loadgen -- [--addr HOST:PORT] [--secs S] [--count N] WORKLOAD...
//! ```
//!
//! Without `--addr` it starts a server in this process (memory log, default config, on a
//! 2-thread runtime of its own; the load runs on another 2-thread runtime). With `--addr`
//! it drives a server started elsewhere (the release binary, or one under callgrind).
//!
//! Workloads (run in the order given, each on topics of its own, 128 B values):
//! - `batch`: raw Publish requests of 100 messages, `--inflight` (4) requests in flight.
//! - `publisher`: the client library's `Publisher` (default settings, or `--batch-max N`,
//!   `--linger-ms MS`), 256 handles in flight (`--window N`).
//! - `consume`: fills a backlog of `--count` messages, then reads it with the client's
//!   `Subscriber` (default settings, or `--ack-batch N`), acking every message; the time is
//!   from the open to the last ack confirmed.
//! - `latency`: unary single-message publishes at `--rate` (5000) msg/s for `--secs`,
//!   received by a `Subscriber`; publish-to-receive latency from a stamp in the payload.
//! - `fill`: publishes `--count` messages in batches and prints the server's RSS (`--pid`,
//!   or this process when the server runs here).
//!
//! Every workload stops at `--secs` (default 5) or `--count` (default 1 000 000) messages.
#![allow(clippy::disallowed_methods, reason = "a load generator measures wall time: that is its output")]

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bytes::Bytes;
use tokio::runtime::Runtime;
use tokio_stream::StreamExt;

use hdrhistogram::Histogram;
use mini_pubsub::client::{
    Client, OutgoingMessage, PublisherSettings, SubscribeTarget, SubscriberSettings, SubscriptionSettings,
    TopicSettings,
};
use mini_pubsub::env::{Net, TokioClock, TokioNet};
use mini_pubsub::server::{self, ServerConfig};
use mini_pubsub::storage::MemoryStorage;
use mini_pubsub::wire::pb;

const VALUE_BYTES: usize = 128;
const BATCH_MESSAGES: usize = 100;
const PUBLISHER_WINDOW: usize = 256;
/// Messages a fill or backlog request carries.
const FILL_BATCH_MESSAGES: usize = 1000;

struct Args {
    addr: Option<SocketAddr>,
    secs: u64,
    count: u64,
    inflight: usize,
    rate: u64,
    pid: Option<u32>,
    /// `publisher`: settings other than the defaults, to compare.
    batch_max: Option<usize>,
    linger_ms: Option<u64>,
    /// `publisher`: handles in flight (default 256).
    window: usize,
    /// `consume`: the subscriber's `ack_batch_max`, to compare.
    ack_batch: Option<usize>,
    workloads: Vec<String>,
}

fn parse_args() -> anyhow::Result<Args> {
    let mut args = Args {
        addr: None,
        secs: 5,
        count: 1_000_000,
        inflight: 4,
        rate: 5000,
        pid: None,
        batch_max: None,
        linger_ms: None,
        window: PUBLISHER_WINDOW,
        ack_batch: None,
        workloads: Vec::new(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = || it.next().with_context(|| format!("{arg} needs a value"));
        match arg.as_str() {
            "--addr" => args.addr = Some(value()?.parse()?),
            "--secs" => args.secs = value()?.parse()?,
            "--count" => args.count = value()?.parse()?,
            "--inflight" => args.inflight = value()?.parse()?,
            "--rate" => args.rate = value()?.parse()?,
            "--pid" => args.pid = Some(value()?.parse()?),
            "--batch-max" => args.batch_max = Some(value()?.parse()?),
            "--linger-ms" => args.linger_ms = Some(value()?.parse()?),
            "--window" => args.window = value()?.parse()?,
            "--ack-batch" => args.ack_batch = Some(value()?.parse()?),
            "batch" | "publisher" | "consume" | "latency" | "fill" => args.workloads.push(arg),
            "--bench" => {}
            other => bail!("unknown argument `{other}`"),
        }
    }
    if args.workloads.is_empty() {
        args.workloads = vec!["batch".into(), "publisher".into(), "consume".into(), "latency".into()];
    }
    Ok(args)
}

fn runtime() -> anyhow::Result<Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?)
}

fn main() -> anyhow::Result<()> {
    let args = parse_args()?;
    let server_rt = runtime()?;
    let (addr, stop) = match args.addr {
        Some(addr) => (addr, None),
        None => {
            let (addr, incoming) = server_rt.block_on(TokioNet.bind("127.0.0.1:0".parse()?))?;
            let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
            let signal = async move {
                let _ = stopped.await;
            };
            let storage = Box::new(MemoryStorage);
            let clock = Arc::new(TokioClock::new());
            let task = server_rt.spawn(server::run(incoming, signal, ServerConfig::default(), storage, clock));
            (addr, Some((stop, task)))
        }
    };
    let pid = args.pid.or_else(|| stop.is_some().then(std::process::id));
    let rt = runtime()?;
    let since_epoch = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?;
    let run = format!("{:x}", since_epoch.as_millis());
    rt.block_on(async {
        let client = Client::connect(format!("http://{addr}")).await?;
        for (n, workload) in args.workloads.iter().enumerate() {
            let topic = format!("lg-{run}-{n}-{workload}");
            match workload.as_str() {
                "batch" => batch(&client, &topic, &args).await?,
                "publisher" => publisher(&client, &topic, &args).await?,
                "consume" => consume(&client, &topic, &args).await?,
                "latency" => latency(&client, &topic, &args).await?,
                "fill" => fill(&client, &topic, &args, pid).await?,
                _ => unreachable!("checked by parse_args"),
            }
        }
        anyhow::Ok(())
    })?;
    if let Some((stop, task)) = stop {
        let _ = stop.send(());
        server_rt.block_on(async { tokio::time::timeout(Duration::from_secs(30), task).await })???;
    }
    Ok(())
}

fn value(n: u64) -> Bytes {
    let mut v = vec![b'x'; VALUE_BYTES];
    v[..8].copy_from_slice(&n.to_le_bytes());
    Bytes::from(v)
}

fn batch_request(topic: &str, count: usize, value: &Bytes) -> pb::PublishRequest {
    let messages = (0..count).map(|_| pb::OutgoingMessage { value: value.clone(), ..Default::default() }).collect();
    pb::PublishRequest { topic: topic.to_string(), messages, ..Default::default() }
}

fn report(workload: &str, msgs: u64, elapsed: Duration, extra: &str) {
    let rate = msgs as f64 / elapsed.as_secs_f64();
    println!("{workload:>10}: {msgs:>9} msgs in {:>6.3} s = {rate:>10.0} msg/s{extra}", elapsed.as_secs_f64());
}

/// Raw batched publishes: `inflight` tasks, each one request of 100 at a time.
async fn batch(client: &Client, topic: &str, args: &Args) -> anyhow::Result<()> {
    let claimed = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs(args.secs);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..args.inflight {
        let (mut pubsub, topic, count) = (client.pubsub_client(), topic.to_string(), args.count);
        let (claimed, done) = (claimed.clone(), done.clone());
        tasks.push(tokio::spawn(async move {
            let value = value(0);
            let batch = BATCH_MESSAGES as u64;
            while Instant::now() < deadline && claimed.fetch_add(batch, Ordering::Relaxed) + batch <= count {
                pubsub.publish(batch_request(&topic, BATCH_MESSAGES, &value)).await?;
                done.fetch_add(batch, Ordering::Relaxed);
            }
            anyhow::Ok(())
        }));
    }
    for task in tasks {
        task.await??;
    }
    let msgs = done.load(Ordering::Relaxed);
    report("batch", msgs, started.elapsed(), &format!(" ({} in flight x {BATCH_MESSAGES})", args.inflight));
    Ok(())
}

/// The client library's publisher, `PUBLISHER_WINDOW` handles in flight.
async fn publisher(client: &Client, topic: &str, args: &Args) -> anyhow::Result<()> {
    let mut settings = PublisherSettings::default();
    if let Some(n) = args.batch_max {
        settings.batch_messages_max = n;
    }
    if let Some(ms) = args.linger_ms {
        settings.linger = Duration::from_millis(ms);
    }
    let publisher = client.publisher(topic, settings)?;
    let value = value(0);
    let deadline = Instant::now() + Duration::from_secs(args.secs);
    let started = Instant::now();
    let mut window = VecDeque::with_capacity(args.window);
    let mut msgs = 0u64;
    while msgs < args.count && Instant::now() < deadline {
        if window.len() >= args.window {
            let handle: mini_pubsub::client::PublishHandle = window.pop_front().expect("the window is full");
            handle.await?;
        }
        window.push_back(publisher.publish(OutgoingMessage::new(value.clone())).await?);
        msgs += 1;
    }
    for handle in window {
        handle.await?;
    }
    let elapsed = started.elapsed();
    let stats = publisher.stats();
    publisher.shutdown().await?;
    let per_batch = stats.published as f64 / stats.batches.max(1) as f64;
    report("publisher", msgs, elapsed, &format!(" (window {}, {per_batch:.1} msgs/batch)", args.window));
    Ok(())
}

/// Publishes `count` messages in requests of `FILL_BATCH_MESSAGES`, a few in flight.
async fn fill_topic(client: &Client, topic: &str, count: u64) -> anyhow::Result<()> {
    let mut tasks = Vec::new();
    let next = Arc::new(AtomicU64::new(0));
    for _ in 0..4 {
        let (mut pubsub, next, topic) = (client.pubsub_client(), next.clone(), topic.to_string());
        tasks.push(tokio::spawn(async move {
            let value = value(0);
            loop {
                let from = next.fetch_add(FILL_BATCH_MESSAGES as u64, Ordering::Relaxed);
                if from >= count {
                    break;
                }
                let n = (count - from).min(FILL_BATCH_MESSAGES as u64) as usize;
                pubsub.publish(batch_request(&topic, n, &value)).await?;
            }
            anyhow::Ok(())
        }));
    }
    for task in tasks {
        task.await??;
    }
    Ok(())
}

/// Reads a backlog of `count` messages with the client's Subscriber, acking each.
async fn consume(client: &Client, topic: &str, args: &Args) -> anyhow::Result<()> {
    let subscription = format!("{topic}-sub");
    client.create_topic(topic, &TopicSettings::default()).await?;
    client.create_subscription(&subscription, topic, &SubscriptionSettings::default()).await?;
    let count = args.count;
    let filled = Instant::now();
    fill_topic(client, topic, count).await?;
    report("(fill)", count, filled.elapsed(), "");
    let deadline = Instant::now() + Duration::from_secs(args.secs);
    let started = Instant::now();
    let mut settings = SubscriberSettings::default();
    if let Some(n) = args.ack_batch {
        settings.ack_batch_max = n;
    }
    let mut subscriber = client.subscribe(SubscribeTarget::subscription(&subscription), settings).await?;
    let mut received = 0u64;
    while received < count {
        let left = deadline.saturating_duration_since(Instant::now());
        let Ok(next) = tokio::time::timeout(left, subscriber.next()).await else { break };
        let Some(message) = next else { bail!("the subscriber ended") };
        message?.ack().await;
        received += 1;
    }
    let read = started.elapsed();
    // Bounded by the deadline plus one ack flush interval.
    while subscriber.stats().acked < received && Instant::now() < deadline + Duration::from_secs(1) {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let elapsed = started.elapsed();
    let stats = subscriber.stats();
    subscriber.shutdown().await?;
    report(
        "consume",
        stats.acked,
        elapsed,
        &format!(" (received {received} in {:.3} s, acked {})", read.as_secs_f64(), stats.acked),
    );
    Ok(())
}

/// Publishes at `rate` msg/s, one unary request each, and measures publish-to-receive.
async fn latency(client: &Client, topic: &str, args: &Args) -> anyhow::Result<()> {
    let subscription = format!("{topic}-sub");
    client.create_topic(topic, &TopicSettings::default()).await?;
    client.create_subscription(&subscription, topic, &SubscriptionSettings::default()).await?;
    let mut subscriber =
        client.subscribe(SubscribeTarget::subscription(&subscription), SubscriberSettings::default()).await?;
    let base = Instant::now();
    let total = args.rate * args.secs;
    let per_tick = (args.rate / 1000).max(1);
    let warmup = args.rate / 10;
    let receiver = tokio::spawn(async move {
        let mut histogram = Histogram::<u64>::new(3)?;
        let mut received = 0u64;
        let deadline = Instant::now() + Duration::from_secs(args_secs_bound(total, per_tick));
        while received < total {
            let left = deadline.saturating_duration_since(Instant::now());
            let Ok(Some(message)) = tokio::time::timeout(left, subscriber.next()).await else { break };
            let message = message?;
            let stamp = u64::from_le_bytes(message.message().value[..8].try_into()?);
            let now = base.elapsed().as_nanos() as u64;
            if received >= warmup {
                histogram.record(now.saturating_sub(stamp) / 1000)?;
            }
            message.ack().await;
            received += 1;
        }
        subscriber.shutdown().await?;
        anyhow::Ok((received, histogram))
    });
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut sent = 0u64;
    let started = Instant::now();
    while sent < total {
        tick.tick().await;
        for _ in 0..per_tick.min(total - sent) {
            let mut pubsub = client.pubsub_client();
            let request = pb::PublishRequest {
                topic: topic.to_string(),
                value: value(base.elapsed().as_nanos() as u64),
                ..Default::default()
            };
            tokio::spawn(async move { pubsub.publish(request).await });
            sent += 1;
        }
    }
    let (received, h) = receiver.await??;
    let us = |q: f64| h.value_at_quantile(q);
    report(
        "latency",
        received,
        started.elapsed(),
        &format!(
            " (target {} msg/s; us p50 {} p99 {} p999 {} max {})",
            args.rate,
            us(0.5),
            us(0.99),
            us(0.999),
            h.max()
        ),
    );
    Ok(())
}

/// Seconds the latency receiver waits at most: the sending time plus slack.
fn args_secs_bound(total: u64, per_tick: u64) -> u64 {
    total / per_tick / 1000 + 10
}

/// Fills a topic and reports the server's RSS.
async fn fill(client: &Client, topic: &str, args: &Args, pid: Option<u32>) -> anyhow::Result<()> {
    let before = pid.and_then(rss_kib);
    let started = Instant::now();
    fill_topic(client, topic, args.count).await?;
    report("fill", args.count, started.elapsed(), "");
    tokio::time::sleep(Duration::from_millis(200)).await;
    match (before, pid.and_then(rss_kib)) {
        (Some(b), Some(a)) => println!(
            "      rss: {:.1} MiB before, {:.1} MiB after ({:.0} B/msg)",
            b as f64 / 1024.0,
            a as f64 / 1024.0,
            (a.saturating_sub(b) * 1024) as f64 / args.count as f64
        ),
        _ => println!("      rss: unknown (give --pid of the server)"),
    }
    Ok(())
}

fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}
