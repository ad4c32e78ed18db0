//! Parked clients against a real PostgreSQL: a client that goes quiet after logging in parks
//! (SHOW MEM's `parked_client` row counts it), resumes with its session intact when it speaks
//! again, and can be killed or leave while parked. Parking is observed through SHOW MEM and
//! SHOW CLIENTS, never by elapsed time.

mod support;

use support::{PATIENCE, Pgberth, SCRAM_PASS, SCRAM_USER, eventually, simple_rows as rows};
use tokio::task::JoinHandle;
use tokio_postgres::Client;
use tokio_postgres::error::SqlState;

const USERLIST: &str = "\"scram_user\" \"scram_pass\"\n\"admin\" \"admin_pass\"\n";

const INI: &str = "\
[databases]
app = host=127.0.0.1 port=@PGPORT@ dbname=app
app_session = host=127.0.0.1 port=@PGPORT@ dbname=app pool_mode=session

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = @PORT@
unix_socket_dir = @DIR@
auth_type = scram-sha-256
auth_file = @DIR@/userlist.txt
pool_mode = transaction
admin_users = admin
";

/// A client whose connection task is kept, to see how pgberth ends it.
async fn connect_watched(
    pgberth: &Pgberth,
    conn_str: &str,
) -> (Client, JoinHandle<Result<(), tokio_postgres::Error>>) {
    let (client, conn) = tokio_postgres::connect(conn_str, tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|e| panic!("{e:?}\n{}", pgberth.log_contents()));
    (client, tokio::spawn(conn))
}

/// Waits for pgberth to close a watched connection with `client_idle_timeout`'s 57P05.
async fn expect_idle_timeout(conn: JoinHandle<Result<(), tokio_postgres::Error>>) {
    let ended = tokio::time::timeout(PATIENCE, conn)
        .await
        .expect("closed within PATIENCE")
        .unwrap();
    let err = ended.expect_err("pgberth closes it with an error");
    assert_eq!(err.code(), Some(&SqlState::IDLE_SESSION_TIMEOUT), "{err}");
}

async fn parked(admin: &Client) -> u64 {
    let (columns, rows) = rows(admin, "SHOW MEM").await;
    let used = columns.iter().position(|c| c == "used").unwrap();
    let row = rows
        .iter()
        .find(|r| r[0] == "parked_client")
        .expect("SHOW MEM lists parked_client");
    row[used].parse().unwrap()
}

/// The ids of the clients SHOW CLIENTS lists for a database.
async fn client_ids(admin: &Client, database: &str) -> Vec<String> {
    let (columns, rows) = rows(admin, "SHOW CLIENTS").await;
    let col = |name: &str| columns.iter().position(|c| c == name).unwrap();
    rows.iter()
        .filter(|r| r[col("database")] == database)
        .map(|r| r[col("id")].clone())
        .collect()
}

async fn wait_parked(admin: &Client, n: u64) {
    eventually(&format!("{n} clients parked"), || async {
        parked(admin).await == n
    })
    .await;
}

#[tokio::test]
async fn a_quiet_client_parks_and_resumes_with_its_prepared_statements() {
    let pgberth = Pgberth::start(INI, USERLIST);
    let admin = pgberth.connect("admin", "admin_pass", "pgbouncer").await;
    let client = pgberth.connect(SCRAM_USER, SCRAM_PASS, "app").await;
    let statement = client.prepare("SELECT $1::int + 1").await.unwrap();
    wait_parked(&admin, 1).await;
    assert_eq!(client_ids(&admin, "app").await.len(), 1, "still listed");

    // Speaking again resumes it: the statement it prepared before parking still works.
    let row = client.query_one(&statement, &[&41]).await.unwrap();
    assert_eq!(row.get::<_, i32>(0), 42);
    // And it parks again once quiet.
    wait_parked(&admin, 1).await;
    let row = client.query_one(&statement, &[&1]).await.unwrap();
    assert_eq!(row.get::<_, i32>(0), 2);
}

#[tokio::test]
async fn a_client_on_the_unix_socket_parks_and_resumes() {
    let pgberth = Pgberth::start(INI, USERLIST);
    let admin = pgberth.connect("admin", "admin_pass", "pgbouncer").await;
    let socket = format!(
        "host={} port={} user={SCRAM_USER} password={SCRAM_PASS} dbname=app",
        pgberth.dir().display(),
        pgberth.port()
    );
    let (client, _conn) = connect_watched(&pgberth, &socket).await;
    wait_parked(&admin, 1).await;
    let (_, rows) = rows(&client, "SELECT 7").await;
    assert_eq!(rows[0][0], "7");
}

#[tokio::test]
async fn kill_client_closes_a_parked_client() {
    let pgberth = Pgberth::start(INI, USERLIST);
    let admin = pgberth.connect("admin", "admin_pass", "pgbouncer").await;
    let victim = pgberth.connect(SCRAM_USER, SCRAM_PASS, "app").await;
    wait_parked(&admin, 1).await;
    let ids = client_ids(&admin, "app").await;
    assert_eq!(ids.len(), 1);

    admin
        .simple_query(&format!("KILL_CLIENT {}", ids[0]))
        .await
        .unwrap();
    assert_eq!(parked(&admin).await, 0);
    assert!(victim.simple_query("SELECT 1").await.is_err(), "killed");
    assert!(client_ids(&admin, "app").await.is_empty());
    // The pool no longer counts it.
    let (columns, pools) = rows(&admin, "SHOW POOLS").await;
    let cl_active = columns.iter().position(|c| c == "cl_active").unwrap();
    let app = pools.iter().find(|r| r[0] == "app").unwrap();
    assert_eq!(app[cl_active], "0");
}

#[tokio::test]
async fn a_parked_client_that_disconnects_is_gone() {
    let pgberth = Pgberth::start(INI, USERLIST);
    let admin = pgberth.connect("admin", "admin_pass", "pgbouncer").await;
    let client = pgberth.connect(SCRAM_USER, SCRAM_PASS, "app").await;
    wait_parked(&admin, 1).await;
    drop(client);
    eventually("the client left SHOW CLIENTS", || async {
        client_ids(&admin, "app").await.is_empty()
    })
    .await;
    assert_eq!(parked(&admin).await, 0);
}

/// A session-mode client holds its server connection from login on: it never parks. It
/// connects first, so it would park before the transaction-mode client if it could.
#[tokio::test]
async fn a_client_holding_a_server_connection_does_not_park() {
    let pgberth = Pgberth::start(INI, USERLIST);
    let admin = pgberth.connect("admin", "admin_pass", "pgbouncer").await;
    let session = pgberth.connect(SCRAM_USER, SCRAM_PASS, "app_session").await;
    let (_, rows_before) = rows(&session, "SELECT pg_backend_pid()").await;
    let _quiet = pgberth.connect(SCRAM_USER, SCRAM_PASS, "app").await;
    wait_parked(&admin, 1).await;
    assert_eq!(parked(&admin).await, 1);
    // The session client kept its server connection throughout.
    let (_, rows_after) = rows(&session, "SELECT pg_backend_pid()").await;
    assert_eq!(rows_before, rows_after);
}

/// A parked client's `client_idle_timeout` runs on in the parking thread: the client gets
/// 57P05 and is closed, as one waiting idle in its task would be.
#[tokio::test]
async fn a_parked_client_idle_past_client_idle_timeout_is_closed_with_57p05() {
    let ini = format!("{INI}client_idle_timeout = 2\n");
    let pgberth = Pgberth::start(&ini, USERLIST);
    let admin = pgberth.connect("admin", "admin_pass", "pgbouncer").await;
    let conn_str = support::conn_str(pgberth.port(), SCRAM_USER, SCRAM_PASS, "app");
    let (client, conn) = connect_watched(&pgberth, &conn_str).await;
    // It parks after 100 ms of quiet, well before the timeout.
    wait_parked(&admin, 1).await;
    expect_idle_timeout(conn).await;
    drop(client);
    // A fresh console session: the first one idled too.
    let admin = pgberth.connect("admin", "admin_pass", "pgbouncer").await;
    assert_eq!(parked(&admin).await, 0);
    assert!(client_ids(&admin, "app").await.is_empty());
}

/// A client that may not park (session mode: it holds its server connection) waits idle in
/// its task, where `client_idle_timeout` closes it the same way.
#[tokio::test]
async fn a_session_client_idle_past_client_idle_timeout_is_closed_with_57p05() {
    let ini = format!("{INI}client_idle_timeout = 1\n");
    let pgberth = Pgberth::start(&ini, USERLIST);
    let conn_str = support::conn_str(pgberth.port(), SCRAM_USER, SCRAM_PASS, "app_session");
    let (client, conn) = connect_watched(&pgberth, &conn_str).await;
    expect_idle_timeout(conn).await;
    drop(client);
    let admin = pgberth.connect("admin", "admin_pass", "pgbouncer").await;
    assert_eq!(parked(&admin).await, 0, "it never parked");
}
