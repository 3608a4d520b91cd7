//! The real `mini-pubsub` binary's client commands against a broker on 127.0.0.1:
//! publish (a value with key and attributes, stdin lines), subscribe (--count, --ack,
//! --json, and without --ack), topic and sub admin, and the one-line error with exit 1.

mod common;

use std::io::Write;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use common::{ack_ids, TestServer};
use mini_pubsub::wire::pb;

/// Longest a command may run before the test kills it and fails.
const COMMAND_MAX: Duration = Duration::from_secs(30);

/// Runs `mini-pubsub ARGS` against `server` (through MINI_PUBSUB_SERVER), feeding `stdin`.
async fn mini(server: &TestServer, args: &[&str], stdin: &str) -> Output {
    let url = format!("http://{}", server.addr);
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    let stdin = stdin.to_string();
    tokio::task::spawn_blocking(move || run_binary(&url, &args, &stdin)).await.unwrap()
}

fn run_binary(url: &str, args: &[String], stdin: &str) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_mini-pubsub"))
        .args(args)
        .env("MINI_PUBSUB_SERVER", url)
        .env_remove("RUST_LOG")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the binary starts");
    child.stdin.take().unwrap().write_all(stdin.as_bytes()).unwrap();
    let deadline = COMMAND_MAX.as_millis() / 20;
    for _ in 0..deadline {
        if child.try_wait().unwrap().is_some() {
            return child.wait_with_output().unwrap();
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let output = child.wait_with_output().unwrap();
    panic!("`mini-pubsub {}` ran past {COMMAND_MAX:?}; stderr: {}", args.join(" "), text(&output.stderr));
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The command's stdout lines, after checking it succeeded with nothing on stderr.
fn lines(output: &Output) -> Vec<String> {
    assert!(output.status.success(), "{:?}; stderr: {}", output.status, text(&output.stderr));
    assert_eq!(text(&output.stderr), "", "stderr of a successful command");
    text(&output.stdout).lines().map(str::to_string).collect()
}

async fn pull(server: &TestServer, subscription: &str) -> Vec<pb::ReceivedMessage> {
    let request = pb::PullRequest { subscription: subscription.into(), max_messages: 100 };
    server.pubsub.clone().pull(request).await.unwrap().into_inner().received_messages
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_prints_where_a_value_and_each_stdin_line_went() {
    let server = common::start().await;
    server.create_topic("events", 1).await;
    server.create_subscription("check", "events", 30).await;

    let output = mini(&server, &["publish", "events", "hello", "--key", "user-7", "--attr", "origin=cli"], "").await;
    let printed = lines(&output);
    assert_eq!(printed.len(), 1);
    assert!(printed[0].starts_with("partition=0 offset=0 message_id="), "{printed:?}");

    let output = mini(&server, &["publish", "events"], "one\ntwo\r\n\nthree").await;
    let offsets: Vec<String> =
        lines(&output).iter().map(|l| l.split_whitespace().take(2).collect::<Vec<_>>().join(" ")).collect();
    assert_eq!(
        offsets,
        ["partition=0 offset=1", "partition=0 offset=2", "partition=0 offset=3", "partition=0 offset=4"]
    );

    let stored = pull(&server, "check").await;
    let values: Vec<String> = stored.iter().map(common::value).collect();
    assert_eq!(values, ["hello", "one", "two", "", "three"]);
    let first = stored[0].message.as_ref().unwrap();
    assert_eq!(first.key.as_deref(), Some("user-7"));
    assert_eq!(first.attributes.get("origin").map(String::as_str), Some("cli"));
    assert!(first.idempotency_key.is_some(), "the publisher numbers its messages");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribe_count_ack_json_prints_one_object_per_message_and_commits_them() {
    let server = common::start().await;
    server.create_topic("orders", 1).await;
    server.create_subscription("orders-sub", "orders", 30).await;
    server.publish("orders", &["paid", "shipped"]).await;
    let binary = pb::PublishRequest { topic: "orders".into(), value: vec![0xff, 0xfe].into(), ..Default::default() };
    server.pubsub.clone().publish(binary).await.unwrap();

    let output = mini(&server, &["subscribe", "orders-sub", "--count", "3", "--ack", "--json"], "").await;
    let objects: Vec<serde_json::Value> =
        lines(&output).iter().map(|l| serde_json::from_str(l).expect("one JSON object per line")).collect();
    assert_eq!(objects.len(), 3);
    assert_eq!(objects[0]["value"], "paid");
    assert_eq!(objects[0]["subscription"], "orders-sub");
    assert_eq!(objects[0]["topic"], "orders");
    assert_eq!((objects[0]["partition"].as_u64(), objects[0]["offset"].as_u64()), (Some(0), Some(0)));
    assert_eq!(objects[0]["delivery_attempt"], 1);
    assert!(objects[0]["publish_time"].as_str().is_some_and(|t| t.ends_with('Z')), "{}", objects[0]);
    assert_eq!(objects[2]["value_base64"], "//4=", "bytes that are not UTF-8 come as base64");
    assert!(objects[2].get("value").is_none());

    let stats = server.stats("orders-sub").await;
    assert_eq!((stats.backlog, stats.partitions[0].committed_offset), (0, 3), "{stats:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribe_without_ack_prints_a_line_and_leaves_the_message_for_the_next_consumer() {
    let server = common::start().await;
    server.create_topic("jobs", 1).await;
    server.create_subscription("jobs-sub", "jobs", 30).await;
    server.publish("jobs", &["line one\nline two"]).await;

    let output = mini(&server, &["subscribe", "jobs-sub", "--count", "1"], "").await;
    assert_eq!(lines(&output), ["partition=0 offset=0 attempt=1 value=line one\\nline two"]);
    // Given back when the command's stream closes: ready at once, with the next attempt.
    let again = pull(&server, "jobs-sub").await;
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].delivery_attempt, 2);
    server
        .pubsub
        .clone()
        .ack(pb::AckRequest { subscription: "jobs-sub".into(), ack_ids: ack_ids(&again) })
        .await
        .unwrap();

    // --topic taps through an ephemeral subscription, which goes away on exit.
    let output = mini(&server, &["subscribe", "--topic", "jobs", "--count", "1", "--ack"], "").await;
    assert_eq!(lines(&output).len(), 1);
    let listed = mini(&server, &["sub", "list"], "").await;
    assert_eq!(lines(&listed), ["jobs-sub topic=jobs ack_deadline_seconds=30 delivery_mode=shared"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topic_and_sub_commands_create_describe_list_and_delete() {
    let server = common::start().await;
    let created =
        mini(&server, &["topic", "create", "payments", "--partitions", "2", "--dedupe-window", "300s"], "").await;
    assert_eq!(
        lines(&created),
        [
            "topic: payments",
            "partitions: 2",
            "dedupe_window: 300s",
            "partition 0: start_offset=0 end_offset=0",
            "partition 1: start_offset=0 end_offset=0",
            "subscriptions: -"
        ]
    );
    lines(&mini(&server, &["topic", "create", "payments-dlq"], "").await);
    let args = [
        "sub",
        "create",
        "ledger",
        "--topic",
        "payments",
        "--ack-deadline",
        "20",
        "--start",
        "latest",
        "--min-backoff",
        "2s",
        "--max-backoff",
        "1m",
        "--dead-letter-topic",
        "payments-dlq",
        "--max-delivery-attempts",
        "4",
        "--ordering",
        "--mode",
        "exclusive",
    ];
    let created = lines(&mini(&server, &args, "").await);
    assert_eq!(
        created,
        [
            "subscription: ledger",
            "topic: payments",
            "ack_deadline_seconds: 20",
            "start_position: latest",
            "delivery_mode: exclusive",
            "message_ordering: true",
            "retry_policy: minimum_backoff=2s maximum_backoff=60s",
            "dead_letter_policy: topic=payments-dlq max_delivery_attempts=4",
            "ephemeral: false"
        ]
    );
    assert_eq!(lines(&mini(&server, &["sub", "get", "ledger"], "").await), created);
    let listed = lines(&mini(&server, &["topic", "list"], "").await);
    assert_eq!(
        listed,
        [
            "payments partitions=2 messages=0 subscriptions=ledger",
            "payments-dlq partitions=1 messages=0 subscriptions=-"
        ]
    );
    let stats = lines(&mini(&server, &["sub", "stats", "ledger"], "").await);
    assert_eq!(&stats[..3], ["subscription: ledger", "topic: payments", "backlog: 0"]);
    assert!(
        stats.contains(&"partition 1: committed_offset=0 end_offset=0 lag=0 backlog=0 outstanding=0 delayed=0".into())
    );
    let refused = mini(&server, &["topic", "delete", "payments"], "").await;
    assert_eq!(refused.status.code(), Some(1));
    assert!(text(&refused.stderr).starts_with("error: FAILED_PRECONDITION: topic `payments` has subscriptions"));
    let deleted = lines(&mini(&server, &["topic", "delete", "payments", "--force"], "").await);
    assert_eq!(deleted, ["deleted topic payments", "deleted subscription ledger"]);
    assert_eq!(lines(&mini(&server, &["sub", "list"], "").await), Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_request_prints_one_line_on_stderr_and_exits_1() {
    let server = common::start().await;
    let output = mini(&server, &["topic", "get", "missing"], "").await;
    assert_eq!(output.status.code(), Some(1));
    assert_eq!(text(&output.stderr), "error: NOT_FOUND: topic `missing` not found\n");
    assert_eq!(text(&output.stdout), "");

    let output = mini(&server, &["sub", "stats", "missing"], "").await;
    assert_eq!(text(&output.stderr), "error: NOT_FOUND: subscription `missing` not found\n");

    // --server wins over the environment; nothing listens on port 1.
    let output = mini(&server, &["--server", "http://127.0.0.1:1", "topic", "list"], "").await;
    assert_eq!(output.status.code(), Some(1));
    let stderr = text(&output.stderr);
    assert!(
        stderr.starts_with("error: cannot connect to http://127.0.0.1:1: ") && stderr.lines().count() == 1,
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribe_count_ack_takes_only_what_it_prints() {
    let server = common::start().await;
    server.create_topic("t", 1).await;
    server.create_topic("dlq", 1).await;
    // One delivery each: a message leased and given back unprinted would be dead-lettered.
    let args = ["sub", "create", "s", "--topic", "t", "--dead-letter-topic", "dlq", "--max-delivery-attempts", "1"];
    lines(&mini(&server, &args, "").await);
    lines(&mini(&server, &["publish", "t"], "m0\nm1\nm2\nm3\n").await);
    let mut printed = Vec::new();
    for _ in 0..4 {
        printed.extend(lines(&mini(&server, &["subscribe", "s", "--count", "1", "--ack"], "").await));
    }
    let values: Vec<&str> = printed.iter().map(|l| l.rsplit("value=").next().unwrap()).collect();
    assert_eq!(values, ["m0", "m1", "m2", "m3"], "{printed:?}");
    let stats = server.stats("s").await;
    assert_eq!((stats.dead_lettered, stats.backlog), (0, 0), "{stats:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_keeps_publishing_when_stdout_closes_and_names_a_failing_line() {
    let server = common::start().await;
    server.create_topic("t", 1).await;
    let url = format!("http://{}", server.addr);
    let exit = tokio::task::spawn_blocking(move || {
        let mut child = Command::new(env!("CARGO_BIN_EXE_mini-pubsub"))
            .args(["publish", "t"])
            .env("MINI_PUBSUB_SERVER", &url)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("the binary starts");
        let input: String = (0..5000).map(|i| format!("line {i}\n")).collect();
        let mut stdin = child.stdin.take().unwrap();
        let feeder = std::thread::spawn(move || stdin.write_all(input.as_bytes()));
        // Read one line, then close stdout, as `| head -1` does.
        let mut first = [0u8; 1];
        std::io::Read::read_exact(child.stdout.as_mut().unwrap(), &mut first).unwrap();
        drop(child.stdout.take());
        feeder.join().unwrap().unwrap();
        for _ in 0..(COMMAND_MAX.as_millis() / 20) {
            if let Some(status) = child.try_wait().unwrap() {
                return status;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        panic!("publish ran past {COMMAND_MAX:?} after stdout closed");
    })
    .await
    .unwrap();
    assert!(exit.success(), "{exit:?}");
    let topic = server.admin.clone().get_topic(pb::GetTopicRequest { name: "t".into() }).await.unwrap().into_inner();
    assert_eq!(topic.partition_info[0].end_offset, 5000, "every line is published");

    let too_big = format!("ok\n{}\n", "x".repeat(1_100_000));
    let output = mini(&server, &["publish", "t"], &too_big).await;
    assert_eq!(output.status.code(), Some(1));
    let stderr = text(&output.stderr);
    assert!(stderr.starts_with("error: stdin line 2: INVALID_ARGUMENT"), "{stderr}");
}
