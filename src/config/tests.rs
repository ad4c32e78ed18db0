//! End-to-end tests of `Config::load` on files written to a temp dir.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::*;

/// A temp dir holding the given files; returns it and the path of the first.
fn write(files: &[(&str, &str)]) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    for (name, text) in files {
        let path = dir.path().join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }
    let main = dir.path().join(files[0].0);
    (dir, main)
}

fn load(text: &str) -> (tempfile::TempDir, Result<Config, ConfigError>) {
    let (dir, path) = write(&[("pgbouncer.ini", text)]);
    let config = Config::load(&path);
    (dir, config)
}

fn load_ok(text: &str) -> (tempfile::TempDir, Config) {
    let (dir, config) = load(text);
    (dir, config.unwrap())
}

#[test]
fn defaults_are_pgbouncers() {
    let (_dir, c) = load_ok("[pgbouncer]\n");
    let g = &c.general;
    assert_eq!(*g, General::default());
    assert!(g.listen_addr.is_empty());
    assert_eq!(g.listen_port, 6432);
    assert_eq!(g.unix_socket_dir.as_deref(), Some(Path::new("/tmp")));
    assert_eq!(g.unix_socket_mode, 0o777);
    assert_eq!(g.auth_type, AuthType::Md5);
    assert_eq!(g.auth_file, None);
    assert_eq!(
        g.auth_query,
        "SELECT usename, passwd FROM pg_shadow WHERE usename=$1"
    );
    assert_eq!(g.pool_mode, PoolMode::Session);
    assert_eq!(g.max_client_conn, 100);
    assert_eq!(g.default_pool_size, 20);
    assert_eq!(g.min_pool_size, 0);
    assert_eq!(g.reserve_pool_size, 0);
    assert_eq!(g.reserve_pool_timeout, Duration::from_secs(5));
    assert_eq!(g.max_db_connections, 0);
    assert_eq!(g.max_user_connections, 0);
    assert_eq!(g.server_reset_query, "DISCARD ALL");
    assert!(!g.server_reset_query_always);
    assert_eq!(g.server_check_delay, Duration::from_secs(30));
    assert_eq!(g.server_check_query, "select 1");
    assert_eq!(g.server_lifetime, Duration::from_secs(3600));
    assert_eq!(g.server_idle_timeout, Duration::from_secs(600));
    assert_eq!(g.server_connect_timeout, Duration::from_secs(15));
    assert_eq!(g.server_login_retry, Duration::from_secs(15));
    assert_eq!(g.query_timeout, Duration::ZERO);
    assert_eq!(g.query_wait_timeout, Duration::from_secs(120));
    assert_eq!(g.client_idle_timeout, Duration::ZERO);
    assert_eq!(g.client_login_timeout, Duration::from_secs(60));
    assert_eq!(g.idle_transaction_timeout, Duration::ZERO);
    assert!(g.log_connections && g.log_disconnections && g.log_pooler_errors && g.log_stats);
    assert_eq!(g.stats_period, Duration::from_secs(60));
    assert_eq!(g.max_packet_size, 2147483647);
    assert_eq!(g.pkt_buf, 4096);
    assert!(g.tcp_keepalive);
    assert_eq!(g.tcp_defer_accept, cfg!(target_os = "linux"));
    assert!(!g.so_reuseport && !g.server_round_robin && !g.disable_pqexec);
    assert!(!g.application_name_add_host);
    assert_eq!(g.user, None);
    assert!(c.databases.is_empty() && c.fallback_database.is_none() && c.users.is_empty());
    assert!(c.userlist.is_empty());
    assert!(c.warnings.is_empty(), "{:?}", c.warnings);
}

const FULL: &str = r#"
;; a typical production pgbouncer.ini
[databases]
app = host=10.0.0.5 port=5433 dbname=app_prod pool_size=40 reserve_pool=5
app_tx = host=10.0.0.5 dbname=app_prod pool_mode=transaction max_db_connections=50
"Weird DB" = host=/var/run/postgresql user=svc password='s3cr''et pw' application_name='my app'
reporting = host=replica min_pool_size=2 client_encoding=UTF8 datestyle=ISO timezone=UTC connect_query='SET search_path = r'
* = host=fallback port=6000

[users]
batch = pool_mode=statement max_user_connections=7

[PgBouncer]
listen_addr = 127.0.0.1, ::1
listen_port = 7432
unix_socket_dir =
unix_socket_mode = 0700
auth_type = scram-sha-256
auth_file = userlist.txt
auth_user = pgbouncer_auth
auth_dbname = postgres
Pool_Mode = transaction
max_client_conn = 5000
default_pool_size = 25
min_pool_size = 3
reserve_pool_size = 4
reserve_pool_timeout = 2.5
max_db_connections = 100
max_user_connections = 90
server_reset_query =
server_reset_query_always = 1
server_check_delay = 10
server_check_query = SELECT 1 -- ; not a comment
server_lifetime = 1800.0
server_idle_timeout = 60
server_connect_timeout = 3
server_login_retry = 0.5
query_timeout = 30
query_wait_timeout = 1min
client_idle_timeout = 600
client_login_timeout = 10
idle_transaction_timeout = 20
ignore_startup_parameters = extra_float_digits, search_path
application_name_add_host = yes
log_connections = 0
log_disconnections = off
log_pooler_errors = false
logfile = /var/log/pgbouncer/pgbouncer.log
pidfile = /run/pgbouncer/pgbouncer.pid
admin_users = admin, root
stats_users = stats
stats_period = 15
max_packet_size = 1048576
pkt_buf = 8192
tcp_keepalive = 0
tcp_defer_accept = 0
so_reuseport = 1
server_round_robin = 1
disable_pqexec = 1
shutdown_wait_timeout = 30
user = postgres
"#;

#[test]
fn full_example_is_parsed() {
    let (dir, path) = write(&[
        ("pgbouncer.ini", FULL),
        (
            "userlist.txt",
            "\"svc\" \"md5a3556571e93b0d20722ba62be61e8c2d\"\n",
        ),
    ]);
    let c = Config::load(&path).unwrap();
    // Only keys whose feature is not there yet warn (admin console, stats).
    assert!(
        c.warnings
            .iter()
            .all(|w| w.message.contains("has no effect yet")),
        "{:?}",
        c.warnings
    );
    let g = &c.general;
    assert_eq!(g.listen_addr, vec!["127.0.0.1", "::1"]);
    assert_eq!(g.listen_port, 7432);
    assert_eq!(g.unix_socket_dir, None);
    assert_eq!(g.unix_socket_mode, 0o700);
    assert_eq!(g.auth_type, AuthType::ScramSha256);
    assert_eq!(
        g.auth_file.as_deref(),
        Some(dir.path().join("userlist.txt").as_path())
    );
    assert_eq!(g.auth_user.as_deref(), Some("pgbouncer_auth"));
    assert_eq!(g.auth_dbname.as_deref(), Some("postgres"));
    assert_eq!(g.pool_mode, PoolMode::Transaction);
    assert_eq!(
        (
            g.max_client_conn,
            g.default_pool_size,
            g.min_pool_size,
            g.reserve_pool_size
        ),
        (5000, 25, 3, 4)
    );
    assert_eq!(g.reserve_pool_timeout, Duration::from_millis(2500));
    assert_eq!((g.max_db_connections, g.max_user_connections), (100, 90));
    assert_eq!(g.server_reset_query, "");
    assert!(g.server_reset_query_always);
    assert_eq!(g.server_check_delay, Duration::from_secs(10));
    assert_eq!(g.server_check_query, "SELECT 1 -- ; not a comment");
    assert_eq!(g.server_lifetime, Duration::from_secs(1800));
    assert_eq!(g.server_idle_timeout, Duration::from_secs(60));
    assert_eq!(g.server_connect_timeout, Duration::from_secs(3));
    assert_eq!(g.server_login_retry, Duration::from_millis(500));
    assert_eq!(g.query_timeout, Duration::from_secs(30));
    assert_eq!(g.query_wait_timeout, Duration::from_secs(60));
    assert_eq!(g.client_idle_timeout, Duration::from_secs(600));
    assert_eq!(g.client_login_timeout, Duration::from_secs(10));
    assert_eq!(g.idle_transaction_timeout, Duration::from_secs(20));
    assert_eq!(
        g.ignore_startup_parameters,
        vec!["extra_float_digits", "search_path"]
    );
    assert!(g.application_name_add_host);
    assert!(!g.log_connections && !g.log_disconnections && !g.log_pooler_errors);
    assert_eq!(
        g.logfile.as_deref(),
        Some(Path::new("/var/log/pgbouncer/pgbouncer.log"))
    );
    assert_eq!(
        g.pidfile.as_deref(),
        Some(Path::new("/run/pgbouncer/pgbouncer.pid"))
    );
    assert_eq!(g.admin_users, vec!["admin", "root"]);
    assert_eq!(g.stats_users, vec!["stats"]);
    assert_eq!(g.stats_period, Duration::from_secs(15));
    assert_eq!((g.max_packet_size, g.pkt_buf), (1048576, 8192));
    assert!(
        !g.tcp_keepalive
            && !g.tcp_defer_accept
            && g.so_reuseport
            && g.server_round_robin
            && g.disable_pqexec
    );
    assert_eq!(g.shutdown_wait_timeout, Duration::from_secs(30));
    assert_eq!(g.user.as_deref(), Some("postgres"));

    let app = &c.databases["app"];
    assert_eq!(app.host.as_deref(), Some("10.0.0.5"));
    assert_eq!((app.port, app.dbname.as_str()), (5433, "app_prod"));
    assert_eq!((app.pool_size, app.reserve_pool), (Some(40), Some(5)));
    assert_eq!(app.defined_at, (path.clone(), 4));
    assert_eq!(app.effective_pool_size(g), 40);
    assert_eq!(app.effective_reserve_pool(g), 5);
    assert_eq!(app.effective_min_pool_size(g), 3);
    assert_eq!(app.effective_max_db_connections(g), 100);

    let tx = &c.databases["app_tx"];
    assert_eq!((tx.port, tx.pool_mode), (5432, Some(PoolMode::Transaction)));
    assert_eq!(tx.effective_pool_size(g), 25);
    assert_eq!(tx.effective_max_db_connections(g), 50);

    let weird = &c.databases["Weird DB"];
    assert_eq!(weird.dbname, "Weird DB");
    assert!(weird.is_unix_socket());
    assert_eq!(weird.user.as_deref(), Some("svc"));
    assert_eq!(weird.password.as_deref(), Some("s3cr'et pw"));
    assert_eq!(weird.application_name.as_deref(), Some("my app"));
    let debug = format!("{weird:?}");
    assert!(!debug.contains("s3cr"), "{debug}");

    let rep = &c.databases["reporting"];
    assert_eq!(rep.min_pool_size, Some(2));
    assert_eq!(
        (
            rep.client_encoding.as_deref(),
            rep.datestyle.as_deref(),
            rep.timezone.as_deref(),
            rep.connect_query.as_deref()
        ),
        (
            Some("UTF8"),
            Some("ISO"),
            Some("UTC"),
            Some("SET search_path = r")
        )
    );

    assert_eq!(c.users["batch"].max_user_connections, Some(7));
    assert_eq!(c.max_user_connections_for("batch"), 7);
    assert_eq!(c.max_user_connections_for("other"), 90);
    assert_eq!(c.userlist.len(), 1);
    assert!(matches!(c.userlist.get("svc"), Some(Secret::Md5(_))));
    assert!(!format!("{c:?}").contains("a3556571e93b"));
}

#[test]
fn pool_mode_precedence_is_user_then_database_then_general() {
    let (dir, path) = write(&[("pgbouncer.ini", FULL), ("userlist.txt", "")]);
    let c = Config::load(&path).unwrap();
    drop(dir);
    let app = c.database("app").unwrap();
    let stmt = c.database("app_tx").unwrap();
    assert_eq!(c.pool_mode_for(&app, "someone"), PoolMode::Transaction); // general
    assert_eq!(c.pool_mode_for(&stmt, "someone"), PoolMode::Transaction); // database
    assert_eq!(c.pool_mode_for(&app, "batch"), PoolMode::Statement); // user
    let (_dir, c) = load_ok("[databases]\ns = pool_mode=session\nt = pool_mode=transaction\n");
    assert_eq!(c.pool_mode_for(&c.databases["s"], "u"), PoolMode::Session);
    assert_eq!(
        c.pool_mode_for(&c.databases["t"], "u"),
        PoolMode::Transaction
    );
}

#[test]
fn fallback_database_takes_the_requested_name() {
    let (_dir, c) = load_ok("[databases]\nknown = host=a\n* = host=fb port=6000 user=x\n");
    let known = c.database("known").unwrap();
    assert_eq!(known.host.as_deref(), Some("a"));
    let other = c.database("other").unwrap();
    assert_eq!(other.name, "other");
    assert_eq!(other.dbname, "other");
    assert_eq!((other.host.as_deref(), other.port), (Some("fb"), 6000));
    assert_eq!(other.user.as_deref(), Some("x"));
    assert!(!c.databases.contains_key("*"));
    assert_eq!(c.fallback_database.as_ref().unwrap().dbname, "");

    let (_dir, c) = load_ok("[databases]\n* = host=fb dbname=fixed\n");
    let other = c.database("other").unwrap();
    assert_eq!(
        (other.name.as_str(), other.dbname.as_str()),
        ("other", "fixed")
    );

    let (_dir, c) = load_ok("[databases]\nknown = host=a\n");
    assert!(c.database("other").is_none());
}

#[test]
fn include_files_are_followed_with_their_own_line_numbers() {
    let (dir, path) = write(&[
        (
            "pgbouncer.ini",
            "[pgbouncer]\nlisten_port = 1\n%include conf.d/extra.ini\nafter = host=a\n",
        ),
        (
            "conf.d/extra.ini",
            "listen_port = 2\nbogus_key = 1\n[databases]\nincluded = host=h\n",
        ),
    ]);
    let c = Config::load(&path).unwrap();
    assert_eq!(c.general.listen_port, 2);
    // As in PgBouncer, the section switch inside the included file carries
    // over: back in the main file, `after` is a database.
    assert_eq!(c.databases["after"].defined_at, (path.clone(), 4));
    let extra = dir.path().join("conf.d/extra.ini");
    assert_eq!(c.databases["included"].defined_at, (extra.clone(), 4));
    assert_eq!(c.warnings.len(), 1, "{:?}", c.warnings);
    assert_eq!(
        c.warnings[0].to_string(),
        format!(
            "{}:2: unknown setting `bogus_key`, ignored",
            extra.display()
        )
    );
}

#[test]
fn bad_values_name_file_line_key_and_allowed_values() {
    let (dir, err) = load("[pgbouncer]\nlisten_port = 6432\npool_mode = sesion\n");
    let file = dir.path().join("pgbouncer.ini");
    assert_eq!(
        err.unwrap_err().to_string(),
        format!(
            "{}:3: invalid value \"sesion\" for pool_mode (expected one of: session, transaction, statement)",
            file.display()
        )
    );
    let (_dir, err) = load("[pgbouncer]\nauth_type = scram\n");
    let err = err.unwrap_err().to_string();
    assert!(
        err.contains(":2: invalid value \"scram\" for auth_type (expected one of: any, trust, plain, md5, scram-sha-256, cert, hba, pam)"),
        "{err}"
    );
    let (_dir, err) = load("[pgbouncer]\nlisten_port = 70000\n");
    assert!(
        err.unwrap_err()
            .to_string()
            .contains("an integer from 0 to 65535")
    );
    let (_dir, err) = load("[pgbouncer]\nserver_lifetime = forever\n");
    assert!(
        err.unwrap_err()
            .to_string()
            .contains("for server_lifetime (expected a duration")
    );
    let (_dir, err) = load("[pgbouncer]\nlog_connections = maybe\n");
    assert!(err.unwrap_err().to_string().contains("yes/no"));
    let (_dir, err) = load("[databases]\nx = port=abc\n");
    let err = err.unwrap_err().to_string();
    assert!(
        err.contains(":2: invalid value \"abc\" for port of database \"x\""),
        "{err}"
    );
    let (_dir, err) = load("[databases]\nx = pool_mode=tx\n");
    assert!(
        err.unwrap_err()
            .to_string()
            .contains("session, transaction, statement")
    );
    let (_dir, err) = load("[users]\nu = max_user_connections=-3\n");
    assert!(
        err.unwrap_err()
            .to_string()
            .contains(":2: invalid value \"-3\" for max_user_connections of user \"u\"")
    );
    let (_dir, err) = load("[databases]\nx = host='unterminated password=secret\n");
    let err = err.unwrap_err().to_string();
    assert!(
        err.contains(":2: database \"x\": unterminated quoted value"),
        "{err}"
    );
    assert!(!err.contains("secret"), "{err}");
}

#[test]
fn unknown_and_unsupported_keys_are_warnings_with_file_and_line() {
    let (dir, c) = load_ok(
        "[pgbouncer]\nfoo = 1\nclient_tls_dheparams = auto\nVERBOSE = 2\n\
         [databases]\nd = host=h frobnicate=1 load_balance_hosts=random\n\
         [users]\nu = pool_mode=session pool_size=3 zzz=1\n\
         [peers]\n1 = host=other\n\
         [weird]\nk = v\n\
         ",
    );
    let file = dir.path().join("pgbouncer.ini");
    let got: Vec<String> = c.warnings.iter().map(|w| w.to_string()).collect();
    let f = file.display();
    assert_eq!(
        got,
        vec![
            format!("{f}:2: unknown setting `foo`, ignored"),
            format!("{f}:3: `client_tls_dheparams` is not supported by pgberth yet, ignored"),
            format!("{f}:4: `verbose` is not supported by pgberth yet, ignored"),
            format!("{f}:6: unknown parameter `frobnicate` for database \"d\", ignored"),
            format!(
                "{f}:6: `load_balance_hosts` (database \"d\") is not supported by pgberth yet, ignored"
            ),
            format!("{f}:8: `pool_size` (user \"u\") is not supported by pgberth yet, ignored"),
            format!("{f}:8: unknown parameter `zzz` for user \"u\", ignored"),
            format!("{f}:10: [peers] is not supported by pgberth yet, peer `1` ignored"),
            format!("{f}:11: unknown section [weird], its settings are ignored"),
        ]
    );
    assert_eq!(c.warnings[0].file, file);
    assert_eq!(c.warnings[0].line, 2);
    assert_eq!(c.databases["d"].host.as_deref(), Some("h"));
}

#[test]
fn redefined_and_reserved_databases_warn() {
    let (_dir, c) = load_ok("[databases]\na = host=1\na = host=2\npgbouncer = host=3\n");
    assert_eq!(c.databases["a"].host.as_deref(), Some("2"));
    assert_eq!(c.warnings.len(), 2, "{:?}", c.warnings);
    assert!(c.warnings[0].message.contains("defined again"));
    assert!(c.warnings[0].message.contains("pgbouncer.ini:2"));
    assert!(c.warnings[1].message.contains("admin console"));
}

#[test]
fn auth_file_is_resolved_against_the_ini_dir_and_must_exist() {
    let (dir, err) = load("[pgbouncer]\nauth_file = missing/users.txt\n");
    let err = err.unwrap_err();
    let expected = dir.path().join("missing/users.txt");
    assert!(
        matches!(&err, ConfigError::Io { path, .. } if *path == expected),
        "{err:?}"
    );
    assert!(
        err.to_string()
            .starts_with(&format!("{}: cannot read: ", expected.display())),
        "{err}"
    );

    let (dir, path) = write(&[(
        "etc/pgbouncer.ini",
        "[pgbouncer]\nauth_file = /nonexistent/abs.txt\n",
    )]);
    drop(dir);
    let err = Config::load(&path).unwrap_err().to_string();
    assert!(err.contains("cannot read"), "{err}");

    let (_dir, path) = write(&[
        ("etc/pgbouncer.ini", "[pgbouncer]\nauth_file = users.txt\n"),
        ("etc/users.txt", "\"a\" \"b\"\n\"broken\n"),
    ]);
    let err = Config::load(&path).unwrap_err().to_string();
    assert!(
        err.contains("users.txt:2: malformed userlist line"),
        "{err}"
    );
}

#[test]
fn empty_values_unset_optional_settings() {
    let (_dir, c) = load_ok("[pgbouncer]\nauth_user =\nlogfile =\nlisten_addr =\nuser =\n");
    assert_eq!(c.general.auth_user, None);
    assert_eq!(c.general.logfile, None);
    assert!(c.general.listen_addr.is_empty());
    let (_dir, c) = load_ok("[databases]\nd = host='' user='' password=''\n");
    let d = &c.databases["d"];
    assert_eq!((d.host.as_deref(), d.user.as_deref()), (None, None));
    assert_eq!(d.password.as_deref(), Some(""));
    let (_dir, c) = load_ok("[pgbouncer]\nlisten_addr = *\n");
    assert_eq!(c.general.listen_addr, vec!["*"]);
}

#[test]
fn missing_config_file_is_an_io_error() {
    let err = Config::load(Path::new("/nonexistent/pgbouncer.ini")).unwrap_err();
    assert_eq!(err.location(), (Path::new("/nonexistent/pgbouncer.ini"), 0));
    assert!(
        err.to_string()
            .starts_with("/nonexistent/pgbouncer.ini: cannot read: ")
    );
}
