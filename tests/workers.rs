//! Worker threads (`workers.rs`): a server connection opened on one worker serves a client on
//! another once its socket has moved there, in plaintext and over TLS.

mod support;

use std::sync::Arc;
use std::sync::mpsc;

use pgberth::app::App;
use support::{APP_DB, PATIENCE, SCRAM_USER};

/// An `App` (no listener) whose database `app` is the test cluster, with the given
/// `server_tls_sslmode`.
fn app(server_tls: &str) -> (Arc<App>, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let app = support::in_process_app(
        dir.path(),
        &format!("{APP_DB} = host=127.0.0.1 port=@PGPORT@ dbname={APP_DB}"),
        &format!("pool_mode = transaction\nserver_tls_sslmode = {server_tls}"),
    );
    (app, dir)
}

#[test]
fn a_server_connection_opened_on_one_worker_serves_a_client_on_another() {
    support::cluster_ssl_on();
    let (worker_0, _others) = pgberth::workers::start(2).expect("start two workers");
    let worker_1 = pgberth::workers::handles()[1].clone();

    for server_tls in ["disable", "require"] {
        let (app, _dir) = app(server_tls);
        let config = app.config();
        let db = config.database(APP_DB).unwrap();
        let pool = app.pool(&db, SCRAM_USER);

        // Opened by a client of worker 1, and returned to the pool there.
        let opened_by = pool.clone();
        let (opened_on, id) = worker_0
            .block_on(worker_1.spawn(async move {
                let conn = opened_by
                    .checkout()
                    .await
                    .expect("open a server connection");
                let opened = (conn.worker(), conn.id);
                opened_by.checkin(conn);
                opened
            }))
            .unwrap();
        assert_eq!(opened_on, 1, "{server_tls}");

        // Worker 1 is kept busy: a socket still registered with it would never turn ready.
        let (blocked_tx, blocked) = mpsc::channel();
        let (release, released) = mpsc::channel::<()>();
        worker_1.spawn(async move {
            blocked_tx.send(()).unwrap();
            let _ = released.recv();
        });
        blocked.recv().unwrap();

        worker_0.block_on(async {
            let mut conn = pool.checkout().await.expect("the idle connection");
            assert_eq!(conn.id, id, "{server_tls}: the same connection");
            assert_eq!(conn.worker(), 0, "{server_tls}");
            assert_eq!(conn.stream.is_tls(), server_tls == "require");
            pgberth::server::run_internal_query(&mut conn.stream, "SELECT 1", PATIENCE)
                .await
                .unwrap_or_else(|e| panic!("{server_tls}: query on the moved connection: {e}"));
            pool.checkin(conn);
        });
        release.send(()).unwrap();
    }
}
