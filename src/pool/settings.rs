//! The settings one pool runs with, derived from the config snapshot for its (database, user).

use std::time::{Duration, Instant};

use crate::config::{Config, Database, Secret};
use crate::server::{ServerPassword, ServerTarget, ServerTls};
use crate::tls::TlsSettings;

use super::ServerConn;

/// Everything a pool needs from the configuration, resolved for one (database, user).
#[derive(Debug, Clone, PartialEq)]
pub struct PoolSettings {
    pub target: ServerTarget,
    pub password: ServerPassword,
    pub tls: ServerTls,
    /// The userlist holds a SCRAM verifier for the server user: log in with the keys of a
    /// client that authenticated against it.
    pub scram_passthrough: bool,
    pub pool_size: usize,
    pub min_pool_size: usize,
    pub reserve_pool: usize,
    pub reserve_pool_timeout: Duration,
    pub max_db_connections: usize,
    pub max_user_connections: usize,
    pub server_lifetime: Duration,
    pub server_idle_timeout: Duration,
    pub server_check_delay: Duration,
    pub server_check_query: String,
    pub server_connect_timeout: Duration,
    pub server_login_retry: Duration,
    /// Run once on every new server connection, after login.
    pub connect_query: Option<String>,
    pub query_wait_timeout: Duration,
    pub server_reset_query: String,
    pub server_reset_query_always: bool,
}

/// Where a database line without `host` connects: the unix socket directory PostgreSQL uses
/// on this system.
fn default_socket_dir() -> String {
    if std::path::Path::new("/var/run/postgresql").is_dir() {
        "/var/run/postgresql".into()
    } else {
        "/tmp".into()
    }
}

impl PoolSettings {
    /// Resolves the settings of the pool for `db` logging in to the server as `server_user`.
    pub fn new(
        config: &Config,
        tls: &TlsSettings,
        db: &Database,
        server_user: &str,
    ) -> PoolSettings {
        let g = &config.general;
        let mut params = Vec::new();
        if let Some(name) = &db.application_name {
            params.push(("application_name".to_owned(), name.clone()));
        }
        for (key, value) in [
            ("client_encoding", &db.client_encoding),
            ("DateStyle", &db.datestyle),
            ("TimeZone", &db.timezone),
        ] {
            if let Some(v) = value {
                params.push((key.to_owned(), v.clone()));
            }
        }
        let target = ServerTarget {
            host: db.host.clone().unwrap_or_else(default_socket_dir),
            port: db.port,
            dbname: db.dbname.clone(),
            user: server_user.to_owned(),
            params,
        };
        let from_db_line = db
            .password
            .clone()
            .filter(|_| db.user.as_deref() == Some(server_user));
        let (password, scram_passthrough) = match from_db_line {
            Some(p) => (ServerPassword::Plain(p), false),
            None => match config.userlist.get(server_user) {
                Some(Secret::Plain(p)) => (ServerPassword::Plain(p.clone()), false),
                Some(Secret::Md5(m)) => (ServerPassword::Md5(m.clone()), false),
                Some(Secret::Scram(_)) => (ServerPassword::None, true),
                None => (ServerPassword::None, false),
            },
        };
        let max_user_connections = config
            .users
            .get(server_user)
            .and_then(|u| u.max_user_connections)
            .unwrap_or(g.max_user_connections);
        PoolSettings {
            target,
            password,
            tls: ServerTls {
                mode: tls.server_mode,
                config: tls.connector.clone(),
                events: tls.events.clone(),
            },
            scram_passthrough,
            pool_size: db.pool_size.unwrap_or(g.default_pool_size) as usize,
            min_pool_size: db.min_pool_size.unwrap_or(g.min_pool_size) as usize,
            reserve_pool: db.reserve_pool.unwrap_or(g.reserve_pool_size) as usize,
            reserve_pool_timeout: g.reserve_pool_timeout,
            max_db_connections: db.max_db_connections.unwrap_or(g.max_db_connections) as usize,
            max_user_connections: max_user_connections as usize,
            server_lifetime: g.server_lifetime,
            server_idle_timeout: g.server_idle_timeout,
            server_check_delay: g.server_check_delay,
            server_check_query: g.server_check_query.clone(),
            server_connect_timeout: g.server_connect_timeout,
            server_login_retry: g.server_login_retry,
            connect_query: db.connect_query.clone(),
            query_wait_timeout: g.query_wait_timeout,
            server_reset_query: g.server_reset_query.clone(),
            server_reset_query_always: g.server_reset_query_always,
        }
    }

    /// `server_lifetime`: a connection older than this is closed instead of reused; zero
    /// means a connection is used only once.
    pub fn lifetime_over(&self, conn: &ServerConn, now: Instant) -> bool {
        self.server_lifetime.is_zero()
            || now.saturating_duration_since(conn.connected_at) >= self.server_lifetime
    }
}

impl PartialEq for ServerPassword {
    fn eq(&self, other: &ServerPassword) -> bool {
        match (self, other) {
            (ServerPassword::None, ServerPassword::None) => true,
            (ServerPassword::Plain(a), ServerPassword::Plain(b)) => a == b,
            (ServerPassword::Md5(a), ServerPassword::Md5(b)) => a == b,
            (
                ServerPassword::ScramKeys { client_key: a, .. },
                ServerPassword::ScramKeys { client_key: b, .. },
            ) => a == b,
            _ => false,
        }
    }
}
