//! A profile of where a message's time goes inside the broker, from its publish arriving to
//! its delivery leaving, for the end-to-end benchmark (perf log 14). Off unless the process
//! starts with `MINI_PUBSUB_STAGE_PROFILE=FILE`; then each server appends a summary to FILE
//! when it stops. The simulator never sets it.
//!
//! The stages are timed turn by turn, not message by message: a publish batch read by its
//! handler (`arrived`), the driver's turn taking it (`turn`), the turn's commit done
//! (`committed`), the turn's deliveries queued on their streams (`flushed`), and tonic taking
//! a delivery from its stream's queue to encode and write it (`polled`). Each interval is
//! charged to the message whose marks bound it, which is right when messages come one at a
//! time, apart (the end-to-end case at 5k msgs/s, where one is published every 200 us and
//! crosses the broker in a fraction of that); under load the intervals overlap and the
//! profile means little.

use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};

use crate::env::{Clock, TokioClock};

/// The environment variable that turns the profile on, naming the file it goes to.
pub const ENV: &str = "MINI_PUBSUB_STAGE_PROFILE";
/// The most samples kept per interval.
const SAMPLES_MAX: usize = 1 << 20;

/// The intervals, in the order a message crosses them.
const NAMES: [&str; 5] = [
    "arrived -> turn (the command queue and the driver's wakeup)",
    "turn -> committed (apply, append, and the turn's sync)",
    "committed -> flushed (deliveries made and queued on their streams)",
    "flushed -> polled (the stream's task woken to take the delivery)",
    "  of committed -> flushed: queueing one response (try_send, waking its stream's task)",
];

struct Stages {
    clock: TokioClock,
    file: String,
    /// The latest publish read by a handler and not yet taken by a turn (0: none).
    arrived: AtomicU64,
    /// When the latest turn that had deliveries queued them (0: taken).
    flushed: AtomicU64,
    samples: Mutex<[Vec<u32>; 5]>,
}

static STAGES: OnceLock<Option<Stages>> = OnceLock::new();

fn stages() -> Option<&'static Stages> {
    STAGES
        .get_or_init(|| {
            let file = std::env::var(ENV).ok().filter(|f| !f.is_empty())?;
            let samples = Mutex::new([Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new()]);
            Some(Stages {
                clock: TokioClock::new(),
                file,
                arrived: AtomicU64::new(0),
                flushed: AtomicU64::new(0),
                samples,
            })
        })
        .as_ref()
}

impl Stages {
    fn now(&self) -> u64 {
        self.clock.now_us().max(1)
    }

    fn record(&self, interval: usize, from: u64, to: u64) {
        let Ok(mut samples) = self.samples.lock() else { return };
        if samples[interval].len() < SAMPLES_MAX {
            samples[interval].push(u32::try_from(to.saturating_sub(from)).unwrap_or(u32::MAX));
        }
    }
}

/// A handler read a publish batch.
pub fn arrived() {
    if let Some(stages) = stages() {
        stages.arrived.store(stages.now(), Ordering::Relaxed);
    }
}

/// What the driver notes of one turn, from its start.
pub struct Turn {
    arrived: u64,
    started: u64,
    committed: u64,
}

/// A driver turn starts; `None` when the profile is off.
pub fn turn_started() -> Option<Turn> {
    let stages = stages()?;
    let arrived = stages.arrived.swap(0, Ordering::Relaxed);
    Some(Turn { arrived, started: stages.now(), committed: 0 })
}

impl Turn {
    /// The turn's commit is done.
    pub fn committed(&mut self) {
        if let Some(stages) = stages() {
            self.committed = stages.now();
        }
    }

    /// The turn queued its deliveries (`delivered`: it had some); charges the intervals to
    /// the publish the turn took, if it took one.
    pub fn flushed(self, delivered: bool) {
        let Some(stages) = stages() else { return };
        let flushed = stages.now();
        if self.arrived != 0 {
            stages.record(0, self.arrived, self.started);
            stages.record(1, self.started, self.committed);
            if delivered {
                stages.record(2, self.committed, flushed);
            }
        }
        if delivered {
            stages.flushed.store(flushed, Ordering::Relaxed);
        }
    }
}

/// The driver is about to queue a response on a stream: the time it took, once done.
pub fn queueing() -> Option<u64> {
    stages().map(Stages::now)
}

/// The response `queueing` started is queued.
pub fn queued(started: Option<u64>) {
    if let (Some(stages), Some(started)) = (stages(), started) {
        stages.record(4, started, stages.now());
    }
}

/// tonic took a delivery from its stream's queue.
pub fn polled() {
    if let Some(stages) = stages() {
        let flushed = stages.flushed.swap(0, Ordering::Relaxed);
        if flushed != 0 {
            stages.record(3, flushed, stages.now());
        }
    }
}

/// Appends the summary to the profile's file, if the profile is on.
pub fn write_summary() {
    let Some(stages) = stages() else { return };
    let Ok(mut samples) = stages.samples.lock() else { return };
    let mut text = String::from("stage profile (microseconds: p50 p90 p99, samples)\n");
    for (name, values) in NAMES.iter().zip(samples.iter_mut()) {
        values.sort_unstable();
        let at = |q: f64| values.get(((values.len() as f64 - 1.0) * q).round() as usize).copied().unwrap_or(0);
        text.push_str(&format!("  {name}: {} {} {}, {}\n", at(0.5), at(0.9), at(0.99), values.len()));
        values.clear();
    }
    let written = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&stages.file)
        .and_then(|mut file| file.write_all(text.as_bytes()));
    if let Err(error) = written {
        tracing::warn!(%error, file = %stages.file, "cannot write the stage profile");
    }
}
