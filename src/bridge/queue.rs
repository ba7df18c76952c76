//! The hand-off from network threads to the worker's main thread: one FIFO
//! plus an eventfd the main thread's WaitEventSet watches. Replies go back
//! through oneshot channels, whose send never blocks the main thread.
//! No Postgres calls here: both sides use this module.
//!
//! Requests (which wait for an answer) are bounded by how many are in flight,
//! in all and per socket ([`Share`]), so one client flooding joins gets
//! `Busy` for its own requests and never fills the queue for everyone else.
//! Control messages (a channel gone, a token refreshed) are never refused:
//! they share the FIFO, so they arrive after the requests sent before them.

use super::request::Request;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, Sender, TryRecvError};
use tokio::sync::oneshot;

/// A request with its place in the in-flight counts, given back when the
/// main thread is done with it (or drops it).
pub struct Queued {
    request: Request,
    _slots: Option<(Slot, Slot)>,
}

impl Queued {
    /// The request, its slots given back: the asker may ask again as soon as
    /// it has its answer.
    pub fn take(self) -> Request {
        self.request
    }

    /// A read or write permission check (for `realtime.stats`).
    pub fn is_permission_check(&self) -> bool {
        matches!(self.request, Request::ReadPermissions { .. } | Request::WritePermission { .. })
    }
}

/// One unit of an in-flight count.
struct Slot(Arc<AtomicUsize>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A socket's share of the queue: how many of its requests may be in flight.
#[derive(Clone)]
pub struct Share {
    in_flight: Arc<AtomicUsize>,
    max: usize,
}

impl Share {
    pub fn new(max: usize) -> Share {
        Share { in_flight: Arc::new(AtomicUsize::new(0)), max }
    }
}

/// The network side's handle.
#[derive(Clone)]
pub struct Bridge {
    queue: Sender<Queued>,
    wake: Arc<OwnedFd>,
    in_flight: Arc<AtomicUsize>,
    capacity: usize,
}

/// The main thread's side.
pub struct Inbox {
    queue: Receiver<Queued>,
    wake: Arc<OwnedFd>,
}

/// `capacity` requests may be in flight in all.
pub fn channel(capacity: usize) -> std::io::Result<(Bridge, Inbox)> {
    // SAFETY: plain syscall; the fd is owned by the OwnedFd from here on.
    let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh, valid descriptor.
    let wake = Arc::new(unsafe { OwnedFd::from_raw_fd(fd) });
    let (queue_tx, queue_rx) = std::sync::mpsc::channel();
    let in_flight = Arc::new(AtomicUsize::new(0));
    Ok((Bridge { queue: queue_tx, wake: wake.clone(), in_flight, capacity }, Inbox { queue: queue_rx, wake }))
}

#[derive(Debug, PartialEq, Eq)]
pub enum CallError {
    /// Too many requests in flight, this socket's or everyone's.
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

/// Takes a slot of `count` if fewer than `max` are taken.
fn take(count: &Arc<AtomicUsize>, max: usize) -> Option<Slot> {
    count.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < max).then_some(n + 1)).ok()?;
    Some(Slot(count.clone()))
}

impl Bridge {
    /// Sends a control message (no answer). It is never refused; false only
    /// when the worker is gone.
    pub fn tell(&self, request: Request) -> bool {
        let sent = self.queue.send(Queued { request, _slots: None }).is_ok();
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

    /// Queues a request to the main thread, within `share`, now; the answer
    /// comes on the returned receiver.
    pub fn request<T>(
        &self,
        share: &Share,
        make: impl FnOnce(oneshot::Sender<T>) -> Request,
    ) -> Result<oneshot::Receiver<T>, CallError> {
        let (tx, rx) = oneshot::channel();
        self.send(share, make(tx))?;
        Ok(rx)
    }

    /// Queues a request whose answer goes to the sender inside it.
    pub fn send(&self, share: &Share, request: Request) -> Result<(), CallError> {
        let mine = take(&share.in_flight, share.max).ok_or(CallError::Busy)?;
        let all = take(&self.in_flight, self.capacity).ok_or(CallError::Busy)?;
        let queued = Queued { request, _slots: Some((mine, all)) };
        self.queue.send(queued).map_err(|_| CallError::Gone)?;
        self.wake();
        Ok(())
    }

    /// Sends a request to the main thread, within `share`, and waits for its
    /// answer (the network side asks through `Shared::call`, which routes a
    /// standby's checks to the primary).
    #[cfg(test)]
    pub async fn call<T>(
        &self,
        share: &Share,
        make: impl FnOnce(oneshot::Sender<T>) -> Request,
    ) -> Result<T, CallError> {
        self.request(share, make)?.await.map_err(|_| CallError::Gone)
    }
}

impl Inbox {
    pub fn fd(&self) -> RawFd {
        self.wake.as_raw_fd()
    }

    /// Takes every queued request (resetting the eventfd first, so a request
    /// queued meanwhile wakes the next wait).
    pub fn drain(&self) -> Vec<Queued> {
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
        AuthContext { role: "anon".into(), claims_json: "{}".into(), sub: None, headers: None }
    }

    fn write(reply: oneshot::Sender<Result<bool, String>>) -> Request {
        Request::WritePermission { ctx: ctx(), topic: "room".into(), extension: Extension::Broadcast, reply }
    }

    #[test]
    fn requests_reach_the_inbox_and_answers_come_back() {
        let (bridge, inbox) = channel(4).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let share = Share::new(2);
        let call = std::thread::spawn(move || rt.block_on(bridge.call(&share, write)));
        let mut fds = libc::pollfd { fd: inbox.fd(), events: libc::POLLIN, revents: 0 };
        // SAFETY: polling one valid fd.
        assert_eq!(unsafe { libc::poll(&mut fds, 1, 5000) }, 1, "the eventfd must become readable");
        let mut queued = inbox.drain();
        assert_eq!(queued.len(), 1);
        let Request::WritePermission { topic, reply, .. } = queued.pop().unwrap().take() else { panic!() };
        assert_eq!(topic, "room");
        reply.send(Ok(true)).unwrap();
        assert_eq!(call.join().unwrap(), Ok(Ok(true)));
        assert!(inbox.drain().is_empty());
    }

    #[test]
    fn a_socket_over_its_share_is_busy_and_others_are_not() {
        let (bridge, inbox) = channel(100).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap();
        rt.block_on(async {
            let flooder = Share::new(2);
            let first = tokio::spawn({
                let (b, s) = (bridge.clone(), flooder.clone());
                async move { b.call(&s, write).await }
            });
            let second = tokio::spawn({
                let (b, s) = (bridge.clone(), flooder.clone());
                async move { b.call(&s, write).await }
            });
            tokio::task::yield_now().await;
            assert_eq!(bridge.call(&flooder, write).await, Err(CallError::Busy), "its third is refused");
            let other = Share::new(2);
            let theirs = tokio::spawn({
                let b = bridge.clone();
                async move { b.call(&other, write).await }
            });
            tokio::task::yield_now().await;
            // Answered in FIFO order; the slots come back as the requests go.
            for q in inbox.drain() {
                let Request::WritePermission { reply, .. } = q.take() else { panic!() };
                reply.send(Ok(true)).unwrap();
            }
            assert_eq!(theirs.await.unwrap(), Ok(Ok(true)));
            assert_eq!(first.await.unwrap(), Ok(Ok(true)));
            assert_eq!(second.await.unwrap(), Ok(Ok(true)));
            assert_eq!(flooder.in_flight.load(Ordering::Relaxed), 0);
        });
    }

    #[test]
    fn control_messages_are_never_refused_and_keep_their_order() {
        let (bridge, inbox) = channel(1).unwrap();
        for channel in 0..10 {
            assert!(bridge.tell(Request::UnsubscribeChanges { channel }));
        }
        let order: Vec<u64> = inbox
            .drain()
            .into_iter()
            .map(|q| match q.take() {
                Request::UnsubscribeChanges { channel } => channel,
                _ => panic!(),
            })
            .collect();
        assert_eq!(order, (0..10).collect::<Vec<_>>());
        drop(inbox);
        assert!(!bridge.tell(Request::UnsubscribeChanges { channel: 1 }), "false once the worker is gone");
    }
}
