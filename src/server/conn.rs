//! Admission of connections: at most `connections_max` open at once, each made to send its
//! HTTP/2 preface within `handshake_timeout_ms`, and an accept loop that backs off when
//! accepting fails (out of file descriptors) instead of spinning.
//!
//! A connection past the bound is closed as soon as it is accepted: its client sees the
//! connection fail (gRPC `UNAVAILABLE`) and may retry, and the connections already open are
//! untouched. A connection that sends nothing is closed when its handshake time is up, so
//! idle sockets cannot pile up to the bound or the descriptor limit. After the preface,
//! HTTP/2 keepalive (`keepalive_interval_ms`, `keepalive_timeout_ms`) finds dead peers.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Sleep;
use tokio_stream::Stream;
use tonic::transport::server::Connected;

/// The HTTP/2 connection preface a client sends first (RFC 9113, 3.4): 24 bytes.
const PREFACE_BYTES: usize = 24;
/// The first wait after a failed accept; it doubles at each failure in a row.
const ACCEPT_BACKOFF_MIN_MS: u64 = 5;
/// The longest wait after a failed accept.
const ACCEPT_BACKOFF_MAX_MS: u64 = 1000;

/// The accepted connections of `incoming`, admitted under the bounds (see the module docs).
pub struct Admitting<I> {
    incoming: I,
    permits: Arc<Semaphore>,
    connections_max: usize,
    handshake: Duration,
    backoff: Option<Pin<Box<Sleep>>>,
    backoff_ms: u64,
    /// Connections closed at the bound, and accepts that failed, so far: each is logged
    /// when its count reaches a power of two, so a flood writes a few lines, not millions.
    refused: u64,
    failed: u64,
}

impl<I> Admitting<I> {
    /// Admits the connections of `incoming`: at most `connections_max` open, each given
    /// `handshake` to send its preface.
    pub fn new(incoming: I, connections_max: usize, handshake: Duration) -> Self {
        Self {
            incoming,
            permits: Arc::new(Semaphore::new(connections_max)),
            connections_max,
            handshake,
            backoff: None,
            backoff_ms: ACCEPT_BACKOFF_MIN_MS,
            refused: 0,
            failed: 0,
        }
    }
}

impl<I, C, E> Stream for Admitting<I>
where
    I: Stream<Item = Result<C, E>> + Unpin,
    E: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Item = Result<Admitted<C>, E>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        loop {
            if let Some(wait) = &mut this.backoff {
                ready!(wait.as_mut().poll(cx));
                this.backoff = None;
            }
            match ready!(Pin::new(&mut this.incoming).poll_next(cx)) {
                None => return Poll::Ready(None),
                Some(Err(error)) => {
                    let error: Box<dyn std::error::Error + Send + Sync> = error.into();
                    if one_connection_failed(error.as_ref()) {
                        // That peer's trouble (it reset during the handshake, say): the
                        // next accept can go ahead at once.
                        tracing::debug!(%error, "a connection failed as it was accepted");
                        continue;
                    }
                    this.failed += 1;
                    if this.failed.is_power_of_two() {
                        tracing::warn!(%error, failures = this.failed, backoff_ms = this.backoff_ms,
                            "accepting a connection failed (out of file descriptors?); waiting before the next accept");
                    }
                    this.backoff = Some(Box::pin(tokio::time::sleep(Duration::from_millis(this.backoff_ms))));
                    this.backoff_ms = (this.backoff_ms * 2).min(ACCEPT_BACKOFF_MAX_MS);
                }
                Some(Ok(conn)) => {
                    this.backoff_ms = ACCEPT_BACKOFF_MIN_MS;
                    match this.permits.clone().try_acquire_owned() {
                        Ok(permit) => return Poll::Ready(Some(Ok(Admitted::new(conn, permit, this.handshake)))),
                        Err(_) => {
                            this.refused += 1;
                            if this.refused.is_power_of_two() {
                                tracing::warn!(
                                    limit = this.connections_max,
                                    refused = this.refused,
                                    "a connection was closed at once: connections_max are open"
                                );
                            }
                        }
                    }
                }
            }
        }
    }
}

/// True for an accept error that concerns one connection only (it was aborted or reset
/// before the broker took it), not the listener or the process (out of file descriptors or
/// memory), which deserves the backoff.
fn one_connection_failed(error: &(dyn std::error::Error + 'static)) -> bool {
    let Some(error) = error.downcast_ref::<io::Error>() else { return false };
    matches!(
        error.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionRefused
            | io::ErrorKind::Interrupted
            | io::ErrorKind::TimedOut
    )
}

/// An admitted connection: it holds its place under `connections_max` until it is dropped,
/// and fails its reads if the client's preface has not arrived within the handshake time.
pub struct Admitted<C> {
    conn: C,
    _permit: OwnedSemaphorePermit,
    /// Until the preface has arrived: when it must have.
    handshake: Option<Pin<Box<Sleep>>>,
    received: usize,
}

impl<C> Admitted<C> {
    fn new(conn: C, permit: OwnedSemaphorePermit, handshake: Duration) -> Self {
        Self { conn, _permit: permit, handshake: Some(Box::pin(tokio::time::sleep(handshake))), received: 0 }
    }
}

impl<C: AsyncRead + Unpin> AsyncRead for Admitted<C> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let read = Pin::new(&mut self.conn).poll_read(cx, buf);
        match read {
            Poll::Ready(Ok(())) => {
                self.received += buf.filled().len() - before;
                if self.received >= PREFACE_BYTES {
                    self.handshake = None;
                }
                Poll::Ready(Ok(()))
            }
            Poll::Pending => {
                let timed_out = self.handshake.as_mut().is_some_and(|deadline| deadline.as_mut().poll(cx).is_ready());
                if !timed_out {
                    return Poll::Pending;
                }
                Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "no HTTP/2 preface within handshake_timeout_ms; the connection is closed",
                )))
            }
            failed => failed,
        }
    }
}

impl<C: AsyncWrite + Unpin> AsyncWrite for Admitted<C> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.conn).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.conn).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.conn.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.conn).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.conn).poll_shutdown(cx)
    }
}

impl<C: Connected> Connected for Admitted<C> {
    type ConnectInfo = C::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.conn.connect_info()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio_stream::StreamExt;

    #[tokio::test(start_paused = true)]
    async fn a_connection_aborted_as_it_is_accepted_costs_no_wait() {
        let aborted = (0..12).map(|_| Err::<(), io::Error>(io::Error::from(io::ErrorKind::ConnectionAborted)));
        let mut admitting = Admitting::new(tokio_stream::iter(aborted), 4, Duration::from_secs(1));
        #[allow(clippy::disallowed_methods, reason = "the test's paused clock, advanced only by the waits")]
        let start = tokio::time::Instant::now();
        assert!(admitting.next().await.is_none());
        assert_eq!(start.elapsed(), Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn failed_accepts_back_off_instead_of_spinning() {
        // Twelve failures in a row, then the stream ends.
        let failures = tokio_stream::iter((0..12).map(|_| Err::<(), io::Error>(io::Error::other("EMFILE"))));
        let mut admitting = Admitting::new(failures, 4, Duration::from_secs(1));
        #[allow(clippy::disallowed_methods, reason = "the test's paused clock, advanced only by the waits")]
        let start = tokio::time::Instant::now();
        assert!(admitting.next().await.is_none(), "failures are not handed on");
        // 5, 10, ... 640 ms, then 1 s four times: 5.275 s of waiting for twelve failures.
        assert_eq!(start.elapsed().as_millis(), 5_275);
    }
}
