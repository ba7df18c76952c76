//! Which TCP connections may wait to become WebSockets (or finish a REST
//! call). Their number is bounded, so idle connections cannot use up the
//! worker's descriptors; but refusing new ones when full would let anyone
//! who opens a few hundred idle connections lock every client out. So a new
//! connection is always admitted, and the oldest pending one makes room: one
//! of its own address's when that address already holds its share, the
//! oldest of all otherwise. A real client sends its request within
//! milliseconds of connecting; an attacker would have to open the whole
//! bound's worth of connections in that time to push it out.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use tokio::sync::Notify;

/// Connections not yet upgraded, at most.
pub const MAX_PENDING: usize = 256;
/// Of those, from one address at most.
pub const MAX_PENDING_PER_ADDRESS: usize = 64;

#[derive(Default)]
struct Pending {
    next_id: u64,
    /// By age: the smallest id is the oldest.
    by_age: BTreeMap<u64, (IpAddr, Arc<Notify>)>,
    per_address: HashMap<IpAddr, usize>,
}

impl Pending {
    fn remove(&mut self, id: u64) -> Option<Arc<Notify>> {
        let (address, evicted) = self.by_age.remove(&id)?;
        if let Some(n) = self.per_address.get_mut(&address) {
            *n -= 1;
            if *n == 0 {
                self.per_address.remove(&address);
            }
        }
        Some(evicted)
    }
}

pub struct Admission {
    pending: Mutex<Pending>,
    max: usize,
    max_per_address: usize,
}

/// One admitted connection: pending until dropped, or evicted.
pub struct Ticket {
    admission: Arc<Admission>,
    id: u64,
    evicted: Arc<Notify>,
}

impl Ticket {
    /// Resolves when a newer connection took this one's place.
    pub async fn evicted(&self) {
        self.evicted.notified().await
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.admission.lock().remove(self.id);
    }
}

impl Admission {
    pub fn new(max: usize, max_per_address: usize) -> Arc<Admission> {
        Arc::new(Admission { pending: Mutex::default(), max: max.max(1), max_per_address: max_per_address.max(1) })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Pending> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Connections pending now.
    pub fn pending(&self) -> usize {
        self.lock().by_age.len()
    }

    /// Admits a connection from `address`, evicting the oldest pending one
    /// (of that address if it holds its share) when the bound is reached.
    pub fn admit(self: &Arc<Self>, address: IpAddr) -> Ticket {
        let mut pending = self.lock();
        let crowded = pending.per_address.get(&address).copied().unwrap_or(0) >= self.max_per_address;
        let oldest = if crowded {
            pending.by_age.iter().find(|(_, (a, _))| *a == address).map(|(id, _)| *id)
        } else if pending.by_age.len() >= self.max {
            pending.by_age.keys().next().copied()
        } else {
            None
        };
        if let Some(evicted) = oldest.and_then(|id| pending.remove(id)) {
            // Stored if its task is not waiting yet: it ends at its next look.
            evicted.notify_one();
        }
        let id = pending.next_id;
        pending.next_id += 1;
        let evicted = Arc::new(Notify::new());
        pending.by_age.insert(id, (address, evicted.clone()));
        *pending.per_address.entry(address).or_default() += 1;
        Ticket { admission: self.clone(), id, evicted }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn ip(n: u8) -> IpAddr {
        IpAddr::from([10, 0, 0, n])
    }

    async fn is_evicted(t: &Ticket) -> bool {
        tokio::time::timeout(Duration::from_millis(10), t.evicted()).await.is_ok()
    }

    #[tokio::test]
    async fn one_address_cannot_hold_more_than_its_share() {
        let admission = Admission::new(10, 3);
        let tickets: Vec<Ticket> = (0..5).map(|_| admission.admit(ip(1))).collect();
        assert_eq!(admission.pending(), 3);
        assert!(is_evicted(&tickets[0]).await && is_evicted(&tickets[1]).await);
        assert!(!is_evicted(&tickets[2]).await && !is_evicted(&tickets[4]).await);
        // Another address is admitted without evicting anyone else's.
        let other = admission.admit(ip(2));
        assert!(!is_evicted(&other).await && !is_evicted(&tickets[2]).await);
        assert_eq!(admission.pending(), 4);
    }

    #[tokio::test]
    async fn when_full_the_oldest_makes_room_and_a_new_connection_always_gets_in() {
        let admission = Admission::new(4, 4);
        let old: Vec<Ticket> = (1..=4).map(|n| admission.admit(ip(n))).collect();
        let newcomer = admission.admit(ip(9));
        assert!(is_evicted(&old[0]).await);
        assert!(!is_evicted(&newcomer).await && !is_evicted(&old[1]).await);
        assert_eq!(admission.pending(), 4);
    }

    #[tokio::test]
    async fn dropped_tickets_free_their_place() {
        let admission = Admission::new(2, 1);
        let a = admission.admit(ip(1));
        drop(a);
        let b = admission.admit(ip(1));
        assert!(!is_evicted(&b).await);
        assert_eq!(admission.pending(), 1);
        drop(b);
        assert_eq!(admission.pending(), 0);
        assert!(admission.lock().per_address.is_empty());
    }
}
