//! The hand-off from network threads to the worker's main thread: a bounded
//! queue plus an eventfd the main thread's WaitEventSet watches. Replies go
//! back through oneshot channels, whose send never blocks the main thread.
//! No Postgres calls here: both sides use this module.

use super::request::Request;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::Arc;
use std::sync::mpsc::{Receiver, SyncSender, TryRecvError, TrySendError, sync_channel};
use tokio::sync::oneshot;

/// The network side's handle.
#[derive(Clone)]
pub struct Bridge {
    queue: SyncSender<Request>,
    wake: Arc<OwnedFd>,
}

/// The main thread's side.
pub struct Inbox {
    queue: Receiver<Request>,
    wake: Arc<OwnedFd>,
}

pub fn channel(capacity: usize) -> std::io::Result<(Bridge, Inbox)> {
    // SAFETY: plain syscall; the fd is owned by the OwnedFd from here on.
    let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh, valid descriptor.
    let wake = Arc::new(unsafe { OwnedFd::from_raw_fd(fd) });
    let (queue_tx, queue_rx) = sync_channel(capacity);
    Ok((Bridge { queue: queue_tx, wake: wake.clone() }, Inbox { queue: queue_rx, wake }))
}

#[derive(Debug, PartialEq, Eq)]
pub enum CallError {
    /// The queue is full: the main thread is behind.
    Busy,
    /// The worker is shutting down.
    Gone,
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CallError::Busy => write!(f, "the realtime worker is busy, try again"),
            CallError::Gone => write!(f, "the realtime worker is shutting down"),
        }
    }
}

impl Bridge {
    /// Sends a request that needs no answer. False when the queue is full.
    pub fn tell(&self, request: Request) -> bool {
        let sent = self.queue.try_send(request).is_ok();
        if sent {
            self.wake();
        }
        sent
    }

    fn wake(&self) {
        let one: u64 = 1;
        // SAFETY: writing 8 bytes to an eventfd we own. EAGAIN (counter
        // saturated) still leaves it readable, so the wake-up is not lost.
        unsafe { libc::write(self.wake.as_raw_fd(), (&raw const one).cast(), 8) };
    }

    /// Sends a request to the main thread and waits for its answer.
    pub async fn call<T>(&self, make: impl FnOnce(oneshot::Sender<T>) -> Request) -> Result<T, CallError> {
        let (tx, rx) = oneshot::channel();
        match self.queue.try_send(make(tx)) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => return Err(CallError::Busy),
            Err(TrySendError::Disconnected(_)) => return Err(CallError::Gone),
        }
        self.wake();
        rx.await.map_err(|_| CallError::Gone)
    }
}

impl Inbox {
    pub fn fd(&self) -> RawFd {
        self.wake.as_raw_fd()
    }

    /// Takes every queued request (resetting the eventfd first, so a request
    /// queued meanwhile wakes the next wait).
    pub fn drain(&self) -> Vec<Request> {
        let mut counter: u64 = 0;
        // SAFETY: reading 8 bytes from our nonblocking eventfd; EAGAIN is fine.
        unsafe { libc::read(self.wake.as_raw_fd(), (&raw mut counter).cast(), 8) };
        let mut out = Vec::new();
        loop {
            match self.queue.try_recv() {
                Ok(r) => out.push(r),
                Err(TryRecvError::Empty | TryRecvError::Disconnected) => return out,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bridge::request::{AuthContext, Extension};

    fn ctx() -> AuthContext {
        AuthContext { role: "anon".into(), claims_json: "{}".into(), sub: None }
    }

    #[test]
    fn requests_reach_the_inbox_and_answers_come_back() {
        let (bridge, inbox) = channel(4).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let call = std::thread::spawn(move || {
            rt.block_on(bridge.call(|reply| Request::WritePermission {
                ctx: ctx(),
                topic: "room".into(),
                extension: Extension::Broadcast,
                reply,
            }))
        });
        let mut fds = libc::pollfd { fd: inbox.fd(), events: libc::POLLIN, revents: 0 };
        // SAFETY: polling one valid fd.
        assert_eq!(unsafe { libc::poll(&mut fds, 1, 5000) }, 1, "the eventfd must become readable");
        let mut requests = inbox.drain();
        assert_eq!(requests.len(), 1);
        let Request::WritePermission { topic, reply, .. } = requests.pop().unwrap() else { panic!() };
        assert_eq!(topic, "room");
        reply.send(Ok(true)).unwrap();
        assert_eq!(call.join().unwrap(), Ok(Ok(true)));
        assert!(inbox.drain().is_empty());
    }

    #[test]
    fn a_full_queue_is_busy_and_a_dropped_inbox_is_gone() {
        let (bridge, inbox) = channel(1).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap();
        let write = |bridge: Bridge| async move {
            bridge
                .call(|reply| Request::WritePermission {
                    ctx: ctx(),
                    topic: "t".into(),
                    extension: Extension::Presence,
                    reply,
                })
                .await
        };
        rt.block_on(async {
            // The first call stays queued (nobody answers); the second finds the queue full.
            let first = tokio::spawn(write(bridge.clone()));
            tokio::task::yield_now().await;
            assert_eq!(write(bridge.clone()).await, Err(CallError::Busy));
            drop(inbox);
            assert_eq!(first.await.unwrap(), Err(CallError::Gone));
            assert_eq!(write(bridge).await, Err(CallError::Gone));
        });
    }
}
