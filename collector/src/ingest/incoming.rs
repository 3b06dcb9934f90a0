//! The agents' connections as the gRPC server takes them, within limits
//! tonic's own accept loop lacks:
//!
//! - at most [`MAX_AGENT_CONNECTIONS`] at once (a connection holds its slot
//!   until it closes; beyond that the loop waits and the kernel's backlog holds
//!   the rest), and at most [`MAX_CONNECTIONS_PER_ADDRESS`] from one IP address,
//!   so one host cannot take every slot;
//! - a connection must send its first [`OPENING_BYTES`] (the HTTP/2 preface, or
//!   the start of a TLS handshake) within [`OPENING_TIMEOUT`], so silent
//!   connections do not hold slots; after that HTTP/2 pings find dead peers;
//! - TCP keepalive on every connection (tonic ignores its own setting for an
//!   incoming stream);
//! - an accept error other than a peer's (out of file descriptors) is retried
//!   after a second instead of in a busy loop.

use futures::{Stream, StreamExt as _};
use std::collections::HashMap;
use std::future::Future as _;
use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Sleep;
use tonic::transport::server::{Connected, TcpConnectInfo, TcpIncoming};

/// Agent connections served at once: each agent holds one.
pub const MAX_AGENT_CONNECTIONS: usize = 4096;

/// Default of `grpc.max_connections_per_address`: connections from one IP
/// address at once (agents behind one NAT address each hold one).
pub const MAX_CONNECTIONS_PER_ADDRESS: usize = 64;

/// Bytes a new connection must send within [`OPENING_TIMEOUT`]: the length of
/// the HTTP/2 client preface (a TLS ClientHello is longer).
pub const OPENING_BYTES: usize = 24;

/// Time a new connection has to send its [`OPENING_BYTES`].
pub const OPENING_TIMEOUT: Duration = Duration::from_secs(10);

/// Idle time before TCP keepalive probes (a peer gone without a FIN).
const TCP_KEEPALIVE: Duration = Duration::from_secs(30);

/// Connections per IP address.
type PerAddress = Arc<Mutex<HashMap<IpAddr, usize>>>;

/// One accepted connection, holding its slots.
pub struct Limited {
    stream: TcpStream,
    _slot: OwnedSemaphorePermit,
    /// Its address's count, decremented on drop.
    address: Option<(IpAddr, PerAddress)>,
    /// Until the opening bytes have arrived: how many so far, and the deadline.
    opening: Option<(usize, Pin<Box<Sleep>>)>,
}

impl Drop for Limited {
    fn drop(&mut self) {
        if let Some((ip, counts)) = self.address.take() {
            let mut counts = counts.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(n) = counts.get_mut(&ip) {
                *n -= 1;
                if *n == 0 {
                    counts.remove(&ip);
                }
            }
        }
    }
}

/// The connections of `listener`, at most `limit` at once and `per_address`
/// from one IP address.
pub fn limited(
    listener: TcpListener,
    limit: usize,
    per_address: usize,
) -> impl Stream<Item = io::Result<Limited>> {
    let incoming = TcpIncoming::from(listener)
        .with_nodelay(Some(true))
        .with_keepalive(Some(TCP_KEEPALIVE));
    let slots = Arc::new(Semaphore::new(limit));
    let counts = PerAddress::default();
    let refusals = RefusalLog {
        limit: per_address,
        ..RefusalLog::default()
    };
    futures::stream::unfold(
        (incoming, slots, counts, refusals),
        |(mut incoming, slots, per_address, mut refusals)| async move {
            loop {
                let slot = slots.clone().acquire_owned().await.ok()?;
                let stream = match incoming.next().await? {
                    Ok(stream) => stream,
                    Err(e) if etcdmon_core::http_server::is_peer_error(&e) => continue,
                    Err(e) => {
                        tracing::error!(error = %e, "accepting an agent connection failed; retrying in 1 s");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        continue;
                    }
                };
                let address = match stream.peer_addr() {
                    Ok(peer) => {
                        let ip = peer.ip();
                        let mut counts = per_address.lock().unwrap_or_else(|p| p.into_inner());
                        let n = counts.entry(ip).or_insert(0);
                        if *n >= refusals.limit {
                            refusals.refused(peer);
                            continue; // dropping the stream closes it
                        }
                        *n += 1;
                        Some((ip, per_address.clone()))
                    }
                    Err(_) => None,
                };
                let connection = Limited {
                    stream,
                    _slot: slot,
                    address,
                    opening: Some((0, Box::pin(tokio::time::sleep(OPENING_TIMEOUT)))),
                };
                return Some((Ok(connection), (incoming, slots, per_address, refusals)));
            }
        },
    )
}

/// Warns of connections refused over the per-address limit at most once a
/// second: a flood of connections must not become a flood of log lines.
#[derive(Default)]
struct RefusalLog {
    /// Connections allowed from one address.
    limit: usize,
    last_warning: Option<std::time::Instant>,
    /// Refused since the last warning.
    unreported: u64,
}

impl RefusalLog {
    fn refused(&mut self, peer: std::net::SocketAddr) {
        self.unreported += 1;
        if self
            .last_warning
            .is_some_and(|at| at.elapsed() < Duration::from_secs(1))
        {
            return;
        }
        tracing::warn!(%peer, limit = self.limit, refused = self.unreported,
            "refusing agent connections: too many from one address (refused: since the last warning; \
             grpc.max_connections_per_address)");
        self.last_warning = Some(std::time::Instant::now());
        self.unreported = 0;
    }
}

impl Connected for Limited {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> TcpConnectInfo {
        self.stream.connect_info()
    }
}

impl AsyncRead for Limited {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.stream).poll_read(cx, buf);
        if let Some((received, deadline)) = &mut this.opening {
            *received += buf.filled().len() - before;
            if *received >= OPENING_BYTES {
                this.opening = None;
            } else if polled.is_pending() && deadline.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("no {OPENING_BYTES}-byte opening within {OPENING_TIMEOUT:?}"),
                )));
            }
        }
        polled
    }
}

impl AsyncWrite for Limited {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    #[tokio::test(start_paused = true)]
    async fn a_connection_that_does_not_open_in_time_is_closed() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let mut incoming = Box::pin(limited(listener, 4, MAX_CONNECTIONS_PER_ADDRESS));
        let mut buf = [0u8; 64];

        let mut opened = TcpStream::connect(addr).await.expect("connect");
        let mut server_side = incoming.next().await.expect("stream").expect("accepted");
        opened
            .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
            .await
            .expect("preface");
        let n = server_side
            .read(&mut buf)
            .await
            .expect("the preface arrives");
        assert_eq!(n, OPENING_BYTES);
        tokio::time::advance(OPENING_TIMEOUT * 2).await;
        opened.write_all(b"later").await.expect("write");
        assert_eq!(
            server_side
                .read(&mut buf)
                .await
                .expect("no deadline once opened"),
            5
        );

        let mut silent = TcpStream::connect(addr).await.expect("connect");
        let mut server_side = incoming.next().await.expect("stream").expect("accepted");
        silent.write_all(b"PRI").await.expect("a few bytes");
        assert_eq!(server_side.read(&mut buf).await.expect("read"), 3);
        let waited = tokio::time::Instant::now();
        let err = server_side
            .read(&mut buf)
            .await
            .expect_err("closed for silence");
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert!(
            waited.elapsed() <= OPENING_TIMEOUT,
            "within the opening time"
        );
    }

    #[tokio::test]
    async fn one_address_cannot_take_every_slot() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let mut incoming = Box::pin(limited(
            listener,
            MAX_CONNECTIONS_PER_ADDRESS + 10,
            MAX_CONNECTIONS_PER_ADDRESS,
        ));
        let mut clients = Vec::new();
        let mut accepted = Vec::new();
        for _ in 0..MAX_CONNECTIONS_PER_ADDRESS {
            clients.push(TcpStream::connect(addr).await.expect("connect"));
            accepted.push(incoming.next().await.expect("stream").expect("accepted"));
        }
        let mut refused = TcpStream::connect(addr).await.expect("connect");
        assert!(
            tokio::time::timeout(Duration::from_millis(300), incoming.next())
                .await
                .is_err(),
            "a connection beyond the per-address limit was handed out"
        );
        let mut buf = [0u8; 1];
        let closed = tokio::time::timeout(Duration::from_secs(5), refused.read(&mut buf))
            .await
            .expect("closed at once");
        assert!(matches!(closed, Ok(0) | Err(_)), "{closed:?}");
        drop(accepted.pop());
        let _again = TcpStream::connect(addr).await.expect("connect");
        assert!(
            tokio::time::timeout(Duration::from_secs(5), incoming.next())
                .await
                .is_ok(),
            "a freed slot of the address is taken again"
        );
    }

    #[tokio::test]
    async fn a_connection_beyond_the_limit_waits_for_a_closed_one() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let mut incoming = Box::pin(limited(listener, 1, MAX_CONNECTIONS_PER_ADDRESS));
        let _first_client = TcpStream::connect(addr).await.expect("connect");
        let first = incoming.next().await.expect("stream").expect("accepted");
        let mut second_client = TcpStream::connect(addr).await.expect("connect");
        second_client.write_all(b"x").await.expect("write");
        assert!(
            tokio::time::timeout(Duration::from_millis(300), incoming.next())
                .await
                .is_err(),
            "a second connection was handed out beyond the limit of 1"
        );
        drop(first);
        let second = tokio::time::timeout(Duration::from_secs(5), incoming.next())
            .await
            .expect("handed out once the first closed")
            .expect("stream")
            .expect("accepted");
        assert!(second.connect_info().remote_addr().is_some());
    }
}
