//! The markdown and the chart made from a fixed input.

use crate::plan::{Case, Class, Plan, System, Workload};
use crate::results::{Footprint, Machine, Measured, Outcome, Report, RunResult};
use crate::servers::Usage;
use crate::stats::LatencySummary;
use crate::{chart, report};

fn measured(rate: f64) -> Measured {
    let usage = Usage { cpu_seconds: 0.0, rss_kib: 20 * 1024, hwm_kib: 30 * 1024 };
    let latency = LatencySummary { p50_us: 80, p99_us: 1_500, p999_us: 20_000, max_us: 2_000_000, count: 100 };
    Measured::new((rate * 2.0) as u64, 2.0, 128, 0.5, usage).with_latency(Some(latency))
}

fn fixed_report() -> Report {
    let case = Case { class: Class::Memory, workload: Workload::AsyncPublish, size: 128 };
    let fsync = Case { class: Class::Fsync, workload: Workload::SyncPublish, size: 128 };
    let mut runs = Vec::new();
    for (repeat, (ours, nats)) in
        [(100_000.0, 50_000.0), (120_000.0, 40_000.0), (110_000.0, 60_000.0)].iter().enumerate()
    {
        let repeat = repeat as u32 + 1;
        runs.push(RunResult { case, system: System::Ours, repeat, outcome: Outcome::Measured(measured(*ours)) });
        runs.push(RunResult { case, system: System::Nats, repeat, outcome: Outcome::Measured(measured(*nats)) });
        let failed = Outcome::Failed("connection refused".into());
        runs.push(RunResult { case, system: System::Redis, repeat, outcome: failed });
    }
    runs.push(RunResult { case: fsync, system: System::Ours, repeat: 1, outcome: Outcome::Measured(measured(900.0)) });
    let why = Outcome::NotApplicable("no fsync".into());
    runs.push(RunResult { case: fsync, system: System::Nats, repeat: 1, outcome: why });
    runs.push(RunResult { case: fsync, system: System::Redis, repeat: 1, outcome: Outcome::Measured(measured(450.0)) });
    let usage = Usage { cpu_seconds: 1.0, rss_kib: 300 * 1024, hwm_kib: 310 * 1024 };
    let footprints = vec![Footprint { system: System::Ours, messages: 1_000_000, size: 128, outcome: Ok(usage) }];
    let plan = Plan {
        quick: false,
        repeats: 3,
        sizes: vec![128],
        classes: vec![Class::Memory, Class::Fsync],
        systems: System::DEFAULT.to_vec(),
        workloads: vec![Workload::AsyncPublish, Workload::SyncPublish],
        warmup_ms: 300,
        window_ms: 1500,
        case_messages_max: 1_000_000,
        backlog_messages_max: 1_000_000,
        backlog_bytes_max: 512 << 20,
        backlog_seconds_max: 60,
        retained_messages: 1_000_000,
        sync_via_generated: false,
        publisher_in_flight: None,
    };
    Report { machine: Machine { cpu: "Test CPU".into(), cores: 2, ..Default::default() }, plan, runs, footprints }
}

#[test]
fn the_rate_table_shows_medians_ranges_ratios_and_failures() {
    let md = report::markdown(&fixed_report());
    assert!(md.contains("- CPU: Test CPU, 2 cores"), "{md}");
    let row = "| async-publish | 128 B | 110k [100k-120k] | 50k [40k-60k] | failed (3) | 2.20x | n/a |";
    assert!(md.contains(row), "{md}");
    assert!(md.contains("| sync-publish | 128 B | 900 [900-900] | n/a | 450 [450-450] | n/a | 2.00x |"), "{md}");
    let detail = "| async-publish | 128 B | mini-pubsub | 110k | 14.1 | - | 80 us | 1.5 ms | 20 ms | 2.00 s | 0.50 | 20 | 30 | 3/3 |";
    assert!(md.contains(detail), "{md}");
    assert!(md.contains("| redis | failed | | | | | | | | | | | 0/3 | connection refused |"), "{md}");
    assert!(md.contains("| mini-pubsub | 300 | 310 | 315 |"), "{md}");
}

#[test]
fn the_chart_has_a_bar_per_measured_cell_and_a_mark_per_missing_one() {
    let r = fixed_report();
    let svg = chart::svg(&report::group(&r.runs), &r.plan.classes, &r.plan.systems);
    assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
    assert_eq!(svg.matches("<title>").count(), 4, "{svg}");
    assert_eq!(svg.matches(">x</text>").count(), 2, "{svg}");
    assert!(svg.contains("mini-pubsub memory async-publish 128 B: 110k"), "{svg}");
}

#[test]
fn a_run_with_the_recorder_shows_its_cost_as_a_ratio() {
    let mut r = fixed_report();
    r.plan.systems.push(System::OursRecorded);
    let case = Case { class: Class::Memory, workload: Workload::AsyncPublish, size: 128 };
    for (repeat, rate) in [(1, 90_000.0), (2, 99_000.0), (3, 95_000.0)] {
        r.runs.push(RunResult {
            case,
            system: System::OursRecorded,
            repeat,
            outcome: Outcome::Measured(measured(rate)),
        });
    }
    let md = report::markdown(&r);
    assert!(md.contains("| ours/NATS | ours/Redis | recorded/ours |"), "{md}");
    let row = "| async-publish | 128 B | 110k [100k-120k] | 50k [40k-60k] | failed (3) | 95k [90k-99k] | 2.20x | n/a | 0.86x |";
    assert!(md.contains(row), "{md}");
}
