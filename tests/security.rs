//! Credentials against the real binary on 127.0.0.1: tokens rotated by editing the
//! configuration file and sending SIGHUP; the CLI's `--token` and `MINI_PUBSUB_TOKEN`;
//! refusals counted per principal and reason on `/metrics` and logged with the peer's
//! address, once per burst, never with the token.

mod common;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{http_get, sample, KillOnDrop, PROMPT};
use mini_pubsub::client::{Client, ConnectOptions};
use mini_pubsub::wire::pb;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The SHA-256 of `token` in hex, as `tokens` takes it.
fn sha256_hex(token: &str) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, token.as_bytes());
    digest.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

/// A `[server]` section granting `ops` everything and `shop` publishing to `orders.*`, with
/// each principal's token.
fn config_file(path: &Path, ops_token: &str, shop_token: &str) {
    let text = format!(
        "[server]\ntokens = \"ops={}, shop={}\"\npermissions = \"admin:*:ops, publish:*:ops, subscribe:*:ops, publish:orders.*:shop\"\n",
        sha256_hex(ops_token),
        sha256_hex(shop_token)
    );
    std::fs::write(path, text).unwrap();
}

/// The binary serving in-memory on a configuration file `config_file` writes (with those
/// two tokens), and the directory holding the file.
fn serve_tokens(ops_token: &str, shop_token: &str, metrics: bool) -> (tempfile::TempDir, std::path::PathBuf, Served) {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("mini-pubsub.toml");
    config_file(&config, ops_token, shop_token);
    let served = serve(&config, metrics);
    (dir, config, served)
}

/// The binary serving in-memory on `config`, its log lines gathered as they come.
struct Served {
    child: KillOnDrop,
    log: Arc<Mutex<Vec<String>>>,
    grpc: SocketAddr,
    metrics: Option<SocketAddr>,
}

fn serve(config: &Path, metrics: bool) -> Served {
    serve_with(config, metrics, &[])
}

/// [`serve`] with more flags.
fn serve_with(config: &Path, metrics: bool, flags: &[&str]) -> Served {
    let mut command = Command::new(env!("CARGO_BIN_EXE_mini-pubsub"));
    command.args(["serve", "--listen", "127.0.0.1:0", "--storage", "memory", "--config"]).arg(config);
    if metrics {
        command.args(["--metrics-listen", "127.0.0.1:0"]);
    }
    command.args(flags);
    let mut child = command.env("RUST_LOG", "info").stderr(Stdio::piped()).spawn().expect("the binary starts");
    let stderr = child.stderr.take().unwrap();
    let log = Arc::new(Mutex::new(Vec::new()));
    let gathered = log.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            gathered.lock().unwrap().push(line);
        }
    });
    let mut served = Served { child: KillOnDrop(child), log, grpc: "0.0.0.0:0".parse().unwrap(), metrics: None };
    // Bounded: 100 looks, 100 ms apart.
    for _ in 0..100 {
        let after = |marker: &str| served.find(marker).and_then(|line| word_after(&line, marker));
        if let Some(grpc) = after("listening on ") {
            let metrics_addr = after("metrics on http://")
                .or_else(|| after("metrics on https://"))
                .and_then(|a| a.strip_suffix("/metrics").map(str::to_string));
            if !metrics || metrics_addr.is_some() {
                served.grpc = grpc.parse().unwrap();
                served.metrics = metrics_addr.map(|a| a.parse().unwrap());
                return served;
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("the server did not start: {:#?}", served.log.lock().unwrap());
}

fn word_after(line: &str, marker: &str) -> Option<String> {
    line.split(marker).nth(1).and_then(|rest| rest.split_whitespace().next()).map(str::to_string)
}

impl Served {
    fn find(&self, text: &str) -> Option<String> {
        self.log.lock().unwrap().iter().find(|line| line.contains(text)).cloned()
    }

    fn lines_with(&self, text: &str) -> Vec<String> {
        self.log.lock().unwrap().iter().filter(|line| line.contains(text)).cloned().collect()
    }

    fn hang_up(&self) {
        let pid = self.child.0.id().to_string();
        assert!(Command::new("kill").args(["-HUP", &pid]).status().unwrap().success());
    }

    async fn client(&self, token: &str) -> Client {
        let options = ConnectOptions::default().token(token).unwrap();
        Client::connect_with(format!("http://{}", self.grpc), &options).await.unwrap()
    }
}

async fn list_code(client: &Client) -> tonic::Code {
    match client.admin_client().list_topics(pb::ListTopicsRequest::default()).await {
        Ok(_) => tonic::Code::Ok,
        Err(status) => status.code(),
    }
}

#[tokio::test]
async fn tokens_rotate_when_the_config_file_changes_and_sighup_is_sent_and_a_bad_file_keeps_them() {
    let (_dir, config, served) = serve_tokens("ops-token-1", "shop-token-1", false);
    let old = served.client("ops-token-1").await;
    assert_eq!(list_code(&old).await, tonic::Code::Ok);
    // A stream opened with the old token.
    old.create_topic("rotation", &mini_pubsub::client::TopicSettings::default()).await.unwrap();
    let open = |client: Client| async move {
        let first = pb::SubscribeRequest { topic: "rotation".into(), ..Default::default() };
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tx.send(first).await.unwrap();
        let stream = client.pubsub_client().subscribe(tokio_stream::wrappers::ReceiverStream::new(rx)).await;
        (tx, stream.unwrap().into_inner())
    };
    let (_old_tx, mut old_stream) = open(old.clone()).await;

    config_file(&config, "ops-token-2", "shop-token-1");
    served.hang_up();
    let new = served.client("ops-token-2").await;
    // Bounded: the reload runs on the signal task, within moments of the signal.
    for _ in 0..100 {
        if list_code(&new).await == tonic::Code::Ok {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(list_code(&new).await, tonic::Code::Ok, "the new token is let in");
    assert_eq!(list_code(&old).await, tonic::Code::Unauthenticated, "the old token is refused");
    assert!(served.find("SIGHUP: tokens and permissions reloaded").is_some());
    // The stream opened with the removed token is ended, not left open.
    let ended = tokio::time::timeout(PROMPT, async {
        loop {
            match old_stream.message().await {
                Ok(Some(_)) => {}
                Ok(None) => return tonic::Code::Ok,
                Err(status) => return status.code(),
            }
        }
    });
    assert_eq!(ended.await.expect("the old token's stream ends"), tonic::Code::Unauthenticated);

    // A file that does not parse keeps the tokens in force, and its log line does not show
    // the value (here a token pasted in place of its hash).
    std::fs::write(&config, "[server]\ntokens = \"ops=s3cret-pasted-raw\"\n").unwrap();
    served.hang_up();
    for _ in 0..100 {
        if served.find("tokens and permissions not reloaded").is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let kept = served.find("tokens and permissions not reloaded").expect("the failed reload is logged");
    assert!(kept.contains("tokens must be PRINCIPAL=SHA256HEX"), "{kept}");
    assert!(!kept.contains("s3cret-pasted-raw"), "the refused token reached the log: {kept}");
    assert_eq!(list_code(&new).await, tonic::Code::Ok, "a bad file keeps the tokens in force");
}

#[tokio::test]
async fn the_cli_sends_its_token_from_the_flag_or_the_environment() {
    let (_dir, _config, served) = serve_tokens("ops-token", "shop-token", false);
    let server = format!("http://{}", served.grpc);
    let cli = |args: &[&str], token: Option<&str>| {
        let mut command = Command::new(env!("CARGO_BIN_EXE_mini-pubsub"));
        command.args(["--server", &server]).args(args).env_remove("MINI_PUBSUB_TOKEN");
        if let Some(token) = token {
            command.env("MINI_PUBSUB_TOKEN", token);
        }
        command.output().unwrap()
    };
    let published = cli(&["publish", "orders.eu", "hello"], Some("shop-token"));
    assert!(published.status.success(), "{}", String::from_utf8_lossy(&published.stderr));
    let flagged = cli(&["--token", "ops-token", "topic", "list"], None);
    assert!(flagged.status.success(), "{}", String::from_utf8_lossy(&flagged.stderr));
    assert!(String::from_utf8_lossy(&flagged.stdout).contains("orders.eu"));

    let denied = cli(&["publish", "payments", "hello"], Some("shop-token"));
    let stderr = String::from_utf8_lossy(&denied.stderr);
    assert!(!denied.status.success());
    assert!(stderr.contains("PERMISSION_DENIED") && stderr.contains("topic `payments`"), "{stderr}");
    let missing = cli(&["topic", "list"], None);
    assert!(String::from_utf8_lossy(&missing.stderr).contains("UNAUTHENTICATED"));
    let wrong = cli(&["topic", "list"], Some("guessed-token"));
    let stderr = String::from_utf8_lossy(&wrong.stderr);
    assert!(stderr.contains("UNAUTHENTICATED") && !stderr.contains("guessed-token"), "{stderr}");
    let bad = cli(&["topic", "list"], Some("two words"));
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert!(stderr.contains("token") && !stderr.contains("two words"), "{stderr}");
}

/// What the port at `addr` sends back to a plain HTTP GET of `/metrics`, whatever it is
/// (a TLS port sends an alert or closes; a failed read ends what was read).
async fn plain_get(addr: SocketAddr) -> String {
    let exchange = async {
        let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
        let request = format!("GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        conn.write_all(request.as_bytes()).await.unwrap();
        let mut response = Vec::new();
        let _ = conn.read_to_end(&mut response).await;
        String::from_utf8_lossy(&response).to_string()
    };
    tokio::time::timeout(PROMPT, exchange).await.expect("the port answers or closes")
}

#[tokio::test]
async fn refusals_are_counted_per_principal_and_reason_and_a_burst_is_one_log_line_with_the_address() {
    let (_dir, _config, served) = serve_tokens("ops-token", "shop-token", true);
    let guesser = served.client("guessed-token-123").await;
    for _ in 0..30 {
        assert_eq!(list_code(&guesser).await, tonic::Code::Unauthenticated);
    }
    let shop = served.client("shop-token").await;
    let request = pb::PublishRequest { topic: "payments".into(), value: b"x".to_vec().into(), ..Default::default() };
    let denied = shop.pubsub_client().publish(request).await.unwrap_err();
    assert_eq!(denied.code(), tonic::Code::PermissionDenied);

    let metrics = served.metrics.unwrap();
    let unknown = r#"mini_pubsub_refused_requests_total{principal="unauthenticated",reason="unknown_token"}"#;
    let no_grant = r#"mini_pubsub_refused_requests_total{principal="shop",reason="no_publish_grant"}"#;
    let mut text = String::new();
    // Bounded: the counters are exported once a second.
    for _ in 0..50 {
        text = http_get(metrics, "/metrics").await.1;
        if sample(&text, unknown).is_some() && sample(&text, no_grant).is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(sample(&text, unknown), Some(30.0), "{text}");
    assert_eq!(sample(&text, no_grant), Some(1.0), "{text}");

    // One line for the burst of 30 and for the denial (both from 127.0.0.1, so the denial
    // falls in the burst's interval), each naming the peer, none the token.
    let refused = served.lines_with("refused:");
    assert_eq!(refused.len(), 1, "{refused:#?}");
    assert!(refused[0].contains("peer=127.0.0.1:"), "{}", refused[0]);
    assert!(refused[0].contains("reason=\"unknown_token\"") || refused[0].contains("reason=unknown_token"));
    let log = served.log.lock().unwrap().join("\n");
    assert!(!log.contains("guessed-token-123") && !log.contains("shop-token"), "a token in the log:\n{log}");
}

#[tokio::test]
async fn with_metrics_tls_the_metrics_are_served_over_https_with_the_grpc_ports_certificate() {
    use rustls_pki_types::pem::PemObject;
    let dir = tempfile::tempdir().unwrap();
    mini_pubsub::certs::write_dev(dir.path()).unwrap();
    let config = dir.path().join("mini-pubsub.toml");
    std::fs::write(&config, "").unwrap();
    let file = |name: &str| dir.path().join(name).to_str().unwrap().to_string();
    let (cert, key) = (file(mini_pubsub::certs::SERVER_CERT), file(mini_pubsub::certs::SERVER_KEY));
    let served = serve_with(&config, true, &["--tls-cert", &cert, "--tls-key", &key, "--metrics-tls"]);
    assert!(served.find("metrics on https://").is_some());
    let metrics = served.metrics.unwrap();

    let mut roots = rustls::RootCertStore::empty();
    let ca = std::fs::read(dir.path().join(mini_pubsub::certs::CA_CERT)).unwrap();
    roots.add(rustls_pki_types::CertificateDer::from_pem_slice(&ca).unwrap()).unwrap();
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let client = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(client));
    let exchange = async {
        let tcp = tokio::net::TcpStream::connect(metrics).await.unwrap();
        let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
        let mut tls = connector.connect(name, tcp).await.unwrap();
        let request = format!("GET /metrics HTTP/1.1\r\nHost: {metrics}\r\nConnection: close\r\n\r\n");
        tls.write_all(request.as_bytes()).await.unwrap();
        let mut response = Vec::new();
        // The server may close without a TLS close_notify; what was read before counts.
        let _ = tls.read_to_end(&mut response).await;
        String::from_utf8_lossy(&response).to_string()
    };
    let response = tokio::time::timeout(PROMPT, exchange).await.expect("an HTTPS answer");
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(response.contains("# TYPE mini_pubsub_open_streams gauge"), "{response}");

    // Plain HTTP on the same port gets no metrics.
    let plain = plain_get(metrics).await;
    assert!(!plain.contains("mini_pubsub_"), "{plain}");
}
