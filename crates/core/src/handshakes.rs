//! Unauthenticated connections counted per client address, so that one host that opens
//! sockets and never authenticates cannot take every handshake slot of a listener.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard};

/// The unauthenticated connections of one listener, by address.
#[derive(Clone)]
pub struct Handshakes {
    counts: Arc<Mutex<HashMap<IpAddr, usize>>>,
    per_address: usize,
}

/// One unauthenticated connection, counted against its address until dropped.
pub struct Handshake {
    handshakes: Handshakes,
    addr: IpAddr,
}

impl Handshakes {
    /// At most `per_address` at once from one address.
    pub fn new(per_address: usize) -> Self {
        Handshakes {
            counts: Arc::default(),
            per_address,
        }
    }

    /// Counts a new connection from `addr`; `None` when that address already has its
    /// limit of unauthenticated ones.
    pub fn begin(&self, addr: IpAddr) -> Option<Handshake> {
        let mut counts = self.counts();
        let n = counts.entry(addr).or_insert(0);
        if *n >= self.per_address {
            return None;
        }
        *n += 1;
        Some(Handshake {
            handshakes: self.clone(),
            addr,
        })
    }

    fn counts(&self) -> MutexGuard<'_, HashMap<IpAddr, usize>> {
        self.counts.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Drop for Handshake {
    fn drop(&mut self) {
        let mut counts = self.handshakes.counts();
        if let Some(n) = counts.get_mut(&self.addr) {
            *n -= 1;
            if *n == 0 {
                counts.remove(&self.addr);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_address_has_its_own_limit_and_slots_come_back() {
        let handshakes = Handshakes::new(2);
        let (a, b): (IpAddr, IpAddr) = ([10, 0, 0, 1].into(), [10, 0, 0, 2].into());
        let first = handshakes.begin(a);
        let second = handshakes.begin(a);
        assert!(first.is_some() && second.is_some());
        assert!(handshakes.begin(a).is_none(), "a third from one address");
        assert!(handshakes.begin(b).is_some(), "another address");
        drop(first);
        assert!(handshakes.begin(a).is_some(), "a slot came back");
        drop(second);
        assert!(handshakes.counts().len() <= 1);
    }
}
