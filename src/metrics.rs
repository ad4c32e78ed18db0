//! Prometheus metrics and health probes over HTTP on `metrics_listen`: `GET /metrics` (text
//! exposition built from the instance's state at each scrape), `GET /health` (the process is
//! alive) and `GET /ready` (every configured database can be reached). Also owns [`Events`],
//! the few counters kept for metrics only (errors pgberth sends to clients, TLS handshakes),
//! which are touched on error and handshake paths only, never per message.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::{SocketAddr, TcpListener as StdTcpListener, ToSocketAddrs};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode, header};
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::encoding::prometheus_text;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::{Registry, Unit};

use crate::app::{App, RunState};
use crate::config::General;
use crate::pool::PoolSettings;
use crate::protocol::SqlState;
use crate::stats::Stat;

/// Which end of a TLS handshake pgberth was on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// pgberth accepted TLS from a client.
    Client,
    /// pgberth opened TLS to a PostgreSQL server.
    Server,
}

/// Counters kept only for metrics. Shared by one instance (`App::events`); relaxed atomics and
/// a lock taken only when pgberth reports an error.
#[derive(Debug)]
pub struct Events {
    started: SystemTime,
    /// ErrorResponses pgberth itself sent to clients, by SQLSTATE.
    client_errors: Mutex<BTreeMap<[u8; 5], u64>>,
    /// TLS handshakes: `[client ok, client failed, server ok, server failed]`.
    tls: [AtomicU64; 4],
}

impl Default for Events {
    fn default() -> Events {
        Events {
            started: SystemTime::now(),
            client_errors: Mutex::default(),
            tls: Default::default(),
        }
    }
}

impl Events {
    /// pgberth sent an ErrorResponse with `code` to a client.
    pub fn client_error(&self, code: SqlState) {
        let mut errors = self.client_errors.lock().unwrap_or_else(|e| e.into_inner());
        *errors.entry(code.0).or_default() += 1;
    }

    /// Counts the outcome of a TLS handshake.
    pub fn tls_handshake<T, E>(&self, side: Side, result: &Result<T, E>) {
        let i = match side {
            Side::Client => 0,
            Side::Server => 2,
        } + usize::from(result.is_err());
        self.tls[i].fetch_add(1, Ordering::Relaxed);
    }

    /// Errors sent to clients so far, by SQLSTATE.
    pub fn client_errors(&self) -> Vec<(String, u64)> {
        let errors = self.client_errors.lock().unwrap_or_else(|e| e.into_inner());
        errors
            .iter()
            .map(|(code, n)| (SqlState(*code).as_str().to_owned(), *n))
            .collect()
    }

    /// Handshakes so far for `side`: (succeeded, failed).
    pub fn tls_handshakes(&self, side: Side) -> (u64, u64) {
        let base = match side {
            Side::Client => 0,
            Side::Server => 2,
        };
        (
            self.tls[base].load(Ordering::Relaxed),
            self.tls[base + 1].load(Ordering::Relaxed),
        )
    }

    /// When this instance started.
    pub fn started(&self) -> SystemTime {
        self.started
    }
}

/// `metrics_listen` could not be bound.
#[derive(Debug, thiserror::Error)]
#[error("cannot listen on metrics_listen = {addr}: {source}")]
pub struct BindError {
    pub addr: String,
    pub source: std::io::Error,
}

/// Binds `metrics_listen` when it is set. `*:PORT` means every IPv4 address.
pub fn bind(general: &General) -> Result<Option<StdTcpListener>, BindError> {
    let Some(addr) = &general.metrics_listen else {
        return Ok(None);
    };
    let err = |source| BindError {
        addr: addr.clone(),
        source,
    };
    let spec = match addr.strip_prefix("*:") {
        Some(port) => format!("0.0.0.0:{port}"),
        None => addr.clone(),
    };
    let addrs: Vec<SocketAddr> = spec.to_socket_addrs().map_err(err)?.collect();
    let listener = StdTcpListener::bind(&addrs[..]).map_err(err)?;
    listener.set_nonblocking(true).map_err(err)?;
    Ok(Some(listener))
}

/// Serves HTTP on an already bound `metrics_listen` socket until the process exits.
pub async fn serve(app: Arc<App>, listener: tokio::net::TcpListener) {
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                tracing::warn!("metrics_listen: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let app = app.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| handle(app.clone(), req));
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

/// A connection that has not sent a complete request head by then is closed.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

type HttpResponse = Response<Full<Bytes>>;

fn text(status: StatusCode, content_type: &'static str, body: String) -> HttpResponse {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(content_type),
    );
    response
}

const PLAIN: &str = "text/plain; charset=utf-8";

async fn handle(app: Arc<App>, req: Request<Incoming>) -> Result<HttpResponse, Infallible> {
    let known = matches!(req.uri().path(), "/metrics" | "/health" | "/ready");
    if !known {
        return Ok(text(StatusCode::NOT_FOUND, PLAIN, "not found\n".into()));
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        let mut response = text(
            StatusCode::METHOD_NOT_ALLOWED,
            PLAIN,
            "method not allowed\n".into(),
        );
        response
            .headers_mut()
            .insert(header::ALLOW, header::HeaderValue::from_static("GET, HEAD"));
        return Ok(response);
    }
    Ok(match req.uri().path() {
        "/metrics" => text(StatusCode::OK, prometheus_text::CONTENT_TYPE, render(&app)),
        "/health" => text(StatusCode::OK, PLAIN, "ok\n".into()),
        _ => match not_ready(&app).await {
            reasons if reasons.is_empty() => text(StatusCode::OK, PLAIN, "ok\n".into()),
            reasons => text(
                StatusCode::SERVICE_UNAVAILABLE,
                PLAIN,
                format!("not ready\n{}\n", reasons.join("\n")),
            ),
        },
    })
}

/// Why the instance is not ready, one line per failing database; empty when it is ready.
///
/// A database is ready when one of its pools has a server connection open; else when the
/// last login attempt of one of its pools failed, it is not; else (no pool yet, or no
/// connection open and no failure) a TCP or unix socket connection to its server is tried.
pub async fn not_ready(app: &App) -> Vec<String> {
    if app.run_state() != RunState::Running {
        return vec!["pgberth is shutting down".to_owned()];
    }
    let config = app.config();
    let pools = app.pools();
    let tls = app.tls();
    let mut reasons = Vec::new();
    let mut probes = tokio::task::JoinSet::new();
    for (index, db) in config.databases.values().enumerate() {
        let of_db: Vec<_> = pools.iter().filter(|p| p.key.database == db.name).collect();
        if of_db.iter().any(|p| p.counts().open > 0) {
            continue;
        }
        if let Some(failure) = of_db.iter().find_map(|p| p.last_login_failure()) {
            let reason = format!(
                "database \"{}\": last server login failed: {failure}",
                db.name
            );
            reasons.push((index, reason));
            continue;
        }
        let user = db.user.clone().unwrap_or_default();
        let settings = PoolSettings::new(&config, &tls, db, &user);
        let name = db.name.clone();
        let limit = match settings.server_connect_timeout {
            t if t.is_zero() || t > PROBE_TIMEOUT => PROBE_TIMEOUT,
            t => t,
        };
        probes.spawn(async move {
            let reason = match crate::server::open(&settings.target, limit).await {
                Ok(_) => None,
                Err(e) => Some(format!("database \"{name}\": {e}")),
            };
            (index, reason)
        });
    }
    for (index, reason) in probes.join_all().await {
        reasons.extend(reason.map(|r| (index, r)));
    }
    // In the config's order of databases.
    reasons.sort();
    reasons.into_iter().map(|(_, r)| r).collect()
}

/// Longest a `/ready` connection attempt to one server may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

type Labels = Vec<(&'static str, String)>;

fn pool_labels(database: &str, user: &str) -> Labels {
    vec![("database", database.to_owned()), ("user", user.to_owned())]
}

fn with_state(mut labels: Labels, state: &'static str) -> Labels {
    labels.push(("state", state.to_owned()));
    labels
}

/// The `/metrics` text: a registry built from the instance's current state.
pub fn render(app: &App) -> String {
    let mut registry = Registry::with_prefix("pgberth");
    register_all(app, &mut registry);
    let mut out = String::new();
    prometheus_text::encode(&mut out, &registry).expect("writing to a String cannot fail");
    out
}

fn register_all(app: &App, registry: &mut Registry) {
    let config = app.config();

    let build = Family::<Labels, Gauge>::default();
    build
        .get_or_create(&vec![("version", env!("CARGO_PKG_VERSION").to_owned())])
        .set(1);
    registry.register(
        "build_info",
        "pgberth's version, as a label; always 1",
        build,
    );

    let started = Gauge::<f64, AtomicU64>::default();
    started.set(
        app.events
            .started()
            .duration_since(UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64()),
    );
    registry.register_with_unit(
        "process_start_time",
        "When pgberth started, in seconds since the Unix epoch",
        Unit::Seconds,
        started,
    );

    let clients = Gauge::<i64>::default();
    clients.set(app.client_count() as i64);
    registry.register(
        "clients",
        "Client connections, logged in or logging in, counted against max_client_conn",
        clients,
    );
    let parked = Gauge::<i64>::default();
    parked.set(app.parked_clients() as i64);
    registry.register(
        "parked_clients",
        "Idle clients parked off the runtime (included in pgberth_clients)",
        parked,
    );
    let active = Gauge::<i64>::default();
    active.set(crate::workers::active() as i64);
    registry.register(
        "active_workers",
        "Worker threads that take new clients (the others serve only the clients they have)",
        active,
    );
    let per_worker = Family::<Labels, Gauge<i64>>::default();
    for (worker, count) in crate::workers::clients().into_iter().enumerate() {
        per_worker
            .get_or_create(&vec![("worker", worker.to_string())])
            .set(count.into());
    }
    registry.register(
        "worker_clients",
        "Clients relaying on each worker thread (parked clients are on none)",
        per_worker,
    );
    let max_clients = Gauge::<i64>::default();
    max_clients.set(config.general.max_client_conn.into());
    registry.register(
        "max_client_conn",
        "Most client connections allowed (max_client_conn)",
        max_clients,
    );

    register_pools(app, registry);
    register_databases(app, registry);

    let statements = app.statement_totals.snapshot();
    for (name, help, value) in [
        (
            "prepared_statements_prepared",
            "Named statements pgberth prepared on server connections for clients (transaction and statement mode)",
            statements.prepared,
        ),
        (
            "prepared_statements_reused",
            "Client Parse messages answered from a statement the server connection already had",
            statements.reused,
        ),
        (
            "prepared_statements_evicted",
            "Statements closed on server connections beyond max_prepared_statements",
            statements.evicted,
        ),
    ] {
        let counter = Counter::<u64>::default();
        counter.inc_by(value);
        registry.register(name, help, counter);
    }

    let errors = Family::<Labels, Counter>::default();
    for (code, n) in app.events.client_errors() {
        errors.get_or_create(&vec![("sqlstate", code)]).inc_by(n);
    }
    registry.register(
        "client_errors",
        "ErrorResponses pgberth itself sent to clients (login failures, pool errors, timeouts), by SQLSTATE",
        errors,
    );

    let tls = Family::<Labels, Counter>::default();
    for (side, name) in [(Side::Client, "client"), (Side::Server, "server")] {
        let (ok, failed) = app.events.tls_handshakes(side);
        for (result, n) in [("ok", ok), ("failed", failed)] {
            tls.get_or_create(&vec![
                ("side", name.to_owned()),
                ("result", result.to_owned()),
            ])
            .inc_by(n);
        }
    }
    registry.register(
        "tls_handshakes",
        "TLS handshakes with clients (side=client) and with servers (side=server), by result",
        tls,
    );
}

/// Per-pool gauges: clients and server connections by state, the longest wait, the pool mode.
fn register_pools(app: &App, registry: &mut Registry) {
    let clients = Family::<Labels, Gauge>::default();
    let servers = Family::<Labels, Gauge>::default();
    let waiting = Family::<Labels, Gauge>::default();
    let max_wait = Family::<Labels, Gauge<f64, AtomicU64>>::default();
    let size = Family::<Labels, Gauge>::default();
    let mut pools = app.pools();
    pools.sort_by(|a, b| a.key.cmp(&b.key));
    let waits = crate::admin::connections::longest_waits(app);
    for pool in &pools {
        let labels = pool_labels(&pool.key.database, &pool.key.user);
        let counts = pool.counts();
        let clients_in = pool.client_count();
        let servers_in = pool.server_count();
        clients
            .get_or_create(&with_state(labels.clone(), "active"))
            .set(clients_in.saturating_sub(counts.waiting) as i64);
        clients
            .get_or_create(&with_state(labels.clone(), "waiting"))
            .set(counts.waiting as i64);
        servers
            .get_or_create(&with_state(labels.clone(), "active"))
            .set(servers_in.saturating_sub(counts.idle) as i64);
        servers
            .get_or_create(&with_state(labels.clone(), "idle"))
            .set(counts.idle as i64);
        servers
            .get_or_create(&with_state(labels.clone(), "login"))
            .set(counts.open.saturating_sub(servers_in) as i64);
        waiting.get_or_create(&labels).set(counts.waiting as i64);
        let waited_us = waits
            .get(&(Arc::as_ptr(pool) as usize))
            .copied()
            .unwrap_or(0);
        max_wait.get_or_create(&labels).set(waited_us as f64 / 1e6);
        size.get_or_create(&labels)
            .set(pool.settings().pool_size as i64);
    }
    registry.register(
        "pool_clients",
        "Clients logged in to a pool: active (not waiting) or waiting for a server connection",
        clients,
    );
    registry.register(
        "pool_servers",
        "Server connections of a pool: active (lent to a client), idle, or login (being opened)",
        servers,
    );
    registry.register(
        "pool_clients_waiting",
        "Clients waiting for a server connection",
        waiting,
    );
    registry.register_with_unit(
        "pool_max_wait",
        "How long the longest-waiting client of the pool has waited",
        Unit::Seconds,
        max_wait,
    );
    registry.register(
        "pool_size",
        "Server connections a pool may open (pool_size or default_pool_size), without the reserve",
        size,
    );
}

/// Per-database counters, PgBouncer's SHOW STATS totals (clients that left and connected
/// ones), in base units: bytes, and seconds for PgBouncer's microseconds.
fn register_databases(app: &App, registry: &mut Registry) {
    let totals = app.database_totals();
    for stat in Stat::ALL {
        let (name, unit, help) = database_metric(stat);
        let labels = |db: &str| vec![("database", db.to_owned())];
        match unit {
            Some(Unit::Seconds) => {
                let family = Family::<Labels, Counter<f64, AtomicU64>>::default();
                for (db, counters) in &totals {
                    family
                        .get_or_create(&labels(db))
                        .inc_by(counters.get(stat) as f64 / 1e6);
                }
                registry.register_with_unit(name, help, Unit::Seconds, family);
            }
            unit => {
                let family = Family::<Labels, Counter>::default();
                for (db, counters) in &totals {
                    family.get_or_create(&labels(db)).inc_by(counters.get(stat));
                }
                match unit {
                    Some(unit) => registry.register_with_unit(name, help, unit, family),
                    None => registry.register(name, help, family),
                }
            }
        }
    }
}

/// The metric (without prefix, unit and `_total`), its unit and its help for a statistic.
fn database_metric(stat: Stat) -> (&'static str, Option<Unit>, &'static str) {
    match stat {
        Stat::XactCount => (
            "database_transactions",
            None,
            "Transactions pooled (a statement outside a transaction block counts as one)",
        ),
        Stat::QueryCount => (
            "database_queries",
            None,
            "Queries pooled: Query messages and extended-protocol Syncs",
        ),
        Stat::ServerAssignmentCount => (
            "database_server_assignments",
            None,
            "Times a server connection was assigned to a client",
        ),
        Stat::Received => (
            "database_received",
            Some(Unit::Bytes),
            "Bytes received from clients",
        ),
        Stat::Sent => ("database_sent", Some(Unit::Bytes), "Bytes sent to clients"),
        Stat::XactTime => (
            "database_transaction",
            Some(Unit::Seconds),
            "Time spent in transactions, idle in transaction included",
        ),
        Stat::QueryTime => (
            "database_query",
            Some(Unit::Seconds),
            "Time spent waiting for the server's answers to queries",
        ),
        Stat::WaitTime => (
            "database_wait",
            Some(Unit::Seconds),
            "Time clients spent waiting for a server connection",
        ),
        Stat::ClientParseCount => (
            "database_client_parses",
            None,
            "Parse messages received from clients",
        ),
        Stat::ServerParseCount => (
            "database_server_parses",
            None,
            "Parse messages sent to servers, pgberth's own included",
        ),
        Stat::BindCount => ("database_binds", None, "Bind messages relayed"),
        Stat::ClientLoginCount => ("database_client_logins", None, "Clients that logged in"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_count_errors_by_sqlstate_and_handshakes_by_side_and_result() {
        let events = Events::default();
        events.client_error(SqlState::INVALID_PASSWORD);
        events.client_error(SqlState::INVALID_PASSWORD);
        events.client_error(SqlState::TOO_MANY_CONNECTIONS);
        assert_eq!(
            events.client_errors(),
            [("28P01".to_owned(), 2), ("53300".to_owned(), 1)]
        );
        events.tls_handshake(Side::Client, &Ok::<(), ()>(()));
        events.tls_handshake(Side::Server, &Err::<(), ()>(()));
        events.tls_handshake(Side::Server, &Err::<(), ()>(()));
        assert_eq!(events.tls_handshakes(Side::Client), (1, 0));
        assert_eq!(events.tls_handshakes(Side::Server), (0, 2));
    }

    #[test]
    fn bind_is_off_without_metrics_listen_and_takes_star_for_every_ipv4_address() {
        assert!(bind(&General::default()).unwrap().is_none());
        let general = General {
            metrics_listen: Some("*:0".into()),
            ..General::default()
        };
        let listener = bind(&general).unwrap().expect("bound");
        assert!(listener.local_addr().unwrap().ip().is_unspecified());
        let general = General {
            metrics_listen: Some("no-port".into()),
            ..General::default()
        };
        let err = bind(&general).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("cannot listen on metrics_listen = no-port: "),
            "{err}"
        );
    }
}
