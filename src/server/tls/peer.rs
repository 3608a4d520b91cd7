//! Mutual TLS between a cluster's nodes (`peer_tls_cert`, `peer_tls_key`, `peer_tls_ca`).
//!
//! Both ends of every Raft connection present a certificate signed by the cluster's CA and
//! check the other's against it. The cluster's CA must be its own: a node refuses to start
//! when the gRPC port's client CA holds it too, since any client certificate could then
//! talk Raft. the peer port refuses, in the handshake, a client without
//! one (or with one from another CA), and a node calling a peer checks that the peer's
//! certificate names the host it dialled (a DNS name or an IP address in its SANs). The
//! port's certificate is read again on SIGHUP, for new connections; the one a node presents
//! when it calls its peers is read at start.

use std::io;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::TlsAcceptor;
use tokio_stream::{Stream, StreamExt};
use tonic::transport::server::Connected;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;

use super::{read_pem, roots_of, Certificates, Conn, Connections, TlsIncoming};
use crate::server::auth::{IdentityField, Peer};
use crate::server::conn::{Admitted, Admitting};

/// The most connections a peer port holds at once (a cluster has at most 7 nodes, each
/// with a channel or two to every other); more are closed as they are accepted.
pub const PEER_CONNECTIONS_MAX: usize = 64;
/// How long a peer's TLS handshake may take: short, so that clients that stall their
/// handshakes cannot hold the port's connections for long.
pub const PEER_HANDSHAKE: Duration = Duration::from_secs(3);

/// A node's TLS for Raft traffic: the acceptor of its peer port and the client
/// configuration of its calls to peers.
pub struct PeerTls {
    certificates: Arc<Certificates>,
    acceptor: TlsAcceptor,
    client: ClientTlsConfig,
}

impl std::fmt::Debug for PeerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerTls").field("files", &self.certificates.files()).finish_non_exhaustive()
    }
}

impl PeerTls {
    /// Reads the node's certificate chain and key and the cluster's CA (PEM); the error
    /// names the setting and the file at fault.
    /// Refused when `client_ca` (the gRPC port's `tls_client_ca`) holds a certificate of
    /// `ca`: every client certificate would then be let into the Raft port.
    pub fn load(cert: &Path, key: &Path, ca: &Path, client_ca: Option<&Path>) -> Result<Self, String> {
        let certificates = Arc::new(Certificates::load_as(cert, key, ("peer_tls_cert", "peer_tls_key"))?);
        let ca_pem = read_pem(ca, "peer_tls_ca")?;
        if let Some(client_ca) = client_ca {
            let clients = read_pem(client_ca, "tls_client_ca")?;
            let clients: Vec<_> = CertificateDer::pem_slice_iter(&clients).filter_map(Result::ok).collect();
            if CertificateDer::pem_slice_iter(&ca_pem).filter_map(Result::ok).any(|c| clients.contains(&c)) {
                return Err(format!(
                    "peer_tls_ca: {} holds a CA that tls_client_ca ({}) holds too; the cluster needs a CA of its own, \
                     or every client certificate could talk Raft to this node (mini-pubsub certs dev writes cluster-ca.pem)",
                    ca.display(),
                    client_ca.display()
                ));
            }
        }
        let roots = Arc::new(roots_of(&ca_pem, ca, "peer_tls_ca")?);
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(roots, provider.clone())
            .build()
            .map_err(|e| format!("peer_tls_ca: {}: {e}", ca.display()))?;
        let mut server = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(|e| format!("TLS: {e}"))?
            .with_client_cert_verifier(verifier)
            .with_cert_resolver(certificates.clone());
        server.alpn_protocols = vec![b"h2".to_vec()];
        let client = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&ca_pem))
            .identity(Identity::from_pem(read_pem(cert, "peer_tls_cert")?, read_pem(key, "peer_tls_key")?));
        Ok(Self { certificates, acceptor: TlsAcceptor::from(Arc::new(server)), client })
    }

    /// The peer port's connections: at most [`PEER_CONNECTIONS_MAX`] at once, each let
    /// through once its TLS handshake proved a certificate of the cluster's CA.
    pub fn secure<S, C, E>(&self, incoming: S) -> Connections<Admitted<C>>
    where
        S: Stream<Item = Result<C, E>> + Send + 'static,
        C: AsyncRead + AsyncWrite + Connected + Unpin + Send + 'static,
        E: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let admitting = Admitting::new(Box::pin(incoming), PEER_CONNECTIONS_MAX, PEER_HANDSHAKE)
            .map(|conn| conn.map_err(io::Error::other));
        let secured = TlsIncoming::new(admitting, self.acceptor.clone(), PEER_HANDSHAKE, IdentityField::Subject);
        Box::pin(secured.map(|conn| {
            conn.map(|(tls, identity)| {
                let addr = super::remote_addr(tls.get_ref().0);
                Conn::Tls(Box::new(tls), Peer { identity, addr })
            })
        }))
    }

    /// The endpoint of the peer at `addr` (`HOST:PORT`), over TLS with this node's
    /// certificate.
    pub fn endpoint(&self, addr: &str) -> Result<Endpoint, String> {
        let endpoint = Endpoint::from_shared(format!("https://{addr}")).map_err(|e| format!("peer {addr}: {e}"))?;
        endpoint.tls_config(self.client.clone()).map_err(|e| format!("peer {addr}: {e}"))
    }

    /// The port's certificate, to reload on SIGHUP.
    pub fn certificates(&self) -> Arc<Certificates> {
        self.certificates.clone()
    }
}
