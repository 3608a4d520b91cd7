//! Every `scenarios/**/*.scn` runs, passes, and matches its reviewed snapshot.

use mini_pubsub_sim::{html, runner, scenario};

mod page;

#[test]
fn every_scenario_runs_and_matches_its_snapshot() {
    insta::glob!("../../scenarios", "**/*.scn", |path| {
        let text = std::fs::read_to_string(path).unwrap();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let parsed = scenario::parse(&name, &text).unwrap_or_else(|e| panic!("{e}"));
        let report = runner::run(&parsed, None);
        // Every run can be drawn as a page.
        page::assert_page(&report, &html::page(&name, &report, "replay"));
        let output = format!("{}\n\n{}", report.trace, report.verdict);
        insta::assert_snapshot!(output);
        assert!(
            report.passed,
            "{name} failed; replay: cargo run -p mini-pubsub-sim -- run scenarios/{name} --seed {}\n{}",
            report.seed, report.verdict
        );
    });
}

/// The cluster scenarios run twice here; the others' replays are compared by the sweep's
/// own runs and `tests/replay.rs` (a cluster run costs several single-broker ones).
const CLUSTERS_RUN_TWICE: [&str; 4] = [
    "cluster_leader_crash_under_load.scn",
    "cluster_power_failure.scn",
    "cluster_flapping_links.scn",
    "cluster_library_clients_failover.scn",
];

#[test]
fn the_same_seed_gives_byte_identical_output() {
    insta::glob!("../../scenarios", "**/*.scn", |path| {
        let text = std::fs::read_to_string(path).unwrap();
        let parsed = scenario::parse("x.scn", &text).unwrap();
        let name = path.file_name().unwrap().to_string_lossy();
        if parsed.brokers.len() > 1 && !CLUSTERS_RUN_TWICE.contains(&name.as_ref()) {
            return;
        }
        let first = runner::run(&parsed, Some(99));
        let second = runner::run(&parsed, Some(99));
        assert_eq!(first, second, "{} differs between two runs with seed 99", path.display());
        assert_passed(path, &first);
    });
}

/// Fails with the replay command when `report` did not pass.
fn assert_passed(path: &std::path::Path, report: &runner::Report) {
    let name = path.file_name().unwrap().to_string_lossy();
    assert!(
        report.passed,
        "{name} failed under seed {seed}; replay: cargo run -p mini-pubsub-sim -- run scenarios/{name} --seed {seed}\n{}",
        report.verdict,
        seed = report.seed
    );
}

/// Every scenario (with `clusters`, the cluster scenarios too) passes under `seed` too, not
/// only its own. CI runs a few seeds: a cluster run costs several single-broker ones in a
/// debug build, so the cluster scenarios run under one extra seed here, and under seeds 1 to
/// 20 in the sweep (`cargo run --release -p mini-pubsub-sim -- sweep`), with every other
/// scenario.
fn passes_under(seed: u64, clusters: bool) {
    insta::glob!("../../scenarios", "**/*.scn", |path| {
        let text = std::fs::read_to_string(path).unwrap();
        let parsed = scenario::parse("x.scn", &text).unwrap();
        if parsed.brokers.len() > 1 && !clusters {
            return;
        }
        assert_passed(path, &runner::run(&parsed, Some(seed)));
    });
}

#[test]
fn every_scenario_passes_under_seed_3() {
    passes_under(3, true);
}

#[test]
fn every_single_broker_scenario_passes_under_seed_17() {
    passes_under(17, false);
}

#[test]
fn every_single_broker_scenario_passes_under_seed_2026() {
    passes_under(2026, false);
}

#[test]
fn a_fault_that_did_nothing_fails_the_run() {
    // The publisher only starts after the partition is healed: no traffic tried to cross it.
    let idle_partition = "topic create t\nsub create s topic=t\n@100ms subscribe w s\n\
                          @200ms partition p broker\n@300ms heal p broker\n@400ms publish p t\ncheck all\n";
    let report = runner::run(&scenario::parse("idle.scn", idle_partition).unwrap(), None);
    assert!(!report.passed);
    assert!(report.failure.unwrap().contains("fault `partition p broker` did nothing"));

    let dead_restart = "topic create t\n@100ms restart broker\ncheck all\n";
    let report = runner::run(&scenario::parse("restart.scn", dead_restart).unwrap(), None);
    assert!(report.failure.unwrap().contains("restart broker: the host was running"));
}

#[test]
fn a_disk_fault_that_refused_nothing_fails_the_run() {
    // Nothing touches the disk while it fails: the publish comes after it recovers.
    let idle_disk = "topic create t\nsub create s topic=t\n@100ms subscribe w s\n\
                     @200ms disk broker eio\n@300ms disk broker ok\n@400ms publish p t\ncheck all\n";
    let report = runner::run(&scenario::parse("idle_disk.scn", idle_disk).unwrap(), None);
    assert!(!report.passed);
    let failure = report.failure.unwrap();
    assert!(failure.contains("did nothing: the disk refused nothing"), "{failure}");
}
