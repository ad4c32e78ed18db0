//! PostgreSQL stopped and started again behind a running pgberth. In a test binary of its own
//! because it stops the cluster that every test of the binary shares; one test only.

mod support;

use std::time::Duration;

use support::{Pgberth, SCRAM_PASS, SCRAM_USER, cluster};
use tokio_postgres::error::SqlState;

/// Generous bound for a reply; only detects hangs.
const HANG: Duration = Duration::from_secs(30);

const USERLIST: &str = "\"scram_user\" \"scram_pass\"\n";

fn start(mode: &str) -> Pgberth {
    Pgberth::start(
        &format!(
            "\
[databases]
app = host=127.0.0.1 port=@PGPORT@ dbname=app pool_size=4

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = @PORT@
unix_socket_dir =
auth_type = scram-sha-256
auth_file = @DIR@/userlist.txt
pool_mode = {mode}
server_login_retry = 2
"
        ),
        USERLIST,
    )
}

/// Connects and runs `SELECT 1`; the error (with a hang guard) if either fails.
async fn try_select(pgberth: &Pgberth) -> Result<(), tokio_postgres::Error> {
    let attempt = async {
        let client = pgberth.try_connect(SCRAM_USER, SCRAM_PASS, "app").await?;
        client.simple_query("SELECT 1").await.map(drop)
    };
    tokio::time::timeout(HANG, attempt)
        .await
        .expect("pgberth must answer, not hang, while PostgreSQL is down")
}

async fn query(client: &tokio_postgres::Client) -> Result<(), tokio_postgres::Error> {
    tokio::time::timeout(HANG, client.simple_query("SELECT 1"))
        .await
        .expect("a query must end, not hang")
        .map(drop)
}

/// Stops PostgreSQL, and starts it again on drop if the test did not (so that a failed
/// assertion does not leave the cluster down for the atexit cleanup).
struct Stopped;

impl Stopped {
    fn stop() -> Stopped {
        cluster().stop_server().expect("stop PostgreSQL");
        Stopped
    }

    fn start(self) {
        std::mem::forget(self);
        cluster().start_server().expect("start PostgreSQL again");
    }
}

impl Drop for Stopped {
    fn drop(&mut self) {
        let _ = cluster().start_server();
    }
}

#[tokio::test]
async fn postgres_restart_gives_clear_errors_while_down_and_pgberth_recovers_by_itself() {
    let session = start("session");
    let transaction = start("transaction");

    // Connected clients, and idle server connections in the transaction pool.
    let held = session.connect(SCRAM_USER, SCRAM_PASS, "app").await;
    query(&held).await.unwrap();
    let pooled = transaction.connect(SCRAM_USER, SCRAM_PASS, "app").await;
    let other = transaction.connect(SCRAM_USER, SCRAM_PASS, "app").await;
    pooled.batch_execute("BEGIN").await.unwrap();
    other.batch_execute("BEGIN").await.unwrap();
    pooled.batch_execute("COMMIT").await.unwrap();
    other.batch_execute("COMMIT").await.unwrap();

    let stopped = Stopped::stop();

    // While it is down: errors, each an ErrorResponse saying what is wrong.
    let err = query(&held)
        .await
        .expect_err("the session's server connection is gone");
    assert!(err.as_db_error().is_some() || err.is_closed(), "{err:?}");
    for (name, pgberth) in [("session", &session), ("transaction", &transaction)] {
        let err = try_select(pgberth)
            .await
            .expect_err("PostgreSQL is down: the query cannot succeed");
        let db = err
            .as_db_error()
            .unwrap_or_else(|| panic!("{name}: expected an ErrorResponse, got {err:?}"));
        assert!(
            [SqlState::CONNECTION_FAILURE, SqlState::ADMIN_SHUTDOWN].contains(db.code()),
            "{name}: {db:?}"
        );
        assert!(!db.message().is_empty(), "{name}: {db:?}");
    }
    let err = try_select(&session).await.expect_err("still down");
    assert_eq!(
        err.as_db_error().map(|e| e.code()),
        Some(&SqlState::CONNECTION_FAILURE),
        "a new client while PostgreSQL is down: {err:?}"
    );

    // A client arriving within server_login_retry of the failure is told so, without a new
    // attempt against the server.
    try_select(&transaction).await.expect_err("still down");
    let err = try_select(&transaction).await.expect_err("still down");
    let db = err.as_db_error().expect("an ErrorResponse");
    assert!(db.message().contains("server_login_retry"), "{db:?}");

    stopped.start();

    // Back up: once server_login_retry has passed, new clients are served in both modes,
    // without restarting pgberth.
    for (name, pgberth) in [("session", &session), ("transaction", &transaction)] {
        let mut recovered = false;
        for _ in 0..200 {
            if try_select(pgberth).await.is_ok() {
                recovered = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(
            recovered,
            "{name}: not recovered\n{}",
            pgberth.log_contents()
        );
        for attempt in 0..4 {
            if let Err(err) = try_select(pgberth).await {
                panic!(
                    "{name}: attempt {attempt} after PostgreSQL came back failed: {err:?}\n{}",
                    pgberth.log_contents()
                );
            }
        }
    }
}
