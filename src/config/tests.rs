use std::path::PathBuf;

use super::*;
use crate::core::BrokerConfig;

fn file(text: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mini-pubsub.toml");
    std::fs::write(&path, text).unwrap();
    (dir, path)
}

fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

fn flag(name: &'static str, value: &str) -> (&'static str, String, String) {
    (name, format!("--{}", name.replace('_', "-")), value.to_string())
}

fn source_of(loaded: &Loaded, name: &str) -> Source {
    loaded.sources[SETTINGS.iter().position(|s| s.name == name).unwrap()].clone()
}

#[test]
fn flag_beats_env_beats_file_beats_default() {
    let (_dir, path) = file(
        "[broker]\nack_deadline_ms = 11000\ndefault_partitions = 3\nmax_message_bytes = 2000\n\
         [storage]\nstorage = \"memory\"\n",
    );
    let loaded = Loaded::load(
        Some(&path),
        env(&[("MINI_PUBSUB_ACK_DEADLINE_MS", "12000"), ("MINI_PUBSUB_DEFAULT_PARTITIONS", "4")]),
        [flag("ack_deadline_ms", "13000")],
    )
    .unwrap();
    let c = &loaded.config;
    assert_eq!(c.server.broker.ack_deadline_ms, 13000);
    assert_eq!(c.server.broker.default_partitions, 4);
    assert_eq!(c.server.broker.max_message_bytes, 2000);
    assert_eq!(c.storage.kind, StorageKind::Memory);
    assert_eq!(c.server.broker.topics_max, BrokerConfig::default().topics_max);
    assert_eq!(source_of(&loaded, "ack_deadline_ms"), Source::Flag("--ack-deadline-ms".into()));
    assert_eq!(source_of(&loaded, "default_partitions"), Source::Env("MINI_PUBSUB_DEFAULT_PARTITIONS".into()));
    assert_eq!(source_of(&loaded, "max_message_bytes"), Source::File(path.clone()));
    assert_eq!(source_of(&loaded, "topics_max"), Source::Default);
    loaded.validate().unwrap();
}

#[test]
fn rust_log_is_the_environment_filter_unless_ours_is_set() {
    let loaded = Loaded::load(None, env(&[("RUST_LOG", "debug")]), []).unwrap();
    assert_eq!(loaded.config.log_filter, "debug");
    assert_eq!(source_of(&loaded, "log_filter"), Source::Env("RUST_LOG".into()));
    let ours = env(&[("RUST_LOG", "debug"), ("MINI_PUBSUB_LOG_FILTER", "warn")]);
    assert_eq!(Loaded::load(None, ours, []).unwrap().config.log_filter, "warn");
    let flagged = Loaded::load(None, env(&[("RUST_LOG", "debug")]), [flag("log_filter", "error")]).unwrap();
    assert_eq!(flagged.config.log_filter, "error");
}

#[test]
fn unknown_keys_and_sections_are_refused_with_a_hint() {
    let (_dir, path) = file("[broker]\nack_deadline = 5\n");
    let err = Loaded::load(Some(&path), [], []).unwrap_err().to_string();
    assert!(err.contains("unknown key `ack_deadline` in [broker]"), "{err}");

    let (_dir, path) = file("[server]\nack_deadline_ms = 5000\n");
    let err = Loaded::load(Some(&path), [], []).unwrap_err().to_string();
    assert!(err.contains("it belongs in [broker]"), "{err}");

    let (_dir, path) = file("ack_deadline_ms = 5000\n");
    let err = Loaded::load(Some(&path), [], []).unwrap_err().to_string();
    assert!(err.contains("unknown section or key `ack_deadline_ms` at the top level"), "{err}");

    let (_dir, path) = file("[broker\n");
    let err = Loaded::load(Some(&path), [], []).unwrap_err().to_string();
    assert!(err.contains("is not valid TOML"), "{err}");
}

#[test]
fn a_value_of_the_wrong_type_names_the_key_and_where_it_came_from() {
    let err = Loaded::load(None, env(&[("MINI_PUBSUB_DEFAULT_PARTITIONS", "four")]), []).unwrap_err();
    assert_eq!(
        err.to_string(),
        "default_partitions (from env MINI_PUBSUB_DEFAULT_PARTITIONS): expected an integer from 0 to 4294967295, got `four`"
    );
    let (_dir, path) = file("[storage]\nfsync = \"sometimes\"\n");
    let err = Loaded::load(Some(&path), [], []).unwrap_err().to_string();
    assert!(err.contains("fsync (from file"), "{err}");
    assert!(err.contains("expected one of always, interval, never, got `sometimes`"), "{err}");
    let (_dir, path) = file("[broker]\ndefault_partitions = [1]\n");
    let err = Loaded::load(Some(&path), [], []).unwrap_err().to_string();
    assert!(err.contains("expected a string, an integer or a boolean, got a array"), "{err}");
    let err = Loaded::load(None, [], [flag("listen", "localhost")]).unwrap_err().to_string();
    assert!(err.contains("listen (from flag --listen): expected an address"), "{err}");
}

#[test]
fn validate_names_the_key_the_range_the_value_and_its_source() {
    let loaded = Loaded::load(None, env(&[("MINI_PUBSUB_ACK_DEADLINE_MS", "10")]), []).unwrap();
    assert_eq!(
        loaded.validate().unwrap_err().to_string(),
        "invalid configuration: ack_deadline_ms must be 1000 to ack_deadline_max_ms; \
         it is 10 (from env MINI_PUBSUB_ACK_DEADLINE_MS)"
    );
    let loaded = Loaded::load(None, [], [flag("segment_bytes", "1000")]).unwrap();
    let err = loaded.validate().unwrap_err().to_string();
    assert!(err.contains("segment_bytes must be 1048576 to 1099511627776"), "{err}");
    assert!(err.contains("it is 1000 (from flag --segment-bytes)"), "{err}");
    let loaded = Loaded::load(None, [], [flag("stream_queue_max", "10")]).unwrap();
    let err = loaded.validate().unwrap_err().to_string();
    assert!(err.contains("stream_queue_max must be pull_messages_max + 16 = 1016 to 1000000"), "{err}");
    let loaded = Loaded::load(None, [], [flag("log_filter", "mini_pubsub=loud")]).unwrap();
    assert!(loaded.validate().unwrap_err().to_string().contains("log_filter must be a tracing filter"));
    let same = Loaded::load(None, [], [flag("metrics_listen", "127.0.0.1:50051")]).unwrap();
    assert!(same.validate().unwrap_err().to_string().contains("metrics_listen must be a different address"));
    let plain =
        Loaded::load(None, [], [flag("metrics_listen", "127.0.0.1:9464"), flag("metrics_tls", "true")]).unwrap();
    let refused = plain.validate().unwrap_err().to_string();
    assert!(refused.contains("metrics_tls must be false unless metrics_listen and tls_cert are set"), "{refused}");
}

#[test]
fn print_is_a_configuration_file_that_loads_back_to_the_same_settings() {
    let loaded = Loaded::load(
        None,
        env(&[("MINI_PUBSUB_METRICS_LISTEN", "127.0.0.1:9464"), ("MINI_PUBSUB_DATA_DIR", "/tmp/a \"quoted\" dir")]),
        [flag("partition_retention_ms", "0"), flag("truncate_corrupt", "true"), flag("log_format", "json")],
    )
    .unwrap();
    let printed = loaded.describe();
    assert!(printed.contains("metrics_listen = \"127.0.0.1:9464\""), "{printed}");
    assert!(printed.contains("# env MINI_PUBSUB_METRICS_LISTEN"), "{printed}");
    assert!(printed.contains("partition_retention_ms = 0"), "{printed}");
    assert!(printed.contains("# flag --truncate-corrupt"), "{printed}");
    assert!(printed.contains("topics_max = 10000"), "{printed}");
    let (_dir, path) = file(&printed);
    let again = Loaded::load(Some(&path), [], []).unwrap();
    assert_eq!(again.config, loaded.config);
    assert_eq!(again.config.server.broker.partition_retention_ms, None);
    assert_eq!(again.config.storage.data_dir, PathBuf::from("/tmp/a \"quoted\" dir"));
}

#[test]
fn every_field_of_the_server_and_broker_configs_is_a_setting() {
    // The simulator's fsync delay and its invariant checks (debug builds check anyway) are
    // the fields an operator has no use for.
    let simulator_only = ["broker", "sync_delay_ms", "check_invariants", "mutation"];
    let debug = format!("{:?} {:?}", ServerConfig::default(), BrokerConfig::default());
    let fields: Vec<&str> = debug
        .split([' ', '{', ','])
        .filter_map(|word| word.strip_suffix(':'))
        .filter(|field| !simulator_only.contains(field))
        .collect();
    assert!(fields.len() > 30, "{fields:?}");
    for field in fields {
        assert!(SETTINGS.iter().any(|s| s.name == field), "{field} has no configuration key");
    }
}

#[test]
fn names_are_unique_and_defaults_are_valid() {
    for (i, a) in SETTINGS.iter().enumerate() {
        assert!(SETTINGS[i + 1..].iter().all(|b| b.name != a.name), "{} twice", a.name);
        assert!(!a.doc.is_empty() && a.name.chars().all(|c| c.is_ascii_lowercase() || c == '_'));
    }
    Config::default().validate().unwrap();
}

#[test]
fn the_example_in_config_is_every_key_at_its_default() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/config/mini-pubsub.toml");
    let text = std::fs::read_to_string(path).unwrap();
    assert_eq!(text, example_file(), "config/mini-pubsub.toml is stale: `mini-pubsub config example > {path}`");
    let loaded = Loaded::load(Some(std::path::Path::new(path)), [], []).unwrap();
    assert_eq!(loaded.config, Config::default());
}

/// The refusal of these cluster settings, as `key: allowed`.
fn cluster_refusal(settings: &[(&'static str, &str)]) -> String {
    let flags = settings.iter().map(|(name, value)| flag(name, value));
    match Loaded::load(None, Vec::new(), flags) {
        Err(e) => e.to_string(),
        Ok(loaded) => loaded.validate().map_or_else(|e| e.to_string(), |()| "accepted".to_string()),
    }
}

#[test]
fn a_refused_tokens_setting_never_shows_its_value() {
    let loaded = Loaded::load(None, [], [flag("tokens", "ops=s3cret-pasted-in-place-of-its-hash")]).unwrap();
    let refused = loaded.validate().unwrap_err().to_string();
    assert!(refused.starts_with("invalid configuration: tokens must be PRINCIPAL=SHA256HEX"), "{refused}");
    assert!(!refused.contains("s3cret"), "{refused}");
}

#[test]
fn a_cluster_is_configured_in_the_file_the_environment_or_flags_like_any_setting() {
    let (_dir, path) = file("[cluster]\nnode_id = 2\npeers = \"1=127.0.0.1:7001, 2=127.0.0.1:7002,3=node-c:7003\"\n");
    let loaded = Loaded::load(Some(&path), env(&[("MINI_PUBSUB_PEER_LISTEN", "0.0.0.0:7002")]), []).unwrap();
    loaded.validate().unwrap();
    let cluster = &loaded.config.cluster;
    assert!(cluster.enabled());
    assert_eq!(cluster.node_id, 2);
    let peers: Vec<(u64, &str)> = cluster.peers.0.iter().map(|p| (p.id, p.addr.as_str())).collect();
    assert_eq!(peers, vec![(1, "127.0.0.1:7001"), (2, "127.0.0.1:7002"), (3, "node-c:7003")]);
    assert_eq!(cluster.peer_listen, Some("0.0.0.0:7002".parse().unwrap()));
    assert!(loaded.describe().contains("peers = \"1=127.0.0.1:7001,2=127.0.0.1:7002,3=node-c:7003\""));
    // Without the section: a single broker, as before.
    let single = Loaded::load(None, Vec::new(), []).unwrap();
    single.validate().unwrap();
    assert!(!single.config.cluster.enabled());
}

#[test]
fn a_membership_that_cannot_work_is_refused_naming_the_setting() {
    let three = "1=127.0.0.1:7001,2=127.0.0.1:7002,3=127.0.0.1:7003";
    let cases: [(&[(&'static str, &str)], &str); 12] = [
        (
            &[("node_id", "1"), ("peers", three), ("peer_tls_cert", "p.pem"), ("peer_tls_ca", "ca.pem")],
            "peer_tls_key must be set with the other two of peer_tls_cert, peer_tls_key and peer_tls_ca",
        ),
        (
            &[("peer_tls_cert", "p.pem"), ("peer_tls_key", "k.pem"), ("peer_tls_ca", "ca.pem")],
            "peer_tls_cert must be set only with peers",
        ),
        (&[("node_id", "4"), ("peers", three)], "node_id must be one of the ids in peers (1, 2, 3); 4 is not"),
        (&[("peers", three)], "node_id must be one of the ids in peers (1, 2, 3); 0 is not"),
        (
            &[("node_id", "1"), ("peers", "1=127.0.0.1:7001,1=127.0.0.1:7002")],
            "peers must be distinct node ids; 1 is given twice",
        ),
        (
            &[("node_id", "1"), ("peers", "1=127.0.0.1:7001,2=127.0.0.1:7001")],
            "peers must be distinct addresses; 127.0.0.1:7001 is given for nodes 1 and 2",
        ),
        (&[("node_id", "1"), ("peers", "0=127.0.0.1:7000,1=127.0.0.1:7001")], "peers must be node ids of 1 or more"),
        (
            &[("node_id", "1"), ("peers", "1=127.0.0.1:50051"), ("listen", "127.0.0.1:50051")],
            "peers must be a peer port other than the gRPC address",
        ),
        (&[("node_id", "2")], "node_id must be set only with peers"),
        (&[("brokers", "1=127.0.0.1:50051")], "brokers must be set only with peers"),
        (
            &[("node_id", "1"), ("peers", three), ("brokers", "1=127.0.0.1:50051,4=127.0.0.1:50054")],
            "brokers must be ids that are in peers (1, 2, 3); 4 is not",
        ),
        (
            &[("node_id", "1"), ("peers", "1=127.0.0.1")],
            "expected ID=HOST:PORT (such as 1=127.0.0.1:7001), got `1=127.0.0.1`",
        ),
    ];
    for (settings, expected) in cases {
        let refusal = cluster_refusal(settings);
        assert!(refusal.contains(expected), "{settings:?}: {refusal}");
    }
    let eight: Vec<String> = (1..=8).map(|i| format!("{i}=127.0.0.1:{}", 7000 + i)).collect();
    assert!(cluster_refusal(&[("node_id", "1"), ("peers", &eight.join(","))]).contains("peers must be 1 to 7 nodes"));
}
