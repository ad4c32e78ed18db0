//! Parked clients. A client that stays quiet after logging in gives up its task and its
//! socket's runtime registration, the two largest parts of an idle client, and waits in one
//! table watched by the parking thread's epoll. Its first byte puts it back on the runtime in
//! a new task, where its session carries on where it stopped. Only plaintext clients that hold
//! no server connection park (`Session::may_park`). The parking thread also closes parked
//! clients that stay idle past `client_idle_timeout`.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};

use crate::app::ClientSlot;
use crate::client::built_in_box;
use crate::relay::Session;

/// A parked client: its session, whose socket is off the runtime, and its place among the
/// clients (`max_client_conn`, the registry).
#[derive(Debug)]
pub struct Parked {
    pub session: Session,
    pub slot: ClientSlot,
}

/// Why a parked client leaves the table.
enum Wake {
    /// Its socket turned readable: bytes, or the client closing.
    Readable,
    /// It stayed idle past `client_idle_timeout`.
    IdleTimeout,
}

/// The parking thread wakes at least this often to close clients past `client_idle_timeout`.
const IDLE_CHECK: Duration = Duration::from_secs(1);

/// The parked clients and, for `client_idle_timeout`, when each must be closed.
#[derive(Debug, Default)]
struct Table {
    /// By client id (also their poll token). Boxed: the map keeps spare capacity, and a spare
    /// slot costs a pointer rather than a whole session.
    clients: HashMap<u64, (Box<Parked>, Option<Instant>)>,
    /// (deadline, client id), soonest first; stale entries (the client resumed or left) are
    /// skipped when they come up.
    deadlines: BinaryHeap<Reverse<(Instant, u64)>>,
}

/// The parking table and the thread that watches it.
#[derive(Debug)]
pub struct Parking {
    registry: mio::Registry,
    table: Mutex<Table>,
    /// The runtime resumed clients run on without workers (`workers.rs`); with them, they
    /// take turns on the active workers.
    runtime: tokio::runtime::Handle,
    next_runtime: AtomicUsize,
}

impl Parking {
    /// Starts the parking thread; call from within a worker's runtime.
    pub fn start() -> io::Result<Arc<Parking>> {
        let poll = Poll::new()?;
        let parking = Arc::new(Parking {
            registry: poll.registry().try_clone()?,
            table: Mutex::default(),
            runtime: tokio::runtime::Handle::current(),
            next_runtime: Default::default(),
        });
        let watcher = parking.clone();
        std::thread::Builder::new()
            .name("pgberth-parking".into())
            .spawn(move || watcher.watch(poll))?;
        Ok(parking)
    }

    fn table(&self) -> MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Parks a client whose socket is already off the runtime (`Stream::take_off_runtime`).
    /// On failure the client is resumed at once, so it is never lost. With a
    /// `client_idle_timeout`, the client has been idle at least `PARK_AFTER` already.
    pub fn park(&self, parked: Parked, fd: std::os::fd::RawFd) {
        let id = parked.slot.info.id;
        let idle_timeout = parked
            .session
            .app()
            .config_now()
            .general
            .client_idle_timeout;
        let deadline = (!idle_timeout.is_zero())
            .then(|| Instant::now() + idle_timeout.saturating_sub(crate::fresh::PARK_AFTER));
        let mut table = self.table();
        // KILL_CLIENT finds the client here from now on.
        parked.slot.info.set_abort(None);
        parked.slot.info.disarm_idle_waker();
        table.clients.insert(id, (Box::new(parked), deadline));
        if let Some(deadline) = deadline {
            table.deadlines.push(Reverse((deadline, id)));
        }
        let token = Token(id as usize);
        if let Err(e) = self
            .registry
            .register(&mut SourceFd(&fd), token, Interest::READABLE)
        {
            tracing::warn!("could not park an idle client, it resumes at once: {e}");
            if let Some((parked, _)) = table.clients.remove(&id) {
                self.wake(parked, Wake::Readable);
            }
        }
    }

    /// Closes a parked client (KILL_CLIENT, KILL). False when it is not parked.
    pub fn evict(&self, id: u64) -> bool {
        let parked = self.table().clients.remove(&id);
        match parked {
            Some((parked, _)) => {
                self.forget(&parked);
                true
            }
            None => false,
        }
    }

    /// How many clients are parked now.
    pub fn len(&self) -> usize {
        self.table().clients.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn forget(&self, parked: &Parked) {
        if let Some(fd) = parked.session.parked_fd() {
            let _ = self.registry.deregister(&mut SourceFd(&fd));
        }
    }

    /// Gives a client taken out of the table a new task: to carry on, or to be closed. Called
    /// with the table locked, so that KILL_CLIENT finds the client either parked or with its
    /// new task's abort handle.
    fn wake(&self, parked: Box<Parked>, why: Wake) {
        self.forget(&parked);
        let info = parked.slot.info.clone();
        let runtime = match crate::workers::active_handles() {
            [] => &self.runtime,
            active => &active[self.next_runtime.fetch_add(1, Ordering::Relaxed) % active.len()],
        };
        let task = match why {
            Wake::Readable => runtime.spawn(built_in_box(|| crate::client::resume(*parked))),
            Wake::IdleTimeout => runtime.spawn(built_in_box(|| crate::client::close_idle(*parked))),
        };
        info.set_abort(Some(task.abort_handle()));
    }

    /// The parking thread: resumes each client whose socket turns readable (bytes, or the
    /// client closing), and closes those past their `client_idle_timeout`.
    fn watch(&self, mut poll: Poll) {
        let mut events = Events::with_capacity(256);
        loop {
            let timeout = self
                .table()
                .deadlines
                .peek()
                .map_or(IDLE_CHECK, |Reverse((at, _))| {
                    at.saturating_duration_since(Instant::now()).min(IDLE_CHECK)
                });
            if let Err(e) = poll.poll(&mut events, Some(timeout)) {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                tracing::error!("the parking thread stopped: {e}");
                return;
            }
            let mut table = self.table();
            for event in events.iter() {
                if let Some((parked, _)) = table.clients.remove(&(event.token().0 as u64)) {
                    self.wake(parked, Wake::Readable);
                }
            }
            let now = Instant::now();
            while let Some(&Reverse((at, id))) = table.deadlines.peek() {
                if at > now {
                    break;
                }
                table.deadlines.pop();
                // Skipped when the client resumed (and perhaps parked again) since.
                if table.clients.get(&id).is_some_and(|(_, d)| *d == Some(at))
                    && let Some((parked, _)) = table.clients.remove(&id)
                {
                    self.wake(parked, Wake::IdleTimeout);
                }
            }
        }
    }
}
