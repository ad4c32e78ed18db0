//! Clients that have just logged in, asked to park (`parking.rs`) if they are still silent
//! `PARK_AFTER` later: an idle client costs little soon after connecting, and one that sends
//! its first query at once (pgbench -C) never parks. One queue and one task serve every
//! client, so a login arms no timer of its own: each new timer earlier than the runtime's next
//! wake-up costs the runtime a write to its own eventfd and another pass of its loop.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use tokio::sync::Notify;

use crate::registry::ClientInfo;
use crate::stats::now_us;

/// How long a client that has sent nothing since it logged in stays on the runtime.
pub const PARK_AFTER: Duration = Duration::from_millis(100);

/// How often the queue is looked at while it holds clients: parking happens between
/// `PARK_AFTER` and `PARK_AFTER + LOOK_EVERY` after login, and logins in a burst share the
/// task's wake-ups.
const LOOK_EVERY: Duration = Duration::from_millis(25);

/// The clients logged in during the last `PARK_AFTER`, in login order.
#[derive(Debug, Default)]
pub struct FreshClients {
    /// When each may be asked to park (microseconds, `now_us`), and its registry entry.
    queue: Mutex<VecDeque<(u64, Weak<ClientInfo>)>>,
    /// A client joined an empty queue.
    added: Notify,
}

impl FreshClients {
    /// Remembers a client that may park and has just logged in.
    pub fn push(&self, client: &Arc<ClientInfo>) {
        let due = now_us() + PARK_AFTER.as_micros() as u64;
        let was_empty = {
            let mut queue = self.lock();
            queue.push_back((due, Arc::downgrade(client)));
            queue.len() == 1
        };
        if was_empty {
            self.added.notify_one();
        }
    }

    /// Asks the clients whose time has come to park, if they are still silent; forever.
    pub async fn run(&self) {
        loop {
            let empty = self.lock().is_empty();
            if empty {
                self.added.notified().await;
            }
            tokio::time::sleep(LOOK_EVERY).await;
            let now = now_us();
            let mut due = Vec::new();
            {
                let mut queue = self.lock();
                while queue.front().is_some_and(|(at, _)| *at <= now) {
                    due.extend(queue.pop_front().map(|(_, client)| client));
                }
            }
            for client in due.iter().filter_map(Weak::upgrade) {
                if client.silent_since_login() {
                    client.request_park();
                }
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<(u64, Weak<ClientInfo>)>> {
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::task::{Wake, Waker};

    use super::*;
    use crate::registry::{ClientState, Clients, Ends};

    /// A waker that records that it was woken.
    struct Flag(AtomicBool);

    impl Wake for Flag {
        fn wake(self: Arc<Self>) {
            self.0.store(true, Ordering::SeqCst);
        }
    }

    /// A logged-in client whose task waits idle, armed to be asked to park.
    fn idle_client(clients: &Clients) -> (Arc<ClientInfo>, Arc<Flag>) {
        let client = clients.register(Ends::default());
        client.set_state(ClientState::Active);
        let flag = Arc::new(Flag(AtomicBool::new(false)));
        client.arm_idle_waker(&Waker::from(flag.clone()));
        (client, flag)
    }

    #[tokio::test]
    async fn a_silent_client_is_asked_to_park_and_one_that_sent_a_request_is_not() {
        let clients = Clients::default();
        let fresh = Arc::new(FreshClients::default());
        let (busy, busy_woken) = idle_client(&clients);
        busy.request_us.store(now_us(), Ordering::Relaxed);
        let (silent, silent_woken) = idle_client(&clients);
        // In login order: the busy client's turn comes first.
        fresh.push(&busy);
        fresh.push(&silent);
        let task = tokio::spawn({
            let fresh = fresh.clone();
            async move { fresh.run().await }
        });
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while !silent_woken.0.load(Ordering::SeqCst) {
            assert!(
                std::time::Instant::now() < deadline,
                "the silent client was never asked to park"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(silent.take_park_request());
        assert!(!busy_woken.0.load(Ordering::SeqCst));
        assert!(!busy.take_park_request());
        assert!(fresh.lock().is_empty());
        task.abort();
    }
}
