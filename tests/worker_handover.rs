//! Clients handed from one worker to another (`workers.rs`) keep their session: a prepared
//! statement in transaction mode, the server connection and its state in session mode. After
//! the move the client is served while its old worker is blocked, so its sockets really moved.

mod support;

use std::sync::Arc;
use std::sync::mpsc;
use std::time::Duration;

use pgberth::app::App;
use support::{APP_DB, PATIENCE, SCRAM_PASS, SCRAM_USER, conn_str, eventually};

/// An `App` serving the test cluster as `app` (transaction mode) and `app_session` (session
/// mode), with an accept loop on every worker; returns it and its port.
fn pooler(dir: &std::path::Path) -> (Arc<App>, u16) {
    let app = support::in_process_app(
        dir,
        &format!(
            "{APP_DB} = host=127.0.0.1 port=@PGPORT@ dbname={APP_DB}\n\
             app_session = host=127.0.0.1 port=@PGPORT@ dbname={APP_DB} pool_mode=session"
        ),
        "pool_mode = transaction",
    );
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let port = listener.local_addr().unwrap().port();
    // As `process::serve` does: every worker has an accept loop; only active ones accept.
    for worker in pgberth::workers::handles() {
        let listener = listener.try_clone().unwrap();
        worker.spawn(pgberth::listener::accept_tcp(app.clone(), listener));
    }
    (app, port)
}

/// Blocks worker 0's thread until the returned sender is used or dropped.
fn block_worker_0() -> mpsc::Sender<()> {
    let (blocked_tx, blocked) = mpsc::channel();
    let (release, released) = mpsc::channel::<()>();
    pgberth::workers::handles()[0].spawn(async move {
        blocked_tx.send(()).unwrap();
        let _ = released.recv();
    });
    blocked.recv().unwrap();
    release
}

async fn connect(port: u16, db: &str) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(
        &conn_str(port, SCRAM_USER, SCRAM_PASS, db),
        tokio_postgres::NoTls,
    )
    .await
    .unwrap_or_else(|e| panic!("connect to {db}: {e}"));
    tokio::spawn(connection);
    client
}

/// Waits until the one client relays on worker 1 and none on worker 0.
async fn on_worker_1() {
    eventually("the client relays on worker 1", || async {
        pgberth::workers::clients() == [0, 1]
    })
    .await;
}

#[test]
fn clients_handed_to_another_worker_keep_their_session_and_are_served_there() {
    let dir = tempfile::tempdir().unwrap();
    let (worker_0, _others) = pgberth::workers::start(2).expect("start two workers");
    let (stop_worker_0, stopped) = tokio::sync::oneshot::channel::<()>();
    let (_app, port) = pooler(dir.path());
    let driver = std::thread::spawn(move || {
        worker_0.block_on(async {
            let _ = stopped.await;
        });
    });
    let clients = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();

    clients.block_on(async {
        // Transaction mode: a named prepared statement survives the move.
        let client = connect(port, APP_DB).await;
        let plus_one = client.prepare("SELECT $1::int4 + 1").await.unwrap();
        let row = client.query_one(&plus_one, &[&1i32]).await.unwrap();
        assert_eq!(row.get::<_, i32>(0), 2);
        assert_eq!(pgberth::workers::active(), 1);
        assert_eq!(
            pgberth::workers::clients(),
            [1, 0],
            "only the active worker 0 accepts"
        );
        pgberth::workers::hand_over(0, 1, 1);
        client.simple_query("SELECT 1").await.unwrap();
        on_worker_1().await;
        let release = block_worker_0();
        let row = tokio::time::timeout(PATIENCE, client.query_one(&plus_one, &[&41i32]))
            .await
            .expect("served on worker 1 while worker 0 is blocked")
            .unwrap();
        assert_eq!(row.get::<_, i32>(0), 42);
        drop(release);
        drop(client);
        eventually("the client is gone", || async {
            pgberth::workers::clients() == [0, 0]
        })
        .await;

        // Session mode: the client moves with its server connection and the session on it.
        let client = connect(port, "app_session").await;
        client
            .batch_execute("CREATE TEMP TABLE moved (n int); INSERT INTO moved VALUES (7)")
            .await
            .unwrap();
        pgberth::workers::hand_over(0, 1, 1);
        client.simple_query("SELECT 1").await.unwrap();
        on_worker_1().await;
        let release = block_worker_0();
        let row = tokio::time::timeout(PATIENCE, client.query_one("SELECT n FROM moved", &[]))
            .await
            .expect("served on worker 1 while worker 0 is blocked")
            .unwrap();
        assert_eq!(row.get::<_, i32>(0), 7, "the same server session");
        drop(release);
    });
    let _ = stop_worker_0.send(());
    driver.join().unwrap();
    // Give the client runtime a moment to close its sockets before the workers stop.
    clients.shutdown_timeout(Duration::from_secs(1));
}
