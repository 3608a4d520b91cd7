//! A simulated run's brokers record every command they apply (`serve --record`, here into
//! a temporary directory); each recording, replayed on a fresh core, gives every reply and
//! every command's outputs as the simulated broker produced them, and every message a
//! client received in the simulation is among the replay's deliveries.

use std::collections::BTreeSet;
use std::path::Path;

use mini_pubsub_sim::history::Event;
use mini_pubsub_sim::runner::{self, Options};
use mini_pubsub_sim::{replay, scenario};

/// Scenarios with no crash and no disk fault (a restarted broker's recording begins on
/// stored state, and an injected disk fault does not replay on a healthy disk), covering
/// streams, pulls, acks, nacks, backoffs, dead letters, redrive, seeks, ordering keys,
/// exclusive groups, flow control, idempotent publishes and the client library.
const SCENARIOS: [&str; 10] = [
    "basic.scn",
    "seek_replay.scn",
    "redrive_dead_letters.scn",
    "retry_backoff.scn",
    "ordering_keys.scn",
    "exclusive_groups_rebalance.scn",
    "flow_control_limit.scn",
    "idempotent_publish_retry.scn",
    "lease_expiry.scn",
    "library_subscriber_keeps_leases.scn",
];

fn record(file: &str, dir: &Path) -> runner::Report {
    let path = format!("{}/../scenarios/{file}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let parsed = scenario::parse(file, &text).unwrap_or_else(|e| panic!("{e}"));
    runner::run_with(&parsed, None, Options { mutation: None, record: Some(dir.to_path_buf()) })
}

#[test]
fn a_recorded_simulated_run_replays_with_every_reply_as_it_was() {
    for file in SCENARIOS {
        let dir = tempfile::tempdir().unwrap();
        let report = record(file, dir.path());
        assert!(report.passed, "{file} fails on its own:\n{}", report.failure.unwrap_or_default());
        let recordings: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().path()).collect();
        assert_eq!(recordings.len(), 1, "{file}: one broker, one life: {recordings:?}");
        let replayed = replay::replay_dir(&recordings[0]).unwrap_or_else(|e| panic!("{file}: {e}"));
        assert!(replayed.steps > 10, "{file}: {} commands recorded", replayed.steps);
        assert!(replayed.reply_mismatches.is_empty(), "{file}: replies differ: {:?}", replayed.reply_mismatches);
        assert!(replayed.output_mismatches.is_empty(), "{file}: outputs differ: {:?}", replayed.output_mismatches);
        assert!(replayed.checks.iter().all(|c| c.passed), "{file}:\n{}", replayed.verdict());
        // Every delivery a client saw in the simulation is one the replayed broker made.
        let delivered = |entries: &[mini_pubsub_sim::history::Entry]| -> BTreeSet<(String, String, u32)> {
            entries
                .iter()
                .filter_map(|e| match &e.event {
                    Event::Delivered { message_id, sub, attempt, .. } => {
                        Some((message_id.clone(), sub.clone(), *attempt))
                    }
                    _ => None,
                })
                .collect()
        };
        let (seen, made) = (delivered(&report.entries), delivered(&replayed.entries));
        assert!(!seen.is_empty(), "{file}: no client received anything");
        let missing: Vec<_> = seen.difference(&made).collect();
        assert!(missing.is_empty(), "{file}: received in the simulation, not made by the replay: {missing:?}");
    }
}

#[test]
fn the_same_seed_records_the_same_bytes() {
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    record("exclusive_groups_rebalance.scn", a.path());
    record("exclusive_groups_rebalance.scn", b.path());
    let bytes = |dir: &Path| {
        let recording = std::fs::read_dir(dir).unwrap().next().unwrap().unwrap().path();
        let segment = std::fs::read_dir(recording).unwrap().next().unwrap().unwrap().path();
        std::fs::read(segment).unwrap()
    };
    let (first, second) = (bytes(a.path()), bytes(b.path()));
    assert!(first.len() > 1000, "{} bytes recorded", first.len());
    assert!(first == second, "two runs under one seed recorded different bytes");
}

/// Three brokers on Raft, one seed, two runs: every event of the run is the same, and each
/// node's recordings (one per life) hold the same bytes.
#[test]
fn three_brokers_under_one_seed_run_and_record_the_same_bytes() {
    let file = "cluster_leader_crash_under_load.scn";
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (first, second) = (record(file, a.path()), record(file, b.path()));
    assert!(first.entries.iter().any(|e| matches!(e.event, Event::Cluster { .. })), "not a cluster run");
    assert!(first.entries == second.entries, "two runs under one seed differ");
    let files = |dir: &Path| {
        let mut all = Vec::new();
        for life in std::fs::read_dir(dir).unwrap() {
            let life = life.unwrap().path();
            for segment in std::fs::read_dir(&life).unwrap() {
                let segment = segment.unwrap().path();
                let name = segment.strip_prefix(dir).unwrap().to_path_buf();
                all.push((name, std::fs::read(&segment).unwrap()));
            }
        }
        all.sort();
        all
    };
    let (first, second) = (files(a.path()), files(b.path()));
    let lives: BTreeSet<String> =
        first.iter().map(|(name, _)| name.iter().next().unwrap().to_string_lossy().into_owned()).collect();
    assert!(lives.len() >= 4, "three nodes and a restarted one record: {lives:?}");
    assert!(first.iter().map(|(_, bytes)| bytes.len()).sum::<usize>() > 10_000, "recorded too little");
    assert!(first == second, "two runs under one seed recorded different bytes");
}
