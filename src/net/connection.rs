//! One WebSocket connection: a task that reads frames and hands them to the
//! session in order, while driving the session's pending joins; a task that
//! writes what is queued. Every channel it joined is left when it ends.

use super::auth::Auth;
use super::hub::{ConnHandle, Peer, QueueMemory};
use super::session::Session;
use super::shared::Shared;
use crate::protocol::{self, Vsn};
use axum::extract::ws::{CloseFrame, Message, WebSocket};
use futures_util::stream::SplitSink;
use futures_util::{SinkExt, StreamExt};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime};

/// Clients heartbeat every 25 s; a silent socket is gone.
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Frames taken from the queue for one write.
const WRITE_BATCH: usize = 256;
/// How long a closing connection spends writing what is queued before the close frame.
const CLOSE_DRAIN: Duration = Duration::from_secs(1);
/// Writes what is queued for the connection, several frames per flush; on a
/// close, what is still queued (but for a slow consumer, who is cut off),
/// then the close frame.
async fn write_queued(shared: Arc<Shared>, conn: Arc<ConnHandle>, mut sink: SplitSink<WebSocket, Message>) {
    loop {
        if let Some(c) = conn.close_reason() {
            if c.code != 1008 {
                let drain = async {
                    loop {
                        let batch = conn.take(WRITE_BATCH);
                        if batch.is_empty() {
                            break;
                        }
                        for q in batch {
                            if sink.feed(q.message).await.is_err() {
                                return;
                            }
                        }
                    }
                    let _ = sink.flush().await;
                };
                let _ = tokio::time::timeout(CLOSE_DRAIN, drain).await;
            }
            let frame = CloseFrame { code: c.code, reason: c.reason.into() };
            let _ = sink.send(Message::Close(Some(frame))).await;
            break;
        }
        let batch = conn.take(WRITE_BATCH);
        if batch.is_empty() {
            // `close` wakes this too.
            conn.queued().await;
            continue;
        }
        let mut written = true;
        let mut bytes = 0;
        shared.metrics.frames_out.inc_by(batch.len() as u64);
        for q in batch {
            bytes += q.bytes();
            written = written && sink.feed(q.message).await.is_ok();
        }
        if !written || sink.flush().await.is_err() {
            break;
        }
        conn.wrote(bytes);
        shared.metrics.bytes_out.inc_by(bytes as u64);
    }
    conn.stop_queueing();
    let _ = sink.close().await;
}

/// How a socket asked to be seen: `log_level` on its connect URL.
pub struct Asked {
    pub vsn: Vsn,
    pub log_joins: bool,
}

pub async fn serve(socket: WebSocket, shared: Arc<Shared>, asked: Asked, auth: Arc<Auth>, remote: Option<SocketAddr>) {
    let Asked { vsn, log_joins } = asked;
    shared.sockets.open.fetch_add(1, Ordering::Relaxed);
    let memory = QueueMemory { budget: shared.budget.clone(), sockets: shared.sockets.open.clone() };
    let peer = Peer { auth: Some(auth.clone()), remote, connected_at: SystemTime::now() };
    let conn = ConnHandle::new(shared.hub.next_id(), vsn, peer, memory);
    shared.hub.add_connection(conn.clone());
    let (sink, mut stream) = socket.split();
    let writer = tokio::spawn(write_queued(shared.clone(), conn.clone(), sink));

    let mut session = Session::new(shared.clone(), conn.clone(), auth);
    session.log_joins = log_joins;
    loop {
        let expiry = session.next_expiry();
        tokio::select! {
            Some(done) = session.pending.next(), if !session.pending.is_empty() => session.settle(done),
            frame = tokio::time::timeout(IDLE_TIMEOUT, stream.next()) => match frame {
                Err(_) => { conn.close(1000, "idle timeout"); break }
                Ok(None | Some(Err(_)) | Some(Ok(Message::Close(_)))) => break,
                Ok(Some(Ok(Message::Text(text)))) => {
                    session.received(text.len());
                    match protocol::decode_text(vsn, text.as_str()) {
                        Ok(inbound) => Box::pin(session.handle(inbound)).await,
                        Err(e) => { conn.close(1007, &e.to_string()); break }
                    }
                }
                Ok(Some(Ok(Message::Binary(bytes)))) => {
                    session.received(bytes.len());
                    match protocol::decode_binary(vsn, &bytes) {
                        Ok(inbound) => Box::pin(session.handle(inbound)).await,
                        Err(e) => { conn.close(1007, &e.to_string()); break }
                    }
                }
                Ok(Some(Ok(_))) => {} // ping/pong: answered by the library
            },
            _ = conn.closed() => break,
            _ = tokio::time::sleep_until(expiry.into()) => session.expire_tokens(),
        }
    }
    session.leave_all();
    shared.hub.remove_connection(conn.id);
    // The client went away or closed: the writer answers with a close frame
    // (a first reason, given earlier, stands).
    conn.close(1000, "");
    drop(session);
    let cut_off = conn.close_reason().is_some_and(|c| c.code == 1008);
    drop(conn);
    // A slow consumer is cut off at once: its writer may be stuck on a full
    // socket, holding frames. Anyone else's writer gets to finish its queue.
    if cut_off {
        writer.abort();
    }
    let mut writer = writer;
    // Meanwhile the client's frames are read and dropped: closing a socket
    // with unread data makes the kernel reset it, and the client would lose
    // the last reply and the close frame (it sees 1006) — a client that
    // joins in a loop has a join in flight whenever the rate limit trips.
    let discard = async { while let Some(Ok(_)) = stream.next().await {} };
    let (finished, _) = tokio::join!(
        tokio::time::timeout(CLOSE_DRAIN * 2, &mut writer),
        tokio::time::timeout(CLOSE_DRAIN * 2, discard)
    );
    if finished.is_err() {
        writer.abort();
    }
    // Counted until its last frame (a close frame at shutdown) is written.
    shared.sockets.open.fetch_sub(1, Ordering::Relaxed);
}
