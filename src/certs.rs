//! Developer certificates (`mini-pubsub certs dev --out DIR`): a local CA, a server
//! certificate for `localhost`, `127.0.0.1` and `::1` that the CA signed, a client
//! certificate it signed too, and a cluster CA of its own with a node's certificate (for
//! mutual TLS between the nodes of a local cluster), each with its private key, as PEM files. They let a newcomer
//! try TLS (and mutual TLS) on one machine in two commands; they are not for production,
//! where certificates come from the organisation's own CA.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
};

/// The CA's certificate: what clients trust (`grpcurl -cacert`, `--ca`).
pub const CA_CERT: &str = "ca.pem";
/// The CA's private key: signs more certificates; keep it to yourself.
pub const CA_KEY: &str = "ca-key.pem";
/// The server's certificate (`tls_cert`).
pub const SERVER_CERT: &str = "server.pem";
/// The server's private key (`tls_key`).
pub const SERVER_KEY: &str = "server-key.pem";
/// A client certificate, for mutual TLS (`--cert`).
pub const CLIENT_CERT: &str = "client.pem";
/// Its private key (`--key`).
pub const CLIENT_KEY: &str = "client-key.pem";
/// The client certificate's subject common name, and its DNS name.
pub const CLIENT_NAME: &str = "dev-client";
/// The cluster's CA (`peer_tls_ca`): signs the nodes' certificates only. It is not the CA of
/// the client certificates, so that no client certificate can talk Raft to a node.
pub const CLUSTER_CA_CERT: &str = "cluster-ca.pem";
/// The cluster CA's private key.
pub const CLUSTER_CA_KEY: &str = "cluster-ca-key.pem";
/// A cluster node's certificate (`peer_tls_cert`), for `localhost`, `127.0.0.1` and `::1`,
/// signed by the cluster's CA, good at both ends of a Raft connection: every node of a
/// local cluster can use it.
pub const PEER_CERT: &str = "peer.pem";
/// Its private key (`peer_tls_key`).
pub const PEER_KEY: &str = "peer-key.pem";
/// The peer certificate's subject common name.
pub const PEER_NAME: &str = "mini-pubsub-peer";

/// How long developer certificates are valid: a year from a day ago (a clock a little
/// behind still accepts them).
const VALID_DAYS: u64 = 365;
const DAY: Duration = Duration::from_secs(24 * 3600);

/// Writes the developer certificates into `dir` (created if missing), valid for a year;
/// refuses to overwrite any of them. Returns the files written.
pub fn write_dev(dir: &Path) -> Result<Vec<PathBuf>, String> {
    let wall_ms = crate::env::Clock::wall_ms(&crate::env::TokioClock::new());
    let now = SystemTime::UNIX_EPOCH + Duration::from_millis(wall_ms);
    write_dev_valid(dir, now - DAY, now + DAY * VALID_DAYS as u32)
}

/// [`write_dev`] with a validity of its own (tests make expired ones).
pub fn write_dev_valid(dir: &Path, not_before: SystemTime, not_after: SystemTime) -> Result<Vec<PathBuf>, String> {
    let names = [
        CA_CERT,
        CA_KEY,
        SERVER_CERT,
        SERVER_KEY,
        CLIENT_CERT,
        CLIENT_KEY,
        CLUSTER_CA_CERT,
        CLUSTER_CA_KEY,
        PEER_CERT,
        PEER_KEY,
    ];
    if let Some(existing) = names.iter().map(|name| dir.join(name)).find(|path| path.exists()) {
        return Err(format!("{} exists; remove it or choose another --out", existing.display()));
    }
    let failed = |what: &'static str| move |e: rcgen::Error| format!("cannot make the {what}: {e}");
    let validity = |params: &mut CertificateParams| {
        params.not_before = not_before.into();
        params.not_after = not_after.into();
    };

    let ca_key = KeyPair::generate().map_err(failed("CA key"))?;
    let mut ca = CertificateParams::new(Vec::<String>::new()).map_err(failed("CA"))?;
    ca.distinguished_name.push(DnType::CommonName, "mini-pubsub development CA");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    validity(&mut ca);
    let ca_cert = ca.self_signed(&ca_key).map_err(failed("CA certificate"))?;
    let ca_pem = ca_cert.pem();
    let ca_key_pem = ca_key.serialize_pem();
    let issuer = Issuer::new(ca, ca_key);

    let names = vec!["localhost".to_string(), "127.0.0.1".to_string(), "::1".to_string()];
    let server_key = KeyPair::generate().map_err(failed("server key"))?;
    let mut server = CertificateParams::new(names.clone()).map_err(failed("server certificate"))?;
    server.distinguished_name.push(DnType::CommonName, "localhost");
    server.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    validity(&mut server);
    let server_cert = server.signed_by(&server_key, &issuer).map_err(failed("server certificate"))?;

    let client_key = KeyPair::generate().map_err(failed("client key"))?;
    let mut client = CertificateParams::new(vec![CLIENT_NAME.to_string()]).map_err(failed("client certificate"))?;
    client.distinguished_name.push(DnType::CommonName, CLIENT_NAME);
    client.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    validity(&mut client);
    let client_cert = client.signed_by(&client_key, &issuer).map_err(failed("client certificate"))?;

    let cluster_ca_key = KeyPair::generate().map_err(failed("cluster CA key"))?;
    let mut cluster_ca = CertificateParams::new(Vec::<String>::new()).map_err(failed("cluster CA"))?;
    cluster_ca.distinguished_name.push(DnType::CommonName, "mini-pubsub development cluster CA");
    cluster_ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    cluster_ca.key_usages =
        vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    validity(&mut cluster_ca);
    let cluster_ca_cert = cluster_ca.self_signed(&cluster_ca_key).map_err(failed("cluster CA certificate"))?;
    let (cluster_ca_pem, cluster_ca_key_pem) = (cluster_ca_cert.pem(), cluster_ca_key.serialize_pem());
    let cluster_issuer = Issuer::new(cluster_ca, cluster_ca_key);

    let peer_key = KeyPair::generate().map_err(failed("peer key"))?;
    let mut peer = CertificateParams::new(names).map_err(failed("peer certificate"))?;
    peer.distinguished_name.push(DnType::CommonName, PEER_NAME);
    peer.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
    validity(&mut peer);
    let peer_cert = peer.signed_by(&peer_key, &cluster_issuer).map_err(failed("peer certificate"))?;

    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let files = [
        (CA_CERT, ca_pem, false),
        (CA_KEY, ca_key_pem, true),
        (SERVER_CERT, server_cert.pem(), false),
        (SERVER_KEY, server_key.serialize_pem(), true),
        (CLIENT_CERT, client_cert.pem(), false),
        (CLIENT_KEY, client_key.serialize_pem(), true),
        (CLUSTER_CA_CERT, cluster_ca_pem, false),
        (CLUSTER_CA_KEY, cluster_ca_key_pem, true),
        (PEER_CERT, peer_cert.pem(), false),
        (PEER_KEY, peer_key.serialize_pem(), true),
    ];
    let mut written = Vec::new();
    for (name, pem, secret) in files {
        let path = dir.join(name);
        write(&path, pem.as_bytes(), secret).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        written.push(path);
    }
    Ok(written)
}

/// Writes a new file; a private key readable by its owner only.
fn write(path: &Path, bytes: &[u8], secret: bool) -> std::io::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    if secret {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    #[cfg(not(unix))]
    let _ = secret;
    let mut file = options.open(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}
