//! The markdown report: the machine, the method, then per durability class a table of
//! rates side by side with ratios, and a table of every system's figures.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use crate::plan::{
    size_label, Case, Class, System, Workload, ASYNC_WINDOW, BATCH_MESSAGES, CREATES, CREATORS, GROUP_MEMBERS,
};
use crate::results::{Measured, Outcome, Report, RunResult};
use crate::stats::{human, micros, ratio, spread, Spread};

/// The repeats of one case for one system, summarised.
#[derive(Debug, Clone, Default)]
pub struct Cell {
    pub measured: Vec<Measured>,
    pub failures: Vec<String>,
    pub not_applicable: Option<String>,
}

impl Cell {
    pub fn rate(&self) -> Option<Spread> {
        spread(&self.measured.iter().map(|m| m.rate).collect::<Vec<_>>())
    }

    fn median_of(&self, f: impl Fn(&Measured) -> Option<f64>) -> Option<f64> {
        spread(&self.measured.iter().filter_map(f).collect::<Vec<_>>()).map(|s| s.median)
    }
}

/// Results grouped by case, then system.
pub type Table = BTreeMap<Case, BTreeMap<System, Cell>>;

pub fn group(runs: &[RunResult]) -> Table {
    let mut table = Table::new();
    for run in runs {
        let cell = table.entry(run.case).or_default().entry(run.system).or_default();
        match &run.outcome {
            Outcome::Measured(m) => cell.measured.push(m.clone()),
            Outcome::Failed(error) => cell.failures.push(error.clone()),
            Outcome::NotApplicable(why) => cell.not_applicable = Some(why.clone()),
        }
    }
    table
}

/// The whole report as markdown.
pub fn markdown(report: &Report) -> String {
    let mut out = String::new();
    let m = &report.machine;
    let _ = writeln!(out, "# mini-pubsub, NATS JetStream and Redis Streams side by side\n");
    let _ = writeln!(
        out,
        "Made by `bench/run.sh` (the `mini-pubsub-bench` binary); `comparison.json` holds the raw figures, \
         and `mini-pubsub-bench --report-from bench/results/comparison.json` writes this file and the chart again.\n"
    );
    let _ = writeln!(out, "## Machine\n");
    let _ = writeln!(out, "- Date: {}; commit {}", m.date, m.commit);
    let _ = writeln!(out, "- CPU: {}, {} cores; memory {}", m.cpu, m.cores, m.memory);
    let _ = writeln!(out, "- Kernel: Linux {}; {}", m.kernel, m.rustc);
    for (name, version) in &m.versions {
        let _ = writeln!(out, "- {name}: {version}");
    }
    let _ = writeln!(out, "- Load average before: {}; after: {}", m.load_before, m.load_after);
    let _ = writeln!(out, "- Wall time of the run: {:.0} s\n", m.wall_seconds);
    method(&mut out, report);
    let table = group(&report.runs);
    let classes: Vec<Class> = report.plan.classes.clone();
    for class in classes {
        class_section(&mut out, &table, class, &report.plan.systems);
    }
    footprint_section(&mut out, report);
    out
}

fn method(out: &mut String, report: &Report) {
    let p = &report.plan;
    let _ = writeln!(out, "## Method\n");
    let _ = writeln!(
        out,
        "Each row is one case (workload, value size, durability class). For each case the systems run \
         interleaved: repeat 1 of every system, then repeat 2, and so on ({} repeats{}); each run starts a \
         fresh server in a fresh temporary directory on 127.0.0.1, and the bench's clients run in one process \
         beside it on the same cores. A cell is the median of the repeats with the range (min-max) in brackets. \
         MB/s counts value bytes, 10^6 per MB. Server CPU is user + system seconds of the server process over \
         the measured window (from /proc/PID/stat); RSS is VmRSS at the end of the window and HWM its peak (VmHWM).\n",
        p.repeats,
        if p.quick { ", a --quick smoke run: the figures mean little" } else { "" }
    );
    let _ = writeln!(
        out,
        "Timed cases run {} ms of warm-up (not recorded), then a window of {} ms, also ended by a budget of {} \
         messages. The backlog is {} messages or {} MiB of values, whichever is fewer, pre-filled untimed in \
         batches of {BATCH_MESSAGES}; its pre-fill and its drain are each bounded by {} s.\n",
        p.warmup_ms,
        p.window_ms,
        p.case_messages_max,
        p.backlog_messages_max,
        p.backlog_bytes_max >> 20,
        p.backlog_seconds_max
    );
    let sizes: Vec<String> = p.sizes.iter().map(|&s| size_label(s)).collect();
    let _ = writeln!(out, "Value sizes in this run: {}.\n", sizes.join(", "));
    let _ = writeln!(out, "| workload | what it does | rate counts |\n|---|---|---|");
    for workload in Workload::all() {
        let _ = writeln!(out, "| {} | {} | {} |", workload.id(), describe(workload), workload.rate_meaning());
    }
    let _ = writeln!(out, "\n{CLIENTS}\n");
    if p.sync_via_generated {
        let _ = writeln!(out, "This run sent mini-pubsub's sync publishes through the generated client.\n");
    }
    if let Some(in_flight) = p.publisher_in_flight {
        let _ = writeln!(out, "This run's `Publisher` kept up to {in_flight} batches in flight.\n");
    }
}

const CLIENTS: &str = "\
Clients. mini-pubsub: the project's client library (`mini_pubsub::client`): a `Publisher` with no linger \
(it batches whatever queued while the previous request was in flight, and gives every message an idempotency \
key, held in the topic's dedupe index for the default 120 s window; the server runs with a 10M entry bound \
instead of 100 000, which only the 4-partition case needs: there round-robin placement keeps each key an entry \
of its own), and `Subscriber`s (1000 outstanding, \
acks sent 100 per request). The batched workload and the backlog pre-fill call the generated `Publish` directly \
(one `PublishRequest` of 100 messages, no idempotency keys), since the library's publisher makes its own \
batches. The sync workload awaits each message's result from the `Publisher` before publishing the next \
(`--sync-via-generated` sends one `PublishRequest` per message instead). NATS: `async-nats` JetStream publishes with ack futures; a durable pull consumer per group (max 1000 \
unacked), AckPolicy::All acking the last message of each received batch, or AckPolicy::Explicit with a per-message \
ack when 4 workers share the consumer. Redis: the `redis` crate on multiplexed tokio connections; XADD \
(a pipeline of 100 XADDs for a batch), XREADGROUP COUNT 100 and one XACK per read batch. Every publisher and \
consumer has a connection of its own.\n\n\
Group of 4: mini-pubsub, a topic with 4 partitions and one subscription in EXCLUSIVE mode (each member owns a \
partition); NATS, one stream and one durable pull consumer shared by 4 workers; Redis, one stream and one \
consumer group of 4 consumers (neither has partitions). Fan-out: 4 subscriptions / 4 durable consumers / 4 \
consumer groups, each receiving every message.\n\n\
End-to-end latency is corrected for coordinated omission by measuring from the intended send time: message i is \
due at i / rate after the start, the sender releases every message that is due (waking on tokio's 1 ms timer, so \
up to about 1 ms of that lag is in every figure), and latency is the consumer's receive time minus the intended \
time (hdrhistogram's record_correct is not used). Publish latency is from the send call to its ack (a whole \
request for the batched workload).";

fn describe(workload: Workload) -> String {
    match workload {
        Workload::SyncPublish => "publish one message, await its ack, repeat".into(),
        Workload::AsyncPublish => format!("publish with up to {ASYNC_WINDOW} unanswered"),
        Workload::BatchPublish => format!("{BATCH_MESSAGES} messages per request, one request in flight"),
        Workload::BacklogConsume => "consume and ack a pre-filled backlog with one consumer".into(),
        Workload::ProduceConsume => format!("one publisher ({ASYNC_WINDOW} unanswered) and one consumer at once"),
        Workload::EndToEnd(rate) => format!("publish {rate} msgs/s on a fixed timetable; latency publish-to-deliver"),
        Workload::Group4 => format!("one publisher, {GROUP_MEMBERS} consumers sharing one group"),
        Workload::Fanout4 => format!("one publisher, {GROUP_MEMBERS} groups each receiving every message"),
        Workload::Creates => format!(
            "publish one message at a time while {CREATORS} clients make {CREATES} topics and subscriptions; latency is the publishes'"
        ),
    }
}

fn class_section(out: &mut String, table: &Table, class: Class, systems: &[System]) {
    let _ = writeln!(out, "## Durability class: {class}\n");
    for &system in systems {
        let _ = writeln!(out, "- {system}: {}", class.describe(system));
    }
    let _ = writeln!(out, "\n### Rates (msgs/s, median [min-max])\n");
    let header: Vec<String> = systems.iter().map(|s| s.to_string()).collect();
    // Variants of mini-pubsub, each also given as its ratio to plain mini-pubsub.
    let variants: Vec<(System, &str)> = [(System::OursRecorded, "recorded/ours"), (System::OursTls, "tls/ours")]
        .into_iter()
        .filter(|(system, _)| systems.contains(system))
        .collect();
    let extra: String = variants.iter().map(|(_, name)| format!(" {name} |")).collect();
    let _ = writeln!(out, "| workload | size | {} | ours/NATS | ours/Redis |{extra}", header.join(" | "));
    let _ = writeln!(out, "|---|--:|{}--:|--:|{}", "--:|".repeat(systems.len()), "--:|".repeat(variants.len()));
    let rows = table.iter().filter(|(case, _)| case.class == class);
    for (case, cells) in rows.clone() {
        let rate = |s: System| cells.get(&s).and_then(|c| c.rate()).map(|r| r.median);
        let columns: Vec<String> = systems.iter().map(|s| rate_cell(cells.get(s))).collect();
        let variant_ratios: String =
            variants.iter().map(|(system, _)| format!(" {} |", ratio(rate(*system), rate(System::Ours)))).collect();
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} |{variant_ratios}",
            case.workload.id(),
            size_label(case.size),
            columns.join(" | "),
            ratio(rate(System::Ours), rate(System::Nats)),
            ratio(rate(System::Ours), rate(System::Redis)),
        );
    }
    let _ = writeln!(out, "\n### Every figure (medians of the repeats)\n");
    let _ = writeln!(
        out,
        "| workload | size | system | msgs/s | MB/s | published/s | p50 | p99 | p99.9 | max | server CPU s | RSS MiB | HWM MiB | runs | note |"
    );
    let _ = writeln!(out, "|---|--:|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|---|");
    for (case, cells) in rows {
        for &system in systems {
            if let Some(cell) = cells.get(&system) {
                detail_row(out, case, system, cell);
            }
        }
    }
    let _ = writeln!(out);
}

fn rate_cell(cell: Option<&Cell>) -> String {
    let Some(cell) = cell else { return "-".to_string() };
    if cell.not_applicable.is_some() {
        return "n/a".to_string();
    }
    match cell.rate() {
        None => format!("failed ({})", cell.failures.len()),
        Some(r) => {
            let failed =
                if cell.failures.is_empty() { String::new() } else { format!(", {} failed", cell.failures.len()) };
            format!("{} [{}-{}{failed}]", human(r.median), human(r.min), human(r.max))
        }
    }
}

fn detail_row(out: &mut String, case: &Case, system: System, cell: &Cell) {
    let head = format!("| {} | {} | {system} |", case.workload.id(), size_label(case.size));
    if let Some(why) = &cell.not_applicable {
        let _ = writeln!(out, "{head} n/a | | | | | | | | | | | 0 | {why} |");
        return;
    }
    if cell.measured.is_empty() {
        let error = cell.failures.first().map_or("", String::as_str);
        let _ = writeln!(out, "{head} failed | | | | | | | | | | | 0/{} | {} |", cell.failures.len(), escape(error));
        return;
    }
    let f = |v: Option<f64>, show: fn(f64) -> String| v.map_or("-".to_string(), show);
    let latency =
        |pick: fn(&crate::stats::LatencySummary) -> u64| cell.median_of(|m| m.latency.map(|l| pick(&l) as f64));
    let mib = |kib: Option<f64>| f(kib, |k| format!("{:.0}", k / 1024.0));
    let runs = cell.measured.len() + cell.failures.len();
    let mut notes: Vec<String> = cell.measured.iter().filter_map(|m| m.note.clone()).take(1).collect();
    notes.extend(cell.failures.first().map(|e| format!("failed: {}", escape(e))));
    let _ = writeln!(
        out,
        "{head} {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {}/{runs} | {} |",
        f(cell.median_of(|m| Some(m.rate)), human),
        f(cell.median_of(|m| Some(m.mb_per_s)), |v| format!("{v:.1}")),
        f(cell.median_of(|m| m.second_rate), human),
        f(latency(|l| l.p50_us), micros),
        f(latency(|l| l.p99_us), micros),
        f(latency(|l| l.p999_us), micros),
        f(latency(|l| l.max_us), micros),
        f(cell.median_of(|m| Some(m.server_cpu_seconds)), |v| format!("{v:.2}")),
        mib(cell.median_of(|m| Some(m.rss_kib as f64))),
        mib(cell.median_of(|m| Some(m.hwm_kib as f64))),
        cell.measured.len(),
        notes.join("; "),
    );
}

fn footprint_section(out: &mut String, report: &Report) {
    if report.footprints.is_empty() {
        return;
    }
    let _ = writeln!(out, "## Memory holding a retained backlog\n");
    let _ = writeln!(
        out,
        "Each server in its memory configuration, after {} messages of {} B were published in batches of \
         {BATCH_MESSAGES} (and nothing consumed), then 1 s of rest. mini-pubsub's target is at most 400 MiB.\n",
        report.plan.retained_messages,
        report.footprints.first().map_or(0, |f| f.size)
    );
    let _ = writeln!(out, "| system | RSS MiB | HWM MiB | bytes per message (RSS) |\n|---|--:|--:|--:|");
    for footprint in &report.footprints {
        match &footprint.outcome {
            Ok(usage) => {
                let per = usage.rss_kib as f64 * 1024.0 / footprint.messages.max(1) as f64;
                let _ = writeln!(
                    out,
                    "| {} | {:.0} | {:.0} | {per:.0} |",
                    footprint.system,
                    usage.rss_kib as f64 / 1024.0,
                    usage.hwm_kib as f64 / 1024.0
                );
            }
            Err(error) => {
                let _ = writeln!(out, "| {} | failed: {} | | |", footprint.system, escape(error));
            }
        }
    }
    let _ = writeln!(out);
}

/// Keeps a table cell on one line and its pipes from splitting it.
fn escape(text: &str) -> String {
    text.replace('|', "\\|").replace('\n', " ")
}
