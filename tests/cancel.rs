//! Cancel requests through the real pgberth binary: a client's own key cancels its running
//! query; any other key (random, or another client's) cancels nothing; in transaction mode a
//! client's key never reaches a query another client runs on the same server connection.

mod support;

use std::time::{Duration, Instant};

use support::{Pgberth, SCRAM_PASS, SCRAM_USER, direct_conn_str};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_postgres::error::SqlState;
use tokio_postgres::{Client, NoTls};

/// A cancelled query must end well before its pg_sleep would.
const CANCELLED_WITHIN: Duration = Duration::from_secs(10);
const PROMPT: Duration = Duration::from_secs(10);

fn start(mode: &str, pool_size: u32) -> Pgberth {
    Pgberth::start(
        &format!(
            "[databases]\napp = host=127.0.0.1 port=@PGPORT@ dbname=app\n\n[pgbouncer]\n\
             listen_addr = 127.0.0.1\nlisten_port = @PORT@\nunix_socket_dir =\n\
             auth_file = @DIR@/userlist.txt\nauth_type = scram-sha-256\npool_mode = {mode}\n\
             default_pool_size = {pool_size}\n"
        ),
        "\"scram_user\" \"scram_pass\"\n",
    )
}

async fn connect(pgberth: &Pgberth) -> Client {
    pgberth.connect(SCRAM_USER, SCRAM_PASS, "app").await
}

async fn direct() -> Client {
    let (client, connection) =
        tokio_postgres::connect(&direct_conn_str("postgres", "postgres", "app"), NoTls)
            .await
            .expect("connect to the cluster directly");
    tokio::spawn(connection);
    client
}

/// Polls pg_stat_activity until a query containing `marker` is running.
async fn wait_running(direct: &Client, marker: &str) {
    let deadline = Instant::now() + PROMPT;
    let pattern = format!("%{marker}%");
    loop {
        let n: i64 = direct
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' AND query LIKE $1 \
                 AND pid <> pg_backend_pid()",
                &[&pattern],
            )
            .await
            .unwrap()
            .get(0);
        if n > 0 {
            return;
        }
        assert!(Instant::now() < deadline, "{marker} never started running");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Starts `SELECT pg_sleep(secs) -- marker` on `client` in a task, once it is running.
async fn sleeping(
    client: Client,
    direct: &Client,
    secs: u32,
    marker: &str,
) -> tokio::task::JoinHandle<(Client, Result<(), tokio_postgres::Error>)> {
    let sql = format!("SELECT pg_sleep({secs}) /* {marker} */");
    let handle = tokio::spawn(async move {
        let result = client.simple_query(&sql).await.map(drop);
        (client, result)
    });
    wait_running(direct, marker).await;
    handle
}

/// Sends a CancelRequest with an arbitrary key and waits until pgberth closed the connection
/// (it has handled the request by then).
async fn send_raw_cancel(pgberth: &Pgberth, pid: u32, secret: u32) {
    let mut sock = tokio::net::TcpStream::connect(("127.0.0.1", pgberth.port()))
        .await
        .unwrap();
    let mut packet = Vec::with_capacity(16);
    packet.extend_from_slice(&16u32.to_be_bytes());
    packet.extend_from_slice(&80_877_102u32.to_be_bytes());
    packet.extend_from_slice(&pid.to_be_bytes());
    packet.extend_from_slice(&secret.to_be_bytes());
    sock.write_all(&packet).await.unwrap();
    let mut rest = Vec::new();
    tokio::time::timeout(PROMPT, sock.read_to_end(&mut rest))
        .await
        .expect("pgberth closes a cancel connection")
        .ok();
    assert!(rest.is_empty(), "a cancel request gets no answer");
}

async fn assert_own_cancel_stops_the_query(mode: &str, marker: &str) {
    let pgberth = start(mode, 2);
    let direct = direct().await;
    let client = connect(&pgberth).await;
    let token = client.cancel_token();
    let started = Instant::now();
    let running = sleeping(client, &direct, 30, marker).await;
    token.cancel_query(NoTls).await.unwrap();
    let (client, result) = tokio::time::timeout(CANCELLED_WITHIN, running)
        .await
        .expect("the cancelled query ends quickly")
        .unwrap();
    let err = result.expect_err("the query was cancelled");
    assert_eq!(err.code(), Some(&SqlState::QUERY_CANCELED), "{err:?}");
    assert!(started.elapsed() < CANCELLED_WITHIN);
    // The client (and its server connection) remain usable.
    client.simple_query("SELECT 1").await.unwrap();
}

#[tokio::test]
async fn cancel_request_cancels_the_clients_running_query_in_session_mode() {
    assert_own_cancel_stops_the_query("session", "cancel_session_probe").await;
}

#[tokio::test]
async fn cancel_request_cancels_the_clients_running_query_in_transaction_mode() {
    assert_own_cancel_stops_the_query("transaction", "cancel_tx_probe").await;
}

#[tokio::test]
async fn cancel_request_with_an_unknown_key_cancels_nothing() {
    let pgberth = start("session", 2);
    let direct = direct().await;
    let client = connect(&pgberth).await;
    let running = sleeping(client, &direct, 2, "unknown_key_probe").await;
    for (pid, secret) in [(1, 1), (12345, 67890), (u32::MAX >> 1, u32::MAX), (0, 0)] {
        send_raw_cancel(&pgberth, pid, secret).await;
    }
    let (_client, result) = tokio::time::timeout(PROMPT, running)
        .await
        .expect("the query finishes")
        .unwrap();
    result.expect("a cancel with a wrong key must not cancel the query");
}

#[tokio::test]
async fn cancel_request_with_another_clients_key_cancels_nothing_of_ours() {
    let pgberth = start("session", 2);
    let direct = direct().await;
    let a = connect(&pgberth).await;
    let b = connect(&pgberth).await;
    let running = sleeping(a, &direct, 2, "other_key_probe").await;
    // b is idle: its key points at its own (idle) server connection.
    b.cancel_token().cancel_query(NoTls).await.unwrap();
    let (_a, result) = tokio::time::timeout(PROMPT, running)
        .await
        .expect("the query finishes")
        .unwrap();
    result.expect("b's cancel must not cancel a's query");
    b.simple_query("SELECT 1").await.unwrap();
}

#[tokio::test]
async fn transaction_mode_cancel_of_one_client_never_cancels_another_clients_query() {
    let pgberth = start("transaction", 2);
    let direct = direct().await;
    let a = connect(&pgberth).await;
    let b = connect(&pgberth).await;
    let a_token = a.cancel_token();
    let running_a = sleeping(a, &direct, 30, "tx_shared_a_probe").await;
    let running_b = sleeping(b, &direct, 2, "tx_shared_b_probe").await;
    a_token.cancel_query(NoTls).await.unwrap();
    let (_a, result_a) = tokio::time::timeout(CANCELLED_WITHIN, running_a)
        .await
        .expect("a's query is cancelled quickly")
        .unwrap();
    assert_eq!(
        result_a.expect_err("a's query was cancelled").code(),
        Some(&SqlState::QUERY_CANCELED)
    );
    let (_b, result_b) = tokio::time::timeout(PROMPT, running_b)
        .await
        .expect("b's query finishes")
        .unwrap();
    result_b.expect("cancelling a must not cancel b");
}

#[tokio::test]
async fn transaction_mode_stale_cancel_does_not_reach_the_next_user_of_the_server() {
    // One server connection: a ran a query on it and is now idle; b runs on the same backend.
    let pgberth = start("transaction", 1);
    let direct = direct().await;
    let a = connect(&pgberth).await;
    let b = connect(&pgberth).await;
    let a_pid: i32 = a
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    let b_pid: i32 = b
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(a_pid, b_pid, "both clients use the one server connection");
    let running_b = sleeping(b, &direct, 2, "stale_cancel_probe").await;
    a.cancel_token().cancel_query(NoTls).await.unwrap();
    let (_b, result) = tokio::time::timeout(PROMPT, running_b)
        .await
        .expect("b's query finishes")
        .unwrap();
    result.expect("a's cancel must not reach b's query on the shared backend");
}
