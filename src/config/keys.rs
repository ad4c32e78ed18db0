//! Lists of PgBouncer settings that pgberth recognises but does not implement
//! yet. Setting one produces a warning instead of an "unknown setting" one.

/// `[pgbouncer]` keys pgberth parses and keeps but whose feature it does not have yet, with
/// the reason shown in the warning.
pub const NOT_YET_EFFECTIVE_GENERAL_KEYS: &[(&str, &str)] = &[
    ("auth_hba_file", "auth_type = hba is not supported yet"),
    (
        "disable_pqexec",
        "multi-statement queries are always allowed",
    ),
];

/// `[pgbouncer]` keys of PgBouncer 1.25 that have no field in `General`.
pub const UNSUPPORTED_GENERAL_KEYS: &[&str] = &[
    "auth_ident_file",
    "auth_ldap_options",
    "autodb_idle_timeout",
    "cancel_wait_timeout",
    "client_tls13_ciphers",
    "client_tls_dheparams",
    "client_tls_ecdhcurve",
    "conffile",
    "dns_max_ttl",
    "dns_nxdomain_ttl",
    "dns_zone_check_period",
    "job_name",
    "listen_backlog",
    "max_db_client_connections",
    "max_user_client_connections",
    "peer_id",
    "query_wait_notify",
    "resolv_conf",
    "sbuf_loopcnt",
    "scram_iterations",
    "server_fast_close",
    "server_tls13_ciphers",
    "service_name",
    "suspend_timeout",
    "syslog",
    "syslog_facility",
    "syslog_ident",
    "tcp_keepcnt",
    "tcp_keepidle",
    "tcp_keepintvl",
    "tcp_socket_buffer",
    "tcp_user_timeout",
    "transaction_timeout",
    "unix_socket_group",
    "verbose",
];

/// Connection-string keys of `[databases]` lines that PgBouncer accepts and
/// pgberth does not implement yet.
pub const UNSUPPORTED_DATABASE_KEYS: &[&str] = &[
    "auth_dbname",
    "auth_query",
    "load_balance_hosts",
    "max_db_client_connections",
    "server_lifetime",
];

/// Keys of `[users]` lines that PgBouncer accepts and pgberth does not
/// implement yet.
pub const UNSUPPORTED_USER_KEYS: &[&str] = &[
    "client_idle_timeout",
    "idle_transaction_timeout",
    "max_user_client_connections",
    "pool_size",
    "query_timeout",
    "reserve_pool_size",
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_are_sorted_lowercase_and_free_of_duplicates() {
        for list in [
            UNSUPPORTED_GENERAL_KEYS,
            UNSUPPORTED_DATABASE_KEYS,
            UNSUPPORTED_USER_KEYS,
        ] {
            assert!(list.windows(2).all(|w| w[0] < w[1]), "{list:?}");
            assert!(list.iter().all(|k| k.to_ascii_lowercase() == *k));
        }
    }
}
