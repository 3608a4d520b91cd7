//! The run as a picture: one self-contained page whose data describes the whole run.

use mini_pubsub::core::Mutation;
use mini_pubsub_sim::{html, runner, scenario};

mod page;
use page::{assert_page, data};

fn page_of(file: &str, mutation: Option<Mutation>) -> (runner::Report, String) {
    let path = format!("{}/../scenarios/{file}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap();
    let parsed = scenario::parse(file, &text).unwrap();
    let report = runner::run_mutated(&parsed, None, mutation);
    let page = html::page(&format!("scenarios/{file}"), &report, "replay");
    (report, page)
}

#[test]
fn a_passing_run_with_faults_draws_its_lanes_marks_and_bands() {
    let (report, page) = page_of("partitioned_subscriber.scn", None);
    assert_page(&report, &page);
    let data = data(&page);
    let lanes: Vec<&str> = data["lanes"].as_array().unwrap().iter().map(|l| l.as_str().unwrap()).collect();
    assert_eq!(lanes, ["broker", "admin", "worker", "producer", "driver"]);
    let span = &data["spans"][0];
    assert_eq!(span["text"], "partition worker broker");
    assert_eq!(span["hosts"], serde_json::json!(["worker", "broker"]));
    assert!(span["from"].as_u64() < span["to"].as_u64());
    let deliveries = data["events"].as_array().unwrap().iter().filter(|e| e["id"] == "producer-1").count();
    assert_eq!(deliveries, 1 + 8, "the publish and its eight deliveries are producer-1's life");
    assert!(page.contains("<title>scenarios/partitioned_subscriber.scn, seed 7: PASS</title>"));
}

#[test]
fn a_failed_check_names_the_messages_it_is_about() {
    let (report, page) = page_of("acks_wait_for_fsync.scn", Some(Mutation::AnswerBeforeSync));
    assert!(!report.passed);
    assert_page(&report, &page);
    let data = data(&page);
    let lost = data["checks"].as_array().unwrap().iter().find(|c| c["name"] == "lost").unwrap();
    assert_eq!(lost["passed"], false);
    let ids = lost["ids"].as_array().unwrap();
    assert!(!ids.is_empty(), "the failed check links the messages it names");
    for id in ids {
        assert!(data["events"].as_array().unwrap().iter().any(|e| e["id"] == *id), "{id} has marks to highlight");
    }
    let crash = &data["spans"].as_array().unwrap().iter().find(|s| s["text"] == "crash broker").unwrap()["hosts"];
    assert_eq!(*crash, serde_json::json!(["broker"]), "the crash is a band over the broker's lane");
}
