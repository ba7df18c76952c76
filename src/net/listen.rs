//! Listening sockets and the HTTP connections on them, before any becomes a
//! WebSocket: bounded in number (`admission.rs`) and in time, so idle TCP
//! connections can neither use up the worker's descriptors nor keep others
//! out. `*` binds IPv4 and IPv6 apart (`IPV6_V6ONLY`), so both binds succeed.

use super::admission::Ticket;
use super::shared::Shared;
use super::tls::Tls;
use axum::Router;
use axum::extract::ConnectInfo;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt;

/// A client has this long to send its request headers (and finish a TLS
/// handshake): real clients send them at once.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(5);
/// A connection that has not become a WebSocket is closed after this long
/// (REST clients reconnect).
const HTTP_CONNECTION_LIFETIME: Duration = Duration::from_secs(60);

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
        // Out of sockets: refused, closed at once.
        if shared.sockets.open.load(Ordering::Relaxed) + shared.sockets.admission.pending() >= shared.sockets.max {
            continue;
        }
        let guard = shared.sockets.admission.admit(remote.ip());
        let _ = stream.set_nodelay(true);
        let app = app.clone();
        match shared.config().tls.clone() {
            Tls::Off => tokio::spawn(serve_http(stream, remote, app, guard)),
            Tls::On(config) => tokio::spawn(async move {
                // The handshake counts against the time to send headers.
                let handshake = TlsAcceptor::from(config).accept(stream);
                let handshake = async {
                    tokio::select! {
                        done = tokio::time::timeout(HEADER_READ_TIMEOUT, handshake) => done.ok().and_then(Result::ok),
                        _ = guard.evicted() => None,
                    }
                };
                if let Some(stream) = handshake.await {
                    serve_http(stream, remote, app, guard).await;
                }
            }),
            Tls::Unavailable => continue, // refused: closed at once, never in the clear
        };
    }
}

async fn serve_http<S>(stream: S, remote: SocketAddr, app: Router, pending: Ticket)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    // Requests know where they came from (`realtime.connections`).
    let app = app.layer(axum::Extension(ConnectInfo(remote)));
    let connection = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .serve_connection(
            TokioIo::new(stream),
            TowerToHyperService::new(app.map_request(super::request_parts::collapse_slashes)),
        )
        .with_upgrades();
    // Ends when the connection is upgraded (the WebSocket lives on in its
    // own task), closes, has lasted too long, or a newer one took its place.
    tokio::select! {
        _ = tokio::time::timeout(HTTP_CONNECTION_LIFETIME, connection) => {}
        _ = pending.evicted() => {}
    }
}
