//! Cancel routing. Every client gets a random BackendKeyData of its own; this map points that
//! key at the client's registry entry, which holds the backend key of the server connection
//! the client holds *now* (written by the client's task at checkout and checkin, one atomic
//! store each, no lock). A cancel for a client that holds no server connection is dropped.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::pool::Pool;
use crate::registry::ClientInfo;

const SHARDS: usize = 16;

/// The key pgberth gave a client in its BackendKeyData.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ClientKey {
    pub pid: u32,
    pub secret: u32,
}

/// Where a cancel for a client goes: the server connection's own backend key and its pool.
#[derive(Debug, Clone)]
pub struct CancelTarget {
    pub pool: Arc<Pool>,
    pub backend_pid: u32,
    pub backend_secret: u32,
}

#[derive(Debug)]
struct Entry {
    secret: u32,
    client: Arc<ClientInfo>,
}

/// Client keys → the clients, sharded to keep lock hold short.
#[derive(Debug, Default)]
pub struct CancelMap {
    shards: [Mutex<HashMap<u32, Entry>>; SHARDS],
}

impl CancelMap {
    fn shard(&self, pid: u32) -> std::sync::MutexGuard<'_, HashMap<u32, Entry>> {
        self.shards[pid as usize % SHARDS]
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// Gives a new client a unique random key.
    pub fn register(&self, client: &Arc<ClientInfo>) -> ClientKey {
        loop {
            let pid: u32 = rand::random::<u32>() & 0x7fff_ffff;
            let secret: u32 = rand::random();
            let mut shard = self.shard(pid);
            if pid != 0 && !shard.contains_key(&pid) {
                shard.insert(
                    pid,
                    Entry {
                        secret,
                        client: client.clone(),
                    },
                );
                return ClientKey { pid, secret };
            }
        }
    }

    pub fn unregister(&self, key: ClientKey) {
        self.shard(key.pid).remove(&key.pid);
    }

    /// The server connection to cancel for a client's key, if the key is right and the client
    /// holds one.
    pub fn lookup(&self, pid: u32, secret: u32) -> Option<CancelTarget> {
        let client = {
            let shard = self.shard(pid);
            let entry = shard.get(&pid)?;
            if entry.secret != secret {
                return None;
            }
            entry.client.clone()
        };
        let (backend_pid, backend_secret) = client.held_backend()?;
        let pool = client.login()?.pool.clone()?;
        Some(CancelTarget {
            pool,
            backend_pid,
            backend_secret,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_unique_and_need_the_right_secret() {
        let map = CancelMap::default();
        let clients = crate::registry::Clients::default();
        let info = clients.register(Default::default());
        let a = map.register(&info);
        let b = map.register(&info);
        assert_ne!(a.pid, b.pid);
        assert!(map.lookup(a.pid, a.secret).is_none(), "no server held yet");
        info.hold_backend(Some((7, 8)));
        assert!(map.lookup(a.pid, a.secret.wrapping_add(1)).is_none());
        map.unregister(a);
        assert!(map.lookup(a.pid, a.secret).is_none());
    }
}
