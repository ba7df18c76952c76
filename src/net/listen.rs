//! Listening sockets and the HTTP connections on them, before any becomes a
//! WebSocket: bounded in number and in time, so idle TCP connections cannot
//! use up the worker's descriptors. `*` binds IPv4 and IPv6 apart
//! (`IPV6_V6ONLY`), so both binds succeed.

use super::Shared;
use super::tls::Tls;
use axum::Router;
use axum::extract::ConnectInfo;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;

/// A client has this long to send its request headers.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// A connection that has not become a WebSocket is closed after this long
/// (REST clients reconnect).
const HTTP_CONNECTION_LIFETIME: Duration = Duration::from_secs(60);
/// Connections not yet upgraded, at most.
pub const MAX_PENDING_CONNECTIONS: usize = 256;

/// Binds `addr`, an IPv6 socket accepting IPv6 only.
fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let domain = socket2::Domain::for_address(addr);
    let socket = socket2::Socket::new(domain, socket2::Type::STREAM, Some(socket2::Protocol::TCP))?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    TcpListener::from_std(socket.into())
}

/// One connection not yet upgraded, counted while it lives.
struct Pending(Arc<AtomicUsize>);

impl Drop for Pending {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Accepts on `addr` until `stop`; a busy address is retried every 5 s.
pub async fn listen(addr: SocketAddr, shared: Arc<Shared>, app: Router, mut stop: watch::Receiver<bool>) {
    let listener = loop {
        match bind(addr) {
            Ok(l) => break l,
            Err(e) => {
                crate::log_warning!("realtime: cannot listen on {addr}: {e}; retrying in 5 s");
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(5)) => {}
                    _ = stop.changed() => return,
                }
            }
        }
    };
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = stop.wait_for(|s| *s) => return,
        };
        let Ok((stream, remote)) = accepted else {
            // Out of descriptors, most likely: give them a moment back.
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let pending = shared.pending_connections.fetch_add(1, Ordering::Relaxed) + 1;
        let guard = Pending(shared.pending_connections.clone());
        if pending > MAX_PENDING_CONNECTIONS
            || shared.open_sockets.load(Ordering::Relaxed) + pending > shared.max_sockets
        {
            continue; // dropped: closed at once
        }
        let _ = stream.set_nodelay(true);
        let app = app.clone();
        match shared.config().tls.clone() {
            Tls::Off => tokio::spawn(serve_http(stream, remote, app, guard)),
            Tls::On(config) => tokio::spawn(async move {
                // The handshake counts against the time to send headers.
                let handshake = TlsAcceptor::from(config).accept(stream);
                if let Ok(Ok(stream)) = tokio::time::timeout(HEADER_READ_TIMEOUT, handshake).await {
                    serve_http(stream, remote, app, guard).await;
                }
            }),
            Tls::Unavailable => continue, // refused: closed at once, never in the clear
        };
    }
}

async fn serve_http<S>(stream: S, remote: SocketAddr, app: Router, _pending: Pending)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    // Requests know where they came from (`realtime.connections`).
    let app = app.layer(axum::Extension(ConnectInfo(remote)));
    let connection = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .serve_connection(TokioIo::new(stream), TowerToHyperService::new(app))
        .with_upgrades();
    // Ends when the connection is upgraded (the WebSocket lives on in its
    // own task), closes, or has lasted too long.
    let _ = tokio::time::timeout(HTTP_CONNECTION_LIFETIME, connection).await;
}
