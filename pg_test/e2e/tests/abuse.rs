//! What anyone holding the public anon key (or no key) may try: each attempt
//! is refused or bounded, with Supabase's codes where it has them.

use realtime_e2e::*;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Reads until the server closes the connection; how long that took.
async fn closed_within(mut s: tokio::net::TcpStream, limit: Duration) -> Option<Duration> {
    let started = Instant::now();
    let mut buf = [0u8; 1024];
    loop {
        match tokio::time::timeout(limit.saturating_sub(started.elapsed()), s.read(&mut buf)).await {
            Err(_) => return None,
            Ok(Ok(0) | Err(_)) => return Some(started.elapsed()),
            Ok(Ok(_)) => {}
        }
    }
}

#[tokio::test]
async fn idle_and_half_sent_http_connections_are_closed() {
    let addr = format!("127.0.0.1:{}", ws_port());
    let silent = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let mut partial = tokio::net::TcpStream::connect(&addr).await.unwrap();
    partial.write_all(b"GET /realtime/v1/websocket HTTP/1.1\r\nHost: x\r\n").await.unwrap();
    let (silent, partial) =
        tokio::join!(closed_within(silent, Duration::from_secs(15)), closed_within(partial, Duration::from_secs(15)));
    println!("a silent connection was closed after {silent:?}, one with half its headers after {partial:?}");
    assert!(silent.is_some_and(|t| t < Duration::from_secs(12)), "silent: {silent:?}");
    assert!(partial.is_some_and(|t| t < Duration::from_secs(12)), "partial: {partial:?}");
}
