//! The admin console (database `pgbouncer`, also `pgberth`): access rules, the SHOW commands'
//! columns as PgBouncer 1.25 documents them, values after real traffic, and RELOAD.

mod support;

use support::{Pgberth, SCRAM_PASS, SCRAM_USER, simple_rows as show};
use tokio_postgres::error::SqlState;

const USERLIST: &str =
    "\"scram_user\" \"scram_pass\"\n\"admin\" \"admin_pass\"\n\"watcher\" \"watcher_pass\"\n";

fn ini(pool_size: u32) -> String {
    format!(
        "\
[databases]
app = host=127.0.0.1 port=@PGPORT@ dbname=app pool_size={pool_size}

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = @PORT@
unix_socket_dir = @DIR@
auth_type = scram-sha-256
auth_file = @DIR@/userlist.txt
pool_mode = transaction
admin_users = admin
stats_users = watcher
"
    )
}

/// The columns PgBouncer 1.25 documents for a SHOW command, in order.
fn documented_columns(command: &str) -> Vec<String> {
    let list = match command {
        "POOLS" => {
            "database, user, cl_active, cl_waiting, cl_active_cancel_req, \
                    cl_waiting_cancel_req, sv_active, sv_active_cancel, sv_being_canceled, sv_idle, \
                    sv_used, sv_tested, sv_login, maxwait, maxwait_us, pool_mode, load_balance_hosts"
        }
        "DATABASES" => {
            "name, host, port, database, force_user, pool_size, min_pool_size, \
                        reserve_pool_size, server_lifetime, pool_mode, load_balance_hosts, \
                        max_connections, current_connections, max_client_connections, \
                        current_client_connections, paused, disabled"
        }
        "USERS" => {
            "name, pool_size, reserve_pool_size, pool_mode, max_user_connections, \
                    current_connections, max_user_client_connections, current_client_connections"
        }
        other => panic!("no documented columns for SHOW {other}"),
    };
    list.split(',').map(|c| c.trim().to_owned()).collect()
}

fn column<'a>(columns: &[String], row: &'a [String], name: &str) -> &'a str {
    let i = columns
        .iter()
        .position(|c| c == name)
        .unwrap_or_else(|| panic!("no column {name}"));
    &row[i]
}

#[tokio::test]
async fn show_pools_databases_and_users_have_pgbouncers_columns_in_order() {
    let pgberth = Pgberth::start(&ini(3), USERLIST);
    let admin = pgberth.connect("admin", "admin_pass", "pgbouncer").await;
    for command in ["POOLS", "DATABASES", "USERS"] {
        let (columns, _) = show(&admin, &format!("SHOW {command}")).await;
        let documented = documented_columns(command);
        assert!(
            columns.len() >= documented.len() && columns[..documented.len()] == documented[..],
            "SHOW {command}: {columns:?} does not start with {documented:?}"
        );
    }
    let (columns, rows) = show(&admin, "SHOW LISTS").await;
    assert_eq!(columns, ["list", "items"]);
    let lists: Vec<&str> = rows.iter().map(|r| r[0].as_str()).collect();
    assert_eq!(
        lists,
        [
            "databases",
            "users",
            "pools",
            "free_clients",
            "used_clients",
            "login_clients",
            "free_servers",
            "used_servers",
            "dns_names",
            "dns_zones",
            "dns_queries",
            "dns_pending"
        ]
    );
}

#[tokio::test]
async fn show_pools_reports_clients_and_server_connections_after_traffic() {
    let pgberth = Pgberth::start(&ini(3), USERLIST);
    let app = pgberth.connect(SCRAM_USER, SCRAM_PASS, "app").await;
    let inside = pgberth.connect(SCRAM_USER, SCRAM_PASS, "app").await;
    // `inside` holds a server connection in its transaction; `app` needs a second one, which
    // goes back to the pool idle.
    inside.batch_execute("BEGIN; SELECT 1").await.unwrap();
    app.simple_query("SELECT 1").await.unwrap();
    let admin = pgberth.connect("admin", "admin_pass", "pgberth").await;
    let (columns, rows) = show(&admin, "SHOW POOLS").await;
    let row = rows
        .iter()
        .find(|r| r[0] == "app" && r[1] == SCRAM_USER)
        .expect("a row for the app pool");
    assert_eq!(column(&columns, row, "cl_active"), "2");
    assert_eq!(column(&columns, row, "cl_waiting"), "0");
    assert_eq!(
        column(&columns, row, "sv_active"),
        "1",
        "the client inside BEGIN holds one"
    );
    assert_eq!(column(&columns, row, "sv_idle"), "1");
    assert_eq!(column(&columns, row, "pool_mode"), "transaction");
    let (columns, rows) = show(&admin, "SHOW DATABASES").await;
    let row = rows.iter().find(|r| r[0] == "app").expect("a row for app");
    assert_eq!(column(&columns, row, "pool_size"), "3");
    assert_eq!(column(&columns, row, "current_connections"), "2");
    inside.batch_execute("COMMIT").await.unwrap();
}

#[tokio::test]
async fn stats_users_may_show_but_not_reload_and_others_are_refused_with_28000() {
    let pgberth = Pgberth::start(&ini(3), USERLIST);
    let watcher = pgberth
        .connect("watcher", "watcher_pass", "pgbouncer")
        .await;
    show(&watcher, "SHOW POOLS").await;
    let err = watcher
        .simple_query("RELOAD")
        .await
        .expect_err("RELOAD needs admin_users");
    assert_eq!(err.code(), Some(&SqlState::INSUFFICIENT_PRIVILEGE), "{err}");
    show(&watcher, "SHOW VERSION").await;

    let refused = pgberth
        .try_connect(SCRAM_USER, SCRAM_PASS, "pgbouncer")
        .await;
    let err = refused.expect_err("scram_user is neither admin nor stats user");
    assert_eq!(
        err.code(),
        Some(&SqlState::INVALID_AUTHORIZATION_SPECIFICATION),
        "{err}"
    );
    let wrong = pgberth.try_connect("admin", "wrong", "pgbouncer").await;
    assert_eq!(
        wrong.expect_err("wrong password").code(),
        Some(&SqlState::INVALID_PASSWORD)
    );
}

#[tokio::test]
async fn unknown_commands_get_an_error_pointing_at_show_help() {
    let pgberth = Pgberth::start(&ini(3), USERLIST);
    let admin = pgberth.connect("admin", "admin_pass", "pgbouncer").await;
    let err = admin
        .simple_query("SHOW NONSENSE")
        .await
        .expect_err("unknown");
    assert!(
        err.as_db_error().unwrap().message().contains("SHOW HELP"),
        "{err}"
    );
    // The console keeps working after an error.
    let (_, rows) = show(&admin, "SHOW VERSION").await;
    assert!(rows[0][0].starts_with("pgberth "), "{rows:?}");
}

#[tokio::test]
async fn reload_applies_a_changed_pool_size() {
    let pgberth = Pgberth::start(&ini(3), USERLIST);
    let admin = pgberth.connect("admin", "admin_pass", "pgbouncer").await;
    pgberth.rewrite_ini(&ini(7));
    admin.simple_query("RELOAD").await.unwrap();
    let (columns, rows) = show(&admin, "SHOW DATABASES").await;
    let row = rows.iter().find(|r| r[0] == "app").expect("a row for app");
    assert_eq!(column(&columns, row, "pool_size"), "7");
}

#[tokio::test]
async fn psql_shows_pools_through_the_console() {
    let pgberth = Pgberth::start(&ini(3), USERLIST);
    let out = pgberth.psql_as("admin", "admin_pass", "pgbouncer", "SHOW POOLS");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = pgberth.psql_as("admin", "admin_pass", "pgbouncer", "SHOW HELP");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("SHOW HELP"),
        "{out:?}"
    );
}

/// As in PgBouncer, user `pgbouncer` connecting over the unix socket as the OS user pgberth
/// runs as needs no password (health checks rely on it).
#[tokio::test]
async fn user_pgbouncer_over_the_unix_socket_as_the_same_os_user_needs_no_password() {
    let pgberth = Pgberth::start(&ini(3), USERLIST);
    let socket = format!(
        "host={} port={} user=pgbouncer dbname=pgbouncer",
        pgberth.dir().display(),
        pgberth.port()
    );
    let (client, conn) = tokio_postgres::connect(&socket, tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|e| panic!("{e:?}\n{}", pgberth.log_contents()));
    tokio::spawn(conn);
    let (columns, _) = show(&client, "SHOW POOLS").await;
    assert_eq!(columns[0], "database");
    client
        .simple_query("RELOAD")
        .await
        .expect("it may run every command");
    // Over TCP the same user needs a password it does not have.
    let tcp = pgberth.try_connect("pgbouncer", "", "pgbouncer").await;
    assert!(tcp.is_err());
}

#[tokio::test]
async fn show_config_lists_settings_with_value_default_and_changeable() {
    let pgberth = Pgberth::start(&ini(3), USERLIST);
    let admin = pgberth.connect("admin", "admin_pass", "pgbouncer").await;
    let (columns, rows) = show(&admin, "SHOW CONFIG").await;
    assert_eq!(columns, ["key", "value", "default", "changeable"]);
    let row = |key: &str| {
        rows.iter()
            .find(|r| r[0] == key)
            .unwrap_or_else(|| panic!("{key}"))
    };
    assert_eq!(row("pool_mode")[1..], ["transaction", "session", "yes"]);
    assert_eq!(row("admin_users")[1], "admin");
    assert_eq!(
        row("listen_port")[3],
        "no",
        "the port changes only at restart"
    );
}
