//! The `[pgbouncer]` section: the `General` settings struct with PgBouncer's
//! defaults, and the code that applies one `key = value` to it.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::error::{At, ConfigError};
use super::ini::resolve;
use super::values::{
    non_empty, parse_bool, parse_count, parse_duration, parse_list, parse_octal_mode, parse_u16,
    parse_u32, parse_uint,
};
use super::{AuthType, PoolMode, SslMode};

/// Global settings from `[pgbouncer]`. `Default` gives PgBouncer's defaults.
#[derive(Debug, Clone, PartialEq)]
pub struct General {
    /// Addresses to listen on for TCP; empty means no TCP listener, `*` all addresses.
    pub listen_addr: Vec<String>,
    pub listen_port: u16,
    /// TLS towards clients: mode, key and certificate, CA for client certificates, versions
    /// (`secure` = TLS 1.2 and 1.3) and cipher list (`fast`, `normal`, `secure`, `all`, or
    /// OpenSSL suite names separated by `:`).
    pub client_tls_sslmode: SslMode,
    pub client_tls_key_file: Option<PathBuf>,
    pub client_tls_cert_file: Option<PathBuf>,
    pub client_tls_ca_file: Option<PathBuf>,
    pub client_tls_protocols: String,
    pub client_tls_ciphers: String,
    /// TLS towards PostgreSQL: the same settings for the server side; key and certificate are
    /// the client certificate pgberth presents.
    pub server_tls_sslmode: SslMode,
    pub server_tls_key_file: Option<PathBuf>,
    pub server_tls_cert_file: Option<PathBuf>,
    pub server_tls_ca_file: Option<PathBuf>,
    pub server_tls_protocols: String,
    pub server_tls_ciphers: String,
    /// `None` (set to an empty value) disables the unix socket.
    pub unix_socket_dir: Option<PathBuf>,
    pub unix_socket_mode: u32,
    pub auth_type: AuthType,
    /// Resolved against the main ini file's directory when relative.
    pub auth_file: Option<PathBuf>,
    /// pg_hba.conf-style rules for `auth_type = hba`; resolved like `auth_file`.
    pub auth_hba_file: Option<PathBuf>,
    pub auth_user: Option<String>,
    pub auth_query: String,
    pub auth_dbname: Option<String>,
    pub pool_mode: PoolMode,
    pub max_client_conn: u32,
    pub default_pool_size: u32,
    pub min_pool_size: u32,
    pub reserve_pool_size: u32,
    pub reserve_pool_timeout: Duration,
    /// 0 = unlimited.
    pub max_db_connections: u32,
    /// 0 = unlimited.
    pub max_user_connections: u32,
    pub server_reset_query: String,
    pub server_reset_query_always: bool,
    pub server_check_delay: Duration,
    pub server_check_query: String,
    pub server_lifetime: Duration,
    pub server_idle_timeout: Duration,
    pub server_connect_timeout: Duration,
    pub server_login_retry: Duration,
    /// Zero = disabled (as for every timeout below).
    pub query_timeout: Duration,
    pub query_wait_timeout: Duration,
    pub client_idle_timeout: Duration,
    pub client_login_timeout: Duration,
    pub idle_transaction_timeout: Duration,
    pub ignore_startup_parameters: Vec<String>,
    /// Startup parameters carried to server connections besides PgBouncer's fixed list.
    pub track_extra_parameters: Vec<String>,
    pub application_name_add_host: bool,
    pub log_connections: bool,
    pub log_disconnections: bool,
    pub log_pooler_errors: bool,
    /// Log a stats line every `stats_period`.
    pub log_stats: bool,
    pub logfile: Option<PathBuf>,
    pub pidfile: Option<PathBuf>,
    pub admin_users: Vec<String>,
    pub stats_users: Vec<String>,
    pub stats_period: Duration,
    pub max_packet_size: u32,
    pub pkt_buf: usize,
    pub tcp_keepalive: bool,
    /// `TCP_DEFER_ACCEPT` (45 s) on the TCP listeners: a client is accepted with its first
    /// bytes, not at its handshake. Linux only.
    pub tcp_defer_accept: bool,
    pub so_reuseport: bool,
    pub server_round_robin: bool,
    /// Named prepared statements kept per server connection in transaction and statement
    /// mode (LRU beyond it); 0 turns tracking off.
    pub max_prepared_statements: usize,
    pub disable_pqexec: bool,
    /// pgberth: how long SIGINT waits for clients to finish; zero = no limit.
    pub shutdown_wait_timeout: Duration,
    /// The OS user to switch to after start-up.
    pub user: Option<String>,
    /// pgberth: runtime worker threads; 0 = one per CPU.
    pub workers: usize,
    /// pgberth: `host:port` for Prometheus metrics and health probes (`*:port` = every IPv4
    /// address); `None` = off. Bound at start-up; a reload does not move it.
    pub metrics_listen: Option<String>,
}

impl Default for General {
    fn default() -> General {
        General {
            listen_addr: Vec::new(),
            listen_port: 6432,
            client_tls_sslmode: SslMode::Disable,
            client_tls_key_file: None,
            client_tls_cert_file: None,
            client_tls_ca_file: None,
            client_tls_protocols: "secure".into(),
            client_tls_ciphers: "fast".into(),
            server_tls_sslmode: SslMode::Prefer,
            server_tls_key_file: None,
            server_tls_cert_file: None,
            server_tls_ca_file: None,
            server_tls_protocols: "secure".into(),
            server_tls_ciphers: "fast".into(),
            unix_socket_dir: Some(PathBuf::from("/tmp")),
            unix_socket_mode: 0o777,
            auth_type: AuthType::Md5,
            auth_file: None,
            auth_hba_file: None,
            auth_user: None,
            auth_query: "SELECT usename, passwd FROM pg_shadow WHERE usename=$1".to_string(),
            auth_dbname: None,
            pool_mode: PoolMode::Session,
            max_client_conn: 100,
            default_pool_size: 20,
            min_pool_size: 0,
            reserve_pool_size: 0,
            reserve_pool_timeout: Duration::from_secs(5),
            max_db_connections: 0,
            max_user_connections: 0,
            server_reset_query: "DISCARD ALL".to_string(),
            server_reset_query_always: false,
            server_check_delay: Duration::from_secs(30),
            server_check_query: "select 1".to_string(),
            server_lifetime: Duration::from_secs(3600),
            server_idle_timeout: Duration::from_secs(600),
            server_connect_timeout: Duration::from_secs(15),
            server_login_retry: Duration::from_secs(15),
            query_timeout: Duration::ZERO,
            query_wait_timeout: Duration::from_secs(120),
            client_idle_timeout: Duration::ZERO,
            client_login_timeout: Duration::from_secs(60),
            idle_transaction_timeout: Duration::ZERO,
            ignore_startup_parameters: Vec::new(),
            track_extra_parameters: vec!["IntervalStyle".into()],
            application_name_add_host: false,
            log_connections: true,
            log_disconnections: true,
            log_pooler_errors: true,
            log_stats: true,
            logfile: None,
            pidfile: None,
            admin_users: Vec::new(),
            stats_users: Vec::new(),
            stats_period: Duration::from_secs(60),
            max_packet_size: 2147483647,
            pkt_buf: 4096,
            tcp_keepalive: true,
            tcp_defer_accept: cfg!(target_os = "linux"),
            so_reuseport: false,
            server_round_robin: false,
            max_prepared_statements: 200,
            disable_pqexec: false,
            shutdown_wait_timeout: Duration::ZERO,
            user: None,
            workers: 0,
            metrics_listen: None,
        }
    }
}

/// What became of a `[pgbouncer]` key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Applied {
    Set,
    /// Not a setting pgberth knows at all.
    Unknown,
}

impl General {
    /// Applies one setting. `key` must already be lower-cased; relative file
    /// paths are resolved against the directory of `ini_file` (the main file).
    pub(crate) fn apply(
        &mut self,
        key: &str,
        value: &str,
        ini_file: &Path,
        at: At<'_>,
    ) -> Result<Applied, ConfigError> {
        // Wraps a value parser's "expected …" into an error at this key.
        macro_rules! parse {
            ($parser:expr) => {
                $parser(value).map_err(|expected| at.invalid_value(key, value, expected))?
            };
        }
        let path = |v: &str| non_empty(v).map(|p| resolve(ini_file, Path::new(&p)));
        match key {
            "listen_addr" => self.listen_addr = parse_list(value),
            "listen_port" => self.listen_port = parse!(parse_u16),
            "client_tls_sslmode" => self.client_tls_sslmode = parse!(str::parse::<SslMode>),
            "client_tls_key_file" => self.client_tls_key_file = path(value),
            "client_tls_cert_file" => self.client_tls_cert_file = path(value),
            "client_tls_ca_file" => self.client_tls_ca_file = path(value),
            "client_tls_protocols" => self.client_tls_protocols = value.to_string(),
            "client_tls_ciphers" => self.client_tls_ciphers = value.to_string(),
            "server_tls_sslmode" => self.server_tls_sslmode = parse!(str::parse::<SslMode>),
            "server_tls_key_file" => self.server_tls_key_file = path(value),
            "server_tls_cert_file" => self.server_tls_cert_file = path(value),
            "server_tls_ca_file" => self.server_tls_ca_file = path(value),
            "server_tls_protocols" => self.server_tls_protocols = value.to_string(),
            "server_tls_ciphers" => self.server_tls_ciphers = value.to_string(),
            "unix_socket_dir" => self.unix_socket_dir = non_empty(value).map(PathBuf::from),
            "unix_socket_mode" => self.unix_socket_mode = parse!(parse_octal_mode),
            "auth_type" => self.auth_type = parse!(str::parse::<AuthType>),
            "auth_file" => self.auth_file = path(value),
            "auth_hba_file" => self.auth_hba_file = path(value),
            "auth_user" => self.auth_user = non_empty(value),
            "auth_query" => self.auth_query = value.to_string(),
            "auth_dbname" => self.auth_dbname = non_empty(value),
            "pool_mode" => self.pool_mode = parse!(str::parse::<PoolMode>),
            "max_client_conn" => self.max_client_conn = parse!(parse_count),
            "default_pool_size" => self.default_pool_size = parse!(parse_count),
            "min_pool_size" => self.min_pool_size = parse!(parse_count),
            "reserve_pool_size" => self.reserve_pool_size = parse!(parse_count),
            "reserve_pool_timeout" => self.reserve_pool_timeout = parse!(parse_duration),
            "max_db_connections" => self.max_db_connections = parse!(parse_count),
            "max_user_connections" => self.max_user_connections = parse!(parse_count),
            "server_reset_query" => self.server_reset_query = value.to_string(),
            "server_reset_query_always" => self.server_reset_query_always = parse!(parse_bool),
            "server_check_delay" => self.server_check_delay = parse!(parse_duration),
            "server_check_query" => self.server_check_query = value.to_string(),
            "server_lifetime" => self.server_lifetime = parse!(parse_duration),
            "server_idle_timeout" => self.server_idle_timeout = parse!(parse_duration),
            "server_connect_timeout" => self.server_connect_timeout = parse!(parse_duration),
            "server_login_retry" => self.server_login_retry = parse!(parse_duration),
            "query_timeout" => self.query_timeout = parse!(parse_duration),
            "query_wait_timeout" => self.query_wait_timeout = parse!(parse_duration),
            "client_idle_timeout" => self.client_idle_timeout = parse!(parse_duration),
            "client_login_timeout" => self.client_login_timeout = parse!(parse_duration),
            "idle_transaction_timeout" => self.idle_transaction_timeout = parse!(parse_duration),
            "ignore_startup_parameters" => self.ignore_startup_parameters = parse_list(value),
            "track_extra_parameters" => self.track_extra_parameters = parse_list(value),
            "application_name_add_host" => self.application_name_add_host = parse!(parse_bool),
            "log_connections" => self.log_connections = parse!(parse_bool),
            "log_disconnections" => self.log_disconnections = parse!(parse_bool),
            "log_pooler_errors" => self.log_pooler_errors = parse!(parse_bool),
            "log_stats" => self.log_stats = parse!(parse_bool),
            "logfile" => self.logfile = non_empty(value).map(PathBuf::from),
            "pidfile" => self.pidfile = non_empty(value).map(PathBuf::from),
            "admin_users" => self.admin_users = parse_list(value),
            "stats_users" => self.stats_users = parse_list(value),
            "stats_period" => self.stats_period = parse!(parse_duration),
            "max_packet_size" => self.max_packet_size = parse!(parse_u32),
            "pkt_buf" => self.pkt_buf = parse!(|v| parse_uint(v, i32::MAX as u64)) as usize,
            "tcp_keepalive" => self.tcp_keepalive = parse!(parse_bool),
            "tcp_defer_accept" => self.tcp_defer_accept = parse!(parse_bool),
            "so_reuseport" => self.so_reuseport = parse!(parse_bool),
            "server_round_robin" => self.server_round_robin = parse!(parse_bool),
            "max_prepared_statements" => {
                self.max_prepared_statements = parse!(|v| parse_uint(v, 1_000_000)) as usize
            }
            "disable_pqexec" => self.disable_pqexec = parse!(parse_bool),
            "shutdown_wait_timeout" => self.shutdown_wait_timeout = parse!(parse_duration),
            "user" => self.user = non_empty(value),
            "workers" => self.workers = parse!(|v| parse_uint(v, 1024)) as usize,
            "metrics_listen" => self.metrics_listen = non_empty(value),
            _ => return Ok(Applied::Unknown),
        }
        Ok(Applied::Set)
    }
}
