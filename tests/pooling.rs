//! Pool modes and pool limits through the real pgberth binary against the real PostgreSQL:
//! when a server connection goes back to the pool (session / transaction / statement, set
//! globally, per database and per user), what survives a client, the extended protocol and
//! COPY in every mode, and the limits: max_client_conn, query_wait_timeout, FIFO waiters, the
//! reserve pool, max_db_connections, max_user_connections, min_pool_size, and clients that
//! vanish inside a transaction.

mod support;

use std::time::{Duration, Instant};

use futures_util::{SinkExt, TryStreamExt};
use support::{MD5_PASS, MD5_USER, Pgberth, SCRAM_PASS, SCRAM_USER, direct_conn_str};
use tokio::task::JoinHandle;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::Type;
use tokio_postgres::{Client, NoTls};

/// Long enough to be sure a query is blocked rather than slow.
const BLOCKED: Duration = Duration::from_millis(700);
/// Upper bound for anything that should happen promptly.
const PROMPT: Duration = Duration::from_secs(10);

const USERLIST: &str = "\"scram_user\" \"scram_pass\"\n\"md5_user\" \"md5_pass\"\n";

/// A pgberth.ini: the usual listener and auth settings, then `general` in `[pgbouncer]`;
/// `databases` and `users` are the bodies of those sections.
fn ini(general: &str, databases: &str, users: &str) -> String {
    format!(
        "[databases]\n{databases}\n\n[users]\n{users}\n\n[pgbouncer]\nlisten_addr = 127.0.0.1\n\
         listen_port = @PORT@\nunix_socket_dir =\nauth_file = @DIR@/userlist.txt\n\
         auth_type = scram-sha-256\n{general}\n"
    )
}

/// The `app` database line, tagging pgberth's server connections with `application_name`.
fn app_line(tag: &str, extra: &str) -> String {
    format!("app = host=127.0.0.1 port=@PGPORT@ dbname=app application_name={tag} {extra}")
}

fn start(general: &str, tag: &str) -> Pgberth {
    Pgberth::start(&ini(general, &app_line(tag, ""), ""), USERLIST)
}

fn password(user: &str) -> &'static str {
    match user {
        SCRAM_USER => SCRAM_PASS,
        MD5_USER => MD5_PASS,
        other => panic!("no password for {other}"),
    }
}

/// Connects through pgberth and returns the client with its connection task, whose result
/// carries a FATAL error pgberth sends between queries.
async fn connect_watched(
    pgberth: &Pgberth,
    user: &str,
    db: &str,
) -> (Client, JoinHandle<Result<(), tokio_postgres::Error>>) {
    let (client, connection) =
        tokio_postgres::connect(&pgberth.conn_str(user, password(user), db), NoTls)
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "connect as {user} to {db}: {e:?}\npgberth log:\n{}",
                    pgberth.log_contents()
                )
            });
    (client, tokio::spawn(connection))
}

async fn connect(pgberth: &Pgberth, user: &str) -> Client {
    pgberth.connect(user, password(user), "app").await
}

/// A superuser connection straight to the cluster, for looking at pg_stat_activity.
async fn direct() -> Client {
    let (client, connection) =
        tokio_postgres::connect(&direct_conn_str("postgres", "postgres", "app"), NoTls)
            .await
            .expect("connect to the cluster directly");
    tokio::spawn(connection);
    client
}

async fn pid(client: &Client) -> i32 {
    client
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .expect("SELECT pg_backend_pid()")
        .get(0)
}

/// Server connections pgberth has open with `application_name = tag`.
async fn server_count(direct: &Client, tag: &str) -> i64 {
    direct
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1",
            &[&tag],
        )
        .await
        .unwrap()
        .get(0)
}

/// Polls until `server_count(tag) == want`, failing after [`PROMPT`].
async fn wait_server_count(direct: &Client, tag: &str, want: i64) {
    let deadline = Instant::now() + PROMPT;
    loop {
        let n = server_count(direct, tag).await;
        if n == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{n} server connections tagged {tag}, expected {want}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Runs `fut` and asserts it is still pending after [`BLOCKED`]; returns it, still running.
async fn assert_blocks<T: Send + 'static>(
    what: &str,
    fut: impl std::future::Future<Output = T> + Send + 'static,
) -> JoinHandle<T> {
    let mut handle = tokio::spawn(fut);
    if tokio::time::timeout(BLOCKED, &mut handle).await.is_ok() {
        panic!("{what} should have been blocked, but it finished");
    }
    handle
}

/// Awaits a spawned task that should now finish promptly.
async fn finishes<T>(what: &str, handle: JoinHandle<T>) -> T {
    tokio::time::timeout(PROMPT, handle)
        .await
        .unwrap_or_else(|_| panic!("{what} did not finish within {PROMPT:?}"))
        .expect("task panicked")
}

// ---------------------------------------------------------------------------------------------
// Transaction mode.

#[tokio::test]
async fn transaction_mode_returns_server_after_commit() {
    let pgberth = start(
        "pool_mode = transaction\ndefault_pool_size = 1",
        "tx_commit",
    );
    let a = connect(&pgberth, SCRAM_USER).await;
    let b = connect(&pgberth, SCRAM_USER).await;
    let mut pids = Vec::new();
    for _ in 0..3 {
        for client in [&a, &b] {
            client.batch_execute("BEGIN").await.unwrap();
            pids.push(pid(client).await);
            client.batch_execute("COMMIT").await.unwrap();
        }
    }
    assert!(pids.iter().all(|p| *p == pids[0]), "{pids:?}");
}

#[tokio::test]
async fn transaction_mode_query_waits_while_another_client_is_inside_begin() {
    let pgberth = start("pool_mode = transaction\ndefault_pool_size = 1", "tx_wait");
    let a = connect(&pgberth, SCRAM_USER).await;
    let b = connect(&pgberth, SCRAM_USER).await;
    a.batch_execute("BEGIN").await.unwrap();
    let a_pid = pid(&a).await;
    let waiting = assert_blocks("b's query while a is inside BEGIN", async move {
        let p = pid(&b).await;
        (b, p)
    })
    .await;
    a.batch_execute("COMMIT").await.unwrap();
    let (_b, b_pid) = finishes("b's query after a's COMMIT", waiting).await;
    assert_eq!(a_pid, b_pid);
}

#[tokio::test]
async fn transaction_mode_rollback_and_failed_transactions_return_the_server() {
    let pgberth = start(
        "pool_mode = transaction\ndefault_pool_size = 1",
        "tx_rollback",
    );
    let a = connect(&pgberth, SCRAM_USER).await;
    let b = connect(&pgberth, SCRAM_USER).await;
    a.batch_execute("BEGIN").await.unwrap();
    let err = a.batch_execute("SELECT 1/0").await.unwrap_err();
    assert_eq!(err.code(), Some(&SqlState::DIVISION_BY_ZERO));
    // Still inside a (failed) transaction: b must wait.
    let waiting = assert_blocks("b's query while a's transaction is failed", async move {
        let p = pid(&b).await;
        (b, p)
    })
    .await;
    a.batch_execute("ROLLBACK").await.unwrap();
    let (b, _) = finishes("b's query after a's ROLLBACK", waiting).await;
    // An error outside a transaction block releases the server too.
    let err = a.batch_execute("SELECT 1/0").await.unwrap_err();
    assert_eq!(err.code(), Some(&SqlState::DIVISION_BY_ZERO));
    tokio::time::timeout(PROMPT, pid(&b))
        .await
        .expect("b is served after a's failed autocommit statement");
}

// ---------------------------------------------------------------------------------------------
// Where the pool mode comes from.

/// Two clients of `user` with a pool of one: both logged in at once, transactions alternate on
/// the same backend.
async fn assert_transaction_mode(pgberth: &Pgberth, user: &str) {
    let a = connect(pgberth, user).await;
    let b = tokio::time::timeout(BLOCKED, connect(pgberth, user))
        .await
        .expect("in transaction mode a second client logs in while the first is idle");
    a.batch_execute("BEGIN; SELECT 1").await.unwrap();
    let a_pid = pid(&a).await;
    a.batch_execute("COMMIT").await.unwrap();
    assert_eq!(pid(&b).await, a_pid);
}

/// With a pool of one, a second client of `user` cannot even log in while the first is
/// connected; it gets in once the first leaves.
async fn assert_session_mode(pgberth: &Pgberth, user: &str) {
    let a = connect(pgberth, user).await;
    a.batch_execute("BEGIN; COMMIT").await.unwrap();
    assert!(
        tokio::time::timeout(BLOCKED, connect(pgberth, user))
            .await
            .is_err(),
        "in session mode a second client must wait for the only server connection"
    );
    drop(a);
    let b = tokio::time::timeout(PROMPT, connect(pgberth, user))
        .await
        .expect("the second client gets the server once the first leaves");
    pid(&b).await;
}

/// Autocommit statements are fine; opening a transaction block closes the client with
/// 0A000.
async fn assert_statement_mode(pgberth: &Pgberth, user: &str) {
    let (a, a_conn) = connect_watched(pgberth, user, "app").await;
    let (b, _b_conn) = connect_watched(pgberth, user, "app").await;
    assert_eq!(pid(&a).await, pid(&b).await, "statements share the server");
    assert_eq!(
        a.query_one("SELECT 41 + 1", &[])
            .await
            .unwrap()
            .get::<_, i32>(0),
        42
    );
    let err = match a.batch_execute("BEGIN").await {
        Err(e) => e,
        Ok(()) => match tokio::time::timeout(PROMPT, a_conn).await {
            Ok(Ok(Err(e))) => e,
            other => panic!("BEGIN in statement mode was not refused: {other:?}"),
        },
    };
    assert_eq!(
        err.code(),
        Some(&SqlState::FEATURE_NOT_SUPPORTED),
        "{err:?}"
    );
    assert!(a.batch_execute("SELECT 1").await.is_err());
    // The other client is unaffected.
    assert_eq!(
        b.query_one("SELECT 1", &[]).await.unwrap().get::<_, i32>(0),
        1
    );
}

#[tokio::test]
async fn statement_mode_set_globally_refuses_transaction_blocks() {
    let pgberth = start(
        "pool_mode = statement\ndefault_pool_size = 1",
        "stmt_global",
    );
    assert_statement_mode(&pgberth, SCRAM_USER).await;
}

#[tokio::test]
async fn statement_mode_set_per_database_refuses_transaction_blocks() {
    let databases = app_line("stmt_db", "pool_mode=statement");
    let pgberth = Pgberth::start(
        &ini("pool_mode = session\ndefault_pool_size = 1", &databases, ""),
        USERLIST,
    );
    assert_statement_mode(&pgberth, SCRAM_USER).await;
}

#[tokio::test]
async fn statement_mode_set_per_user_refuses_transaction_blocks() {
    let pgberth = Pgberth::start(
        &ini(
            "pool_mode = session\ndefault_pool_size = 1",
            &app_line("stmt_user", ""),
            "scram_user = pool_mode=statement",
        ),
        USERLIST,
    );
    assert_statement_mode(&pgberth, SCRAM_USER).await;
    assert_session_mode(&pgberth, MD5_USER).await;
}

#[tokio::test]
async fn transaction_mode_set_per_database_applies_to_that_database() {
    let databases = app_line("tx_db", "pool_mode=transaction");
    let pgberth = Pgberth::start(
        &ini("pool_mode = session\ndefault_pool_size = 1", &databases, ""),
        USERLIST,
    );
    assert_transaction_mode(&pgberth, SCRAM_USER).await;
}

#[tokio::test]
async fn transaction_mode_set_per_user_applies_to_that_user_only() {
    let pgberth = Pgberth::start(
        &ini(
            "pool_mode = session\ndefault_pool_size = 1",
            &app_line("tx_user", ""),
            "md5_user = pool_mode=transaction",
        ),
        USERLIST,
    );
    assert_transaction_mode(&pgberth, MD5_USER).await;
    assert_session_mode(&pgberth, SCRAM_USER).await;
}

#[tokio::test]
async fn session_mode_set_per_database_overrides_global_transaction_mode() {
    let databases = app_line("session_db", "pool_mode=session");
    let pgberth = Pgberth::start(
        &ini(
            "pool_mode = transaction\ndefault_pool_size = 1",
            &databases,
            "",
        ),
        USERLIST,
    );
    assert_session_mode(&pgberth, SCRAM_USER).await;
}

#[tokio::test]
async fn user_pool_mode_beats_database_pool_mode() {
    let databases = app_line("user_beats_db", "pool_mode=statement");
    let pgberth = Pgberth::start(
        &ini(
            "pool_mode = session\ndefault_pool_size = 1",
            &databases,
            "scram_user = pool_mode=transaction",
        ),
        USERLIST,
    );
    assert_transaction_mode(&pgberth, SCRAM_USER).await;
    assert_statement_mode(&pgberth, MD5_USER).await;
}

// ---------------------------------------------------------------------------------------------
// Session mode.

#[tokio::test]
async fn session_mode_client_keeps_its_backend_for_the_whole_session() {
    let pgberth = start("pool_mode = session\ndefault_pool_size = 2", "session_keep");
    let a = connect(&pgberth, SCRAM_USER).await;
    let b = connect(&pgberth, SCRAM_USER).await;
    let (a_pid, b_pid) = (pid(&a).await, pid(&b).await);
    assert_ne!(a_pid, b_pid);
    for _ in 0..3 {
        a.batch_execute("BEGIN; COMMIT").await.unwrap();
        b.batch_execute("SELECT 1").await.unwrap();
        assert_eq!(pid(&b).await, b_pid);
        assert_eq!(pid(&a).await, a_pid);
    }
    // Session state survives between transactions.
    a.batch_execute("SET statement_timeout = '4321ms'")
        .await
        .unwrap();
    b.batch_execute("SELECT 1").await.unwrap();
    let row = a.query_one("SHOW statement_timeout", &[]).await.unwrap();
    assert_eq!(row.get::<_, String>(0), "4321ms");
}

/// Leaves session state of every kind DISCARD ALL resets on the only server connection, lets
/// the client go, and returns what the next client finds: (same backend?, leftovers).
async fn session_state_after_client_leaves(general: &str, tag: &str) -> (bool, Vec<String>) {
    let pgberth = start(
        &format!("pool_mode = session\ndefault_pool_size = 1\n{general}"),
        tag,
    );
    let lock_key: i64 = 7_000_000 + i64::from(std::process::id() % 1000);
    let a = connect(&pgberth, SCRAM_USER).await;
    let a_pid = pid(&a).await;
    a.batch_execute(&format!(
        "SET statement_timeout = '4321ms';
         CREATE TEMP TABLE reset_probe_{tag} (x int);
         PREPARE reset_probe_stmt AS SELECT 1;
         LISTEN reset_probe_channel;
         SELECT pg_advisory_lock({lock_key});"
    ))
    .await
    .unwrap();
    drop(a);

    let b = tokio::time::timeout(PROMPT, connect(&pgberth, SCRAM_USER))
        .await
        .expect("the next client gets the server");
    let same = pid(&b).await == a_pid;
    let mut left = Vec::new();
    let timeout: String = b
        .query_one("SHOW statement_timeout", &[])
        .await
        .unwrap()
        .get(0);
    if timeout != "0" {
        left.push(format!("statement_timeout = {timeout}"));
    }
    let checks = [
        (
            "temp table",
            format!("SELECT count(*) FROM pg_class WHERE relname = 'reset_probe_{tag}'"),
        ),
        (
            "prepared statement",
            "SELECT count(*) FROM pg_prepared_statements WHERE name = 'reset_probe_stmt'"
                .to_owned(),
        ),
        (
            "LISTEN",
            "SELECT count(*) FROM pg_listening_channels()".to_owned(),
        ),
        (
            "advisory lock",
            format!(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND objid = {lock_key}"
            ),
        ),
    ];
    for (what, sql) in checks {
        let n: i64 = b.query_one(&sql, &[]).await.unwrap().get(0);
        if n != 0 {
            left.push(what.to_owned());
        }
    }
    (same, left)
}

#[tokio::test]
async fn session_mode_runs_server_reset_query_when_the_client_leaves() {
    let (same, left) = session_state_after_client_leaves("", "reset_default").await;
    assert!(same, "the next client reuses the backend");
    assert!(left.is_empty(), "DISCARD ALL should have reset: {left:?}");
}

#[tokio::test]
async fn session_mode_with_empty_server_reset_query_keeps_session_state() {
    let (same, left) =
        session_state_after_client_leaves("server_reset_query =", "reset_empty").await;
    assert!(same, "the next client reuses the backend");
    assert_eq!(
        left,
        [
            "statement_timeout = 4321ms",
            "temp table",
            "prepared statement",
            "LISTEN",
            "advisory lock"
        ]
    );
}

// ---------------------------------------------------------------------------------------------
// Extended protocol and COPY in every mode.

async fn assert_extended_protocol_works(mode: &str) {
    let pgberth = start(
        &format!("pool_mode = {mode}\ndefault_pool_size = 2"),
        &format!("ext_{mode}"),
    );
    let a = connect(&pgberth, SCRAM_USER).await;
    let b = connect(&pgberth, MD5_USER).await;
    for i in 0..5i32 {
        for client in [&a, &b] {
            // query_typed: Parse/Bind/Describe/Execute/Sync with the unnamed statement.
            let rows = client
                .query_typed(
                    "SELECT $1::int4 + 1, $2::text",
                    &[(&i, Type::INT4), (&"x", Type::TEXT)],
                )
                .await
                .unwrap();
            assert_eq!(rows[0].get::<_, i32>(0), i + 1);
            assert_eq!(rows[0].get::<_, &str>(1), "x");
        }
    }
    // An error in the extended protocol is answered and the connection stays usable.
    let err = a
        .query_typed("SELECT 1 / $1::int4", &[(&0i32, Type::INT4)])
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(&SqlState::DIVISION_BY_ZERO));
    let row = a
        .query_typed_one("SELECT $1::int8 * 2", &[(&21i64, Type::INT8)])
        .await
        .unwrap();
    assert_eq!(row.get::<_, i64>(0), 42);
    // Named statements on one client (prepare + execute in separate syncs).
    let stmt = b.prepare("SELECT $1::int4 * 3").await.unwrap();
    assert_eq!(
        b.query_one(&stmt, &[&5i32]).await.unwrap().get::<_, i32>(0),
        15
    );
}

#[tokio::test]
async fn extended_protocol_works_in_session_mode() {
    assert_extended_protocol_works("session").await;
}

#[tokio::test]
async fn extended_protocol_works_in_transaction_mode() {
    assert_extended_protocol_works("transaction").await;
}

#[tokio::test]
async fn extended_protocol_works_in_statement_mode() {
    assert_extended_protocol_works("statement").await;
}

async fn assert_copy_works(mode: &str) {
    let table = format!("copy_probe_{mode}");
    let owner = direct_scram().await;
    owner
        .batch_execute(&format!(
            "DROP TABLE IF EXISTS {table}; CREATE TABLE {table} (id int, name text)"
        ))
        .await
        .unwrap();
    let pgberth = start(
        &format!("pool_mode = {mode}\ndefault_pool_size = 1"),
        &format!("copy_{mode}"),
    );
    let a = connect(&pgberth, SCRAM_USER).await;
    // Big enough to span many reads and writes in the relay.
    let data: String = (0..50_000).map(|i| format!("{i}\tname {i}\n")).collect();

    let sink = a
        .copy_in::<_, bytes::Bytes>(&format!("COPY {table} FROM STDIN"))
        .await
        .unwrap();
    futures_util::pin_mut!(sink);
    for chunk in data.as_bytes().chunks(10_000) {
        sink.send(bytes::Bytes::copy_from_slice(chunk))
            .await
            .unwrap();
    }
    assert_eq!(sink.finish().await.unwrap(), 50_000);

    let stream = a
        .copy_out(&format!(
            "COPY (SELECT * FROM {table} ORDER BY id) TO STDOUT"
        ))
        .await
        .unwrap();
    let chunks: Vec<bytes::Bytes> = stream.try_collect().await.unwrap();
    let out: Vec<u8> = chunks.concat();
    assert_eq!(out.len(), data.len());
    assert!(out == data.as_bytes(), "COPY TO STDOUT returned other data");

    // The server went back to the pool in a clean state: another client can use it (in
    // session mode, once the first client left).
    if mode == "session" {
        drop(a);
    }
    let b = connect(&pgberth, SCRAM_USER).await;
    let n: i64 = tokio::time::timeout(
        PROMPT,
        b.query_one(&format!("SELECT count(*) FROM {table}"), &[]),
    )
    .await
    .expect("another client is served after COPY")
    .unwrap()
    .get(0);
    assert_eq!(n, 50_000);
    owner
        .batch_execute(&format!("DROP TABLE {table}"))
        .await
        .unwrap();
}

async fn direct_scram() -> Client {
    let (client, connection) =
        tokio_postgres::connect(&direct_conn_str(SCRAM_USER, SCRAM_PASS, "app"), NoTls)
            .await
            .expect("connect to the cluster directly");
    tokio::spawn(connection);
    client
}

#[tokio::test]
async fn copy_in_and_copy_out_work_in_session_mode() {
    assert_copy_works("session").await;
}

#[tokio::test]
async fn copy_in_and_copy_out_work_in_transaction_mode() {
    assert_copy_works("transaction").await;
}

#[tokio::test]
async fn copy_in_and_copy_out_work_in_statement_mode() {
    assert_copy_works("statement").await;
}

// ---------------------------------------------------------------------------------------------
// Limits.

#[tokio::test]
async fn max_client_conn_exceeded_is_refused_with_53300() {
    let pgberth = start("pool_mode = transaction\nmax_client_conn = 2", "max_client");
    let a = connect(&pgberth, SCRAM_USER).await;
    let _b = connect(&pgberth, SCRAM_USER).await;
    let err = pgberth
        .try_connect(SCRAM_USER, SCRAM_PASS, "app")
        .await
        .expect_err("a third client must be refused");
    assert_eq!(err.code(), Some(&SqlState::TOO_MANY_CONNECTIONS), "{err:?}");
    // Once a client leaves, there is room again.
    drop(a);
    let deadline = Instant::now() + PROMPT;
    loop {
        match pgberth.try_connect(SCRAM_USER, SCRAM_PASS, "app").await {
            Ok(c) => {
                c.batch_execute("SELECT 1").await.unwrap();
                break;
            }
            Err(e) => {
                assert_eq!(e.code(), Some(&SqlState::TOO_MANY_CONNECTIONS), "{e:?}");
                assert!(Instant::now() < deadline, "no room after a client left");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

#[tokio::test]
async fn query_wait_timeout_fails_the_waiting_client_and_spares_the_others() {
    let pgberth = start(
        "pool_mode = transaction\ndefault_pool_size = 1\nquery_wait_timeout = 1",
        "query_wait",
    );
    let a = connect(&pgberth, SCRAM_USER).await;
    let b = connect(&pgberth, SCRAM_USER).await;
    a.batch_execute("BEGIN").await.unwrap();
    let a_pid = pid(&a).await;

    let started = Instant::now();
    let err = tokio::time::timeout(PROMPT, b.query_one("SELECT 1", &[]))
        .await
        .expect("query_wait_timeout must end the wait")
        .expect_err("no server connection became free");
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(900),
        "gave up after {waited:?}"
    );
    assert_eq!(err.code(), Some(&SqlState::TOO_MANY_CONNECTIONS), "{err:?}");
    assert!(
        err.as_db_error()
            .unwrap()
            .message()
            .contains("query_wait_timeout"),
        "{err:?}"
    );

    // The client holding the server is unaffected, and so is a later client.
    assert_eq!(pid(&a).await, a_pid);
    a.batch_execute("COMMIT").await.unwrap();
    let c = connect(&pgberth, SCRAM_USER).await;
    assert_eq!(pid(&c).await, a_pid);
}

#[tokio::test]
async fn waiting_clients_are_served_in_fifo_order() {
    let seq = "fifo_probe_seq";
    let owner = direct_scram().await;
    owner
        .batch_execute(&format!(
            "DROP SEQUENCE IF EXISTS {seq}; CREATE SEQUENCE {seq}"
        ))
        .await
        .unwrap();
    let pgberth = start("pool_mode = transaction\ndefault_pool_size = 1", "fifo");
    let holder = connect(&pgberth, SCRAM_USER).await;
    let mut waiters = Vec::new();
    for _ in 0..5 {
        waiters.push(connect(&pgberth, SCRAM_USER).await);
    }
    holder.batch_execute("BEGIN").await.unwrap();
    let mut handles = Vec::new();
    for (i, client) in waiters.into_iter().enumerate() {
        let sql = format!("SELECT nextval('{seq}')");
        let handle = assert_blocks(&format!("waiter {i}"), async move {
            // One round trip (a single Sync): query_one would prepare first and queue twice.
            let v: i64 = client.query_typed_one(&sql, &[]).await.unwrap().get(0);
            v
        })
        .await;
        // `assert_blocks` waited BLOCKED, so this waiter is queued before the next one.
        handles.push(handle);
    }
    holder.batch_execute("COMMIT").await.unwrap();
    let mut served = Vec::new();
    for handle in handles {
        served.push(finishes("a waiter", handle).await);
    }
    assert_eq!(served, [1, 2, 3, 4, 5], "sequence values in arrival order");
    owner
        .batch_execute(&format!("DROP SEQUENCE {seq}"))
        .await
        .unwrap();
}

#[tokio::test]
async fn reserve_pool_opens_an_extra_connection_after_reserve_pool_timeout() {
    let pgberth = start(
        "pool_mode = transaction\ndefault_pool_size = 1\nreserve_pool_size = 1\n\
         reserve_pool_timeout = 1",
        "reserve",
    );
    let a = connect(&pgberth, SCRAM_USER).await;
    let b = connect(&pgberth, SCRAM_USER).await;
    let c = connect(&pgberth, SCRAM_USER).await;
    a.batch_execute("BEGIN").await.unwrap();
    let a_pid = pid(&a).await;

    let started = Instant::now();
    let b = tokio::time::timeout(PROMPT, async move {
        b.batch_execute("BEGIN").await.unwrap();
        b
    })
    .await
    .expect("the reserve pool serves b");
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(900),
        "b got a server after {waited:?}, before reserve_pool_timeout"
    );
    let b_pid = pid(&b).await;
    assert_ne!(a_pid, b_pid, "b runs on a new (reserve) connection");

    // The reserve is used up: c waits well past reserve_pool_timeout, until a commits.
    let waiting = tokio::spawn(async move { pid(&c).await });
    let mut waiting = waiting;
    assert!(
        tokio::time::timeout(Duration::from_millis(2500), &mut waiting)
            .await
            .is_err(),
        "c must wait: pool and reserve are both in use"
    );
    a.batch_execute("COMMIT").await.unwrap();
    assert_eq!(finishes("c after a's COMMIT", waiting).await, a_pid);
    b.batch_execute("COMMIT").await.unwrap();
}

#[tokio::test]
async fn max_db_connections_caps_connections_across_users_of_a_database() {
    let tag = "max_db";
    let pgberth = start(
        "pool_mode = transaction\ndefault_pool_size = 5\nmax_db_connections = 2",
        tag,
    );
    let direct = direct().await;
    let a = connect(&pgberth, SCRAM_USER).await;
    a.batch_execute("BEGIN").await.unwrap();
    let a_pid = pid(&a).await;
    let b = connect(&pgberth, MD5_USER).await;
    b.batch_execute("BEGIN").await.unwrap();
    pid(&b).await;
    let c = connect(&pgberth, SCRAM_USER).await;
    let waiting = assert_blocks("c beyond max_db_connections", async move { pid(&c).await }).await;
    assert_eq!(server_count(&direct, tag).await, 2);
    a.batch_execute("COMMIT").await.unwrap();
    assert_eq!(finishes("c after a's COMMIT", waiting).await, a_pid);
    assert_eq!(server_count(&direct, tag).await, 2);
    b.batch_execute("COMMIT").await.unwrap();
}

#[tokio::test]
async fn max_db_connections_hands_an_idle_connection_slot_to_another_users_pool() {
    // PgBouncer closes an idle server connection of another pool of the database when
    // max_db_connections is reached, rather than leaving the client waiting until
    // server_idle_timeout.
    let tag = "max_db_evict";
    let pgberth = start(
        "pool_mode = transaction\ndefault_pool_size = 5\nmax_db_connections = 1\n\
         query_wait_timeout = 30",
        tag,
    );
    let a = connect(&pgberth, SCRAM_USER).await;
    pid(&a).await;
    // a is idle; its server connection sits idle in scram_user's pool.
    let b = tokio::time::timeout(PROMPT, async {
        let b = connect(&pgberth, MD5_USER).await;
        pid(&b).await;
        b
    })
    .await
    .expect("md5_user's client is served using the idle connection's slot");
    let direct = direct().await;
    assert_eq!(server_count(&direct, tag).await, 1);
    drop(b);
}

#[tokio::test]
async fn max_user_connections_caps_connections_across_databases_of_a_user() {
    let tag = "max_user";
    let databases = format!(
        "{}\napp2 = host=127.0.0.1 port=@PGPORT@ dbname=app application_name={tag}",
        app_line(tag, "")
    );
    let pgberth = Pgberth::start(
        &ini(
            "pool_mode = transaction\ndefault_pool_size = 5\nmax_user_connections = 2",
            &databases,
            "",
        ),
        USERLIST,
    );
    let direct = direct().await;
    let a = connect(&pgberth, SCRAM_USER).await;
    a.batch_execute("BEGIN").await.unwrap();
    let a_pid = pid(&a).await;
    let (b, _) = connect_watched(&pgberth, SCRAM_USER, "app2").await;
    b.batch_execute("BEGIN").await.unwrap();
    pid(&b).await;
    // md5_user is not limited by scram_user's connections.
    let other = connect(&pgberth, MD5_USER).await;
    tokio::time::timeout(PROMPT, pid(&other))
        .await
        .expect("another user is not capped");
    let c = connect(&pgberth, SCRAM_USER).await;
    let waiting = assert_blocks(
        "c beyond max_user_connections",
        async move { pid(&c).await },
    )
    .await;
    assert_eq!(server_count(&direct, tag).await, 3);
    a.batch_execute("COMMIT").await.unwrap();
    assert_eq!(finishes("c after a's COMMIT", waiting).await, a_pid);
    b.batch_execute("COMMIT").await.unwrap();
}

#[tokio::test]
async fn min_pool_size_opens_connections_in_the_background() {
    let tag = "min_pool";
    let pgberth = start(
        "pool_mode = transaction\ndefault_pool_size = 5\nmin_pool_size = 3",
        tag,
    );
    let direct = direct().await;
    let a = connect(&pgberth, SCRAM_USER).await;
    pid(&a).await;
    // Only one client, one query: the other two come from pgberth's upkeep.
    wait_server_count(&direct, tag, 3).await;
    let idle: i64 = direct
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1 AND state = 'idle'",
            &[&tag],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(idle, 3);
}

// ---------------------------------------------------------------------------------------------
// Clients that leave inside a transaction.

async fn assert_server_closed_when_client_leaves_in_transaction(tag: &str, vanish: bool) {
    let table = format!("vanish_probe_{tag}");
    let owner = direct_scram().await;
    owner
        .batch_execute(&format!(
            "DROP TABLE IF EXISTS {table}; CREATE TABLE {table} (id int primary key);
             INSERT INTO {table} VALUES (1)"
        ))
        .await
        .unwrap();
    let pgberth = start("pool_mode = transaction\ndefault_pool_size = 1", tag);
    let direct = direct().await;

    let (a, a_conn) = connect_watched(&pgberth, SCRAM_USER, "app").await;
    a.batch_execute("BEGIN").await.unwrap();
    a.query_one(
        &format!("SELECT id FROM {table} WHERE id = 1 FOR UPDATE"),
        &[],
    )
    .await
    .unwrap();
    let a_pid = pid(&a).await;
    if vanish {
        // The socket closes without a Terminate message.
        a_conn.abort();
        let _ = a_conn.await;
        drop(a);
    } else {
        // tokio-postgres sends Terminate, then closes.
        drop(a);
        let _ = a_conn.await;
    }

    let b = connect(&pgberth, SCRAM_USER).await;
    let (b_pid, locked) = tokio::time::timeout(PROMPT, async {
        b.batch_execute("BEGIN; SET LOCAL lock_timeout = '10s'")
            .await
            .unwrap();
        let locked = b
            .query_one(
                &format!("SELECT id FROM {table} WHERE id = 1 FOR UPDATE"),
                &[],
            )
            .await
            .map(|r| r.get::<_, i32>(0));
        let p = pid(&b).await;
        b.batch_execute("COMMIT").await.unwrap();
        (p, locked)
    })
    .await
    .expect("the next client is served");
    assert_eq!(locked.expect("the row lock was released"), 1);
    assert_ne!(a_pid, b_pid, "the next client must get a fresh backend");

    let deadline = Instant::now() + PROMPT;
    loop {
        let leftover: i64 = direct
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE pid = $1 \
                 OR (application_name = $2 AND state LIKE 'idle in transaction%')",
                &[&a_pid, &tag],
            )
            .await
            .unwrap()
            .get(0);
        if leftover == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "a's backend {a_pid} is still there"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    owner
        .batch_execute(&format!("DROP TABLE {table}"))
        .await
        .unwrap();
}

#[tokio::test]
async fn client_vanishing_inside_a_transaction_gets_its_server_connection_closed() {
    assert_server_closed_when_client_leaves_in_transaction("vanish_abort", true).await;
}

#[tokio::test]
async fn client_terminating_inside_a_transaction_gets_its_server_connection_closed() {
    assert_server_closed_when_client_leaves_in_transaction("vanish_terminate", false).await;
}

#[tokio::test]
async fn failed_copy_in_returns_the_server_in_transaction_mode() {
    let table = "copy_fail_probe";
    let owner = direct_scram().await;
    owner
        .batch_execute(&format!(
            "DROP TABLE IF EXISTS {table}; CREATE TABLE {table} (id int)"
        ))
        .await
        .unwrap();
    let pgberth = start(
        "pool_mode = transaction\ndefault_pool_size = 1",
        "copy_fail",
    );
    let a = connect(&pgberth, SCRAM_USER).await;
    let b = connect(&pgberth, SCRAM_USER).await;

    // The COPY fails before copy-in mode starts.
    let err = a
        .copy_in::<_, bytes::Bytes>("COPY no_such_table_here FROM STDIN")
        .await
        .err()
        .expect("COPY into a missing table fails");
    assert_eq!(err.code(), Some(&SqlState::UNDEFINED_TABLE), "{err:?}");
    tokio::time::timeout(PROMPT, pid(&b))
        .await
        .expect("b is served after a's failed COPY");

    // tokio-postgres gives up on a connection after a failed copy_in prepare (it does so
    // against PostgreSQL directly as well): go on with a new client.
    drop(a);
    let a = connect(&pgberth, SCRAM_USER).await;

    // The COPY fails on bad data inside copy-in mode.
    let sink = a
        .copy_in::<_, bytes::Bytes>(&format!("COPY {table} FROM STDIN"))
        .await
        .unwrap();
    futures_util::pin_mut!(sink);
    sink.send(bytes::Bytes::from_static(b"1\nnot a number\n"))
        .await
        .unwrap();
    let err = sink.finish().await.expect_err("bad COPY data is refused");
    assert_eq!(err.code(), Some(&SqlState::INVALID_TEXT_REPRESENTATION));
    tokio::time::timeout(PROMPT, pid(&b))
        .await
        .expect("b is served after a's COPY with bad data");
    assert_eq!(pid(&a).await, pid(&b).await);
    owner
        .batch_execute(&format!("DROP TABLE {table}"))
        .await
        .unwrap();
}

#[tokio::test]
async fn max_user_connections_serves_a_waiting_client_once_another_pools_client_leaves() {
    // PgBouncer closes an idle connection of another pool of the user for a client waiting on
    // max_user_connections; pgberth leaves it idle until server_idle_timeout.
    let tag = "max_user_evict";
    let databases = format!(
        "{}\napp2 = host=127.0.0.1 port=@PGPORT@ dbname=app application_name={tag}",
        app_line(tag, "")
    );
    let pgberth = Pgberth::start(
        &ini(
            "pool_mode = transaction\ndefault_pool_size = 5\nmax_user_connections = 1\n\
             query_wait_timeout = 30",
            &databases,
            "",
        ),
        USERLIST,
    );
    let a = connect(&pgberth, SCRAM_USER).await;
    a.batch_execute("BEGIN").await.unwrap();
    pid(&a).await;
    let port_conn = pgberth.conn_str(SCRAM_USER, SCRAM_PASS, "app2");
    let waiting = assert_blocks("a client of app2 beyond max_user_connections", async move {
        let (b, connection) = tokio_postgres::connect(&port_conn, NoTls).await.unwrap();
        tokio::spawn(connection);
        pid(&b).await
    })
    .await;
    a.batch_execute("COMMIT").await.unwrap();
    drop(a);
    finishes("app2's client after app's client left", waiting).await;
    let direct = direct().await;
    assert_eq!(server_count(&direct, tag).await, 1);
}
