//! The world the server runs in: a clock, a network and a filesystem, as traits, with their
//! tokio and std implementations. The simulator supplies turmoil ones, and the same server
//! runs on both.

mod faults;
mod fs;
#[cfg(test)]
pub(crate) mod ops;

pub use faults::{DiskFault, FaultyFs};
pub use fs::{blocking, read_exact_at, Fs, FsFile, StdFs};

use std::future::Future;
use std::io;
use std::net::SocketAddr;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio_stream::Stream;
use tonic::transport::server::Connected;

/// Time as the server sees it.
pub trait Clock: Send + Sync + 'static {
    /// Monotonic milliseconds since the clock was made: lease deadlines are measured in it.
    fn now_ms(&self) -> u64;
    /// Wall-clock milliseconds since the Unix epoch: publish times are stamped with it.
    fn wall_ms(&self) -> u64;
    /// Monotonic microseconds on the same clock as `now_ms`, for latency metrics (a disk
    /// write takes microseconds). The default has the resolution of `now_ms`.
    fn now_us(&self) -> u64 {
        self.now_ms().saturating_mul(1000)
    }
}

/// The tokio clock: monotonic time from tokio (so a paused or simulated tokio clock is
/// followed), wall time from the system.
#[derive(Debug, Clone)]
pub struct TokioClock {
    start: tokio::time::Instant,
}

impl TokioClock {
    /// A clock whose monotonic time starts at 0 now.
    #[allow(clippy::disallowed_methods, reason = "this is the Clock the rest of the server reads time through")]
    pub fn new() -> Self {
        Self { start: tokio::time::Instant::now() }
    }
}

impl Default for TokioClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for TokioClock {
    fn now_ms(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }

    fn now_us(&self) -> u64 {
        self.start.elapsed().as_micros() as u64
    }

    #[allow(clippy::disallowed_methods, reason = "this is the Clock the rest of the server reads time through")]
    fn wall_ms(&self) -> u64 {
        let since_epoch = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
        since_epoch.map_or(0, |d| d.as_millis() as u64)
    }
}

/// Binding and connecting.
pub trait Net: Send + Sync + 'static {
    /// A connection, usable by tonic on both ends.
    type Conn: AsyncRead + AsyncWrite + Connected + Unpin + Send + 'static;
    /// The stream of accepted connections that the server is given.
    type Incoming: Stream<Item = io::Result<Self::Conn>> + Send + 'static;

    /// Listens on `addr`; returns the address actually bound (port 0 picks one).
    fn bind(&self, addr: SocketAddr) -> impl Future<Output = io::Result<(SocketAddr, Self::Incoming)>> + Send;

    /// Opens a connection to `addr`.
    fn connect(&self, addr: SocketAddr) -> impl Future<Output = io::Result<Self::Conn>> + Send;
}

/// tokio TCP.
#[derive(Debug, Clone, Copy, Default)]
pub struct TokioNet;

impl Net for TokioNet {
    type Conn = tokio::net::TcpStream;
    type Incoming = std::pin::Pin<Box<dyn Stream<Item = io::Result<Self::Conn>> + Send>>;

    async fn bind(&self, addr: SocketAddr) -> io::Result<(SocketAddr, Self::Incoming)> {
        use tokio_stream::StreamExt;
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let local = listener.local_addr()?;
        // Nagle's algorithm with delayed ACKs would hold small responses back ~40 ms each.
        let accepted = tokio_stream::wrappers::TcpListenerStream::new(listener)
            .map(|conn| conn.and_then(|stream| stream.set_nodelay(true).map(|()| stream)));
        Ok((local, Box::pin(accepted)))
    }

    async fn connect(&self, addr: SocketAddr) -> io::Result<Self::Conn> {
        let stream = tokio::net::TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        Ok(stream)
    }
}
