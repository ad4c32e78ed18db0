//! Named prepared statements and session parameters in transaction mode, through the real
//! pgberth binary against the real PostgreSQL: each client keeps its own statements (protocol
//! `Parse`/`Close` and SQL `PREPARE`/`DEALLOCATE`) and its own `SET`s although its transactions
//! run on whichever server connection is free; drivers that depend on it (tokio-postgres,
//! asyncpg, psycopg 3, `pgbench -M prepared`) give correct results over a small pool. Session
//! mode, where all this already holds, is checked once.

mod support;

use std::time::Duration;

use support::drivers::{self, RawClient};
use support::{Pgberth, SCRAM_PASS, SCRAM_USER, cluster};
use tokio_postgres::error::SqlState;
use tokio_postgres::{Client, NoTls, SimpleQueryMessage};

/// Only there to turn a hang into a failure.
const HANG: Duration = Duration::from_secs(60);
/// For the Python scripts and pgbench runs (processes that start up and do many round trips).
const TOOL_HANG: Duration = Duration::from_secs(180);

const USERLIST: &str = "\"scram_user\" \"scram_pass\"\n";

/// A pgberth.ini for the `app` database (and `extra_databases`, each mapped to the same name)
/// with `general` in `[pgbouncer]`.
fn ini(general: &str, extra_databases: &[&str]) -> String {
    let databases: String = std::iter::once("app")
        .chain(extra_databases.iter().copied())
        .map(|n| format!("{n} = host=127.0.0.1 port=@PGPORT@ dbname={n}\n"))
        .collect();
    format!(
        "[databases]\n{databases}\n[pgbouncer]\nlisten_addr = 127.0.0.1\nlisten_port = @PORT@\n\
         unix_socket_dir =\nauth_file = @DIR@/userlist.txt\nauth_type = scram-sha-256\n\
         max_client_conn = 200\n{general}\n"
    )
}

/// Transaction mode with `pool_size` server connections and room for 100 statements on each.
fn transaction_mode(pool_size: u32) -> String {
    format!(
        "pool_mode = transaction\ndefault_pool_size = {pool_size}\nmax_prepared_statements = 100"
    )
}

fn start(general: &str) -> Pgberth {
    Pgberth::start(&ini(general, &[]), USERLIST)
}

async fn connect(pgberth: &Pgberth) -> Client {
    pgberth.connect(SCRAM_USER, SCRAM_PASS, "app").await
}

/// Connects with `application_name` in the startup packet.
async fn connect_named(pgberth: &Pgberth, application_name: &str) -> Client {
    let conn_str = format!(
        "{} application_name={application_name}",
        pgberth.conn_str(SCRAM_USER, SCRAM_PASS, "app")
    );
    let (client, connection) = tokio_postgres::connect(&conn_str, NoTls)
        .await
        .unwrap_or_else(|e| panic!("connect: {e:?}\npgberth log:\n{}", pgberth.log_contents()));
    tokio::spawn(connection);
    client
}

/// Fails the test if `fut` takes longer than [`HANG`].
async fn within<T>(what: &str, fut: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(HANG, fut)
        .await
        .unwrap_or_else(|_| panic!("{what} hung for {HANG:?}"))
}

/// `SQLSTATE: message` of a server error, or the whole error otherwise.
fn db_err(err: &tokio_postgres::Error) -> String {
    match err.as_db_error() {
        Some(db) => format!("{} {}: {}", db.severity(), db.code().code(), db.message()),
        None => format!("{err:?}"),
    }
}

/// The first column of every row of a simple-protocol query (one or more statements).
async fn simple(client: &Client, sql: &str) -> Result<Vec<Option<String>>, tokio_postgres::Error> {
    let messages = client.simple_query(sql).await?;
    Ok(messages
        .iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(row) => Some(row.get(0).map(str::to_owned)),
            _ => None,
        })
        .collect())
}

/// The single value a simple-protocol query returns; panics with the server's error.
async fn simple_one(client: &Client, sql: &str) -> String {
    let values = simple(client, sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {}", db_err(&e)));
    assert_eq!(values.len(), 1, "{sql} returned {values:?}");
    values[0].clone().unwrap_or_default()
}

async fn show(client: &Client, parameter: &str) -> String {
    simple_one(client, &format!("SHOW {parameter}")).await
}

async fn backend_pid(client: &Client) -> String {
    simple_one(client, "SELECT pg_backend_pid()").await
}

/// `client.query_one(stmt, params)`'s first column, or the server's error as text.
async fn one<T>(
    client: &Client,
    stmt: &(impl tokio_postgres::ToStatement + ?Sized),
    params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
) -> Result<T, String>
where
    T: for<'a> tokio_postgres::types::FromSql<'a>,
{
    client
        .query_one(stmt, params)
        .await
        .map(|row| row.get::<_, T>(0))
        .map_err(|e| db_err(&e))
}

// ---------------------------------------------------------------------------------------------
// tokio-postgres: protocol-level named statements ("s0", "s1", …, closed when dropped).

#[tokio::test]
async fn tokio_postgres_prepared_statements_are_correct_for_10_clients_sharing_a_transaction_pool_of_2()
 {
    let pgberth = start(&transaction_mode(2));
    let mut tasks = Vec::new();
    for n in 0..10i32 {
        let conn_str = pgberth.conn_str(SCRAM_USER, SCRAM_PASS, "app");
        tasks.push(tokio::spawn(async move {
            let (mut client, connection) = tokio_postgres::connect(&conn_str, NoTls)
                .await
                .map_err(|e| format!("client {n} connect: {e:?}"))?;
            tokio::spawn(connection);
            let fail = |i: i32, e: String| format!("client {n} iteration {i}: {e}");
            let add = client
                .prepare("SELECT $1::int4 + 1")
                .await
                .map_err(|e| fail(-1, db_err(&e)))?;
            let label = client
                .prepare("SELECT $1::text || ':' || $2::int4")
                .await
                .map_err(|e| fail(-1, db_err(&e)))?;
            for i in 0..40i32 {
                let v = n * 1000 + i;
                let got: i32 = one(&client, &add, &[&v]).await.map_err(|e| fail(i, e))?;
                assert_eq!(got, v + 1, "client {n} iteration {i}");
                let got: String = one(&client, &label, &[&format!("c{n}"), &i])
                    .await
                    .map_err(|e| fail(i, e))?;
                assert_eq!(got, format!("c{n}:{i}"));
                // A query string: prepared as a new named statement, closed right after.
                let got: i32 = one(&client, "SELECT $1::int4 * 3", &[&v])
                    .await
                    .map_err(|e| fail(i, e))?;
                assert_eq!(got, v * 3);
                if i % 5 == 0 {
                    let tx = client
                        .transaction()
                        .await
                        .map_err(|e| fail(i, db_err(&e)))?;
                    let got: i32 = tx
                        .query_one(&add, &[&v])
                        .await
                        .map_err(|e| fail(i, db_err(&e)))?
                        .get(0);
                    assert_eq!(got, v + 1);
                    tx.commit().await.map_err(|e| fail(i, db_err(&e)))?;
                }
            }
            Ok::<(), String>(())
        }));
    }
    for task in tasks {
        if let Err(err) = within("a client's loop", task).await.expect("client task") {
            panic!("{err}\npgberth log:\n{}", pgberth.log_contents());
        }
    }
}

#[tokio::test]
async fn tokio_postgres_statement_prepared_in_one_transaction_works_in_a_later_one_on_another_server_connection()
 {
    let pgberth = start(&transaction_mode(2));
    let a = connect(&pgberth).await;
    a.batch_execute("BEGIN").await.unwrap();
    let prepared_on = backend_pid(&a).await;
    let stmt = a.prepare("SELECT $1::int4 * 7").await.unwrap();
    assert_eq!(one::<i32>(&a, &stmt, &[&6]).await, Ok(42));
    a.batch_execute("COMMIT").await.unwrap();

    // Two other clients inside transactions hold both server connections; the one holding
    // the connection the statement was prepared on keeps it, the other lets go.
    let b = connect(&pgberth).await;
    let c = connect(&pgberth).await;
    b.batch_execute("BEGIN").await.unwrap();
    c.batch_execute("BEGIN").await.unwrap();
    let (b_pid, c_pid) = (backend_pid(&b).await, backend_pid(&c).await);
    let holder = match (b_pid == prepared_on, c_pid == prepared_on) {
        (true, false) => &b,
        (false, true) => &c,
        _ => panic!("pool of 2: b on {b_pid}, c on {c_pid}, statement prepared on {prepared_on}"),
    };
    let other = if std::ptr::eq(holder, &b) { &c } else { &b };
    other.batch_execute("COMMIT").await.unwrap();

    within("a's transaction on the other server", async {
        a.batch_execute("BEGIN").await.unwrap();
        assert_ne!(
            backend_pid(&a).await,
            prepared_on,
            "a should be on the other server"
        );
        assert_eq!(one::<i32>(&a, &stmt, &[&3]).await, Ok(21));
        a.batch_execute("COMMIT").await.unwrap();
        // And outside a transaction block.
        assert_eq!(one::<i32>(&a, &stmt, &[&5]).await, Ok(35));
    })
    .await;
    holder.batch_execute("COMMIT").await.unwrap();
    assert_eq!(one::<i32>(&a, &stmt, &[&1]).await, Ok(7));
}

/// tokio-postgres numbers its statements from a process-wide counter, so two of its clients
/// never share a name; drivers that count per connection (psycopg's `_pg3_0`, pgbench's
/// `P_0`) do. Raw clients send the same name here.
#[tokio::test]
async fn same_statement_name_with_different_text_on_three_clients_gives_each_its_own_results() {
    // Pool of 1: the three clients' "s0" meet on the same server connection.
    let pgberth = start(&transaction_mode(1));
    let texts = [
        "SELECT $1::int4 + 100",
        "SELECT upper($1::text) || '!'",
        "SELECT 'three', $1::text",
    ];
    let mut clients = Vec::new();
    for text in texts {
        let mut client = RawClient::connect(pgberth.port(), SCRAM_USER, SCRAM_PASS, "app").await;
        if let Err(e) = within("Parse s0", client.prepare("s0", text)).await {
            panic!("\"s0\" AS {text}: {e}");
        }
        clients.push(client);
    }
    within("Bind/Execute s0 on each client", async {
        for i in 0..10 {
            let arg = format!("{i}");
            let want = [
                vec![Some((i + 100).to_string())],
                vec![Some(format!("{i}!"))],
                vec![Some("three".to_owned()), Some(arg.clone())],
            ];
            for (n, client) in clients.iter_mut().enumerate() {
                let rows = client
                    .run("s0", &[&arg])
                    .await
                    .unwrap_or_else(|e| panic!("client {n}, round {i}: {e}"));
                assert_eq!(rows, [want[n].clone()], "client {n}, round {i}");
            }
        }
    })
    .await;
}

#[tokio::test]
async fn statements_evicted_by_max_prepared_statements_are_prepared_again_transparently() {
    let pgberth =
        start("pool_mode = transaction\ndefault_pool_size = 1\nmax_prepared_statements = 3");
    let a = connect(&pgberth).await;
    let b = connect(&pgberth).await;
    let mut stmts = Vec::new();
    for k in 0..10i32 {
        stmts.push(a.prepare(&format!("SELECT $1::int4 + {k}")).await.unwrap());
    }
    let b_stmts = [
        b.prepare("SELECT $1::int4 - 1").await.unwrap(),
        b.prepare("SELECT $1::int4 - 2").await.unwrap(),
    ];
    within("executing evicted statements", async {
        for round in 0..2i32 {
            for (k, stmt) in (0i32..).zip(&stmts) {
                let v = round * 100 + k;
                assert_eq!(
                    one::<i32>(&a, stmt, &[&v]).await,
                    Ok(v + k),
                    "round {round}, statement {k}"
                );
                let bs = &b_stmts[(k % 2) as usize];
                assert_eq!(one::<i32>(&b, bs, &[&v]).await, Ok(v - 1 - k % 2));
            }
        }
    })
    .await;
}

#[tokio::test]
async fn max_prepared_statements_caps_the_statements_kept_on_a_server_connection() {
    let pgberth =
        start("pool_mode = transaction\ndefault_pool_size = 1\nmax_prepared_statements = 3");
    let a = connect(&pgberth).await;
    // Kept, so that tokio-postgres sends no Close: the client has 10 statements open.
    let mut open = Vec::new();
    for k in 0..10i32 {
        let stmt = a.prepare(&format!("SELECT $1::int4 * {k}")).await.unwrap();
        assert_eq!(one::<i32>(&a, &stmt, &[&2]).await, Ok(2 * k));
        open.push(stmt);
    }
    let kept: i64 = simple_one(&a, "SELECT count(*) FROM pg_prepared_statements")
        .await
        .parse()
        .unwrap();
    assert!(
        kept <= 3,
        "{kept} statements prepared on the server connection, max_prepared_statements = 3"
    );
}

#[tokio::test]
async fn dropped_tokio_postgres_statements_are_closed_and_later_ones_work() {
    let pgberth = start(&transaction_mode(1));
    let a = connect(&pgberth).await;
    let b = connect(&pgberth).await;
    let b_stmt = b.prepare("SELECT $1::int4 * 2").await.unwrap();
    within("prepare, use, drop in a loop", async {
        for round in 0..20i32 {
            let stmt = a
                .prepare(&format!("SELECT $1::int4 + {round}"))
                .await
                .unwrap_or_else(|e| panic!("round {round}: {}", db_err(&e)));
            assert_eq!(one::<i32>(&a, &stmt, &[&1]).await, Ok(1 + round));
            drop(stmt); // tokio-postgres sends Close for it
            assert_eq!(one::<i32>(&b, &b_stmt, &[&round]).await, Ok(2 * round));
        }
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// A raw client: reusing a name after Close, and PostgreSQL's own errors for names.

#[tokio::test]
async fn closed_statement_name_can_be_prepared_again_with_other_text() {
    let pgberth = start(&transaction_mode(1));
    let port = pgberth.port();
    let mut a = RawClient::connect(port, SCRAM_USER, SCRAM_PASS, "app").await;
    let mut b = RawClient::connect(port, SCRAM_USER, SCRAM_PASS, "app").await;
    let text = |rows: Vec<Vec<Option<String>>>| rows[0][0].clone().unwrap();
    within("raw protocol round trips", async {
        a.prepare("st", "SELECT 'a1'").await.unwrap();
        b.prepare("st", "SELECT 'b' || $1::text")
            .await
            .unwrap_or_else(|e| panic!("b's \"st\" after a's: {e}"));
        assert_eq!(a.run("st", &[]).await.map(text), Ok("a1".to_owned()));
        assert_eq!(b.run("st", &["1"]).await.map(text), Ok("b1".to_owned()));

        // Close, then the same name with other text, in separate round trips…
        a.close("st").await.unwrap();
        let err = a.run("st", &[]).await.unwrap_err();
        assert_eq!(err.code, "26000", "a closed statement is gone: {err}");
        a.prepare("st", "SELECT 'a2'").await.unwrap();
        assert_eq!(a.run("st", &[]).await.map(text), Ok("a2".to_owned()));
        // …and in one pipeline.
        let reply = a
            .close_statement("st")
            .parse("st", "SELECT 'a3'")
            .bind("st", &[])
            .execute()
            .sync()
            .round_trip()
            .await;
        assert_eq!(reply.error, None);
        assert_eq!(reply.rows, [[Some("a3".to_owned())]]);
        // Closing a name that does not exist is not an error in PostgreSQL.
        a.close("never_prepared").await.unwrap();
        assert_eq!(b.run("st", &["2"]).await.map(text), Ok("b2".to_owned()));
    })
    .await;
}

#[tokio::test]
async fn preparing_a_name_in_use_is_refused_with_42p05_for_that_client_only() {
    let pgberth = start(&transaction_mode(1));
    let mut a = RawClient::connect(pgberth.port(), SCRAM_USER, SCRAM_PASS, "app").await;
    let text = |rows: Vec<Vec<Option<String>>>| rows[0][0].clone().unwrap();
    within("raw protocol round trips", async {
        a.prepare("st", "SELECT 'a1'").await.unwrap();
        let err = a.prepare("st", "SELECT 'again'").await.unwrap_err();
        assert_eq!(err.code, "42P05", "{err}");
        assert_eq!(a.run("st", &[]).await.map(text), Ok("a1".to_owned()));
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// DEALLOCATE ALL and DISCARD ALL affect the client that sends them only.

#[tokio::test]
async fn deallocate_all_removes_the_clients_own_statements_only() {
    let pgberth = start(&transaction_mode(1));
    let a = connect(&pgberth).await;
    let b = connect(&pgberth).await;
    let a_stmt = a.prepare("SELECT $1::int4 + 1").await.unwrap();
    let b_stmt = b.prepare("SELECT $1::int4 + 2").await.unwrap();
    assert_eq!(one::<i32>(&a, &a_stmt, &[&1]).await, Ok(2));
    assert_eq!(one::<i32>(&b, &b_stmt, &[&1]).await, Ok(3));

    a.batch_execute("DEALLOCATE ALL").await.unwrap();
    let err = a.query_one(&a_stmt, &[&1]).await.unwrap_err();
    assert_eq!(
        err.code(),
        Some(&SqlState::INVALID_SQL_STATEMENT_NAME),
        "{}",
        db_err(&err)
    );
    assert_eq!(
        one::<i32>(&b, &b_stmt, &[&1]).await,
        Ok(3),
        "b is unaffected"
    );
    let again = a.prepare("SELECT $1::int4 + 1").await.unwrap();
    assert_eq!(one::<i32>(&a, &again, &[&5]).await, Ok(6));
}

#[tokio::test]
async fn discard_all_removes_the_clients_own_statements_and_settings_only() {
    let pgberth = start(&transaction_mode(1));
    let a = connect(&pgberth).await;
    let b = connect(&pgberth).await;
    let a_stmt = a.prepare("SELECT $1::int4 + 1").await.unwrap();
    let b_stmt = b.prepare("SELECT $1::int4 + 2").await.unwrap();
    a.batch_execute("SET statement_timeout = '1234ms'")
        .await
        .unwrap();
    b.batch_execute("SET lock_timeout = '4321ms'")
        .await
        .unwrap();
    assert_eq!(one::<i32>(&a, &a_stmt, &[&1]).await, Ok(2));

    a.batch_execute("DISCARD ALL").await.unwrap();
    let err = a.query_one(&a_stmt, &[&1]).await.unwrap_err();
    assert_eq!(
        err.code(),
        Some(&SqlState::INVALID_SQL_STATEMENT_NAME),
        "{}",
        db_err(&err)
    );
    assert_eq!(show(&a, "statement_timeout").await, "0");
    assert_eq!(one::<i32>(&b, &b_stmt, &[&1]).await, Ok(3), "b's statement");
    assert_eq!(show(&b, "lock_timeout").await, "4321ms", "b's setting");
    assert_eq!(show(&b, "statement_timeout").await, "0");
}

// ---------------------------------------------------------------------------------------------
// SQL-level PREPARE / EXECUTE / DEALLOCATE.

#[tokio::test]
async fn sql_prepare_execute_deallocate_work_across_transactions_with_other_clients_churning() {
    let pgberth = start(&transaction_mode(2));
    let a = connect(&pgberth).await;
    let b = connect(&pgberth).await;
    let churner = connect(&pgberth).await;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let churn = tokio::spawn({
        let stop = stop.clone();
        async move {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                churner
                    .batch_execute("BEGIN; SELECT pg_sleep(0.002); COMMIT")
                    .await
                    .unwrap();
                churner.batch_execute("SELECT 1").await.unwrap();
            }
        }
    });

    within("PREPARE/EXECUTE/DEALLOCATE", async {
        simple(&a, "PREPARE p AS SELECT $1::int").await.unwrap();
        // Same name, other text, other client.
        if let Err(e) = simple(&b, "PREPARE p AS SELECT $1::int * 10").await {
            panic!("b's PREPARE p after a's: {}", db_err(&e));
        }
        for i in 0..20 {
            let sql = if i % 3 == 0 {
                format!("BEGIN; EXECUTE p({i}); COMMIT")
            } else {
                format!("EXECUTE p({i})")
            };
            assert_eq!(simple_one(&a, &sql).await, i.to_string(), "a: {sql}");
            assert_eq!(simple_one(&b, &sql).await, (i * 10).to_string(), "b: {sql}");
        }
        simple(&a, "DEALLOCATE p").await.unwrap();
        let err = simple(&a, "EXECUTE p(1)").await.unwrap_err();
        assert_eq!(
            err.code(),
            Some(&SqlState::INVALID_SQL_STATEMENT_NAME),
            "{}",
            db_err(&err)
        );
        assert_eq!(simple_one(&b, "EXECUTE p(3)").await, "30", "b keeps its p");
        simple(&a, "PREPARE p AS SELECT $1::int + 1000")
            .await
            .unwrap();
        assert_eq!(simple_one(&a, "EXECUTE p(1)").await, "1001");
    })
    .await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    within("the churning client", churn).await.unwrap();
}

// ---------------------------------------------------------------------------------------------
// Session parameters: SET outside SET LOCAL follows the client, not the server connection.
// A pool of 1 makes the two clients share one server connection.

#[tokio::test]
async fn set_outside_a_transaction_follows_the_client_across_transactions_and_not_to_others() {
    let pgberth = start(&transaction_mode(1));
    let a = connect(&pgberth).await;
    let b = connect(&pgberth).await;
    a.batch_execute("SET statement_timeout = '1234ms'")
        .await
        .unwrap();
    for _ in 0..3 {
        assert_eq!(
            show(&b, "statement_timeout").await,
            "0",
            "b sees the default"
        );
        let in_tx = simple(&a, "BEGIN; SHOW statement_timeout; COMMIT")
            .await
            .unwrap();
        assert_eq!(
            in_tx,
            [Some("1234ms".to_owned())],
            "a, in a later transaction"
        );
        assert_eq!(show(&a, "statement_timeout").await, "1234ms");
    }
}

#[tokio::test]
async fn reset_and_reset_all_restore_the_clients_defaults() {
    let pgberth = start(&transaction_mode(1));
    let a = connect(&pgberth).await;
    let b = connect(&pgberth).await;
    b.batch_execute("SET lock_timeout = '777ms'").await.unwrap();

    a.batch_execute("SET statement_timeout = '1234ms'")
        .await
        .unwrap();
    assert_eq!(show(&b, "statement_timeout").await, "0");
    a.batch_execute("RESET statement_timeout").await.unwrap();
    assert_eq!(show(&b, "statement_timeout").await, "0");
    assert_eq!(show(&a, "statement_timeout").await, "0", "after RESET");

    a.batch_execute("SET statement_timeout = '1234ms'; SET lock_timeout = '2s'")
        .await
        .unwrap();
    assert_eq!(show(&b, "lock_timeout").await, "777ms");
    assert_eq!(show(&a, "lock_timeout").await, "2s");
    a.batch_execute("RESET ALL").await.unwrap();
    assert_eq!(show(&b, "lock_timeout").await, "777ms", "b keeps its own");
    assert_eq!(show(&a, "statement_timeout").await, "0", "after RESET ALL");
    assert_eq!(show(&a, "lock_timeout").await, "0", "after RESET ALL");
    assert_eq!(show(&b, "lock_timeout").await, "777ms");
}

#[tokio::test]
async fn set_application_name_is_per_client() {
    let pgberth = start(&transaction_mode(1));
    let a = connect_named(&pgberth, "a_startup").await;
    let b = connect_named(&pgberth, "b_startup").await;
    a.batch_execute("SET application_name = 'a_set'")
        .await
        .unwrap();
    for _ in 0..3 {
        assert_eq!(show(&b, "application_name").await, "b_startup");
        assert_eq!(show(&a, "application_name").await, "a_set");
    }
    // PostgreSQL sees it too, on the server connection a is using.
    let seen = simple_one(
        &a,
        "SELECT application_name FROM pg_stat_activity WHERE pid = pg_backend_pid()",
    )
    .await;
    assert_eq!(seen, "a_set");
    // Not checked: `RESET application_name` giving back the startup value. pgberth applies
    // startup parameters with SET, so RESET returns to the server connection's own value, in
    // session mode as well.
}

#[tokio::test]
async fn statement_timeout_set_by_one_client_cancels_its_queries_only() {
    let pgberth = start(&transaction_mode(1));
    let a = connect(&pgberth).await;
    let b = connect(&pgberth).await;
    a.batch_execute("SET statement_timeout = '300ms'")
        .await
        .unwrap();
    within("b's pg_sleep", b.batch_execute("SELECT pg_sleep(0.6)"))
        .await
        .unwrap_or_else(|e| panic!("b got a's statement_timeout: {}", db_err(&e)));
    let err = within("a's pg_sleep", a.batch_execute("SELECT pg_sleep(5)"))
        .await
        .unwrap_err();
    assert_eq!(
        err.code(),
        Some(&SqlState::QUERY_CANCELED),
        "{}",
        db_err(&err)
    );
}

#[tokio::test]
async fn set_in_a_rolled_back_transaction_is_undone_and_set_local_does_not_persist() {
    let pgberth = start(&transaction_mode(1));
    let a = connect(&pgberth).await;
    let b = connect(&pgberth).await;
    a.batch_execute("BEGIN; SET statement_timeout = '1111ms'; ROLLBACK")
        .await
        .unwrap();
    assert_eq!(show(&b, "statement_timeout").await, "0");
    assert_eq!(show(&a, "statement_timeout").await, "0", "rolled back");
    a.batch_execute("BEGIN; SET LOCAL statement_timeout = '2222ms'; COMMIT")
        .await
        .unwrap();
    assert_eq!(show(&b, "statement_timeout").await, "0");
    assert_eq!(show(&a, "statement_timeout").await, "0", "SET LOCAL");
    a.batch_execute("BEGIN; SET statement_timeout = '3333ms'; COMMIT")
        .await
        .unwrap();
    assert_eq!(show(&b, "statement_timeout").await, "0");
    assert_eq!(show(&a, "statement_timeout").await, "3333ms", "committed");
}

// ---------------------------------------------------------------------------------------------
// Session mode: nothing to track, everything already works.

#[tokio::test]
async fn session_mode_prepared_statements_and_settings_work_as_before() {
    let pgberth =
        start("pool_mode = session\ndefault_pool_size = 2\nmax_prepared_statements = 100");
    let a = connect(&pgberth).await;
    let b = connect(&pgberth).await;
    let add = a.prepare("SELECT $1::int4 + 100").await.unwrap();
    let shout = b.prepare("SELECT upper($1::text)").await.unwrap();
    simple(&a, "PREPARE p AS SELECT $1::int * 2").await.unwrap();
    a.batch_execute("SET statement_timeout = '1234ms'")
        .await
        .unwrap();
    for i in 0..5i32 {
        a.batch_execute("BEGIN; COMMIT").await.unwrap();
        assert_eq!(one::<i32>(&a, &add, &[&i]).await, Ok(i + 100));
        assert_eq!(one::<String>(&b, &shout, &[&"x"]).await, Ok("X".to_owned()));
        assert_eq!(
            simple_one(&a, &format!("EXECUTE p({i})")).await,
            (i * 2).to_string()
        );
    }
    assert_eq!(show(&a, "statement_timeout").await, "1234ms");
    assert_eq!(show(&b, "statement_timeout").await, "0");
}

// ---------------------------------------------------------------------------------------------
// Drivers and tools: asyncpg, psycopg 3, pgbench -M prepared.

/// 10 asyncpg connections with the default statement cache, concurrently.
const ASYNCPG_SCRIPT: &str = r#"
import asyncio, sys
import asyncpg

port, user, password, db = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
clients, iterations = int(sys.argv[5]), int(sys.argv[6])

def check(n, i, what, got, want):
    if got != want:
        raise AssertionError(f"client {n} iteration {i}: {what} gave {got!r}, want {want!r}")

async def worker(n):
    conn = await asyncpg.connect(host="127.0.0.1", port=port, user=user, password=password,
                                 database=db, ssl=False)
    try:
        stmt = await conn.prepare("SELECT $1::int - 1")
        for i in range(iterations):
            v = n * 1000 + i
            check(n, i, "$1 * 2", await conn.fetchval("SELECT $1::int * 2", v), v * 2)
            check(n, i, "concat", await conn.fetchval("SELECT $1::text || ':' || $2::text",
                                                      f"c{n}", str(i)), f"c{n}:{i}")
            check(n, i, "prepared - 1", await stmt.fetchval(v), v - 1)
            if i % 4 == 0:
                async with conn.transaction():
                    check(n, i, "$1 + 1 in a transaction",
                          await conn.fetchval("SELECT $1::int + 1", v), v + 1)
    finally:
        await conn.close()

async def main():
    await asyncio.gather(*(worker(n) for n in range(clients)))

asyncio.run(main())
"#;

/// 10 psycopg 3 connections preparing every statement (`prepare_threshold=0`); the odd ones
/// keep at most 2 prepared, so psycopg deallocates as it cycles through 3 queries.
const PSYCOPG_SCRIPT: &str = r#"
import asyncio, sys
import psycopg

conninfo, clients, iterations = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
QUERIES = [
    ("SELECT %s::int * 2", lambda v: v * 2),
    ("SELECT %s::int + 7", lambda v: v + 7),
    ("SELECT %s::int - 1", lambda v: v - 1),
]

async def worker(n):
    conn = await psycopg.AsyncConnection.connect(conninfo, prepare_threshold=0, autocommit=True)
    try:
        if n % 2:
            conn.prepared_max = 2
        for i in range(iterations):
            v = n * 1000 + i
            sql, want = QUERIES[i % len(QUERIES)]
            if i % 4 == 0:
                async with conn.transaction():
                    got = (await (await conn.execute(sql, (v,))).fetchone())[0]
            else:
                got = (await (await conn.execute(sql, (v,))).fetchone())[0]
            if got != want(v):
                raise AssertionError(f"client {n} iteration {i}: {sql} with {v} gave {got!r}")
    finally:
        await conn.close()

async def main():
    await asyncio.gather(*(worker(n) for n in range(clients)))

asyncio.run(main())
"#;

fn assert_script_ok(what: &str, out: &std::process::Output, pgberth: &Pgberth) {
    assert!(
        out.status.success(),
        "{what} failed: {}\npgberth log:\n{}",
        drivers::output_text(out),
        pgberth.log_contents()
    );
}

#[test]
fn asyncpg_with_its_statement_cache_is_correct_through_a_transaction_pool_of_2() {
    drivers::python(); // provision the venv before pgberth starts
    let pgberth = start(&transaction_mode(2));
    let port = pgberth.port().to_string();
    let out = drivers::run_python(
        ASYNCPG_SCRIPT,
        &[&port, SCRAM_USER, SCRAM_PASS, "app", "10", "30"],
        TOOL_HANG,
    );
    assert_script_ok("the asyncpg script", &out, &pgberth);
}

#[test]
fn psycopg_with_prepare_threshold_0_is_correct_through_a_transaction_pool_of_2() {
    drivers::python();
    let pgberth = start(&transaction_mode(2));
    let conninfo = pgberth.conn_str(SCRAM_USER, SCRAM_PASS, "app");
    let out = drivers::run_python(PSYCOPG_SCRIPT, &[&conninfo, "10", "30"], TOOL_HANG);
    assert_script_ok("the psycopg script", &out, &pgberth);
}

/// `pgbench -i -s 1` in a database of its own, then `pgbench -M prepared -c 10 -j 2 -t 200`
/// with `run_args` through a pool of 3 in `pool_mode`: every transaction processed, none
/// failed, no complaint about statement names.
fn pgbench_prepared(database: &str, pool_mode: &str, run_args: &[&str]) {
    cluster()
        .create_database(database, SCRAM_USER)
        .expect("create the pgbench database");
    let init_berth = Pgberth::start(&ini(&transaction_mode(3), &[database]), USERLIST);
    let init = drivers::pgbench(
        &init_berth,
        SCRAM_USER,
        SCRAM_PASS,
        &["-i", "-s", "1", "-q", database],
        TOOL_HANG,
    );
    assert_script_ok("pgbench -i", &init, &init_berth);
    drop(init_berth);

    // A pgbench client that fails inside BEGIN is aborted but stays connected, holding its
    // server connection: query_wait_timeout turns the others' wait into errors, not a hang.
    let general = format!(
        "pool_mode = {pool_mode}\ndefault_pool_size = 3\nmax_prepared_statements = 100\n\
         query_wait_timeout = 15"
    );
    let pgberth = Pgberth::start(&ini(&general, &[database]), USERLIST);
    let mut args = vec!["-M", "prepared", "-c", "10", "-j", "2", "-t", "200", "-n"];
    args.extend_from_slice(run_args);
    args.push(database);
    let run = drivers::pgbench(&pgberth, SCRAM_USER, SCRAM_PASS, &args, TOOL_HANG);
    let text = drivers::output_text(&run);
    for complaint in ["already exists", "does not exist"] {
        assert!(
            !text.contains(complaint),
            "pgbench saw {complaint:?}: {text}"
        );
    }
    assert_script_ok(&format!("pgbench {}", args.join(" ")), &run, &pgberth);
    assert!(
        text.contains("number of transactions actually processed: 2000/2000"),
        "{text}"
    );
    assert!(text.contains("number of failed transactions: 0"), "{text}");
}

#[test]
fn pgbench_prepared_select_only_through_transaction_pool_of_3_has_no_failures() {
    pgbench_prepared("bench_prep_tx_select", "transaction", &["-S"]);
}

#[test]
fn pgbench_prepared_tpcb_through_transaction_pool_of_3_has_no_failures() {
    pgbench_prepared("bench_prep_tx_tpcb", "transaction", &[]);
}

#[test]
fn pgbench_prepared_select_only_through_statement_pool_of_3_has_no_failures() {
    pgbench_prepared("bench_prep_stmt_select", "statement", &["-S"]);
}

/// Rails prepares with the protocol and deallocates with SQL: `DEALLOCATE <name>` must
/// succeed whichever server connection the client has then, and leave other clients alone.
#[tokio::test]
async fn sql_deallocate_of_a_protocol_prepared_statement_succeeds_on_any_server_connection() {
    let pgberth = start(&transaction_mode(2));
    let port = pgberth.port();
    let mut a = RawClient::connect(port, SCRAM_USER, SCRAM_PASS, "app").await;
    let mut b = RawClient::connect(port, SCRAM_USER, SCRAM_PASS, "app").await;
    let text = |rows: Vec<Vec<Option<String>>>| rows[0][0].clone().unwrap();
    within("deallocate across server connections", async {
        b.prepare("shared", "SELECT $1::int4 * 3").await.unwrap();
        for round in 0..6 {
            a.prepare("a1", "SELECT $1::int4 * 3").await.unwrap();
            assert_eq!(a.run("a1", &["2"]).await.map(text), Ok("6".to_owned()));
            // Another client's transaction in between moves a between server connections.
            assert_eq!(b.run("shared", &["1"]).await.map(text), Ok("3".to_owned()));
            let reply = a.query("DEALLOCATE a1").round_trip().await;
            assert_eq!(reply.error, None, "round {round}");
            let gone = a.run("a1", &["2"]).await.unwrap_err();
            assert_eq!(gone.code, "26000", "round {round}: {gone}");
            assert_eq!(
                b.run("shared", &["7"]).await.map(text),
                Ok("21".to_owned()),
                "round {round}: b's statement survives"
            );
        }
    })
    .await;
}

/// After a schema change, PostgreSQL refuses a prepared statement whose result type changed
/// ("cached plan must not change result type", 0A000). Outside a transaction pgberth parses
/// the statement again on that server connection and repeats the exchange, so the client
/// never sees the error; inside a transaction (not safe to repeat) the client gets it once,
/// and the statement works again afterwards. With PostgreSQL alone, or PgBouncer, it keeps
/// failing until the connection is dropped.
#[tokio::test]
async fn a_statement_whose_result_type_changed_is_prepared_again_transparently() {
    cluster()
        .psql(
            "app",
            "DROP TABLE IF EXISTS stale_plan; CREATE TABLE stale_plan (a int); \
             INSERT INTO stale_plan VALUES (1); GRANT ALL ON stale_plan TO scram_user",
        )
        .expect("create the table");
    let pgberth = start(&transaction_mode(1));
    let mut a = RawClient::connect(pgberth.port(), SCRAM_USER, SCRAM_PASS, "app").await;
    let alter = |sql: &str| cluster().psql("app", sql).expect("alter the table");
    within("stale plan", async {
        a.prepare("st", "SELECT * FROM stale_plan").await.unwrap();
        assert_eq!(a.run("st", &[]).await.unwrap(), [[Some("1".to_owned())]]);

        alter("ALTER TABLE stale_plan ADD COLUMN b int DEFAULT 2");
        let rows = a
            .run("st", &[])
            .await
            .unwrap_or_else(|e| panic!("outside a transaction: {e}"));
        assert_eq!(rows, [[Some("1".to_owned()), Some("2".to_owned())]]);

        alter("ALTER TABLE stale_plan ADD COLUMN c int DEFAULT 3");
        let begin = a.query("BEGIN").round_trip().await;
        assert_eq!(begin.error, None);
        let err = a.run("st", &[]).await.unwrap_err();
        assert_eq!(
            err.code, "0A000",
            "inside a transaction the error is the client's: {err}"
        );
        let rollback = a.query("ROLLBACK").round_trip().await;
        assert_eq!(rollback.error, None);
        let rows = a
            .run("st", &[])
            .await
            .unwrap_or_else(|e| panic!("after the rollback: {e}"));
        assert_eq!(
            rows,
            [[
                Some("1".to_owned()),
                Some("2".to_owned()),
                Some("3".to_owned())
            ]]
        );
    })
    .await;
}
