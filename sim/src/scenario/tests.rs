use std::time::Duration;

use super::*;

const EXAMPLE: &str = "# A lease expires while partitioned away.
config seed=7 ack_deadline=5s
topic create orders partitions=2
sub create audit topic=orders
@0s    publish producer orders key=a value=\"hello there\"
@10ms  subscribe worker audit ack=none
+20ms  partition worker broker   # cut
@6s    heal worker broker
eventually 10s expect worker received sub=audit count=1 attempt=2
check all
";

#[test]
fn the_example_parses_into_typed_steps() {
    let s = parse("x.scn", EXAMPLE).unwrap();
    assert_eq!(s.config.seed, Some(7));
    assert_eq!(s.config.ack_deadline, Duration::from_secs(5));
    assert_eq!(s.brokers, ["broker"]);
    assert_eq!(s.apps, ["producer", "worker"]);
    let times: Vec<u128> = s.steps.iter().map(|s| s.at.as_millis()).collect();
    assert_eq!(times, [0, 0, 0, 10, 30, 6000, 6000, 6000]);
    let Action::Publish(publish) = &s.steps[2].action else { panic!("{:?}", s.steps[2]) };
    assert_eq!(publish.value.as_deref(), Some("hello there"));
    assert_eq!(publish.key.as_deref(), Some("a"));
    let Action::Expect(expect) = &s.steps[6].action else { panic!("{:?}", s.steps[6]) };
    assert_eq!(expect.within, Some(Duration::from_secs(10)));
    assert_eq!((expect.what, expect.least(), expect.attempt), (Expected::Received, 1, Some(2)));
    assert!(s.steps[6].action.blocks());
    assert_eq!(
        s.steps[4].action,
        Action::Fault(Fault::Partition { a: "worker".into(), b: "broker".into(), oneway: false })
    );
}

#[test]
fn every_step_prints_as_the_line_that_parses_back_to_it() {
    let text = "config ack_deadline=5s
topic create orders partitions=2
async topic delete other force=true
sub create audit topic=orders ack_deadline=3s start=latest min_backoff=1s max_backoff=4s dead_letter=dlq max_attempts=3 ordered=true mode=exclusive
seek audit latest
redrive dlq-reader max=2
publish p orders key=k value=\"two words\" size=10 count=3 every=50ms partition=1 idempotency_key=x via=library
subscribe w audit ack=nack-all ack_delay=2s max=4 nack_delay=1s reason=\"bad one\" session=3s
nack w delay=1s reason=r terminal=true
ack w all
modack w 10s
partition broker p oneway=true
latency p broker 300ms
fail_rate 0.02
disk broker corrupt
disk broker corrupt offset=4
disk broker corrupt offset=7 part=length
eventually 2s expect w received attempt=2 count=3 sub=audit
expect p error code=NOT_FOUND
check key-order
";
    let first = parse("x.scn", text).unwrap();
    let printed: Vec<String> = first.steps.iter().map(|s| s.action.to_string()).collect();
    let again = parse("x.scn", &printed.join("\n")).unwrap();
    let actions = |s: &Scenario| s.steps.iter().map(|s| s.action.clone()).collect::<Vec<_>>();
    assert_eq!(actions(&first), actions(&again), "{printed:#?}");
    assert_eq!(printed[1], "async topic delete other force=true");
    assert_eq!(printed[16], "eventually 2s expect w received attempt=2 count=3 sub=audit");
    assert_eq!(printed[14..16], ["disk broker corrupt offset=4", "disk broker corrupt offset=7 part=length"]);
    let target = |offset, length| {
        Action::Fault(Fault::Disk {
            host: "broker".into(),
            fault: DiskFault::Corrupt(Some(CorruptTarget { offset, length })),
        })
    };
    assert_eq!(first.steps[14].action, target(4, false));
    assert_eq!(first.steps[15].action, target(7, true));
}

#[test]
fn a_corrupt_target_goes_with_corrupt_only_and_part_needs_an_offset() {
    assert!(
        error("disk broker eio offset=3\n").contains("go with `corrupt` only"),
        "{}",
        error("disk broker eio offset=3\n")
    );
    assert!(error("disk broker corrupt part=length\n").contains("needs offset="));
    assert!(error("disk broker corrupt offset=3 part=head\n").contains("part"));
}

fn error(text: &str) -> String {
    parse("bad.scn", text).unwrap_err().to_string()
}

#[test]
fn errors_name_the_place_and_the_nearest_word() {
    assert_eq!(error("publsh p t"), "bad.scn:1:1: unknown step `publsh`; did you mean `publish`?");
    assert_eq!(error("\n  topic craete t"), "bad.scn:2:9: unknown `topic` action `craete`; did you mean `create`?");
    assert_eq!(error("subscribe w s\npartition w brokr"), "bad.scn:2:13: unknown host `brokr`; did you mean `broker`?");
    assert_eq!(error("publish p t cont=3"), "bad.scn:1:13: unknown option of `publish` `cont`; did you mean `count`?");
    assert_eq!(error("@5x publish p t"), "bad.scn:1:2: `5x` is not a duration; write 250ms, 5s or 2m");
    assert_eq!(
        error("@2s advance 1s\n@1s advance 1s"),
        "bad.scn:2:1: @1s is earlier than the step before it (2000 ms)"
    );
    assert_eq!(error("subscribe w s ack=some"), "bad.scn:1:19: ack: unknown value `some`; did you mean `none`?");
    assert_eq!(error("publish p"), "bad.scn:1:10: missing <topic>: the step is `publish host topic`");
    assert_eq!(error("publish broker t"), "bad.scn:1:9: `broker` is a broker; clients are other hosts");
    assert_eq!(error("config sed=1"), "bad.scn:1:8: unknown config setting `sed`; did you mean `seed`?");
    assert_eq!(error("publish p t value=\"open"), "bad.scn:1:19: this quote is never closed");
    assert_eq!(
        error("eventually 5s check all"),
        "bad.scn:1:15: eventually takes an expectation: `eventually 5s expect ...`"
    );
}

#[test]
fn a_mistyped_argument_is_an_error_never_a_default() {
    assert_eq!(error("publish p t count=0"), "bad.scn:1:19: count: 0 is outside 1 to 1000000");
    assert_eq!(error("publish p t partition=-1"), "bad.scn:1:23: partition: `-1` is not a whole number");
    assert_eq!(
        error("publish p t partition=5000000000"),
        "bad.scn:1:23: partition: 5000000000 is outside 0 to 4294967295"
    );
    assert_eq!(error("topic create t partitions=0"), "bad.scn:1:27: partitions: 0 is outside 1 to 1024");
    assert_eq!(
        error("subscribe w s\nexpect w error code=NOTFOUND"),
        "bad.scn:2:21: code: unknown value `NOTFOUND`; did you mean `NOT_FOUND`?"
    );
    assert_eq!(error("partition a broker oneway=yes"), "bad.scn:1:27: oneway: unknown value `yes`; known: true, false");
    assert_eq!(error("publish p t count=2 count=3"), "bad.scn:1:21: count is given twice");
    assert_eq!(
        error("subscribe w s via=library ack=manual"),
        "bad.scn:1:31: ack: via=library takes all, none, nack, nack-all or reject, not manual"
    );
    assert_eq!(
        error("sub create s topic=t min_backoff=2s max_backoff=1s"),
        "bad.scn:1:49: max_backoff: 1000 ms is below min_backoff (2000 ms)"
    );
    assert_eq!(
        error("sub create s topic=t max_attempts=3"),
        "bad.scn:1:35: max_attempts: counts deliveries before a dead letter; give dead_letter=TOPIC too"
    );
    assert_eq!(
        error("subscribe w s\nexpect w stalled sub=s"),
        "bad.scn:2:22: sub: `expect stalled` does not count by sub"
    );
    assert_eq!(
        error("subscribe w s\nexpect w received code=NOT_FOUND"),
        "bad.scn:2:24: code: `expect received` does not count by code"
    );
    assert_eq!(
        error("config fsync=always fsync_interval=5ms"),
        "bad.scn:1:1: fsync_interval: applies only with fsync=interval"
    );
    assert_eq!(error("config storage=memory fsync=never"), "bad.scn:1:1: fsync: the memory log has no fsync");
    assert_eq!(error("subscribe w s\ncrash w"), "bad.scn:2:7: `w` is an app; crash, restart and disk act on a broker");
    assert_eq!(error("disconnect broker"), "bad.scn:1:12: `broker` is a broker; clients are other hosts");
}

#[test]
fn async_goes_only_before_admin_steps() {
    let s = parse("x.scn", "@1s async sub create s topic=t\n").unwrap();
    assert_eq!(s.steps[0].at, Duration::from_secs(1));
    assert!(matches!(s.steps[0].action, Action::Admin { wait: Wait::Async, .. }));
    assert!(!s.steps[0].action.blocks());
    assert_eq!(
        error("async publish p t"),
        "bad.scn:1:1: async goes before an admin step (topic, sub, seek, redrive): other steps never wait"
    );
    assert_eq!(error("@1s async"), "bad.scn:1:10: async needs an admin step after it");
    let blocking = parse("x.scn", "topic delete t\n").unwrap();
    assert_eq!(
        blocking.steps[0].action,
        Action::Admin { admin: Admin::TopicDelete { topic: "t".into(), force: false }, wait: Wait::Blocking }
    );
}

#[test]
fn config_defaults_and_storage() {
    let s = parse("x.scn", "").unwrap();
    assert_eq!(s.config, Config::default());
    let s = parse("x.scn", "config fsync=interval fsync_interval=50ms loss=allowed\n").unwrap();
    assert_eq!(s.config.storage, Storage::File(Fsync::Interval(Duration::from_millis(50))));
    assert!(s.config.loss_allowed);
    let s = parse("x.scn", "config storage=memory\n").unwrap();
    assert_eq!(s.config.storage, Storage::Memory);
}

#[test]
fn durations() {
    assert_eq!(duration("250ms"), Some(Duration::from_millis(250)));
    assert_eq!(duration("5s"), Some(Duration::from_secs(5)));
    assert_eq!(duration("2m"), Some(Duration::from_secs(120)));
    for bad in ["", "5", "s", "5h", "-1s", "1.5s"] {
        assert_eq!(duration(bad), None, "{bad:?}");
    }
}

#[test]
fn a_cluster_names_its_brokers_and_its_steps_print_as_they_parse() {
    let text = "config brokers=3
eventually 5s expect cluster leader
expect cluster leader=broker2
transfer_leader broker3
async transfer_leader broker1
partition @leader @followers
heal @leader @followers
crash @brokers
restart @follower
disk @leader eio
disk @follower slow latency=300ms
disk @follower ok
";
    let s = parse("c.scn", text).unwrap();
    assert_eq!(s.brokers, ["broker1", "broker2", "broker3"]);
    let printed: Vec<String> = s.steps.iter().map(|s| s.action.to_string()).collect();
    let lines: Vec<&str> = text.lines().skip(1).collect();
    assert_eq!(printed, lines);
    assert!(s.steps[0].action.blocks() && !s.steps[1].action.blocks());
    let again = parse("c.scn", &format!("config brokers=3\n{}", printed.join("\n"))).unwrap();
    assert_eq!(
        again.steps.iter().map(|s| &s.action).collect::<Vec<_>>(),
        s.steps.iter().map(|s| &s.action).collect::<Vec<_>>()
    );
}

#[test]
fn permissions_are_the_servers_grants_checked_as_it_checks_them() {
    let parsed = parse("ok.scn", "config permissions=publish:orders.*:anonymous,admin:*:anonymous\n").unwrap();
    assert_eq!(parsed.config.permissions, "publish:orders.*:anonymous,admin:*:anonymous");
    let refused = error("config permissions=write:orders:anonymous");
    assert!(refused.starts_with("bad.scn:1:1: permissions: expected PERMISSION:PATTERN:PRINCIPAL"), "{refused}");
}

#[test]
fn cluster_steps_refuse_what_does_not_fit() {
    assert_eq!(error("config brokers=10"), "bad.scn:1:16: brokers: 10 is outside 1 to 9");
    assert_eq!(
        error("config snapshot_entries=50"),
        "bad.scn:1:1: snapshot_entries: a cluster's setting; set `brokers=3`"
    );
    assert_eq!(
        error("config brokers=3 storage=memory"),
        "bad.scn:1:1: storage: a cluster's brokers keep their Raft log on disk"
    );
    assert_eq!(error("crash @leader"), "bad.scn:1:7: @leader names a cluster's brokers: set `config brokers=3`");
    assert_eq!(error("expect cluster leader"), "bad.scn:1:1: a step about a cluster's leader needs `config brokers=3`");
    assert_eq!(
        error(
            "config brokers=3
subscribe @leader s"
        ),
        "bad.scn:2:11: @leader: only fault steps resolve targets"
    );
    assert_eq!(
        error(
            "config brokers=3
expect cluster leader=broker7"
        ),
        "bad.scn:2:23: unknown host `broker7`; did you mean `broker1`?"
    );
    assert_eq!(
        error(
            "config brokers=3
expect cluster leaders"
        ),
        "bad.scn:2:16: unexpected `leaders`: the step is `expect cluster leader` or `expect cluster leader=HOST`"
    );
    assert_eq!(
        error("disk broker slow latency=5ms"),
        "bad.scn:1:1: disk slow: slows a cluster node's Raft log; a single broker's fsyncs take `config disk_latency=D`"
    );
    assert_eq!(
        error("config brokers=3\ndisk broker1 slow"),
        "bad.scn:2:18: slow needs latency=D (more than 0): how much longer each fsync takes"
    );
    assert_eq!(error("config brokers=3\ndisk broker1 eio latency=5ms"), "bad.scn:2:26: latency= goes with `slow` only");
    assert_eq!(
        error(
            "config brokers=3
transfer_leader w
publish w t"
        ),
        "bad.scn:2:17: `w` is an app; crash, restart and disk act on a broker"
    );
}
