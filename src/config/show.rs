//! `[pgbouncer]` settings as text, key by key, the way PgBouncer's SHOW CONFIG prints them:
//! times in seconds, booleans as 0/1, lists comma-separated, unset values empty.

use std::path::PathBuf;
use std::time::Duration;

use super::{Config, General};

/// Settings that only a restart changes (SHOW CONFIG's `changeable` is `no` for them).
const RESTART_ONLY: &[&str] = &[
    "listen_addr",
    "listen_port",
    "unix_socket_dir",
    "unix_socket_mode",
    "user",
    "pidfile",
    "logfile",
    "workers",
    "so_reuseport",
    "tcp_defer_accept",
    "metrics_listen",
];

fn secs(d: Duration) -> String {
    let s = d.as_secs_f64();
    if s.fract() == 0.0 {
        format!("{}", s as u64)
    } else {
        format!("{s}")
    }
}

fn flag(b: bool) -> String {
    if b { "1".into() } else { "0".into() }
}

fn path(p: &Option<PathBuf>) -> String {
    p.as_ref()
        .map(|p| p.display().to_string())
        .unwrap_or_default()
}

fn text(s: &Option<String>) -> String {
    s.clone().unwrap_or_default()
}

fn list(v: &[String]) -> String {
    v.join(",")
}

impl General {
    /// Every setting pgberth reads, with its value as text, in a stable order.
    pub fn entries(&self) -> Vec<(&'static str, String)> {
        vec![
            ("listen_addr", list(&self.listen_addr)),
            ("listen_port", self.listen_port.to_string()),
            ("unix_socket_dir", path(&self.unix_socket_dir)),
            ("unix_socket_mode", format!("0{:o}", self.unix_socket_mode)),
            ("auth_type", self.auth_type.to_string()),
            ("auth_file", path(&self.auth_file)),
            ("auth_hba_file", path(&self.auth_hba_file)),
            ("auth_user", text(&self.auth_user)),
            ("auth_query", self.auth_query.clone()),
            ("auth_dbname", text(&self.auth_dbname)),
            ("pool_mode", self.pool_mode.to_string()),
            ("max_client_conn", self.max_client_conn.to_string()),
            ("default_pool_size", self.default_pool_size.to_string()),
            ("min_pool_size", self.min_pool_size.to_string()),
            ("reserve_pool_size", self.reserve_pool_size.to_string()),
            ("reserve_pool_timeout", secs(self.reserve_pool_timeout)),
            ("max_db_connections", self.max_db_connections.to_string()),
            (
                "max_user_connections",
                self.max_user_connections.to_string(),
            ),
            ("server_reset_query", self.server_reset_query.clone()),
            (
                "server_reset_query_always",
                flag(self.server_reset_query_always),
            ),
            ("server_check_delay", secs(self.server_check_delay)),
            ("server_check_query", self.server_check_query.clone()),
            ("server_lifetime", secs(self.server_lifetime)),
            ("server_idle_timeout", secs(self.server_idle_timeout)),
            ("server_connect_timeout", secs(self.server_connect_timeout)),
            ("server_login_retry", secs(self.server_login_retry)),
            ("query_timeout", secs(self.query_timeout)),
            ("query_wait_timeout", secs(self.query_wait_timeout)),
            ("client_idle_timeout", secs(self.client_idle_timeout)),
            ("client_login_timeout", secs(self.client_login_timeout)),
            (
                "idle_transaction_timeout",
                secs(self.idle_transaction_timeout),
            ),
            (
                "ignore_startup_parameters",
                list(&self.ignore_startup_parameters),
            ),
            ("track_extra_parameters", list(&self.track_extra_parameters)),
            (
                "application_name_add_host",
                flag(self.application_name_add_host),
            ),
            ("log_connections", flag(self.log_connections)),
            ("log_disconnections", flag(self.log_disconnections)),
            ("log_pooler_errors", flag(self.log_pooler_errors)),
            ("log_stats", flag(self.log_stats)),
            ("logfile", path(&self.logfile)),
            ("pidfile", path(&self.pidfile)),
            ("admin_users", list(&self.admin_users)),
            ("stats_users", list(&self.stats_users)),
            ("stats_period", secs(self.stats_period)),
            ("max_packet_size", self.max_packet_size.to_string()),
            ("pkt_buf", self.pkt_buf.to_string()),
            ("tcp_keepalive", flag(self.tcp_keepalive)),
            ("tcp_defer_accept", flag(self.tcp_defer_accept)),
            ("so_reuseport", flag(self.so_reuseport)),
            ("server_round_robin", flag(self.server_round_robin)),
            (
                "max_prepared_statements",
                self.max_prepared_statements.to_string(),
            ),
            ("disable_pqexec", flag(self.disable_pqexec)),
            ("shutdown_wait_timeout", secs(self.shutdown_wait_timeout)),
            ("user", text(&self.user)),
            ("client_tls_sslmode", self.client_tls_sslmode.to_string()),
            ("client_tls_key_file", path(&self.client_tls_key_file)),
            ("client_tls_cert_file", path(&self.client_tls_cert_file)),
            ("client_tls_ca_file", path(&self.client_tls_ca_file)),
            ("client_tls_protocols", self.client_tls_protocols.clone()),
            ("client_tls_ciphers", self.client_tls_ciphers.clone()),
            ("server_tls_sslmode", self.server_tls_sslmode.to_string()),
            ("server_tls_key_file", path(&self.server_tls_key_file)),
            ("server_tls_cert_file", path(&self.server_tls_cert_file)),
            ("server_tls_ca_file", path(&self.server_tls_ca_file)),
            ("server_tls_protocols", self.server_tls_protocols.clone()),
            ("server_tls_ciphers", self.server_tls_ciphers.clone()),
            ("workers", self.workers.to_string()),
            ("metrics_listen", text(&self.metrics_listen)),
        ]
    }
}

/// Whether a reload (RELOAD, SIGHUP) changes `key` (`changeable` in SHOW CONFIG).
pub fn changeable(key: &str) -> bool {
    !RESTART_ONLY.contains(&key)
}

/// Why the admin console's `SET key = value` was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SetError {
    #[error("unknown configuration parameter \"{0}\" (SHOW CONFIG lists them)")]
    Unknown(String),
    #[error("\"{0}\" is a PgBouncer setting pgberth does not support yet")]
    Unsupported(String),
    #[error("\"{0}\" cannot be changed while pgberth runs (changeable = no); restart to change it")]
    NotChangeable(String),
    #[error("{0}")]
    Invalid(String),
}

impl Config {
    /// A copy of this config with one `[pgbouncer]` setting changed, the value parsed exactly
    /// as in the ini file (relative paths against the ini file's directory); a new `auth_file`
    /// is read. What the admin console's SET applies.
    pub fn with_setting(&self, key: &str, value: &str) -> Result<Config, SetError> {
        let key = key.to_ascii_lowercase();
        let known = General::default().entries().iter().any(|(k, _)| *k == key);
        if !known {
            return Err(if super::UNSUPPORTED_GENERAL_KEYS.contains(&key.as_str()) {
                SetError::Unsupported(key)
            } else {
                SetError::Unknown(key)
            });
        }
        if !changeable(&key) {
            return Err(SetError::NotChangeable(key));
        }
        let mut config = self.clone();
        let at = super::error::At {
            file: &self.path,
            line: 0,
        };
        let invalid = |e: super::ConfigError| match e {
            super::ConfigError::InvalidValue {
                key,
                value,
                expected,
                ..
            } => SetError::Invalid(format!(
                "invalid value \"{value}\" for {key} (expected {expected})"
            )),
            other => SetError::Invalid(other.to_string()),
        };
        config
            .general
            .apply(&key, value, &self.path, at)
            .map_err(invalid)?;
        if key == "auth_file" {
            config.userlist = match &config.general.auth_file {
                Some(file) => super::Userlist::load(file).map_err(invalid)?,
                None => super::Userlist::default(),
            };
        }
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_setting_is_listed_once_with_pgbouncers_value_forms() {
        let general = General::default();
        let entries = general.entries();
        let mut keys: Vec<&str> = entries.iter().map(|(k, _)| *k).collect();
        keys.sort();
        let len = keys.len();
        keys.dedup();
        assert_eq!(keys.len(), len, "a key listed twice");
        let value = |k: &str| entries.iter().find(|(key, _)| *key == k).unwrap().1.clone();
        assert_eq!(value("server_lifetime"), "3600");
        assert_eq!(value("log_connections"), "1");
        assert_eq!(value("pool_mode"), "session");
        assert_eq!(value("unix_socket_mode"), "0777");
        assert!(!changeable("listen_port") && changeable("default_pool_size"));
    }
}
