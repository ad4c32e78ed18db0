//! Cancel routing. A client's BackendKeyData is its registry id (random and unique among
//! connected clients) and a random secret, so the registry is the cancel map. The client's
//! entry holds the backend key of the server connection it holds *now* (written by its task at
//! checkout and checkin, one atomic store each, no lock). A cancel for a client that holds no
//! server connection is dropped.

use std::sync::Arc;

use crate::pool::Pool;
use crate::registry::Clients;

/// Where a cancel for a client goes: the server connection's own backend key and its pool.
#[derive(Debug, Clone)]
pub struct CancelTarget {
    pub pool: Arc<Pool>,
    pub backend_pid: u32,
    pub backend_secret: u32,
}

/// The server connection to cancel for a client's key, if the key is right and the client
/// holds one.
pub fn lookup(clients: &Clients, pid: u32, secret: u32) -> Option<CancelTarget> {
    let client = clients.get(u64::from(pid))?;
    if client.cancel_secret != secret {
        return None;
    }
    let (backend_pid, backend_secret) = client.held_backend()?;
    let pool = client.login()?.pool.clone()?;
    Some(CancelTarget {
        pool,
        backend_pid,
        backend_secret,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_unique_and_need_the_right_secret() {
        let clients = Clients::default();
        let a = clients.register(Default::default());
        let b = clients.register(Default::default());
        assert_ne!(a.id, b.id);
        assert!(a.id > 0 && a.id < 1 << 31, "fits a BackendKeyData pid");
        let pid = a.id as u32;
        assert!(
            lookup(&clients, pid, a.cancel_secret).is_none(),
            "no login yet"
        );
        a.hold_backend(Some((7, 8)));
        assert!(lookup(&clients, pid, a.cancel_secret.wrapping_add(1)).is_none());
        clients.unregister(&a);
        assert!(lookup(&clients, pid, a.cancel_secret).is_none());
    }
}
