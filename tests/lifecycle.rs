//! The life of a running pgberth: TCP and unix-socket clients, SIGHUP reloads (good and bad),
//! SIGINT drain and SIGTERM stop, through the built binary against the real PostgreSQL.

mod support;

use std::time::Duration;

use support::{Pgberth, SCRAM_PASS, SCRAM_USER};
use tokio_postgres::error::SqlState;

/// Generous bound for anything that should happen promptly; only detects hangs.
const HANG: Duration = Duration::from_secs(30);

const USERLIST: &str = "\"scram_user\" \"scram_pass\"\n";

/// An ini with `[databases]` lines `databases` and `[pgbouncer]` lines `extra`.
fn ini(databases: &str, extra: &str) -> String {
    format!(
        "\
[databases]
{databases}

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = @PORT@
unix_socket_dir = @DIR@
auth_type = scram-sha-256
auth_file = @DIR@/userlist.txt
{extra}
"
    )
}

const APP: &str = "app = host=127.0.0.1 port=@PGPORT@ dbname=app";

async fn select_int(client: &tokio_postgres::Client, sql: &str) -> i32 {
    client
        .query_one(sql, &[])
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e:?}"))
        .get(0)
}

async fn backend_pid(client: &tokio_postgres::Client) -> i32 {
    select_int(client, "SELECT pg_backend_pid()").await
}

/// Sends SIGHUP and waits for the log to show the `n`th reload outcome containing `needle`.
fn reload(pgberth: &Pgberth, needle: &str) {
    let before = pgberth.log_contents().matches(needle).count();
    pgberth.signal(libc::SIGHUP);
    let deadline = std::time::Instant::now() + HANG;
    while pgberth.log_contents().matches(needle).count() <= before {
        assert!(
            std::time::Instant::now() < deadline,
            "no {needle:?} after SIGHUP:\n{}",
            pgberth.log_contents()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits for pgberth to exit while letting this runtime's tasks (client connections) run.
async fn wait_exit_async(pgberth: &mut Pgberth) -> Option<std::process::ExitStatus> {
    let deadline = tokio::time::Instant::now() + HANG;
    while tokio::time::Instant::now() < deadline {
        if let Some(status) = pgberth.wait_exit(Duration::ZERO) {
            return Some(status);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    None
}

/// pgberth's unix socket, once it exists. The launcher waits for the TCP port only, and the
/// socket file is bound just after it.
fn unix_socket(pgberth: &Pgberth) -> std::path::PathBuf {
    let socket = pgberth.dir().join(format!(".s.PGSQL.{}", pgberth.port()));
    let deadline = std::time::Instant::now() + HANG;
    while !socket.exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "{} is missing:\n{}",
            socket.display(),
            pgberth.log_contents()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    socket
}

#[tokio::test]
async fn clients_connect_over_tcp() {
    let pgberth = Pgberth::start(&ini(APP, ""), USERLIST);
    let client = pgberth.connect(SCRAM_USER, SCRAM_PASS, "app").await;
    assert_eq!(select_int(&client, "SELECT 41 + 1").await, 42);
}

#[tokio::test]
async fn clients_connect_over_the_unix_socket() {
    let pgberth = Pgberth::start(&ini(APP, ""), USERLIST);
    let socket = unix_socket(&pgberth);

    let conn_str = format!(
        "host={} port={} user={SCRAM_USER} password={SCRAM_PASS} dbname=app connect_timeout=10",
        pgberth.dir().display(),
        pgberth.port()
    );
    let (client, connection) = tokio_postgres::connect(&conn_str, tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|e| {
            panic!(
                "connect over {}: {e:?}\n{}",
                socket.display(),
                pgberth.log_contents()
            )
        });
    tokio::spawn(connection);
    let user: String = client
        .query_one("SELECT current_user::text", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(user, SCRAM_USER);
}

#[tokio::test]
async fn sighup_adds_new_database_without_dropping_clients() {
    let pgberth = Pgberth::start(&ini(APP, "pool_mode = transaction"), USERLIST);
    let idle = pgberth.connect(SCRAM_USER, SCRAM_PASS, "app").await;
    assert_eq!(select_int(&idle, "SELECT 1").await, 1);
    // A client in the middle of a transaction across the reload.
    let in_tx = pgberth.connect(SCRAM_USER, SCRAM_PASS, "app").await;
    in_tx
        .batch_execute(
            "BEGIN; CREATE TEMP TABLE t (x int) ON COMMIT DROP; INSERT INTO t VALUES (7)",
        )
        .await
        .unwrap();

    let err = pgberth
        .try_connect(SCRAM_USER, SCRAM_PASS, "app2")
        .await
        .expect_err("app2 is not configured yet");
    assert_eq!(err.code(), Some(&SqlState::INVALID_CATALOG_NAME), "{err:?}");

    pgberth.rewrite_ini(&ini(
        &format!("{APP}\napp2 = host=127.0.0.1 port=@PGPORT@ dbname=app"),
        "pool_mode = transaction",
    ));
    reload(&pgberth, "configuration reloaded");

    let new = pgberth.connect(SCRAM_USER, SCRAM_PASS, "app2").await;
    let db: String = new
        .query_one("SELECT current_database()::text", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(db, "app");

    assert_eq!(select_int(&in_tx, "SELECT x FROM t").await, 7);
    in_tx.batch_execute("COMMIT").await.unwrap();
    assert_eq!(select_int(&idle, "SELECT 2").await, 2);
    assert_eq!(select_int(&in_tx, "SELECT 3").await, 3);
}

#[tokio::test]
async fn sighup_raising_pool_size_lets_two_transactions_run_at_once() {
    let databases = |size: u32| format!("{APP} pool_size={size}");
    let extra = "pool_mode = transaction\nquery_wait_timeout = 1";
    let pgberth = Pgberth::start(&ini(&databases(1), extra), USERLIST);

    let first = pgberth.connect(SCRAM_USER, SCRAM_PASS, "app").await;
    first.batch_execute("BEGIN").await.unwrap();
    let first_pid = backend_pid(&first).await;

    // pool_size = 1: the only server connection is held by `first`'s open transaction, so a
    // second client's query can only wait for it and gives up after query_wait_timeout.
    let second = pgberth.connect(SCRAM_USER, SCRAM_PASS, "app").await;
    let err = tokio::time::timeout(HANG, second.simple_query("SELECT 1"))
        .await
        .expect("the waiting query must end with query_wait_timeout")
        .expect_err("no server connection can be free with pool_size = 1");
    assert!(
        err.to_string().contains("query_wait_timeout")
            || err
                .as_db_error()
                .is_some_and(|e| e.message().contains("query_wait_timeout")),
        "{err:?}"
    );

    pgberth.rewrite_ini(&ini(&databases(2), extra));
    reload(&pgberth, "configuration reloaded");

    // `first` still holds its transaction; a second one now gets a connection of its own.
    let second = pgberth.connect(SCRAM_USER, SCRAM_PASS, "app").await;
    second.batch_execute("BEGIN").await.unwrap();
    let second_pid = tokio::time::timeout(HANG, backend_pid(&second))
        .await
        .expect("with pool_size = 2 the second transaction must not wait");
    assert_ne!(first_pid, second_pid);
    assert_eq!(backend_pid(&first).await, first_pid);
    first.batch_execute("COMMIT").await.unwrap();
    second.batch_execute("COMMIT").await.unwrap();
}

#[tokio::test]
async fn sighup_with_a_bad_ini_is_refused_and_the_old_config_keeps_working() {
    let pgberth = Pgberth::start(&ini(APP, ""), USERLIST);
    let client = pgberth.connect(SCRAM_USER, SCRAM_PASS, "app").await;

    let bad = ini(
        &format!("{APP}\napp2 = host=127.0.0.1 port=@PGPORT@ dbname=app"),
        "pool_mode = sesion",
    );
    pgberth.rewrite_ini(&bad);
    reload(&pgberth, "reload failed");
    let log = pgberth.log_contents();
    let bad_line = bad.lines().position(|l| l == "pool_mode = sesion").unwrap() + 1;
    assert!(
        log.contains(&format!("{}:{bad_line}:", pgberth.ini_path().display())),
        "the refused reload must name file:line:\n{log}"
    );

    assert_eq!(select_int(&client, "SELECT 5").await, 5);
    let again = pgberth.connect(SCRAM_USER, SCRAM_PASS, "app").await;
    assert_eq!(select_int(&again, "SELECT 6").await, 6);
    let err = pgberth
        .try_connect(SCRAM_USER, SCRAM_PASS, "app2")
        .await
        .expect_err("the refused config's new database must not exist");
    assert_eq!(err.code(), Some(&SqlState::INVALID_CATALOG_NAME), "{err:?}");
}

#[tokio::test]
async fn sigint_refuses_new_clients_and_exits_after_the_last_client_leaves() {
    let mut pgberth = Pgberth::start(&ini(APP, ""), USERLIST);
    let client = pgberth.connect(SCRAM_USER, SCRAM_PASS, "app").await;
    client.batch_execute("BEGIN").await.unwrap();

    pgberth.signal(libc::SIGINT);
    pgberth.wait_for_log("SIGINT", HANG);

    let refused = pgberth.try_connect(SCRAM_USER, SCRAM_PASS, "app").await;
    assert!(refused.is_err(), "a new client was accepted after SIGINT");

    assert_eq!(select_int(&client, "SELECT 8").await, 8);
    client.batch_execute("COMMIT").await.unwrap();
    assert!(
        pgberth.wait_exit(Duration::ZERO).is_none(),
        "pgberth exited while a client was connected:\n{}",
        pgberth.log_contents()
    );

    drop(client);
    let status = wait_exit_async(&mut pgberth)
        .await
        .expect("pgberth must exit once the last client left");
    assert!(status.success(), "{status}\n{}", pgberth.log_contents());
}

#[tokio::test]
async fn sigterm_exits_at_once_with_clients_connected() {
    let mut pgberth = Pgberth::start(&ini(APP, ""), USERLIST);
    let client = pgberth.connect(SCRAM_USER, SCRAM_PASS, "app").await;
    client.batch_execute("BEGIN").await.unwrap();
    let socket = unix_socket(&pgberth);

    pgberth.signal(libc::SIGTERM);
    let status = pgberth
        .wait_exit(HANG)
        .expect("SIGTERM must stop pgberth with a client connected");
    assert!(status.success(), "{status}\n{}", pgberth.log_contents());
    assert!(!socket.exists(), "the unix socket file was left behind");

    let after = tokio::time::timeout(HANG, client.simple_query("SELECT 1"))
        .await
        .expect("the client must notice the closed connection");
    assert!(after.is_err(), "the client's connection outlived pgberth");
}
