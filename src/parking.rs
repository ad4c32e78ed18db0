//! Parked clients. A client that stays quiet after logging in gives up its task and its
//! socket's runtime registration, the two largest parts of an idle client, and waits in one
//! table watched by the parking thread's epoll. Its first byte puts it back on the runtime in
//! a new task, where its session carries on where it stopped. Only plaintext clients that hold
//! no server connection park (`Session::may_park`).

use std::collections::HashMap;
use std::io;
use std::sync::{Arc, Mutex, MutexGuard};

use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};

use crate::app::ClientSlot;
use crate::relay::Session;

/// A parked client: its session, whose socket is off the runtime, and its place among the
/// clients (`max_client_conn`, the registry).
#[derive(Debug)]
pub struct Parked {
    pub session: Session,
    pub slot: ClientSlot,
}

/// The parking table and the thread that watches it.
#[derive(Debug)]
pub struct Parking {
    registry: mio::Registry,
    /// Parked clients by client id (also their poll token). Boxed: the table keeps spare
    /// capacity, and a spare slot costs a pointer rather than a whole session.
    table: Mutex<HashMap<u64, Box<Parked>>>,
    runtime: tokio::runtime::Handle,
}

impl Parking {
    /// Starts the parking thread; call from within the runtime that resumed clients run on.
    pub fn start() -> io::Result<Arc<Parking>> {
        let poll = Poll::new()?;
        let parking = Arc::new(Parking {
            registry: poll.registry().try_clone()?,
            table: Mutex::new(HashMap::new()),
            runtime: tokio::runtime::Handle::current(),
        });
        let watcher = parking.clone();
        std::thread::Builder::new()
            .name("pgberth-parking".into())
            .spawn(move || watcher.watch(poll))?;
        Ok(parking)
    }

    fn table(&self) -> MutexGuard<'_, HashMap<u64, Box<Parked>>> {
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Parks a client whose socket is already off the runtime (`Stream::take_off_runtime`).
    /// On failure the client is resumed at once, so it is never lost.
    pub fn park(&self, parked: Parked, fd: std::os::fd::RawFd) {
        let id = parked.slot.info.id;
        let mut table = self.table();
        // KILL_CLIENT finds the client here from now on.
        parked.slot.info.set_abort(None);
        parked.slot.info.disarm_idle_waker();
        table.insert(id, Box::new(parked));
        let token = Token(id as usize);
        if let Err(e) = self
            .registry
            .register(&mut SourceFd(&fd), token, Interest::READABLE)
        {
            tracing::warn!("could not park an idle client, it resumes at once: {e}");
            if let Some(parked) = table.remove(&id) {
                self.resume(parked);
            }
        }
    }

    /// Closes a parked client (KILL_CLIENT, KILL). False when it is not parked.
    pub fn evict(&self, id: u64) -> bool {
        let parked = self.table().remove(&id);
        match parked {
            Some(parked) => {
                self.forget(&parked);
                true
            }
            None => false,
        }
    }

    /// How many clients are parked now.
    pub fn len(&self) -> usize {
        self.table().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn forget(&self, parked: &Parked) {
        if let Some(fd) = parked.session.parked_fd() {
            let _ = self.registry.deregister(&mut SourceFd(&fd));
        }
    }

    /// Gives a client a new task. Called with the table locked, so that KILL_CLIENT finds the
    /// client either parked or with its new task's abort handle.
    fn resume(&self, parked: Box<Parked>) {
        self.forget(&parked);
        let info = parked.slot.info.clone();
        let task = self.runtime.spawn(crate::client::resume(*parked));
        info.set_abort(Some(task.abort_handle()));
    }

    /// The parking thread: resumes each client whose socket turns readable (bytes, or the
    /// client closing).
    fn watch(&self, mut poll: Poll) {
        let mut events = Events::with_capacity(256);
        loop {
            if let Err(e) = poll.poll(&mut events, None) {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                tracing::error!("the parking thread stopped: {e}");
                return;
            }
            let mut table = self.table();
            for event in events.iter() {
                if let Some(parked) = table.remove(&(event.token().0 as u64)) {
                    self.resume(parked);
                }
            }
        }
    }
}
