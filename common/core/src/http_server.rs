//! The connection loop of every HTTP server (the collector's API, the agent's
//! and the alerter's `/metrics`), with the limits `axum::serve` lacks:
//!
//! - a client must send a request's headers within [`Limits::header_read`]
//!   (10 s), and an idle keep-alive connection is closed after the same time,
//!   so a slow or silent client cannot hold a connection (slowloris);
//! - at most [`Limits::connections`] (512) connections at once: beyond that
//!   the loop stops accepting and the kernel's backlog waits, instead of every
//!   connection costing a task and a buffer;
//! - an accept error other than a peer's reset (out of file descriptors) is
//!   logged and retried after a second rather than in a busy loop;
//! - on shutdown: no new connections, requests in flight finish.
//!
//! Handlers see the peer's address as `ConnectInfo<SocketAddr>`.

use axum::extract::ConnectInfo;
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use std::io;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt as _;

/// Limits of one server.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Longest wait for a request's headers, and for the next request on an
    /// idle connection.
    pub header_read: Duration,
    /// Connections served at once.
    pub connections: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            header_read: Duration::from_secs(10),
            connections: 512,
        }
    }
}

/// Serves `router` on `listener` within `limits` until `shutdown`, then lets
/// requests in flight finish.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: Limits,
    shutdown: CancellationToken,
) -> io::Result<()> {
    let graceful = GracefulShutdown::new();
    let slots = Arc::new(Semaphore::new(limits.connections));
    loop {
        let slot = tokio::select! {
            slot = slots.clone().acquire_owned() => match slot {
                Ok(slot) => slot,
                Err(_) => break, // never closed
            },
            () = shutdown.cancelled() => break,
        };
        let (stream, remote) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) if is_peer_error(&e) => continue,
                Err(e) => {
                    tracing::error!(error = %e, "accept failed; retrying in 1 s");
                    tokio::select! {
                        () = tokio::time::sleep(Duration::from_secs(1)) => continue,
                        () = shutdown.cancelled() => break,
                    }
                }
            },
            () = shutdown.cancelled() => break,
        };
        let router = router.clone();
        let service = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
            req.extensions_mut().insert(ConnectInfo(remote));
            router.clone().oneshot(req.map(axum::body::Body::new))
        });
        let mut builder = hyper::server::conn::http1::Builder::new();
        builder
            .timer(TokioTimer::new())
            .header_read_timeout(limits.header_read);
        let connection = graceful.watch(builder.serve_connection(TokioIo::new(stream), service));
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(%remote, error = %e, "HTTP connection ended with an error");
            }
            drop(slot);
        });
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}

/// Whether an accept error is one connection's, caused by its peer (refused,
/// aborted, reset): accept the next one at once. Any other error (out of file
/// descriptors) calls for a pause. Shared by every accept loop of the services.
pub fn is_peer_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::routing::get;
    use std::net::SocketAddr;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    use tokio::net::TcpStream;

    /// A server answering `GET /` with the caller's address, within `limits`.
    async fn server(
        limits: Limits,
    ) -> (SocketAddr, CancellationToken, tokio::task::JoinHandle<()>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let router = Router::new().route(
            "/",
            get(|ConnectInfo(peer): ConnectInfo<SocketAddr>| async move { peer.to_string() }),
        );
        let stop = CancellationToken::new();
        let task = tokio::spawn({
            let stop = stop.clone();
            async move {
                serve(listener, router, limits, stop).await.expect("serve");
            }
        });
        (addr, stop, task)
    }

    /// Reads until the server closes the connection; how long that took.
    async fn time_to_close(stream: &mut TcpStream, within: Duration) -> Option<Duration> {
        let start = std::time::Instant::now();
        let mut buf = [0u8; 1024];
        loop {
            match tokio::time::timeout_at(
                tokio::time::Instant::from_std(start + within),
                stream.read(&mut buf),
            )
            .await
            {
                Ok(Ok(0) | Err(_)) => return Some(start.elapsed()),
                Ok(Ok(_)) => continue,
                Err(_) => return None,
            }
        }
    }

    const REQUEST: &[u8] = b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n";

    #[tokio::test]
    async fn slow_headers_and_idle_connections_are_closed() {
        let limits = Limits {
            header_read: Duration::from_millis(300),
            connections: 16,
        };
        let (addr, stop, task) = server(limits).await;

        // Slowloris: half a request, then nothing.
        let mut slow = TcpStream::connect(addr).await.expect("connect");
        slow.write_all(b"GET / HTTP/1.1\r\nHost: local")
            .await
            .expect("write");
        assert!(
            time_to_close(&mut slow, Duration::from_secs(5))
                .await
                .is_some(),
            "a connection sending half its headers was kept open"
        );

        // Connected and silent.
        let mut silent = TcpStream::connect(addr).await.expect("connect");
        assert!(
            time_to_close(&mut silent, Duration::from_secs(5))
                .await
                .is_some(),
            "a silent connection was kept open"
        );

        // Served, then idle on keep-alive.
        let mut idle = TcpStream::connect(addr).await.expect("connect");
        idle.write_all(REQUEST).await.expect("write");
        let mut buf = [0u8; 512];
        let n = idle.read(&mut buf).await.expect("response");
        let head = String::from_utf8_lossy(&buf[..n]).to_string();
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        assert!(
            head.contains("127.0.0.1:"),
            "ConnectInfo reaches handlers: {head}"
        );
        assert!(
            time_to_close(&mut idle, Duration::from_secs(5))
                .await
                .is_some(),
            "an idle keep-alive connection was kept open"
        );
        stop.cancel();
        task.await.expect("server ends");
    }

    #[tokio::test]
    async fn connections_beyond_the_limit_wait_for_a_free_slot() {
        let limits = Limits {
            header_read: Duration::from_secs(30),
            connections: 2,
        };
        let (addr, stop, task) = server(limits).await;
        let mut held = Vec::new();
        for _ in 0..2 {
            let mut s = TcpStream::connect(addr).await.expect("connect");
            s.write_all(b"GET / HTTP/1.1\r\n").await.expect("write");
            held.push(s);
        }
        // Accepted by the kernel, not served: no slot.
        let mut third = TcpStream::connect(addr).await.expect("connect");
        third.write_all(REQUEST).await.expect("write");
        let mut buf = [0u8; 512];
        assert!(
            tokio::time::timeout(Duration::from_millis(500), third.read(&mut buf))
                .await
                .is_err(),
            "a third connection was served beyond the limit of 2"
        );
        drop(held.pop());
        let n = tokio::time::timeout(Duration::from_secs(5), third.read(&mut buf))
            .await
            .expect("served once a slot is free")
            .expect("read");
        assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
        stop.cancel();
        drop(held);
        task.await.expect("server ends");
    }
}
