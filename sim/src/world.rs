//! The simulated world: turmoil's network and clock behind the broker's own traits, so the
//! production `server::run` runs unchanged on a turmoil host.

use std::collections::BTreeMap;
use std::io;
use std::mem::ManuallyDrop;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use mini_pubsub::env::{Clock, Net};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::Connected;
use tonic::transport::{Channel, Endpoint};

/// Wall-clock time at simulated time zero: 2026-01-01T00:00:00Z. Publish times in traces
/// are this plus the simulated elapsed time, the same on every run.
pub const EPOCH_MS: u64 = 1_767_225_600_000;

/// Connections accepted but not yet taken by the server, per listener.
const ACCEPT_QUEUE_MAX: usize = 64;

/// Time inside the simulation: monotonic time is turmoil's elapsed time, wall time is
/// [`EPOCH_MS`] plus it.
#[derive(Debug, Clone, Copy, Default)]
pub struct SimClock;

impl Clock for SimClock {
    fn now_ms(&self) -> u64 {
        turmoil::sim_elapsed().unwrap_or_default().as_millis() as u64
    }

    fn wall_ms(&self) -> u64 {
        EPOCH_MS + self.now_ms()
    }
}

/// Bytes written between hosts, by (from, to): what tells whether a network fault met any
/// traffic. Every connection of the run, on both ends, adds to it.
#[derive(Debug, Clone, Default)]
pub struct Traffic(Arc<std::sync::Mutex<BTreeMap<(String, String), u64>>>);

impl Traffic {
    pub fn add(&self, from: &str, to: &str, bytes: u64) {
        let mut counts = self.0.lock().expect("traffic lock");
        match counts.get_mut(&(from.to_string(), to.to_string())) {
            Some(count) => *count += bytes,
            None => {
                counts.insert((from.to_string(), to.to_string()), bytes);
            }
        }
    }

    /// Bytes written so far along the directions `along` says yes to.
    pub fn along(&self, along: impl Fn(&str, &str) -> bool) -> u64 {
        let counts = self.0.lock().expect("traffic lock");
        counts.iter().filter(|((from, to), _)| along(from, to)).map(|(_, n)| n).sum()
    }
}

/// Where a connection's written bytes are counted: the registry, and its two ends.
#[derive(Debug, Clone)]
pub struct Counted {
    pub traffic: Traffic,
    pub from: String,
    pub to: String,
}

/// A turmoil TCP connection that tonic can serve or connect over. It may count the bytes
/// written through it, so the driver can tell whether traffic crossed a fault.
///
/// A connection of a host that is crashing closes without a word: a machine that loses
/// power sends no FIN (and the disk model is power loss too). It also keeps a crash
/// replayable: turmoil drops a crashed host's tasks in an order that depends on tokio's
/// process-wide task ids, so FINs sent from those drops would draw network latencies in a
/// different order in a second run in the same process.
pub struct SimConn(ManuallyDrop<turmoil::net::TcpStream>, Option<Counted>, Option<Arc<AtomicBool>>);

impl SimConn {
    fn new(stream: turmoil::net::TcpStream, written: Option<Counted>, crashing: Option<Arc<AtomicBool>>) -> Self {
        Self(ManuallyDrop::new(stream), written, crashing)
    }
}

impl Drop for SimConn {
    fn drop(&mut self) {
        if !self.2.as_ref().is_some_and(|c| c.load(Ordering::Relaxed)) {
            // SAFETY: the stream is dropped once, here, and never used again.
            unsafe { ManuallyDrop::drop(&mut self.0) }
        }
    }
}

impl Connected for SimConn {
    type ConnectInfo = ();

    fn connect_info(&self) -> Self::ConnectInfo {}
}

impl AsyncRead for SimConn {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for SimConn {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let written = Pin::new(&mut *self.0).poll_write(cx, buf);
        if let (Poll::Ready(Ok(n)), Some(counted)) = (&written, &self.1) {
            counted.traffic.add(&counted.from, &counted.to, *n as u64);
        }
        written
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.0).poll_shutdown(cx)
    }
}

/// turmoil's network. With a crash flag, the connections it makes close silently once the
/// flag is set (see [`SimConn`]); with a traffic registry and the host's name, the
/// connections it accepts count what they write.
#[derive(Debug, Clone, Default)]
pub struct SimNet {
    pub crashing: Option<Arc<AtomicBool>>,
    pub traffic: Option<(Traffic, String)>,
}

impl Net for SimNet {
    type Conn = SimConn;
    type Incoming = ReceiverStream<io::Result<SimConn>>;

    async fn bind(&self, addr: SocketAddr) -> io::Result<(SocketAddr, Self::Incoming)> {
        let listener = turmoil::net::TcpListener::bind(addr).await?;
        let local = listener.local_addr()?;
        let (tx, rx) = mpsc::channel(ACCEPT_QUEUE_MAX);
        let crashing = self.crashing.clone();
        let traffic = self.traffic.clone();
        // The listener goes when the server drops its incoming stream, so it can bind again.
        tokio::spawn(async move {
            loop {
                let accepted = tokio::select! {
                    biased;
                    () = tx.closed() => break,
                    accepted = listener.accept() => accepted,
                };
                let accepted = accepted.map(|(stream, peer)| {
                    let counted = traffic.as_ref().map(|(traffic, host)| Counted {
                        traffic: traffic.clone(),
                        from: host.clone(),
                        to: turmoil::reverse_lookup(peer.ip()).unwrap_or_default(),
                    });
                    SimConn::new(stream, counted, crashing.clone())
                });
                if tx.send(accepted).await.is_err() {
                    break;
                }
            }
        });
        Ok((local, ReceiverStream::new(rx)))
    }

    async fn connect(&self, addr: SocketAddr) -> io::Result<SimConn> {
        turmoil::net::TcpStream::connect(addr).await.map(|stream| SimConn::new(stream, None, self.crashing.clone()))
    }
}

/// The address every broker host listens on inside the simulation.
pub fn listen_addr(port: u16) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), port)
}

/// A tonic channel to `host:port` over turmoil's network, with HTTP/2 keepalive so a
/// stream cut by a partition fails instead of hanging (turmoil's TCP does not retransmit).
pub async fn channel(host: &str, port: u16) -> Result<Channel, tonic::transport::Error> {
    let addr = SocketAddr::new(turmoil::lookup(host), port);
    let endpoint = endpoint(host, port);
    let connector = tower::service_fn(move |_| async move { SimNet::default().connect(addr).await.map(TokioIo::new) });
    endpoint.connect_with_connector(connector).await
}

/// A channel from a broker to its peer `host:port`, connecting on first use and again after
/// failures; its connections close without a FIN when the broker crashes (`crashing`), and
/// count what they write (and each attempt to connect) in `counted`.
pub fn peer_channel(host: &str, port: u16, crashing: Option<Arc<AtomicBool>>, counted: Counted) -> Channel {
    let name = host.to_string();
    let connector = tower::service_fn(move |_| {
        let (addr, crashing) = (SocketAddr::new(turmoil::lookup(name.as_str()), port), crashing.clone());
        let counted = counted.clone();
        async move {
            counted.traffic.add(&counted.from, &counted.to, 1);
            let stream = turmoil::net::TcpStream::connect(addr).await?;
            Ok::<_, io::Error>(TokioIo::new(SimConn::new(stream, Some(counted), crashing)))
        }
    });
    endpoint(host, port).connect_with_connector_lazy(connector)
}

/// A channel from `app` that connects on first use and reconnects after failures, with a
/// deadline on every request: what an app host uses, so it survives partitions and broker
/// restarts. Every byte it writes, and every connection attempt, is added to `traffic`.
pub fn lazy_channel(app: &str, host: &str, port: u16, timeout: Duration, traffic: Traffic) -> Channel {
    let (app, name) = (app.to_string(), host.to_string());
    let endpoint = endpoint(host, port).timeout(timeout);
    let connector = tower::service_fn(move |_| {
        let addr = SocketAddr::new(turmoil::lookup(name.as_str()), port);
        let counted = Counted { traffic: traffic.clone(), from: app.clone(), to: name.clone() };
        async move {
            // A connection attempt is traffic too: a partition that blocks it did something.
            counted.traffic.add(&counted.from, &counted.to, 1);
            let stream = turmoil::net::TcpStream::connect(addr).await?;
            Ok::<_, io::Error>(TokioIo::new(SimConn::new(stream, Some(counted), None)))
        }
    });
    endpoint.connect_with_connector_lazy(connector)
}

fn endpoint(host: &str, port: u16) -> Endpoint {
    Endpoint::from_shared(format!("http://{host}:{port}"))
        .expect("a host name and port make a valid uri")
        // HTTP/2 remembers a stream it reset for this long, in real time, not simulated
        // time: frames that arrive for it later are answered with a reset of their own.
        // Remembered for the whole run instead (up to the count HTTP/2 keeps), the network
        // carries the same frames in every run of a seed.
        .http2_reset_stream_duration(Duration::from_secs(24 * 3600))
        .connect_timeout(Duration::from_secs(1))
        .http2_keep_alive_interval(Duration::from_secs(1))
        .keep_alive_timeout(Duration::from_secs(2))
        .keep_alive_while_idle(true)
}
