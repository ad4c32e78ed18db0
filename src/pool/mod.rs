//! Server connection pools, one per (database, user): idle connections in a LIFO, clients
//! waiting in a FIFO, the pool size and reserve, and the shared database and user limits.
//!
//! Every open server connection holds a [`Slot`]; dropping the connection (anywhere, for any
//! reason) frees its slot and lets the next waiting client open a new one. Nothing is dropped
//! while a pool's lock is held.

mod control;
mod limit;
mod settings;

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use tokio::sync::oneshot;

pub use control::PauseMode;
pub use limit::Limit;
pub use settings::PoolSettings;

use crate::config::Secret;
use crate::prepared::ServerStatements;
use crate::protocol::TxStatus;
use crate::registry::ServerInfo;
use crate::server::{self, ServerConnectError, ServerPassword};
use crate::stream::Stream;

/// Which pool: the database name clients use and the user pgberth logs in to the server as.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PoolKey {
    pub database: String,
    pub user: String,
}

/// A session parameter value to apply with SET: a client's startup parameter (a plain value,
/// quoted when sent) or the SQL text of a client's own `SET name TO …`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ParamValue {
    Plain(String),
    Sql(String),
}

impl ParamValue {
    /// The value as SQL, for `SET name TO <value>`.
    pub fn sql(&self) -> String {
        match self {
            ParamValue::Plain(v) => crate::sql::quote_literal(v),
            ParamValue::Sql(v) => v.clone(),
        }
    }
}

/// Identifies a server connection in logs and the admin console.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ServerId(pub u64);

static NEXT_SERVER_ID: AtomicU64 = AtomicU64::new(1);

/// How many times a waiting client may be passed over for a later one on the worker a
/// checked-in connection belongs to, and how far down the line such a client is looked for.
const MAX_PASSED_OVER: u8 = 2;
const LOOK_AHEAD: usize = 8;

/// A logged-in server connection, owned either by the pool (idle) or by one client.
#[derive(Debug)]
pub struct ServerConn {
    pub stream: Stream,
    pub id: ServerId,
    pub backend_pid: u32,
    pub backend_secret: u32,
    pub connected_at: Instant,
    pub last_used: Instant,
    /// ParameterStatus values reported at login.
    login_params: Arc<[(String, String)]>,
    /// Parameters changed with SET since login or the last reset.
    set_params: Vec<(String, ParamValue)>,
    /// Named statements pgberth prepared here for clients in transaction and statement mode.
    pub prepared: ServerStatements,
    generation: u64,
    /// What SHOW SERVERS shows of it.
    pub info: Arc<ServerInfo>,
    /// The worker whose runtime the socket is registered with (`workers.rs`).
    worker: u16,
    /// Transaction status at the last ReadyForQuery of the client holding it; always idle in
    /// the pool.
    pub tx_status: TxStatus,
    /// Holds the pool's generation token (WAIT_CLOSE); dropped before `slot`.
    _generation_token: Arc<()>,
    slot: Slot,
}

impl Drop for ServerConn {
    fn drop(&mut self) {
        self.slot.pool.servers_lock().remove(&self.id.0);
    }
}

impl ServerConn {
    pub fn pool(&self) -> &Arc<Pool> {
        &self.slot.pool
    }

    /// The worker whose runtime the socket is registered with (`workers.rs`).
    pub fn worker(&self) -> u16 {
        self.worker
    }

    /// Moves the socket's registration to the calling worker, when it is another's. False
    /// when that failed: the connection is then unusable.
    pub fn move_to_this_worker(&mut self) -> bool {
        let here = crate::workers::current();
        if self.worker == here {
            return true;
        }
        match self.stream.move_to_this_worker() {
            Ok(()) => {
                self.worker = here;
                true
            }
            Err(e) => {
                tracing::warn!(
                    server = self.id.0,
                    "closing a server connection that could not move to another worker: {e}"
                );
                false
            }
        }
    }

    /// True unless the server sent something (or closed) while the connection sat idle in the
    /// pool: a terminated backend, a server restart, or a late asynchronous message. Usually
    /// costs no system call: the runtime already knows the socket has nothing to read.
    fn quiet_while_idle(&mut self) -> bool {
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        match self.stream.poll_read_ready(&mut cx) {
            std::task::Poll::Pending => true,
            std::task::Poll::Ready(Err(_)) => false,
            std::task::Poll::Ready(Ok(())) => {
                let mut byte = [0u8; 1];
                matches!(self.stream.read_now(&mut byte), Ok(None))
            }
        }
    }

    /// An idle connection may be handed out: not retired by a reload, not past
    /// `server_lifetime`, and nothing arrived from the server while it was idle.
    fn reusable(&mut self, generation: u64, settings: &PoolSettings, now: Instant) -> bool {
        self.generation == generation
            && !settings.lifetime_over(self, now)
            && self.quiet_while_idle()
    }

    /// True when the connection is known to have `name` set to `value`.
    fn has_param(&self, name: &str, value: &ParamValue) -> bool {
        let by_name = |k: &str| k.eq_ignore_ascii_case(name);
        match self.set_params.iter().find(|(k, _)| by_name(k)) {
            Some((_, current)) => current == value,
            None => match value {
                ParamValue::Plain(v) => self.login_params.iter().any(|(k, l)| by_name(k) && l == v),
                ParamValue::Sql(_) => false,
            },
        }
    }

    /// True when the connection's parameters already are what `apply_params` would set.
    pub fn params_match(&self, wanted: &[(String, ParamValue)]) -> bool {
        wanted
            .iter()
            .all(|(name, value)| self.has_param(name, value))
            && self
                .set_params
                .iter()
                .all(|(k, _)| wanted.iter().any(|(w, _)| w.eq_ignore_ascii_case(k)))
    }

    /// Makes the connection's parameters match `wanted` (the client's startup parameters and
    /// the SETs it made outside transactions; any parameter set for an earlier client that
    /// this one did not ask for goes back to its login value), with one round trip and only
    /// when something differs.
    pub async fn apply_params(
        &mut self,
        wanted: &[(String, ParamValue)],
        timeout: Duration,
    ) -> Result<(), ServerConnectError> {
        let mut sql = String::new();
        for (name, value) in wanted {
            if !self.has_param(name, value) {
                sql.push_str(&format!(
                    "SET {} TO {};",
                    crate::sql::quote_ident(name),
                    value.sql()
                ));
            }
        }
        let is_wanted = |name: &str| wanted.iter().any(|(k, _)| k.eq_ignore_ascii_case(name));
        for (name, _) in self.set_params.iter().filter(|(k, _)| !is_wanted(k)) {
            sql.push_str(&format!("RESET {};", crate::sql::quote_ident(name)));
        }
        if sql.is_empty() {
            return Ok(());
        }
        server::run_internal_query(&mut self.stream, &sql, timeout).await?;
        self.set_params = wanted.to_vec();
        Ok(())
    }

    /// A client changed parameters on this connection itself (a SET or RESET pgberth saw
    /// succeed): remember the connection's new state.
    pub fn params_changed(&mut self, name: &str, value: Option<&ParamValue>) {
        self.set_params
            .retain(|(k, _)| !k.eq_ignore_ascii_case(name));
        if let Some(value) = value {
            self.set_params.push((name.to_owned(), value.clone()));
        }
    }

    /// A client ran RESET ALL: parameters are back to their login values.
    pub fn params_all_reset(&mut self) {
        self.set_params.clear();
    }

    /// After a reset query (DISCARD ALL / RESET ALL) parameters are back to their login values.
    pub fn params_were_reset(&mut self) {
        self.set_params.clear();
        self.prepared.clear();
    }
}

/// One unit of a pool's capacity, held by an open (or opening) server connection.
#[derive(Debug)]
struct Slot {
    pool: Arc<Pool>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        Pool::slot_freed(&self.pool);
    }
}

/// What a waiting client is handed: a connection someone checked in, room to open one, or
/// word that `query_wait_timeout` has passed.
#[derive(Debug)]
enum Grant {
    Conn(Box<ServerConn>),
    Slot(Slot),
    WaitTimeout,
}

/// A client waiting in line for a server connection.
#[derive(Debug)]
struct Waiter {
    /// When it started asking (for `query_wait_timeout` and `reserve_pool_timeout`).
    since: Instant,
    tx: oneshot::Sender<Grant>,
    /// The worker the client's task runs on (`workers.rs`).
    worker: u16,
    /// How many later clients got a connection first (`pop_waiter_for_conn`).
    passed_over: u8,
}

/// Why a client got no server connection.
#[derive(Debug, thiserror::Error)]
pub enum CheckoutError {
    #[error("query_wait_timeout: no server connection became free in {0:?}")]
    WaitTimeout(Duration),
    #[error(transparent)]
    Connect(#[from] ServerConnectError),
    #[error("pool is shutting down")]
    Closed,
    /// A login failed less than `server_login_retry` ago; no new attempt is made yet.
    #[error("server login has been failing, try again later (server_login_retry): {message}")]
    LoginRetry {
        message: String,
        code: Option<String>,
    },
}

/// The last failed attempt to open a server connection.
#[derive(Debug, Clone)]
struct LoginFailure {
    at: Instant,
    message: String,
    /// The server's SQLSTATE when the server refused the login.
    code: Option<String>,
}

#[derive(Debug, Default)]
struct Inner {
    // Boxed: connections move between the pool and clients' tasks as one pointer.
    #[allow(clippy::vec_box)]
    idle: Vec<Box<ServerConn>>,
    waiters: VecDeque<Waiter>,
    /// Slots taken: connections open or being opened.
    open: usize,
    /// Bumped when the server target changes; older connections are closed at checkin.
    generation: u64,
    /// ParameterStatus values of the latest login, shown to new clients.
    params: Option<Arc<[(String, String)]>>,
    /// SCRAM keys from a client's exchange, for logging in without a plaintext password.
    scram_keys: Option<([u8; 32], [u8; 32])>,
    /// The server user's secret as `auth_query` found it (the user is not in the userlist).
    looked_up: Option<Secret>,
    last_failure: Option<LoginFailure>,
    /// Retired by a reload that removed its database.
    closed: bool,
}

impl Inner {
    /// The most recently used idle connection registered with the calling worker, else the
    /// most recently used one of any worker (`workers.rs`).
    fn pop_idle(&mut self) -> Option<Box<ServerConn>> {
        let here = crate::workers::current();
        match self.idle.iter().rposition(|conn| conn.worker == here) {
            Some(at) => Some(self.idle.remove(at)),
            None => self.idle.pop(),
        }
    }
}

/// The pool of one (database, user).
#[derive(Debug)]
pub struct Pool {
    pub key: PoolKey,
    settings: ArcSwap<PoolSettings>,
    inner: Mutex<Inner>,
    db_limit: Arc<Limit>,
    user_limit: Arc<Limit>,
    /// Clients logged in to this pool (for the admin console).
    clients: std::sync::atomic::AtomicUsize,
    /// Statistics of clients that have left (connected ones keep their own).
    departed: Mutex<crate::stats::Counters>,
    /// Logged-in server connections, idle or in use (SHOW SERVERS).
    servers: Mutex<HashMap<u64, Arc<ServerInfo>>>,
    /// Pause state and retired generations (`control.rs`).
    control: control::PoolControl,
}

/// Counts shown by the admin console and metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PoolCounts {
    pub idle: usize,
    pub open: usize,
    pub waiting: usize,
}

impl Pool {
    pub fn new(
        key: PoolKey,
        settings: PoolSettings,
        db_limit: Arc<Limit>,
        user_limit: Arc<Limit>,
    ) -> Arc<Pool> {
        let pool = Arc::new(Pool {
            key,
            settings: ArcSwap::from_pointee(settings),
            inner: Mutex::default(),
            db_limit,
            user_limit,
            clients: Default::default(),
            departed: Mutex::default(),
            servers: Mutex::default(),
            control: Default::default(),
        });
        pool.db_limit.add_member(Arc::downgrade(&pool));
        pool.user_limit.add_member(Arc::downgrade(&pool));
        pool
    }

    pub fn settings(&self) -> Arc<PoolSettings> {
        self.settings.load_full()
    }

    /// The settings, borrowed briefly (no shared reference count touched): for the
    /// per-transaction path.
    pub fn settings_now(&self) -> arc_swap::Guard<Arc<PoolSettings>> {
        self.settings.load()
    }

    /// Applies reloaded settings. A changed server target or password retires every existing
    /// connection (closed at checkin); other changes (sizes, timeouts) apply at once.
    pub fn update_settings(&self, new: PoolSettings) {
        let old = self.settings.load();
        let retire = old.target != new.target || old.password != new.password || old.tls != new.tls;
        self.settings.store(Arc::new(new));
        let stale = {
            let mut inner = self.lock();
            if retire {
                inner.generation += 1;
                self.control.retire_generation();
                inner.params = None;
                std::mem::take(&mut inner.idle)
            } else {
                Vec::new()
            }
        };
        drop(stale);
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Clients logged in to this pool.
    pub fn client_count(&self) -> usize {
        self.clients.load(Ordering::Relaxed)
    }

    /// A client logged in to this pool (`false`: it left).
    pub fn count_client(&self, joined: bool) {
        if joined {
            self.clients.fetch_add(1, Ordering::Relaxed);
        } else {
            self.clients.fetch_sub(1, Ordering::Relaxed);
        }
    }

    fn servers_lock(&self) -> MutexGuard<'_, HashMap<u64, Arc<ServerInfo>>> {
        self.servers.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The logged-in server connections, idle or in use.
    pub fn servers(&self) -> Vec<Arc<ServerInfo>> {
        self.servers_lock().values().cloned().collect()
    }

    /// How many server connections are logged in, idle or in use.
    pub fn server_count(&self) -> usize {
        self.servers_lock().len()
    }

    /// The pool's current generation: connections of an older one close when released.
    pub fn generation(&self) -> u64 {
        self.lock().generation
    }

    /// Adds a departing client's statistics to the pool's totals.
    pub fn add_departed(&self, counters: &crate::stats::Counters) {
        self.departed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .add(counters);
    }

    /// The statistics of the clients that have left this pool.
    pub fn departed(&self) -> crate::stats::Counters {
        *self.departed.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn counts(&self) -> PoolCounts {
        let inner = self.lock();
        PoolCounts {
            idle: inner.idle.len(),
            open: inner.open,
            waiting: inner.waiters.iter().filter(|w| !w.tx.is_closed()).count(),
        }
    }

    /// Why the last attempt to open a server connection failed, unless one succeeded since.
    pub fn last_login_failure(&self) -> Option<String> {
        self.lock().last_failure.as_ref().map(|f| f.message.clone())
    }

    /// ParameterStatus values a server of this pool reported, if one has logged in.
    pub fn server_params(&self) -> Option<Arc<[(String, String)]>> {
        self.lock().params.clone()
    }

    /// Remembers SCRAM keys recovered from a client's proof, for SCRAM pass-through.
    pub fn set_scram_keys(&self, client_key: [u8; 32], server_key: [u8; 32]) {
        self.lock().scram_keys = Some((client_key, server_key));
    }

    /// Remembers the server user's secret found by `auth_query`: the password to log in with
    /// when the config gives none (a SCRAM verifier means SCRAM pass-through).
    pub fn set_looked_up_secret(&self, secret: &Secret) {
        self.lock().looked_up = Some(secret.clone());
    }

    fn server_password(&self, settings: &PoolSettings) -> ServerPassword {
        if !matches!(settings.password, ServerPassword::None) {
            return settings.password.clone();
        }
        let inner = self.lock();
        let keys = |(client_key, server_key)| ServerPassword::ScramKeys {
            client_key,
            server_key,
        };
        match (&inner.looked_up, inner.scram_keys) {
            (_, Some(k)) if settings.scram_passthrough => keys(k),
            (Some(Secret::Plain(p)), _) => ServerPassword::Plain(p.clone()),
            (Some(Secret::Md5(m)), _) => ServerPassword::Md5(m.clone()),
            (Some(Secret::Scram(_)), Some(k)) => keys(k),
            _ => ServerPassword::None,
        }
    }

    /// Takes a slot if the pool (plus the reserve, when allowed) and the shared database and
    /// user limits all have room.
    fn try_take_slot(&self, inner: &mut Inner, settings: &PoolSettings, use_reserve: bool) -> bool {
        let max = settings.pool_size
            + if use_reserve {
                settings.reserve_pool
            } else {
                0
            };
        if inner.open >= max || !self.db_limit.try_acquire() {
            return false;
        }
        if !self.user_limit.try_acquire() {
            self.db_limit.release();
            return false;
        }
        inner.open += 1;
        true
    }

    fn pop_live_waiter(inner: &mut Inner) -> Option<oneshot::Sender<Grant>> {
        while let Some(waiter) = inner.waiters.pop_front() {
            if !waiter.tx.is_closed() {
                return Some(waiter.tx);
            }
        }
        None
    }

    /// The waiting client a checked-in connection goes to: the first in line, unless a client
    /// on the connection's own worker waits a few places behind and the first has been passed
    /// over fewer than `MAX_PASSED_OVER` times. That saves moving the socket to another worker
    /// (`workers.rs`) while keeping the line first come, first served within a few places.
    fn pop_waiter_for_conn(inner: &mut Inner, worker: u16) -> Option<oneshot::Sender<Grant>> {
        while inner.waiters.front()?.tx.is_closed() {
            inner.waiters.pop_front();
        }
        let first = inner.waiters.front()?;
        if first.worker != worker && first.passed_over < MAX_PASSED_OVER {
            let same_worker = inner
                .waiters
                .iter()
                .take(LOOK_AHEAD)
                .position(|w| w.worker == worker && !w.tx.is_closed());
            if let Some(at) = same_worker {
                for passed in inner.waiters.iter_mut().take(at) {
                    passed.passed_over += 1;
                }
                return inner.waiters.remove(at).map(|w| w.tx);
            }
        }
        inner.waiters.pop_front().map(|w| w.tx)
    }

    /// Called when a slot is freed: hands it to this pool's first waiting client, or releases
    /// the shared limits and lets a waiter of another pool sharing them proceed.
    fn slot_freed(pool: &Arc<Pool>) {
        let waiter = {
            let mut inner = pool.lock();
            inner.open -= 1;
            let w = Pool::pop_live_waiter(&mut inner);
            if w.is_some() {
                inner.open += 1;
            }
            w
        };
        pool.control.released();
        if let Some(tx) = waiter {
            // If the waiter gave up meanwhile, the returned slot is dropped here, outside the
            // lock, and goes to the next one.
            let _ = tx.send(Grant::Slot(Slot { pool: pool.clone() }));
            return;
        }
        pool.db_limit.release();
        pool.user_limit.release();
        let others = pool
            .db_limit
            .members()
            .into_iter()
            .chain(pool.user_limit.members());
        for other in others {
            if !Arc::ptr_eq(&other, pool) && other.grant_slot_to_waiter() {
                break;
            }
        }
    }

    /// Opens room for this pool's first waiting client if the limits allow; true if granted.
    fn grant_slot_to_waiter(self: &Arc<Pool>) -> bool {
        let settings = self.settings.load();
        let tx = {
            let mut inner = self.lock();
            if !inner.waiters.iter().any(|w| !w.tx.is_closed())
                || !self.try_take_slot(&mut inner, &settings, false)
            {
                return false;
            }
            Pool::pop_live_waiter(&mut inner).expect("a live waiter was just seen")
        };
        let _ = tx.send(Grant::Slot(Slot { pool: self.clone() }));
        true
    }

    /// The fast path of checkout, with no waiting: an idle connection that needs no health
    /// check, if there is one.
    pub fn try_checkout_idle(&self) -> Option<Box<ServerConn>> {
        if self.is_paused() {
            return None;
        }
        let settings = self.settings.load();
        let now = crate::stats::coarse_now();
        let mut stale = Vec::new();
        let found = {
            let mut inner = self.lock();
            loop {
                let Some(mut conn) = inner.pop_idle() else {
                    break None;
                };
                if !conn.reusable(inner.generation, &settings, now) {
                    stale.push(conn);
                } else if now.saturating_duration_since(conn.last_used)
                    >= settings.server_check_delay
                    && !settings.server_check_query.is_empty()
                {
                    inner.idle.push(conn);
                    break None;
                } else {
                    break Some(conn);
                }
            }
        };
        drop(stale);
        let mut conn = found?;
        if !conn.move_to_this_worker() {
            return None;
        }
        conn.last_used = now;
        Some(conn)
    }

    /// Gets a server connection for a client: an idle one (health-checked when it idled longer
    /// than `server_check_delay`), a new one when the pool has room, or the first one freed
    /// while the client waits in line (up to `query_wait_timeout`).
    pub async fn checkout(self: &Arc<Pool>) -> Result<Box<ServerConn>, CheckoutError> {
        let mut settings = self.settings.load_full();
        let mut started = Instant::now();
        loop {
            // Paused (PAUSE, SUSPEND): wait for RESUME; the wait is not a query wait.
            if self.wait_resumed().await {
                settings = self.settings.load_full();
                started = Instant::now();
            }
            let mut stale = Vec::new();
            let step = {
                let mut inner = self.lock();
                if inner.closed {
                    return Err(CheckoutError::Closed);
                }
                if self.is_paused() {
                    continue;
                }
                let mut found = None;
                while let Some(mut conn) = inner.pop_idle() {
                    if !conn.reusable(inner.generation, &settings, Instant::now()) {
                        stale.push(conn);
                    } else {
                        found = Some(conn);
                        break;
                    }
                }
                match found {
                    Some(conn) => Ok(Grant::Conn(conn)),
                    None if self.try_take_slot(&mut inner, &settings, false) => {
                        Ok(Grant::Slot(Slot { pool: self.clone() }))
                    }
                    None => {
                        let (tx, rx) = oneshot::channel();
                        inner.waiters.push_back(Waiter {
                            since: started,
                            tx,
                            worker: crate::workers::current(),
                            passed_over: 0,
                        });
                        // Below its own size, the pool is held back by a shared limit.
                        Err((rx, inner.open < settings.pool_size))
                    }
                }
            };
            drop(stale);
            let grant = match step {
                Ok(grant) => grant,
                Err((rx, held_by_shared_limit)) => {
                    if held_by_shared_limit {
                        self.evict_idle_sibling();
                    }
                    match Pool::wait(rx, &settings).await {
                        // Sent back by a pause (`set_pause`): wait for RESUME.
                        Err(CheckoutError::Closed) if self.is_paused() => continue,
                        grant => grant?,
                    }
                }
            };
            match grant {
                Grant::Conn(mut conn) => {
                    if !conn.move_to_this_worker() {
                        continue;
                    }
                    if conn.last_used.elapsed() >= settings.server_check_delay
                        && !settings.server_check_query.is_empty()
                    {
                        let checked = server::run_internal_query(
                            &mut conn.stream,
                            &settings.server_check_query,
                            settings.server_connect_timeout,
                        )
                        .await;
                        if let Err(e) = checked {
                            tracing::info!(pool = %self.key.database, user = %self.key.user, "closing server connection that failed its health check: {e}");
                            continue;
                        }
                    }
                    conn.last_used = Instant::now();
                    return Ok(conn);
                }
                Grant::Slot(slot) => return self.connect(slot, &settings).await,
                Grant::WaitTimeout => {
                    return Err(CheckoutError::WaitTimeout(settings.query_wait_timeout));
                }
            }
        }
    }

    /// Waits in line for a grant. The timeouts are not armed here: `expire_waiters` (run every
    /// quarter second) hands out the reserve and the `query_wait_timeout` verdict, so that
    /// waiting costs no timer.
    async fn wait(
        rx: oneshot::Receiver<Grant>,
        settings: &PoolSettings,
    ) -> Result<Grant, CheckoutError> {
        match rx.await {
            Ok(Grant::WaitTimeout) => Err(CheckoutError::WaitTimeout(settings.query_wait_timeout)),
            Ok(grant) => Ok(grant),
            Err(_) => Err(CheckoutError::Closed),
        }
    }

    /// Upkeep of the waiting line, run every quarter second: a client waiting longer than
    /// `reserve_pool_timeout` gets room in the reserve pool if there is any, one waiting
    /// longer than `query_wait_timeout` is told to give up.
    pub fn expire_waiters(self: &Arc<Pool>) {
        let settings = self.settings.load();
        let now = Instant::now();
        // Grants that found no receiver: dropped after the lock (a slot frees itself).
        let mut undelivered = Vec::new();
        {
            let mut inner = self.lock();
            if inner.waiters.is_empty() {
                return;
            }
            if settings.reserve_pool > 0 {
                while inner.waiters.front().is_some_and(|w| {
                    now.saturating_duration_since(w.since) >= settings.reserve_pool_timeout
                }) && self.try_take_slot(&mut inner, &settings, true)
                {
                    let Some(tx) = Pool::pop_live_waiter(&mut inner) else {
                        // Nobody left to take it: give the slot back.
                        undelivered.push(Grant::Slot(Slot { pool: self.clone() }));
                        break;
                    };
                    if let Err(back) = tx.send(Grant::Slot(Slot { pool: self.clone() })) {
                        undelivered.push(back);
                    }
                }
            }
            if !settings.query_wait_timeout.is_zero() {
                let (expired, kept): (VecDeque<Waiter>, VecDeque<Waiter>) =
                    std::mem::take(&mut inner.waiters)
                        .into_iter()
                        .partition(|w| {
                            now.saturating_duration_since(w.since) >= settings.query_wait_timeout
                        });
                inner.waiters = kept;
                for waiter in expired {
                    let _ = waiter.tx.send(Grant::WaitTimeout);
                }
            }
        }
        drop(undelivered);
    }

    async fn connect(
        self: &Arc<Pool>,
        slot: Slot,
        settings: &PoolSettings,
    ) -> Result<Box<ServerConn>, CheckoutError> {
        let (generation, generation_token, recent_failure) = {
            let inner = self.lock();
            let recent = inner
                .last_failure
                .as_ref()
                .filter(|f| f.at.elapsed() < settings.server_login_retry)
                .cloned();
            (inner.generation, self.control.generation_token(), recent)
        };
        if let Some(failure) = recent_failure {
            return Err(CheckoutError::LoginRetry {
                message: failure.message,
                code: failure.code,
            });
        }
        let password = self.server_password(settings);
        let attempt = async {
            let mut logged_in = server::connect(
                &settings.target,
                &password,
                settings.server_connect_timeout,
                &settings.tls,
            )
            .await?;
            if let Some(sql) = &settings.connect_query {
                server::run_internal_query(
                    &mut logged_in.stream,
                    sql,
                    settings.server_connect_timeout,
                )
                .await?;
            }
            Ok::<_, ServerConnectError>(logged_in)
        };
        let logged_in = match attempt.await {
            Ok(logged_in) => logged_in,
            Err(e) => {
                let code = match &e {
                    ServerConnectError::Refused(server) => Some(server.code.clone()),
                    _ => None,
                };
                self.lock().last_failure = Some(LoginFailure {
                    at: Instant::now(),
                    message: e.to_string(),
                    code,
                });
                drop(slot);
                return Err(e.into());
            }
        };
        self.lock().last_failure = None;
        let now = Instant::now();
        let id = ServerId(NEXT_SERVER_ID.fetch_add(1, Ordering::Relaxed));
        let login_params: Arc<[(String, String)]> = logged_in.params.into();
        self.lock().params = Some(login_params.clone());
        tracing::debug!(server = id.0, pool = %self.key.database, user = %self.key.user, "server connection opened to {}", settings.target.describe());
        let application_name = login_params
            .iter()
            .find(|(k, _)| k == "application_name")
            .map_or("", |(_, v)| v.as_str());
        let info = Arc::new(ServerInfo::new(
            id.0,
            &logged_in.stream,
            logged_in.backend_pid,
            application_name,
            generation,
        ));
        self.servers_lock().insert(id.0, info.clone());
        Ok(Box::new(ServerConn {
            stream: logged_in.stream,
            id,
            backend_pid: logged_in.backend_pid,
            backend_secret: logged_in.backend_secret,
            connected_at: now,
            last_used: now,
            login_params,
            set_params: Vec::new(),
            prepared: ServerStatements::default(),
            generation,
            info,
            worker: crate::workers::current(),
            tx_status: TxStatus::Idle,
            _generation_token: generation_token,
            slot,
        }))
    }

    /// The other pools under this pool's database or user limit, where that limit is full.
    fn siblings_under_full_limits(self: &Arc<Pool>) -> Vec<Arc<Pool>> {
        let mut siblings = Vec::new();
        for limit in [&self.db_limit, &self.user_limit] {
            if limit.is_full() {
                siblings.extend(
                    limit
                        .members()
                        .into_iter()
                        .filter(|p| !Arc::ptr_eq(p, self)),
                );
            }
        }
        siblings
    }

    /// A client waits because `max_db_connections` or `max_user_connections` is reached:
    /// close the oldest idle connection of another pool under that limit, as PgBouncer does.
    /// Its freed slot comes to this pool's waiter (`slot_freed`).
    fn evict_idle_sibling(self: &Arc<Pool>) {
        for sibling in self.siblings_under_full_limits() {
            let oldest = {
                let mut inner = sibling.lock();
                (!inner.idle.is_empty()).then(|| inner.idle.remove(0))
            };
            if let Some(conn) = oldest {
                drop(conn);
                return;
            }
        }
    }

    /// True when a client of another pool waits under a full shared limit of this pool: a
    /// connection checked in here should close to make room.
    fn sibling_needs_room(self: &Arc<Pool>) -> bool {
        if !self.db_limit.is_full() && !self.user_limit.is_full() {
            return false;
        }
        self.siblings_under_full_limits()
            .iter()
            .any(|p| p.counts().waiting > 0)
    }

    /// Returns a connection whose state is known to be idle (no transaction, nothing pending)
    /// to the pool: to the first waiting client, else to the idle list. Connections that are
    /// retired, past `server_lifetime`, or beyond a shrunk pool size are closed instead.
    /// `self` is the connection's own pool (the caller holds it, so that no shared reference
    /// count is touched here).
    pub fn checkin(self: &Arc<Pool>, mut conn: Box<ServerConn>) {
        debug_assert!(Arc::ptr_eq(self, conn.pool()), "checked in to another pool");
        let now = crate::stats::coarse_now();
        conn.info
            .released(crate::stats::us_at(now), conn.prepared.len());
        let pool = self;
        let settings = pool.settings.load();
        conn.last_used = now;
        let pool_needs_room = pool.sibling_needs_room();
        let leftover = {
            let mut inner = pool.lock();
            let too_many = inner.open > settings.pool_size + settings.reserve_pool;
            if inner.closed
                || conn.generation != inner.generation
                || settings.lifetime_over(&conn, now)
                || too_many
            {
                Some(conn)
            } else {
                let worker = conn.worker;
                let mut grant = Grant::Conn(conn);
                loop {
                    match Pool::pop_waiter_for_conn(&mut inner, worker) {
                        Some(tx) => match tx.send(grant) {
                            Ok(()) => break None,
                            Err(back) => grant = back,
                        },
                        None => match grant {
                            Grant::Conn(conn) if !pool_needs_room => {
                                inner.idle.push(conn);
                                break None;
                            }
                            Grant::Conn(conn) => break Some(conn),
                            Grant::Slot(_) | Grant::WaitTimeout => {
                                unreachable!("checkin only hands out connections")
                            }
                        },
                    }
                }
            }
        };
        drop(leftover);
        pool.control.released();
    }

    /// Periodic upkeep: closes idle connections past `server_idle_timeout` or
    /// `server_lifetime`, and returns how many connections to open to reach `min_pool_size`.
    pub fn maintain(&self) -> usize {
        let settings = self.settings.load();
        let now = Instant::now();
        let (expired, missing) = {
            let mut inner = self.lock();
            let generation = inner.generation;
            let mut expired = Vec::new();
            let mut kept = Vec::with_capacity(inner.idle.len());
            for mut conn in inner.idle.drain(..) {
                let idle_too_long = !settings.server_idle_timeout.is_zero()
                    && now.duration_since(conn.last_used) >= settings.server_idle_timeout;
                if idle_too_long || !conn.reusable(generation, &settings, now) {
                    expired.push(conn);
                } else {
                    kept.push(conn);
                }
            }
            inner.idle = kept;
            let open_after = inner.open - expired.len();
            (expired, settings.min_pool_size.saturating_sub(open_after))
        };
        drop(expired);
        missing
    }

    /// Opens one connection for `min_pool_size` and parks it idle, if there is room.
    pub async fn open_spare(self: &Arc<Pool>) -> Result<(), CheckoutError> {
        if self.is_paused() {
            return Ok(());
        }
        let settings = self.settings.load_full();
        let took = {
            let mut inner = self.lock();
            self.try_take_slot(&mut inner, &settings, false)
        };
        if !took {
            return Ok(());
        }
        let conn = self.connect(Slot { pool: self.clone() }, &settings).await?;
        self.checkin(conn);
        Ok(())
    }

    /// Retires the pool (its database was removed by a reload): idle connections close now,
    /// connections in use close when they come back, and no new ones are handed out.
    pub fn close(&self) {
        let idle = {
            let mut inner = self.lock();
            inner.closed = true;
            // Waiting clients get `CheckoutError::Closed`.
            inner.waiters.clear();
            std::mem::take(&mut inner.idle)
        };
        drop(idle);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A line of waiting clients on the given workers, and their receiving ends.
    fn line(workers: &[u16]) -> (Inner, Vec<oneshot::Receiver<Grant>>) {
        let mut inner = Inner::default();
        let mut receivers = Vec::new();
        for &worker in workers {
            let (tx, rx) = oneshot::channel();
            inner.waiters.push_back(Waiter {
                since: Instant::now(),
                tx,
                worker,
                passed_over: 0,
            });
            receivers.push(rx);
        }
        (inner, receivers)
    }

    /// Which waiter a connection of `worker` goes to, by its place in the original line.
    fn served(inner: &mut Inner, receivers: &mut [oneshot::Receiver<Grant>], worker: u16) -> usize {
        let tx = Pool::pop_waiter_for_conn(inner, worker).expect("someone waits");
        assert!(tx.send(Grant::WaitTimeout).is_ok());
        receivers
            .iter_mut()
            .position(|rx| rx.try_recv().is_ok())
            .expect("one waiter got it")
    }

    #[test]
    fn a_connection_goes_to_a_waiter_of_its_own_worker_a_few_places_down_the_line() {
        let (mut inner, mut receivers) = line(&[1, 1, 0, 1]);
        assert_eq!(served(&mut inner, &mut receivers, 0), 2);
        assert_eq!(served(&mut inner, &mut receivers, 1), 0);
        assert_eq!(inner.waiters.front().map(|w| w.passed_over), Some(1));
    }

    #[test]
    fn the_first_in_line_is_passed_over_at_most_twice() {
        let (mut inner, mut receivers) = line(&[1, 0, 0, 0]);
        assert_eq!(served(&mut inner, &mut receivers, 0), 1);
        assert_eq!(served(&mut inner, &mut receivers, 0), 2);
        assert_eq!(
            served(&mut inner, &mut receivers, 0),
            0,
            "passed over twice: served next, even with a waiter of worker 0 behind"
        );
        assert_eq!(served(&mut inner, &mut receivers, 0), 3);
    }

    #[test]
    fn without_a_waiter_of_its_worker_nearby_the_first_in_line_gets_the_connection() {
        let mut workers = vec![1; LOOK_AHEAD];
        workers.push(0);
        let (mut inner, mut receivers) = line(&workers);
        assert_eq!(served(&mut inner, &mut receivers, 0), 0);
    }

    #[test]
    fn waiters_that_gave_up_are_skipped() {
        let (mut inner, mut receivers) = line(&[0, 1]);
        drop(receivers.remove(0));
        assert_eq!(
            served(&mut inner, &mut receivers, 0),
            0,
            "the second, now first"
        );
    }
}
