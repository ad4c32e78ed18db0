//! Who is connected: every client from accept to close, with what SHOW CLIENTS, SHOW POOLS
//! (waiting times) and KILL_CLIENT need, and its statistics counters (`stats.rs`). An entry is
//! created at accept, filled in at login, and removed when the client's task ends, at which
//! point its counters are folded into its pool's totals. The registry lock is taken at accept,
//! at close and by the console, never per message.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::task::Waker;

use tokio::task::AbortHandle;

use crate::pool::Pool;
use crate::stats::{LiveCounters, Stat, now_us};
use crate::stream::Stream;

/// What a client is doing, as SHOW CLIENTS and SHOW POOLS name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum ClientState {
    /// Connected, not logged in yet.
    Login = 0,
    /// Logged in: holding a server connection or idle between transactions.
    Active = 1,
    /// Waiting for a server connection.
    Waiting = 2,
}

impl ClientState {
    pub fn name(self) -> &'static str {
        match self {
            ClientState::Login => "login",
            ClientState::Active => "active",
            ClientState::Waiting => "waiting",
        }
    }
}

/// The addresses of a connection's two ends (`None` for a unix socket).
#[derive(Debug, Clone, Copy, Default)]
pub struct Ends {
    pub remote: Option<SocketAddr>,
    pub local: Option<SocketAddr>,
}

impl Ends {
    pub fn of(stream: &Stream) -> Ends {
        match stream.tcp() {
            Some(tcp) => Ends {
                remote: tcp.peer_addr().ok(),
                local: tcp.local_addr().ok(),
            },
            None => Ends::default(),
        }
    }
}

/// What is known of a client once it has logged in.
#[derive(Debug)]
pub struct ClientLogin {
    pub user: Box<str>,
    pub database: Box<str>,
    /// `None` for the admin console.
    pub pool: Option<Arc<Pool>>,
    /// How the pool lends the client server connections (the console's: session).
    pub mode: crate::config::PoolMode,
    /// TLS version and cipher, empty without TLS.
    pub tls: Box<str>,
    pub application_name: Box<str>,
}

/// One connected client.
#[derive(Debug)]
pub struct ClientInfo {
    /// Random, unique among connected clients, below 2^31: also the process id in the
    /// client's BackendKeyData (`cancel.rs`).
    pub id: u64,
    /// The secret in the client's BackendKeyData.
    pub cancel_secret: u32,
    pub ends: Ends,
    /// [`now_us`] at accept.
    pub connected_us: u64,
    login: OnceLock<ClientLogin>,
    state: AtomicU8,
    /// The backend key (pid << 32 | secret) of the server connection held now, 0 for none:
    /// where a cancel request goes.
    held_backend: AtomicU64,
    /// [`now_us`] when the client last sent a request; the start of the current query.
    pub request_us: AtomicU64,
    /// [`now_us`] when the current transaction started, 0 outside one.
    pub xact_start_us: AtomicU64,
    /// [`now_us`] when the client began waiting for a server connection.
    pub wait_since_us: AtomicU64,
    /// Named prepared statements the client has now (transaction and statement mode).
    pub prepared: AtomicU64,
    pub counters: LiveCounters,
    /// The client's current task (a parked client gets a new one when it resumes).
    abort: Mutex<Option<AbortHandle>>,
    /// The task of a client waiting idle that may park, to wake when it has been idle long
    /// enough (`App::maintenance`). Set once per task, not per wait.
    idle_waker: Mutex<Option<Waker>>,
    /// `idle_waker` holds the current task's waker.
    waker_armed: AtomicBool,
    /// Set by `fresh.rs` or the upkeep: the client has been idle a while and should park.
    park_requested: AtomicBool,
    /// KILL_CLIENT or KILL ended it; a task recorded for it later ends too (`set_abort`).
    killed: AtomicBool,
}

impl ClientInfo {
    pub fn login(&self) -> Option<&ClientLogin> {
        self.login.get()
    }

    pub fn state(&self) -> ClientState {
        match self.state.load(Ordering::Relaxed) {
            1 => ClientState::Active,
            2 => ClientState::Waiting,
            _ => ClientState::Login,
        }
    }

    /// Sets the state. Call only from the client's own task.
    pub fn set_state(&self, state: ClientState) {
        self.state.store(state as u8, Ordering::Relaxed);
    }

    /// Records the backend key of the server connection the client now holds (`None`: it
    /// holds none). Call only from the client's own task.
    pub fn hold_backend(&self, key: Option<(u32, u32)>) {
        let packed = key.map_or(0, |(pid, secret)| {
            (u64::from(pid) << 32) | u64::from(secret)
        });
        self.held_backend.store(packed, Ordering::Release);
    }

    /// The backend key of the server connection the client holds now.
    pub fn held_backend(&self) -> Option<(u32, u32)> {
        match self.held_backend.load(Ordering::Acquire) {
            0 => None,
            packed => Some(((packed >> 32) as u32, packed as u32)),
        }
    }

    /// The database and user shown for it (empty before login).
    pub fn names(&self) -> (&str, &str) {
        self.login().map_or(("", ""), |l| (&*l.database, &*l.user))
    }

    /// Records the login; the client counts as logged in to its pool from now on.
    pub fn logged_in(&self, login: ClientLogin) {
        let counted = login.pool.is_some();
        let _ = self.login.set(login);
        if counted {
            self.counters.bump(Stat::ClientLoginCount, 1);
        }
        self.set_state(ClientState::Active);
    }

    /// Records the client's current task, for KILL_CLIENT; `None` when it parks (a handle
    /// would keep the ended task's memory). A task recorded after the client was killed (it
    /// was between tasks: resuming, moving to another worker) is ended at once.
    pub fn set_abort(&self, handle: Option<AbortHandle>) {
        let mut abort = self.abort.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(task) = &handle
            && self.killed.load(Ordering::Acquire)
        {
            task.abort();
        }
        *abort = handle;
    }

    /// Lets the upkeep wake this client's task to park it, unless it already can. Called by
    /// an idle task that may park: one atomic load, and the lock only once per task.
    pub fn arm_idle_waker(&self, waker: &Waker) {
        if !self.waker_armed.load(Ordering::Acquire) {
            *self.idle_waker.lock().unwrap_or_else(|e| e.into_inner()) = Some(waker.clone());
            self.waker_armed.store(true, Ordering::Release);
        }
    }

    /// Forgets the waker of a task that ended (parked): it would keep the task's memory.
    pub fn disarm_idle_waker(&self) {
        self.waker_armed.store(false, Ordering::Release);
        self.park_requested.store(false, Ordering::Release);
        *self.idle_waker.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }

    /// Asks an idle client to park, if its task waits idle and may park.
    pub fn request_park(&self) {
        if !self.waker_armed.swap(false, Ordering::AcqRel) {
            return;
        }
        let waker = self
            .idle_waker
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(waker) = waker {
            self.park_requested.store(true, Ordering::Release);
            waker.wake();
        }
    }

    /// Whether this client was asked to park; the request is consumed.
    pub fn take_park_request(&self) -> bool {
        // A plain load first: no read-modify-write per idle wait.
        self.park_requested.load(Ordering::Acquire)
            && self.park_requested.swap(false, Ordering::AcqRel)
    }

    /// Whether the client has been idle (between requests, holding no server connection) since
    /// before `since_us`.
    pub fn idle_since_before(&self, since_us: u64) -> bool {
        let last = self
            .request_us
            .load(Ordering::Relaxed)
            .max(self.connected_us);
        self.idle() && last < since_us
    }

    /// Whether the client has sent no request since it logged in, and holds no server
    /// connection.
    pub fn silent_since_login(&self) -> bool {
        self.idle() && self.request_us.load(Ordering::Relaxed) == 0
    }

    fn idle(&self) -> bool {
        self.state() == ClientState::Active && self.held_backend().is_none()
    }

    /// Microseconds the client has waited for a server connection (0 when not waiting).
    pub fn waited_us(&self, now: u64) -> u64 {
        if self.state() != ClientState::Waiting {
            return 0;
        }
        now.saturating_sub(self.wait_since_us.load(Ordering::Relaxed))
    }

    /// Ends the client's task (KILL_CLIENT, KILL). Its server connection, if any, is closed.
    pub fn kill(&self) -> bool {
        self.killed.store(true, Ordering::Release);
        match &*self.abort.lock().unwrap_or_else(|e| e.into_inner()) {
            Some(handle) => {
                handle.abort();
                true
            }
            None => false,
        }
    }
}

/// The clients of one pgberth.
#[derive(Debug, Default)]
pub struct Clients {
    map: Mutex<HashMap<u64, Arc<ClientInfo>>>,
}

impl Clients {
    /// Registers a client just accepted.
    pub fn register(&self, ends: Ends) -> Arc<ClientInfo> {
        let mut map = self.lock();
        let id = loop {
            let id = u64::from(rand::random::<u32>() & 0x7fff_ffff);
            if id != 0 && !map.contains_key(&id) {
                break id;
            }
        };
        let info = Arc::new(ClientInfo {
            id,
            cancel_secret: rand::random(),
            ends,
            connected_us: now_us(),
            login: OnceLock::new(),
            state: AtomicU8::new(ClientState::Login as u8),
            held_backend: AtomicU64::new(0),
            request_us: AtomicU64::new(0),
            xact_start_us: AtomicU64::new(0),
            wait_since_us: AtomicU64::new(0),
            prepared: AtomicU64::new(0),
            counters: LiveCounters::default(),
            abort: Mutex::new(None),
            idle_waker: Mutex::new(None),
            waker_armed: AtomicBool::new(false),
            park_requested: AtomicBool::new(false),
            killed: AtomicBool::new(false),
        });
        map.insert(id, info.clone());
        info
    }

    /// Removes a client whose task ended, folding its counters into its pool's totals under
    /// the registry lock, so that a reader never misses them.
    pub fn unregister(&self, info: &ClientInfo) {
        let mut map = self.lock();
        map.remove(&info.id);
        if let Some(pool) = info.login().and_then(|l| l.pool.as_ref()) {
            pool.add_departed(&info.counters.snapshot());
        }
    }

    /// The registry, locked: the console reads it whole.
    pub fn lock(&self) -> MutexGuard<'_, HashMap<u64, Arc<ClientInfo>>> {
        self.map.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn get(&self, id: u64) -> Option<Arc<ClientInfo>> {
        self.lock().get(&id).cloned()
    }
}

/// A TLS connection's protocol version and cipher suite, as SHOW CLIENTS prints them.
pub fn tls_description(stream: &Stream) -> Box<str> {
    let (version, suite) = match stream {
        Stream::TlsFromClient(s) => {
            let c = s.get_ref().1;
            (c.protocol_version(), c.negotiated_cipher_suite())
        }
        Stream::TlsToServer(s) => {
            let c = s.get_ref().1;
            (c.protocol_version(), c.negotiated_cipher_suite())
        }
        _ => return "".into(),
    };
    let version = match version {
        Some(rustls::ProtocolVersion::TLSv1_3) => "TLSv1.3".to_string(),
        Some(rustls::ProtocolVersion::TLSv1_2) => "TLSv1.2".to_string(),
        Some(other) => format!("{other:?}"),
        None => "TLS".to_string(),
    };
    let suite = suite.map_or(String::new(), |s| {
        s.suite().as_str().unwrap_or("").to_string()
    });
    format!("{version}/{suite}").into()
}

/// What a server connection is doing, as SHOW SERVERS names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum ServerState {
    /// In the pool, ready for a client.
    Idle = 0,
    /// Held by a client.
    Active = 1,
}

/// One logged-in server connection; owned by its pool's list (`Pool::servers`) and by the
/// connection itself.
#[derive(Debug)]
pub struct ServerInfo {
    pub id: u64,
    pub ends: Ends,
    pub connected_us: u64,
    pub remote_pid: u32,
    pub tls: Box<str>,
    pub application_name: Box<str>,
    /// The pool generation it was opened in: an older one means it closes when released.
    pub generation: u64,
    state: AtomicU8,
    /// The client holding it (its id), 0 for none.
    pub link: AtomicU64,
    /// [`now_us`] when a client last returned it.
    pub request_us: AtomicU64,
    /// Statements pgberth has prepared on it.
    pub prepared: AtomicU64,
}

impl ServerInfo {
    pub fn new(
        id: u64,
        stream: &Stream,
        remote_pid: u32,
        application_name: &str,
        generation: u64,
    ) -> ServerInfo {
        let now = now_us();
        ServerInfo {
            id,
            ends: Ends::of(stream),
            connected_us: now,
            remote_pid,
            tls: tls_description(stream),
            application_name: application_name.into(),
            generation,
            state: AtomicU8::new(ServerState::Idle as u8),
            link: AtomicU64::new(0),
            request_us: AtomicU64::new(now),
            prepared: AtomicU64::new(0),
        }
    }

    pub fn state(&self) -> ServerState {
        if self.state.load(Ordering::Relaxed) == ServerState::Active as u8 {
            ServerState::Active
        } else {
            ServerState::Idle
        }
    }

    /// Marks it held by client `client`.
    pub fn held_by(&self, client: u64) {
        self.state
            .store(ServerState::Active as u8, Ordering::Relaxed);
        self.link.store(client, Ordering::Relaxed);
    }

    /// Marks it back in the pool at `at_us` ([`now_us`] time), with `prepared` statements.
    pub fn released(&self, at_us: u64, prepared: usize) {
        self.state.store(ServerState::Idle as u8, Ordering::Relaxed);
        self.link.store(0, Ordering::Relaxed);
        self.request_us.store(at_us, Ordering::Relaxed);
        self.prepared.store(prepared as u64, Ordering::Relaxed);
    }
}
