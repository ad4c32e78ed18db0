//! The shared state of one running pgberth: the config snapshot, the pools, the client count
//! and registry, the parking and the upkeep. Passed around as `Arc<App>`, so several instances can live in one
//! process (tests). Touched at login, checkout and checkin, never per message.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::sync::watch;

use crate::auth::auth_query::SecretCache;
use crate::auth::hba::HbaRules;
use crate::config::{Config, Database};
use crate::pool::{Limit, Pool, PoolKey, PoolSettings};
use crate::process::Loaded;
use crate::registry::{ClientInfo, Clients, Ends};
use crate::stats::{Counters, Periods, Stat};
use crate::tls::TlsSettings;

/// Where the process is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunState {
    Running,
    /// SIGINT: no new clients; exit when the last one leaves.
    Draining,
    /// SIGTERM or fatal error: exit now.
    Stopping,
}

#[derive(Debug)]
pub struct App {
    config: ArcSwap<Config>,
    tls: ArcSwap<TlsSettings>,
    hba: ArcSwap<Option<Arc<HbaRules>>>,
    pools: Mutex<HashMap<PoolKey, Arc<Pool>>>,
    db_limits: Mutex<HashMap<String, Arc<Limit>>>,
    user_limits: Mutex<HashMap<String, Arc<Limit>>>,
    clients: AtomicUsize,
    /// Named prepared statements of all clients, by text (transaction and statement mode).
    pub statements: Arc<crate::prepared::Registry>,
    /// Prepared statements parsed on servers, reused and evicted, over all clients.
    pub statement_totals: crate::prepared::Totals,
    /// Secrets found by `auth_query`, kept for a short while.
    pub auth_cache: SecretCache,
    /// Errors sent to clients and TLS handshakes, for metrics.
    pub events: Arc<crate::metrics::Events>,
    /// Every connected client.
    pub clients_registry: Clients,
    /// Averages of the last `stats_period`.
    pub stats_periods: Periods,
    /// Paused, suspended and disabled databases (admin console control commands).
    pub control: crate::admin::Control,
    /// Idle clients off the runtime, started at the first one (`None` if it could not start).
    parking: std::sync::OnceLock<Option<Arc<crate::parking::Parking>>>,
    /// Clients just logged in, asked to park if they stay silent (`fresh.rs`).
    pub fresh_clients: crate::fresh::FreshClients,
    state: watch::Sender<RunState>,
}

/// Clients idle this long are asked to park (microseconds); those that have sent nothing since
/// they logged in, sooner (`fresh.rs`).
const PARK_IDLE_AFTER_US: u64 = 1_000_000;

/// A connected client counted against `max_client_conn`; uncounted on drop.
#[derive(Debug)]
pub struct ClientSlot {
    app: Arc<App>,
    pub info: Arc<ClientInfo>,
}

impl Drop for ClientSlot {
    fn drop(&mut self) {
        self.app.clients_registry.unregister(&self.info);
        // Only a draining pooler waits for its last client (process.rs). Telling the run
        // state's watchers otherwise would wake every worker's accept loop whenever the
        // pooler empties, which a lone client reconnecting does at every connection.
        if self.app.clients.fetch_sub(1, Ordering::AcqRel) == 1
            && self.app.run_state() == RunState::Draining
        {
            self.app.state.send_modify(|_| {});
        }
    }
}

impl App {
    pub fn new(mut loaded: Loaded) -> Arc<App> {
        let events = Arc::new(crate::metrics::Events::default());
        loaded.tls.events = events.clone();
        Arc::new(App {
            config: ArcSwap::from_pointee(loaded.config),
            tls: ArcSwap::from_pointee(loaded.tls),
            hba: ArcSwap::from_pointee(loaded.hba),
            pools: Mutex::default(),
            db_limits: Mutex::default(),
            user_limits: Mutex::default(),
            clients: AtomicUsize::new(0),
            statements: Arc::default(),
            statement_totals: Default::default(),
            auth_cache: SecretCache::default(),
            events,
            clients_registry: Clients::default(),
            stats_periods: Periods::default(),
            control: Default::default(),
            parking: Default::default(),
            fresh_clients: Default::default(),
            state: watch::channel(RunState::Running).0,
        })
    }

    /// Where idle clients park; started at first use, from within the runtime.
    pub fn parking(&self) -> Option<&Arc<crate::parking::Parking>> {
        self.parking
            .get_or_init(|| match crate::parking::Parking::start() {
                Ok(parking) => Some(parking),
                Err(e) => {
                    tracing::warn!("idle clients cannot park, each keeps its task: {e}");
                    None
                }
            })
            .as_ref()
    }

    /// Asks clients idle for a second to park. Those that may not (TLS, holding a server
    /// connection) never armed a waker and are not woken.
    fn park_idle_clients(&self) {
        if self.parking.get().and_then(Option::as_ref).is_none() {
            return;
        }
        let since = crate::stats::now_us().saturating_sub(PARK_IDLE_AFTER_US);
        for client in self.clients_registry.lock().values() {
            if client.idle_since_before(since) {
                client.request_park();
            }
        }
    }

    /// Clients parked now (idle, off the runtime).
    pub fn parked_clients(&self) -> usize {
        self.parking
            .get()
            .and_then(Option::as_ref)
            .map_or(0, |parking| parking.len())
    }

    /// Closes a client (KILL_CLIENT, KILL): ends its task, or takes it out of the parking.
    pub fn kill_client(&self, info: &ClientInfo) -> bool {
        let parked = self
            .parking
            .get()
            .and_then(Option::as_ref)
            .is_some_and(|parking| parking.evict(info.id));
        parked || info.kill()
    }

    pub fn config(&self) -> Arc<Config> {
        self.config.load_full()
    }

    /// The running config, borrowed briefly: no shared reference count is touched, so this is
    /// what the per-transaction path reads.
    pub fn config_now(&self) -> arc_swap::Guard<Arc<Config>> {
        self.config.load()
    }

    /// The `auth_hba_file` rules when `auth_type = hba`.
    pub fn hba(&self) -> Option<Arc<HbaRules>> {
        self.hba.load().as_ref().clone()
    }

    /// The TLS settings of the running config (rebuilt on reload).
    pub fn tls(&self) -> Arc<TlsSettings> {
        self.tls.load_full()
    }

    /// Counts a new client; `Err` when `max_client_conn` clients are already connected. The
    /// refused client still gets its slot object so the caller can report the error.
    pub fn admit_client(self: &Arc<App>, ends: Ends) -> (ClientSlot, bool) {
        let max = self.config.load().general.max_client_conn as usize;
        let before = self.clients.fetch_add(1, Ordering::AcqRel);
        let info = self.clients_registry.register(ends);
        (
            ClientSlot {
                app: self.clone(),
                info,
            },
            before < max,
        )
    }

    pub fn client_count(&self) -> usize {
        self.clients.load(Ordering::Acquire)
    }

    pub fn run_state(&self) -> RunState {
        *self.state.borrow()
    }

    pub fn set_run_state(&self, state: RunState) {
        self.state.send_replace(state);
    }

    /// A receiver that sees run-state changes and client-count drops to zero.
    pub fn watch_state(&self) -> watch::Receiver<RunState> {
        self.state.subscribe()
    }

    fn limit(map: &Mutex<HashMap<String, Arc<Limit>>>, name: &str, max: usize) -> Arc<Limit> {
        let mut map = map.lock().unwrap_or_else(|e| e.into_inner());
        let limit = map.entry(name.to_owned()).or_default().clone();
        limit.set_max(max);
        limit
    }

    /// The pool for `db` with server user `server_user`, created on first use.
    pub fn pool(&self, db: &Database, server_user: &str) -> Arc<Pool> {
        let key = PoolKey {
            database: db.name.clone(),
            user: server_user.to_owned(),
        };
        let mut pools = self.pools.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(pool) = pools.get(&key) {
            return pool.clone();
        }
        let config = self.config.load();
        let settings = PoolSettings::new(&config, &self.tls.load(), db, server_user);
        let db_limit = App::limit(&self.db_limits, &db.name, settings.max_db_connections);
        let user_limit = App::limit(
            &self.user_limits,
            server_user,
            settings.max_user_connections,
        );
        let pool = Pool::new(key.clone(), settings, db_limit, user_limit);
        pool.set_pause(self.control.pause_mode_for(&db.name));
        pools.insert(key, pool.clone());
        pool
    }

    pub fn pools(&self) -> Vec<Arc<Pool>> {
        self.pools
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect()
    }

    /// Swaps in a new, already validated config. Pools keep their connections unless their
    /// server target or password changed; pools of removed databases are closed.
    pub fn reload(&self, mut loaded: Loaded) {
        loaded.tls.events = self.events.clone();
        let new = Arc::new(loaded.config);
        let tls = Arc::new(loaded.tls);
        self.tls.store(tls.clone());
        self.hba.store(Arc::new(loaded.hba));
        self.config.store(new.clone());
        // auth_query, auth_user or a database may have changed: look secrets up afresh.
        self.auth_cache.clear();
        let mut pools = self.pools.lock().unwrap_or_else(|e| e.into_inner());
        pools.retain(|key, pool| match new.database(&key.database) {
            Some(db) => {
                let settings = PoolSettings::new(&new, &tls, &db, &key.user);
                App::limit(&self.db_limits, &db.name, settings.max_db_connections);
                App::limit(&self.user_limits, &key.user, settings.max_user_connections);
                pool.update_settings(settings);
                true
            }
            None => {
                pool.close();
                false
            }
        });
    }

    /// Statistics totals by database: every configured database (zero without traffic),
    /// with the counters of departed clients and of connected ones.
    pub fn database_totals(&self) -> BTreeMap<String, Counters> {
        let mut totals: BTreeMap<String, Counters> = self
            .config()
            .databases
            .keys()
            .map(|name| (name.clone(), Counters::default()))
            .collect();
        // Under the registry lock: a client leaving moves its counters to its pool's totals
        // while this lock is held, so nothing is counted twice or missed.
        let clients = self.clients_registry.lock();
        for pool in self.pools() {
            totals
                .entry(pool.key.database.clone())
                .or_default()
                .add(&pool.departed());
        }
        for info in clients.values() {
            if let Some(pool) = info.login().and_then(|l| l.pool.as_ref()) {
                totals
                    .entry(pool.key.database.clone())
                    .or_default()
                    .add(&info.counters.snapshot());
            }
        }
        totals
    }

    /// Computes the averages every `stats_period` and writes the `log_stats` lines.
    pub async fn stats_periods_task(self: Arc<App>) {
        self.stats_periods.roll(self.database_totals());
        loop {
            let period = self
                .config()
                .general
                .stats_period
                .max(Duration::from_secs(1));
            tokio::time::sleep(period).await;
            let averages = self.stats_periods.roll(self.database_totals());
            if self.config().general.log_stats {
                for (db, avg) in &averages {
                    if avg.get(Stat::QueryCount) > 0 || avg.get(Stat::ServerAssignmentCount) > 0 {
                        tracing::info!(database = %db, "{}", crate::stats::log_line(avg));
                    }
                }
            }
        }
    }

    /// Runs upkeep until the process stops: every quarter second the waiting lines
    /// (`reserve_pool_timeout`, `query_wait_timeout`) and parking of clients idle for a second,
    /// every second idle and lifetime expiry and `min_pool_size`.
    pub async fn maintenance(self: Arc<App>) {
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        for round in 0u64.. {
            tick.tick().await;
            crate::stats::tick_coarse_clock();
            crate::workers::adjust_active();
            for pool in self.pools() {
                pool.expire_waiters();
            }
            self.park_idle_clients();
            if round % 4 != 0 {
                continue;
            }
            for pool in self.pools() {
                let missing = pool.maintain();
                for _ in 0..missing {
                    let pool = pool.clone();
                    tokio::spawn(async move {
                        let result = pool.open_spare().await;
                        if let Err(e @ crate::pool::CheckoutError::Connect(_)) = result {
                            tracing::warn!(database = %pool.key.database, user = %pool.key.user, "min_pool_size: {e}");
                        }
                    });
                }
            }
        }
    }
}
