//! Where a request for the database goes: to this node's main thread, or,
//! on a hot standby, a permission check (whose probe writes) to the primary
//! over `realtime.primary_conninfo`. The routing policy, kept out of the
//! state it reads.

use super::relay;
use super::shared::Shared;
use crate::bridge::queue::CallError;
use crate::bridge::{Request, Share};
use std::sync::Arc;
use tokio::sync::oneshot;

/// Sends the request `make` builds where it is answered; its answer comes
/// on the receiver.
pub fn request<T>(
    shared: &Arc<Shared>,
    share: &Share,
    make: impl FnOnce(oneshot::Sender<T>) -> Request,
) -> Result<oneshot::Receiver<T>, CallError> {
    let (tx, rx) = oneshot::channel();
    let request = make(tx);
    match on_primary(shared, &request) {
        Some(conninfo) => {
            let room = shared.nodes.primary.checks.clone().try_acquire_owned().map_err(|_| CallError::Busy)?;
            let shared = shared.clone();
            tokio::spawn(async move {
                relay::check(shared, conninfo, request).await;
                drop(room);
            });
        }
        None => shared.bridge.send(share, request)?,
    }
    Ok(rx)
}

/// [`request`], and waits for the answer.
pub async fn call<T>(
    shared: &Arc<Shared>,
    share: &Share,
    make: impl FnOnce(oneshot::Sender<T>) -> Request,
) -> Result<T, CallError> {
    request(shared, share, make)?.await.map_err(|_| CallError::Gone)
}

/// The primary's conninfo when `request` must be answered there.
fn on_primary(shared: &Shared, request: &Request) -> Option<String> {
    if !matches!(request, Request::ReadPermissions { .. } | Request::WritePermission { .. }) {
        return None;
    }
    shared.config().settings.bus.as_ref().and_then(|b| b.primary_conninfo.clone())
}
