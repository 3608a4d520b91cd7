//! Mutation proof: the broker is broken on purpose in several ways (`core::Mutation`,
//! debug builds only), and each defect fails at least one shipped scenario through the
//! check meant to catch it. A checker that passed them all would be checking nothing.
#![cfg(debug_assertions)]

use mini_pubsub::core::Mutation;
use mini_pubsub_sim::{runner, scenario};

/// The scenario each mutation is run against, and the failure it must cause.
const CASES: [(Mutation, &str, &str); 13] = [
    (Mutation::AckNotRecorded, "basic.scn", "check redelivered-after-ack"),
    (Mutation::OffsetGivenTwice, "competing_consumers.scn", "check offsets"),
    (Mutation::RedeliveryAfterAck, "basic.scn", "check redelivered-after-ack"),
    (Mutation::AnswerBeforeSync, "acks_wait_for_fsync.scn", "check lost"),
    (Mutation::KeyOrderIgnored, "ordering_keys.scn", "check key-order"),
    (Mutation::FlowControlIgnored, "flow_control_limit.scn", "check flow"),
    (Mutation::InvariantBroken, "basic.scn", "invariant broken"),
    (Mutation::FloorForgotten, "cluster_leader_crash_under_load.scn", "check floors"),
    (Mutation::FollowerDiverges, "cluster_leader_crash_under_load.scn", "check replicas-agree"),
    (Mutation::RaftLogUnsynced, "cluster_power_failure.scn", "check delivered-committed"),
    (Mutation::DeadLetterOnLeaderOnly, "cluster_dead_letters_failover.scn", "check delivered-committed"),
    (Mutation::PublishChainIgnored, "library_publisher_pipeline_faults.scn", "check publish-order"),
    (Mutation::DeniedPublishStored, "permissions_deny_a_publish.scn", "check refused-stored"),
];

/// The cluster checks that no case above is meant for, each with a mutation that fails it.
const CLUSTER_CASES: [(Mutation, &str, &str); 3] = [
    (Mutation::AckNotRecorded, "cluster_leader_crash_under_load.scn", "check redelivered-after-ack"),
    (Mutation::FollowerDiverges, "cluster_leader_crash_under_load.scn", "check delivered-committed"),
    (Mutation::OffsetGivenTwice, "cluster_leader_crash_under_load.scn", "check real-time-order"),
];

fn run(file: &str, mutation: Option<Mutation>) -> runner::Report {
    let path = format!("{}/../scenarios/{file}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let parsed = scenario::parse(file, &text).unwrap_or_else(|e| panic!("{e}"));
    runner::run_mutated(&parsed, None, mutation)
}

#[test]
fn every_mutation_is_caught_by_the_check_meant_for_it() {
    assert_eq!(CASES.map(|(m, ..)| m), Mutation::ALL, "every mutation has a case");
    for (mutation, file, caught_by) in CASES {
        let report = run(file, Some(mutation));
        let failure = report.failure.clone().unwrap_or_default();
        assert!(
            failure.contains(caught_by),
            "{mutation:?} on {file}: expected a failure through `{caught_by}`, got {failure:?}\n{}",
            report.verdict
        );
    }
}

#[test]
fn every_cluster_check_fails_on_a_mutation() {
    for (mutation, file, caught_by) in CLUSTER_CASES {
        let report = run(file, Some(mutation));
        let failure = report.failure.clone().unwrap_or_default();
        assert!(failure.contains(caught_by), "{mutation:?} on {file}: expected `{caught_by}`, got {failure:?}");
    }
}

#[test]
fn the_scenarios_the_mutations_break_pass_unbroken() {
    let mut files: Vec<&str> = CASES.iter().map(|(_, file, _)| *file).collect();
    files.sort_unstable();
    files.dedup();
    for file in files {
        let report = run(file, None);
        assert!(report.passed, "{file} fails without a mutation:\n{}", report.verdict);
    }
}

#[test]
fn a_broken_invariant_stops_the_run_with_its_seed_and_the_trace_up_to_it() {
    let report = run("basic.scn", Some(Mutation::InvariantBroken));
    assert!(!report.passed);
    let last = report.trace.lines().last().unwrap_or_default();
    assert!(last.contains("broker     INVARIANT BROKEN: lease") && last.contains("missing from the timers"), "{last}");
    assert!(report.verdict.starts_with("seed: 1\n"), "{}", report.verdict);
    assert!(
        report.verdict.contains("checks: none run: the run stopped where the broker broke an invariant"),
        "{}",
        report.verdict
    );
    assert!(report.verdict.contains("failed:\n  invariant broken at "), "{}", report.verdict);
    // Nothing ran after it: the trace ends at the breach, before any drain.
    assert!(!report.trace.contains("heal everything and drain"), "{}", report.trace);
}
