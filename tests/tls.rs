//! TLS on the gRPC port against a real server on 127.0.0.1: the client library with the
//! developer CA works; a wrong CA, an expired certificate, a plaintext client on the TLS port
//! and a TLS client on a plaintext port each fail at once; SIGHUP reloads the certificate
//! for new connections while an open one goes on.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use mini_pubsub::certs;
use mini_pubsub::client::{Client, ClientTls, ConnectOptions, OutgoingMessage, PublisherSettings};
use mini_pubsub::env::{Net, TokioClock, TokioNet};
use mini_pubsub::server::{self, ServerConfig};
use mini_pubsub::storage::MemoryStorage;
use tokio::sync::oneshot;

/// How long a test waits for what should happen at once.
const PROMPT: Duration = Duration::from_secs(10);

struct Broker {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
}

impl Drop for Broker {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// A broker on TLS with the developer certificates in `tls`, or on plaintext.
async fn start(tls: Option<&Path>) -> Broker {
    let mut config = ServerConfig::default();
    if let Some(dir) = tls {
        config.tls_cert = Some(dir.join(certs::SERVER_CERT));
        config.tls_key = Some(dir.join(certs::SERVER_KEY));
    }
    start_with(config).await
}

fn dev_certs() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    certs::write_dev(dir.path()).unwrap();
    dir
}

fn trusting(dir: &Path) -> ConnectOptions {
    ConnectOptions::default().tls(ClientTls::from_files(&dir.join(certs::CA_CERT), None).unwrap())
}

async fn publish_one(client: &Client, value: &str) -> Result<u64, String> {
    let publisher = client.publisher("secure", PublisherSettings::default()).map_err(|e| e.to_string())?;
    let handle = publisher.publish(OutgoingMessage::new(value.to_string())).await.map_err(|e| e.to_string())?;
    let stored = tokio::time::timeout(PROMPT, handle).await.map_err(|_| "no answer".to_string())?;
    let stored = stored.map_err(|e| e.to_string())?;
    publisher.shutdown().await.map_err(|e| e.to_string())?;
    Ok(stored.offset)
}

#[tokio::test]
async fn a_client_that_trusts_the_ca_publishes_over_tls() {
    let dir = dev_certs();
    let broker = start(Some(dir.path())).await;
    for host in ["localhost", "127.0.0.1"] {
        let url = format!("https://{host}:{}", broker.addr.port());
        let client = Client::connect_with(url, &trusting(dir.path())).await.unwrap();
        publish_one(&client, host).await.unwrap();
    }
}

#[tokio::test]
async fn a_wrong_ca_an_expired_certificate_and_a_plaintext_client_are_refused_at_once() {
    let dir = dev_certs();
    let broker = start(Some(dir.path())).await;
    let url = format!("https://localhost:{}", broker.addr.port());

    let other = dev_certs();
    let wrong_ca = trusting(other.path());
    let wrong = tokio::time::timeout(PROMPT, Client::connect_with(url.clone(), &wrong_ca));
    let error = wrong.await.expect("refused at once").unwrap_err().to_string();
    // Another CA of the same name: its signature does not verify.
    assert!(error.contains("invalid peer certificate"), "{error}");

    let plaintext = format!("http://localhost:{}", broker.addr.port());
    let client = Client::connect_lazy(plaintext).unwrap();
    let refused = tokio::time::timeout(PROMPT, client.list_topics()).await.expect("refused at once");
    assert!(refused.is_err(), "a plaintext client on the TLS port must fail");

    // The same server, but its certificate expired yesterday.
    let expired = tempfile::tempdir().unwrap();
    let now = SystemTime::UNIX_EPOCH + Duration::from_millis(mini_pubsub::env::Clock::wall_ms(&TokioClock::new()));
    let day = Duration::from_secs(24 * 3600);
    certs::write_dev_valid(expired.path(), now - day * 30, now - day).unwrap();
    let old = start(Some(expired.path())).await;
    let url = format!("https://localhost:{}", old.addr.port());
    let ca = trusting(expired.path());
    let refused = tokio::time::timeout(PROMPT, Client::connect_with(url, &ca));
    let error = refused.await.expect("refused at once").unwrap_err().to_string();
    assert!(error.contains("invalid peer certificate: certificate expired"), "{error}");
}

#[tokio::test]
async fn a_tls_client_on_a_plaintext_port_is_refused_at_once() {
    let dir = dev_certs();
    let broker = start(None).await;
    let url = format!("https://localhost:{}", broker.addr.port());
    let ca = trusting(dir.path());
    let refused = tokio::time::timeout(PROMPT, Client::connect_with(url, &ca));
    assert!(refused.await.expect("refused at once").is_err());
}

#[tokio::test]
async fn a_certificate_or_key_that_cannot_be_read_stops_the_start_naming_the_setting() {
    let dir = dev_certs();
    let mut config = ServerConfig {
        tls_cert: Some(dir.path().join(certs::SERVER_CERT)),
        tls_key: Some(dir.path().join("missing.pem")),
        ..Default::default()
    };
    let (_, incoming) = TokioNet.bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let clock = Arc::new(TokioClock::new());
    let storage = Box::new(MemoryStorage);
    let ran = server::run_with(incoming, async {}, config.clone(), storage, clock.clone(), server::Hooks::default());
    let error = ran.await.unwrap_err().to_string();
    assert!(error.starts_with("cannot serve TLS: tls_key: cannot read"), "{error}");

    // A key that is not the certificate's.
    let other = dev_certs();
    config.tls_key = Some(other.path().join(certs::SERVER_KEY));
    let (_, incoming) = TokioNet.bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let ran =
        server::run_with(incoming, async {}, config.clone(), Box::new(MemoryStorage), clock, server::Hooks::default());
    let error = ran.await.unwrap_err().to_string();
    assert!(error.contains("does not fit"), "{error}");

    config.tls_key = None;
    assert_eq!(
        config.validate().unwrap_err().to_string(),
        "invalid configuration: tls_key must be set with tls_cert (the certificate's PEM private key)"
    );
}

#[tokio::test]
async fn sighup_reloads_the_certificate_for_new_connections_and_a_bad_file_keeps_the_old_one() {
    let dir = tempfile::tempdir().unwrap();
    let first = dir.path().join("first");
    certs::write_dev(&first).unwrap();
    let live = dir.path().join("live");
    std::fs::create_dir(&live).unwrap();
    for name in [certs::SERVER_CERT, certs::SERVER_KEY] {
        std::fs::copy(first.join(name), live.join(name)).unwrap();
    }
    let broker = start(Some(&live)).await;
    let url = format!("https://localhost:{}", broker.addr.port());
    let open = Client::connect_with(url.clone(), &trusting(&first)).await.unwrap();
    publish_one(&open, "before").await.unwrap();

    // A new pair from another CA replaces the files; SIGHUP.
    let second = dir.path().join("second");
    certs::write_dev(&second).unwrap();
    for name in [certs::SERVER_CERT, certs::SERVER_KEY] {
        std::fs::copy(second.join(name), live.join(name)).unwrap();
    }
    hang_up();
    let fresh = wait_until_connects(&url, &second).await;
    publish_one(&fresh, "new connection").await.unwrap();
    // The connection opened before goes on with the old certificate.
    publish_one(&open, "old connection").await.unwrap();

    // A broken file: the reload fails and the second certificate stays.
    std::fs::write(live.join(certs::SERVER_CERT), "not a certificate").unwrap();
    hang_up();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let again = Client::connect_with(url, &trusting(&second)).await.unwrap();
    publish_one(&again, "after a bad reload").await.unwrap();
}

/// Sends SIGHUP to this process (the TLS server started above watches for it).
fn hang_up() {
    let pid = std::process::id().to_string();
    let status = std::process::Command::new("kill").args(["-HUP", &pid]).status().unwrap();
    assert!(status.success());
}

/// Connects trusting the CA in `ca_dir` once the server presents its certificate (the
/// reload happens on the signal task, soon after the signal).
async fn wait_until_connects(url: &str, ca_dir: &Path) -> Client {
    // Bounded: 50 tries, 100 ms apart.
    for _ in 0..50 {
        if let Ok(client) = Client::connect_with(url.to_string(), &trusting(ca_dir)).await {
            return client;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the server never presented the reloaded certificate");
}

/// The SHA-256 of `token` in hex, as `tokens` takes it (`printf %s TOKEN | sha256sum`).
fn sha256_hex(token: &str) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, token.as_bytes());
    digest.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

async fn start_with(config: ServerConfig) -> Broker {
    let (addr, incoming) = TokioNet.bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let signal = async move {
        let _ = stopped.await;
    };
    let clock = Arc::new(TokioClock::new());
    let run = server::run_with(incoming, signal, config, Box::new(MemoryStorage), clock, server::Hooks::default());
    tokio::spawn(run);
    Broker { addr, stop: Some(stop) }
}

#[tokio::test]
async fn with_a_client_ca_a_client_certificate_lets_in_and_no_credential_is_unauthenticated_and_stores_nothing() {
    let dir = dev_certs();
    let config = ServerConfig {
        tls_cert: Some(dir.path().join(certs::SERVER_CERT)),
        tls_key: Some(dir.path().join(certs::SERVER_KEY)),
        tls_client_ca: Some(dir.path().join(certs::CA_CERT)),
        // With a client CA, permissions deny by default: the certificate's principal gets these.
        permissions: format!("publish:*:{name},admin:*:{name}", name = certs::CLIENT_NAME),
        ..Default::default()
    };
    let broker = start_with(config).await;
    let url = format!("https://localhost:{}", broker.addr.port());
    let identity = Some((dir.path().join(certs::CLIENT_CERT), dir.path().join(certs::CLIENT_KEY)));
    let identity = identity.as_ref().map(|(c, k)| (c.as_path(), k.as_path()));
    let tls = ClientTls::from_files(&dir.path().join(certs::CA_CERT), identity).unwrap();
    let with_certificate = Client::connect_with(url.clone(), &ConnectOptions::default().tls(tls)).await.unwrap();
    publish_one(&with_certificate, "let in").await.unwrap();

    let without = Client::connect_with(url, &trusting(dir.path())).await.unwrap();
    let request = mini_pubsub::wire::pb::PublishRequest {
        topic: "refused".into(),
        value: b"x".to_vec().into(),
        ..Default::default()
    };
    let refused = without.pubsub_client().publish(request).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unauthenticated);
    assert_eq!(
        refused.message(),
        "no credential; this broker expects a TLS client certificate signed by the broker's client CA"
    );
    let topics = with_certificate.list_topics().await.unwrap();
    assert_eq!(
        topics.iter().map(|t| t.name.as_str()).collect::<Vec<_>>(),
        ["secure"],
        "the refused publish stored nothing"
    );
    // Health answers without a credential.
    let mut health = tonic_health::pb::health_client::HealthClient::new(without.target().1);
    let status = health.check(tonic_health::pb::HealthCheckRequest { service: String::new() }).await.unwrap();
    assert_eq!(status.into_inner().status, tonic_health::pb::health_check_response::ServingStatus::Serving as i32);
}

#[tokio::test]
async fn a_bearer_token_lets_in_as_its_principal_and_a_wrong_one_is_unauthenticated_without_echoing_it() {
    let config = ServerConfig {
        tokens: format!("ops={}", sha256_hex("rotate-me-1")),
        permissions: "publish:*:ops".into(),
        ..Default::default()
    };
    let broker = start_with(config).await;
    let url = format!("http://{}", broker.addr);
    let with = |token: &str| ConnectOptions::default().token(token).unwrap();
    let client = Client::connect_with(url.clone(), &with("rotate-me-1")).await.unwrap();
    publish_one(&client, "let in").await.unwrap();
    let wrong = Client::connect_with(url.clone(), &with("not-the-token")).await.unwrap();
    let refused = wrong.admin_client().list_topics(mini_pubsub::wire::pb::ListTopicsRequest::default()).await;
    let refused = refused.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unauthenticated);
    assert!(!refused.message().contains("not-the-token"), "{}", refused.message());
    assert_eq!(
        refused.message(),
        "authorization: the bearer token is not one this broker knows; it expects an `authorization: bearer TOKEN` header"
    );
    let published = publish_one(&wrong, "refused").await.unwrap_err();
    assert!(published.contains("UNAUTHENTICATED"), "{published}");
    assert!(!format!("{:?}", with("not-the-token")).contains("not-the-token"), "Debug hides the token");
    let client = Client::connect(url).await.unwrap();
    let missing = client.admin_client().list_topics(mini_pubsub::wire::pb::ListTopicsRequest::default()).await;
    assert_eq!(missing.unwrap_err().code(), tonic::Code::Unauthenticated);
}

#[tokio::test]
async fn with_open_services_empty_health_and_reflection_need_a_credential_too() {
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::{server_reflection_request::MessageRequest, ServerReflectionRequest};
    let config = ServerConfig {
        tokens: format!("ops={}", sha256_hex("ops-token")),
        open_services: String::new(),
        ..Default::default()
    };
    let broker = start_with(config).await;
    let url = format!("http://{}", broker.addr);
    let anonymous = Client::connect(url.clone()).await.unwrap();
    let ops = Client::connect_with(url, &ConnectOptions::default().token("ops-token").unwrap()).await.unwrap();
    let check = |client: &Client| {
        let mut health = tonic_health::pb::health_client::HealthClient::new(client.target().1);
        async move { health.check(tonic_health::pb::HealthCheckRequest { service: String::new() }).await }
    };
    let refused = check(&anonymous).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unauthenticated, "{refused:?}");
    let answered = check(&ops).await.unwrap().into_inner();
    assert_eq!(answered.status, tonic_health::pb::health_check_response::ServingStatus::Serving as i32);

    let list = || ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut reflection = ServerReflectionClient::new(anonymous.target().1);
    let refused = reflection.server_reflection_info(tokio_stream::iter([list()])).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unauthenticated);
    let mut reflection = ServerReflectionClient::new(ops.target().1);
    let mut answers = reflection.server_reflection_info(tokio_stream::iter([list()])).await.unwrap().into_inner();
    let first = answers.message().await.unwrap().expect("a list of services");
    assert!(format!("{first:?}").contains("pubsub.PubSub"), "{first:?}");

    // The default lets both answer without a credential (the mutual TLS test checks health).
    assert_eq!(ServerConfig::default().open_services, "health,reflection");
    let bad = ServerConfig { open_services: "health,metrics".into(), ..Default::default() };
    let error = bad.validate().unwrap_err().to_string();
    assert!(error.contains("open_services must be health, reflection"), "{error}");
}
