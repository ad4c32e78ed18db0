//! Statistics on the admin console: SHOW STATS, STATS_TOTALS, STATS_AVERAGES and TOTALS with
//! PgBouncer's columns and definitions after real traffic, the `log_stats` line, SHOW CLIENTS,
//! and the waiting times of SHOW POOLS.

mod support;

use std::time::Duration;

use support::{Pgberth, SCRAM_PASS, SCRAM_USER, simple_rows as show};
use tokio_postgres::SimpleQueryMessage;

const USERLIST: &str = "\"scram_user\" \"scram_pass\"\n\"admin\" \"admin_pass\"\n";

fn ini(pool_size: u32, stats_period: u32) -> String {
    format!(
        "\
[databases]
app = host=127.0.0.1 port=@PGPORT@ dbname=app pool_size={pool_size}
other = host=127.0.0.1 port=@PGPORT@ dbname=app

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = @PORT@
unix_socket_dir = @DIR@
auth_type = scram-sha-256
auth_file = @DIR@/userlist.txt
pool_mode = transaction
admin_users = admin
stats_period = {stats_period}
"
    )
}

/// The value of `name` in the row whose first column is `key`.
fn value(columns: &[String], rows: &[Vec<String>], key: &str, name: &str) -> u64 {
    let i = columns
        .iter()
        .position(|c| c == name)
        .unwrap_or_else(|| panic!("no column {name} in {columns:?}"));
    let row = rows
        .iter()
        .find(|r| r[0] == key)
        .unwrap_or_else(|| panic!("no row {key} in {rows:?}"));
    row[i]
        .parse()
        .unwrap_or_else(|_| panic!("{name} = {:?} is not a number", row[i]))
}

fn split(list: &str) -> Vec<String> {
    list.split(',').map(|c| c.trim().to_owned()).collect()
}

const STATS_COLUMNS: &str = "database, total_xact_count, total_query_count, \
    total_server_assignment_count, total_received, total_sent, total_xact_time, \
    total_query_time, total_wait_time, total_client_parse_count, total_server_parse_count, \
    total_bind_count, total_client_login_count, avg_xact_count, avg_query_count, \
    avg_server_assignment_count, avg_recv, avg_sent, avg_xact_time, avg_query_time, \
    avg_wait_time, avg_client_parse_count, avg_server_parse_count, avg_bind_count, \
    avg_client_login_count";

const CLIENTS_COLUMNS: &str = "type, user, database, replication, state, addr, port, \
    local_addr, local_port, connect_time, request_time, wait, wait_us, close_needed, ptr, link, \
    remote_pid, tls, application_name, prepared_statements, id";

#[tokio::test]
async fn show_stats_counts_transactions_queries_bytes_and_logins() {
    let pgberth = Pgberth::start(&ini(3, 60), USERLIST);
    let app = pgberth.connect(SCRAM_USER, SCRAM_PASS, "app").await;
    // Five statements outside a transaction block: five transactions, five queries.
    for _ in 0..5 {
        app.simple_query("SELECT 1").await.unwrap();
    }
    // One transaction of three queries, with a query that sleeps 50 ms.
    app.simple_query("BEGIN").await.unwrap();
    app.simple_query("SELECT pg_sleep(0.05)").await.unwrap();
    app.simple_query("COMMIT").await.unwrap();
    // Extended protocol: an unnamed statement is parsed, bound and executed, one query.
    let second = pgberth.connect(SCRAM_USER, SCRAM_PASS, "app").await;
    second
        .query_one("SELECT $1::int4 + 1", &[&41i32])
        .await
        .unwrap();

    let admin = pgberth.connect("admin", "admin_pass", "pgbouncer").await;
    let (columns, rows) = show(&admin, "SHOW STATS").await;
    let documented = split(STATS_COLUMNS);
    assert_eq!(columns[..documented.len()], documented[..]);
    // Appended after PgBouncer's columns: the pre-1.8 name of total_query_count.
    assert_eq!(columns[documented.len()..], ["total_requests"]);
    let v = |name: &str| value(&columns, &rows, "app", name);
    // tokio-postgres' query_one prepares (Parse/Describe/Sync), binds and executes (Bind/
    // Execute/Sync), and closes the statement (Close/Sync): three queries, each outside a
    // transaction block.
    assert_eq!(v("total_xact_count"), 5 + 1 + 3);
    assert_eq!(v("total_query_count"), 5 + 3 + 3);
    assert_eq!(v("total_requests"), v("total_query_count"));
    assert_eq!(v("total_client_login_count"), 2);
    assert_eq!(v("total_client_parse_count"), 1);
    assert_eq!(v("total_server_parse_count"), 1);
    assert_eq!(v("total_bind_count"), 1);
    assert!(v("total_server_assignment_count") >= v("total_xact_count") - 2);
    assert!(v("total_received") > 0 && v("total_sent") > v("total_received"));
    // Microseconds: the 50 ms sleep is inside the query and the transaction times.
    assert!(v("total_query_time") >= 50_000, "{}", v("total_query_time"));
    assert!(v("total_xact_time") >= 50_000, "{}", v("total_xact_time"));
    // The other database saw nothing, and still has its row.
    assert_eq!(value(&columns, &rows, "other", "total_query_count"), 0);

    // Counts of a client that left stay in the totals.
    drop(second);
    let (columns, rows) = show(&admin, "SHOW STATS_TOTALS").await;
    assert_eq!(
        columns,
        split(
            "database, xact_count, query_count, server_assignment_count, bytes_received, \
             bytes_sent, xact_time, query_time, wait_time, client_parse_count, \
             server_parse_count, bind_count, client_login_count"
        )
    );
    let totals = |name: &str| value(&columns, &rows, "app", name);
    assert_eq!(totals("query_count"), 11);
    assert_eq!(totals("client_login_count"), 2);

    let (columns, rows) = show(&admin, "SHOW TOTALS").await;
    assert_eq!(columns, ["name", "value"]);
    assert_eq!(value(&columns, &rows, "total_query_count", "value"), 11);
    assert!(rows.iter().any(|r| r[0] == "avg_query_count"));
}

#[tokio::test]
async fn stats_averages_cover_the_last_period_and_log_stats_writes_them() {
    let pgberth = Pgberth::start(&ini(3, 1), USERLIST);
    let app = pgberth.connect(SCRAM_USER, SCRAM_PASS, "app").await;
    let admin = pgberth.connect("admin", "admin_pass", "pgbouncer").await;
    // Traffic until a period with queries has been averaged.
    let mut averaged = 0;
    for _ in 0..100 {
        for _ in 0..20 {
            app.simple_query("SELECT 1").await.unwrap();
        }
        let (columns, rows) = show(&admin, "SHOW STATS_AVERAGES").await;
        averaged = value(&columns, &rows, "app", "query_count");
        if averaged > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(averaged > 0, "no average after 10 s of stats_period = 1");
    let (columns, rows) = show(&admin, "SHOW STATS").await;
    assert!(value(&columns, &rows, "app", "avg_query_count") > 0);
    assert!(value(&columns, &rows, "app", "avg_xact_count") > 0);
    pgberth.wait_for_log("queries/s", Duration::from_secs(10));
    let log = pgberth.log_contents();
    let line = log
        .lines()
        .find(|l| l.contains("queries/s"))
        .expect("a stats line");
    assert!(
        line.contains("app"),
        "the stats line names the database: {line}"
    );
    assert!(line.contains("xacts/s") && line.contains("wait"), "{line}");
}

#[tokio::test]
async fn a_client_waiting_for_a_server_shows_in_clients_pools_and_wait_time() {
    let pgberth = Pgberth::start(&ini(1, 60), USERLIST);
    let holder = pgberth.connect(SCRAM_USER, SCRAM_PASS, "app").await;
    holder.simple_query("BEGIN").await.unwrap();
    let backend_pid = match &holder
        .simple_query("SELECT pg_backend_pid()")
        .await
        .unwrap()[1]
    {
        SimpleQueryMessage::Row(row) => row.get(0).unwrap().to_owned(),
        other => panic!("{other:?}"),
    };
    let waiter = pgberth.connect(SCRAM_USER, SCRAM_PASS, "app").await;
    let waiting = tokio::spawn(async move {
        waiter.simple_query("SELECT 1").await.unwrap();
        waiter
    });
    let admin = pgberth.connect("admin", "admin_pass", "pgbouncer").await;
    // Until the waiting client shows up waiting for a while.
    let mut seen = None;
    for _ in 0..200 {
        let (columns, rows) = show(&admin, "SHOW POOLS").await;
        if value(&columns, &rows, "app", "cl_waiting") == 1
            && value(&columns, &rows, "app", "maxwait_us") >= 100_000
        {
            seen = Some((columns, rows));
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(seen.is_some(), "SHOW POOLS never showed the waiting client");

    let (columns, rows) = show(&admin, "SHOW CLIENTS").await;
    assert_eq!(columns, split(CLIENTS_COLUMNS));
    let col = |name: &str| columns.iter().position(|c| c == name).unwrap();
    let app_clients: Vec<_> = rows
        .iter()
        .filter(|r| r[col("database")] == "app")
        .collect();
    assert_eq!(app_clients.len(), 2, "{rows:?}");
    let states: Vec<&str> = app_clients
        .iter()
        .map(|r| r[col("state")].as_str())
        .collect();
    assert!(
        states.contains(&"waiting") && states.contains(&"active"),
        "{states:?}"
    );
    let holding = app_clients
        .iter()
        .find(|r| r[col("state")] == "active")
        .unwrap();
    assert!(
        !holding[col("link")].is_empty(),
        "the holder is linked to its server"
    );
    assert_eq!(holding[col("user")], SCRAM_USER);
    assert_eq!(holding[col("addr")], "127.0.0.1");
    assert_eq!(holding[col("type")], "C");
    assert!(holding[col("connect_time")].ends_with(" UTC"));
    // The console's own connection is listed too.
    assert!(rows.iter().any(|r| r[col("database")] == "pgbouncer"));

    let (server_columns, servers) = show(&admin, "SHOW SERVERS").await;
    assert_eq!(server_columns, columns);
    assert_eq!(servers.len(), 1, "pool_size = 1: {servers:?}");
    let server = &servers[0];
    assert_eq!(server[col("type")], "S");
    assert_eq!(server[col("state")], "active");
    assert_eq!(server[col("database")], "app");
    assert_eq!(server[col("remote_pid")], backend_pid);
    assert_eq!(
        server[col("link")],
        holding[col("ptr")],
        "linked to the holder"
    );
    assert_eq!(holding[col("link")], server[col("ptr")]);

    holder.simple_query("COMMIT").await.unwrap();
    let waiter = tokio::time::timeout(Duration::from_secs(10), waiting)
        .await
        .expect("the waiting client got the server")
        .unwrap();
    drop(waiter);
    let (columns, rows) = show(&admin, "SHOW STATS").await;
    assert!(
        value(&columns, &rows, "app", "total_wait_time") >= 100_000,
        "the wait is counted in microseconds"
    );
}

#[tokio::test]
async fn mem_fds_sockets_and_dns_views_answer_with_pgbouncers_shapes() {
    let pgberth = Pgberth::start(&ini(3, 60), USERLIST);
    let holder = pgberth.connect(SCRAM_USER, SCRAM_PASS, "app").await;
    holder.simple_query("BEGIN").await.unwrap();
    holder.simple_query("SELECT 1").await.unwrap();
    let idle = pgberth.connect(SCRAM_USER, SCRAM_PASS, "app").await;
    idle.simple_query("SELECT 1").await.unwrap();
    let admin = pgberth.connect("admin", "admin_pass", "pgbouncer").await;

    let (columns, rows) = show(&admin, "SHOW MEM").await;
    assert_eq!(columns, ["name", "size", "used", "free", "memtotal"]);
    // Two application clients and the console.
    assert_eq!(value(&columns, &rows, "client_info", "used"), 3);
    assert_eq!(value(&columns, &rows, "server_info", "used"), 2);
    assert!(value(&columns, &rows, "relay_buffer", "used") >= 2);

    let (columns, rows) = show(&admin, "SHOW FDS").await;
    assert_eq!(
        columns,
        split("fd, task, user, database, addr, port, cancel, link")
    );
    assert!(rows.is_empty());

    let (columns, rows) = show(&admin, "SHOW SOCKETS").await;
    assert_eq!(
        columns,
        split(
            "type, user, database, state, addr, port, local_addr, local_port, connect_time, \
             request_time, wait, wait_us, close_needed, ptr, link, remote_pid, tls, recv_pos, \
             pkt_pos, pkt_remain, send_pos, send_remain, pkt_avail, send_avail"
        )
    );
    let kinds = |rows: &[Vec<String>], kind: &str| rows.iter().filter(|r| r[0] == kind).count();
    assert_eq!(kinds(&rows, "C"), 3);
    assert_eq!(kinds(&rows, "S"), 2);
    let (active_columns, active) = show(&admin, "SHOW ACTIVE_SOCKETS").await;
    assert_eq!(active_columns, columns);
    // Only the client in its transaction and its server connection move data now.
    assert_eq!(kinds(&active, "C"), 1, "{active:?}");
    assert_eq!(kinds(&active, "S"), 1, "{active:?}");

    let (columns, rows) = show(&admin, "SHOW DNS_HOSTS").await;
    assert_eq!(columns, ["hostname", "ttl", "addrs"]);
    assert!(rows.is_empty());
    let (columns, _) = show(&admin, "SHOW DNS_ZONES").await;
    assert_eq!(columns, ["zonename", "serial", "count"]);
}
