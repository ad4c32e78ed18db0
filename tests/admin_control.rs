//! The admin console's control commands against a real PostgreSQL: PAUSE/RESUME, SUSPEND,
//! DISABLE/ENABLE, RECONNECT, WAIT_CLOSE, SET and the three SHUTDOWNs, and that stats_users may
//! run none of them. Waiting is asserted through state (SHOW POOLS, pg_stat_activity, a task
//! that has not finished), never by elapsed time.

mod support;

use std::time::Duration;

use support::{PATIENCE, Pgberth, SCRAM_PASS, SCRAM_USER, eventually, simple_rows as rows};
use tokio::task::JoinHandle;
use tokio_postgres::error::SqlState;
use tokio_postgres::{Client, SimpleQueryMessage};

const USERLIST: &str =
    "\"scram_user\" \"scram_pass\"\n\"admin\" \"admin_pass\"\n\"watcher\" \"watcher_pass\"\n";

/// `pool_size` on the database line when given, else `default_pool_size` applies.
fn ini(pool_size: Option<u32>) -> String {
    let pool_size = pool_size
        .map(|n| format!(" pool_size={n}"))
        .unwrap_or_default();
    format!(
        "\
[databases]
app = host=127.0.0.1 port=@PGPORT@ dbname=app{pool_size}

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = @PORT@
unix_socket_dir = @DIR@
auth_type = scram-sha-256
auth_file = @DIR@/userlist.txt
pool_mode = transaction
admin_users = admin
stats_users = watcher
server_login_retry = 0
"
    )
}

async fn admin(pgberth: &Pgberth) -> Client {
    pgberth.connect("admin", "admin_pass", "pgbouncer").await
}

async fn app_client(pgberth: &Pgberth) -> Client {
    pgberth.connect(SCRAM_USER, SCRAM_PASS, "app").await
}

/// One value of the row whose first column is `key`, from a SHOW.
async fn show_value(client: &Client, sql: &str, key: &str, column: &str) -> String {
    let (columns, rows) = rows(client, sql).await;
    let i = columns
        .iter()
        .position(|c| c == column)
        .unwrap_or_else(|| panic!("{sql} has no column {column}: {columns:?}"));
    let row = rows
        .iter()
        .find(|r| r[0] == key)
        .unwrap_or_else(|| panic!("{sql} has no row {key}: {rows:?}"));
    row[i].clone()
}

async fn pools_value(admin: &Client, column: &str) -> u64 {
    show_value(admin, "SHOW POOLS", "app", column)
        .await
        .parse()
        .unwrap()
}

/// The single value of a query's first row.
async fn scalar(client: &Client, sql: &str) -> String {
    let (_, rows) = rows(client, sql).await;
    rows[0][0].clone()
}

async fn finish<T>(task: JoinHandle<T>, what: &str) -> T {
    tokio::time::timeout(PATIENCE, task)
        .await
        .unwrap_or_else(|_| panic!("{what} did not finish within {PATIENCE:?}"))
        .expect("task panicked")
}

/// Runs `sql` on `client` in a task, handing the client back with the result.
fn spawn_query(
    client: Client,
    sql: &'static str,
) -> JoinHandle<(
    Client,
    Result<Vec<SimpleQueryMessage>, tokio_postgres::Error>,
)> {
    tokio::spawn(async move {
        let result = client.simple_query(sql).await;
        (client, result)
    })
}

fn first_value(messages: &[SimpleQueryMessage]) -> String {
    messages
        .iter()
        .find_map(|m| match m {
            SimpleQueryMessage::Row(row) => row.get(0).map(str::to_owned),
            _ => None,
        })
        .expect("a row")
}

async fn expect_error(client: &Client, sql: &str, code: &SqlState) -> String {
    let err = client
        .simple_query(sql)
        .await
        .expect_err(&format!("{sql} must fail"));
    assert_eq!(err.code(), Some(code), "{sql}: {err}");
    err.as_db_error().unwrap().message().to_owned()
}

/// A connection straight to PostgreSQL, to look at pg_stat_activity.
async fn direct() -> Client {
    let (client, conn) = tokio_postgres::connect(
        &support::direct_conn_str("postgres", "postgres", "postgres"),
        tokio_postgres::NoTls,
    )
    .await
    .expect("connect to PostgreSQL directly");
    tokio::spawn(conn);
    client
}

async fn backend_alive(direct: &Client, pid: &str) -> bool {
    let sql = format!("SELECT count(*) FROM pg_stat_activity WHERE pid = {pid}");
    scalar(direct, &sql).await != "0"
}

#[tokio::test]
async fn pause_holds_new_transactions_until_resume() {
    let pgberth = Pgberth::start(&ini(Some(2)), USERLIST);
    let admin = admin(&pgberth).await;
    let client = app_client(&pgberth).await;
    client.simple_query("SELECT 1").await.unwrap();
    // The client may see its answer a moment before its connection is back in the pool.
    eventually("the server connection is idle in the pool", || async {
        pools_value(&admin, "sv_idle").await == 1
    })
    .await;

    admin.simple_query("PAUSE").await.unwrap();
    assert_eq!(
        show_value(&admin, "SHOW STATE", "paused", "value").await,
        "yes"
    );
    assert_eq!(
        show_value(&admin, "SHOW STATE", "active", "value").await,
        "no"
    );
    assert_eq!(
        pools_value(&admin, "sv_idle").await + pools_value(&admin, "sv_active").await,
        0,
        "PAUSE closes the idle server connections"
    );
    let message = expect_error(&admin, "PAUSE", &SqlState::OBJECT_NOT_IN_PREREQUISITE_STATE).await;
    assert!(message.contains("already suspended/paused"), "{message}");

    let query = spawn_query(client, "SELECT 42");
    eventually(
        "the query waits in the paused pool (cl_waiting)",
        || async { pools_value(&admin, "cl_waiting").await >= 1 },
    )
    .await;
    assert!(!query.is_finished(), "no transaction runs while paused");

    admin.simple_query("RESUME").await.unwrap();
    let (_client, result) = finish(query, "the query after RESUME").await;
    assert_eq!(first_value(&result.expect("the query succeeds")), "42");
    assert_eq!(
        show_value(&admin, "SHOW STATE", "active", "value").await,
        "yes"
    );
    let message = expect_error(
        &admin,
        "RESUME",
        &SqlState::OBJECT_NOT_IN_PREREQUISITE_STATE,
    )
    .await;
    assert!(message.contains("not paused"), "{message}");
}

#[tokio::test]
async fn pause_db_waits_for_an_open_transaction_to_commit() {
    let pgberth = Pgberth::start(&ini(Some(2)), USERLIST);
    let watcher_admin = admin(&pgberth).await;
    let pausing_admin = admin(&pgberth).await;
    let client = app_client(&pgberth).await;
    client.batch_execute("BEGIN; SELECT 1").await.unwrap();

    let pause = tokio::spawn(async move {
        let result = pausing_admin.simple_query("PAUSE app").await;
        (pausing_admin, result)
    });
    eventually("SHOW DATABASES reports app paused", || async {
        show_value(&watcher_admin, "SHOW DATABASES", "app", "paused").await == "1"
    })
    .await;
    assert_eq!(pools_value(&watcher_admin, "sv_active").await, 1);
    assert!(
        !pause.is_finished(),
        "PAUSE returns only once the transaction has released its server connection"
    );
    // The transaction goes on while PAUSE waits.
    client.simple_query("SELECT 2").await.unwrap();
    client.batch_execute("COMMIT").await.unwrap();

    let (pausing_admin, result) = finish(pause, "PAUSE app after COMMIT").await;
    result.expect("PAUSE app succeeds");
    assert_eq!(
        pools_value(&watcher_admin, "sv_active").await
            + pools_value(&watcher_admin, "sv_idle").await,
        0,
        "the released connection was closed"
    );
    let message = expect_error(
        &pausing_admin,
        "PAUSE app",
        &SqlState::OBJECT_NOT_IN_PREREQUISITE_STATE,
    )
    .await;
    assert!(message.contains("already paused"), "{message}");
    let message = expect_error(
        &pausing_admin,
        "PAUSE nosuchdb",
        &SqlState::INVALID_CATALOG_NAME,
    )
    .await;
    assert!(message.contains("no such database"), "{message}");

    let query = spawn_query(client, "SELECT 3");
    eventually("the next transaction waits", || async {
        pools_value(&watcher_admin, "cl_waiting").await >= 1
    })
    .await;
    assert!(!query.is_finished());
    pausing_admin.simple_query("RESUME app").await.unwrap();
    let (_client, result) = finish(query, "the query after RESUME app").await;
    assert_eq!(first_value(&result.unwrap()), "3");
    assert_eq!(
        show_value(&watcher_admin, "SHOW DATABASES", "app", "paused").await,
        "0"
    );
}

#[tokio::test]
async fn suspend_stops_accepting_and_holds_transactions_until_resume() {
    let pgberth = Pgberth::start(&ini(Some(2)), USERLIST);
    let admin = admin(&pgberth).await;
    let client = app_client(&pgberth).await;
    client.simple_query("SELECT 1").await.unwrap();

    admin.simple_query("SUSPEND").await.unwrap();
    assert_eq!(
        show_value(&admin, "SHOW STATE", "suspended", "value").await,
        "yes"
    );
    assert_eq!(
        pools_value(&admin, "sv_idle").await,
        1,
        "SUSPEND keeps server connections"
    );
    let message = expect_error(
        &admin,
        "SUSPEND",
        &SqlState::OBJECT_NOT_IN_PREREQUISITE_STATE,
    )
    .await;
    assert!(message.contains("already suspended/paused"), "{message}");
    let clients_before = show_value(&admin, "SHOW LISTS", "used_clients", "items").await;

    let conn_str = pgberth.conn_str(SCRAM_USER, SCRAM_PASS, "app");
    let newcomer = tokio::spawn(async move {
        let (client, conn) = tokio_postgres::connect(&conn_str, tokio_postgres::NoTls).await?;
        tokio::spawn(conn);
        client.simple_query("SELECT 7").await
    });
    let query = spawn_query(client, "SELECT 42");
    eventually("the query waits while suspended (cl_waiting)", || async {
        pools_value(&admin, "cl_waiting").await >= 1
    })
    .await;
    assert!(!query.is_finished(), "no transaction runs while suspended");
    assert!(!newcomer.is_finished(), "no new client is accepted");
    assert_eq!(
        show_value(&admin, "SHOW LISTS", "used_clients", "items").await,
        clients_before,
        "the new connection waits in the listen backlog, not accepted"
    );

    admin.simple_query("RESUME").await.unwrap();
    let (_client, result) = finish(query, "the held query after RESUME").await;
    assert_eq!(first_value(&result.unwrap()), "42");
    let result = finish(newcomer, "the new client after RESUME").await;
    assert_eq!(first_value(&result.expect("the new client logs in")), "7");
    assert_eq!(
        show_value(&admin, "SHOW STATE", "suspended", "value").await,
        "no"
    );
}

#[tokio::test]
async fn disable_refuses_new_logins_and_enable_restores_them() {
    let pgberth = Pgberth::start(&ini(Some(2)), USERLIST);
    let admin = admin(&pgberth).await;
    let existing = app_client(&pgberth).await;

    admin.simple_query("DISABLE app").await.unwrap();
    assert_eq!(
        show_value(&admin, "SHOW DATABASES", "app", "disabled").await,
        "1"
    );
    let err = pgberth
        .try_connect(SCRAM_USER, SCRAM_PASS, "app")
        .await
        .expect_err("a disabled database refuses new clients");
    assert_eq!(
        err.code(),
        Some(&SqlState::OBJECT_NOT_IN_PREREQUISITE_STATE),
        "{err}"
    );
    let message = err.as_db_error().unwrap().message();
    assert!(message.contains("does not allow connections"), "{message}");
    assert_eq!(
        scalar(&existing, "SELECT 5").await,
        "5",
        "clients already in keep working"
    );
    let message = expect_error(&admin, "DISABLE", &SqlState::SYNTAX_ERROR).await;
    assert!(message.contains("database is required"), "{message}");

    admin.simple_query("ENABLE app").await.unwrap();
    assert_eq!(
        show_value(&admin, "SHOW DATABASES", "app", "disabled").await,
        "0"
    );
    let again = app_client(&pgberth).await;
    assert_eq!(scalar(&again, "SELECT 6").await, "6");
}

#[tokio::test]
async fn reconnect_closes_server_connections_and_new_ones_are_opened() {
    let pgberth = Pgberth::start(&ini(Some(2)), USERLIST);
    let admin = admin(&pgberth).await;
    let direct = direct().await;
    let client = app_client(&pgberth).await;
    let old_pid = scalar(&client, "SELECT pg_backend_pid()").await;
    assert!(backend_alive(&direct, &old_pid).await);

    admin.simple_query("RECONNECT app").await.unwrap();
    eventually("the old backend is gone from pg_stat_activity", || async {
        !backend_alive(&direct, &old_pid).await
    })
    .await;
    let new_pid = scalar(&client, "SELECT pg_backend_pid()").await;
    assert_ne!(new_pid, old_pid, "a new server connection is opened");
    expect_error(
        &admin,
        "RECONNECT nosuchdb",
        &SqlState::INVALID_CATALOG_NAME,
    )
    .await;
    admin.simple_query("RECONNECT").await.unwrap();
}

#[tokio::test]
async fn wait_close_returns_after_reconnect_once_the_connections_are_gone() {
    let pgberth = Pgberth::start(&ini(Some(2)), USERLIST);
    let watcher_admin = admin(&pgberth).await;
    let waiting_admin = admin(&pgberth).await;
    let direct = direct().await;
    let client = app_client(&pgberth).await;
    client.batch_execute("BEGIN").await.unwrap();
    let old_pid = scalar(&client, "SELECT pg_backend_pid()").await;

    watcher_admin.simple_query("RECONNECT").await.unwrap();
    let wait_close = tokio::spawn(async move {
        let result = waiting_admin.simple_query("WAIT_CLOSE app").await;
        (waiting_admin, result)
    });
    eventually("WAIT_CLOSE has started", || async {
        pgberth
            .log_contents()
            .contains("WAIT_CLOSE 'app' command issued")
    })
    .await;
    // The console answers other commands meanwhile; the retired connection is still in use.
    assert_eq!(pools_value(&watcher_admin, "sv_active").await, 1);
    assert!(backend_alive(&direct, &old_pid).await);
    assert!(
        !wait_close.is_finished(),
        "WAIT_CLOSE waits for the connection in use"
    );

    client.batch_execute("COMMIT").await.unwrap();
    let (_admin, result) = finish(wait_close, "WAIT_CLOSE after COMMIT").await;
    result.expect("WAIT_CLOSE succeeds");
    assert_eq!(pools_value(&watcher_admin, "sv_active").await, 0);
    assert_eq!(pools_value(&watcher_admin, "sv_idle").await, 0);
    let new_pid = scalar(&client, "SELECT pg_backend_pid()").await;
    assert_ne!(new_pid, old_pid);
    // Nothing retired: returns at once.
    watcher_admin.simple_query("WAIT_CLOSE").await.unwrap();
}

#[tokio::test]
async fn set_changes_a_value_visible_in_show_config_and_applies_it_to_pools() {
    let pgberth = Pgberth::start(&ini(None), USERLIST);
    let admin = admin(&pgberth).await;
    admin
        .simple_query("SET default_pool_size = 1")
        .await
        .unwrap();
    assert_eq!(
        show_value(&admin, "SHOW CONFIG", "default_pool_size", "value").await,
        "1"
    );
    admin
        .simple_query("SET server_check_query TO 'select 2'")
        .await
        .unwrap();
    assert_eq!(
        show_value(&admin, "SHOW CONFIG", "server_check_query", "value").await,
        "select 2"
    );

    // With one connection, a second client waits for the first one's transaction.
    let first = app_client(&pgberth).await;
    let second = app_client(&pgberth).await;
    first.batch_execute("BEGIN; SELECT 1").await.unwrap();
    assert_eq!(
        show_value(&admin, "SHOW DATABASES", "app", "pool_size").await,
        "1"
    );
    let query = spawn_query(second, "SELECT 9");
    eventually(
        "the second client waits for the only connection",
        || async { pools_value(&admin, "cl_waiting").await >= 1 },
    )
    .await;
    assert_eq!(pools_value(&admin, "sv_active").await, 1);
    assert!(!query.is_finished());
    first.batch_execute("COMMIT").await.unwrap();
    let (_second, result) = finish(query, "the second client's query").await;
    assert_eq!(first_value(&result.unwrap()), "9");
    assert_eq!(
        pools_value(&admin, "sv_idle").await,
        1,
        "still one connection"
    );
}

#[tokio::test]
async fn set_of_unknown_restart_only_or_invalid_settings_fails() {
    let pgberth = Pgberth::start(&ini(Some(2)), USERLIST);
    let admin = admin(&pgberth).await;
    let message = expect_error(
        &admin,
        "SET no_such_setting = 1",
        &SqlState::UNDEFINED_OBJECT,
    )
    .await;
    assert!(message.contains("no_such_setting"), "{message}");
    let message = expect_error(
        &admin,
        "SET listen_port = 7000",
        &SqlState::CANT_CHANGE_RUNTIME_PARAM,
    )
    .await;
    assert!(message.contains("listen_port"), "{message}");
    let message = expect_error(
        &admin,
        "SET default_pool_size = lots",
        &SqlState::INVALID_PARAMETER_VALUE,
    )
    .await;
    assert!(
        message.contains("lots") && message.contains("default_pool_size"),
        "{message}"
    );
    expect_error(&admin, "SET default_pool_size", &SqlState::SYNTAX_ERROR).await;
    assert_eq!(
        show_value(&admin, "SHOW CONFIG", "default_pool_size", "value").await,
        "20",
        "a refused SET changes nothing"
    );
    // Drivers' session settings are accepted and ignored, as by PgBouncer.
    admin
        .simple_query("SET client_encoding = 'UTF8'")
        .await
        .unwrap();
}

/// Waits, without blocking the runtime (connection tasks must run), until pgberth exits.
async fn exits(pgberth: &mut Pgberth) -> bool {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while tokio::time::Instant::now() < deadline {
        if pgberth.wait_exit(Duration::ZERO).is_some() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

#[tokio::test]
async fn shutdown_exits_the_process() {
    let mut pgberth = Pgberth::start(&ini(Some(2)), USERLIST);
    let admin = admin(&pgberth).await;
    let _client = app_client(&pgberth).await;
    // The answer may or may not arrive before the process is gone.
    let _ = admin.simple_query("SHUTDOWN").await;
    assert!(
        exits(&mut pgberth).await,
        "SHUTDOWN exits at once:\n{}",
        pgberth.log_contents()
    );
}

#[tokio::test]
async fn shutdown_wait_for_clients_waits_for_the_last_client_to_leave() {
    let mut pgberth = Pgberth::start(&ini(Some(2)), USERLIST);
    let admin = admin(&pgberth).await;
    let client = app_client(&pgberth).await;
    admin
        .simple_query("SHUTDOWN WAIT_FOR_CLIENTS")
        .await
        .unwrap();
    drop(admin);
    assert!(
        pgberth
            .try_connect(SCRAM_USER, SCRAM_PASS, "app")
            .await
            .is_err(),
        "no new clients"
    );
    assert_eq!(
        scalar(&client, "SELECT 11").await,
        "11",
        "the connected client keeps working"
    );
    assert!(pgberth.wait_exit(Duration::ZERO).is_none(), "still running");
    drop(client);
    assert!(
        exits(&mut pgberth).await,
        "exits once the last client left:\n{}",
        pgberth.log_contents()
    );
}

#[tokio::test]
async fn shutdown_wait_for_servers_waits_for_an_open_transaction() {
    let mut pgberth = Pgberth::start(&ini(Some(2)), USERLIST);
    let admin = admin(&pgberth).await;
    let client = app_client(&pgberth).await;
    client.batch_execute("BEGIN; SELECT 1").await.unwrap();
    admin
        .simple_query("SHUTDOWN WAIT_FOR_SERVERS")
        .await
        .unwrap();
    assert_eq!(
        scalar(&client, "SELECT 12").await,
        "12",
        "the open transaction goes on"
    );
    assert!(
        pgberth.wait_exit(Duration::ZERO).is_none(),
        "still running while a server connection is in use"
    );
    let message = expect_error(
        &admin,
        "RESUME",
        &SqlState::OBJECT_NOT_IN_PREREQUISITE_STATE,
    )
    .await;
    assert!(message.contains("shutting down"), "{message}");
    client.batch_execute("COMMIT").await.unwrap();
    assert!(
        exits(&mut pgberth).await,
        "exits once the transaction released its server connection:\n{}",
        pgberth.log_contents()
    );
}

#[tokio::test]
async fn stats_users_get_42501_for_every_control_command() {
    let mut pgberth = Pgberth::start(&ini(Some(2)), USERLIST);
    let watcher = pgberth
        .connect("watcher", "watcher_pass", "pgbouncer")
        .await;
    for command in [
        "PAUSE",
        "PAUSE app",
        "RESUME",
        "RESUME app",
        "SUSPEND",
        "DISABLE app",
        "ENABLE app",
        "RECONNECT",
        "RECONNECT app",
        "WAIT_CLOSE",
        "WAIT_CLOSE app",
        "SET default_pool_size = 5",
        "SHUTDOWN",
        "SHUTDOWN WAIT_FOR_SERVERS",
        "SHUTDOWN WAIT_FOR_CLIENTS",
    ] {
        expect_error(&watcher, command, &SqlState::INSUFFICIENT_PRIVILEGE).await;
    }
    let admin = admin(&pgberth).await;
    assert_eq!(
        show_value(&admin, "SHOW STATE", "active", "value").await,
        "yes"
    );
    assert_eq!(
        show_value(&admin, "SHOW CONFIG", "default_pool_size", "value").await,
        "20"
    );
    assert!(pgberth.wait_exit(Duration::ZERO).is_none());
}

#[tokio::test]
async fn psql_pauses_and_resumes_a_database() {
    let pgberth = Pgberth::start(&ini(Some(2)), USERLIST);
    let run = |sql: &str| {
        let out = pgberth.psql_as("admin", "admin_pass", "pgbouncer", sql);
        assert!(
            out.status.success(),
            "{sql}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    run("PAUSE app");
    let databases = run("SHOW DATABASES");
    let app = databases
        .lines()
        .find(|l| l.starts_with("app|"))
        .expect("a row for app");
    // paused and disabled are PgBouncer's 16th and 17th columns (more may follow).
    let fields: Vec<&str> = app.split('|').collect();
    assert_eq!(fields[15..17], ["1", "0"], "paused=1, disabled=0: {app}");
    let help = pgberth.psql_as("admin", "admin_pass", "pgbouncer", "SHOW HELP");
    let help = String::from_utf8_lossy(&help.stderr);
    for command in ["PAUSE", "RESUME", "SUSPEND", "WAIT_CLOSE", "SET key = arg"] {
        assert!(help.contains(command), "SHOW HELP lists {command}: {help}");
    }
    run("RESUME app");
    let databases = run("SHOW DATABASES");
    let app = databases.lines().find(|l| l.starts_with("app|")).unwrap();
    let fields: Vec<&str> = app.split('|').collect();
    assert_eq!(fields[15..17], ["0", "0"], "resumed: {app}");
}

#[tokio::test]
async fn pause_in_session_mode_waits_for_the_client_to_leave_and_holds_new_logins() {
    let pgberth = Pgberth::start(
        &ini(Some(2)).replace("pool_mode = transaction", "pool_mode = session"),
        USERLIST,
    );
    let watcher_admin = admin(&pgberth).await;
    let pausing_admin = admin(&pgberth).await;
    let holder = app_client(&pgberth).await;

    let pause = tokio::spawn(async move {
        let result = pausing_admin.simple_query("PAUSE app").await;
        (pausing_admin, result)
    });
    eventually("SHOW DATABASES reports app paused", || async {
        show_value(&watcher_admin, "SHOW DATABASES", "app", "paused").await == "1"
    })
    .await;
    assert_eq!(
        scalar(&holder, "SELECT 21").await,
        "21",
        "a session keeps its server connection while PAUSE waits"
    );
    assert!(!pause.is_finished(), "PAUSE waits for the session to end");
    drop(holder);
    let (pausing_admin, result) = finish(pause, "PAUSE app after the client left").await;
    result.expect("PAUSE app succeeds");

    let conn_str = pgberth.conn_str(SCRAM_USER, SCRAM_PASS, "app");
    let newcomer = tokio::spawn(async move {
        let (client, conn) = tokio_postgres::connect(&conn_str, tokio_postgres::NoTls).await?;
        tokio::spawn(conn);
        client.simple_query("SELECT 22").await
    });
    eventually(
        "the new session waits for its server connection",
        || async { pools_value(&watcher_admin, "cl_waiting").await >= 1 },
    )
    .await;
    assert!(!newcomer.is_finished());
    pausing_admin.simple_query("RESUME app").await.unwrap();
    let result = finish(newcomer, "the new session after RESUME app").await;
    assert_eq!(first_value(&result.expect("the new client logs in")), "22");
}

#[tokio::test]
async fn wait_close_waits_for_connections_retired_by_a_reload() {
    let pgberth = Pgberth::start(&ini(Some(2)), USERLIST);
    let watcher_admin = admin(&pgberth).await;
    let waiting_admin = admin(&pgberth).await;
    let client = app_client(&pgberth).await;
    client.batch_execute("BEGIN").await.unwrap();
    let old_pid = scalar(&client, "SELECT pg_backend_pid()").await;

    // The same server over the unix socket: a new server target, so the reload retires the
    // connection in use.
    pgberth.rewrite_ini(&ini(Some(2)).replace(
        "host=127.0.0.1 port=@PGPORT@",
        "host=@PGSOCKET@ port=@PGPORT@",
    ));
    watcher_admin.simple_query("RELOAD").await.unwrap();
    let wait_close = tokio::spawn(async move {
        let result = waiting_admin.simple_query("WAIT_CLOSE").await;
        (waiting_admin, result)
    });
    eventually("WAIT_CLOSE has started", || async {
        pgberth.log_contents().contains("WAIT_CLOSE command issued")
    })
    .await;
    assert_eq!(pools_value(&watcher_admin, "sv_active").await, 1);
    assert!(
        !wait_close.is_finished(),
        "WAIT_CLOSE waits for the retired connection in use"
    );
    client.batch_execute("COMMIT").await.unwrap();
    let (_admin, result) = finish(wait_close, "WAIT_CLOSE after COMMIT").await;
    result.expect("WAIT_CLOSE succeeds");
    let new_pid = scalar(&client, "SELECT pg_backend_pid()").await;
    assert_ne!(new_pid, old_pid);
}

#[tokio::test]
async fn kill_drops_a_databases_clients_and_servers_and_pauses_it_until_resume() {
    let pgberth = Pgberth::start(&ini(Some(2)), USERLIST);
    let admin = admin(&pgberth).await;
    let direct = direct().await;
    let inside = app_client(&pgberth).await;
    inside.simple_query("BEGIN").await.unwrap();
    let pid = scalar(&inside, "SELECT pg_backend_pid()").await;
    let idle = app_client(&pgberth).await;
    idle.simple_query("SELECT 1").await.unwrap();

    admin.simple_query("KILL app").await.unwrap();
    // Both clients are gone, the one in a transaction with its server connection.
    let err = inside.simple_query("SELECT 1").await.expect_err("killed");
    assert!(err.is_closed() || err.code().is_none(), "{err}");
    assert!(idle.simple_query("SELECT 1").await.is_err(), "killed");
    eventually("the killed client's backend ends", || async {
        !backend_alive(&direct, &pid).await
    })
    .await;
    assert_eq!(
        show_value(&admin, "SHOW DATABASES", "app", "paused").await,
        "1"
    );
    // A new client waits for RESUME.
    let late = app_client(&pgberth).await;
    let query = spawn_query(late, "SELECT 7");
    eventually("the new query waits in the killed database", || async {
        pools_value(&admin, "cl_waiting").await >= 1
    })
    .await;
    assert!(!query.is_finished());
    admin.simple_query("RESUME app").await.unwrap();
    let (_late, result) = finish(query, "the query after RESUME").await;
    assert_eq!(first_value(&result.unwrap()), "7");
}

#[tokio::test]
async fn kill_client_drops_one_client_and_leaves_the_others() {
    let pgberth = Pgberth::start(&ini(Some(2)), USERLIST);
    let admin = admin(&pgberth).await;
    let victim = app_client(&pgberth).await;
    victim.simple_query("BEGIN").await.unwrap();
    let bystander = app_client(&pgberth).await;
    bystander.simple_query("SELECT 1").await.unwrap();
    let (columns, clients) = rows(&admin, "SHOW CLIENTS").await;
    let col = |name: &str| columns.iter().position(|c| c == name).unwrap();
    let victim_id = clients
        .iter()
        .find(|r| r[col("database")] == "app" && !r[col("link")].is_empty())
        .expect("the client in a transaction holds a server")[col("id")]
    .clone();

    admin
        .simple_query(&format!("KILL_CLIENT {victim_id}"))
        .await
        .unwrap();
    assert!(victim.simple_query("SELECT 1").await.is_err(), "killed");
    assert_eq!(scalar(&bystander, "SELECT 2").await, "2");
    eventually("the killed client leaves SHOW CLIENTS", || async {
        let (_, clients) = rows(&admin, "SHOW CLIENTS").await;
        !clients.iter().any(|r| r[col("id")] == victim_id)
    })
    .await;
    let message = expect_error(
        &admin,
        &format!("KILL_CLIENT {victim_id}"),
        &SqlState::UNDEFINED_OBJECT,
    )
    .await;
    assert!(message.contains("not found"), "{message}");
}
