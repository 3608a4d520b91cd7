//! Time is honest: a step that runs after its time says so, `async` admin steps do not hold
//! the timeline, and admin steps leave trace lines (refusals with their status).

use mini_pubsub_sim::{runner, scenario};

fn run(text: &str) -> runner::Report {
    runner::run(&scenario::parse("timeline.scn", text).unwrap_or_else(|e| panic!("{e}")), Some(1))
}

#[test]
fn a_step_held_back_by_a_blocking_admin_step_says_it_ran_late() {
    let report = run("topic create t\n@0s sub create s topic=t\n@1ms publish p t\ncheck all\n");
    let late: Vec<&str> = report.trace.lines().filter(|l| l.contains("late: line 3")).collect();
    assert_eq!(late.len(), 1, "{}", report.trace);
    assert!(late[0].contains("line 3 (`publish p t`) due @1ms"), "{}", late[0]);
    assert!(late[0].contains("line 2 (`sub create s topic=t`) held the timeline"), "{}", late[0]);
    assert!(report.verdict.contains("\n  line 3 by "), "{}", report.verdict);
}

#[test]
fn an_async_admin_step_does_not_hold_the_timeline() {
    let report = run("@10ms async topic create t\n@10ms async sub create s topic=t\n@20ms subscribe w s\n@400ms publish p t\ncheck all\n");
    assert!(!report.trace.contains("late:"), "{}", report.trace);
    assert!(report.trace.contains("admin      sub create s topic=t: created"), "{}", report.trace);
    let subscribe_at = report.entries.iter().find(|e| e.host == "w").map(|e| e.at_ms).unwrap();
    assert!(subscribe_at >= 20, "{}", report.trace);
}

#[test]
fn admin_steps_leave_trace_lines_and_a_refused_delete_stores_nothing() {
    let text = "topic create t\nsub create s topic=t\ntopic delete t\nexpect admin error code=FAILED_PRECONDITION\n\
                @100ms subscribe w s\n@200ms publish p t\neventually 5s expect w received sub=s\n\
                topic delete t force=true\ncheck all\n";
    let report = run(text);
    assert!(report.trace.contains("admin      topic create t: created with 1 partition"), "{}", report.trace);
    assert!(
        report
            .trace
            .contains("admin      topic delete t: refused FAILED_PRECONDITION: topic `t` has subscriptions [\"s\"]"),
        "{}",
        report.trace
    );
    assert!(
        report.trace.contains("admin      topic delete t force=true: deleted, with subscriptions s"),
        "{}",
        report.trace
    );
    assert!(report.verdict.contains("pass at"), "{}", report.verdict);
}
