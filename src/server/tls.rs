//! TLS on the gRPC port: rustls, TLS 1.2 and 1.3 only, HTTP/2 by ALPN. The certificate
//! and key are read from their PEM files at start, and again on SIGHUP: a new pair that
//! loads replaces the old one for new connections (open ones keep theirs, with their
//! streams); one that does not load is logged, and the old one stays.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::stream::FuturesUnordered;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;
use tokio_stream::Stream;
use tonic::transport::server::Connected;

use super::auth::{identity_of, IdentityField, Peer};

pub mod peer;

/// The largest certificate chain or key file read, in bytes.
const PEM_FILE_BYTES_MAX: u64 = 1 << 20;

/// The certificate the port presents, reloadable.
#[derive(Debug)]
pub struct Certificates {
    cert: PathBuf,
    key: PathBuf,
    /// The settings that name the two files, for errors.
    settings: (&'static str, &'static str),
    current: RwLock<Arc<CertifiedKey>>,
}

impl Certificates {
    /// Reads the certificate chain at `cert` and the private key at `key` (PEM); the error
    /// names the setting and the file at fault.
    pub fn load(cert: &Path, key: &Path) -> Result<Self, String> {
        Self::load_as(cert, key, ("tls_cert", "tls_key"))
    }

    /// [`Certificates::load`], the files named by the settings `settings` in errors.
    pub fn load_as(cert: &Path, key: &Path, settings: (&'static str, &'static str)) -> Result<Self, String> {
        let current = certified_key(cert, key, settings)?;
        Ok(Self { cert: cert.to_path_buf(), key: key.to_path_buf(), settings, current: RwLock::new(Arc::new(current)) })
    }

    /// Reads the files again; on success new connections get the new pair, and on failure
    /// the old one stays. Says which happened.
    pub fn reload(&self) -> Result<(), String> {
        let fresh = certified_key(&self.cert, &self.key, self.settings)?;
        *self.current.write().unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(fresh);
        Ok(())
    }

    /// The files it reads.
    pub fn files(&self) -> (&Path, &Path) {
        (&self.cert, &self.key)
    }
}

impl ResolvesServerCert for Certificates {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.read().unwrap_or_else(std::sync::PoisonError::into_inner).clone())
    }
}

fn read_pem(path: &Path, setting: &str) -> Result<Vec<u8>, String> {
    let size = std::fs::metadata(path).map_err(|e| format!("{setting}: cannot read {}: {e}", path.display()))?.len();
    if size > PEM_FILE_BYTES_MAX {
        return Err(format!(
            "{setting}: {} is {size} bytes; a PEM file is at most {PEM_FILE_BYTES_MAX}",
            path.display()
        ));
    }
    std::fs::read(path).map_err(|e| format!("{setting}: cannot read {}: {e}", path.display()))
}

/// The chain and key in the two files, checked to belong together.
fn certified_key(cert: &Path, key: &Path, (cert_setting, key_setting): (&str, &str)) -> Result<CertifiedKey, String> {
    let chain_pem = read_pem(cert, cert_setting)?;
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&chain_pem)
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{cert_setting}: {} is not a PEM certificate chain: {e}", cert.display()))?;
    if chain.is_empty() {
        return Err(format!(
            "{cert_setting}: {} holds no PEM certificate (-----BEGIN CERTIFICATE-----)",
            cert.display()
        ));
    }
    let key_pem = read_pem(key, key_setting)?;
    let private = PrivateKeyDer::from_pem_slice(&key_pem)
        .map_err(|e| format!("{key_setting}: {} holds no PEM private key: {e}", key.display()))?;
    let provider = rustls::crypto::ring::default_provider();
    let certified = CertifiedKey::from_der(chain, private, &provider)
        .map_err(|e| format!("{key_setting}: {} does not fit {}: {e}", key.display(), cert.display()))?;
    Ok(certified)
}

/// The CA certificates in the PEM file at `path`, as roots to verify against.
fn roots(path: &Path, setting: &str) -> Result<rustls::RootCertStore, String> {
    roots_of(&read_pem(path, setting)?, path, setting)
}

/// [`roots`] of `pem`, read from `path`.
fn roots_of(pem: &[u8], path: &Path, setting: &str) -> Result<rustls::RootCertStore, String> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(pem) {
        let cert = cert.map_err(|e| format!("{setting}: {} is not PEM: {e}", path.display()))?;
        roots.add(cert).map_err(|e| format!("{setting}: {}: {e}", path.display()))?;
    }
    if roots.is_empty() {
        return Err(format!("{setting}: {} holds no PEM certificate", path.display()));
    }
    Ok(roots)
}

/// An acceptor for `certificates`: TLS 1.3 and 1.2, HTTP/2 by ALPN. With `client_ca`, a
/// client may present a certificate, which must be signed by that CA; one that presents
/// none is let through the handshake, to be judged by its bearer token (or refused
/// UNAUTHENTICATED, with a message, rather than a failed handshake).
pub fn acceptor(certificates: Arc<Certificates>, client_ca: Option<&Path>) -> Result<TlsAcceptor, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| format!("TLS: {e}"))?;
    let builder = match client_ca {
        None => builder.with_no_client_auth(),
        Some(path) => {
            let roots = roots(path, "tls_client_ca")?;
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .allow_unauthenticated()
                .build()
                .map_err(|e| format!("tls_client_ca: {}: {e}", path.display()))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder.with_cert_resolver(certificates);
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// A finished handshake: the stream, and the principal its client certificate names.
type Handshake<C> = Pin<Box<dyn Future<Output = Option<(TlsStream<C>, Option<Arc<str>>)>> + Send>>;

/// The connections of `incoming` once their TLS handshakes are done; each handshake runs
/// beside the others, bounded by `handshake`, so a slow client holds up nobody. A failed
/// or late handshake closes its connection (the count of connections, which `incoming`
/// bounds, includes those in a handshake).
pub struct TlsIncoming<S, C> {
    incoming: Option<S>,
    acceptor: TlsAcceptor,
    handshake: Duration,
    identity: IdentityField,
    handshakes: FuturesUnordered<Handshake<C>>,
}

impl<S, C> TlsIncoming<S, C> {
    /// Handshakes on the connections of `incoming`, each given `handshake` to finish; a
    /// client certificate's principal is the name `identity` picks.
    pub fn new(incoming: S, acceptor: TlsAcceptor, handshake: Duration, identity: IdentityField) -> Self {
        Self { incoming: Some(incoming), acceptor, handshake, identity, handshakes: FuturesUnordered::new() }
    }
}

impl<S, C, E> Stream for TlsIncoming<S, C>
where
    S: Stream<Item = Result<C, E>> + Unpin,
    C: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    E: std::fmt::Display,
{
    type Item = Result<(TlsStream<C>, Option<Arc<str>>), io::Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        // Takes every connection accepted so far into a handshake; `incoming` is bounded
        // (connections_max), so is this.
        while let Some(incoming) = this.incoming.as_mut() {
            match Pin::new(incoming).poll_next(cx) {
                Poll::Ready(Some(Ok(conn))) => {
                    let (accept, limit, field) = (this.acceptor.accept(conn), this.handshake, this.identity);
                    this.handshakes.push(Box::pin(async move {
                        match tokio::time::timeout(limit, accept).await {
                            Ok(Ok(stream)) => {
                                let certificate = stream.get_ref().1.peer_certificates().and_then(|c| c.first());
                                let identity = certificate.and_then(|der| identity_of(der, field)).map(Arc::from);
                                Some((stream, identity))
                            }
                            Ok(Err(error)) => {
                                tracing::debug!(%error, "a TLS handshake failed; the connection is closed");
                                None
                            }
                            Err(_) => {
                                tracing::debug!(?limit, "a TLS handshake took too long; the connection is closed");
                                None
                            }
                        }
                    }));
                }
                Poll::Ready(Some(Err(error))) => tracing::debug!(%error, "accepting a connection failed"),
                Poll::Ready(None) => this.incoming = None,
                Poll::Pending => break,
            }
        }
        // Each round yields a finished handshake or drops a failed one.
        loop {
            match Pin::new(&mut this.handshakes).poll_next(cx) {
                Poll::Ready(Some(Some(stream))) => return Poll::Ready(Some(Ok(stream))),
                Poll::Ready(Some(None)) => {}
                Poll::Ready(None) if this.incoming.is_none() => return Poll::Ready(None),
                Poll::Ready(None) | Poll::Pending => return Poll::Pending,
            }
        }
    }
}

/// Reloads `certificates` on every SIGHUP until the process ends, logging the outcome.
pub fn reload_on_sighup(certificates: Arc<Certificates>) {
    on_sighup("the TLS certificate will not be reloaded", move || {
        let (cert, key) = certificates.files();
        match certificates.reload() {
            Ok(()) => tracing::info!(cert = %cert.display(), key = %key.display(),
                "SIGHUP: TLS certificate reloaded; new connections use it"),
            Err(error) => tracing::warn!(%error, "SIGHUP: TLS certificate not reloaded; the old one stays"),
        }
        true
    });
}

/// Runs `each` on every SIGHUP, until it returns false; `cannot` says what is lost when the
/// signal cannot be watched. Needs a tokio runtime.
#[cfg(unix)]
pub(crate) fn on_sighup(cannot: &'static str, mut each: impl FnMut() -> bool + Send + 'static) {
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(mut hangups) = signal(SignalKind::hangup()) else {
        tracing::warn!("cannot watch for SIGHUP: {cannot}");
        return;
    };
    tokio::spawn(async move {
        // One pass per signal, until `each` is done.
        while hangups.recv().await.is_some() {
            if !each() {
                return;
            }
        }
    });
}

#[cfg(not(unix))]
pub(crate) fn on_sighup(_cannot: &'static str, _each: impl FnMut() -> bool + Send + 'static) {}

/// A connection of the gRPC port: plaintext, or TLS over it.
pub enum Conn<C> {
    /// Plaintext HTTP/2, from the peer at this address (if the network says).
    Plain(C, Option<SocketAddr>),
    /// HTTP/2 over TLS, with the peer's address and the principal its certificate names.
    Tls(Box<TlsStream<C>>, Peer),
}

impl<C: AsyncRead + AsyncWrite + Unpin> AsyncRead for Conn<C> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut tokio::io::ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(c, _) => Pin::new(c).poll_read(cx, buf),
            Conn::Tls(t, _) => Pin::new(t.as_mut()).poll_read(cx, buf),
        }
    }
}

impl<C: AsyncRead + AsyncWrite + Unpin> AsyncWrite for Conn<C> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Conn::Plain(c, _) => Pin::new(c).poll_write(cx, buf),
            Conn::Tls(t, _) => Pin::new(t.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Conn::Plain(c, _) => Pin::new(c).poll_write_vectored(cx, bufs),
            Conn::Tls(t, _) => Pin::new(t.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Conn::Plain(c, _) => c.is_write_vectored(),
            Conn::Tls(t, _) => t.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(c, _) => Pin::new(c).poll_flush(cx),
            Conn::Tls(t, _) => Pin::new(t.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(c, _) => Pin::new(c).poll_shutdown(cx),
            Conn::Tls(t, _) => Pin::new(t.as_mut()).poll_shutdown(cx),
        }
    }
}

impl<C> tonic::transport::server::Connected for Conn<C> {
    type ConnectInfo = Peer;

    fn connect_info(&self) -> Peer {
        match self {
            Conn::Plain(_, addr) => Peer { identity: None, addr: *addr },
            Conn::Tls(_, peer) => peer.clone(),
        }
    }
}

/// The connections the server serves.
pub type Connections<C> = Pin<Box<dyn Stream<Item = io::Result<Conn<C>>> + Send>>;

/// The connections the server takes: `incoming` as it is, or, with a certificate in
/// `config`, each after its TLS handshake (the certificate reloaded on SIGHUP).
pub fn secure<S, C, E>(incoming: S, config: &super::ServerConfig) -> Result<Connections<C>, String>
where
    S: Stream<Item = Result<C, E>> + Unpin + Send + 'static,
    C: AsyncRead + AsyncWrite + Connected + Unpin + Send + 'static,
    E: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    use tokio_stream::StreamExt;
    let incoming = incoming.map(|conn| conn.map_err(io::Error::other));
    let (Some(cert), Some(key)) = (&config.tls_cert, &config.tls_key) else {
        return Ok(Box::pin(incoming.map(|conn| {
            conn.map(|conn| {
                let addr = remote_addr(&conn);
                Conn::Plain(conn, addr)
            })
        })));
    };
    let certificates = Arc::new(Certificates::load(cert, key)?);
    let acceptor = acceptor(certificates.clone(), config.tls_client_ca.as_deref())?;
    reload_on_sighup(certificates);
    let handshake = Duration::from_millis(config.handshake_timeout_ms);
    let identity = IdentityField::parse(&config.tls_client_identity).unwrap_or_default();
    let secured = TlsIncoming::new(incoming, acceptor, handshake, identity);
    Ok(Box::pin(secured.map(|conn| {
        conn.map(|(tls, identity)| {
            let addr = remote_addr(tls.get_ref().0);
            Conn::Tls(Box::new(tls), Peer { identity, addr })
        })
    })))
}

/// The address of the peer of `conn`, when it is a TCP connection (the simulator's are
/// not, and say nothing).
fn remote_addr<C: Connected>(conn: &C) -> Option<SocketAddr> {
    let info = conn.connect_info();
    let info: &dyn std::any::Any = &info;
    info.downcast_ref::<tonic::transport::server::TcpConnectInfo>().and_then(|tcp| tcp.remote_addr())
}

/// An acceptor for HTTP/1.1 over TLS (the metrics endpoint) with `certificates`.
pub fn http1_acceptor(certificates: Arc<Certificates>) -> Result<TlsAcceptor, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| format!("TLS: {e}"))?
        .with_no_client_auth()
        .with_cert_resolver(certificates);
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// The most connections the metrics endpoint holds at once over TLS.
const HTTPS_CONNECTIONS_MAX: usize = 256;
/// How long a metrics client has for its TLS handshake.
const HTTPS_HANDSHAKE: Duration = Duration::from_secs(10);
/// How long a metrics connection may go without reading or writing a byte before it is
/// closed, so idle clients cannot hold the endpoint's connections (a scrape takes a moment).
const HTTPS_IDLE: Duration = Duration::from_secs(60);

/// A TCP listener whose connections are served once their TLS handshake is done (each
/// handshake beside the others, bounded in time and count), for axum.
pub struct HttpsListener {
    local: io::Result<SocketAddr>,
    secured: Pin<Box<dyn Stream<Item = io::Result<Handshaken<HttpsStream>>> + Send>>,
}

/// A connection through its TLS handshake, and the principal its client certificate names.
type Handshaken<T> = (T, Option<Arc<str>>);

/// A metrics connection over TLS.
type HttpsStream = TlsStream<super::conn::Admitted<tokio::net::TcpStream>>;

impl HttpsListener {
    /// Serves TLS with `acceptor` on `listener`.
    pub fn new(listener: tokio::net::TcpListener, acceptor: TlsAcceptor) -> Self {
        use tokio_stream::StreamExt;
        let local = listener.local_addr();
        let accepted = tokio_stream::wrappers::TcpListenerStream::new(listener);
        let admitting = super::conn::Admitting::new(Box::pin(accepted), HTTPS_CONNECTIONS_MAX, HTTPS_HANDSHAKE)
            .map(|conn| conn.map_err(io::Error::other));
        let secured = TlsIncoming::new(admitting, acceptor, HTTPS_HANDSHAKE, IdentityField::Subject);
        Self { local, secured: Box::pin(secured) }
    }
}

impl axum::serve::Listener for HttpsListener {
    type Io = Idle<HttpsStream>;
    type Addr = Option<SocketAddr>;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        use tokio_stream::StreamExt;
        // Failed handshakes are dropped inside the stream; it ends only with the listener.
        loop {
            match self.secured.next().await {
                Some(Ok((tls, _))) => {
                    let addr = remote_addr(tls.get_ref().0);
                    return (Idle::new(tls, HTTPS_IDLE), addr);
                }
                Some(Err(error)) => tracing::debug!(%error, "a metrics connection failed"),
                None => std::future::pending::<()>().await,
            }
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        match &self.local {
            Ok(addr) => Ok(Some(*addr)),
            Err(error) => Err(io::Error::new(error.kind(), error.to_string())),
        }
    }
}

/// A connection closed (its reads fail with `TimedOut`) once it has gone `limit` without
/// reading or writing a byte.
pub struct Idle<S> {
    inner: S,
    limit: Duration,
    timer: Pin<Box<tokio::time::Sleep>>,
}

impl<S> Idle<S> {
    /// `inner`, closed after `limit` without progress.
    pub fn new(inner: S, limit: Duration) -> Self {
        Self { inner, limit, timer: Box::pin(tokio::time::sleep(limit)) }
    }

    fn progressed(&mut self) {
        self.timer = Box::pin(tokio::time::sleep(self.limit));
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Idle<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match Pin::new(&mut self.inner).poll_read(cx, buf) {
            Poll::Ready(read) => {
                self.progressed();
                Poll::Ready(read)
            }
            Poll::Pending => match self.timer.as_mut().poll(cx) {
                Poll::Ready(()) => Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, "idle for too long"))),
                Poll::Pending => Poll::Pending,
            },
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Idle<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let written = Pin::new(&mut self.inner).poll_write(cx, buf);
        if written.is_ready() {
            self.progressed();
        }
        written
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod idle_tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test(start_paused = true)]
    async fn an_idle_connection_is_closed_after_its_limit_and_traffic_keeps_it_open() {
        let (near, mut far) = tokio::io::duplex(64);
        let mut idle = Idle::new(near, Duration::from_secs(60));
        let mut byte = [0u8; 1];
        // Traffic every 50 s keeps it open past the limit.
        for _ in 0..3 {
            tokio::time::sleep(Duration::from_secs(50)).await;
            far.write_all(b"x").await.unwrap();
            idle.read_exact(&mut byte).await.unwrap();
        }
        // Then silence: closed a whole limit after the last byte, not at once.
        let clock = crate::env::TokioClock::new();
        let before = crate::env::Clock::now_ms(&clock);
        let read = tokio::time::timeout(Duration::from_secs(120), idle.read(&mut byte)).await;
        let read = read.expect("closed within its limit");
        assert_eq!(read.unwrap_err().kind(), io::ErrorKind::TimedOut);
        assert_eq!(crate::env::Clock::now_ms(&clock) - before, 60_000);
    }
}
