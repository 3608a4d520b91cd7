//! Storage benchmarks (DESIGN.md section 7): append throughput on the file log and publish
//! latency through the real server for each fsync policy at 128 B and 1 KiB values, and the
//! time to recover (open and CRC-check) a 1 GiB log.
//!
//! ```text
//! cargo bench --bench storage               # full run; writes bench/results/storage.md
//! cargo bench --bench storage -- --quick    # smoke run with small counts; prints only
//! cargo bench --bench storage -- --only publish   # one section (append, publish, recovery)
//! ```
//!
//! This is a measuring program, not a test: nothing about time is asserted. Every case runs
//! in a fresh temporary directory that is removed afterwards, and each case is bounded both
//! by time and by a message or byte budget.

#![allow(clippy::disallowed_methods, reason = "a benchmark measures wall time: that is its output")]

mod counting_fs;

use counting_fs::{CountingFs, FsyncCount, FsyncCounter};

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use bytes::Bytes;
use hdrhistogram::Histogram;
use tokio::runtime::Runtime;
use tokio::sync::oneshot;
use tonic::transport::Channel;

use mini_pubsub::env::{Net, TokioClock, TokioNet};
use mini_pubsub::server::{self, ServerConfig};
use mini_pubsub::storage::{FileStorage, FileStorageConfig, FsyncPolicy, MemoryStorage, Record, Storage};
use mini_pubsub::wire::pb;

/// Value sizes every throughput and latency case runs at.
const VALUE_SIZES: [usize; 2] = [128, 1024];

/// Appends between syncs in the group-commit style append case.
const GROUP_COMMIT_APPENDS: u64 = 64;

/// The interval policy's period, in the append cases and on the server.
const INTERVAL_MS: u64 = 100;

/// Concurrent publishers of the publish cases: one in flight, and enough to form groups.
const PUBLISHER_COUNTS: [usize; 2] = [1, 64];

/// Records per append while writing the recovery log (the write is not what is measured).
const RECOVERY_BATCH_RECORDS: usize = 256;

/// Value size of the recovery log's records.
const RECOVERY_VALUE_BYTES: usize = 1024;

/// Free space wanted beyond the largest log a case writes.
const DISK_MARGIN_BYTES: u64 = 2 << 30;

/// The publish time stamped on appended records (any fixed value: only order matters).
const PUBLISH_TIME_MS: u64 = 1_700_000_000_000;

/// How long a run takes and how much it writes.
struct Plan {
    quick: bool,
    sections: Vec<Section>,
    /// An append case stops after this long...
    append_case_ms: u64,
    /// ...or after writing this many value bytes.
    append_case_bytes_max: u64,
    /// Publishes before the measured window, not recorded.
    publish_warmup_ms: u64,
    /// A publish case's measured window...
    publish_case_ms: u64,
    /// ...bounded also by this many publishes (all publishers together).
    publish_case_msgs_max: u64,
    /// Value bytes written to the log whose recovery is timed.
    recovery_log_bytes: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Section {
    Append,
    Publish,
    Recovery,
}

impl Plan {
    fn from_args() -> anyhow::Result<Self> {
        let mut quick = false;
        let mut sections = vec![Section::Append, Section::Publish, Section::Recovery];
        let mut args = std::env::args().skip(1);
        while let Some(arg) = args.next() {
            match arg.as_str() {
                "--quick" => quick = true,
                // cargo bench passes --bench to every bench binary.
                "--bench" => {}
                "--only" => {
                    sections = match args.next().as_deref() {
                        Some("append") => vec![Section::Append],
                        Some("publish") => vec![Section::Publish],
                        Some("recovery") => vec![Section::Recovery],
                        other => bail!("--only takes append, publish or recovery, not {other:?}"),
                    }
                }
                other => bail!("unknown argument {other:?}; arguments: [--quick] [--only append|publish|recovery]"),
            }
        }
        let plan = if quick {
            Plan {
                quick,
                sections,
                append_case_ms: 300,
                append_case_bytes_max: 16 << 20,
                publish_warmup_ms: 100,
                publish_case_ms: 300,
                publish_case_msgs_max: 100_000,
                recovery_log_bytes: 32 << 20,
            }
        } else {
            Plan {
                quick,
                sections,
                append_case_ms: 3_000,
                append_case_bytes_max: 512 << 20,
                publish_warmup_ms: 500,
                publish_case_ms: 5_000,
                publish_case_msgs_max: 2_000_000,
                recovery_log_bytes: 1 << 30,
            }
        };
        Ok(plan)
    }

    fn runs(&self, section: Section) -> bool {
        self.sections.contains(&section)
    }
}

fn main() -> anyhow::Result<()> {
    let plan = Plan::from_args()?;
    let scratch = std::env::temp_dir();
    let disk = disk_of(&scratch)?;
    let wanted = plan.recovery_log_bytes.max(plan.append_case_bytes_max) + DISK_MARGIN_BYTES;
    ensure!(
        disk.available_bytes >= wanted,
        "{} has {} MiB free; this run wants {} MiB",
        scratch.display(),
        disk.available_bytes >> 20,
        wanted >> 20
    );
    let mut report = String::new();
    write_machine(&mut report, &plan, &scratch, &disk)?;
    if plan.runs(Section::Append) {
        let rows = run_append_cases(&plan, &scratch)?;
        write_append_table(&mut report, &plan, &rows)?;
        writeln!(report, "Load average after this section: {}\n", load_average())?;
    }
    if plan.runs(Section::Publish) {
        let rows = run_publish_cases(&plan, &scratch)?;
        write_publish_table(&mut report, &plan, &rows)?;
        writeln!(report, "Load average after this section: {}\n", load_average())?;
    }
    if plan.runs(Section::Recovery) {
        let rows = run_recovery(&plan, &scratch)?;
        write_recovery_table(&mut report, &plan, &rows)?;
        writeln!(report, "Load average after this section: {}\n", load_average())?;
    }
    println!("\n{report}");
    if plan.quick || plan.sections.len() < 3 {
        eprintln!("quick or partial run: bench/results/storage.md is left as it was");
        return Ok(());
    }
    let out = Path::new(env!("CARGO_MANIFEST_DIR")).join("bench/results/storage.md");
    std::fs::create_dir_all(out.parent().expect("a file in a directory"))?;
    std::fs::write(&out, report).with_context(|| format!("cannot write {}", out.display()))?;
    eprintln!("wrote {}", out.display());
    Ok(())
}

/// A file storage in a fresh temporary directory, with its fsyncs counted.
struct BenchStorage {
    dir: tempfile::TempDir,
    counter: Arc<FsyncCounter>,
    storage: FileStorage,
}

fn file_storage(scratch: &Path, fsync: FsyncPolicy) -> anyhow::Result<BenchStorage> {
    let dir = tempfile::Builder::new().prefix("mini-pubsub-bench-").tempdir_in(scratch)?;
    let counter = Arc::new(FsyncCounter::default());
    let fs = Arc::new(CountingFs { counter: Arc::clone(&counter) });
    let mut config = FileStorageConfig::new(dir.path());
    config.fsync = fsync;
    let storage = FileStorage::open(fs, config)?;
    Ok(BenchStorage { dir, counter, storage })
}

/// Flushes every dirty page on the machine, so that one case's writeback does not land in
/// the next case's fsyncs.
fn sync_all() -> anyhow::Result<()> {
    let status = Command::new("sync").status().context("cannot run sync")?;
    ensure!(status.success(), "sync failed: {status}");
    Ok(())
}

fn value_of(bytes: usize) -> Bytes {
    (0..bytes).map(|i| (i * 31 + 7) as u8).collect::<Vec<u8>>().into()
}

fn record_of(value: &Bytes) -> Record {
    Record {
        key: None,
        value: value.clone(),
        attributes: BTreeMap::new(),
        publish_time_ms: PUBLISH_TIME_MS,
        idempotency_key: None,
    }
}

// ---------------------------------------------------------------------------------------
// 1. Append throughput on a FileLog

/// When an append case syncs.
#[derive(Debug, Clone, Copy)]
enum SyncRule {
    /// After every this many appends (and once at the end).
    EveryAppends(u64),
    /// When this many milliseconds passed since the last sync (and once at the end).
    EveryMs(u64),
    /// Never (the OS writes back when it likes).
    Never,
}

struct AppendCase {
    policy: FsyncPolicy,
    rule: SyncRule,
    value_bytes: usize,
}

struct AppendRow {
    policy: FsyncPolicy,
    rule: SyncRule,
    value_bytes: usize,
    msgs: u64,
    elapsed: Duration,
    fsyncs: FsyncCount,
}

fn run_append_cases(plan: &Plan, scratch: &Path) -> anyhow::Result<Vec<AppendRow>> {
    let rules = [
        (FsyncPolicy::Always, SyncRule::EveryAppends(1)),
        (FsyncPolicy::Always, SyncRule::EveryAppends(GROUP_COMMIT_APPENDS)),
        (FsyncPolicy::IntervalMs(INTERVAL_MS), SyncRule::EveryMs(INTERVAL_MS)),
        (FsyncPolicy::Never, SyncRule::Never),
    ];
    let mut rows = Vec::new();
    for value_bytes in VALUE_SIZES {
        for (policy, rule) in rules {
            sync_all()?;
            let row = run_append(plan, scratch, &AppendCase { policy, rule, value_bytes })?;
            eprintln!(
                "append {} {value_bytes} B: {:.0} msgs/s",
                rule_label(policy, rule),
                row.msgs as f64 / row.elapsed.as_secs_f64()
            );
            rows.push(row);
        }
    }
    Ok(rows)
}

/// Appends one record per call until the case's time or byte budget is spent.
fn run_append(plan: &Plan, scratch: &Path, case: &AppendCase) -> anyhow::Result<AppendRow> {
    let mut bench = file_storage(scratch, case.policy)?;
    let mut log = bench.storage.open(1, 0)?;
    let value = value_of(case.value_bytes);
    let msgs_max = plan.append_case_bytes_max / case.value_bytes as u64;
    let before = bench.counter.get();
    let started = Instant::now();
    let deadline = started + Duration::from_millis(plan.append_case_ms);
    let mut last_sync = started;
    let mut msgs = 0u64;
    while msgs < msgs_max && Instant::now() < deadline {
        log.append(vec![record_of(&value)])?;
        msgs += 1;
        let due = match case.rule {
            SyncRule::EveryAppends(n) => msgs.is_multiple_of(n),
            SyncRule::EveryMs(ms) => last_sync.elapsed() >= Duration::from_millis(ms),
            SyncRule::Never => false,
        };
        if due {
            log.sync()?;
            last_sync = Instant::now();
        }
    }
    if !matches!(case.rule, SyncRule::Never) {
        log.sync()?;
    }
    let elapsed = started.elapsed();
    let fsyncs = bench.counter.get().since(before);
    ensure!(log.end_offset() == msgs, "the log holds {} records, {msgs} were appended", log.end_offset());
    drop(log);
    drop(bench.storage);
    bench.dir.close()?;
    Ok(AppendRow { policy: case.policy, rule: case.rule, value_bytes: case.value_bytes, msgs, elapsed, fsyncs })
}

fn rule_label(policy: FsyncPolicy, rule: SyncRule) -> String {
    match rule {
        SyncRule::EveryAppends(1) => format!("{policy}, sync every append"),
        SyncRule::EveryAppends(n) => format!("{policy}, sync every {n} appends"),
        SyncRule::EveryMs(ms) => format!("interval, sync every {ms} ms"),
        SyncRule::Never => format!("{policy}"),
    }
}

// ---------------------------------------------------------------------------------------
// 2. Publish latency through the server

#[derive(Debug, Clone, Copy)]
enum Backend {
    Memory,
    File(FsyncPolicy),
}

impl std::fmt::Display for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Backend::Memory => write!(f, "memory"),
            Backend::File(policy) => write!(f, "file, fsync {policy}"),
        }
    }
}

struct PublishCase {
    backend: Backend,
    value_bytes: usize,
    publishers: usize,
}

struct PublishRow {
    backend: Backend,
    value_bytes: usize,
    publishers: usize,
    msgs: u64,
    elapsed: Duration,
    /// Publish round trips in microseconds.
    latency_us: Histogram<u64>,
    /// The server's fdatasync calls during the measured window.
    fsyncs: FsyncCount,
}

/// A running server and what stops it.
struct BenchServer {
    addr: std::net::SocketAddr,
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<Result<(), server::ServerError>>,
    /// The file storage's directory and fsync counter (none for memory).
    files: Option<(tempfile::TempDir, Arc<FsyncCounter>)>,
}

fn run_publish_cases(plan: &Plan, scratch: &Path) -> anyhow::Result<Vec<PublishRow>> {
    // The server and the publishers get a runtime each, as if they were two processes; both
    // share the machine's two cores.
    let server_rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let client_rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let backends = [
        Backend::File(FsyncPolicy::Always),
        Backend::File(FsyncPolicy::IntervalMs(INTERVAL_MS)),
        Backend::File(FsyncPolicy::Never),
        Backend::Memory,
    ];
    let mut rows = Vec::new();
    for value_bytes in VALUE_SIZES {
        for backend in backends {
            for publishers in PUBLISHER_COUNTS {
                sync_all()?;
                let case = PublishCase { backend, value_bytes, publishers };
                let row = run_publish(plan, scratch, &server_rt, &client_rt, &case)?;
                eprintln!(
                    "publish {backend} {value_bytes} B x{publishers}: {:.0} msgs/s, p50 {} us, p99 {} us",
                    row.msgs as f64 / row.elapsed.as_secs_f64(),
                    row.latency_us.value_at_quantile(0.5),
                    row.latency_us.value_at_quantile(0.99)
                );
                rows.push(row);
            }
        }
    }
    Ok(rows)
}

fn run_publish(
    plan: &Plan,
    scratch: &Path,
    server_rt: &Runtime,
    client_rt: &Runtime,
    case: &PublishCase,
) -> anyhow::Result<PublishRow> {
    let server = start_server(scratch, server_rt, case.backend)?;
    let fsyncs_now = || server.files.as_ref().map(|(_, c)| c.get()).unwrap_or_default();
    let value = value_of(case.value_bytes);
    let (row, fsyncs) = client_rt.block_on(async {
        let channels = connect(server.addr, case.publishers).await?;
        let req = pb::CreateTopicRequest { name: "bench".into(), partitions: 1, ..Default::default() };
        pb::admin_client::AdminClient::new(channels[0].clone()).create_topic(req).await?;
        let warmup = Duration::from_millis(plan.publish_warmup_ms);
        publish_for(&channels, &value, warmup, plan.publish_case_msgs_max).await?;
        let before = fsyncs_now();
        let window = Duration::from_millis(plan.publish_case_ms);
        let measured = publish_for(&channels, &value, window, plan.publish_case_msgs_max).await?;
        anyhow::Ok((measured, fsyncs_now().since(before)))
    })?;
    stop_server(server_rt, server)?;
    let (msgs, elapsed, latency_us) = row;
    Ok(PublishRow {
        backend: case.backend,
        value_bytes: case.value_bytes,
        publishers: case.publishers,
        msgs,
        elapsed,
        latency_us,
        fsyncs,
    })
}

fn start_server(scratch: &Path, rt: &Runtime, backend: Backend) -> anyhow::Result<BenchServer> {
    let (storage, files): (Box<dyn Storage>, _) = match backend {
        Backend::Memory => (Box::new(MemoryStorage), None),
        Backend::File(policy) => {
            let bench = file_storage(scratch, policy)?;
            (Box::new(bench.storage), Some((bench.dir, bench.counter)))
        }
    };
    let (addr, incoming) = rt.block_on(TokioNet.bind("127.0.0.1:0".parse()?))?;
    let (stop, stopped) = oneshot::channel::<()>();
    let signal = async move {
        let _ = stopped.await;
    };
    let clock = Arc::new(TokioClock::new());
    let task = rt.spawn(server::run(incoming, signal, ServerConfig::default(), storage, clock));
    Ok(BenchServer { addr, stop, task, files })
}

fn stop_server(rt: &Runtime, server: BenchServer) -> anyhow::Result<()> {
    let _ = server.stop.send(());
    let finished = rt.block_on(async { tokio::time::timeout(Duration::from_secs(30), server.task).await });
    finished.context("the server did not stop within 30 s")???;
    if let Some((dir, _)) = server.files {
        dir.close()?;
    }
    Ok(())
}

/// One connection per publisher, as separate clients would have.
async fn connect(addr: std::net::SocketAddr, publishers: usize) -> anyhow::Result<Vec<Channel>> {
    let mut channels = Vec::with_capacity(publishers);
    for _ in 0..publishers {
        channels.push(Channel::from_shared(format!("http://{addr}"))?.connect().await?);
    }
    Ok(channels)
}

/// Publishes from every channel at once, each waiting for one answer before the next
/// publish, until `window` passed or `msgs_max` were sent. Returns the publishes answered,
/// the time until the last answer, and their latencies.
async fn publish_for(
    channels: &[Channel],
    value: &Bytes,
    window: Duration,
    msgs_max: u64,
) -> anyhow::Result<(u64, Duration, Histogram<u64>)> {
    let started = Instant::now();
    let deadline = started + window;
    let sent = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::with_capacity(channels.len());
    for channel in channels {
        let mut client = pb::pub_sub_client::PubSubClient::new(channel.clone());
        let (value, sent) = (value.clone(), Arc::clone(&sent));
        tasks.push(tokio::spawn(async move {
            let mut latency_us = latency_histogram()?;
            while Instant::now() < deadline && sent.fetch_add(1, Ordering::Relaxed) < msgs_max {
                let req = pb::PublishRequest { topic: "bench".into(), value: value.clone(), ..Default::default() };
                let at = Instant::now();
                client.publish(req).await?;
                latency_us.saturating_record(at.elapsed().as_micros() as u64);
            }
            anyhow::Ok(latency_us)
        }));
    }
    let mut latency_us = latency_histogram()?;
    for task in tasks {
        latency_us.add(task.await??)?;
    }
    Ok((latency_us.len(), started.elapsed(), latency_us))
}

fn latency_histogram() -> anyhow::Result<Histogram<u64>> {
    // 1 us to 100 s at three significant digits.
    Ok(Histogram::new_with_bounds(1, 100_000_000, 3)?)
}

// ---------------------------------------------------------------------------------------
// 3. Recovery time

struct RecoveryRow {
    /// "warm" (just written, in the page cache) or "cold" (page cache dropped).
    cache: &'static str,
    records: u64,
    file_bytes: u64,
    elapsed: Duration,
}

/// Writes one partition of `recovery_log_bytes` of 1 KiB records, then times opening it
/// with the page cache warm and, when it can be dropped, cold.
fn run_recovery(plan: &Plan, scratch: &Path) -> anyhow::Result<Vec<RecoveryRow>> {
    sync_all()?;
    let mut bench = file_storage(scratch, FsyncPolicy::Never)?;
    let (records, file_bytes) = write_recovery_log(plan, &mut bench.storage)?;
    let mut rows = Vec::new();
    rows.push(time_open(&mut bench, "warm", records, file_bytes)?);
    if drop_page_cache()? {
        rows.push(time_open(&mut bench, "cold", records, file_bytes)?);
    } else {
        eprintln!("cannot drop the page cache (not root?): recovery is timed warm only");
    }
    drop(bench.storage);
    bench.dir.close()?;
    Ok(rows)
}

fn write_recovery_log(plan: &Plan, storage: &mut FileStorage) -> anyhow::Result<(u64, u64)> {
    let mut log = storage.open(1, 0)?;
    let value = value_of(RECOVERY_VALUE_BYTES);
    let batches = plan.recovery_log_bytes.div_ceil((RECOVERY_BATCH_RECORDS * RECOVERY_VALUE_BYTES) as u64);
    let started = Instant::now();
    for _ in 0..batches {
        log.append((0..RECOVERY_BATCH_RECORDS).map(|_| record_of(&value)).collect())?;
    }
    log.sync()?;
    let (records, file_bytes) = (log.end_offset(), log.size_bytes());
    eprintln!(
        "recovery log: {records} records, {} MiB written in {:.1} s",
        file_bytes >> 20,
        started.elapsed().as_secs_f64()
    );
    Ok((records, file_bytes))
}

fn time_open(
    bench: &mut BenchStorage,
    cache: &'static str,
    records: u64,
    file_bytes: u64,
) -> anyhow::Result<RecoveryRow> {
    let started = Instant::now();
    let log = bench.storage.open(1, 0)?;
    let elapsed = started.elapsed();
    ensure!(log.end_offset() == records, "recovered {} records of {records}", log.end_offset());
    ensure!(log.size_bytes() == file_bytes, "recovered {} bytes of {file_bytes}", log.size_bytes());
    ensure!(bench.storage.recovery_notes().is_empty(), "recovery cut: {:?}", bench.storage.recovery_notes());
    eprintln!("recovery ({cache}): {:.2} s", elapsed.as_secs_f64());
    Ok(RecoveryRow { cache, records, file_bytes, elapsed })
}

/// Drops the page cache (needs root); false when that is not allowed here.
fn drop_page_cache() -> anyhow::Result<bool> {
    sync_all()?;
    Ok(std::fs::write("/proc/sys/vm/drop_caches", "3\n").is_ok())
}

// ---------------------------------------------------------------------------------------
// The report

/// The filesystem a directory is on.
struct Disk {
    fs_type: String,
    device: String,
    available_bytes: u64,
}

fn disk_of(dir: &Path) -> anyhow::Result<Disk> {
    let out = command_output("df", &["-B1", "--output=source,fstype,avail", &dir.to_string_lossy()])?;
    let line = out.lines().nth(1).context("df printed no filesystem")?;
    let fields: Vec<&str> = line.split_whitespace().collect();
    let [device, fs_type, avail] = fields[..] else { bail!("unexpected df output: {out}") };
    Ok(Disk { fs_type: fs_type.into(), device: device.into(), available_bytes: avail.parse()? })
}

fn command_output(program: &str, args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new(program).args(args).output().with_context(|| format!("cannot run {program}"))?;
    ensure!(out.status.success(), "{program} {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// The first line of `path` that starts with `key`, after its colon.
fn proc_field(path: &str, key: &str) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let line = text.lines().find(|l| l.starts_with(key));
    line.and_then(|l| l.split_once(':')).map_or_else(|| "unknown".into(), |(_, v)| v.trim().to_string())
}

fn write_machine(out: &mut String, plan: &Plan, scratch: &Path, disk: &Disk) -> anyhow::Result<()> {
    let repo = env!("CARGO_MANIFEST_DIR");
    let commit = command_output("git", &["-C", repo, "rev-parse", "--short", "HEAD"]).unwrap_or_default();
    let dirty = command_output("git", &["-C", repo, "status", "--porcelain", "--", "src"]).is_ok_and(|s| !s.is_empty());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let date = command_output("date", &["-u", "+%Y-%m-%d %H:%M UTC"]).unwrap_or_default();
    let rustc = command_output("rustc", &["--version"]).unwrap_or_else(|_| "unknown".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let command = if plan.quick { "cargo bench --bench storage -- --quick" } else { "cargo bench --bench storage" };
    writeln!(out, "# Storage benchmarks")?;
    writeln!(out)?;
    writeln!(out, "Figures from one run of `{command}` on this machine; they are not averaged over runs.")?;
    writeln!(out)?;
    writeln!(out, "- Date: {date}")?;
    writeln!(out, "- Commit: {commit}{}", if dirty { " (with uncommitted changes in src/)" } else { "" })?;
    writeln!(out, "- CPU: {}, {cores} cores", proc_field("/proc/cpuinfo", "model name"))?;
    writeln!(out, "- Memory: {}", proc_field("/proc/meminfo", "MemTotal"))?;
    writeln!(out, "- Kernel: Linux {}", kernel.trim())?;
    writeln!(out, "- Temp dir: {} on {} ({})", scratch.display(), disk.device, disk.fs_type)?;
    writeln!(out, "- {rustc}, bench profile (release, debug = 1)")?;
    writeln!(out, "- Load average at start: {}", load_average())?;
    writeln!(out)?;
    Ok(())
}

/// The 1, 5 and 15 minute load averages: other work on the machine shows here.
fn load_average() -> String {
    let text = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    text.split_whitespace().take(3).collect::<Vec<_>>().join(" ")
}

fn write_append_table(out: &mut String, plan: &Plan, rows: &[AppendRow]) -> anyhow::Result<()> {
    writeln!(out, "## 1. Append throughput (FileLog, no server)")?;
    writeln!(out)?;
    writeln!(
        out,
        "One record per `append` call, no key or attributes, one partition, segment_bytes 64 MiB. \
         Each case runs {} ms or {} MiB of values, whichever comes first, in a fresh directory; \
         cases that sync also sync once at the end, inside the timing. MB = 10^6 bytes of values. \
         Mean fsync is the mean time of one `fdatasync` call.",
        plan.append_case_ms,
        plan.append_case_bytes_max >> 20
    )?;
    writeln!(out)?;
    writeln!(out, "| fsync | value | msgs | seconds | msgs/s | MB/s | fsyncs | mean fsync (us) |")?;
    writeln!(out, "|---|--:|--:|--:|--:|--:|--:|--:|")?;
    for r in rows {
        let secs = r.elapsed.as_secs_f64();
        writeln!(
            out,
            "| {} | {} B | {} | {:.2} | {:.0} | {:.2} | {} | {} |",
            rule_label(r.policy, r.rule),
            r.value_bytes,
            r.msgs,
            secs,
            r.msgs as f64 / secs,
            (r.msgs * r.value_bytes as u64) as f64 / secs / 1e6,
            r.fsyncs.calls,
            r.fsyncs.mean_us().map_or("-".into(), |us| format!("{us:.0}")),
        )?;
    }
    writeln!(out)?;
    Ok(())
}

fn write_publish_table(out: &mut String, plan: &Plan, rows: &[PublishRow]) -> anyhow::Result<()> {
    writeln!(out, "## 2. Publish latency (gRPC over 127.0.0.1)")?;
    writeln!(out)?;
    writeln!(
        out,
        "The server runs in the benchmark process on its own 2-thread tokio runtime, the publishers \
         on another (both share the 2 cores). Each publisher has its own connection and one \
         single-message Publish in flight: it sends the next when the answer arrives. One topic, \
         one partition, default ServerConfig. After {} ms of warm-up, each case measures {} ms \
         (or {} publishes). Latency is the client's round trip in microseconds. fsyncs are the \
         server's `fdatasync` calls in the window (segment and metadata files); under fsync never \
         the only ones are segment rolls, which sync the sealed 64 MiB segment.",
        plan.publish_warmup_ms, plan.publish_case_ms, plan.publish_case_msgs_max
    )?;
    writeln!(out)?;
    writeln!(
        out,
        "| storage | value | publishers | msgs/s | MB/s | p50 | p99 | p999 | max | fsyncs | msgs/fsync | mean fsync (us) |"
    )?;
    writeln!(out, "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|")?;
    for r in rows {
        let secs = r.elapsed.as_secs_f64();
        let h = &r.latency_us;
        let per_fsync =
            if r.fsyncs.calls > 0 { format!("{:.1}", r.msgs as f64 / r.fsyncs.calls as f64) } else { "-".into() };
        let fsyncs = match r.backend {
            Backend::Memory => "-".to_string(),
            Backend::File(_) => r.fsyncs.calls.to_string(),
        };
        writeln!(
            out,
            "| {} | {} B | {} | {:.0} | {:.2} | {} | {} | {} | {} | {} | {} | {} |",
            r.backend,
            r.value_bytes,
            r.publishers,
            r.msgs as f64 / secs,
            (r.msgs * r.value_bytes as u64) as f64 / secs / 1e6,
            h.value_at_quantile(0.5),
            h.value_at_quantile(0.99),
            h.value_at_quantile(0.999),
            h.max(),
            fsyncs,
            per_fsync,
            r.fsyncs.mean_us().map_or("-".into(), |us| format!("{us:.0}")),
        )?;
    }
    writeln!(out)?;
    Ok(())
}

fn write_recovery_table(out: &mut String, plan: &Plan, rows: &[RecoveryRow]) -> anyhow::Result<()> {
    writeln!(out, "## 3. Recovery time")?;
    writeln!(out)?;
    writeln!(
        out,
        "One partition of {} MiB of {} B values (64 MiB segments), written with fsync never \
         (a roll syncs the sealed segment) and synced at the end; then `Storage::open` of the \
         partition, which scans every segment and checks every record's CRC32C. Warm: the files are in the page cache (just written). \
         Cold: after `sync; echo 3 > /proc/sys/vm/drop_caches`. GB = 10^9 bytes of segment files.",
        plan.recovery_log_bytes >> 20,
        RECOVERY_VALUE_BYTES
    )?;
    writeln!(out)?;
    writeln!(out, "| page cache | records | segment bytes | seconds | GB/s | records/s |")?;
    writeln!(out, "|---|--:|--:|--:|--:|--:|")?;
    for r in rows {
        let secs = r.elapsed.as_secs_f64();
        writeln!(
            out,
            "| {} | {} | {} | {:.3} | {:.2} | {:.0} |",
            r.cache,
            r.records,
            r.file_bytes,
            secs,
            r.file_bytes as f64 / secs / 1e9,
            r.records as f64 / secs
        )?;
    }
    if rows.len() == 1 {
        writeln!(out, "\nThe page cache could not be dropped here: warm only.")?;
    }
    writeln!(out)?;
    Ok(())
}
